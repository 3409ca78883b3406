//! Validation of a [`JobRequest`] against the worker's limits and rules into a [`CheckedJob`]:
//! out-of-range or inconsistent values are refused with a [`JobError`] naming the field.

use crate::job::preset::{self, Presets};
use crate::job::wire::{
    FaceBoxSpec, JobRequest, MaskSpec, PresetUse, SchedulerName, DEFAULT_GUIDANCE, DEFAULT_STEPS,
    SCHEMA_VERSION,
};
use crate::pipeline::scheduler::SchedulerKind;

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
    /// The request expanded: its preset applied and every edit field written out with its default
    /// (what the request digest hashes; `preset` is cleared, the name is in [`Self::preset`]).
    pub request: JobRequest,
    /// The edit the job asks for (the expanded request's edit fields).
    pub edit: Edit,
    /// The preset the job used.
    pub preset: Option<PresetUse>,
    /// The sampler with its parameters.
    pub scheduler: SchedulerKind,
}

/// The edit fields of a checked job, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Edit {
    /// The edit text (the model's template wraps it).
    pub prompt: String,
    /// The negative prompt (empty: the model's default).
    pub negative_prompt: String,
    /// The region to repaint.
    pub mask: MaskSpec,
    /// Denoising steps.
    pub steps: u32,
    /// Guidance scale.
    pub guidance: f32,
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

    /// Applies the job's preset (one of `presets`) and checks ranges and consistency against the
    /// worker's limits.
    pub fn check(
        self,
        limits: &Limits,
        rules: JobRules,
        presets: &Presets,
    ) -> Result<CheckedJob, JobError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(bad(
                "schema_version",
                format!(
                    "is {}, this worker reads {SCHEMA_VERSION}",
                    self.schema_version
                ),
            ));
        }
        let (mut job, preset) =
            preset::expand(self, presets).map_err(|(field, problem)| bad(field, problem))?;
        check_id("job_id", &job.job_id)?;
        check_id("identity.id", &job.identity.id)?;
        let n = job.identity.references.len();
        if n == 0 || n > MAX_REFERENCES {
            return Err(bad(
                "identity.references",
                format!("has {n} entries, expected 1..={MAX_REFERENCES}"),
            ));
        }
        for (i, r) in job.identity.references.iter().enumerate() {
            check_key(&format!("identity.references[{i}].key"), &r.key)?;
            check_box(&format!("identity.references[{i}].face_box"), r.face_box)?;
        }
        check_key("target.key", &job.target.key)?;
        check_box("target.face_box", job.target.face_box)?;
        let mask = job
            .mask
            .clone()
            .ok_or_else(|| bad("mask", "is required (or a preset that sets a region)"))?;
        match &mask {
            MaskSpec::Key(k) => check_key("mask.key", k)?,
            MaskSpec::Box(b) => {
                if b.width == 0 || b.height == 0 {
                    return Err(bad("mask.box", "is empty"));
                }
            }
            MaskSpec::Region(_) => {}
        }
        let prompt = job
            .prompt
            .clone()
            .ok_or_else(|| bad("prompt", "is required (or a `preset`)"))?;
        if rules.require_prompt && prompt.trim().is_empty() {
            return Err(bad(
                "prompt",
                "is empty; say what to change, e.g. \"with a beard\"",
            ));
        }
        let negative_prompt = job.negative_prompt.clone().unwrap_or_default();
        for (field, text) in [("prompt", &prompt), ("negative_prompt", &negative_prompt)] {
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
        let steps = job.steps.unwrap_or(DEFAULT_STEPS);
        if steps == 0 || steps > limits.max_steps {
            return Err(bad(
                "steps",
                format!("is {steps}, expected 1..={}", limits.max_steps),
            ));
        }
        let guidance = job.guidance.unwrap_or(DEFAULT_GUIDANCE);
        if !guidance.is_finite() || !(1.0..=30.0).contains(&guidance) {
            return Err(bad("guidance", format!("is {guidance}, expected 1..=30")));
        }
        if !job.eta.is_finite() || !(0.0..=1.0).contains(&job.eta) {
            return Err(bad("eta", format!("is {}, expected 0..=1", job.eta)));
        }
        if job.num_outputs == 0 || job.num_outputs > limits.max_num_outputs {
            return Err(bad(
                "num_outputs",
                format!(
                    "is {}, expected 1..={}",
                    job.num_outputs, limits.max_num_outputs
                ),
            ));
        }
        check_prefix("output.prefix", &job.output.prefix)?;
        match &job.consent {
            None if rules.require_consent => {
                return Err(bad(
                    "consent",
                    "is required: give the consent record {\"id\", \"version\"} for this person's photos",
                ))
            }
            Some(c) => {
                for (field, value) in [("consent.id", &c.id), ("consent.version", &c.version)] {
                    if value.trim().is_empty()
                        || value.chars().count() > 256
                        || value.chars().any(char::is_control)
                    {
                        return Err(bad(field, "must be 1..=256 printable characters"));
                    }
                }
            }
            None => {}
        }
        if let Some(deadline) = &job.deadline {
            parse_rfc3339(deadline).ok_or_else(|| bad("deadline", "is not an RFC 3339 time"))?;
        }
        let scheduler_name = job.scheduler.unwrap_or_default();
        let scheduler = match scheduler_name {
            SchedulerName::Ddim => SchedulerKind::Ddim { eta: job.eta },
            SchedulerName::DpmppTwoM => SchedulerKind::DpmSolverPlusPlus,
        };
        // Written out in full, so a default and the same value spelled out are one request.
        job.negative_prompt = Some(negative_prompt.clone());
        job.steps = Some(steps);
        job.guidance = Some(guidance);
        job.scheduler = Some(scheduler_name);
        Ok(CheckedJob {
            request: job,
            edit: Edit {
                prompt,
                negative_prompt,
                mask,
                steps,
                guidance,
            },
            preset,
            scheduler,
        })
    }
}

