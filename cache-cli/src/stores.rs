//! Opening cache destinations and sources: the one place that maps an option to a backend.

use std::path::PathBuf;
use std::time::Duration;

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

    /// The layout of a local backend (its writer lock and collection are the caller's).
    pub fn local(&self) -> Option<&LayoutDir> {
        match self {
            AnyBackend::Local(dir) => Some(dir),
            AnyBackend::Registry(_) => None,
        }
    }

    /// The directory of a local backend.
    pub fn local_dir(&self) -> Option<PathBuf> {
        self.local().map(|dir| dir.root().to_path_buf())
    }
}

/// Opens `reference`, sharing the client of a registry opened before on the same host (with
/// the same `insecure`): one connection pool, token cache and set of request counts per
/// registry for the whole build.
pub fn open_registry(reference: &str, insecure: bool) -> Result<Registry> {
    static OPEN: std::sync::Mutex<Vec<(bool, Registry)>> = std::sync::Mutex::new(Vec::new());
    let parsed = cache_registry::ImageRef::parse(reference)?;
    let mut open = OPEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, known)) = open.iter().find(|(known_insecure, known)| {
        *known_insecure == insecure && known.reference().registry() == parsed.registry()
    }) {
        return known.for_reference(reference);
    }
    let registry = Registry::new(reference, registry_options(insecure)?)?;
    open.push((insecure, registry.clone()));
    Ok(registry)
}

/// Registry client options: `insecure`, plus the time limits and retries set in the
/// environment (`BUILDCACHE_REGISTRY_CONNECT_TIMEOUT`, `BUILDCACHE_REGISTRY_STALL_TIMEOUT`,
/// `BUILDCACHE_REGISTRY_RETRIES`).
pub fn registry_options(insecure: bool) -> Result<cache_registry::Options> {
    let mut options = cache_registry::Options::new();
    options.insecure = insecure;
    options.connect_timeout = env_seconds(
        "BUILDCACHE_REGISTRY_CONNECT_TIMEOUT",
        options.connect_timeout,
    )?;
    options.timeout = env_seconds("BUILDCACHE_REGISTRY_STALL_TIMEOUT", options.timeout)?;
    if let Some(value) = env_value("BUILDCACHE_REGISTRY_RETRIES") {
        options.max_retries = value.trim().parse().map_err(|_| {
            invalid_env(
                "BUILDCACHE_REGISTRY_RETRIES",
                &value,
                "a whole number such as 5",
            )
        })?;
    }
    Ok(options)
}

/// How long importing one cache (its manifest and config) may take before the build goes on
/// without it: `BUILDCACHE_IMPORT_TIMEOUT` seconds, default 20.
pub fn import_budget() -> Result<Duration> {
    env_seconds("BUILDCACHE_IMPORT_TIMEOUT", Duration::from_secs(20))
}

/// How long one cache export may take before it fails: `BUILDCACHE_EXPORT_TIMEOUT` seconds,
/// default 600.
pub fn export_budget() -> Result<Duration> {
    env_seconds("BUILDCACHE_EXPORT_TIMEOUT", Duration::from_secs(600))
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// A duration in (possibly fractional) seconds from the environment variable `name`.
fn env_seconds(name: &str, default: Duration) -> Result<Duration> {
    let Some(value) = env_value(name) else {
        return Ok(default);
    };
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            invalid_env(
                name,
                &value,
                "a positive number of seconds such as 30 or 2.5",
            )
        })
}

fn invalid_env(name: &str, value: &str, expected: &str) -> cache_core::Error {
    cache_core::Error::new(
        cache_core::ErrorKind::InvalidConfig,
        format!("invalid {name}={value:?}: expected {expected}"),
    )
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

    fn mount_source(&self) -> Option<cache_core::MountSource> {
        match self {
            AnyBackend::Local(b) => b.mount_source(),
            AnyBackend::Registry(b) => b.mount_source(),
        }
    }

    async fn mount_blob_from(
        &self,
        desc: &Descriptor,
        from: &cache_core::MountSource,
    ) -> Result<bool> {
        match self {
            AnyBackend::Local(b) => b.mount_blob_from(desc, from).await,
            AnyBackend::Registry(b) => b.mount_blob_from(desc, from).await,
        }
    }
}
