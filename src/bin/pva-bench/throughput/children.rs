//! The processes the throughput bench starts ([`Children`]) and the waits for them: free ports,
//! HTTP probes, readiness polling.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::bail;

/// Child processes the bench started, stopped by their PID when dropped (also on errors).
#[derive(Default)]
pub(crate) struct Children {
    pub(crate) list: Vec<(&'static str, Child)>,
}

impl Children {
    /// Asks `name` to stop (SIGTERM), waits up to `grace`, then kills it.
    pub(crate) fn stop(&mut self, name: &str, grace: Duration) {
        let Some(pos) = self.list.iter().position(|(n, _)| *n == name) else {
            return;
        };
        let (_, mut child) = self.list.remove(pos);
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.list {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Status code of `GET path` on 127.0.0.1:`port`, or `None` when nothing answers.
pub(crate) fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `ready` every 50 ms until it holds, or fails after `within` with `what` and `log`.
pub(crate) fn wait_for(
    within: Duration,
    what: &str,
    log: &Path,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !ready() {
        if Instant::now() > deadline {
            bail!(
                "{what} not ready after {within:?}; log {}:\n{}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
