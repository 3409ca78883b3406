//! The label values and histogram buckets of the metrics: [`JobOutcome`] and the bucket boundaries
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

/// What the worker did with a delivery of a job (`pva_jobs_total{outcome}`).
///
/// A job that cannot succeed is both `Failed` (its failure result is published) and `DeadLettered`
/// (its message is moved to the dead-letter queue) when the worker does both; throughput is
/// `succeeded + failed + republished`.
///
/// Retries and dead letters carry a reason, counted again in `pva_retries_total{reason}` and
/// `pva_dead_letters_total{reason}`. A reason is a `&'static str` (a stable code such as a
/// `JobFailure::code`) so that a label can never take an unbounded set of values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// Outputs uploaded and a success result published.
    Succeeded,
    /// The job cannot succeed (bad input, model refused it); a failure result was published.
    Failed,
    /// A transient failure; the delivery is returned to the queue to be tried again.
    Retried {
        /// Stable code of the failure, e.g. `storage_error`.
        reason: &'static str,
    },
    /// The job's message is moved to the dead-letter queue.
    DeadLettered {
        /// Stable code of why, e.g. the failure's code `bad_image`.
        reason: &'static str,
    },
    /// A redelivery of a job whose result was already stored: that result was published again.
    Republished,
}

impl JobOutcome {
    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Retried { .. } => "retried",
            Self::DeadLettered { .. } => "dead_lettered",
            Self::Republished => "republished",
        }
    }

    /// Every `outcome` label value, so each series exists (at 0) from the start.
    pub const LABELS: [&'static str; 5] = [
        "succeeded",
        "failed",
        "retried",
        "dead_lettered",
        "republished",
    ];
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
