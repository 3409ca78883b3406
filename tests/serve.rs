//! `pva-worker serve` against real services: RabbitMQ on 127.0.0.1:5672 (guest/guest) and an
//! s3s-fs server on loopback. Each test uses its own queue, exchange and bucket names; the tests run
//! one at a time because one of them drops every broker connection.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::repo;
use common::s3_server::S3Server;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use pva_worker::config::Settings;
use pva_worker::job::{JobResult, JobStatus};
use pva_worker::storage::s3::S3Store;
use pva_worker::storage::ObjectStore;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// One test at a time: `close_all_connections` and CPU-heavy workers would disturb the others.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A test's services, names and worker processes.
struct Env {
    ca: common::test_ca::TestCa,
    s3: S3Server,
    settings: Settings,
    dir: tempfile::TempDir,
    store: S3Store,
    amqp: Connection,
    channel: Channel,
    results: lapin::Consumer,
    workers: Vec<(Child, u16)>,
    /// Whether workers sign their outputs (C2PA, required); off, they write the XMP mark only.
    signing: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Env {
    async fn new(name: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{name}-{}-{n}", std::process::id());
        let s3 = S3Server::start();
        let mut settings = common::settings();
        settings.s3 = s3.settings();
        settings.s3.input_bucket = format!("in-{id}");
        settings.s3.output_buckets = vec![format!("out-{id}")];
        settings.s3.sse = pva_worker::config::Sse::None;
        let a = &mut settings.amqp;
        a.job_queue = format!("test.{id}.jobs");
        a.dead_letter_exchange = format!("test.{id}.dlx");
        a.dead_letter_queue = format!("test.{id}.dead");
        a.result_exchange = format!("test.{id}.results");
        a.result_routing_key = "result".into();
        a.reconnect_initial_ms = 100;
        a.reconnect_max_ms = 1000;
        settings.worker.delivery_limit = 3;
        settings.worker.retry_initial_ms = 50;
        settings.worker.retry_max_ms = 200;
        settings.worker.shutdown_deadline_secs = 60;

        let store = S3Store::new(&settings.s3).await;
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
            ca: common::test_ca::TestCa::new(common::test_ca::KeyType::P256),
            s3,
            settings,
            dir: tempfile::tempdir().unwrap(),
            store,
            amqp,
            channel,
            results,
            workers: Vec::new(),
            signing: true,
        }
    }

