//! The two paths of the throughput bench: the broker side ([`QueueSide`], [`delete_topology`]) and
//! the in-process `edit` path ([`LocalSide`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pva_worker::commands::edit::local_runner;
use pva_worker::config::Settings;
use pva_worker::job::{JobResult, JobStatus, Runner};
use pva_worker::queue::{JobClient, Results, ResultsQueue};
use pva_worker::service::InferencePool;
use pva_worker::storage::local::LocalStore;

use super::report::StageSums;
use super::setup::Names;

/// The bench's side of the broker: a client publishing jobs and a queue of every result.
pub(crate) struct QueueSide {
    client: JobClient,
    results: Results,
    queue: String,
}

impl QueueSide {
    /// Connects, declares the worker's topology (idempotent) and binds a queue to the results.
    pub(crate) async fn connect(settings: &Settings, names: &Names) -> anyhow::Result<Self> {
        let client =
            JobClient::connect(&settings.amqp, settings.worker.delivery_limit, "pva-bench")
                .await
                .context("connecting to RabbitMQ")?;
        let results = client
            .results(ResultsQueue::Bound {
                queue: &names.observed,
                exchange: &names.results,
                // Final results only (lifecycle events share the exchange).
                routing_key: "result",
            })
            .await?;
        Ok(Self {
            client,
            results,
            queue: names.jobs.clone(),
        })
    }

    /// Publishes every job, then waits for every result. Returns the seconds from the first
    /// publish to the last result, and the results' timings.
    pub(crate) async fn run(
        &mut self,
        bodies: &[(String, Vec<u8>)],
    ) -> anyhow::Result<(f64, StageSums)> {
        let t = Instant::now();
        for (_, body) in bodies {
            self.client
                .publish_job(&self.queue, body, None, None, &[])
                .await?;
        }
        let mut sums = StageSums::default();
        while sums.jobs < bodies.len() {
            let body = tokio::time::timeout(Duration::from_secs(600), self.results.next())
                .await
                .context("no result within 10 minutes")?
                .context("the result consumer ended")??;
            let result: JobResult = serde_json::from_slice(&body)?;
            if result.status != JobStatus::Succeeded {
                bail!("job {} failed: {:?}", result.job_id, result.error);
            }
            sums.add(&result.timings);
        }
        Ok((t.elapsed().as_secs_f64(), sums))
    }

    pub(crate) async fn close(self) {
        self.client.close().await;
    }
}

/// Deletes this run's queues and exchanges (best effort: the bench's numbers are already taken).
pub(crate) async fn delete_topology(settings: &Settings, names: &Names) {
    let Ok(client) =
        JobClient::connect(&settings.amqp, settings.worker.delivery_limit, "pva-bench").await
    else {
        return;
    };
    client
        .delete(
            &[&names.jobs, &names.dead, &names.observed],
            &[&names.dlx, &names.results],
        )
        .await;
    client.close().await;
}

/// The in-process `edit` path: `pva-worker edit`'s job runner (local files, the same provenance
/// marking, outputs and `result.json` written) with the model loaded once.
pub(crate) struct LocalSide {
    runner: Runner<LocalStore, InferencePool>,
    jobs_dir: PathBuf,
}

impl LocalSide {
    pub(crate) fn load(
        runtime: &tokio::runtime::Runtime,
        settings: &Settings,
        root: &Path,
        work: &Path,
    ) -> anyhow::Result<Self> {
        let jobs_dir = work.join("local-jobs");
        std::fs::create_dir_all(&jobs_dir)?;
        // A stored result would be answered without running the job: start from an empty store.
        let out = work.join("local-out");
        let _ = std::fs::remove_dir_all(&out);
        let (runner, _) = runtime.block_on(local_runner(settings, root, &out))?;
        Ok(Self { runner, jobs_dir })
    }

    /// Writes the job files, then runs them one after the other. Returns the seconds for all of
    /// them (from reading the first job file) and their timings.
    pub(crate) fn run(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        bodies: &[(String, Vec<u8>)],
    ) -> anyhow::Result<(f64, StageSums)> {
        for (id, body) in bodies {
            std::fs::write(self.jobs_dir.join(format!("{id}.json")), body)?;
        }
        let mut sums = StageSums::default();
        let t = Instant::now();
        for (id, _) in bodies {
            let bytes = std::fs::read(self.jobs_dir.join(format!("{id}.json")))?;
            let done = runtime
                .block_on(self.runner.run(&bytes, None))
                .map_err(|f| anyhow::anyhow!("job {id}: {f}"))?;
            sums.add(&done.result.timings);
        }
        Ok((t.elapsed().as_secs_f64(), sums))
    }
}
