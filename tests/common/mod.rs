//! Helpers shared by the integration tests: settings pointing at the repo's tiny model and ONNX
//! Runtime, fixture loading and free loopback ports; the submodules hold the services (S3 server,
//! test CA, a TLS RabbitMQ node, an HTTPS proxy, the worker-process harness), the HTTP client and the
//! PromQL scanner.

#![allow(dead_code)]

pub mod http;
pub mod promql;
pub mod rabbit_node;
pub mod s3_server;
pub mod service;
pub mod test_ca;
pub mod tls_proxy;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use pva_worker::config::Settings;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A loopback address whose port nothing listens on right now.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    free_addr().port()
}

/// Polls until a server process accepts connections on `addr`; `false` when it exits first or
/// `within` runs out.
pub fn wait_until_listening(
    child: &mut std::process::Child,
    addr: SocketAddr,
    within: std::time::Duration,
) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        let timeout = std::time::Duration::from_millis(200);
        if std::net::TcpStream::connect_timeout(&addr, timeout).is_ok() {
            return true;
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// Embedded defaults with repo-absolute paths (tests run from any directory), on the tiny model (the
/// contract fixture: random weights, with the tuning graph), one ORT thread per session so parallel
/// tests do not oversubscribe the CPU.
pub fn settings() -> Settings {
    settings_for("models/tiny")
}

/// As `settings`, on another bundled model directory (relative to the repo).
pub fn settings_for(model_dir: &str) -> Settings {
    let mut s = Settings::load_with_env(None, Vec::new()).expect("default settings");
    s.engine.model_dir = repo().join(model_dir);
    s.engine.ort_library = repo().join(&s.engine.ort_library);
    s.engine.face_model_dir = repo().join(&s.engine.face_model_dir);
    s.engine.intra_threads = 1;
    s
}

/// Named f32/i64 tensors of a safetensors file.
pub struct Tensors {
    f32s: HashMap<String, (Vec<usize>, Vec<f32>)>,
    i64s: HashMap<String, (Vec<usize>, Vec<i64>)>,
}

impl Tensors {
    /// Reads a safetensors file.
    pub fn load(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let mut f32s = HashMap::new();
        let mut i64s = HashMap::new();
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            match view.dtype() {
                safetensors::Dtype::F32 => {
                    let v = view
                        .data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect();
                    f32s.insert(name.to_string(), (shape, v));
                }
                safetensors::Dtype::I64 => {
                    let v = view
                        .data()
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                        .collect();
                    i64s.insert(name.to_string(), (shape, v));
                }
                other => panic!("{name}: unexpected dtype {other:?}"),
            }
        }
        Self { f32s, i64s }
    }

    /// An f32 tensor by name.
    pub fn f32(&self, name: &str) -> &(Vec<usize>, Vec<f32>) {
        self.f32s
            .get(name)
            .unwrap_or_else(|| panic!("fixture tensor `{name}` missing"))
    }

    /// An optional f32 tensor.
    pub fn maybe_f32(&self, name: &str) -> Option<&(Vec<usize>, Vec<f32>)> {
        self.f32s.get(name)
    }

    /// An i64 tensor by name.
    pub fn i64(&self, name: &str) -> &(Vec<usize>, Vec<i64>) {
        self.i64s
            .get(name)
            .unwrap_or_else(|| panic!("fixture tensor `{name}` missing"))
    }
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length differs");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs `pva-worker edit`'s job flow (the library's async command) to its report.
pub fn run_edit(
    settings: &Settings,
    options: &pva_worker::commands::edit::EditOptions,
) -> pva_worker::commands::edit::EditReport {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(pva_worker::commands::edit::run(settings, options))
        .expect("edit runs")
}
