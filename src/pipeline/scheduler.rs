//! Denoising schedulers: DDIM (with `eta`) and DPM-Solver++ 2M, reproducing diffusers 0.42.1's
//! `DDIMScheduler` and `DPMSolverMultistepScheduler` (`algorithm_type="dpmsolver++"`,
//! `solver_order=2`, `lower_order_final=True`, final sigma zero) built from the manifest's
//! `scheduler` object (models/CONTRACT.md).
//!
//! Pure arithmetic on flat `f32` slices: no graph runtime, no I/O. Every quantity is computed with
//! the precision diffusers uses (float32 torch tensors, the training schedule's cumulative product
//! accumulated in f64 as torch does on the CPU, the timesteps in numpy's f64), operation for
//! operation, so a whole trajectory reproduces diffusers' to float32 rounding.
//!
//! NOTE: two deliberate limits. DDIM never clips its x0 prediction: diffusers' `DDIMScheduler`
//! defaults to `clip_sample=True`, so the Python side must build it with `clip_sample=False` (as
//! SD-2's own scheduler config does). And agreement is to rounding, not bit for bit: torch's CPU
//! `sqrt`, `log` and `exp` are not correctly rounded (an ulp off for about one input in six,
//! depending on the CPU), Rust's are; over 50 steps that stays below 1e-5 relative.

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

/// `alphas_cumprod` of the training schedule, one per training timestep: exactly diffusers'
/// float32 values, widened to f64 (used by the tuning loop too).
pub fn alphas_cumprod(cfg: &SchedulerConfig) -> Vec<f64> {
    alphas_cumprod_f32(cfg).into_iter().map(f64::from).collect()
}

/// The training betas as diffusers builds them in float32.
fn betas(cfg: &SchedulerConfig) -> Vec<f32> {
    let n = cfg.num_train_timesteps;
    match cfg.beta_schedule {
        BetaSchedule::Linear => torch_linspace_f32(cfg.beta_start as f32, cfg.beta_end as f32, n),
        BetaSchedule::ScaledLinear => {
            torch_linspace_f32(cfg.beta_start.sqrt() as f32, cfg.beta_end.sqrt() as f32, n)
                .into_iter()
                .map(|b| b * b)
                .collect()
        }
        BetaSchedule::SquaredcosCapV2 => {
            let alpha_bar = |t: f64| {
                let c = ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
                c * c
            };
            (0..n)
                .map(|i| {
                    let t1 = i as f64 / n as f64;
                    let t2 = (i + 1) as f64 / n as f64;
                    (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                })
                .collect()
        }
    }
}

/// `torch.linspace(start, end, steps, dtype=float32)` on the CPU.
// NOTE: torch fills the first half forwards from `start` and the second half backwards from
// `end`, each element with one fused multiply-add; plain `start + step * i` differs in the last
// bit for about one beta in seven.
fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// The cumulative product of `1 - beta` in float32.
// NOTE: torch's CPU cumprod accumulates float32 inputs in f64 and rounds each output, so the
// running product is kept in f64 here too.
fn alphas_cumprod_f32(cfg: &SchedulerConfig) -> Vec<f32> {
    let mut acc = 1.0f64;
    betas(cfg)
        .into_iter()
        .map(|beta| {
            acc *= f64::from(1.0 - beta);
            acc as f32
        })
        .collect()
}

/// `np.linspace(0, stop, num)`: `i * (stop / (num - 1))`, the last point exactly `stop`.
fn np_linspace_from_zero(stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![0.0];
    }
    let step = stop / (num - 1) as f64;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64 * step).collect();
    y[num - 1] = stop;
    y
}

/// `np.arange(start, 0, -step)` for a float step: numpy's length `ceil(-start / -step)` and its
/// fill `start + i * ((start - step) - start)`.
fn np_arange_down(start: f64, step: f64) -> Vec<f64> {
    let len = ((0.0 - start) / -step).ceil().max(0.0) as usize;
    let delta = (start + -step) - start;
    (0..len).map(|i| start + i as f64 * delta).collect()
}

/// `DDIMScheduler.set_timesteps`: the timesteps for `n` steps, before any range check.
fn ddim_timesteps(cfg: &SchedulerConfig, n: usize) -> Vec<i64> {
    let train = cfg.num_train_timesteps;
    match cfg.timestep_spacing {
        TimestepSpacing::Linspace => np_linspace_from_zero((train - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|t| t.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = train / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio + cfg.steps_offset) as i64)
                .collect()
        }
        TimestepSpacing::Trailing => np_arange_down(train as f64, train as f64 / n as f64)
            .into_iter()
            .map(|t| t.round_ties_even() as i64 - 1)
            .collect(),
    }
}

/// `DPMSolverMultistepScheduler.set_timesteps`: `n + 1` points with the last (t = 0) dropped.
fn dpm_timesteps(cfg: &SchedulerConfig, n: usize) -> Vec<i64> {
    let train = cfg.num_train_timesteps;
    match cfg.timestep_spacing {
        TimestepSpacing::Linspace => np_linspace_from_zero((train - 1) as f64, n + 1)
            .into_iter()
            .skip(1)
            .rev()
            .map(|t| t.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = train / (n + 1);
            (1..=n)
                .rev()
                .map(|i| (i * ratio + cfg.steps_offset) as i64)
                .collect()
        }
        // Identical to DDIM's: `last_timestep` is `num_train_timesteps` without lambda clipping.
        TimestepSpacing::Trailing => ddim_timesteps(cfg, n),
    }
}

/// `(alpha_t, sigma_t)` of a DPM-Solver sigma (`sqrt((1 - acp) / acp)`), in float32 as diffusers'
/// `_sigma_to_alpha_sigma_t`.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// Half-log-SNR `log(alpha) - log(sigma)`; `+inf` at sigma 0.
fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

/// DDIM's per-run constants.
#[derive(Debug, Clone)]
struct Ddim {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    /// `num_train_timesteps / num_inference_steps`: diffusers' distance to the previous timestep,
    /// whatever the spacing.
    step_ratio: i64,
    eta: f32,
}

/// DPM-Solver++ 2M's sigmas and multistep state.
#[derive(Debug, Clone)]
struct DpmSolverPlusPlus {
    /// One sigma per step plus the final 0.
    sigmas: Vec<f32>,
    next_step: usize,
    /// The data prediction of the previous step (empty before the first).
    previous_x0: Vec<f32>,
    /// The data prediction of the current step (a reused buffer).
    x0: Vec<f32>,
}

#[derive(Debug, Clone)]
enum Solver {
    Ddim(Ddim),
    DpmSolverPlusPlus(DpmSolverPlusPlus),
}

/// A scheduler set up for one denoising run of a fixed number of steps.
#[derive(Debug, Clone)]
pub struct Scheduler {
    prediction_type: PredictionType,
    timesteps: Vec<i64>,
    solver: Solver,
}

