//! The build engine: resolves each step's cache key against the cache graph, executes only what
//! misses, and produces layers, records and the final image.
//!
//! Steps are resolved lazily. A step whose record is found with a result is a hit: its layer
//! chain is known without unpacking anything. A step whose record is found without a result
//! (for example a builder stage in a `mode=min` cache) stays pending: it runs only if a later
//! step misses and needs that filesystem. A step with no record runs at once.

mod explain;
mod keys;
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

use crate::context::{self, CopyOptions, HashCache};
use crate::dockerfile::{self, Base, CopyFrom, CopySource, Op, PlannedStage, RunCommand, Step};
use crate::image;
use crate::layer::{self, Compression, Snapshot};
use crate::sandbox;

pub use explain::{ANNOTATION as FACTS_ANNOTATION, Facts, FactsMap, annotation_value};
pub use keys::{StepKey, plan_cache_maps};
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
    pub fn parse(value: &str) -> Result<NamedContext, String> {
        if let Some(rest) = value.strip_prefix("oci-layout://") {
            let (dir, reference) = if let Some((dir, digest)) = rest.split_once('@') {
                (dir, digest.to_owned())
            } else {
                match rest.rsplit_once(':') {
                    Some((dir, tag)) if !tag.contains('/') => {
                        cache_core::spec::check_tag(tag).map_err(|message| {
                            format!("{value:?}: the tag of oci-layout://DIR:TAG: {message}")
                        })?;
                        (dir, tag.to_owned())
                    }
                    _ => (rest, "latest".to_owned()),
                }
            };
            if dir.is_empty() {
                return Err(format!(
                    "{value:?}: the OCI layout directory is missing (oci-layout://DIR[:TAG])"
                ));
            }
            return Ok(NamedContext::OciLayout {
                dir: PathBuf::from(dir),
                reference,
            });
        }
        if value.contains("://") {
            return Err(format!(
                "{value:?}: only directories and oci-layout://DIR[:TAG] build contexts are supported"
            ));
        }
        Ok(NamedContext::Dir(PathBuf::from(value)))
    }
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
    fn resolve<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<ResolvedImage, String>>;
}

/// Downloads `ADD <url>` sources; provided by the caller.
pub trait UrlFetcher: Send + Sync {
    /// Downloads `url` into the new file `dest`. Errors say what failed (status, connection).
    fn fetch<'a>(&'a self, url: &'a str, dest: &'a Path) -> BoxFuture<'a, Result<(), String>>;
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
    /// a step's new layer), so that an export can send it while the build goes on.
    pub on_layer: Option<&'a (dyn Fn(&Descriptor) + Send + Sync)>,
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
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

