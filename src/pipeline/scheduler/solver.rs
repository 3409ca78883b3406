//! The [`Scheduler`] of one denoising run: its timesteps and the DDIM and DPM-Solver++ 2M updates.

use super::schedule::{alphas_cumprod_f32, ddim_timesteps, dpm_timesteps};
use super::{BetaSchedule, PredictionType, SchedulerConfig, SchedulerError, SchedulerKind};

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
pub(super) struct Ddim {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    /// `num_train_timesteps / num_inference_steps`: diffusers' distance to the previous timestep,
    /// whatever the spacing.
    step_ratio: i64,
    eta: f32,
}

/// DPM-Solver++ 2M's sigmas and multistep state.
#[derive(Debug, Clone)]
pub(super) struct DpmSolverPlusPlus {
    /// One sigma per step plus the final 0.
    pub(super) sigmas: Vec<f32>,
    next_step: usize,
    /// The data prediction of the previous step (empty before the first).
    previous_x0: Vec<f32>,
    /// The data prediction of the current step (a reused buffer).
    x0: Vec<f32>,
}

#[derive(Debug, Clone)]
pub(super) enum Solver {
    Ddim(Ddim),
    DpmSolverPlusPlus(DpmSolverPlusPlus),
}

/// A scheduler set up for one denoising run of a fixed number of steps.
#[derive(Debug, Clone)]
pub struct Scheduler {
    prediction_type: PredictionType,
    timesteps: Vec<i64>,
    pub(super) solver: Solver,
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
