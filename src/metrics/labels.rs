//! The label values and histogram buckets of the metrics: [`JobOutcome`], the failure reasons the
//! alerts need from start-up ([`ALERTED_REASONS`]) and the bucket boundaries
//! (the `stage` label's values are [`crate::model::Stage`]'s names), so no caller picks a label value
//! of its own.

/// Buckets of `pva_stage_duration_seconds`, in seconds: 10 ms (a fetch from a nearby store) to
/// 10 min (tuning or a long denoise of the full-size model on CPU), about three per decade.
pub const STAGE_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0, 600.0,
];

/// Buckets of `pva_queue_wait_seconds`, in seconds: a job picked up at once to a backlog of two hours.
// NOTE: the AMQP `timestamp` property has whole-second resolution, so the sub-second buckets only say
// "picked up within the second it was published".
pub const QUEUE_WAIT_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
];

/// Buckets of `pva_tuning_duration_seconds`, in seconds: the 40-step adapter tuning takes seconds on a
/// GPU and minutes on CPU.
pub const TUNING_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0, 600.0,
];

/// Buckets of `pva_job_duration_seconds`, in seconds: from start of work on a delivery to its ack, a
/// republished result (well under a second) to a full-size job that tunes on CPU (up to an hour).
pub const JOB_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// Buckets of `pva_identity_score`: the cosine similarity of an output face to the mean reference
/// embedding, in steps of 0.1 (a score at or below 0 lands in the first bucket).
pub const IDENTITY_SCORE_BUCKETS: &[f64] = &[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// Buckets of `pva_tuning_final_loss`: the final training loss of an adapter tuning run (a
/// noise-prediction MSE, usually 0.01 to 0.5), about three per decade from 0.001 to 10.
pub const TUNING_LOSS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Failure reasons whose `pva_retries_total` and `pva_dead_letters_total` series exist (at 0) from
/// start-up, because an alert adds the two (`PvaModelErrorsRepeated`): a sum with a missing series
/// would be empty until both had happened once.
pub const ALERTED_REASONS: [&str; 1] = ["model_error"];

/// How the worker finished with a delivery of a job (`pva_jobs_total{outcome}`): exactly one
/// outcome per job, so `sum(pva_jobs_total)` counts jobs once.
///
/// A transient failure that is retried is not an outcome (the job goes on), it is counted in
/// `pva_retries_total{reason}` alone ([`Metrics::job_retried`](super::Metrics::job_retried)).
/// Dead-lettering is counted in its own counter, `pva_dead_letters_total{reason}`
/// ([`Metrics::job_dead_lettered`](super::Metrics::job_dead_lettered)): every `Failed` job is
/// dead-lettered, so that counter breaks `failed` down by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// Outputs uploaded and a success result published.
    Succeeded,
    /// The job cannot succeed (bad input, exhausted retries); a failure result was published and the
    /// message dead-lettered.
    Failed,
    /// A redelivery of a job whose result was already stored: that result was published again.
    Republished,
}

impl JobOutcome {
    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Republished => "republished",
        }
    }

    /// Every `outcome` label value, so each series exists (at 0) from the start.
    pub const LABELS: [&'static str; 3] = ["succeeded", "failed", "republished"];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_increase_and_span_their_ranges() {
        for (name, buckets, low, high) in [
            ("stage", STAGE_BUCKETS, 0.01, 600.0),
            ("queue wait", QUEUE_WAIT_BUCKETS, 0.1, 7200.0),
            ("tuning", TUNING_BUCKETS, 0.1, 600.0),
            ("job", JOB_BUCKETS, 0.1, 3600.0),
            ("identity score", IDENTITY_SCORE_BUCKETS, 0.0, 1.0),
            ("tuning loss", TUNING_LOSS_BUCKETS, 0.001, 10.0),
        ] {
            assert!(
                buckets.windows(2).all(|w| w[0] < w[1]),
                "{name} not increasing"
            );
            assert_eq!(buckets.first(), Some(&low), "{name}");
            assert_eq!(buckets.last(), Some(&high), "{name}");
        }
    }
}
