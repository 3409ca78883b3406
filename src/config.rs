//! Every setting of the worker, in one struct.
//!
//! Layering: `config/default.toml` (embedded in the binary, so a bare binary runs) -> an optional
//! file -> environment variables `PVA__SECTION__KEY`. Nothing else in the crate reads the environment.
//! [`Settings::validate`] runs at start and names the setting that is wrong. A section whose only
//! reader is one component is defined beside it (`engine`, `queue`, `storage`, `provenance`) and
//! composed here; the others are converted here into the lower layers' own option types.

use std::path::Path;

use serde::Deserialize;

pub use crate::engine::{EngineSettings, ExecutionProvider};
pub use crate::model::Secret;
pub use crate::queue::AmqpSettings;
pub use crate::storage::{S3Settings, Sse};
pub use crate::telemetry::TelemetrySettings;

/// The embedded defaults (also the documented reference of every key).
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The keys with no default: unset, the value comes from elsewhere (each field says where);
/// `DEFAULT_TOML` documents them in comments only.
pub const OPTIONAL_SETTINGS: [&str; 3] =
    ["tuning.lr_visual", "tuning.lr_token", "tuning.weight_decay"];

/// Why the settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or a value has the wrong type.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range or inconsistent; names the setting.
    #[error("configuration: `{setting}` {problem}")]
    Invalid {
        /// Dotted name of the setting, e.g. `engine.intra_threads`.
        setting: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// All settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// ONNX Runtime and the model directory.
    pub engine: EngineSettings,
    /// Input limits (checked before any decoding or inference).
    pub limits: LimitSettings,
    /// Pipeline behaviour.
    pub pipeline: PipelineSettings,
    /// Logging.
    pub logging: LoggingSettings,
    /// The queue service (`serve`); the `[worker]` section (the name deployments already use).
    pub worker: ServiceSettings,
    /// RabbitMQ.
    pub amqp: AmqpSettings,
    /// S3 or an S3-compatible store.
    pub s3: S3Settings,
    /// Prometheus metrics and health endpoints.
    pub metrics: MetricsSettings,
    /// Per-identity adapter tuning.
    pub tuning: TuningSettings,
    /// Personal-data rules.
    pub privacy: PrivacySettings,
    /// Provenance marking of outputs: C2PA signing credentials (the IPTC XMP is always written).
    pub provenance: crate::provenance::ProvenanceSettings,
    /// The warm-up edit before `/startupz` and the engine probe behind `/healthz`.
    pub health: HealthSettings,
    /// The in-memory cache of references' identity tokens (`crate::job::identity`).
    pub identity_cache: IdentityCacheSettings,
    /// Edit presets by name (`[presets.NAME]`): a job gives `"preset": "NAME"` instead of a prompt
    /// (`crate::job::preset` has the keys). Files and environment add to the default ones.
    #[serde(default)]
    pub presets: crate::job::Presets,
    /// OpenTelemetry trace export (off by default; also from the standard `OTEL_*` variables).
    pub telemetry: TelemetrySettings,
}

/// `[health]`: the warm-up edit each inference thread runs before the worker counts as started, and
/// when a failing engine makes `/healthz` fail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSettings {
    /// Denoising steps of the warm-up edit (a built-in synthetic input at the model's resolution),
    /// run by every inference thread before `/startupz` answers 200, and of the probe inference.
    pub warmup_steps: usize,
    /// Consecutive engine failures (`model_error` from a graph run or an inference thread) after
    /// which the thread runs a probe inference on the warm-up input; `/healthz` fails only when
    /// that probe fails too, so one job that always fails cannot restart pods in a loop.
    pub probe_after_failures: u32,
}

/// The in-memory identity cache: each job's reference embeddings and identity tokens, keyed by the
/// model and the reference images' digests, so repeat jobs for one person skip the face embedder and
/// the id former. Never written anywhere; `forget` does not reach it, so a forgotten identity leaves
/// a worker's cache within `ttl_secs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityCacheSettings {
    /// Identities kept per worker (0: no cache).
    pub capacity: usize,
    /// Seconds an identity is kept after it was computed (a hit does not extend it; 0: no cache).
    pub ttl_secs: u64,
}

