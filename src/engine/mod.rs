//! The inference engine: the model directory's graphs behind a small trait.
//!
//! [`Engine`] speaks ndarray and plain slices; [`OrtEngine`] (in `runtime/`) is the only place
//! that touches `ort` types. An engine is synchronous and owned by one thread: callers that live on an
//! async runtime hand work to a dedicated inference thread (`crate::service::pool`), never run it on a tokio
//! worker thread.

mod runtime;
mod settings;

use ndarray::{Array2, Array3, Array4, ArrayView1, ArrayView2, ArrayView3, ArrayView4};

pub use crate::model::faces::FaceManifest;
pub use crate::model::manifest::{self, Manifest};
pub use runtime::{OrtEngine, OrtFaces, Workload};
pub use settings::{ArenaExtend, ConvAlgoSearch, EngineSettings, ExecutionProvider, TuningSession};

/// Why an engine call failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model directory was refused (manifest, hashes, graph interfaces).
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// A graph's inputs/outputs differ from what the manifest declares.
    #[error("graph `{graph}`: {field}: {problem}")]
    Interface {
        /// Manifest key of the graph.
        graph: String,
        /// Which input/output or property.
        field: String,
        /// What differs.
        problem: String,
    },
    /// ONNX Runtime could not be loaded or configured.
    #[error("ONNX Runtime setup: {0}")]
    Setup(String),
    /// A graph run failed.
    #[error("graph `{graph}` failed: {message}")]
    Run {
        /// Manifest key of the graph.
        graph: &'static str,
        /// ONNX Runtime's message.
        message: String,
    },
    /// The model directory has no graph for this (e.g. no `adapter_step.onnx`: it cannot tune).
    #[error("model `{model}` has no `{graph}` graph")]
    MissingGraph {
        /// Manifest key of the missing graph.
        graph: &'static str,
        /// Model name.
        model: String,
    },
    /// The caller passed tensors of the wrong shape (a bug in the caller).
    #[error("graph `{graph}`: bad input shape: {problem}")]
    Shape {
        /// Manifest key of the graph.
        graph: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// What stays fixed across the denoising steps of one job.
#[derive(Debug, Clone, Copy)]
pub struct DenoiseInputs<'a> {
    /// Text hidden states per UNet row, [rows, 77, D].
    pub hidden_states: ArrayView3<'a, f32>,
    /// Identity tokens per row, [rows, 10, D].
    pub id_tokens: ArrayView3<'a, f32>,
    /// 1.0 where a row attends to the identity tokens, 0.0 where they are removed (CFG's uncond row).
    pub id_switch: &'a [f32],
    /// The visual segment of the adapter, [P].
    pub adapter: &'a [f32],
    /// Mask at latent resolution per row, [rows, 1, h, w].
    pub mask: ArrayView4<'a, f32>,
    /// Scaled masked-image latents per row, [rows, 4, h, w].
    pub masked_latents: ArrayView4<'a, f32>,
    /// For each row, which of the job's latents it denoises.
    pub row_latent: &'a [usize],
}

/// One job's UNet with its fixed inputs bound; called once per denoising step.
pub trait Denoiser {
    /// Runs the UNet on `latents` ([n, 4, h, w] flat, one per output) at `timestep` and writes the
    /// noise prediction of every row ([rows, 4, h, w] flat) into `noise_pred`.
    fn predict(
        &mut self,
        latents: &[f32],
        timestep: f32,
        noise_pred: &mut [f32],
    ) -> Result<(), EngineError>;
}

/// AdamW settings of one tuning run; betas and epsilon are fixed in `adapter_step.onnx`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TuningHyper {
    /// Learning rate of the visual projections (the paper: 1e-5).
    pub lr_visual: f32,
    /// Learning rate of the `<new1>` token embedding (the paper: 1e-3).
    pub lr_token: f32,
    /// Decoupled weight decay (the paper: 0.01).
    pub weight_decay: f32,
}

