//! Faces found in a photo: the face-model directory's detector (BlazeFace) on the letterboxed photo,
//! its anchors and weighted non-maximum suppression decoded as its manifest says, then the landmark
//! model (Face Mesh) on a rotated crop of each face, its 468 landmarks mapped back to the photo.
//! Numerically the reference `models/faces/facedetect.py` (pinned by `models/faces/pinned.json`).
//!
//! Coordinates are pixels of the upright photo (after EXIF orientation), boxes `[xmin, ymin, xmax,
//! ymax]`, unless a name says `_norm` (0..1 of the detector's square input).

use image::RgbImage;
use ndarray::{Array4, ArrayView2};

use super::resample::{affine_bilinear, resize_bilinear};
use crate::engine::{EngineError, FaceEngine};
use crate::model::faces::{AnchorOptions, DecodingSpec, FaceManifest, RoiSpec};

/// One face the detector found.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectedFace {
    /// The detector's score (0..1).
    pub score: f64,
    /// `[xmin, ymin, xmax, ymax]` in photo pixels (may reach past the photo's edges).
    pub bbox: [f64; 4],
    /// The detector's keypoints: the subject's right eye, left eye, nose tip, mouth centre, right
    /// and left ear tragion.
    pub keypoints: Vec<[f64; 2]>,
}

impl DetectedFace {
    /// Width of the box.
    pub fn width(&self) -> f64 {
        self.bbox[2] - self.bbox[0]
    }

    /// Height of the box.
    pub fn height(&self) -> f64 {
        self.bbox[3] - self.bbox[1]
    }
}

/// The landmark model's crop of one face: a square of side `size` centred on (`cx`, `cy`), turned by
/// `rotation` radians.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LandmarkRoi {
    /// Centre x.
    pub cx: f64,
    /// Centre y.
    pub cy: f64,
    /// Side.
    pub size: f64,
    /// Rotation, radians.
    pub rotation: f64,
}

/// The landmarks of one face.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceLandmarks {
    /// (x, y) in photo pixels and z (depth, smaller is nearer) in the same scale, in MediaPipe's
    /// canonical face mesh order.
    pub points: Vec<[f64; 3]>,
    /// The landmark model's face presence (sigmoid of its flag, 0..1).
    pub presence: f64,
    /// The crop they were found in.
    pub roi: LandmarkRoi,
}

impl FaceLandmarks {
    /// The subject's right and left eye centres: the means of their corner landmarks (33, 133 and
    /// 362, 263).
    pub fn eye_centres(&self) -> [[f64; 2]; 2] {
        let mean = |a: usize, b: usize| {
            let (p, q) = (self.points[a], self.points[b]);
            [(p[0] + q[0]) / 2.0, (p[1] + q[1]) / 2.0]
        };
        [mean(33, 133), mean(362, 263)]
    }
}

/// Where the photo lies in the letterboxed square: input pixel = photo pixel * `scale` + pad.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Letterbox {
    scale: f64,
    pad_x: f64,
    pad_y: f64,
}

/// The whole photo scaled to fit `size` x `size` (aspect kept, Pillow's bilinear), centred on black.
pub(crate) fn letterbox(img: &RgbImage, size: u32) -> (RgbImage, Letterbox) {
    let (w, h) = (img.width(), img.height());
    let scale = f64::from(size) / f64::from(w.max(h));
    // Python's round() rounds half to even.
    let fit = |side: u32| ((f64::from(side) * scale).round_ties_even() as u32).clamp(1, size);
    let (nw, nh) = (fit(w), fit(h));
    let (pad_x, pad_y) = ((size - nw) / 2, (size - nh) / 2);
    let mut canvas = RgbImage::new(size, size);
    image::imageops::replace(
        &mut canvas,
        &resize_bilinear(img, nw, nh),
        i64::from(pad_x),
        i64::from(pad_y),
    );
    (
        canvas,
        Letterbox {
            scale: f64::from(nw) / f64::from(w),
            pad_x: f64::from(pad_x),
            pad_y: f64::from(pad_y),
        },
    )
}

