//! `pva-worker serve`: jobs from RabbitMQ, images from S3, results back to S3 and to the result
//! exchange. Nothing is lost and nothing loops:
//!
//! - a delivery is acked only after its outputs (and the job's `result.json`) are in the store and its
//!   result message is confirmed by the broker;
//! - a job that cannot be done (invalid, missing or corrupt input, deadline passed) gets a `failed`
//!   result and is dead-lettered at once, with its reason in `x-pva-error-*` headers;
//! - a transient failure (store timeout, 5xx, model run failure) is retried with backoff by requeueing
//!   it, until `worker.delivery_limit` deliveries, then dead-lettered with the reason; the quorum
//!   queue's own delivery limit catches deliveries the worker never answered (killed mid-job);
//! - output keys are deterministic, and a redelivered job whose `result.json` exists is answered by
//!   republishing it instead of recomputing;
//! - SIGTERM/SIGINT cancels the consumer, lets in-flight jobs finish within
//!   `worker.shutdown_deadline_secs`, and closes the connection (unfinished jobs return to the queue);
//! - a lost connection is re-established with backoff; in-flight deliveries are redelivered by the
//!   broker and their outputs overwrite the same keys.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::Settings;
use crate::inference::{InferenceError, InferencePool};
use crate::job::{parse_rfc3339, CheckedJob, JobResult, JobStatus, OutputInfo, TuningPolicy};
use crate::metrics::{serve_http, Health, JobOutcome, Metrics, Stage};
use crate::pipeline::adapter::{self, AdapterCache, StoredAdapter};
use crate::pipeline::image::OutputFormat;
use crate::provenance::Signer;
use crate::queue::{self, Broker, Delivery, Outgoing};
use crate::storage::ObjectStore;
use crate::storage::StorageError;
use crate::worker::{self, JobFailure};

/// Everything a job handler needs; shared by all in-flight jobs.
pub struct Service<S: ObjectStore> {
    settings: Settings,
    store: S,
    pool: InferencePool,
    metrics: Arc<Metrics>,
    worker_id: String,
    signer: Option<Signer>,
    adapters: std::sync::Mutex<AdapterCache>,
    /// One lock per adapter key being tuned, so concurrent jobs for one identity tune once.
    tuning_locks:
        tokio::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// How a delivery was answered.
enum Done {
    /// Computed now.
    Fresh(JobResult),
    /// Its result already existed in the store (a redelivery after the work was done).
    Republished(JobResult),
}

/// The name this worker reports: `worker.id`, else the host name.
pub fn worker_id(settings: &Settings) -> String {
    if !settings.worker.id.is_empty() {
        return settings.worker.id.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pva-worker".into())
}

/// Key of a job's result object, written after its outputs.
pub fn result_key(job: &CheckedJob) -> String {
    format!(
        "{}/{}/result.json",
        job.request.output.prefix.trim_end_matches('/'),
        job.request.job_id
    )
}

fn content_type(format: OutputFormat) -> &'static str {
    format.content_type()
}

impl<S: ObjectStore> Service<S> {
    /// A service over a loaded inference pool and a store.
    pub fn new(
        settings: Settings,
        store: S,
        pool: InferencePool,
        metrics: Arc<Metrics>,
        signer: Option<Signer>,
    ) -> Self {
        let worker_id = worker_id(&settings);
        Self {
            store,
            pool,
            metrics,
            adapters: std::sync::Mutex::new(AdapterCache::new(settings.tuning.cache_capacity)),
            tuning_locks: Default::default(),
            worker_id,
            signer,
            settings,
        }
    }

    /// Stops the inference threads (after the last job).
    pub fn shutdown(self) {
        self.pool.shutdown();
    }

    fn model(&self) -> (&str, &str) {
        (&self.pool.model.name, &self.pool.model.version)
    }

