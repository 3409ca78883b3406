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

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::Settings;
use crate::job::flow;
use crate::job::{JobResult, ObjectStore, Observer, Runner};
use crate::metrics::{serve_http, Health, JobOutcome, Metrics};
use crate::model::Stage;
use crate::provenance::Signer;
use crate::queue::{self, Broker, Delivery, Events, Outgoing, Publisher};
use crate::service::events::{JobEvents, PROGRESS};
use crate::service::health::EngineWatch;
use crate::service::pool::{InferencePool, Started};
use crate::telemetry;

/// Everything a delivery handler needs; shared by all in-flight jobs.
pub struct Service<S: ObjectStore> {
    settings: Settings,
    runner: Runner<S, InferencePool>,
    metrics: Arc<Metrics>,
}

/// The job runner's reports, as metrics.
struct MetricsObserver(Arc<Metrics>);

impl Observer for MetricsObserver {
    fn stage(&self, stage: Stage, secs: f64) {
        self.0.observe_stage(stage, secs);
    }
    fn adapter_lookup(&self, hit: bool) {
        if hit {
            self.0.adapter_cache_hit()
        } else {
            self.0.adapter_cache_miss()
        }
    }
    fn tuned(&self, secs: f64, final_loss: f64) {
        self.0.tuning_finished(secs, final_loss);
    }
    fn identity_lookup(&self, hit: bool) {
        self.0.identity_cache_lookup(hit);
    }
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

impl<S: ObjectStore> Service<S> {
    /// A service over a loaded inference pool and a store.
    pub fn new(
        settings: Settings,
        store: S,
        pool: InferencePool,
        metrics: Arc<Metrics>,
        signer: Option<Signer>,
    ) -> Self {
        let mut options = crate::job::RunnerOptions::from(&settings);
        options.worker_id = worker_id(&settings);
        let observer = Arc::new(MetricsObserver(Arc::clone(&metrics)));
        Self {
            runner: Runner::new(store, pool, options, signer, observer),
            metrics,
            settings,
        }
    }

    /// Stops the inference threads (after the last job).
    pub fn shutdown(self) {
        self.runner.into_model().shutdown();
    }

    fn worker_id(&self) -> &str {
        &self.runner.options().worker_id
    }

    /// Publishes a final result (with its event fields, after the delivery's earlier events) to the
    /// result exchange and, when the request asked, to its reply queue, in a `publish` span whose
    /// trace context the message carries.
    async fn publish_result(
        &self,
        publisher: &Publisher,
        result: &JobResult,
        delivery: &Delivery,
        events: &mut JobEvents,
    ) -> Result<(), queue::QueueError> {
        let span = tracing::info_span!("publish");
        let headers = telemetry::trace_headers(&span);
        self.publish_result_in(publisher, result, delivery, events, headers)
            .instrument(span)
            .await
    }

    async fn publish_result_in(
        &self,
        publisher: &Publisher,
        result: &JobResult,
        delivery: &Delivery,
        events: &mut JobEvents,
        trace_headers: Vec<(String, String)>,
    ) -> Result<(), queue::QueueError> {
        let body = events.final_message(result).await;
        let (reply_to, correlation) = delivery.reply_to();
        let mut headers = vec![(
            "x-pva-status".into(),
            format!("{:?}", result.status).to_lowercase(),
        )];
        headers.extend(trace_headers);
        let message = Outgoing {
            body,
            correlation_id: Some(correlation.unwrap_or_else(|| result.job_id.clone())),
            headers,
            reply_to: None,
        };
        let amqp = &self.settings.amqp;
        // Mandatory: a result no queue is bound for comes back as `Returned`, never a success.
        publisher
            .publish_mandatory(&amqp.result_exchange, &amqp.result_routing_key, &message)
            .await?;
        if let Some(reply_to) = reply_to {
            publisher.publish_confirmed("", &reply_to, &message).await?;
        }
        Ok(())
    }

