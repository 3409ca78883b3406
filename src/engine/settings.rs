//! `[engine]`: ONNX Runtime and the model directory (a section of `crate::config::Settings`).

use std::path::PathBuf;

use serde::Deserialize;

/// Which execution provider runs the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    /// ONNX Runtime's CPU provider.
    Cpu,
    /// CUDA, registered with error-on-failure: a GPU worker never falls back to CPU silently.
    Cuda,
}

/// ONNX Runtime and the model directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// Model directory holding `manifest.json` and the graphs (relative paths are relative to the
    /// working directory).
    pub model_dir: PathBuf,
    /// Path of `libonnxruntime.so` (1.31), as laid out by `scripts/setup-ort.sh`.
    pub ort_library: PathBuf,
    /// `cpu` or `cuda`.
    pub execution_provider: ExecutionProvider,
    /// CUDA device ordinal when `execution_provider = "cuda"`.
    pub cuda_device: i32,
    /// Threads inside one operator (0 = ONNX Runtime's default: one per core).
    pub intra_threads: usize,
    /// Threads across operators (0 = ONNX Runtime's default).
    pub inter_threads: usize,
    /// Check every file's sha256 against the manifest at load (off only for huge graphs on a trusted volume).
    pub verify_hashes: bool,
}
