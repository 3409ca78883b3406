//! The PVA edit: decoded images in, edited images out, driving the graphs through an [`Engine`].
//!
//! Stages (each timed): `preprocess` (crops, masks, tensors), `encode` (text, faces, identity tokens,
//! VAE encode), `denoise` (the sampler loop), `decode` (VAE decode, paste-back, identity score).
//! Conventions follow models/CONTRACT.md ("Pipeline conventions").

use std::collections::HashMap;
use std::time::Instant;

use image::RgbImage;
use ndarray::{s, Array1, Array2, Array3, Array4, Axis};

use super::face::{self, CropRect, FaceBox};
use super::image as img;
use super::mask::{Mask, PixelBox, Region};
use super::noise::NoiseSource;
use super::scheduler::{Scheduler, SchedulerKind};
use super::tokenizer::PromptTokenizer;
use crate::engine::{DenoiseInputs, Engine, EngineError};
use crate::model::Stage;

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

impl Timings {
    fn record(&mut self, stage: Stage, since: Instant) -> Instant {
        let now = Instant::now();
        self.stages.push((stage, (now - since).as_secs_f64()));
        now
    }
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
    /// Seconds per stage.
    pub timings: Timings,
}

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

/// How the pipeline crops and pastes back (from the worker's `[pipeline]` settings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PipelineOptions {
    /// Margin around a face box on each side, as a fraction of the box side, for the square crop.
    pub face_margin: f32,
    /// Width in pixels (of the original image) of the blend band when pasting the edit back.
    pub feather_px: u32,
}

/// The bounded cache of unconditional (negative prompt) text embeddings.
const UNCOND_CACHE_ENTRIES: usize = 16;

/// A loaded model with its tokenizer, ready to edit. Owned by one inference thread.
pub struct Pipeline<E: Engine> {
    engine: E,
    tokenizer: PromptTokenizer,
    settings: PipelineOptions,
    base_adapter: Vec<f32>,
    uncond_cache: HashMap<String, Array3<f32>>,
}

impl<E: Engine> Pipeline<E> {
    /// Wraps an engine; `base_adapter` is the model's untuned adapter (visual + token).
    pub fn new(engine: E, base_adapter: Vec<f32>, settings: PipelineOptions) -> Self {
        let tokenizer = PromptTokenizer::new(engine.manifest().tokenizer.clone());
        Self {
            engine,
            tokenizer,
            settings,
            base_adapter,
            uncond_cache: HashMap::new(),
        }
    }

    /// The engine (for the tuning loop and tests).
    pub fn engine_mut(&mut self) -> &mut E {
        &mut self.engine
    }

    /// The engine's manifest.
    pub fn manifest(&self) -> &crate::engine::Manifest {
        self.engine.manifest()
    }

    /// The model's untuned adapter (visual + token).
    pub fn base_adapter(&self) -> &[f32] {
        &self.base_adapter
    }

