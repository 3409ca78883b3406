//! Wire types of jobs and results (schema version 1), and their validation into a [`CheckedJob`].
//!
//! The same JSON is read by `pva-worker edit` (keys resolved against a local directory) and by
//! `pva-worker serve` (keys are S3 object keys). Unknown fields, wrong types and out-of-range values are
//! rejected with an error that names the field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::pipeline::face::FaceBox;
use crate::pipeline::image::OutputFormat;
use crate::pipeline::mask::{PixelBox, Region};
use crate::pipeline::scheduler::SchedulerKind;

/// The job schema version this worker reads.
pub const SCHEMA_VERSION: u32 = 1;

/// A job as it arrives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Must be [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Caller's id; names the outputs. 1-128 characters of `[A-Za-z0-9._-]`.
    pub job_id: String,
    /// The person and their reference photos.
    pub identity: Identity,
    /// The photo to edit.
    pub target: Target,
    /// Which part of the face to repaint.
    pub mask: MaskSpec,
    /// What to change, e.g. "with a beard". The manifest's template adds the personalized phrase.
    pub prompt: String,
    /// Text for the unconditional branch of classifier-free guidance.
    #[serde(default)]
    pub negative_prompt: String,
    /// Denoising steps.
    #[serde(default = "default_steps")]
    pub steps: u32,
    /// Classifier-free guidance scale; 1.0 runs a single (conditional) row, as the paper does.
    #[serde(default = "default_guidance")]
    pub guidance: f32,
    /// Sampler.
    #[serde(default)]
    pub scheduler: SchedulerName,
    /// DDIM's eta (0 = deterministic DDIM, 1 = the paper's default). Ignored by DPM-Solver++.
    #[serde(default = "default_eta")]
    pub eta: f32,
    /// Seed of the job's noise; output i uses the same seed stream at index i.
    #[serde(default)]
    pub seed: u64,
    /// Number of edited variants.
    #[serde(default = "default_num_outputs")]
    pub num_outputs: u32,
    /// Where and how the outputs are written.
    pub output: OutputSpec,
    /// Whether a per-identity tuned adapter is used.
    #[serde(default)]
    pub tuning: TuningPolicy,
    /// RFC 3339 time after which the job is not worth doing.
    #[serde(default)]
    pub deadline: Option<String>,
    /// The person's consent record for this use of their photos (required unless
    /// `privacy.require_consent` is off). Recorded in the result message and logs, never in images.
    #[serde(default)]
    pub consent: Option<Consent>,
}

/// A reference to the consent the CMS holds for this person and use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    /// The consent record's id in the caller's system.
    pub id: String,
    /// Version of the consent text the person agreed to.
    pub version: String,
}

fn default_steps() -> u32 {
    50
}
fn default_guidance() -> f32 {
    1.0
}
fn default_eta() -> f32 {
    1.0
}
fn default_num_outputs() -> u32 {
    1
}

/// The person to preserve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Stable id of the person (keys tuned adapters).
    pub id: String,
    /// 1-5 photos of the same person.
    pub references: Vec<ImageRef>,
}

/// An image and, optionally, where the face is in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    /// Object key (S3) or path relative to the job's directory (`edit`).
    pub key: String,
    /// Face box in the image's pixels (after EXIF orientation). Absent: the image is an aligned,
    /// square face crop.
    #[serde(default)]
    pub face_box: Option<FaceBox>,
}

/// The photo to edit.
pub type Target = ImageRef;

/// The region to repaint. Exactly one of the three.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MaskSpec {
    /// A mask image the size of the target (white = repaint).
    Key(String),
    /// A box in the target's pixels.
    Box(PixelBox),
    /// A named region of the aligned face crop (see models/CONTRACT.md).
    Region(Region),
}

/// Sampler names on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerName {
    /// DDIM (with `eta`), the paper's sampler.
    #[default]
    Ddim,
    /// DPM-Solver++ (2M).
    #[serde(rename = "dpmpp_2m")]
    DpmppTwoM,
}

/// Tuning policy of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TuningPolicy {
    /// Base PVA only.
    #[default]
    Never,
    /// Use a stored adapter when one exists.
    IfCached,
    /// Tune when missing, store, then edit.
    Auto,
}

/// Where the outputs go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Bucket (S3) or ignored by `edit`.
    #[serde(default)]
    pub bucket: String,
    /// Key prefix; outputs are `{prefix}/{job_id}/{index}.{ext}`.
    pub prefix: String,
    /// File format.
    #[serde(default)]
    pub format: OutputFormatName,
}

/// Output formats on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormatName {
    /// Lossless PNG.
    #[default]
    Png,
    /// JPEG, quality 92.
    Jpeg,
    /// Lossless WebP.
    Webp,
}

