//! Interop with the real BuildKit: the same Dockerfiles built by both tools, caches crossing over.

use std::path::Path;

use crate::support::buildkit::{self, BuildkitBuild};
use crate::support::{self, corpus, s, write_file};

/// The test helpers drive the real BuildKit: a cold build with a cache export, then, after
/// `prune --all`, a build importing it shows every step `CACHED`.
#[test]
fn buildkit_imports_its_own_local_cache_after_prune() {
    let Some(bk) = buildkit::buildkit_under_test() else {
        return;
    };
    let Some(base) = buildkit::busybox_base() else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let context = work.path().join("context");
    write_file(
        &context.join("Dockerfile"),
        "FROM busybox\nRUN echo one > /one\nCOPY a.txt /a.txt\nRUN cat /a.txt /one > /both\n",
    );
    write_file(&context.join("a.txt"), "a\n");
    let cache = work.path().join("cache");
    bk.prune_all();
    let cold = bk
        .build(
            &context,
            &base,
            &BuildkitBuild {
                cache_to: vec![format!("type=local,dest={},mode=max", s(&cache))],
                ..BuildkitBuild::default()
            },
        )
        .assert_success();
    assert_eq!(cold.executed_steps().len(), 3, "{}", cold.stderr());
    assert!(cold.cached_steps().is_empty(), "{}", cold.stderr());
    bk.prune_all();
    let warm = import_local(&bk, &context, &base, &cache);
    assert_eq!(warm.cached_steps().len(), 3, "{}", warm.stderr());
    assert!(warm.executed_steps().is_empty(), "{}", warm.stderr());
}

fn import_local(
    bk: &buildkit::Buildkit,
    context: &Path,
    base: &buildkit::BaseImage,
    cache: &Path,
) -> buildkit::BuildkitOutcome {
    bk.build(
        context,
        base,
        &BuildkitBuild {
            cache_from: vec![format!("type=local,src={}", s(cache))],
            ..BuildkitBuild::default()
        },
    )
    .assert_success()
}

/// Issue 9, item 3: for every corpus Dockerfile, BuildKit's image and ours hold the same files
/// (content, mode, owner, link targets) and the same config and history.
#[test]
fn issue_9_corpus_images_equal_buildkits() {
    let Some(bk) = buildkit::buildkit_under_test() else {
        return;
    };
    let Some(base) = buildkit::busybox_base() else {
        return;
    };
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let entries = corpus::entries();
    for entry in &entries {
        let work = tempfile::tempdir().expect("tempdir");
        let context = entry.prepare(&work.path().join("entry"));
        let images = buildkit_image(&bk, &base, entry, &context, work.path()).and_then(|theirs| {
            Ok((
                theirs,
                buildcache_image(&base, entry, &context, work.path())?,
            ))
        });
        let diffs = match images {
            Ok((theirs, ours)) => corpus::differences(&theirs, &ours),
            Err(err) => vec![err],
        };
        if !diffs.is_empty() {
            failures.push(format!("{}:\n  {}", entry.name, diffs.join("\n  ")));
        }
    }
    eprintln!(
        "corpus of {} entries built by both tools in {:.1?}",
        entries.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} corpus images differ from BuildKit's:\n{}",
        failures.len(),
        entries.len(),
        failures.join("\n")
    );
}

/// Builds `entry` with BuildKit into an OCI layout and reads it.
fn buildkit_image(
    bk: &buildkit::Buildkit,
    base: &buildkit::BaseImage,
    entry: &corpus::Entry,
    context: &Path,
    work: &Path,
) -> Result<corpus::Image, String> {
    let tar = work.join("buildkit.tar");
    let outcome = bk.build_entry(
        entry,
        context,
        base,
        &BuildkitBuild {
            output: Some(format!("type=oci,dest={}", s(&tar))),
            ..BuildkitBuild::default()
        },
    );
    if !outcome.output.status.success() {
        return Err(format!(
            "buildctl build failed:\n{}",
            tail(&outcome.stderr())
        ));
    }
    let layout = work.join("buildkit-image");
    support::untar(&tar, &layout);
    Ok(corpus::read_image(&layout))
}

/// The last lines of a tool's output, for a failure message.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

/// Builds `entry` with buildcache on an empty root into an OCI layout and reads it.
fn buildcache_image(
    base: &buildkit::BaseImage,
    entry: &corpus::Entry,
    context: &Path,
    work: &Path,
) -> Result<corpus::Image, String> {
    let tar = work.join("buildcache.tar");
    let mut args = entry.buildcache_args(context.parent().expect("the entry dir"));
    args.extend(base.buildcache_args());
    args.push("--output".to_owned());
    args.push(format!("type=oci,dest={}", s(&tar)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome = support::build(context, &work.join("root"), &args);
    if !outcome.success() {
        return Err(format!(
            "buildcache build failed:\n{}",
            tail(&outcome.stderr())
        ));
    }
    let layout = work.join("buildcache-image");
    support::untar(&tar, &layout);
    Ok(corpus::read_image(&layout))
}

/// A cache buildcache exported, facts annotation included, gives BuildKit every step `CACHED`.
#[test]
fn buildkit_imports_a_buildcache_cache_with_its_facts() {
    let Some(bk) = buildkit::buildkit_under_test() else {
        return;
    };
    let Some(base) = buildkit::busybox_base() else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let context = work.path().join("context");
    write_file(
        &context.join("Dockerfile"),
        "FROM busybox\nRUN echo one > /one\nCOPY a.txt /a.txt\nRUN cat /a.txt /one > /both\n",
    );
    write_file(&context.join("a.txt"), "a\n");
    let cache = work.path().join("cache");
    let mut args = base.buildcache_args().to_vec();
    args.extend([
        "--cache-to".to_owned(),
        format!("type=local,dest={},mode=max", s(&cache)),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    support::build_ok(&context, &work.path().join("root"), &args);
    let index = support::read_json(&cache.join("index.json"));
    let manifest = support::read_json(&support::layout_blob(
        &cache,
        index["manifests"][0]["digest"]
            .as_str()
            .expect("a manifest"),
    ));
    assert!(
        manifest["config"]["annotations"]["dev.buildcache.facts.v0"].is_string(),
        "{manifest:#}"
    );
    bk.prune_all();
    let warm = import_local(&bk, &context, &base, &cache);
    assert!(warm.import_errors().is_empty(), "{}", warm.stderr());
    assert_eq!(warm.cached_steps().len(), 3, "{}", warm.stderr());
    assert!(warm.executed_steps().is_empty(), "{}", warm.stderr());
}
