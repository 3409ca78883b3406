//! The subcommands: `edit` (+ its contact sheet), `serve`, `enqueue`, `tune`, `forget`, `verify`,
//! `schema`.
//! `main.rs` parses the command line and runs one of these on its one tokio runtime.

pub mod contact_sheet;
pub mod edit;
pub mod enqueue;
pub mod forget;
pub mod schema;
pub mod tune;
pub mod verify;

use std::path::{Path, PathBuf};

/// The directory a local job's keys are relative to: `root` if given, else the job file's directory.
pub fn job_root(job: &Path, root: Option<&Path>) -> PathBuf {
    root.map(Path::to_path_buf)
        .unwrap_or_else(|| job.parent().map(Path::to_path_buf).unwrap_or_default())
}
