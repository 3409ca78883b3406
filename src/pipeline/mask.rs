//! Inpainting masks on the aligned square face crop: built from a named region, a box or an
//! uploaded mask image; then the latent-resolution mask and the masked image the UNet takes
//! (CONTRACT.md, "Pipeline conventions").
//!
//! A mask is binary, `1.0` = repaint, `0.0` = keep, one value per crop pixel, row-major.

use image::{DynamicImage, GrayImage};
use serde::{Deserialize, Serialize};

/// Why a mask could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaskError {
    /// The mask would select nothing to repaint (an empty box, a black mask image).
    #[error("mask selects no pixels")]
    Empty,
    /// A mask image whose size is not the crop's.
    #[error("mask image is {width}x{height}, expected {size}x{size}")]
    WrongSize { width: u32, height: u32, size: u32 },
    /// A crop of zero pixels.
    #[error("mask size must be positive")]
    ZeroSize,
}

/// A named region of the aligned face crop, approximating the paper's CelebAHQ-IDI regions for a
/// centred face.
///
/// Each is the box `[x0, x1) x [y0, y1)` of fractions of the crop side (CONTRACT.md's table):
///
/// | region | x0 | y0 | x1 | y1 |
/// |---|---|---|---|---|
/// | `whole_face` | 0.1875 | 0.25 | 0.8125 | 0.9375 |
/// | `lower_face` | 0.1875 | 0.5625 | 0.8125 | 0.9375 |
/// | `eyebrows` | 0.21875 | 0.28125 | 0.78125 | 0.40625 |
/// | `eyes` | 0.21875 | 0.375 | 0.78125 | 0.5 |
/// | `mouth` | 0.3125 | 0.6875 | 0.6875 | 0.84375 |
///
/// Pixel bounds are `round(f * size)`; for 64 `whole_face` is columns 12..52, rows 16..60.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    /// Chin to forehead, cheek to cheek; the tuning step's leave-one-out target.
    WholeFace,
    /// Nose tip to chin.
    LowerFace,
    /// Both eyebrows.
    Eyebrows,
    /// Both eyes.
    Eyes,
    /// Mouth and lips.
    Mouth,
}

impl Region {
    /// Every region, in the order of the contract's table.
    pub const ALL: [Region; 5] = [
        Region::WholeFace,
        Region::LowerFace,
        Region::Eyebrows,
        Region::Eyes,
        Region::Mouth,
    ];

    /// `[x0, y0, x1, y1)` as fractions of the crop side.
    pub fn fractions(self) -> [f64; 4] {
        match self {
            Region::WholeFace => [0.1875, 0.25, 0.8125, 0.9375],
            Region::LowerFace => [0.1875, 0.5625, 0.8125, 0.9375],
            Region::Eyebrows => [0.21875, 0.28125, 0.78125, 0.40625],
            Region::Eyes => [0.21875, 0.375, 0.78125, 0.5],
            Region::Mouth => [0.3125, 0.6875, 0.6875, 0.84375],
        }
    }

    /// The region's pixels in a `size` x `size` crop.
    pub fn pixel_box(self, size: u32) -> PixelBox {
        // NOTE: Python's round() rounds halves to even; so does this, so that both sides pick the
        // same pixel at every size (at 64 and 512 every bound is an integer anyway).
        let px = |f: f64| (f * f64::from(size)).round_ties_even() as u32;
        let [x0, y0, x1, y1] = self.fractions().map(px);
        PixelBox {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        }
    }
}

/// An axis-aligned box of crop pixels: columns `x..x + width`, rows `y..y + height`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PixelBox {
    /// First column.
    pub x: u32,
    /// First row.
    pub y: u32,
    /// Number of columns.
    pub width: u32,
    /// Number of rows.
    pub height: u32,
}

/// A binary `size` x `size` inpainting mask, row-major, `1.0` = repaint.
///
/// Every constructor refuses a mask that selects nothing, so a `Mask` always has work in it.
#[derive(Clone, Debug, PartialEq)]
pub struct Mask {
    size: u32,
    values: Vec<f32>,
}

impl Mask {
    /// The named region's box in a `size` x `size` crop.
    pub fn from_region(region: Region, size: u32) -> Result<Self, MaskError> {
        Self::from_box(region.pixel_box(size), size)
    }

