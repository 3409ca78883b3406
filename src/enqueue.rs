//! `pva-worker enqueue`: how a CMS developer tries the system end to end. Uploads a local job's images
//! to the input bucket (under the job's own keys), publishes the job with a private reply queue, waits
//! for the result and downloads the outputs.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;

use crate::config::Settings;
use crate::job::{JobResult, JobStatus};
use crate::storage::s3::S3Store;
use crate::storage::ObjectStore;
use crate::worker;

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
}

/// Uploads, publishes, waits and downloads; returns the result (failed jobs included).
pub async fn run(settings: &Settings, options: &EnqueueOptions) -> anyhow::Result<JobResult> {
    let body = std::fs::read(&options.job)
        .with_context(|| format!("reading {}", options.job.display()))?;
    let job = worker::parse(&body, settings).map_err(|f| anyhow::anyhow!("{}", f.message))?;
    let root = options.root.clone().unwrap_or_else(|| {
        options
            .job
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    });
    let store = S3Store::new(&settings.s3).await;
    let input_bucket = &settings.s3.input_bucket;
    for (field, key) in worker::input_keys(&job) {
        let path = root.join(&key);
        let bytes =
            std::fs::read(&path).with_context(|| format!("{field}: reading {}", path.display()))?;
        store
            .put(input_bucket, &key, bytes, "application/octet-stream")
            .await
            .with_context(|| format!("{field}: uploading `{key}`"))?;
        println!("uploaded {} -> {input_bucket}/{key}", path.display());
    }

    let connection = crate::queue::connect(&settings.amqp, "pva-worker enqueue").await?;
    let channel = connection.create_channel().await?;
    crate::queue::declare_topology(&channel, &settings.amqp, settings.worker.delivery_limit)
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let reply = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut replies = channel
        .basic_consume(
            reply.name().clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let job_id = job.request.job_id.clone();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let confirm = channel
        .basic_publish(
            "".into(),
            settings.amqp.job_queue.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_timestamp(now)
                .with_correlation_id(job_id.as_str().into())
                .with_reply_to(reply.name().clone()),
        )
        .await?
        .await?;
    anyhow::ensure!(!confirm.is_nack(), "the broker refused the job");
    println!(
        "published job {job_id} to {}; waiting for its result",
        settings.amqp.job_queue
    );

    let result = tokio::time::timeout(options.timeout, async {
        while let Some(delivery) = replies.next().await {
            let delivery = delivery?;
            delivery.ack(BasicAckOptions::default()).await?;
            let result: JobResult = serde_json::from_slice(&delivery.data)?;
            if result.job_id == job_id {
                return anyhow::Ok(result);
            }
        }
        anyhow::bail!("the reply queue was closed")
    })
    .await
    .with_context(|| format!("no result within {:?}", options.timeout))??;
    let _ = connection.close(200, "done".into()).await;

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
