//! The build engine: resolves each step's cache key against the cache graph, executes only what
//! misses, and produces layers, records and the final image.
//!
//! Steps are resolved lazily. A step whose record is found with a result is a hit: its layer
//! chain is known without unpacking anything. A step whose record is found without a result
//! (for example a builder stage in a `mode=min` cache) stays pending: it runs only if a later
//! step misses and needs that filesystem. A step with no record runs at once.

mod execute;
mod explain;
mod keys;
mod lookup;
mod materialize;
mod progress;
mod run_mounts;
mod stores;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::descriptor::annotation;
use cache_core::graph::{CacheGraph, CacheResult, Link, RecordIdx, SourceId};
use cache_core::{Descriptor, Digest};
use futures_util::future::BoxFuture;
use serde::Serialize;
use time::OffsetDateTime;

use crate::context::{self, HashCache};
use crate::dockerfile::{self, Base, PlannedStage, Step};
use crate::image;
use crate::layer::{self, Compression};

pub use explain::{ANNOTATION as FACTS_ANNOTATION, Facts, FactsMap, annotation_value};
pub use keys::{StepKey, plan_cache_maps};
pub use materialize::unpack_chain;
pub use progress::{Event, Progress, Silent, counted, track_transfer};
pub use run_mounts::{RunOptions, SecretSource};
pub use stores::{BlobStore, Blobs, ImportedSource, blocking_reader, file_blob};

/// The source id of this machine's own cache (`--root`) and of results made by this build.
pub const LOCAL_SOURCE: SourceId = 0;

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile.
    pub dockerfile: PathBuf,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// `--build-context` values.
    pub named_contexts: BTreeMap<String, NamedContext>,
    /// `--no-cache`: execute every step, ignoring all caches.
    pub no_cache: bool,
    /// `--no-cache-filter`: stages (by name) whose steps run, ignoring all caches.
    pub no_cache_filter: Vec<String>,
    /// `--label`: labels set on the image config.
    pub labels: BTreeMap<String, String>,
    /// `--annotation`: annotations of the image manifest.
    pub annotations: BTreeMap<String, String>,
    /// `--add-host`: `(host, ip)` lines added to RUN's `/etc/hosts`.
    pub add_hosts: Vec<(String, String)>,
    /// Compression of new layers.
    pub compression: Compression,
    /// Scratch space for root filesystems: the engine mounts nothing there any more when it
    /// returns, and leaves the directory for the caller to remove.
    pub work_dir: PathBuf,
    /// Where context file hashes are remembered between builds.
    pub hash_cache: Option<PathBuf>,
    /// The creation time of new results.
    pub now: OffsetDateTime,
    /// RUN's cache mount store, secrets, SSH agents, default network and entitlements.
    pub run: RunOptions,
    /// `--limit`: bounds on the work the Dockerfile and cache layers may cause.
    pub limits: cache_core::limits::Limits,
    /// Unpack the target's filesystem before the build ends (for outputs that carry its
    /// layers): a cache layer refused there is a miss like any other, never a broken output.
    pub unpack_target: bool,
    /// `--output type=local`: the directory the target's filesystem is unpacked into, as part
    /// of the build (so that a refused cache layer is a miss), without unpacking it twice.
    pub output_dir: Option<PathBuf>,
}

/// A `--build-context` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamedContext {
    /// A local directory.
    Dir(PathBuf),
    /// An image in an OCI layout: `oci-layout://DIR[:TAG|@DIGEST]`.
    OciLayout {
        /// The layout directory.
        dir: PathBuf,
        /// Tag or digest, default `latest`.
        reference: String,
    },
}

impl NamedContext {
    /// Parses `oci-layout://DIR[:TAG|@sha256:…]` or a directory path.
    pub fn parse(value: &str) -> Result<NamedContext, NamedContextError> {
        if let Some(rest) = value.strip_prefix("oci-layout://") {
            let (dir, reference) = if let Some((dir, digest)) = rest.split_once('@') {
                (dir, digest.to_owned())
            } else {
                match rest.rsplit_once(':') {
                    Some((dir, tag)) if !tag.contains('/') => {
                        cache_core::spec::check_tag(tag).map_err(|message| {
                            NamedContextError::BadTag {
                                value: value.to_owned(),
                                message,
                            }
                        })?;
                        (dir, tag.to_owned())
                    }
                    _ => (rest, "latest".to_owned()),
                }
            };
            if dir.is_empty() {
                return Err(NamedContextError::MissingDir {
                    value: value.to_owned(),
                });
            }
            return Ok(NamedContext::OciLayout {
                dir: PathBuf::from(dir),
                reference,
            });
        }
        if value.contains("://") {
            return Err(NamedContextError::Unsupported {
                value: value.to_owned(),
            });
        }
        Ok(NamedContext::Dir(PathBuf::from(value)))
    }
}

/// Why a `--build-context` value is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NamedContextError {
    /// The tag of `oci-layout://DIR:TAG` is not a valid tag.
    #[error("{value:?}: the tag of oci-layout://DIR:TAG: {message}")]
    BadTag {
        /// The value given.
        value: String,
        /// What is wrong with the tag.
        message: String,
    },
    /// `oci-layout://` without a directory.
    #[error("{value:?}: the OCI layout directory is missing (oci-layout://DIR[:TAG])")]
    MissingDir {
        /// The value given.
        value: String,
    },
    /// A URL scheme other than `oci-layout://`.
    #[error("{value:?}: only directories and oci-layout://DIR[:TAG] build contexts are supported")]
    Unsupported {
        /// The value given.
        value: String,
    },
}

/// An image resolved for `FROM` or `COPY --from`.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The reference shown in progress (`127.0.0.1:5000/busybox:latest@sha256:…`).
    pub display: String,
    /// The manifest digest.
    pub manifest_digest: Digest,
    /// The parsed config.
    pub config: image::ParsedConfig,
    /// Layers, bottom first, each with `containerd.io/uncompressed`.
    pub layers: Vec<Descriptor>,
    /// Where the layer blobs are.
    pub store: Arc<dyn BlobStore>,
}

/// Resolves image references (registry pulls); provided by the caller.
pub trait ImageResolver: Send + Sync {
    /// Resolves `reference` (normalized, e.g. `docker.io/library/busybox:latest`).
    fn resolve<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<ResolvedImage, ResolveError>>;
}

