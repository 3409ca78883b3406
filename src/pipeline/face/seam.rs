//! Seamless paste-back: the edit's colours matched to the photo around the mask before it is pasted
//! ([`match_colour`]), and the seam measure that says how visible a paste's border is
//! ([`seam_measure`]).
//!
//! The VAE round trip shifts colours a little (a different shade of background, a warmer skin); a
//! feathered blend over a few pixels does not hide such a shift. The correction is a low-frequency
//! colour field solved on a ring of pixels around the mask, where the edit should equal the photo:
//! on the ring it is the (smoothed) difference photo - edit, inside the mask the smooth (harmonic)
//! interpolation of the ring's values, so the edit keeps its own detail and meets the photo's colour at
//! the border. It is computed at model resolution (on a grid of at most [`GRID`] cells) and added to the
//! edited crop, which the paste-back then stretches and feathers as before.

use image::RgbImage;

use super::super::mask::Mask;
use super::crop::CropRect;
use super::distance::{squared_distance_transform, FAR};
use crate::pipeline::stats::median;

/// Largest side of the grid the colour correction is solved on (cells of model pixels).
const GRID: usize = 32;
/// Smoothing radius of the ring's differences, in grid cells: the correction follows the shade
/// around the mask, not the detail the VAE lost.
const SMOOTH: i64 = 2;
/// Relaxation factor and limits of the successive over-relaxation solve.
const OMEGA: f64 = 1.85;
const MAX_SWEEPS: usize = 400;
const TOLERANCE: f64 = 0.01;

/// Width of the ring around the mask the colour correction is fitted on, in model pixels: 1/16 of the
/// crop, at least 2.
fn ring_width(res: u32) -> u32 {
    (res / 16).max(2)
}

