//! The [`Metrics`] registry: every metric's name, help text, labels and buckets, and the typed
//! methods that record them.

use std::time::SystemTime;

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::{JobOutcome, Stage, QUEUE_WAIT_BUCKETS, STAGE_BUCKETS, TUNING_BUCKETS};

/// Every metric of the worker, in its own registry.
///
/// Cheap to share as `Arc<Metrics>`; every method takes `&self` and is safe from any thread.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    jobs: IntCounterVec,
    stage_duration: HistogramVec,
    queue_wait: Histogram,
    in_flight: IntGauge,
    retries: IntCounterVec,
    dead_letters: IntCounterVec,
    model_load: Gauge,
    tuning_duration: Histogram,
    adapter_cache_hits: IntCounter,
    adapter_cache_misses: IntCounter,
    tuning_last_loss: Gauge,
    pub(super) broker_connected: IntGauge,
    broker_reconnects: IntCounter,
    build_info: IntGaugeVec,
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
                    "Job deliveries finished, by outcome (succeeded, failed, retried, dead_lettered, republished).",
                ),
                &["outcome"],
            )
            .expect("valid counter"),
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
        let model_load = register(
            r,
            Gauge::new(
                "pva_model_load_seconds",
                "Seconds the last model load took (manifest, hash checks, graph sessions).",
            )
            .expect("valid gauge"),
        );
        let tuning_duration = register(
            r,
            histogram(
                "pva_tuning_duration_seconds",
                "Seconds one identity-adapter tuning run took (all its steps).",
                TUNING_BUCKETS,
            ),
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
        for stage in Stage::ALL {
            stage_duration.with_label_values(&[stage.as_str()]);
        }
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), "", ""])
            .set(1);

        Self {
            registry,
            jobs,
            stage_duration,
            queue_wait,
            in_flight,
            retries,
            dead_letters,
            model_load,
            tuning_duration,
            adapter_cache_hits,
            adapter_cache_misses,
            tuning_last_loss,
            broker_connected,
            broker_reconnects,
            build_info,
        }
    }

    /// Counts one finished delivery of a job; retries and dead letters also count under their reason.
    pub fn job_finished(&self, outcome: JobOutcome) {
        self.jobs.with_label_values(&[outcome.label()]).inc();
        match outcome {
            JobOutcome::Retried { reason } => self.retries.with_label_values(&[reason]).inc(),
            JobOutcome::DeadLettered { reason } => {
                self.dead_letters.with_label_values(&[reason]).inc()
            }
            JobOutcome::Succeeded | JobOutcome::Failed | JobOutcome::Republished => {}
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
        self.in_flight.inc();
        InFlightGuard {
            gauge: self.in_flight.clone(),
        }
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

    /// Records one adapter tuning run: its duration and its final loss.
    pub fn tuning_finished(&self, secs: f64, last_loss: f64) {
        self.tuning_duration.observe(sanitize_secs(secs));
        self.tuning_last_loss.set(last_loss);
    }

    /// Counts a job whose adapter came from the cache.
    pub fn adapter_cache_hit(&self) {
        self.adapter_cache_hits.inc();
    }

    /// Counts a job whose adapter had to be tuned.
    pub fn adapter_cache_miss(&self) {
        self.adapter_cache_misses.inc();
    }

    /// Counts a connection to RabbitMQ re-established after a loss (not the first connection).
    /// Whether the broker is connected is set through
    /// [`Health::set_broker_connected`](super::Health::set_broker_connected).
    pub fn broker_reconnected(&self) {
        self.broker_reconnects.inc();
    }

    /// All metrics in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
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

/// Keeps one job counted in `pva_jobs_in_flight`; see [`Metrics::in_flight_guard`].
#[derive(Debug)]
pub struct InFlightGuard {
    gauge: IntGauge,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
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
            ("pva_stage_duration_seconds", "histogram"),
            ("pva_queue_wait_seconds", "histogram"),
            ("pva_jobs_in_flight", "gauge"),
            ("pva_model_load_seconds", "gauge"),
            ("pva_tuning_duration_seconds", "histogram"),
            ("pva_adapter_cache_hits_total", "counter"),
            ("pva_adapter_cache_misses_total", "counter"),
            ("pva_tuning_last_loss", "gauge"),
            ("pva_broker_connected", "gauge"),
            ("pva_broker_reconnects_total", "counter"),
            ("pva_build_info", "gauge"),
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
        // Vectors with free-form reasons appear on first use.
        m.job_finished(JobOutcome::Retried {
            reason: "storage_error",
        });
        m.job_finished(JobOutcome::DeadLettered {
            reason: "delivery_limit",
        });
        let text = m.render();
        for name in ["pva_retries_total", "pva_dead_letters_total"] {
            assert!(text.contains(&format!("# TYPE {name} counter")), "{name}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("pva_"), "unprefixed sample {line}");
        }
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
    }

    #[test]
    fn job_outcomes_count_with_their_reasons() {
        let m = Metrics::new();
        m.job_finished(JobOutcome::Succeeded);
        m.job_finished(JobOutcome::Succeeded);
        m.job_finished(JobOutcome::Failed);
        m.job_finished(JobOutcome::Retried {
            reason: "storage_error",
        });
        m.job_finished(JobOutcome::Retried {
            reason: "storage_error",
        });
        m.job_finished(JobOutcome::Retried {
            reason: "model_error",
        });
        m.job_finished(JobOutcome::DeadLettered {
            reason: "delivery_limit",
        });
        m.job_finished(JobOutcome::Republished);
        let text = m.render();
        let jobs = |o: &str| sample(&text, "pva_jobs_total", &format!("outcome=\"{o}\""));
        assert_eq!(jobs("succeeded"), Some(2.0));
        assert_eq!(jobs("failed"), Some(1.0));
        assert_eq!(jobs("retried"), Some(3.0));
        assert_eq!(jobs("dead_lettered"), Some(1.0));
        assert_eq!(jobs("republished"), Some(1.0));
        assert_eq!(
            sample(&text, "pva_retries_total", "reason=\"storage_error\""),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "pva_retries_total", "reason=\"model_error\""),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "pva_dead_letters_total", "reason=\"delivery_limit\""),
            Some(1.0)
        );
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
    }

    #[test]
    fn tuning_cache_and_broker_counters() {
        let m = Metrics::new();
        m.tuning_finished(12.0, 0.125);
        m.tuning_finished(3.0, 0.5);
        m.adapter_cache_hit();
        m.adapter_cache_hit();
        m.adapter_cache_miss();
        m.broker_reconnected();
        let text = m.render();
        assert_eq!(
            sample(&text, "pva_tuning_duration_seconds_count", ""),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "pva_tuning_duration_seconds_sum", ""),
            Some(15.0)
        );
        assert_eq!(sample(&text, "pva_tuning_last_loss", ""), Some(0.5));
        assert_eq!(sample(&text, "pva_adapter_cache_hits_total", ""), Some(2.0));
        assert_eq!(
            sample(&text, "pva_adapter_cache_misses_total", ""),
            Some(1.0)
        );
        assert_eq!(sample(&text, "pva_broker_reconnects_total", ""), Some(1.0));
    }
}
