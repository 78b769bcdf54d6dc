//! Moving blobs between backends: the one "copy a blob if it is missing".
//!
//! [`copy_blob`] is what export, `cache copy`, an image push and the build's fetch into its
//! root all do with a blob: nothing when the destination has it with the right size, else a
//! cross-repository mount when the destination can mount and a hint names a repository that
//! may hold it, else a stream from the source (restarted on temporary failures).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::backend::{self, Backend, Blob, Capabilities, MountSource};
use crate::descriptor::Descriptor;
use crate::digest::Digest;

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