/// Why an [`ImageResolver`] could not resolve an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The registry could not be reached, refused, or does not hold the image.
    #[error("{0}")]
    Registry(#[source] cache_core::Error),
    /// The image's config is not a valid image config.
    #[error("{reference}: {source}")]
    Config {
        /// The image reference.
        reference: String,
        /// What is wrong with the config.
        #[source]
        source: image::Error,
    },
    /// The config's diff IDs do not pair up with the manifest's layers.
    #[error("{reference}: the config lists {n_diff_ids} diff IDs for {n_layers} layers")]
    LayerCount {
        /// The image reference.
        reference: String,
        /// Diff IDs in the config.
        n_diff_ids: usize,
        /// Layers in the manifest.
        n_layers: usize,
    },
}

/// Downloads `ADD <url>` sources; provided by the caller.
pub trait UrlFetcher: Send + Sync {
    /// Downloads `url` into the new file `dest`. Errors say what failed (status, connection).
    fn fetch<'a>(&'a self, url: &'a str, dest: &'a Path) -> BoxFuture<'a, Result<(), FetchError>>;
}

/// Why a [`UrlFetcher`] could not download a URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The request could not be sent or got no answer (connection, TLS, redirects).
    #[error("request failed: {0}")]
    Request(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The server answered with a status other than success.
    #[error("the server answered {code} {reason}")]
    Status {
        /// The HTTP status code.
        code: u16,
        /// Its reason phrase (`Not Found`).
        reason: String,
    },
    /// The body broke off while being read.
    #[error("reading the body: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The destination file could not be created.
    #[error("creating {}: {source}", path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The destination file could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

/// What the engine needs from its caller besides the request.
pub struct Services<'a> {
    /// The root store and imported caches.
    pub blobs: Blobs,
    /// Where progress goes.
    pub progress: &'a dyn Progress,
    /// Registry image resolution, if available.
    pub images: Option<&'a dyn ImageResolver>,
    /// `ADD <url>` downloads, if available.
    pub urls: Option<&'a dyn UrlFetcher>,
    /// Opens an OCI layout directory as a read-only blob store.
    pub open_layout: &'a (dyn Fn(&Path) -> Arc<dyn BlobStore> + Send + Sync),
    /// Names of the cache sources by id: 0 is `local`, then the `--cache-from` values.
    pub source_names: Vec<String>,
    /// The [`FACTS_ANNOTATION`] values of the sources (local and imported), read on the first
    /// miss to explain it.
    pub facts: Vec<String>,
    /// Told of every layer as soon as it is in the root store (a layer fetched to be unpacked,
    /// a step's new layer), and of what it is for, so that an export can send it while the
    /// build goes on.
    pub on_layer: Option<&'a OnLayer<'a>>,
}

/// The hook of [`Services::on_layer`].
pub type OnLayer<'a> = dyn Fn(&Descriptor, LayerUse) + Send + Sync + 'a;

/// What an announced layer is for, as far as the engine knows when it announces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerUse {
    /// A layer of the target's own chain: a layer of the base image of the target or of a
    /// stage the target is built `FROM`, or a layer made by a step of one of those stages.
    /// A `mode=min` export holds exactly these (those of the final image).
    Target,
    /// Any other layer: a stage only copied from, an image only copied from.
    Other,
}

/// One step of the build as reported in the metadata file.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// `[final 2/3] COPY app.conf /etc/app.conf`.
    pub name: String,
    /// Whether it came from a cache.
    pub cached: bool,
    /// `None`, `"local"`, or the `--cache-from` value as typed.
    pub cache_source: Option<String>,
    /// Time spent on it.
    pub duration_ms: u64,
    /// When it was resolved (for the time to the first cached step).
    #[serde(skip)]
    pub finished_at: Instant,
    /// Why it was not found in any cache (absent on hits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub miss: Option<String>,
    /// The record digest of its key (`None` for a step without an op, as `WORKDIR /`): a cache
    /// holding it matched this step.
    #[serde(skip)]
    pub key: Option<Digest>,
}

/// The result of a build.
pub struct BuildOutcome {
    /// Every record known: the caches given plus this build's records and results.
    pub graph: CacheGraph,
    /// The records of the final result (export starts here).
    pub targets: Vec<RecordIdx>,
    /// The final image.
    pub image: image::Image,
    /// The final layer chain, bottom first.
    pub chain: Vec<Descriptor>,
    /// Steps in the order they were resolved.
    pub steps: Vec<StepReport>,
    /// Stores including base images' stores (export and output read from them).
    pub blobs: Blobs,
    /// Build args nobody used.
    pub unused_build_args: Vec<String>,
    /// The ids (`<namespace>/<id>`) of the cache mounts the build's RUN steps use (run or cached).
    pub cache_mounts: Vec<String>,
    /// Layer blobs fetched into the root during the build.
    pub blobs_fetched: u64,
    /// What the records' keys are made of: the sources' facts and this build's, for exports.
    pub facts: FactsMap,
}

