//! A throwaway certificate authority for provenance and TLS tests, made with the `openssl` CLI in a
//! temp directory: a root CA and a signing certificate it issued with what c2pa requires of a signer
//! (not self-signed, digitalSignature key usage, the emailProtection extended key usage, subject
//! and authority key identifiers); on demand, TLS server and client certificates. Nothing here is
//! used outside tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use pva_worker::provenance::{ProvenanceSettings, SigningAlgorithm};

/// The key type of the signing certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA P-256 (signs ES256).
    P256,
    /// Ed25519.
    Ed25519,
    /// RSA 2048 (signs PS256).
    Rsa2048,
}

impl KeyType {
    fn genpkey_args(self) -> &'static [&'static str] {
        match self {
            Self::P256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Self::Ed25519 => &["-algorithm", "ED25519"],
            Self::Rsa2048 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        }
    }

    /// The algorithm a key of this type signs with.
    pub fn algorithm(self) -> SigningAlgorithm {
        match self {
            Self::P256 => SigningAlgorithm::Es256,
            Self::Ed25519 => SigningAlgorithm::Ed25519,
            Self::Rsa2048 => SigningAlgorithm::Ps256,
        }
    }
}

/// What a TLS certificate of [`TestCa::issue_tls`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRole {
    /// A server on `localhost` / 127.0.0.1 (serverAuth).
    Server,
    /// A client presenting it for mutual TLS (clientAuth).
    Client,
}

/// Files of a test CA; the directory is removed when this is dropped.
pub struct TestCa {
    dir: tempfile::TempDir,
    /// The root certificate (the trust anchor), PEM.
    pub ca_cert: PathBuf,
    /// The signing certificate issued by the root, PEM (the chain to configure).
    pub signer_cert: PathBuf,
    /// The signing certificate's private key, PKCS#8 PEM.
    pub signer_key: PathBuf,
    /// The algorithm of the signing key.
    pub algorithm: SigningAlgorithm,
}

const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[signer]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = emailProtection
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[selfsigned]
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature, keyCertSign
extendedKeyUsage = emailProtection
subjectKeyIdentifier = hash
";

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI must be installed for the provenance tests");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A new ECDSA P-256 private key (PKCS#8 PEM) at `out` in `dir`.
fn p256_key(dir: &Path, out: &str) {
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            out,
        ],
    );
}

/// A certificate `{name}.pem` for the key `{name}.key`, issued by the root with the extensions of
/// the config section `name`, serial `serial`, valid `days` days.
fn issue(dir: &Path, name: &str, subject: &str, serial: &str, days: &str) {
    let (key, csr, cert) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    let config = ["-config", "openssl.cnf"];
    openssl(
        dir,
        &[
            &["req", "-new"],
            &config[..],
            &["-key", &key, "-subj", subject, "-out", &csr],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            serial,
            "-days",
            days,
            "-sha256",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            name,
            "-out",
            &cert,
        ],
    );
}

impl TestCa {
    /// A root CA (ECDSA P-256) and a signing certificate of `key_type` issued by it, valid for a
    /// week from now.
    pub fn new(key_type: KeyType) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("openssl.cnf"), OPENSSL_CONFIG).unwrap();
        p256_key(d, "ca.key");
        openssl(
            d,
            &[
                "req",
                "-new",
                "-x509",
                "-config",
                "openssl.cnf",
                "-extensions",
                "ca",
                "-key",
                "ca.key",
                "-subj",
                "/CN=pva-worker test root CA/O=pva-worker tests",
                "-days",
                "7",
                "-sha256",
                "-out",
                "ca.pem",
            ],
        );
        let mut genpkey = vec!["genpkey"];
        genpkey.extend_from_slice(key_type.genpkey_args());
        genpkey.extend_from_slice(&["-out", "signer.key"]);
        openssl(d, &genpkey);
        issue(
            d,
            "signer",
            "/CN=pva-worker test signer/O=pva-worker tests",
            "2",
            "7",
        );
        Self {
            ca_cert: d.join("ca.pem"),
            signer_cert: d.join("signer.pem"),
            signer_key: d.join("signer.key"),
            algorithm: key_type.algorithm(),
            dir,
        }
    }

    /// A self-signed certificate with a signer's usages (which c2pa must refuse) and its key:
    /// (certificate, key).
    pub fn self_signed(&self) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        p256_key(d, "self.key");
        openssl(
            d,
            &[
                "req",
                "-new",
                "-x509",
                "-config",
                "openssl.cnf",
                "-extensions",
                "selfsigned",
                "-key",
                "self.key",
                "-subj",
                "/CN=self-signed/O=pva-worker tests",
                "-days",
                "7",
                "-sha256",
                "-out",
                "self.pem",
            ],
        );
        (d.join("self.pem"), d.join("self.key"))
    }

    /// A TLS certificate issued by the root (ECDSA P-256, a day), for a server on `localhost` and
    /// 127.0.0.1 or for a client: (certificate, PKCS#8 key) PEM paths.
    pub fn issue_tls(&self, role: TlsRole) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        let (name, serial) = match role {
            TlsRole::Server => ("server", "3"),
            TlsRole::Client => ("client", "4"),
        };
        p256_key(d, &format!("{name}.key"));
        let subject = format!("/CN=pva-worker test {name}/O=pva-worker tests");
        issue(d, name, &subject, serial, "1");
        (d.join(format!("{name}.pem")), d.join(format!("{name}.key")))
    }

    /// The root certificate as PEM text (what `verify` takes as trust anchors).
    pub fn anchors(&self) -> String {
        std::fs::read_to_string(&self.ca_cert).unwrap()
    }

    /// Provenance settings that sign with this CA's signing certificate.
    pub fn settings(&self, require_signing: bool) -> ProvenanceSettings {
        ProvenanceSettings {
            signing_key: self.signer_key.clone(),
            certificate_chain: self.signer_cert.clone(),
            algorithm: self.algorithm,
            require_signing,
        }
    }

    /// A path inside the CA's directory (for corrupted copies of its files).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
