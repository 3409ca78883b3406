//! `pva-bench edit`: the Rust edit against the Python reference on the same decoded inputs; the
//! case loop ([`bench_edit`]), the job decoding and the Rust side's timed run ([`rust_run`]).

mod python;
mod report;
pub(crate) mod timed;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use pva_worker::config::Settings;
use pva_worker::engine::{Engine, OrtEngine};
use pva_worker::job::{flow, RunnerOptions};
use pva_worker::pipeline::face;
use pva_worker::pipeline::inpaint::{EditInput, Pipeline};
use pva_worker::pipeline::noise::SeededNoise;
use pva_worker::pipeline::scheduler::SchedulerKind;
use pva_worker::service::load_base_adapter;
use pva_worker::storage::local::LocalStore;

use crate::jobs::{job_json, job_root};
use python::PythonSide;
use report::{print_case, RunTimes};
use timed::TimedEngine;

/// Options of `pva-bench edit`.
pub(crate) struct EditBench {
    pub(crate) job: PathBuf,
    pub(crate) steps: Vec<u32>,
    pub(crate) guidance: Vec<f32>,
    pub(crate) reps: usize,
    pub(crate) warmup: usize,
    pub(crate) threads: usize,
    pub(crate) python: PathBuf,
    pub(crate) work: PathBuf,
}

/// One configuration both sides run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Case {
    pub(crate) steps: u32,
    pub(crate) guidance: f32,
}

/// Parses, fetches (local files) and decodes a job: the decoded input both sides start from.
fn decode_job(
    bytes: &[u8],
    root: &Path,
    settings: &Settings,
) -> anyhow::Result<(pva_worker::job::CheckedJob, EditInput)> {
    let rules = RunnerOptions::from(settings);
    let job = flow::parse(bytes, &rules.limits, rules.rules, &rules.presets)
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

pub(crate) fn bench_edit(mut settings: Settings, opts: &EditBench) -> anyhow::Result<()> {
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
