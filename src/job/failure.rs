//! [`JobFailure`]: a job that cannot be done, as its caller reads it: a stable [`FailureCode`], a
//! message naming the field or input, and whether a retry may help. The one table of codes and their
//! dispositions is [`FailureCode::disposition`].

use crate::engine::EngineError;
use crate::job::store::StorageError;
use crate::job::validate::JobError;
use crate::pipeline::face::LocateError;
use crate::pipeline::inpaint::PipelineError;
use crate::pipeline::tune::TuneError;

/// Whether a failure with a code may succeed when the job is delivered again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Never: the job itself is wrong (dead-lettered at once).
    Fail,
    /// Always: the worker could not do it now (requeued with backoff).
    Retry,
    /// When the cause was transient (a store timeout, a graph run that ran out of memory).
    RetryIfTransient,
}

/// The stable codes of a failed result (`error.code`; also the metrics' `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCode {
    /// The job JSON is malformed or a field is out of range.
    InvalidJob,
    /// The job has no consent reference and the worker requires one.
    ConsentRequired,
    /// An input object does not exist.
    NotFound,
    /// An input object is larger than the limit.
    TooLarge,
    /// An input image cannot be decoded.
    BadImage,
    /// An input image or mask does not fit the job (names which).
    BadInput,
    /// The prompt cannot be tokenized.
    BadPrompt,
    /// The store failed.
    StorageError,
    /// A graph failed, or an output could not be encoded or marked.
    ModelError,
    /// The job asked for tuning and the model has no tuning graph.
    TuningUnavailable,
    /// The job's deadline passed before it started.
    DeadlineExceeded,
    /// The worker is shutting down (the job returns to the queue).
    WorkerStopping,
    /// An image without a `face_box` shows no face the detector finds (or none at the asked index).
    NoFace,
    /// A reference without a `face_box` shows two or more faces of similar size (the message gives
    /// their boxes).
    AmbiguousFace,
    /// The chosen face is smaller than the model needs (`pipeline::face::min_face_side`).
    FaceTooSmall,
    /// The job id already has a stored success for another request (another digest of the
    /// expanded job and its inputs' ETags; the message names both).
    Conflict,
}

impl FailureCode {
    /// Every code.
    pub const ALL: [FailureCode; 16] = [
        FailureCode::InvalidJob,
        FailureCode::ConsentRequired,
        FailureCode::NotFound,
        FailureCode::TooLarge,
        FailureCode::BadImage,
        FailureCode::BadInput,
        FailureCode::BadPrompt,
        FailureCode::StorageError,
        FailureCode::ModelError,
        FailureCode::TuningUnavailable,
        FailureCode::DeadlineExceeded,
        FailureCode::WorkerStopping,
        FailureCode::NoFace,
        FailureCode::AmbiguousFace,
        FailureCode::FaceTooSmall,
        FailureCode::Conflict,
    ];

    /// The code on the wire.
    pub fn as_str(self) -> &'static str {
        self.row().0
    }

    /// Whether a failure with this code may be retried.
    pub fn disposition(self) -> Disposition {
        self.row().1
    }

    /// The table: code -> (wire name, disposition).
    fn row(self) -> (&'static str, Disposition) {
        use Disposition::*;
        match self {
            Self::InvalidJob => ("invalid_job", Fail),
            Self::ConsentRequired => ("consent_required", Fail),
            Self::NotFound => ("not_found", Fail),
            Self::TooLarge => ("too_large", Fail),
            Self::BadImage => ("bad_image", Fail),
            Self::BadInput => ("bad_input", Fail),
            Self::BadPrompt => ("bad_prompt", Fail),
            Self::StorageError => ("storage_error", RetryIfTransient),
            Self::ModelError => ("model_error", RetryIfTransient),
            Self::TuningUnavailable => ("tuning_unavailable", Fail),
            Self::DeadlineExceeded => ("deadline_exceeded", Fail),
            Self::WorkerStopping => ("worker_stopping", Retry),
            Self::NoFace => ("no_face", Fail),
            Self::AmbiguousFace => ("ambiguous_face", Fail),
            Self::FaceTooSmall => ("face_too_small", Fail),
            Self::Conflict => ("conflict", Fail),
        }
    }
}

impl std::fmt::Display for FailureCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job that cannot be done, as the caller will read it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct JobFailure {
    /// Stable code.
    pub code: FailureCode,
    /// What went wrong (names the field or input; never image bytes, URLs or secrets).
    pub message: String,
    /// Whether the job may succeed when retried (from the code's disposition).
    pub retryable: bool,
}

