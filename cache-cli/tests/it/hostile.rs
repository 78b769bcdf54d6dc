//! Hostile caches: a cache layer that cannot be unpacked safely (escaping names and links, an
//! escaping whiteout, a sparse entry, garbage, a bomb past `--limit`) is one warning and a
//! miss, for steps and for outputs alike; the same layer in a `FROM` image is an error.

use std::fs;
use std::path::Path;

use serde_json::Value;
use tar::EntryType;

use crate::support::{build, build_ok, layout_blob, read_json, s, write_layout_image};

/// One hand-made tar entry; names are written raw so that malicious ones survive.
fn entry(name: &str, kind: EntryType, link: &str, data: &[u8]) -> Vec<u8> {
    let mut header = if kind == EntryType::GNUSparse {
        tar::Header::new_gnu()
    } else {
        tar::Header::new_ustar()
    };
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header.set_size(data.len() as u64);
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn tar_gz(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut tar = entries.concat();
    tar.extend_from_slice(&[0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

/// Every string equal to `from` in `value` becomes `to`; every descriptor of `to` gets `size`.
fn swap(value: &mut Value, from: &str, to: &str, size: usize) {
    match value {
        Value::String(text) if text == from => *text = to.to_owned(),
        Value::Array(items) => items.iter_mut().for_each(|v| swap(v, from, to, size)),
        Value::Object(map) => {
            map.values_mut().for_each(|v| swap(v, from, to, size));
            if map.get("digest").and_then(Value::as_str) == Some(to) && map.contains_key("size") {
                map.insert("size".into(), size.into());
            }
        }
        _ => {}
    }
}

fn put(cache: &Path, value: &Value) -> (String, usize) {
    let bytes = serde_json::to_vec(value).unwrap();
    let digest = cache_core::digest::sha256(&bytes).to_string();
    fs::write(layout_blob(cache, &digest), &bytes).unwrap();
    (digest, bytes.len())
}

/// Replaces layer `old` of the local cache `cache` by `blob`, rewriting its config, manifest and
/// index.json as an attacker with write access would; returns the new layer digest.
fn poison(cache: &Path, old: &str, blob: &[u8]) -> String {
    let new = cache_core::digest::sha256(blob).to_string();
    fs::write(layout_blob(cache, &new), blob).unwrap();
    let mut index = read_json(&cache.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let mut manifest = read_json(&layout_blob(cache, &manifest_digest));
    let config_digest = [&manifest["config"]]
        .into_iter()
        .chain(manifest["manifests"].as_array().into_iter().flatten())
        .find(|d| {
            d["mediaType"]
                .as_str()
                .unwrap_or("")
                .contains("cacheconfig")
        })
        .and_then(|d| d["digest"].as_str())
        .expect("the manifest names its cache config")
        .to_owned();
    let mut config = read_json(&layout_blob(cache, &config_digest));
    swap(&mut config, old, &new, blob.len());
    let (new_config, config_size) = put(cache, &config);
    swap(&mut manifest, old, &new, blob.len());
    swap(&mut manifest, &config_digest, &new_config, config_size);
    let (new_manifest, manifest_size) = put(cache, &manifest);
    swap(&mut index, &manifest_digest, &new_manifest, manifest_size);
    fs::write(
        cache.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    new
}

/// The layer of the local cache `cache` whose tar holds `path`.
fn layer_holding(cache: &Path, path: &str) -> String {
    let index = read_json(&cache.join("index.json"));
    let manifest = read_json(&layout_blob(
        cache,
        index["manifests"][0]["digest"].as_str().unwrap(),
    ));
    let descs = [&manifest["layers"], &manifest["manifests"]];
    descs
        .iter()
        .filter_map(|list| list.as_array())
        .flatten()
        .filter_map(|d| d["digest"].as_str())
        .find(|digest| {
            let bytes = fs::read(layout_blob(cache, digest)).unwrap();
            bytes.starts_with(&[0x1f, 0x8b])
                && crate::support::tar_entries(&bytes)
                    .iter()
                    .any(|e| e.path == path)
        })
        .unwrap_or_else(|| panic!("no layer of {} holds {path}", cache.display()))
        .to_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for item in fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        if item.file_type().unwrap().is_dir() {
            copy_dir(&item.path(), &to.join(item.file_name()));
        } else {
            fs::copy(item.path(), to.join(item.file_name())).unwrap();
        }
    }
}

#[test]
fn poisoned_cache_layers_are_misses_with_one_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    fs::create_dir(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY a /a\nCOPY b /b\n",
    )
    .unwrap();
    fs::write(ctx.join("a"), "A").unwrap();
    fs::write(ctx.join("b"), "B").unwrap();
    let cache = tmp.path().join("cache");
    let to = format!("type=local,dest={},mode=max", s(&cache));
    build_ok(&ctx, &tmp.path().join("root"), &["--cache-to", &to]);
    let layer_a = layer_holding(&cache, "a");
    let layer_b = layer_holding(&cache, "b");

    let many: Vec<Vec<u8>> = (0..20)
        .map(|i| entry(&format!("f{i}"), EntryType::Regular, "", b"x"))
        .collect();
    let zeros = vec![0u8; 3 << 20];
    // (kind, layer blob, extra flags, what the warning says)
    let kinds: Vec<(&str, Vec<u8>, Vec<&str>, &str)> = vec![
        (
            "dotdot",
            tar_gz(&[entry("../../escape", EntryType::Regular, "", b"x")]),
            vec![],
            "refusing tar entry",
        ),
        (
            "hardlink-abs",
            tar_gz(&[entry("passwd", EntryType::Link, "/etc/passwd", b"")]),
            vec![],
            "refusing tar entry",
        ),
        (
            "hardlink-up",
            tar_gz(&[entry("passwd", EntryType::Link, "../../etc/passwd", b"")]),
            vec![],
            "refusing tar entry",
        ),
        (
            "whiteout",
            tar_gz(&[entry("../.wh.escape", EntryType::Regular, "", b"")]),
            vec![],
            "refusing tar entry",
        ),
        (
            "sparse",
            tar_gz(&[entry("holes", EntryType::GNUSparse, "", b"")]),
            vec![],
            "sparse",
        ),
        (
            "garbage",
            b"\x1f\x8bthis is not a gzip stream".to_vec(),
            vec![],
            "corrupt layer stream",
        ),
        (
            "entries",
            tar_gz(&many),
            vec!["--limit", "layer-entries=10"],
            "--limit layer-entries",
        ),
        (
            "bomb",
            tar_gz(&[entry("zeros", EntryType::Regular, "", &zeros)]),
            vec!["--limit", "layer-size=1M"],
            "--limit layer-size",
        ),
    ];
    for (i, (kind, blob, flags, reason)) in kinds.into_iter().enumerate() {
        let poisoned = tmp.path().join(format!("cache-{kind}"));
        copy_dir(&cache, &poisoned);
        // Half the cases poison the base layer under a step that misses; the other half the
        // top layer of a fully cached build, needed only by the output.
        let (victim, b) = if i % 2 == 0 {
            (&layer_a, "B2")
        } else {
            (&layer_b, "B")
        };
        fs::write(ctx.join("b"), b).unwrap();
        let bad = poison(&poisoned, victim, &blob);
        let out = tmp.path().join(format!("out-{kind}"));
        let output = if i % 4 == 3 {
            format!("type=oci,dest={}.tar", s(&out))
        } else {
            format!("type=local,dest={}", s(&out))
        };
        if i == 0 {
            // An output directory that has files already keeps them (the output is laid over).
            fs::create_dir_all(&out).unwrap();
            fs::write(out.join("keep"), "K").unwrap();
        }
        let from = format!("type=local,src={}", s(&poisoned));
        let mut args = vec!["--cache-from", &from, "--output", &output];
        args.extend(flags);
        let result = build(&ctx, &tmp.path().join(format!("root-{kind}")), &args);
        let stderr = result.stderr();
        let result = result.assert_success();
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("WARNING") && l.contains(&bad))
            .collect();
        assert_eq!(warnings.len(), 1, "{kind}: one warning:\n{stderr}");
        assert!(
            warnings[0].contains(&from) && warnings[0].contains(reason),
            "{kind}: the warning names the source and the reason: {}",
            warnings[0]
        );
        let uncached = crate::support::uncached_steps(result.meta());
        assert!(
            uncached
                .iter()
                .any(|step| step.contains(if i % 2 == 0 { "COPY a" } else { "COPY b" })),
            "{kind}: the step of the poisoned layer ran again: {uncached:?}"
        );
        if i % 4 != 3 {
            assert_eq!(fs::read_to_string(out.join("a")).unwrap(), "A", "{kind}");
            assert_eq!(fs::read_to_string(out.join("b")).unwrap(), b, "{kind}");
        }
        assert!(!tmp.path().join("escape").exists(), "{kind}");
        if i == 0 {
            assert_eq!(fs::read_to_string(out.join("keep")).unwrap(), "K");
            let stray: Vec<_> = fs::read_dir(tmp.path())
                .unwrap()
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(".buildcache-output-")
                })
                .collect();
            assert!(stray.is_empty(), "{stray:?}");
        }
        if i == 0 {
            // The refused result was not kept: the root's own cache never offers it again.
            let root = tmp.path().join(format!("root-{kind}"));
            let again = build_ok(&ctx, &root, &[]);
            assert!(!again.stderr().contains(&bad), "{}", again.stderr());
            assert_eq!(
                crate::support::uncached_steps(again.meta()),
                Vec::<String>::new()
            );
        }
    }
}

#[test]
fn a_bad_layer_of_a_from_image_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    fs::create_dir(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), "FROM base\nCOPY a /a\n").unwrap();
    fs::write(ctx.join("a"), "A").unwrap();
    let cases: [(&str, Vec<u8>, &[&str], &str); 2] = [
        (
            "escape",
            tar_gz(&[entry("../escape", EntryType::Regular, "", b"x")]),
            &[],
            "refusing tar entry",
        ),
        (
            "bomb",
            tar_gz(&[entry("zeros", EntryType::Regular, "", &vec![0u8; 3 << 20])]),
            &["--limit", "layer-size=1M"],
            "--limit layer-size=N",
        ),
    ];
    for (kind, blob, flags, reason) in cases {
        let image = tmp.path().join(format!("image-{kind}"));
        write_layout_image(&image, "v1", std::slice::from_ref(&blob));
        let digest = cache_core::digest::sha256(&blob).to_string();
        let context = format!("base=oci-layout://{}:v1", s(&image));
        let mut args = vec!["--build-context", &context];
        args.extend(flags);
        let stderr = build(&ctx, &tmp.path().join(format!("root-{kind}")), &args).assert_failure();
        assert!(
            stderr.contains(&format!("layer {digest} of build context base is unusable"))
                && stderr.contains(reason),
            "{kind}: {stderr}"
        );
        assert!(!tmp.path().join("escape").exists(), "{kind}");
    }
}

