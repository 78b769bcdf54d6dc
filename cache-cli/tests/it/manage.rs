//! Cache management tests of the buildcache binary: `cache du`, `prune`, `verify` and `copy` on
//! BuildKit's fixtures, on damaged directories, between backends and back into a build.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{
    self, build_ok, buildcache, busybox_context, count_cached, s, uncached_steps,
};

/// The BuildKit fixtures directory, or `None` (skip; a failure on CI) when absent.
fn fixtures_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("BUILDCACHE_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/buildkit"),
    };
    if dir.join("local-min").is_dir() {
        return Some(dir);
    }
    support::missing(&format!(
        "BuildKit fixtures not found at {} (set BUILDCACHE_FIXTURES)",
        dir.display()
    ))
}

/// The loopback registry under test (`CACHE_TEST_REGISTRY=host:port`), or `None` (skip; a
/// failure on CI).
fn registry() -> Option<String> {
    match std::env::var("CACHE_TEST_REGISTRY") {
        Ok(addr) => Some(addr),
        Err(_) => support::missing("CACHE_TEST_REGISTRY is not set (cargo xtask registry up)"),
    }
}

/// A writable copy of fixture `name` (the originals are read-only).
fn copy_fixture(fixtures: &Path, name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = fixtures.join(name);
    for file in ["oci-layout", "index.json"] {
        fs::copy(src.join(file), dir.path().join(file)).expect("copy");
    }
    fs::create_dir_all(dir.path().join("blobs/sha256")).expect("mkdir");
    for entry in fs::read_dir(src.join("blobs/sha256")).expect("read_dir") {
        let path = entry.expect("entry").path();
        let target = dir
            .path()
            .join("blobs/sha256")
            .join(path.file_name().expect("name"));
        fs::write(&target, fs::read(&path).expect("read")).expect("write");
    }
    dir
}

/// Blob file names and sizes of a layout.
fn blobs(dir: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = fs::read_dir(dir.join("blobs/sha256"))
        .expect("read_dir")
        .map(|e| {
            let path = e.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            (name, fs::metadata(&path).expect("metadata").len())
        })
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    out.sort();
    out
}

/// Runs `buildcache cache ARGS…`; returns (success, stdout, stderr).
fn cache(args: &[&str]) -> (bool, String, String) {
    let output = buildcache()
        .arg("cache")
        .args(args)
        .output()
        .expect("running buildcache");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs `buildcache cache ARGS… --format json`, which must succeed, and parses its stdout.
fn cache_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let (ok, stdout, stderr) = cache(&all);
    assert!(ok, "buildcache cache {args:?} failed:\n{stderr}\n{stdout}");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}):\n{stdout}"))
}

/// The layer blob of a layout's `latest` manifest with the smallest size, and the biggest.
fn small_and_big_layers(dir: &Path) -> (String, String) {
    let index = support::read_json(&dir.join("index.json"));
    let digest = index["manifests"][0]["digest"].as_str().expect("digest");
    let manifest = support::read_json(&support::layout_blob(dir, digest));
    let mut layers: Vec<(u64, String)> = manifest["layers"]
        .as_array()
        .or_else(|| manifest["manifests"].as_array())
        .expect("layers")
        .iter()
        .filter(|l| l["mediaType"] != "application/vnd.buildkit.cacheconfig.v0")
        .map(|l| {
            (
                l["size"].as_u64().expect("size"),
                l["digest"].as_str().expect("digest").to_owned(),
            )
        })
        .collect();
    layers.sort();
    (
        layers.first().expect("layers").1.clone(),
        layers.last().expect("layers").1.clone(),
    )
}

