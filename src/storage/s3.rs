//! [`S3Store`]: S3 or any S3-compatible store (endpoint override, path-style addressing) through
//! `aws-sdk-s3`, for the queue service.
//!
//! Every SDK error is turned into a [`StorageError`] here, with a message built only from the
//! operation, the bucket, the HTTP status and the S3 error code: the SDK's own `Display` of an error
//! can carry request details, and the error bodies of some stores echo the string to sign and the
//! access key id, so neither ever reaches a message.

use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, SharedHttpClient};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CreateBucketConfiguration, ServerSideEncryption,
};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::{ObjectStore, StorageError};
use super::{S3Settings, Sse};
use crate::model::pem::{self, PemError};

/// Name under which the static credentials from the settings show up in the SDK's traces.
const STATIC_PROVIDER: &str = "pva-worker-settings";

/// Longest S3 error code carried into a message (codes are short CamelCase words).
const MAX_CODE_CHARS: usize = 64;

/// An S3-compatible object store.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    /// `host:port` of the endpoint, for messages about connections (never the URL's user part).
    endpoint: String,
    region: String,
    sse: Sse,
    sse_kms_key_id: String,
    /// Bound on downloading one object's body (the SDK's operation timeout ends with the headers).
    body_timeout: Duration,
    /// `max-keys` of each ListObjectsV2 request (`None`: the store's default, 1000 on S3).
    list_page_size: Option<i32>,
}

/// Shows the settings in use, never the client (whose configuration holds the credentials).
impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("sse", &self.sse)
            .field("body_timeout", &self.body_timeout)
            .field("list_page_size", &self.list_page_size)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// A client for the store the settings describe: the endpoint override and path-style
    /// addressing for S3-compatible stores, the static credentials when both are set (otherwise the
    /// standard AWS credential chain: environment, profile, web identity, container and instance
    /// metadata), the connect and operation timeouts, and the SDK's standard retry (exponential
    /// backoff with jitter on throttling, timeouts, connection errors and 5xx) up to
    /// `max_attempts` attempts. With `tls_ca_file`, HTTPS trusts that CA bundle besides the
    /// system's roots; a bundle that cannot be used is the error.
    pub async fn new(settings: &S3Settings) -> Result<Self, PemError> {
        let region = Region::new(settings.region.clone());
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(settings.connect_timeout_secs))
            .operation_timeout(Duration::from_secs(settings.operation_timeout_secs))
            .build();
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(region.clone())
            .force_path_style(settings.force_path_style)
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts.max(1)));
        if !settings.endpoint.is_empty() {
            config = config.endpoint_url(&settings.endpoint);
        }
        if !settings.tls_ca_file.as_os_str().is_empty() {
            config = config.http_client(https_client(&settings.tls_ca_file)?);
        }
        let config = if settings.access_key_id.is_empty() || settings.secret_access_key.is_empty() {
            let chain =
                aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                    .region(region)
                    .build()
                    .await;
            config.credentials_provider(chain)
        } else {
            config.credentials_provider(Credentials::new(
                settings.access_key_id.expose(),
                settings.secret_access_key.expose(),
                None,
                None,
                STATIC_PROVIDER,
            ))
        };
        Ok(Self {
            client: Client::from_conf(config.build()),
            endpoint: endpoint_name(&settings.endpoint, &settings.region),
            region: settings.region.clone(),
            sse: settings.sse,
            sse_kms_key_id: settings.sse_kms_key_id.clone(),
            body_timeout: Duration::from_secs(settings.operation_timeout_secs),
            list_page_size: None,
        })
    }

    /// Lists with pages of at most `keys` keys (S3 caps pages at 1000). Small pages exercise the
    /// pagination against a test server without writing thousands of objects.
    pub fn with_list_page_size(mut self, keys: i32) -> Self {
        self.list_page_size = Some(keys.clamp(1, 1000));
        self
    }

    /// Creates `bucket` unless it exists (HEAD first, so a worker without `s3:CreateBucket`
    /// permission can still call this on an existing bucket). A concurrent creation by the same
    /// account is not an error.
    pub async fn ensure_bucket(&self, bucket: &str) -> Result<(), StorageError> {
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => return Ok(()),
            Err(e) => match failure(("HeadBucket", &self.endpoint), bucket, bucket, e) {
                StorageError::NotFound { .. } => {}
                other => return Err(other),
            },
        }
        let mut request = self.client.create_bucket().bucket(bucket);
        // NOTE: us-east-1 is S3's default location and rejects an explicit constraint naming it.
        if self.region != "us-east-1" {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BucketAlreadyOwnedByYou") => Ok(()),
            Err(e) => Err(failure(("CreateBucket", &self.endpoint), bucket, bucket, e)),
        }
    }

    /// Reads the body of a GetObject response into memory, stopping at `max_bytes` (a store may
    /// omit or misstate the length) and at the operation timeout.
    async fn read_body(
        &self,
        mut body: ByteStream,
        key: &str,
        size: Option<u64>,
        max_bytes: u64,
    ) -> Result<Vec<u8>, StorageError> {
        let capacity = size.unwrap_or(0).min(max_bytes);
        let mut bytes = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
        let read = async {
            while let Some(chunk) = body.try_next().await.map_err(|_| StorageError::Io {
                key: key.to_string(),
                message: "GetObject: the connection failed while reading the body".into(),
                transient: true,
            })? {
                let total = (bytes.len() + chunk.len()) as u64;
                if total > max_bytes {
                    return Err(StorageError::TooLarge {
                        key: key.to_string(),
                        size: size.unwrap_or(total).max(total),
                        limit: max_bytes,
                    });
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(())
        };
        match tokio::time::timeout(self.body_timeout, read).await {
            Ok(Ok(())) => Ok(bytes),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StorageError::Io {
                key: key.to_string(),
                message: format!(
                    "GetObject: the body was not read within {} s",
                    self.body_timeout.as_secs()
                ),
                transient: true,
            }),
        }
    }
}

