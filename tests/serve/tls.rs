//! TLS to the broker and the store, for real: a throwaway CA issues a server and a client
//! certificate; a second RabbitMQ node listens on TLS only and requires the client certificate
//! (mutual TLS); s3s-fs sits behind an HTTPS proxy. Clients with the wrong CA, or without the
//! client certificate, are refused with an error naming the endpoint; a job then runs through both
//! with the worker's `amqps://` URL, CA bundles and client certificate; a worker process with the
//! wrong CA logs the refusal with the broker's endpoint.

use std::time::{Duration, Instant};

use pva_worker::config::{Secret, Settings};
use pva_worker::job::JobStatus;
use pva_worker::storage::s3::S3Store;
use pva_worker::storage::{ObjectStore, StorageError};

use crate::common::rabbit_node::RabbitNode;
use crate::common::s3_server::S3Server;
use crate::common::service::{Env, SERIAL};
use crate::common::test_ca::{KeyType, TestCa, TlsRole};
use crate::common::tls_proxy::TlsProxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_over_amqps_with_a_client_certificate_and_https_s3_and_a_wrong_ca_is_refused() {
    let _serial = SERIAL.lock().await;
    let ca = TestCa::new(KeyType::P256);
    let other = TestCa::new(KeyType::P256);
    let (server_cert, server_key) = ca.issue_tls(TlsRole::Server);
    let (client_cert, client_key) = ca.issue_tls(TlsRole::Client);
    let node = RabbitNode::start_tls(&ca.ca_cert, &server_cert, &server_key);
    eprintln!(
        "the TLS RabbitMQ node accepted connections after {:.1} s",
        node.started_in.as_secs_f64()
    );
    let s3 = S3Server::start();
    let proxy = TlsProxy::start(s3.addr(), &server_cert, &server_key);
    let tls = |s: &mut Settings| {
        s.amqp.url = Secret::new(node.url());
        s.amqp.tls_ca_file = ca.ca_cert.clone();
        s.amqp.tls_cert_file = client_cert.clone();
        s.amqp.tls_key_file = client_key.clone();
        s.s3.endpoint = proxy.endpoint();
        s.s3.tls_ca_file = ca.ca_cert.clone();
    };
    let broker = format!("localhost:{}", node.port());
    let store = proxy.addr().to_string();

    // The wrong CA, for the broker and for the store: refused, naming the endpoint, no password.
    let mut wrong = crate::common::settings();
    wrong.s3 = s3.settings();
    tls(&mut wrong);
    wrong.amqp.tls_ca_file = other.ca_cert.clone();
    wrong.s3.tls_ca_file = other.ca_cert.clone();
    let refused = Instant::now();
    let err = pva_worker::queue::connect(&wrong.amqp, "wrong CA")
        .await
        .err()
        .expect("a broker certificate from an unknown CA is refused")
        .to_string();
    assert!(err.contains(&broker), "{err}");
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert!(!err.contains("guest"), "{err}");
    let err = S3Store::new(&wrong.s3)
        .await
        .unwrap()
        .exists("any-bucket", "any/key")
        .await
        .expect_err("a store certificate from an unknown CA is refused");
    match &err {
        StorageError::Io {
            message, transient, ..
        } => {
            assert!(message.contains(&store), "{message}");
            assert!(message.contains("invalid peer certificate"), "{message}");
            assert!(message.contains("s3.tls_ca_file"), "{message}");
            assert!(!transient, "a wrong CA is not retried: {err:?}");
        }
        other => panic!("{other:?}"),
    }
    // The right CA without the client certificate: the broker refuses the connection.
    let mut anonymous = crate::common::settings();
    tls(&mut anonymous);
    anonymous.amqp.tls_cert_file = Default::default();
    anonymous.amqp.tls_key_file = Default::default();
    let err = pva_worker::queue::connect(&anonymous.amqp, "no client certificate")
        .await
        .err()
        .expect("a client without a certificate is refused")
        .to_string();
    assert!(err.contains(&broker), "{err}");
    eprintln!("three refusals in {:.1} s", refused.elapsed().as_secs_f64());

    // A job through both, from a worker process configured with the files.
    let mut env = Env::with("tls", s3, tls).await;
    let before = proxy.sessions();
    env.start_worker().await;
    env.publish(&env.job("job-tls", |_| {})).await;
    let results = env.results_for(&["job-tls"], Duration::from_secs(60)).await;
    let r = &results["job-tls"][0];
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
    assert!(
        proxy.sessions() > before,
        "the worker did not reach the store through the HTTPS proxy"
    );
    assert_eq!(
        env.output_keys("job-tls").await,
        ["edits/job-tls/0.png", "edits/job-tls/result.json"]
    );
    env.assert_logs_clean();

    // A worker given the wrong CA for the broker stays unready and says why, naming the endpoint.
    let right = std::mem::replace(&mut env.settings.amqp.tls_ca_file, other.ca_cert.clone());
    let config = env.config_file("worker-wrong-ca", crate::common::free_port());
    env.settings.amqp.tls_ca_file = right;
    let log_path = env.dir.path().join("worker-wrong-ca.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_pva-worker"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let line = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("cannot reach the broker")) {
            break line.to_string();
        }
        if Instant::now() > deadline || matches!(worker.try_wait(), Ok(Some(_))) {
            let _ = worker.kill();
            panic!("no broker error in the worker's log:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(line.contains(&broker), "{line}");
    assert!(line.contains("invalid peer certificate"), "{line}");
    assert!(!line.contains("guest:guest"), "{line}");
    drop(env);
    drop(node);
}
