//! The Helm chart (charts/pva-worker), its Grafana dashboard and the Dockerfile, held to the worker
//! itself so that they cannot drift apart:
//!
//! - `scripts/check-chart.sh` passes (helm lint/template, kubernetes-validate, CRD fields, invalid
//!   values rejected);
//! - the worker.toml every values file renders loads through [`Settings::load_with_env`] with the
//!   environment the Deployment sets, and agrees with the Deployment (ports, probes, grace period,
//!   model mount, GPU, queue);
//! - the values schema's `config` keys, the keys the chart derives and the credentials from Secrets
//!   are exactly the worker's settings;
//! - every metric and label the dashboard queries exists in the worker's real `/metrics` output;
//! - the alerts (PrometheusRule, off by default) pass `promtool check rules` and `promtool test rules`
//!   with `alerts.test.yaml` (each alert fires on some synthetic series and stays quiet on others), link
//!   their own section of docs/runbooks.md and query only metrics the worker exports;
//! - the Dockerfile's stages, user and paths match the chart and `scripts/setup-ort.sh`.
//!
//! Needs Helm and the YAML parser (`scripts/setup-helm.sh`) and promtool (`scripts/setup-promtool.sh`).
//! The rendering helpers are in `helm`, the tests grouped by what they hold the worker to in the
//! modules below.

#[path = "../common/mod.rs"]
mod common;

mod alerts;
mod dashboard;
mod docker;
mod helm;
mod worker_config;

use std::process::Command;

use common::repo;
use helm::{read, str_of, yaml_documents};

const CHART: &str = "charts/pva-worker";
const SETUP_HINT: &str = "run scripts/setup-helm.sh";

/// Values of the credentials the Deployment maps from Secrets, standing in for the Secrets' contents.
const FAKE_SECRETS: [(&str, &str); 3] = [
    (
        "PVA__AMQP__URL",
        // amqps: a values file with TLS files needs a TLS URL (the worker refuses them unused).
        "amqps://worker:s3cret@rabbitmq.pva:5671/%2f",
    ),
    ("PVA__S3__ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE"),
    ("PVA__S3__SECRET_ACCESS_KEY", "example/secret/access/key"),
];

#[test]
fn check_chart_script_passes() {
    let script = repo().join("scripts/check-chart.sh");
    let out = Command::new(&script)
        .current_dir(repo())
        .output()
        .expect("running scripts/check-chart.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("helm not found") || stderr.contains("missing from .venv") {
        panic!("scripts/check-chart.sh cannot run: {SETUP_HINT}\n{stderr}");
    }
    assert!(
        out.status.success(),
        "scripts/check-chart.sh failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("invalid ones are rejected"), "{stdout}");
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let chart = yaml_documents(&read(format!("{CHART}/Chart.yaml")))
        .pop()
        .unwrap();
    assert_eq!(str_of(&chart["appVersion"]), env!("CARGO_PKG_VERSION"));
}
