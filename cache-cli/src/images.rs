//! Images in registries: resolving `FROM host/repo:tag` and pushing built images.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;

use cache_build::engine::{self, BlobStore, Event, ImageResolver, Progress, ResolvedImage};
use cache_build::image;
use cache_core::descriptor::{annotation, media_type};
use cache_core::transfer::{self, BlobCopy, BlobSource, InMemory, Moved};
use cache_core::{Backend, Descriptor, IndexRef, MountSource};
use cache_local::LayoutDir;
use cache_registry::Registry;
use futures_util::future::BoxFuture;
use futures_util::{StreamExt as _, TryStreamExt as _};

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
    crate::stores::open_registry(reference, false).map_err(|e| e.to_string())
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
        .ok_or_else(|| format!("{reference}: not found in the registry (check the name and tag, or push the image first)"))?;
    let value: serde_json::Value = serde_json::from_slice(&raw.bytes)
        .map_err(|e| format!("{reference}: invalid manifest: {e}"))?;
    if let Some(manifests) = value.get("manifests") {
        let manifests: Vec<Descriptor> = serde_json::from_value(manifests.clone())
            .map_err(|e| format!("{reference}: invalid image index: {e}"))?;
        let pick = cache_core::layout::pick_platform(&manifests, "linux", "amd64")
            .ok_or_else(|| format!("{reference}: the image index has no linux/amd64 image"))?;
        raw = registry
            .get_manifest(&IndexRef::Digest(pick.digest.clone()))
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

    async fn fetch(&self, url: &str, dest: &Path) -> Result<(), String> {
        use tokio::io::AsyncWriteExt as _;
        let response = self
            .client
            .get_or_init(reqwest::Client::new)
            .get(url)
            .send()
            .await
            .map_err(|err| format!("request failed: {err}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("the server answered {status}"));
        }
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|err| format!("creating {}: {err}", dest.display()))?;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| format!("reading the body: {err}"))?;
            file.write_all(&chunk)
                .await
                .map_err(|err| format!("writing {}: {err}", dest.display()))?;
        }
        file.flush()
            .await
            .map_err(|err| format!("writing {}: {err}", dest.display()))?;
        Ok(())
    }
}

impl engine::UrlFetcher for HttpDownloads {
    fn fetch<'a>(&'a self, url: &'a str, dest: &'a Path) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(HttpDownloads::fetch(self, url, dest))
    }
}

impl ImageResolver for RegistryImages {
    fn resolve<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<ResolvedImage, String>> {
        Box::pin(resolve(reference))
    }
}

/// Where pushes remember which repositories hold which blobs (`ROOT/distribution-sources.json`),
/// like containerd's `containerd.io/distribution.source.<host>` content labels.
const SOURCES_FILE: &str = "distribution-sources.json";

/// Layers pushed at once (BuildKit's default concurrency).
const PARALLEL_PUSHES: usize = 4;

/// Blob digest to the `host/repository`s known to hold it.
type Sources = BTreeMap<String, BTreeSet<String>>;

fn sources_path(root: &LayoutDir) -> PathBuf {
    let dir = root.root();
    dir.parent().unwrap_or(dir).join(SOURCES_FILE)
}

