//! Job-file helpers both benchmarks use: reading a job file as JSON and the directory its keys
//! are relative to.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Reads a job file and returns it as JSON with `patch` applied.
pub(crate) fn job_json(
    path: &Path,
    patch: impl FnOnce(&mut serde_json::Value),
) -> anyhow::Result<serde_json::Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut value: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    patch(&mut value);
    Ok(value)
}

/// The directory a job's object keys are relative to (as `pva-worker edit` resolves them).
pub(crate) fn job_root(job: &Path) -> PathBuf {
    job.parent().map(Path::to_path_buf).unwrap_or_default()
}
