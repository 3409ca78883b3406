//! Jobs that fail: invalid, missing, corrupt, oversized, late or consentless jobs, and photos without
//! a clear face, fail with their code and are dead-lettered; transient store failures are retried to the delivery limit; a panic
//! in an inference thread fails only its job.

use std::time::Duration;

use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use pva_worker::job::JobStatus;
use pva_worker::storage::ObjectStore;

use crate::common::repo;
use crate::common::service::{wait_metric, Env, SERIAL};

fn dead_letter_code(message: &lapin::message::BasicGetMessage) -> String {
    match message
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-pva-error-code").cloned())
    {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("dead letter without x-pva-error-code: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_fail_with_their_code_are_dead_lettered_and_the_worker_keeps_going() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("bad").await;
    let bucket = env.settings.s3.input_bucket.clone();
    let jpeg = std::fs::read(repo().join("examples/photos/obama.jpg")).unwrap();
    env.store
        .put(
            &bucket,
            "photos/truncated.jpg",
            jpeg[..jpeg.len() / 2].to_vec(),
            "image/jpeg",
        )
        .await
        .unwrap();
    env.store
        .put(
            &bucket,
            "photos/huge.bin",
            vec![0u8; 21 * 1024 * 1024],
            "image/jpeg",
        )
        .await
        .unwrap();
    // A flat colour photo (no face) and two faces of one size side by side (issue 16).
    let png = |img: image::RgbImage| {
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
        bytes
    };
    let flat = png(image::RgbImage::from_pixel(
        300,
        400,
        image::Rgb([120, 140, 160]),
    ));
    let photo = image::load_from_memory(&jpeg).unwrap().to_rgb8();
    // The face of obama.jpg (its box is about [348, 142, 626, 421]) twice, side by side.
    let face = image::imageops::crop_imm(&photo, 300, 60, 380, 400).to_image();
    let mut pair = image::RgbImage::new(760, 400);
    image::imageops::replace(&mut pair, &face, 0, 0);
    image::imageops::replace(&mut pair, &face, 380, 0);
    // obama.jpg shrunk until its face is about 20 px: under the tiny model's 28 px.
    let small = png(image::imageops::thumbnail(&photo, 48, 60));
    for (key, bytes) in [
        ("photos/flat.png", flat),
        ("photos/pair.png", png(pair)),
        ("photos/small.png", small),
    ] {
        env.store
            .put(&bucket, key, bytes, "image/png")
            .await
            .unwrap();
    }
    env.start_worker().await;

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "no-face",
            env.job("no-face", |v| {
                v["target"] = serde_json::json!({"key": "photos/flat.png"})
            }),
            "no_face",
        ),
        (
            "two-faces",
            env.job("two-faces", |v| {
                v["identity"]["references"][0] = serde_json::json!({"key": "photos/pair.png"})
            }),
            "ambiguous_face",
        ),
        (
            "small-face",
            env.job("small-face", |v| {
                v["target"] = serde_json::json!({"key": "photos/small.png"})
            }),
            "face_too_small",
        ),
        ("unknown", b"{this is not json".to_vec(), "invalid_job"),
        (
            "bad-schema",
            env.job("bad-schema", |v| v["steps"] = "many".into()),
            "invalid_job",
        ),
        (
            "bad-range",
            env.job("bad-range", |v| v["num_outputs"] = 99.into()),
            "invalid_job",
        ),
        (
            "bad-bucket",
            env.job("bad-bucket", |v| {
                v["output"]["bucket"] = "someone-elses".into()
            }),
            "invalid_job",
        ),
        (
            "missing",
            env.job("missing", |v| v["target"]["key"] = "photos/nope.jpg".into()),
            "not_found",
        ),
        (
            "corrupt",
            env.job("corrupt", |v| {
                v["target"]["key"] = "photos/truncated.jpg".into()
            }),
            "bad_image",
        ),
        (
            "oversized",
            env.job("oversized", |v| {
                v["target"]["key"] = "photos/huge.bin".into()
            }),
            "too_large",
        ),
        (
            "late",
            env.job("late", |v| v["deadline"] = "2020-01-01T00:00:00Z".into()),
            "deadline_exceeded",
        ),
        (
            "no-consent",
            env.job("no-consent", |v| {
                v.as_object_mut().unwrap().remove("consent");
            }),
            "consent_required",
        ),
    ];
    for (_, body, _) in &cases {
        env.publish(body).await;
    }
    env.publish(&env.job("good-after", |_| {})).await;
    let ids: Vec<&str> = cases
        .iter()
        .map(|(id, _, _)| *id)
        .chain(["good-after"])
        .collect();
    let results = env.results_for(&ids, Duration::from_secs(120)).await;
    for (id, _, code) in &cases {
        let r = &results[*id][0];
        assert_eq!(r.status, JobStatus::Failed, "{id}: {r:?}");
        let e = r.error.as_ref().unwrap();
        assert_eq!(e.code, *code, "{id}: {}", e.message);
        assert!(!e.retryable, "{id}");
    }
    assert_eq!(results["good-after"][0].status, JobStatus::Succeeded);
    let dlq = env.settings.amqp.dead_letter_queue.clone();
    let mut codes = Vec::new();
    while let Some(m) = env
        .channel
        .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        codes.push(dead_letter_code(&m));
    }
    codes.sort();
    let mut want: Vec<String> = cases.iter().map(|(_, _, c)| c.to_string()).collect();
    want.sort();
    assert_eq!(
        codes, want,
        "every bad job dead-lettered once with its reason"
    );
    assert_eq!(env.queue_len(&env.settings.amqp.job_queue.clone()).await, 0);
    // A failed job that passed validation leaves its outcome where its result.json goes.
    let stored = super::stored_result(&env, "corrupt").await;
    assert_eq!(
        stored, results["corrupt"][0],
        "the published result, stored"
    );
    // The face failures name the image, its key and what was found.
    let message = |id: &str| results[id][0].error.as_ref().unwrap().message.clone();
    assert!(
        message("no-face").contains("target (`photos/flat.png`)"),
        "{}",
        message("no-face")
    );
    let two = message("two-faces");
    assert!(
        two.contains("identity.references[0] (`photos/pair.png`)") && two.contains("2 faces"),
        "{two}"
    );
    assert_eq!(
        super::stored_result(&env, "no-face").await,
        results["no-face"][0]
    );
    assert!(
        env.workers[0].0.try_wait().unwrap().is_none(),
        "the worker is still running"
    );
    env.assert_logs_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_store_failures_are_retried_then_dead_lettered_with_the_reason() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("transient").await;
    env.start_worker().await;
    env.s3.stop();
    env.publish(&env.job("job-s3-down", |_| {})).await;
    let results = env
        .results_for(&["job-s3-down"], Duration::from_secs(120))
        .await;
    let r = &results["job-s3-down"][0];
    assert_eq!(r.status, JobStatus::Failed);
    let e = r.error.as_ref().unwrap();
    assert_eq!(e.code, "storage_error", "{}", e.message);
    assert!(e.retryable);
    let dlq = env.settings.amqp.dead_letter_queue.clone();
    let m = env
        .channel
        .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("dead-lettered");
    assert_eq!(dead_letter_code(&m), "storage_error");
    let deliveries = match m
        .delivery
        .properties
        .headers()
        .as_ref()
        .unwrap()
        .inner()
        .get("x-pva-deliveries")
    {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        deliveries,
        env.settings.worker.delivery_limit.to_string(),
        "tried delivery_limit times"
    );
    wait_metric(
        env.workers[0].1,
        "pva_retries_total{reason=\"storage_error\"} 2",
    )
    .await;
    // One outcome for the job (failed), its dead letter in its own counter (counted last); retries
    // are not outcomes.
    let m = wait_metric(
        env.workers[0].1,
        "pva_dead_letters_total{reason=\"storage_error\"} 1",
    )
    .await;
    for line in [
        "pva_jobs_total{outcome=\"failed\"} 1",
        "pva_jobs_total{outcome=\"succeeded\"} 0",
    ] {
        assert!(m.contains(line), "`{line}` missing in\n{m}");
    }
    assert!(!m.contains("outcome=\"dead_lettered\""), "{m}");
    assert!(!m.contains("outcome=\"retried\""), "{m}");
}

