//! The Grafana dashboard: every metric and label it queries exists in the worker's real `/metrics`
//! output (checked with `common::promql`), and it ships unchanged in its sidecar ConfigMap.

use std::collections::BTreeSet;

use pva_worker::metrics::{Health, JobOutcome, Metrics, Stage};
use serde_json::Value;

use crate::common::promql::{exposition_series, promql_refs};
use crate::helm::{read, render, str_of};
use crate::CHART;

/// Labels Prometheus attaches to every scraped series (target labels), not exported by the worker.
const TARGET_LABELS: [&str; 7] = [
    "namespace",
    "pod",
    "instance",
    "job",
    "service",
    "container",
    "endpoint",
];

/// The queue series the dashboard reads from RabbitMQ's own Prometheus endpoint (the
/// `rabbitmq_prometheus` plugin's per-object metrics, `/metrics/per-object`), not from the worker:
/// the names and labels that plugin exports for every queue.
const RABBITMQ_PER_OBJECT: &str = "\
# TYPE rabbitmq_queue_messages_ready gauge
rabbitmq_queue_messages_ready{vhost=\"/\",queue=\"pva.jobs\"} 3
# TYPE rabbitmq_queue_messages_unacked gauge
rabbitmq_queue_messages_unacked{vhost=\"/\",queue=\"pva.jobs\"} 1
";

/// `/metrics` of a worker that has recorded one of every kind of observation.
pub fn busy_worker_metrics() -> String {
    let m = Metrics::new();
    for outcome in [
        JobOutcome::Succeeded,
        JobOutcome::Failed,
        JobOutcome::Republished,
    ] {
        m.job_finished(outcome, 4.0);
    }
    m.job_retried("storage_error");
    m.job_dead_lettered("bad_image");
    m.observe_identity_score(0.7);
    for stage in Stage::ALL {
        m.observe_stage(stage, 0.5);
    }
    m.observe_queue_wait(3.0);
    let _in_flight = m.in_flight_guard();
    m.model_loaded("pva-sd2", "1.0.0", 42.0);
    m.tuning_finished(12.0, 0.125);
    m.adapter_cache_hit();
    m.adapter_cache_miss();
    m.broker_reconnected();
    m.warmed_up(0.8);
    m.engine_probed(true);
    Health::new(&m).set_broker_connected(true);
    m.render()
}

/// Every query of the dashboard (panels, nested rows and templating variables) with where it is.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String, Option<String>)> {
    fn panels(list: &Value, out: &mut Vec<(String, String, Option<String>)>) {
        for panel in list.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let legend = target["legendFormat"].as_str().map(String::from);
                out.push((title.clone(), str_of(&target["expr"]).to_string(), legend));
            }
            panels(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .unwrap();
        // Grafana's label_values(selector, label): the selector is PromQL, the label a label name.
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: unexpected query {query}", var["name"]));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        out.push((
            format!("variable {}", var["name"]),
            format!("sum by ({}) ({})", label.trim(), selector.trim()),
            None,
        ));
    }
    out
}