/// Why a build failed. Messages name the Dockerfile line or the input at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Dockerfile is invalid.
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Dockerfile {
        /// The Dockerfile path.
        path: String,
        /// The line at fault, if known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A step failed.
    #[error("{name}: {message} (Dockerfile line {line})")]
    Step {
        /// The step's display name.
        name: String,
        /// Its line.
        line: usize,
        /// What went wrong.
        message: String,
        /// The exit code, for a failed RUN.
        exit_code: Option<i32>,
    },
    /// A layer blob of a cache is missing or corrupt; the build retries without it.
    #[error("layer blob {digest} is unusable: {message}")]
    BadBlob {
        /// The blob.
        digest: Digest,
        /// What is wrong with it.
        message: String,
    },
    /// A file or directory of the build could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, on what.
        context: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Writing, applying or copying a layer (or a snapshot of a filesystem) failed.
    #[error("{context}: {source}")]
    Layer {
        /// What was being done, on what.
        context: String,
        /// The failure.
        #[source]
        source: layer::Error,
    },
    /// Selecting, hashing or copying files of a context, stage or image failed.
    #[error("{context}: {source}")]
    Context {
        /// The step or build context at fault.
        context: String,
        /// The failure.
        #[source]
        source: context::Error,
    },
    /// Reading an image from an OCI layout or assembling the final image failed.
    #[error("{context}: {source}")]
    Image {
        /// What was being done, on what.
        context: String,
        /// The failure.
        #[source]
        source: image::Error,
    },
    /// A blob store (the root, a cache, an image's registry) failed.
    #[error("{context}: {source}")]
    Store {
        /// What was being done, on which blob.
        context: String,
        /// The failure.
        #[source]
        source: cache_core::Error,
    },
    /// The Dockerfile could not be read.
    #[error("reading the Dockerfile {}: {source} (give the right path with -f)", path.display())]
    ReadDockerfile {
        /// The Dockerfile path.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The Dockerfile is larger than the `dockerfile-size` limit.
    #[error(
        "the Dockerfile {} is larger than the dockerfile-size limit of {max_size} bytes; {}",
        path.display(),
        cache_core::limits::Limits::hint("dockerfile-size")
    )]
    DockerfileTooLarge {
        /// The Dockerfile path.
        path: PathBuf,
        /// The limit in bytes.
        max_size: u64,
    },
    /// The build context is not a directory.
    #[error("the build context {} is not a directory", path.display())]
    ContextNotDir {
        /// The path given.
        path: PathBuf,
    },
    /// The context's `.dockerignore` is invalid.
    #[error("{}: {source}", path.display())]
    Dockerignore {
        /// The `.dockerignore` file.
        path: PathBuf,
        /// What is wrong in it.
        #[source]
        source: dockerfile::Error,
    },
    /// `--no-cache-filter` names a stage the Dockerfile does not have.
    #[error(
        "--no-cache-filter {name}: the Dockerfile has no stage named {name} (its named stages: {})",
        names_or_none(stages)
    )]
    UnknownStage {
        /// The name given.
        name: String,
        /// The Dockerfile's named stages.
        stages: Vec<String>,
    },
    /// A stage's base is neither an image nor a build context.
    #[error("stage {stage}: base {base} could not be resolved")]
    UnresolvedBase {
        /// The stage.
        stage: String,
        /// Its base as written.
        base: String,
    },
    /// A step or mount names a build context that was not given.
    #[error("{at}: unknown build context {name}")]
    UnknownContext {
        /// The step or mount naming it.
        at: String,
        /// The context's name.
        name: String,
    },
    /// A `--exclude` pattern is invalid.
    #[error("{at}: {message}")]
    Exclude {
        /// The step.
        at: String,
        /// What is wrong with the pattern.
        message: String,
    },
    /// A build context used as an image is a directory.
    #[error("build context {name} is not an image")]
    NotAnImage {
        /// The context's name.
        name: String,
    },
    /// An image is needed but registries cannot be reached from here.
    #[error(
        "image {reference}: pulling images from a registry is not available here; give the image with --build-context NAME=oci-layout://DIR"
    )]
    NoRegistry {
        /// The image reference.
        reference: String,
    },
    /// A layer of an image the build uses (not of a cache) is missing or corrupt.
    #[error("layer {digest} of {image} is unusable: {message}")]
    ImageLayer {
        /// The layer blob.
        digest: Digest,
        /// The image it belongs to.
        image: String,
        /// What is wrong with it.
        message: String,
    },
    /// A layer the build put in the root store is gone.
    #[error("layer {digest} is missing from the root store")]
    MissingLayer {
        /// The layer blob.
        digest: Digest,
    },
    /// The contents of a cache mount found in an imported cache could not be fetched.
    #[error("{step}: fetching the contents of cache mount {id} ({digest}): {message}")]
    CacheMountSeed {
        /// The step using the mount.
        step: String,
        /// The mount's id.
        id: String,
        /// The blob of its contents.
        digest: Digest,
        /// What failed.
        message: String,
    },
    /// A `FROM` or `COPY --from` image could not be resolved.
    #[error("resolving image {reference}: {source}")]
    Resolve {
        /// The image reference.
        reference: String,
        /// The failure (boxed: it is rare and large).
        #[source]
        source: Box<ResolveError>,
    },
    /// A blocking worker thread panicked or was cancelled.
    #[error("a worker thread failed: {0}")]
    Worker(#[source] tokio::task::JoinError),
    /// A broken invariant of the engine (a layer writer's digest, a key's serialization, a
    /// selected file without its content hash), with context.
    #[error("{0}")]
    Other(String),
}

impl Error {
    fn other(message: impl Into<String>) -> Self {
        Error::Other(message.into())
    }

    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    fn layer(context: impl Into<String>) -> impl FnOnce(layer::Error) -> Self {
        let context = context.into();
        move |source| Error::Layer { context, source }
    }

    fn context(context: impl Into<String>) -> impl FnOnce(context::Error) -> Self {
        let context = context.into();
        move |source| Error::Context { context, source }
    }

    fn image(context: impl Into<String>) -> impl FnOnce(image::Error) -> Self {
        let context = context.into();
        move |source| Error::Image { context, source }
    }

    fn store(context: impl Into<String>) -> impl FnOnce(cache_core::Error) -> Self {
        let context = context.into();
        move |source| Error::Store { context, source }
    }
}