#[test]
fn du_verify_and_prune_on_buildkit_fixtures() {
    let Some(fixtures) = fixtures_dir() else {
        return;
    };
    for name in ["local-min", "local-max", "local-max-legacy-index"] {
        let dir = copy_fixture(&fixtures, name);
        let path = s(dir.path());
        let files = blobs(dir.path());
        let total: u64 = files.iter().map(|(_, size)| size).sum();

        let du = cache_json(&["du", path]);
        assert_eq!(du["live_bytes"], total, "{name}: {du}");
        assert_eq!(du["live_blobs"], files.len(), "{name}");
        assert_eq!(du["orphaned_bytes"], 0, "{name}");
        assert_eq!(du["tags"][0]["tag"], "latest");
        assert_eq!(du["tags"][0]["bytes"], total);
        let (ok, text, _) = cache(&["du", path]);
        assert!(ok);
        assert!(text.contains("tag latest"), "{text}");
        assert!(text.contains(&format!("{total} bytes")), "{text}");

        let verified = cache_json(&["verify", &format!("type=local,src={path}")]);
        assert_eq!(verified["ok"], true, "{name}: {verified}");
        let report = &verified["caches"][0];
        assert_eq!(report["blobs_checked"], files.len(), "{name}: {verified}");
        assert_eq!(report["bytes_checked"], total, "{name}");
        assert_eq!(report["incomplete_results"], 0);
        assert!(report["results"].as_u64().expect("results") > 0);

        let dry = cache_json(&["prune", path, "--dry-run"]);
        assert_eq!(dry["freed_bytes"], 0, "{name}: nothing to prune: {dry}");
        assert_eq!(dry["bytes_before"], total);
        assert_eq!(dry["bytes_after"], total);
        let pruned = cache_json(&["prune", path]);
        assert_eq!(pruned["freed_bytes"], 0, "{name}: {pruned}");
        assert_eq!(blobs(dir.path()), files, "{name}: prune kept every blob");
    }
}

#[test]
fn damaged_directories_are_reported_and_pruned() {
    let Some(fixtures) = fixtures_dir() else {
        return;
    };
    for name in ["local-min", "local-max", "local-max-legacy-index"] {
        let dir = copy_fixture(&fixtures, name);
        let path = s(dir.path());
        let files = blobs(dir.path());
        let total: u64 = files.iter().map(|(_, size)| size).sum();
        let (small, big) = small_and_big_layers(dir.path());
        let big_size = fs::metadata(support::layout_blob(dir.path(), &big))
            .expect("big layer")
            .len();
        // Corrupt a layer (same size, other bytes), delete another, add two orphans.
        let small_path = support::layout_blob(dir.path(), &small);
        let mut bytes = fs::read(&small_path).expect("read");
        bytes[0] ^= 0xff;
        fs::write(&small_path, &bytes).expect("corrupt");
        fs::remove_file(support::layout_blob(dir.path(), &big)).expect("delete");
        let orphans: [&[u8]; 2] = [b"first orphan", b"second, longer orphan"];
        let orphan_bytes: u64 = orphans.iter().map(|o| o.len() as u64).sum();
        let mut orphan_paths = Vec::new();
        for orphan in orphans {
            let digest = format!("sha256:{}", sha256_hex(orphan));
            let orphan_path = support::layout_blob(dir.path(), &digest);
            fs::write(&orphan_path, orphan).expect("orphan");
            orphan_paths.push(orphan_path);
        }

        let du = cache_json(&["du", path]);
        assert_eq!(du["live_bytes"], total - big_size, "{name}: {du}");
        assert_eq!(du["orphaned_blobs"], 2, "{name}");
        assert_eq!(du["orphaned_bytes"], orphan_bytes, "{name}");
        assert_eq!(du["missing"], serde_json::json!([big]), "{name}");

        let (ok, stdout, stderr) = cache(&["verify", path]);
        assert!(!ok, "{name}: verify must fail:\n{stdout}");
        assert!(stdout.contains("BROKEN"), "{stdout}");
        assert!(
            stdout.contains(&format!("blob {big} is missing")),
            "{name}:\n{stdout}"
        );
        assert!(
            stdout.contains(&format!("blob {small} is corrupt")),
            "{name}:\n{stdout}"
        );
        assert!(stderr.contains("2 problems found"), "{stderr}");
        let (_, json, _) = cache(&["verify", path, "--format", "json"]);
        let json: Value = serde_json::from_str(&json).expect("json");
        assert_eq!(json["ok"], false);
        assert!(json["caches"][0]["incomplete_results"].as_u64().expect("n") > 0);

        let dry = cache_json(&["prune", path, "--dry-run"]);
        assert_eq!(dry["freed_bytes"], orphan_bytes, "{name}: {dry}");
        assert_eq!(dry["freed_blobs"], 2);
        assert_eq!(dry["orphaned_bytes"], orphan_bytes);
        assert!(
            orphan_paths.iter().all(|p| p.exists()),
            "a dry run deletes nothing"
        );
        let (ok, text, _) = cache(&["prune", path]);
        assert!(ok);
        assert!(
            text.contains(&format!(
                "freed {} B ({orphan_bytes} bytes) in 2 blobs",
                orphan_bytes
            )),
            "{text}"
        );
        assert!(orphan_paths.iter().all(|p| !p.exists()));
        assert_eq!(blobs(dir.path()).len(), files.len() - 1, "{name}");
        let du = cache_json(&["du", path]);
        assert_eq!(du["orphaned_bytes"], 0);
    }
}

