//! [`OrtEngine`]: the graphs of a model directory as ONNX Runtime sessions. The only code that uses
//! `ort` types.
//!
//! Its parts: `session` (the environment, session options and execution providers), `interface`
//! (each graph checked against the manifest), `io` (ndarray views as inputs, ort errors as
//! [`EngineError`]), `denoise` (the UNet's sampling loop), `tune` (the adapter tuning step) and
//! `faces` ([`OrtFaces`]: the face-model directory's detector and landmark graphs).

mod denoise;
mod faces;
mod interface;
mod io;
mod session;
mod tune;

use ndarray::{
    Array, Array2, Array3, Array4, ArrayView1, ArrayView2, ArrayView3, ArrayView4, Dimension,
};
use std::time::Instant;

use ort::session::Session;

use self::denoise::OrtDenoiser;
use self::interface::{check_interface, check_tuning_spec};
use self::io::{run_err, tensor_ref};
use self::session::{environment, session_builder, unet_session_builder};
use self::tune::OrtTuner;
use super::manifest::{Manifest, TUNING_GRAPH};
use super::{DenoiseInputs, Denoiser, Engine, EngineError, Tuner, TuningHyper};
use crate::engine::{EngineSettings, ExecutionProvider, TuningSession};
pub use faces::OrtFaces;

/// One session per graph. The edit graphs' sessions are created at load and reused by every job (a
/// graph the worker's use does not need at load, e.g. the UNet of a tuning-only command, is opened by
/// its first call); the tuning graph's session lives as `engine.tuning_session` says.
pub struct OrtEngine {
    manifest: Manifest,
    opener: Opener,
    text_encoder: Graph,
    face_embedder: Graph,
    id_former: Graph,
    unet: Graph,
    vae_encoder: Graph,
    vae_decoder: Graph,
    /// `adapter_step.onnx`, when the model directory has it (else never opened).
    adapter_step: Graph,
    /// Where tuning state (adapter, AdamW moments) lives between steps.
    state_device: StateDevice,
}

/// What the engine will be used for: which graphs [`OrtEngine::load_for`] opens at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Edits (and tuning runs, when jobs ask for them): every edit graph is opened at load; the
    /// tuning graph as `engine.tuning_session` says.
    Edit,
    /// Tuning only (`pva-worker tune`): the graphs a tuning run uses (face embedder, id former, VAE
    /// encoder and the tuning graph) are opened at load; the text encoder, the UNet and the VAE
    /// decoder only if something calls them.
    Tune,
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

/// What opening a session needs: the environment, the settings and the model directory.
struct Opener {
    env: ort::environment::Environment,
    settings: EngineSettings,
}

impl Opener {
    /// Creates the session of graph `key` and checks its interface against the manifest. With
    /// `verify` (a session opened after load, when `verify_hashes`), the graph's files are hashed
    /// first: the files a session reads are checked before every creation, at load or later.
    fn open(
        &self,
        manifest: &Manifest,
        key: &'static str,
        verify: bool,
    ) -> Result<Session, EngineError> {
        let started = Instant::now();
        let dir = &self.settings.model_dir;
        if verify && self.settings.verify_hashes {
            manifest.verify_some_files(dir, |k| k == key, false)?;
        }
        let path = manifest
            .graph_path(dir, key)
            .expect("GRAPH_KEYS are checked by Manifest::load; TUNING_GRAPH by can_tune");
        let mut builder = if key == "unet" {
            unet_session_builder(&self.env, &self.settings)?
        } else {
            session_builder(&self.env, &self.settings)?
        };
        let session = builder
            .commit_from_file(&path)
            .map_err(|e| EngineError::Setup(format!("graph `{key}` ({}): {e}", path.display())))?;
        check_interface(key, &session, &manifest.graphs[key])?;
        tracing::debug!(
            graph = key,
            seconds = started.elapsed().as_secs_f64(),
            "session created"
        );
        Ok(session)
    }
}

/// One graph's session slot: open or not yet (or no longer) open.
struct Graph {
    key: &'static str,
    session: Option<Session>,
}

