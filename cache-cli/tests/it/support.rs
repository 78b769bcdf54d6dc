//! Shared helpers of the `buildcache` tests: the binary, offline build contexts, metadata, progress, registries.
// Every test module uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

pub mod buildkit;
pub mod corpus;

/// Whether the tests run on CI (env `CI` set), where a missing tool or service is a failure.
pub fn is_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Skips (returns `None` with a message) or, on CI, panics: the one policy for missing prerequisites.
pub fn missing<T>(what: &str) -> Option<T> {
    if is_ci() {
        panic!("{what} (required on CI)");
    }
    eprintln!("skipping: {what}");
    None
}

/// The `buildcache` binary, with the environment that would change its behaviour removed.
pub fn buildcache() -> Command {
    let mut cmd =
        Command::cargo_bin("buildcache").expect("the buildcache binary is built by cargo");
    cmd.env_remove("BUILDCACHE_ROOT")
        .env_remove("BUILDKIT_PROGRESS")
        .env_remove("RUST_LOG");
    cmd
}

/// Debian's static busybox (`/bin/busybox` or `/usr/bin/busybox`), or `None` (skip) outside CI.
pub fn busybox_path() -> Option<PathBuf> {
    for candidate in ["/bin/busybox", "/usr/bin/busybox"] {
        let path = Path::new(candidate);
        if path.is_file() {
            return Some(path.to_owned());
        }
    }
    missing("busybox is not installed (apt-get install busybox-static)")
}

/// An executable found on `PATH`, or `None` (skip) outside CI.
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    missing(&format!("{name} is not installed (apt-get install {name})"))
}

/// Whether this process runs as root (the owner of `/proc/self` is the effective user).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// An offline build context in a temporary directory: a Dockerfile and `busybox` at its top.
#[derive(Debug)]
pub struct BuildContext {
    dir: TempDir,
}

impl BuildContext {
    /// The context directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `rel` inside the context, creating parent directories.
    pub fn write(&self, rel: &str, contents: &str) -> &Self {
        write_file(&self.path().join(rel), contents);
        self
    }

    /// Removes the file `rel` inside the context.
    pub fn remove(&self, rel: &str) -> &Self {
        let path = self.path().join(rel);
        fs::remove_file(&path).unwrap_or_else(|e| panic!("removing {}: {e}", path.display()));
        self
    }
}

/// A build context holding `dockerfile` and a copy of busybox, or `None` (skip) without busybox.
///
/// The Dockerfile starts `FROM scratch` and `COPY busybox /bin/busybox` to have a shell offline.
pub fn busybox_context(dockerfile: &str) -> Option<BuildContext> {
    let busybox = busybox_path()?;
    let dir = tempfile::tempdir().expect("creating a temporary build context");
    fs::copy(&busybox, dir.path().join("busybox"))
        .unwrap_or_else(|e| panic!("copying {} into the context: {e}", busybox.display()));
    let ctx = BuildContext { dir };
    ctx.write("Dockerfile", dockerfile);
    Some(ctx)
}

/// The first lines of a Dockerfile stage that has busybox's shell: `FROM scratch AS <name>`.
pub fn busybox_stage(name: &str) -> String {
    format!(
        "FROM scratch AS {name}\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n"
    )
}

/// Writes a file, creating its parent directories.
pub fn write_file(path: &Path, contents: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// A file parsed as JSON.
pub fn read_json(path: &Path) -> Value {
    let text = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The file written by `--metadata-file`.
pub fn read_metadata(path: &Path) -> Value {
    read_json(path)
}

/// One entry of the metadata's `buildcache.steps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The step's display name, `[stage n/m] INSTRUCTION …`.
    pub name: String,
    /// Whether it was a cache hit.
    pub cached: bool,
    /// The cache that had it (`type=local,src=…`), if any.
    pub cache_source: Option<String>,
}

/// The steps of a metadata file, in its order.
pub fn steps(metadata: &Value) -> Vec<Step> {
    let steps = metadata["buildcache.steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no buildcache.steps array in the metadata: {metadata:#}"));
    steps
        .iter()
        .map(|step| Step {
            name: step["name"].as_str().expect("a step has a name").to_owned(),
            cached: step["cached"].as_bool().expect("a step has a cached flag"),
            cache_source: step["cache_source"].as_str().map(str::to_owned),
        })
        .collect()
}

/// How many steps were `"cached": true`.
pub fn count_cached(metadata: &Value) -> usize {
    steps(metadata).iter().filter(|s| s.cached).count()
}

/// The names of the steps that were not cached (that ran).
pub fn uncached_steps(metadata: &Value) -> Vec<String> {
    steps(metadata)
        .into_iter()
        .filter(|s| !s.cached)
        .map(|s| s.name)
        .collect()
}

