//! Face geometry: the [`FaceBox`] a detector reports, the square [`CropRect`] around it, and the
//! crop resized to model size.

use image::imageops::{self, FilterType};
use image::{GenericImageView, RgbImage};
use serde::{Deserialize, Serialize};

/// Why a crop could not be placed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FaceError {
    /// A face box with no area.
    #[error("face box is empty ({width}x{height})")]
    EmptyBox { width: u32, height: u32 },
    /// A face box that does not overlap the image.
    #[error("face box {face:?} lies outside the {width}x{height} image")]
    OutsideImage {
        face: FaceBox,
        width: u32,
        height: u32,
    },
    /// An image with no pixels.
    #[error("image is empty ({width}x{height})")]
    EmptyImage { width: u32, height: u32 },
    /// A negative, NaN or infinite margin.
    #[error("crop margin must be finite and non-negative, got {0}")]
    InvalidMargin(f32),
}

/// Filter for every resize of photo content: sharp, little ringing, and it low-passes properly when
/// shrinking a large crop.
pub(super) const RESAMPLE: FilterType = FilterType::Lanczos3;

/// Margin that makes the crop about as large, relative to a tight face box, as the aligned crops
/// the named regions of `mask::Region` assume (`whole_face` spans 62.5% x 68.75% of the crop).
pub const DEFAULT_MARGIN: f32 = 0.25;

/// A detected face, in pixels of the original (upright) image. `x`/`y` may be negative, and the box
/// may stick out of the image, as detectors report it; it must overlap the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaceBox {
    /// Left edge.
    pub x: i32,
    /// Top edge.
    pub y: i32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// A square region of the original image, always inside it: columns `x..x + size`, rows
/// `y..y + size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CropRect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width and height.
    pub size: u32,
}

/// The square crop around `face`: centred on the box, `side = max(w, h) * (1 + 2 * margin)`
/// (rounded, at least 1), shifted to lie inside the image, and shrunk only when the image itself is
/// smaller than that (then `side = min(img_w, img_h)`).
pub fn crop_rect(
    face: FaceBox,
    margin: f32,
    img_w: u32,
    img_h: u32,
) -> Result<CropRect, FaceError> {
    if img_w == 0 || img_h == 0 {
        return Err(FaceError::EmptyImage {
            width: img_w,
            height: img_h,
        });
    }
    if face.width == 0 || face.height == 0 {
        return Err(FaceError::EmptyBox {
            width: face.width,
            height: face.height,
        });
    }
    if !margin.is_finite() || margin < 0.0 {
        return Err(FaceError::InvalidMargin(margin));
    }
    let (x0, y0) = (i64::from(face.x), i64::from(face.y));
    let (x1, y1) = (x0 + i64::from(face.width), y0 + i64::from(face.height));
    if x1 <= 0 || y1 <= 0 || x0 >= i64::from(img_w) || y0 >= i64::from(img_h) {
        return Err(FaceError::OutsideImage {
            face,
            width: img_w,
            height: img_h,
        });
    }
    let wanted = f64::from(face.width.max(face.height)) * (1.0 + 2.0 * f64::from(margin));
    let side = wanted.round().clamp(1.0, f64::from(img_w.min(img_h))) as u32;
    // Centre on the box, then slide back inside the image.
    let place = |start: i64, extent: u32, limit: u32| {
        let centre = start as f64 + f64::from(extent) / 2.0;
        let origin = (centre - f64::from(side) / 2.0).round();
        origin.clamp(0.0, f64::from(limit - side)) as u32
    };
    Ok(CropRect {
        x: place(x0, face.width, img_w),
        y: place(y0, face.height, img_h),
        size: side,
    })
}

/// The pixels of `rect`, resized to `size` x `size`. When the rectangle already has that size the
/// pixels are copied unchanged. A rectangle reaching past the image is cut to it first.
pub fn crop_resize(img: &RgbImage, rect: CropRect, size: u32) -> RgbImage {
    let view = imageops::crop_imm(img, rect.x, rect.y, rect.size, rect.size);
    if view.width() == size && view.height() == size {
        return view.to_image();
    }
    imageops::resize(&*view, size, size, RESAMPLE)
}

