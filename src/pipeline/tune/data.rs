//! The data of a tuning run: reference crops at model size, the [`LeaveOneOut`] tensors encoded
//! once per run, and the [`StepBatch`] each step gathers from them.

use image::imageops;
use image::RgbImage;
use ndarray::{s, Array1, Array2, Array3, Array4, Axis};

use super::super::face::{self, CropRect, FaceBox};
use super::super::image as img;
use super::super::inpaint::Pipeline;
use super::super::mask::{masked_image, Mask, Region};
use super::{Draw, TuneError};
use crate::engine::{Engine, Manifest, TuningBatch};

/// One reference at model size: the image the VAE encodes (model resolution) and the aligned face
/// crop the face path starts from (`face.source_size()`: the embed window's source size, or
/// `face.crop_size` without a window), both from the same square around the face.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceCrop {
    /// `resolution` x `resolution`.
    pub image: RgbImage,
    /// `source_size` x `source_size`.
    pub face: RgbImage,
}

impl ReferenceCrop {
    /// Crops a reference photo: the square around `face_box` (with `margin`, as the edit crops its
    /// references), or the whole photo when it is already a square, aligned face.
    pub fn from_photo(
        what: &str,
        photo: &RgbImage,
        face_box: Option<FaceBox>,
        margin: f32,
        manifest: &Manifest,
    ) -> Result<Self, TuneError> {
        let (w, h) = photo.dimensions();
        let rect = match face_box {
            Some(b) => face::crop_rect(b, margin, w, h).map_err(|source| TuneError::Face {
                what: what.to_string(),
                source,
            })?,
            None if w == h && w > 0 => CropRect {
                x: 0,
                y: 0,
                size: w,
            },
            None => {
                return Err(TuneError::Input {
                    what: what.to_string(),
                    problem: format!(
                        "is {w}x{h} and has no face box; give a face box or an aligned square face"
                    ),
                })
            }
        };
        Ok(Self {
            image: face::crop_resize(photo, rect, manifest.resolution),
            face: face::crop_resize(photo, rect, manifest.face.source_size()),
        })
    }

    /// The reference mirrored left to right (image and face crop).
    pub fn mirrored(&self) -> Self {
        Self {
            image: imageops::flip_horizontal(&self.image),
            face: imageops::flip_horizontal(&self.face),
        }
    }
}

/// The per-target tensors of one identity: row `i` has reference `i` as the target and the others
/// as the identity. Built once per tuning run; every step gathers rows from it.
#[derive(Debug, Clone)]
pub struct LeaveOneOut {
    input_ids: Array1<i64>,
    latents: Array4<f32>,
    mask: Array3<f32>,
    masked_latents: Array4<f32>,
    id_tokens: Array3<f32>,
}