/// The remembered sources; a missing or unreadable file is empty (it only saves uploads).
fn load_sources(path: &Path) -> Sources {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Merges `pushed` into the file, replacing it atomically.
fn save_sources(path: &Path, pushed: &Sources) -> std::io::Result<()> {
    let mut all = load_sources(path);
    for (digest, repos) in pushed {
        all.entry(digest.clone())
            .or_default()
            .extend(repos.iter().cloned());
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(
        &tmp,
        serde_json::to_vec(&all).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)
}

/// The repositories of `host` that may hold `desc`: its distribution-source annotation (layers
/// of a base image pulled from there) and earlier pushes.
fn mount_candidates(desc: &Descriptor, host: &str, known: &Sources, skip: &str) -> Vec<String> {
    let key = format!("{}{host}", annotation::DISTRIBUTION_SOURCE_PREFIX);
    let annotated = desc
        .annotation(&key)
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(|r| r.trim().to_owned());
    let prefix = format!("{host}/");
    let pushed = known
        .get(desc.digest.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|r| r.strip_prefix(&prefix).map(str::to_owned));
    let mut out: Vec<String> = Vec::new();
    for repo in annotated.chain(pushed) {
        if !repo.is_empty() && repo != skip && !out.contains(&repo) {
            out.push(repo);
        }
    }
    out
}

/// Makes `desc` present in `registry` (`transfer::copy_blob`): nothing if it is there, a
/// cross-repository mount if a repository of the same registry is known to hold it, else an
/// upload from `src`.
async fn push_blob<S: BlobSource>(
    registry: &Registry,
    desc: &Descriptor,
    known: &Sources,
    src: &S,
) -> anyhow::Result<Moved> {
    let reference = registry.reference();
    let host = reference.registry();
    let mount_from: Vec<MountSource> = mount_candidates(desc, host, known, reference.repository())
        .into_iter()
        .map(|repository| MountSource {
            registry: host.to_owned(),
            repository,
        })
        .collect();
    // The annotations were used above; the upload itself needs none.
    let mut upload = desc.clone();
    upload.annotations.clear();
    let how = BlobCopy {
        mount_from: &mount_from,
        ..BlobCopy::default()
    };
    match transfer::copy_blob(registry, src, &upload, &how).await {
        Ok(moved) => Ok(moved),
        Err(transfer::Error::Missing { digest }) => {
            Err(anyhow::format_err!("layer {digest} is in no store"))
        }
        Err(transfer::Error::Backend { source, .. }) => Err(source.into()),
        Err(err) => Err(err.into()),
    }
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
    let here = format!(
        "{}/{}",
        registry.reference().registry(),
        registry.reference().repository()
    );
    let sources_file = sources_path(root);
    let known = load_sources(&sources_file);
    let mut pushed = Sources::new();
    let status = |text: String| {
        (display as &dyn Progress).event(Event::Status {
            vertex: vertex.to_owned(),
            text,
            done: None,
        })
    };
    // Layers in parallel, as BuildKit pushes them (the registry client bounds the uploads).
    let mut layers: Vec<Descriptor> = Vec::new();
    for desc in &outcome.image.layers {
        if layers.iter().all(|l| l.digest != desc.digest) {
            let mut desc = desc.clone();
            desc.media_type = media_type::convert_layer(&desc.media_type, true)
                .unwrap_or(&desc.media_type)
                .to_owned();
            layers.push(desc);
        }
    }
    let (registry, known, status) = (&registry, &known, &status);
    let pushes = layers.iter().map(|desc| async move {
        let how = push_blob(registry, desc, known, &outcome.blobs)
            .await
            .with_context(|| format!("pushing layer {}", desc.digest))?;
        match how {
            Moved::Present => {}
            Moved::Mounted(from) => status(format!("mounted layer {} from {from}", desc.digest)),
            Moved::Copied => status(format!("pushed layer {}", desc.digest)),
        }
        anyhow::Ok(desc.digest.to_string())
    });
    let done: Vec<String> = futures_util::stream::iter(pushes)
        .buffer_unordered(PARALLEL_PUSHES)
        .try_collect()
        .await?;
    for digest in done {
        pushed.entry(digest).or_default().insert(here.clone());
    }
    let (config_desc, config_bytes) = &outcome.image.config;
    push_blob(
        registry,
        config_desc,
        known,
        &InMemory(config_bytes.clone().into()),
    )
    .await
    .with_context(|| format!("pushing config {}", config_desc.digest))?;
    pushed
        .entry(config_desc.digest.to_string())
        .or_default()
        .insert(here.clone());
    registry.write_index(&tag, &outcome.image.manifest).await?;
    if let Err(err) = save_sources(&sources_file, &pushed) {
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

    fn desc(digest_hex: char, annotations: &[(&str, &str)]) -> Descriptor {
        let digest = format!("sha256:{}", digest_hex.to_string().repeat(64));
        let mut desc = Descriptor::new(
            media_type::OCI_LAYER_GZIP,
            digest.parse().expect("a valid digest"),
            1,
        );
        for (k, v) in annotations {
            desc.annotations.insert((*k).to_owned(), (*v).to_owned());
        }
        desc
    }

    #[test]
    fn mount_candidates_come_from_annotations_then_pushes_on_the_same_host() {
        let layer = desc(
            'a',
            &[
                (
                    "containerd.io/distribution.source.reg:5000",
                    "base, app,base",
                ),
                ("containerd.io/distribution.source.other:5000", "elsewhere"),
            ],
        );
        let mut known = Sources::new();
        known.insert(
            layer.digest.to_string(),
            ["reg:5000/pushed", "other:5000/far", "reg:5000/base"]
                .into_iter()
                .map(str::to_owned)
                .collect(),
        );
        assert_eq!(
            mount_candidates(&layer, "reg:5000", &known, "app"),
            ["base", "pushed"]
        );
        assert_eq!(
            mount_candidates(&desc('b', &[]), "reg:5000", &known, "app"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn sources_merge_with_what_the_file_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = LayoutDir::open(dir.path().join("cache"));
        let path = sources_path(&root);
        assert_eq!(path, dir.path().join(SOURCES_FILE));
        assert!(load_sources(&path).is_empty());
        let entry = |digest: &str, repo: &str| {
            let mut s = Sources::new();
            s.entry(digest.to_owned())
                .or_default()
                .insert(repo.to_owned());
            s
        };
        save_sources(&path, &entry("sha256:1", "h/a")).expect("save");
        save_sources(&path, &entry("sha256:1", "h/b")).expect("save");
        save_sources(&path, &entry("sha256:2", "h/a")).expect("save");
        let all = load_sources(&path);
        assert_eq!(all.len(), 2);
        assert_eq!(all["sha256:1"].iter().collect::<Vec<_>>(), ["h/a", "h/b"]);
        std::fs::write(&path, "not json").expect("write");
        assert!(
            load_sources(&path).is_empty(),
            "a corrupt file only costs uploads"
        );
    }
}
