//! `pva-bench`: the benchmarks of the edit and of the queue service (benchmarks, not tests; timings
//! are printed, never asserted).
//!
//! - `pva-bench edit`: the library's [`Pipeline::edit`] in process against the Python reference
//!   (`python -m pva.bench.edit`, `pva.reference.edit`'s pipeline on the same model directory) on the same
//!   decoded inputs, steps, guidance and number of outputs, with the same ONNX Runtime intra-op
//!   threads, in one run: per-stage medians for both, the Rust/Python ratio of the whole edit, and
//!   the share of the Rust edit spent outside the engine's graph runs (timed by [`TimedEngine`], a
//!   wrapper around [`OrtEngine`]).
//! - `pva-bench throughput --jobs N`: N jobs through RabbitMQ and an s3s-fs server with one
//!   `pva-worker serve` process, and the same N jobs through the in-process `edit` path (local files
//!   in, local files out, the model loaded once), in one run and in alternating rounds: jobs per
//!   second for both and the ratio. The bench starts and stops the S3 server and the worker itself,
//!   with queue, exchange and bucket names of its own.
//!
//! `scripts/bench.sh` builds the release binaries and runs both; docs/benchmarks.md explains them.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::{Parser, Subcommand};
use ndarray::{Array2, Array3, Array4, ArrayView1, ArrayView2, ArrayView3, ArrayView4};
use pva_worker::commands::edit::local_runner;
use pva_worker::config::Settings;
use pva_worker::engine::{
    DenoiseInputs, Denoiser, Engine, EngineError, Manifest, OrtEngine, Tuner, TuningHyper,
};
use pva_worker::job::{flow, JobResult, JobStatus, Runner, RunnerOptions};
use pva_worker::pipeline::face;
use pva_worker::pipeline::inpaint::{EditInput, Pipeline};
use pva_worker::pipeline::noise::SeededNoise;
use pva_worker::pipeline::scheduler::SchedulerKind;
use pva_worker::queue::{JobClient, Results, ResultsQueue};
use pva_worker::service::{load_base_adapter, InferencePool};
use pva_worker::storage::local::LocalStore;
use pva_worker::storage::s3::S3Store;
use pva_worker::storage::ObjectStore;
use rand::distr::{Alphanumeric, SampleString};

