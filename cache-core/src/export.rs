//! Exporting a cache graph to any backend: layers, then the config, then the manifest under a tag.
//!
//! Export fails closed: any error is returned, and the tag is written last, so a failed export
//! leaves the previous cache of the tag in place.

use std::collections::HashSet;

use futures_util::StreamExt;

use crate::backend::{self, Backend, IndexRef, RawIndex};
use crate::descriptor::{Descriptor, media_type};
use crate::digest::{self, Digest};
use crate::graph::CacheGraph;
use crate::manifest::{self, ManifestForm};
use crate::transfer::{self, BlobCopy, InMemory, Moved};

/// BuildKit refuses to import a config or manifest larger than this (spec §9.1).
pub const BUILDKIT_IMPORT_LIMIT: u64 = 1024 * 1024;

pub use crate::transfer::{BlobSource, FromBackend};

/// Knobs of an export.
#[derive(Debug, Clone)]
pub struct Options {
    /// The tag to point at the new manifest.
    pub tag: String,
    /// The top-level form.
    pub form: ManifestForm,
    /// How many blobs are written at once.
    pub max_parallel: usize,
    /// Blobs known to be present in the destination already (for example listed by a manifest
    /// imported from it in this build); they are neither checked nor sent.
    pub known_present: HashSet<Digest>,
    /// Blobs listed after the layers of the manifest that no record names (cache mount contents,
    /// annotated with their id); written like layers. BuildKit's importer ignores them.
    pub extra_blobs: Vec<Descriptor>,
    /// Annotations of the cache config's descriptor in the manifest (BuildKit ignores them;
    /// buildcache keeps what its records are made of there, to explain misses).
    pub config_annotations: std::collections::BTreeMap<String, String>,
}

/// Progress of an export, in BuildKit's vocabulary (spec §8).
#[derive(Debug, Clone)]
pub enum Event {
    /// A layer blob was handled.
    Layer {
        /// Its digest.
        digest: Digest,
        /// Its size.
        size: u64,
        /// Whether it was already present (nothing sent).
        skipped: bool,
    },
    /// The config blob was written.
    Config {
        /// Its digest.
        digest: Digest,
    },
    /// The manifest was written and tagged.
    Manifest {
        /// Its digest.
        digest: Digest,
        /// Its form.
        form: ManifestForm,
    },
    /// The graph has no layers: nothing is exported.
    EmptyResult,
    /// The tag already names exactly this manifest: nothing is written.
    Unchanged {
        /// The manifest digest.
        digest: Digest,
    },
    /// A non-fatal problem, such as a config BuildKit could not import.
    Warning(String),
}

/// What an export did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The manifest written, or `None` for an empty result.
    pub manifest: Option<RawIndex>,
    /// The config digest.
    pub config_digest: Option<Digest>,
    /// Size of the config blob.
    pub config_size: u64,
    /// Blobs sent (layers and config).
    pub blobs_written: u64,
    /// Bytes sent.
    pub bytes_written: u64,
    /// Blobs already present.
    pub blobs_skipped: u64,
    /// Bytes of blobs already present.
    pub bytes_skipped: u64,
    /// Number of layer blobs the cache lists.
    pub layers: u64,
    /// Records in the config.
    pub records: u64,
    /// The tag named this manifest already; nothing was written.
    pub unchanged: bool,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A layer the cache needs is in no source.
    #[error("layer blob {digest} is not available from the build or any imported cache")]
    MissingBlob {
        /// The blob.
        digest: Digest,
    },
    /// The backend failed.
    #[error("{what} in {destination}: {source}")]
    Backend {
        /// What was being done, e.g. "writing layer sha256:…".
        what: String,
        /// The destination.
        destination: String,
        /// The cause.
        source: backend::Error,
    },
}

/// A cache ready to be written: the config's bytes and descriptor, the blobs the manifest lists,
/// and the manifest.
#[derive(Debug, Clone)]
pub struct Assembled {
    /// The config as BuildKit writes it.
    pub config_bytes: Vec<u8>,
    /// The config's descriptor, with the annotations asked for.
    pub config_desc: Descriptor,
    /// The layers in config order, then the extra blobs.
    pub layers: Vec<Descriptor>,
    /// The top-level manifest.
    pub manifest: RawIndex,
}

/// The one config -> manifest builder: serializes `config` (from [`CacheGraph::to_config`],
/// whose `layers` it lists), describes it with `config_annotations`, lists `extra_blobs` after
/// the layers and writes the manifest in `form`. Export and a local cache's prune both use it.
pub fn assemble(
    config: &crate::config::CacheConfig,
    mut layers: Vec<Descriptor>,
    extra_blobs: impl IntoIterator<Item = Descriptor>,
    config_annotations: &std::collections::BTreeMap<String, String>,
    form: ManifestForm,
) -> Assembled {
    let config_bytes = config.to_json();
    let mut config_desc = Descriptor::new(
        media_type::CACHE_CONFIG,
        digest::sha256(&config_bytes),
        config_bytes.len() as u64,
    );
    config_desc.annotations.extend(config_annotations.clone());
    layers.extend(extra_blobs);
    let manifest = manifest::write(form, &config_desc, &layers);
    Assembled {
        config_bytes,
        config_desc,
        layers,
        manifest,
    }
}