    fn config_file(&self, worker: &str, port: u16) -> PathBuf {
        let s = &self.settings;
        let toml = format!(
            r#"[engine]
model_dir = "{model}"
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
url = "{AMQP}"
job_queue = "{jq}"
dead_letter_exchange = "{dlx}"
dead_letter_queue = "{dlq}"
result_exchange = "{rx}"
result_routing_key = "{rk}"
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
[metrics]
listen = "127.0.0.1:{port}"
{provenance}
[logging]
format = "json"
level = "info,ort=warn"
"#,
            model = s.engine.model_dir.display(),
            ort = s.engine.ort_library.display(),
            deadline = s.worker.shutdown_deadline_secs,
            concurrency = s.worker.concurrency,
            limit = s.worker.delivery_limit,
            ri = s.worker.retry_initial_ms,
            rm = s.worker.retry_max_ms,
            jq = s.amqp.job_queue,
            dlx = s.amqp.dead_letter_exchange,
            dlq = s.amqp.dead_letter_queue,
            rx = s.amqp.result_exchange,
            rk = s.amqp.result_routing_key,
            endpoint = s.s3.endpoint,
            ak = self.s3.access_key(),
            sk = self.s3.secret_key(),
            ib = s.s3.input_bucket,
            ob = s.s3.output_buckets[0],
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
    async fn start_worker(&mut self) -> usize {
        let index = self.workers.len();
        let name = format!("worker-{index}");
        let port = free_port();
        let config = self.config_file(&name, port);
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pva-worker"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.workers.push((child, port));
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

    fn log(&self, index: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("worker-{index}.log")))
            .unwrap_or_default()
    }

    fn signal(&mut self, index: usize, sig: &str) {
        let pid = self.workers[index].0.id().to_string();
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(&pid)
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn wait_exit(&mut self, index: usize, within: Duration) -> std::process::ExitStatus {
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

    fn job(&self, job_id: &str, patch: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
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

    async fn publish(&self, body: &[u8]) {
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
    async fn results_for(
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
            let r: JobResult = serde_json::from_slice(&delivery.data).unwrap();
            got.entry(r.job_id.clone()).or_default().push(r);
        }
        got
    }

    async fn queue_len(&self, queue: &str) -> u32 {
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

    async fn output_keys(&self, job_id: &str) -> Vec<String> {
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
    fn assert_logs_clean(&self) {
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

async fn connect_test_side(settings: &Settings) -> (Connection, Channel, lapin::Consumer) {
    let amqp = Connection::connect(AMQP, ConnectionProperties::default())
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

/// Status code of GET `path` on 127.0.0.1:`port`, or None when nothing answers.
async fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).await.map(|(s, _)| s)
}

async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Some((status, body))
}

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
async fn happy_path_outputs_in_s3_result_published_and_acked() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("happy").await;
    env.start_worker().await;
    env.publish(&env.job("job-happy", |v| v["num_outputs"] = 2.into()))
        .await;
    let results = env
        .results_for(&["job-happy"], Duration::from_secs(60))
        .await;
    let r = &results["job-happy"][0];
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
    assert_eq!(r.outputs.len(), 2);
    assert_eq!(r.worker_id, "worker-0");
    assert_eq!(r.model_name, "pva-tiny");
    for stage in [
        "fetch",
        "preprocess",
        "encode",
        "denoise",
        "decode",
        "upload",
    ] {
        assert!(r.timings.contains_key(stage), "timing {stage} missing");
    }
    let keys = env.output_keys("job-happy").await;
    assert_eq!(
        keys,
        vec![
            "edits/job-happy/0.png",
            "edits/job-happy/1.png",
            "edits/job-happy/result.json"
        ]
    );
    let png = env
        .store
        .get(
            &env.settings.s3.output_buckets[0],
            "edits/job-happy/0.png",
            1 << 24,
        )
        .await
        .unwrap();
    assert_eq!(image::load_from_memory(&png).unwrap().width(), 910);
    let report = pva_worker::provenance::verify(&png, Some(&env.ca.anchors())).unwrap();
    assert!(report.signed && report.valid, "{report:?}");
    assert_eq!(
        report.digital_source_type.as_deref(),
        Some("http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia")
    );
    assert_eq!(report.xmp_source_type, report.digital_source_type);
    assert_eq!(
        r.consent.as_ref().unwrap().id,
        "public-domain-example",
        "consent recorded in the result"
    );
    assert!(
        env.log(0).contains("public-domain-example"),
        "consent recorded in the logs"
    );
    assert_eq!(
        env.queue_len(&env.settings.amqp.job_queue.clone()).await,
        0,
        "acked"
    );
    wait_metric(env.workers[0].1, "pva_jobs_total{outcome=\"succeeded\"} 1").await;
    env.assert_logs_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_jobs_two_workers_each_done_once() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("twenty").await;
    env.start_worker().await;
    env.start_worker().await;
    let ids: Vec<String> = (0..20).map(|i| format!("job-{i:02}")).collect();
    for id in &ids {
        env.publish(&env.job(id, |v| v["steps"] = 2.into())).await;
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let results = env.results_for(&refs, Duration::from_secs(240)).await;
    let mut by_worker = BTreeMap::<String, usize>::new();
    for id in &ids {
        let rs = &results[id];
        assert_eq!(rs.len(), 1, "{id} answered {} times", rs.len());
        assert_eq!(rs[0].status, JobStatus::Succeeded, "{:?}", rs[0]);
        *by_worker.entry(rs[0].worker_id.clone()).or_default() += 1;
        assert_eq!(
            env.output_keys(id).await.len(),
            2,
            "{id}: one output + result.json"
        );
    }
    assert_eq!(by_worker.len(), 2, "both workers took jobs: {by_worker:?}");
    assert_eq!(env.queue_len(&env.settings.amqp.job_queue.clone()).await, 0);
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
    env.start_worker().await;

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
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
}

/// Waits until the worker's /metrics holds `needle` (counters move just after the result is sent).
async fn wait_metric(port: u16, needle: &str) -> String {
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
async fn wait_in_flight(port: u16) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_uploads_publishes_waits_and_downloads() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("enqueue").await;
    env.start_worker().await;
    let config = env.config_file("enqueue", free_port());
    let job = env.dir.path().join("job.json");
    std::fs::write(
        &job,
        env.job("job-enqueued", |v| v["num_outputs"] = 2.into()),
    )
    .unwrap();
    let out = env.dir.path().join("downloads");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pva-worker"))
        .arg("--config")
        .arg(&config)
        .arg("enqueue")
        .arg(&job)
        .arg("--root")
        .arg(repo().join("examples"))
        .arg("--out")
        .arg(&out)
        .arg("--timeout")
        .arg("120")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("uploaded"), "{stdout}");
    for i in 0..2 {
        let path = out.join(format!("edits/job-enqueued/{i}.png"));
        assert_eq!(
            image::open(&path).unwrap().width(),
            910,
            "{}",
            path.display()
        );
    }
    // The result also went to the result exchange.
    let results = env
        .results_for(&["job-enqueued"], Duration::from_secs(10))
        .await;
    assert_eq!(results["job-enqueued"][0].status, JobStatus::Succeeded);
}

async fn adapters_of(env: &Env) -> Vec<String> {
    let bucket = &env.settings.s3.output_buckets[0];
    env.store
        .list(bucket, "adapters/example-person/")
        .await
        .unwrap()
}

async fn output_png(env: &Env, job: &str) -> Vec<u8> {
    let bucket = &env.settings.s3.output_buckets[0];
    env.store
        .get(bucket, &format!("edits/{job}/0.png"), 1 << 26)
        .await
        .unwrap()
}

fn metric_value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuning_policies_cache_adapters_per_identity_and_forget_removes_them() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("tuning").await;
    env.settings.worker.concurrency = 2;
    env.start_worker().await;
    let port = env.workers[0].1;
    let bucket = env.settings.s3.output_buckets[0].clone();

    // if_cached with nothing stored: edits with the model's own adapter, tunes nothing.
    env.publish(&env.job("cached-none", |v| v["tuning"] = "if_cached".into()))
        .await;
    let r = env
        .results_for(&["cached-none"], Duration::from_secs(60))
        .await;
    assert_eq!(r["cached-none"][0].status, JobStatus::Succeeded);
    assert!(adapters_of(&env).await.is_empty());

    // Two auto jobs for the same identity at once: one tuning, one stored adapter.
    env.publish(&env.job("auto-a", |v| v["tuning"] = "auto".into()))
        .await;
    env.publish(&env.job("auto-b", |v| v["tuning"] = "auto".into()))
        .await;
    let r = env
        .results_for(&["auto-a", "auto-b"], Duration::from_secs(120))
        .await;
    for id in ["auto-a", "auto-b"] {
        assert_eq!(r[id][0].status, JobStatus::Succeeded, "{:?}", r[id][0]);
    }
    let tuned: Vec<_> = ["auto-a", "auto-b"]
        .iter()
        .filter(|id| r[**id][0].timings.contains_key("tune"))
        .collect();
    assert_eq!(tuned.len(), 1, "exactly one of the two jobs tuned");
    let stored = adapters_of(&env).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let m = wait_metric(port, "pva_tuning_duration_seconds_count 1").await;
    assert!(metric_value(&m, "pva_tuning_last_loss").is_finite());

    // The tuned adapter changes the edit: the same job untuned differs.
    let plain = env.job("plain", |v| v["tuning"] = "never".into());
    env.publish(&plain).await;
    let again = env.job("again", |v| v["tuning"] = "if_cached".into());
    env.publish(&again).await;
    let r = env
        .results_for(&["plain", "again"], Duration::from_secs(60))
        .await;
    assert!(
        !r["again"][0].timings.contains_key("tune"),
        "served from the stored adapter"
    );
    let (a, b) = (
        output_png(&env, "plain").await,
        output_png(&env, "again").await,
    );
    let (a, b) = (
        image::load_from_memory(&a).unwrap().to_rgb8(),
        image::load_from_memory(&b).unwrap().to_rgb8(),
    );
    assert_ne!(a, b, "the tuned adapter must change the edit");

    // Another reference set is another key.
    env.publish(&env.job("other-refs", |v| {
        v["tuning"] = "auto".into();
        v["identity"]["references"]
            .as_array_mut()
            .unwrap()
            .truncate(1);
    }))
    .await;
    env.results_for(&["other-refs"], Duration::from_secs(60))
        .await;
    assert_eq!(adapters_of(&env).await.len(), 2);

    // A corrupted stored adapter is ignored and replaced (by a worker without it in memory).
    let first = stored[0].clone();
    env.store
        .put(
            &bucket,
            &first,
            b"not an adapter".to_vec(),
            "application/octet-stream",
        )
        .await
        .unwrap();
    env.signal(0, "KILL");
    env.wait_exit(0, Duration::from_secs(10));
    env.start_worker().await;
    let port = env.workers[1].1;
    env.publish(&env.job("after-corruption", |v| v["tuning"] = "auto".into()))
        .await;
    let r = env
        .results_for(&["after-corruption"], Duration::from_secs(60))
        .await;
    assert_eq!(r["after-corruption"][0].status, JobStatus::Succeeded);
    assert!(
        r["after-corruption"][0].timings.contains_key("tune"),
        "re-tuned"
    );
    let bytes = env.store.get(&bucket, &first, 1 << 30).await.unwrap();
    assert!(bytes.len() > 1000, "the corrupt object was replaced");
    assert!(env.log(1).contains("corrupt"), "the worker warned about it");

    // forget removes every adapter of the identity; the next auto job tunes again.
    let config = env.config_file("forget", free_port());
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pva-worker"))
        .args([
            "--config".as_ref(),
            config.as_os_str(),
            "forget".as_ref(),
            "--identity".as_ref(),
            "example-person".as_ref(),
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("2 object(s) removed"), "{stdout}");
    assert!(adapters_of(&env).await.is_empty());
    env.publish(&env.job("after-forget", |v| v["tuning"] = "auto".into()))
        .await;
    let r = env
        .results_for(&["after-forget"], Duration::from_secs(60))
        .await;
    assert!(
        r["after-forget"][0].timings.contains_key("tune"),
        "tuned again after forget"
    );
    wait_metric(port, "pva_tuning_duration_seconds_count 2").await;
    env.assert_logs_clean();
}

/// A result with what differs between two runs of one job by design (worker id, timings) blanked.
fn comparable(result: &JobResult) -> JobResult {
    JobResult {
        worker_id: String::new(),
        timings: BTreeMap::new(),
        ..result.clone()
    }
}

/// `edit` runs the job runner `serve` runs: the same job gives the same `result.json` (worker id and
/// timings aside), stored at the same key, and byte-identical outputs; a past deadline fails in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_and_serve_run_one_job_flow_with_the_same_results() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("one-flow").await;
    env.signing = false;
    env.start_worker().await;
    let late = |v: &mut serde_json::Value| v["deadline"] = "2020-01-01T00:00:00Z".into();
    let jobs = [
        ("one-flow", env.job("one-flow", |_| {})),
        ("one-flow-late", env.job("one-flow-late", late)),
    ];
    for (_, body) in &jobs {
        env.publish(body).await;
    }
    let served = env
        .results_for(&["one-flow", "one-flow-late"], Duration::from_secs(180))
        .await;

    let out = env.dir.path().join("edit-out");
    let mut settings = env.settings.clone();
    settings.engine.intra_threads = 1;
    for (id, body) in &jobs {
        let job_file = env.dir.path().join(format!("{id}.json"));
        std::fs::write(&job_file, body).unwrap();
        let options = pva_worker::commands::edit::EditOptions {
            job: job_file,
            root: Some(repo().join("examples")),
            out: out.clone(),
            contact_sheet: None,
        };
        let edited = pva_worker::commands::edit::run(&settings, &options)
            .await
            .unwrap();
        let by_serve = &served[*id][0];
        assert_eq!(comparable(&edited.result), comparable(by_serve), "{id}");
        if *id == "one-flow-late" {
            assert_eq!(edited.result.status, JobStatus::Failed);
            let code = &edited.result.error.as_ref().unwrap().code;
            assert_eq!(code, "deadline_exceeded");
            continue;
        }
        assert_eq!(
            edited.result.status,
            JobStatus::Succeeded,
            "{:?}",
            edited.result
        );
        let key = "edits/one-flow/result.json";
        assert_eq!(edited.result_path, out.join(key));
        let stored = env
            .store
            .get(&env.settings.s3.output_buckets[0], key, 1 << 20)
            .await
            .unwrap();
        let stored: JobResult = serde_json::from_slice(&stored).unwrap();
        let local: JobResult =
            serde_json::from_slice(&std::fs::read(&edited.result_path).unwrap()).unwrap();
        assert_eq!(comparable(&local), comparable(&stored));
        assert_eq!(
            std::fs::read(out.join("edits/one-flow/0.png")).unwrap(),
            output_png(&env, "one-flow").await,
            "the outputs are byte-identical"
        );
    }
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
    assert_eq!(http_status(port, "/readyz").await, Some(200));

    env.publish(&env.job("after-panic", |_| {})).await;
    let next = env
        .results_for(&["after-panic"], Duration::from_secs(120))
        .await;
    assert_eq!(next["after-panic"][0].status, JobStatus::Succeeded);
    assert_eq!(http_status(port, "/readyz").await, Some(200));
    assert!(env.log(index).contains("panicked in its inference thread"));
}