/// The metadata's `containerimage.digest`.
pub fn image_digest(metadata: &Value) -> String {
    metadata["containerimage.digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no containerimage.digest in the metadata: {metadata:#}"))
        .to_owned()
}

/// How a vertex of `--progress=plain` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VertexStatus {
    /// `#N DONE …`: it ran.
    Done,
    /// `#N CACHED`.
    Cached,
    /// `#N ERROR …`.
    Error,
    /// No final line.
    Unfinished,
}

/// One `#N` vertex of BuildKit-style plain progress.
#[derive(Clone, Debug)]
pub struct Vertex {
    /// Its number.
    pub id: u32,
    /// The first line's text after `#N ` (for steps `[stage n/m] INSTRUCTION …`).
    pub name: String,
    /// Every other line of it, without the `#N ` prefix.
    pub lines: Vec<String>,
    /// How it ended.
    pub status: VertexStatus,
}

impl Vertex {
    /// Whether it is a Dockerfile step (`[stage n/m] …` or `[n/m] …`).
    pub fn is_step(&self) -> bool {
        self.name.starts_with('[')
    }
}

/// Parsed `--progress=plain` output.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// The vertices in order of first appearance.
    pub vertices: Vec<Vertex>,
}

impl Progress {
    /// Parses plain progress; lines not starting with `#N ` are ignored.
    pub fn parse(text: &str) -> Progress {
        let mut progress = Progress::default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix('#') else {
                continue;
            };
            let Some((id, body)) = rest.split_once(' ') else {
                continue;
            };
            let Ok(id) = id.parse::<u32>() else {
                continue;
            };
            let idx = match progress.vertices.iter().position(|v| v.id == id) {
                Some(idx) => idx,
                None => {
                    progress.vertices.push(Vertex {
                        id,
                        name: String::new(),
                        lines: Vec::new(),
                        status: VertexStatus::Unfinished,
                    });
                    progress.vertices.len() - 1
                }
            };
            let vertex = &mut progress.vertices[idx];
            if body == "CACHED" {
                vertex.status = VertexStatus::Cached;
            } else if body == "DONE" || body.starts_with("DONE ") {
                vertex.status = VertexStatus::Done;
            } else if body.starts_with("ERROR") {
                vertex.status = VertexStatus::Error;
            } else if body.starts_with('[') && !vertex.name.starts_with('[') {
                // A step's name can follow lines about the layers it fetched first.
                let earlier = std::mem::replace(&mut vertex.name, body.to_owned());
                if !earlier.is_empty() {
                    vertex.lines.insert(0, earlier);
                }
            } else if vertex.name.is_empty() && vertex.lines.is_empty() && !is_sub_line(body) {
                vertex.name = body.to_owned();
            } else {
                vertex.lines.push(body.to_owned());
            }
        }
        progress
    }

    /// The Dockerfile steps that ran (ended `DONE`).
    pub fn executed_steps(&self) -> Vec<&str> {
        self.vertices
            .iter()
            .filter(|v| v.is_step() && v.status == VertexStatus::Done)
            .map(|v| v.name.as_str())
            .collect()
    }

    /// The Dockerfile steps that were cache hits.
    pub fn cached_steps(&self) -> Vec<&str> {
        self.vertices
            .iter()
            .filter(|v| v.is_step() && v.status == VertexStatus::Cached)
            .map(|v| v.name.as_str())
            .collect()
    }

    /// Every Dockerfile step shown.
    pub fn all_steps(&self) -> Vec<&str> {
        self.vertices
            .iter()
            .filter(|v| v.is_step())
            .map(|v| v.name.as_str())
            .collect()
    }
}

/// Lines that report work inside a vertex (`extracting sha256:…`), never its name.
fn is_sub_line(body: &str) -> bool {
    ["extracting ", "writing ", "preparing ", "sha256:"]
        .iter()
        .any(|prefix| body.starts_with(prefix))
}

/// What a finished `buildcache build` produced.
#[derive(Debug)]
pub struct BuildOutcome {
    /// Exit status, stdout and stderr.
    pub output: Output,
    /// The metadata file, when the build wrote one.
    pub metadata: Option<Value>,
}

