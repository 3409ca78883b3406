//! [`OrtEngine`]: the graphs of a model directory as ONNX Runtime sessions. The only file that uses
//! `ort` types.

use std::path::Path;
use std::sync::OnceLock;

use ndarray::{
    Array, Array2, Array3, Array4, ArrayView1, ArrayView2, ArrayView3, ArrayView4, Dimension,
};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{builder::GraphOptimizationLevel, IoBinding, Session};
use ort::value::{Tensor, TensorElementType, TensorRef};

use super::manifest::{DType, Dim, GraphSpec, Manifest, TUNING_GRAPH};
use super::{DenoiseInputs, Denoiser, Engine, EngineError, Tuner, TuningBatch, TuningHyper};
use crate::config::{EngineSettings, ExecutionProvider};

/// The process-wide ONNX Runtime environment. The shared library is loaded once; the first
/// successful load wins for the life of the process.
static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();

fn environment(library: &Path) -> Result<ort::environment::Environment, EngineError> {
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

/// One session per graph, created once at start and reused by every job.
pub struct OrtEngine {
    manifest: Manifest,
    text_encoder: Session,
    face_embedder: Session,
    id_former: Session,
    unet: Session,
    vae_encoder: Session,
    vae_decoder: Session,
    /// `adapter_step.onnx`, when the model directory has it.
    adapter_step: Option<Session>,
    /// Where tuning state (adapter, AdamW moments) lives between steps.
    state_device: StateDevice,
}

/// The memory the tuning state is allocated in: the execution provider's own, so that a step's
/// outputs become the next step's inputs without leaving the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StateDevice {
    /// Host memory (the CPU provider).
    Cpu,
    /// CUDA device memory of this ordinal.
    Cuda(i32),
}

impl std::fmt::Debug for OrtEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtEngine")
            .field("model", &self.manifest.name)
            .field("version", &self.manifest.version)
            .finish_non_exhaustive()
    }
}

fn run_err(graph: &'static str) -> impl Fn(ort::Error) -> EngineError {
    move |e| EngineError::Run {
        graph,
        message: e.to_string(),
    }
}

impl OrtEngine {
    /// Loads the model directory: manifest, file hashes (when `verify_hashes`), one session per graph,
    /// and a check of every graph's interface against the manifest.
    pub fn load(settings: &EngineSettings) -> Result<Self, EngineError> {
        let dir = settings.model_dir.as_path();
        let manifest = Manifest::load(dir)?;
        if settings.verify_hashes {
            manifest.verify_files(dir)?;
        }
        let env = environment(&settings.ort_library)?;
        let open = |key: &'static str| -> Result<Session, EngineError> {
            let path = manifest
                .graph_path(dir, key)
                .expect("GRAPH_KEYS are checked by Manifest::load");
            let session = session_builder(&env, settings)?
                .commit_from_file(&path)
                .map_err(|e| {
                    EngineError::Setup(format!("graph `{key}` ({}): {e}", path.display()))
                })?;
            check_interface(key, &session, &manifest.graphs[key])?;
            Ok(session)
        };
        Ok(Self {
            text_encoder: open("text_encoder")?,
            face_embedder: open("face_embedder")?,
            id_former: open("id_former")?,
            unet: open("unet")?,
            vae_encoder: open("vae_encoder")?,
            vae_decoder: open("vae_decoder")?,
            adapter_step: match manifest.graphs.contains_key(TUNING_GRAPH) {
                true => {
                    let session = open(TUNING_GRAPH)?;
                    check_tuning_spec(&manifest)?;
                    Some(session)
                }
                false => None,
            },
            state_device: match settings.execution_provider {
                ExecutionProvider::Cpu => StateDevice::Cpu,
                ExecutionProvider::Cuda => StateDevice::Cuda(settings.cuda_device),
            },
            manifest,
        })
    }

    fn run_one<D: Dimension>(
        session: &mut Session,
        graph: &'static str,
        inputs: Vec<(&'static str, ort::session::SessionInputValue<'_>)>,
        output: &str,
    ) -> Result<Array<f32, D>, EngineError> {
        let inputs: Vec<(std::borrow::Cow<'_, str>, _)> =
            inputs.into_iter().map(|(k, v)| (k.into(), v)).collect();
        let outputs = session.run(inputs).map_err(run_err(graph))?;
        let view = outputs[output]
            .try_extract_array::<f32>()
            .map_err(run_err(graph))?;
        view.into_dimensionality::<D>()
            .map(|v| v.to_owned())
            .map_err(|e| EngineError::Shape {
                graph,
                problem: format!("output `{output}`: {e}"),
            })
    }
}

