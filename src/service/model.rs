//! Loading the model a worker runs: the engine's graphs, the model's untuned adapter and the pipeline
//! around them, and the face graphs, from the settings, with a [`LoadError`] that names the part that failed.

use std::path::{Path, PathBuf};

use crate::config::Settings;
use crate::engine::{EngineError, Manifest, OrtEngine, OrtFaces, Workload};
use crate::pipeline::inpaint::Pipeline;

/// Why the model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The model directory or its graphs were refused.
    #[error("loading the model from `{}` (engine.model_dir = `{}`; a relative path is relative to the working directory; set engine.model_dir in the settings file or PVA__ENGINE__MODEL_DIR): {source}", resolved.display(), dir.display())]
    Engine {
        /// The model directory as set.
        dir: PathBuf,
        /// The directory it names: joined to the working directory when relative.
        resolved: PathBuf,
        /// Why.
        source: EngineError,
    },
    /// The face-model directory or its graphs were refused.
    #[error("loading the face graphs from `{}` (engine.face_model_dir = `{}`; a relative path is relative to the working directory; set engine.face_model_dir in the settings file or PVA__ENGINE__FACE_MODEL_DIR): {source}", resolved.display(), dir.display())]
    Faces {
        /// The face-model directory as set.
        dir: PathBuf,
        /// The directory it names: joined to the working directory when relative.
        resolved: PathBuf,
        /// Why.
        source: EngineError,
    },
    /// The model's adapter file is missing or does not match the manifest's layout.
    #[error("the model's adapter `{file}`: {problem}")]
    Adapter {
        /// The adapter file.
        file: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The warm-up edit failed: the model loaded but cannot run an edit.
    #[error("the warm-up edit failed (the model loaded but cannot run an edit): {0}")]
    Warmup(String),
    /// An inference thread could not start or died while loading.
    #[error("inference threads: {0}")]
    Thread(String),
}

/// The directory a setting names: a relative path joined to the working directory (as the file
/// system reads it), for error messages.
fn resolved(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Loads the model's untuned adapter (visual + token) from the model directory.
pub fn load_base_adapter(model_dir: &Path, manifest: &Manifest) -> Result<Vec<f32>, LoadError> {
    let spec = &manifest.adapter;
    let file = model_dir.join(&spec.file);
    let bad = |problem: String| LoadError::Adapter {
        file: file.clone(),
        problem,
    };
    let bytes = std::fs::read(&file).map_err(|e| bad(e.to_string()))?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let view = tensors
        .tensor(&spec.tensor)
        .map_err(|e| bad(format!("tensor `{}`: {e}", spec.tensor)))?;
    if view.dtype() != safetensors::Dtype::F32 {
        return Err(bad(format!(
            "tensor `{}` is {:?}, expected F32",
            spec.tensor,
            view.dtype()
        )));
    }
    let values = crate::model::adapter::f32_values(&view);
    if values.len() != spec.visual_length + spec.token_length {
        return Err(bad(format!(
            "has {} values, the manifest's layout {}",
            values.len(),
            spec.visual_length + spec.token_length
        )));
    }
    Ok(values)
}

/// Loads the engine and the pipeline from the settings, for edits (and the tuning runs jobs ask for).
pub fn load_pipeline(settings: &Settings) -> Result<Pipeline<OrtEngine>, LoadError> {
    load_pipeline_for(settings, Workload::Edit)
}

/// Loads the engine and the pipeline for one workload: [`Workload::Tune`] (`pva-worker tune`) opens
/// only the graphs a tuning run uses, leaving the UNet, the text encoder and the VAE decoder closed.
pub fn load_pipeline_for(
    settings: &Settings,
    workload: Workload,
) -> Result<Pipeline<OrtEngine>, LoadError> {
    let dir = &settings.engine.model_dir;
    let engine =
        OrtEngine::load_for(&settings.engine, workload).map_err(|source| LoadError::Engine {
            dir: dir.clone(),
            resolved: resolved(dir),
            source,
        })?;
    let adapter = load_base_adapter(dir, crate::engine::Engine::manifest(&engine))?;
    Ok(Pipeline::new(engine, adapter, (&settings.pipeline).into()))
}

/// Loads the face detector and landmark graphs of `engine.face_model_dir`.
pub fn load_faces(settings: &Settings) -> Result<OrtFaces, LoadError> {
    OrtFaces::load(&settings.engine).map_err(|source| LoadError::Faces {
        dir: settings.engine.face_model_dir.clone(),
        resolved: resolved(&settings.engine.face_model_dir),
        source,
    })
}
