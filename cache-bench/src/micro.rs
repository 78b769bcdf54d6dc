//! Criterion results: reading `target/criterion/**/new/{benchmark,estimates}.json` and pairing
//! each throughput benchmark with the tool that bounds it (`gzip -1`, `zstd -3`, `tar -xzf`,
//! `cp`, `skopeo`).

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One criterion benchmark's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MicroResult {
    /// `<crate>/<operation>/<size>`.
    pub id: String,
    /// Median time per iteration, nanoseconds.
    pub median_ns: f64,
    /// Mean time per iteration, nanoseconds.
    pub mean_ns: f64,
    /// Bytes processed per iteration, for throughput benchmarks.
    pub bytes: Option<u64>,
    /// Elements (records, files) per iteration.
    pub elements: Option<u64>,
}

impl MicroResult {
    /// Bytes per second (decimal MB/s = value / 1e6), for throughput benchmarks.
    pub fn bytes_per_s(&self) -> Option<f64> {
        self.bytes.map(|b| b as f64 / (self.median_ns / 1e9))
    }

    /// Elements per second.
    pub fn elements_per_s(&self) -> Option<f64> {
        self.elements.map(|e| e as f64 / (self.median_ns / 1e9))
    }
}

/// Our operation and the external tool that bounds it, measured on the same data.
pub const LIMITS: &[(&str, &str, &str)] = &[
    (
        "cache-build/layer-tar-gzip",
        "limit/gzip-1",
        "layer tar + gzip (level 1) vs `tar | gzip -1`",
    ),
    (
        "cache-build/layer-tar-zstd",
        "limit/zstd-3",
        "layer tar + zstd (level 3, 2 workers) vs `tar | zstd -3 -T0`",
    ),
    (
        "cache-build/layer-apply",
        "limit/tar-xzf",
        "apply of a gzip layer of 2004 files vs `tar -xzf`",
    ),
    (
        "cache-local/export",
        "limit/cp",
        "local export of the blobs vs `cp` of the same blobs",
    ),
    (
        "cache-registry/push",
        "limit/skopeo-push",
        "registry push vs `skopeo copy oci:… docker://…`",
    ),
    (
        "cache-registry/pull",
        "limit/skopeo-pull",
        "registry pull vs `skopeo copy docker://… oci:…`",
    ),
];

/// Every result under `criterion_dir` (criterion's output directory), sorted by id.
pub fn collect(criterion_dir: &Path) -> Vec<MicroResult> {
    let mut results = Vec::new();
    walk(criterion_dir, &mut results);
    results.sort_by(|a, b| a.id.cmp(&b.id));
    results
}

fn walk(dir: &Path, out: &mut Vec<MicroResult>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            if let Some(result) = read_one(&path) {
                out.push(result);
            }
        } else if path
            .file_name()
            .is_none_or(|n| n != "base" && n != "report")
        {
            walk(&path, out);
        }
    }
}

/// Reads one `new/` directory of criterion's output.
pub fn read_one(new_dir: &Path) -> Option<MicroResult> {
    let bench: serde_json::Value =
        serde_json::from_slice(&fs::read(new_dir.join("benchmark.json")).ok()?).ok()?;
    let estimates: serde_json::Value =
        serde_json::from_slice(&fs::read(new_dir.join("estimates.json")).ok()?).ok()?;
    let throughput = &bench["throughput"];
    Some(MicroResult {
        id: bench["full_id"].as_str()?.to_owned(),
        median_ns: estimates["median"]["point_estimate"].as_f64()?,
        mean_ns: estimates["mean"]["point_estimate"].as_f64()?,
        bytes: throughput["Bytes"]
            .as_u64()
            .or_else(|| throughput["BytesDecimal"].as_u64()),
        elements: throughput["Elements"].as_u64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criterion_output_is_collected_with_throughput() {
        let dir = tempfile::tempdir().expect("tempdir");
        let new = dir.path().join("cache-build_layer-tar-gzip/64MiB/new");
        fs::create_dir_all(&new).expect("mkdir");
        fs::write(
            new.join("benchmark.json"),
            r#"{"group_id":"cache-build/layer-tar-gzip","function_id":null,"value_str":"64MiB",
               "throughput":{"Bytes":1000000},"full_id":"cache-build/layer-tar-gzip/64MiB"}"#,
        )
        .expect("write");
        fs::write(
            new.join("estimates.json"),
            r#"{"mean":{"point_estimate":2.0e7},"median":{"point_estimate":1.0e7}}"#,
        )
        .expect("write");
        // criterion's own `base` copies are not results of this run.
        let base = dir.path().join("cache-build_layer-tar-gzip/64MiB/base");
        fs::create_dir_all(&base).expect("mkdir");
        fs::copy(new.join("benchmark.json"), base.join("benchmark.json")).expect("copy");
        let results = collect(dir.path());
        assert_eq!(results.len(), 1);
        let r = &results[0];
        assert_eq!(r.id, "cache-build/layer-tar-gzip/64MiB");
        assert_eq!(r.bytes_per_s(), Some(1e8));
        assert_eq!(r.elements_per_s(), None);
    }
}
