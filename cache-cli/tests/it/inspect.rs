//! `buildcache cache inspect` on BuildKit's own exports, read in place.

use std::path::PathBuf;

fn fixtures() -> Option<PathBuf> {
    let dir = std::env::var_os("BUILDCACHE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/buildkit")
        });
    if dir.join("local-max/index.json").exists() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "BuildKit fixtures missing at {} on CI",
        dir.display()
    );
    eprintln!("skipping: BuildKit fixtures not found at {}", dir.display());
    None
}

fn inspect(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_buildcache"))
        .args(["cache", "inspect"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn inspect_reports_buildkit_fixture_counts() {
    let Some(dir) = fixtures() else { return };
    for (name, records, with_results, layers, media_type) in [
        (
            "local-max",
            12,
            7,
            8,
            "application/vnd.oci.image.manifest.v1+json",
        ),
        (
            "local-min",
            12,
            3,
            4,
            "application/vnd.oci.image.manifest.v1+json",
        ),
        (
            "local-max-legacy-index",
            12,
            7,
            8,
            "application/vnd.oci.image.index.v1+json",
        ),
    ] {
        let source = format!("type=local,src={}", dir.join(name).display());
        let out = inspect(&["--format", "json", &source]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["records"], records, "{name}");
        assert_eq!(report["records_with_results"], with_results, "{name}");
        assert_eq!(report["layers"], layers, "{name}");
        assert_eq!(report["manifest_media_type"], media_type, "{name}");
        assert!(
            report["total_size"].as_u64().unwrap() > 1_000_000,
            "{name}: the busybox layer counts"
        );
        let text = inspect(&[&source]);
        assert!(text.status.success());
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains(&format!(
                "records:   {records} ({with_results} with results)"
            )),
            "{text}"
        );
        if name.contains("legacy") {
            assert!(
                text.contains("(index, application/vnd.oci.image.index.v1+json"),
                "{text}"
            );
        }
    }
}

#[test]
fn inspect_of_a_missing_or_invalid_cache_fails_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = format!("type=local,src={}", tmp.path().join("nothing").display());
    let out = inspect(&[&missing]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("index.json is missing"));

    std::fs::write(tmp.path().join("index.json"), "{not json").unwrap();
    let invalid = format!("type=local,src={}", tmp.path().display());
    let out = inspect(&[&invalid]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("index.json"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = inspect(&["type=local,src=/x,mode=max"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown attribute \"mode\""));
}

#[test]
fn inspect_by_tag_and_digest() {
    let Some(dir) = fixtures() else { return };
    let src = dir.join("local-min");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let by_digest = format!("type=local,src={},digest={digest}", src.display());
    let out = inspect(&["--format", "json", &by_digest]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["manifest_digest"], digest);
    let by_tag = format!("type=local,src={},tag=other", src.display());
    let out = inspect(&[&by_tag]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tag other"));
}
