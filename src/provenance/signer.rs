//! Signing credentials: the settings, loading and checking the key and certificate chain, and the
//! [`Signer`] that c2pa signs manifests with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use c2pa::Context;
use serde::{Deserialize, Serialize};

use super::{mark, verify, OutputProvenance, ProvenanceError};
use crate::pipeline::image::OutputFormat;

/// Bytes reserved for the COSE signature box on top of the certificate chain. An ECDSA or Ed25519
/// signature is under 150 bytes and an RSA-4096 one 512, plus a few hundred bytes of COSE headers.
const SIGNATURE_RESERVE: usize = 2048;

/// How outputs are signed. Signing is off while `signing_key` and `certificate_chain` are both
/// empty; the chart mounts both from a Secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvenanceSettings {
    /// PEM private key (PKCS#8, `BEGIN PRIVATE KEY`) of the signing certificate; empty: unsigned.
    pub signing_key: PathBuf,
    /// PEM certificate chain: the signing certificate first, then any intermediates (the root is
    /// the verifier's trust anchor and may be left out). It must not be self-signed, must carry the
    /// digitalSignature key usage and a C2PA-allowed extended key usage (e.g. emailProtection).
    pub certificate_chain: PathBuf,
    /// Signature algorithm matching the key: es256, es384, es512, ps256, ps384, ps512 or ed25519.
    pub algorithm: SigningAlgorithm,
    /// Refuse to start without signing credentials (production); when false, outputs carry the
    /// IPTC XMP only and a warning is logged.
    pub require_signing: bool,
}

impl Default for ProvenanceSettings {
    /// Unsigned, not required, ES256 once a key is given.
    fn default() -> Self {
        Self {
            signing_key: PathBuf::new(),
            certificate_chain: PathBuf::new(),
            algorithm: SigningAlgorithm::Es256,
            require_signing: false,
        }
    }
}

/// The signature algorithms the pure-Rust crypto backend of `c2pa` signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SigningAlgorithm {
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// ECDSA P-521 with SHA-512.
    Es512,
    /// RSASSA-PSS with SHA-256 (RSA key of at least 2048 bits).
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// EdDSA over Curve25519.
    Ed25519,
}

impl SigningAlgorithm {
    fn c2pa(self) -> c2pa::SigningAlg {
        match self {
            Self::Es256 => c2pa::SigningAlg::Es256,
            Self::Es384 => c2pa::SigningAlg::Es384,
            Self::Es512 => c2pa::SigningAlg::Es512,
            Self::Ps256 => c2pa::SigningAlg::Ps256,
            Self::Ps384 => c2pa::SigningAlg::Ps384,
            Self::Ps512 => c2pa::SigningAlg::Ps512,
            Self::Ed25519 => c2pa::SigningAlg::Ed25519,
        }
    }
}

/// A loaded signing key and certificate chain, checked once by signing and validating a probe
/// image, so a bad credential stops the worker at start-up instead of failing every job.
pub struct Signer {
    pub(super) inner: NoTimestampSigner,
    pub(super) context: Arc<Context>,
    algorithm: SigningAlgorithm,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The signer the settings describe: `Ok(None)` when signing is not configured and not
    /// required (with a warning in the log), an error when it is required but missing, half
    /// configured, or the credentials are refused.
    pub fn from_settings(settings: &ProvenanceSettings) -> Result<Option<Self>, ProvenanceError> {
        let key = !settings.signing_key.as_os_str().is_empty();
        let chain = !settings.certificate_chain.as_os_str().is_empty();
        match (key, chain) {
            (false, false) if settings.require_signing => Err(ProvenanceError::SigningRequired),
            (false, false) => {
                tracing::warn!(
                    "provenance signing is not configured: outputs carry the IPTC digital source \
                     type in XMP but no signed C2PA manifest"
                );
                Ok(None)
            }
            (true, false) => Err(ProvenanceError::HalfConfigured {
                missing: "certificate_chain",
                given: "signing_key",
            }),
            (false, true) => Err(ProvenanceError::HalfConfigured {
                missing: "signing_key",
                given: "certificate_chain",
            }),
            (true, true) => {
                let key = read_credential("signing key", &settings.signing_key)?;
                let chain = read_credential("certificate chain", &settings.certificate_chain)?;
                Self::from_pem(&chain, &key, settings.algorithm).map(Some)
            }
        }
    }

    /// A signer from PEM bytes: the certificate chain (signing certificate first) and its PKCS#8
    /// private key. Signs and validates a probe image before returning.
    pub fn from_pem(
        certificate_chain: &[u8],
        private_key: &[u8],
        algorithm: SigningAlgorithm,
    ) -> Result<Self, ProvenanceError> {
        let invalid = |reason: String| ProvenanceError::InvalidCredentials { algorithm, reason };
        let certificates = pem_certificate_count(certificate_chain);
        if certificates == 0 {
            return Err(invalid(
                "the certificate chain holds no PEM certificate".into(),
            ));
        }
        let inner =
            c2pa::create_signer::from_keys(certificate_chain, private_key, algorithm.c2pa(), None)
                .map_err(|e| invalid(e.to_string()))?;
        let signer = Self {
            inner: NoTimestampSigner {
                reserve: certificate_chain.len() + SIGNATURE_RESERVE,
                inner,
            },
            context: Arc::new(c2pa_context(None).map_err(|e| invalid(e.to_string()))?),
            algorithm,
        };
        signer.probe().map_err(invalid)?;
        Ok(signer)
    }

