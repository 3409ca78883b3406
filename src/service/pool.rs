//! Inference off the async runtime: a pool of OS threads, each owning its own pipeline (its own ONNX
//! Runtime sessions), fed over a channel. Each request carries a oneshot reply and the caller's
//! tracing span, so a job's logs stay in its span while the tokio threads keep AMQP heartbeats and
//! the metrics endpoint responsive during long inference.
//!
//! A request that panics becomes a `model_error` failure of that job and the thread goes on; the
//! number of live threads is kept, and the service is neither ready nor live when none is left. The
//! queue service's pool warms every thread up before it counts as started
//! ([`InferencePool::start_warm`]) and reports each request's outcome to an
//! [`EngineWatch`], running its probe inference when engine failures pile up.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use image::RgbImage;
use tokio::sync::oneshot;

use crate::config::Settings;
use crate::engine::{Engine, OrtEngine, OrtFaces};
use crate::job::{FailureCode, Inference, JobFailure};
use crate::model::adapter::ModelRef;
use crate::model::{Manifest, Stage};
use crate::pipeline::face::{
    locate_face, min_face_side, paper_aligned, upright_reference, FaceBox, FaceRequest, LocatedFace,
};
use crate::pipeline::inpaint::{EditInput, EditOutput, Pipeline};
use crate::pipeline::noise::SeededNoise;
use crate::pipeline::tune::{tune_identity, ReferenceCrop, TuneError, Tuned};
use crate::service::events::{ProgressSink, PROGRESS};
use crate::service::health::{EngineWatch, Outcome};
use crate::service::model::{load_faces, load_pipeline, LoadError};
use crate::service::warmup::warm_up;

/// In debug builds (the tests' binaries), an edit with exactly this prompt panics in its inference
/// thread: the test hook for the pool's panic handling. Release builds have no such prompt.
#[cfg(debug_assertions)]
pub const PANIC_PROBE_PROMPT: &str = "__pva_test_panic_in_inference__";

/// Work for an inference thread, with the caller's span and its job's progress sink.
struct Request {
    work: Work,
    span: tracing::Span,
    progress: Option<ProgressSink>,
}

enum Work {
    /// One edit.
    Edit {
        input: Arc<EditInput>,
        seed: u64,
        reply: oneshot::Sender<Result<EditOutput, JobFailure>>,
    },
    /// The faces of a job's images.
    Locate {
        input: Arc<EditInput>,
        requests: Vec<Option<FaceRequest>>,
        reply: oneshot::Sender<Result<Vec<Option<LocatedFace>>, JobFailure>>,
    },
    /// One identity's adapter tuning from its reference photos.
    Tune {
        references: Vec<(RgbImage, Option<FaceBox>)>,
        reply: oneshot::Sender<Result<Tuned, JobFailure>>,
    },
}

fn tune<E: Engine>(
    pipeline: &mut Pipeline<E>,
    settings: &Settings,
    references: &[(RgbImage, Option<FaceBox>)],
    progress: Option<&ProgressSink>,
) -> Result<Tuned, TuneError> {
    let manifest = pipeline.manifest().clone();
    let options = settings.tuning.options_for(&manifest)?;
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
    let steps = options.steps;
    tune_identity(pipeline, &crops, &options, &mut |step, _| {
        if let Some(report) = progress {
            report(Stage::Tune, step, steps);
        }
    })
}

/// The face of each image that asks for one (target first, then the references), as large as the
/// model needs.
fn locate<E: Engine>(
    pipeline: &Pipeline<E>,
    faces: &mut OrtFaces,
    input: &EditInput,
    requests: &[Option<FaceRequest>],
    margin: f32,
) -> Result<Vec<Option<LocatedFace>>, JobFailure> {
    requests
        .iter()
        .enumerate()
        .map(|(i, request)| {
            let Some(request) = request else {
                return Ok(None);
            };
            let image = match i {
                0 => &input.target,
                i => &input.references[i - 1].0,
            };
            locate_image(faces, pipeline.manifest(), image, request, i > 0, margin).map(Some)
        })
        .collect()
}

