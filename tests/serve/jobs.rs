//! Jobs done right: outputs and a signed, consent-recorded result for one job; twenty jobs shared
//! by two workers, each done exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use pva_worker::job::JobStatus;
use pva_worker::storage::ObjectStore;

use crate::common::service::{wait_metric, Env, SERIAL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_outputs_in_s3_result_published_and_acked() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("happy").await;
    env.start_worker().await;
    env.publish(&env.job("job-happy", |v| v["num_outputs"] = 2.into()))
        .await;
    let results = env
        .results_for(&["job-happy"], Duration::from_secs(60))
        .await;
    let r = &results["job-happy"][0];
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
    assert_eq!(r.outputs.len(), 2);
    assert_eq!(r.worker_id, "worker-0");
    assert_eq!(r.model_name, "pva-tiny");
    // Every stage but `tune` (these jobs do not tune).
    for stage in pva_worker::model::Stage::ALL
        .into_iter()
        .filter(|s| *s != pva_worker::model::Stage::Tune)
        .map(|s| s.as_str())
    {
        assert!(r.timings.contains_key(stage), "timing {stage} missing");
    }
    let keys = env.output_keys("job-happy").await;
    assert_eq!(
        keys,
        vec![
            "edits/job-happy/0.png",
            "edits/job-happy/1.png",
            "edits/job-happy/result.json"
        ]
    );
    let png = env
        .store
        .get(
            &env.settings.s3.output_buckets[0],
            "edits/job-happy/0.png",
            1 << 24,
        )
        .await
        .unwrap();
    assert_eq!(image::load_from_memory(&png).unwrap().width(), 910);
    let report = pva_worker::provenance::verify(&png, Some(&env.ca.anchors())).unwrap();
    assert!(report.signed && report.valid, "{report:?}");
    assert_eq!(
        report.digital_source_type.as_deref(),
        Some("http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia")
    );
    assert_eq!(report.xmp_source_type, report.digital_source_type);
    assert_eq!(
        r.consent.as_ref().unwrap().id,
        "public-domain-example",
        "consent recorded in the result"
    );
    assert!(
        env.log(0).contains("public-domain-example"),
        "consent recorded in the logs"
    );
    assert_eq!(
        env.queue_len(&env.settings.amqp.job_queue.clone()).await,
        0,
        "acked"
    );
    let m = wait_metric(env.workers[0].1, "pva_jobs_total{outcome=\"succeeded\"} 1").await;
    // One identity score per output, the job's duration, readiness and the cold start (process
    // start to first ready), and the process collector's metrics.
    let value = |name: &str| {
        crate::common::promql::sample(&m, name).unwrap_or_else(|| panic!("{name} in\n{m}"))
    };
    assert_eq!(value("pva_identity_score_count"), 2.0);
    let score = f64::from(r.outputs[0].identity_score) + f64::from(r.outputs[1].identity_score);
    assert!(
        (value("pva_identity_score_sum") - score).abs() < 1e-5,
        "{score}"
    );
    assert_eq!(
        value("pva_job_duration_seconds_count{outcome=\"succeeded\"}"),
        1.0
    );
    assert_eq!(value("pva_ready"), 1.0);
    assert!(value("pva_cold_start_seconds") > 0.0);
    assert!(value("process_resident_memory_bytes") > 1e6);
    env.assert_logs_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_jobs_two_workers_each_done_once() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("twenty").await;
    env.start_worker().await;
    env.start_worker().await;
    let ids: Vec<String> = (0..20).map(|i| format!("job-{i:02}")).collect();
    for id in &ids {
        env.publish(&env.job(id, |v| v["steps"] = 2.into())).await;
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let results = env.results_for(&refs, Duration::from_secs(240)).await;
    let mut by_worker = BTreeMap::<String, usize>::new();
    for id in &ids {
        let rs = &results[id];
        assert_eq!(rs.len(), 1, "{id} answered {} times", rs.len());
        assert_eq!(rs[0].status, JobStatus::Succeeded, "{:?}", rs[0]);
        *by_worker.entry(rs[0].worker_id.clone()).or_default() += 1;
        assert_eq!(
            env.output_keys(id).await.len(),
            2,
            "{id}: one output + result.json"
        );
    }
    assert_eq!(by_worker.len(), 2, "both workers took jobs: {by_worker:?}");
    assert_eq!(env.queue_len(&env.settings.amqp.job_queue.clone()).await, 0);
}
