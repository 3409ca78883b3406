//! The face-model directory's `manifest.json` (models/faces/README.md): the face detector and the
//! landmark graphs shared by every model, their input/output contracts, the detector's anchors and
//! decoding, the landmark crop, and the check that the directory's files are the ones it describes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::manifest::{
    read_manifest, sha256_file, DType, Dim, GraphSpec, ManifestError, TensorSpec,
};

/// Manifest key of the face detector graph.
pub const DETECTOR: &str = "detector";
/// Manifest key of the face landmark graph.
pub const LANDMARKS: &str = "landmarks";

/// An input of a face graph: the tensor and the value range its pixels are mapped onto.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageInput {
    /// Name, dtype and shape (`[1, size, size, 3]`, NHWC RGB).
    #[serde(flatten)]
    pub tensor: TensorSpec,
    /// Pixel 0 maps to the first value, 255 to the second, linearly.
    pub value_range: [f64; 2],
}

/// One face graph's file and interface.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaceGraphFile {
    /// File name inside the face-model directory.
    pub file: String,
    /// Hex sha256 of the file.
    pub sha256: String,
    /// File size in bytes.
    pub bytes: u64,
    /// Inputs in graph order (one image).
    pub inputs: Vec<ImageInput>,
    /// Outputs in graph order.
    pub outputs: Vec<TensorSpec>,
}

impl FaceGraphFile {
    /// The interface as the engine checks every graph's ([`GraphSpec`]).
    pub fn spec(&self) -> GraphSpec {
        GraphSpec {
            file: self.file.clone(),
            sha256: self.sha256.clone(),
            bytes: self.bytes,
            inputs: self.inputs.iter().map(|i| i.tensor.clone()).collect(),
            outputs: self.outputs.clone(),
            external_data: Vec::new(),
            precision: Default::default(),
            attention: None,
        }
    }

    /// Side of the square image input (`[1, side, side, 3]`).
    pub fn input_side(&self) -> usize {
        match self.inputs.first().map(|i| &i.tensor.shape[..]) {
            Some([_, Dim::Fixed(h), ..]) => *h as usize,
            _ => 0,
        }
    }

    /// The image input's value range.
    pub fn value_range(&self) -> [f64; 2] {
        self.inputs.first().map_or([0.0, 1.0], |i| i.value_range)
    }
}

/// The options of MediaPipe's `SsdAnchorsCalculator` the detector was trained with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnchorOptions {
    /// Number of feature-map layers.
    pub num_layers: usize,
    /// Input height the strides divide.
    pub input_size_height: usize,
    /// Input width the strides divide.
    pub input_size_width: usize,
    /// Anchor centre offset within a cell, x (0.5: the cell's centre).
    pub anchor_offset_x: f64,
    /// Anchor centre offset within a cell, y.
    pub anchor_offset_y: f64,
    /// Stride of each layer; consecutive layers of one stride share a grid.
    pub strides: Vec<usize>,
    /// Aspect ratios per layer (each one anchor per cell).
    pub aspect_ratios: Vec<f64>,
    /// Above 0: one more anchor per cell and layer.
    pub interpolated_scale_aspect_ratio: f64,
    /// Every anchor is 1 x 1 (the only form the decoding here supports).
    pub fixed_anchor_size: bool,
}

/// How the detector's raw outputs become boxes (MediaPipe's `TensorsToDetectionsCalculator`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodingSpec {
    /// Values per anchor in `regressors`.
    pub num_coords: usize,
    /// Where the box starts in an anchor's values.
    pub box_coord_offset: usize,
    /// Where the keypoints start in an anchor's values.
    pub keypoint_coord_offset: usize,
    /// Keypoints per face (6: eyes, nose tip, mouth, ear tragions).
    pub num_keypoints: usize,
    /// Values per keypoint (2: x, y).
    pub num_values_per_keypoint: usize,
    /// Divides the x offsets.
    pub x_scale: f64,
    /// Divides the y offsets.
    pub y_scale: f64,
    /// Divides the widths.
    pub w_scale: f64,
    /// Divides the heights.
    pub h_scale: f64,
    /// Logits are clipped to +-this before the sigmoid.
    pub score_clipping_thresh: f64,
    /// Detections below this score are dropped.
    pub min_score_thresh: f64,
    /// IoU above which detections are merged by the weighted non-maximum suppression.
    pub min_suppression_threshold: f64,
}

/// The face detector: file, anchors and decoding.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetectorSpec {
    /// File and interface.
    #[serde(flatten)]
    pub graph: FaceGraphFile,
    /// The anchors its rows are relative to.
    pub anchors: AnchorOptions,
    /// How its rows become detections.
    pub decoding: DecodingSpec,
}

/// How the landmark model's crop is placed from a detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoiSpec {
    /// The two detector keypoints whose line is turned to `target_angle` (the eyes).
    pub rotation_keypoints: [usize; 2],
    /// Angle of that line in the crop, radians.
    pub target_angle: f64,
    /// The crop's side over the box's longer side.
    pub scale: f64,
}

