//! The alerts (`templates/prometheusrule.yaml`): off by default; rendered with `ci/alerts-values.yaml`,
//! their rule groups pass `promtool check rules` and `promtool test rules` with
//! `tests/chart/alerts.test.yaml` (synthetic series on which each alert fires and on which it must not);
//! each alert has a `runbook_url` into its own section of `docs/runbooks.md`, and queries only metrics
//! and labels the worker exports (besides RabbitMQ's queue depth).

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::common::promql::{exposition_series, promql_refs, promtool};
use crate::common::repo;
use crate::dashboard::busy_worker_metrics;
use crate::helm::{only, read, render, str_of, yaml_documents};
use crate::CHART;

const VALUES: &str = "charts/pva-worker/ci/alerts-values.yaml";
const TESTS: &str = "tests/chart/alerts.test.yaml";

/// The rendered PrometheusRule of `ci/alerts-values.yaml`.
fn rendered_rule() -> Value {
    only(&render(Some(Path::new(VALUES))), "PrometheusRule").clone()
}

/// Every alerting rule of the PrometheusRule.
fn alert_rules(rule: &Value) -> Vec<Value> {
    let mut rules = Vec::new();
    for group in rule["spec"]["groups"].as_array().unwrap() {
        rules.extend(group["rules"].as_array().unwrap().iter().cloned());
    }
    assert!(
        rules.iter().all(|r| r["alert"].is_string()),
        "only alerting rules: {rules:?}"
    );
    rules
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let rule = rendered_rule();
    let dir = tempfile::tempdir().unwrap();
    // The rule file promtool reads: the PrometheusRule's groups (JSON is YAML).
    let groups = serde_json::json!({ "groups": rule["spec"]["groups"] });
    std::fs::write(dir.path().join("rules.yaml"), groups.to_string()).unwrap();
    std::fs::copy(repo().join(TESTS), dir.path().join("alerts.test.yaml")).unwrap();

    let (ok, report) = promtool(&["check", "rules", "rules.yaml"], dir.path(), "");
    println!("{report}");
    assert!(ok, "{report}");
    let count = alert_rules(&rule).len();
    assert!(
        report.contains(&format!("SUCCESS: {count} rules found")),
        "{report}"
    );

    let (ok, report) = promtool(&["test", "rules", "alerts.test.yaml"], dir.path(), "");
    println!("{report}");
    assert!(ok, "{report}");
    assert!(report.contains("SUCCESS"), "{report}");
}

