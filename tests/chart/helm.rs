//! Rendering and reading the chart: `helm template` parsed into JSON documents (YAML through the
//! project's .venv), the values files, and the rendered Deployment's worker container.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::repo;
use crate::{CHART, FAKE_SECRETS, SETUP_HINT};

pub fn helm() -> PathBuf {
    let local = repo().join(".tools/bin/helm");
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
pub fn render(values: Option<&Path>) -> Vec<Value> {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(helm());
    cmd.current_dir(repo())
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
pub fn yaml_documents(yaml: &str) -> Vec<Value> {
    let python = repo().join(".venv/bin/python");
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

pub fn read(path: impl AsRef<Path>) -> String {
    let path = repo().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The chart's default values.
pub fn default_values() -> Value {
    yaml_documents(&read(format!("{CHART}/values.yaml")))
        .pop()
        .unwrap()
}

/// The values files under ci/ (paths relative to the repository root).
pub fn ci_values_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(CHART).join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "ci values files: {files:?}");
    files
}

pub fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}");
    found[0]
}

pub fn str_of(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

/// A table of tables (TOML sections) as `section.key -> value`.
pub fn flatten(tables: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (section, table) in tables.as_object().unwrap() {
        for (key, value) in table.as_object().unwrap() {
            out.insert(format!("{section}.{key}"), value.clone());
        }
    }
    out
}

/// A TOML file read by the same `config` crate the worker uses, as JSON.
pub fn toml_tables(toml: &str) -> Value {
    config::Config::builder()
        .add_source(config::File::from_str(toml, config::FileFormat::Toml))
        .build()
        .unwrap()
        .try_deserialize()
        .unwrap()
}

/// Whether two values are the same setting (numbers compared as numbers: TOML 20 equals YAML 20.0).
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q))
        }
        _ => a == b,
    }
}

/// The worker container of the rendered Deployment.
pub fn worker_container(deployment: &Value) -> &Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "worker")
        .expect("a container named worker")
}

/// The worker container's environment as the pod would see it, Secrets replaced by [`FAKE_SECRETS`].
pub fn container_env(container: &Value) -> Vec<(String, String)> {
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
