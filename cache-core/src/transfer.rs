//! Moving blobs between backends: the one "copy a blob if it is missing".
//!
//! [`copy_blob`] is what export, `cache copy`, an image push and the build's fetch into its
//! root all do with a blob: nothing when the destination has it with the right size, else a
//! cross-repository mount when the destination can mount and a hint names a repository that
//! may hold it, else a stream from the source (restarted on temporary failures).
//! [`copy_cache`] copies a whole cache with it, and [`verify`] reads one through.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use crate::backend::{self, Backend, Blob, Capabilities, IndexRef, MountSource, RawIndex};
use crate::config::CacheConfig;
use crate::descriptor::Descriptor;
use crate::digest::Digest;
use crate::graph::CacheGraph;
use crate::limits::Limits;
use crate::manifest::{self, CacheManifest};

/// Where blobs are read from: a backend, the build's stores, or bytes in memory.
pub trait BlobSource: Send + Sync {
    /// The bytes of the blob `desc` names, or `None` if this source does not have it.
    fn open_blob(
        &self,
        desc: &Descriptor,
    ) -> impl Future<Output = backend::Result<Option<Blob>>> + Send;
}

/// Any backend is a blob source.
#[derive(Debug)]
pub struct FromBackend<'a, B: ?Sized>(pub &'a B);

impl<B: BlobStore + ?Sized> BlobSource for FromBackend<'_, B> {
    async fn open_blob(&self, desc: &Descriptor) -> backend::Result<Option<Blob>> {
        self.0.read(&desc.digest).await
    }
}

/// A blob already in memory (a config, a manifest), whatever descriptor asks for it.
#[derive(Debug, Clone)]
pub struct InMemory(pub Bytes);

impl BlobSource for InMemory {
    async fn open_blob(&self, _desc: &Descriptor) -> backend::Result<Option<Blob>> {
        Ok(Some(Blob::from_bytes(self.0.clone())))
    }
}

/// A backend behind a trait object (the build holds its stores as `Arc<dyn BlobStore>`):
/// any [`Backend`] is one.
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Names the store for messages.
    fn describe(&self) -> String;
    /// Whether asking the store costs a network round trip (a registry), so that a blob its
    /// manifest lists is trusted until it is actually read.
    fn is_remote(&self) -> bool;
    /// What the store supports.
    fn store_capabilities(&self) -> Capabilities;
    /// The descriptor of `digest`, or `None`.
    fn stat<'a>(&'a self, digest: &'a Digest)
    -> BoxFuture<'a, backend::Result<Option<Descriptor>>>;
    /// The bytes of `digest`, or `None`; verified while streaming.
    fn read<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, backend::Result<Option<Blob>>>;
    /// Stores a blob (idempotent, verified).
    fn write<'a>(&'a self, desc: &'a Descriptor, blob: Blob) -> BoxFuture<'a, backend::Result<()>>;
    /// [`Backend::mount_blob_from`].
    fn mount<'a>(
        &'a self,
        desc: &'a Descriptor,
        from: &'a MountSource,
    ) -> BoxFuture<'a, backend::Result<bool>>;
}

impl<B: Backend> BlobStore for B {
    fn describe(&self) -> String {
        self.info().to_string()
    }
    fn is_remote(&self) -> bool {
        self.info().scheme == "registry"
    }
    fn store_capabilities(&self) -> Capabilities {
        self.capabilities()
    }
    fn stat<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, backend::Result<Option<Descriptor>>> {
        Box::pin(self.stat_blob(digest))
    }
    fn read<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, backend::Result<Option<Blob>>> {
        Box::pin(self.read_blob(digest))
    }
    fn write<'a>(&'a self, desc: &'a Descriptor, blob: Blob) -> BoxFuture<'a, backend::Result<()>> {
        Box::pin(self.write_blob(desc, blob))
    }
    fn mount<'a>(
        &'a self,
        desc: &'a Descriptor,
        from: &'a MountSource,
    ) -> BoxFuture<'a, backend::Result<bool>> {
        Box::pin(self.mount_blob_from(desc, from))
    }
}

