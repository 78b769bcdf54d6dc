//! Registry caches through a faulty network (issue 14): the fault proxy in front of the real
//! test registry, exports that must land and verify, imports that must stay fully cached, and
//! the requests a warm registry build makes (issue 11).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::faultproxy::{Fault, FaultProxy, Faults};
use crate::support;

/// Two COPY steps: a small file and a bigger one whose download a reset can cut part-way.
const DOCKERFILE: &str = "FROM scratch\nCOPY a.txt /a.txt\nCOPY b.bin /b.bin\n";

/// Env for fast failures: short stall and connect limits, short budgets stay default.
const FAST: &[(&str, &str)] = &[
    ("BUILDCACHE_REGISTRY_STALL_TIMEOUT", "2"),
    ("BUILDCACHE_REGISTRY_CONNECT_TIMEOUT", "2"),
];

/// A build context for variant `n`: `a.txt` names it, `b.bin` is 256 KiB seeded by it.
fn context(scratch: &Path, n: usize, salt: &str) -> PathBuf {
    let dir = scratch.join(format!("ctx-{n}"));
    std::fs::create_dir_all(&dir).expect("create the context");
    std::fs::write(dir.join("Dockerfile"), DOCKERFILE).expect("write the Dockerfile");
    std::fs::write(dir.join("a.txt"), format!("{salt} variant {n}\n")).expect("write a.txt");
    let mut state = (n as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
    let bytes: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(dir.join("b.bin"), bytes).expect("write b.bin");
    dir
}

/// Runs `buildcache build` on `ctx` with a fresh root and the extra `env`.
fn build(scratch: &Path, ctx: &Path, args: &[&str], env: &[(&str, &str)]) -> (Output, Value) {
    let run = TempDir::new_in(scratch).expect("a directory for the run");
    let meta = run.path().join("metadata.json");
    let docker_config = run.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).expect("create docker-config");
    let mut cmd = support::buildcache();
    cmd.arg("build")
        .arg("--progress=plain")
        .arg("--root")
        .arg(run.path().join("root"))
        .arg("--metadata-file")
        .arg(&meta)
        .args(args)
        .arg(ctx)
        .env("DOCKER_CONFIG", &docker_config);
    for (name, value) in env {
        cmd.env(name, value);
    }
    let output = cmd.output().expect("running buildcache");
    let metadata = if meta.exists() {
        support::read_metadata(&meta)
    } else {
        Value::Null
    };
    (output, metadata)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `METHOD http://ADDR/PATH` straight to the registry: status, headers (lowercased), body.
fn http(addr: &str, method: &str, path: &str) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set a read timeout");
    let accept =
        "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read the answer");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, head, response[split + 4..].to_vec())
}

/// Checks in the registry itself that `repo:tag` names a manifest whose config and layers are
/// all there with their sizes; returns the manifest.
fn assert_cache_landed(addr: &str, repo: &str, tag: &str) -> Value {
    let (status, _, body) = http(addr, "GET", &format!("/v2/{repo}/manifests/{tag}"));
    assert_eq!(status, 200, "manifest {repo}:{tag} is missing");
    let manifest: Value = serde_json::from_slice(&body).expect("manifest JSON");
    let mut blobs = vec![manifest["config"].clone()];
    blobs.extend(
        manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .cloned(),
    );
    for blob in blobs {
        let digest = blob["digest"].as_str().expect("a digest");
        let size = blob["size"].as_u64().expect("a size");
        let (status, head, _) = http(addr, "HEAD", &format!("/v2/{repo}/blobs/{digest}"));
        assert_eq!(status, 200, "blob {digest} of {repo}:{tag} is missing");
        assert!(
            head.contains(&format!("content-length: {size}\r")),
            "blob {digest} of {repo}:{tag} has the wrong size: {head}"
        );
    }
    manifest
}

