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
//! - the Dockerfile's stages, user and paths match the chart and `scripts/setup-ort.sh`.
//!
//! Needs Helm and the YAML parser: `scripts/setup-helm.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pva_worker::config::{ExecutionProvider, Settings, DEFAULT_TOML, OPTIONAL_SETTINGS};
use pva_worker::metrics::{Health, JobOutcome, Metrics, Stage};
use serde_json::Value;

const CHART: &str = "charts/pva-worker";
const SETUP_HINT: &str = "run scripts/setup-helm.sh";

/// Values of the credentials the Deployment maps from Secrets, standing in for the Secrets' contents.
const FAKE_SECRETS: [(&str, &str); 3] = [
    (
        "PVA__AMQP__URL",
        "amqp://worker:s3cret@rabbitmq.pva:5672/%2f",
    ),
    ("PVA__S3__ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE"),
    ("PVA__S3__SECRET_ACCESS_KEY", "example/secret/access/key"),
];

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

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn helm() -> PathBuf {
    let local = root().join(".tools/bin/helm");
    if local.is_file() {
        return local;
    }
    let on_path = Command::new("helm").arg("version").output();
    match on_path {
        Ok(out) if out.status.success() => PathBuf::from("helm"),
        _ => panic!("helm not found (.tools/bin/helm or PATH): {SETUP_HINT}"),
    }
}

/// `helm template` of the chart with `values` (None: the defaults), parsed into JSON documents.
fn render(values: Option<&Path>) -> Vec<Value> {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(helm());
    cmd.current_dir(root())
        .args(["template", "pva", CHART, "--namespace", "pva"])
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"));
    if let Some(values) = values {
        cmd.arg("-f").arg(values);
    }
    let out = cmd.output().expect("running helm");
    assert!(
        out.status.success(),
        "helm template {values:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_documents(&String::from_utf8(out.stdout).unwrap())
}

/// YAML documents as JSON values, through PyYAML in the project's .venv (no YAML crate in the build).
fn yaml_documents(yaml: &str) -> Vec<Value> {
    let python = root().join(".venv/bin/python");
    let mut child = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml\n\
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}: {SETUP_HINT}", python.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "parsing YAML failed ({SETUP_HINT}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Array(docs) => docs,
        other => panic!("expected a list of documents, got {other}"),
    }
}

fn read(path: impl AsRef<Path>) -> String {
    let path = root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The chart's default values.
fn default_values() -> Value {
    yaml_documents(&read(format!("{CHART}/values.yaml")))
        .pop()
        .unwrap()
}

/// The values files under ci/ (paths relative to the repository root).
fn ci_values_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(CHART).join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "ci values files: {files:?}");
    files
}

fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}");
    found[0]
}

fn str_of(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

/// A table of tables (TOML sections) as `section.key -> value`.
fn flatten(tables: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (section, table) in tables.as_object().unwrap() {
        for (key, value) in table.as_object().unwrap() {
            out.insert(format!("{section}.{key}"), value.clone());
        }
    }
    out
}

/// A TOML file read by the same `config` crate the worker uses, as JSON.
fn toml_tables(toml: &str) -> Value {
    config::Config::builder()
        .add_source(config::File::from_str(toml, config::FileFormat::Toml))
        .build()
        .unwrap()
        .try_deserialize()
        .unwrap()
}

/// Whether two values are the same setting (numbers compared as numbers: TOML 20 equals YAML 20.0).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q))
        }
        _ => a == b,
    }
}

/// The worker container of the rendered Deployment.
fn worker_container(deployment: &Value) -> &Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "worker")
        .expect("a container named worker")
}

/// The worker container's environment as the pod would see it, Secrets replaced by [`FAKE_SECRETS`].
fn container_env(container: &Value) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = str_of(&var["name"]).to_string();
        let value = if let Some(v) = var["value"].as_str() {
            v.to_string()
        } else if var["valueFrom"]["secretKeyRef"].is_object() {
            let fake = FAKE_SECRETS.iter().find(|(n, _)| *n == name);
            fake.unwrap_or_else(|| panic!("{name} comes from a Secret the test does not fake"))
                .1
                .to_string()
        } else {
            panic!("{name}: unexpected env source {var}")
        };
        env.push((name, value));
    }
    env
}

