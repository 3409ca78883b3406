//! The HTTP side: [`Health`] (what readiness depends on) and [`serve_http`], which answers
//! `GET /metrics`, `/healthz`, `/readyz` and `/startupz`. The only place axum is used.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::IntGauge;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::task::JoinHandle;

use super::registry::Readiness;
use super::Metrics;

/// Something that can make the worker not live: `/healthz` fails while it reports a fault (the
/// inference pool's engine watch, after a failed probe inference).
pub trait Liveness: std::fmt::Debug + Send + Sync {
    /// Why the worker should be restarted, or `None` while nothing says so.
    fn fault(&self) -> Option<String>;
}

/// What readiness depends on: the model is loaded (and warmed up), an inference thread is alive and
/// the broker connection is up; and what liveness depends on: an inference thread is alive and no
/// watched [`Liveness`] reports a fault.
///
/// Cheap to clone; all clones share the same state. Setting the broker state also sets the
/// `pva_broker_connected` gauge of the [`Metrics`] it was created from; every change of state, and
/// every scrape, sets `pva_ready` (and, the first time the worker is ready, `pva_cold_start_seconds`).
#[derive(Debug, Clone)]
pub struct Health {
    state: Arc<HealthState>,
    broker_gauge: IntGauge,
    readiness: Readiness,
}

#[derive(Debug, Default)]
struct HealthState {
    model_loaded: AtomicBool,
    broker_connected: AtomicBool,
    /// The inference pool's count of live threads, once it has started.
    inference_threads: std::sync::OnceLock<Arc<AtomicUsize>>,
    /// What else `/healthz` asks (the engine watch), once the pool has started.
    liveness: std::sync::OnceLock<Arc<dyn Liveness>>,
}

impl Health {
    /// Not ready: no model loaded, no broker connection.
    pub fn new(metrics: &Metrics) -> Self {
        metrics.broker_connected.set(0);
        let health = Self {
            state: Arc::default(),
            broker_gauge: metrics.broker_connected.clone(),
            readiness: metrics.readiness.clone(),
        };
        health.refresh_metrics();
        health
    }

    /// Whether the model is loaded and its sessions are ready to run.
    pub fn set_model_loaded(&self, loaded: bool) {
        self.state.model_loaded.store(loaded, Ordering::Release);
        self.refresh_metrics();
    }

    /// Follows the inference pool's count of live threads: readiness needs at least one.
    pub fn watch_inference_threads(&self, alive: Arc<AtomicUsize>) {
        let _ = self.state.inference_threads.set(alive);
        self.refresh_metrics();
    }

    /// Follows `liveness`: `/healthz` fails while it reports a fault.
    pub fn watch_liveness(&self, liveness: Arc<dyn Liveness>) {
        let _ = self.state.liveness.set(liveness);
    }

    /// Why the worker is not live (`/healthz` fails): no inference thread alive, or a watched
    /// [`Liveness`] fault; empty while it is live (also before the pool has started: starting is
    /// `/startupz`'s business).
    pub fn unhealthy(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Some(alive) = self.state.inference_threads.get() {
            if alive.load(Ordering::Acquire) == 0 {
                reasons.push("no inference thread alive".to_string());
            }
        }
        if let Some(fault) = self.state.liveness.get().and_then(|l| l.fault()) {
            reasons.push(fault);
        }
        reasons
    }

    /// Whether the worker holds an open connection to RabbitMQ (also sets `pva_broker_connected`).
    pub fn set_broker_connected(&self, connected: bool) {
        self.state
            .broker_connected
            .store(connected, Ordering::Release);
        self.broker_gauge.set(i64::from(connected));
        self.refresh_metrics();
    }

    /// Sets `pva_ready` from [`Health::ready`] (and the cold start, the first time it is ready).
    fn refresh_metrics(&self) {
        self.readiness.observe(self.ready());
    }

    /// Whether the model is loaded and warmed up (`/startupz`).
    pub fn model_loaded(&self) -> bool {
        self.state.model_loaded.load(Ordering::Acquire)
    }

    /// Whether the worker can take jobs: model loaded and broker connected.
    pub fn ready(&self) -> bool {
        self.missing().is_empty()
    }

    /// What keeps the worker from being ready, e.g. `["model not loaded"]`; empty when ready.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.state.model_loaded.load(Ordering::Acquire) {
            missing.push("model not loaded");
        } else if let Some(alive) = self.state.inference_threads.get() {
            if alive.load(Ordering::Acquire) == 0 {
                missing.push("no inference thread alive");
            }
        }
        if !self.state.broker_connected.load(Ordering::Acquire) {
            missing.push("broker not connected");
        }
        missing
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    health: Health,
}

