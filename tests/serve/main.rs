//! `pva-worker serve` against real services: RabbitMQ on 127.0.0.1:5672 (guest/guest) and an
//! s3s-fs server on loopback. Each test uses its own queue, exchange and bucket names; the tests run
//! one at a time because one of them drops every broker connection. The harness is
//! `common::service`; the tests are grouped by topic in the modules below.

#[path = "../common/mod.rs"]
mod common;

mod clients;
mod commands;
mod events;
mod failures;
mod health;
mod idempotency;
mod jobs;
mod lifecycle;
mod presets;
mod results;
mod tls;
mod tracing;
mod tuning;

use pva_worker::job::JobResult;
use pva_worker::storage::ObjectStore;

use common::service::Env;

/// An object of `job` under `edits/{job}/`, as stored.
async fn output(env: &Env, job: &str, name: &str) -> Vec<u8> {
    let bucket = &env.settings.s3.output_buckets[0];
    env.store
        .get(bucket, &format!("edits/{job}/{name}"), 1 << 26)
        .await
        .unwrap_or_else(|e| panic!("edits/{job}/{name}: {e}"))
}

/// The first output image of `job`, as stored.
async fn output_png(env: &Env, job: &str) -> Vec<u8> {
    output(env, job, "0.png").await
}

/// The `result.json` of `job`, as stored.
async fn stored_result(env: &Env, job: &str) -> JobResult {
    serde_json::from_slice(&output(env, job, "result.json").await).unwrap()
}