/// How [`copy_blob`] moves one blob.
#[derive(Debug, Clone)]
pub struct BlobCopy<'a> {
    /// Repositories that may hold the blob, tried in order when the destination can mount.
    pub mount_from: &'a [MountSource],
    /// Hash the stream on its way, so a corrupt source fails as such (the destination checks
    /// the bytes again before the blob becomes visible).
    pub verify: bool,
    /// Counts the bytes streamed (for progress).
    pub counter: Option<Arc<AtomicU64>>,
    /// Writes tried in all: a temporary failure opens the source again and restarts
    /// ([`write_blob_restarting`]); 1 never restarts.
    pub attempts: u32,
}

impl Default for BlobCopy<'_> {
    fn default() -> Self {
        BlobCopy {
            mount_from: &[],
            verify: false,
            counter: None,
            attempts: backend::WRITE_ATTEMPTS,
        }
    }
}

/// How a blob reached the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// It was there with the right size: nothing was sent.
    Present,
    /// It was mounted from this repository.
    Mounted(MountSource),
    /// Its bytes were streamed.
    Copied,
}

/// What [`copy_blob`] was doing when it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Asking the destination whether it has the blob.
    Checking,
    /// Mounting it from a repository.
    Mounting(MountSource),
    /// Opening it in the source.
    Reading,
    /// Writing it to the destination.
    Writing,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Checking => f.write_str("checking"),
            Step::Mounting(from) => write!(f, "mounting from {from}"),
            Step::Reading => f.write_str("reading"),
            Step::Writing => f.write_str("writing"),
        }
    }
}

/// Why [`copy_blob`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The destination lacks the blob and the source does not have it.
    #[error("blob {digest} is missing from the source")]
    Missing {
        /// The blob.
        digest: Digest,
    },
    /// A backend failed.
    #[error("{step} blob {digest}: {source}")]
    Backend {
        /// What was being done.
        step: Step,
        /// The blob.
        digest: Digest,
        /// The cause.
        source: backend::Error,
    },
}

/// Makes blob `desc` present in `dst`: nothing when it is there with `desc.size` bytes; else a
/// mount from one of `how.mount_from` when `dst` has the `cross_repo_mount` capability; else
/// its bytes from `src`, checked by `dst` (and on the way with `how.verify`).
///
/// Requests: one existence check, then mounts, then one write (a registry's write checks
/// existence itself once more, to stay idempotent on its own).
pub async fn copy_blob<D, S>(
    dst: &D,
    src: &S,
    desc: &Descriptor,
    how: &BlobCopy<'_>,
) -> Result<Moved, Error>
where
    D: BlobStore + ?Sized,
    S: BlobSource + ?Sized,
{
    let digest = &desc.digest;
    let failed = |step: Step| {
        move |source: backend::Error| Error::Backend {
            step,
            digest: digest.clone(),
            source,
        }
    };
    // Present counts only with the right size.
    if dst
        .stat(digest)
        .await
        .map_err(failed(Step::Checking))?
        .is_some_and(|found| found.size == desc.size)
    {
        return Ok(Moved::Present);
    }
    if dst.store_capabilities().cross_repo_mount {
        for from in how.mount_from {
            if dst
                .mount(desc, from)
                .await
                .map_err(failed(Step::Mounting(from.clone())))?
            {
                return Ok(Moved::Mounted(from.clone()));
            }
        }
    }
    let open = || async {
        let blob = src
            .open_blob(desc)
            .await
            .map_err(failed(Step::Reading))?
            .ok_or_else(|| Error::Missing {
                digest: digest.clone(),
            })?;
        let blob = match &how.counter {
            Some(counter) => counted(blob, Arc::clone(counter)),
            None => blob,
        };
        Ok(if how.verify {
            blob.verified(digest.clone())
        } else {
            blob
        })
    };
    write_blob_restarting(dst, desc, open, how.attempts, failed(Step::Writing)).await?;
    Ok(Moved::Copied)
}

