//! Behaviour against a real distribution registry on loopback (`CACHE_TEST_REGISTRY`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_core::descriptor::media_type;
use cache_core::digest::{self, Digest, Hasher};
use cache_core::{Backend, Blob, Descriptor, ErrorKind, IndexRef, RawIndex};
use cache_registry::{Credentials, Options, Registry};
use futures_util::StreamExt;

/// The registry under test, or `None` (skip) when `CACHE_TEST_REGISTRY` is unset outside CI.
pub fn registry_under_test() -> Option<String> {
    match std::env::var("CACHE_TEST_REGISTRY") {
        Ok(addr) => Some(addr),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("CACHE_TEST_REGISTRY must be set on CI")
        }
        Err(_) => {
            eprintln!("skipping: CACHE_TEST_REGISTRY is not set");
            None
        }
    }
}

/// The Basic-auth registry under test and its user and password, like [`registry_under_test`].
fn auth_registry_under_test() -> Option<(String, String, String)> {
    let vars = (
        std::env::var("CACHE_TEST_REGISTRY_AUTH"),
        std::env::var("CACHE_TEST_REGISTRY_USER"),
        std::env::var("CACHE_TEST_REGISTRY_PASSWORD"),
    );
    match vars {
        (Ok(addr), Ok(user), Ok(password)) => Some((addr, user, password)),
        _ if std::env::var_os("CI").is_some() => panic!(
            "CACHE_TEST_REGISTRY_AUTH, CACHE_TEST_REGISTRY_USER and CACHE_TEST_REGISTRY_PASSWORD \
             must be set on CI"
        ),
        _ => {
            eprintln!("skipping: CACHE_TEST_REGISTRY_AUTH is not set");
            None
        }
    }
}

/// Unique per run, so runs against a persistent registry do not see each other's objects.
fn nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{nanos:x}-{}", std::process::id())
}

fn options() -> Options {
    Options {
        credentials: Credentials::Anonymous,
        ..Options::new()
    }
}

/// `size` deterministic pseudo-random bytes from `seed`, streamed in `chunk`-byte pieces, and
/// their digest.
fn generated(seed: &str, size: usize, chunk: usize) -> (Digest, Blob) {
    let make = move || {
        let mut state = seed.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |acc, b| {
            acc.rotate_left(5) ^ u64::from(b)
        }) | 1;
        let mut produced = 0usize;
        std::iter::from_fn(move || {
            if produced >= size {
                return None;
            }
            let n = chunk.min(size - produced);
            let mut buf = Vec::with_capacity(n + 8);
            while buf.len() < n {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                buf.extend_from_slice(&state.to_le_bytes());
            }
            buf.truncate(n);
            produced += n;
            Some(Bytes::from(buf))
        })
    };
    let mut hasher = Hasher::new();
    for piece in make() {
        hasher.update(&piece);
    }
    let body = futures_util::stream::iter(make().map(Ok));
    (
        hasher.finish(),
        Blob {
            size: size as u64,
            body: Box::pin(body),
        },
    )
}

async fn digest_of(blob: Blob) -> (Digest, u64) {
    let mut hasher = Hasher::new();
    let mut body = blob.body;
    while let Some(chunk) = body.next().await {
        hasher.update(&chunk.expect("blob chunk"));
    }
    let n = hasher.len();
    (hasher.finish(), n)
}

async fn put_bytes(registry: &Registry, media: &str, bytes: &[u8]) -> Descriptor {
    let desc = Descriptor::new(media, digest::sha256(bytes), bytes.len() as u64);
    registry
        .write_blob(&desc, Blob::from_bytes(bytes.to_vec()))
        .await
        .expect("write blob");
    desc
}

#[tokio::test]
async fn conformance() {
    let Some(addr) = registry_under_test() else {
        return;
    };
    let registry = Registry::new(&format!("{addr}/conformance:cache"), options()).expect("valid");
    cache_core::testkit::conformance(&registry, &nonce()).await;
}