#[test]
fn tags_that_are_not_oci_tags_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    fs::create_dir(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY a /a\n").unwrap();
    fs::write(ctx.join("a"), "A").unwrap();
    let root = tmp.path().join("root");
    let cache = s(&tmp.path().join("cache")).to_owned();
    for (flag, value) in [
        ("--cache-to", format!("type=local,dest={cache},tag=../../x")),
        (
            "--cache-from",
            format!("type=local,src={cache},tag=../../x"),
        ),
        ("--cache-to", format!("type=local,dest={cache},tag=.hidden")),
    ] {
        let stderr = build(&ctx, &root, &[flag, &value]).assert_failure();
        assert!(
            stderr.contains(&format!("{value:?}"))
                && stderr.contains("is not a valid tag")
                && stderr.contains("[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"),
            "{flag} {value}: {stderr}"
        );
    }
    assert!(!tmp.path().join("x").exists() && !tmp.path().join("cache").exists());
    // The destination of a copy is checked the same way.
    let to = format!("type=local,dest={cache},tag=a/../../b");
    let out = crate::support::buildcache()
        .args(["cache", "copy", s(&root.join("cache")), &to])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("is not a valid tag"),
        "{stderr}"
    );
}

#[test]
fn a_long_command_is_cut_in_messages_and_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    fs::create_dir(&ctx).unwrap();
    let long = "y".repeat(1 << 20);
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM scratch\nRUN false {long}\n"),
    )
    .unwrap();
    let stderr = build(&ctx, &tmp.path().join("root"), &[]).assert_failure();
    assert!(stderr.len() < 16 << 10, "{} bytes of output", stderr.len());
    assert!(stderr.contains("... (1048586 bytes)"), "{stderr}");
    let error = stderr.lines().last().unwrap();
    assert!(error.starts_with("error: [1/1] RUN false yyy"), "{error}");
    // BuildKit's plain printer cuts vertex names to 72 bytes with PROGRESS_NO_TRUNC=0.
    let out = crate::support::buildcache()
        .env("PROGRESS_NO_TRUNC", "0")
        .args(["build", "--progress=plain", "--root"])
        .arg(tmp.path().join("root"))
        .arg(&ctx)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = stderr
        .lines()
        .find(|l| l.starts_with("#1 [1/1] RUN"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(
        name,
        format!("#1 {}...", &format!("[1/1] RUN false {long}")[..72])
    );
}

fn cache_json(args: &[&str]) -> Value {
    let out = crate::support::buildcache()
        .arg("cache")
        .args(args)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn leftovers_of_killed_writers_go_at_the_next_collection() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    fs::create_dir(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY a /a\n").unwrap();
    fs::write(ctx.join("a"), "A").unwrap();
    let cache = tmp.path().join("cache");
    let root = tmp.path().join("root");
    let to = format!("type=local,dest={}", s(&cache));
    build_ok(&ctx, &root, &["--cache-to", &to]);
    // What killed exports leave: fresh temporary files, at the top and among the blobs.
    fs::write(cache.join(".tmp-index"), vec![1u8; 1000]).unwrap();
    fs::write(cache.join("blobs/sha256/.tmp-blob"), vec![2u8; 5000]).unwrap();
    let before = cache_json(&["du", s(&cache)]);
    assert_eq!(before["temp_files"], 2);
    assert_eq!(before["temp_bytes"], 6000);
    let pruned = cache_json(&["prune", s(&cache)]);
    assert_eq!(pruned["deleted_temp_files"], 2);
    let after = cache_json(&["du", s(&cache)]);
    assert_eq!(after["temp_files"], 0);
    assert_eq!(pruned["bytes_after"], after["total_bytes"], "{pruned:#}");
    assert_eq!(pruned["bytes_before"], before["total_bytes"]);
    // A killed build's work directory in the root (its lock file free) goes at the next build.
    let dead = root.join("tmp/build-1-killed");
    fs::create_dir_all(dead.join("rootfs-1")).unwrap();
    fs::write(root.join("tmp/build-1-killed.lock"), b"").unwrap();
    build_ok(&ctx, &root, &[]);
    assert!(!dead.exists(), "the dead build's directory is gone");
    let left = crate::support::work_dirs_left(&root);
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_poisoned_cache_mount_seed_leaves_the_mount_empty() {
    let Some(ctx) = crate::support::busybox_context(&format!(
        "{}FROM base\nCOPY src.txt /src.txt\n{}",
        crate::support::busybox_stage("base"),
        "RUN --mount=type=cache,target=/cache (ls /cache; cat /src.txt) > /seen && cp /src.txt /cache/f\n",
    )) else {
        return;
    };
    ctx.write("src.txt", "1\n");
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let to = format!("type=local,dest={},mode=max,cache-mounts=true", s(&cache));
    build_ok(ctx.path(), &tmp.path().join("root1"), &["--cache-to", &to]);
    let manifest = read_json(&layout_blob(
        &cache,
        read_json(&cache.join("index.json"))["manifests"][0]["digest"]
            .as_str()
            .unwrap(),
    ));
    let seed = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["annotations"]["dev.buildcache.cache-mount.id"].is_string())
        .and_then(|l| l["digest"].as_str())
        .expect("the cache carries the mount")
        .to_owned();
    let bad = poison(
        &cache,
        &seed,
        &tar_gz(&[entry("../../escape", EntryType::Regular, "", b"x")]),
    );
    ctx.write("src.txt", "2\n");
    let out = tmp.path().join("out");
    let from = format!("type=local,src={}", s(&cache));
    let output = format!("type=local,dest={}", s(&out));
    let result = build_ok(
        ctx.path(),
        &tmp.path().join("root2"),
        &["--cache-from", &from, "--output", &output],
    );
    let stderr = result.stderr();
    assert!(
        stderr.lines().any(|l| l.contains("WARNING")
            && l.contains(&bad)
            && l.contains(&from)
            && l.contains("refusing tar entry")
            && l.contains("the mount starts empty")),
        "{stderr}"
    );
    assert_eq!(fs::read_to_string(out.join("seen")).unwrap(), "2\n");
    assert!(!tmp.path().join("escape").exists());
}

#[test]
fn a_cache_with_many_bad_blobs_is_dropped_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    fs::create_dir(&ctx).unwrap();
    // Nine stages whose layers are needed one at a time, each by a later miss.
    let n = 9;
    let mut dockerfile = String::new();
    for i in 0..n {
        dockerfile.push_str(&format!("FROM scratch AS s{i}\nCOPY f{i} /f{i}\n"));
        fs::write(ctx.join(format!("f{i}")), format!("{i}")).unwrap();
    }
    dockerfile.push_str("FROM scratch\nCOPY x /x\n");
    for i in 0..n {
        dockerfile.push_str(&format!("COPY --from=s{i} /f{i} /f{i}\n"));
    }
    fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    fs::write(ctx.join("x"), "1").unwrap();
    let cache = tmp.path().join("cache");
    let to = format!("type=local,dest={},mode=max", s(&cache));
    build_ok(&ctx, &tmp.path().join("root"), &["--cache-to", &to]);
    let mut bad = Vec::new();
    for i in 0..n {
        let layer = layer_holding(&cache, &format!("f{i}"));
        let blob = tar_gz(&[entry(&format!("../f{i}"), EntryType::Regular, "", b"x")]);
        bad.push(poison(&cache, &layer, &blob));
    }
    fs::write(ctx.join("x"), "2").unwrap();
    let out = tmp.path().join("out");
    let from = format!("type=local,src={}", s(&cache));
    let output = format!("type=local,dest={}", s(&out));
    let result = build_ok(
        &ctx,
        &tmp.path().join("root2"),
        &["--cache-from", &from, "--output", &output],
    );
    let stderr = result.stderr();
    assert!(
        stderr.contains("8 cache blobs were unusable: the build goes on without its caches"),
        "{stderr}"
    );
    let warned = bad.iter().filter(|d| stderr.contains(d.as_str())).count();
    assert_eq!(
        warned, 8,
        "one warning per blob until the caches are dropped"
    );
    for i in 0..n {
        assert_eq!(
            fs::read_to_string(out.join(format!("f{i}"))).unwrap(),
            format!("{i}")
        );
    }
}
