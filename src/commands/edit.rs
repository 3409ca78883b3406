//! `pva-worker edit`: the embedded default. Runs one job JSON (the same schema the queue carries)
//! through the same job runner as `serve`, over a local store: the job's keys are read from a local
//! directory, the outputs, `result.json` and any tuned adapter are written under the output
//! directory at the keys `serve` would use in S3.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::config::Settings;
use crate::job::{
    flow, Done, JobFailure, JobResult, NoObserver, OutputBuckets, Runner, RunnerOptions,
};
use crate::provenance::Signer;
use crate::service::InferencePool;
use crate::storage::local::LocalStore;

/// The local store's name for the directory the job's keys are read from.
const INPUT_BUCKET: &str = "@inputs";
/// The worker id `edit` reports in results.
pub const WORKER_ID: &str = "edit";

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

/// What `edit` did.
#[derive(Debug, Clone)]
pub struct EditReport {
    /// The job's result (also written to `result_path`).
    pub result: JobResult,
    /// Where `result.json` is.
    pub result_path: PathBuf,
    /// The outputs' paths, in index order.
    pub output_paths: Vec<PathBuf>,
    /// Seconds loading the model.
    pub model_load_secs: f64,
    /// Whether the job's result was already stored under the output directory and answered as is.
    pub republished: bool,
    /// Whether a contact sheet was written.
    pub contact_sheet_written: bool,
}

/// The runner's options for local files: inputs from `root`, everything else under `out`.
fn local_options(settings: &Settings) -> RunnerOptions {
    RunnerOptions {
        input_bucket: INPUT_BUCKET.into(),
        // NOTE: the input prefixes guard a shared S3 bucket; local paths are the caller's own.
        input_prefixes: Vec::new(),
        output_buckets: OutputBuckets::Fixed(String::new()),
        adapter_bucket: String::new(),
        worker_id: WORKER_ID.into(),
        ..RunnerOptions::from(settings)
    }
}

/// A job runner over local files with the model loaded on one inference thread: the job's keys are
/// read from `root`; outputs, `result.json` and tuned adapters go under `out` at the keys `serve`
/// would use. Returns it with the seconds the model took to load.
pub async fn local_runner(
    settings: &Settings,
    root: &Path,
    out: &Path,
) -> anyhow::Result<(Runner<LocalStore, InferencePool>, f64)> {
    let signer = Signer::from_settings(&settings.provenance)?;
    let load_settings = settings.clone();
    let t0 = Instant::now();
    let (pool, _) =
        tokio::task::spawn_blocking(move || InferencePool::start(&load_settings, 1)).await??;
    let load_secs = t0.elapsed().as_secs_f64();
    tracing::info!(
        model = %pool.model.name,
        version = %pool.model.version,
        seconds = load_secs,
        "model loaded"
    );
    let store = LocalStore::new(out).with_bucket(INPUT_BUCKET, root);
    let runner = Runner::new(
        store,
        pool,
        local_options(settings),
        signer,
        Arc::new(NoObserver),
    );
    Ok((runner, load_secs))
}

/// Runs the job; returns its result (also written as `result.json` where `serve` would put it).
/// A job that cannot be done gives a `failed` result, not an `Err`; `Err` is for setup problems.
pub async fn run(settings: &Settings, options: &EditOptions) -> anyhow::Result<EditReport> {
    let root = super::job_root(&options.job, options.root.as_deref());
    let (runner, model_load_secs) = local_runner(settings, &root, &options.out).await?;
    let body = std::fs::read(&options.job)?;
    let span = tracing::info_span!(
        "job",
        job_id = %flow::job_id_hint(&body),
        trace_id = tracing::field::Empty
    );
    // A trace of its own, as a job message without `traceparent` gets under `serve`.
    let trace_id = crate::telemetry::continue_trace(&span, |_| None);
    let outcome =
        tracing::Instrument::instrument(runner.run(&body, trace_id.as_deref()), span).await;
    let report = match outcome {
        Ok(done) => succeeded(done, options, model_load_secs)?,
        Err(failure) => {
            let failure = (failure, trace_id.as_deref());
            failed(&runner, &body, failure, options, model_load_secs).await?
        }
    };
    tokio::task::spawn_blocking(move || runner.into_model().shutdown()).await?;
    Ok(report)
}

fn succeeded(
    done: Done,
    options: &EditOptions,
    model_load_secs: f64,
) -> anyhow::Result<EditReport> {
    let out = &options.out;
    let mut contact_sheet_written = false;
    if let (Some(sheet), Some(artefacts)) = (&options.contact_sheet, &done.artefacts) {
        let png = crate::commands::contact_sheet::render(
            &artefacts.input,
            &artefacts.output,
            &done.result.faces,
        )?;
        std::fs::write(sheet, png)
            .map_err(|e| anyhow::anyhow!("contact sheet {}: {e}", sheet.display()))?;
        contact_sheet_written = true;
    }
    Ok(EditReport {
        output_paths: done
            .result
            .outputs
            .iter()
            .map(|o| out.join(&o.key))
            .collect(),
        result_path: out.join(&done.result_object.1),
        republished: done.republished(),
        result: done.result,
        model_load_secs,
        contact_sheet_written,
    })
}

async fn failed(
    runner: &Runner<LocalStore, InferencePool>,
    body: &[u8],
    (failure, trace_id): (JobFailure, Option<&str>),
    options: &EditOptions,
    model_load_secs: f64,
) -> anyhow::Result<EditReport> {
    let result = runner.failed_result(body, failure, trace_id);
    // Where serve would store it; a job that names no usable place gets `OUT/result.json`.
    let path = match runner.store_failure(body, &result).await? {
        Some((_, key)) => options.out.join(key),
        None => LocalStore::new(&options.out)
            .put("result.json", &serde_json::to_vec_pretty(&result)?)?,
    };
    Ok(EditReport {
        result,
        result_path: path,
        output_paths: Vec::new(),
        model_load_secs,
        republished: false,
        contact_sheet_written: false,
    })
}
