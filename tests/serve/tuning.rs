//! Identity tuning under `serve`: the `if_cached`/`auto`/`never` policies, one stored adapter per
//! identity and reference set, a corrupt adapter replaced, and `pva-worker forget`.

use std::time::Duration;

use pva_worker::job::JobStatus;
use pva_worker::storage::ObjectStore;

use crate::common::free_port;
use crate::common::promql::sample;
use crate::common::service::{wait_metric, Env, SERIAL};
use crate::output_png;

async fn adapters_of(env: &Env) -> Vec<String> {
    let bucket = &env.settings.s3.output_buckets[0];
    env.store
        .list(bucket, "adapters/example-person/")
        .await
        .unwrap()
}

fn metric_value(metrics: &str, name: &str) -> f64 {
    sample(metrics, name).unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuning_policies_cache_adapters_per_identity_and_forget_removes_them() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("tuning").await;
    env.settings.worker.concurrency = 2;
    env.start_worker().await;
    let port = env.workers[0].1;
    let bucket = env.settings.s3.output_buckets[0].clone();

    // if_cached with nothing stored: edits with the model's own adapter, tunes nothing.
    env.publish(&env.job("cached-none", |v| v["tuning"] = "if_cached".into()))
        .await;
    let r = env
        .results_for(&["cached-none"], Duration::from_secs(60))
        .await;
    assert_eq!(r["cached-none"][0].status, JobStatus::Succeeded);
    assert!(adapters_of(&env).await.is_empty());

    // Two auto jobs for the same identity at once: one tuning, one stored adapter.
    env.publish(&env.job("auto-a", |v| v["tuning"] = "auto".into()))
        .await;
    env.publish(&env.job("auto-b", |v| v["tuning"] = "auto".into()))
        .await;
    let r = env
        .results_for(&["auto-a", "auto-b"], Duration::from_secs(120))
        .await;
    for id in ["auto-a", "auto-b"] {
        assert_eq!(r[id][0].status, JobStatus::Succeeded, "{:?}", r[id][0]);
    }
    let tuned: Vec<_> = ["auto-a", "auto-b"]
        .iter()
        .filter(|id| r[**id][0].timings.contains_key("tune"))
        .collect();
    assert_eq!(tuned.len(), 1, "exactly one of the two jobs tuned");
    let stored = adapters_of(&env).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let m = wait_metric(port, "pva_tuning_duration_seconds_count 1").await;
    assert!(metric_value(&m, "pva_tuning_last_loss").is_finite());

    // The tuned adapter changes the edit: the same job untuned differs.
    let plain = env.job("plain", |v| v["tuning"] = "never".into());
    env.publish(&plain).await;
    let again = env.job("again", |v| v["tuning"] = "if_cached".into());
    env.publish(&again).await;
    let r = env
        .results_for(&["plain", "again"], Duration::from_secs(60))
        .await;
    assert!(
        !r["again"][0].timings.contains_key("tune"),
        "served from the stored adapter"
    );
    let (a, b) = (
        output_png(&env, "plain").await,
        output_png(&env, "again").await,
    );
    let (a, b) = (
        image::load_from_memory(&a).unwrap().to_rgb8(),
        image::load_from_memory(&b).unwrap().to_rgb8(),
    );
    assert_ne!(a, b, "the tuned adapter must change the edit");

    // Another reference set is another key.
    env.publish(&env.job("other-refs", |v| {
        v["tuning"] = "auto".into();
        v["identity"]["references"]
            .as_array_mut()
            .unwrap()
            .truncate(1);
    }))
    .await;
    env.results_for(&["other-refs"], Duration::from_secs(60))
        .await;
    assert_eq!(adapters_of(&env).await.len(), 2);

    // A corrupted stored adapter is ignored and replaced (by a worker without it in memory).
    let first = stored[0].clone();
    env.store
        .put(
            &bucket,
            &first,
            b"not an adapter".to_vec(),
            "application/octet-stream",
        )
        .await
        .unwrap();
    env.signal(0, "KILL");
    env.wait_exit(0, Duration::from_secs(10));
    env.start_worker().await;
    let port = env.workers[1].1;
    env.publish(&env.job("after-corruption", |v| v["tuning"] = "auto".into()))
        .await;
    let r = env
        .results_for(&["after-corruption"], Duration::from_secs(60))
        .await;
    assert_eq!(r["after-corruption"][0].status, JobStatus::Succeeded);
    assert!(
        r["after-corruption"][0].timings.contains_key("tune"),
        "re-tuned"
    );
    let bytes = env.store.get(&bucket, &first, 1 << 30).await.unwrap();
    assert!(bytes.len() > 1000, "the corrupt object was replaced");
    assert!(env.log(1).contains("corrupt"), "the worker warned about it");

    // forget removes every adapter of the identity; the next auto job tunes again.
    let config = env.config_file("forget", free_port());
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pva-worker"))
        .args([
            "--config".as_ref(),
            config.as_os_str(),
            "forget".as_ref(),
            "--identity".as_ref(),
            "example-person".as_ref(),
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("2 object(s) removed"), "{stdout}");
    assert!(adapters_of(&env).await.is_empty());
    env.publish(&env.job("after-forget", |v| v["tuning"] = "auto".into()))
        .await;
    let r = env
        .results_for(&["after-forget"], Duration::from_secs(60))
        .await;
    assert!(
        r["after-forget"][0].timings.contains_key("tune"),
        "tuned again after forget"
    );
    wait_metric(port, "pva_tuning_duration_seconds_count 2").await;
    env.assert_logs_clean();
}