/// Lowercase hex SHA-256 of `bytes`, by the system's `sha256sum`.
fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils) runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)[..64].to_owned()
}

#[test]
fn prune_to_a_budget_keeps_a_valid_cache() {
    let Some(fixtures) = fixtures_dir() else {
        return;
    };
    for name in ["local-max", "local-max-legacy-index"] {
        let dir = copy_fixture(&fixtures, name);
        let path = s(dir.path());
        let total: u64 = blobs(dir.path()).iter().map(|(_, size)| size).sum();
        let budget = (total - 1).to_string();
        let dry = cache_json(&["prune", path, "--max-size", &budget, "--dry-run"]);
        let pruned = cache_json(&["prune", path, "--max-size", &budget]);
        assert_eq!(pruned["trimmed"][0]["tag"], "latest", "{name}: {pruned}");
        assert!(pruned["freed_bytes"].as_u64().expect("freed") > 0);
        assert!(pruned["bytes_after"].as_u64().expect("after") < total);
        assert_eq!(dry["bytes_after"], pruned["bytes_after"], "{name}");
        assert_eq!(dry["freed_blobs"], pruned["freed_blobs"], "{name}");
        let verified = cache_json(&["verify", path]);
        assert_eq!(verified["ok"], true, "{name}: {verified}");
        let after: u64 = blobs(dir.path()).iter().map(|(_, size)| size).sum();
        assert_eq!(Value::from(after), pruned["bytes_after"]);
        // A budget in units; an age nothing is older than changes nothing more.
        let again = cache_json(&["prune", path, "--max-size", "1GB", "--older-than", "3650d"]);
        assert_eq!(again["freed_bytes"], 0, "{again}");
    }
}

#[test]
fn prune_refuses_registries_and_bad_values() {
    let (ok, _, stderr) = cache(&["prune", "type=registry,ref=127.0.0.1:9/app:cache"]);
    assert!(!ok);
    assert!(stderr.contains("local cache directories only"), "{stderr}");
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, _, stderr) = cache(&["prune", s(dir.path()), "--max-size", "10XB"]);
    assert!(!ok);
    assert!(stderr.contains("invalid size unit"), "{stderr}");
    let (ok, _, stderr) = cache(&["prune", s(dir.path()), "--older-than", "7"]);
    assert!(!ok);
    assert!(stderr.contains("duration"), "{stderr}");
    let (ok, _, stderr) = cache(&["du", s(dir.path())]);
    assert!(!ok, "an empty directory is not a cache");
    assert!(stderr.contains("oci-layout"), "{stderr}");
}

