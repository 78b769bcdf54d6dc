//! Importing a cache from any backend: the manifest and the config only; layers stay remote
//! until a build needs them.
//!
//! Import may fail open: callers turn an error into a warning and build without this cache.

use std::collections::HashMap;

use crate::backend::{self, Backend, IndexRef, RawIndex};
use crate::config::CacheConfig;
use crate::descriptor::Descriptor;
use crate::digest::Digest;
use crate::graph::{CacheGraph, ParseError, SourceId};
use crate::limits::{Exceeded, Limits};
use crate::manifest::{self, CacheManifest, ReadError};

/// A cache read from a backend.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The top-level object as stored.
    pub manifest: RawIndex,
    /// Its parsed form.
    pub cache_manifest: CacheManifest,
    /// The config as stored.
    pub config: CacheConfig,
    /// The graph, every result tagged with the source id given to [`import`].
    pub graph: CacheGraph,
}

impl Imported {
    /// Layer descriptors by digest, as the manifest lists them.
    pub fn layer_descriptors(&self) -> HashMap<Digest, Descriptor> {
        self.cache_manifest
            .layers
            .iter()
            .map(|d| (d.digest.clone(), d.clone()))
            .collect()
    }
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend failed.
    #[error("{what} from {source_name}: {source}")]
    Backend {
        /// What was being read.
        what: String,
        /// The backend.
        source_name: String,
        /// The cause.
        source: backend::Error,
    },
    /// The top-level object is not a cache manifest.
    #[error(transparent)]
    Manifest(#[from] ReadError),
    /// The config blob is listed but absent.
    #[error("cache config {digest} listed by manifest {manifest} is missing from {source_name}")]
    MissingConfig {
        /// The config digest.
        digest: Digest,
        /// The manifest digest.
        manifest: Digest,
        /// The backend.
        source_name: String,
    },
    /// The manifest or the config is over one of the limits.
    #[error(transparent)]
    Limit(#[from] Exceeded),
    /// The config is invalid.
    #[error("cache config {digest}: {source}")]
    Config {
        /// The config digest.
        digest: Digest,
        /// What is wrong.
        source: ParseError,
    },
}

/// Reads the cache `reference` names from `backend`; `Ok(None)` when there is none. `limits`
/// bound the work a hostile cache may cause: the manifest and the config are refused above
/// `config-size` bytes (BuildKit's limit is 1 MiB, spec §9.1; real `mode=max` configs exceed
/// that, so ours is far larger), a manifest listing more than `config-layers` layers and a
/// config over `config-records` or `config-layers` too ([`Error::Limit`]).
pub async fn import<B: Backend>(
    backend: &B,
    reference: &IndexRef,
    source: SourceId,
    limits: &Limits,
) -> Result<Option<Imported>, Error> {
    let source_name = backend.info().to_string();
    let backend_err = |what: String| {
        let source_name = source_name.clone();
        move |source: backend::Error| Error::Backend {
            what,
            source_name,
            source,
        }
    };
    let Some(raw) = backend
        .read_index(reference)
        .await
        .map_err(backend_err(format!("reading cache manifest ({reference})")))?
    else {
        return Ok(None);
    };
    let manifest_name = || format!("cache manifest {} from {source_name}", raw.digest);
    limits.check("config-size", &manifest_name, raw.bytes.len() as u64)?;
    let cache_manifest = manifest::read(&raw)?;
    limits.check(
        "config-layers",
        &manifest_name,
        cache_manifest.layers.len() as u64,
    )?;
    let config_digest = cache_manifest.config.digest.clone();
    let config_name = || format!("cache config {config_digest} from {source_name}");
    limits.check("config-size", &config_name, cache_manifest.config.size)?;
    let blob = backend
        .read_blob(&config_digest)
        .await
        .map_err(backend_err(format!("reading cache config {config_digest}")))?
        .ok_or_else(|| Error::MissingConfig {
            digest: config_digest.clone(),
            manifest: raw.digest.clone(),
            source_name: source_name.clone(),
        })?;
    let bytes = blob
        .verified(config_digest.clone())
        .into_bytes(limits.config_size)
        .await
        .map_err(backend_err(format!("reading cache config {config_digest}")))?;
    let config = CacheConfig::from_json(&bytes).map_err(|source| Error::Config {
        digest: config_digest.clone(),
        source,
    })?;
    limits.check_config(&config_name, &config)?;
    let layers: HashMap<Digest, Descriptor> = cache_manifest
        .layers
        .iter()
        .map(|d| (d.digest.clone(), d.clone()))
        .collect();
    let graph = CacheGraph::from_config(&config, &|d| layers.get(d).cloned(), source).map_err(
        |source| Error::Config {
            digest: config_digest.clone(),
            source,
        },
    )?;
    Ok(Some(Imported {
        manifest: raw,
        cache_manifest,
        config,
        graph,
    }))
}