/// Personal-data rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySettings {
    /// Refuse jobs without a consent reference (result code `consent_required`).
    pub require_consent: bool,
}

/// Per-identity adapter tuning (PVA's 40-step tuning through `adapter_step.onnx`); the defaults are
/// the paper's. The optimiser's rates default to the model's own (its manifest's `tuning` section):
/// the right rates depend on the model's weights (the paper's 1e-5 suits SD2's visual projections, the
/// small demo model is benchmarked at 1e-3), so set them here only to override the model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuningSettings {
    /// Optimisation steps.
    pub steps: usize,
    /// Samples per step; must equal the model's `tuning.batch_size`, which `adapter_step.onnx` fixes
    /// (the paper's batch 1 x gradient accumulation 2 is one batch of 2).
    pub batch_size: usize,
    /// AdamW learning rate of the `to_visual_q/k/v` projections (unset: the model's).
    pub lr_visual: Option<f32>,
    /// AdamW learning rate of the `<new1>` token embedding (unset: the model's).
    pub lr_token: Option<f32>,
    /// AdamW decoupled weight decay (unset: the model's).
    pub weight_decay: Option<f32>,
    /// Seed of the draws (targets, timesteps, noise): the same references and seed tune the same
    /// adapter.
    pub seed: u64,
    /// Tuned adapters kept in memory per worker (0: no cache).
    pub cache_capacity: usize,
    /// Bucket of stored adapters (empty: the first of `s3.output_buckets`).
    pub adapter_bucket: String,
    /// Key prefix of stored adapters: `{prefix}/{identity}/{model}-{version}/{reference set}.safetensors`.
    pub adapter_prefix: String,
}

/// The queue service (`[worker]` in the settings files and `PVA__WORKER__*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// Name of this worker in result messages and logs (empty: the host name).
    pub id: String,
    /// Jobs run at once (= inference threads, each with its own sessions); the AMQP prefetch is one more.
    pub concurrency: usize,
    /// On SIGTERM/SIGINT, how long in-flight jobs may take before they are returned to the queue.
    pub shutdown_deadline_secs: u64,
    /// Deliveries of one job before it is dead-lettered (the quorum queue's delivery limit).
    pub delivery_limit: u32,
    /// First retry delay for a transient failure; doubles per delivery up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    /// Largest retry delay.
    pub retry_max_ms: u64,
}

/// Metrics and health endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Address of the HTTP server with /metrics, /healthz and /readyz.
    pub listen: String,
}

/// Input limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest encoded image accepted, in bytes (checked before decoding).
    pub max_image_bytes: usize,
    /// Largest image accepted, in pixels (width x height from the header, checked before decoding).
    pub max_image_pixels: u64,
    /// Most denoising steps a job may ask for.
    pub max_steps: u32,
    /// Most outputs one job may ask for.
    pub max_num_outputs: u32,
    /// Longest prompt or negative prompt, in characters.
    pub max_prompt_chars: usize,
}

/// Pipeline behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSettings {
    /// Margin around a face box on each side, as a fraction of the box side, for the square crop.
    pub face_margin: f32,
    /// Width in pixels (of the original image) of the blend band when pasting the edit back.
    pub feather_px: u32,
    /// Refuse jobs whose prompt is empty.
    pub require_prompt: bool,
    /// Outputs with an identity score below this fail the identity check (0 disables it).
    pub min_identity_score: f32,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, readable text otherwise.
    Auto,
    /// One JSON object per line (production).
    Json,
    /// Human-readable text.
    Pretty,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSettings {
    /// `auto`, `json` or `pretty`.
    pub format: LogFormat,
    /// A tracing filter directive, e.g. `info` or `pva_worker=debug,info`.
    pub level: String,
}

impl From<&PipelineSettings> for crate::pipeline::inpaint::PipelineOptions {
    fn from(p: &PipelineSettings) -> Self {
        Self {
            face_margin: p.face_margin,
            feather_px: p.feather_px,
        }
    }
}