/// One tuning batch as `adapter_step.onnx` takes it; `b` is the manifest's `tuning.batch_size`
/// (fixed in the graph). Shapes follow models/CONTRACT.md.
#[derive(Debug, Clone, Copy)]
pub struct TuningBatch<'a> {
    /// Prompt ids [b, 77].
    pub input_ids: ArrayView2<'a, i64>,
    /// Scaled clean latents of each sample's target [b, 4, h, w].
    pub latents: ArrayView4<'a, f32>,
    /// The noise the UNet must predict [b, 4, h, w].
    pub noise: ArrayView4<'a, f32>,
    /// Training timesteps in `[0, num_train_timesteps)` [b].
    pub timesteps: ArrayView1<'a, i64>,
    /// Latent-resolution mask, 1 = repaint [b, 1, h, w].
    pub mask: ArrayView4<'a, f32>,
    /// Scaled masked-image latents [b, 4, h, w].
    pub masked_latents: ArrayView4<'a, f32>,
    /// Identity tokens of each sample's other references [b, 10, D].
    pub id_tokens: ArrayView3<'a, f32>,
}

/// One tuning run of `adapter_step.onnx`: the adapter and its AdamW moments live in the engine (on
/// the device that runs the graph) from the first step to the last; each step feeds the previous
/// step's outputs back as inputs.
pub trait Tuner {
    /// Runs one step (forward, backward, AdamW) on `batch`; returns the batch's loss before the
    /// update.
    fn step(&mut self, batch: &TuningBatch<'_>) -> Result<f32, EngineError>;
    /// Steps run so far.
    fn steps_done(&self) -> usize;
    /// The current adapter (visual + token), copied to the host.
    fn params(&self) -> Result<Vec<f32>, EngineError>;
}

/// The face graphs of the face-model directory (`engine.face_model_dir`, shared by every model):
/// tensors as its manifest declares them (NHWC images, one at a time).
pub trait FaceEngine {
    /// The face-model manifest the graphs were loaded from.
    fn face_manifest(&self) -> &FaceManifest;
    /// The detector on one letterboxed image [1, S, S, 3] -> (`regressors` [1, anchors, coords],
    /// `classificators` [1, anchors, 1]).
    fn detect_faces(
        &mut self,
        input: ArrayView4<'_, f32>,
    ) -> Result<(Array3<f32>, Array3<f32>), EngineError>;
    /// The landmark model on one face crop [1, S, S, 3] -> (the landmarks' (x, y, z) in crop pixels,
    /// flat; the face-presence logit).
    fn face_landmarks(
        &mut self,
        input: ArrayView4<'_, f32>,
    ) -> Result<(Vec<f32>, f32), EngineError>;
}

/// The model's graphs. All tensors are float32 unless stated; shapes follow models/CONTRACT.md.
pub trait Engine {
    /// The manifest the engine was loaded from.
    fn manifest(&self) -> &Manifest;
    /// `input_ids` [B, 77] with the `<new1>` embedding [D] -> hidden states [B, 77, D].
    fn encode_text(
        &mut self,
        input_ids: ArrayView2<'_, i64>,
        new1_embedding: ArrayView1<'_, f32>,
    ) -> Result<Array3<f32>, EngineError>;
    /// Aligned face crops [N, 3, 112, 112] in [-1, 1] -> embeddings [N, 512].
    fn embed_faces(&mut self, faces: ArrayView4<'_, f32>) -> Result<Array2<f32>, EngineError>;
    /// Reference embeddings [B, R, 512] -> identity tokens [B, 10, D].
    fn id_tokens(&mut self, embeddings: ArrayView3<'_, f32>) -> Result<Array3<f32>, EngineError>;
    /// Images [B, 3, H, W] in [-1, 1] -> unscaled posterior means [B, 4, h, w].
    fn vae_encode(&mut self, images: ArrayView4<'_, f32>) -> Result<Array4<f32>, EngineError>;
    /// Unscaled latents [B, 4, h, w] -> images [B, 3, H, W], roughly [-1, 1].
    fn vae_decode(&mut self, latents: ArrayView4<'_, f32>) -> Result<Array4<f32>, EngineError>;
    /// Binds a job's fixed UNet inputs and returns the per-step runner.
    fn denoiser<'e>(
        &'e mut self,
        inputs: DenoiseInputs<'_>,
    ) -> Result<Box<dyn Denoiser + 'e>, EngineError>;
    /// Whether the model directory has the tuning graph (`adapter_step`).
    fn can_tune(&self) -> bool {
        false
    }
    /// Starts a tuning run from `params` (visual + token, the manifest's adapter layout) with zero
    /// AdamW moments.
    fn tuner<'e>(
        &'e mut self,
        params: &[f32],
        hyper: TuningHyper,
    ) -> Result<Box<dyn Tuner + 'e>, EngineError> {
        let _ = (params, hyper);
        Err(EngineError::MissingGraph {
            graph: manifest::TUNING_GRAPH,
            model: self.manifest().name.clone(),
        })
    }
}