impl BuildOutcome {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.output.status.success()
    }

    /// Its stderr (progress and errors).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Its stdout.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    /// Its plain progress (stdout and stderr, as the binary may write either).
    pub fn progress(&self) -> Progress {
        Progress::parse(&format!("{}\n{}", self.stderr(), self.stdout()))
    }

    /// The metadata; panics with the build's output when there is none.
    pub fn meta(&self) -> &Value {
        self.metadata.as_ref().unwrap_or_else(|| {
            panic!(
                "the build wrote no metadata file (status {}):\n{}",
                self.output.status,
                self.stderr()
            )
        })
    }

    /// Panics with the build's output unless it succeeded; returns `self` for chaining.
    pub fn assert_success(self) -> BuildOutcome {
        assert!(
            self.success(),
            "buildcache build failed ({}):\nstderr:\n{}\nstdout:\n{}",
            self.output.status,
            self.stderr(),
            self.stdout()
        );
        self
    }

    /// Panics unless it failed; returns its stderr.
    pub fn assert_failure(self) -> String {
        assert!(
            !self.success(),
            "buildcache build should have failed:\nstderr:\n{}",
            self.stderr()
        );
        self.stderr()
    }
}

/// Runs `buildcache build --progress=plain --root ROOT --metadata-file … ARGS… CONTEXT`.
pub fn build(context: &Path, root: &Path, args: &[&str]) -> BuildOutcome {
    let meta_dir = tempfile::tempdir().expect("creating a directory for the metadata file");
    let meta_path = meta_dir.path().join("metadata.json");
    let output = buildcache()
        .arg("build")
        .arg("--progress=plain")
        .arg("--root")
        .arg(root)
        .arg("--metadata-file")
        .arg(&meta_path)
        .args(args)
        .arg(context)
        .output()
        .expect("running buildcache");
    let metadata = meta_path.exists().then(|| read_metadata(&meta_path));
    BuildOutcome { output, metadata }
}

/// Like [`build`], panicking with the output unless the build succeeded.
pub fn build_ok(context: &Path, root: &Path, args: &[&str]) -> BuildOutcome {
    build(context, root, args).assert_success()
}

/// A path as `&str` (tests only use UTF-8 temporary paths).
pub fn s(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// The blob file of `digest` (`sha256:…`) in an OCI layout directory.
pub fn layout_blob(layout: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest
        .split_once(':')
        .unwrap_or_else(|| panic!("{digest:?} is not a digest"));
    layout.join("blobs").join(algorithm).join(hex)
}

/// One entry of a layer tar.
#[derive(Clone, Debug)]
pub struct TarEntry {
    /// Its path as stored (no leading `./`).
    pub path: String,
    /// Its tar type.
    pub kind: tar::EntryType,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Link target, for symlinks and hard links.
    pub link: Option<String>,
    /// Contents of regular files.
    pub data: Vec<u8>,
}

/// Decompresses a layer (gzip, zstd or plain tar, by magic bytes).
pub fn decompress(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .expect("a valid gzip layer");
    } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        out = zstd::decode_all(bytes).expect("a valid zstd layer");
    } else {
        out = bytes.to_vec();
    }
    out
}

/// The entries of a (possibly compressed) tar.
pub fn tar_entries(bytes: &[u8]) -> Vec<TarEntry> {
    let raw = decompress(bytes);
    let mut archive = tar::Archive::new(raw.as_slice());
    let mut entries = Vec::new();
    for entry in archive.entries().expect("a readable tar") {
        let mut entry = entry.expect("a readable tar entry");
        let header = entry.header().clone();
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = path.trim_start_matches("./").to_owned();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let mut data = Vec::new();
        if header.entry_type().is_file() {
            entry.read_to_end(&mut data).expect("reading a tar entry");
        }
        entries.push(TarEntry {
            path,
            kind: header.entry_type(),
            mode: header.mode().expect("a tar mode"),
            uid: header.uid().expect("a tar uid"),
            gid: header.gid().expect("a tar gid"),
            link,
            data,
        });
    }
    entries
}

/// The manifest of the image tagged `tag` (`org.opencontainers.image.ref.name`) in an OCI layout,
/// or of its only image when `tag` is `None`.
pub fn layout_manifest(layout: &Path, tag: Option<&str>) -> Value {
    let index = read_json(&layout.join("index.json"));
    let manifests = index["manifests"]
        .as_array()
        .expect("index.json has manifests");
    let desc = match tag {
        Some(tag) => manifests
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("no manifest tagged {tag:?} in {index:#}")),
        None => {
            assert_eq!(manifests.len(), 1, "expected one manifest in {index:#}");
            &manifests[0]
        }
    };
    read_json(&layout_blob(
        layout,
        desc["digest"].as_str().expect("a manifest digest"),
    ))
}

/// The layer entries of an image manifest in an OCI layout, one `Vec` per layer, in order.
pub fn image_layers(layout: &Path, manifest: &Value) -> Vec<Vec<TarEntry>> {
    manifest["layers"]
        .as_array()
        .expect("a manifest has layers")
        .iter()
        .map(|layer| {
            let digest = layer["digest"].as_str().expect("a layer digest");
            let path = layout_blob(layout, digest);
            let bytes =
                fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            tar_entries(&bytes)
        })
        .collect()
}

