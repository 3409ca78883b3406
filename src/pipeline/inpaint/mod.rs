//! The PVA edit: decoded images in, edited images out, driving the graphs through an
//! [`Engine`](crate::engine::Engine).
//!
//! Stages (each timed): `preprocess` (crops, masks, tensors), `encode` (text, faces, identity tokens,
//! VAE encode), `denoise` (the sampler loop), `decode` (VAE decode, paste-back, identity score).
//! Conventions follow models/CONTRACT.md ("Pipeline conventions").
//!
//! Its parts: the inputs, outputs and errors of an edit (here), `edit` (the [`Pipeline`] that runs
//! one) and `denoise` (the sampler loop, [`denoise`], and the [`Conditioning`] it reads).

use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use ndarray::{Array2, Array3};

use super::face::{self, CropRect, FaceBox};
use super::mask::{Mask, PixelBox, Region};
use super::scheduler::SchedulerKind;
use crate::engine::EngineError;
use crate::model::Stage;

mod denoise;
mod edit;

pub use denoise::{denoise, Conditioning, Sampling};
pub use edit::{cosine, Pipeline};

/// Why an edit could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// An input image or mask does not fit the job (names which and why).
    #[error("{what}: {problem}")]
    Input {
        /// Which input, e.g. `target`, `mask`, `identity.references[1]`.
        what: String,
        /// What is wrong.
        problem: String,
    },
    /// Face geometry could not be applied.
    #[error("{what}: {source}")]
    Face {
        /// Which input.
        what: String,
        /// The geometry error.
        source: face::FaceError,
    },
    /// The mask could not be built.
    #[error("mask: {0}")]
    Mask(#[from] super::mask::MaskError),
    /// The prompt could not be tokenized.
    #[error("prompt: {0}")]
    Tokenizer(#[from] super::tokenizer::TokenizerError),
    /// The sampler refused its settings.
    #[error("scheduler: {0}")]
    Scheduler(#[from] super::scheduler::SchedulerError),
    /// A graph failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Decoded inputs of one edit.
#[derive(Debug, Clone)]
pub struct EditInput {
    /// The photo to edit (EXIF orientation applied).
    pub target: RgbImage,
    /// Face box in `target`; `None` when the target is a square, aligned face.
    pub target_face: Option<FaceBox>,
    /// The target face's roll (radians, the eye line's `atan2(dy, dx)`, y down): the crop is turned
    /// by it so the face stands upright, and the edit turned back at paste-back. 0: not turned.
    pub target_roll: f64,
    /// The target face's 468 landmarks (x, y, photo pixels) when the worker found it: the named
    /// regions become landmark polygons (`face::landmark_mask`). Empty: the regions' fixed boxes.
    pub target_landmarks: Vec<[f64; 2]>,
    /// The repaint region.
    pub mask: MaskInput,
    /// Reference photos with optional face boxes (1..=max_references).
    pub references: Vec<(RgbImage, Option<FaceBox>)>,
    /// The job's prompt ("with a beard").
    pub prompt: String,
    /// Negative prompt for the unconditional row.
    pub negative_prompt: String,
    /// Sampler.
    pub scheduler: SchedulerKind,
    /// Denoising steps.
    pub steps: usize,
    /// Guidance scale (1 = one conditional row).
    pub guidance: f32,
    /// Number of outputs, batched in one UNet call per step.
    pub num_outputs: usize,
    /// A tuned adapter (visual + token, the manifest's layout); `None` uses the model's own.
    pub adapter: Option<Vec<f32>>,
    /// The references' [`Identity`] from an earlier edit with the same model and references (the
    /// job runner's identity cache): the reference crops, the face embedder and the id former are
    /// skipped. `None`: computed from `references`.
    pub identity: Option<Arc<Identity>>,
}

/// What an edit reads from its reference photos: their face embeddings (the identity score's
/// reference) and the id former's identity tokens (what the UNet attends to). Derived face data:
/// kept in memory only, never written.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The face embedder's output per reference, [R, E].
    pub embeddings: Array2<f32>,
    /// The id former's identity tokens, [1, T, D].
    pub tokens: Array3<f32>,
}

/// The repaint region, before it is mapped to the face crop.
#[derive(Debug, Clone)]
pub enum MaskInput {
    /// A mask image the size of the target (white = repaint).
    Image(RgbImage),
    /// A box in target pixels.
    Box(PixelBox),
    /// A named region of the aligned crop.
    Region(Region),
}

/// One edited output.
#[derive(Debug, Clone)]
pub struct EditedImage {
    /// The full photo with the edit pasted back.
    pub image: RgbImage,
    /// The generated face crop at model resolution.
    pub crop: RgbImage,
    /// Cosine similarity of the crop's face embedding to the mean reference embedding.
    pub identity_score: f32,
}

/// Seconds per stage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    /// Stage name and seconds, in order.
    pub stages: Vec<(Stage, f64)>,
}

/// The stage an edit is in: its span ([`Stage::span`]) entered from the stage's start until the
/// next one starts, and each stage's seconds recorded when it ends.
struct StageClock {
    timings: Timings,
    stage: Stage,
    since: Instant,
    span: tracing::span::EnteredSpan,
}

impl StageClock {
    /// Starts `stage`.
    fn start(stage: Stage) -> Self {
        Self {
            timings: Timings::default(),
            stage,
            since: Instant::now(),
            span: stage.span().entered(),
        }
    }

    /// Ends the current stage and starts `stage`.
    fn next(&mut self, stage: Stage) {
        self.end();
        self.stage = stage;
        self.since = Instant::now();
        self.span = stage.span().entered();
    }

    fn end(&mut self) {
        let secs = self.since.elapsed().as_secs_f64();
        self.timings.stages.push((self.stage, secs));
        // The span closes before the next one opens, so stages are siblings, not nested.
        std::mem::replace(&mut self.span, tracing::Span::none().entered()).exit();
    }

    /// Ends the last stage; the seconds of every stage.
    fn finish(mut self) -> Timings {
        self.end();
        self.timings
    }
}

impl Timings {
    /// Total seconds.
    pub fn total(&self) -> f64 {
        self.stages.iter().map(|(_, s)| s).sum()
    }
}

/// The result of an edit.
#[derive(Debug, Clone)]
pub struct EditOutput {
    /// Outputs in index order.
    pub images: Vec<EditedImage>,
    /// Where the face crop sits in the target.
    pub crop_rect: CropRect,
    /// The mask at model resolution (for contact sheets).
    pub mask: Mask,
    /// The references' identity this edit used (given in the input or computed now).
    pub identity: Arc<Identity>,
    /// Seconds per stage.
    pub timings: Timings,
}

/// How the pipeline crops and pastes back (from the worker's `[pipeline]` settings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PipelineOptions {
    /// Margin around a face box on each side, as a fraction of the box side, for the square crop.
    pub face_margin: f32,
    /// Width in pixels (of the original image) of the blend band when pasting the edit back.
    pub feather_px: u32,
}