#[test]
fn copy_between_local_directories_moves_only_missing_blobs() {
    let Some(fixtures) = fixtures_dir() else {
        return;
    };
    let dest = tempfile::tempdir().expect("tempdir");
    let dest_path = s(dest.path());
    let from = format!("type=local,src={}", s(&fixtures.join("local-max")));
    let to = format!("type=local,dest={dest_path},tag=copied");
    let first = cache_json(&["copy", &from, &to]);
    let n_blobs = blobs(&fixtures.join("local-max")).len() as u64;
    // Layers and config are sent; the manifest is written with the tag.
    assert_eq!(first["blobs_copied"], n_blobs - 1, "{first}");
    assert_eq!(first["blobs_present"], 0);
    let verified = cache_json(&["verify", &format!("type=local,src={dest_path},tag=copied")]);
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(
        verified["caches"][0]["manifest"],
        support::read_json(&fixtures.join("local-max/index.json"))["manifests"][0]["digest"],
        "the manifest is copied byte for byte"
    );
    let second = cache_json(&["copy", &from, &to]);
    assert_eq!(second["blobs_copied"], 0, "{second}");
    assert_eq!(second["blobs_present"], n_blobs - 1);
    // A second source into another tag shares the base layer.
    let min = format!("type=local,src={}", s(&fixtures.join("local-min")));
    let third = cache_json(&[
        "copy",
        &min,
        &format!("type=local,dest={dest_path},tag=min"),
    ]);
    assert!(
        third["blobs_present"].as_u64().expect("present") >= 1,
        "{third}"
    );
    let (ok, stdout, _) = cache(&["verify", dest_path]);
    assert!(!ok, "there is no tag latest");
    assert!(
        stdout.contains("tags in this directory: copied, min"),
        "{stdout}"
    );
    let all = cache_json(&["verify", dest_path, "--all-tags"]);
    assert_eq!(all["ok"], true, "{all}");
    assert_eq!(all["caches"].as_array().expect("caches").len(), 2);
}

#[test]
fn copy_of_an_incomplete_cache_writes_no_tag() {
    let Some(fixtures) = fixtures_dir() else {
        return;
    };
    let src = copy_fixture(&fixtures, "local-min");
    let (_, big) = small_and_big_layers(src.path());
    fs::remove_file(support::layout_blob(src.path(), &big)).expect("delete");
    let dest = tempfile::tempdir().expect("tempdir");
    let (ok, _, stderr) = cache(&["copy", s(src.path()), s(dest.path())]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("blob {big} is missing")),
        "{stderr}"
    );
    assert!(
        !dest.path().join("index.json").exists(),
        "no tag names an incomplete copy"
    );
}

#[test]
fn copy_local_to_registry_and_back() {
    let Some(fixtures) = fixtures_dir() else {
        return;
    };
    let Some(addr) = registry() else {
        return;
    };
    let unique = std::process::id();
    for name in ["local-min", "local-max", "local-max-legacy-index"] {
        let from = format!("type=local,src={}", s(&fixtures.join(name)));
        let repo = format!("{addr}/manage-copy-{unique}-{name}:cache");
        let up = cache_json(&["copy", &from, &repo]);
        assert_eq!(up["blobs_present"], 0, "{name}: {up}");
        let verified = cache_json(&["verify", &repo]);
        assert_eq!(verified["ok"], true, "{name}: {verified}");
        let du = cache_json(&["du", &repo]);
        assert!(du["live_bytes"].as_u64().expect("live") > 1_000_000, "{du}");
        // Again: nothing moves.
        let again = cache_json(&["copy", &from, &repo]);
        assert_eq!(again["blobs_copied"], 0, "{name}: {again}");
        // Registry to registry on the same host: mounted, not sent.
        let other = format!("{addr}/manage-copy-{unique}-{name}-mounted:cache");
        let mounted = cache_json(&["copy", &repo, &other]);
        assert_eq!(mounted["blobs_copied"], 0, "{name}: {mounted}");
        assert!(mounted["blobs_mounted"].as_u64().expect("mounted") > 0);
        assert_eq!(cache_json(&["verify", &other])["ok"], true);
        // And back down into a local directory.
        let down_dir = tempfile::tempdir().expect("tempdir");
        let down = cache_json(&["copy", &other, s(down_dir.path())]);
        assert!(down["blobs_copied"].as_u64().expect("copied") > 0, "{down}");
        let verified = cache_json(&["verify", s(down_dir.path())]);
        assert_eq!(verified["ok"], true, "{name}: {verified}");
        assert_eq!(
            verified["caches"][0]["manifest"],
            support::read_json(&fixtures.join(name).join("index.json"))["manifests"][0]["digest"],
            "{name}: the manifest is the same bytes after two copies"
        );
        let du = cache_json(&["du", s(down_dir.path())]);
        assert_eq!(du["orphaned_bytes"], 0);
        assert_eq!(
            du["live_bytes"],
            blobs(&fixtures.join(name))
                .iter()
                .map(|(_, size)| size)
                .sum::<u64>()
        );
    }
}

