//! Edit presets (`[presets.NAME]` in the settings): a named, versioned edit — the edit text (the
//! model's prompt template still wraps it), negative prompt, mask region, guidance, steps and
//! scheduler — that a job asks for with `"preset": "NAME"` instead of a `prompt`, so the worker owns
//! the wording. A job may set the fields a preset fixes only where the preset's `overrides` lists
//! them; it never sets `prompt` beside a preset. The job is expanded before it is checked, and the
//! request digest is computed on the expanded job (a preset job and the equivalent free-text job are
//! the same request); the result records the preset's name and version.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::job::validate::Limits;
use crate::job::wire::{JobRequest, MaskSpec, PresetUse, RegionName, SchedulerName};

/// The configured presets by name.
pub type Presets = BTreeMap<String, Preset>;

/// One preset, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// The preset's version, recorded in results (change it when the wording or settings change).
    pub version: String,
    /// The edit text, e.g. "with a beard": the job's prompt (the model's template wraps it).
    pub edit: String,
    /// The negative prompt; absent: the job's, else the model's default.
    #[serde(default)]
    pub negative_prompt: Option<String>,
    /// The region to repaint; absent: the job gives its `mask`.
    #[serde(default)]
    pub region: Option<RegionName>,
    /// Classifier-free guidance; absent: the job's, else the default.
    #[serde(default)]
    pub guidance: Option<f32>,
    /// Denoising steps; absent: the job's, else the default.
    #[serde(default)]
    pub steps: Option<u32>,
    /// The sampler; absent: the job's, else the default.
    #[serde(default)]
    pub scheduler: Option<SchedulerName>,
    /// Which of the fields this preset sets a job may still give (`negative_prompt`, `mask`,
    /// `guidance`, `steps`, `scheduler`); a list, or one comma-separated string (environment).
    #[serde(default, deserialize_with = "list_or_csv")]
    pub overrides: Vec<String>,
}

/// The job fields a preset may set, besides `prompt` (which it always sets).
pub const PRESET_FIELDS: [&str; 5] = ["negative_prompt", "mask", "guidance", "steps", "scheduler"];

fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(list) => list,
        ListOrCsv::Csv(csv) => csv
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// Why a job's preset could not be applied: the field and the problem.
pub type PresetError = (String, String);

impl Preset {
    /// Whether the preset sets `field` (one of [`PRESET_FIELDS`]).
    fn sets(&self, field: &str) -> bool {
        match field {
            "negative_prompt" => self.negative_prompt.is_some(),
            "mask" => self.region.is_some(),
            "guidance" => self.guidance.is_some(),
            "steps" => self.steps.is_some(),
            "scheduler" => self.scheduler.is_some(),
            _ => false,
        }
    }

    /// The fields a job using this preset must not give: `prompt` and those the preset sets
    /// without allowing an override.
    pub fn fixed_fields(&self) -> Vec<&'static str> {
        let mut fixed = vec!["prompt"];
        fixed.extend(
            PRESET_FIELDS
                .into_iter()
                .filter(|f| self.sets(f) && !self.overrides.iter().any(|o| o == f)),
        );
        fixed
    }

    /// A problem with the preset itself (checked when the settings load): which key and why.
    pub fn problem(&self, limits: &Limits) -> Option<(&'static str, String)> {
        if self.version.trim().is_empty() || self.version.chars().any(char::is_control) {
            return Some(("version", "must be printable and not empty".into()));
        }
        if self.edit.trim().is_empty() {
            return Some(("edit", "must not be empty".into()));
        }
        let texts = [
            ("edit", Some(&self.edit)),
            ("negative_prompt", self.negative_prompt.as_ref()),
        ];
        for (key, text) in texts {
            let Some(text) = text else { continue };
            if text.chars().count() > limits.max_prompt_chars
                || text
                    .chars()
                    .any(|c| c.is_control() && c != '\n' && c != '\t')
            {
                let most = limits.max_prompt_chars;
                return Some((
                    key,
                    format!("must be at most {most} characters, no control characters"),
                ));
            }
        }
        if self.steps.is_some_and(|s| s == 0 || s > limits.max_steps) {
            return Some(("steps", format!("must be in 1..={}", limits.max_steps)));
        }
        if self.guidance.is_some_and(|g| !(1.0..=30.0).contains(&g)) {
            return Some(("guidance", "must be in 1..=30".into()));
        }
        self.overrides
            .iter()
            .find(|o| !PRESET_FIELDS.contains(&o.as_str()))
            .map(|o| {
                (
                    "overrides",
                    format!("names `{o}`; a preset's overrides are some of {PRESET_FIELDS:?}"),
                )
            })
    }
}

/// Applies the job's preset, if it names one: its fields fill the job's (where the job may override
/// one and does, the job's value stays), `preset` is cleared. Returns the job as if written out in
/// full and the preset it used.
pub fn expand(
    mut job: JobRequest,
    presets: &Presets,
) -> Result<(JobRequest, Option<PresetUse>), PresetError> {
    let Some(name) = job.preset.take() else {
        return Ok((job, None));
    };
    let Some(preset) = presets.get(&name) else {
        let known: Vec<&String> = presets.keys().collect();
        return Err((
            "preset".into(),
            format!("`{name}` is not a preset of this worker; it has {known:?}"),
        ));
    };
    let given = |field: &str| match field {
        "prompt" => job.prompt.is_some(),
        "negative_prompt" => job.negative_prompt.is_some(),
        "mask" => job.mask.is_some(),
        "guidance" => job.guidance.is_some(),
        "steps" => job.steps.is_some(),
        "scheduler" => job.scheduler.is_some(),
        _ => false,
    };
    if let Some(field) = preset.fixed_fields().into_iter().find(|&f| given(f)) {
        let allowed = if preset.overrides.is_empty() {
            "none".to_string()
        } else {
            preset.overrides.join(", ")
        };
        return Err((
            field.into(),
            format!(
                "is set by preset `{name}`, which allows overriding only: {allowed} \
                 (a preset job gives no `prompt`)"
            ),
        ));
    }
    job.prompt = Some(preset.edit.clone());
    job.negative_prompt = job.negative_prompt.or(preset.negative_prompt.clone());
    job.mask = job.mask.or(preset.region.map(MaskSpec::Region));
    job.guidance = job.guidance.or(preset.guidance);
    job.steps = job.steps.or(preset.steps);
    job.scheduler = job.scheduler.or(preset.scheduler);
    let used = PresetUse {
        name,
        version: preset.version.clone(),
    };
    Ok((job, Some(used)))
}