impl JobFailure {
    /// A failure whose cause is not transient (retryable only when its code always is).
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        Self::with_cause(code, message, false)
    }

    /// A failure whose cause may be transient; the code's disposition decides what that means.
    pub fn with_cause(code: FailureCode, message: impl Into<String>, transient: bool) -> Self {
        let retryable = match code.disposition() {
            Disposition::Fail => false,
            Disposition::Retry => true,
            Disposition::RetryIfTransient => transient,
        };
        Self {
            code,
            message: message.into(),
            retryable,
        }
    }

    /// The same failure with `what: ` before its message (e.g. the field whose object failed).
    pub fn context(self, what: &str) -> Self {
        Self {
            message: format!("{what}: {}", self.message),
            ..self
        }
    }
}

impl From<JobError> for JobFailure {
    fn from(e: JobError) -> Self {
        let code = if e.field == "consent" {
            FailureCode::ConsentRequired
        } else {
            FailureCode::InvalidJob
        };
        Self::new(code, e.to_string())
    }
}

impl From<StorageError> for JobFailure {
    fn from(e: StorageError) -> Self {
        let code = match &e {
            StorageError::NotFound { .. } => FailureCode::NotFound,
            StorageError::TooLarge { .. } => FailureCode::TooLarge,
            StorageError::Forbidden { .. } => FailureCode::InvalidJob,
            StorageError::Io { .. } => FailureCode::StorageError,
        };
        Self::with_cause(code, e.to_string(), e.is_transient())
    }
}

impl From<PipelineError> for JobFailure {
    fn from(e: PipelineError) -> Self {
        let code = match &e {
            PipelineError::Input { .. } | PipelineError::Face { .. } | PipelineError::Mask(_) => {
                FailureCode::BadInput
            }
            PipelineError::Tokenizer(_) => FailureCode::BadPrompt,
            PipelineError::Scheduler(_) => FailureCode::InvalidJob,
            PipelineError::Engine(_) => FailureCode::ModelError,
        };
        // NOTE: a failed graph run is usually resource exhaustion (GPU memory): worth a retry on
        // another delivery; the delivery limit bounds it.
        let transient = matches!(e, PipelineError::Engine(EngineError::Run { .. }));
        Self::with_cause(code, e.to_string(), transient)
    }
}

impl JobFailure {
    /// Why no face could be taken from the image `what` (names the field and key).
    pub fn face(what: &str, e: LocateError) -> Self {
        let code = match &e {
            LocateError::NoFace | LocateError::NoSuchIndex { .. } => FailureCode::NoFace,
            LocateError::Ambiguous { .. } => FailureCode::AmbiguousFace,
            LocateError::TooSmall { .. } => FailureCode::FaceTooSmall,
            LocateError::Engine(_) => FailureCode::ModelError,
        };
        let transient = matches!(e, LocateError::Engine(EngineError::Run { .. }));
        Self::with_cause(code, format!("{what}: {e}"), transient)
    }
}

impl From<TuneError> for JobFailure {
    fn from(e: TuneError) -> Self {
        let code = match &e {
            TuneError::Input { .. } | TuneError::Face { .. } | TuneError::Mask(_) => {
                FailureCode::BadInput
            }
            TuneError::Engine(EngineError::MissingGraph { .. }) => FailureCode::TuningUnavailable,
            _ => FailureCode::ModelError,
        };
        let transient = matches!(e, TuneError::Engine(EngineError::Run { .. }));
        Self::with_cause(code, e.to_string(), transient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_unique_wire_name_and_the_table_decides_retries() {
        let names: std::collections::BTreeSet<_> =
            FailureCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), FailureCode::ALL.len());
        assert!(!JobFailure::with_cause(FailureCode::BadImage, "x", true).retryable);
        assert!(JobFailure::new(FailureCode::WorkerStopping, "x").retryable);
        assert!(JobFailure::with_cause(FailureCode::StorageError, "x", true).retryable);
        assert!(!JobFailure::with_cause(FailureCode::StorageError, "x", false).retryable);
        assert_eq!(
            JobFailure::new(FailureCode::NotFound, "gone")
                .context("target")
                .to_string(),
            "not_found: target: gone"
        );
    }

    #[test]
    fn storage_errors_map_to_codes_with_their_transience() {
        let io = |transient| StorageError::Io {
            key: "k".into(),
            message: "m".into(),
            transient,
        };
        let f = JobFailure::from(io(true));
        assert_eq!((f.code, f.retryable), (FailureCode::StorageError, true));
        assert!(!JobFailure::from(io(false)).retryable);
        let f = JobFailure::from(StorageError::NotFound { key: "k".into() });
        assert_eq!((f.code, f.retryable), (FailureCode::NotFound, false));
    }
}
