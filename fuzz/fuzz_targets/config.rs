//! Fuzz target: a cache config parsed, validated into a graph and, when valid, written back,
//! read again, merged and selected (the import path and the export path of any cache).
#![no_main]

use cache_core::config::CacheConfig;
use cache_core::graph::CacheGraph;
use cache_core::{Descriptor, Digest, Mode};
use libfuzzer_sys::fuzz_target;

fn lookup(digest: &Digest) -> Option<Descriptor> {
    // Every blob is listed but one family, so that results with missing blobs are dropped too.
    (!digest.digest().starts_with('0')).then(|| {
        Descriptor::new(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            digest.clone(),
            1,
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(config) = CacheConfig::from_json(data) else {
        return;
    };
    let Ok(graph) = CacheGraph::from_config(&config, &lookup, 0) else {
        return;
    };
    let (written, _) = graph.to_config();
    let again = CacheGraph::from_config(&written, &lookup, 0).expect("a written config reads back");
    assert_eq!(
        again.to_config().0,
        written,
        "writing is deterministic and round-trips"
    );
    let merged = CacheGraph::merge([&graph, &again]);
    let all: Vec<usize> = (0..merged.records().len()).collect();
    let _ = merged
        .select(&all, Mode::Max)
        .without_dead_records()
        .to_config();
    if let Some(last) = all.last() {
        let _ = merged.select(&[*last], Mode::Min).to_config();
    }
});
