//! `buildcache build` end to end: cache export and import, outputs, errors, confinement, concurrency.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use serde_json::Value;

use crate::support::{
    self, BuildContext, build, build_ok, busybox_context, count_cached, image_digest, s, steps,
    uncached_steps,
};

/// The multi-stage example of issue 3, kept fast: a builder stage with RUN steps, an unused stage
/// whose RUN fails (so building it fails the build), and a final stage copying from the context
/// and from the builder.
const MULTISTAGE: &str = r#"FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /work /out && echo base-ready > /work/base.txt

FROM base AS builder
COPY src/ /src/
RUN dd if=/dev/zero bs=1k count=20 2>/dev/null | sha256sum > /work/zeros.sha256
RUN cat /src/greeting.txt /work/zeros.sha256 > /out/artifact.txt && sha256sum /out/artifact.txt > /out/artifact.sha256

FROM base AS unused
RUN exit 1

FROM base AS final
COPY app.conf /etc/app.conf
COPY --from=builder /out/ /app/
RUN wc -c /app/artifact.txt > /app/size.txt
CMD ["/bin/sh", "-c", "cat /app/artifact.txt"]
"#;

/// The steps of [`MULTISTAGE`] that the final image needs, by stage.
const BASE_STEPS: usize = 3;
const BUILDER_STEPS: usize = 3;
const FINAL_STEPS: usize = 3;
const ALL_STEPS: usize = BASE_STEPS + BUILDER_STEPS + FINAL_STEPS;

/// [`MULTISTAGE`] with its context files, or `None` (skip) without busybox.
fn multistage() -> Option<BuildContext> {
    let ctx = busybox_context(MULTISTAGE)?;
    ctx.write("src/greeting.txt", "hello from the builder\n")
        .write("app.conf", "listen = 8080\n")
        .write("notes.txt", "no step reads this file\n");
    Some(ctx)
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("creating a temporary directory")
}

/// Names of the steps of `stage` (`[stage n/m] …`) in the metadata.
fn stage_steps(meta: &Value, stage: &str) -> Vec<String> {
    let prefix = format!("[{stage} ");
    steps(meta)
        .into_iter()
        .filter(|step| step.name.starts_with(&prefix))
        .map(|step| step.name)
        .collect()
}

/// Asserts that a build ran no step: every step cached in the metadata, no step `DONE` in the
/// progress and no layer extracted (a step that runs needs its parent's filesystem).
fn assert_nothing_ran(outcome: &support::BuildOutcome, expected_steps: usize) {
    let meta = outcome.meta();
    assert_eq!(
        uncached_steps(meta),
        Vec::<String>::new(),
        "every step should be cached:\n{}",
        outcome.stderr()
    );
    assert_eq!(
        count_cached(meta),
        expected_steps,
        "steps: {:#?}",
        steps(meta)
    );
    let progress = outcome.progress();
    assert_eq!(
        progress.executed_steps(),
        Vec::<&str>::new(),
        "no step should run:\n{}",
        outcome.stderr()
    );
    assert_eq!(
        progress.cached_steps().len(),
        expected_steps,
        "{}",
        outcome.stderr()
    );
    assert!(
        !outcome.stderr().contains(" extracting sha256:"),
        "a fully cached build extracts no layer:\n{}",
        outcome.stderr()
    );
}

#[test]
fn max_cache_makes_a_build_on_an_empty_root_run_nothing() {
    let Some(ctx) = multistage() else { return };
    let work = tempdir();
    let cache = work.path().join("cache");
    let cold = build_ok(
        ctx.path(),
        &work.path().join("root-a"),
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=max", s(&cache)),
        ],
    );
    let cold_meta = cold.meta();
    assert_eq!(
        count_cached(cold_meta),
        0,
        "an empty root has nothing cached"
    );
    assert_eq!(
        steps(cold_meta).len(),
        ALL_STEPS,
        "steps: {:#?}",
        steps(cold_meta)
    );
    assert!(
        stage_steps(cold_meta, "unused").is_empty(),
        "the unused stage is never built: {:#?}",
        steps(cold_meta)
    );
    assert_eq!(
        cold.progress().executed_steps().len(),
        ALL_STEPS,
        "{}",
        cold.stderr()
    );

    let warm = build_ok(
        ctx.path(),
        &work.path().join("root-b"),
        &["--cache-from", &format!("type=local,src={}", s(&cache))],
    );
    assert_nothing_ran(&warm, ALL_STEPS);
    let source = format!("type=local,src={}", s(&cache));
    for step in steps(warm.meta()) {
        assert_eq!(
            step.cache_source.as_deref(),
            Some(source.as_str()),
            "{step:?}"
        );
    }
    assert_eq!(image_digest(warm.meta()), image_digest(cold_meta));
}

