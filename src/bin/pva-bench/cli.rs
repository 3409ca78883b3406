//! The command line: the global options ([`Cli`]) and the two benchmarks' options ([`Bench`]).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "pva-bench",
    about = "Benchmarks of the PVA edit and the queue worker"
)]
pub(crate) struct Cli {
    /// Settings file layered over the embedded defaults (model directory, ONNX Runtime library).
    #[arg(long, global = true, env = "PVA_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Bench,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Bench {
    /// The Rust edit against the Python reference on the same graphs, stage by stage.
    Edit {
        /// The job whose photos, face boxes, mask and prompt are used.
        #[arg(long, default_value = "examples/job.json")]
        job: PathBuf,
        /// Denoising steps; one case per value (and per guidance).
        #[arg(long, value_delimiter = ',', default_values_t = [25u32, 50])]
        steps: Vec<u32>,
        /// Guidance scales; one case per value (1 = one conditional row, > 1 = batched CFG).
        #[arg(long, value_delimiter = ',', default_values_t = [1.0f32, 3.0])]
        guidance: Vec<f32>,
        /// Timed repetitions per case and side.
        #[arg(long, default_value_t = 9)]
        reps: usize,
        /// Untimed repetitions before them.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// ONNX Runtime intra-op threads on both sides (and torch's threads on the Python side).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// The Python interpreter with onnxruntime, torch and diffusers.
        #[arg(long, default_value = ".venv/bin/python")]
        python: PathBuf,
        /// Where the decoded inputs and both sides' raw results are written.
        #[arg(long, default_value = "target/bench/edit")]
        work: PathBuf,
    },
    /// N jobs through RabbitMQ + S3 (one `pva-worker serve`) against N in process.
    Throughput {
        /// Jobs per side.
        #[arg(long, default_value_t = 8)]
        jobs: usize,
        /// The job to send N times (unique job ids are set).
        #[arg(long, default_value = "examples/job.json")]
        job: PathBuf,
        /// Rounds; each runs N jobs on both paths, alternating which goes first.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Override the job's denoising steps.
        #[arg(long)]
        steps: Option<u32>,
        /// ONNX Runtime intra-op threads (worker and in process alike).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// The worker binary (a release build).
        #[arg(long, default_value = "target/release/pva-worker")]
        worker: PathBuf,
        /// The s3s-fs binary (scripts/setup-s3.sh installs it).
        #[arg(long, env = "S3S_FS", default_value = ".tools/bin/s3s-fs")]
        s3s_fs: PathBuf,
        /// RabbitMQ.
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        amqp_url: String,
        /// Scratch directory (S3 data, configs, logs, local outputs); removed at the end.
        #[arg(long, default_value = "target/bench/throughput")]
        work: PathBuf,
    },
    /// The face graphs on the checked public-domain photos: times, boxes, rotated eyes, drawings.
    Faces {
        /// The checked boxes; photo keys are relative to the repository (`examples/`) or its parent.
        #[arg(long, default_value = "models/faces/checked_boxes.json")]
        checked: PathBuf,
        /// Timed repetitions per photo.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// ONNX Runtime intra-op threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Where the photos with the face box and the region polygons drawn are written.
        #[arg(long, default_value = "target/bench/faces")]
        out: PathBuf,
    },
}