/// Where a step reads from besides its own stage.
#[derive(Clone, Debug)]
enum Extra {
    /// Nothing (RUN, WORKDIR, COPY of heredocs only).
    None,
    /// COPY from the context or a directory: the content key record and the selection.
    Content {
        record: RecordIdx,
        src_root: PathBuf,
        selection: context::Selection,
    },
    /// COPY --from=stage.
    Stage(usize),
    /// COPY --from=image (index into the engine's images).
    Image(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Found with a result.
    Hit(SourceId),
    /// Found without a result: runs only if needed.
    Pending,
    /// Executed by this build.
    Ran,
}

/// A step of a stage: its key, records and state.
#[derive(Debug)]
struct Slot {
    name: String,
    digest: Digest,
    extra: Extra,
    records: Vec<RecordIdx>,
    /// COPY --link: the records of the copy onto scratch the step's merge puts on top; when
    /// the step runs, its layer alone is their result (as BuildKit's copy result).
    linked_copies: Vec<RecordIdx>,
    state: SlotState,
    duration: Duration,
    reported: bool,
    /// Why it missed, when it did.
    miss: Option<String>,
}

/// A filesystem: known layers, then steps still to run on top of them.
#[derive(Debug, Default)]
struct Fs {
    /// Records naming the current state.
    records: Vec<RecordIdx>,
    /// Layers of the last state whose filesystem is known.
    chain: Vec<Descriptor>,
    /// (stage, step) slots to run on top of `chain`, in order.
    pending: Vec<(usize, usize)>,
    /// A directory holding `chain` with nothing pending, if materialized.
    rootfs: Option<PathBuf>,
}

/// The state of one stage.
#[derive(Debug)]
struct StageState {
    fs: Fs,
    base_history: Vec<image::HistoryEntry>,
    /// The Dockerfile history of the stages this one is built `FROM` (parents first).
    inherited_history: Vec<dockerfile::HistoryEntry>,
    base_created: Option<OffsetDateTime>,
}

struct Engine<'a> {
    request: &'a BuildRequest,
    services: &'a Services<'a>,
    blobs: Blobs,
    graph: CacheGraph,
    hashes: HashCache,
    ignore: dockerfile::IgnoreMatcher,
    plan: dockerfile::Plan,
    stages: Vec<StageState>,
    slots: BTreeMap<(usize, usize), Slot>,
    images: Vec<Fs>,
    image_index: BTreeMap<String, usize>,
    reports: Vec<StepReport>,
    work: WorkDirs,
    blobs_fetched: u64,
    last_hit_source: Option<SourceId>,
    blob_health: BlobHealth,
    /// The step being resolved or run (vertex, name): layers unpacked for it report on it.
    active: Option<(String, String)>,
    facts: KeyFacts,
    /// The layers known to be in the target's chain (see [`LayerUse::Target`]).
    target_layers: HashSet<Digest>,
}

/// The engine's bookkeeping of its work directory.
#[derive(Default)]
struct WorkDirs {
    /// Directories made so far (they are numbered).
    n_dirs: usize,
    /// Pristine unpacked chains kept for stages that will need the same base: unpacking once
    /// and copying is several times faster than unpacking again (layer digests → directory).
    unpacked: std::collections::HashMap<Vec<Digest>, PathBuf>,
    /// Whether overlays can be mounted here (probed on first need): then the unpacked chains
    /// in `unpacked` stay read-only and every stage on one gets an overlay instead of a copy.
    overlays: Option<bool>,
}

/// What the build found out about the blobs of the caches and images it uses: a cache's bad
/// blob makes results misses, an image's is an error.
#[derive(Default)]
struct BlobHealth {
    /// Blobs found missing or corrupt: results using them are misses.
    bad: HashSet<Digest>,
    /// Blobs checked to be available.
    available: std::collections::HashMap<Digest, bool>,
    /// The last blob that made a found result unusable.
    last_unusable: Option<Digest>,
    /// Layers of the images this build uses (`FROM`, `COPY --from`), with the image's name:
    /// their failures are errors, never misses.
    image_layers: std::collections::HashMap<Digest, String>,
    /// After [`MAX_RESTARTS`] unusable cache blobs: only results this build made are hits.
    caches_off: bool,
}

/// What the records' keys are made of: explains misses, and goes into exports.
#[derive(Default)]
struct KeyFacts {
    /// Records before this build: those of the sources.
    n_source_records: usize,
    /// The sources' facts, parsed on the first miss.
    sources: Option<FactsMap>,
    /// Facts of the records this build computed keys for.
    ours: FactsMap,
}

/// The most bytes of a command that a step's name or a message shows. BuildKit's plain
/// progress cuts vertex names to 72 bytes and `...` (with `PROGRESS_NO_TRUNC=0`) and its tty
/// view to the terminal's width, but its errors quote the whole command; a 1 MB `RUN` line must
/// not be echoed whole in every line that names the step, so names and messages are cut here.
pub const SHOWN_COMMAND_BYTES: usize = 512;

/// `text` cut to [`SHOWN_COMMAND_BYTES`] (at a character boundary), with `...` and the size
/// of the whole when it was longer.
pub fn cut_command(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= SHOWN_COMMAND_BYTES {
        return text.into();
    }
    let head = cache_core::limits::prefix_within(text, SHOWN_COMMAND_BYTES);
    format!("{head}... ({} bytes)", text.len()).into()
}

/// The name progress and messages give step `step` of `stage`: `[stage n/m] INSTRUCTION`.
fn step_name(stage: &PlannedStage, step: &Step) -> String {
    format!(
        "{} {}",
        stage.progress_prefix(step.number),
        cut_command(&step.display)
    )
}

/// How many unusable cache blobs a build restarts for, one by one; past them it goes on
/// without its caches (and fails after twice as many, which only a broken machine reaches).
const MAX_RESTARTS: usize = 8;

fn link(record: RecordIdx) -> Link {
    Link {
        selector: String::new(),
        record,
    }
}

fn step_error(slot_name: &str, line: usize, message: impl Into<String>) -> Error {
    Error::Step {
        name: slot_name.to_owned(),
        line,
        message: message.into(),
        exit_code: None,
    }
}

