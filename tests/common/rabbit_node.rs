//! A second, throwaway RabbitMQ node with only a TLS listener (mutual TLS required), next to the
//! shared one on 5672: its own node name, free ports, config, database and logs in a temporary
//! directory, stopped and removed when dropped. It runs the installed server's own scripts as the
//! current user with `HOME` in that directory (its own Erlang cookie), so nothing of the shared node
//! is touched. A node that cannot start fails the test with its log: never a skip.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where the server's own scripts are (not Debian's `su rabbitmq` wrappers in /usr/sbin):
/// `$RABBITMQ_SCRIPTS_DIR`, else Debian's rabbitmq-server package's directory.
fn script(name: &str) -> std::path::PathBuf {
    std::env::var_os("RABBITMQ_SCRIPTS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/lib/rabbitmq/bin".into())
        .join(name)
}

/// How long the node may take to accept connections (about 7 s on a 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(90);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running node.
pub struct RabbitNode {
    child: Option<Child>,
    name: String,
    port: u16,
    dir: tempfile::TempDir,
    /// How long it took to accept connections.
    pub started_in: Duration,
}

impl RabbitNode {
    /// Starts a node whose only listener is TLS on a free port with `server_cert`/`server_key`,
    /// requiring a client certificate issued by `ca_cert` (`verify_peer`,
    /// `fail_if_no_peer_cert`), and waits until it accepts connections. Its user is guest/guest.
    pub fn start_tls(ca_cert: &Path, server_cert: &Path, server_key: &Path) -> Self {
        let server = script("rabbitmq-server");
        assert!(
            server.is_file(),
            "{} is missing: the TLS tests need the rabbitmq-server package (or set RABBITMQ_SCRIPTS_DIR)",
            server.display()
        );
        let dir = tempfile::tempdir().expect("node directory");
        let d = dir.path();
        for (from, to) in [
            (ca_cert, "ca.pem"),
            (server_cert, "server.pem"),
            (server_key, "server.key"),
        ] {
            std::fs::copy(from, d.join(to)).expect("copy the node's TLS files");
        }
        std::fs::write(d.join("enabled_plugins"), "[].\n").unwrap();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("pva-tls-{}-{n}@localhost", std::process::id());
        let log = d.join("node.log");
        let started = Instant::now();
        // Another process may take a free port before the node binds it: try a few.
        for _ in 0..3 {
            let port = super::free_port();
            let dist_port = super::free_port();
            std::fs::write(
                d.join("rabbitmq.conf"),
                format!(
                    "listeners.tcp = none\n\
                     listeners.ssl.default = {port}\n\
                     ssl_options.cacertfile = {d}/ca.pem\n\
                     ssl_options.certfile = {d}/server.pem\n\
                     ssl_options.keyfile = {d}/server.key\n\
                     ssl_options.verify = verify_peer\n\
                     ssl_options.fail_if_no_peer_cert = true\n",
                    d = d.display()
                ),
            )
            .unwrap();
            let out = std::fs::File::create(&log).expect("node log");
            let mut child = Command::new(&server)
                .envs(node_env(d, &name))
                .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
                .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
                .env("RABBITMQ_LOG_BASE", d.join("log"))
                .env("RABBITMQ_FEATURE_FLAGS_FILE", d.join("feature_flags"))
                .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
                .env("RABBITMQ_DIST_PORT", dist_port.to_string())
                .current_dir(d)
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                // Its own process group: the Erlang VM and its helpers are killed together if
                // `rabbitmqctl stop` fails.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", server.display()));
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if super::wait_until_listening(&mut child, addr, START_TIMEOUT) {
                return Self {
                    child: Some(child),
                    name,
                    port,
                    dir,
                    started_in: started.elapsed(),
                };
            }
            kill_group(&mut child);
        }
        panic!(
            "the TLS RabbitMQ node did not accept connections within {START_TIMEOUT:?}; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `amqps://guest:guest@localhost:PORT/%2f`.
    pub fn url(&self) -> String {
        format!("amqps://guest:guest@localhost:{}/%2f", self.port)
    }

    /// The TLS port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the node (`rabbitmqctl stop`, then its process group is killed); idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let stopped = Command::new("timeout")
            .arg("30")
            .arg(script("rabbitmqctl"))
            .args(["-n", &self.name, "stop"])
            .envs(node_env(self.dir.path(), &self.name))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while stopped && Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        kill_group(&mut child);
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What both the server and `rabbitmqctl` need to find the node: its name and a `HOME` holding its
/// own Erlang cookie.
fn node_env<'a>(dir: &'a Path, name: &'a str) -> [(&'static str, &'a std::ffi::OsStr); 2] {
    [
        ("HOME", dir.as_os_str()),
        ("RABBITMQ_NODENAME", std::ffi::OsStr::new(name)),
    ]
}

/// Kills the child's process group (the VM and its helpers), then reaps the child.
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}