const DOCKERFILE: &str = r#"FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /out && echo built > /out/a.txt

FROM base AS final
COPY app.conf /etc/app.conf
RUN cat /etc/app.conf /out/a.txt > /out/b.txt
"#;

#[test]
fn a_cache_copied_through_a_registry_serves_every_step() {
    let Some(addr) = registry() else {
        return;
    };
    let Some(ctx) = busybox_context(DOCKERFILE) else {
        return;
    };
    ctx.write("app.conf", "port = 1\n");
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let cold_root = tempfile::tempdir().expect("tempdir");
    let cold = build_ok(
        ctx.path(),
        cold_root.path(),
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=max", s(cache_dir.path())),
        ],
    );
    let n_steps = support::steps(cold.meta()).len();
    assert!(n_steps >= 4, "{:?}", cold.meta());
    assert_eq!(cache_json(&["verify", s(cache_dir.path())])["ok"], true);

    let repo = format!("{addr}/manage-build-{}:cache", std::process::id());
    cache_json(&["copy", s(cache_dir.path()), &repo]);
    let back = tempfile::tempdir().expect("tempdir");
    cache_json(&["copy", &repo, s(back.path())]);
    assert_eq!(cache_json(&["verify", s(back.path())])["ok"], true);

    let warm_root = tempfile::tempdir().expect("tempdir");
    let warm = build_ok(
        ctx.path(),
        warm_root.path(),
        &[
            "--cache-from",
            &format!("type=local,src={}", s(back.path())),
        ],
    );
    assert_eq!(
        uncached_steps(warm.meta()),
        Vec::<String>::new(),
        "every step is cached:\n{}",
        warm.stderr()
    );
    assert_eq!(count_cached(warm.meta()), n_steps);
}

/// Sum of the blob file sizes of a layout.
fn blob_total(dir: &Path) -> u64 {
    blobs(dir).iter().map(|(_, size)| size).sum()
}

#[test]
fn twenty_builds_into_one_directory_stay_bounded() {
    let Some(ctx) = busybox_context(DOCKERFILE) else {
        return;
    };
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let dest = s(cache_dir.path()).to_owned();
    let root = tempfile::tempdir().expect("tempdir");
    ctx.write("app.conf", "stable\n");
    build_ok(
        ctx.path(),
        root.path(),
        &[
            "--cache-to",
            &format!("type=local,dest={dest},tag=stable,mode=max"),
        ],
    );
    let mut grown_without_gc = 0u64;
    let mut manifests = std::collections::HashSet::new();
    for round in 0..20 {
        ctx.write("app.conf", &format!("round {round}\n"));
        build_ok(
            ctx.path(),
            root.path(),
            &[
                "--cache-to",
                &format!("type=local,dest={dest},tag=main,mode=max"),
            ],
        );
        let du = cache_json(&["du", &dest]);
        let tags = du["tags"].as_array().expect("tags");
        assert_eq!(tags.len(), 2, "{du}");
        // One export per tag, shared blobs counted once: the directory is at most that.
        let per_tag: u64 = tags
            .iter()
            .map(|t| t["bytes"].as_u64().expect("bytes"))
            .sum();
        let on_disk = blob_total(cache_dir.path());
        assert!(
            on_disk <= per_tag,
            "round {round}: {on_disk} bytes on disk, more than one export per tag ({per_tag})"
        );
        assert_eq!(du["orphaned_blobs"], 0, "round {round}: {du}");
        let main = tags.iter().find(|t| t["tag"] == "main").expect("main");
        grown_without_gc += main["unique_bytes"].as_u64().expect("unique bytes");
        manifests.insert(main["manifest"].as_str().expect("manifest").to_owned());
    }
    let on_disk = blob_total(cache_dir.path());
    eprintln!(
        "20 builds: {on_disk} bytes on disk; without collection the rounds' own blobs would \
         add {grown_without_gc} bytes"
    );
    assert_eq!(manifests.len(), 20, "every round exported another cache");
    let verified = cache_json(&["verify", &dest, "--all-tags"]);
    assert_eq!(verified["ok"], true, "{verified}");
    for (tag, conf) in [("stable", "stable\n"), ("main", "round 19\n")] {
        ctx.write("app.conf", conf);
        let fresh_root = tempfile::tempdir().expect("tempdir");
        let warm = build_ok(
            ctx.path(),
            fresh_root.path(),
            &["--cache-from", &format!("type=local,src={dest},tag={tag}")],
        );
        assert_eq!(
            uncached_steps(warm.meta()),
            Vec::<String>::new(),
            "tag {tag} serves every step:\n{}",
            warm.stderr()
        );
    }
}