#[tokio::test]
async fn big_blob_round_trip_streamed_and_chunked() {
    let Some(addr) = registry_under_test() else {
        return;
    };
    let nonce = nonce();
    let size = 20 << 20;
    for (name, chunk_size) in [("monolithic", None), ("chunked", Some(7 << 20))] {
        let registry = Registry::new(
            &format!("{addr}/big-{name}:cache"),
            Options {
                chunk_size,
                ..options()
            },
        )
        .expect("valid");
        let (digest, body) = generated(&format!("{nonce}-{name}"), size, 100_000);
        let desc = Descriptor::new(media_type::OCI_LAYER_GZIP, digest.clone(), size as u64);
        registry.write_blob(&desc, body).await.expect("upload");
        let stat = registry
            .stat_blob(&digest)
            .await
            .expect("head")
            .expect("present");
        assert_eq!(stat.size, size as u64, "{name}");
        let blob = registry
            .read_blob(&digest)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(blob.size, size as u64);
        assert_eq!(
            digest_of(blob).await,
            (digest.clone(), size as u64),
            "{name}"
        );
        let stats = registry.stats();
        assert_eq!(
            (stats.blobs_uploaded, stats.bytes_uploaded),
            (1, size as u64),
            "{name}"
        );
        assert_eq!(stats.bytes_downloaded, size as u64, "{name}");

        // Present now: a second write is a HEAD and nothing else.
        let (_, again) = generated(&format!("{nonce}-{name}"), size, 100_000);
        registry.write_blob(&desc, again).await.expect("idempotent");
        assert_eq!(registry.stats().blobs_uploaded, 1, "{name}");
    }
}

#[tokio::test]
async fn cross_repository_mount() {
    let Some(addr) = registry_under_test() else {
        return;
    };
    let nonce = nonce();
    let source = Registry::new(&format!("{addr}/mount-src:cache"), options()).expect("valid");
    let target = source.with_repository("mount-dst");
    let desc = put_bytes(
        &source,
        media_type::OCI_LAYER_TAR,
        format!("mounted {nonce}").as_bytes(),
    )
    .await;
    assert_eq!(target.stat_blob(&desc.digest).await.expect("head"), None);
    assert!(
        target
            .mount_blob(&desc.digest, "mount-src")
            .await
            .expect("mount")
    );
    let stat = target
        .stat_blob(&desc.digest)
        .await
        .expect("head")
        .expect("mounted");
    assert_eq!(stat.size, desc.size);

    // write_blob mounts when the descriptor names a source on this registry.
    let other = put_bytes(
        &source,
        media_type::OCI_LAYER_TAR,
        format!("annotated {nonce}").as_bytes(),
    )
    .await;
    let mut annotated = other.clone();
    annotated.annotations.insert(
        format!("containerd.io/distribution.source.{addr}"),
        "mount-src".into(),
    );
    let uploads_before = target.stats().blobs_uploaded;
    target
        .write_blob(&annotated, Blob::from_bytes(Bytes::new()))
        .await
        .expect_err("body size differs from the descriptor");
    let (_, body) = (
        0,
        Blob::from_bytes(format!("annotated {nonce}").into_bytes()),
    );
    target
        .write_blob(&annotated, body)
        .await
        .expect("mount via write_blob");
    assert_eq!(
        target.stats().blobs_uploaded,
        uploads_before,
        "mounted, not uploaded"
    );
    assert_eq!(target.stats().blobs_mounted, 2);
    assert!(
        target
            .stat_blob(&other.digest)
            .await
            .expect("head")
            .is_some()
    );

    // A source that lacks the blob: the registry opens a session (202); we cancel it.
    let missing = digest::sha256(format!("missing {nonce}").as_bytes());
    assert!(
        !target
            .mount_blob(&missing, "mount-src")
            .await
            .expect("mount attempt")
    );
}

#[tokio::test]
async fn both_cache_manifest_forms_round_trip() {
    let Some(addr) = registry_under_test() else {
        return;
    };
    let nonce = nonce();
    let registry = Registry::new(&format!("{addr}/forms:cache"), options()).expect("valid");
    let layer = put_bytes(
        &registry,
        media_type::OCI_LAYER_GZIP,
        format!("layer {nonce}").as_bytes(),
    )
    .await;
    let config = put_bytes(
        &registry,
        media_type::CACHE_CONFIG,
        format!(
            r#"{{"layers":[{{"blob":"{}","parent":-1}}],"records":[],"n":"{nonce}"}}"#,
            layer.digest
        )
        .as_bytes(),
    )
    .await;
    let layer_json = serde_json::to_string(&layer).expect("json");
    let config_json = serde_json::to_string(&config).expect("json");
    let image = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{config_json},"layers":[{layer_json}]}}"#,
        media_type::OCI_MANIFEST
    );
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{layer_json},{config_json}]}}"#,
        media_type::OCI_INDEX
    );
    for (tag, json, media) in [
        ("image-form", image, media_type::OCI_MANIFEST),
        ("index-form", index, media_type::OCI_INDEX),
    ] {
        let raw = RawIndex::new(Some(media.to_string()), json.into_bytes());
        registry
            .put_manifest(tag, &raw)
            .await
            .expect("put manifest");
        let got = registry
            .get_manifest(&IndexRef::Tag(tag.into()))
            .await
            .expect("get")
            .expect("present");
        assert_eq!(got, raw, "{tag}");
        let by_digest = registry
            .read_index(&IndexRef::Digest(raw.digest.clone()))
            .await
            .expect("get by digest")
            .expect("present");
        assert_eq!(by_digest.bytes, raw.bytes);
        let head = registry
            .head_manifest(&IndexRef::Tag(tag.into()))
            .await
            .expect("head")
            .expect("present");
        assert_eq!(head, raw.descriptor(), "{tag}");
    }
    // write_index without a media type takes it from the JSON.
    let untyped = RawIndex::new(
        None,
        registry
            .get_manifest(&IndexRef::Tag("index-form".into()))
            .await
            .expect("get")
            .expect("present")
            .bytes,
    );
    registry
        .write_index("untyped", &untyped)
        .await
        .expect("write index");
    let got = registry
        .read_index(&IndexRef::Tag("untyped".into()))
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.media_type.as_deref(), Some(media_type::OCI_INDEX));
    assert_eq!(
        registry
            .read_index(&IndexRef::Tag(format!("none-{nonce}")))
            .await
            .expect("get"),
        None
    );
}

