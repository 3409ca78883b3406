//! The JSON Schemas (Draft 2020-12) of the messages, generated from the wire types
//! (`crate::job::wire`) by schemars: the job, the result and the lifecycle events. A worker's
//! settings shape its job schema — `[limits]` give the maxima, its rules whether `consent` is
//! required and a prompt may be blank, `[presets]` the preset names and what each fixes — so a schema
//! is written for one worker's settings; the committed `schemas/` are those of the default settings,
//! and a unit test fails when they differ from what the types generate (run `pva-worker schema --out
//! schemas/`).

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Value};

use crate::job::preset::Presets;
use crate::job::validate::{JobRules, Limits};
use crate::job::wire::{JobEvent, JobRequest, JobResult, TEXT_PATTERN};

/// Where the published schemas say they live (`$id`s are this plus the file name).
pub const SCHEMA_BASE: &str = "https://pva-worker.invalid/schemas/";

/// One schema file: its name under `schemas/` and its text.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaFile {
    /// File name, e.g. `job.v1.schema.json`.
    pub name: &'static str,
    /// The schema.
    pub schema: Value,
}

impl SchemaFile {
    /// The file's text: pretty JSON with a final newline.
    pub fn text(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.schema).expect("a schema serialises");
        text.push('\n');
        text
    }
}

fn generate<T: JsonSchema>(name: &'static str, title: &str) -> SchemaFile {
    let schema = SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>();
    let mut schema = schema.to_value();
    if let Value::Object(fields) = &mut schema {
        fields.insert("$id".into(), json!(format!("{SCHEMA_BASE}{name}")));
        fields.insert("title".into(), json!(title));
    }
    SchemaFile { name, schema }
}

/// Sets `keyword` of the schema at JSON pointer `at` (which must exist: the test of the committed
/// schemas fails otherwise).
fn set(schema: &mut Value, at: &str, keyword: &str, value: Value) {
    match schema.pointer_mut(at).and_then(Value::as_object_mut) {
        Some(fields) => {
            fields.insert(keyword.into(), value);
        }
        None => panic!("the generated schema has no {at}"),
    }
}

/// The job, result and event schemas for a worker with `limits`, `rules` and `presets`.
pub fn schemas(limits: &Limits, rules: JobRules, presets: &Presets) -> Vec<SchemaFile> {
    let mut job = generate::<JobRequest>("job.v1.schema.json", "pva-worker job, schema version 1");
    let s = &mut job.schema;
    set(s, "/properties/steps", "maximum", json!(limits.max_steps));
    set(
        s,
        "/properties/num_outputs",
        "maximum",
        json!(limits.max_num_outputs),
    );
    for text in ["prompt", "negative_prompt"] {
        let at = format!("/properties/{text}");
        set(s, &at, "maxLength", json!(limits.max_prompt_chars));
    }
    if !rules.require_prompt {
        set(s, "/properties/prompt", "pattern", json!(TEXT_PATTERN));
    }
    if rules.require_consent {
        // Required, and not null (which reads as absent).
        s["required"]
            .as_array_mut()
            .expect("the job schema lists required fields")
            .push(json!("consent"));
        s["properties"]["consent"] = json!({"$ref": "#/$defs/Consent"});
    }
    let names: Vec<&String> = presets.keys().collect();
    set(s, "/properties/preset", "enum", json!(names));
    set(s, "", "allOf", preset_rules(presets));
    vec![
        job,
        generate::<JobResult>(
            "result.v1.schema.json",
            "pva-worker result message, schema version 1",
        ),
        generate::<JobEvent>(
            "event.v1.schema.json",
            "pva-worker job lifecycle event, schema version 1",
        ),
    ]
}

/// What `crate::job::preset::expand` enforces: without a preset a job gives `prompt` and `mask`;
/// with one, none of the fields the preset fixes, and a `mask` when the preset sets no region.
fn preset_rules(presets: &Presets) -> Value {
    let mut rules = vec![json!({
        "if": {"not": {"required": ["preset"]}},
        "then": {"required": ["prompt", "mask"]}
    })];
    for (name, preset) in presets {
        let fixed: Vec<Value> = preset
            .fixed_fields()
            .into_iter()
            .map(|field| json!({"required": [field]}))
            .collect();
        let mut then = json!({"not": {"anyOf": fixed}});
        if preset.region.is_none() {
            then["required"] = json!(["mask"]);
        }
        rules.push(json!({
            "if": {"required": ["preset"], "properties": {"preset": {"const": name}}},
            "then": then
        }));
    }
    Value::Array(rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn committed(name: &str) -> String {
        let path = format!("{}/schemas/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn the_committed_schemas_are_the_generated_ones() {
        // The default settings' limits and presets, as the committed schemas are written.
        let settings = Settings::load_with_env(None, Vec::new()).unwrap();
        let options = crate::job::RunnerOptions::from(&settings);
        for file in schemas(&options.limits, options.rules, &settings.presets) {
            assert!(
                committed(file.name) == file.text(),
                "schemas/{} differs from what the types generate: run \
                 `pva-worker schema --out schemas/` and commit the result",
                file.name
            );
        }
    }

    #[test]
    fn the_schemas_follow_the_limits_and_name_every_field() {
        let limits = Limits {
            max_image_bytes: 1,
            max_image_pixels: 1,
            max_steps: 7,
            max_num_outputs: 2,
            max_prompt_chars: 33,
        };
        let rules = JobRules {
            require_prompt: false,
            require_consent: false,
        };
        let files = schemas(&limits, rules, &Presets::new());
        let job = &files[0].schema;
        assert_eq!(job["properties"]["steps"]["maximum"], 7);
        assert_eq!(job["properties"]["num_outputs"]["maximum"], 2);
        assert_eq!(job["properties"]["prompt"]["maxLength"], 33);
        assert_eq!(job["properties"]["deadline"]["format"], "date-time");
        assert_eq!(job["additionalProperties"], false);
        assert_eq!(job["properties"]["preset"]["enum"], json!([]));
        assert_eq!(job["properties"]["prompt"]["pattern"], TEXT_PATTERN);
        assert!(!job["required"]
            .as_array()
            .unwrap()
            .contains(&json!("consent")));
        // Every field of the job type is in its schema: one more field is one more property.
        let example: Value = serde_json::from_slice(
            &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/job.json")).unwrap(),
        )
        .unwrap();
        let request: JobRequest = serde_json::from_value(example).unwrap();
        let serialised = serde_json::to_value(&request).unwrap();
        let properties = job["properties"].as_object().unwrap();
        for field in serialised.as_object().unwrap().keys() {
            assert!(properties.contains_key(field), "{field} not in the schema");
        }
    }

    #[test]
    fn the_event_examples_are_what_the_types_write() {
        // The same examples tests/schema/test_job_schema.py validates against the event schema.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/events/examples.json"
        );
        let examples: Vec<Value> = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let mut kinds = Vec::new();
        for example in examples {
            let event: JobEvent = serde_json::from_value(example.clone()).unwrap();
            assert_eq!(serde_json::to_value(&event).unwrap(), example);
            kinds.push(example["event"].as_str().unwrap().to_string());
        }
        assert_eq!(kinds, ["started", "progress", "succeeded", "failed"]);
    }
}