#[test]
fn four_concurrent_builds_export_into_one_directory() {
    let Some(_) = support::busybox_path() else {
        return;
    };
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let dest = s(cache_dir.path()).to_owned();
    let jobs: Vec<_> = (0..4)
        .map(|n| {
            let dest = dest.clone();
            std::thread::spawn(move || {
                let ctx = busybox_context(DOCKERFILE).expect("busybox");
                let root = tempfile::tempdir().expect("tempdir");
                for round in 0..2 {
                    ctx.write("app.conf", &format!("job {n} round {round}\n"));
                    build_ok(
                        ctx.path(),
                        root.path(),
                        &[
                            "--cache-to",
                            &format!("type=local,dest={dest},tag=job{n},mode=max"),
                        ],
                    );
                }
                ctx
            })
        })
        .collect();
    let contexts: Vec<_> = jobs
        .into_iter()
        .map(|job| job.join().expect("build thread"))
        .collect();
    let verified = cache_json(&["verify", &dest, "--all-tags"]);
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["caches"].as_array().expect("caches").len(), 4);
    let du = cache_json(&["du", &dest]);
    assert_eq!(du["orphaned_blobs"], 0, "the last build collected: {du}");
    for (n, ctx) in contexts.iter().enumerate() {
        let fresh_root = tempfile::tempdir().expect("tempdir");
        let warm = build_ok(
            ctx.path(),
            fresh_root.path(),
            &["--cache-from", &format!("type=local,src={dest},tag=job{n}")],
        );
        assert_eq!(
            uncached_steps(warm.meta()),
            Vec::<String>::new(),
            "tag job{n} serves every step:\n{}",
            warm.stderr()
        );
    }
}

/// Issue 15: a cache over a config limit is a clear `cache verify` failure and, for a build's
/// import, one warning and no cache; raising the limit takes it again.
#[test]
fn issue_15_config_limits_refuse_a_cache_with_the_limit_and_the_flag() {
    let Some(ctx) =
        busybox_context("FROM scratch\nCOPY busybox /bin/busybox\nCOPY app.conf /etc/app.conf\n")
    else {
        return;
    };
    ctx.write("app.conf", "port = 1\n");
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let path = s(cache_dir.path());
    let cold_root = tempfile::tempdir().expect("tempdir");
    build_ok(
        ctx.path(),
        cold_root.path(),
        &["--cache-to", &format!("type=local,dest={path},mode=max")],
    );
    for (limit, expected) in [
        (
            "config-records=1",
            "records, more than the config-records limit of 1; raise it with --limit config-records=N",
        ),
        (
            "config-layers=1",
            "layers, more than the config-layers limit of 1; raise it with --limit config-layers=N",
        ),
        (
            "config-size=64",
            "bytes, more than the config-size limit of 64; raise it with --limit config-size=N",
        ),
    ] {
        let (ok, stdout, stderr) = cache(&["verify", path, "--limit", limit]);
        assert!(!ok, "{limit}: verify must fail:\n{stdout}");
        assert!(
            stdout.contains(expected) && stdout.contains(&format!("from oci-layout {path} has")),
            "{limit}:\n{stdout}\n{stderr}"
        );
        let warm_root = tempfile::tempdir().expect("tempdir");
        let warm = build_ok(
            ctx.path(),
            warm_root.path(),
            &[
                "--cache-from",
                &format!("type=local,src={path}"),
                "--limit",
                limit,
            ],
        );
        assert_eq!(count_cached(warm.meta()), 0, "{limit}:\n{}", warm.stderr());
        assert!(
            warm.stderr().contains(expected),
            "{limit}:\n{}",
            warm.stderr()
        );
    }
    let verified = cache_json(&["verify", path, "--limit", "config-records=100"]);
    assert_eq!(verified["ok"], true, "{verified}");
}
