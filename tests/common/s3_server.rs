//! A real S3-compatible server for tests: s3s-fs on 127.0.0.1 with a free port, a temporary data
//! directory and random credentials, stopped when dropped. Install it with `scripts/setup-s3.sh`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pva_worker::config::{S3Settings, Secret, Settings};
use rand::distr::{Alphanumeric, SampleString};

/// How long the server may take to accept connections (it starts in ~20 ms).
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Ports tried when another process takes the free port between choosing it and the server binding it.
const START_TRIES: usize = 3;

/// A running s3s-fs process.
pub struct S3Server {
    child: Option<Child>,
    addr: SocketAddr,
    access_key: String,
    secret_key: String,
    data: tempfile::TempDir,
}

impl S3Server {
    /// Starts a server and waits until it accepts connections. Panics when the binary is missing
    /// or the server does not come up (a test that needs S3 never skips silently).
    pub fn start() -> Self {
        let binary = binary();
        let data = tempfile::tempdir().expect("temporary data directory");
        let access_key = Alphanumeric.sample_string(&mut rand::rng(), 20);
        let secret_key = Alphanumeric.sample_string(&mut rand::rng(), 40);
        let store = data.path().join("store");
        std::fs::create_dir(&store).expect("store directory");
        let log = data.path().join("s3s-fs.log");
        for _ in 0..START_TRIES {
            let addr = super::free_addr();
            let log_file = std::fs::File::create(&log).expect("server log");
            let mut child = Command::new(&binary)
                .arg("--host")
                .arg(addr.ip().to_string())
                .arg("--port")
                .arg(addr.port().to_string())
                .arg("--access-key")
                .arg(&access_key)
                .arg("--secret-key")
                .arg(&secret_key)
                .arg(&store)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("server log"))
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
            if super::wait_until_listening(&mut child, addr, START_TIMEOUT) {
                return Self {
                    child: Some(child),
                    addr,
                    access_key,
                    secret_key,
                    data,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "s3s-fs did not accept connections within {START_TIMEOUT:?}; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the server listens on (nothing listens there after [`S3Server::stop`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The access key id the server accepts.
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The secret key the server accepts.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The embedded default S3 settings pointed at this server: endpoint, path-style addressing,
    /// its credentials, and short timeouts so failing tests fail fast.
    pub fn settings(&self) -> S3Settings {
        let mut s = Settings::load_with_env(None, Vec::new())
            .expect("default settings")
            .s3;
        s.endpoint = self.endpoint();
        s.force_path_style = true;
        s.access_key_id = Secret::new(self.access_key.clone());
        s.secret_access_key = Secret::new(self.secret_key.clone());
        s.connect_timeout_secs = 2;
        s.operation_timeout_secs = 10;
        s.max_attempts = 2;
        s
    }

    /// Where the server keeps its objects (one sub-directory per bucket).
    pub fn data_dir(&self) -> PathBuf {
        self.data.path().join("store")
    }

    /// Kills the server now (to test a store that went away); idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `$S3S_FS`, else `<repo>/.tools/bin/s3s-fs`; panics with the fix when neither exists.
fn binary() -> PathBuf {
    let path = std::env::var_os("S3S_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::repo().join(".tools/bin/s3s-fs"));
    assert!(
        path.is_file(),
        "the S3 test server is missing at {}: run scripts/setup-s3.sh (or set S3S_FS)",
        path.display()
    );
    path
}