impl ObjectStore for S3Store {
    /// GetObject; the size in the response headers is checked before any of the body is read, and
    /// a refused body is dropped unread (which closes the connection instead of draining it).
    async fn get(&self, bucket: &str, key: &str, max_bytes: u64) -> Result<Vec<u8>, StorageError> {
        let response = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| failure(("GetObject", &self.endpoint), bucket, key, e))?;
        let size = response
            .content_length()
            .and_then(|n| u64::try_from(n).ok());
        if let Some(size) = size.filter(|&size| size > max_bytes) {
            return Err(StorageError::TooLarge {
                key: key.to_string(),
                size,
                limit: max_bytes,
            });
        }
        self.read_body(response.body, key, size, max_bytes).await
    }

    /// PutObject with the content type and the configured server-side encryption.
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let length = bytes.len() as i64;
        let mut request = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .content_length(length)
            .body(ByteStream::from(bytes));
        request = match self.sse {
            Sse::None => request,
            Sse::Aes256 => request.server_side_encryption(ServerSideEncryption::Aes256),
            Sse::AwsKms => request
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(&self.sse_kms_key_id),
        };
        request.send().await.map(|_| ()).map_err(|e| {
            missing_bucket(
                failure(("PutObject", &self.endpoint), bucket, key, e),
                bucket,
            )
        })
    }

    /// HeadObject's ETag (a store that gives none: its size and modification time instead).
    async fn etag(&self, bucket: &str, key: &str) -> Result<String, StorageError> {
        let head = self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| failure(("HeadObject", &self.endpoint), bucket, key, e))?;
        Ok(match head.e_tag() {
            Some(tag) => tag.to_string(),
            None => format!(
                "size={};modified={}",
                head.content_length().unwrap_or(-1),
                head.last_modified().map(|t| t.secs()).unwrap_or(0)
            ),
        })
    }

    /// HeadObject: a 404 is `false`.
    async fn exists(&self, bucket: &str, key: &str) -> Result<bool, StorageError> {
        match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match failure(("HeadObject", &self.endpoint), bucket, key, e) {
                StorageError::NotFound { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    /// DeleteObject; a store that reports a missing key as 404 (S3 answers 204) is not an error.
    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StorageError> {
        match self
            .client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match failure(("DeleteObject", &self.endpoint), bucket, key, e) {
                StorageError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    /// ListObjectsV2, following continuation tokens until the listing is complete.
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut request = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .set_continuation_token(token.take())
                .set_max_keys(self.list_page_size);
            if !prefix.is_empty() {
                request = request.prefix(prefix);
            }
            let page = request.send().await.map_err(|e| {
                missing_bucket(
                    failure(("ListObjectsV2", &self.endpoint), bucket, prefix, e),
                    bucket,
                )
            })?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            match (page.is_truncated(), page.next_continuation_token()) {
                (Some(true), Some(next)) => token = Some(next.to_owned()),
                (Some(true), None) => {
                    return Err(StorageError::Io {
                        key: prefix.to_string(),
                        message: format!(
                            "ListObjectsV2 in bucket `{bucket}`: a truncated page without a continuation token"
                        ),
                        transient: false,
                    })
                }
                _ => break,
            }
        }
        // NOTE: S3 lists in UTF-8 binary order already; some compatible stores list in directory
        // order, and the trait promises lexical order.
        keys.sort();
        Ok(keys)
    }
}

/// What an S3 error response means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The object (or, on stores that do not tell them apart, its bucket) does not exist.
    NotFound,
    /// Throttling or a server-side failure: the same request may succeed later.
    Transient,
    /// Refused for good (access denied, bad signature, invalid request, missing bucket).
    Permanent,
}

/// Classifies an S3 error response by its HTTP status and error code.
fn verdict(status: u16, code: Option<&str>) -> Verdict {
    const NOT_FOUND: [&str; 2] = ["NoSuchKey", "NotFound"];
    const TRANSIENT: [&str; 8] = [
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
    ];
    match code {
        Some("NoSuchBucket") => Verdict::Permanent,
        Some(c) if NOT_FOUND.contains(&c) => Verdict::NotFound,
        Some(c) if TRANSIENT.contains(&c) => Verdict::Transient,
        _ if status == 404 => Verdict::NotFound,
        _ if status >= 500 || status == 429 || status == 408 => Verdict::Transient,
        _ => Verdict::Permanent,
    }
}

/// `HTTP <status> <code>`, the code reduced to the characters codes are made of (a misbehaving
/// store cannot smuggle arbitrary text into a log line through it). HEAD responses have no body,
/// so no code.
fn describe(status: u16, code: Option<&str>) -> String {
    let code: String = code
        .unwrap_or_default()
        .chars()
        .filter(|ch| ch.is_ascii_alphanumeric() || *ch == '.' || *ch == '_')
        .take(MAX_CODE_CHARS)
        .collect();
    if code.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status} {code}")
    }
}

