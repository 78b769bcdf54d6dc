//! Blob stores the build reads from and writes to: the machine's root store and imported caches.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use cache_core::transfer::{self, BlobCopy, BlobSource, Moved};
use cache_core::{Blob, Descriptor, Digest, ErrorKind};
use futures_util::TryStreamExt;

pub use cache_core::transfer::BlobStore;

/// An imported cache: its name as the user typed it, the blobs its manifest lists, and its store.
#[derive(Clone, Debug)]
pub struct ImportedSource {
    /// The `--cache-from` value as typed.
    pub name: String,
    /// Layer digests the source's manifest lists.
    pub layers: HashSet<Digest>,
    /// Where its blobs are read.
    pub store: Arc<dyn BlobStore>,
}

/// The root store plus imported sources; reads a blob from the root first, then from the sources
/// that list it.
#[derive(Clone, Debug)]
pub struct Blobs {
    /// The machine's own store (`--root`).
    pub root: Arc<dyn BlobStore>,
    /// Imported caches in `--cache-from` order.
    pub imports: Vec<ImportedSource>,
}

impl Blobs {
    /// Opens `digest` from the root, else from a source listing it, else from any source.
    pub async fn open(&self, digest: &Digest) -> cache_core::Result<Option<Blob>> {
        if let Some(blob) = self.root.read(digest).await? {
            return Ok(Some(blob));
        }
        let mut last_err = None;
        let listing = self.imports.iter().filter(|s| s.layers.contains(digest));
        for source in listing.chain(self.imports.iter().filter(|s| !s.layers.contains(digest))) {
            match source.store.read(digest).await {
                Ok(Some(blob)) => return Ok(Some(blob)),
                Ok(None) => {}
                Err(err) => last_err = Some(err),
            }
        }
        match last_err {
            Some(err) => Err(err),
            None => Ok(None),
        }
    }

    /// Whether `desc` is available with its size: in the root, or in a source that lists it.
    ///
    /// A remote source is not asked: its manifest lists the blob with this size, and a blob
    /// missing after all fails when it is read, which restarts the build without it (a miss
    /// with a warning). So a fully cached build from a registry sends no request per layer.
    pub async fn is_available(&self, desc: &Descriptor) -> bool {
        let fits = |found: &Option<Descriptor>| found.as_ref().is_some_and(|d| d.size == desc.size);
        if matches!(self.root.stat(&desc.digest).await, Ok(found) if fits(&found)) {
            return true;
        }
        for source in self
            .imports
            .iter()
            .filter(|s| s.layers.contains(&desc.digest))
        {
            if source.store.is_remote() {
                return true;
            }
            if matches!(source.store.stat(&desc.digest).await, Ok(found) if fits(&found)) {
                return true;
            }
        }
        false
    }

    /// Whether the root store holds `desc` already (nothing to fetch).
    pub async fn in_root(&self, desc: &Descriptor) -> bool {
        matches!(self.root.stat(&desc.digest).await, Ok(Some(_)))
    }

    /// Makes sure the root store has `desc`, copying it from a source if needed.
    /// Returns true when it had to be fetched.
    pub async fn fetch_to_root(&self, desc: &Descriptor) -> cache_core::Result<bool> {
        self.fetch_to_root_counted(desc, &Arc::new(AtomicU64::new(0)))
            .await
    }

    /// [`Blobs::fetch_to_root`], counting the bytes copied into `counter`.
    pub async fn fetch_to_root_counted(
        &self,
        desc: &Descriptor,
        counter: &Arc<AtomicU64>,
    ) -> cache_core::Result<bool> {
        let how = BlobCopy {
            verify: true,
            counter: Some(counter.clone()),
            attempts: 1,
            ..BlobCopy::default()
        };
        match transfer::copy_blob(&*self.root, self, desc, &how).await {
            Ok(moved) => Ok(moved != Moved::Present),
            Err(transfer::Error::Missing { digest }) => Err(cache_core::Error::new(
                ErrorKind::NotFound,
                format!("layer blob {digest} is in no cache source"),
            )),
            Err(transfer::Error::Backend { source, .. }) => Err(source),
            Err(err) => Err(cache_core::Error::new(
                ErrorKind::Unexpected,
                err.to_string(),
            )),
        }
    }
}

impl BlobSource for Blobs {
    async fn open_blob(&self, desc: &Descriptor) -> cache_core::Result<Option<Blob>> {
        self.open(&desc.digest).await
    }
}

/// A blob streaming the file at `path`.
pub async fn file_blob(path: &Path) -> std::io::Result<Blob> {
    let file = tokio::fs::File::open(path).await?;
    let size = file.metadata().await?.len();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
    Ok(Blob {
        size,
        body: Box::pin(stream),
    })
}

/// A synchronous reader over a blob, for use on a blocking thread.
pub fn blocking_reader(blob: Blob) -> impl std::io::Read + Send {
    let stream = blob.body.map_err(std::io::Error::other);
    tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream))
}