/// Exports `graph` (already reduced with [`CacheGraph::select`]) to `backend` under `options.tag`.
///
/// Order: layers (in parallel, skipping present ones), config, then manifest and tag; so the tag
/// only ever names a complete cache. If the tag already names the identical manifest nothing is
/// written at all.
pub async fn export<B: Backend, S: BlobSource>(
    backend: &B,
    source: &S,
    graph: &CacheGraph,
    options: &Options,
    on_event: &(dyn Fn(Event) + Send + Sync),
) -> Result<Report, Error> {
    let destination = backend.info().to_string();
    let (config, layers) = graph.to_config();
    let mut report = Report {
        layers: layers.len() as u64,
        records: config.records.len() as u64,
        ..Report::default()
    };
    if layers.is_empty() {
        on_event(Event::EmptyResult);
        return Ok(report);
    }
    let Assembled {
        config_bytes,
        config_desc,
        layers,
        manifest: raw,
    } = assemble(
        &config,
        layers,
        options.extra_blobs.iter().cloned(),
        &options.config_annotations,
        options.form,
    );
    report.config_digest = Some(config_desc.digest.clone());
    report.config_size = config_desc.size;
    if config_desc.size > BUILDKIT_IMPORT_LIMIT {
        on_event(Event::Warning(format!(
            "cache config {} is {} bytes: BuildKit refuses to import configs over {} bytes (use mode=min or fewer stages for BuildKit readers)",
            config_desc.digest, config_desc.size, BUILDKIT_IMPORT_LIMIT
        )));
    }
    if let Ok(Some(existing)) = backend
        .read_index(&IndexRef::Tag(options.tag.clone()))
        .await
        && existing.digest == raw.digest
    {
        report.unchanged = true;
        report.blobs_skipped = layers.len() as u64 + 1;
        report.bytes_skipped = layers.iter().map(|l| l.size).sum::<u64>() + config_desc.size;
        report.manifest = Some(existing);
        on_event(Event::Unchanged { digest: raw.digest });
        return Ok(report);
    }

    write_layers(backend, source, &layers, options, on_event, &mut report).await?;
    let config_source = InMemory(bytes::Bytes::from(config_bytes));
    let config_moved =
        transfer::copy_blob(backend, &config_source, &config_desc, &BlobCopy::default())
            .await
            .map_err(|err| blob_error(err, "config", &destination))?;
    report.count(config_desc.size, config_moved == Moved::Present);
    on_event(Event::Config {
        digest: config_desc.digest.clone(),
    });
    backend
        .write_index(&options.tag, &raw)
        .await
        .map_err(|source| Error::Backend {
            what: format!("writing cache manifest {}", raw.digest),
            destination,
            source,
        })?;
    on_event(Event::Manifest {
        digest: raw.digest.clone(),
        form: options.form,
    });
    report.manifest = Some(raw);
    Ok(report)
}

/// Copies each distinct blob of `layers` that `options.known_present` does not name to
/// `backend`, `options.max_parallel` at a time, and counts them in `report`.
async fn write_layers<B: Backend, S: BlobSource>(
    backend: &B,
    source: &S,
    layers: &[Descriptor],
    options: &Options,
    on_event: &(dyn Fn(Event) + Send + Sync),
    report: &mut Report,
) -> Result<(), Error> {
    let destination = backend.info().to_string();
    let destination = destination.as_str();
    let mut seen = HashSet::new();
    let unique: Vec<&Descriptor> = layers
        .iter()
        .filter(|l| seen.insert(l.digest.clone()))
        .collect();
    let results: Vec<Result<(u64, bool), Error>> = futures_util::stream::iter(unique)
        .map(|desc| async move {
            let skipped = options.known_present.contains(&desc.digest)
                || transfer::copy_blob(backend, source, desc, &BlobCopy::default())
                    .await
                    .map_err(|err| blob_error(err, "layer", destination))?
                    == Moved::Present;
            on_event(Event::Layer {
                digest: desc.digest.clone(),
                size: desc.size,
                skipped,
            });
            Ok((desc.size, skipped))
        })
        .buffer_unordered(options.max_parallel.max(1))
        .collect()
        .await;
    for result in results {
        let (size, skipped) = result?;
        report.count(size, skipped);
    }
    Ok(())
}

impl Report {
    /// Counts a blob of `size` bytes as skipped (already present) or written.
    fn count(&mut self, size: u64, skipped: bool) {
        if skipped {
            self.blobs_skipped += 1;
            self.bytes_skipped += size;
        } else {
            self.blobs_written += 1;
            self.bytes_written += size;
        }
    }
}

/// A failed copy of a `what` ("layer", "config") to `destination`, with the messages export
/// has always given: "checking layer sha256:…" and so on.
fn blob_error(err: transfer::Error, what: &str, destination: &str) -> Error {
    match err {
        transfer::Error::Missing { digest } => Error::MissingBlob { digest },
        transfer::Error::Backend {
            step,
            digest,
            source,
        } => {
            let verb = match step {
                transfer::Step::Checking => "checking",
                transfer::Step::Reading => "reading",
                transfer::Step::Mounting(_) | transfer::Step::Writing => "writing",
            };
            Error::Backend {
                what: format!("{verb} {what} {digest}"),
                destination: destination.to_owned(),
                source,
            }
        }
    }
}
