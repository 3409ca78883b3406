//! The Python side of `pva-bench edit`: [`PythonSide`] drives `python -m pva.bench.edit --serve`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, ensure, Context};

use super::report::RunTimes;

/// `python -m pva.bench.edit --serve`: the Python reference loaded once, one edit per request line.
pub(crate) struct PythonSide {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl PythonSide {
    /// Starts the script and waits for its `ready` line (the sessions are loaded then).
    pub(crate) fn start(python: &Path, spec: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(python)
            .args(["-m", "pva.bench.edit"])
            .arg("--spec")
            .arg(spec)
            .arg("--serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", python.display()))?;
        let stdin = child.stdin.take();
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut side = Self {
            child,
            stdin,
            stdout,
        };
        let ready = side.read_line()?;
        ensure!(
            ready["ready"].as_bool() == Some(true),
            "pva.bench.edit did not say ready: {ready}"
        );
        Ok(side)
    }

    fn read_line(&mut self) -> anyhow::Result<serde_json::Value> {
        use std::io::BufRead;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!("pva.bench.edit ended ({status}); its error is above");
        }
        serde_json::from_str(&line).with_context(|| format!("pva.bench.edit said {line:?}"))
    }

    /// One Python edit of `case` (`{steps, guidance, scheduler, eta, seed}`).
    pub(crate) fn run(&mut self, case: &serde_json::Value) -> anyhow::Result<RunTimes> {
        let stdin = self
            .stdin
            .as_mut()
            .context("pva.bench.edit's stdin is closed")?;
        writeln!(stdin, "{case}")?;
        stdin.flush()?;
        let run = self.read_line()?;
        let seconds = |v: &serde_json::Value| -> BTreeMap<String, f64> {
            v.as_object()
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(RunTimes {
            stages: seconds(&run["stages"]),
            total: run["total"]
                .as_f64()
                .with_context(|| format!("pva.bench.edit: no `total` in {run}"))?,
            ort: seconds(&run["ort"]),
            ort_by_stage: seconds(&run["ort_by_stage"]),
        })
    }

    /// Closes its input and waits for it to exit.
    pub(crate) fn finish(mut self) -> anyhow::Result<()> {
        self.stdin.take();
        let status = self.child.wait()?;
        ensure!(status.success(), "pva.bench.edit exited with {status}");
        Ok(())
    }
}

impl Drop for PythonSide {
    fn drop(&mut self) {
        self.stdin.take();
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