/// Writes the blob `open` yields to `dst`, opening it again and restarting the write while it
/// fails with a temporary error, at most `attempts` times in all.
///
/// A backend can retry a write on its own only until it has read the body; this restarts
/// the whole write with a fresh body (a registry checks first whether an earlier attempt
/// landed, and waits its backoff before returning a temporary error). Errors of `open` end
/// it at once; errors of the write are mapped by `write_error`.
pub async fn write_blob_restarting<D, E, F, Fut>(
    dst: &D,
    desc: &Descriptor,
    mut open: F,
    attempts: u32,
    write_error: impl FnOnce(backend::Error) -> E,
) -> Result<(), E>
where
    D: BlobStore + ?Sized,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Blob, E>>,
{
    let mut attempt = 1;
    loop {
        let blob = open().await?;
        match dst.write(desc, blob).await {
            Ok(()) => return Ok(()),
            Err(err) if err.is_temporary() && attempt < attempts => attempt += 1,
            Err(err) => return Err(write_error(err)),
        }
    }
}

/// `blob`, adding the length of every chunk read to `counter`.
pub fn counted(blob: Blob, counter: Arc<AtomicU64>) -> Blob {
    use futures_util::StreamExt;
    let body = blob.body.inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
    });
    Blob {
        size: blob.size,
        body: Box::pin(body),
    }
}

// ----- verify -----

/// What `verify` found for one cache.
#[derive(Debug, Default)]
pub struct Verified {
    /// The tag or digest checked, as text.
    pub reference: String,
    /// The manifest digest, when it could be read.
    pub manifest: Option<String>,
    /// Blobs read through (manifest, config, layers).
    pub blobs_checked: u64,
    /// Their bytes.
    pub bytes_checked: u64,
    /// Results (layer chains) the config lists.
    pub results: usize,
    /// Results whose chain has a missing or broken blob.
    pub incomplete_results: usize,
    /// What is wrong, one message each; empty when the cache is intact.
    pub problems: Vec<String>,
}

/// `cache verify`: checks the cache `reference` names: manifest, config, every blob's digest and size, and the
/// layer chain of every result. Never fails: what is wrong goes into `problems`.
pub async fn verify<B: Backend>(backend: &B, reference: &IndexRef, limits: &Limits) -> Verified {
    let mut report = Verified {
        reference: reference.to_string(),
        ..Verified::default()
    };
    let Some(cache) = verify_manifest(backend, reference, limits, &mut report).await else {
        return report;
    };
    let config = match read_config(backend, &cache, limits).await {
        Ok(config) => Some(config),
        Err(problem) => {
            report.problems.push(problem);
            None
        }
    };
    report.blobs_checked += 1;
    report.bytes_checked += cache.config.size;

    let mut bad = verify_listed_blobs(backend, &cache.layers, &mut report).await;
    let affected = config
        .as_ref()
        .map(|config| verify_chains(config, &cache.layers, &mut bad, &mut report))
        .unwrap_or_default();
    let mut bad: Vec<(Digest, String)> = bad.into_iter().collect();
    bad.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
    for (digest, problem) in bad {
        let n = affected.get(&digest).copied().unwrap_or(0);
        report
            .problems
            .push(format!("{problem} (in the layer chain of {n} results)"));
    }
    report
}

