//! Property tests: random valid graphs round-trip; random invalid input errors, never panics.

use cache_core::config::{CacheConfig, CacheInput, CacheLayer, CacheRecord, CacheResult};
use cache_core::graph::CacheGraph;
use cache_core::{Descriptor, Digest, digest};
use proptest::prelude::*;

fn blob_digest(i: usize) -> Digest {
    digest::sha256(format!("blob-{i}").as_bytes())
}

fn lookup(d: &Digest) -> Option<Descriptor> {
    Some(Descriptor::new(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        d.clone(),
        10,
    ))
}

/// A random valid config: layers whose parents point to earlier layers, records whose links
/// point to earlier records (no loops), every input non-empty.
fn valid_config() -> impl Strategy<Value = CacheConfig> {
    (1usize..8, 1usize..10).prop_flat_map(|(n_layers, n_records)| {
        let layers = proptest::collection::vec(any::<prop::sample::Index>(), n_layers);
        let records = proptest::collection::vec(
            (
                0u8..4,
                proptest::collection::vec(
                    proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3), 1..3),
                    0..3,
                ),
                proptest::option::of((any::<prop::sample::Index>(), 0i64..1_000_000_000)),
            ),
            n_records,
        );
        (layers, records).prop_map(move |(layer_parents, records)| {
            let layers = (0..n_layers)
                .map(|i| CacheLayer {
                    blob: blob_digest(i).to_string(),
                    parent: if i == 0 {
                        -1
                    } else {
                        layer_parents[i].index(i + 1) as i64 - 1
                    },
                    annotations: None,
                })
                .collect();
            let records = records
                .into_iter()
                .enumerate()
                .map(|(i, (key, inputs, result))| {
                    let inputs = if i == 0 {
                        Vec::new()
                    } else {
                        inputs
                            .into_iter()
                            .map(|links| {
                                links
                                    .into_iter()
                                    .map(|(target, sel)| CacheInput {
                                        selector: if sel == 0 {
                                            String::new()
                                        } else {
                                            format!("sha256:sel{sel}")
                                        },
                                        link: target.index(i) as i64,
                                    })
                                    .collect()
                            })
                            .collect()
                    };
                    CacheRecord {
                        layers: result
                            .filter(|_| i > 0)
                            .map(|(layer, secs)| CacheResult {
                                layer: layer.index(n_layers) as i64,
                                created_at: time::OffsetDateTime::from_unix_timestamp(secs)
                                    .unwrap(),
                            })
                            .into_iter()
                            .collect(),
                        chains: Vec::new(),
                        digest: digest::sha256(format!("record-{key}").as_bytes()).to_string(),
                        inputs,
                    }
                })
                .collect();
            CacheConfig { layers, records }
        })
    })
}

proptest! {
    #[test]
    fn write_parse_write_is_the_identity(config in valid_config()) {
        let graph = CacheGraph::from_config(&config, &lookup, 0).unwrap();
        let first = graph.to_config().0.to_json();
        let reparsed = CacheGraph::from_config(&CacheConfig::from_json(&first).unwrap(), &lookup, 0).unwrap();
        let second = reparsed.to_config().0.to_json();
        prop_assert_eq!(first, second);
    }

    #[test]
    fn arbitrary_json_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(config) = CacheConfig::from_json(&bytes) {
            let _ = CacheGraph::from_config(&config, &lookup, 0);
        }
    }

    #[test]
    fn out_of_range_and_looping_links_are_errors(config in valid_config(), bad in 0usize..4) {
        let mut config = config;
        let n = config.records.len() as i64;
        let last = config.records.len() - 1;
        match bad {
            0 => config.records[last].inputs = vec![vec![CacheInput { selector: String::new(), link: n + 3 }]],
            1 => config.records[last].inputs = vec![vec![CacheInput { selector: String::new(), link: last as i64 }]],
            2 => config.records[last].inputs = vec![vec![]],
            _ => config.records[last].layers = vec![CacheResult { layer: config.layers.len() as i64, created_at: cache_core::config::zero_time() }],
        }
        prop_assert!(CacheGraph::from_config(&config, &lookup, 0).is_err());
    }
}

/// Found by `write_parse_write_is_the_identity`: records with one digest whose links reach
/// parents in a different internal order once read back were sorted differently.
#[test]
fn records_sharing_a_digest_sort_the_same_after_a_round_trip() {
    let x = "sha256:7bd87ca67f07e7904cc69653a6b4b41af5951dff5eabece3ef3553a034c592a4";
    let json = format!(
        r#"{{"layers":[{{"blob":"sha256:b49b7b4fe5f5fa8fc9542e41c7628ee60433bb8cdf69b224695a5cd8d973b4ad","parent":-1}}],"records":[{{"digest":"sha256:b512b2dd10a5444b38811e7eb9487baaadad0e9da59ef29a0c34c24603e349df"}},{{"digest":"{x}","inputs":[[{{"selector":"","link":0}},{{"selector":"sha256:sel1","link":0}}]]}},{{"digest":"sha256:b7462d6ced2c15add3dbe47755277fa9618aceb17c68f507128896d622d4c5ee"}},{{"digest":"{x}"}},{{"digest":"{x}","inputs":[[{{"selector":"","link":3}},{{"selector":"","link":2}}]]}}]}}"#
    );
    let config = CacheConfig::from_json(json.as_bytes()).unwrap();
    let first = CacheGraph::from_config(&config, &lookup, 0)
        .unwrap()
        .to_config()
        .0
        .to_json();
    let reparsed =
        CacheGraph::from_config(&CacheConfig::from_json(&first).unwrap(), &lookup, 0).unwrap();
    assert_eq!(
        String::from_utf8(reparsed.to_config().0.to_json()).unwrap(),
        String::from_utf8(first).unwrap()
    );
}

