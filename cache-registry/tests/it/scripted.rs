//! Error paths against the scripted fake server: token auth, renewals, retries, broken bodies.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use cache_core::{Backend, Blob, Descriptor, ErrorKind, IndexRef, digest};
use cache_registry::{Credentials, Options, Registry};
use futures_util::StreamExt;

use crate::fake::{Fake, Reply, Req};

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.buildkit.cacheconfig.v0","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;

fn options() -> Options {
    Options {
        credentials: Credentials::Anonymous,
        retry_base_delay: Duration::from_millis(10),
        timeout: Duration::from_secs(10),
        ..Options::new()
    }
}

fn open(fake: &Fake, repo: &str, options: Options) -> Registry {
    Registry::new(&format!("{}/{repo}:cache", fake.addr), options).expect("valid reference")
}

async fn read_all(blob: Blob) -> Result<Vec<u8>, std::io::Error> {
    let mut body = blob.body;
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

fn manifest_reply() -> Reply {
    Reply::status(200)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .header(
            "docker-content-digest",
            digest::sha256(MANIFEST.as_bytes()).to_string(),
        )
        .body(MANIFEST)
}

/// A token server: tokens are `tokN`, each remembered with the scopes it was asked for.
struct Tokens {
    issued: Mutex<HashMap<String, Vec<String>>>,
    revoked: Mutex<Vec<String>>,
    n: AtomicUsize,
    expires_in: u64,
}

impl Tokens {
    fn new(expires_in: u64) -> Tokens {
        Tokens {
            issued: Mutex::new(HashMap::new()),
            revoked: Mutex::new(Vec::new()),
            n: AtomicUsize::new(0),
            expires_in,
        }
    }

    fn issue(&self, req: &Req) -> Reply {
        let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("tok{n}");
        self.issued
            .lock()
            .expect("lock")
            .insert(token.clone(), req.query("scope"));
        Reply::status(200)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"token":"{token}","expires_in":{},"issued_at":"2026-01-01T00:00:00Z"}}"#,
                self.expires_in
            ))
    }

    /// The token of `req` if it is valid and grants every scope in `needed`.
    fn check(&self, req: &Req, needed: &[&str]) -> Option<String> {
        let token = req
            .header("authorization")?
            .strip_prefix("Bearer ")?
            .to_string();
        if self.revoked.lock().expect("lock").contains(&token) {
            return None;
        }
        let issued = self.issued.lock().expect("lock");
        let scopes = issued.get(&token)?;
        needed
            .iter()
            .all(|need| scopes.iter().any(|have| have == need))
            .then_some(token)
    }

    fn challenge(addr: &str, scope: &str) -> Reply {
        Reply::error(401, "UNAUTHORIZED", "authentication required").header(
            "www-authenticate",
            format!(r#"Bearer realm="http://{addr}/token",service="fake",scope="{scope}""#),
        )
    }
}

#[tokio::test]
async fn bearer_token_scopes_include_the_mount_source() {
    let blob = digest::sha256(b"layer");
    let fake = Fake::start(|addr| {
        let tokens = Tokens::new(300);
        move |req: &Req| match (req.method.as_str(), req.path()) {
            ("GET", "/token") => tokens.issue(req),
            ("GET", "/v2/") => Tokens::challenge(&addr, ""),
            ("POST", "/v2/app/blobs/uploads/") => {
                let scope = "repository:app:pull,push";
                match tokens.check(req, &[scope, "repository:src:pull"]) {
                    Some(_) => Reply::status(201),
                    None => Tokens::challenge(&addr, scope),
                }
            }
            ("HEAD", _) => match tokens.check(req, &["repository:app:pull"]) {
                Some(_) => Reply::status(404),
                None => Tokens::challenge(&addr, "repository:app:pull"),
            },
            _ => Reply::status(500),
        }
    })
    .await;
    let registry = open(&fake, "app", options());

    assert!(registry.mount_blob(&blob, "src").await.expect("mount"));
    assert_eq!(registry.stat_blob(&blob).await.expect("head"), None);

    let token_requests: Vec<Req> = fake
        .requests()
        .into_iter()
        .filter(|req| req.path() == "/token")
        .collect();
    assert_eq!(token_requests.len(), 2, "one token per scope set");
    let mut mount_scopes = token_requests[0].query("scope");
    mount_scopes.sort();
    assert_eq!(
        mount_scopes,
        ["repository:app:pull,push", "repository:src:pull"]
    );
    assert_eq!(token_requests[0].query("service"), ["fake"]);
    assert_eq!(token_requests[1].query("scope"), ["repository:app:pull"]);
    assert_eq!(registry.stats().blobs_mounted, 1);
    assert_eq!(registry.stats().tokens_fetched, 2);

    // The cached token serves the next request without a new token request.
    registry.stat_blob(&blob).await.expect("head again");
    assert_eq!(registry.stats().tokens_fetched, 2);
}

