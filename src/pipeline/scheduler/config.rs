//! The scheduler's settings (the manifest's `scheduler` object and the choice of DDIM or
//! DPM-Solver++ 2M) and its errors.

use serde::{Deserialize, Serialize};

/// The beta schedule of the training noise process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum BetaSchedule {
    /// Betas spaced linearly from `beta_start` to `beta_end`.
    #[serde(rename = "linear")]
    Linear,
    /// Square roots of the betas spaced linearly (Stable Diffusion's schedule).
    #[serde(rename = "scaled_linear")]
    ScaledLinear,
    /// The cosine schedule of improved DDPM (`beta_start`/`beta_end` unused).
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// What the denoising model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum PredictionType {
    /// The noise that was added (the PVA UNet's output).
    #[serde(rename = "epsilon")]
    Epsilon,
    /// The velocity `sqrt(acp) * noise - sqrt(1 - acp) * x0`.
    #[serde(rename = "v_prediction")]
    VPrediction,
    /// The clean sample itself.
    #[serde(rename = "sample")]
    Sample,
}

/// How the inference timesteps are spread over the training timesteps (Table 2 of
/// arXiv 2305.08891, as diffusers names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum TimestepSpacing {
    /// Multiples of `num_train_timesteps / steps` counted from 0, plus `steps_offset`.
    #[serde(rename = "leading")]
    Leading,
    /// Evenly spaced from `num_train_timesteps - 1` down to 0, rounded.
    #[serde(rename = "linspace")]
    Linspace,
    /// Multiples counted down from `num_train_timesteps`, minus one.
    #[serde(rename = "trailing")]
    Trailing,
}

/// Mirrors the manifest's `"scheduler"` object (models/CONTRACT.md): the training noise schedule
/// and how inference samples it. Unknown keys are refused, since any extra diffusers option would
/// change the numbers.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Number of timesteps the model was trained with (1000 for Stable Diffusion).
    pub num_train_timesteps: usize,
    /// First beta of the schedule.
    pub beta_start: f64,
    /// Last beta of the schedule.
    pub beta_end: f64,
    /// Shape of the beta schedule.
    pub beta_schedule: BetaSchedule,
    /// What the model's output means.
    pub prediction_type: PredictionType,
    /// Added to every `leading` timestep.
    pub steps_offset: usize,
    /// DDIM's last step goes to `alphas_cumprod = 1` (true) or to `alphas_cumprod[0]` (false).
    pub set_alpha_to_one: bool,
    /// How inference timesteps are chosen.
    pub timestep_spacing: TimestepSpacing,
}

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
