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
    /// 16-bit float: parsed so that a graph with float16 inputs or outputs is refused with a clear
    /// error ([`Manifest::load`]); `pva.export --precision fp16` keeps the boundary float32.
    Float16,
}

/// What a graph computes in (`precision` of a graph entry; absent in older manifests: fp32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats throughout.
    #[default]
    Fp32,
    /// 16-bit floats inside the graph, float32 at its inputs and outputs (`pva.precision`).
    Fp16,
}

/// How the UNet's attention is written (`attention` of the UNet's entry; absent: explicit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attention {
    /// MatMul + Softmax + MatMul nodes.
    #[default]
    Explicit,
    /// One `com.microsoft.MultiHeadAttention` node per attention (`pva.fused`): needs ONNX Runtime's
    /// contrib ops (the CPU and CUDA providers have them).
    Fused,
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
    /// What the graph computes in (the tuning graph must be fp32).
    #[serde(default)]
    pub precision: Precision,
    /// How the UNet's attention is written (other graphs: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<Attention>,
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
    /// How an aligned face crop becomes the embedder's input; `None` (the bundled models): the crop
    /// resized straight to `crop_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed_window: Option<EmbedWindow>,
}

impl FaceSpec {
    /// Side of the aligned face crops the face path starts from: the window's `source_size`, or
    /// `crop_size` without a window.
    pub fn source_size(&self) -> u32 {
        self.embed_window
            .as_ref()
            .map_or(self.crop_size, |w| w.source_size)
    }
}

/// The paper's face window (models/CONTRACT.md, PVA's `FaceNet.forward` in lib/face_net.py): the
/// aligned face crop at `source_size` is resized to `resize` x `resize` (bilinear, `align_corners=True`),
/// rows `rows[0]..rows[1]` and columns `cols[0]..cols[1]` are kept, and adaptive average pooling
/// brings them to `crop_size`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedWindow {
    /// Side at which the aligned face is cut from its photo (512 for sd2, the paper's images).
    pub source_size: u32,
    /// Side of the bilinear resize (256).
    pub resize: u32,
    /// Kept rows, `[start, end)` (35..223).
    pub rows: [u32; 2],
    /// Kept columns, `[start, end)` (32..220).
    pub cols: [u32; 2],
}

/// Classifier-free guidance: what the unconditional row conditions on. The defaults (no section) are
/// the worker's older behaviour; the paper's are `uncond_identity: true` and `"photo of a person"`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuidanceSpec {
    /// Whether the unconditional row keeps the identity tokens (`id_switch` 1, the paper's
    /// `extra_feat_neg`); `false` removes them (`id_switch` 0).
    #[serde(default)]
    pub uncond_identity: bool,
    /// The negative prompt of a job that gives none (empty or only whitespace).
    #[serde(default)]
    pub negative_prompt: String,
}