impl Error {
    fn other(message: impl Into<String>) -> Self {
        Error::Other(message.into())
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
    n_dirs: usize,
    /// Pristine unpacked chains kept for stages that will need the same base: unpacking once
    /// and copying is several times faster than unpacking again (layer digests → directory).
    unpacked: std::collections::HashMap<Vec<Digest>, PathBuf>,
    /// Whether overlays can be mounted here (probed on first need): then the unpacked chains
    /// in `unpacked` stay read-only and every stage on one gets an overlay instead of a copy.
    overlays: Option<bool>,
    blobs_fetched: u64,
    last_hit_source: Option<SourceId>,
    /// Blobs found missing or corrupt: results using them are misses.
    bad_blobs: HashSet<Digest>,
    /// Blobs checked to be available.
    available: std::collections::HashMap<Digest, bool>,
    /// The step being resolved or run (vertex, name): layers unpacked for it report on it.
    active: Option<(String, String)>,
    /// Records before this build: those of the sources.
    n_source_records: usize,
    /// The sources' facts, parsed on the first miss.
    source_facts: Option<FactsMap>,
    /// Facts of the records this build computed keys for.
    facts: FactsMap,
    /// The last blob that made a found result unusable.
    last_unusable: Option<Digest>,
    /// Layers of the images this build uses (`FROM`, `COPY --from`), with the image's name:
    /// their failures are errors, never misses.
    image_layers: std::collections::HashMap<Digest, String>,
    /// After [`MAX_RESTARTS`] unusable cache blobs: only results this build made are hits.
    caches_off: bool,
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

/// Reads the Dockerfile at `path`, refusing one larger than `max_size` bytes (`dockerfile-size`)
/// before reading more than that.
fn read_dockerfile(path: &Path, max_size: u64) -> Result<String, Error> {
    use std::io::Read as _;
    let reading = |err: std::io::Error| {
        Error::other(format!(
            "reading the Dockerfile {}: {err} (give the right path with -f)",
            path.display()
        ))
    };
    let file = std::fs::File::open(path).map_err(reading)?;
    let mut bytes = Vec::new();
    file.take(max_size.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(reading)?;
    if bytes.len() as u64 > max_size {
        return Err(Error::other(format!(
            "the Dockerfile {} is larger than the dockerfile-size limit of {max_size} bytes; {}",
            path.display(),
            cache_core::limits::Limits::hint("dockerfile-size")
        )));
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
        return Err(Error::other(format!(
            "the build context {} is not a directory",
            request.context.display()
        )));
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
    for name in &request.no_cache_filter {
        let lower = name.to_lowercase();
        if !df
            .stages
            .iter()
            .any(|s| s.name.as_deref() == Some(lower.as_str()))
        {
            let names: Vec<&str> = df.stages.iter().filter_map(|s| s.name.as_deref()).collect();
            return Err(Error::other(format!(
                "--no-cache-filter {name}: the Dockerfile has no stage named {name} (its named stages: {})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            )));
        }
    }
    let first = dockerfile::plan(&df, &options).map_err(df_err)?;
    let ignore_path = request.context.join(".dockerignore");
    let ignore = match std::fs::read_to_string(&ignore_path) {
        Ok(text) => dockerfile::IgnoreMatcher::parse(&text)
            .map_err(|err| Error::other(format!("{}: {err}", ignore_path.display())))?,
        Err(_) => dockerfile::IgnoreMatcher::empty(),
    };
    std::fs::create_dir_all(&request.work_dir).map_err(|err| {
        Error::other(format!(
            "creating work directory {}: {err}",
            request.work_dir.display()
        ))
    })?;
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
        plan: first.clone(),
        stages: Vec::new(),
        slots: BTreeMap::new(),
        images: Vec::new(),
        image_index: BTreeMap::new(),
        reports: Vec::new(),
        n_dirs: 0,
        unpacked: std::collections::HashMap::new(),
        overlays: None,
        blobs_fetched: 0,
        last_hit_source: None,
        bad_blobs: HashSet::new(),
        available: std::collections::HashMap::new(),
        active: None,
        n_source_records: 0,
        source_facts: None,
        facts: FactsMap::new(),
        last_unusable: None,
        image_layers: std::collections::HashMap::new(),
        caches_off: false,
    };
    engine.n_source_records = engine.graph.records().len();
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
    let mut restarts = 0;
    loop {
        let result = engine.run(&base_images).await;
        engine.cleanup();
        match result {
            Err(Error::BadBlob { digest, message })
                if restarts < 2 * MAX_RESTARTS
                    && !engine.bad_blobs.contains(&digest)
                    && !engine.image_layers.contains_key(&digest)
                    && engine
                        .graph
                        .layers()
                        .iter()
                        .any(|l| l.blob.digest == digest) =>
            {
                restarts += 1;
                services.progress.event(Event::Warning(format!(
                    "cache blob {digest} from {} is unusable ({message}): the steps that need it are rebuilt",
                    engine.blob_source(&digest)
                )));
                engine.bad_blobs.insert(digest);
                if restarts >= MAX_RESTARTS && !engine.caches_off {
                    // A cache with many bad blobs must not make the build restart once per
                    // blob, nor fail it: go on with this build's own results only.
                    engine.caches_off = true;
                    services.progress.event(Event::Warning(format!(
                        "{restarts} cache blobs were unusable: the build goes on without its caches"
                    )));
                }
                engine.reset();
            }
            Err(Error::BadBlob { digest, message })
                if engine.image_layers.contains_key(&digest) =>
            {
                return Err(Error::other(format!(
                    "layer {digest} of {} is unusable: {message}",
                    engine.image_layers[&digest]
                )));
            }
            other => {
                other?;
                break;
            }
        }
    }
    if let Err(err) = engine.hashes.save() {
        services
            .progress
            .event(Event::Warning(format!("saving context hashes: {err}")));
    }
    if !engine.bad_blobs.is_empty() {
        // Exports and the local cache must not hand a refused blob on.
        engine.graph.drop_results_using(&engine.bad_blobs);
    }
    let mut facts = engine.source_facts().clone();
    facts.extend(std::mem::take(&mut engine.facts));
    let target = engine.plan.target;
    let stage = &engine.plan.stages[target];
    let state = &engine.stages[target];
    let chain = state.fs.chain.clone();
    let image = assemble_image(stage, state, &chain, &request.annotations)?;
    Ok(BuildOutcome {
        targets: state.fs.records.clone(),
        graph: engine.graph,
        image,
        chain,
        steps: engine.reports,
        blobs: engine.blobs,
        unused_build_args: engine.plan.unused_build_args.clone(),
        cache_mounts: run_mounts::cache_mount_ids(&engine.plan),
        blobs_fetched: engine.blobs_fetched,
        facts,
    })
}

/// Lays the tree `top` over `root` as a layer would be (directories of `top` replace the
/// metadata of those in `root`, files replace files), through a layer file in `tmp_dir`.
fn lay_over(top: &Path, root: &Path, tmp_dir: &Path) -> Result<(), layer::Error> {
    let changes = layer::diff(&Snapshot::default(), top)?;
    let (file, info) =
        layer::write_layer_file(top, &changes, layer::Compression::Uncompressed, tmp_dir)?;
    let reader = std::fs::File::open(file.path())
        .map_err(|err| layer::Error::io("open", file.path(), err))?;
    layer::apply_layer(reader, &info.media_type, root, &layer::LayerLimits::NONE)?;
    Ok(())
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
    image::assemble(&spec).map_err(|err| Error::other(format!("assembling the image: {err}")))
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
        self.n_dirs += 1;
        let dir = self
            .request
            .work_dir
            .join(format!("{what}-{}", self.n_dirs));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|err| Error::other(format!("creating {}: {err}", dir.display())))?;
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
            self.image_layers
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
            return Err(Error::other(format!(
                "image {reference}: pulling images from a registry is not available here; give the image with --build-context NAME=oci-layout://DIR"
            )));
        };
        let resolved = resolver
            .resolve(reference)
            .await
            .map_err(|err| Error::other(format!("resolving image {reference}: {err}")))?;
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
        let img = image::read_layout_image(dir, reference).map_err(|err| {
            Error::other(format!(
                "build context {name}=oci-layout://{}:{reference}: {err}",
                dir.display()
            ))
        })?;
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
                        self.facts.insert(
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
                    state.fs = self.dir_base(r, &dir).await?;
                } else {
                    return Err(Error::other(format!(
                        "stage {}: base {r} could not be resolved",
                        stage.name
                    )));
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

    /// `FROM <directory context>`: the directory's files as one layer on an empty base.
    async fn dir_base(&mut self, name: &str, dir: &Path) -> Result<Fs, Error> {
        let selection = self.select(dir, &[".".to_owned()], false, &[], name)?;
        // BuildKit's key of a local source is session-scoped: a key of our own.
        let content = self.root_record(keys::record_digest(&selection.checksum, -1));
        let map = cache_llb::own_cache_map("buildcache.own.v2", b"from-dir", 1);
        let digest = keys::record_digest(&map.digest, 0);
        let found = self.graph.find(&digest, &[("", &[content])]);
        if !self.request.no_cache
            && let Some((record, chain, _)) = self.best_hit(&found).await
        {
            return Ok(Fs {
                records: vec![record],
                chain,
                pending: Vec::new(),
                rootfs: None,
            });
        }
        let rootfs = self.new_dir("rootfs")?;
        let before = snapshot(&rootfs).await?;
        let opts = CopyOptions {
            chown: None,
            keep_owner: false,
            chmod: None,
            extract_archives: false,
            workdir: "/".into(),
        };
        let (sel, src, dst) = (selection.clone(), dir.to_path_buf(), rootfs.clone());
        blocking(move || context::copy_into(&sel, &src, &dst, "/", &opts))
            .await?
            .map_err(|err| Error::other(format!("build context {name}: {err}")))?;
        let record = match found.first() {
            Some(&r) => r,
            None => self.graph.add_record(digest, vec![vec![link(content)]]),
        };
        let chain = vec![self.make_layer(&rootfs, before).await?];
        self.add_result(record, &chain);
        Ok(Fs {
            records: vec![record],
            chain,
            pending: Vec::new(),
            rootfs: Some(rootfs),
        })
    }

    fn select(
        &mut self,
        src_root: &Path,
        sources: &[String],
        use_ignore: bool,
        exclude: &[String],
        what: &str,
    ) -> Result<context::Selection, Error> {
        let ignore = use_ignore.then_some(&self.ignore);
        let exclude =
            exclude_matcher(exclude).map_err(|err| Error::other(format!("{what}: {err}")))?;
        context::select_excluding(
            src_root,
            sources,
            ignore,
            exclude.as_ref(),
            &mut self.hashes,
        )
        .map_err(|err| Error::other(format!("{what}: {err}")))
    }

    /// The best usable result among `records`: newest first, skipping local results whose
    /// blobs are gone from the root store.
    async fn best_hit(
        &mut self,
        records: &[RecordIdx],
    ) -> Option<(RecordIdx, Vec<Descriptor>, SourceId)> {
        self.last_unusable = None;
        let mut candidates: Vec<(RecordIdx, CacheResult)> = records
            .iter()
            .flat_map(|&r| {
                self.graph
                    .record(r)
                    .results
                    .iter()
                    .map(move |res| (r, res.clone()))
            })
            .collect();
        candidates.sort_by(|a, b| {
            b.1.created_at
                .cmp(&a.1.created_at)
                .then_with(|| a.1.source.cmp(&b.1.source))
        });
        for (record, result) in candidates {
            if self.caches_off
                && (result.source != LOCAL_SOURCE || result.created_at != self.request.now)
            {
                continue;
            }
            let chain: Vec<Descriptor> = self
                .graph
                .chain_blobs(result.layer)
                .into_iter()
                .cloned()
                .collect();
            let mut usable = true;
            for desc in &chain {
                if self.bad_blobs.contains(&desc.digest) {
                    self.last_unusable = Some(desc.digest.clone());
                    usable = false;
                    break;
                }
                let available = match self.available.get(&desc.digest) {
                    Some(&known) => known,
                    None => {
                        let known = self.blobs.is_available(desc).await;
                        if !known && result.source != LOCAL_SOURCE {
                            self.progress().event(Event::Warning(format!(
                                "layer blob {} listed by cache {} is missing: its results are misses",
                                desc.digest,
                                self.source_name(result.source)
                            )));
                        }
                        self.available.insert(desc.digest.clone(), known);
                        known
                    }
                };
                if !available {
                    self.last_unusable = Some(desc.digest.clone());
                    usable = false;
                    break;
                }
            }
            if usable {
                return Some((record, chain, result.source));
            }
        }
        None
    }

    fn add_result(&mut self, record: RecordIdx, chain: &[Descriptor]) {
        if let Some(top) = self.graph.add_chain(chain.iter().cloned()) {
            self.graph.add_result(
                record,
                CacheResult {
                    layer: top,
                    created_at: self.request.now,
                    source: LOCAL_SOURCE,
                },
            );
        }
    }

    /// Keeps what the key of `step` (record digest `digest`) is made of, and for a copy from
    /// a directory the files it reads.
    fn record_facts(&mut self, step: &Step, digest: &Digest, extra: &Extra) {
        // A RUN's text as the key has it: unexpanded (the display shows variables' values).
        let op_text = match &step.op {
            Op::Run { command, .. } => run_argv(step, command).join("\0"),
            _ => step.display.clone(),
        };
        self.facts.insert(
            digest.to_string(),
            explain::step_facts(&op_text, &step.env, &step.workdir, step.user.as_deref()),
        );
        if let Extra::Content {
            record, selection, ..
        } = extra
        {
            let content = self.graph.record(*record).digest.to_string();
            self.facts.entry(content).or_insert_with(|| {
                let files = selection.sources.iter().flat_map(|source| {
                    source.matches.iter().flat_map(move |found| {
                        found.entries.iter().filter_map(move |entry| {
                            let hash = entry.blake3.as_ref()?;
                            let path = found.entry_path(entry).to_string_lossy().into_owned();
                            Some((path, hex::encode(&hash[..8])))
                        })
                    })
                });
                explain::content_facts(files)
            });
        }
    }

    /// The facts the sources carry, parsed once.
    fn source_facts(&mut self) -> &FactsMap {
        self.source_facts.get_or_insert_with(|| {
            let mut all = FactsMap::new();
            for text in &self.services.facts {
                all.extend(explain::parse_annotation(text).unwrap_or_default());
            }
            all
        })
    }

    /// Why step `k` of stage `si` (record digest `digest`) has no usable result: `parents`
    /// are the records of the filesystem it works on (none on scratch), `sources` those of
    /// what it copies from, `found` the records with its key.
    #[allow(clippy::too_many_arguments)]
    fn explain_miss(
        &mut self,
        si: usize,
        stage: &PlannedStage,
        k: usize,
        digest: &Digest,
        parents: &[RecordIdx],
        sources: &[RecordIdx],
        found: &[RecordIdx],
        no_cache: bool,
    ) -> String {
        if self.request.no_cache {
            return "--no-cache was given".to_owned();
        }
        if no_cache {
            return format!("--no-cache-filter {} was given", stage.name);
        }
        if self.n_source_records == 0 {
            return if self.services.source_names.len() <= 1 {
                "no cache source given (and this machine has built nothing yet)".to_owned()
            } else {
                "the cache sources hold no records".to_owned()
            };
        }
        if !found.is_empty() {
            return match self.last_unusable.take() {
                Some(blob) => format!(
                    "the cache has this step, but its result's blob {blob} is missing or unusable"
                ),
                None => "the cache has this step's record but not its result (a mode=min export keeps only the final stage's results)".to_owned(),
            };
        }
        let n_sources = self.n_source_records;
        let from_sources = |r: &RecordIdx| *r < n_sources;
        let known_parents: Vec<RecordIdx> = parents.iter().copied().filter(from_sources).collect();
        if !parents.is_empty() && known_parents.is_empty() {
            return match (&stage.base, k == 0) {
                (Base::Image(_) | Base::Context(_), true) => self.explain_base(si, stage),
                _ => "the parent step missed".to_owned(),
            };
        }
        // The records of the sources this step could have matched: those following the same
        // parent, or on scratch those with the same key.
        let siblings: Vec<RecordIdx> = (0..n_sources)
            .filter(|&idx| {
                let record = self.graph.record(idx);
                if known_parents.is_empty() {
                    &record.digest == digest
                } else {
                    record
                        .inputs
                        .iter()
                        .flatten()
                        .any(|l| known_parents.contains(&l.record))
                }
            })
            .collect();
        if !sources.is_empty() && !sources.iter().any(from_sources) {
            let same_op: Vec<RecordIdx> = siblings
                .iter()
                .copied()
                .filter(|&r| &self.graph.record(r).digest == digest)
                .collect();
            let ours = self.graph.record(sources[0]).digest.to_string();
            match self.facts.get(&ours).cloned() {
                // Same instruction, other files: name them.
                Some(ours) if !ours.files.is_empty() || ours.many_files => {
                    let theirs: Vec<Facts> = same_op
                        .iter()
                        .flat_map(|&r| self.graph.record(r).inputs.clone())
                        .flatten()
                        .map(|l| self.graph.record(l.record).digest.to_string())
                        .collect::<Vec<_>>()
                        .into_iter()
                        .filter_map(|d| self.source_facts().get(&d).cloned())
                        .filter(|f| !f.files.is_empty() || f.many_files)
                        .collect();
                    if !same_op.is_empty() {
                        return match theirs
                            .iter()
                            .find_map(|t| explain::file_differences(&ours, t))
                        {
                            Some(paths) => {
                                format!("the content of the files it copies differs: {paths}")
                            }
                            None => "the content of the files it copies differs".to_owned(),
                        };
                    }
                }
                _ => return "what it copies from (another stage or image) changed".to_owned(),
            }
        }
        let ours = self
            .facts
            .get(&digest.to_string())
            .cloned()
            .unwrap_or_default();
        let candidates: Vec<RecordIdx> = if known_parents.is_empty() {
            (0..n_sources).collect()
        } else {
            siblings.clone()
        };
        let mut nearest: Option<Vec<String>> = None;
        let mut with_facts = 0;
        for &candidate in &candidates {
            let candidate_digest = self.graph.record(candidate).digest.to_string();
            let Some(theirs) = self.source_facts().get(&candidate_digest).cloned() else {
                continue;
            };
            if theirs.op.is_none() {
                continue;
            }
            with_facts += 1;
            let diffs = explain::step_differences(&ours, &theirs);
            if nearest.as_ref().is_none_or(|n| diffs.len() < n.len()) {
                nearest = Some(diffs);
            }
        }
        match nearest {
            Some(diffs) if !diffs.is_empty() => format!(
                "this step's own key is new; the nearest record differs in {}",
                diffs.join(", ")
            ),
            Some(_) => "this step's own key is new; the nearest record has the same command, env, workdir and user (another input differs)".to_owned(),
            None if candidates.is_empty() => {
                "this step's own key is new: no record in the sources follows its parent step"
                    .to_owned()
            }
            None => format!(
                "this step's own key is new; the {} records it could have matched carry no facts to compare (made by another builder)",
                candidates.len() - with_facts
            ),
        }
    }

    /// Why the first step on an image base missed: the sources know another digest of it, or
    /// nothing of it.
    fn explain_base(&mut self, si: usize, stage: &PlannedStage) -> String {
        let ours: Vec<String> = self.stages[si]
            .fs
            .records
            .iter()
            .map(|&r| self.graph.record(r).digest.to_string())
            .collect();
        let now = ours
            .iter()
            .find_map(|d| self.facts.get(d))
            .and_then(|f| f.base.clone());
        let cached = self
            .source_facts()
            .values()
            .filter_map(|f| f.base.clone())
            .find(|b| Some(b) != now.as_ref());
        match (cached, now) {
            (Some(old), Some(now)) => format!(
                "the base image digest differs: this build uses {now}, the cache was made on {old}"
            ),
            _ => format!(
                "no source holds any record of this stage's base ({})",
                stage.from_display
            ),
        }
    }

    fn source_name(&self, source: SourceId) -> String {
        self.services
            .source_names
            .get(source as usize)
            .cloned()
            .unwrap_or_else(|| "local".to_owned())
    }

    /// Computes the key of step `k` of stage `si`, looks it up, and either takes the hit,
    /// leaves it pending, or runs it.
    async fn resolve_step(
        &mut self,
        si: usize,
        stage: &PlannedStage,
        k: usize,
        step: &Step,
    ) -> Result<(), Error> {
        let name = step_name(stage, step);
        let started = Instant::now();
        let scratch = self.stages[si].fs.records.is_empty();
        let has_src = matches!(&step.op, Op::Copy(copy)
            if copy.sources.iter().any(|s| matches!(s, CopySource::Path(_))));
        let mounts_key = match &step.op {
            Op::Run { mounts, .. } if !mounts.is_empty() => {
                let keys = self.mount_keys(mounts, &name).await?;
                serde_json::to_vec(&keys).map_err(|err| Error::other(err.to_string()))?
            }
            _ => Vec::new(),
        };
        let Some(sop) = keys::step_op(step, scratch, has_src, &self.request.add_hosts, &mounts_key)
        else {
            // `WORKDIR /`: BuildKit makes no op of it; the filesystem is unchanged.
            self.report_no_op(si, k, name, started);
            return Ok(());
        };
        let extra = self.step_extra(step, &name, &sop).await?;
        let digest = keys::record_digest(&sop.map.digest, 0);
        tracing::debug!(step = %name, record = %digest, buildkit = sop.buildkit, "step key");
        let selector = |i: usize| {
            sop.map.deps[i]
                .selector
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_default()
        };
        let mut inputs: Vec<Vec<Link>> = vec![Vec::new(); sop.map.deps.len()];
        if let Some(d) = sop.dest {
            inputs[d] = self.stages[si]
                .fs
                .records
                .iter()
                .map(|&record| Link {
                    selector: selector(d),
                    record,
                })
                .collect();
        }
        if let Some(src) = sop.src {
            inputs[src] = self.source_links(&extra, selector(src));
        }
        for input in &sop.mount_inputs {
            inputs[input.index] = self
                .mount_input_links(input, &sop.map.deps[input.index], &name)
                .await?;
        }
        for mkfile in &sop.mkfiles {
            let record = self.root_record(mkfile.record.clone());
            let mut links = vec![Link {
                selector: selector(mkfile.index),
                record,
            }];
            if let Some(selectors) = &sop.map.deps[mkfile.index].content {
                let mut tree = mkfile.tree.clone();
                let checksums = selectors
                    .iter()
                    .map(|sel| tree.checksum(sel))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| step_error(&name, step.line, err.to_string()))?;
                links.push(link(self.root_record(keys::content_record(&checksums))));
            }
            inputs[mkfile.index] = links;
        }
        let mut linked_copies = Vec::new();
        if let Some(copy_map) = &sop.linked_copy {
            // COPY --link: the copy's own record (found, or made without a result), then the
            // merge links to it.
            let copy_selector = copy_map.deps[0]
                .selector
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_default();
            let copy_inputs = vec![self.source_links(&extra, copy_selector)];
            let copy_digest = keys::record_digest(&copy_map.digest, 0);
            let mut copies = self.graph.find_links(&copy_digest, &copy_inputs);
            if copies.is_empty() {
                copies.push(self.graph.add_record(copy_digest, copy_inputs));
            }
            inputs[1] = copies.iter().copied().map(link).collect();
            linked_copies = copies;
        }
        let found = self.graph.find_links(&digest, &inputs);
        self.record_facts(step, &digest, &extra);
        let no_cache = self.request.no_cache
            || self
                .request
                .no_cache_filter
                .iter()
                .any(|n| n.to_lowercase() == stage.name);
        let mut hit = if no_cache {
            None
        } else {
            self.best_hit(&found).await
        };
        let mut also_records = Vec::new();
        // COPY --from a stage or image: BuildKit's content ("slow") key of exactly the files it
        // copies. Looked up when the stage's record misses (the stage changed: identical files
        // keep the step cached), and linked into a new record as BuildKit does.
        if hit.is_none()
            && found.is_empty()
            && !no_cache
            && let (Op::Copy(copy), Extra::Stage(_) | Extra::Image(_), Some(src)) =
                (&step.op, &extra, sop.src)
            && let Some(selectors) = sop.map.deps[src].content.clone()
        {
            let source = match extra {
                Extra::Stage(j) => Target::Stage(j),
                Extra::Image(i) => Target::Image(i),
                _ => unreachable!("matched above"),
            };
            let src_root = self.ensure_fs(source).await?;
            let selection = self.copy_selection(&src_root, copy, &name, step.line)?;
            let checksums = keys::content_checksums(&selection, &selectors, false)
                .map_err(|err| step_error(&name, step.line, err))?;
            let content = self.root_record(keys::content_record(&checksums));
            inputs[src].push(link(content));
            let mut by_content_query = inputs.clone();
            by_content_query[src] = vec![link(content)];
            let by_content = self.graph.find_links(&digest, &by_content_query);
            if let Some((record, chain, source)) = self.best_hit(&by_content).await {
                // Reachable by definition next time, too.
                let linked = self.graph.add_record(digest.clone(), inputs.clone());
                if linked != record {
                    self.add_result(linked, &chain);
                    also_records.push(linked);
                }
                // Children of the matched record are what later steps find.
                hit = Some((record, chain, source));
            }
        }
        let mut slot = Slot {
            name: name.clone(),
            digest,
            extra,
            records: found.clone(),
            linked_copies,
            state: SlotState::Pending,
            duration: Duration::ZERO,
            reported: false,
            miss: None,
        };
        if let Some((record, chain, source)) = hit {
            slot.state = SlotState::Hit(source);
            slot.records = vec![record];
            slot.reported = true;
            self.last_hit_source = Some(source);
            let vertex = format!("step:{si}:{k}");
            self.progress().event(Event::Start {
                vertex: vertex.clone(),
                name: name.clone(),
            });
            self.progress().event(Event::Cached { vertex });
            self.reports.push(StepReport {
                name,
                cached: true,
                cache_source: Some(self.source_name(source)),
                duration_ms: started.elapsed().as_millis() as u64,
                finished_at: Instant::now(),
                miss: None,
                key: Some(slot.digest.clone()),
            });
            let fs = &mut self.stages[si].fs;
            fs.records = vec![record];
            fs.records.extend(also_records);
            fs.chain = chain;
            fs.pending.clear();
            if let Some(dir) = fs.rootfs.take() {
                remove_dir(&dir);
            }
            self.slots.insert((si, k), slot);
            return Ok(());
        }
        if hit.is_none() {
            let records_of = |input: Option<usize>| -> Vec<RecordIdx> {
                input
                    .map(|i| inputs[i].iter().map(|l| l.record).collect())
                    .unwrap_or_default()
            };
            let (parents, sources) = (records_of(sop.dest), records_of(sop.src));
            slot.miss = Some(self.explain_miss(
                si,
                stage,
                k,
                &slot.digest,
                &parents,
                &sources,
                &found,
                no_cache,
            ));
        }
        if !found.is_empty() && !no_cache {
            // Known key without a result: run only if something needs this filesystem.
            self.stages[si].fs.records = found;
            self.stages[si].fs.pending.push((si, k));
            self.slots.insert((si, k), slot);
            return Ok(());
        }
        // A miss: create the record and run the step now.
        let record = self.graph.add_record(slot.digest.clone(), inputs);
        slot.records = vec![record];
        self.stages[si].fs.records = vec![record];
        self.stages[si].fs.pending.push((si, k));
        self.slots.insert((si, k), slot);
        self.ensure_fs(Target::Stage(si)).await?;
        Ok(())
    }

    /// What a COPY reads besides the stage's filesystem: for the context or a directory, the
    /// selection and its content key (BuildKit's, over the selectors of the op's source input).
    async fn step_extra(
        &mut self,
        step: &Step,
        name: &str,
        sop: &keys::StepOp,
    ) -> Result<Extra, Error> {
        let Op::Copy(copy) = &step.op else {
            return Ok(Extra::None);
        };
        let (paths, includes) = copy_paths(copy).map_err(|err| step_error(name, step.line, err))?;
        if paths.is_empty() {
            return Ok(Extra::None);
        }
        let dir_source = |root: PathBuf, use_ignore: bool| (root, use_ignore);
        let (src_root, use_ignore) = match &copy.from {
            _ if !copy.downloads.is_empty() => {
                let dir = self.new_dir("download")?;
                for download in &copy.downloads {
                    self.download(download, copy.checksum.as_deref(), &dir, name, step.line)
                        .await?;
                }
                dir_source(dir, false)
            }
            CopyFrom::Context => dir_source(self.request.context.clone(), true),
            CopyFrom::Stage(j) => return Ok(Extra::Stage(*j)),
            CopyFrom::Image(reference) => {
                let idx = self.image_fs(reference, false).await?;
                return Ok(Extra::Image(idx));
            }
            CopyFrom::NamedContext(ctx_name) => {
                match self.request.named_contexts.get(ctx_name).cloned() {
                    Some(NamedContext::Dir(dir)) => dir_source(dir, false),
                    Some(NamedContext::OciLayout { .. }) => {
                        let idx = self.image_fs(ctx_name, true).await?;
                        return Ok(Extra::Image(idx));
                    }
                    None => {
                        return Err(step_error(
                            name,
                            step.line,
                            format!("unknown build context {ctx_name}"),
                        ));
                    }
                }
            }
        };
        let ignore = use_ignore.then_some(&self.ignore);
        let exclude =
            exclude_matcher(&copy.exclude).map_err(|err| Error::other(format!("{name}: {err}")))?;
        // A client sends its files as owned by 0:0 (BuildKit's client resets owners).
        let selection = context::select_including(
            &src_root,
            &paths,
            &includes.iter().map(Option::as_ref).collect::<Vec<_>>(),
            ignore,
            exclude.as_ref(),
            &mut self.hashes,
            true,
        )
        .map_err(|err| Error::other(format!("{name}: {err}")))?;
        parents_found(copy, &selection).map_err(|err| step_error(name, step.line, err))?;
        let selectors = match (&sop.linked_copy, sop.src) {
            (Some(copy), _) => copy.deps[0].content.as_ref(),
            (None, Some(i)) => sop.map.deps[i].content.as_ref(),
            (None, None) => None,
        };
        let content = match selectors {
            Some(selectors) => {
                let checksums = keys::content_checksums(&selection, selectors, true)
                    .map_err(|err| step_error(name, step.line, err))?;
                keys::content_record(&checksums)
            }
            // A key of our own: the selection's own checksum stands for the content.
            None => keys::record_digest(&selection.checksum, -1),
        };
        let record = self.root_record(content);
        Ok(Extra::Content {
            record,
            src_root,
            selection,
        })
    }

    /// Downloads an `ADD <url>` source into `dir` (mode 0600, as BuildKit's http source),
    /// checking `checksum` when given.
    async fn download(
        &mut self,
        download: &dockerfile::Download,
        checksum: Option<&str>,
        dir: &Path,
        name: &str,
        line: usize,
    ) -> Result<(), Error> {
        let url = &download.url;
        let Some(fetcher) = self.services.urls else {
            return Err(step_error(
                name,
                line,
                format!("ADD {url}: downloads are not available here"),
            ));
        };
        let file = dir.join(&download.file_name);
        let vertex = self.active.as_ref().map(|(v, _)| v.clone());
        let started = Instant::now();
        fetcher
            .fetch(url, &file)
            .await
            .map_err(|err| step_error(name, line, format!("downloading {url}: {err}")))?;
        let path = file.clone();
        let digest = blocking(move || -> std::io::Result<Digest> {
            use std::io::Read;
            let mut reader = std::fs::File::open(&path)?;
            let mut hasher = cache_core::digest::Hasher::new();
            let mut buf = vec![0; 256 * 1024];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            Ok(hasher.finish())
        })
        .await?
        .map_err(|err| step_error(name, line, format!("reading the download of {url}: {err}")))?;
        if let Some(want) = checksum
            && digest.to_string() != want
        {
            return Err(step_error(
                name,
                line,
                format!(
                    "ADD --checksum={want}: {url} has digest {digest}; fix the checksum or the URL"
                ),
            ));
        }
        if let Some(vertex) = vertex {
            self.progress().event(Event::Status {
                vertex,
                text: format!("downloading {url} ({digest})"),
                done: Some(started.elapsed()),
            });
        }
        Ok(())
    }

    /// Links to what a RUN bind mount reads: the content record of the mounted paths of a
    /// context (whose own key BuildKit never exports), or a stage's or image's records with the
    /// mount's selector.
    async fn mount_input_links(
        &mut self,
        input: &keys::MountInput,
        dep: &cache_llb::Dep,
        name: &str,
    ) -> Result<Vec<Link>, Error> {
        let selector = dep
            .selector
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default();
        let (dir, use_ignore) = match &input.from {
            CopyFrom::Context => (self.request.context.clone(), true),
            CopyFrom::Stage(j) => {
                return Ok(self.source_links(&Extra::Stage(*j), selector));
            }
            CopyFrom::Image(reference) => {
                let idx = self.image_fs(reference, false).await?;
                return Ok(self.source_links(&Extra::Image(idx), selector));
            }
            CopyFrom::NamedContext(ctx_name) => {
                match self.request.named_contexts.get(ctx_name).cloned() {
                    Some(NamedContext::Dir(dir)) => (dir, false),
                    Some(NamedContext::OciLayout { .. }) => {
                        let idx = self.image_fs(ctx_name, true).await?;
                        return Ok(self.source_links(&Extra::Image(idx), selector));
                    }
                    None => {
                        return Err(Error::other(format!(
                            "{name}: unknown build context {ctx_name}"
                        )));
                    }
                }
            }
        };
        let Some(selectors) = &dep.content else {
            return Ok(Vec::new());
        };
        let sources: Vec<String> = input
            .sources
            .iter()
            .map(|s| match s.trim_start_matches('/') {
                "" => ".".to_owned(),
                rel => rel.to_owned(),
            })
            .collect();
        let ignore = use_ignore.then_some(&self.ignore);
        let selection = context::select_with(&dir, &sources, ignore, None, &mut self.hashes, true)
            .map_err(|err| Error::other(format!("{name}: --mount source: {err}")))?;
        let checksums = keys::content_checksums(&selection, selectors, true)
            .map_err(|err| Error::other(format!("{name}: {err}")))?;
        let record = self.root_record(keys::content_record(&checksums));
        Ok(vec![link(record)])
    }

    /// Links to what a COPY reads: a content record without selector, or a stage's or image's
    /// records with `selector`.
    fn source_links(&self, extra: &Extra, selector: String) -> Vec<Link> {
        match extra {
            Extra::None => Vec::new(),
            Extra::Content { record, .. } => vec![link(*record)],
            Extra::Stage(j) => self.stages[*j]
                .fs
                .records
                .iter()
                .map(|&record| Link {
                    selector: selector.clone(),
                    record,
                })
                .collect(),
            Extra::Image(i) => self.images[*i]
                .records
                .iter()
                .map(|&record| Link {
                    selector: selector.clone(),
                    record,
                })
                .collect(),
        }
    }

    /// Reports a step that changes nothing and has no op (`WORKDIR /`) as done from cache.
    fn report_no_op(&mut self, si: usize, k: usize, name: String, started: Instant) {
        let vertex = format!("step:{si}:{k}");
        self.progress().event(Event::Start {
            vertex: vertex.clone(),
            name: name.clone(),
        });
        self.progress().event(Event::Cached { vertex });
        self.reports.push(StepReport {
            name,
            cached: true,
            cache_source: None,
            duration_ms: started.elapsed().as_millis() as u64,
            finished_at: Instant::now(),
            miss: None,
            key: None,
        });
    }

    /// An image used by `COPY --from`, resolved once.
    async fn image_fs(&mut self, reference: &str, is_context: bool) -> Result<usize, Error> {
        if let Some(&idx) = self.image_index.get(reference) {
            return Ok(idx);
        }
        let img = if is_context {
            self.resolve_context_image(reference)?
                .ok_or_else(|| Error::other(format!("build context {reference} is not an image")))?
        } else {
            self.resolve_image(reference).await?
        };
        let records = self.image_roots(&img);
        self.images.push(Fs {
            records,
            chain: img.layers.clone(),
            pending: Vec::new(),
            rootfs: None,
        });
        let idx = self.images.len() - 1;
        self.image_index.insert(reference.to_owned(), idx);
        Ok(idx)
    }

    fn fs_mut(&mut self, target: Target) -> &mut Fs {
        match target {
            Target::Stage(si) => &mut self.stages[si].fs,
            Target::Image(i) => &mut self.images[i],
        }
    }

    /// Materializes the filesystem of `target`: unpacks its known chain and runs what is
    /// pending on top. Returns the directory.
    fn ensure_fs(&mut self, target: Target) -> BoxFuture<'_, Result<PathBuf, Error>> {
        Box::pin(async move {
            // Pending steps that ran meanwhile (through another stage) shorten the list.
            let mut ran_upto = None;
            {
                let fs = self.fs_mut(target);
                let pending = fs.pending.clone();
                for (pos, key) in pending.iter().enumerate() {
                    if matches!(self.slots.get(key).map(|s| s.state), Some(SlotState::Ran)) {
                        ran_upto = Some(pos);
                    }
                }
            }
            if let Some(pos) = ran_upto {
                let key = self.fs_mut(target).pending[pos];
                let record = self.slots[&key].records[0];
                let chain = match self.graph.best_result(record) {
                    Some(result) => self
                        .graph
                        .chain_blobs(result.layer)
                        .into_iter()
                        .cloned()
                        .collect(),
                    // A step that ran on an empty base and changed nothing has no result.
                    None => self.fs_mut(target).chain.clone(),
                };
                let fs = self.fs_mut(target);
                fs.chain = chain;
                fs.pending.drain(..=pos);
                if let Some(dir) = fs.rootfs.take() {
                    remove_dir(&dir);
                }
            }
            let dir = match self.fs_mut(target).rootfs.clone() {
                Some(dir) => dir,
                None => {
                    let chain = self.fs_mut(target).chain.clone();
                    let dir = self.new_dir("rootfs")?;
                    let vertex = self.current_vertex(target);
                    let started = Instant::now();
                    self.unpack_shared(target, &chain, &dir, &vertex).await?;
                    if vertex == "unpack" {
                        self.progress().event(Event::Done {
                            vertex,
                            duration: started.elapsed(),
                        });
                    }
                    self.fs_mut(target).rootfs = Some(dir.clone());
                    dir
                }
            };
            while let Some(&key) = self.fs_mut(target).pending.first() {
                self.execute(key, target, &dir).await?;
                self.fs_mut(target).pending.remove(0);
            }
            Ok(dir)
        })
    }

    /// The vertex that unpacking `target` is part of, started so that displays know its name:
    /// the first step pending on it, else the step being resolved or run.
    fn current_vertex(&mut self, target: Target) -> String {
        let key = self.fs_mut(target).pending.first().copied();
        let (vertex, name) = match key {
            Some((s, k)) => (format!("step:{s}:{k}"), self.slots[&(s, k)].name.clone()),
            None => match &self.active {
                Some(active) => active.clone(),
                None => ("unpack".to_owned(), "unpacking layers".to_owned()),
            },
        };
        self.progress().event(Event::Start {
            vertex: vertex.clone(),
            name,
        });
        vertex
    }

    /// Unpacks the filesystem of stage `target` into `dest`: into a directory beside it first
    /// (or in the work directory when its parent is not writable), renamed into place when
    /// `dest` is absent or empty, else laid over it.
    async fn unpack_output(&mut self, target: usize, dest: &Path) -> Result<(), Error> {
        if !self.stages[target].fs.pending.is_empty() {
            self.ensure_fs(Target::Stage(target)).await?;
        }
        let fail = |what: &str, path: &Path, err: &dyn std::fmt::Display| {
            Error::other(format!("{what} {}: {err}", path.display()))
        };
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|err| fail("creating", &parent, &err))?;
        let staging = tempfile::Builder::new()
            .prefix(".buildcache-output-")
            .tempdir_in(&parent)
            .or_else(|_| tempfile::tempdir_in(&self.request.work_dir))
            .map_err(|err| fail("creating a directory in", &parent, &err))?;
        let vertex = "output:local".to_owned();
        let started = Instant::now();
        self.progress().event(Event::Start {
            vertex: vertex.clone(),
            name: "exporting to client directory".into(),
        });
        let chain = self.stages[target].fs.chain.clone();
        self.unpack(&chain, staging.path(), &vertex, false).await?;
        // A new directory gets the usual mode, not the private one of a temporary directory.
        let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
        std::fs::set_permissions(staging.path(), mode)
            .map_err(|err| fail("setting the mode of", staging.path(), &err))?;
        let empty = match std::fs::read_dir(dest) {
            Ok(mut entries) => entries.next().is_none(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => true,
            Err(err) => return Err(fail("reading", dest, &err)),
        };
        let moved = empty && std::fs::rename(staging.path(), dest).is_ok();
        if !moved {
            std::fs::create_dir_all(dest).map_err(|err| fail("creating", dest, &err))?;
            let (top, dest, tmp) = (
                staging.path().to_path_buf(),
                dest.to_path_buf(),
                self.request.work_dir.clone(),
            );
            blocking(move || lay_over(&top, &dest, &tmp))
                .await?
                .map_err(|err| Error::other(format!("writing the output: {err}")))?;
        }
        self.progress().event(Event::Done {
            vertex,
            duration: started.elapsed(),
        });
        Ok(())
    }

    /// Unpacks `chain` into the empty `dir` for `target`. When another target still to be
    /// materialized runs steps on the same chain (two stages `FROM` one base), the unpacked tree
    /// is copied aside once and that copy serves the other target instead of a second unpack.
    async fn unpack_shared(
        &mut self,
        target: Target,
        chain: &[Descriptor],
        dir: &Path,
        vertex: &str,
    ) -> Result<(), Error> {
        let key: Vec<Digest> = chain.iter().map(|desc| desc.digest.clone()).collect();
        let shared = !chain.is_empty() && self.others_waiting_on(target, chain);
        let pristine = self.unpacked.get(&key).cloned();
        // A stage that ended on this chain holds it already, and no step changes it any more.
        let finished = match pristine {
            None if !chain.is_empty() => self.finished_dir(chain),
            _ => None,
        };
        if (shared || pristine.is_some() || finished.is_some()) && self.overlays_supported() {
            let lower = match pristine.or(finished) {
                Some(lower) => lower,
                None => {
                    let lower = self.new_dir("lower")?;
                    self.unpack(chain, &lower, vertex, true).await?;
                    self.unpacked.insert(key, lower.clone());
                    lower
                }
            };
            let started = Instant::now();
            let (upper, work) = (self.new_dir("upper")?, self.new_dir("overlay-work")?);
            match layer::overlay::mount(&lower, &upper, &work, dir) {
                Ok(()) => self.status_done(vertex, "mounting the unpacked base (overlay)", started),
                Err(err) => {
                    // Overlays stack two deep at most; a deeper one gets a copy.
                    tracing::debug!("overlay on {} refused ({err}): copying", dir.display());
                    clone_unpacked(lower, dir.to_path_buf()).await?;
                    self.status_done(
                        vertex,
                        "copying the base unpacked for another stage",
                        started,
                    );
                }
            }
            return Ok(());
        }
        if let Some(finished) = finished {
            let started = Instant::now();
            clone_unpacked(finished, dir.to_path_buf()).await?;
            self.status_done(vertex, "copying the filesystem of the base stage", started);
            return Ok(());
        }
        if let Some(pristine) = pristine {
            let started = Instant::now();
            let text = if shared {
                clone_unpacked(pristine, dir.to_path_buf()).await?;
                "copying the base unpacked for another stage"
            } else {
                self.unpacked.remove(&key);
                let to = dir.to_path_buf();
                blocking(move || std::fs::rename(&pristine, &to))
                    .await?
                    .map_err(|err| Error::other(format!("moving an unpacked base: {err}")))?;
                "reusing the base unpacked for another stage"
            };
            self.status_done(vertex, text, started);
            return Ok(());
        }
        self.unpack(chain, dir, vertex, true).await?;
        if shared {
            let started = Instant::now();
            let pristine = self.new_dir("unpacked")?;
            clone_unpacked(dir.to_path_buf(), pristine.clone()).await?;
            self.unpacked.insert(key, pristine);
            self.status_done(
                vertex,
                "copying the unpacked base for another stage",
                started,
            );
        }
        Ok(())
    }

    /// The materialized directory of a stage whose filesystem is `chain` and stays so: every
    /// step of the stage was resolved and nothing is pending on it.
    fn finished_dir(&self, chain: &[Descriptor]) -> Option<PathBuf> {
        let plan = &self.plan.stages;
        self.stages.iter().enumerate().find_map(|(si, state)| {
            let fs = &state.fs;
            let done = (0..plan[si].steps.len()).all(|k| self.slots.contains_key(&(si, k)));
            let finished = done && fs.pending.is_empty() && fs.chain == chain;
            fs.rootfs.clone().filter(|_| finished)
        })
    }

    /// Whether overlays can be mounted in the work directory, probed once per build.
    fn overlays_supported(&mut self) -> bool {
        *self
            .overlays
            .get_or_insert_with(|| layer::overlay::supported(&self.request.work_dir))
    }

    /// A finished status line of `vertex`, timed from `started`.
    fn status_done(&self, vertex: &str, text: &str, started: Instant) {
        self.progress().event(Event::Status {
            vertex: vertex.to_owned(),
            text: text.to_owned(),
            done: Some(started.elapsed()),
        });
    }

    /// Whether a target other than `target`, not materialized yet, is on `chain` with steps to
    /// run or still to look up: a started stage or image with pending steps or steps not looked
    /// up yet, or a stage not started yet whose base is a started stage without steps (two
    /// stages `FROM` one `runtime` stage).
    fn others_waiting_on(&self, target: Target, chain: &[Descriptor]) -> bool {
        let plan = &self.plan.stages;
        let unresolved =
            |si: usize| (0..plan[si].steps.len()).any(|k| !self.slots.contains_key(&(si, k)));
        let stages = self.stages.iter().enumerate();
        let stages = stages.map(|(i, s)| (Target::Stage(i), &s.fs, unresolved(i)));
        let images = self.images.iter().enumerate();
        let images = images.map(|(i, fs)| (Target::Image(i), fs, false));
        let started = stages.chain(images).any(|(other, fs, unresolved)| {
            other != target
                && fs.rootfs.is_none()
                && (unresolved || !fs.pending.is_empty())
                && fs.chain == chain
        });
        let later = (self.stages.len()..plan.len()).any(|si| {
            let mut cur = si;
            while let dockerfile::Base::Stage(j) = plan[cur].base {
                if !plan[j].steps.is_empty() {
                    return false;
                }
                if let Some(started) = self.stages.get(j) {
                    return !plan[si].steps.is_empty() && started.fs.chain == chain;
                }
                cur = j;
            }
            false
        });
        started || later
    }

    /// Unpacks `chain` into `dir`, fetching blobs into the root store first; `report` shows
    /// each layer in the progress.
    async fn unpack(
        &mut self,
        chain: &[Descriptor],
        dir: &Path,
        vertex: &str,
        report: bool,
    ) -> Result<(), Error> {
        for desc in chain {
            if !self.blobs.in_root(desc).await {
                let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let id = desc.digest.to_string();
                let fetch = self.blobs.fetch_to_root_counted(desc, &counter);
                let fetched =
                    track_transfer(self.progress(), vertex, &id, desc.size, &counter, fetch)
                        .await
                        .map_err(|err| Error::BadBlob {
                            digest: desc.digest.clone(),
                            message: err.to_string(),
                        })?;
                if fetched {
                    self.blobs_fetched += 1;
                }
            }
            self.announce_layer(desc);
            let blob = self
                .blobs
                .root
                .read(&desc.digest)
                .await
                .map_err(|err| Error::other(format!("reading layer {}: {err}", desc.digest)))?
                .ok_or_else(|| {
                    Error::other(format!(
                        "layer {} vanished from the root store",
                        desc.digest
                    ))
                })?;
            let started = Instant::now();
            let reader = blocking_reader(blob.verified(desc.digest.clone()));
            let media_type = desc.media_type.clone();
            let root = dir.to_path_buf();
            let limits = layer::LayerLimits::for_blob(&self.request.limits, desc.size);
            // Every failure (garbage, a refused entry, a limit) makes the blob unusable: a
            // cache's results that need it become misses, an image's layer fails the build.
            blocking(move || layer::apply_layer(reader, &media_type, &root, &limits))
                .await?
                .map_err(|err| Error::BadBlob {
                    digest: desc.digest.clone(),
                    message: err.to_string(),
                })?;
            if report {
                self.progress().event(Event::Status {
                    vertex: vertex.to_owned(),
                    text: format!("extracting {}", desc.digest),
                    done: Some(started.elapsed()),
                });
            }
        }
        Ok(())
    }

    /// Runs pending slot `key` on `dir`, the materialized filesystem of `target`.
    async fn execute(
        &mut self,
        key: (usize, usize),
        target: Target,
        dir: &Path,
    ) -> Result<(), Error> {
        let (si, k) = key;
        let step = self.plan.stages[si].steps[k].clone();
        let vertex = format!("step:{si}:{k}");
        let (name, extra) = {
            let slot = &self.slots[&key];
            (slot.name.clone(), slot.extra.clone())
        };
        let started = Instant::now();
        self.progress().event(Event::Start {
            vertex: vertex.clone(),
            name: name.clone(),
        });
        if let Some(reason) = self.slots[&key].miss.clone() {
            self.progress().event(Event::Miss {
                vertex: vertex.clone(),
                reason,
            });
        }
        let before = snapshot(dir).await?;
        let previous = self.active.replace((vertex.clone(), name.clone()));
        let outcome = self.run_op(&step, &extra, dir, &vertex, &name).await;
        self.active = previous;
        if let Err(err) = outcome {
            self.progress().event(Event::Error {
                vertex,
                message: err.to_string(),
            });
            return Err(err);
        }
        // Every step that runs adds a layer, an empty one when nothing changed, as in BuildKit,
        // whose history marks every RUN, COPY, ADD and WORKDIR as a layer.
        let desc = self.make_layer(dir, before).await?;
        let fs = self.fs_mut(target);
        fs.chain.push(desc);
        let chain = fs.chain.clone();
        let record = self.slots[&key].records[0];
        self.add_result(record, &chain);
        for copy in self.slots[&key].linked_copies.clone() {
            self.add_result(copy, &chain[chain.len() - 1..]);
        }
        let duration = started.elapsed();
        self.progress().event(Event::Done { vertex, duration });
        let slot = self.slots.get_mut(&key).expect("slot exists");
        slot.state = SlotState::Ran;
        slot.duration = duration;
        slot.reported = true;
        let slot_digest = slot.digest.clone();
        let miss = self.slots[&key].miss.clone();
        self.reports.push(StepReport {
            name,
            cached: false,
            cache_source: None,
            duration_ms: duration.as_millis() as u64,
            finished_at: Instant::now(),
            miss,
            key: Some(slot_digest),
        });
        Ok(())
    }

    async fn run_op(
        &mut self,
        step: &Step,
        extra: &Extra,
        dir: &Path,
        vertex: &str,
        name: &str,
    ) -> Result<(), Error> {
        match &step.op {
            Op::Run {
                command,
                heredocs,
                mounts: run_mounts,
                network,
                security,
            } => {
                let prepared = self
                    .prepare_run(step, run_mounts, *network, *security, name)
                    .await?;
                // `RUN <<EOF` with a `#!` body runs the body as a file, as BuildKit does.
                let mut mounts = Vec::new();
                for heredoc in heredocs {
                    let Some(target) = &heredoc.mount_path else {
                        continue;
                    };
                    let dir = self.new_dir("heredoc")?;
                    let file = dir.join(&heredoc.name);
                    write_executable(&file, &heredoc.content).map_err(|err| {
                        step_error(
                            name,
                            step.line,
                            format!("writing heredoc {}: {err}", heredoc.name),
                        )
                    })?;
                    mounts.push(sandbox::Mount {
                        target: target.clone(),
                        kind: sandbox::MountKind::Bind { source: file },
                        readonly: true,
                    });
                }
                mounts.extend(prepared.mounts.iter().cloned());
                let mut env = step.env.clone();
                env.extend(prepared.env.iter().cloned());
                let spec = sandbox::RunSpec {
                    rootfs: dir.to_path_buf(),
                    argv: run_argv(step, command),
                    env,
                    cwd: step.workdir.clone(),
                    user: step.user.clone(),
                    hostname: sandbox::DEFAULT_HOSTNAME.to_owned(),
                    extra_hosts: self.request.add_hosts.clone(),
                    stdin: None,
                    network: prepared.network,
                    insecure: prepared.insecure,
                };
                let progress = self.services.progress;
                let vertex_owned = vertex.to_owned();
                let outcome = tokio::task::block_in_place(|| {
                    sandbox::run_with_mounts(&spec, &mounts, &mut |stream, bytes| {
                        progress.event(Event::Log {
                            vertex: vertex_owned.clone(),
                            stream,
                            bytes: bytes.to_vec(),
                        })
                    })
                })
                .map_err(|err| step_error(name, step.line, err.to_string()))?;
                if outcome.status != 0 {
                    return Err(Error::Step {
                        name: name.to_owned(),
                        line: step.line,
                        message: format!(
                            "process {:?} did not complete successfully: exit code: {}",
                            cut_command(&spec.argv.join(" ")),
                            outcome.status
                        ),
                        exit_code: Some(outcome.status),
                    });
                }
                Ok(())
            }
            Op::Workdir { path } => {
                let opts = CopyOptions {
                    chown: step.user.clone(),
                    keep_owner: false,
                    chmod: None,
                    extract_archives: false,
                    workdir: "/".into(),
                };
                let (root, path) = (dir.to_path_buf(), path.clone());
                let res = blocking(move || context::make_dir_all(&root, &path, &opts)).await?;
                res.map_err(|err| step_error(name, step.line, err.to_string()))?;
                Ok(())
            }
            Op::Copy(copy) => {
                let opts = CopyOptions {
                    chown: copy.chown.clone(),
                    // BuildKit keeps the owners of what COPY --from copies; the build context's
                    // files belong to 0:0.
                    keep_owner: matches!(extra, Extra::Stage(_) | Extra::Image(_)),
                    chmod: copy.chmod,
                    extract_archives: copy.is_add && copy.downloads.is_empty(),
                    workdir: step.workdir.clone(),
                };
                // COPY --link copies onto an empty filesystem, then lays that over the stage, as
                // BuildKit's merge does: missing parents are created afresh (with the copy's owner)
                // and nothing of the stage (an existing directory, a symlink) steers the copy.
                let link_dir = if copy.link {
                    Some(self.new_dir("link")?)
                } else {
                    None
                };
                let copy_root = link_dir.clone().unwrap_or_else(|| dir.to_path_buf());
                let n_sources = copy.sources.len();
                let dest = if n_sources > 1 && !copy.dest.ends_with('/') {
                    format!("{}/", copy.dest)
                } else {
                    copy.dest.clone()
                };
                let src = match extra {
                    Extra::None => None,
                    Extra::Content {
                        src_root,
                        selection,
                        ..
                    } => Some((src_root.clone(), selection.clone())),
                    Extra::Stage(j) => {
                        let src_root = self.ensure_fs(Target::Stage(*j)).await?;
                        let sel = self.copy_selection(&src_root, copy, name, step.line)?;
                        Some((src_root, sel))
                    }
                    Extra::Image(i) => {
                        let src_root = self.ensure_fs(Target::Image(*i)).await?;
                        let sel = self.copy_selection(&src_root, copy, name, step.line)?;
                        Some((src_root, sel))
                    }
                };
                if let Some((src_root, selection)) = src {
                    let (root, dest, opts) = (copy_root.clone(), dest.clone(), opts.clone());
                    blocking(move || {
                        context::copy_into(&selection, &src_root, &root, &dest, &opts)
                    })
                    .await?
                    .map_err(|err| step_error(name, step.line, err.to_string()))?;
                }
                let inline: Vec<(&String, &String)> = copy
                    .sources
                    .iter()
                    .filter_map(|s| match s {
                        CopySource::Inline { name, content } => Some((name, content)),
                        CopySource::Path(_) => None,
                    })
                    .collect();
                if !inline.is_empty() {
                    let tmp = self.new_dir("heredoc")?;
                    let mut names = Vec::new();
                    for (file, content) in inline {
                        std::fs::write(tmp.join(file), content).map_err(|err| {
                            step_error(name, step.line, format!("writing heredoc {file}: {err}"))
                        })?;
                        names.push(file.clone());
                    }
                    let selection =
                        context::select(&tmp, &names, None, &mut HashCache::in_memory())
                            .map_err(|err| step_error(name, step.line, err.to_string()))?;
                    let root = copy_root.clone();
                    let opts = CopyOptions {
                        keep_owner: false,
                        ..opts
                    };
                    let res =
                        blocking(move || context::copy_into(&selection, &tmp, &root, &dest, &opts))
                            .await?;
                    res.map_err(|err| step_error(name, step.line, err.to_string()))?;
                }
                if let Some(link_dir) = link_dir {
                    let (root, tmp_dir) = (dir.to_path_buf(), self.request.work_dir.clone());
                    blocking(move || lay_over(&link_dir, &root, &tmp_dir))
                        .await?
                        .map_err(|err| step_error(name, step.line, err.to_string()))?;
                }
                Ok(())
            }
        }
    }

    fn copy_selection(
        &mut self,
        src_root: &Path,
        copy: &dockerfile::CopyOp,
        name: &str,
        line: usize,
    ) -> Result<context::Selection, Error> {
        let (paths, includes) = copy_paths(copy).map_err(|err| step_error(name, line, err))?;
        let exclude = exclude_matcher(&copy.exclude).map_err(|err| step_error(name, line, err))?;
        let selection = context::select_including(
            src_root,
            &paths,
            &includes.iter().map(Option::as_ref).collect::<Vec<_>>(),
            None,
            exclude.as_ref(),
            &mut self.hashes,
            false,
        )
        .map_err(|err| step_error(name, line, err.to_string()))?;
        parents_found(copy, &selection).map_err(|err| step_error(name, line, err))?;
        Ok(selection)
    }

    /// Writes the layer of what changed in `dir` since `before` into the root store (an empty
    /// layer when nothing did).
    async fn make_layer(&mut self, dir: &Path, before: Snapshot) -> Result<Descriptor, Error> {
        let root = dir.to_path_buf();
        let tmp_dir = self.request.work_dir.clone();
        let compression = self.request.compression;
        let (file, info) = blocking(
            move || -> Result<(tempfile::NamedTempFile, layer::LayerInfo), layer::Error> {
                let changes = layer::diff(&before, &root)?;
                layer::write_layer_file(&root, &changes, compression, &tmp_dir)
            },
        )
        .await?
        .map_err(|err| Error::other(format!("writing a layer: {err}")))?;
        let digest: Digest = info.digest.parse().map_err(|_| {
            Error::other(format!(
                "layer writer gave an invalid digest {}",
                info.digest
            ))
        })?;
        let mut desc = Descriptor::new(info.media_type.clone(), digest, info.size);
        desc.annotations.insert(
            annotation::CREATED_AT.to_owned(),
            cache_core::config::go_time::format(&self.request.now),
        );
        desc.annotations
            .insert(annotation::UNCOMPRESSED.to_owned(), info.diff_id.clone());
        let blob = file_blob(file.path()).await.map_err(|err| {
            Error::other(format!("reading layer {}: {err}", file.path().display()))
        })?;
        self.blobs
            .root
            .write(&desc, blob)
            .await
            .map_err(|err| Error::other(format!("storing layer {}: {err}", desc.digest)))?;
        self.announce_layer(&desc);
        Ok(desc)
    }

    /// Tells [`Services::on_layer`] that `desc` is in the root store.
    fn announce_layer(&self, desc: &Descriptor) {
        if let Some(on_layer) = self.services.on_layer {
            on_layer(desc);
        }
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

/// The paths a COPY or ADD selects, and for `COPY --parents` the include matcher of each:
/// the directory before a source's `/./` pivot (else the root), filtered by the rest.
fn copy_paths(
    copy: &dockerfile::CopyOp,
) -> Result<(Vec<String>, Vec<Option<dockerfile::IgnoreMatcher>>), String> {
    let mut paths = Vec::new();
    let mut includes = Vec::new();
    for source in &copy.sources {
        let CopySource::Path(path) = source else {
            continue;
        };
        if copy.parents {
            let split = dockerfile::ParentsSource::of(path);
            let include = dockerfile::IgnoreMatcher::from_patterns([split.pattern.as_str()])
                .map_err(|err| format!("COPY --parents {path}: {}", err.message()))?;
            paths.push(split.dir);
            includes.push(Some(include));
        } else {
            paths.push(path.clone());
            includes.push(None);
        }
    }
    Ok((paths, includes))
}

/// `COPY --parents` without wildcards must copy something for each source (BuildKit's
/// required paths).
fn parents_found(copy: &dockerfile::CopyOp, selection: &context::Selection) -> Result<(), String> {
    if !copy.parents {
        return Ok(());
    }
    let paths = copy.sources.iter().filter_map(|s| match s {
        CopySource::Path(p) => Some(p),
        CopySource::Inline { .. } => None,
    });
    for (path, selected) in paths.zip(&selection.sources) {
        let split = dockerfile::ParentsSource::of(path);
        let empty = selected.matches.iter().all(|m| m.entries.len() <= 1);
        if let (Some(required), true) = (split.required, empty) {
            return Err(format!(
                "COPY --parents {path}: {required} not found; check the path (relative to the build context or the --from source)"
            ));
        }
    }
    Ok(())
}

/// The matcher of `COPY --exclude` patterns, `None` without any.
fn exclude_matcher(patterns: &[String]) -> Result<Option<dockerfile::IgnoreMatcher>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    dockerfile::IgnoreMatcher::from_patterns(patterns.iter().map(String::as_str))
        .map(Some)
        .map_err(|err| format!("--exclude: {}", err.message()))
}

/// What a filesystem belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Stage(usize),
    Image(usize),
}

/// The command of a RUN step as the sandbox runs it.
fn run_argv(step: &Step, command: &RunCommand) -> Vec<String> {
    match command {
        RunCommand::Shell(cmd) => {
            let mut argv = step.shell.clone();
            argv.push(cmd.clone());
            argv
        }
        RunCommand::Exec(argv) => argv.clone(),
    }
}

fn write_executable(path: &Path, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

async fn snapshot(dir: &Path) -> Result<Snapshot, Error> {
    let dir = dir.to_path_buf();
    blocking(move || Snapshot::capture(&dir))
        .await?
        .map_err(|err| Error::other(format!("reading the filesystem: {err}")))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| Error::other(format!("a worker thread failed: {err}")))
}

/// Copies the unpacked tree `from` into the empty directory `to`, off the async runtime.
async fn clone_unpacked(from: PathBuf, to: PathBuf) -> Result<(), Error> {
    blocking(move || layer::clone_tree(&from, &to))
        .await?
        .map_err(|err| Error::other(format!("copying an unpacked base: {err}")))
}

/// Removes a directory of the work directory, after taking down the overlays mounted in it.
fn remove_dir(dir: &Path) {
    if let Err(err) = layer::overlay::unmount_under(dir) {
        tracing::warn!("unmounting the overlays under {}: {err}", dir.display());
    }
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!("removing {}: {err}", dir.display());
        }
        _ => {}
    }
}

/// Unpacks `chain` into `dest` (for `--output type=local`), fetching blobs into the root store.
/// Build with [`BuildRequest::unpack_target`] first, so that a bad cache layer was a miss.
pub async fn unpack_chain(
    chain: &[Descriptor],
    blobs: &Blobs,
    dest: &Path,
    limits: &cache_core::limits::Limits,
) -> Result<(), Error> {
    for desc in chain {
        blobs
            .fetch_to_root(desc)
            .await
            .map_err(|err| Error::other(format!("fetching layer {}: {err}", desc.digest)))?;
        let blob = blobs
            .root
            .read(&desc.digest)
            .await
            .map_err(|err| Error::other(format!("reading layer {}: {err}", desc.digest)))?
            .ok_or_else(|| {
                Error::other(format!(
                    "layer {} is missing from the root store",
                    desc.digest
                ))
            })?;
        let reader = blocking_reader(blob.verified(desc.digest.clone()));
        let media_type = desc.media_type.clone();
        let root = dest.to_path_buf();
        let limits = layer::LayerLimits::for_blob(limits, desc.size);
        blocking(move || layer::apply_layer(reader, &media_type, &root, &limits))
            .await?
            .map_err(|err| Error::other(format!("extracting layer {}: {err}", desc.digest)))?;
    }
    Ok(())
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
