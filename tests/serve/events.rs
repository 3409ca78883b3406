//! A job's lifecycle events (issue 17): `started`, `progress` for tuning and denoising, then the
//! final result, in sequence order on the result exchange, each valid against
//! `schemas/event.v1.schema.json`.

use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use pva_worker::job::{JobResult, JobStatus};
use serde_json::Value;

use crate::common::repo;
use crate::common::service::{Env, SERIAL};

/// Checks every message against the event schema with python-jsonschema (formats asserted).
fn validate_with_schema(dir: &std::path::Path, messages: &[Value]) {
    let file = dir.join("events.json");
    std::fs::write(&file, serde_json::to_vec(messages).unwrap()).unwrap();
    let script = "import json, sys, jsonschema\n\
        schema = json.load(open(sys.argv[1]))\n\
        v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)\n\
        for m in json.load(open(sys.argv[2])):\n    v.validate(m)\n";
    let out = std::process::Command::new(repo().join(".venv/bin/python"))
        .arg("-c")
        .arg(script)
        .arg(repo().join("schemas/event.v1.schema.json"))
        .arg(&file)
        .output()
        .expect("the project's .venv (scripts/test.sh sets it up)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_events_arrive_in_order_and_progress_reaches_the_last_step() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("events").await;
    let a = env.settings.amqp.clone();
    let queue = format!("{}.events", a.job_queue);
    env.channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    env.channel
        .queue_bind(
            queue.as_str().into(),
            a.result_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    env.start_worker().await;
    env.publish(&env.job("job-events", |v| {
        v["steps"] = 12.into();
        v["tuning"] = "auto".into();
    }))
    .await;

    // Everything on the exchange until the final result: (routing key, body).
    let mut got: Vec<(String, Value)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !got.iter().any(|(key, _)| *key == a.result_routing_key) {
        assert!(
            Instant::now() < deadline,
            "no final result; got {got:?}; log:\n{}",
            env.log(0)
        );
        match env
            .channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(m) => got.push((
                m.delivery.routing_key.as_str().to_string(),
                serde_json::from_slice(&m.delivery.data).unwrap(),
            )),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let kinds: Vec<&str> = got
        .iter()
        .map(|(_, v)| v["event"].as_str().unwrap())
        .collect();
    for (key, v) in &got {
        let event = v["event"].as_str().unwrap();
        assert_eq!(v["job_id"], "job-events", "{v}");
        assert_eq!(v["delivery"], 1, "{v}");
        let want_key = match event {
            "succeeded" | "failed" => a.result_routing_key.clone(),
            kind => format!("pva.event.{kind}"),
        };
        assert_eq!(*key, want_key, "{v}");
    }
    // In order: sequence 1, 2, 3, ... with non-decreasing timestamps.
    let sequences: Vec<u64> = got
        .iter()
        .map(|(_, v)| v["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(
        sequences,
        (1..=got.len() as u64).collect::<Vec<_>>(),
        "{kinds:?}"
    );
    let stamps: Vec<&str> = got
        .iter()
        .map(|(_, v)| v["timestamp"].as_str().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    assert_eq!(kinds[0], "started");
    assert_eq!(got[0].1["worker_id"], "worker-0");
    assert_eq!(*kinds.last().unwrap(), "succeeded");

    // Progress: tuning first, then denoising, each up to its last step, on tenths of the steps.
    let progress = |stage: &str| -> Vec<(u64, u64)> {
        got.iter()
            .map(|(_, v)| v)
            .filter(|v| v["event"] == "progress" && v["stage"] == stage)
            .map(|v| (v["step"].as_u64().unwrap(), v["steps"].as_u64().unwrap()))
            .collect()
    };
    let tune = progress("tune");
    let denoise = progress("denoise");
    assert_eq!(tune.last(), Some(&(40, 40)), "{tune:?}");
    assert_eq!(denoise.last(), Some(&(12, 12)), "{denoise:?}");
    for steps in [&tune, &denoise] {
        assert!(steps.windows(2).all(|w| w[0].0 < w[1].0), "{steps:?}");
        assert!(steps.len() <= 10, "at most one per tenth: {steps:?}");
        for &(step, n) in steps.iter() {
            assert!(
                step == n || step * 10 / n != (step - 1) * 10 / n,
                "step {step} of {n} is no tenth"
            );
        }
    }
    let first_denoise = kinds.iter().position(|k| *k == "progress").unwrap() + tune.len();
    assert_eq!(got[first_denoise].1["stage"], "denoise", "{kinds:?}");

    // The final event is the result message, as stored.
    let final_body = &got.last().unwrap().1;
    let result: JobResult = serde_json::from_value(final_body.clone()).unwrap();
    assert_eq!(result.status, JobStatus::Succeeded);
    assert_eq!(super::stored_result(&env, "job-events").await, result);
    let messages: Vec<Value> = got.into_iter().map(|(_, v)| v).collect();
    validate_with_schema(env.dir.path(), &messages);
}
