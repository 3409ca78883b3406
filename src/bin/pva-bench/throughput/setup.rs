//! The throughput run's own names ([`Names`]: queues, exchanges, buckets) and the settings file
//! written for the worker and the in-process path ([`worker_config`]).

use pva_worker::config::Settings;

use super::ThroughputBench;

/// Names of this run's queues, exchanges and buckets.
pub(crate) struct Names {
    pub(crate) jobs: String,
    pub(crate) dlx: String,
    pub(crate) dead: String,
    pub(crate) results: String,
    pub(crate) observed: String,
    pub(crate) input_bucket: String,
    pub(crate) output_bucket: String,
}

impl Names {
    pub(crate) fn new() -> Self {
        let id = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
        );
        Self {
            jobs: format!("bench.{id}.jobs"),
            dlx: format!("bench.{id}.dlx"),
            dead: format!("bench.{id}.dead"),
            results: format!("bench.{id}.results"),
            observed: format!("bench.{id}.observed"),
            input_bucket: format!("bench-in-{id}"),
            output_bucket: format!("bench-out-{id}"),
        }
    }
}

/// The settings file both the worker and the in-process path load, so that both run alike.
#[allow(clippy::too_many_arguments)]
pub(crate) fn worker_config(
    settings: &Settings,
    opts: &ThroughputBench,
    names: &Names,
    endpoint: &str,
    access_key: &str,
    secret_key: &str,
    metrics_port: u16,
) -> String {
    format!(
        r#"# Written by pva-bench throughput.
[engine]
model_dir = "{model}"
face_model_dir = "{faces}"
ort_library = "{ort}"
intra_threads = {threads}
[worker]
id = "bench-worker"
concurrency = 1
[amqp]
url = "{amqp}"
job_queue = "{jobs}"
dead_letter_exchange = "{dlx}"
dead_letter_queue = "{dead}"
result_exchange = "{results}"
result_routing_key = "result"
# The bench binds its own results queue (deleted with its topology).
declare_results_queue = false
[s3]
endpoint = "{endpoint}"
force_path_style = true
access_key_id = "{access_key}"
secret_access_key = "{secret_key}"
input_bucket = "{input}"
output_buckets = ["{output}"]
sse = "none"
[metrics]
listen = "127.0.0.1:{metrics_port}"
[logging]
format = "json"
level = "warn"
"#,
        model = settings.engine.model_dir.display(),
        faces = settings.engine.face_model_dir.display(),
        ort = settings.engine.ort_library.display(),
        threads = opts.threads,
        amqp = opts.amqp_url,
        jobs = names.jobs,
        dlx = names.dlx,
        dead = names.dead,
        results = names.results,
        input = names.input_bucket,
        output = names.output_bucket,
    )
}