#[test]
fn min_cache_keeps_the_final_stage_and_never_runs_the_builder() {
    let Some(ctx) = multistage() else { return };
    let work = tempdir();
    let cache = work.path().join("cache");
    let cold = build_ok(
        ctx.path(),
        &work.path().join("root-a"),
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=min", s(&cache)),
        ],
    );
    // A min cache holds the layers of the final image only, not the builder's.
    let exports = cold.meta()["buildcache.cache_export"]
        .as_array()
        .expect("a cache export report");
    assert_eq!(exports.len(), 1, "{exports:#?}");
    let manifest = support::layout_manifest(&cache, Some("latest"));
    let n_layers = manifest["layers"].as_array().expect("layers").len();
    assert_eq!(
        n_layers,
        BASE_STEPS + FINAL_STEPS,
        "mode=min exports the final image's layers only: {manifest:#}"
    );

    let warm = build_ok(
        ctx.path(),
        &work.path().join("root-b"),
        &["--cache-from", &format!("type=local,src={}", s(&cache))],
    );
    let progress = warm.progress();
    assert_eq!(
        progress.executed_steps(),
        Vec::<&str>::new(),
        "{}",
        warm.stderr()
    );
    for step in steps(warm.meta()) {
        if !step.name.starts_with("[builder ") {
            assert!(step.cached, "{step:?} should be cached:\n{}", warm.stderr());
        }
    }
    assert!(
        !warm.stderr().contains(" extracting sha256:"),
        "nothing runs, so nothing is extracted:\n{}",
        warm.stderr()
    );
    assert_eq!(image_digest(warm.meta()), image_digest(cold.meta()));
}

/// Exports [`multistage`] with `mode`, changes `app.conf` (only the final stage copies it) and
/// rebuilds on an empty root from that cache; returns the rebuild's uncached steps.
fn rebuild_after_changing_app_conf(mode: &str) -> Option<Vec<String>> {
    let ctx = multistage()?;
    let work = tempdir();
    let cache = work.path().join("cache");
    build_ok(
        ctx.path(),
        &work.path().join("root-a"),
        &[
            "--cache-to",
            &format!("type=local,dest={},mode={mode}", s(&cache)),
        ],
    );
    ctx.write("app.conf", "listen = 9090\n");
    let warm = build_ok(
        ctx.path(),
        &work.path().join("root-b"),
        &["--cache-from", &format!("type=local,src={}", s(&cache))],
    );
    let mut ran: Vec<String> = warm
        .progress()
        .executed_steps()
        .into_iter()
        .map(str::to_owned)
        .collect();
    ran.sort();
    let mut uncached = uncached_steps(warm.meta());
    uncached.sort();
    assert_eq!(
        ran,
        uncached,
        "progress and metadata agree:\n{}",
        warm.stderr()
    );
    Some(uncached)
}

#[test]
fn changing_a_final_stage_file_with_a_max_cache_runs_only_the_final_stage() {
    let Some(uncached) = rebuild_after_changing_app_conf("max") else {
        return;
    };
    assert_eq!(
        uncached,
        vec![
            "[final 1/3] COPY app.conf /etc/app.conf".to_owned(),
            "[final 2/3] COPY --from=builder /out/ /app/".to_owned(),
            "[final 3/3] RUN wc -c /app/artifact.txt > /app/size.txt".to_owned(),
        ]
    );
}

#[test]
fn changing_a_final_stage_file_with_a_min_cache_runs_the_builder_again() {
    let Some(uncached) = rebuild_after_changing_app_conf("min") else {
        return;
    };
    let builder: Vec<&String> = uncached
        .iter()
        .filter(|n| n.starts_with("[builder "))
        .collect();
    let finals: Vec<&String> = uncached
        .iter()
        .filter(|n| n.starts_with("[final "))
        .collect();
    let base: Vec<&String> = uncached
        .iter()
        .filter(|n| n.starts_with("[base "))
        .collect();
    assert_eq!(
        builder.len(),
        BUILDER_STEPS,
        "the builder runs again: {uncached:#?}"
    );
    assert_eq!(finals.len(), FINAL_STEPS, "{uncached:#?}");
    assert!(
        base.is_empty(),
        "the base stage's layers are in a min cache: {uncached:#?}"
    );
}

#[test]
fn a_context_file_no_step_uses_invalidates_nothing() {
    let Some(ctx) = multistage() else { return };
    let work = tempdir();
    let cache = work.path().join("cache");
    let root = work.path().join("root-a");
    let cold = build_ok(
        ctx.path(),
        &root,
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=max", s(&cache)),
        ],
    );
    ctx.write("notes.txt", "changed, and still read by no step\n");
    ctx.write("extra/new-file.txt", "a new file no step reads\n");

    let imported = build_ok(
        ctx.path(),
        &work.path().join("root-b"),
        &["--cache-from", &format!("type=local,src={}", s(&cache))],
    );
    assert_nothing_ran(&imported, ALL_STEPS);
    assert_eq!(image_digest(imported.meta()), image_digest(cold.meta()));

    let same_root = build_ok(ctx.path(), &root, &[]);
    assert_nothing_ran(&same_root, ALL_STEPS);
}

/// The fixture BuildKit wrote with `--export-cache type=local,mode=max` (`BUILDCACHE_FIXTURES`,
/// which `cargo xtask test` sets, or `../shared` beside the checkout).
fn fixture_dir() -> std::path::PathBuf {
    match std::env::var_os("BUILDCACHE_FIXTURES") {
        Some(dir) => std::path::PathBuf::from(dir).join("local-max"),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/buildkit/local-max")
        }
    }
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("{value} is not an object"))
        .keys()
        .cloned()
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    cache_core::digest::sha256(bytes).to_string()
}

