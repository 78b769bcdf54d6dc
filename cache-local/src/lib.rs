//! An OCI image layout directory as a build-cache backend: `--cache-to type=local,dest=DIR` and
//! `--cache-from type=local,src=DIR`, readable and writable by BuildKit.
//!
//! ```
//! use cache_core::{Backend, Blob, Descriptor, digest};
//! use cache_local::LayoutDir;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let cache = LayoutDir::open(dir.path().join("cache"));
//! let bytes = b"layer bytes".to_vec();
//! let desc = Descriptor::new("application/vnd.oci.image.layer.v1.tar", digest::sha256(&bytes), 11);
//! cache.write_blob(&desc, Blob::from_bytes(bytes)).await?;
//! // The blob is visible once verified and synced, at blobs/sha256/<hex>.
//! assert_eq!(cache.stat_blob(&desc.digest).await?.map(|d| d.size), Some(11));
//! # Ok::<(), cache_core::Error>(()) }).unwrap();
//! ```
//!
//! # Layout
//! `oci-layout`, `index.json` (tags), `index.json.lock` (an `flock` shared with BuildKit's client),
//! `gc.lock` (exports share it, garbage collection takes it alone) and `blobs/sha256/<hex>`.
//! Temporary files are named `.tmp-*`; nothing reads them as blobs.
//!
//! # Invariants
//! - A blob is visible under its digest only once its full content is verified and synced.
//! - `index.json` is replaced atomically under the lock: after a crash it is the old or the new
//!   file, never a mix; other tags and unknown fields are kept.
//! - Blob bodies are streamed; only manifests and `index.json` (at most 64 MiB) are read whole.
//! - The async [`Backend`] methods run the synchronous code on tokio's blocking pool.
//!
//! # Limitations
//! - Unix only (`flock`). Only sha256 digests.
//! - Writes never delete: exports hold [`LayoutDir::writer`] and then call
//!   [`LayoutDir::collect_garbage`], which removes blobs no tag reaches when no other export is
//!   running. [`LayoutDir::disk_usage`] and [`LayoutDir::prune`] (age and size budgets) build on
//!   the same walk. BuildKit's client does not take `gc.lock` (see [`GcReport::busy`]).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod blob;
mod error;
mod gc;
mod hook;
mod index;
mod lock;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use cache_core::backend::{BackendInfo, Capabilities, Result};
use cache_core::{Backend, Blob, Descriptor, Digest, Error, ErrorKind, IndexRef, RawIndex};
use futures_util::StreamExt;

pub use blob::{BlobReader, BlobWriter};
pub use gc::{
    DropReason, DroppedTag, GC_LOCK_FILE, GC_LOCK_WAIT, GcOptions, GcReport, PruneOptions,
    PruneReport, TEMP_FILE_MAX_AGE, TagUsage, TrimmedTag, Usage, WriterGuard,
};
#[doc(hidden)]
pub use hook::set_pause_hook;
pub use lock::IndexLock;

/// How long [`LayoutDir::lock`] waits for another holder by default.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// Read buffer of blob streams.
const READ_BUFFER: usize = 256 * 1024;

/// An OCI image layout directory holding build caches.
#[derive(Clone, Debug)]
pub struct LayoutDir {
    root: PathBuf,
    lock_timeout: Duration,
}

impl LayoutDir {
    /// A layout at `dir`, which need not exist: the first write creates it.
    ///
    /// Does no I/O. Reads of a missing directory find nothing.
    pub fn open(dir: impl Into<PathBuf>) -> LayoutDir {
        LayoutDir {
            root: dir.into(),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }

    /// The layout at `dir`, which must be a directory with readable `oci-layout` and `index.json`.
    ///
    /// For explicit requests on an existing cache (`cache inspect`); errors name the missing file
    /// ([`ErrorKind::NotFound`], [`ErrorKind::Corrupt`], [`ErrorKind::Denied`],
    /// [`ErrorKind::InvalidConfig`] for a path that is not a directory).
    pub fn open_existing(dir: impl Into<PathBuf>) -> Result<LayoutDir> {
        let layout = LayoutDir::open(dir);
        layout.check_existing()?;
        Ok(layout)
    }

    /// The same layout with another lock timeout (for [`LayoutDir::lock`] and index writes).
    pub fn with_lock_timeout(mut self, timeout: Duration) -> LayoutDir {
        self.lock_timeout = timeout;
        self
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the exclusive lock on `index.json`, waiting up to the lock timeout (60 s by default).
    ///
    /// Index writes take it internally; garbage collection holds it while it decides and deletes.
    /// Creates the directory if needed. Timing out is a temporary [`ErrorKind::Unexpected`].
    pub fn lock(&self) -> Result<IndexLock> {
        IndexLock::acquire(&self.root, self.lock_timeout)
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T, F>(&self, what: &str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(LayoutDir) -> Result<T> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(this))
            .await
            .map_err(|err| {
                Error::new(
                    ErrorKind::Unexpected,
                    format!("{what} in {} did not complete", self.root.display()),
                )
                .with_source(err)
            })?
    }
}

/// A message to the blocking task writing a streamed blob.
enum Chunk {
    Data(Bytes),
    End,
}

impl Backend for LayoutDir {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            scheme: "oci-layout",
            location: self.root.display().to_string(),
        }
    }

