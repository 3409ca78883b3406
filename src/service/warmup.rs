//! The warm-up edit: one short edit of a built-in synthetic face at the model's resolution, through
//! every edit graph of a loaded pipeline. Each inference thread runs it before the worker counts as
//! started (so the first job does not pay kernel selection, arena growth or lazy initialisation), and
//! the engine probe behind `/healthz` runs the same edit when jobs keep failing in the engine.

use std::time::Instant;

use image::{Rgb, RgbImage};

use crate::engine::Engine;
use crate::pipeline::inpaint::{EditInput, MaskInput, Pipeline, PipelineError};
use crate::pipeline::mask::Region;
use crate::pipeline::noise::SeededNoise;
use crate::pipeline::scheduler::SchedulerKind;

/// The seed of the warm-up's noise (any fixed value: the output is thrown away).
const SEED: u64 = 0;

/// A synthetic face, `size` x `size`: a skin-toned oval on a graded background, with darker eyes
/// and mouth. Generated, so the warm-up needs no file; it only has to exercise every graph at the
/// shapes a job uses.
pub fn synthetic_face(size: u32) -> RgbImage {
    let s = size.max(1) as f32;
    RgbImage::from_fn(size, size, |x, y| {
        let (u, v) = ((x as f32 + 0.5) / s, (y as f32 + 0.5) / s);
        let oval = ((u - 0.5) / 0.32).powi(2) + ((v - 0.52) / 0.42).powi(2);
        let eye = |cx: f32| ((u - cx) / 0.07).powi(2) + ((v - 0.42) / 0.035).powi(2) < 1.0;
        let mouth = ((u - 0.5) / 0.13).powi(2) + ((v - 0.72) / 0.035).powi(2) < 1.0;
        if eye(0.37) || eye(0.63) {
            Rgb([40, 30, 25])
        } else if mouth {
            Rgb([150, 70, 70])
        } else if oval < 1.0 {
            let shade = (30.0 * (1.0 - oval)) as u8;
            Rgb([200 + shade / 2, 160 + shade / 2, 130 + shade / 3])
        } else {
            let g = (60.0 + 120.0 * v) as u8;
            Rgb([g / 2, g, g])
        }
    })
}

/// The warm-up edit of a model with `resolution`: the synthetic face as an aligned target and as its
/// own reference, the lower face repainted "with a beard", `steps` DDIM steps at guidance 1 (a job's
/// default), one output.
pub fn warmup_input(resolution: u32, steps: usize) -> EditInput {
    let face = synthetic_face(resolution);
    EditInput {
        target: face.clone(),
        target_face: None,
        target_roll: 0.0,
        target_landmarks: Vec::new(),
        mask: MaskInput::Region(Region::LowerFace),
        references: vec![(face, None)],
        prompt: "with a beard".into(),
        negative_prompt: String::new(),
        scheduler: SchedulerKind::Ddim { eta: 1.0 },
        steps: steps.max(1),
        guidance: 1.0,
        num_outputs: 1,
        adapter: None,
        identity: None,
    }
}

/// Runs the warm-up edit on `pipeline` and returns its seconds. An error means the engine cannot
/// run an edit at all (a failed graph run, or non-finite outputs).
pub fn warm_up<E: Engine>(pipeline: &mut Pipeline<E>, steps: usize) -> Result<f64, PipelineError> {
    let t = Instant::now();
    let input = warmup_input(pipeline.manifest().resolution, steps);
    pipeline.edit(&input, &mut SeededNoise::new(SEED))?;
    Ok(t.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_synthetic_face_is_square_and_not_flat() {
        let face = synthetic_face(64);
        assert_eq!(face.dimensions(), (64, 64));
        let distinct: std::collections::BTreeSet<_> = face.pixels().map(|p| p.0).collect();
        assert!(distinct.len() > 10, "{} colours", distinct.len());
        let input = warmup_input(64, 0);
        assert_eq!(input.steps, 1, "at least one step");
        assert_eq!(input.references.len(), 1);
    }
}