/// Checks that `layout` has the shape of BuildKit's `local-max` fixture and that its index tags
/// the cache `tag`: same files, media types, annotation keys, config keys; digests and sizes true.
fn assert_buildkit_shaped(layout: &Path, tag: &str) {
    let fixture = fixture_dir();
    assert_eq!(
        support::read_json(&layout.join("oci-layout")),
        support::read_json(&fixture.join("oci-layout"))
    );

    let index = support::read_json(&layout.join("index.json"));
    let fixture_index = support::read_json(&fixture.join("index.json"));
    assert_eq!(keys(&index), keys(&fixture_index));
    assert_eq!(index["schemaVersion"], fixture_index["schemaVersion"]);
    assert_eq!(index["mediaType"], fixture_index["mediaType"]);
    let entries = index["manifests"].as_array().expect("index manifests");
    assert_eq!(entries.len(), 1, "{index:#}");
    let fixture_entry = &fixture_index["manifests"][0];
    assert_eq!(keys(&entries[0]), keys(fixture_entry));
    assert_eq!(entries[0]["mediaType"], fixture_entry["mediaType"]);
    assert_eq!(
        keys(&entries[0]["annotations"]),
        keys(&fixture_entry["annotations"])
    );
    assert_eq!(
        entries[0]["annotations"]["org.opencontainers.image.ref.name"],
        tag
    );

    let manifest_digest = entries[0]["digest"].as_str().expect("a manifest digest");
    let manifest_bytes =
        fs::read(support::layout_blob(layout, manifest_digest)).expect("the manifest blob exists");
    assert_eq!(sha256_hex(&manifest_bytes), manifest_digest);
    assert_eq!(entries[0]["size"], manifest_bytes.len());
    let manifest: Value = serde_json::from_slice(&manifest_bytes).expect("the manifest is JSON");
    let fixture_manifest = support::read_json(&support::layout_blob(
        &fixture,
        fixture_entry["digest"].as_str().expect("fixture digest"),
    ));
    assert_eq!(keys(&manifest), keys(&fixture_manifest));
    assert_eq!(manifest["schemaVersion"], fixture_manifest["schemaVersion"]);
    assert_eq!(manifest["mediaType"], fixture_manifest["mediaType"]);
    // Beyond BuildKit's fields, the config descriptor carries one annotation BuildKit ignores:
    // what the records' keys are made of, to explain misses.
    let mut config_keys = keys(&fixture_manifest["config"]);
    config_keys.insert("annotations".to_owned());
    assert_eq!(keys(&manifest["config"]), config_keys);
    assert_eq!(
        keys(&manifest["config"]["annotations"]),
        BTreeSet::from(["dev.buildcache.facts.v0".to_owned()])
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        fixture_manifest["config"]["mediaType"]
    );

    let fixture_layer = &fixture_manifest["layers"][0];
    let layers = manifest["layers"].as_array().expect("manifest layers");
    assert!(!layers.is_empty());
    let mut layer_digests = BTreeSet::new();
    for layer in layers {
        assert_eq!(keys(layer), keys(fixture_layer), "{layer:#}");
        assert_eq!(layer["mediaType"], fixture_layer["mediaType"], "{layer:#}");
        assert_eq!(
            keys(&layer["annotations"]),
            keys(&fixture_layer["annotations"]),
            "{layer:#}"
        );
        let created = layer["annotations"]["buildkit/createdat"]
            .as_str()
            .expect("buildkit/createdat is a string");
        assert!(
            created.len() >= 20
                && created.ends_with('Z')
                && created.as_bytes()[4] == b'-'
                && created.as_bytes()[10] == b'T',
            "buildkit/createdat is an RFC 3339 UTC time: {created}"
        );
        let digest = layer["digest"].as_str().expect("a layer digest");
        let blob = fs::read(support::layout_blob(layout, digest)).expect("the layer blob exists");
        assert_eq!(sha256_hex(&blob), digest);
        assert_eq!(layer["size"], blob.len());
        assert_eq!(
            layer["annotations"]["containerd.io/uncompressed"],
            sha256_hex(&support::decompress(&blob)),
            "containerd.io/uncompressed is the digest of the uncompressed tar"
        );
        layer_digests.insert(digest.to_owned());
    }

    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let config_bytes =
        fs::read(support::layout_blob(layout, config_digest)).expect("the config blob exists");
    assert_eq!(sha256_hex(&config_bytes), config_digest);
    assert_eq!(manifest["config"]["size"], config_bytes.len());
    let config: Value = serde_json::from_slice(&config_bytes).expect("the cache config is JSON");
    let fixture_config = support::read_json(&support::layout_blob(
        &fixture,
        fixture_manifest["config"]["digest"]
            .as_str()
            .expect("fixture config"),
    ));
    assert_eq!(keys(&config), keys(&fixture_config));
    let fixture_layer_keys: BTreeSet<String> = fixture_config["layers"]
        .as_array()
        .expect("fixture layers")
        .iter()
        .flat_map(keys)
        .collect();
    let config_layers = config["layers"].as_array().expect("config layers");
    assert_eq!(
        config_layers.len(),
        layers.len(),
        "one config layer per manifest layer"
    );
    for layer in config_layers {
        assert!(keys(layer).is_subset(&fixture_layer_keys), "{layer:#}");
        let blob = layer["blob"]
            .as_str()
            .expect("a config layer names its blob");
        assert!(layer_digests.contains(blob), "{blob} is a manifest layer");
    }
    let fixture_record_keys: BTreeSet<String> = fixture_config["records"]
        .as_array()
        .expect("fixture records")
        .iter()
        .flat_map(keys)
        .collect();
    let records = config["records"].as_array().expect("config records");
    assert!(!records.is_empty());
    for record in records {
        assert!(keys(record).is_subset(&fixture_record_keys), "{record:#}");
        assert!(
            record["digest"]
                .as_str()
                .is_some_and(|d| d.starts_with("sha256:"))
        );
    }
}