    /// The output bucket of a job: its own (if allowed) or the first configured one.
    fn output_bucket(&self, job: &CheckedJob) -> Result<String, JobFailure> {
        let allowed = &self.settings.s3.output_buckets;
        let wanted = &job.request.output.bucket;
        if wanted.is_empty() {
            return self
                .settings
                .default_output_bucket()
                .map(str::to_string)
                .ok_or_else(|| {
                    JobFailure::new(
                        "invalid_job",
                        "`output.bucket` is empty and s3.output_buckets has no default",
                        false,
                    )
                });
        }
        if allowed.iter().any(|b| b == wanted) {
            Ok(wanted.clone())
        } else {
            Err(JobFailure::new(
                "invalid_job",
                format!("invalid job: `output.bucket`: `{wanted}` is not one of this worker's output buckets"),
                false,
            ))
        }
    }

    fn check_input_prefixes(&self, job: &CheckedJob) -> Result<(), JobFailure> {
        let prefixes = &self.settings.s3.input_prefixes;
        if prefixes.is_empty() {
            return Ok(());
        }
        for (field, key) in worker::input_keys(job) {
            if !prefixes.iter().any(|p| key.starts_with(p.as_str())) {
                return Err(JobFailure::new(
                    "invalid_job",
                    format!(
                        "invalid job: `{field}`: key `{key}` is outside the allowed input prefixes"
                    ),
                    false,
                ));
            }
        }
        Ok(())
    }

    /// Does the job, short of publishing and acknowledging.
    async fn process(&self, body: &[u8]) -> Result<Done, JobFailure> {
        let job = worker::parse(body, &self.settings)?;
        let bucket = self.output_bucket(&job)?;
        self.check_input_prefixes(&job)?;
        if let Some(deadline) = job.request.deadline.as_deref().and_then(parse_rfc3339) {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs() as i64;
            if now > deadline {
                return Err(JobFailure::new(
                    "deadline_exceeded",
                    format!(
                        "the job's deadline {} has passed",
                        job.request.deadline.as_deref().unwrap_or_default()
                    ),
                    false,
                ));
            }
        }
        // A redelivery of finished work: answer from the stored result.
        let result_key = result_key(&job);
        if self.store.exists(&bucket, &result_key).await? {
            let stored = self.store.get(&bucket, &result_key, 1 << 20).await?;
            if let Ok(result) = serde_json::from_slice::<JobResult>(&stored) {
                if result.status == JobStatus::Succeeded {
                    return Ok(Done::Republished(result));
                }
            }
        }

        let t = Instant::now();
        let max = self.settings.limits.max_image_bytes as u64;
        let input_bucket = &self.settings.s3.input_bucket;
        let fetches = worker::input_keys(&job)
            .into_iter()
            .map(|(field, key)| async move {
                let bytes = self.store.get(input_bucket, &key, max).await.map_err(|e| {
                    let f = JobFailure::from(e);
                    JobFailure::new(f.code, format!("{field}: {}", f.message), f.retryable)
                })?;
                Ok::<_, JobFailure>((key, bytes))
            });
        let mut objects: BTreeMap<String, Vec<u8>> = futures_util::future::try_join_all(fetches)
            .await?
            .into_iter()
            .collect();
        let fetch_secs = t.elapsed().as_secs_f64();
        self.metrics.observe_stage(Stage::Fetch, fetch_secs);

        let mut input = worker::prepare(&job, &objects, &self.settings)?;
        let target_bytes = objects.remove(&job.request.target.key).unwrap_or_default();
        // Hashing the reference bytes keys the stored adapter; only tuning jobs need it.
        let tuning = job.request.tuning != TuningPolicy::Never;
        let reference_sha256: Vec<String> = job
            .request
            .identity
            .references
            .iter()
            .filter(|_| tuning)
            .map(|r| {
                adapter::sha256_hex(objects.get(&r.key).map(Vec::as_slice).unwrap_or_default())
            })
            .collect();
        drop(objects);
        let mut tune_secs = None;
        if tuning {
            let t = Instant::now();
            let (found, tuned) = self.adapter_for(&job, &input, &reference_sha256).await?;
            if tuned {
                tune_secs = Some(t.elapsed().as_secs_f64());
            }
            input.adapter = found.map(|a| a.params.clone());
        }
        let edited = self
            .pool
            .edit(input, job.request.seed)
            .await
            .map_err(inference_failure)?;
        for (stage, secs) in &edited.timings.stages {
            if let Ok(stage) = stage.parse::<Stage>() {
                self.metrics.observe_stage(stage, *secs);
            }
        }

        let t = Instant::now();
        let marking = worker::Marking {
            model: self.model(),
            target_bytes: &target_bytes,
            signer: self.signer.as_ref(),
        };
        let encoded = worker::encode(&job, &edited, &marking)?;
        drop(target_bytes);
        let kind = content_type(job.request.output.format.format());
        let uploads = encoded.into_iter().map(|(key, bytes)| {
            let bucket = &bucket;
            async move { self.store.put(bucket, &key, bytes, kind).await }
        });
        futures_util::future::try_join_all(uploads).await?;
        let min = self.settings.pipeline.min_identity_score;
        let outputs: Vec<OutputInfo> = edited
            .images
            .iter()
            .enumerate()
            .map(|(i, o)| OutputInfo {
                key: worker::output_key(&job, i),
                identity_score: o.identity_score,
                identity_check_passed: o.identity_score >= min,
            })
            .collect();
        let upload_secs = t.elapsed().as_secs_f64();
        let result = worker::result(
            self.model(),
            &job.request.job_id,
            job.request.consent.clone(),
            &self.worker_id,
            Ok((outputs, &edited.timings)),
            &[("fetch", fetch_secs), ("upload", upload_secs)]
                .into_iter()
                .chain(tune_secs.map(|t| ("tune", t)))
                .collect::<Vec<_>>(),
        );
        let json = serde_json::to_vec(&result).expect("a result serialises");
        // NOTE: written last: its presence means every output is in place.
        self.store
            .put(&bucket, &result_key, json, "application/json")
            .await?;
        self.metrics
            .observe_stage(Stage::Upload, t.elapsed().as_secs_f64());
        Ok(Done::Fresh(result))
    }

