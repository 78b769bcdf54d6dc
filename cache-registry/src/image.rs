//! Images in registries: resolving a reference to one platform's manifest, and pushing an image
//! with cross-repository mounts.
//!
//! Image configs are not interpreted here: [`resolve`] returns the config's bytes and callers
//! parse them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use bytes::Bytes;
use cache_core::descriptor::{annotation, media_type};
use cache_core::transfer::{self, BlobCopy, BlobSource, InMemory, Moved};
use cache_core::{Backend, Descriptor, Digest, Error, ErrorKind, IndexRef, MountSource, RawIndex};
use futures_util::{StreamExt as _, TryStreamExt as _};

use crate::Registry;

/// The largest image config [`resolve`] reads.
const MAX_CONFIG_SIZE: u64 = 64 * 1024 * 1024;

/// Layers pushed at once (BuildKit's default concurrency).
const PARALLEL_PUSHES: usize = 4;

/// One platform's image manifest found in a registry.
#[derive(Debug, Clone)]
pub struct ResolvedManifest {
    /// The manifest's digest (of the platform's manifest, not of an index).
    pub manifest_digest: Digest,
    /// The config blob's bytes, unparsed.
    pub config: Bytes,
    /// The layers, each annotated with `containerd.io/distribution.source.<registry>` naming
    /// this repository, so that a push to another repository of the registry can mount them.
    pub layers: Vec<Descriptor>,
}

/// Resolves the image `registry`'s reference names (its digest, else its tag, else `latest`):
/// an index gives the manifest of `os`/`architecture` by [`cache_core::layout::pick_platform`].
/// `name` is the reference as the user wrote it, for messages.
pub async fn resolve(
    registry: &Registry,
    name: &str,
    os: &str,
    architecture: &str,
) -> Result<ResolvedManifest, Error> {
    let invalid = |message: String| Error::new(ErrorKind::Corrupt, message);
    let image_ref = registry.reference();
    let index_ref = match image_ref.digest() {
        Some(d) => IndexRef::Digest(d.clone()),
        None => IndexRef::Tag(image_ref.tag().unwrap_or("latest").to_owned()),
    };
    let mut raw = registry.get_manifest(&index_ref).await?.ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            format!(
                "{name}: not found in the registry (check the name and tag, or push the image first)"
            ),
        )
    })?;
    let value: serde_json::Value = serde_json::from_slice(&raw.bytes)
        .map_err(|e| invalid(format!("{name}: invalid manifest: {e}")))?;
    if let Some(manifests) = value.get("manifests") {
        let manifests: Vec<Descriptor> = serde_json::from_value(manifests.clone())
            .map_err(|e| invalid(format!("{name}: invalid image index: {e}")))?;
        let platform = format!("{os}/{architecture}");
        let pick =
            cache_core::layout::pick_platform(&manifests, os, architecture).ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("{name}: the image index has no {platform} image"),
                )
            })?;
        raw = registry
            .get_manifest(&IndexRef::Digest(pick.digest.clone()))
            .await?
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("{name}: the {platform} manifest is missing"),
                )
            })?;
    }
    #[derive(serde::Deserialize)]
    struct Manifest {
        config: Descriptor,
        layers: Vec<Descriptor>,
    }
    let manifest: Manifest = serde_json::from_slice(&raw.bytes)
        .map_err(|e| invalid(format!("{name}: invalid image manifest: {e}")))?;
    let config = registry
        .read_blob(&manifest.config.digest)
        .await?
        .ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("{name}: config blob {} is missing", manifest.config.digest),
            )
        })?
        .into_bytes(MAX_CONFIG_SIZE)
        .await
        .map_err(|e| invalid(format!("{name}: reading the config: {e}")))?;
    let source_key = format!(
        "{}{}",
        annotation::DISTRIBUTION_SOURCE_PREFIX,
        image_ref.registry()
    );
    let layers = manifest
        .layers
        .into_iter()
        .map(|mut desc| {
            desc.annotations
                .insert(source_key.clone(), image_ref.repository().to_owned());
            desc
        })
        .collect();
    Ok(ResolvedManifest {
        manifest_digest: raw.digest,
        config,
        layers,
    })
}

/// Blob digest to the `host/repository`s known to hold it, like containerd's
/// `containerd.io/distribution.source.<host>` content labels; kept in a JSON file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountSources(pub BTreeMap<String, BTreeSet<String>>);

impl MountSources {
    /// The sources remembered in `path`; a missing or unreadable file is empty (it only saves
    /// uploads).
    pub fn load(path: &Path) -> MountSources {
        MountSources(
            std::fs::read(path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default(),
        )
    }

    /// Merges `self` into the file at `path`, replacing it atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut all = MountSources::load(path);
        for (digest, repos) in &self.0 {
            all.0
                .entry(digest.clone())
                .or_default()
                .extend(repos.iter().cloned());
        }
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(
            &tmp,
            serde_json::to_vec(&all.0).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, path)
    }

    /// Records that `host/repository` holds `digest`.
    pub fn insert(&mut self, digest: &Digest, repository: String) {
        self.0
            .entry(digest.to_string())
            .or_default()
            .insert(repository);
    }