#[test]
fn exported_cache_is_a_valid_buildkit_cache() {
    let Some(ctx) = multistage() else { return };
    let work = tempdir();
    let cache = work.path().join("cache");
    let tagged = work.path().join("tagged");
    build_ok(
        ctx.path(),
        &work.path().join("root"),
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=max", s(&cache)),
            "--cache-to",
            &format!("type=local,dest={},mode=max,tag=ci-42", s(&tagged)),
        ],
    );
    assert_buildkit_shaped(&cache, "latest");
    assert_buildkit_shaped(&tagged, "ci-42");

    let output = support::buildcache()
        .args(["cache", "inspect", "--format", "json"])
        .arg(format!("type=local,src={}", s(&cache)))
        .output()
        .expect("running buildcache cache inspect");
    assert!(
        output.status.success(),
        "cache inspect failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("inspect prints JSON");
    let manifest = support::layout_manifest(&cache, Some("latest"));
    assert_eq!(
        report["layers"],
        manifest["layers"].as_array().expect("layers").len()
    );
    assert!(
        report["records"].as_u64().is_some_and(|n| n > 0),
        "{report:#}"
    );

    let tagged_inspect = support::buildcache()
        .args(["cache", "inspect", "--format", "json"])
        .arg(format!("type=local,src={},tag=ci-42", s(&tagged)))
        .output()
        .expect("running buildcache cache inspect");
    assert!(
        tagged_inspect.status.success(),
        "cache inspect of tag=ci-42 failed: {}",
        String::from_utf8_lossy(&tagged_inspect.stderr)
    );
}

/// A Dockerfile that deletes a file in a RUN and copies one with an owner and mode.
const WHITEOUT: &str = r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /etc/app && echo doomed > /etc/app/doomed.txt && echo keep > /etc/app/keep.txt
RUN rm /etc/app/doomed.txt
COPY --chown=1000:1000 --chmod=0640 data.txt /etc/app/data.txt
"#;

#[test]
fn a_deleted_file_is_a_whiteout_and_the_oci_output_unpacks_with_umoci() {
    let Some(ctx) = busybox_context(WHITEOUT) else {
        return;
    };
    ctx.write("data.txt", "secret data\n");
    let work = tempdir();
    let out_tar = work.path().join("out.tar");
    build_ok(
        ctx.path(),
        &work.path().join("root"),
        &[
            "-t",
            "app:1",
            "--output",
            &format!("type=oci,dest={}", s(&out_tar)),
        ],
    );
    let layout = work.path().join("layout");
    support::untar(&out_tar, &layout);
    let manifest = support::layout_manifest(&layout, Some("1"));
    let layers = support::image_layers(&layout, &manifest);
    let whiteouts: Vec<&support::TarEntry> = layers
        .iter()
        .flatten()
        .filter(|e| e.path.trim_end_matches('/') == "etc/app/.wh.doomed.txt")
        .collect();
    assert_eq!(
        whiteouts.len(),
        1,
        "the RUN rm layer holds etc/app/.wh.doomed.txt"
    );
    let data: Vec<&support::TarEntry> = layers
        .iter()
        .flatten()
        .filter(|e| e.path == "etc/app/data.txt")
        .collect();
    assert_eq!(data.len(), 1);
    assert_eq!(
        (data[0].uid, data[0].gid, data[0].mode & 0o7777),
        (1000, 1000, 0o640)
    );

    let Some(umoci) = support::tool("umoci") else {
        return;
    };
    let bundle = work.path().join("bundle");
    let mut cmd = std::process::Command::new(umoci);
    if !support::is_root() {
        cmd.arg("--rootless");
    }
    let status = cmd
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:1", s(&layout)))
        .arg(&bundle)
        .status()
        .expect("running umoci");
    assert!(status.success(), "umoci unpack failed: {status}");
    let rootfs = bundle.join("rootfs");
    assert!(
        !rootfs.join("etc/app/doomed.txt").exists(),
        "the deleted file is absent"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/app/keep.txt")).expect("keep.txt"),
        "keep\n"
    );
    let data_meta = fs::metadata(rootfs.join("etc/app/data.txt")).expect("data.txt exists");
    assert_eq!(data_meta.permissions().mode() & 0o7777, 0o640);
    let keep_meta = fs::metadata(rootfs.join("etc/app/keep.txt")).expect("keep.txt exists");
    assert_eq!(keep_meta.permissions().mode() & 0o7777, 0o644);
    let dir_meta = fs::metadata(rootfs.join("etc/app")).expect("etc/app exists");
    assert_eq!(dir_meta.permissions().mode() & 0o7777, 0o755);
    if support::is_root() {
        assert_eq!((data_meta.uid(), data_meta.gid()), (1000, 1000));
        assert_eq!((keep_meta.uid(), keep_meta.gid()), (0, 0));
    }
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/app/data.txt")).expect("data.txt"),
        "secret data\n"
    );
    assert!(rootfs.join("bin/busybox").is_file());
}