/// `edited` with its colours matched to `original` around `mask` (all three at the mask's size, as
/// the model sees them): `edited + C`, where the per-channel correction `C` is the smoothed
/// difference `original - edited` on the ring of pixels within [`ring_width`] of the mask (outside
/// it), and the harmonic interpolation of those values everywhere else. Returns `edited` unchanged
/// when the sizes differ or no ring pixel exists (a mask covering the whole crop).
pub fn match_colour(original: &RgbImage, edited: &RgbImage, mask: &Mask) -> RgbImage {
    let res = mask.size();
    if original.dimensions() != (res, res) || edited.dimensions() != (res, res) || res == 0 {
        return edited.clone();
    }
    let side = res as usize;
    // Squared distance of every pixel to the mask.
    let mut dist2: Vec<f64> = mask
        .values()
        .iter()
        .map(|&m| if m != 0.0 { 0.0 } else { FAR })
        .collect();
    squared_distance_transform(&mut dist2, side, side);
    let ring2 = f64::from(ring_width(res)).powi(2);

    let g = side.min(GRID);
    let cell = |i: usize| i * g / side;
    // Per cell: the ring's differences per channel and how many ring pixels it has.
    let mut sums = vec![[0.0f64; 3]; g * g];
    let mut counts = vec![0u32; g * g];
    for (i, &d2) in dist2.iter().enumerate() {
        if d2 == 0.0 || d2 > ring2 {
            continue;
        }
        let (x, y) = (i % side, i / side);
        let c = cell(y) * g + cell(x);
        let (o, e) = (original.as_raw(), edited.as_raw());
        for ch in 0..3 {
            sums[c][ch] += f64::from(o[i * 3 + ch]) - f64::from(e[i * 3 + ch]);
        }
        counts[c] += 1;
    }
    if counts.iter().all(|&n| n == 0) {
        return edited.clone();
    }
    // The fixed cells' values: the ring's differences averaged over SMOOTH cells around each.
    let mut field = vec![[0.0f64; 3]; g * g];
    let mut fixed = vec![false; g * g];
    for cy in 0..g as i64 {
        for cx in 0..g as i64 {
            let c = cy as usize * g + cx as usize;
            if counts[c] == 0 {
                continue;
            }
            let (mut acc, mut n) = ([0.0f64; 3], 0u32);
            for ny in (cy - SMOOTH).max(0)..=(cy + SMOOTH).min(g as i64 - 1) {
                for nx in (cx - SMOOTH).max(0)..=(cx + SMOOTH).min(g as i64 - 1) {
                    let k = ny as usize * g + nx as usize;
                    for ch in 0..3 {
                        acc[ch] += sums[k][ch];
                    }
                    n += counts[k];
                }
            }
            field[c] = acc.map(|a| a / f64::from(n));
            fixed[c] = true;
        }
    }
    solve_harmonic(&mut field, &fixed, g);

    // Bilinear upsampling of the grid (cell centres) to model pixels, added to the edit.
    let scale = g as f64 / side as f64;
    let at = |v: f64| {
        let v = v.clamp(0.0, (g - 1) as f64);
        let i = (v.floor() as usize).min(g.saturating_sub(2));
        (i, v - i as f64)
    };
    let mut out = edited.clone();
    for y in 0..side {
        let (y0, fy) = at((y as f64 + 0.5) * scale - 0.5);
        let y1 = (y0 + 1).min(g - 1);
        for x in 0..side {
            let (x0, fx) = at((x as f64 + 0.5) * scale - 0.5);
            let x1 = (x0 + 1).min(g - 1);
            let px = &mut out.as_mut()[(y * side + x) * 3..(y * side + x) * 3 + 3];
            for (ch, p) in px.iter_mut().enumerate() {
                let top = field[y0 * g + x0][ch] * (1.0 - fx) + field[y0 * g + x1][ch] * fx;
                let bottom = field[y1 * g + x0][ch] * (1.0 - fx) + field[y1 * g + x1][ch] * fx;
                let c = top * (1.0 - fy) + bottom * fy;
                *p = (f64::from(*p) + c).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// Solves Laplace's equation on the free cells of a `g` x `g` grid (the fixed cells are the
/// boundary; the grid's edges reflect) by successive over-relaxation, starting from the mean of the
/// fixed values.
fn solve_harmonic(field: &mut [[f64; 3]], fixed: &[bool], g: usize) {
    let (mut mean, mut n) = ([0.0f64; 3], 0.0);
    for (v, _) in field.iter().zip(fixed).filter(|(_, &f)| f) {
        for ch in 0..3 {
            mean[ch] += v[ch];
        }
        n += 1.0;
    }
    let mean = mean.map(|m| m / n);
    for (v, _) in field.iter_mut().zip(fixed).filter(|(_, &f)| !f) {
        *v = mean;
    }
    for _ in 0..MAX_SWEEPS {
        let mut change = 0.0f64;
        for y in 0..g {
            for x in 0..g {
                let c = y * g + x;
                if fixed[c] {
                    continue;
                }
                let mut acc = [0.0f64; 3];
                let mut k = 0.0;
                let mut add = |i: usize| {
                    for ch in 0..3 {
                        acc[ch] += field[i][ch];
                    }
                    k += 1.0;
                };
                if x > 0 {
                    add(c - 1);
                }
                if x + 1 < g {
                    add(c + 1);
                }
                if y > 0 {
                    add(c - g);
                }
                if y + 1 < g {
                    add(c + g);
                }
                for ch in 0..3 {
                    let step = OMEGA * (acc[ch] / k - field[c][ch]);
                    field[c][ch] += step;
                    change = change.max(step.abs());
                }
            }
        }
        if change < TOLERANCE {
            break;
        }
    }
}

/// How visible the border of a paste is: the gradient energy of `photo` across the border of
/// `mask` (stretched to `rect`): the squared gradient projected on the border's normal, on the photo
/// low-passed by a box of `feather_px + 1` pixels (odd), its median over the pixels within
/// `feather_px + 2` of the border, relative to the mean of the same median in a band of that width
/// just inside and one just outside. The low-pass keeps the pixel texture out and the colour step of
/// a seam in; the median keeps the face's own strong edges crossing the border from dominating. Below
/// about 1 the border cannot be told from the content around it; a colour step along it makes it
/// larger. `None` when a band is empty (a mask at the crop's edge all round) or flat all round.
pub fn seam_measure(photo: &RgbImage, rect: CropRect, mask: &Mask, feather_px: u32) -> Option<f64> {
    let side = rect.size;
    if side == 0 {
        return None;
    }
    let big = mask.downsample_nearest(side);
    let (img_w, img_h) = photo.dimensions();
    let width = f64::from(feather_px) + 2.0;
    let reach = (3.0 * width).ceil() as i64 + 2;
    // The mask's bounding box in photo pixels, grown by the reach and cut to the photo.
    let side_us = side as usize;
    let (mut bx0, mut by0, mut bx1, mut by1) = (i64::MAX, i64::MAX, i64::MIN, i64::MIN);
    for (i, _) in big.iter().enumerate().filter(|(_, &v)| v != 0.0) {
        let (x, y) = ((i % side_us) as i64, (i / side_us) as i64);
        bx0 = bx0.min(x);
        by0 = by0.min(y);
        bx1 = bx1.max(x);
        by1 = by1.max(y);
    }
    if bx0 > bx1 {
        return None;
    }
    let x0 = (i64::from(rect.x) + bx0 - reach).max(0);
    let y0 = (i64::from(rect.y) + by0 - reach).max(0);
    let x1 = (i64::from(rect.x) + bx1 + reach + 1).min(i64::from(img_w));
    let y1 = (i64::from(rect.y) + by1 + reach + 1).min(i64::from(img_h));
    if x1 - x0 < 3 || y1 - y0 < 3 {
        return None;
    }
    let (w, h) = ((x1 - x0) as usize, (y1 - y0) as usize);
    let masked = |px: usize, py: usize| {
        let (cx, cy) = (
            px as i64 + x0 - i64::from(rect.x),
            py as i64 + y0 - i64::from(rect.y),
        );
        (0..i64::from(side)).contains(&cx)
            && (0..i64::from(side)).contains(&cy)
            && big[cy as usize * side_us + cx as usize] != 0.0
    };
    // Signed distance to the border: positive outside the mask, negative inside.
    let mut outside = vec![0.0f64; w * h];
    let mut inside = vec![0.0f64; w * h];
    for py in 0..h {
        for px in 0..w {
            let m = masked(px, py);
            outside[py * w + px] = if m { 0.0 } else { FAR };
            inside[py * w + px] = if m { FAR } else { 0.0 };
        }
    }
    squared_distance_transform(&mut outside, w, h);
    squared_distance_transform(&mut inside, w, h);
    let signed: Vec<f64> = outside
        .iter()
        .zip(&inside)
        .map(|(o, i)| o.min(FAR).sqrt() - i.min(FAR).sqrt())
        .collect();
    let smooth = box_blur(
        photo,
        [x0 as u32, y0 as u32, w as u32, h as u32],
        feather_px / 2,
    );
    let value = |px: usize, py: usize, ch: usize| smooth[(py * w + px) * 3 + ch];
    // The squared normal gradients per region: band, inside, outside.
    let mut energies: [Vec<f64>; 3] = Default::default();
    for py in 1..h - 1 {
        for px in 1..w - 1 {
            let s = signed[py * w + px];
            let region = if s.abs() <= width {
                0
            } else if s < -width && s >= -3.0 * width {
                1
            } else if s > width && s <= 3.0 * width {
                2
            } else {
                continue;
            };
            let nx = signed[py * w + px + 1] - signed[py * w + px - 1];
            let ny = signed[(py + 1) * w + px] - signed[(py - 1) * w + px];
            let norm = nx.hypot(ny);
            if norm == 0.0 {
                continue;
            }
            let (nx, ny) = (nx / norm, ny / norm);
            let mut e = 0.0;
            for ch in 0..3 {
                let gx = (value(px + 1, py, ch) - value(px - 1, py, ch)) / 2.0;
                let gy = (value(px, py + 1, ch) - value(px, py - 1, ch)) / 2.0;
                e += (gx * nx + gy * ny).powi(2);
            }
            energies[region].push(e);
        }
    }
    if energies.iter().any(Vec::is_empty) {
        return None;
    }
    let [band, inside, outside] = energies.map(median);
    let around = (inside + outside) / 2.0;
    (around > 0.0).then(|| band / around)
}

/// The window `[x, y, w, h]` of `img` averaged over a `(2 * radius + 1)`-pixel square box (edge
/// pixels of the window repeated), as `w * h` RGB values.
fn box_blur(img: &RgbImage, [x0, y0, w, h]: [u32; 4], radius: u32) -> Vec<f64> {
    let (w, h) = (w as usize, h as usize);
    let r = i64::from(radius);
    let k = (2 * r + 1) as f64;
    let mut rows = vec![0.0f64; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            for dx in -r..=r {
                let sx = (x as i64 + dx).clamp(0, w as i64 - 1) as u32;
                let p = img.get_pixel(x0 + sx, y0 + y as u32).0;
                for ch in 0..3 {
                    rows[(y * w + x) * 3 + ch] += f64::from(p[ch]) / k;
                }
            }
        }
    }
    let mut out = vec![0.0f64; w * h * 3];
    for y in 0..h {
        for dy in -r..=r {
            let sy = (y as i64 + dy).clamp(0, h as i64 - 1) as usize;
            for x in 0..w {
                for ch in 0..3 {
                    out[(y * w + x) * 3 + ch] += rows[(sy * w + x) * 3 + ch] / k;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::mask::PixelBox;
    use image::Rgb;

    fn textured(size: u32, shift: [i32; 3], mask: Option<&Mask>) -> RgbImage {
        RgbImage::from_fn(size, size, |x, y| {
            // A gentle, smooth texture so that the bands have gradients of their own.
            let (fx, fy) = (f64::from(x), f64::from(y));
            let t = ((fx * 0.3).sin() * 6.0 + (fy * 0.23 + fx * 0.1).cos() * 6.0).round() as i32;
            let on = mask.is_some_and(|m| m.get(x, y));
            Rgb([0, 1, 2].map(|c| {
                let base = 120 + t + if on { shift[c] } else { 0 };
                base.clamp(0, 255) as u8
            }))
        })
    }

    fn centre_box(size: u32) -> Mask {
        Mask::from_box(
            PixelBox {
                x: size / 4,
                y: size / 4,
                width: size / 2,
                height: size / 2,
            },
            size,
        )
        .unwrap()
    }

    #[test]
    fn a_uniform_colour_shift_is_taken_out_and_the_texture_kept() {
        let mask = centre_box(64);
        let original = textured(64, [0; 3], None);
        // The edit: the same texture, 30 levels too bright in red and 20 too dark in blue, all over.
        let edited = RgbImage::from_fn(64, 64, |x, y| {
            let p = original.get_pixel(x, y).0;
            Rgb([p[0] + 30, p[1], p[2] - 20])
        });
        let matched = match_colour(&original, &edited, &mask);
        for (x, y, p) in matched.enumerate_pixels() {
            let o = original.get_pixel(x, y).0;
            for c in 0..3 {
                assert!(
                    (i32::from(p.0[c]) - i32::from(o[c])).abs() <= 1,
                    "({x}, {y}) channel {c}: {} vs {}",
                    p.0[c],
                    o[c]
                );
            }
        }
    }

    #[test]
    fn the_seam_measure_sees_a_colour_step_and_the_match_removes_it() {
        let size = 96;
        let mask = centre_box(64);
        let rect = CropRect { x: 0, y: 0, size };
        // A photo with a 40-level step along the (stretched) mask's border.
        let big = Mask::from_box(
            PixelBox {
                x: 24,
                y: 24,
                width: 48,
                height: 48,
            },
            size,
        )
        .unwrap();
        let flat = textured(size, [0; 3], None);
        let stepped = textured(size, [40, 40, 40], Some(&big));
        let plain = seam_measure(&flat, rect, &mask, 3).unwrap();
        let seam = seam_measure(&stepped, rect, &mask, 3).unwrap();
        assert!(plain < 2.0, "no step: {plain}");
        // A hard step fills only a few pixels of the band: the median sees it, weakly.
        assert!(seam > 1.5 * plain, "a step: {seam} vs {plain}");

        // The VAE's shift: the edit (at model size) is the photo 40 levels brighter all over;
        // pasted as it is, the mask's border shows; matched on the ring first, it does not.
        let original = super::super::crop::crop_resize(&flat, rect, 64);
        let edited = RgbImage::from_fn(64, 64, |x, y| {
            Rgb(original.get_pixel(x, y).0.map(|v| v.saturating_add(40)))
        });
        let matched = match_colour(&original, &edited, &mask);
        let pasted = |edit: &RgbImage| super::super::paste::paste_back(&flat, rect, edit, &mask, 3);
        let before = seam_measure(&pasted(&edited), rect, &mask, 3).unwrap();
        let after = seam_measure(&pasted(&matched), rect, &mask, 3).unwrap();
        eprintln!(
            "no step {plain}, a hard step {seam}, pasted {before}, matched and pasted {after}"
        );
        assert!(before > 4.0 * plain, "unmatched: {before}");
        assert!(after < 2.0 * plain, "matched: {after} (no step: {plain})");
    }

    #[test]
    fn degenerate_inputs_leave_the_edit_alone() {
        let all = Mask::from_box(
            PixelBox {
                x: 0,
                y: 0,
                width: 16,
                height: 16,
            },
            16,
        )
        .unwrap();
        let a = textured(16, [0; 3], None);
        let b = textured(16, [9; 3], None);
        assert_eq!(match_colour(&a, &b, &all), b, "no ring: unchanged");
        assert_eq!(
            match_colour(&textured(8, [0; 3], None), &b, &all),
            b,
            "sizes differ"
        );
        assert_eq!(
            seam_measure(
                &a,
                CropRect {
                    x: 0,
                    y: 0,
                    size: 16
                },
                &all,
                1
            ),
            None
        );
    }
}
