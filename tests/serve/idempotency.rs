//! Safe idempotency (issue 17): a job id answers from its stored success only for the same request
//! (the expanded job and its inputs' ETags); another request under the id fails with `conflict`
//! naming both digests, never the old image; a stored failure is replaced by a re-send.

use std::time::Duration;

use pva_worker::job::{JobResult, JobStatus};
use pva_worker::storage::ObjectStore;

use crate::common::repo;
use crate::common::service::{Env, SERIAL};
use crate::{output, output_png};

/// Publishes `body` and returns its one result.
async fn run(env: &mut Env, job: &str, body: &[u8]) -> JobResult {
    env.publish(body).await;
    let mut results = env.results_for(&[job], Duration::from_secs(120)).await;
    results.remove(job).unwrap().remove(0)
}

/// The digest `result.json` records.
async fn stored_digest(env: &Env, job: &str) -> String {
    let stored: serde_json::Value =
        serde_json::from_slice(&output(env, job, "result.json").await).unwrap();
    stored["request_digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no request_digest in {stored}"))
        .to_string()
}

fn assert_conflict(r: &JobResult, stored_digest: &str) {
    assert_eq!(r.status, JobStatus::Failed, "{r:?}");
    let e = r.error.as_ref().unwrap();
    assert_eq!(e.code, "conflict", "{}", e.message);
    assert!(!e.retryable);
    assert!(e.message.contains(stored_digest), "{}", e.message);
    assert_eq!(e.message.matches("sha256:").count(), 2, "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_id_answers_only_its_own_request() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("idempotent").await;
    let input = env.settings.s3.input_bucket.clone();
    let photo = |name: &str| std::fs::read(repo().join("examples/photos").join(name)).unwrap();
    env.store
        .put(&input, "photos/ref.jpg", photo("obama2.jpg"), "image/jpeg")
        .await
        .unwrap();
    let jpeg = photo("obama.jpg");
    env.store
        .put(
            &input,
            "photos/fixable.jpg",
            jpeg[..jpeg.len() / 2].to_vec(),
            "image/jpeg",
        )
        .await
        .unwrap();
    env.start_worker().await;

    // An identical re-send (another deadline aside) gets the stored result and the same outputs.
    let body = env.job("same", |_| {});
    let first = run(&mut env, "same", &body).await;
    assert_eq!(first.status, JobStatus::Succeeded, "{first:?}");
    let digest = stored_digest(&env, "same").await;
    let image = output_png(&env, "same").await;
    let again = env.job("same", |v| v["deadline"] = "2099-01-01T00:00:00Z".into());
    let second = run(&mut env, "same", &again).await;
    assert_eq!(second, first, "the stored result, not a new run");
    assert_eq!(output_png(&env, "same").await, image);

    // The same job id with another prompt: conflict, naming both digests; the success stays.
    let changed = env.job("same", |v| {
        v["prompt"] = "smiling, without a beard, with glasses".into()
    });
    let conflict = run(&mut env, "same", &changed).await;
    assert_conflict(&conflict, &digest);
    assert_eq!(super::stored_result(&env, "same").await, first);
    assert_eq!(stored_digest(&env, "same").await, digest);
    assert_eq!(output_png(&env, "same").await, image);

    // A reference photo replaced under the same key: another request.
    let swap = env.job("swap", |v| {
        v["identity"]["references"][0]["key"] = "photos/ref.jpg".into()
    });
    let done = run(&mut env, "swap", &swap).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    let swap_digest = stored_digest(&env, "swap").await;
    env.store
        .put(&input, "photos/ref.jpg", photo("obama3.jpg"), "image/jpeg")
        .await
        .unwrap();
    let conflict = run(&mut env, "swap", &swap).await;
    assert_conflict(&conflict, &swap_digest);
    assert_eq!(super::stored_result(&env, "swap").await, done);

    // A job that failed on a bad image runs again once the image is fixed, and succeeds.
    let fixable = env.job("fixable", |v| {
        v["target"]["key"] = "photos/fixable.jpg".into()
    });
    let failed = run(&mut env, "fixable", &fixable).await;
    assert_eq!(
        failed.error.as_ref().map(|e| e.code.as_str()),
        Some("bad_image")
    );
    assert_eq!(super::stored_result(&env, "fixable").await, failed);
    env.store
        .put(&input, "photos/fixable.jpg", jpeg.clone(), "image/jpeg")
        .await
        .unwrap();
    let fixed = run(&mut env, "fixable", &fixable).await;
    assert_eq!(fixed.status, JobStatus::Succeeded, "{fixed:?}");
    assert_eq!(super::stored_result(&env, "fixable").await, fixed);
}
