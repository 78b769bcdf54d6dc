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

/// Issue 9, items 3 and 5: every corpus Dockerfile against the real BuildKit.
///
/// For each entry, on a daemon emptied by `prune --all` and empty buildcache roots:
/// 1. BuildKit builds it cold, exporting its cache (`mode=max`) to a directory and a registry;
/// 2. buildcache builds it cold, exporting likewise: both images hold the same files (content,
///    mode, owner, link targets) and the same config and history;
/// 3. buildcache imports BuildKit's caches (local, then registry): every step is cached, and
///    the image's files are BuildKit's;
/// 4. BuildKit, pruned again, imports buildcache's caches (local, then registry): every step
///    prints `CACHED`.
#[test]
fn issue_9_corpus_against_buildkit() {
    let Some(bk) = buildkit::buildkit_under_test() else {
        return;
    };
    let Some(base) = buildkit::busybox_base() else {
        return;
    };
    let registry = support::registry_under_test();
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let entries = corpus::entries();
    let run = support::nonce();
    for entry in &entries {
        let repo = registry
            .as_ref()
            .map(|addr| format!("{addr}/interop-{run}/{}", entry.name));
        let problems = check_entry(&bk, &base, entry, repo.as_deref());
        if !problems.is_empty() {
            failures.push(format!("{}:\n  {}", entry.name, problems.join("\n  ")));
        }
    }
    eprintln!(
        "corpus of {} entries checked against BuildKit in {:.1?}",
        entries.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} corpus entries differ from BuildKit:\n{}",
        failures.len(),
        entries.len(),
        failures.join("\n")
    );
}

/// Corpus entries whose caches cannot cross between the tools: they use a form whose key is
/// buildcache's own (README, "Steps whose keys are buildcache's own"). Their images are still
/// compared, and that their caches still miss is checked, so an entry that starts hitting must
/// leave this list.
const OWN_KEY_ENTRIES: &[(&str, &str)] = &[];

/// The phases of [`issue_9_corpus_against_buildkit`] for one entry; returns what went wrong.
fn check_entry(
    bk: &buildkit::Buildkit,
    base: &buildkit::BaseImage,
    entry: &corpus::Entry,
    repo: Option<&str>,
) -> Vec<String> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let context = entry.prepare(&work.join("entry"));
    let bk_local = work.join("bk-cache");
    let bc_local = work.join("bc-cache");
    let caches = |local: &Path, tag: &str| {
        let mut specs = vec![format!("type=local,dest={},mode=max", s(local))];
        specs.extend(repo.map(|repo| format!("type=registry,ref={repo}:{tag},mode=max")));
        specs
    };
    let sources = |local: &Path, tag: &str| {
        let mut specs = vec![("local", format!("type=local,src={}", s(local)))];
        specs.extend(repo.map(|repo| ("registry", format!("type=registry,ref={repo}:{tag}"))));
        specs
    };

    bk.prune_all();
    let theirs = match buildkit_image(bk, base, entry, &context, work, caches(&bk_local, "bk")) {
        Ok(image) => image,
        Err(err) => return vec![err],
    };
    let mut problems = Vec::new();
    // What went wrong with the caches crossing over (phases 3 and 4).
    let mut cross = Vec::new();
    match buildcache_image(
        base,
        entry,
        &context,
        work,
        "cold",
        &[],
        &caches(&bc_local, "bc"),
    ) {
        Ok((ours, _)) => problems.extend(
            corpus::differences(&theirs, &ours)
                .into_iter()
                .map(|diff| format!("image: {diff}")),
        ),
        Err(err) => return vec![err],
    }

    for (kind, spec) in sources(&bk_local, "bk") {
        let what = format!("buildcache importing BuildKit's {kind} cache");
        match buildcache_image(
            base,
            entry,
            &context,
            work,
            kind,
            std::slice::from_ref(&spec),
            &[],
        ) {
            Ok((ours, meta)) => {
                let ran = support::uncached_steps(&meta);
                if !ran.is_empty() {
                    cross.push(format!("{what}: steps ran: {ran:?}"));
                }
                // Issue 9, item 6: the metadata names the source of each hit.
                let misnamed: Vec<String> = support::steps(&meta)
                    .into_iter()
                    .filter(|step| step.cached && step.cache_source.as_deref() != Some(&spec))
                    .map(|step| format!("{} ({:?})", step.name, step.cache_source))
                    .collect();
                if !misnamed.is_empty() {
                    problems.push(format!("{what}: cache_source is not {spec}: {misnamed:?}"));
                }
                problems.extend(
                    corpus::differences(&theirs, &ours)
                        .into_iter()
                        .map(|diff| format!("{what}: image: {diff}")),
                );
            }
            Err(err) => cross.push(format!("{what}: {err}")),
        }
    }

    for (kind, spec) in sources(&bc_local, "bc") {
        let what = format!("BuildKit importing buildcache's {kind} cache");
        bk.prune_all();
        let outcome = bk.build_entry(
            entry,
            &context,
            base,
            &BuildkitBuild {
                cache_from: vec![spec],
                ..BuildkitBuild::default()
            },
        );
        if !outcome.output.status.success() {
            cross.push(format!(
                "{what}: build failed:\n{}",
                tail(&outcome.stderr())
            ));
            continue;
        }
        let not_cached: Vec<String> = outcome
            .all_steps()
            .into_iter()
            .filter(|step| !outcome.cached_steps().contains(step))
            .collect();
        if !not_cached.is_empty() {
            cross.push(format!("{what}: not CACHED: {not_cached:?}"));
        }
        cross.extend(
            outcome
                .import_errors()
                .into_iter()
                .map(|line| format!("{what}: {line}")),
        );
    }
    match OWN_KEY_ENTRIES.iter().find(|(name, _)| *name == entry.name) {
        None => problems.extend(cross),
        Some(_) if cross.is_empty() => problems.push(
            "its caches now cross between the tools: remove it from OWN_KEY_ENTRIES (and README)"
                .to_owned(),
        ),
        Some((_, why)) => eprintln!("{}: caches do not cross ({why})", entry.name),
    }
    problems
}