impl Scheduler {
    /// Builds the scheduler for `num_inference_steps` steps, as diffusers' `from_config` followed by
    /// `set_timesteps`. Refuses what diffusers would mishandle: zero steps, more steps than
    /// training timesteps, timesteps outside `[0, num_train_timesteps)` or repeated.
    pub fn new(
        cfg: &SchedulerConfig,
        kind: SchedulerKind,
        num_inference_steps: usize,
    ) -> Result<Self, SchedulerError> {
        validate(cfg)?;
        let train = cfg.num_train_timesteps;
        let steps = num_inference_steps;
        if steps == 0 {
            return Err(SchedulerError::ZeroSteps);
        }
        if steps > train {
            return Err(SchedulerError::TooManySteps { steps, train });
        }
        let timesteps = match kind {
            SchedulerKind::Ddim { .. } => ddim_timesteps(cfg, steps),
            SchedulerKind::DpmSolverPlusPlus => dpm_timesteps(cfg, steps),
        };
        let in_range = timesteps.iter().all(|&t| (0..train as i64).contains(&t));
        let decreasing = timesteps.windows(2).all(|w| w[0] > w[1]);
        if !in_range || !decreasing || timesteps.len() != steps {
            return Err(SchedulerError::DegenerateSchedule {
                steps,
                spacing: cfg.timestep_spacing,
                timesteps,
            });
        }

        let acp = alphas_cumprod_f32(cfg);
        let solver = match kind {
            SchedulerKind::Ddim { eta } => {
                if !(0.0..=1.0).contains(&eta) {
                    return Err(SchedulerError::InvalidEta(eta));
                }
                Solver::Ddim(Ddim {
                    final_alpha_cumprod: if cfg.set_alpha_to_one { 1.0 } else { acp[0] },
                    alphas_cumprod: acp,
                    step_ratio: (train / steps) as i64,
                    eta,
                })
            }
            SchedulerKind::DpmSolverPlusPlus => {
                let mut sigmas: Vec<f32> = timesteps
                    .iter()
                    .map(|&t| {
                        let a = acp[t as usize];
                        ((1.0 - a) / a).sqrt()
                    })
                    .collect();
                sigmas.push(0.0);
                Solver::DpmSolverPlusPlus(DpmSolverPlusPlus {
                    sigmas,
                    next_step: 0,
                    previous_x0: Vec::new(),
                    x0: Vec::new(),
                })
            }
        };
        Ok(Self {
            prediction_type: cfg.prediction_type,
            timesteps,
            solver,
        })
    }

    /// The timesteps of the run, in denoising order (the UNet's `timestep` input at each step).
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// Standard deviation of the initial noise (1.0 for both schedulers).
    pub fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    /// True when every step consumes a variance-noise tensor: DDIM with `eta > 0`, which (as in
    /// diffusers) adds noise at every step including the last.
    pub fn needs_variance_noise(&self) -> bool {
        matches!(&self.solver, Solver::Ddim(d) if d.eta > 0.0)
    }

    /// One denoising update in place: `sample` (flat, any shape) becomes the sample at the next
    /// timestep, given the model's output at `timesteps()[i]` (same length). `variance_noise`
    /// (standard normal, same length) is required when [`Self::needs_variance_noise`] and ignored
    /// otherwise. DPM-Solver++ is multistep: its steps must run in order `0, 1, …`.
    pub fn step(
        &mut self,
        i: usize,
        model_output: &[f32],
        sample: &mut [f32],
        variance_noise: Option<&[f32]>,
    ) -> Result<(), SchedulerError> {
        let steps = self.timesteps.len();
        if i >= steps {
            return Err(SchedulerError::StepOutOfRange { index: i, steps });
        }
        check_len("model_output", sample.len(), model_output.len())?;
        match &mut self.solver {
            Solver::Ddim(ddim) => {
                let noise = if ddim.eta > 0.0 {
                    let noise = variance_noise.ok_or(SchedulerError::MissingVarianceNoise)?;
                    check_len("variance_noise", sample.len(), noise.len())?;
                    Some(noise)
                } else {
                    None
                };
                ddim.step(
                    self.prediction_type,
                    self.timesteps[i],
                    model_output,
                    sample,
                    noise,
                );
                Ok(())
            }
            Solver::DpmSolverPlusPlus(dpm) => {
                if i != dpm.next_step {
                    return Err(SchedulerError::OutOfOrder {
                        expected: dpm.next_step,
                        got: i,
                    });
                }
                dpm.step(self.prediction_type, i, model_output, sample);
                Ok(())
            }
        }
    }
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), SchedulerError> {
    if expected == got {
        Ok(())
    } else {
        Err(SchedulerError::LengthMismatch {
            what,
            expected,
            got,
        })
    }
}

/// Refuses configs that describe no usable noise schedule (every beta must lie in `(0, 1)`).
fn validate(cfg: &SchedulerConfig) -> Result<(), SchedulerError> {
    if cfg.num_train_timesteps < 2 {
        return Err(SchedulerError::InvalidConfig(format!(
            "num_train_timesteps {} must be at least 2",
            cfg.num_train_timesteps
        )));
    }
    if cfg.beta_schedule != BetaSchedule::SquaredcosCapV2 {
        let ok = |b: f64| b.is_finite() && b > 0.0 && b < 1.0;
        if !ok(cfg.beta_start) || !ok(cfg.beta_end) {
            return Err(SchedulerError::InvalidConfig(format!(
                "beta_start {} and beta_end {} must lie in (0, 1)",
                cfg.beta_start, cfg.beta_end
            )));
        }
    }
    if cfg.steps_offset >= cfg.num_train_timesteps {
        return Err(SchedulerError::InvalidConfig(format!(
            "steps_offset {} must be below num_train_timesteps {}",
            cfg.steps_offset, cfg.num_train_timesteps
        )));
    }
    Ok(())
}

impl Ddim {
    /// `DDIMScheduler.step` (formulas 12 and 16 of the DDIM paper) without clipping, in float32
    /// with diffusers' order of operations.
    fn step(
        &self,
        prediction_type: PredictionType,
        t: i64,
        model_output: &[f32],
        sample: &mut [f32],
        noise: Option<&[f32]>,
    ) {
        let prev_t = t - self.step_ratio;
        let alpha_t = self.alphas_cumprod[t as usize];
        let alpha_prev = if prev_t >= 0 {
            self.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        };
        let beta_t = 1.0 - alpha_t;
        let beta_prev = 1.0 - alpha_prev;
        let sqrt_alpha_t = alpha_t.sqrt();
        let sqrt_beta_t = beta_t.sqrt();
        let sqrt_alpha_prev = alpha_prev.sqrt();

        let variance = (beta_prev / beta_t) * (1.0 - alpha_t / alpha_prev);
        let std_dev = self.eta * variance.sqrt();
        let direction = (1.0 - alpha_prev - std_dev * std_dev).sqrt();

        for (k, (x, &m)) in sample.iter_mut().zip(model_output).enumerate() {
            let s = *x;
            let (x0, eps) = match prediction_type {
                PredictionType::Epsilon => ((s - sqrt_beta_t * m) / sqrt_alpha_t, m),
                PredictionType::Sample => (m, (s - sqrt_alpha_t * m) / sqrt_beta_t),
                PredictionType::VPrediction => (
                    sqrt_alpha_t * s - sqrt_beta_t * m,
                    sqrt_alpha_t * m + sqrt_beta_t * s,
                ),
            };
            let mut prev = sqrt_alpha_prev * x0 + direction * eps;
            if let Some(z) = noise {
                prev += std_dev * z[k];
            }
            *x = prev;
        }
    }
}

