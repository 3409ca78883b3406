//! The worker-process harness of `tests/serve`: per-test RabbitMQ names and an s3s-fs server
//! (`Env`), `pva-worker serve` processes started from a generated config file and watched through
//! their logs and `/metrics`, job publishing and result collection.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use pva_worker::config::Settings;
use pva_worker::job::JobResult;
use pva_worker::storage::s3::S3Store;
use pva_worker::storage::ObjectStore;

use super::http::{http_get, http_status};
use super::s3_server::S3Server;
use super::test_ca::{KeyType, TestCa};
use super::{free_port, repo};

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// One test at a time: `close_all_connections` and CPU-heavy workers would disturb the others.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A test's services, names and worker processes.
pub struct Env {
    pub ca: TestCa,
    pub s3: S3Server,
    pub settings: Settings,
    pub dir: tempfile::TempDir,
    pub store: S3Store,
    pub amqp: Connection,
    pub channel: Channel,
    pub results: lapin::Consumer,
    pub workers: Vec<(Child, u16)>,
    /// Whether workers sign their outputs (C2PA, required); off, they write the XMP mark only.
    pub signing: bool,
    /// Extra environment variables of the worker processes (e.g. `OTEL_*`).
    pub worker_env: Vec<(String, String)>,
}

impl Env {
    pub async fn new(name: &str) -> Self {
        Self::with(name, S3Server::start(), |_| {}).await
    }

    /// As [`Env::new`] on a given S3 server, with the settings changed by `patch` before anything
    /// connects (another broker, TLS files, an HTTPS endpoint in front of `s3`): the test side and
    /// the workers use the patched settings.
    pub async fn with(name: &str, s3: S3Server, patch: impl FnOnce(&mut Settings)) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{name}-{}-{n}", std::process::id());
        let mut settings = super::settings();
        settings.s3 = s3.settings();
        settings.s3.input_bucket = format!("in-{id}");
        settings.s3.output_buckets = vec![format!("out-{id}")];
        settings.s3.sse = pva_worker::config::Sse::None;
        let a = &mut settings.amqp;
        a.url = pva_worker::config::Secret::new(AMQP);
        a.job_queue = format!("test.{id}.jobs");
        a.dead_letter_exchange = format!("test.{id}.dlx");
        a.dead_letter_queue = format!("test.{id}.dead");
        a.result_exchange = format!("test.{id}.results");
        a.result_routing_key = "result".into();
        a.results_queue = format!("test.{id}.finals");
        // The worker's own results queue only where a test asks for it (tests/serve/results.rs):
        // every test's observer queue is bound to all results, and a durable quorum queue per test
        // would pile up on the shared broker.
        a.declare_results_queue = false;
        a.reconnect_initial_ms = 100;
        a.reconnect_max_ms = 1000;
        settings.worker.delivery_limit = 3;
        settings.worker.retry_initial_ms = 50;
        settings.worker.retry_max_ms = 200;
        settings.worker.shutdown_deadline_secs = 60;
        patch(&mut settings);

