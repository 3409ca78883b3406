//! The manifest's `scheduler` object: the training noise schedule and how inference samples it
//! (models/CONTRACT.md). Plain data; the samplers live in the pipeline's `scheduler` module.

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
