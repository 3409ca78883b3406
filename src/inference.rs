//! Inference off the async runtime: a pool of OS threads, each owning its own pipeline (its own ONNX
//! Runtime sessions), fed over a channel. Each request carries a oneshot reply and the caller's
//! tracing span, so a job's logs stay in its span while the tokio threads keep AMQP heartbeats and
//! the metrics endpoint responsive during long inference.

use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::config::Settings;
use crate::edit::load_pipeline;
use crate::pipeline::adapter::ModelRef;
use crate::pipeline::face::FaceBox;
use crate::pipeline::inpaint::{EditInput, EditOutput, PipelineError};
use crate::pipeline::noise::SeededNoise;
use crate::pipeline::tune::{tune_identity, ReferenceCrop, TuneError, TuneOptions, Tuned};
use image::RgbImage;

/// Work for an inference thread, with the caller's span.
struct Request {
    work: Work,
    span: tracing::Span,
}

enum Work {
    /// One edit.
    Edit {
        input: EditInput,
        seed: u64,
        reply: oneshot::Sender<Result<EditOutput, PipelineError>>,
    },
    /// One identity's adapter tuning from its reference photos.
    Tune {
        references: Vec<(RgbImage, Option<FaceBox>)>,
        reply: oneshot::Sender<Result<(Tuned, ModelRef), TuneError>>,
    },
}

/// Why the pool could not take or finish a request.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// Every inference thread has stopped (a model failed to load, or the pool is shutting down).
    #[error("the inference threads have stopped")]
    Stopped,
    /// The pipeline refused or failed the edit.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Tuning failed.
    #[error(transparent)]
    Tune(#[from] TuneError),
}

fn tune<E: crate::engine::Engine>(
    pipeline: &mut crate::pipeline::inpaint::Pipeline<E>,
    settings: &Settings,
    references: &[(RgbImage, Option<FaceBox>)],
) -> Result<(Tuned, ModelRef), TuneError> {
    let manifest = pipeline.manifest().clone();
    let options = TuneOptions::from_settings(&settings.tuning, &manifest)?;
    let crops = references
        .iter()
        .enumerate()
        .map(|(i, (photo, face_box))| {
            ReferenceCrop::from_photo(
                &format!("identity.references[{i}]"),
                photo,
                *face_box,
                settings.pipeline.face_margin,
                &manifest,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tuned = tune_identity(pipeline, &crops, &options, &mut |_, _| {})?;
    Ok((tuned, ModelRef::of(&manifest)))
}

/// Handles to the inference threads.
pub struct InferencePool {
    sender: Option<mpsc::Sender<Request>>,
    threads: Vec<JoinHandle<()>>,
    /// The loaded model (name, version, adapter layout).
    pub model: ModelRef,
}

impl InferencePool {
    /// Starts `settings.worker.concurrency` threads and waits until every one has loaded the model.
    /// Returns the load time of the slowest.
    pub fn start(settings: &Settings) -> anyhow::Result<(Self, f64)> {
        let (sender, receiver) = mpsc::channel::<Request>();
        let receiver = Arc::new(Mutex::new(receiver));
        let mut threads = Vec::new();
        let mut ready = Vec::new();
        for i in 0..settings.worker.concurrency {
            let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<(ModelRef, f64)>>();
            ready.push(ready_rx);
            let settings = settings.clone();
            let receiver = Arc::clone(&receiver);
            let thread = std::thread::Builder::new()
                .name(format!("inference-{i}"))
                .spawn(move || {
                    let t = std::time::Instant::now();
                    let mut pipeline = match load_pipeline(&settings) {
                        Ok(p) => {
                            let m = p.manifest();
                            let _ = ready_tx.send(Ok((ModelRef::of(m), t.elapsed().as_secs_f64())));
                            p
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    loop {
                        // NOTE: the lock is held only while waiting for the next request.
                        let request = match receiver.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(request) = request else { return };
                        let _enter = request.span.enter();
                        // The caller may have given up (shutdown deadline); nothing to do then.
                        match request.work {
                            Work::Edit { input, seed, reply } => {
                                let mut noise = SeededNoise::new(seed);
                                let _ = reply.send(pipeline.edit(&input, &mut noise));
                            }
                            Work::Tune { references, reply } => {
                                let _ = reply.send(tune(&mut pipeline, &settings, &references));
                            }
                        }
                    }
                })?;
            threads.push(thread);
        }
        let mut model = None;
        let mut slowest = 0f64;
        for rx in ready {
            let (model_ref, secs) = rx.recv().map_err(|_| {
                anyhow::anyhow!("an inference thread died while loading the model")
            })??;
            model = Some(model_ref);
            slowest = slowest.max(secs);
        }
        Ok((
            Self {
                sender: Some(sender),
                threads,
                model: model.ok_or_else(|| anyhow::anyhow!("worker.concurrency is 0"))?,
            },
            slowest,
        ))
    }

    fn send(&self, work: Work) -> Result<(), InferenceError> {
        let request = Request {
            work,
            span: tracing::Span::current(),
        };
        self.sender
            .as_ref()
            .ok_or(InferenceError::Stopped)?
            .send(request)
            .map_err(|_| InferenceError::Stopped)
    }

    /// Runs an edit on the next free inference thread.
    pub async fn edit(&self, input: EditInput, seed: u64) -> Result<EditOutput, InferenceError> {
        let (reply, rx) = oneshot::channel();
        self.send(Work::Edit { input, seed, reply })?;
        Ok(rx.await.map_err(|_| InferenceError::Stopped)??)
    }

    /// Tunes an identity's adapter on the next free inference thread (the `[tuning]` settings).
    pub async fn tune(
        &self,
        references: Vec<(RgbImage, Option<FaceBox>)>,
    ) -> Result<(Tuned, ModelRef), InferenceError> {
        let (reply, rx) = oneshot::channel();
        self.send(Work::Tune { references, reply })?;
        Ok(rx.await.map_err(|_| InferenceError::Stopped)??)
    }

    /// Stops taking requests and joins the threads once they finish their current one.
    pub fn shutdown(mut self) {
        self.sender.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
