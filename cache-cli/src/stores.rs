//! Opening cache destinations and sources: the one place that maps an option to a backend.

use std::path::PathBuf;

use cache_core::backend::{BackendInfo, Capabilities};
use cache_core::spec::{ExportTarget, ImportSource};
use cache_core::{Backend, Blob, Descriptor, Digest, IndexRef, RawIndex, Result};
use cache_local::LayoutDir;
use cache_registry::Registry;

/// Every backend the CLI knows, behind one type.
#[derive(Debug)]
pub enum AnyBackend {
    /// An OCI layout directory.
    Local(LayoutDir),
    /// A registry repository.
    Registry(Registry),
}

impl AnyBackend {
    /// The backend an export writes to.
    pub fn for_export(target: &ExportTarget) -> Result<(AnyBackend, String)> {
        match target {
            ExportTarget::Local { dest, tag } => Ok((
                AnyBackend::Local(LayoutDir::open(dest.clone())),
                tag.clone(),
            )),
            ExportTarget::Registry {
                reference,
                insecure,
            } => {
                let registry = open_registry(reference, *insecure)?;
                let tag = registry.reference().tag().unwrap_or("latest").to_owned();
                Ok((AnyBackend::Registry(registry), tag))
            }
        }
    }

    /// The backend an import reads from, and which manifest to read.
    pub fn for_import(source: &ImportSource) -> Result<(AnyBackend, IndexRef)> {
        match source {
            ImportSource::Local { src, tag, digest } => {
                let reference = match digest {
                    Some(d) => IndexRef::Digest(d.clone()),
                    None => IndexRef::Tag(tag.clone()),
                };
                Ok((AnyBackend::Local(LayoutDir::open(src.clone())), reference))
            }
            ImportSource::Registry {
                reference,
                insecure,
            } => {
                let registry = open_registry(reference, *insecure)?;
                let index_ref = match registry.reference().digest() {
                    Some(d) => IndexRef::Digest(d.clone()),
                    None => {
                        IndexRef::Tag(registry.reference().tag().unwrap_or("latest").to_owned())
                    }
                };
                Ok((AnyBackend::Registry(registry), index_ref))
            }
        }
    }

    /// The directory of a local backend.
    pub fn local_dir(&self) -> Option<PathBuf> {
        match self {
            AnyBackend::Local(dir) => Some(dir.root().to_path_buf()),
            AnyBackend::Registry(_) => None,
        }
    }
}

fn open_registry(reference: &str, insecure: bool) -> Result<Registry> {
    let mut options = cache_registry::Options::new();
    options.insecure = insecure;
    Registry::new(reference, options)
}

impl Backend for AnyBackend {
    fn info(&self) -> BackendInfo {
        match self {
            AnyBackend::Local(b) => b.info(),
            AnyBackend::Registry(b) => b.info(),
        }
    }

    fn capabilities(&self) -> Capabilities {
        match self {
            AnyBackend::Local(b) => b.capabilities(),
            AnyBackend::Registry(b) => b.capabilities(),
        }
    }

    async fn stat_blob(&self, digest: &Digest) -> Result<Option<Descriptor>> {
        match self {
            AnyBackend::Local(b) => b.stat_blob(digest).await,
            AnyBackend::Registry(b) => b.stat_blob(digest).await,
        }
    }

    async fn read_blob(&self, digest: &Digest) -> Result<Option<Blob>> {
        match self {
            AnyBackend::Local(b) => b.read_blob(digest).await,
            AnyBackend::Registry(b) => b.read_blob(digest).await,
        }
    }

    async fn write_blob(&self, desc: &Descriptor, body: Blob) -> Result<()> {
        match self {
            AnyBackend::Local(b) => b.write_blob(desc, body).await,
            AnyBackend::Registry(b) => b.write_blob(desc, body).await,
        }
    }

    async fn read_index(&self, reference: &IndexRef) -> Result<Option<RawIndex>> {
        match self {
            AnyBackend::Local(b) => b.read_index(reference).await,
            AnyBackend::Registry(b) => b.read_index(reference).await,
        }
    }

    async fn write_index(&self, tag: &str, index: &RawIndex) -> Result<()> {
        match self {
            AnyBackend::Local(b) => b.write_index(tag, index).await,
            AnyBackend::Registry(b) => b.write_index(tag, index).await,
        }
    }
}
