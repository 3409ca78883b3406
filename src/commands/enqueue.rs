//! `pva-worker enqueue`: how a CMS developer tries the system end to end. Uploads a local job's images
//! to the input bucket (under the job's own keys), publishes the job with a private reply queue, waits
//! for the result and downloads the outputs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::config::Settings;
use crate::job::flow;
use crate::job::{JobResult, JobStatus};
use crate::queue::{JobClient, ResultsQueue};
use crate::storage::s3::S3Store;
use crate::storage::ObjectStore;
use crate::telemetry;
use tracing::Instrument;

/// What `enqueue` was asked to do.
#[derive(Debug, Clone)]
pub struct EnqueueOptions {
    /// The job file; its keys are paths relative to `root`.
    pub job: PathBuf,
    /// Directory the job's keys are relative to (default: the job file's directory).
    pub root: Option<PathBuf>,
    /// Where the outputs are downloaded.
    pub out: PathBuf,
    /// How long to wait for the result.
    pub timeout: Duration,
    /// The W3C `traceparent` of the caller's trace, sent with the job; `None`: a trace of its own.
    pub traceparent: Option<String>,
}

/// Uploads, publishes, waits and downloads; returns the result (failed jobs included). Runs in an
/// `enqueue` span that continues `options.traceparent` (else starts a trace) and is the parent the
/// job message's `traceparent` names.
pub async fn run(settings: &Settings, options: &EnqueueOptions) -> anyhow::Result<JobResult> {
    let span = tracing::info_span!("enqueue", trace_id = tracing::field::Empty);
    if let Some(given) = &options.traceparent {
        anyhow::ensure!(
            telemetry::is_traceparent(given),
            "--traceparent `{given}` is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)"
        );
    }
    let header = |name: &str| match name {
        "traceparent" => options.traceparent.clone(),
        _ => None,
    };
    let trace_id = telemetry::continue_trace(&span, header);
    let headers = telemetry::trace_headers(&span);
    enqueue(settings, options, (trace_id, headers))
        .instrument(span)
        .await
}

async fn enqueue(
    settings: &Settings,
    options: &EnqueueOptions,
    (trace_id, trace_headers): (Option<String>, Vec<(String, String)>),
) -> anyhow::Result<JobResult> {
    let body = std::fs::read(&options.job)
        .with_context(|| format!("reading {}", options.job.display()))?;
    let rules = crate::job::RunnerOptions::from(settings);
    let job = flow::parse(&body, &rules.limits, rules.rules, &rules.presets)
        .map_err(|f| anyhow::anyhow!("{}", f.message))?;
    let root = super::job_root(&options.job, options.root.as_deref());
    let store = S3Store::new(&settings.s3).await?;
    let input_bucket = &settings.s3.input_bucket;
    for (field, key) in flow::input_keys(&job) {
        let path = root.join(&key);
        let bytes =
            std::fs::read(&path).with_context(|| format!("{field}: reading {}", path.display()))?;
        store
            .put(input_bucket, &key, bytes, "application/octet-stream")
            .await
            .with_context(|| format!("{field}: uploading `{key}`"))?;
        println!("uploaded {} -> {input_bucket}/{key}", path.display());
    }

    let client = JobClient::connect(
        &settings.amqp,
        settings.worker.delivery_limit,
        "pva-worker enqueue",
    )
    .await?;
    let mut replies = client.results(ResultsQueue::Private).await?;
    let job_id = job.request.job_id.clone();
    client
        .publish_job(
            &settings.amqp.job_queue,
            &body,
            Some(&job_id),
            Some(replies.name()),
            &trace_headers,
        )
        .await?;
    println!(
        "published job {job_id} to {} (trace id {}); waiting for its result",
        settings.amqp.job_queue,
        trace_id.as_deref().unwrap_or("none")
    );

    let result = tokio::time::timeout(options.timeout, async {
        while let Some(body) = replies.next().await {
            let result: JobResult = serde_json::from_slice(&body?)?;
            if result.job_id == job_id {
                return anyhow::Ok(result);
            }
        }
        anyhow::bail!("the reply queue was closed")
    })
    .await
    .with_context(|| format!("no result within {:?}", options.timeout))??;
    client.close().await;

    if result.status == JobStatus::Succeeded {
        let bucket = if job.request.output.bucket.is_empty() {
            settings
                .default_output_bucket()
                .unwrap_or_default()
                .to_string()
        } else {
            job.request.output.bucket.clone()
        };
        for output in &result.outputs {
            let bytes = store.get(&bucket, &output.key, u64::MAX).await?;
            let path = options.out.join(&output.key);
            std::fs::create_dir_all(path.parent().expect("a key has a parent"))?;
            std::fs::write(&path, bytes)?;
            println!(
                "downloaded {bucket}/{} -> {} (identity score {:.3})",
                output.key,
                path.display(),
                output.identity_score
            );
        }
    }
    Ok(result)
}
