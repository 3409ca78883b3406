//! The [`Metrics`] registry: every metric's name, help text, labels and buckets, and the typed
//! methods that record them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::{
    JobOutcome, Stage, ALERTED_REASONS, IDENTITY_SCORE_BUCKETS, JOB_BUCKETS, QUEUE_WAIT_BUCKETS,
    STAGE_BUCKETS, TUNING_BUCKETS, TUNING_LOSS_BUCKETS,
};

/// Every metric of the worker, in its own registry.
///
/// Cheap to share as `Arc<Metrics>`; every method takes `&self` and is safe from any thread.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    jobs: IntCounterVec,
    job_duration: HistogramVec,
    stage_duration: HistogramVec,
    queue_wait: Histogram,
    in_flight: IntGauge,
    in_flight_oldest: Gauge,
    /// Start of each job in flight, by a number given in start order (the first entry is the oldest).
    in_flight_starts: Arc<Mutex<InFlightStarts>>,
    retries: IntCounterVec,
    dead_letters: IntCounterVec,
    identity_score: Histogram,
    model_load: Gauge,
    warmup: Gauge,
    engine_probes: IntCounterVec,
    tuning_duration: Histogram,
    tuning_final_loss: Histogram,
    tuning_nonfinite_losses: IntCounter,
    adapter_cache_hits: IntCounter,
    adapter_cache_misses: IntCounter,
    identity_cache_hits: IntCounter,
    identity_cache_misses: IntCounter,
    tuning_last_loss: Gauge,
    pub(super) broker_connected: IntGauge,
    broker_reconnects: IntCounter,
    pub(super) readiness: Readiness,
    build_info: IntGaugeVec,
}

#[derive(Debug, Default)]
struct InFlightStarts {
    next: u64,
    starts: BTreeMap<u64, Instant>,
}

/// `pva_ready` and `pva_cold_start_seconds`, shared with [`Health`](super::Health), which sets them
/// whenever readiness may have changed.
#[derive(Debug, Clone)]
pub(super) struct Readiness {
    ready: IntGauge,
    cold_start: Gauge,
    /// When the process started (from the kernel on Linux, else when the metrics were created).
    process_start: Instant,
    /// Whether the worker has been ready once (the cold start is recorded then, only once).
    was_ready: Arc<AtomicBool>,
}

impl Readiness {
    /// Sets `pva_ready`; the first time `ready` is true, also the cold start.
    pub(super) fn observe(&self, ready: bool) {
        self.ready.set(i64::from(ready));
        if ready && !self.was_ready.swap(true, Ordering::AcqRel) {
            self.cold_start
                .set(self.process_start.elapsed().as_secs_f64());
        }
    }
}

/// Seconds since this process started, from the kernel: `/proc/uptime` (seconds since boot, to 10 ms)
/// less field 22 of `/proc/self/stat` (the process's start, in clock ticks since boot).
// NOTE: user-space clock ticks (USER_HZ) are 100 per second on every architecture the worker ships
// for; the kernel converts to them whatever its internal HZ.
fn process_age() -> Option<Duration> {
    const USER_HZ: f64 = 100.0;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may contain spaces; fields count after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let start_ticks: f64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
    let age = uptime - start_ticks / USER_HZ;
    (age.is_finite() && age >= 0.0).then(|| Duration::from_secs_f64(age))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `metric` in `registry` and returns it.
fn register<M>(registry: &Registry, metric: M) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    // NOTE: registration only fails for an invalid or duplicate name, i.e. a bug in the definitions
    // below, which `tests::every_metric_is_exposed_once` catches.
    registry
        .register(Box::new(metric.clone()))
        .expect("metric definitions are valid and unique");
    metric
}

/// The process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds`, `process_start_time_seconds`, ...), under their standard names.
#[cfg(target_os = "linux")]
fn register_process_metrics(registry: &Registry) {
    let collector = prometheus::process_collector::ProcessCollector::for_self();
    registry
        .register(Box::new(collector))
        .expect("process metrics are registered once");
}

#[cfg(not(target_os = "linux"))]
fn register_process_metrics(_registry: &Registry) {}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid histogram")
}

