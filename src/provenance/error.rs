//! [`ProvenanceError`]: why provenance could not be set up, written or read.

use std::path::PathBuf;

use super::SigningAlgorithm;

/// Why provenance could not be set up, written or read.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    /// `require_signing` is set but no key or certificate chain is configured.
    #[error(
        "provenance.require_signing is set but provenance.signing_key and \
         provenance.certificate_chain are not both configured; outputs must be signed"
    )]
    SigningRequired,
    /// Only one of the key and the certificate chain is configured.
    #[error(
        "provenance.{missing} is empty while provenance.{given} is set; configure both or neither"
    )]
    HalfConfigured {
        missing: &'static str,
        given: &'static str,
    },
    /// A credential file could not be read.
    #[error("cannot read the provenance {what} {path}")]
    ReadCredential {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key or certificate chain was refused (unparseable, wrong algorithm, not a certificate,
    /// self-signed, missing key usage, expired, or a key that does not match the certificate).
    #[error("invalid provenance signing credentials ({algorithm:?}): {reason}")]
    InvalidCredentials {
        algorithm: SigningAlgorithm,
        reason: String,
    },
    /// Trust anchors given to [`verify`](super::verify) are not a PEM certificate bundle.
    #[error("invalid trust anchors: {0}")]
    TrustAnchors(String),
    /// The bytes are not a PNG, JPEG or WebP.
    #[error("provenance needs a PNG, JPEG or WebP image, got {0}")]
    UnsupportedFormat(String),
    /// The encoded image is not a well-formed container (the XMP could not be inserted).
    #[error("cannot insert XMP into the {format} output: {reason}")]
    Container {
        format: &'static str,
        reason: String,
    },
    /// The C2PA manifest could not be built or signed.
    #[error("signing the C2PA manifest failed: {0}")]
    Sign(#[source] Box<c2pa::Error>),
}