impl LeaveOneOut {
    /// Encodes the references through the model's graphs: VAE latents of each image and of the
    /// image with its `whole_face` region masked (scaled), the face embeddings (through the embed
    /// window), and for every target the identity tokens of the other references (one `id_former`
    /// call for all targets); the prompt is the manifest's template with an empty prompt ("a <new1>
    /// person"; the paper's "photo of a <new1> person" for sd2).
    ///
    /// With a single reference its mirror image is the second one (`references` are never enough
    /// for leave-one-out otherwise); `pva.reference.tune` asks for at least two.
    pub fn build<E: Engine>(
        pipeline: &mut Pipeline<E>,
        references: &[ReferenceCrop],
    ) -> Result<Self, TuneError> {
        let m = pipeline.manifest().clone();
        if references.is_empty() || references.len() > m.max_references {
            return Err(TuneError::Input {
                what: "references".into(),
                problem: format!(
                    "{} references, tuning takes 1..={}",
                    references.len(),
                    m.max_references
                ),
            });
        }
        let (res, crop) = (m.resolution, m.face.source_size());
        for (i, r) in references.iter().enumerate() {
            if r.image.dimensions() != (res, res) || r.face.dimensions() != (crop, crop) {
                return Err(TuneError::Input {
                    what: format!("references[{i}]"),
                    problem: format!(
                        "crops are {:?} and {:?}, the model takes {res}x{res} and {crop}x{crop}",
                        r.image.dimensions(),
                        r.face.dimensions()
                    ),
                });
            }
        }
        let mirrored;
        let references = if references.len() == 1 {
            // NOTE: one reference leaves nobody out; like the paper's single-reference setting the
            // mirrored photo stands in for a second view of the same face.
            mirrored = [references[0].clone(), references[0].mirrored()];
            &mirrored[..]
        } else {
            references
        };
        let n = references.len();
        let (res_us, crop_us) = (res as usize, crop as usize);
        let mask = Mask::from_region(Region::WholeFace, res)?;
        let mut pixels = Array4::<f32>::zeros((n, 3, res_us, res_us));
        let mut masked = Array4::<f32>::zeros((n, 3, res_us, res_us));
        let mut faces = Array4::<f32>::zeros((n, 3, crop_us, crop_us));
        for (i, r) in references.iter().enumerate() {
            let mut row = pixels.index_axis_mut(Axis(0), i);
            let row = row.as_slice_mut().expect("standard layout");
            img::to_chw(&r.image, row);
            masked
                .index_axis_mut(Axis(0), i)
                .as_slice_mut()
                .expect("standard layout")
                .copy_from_slice(&masked_image(row, &mask));
            img::to_chw(
                &r.face,
                faces
                    .index_axis_mut(Axis(0), i)
                    .as_slice_mut()
                    .expect("standard layout"),
            );
        }
        let input_ids = Array1::from(pipeline.prompt_ids("")?);
        let scale = m.vae.scaling_factor;
        let engine = pipeline.engine_mut();
        let latents = engine.vae_encode(pixels.view())? * scale;
        let masked_latents = engine.vae_encode(masked.view())? * scale;
        let faces = face::embed_input(faces, &m.face);
        let embeddings = engine.embed_faces(faces.view())?;
        let dim = embeddings.dim().1;
        let mut others = Array3::<f32>::zeros((n, n - 1, dim));
        for target in 0..n {
            let rows = (0..n).filter(|&j| j != target);
            for (k, j) in rows.enumerate() {
                others
                    .slice_mut(s![target, k, ..])
                    .assign(&embeddings.row(j));
            }
        }
        let id_tokens = engine.id_tokens(others.view())?;
        let h = m.latent.size;
        let mask = Array3::from_shape_vec((1, h, h), mask.downsample_nearest(h as u32))
            .expect("latent mask shape");
        Ok(Self {
            input_ids,
            latents,
            mask,
            masked_latents,
            id_tokens,
        })
    }

    /// Number of targets (references, or 2 for a single mirrored reference).
    pub fn count(&self) -> usize {
        self.latents.dim().0
    }

    /// Prompt ids [77].
    pub fn input_ids(&self) -> &Array1<i64> {
        &self.input_ids
    }

    /// Scaled latents of each reference [n, 4, h, w].
    pub fn latents(&self) -> &Array4<f32> {
        &self.latents
    }

    /// Latent-resolution `whole_face` mask [1, h, w].
    pub fn mask(&self) -> &Array3<f32> {
        &self.mask
    }

    /// Scaled latents of each masked reference [n, 4, h, w].
    pub fn masked_latents(&self) -> &Array4<f32> {
        &self.masked_latents
    }

    /// Identity tokens of the other references, per target [n, 10, D].
    pub fn id_tokens(&self) -> &Array3<f32> {
        &self.id_tokens
    }

    /// Writes one step's batch: rows of the drawn targets, the drawn timesteps and noise.
    ///
    /// # Panics
    /// If the draw does not fit the batch or names a target `>= count()` (a bug in the draw source).
    pub fn fill(&self, draw: &Draw, batch: &mut StepBatch) {
        assert!(
            draw.targets.len() == batch.size() && draw.timesteps.len() == batch.size(),
            "draw of {} targets for a batch of {}",
            draw.targets.len(),
            batch.size()
        );
        for (row, &target) in draw.targets.iter().enumerate() {
            assert!(target < self.count(), "target {target} of {}", self.count());
            batch
                .latents
                .index_axis_mut(Axis(0), row)
                .assign(&self.latents.index_axis(Axis(0), target));
            batch
                .masked_latents
                .index_axis_mut(Axis(0), row)
                .assign(&self.masked_latents.index_axis(Axis(0), target));
            batch
                .id_tokens
                .index_axis_mut(Axis(0), row)
                .assign(&self.id_tokens.index_axis(Axis(0), target));
            batch.input_ids.row_mut(row).assign(&self.input_ids);
            batch.mask.index_axis_mut(Axis(0), row).assign(&self.mask);
        }
        batch
            .timesteps
            .as_slice_mut()
            .expect("standard layout")
            .copy_from_slice(&draw.timesteps);
        batch
            .noise
            .as_slice_mut()
            .expect("standard layout")
            .copy_from_slice(&draw.noise);
    }
}

