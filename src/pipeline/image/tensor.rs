//! Conversion between 8-bit RGB images and the `[-1, 1]` CHW float tensors the graphs take.

use image::RgbImage;

/// Writes `img` into `out` as a CHW float tensor in `[-1, 1]` (`x / 127.5 - 1`), channel planes R,
/// G, B one after the other.
///
/// # Panics
/// If `out.len() != 3 * width * height` (a caller bug, not bad input).
pub fn to_chw(img: &RgbImage, out: &mut [f32]) {
    let plane = img.width() as usize * img.height() as usize;
    assert_eq!(
        out.len(),
        3 * plane,
        "CHW buffer does not match the image size"
    );
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.pixels().enumerate() {
        r[i] = f32::from(px[0]) / 127.5 - 1.0;
        g[i] = f32::from(px[1]) / 127.5 - 1.0;
        b[i] = f32::from(px[2]) / 127.5 - 1.0;
    }
}

/// Turns a CHW float tensor (roughly `[-1, 1]`, as the VAE decoder returns it) into an RGB image:
/// `round(clamp((x + 1) / 2, 0, 1) * 255)`, rounding half to even as numpy and torch do (diffusers'
/// `numpy_to_pil`), so both sides agree on exact halves. NaN maps to 0.
///
/// # Panics
/// If `chw.len() != 3 * width * height` (a caller bug, not bad input).
pub fn from_chw(chw: &[f32], width: u32, height: u32) -> RgbImage {
    let plane = width as usize * height as usize;
    assert_eq!(
        chw.len(),
        3 * plane,
        "CHW buffer does not match the image size"
    );
    let to_byte = |x: f32| {
        // `as u8` saturates and maps NaN to 0; the clamp keeps the formula of the contract.
        (((x + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round_ties_even() as u8
    };
    let mut img = RgbImage::new(width, height);
    for (i, px) in img.pixels_mut().enumerate() {
        px.0 = [
            to_byte(chw[i]),
            to_byte(chw[plane + i]),
            to_byte(chw[2 * plane + i]),
        ];
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chw_conversion_follows_the_contract() {
        let img = RgbImage::from_fn(3, 2, |x, y| {
            image::Rgb([(x * 100 + y) as u8, 255, if x == 0 { 0 } else { 128 }])
        });
        let mut chw = vec![0.0; 18];
        to_chw(&img, &mut chw);
        // R plane, row-major.
        assert_eq!(chw[0], -1.0);
        assert!((chw[1] - (100.0 / 127.5 - 1.0)).abs() < 1e-6);
        assert!((chw[3] - (1.0 / 127.5 - 1.0)).abs() < 1e-6);
        // G plane is all 255 -> 1.0; B plane starts at 12.
        assert!(chw[6..12].iter().all(|&v| v == 1.0));
        assert_eq!(chw[12], -1.0);
        assert!((chw[13] - (128.0 / 127.5 - 1.0)).abs() < 1e-6);
        assert_eq!(from_chw(&chw, 3, 2), img);
    }

    #[test]
    fn from_chw_clamps_and_rounds() {
        // (x + 1) / 2 * 255: -2 -> 0, 2 -> 255, NaN -> 0, 0 -> 127.5 -> 128, -0.5 -> 63.75 -> 64.
        let r = [-2.0, 2.0, 1.0];
        let g = [f32::NAN, 0.0, -0.5];
        let b = [1.0, -1.0, 0.0];
        let chw: Vec<f32> = [r, g, b].concat();
        let img = from_chw(&chw, 3, 1);
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 255]);
        assert_eq!(img.get_pixel(1, 0).0, [255, 128, 0]);
        assert_eq!(img.get_pixel(2, 0).0, [255, 64, 128]);
    }
}
