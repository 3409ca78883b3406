//! Wire types of jobs and results (schema version 1). The schema is owned here: every type on the
//! wire is defined in this module (boxes, regions, formats, samplers), converted to the pipeline's own
//! types only after validation (`crate::job::validate`), so a change inside the pipeline never
//! changes the job schema.
//!
//! The same JSON is read by `pva-worker edit` (keys resolved against a local directory) and by
//! `pva-worker serve` (keys are S3 object keys). Unknown fields and wrong types are rejected with an
//! error that names the field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::pipeline::face::FaceBox;
use crate::pipeline::image::OutputFormat;
use crate::pipeline::mask::{PixelBox, Region};

/// The job schema version this worker reads.
pub const SCHEMA_VERSION: u32 = 1;

/// A job as it arrives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Must be [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Caller's id; names the outputs. 1-128 characters of `[A-Za-z0-9._-]`.
    pub job_id: String,
    /// The person and their reference photos.
    pub identity: Identity,
    /// The photo to edit.
    pub target: Target,
    /// Which part of the face to repaint.
    pub mask: MaskSpec,
    /// What to change, e.g. "with a beard". The manifest's template adds the personalized phrase.
    pub prompt: String,
    /// Text for the unconditional branch of classifier-free guidance; empty: the model's default
    /// (its manifest's `guidance.negative_prompt`).
    #[serde(default)]
    pub negative_prompt: String,
    /// Denoising steps.
    #[serde(default = "default_steps")]
    pub steps: u32,
    /// Classifier-free guidance scale; 1.0 runs a single (conditional) row, as the paper does.
    #[serde(default = "default_guidance")]
    pub guidance: f32,
    /// Sampler.
    #[serde(default)]
    pub scheduler: SchedulerName,
    /// DDIM's eta (0 = deterministic DDIM, 1 = the paper's default). Ignored by DPM-Solver++.
    #[serde(default = "default_eta")]
    pub eta: f32,
    /// Seed of the job's noise; output i uses the same seed stream at index i.
    #[serde(default)]
    pub seed: u64,
    /// Number of edited variants.
    #[serde(default = "default_num_outputs")]
    pub num_outputs: u32,
    /// Where and how the outputs are written.
    pub output: OutputSpec,
    /// Whether a per-identity tuned adapter is used.
    #[serde(default)]
    pub tuning: TuningPolicy,
    /// RFC 3339 time after which the job is not worth doing.
    #[serde(default)]
    pub deadline: Option<String>,
    /// The person's consent record for this use of their photos (required unless
    /// `privacy.require_consent` is off). Recorded in the result message and logs, never in images.
    #[serde(default)]
    pub consent: Option<Consent>,
}

/// A reference to the consent the CMS holds for this person and use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    /// The consent record's id in the caller's system.
    pub id: String,
    /// Version of the consent text the person agreed to.
    pub version: String,
}

fn default_steps() -> u32 {
    50
}
fn default_guidance() -> f32 {
    1.0
}
fn default_eta() -> f32 {
    1.0
}
fn default_num_outputs() -> u32 {
    1
}

/// The person to preserve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Stable id of the person (keys tuned adapters).
    pub id: String,
    /// 1-5 photos of the same person.
    pub references: Vec<ImageRef>,
}

/// An image and, optionally, where the face is in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    /// Object key (S3) or path relative to the job's directory (`edit`).
    pub key: String,
    /// Face box in the image's pixels (after EXIF orientation). Given, it wins over `face`.
    #[serde(default)]
    pub face_box: Option<FaceBoxSpec>,
    /// Without a `face_box`, which face: `"aligned"` (the image is an aligned, square face crop, used
    /// as it is), `"largest"` (the face with the largest box; the target's default) or
    /// `{"index": N}` (faces numbered from 0, left to right). A reference without either must show
    /// one clear face (absent: the largest, refused when another face is of similar size).
    #[serde(default)]
    pub face: Option<FaceSelector>,
}

/// How an image without a `face_box` picks its face (`ImageRef::face`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FaceSelector {
    /// `"aligned"` or `"largest"`.
    Mode(FaceMode),
    /// `{"index": N}`.
    Index(FaceIndex),
}

/// The named ways of picking a face.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaceMode {
    /// The image is an aligned, square face crop: no detection.
    Aligned,
    /// The face with the largest box.
    Largest,
}

/// A face by its place, left to right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaceIndex {
    /// 0 is the leftmost face (by the boxes' centres).
    pub index: u32,
}

/// The photo to edit.
pub type Target = ImageRef;

/// The region to repaint. Exactly one of the three.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MaskSpec {
    /// A mask image the size of the target (white = repaint).
    Key(String),
    /// A box in the target's pixels.
    Box(BoxSpec),
    /// A named region of the aligned face crop (see models/CONTRACT.md).
    Region(RegionName),
}

/// A face box in an image's pixels (after EXIF orientation); `x`/`y` may be negative and the box
/// may stick out of the image, as detectors report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaceBoxSpec {
    /// Left edge.
    pub x: i32,
    /// Top edge.
    pub y: i32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// A box in the target's pixels: columns `x..x + width`, rows `y..y + height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxSpec {
    /// First column.
    pub x: u32,
    /// First row.
    pub y: u32,
    /// Number of columns.
    pub width: u32,
    /// Number of rows.
    pub height: u32,
}

