//! Face crops: the square crop around a face box that the model edits (and that the face embedder
//! reads for the reference photos), and pasting the edited crop back into the original photo with a
//! feathered mask.
//!
//! Pasting back touches nothing it does not have to: a pixel farther than `feather_px` (Euclidean,
//! in original pixels) from every masked pixel keeps its original bytes exactly.

use image::imageops::{self, FilterType};
use image::{GenericImageView, RgbImage};
use serde::{Deserialize, Serialize};

use super::mask::Mask;

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
const RESAMPLE: FilterType = FilterType::Lanczos3;

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

/// Puts the `edited` crop back into `original` at `rect`.
///
/// `edited` and `mask` (any sizes) are stretched to the rectangle (the edited pixels with a Lanczos
/// filter, the mask by nearest neighbour). Masked pixels take the edited value; a pixel at Euclidean
/// distance `0 < d <= feather_px` from the mask is blended with weight
/// `smoothstep(1 - d / (feather_px + 1))`; every other pixel, inside the rectangle or not, keeps
/// its original bytes. `feather_px = 0` is a hard paste. The ramp is cut where the rectangle ends.
pub fn paste_back(
    original: &RgbImage,
    rect: CropRect,
    edited: &RgbImage,
    mask: &Mask,
    feather_px: u32,
) -> RgbImage {
    let mut out = original.clone();
    let (img_w, img_h) = original.dimensions();
    let side = rect.size;
    if side == 0
        || rect.x >= img_w
        || rect.y >= img_h
        || edited.width() == 0
        || edited.height() == 0
    {
        return out;
    }
    let big_mask = mask.downsample_nearest(side);
    let Some(window) = Window::around(&big_mask, side, feather_px) else {
        return out;
    };
    let alpha = feather(&big_mask, side, &window, feather_px);
    let big_edit;
    let edit = if edited.dimensions() == (side, side) {
        edited
    } else {
        big_edit = imageops::resize(edited, side, side, RESAMPLE);
        &big_edit
    };
    // Only the part of the rectangle inside the image is written.
    let x_end = window.x1.min(img_w - rect.x);
    let y_end = window.y1.min(img_h - rect.y);
    for cy in window.y0..y_end {
        for cx in window.x0..x_end {
            let a = alpha[window.index(cx, cy)];
            if a <= 0.0 {
                continue;
            }
            let src = edit.get_pixel(cx, cy).0;
            let dst = out.get_pixel_mut(rect.x + cx, rect.y + cy);
            if a >= 1.0 {
                dst.0 = src;
            } else {
                for (d, s) in dst.0.iter_mut().zip(src) {
                    let mixed = a * f32::from(s) + (1.0 - a) * f32::from(*d);
                    *d = mixed.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
    out
}

/// The part of a `side` x `side` crop within `feather` pixels of the mask's bounding box: no pixel
/// outside it can be blended. Half-open bounds in crop pixels.
struct Window {
    x0: u32,
    y0: u32,
    x1: u32,
    y1: u32,
}

impl Window {
    fn around(mask: &[f32], side: u32, feather: u32) -> Option<Self> {
        let side_us = side as usize;
        let mut bounds: Option<(u32, u32, u32, u32)> = None;
        for (i, _) in mask.iter().enumerate().filter(|(_, &v)| v != 0.0) {
            let (x, y) = ((i % side_us) as u32, (i / side_us) as u32);
            bounds = Some(match bounds {
                None => (x, y, x, y),
                Some((a, b, c, d)) => (a.min(x), b.min(y), c.max(x), d.max(y)),
            });
        }
        let (x0, y0, x1, y1) = bounds?;
        Some(Self {
            x0: x0.saturating_sub(feather),
            y0: y0.saturating_sub(feather),
            x1: x1.saturating_add(feather).saturating_add(1).min(side),
            y1: y1.saturating_add(feather).saturating_add(1).min(side),
        })
    }

    fn width(&self) -> usize {
        (self.x1 - self.x0) as usize
    }

    fn height(&self) -> usize {
        (self.y1 - self.y0) as usize
    }

    /// Index into a window-sized buffer of crop pixel (`cx`, `cy`).
    fn index(&self, cx: u32, cy: u32) -> usize {
        (cy - self.y0) as usize * self.width() + (cx - self.x0) as usize
    }
}

/// Blend weight per window pixel: 1 on the mask, a smoothstep ramp out to `feather` pixels
/// (Euclidean), 0 beyond.
fn feather(mask: &[f32], side: u32, window: &Window, feather: u32) -> Vec<f32> {
    let (w, h) = (window.width(), window.height());
    let mut dist2 = vec![0.0f64; w * h];
    for y in 0..h {
        for x in 0..w {
            let crop_index = (window.y0 as usize + y) * side as usize + window.x0 as usize + x;
            dist2[y * w + x] = if mask[crop_index] != 0.0 { 0.0 } else { FAR };
        }
    }
    squared_distance_transform(&mut dist2, w, h);
    let limit = f64::from(feather);
    let span = limit + 1.0;
    dist2
        .into_iter()
        .map(|d2| {
            let d = d2.sqrt();
            if d == 0.0 {
                1.0
            } else if d > limit {
                0.0
            } else {
                let t = 1.0 - d / span;
                (t * t * (3.0 - 2.0 * t)) as f32
            }
        })
        .collect()
}

/// Stands for "no mask pixel here" in the distance transform: larger than any squared distance,
/// small enough to stay finite in its arithmetic.
const FAR: f64 = 1e18;

/// Exact squared Euclidean distance transform in place (Felzenszwalb and Huttenlocher's lower
/// envelope of parabolas, rows then columns): each value becomes the squared distance to the nearest
/// 0 cell (cells start as 0 or [`FAR`]).
fn squared_distance_transform(grid: &mut [f64], w: usize, h: usize) {
    let n = w.max(h);
    let mut line = vec![0.0; n];
    let mut out = vec![0.0; n];
    let mut sites = vec![0usize; n];
    let mut bounds = vec![0.0; n + 1];
    for y in 0..h {
        line[..w].copy_from_slice(&grid[y * w..(y + 1) * w]);
        lower_envelope(&line[..w], &mut out[..w], &mut sites, &mut bounds);
        grid[y * w..(y + 1) * w].copy_from_slice(&out[..w]);
    }
    for x in 0..w {
        for y in 0..h {
            line[y] = grid[y * w + x];
        }
        lower_envelope(&line[..h], &mut out[..h], &mut sites, &mut bounds);
        for y in 0..h {
            grid[y * w + x] = out[y];
        }
    }
}

/// One dimension of [`squared_distance_transform`]: `out[q] = min_p (q - p)^2 + f[p]`.
fn lower_envelope(f: &[f64], out: &mut [f64], sites: &mut [usize], bounds: &mut [f64]) {
    let n = f.len();
    if n == 0 {
        return;
    }
    let intersect = |p: usize, q: usize| {
        let (pf, qf) = (p as f64, q as f64);
        ((f[q] + qf * qf) - (f[p] + pf * pf)) / (2.0 * (qf - pf))
    };
    let mut k = 0;
    sites[0] = 0;
    bounds[0] = f64::NEG_INFINITY;
    bounds[1] = f64::INFINITY;
    for q in 1..n {
        let mut s = intersect(sites[k], q);
        while s <= bounds[k] {
            k -= 1;
            s = intersect(sites[k], q);
        }
        k += 1;
        sites[k] = q;
        bounds[k] = s;
        bounds[k + 1] = f64::INFINITY;
    }
    k = 0;
    for (q, value) in out.iter_mut().enumerate() {
        while bounds[k + 1] < q as f64 {
            k += 1;
        }
        let d = q as f64 - sites[k] as f64;
        *value = d * d + f[sites[k]];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::image::{decode, DecodeLimits};
    use crate::pipeline::mask::{PixelBox, Region};
    use image::Rgb;

    fn photo(name: &str) -> RgbImage {
        let path = format!("{}/tests/data/images/{name}", env!("CARGO_MANIFEST_DIR"));
        decode(&std::fs::read(&path).unwrap(), &DecodeLimits::default()).unwrap()
    }

    /// Face boxes of the fixture photos (see tests/data/images/SOURCES.md).
    const OBAMA: FaceBox = FaceBox {
        x: 62,
        y: 12,
        width: 48,
        height: 64,
    };
    const HOPPER: FaceBox = FaceBox {
        x: 40,
        y: 34,
        width: 53,
        height: 50,
    };

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

    /// For every pixel of `original`, whether it lies within `feather` pixels (Euclidean) of a
    /// masked pixel after the mask is stretched to `rect`: a brute-force reference.
    fn near_mask(original: &RgbImage, rect: CropRect, mask: &Mask, feather: u32) -> Vec<bool> {
        let big = mask.downsample_nearest(rect.size);
        let side = rect.size as i64;
        let f = i64::from(feather);
        let (w, h) = original.dimensions();
        let mut near = vec![false; (w * h) as usize];
        for y in 0..h as i64 {
            for x in 0..w as i64 {
                let (cx, cy) = (x - i64::from(rect.x), y - i64::from(rect.y));
                // Outside the rectangle nothing may change.
                if !(0..side).contains(&cx) || !(0..side).contains(&cy) {
                    continue;
                }
                'search: for dy in -f..=f {
                    for dx in -f..=f {
                        let (mx, my) = (cx + dx, cy + dy);
                        if dx * dx + dy * dy <= f * f
                            && (0..side).contains(&mx)
                            && (0..side).contains(&my)
                            && big[(my * side + mx) as usize] != 0.0
                        {
                            near[(y * i64::from(w) + x) as usize] = true;
                            break 'search;
                        }
                    }
                }
            }
        }
        near
    }

    fn invert(img: &RgbImage) -> RgbImage {
        let mut out = img.clone();
        for px in out.pixels_mut() {
            px.0 = px.0.map(|v| 255 - v);
        }
        out
    }

    /// Pastes an inverted crop and checks the guarantee: identical outside the feathered mask,
    /// changed on the mask.
    fn check_paste(original: &RgbImage, face: FaceBox, region: Region, feather: u32) {
        let (rect, crop) = face_crop(original, face, DEFAULT_MARGIN, 64).unwrap();
        let edited = invert(&crop);
        let mask = Mask::from_region(region, 64).unwrap();
        let out = paste_back(original, rect, &edited, &mask, feather);
        assert_eq!(out.dimensions(), original.dimensions());
        let near = near_mask(original, rect, &mask, feather);
        let on_mask = near_mask(original, rect, &mask, 0);
        let (mut kept, mut changed) = (0, 0);
        for (i, ((o, p), (&n, &m))) in original
            .pixels()
            .zip(out.pixels())
            .zip(near.iter().zip(&on_mask))
            .enumerate()
        {
            if !n {
                assert_eq!(o, p, "pixel {i} outside the feathered mask changed");
                kept += 1;
            }
            if m && o != p {
                changed += 1;
            }
        }
        let masked = on_mask.iter().filter(|&&m| m).count();
        assert!(kept > 0);
        // Inverting changes nearly every pixel (mid-grey 127/128 pairs are the exception).
        assert!(
            changed * 10 >= masked * 9,
            "{changed} of {masked} masked pixels changed"
        );
    }

    #[test]
    fn paste_back_leaves_everything_outside_untouched_on_real_photos() {
        let obama = photo("obama_160x200.jpg");
        let hopper = photo("hopper_128x150.png");
        for feather in [0, 3, 8] {
            check_paste(&obama, OBAMA, Region::WholeFace, feather);
            check_paste(&obama, OBAMA, Region::Mouth, feather);
            check_paste(&hopper, HOPPER, Region::Eyes, feather);
        }
    }

    #[test]
    fn paste_back_at_the_image_border() {
        let hopper = photo("hopper_128x150.png");
        let corners = [
            FaceBox {
                x: -20,
                y: -20,
                width: 50,
                height: 50,
            },
            FaceBox {
                x: 100,
                y: 120,
                width: 40,
                height: 40,
            },
        ];
        for face in corners {
            for feather in [0, 5] {
                check_paste(&hopper, face, Region::WholeFace, feather);
                // The whole crop, touching the image edges.
                let (rect, crop) = face_crop(&hopper, face, DEFAULT_MARGIN, 64).unwrap();
                let all = Mask::from_box(
                    PixelBox {
                        x: 0,
                        y: 0,
                        width: 64,
                        height: 64,
                    },
                    64,
                )
                .unwrap();
                let out = paste_back(&hopper, rect, &invert(&crop), &all, feather);
                let near = near_mask(&hopper, rect, &all, feather);
                for (i, (o, p)) in hopper.pixels().zip(out.pixels()).enumerate() {
                    if !near[i] {
                        assert_eq!(o, p, "pixel {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn hard_paste_copies_the_edit_exactly_at_native_size() {
        // A 20x20 crop edited at 20x20: no resampling, so masked pixels are the edit's bytes.
        let original = RgbImage::from_pixel(50, 40, Rgb([10, 20, 30]));
        let rect = CropRect {
            x: 25,
            y: 15,
            size: 20,
        };
        let edited = RgbImage::from_fn(20, 20, |x, y| Rgb([x as u8 * 10, y as u8 * 10, 200]));
        let b = PixelBox {
            x: 5,
            y: 6,
            width: 7,
            height: 3,
        };
        let mask = Mask::from_box(b, 20).unwrap();
        let out = paste_back(&original, rect, &edited, &mask, 0);
        for (x, y, px) in out.enumerate_pixels() {
            let (cx, cy) = (x as i64 - 25, y as i64 - 15);
            let inside = (5..12).contains(&cx) && (6..9).contains(&cy);
            if inside {
                assert_eq!(*px, *edited.get_pixel(cx as u32, cy as u32));
            } else {
                assert_eq!(*px, Rgb([10, 20, 30]), "({x}, {y})");
            }
        }
    }

    #[test]
    fn feather_ramps_down_with_distance() {
        let original = RgbImage::from_pixel(40, 1, Rgb([0, 0, 0]));
        let rect = CropRect {
            x: 0,
            y: 0,
            size: 40,
        };
        let edited = RgbImage::from_pixel(40, 40, Rgb([255, 255, 255]));
        // Mask: column 10 and left of it, all rows of the crop; the image has only row 0.
        let mask = Mask::from_box(
            PixelBox {
                x: 0,
                y: 0,
                width: 11,
                height: 40,
            },
            40,
        )
        .unwrap();
        let out = paste_back(&original, rect, &edited, &mask, 4);
        let row: Vec<u8> = (0..40).map(|x| out.get_pixel(x, 0).0[0]).collect();
        assert!(row[..=10].iter().all(|&v| v == 255));
        // d = 1..4 -> t = 0.8, 0.6, 0.4, 0.2 -> smoothstep 0.896, 0.648, 0.352, 0.104.
        assert_eq!(&row[11..15], &[228, 165, 90, 27]);
        assert!(row[15..].iter().all(|&v| v == 0));
    }

    #[test]
    fn distance_transform_is_exact() {
        let (w, h) = (9, 7);
        let seeds = [(1usize, 1usize), (7, 5), (4, 0)];
        let mut grid = vec![FAR; w * h];
        for &(x, y) in &seeds {
            grid[y * w + x] = 0.0;
        }
        squared_distance_transform(&mut grid, w, h);
        for y in 0..h {
            for x in 0..w {
                let want = seeds
                    .iter()
                    .map(|&(sx, sy)| {
                        let (dx, dy) = (x as f64 - sx as f64, y as f64 - sy as f64);
                        dx * dx + dy * dy
                    })
                    .fold(f64::INFINITY, f64::min);
                assert_eq!(grid[y * w + x], want, "({x}, {y})");
            }
        }
    }

    #[test]
    fn paste_back_tolerates_degenerate_input() {
        let original = RgbImage::from_pixel(10, 10, Rgb([1, 2, 3]));
        let mask = Mask::from_region(Region::WholeFace, 8).unwrap();
        let edited = RgbImage::from_pixel(8, 8, Rgb([9, 9, 9]));
        let outside = CropRect {
            x: 20,
            y: 0,
            size: 5,
        };
        assert_eq!(paste_back(&original, outside, &edited, &mask, 2), original);
        let empty_edit = RgbImage::new(0, 0);
        let rect = CropRect {
            x: 0,
            y: 0,
            size: 10,
        };
        assert_eq!(paste_back(&original, rect, &empty_edit, &mask, 2), original);
        // A rectangle reaching past the image is written only where it overlaps.
        let partial = CropRect {
            x: 6,
            y: 6,
            size: 8,
        };
        let out = paste_back(&original, partial, &edited, &mask, 0);
        assert_eq!(*out.get_pixel(9, 9), Rgb([9, 9, 9]));
        assert_eq!(*out.get_pixel(5, 5), Rgb([1, 2, 3]));
    }
}
