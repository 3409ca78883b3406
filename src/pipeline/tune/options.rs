//! The settings of a tuning run ([`TuneOptions`], from the manifest or the worker's
//! [`TuningRequest`]) and why a run fails ([`TuneError`]).

use super::super::face;
use super::super::inpaint::PipelineError;
use super::super::mask::MaskError;
use crate::engine::{EngineError, Manifest, TuningHyper};

/// Why an identity could not be tuned.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// A reference image does not fit (names which and why).
    #[error("{what}: {problem}")]
    Input {
        /// Which input, e.g. `references[1]`.
        what: String,
        /// What is wrong.
        problem: String,
    },
    /// A face box could not be applied.
    #[error("{what}: {source}")]
    Face {
        /// Which input.
        what: String,
        /// The geometry error.
        source: face::FaceError,
    },
    /// The tuning settings do not fit the model.
    #[error("tuning settings: {0}")]
    Settings(String),
    /// The loss became NaN or infinite: the adapter is unusable and is not returned.
    #[error("tuning diverged: the loss at step {step} is {loss}")]
    Diverged {
        /// 1-based step.
        step: usize,
        /// The loss.
        loss: f32,
    },
    /// The leave-one-out mask could not be built (a model whose resolution has no face region).
    #[error("mask: {0}")]
    Mask(#[from] MaskError),
    /// The prompt could not be encoded.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// A graph failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What one tuning run does: step count, AdamW settings, and the seed of its draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TuneOptions {
    /// Optimisation steps.
    pub steps: usize,
    /// Learning rates and weight decay.
    pub hyper: TuningHyper,
    /// Seed of [`SeededDraws`](super::SeededDraws).
    pub seed: u64,
}

/// The tuning a worker asks for (its `[tuning]` settings): unset rates are the model's own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TuningRequest {
    /// Optimisation steps.
    pub steps: usize,
    /// Samples per step (must equal the model's, which its tuning graph fixes).
    pub batch_size: usize,
    /// Learning rate of the visual projections; `None`: the model's.
    pub lr_visual: Option<f32>,
    /// Learning rate of the `<new1>` token; `None`: the model's.
    pub lr_token: Option<f32>,
    /// AdamW weight decay; `None`: the model's.
    pub weight_decay: Option<f32>,
    /// Seed of the draws.
    pub seed: u64,
}

impl TuneOptions {
    /// The manifest's tuning defaults (the paper's values for the committed models).
    pub fn from_manifest(manifest: &Manifest, seed: u64) -> Self {
        let t = &manifest.tuning;
        Self {
            steps: t.steps,
            hyper: TuningHyper {
                lr_visual: t.lr_visual,
                lr_token: t.lr_token,
                weight_decay: t.weight_decay,
            },
            seed,
        }
    }

    /// The worker's `[tuning]` settings, checked against the model (its graph fixes the batch size).
    pub fn from_settings(settings: &TuningRequest, manifest: &Manifest) -> Result<Self, TuneError> {
        if settings.batch_size != manifest.tuning.batch_size {
            return Err(TuneError::Settings(format!(
                "tuning.batch_size is {}, but model `{}` tunes with batch {} (fixed in its {} graph)",
                settings.batch_size,
                manifest.name,
                manifest.tuning.batch_size,
                crate::model::manifest::TUNING_GRAPH
            )));
        }
        let options = Self {
            steps: settings.steps,
            // Unset rates are the model's own (its manifest's tuning section).
            hyper: TuningHyper {
                lr_visual: settings.lr_visual.unwrap_or(manifest.tuning.lr_visual),
                lr_token: settings.lr_token.unwrap_or(manifest.tuning.lr_token),
                weight_decay: settings
                    .weight_decay
                    .unwrap_or(manifest.tuning.weight_decay),
            },
            seed: settings.seed,
        };
        options.validate()?;
        Ok(options)
    }

    pub(super) fn validate(&self) -> Result<(), TuneError> {
        if self.steps == 0 {
            return Err(TuneError::Settings("steps must be >= 1".into()));
        }
        let h = &self.hyper;
        for (name, value) in [
            ("lr_visual", h.lr_visual),
            ("lr_token", h.lr_token),
            ("weight_decay", h.weight_decay),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(TuneError::Settings(format!(
                    "{name} must be finite and >= 0, got {value}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_manifest() -> Manifest {
        Manifest::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny"))
            .unwrap()
    }

    #[test]
    fn settings_become_options_only_when_they_fit_the_model() {
        let manifest = tiny_manifest();
        let settings = crate::config::Settings::load_with_env(None, Vec::new()).unwrap();
        let tuning = TuningRequest::from(&settings.tuning);
        let options = TuneOptions::from_settings(&tuning, &manifest).unwrap();
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
        let options = TuneOptions::from_settings(&tuning, &own).unwrap();
        assert_eq!(
            (options.hyper.lr_visual, options.hyper.lr_token),
            (1e-3, 1e-3)
        );
        let mut set = tuning;
        set.lr_visual = Some(2e-4);
        set.weight_decay = Some(0.0);
        let options = TuneOptions::from_settings(&set, &own).unwrap();
        assert_eq!(
            options.hyper,
            TuningHyper {
                lr_visual: 2e-4,
                lr_token: 1e-3,
                weight_decay: 0.0
            }
        );
        let mut other = tuning;
        other.batch_size = 1;
        let err = TuneOptions::from_settings(&other, &manifest).unwrap_err();
        assert!(err.to_string().contains("batch 2"), "{err}");
        let mut bad = tuning;
        bad.lr_token = Some(f32::NAN);
        assert!(TuneOptions::from_settings(&bad, &manifest).is_err());
        bad = tuning;
        bad.steps = 0;
        assert!(TuneOptions::from_settings(&bad, &manifest).is_err());
    }
}