impl GuidanceSpec {
    /// The negative prompt a job's unconditional row uses: the job's own, or this default when the
    /// job's is empty or only whitespace.
    pub fn negative_prompt<'a>(&'a self, job: &'a str) -> &'a str {
        if job.trim().is_empty() {
            &self.negative_prompt
        } else {
            job
        }
    }
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
    /// The unconditional row of classifier-free guidance (absent: identity removed, empty prompt).
    #[serde(default)]
    pub guidance: GuidanceSpec,
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
        let manifest: Manifest = read_manifest(dir)?;
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
        if self.prompt_template.matches("{prompt}").count() != 1
            || !self.prompt_template.contains(&self.tokenizer.new_token)
        {
            return Err(field(
                "prompt_template",
                "must contain `{prompt}` once and the new token".into(),
            ));
        }
        if let Some(w) = &self.face.embed_window {
            let inside = |[start, end]: [u32; 2]| start < end && end <= w.resize;
            if w.source_size == 0 || self.face.crop_size == 0 || !inside(w.rows) || !inside(w.cols)
            {
                return Err(field(
                    "face.embed_window",
                    format!(
                        "rows {:?} and cols {:?} must be non-empty ranges inside the {}-pixel \
                         resize, source_size and crop_size positive",
                        w.rows, w.cols, w.resize
                    ),
                ));
            }
        }
        for key in GRAPH_KEYS {
            if !self.graphs.contains_key(key) {
                return Err(field(&format!("graphs.{key}"), "is missing".into()));
            }
        }
        for (k, g) in &self.graphs {
            // NOTE: the worker feeds and reads float32 and int64 only; fp16 graphs keep their
            // boundary float32 (pva.precision), so a float16 tensor there is an export mistake.
            let sides = [("inputs", &g.inputs), ("outputs", &g.outputs)];
            for (side, tensors) in sides {
                if let Some((i, t)) = tensors
                    .iter()
                    .enumerate()
                    .find(|(_, t)| t.dtype == DType::Float16)
                {
                    return Err(field(
                        &format!("graphs.{k}.{side}[{i}]"),
                        format!(
                            "`{}` is float16: the worker feeds and reads float32 at graph \
                             boundaries (pva.export --precision fp16 keeps them float32)",
                            t.name
                        ),
                    ));
                }
            }
        }
        if let Some(g) = self.graphs.get(TUNING_GRAPH) {
            if g.precision != Precision::Fp32 {
                return Err(field(
                    &format!("graphs.{TUNING_GRAPH}.precision"),
                    format!(
                        "is {:?}: the tuning graph must be fp32 (its AdamW steps are below \
                         float16's resolution at the weights)",
                        g.precision
                    ),
                ));
            }
        }
        // An external data file shared by several graphs (the frozen weights: models/CONTRACT.md)
        // is described the same way by each.
        let mut shared: BTreeMap<&str, (&str, &ExternalData)> = BTreeMap::new();
        for (k, g) in &self.graphs {
            for (i, x) in g.external_data.iter().enumerate() {
                match shared.get(x.file.as_str()) {
                    Some((first, y)) if y.sha256 != x.sha256 || y.bytes != x.bytes => {
                        return Err(field(
                            &format!("graphs.{k}.external_data[{i}]"),
                            format!("describes {} unlike graphs.{first}", x.file),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        shared.insert(&x.file, (k, x));
                    }
                }
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

    /// Checks every file's presence, size and sha256 against the manifest: graphs, their external
    /// data files and the adapter. See [`Manifest::verify_some_files`].
    pub fn verify_files(&self, dir: &Path) -> Result<(), ManifestError> {
        self.verify_some_files(dir, |_| true, true)
    }

    /// Checks the files of the graphs whose keys `graphs` accepts (each graph's file and its external
    /// data files, each file once) and, with `adapter`, the adapter file: presence and size first (cheap), then the
    /// sha256 of every byte, on up to [`HASH_THREADS`] threads (never more than the machine's cores),
    /// largest files first, so that a full-size model's external data files (gigabytes each) are
    /// hashed side by side. The error names the first refused file in manifest order.
    pub fn verify_some_files(
        &self,
        dir: &Path,
        graphs: impl Fn(&str) -> bool,
        adapter: bool,
    ) -> Result<(), ManifestError> {
        struct Entry<'a> {
            what: String,
            file: &'a str,
            sha256: &'a str,
            bytes: Option<u64>,
        }
        let mut files: Vec<Entry<'_>> = Vec::new();
        for (k, g) in self.graphs.iter().filter(|(k, _)| graphs(k)) {
            files.push(Entry {
                what: format!("graphs.{k}"),
                file: &g.file,
                sha256: &g.sha256,
                bytes: Some(g.bytes),
            });
            for (i, x) in g.external_data.iter().enumerate() {
                // A file that several graphs share is hashed once (Manifest::load checked that
                // they describe it alike).
                if files.iter().any(|e| e.file == x.file) {
                    continue;
                }
                files.push(Entry {
                    what: format!("graphs.{k}.external_data[{i}]"),
                    file: &x.file,
                    sha256: &x.sha256,
                    bytes: Some(x.bytes),
                });
            }
        }
        if adapter {
            files.push(Entry {
                what: "adapter".into(),
                file: &self.adapter.file,
                sha256: &self.adapter.sha256,
                bytes: self.adapter.bytes,
            });
        }
        let err = |e: &Entry<'_>, problem: String| ManifestError::File {
            dir: dir.to_path_buf(),
            file: e.file.to_string(),
            what: e.what.clone(),
            problem,
        };
        // Presence and size of every file before any hashing.
        let mut sizes = Vec::with_capacity(files.len());
        for e in &files {
            let meta = std::fs::metadata(dir.join(e.file)).map_err(|x| err(e, x.to_string()))?;
            if let Some(bytes) = e.bytes {
                if meta.len() != bytes {
                    return Err(err(
                        e,
                        format!("is {} bytes, manifest says {bytes}", meta.len()),
                    ));
                }
            }
            sizes.push(meta.len());
        }
        // Largest first: the big files start at once, the small ones fill in behind them.
        let mut order: Vec<usize> = (0..files.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, HASH_THREADS)
            .min(files.len().max(1));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let results: Vec<Vec<(usize, Result<String, std::io::Error>)>> =
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        scope.spawn(|| {
                            let mut done = Vec::new();
                            loop {
                                // NOTE: once a file is refused, the others are not started: the load
                                // fails anyway.
                                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                                    break;
                                }
                                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let Some(&i) = order.get(k) else { break };
                                let hash = sha256_file(&dir.join(files[i].file));
                                let bad = match &hash {
                                    Ok(h) => !h.eq_ignore_ascii_case(files[i].sha256),
                                    Err(_) => true,
                                };
                                if bad {
                                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                                }
                                done.push((i, hash));
                            }
                            done
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().expect("a hashing thread panicked"))
                    .collect()
            });
        let mut hashes: Vec<(usize, Result<String, std::io::Error>)> =
            results.into_iter().flatten().collect();
        hashes.sort_by_key(|(i, _)| *i);
        for (i, hash) in hashes {
            let e = &files[i];
            let actual = hash.map_err(|x| err(e, x.to_string()))?;
            if !actual.eq_ignore_ascii_case(e.sha256) {
                return Err(err(
                    e,
                    format!("sha256 is {actual}, manifest says {}", e.sha256),
                ));
            }
        }
        Ok(())
    }
}