    /// A stored adapter that is still in the store (a cached entry whose object was deleted by
    /// `forget` is dropped), decoded and checked against this model; `None` when missing or unusable.
    async fn stored_adapter(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<Arc<StoredAdapter>>, JobFailure> {
        if !self.store.exists(bucket, key).await? {
            self.adapters.lock().expect("cache lock").remove(key);
            return Ok(None);
        }
        if let Some(hit) = self.adapters.lock().expect("cache lock").get(key) {
            return Ok(Some(hit));
        }
        let bytes = match self.store.get(bucket, key, 1 << 30).await {
            Ok(b) => b,
            Err(StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let model = self.pool.model.clone();
        match adapter::decode(&bytes, &model) {
            Ok(a) => {
                let a = Arc::new(a);
                self.adapters
                    .lock()
                    .expect("cache lock")
                    .insert(key.to_string(), Arc::clone(&a));
                Ok(Some(a))
            }
            Err(e) => {
                tracing::warn!(key, error = %e, "stored adapter is corrupt or for another model; ignoring it");
                Ok(None)
            }
        }
    }

    /// The job's tuned adapter per its policy; the bool says whether it was tuned now.
    async fn adapter_for(
        &self,
        job: &CheckedJob,
        input: &crate::pipeline::inpaint::EditInput,
        reference_sha256: &[String],
    ) -> Result<(Option<Arc<StoredAdapter>>, bool), JobFailure> {
        let model = self.pool.model.clone();
        let identity = &job.request.identity.id;
        let key = adapter::storage_key(
            &self.settings.tuning.adapter_prefix,
            identity,
            &model,
            reference_sha256,
        )
        .map_err(|e| JobFailure::new("invalid_job", e.to_string(), false))?;
        let bucket = self.settings.adapter_bucket().to_string();
        if let Some(a) = self.stored_adapter(&bucket, &key).await? {
            self.metrics.adapter_cache_hit();
            return Ok((Some(a), false));
        }
        self.metrics.adapter_cache_miss();
        if job.request.tuning == TuningPolicy::IfCached {
            return Ok((None, false));
        }
        // Auto: tune once per key; a second job for the same identity waits, then finds it stored.
        let lock = {
            let mut locks = self.tuning_locks.lock().await;
            Arc::clone(locks.entry(key.clone()).or_default())
        };
        let _tuning = lock.lock().await;
        if let Some(a) = self.stored_adapter(&bucket, &key).await? {
            return Ok((Some(a), false));
        }
        let t = Instant::now();
        let (tuned, model) = self
            .pool
            .tune(input.references.clone())
            .await
            .map_err(inference_failure)?;
        let secs = t.elapsed().as_secs_f64();
        let final_loss = *tuned.losses.last().unwrap_or(&f32::NAN);
        self.metrics.tuning_finished(secs, final_loss as f64);
        self.metrics.observe_stage(Stage::Tune, secs);
        let stored = StoredAdapter {
            identity_id: identity.clone(),
            model,
            reference_sha256: reference_sha256.to_vec(),
            steps: tuned.losses.len(),
            seed: self.settings.tuning.seed,
            final_loss,
            params: tuned.adapter,
        };
        let bytes = adapter::encode(&stored)
            .map_err(|e| JobFailure::new("model_error", e.to_string(), false))?;
        self.store
            .put(&bucket, &key, bytes, "application/octet-stream")
            .await?;
        let stored = Arc::new(stored);
        self.adapters
            .lock()
            .expect("cache lock")
            .insert(key.clone(), Arc::clone(&stored));
        self.tuning_locks.lock().await.remove(&key);
        tracing::info!(seconds = secs, final_loss, "identity tuned and stored");
        Ok((Some(stored), true))
    }

    /// Publishes a result to the result exchange and, when the request asked, to its reply queue.
    async fn publish_result(
        &self,
        channel: &lapin::Channel,
        result: &JobResult,
        delivery: &Delivery,
    ) -> Result<(), queue::QueueError> {
        let body = serde_json::to_vec(result).expect("a result serialises");
        let (reply_to, correlation) = queue::reply_to(delivery);
        let message = Outgoing {
            body,
            correlation_id: Some(correlation.unwrap_or_else(|| result.job_id.clone())),
            headers: vec![(
                "x-pva-status".into(),
                format!("{:?}", result.status).to_lowercase(),
            )],
        };
        let amqp = &self.settings.amqp;
        queue::publish_confirmed(
            channel,
            &amqp.result_exchange,
            &amqp.result_routing_key,
            &message,
        )
        .await?;
        if let Some(reply_to) = reply_to {
            queue::publish_confirmed(channel, "", &reply_to, &message).await?;
        }
        Ok(())
    }

    /// Handles one delivery end to end: process, publish, then ack / requeue / dead-letter.
    pub async fn handle(self: Arc<Self>, delivery: Delivery, publish: lapin::Channel) {
        let previous = queue::previous_deliveries(&delivery);
        let job_id = worker::job_id_hint(&delivery.data);
        let consent = worker::consent_hint(&delivery.data);
        let span = tracing::info_span!(
            "job",
            job_id = %job_id,
            delivery = previous + 1,
            consent_id = consent.as_ref().map(|c| c.id.as_str()).unwrap_or("none"),
            consent_version = consent.as_ref().map(|c| c.version.as_str()).unwrap_or("none"),
        );
        async move {
            let _in_flight = self.metrics.in_flight_guard();
            if let Some(published) = queue::published_at(&delivery) {
                self.metrics.observe_queue_wait_since(published);
            }
            let started = Instant::now();
            match self.process(&delivery.data).await {
                Ok(done) => {
                    let (result, outcome) = match done {
                        Done::Fresh(r) => (r, JobOutcome::Succeeded),
                        Done::Republished(r) => (r, JobOutcome::Republished),
                    };
                    if let Err(e) = self.publish_result(&publish, &result, &delivery).await {
                        // Not acked: the broker redelivers, and the stored result is republished.
                        tracing::warn!(error = %e, "result not confirmed; the job will be redelivered");
                        return;
                    }
                    ack(&delivery).await;
                    self.metrics.job_finished(outcome);
                    tracing::info!(seconds = started.elapsed().as_secs_f64(), outcome = outcome.label(), "job done");
                }
                Err(failure) if failure.retryable && previous + 1 < self.settings.worker.delivery_limit => {
                    let delay = backoff(
                        self.settings.worker.retry_initial_ms,
                        self.settings.worker.retry_max_ms,
                        previous,
                    );
                    tracing::warn!(code = failure.code, error = %failure.message, retry_in_ms = delay.as_millis() as u64, "transient failure; requeueing");
                    tokio::time::sleep(delay).await;
                    let requeue = BasicNackOptions { requeue: true, ..Default::default() };
                    if let Err(e) = delivery.acker.nack(requeue).await {
                        tracing::warn!(error = %e, "nack failed; the broker will redeliver");
                    }
                    self.metrics.job_finished(JobOutcome::Retried { reason: failure.code });
                }
                Err(failure) => {
                    tracing::warn!(code = failure.code, error = %failure.message, "job failed; dead-lettering");
                    // The dead letter goes first: a caller who sees the failed result finds the job
                    // in the dead-letter queue.
                    let amqp = &self.settings.amqp;
                    let dead = Outgoing {
                        body: delivery.data.clone(),
                        correlation_id: Some(job_id.clone()),
                        headers: vec![
                            ("x-pva-error-code".into(), failure.code.to_string()),
                            ("x-pva-error-message".into(), failure.message.clone()),
                            ("x-pva-deliveries".into(), (previous + 1).to_string()),
                        ],
                    };
                    if let Err(e) = queue::publish_confirmed(&publish, &amqp.dead_letter_exchange, &amqp.job_queue, &dead).await {
                        tracing::warn!(error = %e, "dead letter not confirmed; the job will be redelivered");
                        return;
                    }
                    let result = worker::result(
                        self.model(),
                        &job_id,
                        consent.clone(),
                        &self.worker_id,
                        Err(failure.clone()),
                        &[],
                    );
                    if let Err(e) = self.publish_result(&publish, &result, &delivery).await {
                        tracing::warn!(error = %e, "failed result not confirmed; the job will be redelivered");
                        return;
                    }
                    ack(&delivery).await;
                    self.metrics.job_finished(JobOutcome::Failed);
                    self.metrics.job_finished(JobOutcome::DeadLettered { reason: failure.code });
                }
            }
        }
        .instrument(span)
        .await
    }
}

fn inference_failure(e: InferenceError) -> JobFailure {
    match e {
        InferenceError::Stopped => {
            JobFailure::new("worker_stopping", "the worker is shutting down", true)
        }
        InferenceError::Pipeline(p) => JobFailure::from(p),
        InferenceError::Tune(t) => JobFailure::from(t),
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel is gone: the broker redelivers, and the stored result answers it.
        tracing::warn!(error = %e, "ack failed; the job will be redelivered");
    }
}

/// Retry delay before delivery `previous + 1`: `initial * 2^previous`, capped.
pub fn backoff(initial_ms: u64, max_ms: u64, previous: u32) -> Duration {
    let factor = 1u64.checked_shl(previous.min(30)).unwrap_or(u64::MAX);
    Duration::from_millis(initial_ms.saturating_mul(factor).min(max_ms))
}

/// Why the consume loop ended.
enum Ended {
    /// Shutdown was requested.
    Shutdown,
    /// The connection or channel failed.
    Lost(String),
}

/// Consumes until shutdown or connection loss.
async fn consume<S: ObjectStore>(
    service: &Arc<Service<S>>,
    broker: &Broker,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let settings = &service.settings;
    let tag = format!("{}-{}", service.worker_id, std::process::id());
    let mut consumer = match broker.consume_jobs(&settings.amqp, &tag).await {
        Ok(c) => c,
        Err(e) => return Ended::Lost(e.to_string()),
    };
    tracing::info!(queue = %settings.amqp.job_queue, "consuming jobs");
    let mut tasks = JoinSet::new();
    let ended = loop {
        tokio::select! {
            _ = shutdown.changed() => break Ended::Shutdown,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    tasks.spawn(Arc::clone(service).handle(delivery, broker.publish.clone()));
                }
                Some(Err(e)) => break Ended::Lost(e.to_string()),
                None => break Ended::Lost("the consumer was cancelled by the broker".into()),
            },
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = joined {
                    tracing::error!(error = %e, "a job task failed");
                }
            }
        }
    };
    match ended {
        Ended::Shutdown => {
            let _ = broker
                .consume
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
            let deadline = Duration::from_secs(settings.worker.shutdown_deadline_secs);
            tracing::info!(
                in_flight = tasks.len(),
                deadline_secs = deadline.as_secs(),
                "shutting down: finishing in-flight jobs"
            );
            let drained = tokio::time::timeout(deadline, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    unfinished = tasks.len(),
                    "shutdown deadline passed; unfinished jobs return to the queue"
                );
                tasks.abort_all();
            }
        }
        // Deliveries of a lost connection are redelivered by the broker; stop working on them.
        Ended::Lost(_) => tasks.abort_all(),
    }
    while tasks.join_next().await.is_some() {}
    ended
}