/// Reads and parses the manifest `reference` names, within `limits`, counting it in `report`;
/// `None` with the problem in `report` when there is none or it is unusable.
async fn verify_manifest<B: Backend>(
    backend: &B,
    reference: &IndexRef,
    limits: &Limits,
    report: &mut Verified,
) -> Option<CacheManifest> {
    let raw = match backend.read_index(reference).await {
        Ok(Some(raw)) => raw,
        Ok(None) => {
            report
                .problems
                .push(format!("no cache for {reference} in {}", backend.info()));
            return None;
        }
        Err(err) => {
            report
                .problems
                .push(format!("reading the manifest of {reference}: {err}"));
            return None;
        }
    };
    report.manifest = Some(raw.digest.to_string());
    report.blobs_checked += 1;
    report.bytes_checked += raw.bytes.len() as u64;
    let manifest_name = || format!("cache manifest {} from {}", raw.digest, backend.info());
    if let Err(exceeded) = limits.check("config-size", &manifest_name, raw.bytes.len() as u64) {
        report.problems.push(exceeded.to_string());
        return None;
    }
    let cache = match manifest::read(&raw) {
        Ok(cache) => cache,
        Err(err) => {
            report.problems.push(err.to_string());
            return None;
        }
    };
    if let Err(exceeded) = limits.check("config-layers", &manifest_name, cache.layers.len() as u64)
    {
        report.problems.push(exceeded.to_string());
        return None;
    }
    Some(cache)
}

/// Every layer the manifest lists, read through and checked, counted in `report`; the broken
/// ones with what is wrong with each.
async fn verify_listed_blobs<B: Backend>(
    backend: &B,
    layers: &[Descriptor],
    report: &mut Verified,
) -> HashMap<Digest, String> {
    let mut unique: Vec<&Descriptor> = Vec::new();
    let mut seen = HashSet::new();
    for layer in layers {
        if seen.insert(layer.digest.clone()) {
            unique.push(layer);
        }
    }
    let checks: Vec<(Digest, Result<u64, String>)> = futures_util::stream::iter(unique)
        .map(|desc| async move { (desc.digest.clone(), check_blob(backend, desc).await) })
        .buffer_unordered(PARALLEL_BLOBS)
        .collect()
        .await;
    let mut bad: HashMap<Digest, String> = HashMap::new();
    for (digest, check) in checks {
        report.blobs_checked += 1;
        match check {
            Ok(size) => report.bytes_checked += size,
            Err(problem) => {
                bad.insert(digest, problem);
            }
        }
    }
    bad
}

/// The layer chain of every result of `config`: each blob `listed` by the manifest, present and
/// intact (not in `bad`). Adds blobs missing from the manifest to `bad`, counts results in
/// `report` and returns, per bad blob, how many results' chains hold it.
fn verify_chains(
    config: &CacheConfig,
    listed: &[Descriptor],
    bad: &mut HashMap<Digest, String>,
    report: &mut Verified,
) -> HashMap<Digest, usize> {
    let mut affected: HashMap<Digest, usize> = HashMap::new();
    let listed: HashSet<&Digest> = listed.iter().map(|l| &l.digest).collect();
    for record in &config.records {
        let chains = record
            .layers
            .iter()
            .map(|result| config.chain_blobs(result.layer))
            .chain(
                record
                    .chains
                    .iter()
                    .map(|chain| chain.layers.iter().map(|&l| config.layer_blob(l)).collect()),
            );
        for chain in chains {
            report.results += 1;
            let mut complete = true;
            for blob in chain {
                match blob {
                    Some(digest) if listed.contains(&digest) && !bad.contains_key(&digest) => {}
                    Some(digest) if !listed.contains(&digest) => {
                        complete = false;
                        let message = format!(
                            "blob {digest} is in the layer chain of record {} but the \
                             manifest does not list it",
                            record.digest
                        );
                        bad.entry(digest.clone()).or_insert(message);
                        *affected.entry(digest).or_default() += 1;
                    }
                    Some(digest) => {
                        complete = false;
                        *affected.entry(digest).or_default() += 1;
                    }
                    None => {
                        complete = false;
                        report.problems.push(format!(
                            "record {} has a result whose layer chain is invalid",
                            record.digest
                        ));
                    }
                }
            }
            if !complete {
                report.incomplete_results += 1;
            }
        }
    }
    affected
}

