//! Decoding uploads: the byte and pixel limits checked before anything is allocated, the format
//! detected from the content, truncated JPEGs caught, and EXIF orientation applied.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use serde::{Deserialize, Serialize};

use super::ImageError;

/// What an upload may cost before it is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodeLimits {
    /// Largest accepted encoded size, in bytes.
    pub max_bytes: usize,
    /// Largest accepted `width * height` (after decoding, before any resizing).
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    /// 20 MiB and 40 megapixels: any phone photo, nothing that could exhaust a worker's memory.
    fn default() -> Self {
        Self {
            max_bytes: 20 * 1024 * 1024,
            max_pixels: 40_000_000,
        }
    }
}

/// Bytes the decoders may allocate on top of the output buffer (Huffman tables, PNG chunks, ICC
/// profiles, row buffers).
const DECODER_OVERHEAD_BYTES: u64 = 64 * 1024 * 1024;

/// The most bytes one decoded pixel takes in any accepted format (16-bit RGBA PNG).
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// A format the worker accepts, detected from the content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Accepted {
    Png,
    Jpeg,
    WebP,
}

impl Accepted {
    fn detect(bytes: &[u8]) -> Result<Self, ImageError> {
        match image::guess_format(bytes) {
            Ok(ImageFormat::Png) => Ok(Self::Png),
            Ok(ImageFormat::Jpeg) => Ok(Self::Jpeg),
            Ok(ImageFormat::WebP) => Ok(Self::WebP),
            Ok(other) => Err(ImageError::UnsupportedFormat {
                detected: format!("{other:?}").to_lowercase(),
            }),
            Err(_) => Err(ImageError::UnsupportedFormat {
                detected: "unrecognised content".to_owned(),
            }),
        }
    }

    fn image_format(self) -> ImageFormat {
        match self {
            Self::Png => ImageFormat::Png,
            Self::Jpeg => ImageFormat::Jpeg,
            Self::WebP => ImageFormat::WebP,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Png => "PNG",
            Self::Jpeg => "JPEG",
            Self::WebP => "WebP",
        }
    }
}

/// Decodes a PNG, JPEG or WebP upload into upright 8-bit RGB.
///
/// Checks, in this order and each before any work the next one needs: the byte size, the format
/// (from the content), the header's dimensions (zero, or more than `limits.max_pixels`), then decodes
/// under a memory limit sized for `max_pixels`. EXIF orientation is applied, so a phone photo comes
/// out the way it is shown; alpha is dropped and grey or 16-bit images are converted to RGB8.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, ImageError> {
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::TooManyBytes {
            size: bytes.len(),
            max: limits.max_bytes,
        });
    }
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = Accepted::detect(bytes)?;
    // NOTE: zune-jpeg (image's JPEG decoder) runs in lenient mode and fills a cut-off scan with grey
    // instead of failing, so a truncated upload would be accepted silently. Walk the markers first.
    if format == Accepted::Jpeg && !jpeg_is_complete(bytes) {
        return Err(ImageError::Corrupt {
            format: format.name(),
            source: None,
        });
    }

    let mut decoder_limits = Limits::default();
    decoder_limits.max_alloc = Some(
        limits
            .max_pixels
            .saturating_mul(MAX_BYTES_PER_PIXEL)
            .saturating_add(DECODER_OVERHEAD_BYTES),
    );
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format.image_format());
    // Parses the header only, and already under the memory budget (the PNG decoder applies it to
    // its compressed metadata chunks); the pixel check below runs before any pixel buffer exists.
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(classify(format))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSize { width, height });
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            width,
            height,
            max: limits.max_pixels,
        });
    }
    // NOTE: a damaged EXIF block in an otherwise fine photo is not worth refusing the upload for;
    // the pixels are then used as stored.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(classify(format))?;
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

/// Maps a decoder error to ours: memory limits apart, everything is a damaged file.
fn classify(format: Accepted) -> impl Fn(image::ImageError) -> ImageError {
    move |source| match source {
        image::ImageError::Limits(_) => ImageError::MemoryLimit(source),
        source => ImageError::Corrupt {
            format: format.name(),
            source: Some(source),
        },
    }
}