impl Graph {
    fn closed(key: &'static str) -> Self {
        Self { key, session: None }
    }

    /// The session, created first (its files verified) if it is not open.
    fn session(
        &mut self,
        opener: &Opener,
        manifest: &Manifest,
    ) -> Result<&mut Session, EngineError> {
        if self.session.is_none() {
            self.session = Some(opener.open(manifest, self.key, true)?);
        }
        Ok(self.session.as_mut().expect("opened above"))
    }

    /// Opens the session at load, its files already verified.
    fn open_at_load(&mut self, opener: &Opener, manifest: &Manifest) -> Result<(), EngineError> {
        self.session = Some(opener.open(manifest, self.key, false)?);
        Ok(())
    }
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
    /// Loads the model directory for edits ([`Workload::Edit`]).
    pub fn load(settings: &EngineSettings) -> Result<Self, EngineError> {
        Self::load_for(settings, Workload::Edit)
    }

    /// Loads the model directory: manifest, the tuning graph's sizes against the rest of the
    /// manifest, file hashes (when `verify_hashes`: the adapter's and those of the graphs opened now,
    /// in parallel; a graph opened later has its files hashed then) and the sessions the workload
    /// needs at once (each graph's interface checked against the manifest as its session is created).
    pub fn load_for(settings: &EngineSettings, workload: Workload) -> Result<Self, EngineError> {
        let dir = settings.model_dir.as_path();
        let manifest = Manifest::load(dir)?;
        let can_tune = manifest.graphs.contains_key(TUNING_GRAPH);
        if can_tune {
            check_tuning_spec(&manifest)?;
        }
        let tuning_eagerly = can_tune
            && (workload == Workload::Tune || settings.tuning_session == TuningSession::Eager);
        let at_load = |key: &str| match key {
            "text_encoder" | "unet" | "vae_decoder" => workload == Workload::Edit,
            TUNING_GRAPH => tuning_eagerly,
            _ => true,
        };
        if settings.verify_hashes {
            manifest.verify_some_files(dir, at_load, true)?;
        }
        let opener = Opener {
            env: environment(&settings.ort_library)?,
            settings: settings.clone(),
        };
        let mut engine = Self {
            text_encoder: Graph::closed("text_encoder"),
            face_embedder: Graph::closed("face_embedder"),
            id_former: Graph::closed("id_former"),
            unet: Graph::closed("unet"),
            vae_encoder: Graph::closed("vae_encoder"),
            vae_decoder: Graph::closed("vae_decoder"),
            adapter_step: Graph::closed(TUNING_GRAPH),
            state_device: match settings.execution_provider {
                ExecutionProvider::Cpu => StateDevice::Cpu,
                ExecutionProvider::Cuda => StateDevice::Cuda(settings.cuda_device),
            },
            opener,
            manifest,
        };
        let (m, o) = (&engine.manifest, &engine.opener);
        for graph in [
            &mut engine.text_encoder,
            &mut engine.face_embedder,
            &mut engine.id_former,
            &mut engine.unet,
            &mut engine.vae_encoder,
            &mut engine.vae_decoder,
            &mut engine.adapter_step,
        ] {
            if at_load(graph.key) {
                graph.open_at_load(o, m)?;
            }
        }
        Ok(engine)
    }

    /// Whether the tuning graph's session is open now (see `engine.tuning_session`).
    pub fn tuning_session_open(&self) -> bool {
        self.adapter_step.session.is_some()
    }