impl OutputFormatName {
    /// The encoder settings.
    pub fn format(self) -> OutputFormat {
        match self {
            Self::Png => OutputFormat::Png,
            Self::Jpeg => OutputFormat::Jpeg { quality: 92 },
            Self::Webp => OutputFormat::Webp,
        }
    }
    /// File extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
        }
    }
}

/// A request that failed validation. `field` is the JSON path of the offending value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid job: `{field}`: {problem}")]
pub struct JobError {
    /// JSON path, e.g. `identity.references[2].key`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

fn bad(field: impl Into<String>, problem: impl Into<String>) -> JobError {
    JobError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// A job that passed validation: everything the pipeline needs, in its own types.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedJob {
    /// The request as received.
    pub request: JobRequest,
    /// The sampler with its parameters.
    pub scheduler: SchedulerKind,
}

/// The worker's input limits (from `[limits]`), checked before any decoding or inference.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest encoded image accepted, in bytes (checked before decoding).
    pub max_image_bytes: usize,
    /// Largest image accepted, in pixels (checked from the header, before decoding).
    pub max_image_pixels: u64,
    /// Most denoising steps a job may ask for.
    pub max_steps: u32,
    /// Most outputs one job may ask for.
    pub max_num_outputs: u32,
    /// Longest prompt or negative prompt, in characters.
    pub max_prompt_chars: usize,
}

/// Rules from the worker's settings that a job must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRules {
    /// Refuse an empty prompt.
    pub require_prompt: bool,
    /// Refuse a job without a consent reference.
    pub require_consent: bool,
}

/// Most references one identity may have.
pub const MAX_REFERENCES: usize = 5;

impl JobRequest {
    /// Parses JSON bytes; a serde error is reported with the path it names.
    pub fn from_json(bytes: &[u8]) -> Result<Self, JobError> {
        serde_json::from_slice(bytes).map_err(|e| {
            let msg = e.to_string();
            // serde_json reports unknown fields and type errors with their name in backticks.
            let field = msg
                .split('`')
                .nth(1)
                .filter(|_| msg.contains("field"))
                .unwrap_or("$")
                .to_string();
            bad(field, msg)
        })
    }

    /// Checks ranges and consistency against the worker's limits.
    pub fn check(self, limits: &Limits, rules: JobRules) -> Result<CheckedJob, JobError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(bad(
                "schema_version",
                format!(
                    "is {}, this worker reads {SCHEMA_VERSION}",
                    self.schema_version
                ),
            ));
        }
        check_id("job_id", &self.job_id)?;
        check_id("identity.id", &self.identity.id)?;
        let n = self.identity.references.len();
        if n == 0 || n > MAX_REFERENCES {
            return Err(bad(
                "identity.references",
                format!("has {n} entries, expected 1..={MAX_REFERENCES}"),
            ));
        }
        for (i, r) in self.identity.references.iter().enumerate() {
            check_key(&format!("identity.references[{i}].key"), &r.key)?;
            check_box(&format!("identity.references[{i}].face_box"), r.face_box)?;
        }
        check_key("target.key", &self.target.key)?;
        check_box("target.face_box", self.target.face_box)?;
        match &self.mask {
            MaskSpec::Key(k) => check_key("mask.key", k)?,
            MaskSpec::Box(b) => {
                if b.width == 0 || b.height == 0 {
                    return Err(bad("mask.box", "is empty"));
                }
            }
            MaskSpec::Region(_) => {}
        }
        if rules.require_prompt && self.prompt.trim().is_empty() {
            return Err(bad(
                "prompt",
                "is empty; say what to change, e.g. \"with a beard\"",
            ));
        }
        for (field, text) in [
            ("prompt", &self.prompt),
            ("negative_prompt", &self.negative_prompt),
        ] {
            if text.chars().count() > limits.max_prompt_chars {
                return Err(bad(
                    field,
                    format!("is longer than {} characters", limits.max_prompt_chars),
                ));
            }
            if text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t')
            {
                return Err(bad(field, "contains control characters"));
            }
        }
        if self.steps == 0 || self.steps > limits.max_steps {
            return Err(bad(
                "steps",
                format!("is {}, expected 1..={}", self.steps, limits.max_steps),
            ));
        }
        if !self.guidance.is_finite() || !(1.0..=30.0).contains(&self.guidance) {
            return Err(bad(
                "guidance",
                format!("is {}, expected 1..=30", self.guidance),
            ));
        }
        if !self.eta.is_finite() || !(0.0..=1.0).contains(&self.eta) {
            return Err(bad("eta", format!("is {}, expected 0..=1", self.eta)));
        }
        if self.num_outputs == 0 || self.num_outputs > limits.max_num_outputs {
            return Err(bad(
                "num_outputs",
                format!(
                    "is {}, expected 1..={}",
                    self.num_outputs, limits.max_num_outputs
                ),
            ));
        }
        check_prefix("output.prefix", &self.output.prefix)?;
        match &self.consent {
            None if rules.require_consent => {
                return Err(bad(
                    "consent",
                    "is required: give the consent record {\"id\", \"version\"} for this person's photos",
                ))
            }
            Some(c) => {
                for (field, value) in [("consent.id", &c.id), ("consent.version", &c.version)] {
                    if value.trim().is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
                        return Err(bad(field, "must be 1..=256 printable characters"));
                    }
                }
            }
            None => {}
        }
        if let Some(deadline) = &self.deadline {
            parse_rfc3339(deadline).ok_or_else(|| bad("deadline", "is not an RFC 3339 time"))?;
        }
        let scheduler = match self.scheduler {
            SchedulerName::Ddim => SchedulerKind::Ddim { eta: self.eta },
            SchedulerName::DpmppTwoM => SchedulerKind::DpmSolverPlusPlus,
        };
        Ok(CheckedJob {
            request: self,
            scheduler,
        })
    }
}

