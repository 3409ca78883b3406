//! The settings of a tuning run ([`TuneOptions`], from the manifest or the worker's `[tuning]`
//! settings, which the config layer merges with the manifest) and why a run fails ([`TuneError`]).

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

    /// These options, checked against the model: `batch_size` (the worker's) must be the one the
    /// model's tuning graph fixes, the steps at least one, the rates finite and non-negative.
    pub fn checked(self, batch_size: usize, manifest: &Manifest) -> Result<Self, TuneError> {
        if batch_size != manifest.tuning.batch_size {
            return Err(TuneError::Settings(format!(
                "tuning.batch_size is {batch_size}, but model `{}` tunes with batch {} (fixed in its {} graph)",
                manifest.name,
                manifest.tuning.batch_size,
                crate::model::manifest::TUNING_GRAPH
            )));
        }
        self.validate()?;
        Ok(self)
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
