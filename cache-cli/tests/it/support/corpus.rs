//! The Dockerfile corpus of `cache-cli/tests/corpus` and the image views both tools are compared on.
//!
//! Each entry is a directory holding a `Dockerfile`, a `context/` and optionally `options.json`
//! (`{"build_args": {...}, "target": "..."}`) and `llb.jsonl` (the ops `dockerfile2llb` derives,
//! written by `cargo xtask llb-golden`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{TarEntry, layout_blob, read_json, tar_entries};

/// One corpus entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The directory name.
    pub name: String,
    /// The entry's directory (holds `Dockerfile`).
    pub dir: PathBuf,
    /// `--build-arg NAME=VALUE` pairs.
    pub build_args: Vec<(String, String)>,
    /// `--target`.
    pub target: Option<String>,
}

/// The corpus directory.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Every entry, sorted by name; `CORPUS_FILTER` (a substring) narrows it while debugging.
pub fn entries() -> Vec<Entry> {
    let filter = std::env::var("CORPUS_FILTER").unwrap_or_default();
    let mut entries: Vec<Entry> = fs::read_dir(corpus_dir())
        .expect("reading the corpus directory")
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|dir| dir.join("Dockerfile").is_file())
        .map(|dir| load(&dir))
        .filter(|entry| entry.name.contains(&filter))
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}