/// `names` joined with commas, or `none`.
fn names_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// Reads the Dockerfile at `path`, refusing one larger than `max_size` bytes (`dockerfile-size`)
/// before reading more than that.
fn read_dockerfile(path: &Path, max_size: u64) -> Result<String, Error> {
    use std::io::Read as _;
    let reading = |source| Error::ReadDockerfile {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(reading)?;
    let mut bytes = Vec::new();
    file.take(max_size.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(reading)?;
    if bytes.len() as u64 > max_size {
        return Err(Error::DockerfileTooLarge {
            path: path.to_owned(),
            max_size,
        });
    }
    String::from_utf8(bytes)
        .map_err(|err| reading(std::io::Error::new(std::io::ErrorKind::InvalidData, err)))
}

/// Builds `request` against `graph` (the caches given, results tagged with source ids).
pub async fn build(
    request: &BuildRequest,
    graph: CacheGraph,
    services: &Services<'_>,
) -> Result<BuildOutcome, Error> {
    let dockerfile_text = read_dockerfile(&request.dockerfile, request.limits.dockerfile_size)?;
    if !request.context.is_dir() {
        return Err(Error::ContextNotDir {
            path: request.context.clone(),
        });
    }
    let df_err = |err: dockerfile::Error| Error::Dockerfile {
        path: request.dockerfile.display().to_string(),
        line: err.line(),
        message: err.message().to_owned(),
    };
    let df = dockerfile::parse(&dockerfile_text).map_err(df_err)?;
    let options = dockerfile::PlanOptions {
        build_args: request.build_args.clone(),
        target: request.target.clone(),
        named_contexts: request.named_contexts.keys().cloned().collect(),
        labels: request.labels.clone(),
        limits: dockerfile::Limits {
            word_size: usize::try_from(request.limits.word_size).unwrap_or(usize::MAX),
        },
    };
    check_no_cache_filter(&df, &request.no_cache_filter)?;
    let first = dockerfile::plan(&df, &options).map_err(df_err)?;
    let ignore_path = request.context.join(".dockerignore");
    let ignore = match std::fs::read_to_string(&ignore_path) {
        Ok(text) => {
            dockerfile::IgnoreMatcher::parse(&text).map_err(|source| Error::Dockerignore {
                path: ignore_path.clone(),
                source,
            })?
        }
        Err(_) => dockerfile::IgnoreMatcher::empty(),
    };
    std::fs::create_dir_all(&request.work_dir).map_err(Error::io(format!(
        "creating work directory {}",
        request.work_dir.display()
    )))?;
    let mut engine = Engine::new(request, services, graph, ignore, first.clone());
    // Resolve image and context bases first, to plan with their configs.
    let mut base_configs = BTreeMap::new();
    let mut base_images: BTreeMap<String, ResolvedImage> = BTreeMap::new();
    for stage in &first.stages {
        let resolved = match &stage.base {
            Base::Image(r) if !base_images.contains_key(r) => (r, engine.resolve_image(r).await?),
            Base::Context(name) if !base_images.contains_key(name) => {
                match engine.resolve_context_image(name)? {
                    Some(img) => (name, img),
                    None => continue,
                }
            }
            _ => continue,
        };
        base_configs.insert(resolved.0.clone(), image_to_plan_config(&resolved.1.config));
        base_images.insert(resolved.0.clone(), resolved.1);
    }
    engine.plan =
        dockerfile::plan_with_base_configs(&df, &options, &base_configs).map_err(df_err)?;
    engine.run_restarting(&base_images).await?;
    engine.finish()
}

/// Refuses a `--no-cache-filter` naming no stage of the Dockerfile.
fn check_no_cache_filter(df: &dockerfile::Dockerfile, names: &[String]) -> Result<(), Error> {
    for name in names {
        let lower = name.to_lowercase();
        if !df
            .stages
            .iter()
            .any(|s| s.name.as_deref() == Some(lower.as_str()))
        {
            return Err(Error::UnknownStage {
                name: name.clone(),
                stages: df.stages.iter().filter_map(|s| s.name.clone()).collect(),
            });
        }
    }
    Ok(())
}

impl<'a> Engine<'a> {
    /// An engine for `plan` over the caches in `graph`, before any stage is resolved.
    fn new(
        request: &'a BuildRequest,
        services: &'a Services<'a>,
        graph: CacheGraph,
        ignore: dockerfile::IgnoreMatcher,
        plan: dockerfile::Plan,
    ) -> Self {
        let mut engine = Engine {
            request,
            services,
            blobs: services.blobs.clone(),
            graph,
            hashes: match &request.hash_cache {
                Some(path) => HashCache::load(path),
                None => HashCache::in_memory(),
            },
            ignore,
            plan,
            stages: Vec::new(),
            slots: BTreeMap::new(),
            images: Vec::new(),
            image_index: BTreeMap::new(),
            reports: Vec::new(),
            work: WorkDirs::default(),
            blobs_fetched: 0,
            last_hit_source: None,
            blob_health: BlobHealth::default(),
            active: None,
            facts: KeyFacts::default(),
            target_layers: HashSet::new(),
        };
        engine.facts.n_source_records = engine.graph.records().len();
        engine
    }

    /// Runs the build, restarting it without a cache blob found unusable (up to
    /// [`MAX_RESTARTS`] times, then without the caches at all); an unusable layer of a base
    /// image fails the build.
    async fn run_restarting(
        &mut self,
        base_images: &BTreeMap<String, ResolvedImage>,
    ) -> Result<(), Error> {
        let mut restarts = 0;
        loop {
            let result = self.run(base_images).await;
            self.cleanup();
            match result {
                Err(Error::BadBlob { digest, message })
                    if restarts < 2 * MAX_RESTARTS
                        && !self.blob_health.bad.contains(&digest)
                        && !self.blob_health.image_layers.contains_key(&digest)
                        && self.graph.layers().iter().any(|l| l.blob.digest == digest) =>
                {
                    restarts += 1;
                    self.progress().event(Event::Warning(format!(
                        "cache blob {digest} from {} is unusable ({message}): the steps that need it are rebuilt",
                        self.blob_source(&digest)
                    )));
                    self.blob_health.bad.insert(digest);
                    if restarts >= MAX_RESTARTS && !self.blob_health.caches_off {
                        // A cache with many bad blobs must not make the build restart once per
                        // blob, nor fail it: go on with this build's own results only.
                        self.blob_health.caches_off = true;
                        self.progress().event(Event::Warning(format!(
                            "{restarts} cache blobs were unusable: the build goes on without its caches"
                        )));
                    }
                    self.reset();
                }
                Err(Error::BadBlob { digest, message })
                    if self.blob_health.image_layers.contains_key(&digest) =>
                {
                    return Err(Error::ImageLayer {
                        image: self.blob_health.image_layers[&digest].clone(),
                        digest,
                        message,
                    });
                }
                other => {
                    other?;
                    break;
                }
            }
        }
        Ok(())
    }

    /// The outcome of a finished build: the target's image and chain, the records to keep.
    fn finish(mut self) -> Result<BuildOutcome, Error> {
        if let Err(err) = self.hashes.save() {
            self.progress()
                .event(Event::Warning(format!("saving context hashes: {err}")));
        }
        if !self.blob_health.bad.is_empty() {
            // Exports and the local cache must not hand a refused blob on.
            self.graph.drop_results_using(&self.blob_health.bad);
        }
        let mut facts = self.source_facts().clone();
        facts.extend(std::mem::take(&mut self.facts.ours));
        let target = self.plan.target;
        let stage = &self.plan.stages[target];
        let state = &self.stages[target];
        let chain = state.fs.chain.clone();
        let image = assemble_image(stage, state, &chain, &self.request.annotations)?;
        Ok(BuildOutcome {
            targets: state.fs.records.clone(),
            graph: self.graph,
            image,
            chain,
            steps: self.reports,
            blobs: self.blobs,
            unused_build_args: self.plan.unused_build_args.clone(),
            cache_mounts: run_mounts::cache_mount_ids(&self.plan),
            blobs_fetched: self.blobs_fetched,
            facts,
        })
    }
}

/// The image config and history of the target stage over `chain`.
fn assemble_image(
    stage: &PlannedStage,
    state: &StageState,
    chain: &[Descriptor],
    annotations: &BTreeMap<String, String>,
) -> Result<image::Image, Error> {
    let created = chain
        .iter()
        .filter_map(|d| d.annotation(annotation::CREATED_AT))
        .filter_map(|t| cache_core::config::go_time::parse(t).ok())
        .max()
        .or(state.base_created);
    let mut history = state.base_history.clone();
    for entry in state.inherited_history.iter().chain(&stage.history) {
        history.push(image::HistoryEntry {
            created,
            created_by: entry.created_by.clone(),
            comment: Some(dockerfile::HISTORY_COMMENT.to_owned()),
            empty_layer: entry.empty_layer,
        });
    }
    let spec = image::ImageSpec {
        architecture: "amd64".into(),
        os: "linux".into(),
        created,
        config: plan_to_runtime_config(&stage.config),
        history,
        layers: chain.to_vec(),
        annotations: annotations.clone(),
    };
    image::assemble(&spec).map_err(Error::image("assembling the image"))
}

/// The runtime config of an image from a stage's config.
fn plan_to_runtime_config(config: &dockerfile::ImageConfig) -> image::RuntimeConfig {
    image::RuntimeConfig {
        user: config.user.clone(),
        exposed_ports: config.exposed_ports.clone(),
        env: config.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        entrypoint: config.entrypoint.clone(),
        cmd: config.cmd.clone(),
        volumes: config.volumes.clone(),
        working_dir: config.workdir.clone(),
        labels: config.labels.clone(),
        stop_signal: config.stop_signal.clone(),
        healthcheck: config.healthcheck.as_ref().map(|h| {
            let nanos = |d: Duration| d.as_nanos() as u64;
            let mut map = serde_json::Map::new();
            map.insert("Test".into(), serde_json::json!(h.test));
            if !h.interval.is_zero() {
                map.insert("Interval".into(), serde_json::json!(nanos(h.interval)));
            }
            if !h.timeout.is_zero() {
                map.insert("Timeout".into(), serde_json::json!(nanos(h.timeout)));
            }
            if !h.start_period.is_zero() {
                map.insert(
                    "StartPeriod".into(),
                    serde_json::json!(nanos(h.start_period)),
                );
            }
            if !h.start_interval.is_zero() {
                map.insert(
                    "StartInterval".into(),
                    serde_json::json!(nanos(h.start_interval)),
                );
            }
            if h.retries != 0 {
                map.insert("Retries".into(), serde_json::json!(h.retries));
            }
            serde_json::Value::Object(map)
        }),
        shell: config.shell.clone(),
        on_build: config.on_build.clone(),
        ..image::RuntimeConfig::default()
    }
}

/// A base image's config as the planner inherits it.
fn image_to_plan_config(config: &image::ParsedConfig) -> dockerfile::ImageConfig {
    let rc = &config.config;
    dockerfile::ImageConfig {
        env: rc
            .env
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv.clone(), String::new()),
            })
            .collect(),
        cmd: rc.cmd.clone(),
        entrypoint: rc.entrypoint.clone(),
        user: rc.user.clone().filter(|u| !u.is_empty()),
        workdir: rc.working_dir.clone().filter(|w| !w.is_empty()),
        labels: rc.labels.clone(),
        exposed_ports: rc.exposed_ports.clone(),
        volumes: rc.volumes.clone(),
        stop_signal: rc.stop_signal.clone(),
        healthcheck: None,
        shell: rc.shell.clone(),
        author: None,
        on_build: rc.on_build.clone(),
    }
}

