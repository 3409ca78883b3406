//! The CMS clients against a serving worker: `clients/python/example.py` (pika + boto3, from the
//! project's .venv) and `clients/typescript`'s example (amqplib + @aws-sdk/client-s3, built by
//! scripts/setup-node-client.sh) each upload a job's images, publish the job, print its events in
//! order and download the outputs; a job that fails exits 3 with its code.

use std::time::Duration;

use crate::common::repo;
use crate::common::service::{Env, SERIAL};

/// A client's example program.
#[derive(Clone, Copy)]
enum Client {
    Python,
    TypeScript,
}

/// Runs a client's example on `job` against `env`'s broker and store.
async fn example(
    client: Client,
    env: &Env,
    job: &[u8],
    out: &std::path::Path,
) -> std::process::Output {
    let file = env.dir.path().join("client-job.json");
    std::fs::write(&file, job).unwrap();
    let s = &env.settings;
    let mut command = match client {
        Client::Python => {
            let mut c = tokio::process::Command::new(repo().join(".venv/bin/python"));
            c.arg(repo().join("clients/python/example.py"));
            c
        }
        Client::TypeScript => {
            let script = repo().join("clients/typescript/dist/example.js");
            assert!(
                script.is_file(),
                "{} missing: run scripts/setup-node-client.sh",
                script.display()
            );
            let mut c = tokio::process::Command::new("node");
            c.arg(script);
            c
        }
    };
    let run = command
        .arg(&file)
        .arg("--root")
        .arg(repo().join("examples"))
        .arg("--out")
        .arg(out)
        .arg("--timeout")
        .arg("120")
        .env("PVA_CLIENT_AMQP_URL", crate::common::service::AMQP)
        .env("PVA_CLIENT_S3_ENDPOINT", &s.s3.endpoint)
        .env("PVA_CLIENT_S3_REGION", &s.s3.region)
        .env("PVA_CLIENT_S3_ACCESS_KEY_ID", env.s3.access_key())
        .env("PVA_CLIENT_S3_SECRET_ACCESS_KEY", env.s3.secret_key())
        .env("PVA_CLIENT_INPUT_BUCKET", &s.s3.input_bucket)
        .env("PVA_CLIENT_OUTPUT_BUCKET", &s.s3.output_buckets[0])
        .env("PVA_CLIENT_JOB_QUEUE", &s.amqp.job_queue)
        .env("PVA_CLIENT_RESULT_EXCHANGE", &s.amqp.result_exchange)
        .env("PVA_CLIENT_RESULT_ROUTING_KEY", &s.amqp.result_routing_key)
        .output();
    tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the client finished")
        .expect("the client's runtime (scripts/setup-python.sh, scripts/setup-node-client.sh)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_uploads_publishes_follows_events_and_downloads() {
    client_end_to_end(Client::Python, "py-client").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_client_uploads_publishes_follows_events_and_downloads() {
    client_end_to_end(Client::TypeScript, "ts-client").await;
}

async fn client_end_to_end(client: Client, name: &str) {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new(name).await;
    env.start_worker().await;
    let out = env.dir.path().join("client-out");

    let id = format!("{name}-job");
    let job = env.job(&id, |v| v["steps"] = 10.into());
    let run = example(client, &env, &job, &out).await;
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}\n{}", env.log(0));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("#1 started by worker-0 (delivery 1)"),
        "{stdout}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with("progress denoise 10/10")),
        "{stdout}"
    );
    assert!(lines.iter().any(|l| l.ends_with(" succeeded")), "{stdout}");
    let image = out.join(format!("edits/{id}/0.png"));
    assert!(
        stdout.contains(&format!("downloaded {}", image.display())),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(&image).unwrap(),
        crate::output_png(&env, &id).await
    );

    // A job the worker refuses: exit status 3 with its code.
    let missing = env.job(&format!("{name}-missing"), |v| {
        v["target"]["key"] = "photos/nope.jpg".into()
    });
    // The client uploads the job's inputs first: a missing local file is the client's own error.
    let run = example(client, &env, &missing, &out).await;
    assert!(!run.status.success());
    let invalid = env.job(&format!("{name}-invalid"), |v| v["steps"] = 9999.into());
    let run = example(client, &env, &invalid, &out).await;
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("failed: invalid_job"), "{stdout}");
}
