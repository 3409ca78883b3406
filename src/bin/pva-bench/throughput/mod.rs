//! `pva-bench throughput`: N jobs through RabbitMQ + S3 (one `pva-worker serve`) against N in
//! process; the setup and teardown of the run ([`bench_throughput`]) and its alternating rounds.

mod children;
mod report;
mod setup;
mod sides;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context};
use pva_worker::config::Settings;
use pva_worker::job::{flow, RunnerOptions};
use pva_worker::storage::local::LocalStore;
use pva_worker::storage::s3::S3Store;
use pva_worker::storage::ObjectStore;
use rand::distr::{Alphanumeric, SampleString};

use crate::jobs::{job_json, job_root};
use children::{free_port, http_status, wait_for, Children};
use report::{print_throughput, StageSums};
use setup::{worker_config, Names};
use sides::{delete_topology, LocalSide, QueueSide};

/// Options of `pva-bench throughput`.
pub(crate) struct ThroughputBench {
    pub(crate) jobs: usize,
    pub(crate) rounds: usize,
    pub(crate) job: PathBuf,
    pub(crate) steps: Option<u32>,
    pub(crate) threads: usize,
    pub(crate) worker: PathBuf,
    pub(crate) s3s_fs: PathBuf,
    pub(crate) amqp_url: String,
    pub(crate) work: PathBuf,
}

pub(crate) fn bench_throughput(
    mut settings: Settings,
    opts: &ThroughputBench,
) -> anyhow::Result<()> {
    ensure!(
        opts.jobs > 0 && opts.rounds > 0,
        "--jobs and --rounds must be at least 1"
    );
    for (what, path) in [("worker", &opts.worker), ("s3s-fs", &opts.s3s_fs)] {
        ensure!(
            path.is_file(),
            "the {what} binary is missing at {} (scripts/bench.sh builds and installs both)",
            path.display()
        );
    }
    let absolute = |p: &Path| std::fs::canonicalize(p).with_context(|| p.display().to_string());
    settings.engine.model_dir = absolute(&settings.engine.model_dir)?;
    settings.engine.ort_library = absolute(&settings.engine.ort_library)?;
    settings.engine.face_model_dir = absolute(&settings.engine.face_model_dir)?;
    let work = opts.work.join(std::process::id().to_string());
    std::fs::create_dir_all(&work)?;
    let work = absolute(&work)?;
    let outcome = run_throughput(&settings, opts, &work);
    let _ = std::fs::remove_dir_all(&work);
    outcome
}

/// The job bodies: the job file with unique ids, the bench's output prefix and optional steps.
fn job_bodies(
    opts: &ThroughputBench,
    tag: &str,
    count: usize,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    (0..count)
        .map(|i| {
            let id = format!("bench-{tag}-{i:03}");
            let value = job_json(&opts.job, |v| {
                v["job_id"] = id.clone().into();
                v["output"]["prefix"] = "bench".into();
                if let Some(steps) = opts.steps {
                    v["steps"] = steps.into();
                }
            })?;
            Ok((id, serde_json::to_vec(&value)?))
        })
        .collect()
}