impl LayerUse {
    /// The use of a layer made for stage `si`: [`LayerUse::Target`] when `si` is the target or
    /// a stage the target is built `FROM` (directly or not), the stages whose layers make the
    /// final image.
    fn of_stage(plan: &dockerfile::Plan, si: usize) -> LayerUse {
        let mut cur = plan.target;
        loop {
            if cur == si {
                return LayerUse::Target;
            }
            match plan.stages[cur].base {
                Base::Stage(parent) => cur = parent,
                _ => return LayerUse::Other,
            }
        }
    }
}

/// The layers of the base image under the target's chain (the base of the first stage of
/// that chain), known before any step runs.
fn target_base_layers(
    plan: &dockerfile::Plan,
    base_images: &BTreeMap<String, ResolvedImage>,
) -> HashSet<Digest> {
    let mut cur = plan.target;
    while let Base::Stage(parent) = plan.stages[cur].base {
        cur = parent;
    }
    match &plan.stages[cur].base {
        Base::Image(r) | Base::Context(r) => base_images
            .get(r)
            .map(|img| img.layers.iter().map(|l| l.digest.clone()).collect())
            .unwrap_or_default(),
        _ => HashSet::new(),
    }
}

fn from_display_with_digest(stage: &PlannedStage, img: &ResolvedImage) -> String {
    match &stage.base {
        Base::Image(_) if !stage.from_display.contains('@') => {
            format!("{}@{}", stage.from_display, img.manifest_digest)
        }
        _ => stage.from_display.clone(),
    }
}

