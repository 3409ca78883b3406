//! Results that cannot be dropped (issue 17): the worker's own durable results queue receives final
//! results with nobody else bound; a result the broker returns (no queue bound) is retried, never
//! acked as done; a failed job leaves its `result.json`.

use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use pva_worker::job::{JobResult, JobStatus};
use pva_worker::storage::ObjectStore;

use crate::common::repo;
use crate::common::service::{wait_metric, Env, SERIAL};

/// Removes the test's own catch-all binding, so that only the worker's results queue is bound.
async fn unbind_observer(env: &Env) {
    let a = &env.settings.amqp;
    env.channel
        .queue_unbind(
            format!("{}.observed", a.job_queue).as_str().into(),
            a.result_exchange.as_str().into(),
            "#".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Final results taken from the worker's results queue until every id in `ids` has one.
async fn finals(env: &Env, ids: &[&str], within: Duration) -> Vec<JobResult> {
    let queue = env.settings.amqp.results_queue.clone();
    let deadline = Instant::now() + within;
    let mut got: Vec<JobResult> = Vec::new();
    while !ids.iter().all(|id| got.iter().any(|r| r.job_id == *id)) {
        assert!(
            Instant::now() < deadline,
            "results for {ids:?} missing on `{queue}` after {within:?}; got {got:?}; log:\n{}",
            env.log(0)
        );
        match env
            .channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(m) => got.push(serde_json::from_slice(&m.delivery.data).unwrap()),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_results_reach_the_declared_queue_and_a_failed_job_leaves_its_result_json() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("finals").await;
    env.settings.amqp.declare_results_queue = true;
    let jpeg = std::fs::read(repo().join("examples/photos/obama.jpg")).unwrap();
    env.store
        .put(
            &env.settings.s3.input_bucket,
            "photos/truncated.jpg",
            jpeg[..jpeg.len() / 2].to_vec(),
            "image/jpeg",
        )
        .await
        .unwrap();
    unbind_observer(&env).await;
    env.start_worker().await;
    env.publish(&env.job("fine", |_| {})).await;
    env.publish(&env.job("bad-image", |v| {
        v["target"]["key"] = "photos/truncated.jpg".into()
    }))
    .await;
    let got = finals(&env, &["fine", "bad-image"], Duration::from_secs(120)).await;
    assert_eq!(got.len(), 2, "one final result each: {got:?}");
    let by_id = |id: &str| got.iter().find(|r| r.job_id == id).unwrap().clone();
    assert_eq!(by_id("fine").status, JobStatus::Succeeded);
    let failed = by_id("bad-image");
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.error.as_ref().unwrap().code, "bad_image");
    // The store holds the outcome of the failed job too, as published.
    let stored = super::stored_result(&env, "bad-image").await;
    assert_eq!(stored.status, JobStatus::Failed);
    assert_eq!(stored, failed);
    assert_eq!(super::stored_result(&env, "fine").await, by_id("fine"));
    delete_results_queue(&env).await;
}

/// Deletes the test's durable results queue (it would outlive the test on the shared broker).
async fn delete_results_queue(env: &Env) {
    env.channel
        .queue_delete(
            env.settings.amqp.results_queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_the_broker_returns_is_retried_until_a_queue_is_bound() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("returned").await;
    env.settings.amqp.declare_results_queue = true;
    // Room to re-create the queue between the first return and the next delivery.
    env.settings.worker.retry_initial_ms = 2500;
    env.settings.worker.retry_max_ms = 5000;
    env.start_worker().await;
    unbind_observer(&env).await;
    let a = env.settings.amqp.clone();
    env.channel
        .queue_delete(
            a.results_queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    env.publish(&env.job("job-returned", |_| {})).await;

    // The worker sees its result returned and holds the job back (not acked, not dead-lettered).
    let deadline = Instant::now() + Duration::from_secs(120);
    while !env.log(0).contains("result_unroutable") {
        assert!(
            Instant::now() < deadline,
            "no returned result; log:\n{}",
            env.log(0)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(env.queue_len(&a.dead_letter_queue).await, 0);
    let stored = super::stored_result(&env, "job-returned").await;
    assert_eq!(
        stored.status,
        JobStatus::Succeeded,
        "the work itself is done"
    );

    // Once the queue exists again, the retried delivery republishes the stored result to it.
    pva_worker::queue::declare_topology(&env.channel, &a, env.settings.worker.delivery_limit)
        .await
        .unwrap();
    let got = finals(&env, &["job-returned"], Duration::from_secs(60)).await;
    assert_eq!(got, vec![stored], "the stored result, once");
    let port = env.workers[0].1;
    let m = wait_metric(port, "pva_jobs_total{outcome=\"republished\"} 1").await;
    assert!(
        m.contains("pva_retries_total{reason=\"result_unroutable\"} 1"),
        "{m}"
    );
    assert!(m.contains("pva_jobs_total{outcome=\"succeeded\"} 0"), "{m}");
    assert_eq!(env.queue_len(&a.job_queue).await, 0);
    assert_eq!(env.queue_len(&a.dead_letter_queue).await, 0);
    delete_results_queue(&env).await;
}
