//! One job from request to results, independent of where the bytes come from: the only place that
//! knows the job types, the pipeline and the result format together. `edit` (local files) and
//! `serve` (RabbitMQ + S3) both fetch bytes, call [`prepare`], run the pipeline, and [`encode`].

use std::collections::BTreeMap;

use crate::config::Settings;
use crate::engine::EngineError;
use crate::job::{
    CheckedJob, Consent, JobError, JobRequest, JobResult, JobRules, JobStatus, MaskSpec,
    OutputInfo, ResultError,
};
use crate::pipeline::image::{self, DecodeLimits};
use crate::pipeline::inpaint::{EditInput, EditOutput, MaskInput, PipelineError, Timings};
use crate::provenance::{self, OutputProvenance, Signer};
use crate::storage::StorageError;

/// A job that cannot be done, as the caller will read it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct JobFailure {
    /// Stable code: `invalid_job`, `not_found`, `too_large`, `bad_image`, `bad_input`,
    /// `bad_prompt`, `storage_error`, `model_error`, `deadline_exceeded`, `worker_stopping`,
    /// `consent_required`.
    pub code: &'static str,
    /// What went wrong (names the field or input; never image bytes, URLs or secrets).
    pub message: String,
    /// Whether the job may succeed when retried.
    pub retryable: bool,
}

impl JobFailure {
    /// A failure with its code, message and disposition.
    pub fn new(code: &'static str, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            code,
            message: message.into(),
            retryable,
        }
    }
}

impl From<JobError> for JobFailure {
    fn from(e: JobError) -> Self {
        let code = if e.field == "consent" {
            "consent_required"
        } else {
            "invalid_job"
        };
        Self::new(code, e.to_string(), false)
    }
}

impl From<StorageError> for JobFailure {
    fn from(e: StorageError) -> Self {
        let code = match &e {
            StorageError::NotFound { .. } => "not_found",
            StorageError::TooLarge { .. } => "too_large",
            StorageError::Forbidden { .. } => "invalid_job",
            StorageError::Io { .. } => "storage_error",
        };
        Self::new(code, e.to_string(), e.is_transient())
    }
}

impl From<PipelineError> for JobFailure {
    fn from(e: PipelineError) -> Self {
        match &e {
            PipelineError::Input { .. } | PipelineError::Face { .. } | PipelineError::Mask(_) => {
                Self::new("bad_input", e.to_string(), false)
            }
            PipelineError::Tokenizer(_) => Self::new("bad_prompt", e.to_string(), false),
            PipelineError::Scheduler(_) => Self::new("invalid_job", e.to_string(), false),
            // NOTE: a failed graph run is usually resource exhaustion (GPU memory): worth a retry on
            // another delivery; the delivery limit bounds it.
            PipelineError::Engine(EngineError::Run { .. }) => {
                Self::new("model_error", e.to_string(), true)
            }
            PipelineError::Engine(_) => Self::new("model_error", e.to_string(), false),
        }
    }
}

impl From<crate::pipeline::tune::TuneError> for JobFailure {
    fn from(e: crate::pipeline::tune::TuneError) -> Self {
        use crate::pipeline::tune::TuneError as T;
        match &e {
            T::Input { .. } | T::Face { .. } | T::Mask(_) => {
                Self::new("bad_input", e.to_string(), false)
            }
            T::Engine(EngineError::Run { .. }) => Self::new("model_error", e.to_string(), true),
            T::Engine(EngineError::MissingGraph { .. }) => {
                Self::new("tuning_unavailable", e.to_string(), false)
            }
            _ => Self::new("model_error", e.to_string(), false),
        }
    }
}

/// Parses and validates a job message.
pub fn parse(bytes: &[u8], settings: &Settings) -> Result<CheckedJob, JobFailure> {
    let rules = JobRules {
        require_prompt: settings.pipeline.require_prompt,
        require_consent: settings.privacy.require_consent,
    };
    Ok(JobRequest::from_json(bytes)?.check(&settings.limits, rules)?)
}

/// The job id of a message for logs and failed results, even when the job is invalid; `unknown` when
/// it has none that is safe to log.
pub fn job_id_hint(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("job_id")?.as_str().map(str::to_string))
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 128
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The consent reference of a message, even when the job is otherwise invalid.
pub fn consent_hint(body: &[u8]) -> Option<Consent> {
    let v = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    serde_json::from_value(v.get("consent")?.clone()).ok()
}

/// Every object key a job reads, with a label for error messages.
pub fn input_keys(job: &CheckedJob) -> Vec<(String, String)> {
    let r = &job.request;
    let mut keys = vec![("target".to_string(), r.target.key.clone())];
    if let MaskSpec::Key(k) = &r.mask {
        keys.push(("mask".into(), k.clone()));
    }
    for (i, reference) in r.identity.references.iter().enumerate() {
        keys.push((format!("identity.references[{i}]"), reference.key.clone()));
    }
    keys
}