    /// The graphs whose sessions are open now, by manifest key.
    pub fn open_graphs(&self) -> Vec<&'static str> {
        [
            &self.text_encoder,
            &self.face_embedder,
            &self.id_former,
            &self.unet,
            &self.vae_encoder,
            &self.vae_decoder,
            &self.adapter_step,
        ]
        .into_iter()
        .filter(|g| g.session.is_some())
        .map(|g| g.key)
        .collect()
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
        let session = self.text_encoder.session(&self.opener, &self.manifest)?;
        Self::run_one(session, G, inputs, "hidden_states")
    }

    fn embed_faces(&mut self, faces: ArrayView4<'_, f32>) -> Result<Array2<f32>, EngineError> {
        const G: &str = "face_embedder";
        let inputs = vec![("faces", tensor_ref(G, faces)?)];
        let session = self.face_embedder.session(&self.opener, &self.manifest)?;
        Self::run_one(session, G, inputs, "embeddings")
    }

    fn id_tokens(&mut self, embeddings: ArrayView3<'_, f32>) -> Result<Array3<f32>, EngineError> {
        const G: &str = "id_former";
        let inputs = vec![("embeddings", tensor_ref(G, embeddings)?)];
        let session = self.id_former.session(&self.opener, &self.manifest)?;
        Self::run_one(session, G, inputs, "id_tokens")
    }

    fn vae_encode(&mut self, images: ArrayView4<'_, f32>) -> Result<Array4<f32>, EngineError> {
        const G: &str = "vae_encoder";
        let inputs = vec![("image", tensor_ref(G, images)?)];
        let session = self.vae_encoder.session(&self.opener, &self.manifest)?;
        Self::run_one(session, G, inputs, "latent_mean")
    }

    fn vae_decode(&mut self, latents: ArrayView4<'_, f32>) -> Result<Array4<f32>, EngineError> {
        const G: &str = "vae_decoder";
        let inputs = vec![("latent", tensor_ref(G, latents)?)];
        let session = self.vae_decoder.session(&self.opener, &self.manifest)?;
        let image: Array4<f32> = Self::run_one(session, G, inputs, "image")?;
        // NOTE: every graph of an edit feeds the decoded image, so a NaN or infinity anywhere
        // upstream (corrupted weights, a failing device, fp16 overflow) shows here: the edit fails
        // as a run failure instead of returning an image decoded from garbage.
        if let Some(bad) = image.iter().find(|v| !v.is_finite()) {
            return Err(EngineError::Run {
                graph: G,
                message: format!("output `image` has non-finite values (e.g. {bad})"),
            });
        }
        Ok(image)
    }

    fn denoiser<'e>(
        &'e mut self,
        inputs: DenoiseInputs<'_>,
    ) -> Result<Box<dyn Denoiser + 'e>, EngineError> {
        let fixed = match self.state_device {
            StateDevice::Cuda(id) if self.opener.settings.cuda_graph => Some(id),
            _ => None,
        };
        let session = self.unet.session(&self.opener, &self.manifest)?;
        Ok(Box::new(OrtDenoiser::new(session, inputs, fixed)?))
    }

    fn can_tune(&self) -> bool {
        self.manifest.graphs.contains_key(TUNING_GRAPH)
    }

    fn tuner<'e>(
        &'e mut self,
        params: &[f32],
        hyper: TuningHyper,
    ) -> Result<Box<dyn Tuner + 'e>, EngineError> {
        if !self.can_tune() {
            return Err(EngineError::MissingGraph {
                graph: TUNING_GRAPH,
                model: self.manifest.name.clone(),
            });
        }
        self.adapter_step.session(&self.opener, &self.manifest)?;
        let release = self.opener.settings.tuning_session == TuningSession::ReleaseAfterUse;
        Ok(Box::new(OrtTuner::new(
            &mut self.adapter_step.session,
            release,
            &self.manifest,
            self.state_device,
            params,
            hyper,
        )?))
    }
}

#[cfg(test)]
mod tests {
    //! The engine on the bundled tiny model: when the tuning session exists under each
    //! `engine.tuning_session`, that the setting never changes a tuning run's results, and that the
    //! shared external data file of the frozen weights is refused when one byte of it changes.

    use std::path::{Path, PathBuf};

    use ndarray::{Array1, Array2, Array3, Array4};

