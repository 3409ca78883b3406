//! `pva-worker edit`: the embedded default. Runs one job JSON (the same schema the queue carries) with
//! object keys resolved against a local directory, writes the outputs and the result JSON locally,
//! and prints per-stage timings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::Settings;
use crate::engine::{Engine, OrtEngine};
use crate::job::{CheckedJob, JobResult, OutputInfo};
use crate::pipeline::inpaint::{EditInput, EditOutput, Pipeline};
use crate::pipeline::noise::SeededNoise;
use crate::provenance::Signer;
use crate::storage::local::LocalStore;
use crate::worker::{self, JobFailure};

/// What `edit` was asked to do.
#[derive(Debug, Clone)]
pub struct EditOptions {
    /// The job JSON file.
    pub job: PathBuf,
    /// Directory the job's object keys are relative to (default: the job file's directory).
    pub root: Option<PathBuf>,
    /// Directory the outputs and `result.json` are written under.
    pub out: PathBuf,
    /// Also write a contact sheet PNG here.
    pub contact_sheet: Option<PathBuf>,
}

/// Loads the model's untuned adapter (visual + token) from the model directory.
pub fn load_base_adapter(model_dir: &Path, engine: &dyn Engine) -> anyhow::Result<Vec<f32>> {
    let spec = &engine.manifest().adapter;
    let bytes = std::fs::read(model_dir.join(&spec.file))?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes)?;
    let view = tensors.tensor(&spec.tensor)?;
    anyhow::ensure!(
        view.dtype() == safetensors::Dtype::F32,
        "adapter tensor `{}` is {:?}, expected F32",
        spec.tensor,
        view.dtype()
    );
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    anyhow::ensure!(
        values.len() == spec.visual_length + spec.token_length,
        "adapter has {} values, the manifest's layout {}",
        values.len(),
        spec.visual_length + spec.token_length
    );
    Ok(values)
}

/// Loads the engine and the pipeline from the settings.
pub fn load_pipeline(settings: &Settings) -> anyhow::Result<Pipeline<OrtEngine>> {
    let engine = OrtEngine::load(&settings.engine)?;
    let adapter = load_base_adapter(&settings.engine.model_dir, &engine)?;
    Ok(Pipeline::new(engine, adapter, settings.pipeline.clone()))
}

/// One job run on local files: what the pipeline got, what it made, and what was written.
pub struct LocalRun {
    /// The decoded inputs.
    pub input: EditInput,
    /// The pipeline's output (images, crop, mask, stage timings).
    pub edited: EditOutput,
    /// The written outputs (local paths as keys).
    pub outputs: Vec<OutputInfo>,
    /// Seconds reading the job's images.
    pub fetch_secs: f64,
    /// Seconds encoding, marking and writing the outputs.
    pub upload_secs: f64,
}

/// Reads a checked job's images from `inputs`, edits them with the job's seed, and writes the
/// marked outputs to `outputs` under their deterministic keys. Shared by `edit` and the benchmark's
/// in-process path.
pub fn run_local<E: Engine>(
    pipeline: &mut Pipeline<E>,
    signer: Option<&Signer>,
    settings: &Settings,
    job: &CheckedJob,
    inputs: &LocalStore,
    outputs: &LocalStore,
) -> Result<LocalRun, JobFailure> {
    let t = Instant::now();
    let mut objects = BTreeMap::new();
    for (_, key) in worker::input_keys(job) {
        let data = inputs.get(&key, settings.limits.max_image_bytes as u64)?;
        objects.insert(key, data);
    }
    let fetch_secs = t.elapsed().as_secs_f64();
    let input = worker::prepare(job, &objects, settings)?;
    let target_bytes = objects.remove(&job.request.target.key).unwrap_or_default();
    drop(objects);
    let edited = pipeline.edit(&input, &mut SeededNoise::new(job.request.seed))?;
    let t = Instant::now();
    let m = pipeline.manifest();
    let marking = worker::Marking {
        model: (&m.name, &m.version),
        target_bytes: &target_bytes,
        signer,
    };
    let encoded = worker::encode(job, &edited, &marking)?;
    let mut written = Vec::with_capacity(encoded.len());
    for ((key, data), out) in encoded.iter().zip(&edited.images) {
        let path = outputs.put(key, data)?;
        written.push(OutputInfo {
            key: path.display().to_string(),
            identity_score: out.identity_score,
            identity_check_passed: out.identity_score >= settings.pipeline.min_identity_score,
        });
    }
    Ok(LocalRun {
        input,
        edited,
        outputs: written,
        fetch_secs,
        upload_secs: t.elapsed().as_secs_f64(),
    })
}

/// Runs the job; returns its result (also written as `result.json` next to the outputs).
/// A job that cannot be done gives a `failed` result, not an `Err`; `Err` is for setup problems.
pub fn run(settings: &Settings, options: &EditOptions) -> anyhow::Result<JobResult> {
    let t0 = Instant::now();
    let signer = crate::provenance::Signer::from_settings(&settings.provenance)?;
    let mut pipeline = load_pipeline(settings)?;
    let load_secs = t0.elapsed().as_secs_f64();
    tracing::info!(
        model = %pipeline.manifest().name,
        version = %pipeline.manifest().version,
        seconds = load_secs,
        "model loaded"
    );
    let root = options.root.clone().unwrap_or_else(|| {
        options
            .job
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    });
    let inputs = LocalStore::new(root);
    let outputs = LocalStore::new(&options.out);
    let bytes = std::fs::read(&options.job)?;
    let job_id = worker::job_id_hint(&bytes);
    let consent = worker::consent_hint(&bytes);
    let span = tracing::info_span!("job", job_id = %job_id);
    let _guard = span.enter();

    let mut fetch_secs = 0.0;
    let mut upload_secs = 0.0;
    let outcome = (|| -> Result<(Vec<OutputInfo>, _), JobFailure> {
        let job = worker::parse(&bytes, settings)?;
        let run = run_local(
            &mut pipeline,
            signer.as_ref(),
            settings,
            &job,
            &inputs,
            &outputs,
        )?;
        fetch_secs = run.fetch_secs;
        upload_secs = run.upload_secs;
        if let Some(sheet) = &options.contact_sheet {
            let png = crate::contact_sheet::render(&run.input, &run.edited).map_err(|e| {
                JobFailure::new("model_error", format!("contact sheet: {e}"), false)
            })?;
            std::fs::write(sheet, png).map_err(|e| {
                JobFailure::new(
                    "storage_error",
                    format!("contact sheet {}: {e}", sheet.display()),
                    false,
                )
            })?;
        }
        Ok((run.outputs, run.edited.timings))
    })();
    let outcome_ref = outcome
        .as_ref()
        .map(|(infos, timings)| (infos.clone(), timings))
        .map_err(Clone::clone);
    let m = pipeline.manifest();
    let result = worker::result(
        (&m.name, &m.version),
        &job_id,
        consent,
        "edit",
        outcome_ref,
        &[
            ("fetch", fetch_secs),
            ("upload", upload_secs),
            ("model_load", load_secs),
        ],
    );
    std::fs::create_dir_all(&options.out)?;
    std::fs::write(
        options.out.join("result.json"),
        serde_json::to_vec_pretty(&result)?,
    )?;
    Ok(result)
}