    /// The configured algorithm.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    /// Signs a tiny PNG and validates it: catches a key that does not match the certificate and a
    /// certificate c2pa refuses (self-signed, wrong key usage, expired).
    fn probe(&self) -> Result<(), String> {
        let probe = image::RgbImage::from_pixel(8, 8, image::Rgb([128, 128, 128]));
        let png = crate::pipeline::image::encode(&probe, OutputFormat::Png)
            .map_err(|e| format!("encoding the probe image: {e}"))?;
        let info = OutputProvenance::new("probe", "0", Some(&png));
        let signed = mark(&png, OutputFormat::Png, &info, Some(self)).map_err(|e| {
            // NOTE: c2pa reports a refused certificate as a bare COSE error; say what it checks.
            format!(
                "{e}; c2pa refuses self-signed certificates and needs the digitalSignature key \
                 usage, an allowed extended key usage (e.g. emailProtection) and a current validity"
            )
        })?;
        let report = verify(&signed, None).map_err(|e| e.to_string())?;
        // Without trust anchors the only acceptable complaint is that the signer is not trusted.
        let errors: Vec<&String> = report
            .validation_errors
            .iter()
            .filter(|e| !e.starts_with(UNTRUSTED_CODE))
            .collect();
        if !report.signed || report.state.as_deref() == Some("Invalid") || !errors.is_empty() {
            return Err(format!(
                "a probe image signed with these credentials does not validate (does the key \
                 belong to the certificate?): {errors:?}"
            ));
        }
        Ok(())
    }
}

/// The c2pa status code of a valid signature by a certificate outside the trust anchors.
const UNTRUSTED_CODE: &str = "signingCredential.untrusted";

/// Wraps c2pa's signer to reserve only what a signature without a timestamp needs (c2pa reserves
/// 10 KB for an RFC 3161 token on every output otherwise) and to make sure no timestamp authority
/// is ever contacted.
pub(super) struct NoTimestampSigner {
    inner: c2pa::BoxedSigner,
    reserve: usize,
}

impl c2pa::Signer for NoTimestampSigner {
    fn sign(&self, data: &[u8]) -> c2pa::Result<Vec<u8>> {
        self.inner.sign(data)
    }

    fn alg(&self) -> c2pa::SigningAlg {
        self.inner.alg()
    }

    fn certs(&self) -> c2pa::Result<Vec<Vec<u8>>> {
        self.inner.certs()
    }

    fn reserve_size(&self) -> usize {
        self.reserve
    }

    fn time_authority_url(&self) -> Option<String> {
        None
    }
}

/// Reads a credential file, naming it (never its content) on failure.
fn read_credential(what: &'static str, path: &Path) -> Result<Vec<u8>, ProvenanceError> {
    std::fs::read(path).map_err(|source| ProvenanceError::ReadCredential {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// How many `BEGIN CERTIFICATE` blocks a PEM bundle has.
pub(super) fn pem_certificate_count(pem: &[u8]) -> usize {
    String::from_utf8_lossy(pem)
        .matches("-----BEGIN CERTIFICATE-----")
        .count()
}

/// c2pa settings: no thumbnails, no network, and the given trust anchors (PEM bundle).
pub(super) fn c2pa_context(trust_anchors_pem: Option<&str>) -> c2pa::Result<Context> {
    let mut settings = c2pa::settings::Settings::new();
    settings.set_value("builder.thumbnail.enabled", false)?;
    settings.set_value("verify.ocsp_fetch", false)?;
    settings.set_value("verify.remote_manifest_fetch", false)?;
    if let Some(pem) = trust_anchors_pem {
        settings.set_value("trust.trust_anchors", pem)?;
    }
    Context::new().with_settings(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signer_can_be_shared_between_worker_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Signer>();
    }

    #[test]
    fn settings_decide_whether_a_signer_is_needed() {
        let mut s = ProvenanceSettings::default();
        assert!(Signer::from_settings(&s).unwrap().is_none());
        s.require_signing = true;
        assert!(matches!(
            Signer::from_settings(&s),
            Err(ProvenanceError::SigningRequired)
        ));
        s.signing_key = PathBuf::from("/nonexistent/key.pem");
        let err = Signer::from_settings(&s).unwrap_err();
        assert!(
            matches!(
                err,
                ProvenanceError::HalfConfigured {
                    missing: "certificate_chain",
                    ..
                }
            ),
            "{err}"
        );
        s.certificate_chain = PathBuf::from("/nonexistent/chain.pem");
        let err = Signer::from_settings(&s).unwrap_err();
        assert!(
            matches!(err, ProvenanceError::ReadCredential { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("/nonexistent/key.pem"), "{err}");
    }

    #[test]
    fn settings_deserialize_with_lowercase_algorithms() {
        let s: ProvenanceSettings = serde_json::from_str(
            r#"{"signing_key": "/k.pem", "certificate_chain": "/c.pem", "algorithm": "ed25519",
                "require_signing": true}"#,
        )
        .unwrap();
        assert_eq!(s.algorithm, SigningAlgorithm::Ed25519);
        assert!(serde_json::from_str::<ProvenanceSettings>(
            r#"{"signing_key": "", "certificate_chain": "", "algorithm": "rs256",
                "require_signing": false}"#
        )
        .is_err());
    }
}
