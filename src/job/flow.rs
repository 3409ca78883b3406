//! The job runner's steps that need no store and no model: the keys a job reads and writes, decoding
//! fetched bytes into the pipeline's input, encoding and marking the outputs, and the result message.

use std::collections::BTreeMap;

use crate::job::failure::{FailureCode, JobFailure};
use crate::job::validate::{CheckedJob, JobRules, Limits};
use crate::job::wire::{
    Consent, JobRequest, JobResult, JobStatus, MaskSpec, OutputInfo, ResultError, SCHEMA_VERSION,
};
use crate::pipeline::image::{self, DecodeLimits};
use crate::pipeline::inpaint::{EditInput, EditOutput, MaskInput};
use crate::provenance::{self, OutputProvenance, Signer};

/// Parses and validates a job message.
pub fn parse(bytes: &[u8], limits: &Limits, rules: JobRules) -> Result<CheckedJob, JobFailure> {
    Ok(JobRequest::from_json(bytes)?.check(limits, rules)?)
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
    limits: &Limits,
) -> Result<EditInput, JobFailure> {
    let limits = DecodeLimits {
        max_bytes: limits.max_image_bytes,
        max_pixels: limits.max_image_pixels,
    };
    let decode = |what: &str, key: &str| -> Result<::image::RgbImage, JobFailure> {
        let bytes = objects.get(key).ok_or_else(|| {
            JobFailure::new(
                FailureCode::NotFound,
                format!("{what}: `{key}` was not fetched"),
            )
        })?;
        image::decode(bytes, &limits)
            .map_err(|e| JobFailure::new(FailureCode::BadImage, format!("{what} (`{key}`): {e}")))
    };
    let r = &job.request;
    let target = decode("target", &r.target.key)?;
    let mask = match &r.mask {
        MaskSpec::Key(k) => MaskInput::Image(decode("mask", k)?),
        MaskSpec::Box(b) => MaskInput::Box((*b).into()),
        MaskSpec::Region(region) => MaskInput::Region((*region).into()),
    };
    let references = r
        .identity
        .references
        .iter()
        .enumerate()
        .map(|(i, reference)| {
            Ok((
                decode(&format!("identity.references[{i}]"), &reference.key)?,
                reference.face_box.map(Into::into),
            ))
        })
        .collect::<Result<Vec<_>, JobFailure>>()?;
    Ok(EditInput {
        target,
        target_face: r.target.face_box.map(Into::into),
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

/// The key prefix of a job's objects: `{output.prefix}/{job_id}`.
fn job_prefix(job: &CheckedJob) -> String {
    let r = &job.request;
    format!("{}/{}", r.output.prefix.trim_end_matches('/'), r.job_id)
}

/// The object key of output `index`: deterministic, so a redelivered job overwrites rather than
/// duplicates.
pub fn output_key(job: &CheckedJob, index: usize) -> String {
    format!(
        "{}/{index}.{}",
        job_prefix(job),
        job.request.output.format.extension()
    )
}

/// Key of a job's result object, written after its outputs.
pub fn result_key(job: &CheckedJob) -> String {
    format!("{}/result.json", job_prefix(job))
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
                JobFailure::new(FailureCode::ModelError, format!("encoding output {i}: {e}"))
            })?;
            // Every output is marked as AI-edited (XMP always, C2PA when a signer is configured).
            let bytes =
                provenance::mark(&bytes, format, &provenance, marking.signer).map_err(|e| {
                    JobFailure::new(FailureCode::ModelError, format!("marking output {i}: {e}"))
                })?;
            Ok((output_key(job, i), bytes))
        })
        .collect()
}

/// Who answers a job: the model (name, version) and the worker's id.
#[derive(Debug, Clone, Copy)]
pub struct Answerer<'a> {
    /// Model name.
    pub model_name: &'a str,
    /// Model version.
    pub model_version: &'a str,
    /// The worker's id.
    pub worker_id: &'a str,
}

/// The result message of a finished job; `timings` are seconds per stage name.
pub fn result(
    by: Answerer<'_>,
    job_id: &str,
    consent: Option<Consent>,
    outcome: Result<Vec<OutputInfo>, JobFailure>,
    timings: BTreeMap<String, f64>,
) -> JobResult {
    let (status, outputs, error) = match outcome {
        Ok(outputs) => (JobStatus::Succeeded, outputs, None),
        Err(f) => (
            JobStatus::Failed,
            Vec::new(),
            Some(ResultError {
                code: f.code.as_str().to_string(),
                message: f.message,
                retryable: f.retryable,
            }),
        ),
    };
    JobResult {
        schema_version: SCHEMA_VERSION,
        job_id: job_id.to_string(),
        status,
        outputs,
        error,
        timings,
        model_name: by.model_name.to_string(),
        model_version: by.model_version.to_string(),
        worker_id: by.worker_id.to_string(),
        consent,
    }
}