/// Reads and parses `dir/manifest.json` (the model directory's, or the face-model directory's).
pub(crate) fn read_manifest<T: serde::de::DeserializeOwned>(
    dir: &Path,
) -> Result<T, ManifestError> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).map_err(|source| {
        ManifestError::Read {
            dir: dir.to_path_buf(),
            source,
        }
    })?;
    serde_json::from_str(&text).map_err(|source| ManifestError::Parse {
        dir: dir.to_path_buf(),
        source,
    })
}

/// Most threads [`Manifest::verify_files`] hashes on.
pub const HASH_THREADS: usize = 8;

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

/// The model settings of models/CONTRACT.md ("Model settings"): their defaults and their checks.
#[cfg(test)]
mod settings_tests {
    use super::*;

    /// The committed tiny manifest as JSON (it has none of the optional settings).
    fn tiny() -> serde_json::Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/manifest.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn checked(value: serde_json::Value) -> Result<Manifest, ManifestError> {
        let m: Manifest = serde_json::from_value(value).map_err(|source| ManifestError::Parse {
            dir: PathBuf::from("test"),
            source,
        })?;
        m.check_fields(Path::new("test"))?;
        Ok(m)
    }

    #[test]
    fn absent_settings_are_the_older_behaviour() {
        let m = checked(tiny()).unwrap();
        assert_eq!(m.guidance, GuidanceSpec::default());
        assert!(!m.guidance.uncond_identity);
        assert_eq!(m.guidance.negative_prompt(""), "");
        assert_eq!(m.face.embed_window, None);
        assert_eq!(m.face.source_size(), 112);
    }

