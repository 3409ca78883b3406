//! [`S3Store`] against a real S3-compatible server (s3s-fs, started per test by
//! `common::s3_server`; install it with `scripts/setup-s3.sh`): the object round trip, the size
//! check before download, error kinds (missing key, bad credentials, a store that is down or does
//! not answer), what `put` sends on the wire, and list pagination.
//!
//! Some tests put a byte-counting TCP proxy between the store and the server to see what actually
//! crosses the wire.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::s3_server::S3Server;
use pva_worker::config::{S3Settings, Secret, Sse};
use pva_worker::storage::s3::S3Store;
use pva_worker::storage::{ObjectStore, StorageError};
use rand::distr::{Alphanumeric, SampleString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A bucket name no other test uses (s3s-fs wants 3-63 lowercase characters).
fn unique_bucket(tag: &str) -> String {
    let suffix = Alphanumeric
        .sample_string(&mut rand::rng(), 10)
        .to_lowercase();
    format!("pva-{tag}-{suffix}")
}

/// Deterministic bytes that are not all alike.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// A store on the server's settings, after `change` edits them.
async fn store_with(server: &S3Server, change: impl FnOnce(&mut S3Settings)) -> S3Store {
    let mut settings = server.settings();
    change(&mut settings);
    S3Store::new(&settings).await.unwrap()
}

/// A store on the server with a fresh bucket.
async fn store_and_bucket(server: &S3Server, tag: &str) -> (S3Store, String) {
    let store = S3Store::new(&server.settings()).await.unwrap();
    let bucket = unique_bucket(tag);
    store.ensure_bucket(&bucket).await.expect("create bucket");
    (store, bucket)
}

#[tokio::test]
async fn put_get_exists_list_delete_round_trip() {
    let server = S3Server::start();
    let (store, bucket) = store_and_bucket(&server, "round-trip").await;
    store
        .ensure_bucket(&bucket)
        .await
        .expect("ensure_bucket on an existing bucket is a no-op");

    let image = pattern(70_000);
    store
        .put(&bucket, "in/job-1/target.png", image.clone(), "image/png")
        .await
        .unwrap();
    store
        .put(&bucket, "in/job-1/mask.png", b"mask".to_vec(), "image/png")
        .await
        .unwrap();
    store
        .put(&bucket, "out/job-1/0.png", b"out".to_vec(), "image/png")
        .await
        .unwrap();

    assert!(store.exists(&bucket, "in/job-1/target.png").await.unwrap());
    assert!(!store.exists(&bucket, "in/job-1/other.png").await.unwrap());
    let limit = image.len() as u64;
    assert_eq!(
        store
            .get(&bucket, "in/job-1/target.png", limit)
            .await
            .unwrap(),
        image,
        "an object exactly at the limit is read whole"
    );
    assert_eq!(
        store.list(&bucket, "in/").await.unwrap(),
        vec!["in/job-1/mask.png", "in/job-1/target.png"]
    );
    assert_eq!(store.list(&bucket, "").await.unwrap().len(), 3);

    store
        .put(
            &bucket,
            "in/job-1/mask.png",
            b"replaced".to_vec(),
            "image/png",
        )
        .await
        .unwrap();
    assert_eq!(
        store.get(&bucket, "in/job-1/mask.png", 100).await.unwrap(),
        b"replaced"
    );

    store.delete(&bucket, "in/job-1/target.png").await.unwrap();
    assert!(!store.exists(&bucket, "in/job-1/target.png").await.unwrap());
    store
        .delete(&bucket, "in/job-1/target.png")
        .await
        .expect("deleting a missing object is not an error");
    assert_eq!(
        store.list(&bucket, "in/").await.unwrap(),
        vec!["in/job-1/mask.png"]
    );
}

#[tokio::test]
async fn a_missing_key_is_not_found_and_a_missing_bucket_is_a_permanent_error() {
    let server = S3Server::start();
    let (store, bucket) = store_and_bucket(&server, "missing").await;
    let err = store
        .get(&bucket, "no/such/key.png", 1 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StorageError::NotFound { key } if key == "no/such/key.png"),
        "{err:?}"
    );
    assert!(!err.is_transient());

    let err = store
        .list(&unique_bucket("never-created"), "")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Io {
                transient: false,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_object_over_the_limit_is_refused_before_its_body_is_downloaded() {
    // The limit is large, so a store that read the body up to the limit before refusing would
    // move far more bytes than the socket buffers between server, proxy and client (a few MiB on
    // loopback) can hold.
    const BIG: usize = 48 << 20;
    const LIMIT: u64 = 24 << 20;
    let server = S3Server::start();
    let (direct, bucket) = store_and_bucket(&server, "too-large").await;
    direct
        .put(&bucket, "big.bin", pattern(BIG), "application/octet-stream")
        .await
        .unwrap();
    direct
        .put(
            &bucket,
            "small.bin",
            pattern(1 << 20),
            "application/octet-stream",
        )
        .await
        .unwrap();

    let proxy = Proxy::start(server.addr()).await;
    let store = store_with(&server, |s| s.endpoint = proxy.endpoint()).await;

    // The proxy sees a whole body go by when one is read...
    assert_eq!(
        store.get(&bucket, "small.bin", LIMIT).await.unwrap().len(),
        1 << 20
    );
    proxy.wait_idle().await;
    assert!(proxy.bytes_from_server() >= 1 << 20);
    proxy.reset();

    // ...and little of a refused one.
    let err = store.get(&bucket, "big.bin", LIMIT).await.unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::TooLarge { size, limit, .. } if size == BIG as u64 && limit == LIMIT
        ),
        "{err:?}"
    );
    proxy.wait_idle().await;
    let downloaded = proxy.bytes_from_server();
    eprintln!("{downloaded} bytes crossed the proxy for a refused {BIG}-byte object");
    assert!(
        downloaded < LIMIT / 2,
        "{downloaded} bytes of a refused {BIG}-byte object crossed the proxy"
    );
}

