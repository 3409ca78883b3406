//! The [`Pipeline`]: a loaded model with its tokenizer, running whole edits (crops, masks,
//! encoders, the sampler loop, decode and paste-back).

use std::collections::HashMap;
use std::sync::Arc;

use image::RgbImage;
use ndarray::{Array1, Array2, Array3, Array4, Axis};

use super::super::face::{self, CropRect, FaceBox};
use super::super::image as img;
use super::super::mask::{Mask, PixelBox};
use super::super::noise::NoiseSource;
use super::super::tokenizer::PromptTokenizer;
use super::{
    denoise, Conditioning, EditInput, EditOutput, EditedImage, Identity, MaskInput, PipelineError,
    PipelineOptions, Sampling, StageClock,
};
use crate::engine::Engine;
use crate::model::Stage;

/// The crop of `rect` at `size`: as it is (roll 0), or turned upright first at the photo's scale
/// (`face::upright`), then resized the same way.
fn crop_turned(img: &RgbImage, rect: CropRect, roll: f64, size: u32) -> RgbImage {
    if roll == 0.0 {
        return face::crop_resize(img, rect, size);
    }
    let up = face::upright(img, rect, roll);
    face::crop_resize(
        &up,
        CropRect {
            x: 0,
            y: 0,
            size: rect.size,
        },
        size,
    )
}

/// An edit's references: their identity already known, or their crops to compute it from.
enum References {
    Known(Arc<Identity>),
    Crops(Array4<f32>),
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

    /// Token ids of a negative prompt (no template); an empty one (or only whitespace) is the
    /// manifest's `guidance.negative_prompt`.
    pub fn negative_ids(&self, negative: &str) -> Result<Vec<i64>, PipelineError> {
        let text = self.engine.manifest().guidance.negative_prompt(negative);
        Ok(self.tokenizer.encode(text)?)
    }

    fn text(&mut self, ids: Vec<i64>, token: &[f32]) -> Result<Array3<f32>, PipelineError> {
        let len = ids.len();
        let ids = Array2::from_shape_vec((1, len), ids).expect("one row of ids");
        let token = Array1::from(token.to_vec());
        Ok(self.engine.encode_text(ids.view(), token.view())?)
    }

    fn uncond(&mut self, negative: &str, token: &[f32]) -> Result<Array3<f32>, PipelineError> {
        // NOTE: a negative prompt without the personalized token (the template is not applied to it)
        // does not depend on the adapter, so its hidden states are cached per text; one that spells
        // out `<new1>` reads the adapter's token embedding and is encoded every time.
        if let Some(h) = self.uncond_cache.get(negative) {
            return Ok(h.clone());
        }
        let ids = self.negative_ids(negative)?;
        let cacheable = !ids.contains(&self.tokenizer.config().new_token_id);
        let h = self.text(ids, token)?;
        if cacheable {
            if self.uncond_cache.len() >= UNCOND_CACHE_ENTRIES {
                self.uncond_cache.clear();
            }
            self.uncond_cache.insert(negative.to_string(), h.clone());
        }
        Ok(h)
    }

