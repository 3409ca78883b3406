//! Wire types of jobs and results (schema version 1). The schema is owned here: every type on the
//! wire is defined in this module (boxes, regions, formats, samplers), converted to the pipeline's own
//! types only after validation (`crate::job::validate`), so a change inside the pipeline never
//! changes the job schema.
//!
//! The same JSON is read by `pva-worker edit` (keys resolved against a local directory) and by
//! `pva-worker serve` (keys are S3 object keys). Unknown fields and wrong types are rejected with an
//! error that names the field.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::Stage;
use crate::pipeline::face::FaceBox;
use crate::pipeline::image::OutputFormat;
use crate::pipeline::mask::{PixelBox, Region};

/// The job schema version this worker reads.
pub const SCHEMA_VERSION: u32 = 1;

// The character rules `crate::job::validate` enforces, as the schemas' patterns (ECMA 262 / Python
// `re`). Control characters are the Unicode `Cc` category, U+0000-U+001F and U+007F-U+009F.
/// Ids: `A-Z a-z 0-9 . _ -`, not starting with `.`.
pub const ID_PATTERN: &str = "^[A-Za-z0-9_-][A-Za-z0-9._-]*$";
/// Object keys: relative, no empty, `.` or `..` segments, no control characters.
pub const KEY_PATTERN: &str =
    "^(?!/)(?!.*(^|/)\\.{1,2}(/|$))(?!.*//)(?!.*/$)[^\\u0000-\\u001f\\u007f-\\u009f]+$";
/// Output prefixes: a key once trailing slashes are dropped.
pub const PREFIX_PATTERN: &str =
    "^(?!/)(?!.*(^|/)\\.{1,2}(/|$))(?!.*//+[^/])[^\\u0000-\\u001f\\u007f-\\u009f]+$";
/// Prompts: not blank, no control characters but newline and tab.
pub const PROMPT_PATTERN: &str =
    "^(?=[\\s\\S]*\\S)[^\\u0000-\\u0008\\u000b-\\u001f\\u007f-\\u009f]*$";
/// Negative prompts: no control characters but newline and tab.
pub const TEXT_PATTERN: &str = "^[^\\u0000-\\u0008\\u000b-\\u001f\\u007f-\\u009f]*$";
/// Consent ids and versions: not blank, no control characters.
pub const CONSENT_PATTERN: &str = "^(?=[\\s\\S]*\\S)[^\\u0000-\\u001f\\u007f-\\u009f]*$";

/// A job as it arrives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The job schema version; this worker reads 1.
    #[schemars(extend("const" = SCHEMA_VERSION))]
    pub schema_version: u32,
    /// Caller's id; names the outputs (`{output.prefix}/{job_id}/{index}.{ext}`). 1-128 characters
    /// of `A-Z a-z 0-9 . _ -`, not starting with `.`.
    #[schemars(length(min = 1, max = 128), pattern(ID_PATTERN))]
    pub job_id: String,
    /// The person and their reference photos.
    pub identity: Identity,
    /// The photo to edit.
    pub target: Target,
    /// Which part of the face to repaint; required unless the job's preset sets a region.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "MaskSpec")]
    pub mask: Option<MaskSpec>,
    /// An edit preset of the worker's settings (`[presets.NAME]`) instead of a `prompt`: it sets the
    /// edit text and may set the negative prompt, mask region, guidance, steps and scheduler; the
    /// job gives only those of them the preset allows overriding.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    pub preset: Option<String>,
    /// What to change, e.g. "with a beard"; the model's template adds the personalized phrase. Not
    /// blank; no control characters but newline and tab; at most `limits.max_prompt_chars`.
    /// Required unless the job gives a `preset`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String", pattern(PROMPT_PATTERN))]
    pub prompt: Option<String>,
    /// Text for the unconditional branch of classifier-free guidance; empty or absent: the model's
    /// default (its manifest's `guidance.negative_prompt`). No control characters but newline and
    /// tab.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String", pattern(TEXT_PATTERN))]
    pub negative_prompt: Option<String>,
    /// Denoising steps, 1 to `limits.max_steps`; absent: 50.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "u32", range(min = 1))]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale; 1.0 (the default) runs a single (conditional) row, as the
    /// paper does.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "f32", range(min = 1.0, max = 30.0))]
    pub guidance: Option<f32>,
    /// Sampler; absent: `ddim`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "SchedulerName")]
    pub scheduler: Option<SchedulerName>,
    /// DDIM's eta (0 = deterministic DDIM, 1 = the paper's default). Ignored by DPM-Solver++.
    #[serde(default = "default_eta")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub eta: f32,
    /// Seed of the job's noise; output i uses the same seed stream at index i.
    #[serde(default)]
    pub seed: u64,
    /// Number of edited variants, 1 to `limits.max_num_outputs`.
    #[serde(default = "default_num_outputs")]
    #[schemars(range(min = 1))]
    pub num_outputs: u32,
    /// Where and how the outputs are written.
    pub output: OutputSpec,
    /// Whether a per-identity tuned adapter is used.
    #[serde(default)]
    pub tuning: TuningPolicy,
    /// RFC 3339 time (`2026-11-26T18:00:00Z`, `...+01:00`) after which the job is not worth doing;
    /// a job picked up later fails with `deadline_exceeded`.
    #[serde(default)]
    #[schemars(extend("format" = "date-time"))]
    pub deadline: Option<String>,
    /// The person's consent record for this use of their photos (required unless
    /// `privacy.require_consent` is off). Recorded in the result message and logs, never in images.
    #[serde(default)]
    pub consent: Option<Consent>,
}