    /// A directory holds no repository: its blobs are copied, never mounted.
    fn mount_source(&self) -> Option<cache_core::MountSource> {
        None
    }

    async fn mount_blob_from(
        &self,
        _desc: &Descriptor,
        _from: &cache_core::MountSource,
    ) -> Result<bool> {
        Ok(false)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            write: true,
            cross_repo_mount: false,
            delete: true,
            max_blob_size: None,
        }
    }

    async fn stat_blob(&self, digest: &Digest) -> Result<Option<Descriptor>> {
        let digest = digest.clone();
        self.blocking("stat_blob", move |this| this.stat_blob_sync(&digest))
            .await
    }

    async fn read_blob(&self, digest: &Digest) -> Result<Option<Blob>> {
        let wanted = digest.clone();
        let opened = self
            .blocking("read_blob", move |this| this.open_blob(&wanted))
            .await?;
        let Some((file, size, path)) = opened else {
            return Ok(None);
        };
        let stream = tokio_util::io::ReaderStream::with_capacity(
            tokio::fs::File::from_std(file),
            READ_BUFFER,
        )
        .map(move |chunk| {
            chunk.map_err(|err| {
                std::io::Error::new(err.kind(), format!("reading {}: {err}", path.display()))
            })
        });
        let blob = Blob {
            size,
            body: Box::pin(stream),
        };
        Ok(Some(blob.verified(digest.clone())))
    }

    async fn write_blob(&self, desc: &Descriptor, body: Blob) -> Result<()> {
        if body.size != desc.size {
            return Err(Error::new(
                ErrorKind::DigestMismatch,
                format!(
                    "blob {}: the body is {} bytes but the descriptor says {}; nothing was stored",
                    desc.digest, body.size, desc.size
                ),
            ));
        }
        let wanted = desc.clone();
        let writer = self
            .blocking("write_blob", move |this| this.blob_writer(&wanted))
            .await?;
        let Some(mut writer) = writer else {
            return Ok(());
        };
        // The file is written on one blocking thread fed through a small channel, so the body
        // is never held in memory and reading it overlaps with writing.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(4);
        let task = tokio::task::spawn_blocking(move || -> Result<()> {
            while let Some(chunk) = rx.blocking_recv() {
                match chunk {
                    Chunk::Data(bytes) => writer.write_chunk(&bytes)?,
                    Chunk::End => return writer.finish(),
                }
            }
            // The sender went away without `End`: the write was abandoned; drop the temp file.
            Err(Error::new(ErrorKind::Unexpected, "blob write abandoned"))
        });
        let mut stream = body.body;
        let mut stream_err = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(bytes) => {
                    if tx.send(Chunk::Data(bytes)).await.is_err() {
                        // The writer failed; its error is returned below.
                        break;
                    }
                }
                Err(err) => {
                    stream_err = Some(err);
                    break;
                }
            }
        }
        if stream_err.is_none() {
            // A failed send means the writer already stopped with an error, returned below.
            let _ = tx.send(Chunk::End).await;
        }
        drop(tx);
        let res = task.await.map_err(|err| {
            Error::new(
                ErrorKind::Unexpected,
                format!("writing blob {} did not complete", desc.digest),
            )
            .with_source(err)
        })?;
        if let Some(err) = stream_err {
            return Err(Error::from_io(
                format!(
                    "reading the body of blob {} failed; nothing was stored",
                    desc.digest
                ),
                err,
            ));
        }
        res
    }

    async fn read_index(&self, reference: &IndexRef) -> Result<Option<RawIndex>> {
        let reference = reference.clone();
        self.blocking("read_index", move |this| this.read_index_sync(&reference))
            .await
    }

    async fn write_index(&self, tag: &str, index: &RawIndex) -> Result<()> {
        // A tag someone gave (an export, a copy) must be an OCI tag; prune rewrites the tags a
        // directory already has, whatever wrote them.
        if !tag.is_empty() {
            cache_core::spec::check_tag(tag).map_err(|message| {
                Error::new(
                    ErrorKind::InvalidConfig,
                    format!("cache tag in {}: {message}", self.root().display()),
                )
            })?;
        }
        let tag = tag.to_owned();
        let index = index.clone();
        self.blocking("write_index", move |this| {
            this.write_index_sync(&tag, &index)
        })
        .await
    }
}