/// A duration or value as a histogram may take it: not negative, not NaN.
// NOTE: one NaN observation would make a histogram's `_sum` NaN for the life of the process.
fn sanitize_secs(secs: f64) -> f64 {
    if secs.is_finite() && secs > 0.0 {
        secs
    } else {
        0.0
    }
}

impl Metrics {
    /// Creates every metric in a fresh registry. `pva_build_info` starts with empty `model` labels
    /// until [`Metrics::model_loaded`].
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let jobs = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "pva_jobs_total",
                    "Jobs finished, by outcome (succeeded, failed, republished); one outcome per job.",
                ),
                &["outcome"],
            )
            .expect("valid counter"),
        );
        let job_duration = register(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "pva_job_duration_seconds",
                    "Seconds from the start of work on a job to its outcome, by outcome.",
                )
                .buckets(JOB_BUCKETS.to_vec()),
                &["outcome"],
            )
            .expect("valid histogram"),
        );
        let stage_duration = register(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "pva_stage_duration_seconds",
                    "Seconds spent in one stage of one job (fetch, preprocess, encode, tune, denoise, decode, upload).",
                )
                .buckets(STAGE_BUCKETS.to_vec()),
                &["stage"],
            )
            .expect("valid histogram"),
        );
        let queue_wait = register(
            r,
            histogram(
                "pva_queue_wait_seconds",
                "Seconds from the job message's AMQP timestamp to the start of work on it.",
                QUEUE_WAIT_BUCKETS,
            ),
        );
        let in_flight = register(
            r,
            IntGauge::new("pva_jobs_in_flight", "Jobs being worked on right now.")
                .expect("valid gauge"),
        );
        let in_flight_oldest = register(
            r,
            Gauge::new(
                "pva_jobs_in_flight_oldest_seconds",
                "Seconds the oldest job in flight has been worked on, as of the scrape (0 when none).",
            )
            .expect("valid gauge"),
        );
        let retries = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "pva_retries_total",
                    "Job deliveries returned to the queue for another try, by failure reason.",
                ),
                &["reason"],
            )
            .expect("valid counter"),
        );
        let dead_letters = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "pva_dead_letters_total",
                    "Jobs given up and moved to the dead-letter queue, by reason.",
                ),
                &["reason"],
            )
            .expect("valid counter"),
        );
        let identity_score = register(
            r,
            histogram(
                "pva_identity_score",
                "Identity score of each output of a succeeded job (cosine similarity of its face to the references).",
                IDENTITY_SCORE_BUCKETS,
            ),
        );
        let model_load = register(
            r,
            Gauge::new(
                "pva_model_load_seconds",
                "Seconds the last model load took (manifest, hash checks, graph sessions).",
            )
            .expect("valid gauge"),
        );
        let warmup = register(
            r,
            Gauge::new(
                "pva_warmup_seconds",
                "Seconds the warm-up edit took before the worker counted as started (the slowest inference thread's).",
            )
            .expect("valid gauge"),
        );
        let engine_probes = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "pva_engine_probes_total",
                    "Probe inferences run after consecutive engine failures, by result (succeeded: the jobs were at fault; failed: /healthz fails).",
                ),
                &["result"],
            )
            .expect("valid counter"),
        );
        let tuning_duration = register(
            r,
            histogram(
                "pva_tuning_duration_seconds",
                "Seconds one identity-adapter tuning run took (all its steps).",
                TUNING_BUCKETS,
            ),
        );
        let tuning_final_loss = register(
            r,
            histogram(
                "pva_tuning_final_loss",
                "Final training loss of each adapter tuning run with a finite loss.",
                TUNING_LOSS_BUCKETS,
            ),
        );
        let tuning_nonfinite_losses = register(
            r,
            IntCounter::new(
                "pva_tuning_nonfinite_losses_total",
                "Adapter tuning runs whose final loss was NaN or infinite.",
            )
            .expect("valid counter"),
        );
        let adapter_cache_hits = register(
            r,
            IntCounter::new(
                "pva_adapter_cache_hits_total",
                "Jobs whose tuned identity adapter came from the cache (no tuning).",
            )
            .expect("valid counter"),
        );
        let adapter_cache_misses = register(
            r,
            IntCounter::new(
                "pva_adapter_cache_misses_total",
                "Jobs whose identity adapter was not cached and had to be tuned.",
            )
            .expect("valid counter"),
        );
        let identity_cache_hits = register(
            r,
            IntCounter::new(
                "pva_identity_cache_hits_total",
                "Jobs whose references' identity tokens came from the in-memory identity cache (no face embedder or id former run for them).",
            )
            .expect("valid counter"),
        );
        let identity_cache_misses = register(
            r,
            IntCounter::new(
                "pva_identity_cache_misses_total",
                "Jobs whose references' identity tokens were not cached and were computed.",
            )
            .expect("valid counter"),
        );
        let tuning_last_loss = register(
            r,
            Gauge::new(
                "pva_tuning_last_loss",
                "Final training loss of the most recent adapter tuning run.",
            )
            .expect("valid gauge"),
        );
        let broker_connected = register(
            r,
            IntGauge::new(
                "pva_broker_connected",
                "1 while the worker holds an open connection to RabbitMQ, else 0.",
            )
            .expect("valid gauge"),
        );
        let broker_reconnects = register(
            r,
            IntCounter::new(
                "pva_broker_reconnects_total",
                "Connections to RabbitMQ re-established after one was lost.",
            )
            .expect("valid counter"),
        );
        let ready = register(
            r,
            IntGauge::new(
                "pva_ready",
                "1 while the worker is ready to take jobs (what /readyz answers), else 0.",
            )
            .expect("valid gauge"),
        );
        let cold_start = register(
            r,
            Gauge::new(
                "pva_cold_start_seconds",
                "Seconds from process start to the first time the worker was ready (0 until then).",
            )
            .expect("valid gauge"),
        );
        register_process_metrics(r);
        let process_start = process_age()
            .and_then(|age| Instant::now().checked_sub(age))
            .unwrap_or_else(Instant::now);
        let build_info = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "pva_build_info",
                    "Always 1; labels name the worker version and the loaded model and its version.",
                ),
                &["version", "model", "model_version"],
            )
            .expect("valid gauge"),
        );

        // Every outcome and stage series exists from the start, so rates and ratios are defined
        // before the first job instead of appearing mid-graph.
        for outcome in JobOutcome::LABELS {
            jobs.with_label_values(&[outcome]);
        }
        for outcome in JobOutcome::LABELS {
            job_duration.with_label_values(&[outcome]);
        }
        for stage in Stage::ALL {
            stage_duration.with_label_values(&[stage.as_str()]);
        }
        for reason in ALERTED_REASONS {
            retries.with_label_values(&[reason]);
            dead_letters.with_label_values(&[reason]);
        }
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), "", ""])
            .set(1);
        for result in ["succeeded", "failed"] {
            engine_probes.with_label_values(&[result]);
        }

        Self {
            registry,
            jobs,
            job_duration,
            stage_duration,
            queue_wait,
            in_flight,
            in_flight_oldest,
            in_flight_starts: Arc::default(),
            retries,
            dead_letters,
            identity_score,
            model_load,
            warmup,
            engine_probes,
            tuning_duration,
            tuning_final_loss,
            tuning_nonfinite_losses,
            adapter_cache_hits,
            adapter_cache_misses,
            identity_cache_hits,
            identity_cache_misses,
            tuning_last_loss,
            broker_connected,
            broker_reconnects,
            readiness: Readiness {
                ready,
                cold_start,
                process_start,
                was_ready: Arc::default(),
            },
            build_info,
        }
    }

    /// Counts a job finished with `outcome` (once per job) after `secs` of work on its delivery.
    pub fn job_finished(&self, outcome: JobOutcome, secs: f64) {
        self.jobs.with_label_values(&[outcome.label()]).inc();
        self.job_duration
            .with_label_values(&[outcome.label()])
            .observe(sanitize_secs(secs));
    }

    /// Counts a delivery returned to the queue after a transient failure (`reason`: its stable code,
    /// e.g. `storage_error`). Not an outcome: the job goes on.
    pub fn job_retried(&self, reason: &'static str) {
        self.retries.with_label_values(&[reason]).inc();
    }

    /// Counts a job's message moved to the dead-letter queue (`reason`: the failure's stable code, e.g.
    /// `bad_image`). The job's outcome is counted separately ([`JobOutcome::Failed`]).
    pub fn job_dead_lettered(&self, reason: &'static str) {
        self.dead_letters.with_label_values(&[reason]).inc();
    }

    /// Records the identity score of one output of a succeeded job; a NaN or infinite score (no score)
    /// is not observed.
    pub fn observe_identity_score(&self, score: f64) {
        if score.is_finite() {
            self.identity_score.observe(score);
        }
    }

    /// Records how long one stage of one job took.
    pub fn observe_stage(&self, stage: Stage, secs: f64) {
        self.stage_duration
            .with_label_values(&[stage.as_str()])
            .observe(sanitize_secs(secs));
    }

    /// Records the wait of a job that was published at `published` (the AMQP `timestamp` property,
    /// `UNIX_EPOCH + Duration::from_secs(ts)`) and whose work starts now.
    pub fn observe_queue_wait_since(&self, published: SystemTime) {
        self.observe_queue_wait(queue_wait_secs(published, SystemTime::now()));
    }

    /// Records a queue wait in seconds.
    pub fn observe_queue_wait(&self, secs: f64) {
        self.queue_wait.observe(sanitize_secs(secs));
    }

    /// Counts a job as in flight until the returned guard is dropped (also on panic or early return).
    #[must_use = "the job stops counting as in flight when the guard is dropped"]
    pub fn in_flight_guard(&self) -> InFlightGuard {
        let id = {
            let mut jobs = lock(&self.in_flight_starts);
            let id = jobs.next;
            jobs.next += 1;
            jobs.starts.insert(id, Instant::now());
            id
        };
        self.in_flight.inc();
        InFlightGuard {
            gauge: self.in_flight.clone(),
            starts: Arc::clone(&self.in_flight_starts),
            id,
        }
    }

    /// Seconds the oldest job in flight has been worked on; 0 when none is.
    pub fn oldest_in_flight_secs(&self) -> f64 {
        let jobs = lock(&self.in_flight_starts);
        jobs.starts
            .first_key_value()
            .map_or(0.0, |(_, start)| start.elapsed().as_secs_f64())
    }

    /// Records a finished model load: the model's name and version (from its manifest) go into
    /// `pva_build_info`, the seconds it took into `pva_model_load_seconds`.
    pub fn model_loaded(&self, model: &str, model_version: &str, secs: f64) {
        // NOTE: reset first so that exactly one build_info series exists, even after a reload.
        self.build_info.reset();
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), model, model_version])
            .set(1);
        self.model_load.set(sanitize_secs(secs));
    }

    /// Records the warm-up edit's seconds (`pva_warmup_seconds`).
    pub fn warmed_up(&self, secs: f64) {
        self.warmup.set(sanitize_secs(secs));
    }

    /// Counts an engine probe by whether it succeeded.
    pub fn engine_probed(&self, succeeded: bool) {
        let result = if succeeded { "succeeded" } else { "failed" };
        self.engine_probes.with_label_values(&[result]).inc();
    }

    /// Records one adapter tuning run: its duration and its final loss (a NaN or infinite loss is
    /// counted in `pva_tuning_nonfinite_losses_total` instead of the loss histogram).
    pub fn tuning_finished(&self, secs: f64, last_loss: f64) {
        self.tuning_duration.observe(sanitize_secs(secs));
        self.tuning_last_loss.set(last_loss);
        if last_loss.is_finite() {
            self.tuning_final_loss.observe(last_loss);
        } else {
            self.tuning_nonfinite_losses.inc();
        }
    }

    /// Counts a job whose adapter came from the cache.
    pub fn adapter_cache_hit(&self) {
        self.adapter_cache_hits.inc();
    }

    /// Counts a job whose adapter had to be tuned.
    pub fn adapter_cache_miss(&self) {
        self.adapter_cache_misses.inc();
    }

    /// Counts a job's identity-cache lookup: a hit (its identity tokens were cached) or a miss.
    pub fn identity_cache_lookup(&self, hit: bool) {
        if hit {
            self.identity_cache_hits.inc();
        } else {
            self.identity_cache_misses.inc();
        }
    }

    /// Counts a connection to RabbitMQ re-established after a loss (not the first connection).
    /// Whether the broker is connected is set through
    /// [`Health::set_broker_connected`](super::Health::set_broker_connected).
    pub fn broker_reconnected(&self) {
        self.broker_reconnects.inc();
    }

    /// All metrics in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        self.in_flight_oldest.set(self.oldest_in_flight_secs());
        let mut text = String::new();
        // NOTE: the text encoder only fails on a family without samples or without a name, and
        // `Registry::gather` drops empty families; a failure is logged rather than failing a scrape.
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut text) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        text
    }
}