/// The named regions of the aligned face crop on the wire (geometry in models/CONTRACT.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionName {
    /// Chin to forehead, cheek to cheek.
    WholeFace,
    /// Nose tip to chin.
    LowerFace,
    /// Both eyebrows.
    Eyebrows,
    /// Both eyes.
    Eyes,
    /// Mouth and lips.
    Mouth,
}

impl From<FaceBoxSpec> for FaceBox {
    fn from(b: FaceBoxSpec) -> Self {
        FaceBox {
            x: b.x,
            y: b.y,
            width: b.width,
            height: b.height,
        }
    }
}

impl From<BoxSpec> for PixelBox {
    fn from(b: BoxSpec) -> Self {
        PixelBox {
            x: b.x,
            y: b.y,
            width: b.width,
            height: b.height,
        }
    }
}

impl From<RegionName> for Region {
    fn from(r: RegionName) -> Self {
        match r {
            RegionName::WholeFace => Region::WholeFace,
            RegionName::LowerFace => Region::LowerFace,
            RegionName::Eyebrows => Region::Eyebrows,
            RegionName::Eyes => Region::Eyes,
            RegionName::Mouth => Region::Mouth,
        }
    }
}

/// Sampler names on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerName {
    /// DDIM (with `eta`), the paper's sampler.
    #[default]
    Ddim,
    /// DPM-Solver++ (2M).
    #[serde(rename = "dpmpp_2m")]
    DpmppTwoM,
}

/// Tuning policy of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TuningPolicy {
    /// Base PVA only.
    #[default]
    Never,
    /// Use a stored adapter when one exists.
    IfCached,
    /// Tune when missing, store, then edit.
    Auto,
}

/// Where the outputs go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Bucket (S3) or ignored by `edit`.
    #[serde(default)]
    pub bucket: String,
    /// Key prefix; outputs are `{prefix}/{job_id}/{index}.{ext}`.
    pub prefix: String,
    /// File format.
    #[serde(default)]
    pub format: OutputFormatName,
}

/// Output formats on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormatName {
    /// Lossless PNG.
    #[default]
    Png,
    /// JPEG, quality 92.
    Jpeg,
    /// Lossless WebP.
    Webp,
}

impl OutputFormatName {
    /// The encoder settings.
    pub fn format(self) -> OutputFormat {
        match self {
            Self::Png => OutputFormat::Png,
            Self::Jpeg => OutputFormat::Jpeg { quality: 92 },
            Self::Webp => OutputFormat::Webp,
        }
    }
    /// File extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
        }
    }
}

/// Outcome of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// All outputs were written.
    Succeeded,
    /// The job could not be done; `error` says why.
    Failed,
}

/// Why a job failed, for the caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultError {
    /// Stable machine-readable code, e.g. `invalid_job`, `bad_image`, `not_found`.
    pub code: String,
    /// Human-readable explanation (never contains image data, URLs with signatures or secrets).
    pub message: String,
    /// Whether the same job may succeed later.
    pub retryable: bool,
}

/// One written output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputInfo {
    /// Object key (or local path for `edit`).
    pub key: String,
    /// Cosine similarity of the output face to the mean reference embedding.
    pub identity_score: f32,
    /// Whether the score met the configured minimum.
    pub identity_check_passed: bool,
}

/// The result message published for every job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// Schema version of the result.
    pub schema_version: u32,
    /// The job's id (or `"unknown"` when the message could not be parsed).
    pub job_id: String,
    /// Outcome.
    pub status: JobStatus,
    /// Written outputs, in index order.
    #[serde(default)]
    pub outputs: Vec<OutputInfo>,
    /// Set when `status` is `failed`.
    #[serde(default)]
    pub error: Option<ResultError>,
    /// Seconds spent per stage.
    #[serde(default)]
    pub timings: BTreeMap<String, f64>,
    /// Model name.
    pub model_name: String,
    /// Model version.
    pub model_version: String,
    /// Which worker did it.
    pub worker_id: String,
    /// The job's consent reference, as received (absent when the job had none or was unreadable).
    #[serde(default)]
    pub consent: Option<Consent>,
    /// The faces the worker found, one per image it searched (those without a `face_box` or
    /// `"face": "aligned"`); absent when it searched none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faces: Vec<FaceFound>,
}

/// The face found in one of a job's images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceFound {
    /// Which image: `target` or `identity.references[i]`.
    pub image: String,
    /// The face box the crop was built from (the `face_box` convention: forehead to chin).
    pub face_box: FaceBoxSpec,
    /// The detector's box `[xmin, ymin, xmax, ymax]` (brows to chin), in pixels.
    pub detector_box: [f64; 4],
    /// The detector's score (0..1).
    pub score: f64,
    /// The landmark model's face presence on it (0..1).
    pub landmark_presence: f64,
    /// How many faces the detector found in the image.
    pub faces_found: usize,
    /// The face's roll: the angle of its eye line, degrees, clockwise on screen.
    pub roll_degrees: f64,
    /// Whether the crop was turned to stand the face upright (a roll of 3° or more).
    pub turned: bool,
}