/// Whether a JPEG's marker structure runs from SOI to an EOI marker.
///
/// Segments before a scan carry their length; inside entropy-coded data a `0xFF` byte is always
/// followed by `0x00` (stuffing) or a restart marker, so the first other marker ends the scan. An
/// EXIF thumbnail's own EOI sits inside an APP1 segment and is skipped with it.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    const SOI: u8 = 0xD8;
    const EOI: u8 = 0xD9;
    const SOS: u8 = 0xDA;
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != SOI {
        return false;
    }
    let mut pos = 2;
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        while pos < bytes.len() && bytes[pos] == 0xFF && bytes.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        if pos + 1 >= bytes.len() || bytes[pos] != 0xFF {
            return false;
        }
        let marker = bytes[pos + 1];
        pos += 2;
        match marker {
            EOI => return true,
            // Standalone markers without a length field.
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = bytes
            .get(pos..pos + 2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return false;
        };
        if len < 2 {
            return false;
        }
        pos += len;
        if marker == SOS {
            // Skip the entropy-coded data up to the next real marker.
            loop {
                let Some(offset) = bytes
                    .get(pos..)
                    .and_then(|rest| rest.iter().position(|&b| b == 0xFF))
                else {
                    return false;
                };
                pos += offset;
                match bytes.get(pos + 1) {
                    None => return false,
                    Some(0x00) | Some(0xD0..=0xD7) => pos += 2,
                    Some(_) => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{fixture, gradient, limits};
    use super::super::{encode, OutputFormat};
    use super::*;

    #[test]
    fn decodes_real_jpeg_and_png() {
        let obama = decode(&fixture("obama_160x200.jpg"), &limits()).unwrap();
        assert_eq!(obama.dimensions(), (160, 200));
        let hopper = decode(&fixture("hopper_128x150.png"), &limits()).unwrap();
        assert_eq!(hopper.dimensions(), (128, 150));
        // Not a flat image: the photo really was decoded.
        let first = hopper.get_pixel(0, 0);
        assert!(hopper.pixels().any(|p| p != first));
    }

    #[test]
    fn refuses_too_many_bytes_before_parsing() {
        let bytes = fixture("garbage.bin");
        let err = decode(
            &bytes,
            &DecodeLimits {
                max_bytes: 100,
                max_pixels: 1_000,
            },
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::TooManyBytes {
                    size: 256,
                    max: 100
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_empty_and_garbage() {
        assert!(matches!(decode(&[], &limits()), Err(ImageError::Empty)));
        let err = decode(&fixture("garbage.bin"), &limits()).unwrap_err();
        assert!(matches!(err, ImageError::UnsupportedFormat { .. }), "{err}");
        assert!(err.to_string().contains("unsupported image format"));
    }

    #[test]
    fn refuses_gif_and_bmp_by_name() {
        for (file, name) in [("tiny.gif", "gif"), ("tiny.bmp", "bmp")] {
            let err = decode(&fixture(file), &limits()).unwrap_err();
            match &err {
                ImageError::UnsupportedFormat { detected } => assert_eq!(detected, name),
                other => panic!("{file}: {other}"),
            }
        }
    }

    #[test]
    fn refuses_bomb_from_its_header() {
        let err = decode(&fixture("bomb_100000x100000.png"), &limits()).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::TooManyPixels {
                    width: 100_000,
                    height: 100_000,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn pixel_limit_is_inclusive() {
        let bytes = fixture("obama_160x200.jpg");
        let exact = DecodeLimits {
            max_bytes: bytes.len(),
            max_pixels: 160 * 200,
        };
        assert!(decode(&bytes, &exact).is_ok());
        let under = DecodeLimits {
            max_pixels: 160 * 200 - 1,
            ..exact
        };
        assert!(matches!(
            decode(&bytes, &under),
            Err(ImageError::TooManyPixels { .. })
        ));
    }

    #[test]
    fn refuses_truncated_jpeg() {
        let err = decode(&fixture("truncated.jpg"), &limits()).unwrap_err();
        assert!(
            matches!(err, ImageError::Corrupt { format: "JPEG", .. }),
            "{err}"
        );
    }

    #[test]
    fn refuses_truncated_png_and_webp() {
        let png = encode(&gradient(40, 30), OutputFormat::Png).unwrap();
        let err = decode(&png[..png.len() / 2], &limits()).unwrap_err();
        assert!(
            matches!(err, ImageError::Corrupt { format: "PNG", .. }),
            "{err}"
        );
        let webp = encode(&gradient(40, 30), OutputFormat::Webp).unwrap();
        let err = decode(&webp[..webp.len() / 2], &limits()).unwrap_err();
        assert!(
            matches!(err, ImageError::Corrupt { format: "WebP", .. }),
            "{err}"
        );
    }

    #[test]
    fn refuses_zero_size_png() {
        // A PNG signature and an IHDR claiming 0x5 pixels, with a valid CRC.
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&0u32.to_be_bytes());
        ihdr.extend_from_slice(&5u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        let err = decode(&png, &limits()).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::ZeroSize { .. } | ImageError::Corrupt { .. }
            ),
            "{err}"
        );
    }

    /// CRC-32 (IEEE), for crafting PNG chunks.
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn applies_exif_orientation_6() {
        // Stored 24x16 as red | green over blue | white; orientation 6 turns it 90 degrees clockwise,
        // so upright it is 16x24 with blue top-left, red top-right, white bottom-left, green
        // bottom-right.
        let img = decode(&fixture("exif_orientation6.jpg"), &limits()).unwrap();
        assert_eq!(img.dimensions(), (16, 24));
        let near = |x: u32, y: u32, want: [u8; 3]| {
            let got = img.get_pixel(x, y).0;
            assert!(
                got.iter().zip(want).all(|(&g, w)| g.abs_diff(w) < 40),
                "pixel ({x}, {y}) = {got:?}, want about {want:?}"
            );
        };
        near(3, 3, [0, 0, 255]);
        near(12, 3, [255, 0, 0]);
        near(3, 20, [255, 255, 255]);
        near(12, 20, [0, 255, 0]);
    }

    #[test]
    fn jpeg_completeness_walks_markers() {
        let whole = fixture("obama_160x200.jpg");
        assert!(jpeg_is_complete(&whole));
        for cut in [3, 20, whole.len() / 2, whole.len() - 2, whole.len() - 1] {
            assert!(!jpeg_is_complete(&whole[..cut]), "cut at {cut}");
        }
        // Trailing bytes after EOI are tolerated (some cameras append data).
        let mut trailing = whole.clone();
        trailing.extend_from_slice(b"trailer");
        assert!(jpeg_is_complete(&trailing));
    }
}
