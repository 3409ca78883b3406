//! The training noise schedule (betas, `alphas_cumprod`) and each scheduler's timesteps, computed
//! as torch and numpy compute them.

use super::{BetaSchedule, SchedulerConfig, TimestepSpacing};

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
pub(super) fn alphas_cumprod_f32(cfg: &SchedulerConfig) -> Vec<f32> {
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
pub(super) fn ddim_timesteps(cfg: &SchedulerConfig, n: usize) -> Vec<i64> {
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
pub(super) fn dpm_timesteps(cfg: &SchedulerConfig, n: usize) -> Vec<i64> {
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