    use super::{Manifest, OrtEngine, Workload, TUNING_GRAPH};
    use crate::engine::{
        Engine, EngineError, EngineSettings, TuningBatch, TuningHyper, TuningSession,
    };

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn settings(model_dir: &Path, tuning_session: TuningSession) -> EngineSettings {
        EngineSettings {
            tuning_session,
            ..EngineSettings::for_tests(model_dir)
        }
    }

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Three tuning steps from fixed params on fixed batches: the losses and the final params.
    fn tune(engine: &mut OrtEngine) -> Result<(Vec<f32>, Vec<f32>), EngineError> {
        let m = engine.manifest().clone();
        let (b, c, h) = (m.tuning.batch_size, m.latent.channels, m.latent.size);
        let n = m.adapter.visual_length + m.adapter.token_length;
        let params: Vec<f32> = values(n, 1).iter().map(|v| v * 0.02).collect();
        let hyper = TuningHyper {
            lr_visual: 1e-3,
            lr_token: 1e-3,
            weight_decay: 0.01,
        };
        let mut tuner = engine.tuner(&params, hyper)?;
        let mut losses = Vec::new();
        for step in 0..3u64 {
            let latent = |seed| Array4::from_shape_vec((b, c, h, h), values(b * c * h * h, seed));
            let latents = latent(10 + step).unwrap();
            let noise = latent(20 + step).unwrap();
            let masked = latent(30 + step).unwrap();
            let mask =
                Array4::from_shape_fn((b, 1, h, h), |(_, _, y, _)| (y >= h / 2) as u8 as f32);
            let ids = Array2::from_shape_fn((b, m.tokenizer.max_length), |(_, i)| {
                [49406, 320, 49408, 2533][i.min(3)] as i64
            });
            let timesteps =
                Array1::from_iter((0..b).map(|i| (100 + 300 * i as i64 + step as i64) % 1000));
            let tokens = Array3::from_shape_vec(
                (b, m.num_id_tokens, m.hidden_size),
                values(b * m.num_id_tokens * m.hidden_size, 40 + step),
            )
            .unwrap();
            losses.push(tuner.step(&TuningBatch {
                input_ids: ids.view(),
                latents: latents.view(),
                noise: noise.view(),
                timesteps: timesteps.view(),
                mask: mask.view(),
                masked_latents: masked.view(),
                id_tokens: tokens.view(),
            })?);
        }
        Ok((losses, tuner.params()?))
    }

    #[test]
    fn the_tuning_session_lives_as_the_setting_says_and_never_changes_results() {
        let tiny = repo().join("models/tiny");
        let mut results = Vec::new();
        for lifetime in [
            TuningSession::OnDemand,
            TuningSession::Eager,
            TuningSession::ReleaseAfterUse,
        ] {
            let mut engine = OrtEngine::load(&settings(&tiny, lifetime)).unwrap();
            assert!(
                engine.can_tune(),
                "{lifetime:?}: can_tune answers from the manifest"
            );
            let eager = lifetime == TuningSession::Eager;
            assert_eq!(
                engine.tuning_session_open(),
                eager,
                "{lifetime:?} after load"
            );
            let first = tune(&mut engine).unwrap();
            let kept = lifetime != TuningSession::ReleaseAfterUse;
            assert_eq!(
                engine.tuning_session_open(),
                kept,
                "{lifetime:?} after a run"
            );
            // A second run (reopening the session under release_after_use) gives the same.
            let second = tune(&mut engine).unwrap();
            assert_eq!(
                engine.tuning_session_open(),
                kept,
                "{lifetime:?} after two runs"
            );
            assert_eq!(first, second, "{lifetime:?}: two runs differ");
            // The edit graphs stay open throughout.
            assert!(engine.open_graphs().contains(&"unet"), "{lifetime:?}");
            results.push((lifetime, first));
        }
        let (_, (losses, params)) = &results[0];
        assert!(
            losses.iter().all(|l| l.is_finite() && *l > 0.0),
            "{losses:?}"
        );
        for (lifetime, result) in &results[1..] {
            assert_eq!(&results[0].1, result, "{lifetime:?} differs from on_demand");
        }
        let n = params.len();
        assert!(
            params.iter().zip(values(n, 1)).any(|(p, v)| *p != v * 0.02),
            "params moved"
        );
    }