/// Decodes the fetched objects (by key) into the pipeline's input.
pub fn prepare(
    job: &CheckedJob,
    objects: &BTreeMap<String, Vec<u8>>,
    settings: &Settings,
) -> Result<EditInput, JobFailure> {
    let limits = DecodeLimits {
        max_bytes: settings.limits.max_image_bytes,
        max_pixels: settings.limits.max_image_pixels,
    };
    let decode = |what: &str, key: &str| -> Result<::image::RgbImage, JobFailure> {
        let bytes = objects.get(key).ok_or_else(|| {
            JobFailure::new(
                "not_found",
                format!("{what}: `{key}` was not fetched"),
                false,
            )
        })?;
        image::decode(bytes, &limits)
            .map_err(|e| JobFailure::new("bad_image", format!("{what} (`{key}`): {e}"), false))
    };
    let r = &job.request;
    let target = decode("target", &r.target.key)?;
    let mask = match &r.mask {
        MaskSpec::Key(k) => MaskInput::Image(decode("mask", k)?),
        MaskSpec::Box(b) => MaskInput::Box(*b),
        MaskSpec::Region(region) => MaskInput::Region(*region),
    };
    let references = r
        .identity
        .references
        .iter()
        .enumerate()
        .map(|(i, reference)| {
            Ok((
                decode(&format!("identity.references[{i}]"), &reference.key)?,
                reference.face_box,
            ))
        })
        .collect::<Result<Vec<_>, JobFailure>>()?;
    Ok(EditInput {
        target,
        target_face: r.target.face_box,
        mask,
        references,
        prompt: r.prompt.clone(),
        negative_prompt: r.negative_prompt.clone(),
        scheduler: job.scheduler,
        steps: r.steps as usize,
        guidance: r.guidance,
        num_outputs: r.num_outputs as usize,
        adapter: None,
    })
}

/// The object key of output `index`: deterministic, so a redelivered job overwrites rather than
/// duplicates.
pub fn output_key(job: &CheckedJob, index: usize) -> String {
    let r = &job.request;
    format!(
        "{}/{}/{index}.{}",
        r.output.prefix.trim_end_matches('/'),
        r.job_id,
        r.output.format.extension()
    )
}

/// Encodes every output in the job's format, with its key.
pub fn encode(
    job: &CheckedJob,
    output: &EditOutput,
    marking: &Marking<'_>,
) -> Result<Vec<(String, Vec<u8>)>, JobFailure> {
    let format = job.request.output.format.format();
    let provenance =
        OutputProvenance::new(marking.model.0, marking.model.1, Some(marking.target_bytes));
    output
        .images
        .iter()
        .enumerate()
        .map(|(i, edited)| {
            let bytes = image::encode(&edited.image, format).map_err(|e| {
                JobFailure::new("model_error", format!("encoding output {i}: {e}"), false)
            })?;
            // Every output is marked as AI-edited (XMP always, C2PA when a signer is configured).
            let bytes =
                provenance::mark(&bytes, format, &provenance, marking.signer).map_err(|e| {
                    JobFailure::new("model_error", format!("marking output {i}: {e}"), false)
                })?;
            Ok((output_key(job, i), bytes))
        })
        .collect()
}

/// What provenance marking of a job's outputs needs.
#[derive(Clone, Copy)]
pub struct Marking<'a> {
    /// Model (name, version) for the software agent.
    pub model: (&'a str, &'a str),
    /// The input photo's bytes (the manifest's parent ingredient, recorded without a thumbnail).
    pub target_bytes: &'a [u8],
    /// The C2PA signer; `None` writes the XMP only.
    pub signer: Option<&'a Signer>,
}

/// The result message of a finished job; `model` is (name, version).
pub fn result(
    model: (&str, &str),
    job_id: &str,
    consent: Option<Consent>,
    worker_id: &str,
    outcome: Result<(Vec<OutputInfo>, &Timings), JobFailure>,
    extra_timings: &[(&str, f64)],
) -> JobResult {
    let mut timings: BTreeMap<String, f64> = extra_timings
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    let (status, outputs, error) = match outcome {
        Ok((outputs, t)) => {
            for (stage, secs) in &t.stages {
                timings.insert(stage.to_string(), *secs);
            }
            (JobStatus::Succeeded, outputs, None)
        }
        Err(f) => (
            JobStatus::Failed,
            Vec::new(),
            Some(ResultError {
                code: f.code.to_string(),
                message: f.message,
                retryable: f.retryable,
            }),
        ),
    };
    JobResult {
        schema_version: crate::job::SCHEMA_VERSION,
        job_id: job_id.to_string(),
        status,
        outputs,
        error,
        timings,
        model_name: model.0.to_string(),
        model_version: model.1.to_string(),
        worker_id: worker_id.to_string(),
        consent,
    }
}