/// Builds `entry` with BuildKit into an OCI layout, exporting its cache to `cache_to`, and reads
/// the image.
fn buildkit_image(
    bk: &buildkit::Buildkit,
    base: &buildkit::BaseImage,
    entry: &corpus::Entry,
    context: &Path,
    work: &Path,
    cache_to: Vec<String>,
) -> Result<corpus::Image, String> {
    let tar = work.join("buildkit.tar");
    let outcome = bk.build_entry(
        entry,
        context,
        base,
        &BuildkitBuild {
            output: Some(format!("type=oci,dest={}", s(&tar))),
            cache_to,
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

/// Builds `entry` with buildcache on an empty root `work/root-NAME` into an OCI layout, with
/// `--cache-from` and `--cache-to` specs, and reads the image and the metadata file.
fn buildcache_image(
    base: &buildkit::BaseImage,
    entry: &corpus::Entry,
    context: &Path,
    work: &Path,
    name: &str,
    cache_from: &[String],
    cache_to: &[String],
) -> Result<(corpus::Image, serde_json::Value), String> {
    let tar = work.join(format!("buildcache-{name}.tar"));
    let mut args = entry.buildcache_args(context.parent().expect("the entry dir"));
    args.extend(base.buildcache_args());
    args.push("--output".to_owned());
    args.push(format!("type=oci,dest={}", s(&tar)));
    for spec in cache_from {
        args.extend(["--cache-from".to_owned(), spec.clone()]);
    }
    for spec in cache_to {
        args.extend(["--cache-to".to_owned(), spec.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome = support::build(context, &work.join(format!("root-{name}")), &args);
    if !outcome.success() {
        return Err(format!(
            "buildcache build failed:\n{}",
            tail(&outcome.stderr())
        ));
    }
    let layout = work.join(format!("buildcache-image-{name}"));
    support::untar(&tar, &layout);
    Ok((corpus::read_image(&layout), outcome.meta().clone()))
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