    #[test]
    fn a_tuning_workload_opens_only_the_graphs_tuning_uses() {
        let tiny = repo().join("models/tiny");
        let mut engine =
            OrtEngine::load_for(&settings(&tiny, TuningSession::OnDemand), Workload::Tune).unwrap();
        assert_eq!(
            engine.open_graphs(),
            ["face_embedder", "id_former", "vae_encoder", "adapter_step"]
        );
        let tuned = tune(&mut engine).unwrap();
        let mut edit = OrtEngine::load(&settings(&tiny, TuningSession::OnDemand)).unwrap();
        assert_eq!(tune(&mut edit).unwrap(), tuned);
        // A graph it did not open is opened by its first call.
        let faces = Array4::<f32>::zeros((1, 3, 112, 112));
        let _ = engine.embed_faces(faces.view()).unwrap();
        let latents = Array4::<f32>::zeros((1, 4, 8, 8));
        let _ = engine.vae_decode(latents.view()).unwrap();
        assert!(engine.open_graphs().contains(&"vae_decoder"));
    }

    #[test]
    fn a_tuning_graph_unlike_its_manifest_is_refused_when_its_session_opens() {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&repo().join("models/tiny"), dir.path());
        let path = dir.path().join("manifest.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        // A dtype the manifest's sizes cannot catch: only the graph's own interface can.
        assert_eq!(
            v["graphs"]["adapter_step"]["inputs"][7]["name"],
            "input_ids"
        );
        v["graphs"]["adapter_step"]["inputs"][7]["dtype"] = "float32".into();
        std::fs::write(&path, v.to_string()).unwrap();
        let refused = |err: String| {
            assert!(
                err.contains("adapter_step") && err.contains("input_ids") && err.contains("dtype"),
                "{err}"
            )
        };
        let mut engine = OrtEngine::load(&settings(dir.path(), TuningSession::OnDemand)).unwrap();
        refused(tune(&mut engine).unwrap_err().to_string());
        assert!(!engine.tuning_session_open());
        refused(
            OrtEngine::load(&settings(dir.path(), TuningSession::Eager))
                .unwrap_err()
                .to_string(),
        );
    }

    #[test]
    fn a_flipped_byte_in_the_shared_weights_is_refused_at_every_load() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path();
        copy_dir(&repo().join("models/tiny"), model);
        // The tiny model keeps its UNet, text encoder and tuning graph weights in one external data
        // file, as every export does (pva.share).
        let manifest = Manifest::load(model).unwrap();
        let shared: Vec<&str> = ["unet", "text_encoder", TUNING_GRAPH]
            .into_iter()
            .filter(|k| {
                manifest.graphs[*k]
                    .external_data
                    .iter()
                    .any(|x| x.file == "frozen_weights.bin")
            })
            .collect();
        assert_eq!(shared, ["unet", "text_encoder", TUNING_GRAPH]);
        let data = std::fs::read(model.join("frozen_weights.bin")).unwrap();
        assert!(data.len() > 1 << 20, "megabytes of weights");

        // One flipped byte anywhere in the data file (here: its middle, then its last byte) is
        // refused by the next load, naming the file, and by a tuning session opened later (a load
        // of an edit worker, which hashed the file at load, then the data changed under it).
        let s = settings(model, TuningSession::OnDemand);
        for at in [data.len() / 2, data.len() - 1] {
            let mut engine = OrtEngine::load(&s).unwrap();
            let mut flipped = data.clone();
            flipped[at] ^= 0x10;
            std::fs::write(model.join("frozen_weights.bin"), &flipped).unwrap();
            let refused = |err: String| {
                assert!(
                    err.contains("frozen_weights.bin")
                        && err.contains(".external_data[0]")
                        && err.contains("sha256"),
                    "byte {at}: {err}"
                );
            };
            refused(tune(&mut engine).unwrap_err().to_string());
            refused(OrtEngine::load(&s).unwrap_err().to_string());
            std::fs::write(model.join("frozen_weights.bin"), &data).unwrap();
        }
        // A data file of another length is refused before any hashing.
        std::fs::write(model.join("frozen_weights.bin"), &data[1..]).unwrap();
        let err = OrtEngine::load(&s).unwrap_err().to_string();
        assert!(
            err.contains("frozen_weights.bin") && err.contains("bytes"),
            "{err}"
        );
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