/// The tensors of one step's batch, allocated once per run and rewritten each step.
#[derive(Debug, Clone)]
pub struct StepBatch {
    input_ids: Array2<i64>,
    latents: Array4<f32>,
    pub(super) noise: Array4<f32>,
    timesteps: Array1<i64>,
    mask: Array4<f32>,
    masked_latents: Array4<f32>,
    id_tokens: Array3<f32>,
}

impl StepBatch {
    /// Zeroed tensors for a batch of `batch` samples of `data`'s geometry.
    pub fn new(data: &LeaveOneOut, batch: usize) -> Self {
        let (_, c, h, w) = data.latents.dim();
        let (_, tokens, d) = data.id_tokens.dim();
        Self {
            input_ids: Array2::zeros((batch, data.input_ids.len())),
            latents: Array4::zeros((batch, c, h, w)),
            noise: Array4::zeros((batch, c, h, w)),
            timesteps: Array1::zeros(batch),
            mask: Array4::zeros((batch, 1, h, w)),
            masked_latents: Array4::zeros((batch, c, h, w)),
            id_tokens: Array3::zeros((batch, tokens, d)),
        }
    }

    /// Samples per batch.
    pub fn size(&self) -> usize {
        self.timesteps.len()
    }

    /// The batch as the engine takes it.
    pub fn view(&self) -> TuningBatch<'_> {
        TuningBatch {
            input_ids: self.input_ids.view(),
            latents: self.latents.view(),
            noise: self.noise.view(),
            timesteps: self.timesteps.view(),
            mask: self.mask.view(),
            masked_latents: self.masked_latents.view(),
            id_tokens: self.id_tokens.view(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> LeaveOneOut {
        let latents = Array4::from_shape_fn((n, 4, 2, 2), |(i, c, y, x)| {
            (i * 100 + c * 10 + y * 2 + x) as f32
        });
        LeaveOneOut {
            input_ids: Array1::from(vec![49406, 320, 49408, 2533, 49407]),
            masked_latents: -&latents,
            latents,
            mask: Array3::from_shape_vec((1, 2, 2), vec![0.0, 1.0, 1.0, 0.0]).unwrap(),
            id_tokens: Array3::from_shape_fn((n, 3, 2), |(i, t, d)| (i * 10 + t * 2 + d) as f32),
        }
    }

    #[test]
    fn fill_gathers_the_drawn_targets() {
        let data = data(3);
        let mut batch = StepBatch::new(&data, 2);
        let draw = Draw {
            targets: vec![2, 0],
            timesteps: vec![7, 999],
            noise: (0..32).map(|x| x as f32).collect(),
        };
        data.fill(&draw, &mut batch);
        let v = batch.view();
        assert_eq!(
            v.latents.index_axis(Axis(0), 0),
            data.latents.index_axis(Axis(0), 2)
        );
        assert_eq!(
            v.latents.index_axis(Axis(0), 1),
            data.latents.index_axis(Axis(0), 0)
        );
        assert_eq!(
            v.masked_latents.index_axis(Axis(0), 0),
            data.masked_latents.index_axis(Axis(0), 2)
        );
        assert_eq!(
            v.id_tokens.index_axis(Axis(0), 1),
            data.id_tokens.index_axis(Axis(0), 0)
        );
        assert_eq!(v.timesteps.to_vec(), vec![7, 999]);
        assert_eq!(v.noise.as_slice().unwrap(), draw.noise.as_slice());
        for row in 0..2 {
            assert_eq!(v.input_ids.row(row), data.input_ids.view());
            assert_eq!(v.mask.index_axis(Axis(0), row), data.mask.view());
        }
    }

    #[test]
    #[should_panic(expected = "target 3 of 3")]
    fn fill_refuses_a_target_out_of_range() {
        let data = data(3);
        let mut batch = StepBatch::new(&data, 1);
        let draw = Draw {
            targets: vec![3],
            timesteps: vec![0],
            noise: vec![0.0; 16],
        };
        data.fill(&draw, &mut batch);
    }

    #[test]
    fn mirrored_reference_flips_both_crops() {
        let image = RgbImage::from_fn(4, 4, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let face = RgbImage::from_fn(6, 6, |x, _| image::Rgb([x as u8, 0, 9]));
        let r = ReferenceCrop { image, face };
        let m = r.mirrored();
        assert_eq!(m.image.get_pixel(0, 1).0, [3, 1, 0]);
        assert_eq!(m.face.get_pixel(5, 2).0, [0, 0, 9]);
        assert_eq!(m.mirrored(), r);
    }
}
