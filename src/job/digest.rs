//! The request digest that makes re-sends safe (issue 17): what a job asks for, as the canonical
//! JSON of the expanded job (defaults applied, the fields that do not change the output left out,
//! nulls dropped, keys sorted), and which version of each input object it reads (its ETag), hashed
//! together. A stored success answers only a request with the same digest; `result.json` records
//! it under `request_digest`.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::job::validate::CheckedJob;
use crate::job::wire::JobResult;

/// Top-level job fields that do not change the output (left out of the digest).
pub const IGNORED_FIELDS: [&str; 1] = ["deadline"];

/// The key of the digest in `result.json`.
pub const DIGEST_FIELD: &str = "request_digest";

/// The canonical JSON of a checked job: its expanded request without [`IGNORED_FIELDS`] and nulls,
/// object keys sorted, no whitespace.
pub fn canonical_request(job: &CheckedJob) -> String {
    let mut value = serde_json::to_value(&job.request).expect("a job serialises");
    if let Value::Object(fields) = &mut value {
        for field in IGNORED_FIELDS {
            fields.remove(field);
        }
    }
    let mut out = String::new();
    write_canonical(&value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(fields) => {
            let mut keys: Vec<&String> = fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, _)| k)
                .collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&fields[key.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// `sha256:<hex>` of the canonical request and, in order, each input object's key and ETag.
pub fn request_digest(job: &CheckedJob, etags: &[(String, String)]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(canonical_request(job).as_bytes());
    for (key, etag) in etags {
        hasher.update(b"\n");
        hasher.update(key.as_bytes());
        hasher.update(b"\t");
        hasher.update(etag.as_bytes());
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// `result.json`'s bytes: the result with the request digest it answers.
pub fn stored_json(result: &JobResult, digest: &str) -> Vec<u8> {
    let mut value = serde_json::to_value(result).expect("a result serialises");
    if let Value::Object(fields) = &mut value {
        fields.insert(DIGEST_FIELD.into(), Value::String(digest.to_string()));
    }
    serde_json::to_vec_pretty(&value).expect("a result serialises")
}

/// A stored `result.json` read back: the result and the digest it records (none in results
/// stored before digests, or for jobs that failed).
pub fn read_stored(bytes: &[u8]) -> Option<(JobResult, Option<String>)> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    let digest = value
        .get(DIGEST_FIELD)
        .and_then(Value::as_str)
        .map(str::to_string);
    Some((serde_json::from_value(value).ok()?, digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::preset::{Preset, Presets};
    use crate::job::validate::{JobRules, Limits};
    use crate::job::wire::JobRequest;

    fn job(patch: impl FnOnce(&mut Value)) -> CheckedJob {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/job.json");
        let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        patch(&mut v);
        JobRequest::from_json(&serde_json::to_vec(&v).unwrap())
            .unwrap()
            .check(
                &Limits {
                    max_image_bytes: 1 << 24,
                    max_image_pixels: 1 << 26,
                    max_steps: 150,
                    max_num_outputs: 4,
                    max_prompt_chars: 500,
                },
                JobRules {
                    require_prompt: true,
                    require_consent: true,
                },
                &presets(),
            )
            .unwrap()
    }

    fn presets() -> Presets {
        let preset: Preset = serde_json::from_value(serde_json::json!({
            "version": "3", "edit": "with a beard", "region": "lower_face", "steps": 30,
            "overrides": ["steps"]
        }))
        .unwrap();
        Presets::from([("beard".to_string(), preset)])
    }

    #[test]
    fn a_preset_job_is_the_request_it_expands_to() {
        let etags = vec![("photos/obama.jpg".to_string(), "\"abc\"".to_string())];
        let free_text = job(|v| {
            v["prompt"] = "with a beard".into();
            v["mask"] = serde_json::json!({"region": "lower_face"});
            v["steps"] = 30.into();
        });
        let preset = |v: &mut Value| {
            let fields = v.as_object_mut().unwrap();
            for field in [
                "prompt",
                "mask",
                "steps",
                "negative_prompt",
                "guidance",
                "scheduler",
            ] {
                fields.remove(field);
            }
            fields.insert("preset".into(), "beard".into());
        };
        let with_preset = job(preset);
        assert_eq!(with_preset.preset.as_ref().unwrap().version, "3");
        assert_eq!(
            canonical_request(&with_preset),
            canonical_request(&free_text)
        );
        assert_eq!(
            request_digest(&with_preset, &etags),
            request_digest(&free_text, &etags)
        );
        // An allowed override is part of the request.
        let fewer_steps = job(|v| {
            preset(v);
            v["steps"] = 10.into();
        });
        assert_ne!(
            request_digest(&fewer_steps, &etags),
            request_digest(&free_text, &etags)
        );
    }

    #[test]
    fn the_digest_follows_what_changes_the_output_and_the_inputs_versions() {
        let etags = vec![("photos/obama.jpg".to_string(), "\"abc\"".to_string())];
        let base = request_digest(&job(|_| {}), &etags);
        assert!(base.starts_with("sha256:") && base.len() == 71, "{base}");
        // Defaults spelled out, another deadline, keys in another order: the same request.
        let same = job(|v| {
            v["deadline"] = "2099-01-01T00:00:00Z".into();
            v["negative_prompt"] = "".into();
        });
        assert_eq!(request_digest(&same, &etags), base);
        // Another prompt, or another version of an input: another request.
        let other = job(|v| v["prompt"] = "smiling".into());
        assert_ne!(request_digest(&other, &etags), base);
        let replaced = vec![("photos/obama.jpg".to_string(), "\"abd\"".to_string())];
        assert_ne!(request_digest(&job(|_| {}), &replaced), base);
    }

    #[test]
    fn the_stored_result_keeps_its_digest_and_reads_back() {
        let result: JobResult = serde_json::from_value(serde_json::json!({
            "schema_version": 1, "job_id": "j", "status": "succeeded",
            "model_name": "m", "model_version": "1", "worker_id": "w"
        }))
        .unwrap();
        let bytes = stored_json(&result, "sha256:00");
        let (back, digest) = read_stored(&bytes).unwrap();
        assert_eq!(back, result);
        assert_eq!(digest.as_deref(), Some("sha256:00"));
        let legacy = serde_json::to_vec(&result).unwrap();
        assert_eq!(read_stored(&legacy).unwrap().1, None);
    }
}
