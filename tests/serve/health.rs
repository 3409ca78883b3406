//! Honest health: `/startupz` only after the warm-up edit (its seconds in `pva_warmup_seconds`, the
//! cold start counted from process start through it), `/healthz` live through jobs that fail on
//! their own (outside the engine, or in it while the probe inference still works), and failing
//! with a JSON reason once the engine itself is broken (its weights corrupted under the running
//! sessions, so every graph run yields NaN) and the probe inference fails too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pva_worker::job::JobStatus;
use pva_worker::storage::ObjectStore;

use crate::common::http::http_get;
use crate::common::promql::sample;
use crate::common::repo;
use crate::common::service::{wait_metric, Env, SERIAL};

/// A copy of the bundled tiny model in the test's directory, for a test to break.
fn tiny_model_copy(env: &Env) -> PathBuf {
    let dir = env.dir.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(repo().join("models/tiny")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

fn metric(metrics: &str, name: &str) -> f64 {
    sample(metrics, name).unwrap_or_else(|| panic!("{name} not in /metrics"))
}

async fn healthz(port: u16) -> (u16, serde_json::Value) {
    let (status, body) = http_get(port, "/healthz").await.expect("/healthz answers");
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startupz_answers_only_after_the_warm_up_and_the_cold_start_includes_it() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("warmup").await;
    env.settings.health.warmup_steps = 3;
    let index = env.spawn_worker();
    let port = env.workers[index].1;
    let deadline = Instant::now() + Duration::from_secs(60);
    // The first 200 of /startupz: the warm-up has run by then.
    let metrics = loop {
        if let Some((200, _)) = http_get(port, "/startupz").await {
            break http_get(port, "/metrics").await.unwrap().1;
        }
        assert!(
            Instant::now() < deadline,
            "never started; log:\n{}",
            env.log(index)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let warmup = metric(&metrics, "pva_warmup_seconds");
    let load = metric(&metrics, "pva_model_load_seconds");
    assert!(warmup > 0.0, "pva_warmup_seconds {warmup}");
    assert!(load > 0.0, "pva_model_load_seconds {load}");
    assert!(env.log(index).contains("model loaded and warmed up"));
    // Ready (the broker connected): the cold start runs from the process's start through load and
    // warm-up.
    // (The leading newline skips the HELP line, which also reads "pva_ready 1 while ...".)
    let metrics = wait_metric(port, "\npva_ready 1\n").await;
    let cold_start = metric(&metrics, "pva_cold_start_seconds");
    assert!(
        cold_start >= load + warmup,
        "cold start {cold_start} s < load {load} s + warm-up {warmup} s"
    );
    assert_eq!(
        healthz(port).await,
        (200, serde_json::json!({"status": "ok"}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_fail_on_their_own_leave_a_working_worker_live() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("health-live").await;
    let model = tiny_model_copy(&env);
    env.settings.engine.model_dir = model.clone();
    env.settings.health.probe_after_failures = 1;
    let flat = {
        let mut bytes = Vec::new();
        image::RgbImage::from_pixel(300, 400, image::Rgb([120, 140, 160]))
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        bytes
    };
    let bucket = env.settings.s3.input_bucket.clone();
    env.store
        .put(&bucket, "photos/flat.png", flat, "image/png")
        .await
        .unwrap();
    env.start_worker().await;
    let port = env.workers[0].1;

    // Fails in the pool, outside the engine: no face. Not an engine failure, so no probe.
    env.publish(&env.job("no-face", |v| {
        v["target"] = serde_json::json!({"key": "photos/flat.png"})
    }))
    .await;
    let r = env.results_for(&["no-face"], Duration::from_secs(60)).await;
    assert_eq!(r["no-face"][0].error.as_ref().unwrap().code, "no_face");
    let (_, metrics) = http_get(port, "/metrics").await.unwrap();
    assert_eq!(
        sample(&metrics, "pva_engine_probes_total{result=\"succeeded\"}"),
        Some(0.0)
    );
    assert_eq!(healthz(port).await.0, 200);

    // Fails in the engine: the tuning graph (opened by the first tuning run) is gone. With
    // `probe_after_failures = 1` the probe runs at once, succeeds, and the worker stays live.
    std::fs::remove_file(model.join("adapter_step.onnx")).unwrap();
    env.publish(&env.job("no-tuning-graph", |v| v["tuning"] = "auto".into()))
        .await;
    let r = env
        .results_for(&["no-tuning-graph"], Duration::from_secs(60))
        .await;
    let failed = &r["no-tuning-graph"][0];
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(
        failed.error.as_ref().unwrap().code,
        "model_error",
        "{failed:?}"
    );
    wait_metric(port, "pva_engine_probes_total{result=\"succeeded\"} 1").await;
    assert_eq!(
        healthz(port).await,
        (200, serde_json::json!({"status": "ok"}))
    );

    // And it still edits.
    env.publish(&env.job("after", |_| {})).await;
    let r = env.results_for(&["after"], Duration::from_secs(60)).await;
    assert_eq!(r["after"][0].status, JobStatus::Succeeded);
}

/// Overwrites `file` in place (same inode, same length) with NaN floats: the running sessions read
/// their external weights from this file's pages, as a device whose memory went bad would.
fn corrupt_in_place(file: &Path) {
    use std::io::Write;
    let len = std::fs::metadata(file).unwrap().len() as usize;
    let nan: Vec<u8> = f32::NAN
        .to_le_bytes()
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect();
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.write_all(&nan).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_engine_fails_the_probe_and_healthz() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("health-broken").await;
    let model = tiny_model_copy(&env);
    env.settings.engine.model_dir = model.clone();
    env.settings.health.probe_after_failures = 2;
    env.start_worker().await;
    let port = env.workers[0].1;
    assert_eq!(healthz(port).await.0, 200);

    corrupt_in_place(&model.join("frozen_weights.bin"));
    // Retried (a failed graph run may be transient) until the delivery limit, 3: the second
    // engine failure runs the probe, which fails too.
    env.publish(&env.job("on-broken-engine", |_| {})).await;
    let r = env
        .results_for(&["on-broken-engine"], Duration::from_secs(120))
        .await;
    let failed = &r["on-broken-engine"][0];
    assert_eq!(failed.status, JobStatus::Failed);
    let error = failed.error.as_ref().unwrap();
    assert_eq!(error.code, "model_error", "{failed:?}");
    assert!(error.message.contains("non-finite"), "{}", error.message);
    wait_metric(port, "pva_engine_probes_total{result=\"failed\"} 1").await;
    let (status, body) = healthz(port).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unhealthy");
    let reason = body["reasons"][0].as_str().unwrap();
    assert!(
        reason.contains("2 consecutive engine failures") && reason.contains("probe"),
        "{reason}"
    );
    assert!(reason.contains("non-finite"), "{reason}");
    // Still ready and serving HTTP: only the liveness probe restarts it.
    let (_, metrics) = http_get(port, "/metrics").await.unwrap();
    assert_eq!(
        sample(&metrics, "pva_engine_probes_total{result=\"succeeded\"}"),
        Some(0.0)
    );
}