/// An RGB image as a [1, H, W, 3] tensor, 0..255 mapped linearly onto `range` (in float32, as
/// numpy computes `x * float32((hi - lo) / 255) + float32(lo)`).
pub(crate) fn to_nhwc(img: &RgbImage, range: [f64; 2]) -> Array4<f32> {
    let k = ((range[1] - range[0]) / 255.0) as f32;
    let lo = range[0] as f32;
    let (w, h) = (img.width() as usize, img.height() as usize);
    Array4::from_shape_fn((1, h, w, 3), |(_, y, x, c)| {
        f32::from(img.get_pixel(x as u32, y as u32)[c]) * k + lo
    })
}

/// Anchor centres (x, y, 0..1) as MediaPipe's `SsdAnchorsCalculator` makes them with
/// `fixed_anchor_size` (every anchor 1 x 1): the layers that share a stride are one grid, each cell
/// holding (aspect ratios + 1 interpolated) anchors per layer, row-major y, x.
pub(crate) fn anchors(opts: &AnchorOptions) -> Vec<[f64; 2]> {
    let per_anchor =
        opts.aspect_ratios.len() + usize::from(opts.interpolated_scale_aspect_ratio > 0.0);
    let mut out = Vec::new();
    let mut layer = 0;
    while layer < opts.num_layers {
        let mut last = layer;
        while last < opts.num_layers && opts.strides[last] == opts.strides[layer] {
            last += 1;
        }
        let per_cell = per_anchor * (last - layer);
        let gh = opts.input_size_height.div_ceil(opts.strides[layer]);
        let gw = opts.input_size_width.div_ceil(opts.strides[layer]);
        for y in 0..gh {
            for x in 0..gw {
                let centre = [
                    (x as f64 + opts.anchor_offset_x) / gw as f64,
                    (y as f64 + opts.anchor_offset_y) / gh as f64,
                ];
                out.extend(std::iter::repeat_n(centre, per_cell));
            }
        }
        layer = last;
    }
    out
}

/// Intersection over union of two `[xmin, ymin, xmax, ymax]` boxes.
pub fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// The detector's raw outputs (`regressors` [anchors, coords], `classificators` [anchors]) ->
/// detections in the detector's input (0..1), after MediaPipe's `TensorsToDetectionsCalculator` and
/// its weighted non-maximum suppression ([`weighted_nms`]), best first.
pub(crate) fn decode(
    regressors: ArrayView2<'_, f32>,
    logits: &[f32],
    anchors: &[[f64; 2]],
    dec: &DecodingSpec,
) -> Vec<DetectedFace> {
    let clip = dec.score_clipping_thresh;
    let rows = anchors.len().min(regressors.nrows()).min(logits.len());
    let raw = |i: usize, j: usize| f64::from(regressors[[i, j]]);
    let mut candidates: Vec<DetectedFace> = (0..rows)
        .filter_map(|i| {
            let score = 1.0 / (1.0 + (-f64::from(logits[i]).clamp(-clip, clip)).exp());
            if score < dec.min_score_thresh {
                return None;
            }
            let o = dec.box_coord_offset;
            let cx = raw(i, o) / dec.x_scale + anchors[i][0];
            let cy = raw(i, o + 1) / dec.y_scale + anchors[i][1];
            let w = raw(i, o + 2) / dec.w_scale;
            let h = raw(i, o + 3) / dec.h_scale;
            let keypoints = (0..dec.num_keypoints)
                .map(|k| {
                    let o = dec.keypoint_coord_offset + k * dec.num_values_per_keypoint;
                    [
                        raw(i, o) / dec.x_scale + anchors[i][0],
                        raw(i, o + 1) / dec.y_scale + anchors[i][1],
                    ]
                })
                .collect();
            Some(DetectedFace {
                score,
                bbox: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
                keypoints,
            })
        })
        .collect();
    // Stable: equal scores keep anchor order, as numpy's stable argsort.
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    weighted_nms(candidates, dec.min_suppression_threshold)
}

