//! Registry caches and images end to end: export and import between machines, manifest forms, refused exports, base images and pushes.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tempfile::TempDir;

use crate::support::{self, AuthRegistry};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The busybox-based Dockerfile every cache test builds (two RUN steps, one COPY).
const APP_DOCKERFILE: &str = "FROM scratch\n\
    COPY busybox /bin/busybox\n\
    RUN [\"/bin/busybox\",\"--install\",\"-s\",\"/bin\"]\n\
    RUN echo registry-cache > /hello.txt && mkdir -p /out && cp /hello.txt /out/\n";

// ---------------------------------------------------------------------------------------------
// The registries under test.

/// The open test registry and its access log.
struct TestRegistry {
    /// `127.0.0.1:PORT`.
    addr: String,
    log: PathBuf,
}

/// The open registry under test, or `None` (skip) outside CI; the tests also need busybox.
fn registry() -> Option<TestRegistry> {
    let addr = support::registry_under_test()?;
    let log = support::registry_log()?;
    support::busybox_path()?;
    Some(TestRegistry { addr, log })
}

/// The Basic-auth registry under test, or `None` (skip) outside CI.
fn auth_registry() -> Option<AuthRegistry> {
    let auth = support::auth_registry_under_test()?;
    support::busybox_path()?;
    Some(auth)
}