#[test]
fn oci_output_is_read_by_skopeo() {
    let Some(ctx) = busybox_context(WHITEOUT) else {
        return;
    };
    ctx.write("data.txt", "secret data\n");
    let work = tempdir();
    let out_tar = work.path().join("out.tar");
    let built = build_ok(
        ctx.path(),
        &work.path().join("root"),
        &[
            "-t",
            "app:1",
            "--output",
            &format!("type=oci,dest={}", s(&out_tar)),
        ],
    );
    let Some(skopeo) = support::tool("skopeo") else {
        return;
    };
    // skopeo verifies every blob's digest while copying.
    let copy = work.path().join("copy");
    let output = std::process::Command::new(skopeo)
        .arg("copy")
        .arg(format!("oci-archive:{}:1", s(&out_tar)))
        .arg(format!("oci:{}:copied", s(&copy)))
        .output()
        .expect("running skopeo");
    assert!(
        output.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let copied = support::layout_manifest(&copy, Some("copied"));
    let ours = support::layout_manifest(&support_layout(&out_tar, work.path()), Some("1"));
    assert_eq!(
        copied["layers"], ours["layers"],
        "skopeo keeps every layer as is"
    );
    assert!(image_digest(built.meta()).starts_with("sha256:"));
}

/// Extracts an OCI tar next to it and returns the layout directory.
fn support_layout(out_tar: &Path, work: &Path) -> std::path::PathBuf {
    let layout = work.join("extracted");
    if !layout.exists() {
        support::untar(out_tar, &layout);
    }
    layout
}

#[test]
fn local_output_writes_the_final_root_filesystem() {
    let Some(ctx) = multistage() else { return };
    let work = tempdir();
    let dest = work.path().join("rootfs");
    build_ok(
        ctx.path(),
        &work.path().join("root"),
        &["--output", &format!("type=local,dest={}", s(&dest))],
    );
    assert_eq!(
        fs::read_to_string(dest.join("etc/app.conf")).expect("etc/app.conf"),
        "listen = 8080\n"
    );
    let artifact = fs::read_to_string(dest.join("app/artifact.txt")).expect("app/artifact.txt");
    assert!(
        artifact.starts_with("hello from the builder\n"),
        "{artifact}"
    );
    assert!(dest.join("app/artifact.sha256").is_file());
    let size = fs::read_to_string(dest.join("app/size.txt")).expect("app/size.txt");
    assert!(size.contains(&artifact.len().to_string()), "{size}");
    assert_eq!(
        fs::read_to_string(dest.join("work/base.txt")).expect("work/base.txt"),
        "base-ready\n"
    );
    assert!(dest.join("bin/busybox").is_file());
    assert!(
        fs::symlink_metadata(dest.join("bin/sh"))
            .expect("bin/sh")
            .file_type()
            .is_symlink()
    );
    assert!(
        !dest.join("src").exists(),
        "the builder's files stay in the builder"
    );
    assert!(!dest.join("work/zeros.sha256").exists());
}

/// Builds a one-file Dockerfile on an empty root and returns the failed build's stderr.
fn failing_build(dockerfile: &str) -> Option<String> {
    let ctx = busybox_context(dockerfile)?;
    let work = tempdir();
    Some(build(ctx.path(), &work.path().join("root"), &[]).assert_failure())
}

#[test]
fn a_failing_run_reports_its_exit_code_and_line() {
    let Some(stderr) = failing_build(
        "FROM scratch\nCOPY busybox /bin/busybox\n\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"exit 3\"]\n",
    ) else {
        return;
    };
    assert!(stderr.contains("exit code: 3"), "{stderr}");
    assert!(stderr.contains("line 4"), "{stderr}");
}

#[test]
fn a_failing_shell_run_reports_its_exit_code_and_line() {
    let dockerfile = format!("{}RUN exit 3\n", support::busybox_stage("only"));
    let Some(stderr) = failing_build(&dockerfile) else {
        return;
    };
    assert!(stderr.contains("exit code: 3"), "{stderr}");
    assert!(stderr.contains("line 4"), "{stderr}");
}

#[test]
fn an_unknown_instruction_names_its_line() {
    let Some(stderr) = failing_build("FROM scratch\nCOPY busybox /bin/busybox\nFROBNICATE now\n")
    else {
        return;
    };
    assert!(stderr.contains("FROBNICATE"), "{stderr}");
    assert!(
        stderr.contains("Dockerfile:3: "),
        "the error names line 3: {stderr}"
    );
    assert_eq!(
        stderr.matches("unknown instruction").count(),
        1,
        "the message is said once: {stderr}"
    );
    assert!(!stderr.contains("#1 DONE"), "nothing is built: {stderr}");
}

#[test]
fn a_copy_of_a_missing_file_names_the_file() {
    let Some(stderr) =
        failing_build("FROM scratch\nCOPY busybox /bin/busybox\nCOPY not-there.txt /x\n")
    else {
        return;
    };
    assert!(stderr.contains("not-there.txt"), "{stderr}");
}

/// A raw tar header for `path`, written byte for byte so that `..` and absolute paths survive.
fn raw_header(path: &str, kind: tar::EntryType, size: u64, link: Option<&str>) -> tar::Header {
    let mut header = tar::Header::new_old();
    {
        let old = header.as_old_mut();
        assert!(path.len() < old.name.len(), "{path} fits a tar name field");
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(link) = link {
            assert!(link.len() < old.linkname.len());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
    }
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    header
}

/// One layer entry written by [`support::write_layout_image`].
enum RawEntry<'a> {
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
}

/// An uncompressed tar of `entries`.
fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        match entry {
            RawEntry::File(path, data, mode) => {
                let mut header = raw_header(path, tar::EntryType::Regular, data.len() as u64, None);
                header.set_mode(*mode);
                header.set_cksum();
                builder
                    .append(&header, *data)
                    .expect("appending to a tar in memory");
            }
            RawEntry::Symlink(path, target) => {
                let header = raw_header(path, tar::EntryType::Symlink, 0, Some(target));
                builder
                    .append(&header, std::io::empty())
                    .expect("appending to a tar in memory");
            }
        }
    }
    builder.into_inner().expect("finishing a tar in memory")
}