impl TuningSettings {
    /// The tuning options for a model: unset rates are the model's own (its manifest's `tuning`
    /// section), and the batch size must be the one the model's tuning graph fixes.
    pub fn options_for(
        &self,
        manifest: &crate::model::Manifest,
    ) -> Result<crate::pipeline::tune::TuneOptions, crate::pipeline::tune::TuneError> {
        let model = &manifest.tuning;
        crate::pipeline::tune::TuneOptions {
            steps: self.steps,
            hyper: crate::engine::TuningHyper {
                lr_visual: self.lr_visual.unwrap_or(model.lr_visual),
                lr_token: self.lr_token.unwrap_or(model.lr_token),
                weight_decay: self.weight_decay.unwrap_or(model.weight_decay),
            },
            seed: self.seed,
        }
        .checked(self.batch_size, manifest)
    }
}

impl From<&LimitSettings> for crate::job::Limits {
    fn from(l: &LimitSettings) -> Self {
        Self {
            max_image_bytes: l.max_image_bytes,
            max_image_pixels: l.max_image_pixels,
            max_steps: l.max_steps,
            max_num_outputs: l.max_num_outputs,
            max_prompt_chars: l.max_prompt_chars,
        }
    }
}

/// The job runner's options as `serve` uses them (S3 buckets); `worker_id` is left empty for the
/// command to fill in.
impl From<&Settings> for crate::job::RunnerOptions {
    fn from(s: &Settings) -> Self {
        Self {
            limits: (&s.limits).into(),
            rules: crate::job::JobRules {
                require_prompt: s.pipeline.require_prompt,
                require_consent: s.privacy.require_consent,
            },
            input_bucket: s.s3.input_bucket.clone(),
            input_prefixes: s.s3.input_prefixes.clone(),
            output_buckets: crate::job::OutputBuckets::Allowed(s.s3.output_buckets.clone()),
            adapter_bucket: s.adapter_bucket().to_string(),
            adapter_prefix: s.tuning.adapter_prefix.clone(),
            adapter_cache_capacity: s.tuning.cache_capacity,
            identity_cache_capacity: s.identity_cache.capacity,
            identity_cache_ttl: std::time::Duration::from_secs(s.identity_cache.ttl_secs),
            tuning_seed: s.tuning.seed,
            min_identity_score: s.pipeline.min_identity_score,
            presets: s.presets.clone(),
            worker_id: String::new(),
        }
    }
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME` and `OTEL_SDK_DISABLED` as the
/// `PVA__TELEMETRY__*` variables of the settings they set.
fn otel_settings(env: &[(String, String)]) -> Vec<(String, String)> {
    env.iter()
        .filter_map(|(k, v)| {
            let (key, value) = match k.as_str() {
                "OTEL_EXPORTER_OTLP_ENDPOINT" => ("ENDPOINT", v.clone()),
                "OTEL_SERVICE_NAME" => ("SERVICE_NAME", v.clone()),
                // As the specification says: only a (case-insensitive) `true` disables.
                "OTEL_SDK_DISABLED" => (
                    "DISABLED",
                    v.trim().eq_ignore_ascii_case("true").to_string(),
                ),
                _ => return None,
            };
            Some((format!("PVA__TELEMETRY__{key}"), value))
        })
        .collect()
}

impl Settings {
    /// The bucket a job's outputs go to when it names none: the first of `s3.output_buckets`.
    pub fn default_output_bucket(&self) -> Option<&str> {
        self.s3.output_buckets.first().map(String::as_str)
    }

    /// The bucket tuned adapters live in: `tuning.adapter_bucket`, else the default output bucket.
    pub fn adapter_bucket(&self) -> &str {
        if self.tuning.adapter_bucket.is_empty() {
            self.default_output_bucket().unwrap_or_default()
        } else {
            &self.tuning.adapter_bucket
        }
    }

    /// Loads the embedded defaults, then `file` if given, then `PVA__*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut pva: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("PVA__"))
            .cloned()
            .collect();
        // The standard OpenTelemetry variables, as the `PVA__TELEMETRY__*` ones they stand for (a
        // `PVA__` variable of the same setting wins).
        for (key, value) in otel_settings(&env) {
            pva.entry(key).or_insert(value);
        }
        let env = pva;
        builder = builder.add_source(
            config::Environment::with_prefix("PVA")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("s3.input_prefixes")
                .with_list_parse_key("s3.output_buckets")
                .source(Some(env)),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks ranges and consistency; the error names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, problem: &str| {
            Err(ConfigError::Invalid {
                setting,
                problem: problem.to_string(),
            })
        };
        if self.limits.max_image_bytes == 0 {
            return invalid("limits.max_image_bytes", "must be > 0");
        }
        if self.limits.max_image_pixels == 0 {
            return invalid("limits.max_image_pixels", "must be > 0");
        }
        if self.limits.max_steps == 0 || self.limits.max_steps > 1000 {
            return invalid("limits.max_steps", "must be in 1..=1000");
        }
        if self.limits.max_num_outputs == 0 || self.limits.max_num_outputs > 16 {
            return invalid("limits.max_num_outputs", "must be in 1..=16");
        }
        let limits: crate::job::Limits = (&self.limits).into();
        for (name, preset) in &self.presets {
            let named = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !named {
                let problem = format!("has `{name}`: a preset's name is 1-64 of A-Z a-z 0-9 _ -");
                return invalid("presets", &problem);
            }
            if let Some((key, problem)) = preset.problem(&limits) {
                return invalid("presets", &format!("`{name}`.{key} {problem}"));
            }
        }
        if !(0.0..=2.0).contains(&self.pipeline.face_margin) {
            return invalid("pipeline.face_margin", "must be in 0..=2");
        }
        if !(0.0..=1.0).contains(&self.pipeline.min_identity_score) {
            return invalid("pipeline.min_identity_score", "must be in 0..=1");
        }
        if self.engine.cuda_device < 0 {
            return invalid("engine.cuda_device", "must be >= 0");
        }
        if self.worker.concurrency == 0 || self.worker.concurrency > 64 {
            return invalid("worker.concurrency", "must be in 1..=64");
        }
        if self.health.warmup_steps == 0 || self.health.warmup_steps > 50 {
            return invalid("health.warmup_steps", "must be in 1..=50");
        }
        if self.health.probe_after_failures == 0 {
            return invalid("health.probe_after_failures", "must be > 0");
        }
        if self.worker.delivery_limit == 0 {
            return invalid("worker.delivery_limit", "must be > 0");
        }
        if self.worker.retry_initial_ms > self.worker.retry_max_ms {
            return invalid("worker.retry_initial_ms", "must be <= worker.retry_max_ms");
        }
        if self.amqp.reconnect_initial_ms == 0
            || self.amqp.reconnect_initial_ms > self.amqp.reconnect_max_ms
        {
            return invalid(
                "amqp.reconnect_initial_ms",
                "must be in 1..=amqp.reconnect_max_ms",
            );
        }
        for (setting, name) in [
            ("amqp.job_queue", &self.amqp.job_queue),
            ("amqp.dead_letter_exchange", &self.amqp.dead_letter_exchange),
            ("amqp.dead_letter_queue", &self.amqp.dead_letter_queue),
            ("amqp.result_exchange", &self.amqp.result_exchange),
            ("amqp.results_queue", &self.amqp.results_queue),
            (
                "amqp.event_routing_key_prefix",
                &self.amqp.event_routing_key_prefix,
            ),
        ] {
            if name.trim().is_empty() {
                return invalid(setting, "must not be empty");
            }
        }
        self.validate_tls()?;
        if self.s3.max_attempts == 0 {
            return invalid("s3.max_attempts", "must be > 0");
        }
        if self.s3.sse == Sse::AwsKms && self.s3.sse_kms_key_id.is_empty() {
            return invalid("s3.sse_kms_key_id", "is required when s3.sse = \"aws_kms\"");
        }
        if self.s3.access_key_id.is_empty() != self.s3.secret_access_key.is_empty() {
            return invalid(
                "s3.secret_access_key",
                "set both s3.access_key_id and s3.secret_access_key, or neither",
            );
        }
        if self.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid("metrics.listen", "must be an address like 0.0.0.0:9090");
        }
        if self.tuning.steps == 0 || self.tuning.steps > 1000 {
            return invalid("tuning.steps", "must be in 1..=1000");
        }
        if self.tuning.batch_size == 0 {
            return invalid("tuning.batch_size", "must be > 0");
        }
        for (setting, value) in [
            ("tuning.lr_visual", self.tuning.lr_visual),
            ("tuning.lr_token", self.tuning.lr_token),
            ("tuning.weight_decay", self.tuning.weight_decay),
        ] {
            if value.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                return invalid(setting, "must be finite and >= 0");
            }
        }
        if self.tuning.adapter_prefix.starts_with('/') {
            return invalid("tuning.adapter_prefix", "must not start with `/`");
        }
        if self.identity_cache.ttl_secs > 86_400 {
            return invalid(
                "identity_cache.ttl_secs",
                "must be at most 86400 (a day): forget takes effect in the cache only when it ends",
            );
        }
        if self.logging.level.trim().is_empty() {
            return invalid("logging.level", "must not be empty");
        }
        if let Some((setting, problem)) = self.telemetry.problem() {
            return invalid(setting, &problem);
        }
        Ok(())
    }
}