/// Seconds between `published` and `now`; 0 when the publisher's clock is ahead of ours.
pub fn queue_wait_secs(published: SystemTime, now: SystemTime) -> f64 {
    now.duration_since(published)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The in-flight starts, also after a thread panicked while holding them (they stay consistent: each
/// change is one map operation).
fn lock(starts: &Mutex<InFlightStarts>) -> std::sync::MutexGuard<'_, InFlightStarts> {
    starts
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keeps one job counted in `pva_jobs_in_flight` (and its start in
/// `pva_jobs_in_flight_oldest_seconds`); see [`Metrics::in_flight_guard`].
#[derive(Debug)]
pub struct InFlightGuard {
    gauge: IntGauge,
    starts: Arc<Mutex<InFlightStarts>>,
    id: u64,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        lock(&self.starts).starts.remove(&self.id);
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::test_support::sample;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn every_metric_is_exposed_once_with_help_and_prefix() {
        let m = Metrics::new();
        let text = m.render();
        let expected = [
            ("pva_jobs_total", "counter"),
            ("pva_job_duration_seconds", "histogram"),
            ("pva_stage_duration_seconds", "histogram"),
            ("pva_queue_wait_seconds", "histogram"),
            ("pva_jobs_in_flight", "gauge"),
            ("pva_jobs_in_flight_oldest_seconds", "gauge"),
            ("pva_retries_total", "counter"),
            ("pva_dead_letters_total", "counter"),
            ("pva_identity_score", "histogram"),
            ("pva_model_load_seconds", "gauge"),
            ("pva_warmup_seconds", "gauge"),
            ("pva_engine_probes_total", "counter"),
            ("pva_tuning_duration_seconds", "histogram"),
            ("pva_tuning_final_loss", "histogram"),
            ("pva_tuning_nonfinite_losses_total", "counter"),
            ("pva_adapter_cache_hits_total", "counter"),
            ("pva_adapter_cache_misses_total", "counter"),
            ("pva_identity_cache_hits_total", "counter"),
            ("pva_identity_cache_misses_total", "counter"),
            ("pva_tuning_last_loss", "gauge"),
            ("pva_broker_connected", "gauge"),
            ("pva_broker_reconnects_total", "counter"),
            ("pva_ready", "gauge"),
            ("pva_cold_start_seconds", "gauge"),
            ("pva_build_info", "gauge"),
            // The prometheus crate's process collector, under the standard names.
            ("process_cpu_seconds_total", "counter"),
            ("process_resident_memory_bytes", "gauge"),
            ("process_open_fds", "gauge"),
            ("process_start_time_seconds", "gauge"),
        ];
        for (name, kind) in expected {
            let type_line = format!("# TYPE {name} {kind}");
            assert_eq!(
                text.matches(&type_line).count(),
                1,
                "{type_line} in\n{text}"
            );
            assert!(text.contains(&format!("# HELP {name} ")), "help of {name}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.starts_with("pva_") || line.starts_with("process_"),
                "a sample neither the worker's nor the process's: {line}"
            );
        }
        let rss = sample(&text, "process_resident_memory_bytes", "").unwrap();
        assert!(rss > 1e6, "resident memory of this test process: {rss}");
        let started = sample(&text, "process_start_time_seconds", "").unwrap();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            started > now - 86_400.0 && started <= now + 1.0,
            "{started}"
        );
    }

    #[test]
    fn outcomes_and_stages_exist_at_zero_before_first_use() {
        let text = Metrics::new().render();
        for outcome in JobOutcome::LABELS {
            let labels = format!("outcome=\"{outcome}\"");
            assert_eq!(
                sample(&text, "pva_jobs_total", &labels),
                Some(0.0),
                "{outcome}"
            );
        }
        for stage in Stage::ALL {
            let labels = format!("stage=\"{}\"", stage.as_str());
            assert_eq!(
                sample(&text, "pva_stage_duration_seconds_count", &labels),
                Some(0.0),
                "{stage:?}"
            );
        }
        // The reasons an alert adds up exist too; other reasons appear on first use.
        for name in ["pva_retries_total", "pva_dead_letters_total"] {
            assert_eq!(
                sample(&text, name, "reason=\"model_error\""),
                Some(0.0),
                "{name}"
            );
            assert_eq!(text.matches(&format!("\n{name}{{")).count(), 1, "{name}");
        }
        assert_eq!(
            sample(&text, "pva_jobs_in_flight_oldest_seconds", ""),
            Some(0.0)
        );
        assert_eq!(sample(&text, "pva_ready", ""), Some(0.0));
        assert_eq!(sample(&text, "pva_cold_start_seconds", ""), Some(0.0));
    }

    #[test]
    fn each_job_counts_once_and_retries_and_dead_letters_count_apart() {
        let m = Metrics::new();
        // A job that succeeds at once, one retried twice then dead-lettered, one dead-lettered at
        // once, and a republished redelivery: four jobs.
        m.job_finished(JobOutcome::Succeeded, 2.0);
        m.job_retried("storage_error");
        m.job_retried("model_error");
        m.job_finished(JobOutcome::Failed, 0.3);
        m.job_dead_lettered("delivery_limit");
        m.job_finished(JobOutcome::Failed, 0.05);
        m.job_dead_lettered("bad_image");
        m.job_finished(JobOutcome::Republished, 0.2);
        let text = m.render();
        let jobs = |o: &str| sample(&text, "pva_jobs_total", &format!("outcome=\"{o}\""));
        assert_eq!(jobs("succeeded"), Some(1.0));
        assert_eq!(jobs("failed"), Some(2.0));
        assert_eq!(jobs("republished"), Some(1.0));
        assert_eq!(jobs("retried"), None, "a retry is not an outcome");
        assert_eq!(
            jobs("dead_lettered"),
            None,
            "dead letters have their own counter"
        );
        let total: f64 = text
            .lines()
            .filter(|l| l.starts_with("pva_jobs_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        assert_eq!(total, 4.0, "sum(pva_jobs_total) counts each job once");
        let reason = |name: &str, r: &str| sample(&text, name, &format!("reason=\"{r}\""));
        assert_eq!(reason("pva_retries_total", "storage_error"), Some(1.0));
        assert_eq!(reason("pva_retries_total", "model_error"), Some(1.0));
        assert_eq!(
            reason("pva_dead_letters_total", "delivery_limit"),
            Some(1.0)
        );
        assert_eq!(reason("pva_dead_letters_total", "bad_image"), Some(1.0));
        assert_eq!(reason("pva_dead_letters_total", "model_error"), Some(0.0));
        let duration = |o: &str, suffix: &str| {
            sample(
                &text,
                &format!("pva_job_duration_seconds_{suffix}"),
                &format!("outcome=\"{o}\""),
            )
        };
        assert_eq!(duration("failed", "count"), Some(2.0));
        assert_eq!(duration("succeeded", "sum"), Some(2.0));
        assert_eq!(
            sample(
                &text,
                "pva_job_duration_seconds_bucket",
                "outcome=\"succeeded\",le=\"1\""
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                "pva_job_duration_seconds_bucket",
                "outcome=\"succeeded\",le=\"2.5\""
            ),
            Some(1.0)
        );
    }

    #[test]
    fn identity_scores_land_in_their_buckets_and_nan_is_skipped() {
        let m = Metrics::new();
        for score in [0.82, 0.35, -0.1, f64::NAN, 0.95] {
            m.observe_identity_score(score);
        }
        let text = m.render();
        let bucket = |le: &str| sample(&text, "pva_identity_score_bucket", &format!("le=\"{le}\""));
        assert_eq!(bucket("0"), Some(1.0), "a negative score is at or below 0");
        assert_eq!(bucket("0.4"), Some(2.0));
        assert_eq!(bucket("0.8"), Some(2.0));
        assert_eq!(bucket("0.9"), Some(3.0));
        assert_eq!(bucket("1"), Some(4.0));
        assert_eq!(sample(&text, "pva_identity_score_count", ""), Some(4.0));
    }

    #[test]
    fn stage_observations_land_in_their_buckets() {
        let m = Metrics::new();
        m.observe_stage(Stage::Denoise, 3.0);
        m.observe_stage(Stage::Denoise, 0.02);
        m.observe_stage(Stage::Fetch, f64::NAN);
        m.observe_stage(Stage::Upload, -1.0);
        let text = m.render();
        let bucket = |stage: &str, le: &str| {
            sample(
                &text,
                "pva_stage_duration_seconds_bucket",
                &format!("stage=\"{stage}\",le=\"{le}\""),
            )
        };
        assert_eq!(bucket("denoise", "0.01"), Some(0.0));
        assert_eq!(bucket("denoise", "0.025"), Some(1.0));
        assert_eq!(bucket("denoise", "2.5"), Some(1.0));
        assert_eq!(bucket("denoise", "5"), Some(2.0));
        assert_eq!(bucket("denoise", "600"), Some(2.0));
        assert_eq!(bucket("denoise", "+Inf"), Some(2.0));
        let sum = sample(&text, "pva_stage_duration_seconds_sum", "stage=\"denoise\"").unwrap();
        assert!((sum - 3.02).abs() < 1e-9, "{sum}");
        // NaN and negative durations count as 0 instead of poisoning the sum.
        assert_eq!(bucket("fetch", "0.01"), Some(1.0));
        assert_eq!(
            sample(&text, "pva_stage_duration_seconds_sum", "stage=\"fetch\""),
            Some(0.0)
        );
        assert_eq!(bucket("upload", "0.01"), Some(1.0));
    }

    #[test]
    fn in_flight_guard_decrements_on_drop_and_on_panic() {
        let m = Arc::new(Metrics::new());
        let a = m.in_flight_guard();
        let b = m.in_flight_guard();
        assert_eq!(m.in_flight.get(), 2);
        drop(a);
        assert_eq!(m.in_flight.get(), 1);
        let m2 = Arc::clone(&m);
        let joined = std::thread::spawn(move || {
            let _guard = m2.in_flight_guard();
            assert_eq!(m2.in_flight.get(), 2);
            panic!("job panicked");
        })
        .join();
        assert!(joined.is_err());
        assert_eq!(
            m.in_flight.get(),
            1,
            "a panicking job is no longer in flight"
        );
        drop(b);
        assert_eq!(m.in_flight.get(), 0);
        assert_eq!(sample(&m.render(), "pva_jobs_in_flight", ""), Some(0.0));
    }

    #[test]
    fn the_oldest_job_in_flight_is_aged_at_each_scrape() {
        let m = Metrics::new();
        let first = m.in_flight_guard();
        std::thread::sleep(Duration::from_millis(60));
        let second = m.in_flight_guard();
        let age = sample(&m.render(), "pva_jobs_in_flight_oldest_seconds", "").unwrap();
        assert!((0.06..5.0).contains(&age), "{age}");
        // The oldest finishes: the age is the second job's, which started later.
        drop(first);
        let age = sample(&m.render(), "pva_jobs_in_flight_oldest_seconds", "").unwrap();
        assert!(age < 0.06, "{age}");
        drop(second);
        assert_eq!(m.oldest_in_flight_secs(), 0.0);
        assert_eq!(
            sample(&m.render(), "pva_jobs_in_flight_oldest_seconds", ""),
            Some(0.0)
        );
    }

    #[test]
    fn the_process_age_comes_from_the_kernel() {
        let age = process_age().expect("/proc is readable on Linux");
        // This test process started before this line and (much) less than a day ago.
        assert!(
            age > Duration::ZERO && age < Duration::from_secs(86_400),
            "{age:?}"
        );
    }

    #[test]
    fn the_cold_start_is_recorded_the_first_time_the_worker_is_ready() {
        let m = Metrics::new();
        let readiness = m.readiness.clone();
        readiness.observe(false);
        let text = m.render();
        assert_eq!(sample(&text, "pva_ready", ""), Some(0.0));
        assert_eq!(sample(&text, "pva_cold_start_seconds", ""), Some(0.0));
        readiness.observe(true);
        let first = sample(&m.render(), "pva_cold_start_seconds", "").unwrap();
        assert!(first > 0.0, "{first}");
        let age = process_age().unwrap().as_secs_f64();
        assert!(
            first <= age + 0.05,
            "cold start {first} within the process age {age}"
        );
        assert_eq!(sample(&m.render(), "pva_ready", ""), Some(1.0));
        // Losing and regaining readiness (a broker reconnect) is not another cold start.
        readiness.observe(false);
        std::thread::sleep(Duration::from_millis(20));
        readiness.observe(true);
        assert_eq!(
            sample(&m.render(), "pva_cold_start_seconds", ""),
            Some(first)
        );
    }

    #[test]
    fn queue_wait_is_measured_from_the_publish_time() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(queue_wait_secs(t0, t0 + Duration::from_millis(2500)), 2.5);
        assert_eq!(
            queue_wait_secs(t0 + Duration::from_secs(3), t0),
            0.0,
            "clock skew"
        );
        let m = Metrics::new();
        m.observe_queue_wait_since(SystemTime::now() - Duration::from_secs(90));
        let text = m.render();
        assert_eq!(
            sample(&text, "pva_queue_wait_seconds_bucket", "le=\"60\""),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "pva_queue_wait_seconds_bucket", "le=\"120\""),
            Some(1.0)
        );
        assert_eq!(sample(&text, "pva_queue_wait_seconds_count", ""), Some(1.0));
    }

    #[test]
    fn model_load_replaces_build_info() {
        let m = Metrics::new();
        let version = env!("CARGO_PKG_VERSION");
        // Label pairs render sorted by name.
        let before = format!("model=\"\",model_version=\"\",version=\"{version}\"");
        assert_eq!(sample(&m.render(), "pva_build_info", &before), Some(1.0));
        m.model_loaded("pva-tiny", "0.1.0", 1.25);
        m.model_loaded("pva-sd2", "1.0.0", 42.0);
        let text = m.render();
        assert_eq!(text.matches("\npva_build_info{").count(), 1, "{text}");
        let after = format!("model=\"pva-sd2\",model_version=\"1.0.0\",version=\"{version}\"");
        assert_eq!(sample(&text, "pva_build_info", &after), Some(1.0));
        assert_eq!(sample(&text, "pva_model_load_seconds", ""), Some(42.0));
        assert_eq!(sample(&text, "pva_warmup_seconds", ""), Some(0.0));
        m.warmed_up(0.75);
        m.engine_probed(true);
        m.engine_probed(false);
        m.engine_probed(false);
        let text = m.render();
        assert_eq!(sample(&text, "pva_warmup_seconds", ""), Some(0.75));
        let probes = |r: &str| sample(&text, "pva_engine_probes_total", &format!("result=\"{r}\""));
        assert_eq!(probes("succeeded"), Some(1.0));
        assert_eq!(probes("failed"), Some(2.0));
    }

    #[test]
    fn tuning_cache_and_broker_counters() {
        let m = Metrics::new();
        m.tuning_finished(12.0, 0.125);
        m.tuning_finished(7.0, f64::NAN);
        m.tuning_finished(3.0, 0.5);
        m.adapter_cache_hit();
        m.adapter_cache_hit();
        m.adapter_cache_miss();
        m.broker_reconnected();
        let text = m.render();
        assert_eq!(
            sample(&text, "pva_tuning_duration_seconds_count", ""),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "pva_tuning_duration_seconds_sum", ""),
            Some(22.0)
        );
        assert_eq!(sample(&text, "pva_tuning_last_loss", ""), Some(0.5));
        // The loss histogram holds the finite losses; the NaN one is counted apart.
        assert_eq!(sample(&text, "pva_tuning_final_loss_count", ""), Some(2.0));
        assert_eq!(sample(&text, "pva_tuning_final_loss_sum", ""), Some(0.625));
        assert_eq!(
            sample(&text, "pva_tuning_final_loss_bucket", "le=\"0.25\""),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "pva_tuning_nonfinite_losses_total", ""),
            Some(1.0)
        );
        assert_eq!(sample(&text, "pva_adapter_cache_hits_total", ""), Some(2.0));
        assert_eq!(
            sample(&text, "pva_adapter_cache_misses_total", ""),
            Some(1.0)
        );
        assert_eq!(sample(&text, "pva_broker_reconnects_total", ""), Some(1.0));
    }
}
