//! Timing the engine: [`TimedEngine`] wraps an [`Engine`] and records every call per graph
//! ([`GraphTimes`]), attributing each to the edit stage it started in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ndarray::{Array2, Array3, Array4, ArrayView1, ArrayView2, ArrayView3, ArrayView4};
use pva_worker::engine::{
    DenoiseInputs, Denoiser, Engine, EngineError, Manifest, Tuner, TuningHyper,
};

/// Every engine call since the last [`TimedEngine::take`]: graph, start, duration.
#[derive(Debug, Clone, Default)]
pub(crate) struct GraphTimes {
    calls: Vec<(&'static str, Instant, Duration)>,
}

impl GraphTimes {
    fn add(&mut self, graph: &'static str, since: Instant) {
        self.calls.push((graph, since, since.elapsed()));
    }

    /// Seconds per graph.
    pub(crate) fn by_graph(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (graph, _, d) in &self.calls {
            *out.entry(graph.to_string()).or_default() += d.as_secs_f64();
        }
        out
    }

    /// Seconds per stage: each call counts for the stage it started in; `stages` are the edit's
    /// consecutive stages from `start`.
    pub(crate) fn by_stage(
        &self,
        start: Instant,
        stages: &[(pva_worker::model::Stage, f64)],
    ) -> BTreeMap<String, f64> {
        let mut out: BTreeMap<String, f64> =
            stages.iter().map(|(s, _)| (s.to_string(), 0.0)).collect();
        for (_, at, d) in &self.calls {
            let offset = at.saturating_duration_since(start).as_secs_f64();
            let mut end = 0.0;
            let stage = stages
                .iter()
                .find(|(_, secs)| {
                    end += secs;
                    offset < end
                })
                .or(stages.last());
            if let Some((name, _)) = stage {
                *out.entry(name.to_string()).or_default() += d.as_secs_f64();
            }
        }
        out
    }
}

/// An [`Engine`] that times every call of the engine it wraps, per graph. A call's time is the whole
/// engine call: the graph run plus the engine's conversion of inputs and outputs between ndarray and
/// ONNX Runtime values (what the pipeline cannot avoid by calling the engine).
pub(crate) struct TimedEngine<E> {
    inner: E,
    times: GraphTimes,
}

impl<E: Engine> TimedEngine<E> {
    pub(crate) fn new(inner: E) -> Self {
        Self {
            inner,
            times: GraphTimes::default(),
        }
    }

    /// The times since the last call, and a fresh start.
    pub(crate) fn take(&mut self) -> GraphTimes {
        std::mem::take(&mut self.times)
    }
}

/// The per-step UNet runner of a [`TimedEngine`].
struct TimedDenoiser<'e> {
    inner: Box<dyn Denoiser + 'e>,
    times: &'e mut GraphTimes,
}

impl Denoiser for TimedDenoiser<'_> {
    fn predict(
        &mut self,
        latents: &[f32],
        timestep: f32,
        noise_pred: &mut [f32],
    ) -> Result<(), EngineError> {
        let t = Instant::now();
        let out = self.inner.predict(latents, timestep, noise_pred);
        self.times.add("unet", t);
        out
    }
}

impl<E: Engine> Engine for TimedEngine<E> {
    fn manifest(&self) -> &Manifest {
        self.inner.manifest()
    }

    fn encode_text(
        &mut self,
        input_ids: ArrayView2<'_, i64>,
        new1_embedding: ArrayView1<'_, f32>,
    ) -> Result<Array3<f32>, EngineError> {
        let t = Instant::now();
        let out = self.inner.encode_text(input_ids, new1_embedding);
        self.times.add("text_encoder", t);
        out
    }

    fn embed_faces(&mut self, faces: ArrayView4<'_, f32>) -> Result<Array2<f32>, EngineError> {
        let t = Instant::now();
        let out = self.inner.embed_faces(faces);
        self.times.add("face_embedder", t);
        out
    }

    fn id_tokens(&mut self, embeddings: ArrayView3<'_, f32>) -> Result<Array3<f32>, EngineError> {
        let t = Instant::now();
        let out = self.inner.id_tokens(embeddings);
        self.times.add("id_former", t);
        out
    }

    fn vae_encode(&mut self, images: ArrayView4<'_, f32>) -> Result<Array4<f32>, EngineError> {
        let t = Instant::now();
        let out = self.inner.vae_encode(images);
        self.times.add("vae_encoder", t);
        out
    }

    fn vae_decode(&mut self, latents: ArrayView4<'_, f32>) -> Result<Array4<f32>, EngineError> {
        let t = Instant::now();
        let out = self.inner.vae_decode(latents);
        self.times.add("vae_decoder", t);
        out
    }

    fn denoiser<'e>(
        &'e mut self,
        inputs: DenoiseInputs<'_>,
    ) -> Result<Box<dyn Denoiser + 'e>, EngineError> {
        let Self { inner, times } = self;
        let t = Instant::now();
        let bound = inner.denoiser(inputs);
        // NOTE: binding copies the job's fixed UNet inputs into ONNX Runtime values once per job.
        times.add("unet (bind)", t);
        Ok(Box::new(TimedDenoiser {
            inner: bound?,
            times,
        }))
    }

    fn can_tune(&self) -> bool {
        self.inner.can_tune()
    }

    fn tuner<'e>(
        &'e mut self,
        params: &[f32],
        hyper: TuningHyper,
    ) -> Result<Box<dyn Tuner + 'e>, EngineError> {
        self.inner.tuner(params, hyper)
    }
}