/// Resolves when shutdown is requested (SIGTERM or SIGINT).
async fn shutdown_signal(tx: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    let _ = tx.send(true);
}

/// Runs the service until SIGTERM/SIGINT.
pub async fn run<S: ObjectStore>(settings: Settings, store: S) -> anyhow::Result<()> {
    // Refuse to start with bad signing credentials (or none, when signing is required).
    let signer = Signer::from_settings(&settings.provenance)?;
    let metrics = Arc::new(Metrics::new());
    let health = Health::new(&metrics);
    let (shutdown_tx, mut shutdown) = watch::channel(false);
    tokio::spawn(shutdown_signal(shutdown_tx));
    let mut http_shutdown = shutdown.clone();
    let (addr, http) = serve_http(
        settings.metrics.listen.as_str(),
        Arc::clone(&metrics),
        health.clone(),
        async move {
            let _ = http_shutdown.wait_for(|stop| *stop).await;
        },
    )
    .await?;
    tracing::info!(%addr, "metrics listening");

    let load_settings = settings.clone();
    let (pool, load_secs) =
        tokio::task::spawn_blocking(move || InferencePool::start(&load_settings)).await??;
    metrics.model_loaded(&pool.model.name, &pool.model.version, load_secs);
    health.set_model_loaded(true);
    tracing::info!(model = %pool.model.name, version = %pool.model.version, seconds = load_secs, threads = settings.worker.concurrency, "model loaded");

    let service = Arc::new(Service::new(
        settings.clone(),
        store,
        pool,
        Arc::clone(&metrics),
        signer,
    ));
    let name = format!("pva-worker {}", service.worker_id);
    let mut delay = Duration::from_millis(settings.amqp.reconnect_initial_ms);
    let max_delay = Duration::from_millis(settings.amqp.reconnect_max_ms);
    // NOTE: one delivery more than there are inference threads, so the next job's S3 fetch overlaps
    // the current job's inference (it then waits for a free thread).
    let prefetch = (settings.worker.concurrency + 1).min(u16::MAX as usize) as u16;
    let mut connected_before = false;
    while !*shutdown.borrow() {
        match Broker::connect(
            &settings.amqp,
            prefetch,
            settings.worker.delivery_limit,
            &name,
        )
        .await
        {
            Ok(broker) => {
                if connected_before {
                    metrics.broker_reconnected();
                }
                connected_before = true;
                health.set_broker_connected(true);
                delay = Duration::from_millis(settings.amqp.reconnect_initial_ms);
                let ended = consume(&service, &broker, &mut shutdown).await;
                health.set_broker_connected(false);
                broker.close().await;
                match ended {
                    Ended::Shutdown => break,
                    Ended::Lost(reason) => {
                        tracing::warn!(%reason, "broker connection lost; reconnecting")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach the broker");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
                delay = (delay * 2).min(max_delay);
            }
        }
    }
    // Every job task has been joined, so this is the last reference.
    match Arc::try_unwrap(service) {
        Ok(service) => tokio::task::spawn_blocking(move || service.shutdown()).await?,
        Err(_) => tracing::warn!(
            "a job task still holds the service; inference threads end with the process"
        ),
    }
    let _ = http.await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(100, 1000, 0), Duration::from_millis(100));
        assert_eq!(backoff(100, 1000, 1), Duration::from_millis(200));
        assert_eq!(backoff(100, 1000, 3), Duration::from_millis(800));
        assert_eq!(backoff(100, 1000, 4), Duration::from_millis(1000));
        assert_eq!(backoff(100, 1000, 200), Duration::from_millis(1000));
    }
}