/// Builds `FROM base` + a RUN (so the base's layers are extracted) where `base` is an OCI layout
/// image whose layers are busybox plus `hostile`; returns the build.
fn build_on_hostile_base(work: &Path, hostile: &[Vec<u8>]) -> Option<support::BuildOutcome> {
    let busybox = fs::read(support::busybox_path()?).expect("reading busybox");
    let ctx = tempdir();
    support::write_file(
        &ctx.path().join("Dockerfile"),
        "FROM base\nRUN [\"/bin/busybox\", \"true\"]\n",
    );
    let mut layers = vec![raw_tar(&[RawEntry::File("bin/busybox", &busybox, 0o755)])];
    layers.extend(hostile.iter().cloned());
    let layout = work.join("layout");
    support::write_layout_image(&layout, "v1", &layers);
    Some(build(
        ctx.path(),
        &work.join("root"),
        &[
            "--build-context",
            &format!("base=oci-layout://{}:v1", s(&layout)),
        ],
    ))
}

/// Asserts that `outside` is still empty and that a failed build said what it refused.
fn assert_confined(outcome: &support::BuildOutcome, outside: &Path, entry_words: &[&str]) {
    let leaked: Vec<_> = fs::read_dir(outside)
        .expect("the outside directory still exists")
        .map(|e| e.expect("a dir entry").path())
        .collect();
    assert!(
        leaked.is_empty(),
        "the layer wrote outside the root: {leaked:?}\n{}",
        outcome.stderr()
    );
    if !outcome.success() {
        let stderr = outcome.stderr();
        assert!(
            entry_words.iter().any(|w| stderr.contains(w)),
            "a refused layer names the entry at fault ({entry_words:?}): {stderr}"
        );
    }
}

#[test]
fn a_layer_entry_with_dot_dot_does_not_write_outside_the_root() {
    let work = tempdir();
    let outside = tempdir();
    let control = build_on_hostile_base(work.path(), &[]);
    let Some(control) = control else { return };
    let control = control.assert_success();
    assert!(
        control
            .progress()
            .executed_steps()
            .iter()
            .any(|n| n.contains("RUN")),
        "the RUN on the layout base runs: {}",
        control.stderr()
    );
    let work = tempdir();
    let escape = format!(
        "{}{}/evil",
        "../".repeat(20),
        s(outside.path()).trim_start_matches('/')
    );
    let layer = raw_tar(&[RawEntry::File(&escape, b"pwned\n", 0o644)]);
    let Some(outcome) = build_on_hostile_base(work.path(), &[layer]) else {
        return;
    };
    assert_confined(&outcome, outside.path(), &["evil", ".."]);
    let absolute = format!("{}/abs", s(outside.path()));
    let layer = raw_tar(&[RawEntry::File(&absolute, b"pwned\n", 0o644)]);
    let work2 = tempdir();
    let Some(outcome) = build_on_hostile_base(work2.path(), &[layer]) else {
        return;
    };
    assert_confined(&outcome, outside.path(), &["abs"]);
}

#[test]
fn a_layer_symlink_pointing_outside_does_not_write_outside_the_root() {
    let work = tempdir();
    let outside = tempdir();
    let link_layer = raw_tar(&[RawEntry::Symlink("link", s(outside.path()))]);
    let write_layer = raw_tar(&[RawEntry::File("link/pwned", b"pwned\n", 0o644)]);
    let Some(outcome) = build_on_hostile_base(work.path(), &[link_layer, write_layer]) else {
        return;
    };
    assert_confined(&outcome, outside.path(), &["link", "pwned"]);

    // The same within one layer.
    let work2 = tempdir();
    let layer = raw_tar(&[
        RawEntry::Symlink("link2", s(outside.path())),
        RawEntry::File("link2/pwned", b"pwned\n", 0o644),
    ]);
    let Some(outcome) = build_on_hostile_base(work2.path(), &[layer]) else {
        return;
    };
    assert_confined(&outcome, outside.path(), &["link2", "pwned"]);
}

