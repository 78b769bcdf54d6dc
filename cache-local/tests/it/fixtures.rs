//! Reading real BuildKit `type=local` exports in place.

use std::path::PathBuf;

use cache_core::{Backend, IndexRef};
use cache_local::LayoutDir;

use crate::util::check_tag;

/// The BuildKit fixtures directory, or `None` (with a message) when it is absent outside CI.
fn fixtures_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("BUILDCACHE_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/buildkit"),
    };
    if dir.join("local-min").is_dir() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "BuildKit fixtures not found at {}: set BUILDCACHE_FIXTURES on CI",
            dir.display()
        );
    }
    eprintln!(
        "skipping: BuildKit fixtures not found at {} (set BUILDCACHE_FIXTURES)",
        dir.display()
    );
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildkit_exports_read_in_place() {
    let Some(fixtures) = fixtures_dir() else {
        return;
    };
    for name in ["local-min", "local-max", "local-max-legacy-index"] {
        let dir = fixtures.join(name);
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("index.json")).expect("read fixture index.json"),
        )
        .expect("fixture index.json is JSON");
        let entry = &index["manifests"][0];
        let before = listing(&dir);
        let layout = LayoutDir::open_existing(&dir).expect("fixture is a layout");

        let raw = check_tag(&layout, "latest", None).await;
        assert_eq!(
            raw.digest.to_string(),
            entry["digest"].as_str().expect("digest"),
            "{name}: manifest digest"
        );
        assert_eq!(
            raw.bytes.len() as u64,
            entry["size"].as_u64().expect("size"),
            "{name}: manifest size"
        );
        assert_eq!(
            raw.media_type.as_deref(),
            entry["mediaType"].as_str(),
            "{name}: media type from index.json"
        );
        let by_digest = layout
            .read_index(&IndexRef::Digest(raw.digest.clone()))
            .await
            .expect("read by digest")
            .expect("present by digest");
        assert_eq!(by_digest.bytes, raw.bytes, "{name}: by digest");
        assert_eq!(by_digest.media_type, None);

        let tags = layout.tags().expect("tags");
        assert_eq!(tags.len(), 1, "{name}: one entry");
        assert_eq!(tags[0].0, "latest");
        assert_eq!(tags[0].1.digest, raw.digest);
        assert!(
            layout
                .read_index(&IndexRef::Tag("other".into()))
                .await
                .expect("read other tag")
                .is_none(),
            "{name}: an absent tag is None"
        );
        let n_blobs = layout.list_blobs().expect("list_blobs").len();
        let n_children = crate::util::children(&raw.bytes).len();
        assert!(
            n_blobs > n_children,
            "{name}: {n_blobs} blobs for {n_children} children"
        );
        assert_eq!(listing(&dir), before, "{name}: reading must not write");
    }
}

/// Every path under `dir` with its size and modification time.
fn listing(dir: &std::path::Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::metadata(&path).expect("metadata");
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.push((path, meta.len(), meta.modified().expect("mtime")));
        }
    }
    out.sort();
    out
}
