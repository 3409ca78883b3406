//! The model directory's `manifest.json` (models/CONTRACT.md): parsing, and the checks that a
//! directory's files are the ones the manifest describes.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::scheduler::SchedulerConfig;
use crate::model::tokenizer::TokenizerConfig;

/// The manifest format this worker reads.
pub const FORMAT_VERSION: u32 = 1;

/// The graphs every model directory must have, by manifest key.
pub const GRAPH_KEYS: [&str; 6] = [
    "text_encoder",
    "face_embedder",
    "id_former",
    "unet",
    "vae_encoder",
    "vae_decoder",
];

/// The tuning graph. Optional: a model directory without it edits with its own adapter only (jobs
/// that ask for tuning fail with a clear error), e.g. a full-size model whose tuning graph is too large
/// for the volume.
pub const TUNING_GRAPH: &str = "adapter_step";

/// Why a model directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest file is missing or unreadable.
    #[error("model dir {dir}: cannot read manifest.json: {source}")]
    Read {
        /// The model directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest is not valid JSON for this format.
    #[error("model dir {dir}: manifest.json is invalid: {source}")]
    Parse {
        /// The model directory.
        dir: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A field has a value this worker cannot use.
    #[error("model dir {dir}: manifest field `{field}`: {problem}")]
    Field {
        /// The model directory.
        dir: PathBuf,
        /// Dotted path of the field.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// A file listed in the manifest is missing, unreadable or has another hash.
    #[error("model dir {dir}: file `{file}` ({what}): {problem}")]
    File {
        /// The model directory.
        dir: PathBuf,
        /// The file name.
        file: String,
        /// Which entry names it.
        what: String,
        /// What is wrong.
        problem: String,
    },
}

/// Element type of a graph input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float.
    Float32,
    /// 64-bit signed integer.
    Int64,
}

/// One dimension: fixed size, or a named dynamic axis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A dynamic axis, by name (e.g. `"B"`).
    Dynamic(String),
}

/// A graph input or output as the manifest declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Name in the graph.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape; its length is the rank.
    pub shape: Vec<Dim>,
}

/// One graph file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphSpec {
    /// File name inside the model directory.
    pub file: String,
    /// Hex sha256 of the file.
    pub sha256: String,
    /// File size in bytes.
    pub bytes: u64,
    /// Inputs in graph order.
    pub inputs: Vec<TensorSpec>,
    /// Outputs in graph order.
    pub outputs: Vec<TensorSpec>,
    /// ONNX external-data files holding the graph's weights (full-size graphs exceed protobuf's 2 GiB).
    #[serde(default)]
    pub external_data: Vec<ExternalData>,
}

/// One external-data file of a graph.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExternalData {
    /// File name inside the model directory.
    pub file: String,
    /// Hex sha256 of the file.
    pub sha256: String,
    /// File size in bytes.
    pub bytes: u64,
}

/// Latent space geometry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatentSpec {
    /// Latent channels (4).
    pub channels: usize,
    /// Latent side (resolution / factor).
    pub size: usize,
    /// VAE downsampling factor.
    pub factor: usize,
}

/// VAE settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaeSpec {
    /// Multiplies the posterior mean to give the UNet's latents.
    pub scaling_factor: f32,
}

/// Face crop settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaceSpec {
    /// Side of the face embedder's input crop (112).
    pub crop_size: u32,
    /// Width of a face embedding (512).
    pub embedding_dim: usize,
}

/// Which part of the tuning vector a segment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentGroup {
    /// A `to_visual_*` weight (UNet input `adapter`).
    Visual,
    /// The `<new1>` token embedding (text encoder input `new1_embedding`).
    Token,
}

/// One tensor inside the flat adapter vector.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterSegment {
    /// Parameter name in the PyTorch model.
    pub name: String,
    /// Its group.
    pub group: SegmentGroup,
    /// Offset in the flat vector.
    pub offset: usize,
    /// Tensor shape.
    pub shape: Vec<usize>,
}

/// The flat adapter layout and the untuned adapter file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterSpec {
    /// safetensors file with the untuned adapter.
    pub file: String,
    /// Name of the tensor inside it.
    pub tensor: String,
    /// Hex sha256 of the file.
    pub sha256: String,
    /// File size in bytes.
    #[serde(default)]
    pub bytes: Option<u64>,
    /// Length of the visual segment (the UNet's `adapter` input).
    pub visual_length: usize,
    /// Length of the token segment (the text encoder's `new1_embedding`).
    pub token_length: usize,
    /// Every tensor's place in the vector.
    pub layout: Vec<AdapterSegment>,
}

/// Tuning defaults recorded by the exporter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TuningSpec {
    /// Batch size fixed in `adapter_step.onnx`.
    pub batch_size: usize,
    /// The paper's step count (40).
    pub steps: usize,
    /// AdamW learning rate of the visual projections.
    pub lr_visual: f32,
    /// AdamW learning rate of the token embedding.
    pub lr_token: f32,
    /// AdamW decoupled weight decay.
    pub weight_decay: f32,
    /// AdamW beta1 (fixed in the graph).
    pub beta1: f32,
    /// AdamW beta2 (fixed in the graph).
    pub beta2: f32,
    /// AdamW epsilon (fixed in the graph).
    pub eps: f32,
}