#[test]
fn dashboard_queries_only_metrics_and_labels_the_worker_exports() {
    let text = read(format!("{CHART}/dashboards/pva-worker.json"));
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let series = exposition_series(&format!("{}{RABBITMQ_PER_OBJECT}", busy_worker_metrics()));
    let target_labels: BTreeSet<&str> = TARGET_LABELS.into_iter().collect();

    let mut used = BTreeSet::new();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 10, "{} queries", queries.len());
    for (place, expr, legend) in &queries {
        let refs = promql_refs(expr);
        assert!(!refs.selectors.is_empty(), "{place}: no metric in {expr}");
        let mut labels: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
        for selector in &refs.selectors {
            let found = series.get(&selector.metric).unwrap_or_else(|| {
                panic!(
                    "{place}: {expr} queries {}, which /metrics does not export",
                    selector.metric
                )
            });
            used.insert(selector.metric.clone());
            labels.extend(found.iter().flat_map(|s| s.keys().cloned()));
            for (label, op, value) in &selector.matchers {
                if target_labels.contains(label.as_str()) {
                    continue;
                }
                assert!(
                    found.iter().any(|s| s.contains_key(label)),
                    "{place}: {} has no label {label}",
                    selector.metric
                );
                if value.contains('$') || op.starts_with('!') {
                    continue;
                }
                let wanted: Vec<&str> = match op.as_str() {
                    "=" => vec![value.as_str()],
                    "=~" => value.split('|').collect(),
                    _ => panic!("{place}: operator {op}"),
                };
                for want in wanted {
                    assert!(
                        found
                            .iter()
                            .any(|s| s.get(label).map(String::as_str) == Some(want)),
                        "{place}: no {} series with {label}=\"{want}\"",
                        selector.metric
                    );
                }
            }
        }
        let legend_labels = legend.iter().flat_map(|l| {
            l.split("{{")
                .skip(1)
                .map(|p| p.split("}}").next().unwrap().trim().to_string())
        });
        for label in refs.grouping.iter().cloned().chain(legend_labels) {
            assert!(
                labels.contains(&label),
                "{place}: label {label} is on none of its series"
            );
        }
    }
    // What the dashboard is for: throughput by outcome, stage latency, queue wait, in-flight jobs,
    // dead letters, the adapter cache hit ratio, the identity-score distribution, job duration and
    // the oldest job in flight (what the stuck-job alert compares), cold starts and readiness, the
    // job queue's depth (from RabbitMQ) beside the ready replicas, warm-ups and engine probes.
    for metric in [
        "pva_jobs_total",
        "pva_stage_duration_seconds_bucket",
        "pva_queue_wait_seconds_bucket",
        "pva_jobs_in_flight",
        "pva_dead_letters_total",
        "pva_adapter_cache_hits_total",
        "pva_adapter_cache_misses_total",
        "pva_identity_score_bucket",
        "pva_job_duration_seconds_bucket",
        "pva_jobs_in_flight_oldest_seconds",
        "pva_tuning_final_loss_sum",
        "pva_cold_start_seconds",
        "pva_ready",
        "rabbitmq_queue_messages_ready",
        "rabbitmq_queue_messages_unacked",
        "pva_warmup_seconds",
        "pva_engine_probes_total",
    ] {
        assert!(
            used.contains(metric),
            "the dashboard never queries {metric}"
        );
    }
    // Panel ids are unique, and every panel reads the dashboard's data source variable.
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate panel id {}",
            panel["id"]
        );
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
        }
    }
}

#[test]
fn the_scanner_finds_metrics_matchers_and_grouping_labels() {
    let refs = promql_refs(
        "sum by (le, stage) (rate(pva_x_bucket{namespace=~\"$ns\", stage=\"denoise\"}[$__rate_interval])) \
         / on (pod) group_left(version) max(pva_y) > 0.5e3 and pva_z{a!~'b|c'}",
    );
    let names: Vec<&str> = refs.selectors.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(names, ["pva_x_bucket", "pva_y", "pva_z"]);
    assert_eq!(refs.grouping, ["le", "stage", "pod", "version"]);
    assert_eq!(
        refs.selectors[0].matchers,
        [
            ("namespace".to_string(), "=~".to_string(), "$ns".to_string()),
            ("stage".to_string(), "=".to_string(), "denoise".to_string()),
        ]
    );
    assert_eq!(refs.selectors[2].matchers[0].1, "!~");
}

#[test]
fn the_dashboard_ships_in_a_sidecar_config_map() {
    let docs = render(None);
    let map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["pva-worker.json"].is_string())
        .expect("the dashboard ConfigMap");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value = serde_json::from_str(str_of(&map["data"]["pva-worker.json"])).unwrap();
    let file: Value =
        serde_json::from_str(&read(format!("{CHART}/dashboards/pva-worker.json"))).unwrap();
    assert_eq!(
        shipped, file,
        "the ConfigMap carries the dashboard file unchanged"
    );
}