impl Engine<'_> {
    fn progress(&self) -> &dyn Progress {
        self.services.progress
    }

    /// Forgets the state of an attempt, keeping the graph (with the results made so far) and
    /// what is known about blobs.
    fn reset(&mut self) {
        self.stages.clear();
        self.slots.clear();
        self.images.clear();
        self.image_index.clear();
        self.reports.clear();
        self.last_hit_source = None;
        self.active = None;
    }

    /// Takes down every overlay this build mounted; the directories stay for the owner of the
    /// work directory to remove (deleting gigabytes of files is slow on some disks, and need
    /// not delay the build's result).
    fn cleanup(&mut self) {
        if let Err(err) = layer::overlay::unmount_under(&self.request.work_dir) {
            tracing::warn!(
                "unmounting the overlays under {}: {err}",
                self.request.work_dir.display()
            );
        }
    }

    async fn run(&mut self, base_images: &BTreeMap<String, ResolvedImage>) -> Result<(), Error> {
        let plan = self.plan.clone();
        self.target_layers = target_base_layers(&plan, base_images);
        for (si, stage) in plan.stages.iter().enumerate() {
            self.start_stage(si, stage, base_images).await?;
            for (k, step) in stage.steps.iter().enumerate() {
                let name = step_name(stage, step);
                self.active = Some((format!("step:{si}:{k}"), name));
                self.resolve_step(si, stage, k, step).await?;
                self.active = None;
            }
        }
        let target = plan.target;
        // The final chain must be known: run what is pending under the target.
        let request = self.request;
        if let Some(dest) = &request.output_dir {
            self.unpack_output(target, dest).await?;
        } else if !self.stages[target].fs.pending.is_empty() || self.request.unpack_target {
            self.ensure_fs(Target::Stage(target)).await?;
        }
        self.report_unrun();
        Ok(())
    }

    fn new_dir(&mut self, what: &str) -> Result<PathBuf, Error> {
        self.work.n_dirs += 1;
        let dir = self
            .request
            .work_dir
            .join(format!("{what}-{}", self.work.n_dirs));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        Ok(dir)
    }

    fn root_record(&mut self, digest: Digest) -> RecordIdx {
        match self.graph.find_root(&digest) {
            Some(idx) => idx,
            None => self.graph.add_record(digest, Vec::new()),
        }
    }

    /// The two root records BuildKit gives an image: by manifest and by its layers' chain ID.
    fn image_roots(&mut self, img: &ResolvedImage) -> Vec<RecordIdx> {
        cache_llb::image_records(
            &img.manifest_digest,
            &img.config.diff_ids,
            &cache_llb::Platform::linux_amd64(),
        )
        .into_iter()
        .map(|digest| self.root_record(digest))
        .collect()
    }

    fn note_image_layers(&mut self, layers: &[Descriptor], image: &str) {
        for layer in layers {
            self.blob_health
                .image_layers
                .entry(layer.digest.clone())
                .or_insert_with(|| image.to_owned());
        }
    }

    /// Where a cache blob comes from, for messages: the caches listing it, else the local one.
    fn blob_source(&self, digest: &Digest) -> String {
        let names: Vec<&str> = self
            .blobs
            .imports
            .iter()
            .filter(|source| source.layers.contains(digest))
            .map(|source| source.name.as_str())
            .collect();
        if names.is_empty() {
            format!("the local cache ({})", self.blobs.root.describe())
        } else {
            format!("cache {}", names.join(", "))
        }
    }

    async fn resolve_image(&mut self, reference: &str) -> Result<ResolvedImage, Error> {
        let Some(resolver) = self.services.images else {
            return Err(Error::NoRegistry {
                reference: reference.to_owned(),
            });
        };
        let resolved = resolver
            .resolve(reference)
            .await
            .map_err(|source| Error::Resolve {
                reference: reference.to_owned(),
                source: Box::new(source),
            })?;
        self.note_image_layers(&resolved.layers, &format!("image {reference}"));
        self.blobs.imports.push(ImportedSource {
            name: format!("image {reference}"),
            layers: resolved.layers.iter().map(|l| l.digest.clone()).collect(),
            store: resolved.store.clone(),
        });
        Ok(resolved)
    }

    /// A named context that is an OCI layout image, or `None` for a directory context.
    fn resolve_context_image(&mut self, name: &str) -> Result<Option<ResolvedImage>, Error> {
        let Some(NamedContext::OciLayout { dir, reference }) =
            self.request.named_contexts.get(name)
        else {
            return Ok(None);
        };
        let img = image::read_layout_image(dir, reference).map_err(Error::image(format!(
            "build context {name}=oci-layout://{}:{reference}",
            dir.display()
        )))?;
        let store = (self.services.open_layout)(dir);
        self.note_image_layers(&img.layers, &format!("build context {name}"));
        self.blobs.imports.push(ImportedSource {
            name: format!("oci-layout://{}", dir.display()),
            layers: img.layers.iter().map(|l| l.digest.clone()).collect(),
            store: store.clone(),
        });
        Ok(Some(ResolvedImage {
            display: format!("{name}@{}", img.manifest_digest),
            manifest_digest: img.manifest_digest.clone(),
            config: img.config.clone(),
            layers: img.layers.clone(),
            store,
        }))
    }

    async fn start_stage(
        &mut self,
        si: usize,
        stage: &PlannedStage,
        base_images: &BTreeMap<String, ResolvedImage>,
    ) -> Result<(), Error> {
        let mut state = StageState {
            fs: Fs::default(),
            base_history: Vec::new(),
            inherited_history: Vec::new(),
            base_created: None,
        };
        match &stage.base {
            Base::Scratch => {
                // Scratch has no record: the first op reads no filesystem of its own.
                state.fs.records = Vec::new();
            }
            Base::Stage(j) => {
                let parent = &self.stages[*j];
                state.fs.records = parent.fs.records.clone();
                state.fs.chain = parent.fs.chain.clone();
                state.fs.pending = parent.fs.pending.clone();
                state.base_history = parent.base_history.clone();
                state.inherited_history = parent.inherited_history.clone();
                state
                    .inherited_history
                    .extend(self.plan.stages[*j].history.iter().cloned());
                state.base_created = parent.base_created;
            }
            Base::Image(r) | Base::Context(r) => {
                let started = Instant::now();
                let vertex = format!("from:{si}");
                if let Some(img) = base_images.get(r) {
                    self.progress().event(Event::Start {
                        vertex: vertex.clone(),
                        name: format!(
                            "{} {}",
                            stage.progress_prefix(1),
                            from_display_with_digest(stage, img)
                        ),
                    });
                    state.fs.records = self.image_roots(img);
                    for &root in &state.fs.records {
                        self.facts.ours.insert(
                            self.graph.record(root).digest.to_string(),
                            Facts {
                                base: Some(img.manifest_digest.to_string()),
                                ..Facts::default()
                            },
                        );
                    }
                    state.fs.chain = img.layers.clone();
                    state.base_history = img.config.history.clone();
                    state.base_created = img.config.created;
                } else if let Some(NamedContext::Dir(dir)) = self.request.named_contexts.get(r) {
                    self.progress().event(Event::Start {
                        vertex: vertex.clone(),
                        name: format!("{} {}", stage.progress_prefix(1), stage.from_display),
                    });
                    let dir = dir.clone();
                    let role = LayerUse::of_stage(&self.plan, si);
                    state.fs = self.dir_base(r, &dir, role).await?;
                } else {
                    return Err(Error::UnresolvedBase {
                        stage: stage.name.clone(),
                        base: r.clone(),
                    });
                }
                self.progress().event(Event::Done {
                    vertex,
                    duration: started.elapsed(),
                });
            }
        }
        self.stages.push(state);
        Ok(())
    }

    /// Pending steps that never had to run were satisfied by the cache: report them.
    fn report_unrun(&mut self) {
        let source = self.last_hit_source.map(|s| self.source_name(s));
        let mut unrun: Vec<(usize, usize)> = self
            .slots
            .iter()
            .filter(|(_, slot)| !slot.reported)
            .map(|(key, _)| *key)
            .collect();
        unrun.sort();
        for key in unrun {
            let slot = self.slots.get_mut(&key).expect("slot exists");
            slot.reported = true;
            let vertex = format!("step:{}:{}", key.0, key.1);
            let name = slot.name.clone();
            self.services.progress.event(Event::Start {
                vertex: vertex.clone(),
                name: name.clone(),
            });
            self.services.progress.event(Event::Cached { vertex });
            let key = Some(slot.digest.clone());
            self.reports.push(StepReport {
                name,
                cached: true,
                cache_source: source.clone(),
                duration_ms: 0,
                finished_at: Instant::now(),
                miss: None,
                key,
            });
        }
    }
}

