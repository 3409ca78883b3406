//! `OrtFaces`: the face-model directory's detector and landmark graphs as ONNX Runtime sessions,
//! opened with the worker's execution provider settings and checked against their manifest.

use ndarray::{Array3, ArrayView4};
use ort::session::Session;

use super::interface::check_interface;
use super::io::{run_err, tensor_ref};
use super::session::{environment, session_builder};
use crate::engine::{EngineError, EngineSettings, FaceEngine};
use crate::model::faces::{FaceManifest, DETECTOR, LANDMARKS};

/// The face graphs of `engine.face_model_dir`, both sessions opened at load.
pub struct OrtFaces {
    manifest: FaceManifest,
    detector: Session,
    landmarks: Session,
}

impl std::fmt::Debug for OrtFaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtFaces").finish_non_exhaustive()
    }
}

impl OrtFaces {
    /// Loads `settings.face_model_dir`: its manifest, the files' hashes (when `verify_hashes`) and a
    /// session per graph, each graph's interface checked against the manifest.
    pub fn load(settings: &EngineSettings) -> Result<Self, EngineError> {
        let dir = settings.face_model_dir.as_path();
        let manifest = FaceManifest::load(dir)?;
        if settings.verify_hashes {
            manifest.verify_files(dir)?;
        }
        let env = environment(&settings.ort_library)?;
        let open = |key: &str| -> Result<Session, EngineError> {
            let graph = manifest.graph(key).expect("known keys");
            let path = dir.join(&graph.file);
            let session = session_builder(&env, settings)?
                .commit_from_file(&path)
                .map_err(|e| {
                    EngineError::Setup(format!("face graph `{key}` ({}): {e}", path.display()))
                })?;
            check_interface(key, &session, &graph.spec())?;
            Ok(session)
        };
        Ok(Self {
            detector: open(DETECTOR)?,
            landmarks: open(LANDMARKS)?,
            manifest,
        })
    }
}

/// Runs `session` on one image input and returns its two outputs (manifest order) as flat vectors.
fn run_two(
    session: &mut Session,
    graph: &'static str,
    input_name: &str,
    outputs: [&str; 2],
    input: ArrayView4<'_, f32>,
) -> Result<[(Vec<usize>, Vec<f32>); 2], EngineError> {
    let value = tensor_ref(graph, input)?;
    let result = session
        .run(vec![(
            std::borrow::Cow::Owned(input_name.to_string()),
            value,
        )])
        .map_err(run_err(graph))?;
    let get = |name: &str| -> Result<(Vec<usize>, Vec<f32>), EngineError> {
        let view = result[name]
            .try_extract_array::<f32>()
            .map_err(run_err(graph))?;
        Ok((view.shape().to_vec(), view.iter().copied().collect()))
    };
    Ok([get(outputs[0])?, get(outputs[1])?])
}

impl FaceEngine for OrtFaces {
    fn face_manifest(&self) -> &FaceManifest {
        &self.manifest
    }

    fn detect_faces(
        &mut self,
        input: ArrayView4<'_, f32>,
    ) -> Result<(Array3<f32>, Array3<f32>), EngineError> {
        let g = &self.manifest.graphs.detector.graph;
        let names = [g.outputs[0].name.as_str(), g.outputs[1].name.as_str()];
        let [(rs, r), (cs, c)] = run_two(
            &mut self.detector,
            DETECTOR,
            &g.inputs[0].tensor.name,
            names,
            input,
        )?;
        let shape3 = |shape: Vec<usize>, data: Vec<f32>| {
            let dims: [usize; 3] =
                shape
                    .try_into()
                    .map_err(|s: Vec<usize>| EngineError::Shape {
                        graph: DETECTOR,
                        problem: format!("output of rank {}, expected 3", s.len()),
                    })?;
            Array3::from_shape_vec(dims, data).map_err(|e| EngineError::Shape {
                graph: DETECTOR,
                problem: e.to_string(),
            })
        };
        Ok((shape3(rs, r)?, shape3(cs, c)?))
    }

    fn face_landmarks(
        &mut self,
        input: ArrayView4<'_, f32>,
    ) -> Result<(Vec<f32>, f32), EngineError> {
        let g = &self.manifest.graphs.landmarks.graph;
        let names = [g.outputs[0].name.as_str(), g.outputs[1].name.as_str()];
        let [(_, points), (_, flag)] = run_two(
            &mut self.landmarks,
            LANDMARKS,
            &g.inputs[0].tensor.name,
            names,
            input,
        )?;
        let flag = flag.first().copied().ok_or(EngineError::Shape {
            graph: LANDMARKS,
            problem: "empty face flag".into(),
        })?;
        Ok((points, flag))
    }
}

#[cfg(test)]
mod tests {
    //! The bundled face graphs open, run with their declared shapes, and a manifest unlike a graph
    //! is refused naming the graph and field.

    use std::path::{Path, PathBuf};

    use ndarray::Array4;

    use super::OrtFaces;
    use crate::engine::{EngineSettings, FaceEngine};

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn settings(face_dir: &Path) -> EngineSettings {
        EngineSettings {
            face_model_dir: face_dir.to_path_buf(),
            ..EngineSettings::for_tests(&repo().join("models/tiny"))
        }
    }

    #[test]
    fn the_bundled_face_graphs_run_with_their_declared_shapes() {
        let mut faces = OrtFaces::load(&settings(&repo().join("models/faces"))).unwrap();
        let (regressors, scores) = faces
            .detect_faces(Array4::<f32>::zeros((1, 128, 128, 3)).view())
            .unwrap();
        assert_eq!(regressors.shape(), [1, 896, 16]);
        assert_eq!(scores.shape(), [1, 896, 1]);
        let (points, flag) = faces
            .face_landmarks(Array4::<f32>::zeros((1, 192, 192, 3)).view())
            .unwrap();
        assert_eq!(points.len(), 468 * 3);
        assert!(flag.is_finite());
    }

    #[test]
    fn a_face_manifest_unlike_its_graph_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for f in ["manifest.json", "detector.onnx", "landmarks.onnx"] {
            std::fs::copy(repo().join("models/faces").join(f), tmp.path().join(f)).unwrap();
        }
        let path = tmp.path().join("manifest.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["graphs"]["landmarks"]["outputs"][1]["name"] = "presence".into();
        std::fs::write(&path, v.to_string()).unwrap();
        let err = OrtFaces::load(&settings(tmp.path()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("landmarks") && err.contains("presence"),
            "{err}"
        );
    }
}
