//! Every setting of the worker, in one struct.
//!
//! Layering: `config/default.toml` (embedded in the binary, so a bare binary runs) -> an optional
//! file -> environment variables `PVA__SECTION__KEY`. Nothing else in the crate reads the environment.
//! [`Settings::validate`] runs at start and names the setting that is wrong.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The embedded defaults (also the documented reference of every key).
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

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
}

/// Which execution provider runs the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    /// ONNX Runtime's CPU provider.
    Cpu,
    /// CUDA, registered with error-on-failure: a GPU worker never falls back to CPU silently.
    Cuda,
}

/// ONNX Runtime and the model directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// Model directory holding `manifest.json` and the graphs (relative paths are relative to the
    /// working directory).
    pub model_dir: PathBuf,
    /// Path of `libonnxruntime.so` (1.31), as laid out by `scripts/setup-ort.sh`.
    pub ort_library: PathBuf,
    /// `cpu` or `cuda`.
    pub execution_provider: ExecutionProvider,
    /// CUDA device ordinal when `execution_provider = "cuda"`.
    pub cuda_device: i32,
    /// Threads inside one operator (0 = ONNX Runtime's default: one per core).
    pub intra_threads: usize,
    /// Threads across operators (0 = ONNX Runtime's default).
    pub inter_threads: usize,
    /// Check every file's sha256 against the manifest at load (off only for huge graphs on a trusted volume).
    pub verify_hashes: bool,
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

impl Settings {
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
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("PVA__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("PVA")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
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
        if !(0.0..=2.0).contains(&self.pipeline.face_margin) {
            return invalid("pipeline.face_margin", "must be in 0..=2");
        }
        if !(0.0..=1.0).contains(&self.pipeline.min_identity_score) {
            return invalid("pipeline.min_identity_score", "must be in 0..=1");
        }
        if self.engine.cuda_device < 0 {
            return invalid("engine.cuda_device", "must be >= 0");
        }
        if self.logging.level.trim().is_empty() {
            return invalid("logging.level", "must not be empty");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(s.engine.model_dir, PathBuf::from("models/tiny"));
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
    fn invalid_values_name_the_setting() {
        let err =
            Settings::load_with_env(None, env(&[("PVA__LIMITS__MAX_STEPS", "0")])).unwrap_err();
        assert!(err.to_string().contains("limits.max_steps"), "{err}");
        let err = Settings::load_with_env(None, env(&[("PVA__ENGINE__EXECUTION_PROVIDER", "tpu")]))
            .unwrap_err();
        assert!(err.to_string().contains("execution_provider"), "{err}");
    }

    #[test]
    fn unknown_keys_in_a_file_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.toml");
        std::fs::write(&file, "[engine]\nintra_thread = 3\n").unwrap();
        let err = Settings::load_with_env(Some(&file), env(&[])).unwrap_err();
        assert!(err.to_string().contains("intra_thread"), "{err}");
    }
}