/// What a filesystem belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Stage(usize),
    Image(usize),
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(Error::Worker)
}

/// The part of `graph` worth keeping in the root store: results whose blobs are all in the root
/// (imported hits whose layers were never fetched stay remote), and the records that have one or
/// lead to one (records of versions whose results were pruned are dropped, so the root's config
/// does not grow with every build).
pub async fn local_cache_graph(graph: &CacheGraph, root: &dyn BlobStore) -> CacheGraph {
    let mut present: HashSet<Digest> = HashSet::new();
    let mut absent: HashSet<Digest> = HashSet::new();
    let mut keep = CacheGraph::new();
    let mut map = Vec::with_capacity(graph.records().len());
    let all: Vec<RecordIdx> = (0..graph.records().len()).collect();
    // Records come out of `select` dependencies-first; re-add them with results filtered.
    let selected = graph.select(&all, cache_core::Mode::Max);
    /// What became of a layer of `selected` in `keep`.
    #[derive(Clone, Copy)]
    enum Kept {
        Unknown,
        /// Its blob or one below it is not in the root.
        Unusable,
        /// Kept as this layer (`None`: below the bottom layer).
        Layer(Option<cache_core::graph::LayerIdx>),
    }
    let mut kept = vec![Kept::Unknown; selected.layers().len()];
    for record in selected.records() {
        let inputs = record
            .inputs
            .iter()
            .map(|links| {
                links
                    .iter()
                    .map(|l| Link {
                        selector: l.selector.clone(),
                        record: map[l.record],
                    })
                    .collect()
            })
            .collect();
        let new_idx = keep.add_record(record.digest.clone(), inputs);
        map.push(new_idx);
        for result in &record.results {
            // Walk down to the first layer already decided, then decide the rest bottom up: a
            // layer is kept when its blob is in the root and the layers below it are kept. Each
            // layer is decided once, so a deep chain with a result on every layer stays linear.
            let mut todo = Vec::new();
            let mut cur = Some(result.layer);
            let mut below = Kept::Layer(None);
            while let Some(idx) = cur {
                match kept[idx] {
                    Kept::Unknown => {
                        todo.push(idx);
                        cur = selected.layer(idx).parent;
                    }
                    known => {
                        below = known;
                        break;
                    }
                }
            }
            for idx in todo.into_iter().rev() {
                below = match below {
                    Kept::Layer(parent) => {
                        let desc = &selected.layer(idx).blob;
                        let is_present = if present.contains(&desc.digest) {
                            true
                        } else if absent.contains(&desc.digest) {
                            false
                        } else if matches!(root.stat(&desc.digest).await, Ok(Some(_))) {
                            present.insert(desc.digest.clone());
                            true
                        } else {
                            absent.insert(desc.digest.clone());
                            false
                        };
                        if is_present {
                            Kept::Layer(Some(keep.add_layer(desc.clone(), parent)))
                        } else {
                            Kept::Unusable
                        }
                    }
                    _ => Kept::Unusable,
                };
                kept[idx] = below;
            }
            if let Kept::Layer(Some(top)) = below {
                keep.add_result(
                    new_idx,
                    CacheResult {
                        layer: top,
                        created_at: result.created_at,
                        source: LOCAL_SOURCE,
                    },
                );
            }
        }
    }
    keep.without_dead_records()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_15_a_dockerfile_over_the_size_limit_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("Dockerfile");
        std::fs::write(&path, "FROM scratch\n".repeat(100)).expect("write");
        assert!(read_dockerfile(&path, 1300).is_ok());
        let err = read_dockerfile(&path, 1299).unwrap_err().to_string();
        assert!(
            err.contains("larger than the dockerfile-size limit of 1299 bytes")
                && err.contains("--limit dockerfile-size=N")
                && err.contains(&path.display().to_string()),
            "{err}"
        );
    }
}
