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

/// When the tuning graph (`adapter_step.onnx`) has an ONNX Runtime session. The tuning graph carries
/// its own copy of the frozen UNet and text encoder (4.8 GB of weights at full size), so a worker
/// that never tunes should never open it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TuningSession {
    /// Opened by the first tuning run and kept for the next ones (the default): an edit-only
    /// worker never pays for it; the first tuning job pays the session's creation once.
    #[default]
    OnDemand,
    /// Opened at load with the edit graphs, its interface checked before the worker is ready: for
    /// tuning workers where the first tuning job must not wait for the session.
    Eager,
    /// Opened by each tuning run and closed when it ends, giving its memory back between runs: for
    /// workers that tune rarely and must keep their edit-time memory small.
    ReleaseAfterUse,
}

/// How cuDNN picks a convolution algorithm (CUDA provider only; ONNX Runtime's
/// `cudnn_conv_algo_search`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvAlgoSearch {
    /// Benchmarks every algorithm at a shape's first run (ONNX Runtime's default): the fastest
    /// kernels, paid for by the first job unless the worker warms up.
    #[default]
    Exhaustive,
    /// cuDNN's heuristics: no benchmarking, sometimes a slower algorithm.
    Heuristic,
    /// Always the implicit-precomputed GEMM algorithm: least workspace memory.
    Default,
}

/// How the CUDA provider's memory arena grows (ONNX Runtime's `arena_extend_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArenaExtend {
    /// Each extension doubles (ONNX Runtime's default): few allocations, more memory held.
    #[default]
    NextPowerOfTwo,
    /// Each extension is what was asked for: the least memory held.
    SameAsRequested,
}

/// ONNX Runtime and the model directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// Model directory holding `manifest.json` and the graphs (relative paths are relative to the
    /// working directory).
    pub model_dir: PathBuf,
    /// Face-model directory holding the face detector and landmark graphs with their
    /// `manifest.json` (models/faces/README.md), shared by every model; relative paths are relative
    /// to the working directory, as `model_dir`.
    pub face_model_dir: PathBuf,
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
    /// When the tuning graph's session exists: `on_demand` (opened by the first tuning run, then
    /// kept), `eager` (opened at load) or `release_after_use` (opened by each tuning run, closed
    /// after it). See [`TuningSession`] and docs/memory.md.
    pub tuning_session: TuningSession,
    /// ONNX Runtime's CPU memory arena (CPU provider only). On, each session keeps the peak of its
    /// runs' intermediate tensors for the next run, and the sessions' peaks add up (UNet, VAE, text
    /// encoder, tuning graph); off, a run's intermediate memory goes back to the system when the run
    /// ends, so the worker's peak is its largest single run. See docs/memory.md.
    pub cpu_arena: bool,
    /// CUDA provider: how cuDNN picks convolution algorithms (`exhaustive`, `heuristic`, `default`).
    pub cuda_conv_algo_search: ConvAlgoSearch,
    /// CUDA provider: how its memory arena grows (`next_power_of_two`, `same_as_requested`).
    pub cuda_arena_extend: ArenaExtend,
    /// CUDA provider: the most device memory its arena may hold, in MiB (0 = no limit).
    pub cuda_memory_limit_mib: u64,
    /// CUDA provider: convolutions in NHWC layout where it has NHWC kernels (fp16 tensor cores).
    pub cuda_prefer_nhwc: bool,
    /// CUDA provider: capture the UNet's step as a CUDA graph at its first run and replay it (the
    /// shapes of one job are fixed). Needs every UNet node on the GPU; the denoiser then keeps its
    /// inputs and output at fixed device addresses. Off unless measured faster (scripts/gpu/check.sh).
    pub cuda_graph: bool,
}

#[cfg(test)]
impl EngineSettings {
    /// Settings for tests on the bundled models: CPU, one thread per session (parallel tests share
    /// the cores), hashes verified, ONNX Runtime where `scripts/setup-ort.sh` lays it out.
    pub(crate) fn for_tests(model_dir: &std::path::Path) -> Self {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        EngineSettings {
            model_dir: model_dir.to_path_buf(),
            face_model_dir: repo.join("models/faces"),
            // The embedded default (config/default.toml).
            ort_library: repo.join(".ort/onnxruntime/capi/libonnxruntime.so.1.31.1"),
            execution_provider: ExecutionProvider::Cpu,
            cuda_device: 0,
            intra_threads: 1,
            inter_threads: 0,
            verify_hashes: true,
            tuning_session: TuningSession::OnDemand,
            cpu_arena: true,
            cuda_conv_algo_search: ConvAlgoSearch::Exhaustive,
            cuda_arena_extend: ArenaExtend::NextPowerOfTwo,
            cuda_memory_limit_mib: 0,
            cuda_prefer_nhwc: false,
            cuda_graph: false,
        }
    }
}