#[test]
fn check_chart_script_passes() {
    let script = root().join("scripts/check-chart.sh");
    let out = Command::new(&script)
        .current_dir(root())
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
fn every_values_file_renders_a_config_the_worker_loads_and_the_deployment_agrees_with() {
    let mut cases: Vec<Option<PathBuf>> = vec![None];
    cases.extend(ci_values_files().into_iter().map(Some));
    for values_file in cases {
        let label = values_file
            .as_ref()
            .map_or("defaults".to_string(), |p| p.display().to_string());
        let docs = render(values_file.as_deref());
        let values = match &values_file {
            Some(path) => yaml_documents(&std::fs::read_to_string(path).unwrap())
                .pop()
                .unwrap_or(Value::Null),
            None => default_values(),
        };

        // The worker.toml the ConfigMap carries, loaded as the pod would: file + environment.
        let config_map = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["data"]["worker.toml"].is_string())
            .unwrap_or_else(|| panic!("{label}: no ConfigMap with worker.toml"));
        let toml = str_of(&config_map["data"]["worker.toml"]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.toml");
        std::fs::write(&file, toml).unwrap();
        let deployment = only(&docs, "Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        let container = worker_container(deployment);
        let env = container_env(container);
        let settings = Settings::load_with_env(Some(&file), env.clone()).unwrap_or_else(|e| {
            panic!("{label}: the worker refuses the chart's config: {e}\n{toml}")
        });

        // Credentials arrive through the environment, under the names the worker reads.
        assert_eq!(settings.amqp.url.expose(), FAKE_SECRETS[0].1, "{label}");
        let s3_keys = env.iter().any(|(n, _)| n == "PVA__S3__ACCESS_KEY_ID");
        assert_eq!(
            settings.s3.access_key_id.expose(),
            if s3_keys { FAKE_SECRETS[1].1 } else { "" },
            "{label}"
        );
        assert!(
            !toml.contains("url =") && !toml.contains("access_key"),
            "{label}: credentials in the ConfigMap"
        );

        // Every value of `config` reached the file unchanged (integers stay integers).
        let rendered = flatten(&toml_tables(toml));
        if values["config"].is_object() {
            for (key, want) in flatten(&values["config"]) {
                let got = rendered
                    .get(&key)
                    .unwrap_or_else(|| panic!("{label}: {key} not rendered"));
                assert!(
                    same_value(got, &want),
                    "{label}: {key} = {got}, values say {want}"
                );
            }
        }

        // The container reads the ConfigMap's file.
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(str_of)
            .collect();
        let config_at = args
            .iter()
            .position(|a| *a == "--config")
            .expect("--config");
        let config_path = Path::new(args[config_at + 1]);
        assert_eq!(args.last(), Some(&"serve"), "{label}");
        let mount = |volume: &str| {
            container["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == volume)
                .unwrap_or_else(|| panic!("{label}: no mount of volume {volume}"))
                .clone()
        };
        let config_mount = mount("config");
        assert_eq!(
            config_path,
            Path::new(str_of(&config_mount["mountPath"])).join("worker.toml"),
            "{label}"
        );
        let config_volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "config")
            .unwrap();
        assert_eq!(
            config_volume["configMap"]["name"], config_map["metadata"]["name"],
            "{label}"
        );

        // Kubernetes waits longer than the worker's own shutdown deadline.
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            grace > settings.worker.shutdown_deadline_secs,
            "{label}: grace {grace} s <= shutdown deadline {} s",
            settings.worker.shutdown_deadline_secs
        );

        // The metrics port the worker listens on is the one the probes and the Service use.
        let listen: std::net::SocketAddr = settings.metrics.listen.parse().unwrap();
        let port = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "metrics")
            .expect("a port named metrics");
        assert_eq!(
            port["containerPort"].as_u64(),
            Some(u64::from(listen.port())),
            "{label}"
        );
        for (probe, path) in [
            ("startupProbe", "/startupz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ] {
            assert_eq!(
                container[probe]["httpGet"]["path"], path,
                "{label}: {probe}"
            );
            assert_eq!(
                container[probe]["httpGet"]["port"], "metrics",
                "{label}: {probe}"
            );
        }
        if let Some(service) = docs.iter().find(|d| d["kind"] == "Service") {
            assert_eq!(
                service["spec"]["ports"][0]["targetPort"], "metrics",
                "{label}"
            );
        }

        // The model directory is inside the read-only model volume.
        let model_mount = mount("model");
        assert_eq!(model_mount["readOnly"], true, "{label}");
        assert!(
            settings
                .engine
                .model_dir
                .starts_with(str_of(&model_mount["mountPath"])),
            "{label}: model_dir {} outside the model volume",
            settings.engine.model_dir.display()
        );
        assert!(settings.engine.ort_library.is_absolute(), "{label}");

        // The C2PA signing files, when configured, are the items of the read-only Secret volume.
        for key in ["provenance.signing_key", "provenance.certificate_chain"] {
            let path = str_of(&rendered[key]);
            if path.is_empty() {
                continue;
            }
            let secret_mount = mount("provenance");
            assert_eq!(secret_mount["readOnly"], true, "{label}");
            let (dir, file) = path.rsplit_once('/').unwrap();
            assert_eq!(dir, str_of(&secret_mount["mountPath"]), "{label}: {key}");
            let volume = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "provenance")
                .unwrap();
            assert!(
                volume["secret"]["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|item| item["path"] == file),
                "{label}: {key} = {path} is not an item of the Secret volume"
            );
        }

        // GPUs are requested exactly when the worker runs the CUDA provider.
        let gpus = container["resources"]["limits"]
            .as_object()
            .map_or(false, |l| l.keys().any(|k| k.ends_with("/gpu")));
        assert_eq!(
            settings.engine.execution_provider == ExecutionProvider::Cuda,
            gpus,
            "{label}: execution provider vs GPU resources"
        );

        // KEDA watches the queue the worker consumes.
        if let Some(scaled) = docs.iter().find(|d| d["kind"] == "ScaledObject") {
            let trigger = &scaled["spec"]["triggers"][0]["metadata"];
            assert_eq!(
                str_of(&trigger["queueName"]),
                settings.amqp.job_queue,
                "{label}"
            );
            assert_eq!(
                scaled["spec"]["scaleTargetRef"]["name"],
                deployment["metadata"]["name"]
            );
        }
        // The HPA's default target is a share of the worker's own concurrency.
        if let Some(hpa) = docs.iter().find(|d| d["kind"] == "HorizontalPodAutoscaler") {
            let target = &hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"];
            let milli: f64 = str_of(target).trim_end_matches('m').parse().unwrap();
            let per_pod = milli / 1000.0;
            assert!(
                per_pod > 0.0 && per_pod <= settings.worker.concurrency as f64,
                "{label}: HPA target {per_pod} jobs per pod with concurrency {}",
                settings.worker.concurrency
            );
        }
    }
}

#[test]
fn cpu_pool_values_reach_the_worker_settings() {
    let file = root().join(CHART).join("ci/cpu-pool-values.yaml");
    let docs = render(Some(&file));
    let toml = str_of(
        &docs
            .iter()
            .find(|d| d["data"]["worker.toml"].is_string())
            .unwrap()["data"]["worker.toml"],
    )
    .to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.toml");
    std::fs::write(&path, &toml).unwrap();
    let env = container_env(worker_container(only(&docs, "Deployment")));
    let s = Settings::load_with_env(Some(&path), env).unwrap();
    assert_eq!(s.engine.execution_provider, ExecutionProvider::Cpu);
    assert_eq!(s.engine.intra_threads, 8);
    assert!(!s.engine.verify_hashes);
    assert_eq!(s.limits.max_steps, 60);
    for line in [
        "max_steps = 60\n",
        "max_image_bytes = 10485760\n",
        "lr_token = 0.002\n",
    ] {
        assert!(toml.contains(line), "{line:?} not in\n{toml}");
    }
    assert_eq!(s.limits.max_image_bytes, 10_485_760);
    assert_eq!(
        s.limits.max_image_pixels, 40_000_000,
        "unset keys keep the worker's defaults"
    );
    assert!((s.pipeline.min_identity_score - 0.35).abs() < 1e-6);
    assert_eq!(s.logging.level, "info,pva_worker=debug");
    assert_eq!(s.s3.input_prefixes, ["uploads/", "refs/"]);
    assert_eq!(s.s3.output_buckets, ["pva-outputs", "pva-archive"]);
    assert!(s.s3.force_path_style);
    assert_eq!(s.tuning.steps, 20);
    assert!((s.tuning.lr_token.unwrap() - 0.002).abs() < 1e-9);
    assert_eq!(s.tuning.lr_visual, None); // unset: the model's own rate
}

#[test]
fn schema_config_keys_derived_keys_and_secrets_are_exactly_the_settings() {
    let mut all: BTreeSet<String> = flatten(&toml_tables(DEFAULT_TOML)).into_keys().collect();
    all.extend(OPTIONAL_SETTINGS.iter().map(|k| k.to_string()));
    let schema: Value = serde_json::from_str(&read(format!("{CHART}/values.schema.json"))).unwrap();
    let config_schema = &schema["properties"]["config"];
    assert_eq!(config_schema["additionalProperties"], false);
    let mut settable = BTreeSet::new();
    for (section, table) in config_schema["properties"].as_object().unwrap() {
        assert_eq!(table["additionalProperties"], false, "config.{section}");
        for key in table["properties"].as_object().unwrap().keys() {
            settable.insert(format!("{section}.{key}"));
        }
    }
    // What the chart writes beyond `config`: the rendered defaults minus the default `config` values.
    let docs = render(None);
    let rendered: BTreeSet<String> = flatten(&toml_tables(str_of(
        &docs
            .iter()
            .find(|d| d["data"]["worker.toml"].is_string())
            .unwrap()["data"]["worker.toml"],
    )))
    .into_keys()
    .collect();
    let default_config: BTreeSet<String> =
        flatten(&default_values()["config"]).into_keys().collect();
    let derived: BTreeSet<String> = rendered.difference(&default_config).cloned().collect();
    // The credentials: the PVA__ variables the Deployment maps from Secrets (with an S3 Secret set).
    let with_s3_secret = render(Some(&root().join(CHART).join("ci/s3-model-values.yaml")));
    let secrets: BTreeSet<String> = worker_container(only(&with_s3_secret, "Deployment"))["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|var| var["valueFrom"]["secretKeyRef"].is_object())
        .filter_map(|var| str_of(&var["name"]).strip_prefix("PVA__"))
        .map(|name| name.to_lowercase().replacen("__", ".", 1))
        .collect();
    assert_eq!(secrets.len(), FAKE_SECRETS.len(), "{secrets:?}");

    for key in &settable {
        assert!(
            all.contains(key),
            "the schema allows config.{key}, which the worker does not have"
        );
    }
    for (a, b, what) in [
        (&settable, &derived, "settable in config and derived"),
        (&settable, &secrets, "settable in config and a credential"),
        (&derived, &secrets, "derived and a credential"),
    ] {
        let both: Vec<&String> = a.intersection(b).collect();
        assert!(both.is_empty(), "{what}: {both:?}");
    }
    let covered: BTreeSet<String> = settable
        .iter()
        .chain(&derived)
        .chain(&secrets)
        .cloned()
        .collect();
    let missing: Vec<&String> = all.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "worker settings the chart can neither set nor derive: {missing:?}"
    );
    assert_eq!(covered, all);
}

/// A metric selector in a query: the name and its label matchers `(label, op, value)`.
#[derive(Debug)]
struct Selector {
    metric: String,
    matchers: Vec<(String, String, String)>,
}

/// What a PromQL expression refers to: metric selectors and the labels of `by (...)`/`on (...)`.
#[derive(Debug, Default)]
struct QueryRefs {
    selectors: Vec<Selector>,
    grouping: Vec<String>,
}

/// Words that are PromQL operators or modifiers, never metric names.
const PROMQL_WORDS: [&str; 22] = [
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "group",
    "count_values",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// Reads the quoted string starting at `chars[i]`; returns its content and the index after it.
fn quoted(chars: &[char], i: usize) -> (String, usize) {
    let quote = chars[i];
    let mut out = String::new();
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        if chars[j] == '\\' && j + 1 < chars.len() {
            j += 1;
        }
        out.push(chars[j]);
        j += 1;
    }
    (out, j + 1)
}

/// A small PromQL scanner: enough to find every metric name, matcher and grouping label of the
/// dashboard's queries (functions are words followed by `(`; `$variables` and `[ranges]` are skipped).
fn promql_refs(expr: &str) -> QueryRefs {
    let chars: Vec<char> = expr.chars().collect();
    let skip_ws = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    let mut refs = QueryRefs::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i = quoted(&chars, i).1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '$' || c.is_ascii_digit() {
            i += 1;
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if c == '{' {
            panic!("a selector without a metric name in {expr}");
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_ws(i);
            let grouping = [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ];
            if grouping.contains(&word.as_str()) && chars.get(next) == Some(&'(') {
                let close = next + chars[next..].iter().position(|&c| c == ')').unwrap();
                let list: String = chars[next + 1..close].iter().collect();
                refs.grouping.extend(
                    list.split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(String::from),
                );
                i = close + 1;
            } else if chars.get(next) == Some(&'(') || PROMQL_WORDS.contains(&word.as_str()) {
                // A function or an aggregation: its arguments are scanned as they come.
            } else {
                let mut selector = Selector {
                    metric: word,
                    matchers: Vec::new(),
                };
                if chars.get(next) == Some(&'{') {
                    let mut j = next + 1;
                    loop {
                        while j < chars.len() && (chars[j].is_whitespace() || chars[j] == ',') {
                            j += 1;
                        }
                        if chars[j] == '}' {
                            break;
                        }
                        let start = j;
                        while is_ident(chars[j]) {
                            j += 1;
                        }
                        let label: String = chars[start..j].iter().collect();
                        j = skip_ws(j);
                        let op_start = j;
                        while "=~!".contains(chars[j]) {
                            j += 1;
                        }
                        let op: String = chars[op_start..j].iter().collect();
                        j = skip_ws(j);
                        let (value, after) = quoted(&chars, j);
                        selector.matchers.push((label, op, value));
                        j = after;
                    }
                    i = j + 1;
                }
                refs.selectors.push(selector);
            }
        } else {
            i += 1;
        }
    }
    refs
}

/// The exposition as `sample name -> label sets of its series`.
fn exposition_series(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut series: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let chars: Vec<char> = line.chars().collect();
        let name_end = chars.iter().position(|&c| c == '{' || c == ' ').unwrap();
        let name: String = chars[..name_end].iter().collect();
        let mut labels = BTreeMap::new();
        if chars[name_end] == '{' {
            let mut j = name_end + 1;
            while chars[j] != '}' {
                let start = j;
                while chars[j] != '=' {
                    j += 1;
                }
                let label: String = chars[start..j].iter().collect();
                let (value, after) = quoted(&chars, j + 1);
                labels.insert(label, value);
                j = after;
                if chars[j] == ',' {
                    j += 1;
                }
            }
        }
        series.entry(name).or_default().push(labels);
    }
    series
}