/// Asserts that every step of a build came from a cache.
fn assert_fully_cached(output: &Output, metadata: &Value, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed:\n{}",
        stderr(output)
    );
    let steps = support::steps(metadata);
    assert!(!steps.is_empty(), "{what}: no steps in the metadata");
    let ran = support::uncached_steps(metadata);
    assert!(
        ran.is_empty(),
        "{what}: steps ran instead of coming from the cache: {ran:?}\n{}",
        stderr(output)
    );
}

/// Runs `job(i)` for `0..n` on `threads` threads.
fn in_parallel(n: usize, threads: usize, job: impl Fn(usize) + Sync) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= n {
                        break;
                    }
                    job(i);
                }
            });
        }
    });
}

#[test]
fn issue_14_exports_and_imports_survive_a_registry_failing_a_fifth_of_requests() {
    let Some(upstream) = support::registry_under_test() else {
        return;
    };
    let proxy = FaultProxy::start(
        &upstream,
        Faults {
            per_mille: 200,
            kinds: vec![
                Fault::Status(500),
                Fault::Status(503),
                Fault::TooManyRequests,
                Fault::ResetBefore,
                Fault::ResetMidBody,
                Fault::Hang,
                Fault::Delay(Duration::from_millis(300)),
            ],
            methods: Vec::new(),
            seed: 14,
        },
    );
    let scratch = TempDir::new().expect("a scratch directory");
    let salt = support::nonce();
    let repo = format!("faults-{salt}");
    const N: usize = 20;
    in_parallel(N, 4, |i| {
        let ctx = context(scratch.path(), i, &salt);
        let to = format!("type=registry,ref={}/{repo}:v{i},mode=max", proxy.addr);
        let (output, _) = build(scratch.path(), &ctx, &["--cache-to", &to], FAST);
        assert!(
            output.status.success(),
            "export {i} through the faulty registry failed:\n{}",
            stderr(&output)
        );
        assert_cache_landed(&upstream, &repo, &format!("v{i}"));
    });
    in_parallel(N, 4, |i| {
        let ctx = context(scratch.path(), i, &salt);
        let from = format!("type=registry,ref={}/{repo}:v{i}", proxy.addr);
        let out = tempfile::tempdir().expect("an output directory");
        let output_arg = format!("type=local,dest={}", support::s(out.path()));
        let (output, metadata) = build(
            scratch.path(),
            &ctx,
            &["--cache-from", &from, "--output", &output_arg],
            FAST,
        );
        assert_fully_cached(&output, &metadata, &format!("import {i}"));
        let copied = std::fs::read(out.path().join("b.bin")).expect("b.bin in the output");
        assert_eq!(copied, std::fs::read(ctx.join("b.bin")).expect("b.bin"));
    });
    let injected = proxy.faults_injected();
    let total: u64 = injected.values().sum();
    assert!(
        total >= 40 && injected.len() >= 5,
        "the proxy injected too few faults to test anything: {injected:?}"
    );
}

#[test]
fn issue_14_a_registry_failing_everything_fails_the_export_and_keeps_the_previous_tag() {
    let Some(upstream) = support::registry_under_test() else {
        return;
    };
    let proxy = FaultProxy::start(&upstream, Faults::none());
    let scratch = TempDir::new().expect("a scratch directory");
    let salt = support::nonce();
    let repo = format!("faults-all-{salt}");
    let to = format!("type=registry,ref={}/{repo}:cache,mode=max", proxy.addr);
    let first = context(scratch.path(), 0, &salt);
    let (output, _) = build(scratch.path(), &first, &["--cache-to", &to], FAST);
    assert!(
        output.status.success(),
        "first export:\n{}",
        stderr(&output)
    );
    let before = assert_cache_landed(&upstream, &repo, "cache");

    proxy.set_faults(Faults {
        per_mille: 1000,
        kinds: vec![
            Fault::Status(500),
            Fault::Status(503),
            Fault::ResetBefore,
            Fault::ResetMidBody,
        ],
        methods: Vec::new(),
        seed: 1,
    });
    let second = context(scratch.path(), 1, &salt);
    let mut env = FAST.to_vec();
    env.push(("BUILDCACHE_REGISTRY_RETRIES", "2"));
    let (output, _) = build(scratch.path(), &second, &["--cache-to", &to], &env);
    let text = stderr(&output);
    assert!(!output.status.success(), "the export should fail:\n{text}");
    assert!(
        text.contains(&format!("cache export {to} failed")) && text.contains(&proxy.addr),
        "the error should name the export and the registry:\n{text}"
    );
    assert_eq!(
        assert_cache_landed(&upstream, &repo, "cache"),
        before,
        "the failed export changed the tag"
    );

    proxy.set_faults(Faults::none());
    let from = format!("type=registry,ref={}/{repo}:cache", proxy.addr);
    let (output, metadata) = build(scratch.path(), &first, &["--cache-from", &from], FAST);
    assert_fully_cached(&output, &metadata, "import of the previous cache");
}

