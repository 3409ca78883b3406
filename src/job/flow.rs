//! The job runner's steps that need no store and no model: the keys a job reads and writes, decoding
//! fetched bytes into the pipeline's input, encoding and marking the outputs, and the result message.

use std::collections::BTreeMap;

use crate::job::failure::{FailureCode, JobFailure};
use crate::job::preset::Presets;
use crate::job::validate::{CheckedJob, JobRules, Limits};
use crate::job::wire::{
    Consent, FaceBoxSpec, FaceFound, FaceMode, FaceSelector, ImageRef, JobRequest, JobResult,
    JobStatus, MaskSpec, OutputInfo, ResultError, SCHEMA_VERSION,
};
use crate::pipeline::face::{FaceChoice, FaceRequest, LocatedFace};
use crate::pipeline::image::{self, DecodeLimits};
use crate::pipeline::inpaint::{EditInput, EditOutput, MaskInput};
use crate::provenance::{self, OutputProvenance, Signer};

/// Parses a job message, applies its preset and validates it.
pub fn parse(
    bytes: &[u8],
    limits: &Limits,
    rules: JobRules,
    presets: &Presets,
) -> Result<CheckedJob, JobFailure> {
    Ok(JobRequest::from_json(bytes)?.check(limits, rules, presets)?)
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
    if let MaskSpec::Key(k) = &job.edit.mask {
        keys.push(("mask".into(), k.clone()));
    }
    for (i, reference) in r.identity.references.iter().enumerate() {
        keys.push((format!("identity.references[{i}]"), reference.key.clone()));
    }
    keys
}

/// The face each of a job's images needs found, target first, then the references in order: `None`
/// for an image with a `face_box` (it wins) or `"face": "aligned"` (used as it is). Without either,
/// the target takes its largest face, a reference its one clear face.
pub fn face_requests(job: &CheckedJob) -> Vec<Option<FaceRequest>> {
    let r = &job.request;
    let request = |what: String, image: &ImageRef, default: FaceChoice| {
        if image.face_box.is_some() {
            return None;
        }
        let choice = match image.face {
            Some(FaceSelector::Mode(FaceMode::Aligned)) => return None,
            Some(FaceSelector::Mode(FaceMode::Largest)) => FaceChoice::Largest,
            Some(FaceSelector::Index(i)) => FaceChoice::Index(i.index as usize),
            None => default,
        };
        Some(FaceRequest {
            what: format!("{what} (`{}`)", image.key),
            choice,
        })
    };
    std::iter::once(request("target".into(), &r.target, FaceChoice::Largest))
        .chain(r.identity.references.iter().enumerate().map(|(i, image)| {
            request(
                format!("identity.references[{i}]"),
                image,
                FaceChoice::Single,
            )
        }))
        .collect()
}

/// Puts the faces found into the pipeline's input (each as its image's face box) and returns what
/// the result message says of them; `found` is in [`face_requests`]' order.
pub fn apply_faces(input: &mut EditInput, found: &[Option<LocatedFace>]) -> Vec<FaceFound> {
    let mut report = Vec::new();
    for (i, located) in found.iter().enumerate() {
        let Some(located) = located else { continue };
        let image = if i == 0 {
            input.target_face = Some(located.face_box);
            input.target_roll = located.turn;
            input.target_landmarks = located.landmarks.clone();
            "target".to_string()
        } else {
            if let Some(reference) = input.references.get_mut(i - 1) {
                // A turned reference is its upright crop: an aligned, square face.
                *reference = located.reference_input(std::mem::take(&mut reference.0));
            }
            format!("identity.references[{}]", i - 1)
        };
        let b = located.face_box;
        let round = |v: f64| (v * 10.0).round() / 10.0;
        report.push(FaceFound {
            image,
            face_box: FaceBoxSpec {
                x: b.x,
                y: b.y,
                width: b.width,
                height: b.height,
            },
            detector_box: located.detection.bbox.map(round),
            score: (located.detection.score * 1e4).round() / 1e4,
            landmark_presence: (located.landmark_presence * 1e4).round() / 1e4,
            faces_found: located.faces_found,
            roll_degrees: (located.roll.to_degrees() * 10.0).round() / 10.0,
            turned: located.turn != 0.0,
        });
    }
    report
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
    let mask = match &job.edit.mask {
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
        target_roll: 0.0,
        target_landmarks: Vec::new(),
        mask,
        references,
        prompt: job.edit.prompt.clone(),
        negative_prompt: job.edit.negative_prompt.clone(),
        scheduler: job.scheduler,
        steps: job.edit.steps as usize,
        guidance: job.edit.guidance,
        num_outputs: r.num_outputs as usize,
        adapter: None,
        identity: None,
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
        preset: None,
        faces: Vec::new(),
        trace_id: None,
    }
}