/// The landmark model: file, landmark count and crop.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LandmarksSpec {
    /// File and interface.
    #[serde(flatten)]
    pub graph: FaceGraphFile,
    /// Landmarks per face (468).
    pub landmark_count: usize,
    /// The crop from a detection.
    pub roi_from_detection: RoiSpec,
}

/// The two graphs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaceGraphs {
    /// The face detector.
    pub detector: DetectorSpec,
    /// The landmark model.
    pub landmarks: LandmarksSpec,
}

/// The graphs' licence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaceLicence {
    /// SPDX id.
    pub spdx: String,
    /// The attribution every distribution carries.
    pub notice: String,
    /// Whether the weights allow commercial use (the worker refuses them otherwise).
    pub commercial_use: bool,
}

/// The whole face-model manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaceManifest {
    /// The weights' licence.
    pub licence: FaceLicence,
    /// Detector and landmarks.
    pub graphs: FaceGraphs,
}

impl FaceManifest {
    /// Reads `dir/manifest.json` and checks its internal consistency (not the files).
    pub fn load(dir: &Path) -> Result<Self, ManifestError> {
        let manifest: FaceManifest = read_manifest(dir)?;
        manifest.check_fields(dir)?;
        Ok(manifest)
    }

    /// The graph of a key ([`DETECTOR`] or [`LANDMARKS`]).
    pub fn graph(&self, key: &str) -> Option<&FaceGraphFile> {
        match key {
            DETECTOR => Some(&self.graphs.detector.graph),
            LANDMARKS => Some(&self.graphs.landmarks.graph),
            _ => None,
        }
    }

    /// Number of detector anchors the anchor options give.
    pub fn anchor_count(&self) -> usize {
        let a = &self.graphs.detector.anchors;
        let per_anchor =
            a.aspect_ratios.len() + usize::from(a.interpolated_scale_aspect_ratio > 0.0);
        let mut n = 0;
        for &stride in a.strides.iter().take(a.num_layers) {
            if stride == 0 {
                return 0;
            }
            let cells = a.input_size_height.div_ceil(stride) * a.input_size_width.div_ceil(stride);
            n += cells * per_anchor;
        }
        n
    }

