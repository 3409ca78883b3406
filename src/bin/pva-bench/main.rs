//! `pva-bench`: the benchmarks of the edit and of the queue service (benchmarks, not tests; timings
//! are printed, never asserted).
//!
//! - `pva-bench edit`: the library's [`Pipeline::edit`] in process against the Python reference
//!   (`python -m pva.bench.edit`, `pva.reference.edit`'s pipeline on the same model directory) on the same
//!   decoded inputs, steps, guidance and number of outputs, with the same ONNX Runtime intra-op
//!   threads, in one run: per-stage medians for both, the Rust/Python ratio of the whole edit, and
//!   the share of the Rust edit spent outside the engine's graph runs (timed by [`TimedEngine`], a
//!   wrapper around [`OrtEngine`]).
//! - `pva-bench throughput --jobs N`: N jobs through RabbitMQ and an s3s-fs server with one
//!   `pva-worker serve` process, and the same N jobs through the in-process `edit` path (local files
//!   in, local files out, the model loaded once), in one run and in alternating rounds: jobs per
//!   second for both and the ratio. The bench starts and stops the S3 server and the worker itself,
//!   with queue, exchange and bucket names of its own.
//!
//! `scripts/bench.sh` builds the release binaries and runs both; docs/benchmarks.md explains them.
//!
//! - `pva-bench faces`: the face graphs on the public-domain photos of
//!   `models/faces/checked_boxes.json`: detection and landmark times, boxes against the checked ones,
//!   eye-landmark error on rotated copies, and each photo with its face box and region polygons drawn.
//!
//! Modules: [`cli`] (the command line), [`edit`] (`pva-bench edit`), [`throughput`]
//! (`pva-bench throughput`), [`faces`] (`pva-bench faces`) and [`jobs`] (the job-file helpers the
//! first two use).
//!
//! [`Pipeline::edit`]: pva_worker::pipeline::inpaint::Pipeline::edit
//! [`TimedEngine`]: edit::timed::TimedEngine
//! [`OrtEngine`]: pva_worker::engine::OrtEngine

mod cli;
mod edit;
mod faces;
mod jobs;
mod throughput;

use std::process::ExitCode;

use clap::Parser;
use pva_worker::config::Settings;

use cli::{Bench, Cli};
use edit::{bench_edit, EditBench};
use faces::{bench_faces, FacesBench};
use throughput::{bench_throughput, ThroughputBench};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = Settings::load(cli.config.as_deref())
        .map_err(anyhow::Error::from)
        .and_then(|settings| match cli.command {
            Bench::Edit {
                job,
                steps,
                guidance,
                reps,
                warmup,
                threads,
                python,
                work,
            } => bench_edit(
                settings,
                &EditBench {
                    job,
                    steps,
                    guidance,
                    reps,
                    warmup,
                    threads,
                    python,
                    work,
                },
            ),
            Bench::Throughput {
                jobs,
                rounds,
                job,
                steps,
                threads,
                worker,
                s3s_fs,
                amqp_url,
                work,
            } => bench_throughput(
                settings,
                &ThroughputBench {
                    jobs,
                    rounds,
                    job,
                    steps,
                    threads,
                    worker,
                    s3s_fs,
                    amqp_url,
                    work,
                },
            ),
            Bench::Faces {
                checked,
                reps,
                threads,
                out,
            } => bench_faces(
                settings,
                &FacesBench {
                    checked,
                    reps,
                    threads,
                    out,
                },
            ),
        });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pva-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
