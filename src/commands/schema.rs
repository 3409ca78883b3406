//! `pva-worker schema`: writes the JSON Schemas of the job, result and event messages (generated
//! from the wire types, with this worker's limits, rules and presets) into a directory.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::Settings;
use crate::job::schema;

/// Writes every schema into `out` (created if missing); returns the files written.
pub fn write_schemas(settings: &Settings, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let options = crate::job::RunnerOptions::from(settings);
    let mut written = Vec::new();
    for file in schema::schemas(&options.limits, options.rules, &options.presets) {
        let path = out.join(file.name);
        std::fs::write(&path, file.text())
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