/// MediaPipe's weighted non-maximum suppression of detections sorted best first: each cluster of
/// boxes overlapping its best by more than `threshold` (IoU) becomes their score-weighted mean (box
/// and keypoints), with the best one's score.
fn weighted_nms(mut remaining: Vec<DetectedFace>, threshold: f64) -> Vec<DetectedFace> {
    let mut out = Vec::new();
    while !remaining.is_empty() {
        let best = remaining.remove(0);
        let (mut cluster, rest): (Vec<DetectedFace>, Vec<DetectedFace>) = remaining
            .into_iter()
            .partition(|f| iou(&best.bbox, &f.bbox) > threshold);
        cluster.insert(0, best);
        remaining = rest;
        let total: f64 = cluster.iter().map(|f| f.score).sum();
        let mut bbox = [0.0; 4];
        let mut keypoints = vec![[0.0; 2]; cluster[0].keypoints.len()];
        for f in &cluster {
            for (acc, v) in bbox.iter_mut().zip(f.bbox) {
                *acc += v * f.score;
            }
            for (acc, p) in keypoints.iter_mut().zip(&f.keypoints) {
                acc[0] += p[0] * f.score;
                acc[1] += p[1] * f.score;
            }
        }
        bbox.iter_mut().for_each(|v| *v /= total);
        keypoints.iter_mut().for_each(|p| {
            p[0] /= total;
            p[1] /= total;
        });
        out.push(DetectedFace {
            score: cluster[0].score,
            bbox,
            keypoints,
        });
    }
    out
}

/// One pass of the detector: the whole image letterboxed, its detections mapped back to image
/// pixels, best first.
fn detect_once(
    engine: &mut dyn FaceEngine,
    img: &RgbImage,
) -> Result<Vec<DetectedFace>, EngineError> {
    let manifest: &FaceManifest = engine.face_manifest();
    let det = &manifest.graphs.detector;
    let size = det.graph.input_side() as u32;
    let (square, lb) = letterbox(img, size);
    let input = to_nhwc(&square, det.graph.value_range());
    let anchors = anchors(&det.anchors);
    let dec = det.decoding.clone();
    let (regressors, classificators) = engine.detect_faces(input.view())?;
    let reg = regressors.index_axis(ndarray::Axis(0), 0);
    let logits: Vec<f32> = classificators.iter().copied().collect();
    let s = f64::from(size);
    let to_photo = |v: f64, pad: f64| (v * s - pad) / lb.scale;
    Ok(decode(reg, &logits, &anchors, &dec)
        .into_iter()
        .map(|d| DetectedFace {
            score: d.score,
            bbox: [
                to_photo(d.bbox[0], lb.pad_x),
                to_photo(d.bbox[1], lb.pad_y),
                to_photo(d.bbox[2], lb.pad_x),
                to_photo(d.bbox[3], lb.pad_y),
            ],
            keypoints: d
                .keypoints
                .iter()
                .map(|p| [to_photo(p[0], lb.pad_x), to_photo(p[1], lb.pad_y)])
                .collect(),
        })
        .collect())
}

/// The side of the second pass's square tiles, as a share of the photo's shorter side: a face is 2-3
/// times larger in a tile's letterbox than in the whole photo's (models/faces/README.md).
pub const TILE_SHARE: f64 = 0.6;