#[test]
fn looping_layers_and_records_are_refused_with_a_message() {
    let d = |s: &str| digest::sha256(s.as_bytes()).to_string();
    let json = format!(
        r#"{{"layers":[{{"blob":"{}","parent":1}},{{"blob":"{}"}}],"records":[{{"digest":"{}"}}]}}"#,
        d("a"),
        d("b"),
        d("r")
    );
    let err = CacheGraph::from_config(
        &CacheConfig::from_json(json.as_bytes()).unwrap(),
        &lookup,
        0,
    )
    .unwrap_err();
    assert!(err.to_string().contains("invalid looping layer"), "{err}");
    let json = format!(
        r#"{{"records":[{{"digest":"{}","inputs":[[{{"link":1}}]]}},{{"digest":"{}","inputs":[[{{"link":0}}]]}}]}}"#,
        d("x"),
        d("y")
    );
    let err = CacheGraph::from_config(
        &CacheConfig::from_json(json.as_bytes()).unwrap(),
        &lookup,
        0,
    )
    .unwrap_err();
    assert!(err.to_string().contains("invalid looping record"), "{err}");
    let err = CacheConfig::from_json(br#"{"records":[{"digest":5}]}"#).unwrap_err();
    assert!(
        err.to_string().contains("invalid cache config JSON"),
        "{err}"
    );
}

#[test]
fn merge_prefers_the_newest_result_then_the_first_source() {
    let d = |s: &str| digest::sha256(s.as_bytes());
    let t = |secs| time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
    let build = |source, created, blob: &str| {
        let mut g = CacheGraph::new();
        let root = g.add_record(d("root"), vec![]);
        let step = g.add_record(
            d("step"),
            vec![vec![cache_core::graph::Link {
                selector: String::new(),
                record: root,
            }]],
        );
        let top = g
            .add_chain([Descriptor::new(
                "application/vnd.oci.image.layer.v1.tar",
                d(blob),
                1,
            )])
            .unwrap();
        g.add_result(
            step,
            cache_core::graph::CacheResult {
                layer: top,
                created_at: t(created),
                source,
            },
        );
        g
    };
    let merged = CacheGraph::merge([
        &build(0, 100, "old"),
        &build(1, 200, "new"),
        &build(2, 200, "tie"),
    ]);
    assert_eq!(merged.records().len(), 2);
    let step = merged
        .find_root(&d("root"))
        .map(|root| merged.find(&d("step"), &[("", &[root])]))
        .unwrap();
    assert_eq!(step.len(), 1);
    assert_eq!(merged.record(step[0]).results.len(), 3);
    let best = merged.best_result(step[0]).unwrap();
    assert_eq!(
        best.source, 1,
        "newest wins, and on a tie the source given first"
    );
    assert_eq!(merged.layer(best.layer).blob.digest, d("new"));
}

#[test]
fn dead_records_are_dropped_and_live_ones_keep_their_inputs() {
    use cache_core::graph::{CacheResult, Link};
    let d = |s: &str| digest::sha256(s.as_bytes());
    let link = |record| {
        vec![vec![Link {
            selector: String::new(),
            record,
        }]]
    };
    let mut g = CacheGraph::new();
    // root -> base (result) -> v1 (results pruned) -> v1b (none)
    //                       -> v2 (no result) -> v2b (result)
    let root = g.add_record(d("root"), vec![]);
    let base = g.add_record(d("base"), link(root));
    let v1 = g.add_record(d("v1"), link(base));
    g.add_record(d("v1b"), link(v1));
    let v2 = g.add_record(d("v2"), link(base));
    let v2b = g.add_record(d("v2b"), link(v2));
    for (record, blob) in [(base, "base-layer"), (v2b, "v2b-layer")] {
        let top = g
            .add_chain([Descriptor::new(
                "application/vnd.oci.image.layer.v1.tar",
                d(blob),
                1,
            )])
            .unwrap();
        g.add_result(
            record,
            CacheResult {
                layer: top,
                created_at: time::OffsetDateTime::UNIX_EPOCH,
                source: 0,
            },
        );
    }
    let live = g.without_dead_records();
    let digests: std::collections::BTreeSet<String> = live
        .records()
        .iter()
        .map(|r| r.digest.to_string())
        .collect();
    let expected: std::collections::BTreeSet<String> = ["root", "base", "v2", "v2b"]
        .iter()
        .map(|s| d(s).to_string())
        .collect();
    assert_eq!(digests, expected, "v1 and v1b lead to no result");
    let root = live.find_root(&d("root")).unwrap();
    let base = live.find(&d("base"), &[("", &[root])]);
    let v2 = live.find(&d("v2"), &[("", &base)]);
    let v2b = live.find(&d("v2b"), &[("", &v2)]);
    assert_eq!(live.record(v2b[0]).results.len(), 1, "results are kept");
    assert_eq!(live.record(base[0]).results.len(), 1);
}