/// Starts the HTTP server with `GET /metrics`, `/healthz` and `/readyz` on `listen` (port 0 picks a
/// free port) and returns the bound address and the server task. The server stops accepting when
/// `shutdown` completes and the task ends once open requests are answered.
///
/// - `/metrics`: [`Metrics::render`] as `text/plain; version=0.0.4`.
/// - `/healthz`: 200 `{"status":"ok"}` while [`Health::unhealthy`] is empty, else 503
///   `{"status":"unhealthy","reasons":[...]}` (liveness).
/// - `/startupz`: 200 once the model is loaded and warmed up, else 503.
/// - `/readyz`: 200 `ready` when [`Health::ready`], else 503 naming what is missing (readiness).
pub async fn serve_http<A, F>(
    listen: A,
    metrics: Arc<Metrics>,
    health: Health,
    shutdown: F,
) -> io::Result<(SocketAddr, JoinHandle<io::Result<()>>)>
where
    A: ToSocketAddrs,
    F: Future + Send + 'static,
{
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz_handler))
        .route("/readyz", get(readyz_handler))
        .route("/startupz", get(startupz_handler))
        .with_state(HttpState { metrics, health });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
    });
    tracing::info!(%addr, "metrics and health endpoints listening");
    Ok((addr, tokio::spawn(async move { server.await })))
}

async fn metrics_handler(State(state): State<HttpState>) -> Response {
    // NOTE: readiness can change without a setter (an inference thread dies), so `pva_ready` is
    // brought up to date at every scrape.
    state.health.refresh_metrics();
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        state.metrics.render(),
    )
        .into_response()
}

/// Liveness: an inference thread is alive and the engine watch reports no fault (a probe inference
/// failed after consecutive engine failures). Answered from shared state, never by running inference,
/// so it is fast while a long job runs.
async fn healthz_handler(State(state): State<HttpState>) -> Response {
    let reasons = state.health.unhealthy();
    let (status, body) = if reasons.is_empty() {
        (StatusCode::OK, serde_json::json!({"status": "ok"}))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "unhealthy", "reasons": reasons}),
        )
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Startup: the model is loaded and every inference thread has run the warm-up edit (the broker may
/// still be unreachable; readiness covers that, so a pod waiting for RabbitMQ is kept out of rotation
/// rather than restarted).
async fn startupz_handler(State(state): State<HttpState>) -> Response {
    if state.health.model_loaded() {
        (StatusCode::OK, "started").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: model not loaded and warmed up",
        )
            .into_response()
    }
}

async fn readyz_handler(State(state): State<HttpState>) -> Response {
    let missing = state.health.missing();
    if missing.is_empty() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", missing.join(", ")),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::test_support::sample;

    #[test]
    fn health_needs_model_and_broker_and_drives_the_gauge() {
        let m = Metrics::new();
        let health = Health::new(&m);
        let clone = health.clone();
        assert!(!health.ready());
        assert_eq!(
            health.missing(),
            ["model not loaded", "broker not connected"]
        );
        clone.set_model_loaded(true);
        assert_eq!(
            health.missing(),
            ["broker not connected"],
            "clones share state"
        );
        assert_eq!(sample(&m.render(), "pva_ready", ""), Some(0.0));
        assert_eq!(sample(&m.render(), "pva_cold_start_seconds", ""), Some(0.0));
        health.set_broker_connected(true);
        assert!(clone.ready());
        assert_eq!(m.broker_connected.get(), 1);
        let text = m.render();
        assert_eq!(sample(&text, "pva_ready", ""), Some(1.0));
        let cold_start = sample(&text, "pva_cold_start_seconds", "").unwrap();
        assert!(cold_start > 0.0, "set when first ready: {cold_start}");
        health.set_broker_connected(false);
        assert!(!health.ready());
        assert_eq!(m.broker_connected.get(), 0);
        let text = m.render();
        assert_eq!(sample(&text, "pva_broker_connected", ""), Some(0.0));
        assert_eq!(sample(&text, "pva_ready", ""), Some(0.0));
    }

    #[test]
    fn health_needs_a_live_inference_thread_once_the_pool_is_watched() {
        let m = Metrics::new();
        let health = Health::new(&m);
        health.set_model_loaded(true);
        health.set_broker_connected(true);
        let alive = Arc::new(AtomicUsize::new(2));
        health.watch_inference_threads(Arc::clone(&alive));
        assert!(health.ready());
        alive.store(0, Ordering::Release);
        assert_eq!(health.missing(), ["no inference thread alive"]);
        alive.store(1, Ordering::Release);
        assert!(health.ready());
    }

    #[derive(Debug)]
    struct Fault(std::sync::Mutex<Option<String>>);

    impl Liveness for Fault {
        fn fault(&self) -> Option<String> {
            self.0.lock().unwrap().clone()
        }
    }

    #[test]
    fn liveness_needs_a_live_thread_and_no_fault() {
        let m = Metrics::new();
        let health = Health::new(&m);
        assert!(health.unhealthy().is_empty(), "live while starting");
        let alive = Arc::new(AtomicUsize::new(1));
        health.watch_inference_threads(Arc::clone(&alive));
        let fault = Arc::new(Fault(Default::default()));
        health.watch_liveness(fault.clone());
        assert!(health.unhealthy().is_empty());
        *fault.0.lock().unwrap() = Some("the probe failed".into());
        assert_eq!(health.unhealthy(), ["the probe failed"]);
        alive.store(0, Ordering::Release);
        assert_eq!(
            health.unhealthy(),
            ["no inference thread alive", "the probe failed"]
        );
        *fault.0.lock().unwrap() = None;
        alive.store(1, Ordering::Release);
        assert!(health.unhealthy().is_empty());
    }
}
