//! Encoding results: the [`OutputFormat`] a job asks for (and its accepted spellings) and
//! [`encode`].

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder, RgbImage};
use serde::{Deserialize, Serialize};

use super::ImageError;

/// Quality used when a job asks for `"jpeg"` without one.
pub const DEFAULT_JPEG_QUALITY: u8 = 90;

/// The encoding of a result image.
///
/// Serialised as `"png"`, `"webp"` or `{"jpeg": {"quality": 90}}`; `"jpeg"` alone is accepted and
/// means [`DEFAULT_JPEG_QUALITY`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", from = "OutputFormatRepr")]
pub enum OutputFormat {
    /// Lossless PNG.
    #[default]
    Png,
    /// Baseline JPEG at `quality` (1..=100).
    Jpeg { quality: u8 },
    /// WebP. NOTE: the `image` crate only encodes lossless WebP.
    Webp,
}

impl OutputFormat {
    /// The MIME type of the encoded bytes, for the object store.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg { .. } => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }

    /// The usual file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg { .. } => "jpg",
            Self::Webp => "webp",
        }
    }
}

/// The accepted spellings of an [`OutputFormat`]: a bare name, or the full tagged form.
#[derive(Deserialize)]
#[serde(untagged)]
enum OutputFormatRepr {
    Name(FormatName),
    Full(FullFormat),
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum FormatName {
    Png,
    Jpeg,
    Webp,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum FullFormat {
    Png,
    Jpeg { quality: u8 },
    Webp,
}

impl From<OutputFormatRepr> for OutputFormat {
    fn from(repr: OutputFormatRepr) -> Self {
        match repr {
            OutputFormatRepr::Name(FormatName::Png) | OutputFormatRepr::Full(FullFormat::Png) => {
                Self::Png
            }
            OutputFormatRepr::Name(FormatName::Jpeg) => Self::Jpeg {
                quality: DEFAULT_JPEG_QUALITY,
            },
            OutputFormatRepr::Full(FullFormat::Jpeg { quality }) => Self::Jpeg { quality },
            OutputFormatRepr::Name(FormatName::Webp) | OutputFormatRepr::Full(FullFormat::Webp) => {
                Self::Webp
            }
        }
    }
}

/// Encodes an RGB image. A JPEG quality outside `1..=100` is refused rather than clamped.
pub fn encode(img: &RgbImage, fmt: OutputFormat) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    let (width, height) = img.dimensions();
    let result = match fmt {
        OutputFormat::Png => PngEncoder::new(&mut out).write_image(
            img.as_raw(),
            width,
            height,
            ExtendedColorType::Rgb8,
        ),
        OutputFormat::Jpeg { quality } => {
            if !(1..=100).contains(&quality) {
                return Err(ImageError::InvalidQuality(quality));
            }
            JpegEncoder::new_with_quality(&mut out, quality).write_image(
                img.as_raw(),
                width,
                height,
                ExtendedColorType::Rgb8,
            )
        }
        OutputFormat::Webp => WebPEncoder::new_lossless(&mut out).write_image(
            img.as_raw(),
            width,
            height,
            ExtendedColorType::Rgb8,
        ),
    };
    result.map_err(|source| ImageError::Encode {
        format: fmt.extension(),
        source,
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::decode;
    use super::super::fixtures::{fixture, gradient, limits};
    use super::*;
    use image::ImageFormat;

    #[test]
    fn lossless_formats_round_trip() {
        let img = gradient(40, 30);
        for fmt in [OutputFormat::Png, OutputFormat::Webp] {
            let bytes = encode(&img, fmt).unwrap();
            assert_eq!(decode(&bytes, &limits()).unwrap(), img, "{fmt:?}");
        }
    }

    #[test]
    fn jpeg_round_trips_closely_and_quality_matters() {
        let img = decode(&fixture("hopper_128x150.png"), &limits()).unwrap();
        let mean_error = |quality| {
            let bytes = encode(&img, OutputFormat::Jpeg { quality }).unwrap();
            assert_eq!(image::guess_format(&bytes).unwrap(), ImageFormat::Jpeg);
            let back = decode(&bytes, &limits()).unwrap();
            let total: u64 = img
                .as_raw()
                .iter()
                .zip(back.as_raw())
                .map(|(&a, &b)| u64::from(a.abs_diff(b)))
                .sum();
            total as f64 / img.as_raw().len() as f64
        };
        let high = mean_error(95);
        let low = mean_error(10);
        assert!(high < 3.0, "quality 95: mean abs error {high}");
        assert!(
            low > high,
            "quality 10 ({low}) should be worse than 95 ({high})"
        );
    }

    #[test]
    fn refuses_bad_jpeg_quality() {
        let img = gradient(4, 4);
        for quality in [0, 101] {
            assert!(matches!(
                encode(&img, OutputFormat::Jpeg { quality }),
                Err(ImageError::InvalidQuality(q)) if q == quality
            ));
        }
    }

    #[test]
    fn output_format_serde() {
        let parse = |s: &str| serde_json::from_str::<OutputFormat>(s);
        assert_eq!(parse("\"png\"").unwrap(), OutputFormat::Png);
        assert_eq!(parse("\"webp\"").unwrap(), OutputFormat::Webp);
        assert_eq!(
            parse("\"jpeg\"").unwrap(),
            OutputFormat::Jpeg {
                quality: DEFAULT_JPEG_QUALITY
            }
        );
        assert_eq!(
            parse(r#"{"jpeg": {"quality": 75}}"#).unwrap(),
            OutputFormat::Jpeg { quality: 75 }
        );
        assert!(parse("\"gif\"").is_err());
        assert!(parse(r#"{"jpeg": {"quality": 75, "x": 1}}"#).is_err());
        for fmt in [
            OutputFormat::Png,
            OutputFormat::Webp,
            OutputFormat::Jpeg { quality: 42 },
        ] {
            let json = serde_json::to_string(&fmt).unwrap();
            assert_eq!(parse(&json).unwrap(), fmt, "{json}");
        }
        assert_eq!(
            serde_json::to_string(&OutputFormat::Png).unwrap(),
            "\"png\""
        );
    }
}