#[test]
fn concurrent_builds_sharing_a_root_succeed_and_keep_their_cache() {
    let contexts: Vec<BuildContext> = match (0..3)
        .map(|i| {
            let dockerfile = format!(
                "{}RUN echo build-{i} > /id.txt && dd if=/dev/zero bs=1k count=20 2>/dev/null | md5sum > /sum.txt\nCOPY own.txt /own.txt\n",
                support::busybox_stage("only")
            );
            let ctx = busybox_context(&dockerfile)?;
            ctx.write("own.txt", &format!("context {i}\n"));
            Some(ctx)
        })
        .collect::<Option<Vec<_>>>()
    {
        Some(contexts) => contexts,
        None => return,
    };
    let work = tempdir();
    // Lost updates are races: three rounds on fresh roots make one likely to show.
    for round in 0..3 {
        let root = work.path().join(format!("shared-root-{round}"));
        let digests: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = contexts
                .iter()
                .map(|ctx| scope.spawn(|| image_digest(build_ok(ctx.path(), &root, &[]).meta())))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a build thread panicked"))
                .collect()
        });
        let unique: BTreeSet<&String> = digests.iter().collect();
        assert_eq!(unique.len(), 3, "three different images: {digests:?}");

        // The shared base steps ran in all three builds, so the root may keep any of their
        // (equivalent, differently timestamped) results: the image digest may change, the
        // files may not.
        for (i, ctx) in contexts.iter().enumerate() {
            let rootfs = work.path().join(format!("rootfs-{round}-{i}"));
            let again = build_ok(
                ctx.path(),
                &root,
                &["--output", &format!("type=local,dest={}", s(&rootfs))],
            );
            assert_eq!(
                uncached_steps(again.meta()),
                Vec::<String>::new(),
                "round {round}: after three concurrent builds on one root, context {i} lost its \
                 cache records (another build's save of the root replaced them)"
            );
            assert_nothing_ran(&again, 4);
            assert_eq!(
                fs::read_to_string(rootfs.join("id.txt")).expect("id.txt"),
                format!("build-{i}\n")
            );
            assert_eq!(
                fs::read_to_string(rootfs.join("own.txt")).expect("own.txt"),
                format!("context {i}\n")
            );
            let stable = build_ok(ctx.path(), &root, &[]);
            assert_eq!(image_digest(stable.meta()), image_digest(again.meta()));
        }
    }
}

#[test]
fn no_cache_runs_every_step_even_with_a_cache_from() {
    let Some(ctx) = multistage() else { return };
    let work = tempdir();
    let cache = work.path().join("cache");
    let root = work.path().join("root-a");
    build_ok(
        ctx.path(),
        &root,
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=max", s(&cache)),
        ],
    );
    let from = format!("type=local,src={}", s(&cache));
    for (name, root) in [
        ("empty root", work.path().join("root-b")),
        ("same root", root),
    ] {
        let outcome = build_ok(ctx.path(), &root, &["--no-cache", "--cache-from", &from]);
        assert_eq!(
            count_cached(outcome.meta()),
            0,
            "{name}: {:#?}",
            steps(outcome.meta())
        );
        assert_eq!(steps(outcome.meta()).len(), ALL_STEPS, "{name}");
        assert_eq!(
            outcome.progress().executed_steps().len(),
            ALL_STEPS,
            "{name}:\n{}",
            outcome.stderr()
        );
    }
}

#[test]
fn an_invalid_cache_mode_is_rejected_before_building() {
    let Some(ctx) = busybox_context("FROM scratch\nCOPY busybox /bin/busybox\n") else {
        return;
    };
    let work = tempdir();
    let cache = work.path().join("cache");
    let outcome = build(
        ctx.path(),
        &work.path().join("root"),
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=maximum", s(&cache)),
        ],
    );
    let stderr = outcome.stderr();
    assert!(!outcome.success(), "mode=maximum is rejected: {stderr}");
    assert!(stderr.contains("mode"), "{stderr}");
    assert!(stderr.contains("maximum"), "{stderr}");
    assert!(
        stderr.contains("min") && stderr.contains("max"),
        "names the allowed values: {stderr}"
    );
    assert!(
        outcome.progress().all_steps().is_empty(),
        "nothing was built: {stderr}"
    );
    assert!(
        outcome.metadata.is_none(),
        "no metadata for a build that never started"
    );
    assert!(!cache.exists(), "nothing exported");
}

#[test]
fn an_unusable_base_image_layer_fails_the_build_once() {
    let work = tempdir();
    let outside = tempdir();
    let escape = format!(
        "{}{}/evil",
        "../".repeat(20),
        s(outside.path()).trim_start_matches('/')
    );
    let layer = raw_tar(&[RawEntry::File(&escape, b"pwned\n", 0o644)]);
    let Some(outcome) = build_on_hostile_base(work.path(), &[layer]) else {
        return;
    };
    let stderr = outcome.assert_failure();
    // A layer of the FROM image is no cache result: there is no miss to fall back to, so the
    // build stops at the first refusal instead of restarting and extracting the base again.
    assert_eq!(
        stderr.matches("[1/2] FROM base").count(),
        1,
        "the base is resolved once: {stderr}"
    );
    assert!(
        !stderr.contains("treated as misses"),
        "a base image layer is not a cache blob: {stderr}"
    );
    assert!(stderr.contains("evil"), "{stderr}");
}

