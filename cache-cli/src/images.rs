//! Images in registries: resolving `FROM host/repo:tag` and pushing built images.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;

use cache_build::engine::{
    self, BlobStore, Event, FetchError, ImageResolver, Progress, ResolveError, ResolvedImage,
};
use cache_build::image;
use cache_core::Descriptor;
use cache_core::descriptor::annotation;
use cache_core::transfer::Moved;
use cache_local::LayoutDir;
use cache_registry::image::{ImageToPush, MountSources};
use futures_util::StreamExt as _;
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

async fn resolve(reference: &str) -> Result<ResolvedImage, ResolveError> {
    let registry =
        crate::stores::open_registry(reference, false).map_err(ResolveError::Registry)?;
    let resolved = cache_registry::image::resolve(&registry, reference, "linux", "amd64")
        .await
        .map_err(ResolveError::Registry)?;
    let config = image::parse_config(&resolved.config).map_err(|source| ResolveError::Config {
        reference: reference.to_owned(),
        source,
    })?;
    if config.diff_ids.len() != resolved.layers.len() {
        return Err(ResolveError::LayerCount {
            reference: reference.to_owned(),
            n_diff_ids: config.diff_ids.len(),
            n_layers: resolved.layers.len(),
        });
    }
    let layers = resolved
        .layers
        .into_iter()
        .zip(&config.diff_ids)
        .map(|(mut desc, diff_id)| {
            desc.annotations
                .insert(annotation::UNCOMPRESSED.to_owned(), diff_id.to_string());
            desc
        })
        .collect();
    Ok(ResolvedImage {
        display: format!(
            "{}@{}",
            registry.reference().short(),
            resolved.manifest_digest
        ),
        manifest_digest: resolved.manifest_digest,
        config,
        layers,
        store: Arc::new(registry) as Arc<dyn BlobStore>,
    })
}

/// Downloads `ADD <url>` sources over HTTP(S).
#[derive(Debug, Default)]
pub struct HttpDownloads {
    /// Built on the first download: loading the platform's TLS roots costs milliseconds that a
    /// build without `ADD <url>` should not pay.
    client: std::sync::OnceLock<reqwest::Client>,
}

impl HttpDownloads {
    /// A downloader with reqwest's defaults (rustls, redirects followed).
    pub fn new() -> Self {
        HttpDownloads::default()
    }

    async fn fetch(&self, url: &str, dest: &Path) -> Result<(), FetchError> {
        use tokio::io::AsyncWriteExt as _;
        let response = self
            .client
            .get_or_init(reqwest::Client::new)
            .get(url)
            .send()
            .await
            .map_err(|err| FetchError::Request(err.into()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                code: status.as_u16(),
                reason: status
                    .canonical_reason()
                    .unwrap_or("<unknown status code>")
                    .to_owned(),
            });
        }
        let writing = |source| FetchError::Write {
            path: dest.to_owned(),
            source,
        };
        let mut file =
            tokio::fs::File::create(dest)
                .await
                .map_err(|source| FetchError::Create {
                    path: dest.to_owned(),
                    source,
                })?;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| FetchError::Body(err.into()))?;
            file.write_all(&chunk).await.map_err(writing)?;
        }
        file.flush().await.map_err(writing)?;
        Ok(())
    }
}

impl engine::UrlFetcher for HttpDownloads {
    fn fetch<'a>(&'a self, url: &'a str, dest: &'a Path) -> BoxFuture<'a, Result<(), FetchError>> {
        Box::pin(HttpDownloads::fetch(self, url, dest))
    }
}

impl ImageResolver for RegistryImages {
    fn resolve<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<ResolvedImage, ResolveError>> {
        Box::pin(resolve(reference))
    }
}

/// Where pushes remember which repositories hold which blobs (`ROOT/distribution-sources.json`),
/// like containerd's `containerd.io/distribution.source.<host>` content labels.
const SOURCES_FILE: &str = "distribution-sources.json";

fn sources_path(root: &LayoutDir) -> PathBuf {
    let dir = root.root();
    dir.parent().unwrap_or(dir).join(SOURCES_FILE)
}

/// Pushes the built image to `name`: layers (skipped when present, mounted when this root
/// pushed them, or pulled them, from another repository of the registry), config, then the
/// manifest under the tag.
///
/// Fails closed: any registry error fails the push, naming the image.
pub async fn push(
    outcome: &engine::BuildOutcome,
    root: &Arc<LayoutDir>,
    name: &str,
    insecure: bool,
    display: &Display,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let vertex = format!("push:{name}");
    display.event(Event::Start {
        vertex: vertex.clone(),
        name: format!("pushing {name}"),
    });
    let result = push_image(outcome, root, name, insecure, display, &vertex).await;
    match &result {
        Ok(()) => display.event(Event::Done {
            vertex,
            duration: started.elapsed(),
        }),
        Err(err) => display.event(Event::Error {
            vertex,
            message: crate::error_chain(err),
        }),
    }
    result.with_context(|| format!("pushing the image {name}"))
}

async fn push_image(
    outcome: &engine::BuildOutcome,
    root: &Arc<LayoutDir>,
    name: &str,
    insecure: bool,
    display: &Display,
    vertex: &str,
) -> anyhow::Result<()> {
    let registry = crate::stores::open_registry(name, insecure)?;
    let tag = registry.reference().tag().unwrap_or("latest").to_owned();
    let sources_file = sources_path(root);
    let known = MountSources::load(&sources_file);
    let on_layer = |desc: &Descriptor, how: &Moved| {
        let text = match how {
            Moved::Present => return,
            Moved::Mounted(from) => format!("mounted layer {} from {from}", desc.digest),
            Moved::Copied => format!("pushed layer {}", desc.digest),
        };
        (display as &dyn Progress).event(Event::Status {
            vertex: vertex.to_owned(),
            text,
            done: None,
        })
    };
    let (config_desc, config_bytes) = &outcome.image.config;
    let image = ImageToPush {
        layers: &outcome.image.layers,
        config: (config_desc, config_bytes),
        manifest: &outcome.image.manifest,
    };
    let pushed = cache_registry::image::push_image(
        &registry,
        &tag,
        image,
        &outcome.blobs,
        &known,
        &on_layer,
    )
    .await
    .map_err(|err| anyhow::Error::new(err.source).context(err.what))?;
    if let Err(err) = pushed.save(&sources_file) {
        display.line(&format!(
            "WARNING: remembering where the image's blobs are in {}: {err}",
            sources_file.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_live_beside_the_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = LayoutDir::open(dir.path().join("cache"));
        assert_eq!(sources_path(&root), dir.path().join(SOURCES_FILE));
    }
}
