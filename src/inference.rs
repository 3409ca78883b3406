//! Inference off the async runtime: a pool of OS threads, each owning its own pipeline (its own ONNX
//! Runtime sessions), fed over a channel. Each request carries a oneshot reply and the caller's
//! tracing span, so a job's logs stay in its span while the tokio threads keep AMQP heartbeats and
//! the metrics endpoint responsive during long inference.

use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::config::Settings;
use crate::edit::load_pipeline;
use crate::pipeline::inpaint::{EditInput, EditOutput, PipelineError};
use crate::pipeline::noise::SeededNoise;

/// One edit to run.
struct Request {
    input: EditInput,
    seed: u64,
    span: tracing::Span,
    reply: oneshot::Sender<Result<EditOutput, PipelineError>>,
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
}

/// Handles to the inference threads.
pub struct InferencePool {
    sender: Option<mpsc::Sender<Request>>,
    threads: Vec<JoinHandle<()>>,
    /// Model name and version (from the first thread's manifest).
    pub model: (String, String),
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
            let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<(String, String, f64)>>();
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
                            let _ = ready_tx.send(Ok((
                                m.name.clone(),
                                m.version.clone(),
                                t.elapsed().as_secs_f64(),
                            )));
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
                        let mut noise = SeededNoise::new(request.seed);
                        let result = pipeline.edit(&request.input, &mut noise);
                        // The caller may have given up (shutdown deadline); nothing to do then.
                        let _ = request.reply.send(result);
                    }
                })?;
            threads.push(thread);
        }
        let mut model = (String::new(), String::new());
        let mut slowest = 0f64;
        for rx in ready {
            let (name, version, secs) = rx.recv().map_err(|_| {
                anyhow::anyhow!("an inference thread died while loading the model")
            })??;
            model = (name, version);
            slowest = slowest.max(secs);
        }
        Ok((
            Self {
                sender: Some(sender),
                threads,
                model,
            },
            slowest,
        ))
    }

    /// Runs an edit on the next free inference thread.
    pub async fn edit(&self, input: EditInput, seed: u64) -> Result<EditOutput, InferenceError> {
        let (reply, rx) = oneshot::channel();
        let request = Request {
            input,
            seed,
            span: tracing::Span::current(),
            reply,
        };
        self.sender
            .as_ref()
            .ok_or(InferenceError::Stopped)?
            .send(request)
            .map_err(|_| InferenceError::Stopped)?;
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