#[tokio::test]
async fn a_wrong_secret_is_a_permanent_error_that_names_no_credential() {
    let server = S3Server::start();
    let (_, bucket) = store_and_bucket(&server, "auth").await;
    let wrong_secret = Alphanumeric.sample_string(&mut rand::rng(), 40);
    let store = store_with(&server, |s| {
        s.secret_access_key = Secret::new(wrong_secret.clone())
    })
    .await;

    let errors = [
        store.get(&bucket, "in/x.png", 1 << 20).await.unwrap_err(),
        store
            .put(&bucket, "out/x.png", pattern(100), "image/png")
            .await
            .unwrap_err(),
        store.exists(&bucket, "in/x.png").await.unwrap_err(),
        store.list(&bucket, "").await.unwrap_err(),
        store
            .ensure_bucket(&unique_bucket("auth"))
            .await
            .unwrap_err(),
    ];
    for err in errors {
        assert!(
            matches!(
                err,
                StorageError::Io {
                    transient: false,
                    ..
                }
            ),
            "{err:?}"
        );
        for text in [err.to_string(), format!("{err:?}")] {
            for credential in [
                wrong_secret.as_str(),
                server.access_key(),
                server.secret_key(),
            ] {
                assert!(
                    !text.contains(credential),
                    "a credential leaked into: {text}"
                );
            }
        }
    }
    let debug = format!("{store:?}");
    for credential in [wrong_secret.as_str(), server.access_key()] {
        assert!(
            !debug.contains(credential),
            "a credential leaked into: {debug}"
        );
    }
    let err = store.get(&bucket, "in/x.png", 1 << 20).await.unwrap_err();
    assert!(
        err.to_string().contains("403"),
        "the status tells what happened: {err}"
    );
}

#[tokio::test]
async fn a_store_that_is_down_gives_a_transient_error_within_the_timeout() {
    let mut server = S3Server::start();
    let (_, bucket) = store_and_bucket(&server, "down").await;
    let store = store_with(&server, |s| {
        s.operation_timeout_secs = 3;
        s.max_attempts = 3;
    })
    .await;
    server.stop();

    // Connection refused on every attempt: retried with backoff, then reported as transient.
    let err = bounded(3, store.get(&bucket, "in/x.png", 1 << 20))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let err = bounded(3, store.put(&bucket, "out/x.png", pattern(10), "image/png"))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn a_store_that_never_answers_times_out_as_a_transient_error() {
    let server = S3Server::start();
    // Accepts connections (the kernel completes the handshake) and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let store = store_with(&server, |s| {
        s.endpoint = format!("http://{addr}");
        s.operation_timeout_secs = 2;
        s.max_attempts = 2;
    })
    .await;
    let err = bounded(2, store.get("pva-silent", "in/x.png", 1 << 20))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("timeout"), "{err}");
    drop(silent);
}

#[tokio::test]
async fn put_sends_the_configured_encryption_and_content_type() {
    let server = S3Server::start();
    let (_, bucket) = store_and_bucket(&server, "sse").await;
    let proxy = Proxy::start(server.addr()).await;
    let cases = [
        (Sse::None, None, None),
        (Sse::Aes256, Some("AES256"), None),
        (Sse::AwsKms, Some("aws:kms"), Some("alias/pva-test")),
    ];
    for (sse, header, kms_key) in cases {
        let store = store_with(&server, |s| {
            s.endpoint = proxy.endpoint();
            s.sse = sse;
            s.sse_kms_key_id = kms_key.unwrap_or_default().to_string();
        })
        .await;
        proxy.reset();
        store
            .put(&bucket, "out/0.webp", pattern(64), "image/webp")
            .await
            .unwrap_or_else(|e| panic!("{sse:?}: {e}"));
        let request = proxy.request_text().to_ascii_lowercase();
        assert!(request.starts_with("put /"), "{sse:?}: {request}");
        assert!(
            request.contains("\r\ncontent-type: image/webp\r\n"),
            "{sse:?}: {request}"
        );
        let sent = header_value(&request, "x-amz-server-side-encryption");
        assert_eq!(
            sent.as_deref(),
            header.map(str::to_ascii_lowercase).as_deref(),
            "{sse:?}"
        );
        let sent_key = header_value(&request, "x-amz-server-side-encryption-aws-kms-key-id");
        assert_eq!(
            sent_key.as_deref(),
            kms_key.map(str::to_ascii_lowercase).as_deref(),
            "{sse:?}"
        );
    }
}