#[derive(Debug, Parser)]
#[command(
    name = "pva-bench",
    about = "Benchmarks of the PVA edit and the queue worker"
)]
struct Cli {
    /// Settings file layered over the embedded defaults (model directory, ONNX Runtime library).
    #[arg(long, global = true, env = "PVA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// The Rust edit against the Python reference on the same graphs, stage by stage.
    Edit {
        /// The job whose photos, face boxes, mask and prompt are used.
        #[arg(long, default_value = "examples/job.json")]
        job: PathBuf,
        /// Denoising steps; one case per value (and per guidance).
        #[arg(long, value_delimiter = ',', default_values_t = [25u32, 50])]
        steps: Vec<u32>,
        /// Guidance scales; one case per value (1 = one conditional row, > 1 = batched CFG).
        #[arg(long, value_delimiter = ',', default_values_t = [1.0f32, 3.0])]
        guidance: Vec<f32>,
        /// Timed repetitions per case and side.
        #[arg(long, default_value_t = 9)]
        reps: usize,
        /// Untimed repetitions before them.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// ONNX Runtime intra-op threads on both sides (and torch's threads on the Python side).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// The Python interpreter with onnxruntime, torch and diffusers.
        #[arg(long, default_value = ".venv/bin/python")]
        python: PathBuf,
        /// Where the decoded inputs and both sides' raw results are written.
        #[arg(long, default_value = "target/bench/edit")]
        work: PathBuf,
    },
    /// N jobs through RabbitMQ + S3 (one `pva-worker serve`) against N in process.
    Throughput {
        /// Jobs per side.
        #[arg(long, default_value_t = 8)]
        jobs: usize,
        /// The job to send N times (unique job ids are set).
        #[arg(long, default_value = "examples/job.json")]
        job: PathBuf,
        /// Rounds; each runs N jobs on both paths, alternating which goes first.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Override the job's denoising steps.
        #[arg(long)]
        steps: Option<u32>,
        /// ONNX Runtime intra-op threads (worker and in process alike).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// The worker binary (a release build).
        #[arg(long, default_value = "target/release/pva-worker")]
        worker: PathBuf,
        /// The s3s-fs binary (scripts/setup-s3.sh installs it).
        #[arg(long, env = "S3S_FS", default_value = ".tools/bin/s3s-fs")]
        s3s_fs: PathBuf,
        /// RabbitMQ.
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        amqp_url: String,
        /// Scratch directory (S3 data, configs, logs, local outputs); removed at the end.
        #[arg(long, default_value = "target/bench/throughput")]
        work: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = Settings::load(cli.config.as_deref())
        .map_err(anyhow::Error::from)
        .and_then(|settings| match cli.command {
            Bench::Edit {
                job,
                steps,
                guidance,
                reps,
                warmup,
                threads,
                python,
                work,
            } => bench_edit(
                settings,
                &EditBench {
                    job,
                    steps,
                    guidance,
                    reps,
                    warmup,
                    threads,
                    python,
                    work,
                },
            ),
            Bench::Throughput {
                jobs,
                rounds,
                job,
                steps,
                threads,
                worker,
                s3s_fs,
                amqp_url,
                work,
            } => bench_throughput(
                settings,
                &ThroughputBench {
                    jobs,
                    rounds,
                    job,
                    steps,
                    threads,
                    worker,
                    s3s_fs,
                    amqp_url,
                    work,
                },
            ),
        });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pva-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Timing the engine
// ---------------------------------------------------------------------------------------------

/// Every engine call since the last [`TimedEngine::take`]: graph, start, duration.
#[derive(Debug, Clone, Default)]
struct GraphTimes {
    calls: Vec<(&'static str, Instant, Duration)>,
}

impl GraphTimes {
    fn add(&mut self, graph: &'static str, since: Instant) {
        self.calls.push((graph, since, since.elapsed()));
    }

    /// Seconds per graph.
    fn by_graph(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (graph, _, d) in &self.calls {
            *out.entry(graph.to_string()).or_default() += d.as_secs_f64();
        }
        out
    }

    /// Seconds per stage: each call counts for the stage it started in; `stages` are the edit's
    /// consecutive stages from `start`.
    fn by_stage(
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
struct TimedEngine<E> {
    inner: E,
    times: GraphTimes,
}

impl<E: Engine> TimedEngine<E> {
    fn new(inner: E) -> Self {
        Self {
            inner,
            times: GraphTimes::default(),
        }
    }

    /// The times since the last call, and a fresh start.
    fn take(&mut self) -> GraphTimes {
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

// ---------------------------------------------------------------------------------------------
// pva-bench edit
// ---------------------------------------------------------------------------------------------

/// Options of `pva-bench edit`.
struct EditBench {
    job: PathBuf,
    steps: Vec<u32>,
    guidance: Vec<f32>,
    reps: usize,
    warmup: usize,
    threads: usize,
    python: PathBuf,
    work: PathBuf,
}

/// One configuration both sides run.
#[derive(Debug, Clone, Copy)]
struct Case {
    steps: u32,
    guidance: f32,
}

/// One timed edit of either side.
#[derive(Debug, Clone, Default)]
struct RunTimes {
    /// Seconds per stage (`preprocess`, `encode`, `denoise`, `decode`).
    stages: BTreeMap<String, f64>,
    /// Seconds of the whole edit.
    total: f64,
    /// Seconds in graph runs, per graph.
    ort: BTreeMap<String, f64>,
    /// Seconds in graph runs, per stage.
    ort_by_stage: BTreeMap<String, f64>,
}

impl RunTimes {
    fn ort_total(&self) -> f64 {
        self.ort.values().sum()
    }
}

const STAGES: [&str; 4] = ["preprocess", "encode", "denoise", "decode"];

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn median_of(runs: &[RunTimes], pick: impl Fn(&RunTimes) -> f64) -> f64 {
    median(runs.iter().map(pick).collect())
}

/// Reads a job file and returns it as JSON with `patch` applied.
fn job_json(
    path: &Path,
    patch: impl FnOnce(&mut serde_json::Value),
) -> anyhow::Result<serde_json::Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut value: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    patch(&mut value);
    Ok(value)
}

/// The directory a job's object keys are relative to (as `pva-worker edit` resolves them).
fn job_root(job: &Path) -> PathBuf {
    job.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Parses, fetches (local files) and decodes a job: the decoded input both sides start from.
fn decode_job(
    bytes: &[u8],
    root: &Path,
    settings: &Settings,
) -> anyhow::Result<(pva_worker::job::CheckedJob, EditInput)> {
    let rules = RunnerOptions::from(settings);
    let job = flow::parse(bytes, &rules.limits, rules.rules)
        .map_err(|f| anyhow::anyhow!("the job: {f}"))?;
    let store = LocalStore::new(root);
    let mut objects = BTreeMap::new();
    for (_, key) in flow::input_keys(&job) {
        let data = store
            .get(&key, settings.limits.max_image_bytes as u64)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        objects.insert(key, data);
    }
    let input = flow::prepare(&job, &objects, &rules.limits)
        .map_err(|f| anyhow::anyhow!("the job: {f}"))?;
    Ok((job, input))
}

/// The crop rectangle the pipeline uses for a photo (the same rule as `Pipeline::edit`).
fn crop_of(
    image: &image::RgbImage,
    face_box: Option<face::FaceBox>,
    margin: f32,
) -> anyhow::Result<face::CropRect> {
    let (w, h) = image.dimensions();
    match face_box {
        Some(b) => Ok(face::crop_rect(b, margin, w, h)?),
        None if w == h => Ok(face::CropRect {
            x: 0,
            y: 0,
            size: w,
        }),
        None => bail!("a {w}x{h} photo without a face box"),
    }
}

fn photo_entry(name: &str, rect: face::CropRect) -> serde_json::Value {
    serde_json::json!({"image": name, "crop": {"x": rect.x, "y": rect.y, "size": rect.size}})
}

/// The scheduler as `pva.reference.edit` names it, with DDIM's eta.
fn python_scheduler(kind: SchedulerKind) -> (&'static str, f32) {
    match kind {
        SchedulerKind::Ddim { eta } => ("ddim", eta),
        SchedulerKind::DpmSolverPlusPlus => ("dpm", 0.0),
    }
}

fn bench_edit(mut settings: Settings, opts: &EditBench) -> anyhow::Result<()> {
    ensure!(
        opts.reps > 0 && !opts.steps.is_empty() && !opts.guidance.is_empty(),
        "need at least one repetition, step count and guidance"
    );
    settings.engine.intra_threads = opts.threads;
    let model_dir = std::fs::canonicalize(&settings.engine.model_dir)
        .with_context(|| format!("model directory {}", settings.engine.model_dir.display()))?;
    settings.engine.model_dir = model_dir.clone();

    let cases: Vec<Case> = opts
        .steps
        .iter()
        .flat_map(|&steps| {
            opts.guidance
                .iter()
                .map(move |&guidance| Case { steps, guidance })
        })
        .collect();
    // NOTE: one output per edit: `pva.reference.edit`'s pipeline makes one image per call.
    let base = job_json(&opts.job, |v| v["num_outputs"] = 1.into())?;
    let root = job_root(&opts.job);
    let (job, input) = decode_job(&serde_json::to_vec(&base)?, &root, &settings)?;

    let engine = OrtEngine::load(&settings.engine)?;
    let adapter = load_base_adapter(&settings.engine.model_dir, engine.manifest())?;
    let manifest = engine.manifest().clone();
    let mut pipeline = Pipeline::new(
        TimedEngine::new(engine),
        adapter,
        (&settings.pipeline).into(),
    );

    // The decoded inputs for the Python side: the same pixels, crops and model-size mask.
    std::fs::create_dir_all(&opts.work)?;
    let margin = settings.pipeline.face_margin;
    input.target.save(opts.work.join("target.png"))?;
    let mut references = Vec::new();
    for (i, (image, face_box)) in input.references.iter().enumerate() {
        let name = format!("reference{i}.png");
        image.save(opts.work.join(&name))?;
        references.push(photo_entry(&name, crop_of(image, *face_box, margin)?));
    }
    let first = pipeline.edit(&input, &mut SeededNoise::new(job.request.seed))?;
    first.mask.to_image().save(opts.work.join("mask.png"))?;
    let (scheduler, eta) = python_scheduler(input.scheduler);
    let spec = serde_json::json!({
        "model": model_dir,
        "threads": opts.threads,
        "warmup": opts.warmup,
        "reps": opts.reps,
        "target": photo_entry("target.png", crop_of(&input.target, input.target_face, margin)?),
        "mask": "mask.png",
        "references": references,
        "prompt": input.prompt,
        "negative_prompt": input.negative_prompt,
        "feather_px": settings.pipeline.feather_px,
        "cases": cases.iter().map(|c| serde_json::json!({
            "steps": c.steps, "guidance": c.guidance, "scheduler": scheduler, "eta": eta,
            "seed": job.request.seed,
        })).collect::<Vec<_>>(),
    });
    let spec_path = opts.work.join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec)?)?;

    println!(
        "pva-bench edit: model {} {}, {}x{} photo, {} reference(s), mask {}, {} scheduler, 1 output; \
         ORT intra-op threads {} on both sides; median of {} repetitions after {} warm-up",
        manifest.name,
        manifest.version,
        input.target.width(),
        input.target.height(),
        input.references.len(),
        mask_name(&base),
        scheduler,
        opts.threads,
        opts.reps,
        opts.warmup,
    );

    // One side at a time, never both at once on the shared cores; repetitions alternate (and which
    // side goes first alternates too) so that both see the same drift in the machine's load.
    let mut python = PythonSide::start(&opts.python, &spec_path)?;
    let mut rust_runs: Vec<Vec<RunTimes>> = Vec::new();
    let mut python_runs: Vec<Vec<RunTimes>> = Vec::new();
    for (case, case_json) in cases.iter().zip(spec["cases"].as_array().expect("cases")) {
        let mut case_input = input.clone();
        case_input.steps = case.steps as usize;
        case_input.guidance = case.guidance;
        let (mut rust, mut py) = (Vec::new(), Vec::new());
        for rep in 0..opts.warmup + opts.reps {
            let (r, p) = if rep % 2 == 0 {
                let r = rust_run(&mut pipeline, &case_input, job.request.seed)?;
                (r, python.run(case_json)?)
            } else {
                let p = python.run(case_json)?;
                (rust_run(&mut pipeline, &case_input, job.request.seed)?, p)
            };
            if rep >= opts.warmup {
                rust.push(r);
                py.push(p);
            }
        }
        rust_runs.push(rust);
        python_runs.push(py);
    }
    python.finish()?;
    drop(pipeline);

    let mut summary = Vec::new();
    for ((case, rust), python) in cases.iter().zip(&rust_runs).zip(&python_runs) {
        summary.push(print_case(*case, rust, python));
    }
    println!();
    println!("summary (medians; `best` = fastest repetition of each side):");
    println!(
        "  {:<22} {:>10} {:>10} {:>12} {:>12} {:>14}",
        "case", "rust ms", "python ms", "rust/python", "best ratio", "rust outside"
    );
    for s in &summary {
        println!(
            "  {:<22} {:>10.1} {:>10.1} {:>11.2}x {:>11.2}x {:>13.1}%",
            s.label,
            s.rust * 1e3,
            s.python * 1e3,
            s.rust / s.python,
            s.rust_best / s.python_best,
            100.0 * s.outside
        );
    }
    println!("  goals: rust/python <= 0.70x; rust time outside graph runs <= 5% of the edit");
    Ok(())
}

fn mask_name(job: &serde_json::Value) -> String {
    match &job["mask"] {
        serde_json::Value::Object(m) => match m.get("region").and_then(|r| r.as_str()) {
            Some(region) => format!("region {region}"),
            None if m.contains_key("box") => "box".into(),
            None => "image".into(),
        },
        _ => "?".into(),
    }
}

/// One timed Rust edit.
fn rust_run(
    pipeline: &mut Pipeline<TimedEngine<OrtEngine>>,
    input: &EditInput,
    seed: u64,
) -> anyhow::Result<RunTimes> {
    pipeline.engine_mut().take();
    let mut noise = SeededNoise::new(seed);
    let t = Instant::now();
    let out = pipeline.edit(input, &mut noise)?;
    let total = t.elapsed().as_secs_f64();
    let graphs = pipeline.engine_mut().take();
    Ok(RunTimes {
        stages: out
            .timings
            .stages
            .iter()
            .map(|(s, secs)| (s.to_string(), *secs))
            .collect(),
        total,
        ort: graphs.by_graph(),
        ort_by_stage: graphs.by_stage(t, &out.timings.stages),
    })
}

/// `python -m pva.bench.edit --serve`: the Python reference loaded once, one edit per request line.
struct PythonSide {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl PythonSide {
    /// Starts the script and waits for its `ready` line (the sessions are loaded then).
    fn start(python: &Path, spec: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(python)
            .args(["-m", "pva.bench.edit"])
            .arg("--spec")
            .arg(spec)
            .arg("--serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", python.display()))?;
        let stdin = child.stdin.take();
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut side = Self {
            child,
            stdin,
            stdout,
        };
        let ready = side.read_line()?;
        ensure!(
            ready["ready"].as_bool() == Some(true),
            "pva.bench.edit did not say ready: {ready}"
        );
        Ok(side)
    }

    fn read_line(&mut self) -> anyhow::Result<serde_json::Value> {
        use std::io::BufRead;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!("pva.bench.edit ended ({status}); its error is above");
        }
        serde_json::from_str(&line).with_context(|| format!("pva.bench.edit said {line:?}"))
    }

    /// One Python edit of `case` (`{steps, guidance, scheduler, eta, seed}`).
    fn run(&mut self, case: &serde_json::Value) -> anyhow::Result<RunTimes> {
        let stdin = self
            .stdin
            .as_mut()
            .context("pva.bench.edit's stdin is closed")?;
        writeln!(stdin, "{case}")?;
        stdin.flush()?;
        let run = self.read_line()?;
        let seconds = |v: &serde_json::Value| -> BTreeMap<String, f64> {
            v.as_object()
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(RunTimes {
            stages: seconds(&run["stages"]),
            total: run["total"]
                .as_f64()
                .with_context(|| format!("pva.bench.edit: no `total` in {run}"))?,
            ort: seconds(&run["ort"]),
            ort_by_stage: seconds(&run["ort_by_stage"]),
        })
    }

    /// Closes its input and waits for it to exit.
    fn finish(mut self) -> anyhow::Result<()> {
        self.stdin.take();
        let status = self.child.wait()?;
        ensure!(status.success(), "pva.bench.edit exited with {status}");
        Ok(())
    }
}

impl Drop for PythonSide {
    fn drop(&mut self) {
        self.stdin.take();
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One line of the summary.
struct CaseSummary {
    label: String,
    /// Median seconds of the whole edit.
    rust: f64,
    python: f64,
    /// Fastest repetition's seconds (the least disturbed by other load on the machine).
    rust_best: f64,
    python_best: f64,
    /// Median share of the Rust edit outside graph runs.
    outside: f64,
}

fn print_case(case: Case, rust: &[RunTimes], python: &[RunTimes]) -> CaseSummary {
    let label = format!("{} steps, guidance {}", case.steps, case.guidance);
    println!();
    println!("== {label} ==");
    println!(
        "  {:<18} {:>10} {:>10} {:>12} {:>14} {:>14}",
        "stage (median)", "rust ms", "python ms", "rust/python", "rust outside", "python outside"
    );
    let row = |name: &str, r: f64, p: f64| {
        // A graph only one side calls (the Rust engine's one-off UNet binding) has no ratio.
        let ratio = if p > 0.0 {
            format!("{:.2}x", r / p)
        } else {
            "-".into()
        };
        println!(
            "  {:<18} {:>10.2} {:>10.2} {:>12}",
            name,
            r * 1e3,
            p * 1e3,
            ratio
        );
    };
    let stage_secs = |r: &RunTimes, stage: &str| r.stages.get(stage).copied().unwrap_or(0.0);
    let outside = |r: &RunTimes, stage: &str| {
        stage_secs(r, stage) - r.ort_by_stage.get(stage).copied().unwrap_or(0.0)
    };
    for stage in STAGES {
        println!(
            "  {:<18} {:>10.2} {:>10.2} {:>11.2}x {:>11.2} ms {:>11.2} ms",
            stage,
            median_of(rust, |r| stage_secs(r, stage)) * 1e3,
            median_of(python, |r| stage_secs(r, stage)) * 1e3,
            median_of(rust, |r| stage_secs(r, stage)) / median_of(python, |r| stage_secs(r, stage)),
            median_of(rust, |r| outside(r, stage)) * 1e3,
            median_of(python, |r| outside(r, stage)) * 1e3,
        );
    }
    let (rust_total, python_total) = (median_of(rust, |r| r.total), median_of(python, |r| r.total));
    row("whole edit", rust_total, python_total);
    let mut graphs: Vec<&String> = rust
        .iter()
        .chain(python)
        .flat_map(|r| r.ort.keys())
        .collect();
    graphs.sort();
    graphs.dedup();
    println!("  graph runs (median ms per edit, all calls of the graph)");
    for g in graphs {
        row(
            &format!("  {g}"),
            median_of(rust, |r| r.ort.get(g).copied().unwrap_or(0.0)),
            median_of(python, |r| r.ort.get(g).copied().unwrap_or(0.0)),
        );
    }
    let rust_ort = median_of(rust, |r| r.ort_total());
    let python_ort = median_of(python, |r| r.ort_total());
    row("all graph runs", rust_ort, python_ort);
    let share = |runs: &[RunTimes]| median_of(runs, |r| 1.0 - r.ort_total() / r.total);
    let (rust_outside, python_outside) = (share(rust), share(python));
    println!(
        "  outside graph runs: rust {:.2} ms ({:.1}% of the edit), python {:.2} ms ({:.1}%)",
        median_of(rust, |r| r.total - r.ort_total()) * 1e3,
        100.0 * rust_outside,
        median_of(python, |r| r.total - r.ort_total()) * 1e3,
        100.0 * python_outside
    );
    println!(
        "  whole edit rust/python: {:.2}x (goal <= 0.70x); rust outside graph runs {:.1}% (goal <= 5%)",
        rust_total / python_total,
        100.0 * rust_outside
    );
    let best = |runs: &[RunTimes]| runs.iter().map(|r| r.total).fold(f64::INFINITY, f64::min);
    CaseSummary {
        label,
        rust: rust_total,
        python: python_total,
        rust_best: best(rust),
        python_best: best(python),
        outside: rust_outside,
    }
}

// ---------------------------------------------------------------------------------------------
// pva-bench throughput
// ---------------------------------------------------------------------------------------------

/// Options of `pva-bench throughput`.
struct ThroughputBench {
    jobs: usize,
    rounds: usize,
    job: PathBuf,
    steps: Option<u32>,
    threads: usize,
    worker: PathBuf,
    s3s_fs: PathBuf,
    amqp_url: String,
    work: PathBuf,
}

/// Child processes the bench started, stopped by their PID when dropped (also on errors).
#[derive(Default)]
struct Children {
    list: Vec<(&'static str, Child)>,
}

impl Children {
    /// Asks `name` to stop (SIGTERM), waits up to `grace`, then kills it.
    fn stop(&mut self, name: &str, grace: Duration) {
        let Some(pos) = self.list.iter().position(|(n, _)| *n == name) else {
            return;
        };
        let (_, mut child) = self.list.remove(pos);
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.list {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Status code of `GET path` on 127.0.0.1:`port`, or `None` when nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `ready` every 50 ms until it holds, or fails after `within` with `what` and `log`.
fn wait_for(
    within: Duration,
    what: &str,
    log: &Path,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !ready() {
        if Instant::now() > deadline {
            bail!(
                "{what} not ready after {within:?}; log {}:\n{}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Names of this run's queues, exchanges and buckets.
struct Names {
    jobs: String,
    dlx: String,
    dead: String,
    results: String,
    observed: String,
    input_bucket: String,
    output_bucket: String,
}

impl Names {
    fn new() -> Self {
        let id = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
        );
        Self {
            jobs: format!("bench.{id}.jobs"),
            dlx: format!("bench.{id}.dlx"),
            dead: format!("bench.{id}.dead"),
            results: format!("bench.{id}.results"),
            observed: format!("bench.{id}.observed"),
            input_bucket: format!("bench-in-{id}"),
            output_bucket: format!("bench-out-{id}"),
        }
    }
}

/// The settings file both the worker and the in-process path load, so that both run alike.
#[allow(clippy::too_many_arguments)]
fn worker_config(
    settings: &Settings,
    opts: &ThroughputBench,
    names: &Names,
    endpoint: &str,
    access_key: &str,
    secret_key: &str,
    metrics_port: u16,
) -> String {
    format!(
        r#"# Written by pva-bench throughput.
[engine]
model_dir = "{model}"
ort_library = "{ort}"
intra_threads = {threads}
[worker]
id = "bench-worker"
concurrency = 1
[amqp]
url = "{amqp}"
job_queue = "{jobs}"
dead_letter_exchange = "{dlx}"
dead_letter_queue = "{dead}"
result_exchange = "{results}"
result_routing_key = "result"
[s3]
endpoint = "{endpoint}"
force_path_style = true
access_key_id = "{access_key}"
secret_access_key = "{secret_key}"
input_bucket = "{input}"
output_buckets = ["{output}"]
sse = "none"
[metrics]
listen = "127.0.0.1:{metrics_port}"
[logging]
format = "json"
level = "warn"
"#,
        model = settings.engine.model_dir.display(),
        ort = settings.engine.ort_library.display(),
        threads = opts.threads,
        amqp = opts.amqp_url,
        jobs = names.jobs,
        dlx = names.dlx,
        dead = names.dead,
        results = names.results,
        input = names.input_bucket,
        output = names.output_bucket,
    )
}

/// Per-stage seconds summed over results, and the number of results.
#[derive(Debug, Default)]
struct StageSums {
    sums: BTreeMap<String, f64>,
    jobs: usize,
}

impl StageSums {
    fn add(&mut self, timings: &BTreeMap<String, f64>) {
        for (stage, secs) in timings {
            *self.sums.entry(stage.clone()).or_default() += secs;
        }
        self.jobs += 1;
    }

    fn merge(&mut self, other: &StageSums) {
        for (stage, secs) in &other.sums {
            *self.sums.entry(stage.clone()).or_default() += secs;
        }
        self.jobs += other.jobs;
    }

    fn mean_ms(&self, stage: &str) -> f64 {
        self.sums.get(stage).copied().unwrap_or(0.0) * 1e3 / self.jobs.max(1) as f64
    }
}

fn bench_throughput(mut settings: Settings, opts: &ThroughputBench) -> anyhow::Result<()> {
    ensure!(
        opts.jobs > 0 && opts.rounds > 0,
        "--jobs and --rounds must be at least 1"
    );
    for (what, path) in [("worker", &opts.worker), ("s3s-fs", &opts.s3s_fs)] {
        ensure!(
            path.is_file(),
            "the {what} binary is missing at {} (scripts/bench.sh builds and installs both)",
            path.display()
        );
    }
    let absolute = |p: &Path| std::fs::canonicalize(p).with_context(|| p.display().to_string());
    settings.engine.model_dir = absolute(&settings.engine.model_dir)?;
    settings.engine.ort_library = absolute(&settings.engine.ort_library)?;
    let work = opts.work.join(std::process::id().to_string());
    std::fs::create_dir_all(&work)?;
    let work = absolute(&work)?;
    let outcome = run_throughput(&settings, opts, &work);
    let _ = std::fs::remove_dir_all(&work);
    outcome
}

/// The job bodies: the job file with unique ids, the bench's output prefix and optional steps.
fn job_bodies(
    opts: &ThroughputBench,
    tag: &str,
    count: usize,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    (0..count)
        .map(|i| {
            let id = format!("bench-{tag}-{i:03}");
            let value = job_json(&opts.job, |v| {
                v["job_id"] = id.clone().into();
                v["output"]["prefix"] = "bench".into();
                if let Some(steps) = opts.steps {
                    v["steps"] = steps.into();
                }
            })?;
            Ok((id, serde_json::to_vec(&value)?))
        })
        .collect()
}

fn run_throughput(settings: &Settings, opts: &ThroughputBench, work: &Path) -> anyhow::Result<()> {
    let names = Names::new();
    let mut children = Children::default();

    // The S3 server, with credentials of its own.
    let s3_port = free_port()?;
    let access_key = Alphanumeric.sample_string(&mut rand::rng(), 20);
    let secret_key = Alphanumeric.sample_string(&mut rand::rng(), 40);
    let s3_data = work.join("s3");
    std::fs::create_dir_all(&s3_data)?;
    let s3_log = work.join("s3s-fs.log");
    let child = Command::new(&opts.s3s_fs)
        .args(["--host", "127.0.0.1", "--port", &s3_port.to_string()])
        .args(["--access-key", &access_key, "--secret-key", &secret_key])
        .arg(&s3_data)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&s3_log)?)
        .stderr(std::fs::File::create(work.join("s3s-fs.err"))?)
        .spawn()
        .with_context(|| format!("starting {}", opts.s3s_fs.display()))?;
    children.list.push(("s3s-fs", child));
    wait_for(Duration::from_secs(10), "s3s-fs", &s3_log, || {
        TcpStream::connect(("127.0.0.1", s3_port)).is_ok()
    })?;
    let endpoint = format!("http://127.0.0.1:{s3_port}");

    let metrics_port = free_port()?;
    let config_path = work.join("worker.toml");
    std::fs::write(
        &config_path,
        worker_config(
            settings,
            opts,
            &names,
            &endpoint,
            &access_key,
            &secret_key,
            metrics_port,
        ),
    )?;
    // The very settings the worker loads (the embedded defaults, this file, PVA__* variables).
    let bench_settings = Settings::load(Some(&config_path))?;
    let root = job_root(&opts.job);
    let input_keys: Vec<String> = {
        let (_, body) = &job_bodies(opts, "keys", 1)?[0];
        let rules = RunnerOptions::from(&bench_settings);
        let job = flow::parse(body, &rules.limits, rules.rules)
            .map_err(|f| anyhow::anyhow!("the job: {f}"))?;
        flow::input_keys(&job).into_iter().map(|(_, k)| k).collect()
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let store = runtime.block_on(S3Store::new(&bench_settings.s3));
    runtime.block_on(async {
        store
            .ensure_bucket(&names.input_bucket)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        store
            .ensure_bucket(&names.output_bucket)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let local = LocalStore::new(&root);
        for key in &input_keys {
            let bytes = local
                .get(key, u64::MAX)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            store
                .put(&names.input_bucket, key, bytes, "application/octet-stream")
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        anyhow::Ok(())
    })?;

    // The worker.
    let err_log = work.join("worker.err");
    let child = Command::new(&opts.worker)
        .arg("--config")
        .arg(&config_path)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(work.join("worker.log"))?)
        .stderr(std::fs::File::create(&err_log)?)
        .spawn()
        .with_context(|| format!("starting {}", opts.worker.display()))?;
    children.list.push(("worker", child));
    wait_for(Duration::from_secs(120), "the worker", &err_log, || {
        http_status(metrics_port, "/readyz") == Some(200)
    })?;

    let measured = runtime.block_on(QueueSide::connect(&bench_settings, &names));
    let outcome = measured.and_then(|mut queue| {
        let mut local = LocalSide::load(&runtime, &bench_settings, &root, work)?;
        let rounds = measure_rounds(opts, &runtime, &mut queue, &mut local);
        runtime.block_on(queue.close());
        rounds
    });
    children.stop("worker", Duration::from_secs(30));
    children.stop("s3s-fs", Duration::from_secs(5));
    runtime.block_on(delete_topology(&bench_settings, &names));
    let rounds = outcome.with_context(|| {
        format!(
            "the throughput run failed; worker log:\n{}",
            std::fs::read_to_string(&err_log).unwrap_or_default()
        )
    })?;
    print_throughput(opts, &rounds)
}

/// Seconds and per-stage sums of one round of N jobs on each path.
struct Round {
    queue: (f64, StageSums),
    local: (f64, StageSums),
}

/// One warm-up job on each path, then `rounds` rounds of N jobs on each; which path goes first
/// alternates, so that both see the same drift in the machine's load.
fn measure_rounds(
    opts: &ThroughputBench,
    runtime: &tokio::runtime::Runtime,
    queue: &mut QueueSide,
    local: &mut LocalSide,
) -> anyhow::Result<Vec<Round>> {
    let warm = job_bodies(opts, "warm", 1)?;
    runtime.block_on(queue.run(&warm))?;
    local.run(runtime, &warm)?;
    let mut rounds = Vec::new();
    for round in 0..opts.rounds {
        let queue_jobs = job_bodies(opts, &format!("q{round}"), opts.jobs)?;
        let local_jobs = job_bodies(opts, &format!("l{round}"), opts.jobs)?;
        let (q, l) = if round % 2 == 0 {
            let q = runtime.block_on(queue.run(&queue_jobs))?;
            (q, local.run(runtime, &local_jobs)?)
        } else {
            let l = local.run(runtime, &local_jobs)?;
            (runtime.block_on(queue.run(&queue_jobs))?, l)
        };
        rounds.push(Round { queue: q, local: l });
    }
    Ok(rounds)
}

fn print_throughput(opts: &ThroughputBench, rounds: &[Round]) -> anyhow::Result<()> {
    let job = job_json(&opts.job, |_| {})?;
    println!(
        "pva-bench throughput: {} round(s) of {} jobs per path ({} steps, guidance {}, {} output(s) \
         each) after one warm-up job each; ORT intra-op threads {}; worker concurrency 1",
        rounds.len(),
        opts.jobs,
        opts.steps
            .map(serde_json::Value::from)
            .unwrap_or_else(|| job["steps"].clone()),
        job["guidance"],
        job["num_outputs"],
        opts.threads
    );
    let n = opts.jobs as f64;
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "  round {i}: queue {:.3} jobs/s, in process {:.3} jobs/s, ratio {:.3}x",
            n / r.queue.0,
            n / r.local.0,
            r.local.0 / r.queue.0
        );
    }
    let mut queue = StageSums::default();
    let mut local = StageSums::default();
    let (mut queue_secs, mut local_secs) = (0.0, 0.0);
    for r in rounds {
        queue.merge(&r.queue.1);
        local.merge(&r.local.1);
        queue_secs += r.queue.0;
        local_secs += r.local.0;
    }
    let total = n * rounds.len() as f64;
    println!(
        "  {:<34} {:>9} {:>9}",
        "mean per job (ms)", "queue", "in-proc"
    );
    let stages: std::collections::BTreeSet<&String> =
        queue.sums.keys().chain(local.sums.keys()).collect();
    for stage in stages {
        println!(
            "  {:<34} {:>9.1} {:>9.1}",
            stage,
            queue.mean_ms(stage),
            local.mean_ms(stage)
        );
    }
    println!(
        "  {:<34} {:>9.1} {:>9.1}",
        "wall time per job",
        queue_secs * 1e3 / total,
        local_secs * 1e3 / total
    );
    let (queue_rate, local_rate) = (total / queue_secs, total / local_secs);
    println!(
        "  RabbitMQ + S3 (pva-worker serve): {queue_secs:.2} s for {total} jobs = {queue_rate:.3} jobs/s"
    );
    println!(
        "  in process (edit path):           {local_secs:.2} s for {total} jobs = {local_rate:.3} jobs/s"
    );
    println!(
        "  queue/in-process throughput: {:.3}x (goal >= 0.9x)",
        queue_rate / local_rate
    );
    Ok(())
}

/// The bench's side of the broker: a client publishing jobs and a queue of every result.
struct QueueSide {
    client: JobClient,
    results: Results,
    queue: String,
}

impl QueueSide {
    /// Connects, declares the worker's topology (idempotent) and binds a queue to the results.
    async fn connect(settings: &Settings, names: &Names) -> anyhow::Result<Self> {
        let client =
            JobClient::connect(&settings.amqp, settings.worker.delivery_limit, "pva-bench")
                .await
                .context("connecting to RabbitMQ")?;
        let results = client
            .results(ResultsQueue::Bound {
                queue: &names.observed,
                exchange: &names.results,
                routing_key: "#",
            })
            .await?;
        Ok(Self {
            client,
            results,
            queue: names.jobs.clone(),
        })
    }

    /// Publishes every job, then waits for every result. Returns the seconds from the first
    /// publish to the last result, and the results' timings.
    async fn run(&mut self, bodies: &[(String, Vec<u8>)]) -> anyhow::Result<(f64, StageSums)> {
        let t = Instant::now();
        for (_, body) in bodies {
            self.client
                .publish_job(&self.queue, body, None, None)
                .await?;
        }
        let mut sums = StageSums::default();
        while sums.jobs < bodies.len() {
            let body = tokio::time::timeout(Duration::from_secs(600), self.results.next())
                .await
                .context("no result within 10 minutes")?
                .context("the result consumer ended")??;
            let result: JobResult = serde_json::from_slice(&body)?;
            if result.status != JobStatus::Succeeded {
                bail!("job {} failed: {:?}", result.job_id, result.error);
            }
            sums.add(&result.timings);
        }
        Ok((t.elapsed().as_secs_f64(), sums))
    }

    async fn close(self) {
        self.client.close().await;
    }
}

/// Deletes this run's queues and exchanges (best effort: the bench's numbers are already taken).
async fn delete_topology(settings: &Settings, names: &Names) {
    let Ok(client) =
        JobClient::connect(&settings.amqp, settings.worker.delivery_limit, "pva-bench").await
    else {
        return;
    };
    client
        .delete(
            &[&names.jobs, &names.dead, &names.observed],
            &[&names.dlx, &names.results],
        )
        .await;
    client.close().await;
}

/// The in-process `edit` path: `pva-worker edit`'s job runner (local files, the same provenance
/// marking, outputs and `result.json` written) with the model loaded once.
struct LocalSide {
    runner: Runner<LocalStore, InferencePool>,
    jobs_dir: PathBuf,
}

impl LocalSide {
    fn load(
        runtime: &tokio::runtime::Runtime,
        settings: &Settings,
        root: &Path,
        work: &Path,
    ) -> anyhow::Result<Self> {
        let jobs_dir = work.join("local-jobs");
        std::fs::create_dir_all(&jobs_dir)?;
        // A stored result would be answered without running the job: start from an empty store.
        let out = work.join("local-out");
        let _ = std::fs::remove_dir_all(&out);
        let (runner, _) = runtime.block_on(local_runner(settings, root, &out))?;
        Ok(Self { runner, jobs_dir })
    }

    /// Writes the job files, then runs them one after the other. Returns the seconds for all of
    /// them (from reading the first job file) and their timings.
    fn run(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        bodies: &[(String, Vec<u8>)],
    ) -> anyhow::Result<(f64, StageSums)> {
        for (id, body) in bodies {
            std::fs::write(self.jobs_dir.join(format!("{id}.json")), body)?;
        }
        let mut sums = StageSums::default();
        let t = Instant::now();
        for (id, _) in bodies {
            let bytes = std::fs::read(self.jobs_dir.join(format!("{id}.json")))?;
            let done = runtime
                .block_on(self.runner.run(&bytes))
                .map_err(|f| anyhow::anyhow!("job {id}: {f}"))?;
            sums.add(&done.result.timings);
        }
        Ok((t.elapsed().as_secs_f64(), sums))
    }
}