fn run_throughput(settings: &Settings, opts: &ThroughputBench, work: &Path) -> anyhow::Result<()> {
    let names = Names::new();
    let mut children = Children::default();

    // The S3 server, with credentials of its own.
    let s3_port = free_port()?;
    let access_key = Alphanumeric.sample_string(&mut rand::rng(), 20);
    let secret_key = Alphanumeric.sample_string(&mut rand::rng(), 40);
    let s3_data = work.join("s3");
    std::fs::create_dir_all(&s3_data)?;
    let s3_log = work.join("s3s-fs.log");
    let child = Command::new(&opts.s3s_fs)
        .args(["--host", "127.0.0.1", "--port", &s3_port.to_string()])
        .args(["--access-key", &access_key, "--secret-key", &secret_key])
        .arg(&s3_data)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&s3_log)?)
        .stderr(std::fs::File::create(work.join("s3s-fs.err"))?)
        .spawn()
        .with_context(|| format!("starting {}", opts.s3s_fs.display()))?;
    children.list.push(("s3s-fs", child));
    wait_for(Duration::from_secs(10), "s3s-fs", &s3_log, || {
        TcpStream::connect(("127.0.0.1", s3_port)).is_ok()
    })?;
    let endpoint = format!("http://127.0.0.1:{s3_port}");

    let metrics_port = free_port()?;
    let config_path = work.join("worker.toml");
    std::fs::write(
        &config_path,
        worker_config(
            settings,
            opts,
            &names,
            &endpoint,
            &access_key,
            &secret_key,
            metrics_port,
        ),
    )?;
    // The very settings the worker loads (the embedded defaults, this file, PVA__* variables).
    let bench_settings = Settings::load(Some(&config_path))?;
    let root = job_root(&opts.job);
    let input_keys: Vec<String> = {
        let (_, body) = &job_bodies(opts, "keys", 1)?[0];
        let rules = RunnerOptions::from(&bench_settings);
        let job = flow::parse(body, &rules.limits, rules.rules, &rules.presets)
            .map_err(|f| anyhow::anyhow!("the job: {f}"))?;
        flow::input_keys(&job).into_iter().map(|(_, k)| k).collect()
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let store = runtime.block_on(S3Store::new(&bench_settings.s3))?;
    runtime.block_on(async {
        store
            .ensure_bucket(&names.input_bucket)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        store
            .ensure_bucket(&names.output_bucket)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let local = LocalStore::new(&root);
        for key in &input_keys {
            let bytes = local
                .get(key, u64::MAX)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            store
                .put(&names.input_bucket, key, bytes, "application/octet-stream")
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        anyhow::Ok(())
    })?;

    // The worker.
    let err_log = work.join("worker.err");
    let child = Command::new(&opts.worker)
        .arg("--config")
        .arg(&config_path)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(work.join("worker.log"))?)
        .stderr(std::fs::File::create(&err_log)?)
        .spawn()
        .with_context(|| format!("starting {}", opts.worker.display()))?;
    children.list.push(("worker", child));
    wait_for(Duration::from_secs(120), "the worker", &err_log, || {
        http_status(metrics_port, "/readyz") == Some(200)
    })?;

    let measured = runtime.block_on(QueueSide::connect(&bench_settings, &names));
    let outcome = measured.and_then(|mut queue| {
        let mut local = LocalSide::load(&runtime, &bench_settings, &root, work)?;
        let rounds = measure_rounds(opts, &runtime, &mut queue, &mut local);
        runtime.block_on(queue.close());
        rounds
    });
    children.stop("worker", Duration::from_secs(30));
    children.stop("s3s-fs", Duration::from_secs(5));
    runtime.block_on(delete_topology(&bench_settings, &names));
    let rounds = outcome.with_context(|| {
        format!(
            "the throughput run failed; worker log:\n{}",
            std::fs::read_to_string(&err_log).unwrap_or_default()
        )
    })?;
    print_throughput(opts, &rounds)
}

/// Seconds and per-stage sums of one round of N jobs on each path.
pub(crate) struct Round {
    pub(crate) queue: (f64, StageSums),
    pub(crate) local: (f64, StageSums),
}

/// One warm-up job on each path, then `rounds` rounds of N jobs on each; which path goes first
/// alternates, so that both see the same drift in the machine's load.
fn measure_rounds(
    opts: &ThroughputBench,
    runtime: &tokio::runtime::Runtime,
    queue: &mut QueueSide,
    local: &mut LocalSide,
) -> anyhow::Result<Vec<Round>> {
    let warm = job_bodies(opts, "warm", 1)?;
    runtime.block_on(queue.run(&warm))?;
    local.run(runtime, &warm)?;
    let mut rounds = Vec::new();
    for round in 0..opts.rounds {
        let queue_jobs = job_bodies(opts, &format!("q{round}"), opts.jobs)?;
        let local_jobs = job_bodies(opts, &format!("l{round}"), opts.jobs)?;
        let (q, l) = if round % 2 == 0 {
            let q = runtime.block_on(queue.run(&queue_jobs))?;
            (q, local.run(runtime, &local_jobs)?)
        } else {
            let l = local.run(runtime, &local_jobs)?;
            (runtime.block_on(queue.run(&queue_jobs))?, l)
        };
        rounds.push(Round { queue: q, local: l });
    }
    Ok(rounds)
}
