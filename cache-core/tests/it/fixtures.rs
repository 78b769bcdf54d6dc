//! BuildKit's real exports (../shared/fixtures/buildkit), read in place.

use std::path::{Path, PathBuf};

use cache_core::config::CacheConfig;
use cache_core::graph::CacheGraph;
use cache_core::manifest::{self, ManifestForm};
use cache_core::{Descriptor, Digest, RawIndex, digest};

/// The fixture folder beside the checkout; `None` (with a message) outside CI when it is absent.
pub fn fixtures_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("BUILDCACHE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/buildkit")
        });
    if dir.join("README.md").exists() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "BuildKit fixtures not found at {}: they must be beside the checkout on CI",
            dir.display()
        );
    }
    eprintln!("skipping: BuildKit fixtures not found at {}", dir.display());
    None
}

fn blob(dir: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let bytes = std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap();
    assert_eq!(
        digest::sha256(&bytes).to_string(),
        digest,
        "fixture blob is intact"
    );
    bytes
}

struct Loaded {
    form: ManifestForm,
    config_bytes: Vec<u8>,
    config: CacheConfig,
    layers: Vec<Descriptor>,
    graph: CacheGraph,
}

fn load_layout(dir: &Path) -> Loaded {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
    let digest = entry["digest"].as_str().unwrap();
    let raw = RawIndex::new(
        entry["mediaType"].as_str().map(String::from),
        blob(dir, digest),
    );
    load(&raw, |d| blob(dir, d))
}

fn load(raw: &RawIndex, read: impl Fn(&str) -> Vec<u8>) -> Loaded {
    let cache_manifest = manifest::read(raw).unwrap();
    let config_bytes = read(cache_manifest.config.digest.as_ref());
    let config = CacheConfig::from_json(&config_bytes).unwrap();
    let layers = cache_manifest.layers.clone();
    let lookup = layers.clone();
    let graph = CacheGraph::from_config(
        &config,
        &|d: &Digest| lookup.iter().find(|l| &l.digest == d).cloned(),
        0,
    )
    .unwrap();
    Loaded {
        form: cache_manifest.form,
        config_bytes,
        config,
        layers,
        graph,
    }
}

fn with_results(graph: &CacheGraph) -> usize {
    graph
        .records()
        .iter()
        .filter(|r| !r.results.is_empty())
        .count()
}

#[test]
fn local_exports_parse_with_the_counts_buildkit_wrote() {
    let Some(dir) = fixtures_dir() else { return };
    for (name, form, records, results, layers) in [
        ("local-min", ManifestForm::ImageManifest, 12, 3, 4),
        ("local-max", ManifestForm::ImageManifest, 12, 7, 8),
        ("local-max-legacy-index", ManifestForm::OciIndex, 12, 7, 8),
    ] {
        let loaded = load_layout(&dir.join(name));
        assert_eq!(loaded.form, form, "{name}");
        assert_eq!(loaded.graph.records().len(), records, "{name}");
        assert_eq!(with_results(&loaded.graph), results, "{name}");
        assert_eq!(loaded.graph.layers().len(), layers, "{name}");
        assert_eq!(loaded.config.layers.len(), layers, "{name}");
    }
}

#[test]
fn rewriting_a_buildkit_config_gives_the_same_graph_and_stable_bytes() {
    let Some(dir) = fixtures_dir() else { return };
    for name in ["local-min", "local-max", "local-max-legacy-index"] {
        let loaded = load_layout(&dir.join(name));
        let (config, layer_descs) = loaded.graph.to_config();
        let bytes = config.to_json();
        // BuildKit's own sort put these configs in the same order we write.
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            String::from_utf8(loaded.config_bytes.clone()).unwrap(),
            "{name}: our serialization of BuildKit's graph matches BuildKit's bytes"
        );
        let reparsed = CacheGraph::from_config(
            &CacheConfig::from_json(&bytes).unwrap(),
            &|d: &Digest| layer_descs.iter().find(|l| &l.digest == d).cloned(),
            0,
        )
        .unwrap();
        assert_eq!(reparsed.records().len(), loaded.graph.records().len());
        assert_eq!(with_results(&reparsed), with_results(&loaded.graph));
        assert_eq!(
            reparsed.to_config().0.to_json(),
            bytes,
            "{name}: write → parse → write is stable"
        );
        // The manifest we would write lists the same layer descriptors in the same order.
        assert_eq!(layer_descs, loaded.layers, "{name}");
    }
}

#[test]
fn registry_export_parses_and_its_manifest_digest_matches_the_header() {
    let Some(dir) = fixtures_dir() else { return };
    let dir = dir.join("registry-app-buildcache");
    let bytes = std::fs::read(dir.join("manifest.json")).unwrap();
    let headers = std::fs::read_to_string(dir.join("manifest.headers.txt")).unwrap();
    let raw = RawIndex::new(None, bytes);
    assert!(headers.contains(&format!("Docker-Content-Digest: {}", raw.digest)));
    let config_bytes = std::fs::read(dir.join("cacheconfig.json")).unwrap();
    let loaded = load(&raw, |_| config_bytes.clone());
    assert_eq!(loaded.form, ManifestForm::ImageManifest);
    assert_eq!(loaded.graph.records().len(), 12);
    assert_eq!(with_results(&loaded.graph), 7);
}

#[test]
fn results_whose_blobs_are_not_listed_are_dropped_but_records_stay() {
    let Some(dir) = fixtures_dir() else { return };
    let loaded = load_layout(&dir.join("local-max"));
    let keep: Vec<Descriptor> = loaded.layers.iter().skip(1).cloned().collect();
    let graph = CacheGraph::from_config(
        &loaded.config,
        &|d: &Digest| keep.iter().find(|l| &l.digest == d).cloned(),
        0,
    )
    .unwrap();
    assert_eq!(graph.records().len(), 12);
    assert!(with_results(&graph) < 7);
}
