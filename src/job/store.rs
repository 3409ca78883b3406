//! [`ObjectStore`]: what the job runner reads images from and writes outputs to, addressed by bucket
//! and key; implemented in `crate::storage` (local directories, S3).

use std::future::Future;

/// An object store addressed by bucket and key. Implementations never log object bytes, signed URLs
/// or credentials.
pub trait ObjectStore: Send + Sync + 'static {
    /// Reads an object; refuses it before downloading the body when it is larger than `max_bytes`.
    fn get(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Vec<u8>, StorageError>> + Send;
    /// Writes an object (replacing any object under the key).
    fn put(
        &self,
        bucket: &str,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
    /// The object's entity tag, read without its body (S3: HeadObject's ETag): another version of
    /// the object under the same key has another tag. [`StorageError::NotFound`] when missing.
    fn etag(
        &self,
        bucket: &str,
        key: &str,
    ) -> impl Future<Output = Result<String, StorageError>> + Send;
    /// Whether an object exists.
    fn exists(
        &self,
        bucket: &str,
        key: &str,
    ) -> impl Future<Output = Result<bool, StorageError>> + Send;
    /// Deletes an object; deleting a missing object is not an error.
    fn delete(
        &self,
        bucket: &str,
        key: &str,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
    /// Keys under a prefix, in lexical order.
    fn list(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<String>, StorageError>> + Send;
}

/// Why an object could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No object under this key.
    #[error("object `{key}` not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// The object is larger than the configured limit (checked before download).
    #[error("object `{key}` is {size} bytes, the limit is {limit}")]
    TooLarge {
        /// The key.
        key: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The key is not allowed here (outside the root or the configured prefixes).
    #[error("object key `{key}` is not allowed: {reason}")]
    Forbidden {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Any other I/O failure; `transient` says whether a retry may help.
    #[error("storage I/O on `{key}`: {message}")]
    Io {
        /// The key.
        key: String,
        /// The underlying message (no credentials, no signed URLs).
        message: String,
        /// Whether retrying may succeed.
        transient: bool,
    },
}

impl StorageError {
    /// Whether the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Io {
                transient: true,
                ..
            }
        )
    }
}