    /// Reference photos -> the face embedder's input [R, 3, 112, 112]: each aligned crop cut at the
    /// face path's source size, then through the manifest's embed window (`face::embed_input`).
    fn reference_faces(
        &self,
        references: &[(RgbImage, Option<FaceBox>)],
    ) -> Result<Array4<f32>, PipelineError> {
        let size = self.engine.manifest().face.source_size();
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
        Ok(face::embed_input(faces, &self.engine.manifest().face))
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
                    "is {w}x{h} and has no face_box: an aligned face crop (\"face\": \"aligned\") \
                     must be square; give a face_box or let the worker find the face"
                ),
            }),
        }
    }

    fn mask(&self, edit: &EditInput, rect: CropRect, roll: f64) -> Result<Mask, PipelineError> {
        let (input, target) = (&edit.mask, &edit.target);
        let res = self.engine.manifest().resolution;
        let whole = CropRect {
            x: 0,
            y: 0,
            size: rect.size,
        };
        match input {
            // A face the worker found: the region's landmark polygons.
            MaskInput::Region(r) if !edit.target_landmarks.is_empty() => {
                let points = face::points_in_crop(&edit.target_landmarks, rect, roll, res);
                Ok(face::landmark_mask(*r, &points, res)?)
            }
            MaskInput::Region(r) => Ok(Mask::from_region(*r, res)?),
            // A turned crop: the box drawn into the upright square, resized as a mask image.
            MaskInput::Box(b) if roll != 0.0 => {
                let (x0, y0) = (f64::from(b.x), f64::from(b.y));
                let bx = [x0, y0, x0 + f64::from(b.width), y0 + f64::from(b.height)];
                let drawn = face::upright_box(rect, roll, bx);
                let small = face::crop_resize(&drawn, whole, res);
                if small.pixels().all(|p| p.0[0] < 128) {
                    return Err(PipelineError::Input {
                        what: "mask.box".into(),
                        problem: "lies outside the face crop".into(),
                    });
                }
                Ok(Mask::from_image(
                    &image::DynamicImage::ImageRgb8(small),
                    res,
                )?)
            }
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
                let crop = crop_turned(m, rect, roll, res);
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
        self.edit_with_progress(input, noise, &mut |_, _| {})
    }

    /// As [`Self::edit`], calling `on_step(step, steps)` after each denoising step (1-based).
    pub fn edit_with_progress(
        &mut self,
        input: &EditInput,
        noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<EditOutput, PipelineError> {
        let mut clock = StageClock::start(Stage::Preprocess);
        let m = self.engine.manifest().clone();
        let res = m.resolution;
        let rect = self.face_rect("target", &input.target, input.target_face)?;
        let roll = input.target_roll;
        let target_crop = crop_turned(&input.target, rect, roll, res);
        let mask = self.mask(input, rect, roll)?;
        // The references' crops only when their identity is not known yet.
        let refs = match &input.identity {
            Some(known) => References::Known(Arc::clone(known)),
            None => References::Crops(self.reference_faces(&input.references)?),
        };
        let mut image = Array4::<f32>::zeros((1, 3, res as usize, res as usize));
        img::to_chw(&target_crop, image.as_slice_mut().expect("standard layout"));
        let masked =
            super::super::mask::masked_image(image.as_slice().expect("standard layout"), &mask);
        let masked = Array4::from_shape_vec(image.dim(), masked).expect("same shape");
        let h = m.latent.size;
        let mask_latent = Array4::from_shape_vec((1, 1, h, h), mask.downsample_nearest(h as u32))
            .expect("latent mask shape");
        clock.next(Stage::Encode);

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
        let identity = match refs {
            References::Known(known) => known,
            References::Crops(faces) => {
                let embeddings = self.engine.embed_faces(faces.view())?;
                let tokens = self
                    .engine
                    .id_tokens(embeddings.view().insert_axis(Axis(0)))?;
                Arc::new(Identity { embeddings, tokens })
            }
        };
        let id_tokens = identity.tokens.clone();
        let masked_latents = self.engine.vae_encode(masked.view())? * m.vae.scaling_factor;
        let cond = Conditioning {
            hidden_cond,
            hidden_uncond,
            id_tokens,
            adapter_visual: visual.to_vec(),
            mask_latent,
            masked_latents,
        };
        clock.next(Stage::Denoise);

        let latents = denoise(
            &mut self.engine,
            &cond,
            Sampling {
                scheduler: input.scheduler,
                steps: input.steps,
                guidance: input.guidance,
                num_outputs: input.num_outputs,
            },
            noise,
            &mut |i, _| on_step(i + 1, input.steps),
        )?;
        clock.next(Stage::Decode);

        let n = input.num_outputs;
        let latents = Array4::from_shape_vec((n, m.latent.channels, h, h), latents)
            .expect("latent shape")
            / m.vae.scaling_factor;
        let decoded = self.engine.vae_decode(latents.view())?;
        let mut crops = Vec::with_capacity(n);
        // The output crop takes the references' path to the face embedder: cut at the source size,
        // then the embed window.
        let face = m.face.source_size() as usize;
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
        let faces = face::embed_input(faces, &m.face);
        let out_embeddings = self.engine.embed_faces(faces.view())?;
        let mean_ref = identity
            .embeddings
            .mean_axis(Axis(0))
            .expect("at least one reference");
        let feather = self.settings.feather_px;
        let paste = |edit: &RgbImage| {
            if roll == 0.0 {
                face::paste_back(&input.target, rect, edit, &mask, feather)
            } else {
                face::paste_back_turned(&input.target, rect, roll, edit, &mask, feather)
            }
        };
        let images = crops
            .into_iter()
            .enumerate()
            .map(|(i, crop)| {
                // The edit's colours matched to the photo around the mask (`face::seam`), then
                // pasted; the crop itself stays as the model made it.
                let image = paste(&face::match_colour(&target_crop, &crop, &mask));
                if roll == 0.0 && tracing::enabled!(tracing::Level::DEBUG) {
                    let seam = face::seam_measure(&image, rect, &mask, feather);
                    let unmatched = face::seam_measure(&paste(&crop), rect, &mask, feather);
                    tracing::debug!(
                        output = i,
                        seam = ?seam,
                        seam_without_colour_match = ?unmatched,
                        "seam measure of the paste-back (about 1: no visible border)"
                    );
                }
                EditedImage {
                    image,
                    identity_score: cosine(
                        out_embeddings.row(i).as_slice().expect("row"),
                        mean_ref.as_slice().expect("mean"),
                    ),
                    crop,
                }
            })
            .collect();
        Ok(EditOutput {
            images,
            crop_rect: rect,
            mask,
            identity,
            timings: clock.finish(),
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
