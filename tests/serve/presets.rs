//! Edit presets through `serve` (issue 17): a preset job and the same job written out in free text
//! are one request — the same outputs byte for byte, and the free-text job re-sent under the preset
//! job's id gets its stored result (the same request digest) — and the preset's name and version are
//! recorded in the result; an unknown preset is refused naming `preset`.

use std::time::Duration;

use pva_worker::job::JobStatus;

use crate::common::service::{Env, SERIAL};
use crate::{output, output_png};

/// The fields of the example job a preset sets.
const PRESET_FIELDS: [&str; 4] = ["prompt", "mask", "guidance", "scheduler"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preset_job_is_its_free_text_job() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("presets").await;
    // Unsigned: a C2PA manifest differs per output by design; the XMP alone is the same.
    env.signing = false;
    env.start_worker().await;
    let preset = env.settings.presets["add_beard"].clone();
    // Env::job sets 3 steps: an override add_beard allows.
    let free_text = |v: &mut serde_json::Value| {
        v["prompt"] = preset.edit.clone().into();
        v["mask"] = serde_json::json!({"region": "lower_face"});
        v["guidance"] = preset.guidance.unwrap().into();
        v["scheduler"] = "ddim".into();
    };
    let free = env.job("free-text", free_text);
    let with_preset = |id: &str, name: &str| {
        env.job(id, |v| {
            let fields = v.as_object_mut().unwrap();
            for field in PRESET_FIELDS {
                fields.remove(field);
            }
            fields.insert("preset".into(), name.into());
        })
    };
    let (named, unknown) = (
        with_preset("preset", "add_beard"),
        with_preset("unknown", "add_moustache"),
    );
    for body in [&free, &named, &unknown] {
        env.publish(body).await;
    }
    let results = env
        .results_for(
            &["free-text", "preset", "unknown"],
            Duration::from_secs(180),
        )
        .await;
    let (free_result, preset_result) = (&results["free-text"][0], &results["preset"][0]);
    for r in [free_result, preset_result] {
        assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
    }
    assert!(
        output_png(&env, "free-text").await == output_png(&env, "preset").await,
        "the preset job's output differs from the free-text job's"
    );
    assert_eq!(free_result.preset, None);
    let used = preset_result
        .preset
        .as_ref()
        .expect("the preset is recorded");
    assert_eq!(
        (used.name.as_str(), used.version.as_str()),
        ("add_beard", "1")
    );
    let error = results["unknown"][0].error.as_ref().expect("refused");
    assert_eq!(error.code, "invalid_job", "{}", error.message);
    assert!(error.message.contains("`preset`"), "{}", error.message);

    // The free-text job re-sent under the preset job's id is the same request (the digest is the
    // expanded job's): it gets the stored result, not `conflict`.
    let stored = output(&env, "preset", "result.json").await;
    let free_as_preset = env.job("preset", free_text);
    env.publish(&free_as_preset).await;
    let again = env.results_for(&["preset"], Duration::from_secs(120)).await;
    assert_eq!(&again["preset"][0], preset_result, "the stored result");
    assert_eq!(output(&env, "preset", "result.json").await, stored);
}
