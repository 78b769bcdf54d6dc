//! Interop with the real BuildKit: the same Dockerfiles built by both tools, caches crossing over.

use std::path::Path;

use crate::support::buildkit::{self, BuildkitBuild};
use crate::support::{s, write_file};

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
