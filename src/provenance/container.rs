//! Container surgery: the IPTC digital source type as an XMP packet, written into (and read back
//! from) the standard XMP slot of a PNG, JPEG or WebP with `img-parts`, pixels untouched.

use img_parts::jpeg::{markers, Jpeg, JpegSegment};
use img_parts::png::{Png, PngChunk};
use img_parts::riff::{RiffChunk, RiffContent};
use img_parts::webp::WebP;
use img_parts::Bytes;

use super::{ProvenanceError, DIGITAL_SOURCE_TYPE};
use crate::pipeline::image::OutputFormat;

/// The XMP namespace of the IPTC Extension schema.
const IPTC_EXT_NS: &str = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/";

/// The keyword of the PNG `iTXt` chunk that holds XMP.
const PNG_XMP_KEYWORD: &[u8] = b"XML:com.adobe.xmp";

/// The prefix of a JPEG `APP1` segment that holds XMP (as opposed to Exif).
const JPEG_XMP_PREFIX: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";

/// The RIFF chunk of WebP's XMP and the extended-format header chunk.
const WEBP_XMP: [u8; 4] = *b"XMP ";
const WEBP_VP8X: [u8; 4] = *b"VP8X";
const WEBP_VP8L: [u8; 4] = *b"VP8L";
const WEBP_ALPH: [u8; 4] = *b"ALPH";

/// `VP8X` flag bits (WebP container specification).
const VP8X_XMP_FLAG: u8 = 0b0000_0100;
const VP8X_ALPHA_FLAG: u8 = 0b0001_0000;

/// The container of an image, detected from its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Container {
    Png,
    Jpeg,
    WebP,
}

impl Container {
    pub(super) fn of_format(format: OutputFormat) -> Self {
        match format {
            OutputFormat::Png => Self::Png,
            OutputFormat::Jpeg { .. } => Self::Jpeg,
            OutputFormat::Webp => Self::WebP,
        }
    }

    pub(super) fn detect(bytes: &[u8]) -> Result<Self, ProvenanceError> {
        match image::guess_format(bytes) {
            Ok(image::ImageFormat::Png) => Ok(Self::Png),
            Ok(image::ImageFormat::Jpeg) => Ok(Self::Jpeg),
            Ok(image::ImageFormat::WebP) => Ok(Self::WebP),
            Ok(other) => Err(ProvenanceError::UnsupportedFormat(
                format!("{other:?}").to_lowercase(),
            )),
            Err(_) => Err(ProvenanceError::UnsupportedFormat(
                "unrecognised content".into(),
            )),
        }
    }

    pub(super) fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::WebP => "image/webp",
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Png => "PNG",
            Self::Jpeg => "JPEG",
            Self::WebP => "WebP",
        }
    }
}

/// The XMP packet: one `rdf:Description` with the IPTC digital source type.
pub(super) fn xmp_packet() -> String {
    format!(
        "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\n\
         <x:xmpmeta xmlns:x=\"adobe:ns:meta/\">\n \
         <rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\n  \
         <rdf:Description rdf:about=\"\" xmlns:Iptc4xmpExt=\"{IPTC_EXT_NS}\"\n   \
         Iptc4xmpExt:DigitalSourceType=\"{DIGITAL_SOURCE_TYPE}\"/>\n \
         </rdf:RDF>\n\
         </x:xmpmeta>\n\
         <?xpacket end=\"w\"?>"
    )
}