impl DpmSolverPlusPlus {
    /// `DPMSolverMultistepScheduler.step` for DPM-Solver++ with the midpoint second-order update,
    /// first order on the first step (no history) and on the last (its sigma is 0).
    fn step(
        &mut self,
        prediction_type: PredictionType,
        i: usize,
        model_output: &[f32],
        sample: &mut [f32],
    ) {
        let last = self.sigmas.len() - 2;
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);

        // convert_model_output: the data prediction x0.
        self.x0.clear();
        self.x0.extend(
            sample
                .iter()
                .zip(model_output)
                .map(|(&s, &m)| match prediction_type {
                    PredictionType::Epsilon => (s - sigma_s0 * m) / alpha_s0,
                    PredictionType::Sample => m,
                    PredictionType::VPrediction => alpha_s0 * s - sigma_s0 * m,
                }),
        );

        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda(alpha_t, sigma_t) - lambda_s0;
        let phi = (-h).exp() - 1.0;
        let c_sample = sigma_t / sigma_s0;
        let c_d0 = alpha_t * phi;

        if i == 0 || i == last {
            for (x, &d0) in sample.iter_mut().zip(&self.x0) {
                *x = c_sample * *x - c_d0 * d0;
            }
        } else {
            let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
            let h_0 = lambda_s0 - lambda(alpha_s1, sigma_s1);
            let inv_r0 = 1.0 / (h_0 / h);
            let c_d1 = 0.5 * (alpha_t * phi);
            for ((x, &m0), &m1) in sample.iter_mut().zip(&self.x0).zip(&self.previous_x0) {
                let d1 = inv_r0 * (m0 - m1);
                *x = c_sample * *x - c_d0 * m0 - c_d1 * d1;
            }
        }

        std::mem::swap(&mut self.x0, &mut self.previous_x0);
        self.next_step += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vectors::*;

    /// Largest allowed difference from diffusers, relative to `max(1, |expected|)`.
    // NOTE: both sides round the same float32 operations in the same order, but torch's CPU
    // `sqrt`/`pow(x, 0.5)`, `log` and `exp` are not correctly rounded (about one result in six
    // is an ulp off the true value, and that depends on the CPU torch runs on), while Rust's are.
    // Those ulps, amplified over a 50-step trajectory, stay below 1e-5.
    const TOL: f32 = 1e-5;

