//! `cargo xtask llb-golden [--check]`: the ops BuildKit derives from each corpus Dockerfile.
//!
//! For every `cache-cli/tests/corpus/<name>/Dockerfile`, `dockerfile2llb | buildctl debug
//! dump-llb` (from `../shared/tools/buildkit`) writes `<name>/llb.jsonl`, one op per line.
//! `dockerfile2llb` resolves `FROM` through a registry, so a loopback registry serves a fixed
//! `busybox` image (one empty layer; config `Env` = the busybox base of the tests) and the
//! Dockerfile's `busybox` names point at it; the output is then normalized so that it does not
//! depend on the run (see [`normalize`]).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

use crate::services::{self, Lifetime};

/// The image name corpus Dockerfiles use for their base.
const BASE_NAME: &str = "busybox";

/// What the registry reference becomes in the golden files: the name `FROM busybox` means.
const NORMALIZED_REF: &str = "docker.io/library/busybox:latest";

/// `PATH` of the tests' busybox base (cache-cli/tests/it/support/buildkit.rs, `BASE_PATH_ENV`).
const BASE_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `local.unique` is random per `dockerfile2llb` run; the golden files hold this instead.
const NORMALIZED_UNIQUE: &str = "UNIQUE";

/// Regenerates (or, with `check`, verifies) every `llb.jsonl` of the corpus.
pub(crate) fn run(root: &Path, check: bool) -> anyhow::Result<()> {
    let Some(bin_dir) = services::buildkit::install(root)? else {
        anyhow::bail!(
            "../shared/tools/buildkit is absent: the golden files come from that BuildKit"
        );
    };
    services::ensure_tools()?;
    let run_dir = services::run_dir(&crate::services_dir(), "golden")?;
    let registries = services::start_registries(&run_dir, false, Lifetime::Owned)?;
    let registry = registries
        .addrs()
        .into_iter()
        .next()
        .expect("start_registries starts the open registry");
    let res = generate(root, &bin_dir, &run_dir, &registry, check);
    registries.stop()?;
    let _ = fs::remove_dir_all(&run_dir);
    res
}

fn generate(
    root: &Path,
    bin_dir: &Path,
    run_dir: &Path,
    registry: &str,
    check: bool,
) -> anyhow::Result<()> {
    push_base(run_dir, registry)?;
    let corpus = root.join("cache-cli/tests/corpus");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&corpus)
        .with_context(|| format!("reading {}", corpus.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|dir| dir.join("Dockerfile").is_file())
        .collect();
    dirs.sort();
    let mut stale = Vec::new();
    for dir in &dirs {
        let dockerfile = fs::read_to_string(dir.join("Dockerfile"))?;
        let target = target_of(dir)?;
        let raw = dump_llb(bin_dir, &point_at(&dockerfile, registry), target.as_deref())
            .with_context(|| format!("deriving the ops of {}", dir.display()))?;
        let golden = normalize(&raw, registry)?;
        let path = dir.join("llb.jsonl");
        let current = fs::read_to_string(&path).unwrap_or_default();
        if current != golden {
            if check {
                stale.push(path.display().to_string());
            } else {
                fs::write(&path, &golden).with_context(|| format!("writing {}", path.display()))?;
                eprintln!("xtask: wrote {}", path.display());
            }
        }
    }
    anyhow::ensure!(
        stale.is_empty(),
        "stale LLB golden files (run `cargo xtask llb-golden`):\n  {}",
        stale.join("\n  ")
    );
    eprintln!("xtask: {} LLB golden files are up to date", dirs.len());
    Ok(())
}

/// The `target` of `dir/options.json`, if any (build args cannot be given to `dockerfile2llb`:
/// the golden files hold the ops of the defaults).
fn target_of(dir: &Path) -> anyhow::Result<Option<String>> {
    let path = dir.join("options.json");
    let Ok(text) = fs::read_to_string(&path) else {
        return Ok(None);
    };
    let options: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(options["target"].as_str().map(str::to_owned))
}

