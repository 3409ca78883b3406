//! The worker process's life: killed or stopped mid-job (nothing lost, nothing duplicated), the broker
//! dropping its connection, and a finished job redelivered.

use std::process::Command;
use std::time::{Duration, Instant};

use pva_worker::job::JobStatus;

use crate::common::http::{http_get, http_status};
use crate::common::service::{connect_test_side, wait_in_flight, wait_metric, Env, SERIAL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_nothing_and_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("sigkill").await;
    env.start_worker().await;
    // Long enough to be caught in flight.
    env.publish(&env.job("job-killed", |v| {
        v["steps"] = 150.into();
        v["num_outputs"] = 4.into();
    }))
    .await;
    wait_in_flight(env.workers[0].1).await;
    env.signal(0, "KILL");
    env.wait_exit(0, Duration::from_secs(10));
    env.start_worker().await;
    let results = env
        .results_for(&["job-killed"], Duration::from_secs(180))
        .await;
    assert_eq!(results["job-killed"].len(), 1);
    let r = &results["job-killed"][0];
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
    assert_eq!(r.worker_id, "worker-1");
    let keys = env.output_keys("job-killed").await;
    assert_eq!(keys.len(), 5, "exactly one set of outputs: {keys:?}");
    assert_eq!(env.queue_len(&env.settings.amqp.job_queue.clone()).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_job_in_flight_and_exits_cleanly() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("sigterm").await;
    env.start_worker().await;
    env.publish(&env.job("job-term", |v| {
        v["steps"] = 150.into();
        v["num_outputs"] = 2.into();
    }))
    .await;
    wait_in_flight(env.workers[0].1).await;
    env.signal(0, "TERM");
    let status = env.wait_exit(0, Duration::from_secs(120));
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        env.log(0)
    );
    let results = env
        .results_for(&["job-term"], Duration::from_secs(10))
        .await;
    assert_eq!(results["job-term"][0].status, JobStatus::Succeeded);
    assert_eq!(env.queue_len(&env.settings.amqp.job_queue.clone()).await, 0);
    assert!(
        env.log(0).contains("finishing in-flight jobs"),
        "{}",
        env.log(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_deadline_returns_the_job_to_the_queue() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("sigterm-late").await;
    env.settings.worker.shutdown_deadline_secs = 0;
    env.start_worker().await;
    env.publish(&env.job("job-returned", |v| {
        v["steps"] = 150.into();
        v["num_outputs"] = 4.into();
    }))
    .await;
    wait_in_flight(env.workers[0].1).await;
    env.signal(0, "TERM");
    let status = env.wait_exit(0, Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    // Not lost: back in the queue, and the next worker does it.
    env.start_worker().await;
    let results = env
        .results_for(&["job-returned"], Duration::from_secs(180))
        .await;
    assert_eq!(results["job-returned"][0].status, JobStatus::Succeeded);
    assert_eq!(results["job-returned"][0].worker_id, "worker-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_reconnects_after_the_broker_drops_its_connection() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("reconnect").await;
    env.start_worker().await;
    env.publish(&env.job("job-before", |_| {})).await;
    env.results_for(&["job-before"], Duration::from_secs(60))
        .await;

    let out = Command::new("rabbitmqctl")
        .args(["close_all_connections", "pva-worker reconnect test"])
        .output()
        .expect("rabbitmqctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Our own connection went too.
    let (amqp, channel, results) = connect_test_side(&env.settings).await;
    env.amqp = amqp;
    env.channel = channel;
    env.results = results;
    let port = env.workers[0].1;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, m) = http_get(port, "/metrics").await.unwrap();
        if m.contains("pva_broker_reconnects_total 1")
            && http_status(port, "/readyz").await == Some(200)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no reconnect; log:\n{}",
            env.log(0)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.publish(&env.job("job-after", |_| {})).await;
    let results = env
        .results_for(&["job-after"], Duration::from_secs(60))
        .await;
    assert_eq!(results["job-after"][0].status, JobStatus::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_finished_job_is_republished_not_recomputed() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("republish").await;
    env.start_worker().await;
    let body = env.job("job-twice", |_| {});
    env.publish(&body).await;
    let first = env
        .results_for(&["job-twice"], Duration::from_secs(60))
        .await;
    env.publish(&body).await;
    let second = env
        .results_for(&["job-twice"], Duration::from_secs(60))
        .await;
    assert_eq!(
        first["job-twice"][0].outputs,
        second["job-twice"][0].outputs
    );
    assert_eq!(
        first["job-twice"][0].timings, second["job-twice"][0].timings,
        "the stored result, not a new run"
    );
    wait_metric(
        env.workers[0].1,
        "pva_jobs_total{outcome=\"republished\"} 1",
    )
    .await;
}
