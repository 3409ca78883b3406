//! The stored per-identity adapter: one safetensors file holding the tuned flat vector (visual
//! projections then the `<new1>` token, the manifest's adapter layout) and metadata saying which model
//! it belongs to and how it was made;
//!
//! [`decode`] refuses anything it cannot vouch for, with a message naming the problem: bytes that are
//! not a whole safetensors file, a missing or malformed metadata field, another format version,
//! another model name, version or layout length, a `checksum` that differs from the one recorded at
//! encoding (sha256 over every other metadata field and the tensor's bytes: a flipped byte anywhere,
//! which safetensors itself cannot see), non-finite values. A caller that gets an error re-tunes;
//! it never uses the adapter. Where adapters are stored (their keys) and the in-memory cache of
//! decoded ones belong to the job layer (`crate::job::adapters`).

use std::collections::HashMap;

use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};

use crate::model::manifest::Manifest;

/// The `format` metadata value of an adapter file.
pub const FORMAT: &str = "pva-adapter";
/// The adapter file format this worker writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Name of the tensor holding the flat adapter.
pub const TENSOR: &str = "params";

/// Why an adapter file was refused, or a key could not be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AdapterError {
    /// Not a complete, well-formed safetensors file (truncated, garbage, bad header).
    #[error("adapter is not a valid safetensors file: {0}")]
    Corrupt(String),
    /// A metadata field is missing or malformed.
    #[error("adapter metadata `{field}`: {problem}")]
    Metadata {
        /// The metadata key.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The adapter belongs to another model, version or layout.
    #[error("adapter was tuned for {field} {found:?}, this model has {expected:?}")]
    Mismatch {
        /// Which property differs.
        field: &'static str,
        /// The adapter's value.
        found: String,
        /// The model's value.
        expected: String,
    },
    /// The tensor is missing, has another dtype or shape, or its values fail their checksum.
    #[error("adapter tensor `{TENSOR}`: {0}")]
    Tensor(String),
    /// An identity id that cannot be part of a storage key.
    #[error("identity id {0:?} must be 1..=128 characters of A-Z a-z 0-9 . _ - and not . or ..")]
    IdentityId(String),
    /// A reference digest that is not 64 lower-case hex characters.
    #[error("reference sha256 {0:?} is not 64 hex characters")]
    ReferenceHash(String),
}

/// The model an adapter belongs to: name, version and adapter layout lengths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    /// Model name (`manifest.name`).
    pub name: String,
    /// Model version (`manifest.version`).
    pub version: String,
    /// Length of the visual segment.
    pub visual_length: usize,
    /// Length of the token segment.
    pub token_length: usize,
}

impl ModelRef {
    /// The model of a manifest.
    pub fn of(manifest: &Manifest) -> Self {
        Self {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            visual_length: manifest.adapter.visual_length,
            token_length: manifest.adapter.token_length,
        }
    }

    /// Values in the flat adapter.
    pub fn len(&self) -> usize {
        self.visual_length + self.token_length
    }

    /// Whether the layout is empty (never for a loaded model).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tuned adapter with its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAdapter {
    /// The identity it was tuned for.
    pub identity_id: String,
    /// The model it was tuned on.
    pub model: ModelRef,
    /// sha256 (hex) of each reference file's bytes, in the order they were given.
    pub reference_sha256: Vec<String>,
    /// Tuning steps.
    pub steps: usize,
    /// Seed of the tuning draws.
    pub seed: u64,
    /// The loss of the last step.
    pub final_loss: f32,
    /// The flat adapter (visual + token).
    pub params: Vec<f32>,
}

impl StoredAdapter {
    /// The visual segment (the UNet's `adapter` input).
    pub fn visual(&self) -> &[f32] {
        &self.params[..self.model.visual_length]
    }

    /// The token segment (the text encoder's `new1_embedding`).
    pub fn token(&self) -> &[f32] {
        &self.params[self.model.visual_length..]
    }

    /// [`reference_set`] of this adapter's references.
    pub fn reference_set(&self) -> Result<String, AdapterError> {
        reference_set(&self.reference_sha256)
    }

    /// Checks that this adapter was tuned for `identity_id` from exactly the references with these
    /// digests (in any order).
    pub fn check_source(
        &self,
        identity_id: &str,
        reference_sha256: &[String],
    ) -> Result<(), AdapterError> {
        if self.identity_id != identity_id {
            return Err(AdapterError::Mismatch {
                field: "identity",
                found: self.identity_id.clone(),
                expected: identity_id.to_string(),
            });
        }
        let (found, expected) = (self.reference_set()?, reference_set(reference_sha256)?);
        if found != expected {
            return Err(AdapterError::Mismatch {
                field: "reference set",
                found,
                expected,
            });
        }
        Ok(())
    }
}

