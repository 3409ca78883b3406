//! Image bytes in and out: decoding uploads under size limits, encoding results, and the conversion
//! between 8-bit RGB images and the `[-1, 1]` CHW tensors the graphs take (CONTRACT.md, "Pipeline
//! conventions").
//!
//! Decoding is defensive because the bytes come from users: the byte size is checked before anything
//! is parsed, the format is detected from the content (never from a file name), and the header's
//! dimensions are checked against a pixel budget before a single pixel buffer is allocated, so a
//! small file that claims a huge canvas (a decompression bomb) costs nothing.
//!
//! Its parts: `decode` (uploads under [`DecodeLimits`], EXIF orientation), `encode` (results as
//! PNG, JPEG or WebP) and `tensor` (8-bit RGB to and from the graphs' CHW tensors); the
//! [`ImageError`] of both directions lives here.

mod decode;
mod encode;
mod tensor;

pub use decode::{decode, DecodeLimits};
pub use encode::{encode, OutputFormat, DEFAULT_JPEG_QUALITY};
pub use tensor::{from_chw, to_chw};

/// Why an image could not be decoded or encoded. Every decode error is the client's fault (bad
/// input); an encode error is a bug or an out-of-memory condition.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The upload is larger than [`DecodeLimits::max_bytes`]; nothing was parsed.
    #[error("image is {size} bytes, over the limit of {max} bytes")]
    TooManyBytes { size: usize, max: usize },
    /// The upload has no bytes at all.
    #[error("image is empty (0 bytes)")]
    Empty,
    /// The content is not PNG, JPEG or WebP; `detected` names what it looks like, if anything.
    #[error("unsupported image format ({detected}): expected PNG, JPEG or WebP")]
    UnsupportedFormat { detected: String },
    /// The header claims more pixels than [`DecodeLimits::max_pixels`]; no pixel was decoded.
    #[error("image is {width}x{height} pixels, over the limit of {max} pixels")]
    TooManyPixels { width: u32, height: u32, max: u64 },
    /// The header claims a width or height of zero.
    #[error("image has zero size ({width}x{height})")]
    ZeroSize { width: u32, height: u32 },
    /// The decoder would need more memory than the limits allow.
    #[error("decoding the image would exceed its memory limit")]
    MemoryLimit(#[source] image::ImageError),
    /// The bytes start like the format but are damaged or cut short.
    #[error("corrupt or truncated {format} image")]
    Corrupt {
        format: &'static str,
        #[source]
        source: Option<image::ImageError>,
    },
    /// A JPEG quality outside `1..=100`.
    #[error("JPEG quality must be in 1..=100, got {0}")]
    InvalidQuality(u8),
    /// The encoder failed.
    #[error("encoding the {format} image failed")]
    Encode {
        format: &'static str,
        #[source]
        source: image::ImageError,
    },
}

/// The fixture files and the synthetic image the decode and encode tests share.
#[cfg(test)]
mod fixtures {
    use super::DecodeLimits;
    use image::RgbImage;
    use std::path::PathBuf;

    pub(super) fn fixture(name: &str) -> Vec<u8> {
        let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests/data/images", name]
            .iter()
            .collect();
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    pub(super) fn limits() -> DecodeLimits {
        DecodeLimits::default()
    }

    pub(super) fn gradient(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 8) as u8, ((x + y) * 3) as u8])
        })
    }
}