/// `dockerfile2llb [-target T] < dockerfile | buildctl debug dump-llb`.
fn dump_llb(bin_dir: &Path, dockerfile: &str, target: Option<&str>) -> anyhow::Result<String> {
    let mut to_llb = Command::new(bin_dir.join("dockerfile2llb"));
    if let Some(target) = target {
        to_llb.arg("-target").arg(target);
    }
    let mut child = to_llb
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running dockerfile2llb")?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(dockerfile.as_bytes())?;
    let llb = child.wait_with_output()?;
    anyhow::ensure!(
        llb.status.success(),
        "dockerfile2llb failed with {}: {}",
        llb.status,
        String::from_utf8_lossy(&llb.stderr)
    );
    let mut dump = Command::new(bin_dir.join("buildctl"))
        .args(["debug", "dump-llb"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running buildctl debug dump-llb")?;
    dump.stdin
        .take()
        .expect("stdin is piped")
        .write_all(&llb.stdout)?;
    let json = dump.wait_with_output()?;
    anyhow::ensure!(
        json.status.success(),
        "buildctl debug dump-llb failed with {}: {}",
        json.status,
        String::from_utf8_lossy(&json.stderr)
    );
    Ok(String::from_utf8(json.stdout)?)
}

/// Points the Dockerfile's `busybox` image names (`FROM busybox`, `--from=busybox`, an `ARG`
/// default `=busybox`) at `registry/busybox`.
fn point_at(dockerfile: &str, registry: &str) -> String {
    let replacement = format!("{registry}/{BASE_NAME}");
    let mut out = String::with_capacity(dockerfile.len());
    for line in dockerfile.split_inclusive('\n') {
        let keyword = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let mut line = line.to_owned();
        if matches!(keyword.as_str(), "FROM" | "ARG" | "COPY" | "ADD") {
            for prefix in ["FROM ", "from ", "--from=", "="] {
                line = replace_word(
                    &line,
                    &format!("{prefix}{BASE_NAME}"),
                    &format!("{prefix}{replacement}"),
                );
            }
        }
        out.push_str(&line);
    }
    out
}

/// Replaces `word` where it is not followed by a name character.
fn replace_word(line: &str, word: &str, replacement: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(idx) = rest.find(word) {
        let after = &rest[idx + word.len()..];
        let whole = !after
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/'));
        out.push_str(&rest[..idx]);
        out.push_str(if whole { replacement } else { word });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Makes `dump-llb` output independent of the run:
/// - `REGISTRY/busybox:latest` (and the bare `REGISTRY/busybox`) becomes
///   `docker.io/library/busybox:latest` and `busybox`, as if `FROM busybox` had resolved to the
///   fixed image (its digest stays);
/// - `local.unique` (random per run) becomes `UNIQUE`, and progress group ids (random too, op
///   metadata only) become `group:N` in order of appearance;
/// - op digests (protobuf hashes, changed by the two rewrites above) become `op:N`, N being the
///   line of the op that produced it.
///
/// Each op stays one line (object keys sorted).
fn normalize(raw: &str, registry: &str) -> anyhow::Result<String> {
    let full = format!("{registry}/{BASE_NAME}:latest");
    let bare = format!("{registry}/{BASE_NAME}");
    let mut labels: HashMap<String, String> = HashMap::new();
    let mut groups: HashMap<String, String> = HashMap::new();
    let mut out = String::new();
    for (idx, line) in raw
        .lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
    {
        let mut op: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("dump-llb printed {line:?}"))?;
        if let Some(digest) = op["Digest"].as_str() {
            labels.insert(digest.to_owned(), format!("op:{idx}"));
        }
        rewrite_strings(&mut op, &mut |text| {
            let text = text
                .replace(&full, NORMALIZED_REF)
                .replace(&bare, BASE_NAME);
            labels.get(&text).cloned().unwrap_or(text)
        });
        if let Some(group) = op
            .pointer_mut("/OpMetadata/progress_group/id")
            .and_then(|id| Some((id.as_str()?.to_owned(), id)))
        {
            let n_groups = groups.len();
            let label = groups
                .entry(group.0)
                .or_insert_with(|| format!("group:{n_groups}"))
                .clone();
            *group.1 = serde_json::Value::from(label);
        }
        if let Some(unique) = op
            .pointer_mut("/Op/Op/source/attrs/local.unique")
            .filter(|value| value.is_string())
        {
            *unique = serde_json::Value::from(NORMALIZED_UNIQUE);
        }
        out.push_str(&serde_json::to_string(&op)?);
        out.push('\n');
    }
    Ok(out)
}

/// Applies `rewrite` to every string value (not key) of `value`.
fn rewrite_strings(value: &mut serde_json::Value, rewrite: &mut dyn FnMut(&str) -> String) {
    match value {
        serde_json::Value::String(text) => *text = rewrite(text),
        serde_json::Value::Array(items) => {
            for item in items {
                rewrite_strings(item, rewrite);
            }
        }
        serde_json::Value::Object(map) => {
            for (_, item) in map.iter_mut() {
                rewrite_strings(item, rewrite);
            }
        }
        _ => {}
    }
}

/// Pushes the fixed base image to `registry/busybox:latest` with its exact bytes.
fn push_base(run_dir: &Path, registry: &str) -> anyhow::Result<()> {
    let layout = run_dir.join("golden-base");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> anyhow::Result<String> {
        let path = blobs.join("incoming");
        fs::write(&path, bytes)?;
        let hex = sha256_file(&path)?;
        fs::rename(&path, blobs.join(&hex))?;
        Ok(format!("sha256:{hex}"))
    };
    // An empty tar: two zero blocks.
    let layer = vec![0u8; 1024];
    let layer_digest = put(&layer)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [BASE_PATH_ENV]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let config = serde_json::to_vec(&config)?;
    let config_digest = put(&config)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    }))?;
    let manifest_digest = put(&manifest)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let status = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{registry}/{BASE_NAME}:latest"))
        .status()
        .context("running skopeo (`cargo xtask deps` installs it)")?;
    anyhow::ensure!(
        status.success(),
        "skopeo copy of the golden base failed with {status}"
    );
    Ok(())
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let output = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("running sha256sum")?;
    anyhow::ensure!(
        output.status.success(),
        "sha256sum {} failed",
        path.display()
    );
    let text = String::from_utf8(output.stdout)?;
    Ok(text
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow::format_err!("sha256sum printed nothing"))?
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_names_point_at_the_registry() {
        let dockerfile = "ARG BASE=busybox\nFROM busybox AS b\nFROM ${BASE}\n\
                          COPY --from=busybox /bin/busybox /bin/busybox\nRUN busybox true\n\
                          FROM busybox-other\n";
        assert_eq!(
            point_at(dockerfile, "127.0.0.1:5"),
            "ARG BASE=127.0.0.1:5/busybox\nFROM 127.0.0.1:5/busybox AS b\nFROM ${BASE}\n\
             COPY --from=127.0.0.1:5/busybox /bin/busybox /bin/busybox\nRUN busybox true\n\
             FROM busybox-other\n"
        );
    }

    #[test]
    fn normalized_ops_do_not_depend_on_the_run() {
        let raw = r#"{"Op":{"Op":{"source":{"identifier":"docker-image://127.0.0.1:5/busybox:latest@sha256:ab"}}},"Digest":"sha256:11","OpMetadata":{"description":{"com.docker.dockerfile.v1.command":"FROM 127.0.0.1:5/busybox"}}}
{"Op":{"Op":{"source":{"identifier":"local://context","attrs":{"local.unique":"x7"}}}},"Digest":"sha256:22"}
{"Op":{"inputs":[{"digest":"sha256:11"},{"digest":"sha256:22"}],"Op":{"file":{}}},"Digest":"sha256:33"}
"#;
        let golden = normalize(raw, "127.0.0.1:5").expect("normalizes");
        let ops: Vec<serde_json::Value> = golden
            .lines()
            .map(|line| serde_json::from_str(line).expect("one op a line"))
            .collect();
        assert_eq!(
            ops[0],
            serde_json::json!({"Op":{"Op":{"source":{"identifier":"docker-image://docker.io/library/busybox:latest@sha256:ab"}}},"Digest":"op:0","OpMetadata":{"description":{"com.docker.dockerfile.v1.command":"FROM busybox"}}})
        );
        assert_eq!(
            ops[1],
            serde_json::json!({"Op":{"Op":{"source":{"identifier":"local://context","attrs":{"local.unique":"UNIQUE"}}}},"Digest":"op:1"})
        );
        assert_eq!(
            ops[2],
            serde_json::json!({"Op":{"inputs":[{"digest":"op:0"},{"digest":"op:1"}],"Op":{"file":{}}},"Digest":"op:2"})
        );
    }
}