/// Writes an OCI image layout at `dir` holding one linux/amd64 image tagged `tag` whose layers
/// are `layers` (uncompressed tars) and whose config sets only `PATH`; returns the manifest digest.
pub fn write_layout_image(dir: &Path, tag: &str, layers: &[Vec<u8>]) -> String {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("creating the layout");
    let put = |bytes: &[u8]| -> String {
        let digest = cache_core::digest::sha256(bytes).to_string();
        fs::write(layout_blob(dir, &digest), bytes).expect("writing a blob");
        digest
    };
    let mut diff_ids = Vec::new();
    let mut layer_descs = Vec::new();
    // One history entry per layer, as every real image has.
    let history: Vec<Value> = (0..layers.len())
        .map(|idx| serde_json::json!({"created_by": format!("test layer {idx}")}))
        .collect();
    for layer in layers {
        let digest = put(layer);
        diff_ids.push(Value::from(digest.clone()));
        layer_descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest,
            "size": layer.len(),
        }));
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    let config_bytes = serde_json::to_vec(&config).expect("serializing a config");
    let config_digest = put(&config_bytes);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_bytes.len(),
        },
        "layers": layer_descs,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("serializing a manifest");
    let manifest_digest = put(&manifest_bytes);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("index"),
    )
    .expect("index");
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    manifest_digest
}

/// Extracts a tar file (`--output type=oci` writes one) into a new directory.
pub fn untar(tar_path: &Path, dest: &Path) {
    let file =
        fs::File::open(tar_path).unwrap_or_else(|e| panic!("opening {}: {e}", tar_path.display()));
    fs::create_dir_all(dest).unwrap_or_else(|e| panic!("creating {}: {e}", dest.display()));
    tar::Archive::new(file)
        .unpack(dest)
        .unwrap_or_else(|e| panic!("extracting {}: {e}", tar_path.display()));
}

/// A tag-safe string unique to this process and moment, for registry repositories and tags.
pub fn nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos();
    format!("{nanos:x}-{}", std::process::id())
}

/// The open registry under test (`CACHE_TEST_REGISTRY=127.0.0.1:PORT`), or `None` (skip) outside CI.
pub fn registry_under_test() -> Option<String> {
    match std::env::var("CACHE_TEST_REGISTRY") {
        Ok(addr) => Some(addr),
        Err(_) if is_ci() => panic!("CACHE_TEST_REGISTRY must be set on CI"),
        Err(_) => {
            eprintln!("skipping: CACHE_TEST_REGISTRY is not set");
            None
        }
    }
}

/// The access log of the open registry under test (`CACHE_TEST_REGISTRY_LOG`), or `None` (skip)
/// outside CI.
pub fn registry_log() -> Option<PathBuf> {
    match std::env::var_os("CACHE_TEST_REGISTRY_LOG") {
        Some(path) => Some(PathBuf::from(path)),
        None if is_ci() => panic!("CACHE_TEST_REGISTRY_LOG must be set on CI"),
        None => {
            eprintln!("skipping: CACHE_TEST_REGISTRY_LOG is not set");
            None
        }
    }
}

/// The Basic-auth registry under test.
#[derive(Clone)]
pub struct AuthRegistry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its user.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for AuthRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthRegistry")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The Basic-auth registry under test (`CACHE_TEST_REGISTRY_AUTH`, `_USER`, `_PASSWORD`), or `None`
/// (skip) outside CI.
pub fn auth_registry_under_test() -> Option<AuthRegistry> {
    let vars = (
        std::env::var("CACHE_TEST_REGISTRY_AUTH"),
        std::env::var("CACHE_TEST_REGISTRY_USER"),
        std::env::var("CACHE_TEST_REGISTRY_PASSWORD"),
    );
    match vars {
        (Ok(addr), Ok(user), Ok(password)) => Some(AuthRegistry {
            addr,
            user,
            password,
        }),
        _ if is_ci() => panic!(
            "CACHE_TEST_REGISTRY_AUTH, CACHE_TEST_REGISTRY_USER and CACHE_TEST_REGISTRY_PASSWORD \
             must be set on CI"
        ),
        _ => {
            eprintln!("skipping: CACHE_TEST_REGISTRY_AUTH is not set");
            None
        }
    }
}

/// What is left in `ROOT/tmp` once the background removal of finished builds' work directories
/// is over (each build hands its directory to a process that deletes it after the build
/// exits): waits up to a minute for the `build-*` entries to go.
pub fn work_dirs_left(root: &Path) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left: Vec<String> = fs::read_dir(root.join("tmp"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