/// Reads, checks and parses the config of `cache`; a problem description on failure.
pub async fn read_config<B: Backend>(
    backend: &B,
    cache: &CacheManifest,
    limits: &Limits,
) -> Result<CacheConfig, String> {
    let digest = &cache.config.digest;
    let config_name = || format!("cache config {digest} from {}", backend.info());
    limits
        .check("config-size", &config_name, cache.config.size)
        .map_err(|exceeded| exceeded.to_string())?;
    let blob = match backend.read_blob(digest).await {
        Ok(Some(blob)) => blob,
        Ok(None) => return Err(format!("cache config {digest} is missing")),
        Err(err) => return Err(format!("reading cache config {digest}: {err}")),
    };
    if blob.size != cache.config.size {
        return Err(format!(
            "cache config {digest} is {} bytes but the manifest says {}",
            blob.size, cache.config.size
        ));
    }
    let bytes = blob
        .verified(digest.clone())
        .into_bytes(limits.config_size)
        .await
        .map_err(|err| format!("cache config {digest} is corrupt: {err}"))?;
    let config = CacheConfig::from_json(&bytes)
        .map_err(|err| format!("cache config {digest} is invalid: {err}"))?;
    limits
        .check_config(&config_name, &config)
        .map_err(|exceeded| exceeded.to_string())?;
    let listed: HashMap<Digest, Descriptor> = cache
        .layers
        .iter()
        .map(|d| (d.digest.clone(), d.clone()))
        .collect();
    CacheGraph::from_config(&config, &|d| listed.get(d).cloned(), 0)
        .map_err(|err| format!("cache config {digest} is invalid: {err}"))?;
    Ok(config)
}

/// Reads blob `desc` through, checking digest and size; its size, or a problem description.
async fn check_blob<B: Backend>(backend: &B, desc: &Descriptor) -> Result<u64, String> {
    let digest = &desc.digest;
    let blob = match backend.read_blob(digest).await {
        Ok(Some(blob)) => blob,
        Ok(None) => return Err(format!("blob {digest} is missing")),
        Err(err) => return Err(format!("reading blob {digest}: {err}")),
    };
    if blob.size != desc.size {
        return Err(format!(
            "blob {digest} is {} bytes but the manifest says {}",
            blob.size, desc.size
        ));
    }
    let mut body = blob.verified(digest.clone()).body;
    let mut n_bytes = 0u64;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => n_bytes += chunk.len() as u64,
            Err(err) => return Err(format!("blob {digest} is corrupt: {err}")),
        }
    }
    Ok(n_bytes)
}

// ----- copy -----

/// How many blobs [`copy_cache`] and [`verify`] move or read at once.
pub const PARALLEL_BLOBS: usize = 4;

/// What [`copy_cache`] did.
#[derive(Debug, Clone, Default)]
pub struct Copied {
    /// The manifest written under the tag (its exact bytes, a missing media type filled in).
    pub manifest: Option<RawIndex>,
    /// Blobs streamed.
    pub blobs_copied: u64,
    /// Their bytes.
    pub bytes_copied: u64,
    /// Blobs mounted from the source's repository.
    pub blobs_mounted: u64,
    /// Their bytes.
    pub bytes_mounted: u64,
    /// Blobs already in the destination.
    pub blobs_present: u64,
    /// Their bytes.
    pub bytes_present: u64,
}