    fn check_fields(&self, dir: &Path) -> Result<(), ManifestError> {
        let field = |field: &str, problem: String| ManifestError::Field {
            dir: dir.to_path_buf(),
            field: field.to_string(),
            problem,
        };
        if !self.licence.commercial_use {
            return Err(field(
                "licence.commercial_use",
                "is false: the worker only runs weights that allow commercial use".into(),
            ));
        }
        let fixed = |t: &TensorSpec| -> Option<Vec<i64>> {
            t.shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => Some(*n),
                    Dim::Dynamic(_) => None,
                })
                .collect()
        };
        for key in [DETECTOR, LANDMARKS] {
            let g = self.graph(key).expect("known keys");
            let image = match &g.inputs[..] {
                [image] => image,
                _ => {
                    return Err(field(
                        &format!("graphs.{key}.inputs"),
                        format!(
                            "has {} inputs, a face graph takes one image",
                            g.inputs.len()
                        ),
                    ))
                }
            };
            let shape = fixed(&image.tensor);
            let square = matches!(shape.as_deref(), Some([1, h, w, 3]) if h == w && *h > 0);
            if !square || image.tensor.dtype != DType::Float32 {
                return Err(field(
                    &format!("graphs.{key}.inputs[0]"),
                    format!(
                        "must be float32 [1, S, S, 3] (NHWC), is {:?} {:?}",
                        image.tensor.dtype, image.tensor.shape
                    ),
                ));
            }
            if g.outputs.len() != 2 || g.outputs.iter().any(|o| fixed(o).is_none()) {
                return Err(field(
                    &format!("graphs.{key}.outputs"),
                    "must be two outputs of fixed shapes".into(),
                ));
            }
        }
        let det = &self.graphs.detector;
        let (a, d) = (&det.anchors, &det.decoding);
        if !a.fixed_anchor_size || a.strides.len() < a.num_layers || a.strides.contains(&0) {
            return Err(field(
                "graphs.detector.anchors",
                "must have fixed_anchor_size and a positive stride per layer".into(),
            ));
        }
        let rows = self.anchor_count();
        let regressors = fixed(&det.graph.outputs[0]).unwrap_or_default();
        let scores = fixed(&det.graph.outputs[1]).unwrap_or_default();
        let want_reg = [1, rows as i64, d.num_coords as i64];
        let want_scores = [1, rows as i64, 1];
        if regressors != want_reg || scores != want_scores {
            return Err(field(
                "graphs.detector.outputs",
                format!(
                    "shapes {regressors:?} and {scores:?}; the anchors and decoding give \
                     {want_reg:?} and {want_scores:?}"
                ),
            ));
        }
        let needed = (d.box_coord_offset + 4)
            .max(d.keypoint_coord_offset + d.num_keypoints * d.num_values_per_keypoint);
        if d.num_values_per_keypoint != 2 || needed > d.num_coords {
            return Err(field(
                "graphs.detector.decoding",
                format!(
                    "box and keypoints need {needed} values of 2-D keypoints, num_coords is {}",
                    d.num_coords
                ),
            ));
        }
        if [d.x_scale, d.y_scale, d.w_scale, d.h_scale]
            .iter()
            .any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(field(
                "graphs.detector.decoding",
                "scales must be positive".into(),
            ));
        }
        let lm = &self.graphs.landmarks;
        if lm
            .roi_from_detection
            .rotation_keypoints
            .iter()
            .any(|&k| k >= d.num_keypoints)
            || !(lm.roi_from_detection.scale > 0.0)
        {
            return Err(field(
                "graphs.landmarks.roi_from_detection",
                "rotation_keypoints must be detector keypoints and scale positive".into(),
            ));
        }
        let points = fixed(&lm.graph.outputs[0]).unwrap_or_default();
        if points.iter().product::<i64>() != 3 * lm.landmark_count as i64 {
            return Err(field(
                "graphs.landmarks.outputs[0]",
                format!(
                    "shape {points:?} does not hold {} landmarks of (x, y, z)",
                    lm.landmark_count
                ),
            ));
        }
        Ok(())
    }

    /// Checks both graph files' presence, size and sha256 against the manifest; the error names the
    /// file (the files are small: hashed one after the other).
    pub fn verify_files(&self, dir: &Path) -> Result<(), ManifestError> {
        for key in [DETECTOR, LANDMARKS] {
            let g = self.graph(key).expect("known keys");
            let err = |problem: String| ManifestError::File {
                dir: dir.to_path_buf(),
                file: g.file.clone(),
                what: format!("graphs.{key}"),
                problem,
            };
            let path = dir.join(&g.file);
            let meta = std::fs::metadata(&path).map_err(|e| err(e.to_string()))?;
            if meta.len() != g.bytes {
                return Err(err(format!(
                    "is {} bytes, manifest says {}",
                    meta.len(),
                    g.bytes
                )));
            }
            let actual = sha256_file(&path).map_err(|e| err(e.to_string()))?;
            if !actual.eq_ignore_ascii_case(&g.sha256) {
                return Err(err(format!(
                    "sha256 is {actual}, manifest says {}",
                    g.sha256
                )));
            }
        }
        Ok(())
    }

    /// Path of a graph's file.
    pub fn graph_path(&self, dir: &Path, key: &str) -> Option<PathBuf> {
        self.graph(key).map(|g| dir.join(&g.file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/faces")
    }

    fn bundled() -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap())
            .unwrap()
    }

    fn checked(v: serde_json::Value) -> Result<FaceManifest, ManifestError> {
        let m: FaceManifest = serde_json::from_value(v).unwrap();
        m.check_fields(Path::new("faces")).map(|()| m)
    }

    #[test]
    fn the_bundled_face_manifest_loads_and_its_files_verify() {
        let m = FaceManifest::load(&dir()).unwrap();
        assert_eq!(m.anchor_count(), 896);
        assert_eq!(m.graphs.detector.graph.input_side(), 128);
        assert_eq!(m.graphs.detector.graph.value_range(), [-1.0, 1.0]);
        assert_eq!(m.graphs.landmarks.graph.input_side(), 192);
        assert_eq!(m.graphs.landmarks.landmark_count, 468);
        m.verify_files(&dir()).unwrap();
    }

    #[test]
    fn inconsistent_face_manifests_are_refused_naming_the_field() {
        let cases: [(&str, fn(&mut serde_json::Value)); 4] = [
            ("graphs.detector.outputs", |v| {
                v["graphs"]["detector"]["anchors"]["strides"] = serde_json::json!([8, 8, 16, 16])
            }),
            ("licence.commercial_use", |v| {
                v["licence"]["commercial_use"] = false.into()
            }),
            ("graphs.landmarks.inputs[0]", |v| {
                v["graphs"]["landmarks"]["inputs"][0]["shape"] = serde_json::json!([1, 3, 192, 192])
            }),
            ("graphs.landmarks.roi_from_detection", |v| {
                v["graphs"]["landmarks"]["roi_from_detection"]["rotation_keypoints"] =
                    serde_json::json!([0, 6])
            }),
        ];
        for (name, change) in cases {
            let mut v = bundled();
            change(&mut v);
            let err = checked(v).unwrap_err().to_string();
            assert!(err.contains(&format!("`{name}`")), "{name}: {err}");
        }
    }

    #[test]
    fn a_changed_face_graph_is_refused_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        for f in ["manifest.json", "detector.onnx", "landmarks.onnx"] {
            std::fs::copy(dir().join(f), tmp.path().join(f)).unwrap();
        }
        let m = FaceManifest::load(tmp.path()).unwrap();
        let path = tmp.path().join("landmarks.onnx");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = m.verify_files(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("landmarks.onnx") && err.contains("sha256"),
            "{err}"
        );
    }
}