#[tokio::test]
async fn revoked_token_is_renewed_on_401() {
    let fake = Fake::start(|addr| {
        let tokens = Tokens::new(300);
        move |req: &Req| match (req.method.as_str(), req.path()) {
            ("GET", "/token") => tokens.issue(req),
            ("GET", "/v2/") => Tokens::challenge(&addr, ""),
            ("GET", "/v2/app/manifests/cache") => {
                match tokens.check(req, &["repository:app:pull"]) {
                    Some(token) => {
                        // Each token works once: the second request finds it expired.
                        tokens.revoked.lock().expect("lock").push(token);
                        manifest_reply()
                    }
                    None => Tokens::challenge(&addr, "repository:app:pull")
                        .header("x-note", "invalid_token"),
                }
            }
            _ => Reply::status(500),
        }
    })
    .await;
    let registry = open(&fake, "app", options());
    let tag = IndexRef::Tag("cache".into());
    for _ in 0..2 {
        let raw = registry
            .get_manifest(&tag)
            .await
            .expect("manifest")
            .expect("present");
        assert_eq!(&raw.bytes[..], MANIFEST.as_bytes());
    }
    assert_eq!(registry.stats().tokens_fetched, 2);
    assert_eq!(
        fake.count("GET", "/v2/app/manifests/cache"),
        4,
        "401 (the challenge, learnt without a ping), ok, 401, ok"
    );
    assert_eq!(fake.count("GET", "/v2/"), 0, "no ping");
}

#[tokio::test]
async fn token_is_renewed_before_it_expires() {
    let fake = Fake::start(|addr| {
        let tokens = Tokens::new(2);
        move |req: &Req| match (req.method.as_str(), req.path()) {
            ("GET", "/token") => tokens.issue(req),
            ("GET", "/v2/") => Tokens::challenge(&addr, ""),
            ("GET", "/v2/app/manifests/cache") => {
                match tokens.check(req, &["repository:app:pull"]) {
                    Some(_) => manifest_reply(),
                    None => Tokens::challenge(&addr, "repository:app:pull"),
                }
            }
            _ => Reply::status(500),
        }
    })
    .await;
    let registry = open(&fake, "app", options());
    let tag = IndexRef::Tag("cache".into());
    registry.get_manifest(&tag).await.expect("first");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    registry.get_manifest(&tag).await.expect("second");
    let auths: Vec<String> = fake
        .requests()
        .iter()
        .filter(|req| req.path() == "/v2/app/manifests/cache")
        .map(|req| req.header("authorization").unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        auths,
        ["", "Bearer tok1", "Bearer tok2"],
        "the challenge comes from the first request; renewed without a 401"
    );
}

