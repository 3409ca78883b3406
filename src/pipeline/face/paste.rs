//! Pasting an edited crop back into the original photo, blended over a feathered band around the
//! mask; every pixel farther from the mask keeps its original bytes.

use image::imageops;
use image::RgbImage;

use super::super::mask::Mask;
use super::crop::{CropRect, RESAMPLE};
use super::distance::{squared_distance_transform, FAR};

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

/// The blend weights over the whole `side` x `side` crop (0 beyond the feathered band) and the edited
/// crop stretched to it: what [`paste_back`] lays into the photo, for a paste-back that turns it
/// first (`super::align`). `None` when the mask is empty.
pub(super) fn upright_layers(
    side: u32,
    edited: &RgbImage,
    mask: &Mask,
    feather_px: u32,
) -> Option<(Vec<f32>, RgbImage)> {
    if side == 0 || edited.width() == 0 || edited.height() == 0 {
        return None;
    }
    let big_mask = mask.downsample_nearest(side);
    let window = Window::around(&big_mask, side, feather_px)?;
    let alpha = feather(&big_mask, side, &window, feather_px);
    let mut full = vec![0.0f32; side as usize * side as usize];
    for cy in window.y0..window.y1 {
        for cx in window.x0..window.x1 {
            full[cy as usize * side as usize + cx as usize] = alpha[window.index(cx, cy)];
        }
    }
    let edit = if edited.dimensions() == (side, side) {
        edited.clone()
    } else {
        imageops::resize(edited, side, side, RESAMPLE)
    };
    Some((full, edit))
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::{photo, HOPPER, OBAMA};
    use super::super::{face_crop, FaceBox, DEFAULT_MARGIN};
    use super::*;
    use crate::pipeline::mask::{PixelBox, Region};
    use image::Rgb;

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
