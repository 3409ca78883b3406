//! The tuning loop ([`run`]) and the whole job for one identity ([`tune_identity`]).

use std::time::Instant;

use super::super::inpaint::Pipeline;
use super::{
    Draw, DrawSource, LeaveOneOut, ReferenceCrop, SeededDraws, StepBatch, TuneError, TuneOptions,
};
use crate::engine::{Engine, EngineError};

/// A tuned adapter and how it got there.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuned {
    /// The adapter (visual + token, the manifest's layout).
    pub adapter: Vec<f32>,
    /// The loss of every step, before its update.
    pub losses: Vec<f32>,
    /// Seconds spent building the leave-one-out tensors (0 when the caller built them).
    pub build_seconds: f64,
    /// Seconds spent in the step loop.
    pub loop_seconds: f64,
}

/// The tuning loop: `options.steps` steps of `adapter_step` from `initial` on batches of `data`
/// drawn by `draws`. `progress(step, loss)` is called after each step (1-based). A non-finite loss
/// stops the run with [`TuneError::Diverged`].
pub fn run<E: Engine + ?Sized>(
    engine: &mut E,
    data: &LeaveOneOut,
    initial: &[f32],
    options: &TuneOptions,
    draws: &mut dyn DrawSource,
    progress: &mut dyn FnMut(usize, f32),
) -> Result<Tuned, TuneError> {
    options.validate()?;
    let start = Instant::now();
    let batch_size = engine.manifest().tuning.batch_size;
    let num_train_timesteps = engine.manifest().scheduler.num_train_timesteps;
    let mut batch = StepBatch::new(data, batch_size);
    let latent_len = batch.noise.len() / batch_size;
    let mut draw = Draw::zeros(batch_size, latent_len);
    let mut tuner = engine.tuner(initial, options.hyper)?;
    let mut losses = Vec::with_capacity(options.steps);
    for step in 0..options.steps {
        draws.draw(step, data.count(), num_train_timesteps, &mut draw);
        data.fill(&draw, &mut batch);
        let loss = tuner.step(&batch.view())?;
        if !loss.is_finite() {
            return Err(TuneError::Diverged {
                step: step + 1,
                loss,
            });
        }
        losses.push(loss);
        progress(step + 1, loss);
    }
    let adapter = tuner.params()?;
    if let Some(i) = adapter.iter().position(|x| !x.is_finite()) {
        return Err(TuneError::Diverged {
            step: options.steps,
            loss: adapter[i],
        });
    }
    Ok(Tuned {
        adapter,
        losses,
        build_seconds: 0.0,
        loop_seconds: start.elapsed().as_secs_f64(),
    })
}

/// Tunes an identity from its reference crops: builds the leave-one-out tensors, then runs
/// `options.steps` seeded steps from the model's untuned adapter.
pub fn tune_identity<E: Engine>(
    pipeline: &mut Pipeline<E>,
    references: &[ReferenceCrop],
    options: &TuneOptions,
    progress: &mut dyn FnMut(usize, f32),
) -> Result<Tuned, TuneError> {
    if !pipeline.engine_mut().can_tune() {
        return Err(EngineError::MissingGraph {
            graph: crate::model::manifest::TUNING_GRAPH,
            model: pipeline.manifest().name.clone(),
        }
        .into());
    }
    let start = Instant::now();
    let data = LeaveOneOut::build(pipeline, references)?;
    let build_seconds = start.elapsed().as_secs_f64();
    let initial = pipeline.base_adapter().to_vec();
    let mut draws = SeededDraws::new(options.seed);
    let mut tuned = run(
        pipeline.engine_mut(),
        &data,
        &initial,
        options,
        &mut draws,
        progress,
    )?;
    tuned.build_seconds = build_seconds;
    Ok(tuned)
}