/// Inserts (or replaces) the XMP packet in a PNG, JPEG or WebP without touching the pixels.
pub(super) fn insert_xmp(
    bytes: &[u8],
    container: Container,
    packet: &str,
) -> Result<Vec<u8>, ProvenanceError> {
    let bad = |e: img_parts::Error| ProvenanceError::Container {
        format: container.name(),
        reason: e.to_string(),
    };
    let input = Bytes::copy_from_slice(bytes);
    let out = match container {
        Container::Png => {
            let mut png = Png::from_bytes(input).map_err(bad)?;
            png.chunks_mut()
                .retain(|c| !(c.kind() == *b"iTXt" && png_itxt_is_xmp(c.contents())));
            // iTXt: keyword, NUL, compression flag 0, method 0, empty language tag and translated
            // keyword (each NUL-terminated), then the UTF-8 text.
            let mut contents = Vec::with_capacity(packet.len() + 24);
            contents.extend_from_slice(PNG_XMP_KEYWORD);
            contents.extend_from_slice(&[0, 0, 0, 0, 0]);
            contents.extend_from_slice(packet.as_bytes());
            // Before the image data, where readers that stop at IDAT still find it.
            let at = png
                .chunks()
                .iter()
                .position(|c| c.kind() == *b"IDAT")
                .ok_or_else(|| ProvenanceError::Container {
                    format: container.name(),
                    reason: "no IDAT chunk".into(),
                })?;
            png.chunks_mut()
                .insert(at, PngChunk::new(*b"iTXt", Bytes::from(contents)));
            png.encoder().bytes()
        }
        Container::Jpeg => {
            let mut jpeg = Jpeg::from_bytes(input).map_err(bad)?;
            jpeg.segments_mut().retain(|s| {
                !(s.marker() == markers::APP1 && s.contents().starts_with(JPEG_XMP_PREFIX))
            });
            let mut contents = Vec::with_capacity(JPEG_XMP_PREFIX.len() + packet.len());
            contents.extend_from_slice(JPEG_XMP_PREFIX);
            contents.extend_from_slice(packet.as_bytes());
            // After JFIF (APP0) and Exif (APP1), as the XMP specification orders them.
            let at = jpeg
                .segments()
                .iter()
                .position(|s| !matches!(s.marker(), markers::APP0 | markers::APP1))
                .unwrap_or(jpeg.segments().len());
            jpeg.segments_mut().insert(
                at,
                JpegSegment::new_with_contents(markers::APP1, Bytes::from(contents)),
            );
            jpeg.encoder().bytes()
        }
        Container::WebP => {
            let mut webp = WebP::from_bytes(input).map_err(bad)?;
            webp.remove_chunks_by_id(WEBP_XMP);
            ensure_vp8x_with_xmp(&mut webp).map_err(|reason| ProvenanceError::Container {
                format: container.name(),
                reason,
            })?;
            webp.chunks_mut().push(RiffChunk::new(
                WEBP_XMP,
                RiffContent::Data(Bytes::copy_from_slice(packet.as_bytes())),
            ));
            webp.encoder().bytes()
        }
    };
    Ok(out.to_vec())
}

/// Sets the XMP flag of the `VP8X` header, creating the header (extended layout) for a simple
/// lossy or lossless WebP.
// NOTE: img-parts 0.4 builds a VP8X header only when ICC or Exif is set, and not for VP8L
// (lossless, what the `image` crate writes), so the header is written here.
fn ensure_vp8x_with_xmp(webp: &mut WebP) -> Result<(), String> {
    if let Some(pos) = webp.chunks().iter().position(|c| c.id() == WEBP_VP8X) {
        let data = webp.chunks()[pos]
            .content()
            .data()
            .filter(|d| d.len() >= 10)
            .ok_or("VP8X chunk is too short")?;
        let mut data = data.to_vec();
        data[0] |= VP8X_XMP_FLAG;
        webp.chunks_mut()[pos] = RiffChunk::new(WEBP_VP8X, RiffContent::Data(Bytes::from(data)));
        return Ok(());
    }
    let (width, height) = webp
        .dimensions()
        .ok_or("cannot read the canvas size from the VP8/VP8L header")?;
    let mut flags = VP8X_XMP_FLAG;
    if webp.chunk_by_id(WEBP_ALPH).is_some() || vp8l_has_alpha(webp) {
        flags |= VP8X_ALPHA_FLAG;
    }
    // Flags byte, 3 reserved bytes, then canvas width - 1 and height - 1 as 24-bit little endian.
    let mut data = vec![flags, 0, 0, 0];
    data.extend_from_slice(&(width - 1).to_le_bytes()[..3]);
    data.extend_from_slice(&(height - 1).to_le_bytes()[..3]);
    webp.chunks_mut().insert(
        0,
        RiffChunk::new(WEBP_VP8X, RiffContent::Data(Bytes::from(data))),
    );
    Ok(())
}

/// The `alpha_is_used` bit of a VP8L (lossless) bitstream header.
fn vp8l_has_alpha(webp: &WebP) -> bool {
    webp.chunk_by_id(WEBP_VP8L)
        .and_then(|c| c.content().data())
        .and_then(|d| d.get(1..5))
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & (1 << 28) != 0)
        .unwrap_or(false)
}

/// Whether an `iTXt` chunk's keyword is the XMP one.
fn png_itxt_is_xmp(contents: &[u8]) -> bool {
    contents.starts_with(PNG_XMP_KEYWORD) && contents.get(PNG_XMP_KEYWORD.len()) == Some(&0)
}