#[test]
fn every_alert_is_tested_firing_and_quiet() {
    let tests = yaml_documents(&read(TESTS)).pop().unwrap();
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for test in tests["tests"].as_array().unwrap() {
        for case in test["alert_rule_test"].as_array().unwrap() {
            let name = str_of(&case["alertname"]).to_string();
            let expected = case["exp_alerts"].as_array().map_or(0, Vec::len);
            if expected > 0 {
                fires.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    let alerts: BTreeSet<String> = alert_rules(&rendered_rule())
        .iter()
        .map(|r| str_of(&r["alert"]).to_string())
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for alert in &alerts {
        assert!(fires.contains(alert), "no test case where {alert} fires");
        assert!(
            quiet.contains(alert),
            "no test case where {alert} stays quiet"
        );
    }
    let unknown: Vec<_> = fires
        .union(&quiet)
        .filter(|a| !alerts.contains(*a))
        .collect();
    assert!(
        unknown.is_empty(),
        "tests of alerts the chart lacks: {unknown:?}"
    );
}

/// GitHub's anchor of a Markdown heading: lower case, spaces to `-`, other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_links_its_own_runbook_section() {
    let values = yaml_documents(&read(VALUES)).pop().unwrap();
    let base = str_of(&values["alerts"]["runbookBaseUrl"]);
    assert!(base.ends_with("docs/runbooks.md"), "{base}");
    let runbooks = read("docs/runbooks.md");
    // The `## ` sections and their text.
    let mut sections = std::collections::BTreeMap::new();
    for part in runbooks.split("\n## ").skip(1) {
        let (heading, body) = part.split_once('\n').unwrap();
        sections.insert(anchor(heading), (heading.to_string(), body.to_string()));
    }
    let rules = alert_rules(&rendered_rule());
    for rule in &rules {
        let name = str_of(&rule["alert"]);
        let url = str_of(&rule["annotations"]["runbook_url"]);
        let (page, fragment) = url.split_once('#').unwrap_or((url, ""));
        assert_eq!(page, base, "{name}: {url}");
        let (heading, body) = sections
            .get(fragment)
            .unwrap_or_else(|| panic!("{name}: docs/runbooks.md has no section #{fragment}"));
        assert_eq!(heading, name, "{name}: the section is the alert's own");
        for part in ["**What it means.**", "**How to check.**", "**How to fix.**"] {
            assert!(body.contains(part), "{name}: its runbook lacks {part}");
        }
        for key in ["summary", "description"] {
            assert!(
                !str_of(&rule["annotations"][key]).is_empty(),
                "{name}: {key}"
            );
        }
        assert!(
            ["critical", "warning"].contains(&str_of(&rule["labels"]["severity"])),
            "{name}: severity"
        );
    }
    assert_eq!(
        sections.len(),
        rules.len(),
        "one runbook section per alert: {:?}",
        sections.keys().collect::<Vec<_>>()
    );
}

#[test]
fn alerts_query_only_what_the_worker_and_rabbitmq_export() {
    let series = exposition_series(&busy_worker_metrics());
    // ci/alerts-values.yaml keeps the default queue metric, RabbitMQ's own name for the ready messages
    // of a queue.
    let values = yaml_documents(&read(VALUES)).pop().unwrap();
    assert!(values["alerts"]["queueDepth"]["metric"].is_null());
    let defaults = yaml_documents(&read(format!("{CHART}/values.yaml")))
        .pop()
        .unwrap();
    let queue_metric = str_of(&defaults["alerts"]["queueDepth"]["metric"]).to_string();
    assert_eq!(queue_metric, "rabbitmq_queue_messages_ready");
    let mut used = BTreeSet::new();
    for rule in alert_rules(&rendered_rule()) {
        let name = str_of(&rule["alert"]);
        let expr = str_of(&rule["expr"]);
        for selector in promql_refs(expr).selectors {
            if selector.metric == queue_metric {
                let queue = selector.matchers.iter().find(|(l, _, _)| l == "queue");
                assert_eq!(
                    queue.map(|(_, op, v)| (op.as_str(), v.as_str())),
                    Some(("=", "pva.jobs")),
                    "{name}: the job queue"
                );
                continue;
            }
            let found = series.get(&selector.metric).unwrap_or_else(|| {
                panic!(
                    "{name}: {} is not in the worker's /metrics",
                    selector.metric
                )
            });
            used.insert(selector.metric.clone());
            for (label, op, value) in &selector.matchers {
                if label == "namespace" {
                    assert_eq!((op.as_str(), value.as_str()), ("=", "pva"), "{name}");
                    continue;
                }
                for want in value.split('|') {
                    assert!(
                        found
                            .iter()
                            .any(|s| s.get(label).map(String::as_str) == Some(want)),
                        "{name}: no {} series with {label}=\"{want}\"",
                        selector.metric
                    );
                }
            }
        }
    }
    for metric in [
        "pva_dead_letters_total",
        "pva_jobs_total",
        "pva_queue_wait_seconds_bucket",
        "pva_ready",
        "pva_retries_total",
        "pva_tuning_final_loss_sum",
        "pva_tuning_nonfinite_losses_total",
        "pva_jobs_in_flight_oldest_seconds",
        "pva_job_duration_seconds_bucket",
    ] {
        assert!(used.contains(metric), "no alert on {metric}");
    }
}

#[test]
fn alerts_are_off_by_default_and_their_selectors_configurable() {
    assert!(
        render(None).iter().all(|d| d["kind"] != "PrometheusRule"),
        "no PrometheusRule by default"
    );
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "alerts:\n  enabled: true\n  namespace: monitoring\n  labels: {release: prom}\n  \
         additionalLabels: {team: ml-platform}\n  workerSelector: 'job=\"pva-metrics\"'\n  \
         runbookBaseUrl: https://docs.example/runbooks.md\n  queueDepth:\n    \
         metric: rabbitmq_detailed_queue_messages_ready\n    selector: 'vhost=\"jobs\"'\n",
    )
    .unwrap();
    let docs = render(Some(&values));
    let rule = only(&docs, "PrometheusRule");
    assert_eq!(rule["metadata"]["namespace"], "monitoring");
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");
    for r in alert_rules(rule) {
        let name = str_of(&r["alert"]);
        let expr = str_of(&r["expr"]);
        assert!(!expr.contains("namespace="), "{name}: {expr}");
        assert_eq!(r["labels"]["team"], "ml-platform", "{name}");
        assert!(
            str_of(&r["annotations"]["runbook_url"])
                .starts_with("https://docs.example/runbooks.md#"),
            "{name}"
        );
        for selector in promql_refs(expr).selectors {
            let labels: Vec<&str> = selector.matchers.iter().map(|m| m.0.as_str()).collect();
            if selector.metric == "rabbitmq_detailed_queue_messages_ready" {
                assert_eq!(labels, ["queue", "vhost"], "{name}");
            } else {
                assert_eq!(labels.first(), Some(&"job"), "{name}: {expr}");
            }
        }
    }
}
