//! The label values and histogram buckets of the metrics: [`JobOutcome`], [`Stage`] and the bucket
//! boundaries, so no caller picks a label value of its own.

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

/// A timed stage of a job (`pva_stage_duration_seconds{stage}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Downloading the job's images from the store.
    Fetch,
    /// Decoding, face detection and cropping, masks and tensors.
    Preprocess,
    /// Text, face and VAE encoders.
    Encode,
    /// Tuning the identity adapter on the references.
    Tune,
    /// The denoising loop.
    Denoise,
    /// VAE decoding and pasting back.
    Decode,
    /// Encoding and uploading the outputs.
    Upload,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 7] = [
        Stage::Fetch,
        Stage::Preprocess,
        Stage::Encode,
        Stage::Tune,
        Stage::Denoise,
        Stage::Decode,
        Stage::Upload,
    ];

    /// The `stage` label value (also the name the pipeline's `Timings` use).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fetch => "fetch",
            Self::Preprocess => "preprocess",
            Self::Encode => "encode",
            Self::Tune => "tune",
            Self::Denoise => "denoise",
            Self::Decode => "decode",
            Self::Upload => "upload",
        }
    }
}

impl std::str::FromStr for Stage {
    type Err = UnknownStage;

    /// Parses a stage name as the pipeline's `Timings` record it (`"denoise"`, ...).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| UnknownStage(name.to_string()))
    }
}

/// A stage name that is not one of [`Stage::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown stage `{0}`")]
pub struct UnknownStage(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_parse_as_the_pipeline_records_them() {
        for stage in Stage::ALL {
            assert_eq!(stage.as_str().parse::<Stage>(), Ok(stage));
        }
        assert_eq!("vae".parse::<Stage>(), Err(UnknownStage("vae".to_string())));
    }

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
