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
//!
//! Its parts: `config` (the manifest's `scheduler` object, the scheduler choice and the errors),
//! `schedule` (the training noise schedule and each scheduler's timesteps) and `solver` (the
//! [`Scheduler`] of one run and its DDIM and DPM-Solver++ 2M updates).

mod config;
mod schedule;
mod solver;
#[cfg(test)]
mod tests;

pub use config::{
    BetaSchedule, PredictionType, SchedulerConfig, SchedulerError, SchedulerKind, TimestepSpacing,
};
pub use schedule::alphas_cumprod;
pub use solver::Scheduler;
