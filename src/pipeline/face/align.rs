//! Roll removal for a tilted face: the square crop turned so that the eyes lie level (a similarity
//! transform at the photo's own scale, then the usual resize to model size), and the edited crop
//! turned back at paste-back, so that the feathered blend lands on the tilted face.
//!
//! `roll` is the angle of the line from the subject's right eye to their left eye in the photo,
//! radians, `atan2(dy, dx)` with y down (positive: the head leans to the photo's right, clockwise on
//! screen). A roll of 0 is never turned: the axis-aligned path is used as it is.

use image::{Rgb, RgbImage};

use super::super::mask::Mask;
use super::crop::CropRect;
use super::paste::upright_layers;
use super::resample::affine_bilinear;

/// The 2x3 map from upright crop pixels (0..`rect.size`, pixel centres at +0.5) to photo pixels:
/// the crop's x axis runs along the eye line, its centre is the rectangle's centre.
fn crop_to_photo(rect: CropRect, roll: f64) -> [[f64; 3]; 2] {
    let (c, s) = (roll.cos(), roll.sin());
    let half = f64::from(rect.size) / 2.0;
    let (cx, cy) = (f64::from(rect.x) + half, f64::from(rect.y) + half);
    [
        [c, -s, cx - (c * half - s * half)],
        [s, c, cy - (s * half + c * half)],
    ]
}

/// The `rect.size` x `rect.size` square of `img` around the rectangle's centre, turned by `-roll`
/// so that a face of that roll stands upright (bilinear at the photo's scale; black outside it).
pub fn upright(img: &RgbImage, rect: CropRect, roll: f64) -> RgbImage {
    affine_bilinear(img, &crop_to_photo(rect, roll), rect.size)
}

/// `mask_image` (white = repaint, the target's size) in the upright square of [`upright`].
pub fn upright_mask(mask_image: &RgbImage, rect: CropRect, roll: f64) -> RgbImage {
    upright(mask_image, rect, roll)
}

/// A box of the target (columns `x0..x1`, rows `y0..y1`) drawn white into the upright square: a
/// crop pixel is white when its centre, mapped into the photo, lies in the box.
pub fn upright_box(rect: CropRect, roll: f64, bx: [f64; 4]) -> RgbImage {
    let m = crop_to_photo(rect, roll);
    RgbImage::from_fn(rect.size, rect.size, |u, v| {
        let (uc, vc) = (f64::from(u) + 0.5, f64::from(v) + 0.5);
        let x = m[0][0] * uc + m[0][1] * vc + m[0][2];
        let y = m[1][0] * uc + m[1][1] * vc + m[1][2];
        let inside = x >= bx[0] && x < bx[2] && y >= bx[1] && y < bx[3];
        Rgb(if inside { [255; 3] } else { [0; 3] })
    })
}