    /// Handles one delivery end to end: process, publish, then ack / requeue / dead-letter.
    pub async fn handle(self: Arc<Self>, delivery: Delivery, publish: Publisher, events: Events) {
        let previous = delivery.previous_deliveries();
        let job_id = flow::job_id_hint(delivery.body());
        let consent = flow::consent_hint(delivery.body());
        let span = tracing::info_span!(
            "job",
            job_id = %job_id,
            delivery = previous + 1,
            consent_id = consent.as_ref().map(|c| c.id.as_str()).unwrap_or("none"),
            consent_version = consent.as_ref().map(|c| c.version.as_str()).unwrap_or("none"),
            trace_id = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        // The job continues the trace of the message's `traceparent` (else starts one); its events
        // carry the job span as their parent.
        let trace_id = telemetry::continue_trace(&span, |name| delivery.header(name));
        let trace_headers = telemetry::trace_headers(&span);
        async move {
            let _in_flight = self.metrics.in_flight_guard();
            if let Some(published) = delivery.published_at() {
                self.metrics.observe_queue_wait_since(published);
            }
            let started = Instant::now();
            let mut events = JobEvents::new(
                events,
                &self.settings.amqp,
                (&job_id, previous + 1),
                trace_headers,
            );
            events.started(self.worker_id()).await;
            let progress = events.progress_sink();
            let run = self.runner.run(delivery.body(), trace_id.as_deref());
            match PROGRESS.scope(progress, run).await {
                Ok(done) => {
                    let outcome = if done.republished() {
                        JobOutcome::Republished
                    } else {
                        JobOutcome::Succeeded
                    };
                    let crate::job::Done { result, artefacts, .. } = done;
                    drop(artefacts);
                    match self.publish_result(&publish, &result, &delivery, &mut events).await {
                        Ok(()) => {}
                        Err(e @ queue::QueueError::Returned { .. }) => {
                            // The stored result is republished by the next delivery.
                            self.result_returned(&delivery, &publish, &job_id, previous, &e, started)
                                .await;
                            return;
                        }
                        Err(e) => {
                            // Not acked: the broker redelivers, and the stored result is republished.
                            tracing::warn!(error = %e, "result not confirmed; the job will be redelivered");
                            return;
                        }
                    }
                    ack(&delivery).await;
                    if outcome == JobOutcome::Succeeded {
                        for output in &result.outputs {
                            self.metrics.observe_identity_score(f64::from(output.identity_score));
                        }
                    }
                    self.metrics.job_finished(outcome, started.elapsed().as_secs_f64());
                    tracing::info!(seconds = started.elapsed().as_secs_f64(), outcome = outcome.label(), "job done");
                }
                Err(failure) if failure.retryable && previous + 1 < self.settings.worker.delivery_limit => {
                    let delay = backoff(
                        self.settings.worker.retry_initial_ms,
                        self.settings.worker.retry_max_ms,
                        previous,
                    );
                    tracing::Span::current().record("otel.status_code", "ERROR");
                    tracing::warn!(code = failure.code.as_str(), error = %failure.message, retry_in_ms = delay.as_millis() as u64, "transient failure; requeueing");
                    tokio::time::sleep(delay).await;
                    if let Err(e) = delivery.requeue().await {
                        tracing::warn!(error = %e, "nack failed; the broker will redeliver");
                    }
                    self.metrics.job_retried(failure.code.as_str());
                }
                Err(failure) => {
                    tracing::Span::current().record("otel.status_code", "ERROR");
                    tracing::warn!(code = failure.code.as_str(), error = %failure.message, "job failed; dead-lettering");
                    // The dead letter goes first: a caller who sees the failed result finds the job
                    // in the dead-letter queue.
                    let amqp = &self.settings.amqp;
                    let dead_letter = delivery.dead_letter(
                        &publish,
                        (&amqp.dead_letter_exchange, &amqp.job_queue),
                        &job_id,
                        (failure.code.as_str(), &failure.message),
                    );
                    if let Err(e) = dead_letter.await {
                        tracing::warn!(error = %e, "dead letter not confirmed; the job will be redelivered");
                        return;
                    }
                    let code = failure.code;
                    let result =
                        self.runner
                            .failed_result(delivery.body(), failure, trace_id.as_deref());
                    // The store keeps the outcome of every job it can name (never over a success);
                    // a store that fails here does not hold the job back: the result message and
                    // the dead letter carry the outcome.
                    if let Err(e) = self.runner.store_failure(delivery.body(), &result).await {
                        tracing::warn!(error = %e, "failed result not stored");
                    }
                    match self.publish_result(&publish, &result, &delivery, &mut events).await {
                        Ok(()) => {}
                        Err(e @ queue::QueueError::Returned { .. })
                            if previous + 1 < self.settings.worker.delivery_limit =>
                        {
                            // Retried as a transient failure; the next delivery fails alike and is
                            // dead-lettered again (each dead letter says which delivery it was).
                            self.requeue_after_backoff(&delivery, previous, RESULT_UNROUTABLE, &e)
                                .await;
                            return;
                        }
                        Err(e @ queue::QueueError::Returned { .. }) => {
                            // The outcome is in the dead-letter queue and in the store.
                            tracing::error!(error = %e, "failed result returned at the delivery limit; the job stays dead-lettered");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "failed result not confirmed; the job will be redelivered");
                            return;
                        }
                    }
                    ack(&delivery).await;
                    self.metrics.job_finished(JobOutcome::Failed, started.elapsed().as_secs_f64());
                    self.metrics.job_dead_lettered(code.as_str());
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// The reason (metrics label, dead-letter code) of a final result the broker returned.
const RESULT_UNROUTABLE: &str = "result_unroutable";

impl<S: ObjectStore> Service<S> {
    /// Sleeps the retry delay of delivery `previous + 1`, then returns the delivery to the queue.
    async fn requeue_after_backoff(
        &self,
        delivery: &Delivery,
        previous: u32,
        reason: &'static str,
        error: &(dyn std::fmt::Display + Sync),
    ) {
        let w = &self.settings.worker;
        let delay = backoff(w.retry_initial_ms, w.retry_max_ms, previous);
        tracing::warn!(reason, error = %error, retry_in_ms = delay.as_millis() as u64, "transient failure; requeueing");
        tokio::time::sleep(delay).await;
        if let Err(e) = delivery.requeue().await {
            tracing::warn!(error = %e, "nack failed; the broker will redeliver");
        }
        self.metrics.job_retried(reason);
    }

    /// A final success the broker returned (no queue bound for its routing key): a transient
    /// failure, requeued with backoff (the next delivery republishes the stored result); at the
    /// delivery limit the job is dead-lettered with reason `result_unroutable`.
    async fn result_returned(
        &self,
        delivery: &Delivery,
        publish: &Publisher,
        job_id: &str,
        previous: u32,
        error: &queue::QueueError,
        started: Instant,
    ) {
        if previous + 1 < self.settings.worker.delivery_limit {
            self.requeue_after_backoff(delivery, previous, RESULT_UNROUTABLE, error)
                .await;
            return;
        }
        tracing::error!(error = %error, "result returned at the delivery limit; dead-lettering (the result is stored)");
        let amqp = &self.settings.amqp;
        let message = error.to_string();
        let dead_letter = delivery.dead_letter(
            publish,
            (&amqp.dead_letter_exchange, &amqp.job_queue),
            job_id,
            (RESULT_UNROUTABLE, &message),
        );
        if let Err(e) = dead_letter.await {
            tracing::warn!(error = %e, "dead letter not confirmed; the job will be redelivered");
            return;
        }
        ack(delivery).await;
        self.metrics
            .job_finished(JobOutcome::Failed, started.elapsed().as_secs_f64());
        self.metrics.job_dead_lettered(RESULT_UNROUTABLE);
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.ack().await {
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
    let tag = format!("{}-{}", service.worker_id(), std::process::id());
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
                    tasks.spawn(Arc::clone(service).handle(delivery, broker.publisher(), broker.events()));
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
            broker.cancel(&tag).await;
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

/// Loads the model into the inference threads and warms each up, then marks the worker started
/// (`/startupz`), with `/healthz` following the threads and the engine watch.
async fn start_pool(
    settings: &Settings,
    metrics: &Arc<Metrics>,
    health: &Health,
) -> anyhow::Result<(InferencePool, Started)> {
    let probes = Arc::clone(metrics);
    let watch = EngineWatch::new(settings.health.probe_after_failures)
        .on_probe(move |report| probes.engine_probed(report.result.is_ok()));
    let watch = Arc::new(watch);
    let load_settings = settings.clone();
    let (pool, started) = tokio::task::spawn_blocking(move || {
        InferencePool::start_warm(&load_settings, load_settings.worker.concurrency, watch)
    })
    .await??;
    metrics.model_loaded(&pool.model.name, &pool.model.version, started.load_secs);
    metrics.warmed_up(started.warmup_secs);
    health.watch_inference_threads(pool.alive_counter());
    health.watch_liveness(pool.engine_watch());
    health.set_model_loaded(true);
    Ok((pool, started))
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

    let (pool, started) = start_pool(&settings, &metrics, &health).await?;
    tracing::info!(model = %pool.model.name, version = %pool.model.version, seconds = started.load_secs, warmup_seconds = started.warmup_secs, threads = settings.worker.concurrency, "model loaded and warmed up");

    let service = Arc::new(Service::new(
        settings.clone(),
        store,
        pool,
        Arc::clone(&metrics),
        signer,
    ));
    let name = format!("pva-worker {}", service.worker_id());
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