#[tokio::test]
async fn list_follows_continuation_tokens_across_pages() {
    let server = S3Server::start();
    let (direct, bucket) = store_and_bucket(&server, "pages").await;
    let mut expected = Vec::new();
    for i in (0..7).rev() {
        let key = format!("jobs/{i:02}.json");
        direct
            .put(&bucket, &key, vec![b'x'; i], "application/json")
            .await
            .unwrap();
        expected.push(key);
    }
    direct
        .put(&bucket, "other/a.json", vec![], "application/json")
        .await
        .unwrap();
    expected.sort();

    let proxy = Proxy::start(server.addr()).await;
    let store = store_with(&server, |s| s.endpoint = proxy.endpoint())
        .await
        .with_list_page_size(3);
    assert_eq!(store.list(&bucket, "jobs/").await.unwrap(), expected);
    let pages = proxy.request_text().matches("list-type=2").count();
    assert_eq!(pages, 3, "7 keys in pages of 3");

    let unpaged = S3Store::new(&server.settings()).await.unwrap();
    assert_eq!(unpaged.list(&bucket, "jobs/").await.unwrap(), expected);
}

/// Runs a store call under a bound of the operation timeout plus slack for the retries' backoff
/// and connection setup; a call that outlives it means the timeout settings are not applied.
async fn bounded<T>(
    operation_timeout_secs: u64,
    call: impl std::future::Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    let bound = Duration::from_secs(operation_timeout_secs + 10);
    tokio::time::timeout(bound, call)
        .await
        .unwrap_or_else(|_| panic!("the call did not return within {bound:?}"))
}

/// The value of an (already lower-cased) header in a recorded request.
fn header_value(request: &str, name: &str) -> Option<String> {
    request
        .lines()
        .take_while(|line| !line.is_empty())
        .find_map(|line| line.strip_prefix(&format!("{name}: ")).map(str::to_owned))
}

/// How many request bytes the proxy keeps (headers and small bodies; big bodies are cut off).
const RECORD_LIMIT: usize = 1 << 20;

/// A loopback TCP proxy to the server that counts the bytes coming back and records the requests.
struct Proxy {
    addr: SocketAddr,
    from_server: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<u8>>>,
    open: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let from_server = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let (counter, record, connections) = (from_server.clone(), requests.clone(), open.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let (counter, record, connections) =
                    (counter.clone(), record.clone(), connections.clone());
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let upstream = async {
                        let mut buf = vec![0u8; 64 << 10];
                        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                            {
                                let mut record = record.lock().unwrap();
                                let room = RECORD_LIMIT.saturating_sub(record.len());
                                record.extend_from_slice(&buf[..n.min(room)]);
                            }
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = server_write.shutdown().await;
                    };
                    let downstream = async {
                        let mut buf = vec![0u8; 64 << 10];
                        while let Ok(n @ 1..) = server_read.read(&mut buf).await {
                            counter.fetch_add(n as u64, Ordering::SeqCst);
                            if client_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    // Either side closing ends the connection (a client dropping a body must
                    // stop the flow from the server, as it would without the proxy).
                    tokio::select! {
                        _ = downstream => {}
                        _ = async { upstream.await; std::future::pending::<()>().await } => {}
                    }
                    connections.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            from_server,
            requests,
            open,
            accept,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn bytes_from_server(&self) -> u64 {
        self.from_server.load(Ordering::SeqCst)
    }

    fn request_text(&self) -> String {
        String::from_utf8_lossy(&self.requests.lock().unwrap()).into_owned()
    }

    fn reset(&self) {
        self.from_server.store(0, Ordering::SeqCst);
        self.requests.lock().unwrap().clear();
    }

    /// Waits (polling, bounded) until the connections through the proxy have closed, or at
    /// least stopped carrying data, so the counters no longer move.
    async fn wait_idle(&self) {
        let mut last = u64::MAX;
        for _ in 0..100 {
            let now = self.bytes_from_server();
            if self.open.load(Ordering::SeqCst) == 0 || now == last {
                return;
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