/// The XMP packet of a PNG, JPEG or WebP, if it has one (uncompressed PNG `iTXt` only).
pub(super) fn read_xmp(bytes: &[u8], container: Container) -> Option<String> {
    let input = Bytes::copy_from_slice(bytes);
    let raw: Bytes = match container {
        Container::Png => {
            let png = Png::from_bytes(input).ok()?;
            let chunk = png
                .chunks_by_type(*b"iTXt")
                .find(|c| png_itxt_is_xmp(c.contents()))?;
            let rest = &chunk.contents()[PNG_XMP_KEYWORD.len() + 1..];
            // Compressed iTXt is not produced by mark and not read here.
            if rest.first() != Some(&0) {
                return None;
            }
            // Skip the compression flag and method, then the language tag and translated keyword.
            let rest = rest.get(2..)?;
            let lang_end = rest.iter().position(|&b| b == 0)?;
            let rest = &rest[lang_end + 1..];
            let translated_end = rest.iter().position(|&b| b == 0)?;
            Bytes::copy_from_slice(&rest[translated_end + 1..])
        }
        Container::Jpeg => {
            let jpeg = Jpeg::from_bytes(input).ok()?;
            let segment = jpeg
                .segments_by_marker(markers::APP1)
                .find(|s| s.contents().starts_with(JPEG_XMP_PREFIX))?;
            segment.contents().slice(JPEG_XMP_PREFIX.len()..)
        }
        Container::WebP => {
            let webp = WebP::from_bytes(input).ok()?;
            webp.chunk_by_id(WEBP_XMP)?.content().data()?.clone()
        }
    };
    String::from_utf8(raw.to_vec()).ok()
}

/// The `Iptc4xmpExt:DigitalSourceType` of an XMP packet, written as an attribute
/// (`Iptc4xmpExt:DigitalSourceType="..."`, as [`mark`](super::mark) writes it) or as an element.
pub(super) fn xmp_digital_source_type(xmp: &str) -> Option<String> {
    const NAME: &str = "Iptc4xmpExt:DigitalSourceType";
    if let Some(at) = xmp.find(&format!("{NAME}=")) {
        let rest = &xmp[at + NAME.len() + 1..];
        let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let rest = &rest[1..];
        return rest.find(quote).map(|end| rest[..end].to_string());
    }
    let open = format!("<{NAME}>");
    let at = xmp.find(&open)?;
    let rest = &xmp[at + open.len()..];
    let end = rest.find(&format!("</{NAME}>"))?;
    Some(rest[..end].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provenance::test_support::{encoded, formats};

    #[test]
    fn xmp_round_trips_in_every_container_and_pixels_are_untouched() {
        for format in formats() {
            let bytes = encoded(format);
            let container = Container::of_format(format);
            assert_eq!(
                read_xmp(&bytes, container),
                None,
                "{format:?}: no XMP before"
            );
            let marked = insert_xmp(&bytes, container, &xmp_packet()).unwrap();
            let xmp = read_xmp(&marked, container).expect("XMP after marking");
            assert_eq!(
                xmp_digital_source_type(&xmp).as_deref(),
                Some(DIGITAL_SOURCE_TYPE),
                "{format:?}"
            );
            let before = image::load_from_memory(&bytes).unwrap().to_rgb8();
            let after = image::load_from_memory(&marked).unwrap().to_rgb8();
            assert_eq!(before, after, "{format:?}: pixels changed");
        }
    }

    #[test]
    fn marking_twice_keeps_one_xmp_packet() {
        for format in formats() {
            let container = Container::of_format(format);
            let once = insert_xmp(&encoded(format), container, &xmp_packet()).unwrap();
            let twice = insert_xmp(&once, container, &xmp_packet()).unwrap();
            assert_eq!(once, twice, "{format:?}");
        }
    }

    #[test]
    fn webp_gets_an_extended_header_with_the_xmp_flag() {
        let marked =
            insert_xmp(&encoded(OutputFormat::Webp), Container::WebP, &xmp_packet()).unwrap();
        let webp = WebP::from_bytes(Bytes::from(marked)).unwrap();
        let ids: Vec<[u8; 4]> = webp.chunks().iter().map(|c| c.id()).collect();
        assert_eq!(ids, vec![WEBP_VP8X, WEBP_VP8L, WEBP_XMP]);
        let vp8x = webp.chunks()[0].content().data().unwrap();
        assert_eq!(
            vp8x[0], VP8X_XMP_FLAG,
            "XMP flag only (RGB output, no alpha)"
        );
        assert_eq!(webp.dimensions(), Some((24, 16)));
    }

    #[test]
    fn digital_source_type_is_read_from_attribute_or_element() {
        let element = format!(
            "<rdf:Description><Iptc4xmpExt:DigitalSourceType>\n {DIGITAL_SOURCE_TYPE}\n\
             </Iptc4xmpExt:DigitalSourceType></rdf:Description>"
        );
        assert_eq!(
            xmp_digital_source_type(&element).as_deref(),
            Some(DIGITAL_SOURCE_TYPE)
        );
        assert_eq!(
            xmp_digital_source_type("<x Iptc4xmpExt:DigitalSourceType='a'/>").as_deref(),
            Some("a")
        );
        assert_eq!(xmp_digital_source_type("<x:xmpmeta/>"), None);
    }
}