/// The face `request` asks for in `image`, as large as the model needs. A reference's (`reference`)
/// face also as an aligned crop, which the edit and tuning then use: for a model whose face embedder
/// takes the paper's window (`face.embed_window`, sd2) the paper's alignment of the face from its
/// landmarks (`face::paper_aligned`, CelebA-HQ's crop); otherwise, when the face is tilted, its
/// square crop turned upright. Every command finds faces through this (`edit`, `serve` and `tune`).
pub fn locate_image(
    faces: &mut OrtFaces,
    manifest: &Manifest,
    image: &RgbImage,
    request: &FaceRequest,
    reference: bool,
    margin: f32,
) -> Result<LocatedFace, JobFailure> {
    let mut found = locate_face(faces, image, request.choice, min_face_side(manifest))
        .map_err(|e| JobFailure::face(&request.what, e))?;
    if reference && manifest.face.embed_window.is_some() {
        found.upright = paper_aligned(image, &found.landmarks);
    } else if reference {
        found.upright = upright_reference(image, &found, margin).map_err(|e| {
            JobFailure::new(FailureCode::BadInput, format!("{}: {e}", request.what))
        })?;
    }
    Ok(found)
}

fn edit<E: Engine>(
    pipeline: &mut Pipeline<E>,
    input: &EditInput,
    seed: u64,
    progress: Option<&ProgressSink>,
) -> Result<EditOutput, JobFailure> {
    #[cfg(debug_assertions)]
    if input.prompt == PANIC_PROBE_PROMPT {
        panic!("the test hook's prompt");
    }
    let mut on_step = |step, steps| {
        if let Some(report) = progress {
            report(Stage::Denoise, step, steps);
        }
    };
    Ok(pipeline.edit_with_progress(input, &mut SeededNoise::new(seed), &mut on_step)?)
}

/// Runs one request's work, turning a panic into a failure of that job.
fn run_caught<T>(
    what: &str,
    work: impl FnOnce() -> Result<T, JobFailure>,
) -> Result<T, JobFailure> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        let reason = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        tracing::error!(%reason, "the {what} panicked in its inference thread");
        // NOTE: not retryable: a panic is a bug that the same job would hit again.
        Err(JobFailure::new(
            FailureCode::ModelError,
            format!("internal error: the {what} panicked ({reason})"),
        ))
    })
}

/// Counts a thread as alive from its start to its end, however it ends.
struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        let left = self.0.fetch_sub(1, Ordering::AcqRel) - 1;
        if std::thread::panicking() {
            tracing::error!(alive = left, "an inference thread died");
        } else {
            tracing::debug!(alive = left, "an inference thread stopped");
        }
    }
}

/// How long starting a pool took: the slowest thread's model load and warm-up edit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Started {
    /// Seconds to load the model (sessions created, hashes checked).
    pub load_secs: f64,
    /// Seconds of the warm-up edit (0 when the pool was started without one).
    pub warmup_secs: f64,
}

/// Handles to the inference threads.
pub struct InferencePool {
    sender: Option<mpsc::Sender<Request>>,
    threads: Vec<JoinHandle<()>>,
    alive: Arc<AtomicUsize>,
    watch: Arc<EngineWatch>,
    /// The loaded model (name, version, adapter layout).
    pub model: ModelRef,
}

impl InferencePool {
    /// Starts `threads` threads and waits until every one has loaded the model (no warm-up; for
    /// the one-shot commands). Returns the load time of the slowest.
    pub fn start(settings: &Settings, threads: usize) -> Result<(Self, f64), LoadError> {
        let watch = Arc::new(EngineWatch::new(settings.health.probe_after_failures));
        let (pool, started) = Self::spawn(settings, threads, false, watch)?;
        Ok((pool, started.load_secs))
    }