/// The values of an F32 safetensors tensor (little-endian, as the format stores them).
pub fn f32_values(view: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
    view.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Hex sha256 of some bytes (a reference file's digest).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The digest of a reference set: sha256 of the sorted (lower-case hex) digests, each followed by a
/// newline. Independent of the references' order; any changed reference changes it.
pub fn reference_set(reference_sha256: &[String]) -> Result<String, AdapterError> {
    let mut digests = Vec::with_capacity(reference_sha256.len());
    for d in reference_sha256 {
        digests.push(check_digest(d)?);
    }
    digests.sort();
    let mut hasher = Sha256::new();
    for d in &digests {
        hasher.update(d.as_bytes());
        hasher.update(b"\n");
    }
    Ok(hex::encode(hasher.finalize()))
}

fn check_digest(d: &str) -> Result<String, AdapterError> {
    if d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(d.to_ascii_lowercase())
    } else {
        Err(AdapterError::ReferenceHash(d.to_string()))
    }
}

/// Checks that an identity id can be one segment of an object key.
pub fn check_identity_id(id: &str) -> Result<(), AdapterError> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && id != "."
        && id != "..";
    if ok {
        Ok(())
    } else {
        Err(AdapterError::IdentityId(id.to_string()))
    }
}

/// The adapter as a safetensors file: tensor [`TENSOR`] (f32, `[visual + token]`) and the metadata.
pub fn encode(adapter: &StoredAdapter) -> Result<Vec<u8>, AdapterError> {
    check_identity_id(&adapter.identity_id)?;
    if adapter.params.len() != adapter.model.len() {
        return Err(AdapterError::Tensor(format!(
            "has {} values, the layout {}",
            adapter.params.len(),
            adapter.model.len()
        )));
    }
    let digests = adapter
        .reference_sha256
        .iter()
        .map(|d| check_digest(d))
        .collect::<Result<Vec<_>, _>>()?;
    let data: Vec<u8> = adapter
        .params
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let meta: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("format_version", FORMAT_VERSION.to_string()),
        ("identity_id", adapter.identity_id.clone()),
        ("model_name", adapter.model.name.clone()),
        ("model_version", adapter.model.version.clone()),
        ("visual_length", adapter.model.visual_length.to_string()),
        ("token_length", adapter.model.token_length.to_string()),
        ("reference_sha256", digests.join(",")),
        ("reference_set", reference_set(&digests)?),
        ("steps", adapter.steps.to_string()),
        ("seed", adapter.seed.to_string()),
        // NOTE: `{:?}` prints the shortest string that parses back to the same f32.
        ("final_loss", format!("{:?}", adapter.final_loss)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut meta = meta;
    meta.insert(CHECKSUM.into(), checksum(&meta, &data));
    let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![adapter.params.len()], &data)
        .map_err(|e| AdapterError::Tensor(e.to_string()))?;
    safetensors::serialize([(TENSOR, view)], Some(meta))
        .map_err(|e| AdapterError::Corrupt(e.to_string()))
}

/// The metadata key of the file's checksum.
const CHECKSUM: &str = "checksum";

/// sha256 over the metadata (every key but [`CHECKSUM`], sorted, as `key=value` lines) and the
/// tensor's bytes.
fn checksum(meta: &HashMap<String, String>, data: &[u8]) -> String {
    let mut keys: Vec<&String> = meta.keys().filter(|k| *k != CHECKSUM).collect();
    keys.sort();
    let mut hasher = Sha256::new();
    for k in keys {
        hasher.update(k.as_bytes());
        hasher.update(b"=");
        hasher.update(meta[k].as_bytes());
        hasher.update(b"\n");
    }
    hasher.update(data);
    hex::encode(hasher.finalize())
}

