//! The two resamplings of the face graphs' inputs, computed as Pillow 13 computes them (the face
//! models' reference `models/faces/facedetect.py` makes its inputs with Pillow, and the pins in
//! `models/faces/pinned.json` come from those inputs): `Image.resize(..., BILINEAR)` (a separable
//! triangle filter widened by the downscaling factor, 22-bit fixed-point weights) and
//! `Image.transform(..., AFFINE, ..., BILINEAR)` (bilinear sampling at each output pixel's centre
//! mapped into the source, edge pixels repeated, black outside, truncated to 8 bits).

use image::{Rgb, RgbImage};

/// Pillow's `PRECISION_BITS` for 8-bit images (32 - 8 - 2).
const PRECISION_BITS: u32 = 22;

/// Pillow's `precompute_coeffs` for the bilinear filter: per output index, the first input index and
/// the fixed-point weights of the inputs from there.
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the bilinear filter's support is 1
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates toward zero; both are clamped into the input.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let count = xmax.saturating_sub(xmin);
            let weights: Vec<f64> = (0..count)
                .map(|x| {
                    let t = ((x + xmin) as f64 - center + 0.5) * ss;
                    let t = t.abs();
                    if t < 1.0 {
                        1.0 - t
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = weights.iter().sum();
            let one = f64::from(1u32 << PRECISION_BITS);
            let fixed = weights
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    if w < 0.0 {
                        (-0.5 + w * one) as i64
                    } else {
                        (0.5 + w * one) as i64
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `img.resize((width, height), Image.Resampling.BILINEAR)` as Pillow computes it: horizontal pass
/// first, then vertical, each only when its side changes.
pub(crate) fn resize_bilinear(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let mut current = img.clone();
    if width != img.width() {
        let coeffs = coefficients(img.width() as usize, width as usize);
        let mut out = RgbImage::new(width, img.height());
        for y in 0..img.height() {
            for (xx, (xmin, k)) in coeffs.iter().enumerate() {
                let mut ss = [1i64 << (PRECISION_BITS - 1); 3];
                for (i, w) in k.iter().enumerate() {
                    let p = current.get_pixel((xmin + i) as u32, y);
                    for c in 0..3 {
                        ss[c] += i64::from(p[c]) * w;
                    }
                }
                out.put_pixel(xx as u32, y, Rgb(ss.map(clip8)));
            }
        }
        current = out;
    }
    if height != img.height() {
        let coeffs = coefficients(img.height() as usize, height as usize);
        let mut out = RgbImage::new(current.width(), height);
        for (yy, (ymin, k)) in coeffs.iter().enumerate() {
            for x in 0..current.width() {
                let mut ss = [1i64 << (PRECISION_BITS - 1); 3];
                for (i, w) in k.iter().enumerate() {
                    let p = current.get_pixel(x, (ymin + i) as u32);
                    for c in 0..3 {
                        ss[c] += i64::from(p[c]) * w;
                    }
                }
                out.put_pixel(x, yy as u32, Rgb(ss.map(clip8)));
            }
        }
        current = out;
    }
    current
}

/// `img.transform((size, size), Image.Transform.AFFINE, m, Image.Resampling.BILINEAR)` as Pillow
/// computes it: output pixel (x, y) samples the source at `m · (x + 0.5, y + 0.5, 1)`, bilinear
/// between the pixel centres (edge pixels repeated), black where that point is outside the source,
/// each channel truncated to 8 bits.
pub(crate) fn affine_bilinear(img: &RgbImage, m: &[[f64; 3]; 2], size: u32) -> RgbImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let mut out = RgbImage::new(size, size);
    for y in 0..size {
        for x in 0..size {
            let (xo, yo) = (f64::from(x) + 0.5, f64::from(y) + 0.5);
            let xin = m[0][0] * xo + m[0][1] * yo + m[0][2];
            let yin = m[1][0] * xo + m[1][1] * yo + m[1][2];
            if !(xin >= 0.0 && xin < w as f64 && yin >= 0.0 && yin < h as f64) {
                continue;
            }
            let (xs, ys) = (xin - 0.5, yin - 0.5);
            let (x0, y0) = (xs.floor() as i64, ys.floor() as i64);
            let (dx, dy) = (xs - x0 as f64, ys - y0 as f64);
            let clip_x = |v: i64| v.clamp(0, w - 1) as u32;
            let row0 = y0.clamp(0, h - 1) as u32;
            let row1 = (y0 + 1 >= 0 && y0 + 1 < h).then_some((y0 + 1) as u32);
            let (xa, xb) = (clip_x(x0), clip_x(x0 + 1));
            let mut px = [0u8; 3];
            for (c, v) in px.iter_mut().enumerate() {
                let lerp = |a: u8, b: u8, d: f64| f64::from(a) + (f64::from(b) - f64::from(a)) * d;
                let v1 = lerp(img.get_pixel(xa, row0)[c], img.get_pixel(xb, row0)[c], dx);
                let v2 = match row1 {
                    Some(r) => lerp(img.get_pixel(xa, r)[c], img.get_pixel(xb, r)[c], dx),
                    None => v1,
                };
                *v = (v1 + (v2 - v1) * dy) as u8;
            }
            out.put_pixel(x, y, Rgb(px));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_affine_sampling_truncates_and_blacks_out_as_pillow() {
        // Pillow 13: a 2x1 image (0, 0, 0), (255, 1, 3) sampled at x = 1.0 gives (127, 0, 1); at
        // x = 0.7, (50, 0, 0).
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(1, 0, Rgb([255, 1, 3]));
        let at = |c: f64| affine_bilinear(&img, &[[1.0, 0.0, c], [0.0, 1.0, 0.0]], 1);
        assert_eq!(at(0.5).get_pixel(0, 0).0, [127, 0, 1]);
        assert_eq!(at(0.2).get_pixel(0, 0).0, [50, 0, 0]);
        assert_eq!(at(-0.6).get_pixel(0, 0).0, [0, 0, 0], "outside: black");
    }

    #[test]
    fn the_resize_keeps_flat_images_flat_and_weights_sum_to_one() {
        let img = RgbImage::from_pixel(37, 23, Rgb([200, 10, 99]));
        let out = resize_bilinear(&img, 11, 40);
        assert!(out.pixels().all(|p| p.0 == [200, 10, 99]));
        for (n, m) in [(1137, 128), (910, 102), (10, 30)] {
            for (_, k) in coefficients(n, m) {
                let sum: i64 = k.iter().sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                    "{n}->{m}"
                );
            }
        }
    }
}