fn check_id(field: &str, id: &str) -> Result<(), JobError> {
    if id.is_empty() || id.len() > 128 {
        return Err(bad(field, "must be 1..=128 characters"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        || id.starts_with('.')
    {
        return Err(bad(
            field,
            "may only hold A-Z a-z 0-9 . _ - and must not start with '.'",
        ));
    }
    Ok(())
}

/// Object keys: relative, no `..` segments, no empty segments, printable.
fn check_key(field: &str, key: &str) -> Result<(), JobError> {
    if key.is_empty() || key.len() > 1024 {
        return Err(bad(field, "must be 1..=1024 bytes"));
    }
    if key.starts_with('/')
        || key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(bad(
            field,
            "must be a relative key without empty, '.' or '..' segments",
        ));
    }
    if key.chars().any(|c| c.is_control()) {
        return Err(bad(field, "contains control characters"));
    }
    Ok(())
}

fn check_prefix(field: &str, prefix: &str) -> Result<(), JobError> {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(bad(field, "must not be empty"));
    }
    check_key(field, trimmed)
}

fn check_box(field: &str, b: Option<FaceBox>) -> Result<(), JobError> {
    match b {
        Some(b) if b.width == 0 || b.height == 0 => Err(bad(field, "is empty")),
        _ => Ok(()),
    }
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp (`2026-11-26T18:00:00Z`,
/// `...+01:00`, fractional seconds allowed), or `None` when it is not one.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let (yy, mm) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

/// Outcome of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// All outputs were written.
    Succeeded,
    /// The job could not be done; `error` says why.
    Failed,
}

/// Why a job failed, for the caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultError {
    /// Stable machine-readable code, e.g. `invalid_job`, `bad_image`, `not_found`.
    pub code: String,
    /// Human-readable explanation (never contains image data, URLs with signatures or secrets).
    pub message: String,
    /// Whether the same job may succeed later.
    pub retryable: bool,
}

/// One written output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputInfo {
    /// Object key (or local path for `edit`).
    pub key: String,
    /// Cosine similarity of the output face to the mean reference embedding.
    pub identity_score: f32,
    /// Whether the score met the configured minimum.
    pub identity_check_passed: bool,
}

