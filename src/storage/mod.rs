//! Where job images come from and where outputs go: the implementations of the job layer's
//! [`ObjectStore`]. `local` is the embedded default used by `pva-worker edit` (object keys are paths
//! under a root directory, buckets are sub-directories or named directories); `s3` is any
//! S3-compatible store used by `serve` (the only aws-sdk user).

pub mod local;
pub mod s3;
mod settings;

pub use crate::job::store::{ObjectStore, StorageError};
pub use settings::{S3Settings, Sse};
