//! The face embedder's input window (the manifest's `face.embed_window`): the paper's `FaceNet` crop,
//! a bilinear resize, a crop and adaptive average pooling, computed as PyTorch computes them.
//!
//! PVA's `FaceNet.forward` (lib/face_net.py of the paper's code) resizes the aligned face to 256 x 256
//! with bilinear `align_corners=True`, keeps rows 35..223 and columns 32..220 and average-pools them to
//! 112 x 112 with `AdaptiveAvgPool2d` before ArcFace. [`embed_input`] does the same arithmetic as
//! PyTorch's CPU kernels (`upsample_bilinear2d`, `adaptive_avg_pool2d`), in f32 and in their order, so
//! the Rust worker and the Python reference feed the face embedder the same numbers.

use ndarray::{s, Array4, ArrayView2, Axis};

use crate::model::manifest::{EmbedWindow, FaceSpec};

/// Aligned face crops [N, 3, S, S] in `[-1, 1]` (S = [`FaceSpec::source_size`]) -> the face
/// embedder's input [N, 3, crop_size, crop_size]: through the window when the manifest has one,
/// unchanged otherwise (the crops then already are `crop_size`).
///
/// # Panics
/// If the crops are not `S` x `S` (a caller bug, not bad input).
pub fn embed_input(faces: Array4<f32>, face: &FaceSpec) -> Array4<f32> {
    let side = face.source_size() as usize;
    let (n, c, h, w) = faces.dim();
    assert!(
        h == side && w == side,
        "face crops are {h}x{w}, the face path starts at {side}x{side}"
    );
    match &face.embed_window {
        None => faces,
        Some(window) => {
            let out = face.crop_size as usize;
            let mut result = Array4::<f32>::zeros((n, c, out, out));
            for i in 0..n {
                for ch in 0..c {
                    let plane = faces.slice(s![i, ch, .., ..]);
                    let pooled = window_plane(plane, window, out);
                    result
                        .index_axis_mut(Axis(0), i)
                        .index_axis_mut(Axis(0), ch)
                        .as_slice_mut()
                        .expect("standard layout")
                        .copy_from_slice(&pooled);
                }
            }
            result
        }
    }
}

/// One channel plane through the window: resize, crop, pool. Row-major `out * out` values.
fn window_plane(plane: ArrayView2<f32>, window: &EmbedWindow, out: usize) -> Vec<f32> {
    let side = plane.dim().0;
    let size = window.resize as usize;
    let plane = plane.as_standard_layout();
    let plane = plane.as_slice().expect("standard layout");
    // NOTE: the paper skips the resize when the input already has the size; PyTorch copies such an
    // axis unchanged anyway, so both are the same numbers.
    let resized = if side == size {
        plane.to_vec()
    } else {
        resize_bilinear_align_corners(plane, side, size)
    };
    let [r0, r1] = window.rows.map(|v| v as usize);
    let [c0, c1] = window.cols.map(|v| v as usize);
    let (h, w) = (r1 - r0, c1 - c0);
    let mut cropped = Vec::with_capacity(h * w);
    for row in r0..r1 {
        cropped.extend_from_slice(&resized[row * size + c0..row * size + c1]);
    }
    adaptive_avg_pool(&cropped, h, w, out)
}

/// Source taps of one output index along one axis: PyTorch's `compute_source_index_and_lambda`
/// with `align_corners=True` (scale `(in - 1) / (out - 1)` in f32, source `scale * i`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Taps {
    i0: usize,
    i1: usize,
    l0: f32,
    l1: f32,
}

