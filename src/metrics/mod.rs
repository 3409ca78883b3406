//! Every metric of the worker, and the HTTP endpoints that expose them and the worker's health.
//!
//! [`Metrics`] owns a private Prometheus [`Registry`](prometheus::Registry) and each metric in it; names, help texts, label
//! sets and buckets are defined here and nowhere else. Callers record through typed methods
//! ([`Metrics::job_finished`], [`Metrics::observe_stage`], [`Metrics::in_flight_guard`], ...), so no
//! other module formats a metric name or picks a label value. [`Health`] holds the facts readiness
//! depends on (model loaded, an inference thread alive, broker connected) and sets `pva_ready` and the
//! cold start from them. [`serve_http`] answers `GET /metrics`, `/healthz`, `/readyz` and `/startupz`.
//! Besides the worker's own `pva_*` metrics the registry holds the prometheus crate's process
//! collector (`process_*`, Linux). The metrics are described for dashboard authors in `docs/metrics.md`.
//!
//! Its parts: `labels` (job outcomes, stages and histogram buckets), `registry` (the [`Metrics`]
//! and how they are recorded) and `http` ([`Health`] and [`serve_http`], the module's only use of
//! axum).

mod http;
mod labels;
mod registry;

pub use crate::model::{Stage, UnknownStage};
pub use http::{serve_http, Health, Liveness};
pub use labels::{
    JobOutcome, ALERTED_REASONS, IDENTITY_SCORE_BUCKETS, JOB_BUCKETS, QUEUE_WAIT_BUCKETS,
    STAGE_BUCKETS, TUNING_BUCKETS, TUNING_LOSS_BUCKETS,
};
pub use registry::{queue_wait_secs, InFlightGuard, Metrics};

#[cfg(test)]
mod test_support {
    /// The value of the sample `name{labels}` in `text` (labels as rendered, e.g. `stage="fetch"`).
    pub(super) fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
        let key = if labels.is_empty() {
            name.to_string()
        } else {
            format!("{name}{{{labels}}}")
        };
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' ')?.parse().ok())
    }
}