fn load(dir: &Path) -> Entry {
    let name = dir
        .file_name()
        .and_then(|name| name.to_str())
        .expect("corpus names are UTF-8")
        .to_owned();
    let options_path = dir.join("options.json");
    let options = if options_path.is_file() {
        read_json(&options_path)
    } else {
        Value::Null
    };
    let build_args = options["build_args"]
        .as_object()
        .map(|args| {
            args.iter()
                .map(|(name, value)| {
                    let value = value.as_str().expect("build args are strings");
                    (name.clone(), value.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let target = options["target"].as_str().map(str::to_owned);
    Entry {
        name,
        dir: dir.to_owned(),
        build_args,
        target,
    }
}

impl Entry {
    /// The Dockerfile's text.
    pub fn dockerfile(&self) -> String {
        fs::read_to_string(self.dir.join("Dockerfile")).expect("reading a corpus Dockerfile")
    }

    /// Copies the entry into `dest` (`Dockerfile` plus `context/`) with fixed modes (files 0644,
    /// or 0755 where executable; directories 0755), so a checkout's umask changes nothing.
    ///
    /// Returns the context directory; the Dockerfile sits beside it in `dest`.
    pub fn prepare(&self, dest: &Path) -> PathBuf {
        fs::create_dir_all(dest).expect("creating the entry's directory");
        fs::copy(self.dir.join("Dockerfile"), dest.join("Dockerfile")).expect("copying Dockerfile");
        let context = dest.join("context");
        copy_tree(&self.dir.join("context"), &context);
        context
    }

    /// The `buildcache build` arguments of its options (`--build-arg`, `--target`, `-f`).
    pub fn buildcache_args(&self, prepared: &Path) -> Vec<String> {
        let mut args = vec![
            "-f".to_owned(),
            prepared.join("Dockerfile").display().to_string(),
        ];
        for (name, value) in &self.build_args {
            args.push("--build-arg".to_owned());
            args.push(format!("{name}={value}"));
        }
        if let Some(target) = &self.target {
            args.push("--target".to_owned());
            args.push(target.clone());
        }
        args
    }
}

fn copy_tree(src: &Path, dest: &Path) {
    fs::create_dir_all(dest).expect("creating a context directory");
    fs::set_permissions(dest, fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut children: Vec<_> = fs::read_dir(src)
        .unwrap_or_else(|e| panic!("reading {}: {e}", src.display()))
        .map(|entry| entry.expect("a context entry"))
        .collect();
    children.sort_by_key(|entry| entry.file_name());
    for child in children {
        let name = child.file_name();
        if name == ".keep" {
            continue;
        }
        let from = child.path();
        let to = dest.join(&name);
        let kind = child.file_type().expect("a file type");
        if kind.is_symlink() {
            let target = fs::read_link(&from).expect("reading a symlink");
            std::os::unix::fs::symlink(target, &to).expect("making a symlink");
        } else if kind.is_dir() {
            copy_tree(&from, &to);
        } else {
            fs::copy(&from, &to).expect("copying a context file");
            let executable = fs::metadata(&from).expect("metadata").permissions().mode() & 0o111;
            let mode = if executable != 0 { 0o755 } else { 0o644 };
            fs::set_permissions(&to, fs::Permissions::from_mode(mode)).expect("chmod");
        }
    }
}

/// One path of an image's merged filesystem.
#[derive(Clone, PartialEq, Eq)]
pub struct Node {
    /// `dir`, `file`, `symlink`, or the tar type of anything else.
    pub kind: String,
    /// Permission bits, with setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Symlink target.
    pub link: Option<String>,
    /// Regular file contents.
    pub data: Vec<u8>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:o} {}:{}", self.kind, self.mode, self.uid, self.gid)?;
        if let Some(link) = &self.link {
            write!(f, " -> {link}")?;
        }
        if self.kind == "file" {
            write!(f, " {:?}", preview(&self.data))?;
        }
        Ok(())
    }
}

fn preview(data: &[u8]) -> String {
    if data.len() <= 40 && data.iter().all(|b| b.is_ascii() && *b != 0) {
        String::from_utf8_lossy(data).into_owned()
    } else {
        format!("{} bytes {}", data.len(), cache_core::digest::sha256(data))
    }
}

/// An image read from an OCI layout: its config and merged filesystem.
#[derive(Clone, Debug)]
pub struct Image {
    /// The image config JSON.
    pub config: Value,
    /// Path (no leading `/`) to node, after applying every layer with whiteouts.
    pub files: BTreeMap<String, Node>,
    /// How many layers the manifest lists.
    pub n_layers: usize,
}

/// Reads the only image of an OCI layout directory (`--output type=oci` extracted).
pub fn read_image(layout: &Path) -> Image {
    let index = read_json(&layout.join("index.json"));
    let mut desc = index["manifests"][0].clone();
    // BuildKit's OCI output may wrap the manifest in a nested index.
    let mut manifest = read_json(&layout_blob(
        layout,
        desc["digest"].as_str().expect("digest"),
    ));
    while manifest["manifests"].is_array() {
        desc = manifest["manifests"][0].clone();
        manifest = read_json(&layout_blob(
            layout,
            desc["digest"].as_str().expect("digest"),
        ));
    }
    let config = read_json(&layout_blob(
        layout,
        manifest["config"]["digest"]
            .as_str()
            .expect("a config digest"),
    ));
    let layers: Vec<Vec<TarEntry>> = manifest["layers"]
        .as_array()
        .expect("a manifest has layers")
        .iter()
        .map(|layer| {
            let path = layout_blob(layout, layer["digest"].as_str().expect("a layer digest"));
            tar_entries(&fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        })
        .collect();
    let n_layers = layers.len();
    let mut files = BTreeMap::new();
    for layer in layers {
        apply_layer(&mut files, layer);
    }
    Image {
        config,
        files,
        n_layers,
    }
}

fn apply_layer(files: &mut BTreeMap<String, Node>, layer: Vec<TarEntry>) {
    let clean = |path: &str| {
        path.trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned()
    };
    // Whiteouts apply to the layers below, whatever their position in this tar.
    for entry in &layer {
        let path = clean(&entry.path);
        let (parent, name) = match path.rsplit_once('/') {
            Some((parent, name)) => (format!("{parent}/"), name),
            None => (String::new(), path.as_str()),
        };
        if name == ".wh..wh..opq" {
            files.retain(|p, _| !(p.starts_with(&parent) && p.len() > parent.len()));
        } else if let Some(hidden) = name.strip_prefix(".wh.") {
            let gone = format!("{parent}{hidden}");
            let below = format!("{gone}/");
            files.retain(|p, _| *p != gone && !p.starts_with(&below));
        }
    }
    for entry in layer {
        let path = clean(&entry.path);
        let name = path.rsplit('/').next().unwrap_or(&path);
        if path.is_empty() || name.starts_with(".wh.") {
            continue;
        }
        let node = match entry.kind {
            tar::EntryType::Directory => Node {
                kind: "dir".to_owned(),
                mode: entry.mode & 0o7777,
                uid: entry.uid,
                gid: entry.gid,
                link: None,
                data: Vec::new(),
            },
            tar::EntryType::Symlink => Node {
                kind: "symlink".to_owned(),
                mode: 0o777,
                uid: entry.uid,
                gid: entry.gid,
                link: entry.link.clone(),
                data: Vec::new(),
            },
            // A hard link is the file it names (which tool writes which name first may differ).
            tar::EntryType::Link => {
                let target = clean(entry.link.as_deref().unwrap_or_default());
                match files.get(&target) {
                    Some(node) => node.clone(),
                    None => panic!("hard link {path} to {target}, which is not in the image"),
                }
            }
            kind if kind.is_file() => Node {
                kind: "file".to_owned(),
                mode: entry.mode & 0o7777,
                uid: entry.uid,
                gid: entry.gid,
                link: None,
                data: entry.data,
            },
            other => Node {
                kind: format!("{other:?}"),
                mode: entry.mode & 0o7777,
                uid: entry.uid,
                gid: entry.gid,
                link: None,
                data: Vec::new(),
            },
        };
        if node.kind != "dir" {
            // A non-directory replaces whatever was there, children included.
            let below = format!("{path}/");
            files.retain(|p, _| !p.starts_with(&below));
        }
        files.insert(path, node);
    }
}

/// The config fields both tools must agree on, as `(name, value)`.
pub fn config_fields(config: &Value) -> Vec<(&'static str, Value)> {
    let inner = &config["config"];
    let mut fields: Vec<(&'static str, Value)> = [
        "Env",
        "Cmd",
        "Entrypoint",
        "WorkingDir",
        "User",
        "Labels",
        "ExposedPorts",
        "StopSignal",
        "Volumes",
        "Shell",
        "Healthcheck",
    ]
    .into_iter()
    .map(|name| (name, normalize_empty(&inner[name])))
    .collect();
    fields.push(("architecture", config["architecture"].clone()));
    fields.push(("os", config["os"].clone()));
    let history: Vec<Value> = config["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| {
            serde_json::json!({
                "created_by": entry["created_by"],
                "comment": entry["comment"],
                "empty_layer": entry["empty_layer"].as_bool().unwrap_or(false),
            })
        })
        .collect();
    fields.push(("history", Value::from(history)));
    fields
}

/// `null`, `""`, `[]` and `{}` mean the same in an image config.
fn normalize_empty(value: &Value) -> Value {
    match value {
        Value::String(text) if text.is_empty() => Value::Null,
        Value::Array(items) if items.is_empty() => Value::Null,
        Value::Object(map) if map.is_empty() => Value::Null,
        other => other.clone(),
    }
}

/// Every difference between BuildKit's image (`expected`) and ours (`actual`), one line each.
pub fn differences(expected: &Image, actual: &Image) -> Vec<String> {
    let mut out = Vec::new();
    let expected_fields = config_fields(&expected.config);
    let actual_fields = config_fields(&actual.config);
    for ((name, want), (_, got)) in expected_fields.iter().zip(&actual_fields) {
        if want == got {
            continue;
        }
        match (want.as_array(), got.as_array()) {
            // History: one line per entry that differs.
            (Some(want), Some(got)) => {
                for idx in 0..want.len().max(got.len()) {
                    let (want, got) = (want.get(idx), got.get(idx));
                    if want != got {
                        out.push(format!(
                            "config {name}[{idx}]: buildkit {} / buildcache {}",
                            want.unwrap_or(&Value::Null),
                            got.unwrap_or(&Value::Null)
                        ));
                    }
                }
            }
            _ => out.push(format!("config {name}: buildkit {want} / buildcache {got}")),
        }
    }
    if expected.n_layers != actual.n_layers {
        out.push(format!(
            "layers: buildkit {} / buildcache {}",
            expected.n_layers, actual.n_layers
        ));
    }
    let paths: BTreeSet<&String> = expected.files.keys().chain(actual.files.keys()).collect();
    for path in paths {
        match (expected.files.get(path), actual.files.get(path)) {
            (Some(want), Some(got)) if want != got => {
                out.push(format!("/{path}: buildkit {want:?} / buildcache {got:?}"));
            }
            (Some(want), None) => out.push(format!("/{path}: only in buildkit ({want:?})")),
            (None, Some(got)) => out.push(format!("/{path}: only in buildcache ({got:?})")),
            _ => {}
        }
    }
    out
}