    #[test]
    fn the_paper_settings_parse() {
        let mut v = tiny();
        v["prompt_template"] = "photo of a <new1> person, {prompt}".into();
        v["guidance"] =
            serde_json::json!({"uncond_identity": true, "negative_prompt": "photo of a person"});
        v["face"]["embed_window"] = serde_json::json!(
            {"source_size": 512, "resize": 256, "rows": [35, 223], "cols": [32, 220]});
        let m = checked(v).unwrap();
        assert!(m.guidance.uncond_identity);
        assert_eq!(m.guidance.negative_prompt(" \t"), "photo of a person");
        assert_eq!(m.guidance.negative_prompt("blurry"), "blurry");
        assert_eq!(m.face.source_size(), 512);
        assert_eq!(
            m.face.embed_window,
            Some(EmbedWindow {
                source_size: 512,
                resize: 256,
                rows: [35, 223],
                cols: [32, 220]
            })
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let field_of = |v: serde_json::Value| match checked(v) {
            Err(ManifestError::Field { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        };
        for window in [
            serde_json::json!({"source_size": 512, "resize": 256, "rows": [35, 257], "cols": [32, 220]}),
            serde_json::json!({"source_size": 512, "resize": 256, "rows": [35, 223], "cols": [32, 32]}),
            serde_json::json!({"source_size": 0, "resize": 256, "rows": [35, 223], "cols": [32, 220]}),
        ] {
            let mut v = tiny();
            v["face"]["embed_window"] = window;
            assert_eq!(field_of(v), "face.embed_window");
        }
        for template in ["a <new1> person", "a <new1> person {prompt} {prompt}"] {
            let mut v = tiny();
            v["prompt_template"] = template.into();
            assert_eq!(field_of(v), "prompt_template");
        }
        // Unknown keys inside the settings are typos, not silently ignored settings.
        let mut v = tiny();
        v["guidance"] = serde_json::json!({"uncond_identiy": true});
        assert!(matches!(checked(v), Err(ManifestError::Parse { .. })));
    }

    #[test]
    fn graphs_sharing_an_external_data_file_must_describe_it_alike() {
        // The tiny model's UNet, text encoder and tuning graph share frozen_weights.bin.
        assert!(checked(tiny()).is_ok());
        for (key, value) in [("sha256", serde_json::json!("00")), ("bytes", 1.into())] {
            let mut v = tiny();
            v["graphs"]["unet"]["external_data"][0][key] = value;
            match checked(v) {
                Err(ManifestError::Field { field, problem, .. }) => {
                    assert_eq!(field, "graphs.unet.external_data[0]");
                    assert!(problem.contains("frozen_weights.bin unlike graphs.adapter_step"));
                }
                other => panic!("expected a field error, got {other:?}"),
            }
        }
    }

    #[test]
    fn precision_and_attention_parse_and_the_tuning_graph_stays_fp32() {
        let m = checked(tiny()).unwrap();
        assert!(m.graphs.values().all(|g| g.precision == Precision::Fp32));
        assert_eq!(m.graphs["unet"].attention, None);
        let mut v = tiny();
        for k in ["unet", "text_encoder", "vae_decoder"] {
            v["graphs"][k]["precision"] = "fp16".into();
        }
        v["graphs"]["unet"]["attention"] = "fused".into();
        let m = checked(v).unwrap();
        assert_eq!(m.graphs["unet"].precision, Precision::Fp16);
        assert_eq!(m.graphs["unet"].attention, Some(Attention::Fused));
        assert_eq!(m.graphs["vae_encoder"].precision, Precision::Fp32);

        let problem_at = |v: serde_json::Value| match checked(v) {
            Err(ManifestError::Field { field, problem, .. }) => (field, problem),
            other => panic!("expected a field error, got {other:?}"),
        };
        let mut v = tiny();
        v["graphs"]["adapter_step"]["precision"] = "fp16".into();
        let (field, problem) = problem_at(v);
        assert_eq!(field, "graphs.adapter_step.precision");
        assert!(problem.contains("must be fp32"), "{problem}");
        // A float16 tensor at a graph's boundary is named: the worker feeds float32.
        let mut v = tiny();
        v["graphs"]["unet"]["inputs"][5]["dtype"] = "float16".into();
        let (field, problem) = problem_at(v);
        assert_eq!(field, "graphs.unet.inputs[5]");
        assert!(problem.contains("`adapter` is float16"), "{problem}");
        // An unknown precision is a typo.
        let mut v = tiny();
        v["graphs"]["unet"]["precision"] = "fp8".into();
        assert!(matches!(checked(v), Err(ManifestError::Parse { .. })));
    }
}