/// The faces in a photo, best first: the whole photo letterboxed into the detector (the reference's
/// pass, `models/faces/facedetect.py`), and, when that finds none, a second pass over overlapping
/// square tiles ([`TILE_SHARE`] of the shorter side, at half-tile steps) for faces too small for the
/// short-range detector's smallest anchors in the whole photo (full-length photos, turned ones); the
/// tiles' detections are merged by the same weighted non-maximum suppression.
pub fn detect_faces(
    engine: &mut dyn FaceEngine,
    img: &RgbImage,
) -> Result<Vec<DetectedFace>, EngineError> {
    let faces = detect_once(engine, img)?;
    if !faces.is_empty() {
        return Ok(faces);
    }
    let (w, h) = img.dimensions();
    let side = ((f64::from(w.min(h)) * TILE_SHARE).round() as u32).max(1);
    let starts = |extent: u32| -> Vec<u32> {
        let step = (side / 2).max(1);
        let last = extent.saturating_sub(side);
        let mut v: Vec<u32> = (0..=last).step_by(step as usize).collect();
        if v.last() != Some(&last) {
            v.push(last);
        }
        v
    };
    let mut found = Vec::new();
    for y in starts(h) {
        for x in starts(w) {
            let tile = image::imageops::crop_imm(img, x, y, side, side).to_image();
            let (dx, dy) = (f64::from(x), f64::from(y));
            found.extend(
                detect_once(engine, &tile)?
                    .into_iter()
                    .map(|f| DetectedFace {
                        score: f.score,
                        bbox: [
                            f.bbox[0] + dx,
                            f.bbox[1] + dy,
                            f.bbox[2] + dx,
                            f.bbox[3] + dy,
                        ],
                        keypoints: f.keypoints.iter().map(|p| [p[0] + dx, p[1] + dy]).collect(),
                    }),
            );
        }
    }
    found.sort_by(|a, b| b.score.total_cmp(&a.score));
    let threshold = engine
        .face_manifest()
        .graphs
        .detector
        .decoding
        .min_suppression_threshold;
    Ok(weighted_nms(found, threshold))
}

/// The landmark model's crop of a detection, as MediaPipe's face_landmark_front graph makes it:
/// centred on the box, turned so that the line between the manifest's two keypoints (the eyes) lies
/// at the target angle, a square of the box's longer side times the scale.
pub fn landmark_roi(face: &DetectedFace, roi: &RoiSpec) -> LandmarkRoi {
    let [k0, k1] = roi.rotation_keypoints;
    let ([x0, y0], [x1, y1]) = (face.keypoints[k0], face.keypoints[k1]);
    let rotation = roi.target_angle - (-(y1 - y0)).atan2(x1 - x0);
    let [xmin, ymin, xmax, ymax] = face.bbox;
    LandmarkRoi {
        cx: (xmin + xmax) / 2.0,
        cy: (ymin + ymax) / 2.0,
        size: (xmax - xmin).max(ymax - ymin) * roi.scale,
        rotation,
    }
}

/// The 2x3 affine map from crop pixels (0..`side`) to photo pixels.
pub fn roi_to_photo(roi: &LandmarkRoi, side: u32) -> [[f64; 3]; 2] {
    let (c, s) = (roi.rotation.cos(), roi.rotation.sin());
    let side = f64::from(side);
    let k = roi.size / side;
    let (a, b, d, e) = (k * c, -k * s, k * s, k * c);
    let tx = roi.cx - (a * side / 2.0 + b * side / 2.0);
    let ty = roi.cy - (d * side / 2.0 + e * side / 2.0);
    [[a, b, tx], [d, e, ty]]
}

/// The landmarks of a detected face: the rotated crop (bilinear, black outside the photo) through
/// the landmark model, its points mapped back to the photo.
pub fn face_landmarks(
    engine: &mut dyn FaceEngine,
    img: &RgbImage,
    face: &DetectedFace,
) -> Result<FaceLandmarks, EngineError> {
    let spec = &engine.face_manifest().graphs.landmarks;
    let side = spec.graph.input_side() as u32;
    let range = spec.graph.value_range();
    let roi = landmark_roi(face, &spec.roi_from_detection);
    let m = roi_to_photo(&roi, side);
    let input = to_nhwc(&affine_bilinear(img, &m, side), range);
    let (raw, flag) = engine.face_landmarks(input.view())?;
    let points = raw
        .chunks_exact(3)
        .map(|p| {
            let (px, py, pz) = (f64::from(p[0]), f64::from(p[1]), f64::from(p[2]));
            [
                px * m[0][0] + py * m[0][1] + m[0][2],
                px * m[1][0] + py * m[1][1] + m[1][2],
                pz * roi.size / f64::from(side),
            ]
        })
        .collect();
    Ok(FaceLandmarks {
        points,
        presence: 1.0 / (1.0 + (-f64::from(flag)).exp()),
        roi,
    })
}

