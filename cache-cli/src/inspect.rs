//! `buildcache cache inspect`: what a cache holds.

use std::collections::BTreeSet;

use cache_core::config::go_time;
use cache_core::descriptor::{Descriptor, annotation, media_type};
use cache_core::import::Imported;
use cache_core::spec;
use serde::Serialize;
use time::OffsetDateTime;

use crate::stores::AnyBackend;

#[derive(Serialize)]
struct LayerOut {
    digest: String,
    media_type: String,
    size: u64,
    uncompressed_size: Option<u64>,
    diff_id: Option<String>,
    created_at: Option<String>,
    /// The cache mount id of a blob holding cache mount contents (`cache-mounts=true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_mount: Option<String>,
}

#[derive(Serialize)]
struct Report {
    source: String,
    manifest_digest: String,
    manifest_form: &'static str,
    manifest_media_type: String,
    manifest_size: u64,
    config_digest: String,
    config_size: u64,
    records: usize,
    records_with_results: usize,
    layers: usize,
    total_size: u64,
    total_uncompressed_size: Option<u64>,
    created_at_min: Option<String>,
    created_at_max: Option<String>,
    layer_details: Vec<LayerOut>,
}

/// Runs `cache inspect SOURCE`; an absent or invalid cache is an error (an explicit request).
pub async fn run(
    source: &str,
    json: bool,
    limits: &cache_core::limits::Limits,
) -> anyhow::Result<()> {
    let spec = spec::parse_import(source)?;
    let (backend, reference) = AnyBackend::for_import(&spec.source)?;
    if let Some(dir) = backend.local_dir()
        && !dir.join("index.json").exists()
        && matches!(reference, cache_core::IndexRef::Tag(_))
    {
        anyhow::bail!(
            "no cache at {}: {} is missing (export one with --cache-to type=local,dest={})",
            dir.display(),
            dir.join("index.json").display(),
            dir.display()
        );
    }
    let imported = cache_core::import::import(&backend, &reference, 0, limits)
        .await?
        .ok_or_else(|| anyhow::format_err!("no cache found for {reference} in {source}"))?;
    let report = Report::new(source, &imported);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
    Ok(())
}

impl Report {
    /// What `imported`, read from `source`, holds.
    fn new(source: &str, imported: &Imported) -> Report {
        let graph = &imported.graph;
        let mut times = BTreeSet::new();
        for record in &imported.config.records {
            for result in &record.layers {
                times.insert(result.created_at);
            }
        }
        let layer_details = layer_details(&imported.cache_manifest.layers, &mut times);
        let total_size = layer_details.iter().map(|l| l.size).sum();
        let total_uncompressed_size = layer_details.iter().map(|l| l.uncompressed_size).sum();
        Report {
            source: source.to_owned(),
            manifest_digest: imported.manifest.digest.to_string(),
            manifest_form: imported.cache_manifest.form.name(),
            manifest_media_type: imported.cache_manifest.media_type.clone(),
            manifest_size: imported.manifest.bytes.len() as u64,
            config_digest: imported.cache_manifest.config.digest.to_string(),
            config_size: imported.cache_manifest.config.size,
            records: graph.records().len(),
            records_with_results: graph
                .records()
                .iter()
                .filter(|r| !r.results.is_empty())
                .count(),
            layers: imported.config.layers.len(),
            total_size,
            total_uncompressed_size,
            created_at_min: times.first().map(go_time::format),
            created_at_max: times.last().map(go_time::format),
            layer_details,
        }
    }

    /// Prints the report as text.
    fn print(&self) {
        println!("source:    {}", self.source);
        println!(
            "manifest:  {} ({}, {}, {} bytes)",
            self.manifest_digest, self.manifest_form, self.manifest_media_type, self.manifest_size
        );
        println!(
            "config:    {} ({} bytes)",
            self.config_digest, self.config_size
        );
        println!(
            "records:   {} ({} with results)",
            self.records, self.records_with_results
        );
        let uncompressed = self
            .total_uncompressed_size
            .map_or("unknown".to_owned(), human_bytes);
        println!(
            "layers:    {} ({} compressed, {} uncompressed)",
            self.layers,
            human_bytes(self.total_size),
            uncompressed
        );
        for layer in &self.layer_details {
            println!(
                "  {}  {:>10}  {:>10}  {}{}",
                layer.digest,
                human_bytes(layer.size),
                layer.uncompressed_size.map_or("-".to_owned(), human_bytes),
                layer.media_type,
                layer
                    .cache_mount
                    .as_ref()
                    .map_or(String::new(), |id| format!("  (cache mount {id})"))
            );
        }
        match (&self.created_at_min, &self.created_at_max) {
            (Some(min), Some(max)) => println!("created:   {min} .. {max}"),
            _ => println!("created:   unknown"),
        }
    }
}

/// Each distinct blob the manifest lists; their creation times go into `times`.
fn layer_details(layers: &[Descriptor], times: &mut BTreeSet<OffsetDateTime>) -> Vec<LayerOut> {
    let mut details = Vec::new();
    let mut seen = BTreeSet::new();
    for desc in layers {
        if !seen.insert(desc.digest.to_string()) {
            continue;
        }
        let created = desc.annotation(annotation::CREATED_AT).map(str::to_owned);
        if let Some(t) = created.as_deref().and_then(|t| go_time::parse(t).ok()) {
            times.insert(t);
        }
        let uncompressed = matches!(
            desc.media_type.as_str(),
            media_type::OCI_LAYER_TAR | media_type::DOCKER_LAYER_TAR
        )
        .then_some(desc.size);
        details.push(LayerOut {
            digest: desc.digest.to_string(),
            media_type: desc.media_type.clone(),
            size: desc.size,
            uncompressed_size: uncompressed,
            diff_id: desc.annotation(annotation::UNCOMPRESSED).map(str::to_owned),
            created_at: created,
            cache_mount: desc
                .annotation(annotation::CACHE_MOUNT_ID)
                .map(str::to_owned),
        });
    }
    details
}

/// Bytes in human units (B, KiB, MiB, GiB).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}