    /// The repositories of `host` that may hold `desc`, `skip` excepted: its
    /// distribution-source annotation (layers of a base image pulled from there), then
    /// earlier pushes.
    pub fn candidates(&self, desc: &Descriptor, host: &str, skip: &str) -> Vec<String> {
        let key = format!("{}{host}", annotation::DISTRIBUTION_SOURCE_PREFIX);
        let annotated = desc
            .annotation(&key)
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(|r| r.trim().to_owned());
        let prefix = format!("{host}/");
        let pushed = self
            .0
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
}

/// Makes `desc` present in `registry` ([`transfer::copy_blob`]): nothing if it is there, a
/// cross-repository mount if a repository of the same registry is known to hold it, else an
/// upload from `src`.
pub async fn push_blob<S: BlobSource>(
    registry: &Registry,
    desc: &Descriptor,
    known: &MountSources,
    src: &S,
) -> Result<Moved, Error> {
    let reference = registry.reference();
    let host = reference.registry();
    let mount_from: Vec<MountSource> = known
        .candidates(desc, host, reference.repository())
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
        Err(transfer::Error::Missing { digest }) => Err(Error::new(
            ErrorKind::NotFound,
            format!("layer {digest} is in no store"),
        )),
        Err(transfer::Error::Backend { source, .. }) => Err(source),
        Err(err) => Err(Error::new(ErrorKind::Unexpected, err.to_string())),
    }
}

/// An image to push: its layers (read from a [`BlobSource`]), its config and its manifest.
#[derive(Debug, Clone, Copy)]
pub struct ImageToPush<'a> {
    /// The layers, in manifest order (duplicates are pushed once).
    pub layers: &'a [Descriptor],
    /// The config's descriptor and bytes.
    pub config: (&'a Descriptor, &'a [u8]),
    /// The manifest, written last under the tag.
    pub manifest: &'a RawIndex,
}

/// Why [`push_image`] failed: what it was doing and the registry's error.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct PushError {
    /// "pushing layer sha256:…", "pushing config sha256:…" or "writing the manifest".
    pub what: String,
    /// The cause.
    #[source]
    pub source: Error,
}

/// Pushes `image` to `registry` under `tag`: layers in parallel (skipped when present, mounted
/// from a repository `known` names, else uploaded; OCI media types), then the config, then the
/// manifest. `on_layer` hears how each layer got there. Returns the blobs now in this
/// repository, to remember for later mounts.
///
/// Fails closed: any registry error fails the push.
pub async fn push_image<S: BlobSource>(
    registry: &Registry,
    tag: &str,
    image: ImageToPush<'_>,
    src: &S,
    known: &MountSources,
    on_layer: &(dyn Fn(&Descriptor, &Moved) + Send + Sync),
) -> Result<MountSources, PushError> {
    let here = format!(
        "{}/{}",
        registry.reference().registry(),
        registry.reference().repository()
    );
    let mut layers: Vec<Descriptor> = Vec::new();
    for desc in image.layers {
        if layers.iter().all(|l| l.digest != desc.digest) {
            let mut desc = desc.clone();
            desc.media_type = media_type::convert_layer(&desc.media_type, true)
                .unwrap_or(&desc.media_type)
                .to_owned();
            layers.push(desc);
        }
    }
    // Layers in parallel, as BuildKit pushes them (the registry client bounds the uploads).
    let pushes = layers.iter().map(|desc| async move {
        let how = push_blob(registry, desc, known, src)
            .await
            .map_err(|source| PushError {
                what: format!("pushing layer {}", desc.digest),
                source,
            })?;
        on_layer(desc, &how);
        Ok::<_, PushError>(desc.digest.clone())
    });
    let done: Vec<Digest> = futures_util::stream::iter(pushes)
        .buffer_unordered(PARALLEL_PUSHES)
        .try_collect()
        .await?;
    let mut pushed = MountSources::default();
    for digest in done {
        pushed.insert(&digest, here.clone());
    }
    let (config_desc, config_bytes) = image.config;
    push_blob(
        registry,
        config_desc,
        known,
        &InMemory(Bytes::copy_from_slice(config_bytes)),
    )
    .await
    .map_err(|source| PushError {
        what: format!("pushing config {}", config_desc.digest),
        source,
    })?;
    pushed.insert(&config_desc.digest, here);
    registry
        .write_index(tag, image.manifest)
        .await
        .map_err(|source| PushError {
            what: "writing the manifest".to_owned(),
            source,
        })?;
    Ok(pushed)
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
        let mut known = MountSources::default();
        for repo in ["reg:5000/pushed", "other:5000/far", "reg:5000/base"] {
            known.insert(&layer.digest, repo.to_owned());
        }
        assert_eq!(
            known.candidates(&layer, "reg:5000", "app"),
            ["base", "pushed"]
        );
        assert_eq!(
            known.candidates(&desc('b', &[]), "reg:5000", "app"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn sources_merge_with_what_the_file_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("distribution-sources.json");
        assert_eq!(MountSources::load(&path), MountSources::default());
        let entry = |digest: char, repo: &str| {
            let mut s = MountSources::default();
            s.insert(&desc(digest, &[]).digest, repo.to_owned());
            s
        };
        entry('1', "h/a").save(&path).expect("save");
        entry('1', "h/b").save(&path).expect("save");
        entry('2', "h/a").save(&path).expect("save");
        let all = MountSources::load(&path);
        assert_eq!(all.0.len(), 2);
        let one = desc('1', &[]).digest.to_string();
        assert_eq!(all.0[&one].iter().collect::<Vec<_>>(), ["h/a", "h/b"]);
        std::fs::write(&path, "not json").expect("write");
        assert_eq!(
            MountSources::load(&path),
            MountSources::default(),
            "a corrupt file only costs uploads"
        );
    }
}