#[cfg(test)]
mod tests {
    //! The decoding on synthetic inputs, and the whole detection on the public-domain photos against
    //! the pins of the Python reference (`models/faces/pinned.json`).

    use std::path::{Path, PathBuf};

    use image::Rgb;
    use ndarray::Array2;

    use super::*;
    use crate::engine::{EngineSettings, OrtFaces};
    use crate::pipeline::image::{decode as decode_image, DecodeLimits};

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn manifest() -> FaceManifest {
        FaceManifest::load(&repo().join("models/faces")).unwrap()
    }

    #[test]
    fn anchors_are_the_manifests_grids_in_order() {
        let m = manifest();
        let a = anchors(&m.graphs.detector.anchors);
        assert_eq!(a.len(), 896);
        // Grid 1 (16x16, 2 anchors a cell), then grid 2 (8x8, 6 a cell).
        assert_eq!(a[0], [0.5 / 16.0, 0.5 / 16.0]);
        assert_eq!(a[1], a[0]);
        assert_eq!(a[2], [1.5 / 16.0, 0.5 / 16.0]);
        assert_eq!(a[32], [0.5 / 16.0, 1.5 / 16.0]);
        assert_eq!(a[512], [0.5 / 8.0, 0.5 / 8.0]);
        assert_eq!(a[517], a[512]);
        assert_eq!(a[518], [1.5 / 8.0, 0.5 / 8.0]);
        assert_eq!(a[895], [7.5 / 8.0, 7.5 / 8.0]);
    }

    #[test]
    fn decoding_merges_overlapping_boxes_by_score_and_keeps_apart_ones() {
        let m = manifest();
        let dec = &m.graphs.detector.decoding;
        let a: Vec<[f64; 2]> = vec![[0.25, 0.25], [0.25, 0.25], [0.75, 0.75], [0.5, 0.5]];
        let mut reg = Array2::<f32>::zeros((4, 16));
        // Anchor 0: a 0.2 box at its centre; anchor 1: the same box moved right by 0.02; anchor 2: a
        // box elsewhere; anchor 3: below the score threshold.
        for (i, dx) in [(0, 0.0f32), (1, 0.02), (2, 0.0), (3, 0.0)] {
            reg[[i, 0]] = dx * 128.0;
            reg[[i, 2]] = 0.2 * 128.0;
            reg[[i, 3]] = 0.2 * 128.0;
            reg[[i, 4]] = -0.05 * 128.0; // keypoint 0 left of the centre
        }
        let logit = |p: f64| (p / (1.0 - p)).ln() as f32;
        let logits = [logit(0.9), logit(0.6), logit(0.8), logit(0.4)];
        let found = decode(reg.view(), &logits, &a, dec);
        assert_eq!(found.len(), 2, "{found:?}");
        let (s0, s1) = (1.0 / (1.0 + (-f64::from(logits[0])).exp()), 0.6);
        let cx = (0.25 * s0 + 0.27 * s1) / (s0 + s1);
        assert!((found[0].score - s0).abs() < 1e-6);
        assert!((found[0].bbox[0] - (cx - 0.1)).abs() < 1e-6, "{found:?}");
        // Keypoints are relative to the anchor, not to the box.
        assert!((found[0].keypoints[0][0] - 0.2).abs() < 1e-6);
        assert!((found[1].bbox[2] - 0.85).abs() < 1e-6);
        assert!((found[1].score - 0.8).abs() < 1e-6);
    }

    #[test]
    fn letterboxing_centres_the_photo_and_maps_back() {
        let img = RgbImage::from_pixel(200, 100, Rgb([255, 255, 255]));
        let (square, lb) = letterbox(&img, 128);
        assert_eq!((lb.scale, lb.pad_x, lb.pad_y), (0.64, 0.0, 32.0));
        assert_eq!(square.get_pixel(5, 31).0, [0, 0, 0]);
        assert_eq!(square.get_pixel(5, 32).0, [255, 255, 255]);
        assert_eq!(square.get_pixel(5, 95).0, [255, 255, 255]);
        assert_eq!(square.get_pixel(5, 96).0, [0, 0, 0]);
        let t = to_nhwc(&square, [-1.0, 1.0]);
        assert_eq!((t[[0, 0, 0, 0]], t[[0, 40, 0, 2]]), (-1.0, 1.0));
    }