/// The paper's alignment of a face (PVA's references are CelebA-HQ's aligned faces): the square of
/// CelebA-HQ's and FFHQ's alignment (Karras et al.'s `dataset_tool.py`) from five points, the eye
/// centres and the mouth corners (Face Mesh landmarks 33/133, 362/263, 61 and 291 here): with
/// `e` the eyes' midpoint, `ee` the vector from the image-left eye to the image-right one and `em` from
/// `e` to the mouth corners' midpoint, the square's half-side vector along its x axis is
/// `ee - rot90(em)` scaled to `max(2 |ee|, 1.8 |em|)`, its y axis that turned by 90°, its centre
/// `e + 0.1 em`. Returns the 2x3 map from pixels of a `side` x `side` crop to photo pixels, and that
/// side (the square's own, rounded: the crop keeps the photo's scale).
pub fn paper_alignment(landmarks: &[[f64; 2]]) -> Option<([[f64; 3]; 2], u32)> {
    let at = |i: usize| landmarks.get(i).copied();
    let mean = |a: [f64; 2], b: [f64; 2]| [(a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0];
    let right_eye = mean(at(33)?, at(133)?);
    let left_eye = mean(at(362)?, at(263)?);
    let mouth = mean(at(61)?, at(291)?);
    // The subject's right eye is on the image's left.
    let e = mean(right_eye, left_eye);
    let ee = [left_eye[0] - right_eye[0], left_eye[1] - right_eye[1]];
    let em = [mouth[0] - e[0], mouth[1] - e[1]];
    // rot90 as the dataset tool writes it: flipud(v) * [-1, 1] = (-v.y, v.x).
    let mut x = [ee[0] + em[1], ee[1] - em[0]];
    let norm = x[0].hypot(x[1]);
    if norm.is_nan() || norm <= 0.0 {
        return None;
    }
    let half = (2.0 * ee[0].hypot(ee[1])).max(1.8 * em[0].hypot(em[1]));
    x = [x[0] / norm * half, x[1] / norm * half];
    let y = [-x[1], x[0]];
    let c = [e[0] + 0.1 * em[0], e[1] + 0.1 * em[1]];
    let side = (2.0 * half).round().max(1.0);
    let k = 2.0 / side;
    let m = [
        [x[0] * k, y[0] * k, c[0] - x[0] - y[0]],
        [x[1] * k, y[1] * k, c[1] - x[1] - y[1]],
    ];
    Some((m, side as u32))
}

/// The photo's face cut as [`paper_alignment`] says, at the photo's scale (bilinear; black where the
/// square reaches past the photo). `None` without the landmarks it needs.
pub fn paper_aligned(img: &RgbImage, landmarks: &[[f64; 2]]) -> Option<RgbImage> {
    let (m, side) = paper_alignment(landmarks)?;
    Some(affine_bilinear(img, &m, side))
}

/// `img` turned counter-clockwise on screen by `radians` about its centre, the frame expanded to
/// hold it all (bilinear, black corners; as Pillow's `rotate(expand=True)`), and the map of a photo
/// point into it: `p' = R (p - centre) + centre'` with `R = [[cos, sin], [-sin, cos]]`. For tests and
/// the face benchmark: rotated copies of photos.
pub fn rotate_expanded(img: &RgbImage, radians: f64) -> (RgbImage, impl Fn([f64; 2]) -> [f64; 2]) {
    let (c, s) = (radians.cos(), radians.sin());
    let (w, h) = (f64::from(img.width()), f64::from(img.height()));
    let (w2, h2) = (
        (w * c.abs() + h * s.abs()).ceil(),
        (w * s.abs() + h * c.abs()).ceil(),
    );
    let (cx, cy, cx2, cy2) = (w / 2.0, h / 2.0, w2 / 2.0, h2 / 2.0);
    // The sampling map is the inverse of the forward one.
    let m = [
        [c, -s, cx - c * cx2 + s * cy2],
        [s, c, cy - s * cx2 - c * cy2],
    ];
    let side = w2.max(h2) as u32;
    let square = affine_bilinear(img, &m, side);
    let turned = image::imageops::crop_imm(&square, 0, 0, w2 as u32, h2 as u32).to_image();
    let forward = move |p: [f64; 2]| {
        [
            c * (p[0] - cx) + s * (p[1] - cy) + cx2,
            -s * (p[0] - cx) + c * (p[1] - cy) + cy2,
        ]
    };
    (turned, forward)
}

/// Bilinear sample of a `side` x `side` single-channel layer at (u, v) (pixel centres at integers);
/// 0 outside.
fn sample(layer: &[f32], side: u32, u: f64, v: f64) -> f32 {
    let s = i64::from(side);
    let (u0, v0) = (u.floor() as i64, v.floor() as i64);
    let (du, dv) = ((u - u0 as f64) as f32, (v - v0 as f64) as f32);
    let at = |x: i64, y: i64| -> f32 {
        if (0..s).contains(&x) && (0..s).contains(&y) {
            layer[(y * s + x) as usize]
        } else {
            0.0
        }
    };
    let top = at(u0, v0) * (1.0 - du) + at(u0 + 1, v0) * du;
    let bottom = at(u0, v0 + 1) * (1.0 - du) + at(u0 + 1, v0 + 1) * du;
    top * (1.0 - dv) + bottom * dv
}

/// Bilinear sample of an RGB image at (u, v), edge pixels repeated.
fn sample_rgb(img: &RgbImage, u: f64, v: f64) -> [f32; 3] {
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    let (u0, v0) = (u.floor() as i64, v.floor() as i64);
    let (du, dv) = ((u - u0 as f64) as f32, (v - v0 as f64) as f32);
    let px = |x: i64, y: i64| {
        img.get_pixel(x.clamp(0, w - 1) as u32, y.clamp(0, h - 1) as u32)
            .0
    };
    let mut out = [0.0; 3];
    for (c, o) in out.iter_mut().enumerate() {
        let f = |x, y| f32::from(px(x, y)[c]);
        let top = f(u0, v0) * (1.0 - du) + f(u0 + 1, v0) * du;
        let bottom = f(u0, v0 + 1) * (1.0 - du) + f(u0 + 1, v0 + 1) * du;
        *o = top * (1.0 - dv) + bottom * dv;
    }
    out
}

/// Puts the `edited` upright crop back into `original`, turned by `roll` about the rectangle's
/// centre: the blend weights of [`super::paste_back`] (1 on the mask, a smoothstep ramp out to
/// `feather_px`) are computed in the upright square and, with the edited pixels, sampled bilinearly
/// at each photo pixel's place in it. A photo pixel farther than `feather_px + 1.5` from the turned
/// mask (the bilinear reach) keeps its original bytes, as does every pixel outside the turned
/// square.
pub fn paste_back_turned(
    original: &RgbImage,
    rect: CropRect,
    roll: f64,
    edited: &RgbImage,
    mask: &Mask,
    feather_px: u32,
) -> RgbImage {
    let mut out = original.clone();
    let Some((alpha, edit)) = upright_layers(rect.size, edited, mask, feather_px) else {
        return out;
    };
    let (c, s) = (roll.cos(), roll.sin());
    let half = f64::from(rect.size) / 2.0;
    let (cx, cy) = (f64::from(rect.x) + half, f64::from(rect.y) + half);
    // The turned square's bounding box, inside the photo.
    let reach = half * (c.abs() + s.abs()) + 2.0;
    let (w, h) = (f64::from(original.width()), f64::from(original.height()));
    let x0 = (cx - reach).floor().clamp(0.0, w) as u32;
    let x1 = (cx + reach).ceil().clamp(0.0, w) as u32;
    let y0 = (cy - reach).floor().clamp(0.0, h) as u32;
    let y1 = (cy + reach).ceil().clamp(0.0, h) as u32;
    for py in y0..y1 {
        for px in x0..x1 {
            let (dx, dy) = (f64::from(px) + 0.5 - cx, f64::from(py) + 0.5 - cy);
            // The inverse of crop_to_photo, to pixel-centre coordinates of the upright square.
            let u = c * dx + s * dy + half - 0.5;
            let v = -s * dx + c * dy + half - 0.5;
            let a = sample(&alpha, rect.size, u, v);
            if a <= 0.0 {
                continue;
            }
            let src = sample_rgb(&edit, u, v);
            let dst = out.get_pixel_mut(px, py);
            for (d, s) in dst.0.iter_mut().zip(src) {
                let mixed = a * s + (1.0 - a) * f32::from(*d);
                *d = mixed.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::mask::Region;

    #[test]
    fn turning_and_turning_back_puts_a_square_where_it_was() {
        // A tilted bar: the upright crop of its rectangle at its roll shows it level.
        let rect = CropRect {
            x: 40,
            y: 30,
            size: 100,
        };
        let roll = 20f64.to_radians();
        let mut photo = RgbImage::from_pixel(200, 180, Rgb([10, 20, 30]));
        for t in -30..=30 {
            let (x, y) = (
                90.0 + f64::from(t) * roll.cos(),
                80.0 + f64::from(t) * roll.sin(),
            );
            photo.put_pixel(x.round() as u32, y.round() as u32, Rgb([255, 255, 255]));
        }
        let up = upright(&photo, rect, roll);
        let centre_row: Vec<u8> = (25..75).map(|u| up.get_pixel(u, 50).0[0]).collect();
        assert!(centre_row.iter().all(|&v| v > 40), "{centre_row:?}");
        assert!(up.get_pixel(50, 40).0[0] < 40, "above the bar is dark");

        // Paste a white mouth region back: changed pixels are near the turned region only.
        let mask = Mask::from_region(Region::Mouth, 64).unwrap();
        let edited = RgbImage::from_pixel(64, 64, Rgb([250, 250, 250]));
        let out = paste_back_turned(&photo, rect, roll, &edited, &mask, 3);
        let big = mask.downsample_nearest(rect.size);
        let (c, s) = (roll.cos(), roll.sin());
        for (px, py, p) in out.enumerate_pixels() {
            if p == photo.get_pixel(px, py) {
                continue;
            }
            let (dx, dy) = (f64::from(px) + 0.5 - 90.0, f64::from(py) + 0.5 - 80.0);
            let (u, v) = (c * dx + s * dy + 50.0, -s * dx + c * dy + 50.0);
            // Within feather + 1.5 px of a masked upright pixel.
            let near = (0..100u32).any(|my| {
                (0..100u32).any(|mx| {
                    big[(my * 100 + mx) as usize] != 0.0
                        && (f64::from(mx) + 0.5 - u).hypot(f64::from(my) + 0.5 - v) <= 4.5 + 0.75
                })
            });
            assert!(near, "pixel ({px}, {py}) changed far from the mask");
        }
    }
}