#[tokio::test]
async fn manifest_naming_missing_blobs_shows_the_registry_code() {
    let Some(addr) = registry_under_test() else {
        return;
    };
    let registry = Registry::new(&format!("{addr}/missing-blobs:cache"), options()).expect("valid");
    let missing = Descriptor::new(
        media_type::CACHE_CONFIG,
        digest::sha256(nonce().as_bytes()),
        10,
    );
    let json = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{},"layers":[]}}"#,
        media_type::OCI_MANIFEST,
        serde_json::to_string(&missing).expect("json")
    );
    let raw = RawIndex::new(Some(media_type::OCI_MANIFEST.into()), json.into_bytes());
    let err = registry
        .put_manifest("cache", &raw)
        .await
        .expect_err("blob unknown");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "registry {addr} refused PUT manifest missing-blobs:cache: 400 MANIFEST_BLOB_UNKNOWN"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn basic_auth_registry() {
    let Some((addr, user, password)) = auth_registry_under_test() else {
        return;
    };
    let with = |password: &str| {
        Registry::new(
            &format!("{addr}/auth:cache"),
            Options {
                credentials: Credentials::Basic {
                    username: user.clone(),
                    password: password.to_string(),
                },
                ..Options::new()
            },
        )
        .expect("valid")
    };
    let good = with(&password);
    let desc = put_bytes(
        &good,
        media_type::OCI_LAYER_TAR,
        format!("auth {}", nonce()).as_bytes(),
    )
    .await;
    assert!(good.stat_blob(&desc.digest).await.expect("head").is_some());

    let bad = with("wrong-password");
    let err = bad
        .stat_blob(&desc.digest)
        .await
        .expect_err("wrong password");
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
    let raw = RawIndex::new(
        Some(media_type::OCI_INDEX.into()),
        br#"{"schemaVersion":2,"manifests":[]}"#.to_vec(),
    );
    let err = bad
        .put_manifest("cache", &raw)
        .await
        .expect_err("wrong password");
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
    assert!(
        err.to_string().contains(&format!("registry {addr} refused PUT manifest auth:cache: 401 UNAUTHORIZED authentication required")),
        "{err}"
    );
    assert!(!format!("{err} {bad:?}").contains("wrong-password"));

    let anonymous = Registry::new(&format!("{addr}/auth:cache"), options()).expect("valid");
    let err = anonymous
        .stat_blob(&desc.digest)
        .await
        .expect_err("no credentials");
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
}

/// Push and pull throughput of one 100 MB blob, printed (run with `--nocapture`); asserts only
/// that the round trip is correct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_100mb() {
    let Some(addr) = registry_under_test() else {
        return;
    };
    let size = 100 << 20;
    let registry = Registry::new(&format!("{addr}/throughput:cache"), options()).expect("valid");
    let (digest, body) = generated(&nonce(), size, 1 << 20);
    let desc = Descriptor::new(media_type::OCI_LAYER_GZIP, digest.clone(), size as u64);
    let start = Instant::now();
    registry.write_blob(&desc, body).await.expect("push");
    let push = start.elapsed();
    let start = Instant::now();
    let blob = registry
        .read_blob(&digest)
        .await
        .expect("pull")
        .expect("present");
    assert_eq!(digest_of(blob).await, (digest, size as u64));
    let pull = start.elapsed();
    let rate = |d: Duration| size as f64 / (1 << 20) as f64 / d.as_secs_f64();
    eprintln!(
        "100 MiB blob: push {push:?} ({:.0} MiB/s), pull {pull:?} ({:.0} MiB/s)",
        rate(push),
        rate(pull)
    );
}