impl Settings {
    /// TLS files only where TLS is used: a CA bundle or client certificate with a plain `amqp://`
    /// URL or `http://` endpoint would be silently unused, so it is refused; the client
    /// certificate needs its key. The files themselves are read when a client is built.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let set = |path: &Path| !path.as_os_str().is_empty();
        let invalid = |setting, problem: &str| {
            Err(ConfigError::Invalid {
                setting,
                problem: problem.to_string(),
            })
        };
        let a = &self.amqp;
        if set(&a.tls_cert_file) != set(&a.tls_key_file) {
            return invalid(
                "amqp.tls_key_file",
                "set both amqp.tls_cert_file and amqp.tls_key_file, or neither",
            );
        }
        let amqps = a
            .url
            .expose()
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("amqps://"));
        for (setting, path) in [
            ("amqp.tls_ca_file", &a.tls_ca_file),
            ("amqp.tls_cert_file", &a.tls_cert_file),
        ] {
            if set(path) && !amqps {
                // NOTE: the URL holds the password: say what it lacks, never what it is.
                return invalid(setting, "is set but amqp.url is not an amqps:// URL");
            }
        }
        let https = self
            .s3
            .endpoint
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
        if set(&self.s3.tls_ca_file) && !(https || self.s3.endpoint.is_empty()) {
            return invalid(
                "s3.tls_ca_file",
                "is set but s3.endpoint is not an https:// URL",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn embedded_defaults_load_and_validate() {
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        assert_eq!(s.engine.execution_provider, ExecutionProvider::Cpu);
        assert_eq!(s.engine.model_dir, PathBuf::from("models/demo"));
        assert_eq!(s.engine.face_model_dir, PathBuf::from("models/faces"));
        assert!(s.pipeline.require_prompt);
    }

    #[test]
    fn file_then_environment_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.toml");
        std::fs::write(
            &file,
            "[engine]\nintra_threads = 3\nexecution_provider = \"cuda\"\n",
        )
        .unwrap();
        let s = Settings::load_with_env(
            Some(&file),
            env(&[("PVA__ENGINE__INTRA_THREADS", "5"), ("OTHER", "x")]),
        )
        .unwrap();
        assert_eq!(s.engine.intra_threads, 5, "environment beats the file");
        assert_eq!(
            s.engine.execution_provider,
            ExecutionProvider::Cuda,
            "file beats defaults"
        );
    }

    #[test]
    fn lists_come_from_comma_separated_environment_values() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("PVA__S3__OUTPUT_BUCKETS", "a-bucket,b-bucket"),
                ("PVA__S3__INPUT_PREFIXES", "in/"),
            ]),
        )
        .unwrap();
        assert_eq!(s.s3.output_buckets, vec!["a-bucket", "b-bucket"]);
        assert_eq!(s.s3.input_prefixes, vec!["in/"]);
    }

    #[test]
    fn invalid_values_name_the_setting() {
        let err =
            Settings::load_with_env(None, env(&[("PVA__LIMITS__MAX_STEPS", "0")])).unwrap_err();
        assert!(err.to_string().contains("limits.max_steps"), "{err}");
        let err = Settings::load_with_env(None, env(&[("PVA__ENGINE__EXECUTION_PROVIDER", "tpu")]))
            .unwrap_err();
        assert!(err.to_string().contains("execution_provider"), "{err}");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("PVA__AMQP__URL", "amqp://u:hunter2@h:5672/%2f"),
                ("PVA__S3__ACCESS_KEY_ID", "AKIAEXAMPLE"),
                ("PVA__S3__SECRET_ACCESS_KEY", "wJalrXUtnFEMI"),
            ]),
        )
        .unwrap();
        assert_eq!(s.s3.secret_access_key.expose(), "wJalrXUtnFEMI");
        let debug = format!("{s:?}");
        for secret in ["hunter2", "AKIAEXAMPLE", "wJalrXUtnFEMI"] {
            assert!(!debug.contains(secret), "{secret} leaked into {debug}");
        }
    }

    #[test]
    fn optional_settings_are_unset_by_default_and_each_can_be_set() {
        let tuning = |s: &Settings| [s.tuning.lr_visual, s.tuning.lr_token, s.tuning.weight_decay];
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        assert_eq!(tuning(&s), [None; 3]);
        for (i, key) in OPTIONAL_SETTINGS.iter().enumerate() {
            assert!(
                DEFAULT_TOML.contains(&format!("# {}", key.split('.').nth(1).unwrap())),
                "{key}"
            );
            let var = format!("PVA__{}", key.to_uppercase().replace('.', "__"));
            let s = Settings::load_with_env(None, vec![(var.clone(), "0.25".to_string())]).unwrap();
            let mut want = [None; 3];
            want[i] = Some(0.25);
            assert_eq!(tuning(&s), want, "{var}");
            let err = Settings::load_with_env(None, vec![(var, "-1".to_string())]).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn tls_files_are_accepted_only_where_tls_is_used() {
        let load = |pairs: &[(&str, &str)]| Settings::load_with_env(None, env(pairs));
        let tls = [
            ("PVA__AMQP__URL", "amqps://u:hunter2@rabbit:5671/%2f"),
            ("PVA__AMQP__TLS_CA_FILE", "/tls/amqp-ca.pem"),
            ("PVA__AMQP__TLS_CERT_FILE", "/tls/client.pem"),
            ("PVA__AMQP__TLS_KEY_FILE", "/tls/client.key"),
            ("PVA__S3__ENDPOINT", "https://minio:9000"),
            ("PVA__S3__TLS_CA_FILE", "/tls/s3-ca.pem"),
        ];
        let s = load(&tls).unwrap();
        assert_eq!(s.amqp.tls_ca_file, PathBuf::from("/tls/amqp-ca.pem"));
        assert_eq!(s.amqp.tls_cert_file, PathBuf::from("/tls/client.pem"));
        assert_eq!(s.amqp.tls_key_file, PathBuf::from("/tls/client.key"));
        assert_eq!(s.s3.tls_ca_file, PathBuf::from("/tls/s3-ca.pem"));
        let defaults = load(&[]).unwrap();
        assert!(defaults.amqp.tls_ca_file.as_os_str().is_empty());
        assert!(defaults.s3.tls_ca_file.as_os_str().is_empty());
        for (change, setting) in [
            (
                ("PVA__AMQP__URL", "amqp://u:hunter2@rabbit:5672/%2f"),
                "amqp.tls_ca_file",
            ),
            (("PVA__AMQP__TLS_KEY_FILE", ""), "amqp.tls_key_file"),
            (("PVA__S3__ENDPOINT", "http://minio:9000"), "s3.tls_ca_file"),
        ] {
            let mut pairs = tls.to_vec();
            pairs.retain(|(k, _)| *k != change.0);
            pairs.push(change);
            let err = load(&pairs).unwrap_err().to_string();
            assert!(err.contains(setting), "{change:?}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn telemetry_is_off_by_default_and_set_by_the_standard_otel_variables() {
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        assert!(!s.telemetry.exports());
        assert_eq!(s.telemetry.service_name, "pva-worker");
        let s = Settings::load_with_env(
            None,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                ("OTEL_SERVICE_NAME", "pva-gpu"),
            ]),
        )
        .unwrap();
        assert!(s.telemetry.exports());
        assert_eq!(s.telemetry.traces_url(), "http://collector:4318/v1/traces");
        assert_eq!(s.telemetry.service_name, "pva-gpu");
        // OTEL_SDK_DISABLED=true turns export off; a PVA__ variable beats the OTEL_ one.
        let s = Settings::load_with_env(
            None,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("OTEL_SDK_DISABLED", "TRUE"),
                ("OTEL_SERVICE_NAME", "pva-gpu"),
                ("PVA__TELEMETRY__SERVICE_NAME", "pva-own"),
            ]),
        )
        .unwrap();
        assert!(!s.telemetry.exports());
        assert_eq!(s.telemetry.service_name, "pva-own");
        let err = Settings::load_with_env(
            None,
            env(&[("PVA__TELEMETRY__ENDPOINT", "https://collector:4318")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("telemetry.endpoint"), "{err}");
    }

    #[test]
    fn unknown_keys_in_a_file_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.toml");
        std::fs::write(&file, "[engine]\nintra_thread = 3\n").unwrap();
        let err = Settings::load_with_env(Some(&file), env(&[])).unwrap_err();
        assert!(err.to_string().contains("intra_thread"), "{err}");
    }

    #[test]
    fn settings_become_options_only_when_they_fit_the_model() {
        use crate::engine::TuningHyper;
        use crate::pipeline::tune::TuneOptions;
        let manifest = crate::model::Manifest::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny"),
        )
        .unwrap();
        let settings = Settings::load_with_env(None, Vec::new()).unwrap();
        let tuning = settings.tuning.clone();
        let options = tuning.options_for(&manifest).unwrap();
        // Unset rates are the model's: the tiny model records the paper's.
        assert_eq!(options, TuneOptions::from_manifest(&manifest, 0));
        assert_eq!(options.steps, 40);
        assert_eq!(
            options.hyper,
            TuningHyper {
                lr_visual: 1e-5,
                lr_token: 1e-3,
                weight_decay: 0.01
            }
        );
        // A model that records other rates gets them; a rate set in the settings overrides the model's.
        let mut own = manifest.clone();
        own.tuning.lr_visual = 1e-3;
        let options = tuning.options_for(&own).unwrap();
        assert_eq!(
            (options.hyper.lr_visual, options.hyper.lr_token),
            (1e-3, 1e-3)
        );
        let mut set = tuning.clone();
        set.lr_visual = Some(2e-4);
        set.weight_decay = Some(0.0);
        let options = set.options_for(&own).unwrap();
        assert_eq!(
            options.hyper,
            TuningHyper {
                lr_visual: 2e-4,
                lr_token: 1e-3,
                weight_decay: 0.0
            }
        );
        let mut other = tuning.clone();
        other.batch_size = 1;
        let err = other.options_for(&manifest).unwrap_err();
        assert!(err.to_string().contains("batch 2"), "{err}");
        let mut bad = tuning.clone();
        bad.lr_token = Some(f32::NAN);
        assert!(bad.options_for(&manifest).is_err());
        bad = tuning.clone();
        bad.steps = 0;
        assert!(bad.options_for(&manifest).is_err());
    }
}
