//! The choice of DDIM or DPM-Solver++ 2M and the scheduler's errors (the manifest's `scheduler`
//! object is `crate::model::scheduler`).

use serde::{Deserialize, Serialize};

pub use crate::model::scheduler::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};

/// Which sampler runs the denoising loop. Serialised as `{"type": "ddim", "eta": 0.0}` or
/// `{"type": "dpmpp_2m"}`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type")]
pub enum SchedulerKind {
    /// DDIM; `eta` in `[0, 1]` scales the fresh noise of each step (0 = deterministic DDIM,
    /// 1 = DDPM-like).
    #[serde(rename = "ddim")]
    Ddim {
        /// Weight of the variance noise.
        #[serde(default)]
        eta: f32,
    },
    /// DPM-Solver++ 2M (multistep, second order, first order on the first and last step).
    #[serde(rename = "dpmpp_2m")]
    DpmSolverPlusPlus,
}

/// Why a scheduler could not be built or could not take a step.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchedulerError {
    /// Zero inference steps were asked for.
    #[error("num_inference_steps must be at least 1")]
    ZeroSteps,
    /// More inference steps than training timesteps.
    #[error("num_inference_steps {steps} exceeds num_train_timesteps {train}")]
    TooManySteps {
        /// Steps asked for.
        steps: usize,
        /// The config's `num_train_timesteps`.
        train: usize,
    },
    /// The config cannot describe a noise schedule.
    #[error("invalid scheduler config: {0}")]
    InvalidConfig(String),
    /// DDIM's `eta` is not a number in `[0, 1]`.
    #[error("DDIM eta {0} is outside [0, 1]")]
    InvalidEta(f32),
    /// The spacing and step count give timesteps diffusers itself mishandles (outside the
    /// training range or repeated), which would silently produce garbage.
    #[error("{steps} steps with {spacing:?} spacing give unusable timesteps {timesteps:?}")]
    DegenerateSchedule {
        /// Steps asked for.
        steps: usize,
        /// The config's spacing.
        spacing: TimestepSpacing,
        /// The timesteps diffusers would use.
        timesteps: Vec<i64>,
    },
    /// A tensor's length differs from the sample's.
    #[error("{what} has {got} values but the sample has {expected}")]
    LengthMismatch {
        /// Which argument.
        what: &'static str,
        /// The sample's length.
        expected: usize,
        /// The argument's length.
        got: usize,
    },
    /// The step index is past the last step.
    #[error("step {index} is out of range for {steps} steps")]
    StepOutOfRange {
        /// The index given.
        index: usize,
        /// The number of steps.
        steps: usize,
    },
    /// A multistep solver was stepped out of order.
    #[error("DPM-Solver++ steps must run in order: expected step {expected}, got {got}")]
    OutOfOrder {
        /// The next step the solver can take.
        expected: usize,
        /// The index given.
        got: usize,
    },
    /// DDIM with `eta > 0` was stepped without its variance noise.
    #[error("DDIM with eta > 0 needs a variance noise tensor at every step")]
    MissingVarianceNoise,
}
