//! The random choices of one tuning step ([`Draw`]) and where they come from ([`DrawSource`]:
//! [`SeededDraws`] in production, recorded draws in parity tests).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// The random choices of one step: which reference each sample inpaints, its training timestep, and
/// its noise.
#[derive(Debug, Clone, PartialEq)]
pub struct Draw {
    /// Target reference per sample [b].
    pub targets: Vec<usize>,
    /// Timestep per sample [b], in `[0, num_train_timesteps)`.
    pub timesteps: Vec<i64>,
    /// Standard-normal noise [b, 4, h, w], flat.
    pub noise: Vec<f32>,
}

impl Draw {
    /// A zeroed draw for `batch` samples of `latent_len` values each.
    pub fn zeros(batch: usize, latent_len: usize) -> Self {
        Self {
            targets: vec![0; batch],
            timesteps: vec![0; batch],
            noise: vec![0.0; batch * latent_len],
        }
    }
}

/// Where a tuning run's random draws come from.
pub trait DrawSource {
    /// Overwrites `draw` (already sized for the batch) with step `step`'s (0-based) choices among
    /// `references` targets and `num_train_timesteps` timesteps.
    fn draw(&mut self, step: usize, references: usize, num_train_timesteps: usize, draw: &mut Draw);
}

/// Reproducible draws: one ChaCha8 stream seeded with the run's seed, read in step order (each
/// step: the targets, then the timesteps, then the noise, as `pva.reference.tune` orders its draws).
#[derive(Debug, Clone)]
pub struct SeededDraws {
    rng: ChaCha8Rng,
}

impl SeededDraws {
    /// Draws for a run with this seed.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl DrawSource for SeededDraws {
    fn draw(
        &mut self,
        _step: usize,
        references: usize,
        num_train_timesteps: usize,
        draw: &mut Draw,
    ) {
        for t in draw.targets.iter_mut() {
            *t = self.rng.random_range(0..references);
        }
        for t in draw.timesteps.iter_mut() {
            *t = self.rng.random_range(0..num_train_timesteps as i64);
        }
        for x in draw.noise.iter_mut() {
            *x = StandardNormal.sample(&mut self.rng);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_draws_are_reproducible_and_in_range() {
        let mut a = SeededDraws::new(3);
        let mut b = SeededDraws::new(3);
        let mut c = SeededDraws::new(4);
        let (mut da, mut db, mut dc) = (
            Draw::zeros(2, 256),
            Draw::zeros(2, 256),
            Draw::zeros(2, 256),
        );
        let mut seen = [false; 3];
        for step in 0..50 {
            a.draw(step, 3, 1000, &mut da);
            b.draw(step, 3, 1000, &mut db);
            c.draw(step, 3, 1000, &mut dc);
            assert_eq!(da, db);
            assert_ne!(da.noise, dc.noise);
            for &t in &da.targets {
                seen[t] = true;
            }
            assert!(da.targets.iter().all(|&t| t < 3));
            assert!(da.timesteps.iter().all(|&t| (0..1000).contains(&t)));
        }
        assert_eq!(seen, [true; 3], "every reference is a target at some step");
        // The noise is standard normal.
        let mut noise = Vec::new();
        for step in 0..40 {
            a.draw(step, 3, 1000, &mut da);
            noise.extend_from_slice(&da.noise);
        }
        let mean = noise.iter().sum::<f32>() / noise.len() as f32;
        let var = noise.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / noise.len() as f32;
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }

    #[test]
    fn timesteps_cover_the_schedule() {
        let mut d = SeededDraws::new(0);
        let mut draw = Draw::zeros(2, 1);
        let (mut low, mut high) = (false, false);
        for step in 0..500 {
            d.draw(step, 2, 1000, &mut draw);
            low |= draw.timesteps.iter().any(|&t| t < 100);
            high |= draw.timesteps.iter().any(|&t| t >= 900);
        }
        assert!(low && high);
    }
}