    /// Starts `threads` threads and waits until every one has loaded the model and run the warm-up
    /// edit ([`warm_up`], `health.warmup_steps` steps) through its own sessions; the threads then
    /// report their engine failures to `watch` and run its probes. For the queue service, whose
    /// `/startupz` answers 200 only after this returns.
    pub fn start_warm(
        settings: &Settings,
        threads: usize,
        watch: Arc<EngineWatch>,
    ) -> Result<(Self, Started), LoadError> {
        Self::spawn(settings, threads, true, watch)
    }

    fn spawn(
        settings: &Settings,
        threads: usize,
        warm: bool,
        watch: Arc<EngineWatch>,
    ) -> Result<(Self, Started), LoadError> {
        let (sender, receiver) = mpsc::channel::<Request>();
        let receiver = Arc::new(Mutex::new(receiver));
        let alive = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        let mut ready = Vec::new();
        for i in 0..threads {
            let (ready_tx, ready_rx) = mpsc::channel::<Result<(ModelRef, Started), LoadError>>();
            ready.push(ready_rx);
            let settings = settings.clone();
            let receiver = Arc::clone(&receiver);
            let alive = Arc::clone(&alive);
            let watch = Arc::clone(&watch);
            let thread = std::thread::Builder::new()
                .name(format!("inference-{i}"))
                .spawn(move || {
                    let t = std::time::Instant::now();
                    let loaded = load_pipeline(&settings)
                        .and_then(|pipeline| Ok((pipeline, load_faces(&settings)?)));
                    let (mut pipeline, mut faces) = match loaded {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let load_secs = t.elapsed().as_secs_f64();
                    let steps = settings.health.warmup_steps;
                    let warmup_secs = if warm {
                        match run_caught("warm-up edit", || Ok(warm_up(&mut pipeline, steps)?)) {
                            Ok(secs) => secs,
                            Err(e) => {
                                let _ = ready_tx.send(Err(LoadError::Warmup(e.message)));
                                return;
                            }
                        }
                    } else {
                        0.0
                    };
                    alive.fetch_add(1, Ordering::AcqRel);
                    let _alive = Alive(alive);
                    let model = ModelRef::of(pipeline.manifest());
                    let started = Started {
                        load_secs,
                        warmup_secs,
                    };
                    let _ = ready_tx.send(Ok((model, started)));
                    serve_requests(&mut pipeline, &mut faces, &settings, &receiver, &watch);
                })
                .map_err(|e| LoadError::Thread(e.to_string()))?;
            handles.push(thread);
        }
        let mut model = None;
        let mut slowest = Started::default();
        for rx in ready {
            let (model_ref, started) = rx.recv().map_err(|_| {
                LoadError::Thread("an inference thread died while loading the model".into())
            })??;
            model = Some(model_ref);
            slowest.load_secs = slowest.load_secs.max(started.load_secs);
            slowest.warmup_secs = slowest.warmup_secs.max(started.warmup_secs);
        }
        Ok((
            Self {
                sender: Some(sender),
                threads: handles,
                alive,
                watch,
                model: model
                    .ok_or_else(|| LoadError::Thread("no inference thread (0 asked)".into()))?,
            },
            slowest,
        ))
    }

    /// The engine's health as the threads report it (`/healthz` reads its fault).
    pub fn engine_watch(&self) -> Arc<EngineWatch> {
        Arc::clone(&self.watch)
    }

    /// How many inference threads are running (0 after a failed start or when all have ended).
    pub fn alive(&self) -> usize {
        self.alive.load(Ordering::Acquire)
    }

    /// A handle that reads the number of running threads from anywhere (e.g. `/readyz`).
    pub fn alive_counter(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.alive)
    }