/// Days in month `mo` (1-12) of year `y` (proleptic Gregorian).
fn days_in_month(y: i64, mo: i64) -> i64 {
    match mo {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
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

fn check_box(field: &str, b: Option<FaceBoxSpec>) -> Result<(), JobError> {
    match b {
        Some(b) if b.width == 0 || b.height == 0 => Err(bad(field, "is empty")),
        _ => Ok(()),
    }
}

/// Seconds since the Unix epoch of an RFC 3339 date-time (`2026-11-26T18:00:00Z`, `...+01:00`,
/// fractional seconds allowed; `T` and `Z` in either case), or `None` when it is not one. As strict
/// as the schema's `format: date-time` under python-jsonschema's checker (rfc3339-validator): a real
/// calendar day of a year from 1, no leap second, offsets up to 23:59.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(r)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if y == 0 || !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return None;
    }
    if h > 23 || mi > 59 || sec > 59 {
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
    let offset = match rest.as_bytes() {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| -> Option<i64> {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i64::from((a - b'0') * 10 + (b - b'0')))
            };
            let (oh, om) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let sign = if *sign == b'-' { -1 } else { 1 };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::job::wire::{OutputFormatName, RegionName, TuningPolicy};

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

    /// The default settings' presets.
    fn presets() -> Presets {
        Settings::load_with_env(None, Vec::new()).unwrap().presets
    }

    fn patched(patch: impl FnOnce(&mut serde_json::Value)) -> Result<CheckedJob, JobError> {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        patch(&mut v);
        JobRequest::from_json(v.to_string().as_bytes())?.check(&limits(), RULES, &presets())
    }

    #[test]
    fn a_good_job_gets_defaults() {
        let job = patched(|_| {}).unwrap();
        assert_eq!(job.edit.steps, 50);
        assert_eq!(job.edit.guidance, 1.0);
        assert_eq!(job.request.steps, Some(50), "defaults are written out");
        assert_eq!(job.preset, None);
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
            (
                "mask",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("mask");
                }),
            ),
            (
                "preset",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("prompt");
                    v["preset"] = "add_moustache".into();
                }),
            ),
            // A preset fixes the prompt, and its region unless it allows overriding the mask.
            ("prompt", Box::new(|v| v["preset"] = "add_beard".into())),
            (
                "mask",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("prompt");
                    v["preset"] = "add_beard".into();
                }),
            ),
        ];
        for (field, patch) in cases {
            let err = patched(patch).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn a_preset_fills_the_job_and_is_recorded() {
        let job = patched(|v| {
            let fields = v.as_object_mut().unwrap();
            fields.remove("prompt");
            fields.remove("mask");
            fields.insert("preset".into(), "add_beard".into());
            fields.insert("steps".into(), 12.into());
        })
        .unwrap();
        let preset = &presets()["add_beard"];
        assert_eq!(job.edit.prompt, preset.edit);
        assert_eq!(job.edit.mask, MaskSpec::Region(RegionName::LowerFace));
        assert_eq!(job.edit.steps, 12, "the override the preset allows wins");
        assert_eq!(
            job.request.preset, None,
            "the expanded request names no preset"
        );
        let used = job.preset.unwrap();
        assert_eq!(
            (used.name.as_str(), used.version.as_str()),
            ("add_beard", "1")
        );
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
        assert_eq!(job.edit.mask, MaskSpec::Key("masks/m.png".into()));
        let job = patched(|v| {
            v["mask"] = serde_json::json!({"box": {"x": 1, "y": 2, "width": 3, "height": 4}})
        })
        .unwrap();
        assert!(matches!(job.edit.mask, MaskSpec::Box(_)));
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
                .and_then(|j| j.check(&limits(), RULES, &presets()));
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
        assert_eq!(parse_rfc3339("2024-02-29t00:00:00z"), Some(1_709_164_800));
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-11-26",
            "2026-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "2026-11-26 18:00:00Z",
            "2026-11-26T18:00:60Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T18:00:00+24:00",
            "2026-11-26T18:00:00+01:60",
            "2026-11-26T18:00:00.Z",
            "+026-11-26T18:00:00Z",
            "2026-11-26T18:00:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