/// The result message published for every job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// Schema version of the result.
    pub schema_version: u32,
    /// The job's id (or `"unknown"` when the message could not be parsed).
    pub job_id: String,
    /// Outcome.
    pub status: JobStatus,
    /// Written outputs, in index order.
    #[serde(default)]
    pub outputs: Vec<OutputInfo>,
    /// Set when `status` is `failed`.
    #[serde(default)]
    pub error: Option<ResultError>,
    /// Seconds spent per stage.
    #[serde(default)]
    pub timings: BTreeMap<String, f64>,
    /// Model name.
    pub model_name: String,
    /// Model version.
    pub model_version: String,
    /// Which worker did it.
    pub worker_id: String,
    /// The job's consent reference, as received (absent when the job had none or was unreadable).
    #[serde(default)]
    pub consent: Option<Consent>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    const GOOD: &str = r#"{
        "schema_version": 1,
        "job_id": "job-1",
        "identity": {"id": "person-1", "references": [{"key": "refs/a.jpg"}, {"key": "refs/b.jpg", "face_box": {"x": 1, "y": 2, "width": 30, "height": 40}}]},
        "target": {"key": "in/photo.jpg", "face_box": {"x": 10, "y": 20, "width": 100, "height": 120}},
        "mask": {"region": "lower_face"},
        "prompt": "with a beard",
        "output": {"prefix": "out"},
        "consent": {"id": "c-77", "version": "2026-01"}
    }"#;

    const RULES: JobRules = JobRules {
        require_prompt: true,
        require_consent: true,
    };

    fn limits() -> Limits {
        (&Settings::load_with_env(None, Vec::new()).unwrap().limits).into()
    }

    fn patched(patch: impl FnOnce(&mut serde_json::Value)) -> Result<CheckedJob, JobError> {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        patch(&mut v);
        JobRequest::from_json(v.to_string().as_bytes())?.check(&limits(), RULES)
    }

    #[test]
    fn a_good_job_gets_defaults() {
        let job = patched(|_| {}).unwrap();
        assert_eq!(job.request.steps, 50);
        assert_eq!(job.request.guidance, 1.0);
        assert_eq!(job.scheduler, SchedulerKind::Ddim { eta: 1.0 });
        assert_eq!(job.request.tuning, TuningPolicy::Never);
        assert_eq!(job.request.output.format, OutputFormatName::Png);
    }

    #[test]
    fn each_violation_names_its_field() {
        let cases: Vec<(&str, Box<dyn FnOnce(&mut serde_json::Value)>)> = vec![
            (
                "schema_version",
                Box::new(|v| v["schema_version"] = 2.into()),
            ),
            ("job_id", Box::new(|v| v["job_id"] = "../x".into())),
            (
                "identity.references",
                Box::new(|v| {
                    v["identity"]["references"] = serde_json::json!([{"key":"a"},{"key":"b"},{"key":"c"},{"key":"d"},{"key":"e"},{"key":"f"}]);
                }),
            ),
            (
                "identity.references",
                Box::new(|v| v["identity"]["references"] = serde_json::json!([])),
            ),
            (
                "identity.references[1].key",
                Box::new(|v| v["identity"]["references"][1]["key"] = "a/../../etc/passwd".into()),
            ),
            (
                "target.key",
                Box::new(|v| v["target"]["key"] = "/abs".into()),
            ),
            (
                "target.face_box",
                Box::new(|v| v["target"]["face_box"]["width"] = 0.into()),
            ),
            ("prompt", Box::new(|v| v["prompt"] = "  ".into())),
            ("steps", Box::new(|v| v["steps"] = 0.into())),
            ("steps", Box::new(|v| v["steps"] = 100000.into())),
            ("guidance", Box::new(|v| v["guidance"] = 0.5.into())),
            ("eta", Box::new(|v| v["eta"] = 2.0.into())),
            ("num_outputs", Box::new(|v| v["num_outputs"] = 99.into())),
            (
                "output.prefix",
                Box::new(|v| v["output"]["prefix"] = "".into()),
            ),
            ("deadline", Box::new(|v| v["deadline"] = "tomorrow".into())),
            (
                "consent",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("consent");
                }),
            ),
            ("consent.id", Box::new(|v| v["consent"]["id"] = " ".into())),
            ("colour", Box::new(|v| v["colour"] = "red".into())),
        ];
        for (field, patch) in cases {
            let err = patched(patch).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn wrong_types_are_rejected() {
        let err = patched(|v| v["steps"] = "many".into()).unwrap_err();
        assert!(err.problem.contains("invalid type"), "{err}");
        let err = JobRequest::from_json(b"{not json").unwrap_err();
        assert_eq!(err.field, "$");
    }

    #[test]
    fn mask_variants_parse() {
        let job = patched(|v| v["mask"] = serde_json::json!({"key": "masks/m.png"})).unwrap();
        assert_eq!(job.request.mask, MaskSpec::Key("masks/m.png".into()));
        let job = patched(|v| {
            v["mask"] = serde_json::json!({"box": {"x": 1, "y": 2, "width": 3, "height": 4}})
        })
        .unwrap();
        assert!(matches!(job.request.mask, MaskSpec::Box(_)));
        assert!(patched(|v| v["mask"] = serde_json::json!({"region": "nose"})).is_err());
    }

    #[test]
    fn shared_cases_agree_with_the_schema() {
        // The same list tests/schema/test_job_schema.py checks the published JSON Schema against.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/jobs/cases.json");
        let cases: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert!(cases.len() >= 20);
        for case in cases {
            let verdict = JobRequest::from_json(case["job"].to_string().as_bytes())
                .and_then(|j| j.check(&limits(), RULES));
            assert_eq!(
                verdict.is_ok(),
                case["valid"].as_bool().unwrap(),
                "{}: {verdict:?}",
                case["name"]
            );
        }
    }

    #[test]
    fn rfc3339_parses_to_epoch_seconds() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-26T18:00:00Z"), Some(1_795_716_000));
        assert_eq!(
            parse_rfc3339("2026-11-26T19:00:00.250+01:00"),
            Some(1_795_716_000)
        );
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-11-26"), None);
    }
}
