//! PEM files of TLS settings (CA bundles, client certificates and keys), read and checked before a
//! client is built from them, so a wrong file is reported with the setting that names it instead of
//! failing (or panicking) inside a TLS library at the first connection. The contents never reach an
//! error message.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PEM file of a setting cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("`{setting}` ({path}): {problem}")]
pub struct PemError {
    /// Dotted name of the setting, e.g. `amqp.tls_ca_file`.
    pub setting: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

/// Reads the file of `setting`; the error says why it cannot be read, never what it holds.
fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|e| PemError {
        setting,
        path: path.to_path_buf(),
        problem: format!("cannot be read: {}", e.kind()),
    })
}

/// A file of one or more PEM certificates (a CA bundle or a certificate chain): its bytes, once
/// every `CERTIFICATE` block in it decodes and there is at least one.
pub fn certificates(setting: &'static str, path: &Path) -> Result<Vec<u8>, PemError> {
    let bytes = read(setting, path)?;
    let problem = |problem: &str| PemError {
        setting,
        path: path.to_path_buf(),
        problem: problem.to_string(),
    };
    let count = CertificateDer::pem_slice_iter(&bytes)
        .try_fold(0usize, |n, cert| cert.map(|_| n + 1))
        .map_err(|_| problem("is not valid PEM"))?;
    if count == 0 {
        return Err(problem("holds no PEM certificate (`BEGIN CERTIFICATE`)"));
    }
    Ok(bytes)
}

/// A file holding one PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC): its bytes.
pub fn private_key(setting: &'static str, path: &Path) -> Result<Vec<u8>, PemError> {
    let bytes = read(setting, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| PemError {
        setting,
        path: path.to_path_buf(),
        problem: "holds no PEM private key (PKCS#8, RSA or EC)".into(),
    })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real self-signed certificate (P-256, CN=pem-test), only parsed here.
    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBfTCCASOgAwIBAgIUOqwNc92uXfw54d3Zpy/uSwQzt4MwCgYIKoZIzj0EAwIw
EzERMA8GA1UEAwwIcGVtLXRlc3QwIBcNMjYxMTI5MjMzMjI1WhgPMjEyNjExMDUy
MzMyMjVaMBMxETAPBgNVBAMMCHBlbS10ZXN0MFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAEXqNhK4nS7S49Xgofp0IOjc/YCSXqEaxTi08ODYzhQhrM4KLeVt19S2Hc
1xKoZ+2FxrHPj0Gss+3RYpfpxjR986NTMFEwHQYDVR0OBBYEFN8t1SH+oFJbQmLW
3+YYfmywyIdbMB8GA1UdIwQYMBaAFN8t1SH+oFJbQmLW3+YYfmywyIdbMA8GA1Ud
EwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgYdWjhSHrdhNY2SURp0f7IZMg
PDfTScBgMdUdIzoGIc4CIQD7mA6BKDS3RKqI0DWSF9MQYSh8ddSt+XoHSLLMq39p
3g==
-----END CERTIFICATE-----
";

    #[test]
    fn bundles_need_a_certificate_and_keys_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let bundle = write("ca.pem", CERT);
        assert_eq!(
            certificates("s3.tls_ca_file", &bundle).unwrap(),
            CERT.as_bytes()
        );
        let empty = write("empty.pem", "not a certificate\n");
        let err = certificates("s3.tls_ca_file", &empty).unwrap_err();
        assert!(err.to_string().contains("s3.tls_ca_file"), "{err}");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let err = certificates("amqp.tls_ca_file", &dir.path().join("missing.pem")).unwrap_err();
        assert!(err.to_string().contains("cannot be read"), "{err}");
        // A certificate is not a key; the error does not quote the file.
        let err = private_key("amqp.tls_key_file", &bundle).unwrap_err();
        assert!(err.to_string().contains("no PEM private key"), "{err}");
        assert!(!err.to_string().contains("MIIB"), "{err}");
    }
}
