//! The root's cache mounts (`ROOT/mounts`) in size budgets, `cache du` and `cache prune`, and
//! in `cache-mounts=true` exports and their imports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cache_build::dockerfile::Sharing;
use cache_build::engine::BuildOutcome;
use cache_build::layer::Compression;
use cache_build::mounts::{CacheMounts, MountInfo};
use cache_core::Descriptor;
use cache_core::descriptor::annotation;
use cache_core::spec::{CompressionKind, ExportSpec};
use cache_local::LayoutDir;

use crate::progress::Display;

/// The cache mounts of the root whose own cache is the layout `layout_dir` (`ROOT/cache`), if
/// that root has any.
pub fn of_layout(layout_dir: &Path) -> Option<CacheMounts> {
    let root = std::path::absolute(layout_dir).ok()?;
    let dir = root.parent()?.join("mounts");
    dir.is_dir().then(|| CacheMounts::new(dir))
}

/// What a removal pass did.
#[derive(Debug, Default)]
pub struct Removed {
    /// The instances removed.
    pub mounts: Vec<MountInfo>,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes of the instances left.
    pub bytes_left: u64,
}

/// Removes instances no build holds, least recently used first: those unused for longer than
/// `older_than`, then more while `other_bytes` plus the mounts exceed `max_size`; everything
/// unused with `all`. With `dry_run`, removes nothing and reports what would go.
pub fn remove(
    mounts: &CacheMounts,
    other_bytes: u64,
    max_size: Option<u64>,
    older_than: Option<Duration>,
    all: bool,
    dry_run: bool,
) -> std::io::Result<Removed> {
    let list = mounts.list()?;
    let mut total: u64 = list.iter().map(|m| m.bytes).sum();
    let mut removed = Removed::default();
    let now = SystemTime::now();
    for info in list {
        let too_old = older_than.is_some_and(|age| {
            now.duration_since(info.last_used)
                .is_ok_and(|unused| unused > age)
        });
        let over = max_size.is_some_and(|max| other_bytes + total > max);
        if !(all || too_old || over) {
            continue;
        }
        let gone = dry_run || mounts.remove(&info)?;
        if gone {
            total -= info.bytes;
            removed.bytes += info.bytes;
            removed.mounts.push(info);
        }
    }
    removed.bytes_left = total;
    Ok(removed)
}

/// The blobs of a cache manifest that hold cache mount contents (annotated with their id).
pub fn mount_blobs_of(layers: &[Descriptor]) -> Vec<Descriptor> {
    layers
        .iter()
        .filter(|d| d.annotations.contains_key(annotation::CACHE_MOUNT_ID))
        .cloned()
        .collect()
}

/// The cache mount contents of several imported caches by id: the first cache listing an id wins.
pub fn seeds<'a>(
    imports: impl Iterator<Item = &'a Vec<Descriptor>>,
) -> BTreeMap<String, Descriptor> {
    let mut out = BTreeMap::new();
    for blobs in imports {
        for desc in blobs {
            if let Some(id) = desc.annotations.get(annotation::CACHE_MOUNT_ID) {
                out.entry(id.clone()).or_insert_with(|| desc.clone());
            }
        }
    }
    out
}

/// Cache mount tars written into the root for `cache-mounts=true` exports, made once per build.
pub struct MountTars {
    root: Arc<LayoutDir>,
    store: CacheMounts,
    /// By id and compression: the blob, or `None` when the mount was left out.
    made: BTreeMap<(String, String), Option<(Descriptor, u64)>>,
}

fn layer_compression(spec: &ExportSpec) -> Compression {
    match spec.compression.kind {
        CompressionKind::Gzip => Compression::Gzip {
            level: spec.compression.level.unwrap_or(6) as u32,
        },
        CompressionKind::Zstd => Compression::Zstd {
            level: spec.compression.level.unwrap_or(3),
        },
        CompressionKind::Uncompressed => Compression::Uncompressed,
    }
}

impl MountTars {
    /// Tars of the cache mounts in `mounts_dir`, written into `root`.
    pub fn new(root: Arc<LayoutDir>, mounts_dir: PathBuf) -> MountTars {
        MountTars {
            root,
            store: CacheMounts::new(mounts_dir),
            made: BTreeMap::new(),
        }
    }

    /// The extra blobs of a `cache-mounts=true` export: for every cache mount of the build, a tar
    /// of its contents on this root (left out with a warning over `cache-mounts-max-size`), or
    /// the blob an imported cache had for it when it is empty here.
    pub async fn blobs_for(
        &mut self,
        spec: &ExportSpec,
        outcome: &BuildOutcome,
        seeds: &BTreeMap<String, Descriptor>,
        display: &Display,
    ) -> Vec<Descriptor> {
        let compression = layer_compression(spec);
        let mut out = Vec::new();
        for id in &outcome.cache_mounts {
            if self.store.is_empty(id) {
                if let Some(desc) = seeds.get(id) {
                    out.push(desc.clone());
                }
                continue;
            }
            let key = (id.clone(), format!("{compression:?}"));
            if !self.made.contains_key(&key) {
                let made = match self.make(id, compression).await {
                    Ok(made) => Some(made),
                    Err(err) => {
                        display.line(&format!(
                            "WARNING: cache mount {id} is left out of the cache: {err:#}"
                        ));
                        None
                    }
                };
                self.made.insert(key.clone(), made);
            }
            let Some((desc, bytes)) = &self.made[&key] else {
                continue;
            };
            if *bytes > spec.cache_mounts_max_size {
                display.line(&format!(
                    "WARNING: cache mount {id} holds {bytes} bytes, more than cache-mounts-max-size={}: left out of {}",
                    spec.cache_mounts_max_size, spec.raw
                ));
                continue;
            }
            out.push(desc.clone());
        }
        out
    }

    /// Writes the tar of mount `id` into the root; returns its descriptor and the mount's bytes.
    async fn make(&self, id: &str, compression: Compression) -> anyhow::Result<(Descriptor, u64)> {
        let store = self.store.clone();
        let id_owned = id.to_owned();
        let tmp_dir = self.store.dir().with_file_name("tmp");
        let (file, info, bytes) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            std::fs::create_dir_all(&tmp_dir)?;
            // Held shared while the tar is written: a `locked` user cannot change it meanwhile.
            let lease = store.acquire(&id_owned, Sharing::Shared, &mut |_| Ok(()))?;
            let bytes = cache_build::mounts::dir_bytes(&lease.path);
            let (file, info) = cache_build::mounts::write_tar(&lease.path, compression, &tmp_dir)?;
            Ok((file, info, bytes))
        })
        .await
        .map_err(|e| anyhow::format_err!("writing the tar failed: {e}"))??;
        let digest = cache_core::digest::parse_sha256(&info.digest)
            .map_err(|e| anyhow::format_err!("{e}"))?;
        let mut desc = Descriptor::new(info.media_type.clone(), digest, info.size);
        desc.annotations
            .insert(annotation::UNCOMPRESSED.to_owned(), info.diff_id.clone());
        desc.annotations
            .insert(annotation::CACHE_MOUNT_ID.to_owned(), id.to_owned());
        let blob = cache_build::engine::file_blob(file.path()).await?;
        cache_core::Backend::write_blob(self.root.as_ref(), &desc, blob).await?;
        Ok((desc, bytes))
    }
}