        let store = S3Store::new(&settings.s3).await.unwrap();
        store
            .ensure_bucket(&settings.s3.input_bucket)
            .await
            .unwrap();
        store
            .ensure_bucket(&settings.s3.output_buckets[0])
            .await
            .unwrap();
        for f in ["obama.jpg", "obama2.jpg", "obama3.jpg"] {
            let bytes = std::fs::read(repo().join("examples/photos").join(f)).unwrap();
            store
                .put(
                    &settings.s3.input_bucket,
                    &format!("photos/{f}"),
                    bytes,
                    "image/jpeg",
                )
                .await
                .unwrap();
        }
        let (amqp, channel, results) = connect_test_side(&settings).await;
        Self {
            ca: TestCa::new(KeyType::P256),
            s3,
            settings,
            dir: tempfile::tempdir().unwrap(),
            store,
            amqp,
            channel,
            results,
            workers: Vec::new(),
            signing: true,
            worker_env: Vec::new(),
        }
    }

    pub fn config_file(&self, worker: &str, port: u16) -> PathBuf {
        let s = &self.settings;
        let toml = format!(
            r#"[engine]
model_dir = "{model}"
face_model_dir = "{faces}"
ort_library = "{ort}"
intra_threads = 1
[worker]
id = "{worker}"
concurrency = {concurrency}
shutdown_deadline_secs = {deadline}
delivery_limit = {limit}
retry_initial_ms = {ri}
retry_max_ms = {rm}
[amqp]
url = "{url}"
tls_ca_file = "{amqp_ca}"
tls_cert_file = "{amqp_cert}"
tls_key_file = "{amqp_key}"
job_queue = "{jq}"
dead_letter_exchange = "{dlx}"
dead_letter_queue = "{dlq}"
result_exchange = "{rx}"
result_routing_key = "{rk}"
results_queue = "{rq}"
declare_results_queue = {drq}
reconnect_initial_ms = 100
reconnect_max_ms = 1000
[s3]
endpoint = "{endpoint}"
force_path_style = true
access_key_id = "{ak}"
secret_access_key = "{sk}"
input_bucket = "{ib}"
output_buckets = ["{ob}"]
connect_timeout_secs = 2
operation_timeout_secs = 10
max_attempts = 2
sse = "none"
tls_ca_file = "{s3_ca}"
[metrics]
listen = "127.0.0.1:{port}"
[health]
warmup_steps = {warmup_steps}
probe_after_failures = {probe_after}
{provenance}
[logging]
format = "json"
level = "info,ort=warn"
"#,
            model = s.engine.model_dir.display(),
            faces = s.engine.face_model_dir.display(),
            ort = s.engine.ort_library.display(),
            deadline = s.worker.shutdown_deadline_secs,
            concurrency = s.worker.concurrency,
            limit = s.worker.delivery_limit,
            ri = s.worker.retry_initial_ms,
            rm = s.worker.retry_max_ms,
            url = s.amqp.url.expose(),
            amqp_ca = s.amqp.tls_ca_file.display(),
            amqp_cert = s.amqp.tls_cert_file.display(),
            amqp_key = s.amqp.tls_key_file.display(),
            s3_ca = s.s3.tls_ca_file.display(),
            jq = s.amqp.job_queue,
            dlx = s.amqp.dead_letter_exchange,
            dlq = s.amqp.dead_letter_queue,
            rx = s.amqp.result_exchange,
            rk = s.amqp.result_routing_key,
            rq = s.amqp.results_queue,
            drq = s.amqp.declare_results_queue,
            endpoint = s.s3.endpoint,
            ak = self.s3.access_key(),
            sk = self.s3.secret_key(),
            ib = s.s3.input_bucket,
            ob = s.s3.output_buckets[0],
            warmup_steps = s.health.warmup_steps,
            probe_after = s.health.probe_after_failures,
            provenance = if self.signing {
                format!(
                    "[provenance]\nsigning_key = \"{}\"\ncertificate_chain = \"{}\"\n\
                     algorithm = \"es256\"\nrequire_signing = true",
                    self.ca.settings(true).signing_key.display(),
                    self.ca.settings(true).certificate_chain.display(),
                )
            } else {
                String::new()
            },
        );
        let path = self.dir.path().join(format!("{worker}.toml"));
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// Starts a worker process and waits until /readyz says ready.
    pub async fn start_worker(&mut self) -> usize {
        let index = self.spawn_worker();
        let port = self.workers[index].1;
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_status(port, "/readyz").await != Some(200) {
            assert!(
                Instant::now() < deadline,
                "worker {index} not ready; log:\n{}",
                self.log(index)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        index
    }

    /// Starts a worker process without waiting for it; returns its index in `workers`.
    pub fn spawn_worker(&mut self) -> usize {
        let index = self.workers.len();
        let name = format!("worker-{index}");
        let port = free_port();
        let config = self.config_file(&name, port);
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pva-worker"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .envs(self.worker_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.workers.push((child, port));
        index
    }

    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("worker-{index}.log")))
            .unwrap_or_default()
    }

    pub fn signal(&mut self, index: usize, sig: &str) {
        let pid = self.workers[index].0.id().to_string();
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(&pid)
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub fn wait_exit(&mut self, index: usize, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.workers[index].0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker {index} did not exit; log:\n{}",
                self.log(index)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn job(&self, job_id: &str, patch: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(repo().join("examples/job.json")).unwrap())
                .unwrap();
        v["job_id"] = job_id.into();
        v["steps"] = 3.into();
        v["num_outputs"] = 1.into();
        v["output"]["prefix"] = "edits".into();
        patch(&mut v);
        serde_json::to_vec(&v).unwrap()
    }

    pub async fn publish(&self, body: &[u8]) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        self.channel
            .basic_publish(
                "".into(),
                self.settings.amqp.job_queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_timestamp(now),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Collects results until every id in `ids` has one (fails after `within`).
    pub async fn results_for(
        &mut self,
        ids: &[&str],
        within: Duration,
    ) -> BTreeMap<String, Vec<JobResult>> {
        let mut got: BTreeMap<String, Vec<JobResult>> = BTreeMap::new();
        let deadline = Instant::now() + within;
        while !ids.iter().all(|id| got.contains_key(*id)) {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, self.results.next()).await;
            let delivery = match next {
                Ok(Some(Ok(d))) => d,
                other => panic!(
                    "results for {:?} missing after {within:?} ({}); worker logs:\n{}",
                    ids.iter()
                        .filter(|id| !got.contains_key(**id))
                        .collect::<Vec<_>>(),
                    if other.is_err() {
                        "timeout"
                    } else {
                        "consumer ended"
                    },
                    (0..self.workers.len())
                        .map(|i| self.log(i))
                        .collect::<Vec<_>>()
                        .join("\n---\n")
                ),
            };
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            // Lifecycle events (`started`, `progress`) share the exchange; finals have their key.
            if delivery.routing_key.as_str() != self.settings.amqp.result_routing_key {
                continue;
            }
            let r: JobResult = serde_json::from_slice(&delivery.data).unwrap();
            got.entry(r.job_id.clone()).or_default().push(r);
        }
        got
    }

    pub async fn queue_len(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    pub async fn output_keys(&self, job_id: &str) -> Vec<String> {
        self.store
            .list(
                &self.settings.s3.output_buckets[0],
                &format!("edits/{job_id}/"),
            )
            .await
            .unwrap()
    }
}

impl Env {
    /// Fails if any worker log holds a secret, a presigned-URL signature or image bytes.
    pub fn assert_logs_clean(&self) {
        for i in 0..self.workers.len() {
            let log = self.log(i);
            assert!(!log.is_empty(), "worker {i} logged nothing");
            for secret in [self.s3.secret_key(), self.s3.access_key(), "guest:guest"] {
                assert!(!log.contains(secret), "worker {i} logged a credential");
            }
            for marker in [
                "X-Amz-Signature",
                "X-Amz-Credential",
                "\u{89}PNG",
                "JFIF",
                "Exif",
            ] {
                assert!(!log.contains(marker), "worker {i} logged `{marker}`");
            }
            // No long base64 run (image bytes or embeddings serialised into a log line).
            let longest = log
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='))
                .map(str::len)
                .max()
                .unwrap_or(0);
            assert!(
                longest < 200,
                "worker {i} logged a {longest}-character base64-like run"
            );
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for (child, _) in &mut self.workers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub async fn connect_test_side(settings: &Settings) -> (Connection, Channel, lapin::Consumer) {
    // The worker's own connect: the same URL and TLS files (amqps:// in tests/serve/tls.rs).
    let amqp = pva_worker::queue::connect(&settings.amqp, "pva-worker tests")
        .await
        .unwrap();
    let channel = amqp.create_channel().await.unwrap();
    // The same declarations the worker makes (idempotent), so jobs can be published before it starts.
    pva_worker::queue::declare_topology(&channel, &settings.amqp, settings.worker.delivery_limit)
        .await
        .unwrap();
    let results_queue = format!("{}.observed", settings.amqp.job_queue);
    channel
        .queue_declare(
            results_queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            results_queue.as_str().into(),
            settings.amqp.result_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let results = channel
        .basic_consume(
            results_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    (amqp, channel, results)
}

/// Waits until the worker's /metrics holds `needle` (counters move just after the result is sent).
pub async fn wait_metric(port: u16, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = http_get(port, "/metrics").await.unwrap();
        if m.contains(needle) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "`{needle}` never appeared in:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the worker's /metrics shows a job in flight.
pub async fn wait_in_flight(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((_, m)) = http_get(port, "/metrics").await {
            if m.lines()
                .any(|l| l.starts_with("pva_jobs_in_flight ") && !l.ends_with(" 0"))
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no job went in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