/// A request that panics in its inference thread fails that job (`model_error`, not retried), the
/// thread goes on, the next job succeeds and `/readyz` stays ready. (The hook exists in debug builds.)
#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_an_inference_thread_fails_that_job_only() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("panic").await;
    let index = env.start_worker().await;
    let port = env.workers[index].1;
    let probe = pva_worker::service::pool::PANIC_PROBE_PROMPT;
    env.publish(&env.job("panics", |v| v["prompt"] = probe.into()))
        .await;
    let failed = env.results_for(&["panics"], Duration::from_secs(120)).await;
    let error = failed["panics"][0].error.clone().expect("a failed result");
    assert_eq!(error.code, "model_error", "{error:?}");
    assert!(error.message.contains("panicked"), "{error:?}");
    assert!(!error.retryable);
    assert_eq!(
        crate::common::http::http_status(port, "/readyz").await,
        Some(200)
    );

    env.publish(&env.job("after-panic", |_| {})).await;
    let next = env
        .results_for(&["after-panic"], Duration::from_secs(120))
        .await;
    assert_eq!(next["after-panic"][0].status, JobStatus::Succeeded);
    assert_eq!(
        crate::common::http::http_status(port, "/readyz").await,
        Some(200)
    );
    assert!(env.log(index).contains("panicked in its inference thread"));
}