    fn send(&self, work: Work) -> Result<(), JobFailure> {
        let request = Request {
            work,
            span: tracing::Span::current(),
            progress: PROGRESS.try_with(Arc::clone).ok(),
        };
        self.sender
            .as_ref()
            .ok_or_else(stopped)?
            .send(request)
            .map_err(|_| stopped())
    }

    /// Stops taking requests and joins the threads once they finish their current one.
    pub fn shutdown(mut self) {
        self.sender.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn stopped() -> JobFailure {
    JobFailure::new(FailureCode::WorkerStopping, "the worker is shutting down")
}

/// An inference thread's loop: one request at a time until the pool's sender is dropped. After each
/// request its outcome goes to the engine watch, and when the watch asks, the thread runs the probe
/// (the warm-up edit) before taking the next request.
fn serve_requests(
    pipeline: &mut Pipeline<OrtEngine>,
    faces: &mut OrtFaces,
    settings: &Settings,
    receiver: &Mutex<mpsc::Receiver<Request>>,
    watch: &EngineWatch,
) {
    loop {
        // NOTE: the lock is held only while waiting for the next request.
        let request = match receiver.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(request) = request else { return };
        let outcome = {
            let _enter = request.span.enter();
            serve_one(
                pipeline,
                faces,
                settings,
                request.work,
                request.progress.as_ref(),
            )
        };
        if let Some(failures) = watch.record(outcome) {
            let steps = settings.health.warmup_steps;
            let probe = run_caught("engine probe", || Ok(warm_up(pipeline, steps)?));
            watch.probed(failures, probe.map_err(|f| f.message));
        }
    }
}

/// Runs one request's work and sends its reply; returns how it ended, for the engine watch.
fn serve_one(
    pipeline: &mut Pipeline<OrtEngine>,
    faces: &mut OrtFaces,
    settings: &Settings,
    work: Work,
    progress: Option<&ProgressSink>,
) -> Outcome {
    // The caller may have given up (shutdown deadline); nothing to do then.
    fn reply<T>(
        to: oneshot::Sender<Result<T, JobFailure>>,
        result: Result<T, JobFailure>,
    ) -> Outcome {
        let outcome = Outcome::of(&result);
        let _ = to.send(result);
        outcome
    }
    match work {
        Work::Edit {
            input,
            seed,
            reply: to,
        } => reply(
            to,
            run_caught("edit", || edit(pipeline, &input, seed, progress)),
        ),
        Work::Locate {
            input,
            requests,
            reply: to,
        } => reply(
            to,
            run_caught("face detection", || {
                locate(
                    pipeline,
                    faces,
                    &input,
                    &requests,
                    settings.pipeline.face_margin,
                )
            }),
        ),
        Work::Tune {
            references,
            reply: to,
        } => reply(
            to,
            run_caught("tuning", || {
                Ok(tune(pipeline, settings, &references, progress)?)
            }),
        ),
    }
}

impl Inference for InferencePool {
    fn model(&self) -> &ModelRef {
        &self.model
    }

    async fn edit(&self, input: Arc<EditInput>, seed: u64) -> Result<EditOutput, JobFailure> {
        let (reply, rx) = oneshot::channel();
        self.send(Work::Edit { input, seed, reply })?;
        rx.await.map_err(|_| stopped())?
    }

    async fn locate_faces(
        &self,
        input: Arc<EditInput>,
        requests: Vec<Option<FaceRequest>>,
    ) -> Result<Vec<Option<LocatedFace>>, JobFailure> {
        let (reply, rx) = oneshot::channel();
        self.send(Work::Locate {
            input,
            requests,
            reply,
        })?;
        rx.await.map_err(|_| stopped())?
    }

    async fn tune(
        &self,
        references: Vec<(RgbImage, Option<FaceBox>)>,
    ) -> Result<Tuned, JobFailure> {
        let (reply, rx) = oneshot::channel();
        self.send(Work::Tune { references, reply })?;
        rx.await.map_err(|_| stopped())?
    }
}