fn taps(input: usize, output: usize) -> Vec<Taps> {
    let scale = if output > 1 {
        (input - 1) as f32 / (output - 1) as f32
    } else {
        0.0
    };
    (0..output)
        .map(|i| {
            if input == output {
                return Taps {
                    i0: i,
                    i1: i,
                    l0: 1.0,
                    l1: 0.0,
                };
            }
            let real = scale * i as f32;
            let i0 = (real.floor() as usize).min(input - 1);
            let l1 = (real - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            Taps {
                i0,
                i1,
                l0: 1.0 - l1,
                l1,
            }
        })
        .collect()
}

/// `F.interpolate(x, (out, out), mode="bilinear", align_corners=True)` of one square plane, as
/// PyTorch's CPU kernel sums it: along the width within each of the two source rows, then the rows,
/// each `t0 * w0 + t1 * w1` as `fma(t0, w0, t1 * w1)`, as PyTorch's x86-64 build compiles it: bit for
/// bit PyTorch's result at the paper's sizes (512 -> 256 and the tiny fixtures' 112 -> 256; plain
/// multiply-adds differ in the last bit of a third of the values), within one unit in the last place
/// at the small sizes of the tests.
fn resize_bilinear_align_corners(src: &[f32], input: usize, out: usize) -> Vec<f32> {
    let lerp = |t0: f32, w0: f32, t1: f32, w1: f32| t0.mul_add(w0, t1 * w1);
    let t = taps(input, out);
    let mut dst = Vec::with_capacity(out * out);
    for ty in &t {
        let (row0, row1) = (&src[ty.i0 * input..], &src[ty.i1 * input..]);
        for tx in &t {
            let top = lerp(row0[tx.i0], tx.l0, row0[tx.i1], tx.l1);
            let bottom = lerp(row1[tx.i0], tx.l0, row1[tx.i1], tx.l1);
            dst.push(lerp(top, ty.l0, bottom, ty.l1));
        }
    }
    dst
}

/// `F.adaptive_avg_pool2d(x, out)` of one `h` x `w` plane: output `i` averages input
/// `floor(i * in / out) .. ceil((i + 1) * in / out)` (windows of uneven size when `out` does not
/// divide `in`), summed row by row in f32 and divided by the window's height, then its width.
fn adaptive_avg_pool(src: &[f32], h: usize, w: usize, out: usize) -> Vec<f32> {
    let start = |i: usize, input: usize| i * input / out;
    let end = |i: usize, input: usize| ((i + 1) * input).div_ceil(out);
    let mut dst = Vec::with_capacity(out * out);
    for oy in 0..out {
        let (y0, y1) = (start(oy, h), end(oy, h));
        for ox in 0..out {
            let (x0, x1) = (start(ox, w), end(ox, w));
            let mut sum = 0f32;
            for y in y0..y1 {
                for &v in &src[y * w + x0..y * w + x1] {
                    sum += v;
                }
            }
            dst.push(sum / (y1 - y0) as f32 / (x1 - x0) as f32);
        }
    }
    dst
}

/// PyTorch's outputs, generated by `python -m pva.reference.window_vectors`.
#[cfg(test)]
mod vectors {
    include!("window_vectors.rs");
}

#[cfg(test)]
mod tests {
    use super::vectors::{input_value, Case, CASES};
    use super::*;

    fn spec(case: &Case) -> FaceSpec {
        FaceSpec {
            crop_size: case.crop_size,
            embedding_dim: 512,
            embed_window: Some(EmbedWindow {
                source_size: case.source_size,
                resize: case.resize,
                rows: case.rows,
                cols: case.cols,
            }),
        }
    }

    /// The input of a case: `input_value(n, c, y, x)`, the same formula `pva.reference.window_vectors`
    /// feeds PyTorch.
    fn input(case: &Case) -> Array4<f32> {
        let s = case.source_size as usize;
        Array4::from_shape_fn((case.batch, 3, s, s), |(n, c, y, x)| {
            input_value(n, c, y, x)
        })
    }

    #[test]
    fn the_window_matches_pytorch() {
        for case in CASES {
            let got = embed_input(input(case), &spec(case));
            let out = case.crop_size as usize;
            assert_eq!(got.dim(), (case.batch, 3, out, out), "{}", case.name);
            let mut worst = 0f32;
            for &((n, c, y, x), want) in case.samples {
                let d = (got[[n, c, y, x]] - want).abs();
                worst = worst.max(d);
                assert!(
                    d <= 1e-6,
                    "{}: [{n}, {c}, {y}, {x}] is {}, PyTorch {want}",
                    case.name,
                    got[[n, c, y, x]]
                );
            }
            let sum: f64 = got.iter().map(|&v| f64::from(v)).sum();
            assert!(
                (sum - case.sum).abs() <= 1e-6 * got.len() as f64,
                "{}: sum {sum}, PyTorch {}",
                case.name,
                case.sum
            );
            eprintln!("{}: worst sampled difference {worst:.1e}", case.name);
        }
    }

    #[test]
    fn pooling_windows_follow_floor_and_ceil() {
        // 188 -> 112 (the paper's crop): windows of 2 or 3 inputs, overlapping where
        // ceil((i + 1) * 188 / 112) > floor((i + 1) * 188 / 112).
        // Every row of the plane holds its column index, so output row 0 shows the column windows.
        let plane: Vec<f32> = (0..188 * 188).map(|i| (i % 188) as f32).collect();
        let pooled = adaptive_avg_pool(&plane, 188, 188, 112);
        assert_eq!(pooled.len(), 112 * 112);
        assert_eq!(pooled[0], 0.5); // columns 0, 1
        assert_eq!(pooled[1], 2.0); // columns 1, 2, 3: floor(188 / 112) = 1, ceil(376 / 112) = 4
        assert_eq!(pooled[111], 186.5); // columns 186, 187

        // An even division is a plain box average.
        let plane: Vec<f32> = (0..16).map(|v| v as f32).collect();
        assert_eq!(adaptive_avg_pool(&plane, 4, 4, 2), [2.5, 4.5, 10.5, 12.5]);
    }

    #[test]
    fn taps_follow_align_corners() {
        // 512 -> 256: source index i * 511 / 255, both ends exact.
        let t = taps(512, 256);
        assert_eq!((t[0].i0, t[0].l1), (0, 0.0));
        assert_eq!((t[255].i0, t[255].i1, t[255].l1), (511, 511, 0.0));
        // Same size: a copy.
        assert!(taps(7, 7)
            .iter()
            .enumerate()
            .all(|(i, t)| t.i0 == i && t.l0 == 1.0));
    }

    #[test]
    fn without_a_window_the_crops_pass_unchanged() {
        let face = FaceSpec {
            crop_size: 4,
            embedding_dim: 512,
            embed_window: None,
        };
        let faces = Array4::from_shape_fn((2, 3, 4, 4), |(n, c, y, x)| input_value(n, c, y, x));
        assert_eq!(embed_input(faces.clone(), &face), faces);
    }
}
