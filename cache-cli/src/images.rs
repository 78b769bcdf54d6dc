//! Images in registries: resolving `FROM host/repo:tag` and pushing built images.

use std::sync::Arc;
use std::time::Instant;

use cache_build::engine::{self, BlobStore, Event, ImageResolver, Progress, ResolvedImage};
use cache_build::image;
use cache_core::descriptor::{annotation, media_type};
use cache_core::{Backend, Blob, Descriptor, IndexRef};
use cache_local::LayoutDir;
use cache_registry::Registry;
use futures_util::future::BoxFuture;

use crate::progress::Display;

/// Resolves image references against their registries.
#[derive(Debug, Default)]
pub struct RegistryImages;

impl RegistryImages {
    /// A resolver using Docker's credentials.
    pub fn new() -> Self {
        RegistryImages
    }
}

fn open(reference: &str) -> Result<Registry, String> {
    Registry::new(reference, cache_registry::Options::new()).map_err(|e| e.to_string())
}

async fn resolve(reference: &str) -> Result<ResolvedImage, String> {
    let registry = open(reference)?;
    let image_ref = registry.reference().clone();
    let index_ref = match image_ref.digest() {
        Some(d) => IndexRef::Digest(d.clone()),
        None => IndexRef::Tag(image_ref.tag().unwrap_or("latest").to_owned()),
    };
    let mut raw = registry
        .get_manifest(&index_ref)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{reference}: not found in the registry"))?;
    let value: serde_json::Value = serde_json::from_slice(&raw.bytes)
        .map_err(|e| format!("{reference}: invalid manifest: {e}"))?;
    if let Some(manifests) = value.get("manifests").and_then(|m| m.as_array()) {
        let pick = manifests
            .iter()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
            .ok_or_else(|| format!("{reference}: the image index has no linux/amd64 image"))?;
        let digest = pick["digest"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| format!("{reference}: invalid digest in the image index"))?;
        raw = registry
            .get_manifest(&IndexRef::Digest(digest))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{reference}: the linux/amd64 manifest is missing"))?;
    }
    #[derive(serde::Deserialize)]
    struct Manifest {
        config: Descriptor,
        layers: Vec<Descriptor>,
    }
    let manifest: Manifest = serde_json::from_slice(&raw.bytes)
        .map_err(|e| format!("{reference}: invalid image manifest: {e}"))?;
    let config_blob = registry
        .read_blob(&manifest.config.digest)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "{reference}: config blob {} is missing",
                manifest.config.digest
            )
        })?;
    let config_bytes = config_blob
        .into_bytes(64 * 1024 * 1024)
        .await
        .map_err(|e| format!("{reference}: reading the config: {e}"))?;
    let config = image::parse_config(&config_bytes).map_err(|e| format!("{reference}: {e}"))?;
    if config.diff_ids.len() != manifest.layers.len() {
        return Err(format!(
            "{reference}: the config lists {} diff IDs for {} layers",
            config.diff_ids.len(),
            manifest.layers.len()
        ));
    }
    let source_key = format!(
        "{}{}",
        annotation::DISTRIBUTION_SOURCE_PREFIX,
        image_ref.registry()
    );
    let layers = manifest
        .layers
        .into_iter()
        .zip(&config.diff_ids)
        .map(|(mut desc, diff_id)| {
            desc.annotations
                .insert(annotation::UNCOMPRESSED.to_owned(), diff_id.to_string());
            desc.annotations
                .insert(source_key.clone(), image_ref.repository().to_owned());
            desc
        })
        .collect();
    Ok(ResolvedImage {
        display: format!("{}@{}", image_ref.short(), raw.digest),
        manifest_digest: raw.digest.clone(),
        config,
        layers,
        store: Arc::new(registry) as Arc<dyn BlobStore>,
    })
}

impl ImageResolver for RegistryImages {
    fn resolve<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<ResolvedImage, String>> {
        Box::pin(resolve(reference))
    }
}

/// Pushes the built image to `name`: layers (skipped when present, mounted when the registry
/// has them in another repository), config, then the manifest under the tag.
pub async fn push(
    outcome: &engine::BuildOutcome,
    _root: &Arc<LayoutDir>,
    name: &str,
    display: &Display,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let vertex = format!("push:{name}");
    display.event(Event::Start {
        vertex: vertex.clone(),
        name: format!("pushing {name}"),
    });
    let registry = Registry::new(name, cache_registry::Options::new())?;
    let tag = registry.reference().tag().unwrap_or("latest").to_owned();
    for desc in &outcome.image.layers {
        if registry.stat_blob(&desc.digest).await?.is_some() {
            continue;
        }
        let blob = outcome
            .blobs
            .open(&desc.digest)
            .await?
            .ok_or_else(|| anyhow::format_err!("layer {} is in no store", desc.digest))?;
        let mut upload = desc.clone();
        upload.media_type = media_type::convert_layer(&desc.media_type, true)
            .unwrap_or(&desc.media_type)
            .to_owned();
        registry.write_blob(&upload, blob).await?;
        (display as &dyn Progress).event(Event::Status {
            vertex: vertex.clone(),
            text: format!("pushing layer {}", desc.digest),
            done: None,
        });
    }
    let (config_desc, config_bytes) = &outcome.image.config;
    registry
        .write_blob(config_desc, Blob::from_bytes(config_bytes.clone()))
        .await?;
    registry.write_index(&tag, &outcome.image.manifest).await?;
    display.event(Event::Done {
        vertex,
        duration: started.elapsed(),
    });
    Ok(())
}