    #[test]
    fn the_landmark_crop_turns_with_the_eyes() {
        let m = manifest();
        let roi_spec = &m.graphs.landmarks.roi_from_detection;
        let face = DetectedFace {
            score: 1.0,
            bbox: [100.0, 100.0, 200.0, 220.0],
            keypoints: vec![[120.0, 140.0], [180.0, 140.0 + 60.0 * 0.5f64.tan()]],
        };
        let roi = landmark_roi(&face, roi_spec);
        assert!((roi.rotation - 0.5).abs() < 1e-12, "{roi:?}");
        assert_eq!((roi.cx, roi.cy, roi.size), (150.0, 160.0, 180.0));
        let t = roi_to_photo(&roi, 192);
        let at = |u: f64, v: f64| {
            [
                t[0][0] * u + t[0][1] * v + t[0][2],
                t[1][0] * u + t[1][1] * v + t[1][2],
            ]
        };
        let c = at(96.0, 96.0);
        assert!((c[0] - 150.0).abs() < 1e-9 && (c[1] - 160.0).abs() < 1e-9);
        // The crop's x axis runs along the eye line.
        let r = at(192.0, 96.0);
        assert!(((r[1] - c[1]) / (r[0] - c[0]) - 0.5f64.tan()).abs() < 1e-9);
    }

