//! Per-identity adapter tuning: PVA's "lightweight adapter-tuning step" (the paper's 40 AdamW steps on
//! the `to_visual_q/k/v` projections and the `<new1>` token) driven through `adapter_step.onnx`.
//!
//! The data is the identity's own references, leave-one-out (`python -m pva.reference.tune` does the
//! same in Python): each sample picks one reference as the inpainting target, its `whole_face` region
//! masked, and the other references as the identity; the loss is the noise-prediction MSE at a random
//! timestep. [`LeaveOneOut::build`] encodes every reference once (VAE latents of the image and of the
//! masked image, identity tokens of the others); each step then only gathers rows and adds the step's
//! draws (targets, timesteps, noise) from a [`DrawSource`]: [`SeededDraws`] in production, recorded
//! draws in parity tests. [`run`] is the loop; [`tune_identity`] is the whole job.
//!
//! Its parts: `options` (the run's settings and [`TuneError`]), `data` (the reference crops, the
//! [`LeaveOneOut`] tensors and the [`StepBatch`] each step gathers from them), `draws` (the random
//! choices of a step and their sources) and `step_loop` ([`run`] and [`tune_identity`]).

mod data;
mod draws;
mod options;
mod step_loop;

pub use data::{LeaveOneOut, ReferenceCrop, StepBatch};
pub use draws::{Draw, DrawSource, SeededDraws};
pub use options::{TuneError, TuneOptions};
pub use step_loop::{run, tune_identity, Tuned};