    /// The box (in crop pixels) in a `size` x `size` crop. The part outside the crop is dropped;
    /// a box with nothing inside the crop is refused.
    pub fn from_box(b: PixelBox, size: u32) -> Result<Self, MaskError> {
        if size == 0 {
            return Err(MaskError::ZeroSize);
        }
        let x1 = b.x.saturating_add(b.width).min(size);
        let y1 = b.y.saturating_add(b.height).min(size);
        if b.x >= x1 || b.y >= y1 {
            return Err(MaskError::Empty);
        }
        let side = size as usize;
        let mut values = vec![0.0; side * side];
        for row in b.y..y1 {
            let start = row as usize * side;
            values[start + b.x as usize..start + x1 as usize].fill(1.0);
        }
        Ok(Self { size, values })
    }

    /// An 8-bit grey mask image: `value >= 128` (that is `value / 255 >= 0.5`) -> repaint.
    pub fn from_gray(img: &GrayImage, size: u32) -> Result<Self, MaskError> {
        Self::from_image(&DynamicImage::ImageLuma8(img.clone()), size)
    }

    /// A mask image of any colour type: its luma if grey, else its channel 0 (red), scaled to
    /// `[0, 1]` and binarised `>= 0.5` -> repaint. Alpha is ignored. It must be `size` x `size`.
    pub fn from_image(img: &DynamicImage, size: u32) -> Result<Self, MaskError> {
        if size == 0 {
            return Err(MaskError::ZeroSize);
        }
        if img.width() != size || img.height() != size {
            return Err(MaskError::WrongSize {
                width: img.width(),
                height: img.height(),
                size,
            });
        }
        fn binarise<T: Copy>(raw: &[T], channels: usize, on: impl Fn(T) -> bool) -> Vec<f32> {
            raw.chunks_exact(channels)
                .map(|px| if on(px[0]) { 1.0 } else { 0.0 })
                .collect()
        }
        let half_u8 = |v: u8| v >= 128;
        let half_u16 = |v: u16| v >= 32768;
        let values = match img {
            DynamicImage::ImageLuma8(i) => binarise(i.as_raw(), 1, half_u8),
            DynamicImage::ImageLumaA8(i) => binarise(i.as_raw(), 2, half_u8),
            DynamicImage::ImageRgb8(i) => binarise(i.as_raw(), 3, half_u8),
            DynamicImage::ImageRgba8(i) => binarise(i.as_raw(), 4, half_u8),
            DynamicImage::ImageLuma16(i) => binarise(i.as_raw(), 1, half_u16),
            DynamicImage::ImageLumaA16(i) => binarise(i.as_raw(), 2, half_u16),
            DynamicImage::ImageRgb16(i) => binarise(i.as_raw(), 3, half_u16),
            DynamicImage::ImageRgba16(i) => binarise(i.as_raw(), 4, half_u16),
            other => binarise(other.to_rgb32f().as_raw(), 3, |v: f32| v >= 0.5),
        };
        if !values.contains(&1.0) {
            return Err(MaskError::Empty);
        }
        Ok(Self { size, values })
    }

    /// Side of the square mask, in pixels.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The values, row-major, `size * size` of them, each `0.0` or `1.0`.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Whether pixel (`x`, `y`) is to be repainted; `false` outside the mask.
    pub fn get(&self, x: u32, y: u32) -> bool {
        x < self.size && y < self.size && self.values[(y * self.size + x) as usize] != 0.0
    }

    /// Number of pixels to repaint.
    pub fn count(&self) -> usize {
        self.values.iter().filter(|&&v| v != 0.0).count()
    }

    /// The mask at `out` x `out` by nearest neighbour with PyTorch's `F.interpolate(mode="nearest")`
    /// rule: output pixel `d` reads source pixel `floor(d * in / out)`. Used for the latent mask
    /// (`out` = latent size) and, upward, for pasting back. `out` = 0 gives an empty vector.
    pub fn downsample_nearest(&self, out: u32) -> Vec<f32> {
        let src = |d: u32| (u64::from(d) * u64::from(self.size) / u64::from(out)) as usize;
        let side = self.size as usize;
        let mut result = Vec::with_capacity(out as usize * out as usize);
        for dy in 0..out {
            let row = &self.values[src(dy) * side..(src(dy) + 1) * side];
            result.extend((0..out).map(|dx| row[src(dx)]));
        }
        result
    }

    /// The mask as a black-and-white image (255 = repaint), e.g. to store next to a result.
    pub fn to_image(&self) -> GrayImage {
        GrayImage::from_fn(self.size, self.size, |x, y| {
            image::Luma([if self.get(x, y) { 255 } else { 0 }])
        })
    }
}

