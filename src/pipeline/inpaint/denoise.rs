//! The sampler loop ([`denoise`]): what it conditions on ([`Conditioning`]) and how it samples
//! ([`Sampling`]).

use ndarray::{s, Array3, Array4, Axis};

use super::super::noise::NoiseSource;
use super::super::scheduler::{Scheduler, SchedulerKind};
use super::PipelineError;
use crate::engine::{DenoiseInputs, Engine};

/// Tensors at model resolution that the denoising loop conditions on (also what parity fixtures
/// record).
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// Prompt hidden states [1, 77, D].
    pub hidden_cond: Array3<f32>,
    /// Negative-prompt hidden states [1, 77, D] (used when guidance > 1).
    pub hidden_uncond: Array3<f32>,
    /// Identity tokens [1, 10, D].
    pub id_tokens: Array3<f32>,
    /// Visual segment of the adapter.
    pub adapter_visual: Vec<f32>,
    /// Mask at latent resolution [1, 1, h, w].
    pub mask_latent: Array4<f32>,
    /// Scaled masked-image latents [1, 4, h, w].
    pub masked_latents: Array4<f32>,
}

/// How the sampler loop runs: the sampler, its step count, the guidance scale and how many outputs
/// are denoised together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Sampler.
    pub scheduler: SchedulerKind,
    /// Denoising steps.
    pub steps: usize,
    /// Guidance scale (1 = one conditional row).
    pub guidance: f32,
    /// Number of outputs, batched in one UNet call per step.
    pub num_outputs: usize,
}

/// The sampler loop: `sampling.num_outputs` outputs denoised together, with classifier-free
/// guidance as one batched UNet call (rows `[uncond x n ; cond x n]`; the uncond rows keep the
/// identity tokens when the manifest's `guidance.uncond_identity` says so, as the paper's
/// `extra_feat_neg` does, and have their identity keys removed otherwise) when
/// `sampling.guidance > 1`, a single conditional row per output otherwise. Returns
/// the final scaled latents [n, 4, h, w] flat. `on_step(i, latents)` sees the latents after each
/// step.
pub fn denoise<E: Engine + ?Sized>(
    engine: &mut E,
    cond: &Conditioning,
    sampling: Sampling,
    noise: &mut dyn NoiseSource,
    on_step: &mut dyn FnMut(usize, &[f32]),
) -> Result<Vec<f32>, PipelineError> {
    let Sampling {
        scheduler: kind,
        steps,
        guidance,
        num_outputs: n,
    } = sampling;
    let m = engine.manifest();
    let mut scheduler = Scheduler::new(&m.scheduler, kind, steps)?;
    let (_, c, h, w) = cond.masked_latents.dim();
    let per = c * h * w;
    let cfg = guidance > 1.0;
    let rows = if cfg { 2 * n } else { n };

    let mut latents = vec![0f32; n * per];
    for i in 0..n {
        noise.initial(i, &mut latents[i * per..(i + 1) * per]);
    }
    let sigma = scheduler.init_noise_sigma();
    if sigma != 1.0 {
        latents.iter_mut().for_each(|x| *x *= sigma);
    }

    let pick = |a: &Array3<f32>, count: usize| -> Array3<f32> {
        let one = a.slice(s![0..1, .., ..]);
        ndarray::concatenate(Axis(0), &vec![one; count]).expect("same shapes")
    };
    let (hidden, id_tokens, switch, row_latent): (Array3<f32>, Array3<f32>, Vec<f32>, Vec<usize>) =
        if cfg {
            let hidden = ndarray::concatenate(
                Axis(0),
                &[
                    pick(&cond.hidden_uncond, n).view(),
                    pick(&cond.hidden_cond, n).view(),
                ],
            )
            .expect("same shapes");
            let uncond_switch = if m.guidance.uncond_identity { 1.0 } else { 0.0 };
            let switch = [vec![uncond_switch; n], vec![1.0; n]].concat();
            (
                hidden,
                pick(&cond.id_tokens, rows),
                switch,
                (0..n).chain(0..n).collect(),
            )
        } else {
            (
                pick(&cond.hidden_cond, n),
                pick(&cond.id_tokens, n),
                vec![1.0; n],
                (0..n).collect(),
            )
        };
    let mask = ndarray::concatenate(Axis(0), &vec![cond.mask_latent.view(); rows]).expect("shapes");
    let masked =
        ndarray::concatenate(Axis(0), &vec![cond.masked_latents.view(); rows]).expect("shapes");

    let timesteps = scheduler.timesteps().to_vec();
    let mut denoiser = engine.denoiser(DenoiseInputs {
        hidden_states: hidden.view(),
        id_tokens: id_tokens.view(),
        id_switch: &switch,
        adapter: &cond.adapter_visual,
        mask: mask.view(),
        masked_latents: masked.view(),
        row_latent: &row_latent,
    })?;
    let mut pred = vec![0f32; rows * per];
    let mut eps = vec![0f32; n * per];
    let mut variance = vec![0f32; n * per];
    for (i, &t) in timesteps.iter().enumerate() {
        denoiser.predict(&latents, t as f32, &mut pred)?;
        let model_output: &[f32] = if cfg {
            let (uncond, cond_rows) = pred.split_at(n * per);
            for ((e, u), c) in eps.iter_mut().zip(uncond).zip(cond_rows) {
                *e = u + guidance * (c - u);
            }
            &eps
        } else {
            &pred
        };
        let var = if scheduler.needs_variance_noise() {
            for k in 0..n {
                noise.variance(k, i, &mut variance[k * per..(k + 1) * per]);
            }
            Some(variance.as_slice())
        } else {
            None
        };
        scheduler.step(i, model_output, &mut latents, var)?;
        on_step(i, &latents);
    }
    Ok(latents)
}
