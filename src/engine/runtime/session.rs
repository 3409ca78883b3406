//! Opening sessions: the process-wide ONNX Runtime environment, the session builder's settings and
//! the execution providers (CPU, CUDA).

use std::path::Path;
use std::sync::OnceLock;

use ort::session::{builder::GraphOptimizationLevel, Session};

use crate::engine::EngineError;
use crate::engine::{EngineSettings, ExecutionProvider};

/// The process-wide ONNX Runtime environment. The shared library is loaded once; the first
/// successful load wins for the life of the process.
static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();

pub(super) fn environment(library: &Path) -> Result<ort::environment::Environment, EngineError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env.clone());
    }
    if !library.is_file() {
        return Err(EngineError::Setup(format!(
            "ONNX Runtime library not found at {} (set engine.ort_library; \
             scripts/setup-ort.sh installs it)",
            library.display()
        )));
    }
    let env = ort::init_from(library)
        .map_err(|e| EngineError::Setup(format!("loading {}: {e}", library.display())))?
        .with_name("pva-worker")
        .build()
        .map_err(|e| EngineError::Setup(e.to_string()))?;
    Ok(ENVIRONMENT.get_or_init(|| env).clone())
}

pub(super) fn session_builder(
    env: &ort::environment::Environment,
    settings: &EngineSettings,
) -> Result<ort::session::builder::SessionBuilder, EngineError> {
    builder(env, settings, false)
}

/// The session builder of the UNet: as [`session_builder`], with `engine.cuda_graph` applied (the
/// one graph whose shapes stay fixed across the runs of a job).
pub(super) fn unet_session_builder(
    env: &ort::environment::Environment,
    settings: &EngineSettings,
) -> Result<ort::session::builder::SessionBuilder, EngineError> {
    builder(env, settings, settings.cuda_graph)
}

fn builder(
    env: &ort::environment::Environment,
    settings: &EngineSettings,
    cuda_graph: bool,
) -> Result<ort::session::builder::SessionBuilder, EngineError> {
    let setup =
        |e: ort::Error<ort::session::builder::SessionBuilder>| EngineError::Setup(e.to_string());
    let mut builder = Session::builder(env)
        .map_err(|e| EngineError::Setup(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(setup)?;
    if settings.intra_threads > 0 {
        builder = builder
            .with_intra_threads(settings.intra_threads)
            .map_err(setup)?;
    }
    if settings.inter_threads > 0 {
        builder = builder
            .with_inter_threads(settings.inter_threads)
            .map_err(setup)?;
    }
    match settings.execution_provider {
        ExecutionProvider::Cpu => builder
            .with_execution_providers([ort::ep::CPU::default()
                .with_arena_allocator(settings.cpu_arena)
                .build()])
            .map_err(setup),
        ExecutionProvider::Cuda => cuda(builder, settings, cuda_graph),
    }
}

#[cfg(feature = "cuda")]
fn cuda(
    builder: ort::session::builder::SessionBuilder,
    settings: &EngineSettings,
    graph: bool,
) -> Result<ort::session::builder::SessionBuilder, EngineError> {
    use crate::engine::{ArenaExtend, ConvAlgoSearch};
    use ort::ep::cuda::ConvAlgorithmSearch;
    use ort::ep::ArenaExtendStrategy;

    let mut ep = ort::ep::CUDA::default()
        .with_device_id(settings.cuda_device)
        .with_conv_algorithm_search(match settings.cuda_conv_algo_search {
            ConvAlgoSearch::Exhaustive => ConvAlgorithmSearch::Exhaustive,
            ConvAlgoSearch::Heuristic => ConvAlgorithmSearch::Heuristic,
            ConvAlgoSearch::Default => ConvAlgorithmSearch::Default,
        })
        .with_arena_extend_strategy(match settings.cuda_arena_extend {
            ArenaExtend::NextPowerOfTwo => ArenaExtendStrategy::NextPowerOfTwo,
            ArenaExtend::SameAsRequested => ArenaExtendStrategy::SameAsRequested,
        })
        .with_prefer_nhwc(settings.cuda_prefer_nhwc)
        .with_cuda_graph(graph);
    if settings.cuda_memory_limit_mib > 0 {
        ep = ep.with_memory_limit((settings.cuda_memory_limit_mib as usize) << 20);
    }
    // NOTE: error_on_failure: a GPU worker that cannot register CUDA must refuse to start rather
    // than quietly run 100x slower on CPU.
    builder
        .with_execution_providers([ep.build().error_on_failure()])
        .map_err(|e| EngineError::Setup(format!("CUDA execution provider: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda(
    _builder: ort::session::builder::SessionBuilder,
    _settings: &EngineSettings,
    _graph: bool,
) -> Result<ort::session::builder::SessionBuilder, EngineError> {
    Err(EngineError::Setup(
        "engine.execution_provider = \"cuda\" but this binary was built without the `cuda` feature"
            .into(),
    ))
}