/// The UNet's masked image: `image * (1 - mask)`, per channel, for a CHW tensor of the mask's size
/// (repainted pixels become 0, mid-grey in `[-1, 1]`).
///
/// # Panics
/// If `chw.len()` is not a multiple of `size * size` (a caller bug, not bad input).
pub fn masked_image(chw: &[f32], mask: &Mask) -> Vec<f32> {
    let plane = mask.values.len();
    assert!(
        plane > 0 && chw.len().is_multiple_of(plane),
        "CHW buffer does not match the mask size"
    );
    chw.chunks_exact(plane)
        .flat_map(|channel| {
            channel
                .iter()
                .zip(&mask.values)
                .map(|(&x, &m)| x * (1.0 - m))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Luma, Rgb, RgbImage, Rgba, RgbaImage};

    #[test]
    fn region_boxes_at_64_match_the_contract() {
        assert_eq!(
            Region::WholeFace.pixel_box(64),
            PixelBox {
                x: 12,
                y: 16,
                width: 40,
                height: 44
            }
        );
        let bounds = |r: Region| {
            let b = r.pixel_box(64);
            [b.x, b.y, b.x + b.width, b.y + b.height]
        };
        assert_eq!(bounds(Region::LowerFace), [12, 36, 52, 60]);
        assert_eq!(bounds(Region::Eyebrows), [14, 18, 50, 26]);
        assert_eq!(bounds(Region::Eyes), [14, 24, 50, 32]);
        assert_eq!(bounds(Region::Mouth), [20, 44, 44, 54]);
        assert_eq!(
            Region::WholeFace.pixel_box(512),
            PixelBox {
                x: 96,
                y: 128,
                width: 320,
                height: 352
            }
        );
    }

    #[test]
    fn region_bounds_round_half_to_even() {
        // 0.21875 * 112 = 24.5 -> 24 and 0.78125 * 112 = 87.5 -> 88, as Python's round().
        let b = Region::Eyes.pixel_box(112);
        assert_eq!((b.x, b.x + b.width), (24, 88));
    }

    #[test]
    fn region_serde_is_snake_case() {
        assert_eq!(
            serde_json::from_str::<Region>("\"lower_face\"").unwrap(),
            Region::LowerFace
        );
        assert_eq!(
            serde_json::to_string(&Region::WholeFace).unwrap(),
            "\"whole_face\""
        );
        assert!(serde_json::from_str::<Region>("\"nose\"").is_err());
    }

    #[test]
    fn region_mask_covers_exactly_its_box() {
        for region in Region::ALL {
            let mask = Mask::from_region(region, 64).unwrap();
            let b = region.pixel_box(64);
            assert_eq!(mask.count(), (b.width * b.height) as usize, "{region:?}");
            for y in 0..64 {
                for x in 0..64 {
                    let inside =
                        (b.x..b.x + b.width).contains(&x) && (b.y..b.y + b.height).contains(&y);
                    assert_eq!(mask.get(x, y), inside, "{region:?} at ({x}, {y})");
                }
            }
        }
    }

    #[test]
    fn box_is_clipped_and_empty_refused() {
        let mask = Mask::from_box(
            PixelBox {
                x: 6,
                y: 7,
                width: 100,
                height: 2,
            },
            8,
        )
        .unwrap();
        assert_eq!(mask.count(), 2);
        assert!(mask.get(7, 7) && mask.get(6, 7) && !mask.get(5, 7));
        let outside = PixelBox {
            x: 8,
            y: 0,
            width: 4,
            height: 4,
        };
        assert_eq!(Mask::from_box(outside, 8), Err(MaskError::Empty));
        let empty = PixelBox {
            x: 1,
            y: 1,
            width: 0,
            height: 4,
        };
        assert_eq!(Mask::from_box(empty, 8), Err(MaskError::Empty));
        assert_eq!(
            Mask::from_region(Region::Mouth, 0),
            Err(MaskError::ZeroSize)
        );
    }

    #[test]
    fn mask_image_thresholds_at_half() {
        let gray = GrayImage::from_fn(4, 4, |x, y| {
            Luma([if y == 0 {
                [0, 127, 128, 255][x as usize]
            } else {
                0
            }])
        });
        let mask = Mask::from_gray(&gray, 4).unwrap();
        assert_eq!(&mask.values()[..4], &[0.0, 0.0, 1.0, 1.0]);
        assert_eq!(mask.count(), 2);
    }

    #[test]
    fn colour_mask_reads_channel_zero_and_ignores_alpha() {
        // Green and transparent pixels do not count; only red >= 128 does.
        let rgba = RgbaImage::from_fn(2, 2, |x, y| match (x, y) {
            (0, 0) => Rgba([200, 0, 0, 0]),
            (1, 0) => Rgba([0, 255, 0, 255]),
            _ => Rgba([127, 255, 255, 255]),
        });
        let mask = Mask::from_image(&DynamicImage::ImageRgba8(rgba), 2).unwrap();
        assert_eq!(mask.values(), &[1.0, 0.0, 0.0, 0.0]);
        let rgb16 =
            DynamicImage::ImageRgb8(RgbImage::from_pixel(2, 2, Rgb([128, 0, 0]))).into_rgb16();
        let mask = Mask::from_image(&DynamicImage::ImageRgb16(rgb16), 2).unwrap();
        assert_eq!(mask.count(), 4);
    }

    #[test]
    fn mask_image_errors() {
        let black = GrayImage::new(8, 8);
        assert_eq!(Mask::from_gray(&black, 8), Err(MaskError::Empty));
        assert_eq!(MaskError::Empty.to_string(), "mask selects no pixels");
        let white = GrayImage::from_pixel(8, 6, Luma([255]));
        assert_eq!(
            Mask::from_gray(&white, 8),
            Err(MaskError::WrongSize {
                width: 8,
                height: 6,
                size: 8
            })
        );
    }

    #[test]
    fn mask_image_round_trips() {
        let mask = Mask::from_region(Region::Eyes, 32).unwrap();
        assert_eq!(Mask::from_gray(&mask.to_image(), 32).unwrap(), mask);
    }

    #[test]
    fn downsample_follows_torch_nearest() {
        // 64 -> 8 reads rows and columns 0, 8, ..., 56.
        let mask = Mask::from_region(Region::WholeFace, 64).unwrap();
        let small = mask.downsample_nearest(8);
        for dy in 0..8u32 {
            for dx in 0..8u32 {
                let want = if mask.get(dx * 8, dy * 8) { 1.0 } else { 0.0 };
                assert_eq!(small[(dy * 8 + dx) as usize], want);
            }
        }
        // whole_face at 64 is cols 12..52, rows 16..60; of the sources 0, 8, ..., 56 the columns
        // 16..=48 and the rows 16..=56 fall inside, so the latent mask is columns 2..7, rows 2..8.
        let cols: Vec<u32> = (0..8)
            .filter(|&dx| small[(3 * 8 + dx) as usize] == 1.0)
            .collect();
        let rows: Vec<u32> = (0..8)
            .filter(|&dy| small[(dy * 8 + 3) as usize] == 1.0)
            .collect();
        assert_eq!(cols, vec![2, 3, 4, 5, 6]);
        assert_eq!(rows, vec![2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn downsample_uneven_sizes() {
        // in 5 -> out 3: sources floor(0 * 5 / 3) = 0, floor(5 / 3) = 1, floor(10 / 3) = 3.
        let mask = Mask::from_box(
            PixelBox {
                x: 3,
                y: 1,
                width: 1,
                height: 1,
            },
            5,
        )
        .unwrap();
        let small = mask.downsample_nearest(3);
        let mut want = vec![0.0; 9];
        want[3 + 2] = 1.0; // row 1 (source 1), column 2 (source 3)
        assert_eq!(small, want);
        // Upsampling 2 -> 4 repeats each pixel twice.
        let tiny = Mask::from_box(
            PixelBox {
                x: 1,
                y: 0,
                width: 1,
                height: 1,
            },
            2,
        )
        .unwrap();
        assert_eq!(
            tiny.downsample_nearest(4),
            [
                [0.0, 0.0, 1.0, 1.0],
                [0.0, 0.0, 1.0, 1.0],
                [0.0; 4],
                [0.0; 4]
            ]
            .concat()
        );
    }

    #[test]
    fn masked_image_zeroes_repainted_pixels_in_every_channel() {
        let mask = Mask::from_box(
            PixelBox {
                x: 0,
                y: 0,
                width: 1,
                height: 2,
            },
            2,
        )
        .unwrap();
        let chw: Vec<f32> = (1..=12).map(|v| v as f32 / 12.0).collect();
        let out = masked_image(&chw, &mask);
        for c in 0..3 {
            let plane = &out[c * 4..c * 4 + 4];
            let src = &chw[c * 4..c * 4 + 4];
            assert_eq!(plane, &[0.0, src[1], 0.0, src[3]]);
        }
    }
}