/// The whole manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// Model name, e.g. `pva-tiny`.
    pub name: String,
    /// Model version.
    pub version: String,
    /// Image side the UNet works at.
    pub resolution: u32,
    /// Latent geometry.
    pub latent: LatentSpec,
    /// VAE settings.
    pub vae: VaeSpec,
    /// Width D of text hidden states and identity tokens.
    pub hidden_size: usize,
    /// Identity tokens per identity (10).
    pub num_id_tokens: usize,
    /// Most references per identity.
    pub max_references: usize,
    /// Face crops.
    pub face: FaceSpec,
    /// Noise schedule.
    pub scheduler: SchedulerConfig,
    /// Tokenizer settings.
    pub tokenizer: TokenizerConfig,
    /// Template that puts the job's prompt next to the personalized phrase.
    pub prompt_template: String,
    /// Flat adapter layout.
    pub adapter: AdapterSpec,
    /// Tuning defaults.
    pub tuning: TuningSpec,
    /// Graph files by key.
    pub graphs: BTreeMap<String, GraphSpec>,
}

impl Manifest {
    /// Reads `dir/manifest.json` and checks its internal consistency (not the files).
    pub fn load(dir: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(dir.join("manifest.json")).map_err(|source| {
            ManifestError::Read {
                dir: dir.to_path_buf(),
                source,
            }
        })?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|source| ManifestError::Parse {
                dir: dir.to_path_buf(),
                source,
            })?;
        manifest.check_fields(dir)?;
        Ok(manifest)
    }

    fn check_fields(&self, dir: &Path) -> Result<(), ManifestError> {
        let field = |field: &str, problem: String| ManifestError::Field {
            dir: dir.to_path_buf(),
            field: field.to_string(),
            problem,
        };
        if self.format_version != FORMAT_VERSION {
            return Err(field(
                "format_version",
                format!(
                    "is {}, this worker reads {FORMAT_VERSION}",
                    self.format_version
                ),
            ));
        }
        if self.latent.size * self.latent.factor != self.resolution as usize {
            return Err(field(
                "latent",
                format!(
                    "size {} x factor {} != resolution {}",
                    self.latent.size, self.latent.factor, self.resolution
                ),
            ));
        }
        if !self.prompt_template.contains("{prompt}")
            || !self.prompt_template.contains(&self.tokenizer.new_token)
        {
            return Err(field(
                "prompt_template",
                "must contain `{prompt}` and the new token".into(),
            ));
        }
        for key in GRAPH_KEYS {
            if !self.graphs.contains_key(key) {
                return Err(field(&format!("graphs.{key}"), "is missing".into()));
            }
        }
        let mut expected = 0;
        let mut visual = 0;
        for (i, seg) in self.adapter.layout.iter().enumerate() {
            if seg.offset != expected {
                return Err(field(
                    &format!("adapter.layout[{i}].offset"),
                    format!(
                        "is {}, expected {expected} (segments must be contiguous)",
                        seg.offset
                    ),
                ));
            }
            let len: usize = seg.shape.iter().product();
            expected += len;
            if seg.group == SegmentGroup::Visual {
                if visual != seg.offset {
                    return Err(field(
                        &format!("adapter.layout[{i}]"),
                        "visual segments must come before the token segment".into(),
                    ));
                }
                visual += len;
            }
        }
        if visual != self.adapter.visual_length
            || expected != self.adapter.visual_length + self.adapter.token_length
        {
            return Err(field(
                "adapter",
                format!(
                    "layout covers {visual} visual + {} token values, header says {} + {}",
                    expected - visual,
                    self.adapter.visual_length,
                    self.adapter.token_length
                ),
            ));
        }
        if self.adapter.token_length != self.hidden_size {
            return Err(field(
                "adapter.token_length",
                format!(
                    "is {}, hidden_size is {}",
                    self.adapter.token_length, self.hidden_size
                ),
            ));
        }
        Ok(())
    }

    /// Path of a graph file by key.
    pub fn graph_path(&self, dir: &Path, key: &str) -> Option<PathBuf> {
        self.graphs.get(key).map(|g| dir.join(&g.file))
    }

    /// Checks every file's presence, size and sha256 against the manifest.
    pub fn verify_files(&self, dir: &Path) -> Result<(), ManifestError> {
        let mut files: Vec<(String, &str, &str, Option<u64>)> = Vec::new();
        for (k, g) in &self.graphs {
            files.push((format!("graphs.{k}"), &g.file, &g.sha256, Some(g.bytes)));
            for (i, x) in g.external_data.iter().enumerate() {
                files.push((
                    format!("graphs.{k}.external_data[{i}]"),
                    &x.file,
                    &x.sha256,
                    Some(x.bytes),
                ));
            }
        }
        files.push((
            "adapter".into(),
            self.adapter.file.as_str(),
            self.adapter.sha256.as_str(),
            self.adapter.bytes,
        ));
        for (what, file, sha, bytes) in files {
            let err = |problem: String| ManifestError::File {
                dir: dir.to_path_buf(),
                file: file.to_string(),
                what: what.clone(),
                problem,
            };
            let path = dir.join(file);
            let meta = std::fs::metadata(&path).map_err(|e| err(e.to_string()))?;
            if let Some(bytes) = bytes {
                if meta.len() != bytes {
                    return Err(err(format!(
                        "is {} bytes, manifest says {bytes}",
                        meta.len()
                    )));
                }
            }
            let actual = sha256_file(&path).map_err(|e| err(e.to_string()))?;
            if !actual.eq_ignore_ascii_case(sha) {
                return Err(err(format!("sha256 is {actual}, manifest says {sha}")));
            }
        }
        Ok(())
    }
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