fn session_builder(
    env: &ort::environment::Environment,
    settings: &EngineSettings,
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
        ExecutionProvider::Cpu => Ok(builder),
        ExecutionProvider::Cuda => cuda(builder, settings.cuda_device),
    }
}

#[cfg(feature = "cuda")]
fn cuda(
    builder: ort::session::builder::SessionBuilder,
    device: i32,
) -> Result<ort::session::builder::SessionBuilder, EngineError> {
    // NOTE: error_on_failure: a GPU worker that cannot register CUDA must refuse to start rather
    // than quietly run 100x slower on CPU.
    builder
        .with_execution_providers([ort::ep::CUDA::default()
            .with_device_id(device)
            .build()
            .error_on_failure()])
        .map_err(|e| EngineError::Setup(format!("CUDA execution provider: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda(
    _builder: ort::session::builder::SessionBuilder,
    _device: i32,
) -> Result<ort::session::builder::SessionBuilder, EngineError> {
    Err(EngineError::Setup(
        "engine.execution_provider = \"cuda\" but this binary was built without the `cuda` feature"
            .into(),
    ))
}

/// The tuning graph's declared interface against the rest of the manifest: the state vectors are
/// the adapter layout's length, the batch axis is `tuning.batch_size`, the batch tensors have the
/// latent and identity-token geometry. (`check_interface` has already tied the graph to the
/// declaration.)
fn check_tuning_spec(manifest: &Manifest) -> Result<(), EngineError> {
    let spec = &manifest.graphs[TUNING_GRAPH];
    let n = (manifest.adapter.visual_length + manifest.adapter.token_length) as i64;
    let b = manifest.tuning.batch_size as i64;
    let (c, h) = (manifest.latent.channels as i64, manifest.latent.size as i64);
    let ids = manifest.tokenizer.max_length as i64;
    let tokens = manifest.num_id_tokens as i64;
    let d = manifest.hidden_size as i64;
    let expected: [(&str, Vec<i64>); 18] = [
        ("params", vec![n]),
        ("adam_m", vec![n]),
        ("adam_v", vec![n]),
        ("step", vec![]),
        ("lr_visual", vec![]),
        ("lr_token", vec![]),
        ("weight_decay", vec![]),
        ("input_ids", vec![b, ids]),
        ("latents", vec![b, c, h, h]),
        ("noise", vec![b, c, h, h]),
        ("timesteps", vec![b]),
        ("mask", vec![b, 1, h, h]),
        ("masked_latents", vec![b, c, h, h]),
        ("id_tokens", vec![b, tokens, d]),
        ("new_params", vec![n]),
        ("new_adam_m", vec![n]),
        ("new_adam_v", vec![n]),
        ("loss", vec![]),
    ];
    for (name, shape) in expected {
        let decl = spec
            .inputs
            .iter()
            .chain(&spec.outputs)
            .find(|t| t.name == name)
            .ok_or_else(|| EngineError::Interface {
                graph: TUNING_GRAPH.into(),
                field: format!("`{name}`"),
                problem: "is missing".into(),
            })?;
        let fixed: Vec<Dim> = shape.iter().map(|&x| Dim::Fixed(x)).collect();
        if decl.shape != fixed {
            return Err(EngineError::Interface {
                graph: TUNING_GRAPH.into(),
                field: format!("`{name}`"),
                problem: format!(
                    "declared shape {:?}, the manifest's adapter/tuning/latent sizes give {shape:?}",
                    decl.shape
                ),
            });
        }
    }
    Ok(())
}

fn dtype_name(ty: Option<TensorElementType>) -> String {
    match ty {
        Some(t) => format!("{t:?}").to_lowercase(),
        None => "not a tensor".into(),
    }
}

/// Compares a session's inputs and outputs with the manifest: names in order, dtypes, ranks and fixed
/// dimensions.
fn check_interface(key: &str, session: &Session, spec: &GraphSpec) -> Result<(), EngineError> {
    let sides = [
        ("input", session.inputs(), &spec.inputs),
        ("output", session.outputs(), &spec.outputs),
    ];
    for (side, outlets, declared) in sides {
        let err = |field: String, problem: String| EngineError::Interface {
            graph: key.to_string(),
            field,
            problem,
        };
        let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
        let want: Vec<&str> = declared.iter().map(|t| t.name.as_str()).collect();
        if names != want {
            return Err(err(
                format!("{side}s"),
                format!("graph has {names:?}, manifest declares {want:?}"),
            ));
        }
        for (outlet, decl) in outlets.iter().zip(declared) {
            let field = format!("{side} `{}`", decl.name);
            let ty = outlet.dtype().tensor_type();
            let expected = match decl.dtype {
                DType::Float32 => TensorElementType::Float32,
                DType::Int64 => TensorElementType::Int64,
            };
            if ty != Some(expected) {
                return Err(err(
                    field,
                    format!(
                        "dtype is {}, manifest says {:?}",
                        dtype_name(ty),
                        decl.dtype
                    ),
                ));
            }
            let shape = outlet
                .dtype()
                .tensor_shape()
                .map(|s| s.to_vec())
                .unwrap_or_default();
            if shape.len() != decl.shape.len() {
                return Err(err(
                    field,
                    format!(
                        "rank is {}, manifest says {}",
                        shape.len(),
                        decl.shape.len()
                    ),
                ));
            }
            for (axis, (&got, want)) in shape.iter().zip(&decl.shape).enumerate() {
                if let Dim::Fixed(n) = want {
                    if got != *n {
                        return Err(err(
                            field.clone(),
                            format!("dimension {axis} is {got}, manifest says {n}"),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn tensor_ref<'a, T, D>(
    graph: &'static str,
    view: ndarray::ArrayView<'a, T, D>,
) -> Result<ort::session::SessionInputValue<'a>, EngineError>
where
    T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static,
    D: Dimension + 'static,
{
    if !view.is_standard_layout() {
        return Err(EngineError::Shape {
            graph,
            problem: "input is not contiguous".into(),
        });
    }
    Ok(TensorRef::from_array_view(view)
        .map_err(run_err(graph))?
        .into())
}

impl Engine for OrtEngine {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn encode_text(
        &mut self,
        input_ids: ArrayView2<'_, i64>,
        new1_embedding: ArrayView1<'_, f32>,
    ) -> Result<Array3<f32>, EngineError> {
        const G: &str = "text_encoder";
        let inputs = vec![
            ("input_ids", tensor_ref(G, input_ids)?),
            ("new1_embedding", tensor_ref(G, new1_embedding)?),
        ];
        Self::run_one(&mut self.text_encoder, G, inputs, "hidden_states")
    }

    fn embed_faces(&mut self, faces: ArrayView4<'_, f32>) -> Result<Array2<f32>, EngineError> {
        const G: &str = "face_embedder";
        let inputs = vec![("faces", tensor_ref(G, faces)?)];
        Self::run_one(&mut self.face_embedder, G, inputs, "embeddings")
    }

    fn id_tokens(&mut self, embeddings: ArrayView3<'_, f32>) -> Result<Array3<f32>, EngineError> {
        const G: &str = "id_former";
        let inputs = vec![("embeddings", tensor_ref(G, embeddings)?)];
        Self::run_one(&mut self.id_former, G, inputs, "id_tokens")
    }

    fn vae_encode(&mut self, images: ArrayView4<'_, f32>) -> Result<Array4<f32>, EngineError> {
        const G: &str = "vae_encoder";
        let inputs = vec![("image", tensor_ref(G, images)?)];
        Self::run_one(&mut self.vae_encoder, G, inputs, "latent_mean")
    }

    fn vae_decode(&mut self, latents: ArrayView4<'_, f32>) -> Result<Array4<f32>, EngineError> {
        const G: &str = "vae_decoder";
        let inputs = vec![("latent", tensor_ref(G, latents)?)];
        Self::run_one(&mut self.vae_decoder, G, inputs, "image")
    }

    fn denoiser<'e>(
        &'e mut self,
        inputs: DenoiseInputs<'_>,
    ) -> Result<Box<dyn Denoiser + 'e>, EngineError> {
        Ok(Box::new(OrtDenoiser::new(&mut self.unet, inputs)?))
    }

    fn can_tune(&self) -> bool {
        self.adapter_step.is_some()
    }

    fn tuner<'e>(
        &'e mut self,
        params: &[f32],
        hyper: TuningHyper,
    ) -> Result<Box<dyn Tuner + 'e>, EngineError> {
        let Some(session) = self.adapter_step.as_mut() else {
            return Err(EngineError::MissingGraph {
                graph: TUNING_GRAPH,
                model: self.manifest.name.clone(),
            });
        };
        Ok(Box::new(OrtTuner::new(
            session,
            &self.manifest,
            self.state_device,
            params,
            hyper,
        )?))
    }
}

/// The UNet of one job. The fixed inputs (hidden states, identity tokens, switch, adapter) are bound
/// once; each step writes the latents into the persistent `sample` tensor in place and runs the
/// binding, so no per-step allocation happens.
struct OrtDenoiser<'e> {
    session: &'e mut Session,
    binding: IoBinding,
    sample: Tensor<f32>,
    timestep: Tensor<f32>,
    rows: Vec<usize>,
    latent_len: usize,
}

const UNET: &str = "unet";

impl<'e> OrtDenoiser<'e> {
    fn new(session: &'e mut Session, inputs: DenoiseInputs<'_>) -> Result<Self, EngineError> {
        let rows = inputs.row_latent.len();
        let (_, c, h, w) = inputs.masked_latents.dim();
        let shape_err = |problem: String| EngineError::Shape {
            graph: UNET,
            problem,
        };
        if inputs.hidden_states.dim().0 != rows
            || inputs.id_tokens.dim().0 != rows
            || inputs.id_switch.len() != rows
            || inputs.mask.dim() != (rows, 1, h, w)
            || inputs.masked_latents.dim().0 != rows
        {
            return Err(shape_err(format!(
                "{rows} rows, but hidden {:?}, id tokens {:?}, switch {}, mask {:?}, masked {:?}",
                inputs.hidden_states.dim(),
                inputs.id_tokens.dim(),
                inputs.id_switch.len(),
                inputs.mask.dim(),
                inputs.masked_latents.dim()
            )));
        }
        let sample_channels = 2 * c + 1;
        // Channels c.. of every row (mask, masked latents) never change: write them once.
        let mut sample_data = vec![0f32; rows * sample_channels * h * w];
        let plane = h * w;
        for r in 0..rows {
            let row =
                &mut sample_data[r * sample_channels * plane..(r + 1) * sample_channels * plane];
            let mask = inputs.mask.slice(ndarray::s![r, .., .., ..]);
            for (dst, src) in row[c * plane..(c + 1) * plane].iter_mut().zip(mask.iter()) {
                *dst = *src;
            }
            let masked = inputs.masked_latents.slice(ndarray::s![r, .., .., ..]);
            for (dst, src) in row[(c + 1) * plane..].iter_mut().zip(masked.iter()) {
                *dst = *src;
            }
        }
        let sample = Tensor::from_array(([rows, sample_channels, h, w], sample_data))
            .map_err(run_err(UNET))?;
        let timestep = Tensor::from_array(([rows], vec![0f32; rows])).map_err(run_err(UNET))?;

        let mut binding = session.create_binding().map_err(run_err(UNET))?;
        let hidden = Tensor::from_array(inputs.hidden_states.as_standard_layout().into_owned())
            .map_err(run_err(UNET))?;
        let id_tokens = Tensor::from_array(inputs.id_tokens.as_standard_layout().into_owned())
            .map_err(run_err(UNET))?;
        let switch =
            Tensor::from_array(([rows], inputs.id_switch.to_vec())).map_err(run_err(UNET))?;
        let adapter = Tensor::from_array(([inputs.adapter.len()], inputs.adapter.to_vec()))
            .map_err(run_err(UNET))?;
        binding
            .bind_input("encoder_hidden_states", &hidden)
            .map_err(run_err(UNET))?;
        binding
            .bind_input("id_tokens", &id_tokens)
            .map_err(run_err(UNET))?;
        binding
            .bind_input("id_switch", &switch)
            .map_err(run_err(UNET))?;
        binding
            .bind_input("adapter", &adapter)
            .map_err(run_err(UNET))?;
        // NOTE: ort only binds outputs it allocated itself (Tensor::new), not Rust-backed arrays.
        let out = Tensor::<f32>::new(&ort::memory::Allocator::default(), [rows, c, h, w])
            .map_err(run_err(UNET))?;
        binding
            .bind_output("noise_pred", out)
            .map_err(run_err(UNET))?;
        Ok(Self {
            session,
            binding,
            sample,
            timestep,
            rows: inputs.row_latent.to_vec(),
            latent_len: c * plane,
        })
    }
}

impl Denoiser for OrtDenoiser<'_> {
    fn predict(
        &mut self,
        latents: &[f32],
        timestep: f32,
        noise_pred: &mut [f32],
    ) -> Result<(), EngineError> {
        let n = self.latent_len;
        let rows = self.rows.len();
        if noise_pred.len() != rows * n || self.rows.iter().any(|&i| (i + 1) * n > latents.len()) {
            return Err(EngineError::Shape {
                graph: UNET,
                problem: format!(
                    "latents {} / noise_pred {} values for {rows} rows of {n}",
                    latents.len(),
                    noise_pred.len()
                ),
            });
        }
        {
            let (shape, data) = self.sample.extract_tensor_mut();
            let row_len = (shape[1] * shape[2] * shape[3]) as usize;
            for (r, &i) in self.rows.iter().enumerate() {
                data[r * row_len..r * row_len + n].copy_from_slice(&latents[i * n..(i + 1) * n]);
            }
            let (_, t) = self.timestep.extract_tensor_mut();
            t.fill(timestep);
        }
        // NOTE: the sample and timestep are re-bound each step: on the CPU provider this is a pointer
        // swap; on CUDA it is the one host->device copy a host-side scheduler needs.
        self.binding
            .bind_input("sample", &self.sample)
            .map_err(run_err(UNET))?;
        self.binding
            .bind_input("timestep", &self.timestep)
            .map_err(run_err(UNET))?;
        let outputs = self
            .session
            .run_binding(&self.binding)
            .map_err(run_err(UNET))?;
        let (_, pred) = outputs["noise_pred"]
            .try_extract_tensor::<f32>()
            .map_err(run_err(UNET))?;
        noise_pred.copy_from_slice(pred);
        Ok(())
    }
}

const STEP: &str = TUNING_GRAPH;

/// The adapter and its AdamW moments: one set of `adapter_step`'s state tensors.
struct TuningState {
    params: Tensor<f32>,
    adam_m: Tensor<f32>,
    adam_v: Tensor<f32>,
}

impl TuningState {
    /// Uninitialised state tensors of `len` values in `allocator`'s memory.
    fn allocate(allocator: &Allocator, len: usize) -> Result<Self, EngineError> {
        let new = || Tensor::<f32>::new(allocator, [len]).map_err(run_err(STEP));
        Ok(Self {
            params: new()?,
            adam_m: new()?,
            adam_v: new()?,
        })
    }

    fn bind_inputs(&self, binding: &mut IoBinding) -> Result<(), EngineError> {
        binding
            .bind_input("params", &self.params)
            .map_err(run_err(STEP))?;
        binding
            .bind_input("adam_m", &self.adam_m)
            .map_err(run_err(STEP))?;
        binding
            .bind_input("adam_v", &self.adam_v)
            .map_err(run_err(STEP))
    }

    fn bind_outputs(&mut self, binding: &mut IoBinding) -> Result<(), EngineError> {
        binding
            .bind_output("new_params", &mut self.params)
            .map_err(run_err(STEP))?;
        binding
            .bind_output("new_adam_m", &mut self.adam_m)
            .map_err(run_err(STEP))?;
        binding
            .bind_output("new_adam_v", &mut self.adam_v)
            .map_err(run_err(STEP))
    }
}

/// One tuning run of `adapter_step.onnx` through an IO binding.
///
/// The state ping-pongs between two sets of tensors allocated once in the execution provider's
/// memory: step k reads set `k % 2` and writes set `(k + 1) % 2`, so no state crosses to the host
/// between steps (on CUDA it never leaves the GPU; on the CPU nothing is copied at all). The first
/// step reads the caller's params and zero moments from host tensors (one upload). The batch
/// tensors are host tensors rewritten in place each step (on CUDA: one small upload per step), and
/// the scalar loss is bound to host memory.
struct OrtTuner<'e> {
    session: &'e mut Session,
    binding: IoBinding,
    /// The state the first step reads (dropped after it).
    initial: Option<TuningState>,
    /// The two device-resident state sets.
    sets: [TuningState; 2],
    step: Tensor<f32>,
    input_ids: Tensor<i64>,
    latents: Tensor<f32>,
    noise: Tensor<f32>,
    timesteps: Tensor<i64>,
    mask: Tensor<f32>,
    masked_latents: Tensor<f32>,
    id_tokens: Tensor<f32>,
    done: usize,
}

/// A host tensor of `shape` filled with zeros (rewritten before every run).
fn host_zeros<T>(shape: &[usize]) -> Result<Tensor<T>, EngineError>
where
    T: ort::value::PrimitiveTensorElementType + Clone + Default + std::fmt::Debug + 'static,
{
    let len = shape.iter().product();
    Tensor::from_array((shape.to_vec(), vec![T::default(); len])).map_err(run_err(STEP))
}

/// Copies `view` into the host tensor `dst` after checking that the shapes agree.
fn write_host<T, D>(
    name: &str,
    dst: &mut Tensor<T>,
    view: ndarray::ArrayView<'_, T, D>,
) -> Result<(), EngineError>
where
    T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static,
    D: Dimension,
{
    let (shape, data) = dst.extract_tensor_mut();
    let want: Vec<usize> = shape.iter().map(|&x| x as usize).collect();
    if view.shape() != want.as_slice() {
        return Err(EngineError::Shape {
            graph: STEP,
            problem: format!("`{name}` is {:?}, the graph takes {want:?}", view.shape()),
        });
    }
    for (d, s) in data.iter_mut().zip(view.iter()) {
        *d = s.clone();
    }
    Ok(())
}

impl<'e> OrtTuner<'e> {
    fn new(
        session: &'e mut Session,
        manifest: &Manifest,
        device: StateDevice,
        params: &[f32],
        hyper: TuningHyper,
    ) -> Result<Self, EngineError> {
        let len = manifest.adapter.visual_length + manifest.adapter.token_length;
        if params.len() != len {
            return Err(EngineError::Shape {
                graph: STEP,
                problem: format!(
                    "params has {} values, the adapter layout {len}",
                    params.len()
                ),
            });
        }
        let allocator = match device {
            StateDevice::Cpu => Allocator::default(),
            StateDevice::Cuda(id) => Allocator::new(
                session,
                MemoryInfo::new(
                    AllocationDevice::CUDA,
                    id,
                    AllocatorType::Device,
                    MemoryType::Default,
                )
                .map_err(run_err(STEP))?,
            )
            .map_err(run_err(STEP))?,
        };
        let sets = [
            TuningState::allocate(&allocator, len)?,
            TuningState::allocate(&allocator, len)?,
        ];
        let initial = TuningState {
            params: Tensor::from_array(([len], params.to_vec())).map_err(run_err(STEP))?,
            adam_m: host_zeros(&[len])?,
            adam_v: host_zeros(&[len])?,
        };
        let (b, c, h) = (
            manifest.tuning.batch_size,
            manifest.latent.channels,
            manifest.latent.size,
        );
        let scalar = |x: f32| Tensor::from_array(((), vec![x])).map_err(run_err(STEP));
        let mut binding = session.create_binding().map_err(run_err(STEP))?;
        binding
            .bind_input("lr_visual", &scalar(hyper.lr_visual)?)
            .map_err(run_err(STEP))?;
        binding
            .bind_input("lr_token", &scalar(hyper.lr_token)?)
            .map_err(run_err(STEP))?;
        binding
            .bind_input("weight_decay", &scalar(hyper.weight_decay)?)
            .map_err(run_err(STEP))?;
        // NOTE: the loss is bound to host memory on every provider: the loop reads it each step.
        let loss = Tensor::<f32>::new(&Allocator::default(), [0usize; 0]).map_err(run_err(STEP))?;
        binding.bind_output("loss", loss).map_err(run_err(STEP))?;
        Ok(Self {
            session,
            binding,
            initial: Some(initial),
            sets,
            step: scalar(0.0)?,
            input_ids: host_zeros(&[b, manifest.tokenizer.max_length])?,
            latents: host_zeros(&[b, c, h, h])?,
            noise: host_zeros(&[b, c, h, h])?,
            timesteps: host_zeros(&[b])?,
            mask: host_zeros(&[b, 1, h, h])?,
            masked_latents: host_zeros(&[b, c, h, h])?,
            id_tokens: host_zeros(&[b, manifest.num_id_tokens, manifest.hidden_size])?,
            done: 0,
        })
    }

    /// The state the latest step wrote (or the initial state before the first step).
    fn current(&self) -> &TuningState {
        match &self.initial {
            Some(initial) => initial,
            None => &self.sets[(self.done + 1) % 2],
        }
    }
}

impl Tuner for OrtTuner<'_> {
    fn step(&mut self, batch: &TuningBatch<'_>) -> Result<f32, EngineError> {
        write_host("input_ids", &mut self.input_ids, batch.input_ids)?;
        write_host("latents", &mut self.latents, batch.latents)?;
        write_host("noise", &mut self.noise, batch.noise)?;
        write_host("timesteps", &mut self.timesteps, batch.timesteps)?;
        write_host("mask", &mut self.mask, batch.mask)?;
        write_host(
            "masked_latents",
            &mut self.masked_latents,
            batch.masked_latents,
        )?;
        write_host("id_tokens", &mut self.id_tokens, batch.id_tokens)?;
        self.step.extract_tensor_mut().1[0] = (self.done + 1) as f32;
        // NOTE: host inputs are re-bound after each rewrite, as in the denoiser: on the CPU provider
        // a pointer swap, on CUDA the batch's one upload.
        let b = &mut self.binding;
        b.bind_input("step", &self.step).map_err(run_err(STEP))?;
        b.bind_input("input_ids", &self.input_ids)
            .map_err(run_err(STEP))?;
        b.bind_input("latents", &self.latents)
            .map_err(run_err(STEP))?;
        b.bind_input("noise", &self.noise).map_err(run_err(STEP))?;
        b.bind_input("timesteps", &self.timesteps)
            .map_err(run_err(STEP))?;
        b.bind_input("mask", &self.mask).map_err(run_err(STEP))?;
        b.bind_input("masked_latents", &self.masked_latents)
            .map_err(run_err(STEP))?;
        b.bind_input("id_tokens", &self.id_tokens)
            .map_err(run_err(STEP))?;
        let write = self.done % 2;
        match &self.initial {
            Some(initial) => initial.bind_inputs(b)?,
            None => self.sets[1 - write].bind_inputs(b)?,
        }
        self.sets[write].bind_outputs(b)?;
        let loss = {
            let outputs = self
                .session
                .run_binding(&self.binding)
                .map_err(run_err(STEP))?;
            let (_, loss) = outputs["loss"]
                .try_extract_tensor::<f32>()
                .map_err(run_err(STEP))?;
            loss[0]
        };
        self.initial = None;
        self.done += 1;
        Ok(loss)
    }

    fn steps_done(&self) -> usize {
        self.done
    }

    fn params(&self) -> Result<Vec<f32>, EngineError> {
        let params = &self.current().params;
        if params.memory_info().is_cpu_accessible() {
            return Ok(params.extract_tensor().1.to_vec());
        }
        let host = params.to(AllocationDevice::CPU, 0).map_err(run_err(STEP))?;
        Ok(host.extract_tensor().1.to_vec())
    }
}