    /// The photos of pinned.json that are here (keys from the repository, or from its parent for
    /// `shared/`).
    fn pinned_photos() -> Vec<(String, PathBuf, serde_json::Value)> {
        let pinned: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(repo().join("models/faces/pinned.json")).unwrap(),
        )
        .unwrap();
        pinned["photos"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(key, v)| {
                let path = if key.starts_with("examples/") {
                    repo().join(key)
                } else {
                    repo().parent().unwrap().join(key)
                };
                (key.clone(), path, v.clone())
            })
            .filter(|(_, path, _)| path.exists())
            .collect()
    }

    /// How far the Rust detection may lie from the Python reference's pins, in photo pixels. The
    /// pre-processing is Pillow's arithmetic to the bit, so on a lossless photo (PNG) the results are
    /// the reference's (measured: 0.000 px). JPEG decoders differ (the image crate's IDCT and chroma
    /// upsampling vs libjpeg-turbo's in Pillow, a level or two per pixel): measured on the pinned
    /// JPEGs, boxes and keypoints within 0.47 px, landmarks within 1.03 px (z of biden.jpg, whose face
    /// is 370 px wide); the tolerances leave a little room above that.
    const LOSSLESS_PX: f64 = 0.01;
    const JPEG_BOX_PX: f64 = 0.5;
    const JPEG_LANDMARK_PX: f64 = 1.5;

    fn floats(v: &serde_json::Value) -> Vec<f64> {
        match v {
            serde_json::Value::Array(items) => items.iter().flat_map(floats).collect(),
            v => vec![v.as_f64().unwrap()],
        }
    }

    #[test]
    fn faces_keypoints_and_landmarks_match_the_python_reference_on_the_photos() {
        let settings = EngineSettings::for_tests(Path::new("models/tiny"));
        let mut engine = OrtFaces::load(&settings).unwrap();
        let photos = pinned_photos();
        assert!(photos.len() >= 3, "the examples' photos at least");
        for (key, path, pin) in photos {
            let img =
                decode_image(&std::fs::read(&path).unwrap(), &DecodeLimits::default()).unwrap();
            assert_eq!(
                [f64::from(img.width()), f64::from(img.height())].to_vec(),
                floats(&pin["size"]),
                "{key}"
            );
            let faces = detect_faces(&mut engine, &img).unwrap();
            let want = pin["faces"].as_array().unwrap();
            assert_eq!(faces.len(), want.len(), "{key}: {faces:?}");
            let lossless = key.ends_with(".png");
            let (box_px, landmark_px) = if lossless {
                (LOSSLESS_PX, LOSSLESS_PX)
            } else {
                (JPEG_BOX_PX, JPEG_LANDMARK_PX)
            };
            let close = |got: Vec<f64>, want: Vec<f64>, tol: f64, what: &str| {
                assert_eq!(got.len(), want.len(), "{key} {what}");
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w).abs())
                    .fold(0.0, f64::max);
                assert!(
                    worst <= tol,
                    "{key} {what}: {got:?} vs pinned {want:?} (off by {worst:.3}, tolerance {tol})"
                );
            };
            for (i, (f, p)) in faces.iter().zip(want).enumerate() {
                close(
                    vec![f.score],
                    floats(&p["score"]),
                    2e-3,
                    &format!("face {i} score"),
                );
                close(
                    f.bbox.to_vec(),
                    floats(&p["box"]),
                    box_px,
                    &format!("face {i} box"),
                );
                close(
                    f.keypoints.iter().flatten().copied().collect(),
                    floats(&p["keypoints"]),
                    box_px,
                    &format!("face {i} keypoints"),
                );
            }
            let lm = face_landmarks(&mut engine, &img, &faces[0]).unwrap();
            let pins = &pin["landmarks"];
            close(
                vec![lm.presence],
                floats(&pins["presence"]),
                1e-3,
                "presence",
            );
            let ids: Vec<usize> = floats(&pins["ids"]).iter().map(|&i| i as usize).collect();
            let want = floats(&pins["points"]);
            // x, y and z (depth, in the same pixel scale).
            let got: Vec<f64> = ids.iter().flat_map(|&i| lm.points[i]).collect();
            close(got, want, landmark_px, "landmarks");
        }
    }

    /// On copies rotated by ±15° and ±30° (bilinear, the frame expanded), the eye landmarks land
    /// within 5% of the inter-ocular distance of the original's eye landmarks rotated the same way:
    /// the landmark crop turns with the detector's eye keypoints (as models/tests/test_faces.py
    /// checks the reference).
    #[test]
    fn eye_landmarks_follow_a_rotated_photo() {
        let settings = EngineSettings::for_tests(Path::new("models/tiny"));
        let mut engine = OrtFaces::load(&settings).unwrap();
        let photos: Vec<PathBuf> = [
            repo().join("examples/photos/obama.jpg"),
            // Full length: turned by +15° or +30° its face is found by the tiled second pass only.
            repo().join("examples/photos/obama3.jpg"),
            repo()
                .parent()
                .unwrap()
                .join("shared/data/faces/grace_hopper.jpg"),
        ]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
        for path in photos {
            let img =
                decode_image(&std::fs::read(&path).unwrap(), &DecodeLimits::default()).unwrap();
            let face = detect_faces(&mut engine, &img).unwrap().remove(0);
            let eyes = face_landmarks(&mut engine, &img, &face)
                .unwrap()
                .eye_centres();
            let iod =
                ((eyes[1][0] - eyes[0][0]).powi(2) + (eyes[1][1] - eyes[0][1]).powi(2)).sqrt();
            for degrees in [-30.0f64, -15.0, 15.0, 30.0] {
                let (turned, forward) = super::super::rotate_expanded(&img, degrees.to_radians());
                let faces = detect_faces(&mut engine, &turned).unwrap();
                assert!(
                    !faces.is_empty(),
                    "{} rotated {degrees}°: no face",
                    path.display()
                );
                let got = face_landmarks(&mut engine, &turned, &faces[0])
                    .unwrap()
                    .eye_centres();
                for (g, e) in got.iter().zip(eyes) {
                    let want = forward(e);
                    let err = ((g[0] - want[0]).powi(2) + (g[1] - want[1]).powi(2)).sqrt() / iod;
                    assert!(
                        err <= 0.05,
                        "{} rotated {degrees}°: eye off by {err:.3} of the inter-ocular distance",
                        path.display()
                    );
                }
            }
        }
    }
}
