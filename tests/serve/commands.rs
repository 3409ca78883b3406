//! The other commands against a serving worker: `enqueue` uploads, publishes, waits and downloads;
//! `edit` runs the same job flow as `serve` and gives the same results.

use std::collections::BTreeMap;
use std::time::Duration;

use pva_worker::job::{JobResult, JobStatus};

use crate::common::service::{Env, SERIAL};
use crate::common::{free_port, repo};
use crate::output_png;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_uploads_publishes_waits_and_downloads() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("enqueue").await;
    env.start_worker().await;
    let config = env.config_file("enqueue", free_port());
    let job = env.dir.path().join("job.json");
    std::fs::write(
        &job,
        env.job("job-enqueued", |v| v["num_outputs"] = 2.into()),
    )
    .unwrap();
    let out = env.dir.path().join("downloads");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pva-worker"))
        .arg("--config")
        .arg(&config)
        .arg("enqueue")
        .arg(&job)
        .arg("--root")
        .arg(repo().join("examples"))
        .arg("--out")
        .arg(&out)
        .arg("--timeout")
        .arg("120")
        .arg("--traceparent")
        .arg("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("uploaded"), "{stdout}");
    for i in 0..2 {
        let path = out.join(format!("edits/job-enqueued/{i}.png"));
        assert_eq!(
            image::open(&path).unwrap().width(),
            910,
            "{}",
            path.display()
        );
    }
    // The result also went to the result exchange.
    let results = env
        .results_for(&["job-enqueued"], Duration::from_secs(10))
        .await;
    assert_eq!(results["job-enqueued"][0].status, JobStatus::Succeeded);
    // The job ran in the caller's trace (`--traceparent`).
    assert_eq!(
        results["job-enqueued"][0].trace_id.as_deref(),
        Some("0af7651916cd43dd8448eb211c80319c")
    );
    assert!(
        stdout.contains("trace id 0af7651916cd43dd8448eb211c80319c"),
        "{stdout}"
    );
}

/// A result with what differs between two runs of one job by design (worker id, timings, trace)
/// blanked.
fn comparable(result: &JobResult) -> JobResult {
    JobResult {
        worker_id: String::new(),
        timings: BTreeMap::new(),
        trace_id: None,
        ..result.clone()
    }
}

/// `edit` runs the job runner `serve` runs: the same job gives the same `result.json` (worker id and
/// timings aside), stored at the same key, and byte-identical outputs; a past deadline fails in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_and_serve_run_one_job_flow_with_the_same_results() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("one-flow").await;
    env.signing = false;
    env.start_worker().await;
    let late = |v: &mut serde_json::Value| v["deadline"] = "2020-01-01T00:00:00Z".into();
    let jobs = [
        ("one-flow", env.job("one-flow", |_| {})),
        ("one-flow-late", env.job("one-flow-late", late)),
    ];
    for (_, body) in &jobs {
        env.publish(body).await;
    }
    let served = env
        .results_for(&["one-flow", "one-flow-late"], Duration::from_secs(180))
        .await;

    let out = env.dir.path().join("edit-out");
    let mut settings = env.settings.clone();
    settings.engine.intra_threads = 1;
    for (id, body) in &jobs {
        let job_file = env.dir.path().join(format!("{id}.json"));
        std::fs::write(&job_file, body).unwrap();
        let options = pva_worker::commands::edit::EditOptions {
            job: job_file,
            root: Some(repo().join("examples")),
            out: out.clone(),
            contact_sheet: None,
        };
        let edited = pva_worker::commands::edit::run(&settings, &options)
            .await
            .unwrap();
        let by_serve = &served[*id][0];
        assert_eq!(comparable(&edited.result), comparable(by_serve), "{id}");
        if *id == "one-flow-late" {
            assert_eq!(edited.result.status, JobStatus::Failed);
            let code = &edited.result.error.as_ref().unwrap().code;
            assert_eq!(code, "deadline_exceeded");
            continue;
        }
        assert_eq!(
            edited.result.status,
            JobStatus::Succeeded,
            "{:?}",
            edited.result
        );
        let key = "edits/one-flow/result.json";
        assert_eq!(edited.result_path, out.join(key));
        let stored = super::stored_result(&env, "one-flow").await;
        let local: JobResult =
            serde_json::from_slice(&std::fs::read(&edited.result_path).unwrap()).unwrap();
        assert_eq!(comparable(&local), comparable(&stored));
        assert_eq!(
            std::fs::read(out.join("edits/one-flow/0.png")).unwrap(),
            output_png(&env, "one-flow").await,
            "the outputs are byte-identical"
        );
    }
}