/// A reference to the consent the CMS holds for this person and use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    /// The consent record's id in the caller's system: 1-256 bytes, not blank, no control characters.
    #[schemars(length(min = 1, max = 256), pattern(CONSENT_PATTERN))]
    pub id: String,
    /// Version of the consent text the person agreed to (the same rules as `id`).
    #[schemars(length(min = 1, max = 256), pattern(CONSENT_PATTERN))]
    pub version: String,
}

/// Denoising steps of a job that gives none.
pub const DEFAULT_STEPS: u32 = 50;
/// Guidance of a job that gives none.
pub const DEFAULT_GUIDANCE: f32 = 1.0;

/// A field that may be absent but not `null` (absent and `null` would both read as `None`; the
/// schema, which cannot tell a missing preset field from a null one, allows only absence).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

fn default_eta() -> f32 {
    1.0
}
fn default_num_outputs() -> u32 {
    1
}

/// The person to preserve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Stable id of the person (keys tuned adapters); the same rules as `job_id`.
    #[schemars(length(min = 1, max = 128), pattern(ID_PATTERN))]
    pub id: String,
    /// 1-5 photos of the same person.
    #[schemars(length(min = 1, max = 5))]
    pub references: Vec<ImageRef>,
}

/// An image and, optionally, where the face is in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    /// Object key (S3) or path relative to the job's directory (`edit`).
    #[schemars(length(min = 1, max = 1024), pattern(KEY_PATTERN))]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FaceSelector {
    /// `"aligned"` or `"largest"`.
    Mode(FaceMode),
    /// `{"index": N}`.
    Index(FaceIndex),
}

/// The named ways of picking a face.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FaceMode {
    /// The image is an aligned, square face crop: no detection.
    Aligned,
    /// The face with the largest box.
    Largest,
}

/// A face by its place, left to right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaceIndex {
    /// 0 is the leftmost face (by the boxes' centres).
    pub index: u32,
}

/// The photo to edit.
pub type Target = ImageRef;

/// The region to repaint. Exactly one of the three.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MaskSpec {
    /// A mask image the size of the target (white = repaint).
    Key(#[schemars(length(min = 1, max = 1024), pattern(KEY_PATTERN))] String),
    /// A box in the target's pixels.
    Box(BoxSpec),
    /// A named region of the aligned face crop (see models/CONTRACT.md).
    Region(RegionName),
}

/// A face box in an image's pixels (after EXIF orientation); `x`/`y` may be negative and the box
/// may stick out of the image, as detectors report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaceBoxSpec {
    /// Left edge.
    pub x: i32,
    /// Top edge.
    pub y: i32,
    /// Width.
    #[schemars(range(min = 1))]
    pub width: u32,
    /// Height.
    #[schemars(range(min = 1))]
    pub height: u32,
}

/// A box in the target's pixels: columns `x..x + width`, rows `y..y + height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BoxSpec {
    /// First column.
    pub x: u32,
    /// First row.
    pub y: u32,
    /// Number of columns.
    #[schemars(range(min = 1))]
    pub width: u32,
    /// Number of rows.
    #[schemars(range(min = 1))]
    pub height: u32,
}

/// The named regions of the aligned face crop on the wire (geometry in models/CONTRACT.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Bucket (S3) or ignored by `edit`.
    #[serde(default)]
    pub bucket: String,
    /// Key prefix; outputs are `{prefix}/{job_id}/{index}.{ext}`. The rules of keys, after trailing
    /// slashes are dropped.
    #[schemars(length(min = 1, max = 1024), pattern(PREFIX_PATTERN))]
    pub prefix: String,
    /// File format.
    #[serde(default)]
    pub format: OutputFormatName,
}

/// Output formats on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// All outputs were written.
    Succeeded,
    /// The job could not be done; `error` says why.
    Failed,
}

/// Why a job failed, for the caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResultError {
    /// Stable machine-readable code, e.g. `invalid_job`, `bad_image`, `not_found`.
    pub code: String,
    /// Human-readable explanation (never contains image data, URLs with signatures or secrets).
    pub message: String,
    /// Whether the same job may succeed later.
    pub retryable: bool,
}

/// One written output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutputInfo {
    /// Object key (or local path for `edit`).
    pub key: String,
    /// Cosine similarity of the output face to the mean reference embedding.
    pub identity_score: f32,
    /// Whether the score met the configured minimum.
    pub identity_check_passed: bool,
}