/// Three stages `FROM` one base: where overlays can be mounted (root), each gets an overlay on
/// one unpacked copy of the base (no copy of the tree), and what a stage changes, adds or
/// deletes stays out of its siblings.
const SIBLINGS: &str = r#"FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /etc && echo original > /etc/conf && echo keep > /etc/gone

FROM base AS left
RUN echo left >> /etc/conf && rm /etc/gone && echo new > /left.txt

FROM base AS right
RUN cat /etc/conf /etc/gone > /right.txt && test ! -e /left.txt

FROM base
COPY --from=left /etc/conf /left-conf
COPY --from=left /left.txt /left.txt
COPY --from=right /right.txt /right.txt
"#;

#[test]
fn stages_on_one_base_share_it_through_overlays_without_seeing_each_other() {
    let Some(ctx) = busybox_context(SIBLINGS) else {
        return;
    };
    let work = tempdir();
    let out = work.path().join("out");
    let dest = format!("type=local,dest={}", s(&out));
    let outcome = build_ok(ctx.path(), &work.path().join("root"), &["--output", &dest]);
    let read =
        |rel: &str| fs::read_to_string(out.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(read("left-conf"), "original\nleft\n");
    assert_eq!(read("left.txt"), "new\n");
    assert_eq!(
        read("right.txt"),
        "original\nkeep\n",
        "right saw left's changes"
    );
    assert_eq!(
        read("etc/conf"),
        "original\n",
        "the final stage saw left's change"
    );
    assert_eq!(
        read("etc/gone"),
        "keep\n",
        "the final stage saw left's delete"
    );
    let stderr = outcome.stderr();
    if support::is_root() {
        assert!(
            stderr.contains("mounting the unpacked base (overlay)"),
            "as root, sibling stages mount overlays: {stderr}"
        );
        assert!(
            !stderr.contains("copying the"),
            "no copy of the base: {stderr}"
        );
    }
}

/// Overlays mounted by a build live in the build's own mount namespace: a build killed with
/// SIGKILL while its stages are mounted leaves no mount behind, and the next build on the root
/// removes its work directory.
#[test]
fn a_killed_build_leaves_no_overlay_mounted() {
    if !support::is_root() {
        eprintln!("skipped: overlays are mounted only by root");
        return;
    }
    let dockerfile = SIBLINGS.replace("RUN cat /etc/conf", "RUN sleep 60 && cat /etc/conf");
    let Some(ctx) = busybox_context(&dockerfile) else {
        return;
    };
    let work = tempdir();
    let root = work.path().join("root");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("buildcache"))
        .args([
            "build",
            "--progress=plain",
            "--root",
            s(&root),
            s(ctx.path()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting buildcache");
    let own_mounts = format!("/proc/{}/mountinfo", child.id());
    let root_text = fs::canonicalize(&root)
        .unwrap_or_else(|_| root.clone())
        .to_string_lossy()
        .into_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let table = fs::read_to_string(&own_mounts).unwrap_or_default();
        if table
            .lines()
            .any(|line| line.contains(" - overlay ") && line.contains(&root_text))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "the build never mounted an overlay under {root_text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let host = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host.contains(&root_text),
        "a mount under the root outlived the build:\n{host}"
    );
    // The next build on the root collects what the killed one left (its own directory goes
    // afterwards, in the background: a_build_leaves_its_work_directory_to_a_background_removal).
    let killed: Vec<_> = fs::read_dir(root.join("tmp"))
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .collect();
    assert!(!killed.is_empty(), "the killed build had a work directory");
    // Its sandbox processes die with it (a parent-death signal) but may hold a copy of its lock
    // for a moment after it was reaped: the next build collects only what no process holds.
    for lock in killed
        .iter()
        .filter(|path| path.extension().is_some_and(|e| e == "lock"))
    {
        let file = fs::File::open(lock).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while file.try_lock().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} stays locked",
                lock.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let quick = busybox_context("FROM scratch\nCOPY busybox /bin/busybox\n").unwrap();
    build_ok(quick.path(), &root, &[]);
    let left: Vec<_> = killed.iter().filter(|path| path.exists()).collect();
    assert!(
        left.is_empty(),
        "the killed build's work directory outlived the next build: {left:?}"
    );
}

/// A build hands its work directory (every stage's root filesystem) to a background process
/// that deletes it once the build has exited, so the result does not wait for the deletion;
/// nothing of it is left afterwards, not even the lock file.
#[test]
fn a_build_leaves_its_work_directory_to_a_background_removal() {
    let Some(ctx) = multistage() else {
        return;
    };
    let work = tempdir();
    let root = work.path().join("root");
    build_ok(ctx.path(), &root, &[]);
    let left = support::work_dirs_left(&root);
    assert!(left.is_empty(), "left in {}/tmp: {left:?}", root.display());
}
