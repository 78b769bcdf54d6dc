//! Which imported cache gave each hit, and the warning for a cache that gave none (issue 9).

use crate::support::{self, build_ok, busybox_context, s};

const BUILT: &str =
    "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"touch\", \"/a\"]\n";

/// Another Dockerfile: no step of it has a key of [`BUILT`]'s cache.
const OTHER: &str =
    "FROM scratch\nCOPY busybox /sbin/busybox\nRUN [\"/sbin/busybox\", \"touch\", \"/b\"]\n";

/// The number of records of the cache config tagged `latest` in a local cache directory.
fn n_records(cache: &std::path::Path) -> usize {
    let manifest = support::layout_manifest(cache, Some("latest"));
    let config = support::read_json(&support::layout_blob(
        cache,
        manifest["config"]["digest"]
            .as_str()
            .expect("a cache manifest names its config"),
    ));
    config["records"]
        .as_array()
        .expect("a cache config has records")
        .len()
}

#[test]
fn issue_9_a_cache_that_gives_no_hit_is_one_warning_naming_it_and_its_record_count() {
    let Some(built) = busybox_context(BUILT) else {
        return;
    };
    let Some(other) = busybox_context(OTHER) else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let cache = work.path().join("cache");
    build_ok(
        built.path(),
        &work.path().join("root-export"),
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=max", s(&cache)),
        ],
    );
    let n = n_records(&cache);
    assert!(n >= 3, "the cache holds the steps' records: {n}");
    let from = format!("type=local,src={}", s(&cache));

    let missed = build_ok(
        other.path(),
        &work.path().join("root-other"),
        &["--cache-from", &from],
    );
    let warning = format!(
        "WARNING: cache {from} gave no hit: none of its {n} records is a step of this build"
    );
    let stderr = missed.stderr();
    assert_eq!(
        stderr
            .lines()
            .filter(|line| line.contains("gave no hit"))
            .count(),
        1,
        "one warning line:\n{stderr}"
    );
    assert!(stderr.contains(&warning), "{stderr}");
    assert_eq!(
        missed.meta()["buildcache.cache_import_no_hit"],
        serde_json::json!([{"source": from, "records": n}])
    );

    // The Dockerfile the cache was written for: every step is a hit from it, and no warning.
    let hit = build_ok(
        built.path(),
        &work.path().join("root-hit"),
        &["--cache-from", &from],
    );
    assert!(!hit.stderr().contains("gave no hit"), "{}", hit.stderr());
    assert_eq!(
        hit.meta()["buildcache.cache_import_no_hit"],
        serde_json::json!([])
    );
    let steps = support::steps(hit.meta());
    assert!(!steps.is_empty());
    for step in steps {
        assert!(step.cached, "{step:?}");
        assert_eq!(
            step.cache_source.as_deref(),
            Some(from.as_str()),
            "{step:?}"
        );
    }
}
