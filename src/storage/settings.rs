//! `[s3]`: the object store's endpoint, credentials, buckets and limits (a section of
//! `crate::config::Settings`).

use std::path::PathBuf;

use serde::Deserialize;

use crate::model::Secret;

/// Server-side encryption of uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sse {
    /// No encryption header (for stores that reject it).
    None,
    /// SSE-S3 (`AES256`).
    Aes256,
    /// SSE-KMS with `s3.sse_kms_key_id`.
    AwsKms,
}

/// S3 or an S3-compatible store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// Endpoint URL for S3-compatible stores (empty: AWS's regional endpoint).
    pub endpoint: String,
    /// Region.
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most S3-compatible stores.
    pub force_path_style: bool,
    /// Access key id (empty: the standard AWS credential chain).
    pub access_key_id: Secret,
    /// Secret access key (empty: the standard AWS credential chain).
    pub secret_access_key: Secret,
    /// Bucket the job's input keys (target, mask, references) are read from.
    pub input_bucket: String,
    /// Input keys must start with one of these (empty list: any key in the bucket).
    pub input_prefixes: Vec<String>,
    /// Buckets a job may write its outputs to (the first is the default when a job names none).
    pub output_buckets: Vec<String>,
    /// Seconds to connect.
    pub connect_timeout_secs: u64,
    /// Seconds for one whole operation (all attempts).
    pub operation_timeout_secs: u64,
    /// Attempts per operation (SDK retries with backoff on throttling, timeouts and 5xx).
    pub max_attempts: u32,
    /// Server-side encryption of uploads.
    pub sse: Sse,
    /// KMS key id when `sse = "aws_kms"`.
    pub sse_kms_key_id: String,
    /// PEM bundle of CA certificates trusted for an `https://` endpoint, in addition to the
    /// system's roots (empty: the system's roots only), e.g. the internal CA of MinIO or Ceph.
    pub tls_ca_file: PathBuf,
}