/// A repository name no other test (or earlier run) uses: the registry is shared.
fn unique_repo(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// The access log.

/// A position in the registry's access log: requests after it belong to what ran since.
struct LogMark(u64);

impl TestRegistry {
    fn mark(&self) -> LogMark {
        LogMark(std::fs::metadata(&self.log).map_or(0, |m| m.len()))
    }

    /// The access-log lines (`"METHOD URI HTTP/1.1" STATUS …`) written since `mark`.
    ///
    /// The registry logs a request once its response is written, so the last requests of a
    /// build may reach the log a moment after the build ended: a sentinel request sent now is
    /// answered after them, and its line is waited for (rather than a fixed sleep, which a
    /// loaded machine can outlast).
    fn requests_since(&self, mark: &LogMark) -> Vec<String> {
        static SENTINELS: AtomicU32 = AtomicU32::new(0);
        let sentinel = format!(
            "/v2/log-sentinel-{}-{}/tags/list",
            std::process::id(),
            SENTINELS.fetch_add(1, Ordering::Relaxed)
        );
        http_get(&self.addr, &sentinel, "application/json");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let bytes = std::fs::read(&self.log)
                .unwrap_or_else(|e| panic!("reading the registry log {}: {e}", self.log.display()));
            let start = (mark.0 as usize).min(bytes.len());
            let text = String::from_utf8_lossy(&bytes[start..]);
            if text.contains(&sentinel) || std::time::Instant::now() > deadline {
                // Give requests logged by other goroutines at the same moment a little time.
                std::thread::sleep(Duration::from_millis(50));
                let bytes = std::fs::read(&self.log).expect("the log was just read");
                let start = (mark.0 as usize).min(bytes.len());
                return String::from_utf8_lossy(&bytes[start..])
                    .lines()
                    .filter(|l| {
                        l.contains(" HTTP/1.")
                            && l.contains('"')
                            && !l.contains("level=")
                            && !l.contains("/v2/log-sentinel-")
                    })
                    .map(str::to_owned)
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The digests of `GET /v2/<repo>/blobs/sha256:…` requests among `lines`.
fn blob_gets(lines: &[String], repo: &str) -> Vec<String> {
    let needle = format!("\"GET /v2/{repo}/blobs/");
    lines
        .iter()
        .filter_map(|l| {
            let rest = &l[l.find(&needle)? + needle.len()..];
            Some(rest.split([' ', '?']).next()?.to_owned())
        })
        .collect()
}

/// Lines of `lines` with `METHOD /v2/<repo>/<path_prefix>`.
fn requests<'a>(lines: &'a [String], method: &str, repo: &str, path_prefix: &str) -> Vec<&'a str> {
    let needle = format!("\"{method} /v2/{repo}/{path_prefix}");
    lines
        .iter()
        .filter(|l| l.contains(&needle))
        .map(String::as_str)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP to the loopback registry (to check what landed there without our own client).

/// `GET http://ADDR/PATH` with an `Accept` header: status and body.
fn http_get(addr: &str, path: &str, accept: &str) -> (u16, Vec<u8>) {
    let (status, _, body) = http_request(addr, "GET", path, accept);
    (status, body)
}

/// `METHOD http://ADDR/PATH` with an `Accept` header: status, headers and body.
fn http_request(addr: &str, method: &str, path: &str, accept: &str) -> (u16, String, Vec<u8>) {
    let mut stream =
        TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set a read timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response with headers");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head, response[split + 4..].to_vec())
}

/// The image manifest under `repo:reference` in the registry, as JSON.
fn registry_manifest(addr: &str, repo: &str, reference: &str) -> Value {
    let (status, body) = http_get(
        addr,
        &format!("/v2/{repo}/manifests/{reference}"),
        &format!("{OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json"),
    );
    assert_eq!(
        status,
        200,
        "GET manifest {repo}:{reference}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).expect("manifest JSON")
}

fn layer_digests(manifest: &Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .expect("layers in the manifest")
        .iter()
        .map(|l| l["digest"].as_str().expect("layer digest").to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Running the binary.

/// A scratch area: build contexts, roots, metadata files and a hermetic `DOCKER_CONFIG`.
struct Scratch {
    dir: TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("create a tempdir");
        std::fs::create_dir(dir.path().join("docker-config")).expect("create docker-config");
        Scratch { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A context directory `name` holding Debian's static busybox and `dockerfile`.
    fn context(&self, name: &str, dockerfile: &str) -> PathBuf {
        let ctx = self.path(name);
        std::fs::create_dir_all(&ctx).expect("create the context");
        let busybox = support::busybox_path().expect("registry() checked for busybox");
        std::fs::copy(busybox, ctx.join("busybox")).expect("copy busybox into the context");
        std::fs::write(ctx.join("Dockerfile"), dockerfile).expect("write the Dockerfile");
        ctx
    }

    /// A `DOCKER_CONFIG` directory with credentials for `host`.
    fn docker_config(&self, name: &str, host: &str, user: &str, password: &str) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).expect("create the docker config dir");
        let auth = base64(format!("{user}:{password}").as_bytes());
        let config = serde_json::json!({ "auths": { host: { "auth": auth } } });
        std::fs::write(dir.join("config.json"), config.to_string()).expect("write config.json");
        dir
    }

    /// `buildcache ARGS` with an empty `DOCKER_CONFIG` (no credentials of this machine's user).
    fn command(&self, args: &[&str]) -> assert_cmd::Command {
        let mut cmd = support::buildcache();
        cmd.args(args)
            .env("DOCKER_CONFIG", self.path("docker-config"));
        cmd
    }

    /// `buildcache build --root ROOT --progress plain --metadata-file … ARGS CONTEXT`.
    fn build(&self, root: &str, context: &Path, args: &[&str]) -> Run {
        self.build_with(root, context, args, None)
    }

    fn build_with(
        &self,
        root: &str,
        context: &Path,
        args: &[&str],
        docker_config: Option<&Path>,
    ) -> Run {
        static N: AtomicU32 = AtomicU32::new(0);
        let meta = self.path(&format!("meta-{}.json", N.fetch_add(1, Ordering::Relaxed)));
        let root = self.path(root);
        let mut cmd = self.command(&["build"]);
        cmd.arg("--root")
            .arg(&root)
            .args(["--progress", "plain", "--metadata-file"])
            .arg(&meta)
            .args(args)
            .arg(context);
        if let Some(dir) = docker_config {
            cmd.env("DOCKER_CONFIG", dir);
        }
        let out = cmd.output().expect("run buildcache build");
        Run {
            what: format!("buildcache build {}", args.join(" ")),
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            meta: std::fs::read(&meta)
                .ok()
                .map(|b| serde_json::from_slice(&b).expect("metadata file is JSON")),
        }
    }

    /// `buildcache cache inspect [--format json] SOURCE`, which must succeed.
    fn inspect(&self, source: &str, json: bool) -> String {
        let mut args = vec!["cache", "inspect"];
        if json {
            args.extend(["--format", "json"]);
        }
        args.push(source);
        let out = self.command(&args).output().expect("run buildcache");
        assert!(
            out.status.success(),
            "buildcache cache inspect {source} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// What a `buildcache build` did.
struct Run {
    what: String,
    ok: bool,
    stdout: String,
    stderr: String,
    meta: Option<Value>,
}

impl Run {
    fn success(self) -> Run {
        assert!(
            self.ok,
            "{} failed\nstdout:\n{}\nstderr:\n{}",
            self.what, self.stdout, self.stderr
        );
        self
    }

    fn meta(&self) -> &Value {
        self.meta
            .as_ref()
            .unwrap_or_else(|| panic!("{} wrote no metadata\n{}", self.what, self.stderr))
    }

    fn image_digest(&self) -> String {
        self.meta()["containerimage.digest"]
            .as_str()
            .expect("containerimage.digest")
            .to_owned()
    }

    fn steps(&self) -> &[Value] {
        self.meta()["buildcache.steps"]
            .as_array()
            .expect("buildcache.steps")
    }

    /// Asserts that every step was a hit from the cache source `source`.
    fn assert_all_cached_from(&self, source: &str) {
        assert!(!self.steps().is_empty(), "{}: no steps", self.what);
        for step in self.steps() {
            assert_eq!(
                step["cached"], true,
                "{}: step {} was not cached\n{}",
                self.what, step["name"], self.stderr
            );
            assert_eq!(
                step["cache_source"], source,
                "{}: step {} came from elsewhere",
                self.what, step["name"]
            );
        }
    }

    fn assert_none_cached(&self) {
        assert!(!self.steps().is_empty(), "{}: no steps", self.what);
        for step in self.steps() {
            assert_eq!(
                step["cached"], false,
                "{}: step {} was cached",
                self.what, step["name"]
            );
        }
    }

    fn export(&self, i: usize) -> &Value {
        &self.meta()["buildcache.cache_export"][i]
    }
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Whether `text` carries a registry's 401: `UNAUTHORIZED` (its error code), `authentication
/// required` (its message) or `401 Unauthorized` (the status of a body-less HEAD).
fn says_unauthorized(text: &str) -> bool {
    text.contains("UNAUTHORIZED")
        || text.contains("authentication required")
        || text.contains("401 Unauthorized")
}

/// Asserts that no `: `-separated part of an error line longer than 30 characters repeats: a
/// cause printed both in a message and as its source reads twice.
fn assert_no_repeated_cause(stderr: &str) {
    for line in stderr.lines().filter(|l| l.starts_with("error:")) {
        let parts: Vec<&str> = line.split(": ").filter(|p| p.len() > 30).collect();
        for (i, part) in parts.iter().enumerate() {
            assert!(
                !parts[..i].contains(part),
                "the error repeats {part:?}:\n{line}"
            );
        }
    }
}

fn skopeo_available() -> bool {
    support::tool("skopeo").is_some()
}

// ---------------------------------------------------------------------------------------------
// Cache export and import.

#[test]
fn two_machines_share_a_registry_cache_without_downloading_layers() {
    let Some(reg) = registry() else { return };
    let s = Scratch::new();
    let ctx = s.context("ctx", APP_DOCKERFILE);
    let repo = unique_repo("app");
    let cache_ref = format!("{}/{repo}:cache", reg.addr);

    let a = s
        .build(
            "root-a",
            &ctx,
            &[
                "--cache-to",
                &format!("type=registry,ref={cache_ref},mode=max"),
            ],
        )
        .success();
    a.assert_none_cached();
    let config_digest = a.export(0)["config_digest"]
        .as_str()
        .expect("the export reports its config digest")
        .to_owned();
    assert!(a.export(0)["blobs_written"].as_u64() > Some(0));

    let mark = reg.mark();
    let from = format!("type=registry,ref={cache_ref}");
    let b = s.build("root-b", &ctx, &["--cache-from", &from]).success();
    let lines = reg.requests_since(&mark);

    b.assert_all_cached_from(&from);
    assert_eq!(
        b.image_digest(),
        a.image_digest(),
        "machine B built another image"
    );
    let gets = blob_gets(&lines, &repo);
    assert!(
        gets.contains(&config_digest),
        "B never read the cache config {config_digest}: is the access log right?\n{lines:#?}"
    );
    let layer_gets: Vec<_> = gets.iter().filter(|d| **d != config_digest).collect();
    assert!(
        layer_gets.is_empty(),
        "machine B downloaded layers although every step was cached: {layer_gets:?}"
    );
}

#[test]
fn reexporting_an_unchanged_cache_writes_nothing() {
    let Some(reg) = registry() else { return };
    let s = Scratch::new();
    let ctx = s.context("ctx", APP_DOCKERFILE);
    let repo = unique_repo("unchanged");
    let to = format!("type=registry,ref={}/{repo}:cache,mode=max", reg.addr);

    let first = s.build("root", &ctx, &["--cache-to", &to]).success();
    assert!(first.export(0)["blobs_written"].as_u64() > Some(0));
    assert!(first.export(0)["bytes_written"].as_u64() > Some(0));

    let mark = reg.mark();
    let second = s.build("root", &ctx, &["--cache-to", &to]).success();
    let lines = reg.requests_since(&mark);
    let report = second.export(0);
    assert_eq!(report["blobs_written"], 0, "{report:#}");
    assert_eq!(report["bytes_written"], 0, "{report:#}");
    assert_eq!(report["unchanged"], true, "{report:#}");
    assert_eq!(
        report["manifest_digest"],
        first.export(0)["manifest_digest"],
        "the same build exported another cache manifest"
    );
    let puts = requests(&lines, "PUT", &repo, "");
    assert!(puts.is_empty(), "the unchanged export wrote: {puts:#?}");
}

/// A build stage whose layer is not in the final image: `mode=min` does not export it.
const TWO_STAGE_DOCKERFILE: &str = "FROM scratch AS base\n\
    COPY busybox /bin/busybox\n\
    RUN [\"/bin/busybox\",\"--install\",\"-s\",\"/bin\"]\n\
    FROM base AS build\n\
    RUN echo built > /built.txt\n\
    FROM base AS final\n\
    COPY --from=build /built.txt /copied.txt\n";

/// Each registry export gets the layers its mode exports while later steps still run (the
/// export then writes only the config and the manifest): `mode=max` all four, `mode=min` the
/// three of the final image and not the build stage's.
#[test]
fn exports_push_the_layers_of_their_mode_while_the_build_runs() {
    let Some(reg) = registry() else { return };
    let s = Scratch::new();
    let ctx = s.context("ctx", TWO_STAGE_DOCKERFILE);
    let max_ref = format!("{}/{}:cache", reg.addr, unique_repo("early-max"));
    let max = format!("type=registry,ref={max_ref},mode=max");
    let min_ref = format!("{}/{}:cache", reg.addr, unique_repo("early-min"));
    let min = format!("type=registry,ref={min_ref},mode=min");
    let run = s
        .build("a", &ctx, &["--cache-to", &max, "--cache-to", &min])
        .success();
    let (max_report, min_report) = (run.export(0), run.export(1));
    assert_eq!(max_report["blobs_pushed_early"], 4, "{max_report:#}");
    assert_eq!(max_report["blobs_written"], 5, "{max_report:#}");
    // Had the build stage's layer gone up early, min would count four early pushes.
    assert_eq!(min_report["blobs_pushed_early"], 3, "{min_report:#}");
    assert_eq!(min_report["blobs_written"], 4, "{min_report:#}");
    assert_eq!(min_report["layers"], 3, "{min_report:#}");
    // What was pushed early makes a whole cache.
    let from = format!("type=registry,ref={max_ref}");
    let warm = s.build("b", &ctx, &["--cache-from", &from]).success();
    warm.assert_all_cached_from(&from);
    let from_min = format!("type=registry,ref={min_ref}");
    let inspected: Value =
        serde_json::from_str(&s.inspect(&from_min, true)).expect("inspect --format json is JSON");
    let layers = inspected["layer_details"].as_array().expect("layers");
    assert_eq!(layers.len(), 3, "{inspected:#}");
}

#[test]
fn every_manifest_form_exports_inspects_and_imports() {
    let Some(reg) = registry() else { return };
    let s = Scratch::new();
    let ctx = s.context("ctx", APP_DOCKERFILE);
    let repo = unique_repo("forms");
    let forms = [
        ("image", "", OCI_MANIFEST),
        ("index", ",image-manifest=false", OCI_INDEX),
        (
            "list",
            ",image-manifest=false,oci-mediatypes=false",
            DOCKER_LIST,
        ),
    ];
    let mut image_digest = None;
    for (tag, attrs, media_type) in forms {
        let cache_ref = format!("{}/{repo}:{tag}", reg.addr);
        let to = format!("type=registry,ref={cache_ref},mode=max{attrs}");
        let exported = s.build("root-a", &ctx, &["--cache-to", &to]).success();
        let from = format!("type=registry,ref={cache_ref}");

        let inspected: Value =
            serde_json::from_str(&s.inspect(&from, true)).expect("inspect --format json is JSON");
        assert_eq!(inspected["manifest_media_type"], media_type, "{to}");
        assert_eq!(
            inspected["manifest_digest"],
            exported.export(0)["manifest_digest"],
            "{to}"
        );
        if tag == "list" {
            for layer in inspected["layer_details"].as_array().expect("layers") {
                let mt = layer["media_type"].as_str().expect("media type");
                assert!(
                    mt.starts_with("application/vnd.docker.image.rootfs.diff.tar"),
                    "oci-mediatypes=false wrote a layer as {mt}"
                );
            }
        }
        let text = s.inspect(&from, false);
        assert!(
            text.contains(inspected["manifest_digest"].as_str().expect("digest")),
            "cache inspect {from} does not name the manifest:\n{text}"
        );
        assert!(text.contains(media_type), "{text}");

        // Check the registry holds the form we asked for, not only what our reader says.
        let (status, body) = http_get(
            &reg.addr,
            &format!("/v2/{repo}/manifests/{tag}"),
            &format!("{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_LIST}"),
        );
        assert_eq!(status, 200);
        let raw: Value = serde_json::from_slice(&body).expect("manifest JSON");
        assert_eq!(raw["mediaType"], media_type, "{to}");

        let imported = s
            .build(&format!("root-{tag}"), &ctx, &["--cache-from", &from])
            .success();
        imported.assert_all_cached_from(&from);
        let digest = imported.image_digest();
        assert_eq!(digest, exported.image_digest(), "{to}");
        assert_eq!(image_digest.get_or_insert(digest.clone()), &digest);
    }

    // buildx's shorthand: a bare reference is a registry import.
    let bare = format!("{}/{repo}:image", reg.addr);
    let imported = s
        .build("root-bare", &ctx, &["--cache-from", &bare])
        .success();
    imported.assert_all_cached_from(&bare);
}

#[test]
fn importing_a_missing_tag_warns_and_builds_everything() {
    let Some(reg) = registry() else { return };
    let s = Scratch::new();
    let ctx = s.context("ctx", APP_DOCKERFILE);
    let repo = unique_repo("missing");
    // One repository with a cache under another tag, one that does not exist at all.
    let existing = format!("{}/{repo}:present", reg.addr);
    s.build(
        "root-a",
        &ctx,
        &["--cache-to", &format!("type=registry,ref={existing}")],
    )
    .success();
    let sources = [
        format!("type=registry,ref={}/{repo}:absent", reg.addr),
        format!(
            "type=registry,ref={}/{}:cache",
            reg.addr,
            unique_repo("nowhere")
        ),
    ];
    for (i, from) in sources.into_iter().enumerate() {
        let run = s
            .build(&format!("root-{i}"), &ctx, &["--cache-from", &from])
            .success();
        run.assert_none_cached();
        let warning = run
            .stderr
            .lines()
            .find(|l| l.contains("WARNING") && l.contains(&from));
        assert!(
            warning.is_some(),
            "no warning line naming {from}:\n{}",
            run.stderr
        );
        assert_eq!(
            run.meta()["buildcache.cache_import_empty"],
            serde_json::json!([from]),
            "the metadata does not list the empty source"
        );
    }
}

#[test]
fn an_export_the_registry_refuses_fails_unless_ignore_error() {
    let Some(auth) = auth_registry() else { return };
    let s = Scratch::new();
    let ctx = s.context("ctx", APP_DOCKERFILE);
    let repo = unique_repo("auth");
    let cache_ref = format!("{}/{repo}:cache", auth.addr);
    let to = format!("type=registry,ref={cache_ref},mode=max");
    let wrong = s.docker_config("wrong", &auth.addr, &auth.user, "not-the-password");
    let right = s.docker_config("right", &auth.addr, &auth.user, &auth.password);

    let refused = s.build_with("root-a", &ctx, &["--cache-to", &to], Some(&wrong));
    assert!(
        !refused.ok,
        "the export to a registry that refused the credentials succeeded:\n{}",
        refused.stderr
    );
    // A refused HEAD has no body, so the status line is all the registry says there.
    assert!(
        says_unauthorized(&refused.stderr),
        "the error does not carry the registry's refusal:\n{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains(&cache_ref),
        "the error does not name the cache:\n{}",
        refused.stderr
    );
    assert!(
        !refused.stderr.contains(&auth.password) && !refused.stderr.contains("not-the-password"),
        "a password was printed:\n{}",
        refused.stderr
    );

    let ignored = s
        .build_with(
            "root-a",
            &ctx,
            &["--cache-to", &format!("{to},ignore-error=true")],
            Some(&wrong),
        )
        .success();
    let warning = ignored
        .stderr
        .lines()
        .find(|l| l.contains("WARNING") && l.contains(&cache_ref));
    assert!(
        warning.is_some_and(says_unauthorized),
        "no warning with the registry's refusal:\n{}",
        ignored.stderr
    );
    assert!(
        ignored.export(0)["error"].is_string(),
        "the metadata does not report the failed export: {:#}",
        ignored.export(0)
    );

    let accepted = s
        .build_with("root-a", &ctx, &["--cache-to", &to], Some(&right))
        .success();
    assert!(accepted.export(0)["blobs_written"].as_u64() > Some(0));

    // The cache is there for a machine with the credentials.
    let from = format!("type=registry,ref={cache_ref}");
    let b = s
        .build_with("root-b", &ctx, &["--cache-from", &from], Some(&right))
        .success();
    b.assert_all_cached_from(&from);
}

#[test]
fn a_refused_export_names_its_cause_once() {
    let Some(auth) = auth_registry() else { return };
    let s = Scratch::new();
    let ctx = s.context("ctx", APP_DOCKERFILE);
    let repo = unique_repo("auth-once");
    let to = format!("type=registry,ref={}/{repo}:cache", auth.addr);
    let wrong = s.docker_config("wrong", &auth.addr, &auth.user, "not-the-password");
    let refused = s.build_with("root", &ctx, &["--cache-to", &to], Some(&wrong));
    assert!(!refused.ok);
    assert!(says_unauthorized(&refused.stderr), "{}", refused.stderr);
    assert_no_repeated_cause(&refused.stderr);
}

// ---------------------------------------------------------------------------------------------
// Images in the registry.

/// Pushes a busybox image built by us to `ADDR/<repo>:latest`; returns the repository and the
/// push build.
fn push_busybox(s: &Scratch, reg: &TestRegistry) -> (String, Run) {
    let repo = unique_repo("busybox");
    let ctx = s.context(
        "busybox-ctx",
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\",\"--install\",\"-s\",\"/bin\"]\n",
    );
    let name = format!("{}/{repo}:latest", reg.addr);
    let pushed = s
        .build("root-push", &ctx, &["-t", &name, "--push"])
        .success();
    (repo, pushed)
}

#[test]
fn base_images_come_from_the_registry_once() {
    let Some(reg) = registry() else { return };
    let s = Scratch::new();
    let (repo, pushed) = push_busybox(&s, &reg);
    let image_digest = pushed.image_digest();
    let config_digest = pushed.meta()["containerimage.config.digest"]
        .as_str()
        .expect("containerimage.config.digest")
        .to_owned();

    // What landed in the registry is the image we built.
    let manifest = registry_manifest(&reg.addr, &repo, "latest");
    assert_eq!(manifest["config"]["digest"], config_digest.as_str());
    let layers = layer_digests(&manifest);
    assert_eq!(layers.len(), 2, "{manifest:#}");
    let (status, _) = http_get(
        &reg.addr,
        &format!("/v2/{repo}/manifests/{image_digest}"),
        OCI_MANIFEST,
    );
    assert_eq!(status, 200, "the pushed manifest is not under its digest");

    if skopeo_available() {
        let out = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{}/{repo}:latest", reg.addr))
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo inspect: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info: Value = serde_json::from_slice(&out.stdout).expect("skopeo JSON");
        assert_eq!(info["Digest"], image_digest.as_str());
        assert_eq!(info["Layers"].as_array().map(Vec::len), Some(2), "{info:#}");
        assert_eq!(info["Os"], "linux");
        assert_eq!(info["Architecture"], "amd64");
    }

    // A machine that never built anything runs on that base.
    let base = format!("{}/{repo}:latest", reg.addr);
    let first_ctx = s.context(
        "first",
        &format!("FROM {base}\nRUN echo first > /first.txt && ls /bin/sh > /shell.txt\n"),
    );
    let out = s.path("out-first");
    let mark = reg.mark();
    s.build(
        "root-user",
        &first_ctx,
        &["--output", &format!("type=local,dest={}", out.display())],
    )
    .success();
    let lines = reg.requests_since(&mark);
    assert_eq!(
        std::fs::read_to_string(out.join("first.txt")).expect("first.txt in the output"),
        "first\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("shell.txt")).expect("shell.txt in the output"),
        "/bin/sh\n"
    );
    let gets = blob_gets(&lines, &repo);
    for layer in &layers {
        assert!(
            gets.contains(layer),
            "the first build never fetched base layer {layer}: {gets:?}"
        );
    }

    // A second build on the same root needs the base's filesystem again (a new RUN) but has its
    // layers already.
    let second_ctx = s.context(
        "second",
        &format!("FROM {base}\nRUN echo second > /second.txt\n"),
    );
    let out = s.path("out-second");
    let mark = reg.mark();
    let second = s
        .build(
            "root-user",
            &second_ctx,
            &["--output", &format!("type=local,dest={}", out.display())],
        )
        .success();
    let lines = reg.requests_since(&mark);
    assert!(
        second.steps().iter().any(|st| st["cached"] == false),
        "the second build ran nothing, so it proves nothing"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("second.txt")).expect("second.txt in the output"),
        "second\n"
    );
    let layer_gets: Vec<_> = blob_gets(&lines, &repo)
        .into_iter()
        .filter(|d| *d != config_digest)
        .collect();
    assert!(
        layer_gets.is_empty(),
        "the second build downloaded base layers again: {layer_gets:?}"
    );

    // The base pinned by digest.
    let pinned = format!("{}/{repo}@{image_digest}", reg.addr);
    let pinned_ctx = s.context(
        "pinned",
        &format!("FROM {pinned}\nRUN echo pinned > /pinned.txt\n"),
    );
    let out = s.path("out-pinned");
    s.build(
        "root-pinned",
        &pinned_ctx,
        &["--output", &format!("type=local,dest={}", out.display())],
    )
    .success();
    assert_eq!(
        std::fs::read_to_string(out.join("pinned.txt")).expect("pinned.txt in the output"),
        "pinned\n"
    );
    assert!(out.join("bin/busybox").exists());
}

#[test]
fn pushing_to_another_repository_mounts_the_layers() {
    let Some(reg) = registry() else { return };
    let s = Scratch::new();
    let ctx = s.context("ctx", APP_DOCKERFILE);
    let source = unique_repo("mount-src");
    let target = unique_repo("mount-dst");

    s.build(
        "root",
        &ctx,
        &["-t", &format!("{}/{source}:1", reg.addr), "--push"],
    )
    .success();
    let layers = layer_digests(&registry_manifest(&reg.addr, &source, "1"));
    assert_eq!(layers.len(), 3);

    let mark = reg.mark();
    let name = format!("{}/{target}:1", reg.addr);
    s.build(
        "root",
        &ctx,
        &["--output", &format!("type=image,name={name},push=true")],
    )
    .success();
    let lines = reg.requests_since(&mark);

    let target_manifest = registry_manifest(&reg.addr, &target, "1");
    assert_eq!(layer_digests(&target_manifest), layers);
    let uploads = requests(&lines, "PUT", &target, "blobs/uploads/");
    for layer in &layers {
        let escaped = layer.replace(':', "%3A");
        let uploaded: Vec<_> = uploads
            .iter()
            .filter(|l| l.contains(&escaped) || l.contains(layer.as_str()))
            .collect();
        assert!(
            uploaded.is_empty(),
            "layer {layer} was uploaded again instead of mounted from {source}: {uploaded:#?}"
        );
    }
    let mounts = requests(&lines, "POST", &target, "blobs/uploads/?mount=");
    assert!(
        mounts.len() >= layers.len(),
        "expected a mount per layer:\n{lines:#?}"
    );
}

#[test]
fn base64_matches_rfc_4648() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
}

#[test]
fn pushing_an_image_mounts_its_base_layers_from_the_base_repository() {
    let Some(reg) = registry() else { return };
    let s = Scratch::new();
    let (base_repo, _) = push_busybox(&s, &reg);
    let base_layers = layer_digests(&registry_manifest(&reg.addr, &base_repo, "latest"));
    let ctx = s.context(
        "derived",
        &format!(
            "FROM {}/{base_repo}:latest\nRUN echo derived > /derived.txt\n",
            reg.addr
        ),
    );
    let target = unique_repo("derived");
    let mark = reg.mark();
    s.build(
        "root-derived",
        &ctx,
        &["-t", &format!("{}/{target}:1", reg.addr), "--push"],
    )
    .success();
    let lines = reg.requests_since(&mark);

    let layers = layer_digests(&registry_manifest(&reg.addr, &target, "1"));
    assert_eq!(layers.len(), base_layers.len() + 1);
    assert_eq!(layers[..base_layers.len()], base_layers[..]);
    let uploads = requests(&lines, "PUT", &target, "blobs/uploads/");
    for layer in &base_layers {
        let escaped = layer.replace(':', "%3A");
        assert!(
            !uploads.iter().any(|l| l.contains(&escaped)),
            "base layer {layer} was uploaded instead of mounted from {base_repo}"
        );
        let mount = format!("mount={escaped}&from={base_repo}");
        assert!(
            requests(&lines, "POST", &target, "blobs/uploads/?")
                .iter()
                .any(|l| l.contains(&mount)),
            "base layer {layer} was not mounted from {base_repo}:\n{lines:#?}"
        );
    }
    // The new layer had to be uploaded.
    let new_layer = layers.last().expect("a layer").replace(':', "%3A");
    assert!(uploads.iter().any(|l| l.contains(&new_layer)));
}

#[test]
fn a_missing_base_image_fails_naming_it() {
    let Some(reg) = registry() else { return };
    let s = Scratch::new();
    let base = format!("{}/{}:latest", reg.addr, unique_repo("absent-base"));
    let ctx = s.context("ctx", &format!("FROM {base}\nRUN true\n"));
    let run = s.build("root", &ctx, &[]);
    assert!(!run.ok, "a build from a missing base image succeeded");
    let error = run
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line:\n{}", run.stderr));
    assert!(
        error.contains(&base) && error.contains("not found"),
        "{error}"
    );
}

#[test]
fn base_images_from_an_authenticated_registry_use_docker_credentials() {
    let Some(auth) = auth_registry() else { return };
    let s = Scratch::new();
    let right = s.docker_config("right", &auth.addr, &auth.user, &auth.password);
    let repo = unique_repo("auth-base");
    let base = format!("{}/{repo}:latest", auth.addr);
    let base_ctx = s.context(
        "base",
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\",\"--install\",\"-s\",\"/bin\"]\n",
    );
    s.build_with(
        "root-push",
        &base_ctx,
        &["-t", &base, "--push"],
        Some(&right),
    )
    .success();

    let ctx = s.context("derived", &format!("FROM {base}\nRUN echo ok > /ok.txt\n"));
    let anonymous = s.build("root-anonymous", &ctx, &[]);
    assert!(
        !anonymous.ok,
        "an anonymous pull from the auth registry succeeded"
    );
    assert!(
        says_unauthorized(&anonymous.stderr) && anonymous.stderr.contains(&base),
        "{}",
        anonymous.stderr
    );
    let out = s.path("out");
    s.build_with(
        "root-user",
        &ctx,
        &["--output", &format!("type=local,dest={}", out.display())],
        Some(&right),
    )
    .success();
    assert_eq!(
        std::fs::read_to_string(out.join("ok.txt")).expect("ok.txt in the output"),
        "ok\n"
    );
}

#[test]
fn pushing_every_tag_uploads_each_blob_once() {
    let Some(reg) = registry() else { return };
    let s = Scratch::new();
    let ctx = s.context("ctx", APP_DOCKERFILE);
    let repo = unique_repo("tags");
    let (a, b) = (
        format!("{}/{repo}:a", reg.addr),
        format!("{}/{repo}:b", reg.addr),
    );
    let mark = reg.mark();
    let first = s
        .build("root", &ctx, &["-t", &a, "-t", &b, "--push"])
        .success();
    let lines = reg.requests_since(&mark);
    let digest = first.image_digest();
    for tag in ["a", "b"] {
        let (status, head, _) = http_request(
            &reg.addr,
            "HEAD",
            &format!("/v2/{repo}/manifests/{tag}"),
            OCI_MANIFEST,
        );
        assert_eq!(status, 200, "{repo}:{tag} was not pushed");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("docker-content-digest: {digest}")),
            "{repo}:{tag} is another image than {digest}:\n{head}"
        );
    }
    // Three layers and the config, each uploaded once although two tags were pushed.
    let uploads = requests(&lines, "PUT", &repo, "blobs/uploads/");
    assert_eq!(uploads.len(), 4, "{uploads:#?}");

    // Pushing the same image again uploads no blob.
    let mark = reg.mark();
    s.build("root", &ctx, &["-t", &a, "--push"]).success();
    let lines = reg.requests_since(&mark);
    let uploads = requests(&lines, "PUT", &repo, "blobs/uploads/");
    assert!(uploads.is_empty(), "{uploads:#?}");
}