    /// Token ids of the job's prompt inside the manifest's template.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<i64>, PipelineError> {
        let text = self
            .tokenizer
            .personalized(&self.engine.manifest().prompt_template, prompt);
        Ok(self.tokenizer.encode(&text)?)
    }

    /// Token ids of a negative prompt (no template).
    pub fn negative_ids(&self, negative: &str) -> Result<Vec<i64>, PipelineError> {
        Ok(self.tokenizer.encode(negative)?)
    }

    fn text(&mut self, ids: Vec<i64>, token: &[f32]) -> Result<Array3<f32>, PipelineError> {
        let len = ids.len();
        let ids = Array2::from_shape_vec((1, len), ids).expect("one row of ids");
        let token = Array1::from(token.to_vec());
        Ok(self.engine.encode_text(ids.view(), token.view())?)
    }

    fn uncond(&mut self, negative: &str, token: &[f32]) -> Result<Array3<f32>, PipelineError> {
        // NOTE: the negative prompt never contains the personalized token, so its embedding does not
        // depend on the adapter and can be cached per text.
        if let Some(h) = self.uncond_cache.get(negative) {
            return Ok(h.clone());
        }
        let ids = self.negative_ids(negative)?;
        let h = self.text(ids, token)?;
        if self.uncond_cache.len() >= UNCOND_CACHE_ENTRIES {
            self.uncond_cache.clear();
        }
        self.uncond_cache.insert(negative.to_string(), h.clone());
        Ok(h)
    }

    /// Reference photos -> aligned 112x112 crops as [R, 3, 112, 112].
    fn reference_faces(
        &self,
        references: &[(RgbImage, Option<FaceBox>)],
    ) -> Result<Array4<f32>, PipelineError> {
        let size = self.engine.manifest().face.crop_size;
        let max = self.engine.manifest().max_references;
        if references.is_empty() || references.len() > max {
            return Err(PipelineError::Input {
                what: "identity.references".into(),
                problem: format!("{} references, the model takes 1..={max}", references.len()),
            });
        }
        let mut faces = Array4::<f32>::zeros((references.len(), 3, size as usize, size as usize));
        for (i, (image, face_box)) in references.iter().enumerate() {
            let what = format!("identity.references[{i}]");
            let rect = self.face_rect(&what, image, *face_box)?;
            let crop = face::crop_resize(image, rect, size);
            img::to_chw(
                &crop,
                faces
                    .index_axis_mut(Axis(0), i)
                    .as_slice_mut()
                    .expect("standard layout"),
            );
        }
        Ok(faces)
    }

    fn face_rect(
        &self,
        what: &str,
        image: &RgbImage,
        face_box: Option<FaceBox>,
    ) -> Result<CropRect, PipelineError> {
        let (w, h) = image.dimensions();
        match face_box {
            Some(b) => face::crop_rect(b, self.settings.face_margin, w, h).map_err(|source| {
                PipelineError::Face {
                    what: what.to_string(),
                    source,
                }
            }),
            None if w == h && w > 0 => Ok(CropRect {
                x: 0,
                y: 0,
                size: w,
            }),
            None => Err(PipelineError::Input {
                what: what.to_string(),
                problem: format!(
                    "is {w}x{h} and has no face_box; give a face_box or an aligned square face"
                ),
            }),
        }
    }

    fn mask(
        &self,
        input: &MaskInput,
        target: &RgbImage,
        rect: CropRect,
    ) -> Result<Mask, PipelineError> {
        let res = self.engine.manifest().resolution;
        match input {
            MaskInput::Region(r) => Ok(Mask::from_region(*r, res)?),
            MaskInput::Box(b) => {
                // Map the box from target pixels into crop pixels, rounding outward.
                let scale = res as f64 / rect.size as f64;
                let x0 = ((b.x as f64 - rect.x as f64) * scale).floor().max(0.0);
                let y0 = ((b.y as f64 - rect.y as f64) * scale).floor().max(0.0);
                // NOTE: in u64: a box at x = u32::MAX with any width must not overflow.
                let x1 = (((b.x as u64 + b.width as u64) as f64 - rect.x as f64) * scale)
                    .ceil()
                    .min(res as f64);
                let y1 = (((b.y as u64 + b.height as u64) as f64 - rect.y as f64) * scale)
                    .ceil()
                    .min(res as f64);
                if x1 <= x0 || y1 <= y0 {
                    return Err(PipelineError::Input {
                        what: "mask.box".into(),
                        problem: "lies outside the face crop".into(),
                    });
                }
                Ok(Mask::from_box(
                    PixelBox {
                        x: x0 as u32,
                        y: y0 as u32,
                        width: (x1 - x0) as u32,
                        height: (y1 - y0) as u32,
                    },
                    res,
                )?)
            }
            MaskInput::Image(m) => {
                if m.dimensions() != target.dimensions() {
                    return Err(PipelineError::Input {
                        what: "mask".into(),
                        problem: format!(
                            "is {}x{}, the target is {}x{}",
                            m.width(),
                            m.height(),
                            target.width(),
                            target.height()
                        ),
                    });
                }
                let crop = face::crop_resize(m, rect, res);
                Ok(Mask::from_image(
                    &image::DynamicImage::ImageRgb8(crop),
                    res,
                )?)
            }
        }
    }

    /// Runs a whole edit with the given noise.
    pub fn edit(
        &mut self,
        input: &EditInput,
        noise: &mut dyn NoiseSource,
    ) -> Result<EditOutput, PipelineError> {
        let mut timings = Timings::default();
        let t = Instant::now();
        let m = self.engine.manifest().clone();
        let res = m.resolution;
        let rect = self.face_rect("target", &input.target, input.target_face)?;
        let crop = face::crop_resize(&input.target, rect, res);
        let mask = self.mask(&input.mask, &input.target, rect)?;
        let refs = self.reference_faces(&input.references)?;
        let mut image = Array4::<f32>::zeros((1, 3, res as usize, res as usize));
        img::to_chw(&crop, image.as_slice_mut().expect("standard layout"));
        let masked = super::mask::masked_image(image.as_slice().expect("standard layout"), &mask);
        let masked = Array4::from_shape_vec(image.dim(), masked).expect("same shape");
        let h = m.latent.size;
        let mask_latent = Array4::from_shape_vec((1, 1, h, h), mask.downsample_nearest(h as u32))
            .expect("latent mask shape");
        let t = timings.record(Stage::Preprocess, t);

        let adapter = input
            .adapter
            .as_deref()
            .unwrap_or(&self.base_adapter)
            .to_vec();
        let layout = m.adapter.visual_length + m.adapter.token_length;
        if adapter.len() != layout {
            return Err(PipelineError::Input {
                what: "adapter".into(),
                problem: format!("has {} values, the model's layout {layout}", adapter.len()),
            });
        }
        let (visual, token) = adapter.split_at(m.adapter.visual_length);
        let hidden_cond = self.text(self.prompt_ids(&input.prompt)?, token)?;
        let hidden_uncond = if input.guidance > 1.0 {
            self.uncond(&input.negative_prompt, token)?
        } else {
            hidden_cond.clone()
        };
        let ref_embeddings = self.engine.embed_faces(refs.view())?;
        let id_tokens = self
            .engine
            .id_tokens(ref_embeddings.view().insert_axis(Axis(0)))?;
        let masked_latents = self.engine.vae_encode(masked.view())? * m.vae.scaling_factor;
        let cond = Conditioning {
            hidden_cond,
            hidden_uncond,
            id_tokens,
            adapter_visual: visual.to_vec(),
            mask_latent,
            masked_latents,
        };
        let t = timings.record(Stage::Encode, t);

        let latents = denoise(
            &mut self.engine,
            &cond,
            input.scheduler,
            input.steps,
            input.guidance,
            input.num_outputs,
            noise,
            &mut |_, _| {},
        )?;
        let t = timings.record(Stage::Denoise, t);

        let n = input.num_outputs;
        let latents = Array4::from_shape_vec((n, m.latent.channels, h, h), latents)
            .expect("latent shape")
            / m.vae.scaling_factor;
        let decoded = self.engine.vae_decode(latents.view())?;
        let mut crops = Vec::with_capacity(n);
        let face = m.face.crop_size as usize;
        let mut faces = Array4::<f32>::zeros((n, 3, face, face));
        for i in 0..n {
            let chw = decoded.index_axis(Axis(0), i);
            let out = img::from_chw(
                chw.as_standard_layout().as_slice().expect("contiguous"),
                res,
                res,
            );
            let small = face::crop_resize(
                &out,
                CropRect {
                    x: 0,
                    y: 0,
                    size: res,
                },
                face as u32,
            );
            img::to_chw(
                &small,
                faces
                    .index_axis_mut(Axis(0), i)
                    .as_slice_mut()
                    .expect("standard layout"),
            );
            crops.push(out);
        }
        let out_embeddings = self.engine.embed_faces(faces.view())?;
        let mean_ref = ref_embeddings
            .mean_axis(Axis(0))
            .expect("at least one reference");
        let images = crops
            .into_iter()
            .enumerate()
            .map(|(i, crop)| EditedImage {
                image: face::paste_back(
                    &input.target,
                    rect,
                    &crop,
                    &mask,
                    self.settings.feather_px,
                ),
                identity_score: cosine(
                    out_embeddings.row(i).as_slice().expect("row"),
                    mean_ref.as_slice().expect("mean"),
                ),
                crop,
            })
            .collect();
        timings.record(Stage::Decode, t);
        Ok(EditOutput {
            images,
            crop_rect: rect,
            mask,
            timings,
        })
    }
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        ab += (*x as f64) * (*y as f64);
        aa += (*x as f64) * (*x as f64);
        bb += (*y as f64) * (*y as f64);
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        (ab / (aa.sqrt() * bb.sqrt())) as f32
    }
}

/// The sampler loop: `n` outputs denoised together, with classifier-free guidance as one batched
/// UNet call (rows `[uncond x n ; cond x n]`, identity keys removed from the uncond rows) when
/// `guidance > 1`, a single conditional row per output otherwise. Returns the final scaled latents
/// [n, 4, h, w] flat. `on_step(i, latents)` sees the latents after each step.
#[allow(clippy::too_many_arguments)]
pub fn denoise<E: Engine + ?Sized>(
    engine: &mut E,
    cond: &Conditioning,
    kind: SchedulerKind,
    steps: usize,
    guidance: f32,
    n: usize,
    noise: &mut dyn NoiseSource,
    on_step: &mut dyn FnMut(usize, &[f32]),
) -> Result<Vec<f32>, PipelineError> {
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
            let switch = [vec![0.0; n], vec![1.0; n]].concat();
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