#[test]
fn issue_14_a_hung_registry_becomes_a_warning_within_the_import_budget() {
    let Some(upstream) = support::registry_under_test() else {
        return;
    };
    let proxy = FaultProxy::start(
        &upstream,
        Faults {
            per_mille: 1000,
            kinds: vec![Fault::Hang],
            methods: Vec::new(),
            seed: 0,
        },
    );
    let scratch = TempDir::new().expect("a scratch directory");
    let ctx = context(scratch.path(), 0, &support::nonce());
    let from = format!("type=registry,ref={}/hung:cache", proxy.addr);
    let to = format!("type=registry,ref={}/hung:cache", proxy.addr);
    let started = Instant::now();
    let (output, _) = build(
        scratch.path(),
        &ctx,
        &["--cache-from", &from, "--cache-to", &to],
        &[
            ("BUILDCACHE_IMPORT_TIMEOUT", "2"),
            ("BUILDCACHE_EXPORT_TIMEOUT", "2"),
        ],
    );
    let elapsed = started.elapsed();
    let text = stderr(&output);
    assert!(
        text.contains(&format!(
            "WARNING: cache import {from} failed, building without it"
        )) && text.contains("within 2.0 s"),
        "the hung import should be one warning naming its budget:\n{text}"
    );
    assert!(
        !output.status.success()
            && text.contains("not finished within 2.0 s, the previous cache is left in place"),
        "the hung export should fail within its budget:\n{text}"
    );
    // Without the budgets this build waited minutes; the bound is generous on purpose.
    assert!(elapsed < Duration::from_secs(40), "took {elapsed:?}");
}

#[test]
fn issue_11_a_warm_registry_build_asks_for_the_manifest_and_config_only() {
    let Some(upstream) = support::registry_under_test() else {
        return;
    };
    let proxy = FaultProxy::start(&upstream, Faults::none());
    let scratch = TempDir::new().expect("a scratch directory");
    let salt = support::nonce();
    let ctx = context(scratch.path(), 0, &salt);
    let reference = format!("{}/warm-{salt}:cache", proxy.addr);
    let to = format!("type=registry,ref={reference},mode=max");
    let (output, _) = build(scratch.path(), &ctx, &["--cache-to", &to], &[]);
    assert!(output.status.success(), "export:\n{}", stderr(&output));

    proxy.reset_counts();
    let from = format!("type=registry,ref={reference}");
    let (output, metadata) = build(scratch.path(), &ctx, &["--cache-from", &from], &[]);
    assert_fully_cached(&output, &metadata, "warm build");
    let lines = proxy.request_lines();
    let repo = format!("/v2/warm-{salt}");
    let manifest = format!("GET {repo}/manifests/cache");
    assert_eq!(
        lines.len(),
        2,
        "a fully cached warm build should fetch the manifest and the config only: {lines:#?}"
    );
    assert_eq!(lines[0], manifest, "{lines:#?}");
    assert!(
        lines[1].starts_with(&format!("GET {repo}/blobs/sha256:")),
        "{lines:#?}"
    );
    let requests = &metadata["buildcache.registry_requests"];
    assert_eq!(
        requests[&proxy.addr]["GET"].as_u64(),
        Some(2),
        "the metadata reports the requests by method: {metadata:#}"
    );
}