/// Turns an SDK error into a [`StorageError`] without any of the SDK's own text.
fn failure<E: ProvideErrorMetadata>(
    (operation, endpoint): (&str, &str),
    bucket: &str,
    key: &str,
    error: SdkError<E>,
) -> StorageError {
    let io = |detail: String, transient: bool| StorageError::Io {
        key: key.to_string(),
        message: format!(
            "{operation} in bucket `{bucket}`: {detail}{}",
            if transient { "" } else { " (not retryable)" }
        ),
        transient,
    };
    match &error {
        SdkError::ServiceError(context) => {
            let status = context.raw().status().as_u16();
            let code = context.err().code();
            match verdict(status, code) {
                Verdict::NotFound => StorageError::NotFound {
                    key: key.to_string(),
                },
                Verdict::Transient => io(describe(status, code), true),
                Verdict::Permanent => io(describe(status, code), false),
            }
        }
        SdkError::TimeoutError(_) => io("no response within the operation timeout".into(), true),
        SdkError::DispatchFailure(dispatch) => {
            if let Some(tls) = dispatch.as_connector_error().and_then(tls_error) {
                io(
                    format!(
                        "TLS with {endpoint} failed: {tls} (check s3.tls_ca_file and the endpoint's certificate)"
                    ),
                    false,
                )
            } else if dispatch.is_timeout() {
                io(format!("connecting to {endpoint} timed out"), true)
            } else if dispatch.is_io() {
                io(
                    format!("could not connect to {endpoint} or the connection broke"),
                    true,
                )
            } else if dispatch.is_user() {
                io("the request was refused by the HTTP client".into(), false)
            } else {
                io("the request could not be sent".into(), true)
            }
        }
        SdkError::ResponseError(response) => io(
            format!(
                "HTTP {}: the response could not be read",
                response.raw().status().as_u16()
            ),
            true,
        ),
        SdkError::ConstructionFailure(_) => io(
            "the request could not be built (check s3.endpoint and the credentials)".into(),
            false,
        ),
        _ => io("unexpected SDK error".into(), false),
    }
}

/// The TLS failure (a refused certificate, a handshake alert) somewhere in the chain of causes of a
/// failed dispatch's connector error. `io::Error::source` skips the error it wraps, so the walk goes
/// into each `io::Error` by `get_ref` instead.
fn tls_error(error: &(impl std::error::Error + 'static)) -> Option<rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls.clone());
        }
        next = match error.downcast_ref::<std::io::Error>() {
            Some(io) if io.get_ref().is_some() => io.get_ref().map(|inner| inner as _),
            _ => error.source(),
        };
    }
    None
}

