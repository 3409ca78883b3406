//! [`OrtEngine`]: the graphs of a model directory as ONNX Runtime sessions. The only code that uses
//! `ort` types.
//!
//! Its parts: `session` (the environment, session options and execution providers), `interface`
//! (each graph checked against the manifest), `io` (ndarray views as inputs, ort errors as
//! [`EngineError`]), `denoise` (the UNet's sampling loop) and `tune` (the adapter tuning step).

mod denoise;
mod interface;
mod io;
mod session;
mod tune;

use ndarray::{
    Array, Array2, Array3, Array4, ArrayView1, ArrayView2, ArrayView3, ArrayView4, Dimension,
};
use ort::session::Session;

use self::denoise::OrtDenoiser;
use self::interface::{check_interface, check_tuning_spec};
use self::io::{run_err, tensor_ref};
use self::session::{environment, session_builder};
use self::tune::OrtTuner;
use super::manifest::{Manifest, TUNING_GRAPH};
use super::{DenoiseInputs, Denoiser, Engine, EngineError, Tuner, TuningHyper};
use crate::engine::{EngineSettings, ExecutionProvider};

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
