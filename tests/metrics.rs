//! The metrics and health HTTP server over real TCP: status codes, readiness transitions, the
//! exposition content type, graceful shutdown, and the `/metrics` body linted by `promtool check
//! metrics` (install it with `scripts/setup-promtool.sh`; the test fails without it).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::http::{get, request, STEP_TIMEOUT};
use common::promql::sample;
use pva_worker::metrics::{serve_http, Health, JobOutcome, Metrics, Stage};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server on a free loopback port, with the sender that shuts it down.
struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Health,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start() -> Server {
    let metrics = Arc::new(Metrics::new());
    let health = Health::new(&metrics);
    let (stop, stopped) = oneshot::channel::<()>();
    let (addr, task) = serve_http("127.0.0.1:0", Arc::clone(&metrics), health.clone(), stopped)
        .await
        .expect("bind a free port");
    assert!(addr.ip().is_loopback());
    assert_ne!(
        addr.port(),
        0,
        "the bound port is reported, not the requested 0"
    );
    Server {
        addr,
        metrics,
        health,
        stop,
        task,
    }
}

#[tokio::test]
async fn metrics_server_reports_readiness_and_shuts_down() {
    let server = start().await;
    let addr = server.addr;

    let live = get(addr, "/healthz").await;
    assert_eq!(
        (live.status, live.body.as_str()),
        (200, r#"{"status":"ok"}"#)
    );
    assert_eq!(live.header("content-type"), Some("application/json"));

    let ready = get(addr, "/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("model not loaded"), "{}", ready.body);
    assert_eq!(
        get(addr, "/startupz").await.status,
        503,
        "not started before the model loads"
    );
    assert!(
        ready.body.contains("broker not connected"),
        "{}",
        ready.body
    );

    server.health.set_model_loaded(true);
    // Started once the model is loaded, whatever the broker does (no restart loop while it is down).
    assert_eq!(get(addr, "/startupz").await.status, 200);
    let ready = get(addr, "/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(!ready.body.contains("model"), "{}", ready.body);
    assert!(
        ready.body.contains("broker not connected"),
        "{}",
        ready.body
    );
    assert_eq!(
        sample(&get(addr, "/metrics").await.body, "pva_broker_connected"),
        Some(0.0)
    );

    server.health.set_broker_connected(true);
    let ready = get(addr, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready"));
    let body = get(addr, "/metrics").await.body;
    assert_eq!(sample(&body, "pva_broker_connected"), Some(1.0));
    assert_eq!(sample(&body, "pva_ready"), Some(1.0));
    let cold_start = sample(&body, "pva_cold_start_seconds").unwrap();
    assert!(
        cold_start > 0.0,
        "process start to first ready: {cold_start}"
    );

    // Readiness lost without a setter (the last inference thread died) shows at the next scrape.
    let alive = Arc::new(std::sync::atomic::AtomicUsize::new(1));
    server.health.watch_inference_threads(Arc::clone(&alive));
    alive.store(0, std::sync::atomic::Ordering::Release);
    assert_eq!(get(addr, "/readyz").await.status, 503);
    // ... and liveness too: no thread is left to run a job.
    let live = get(addr, "/healthz").await;
    let body: serde_json::Value = serde_json::from_str(&live.body).unwrap();
    assert_eq!(
        (live.status, body),
        (
            503,
            serde_json::json!({"status": "unhealthy", "reasons": ["no inference thread alive"]})
        )
    );
    assert_eq!(
        sample(&get(addr, "/metrics").await.body, "pva_ready"),
        Some(0.0)
    );
    alive.store(1, std::sync::atomic::Ordering::Release);

    // A lost connection makes the worker unready but still alive.
    server.health.set_broker_connected(false);
    server.metrics.broker_reconnected();
    let ready = get(addr, "/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.body.contains("broker not connected"),
        "{}",
        ready.body
    );
    assert_eq!(get(addr, "/healthz").await.status, 200);
    let body = get(addr, "/metrics").await.body;
    assert_eq!(sample(&body, "pva_broker_connected"), Some(0.0));
    assert_eq!(sample(&body, "pva_broker_reconnects_total"), Some(1.0));

    assert_eq!(get(addr, "/nothing-here").await.status, 404);
    assert_eq!(request(addr, "POST", "/metrics").await.status, 405);

    server.stop.send(()).unwrap();
    tokio::time::timeout(STEP_TIMEOUT, server.task)
        .await
        .expect("server stops after the shutdown signal")
        .expect("server task did not panic")
        .expect("server ended without an I/O error");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "nothing listens after shutdown"
    );
}

#[tokio::test]
async fn metrics_body_is_valid_exposition_and_passes_promtool() {
    let server = start().await;
    let m = &server.metrics;
    server.health.set_broker_connected(true);
    m.model_loaded("pva-tiny", "0.1.0", 0.8);
    let in_flight = m.in_flight_guard();
    m.observe_queue_wait_since(SystemTime::now() - Duration::from_secs(3));
    for (stage, secs) in [("fetch", 0.04), ("preprocess", 0.2), ("denoise", 7.5)] {
        m.observe_stage(stage.parse::<Stage>().unwrap(), secs);
    }
    m.observe_stage(Stage::Upload, 0.3);
    m.adapter_cache_miss();
    m.tuning_finished(95.0, 0.0713);
    m.adapter_cache_hit();
    m.job_finished(JobOutcome::Succeeded, 9.5);
    m.observe_identity_score(0.71);
    m.job_retried("storage_error");
    m.job_finished(JobOutcome::Failed, 0.4);
    m.job_dead_lettered("delivery_limit");
    m.job_finished(JobOutcome::Republished, 0.1);

    let response = get(server.addr, "/metrics").await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    let body = &response.body;
    assert_eq!(sample(body, "pva_jobs_in_flight"), Some(1.0));
    let oldest = sample(body, "pva_jobs_in_flight_oldest_seconds").unwrap();
    assert!(
        oldest > 0.0,
        "the in-flight job is aged at the scrape: {oldest}"
    );
    assert!(
        !body.contains("outcome=\"dead_lettered\"") && !body.contains("outcome=\"retried\""),
        "one outcome per job:\n{body}"
    );
    drop(in_flight);
    assert_eq!(
        sample(
            &get(server.addr, "/metrics").await.body,
            "pva_jobs_in_flight"
        ),
        Some(0.0)
    );
    for expected in [
        "pva_jobs_total{outcome=\"succeeded\"} 1",
        "pva_jobs_total{outcome=\"failed\"} 1",
        "pva_job_duration_seconds_bucket{outcome=\"succeeded\",le=\"10\"} 1",
        "pva_retries_total{reason=\"storage_error\"} 1",
        "pva_retries_total{reason=\"model_error\"} 0",
        "pva_dead_letters_total{reason=\"delivery_limit\"} 1",
        "pva_identity_score_bucket{le=\"0.8\"} 1",
        "pva_tuning_final_loss_bucket{le=\"0.1\"} 1",
        "pva_tuning_nonfinite_losses_total 0",
        "pva_ready 0",
        "process_resident_memory_bytes ",
        "pva_stage_duration_seconds_bucket{stage=\"denoise\",le=\"10\"} 1",
        "pva_stage_duration_seconds_count{stage=\"tune\"} 0",
        "pva_queue_wait_seconds_count 1",
        "pva_tuning_duration_seconds_bucket{le=\"120\"} 1",
        "pva_tuning_last_loss 0.0713",
        "pva_model_load_seconds 0.8",
        "pva_build_info{model=\"pva-tiny\",model_version=\"0.1.0\",version=\"",
    ] {
        assert!(body.contains(expected), "missing `{expected}` in\n{body}");
    }

    let (ok, report) = promtool_check_metrics(body);
    assert!(
        ok,
        "promtool check metrics rejected /metrics:\n{report}\n--- body ---\n{body}"
    );

    server.stop.send(()).unwrap();
    server.task.await.unwrap().unwrap();
}

/// Runs `promtool check metrics` on `body` (its stdin); returns whether it exited 0 and its output.
fn promtool_check_metrics(body: &str) -> (bool, String) {
    common::promql::promtool(&["check", "metrics"], &common::repo(), body)
}

#[test]
fn metrics_lint_catches_bad_names_and_bad_lines() {
    // The lint is only worth running if it can fail: on a counter without `_total` or help text, and
    // on a line that is not a sample.
    for broken in ["# TYPE jobs counter\njobs 1\n", "not a sample\n"] {
        let (ok, report) = promtool_check_metrics(broken);
        assert!(!ok, "promtool accepted {broken:?}: {report}");
    }
}