/// `/metrics` of a worker that has recorded one of every kind of observation.
fn busy_worker_metrics() -> String {
    let m = Metrics::new();
    for outcome in [
        JobOutcome::Succeeded,
        JobOutcome::Failed,
        JobOutcome::Retried {
            reason: "storage_error",
        },
        JobOutcome::DeadLettered {
            reason: "bad_image",
        },
        JobOutcome::Republished,
    ] {
        m.job_finished(outcome);
    }
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
    let series = exposition_series(&busy_worker_metrics());
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
    // dead letters and the adapter cache hit ratio.
    for metric in [
        "pva_jobs_total",
        "pva_stage_duration_seconds_bucket",
        "pva_queue_wait_seconds_bucket",
        "pva_jobs_in_flight",
        "pva_dead_letters_total",
        "pva_adapter_cache_hits_total",
        "pva_adapter_cache_misses_total",
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

#[test]
fn chart_app_version_is_the_crate_version() {
    let chart = yaml_documents(&read(format!("{CHART}/Chart.yaml")))
        .pop()
        .unwrap();
    assert_eq!(str_of(&chart["appVersion"]), env!("CARGO_PKG_VERSION"));
}

/// One Dockerfile instruction: the keyword (upper case) and its arguments, continuations joined.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current.trim().split_once(char::is_whitespace).unwrap();
                out.push((keyword.to_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

/// Whether the .dockerignore allowlist (`*` then `!path` exceptions) lets `path` into the context.
fn in_build_context(dockerignore: &str, path: &str) -> bool {
    let rules: Vec<&str> = dockerignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(rules.first(), Some(&"*"), ".dockerignore is an allowlist");
    let path = path.trim_end_matches('/');
    rules[1..].iter().any(|rule| {
        let allowed = rule.strip_prefix('!').expect("only exceptions after `*`");
        path == allowed || path.starts_with(&format!("{allowed}/"))
    })
}

#[derive(Debug, Default)]
struct DockerStage {
    name: String,
    image: String,
    instructions: Vec<(String, String)>,
}

#[test]
fn dockerfile_builds_the_cuda_worker_as_non_root_with_the_paths_the_chart_uses() {
    let dockerfile = read("Dockerfile");
    let dockerignore = read(".dockerignore");
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut stages: Vec<DockerStage> = Vec::new();
    for (keyword, rest) in dockerfile_instructions(&dockerfile) {
        if keyword == "FROM" {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            let mut image = parts[0].to_string();
            for (name, value) in &args {
                image = image.replace(&format!("${{{name}}}"), value.as_str());
            }
            assert!(!image.contains('$'), "unresolved base image {image}");
            assert_eq!(parts.len(), 3, "every stage is named: FROM {rest}");
            assert!(parts[1].eq_ignore_ascii_case("AS"));
            stages.push(DockerStage {
                name: parts[2].to_string(),
                image,
                ..Default::default()
            });
        } else if stages.is_empty() {
            assert_eq!(keyword, "ARG", "only ARG before the first FROM");
            let (name, value) = rest.split_once('=').expect("global ARGs have defaults");
            args.insert(name.to_string(), value.to_string());
        } else {
            stages
                .last_mut()
                .unwrap()
                .instructions
                .push((keyword, rest));
        }
    }
    let stage = |name: &str| {
        stages
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("stage {name}"))
    };
    let runs = |s: &DockerStage| -> String {
        s.instructions
            .iter()
            .filter(|(k, _)| k == "RUN")
            .map(|(_, a)| a.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let ort = stage("ort");
    let build = stage("build");
    let runtime = stages.last().unwrap();
    assert!(build.image.starts_with("rust:1.95"), "{}", build.image);
    assert!(
        runs(build).contains("cargo build --release --features cuda --locked"),
        "{}",
        runs(build)
    );
    assert!(runs(ort).contains("scripts/setup-ort.sh gpu"));
    assert!(
        runtime.image.starts_with("nvidia/cuda:13.")
            && runtime.image.contains("cudnn")
            && runtime.image.contains("runtime"),
        "runtime base {} is not a CUDA 13 + cuDNN runtime image",
        runtime.image
    );

    // Every COPY reads an earlier stage, or a path that exists and is in the build context.
    let mut copies = Vec::new();
    for (i, s) in stages.iter().enumerate() {
        for (keyword, rest) in &s.instructions {
            if keyword == "ADD" {
                panic!("{}: use COPY, not ADD", s.name);
            }
            if keyword != "COPY" {
                continue;
            }
            let words: Vec<&str> = rest.split_whitespace().collect();
            let from = words.iter().find_map(|w| w.strip_prefix("--from="));
            let paths: Vec<&str> = words
                .iter()
                .copied()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let (dest, sources) = paths.split_last().unwrap();
            match from {
                Some(from) => assert!(
                    stages[..i].iter().any(|earlier| earlier.name == from),
                    "{}: COPY --from={from} is not an earlier stage",
                    s.name
                ),
                None => {
                    for source in sources {
                        assert!(
                            root().join(source).exists(),
                            "{}: COPY {source} does not exist",
                            s.name
                        );
                        assert!(
                            in_build_context(&dockerignore, source),
                            "{source} is excluded by .dockerignore"
                        );
                    }
                }
            }
            copies.push((
                s.name.clone(),
                from.map(String::from),
                sources.to_vec().join(" "),
                dest.to_string(),
            ));
        }
    }
    let copied_to = |from: &str| -> (String, String) {
        copies
            .iter()
            .find(|(stage, f, _, _)| *stage == runtime.name && f.as_deref() == Some(from))
            .map(|(_, _, src, dest)| (src.clone(), dest.clone()))
            .unwrap_or_else(|| panic!("the runtime stage copies nothing from {from}"))
    };

    // The runtime user is the chart's non-root user.
    let user = runtime
        .instructions
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .expect("USER")
        .1
        .clone();
    let (uid, gid) = user.split_once(':').unwrap_or((&user, &user));
    let values = default_values();
    let security = &values["podSecurityContext"];
    assert_eq!(
        uid.parse::<u64>().ok(),
        security["runAsUser"].as_u64(),
        "USER {user}"
    );
    assert_eq!(
        gid.parse::<u64>().ok(),
        security["runAsGroup"].as_u64(),
        "USER {user}"
    );
    assert_ne!(uid, "0");
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(values["securityContext"]["readOnlyRootFilesystem"], true);

    // ONNX Runtime lies where the chart's engine.ort_library points, and where the embedded default
    // (relative to the WORKDIR) points, so the bare image runs too.
    let setup_ort = read("scripts/setup-ort.sh");
    let version = setup_ort
        .lines()
        .find_map(|l| l.strip_prefix("version=\""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("version in setup-ort.sh");
    let ort_workdir = ort
        .instructions
        .iter()
        .find(|(k, _)| k == "WORKDIR")
        .unwrap()
        .1
        .clone();
    let (ort_src, ort_dest) = copied_to("ort");
    assert_eq!(ort_src, format!("{ort_workdir}/.ort"));
    let chart_library = str_of(&values["image"]["ortLibrary"]);
    assert_eq!(
        chart_library,
        format!("{ort_dest}/onnxruntime/capi/libonnxruntime.so.{version}")
    );
    let workdir = runtime
        .instructions
        .iter()
        .rev()
        .find(|(k, _)| k == "WORKDIR")
        .unwrap()
        .1
        .clone();
    let defaults = flatten(&toml_tables(DEFAULT_TOML));
    let default_library = str_of(&defaults["engine.ort_library"]);
    assert_eq!(
        Path::new(&workdir).join(default_library),
        Path::new(chart_library)
    );

    // The entrypoint is the binary the build stage produced; the exposed port is the metrics port.
    let (_, binary) = copied_to("build");
    let entrypoint: Vec<String> = serde_json::from_str(
        &runtime
            .instructions
            .iter()
            .find(|(k, _)| k == "ENTRYPOINT")
            .unwrap()
            .1,
    )
    .unwrap();
    assert_eq!(entrypoint, [binary]);
    let cmd: Vec<String> = serde_json::from_str(
        &runtime
            .instructions
            .iter()
            .find(|(k, _)| k == "CMD")
            .unwrap()
            .1,
    )
    .unwrap();
    assert_eq!(cmd, ["serve"]);
    let exposed = &runtime
        .instructions
        .iter()
        .find(|(k, _)| k == "EXPOSE")
        .unwrap()
        .1;
    assert_eq!(
        exposed.parse::<u64>().ok(),
        values["metrics"]["port"].as_u64()
    );
    let listen: std::net::SocketAddr = str_of(&defaults["metrics.listen"]).parse().unwrap();
    assert_eq!(exposed.parse::<u16>().ok(), Some(listen.port()));
}
