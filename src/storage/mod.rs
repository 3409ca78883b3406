//! Where job images come from and where outputs go. `local` is the embedded default used by
//! `pva-worker edit`: object keys are paths under a root directory.

pub mod local;

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
