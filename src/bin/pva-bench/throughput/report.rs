//! The throughput bench's report: per-stage sums over results ([`StageSums`]) and the printed
//! summary of the rounds ([`print_throughput`]).

use std::collections::BTreeMap;

use super::{Round, ThroughputBench};
use crate::jobs::job_json;

/// Per-stage seconds summed over results, and the number of results.
#[derive(Debug, Default)]
pub(crate) struct StageSums {
    sums: BTreeMap<String, f64>,
    pub(crate) jobs: usize,
}

impl StageSums {
    pub(crate) fn add(&mut self, timings: &BTreeMap<String, f64>) {
        for (stage, secs) in timings {
            *self.sums.entry(stage.clone()).or_default() += secs;
        }
        self.jobs += 1;
    }

    fn merge(&mut self, other: &StageSums) {
        for (stage, secs) in &other.sums {
            *self.sums.entry(stage.clone()).or_default() += secs;
        }
        self.jobs += other.jobs;
    }

    fn mean_ms(&self, stage: &str) -> f64 {
        self.sums.get(stage).copied().unwrap_or(0.0) * 1e3 / self.jobs.max(1) as f64
    }
}

pub(crate) fn print_throughput(opts: &ThroughputBench, rounds: &[Round]) -> anyhow::Result<()> {
    let job = job_json(&opts.job, |_| {})?;
    println!(
        "pva-bench throughput: {} round(s) of {} jobs per path ({} steps, guidance {}, {} output(s) \
         each) after one warm-up job each; ORT intra-op threads {}; worker concurrency 1",
        rounds.len(),
        opts.jobs,
        opts.steps
            .map(serde_json::Value::from)
            .unwrap_or_else(|| job["steps"].clone()),
        job["guidance"],
        job["num_outputs"],
        opts.threads
    );
    let n = opts.jobs as f64;
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "  round {i}: queue {:.3} jobs/s, in process {:.3} jobs/s, ratio {:.3}x",
            n / r.queue.0,
            n / r.local.0,
            r.local.0 / r.queue.0
        );
    }
    let mut queue = StageSums::default();
    let mut local = StageSums::default();
    let (mut queue_secs, mut local_secs) = (0.0, 0.0);
    for r in rounds {
        queue.merge(&r.queue.1);
        local.merge(&r.local.1);
        queue_secs += r.queue.0;
        local_secs += r.local.0;
    }
    let total = n * rounds.len() as f64;
    println!(
        "  {:<34} {:>9} {:>9}",
        "mean per job (ms)", "queue", "in-proc"
    );
    let stages: std::collections::BTreeSet<&String> =
        queue.sums.keys().chain(local.sums.keys()).collect();
    for stage in stages {
        println!(
            "  {:<34} {:>9.1} {:>9.1}",
            stage,
            queue.mean_ms(stage),
            local.mean_ms(stage)
        );
    }
    println!(
        "  {:<34} {:>9.1} {:>9.1}",
        "wall time per job",
        queue_secs * 1e3 / total,
        local_secs * 1e3 / total
    );
    let (queue_rate, local_rate) = (total / queue_secs, total / local_secs);
    println!(
        "  RabbitMQ + S3 (pva-worker serve): {queue_secs:.2} s for {total} jobs = {queue_rate:.3} jobs/s"
    );
    println!(
        "  in process (edit path):           {local_secs:.2} s for {total} jobs = {local_rate:.3} jobs/s"
    );
    println!(
        "  queue/in-process throughput: {:.3}x (goal >= 0.9x)",
        queue_rate / local_rate
    );
    Ok(())
}
