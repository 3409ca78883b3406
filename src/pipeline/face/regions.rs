//! Landmark-shaped masks: the named regions as polygons of Face Mesh landmarks (MediaPipe's canonical
//! mesh indices), mapped into the model's crop, filled and dilated. Used for faces the worker found
//! (it has their landmarks); aligned crops and given face boxes keep the fixed boxes of
//! `crate::pipeline::mask::Region`.

use image::{DynamicImage, GrayImage, Luma};

use super::crop::CropRect;
use super::distance::{squared_distance_transform, FAR};
use crate::pipeline::mask::{Mask, MaskError, Region};

/// The lips' outer contour.
const LIPS: &[usize] = &[
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185,
];
/// The subject's right eye contour.
const RIGHT_EYE: &[usize] = &[
    33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246,
];
/// The subject's left eye contour.
const LEFT_EYE: &[usize] = &[
    263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466,
];
/// The subject's right eyebrow.
const RIGHT_BROW: &[usize] = &[70, 63, 105, 66, 107, 55, 65, 52, 53, 46];
/// The subject's left eyebrow.
const LEFT_BROW: &[usize] = &[300, 293, 334, 296, 336, 285, 295, 282, 283, 276];
/// The face oval, forehead to chin.
const FACE_OVAL: &[usize] = &[
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
    148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
];
/// The beard area: the jaw line from cheek to cheek below the eyes, closed across the point below
/// the nose (2).
const LOWER_FACE: &[usize] = &[
    93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 2,
];

/// The polygons of a named region.
pub fn region_polygons(region: Region) -> &'static [&'static [usize]] {
    match region {
        Region::WholeFace => &[FACE_OVAL],
        Region::LowerFace => &[LOWER_FACE],
        Region::Eyebrows => &[RIGHT_BROW, LEFT_BROW],
        Region::Eyes => &[RIGHT_EYE, LEFT_EYE],
        Region::Mouth => &[LIPS],
    }
}

/// How far a landmark polygon is grown, as a share of the crop's side: the landmarks trace the
/// features' edges, the edit needs a little room around them (a beard's edge, a smile's lips).
pub const DILATE: f64 = 0.04;

/// Photo points (x, y) in the continuous coordinates of a `size` x `size` model crop of `rect`
/// turned by `roll` (see `super::align`): the inverse of the crop's map to the photo, scaled.
pub fn points_in_crop(points: &[[f64; 2]], rect: CropRect, roll: f64, size: u32) -> Vec<[f64; 2]> {
    let (c, s) = (roll.cos(), roll.sin());
    let half = f64::from(rect.size) / 2.0;
    let (cx, cy) = (f64::from(rect.x) + half, f64::from(rect.y) + half);
    let k = f64::from(size) / f64::from(rect.size);
    points
        .iter()
        .map(|p| {
            let (dx, dy) = (p[0] - cx, p[1] - cy);
            [(c * dx + s * dy + half) * k, (-s * dx + c * dy + half) * k]
        })
        .collect()
}

/// Whether (x, y) lies inside the polygon (even-odd rule).
fn inside(poly: &[[f64; 2]], x: f64, y: f64) -> bool {
    let mut odd = false;
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let ([xi, yi], [xj, yj]) = (poly[i], poly[j]);
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            odd = !odd;
        }
        j = i;
    }
    odd
}

/// The region's landmark polygons in a `size` x `size` crop (`points`: every landmark in crop
/// coordinates, [`points_in_crop`]): a pixel is masked when its centre lies inside a polygon or
/// within `DILATE * size` pixels (Euclidean) of one.
pub fn landmark_mask(region: Region, points: &[[f64; 2]], size: u32) -> Result<Mask, MaskError> {
    let n = size as usize;
    let mut grid = vec![FAR; n * n];
    for indices in region_polygons(region) {
        let poly: Vec<[f64; 2]> = indices
            .iter()
            .filter_map(|&i| points.get(i).copied())
            .collect();
        if poly.len() < 3 {
            continue;
        }
        for (i, cell) in grid.iter_mut().enumerate() {
            let (x, y) = ((i % n) as f64 + 0.5, (i / n) as f64 + 0.5);
            if inside(&poly, x, y) {
                *cell = 0.0;
            }
        }
    }
    squared_distance_transform(&mut grid, n, n);
    let reach = (DILATE * f64::from(size)).max(1.0);
    let img = GrayImage::from_fn(size, size, |x, y| {
        let on = grid[y as usize * n + x as usize] <= reach * reach;
        Luma([if on { 255 } else { 0 }])
    });
    Mask::from_image(&DynamicImage::ImageLuma8(img), size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_region_polygon_names_mesh_landmarks() {
        for region in Region::ALL {
            for poly in region_polygons(region) {
                assert!(
                    poly.len() >= 3 && poly.iter().all(|&i| i < 468),
                    "{region:?}"
                );
            }
        }
    }

    #[test]
    fn a_polygon_is_filled_and_grown_by_the_dilation() {
        // Landmarks 61.. of the lips placed on a square from (20, 20) to (40, 40) in a 100 px crop.
        let mut points = vec![[0.0; 2]; 468];
        let corners = [[20.0, 20.0], [40.0, 20.0], [40.0, 40.0], [20.0, 40.0]];
        for (k, &i) in LIPS.iter().enumerate() {
            points[i] = corners[k * 4 / LIPS.len()];
        }
        let mask = landmark_mask(Region::Mouth, &points, 100).unwrap();
        let v = mask.downsample_nearest(100);
        let at = |x: usize, y: usize| v[y * 100 + x];
        assert_eq!(at(30, 30), 1.0, "inside");
        assert_eq!(at(43, 30), 1.0, "within 4 px");
        assert_eq!(at(46, 30), 0.0, "beyond 4 px");
        assert_eq!(at(30, 80), 0.0);
    }

    #[test]
    fn points_map_into_the_crop_and_turn_with_it() {
        let rect = CropRect {
            x: 100,
            y: 50,
            size: 200,
        };
        let p = points_in_crop(&[[200.0, 150.0], [250.0, 150.0]], rect, 0.0, 64);
        assert_eq!(p, [[32.0, 32.0], [48.0, 32.0]]);
        // Turned by 90°: the photo's x axis becomes the crop's upward axis.
        let q = points_in_crop(&[[250.0, 150.0]], rect, std::f64::consts::FRAC_PI_2, 64);
        assert!(
            (q[0][0] - 32.0).abs() < 1e-9 && (q[0][1] - 16.0).abs() < 1e-9,
            "{q:?}"
        );
    }
}
