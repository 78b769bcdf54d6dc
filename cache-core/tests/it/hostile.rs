//! Hostile configs (issue 15): deep layer chains, huge record counts, one digest on many
//! records and many results on one record import in linear time. Speed itself is measured in
//! cache-bench (`cache-core/config-parse-chain`); these sizes were quadratic before.

use cache_core::Mode;
use cache_core::config::{CacheConfig, CacheInput, CacheLayer, CacheRecord, CacheResult};
use cache_core::graph::{CacheGraph, ParseError};
use cache_core::{Descriptor, Digest, digest};

fn lookup(d: &Digest) -> Option<Descriptor> {
    Some(Descriptor::new(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        d.clone(),
        10,
    ))
}

fn result(layer: usize) -> CacheResult {
    CacheResult {
        layer: layer as i64,
        created_at: cache_core::config::zero_time(),
    }
}

/// `n` layers in one chain and `n` records in one chain, record `i` holding layer `i`.
fn chain_config(n: usize) -> CacheConfig {
    CacheConfig {
        layers: (0..n)
            .map(|i| CacheLayer {
                blob: digest::sha256(format!("layer {i}").as_bytes()).to_string(),
                parent: i as i64 - 1,
                annotations: None,
            })
            .collect(),
        records: (0..n)
            .map(|i| CacheRecord {
                layers: vec![result(i)],
                chains: Vec::new(),
                digest: digest::sha256(format!("record {i}").as_bytes()).to_string(),
                inputs: if i == 0 {
                    Vec::new()
                } else {
                    vec![vec![CacheInput {
                        selector: String::new(),
                        link: i as i64 - 1,
                    }]]
                },
            })
            .collect(),
    }
}

#[test]
fn issue_15_a_128k_layer_chain_imports() {
    let n = 128 * 1024;
    let graph = CacheGraph::from_config(&chain_config(n), &lookup, 0).unwrap();
    assert_eq!(graph.layers().len(), n);
    assert_eq!(graph.records().len(), n);
    let top = graph.best_result(n - 1).unwrap().layer;
    assert_eq!(graph.chain(top).len(), n);
    // A loop at the far end of the chain is still found.
    let mut looping = chain_config(n);
    looping.layers[0].parent = n as i64 - 1;
    let err = CacheGraph::from_config(&looping, &lookup, 0).unwrap_err();
    assert!(matches!(err, ParseError::LoopingLayer { .. }), "{err}");
}

#[test]
fn issue_15_a_deep_chain_merges_selects_and_writes_back() {
    let n = 20_000;
    let graph = CacheGraph::from_config(&chain_config(n), &lookup, 0).unwrap();
    let merged = CacheGraph::merge([&graph, &graph]);
    assert_eq!(merged.records().len(), n);
    let all: Vec<usize> = (0..n).collect();
    let max = merged.select(&all, Mode::Max).without_dead_records();
    let min = merged.select(&[n - 1], Mode::Min);
    for selected in [&max, &min] {
        let (config, layers) = selected.to_config();
        assert_eq!(config.records.len(), n);
        assert_eq!(layers.len(), n);
        let back = CacheGraph::from_config(&config, &lookup, 0).unwrap();
        assert_eq!(back.records().len(), n);
    }
}

#[test]
fn issue_15_one_digest_on_many_records_and_many_results_on_one_record() {
    let n = 100_000;
    let shared = digest::sha256(b"one digest").to_string();
    let mut config = CacheConfig {
        layers: vec![CacheLayer {
            blob: digest::sha256(b"layer").to_string(),
            parent: -1,
            annotations: None,
        }],
        records: vec![CacheRecord {
            // The same result many times, and many times at different times.
            layers: (0..n)
                .map(|i| CacheResult {
                    layer: 0,
                    created_at: time::OffsetDateTime::from_unix_timestamp((i % (n / 2)) as i64)
                        .unwrap(),
                })
                .collect(),
            chains: Vec::new(),
            digest: digest::sha256(b"root").to_string(),
            inputs: Vec::new(),
        }],
    };
    // Records with one digest, each linking the root with its own selector, each twice.
    for i in 0..n {
        config.records.push(CacheRecord {
            layers: Vec::new(),
            chains: Vec::new(),
            digest: shared.clone(),
            inputs: vec![vec![CacheInput {
                selector: format!("sel{}", i / 2),
                link: 0,
            }]],
        });
    }
    let graph = CacheGraph::from_config(&config, &lookup, 0).unwrap();
    assert_eq!(graph.records().len(), 1 + n / 2);
    assert_eq!(graph.record(0).results.len(), n / 2);
    let sel = "sel777".to_owned();
    let found = graph.find(&shared.parse().unwrap(), &[(sel.as_str(), &[0])]);
    assert_eq!(found.len(), 1);
}

/// Found by the `manifest` fuzz target: an image manifest listing a second blob of the cache
/// config's media type among its layers read as a cache with that blob as a layer, while the
/// same blobs in an index gave a cache whose config was the second blob.
#[test]
fn issue_15_fuzz_a_manifest_with_two_cache_configs_is_refused() {
    use cache_core::RawIndex;
    use cache_core::manifest::{self, ReadError};
    let config = r#"{"mediaType":"application/vnd.buildkit.cacheconfig.v0","digest":"sha256:36296c54938ce1b877c904c9a5a4da96433e4fe992088a980811b64d51d14639","size":381}"#;
    let other = r#"{"mediaType":"application/vnd.buildkit.cacheconfig.v0","digest":"sha256:a6a90f24e48b7ac27098f2d586ff85f53f362cfc7cd322cca66ecb14a108d9e7","size":825}"#;
    let layer = r#"{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:27ff32c80525e85fc50a7d899987eb288931b225044513f6eab10c1db000d442","size":1058282}"#;
    let as_manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{config},"layers":[{layer},{other}]}}"#
    );
    let as_index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{layer},{config},{other}]}}"#
    );
    for text in [as_manifest, as_index] {
        let err = manifest::read(&RawIndex::new(None, text.into_bytes())).unwrap_err();
        assert!(matches!(err, ReadError::ExtraConfig { .. }), "{err}");
        assert!(err.to_string().contains("more than one"), "{err}");
    }
}