/// A face crop as the face embedder (and the model) take it: [`crop_rect`], then [`crop_resize`].
pub fn face_crop(
    img: &RgbImage,
    face: FaceBox,
    margin: f32,
    size: u32,
) -> Result<(CropRect, RgbImage), FaceError> {
    let rect = crop_rect(face, margin, img.width(), img.height())?;
    Ok((rect, crop_resize(img, rect, size)))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{photo, OBAMA};
    use super::*;

    #[test]
    fn crop_is_centred_square_with_margin() {
        let rect = crop_rect(
            FaceBox {
                x: 100,
                y: 50,
                width: 40,
                height: 60,
            },
            0.25,
            400,
            300,
        )
        .unwrap();
        // side = 60 * 1.5 = 90, centre (120, 80).
        assert_eq!(
            rect,
            CropRect {
                x: 75,
                y: 35,
                size: 90
            }
        );
    }

    #[test]
    fn crop_shifts_inside_at_the_border() {
        let corner = FaceBox {
            x: -10,
            y: -5,
            width: 40,
            height: 40,
        };
        assert_eq!(
            crop_rect(corner, 0.5, 200, 100).unwrap(),
            CropRect {
                x: 0,
                y: 0,
                size: 80
            }
        );
        let right = FaceBox {
            x: 180,
            y: 60,
            width: 30,
            height: 30,
        };
        assert_eq!(
            crop_rect(right, 0.5, 200, 100).unwrap(),
            CropRect {
                x: 140,
                y: 40,
                size: 60
            }
        );
    }

    #[test]
    fn crop_shrinks_only_for_a_small_image() {
        let face = FaceBox {
            x: 10,
            y: 10,
            width: 50,
            height: 50,
        };
        assert_eq!(
            crop_rect(face, 1.0, 120, 70).unwrap(),
            CropRect {
                x: 0,
                y: 0,
                size: 70
            }
        );
    }

    #[test]
    fn crop_errors() {
        let face = FaceBox {
            x: 10,
            y: 10,
            width: 5,
            height: 5,
        };
        let empty = FaceBox { width: 0, ..face };
        assert!(matches!(
            crop_rect(empty, 0.2, 50, 50),
            Err(FaceError::EmptyBox { .. })
        ));
        for outside in [
            FaceBox { x: 50, ..face },
            FaceBox { y: 60, ..face },
            FaceBox { x: -5, ..face },
            FaceBox { y: -6, ..face },
        ] {
            assert!(
                matches!(
                    crop_rect(outside, 0.2, 50, 50),
                    Err(FaceError::OutsideImage { .. })
                ),
                "{outside:?}"
            );
        }
        assert!(matches!(
            crop_rect(face, 0.2, 0, 50),
            Err(FaceError::EmptyImage { .. })
        ));
        for margin in [-0.1, f32::NAN, f32::INFINITY] {
            assert!(matches!(
                crop_rect(face, margin, 50, 50),
                Err(FaceError::InvalidMargin(_))
            ));
        }
    }

    #[test]
    fn crop_resize_keeps_pixels_at_native_size() {
        let img = photo("hopper_128x150.png");
        let rect = CropRect {
            x: 0,
            y: 0,
            size: 64,
        };
        let crop = crop_resize(&img, rect, 64);
        assert_eq!(crop, imageops::crop_imm(&img, 0, 0, 64, 64).to_image());
        let offset = CropRect {
            x: 30,
            y: 40,
            size: 64,
        };
        let crop = crop_resize(&img, offset, 64);
        assert_eq!(crop.get_pixel(0, 0), img.get_pixel(30, 40));
        assert_eq!(crop.get_pixel(63, 63), img.get_pixel(93, 103));
    }

    #[test]
    fn reference_crop_of_a_real_face() {
        let img = photo("obama_160x200.jpg");
        let (rect, crop) = face_crop(&img, OBAMA, DEFAULT_MARGIN, 112).unwrap();
        assert_eq!(rect.size, 96);
        assert_eq!(crop.dimensions(), (112, 112));
        // An upscaled crop stays close to the source: compare the centre pixels.
        let src = img.get_pixel(rect.x + 48, rect.y + 48).0;
        let got = crop.get_pixel(56, 56).0;
        assert!(
            src.iter().zip(got).all(|(&a, b)| a.abs_diff(b) < 30),
            "{src:?} vs {got:?}"
        );
    }
}