/// Why [`copy_cache`] failed; nothing names the copy in the destination then.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// The source's manifest could not be read.
    #[error("reading the cache manifest: {0}")]
    ReadManifest(#[source] backend::Error),
    /// The source has no cache under the reference.
    #[error("no cache found for {0}")]
    NoCache(IndexRef),
    /// The source's manifest is not a cache manifest.
    #[error("reading the cache: {0}")]
    Manifest(#[source] manifest::ReadError),
    /// A blob could not be copied.
    #[error(transparent)]
    Blob(Error),
    /// Checking that a blob is in place failed.
    #[error("checking blob {digest}: {source}")]
    Check {
        /// The blob.
        digest: Digest,
        /// The cause.
        source: backend::Error,
    },
    /// A blob is missing (`found: None`) or has the wrong size in the destination after the copy.
    #[error("blob {digest} is {} there, expected {expected} bytes", found.map_or("missing".to_owned(), |n| format!("{n} bytes")))]
    Incomplete {
        /// The blob.
        digest: Digest,
        /// Its size there.
        found: Option<u64>,
        /// Its size in the manifest.
        expected: u64,
    },
    /// The config in the destination is not a valid cache config.
    #[error("{0}")]
    Config(String),
    /// Writing the tag failed.
    #[error("writing the tag: {0}")]
    WriteTag(#[source] backend::Error),
}

/// `cache copy`: copies the cache `reference` names in `src` to `dst` under `tag`: every blob
/// through [`copy_blob`] (mounted from `src`'s repository when `dst` can), each checked in
/// place with its size, the config checked against `limits`, then the manifest's exact bytes
/// under the tag, last. A local destination's writer lock is the caller's to hold.
pub async fn copy_cache<S: Backend, D: Backend>(
    src: &S,
    reference: &IndexRef,
    dst: &D,
    tag: &str,
    limits: &Limits,
) -> Result<Copied, CopyError> {
    let raw = src
        .read_index(reference)
        .await
        .map_err(CopyError::ReadManifest)?
        .ok_or_else(|| CopyError::NoCache(reference.clone()))?;
    let cache = manifest::read(&raw).map_err(CopyError::Manifest)?;
    // The manifest travels as its exact bytes; only a missing media type is filled in.
    let raw = RawIndex {
        media_type: raw.media_type.clone().or(Some(cache.media_type.clone())),
        ..raw
    };
    let mut blobs: Vec<&Descriptor> = Vec::new();
    let mut seen = HashSet::new();
    for desc in cache.layers.iter().chain(std::iter::once(&cache.config)) {
        if seen.insert(desc.digest.clone()) {
            blobs.push(desc);
        }
    }
    let mount_from: Vec<MountSource> = src.mount_source().into_iter().collect();
    let how = BlobCopy {
        mount_from: &mount_from,
        verify: true,
        ..BlobCopy::default()
    };
    let source = FromBackend(src);
    let moved: Vec<Result<(u64, Moved), Error>> = futures_util::stream::iter(blobs.clone())
        .map(|desc| {
            let (source, how) = (&source, &how);
            async move {
                copy_blob(dst, source, desc, how)
                    .await
                    .map(|moved| (desc.size, moved))
            }
        })
        .buffer_unordered(PARALLEL_BLOBS)
        .collect()
        .await;
    let mut copied = Copied::default();
    for result in moved {
        let (size, how) = result.map_err(CopyError::Blob)?;
        let (blobs, bytes) = match how {
            Moved::Present => (&mut copied.blobs_present, &mut copied.bytes_present),
            Moved::Mounted(_) => (&mut copied.blobs_mounted, &mut copied.bytes_mounted),
            Moved::Copied => (&mut copied.blobs_copied, &mut copied.bytes_copied),
        };
        *blobs += 1;
        *bytes += size;
    }
    // Every blob is in place with its size before the tag names it.
    for desc in &blobs {
        let found = dst
            .stat_blob(&desc.digest)
            .await
            .map_err(|source| CopyError::Check {
                digest: desc.digest.clone(),
                source,
            })?
            .map(|found| found.size);
        if found != Some(desc.size) {
            return Err(CopyError::Incomplete {
                digest: desc.digest.clone(),
                found,
                expected: desc.size,
            });
        }
    }
    read_config(dst, &cache, limits)
        .await
        .map_err(CopyError::Config)?;
    dst.write_index(tag, &raw)
        .await
        .map_err(CopyError::WriteTag)?;
    copied.manifest = Some(raw);
    Ok(copied)
}