/// Reads an adapter file and checks it against `model` (see the module docs for what is refused).
pub fn decode(bytes: &[u8], model: &ModelRef) -> Result<StoredAdapter, AdapterError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| AdapterError::Corrupt(e.to_string()))?;
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| AdapterError::Corrupt(e.to_string()))?;
    let empty = HashMap::new();
    let meta = header.metadata().as_ref().unwrap_or(&empty);
    let field = |key: &'static str| -> Result<&str, AdapterError> {
        meta.get(key)
            .map(String::as_str)
            .ok_or(AdapterError::Metadata {
                field: key,
                problem: "is missing".into(),
            })
    };
    fn parse<T: std::str::FromStr>(key: &'static str, value: &str) -> Result<T, AdapterError> {
        value.parse().map_err(|_| AdapterError::Metadata {
            field: key,
            problem: format!("{value:?} does not parse"),
        })
    }
    if field("format")? != FORMAT {
        return Err(AdapterError::Metadata {
            field: "format",
            problem: format!("is {:?}, expected {FORMAT:?}", field("format")?),
        });
    }
    // NOTE: the checksum comes before any field is trusted, so a damaged file reads as corrupt
    // rather than as some other model's adapter.
    let names = st.names();
    if names.len() != 1 {
        return Err(AdapterError::Tensor(format!(
            "the file holds {} tensors {names:?}, expected only `{TENSOR}`",
            names.len()
        )));
    }
    let view = st
        .tensor(TENSOR)
        .map_err(|e| AdapterError::Tensor(e.to_string()))?;
    let recorded = field(CHECKSUM)?;
    let actual = checksum(meta, view.data());
    if recorded != actual {
        return Err(AdapterError::Corrupt(format!(
            "checksum is {actual}, the file records {recorded}"
        )));
    }
    let version: u32 = parse("format_version", field("format_version")?)?;
    if version != FORMAT_VERSION {
        return Err(AdapterError::Metadata {
            field: "format_version",
            problem: format!("is {version}, this worker reads {FORMAT_VERSION}"),
        });
    }
    let found = ModelRef {
        name: field("model_name")?.to_string(),
        version: field("model_version")?.to_string(),
        visual_length: parse("visual_length", field("visual_length")?)?,
        token_length: parse("token_length", field("token_length")?)?,
    };
    let mismatch = |field: &'static str, found: String, expected: String| {
        Err(AdapterError::Mismatch {
            field,
            found,
            expected,
        })
    };
    if found.name != model.name {
        return mismatch("model", found.name, model.name.clone());
    }
    if found.version != model.version {
        return mismatch("model version", found.version, model.version.clone());
    }
    if (found.visual_length, found.token_length) != (model.visual_length, model.token_length) {
        return mismatch(
            "layout (visual + token)",
            format!("{} + {}", found.visual_length, found.token_length),
            format!("{} + {}", model.visual_length, model.token_length),
        );
    }
    if view.dtype() != Dtype::F32 || view.shape() != [model.len()] {
        return Err(AdapterError::Tensor(format!(
            "is {:?} {:?}, expected F32 [{}]",
            view.dtype(),
            view.shape(),
            model.len()
        )));
    }
    let params = f32_values(&view);
    if let Some(i) = params.iter().position(|x| !x.is_finite()) {
        return Err(AdapterError::Tensor(format!("value {i} is {}", params[i])));
    }
    let references = field("reference_sha256")?;
    let reference_sha256: Vec<String> = if references.is_empty() {
        Vec::new()
    } else {
        references.split(',').map(str::to_string).collect()
    };
    let set = reference_set(&reference_sha256).map_err(|e| AdapterError::Metadata {
        field: "reference_sha256",
        problem: e.to_string(),
    })?;
    if field("reference_set")? != set {
        return Err(AdapterError::Metadata {
            field: "reference_set",
            problem: format!("is not the digest of reference_sha256 ({set})"),
        });
    }
    let identity_id = field("identity_id")?.to_string();
    check_identity_id(&identity_id).map_err(|e| AdapterError::Metadata {
        field: "identity_id",
        problem: e.to_string(),
    })?;
    Ok(StoredAdapter {
        identity_id,
        model: found,
        reference_sha256,
        steps: parse("steps", field("steps")?)?,
        seed: parse("seed", field("seed")?)?,
        final_loss: parse("final_loss", field("final_loss")?)?,
        params,
    })
}

#[cfg(test)]
pub(crate) mod samples {
    //! Small adapters for the tests of this module and of the adapter store.

    use super::*;

    /// A model with an 8-value layout.
    pub fn model() -> ModelRef {
        ModelRef {
            name: "pva-tiny".into(),
            version: "0.1.0".into(),
            visual_length: 6,
            token_length: 2,
        }
    }

    /// The digest of a one-byte file.
    pub fn digest(i: u8) -> String {
        sha256_hex(&[i])
    }

