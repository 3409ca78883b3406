//! The worker.toml the chart renders, held to the worker: every values file loads through
//! [`Settings::load_with_env`] with the Deployment's environment and agrees with the Deployment; the
//! values schema, derived keys and Secrets cover exactly the worker's settings.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use pva_worker::config::{ExecutionProvider, Settings, DEFAULT_TOML, OPTIONAL_SETTINGS};
use serde_json::Value;

use crate::common::repo;
use crate::helm::{
    ci_values_files, container_env, default_values, flatten, only, read, render, same_value,
    str_of, toml_tables, worker_container, yaml_documents,
};
use crate::{CHART, FAKE_SECRETS};

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
        // The startup probe's budget covers load and warm-up as the values size it; liveness
        // restarts only after two failed checks or more, each answered well within its period.
        let probe_secs = |probe: &str, key: &str| container[probe][key].as_u64().unwrap();
        let budget = values["probes"]["startup"]["budgetSeconds"]
            .as_u64()
            .or(default_values()["probes"]["startup"]["budgetSeconds"].as_u64())
            .unwrap();
        assert!(
            probe_secs("startupProbe", "failureThreshold")
                * probe_secs("startupProbe", "periodSeconds")
                >= budget,
            "{label}: the startup probe gives up before budgetSeconds {budget}"
        );
        assert!(
            probe_secs("livenessProbe", "failureThreshold") >= 2,
            "{label}"
        );
        assert!(
            probe_secs("livenessProbe", "timeoutSeconds")
                < probe_secs("livenessProbe", "periodSeconds"),
            "{label}"
        );
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

        // The files of the settings, when configured (the C2PA signing key and chain, the TLS CA
        // bundles and client certificate), are items of a read-only Secret or ConfigMap volume
        // mounted at their directory.
        for key in [
            "provenance.signing_key",
            "provenance.certificate_chain",
            "amqp.tls_ca_file",
            "amqp.tls_cert_file",
            "amqp.tls_key_file",
            "s3.tls_ca_file",
        ] {
            let path = str_of(&rendered[key]);
            if path.is_empty() {
                continue;
            }
            let (dir, file) = path.rsplit_once('/').unwrap();
            let file_mount = container["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["mountPath"] == dir)
                .unwrap_or_else(|| panic!("{label}: {key} = {path}: nothing mounted at {dir}"));
            assert_eq!(file_mount["readOnly"], true, "{label}: {key}");
            let volume = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == file_mount["name"])
                .unwrap();
            let items = volume["secret"]["items"]
                .as_array()
                .or(volume["configMap"]["items"].as_array())
                .unwrap_or_else(|| panic!("{label}: {key}: volume {volume} has no items"));
            assert!(
                items.iter().any(|item| item["path"] == file),
                "{label}: {key} = {path} is not an item of volume {}",
                volume["name"]
            );
        }
        // TLS settings the worker got are the chart's mounts (and none without values asking).
        let tls_values = [
            &values["amqp"]["tls"]["ca"]["name"],
            &values["amqp"]["tls"]["clientSecret"],
            &values["s3"]["tls"]["ca"]["name"],
        ];
        let tls_files = [
            &settings.amqp.tls_ca_file,
            &settings.amqp.tls_cert_file,
            &settings.s3.tls_ca_file,
        ];
        for (value, file) in tls_values.into_iter().zip(tls_files) {
            let asked = value.as_str().is_some_and(|name| !name.is_empty());
            assert_eq!(
                asked,
                !file.as_os_str().is_empty(),
                "{label}: {value} vs {}",
                file.display()
            );
        }

        // GPUs are requested exactly when the worker runs the CUDA provider.
        let gpus = container["resources"]["limits"]
            .as_object()
            .is_some_and(|l| l.keys().any(|k| k.ends_with("/gpu")));
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

/// The settings a pod rendered from `values_file` loads (its worker.toml and its environment), and
/// that worker.toml.
fn settings_rendered_from(values_file: &Path) -> (Settings, String) {
    let docs = render(Some(values_file));
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
    (Settings::load_with_env(Some(&path), env).unwrap(), toml)
}

#[test]
fn cpu_pool_values_reach_the_worker_settings() {
    let file = repo().join(CHART).join("ci/cpu-pool-values.yaml");
    let (s, toml) = settings_rendered_from(&file);
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
fn presets_values_reach_the_worker_settings() {
    let file = repo().join(CHART).join("ci/presets-values.yaml");
    let (s, _) = settings_rendered_from(&file);
    let values = yaml_documents(&std::fs::read_to_string(&file).unwrap())
        .pop()
        .unwrap();
    for (name, preset) in values["presets"].as_object().unwrap() {
        let got = serde_json::to_value(&s.presets[name]).unwrap();
        for (key, want) in preset.as_object().unwrap() {
            assert!(
                same_value(&got[key], want),
                "{name}.{key} = {}, values say {want}",
                got[key]
            );
        }
    }
    // A changed default preset keeps only what the values give (and the defaults' other keys).
    assert_eq!(s.presets["add_beard"].edit, "with a full beard");
    // The worker's other default presets are still there.
    assert!(
        s.presets.contains_key("remove_glasses"),
        "{:?}",
        s.presets.keys()
    );
}

#[test]
fn schema_config_keys_derived_keys_and_secrets_are_exactly_the_settings() {
    let mut all: BTreeSet<String> = flatten(&toml_tables(DEFAULT_TOML)).into_keys().collect();
    all.extend(OPTIONAL_SETTINGS.iter().map(|k| k.to_string()));
    // Presets are named by the deployment: the chart's `presets` value, not `config`
    // (presets_values_reach_the_worker_settings).
    all.retain(|k| !k.starts_with("presets."));
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
    let with_s3_secret = render(Some(&repo().join(CHART).join("ci/s3-model-values.yaml")));
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

/// `tracing.otlpEndpoint` reaches the worker as the standard OTEL_* variables, after `extraEnv` (so
/// a `$(HOST_IP)` defined there expands), and turns export on; without it the chart sets none.
#[test]
fn tracing_values_turn_on_trace_export_through_the_otel_variables() {
    let values = repo().join(CHART).join("ci/tracing-values.yaml");
    let docs = render(Some(&values));
    let env = container_env(worker_container(only(&docs, "Deployment")));
    let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
    let at = |name: &str| names.iter().position(|n| *n == name);
    assert!(
        at("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") < at("OTEL_EXPORTER_OTLP_ENDPOINT"),
        "{names:?}"
    );
    let config_map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["worker.toml"].is_string())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("worker.toml");
    std::fs::write(&file, str_of(&config_map["data"]["worker.toml"])).unwrap();
    let settings = Settings::load_with_env(Some(&file), env).unwrap();
    assert!(settings.telemetry.exports());
    assert_eq!(
        settings.telemetry.traces_url(),
        "http://otel-collector.observability:4318/v1/traces"
    );
    assert_eq!(settings.telemetry.service_name, "pva-worker-gpu");
    assert_eq!(settings.telemetry.export_timeout_secs, 5);

    let defaults = container_env(worker_container(only(&render(None), "Deployment")));
    assert!(
        defaults.iter().all(|(n, _)| !n.starts_with("OTEL_")),
        "{defaults:?}"
    );
}