    fn manifest_config() -> SchedulerConfig {
        serde_json::from_str(
            r#"{"num_train_timesteps":1000,"beta_start":0.00085,"beta_end":0.012,
                "beta_schedule":"scaled_linear","prediction_type":"epsilon","steps_offset":1,
                "set_alpha_to_one":false,"timestep_spacing":"leading"}"#,
        )
        .expect("the manifest's scheduler object parses")
    }

    fn spacing(name: &str) -> TimestepSpacing {
        serde_json::from_value(serde_json::Value::String(name.into())).unwrap()
    }

    fn prediction(name: &str) -> PredictionType {
        serde_json::from_value(serde_json::Value::String(name.into())).unwrap()
    }

    fn kind(name: &str, eta: f32) -> SchedulerKind {
        match name {
            "ddim" => SchedulerKind::Ddim { eta },
            "dpmpp_2m" => SchedulerKind::DpmSolverPlusPlus,
            other => panic!("unknown scheduler {other}"),
        }
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
            let err = (g - w).abs() / w.abs().max(1.0);
            assert!(
                err <= TOL,
                "{what}[{k}]: got {g}, diffusers {w} (rel err {err:e})"
            );
        }
    }

    // The generator's inputs (see models/export/gen_scheduler_vectors.py).
    const SAMPLE_LEN: usize = 8;

    fn initial_sample() -> Vec<f32> {
        (0..SAMPLE_LEN)
            .map(|k| (1.5 * (1.3 * k as f64 + 0.5).sin()) as f32)
            .collect()
    }

    fn fake_model(sample: &[f32], t: i64) -> Vec<f32> {
        sample
            .iter()
            .enumerate()
            .map(|(k, &s)| (0.1 * f64::from(s) + (t as f64 / 100.0 + 0.3 * k as f64).sin()) as f32)
            .collect()
    }

    fn variance_noise(i: usize) -> Vec<f32> {
        (0..SAMPLE_LEN)
            .map(|k| (1.7 * k as f64 + 0.9 * i as f64).cos() as f32)
            .collect()
    }

    struct Trajectory {
        name: &'static str,
        kind: &'static str,
        eta: f32,
        steps: usize,
        spacing: &'static str,
        prediction: &'static str,
        set_alpha_to_one: bool,
        timesteps: &'static [i64],
        /// The sample after step `i`.
        checkpoints: &'static [(usize, &'static [f32])],
    }

    #[test]
    fn alphas_cumprod_match_diffusers() {
        for (schedule, want, want_sum) in [
            (
                BetaSchedule::ScaledLinear,
                ACP_SCALED_LINEAR,
                ACP_SCALED_LINEAR_SUM,
            ),
            (BetaSchedule::Linear, ACP_LINEAR, ACP_LINEAR_SUM),
            (
                BetaSchedule::SquaredcosCapV2,
                ACP_SQUAREDCOS_CAP_V2,
                ACP_SQUAREDCOS_CAP_V2_SUM,
            ),
        ] {
            let cfg = SchedulerConfig {
                beta_schedule: schedule,
                ..manifest_config()
            };
            let acp = alphas_cumprod(&cfg);
            assert_eq!(acp.len(), 1000);
            let picked: Vec<f32> = ACP_INDICES.iter().map(|&i| acp[i] as f32).collect();
            // Bit-exact: these are pure IEEE operations on both sides.
            assert_eq!(picked, want, "{schedule:?}");
            let sum: f64 = acp.iter().sum();
            assert!(
                (sum - want_sum).abs() < 1e-9,
                "{schedule:?}: sum {sum} vs {want_sum}"
            );
        }
    }

    #[test]
    fn timesteps_match_diffusers() {
        for &(name, space, steps, want) in TIMESTEP_CASES {
            let cfg = SchedulerConfig {
                timestep_spacing: spacing(space),
                ..manifest_config()
            };
            let sched = Scheduler::new(&cfg, kind(name, 0.0), steps).unwrap();
            assert_eq!(sched.timesteps(), want, "{name} {space} {steps}");
        }
    }

    #[test]
    fn timesteps_of_every_step_count_match_diffusers() {
        for &(name, space, want) in TIMESTEP_HASHES {
            let cfg = SchedulerConfig {
                timestep_spacing: spacing(space),
                ..manifest_config()
            };
            let mut h = 0u64;
            for n in 1..=1000 {
                let ts = match name {
                    "ddim" => ddim_timesteps(&cfg, n),
                    _ => dpm_timesteps(&cfg, n),
                };
                h = h.wrapping_mul(1_000_003).wrapping_add(ts.len() as u64);
                for t in ts {
                    h = h.wrapping_mul(1_000_003).wrapping_add((t + 2) as u64);
                }
            }
            assert_eq!(h, want, "{name} {space}");
        }
    }

    #[test]
    fn dpm_sigmas_match_diffusers() {
        let sched =
            Scheduler::new(&manifest_config(), SchedulerKind::DpmSolverPlusPlus, 10).unwrap();
        let Solver::DpmSolverPlusPlus(dpm) = &sched.solver else {
            panic!("built a DDIM");
        };
        // Within one float32 ulp: torch's sqrt is not correctly rounded (see `TOL`).
        assert_eq!(dpm.sigmas.len(), DPM_SIGMAS_10.len());
        for (&got, &want) in dpm.sigmas.iter().zip(DPM_SIGMAS_10) {
            assert!(
                (got - want).abs() <= want * f32::EPSILON,
                "sigma {got} vs {want}"
            );
        }
    }

    #[test]
    fn trajectories_match_diffusers() {
        for case in TRAJECTORIES {
            let cfg = SchedulerConfig {
                timestep_spacing: spacing(case.spacing),
                prediction_type: prediction(case.prediction),
                set_alpha_to_one: case.set_alpha_to_one,
                ..manifest_config()
            };
            let mut sched = Scheduler::new(&cfg, kind(case.kind, case.eta), case.steps).unwrap();
            assert_eq!(sched.timesteps(), case.timesteps, "{}", case.name);
            assert_eq!(sched.init_noise_sigma(), 1.0);
            assert_eq!(
                sched.needs_variance_noise(),
                case.eta > 0.0,
                "{}",
                case.name
            );
            let mut sample = initial_sample();
            let mut checkpoints = case.checkpoints.iter().peekable();
            for (i, &t) in case.timesteps.iter().enumerate() {
                let out = fake_model(&sample, t);
                let noise = variance_noise(i);
                let noise = sched.needs_variance_noise().then_some(noise.as_slice());
                sched.step(i, &out, &mut sample, noise).unwrap();
                if let Some((_, want)) = checkpoints.next_if(|(at, _)| *at == i) {
                    assert_close(&sample, want, &format!("{} after step {i}", case.name));
                }
            }
            assert!(
                checkpoints.next().is_none(),
                "{}: unchecked checkpoints",
                case.name
            );
        }
    }

    #[test]
    fn single_ddim_step_is_stateless() {
        // DDIM needs no history: step 1 on the trajectory's sample after step 0 gives diffusers'
        // value even from a fresh scheduler.
        let case = &TRAJECTORIES[0];
        let (at0, after0) = case.checkpoints[0];
        let (at1, after1) = case.checkpoints[1];
        assert_eq!((at0, at1), (0, 1));
        let mut sched =
            Scheduler::new(&manifest_config(), SchedulerKind::Ddim { eta: 0.0 }, 10).unwrap();
        let mut sample = after0.to_vec();
        let out = fake_model(&sample, case.timesteps[1]);
        sched.step(1, &out, &mut sample, None).unwrap();
        assert_close(&sample, after1, "ddim step 1");
    }

    #[test]
    fn bad_arguments_are_errors() {
        let cfg = manifest_config();
        let ddim = SchedulerKind::Ddim { eta: 0.0 };
        let noisy = SchedulerKind::Ddim { eta: 0.5 };
        let dpm = SchedulerKind::DpmSolverPlusPlus;
        assert_eq!(
            Scheduler::new(&cfg, ddim, 0).unwrap_err(),
            SchedulerError::ZeroSteps
        );
        assert_eq!(
            Scheduler::new(&cfg, dpm, 1001).unwrap_err(),
            SchedulerError::TooManySteps {
                steps: 1001,
                train: 1000
            }
        );
        assert_eq!(
            Scheduler::new(&cfg, SchedulerKind::Ddim { eta: 1.5 }, 10).unwrap_err(),
            SchedulerError::InvalidEta(1.5)
        );
        assert!(matches!(
            Scheduler::new(&cfg, SchedulerKind::Ddim { eta: f32::NAN }, 10),
            Err(SchedulerError::InvalidEta(_))
        ));
        // Leading spacing with 1000 steps and offset 1 reaches timestep 1000 (diffusers indexes
        // past alphas_cumprod there); DPM linspace at 1000 steps repeats timesteps.
        assert!(matches!(
            Scheduler::new(&cfg, ddim, 1000),
            Err(SchedulerError::DegenerateSchedule { .. })
        ));
        let linspace = SchedulerConfig {
            timestep_spacing: TimestepSpacing::Linspace,
            ..cfg.clone()
        };
        assert!(matches!(
            Scheduler::new(&linspace, dpm, 1000),
            Err(SchedulerError::DegenerateSchedule { .. })
        ));
        // numpy's float arange makes 62 trailing timesteps for 61 steps, the last being -1.
        let trailing = SchedulerConfig {
            timestep_spacing: TimestepSpacing::Trailing,
            ..cfg.clone()
        };
        assert_eq!(ddim_timesteps(&trailing, 61).len(), 62);
        assert!(matches!(
            Scheduler::new(&trailing, ddim, 61),
            Err(SchedulerError::DegenerateSchedule { .. })
        ));
        let bad_beta = SchedulerConfig {
            beta_end: 1.5,
            ..cfg.clone()
        };
        assert!(matches!(
            Scheduler::new(&bad_beta, ddim, 10),
            Err(SchedulerError::InvalidConfig(_))
        ));

        let sample = initial_sample();
        let out = fake_model(&sample, 901);
        for kind in [ddim, dpm] {
            let mut s = Scheduler::new(&cfg, kind, 10).unwrap();
            let mut x = sample.clone();
            assert_eq!(
                s.step(0, &out[..7], &mut x, None).unwrap_err(),
                SchedulerError::LengthMismatch {
                    what: "model_output",
                    expected: 8,
                    got: 7
                }
            );
            assert_eq!(
                s.step(10, &out, &mut x, None).unwrap_err(),
                SchedulerError::StepOutOfRange {
                    index: 10,
                    steps: 10
                }
            );
            assert_eq!(x, sample, "a refused step leaves the sample alone");
        }
        let mut s = Scheduler::new(&cfg, noisy, 10).unwrap();
        let mut x = sample.clone();
        assert_eq!(
            s.step(0, &out, &mut x, None).unwrap_err(),
            SchedulerError::MissingVarianceNoise
        );
        assert_eq!(
            s.step(0, &out, &mut x, Some(&out[..3])).unwrap_err(),
            SchedulerError::LengthMismatch {
                what: "variance_noise",
                expected: 8,
                got: 3
            }
        );
        let mut s = Scheduler::new(&cfg, dpm, 10).unwrap();
        assert_eq!(
            s.step(1, &out, &mut x, None).unwrap_err(),
            SchedulerError::OutOfOrder {
                expected: 0,
                got: 1
            }
        );
        s.step(0, &out, &mut x, None).unwrap();
        assert_eq!(
            s.step(0, &out, &mut x, None).unwrap_err(),
            SchedulerError::OutOfOrder {
                expected: 1,
                got: 0
            }
        );
    }

    #[test]
    fn config_and_kind_serde() {
        let cfg = manifest_config();
        assert_eq!(cfg.beta_schedule, BetaSchedule::ScaledLinear);
        assert_eq!(cfg.timestep_spacing, TimestepSpacing::Leading);
        let back: SchedulerConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        let extra = r#"{"num_train_timesteps":1000,"beta_start":0.00085,"beta_end":0.012,
            "beta_schedule":"scaled_linear","prediction_type":"epsilon","steps_offset":1,
            "set_alpha_to_one":false,"timestep_spacing":"leading","rescale_betas_zero_snr":true}"#;
        assert!(serde_json::from_str::<SchedulerConfig>(extra).is_err());

        let ddim: SchedulerKind = serde_json::from_str(r#"{"type":"ddim","eta":0.25}"#).unwrap();
        assert_eq!(ddim, SchedulerKind::Ddim { eta: 0.25 });
        let dpm: SchedulerKind = serde_json::from_str(r#"{"type":"dpmpp_2m"}"#).unwrap();
        assert_eq!(dpm, SchedulerKind::DpmSolverPlusPlus);
        assert_eq!(
            serde_json::to_string(&SchedulerKind::DpmSolverPlusPlus).unwrap(),
            r#"{"type":"dpmpp_2m"}"#
        );
    }

    /// diffusers' values, pasted from the generator's output.
    #[rustfmt::skip]
    mod vectors {
        use super::Trajectory;

        // Generated by models/export/gen_scheduler_vectors.py (diffusers 0.42.1, torch 2.15.0+cu132).
        pub const ACP_INDICES: &[usize] = &[0, 1, 2, 100, 499, 500, 501, 998, 999];
        pub const ACP_SCALED_LINEAR: &[f32] = &[0.99915, 0.998296, 0.9974381, 0.89422315, 0.27766943, 0.27633247, 0.27499884, 0.0047166958, 0.004660095];
        pub const ACP_SCALED_LINEAR_SUM: f64 = 373.3764712619595;
        pub const ACP_LINEAR: &[f32] = &[0.99915, 0.9982895, 0.9974187, 0.8673442, 0.16181217, 0.16077162, 0.15973598, 0.0015981406, 0.0015789628];
        pub const ACP_LINEAR_SUM: f64 = 309.0754451827379;
        pub const ACP_SQUAREDCOS_CAP_V2: &[f32] = &[0.9999587, 0.99991256, 0.99986154, 0.9715756, 0.49384347, 0.49228504, 0.49072668, 0.0000024287663, 0.000000002428735];
        pub const ACP_SQUAREDCOS_CAP_V2_SUM: f64 = 495.5774839997695;
        pub const TIMESTEP_CASES: &[(&str, &str, usize, &[i64])] = &[
            ("ddim", "leading", 1, &[1]),
            ("ddim", "leading", 2, &[501, 1]),
            ("ddim", "leading", 3, &[667, 334, 1]),
            ("ddim", "leading", 7, &[853, 711, 569, 427, 285, 143, 1]),
            ("ddim", "leading", 10, &[901, 801, 701, 601, 501, 401, 301, 201, 101, 1]),
            ("ddim", "leading", 25, &[961, 921, 881, 841, 801, 761, 721, 681, 641, 601, 561, 521, 481, 441, 401, 361, 321, 281, 241, 201, 161, 121, 81, 41, 1]),
            ("ddim", "leading", 50, &[981, 961, 941, 921, 901, 881, 861, 841, 821, 801, 781, 761, 741, 721, 701, 681, 661, 641, 621, 601, 581, 561, 541, 521, 501, 481, 461, 441, 421, 401, 381, 361, 341, 321, 301, 281, 261, 241, 221, 201, 181, 161, 141, 121, 101, 81, 61, 41, 21, 1]),
            ("ddim", "linspace", 1, &[0]),
            ("ddim", "linspace", 2, &[999, 0]),
            ("ddim", "linspace", 3, &[999, 500, 0]),
            ("ddim", "linspace", 7, &[999, 832, 666, 500, 333, 166, 0]),
            ("ddim", "linspace", 10, &[999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
            ("ddim", "linspace", 25, &[999, 957, 916, 874, 832, 791, 749, 708, 666, 624, 583, 541, 500, 458, 416, 375, 333, 291, 250, 208, 166, 125, 83, 42, 0]),
            ("ddim", "linspace", 50, &[999, 979, 958, 938, 917, 897, 877, 856, 836, 816, 795, 775, 754, 734, 714, 693, 673, 652, 632, 612, 591, 571, 550, 530, 510, 489, 469, 449, 428, 408, 387, 367, 347, 326, 306, 285, 265, 245, 224, 204, 183, 163, 143, 122, 102, 82, 61, 41, 20, 0]),
            ("ddim", "trailing", 1, &[999]),
            ("ddim", "trailing", 2, &[999, 499]),
            ("ddim", "trailing", 3, &[999, 666, 332]),
            ("ddim", "trailing", 7, &[999, 856, 713, 570, 428, 285, 142]),
            ("ddim", "trailing", 10, &[999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
            ("ddim", "trailing", 25, &[999, 959, 919, 879, 839, 799, 759, 719, 679, 639, 599, 559, 519, 479, 439, 399, 359, 319, 279, 239, 199, 159, 119, 79, 39]),
            ("ddim", "trailing", 50, &[999, 979, 959, 939, 919, 899, 879, 859, 839, 819, 799, 779, 759, 739, 719, 699, 679, 659, 639, 619, 599, 579, 559, 539, 519, 499, 479, 459, 439, 419, 399, 379, 359, 339, 319, 299, 279, 259, 239, 219, 199, 179, 159, 139, 119, 99, 79, 59, 39, 19]),
            ("dpmpp_2m", "leading", 1, &[501]),
            ("dpmpp_2m", "leading", 2, &[667, 334]),
            ("dpmpp_2m", "leading", 3, &[751, 501, 251]),
            ("dpmpp_2m", "leading", 7, &[876, 751, 626, 501, 376, 251, 126]),
            ("dpmpp_2m", "leading", 10, &[901, 811, 721, 631, 541, 451, 361, 271, 181, 91]),
            ("dpmpp_2m", "leading", 25, &[951, 913, 875, 837, 799, 761, 723, 685, 647, 609, 571, 533, 495, 457, 419, 381, 343, 305, 267, 229, 191, 153, 115, 77, 39]),
            ("dpmpp_2m", "leading", 50, &[951, 932, 913, 894, 875, 856, 837, 818, 799, 780, 761, 742, 723, 704, 685, 666, 647, 628, 609, 590, 571, 552, 533, 514, 495, 476, 457, 438, 419, 400, 381, 362, 343, 324, 305, 286, 267, 248, 229, 210, 191, 172, 153, 134, 115, 96, 77, 58, 39, 20]),
            ("dpmpp_2m", "linspace", 1, &[999]),
            ("dpmpp_2m", "linspace", 2, &[999, 500]),
            ("dpmpp_2m", "linspace", 3, &[999, 666, 333]),
            ("dpmpp_2m", "linspace", 7, &[999, 856, 714, 571, 428, 285, 143]),
            ("dpmpp_2m", "linspace", 10, &[999, 899, 799, 699, 599, 500, 400, 300, 200, 100]),
            ("dpmpp_2m", "linspace", 25, &[999, 959, 919, 879, 839, 799, 759, 719, 679, 639, 599, 559, 519, 480, 440, 400, 360, 320, 280, 240, 200, 160, 120, 80, 40]),
            ("dpmpp_2m", "linspace", 50, &[999, 979, 959, 939, 919, 899, 879, 859, 839, 819, 799, 779, 759, 739, 719, 699, 679, 659, 639, 619, 599, 579, 559, 539, 519, 500, 480, 460, 440, 420, 400, 380, 360, 340, 320, 300, 280, 260, 240, 220, 200, 180, 160, 140, 120, 100, 80, 60, 40, 20]),
            ("dpmpp_2m", "trailing", 1, &[999]),
            ("dpmpp_2m", "trailing", 2, &[999, 499]),
            ("dpmpp_2m", "trailing", 3, &[999, 666, 332]),
            ("dpmpp_2m", "trailing", 7, &[999, 856, 713, 570, 428, 285, 142]),
            ("dpmpp_2m", "trailing", 10, &[999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
            ("dpmpp_2m", "trailing", 25, &[999, 959, 919, 879, 839, 799, 759, 719, 679, 639, 599, 559, 519, 479, 439, 399, 359, 319, 279, 239, 199, 159, 119, 79, 39]),
            ("dpmpp_2m", "trailing", 50, &[999, 979, 959, 939, 919, 899, 879, 859, 839, 819, 799, 779, 759, 739, 719, 699, 679, 659, 639, 619, 599, 579, 559, 539, 519, 499, 479, 459, 439, 419, 399, 379, 359, 339, 319, 299, 279, 259, 239, 219, 199, 179, 159, 139, 119, 99, 79, 59, 39, 19]),
        ];
        pub const DPM_SIGMAS_10: &[f32] = &[8.390687, 5.376337, 3.6306543, 2.5576646, 1.8585614, 1.3761796, 1.0239258, 0.75150895, 0.52697575, 0.32353324, 0.0];
        pub const TIMESTEP_HASHES: &[(&str, &str, u64)] = &[
            ("ddim", "leading", 8466242362773538825),
            ("ddim", "linspace", 17055753145793456359),
            ("ddim", "trailing", 16795954335955645638),
            ("dpmpp_2m", "leading", 4584495553539531309),
            ("dpmpp_2m", "linspace", 8233452931121147037),
            ("dpmpp_2m", "trailing", 16795954335955645638),
        ];
        pub const TRAJECTORIES: &[Trajectory] = &[
            Trajectory {
                name: "ddim_eta0_10",
                kind: "ddim",
                eta: 0.0,
                steps: 10,
                spacing: "leading",
                prediction: "epsilon",
                set_alpha_to_one: false,
                timesteps: &[901, 801, 701, 601, 501, 401, 301, 201, 101, 1],
                checkpoints: &[
                    (0, &[0.86607707, 2.1975198, 0.21151526, -1.926648, -0.8428563, 2.0811546, 2.7136414, 0.21229565]),
                    (1, &[0.74720025, 2.7185185, -0.06620222, -3.0377107, -1.3277627, 3.0528896, 4.116095, 0.6305948]),
                    (5, &[1.9598035, 6.4303637, -0.5804559, -8.005124, -4.05689, 6.421347, 8.967811, 0.6089926]),
                    (8, &[1.8898381, 7.3949423, -1.0092001, -9.888877, -4.9391694, 7.943525, 11.178693, 1.1417323]),
                    (9, &[1.8882302, 7.3854218, -1.0153619, -9.890684, -4.9466443, 7.9251575, 11.158104, 1.1304151]),
                ],
            },
            Trajectory {
                name: "ddim_eta0_25",
                kind: "ddim",
                eta: 0.0,
                steps: 25,
                spacing: "leading",
                prediction: "epsilon",
                set_alpha_to_one: false,
                timesteps: &[961, 921, 881, 841, 801, 761, 721, 681, 641, 601, 561, 521, 481, 441, 401, 361, 321, 281, 241, 201, 161, 121, 81, 41, 1],
                checkpoints: &[
                    (0, &[0.92529416, 1.9025133, 0.25227517, -1.5254269, -0.7654929, 1.4524791, 1.8827953, -0.13170964]),
                    (1, &[1.0680232, 2.3178031, 0.39218578, -1.695205, -0.7306195, 1.9777579, 2.5069273, 0.06227851]),
                    (12, &[2.4748716, 7.4409747, 0.06547266, -7.814453, -3.5861442, 7.565505, 10.163744, 1.0365902]),
                    (23, &[3.537386, 11.084774, 0.12619296, -11.591539, -5.158144, 11.64074, 15.58311, 1.9068675]),
                    (24, &[3.534482, 11.072351, 0.11913807, -11.592008, -5.1654468, 11.619465, 15.559056, 1.8949486]),
                ],
            },
            Trajectory {
                name: "ddim_eta0_50",
                kind: "ddim",
                eta: 0.0,
                steps: 50,
                spacing: "leading",
                prediction: "epsilon",
                set_alpha_to_one: false,
                timesteps: &[981, 961, 941, 921, 901, 881, 861, 841, 821, 801, 781, 761, 741, 721, 701, 681, 661, 641, 621, 601, 581, 561, 541, 521, 501, 481, 461, 441, 421, 401, 381, 361, 341, 321, 301, 281, 261, 241, 221, 201, 181, 161, 141, 121, 101, 81, 61, 41, 21, 1],
                checkpoints: &[
                    (0, &[0.84493595, 1.7002249, 0.17198229, -1.4669086, -0.79408705, 1.2116109, 1.6035384, -0.21517774]),
                    (1, &[0.9573589, 1.937894, 0.27483785, -1.5182517, -0.76166856, 1.4599466, 1.8844874, -0.1479637]),
                    (25, &[2.8588076, 8.1937065, 0.39536995, -7.9677887, -3.5011706, 8.290815, 10.975917, 1.1919906]),
                    (48, &[4.3320994, 12.725673, 0.6828117, -12.245091, -5.22034, 13.184196, 17.390888, 2.1648705]),
                    (49, &[4.328571, 12.711959, 0.675319, -12.245046, -5.2275934, 13.161707, 17.365414, 2.1527486]),
                ],
            },
            Trajectory {
                name: "ddim_eta05_25",
                kind: "ddim",
                eta: 0.5,
                steps: 25,
                spacing: "leading",
                prediction: "epsilon",
                set_alpha_to_one: false,
                timesteps: &[961, 921, 881, 841, 801, 761, 721, 681, 641, 601, 561, 521, 481, 441, 401, 361, 321, 281, 241, 201, 161, 121, 81, 41, 1],
                checkpoints: &[
                    (0, &[1.2288918, 1.8787458, -0.0041389465, -1.3655263, -0.4571721, 1.3138381, 1.7053846, 0.13872975]),
                    (1, &[1.6008357, 2.0354388, -0.017674066, -1.1893059, -0.2752729, 1.555707, 2.359115, 0.7126893]),
                    (12, &[2.8790598, 5.538098, -0.5181237, -5.9612107, -3.1777391, 6.0463753, 10.4880705, 2.918471]),
                    (23, &[4.4186425, 8.023665, -1.0522819, -8.438433, -4.0784388, 9.048396, 15.634529, 5.0402617]),
                    (24, &[4.404648, 8.008885, -1.0490599, -8.441242, -4.0978303, 9.028167, 15.615219, 5.0182357]),
                ],
            },
            Trajectory {
                name: "ddim_eta1_8_trailing_v_alpha1",
                kind: "ddim",
                eta: 1.0,
                steps: 8,
                spacing: "trailing",
                prediction: "v_prediction",
                set_alpha_to_one: true,
                timesteps: &[999, 874, 749, 624, 499, 374, 249, 124],
                checkpoints: &[
                    (0, &[1.2671335, 0.6864386, -0.7057383, -0.27762794, 0.43911704, 0.058225572, 0.12479329, 0.5925654]),
                    (1, &[1.1004529, -0.3701777, -0.72763956, 0.6537492, 0.44673067, -0.6546883, 0.29857498, 1.271781]),
                    (4, &[-0.4509891, -0.1970973, 0.8173516, -0.012965262, -1.1342499, -0.17590272, 0.65646505, -0.60224354]),
                    (6, &[-0.23946594, 0.5495258, 0.5469216, -0.13346925, 0.09876068, 0.8077692, 0.4701597, -0.20522605]),
                    (7, &[-0.56320804, 0.120898604, 0.1317111, -0.43039888, -0.15042484, 0.57625777, 0.38201207, -0.110262424]),
                ],
            },
            Trajectory {
                name: "ddim_eta0_12_linspace_sample",
                kind: "ddim",
                eta: 0.0,
                steps: 12,
                spacing: "linspace",
                prediction: "sample",
                set_alpha_to_one: false,
                timesteps: &[999, 908, 817, 727, 636, 545, 454, 363, 272, 182, 91, 0],
                checkpoints: &[
                    (0, &[0.69732314, 1.4299684, 0.024405159, -1.4691797, -0.8669789, 0.949537, 1.3249085, -0.28057155]),
                    (1, &[0.7153357, 1.4289925, 0.00958031, -1.4963137, -0.90893495, 0.8936495, 1.2634903, -0.33735335]),
                    (6, &[0.4536538, 1.0861926, 0.011281073, -1.1333989, -0.6031988, 0.8915362, 1.220193, -0.052041963]),
                    (10, &[0.7786188, 0.9600271, 0.7554922, 0.4706542, 0.43710387, 0.5342563, 0.38117015, -0.08405788]),
                    (11, &[0.7786188, 0.9600271, 0.7554922, 0.4706542, 0.43710387, 0.5342563, 0.38117015, -0.08405781]),
                ],
            },
            Trajectory {
                name: "ddim_eta0_1",
                kind: "ddim",
                eta: 0.0,
                steps: 1,
                spacing: "leading",
                prediction: "epsilon",
                set_alpha_to_one: false,
                timesteps: &[1],
                checkpoints: &[
                    (0, &[0.71845126, 1.4559186, 0.055366307, -1.4358662, -0.8367385, 0.9725854, 1.3403972, -0.27170357]),
                ],
            },
            Trajectory {
                name: "dpm_10",
                kind: "dpmpp_2m",
                eta: 0.0,
                steps: 10,
                spacing: "leading",
                prediction: "epsilon",
                set_alpha_to_one: false,
                timesteps: &[901, 811, 721, 631, 541, 451, 361, 271, 181, 91],
                checkpoints: &[
                    (0, &[0.8494488, 2.1135538, 0.19445302, -1.8698707, -0.8411574, 1.9559541, 2.558229, 0.15796721]),
                    (1, &[0.6276474, 2.4139063, -0.20482066, -2.9841259, -1.4032066, 2.6720307, 3.682317, 0.4826539]),
                    (5, &[1.7870694, 5.5883713, -0.96930265, -7.8613777, -4.4166636, 4.998032, 7.3145638, -0.15639156]),
                    (8, &[1.845167, 6.887111, -1.3304855, -9.969113, -5.361728, 6.87465, 9.96669, 0.4547273]),
                    (9, &[1.6242063, 6.713068, -1.6782761, -10.46967, -5.739522, 6.786939, 10.017541, 0.42077032]),
                ],
            },
            Trajectory {
                name: "dpm_25",
                kind: "dpmpp_2m",
                eta: 0.0,
                steps: 25,
                spacing: "leading",
                prediction: "epsilon",
                set_alpha_to_one: false,
                timesteps: &[951, 913, 875, 837, 799, 761, 723, 685, 647, 609, 571, 533, 495, 457, 419, 381, 343, 305, 267, 229, 191, 153, 115, 77, 39],
                checkpoints: &[
                    (0, &[0.8879509, 1.8506716, 0.22190328, -1.5302781, -0.7750112, 1.4214236, 1.8541176, -0.12641741]),
                    (1, &[0.9566743, 2.168707, 0.29444072, -1.7296321, -0.7727023, 1.8889269, 2.4304066, 0.07510573]),
                    (12, &[1.8490384, 6.221244, -0.60054743, -7.822917, -3.9512308, 6.2890744, 8.790697, 0.6517935]),
                    (23, &[2.6996183, 9.556458, -0.8000113, -11.783533, -5.728509, 10.089193, 13.968928, 1.4452995]),
                    (24, &[2.623515, 9.426295, -0.96368974, -11.965726, -5.9216537, 9.897307, 13.801457, 1.325463]),
                ],
            },
            Trajectory {
                name: "dpm_50",
                kind: "dpmpp_2m",
                eta: 0.0,
                steps: 50,
                spacing: "leading",
                prediction: "epsilon",
                set_alpha_to_one: false,
                timesteps: &[951, 932, 913, 894, 875, 856, 837, 818, 799, 780, 761, 742, 723, 704, 685, 666, 647, 628, 609, 590, 571, 552, 533, 514, 495, 476, 457, 438, 419, 400, 381, 362, 343, 324, 305, 286, 267, 248, 229, 210, 191, 172, 153, 134, 115, 96, 77, 58, 39, 20],
                checkpoints: &[
                    (0, &[0.80041504, 1.6484823, 0.13914587, -1.4769875, -0.80152255, 1.1953223, 1.5943596, -0.19650362]),
                    (1, &[0.85613686, 1.8184203, 0.19532165, -1.5486778, -0.78673774, 1.4155934, 1.8568809, -0.11231865]),
                    (25, &[1.7999653, 6.1629305, -0.64836496, -7.8553534, -3.9795723, 6.259146, 8.771647, 0.65878236]),
                    (48, &[2.6304104, 9.482756, -0.91648734, -11.934295, -5.856253, 10.021254, 13.936592, 1.4098924]),
                    (49, &[2.591624, 9.375603, -1.0115138, -12.005678, -5.966918, 9.841089, 13.750866, 1.3008965]),
                ],
            },
            Trajectory {
                name: "dpm_8_trailing_v",
                kind: "dpmpp_2m",
                eta: 0.0,
                steps: 8,
                spacing: "trailing",
                prediction: "v_prediction",
                set_alpha_to_one: false,
                timesteps: &[999, 874, 749, 624, 499, 374, 249, 124],
                checkpoints: &[
                    (0, &[0.748929, 1.4991271, 0.124120384, -1.3469965, -0.75198483, 1.0362236, 1.3884842, -0.22801656]),
                    (1, &[0.62266713, 1.3912592, 0.069762364, -1.3419011, -0.71278936, 1.0916095, 1.4723028, -0.099647656]),
                    (4, &[0.8000104, 1.4202235, 0.064641185, -1.37566, -0.886381, 0.7275988, 1.0292399, -0.47390705]),
                    (6, &[0.5329232, 1.2886276, 0.13840063, -1.1006529, -0.49147332, 1.174272, 1.5269808, 0.08427165]),
                    (7, &[0.12594736, 0.7803538, -0.23278701, -1.2933575, -0.6770544, 0.90326566, 1.3249487, 0.1480386]),
                ],
            },
            Trajectory {
                name: "dpm_20_linspace_sample",
                kind: "dpmpp_2m",
                eta: 0.0,
                steps: 20,
                spacing: "linspace",
                prediction: "sample",
                set_alpha_to_one: false,
                timesteps: &[999, 949, 899, 849, 799, 749, 699, 649, 599, 549, 500, 450, 400, 350, 300, 250, 200, 150, 100, 50],
                checkpoints: &[
                    (0, &[0.70705676, 1.4438057, 0.041095458, -1.4511281, -0.8491639, 0.9655324, 1.3376453, -0.27224454]),
                    (1, &[0.71131575, 1.438733, 0.02745673, -1.4721013, -0.8759033, 0.9352386, 1.306714, -0.30076098]),
                    (10, &[0.57618916, 1.2701728, 0.120805405, -1.1132151, -0.5574205, 1.0263747, 1.3514513, -0.046762384]),
                    (18, &[0.7448876, 0.9781197, 0.5759598, 0.0989523, 0.14860663, 0.4948771, 0.42723146, -0.18626231]),
                    (19, &[0.5539143, 0.8151681, 0.94880337, 0.99534494, 1.0065255, 0.9587851, 0.78842837, 0.49687514]),
                ],
            },
            Trajectory {
                name: "dpm_15_linspace",
                kind: "dpmpp_2m",
                eta: 0.0,
                steps: 15,
                spacing: "linspace",
                prediction: "epsilon",
                set_alpha_to_one: false,
                timesteps: &[999, 932, 866, 799, 733, 666, 599, 533, 466, 400, 333, 266, 200, 133, 67],
                checkpoints: &[
                    (0, &[1.2754192, 2.4367566, 0.5217732, -1.5618751, -0.7126536, 1.8167207, 2.255281, -0.15587014]),
                    (1, &[1.5723331, 3.2879725, 0.81835574, -1.8905206, -0.6278661, 2.8914447, 3.5271156, 0.24258906]),
                    (7, &[3.6547153, 9.490669, 0.96860087, -8.216841, -3.46666, 9.2328825, 11.99326, 1.1664317]),
                    (13, &[5.5797553, 14.792767, 1.7477456, -12.347331, -4.8810754, 14.860312, 19.1498, 2.3330038]),
                    (14, &[5.4606075, 14.696749, 1.506851, -12.719124, -5.178005, 14.764624, 19.14477, 2.255496]),
                ],
            },
            Trajectory {
                name: "dpm_1",
                kind: "dpmpp_2m",
                eta: 0.0,
                steps: 1,
                spacing: "leading",
                prediction: "epsilon",
                set_alpha_to_one: false,
                timesteps: &[501],
                checkpoints: &[
                    (0, &[2.8068953, 3.8906815, 1.1211494, -1.898219, -1.3223314, 1.354101, 1.5444751, -1.6508628]),
                ],
            },
            Trajectory {
                name: "dpm_2",
                kind: "dpmpp_2m",
                eta: 0.0,
                steps: 2,
                spacing: "leading",
                prediction: "epsilon",
                set_alpha_to_one: false,
                timesteps: &[667, 334],
                checkpoints: &[
                    (0, &[0.97159743, 2.1660976, -1.0829356, -4.4166985, -3.2029724, 0.70015436, 1.6735334, -1.4398158]),
                    (1, &[1.4239811, 3.210752, -0.71157676, -4.8018594, -3.1647751, 1.8211749, 2.986405, -1.1383402]),
                ],
            },
        ];
    }
}