    /// An adapter of [`model`] with three references.
    pub fn adapter() -> StoredAdapter {
        StoredAdapter {
            identity_id: "person-42".into(),
            model: model(),
            reference_sha256: vec![digest(1), digest(2), digest(3)],
            steps: 40,
            seed: 7,
            final_loss: 0.123_456_79,
            params: vec![0.5, -1.25, 3.0e-7, 0.0, 1.0, 2.0, -0.001, 42.0],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::samples::{adapter, digest, model};
    use super::*;

    #[test]
    fn round_trip_keeps_everything() {
        let a = adapter();
        let bytes = encode(&a).unwrap();
        let b = decode(&bytes, &model()).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.visual(), &a.params[..6]);
        assert_eq!(b.token(), &[-0.001, 42.0]);
        b.check_source("person-42", &[digest(3), digest(1), digest(2)])
            .unwrap();
        assert!(b.check_source("person-43", &a.reference_sha256).is_err());
        assert!(b
            .check_source("person-42", &[digest(1), digest(2)])
            .is_err());
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = encode(&adapter()).unwrap();
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len], &model()).is_err(),
                "a file cut to {len} of {} bytes was accepted",
                bytes.len()
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode(&longer, &model()),
            Err(AdapterError::Corrupt(_))
        ));
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        // Header bytes break the JSON or change a field; data bytes fail the checksum.
        let bytes = encode(&adapter()).unwrap();
        let mut accepted = Vec::new();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            if let Ok(a) = decode(&bad, &model()) {
                accepted.push((i, a));
            }
        }
        assert!(
            accepted.is_empty(),
            "flips accepted at bytes {:?}",
            accepted.iter().map(|(i, _)| i).collect::<Vec<_>>()
        );
        // In the tensor's bytes the checksum is what notices.
        let data_start = bytes.len() - 8 * 4;
        for i in data_start..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x80;
            let err = decode(&bad, &model()).unwrap_err();
            assert!(
                matches!(&err, AdapterError::Corrupt(m) if m.contains("checksum")),
                "byte {i}: {err}"
            );
        }
    }

    #[test]
    fn another_model_version_or_layout_is_refused() {
        let bytes = encode(&adapter()).unwrap();
        let other = ModelRef {
            name: "pva-sd2".into(),
            ..model()
        };
        let err = decode(&bytes, &other).unwrap_err();
        assert!(matches!(err, AdapterError::Mismatch { field: "model", .. }));
        assert!(err.to_string().contains("pva-tiny"), "{err}");
        let newer = ModelRef {
            version: "0.2.0".into(),
            ..model()
        };
        assert!(matches!(
            decode(&bytes, &newer),
            Err(AdapterError::Mismatch {
                field: "model version",
                ..
            })
        ));
        let wider = ModelRef {
            visual_length: 5,
            token_length: 3,
            ..model()
        };
        assert!(matches!(
            decode(&bytes, &wider),
            Err(AdapterError::Mismatch { .. })
        ));
    }

    #[test]
    fn foreign_safetensors_files_are_refused() {
        // A valid safetensors file without our metadata (e.g. adapter_init.safetensors).
        let data: Vec<u8> = [1.0f32; 8].iter().flat_map(|x| x.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![8], &data).unwrap();
        let plain = safetensors::serialize([(TENSOR, view.clone())], None).unwrap();
        assert!(matches!(
            decode(&plain, &model()),
            Err(AdapterError::Metadata {
                field: "format",
                ..
            })
        ));
        assert!(matches!(
            decode(b"not a safetensors file", &model()),
            Err(AdapterError::Corrupt(_))
        ));
        // Right metadata, wrong dtype.
        let a = adapter();
        let good = encode(&a).unwrap();
        let (_, header) = SafeTensors::read_metadata(&good).unwrap();
        let mut meta = header.metadata().clone().unwrap();
        let f64s: Vec<u8> = a
            .params
            .iter()
            .flat_map(|&x| f64::from(x).to_le_bytes())
            .collect();
        let view = safetensors::tensor::TensorView::new(Dtype::F64, vec![8], &f64s).unwrap();
        // A consistent checksum, so that the dtype check is what refuses it.
        meta.insert(CHECKSUM.into(), checksum(&meta, &f64s));
        let wrong = safetensors::serialize([(TENSOR, view)], Some(meta)).unwrap();
        assert!(matches!(
            decode(&wrong, &model()),
            Err(AdapterError::Tensor(_))
        ));
    }

    #[test]
    fn non_finite_values_are_never_encoded_into_a_usable_adapter() {
        let mut a = adapter();
        a.params[3] = f32::NAN;
        let bytes = encode(&a).unwrap();
        assert!(matches!(
            decode(&bytes, &model()),
            Err(AdapterError::Tensor(m)) if m.contains("NaN")
        ));
        a.params.pop();
        assert!(encode(&a).is_err());
    }
}