#[tokio::test]
async fn rate_limit_honours_retry_after() {
    let blob = digest::sha256(b"x");
    let fake = Fake::start(|_| {
        let n = AtomicUsize::new(0);
        move |req: &Req| match req.path() {
            "/v2/" => Reply::status(200),
            _ if n.fetch_add(1, Ordering::SeqCst) == 0 => {
                Reply::error(429, "TOOMANYREQUESTS", "slow down").header("retry-after", "1")
            }
            _ => Reply::status(200).header("content-length", "1"),
        }
    })
    .await;
    let registry = open(&fake, "app", options());
    let start = Instant::now();
    let desc = registry
        .stat_blob(&blob)
        .await
        .expect("retried")
        .expect("present");
    assert_eq!(desc.size, 1);
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(registry.stats().retries, 1);
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let fake = Fake::start(|_| {
        let n = AtomicUsize::new(0);
        move |req: &Req| match req.path() {
            "/v2/" => Reply::status(200),
            "/v2/app/manifests/cache" if n.fetch_add(1, Ordering::SeqCst) < 2 => {
                Reply::status(503).body("busy")
            }
            "/v2/app/manifests/cache" => manifest_reply(),
            _ => Reply::error(503, "UNAVAILABLE", "down for maintenance"),
        }
    })
    .await;
    let registry = open(&fake, "app", options());
    let raw = registry
        .get_manifest(&IndexRef::Tag("cache".into()))
        .await
        .expect("third attempt")
        .expect("present");
    assert_eq!(
        raw.media_type.as_deref(),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    assert_eq!(registry.stats().retries, 2);

    let failing = Registry::new(
        &format!("{}/app:cache", fake.addr),
        Options {
            max_retries: 2,
            ..options()
        },
    )
    .expect("valid");
    let err = failing
        .read_blob(&digest::sha256(b"y"))
        .await
        .expect_err("always 503");
    assert!(err.is_temporary());
    assert!(
        err.to_string()
            .contains("503 UNAVAILABLE down for maintenance"),
        "{err}"
    );
    assert_eq!(failing.stats().retries, 2, "two retries, then the error");
}

#[tokio::test]
async fn connection_reset_is_retried() {
    let data = b"blob body".to_vec();
    let blob = digest::sha256(&data);
    let fake = Fake::start(|_| {
        let n = AtomicUsize::new(0);
        let data = data.clone();
        move |req: &Req| match req.path() {
            "/v2/" => Reply::status(200),
            _ if n.fetch_add(1, Ordering::SeqCst) == 0 => Reply::Reset,
            _ => Reply::status(200).body(data.clone()),
        }
    })
    .await;
    let registry = open(&fake, "app", options());
    let got = read_all(
        registry
            .read_blob(&blob)
            .await
            .expect("get")
            .expect("present"),
    )
    .await
    .expect("body");
    assert_eq!(got, data);
    assert_eq!(registry.stats().retries, 1);
    assert_eq!(registry.stats().bytes_downloaded, data.len() as u64);
}

#[tokio::test]
async fn wrong_docker_content_digest_is_refused() {
    let fake = Fake::start(|_| {
        |req: &Req| match req.path() {
            "/v2/" => Reply::status(200),
            _ => Reply::status(200)
                .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                .header(
                    "docker-content-digest",
                    digest::sha256(b"other").to_string(),
                )
                .body(MANIFEST),
        }
    })
    .await;
    let registry = open(&fake, "app", options());
    let err = registry
        .get_manifest(&IndexRef::Tag("cache".into()))
        .await
        .expect_err("digest mismatch");
    assert_eq!(err.kind(), ErrorKind::DigestMismatch, "{err}");
    assert!(err.to_string().contains("Docker-Content-Digest"), "{err}");

    // A manifest asked for by digest must hash to it.
    let wanted = digest::sha256(b"wanted");
    let err = registry
        .get_manifest(&IndexRef::Digest(wanted))
        .await
        .expect_err("digest mismatch");
    assert_eq!(err.kind(), ErrorKind::DigestMismatch, "{err}");
}

#[tokio::test]
async fn truncated_or_wrong_blob_bodies_fail_the_stream() {
    let data = vec![7u8; 100_000];
    let blob = digest::sha256(&data);
    let fake = Fake::start(|_| {
        let data = data.clone();
        move |req: &Req| match req.path() {
            "/v2/" => Reply::status(200),
            path if path.ends_with("truncated") || path.contains("/t/") => Reply::Truncated {
                status: 200,
                headers: Vec::new(),
                declared: data.len(),
                body: data[..40_000].to_vec(),
            },
            _ => Reply::status(200).body(vec![8u8; data.len()]),
        }
    })
    .await;
    let truncated = open(&fake, "t", options());
    let res = read_all(
        truncated
            .read_blob(&blob)
            .await
            .expect("get")
            .expect("present"),
    )
    .await;
    assert!(res.is_err(), "a truncated body must not read as success");

    let wrong = open(&fake, "w", options());
    let err = read_all(wrong.read_blob(&blob).await.expect("get").expect("present"))
        .await
        .expect_err("wrong bytes");
    let err = cache_core::Error::from_io("reading", err);
    assert_eq!(err.kind(), ErrorKind::DigestMismatch, "{err}");
}

#[tokio::test]
async fn mount_answered_202_falls_back_to_upload_in_that_session() {
    let data = b"layer bytes for the fallback upload".to_vec();
    let blob = digest::sha256(&data);
    let fake = Fake::start(|_| {
        let blob = blob.clone();
        move |req: &Req| match (req.method.as_str(), req.path()) {
            ("GET", "/v2/") => Reply::status(200),
            ("HEAD", _) => Reply::status(404),
            ("POST", "/v2/app/blobs/uploads/") => {
                let session = if req.query("mount").is_empty() {
                    "plain"
                } else {
                    "s1"
                };
                Reply::status(202).header(
                    "location",
                    format!("/v2/app/blobs/uploads/{session}?_state=abc"),
                )
            }
            ("PUT", "/v2/app/blobs/uploads/s1") => Reply::status(201)
                .header("location", format!("/v2/app/blobs/{blob}"))
                .header("docker-content-digest", blob.to_string()),
            ("DELETE", _) => Reply::status(204),
            _ => Reply::status(500),
        }
    })
    .await;
    let registry = open(&fake, "app", options());
    let mut desc = Descriptor::new(
        "application/vnd.oci.image.layer.v1.tar",
        blob.clone(),
        data.len() as u64,
    );
    desc.annotations.insert(
        format!("containerd.io/distribution.source.{}", fake.addr),
        "src,other".into(),
    );
    registry
        .write_blob(&desc, Blob::from_bytes(data.clone()))
        .await
        .expect("upload after 202");

    let requests = fake.requests();
    let put = requests
        .iter()
        .find(|req| req.method == "PUT")
        .expect("a PUT");
    assert_eq!(put.body, data);
    assert_eq!(put.query("digest"), [blob.to_string()]);
    assert_eq!(put.query("_state"), ["abc"], "session query kept");
    assert_eq!(
        put.header("content-length"),
        Some(data.len().to_string().as_str())
    );
    assert_eq!(put.header("transfer-encoding"), None);
    let mounts: Vec<Vec<String>> = requests
        .iter()
        .filter(|req| req.method == "POST")
        .map(|req| req.query("from"))
        .collect();
    assert_eq!(mounts, [vec!["src".to_string()], vec!["other".to_string()]]);
    assert_eq!(
        fake.count("DELETE", "/v2/app/blobs/uploads/s1"),
        1,
        "second session cancelled"
    );
    let stats = registry.stats();
    assert_eq!(
        (
            stats.blobs_uploaded,
            stats.bytes_uploaded,
            stats.blobs_mounted
        ),
        (1, data.len() as u64, 0)
    );

    // The public mount call reports false and cancels the session.
    assert!(!registry.mount_blob(&blob, "src").await.expect("mount"));
    assert_eq!(fake.count("DELETE", "/v2/app/blobs/uploads/s1"), 2);
}

/// Environment variable that makes [`docker_config_child`] run; set only by
/// [`docker_config_auths_are_used_for_basic_auth`].
const CHILD_ENV: &str = "CACHE_REGISTRY_TEST_CHILD_ADDR";

#[tokio::test]
async fn docker_config_auths_are_used_for_basic_auth() {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("bob:pa:ss")
    );
    let fake = Fake::start(|_| {
        let expected = expected.clone();
        move |req: &Req| {
            if req.header("authorization") == Some(expected.as_str()) {
                return Reply::status(200).header("content-length", "5");
            }
            Reply::error(401, "UNAUTHORIZED", "authentication required")
                .header("www-authenticate", r#"Basic realm="fake""#)
        }
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
        fake.addr,
        base64::engine::general_purpose::STANDARD.encode("bob:pa:ss")
    );
    std::fs::write(dir.path().join("config.json"), config).expect("write config");

    // Environment variables are process-wide: the lookup runs in a child process of this test
    // binary, so no other test sees DOCKER_CONFIG.
    let exe = std::env::current_exe().expect("test binary path");
    let out = tokio::process::Command::new(exe)
        .args(["scripted::docker_config_child", "--exact", "--nocapture"])
        .env("DOCKER_CONFIG", dir.path())
        .env(CHILD_ENV, &fake.addr)
        .output()
        .await
        .expect("run child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let authorized = fake
        .requests()
        .iter()
        .filter(|req| req.header("authorization") == Some(expected.as_str()))
        .count();
    assert_eq!(
        authorized, 1,
        "the HEAD carried the credentials from config.json"
    );
}

/// The child half of [`docker_config_auths_are_used_for_basic_auth`]; does nothing unless that
/// test started it.
#[tokio::test]
async fn docker_config_child() {
    let Ok(addr) = std::env::var(CHILD_ENV) else {
        return;
    };
    let registry = Registry::new(&format!("{addr}/app:cache"), Options::new()).expect("valid");
    let desc = registry
        .stat_blob(&digest::sha256(b"hello"))
        .await
        .expect("authorized HEAD")
        .expect("present");
    assert_eq!(desc.size, 5);
    let shown = format!("{:?} {:?}", Options::new(), registry);
    assert!(!shown.contains("pa:ss"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn parallel_uploads_are_limited() {
    let in_flight = std::sync::Arc::new(AtomicUsize::new(0));
    let max_seen = std::sync::Arc::new(AtomicUsize::new(0));
    let fake = Fake::start(|_| {
        let in_flight = std::sync::Arc::clone(&in_flight);
        let max_seen = std::sync::Arc::clone(&max_seen);
        let n = AtomicUsize::new(0);
        move |req: &Req| match (req.method.as_str(), req.path()) {
            ("GET", "/v2/") => Reply::status(200),
            ("HEAD", _) => Reply::status(404),
            ("POST", _) => {
                let id = n.fetch_add(1, Ordering::SeqCst);
                Reply::status(202).header("location", format!("/v2/app/blobs/uploads/u{id}"))
            }
            ("PUT", _) => {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                max_seen.fetch_max(now, Ordering::SeqCst);
                // Blocks this connection's worker thread: the upload stays "in flight".
                std::thread::sleep(Duration::from_millis(150));
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Reply::status(201)
            }
            _ => Reply::status(500),
        }
    })
    .await;
    let registry = open(
        &fake,
        "app",
        Options {
            max_parallel_uploads: 2,
            ..options()
        },
    );
    let uploads = (0..6).map(|i| {
        let registry = registry.clone();
        async move {
            let data = format!("blob {i}").into_bytes();
            let desc = Descriptor::new("", digest::sha256(&data), data.len() as u64);
            registry.write_blob(&desc, Blob::from_bytes(data)).await
        }
    });
    for res in futures_util::future::join_all(uploads).await {
        res.expect("upload");
    }
    assert_eq!(fake.count("PUT", "/v2/app/blobs/uploads/u0"), 1);
    assert_eq!(
        max_seen.load(Ordering::SeqCst),
        2,
        "at most 2 uploads at once"
    );
    assert_eq!(registry.stats().blobs_uploaded, 6);
}

/// An upload server whose PUT answers after `delay` (blocking its worker thread).
async fn slow_upload_server(delay: Duration) -> Fake {
    Fake::start(move |_| {
        move |req: &Req| match (req.method.as_str(), req.path()) {
            ("GET", "/v2/") => Reply::status(200),
            ("HEAD", _) => Reply::status(404),
            ("POST", _) => Reply::status(202).header("location", "/v2/app/blobs/uploads/u"),
            ("PUT", _) => {
                std::thread::sleep(delay);
                Reply::status(201)
            }
            _ => Reply::status(500),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_but_progressing_upload_outlives_the_timeout() {
    let fake = slow_upload_server(Duration::ZERO).await;
    let registry = open(
        &fake,
        "app",
        Options {
            timeout: Duration::from_millis(400),
            ..options()
        },
    );
    // 10 chunks, one every 100 ms: a second in all, never idle for 400 ms.
    let chunks: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 1000]).collect();
    let mut hasher = digest::Hasher::new();
    chunks.iter().for_each(|chunk| hasher.update(chunk));
    let desc = Descriptor::new("", hasher.finish(), 10_000);
    let body = futures_util::stream::iter(chunks).then(|chunk| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(bytes::Bytes::from(chunk))
    });
    let start = Instant::now();
    registry
        .write_blob(
            &desc,
            Blob {
                size: 10_000,
                body: Box::pin(body),
            },
        )
        .await
        .expect("slow upload");
    assert!(start.elapsed() >= Duration::from_millis(900));
    let put = fake
        .requests()
        .into_iter()
        .find(|req| req.method == "PUT")
        .expect("PUT");
    assert_eq!(put.body.len(), 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_upload_fails_as_temporary() {
    let fake = slow_upload_server(Duration::from_millis(1500)).await;
    let registry = open(
        &fake,
        "app",
        Options {
            timeout: Duration::from_millis(300),
            ..options()
        },
    );
    let data = vec![1u8; 2 << 20];
    let desc = Descriptor::new("", digest::sha256(&data), data.len() as u64);
    // The server would answer after 1.5 s: an error saying "stalled" proves the client gave up
    // first (no wall-clock bound, which a loaded machine could break).
    let err = registry
        .write_blob(&desc, Blob::from_bytes(data))
        .await
        .expect_err("no answer within the timeout");
    assert!(err.is_temporary(), "{err}");
    assert!(err.to_string().contains("stalled"), "{err}");
    assert_eq!(
        fake.count("PUT", "/v2/app/blobs/uploads/u"),
        1,
        "a consumed body is not resent"
    );
}

#[tokio::test]
async fn issue_14_a_registry_that_accepts_everything_is_not_believed() {
    // Answers 200 to every read (empty body) and 201 to every write.
    let fake = Fake::start(|_| {
        |req: &Req| match req.method.as_str() {
            "GET" | "HEAD" => Reply::status(200),
            "POST" => Reply::status(202).header("location", "/v2/app/blobs/uploads/1"),
            _ => Reply::status(201),
        }
    })
    .await;
    let registry = open(&fake, "app", options());
    let bytes = b"layer bytes".to_vec();
    let desc = Descriptor::new(
        "application/vnd.oci.image.layer.v1.tar",
        digest::sha256(&bytes),
        bytes.len() as u64,
    );
    registry
        .write_blob(&desc, Blob::from_bytes(bytes))
        .await
        .expect("the upload is accepted");
    assert_eq!(
        fake.count("PUT", "/v2/app/blobs/uploads/1"),
        1,
        "a HEAD with the wrong size is not presence: the blob is uploaded"
    );
    let raw = cache_core::RawIndex::new(
        Some("application/vnd.oci.image.manifest.v1+json".into()),
        MANIFEST.as_bytes().to_vec(),
    );
    let err = registry
        .write_index("cache", &raw)
        .await
        .expect_err("a manifest the registry does not serve back is not stored");
    assert_eq!(err.kind(), ErrorKind::DigestMismatch, "{err}");
    assert!(
        err.to_string().contains("the cache was not stored"),
        "{err}"
    );
}

#[tokio::test]
async fn copy_blob_mounts_only_from_another_repository_of_the_same_registry() {
    use cache_core::MountSource;
    use cache_core::transfer::{self, BlobCopy, InMemory, Moved};
    let bytes = b"layer".to_vec();
    let desc = Descriptor::new(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        digest::sha256(&bytes),
        bytes.len() as u64,
    );
    let fake = Fake::start(|_addr| {
        move |req: &Req| match (req.method.as_str(), req.path()) {
            ("HEAD", _) => Reply::status(404),
            ("POST", "/v2/app/blobs/uploads/") if req.target.contains("from=src") => {
                Reply::status(201)
            }
            _ => Reply::status(500),
        }
    })
    .await;
    let registry = open(&fake, "app", options());
    let host = registry.reference().registry().to_owned();
    let hints = [
        // Not this registry, then this very repository: neither is asked.
        MountSource {
            registry: "elsewhere.example".to_owned(),
            repository: "src".to_owned(),
        },
        MountSource {
            registry: host.clone(),
            repository: "app".to_owned(),
        },
        MountSource {
            registry: host,
            repository: "src".to_owned(),
        },
    ];
    let how = BlobCopy {
        mount_from: &hints,
        ..BlobCopy::default()
    };
    let moved = transfer::copy_blob(&registry, &InMemory(bytes.into()), &desc, &how)
        .await
        .expect("copy");
    assert_eq!(moved, Moved::Mounted(hints[2].clone()));
    let methods: Vec<String> = fake
        .requests()
        .into_iter()
        .map(|req| req.method.clone())
        .collect();
    assert_eq!(methods, ["HEAD", "POST"], "one check, one mount, no upload");
}