/// The result message published for every job, and stored beside its outputs as `result.json`
/// (which adds `request_digest`, the digest of the request it answers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobResult {
    /// Schema version of the result (1).
    #[schemars(extend("const" = SCHEMA_VERSION))]
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
    /// The edit preset the job used (absent: none, or the job could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<PresetUse>,
    /// The faces the worker found, one per image it searched (those without a `face_box` or
    /// `"face": "aligned"`); absent when it searched none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faces: Vec<FaceFound>,
    /// The W3C trace id (32 lowercase hex digits) of the trace the job ran in: the one its message's
    /// `traceparent` header continued, else a new one. A result answered from the store keeps the
    /// trace of the run that made it (the message's own AMQP `traceparent` header is the re-send's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// The preset a job used, as its result records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PresetUse {
    /// The preset's name.
    pub name: String,
    /// Its version.
    pub version: String,
}

/// The face found in one of a job's images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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

/// Schema version of the lifecycle event messages.
pub const EVENT_SCHEMA_VERSION: u32 = 1;

/// Which delivery of a job an event belongs to, its place among that delivery's events and when it
/// was made: every event has these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EventStamp {
    /// Which delivery of the job message this is (1 for the first; from the quorum queue's
    /// `x-delivery-count`). A redelivered job starts again at sequence 1 with the next delivery
    /// number, so (delivery, sequence) orders every event of a job.
    #[schemars(range(min = 1))]
    pub delivery: u32,
    /// 1 for `started`, one more for each later event of the same delivery.
    #[schemars(range(min = 1))]
    pub sequence: u64,
    /// When the event was made, RFC 3339 in UTC with milliseconds.
    #[schemars(extend("format" = "date-time"))]
    pub timestamp: String,
}

/// A job's lifecycle event, as `pva-worker serve` publishes it to `amqp.result_exchange`:
/// `started` and `progress` under `{amqp.event_routing_key_prefix}.{event}` (default
/// `pva.event.started`, `pva.event.progress`; best effort, unconfirmed), then the final `succeeded`
/// or `failed` under `amqp.result_routing_key` (default `pva.result`; confirmed, mandatory; also
/// sent to the job message's `reply_to`). A final result answered from a stored success (a
/// redelivery or an identical re-send) is a `started` and a final event only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEvent {
    /// A worker took the delivery and starts the job.
    Started(StartedEvent),
    /// Step `step` of `steps` of a stage is done: sent when a step reaches another tenth of the
    /// steps, at most twice a second per job, and always for the last step.
    Progress(ProgressEvent),
    /// The job's result message (as stored in `result.json`, less its `request_digest`) with the
    /// event fields added; `status` is `succeeded`.
    Succeeded(FinalEvent),
    /// The same for a job that failed; `status` is `failed` and `error` says why.
    Failed(FinalEvent),
}

/// The `started` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StartedEvent {
    /// The event schema version (1).
    #[schemars(extend("const" = EVENT_SCHEMA_VERSION))]
    pub schema_version: u32,
    /// The job's id, or `unknown` when the message has none that is safe to log.
    pub job_id: String,
    /// Delivery, sequence and time.
    #[serde(flatten)]
    pub stamp: EventStamp,
    /// The worker's id (`worker.id`, else its host name).
    pub worker_id: String,
}

/// The stages that report progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProgressStage {
    /// The identity's adapter tuning (jobs that tune).
    Tune,
    /// The sampler loop.
    Denoise,
}

impl ProgressStage {
    /// The progress stage of a pipeline stage (only tuning and denoising count steps).
    pub fn of(stage: Stage) -> Option<Self> {
        match stage {
            Stage::Tune => Some(Self::Tune),
            Stage::Denoise => Some(Self::Denoise),
            _ => None,
        }
    }
}

/// The `progress` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProgressEvent {
    /// The event schema version (1).
    #[schemars(extend("const" = EVENT_SCHEMA_VERSION))]
    pub schema_version: u32,
    /// The job's id.
    pub job_id: String,
    /// Delivery, sequence and time.
    #[serde(flatten)]
    pub stamp: EventStamp,
    /// Which stage.
    pub stage: ProgressStage,
    /// Steps done, 1 to `steps`.
    #[schemars(range(min = 1))]
    pub step: u32,
    /// The stage's steps.
    #[schemars(range(min = 1))]
    pub steps: u32,
}

/// The final event: the result message with the event fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FinalEvent {
    /// The result message.
    #[serde(flatten)]
    pub result: JobResult,
    /// Delivery, sequence and time.
    #[serde(flatten)]
    pub stamp: EventStamp,
}

impl JobEvent {
    /// The final event of `result`: `succeeded` or `failed` as its status says.
    pub fn finished(result: JobResult, stamp: EventStamp) -> Self {
        let status = result.status;
        let event = FinalEvent { result, stamp };
        match status {
            JobStatus::Succeeded => Self::Succeeded(event),
            JobStatus::Failed => Self::Failed(event),
        }
    }
}