/// An HTTPS client trusting the PEM bundle at `path` besides the system's roots.
fn https_client(path: &std::path::Path) -> Result<SharedHttpClient, PemError> {
    let bundle = pem::certificates("s3.tls_ca_file", path)?;
    // NOTE: the SDK panics on a certificate its root store cannot take; refuse it here instead.
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bundle).flatten() {
        roots.add(cert).map_err(|e| PemError {
            setting: "s3.tls_ca_file",
            path: path.to_path_buf(),
            problem: format!("holds a certificate that cannot be a trust anchor: {e}"),
        })?;
    }
    let context = tls::TlsContext::builder()
        .with_trust_store(tls::TrustStore::default().with_pem_certificate(bundle))
        .build()
        .map_err(|_| PemError {
            setting: "s3.tls_ca_file",
            path: path.to_path_buf(),
            problem: "the HTTPS client refused it".into(),
        })?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https())
}

/// `host:port` of an endpoint URL for messages (no scheme, user part or path); AWS's regional
/// endpoint when there is none.
fn endpoint_name(endpoint: &str, region: &str) -> String {
    if endpoint.is_empty() {
        return format!("s3.{region}.amazonaws.com:443");
    }
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("https", endpoint));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let has_port = host
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    if has_port {
        host.to_string()
    } else if scheme.eq_ignore_ascii_case("http") {
        format!("{host}:80")
    } else {
        format!("{host}:443")
    }
}

/// For operations on a bucket rather than an object: a 404 means the bucket is missing (some
/// compatible stores answer NoSuchKey for it), which is a configuration error, not a missing object.
fn missing_bucket(error: StorageError, bucket: &str) -> StorageError {
    match error {
        StorageError::NotFound { key } => StorageError::Io {
            key,
            message: format!("bucket `{bucket}` not found (not retryable)"),
            transient: false,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_responses_map_to_not_found_transient_or_permanent() {
        let table = [
            (404, Some("NoSuchKey"), Verdict::NotFound),
            (404, None, Verdict::NotFound),
            (404, Some("NoSuchBucket"), Verdict::Permanent),
            (403, Some("AccessDenied"), Verdict::Permanent),
            (403, Some("SignatureDoesNotMatch"), Verdict::Permanent),
            (403, Some("InvalidAccessKeyId"), Verdict::Permanent),
            (400, Some("InvalidBucketName"), Verdict::Permanent),
            (400, Some("RequestTimeout"), Verdict::Transient),
            (503, Some("SlowDown"), Verdict::Transient),
            (500, Some("InternalError"), Verdict::Transient),
            (502, None, Verdict::Transient),
            (429, None, Verdict::Transient),
            (409, Some("OperationAborted"), Verdict::Transient),
            (412, Some("PreconditionFailed"), Verdict::Permanent),
        ];
        for (status, code, expected) in table {
            assert_eq!(verdict(status, code), expected, "{status} {code:?}");
        }
    }

    #[test]
    fn messages_carry_the_status_and_a_cleaned_code() {
        assert_eq!(describe(403, Some("AccessDenied")), "HTTP 403 AccessDenied");
        assert_eq!(describe(400, Some("Bad <x>\n{y}")), "HTTP 400 Badxy");
        assert_eq!(describe(403, None), "HTTP 403");
        assert_eq!(describe(403, Some("<>")), "HTTP 403");
        assert_eq!(
            describe(500, Some(&"A".repeat(500))).len(),
            "HTTP 500 ".len() + MAX_CODE_CHARS
        );
    }

    #[test]
    fn endpoints_are_named_by_host_and_port_only() {
        for (endpoint, want) in [
            ("https://minio.internal:9000", "minio.internal:9000"),
            ("https://minio.internal", "minio.internal:443"),
            ("http://ceph.local/base/path?x=1", "ceph.local:80"),
            ("https://user:pw@[::1]:9443/", "[::1]:9443"),
            ("", "s3.eu-west-1.amazonaws.com:443"),
        ] {
            assert_eq!(endpoint_name(endpoint, "eu-west-1"), want, "{endpoint}");
        }
    }

    #[test]
    fn a_missing_bucket_is_not_a_missing_object() {
        let e = missing_bucket(StorageError::NotFound { key: "k".into() }, "b-bucket");
        assert!(
            matches!(&e, StorageError::Io { transient: false, message, .. } if message.contains("b-bucket")),
            "{e:?}"
        );
    }
}
