//! `buildcache build`: builds a Dockerfile, importing and exporting BuildKit-format caches.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use cache_build::engine::{
    self, BlobStore, Blobs, BuildRequest, Event, ImportedSource, NamedContext, Progress, Services,
};
use cache_build::image;
use cache_build::layer::Compression;
use cache_core::export::{self, FromBackend};
use cache_core::graph::{CacheGraph, SourceId};
use cache_core::limits::Limits;
use cache_core::spec::{self, CompressionKind, ExportSpec, ExportTarget, ImportSource, ImportSpec};
use cache_core::{Digest, IndexRef};
use cache_local::LayoutDir;
use serde_json::json;

use crate::progress::Display;
use crate::stores::AnyBackend;

/// The tag under which the root keeps this machine's own cache.
const LOCAL_TAG: &str = "buildcache-local";

/// Arguments of `buildcache build`.
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Name the image (`name:tag`); repeatable.
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// The stage to build (default: the last).
    #[arg(long)]
    pub target: Option<String>,
    /// A build argument `KEY=VALUE` (or `KEY` to take it from the environment); repeatable.
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// An extra context `NAME=DIR` or `NAME=oci-layout://DIR[:TAG]`; repeatable.
    #[arg(long = "build-context")]
    pub build_contexts: Vec<String>,
    /// Export the cache: `type=local,dest=DIR[,mode=max]…` or `type=registry,ref=REF…`; repeatable.
    #[arg(long = "cache-to")]
    pub cache_to: Vec<String>,
    /// Import a cache: `type=local,src=DIR[,tag=T]`, `type=registry,ref=REF` or `REF`; repeatable.
    #[arg(long = "cache-from")]
    pub cache_from: Vec<String>,
    /// Output: `type=oci,dest=FILE[,tar=false]`, `type=local,dest=DIR`, `type=image,name=REF,push=true`.
    #[arg(short = 'o', long = "output")]
    pub outputs: Vec<String>,
    /// Push the image named by `-t` to its registry.
    #[arg(long)]
    pub push: bool,
    /// Write build results (image digest, steps, cache exports) as JSON to this file.
    #[arg(long = "metadata-file")]
    pub metadata_file: Option<PathBuf>,
    /// Run every step, ignoring all caches.
    #[arg(long = "no-cache")]
    pub no_cache: bool,
    /// Run the steps of stage STAGE ignoring all caches (and what depends on them); repeatable.
    #[arg(long = "no-cache-filter", value_name = "STAGE")]
    pub no_cache_filter: Vec<String>,
    /// Write the image ID (the digest of its config, as `docker build` does) to this file.
    #[arg(long)]
    pub iidfile: Option<PathBuf>,
    /// Set a label on the image: `KEY=VALUE`; repeatable (overrides the Dockerfile's LABEL).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Annotate the image manifest: `KEY=VALUE` or `manifest:KEY=VALUE`; repeatable.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Add a `HOST:IP` (or `HOST=IP`) line to RUN's /etc/hosts; repeatable or comma-separated.
    #[arg(long = "add-host", value_name = "HOST:IP", value_delimiter = ',')]
    pub add_hosts: Vec<String>,
    /// Resolve base images in their registry (buildcache always does: there is no local image store).
    #[arg(long)]
    pub pull: bool,
    /// Target platform: only the host's (linux/amd64) until emulation exists; repeatable or comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub platform: Vec<String>,
    /// This machine's state: its own cache of records, blobs and snapshots.
    #[arg(long, env = "BUILDCACHE_ROOT")]
    pub root: Option<PathBuf>,
    /// The most the root's own cache may hold (e.g. `10GB`, `512MiB`); older results go first.
    #[arg(long = "root-max-size", env = "BUILDCACHE_ROOT_MAX_SIZE", default_value = "10GB", value_parser = crate::manage::parse_size)]
    pub root_max_size: u64,
    /// Print why each step missed the cache, as a table at the end.
    #[arg(long)]
    pub explain: bool,
    /// Progress output.
    #[arg(long, value_enum, default_value_t = crate::progress::Mode::Auto, env = "BUILDKIT_PROGRESS")]
    pub progress: crate::progress::Mode,
    /// A secret for `RUN --mount=type=secret`: `id=ID,src=FILE` or `id=ID,env=VAR`; repeatable.
    #[arg(long = "secret")]
    pub secrets: Vec<String>,
    /// An SSH agent for `RUN --mount=type=ssh`: `default` (SSH_AUTH_SOCK) or `ID=SOCKET`; repeatable.
    #[arg(long = "ssh")]
    pub ssh: Vec<String>,
    /// The network of RUN steps without `--network` of their own: `default` (the host's), `none`
    /// or `host`.
    #[arg(long = "network")]
    pub network: Option<String>,
    /// Allow an entitlement: `network.host` (`RUN --network=host`), `security.insecure`
    /// (`RUN --security=insecure`); repeatable.
    #[arg(long = "allow")]
    pub allow: Vec<String>,
    #[command(flatten)]
    pub limits: crate::LimitArgs,
}

/// A parsed `--output`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Output {
    Oci {
        dest: PathBuf,
        tar: bool,
    },
    Local {
        dest: PathBuf,
    },
    Image {
        name: String,
        push: bool,
        insecure: bool,
    },
}

fn parse_output(value: &str) -> anyhow::Result<Output> {
    let mut attrs = BTreeMap::new();
    for field in value.split(',') {
        let (k, v) = field.split_once('=').ok_or_else(|| {
            anyhow::format_err!("invalid --output {value:?}: {field:?} is not key=value")
        })?;
        attrs.insert(k.trim().to_owned(), v.to_owned());
    }
    let get = |k: &str| attrs.get(k).cloned();
    let allowed: &[&str] = match get("type").as_deref() {
        Some("oci") => &["type", "dest", "tar", "name"],
        Some("local") => &["type", "dest"],
        Some("image") | Some("registry") => &["type", "name", "push", "registry.insecure"],
        Some(other) => anyhow::bail!(
            "invalid --output {value:?}: type {other:?} is not supported (use oci, local, image or registry)"
        ),
        None => anyhow::bail!(
            "invalid --output {value:?}: type is missing (type=oci,dest=FILE or type=local,dest=DIR)"
        ),
    };
    if let Some(k) = attrs.keys().find(|k| !allowed.contains(&k.as_str())) {
        anyhow::bail!(
            "invalid --output {value:?}: unknown attribute {k:?} (allowed: {})",
            allowed.join(", ")
        );
    }
    let bool_attr = |k: &str, default: bool| -> anyhow::Result<bool> {
        match get(k).as_deref() {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(v) => anyhow::bail!("invalid --output {value:?}: {k}={v:?} (use true or false)"),
        }
    };
    match get("type").as_deref() {
        Some("oci") => Ok(Output::Oci {
            dest: PathBuf::from(
                get("dest")
                    .ok_or_else(|| anyhow::format_err!("--output type=oci needs dest=FILE"))?,
            ),
            tar: bool_attr("tar", true)?,
        }),
        Some("local") => Ok(Output::Local {
            dest: PathBuf::from(
                get("dest")
                    .ok_or_else(|| anyhow::format_err!("--output type=local needs dest=DIR"))?,
            ),
        }),
        _ => Ok(Output::Image {
            name: get("name")
                .ok_or_else(|| anyhow::format_err!("--output type=image needs name=REF"))?,
            push: bool_attr("push", get("type").as_deref() == Some("registry"))?,
            insecure: bool_attr("registry.insecure", false)?,
        }),
    }
}

/// `KEY=VALUE` values of `flag` as a map (`KEY` alone is an empty value, as in `docker build`).
fn key_values(flag: &str, values: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for value in values {
        let (k, v) = value.split_once('=').unwrap_or((value, ""));
        if k.is_empty() {
            anyhow::bail!("invalid {flag} {value:?}: the key is empty (use {flag} KEY=VALUE)");
        }
        map.insert(k.to_owned(), v.to_owned());
    }
    Ok(map)
}

/// `--annotation` values: `KEY=VALUE` and `manifest:KEY=VALUE` annotate the image manifest.
fn parse_annotations(values: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut plain = Vec::new();
    for value in values {
        let (key, _) = value.split_once('=').unwrap_or((value, ""));
        match key.split_once(':') {
            Some(("manifest", _)) => plain.push(value["manifest:".len()..].to_owned()),
            Some((kind, _))
                if ["index", "manifest-descriptor", "index-descriptor"].contains(&kind)
                    || kind.contains('[') =>
            {
                anyhow::bail!(
                    "invalid --annotation {value:?}: only image manifest annotations are supported (KEY=VALUE or manifest:KEY=VALUE); buildcache writes no index of its own to annotate"
                )
            }
            _ => plain.push(value.clone()),
        }
    }
    let map = key_values("--annotation", &plain)?;
    if let Some(value) = values.iter().find(|v| !v.contains('=')) {
        anyhow::bail!("invalid --annotation {value:?}: use KEY=VALUE");
    }
    Ok(map)
}

/// An `--add-host` value, `HOST:IP` or `HOST=IP`, as `(host, ip)`.
fn parse_add_host(value: &str) -> anyhow::Result<(String, String)> {
    let split = match (value.find('='), value.find(':')) {
        (Some(e), Some(c)) => Some(e.min(c)),
        (e, c) => e.or(c),
    };
    let Some(at) = split else {
        anyhow::bail!("invalid --add-host {value:?}: use HOST:IP (for example db:10.0.0.2)");
    };
    let (host, ip) = (&value[..at], &value[at + 1..]);
    if host.is_empty() {
        anyhow::bail!("invalid --add-host {value:?}: the host name is empty (use HOST:IP)");
    }
    if ip == "host-gateway" {
        anyhow::bail!(
            "invalid --add-host {value:?}: host-gateway is a Docker daemon setting; give the gateway's IP address"
        );
    }
    let ip: std::net::IpAddr = ip.trim_matches(['[', ']']).parse().map_err(|_| {
        anyhow::format_err!("invalid --add-host {value:?}: {ip:?} is not an IP address")
    })?;
    Ok((host.to_owned(), ip.to_string()))
}

/// Accepts a `--platform` value naming the platform buildcache builds for.
fn check_platform(value: &str) -> anyhow::Result<()> {
    let host = cache_build::dockerfile::PLATFORM;
    let normalized = normalize_platform(value);
    if normalized != host {
        anyhow::bail!(
            "--platform {value}: buildcache builds only for the host platform {host} (it has no emulation); drop --platform or build on a {normalized} machine"
        );
    }
    Ok(())
}

/// A platform as `os/arch[/variant]` with containerd's aliases (`x86_64` is `amd64`, `amd64`
/// alone is `linux/amd64`).
fn normalize_platform(value: &str) -> String {
    let lower = value.trim().to_lowercase();
    let parts: Vec<&str> = lower.split('/').collect();
    let arch = |a: &str| match a {
        "x86_64" | "x86-64" => "amd64".to_owned(),
        "aarch64" => "arm64".to_owned(),
        "i386" | "i686" => "386".to_owned(),
        other => other.to_owned(),
    };
    match parts.as_slice() {
        ["linux"] => "linux/amd64".to_owned(),
        [a] => format!("linux/{}", arch(a)),
        [os, a] => format!("{os}/{}", arch(a)),
        [os, a, variant] if arch(a) == "amd64" && *variant == "v1" => format!("{os}/amd64"),
        _ => lower,
    }
}

/// The default root: `$XDG_DATA_HOME/buildcache` or `~/.local/share/buildcache`.
fn default_root() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("buildcache")
}

struct Import {
    spec: ImportSpec,
    backend: Arc<AnyBackend>,
    graph: CacheGraph,
    layers: HashSet<Digest>,
    /// Cache mount contents the manifest carries (`cache-mounts=true` exports).
    mount_blobs: Vec<cache_core::Descriptor>,
    /// What its records are made of, if it was written by buildcache.
    facts: Option<String>,
}

/// The facts annotation of an imported cache manifest.
fn facts_of(imported: &cache_core::import::Imported) -> Option<String> {
    imported
        .cache_manifest
        .config
        .annotations
        .get(engine::FACTS_ANNOTATION)
        .cloned()
}

/// The imported caches none of whose records is the key of a step of this build, with their
/// record counts: a cache written for other inputs (or with other keys) that gives no hit.
fn imports_without_hit(loaded: &[Import], steps: &[engine::StepReport]) -> Vec<(String, usize)> {
    let keys: HashSet<&Digest> = steps.iter().filter_map(|step| step.key.as_ref()).collect();
    if keys.is_empty() {
        return Vec::new();
    }
    loaded
        .iter()
        .filter(|import| {
            !import
                .graph
                .records()
                .iter()
                .any(|record| keys.contains(&record.digest))
        })
        .map(|import| (import.spec.raw.clone(), import.graph.records().len()))
        .collect()
}

/// Runs `buildcache build`: a sequence of phases, each reading what the ones before produced.
pub async fn run(args: BuildArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let display = Display::new(args.progress);
    // Validate every option before doing any work.
    let (plan, request) = plan(&args)?;
    let root = Root::open(&plan.root_dir).await?;
    let imported = import_caches(&plan, &root, &display).await;
    // Layers go to registry caches while the build runs (for `mode=min` those of the final
    // image); the build's layers are made with the first export's compression.
    let early = crate::early_push::EarlyPush::start(&plan.exports, &root.layout, |spec| {
        spec.compression == plan.exports[0].compression
    });
    let outcome = build(&args, &plan, request, &root, &imported, &early, &display).await?;
    let no_hit = imports_without_hit(&imported.loaded, &outcome.steps);
    for (source, n_records) in &no_hit {
        display.line(&format!(
            "WARNING: cache {source} gave no hit: none of its {n_records} records is a step of this build"
        ));
    }
    for arg in &outcome.unused_build_args {
        display.line(&format!(
            "WARNING: build argument {arg} was given but the Dockerfile does not use it"
        ));
    }
    write_outputs(&args, &plan, &outcome, &root.layout, &display).await?;
    // Keep this machine's cache.
    if let Err(err) =
        persist_local(&root.layout, &outcome.graph, &outcome.facts, &plan.limits).await
    {
        display.line(&format!(
            "WARNING: saving the local cache in {}: {}",
            plan.root_dir.display(),
            crate::error_chain(&err)
        ));
    }
    let exported = export_caches(
        &plan.exports,
        &outcome,
        &imported.loaded,
        &root.layout,
        &plan.root_dir,
        &display,
        early.finish(),
    )
    .await;
    // Exports read blobs from the root: clean it only after them.
    drop(root.guard);
    maintain_root(&root.layout, &plan.root_dir, args.root_max_size, &display).await?;
    if let Some(path) = &args.iidfile {
        std::fs::write(path, outcome.image.config_digest().to_string())
            .with_context(|| format!("writing the image ID file {}", path.display()))?;
    }
    if let Some(path) = &args.metadata_file {
        let metadata = metadata(
            &plan,
            &imported,
            &outcome,
            &exported.reports,
            &no_hit,
            started,
        );
        std::fs::write(path, serde_json::to_vec_pretty(&metadata)?)
            .with_context(|| format!("writing the metadata file {}", path.display()))?;
    }
    if let Some(err) = exported.failed {
        return Err(err);
    }
    display.finish();
    if args.explain {
        eprintln!("{}", explain_table(&outcome.steps));
    }
    if display.is_quiet() {
        println!("{}", outcome.image.manifest.digest);
    } else {
        display.line(&summary(&outcome, &imported.empty_sources, started));
    }
    Ok(())
}

/// What every phase of a build reads: the validated options.
struct Plan {
    exports: Vec<ExportSpec>,
    imports: Vec<ImportSpec>,
    limits: Limits,
    outputs: Vec<Output>,
    /// The `-t` names.
    names: Vec<image::ImageName>,
    root_dir: PathBuf,
}

/// The validated options only the engine reads; [`build`] makes them a [`BuildRequest`].
struct RequestParts {
    build_args: BTreeMap<String, String>,
    named_contexts: BTreeMap<String, NamedContext>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    add_hosts: Vec<(String, String)>,
    run: engine::RunOptions,
}

/// Parses and validates the arguments, touching nothing on disk.
fn plan(args: &BuildArgs) -> anyhow::Result<(Plan, RequestParts)> {
    let exports: Vec<ExportSpec> = args
        .cache_to
        .iter()
        .map(|v| spec::parse_export(v))
        .collect::<Result<_, _>>()?;
    let imports: Vec<ImportSpec> = args
        .cache_from
        .iter()
        .map(|v| spec::parse_import(v))
        .collect::<Result<_, _>>()?;
    for (i, a) in exports.iter().enumerate() {
        if exports[..i].iter().any(|b| b.target == a.target) {
            anyhow::bail!(
                "duplicate cache export {:?}: each destination may be given once",
                a.raw
            );
        }
    }
    let limits = args.limits.limits()?;
    let outputs: Vec<Output> = args
        .outputs
        .iter()
        .map(|o| parse_output(o))
        .collect::<Result<_, _>>()?;
    let mut build_args = BTreeMap::new();
    for arg in &args.build_args {
        match arg.split_once('=') {
            Some((k, v)) => build_args.insert(k.to_owned(), v.to_owned()),
            None => match std::env::var(arg) {
                Ok(v) => build_args.insert(arg.clone(), v),
                Err(_) => continue,
            },
        };
    }
    let mut named_contexts = BTreeMap::new();
    for value in &args.build_contexts {
        let (name, ctx) = value.split_once('=').ok_or_else(|| {
            anyhow::format_err!(
                "invalid --build-context {value:?}: use NAME=DIR or NAME=oci-layout://DIR[:TAG]"
            )
        })?;
        let ctx = NamedContext::parse(ctx)
            .map_err(|e| anyhow::format_err!("invalid --build-context {value:?}: {e}"))?;
        named_contexts.insert(name.to_owned(), ctx);
    }
    for platform in &args.platform {
        check_platform(platform)?;
    }
    let labels = key_values("--label", &args.labels)?;
    let annotations = parse_annotations(&args.annotations)?;
    let add_hosts = args
        .add_hosts
        .iter()
        .map(|h| parse_add_host(h))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let names: Vec<image::ImageName> = args
        .tags
        .iter()
        .map(|t| image::image_names(t).map_err(|e| anyhow::format_err!("invalid tag {t:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let root_dir = args.root.clone().unwrap_or_else(default_root);
    let run = crate::run_flags::run_options(
        &args.secrets,
        &args.ssh,
        args.network.as_deref(),
        &args.allow,
        root_dir.join("mounts"),
    )?;
    let plan = Plan {
        exports,
        imports,
        limits,
        outputs,
        names,
        root_dir,
    };
    let request = RequestParts {
        build_args,
        named_contexts,
        labels,
        annotations,
        add_hosts,
        run,
    };
    Ok((plan, request))
}

/// The root directory, held for the whole build.
struct Root {
    layout: Arc<LayoutDir>,
    /// Held for the whole build: a concurrent build's garbage collection on this root never
    /// deletes blobs this build has written but not yet recorded.
    guard: cache_local::WriterGuard,
    /// This build's scratch directory, locked while it runs.
    work_dir: crate::work_dirs::WorkDir,
}

impl Root {
    /// Creates and locks the root, makes this build's work directory and removes those of
    /// killed builds.
    async fn open(root_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root_dir)
            .with_context(|| format!("creating the root directory {}", root_dir.display()))?;
        let layout = Arc::new(LayoutDir::open(root_dir.join("cache")));
        let guard = {
            let layout = layout.clone();
            tokio::task::spawn_blocking(move || layout.writer())
                .await
                .map_err(|e| anyhow::format_err!("locking the root: {e}"))?
                .with_context(|| format!("locking the root {}", root_dir.display()))?
        };
        let mut work_dir = crate::work_dirs::WorkDir::create(root_dir)
            .with_context(|| format!("creating a work directory in {}", root_dir.display()))?;
        work_dir.hand_over_when_dropped();
        let collected = crate::work_dirs::collect_dead(root_dir);
        if collected > 0 {
            tracing::debug!(
                collected,
                "removed work directories of builds that were killed"
            );
        }
        Ok(Root {
            layout,
            guard,
            work_dir,
        })
    }
}

/// The caches a build starts from.
struct Imported {
    /// This machine's own cache, from the root.
    local_graph: CacheGraph,
    /// The facts of the local cache, if it has them.
    local_facts: Option<String>,
    /// The `--cache-from` caches that loaded.
    loaded: Vec<Import>,
    /// The `--cache-from` sources that were empty or failed.
    empty_sources: Vec<String>,
}

/// Reads this machine's own cache, then the imports; an unreadable one is a warning.
async fn import_caches(plan: &Plan, root: &Root, display: &Display) -> Imported {
    let (local_graph, local_facts) = match cache_core::import::import(
        root.layout.as_ref(),
        &IndexRef::Tag(LOCAL_TAG.into()),
        engine::LOCAL_SOURCE,
        &plan.limits,
    )
    .await
    {
        Ok(Some(imported)) => {
            let facts = facts_of(&imported);
            (imported.graph, facts)
        }
        Ok(None) => (CacheGraph::new(), None),
        Err(err) => {
            display.line(&format!(
                "WARNING: the local cache in {} is unreadable, starting without it: {err}",
                plan.root_dir.display()
            ));
            (CacheGraph::new(), None)
        }
    };
    let mut loaded: Vec<Import> = Vec::new();
    let mut empty_sources: Vec<String> = Vec::new();
    for (i, spec) in plan.imports.iter().enumerate() {
        let source_id = (i + 1) as SourceId;
        match import_one(spec, source_id, display, &plan.limits).await {
            Ok(Some(import)) => loaded.push(import),
            Ok(None) => empty_sources.push(spec.raw.clone()),
            Err(err) => {
                display.line(&format!(
                    "WARNING: cache import {} failed, building without it: {}",
                    spec.raw,
                    crate::error_chain(&err)
                ));
                empty_sources.push(spec.raw.clone());
            }
        }
    }
    Imported {
        local_graph,
        local_facts,
        loaded,
        empty_sources,
    }
}

/// The layer compression: that of the first export, gzip without one.
fn compression(exports: &[ExportSpec]) -> Compression {
    exports
        .first()
        .map(|e| match e.compression.kind {
            CompressionKind::Gzip => Compression::Gzip {
                level: e.compression.level.unwrap_or(6) as u32,
            },
            CompressionKind::Zstd => Compression::Zstd {
                level: e.compression.level.unwrap_or(3),
            },
            CompressionKind::Uncompressed => Compression::Uncompressed,
        })
        .unwrap_or(Compression::GZIP)
}

/// Runs the engine over the merged caches.
async fn build(
    args: &BuildArgs,
    plan: &Plan,
    parts: RequestParts,
    root: &Root,
    imported: &Imported,
    early: &crate::early_push::EarlyPush,
    display: &Display,
) -> anyhow::Result<engine::BuildOutcome> {
    let loaded = &imported.loaded;
    let mut source_names = vec!["local".to_owned()];
    source_names.extend(plan.imports.iter().map(|s| s.raw.clone()));
    let graph = CacheGraph::merge(
        std::iter::once(&imported.local_graph).chain(loaded.iter().map(|l| &l.graph)),
    );
    let context = args.context.clone();
    let dockerfile = args
        .file
        .clone()
        .unwrap_or_else(|| context.join("Dockerfile"));
    let request = BuildRequest {
        context,
        dockerfile,
        build_args: parts.build_args,
        target: args.target.clone(),
        named_contexts: parts.named_contexts,
        no_cache: args.no_cache,
        no_cache_filter: args.no_cache_filter.clone(),
        labels: parts.labels,
        annotations: parts.annotations,
        add_hosts: parts.add_hosts,
        compression: compression(&plan.exports),
        work_dir: root.work_dir.path().to_owned(),
        hash_cache: Some(plan.root_dir.join("context-hashes.json")),
        now: time::OffsetDateTime::now_utc(),
        run: engine::RunOptions {
            cache_mount_seeds: crate::root_mounts::seeds(loaded.iter().map(|l| &l.mount_blobs)),
            ..parts.run
        },
        limits: plan.limits.clone(),
        // Outputs that carry the layers (a directory, an OCI layout) get only layers this
        // build could unpack; images pushed by mount may never pass through this machine.
        unpack_target: plan.outputs.iter().any(|o| matches!(o, Output::Oci { .. })),
        output_dir: plan.outputs.iter().find_map(|o| match o {
            Output::Local { dest } => Some(dest.clone()),
            _ => None,
        }),
    };
    let blobs = Blobs {
        root: root.layout.clone() as Arc<dyn BlobStore>,
        imports: loaded
            .iter()
            .map(|l| ImportedSource {
                name: l.spec.raw.clone(),
                layers: l.layers.clone(),
                store: l.backend.clone() as Arc<dyn BlobStore>,
            })
            .collect(),
    };
    let open_layout = |dir: &Path| Arc::new(LayoutDir::open(dir)) as Arc<dyn BlobStore>;
    let resolver = crate::images::RegistryImages::new();
    let downloads = crate::images::HttpDownloads::new();
    let announce = |desc: &cache_core::Descriptor, role| early.announce(desc, role);
    let services = Services {
        on_layer: early
            .is_active()
            .then_some(&announce as &engine::OnLayer<'_>),
        blobs,
        progress: display,
        images: Some(&resolver),
        urls: Some(&downloads),
        open_layout: &open_layout,
        source_names,
        facts: imported
            .local_facts
            .iter()
            .cloned()
            .chain(loaded.iter().filter_map(|l| l.facts.clone()))
            .collect(),
    };
    Ok(engine::build(&request, graph, &services).await?)
}

/// Writes the `--output`s (the build wrote the first local one) and pushes the images.
async fn write_outputs(
    args: &BuildArgs,
    plan: &Plan,
    outcome: &engine::BuildOutcome,
    root: &Arc<LayoutDir>,
    display: &Display,
) -> anyhow::Result<()> {
    let first_local = plan
        .outputs
        .iter()
        .position(|o| matches!(o, Output::Local { .. }));
    for (i, output) in plan.outputs.iter().enumerate() {
        if Some(i) == first_local {
            continue;
        }
        write_output(output, outcome, root, &plan.names, display, &plan.limits).await?;
    }
    if args.push {
        if plan.names.is_empty() {
            anyhow::bail!("--push needs an image name: give -t REGISTRY/REPO:TAG");
        }
        for name in &plan.names {
            crate::images::push(outcome, root, &name.full, false, display).await?;
        }
    }
    for output in &plan.outputs {
        if let Output::Image {
            name,
            push: true,
            insecure,
        } = output
        {
            crate::images::push(outcome, root, name, *insecure, display).await?;
        }
    }
    Ok(())
}

/// What the cache exports did.
struct Exported {
    /// One JSON report per export attempted, for the metadata file.
    reports: Vec<serde_json::Value>,
    /// The first export that failed without `ignore-error=true`; the ones after it were not run.
    failed: Option<anyhow::Error>,
}

/// Writes the `--cache-to` exports in order; a failed one with `ignore-error=true` is a warning.
async fn export_caches(
    exports: &[ExportSpec],
    outcome: &engine::BuildOutcome,
    loaded: &[Import],
    root: &Arc<LayoutDir>,
    root_dir: &Path,
    display: &Display,
    mut early: HashMap<String, crate::early_push::Pending>,
) -> Exported {
    let mut reports = Vec::new();
    let mut mount_tars = crate::root_mounts::MountTars::new(root.clone(), root_dir.join("mounts"));
    for spec in exports {
        let pushed = early.remove(&spec.raw);
        match export_one(spec, outcome, loaded, display, &mut mount_tars, pushed).await {
            Ok(report) => reports.push(report),
            Err(err) if spec.ignore_error => {
                display.line(&format!(
                    "WARNING: cache export {} failed (ignore-error=true): {}",
                    spec.raw,
                    crate::error_chain(&err)
                ));
                reports.push(json!({"to": spec.raw, "error": crate::error_chain(&err)}));
            }
            Err(err) => {
                let failed = err.context(format!(
                    "cache export {} failed (add ignore-error=true to make it a warning)",
                    spec.raw
                ));
                return Exported {
                    reports,
                    failed: Some(failed),
                };
            }
        }
    }
    Exported {
        reports,
        failed: None,
    }
}

/// Collects the root's garbage and, past `max_size`, removes the least recently used cache
/// mounts, then the oldest results. Failures are warnings.
async fn maintain_root(
    root: &Arc<LayoutDir>,
    root_dir: &Path,
    max_size: u64,
    display: &Display,
) -> anyhow::Result<()> {
    match collect_garbage(root).await {
        Ok(gc) if gc.live_bytes + mounts_bytes(root_dir) > max_size => {
            // Cache mounts count toward the budget; the least recently used go first.
            let mounts = cache_build::mounts::CacheMounts::new(root_dir.join("mounts"));
            let live = gc.live_bytes;
            let mounts_left = match tokio::task::spawn_blocking(move || {
                crate::root_mounts::remove(&mounts, live, Some(max_size), None, false, false)
            })
            .await
            {
                Ok(Ok(removed)) => removed.bytes_left,
                Ok(Err(err)) => {
                    display.line(&format!(
                        "WARNING: removing cache mounts from the root {}: {err}",
                        root_dir.display()
                    ));
                    0
                }
                Err(err) => anyhow::bail!("removing cache mounts failed: {err}"),
            };
            let budget = max_size.saturating_sub(mounts_left);
            if gc.live_bytes > budget
                && let Err(err) = shrink_root(root, budget).await
            {
                display.line(&format!(
                    "WARNING: shrinking the root {} to {} bytes: {}",
                    root_dir.display(),
                    max_size,
                    crate::error_chain(&err)
                ));
            }
        }
        Ok(_) => {}
        Err(err) => display.line(&format!(
            "WARNING: cleaning the root {}: {}",
            root_dir.display(),
            crate::error_chain(&err)
        )),
    }
    Ok(())
}

/// The `--metadata-file` contents: BuildKit's keys plus buildcache's own.
fn metadata(
    plan: &Plan,
    imported: &Imported,
    outcome: &engine::BuildOutcome,
    export_reports: &[serde_json::Value],
    no_hit: &[(String, usize)],
    started: Instant,
) -> serde_json::Value {
    // Requests made to each registry (imports, blob reads, exports), by method, so
    // regressions show; a registry's repositories share one client and its counts.
    let mut registry_requests = serde_json::Map::new();
    let backends = imported.loaded.iter().map(|import| import.backend.as_ref());
    for backend in backends {
        if let AnyBackend::Registry(registry) = backend {
            registry_requests.insert(
                registry.reference().registry().to_owned(),
                requests_by_method(&registry.stats().requests),
            );
        }
    }
    let first_cached_ms = outcome
        .steps
        .iter()
        .filter(|step| step.cached)
        .map(|step| step.finished_at.saturating_duration_since(started))
        .min()
        .map(|at| at.as_millis() as u64);
    json!({
        "containerimage.digest": outcome.image.manifest.digest.to_string(),
        "containerimage.config.digest": outcome.image.config.0.digest.to_string(),
        "containerimage.descriptor": {
            "mediaType": cache_core::descriptor::media_type::OCI_MANIFEST,
            "digest": outcome.image.manifest.digest.to_string(),
            "size": outcome.image.manifest.bytes.len(),
        },
        "image.name": plan.names.iter().map(|n| n.full.clone()).collect::<Vec<_>>().join(","),
        "buildcache.steps": outcome.steps,
        "buildcache.cache_export": export_reports,
        "buildcache.cache_import_empty": imported.empty_sources,
        "buildcache.cache_import_no_hit": no_hit
            .iter()
            .map(|(source, n_records)| json!({"source": source, "records": n_records}))
            .collect::<Vec<_>>(),
        "buildcache.blobs_fetched": outcome.blobs_fetched,
        "buildcache.registry_requests": registry_requests,
        "buildcache.first_cached_step_ms": first_cached_ms,
    })
}

/// The last line of a build: steps cached (by source), time, image digest, empty sources.
fn summary(outcome: &engine::BuildOutcome, empty_sources: &[String], started: Instant) -> String {
    let total = outcome.steps.len();
    let cached = outcome.steps.iter().filter(|s| s.cached).count();
    let mut by_source: BTreeMap<String, usize> = BTreeMap::new();
    for step in outcome.steps.iter().filter(|s| s.cached) {
        *by_source
            .entry(step.cache_source.clone().unwrap_or_else(|| "local".into()))
            .or_default() += 1;
    }
    let sources: Vec<String> = by_source
        .iter()
        .map(|(s, n)| format!("{n} from {s}"))
        .collect();
    let mut summary = format!(
        "steps: {cached}/{total} cached{} in {:.1}s; image {}",
        if sources.is_empty() {
            String::new()
        } else {
            format!(" ({})", sources.join(", "))
        },
        started.elapsed().as_secs_f64(),
        outcome.image.manifest.digest
    );
    if !empty_sources.is_empty() {
        summary.push_str(&format!(
            "; empty cache sources: {}",
            empty_sources.join(", ")
        ));
    }
    summary
}

/// Request counts as JSON, by method, leaving out methods not used.
fn requests_by_method(counts: &cache_registry::RequestCounts) -> serde_json::Value {
    let all = [
        ("GET", counts.get),
        ("HEAD", counts.head),
        ("POST", counts.post),
        ("PUT", counts.put),
        ("PATCH", counts.patch),
        ("DELETE", counts.delete),
        ("other", counts.other),
    ];
    all.iter()
        .filter(|(_, n)| *n > 0)
        .map(|(method, n)| ((*method).to_owned(), json!(n)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

async fn import_one(
    spec: &ImportSpec,
    source_id: SourceId,
    display: &Display,
    limits: &Limits,
) -> anyhow::Result<Option<Import>> {
    let (backend, reference) = AnyBackend::for_import(&spec.source)?;
    if let ImportSource::Local { src, .. } = &spec.source
        && !src.join("index.json").exists()
    {
        display.line(&format!(
            "WARNING: local cache import at {} skipped: {} not found",
            src.display(),
            src.join("index.json").display()
        ));
        return Ok(None);
    }
    let vertex = format!("import:{source_id}");
    let cm_key = match &spec.source {
        ImportSource::Registry { reference, .. } => reference.clone(),
        ImportSource::Local { src, .. } => format!("local:{}", src.display()),
    };
    let started = Instant::now();
    display.event(Event::Start {
        vertex: vertex.clone(),
        name: format!("importing cache manifest from {cm_key}"),
    });
    let budget = crate::stores::import_budget()?;
    let import = cache_core::import::import(&backend, &reference, source_id, limits);
    let imported = match tokio::time::timeout(budget, import).await {
        Ok(Ok(imported)) => imported,
        Ok(Err(err)) => {
            display.event(Event::Error {
                vertex,
                message: err.to_string(),
            });
            return Err(err.into());
        }
        Err(_) => {
            let message = format!(
                "no cache read from {cm_key} within {:.1} s (set BUILDCACHE_IMPORT_TIMEOUT to \
                 wait longer)",
                budget.as_secs_f64()
            );
            display.event(Event::Error {
                vertex,
                message: message.clone(),
            });
            return Err(anyhow::format_err!(message));
        }
    };
    let Some(imported) = imported else {
        display.event(Event::Error {
            vertex,
            message: format!("no cache found for {reference} (the first export will create it)"),
        });
        display.line(&format!(
            "WARNING: cache import {} found no cache, building without it",
            spec.raw
        ));
        return Ok(None);
    };
    display.event(Event::Status {
        vertex: vertex.clone(),
        text: format!(
            "inferred cache manifest type: {}",
            imported.cache_manifest.media_type
        ),
        done: Some(started.elapsed()),
    });
    display.event(Event::Done {
        vertex,
        duration: started.elapsed(),
    });
    let layers = imported
        .cache_manifest
        .layers
        .iter()
        .map(|d| d.digest.clone())
        .collect();
    let mount_blobs = crate::root_mounts::mount_blobs_of(&imported.cache_manifest.layers);
    Ok(Some(Import {
        spec: spec.clone(),
        backend: Arc::new(backend),
        facts: facts_of(&imported),
        graph: imported.graph,
        layers,
        mount_blobs,
    }))
}

/// Writes the build's cache to one `--cache-to` destination, after the layers pushed there
/// while the build ran, within the export budget; the JSON report for the metadata file.
async fn export_one(
    spec: &ExportSpec,
    outcome: &engine::BuildOutcome,
    loaded: &[Import],
    display: &Display,
    mount_tars: &mut crate::root_mounts::MountTars,
    early: Option<crate::early_push::Pending>,
) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let (backend, tag) = AnyBackend::for_export(&spec.target)?;
    let vertex = format!("export:{}", spec.raw);
    let name = match spec.target {
        ExportTarget::Local { .. } => "exporting cache to client directory",
        ExportTarget::Registry { .. } => "exporting cache to registry",
    };
    display.event(Event::Start {
        vertex: vertex.clone(),
        name: name.to_owned(),
    });
    // The budget covers waiting for the layers pushed early, then the export.
    let budget = crate::stores::export_budget()?;
    let deadline = tokio::time::Instant::now() + budget;
    let pushed = match early {
        Some(pending) => match tokio::time::timeout_at(deadline, pending.wait()).await {
            Ok(pushed) => pushed,
            Err(_) => return Err(export_timed_out(display, vertex, budget)),
        },
        None => crate::early_push::Pushed::default(),
    };
    report_pushed_early(display, &vertex, &pushed);
    let selected = outcome.graph.select(&outcome.targets, spec.mode);
    display.event(Event::Status {
        vertex: vertex.clone(),
        text: "preparing build cache for export".into(),
        done: Some(started.elapsed()),
    });
    let options = export::Options {
        tag,
        form: spec.form,
        max_parallel: 4,
        known_present: known_present(spec, loaded, &pushed),
        extra_blobs: if spec.cache_mounts {
            let seeds = crate::root_mounts::seeds(loaded.iter().map(|l| &l.mount_blobs));
            mount_tars.blobs_for(spec, outcome, &seeds, display).await
        } else {
            Vec::new()
        },
        config_annotations: facts_annotations(&outcome.facts, &selected),
    };
    let on_event = |event| export_event(display, &vertex, event);
    let guard = match &backend {
        AnyBackend::Local(dir) => Some(lock_cache_dir(dir).await?),
        AnyBackend::Registry(_) => None,
    };
    let source = CountingSource {
        inner: &outcome.blobs,
        counters: std::sync::Mutex::new(Vec::new()),
    };
    let result = report_transfers(
        display,
        &vertex,
        &source,
        tokio::time::timeout_at(
            deadline,
            export::export(&backend, &source, &selected, &options, &on_event),
        ),
    )
    .await;
    drop(guard);
    let mut report = match result {
        Ok(Ok(report)) => report,
        Ok(Err(err)) => {
            display.event(Event::Error {
                vertex,
                message: err.to_string(),
            });
            return Err(err.into());
        }
        Err(_) => return Err(export_timed_out(display, vertex, budget)),
    };
    display.event(Event::Done {
        vertex,
        duration: started.elapsed(),
    });
    // Layers pushed while the build ran count as written by this export.
    report.blobs_written += pushed.blobs_written;
    report.bytes_written += pushed.bytes_written;
    report.blobs_skipped = report.blobs_skipped.saturating_sub(pushed.blobs_written);
    report.bytes_skipped = report.bytes_skipped.saturating_sub(pushed.bytes_written);
    let gc = match &backend {
        AnyBackend::Local(dir) if spec.gc => Some(collect_exported_garbage(dir, display).await?),
        _ => None,
    };
    Ok(json!({
        "gc": gc,
        "to": spec.raw,
        "blobs_written": report.blobs_written,
        "bytes_written": report.bytes_written,
        "blobs_skipped": report.blobs_skipped,
        "blobs_pushed_early": pushed.blobs_written,
        "bytes_skipped": report.bytes_skipped,
        "layers": report.layers,
        "records": report.records,
        "unchanged": report.unchanged,
        "manifest_digest": report.manifest.as_ref().map(|m| m.digest.to_string()),
        "config_digest": report.config_digest.as_ref().map(|d| d.to_string()),
        "duration_ms": started.elapsed().as_millis() as u64,
    }))
}

/// The export on `vertex` ran out of its `budget`: reported, and the error to return.
fn export_timed_out(
    display: &Display,
    vertex: String,
    budget: std::time::Duration,
) -> anyhow::Error {
    // The tag is written last: the previous cache stays in place.
    let message = format!(
        "not finished within {:.1} s, the previous cache is left in place (set \
         BUILDCACHE_EXPORT_TIMEOUT to wait longer)",
        budget.as_secs_f64()
    );
    display.event(Event::Error {
        vertex,
        message: message.clone(),
    });
    anyhow::format_err!(message)
}

/// Shows what the early push of an export achieved, if anything.
fn report_pushed_early(display: &Display, vertex: &str, pushed: &crate::early_push::Pushed) {
    if pushed.blobs_written > 0 || !pushed.present.is_empty() {
        display.event(Event::Status {
            vertex: vertex.to_owned(),
            text: format!(
                "{} layers pushed while the build ran ({} written, {} bytes)",
                pushed.present.len(),
                pushed.blobs_written,
                pushed.bytes_written
            ),
            done: Some(pushed.waited),
        });
    }
}

/// The blobs an export to `spec` need not check: those listed by a manifest imported from this
/// very destination, and the layers pushed there while the build ran.
fn known_present(
    spec: &ExportSpec,
    loaded: &[Import],
    pushed: &crate::early_push::Pushed,
) -> HashSet<Digest> {
    let mut known = HashSet::new();
    for import in loaded {
        let same = match (&import.spec.source, &spec.target) {
            (
                ImportSource::Registry { reference: a, .. },
                ExportTarget::Registry { reference: b, .. },
            ) => a == b,
            _ => false,
        };
        if same {
            known.extend(import.layers.iter().cloned());
        }
    }
    known.extend(pushed.present.iter().cloned());
    known
}

/// Shows one event of the export on `vertex`.
fn export_event(display: &Display, vertex: &str, event: export::Event) {
    let text = match event {
        export::Event::Layer { digest, .. } => format!("writing layer {digest}"),
        export::Event::Config { digest } => format!("writing config {digest}"),
        export::Event::Manifest { digest, form } => match form {
            cache_core::manifest::ManifestForm::ImageManifest => {
                format!("writing cache image manifest {digest}")
            }
            _ => format!("writing cache manifest {digest}"),
        },
        export::Event::EmptyResult => "skipping cache export for empty result".into(),
        export::Event::Unchanged { digest } => {
            format!("cache manifest {digest} is unchanged: nothing to write")
        }
        export::Event::Warning(text) => {
            display.event(Event::Warning(text));
            return;
        }
    };
    display.event(Event::Status {
        vertex: vertex.to_owned(),
        text,
        done: None,
    });
}

/// Takes the writer lock of a local cache directory (made if missing) for an export.
async fn lock_cache_dir(dir: &LayoutDir) -> anyhow::Result<cache_local::WriterGuard> {
    std::fs::create_dir_all(dir.root())
        .with_context(|| format!("creating {}", dir.root().display()))?;
    let dir = dir.clone();
    tokio::task::spawn_blocking(move || dir.writer())
        .await
        .map_err(|e| anyhow::format_err!("locking the cache directory: {e}"))?
        .map_err(Into::into)
}

/// Collects the garbage of a local cache after an export (`gc=true`): the report's JSON.
async fn collect_exported_garbage(
    dir: &LayoutDir,
    display: &Display,
) -> anyhow::Result<serde_json::Value> {
    let dir = Arc::new(dir.clone());
    let gc = collect_garbage(&dir).await?;
    if gc.deleted_blobs > 0 {
        display.event(Event::Status {
            vertex: "gc".into(),
            text: format!(
                "removed {} unreferenced blobs ({} bytes) from {}",
                gc.deleted_blobs,
                gc.deleted_bytes,
                dir.root().display()
            ),
            done: None,
        });
    }
    Ok(
        json!({"busy": gc.busy, "deleted_blobs": gc.deleted_blobs, "deleted_bytes": gc.deleted_bytes, "live_blobs": gc.live_blobs, "live_bytes": gc.live_bytes}),
    )
}

/// The build's blobs as an export source, counting the bytes of each blob read.
struct CountingSource<'a> {
    inner: &'a engine::Blobs,
    /// The blobs opened so far.
    counters: std::sync::Mutex<Vec<Opened>>,
}

/// A blob an export opened: digest, size, when, and the bytes read so far.
type Opened = (Digest, u64, Instant, Arc<AtomicU64>);

impl export::BlobSource for CountingSource<'_> {
    async fn open_blob(
        &self,
        desc: &cache_core::Descriptor,
    ) -> cache_core::Result<Option<cache_core::Blob>> {
        let blob = self.inner.open(&desc.digest).await?;
        Ok(blob.map(|blob| {
            let counter = Arc::new(AtomicU64::new(0));
            self.counters.lock().expect("counters lock").push((
                desc.digest.clone(),
                desc.size,
                Instant::now(),
                counter.clone(),
            ));
            engine::counted(blob, counter)
        }))
    }
}

/// Runs `work` (an export reading from `source`) and reports the bytes of each blob it sends
/// on `vertex`, a few times a second, and once more when each is done.
async fn report_transfers<T>(
    display: &Display,
    vertex: &str,
    source: &CountingSource<'_>,
    work: impl std::future::Future<Output = T>,
) -> T {
    const TICK: std::time::Duration = std::time::Duration::from_millis(150);
    // The blobs whose end was reported.
    let mut reported: HashSet<Digest> = HashSet::new();
    let mut report = |finished: bool| {
        let counters = source.counters.lock().expect("counters lock");
        for (digest, size, since, counter) in counters.iter() {
            let current = counter.load(Ordering::Relaxed);
            if reported.contains(digest) {
                continue;
            }
            let done = (finished || current >= *size).then(|| since.elapsed());
            if done.is_some() {
                reported.insert(digest.clone());
            }
            display.event(Event::Transfer {
                vertex: vertex.to_owned(),
                id: digest.to_string(),
                current,
                total: *size,
                done,
            });
        }
    };
    let mut work = std::pin::pin!(work);
    let mut ticks = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            out = &mut work => {
                report(true);
                return out;
            }
            _ = ticks.tick() => report(false),
        }
    }
}

/// The config annotations of an export of `graph`: the facts of its records.
fn facts_annotations(facts: &engine::FactsMap, graph: &CacheGraph) -> BTreeMap<String, String> {
    engine::annotation_value(facts, graph.records().iter().map(|r| &r.digest))
        .map(|value| BTreeMap::from([(engine::FACTS_ANNOTATION.to_owned(), value)]))
        .unwrap_or_default()
}

/// The `--explain` table: each step that missed and why.
fn explain_table(steps: &[engine::StepReport]) -> String {
    let misses: Vec<&engine::StepReport> = steps.iter().filter(|s| s.miss.is_some()).collect();
    if misses.is_empty() {
        return format!("every step was cached ({} steps)", steps.len());
    }
    let width = misses
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0)
        .min(60);
    let mut out = format!("{:<width$}  WHY IT MISSED\n", "STEP");
    for step in misses {
        let name: String = step.name.chars().take(width).collect();
        out.push_str(&format!(
            "{name:<width$}  {}\n",
            step.miss.as_deref().unwrap_or_default()
        ));
    }
    out.pop();
    out
}

/// Removes blobs no tag of `dir` reaches (skipped while another writer is active).
async fn collect_garbage(dir: &Arc<LayoutDir>) -> anyhow::Result<cache_local::GcReport> {
    let dir = dir.clone();
    let report = tokio::task::spawn_blocking(move || {
        dir.collect_garbage(&cache_local::GcOptions { dry_run: false })
    })
    .await
    .map_err(|e| anyhow::format_err!("garbage collection failed: {e}"))??;
    Ok(report)
}

/// Bytes of the root's cache mounts.
fn mounts_bytes(root_dir: &Path) -> u64 {
    cache_build::mounts::dir_bytes(&root_dir.join("mounts"))
}

/// Drops the oldest results of the root's own cache until it fits `max_size`.
async fn shrink_root(root: &Arc<LayoutDir>, max_size: u64) -> anyhow::Result<()> {
    let root = root.clone();
    tokio::task::spawn_blocking(move || {
        root.prune(&cache_local::PruneOptions {
            keep_tags: vec![LOCAL_TAG.to_owned()],
            older_than: None,
            max_size: Some(max_size),
            dry_run: false,
            now: std::time::SystemTime::now(),
        })
    })
    .await
    .map_err(|e| anyhow::format_err!("pruning failed: {e}"))??;
    Ok(())
}

/// Saves this build's records into the root, merged with what other builds saved meanwhile.
async fn persist_local(
    root: &Arc<LayoutDir>,
    graph: &CacheGraph,
    facts: &engine::FactsMap,
    limits: &Limits,
) -> anyhow::Result<()> {
    // One build at a time reads, merges and rewrites the local tag, so none loses another's records.
    let lock_path = root.root().join("local.lock");
    let _lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        if let Some(dir) = lock_path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        file.lock()?;
        Ok(file)
    })
    .await
    .map_err(|e| anyhow::format_err!("locking the local cache: {e}"))?
    .context("locking the local cache")?;
    let current = cache_core::import::import(
        root.as_ref(),
        &IndexRef::Tag(LOCAL_TAG.into()),
        engine::LOCAL_SOURCE,
        limits,
    )
    .await
    .ok()
    .flatten()
    .map(|i| i.graph)
    .unwrap_or_default();
    let merged = CacheGraph::merge([&current, graph]);
    let keep = engine::local_cache_graph(&merged, root.as_ref()).await;
    let options = export::Options {
        tag: LOCAL_TAG.into(),
        form: cache_core::manifest::ManifestForm::ImageManifest,
        max_parallel: 4,
        known_present: HashSet::new(),
        extra_blobs: Vec::new(),
        config_annotations: facts_annotations(facts, &keep),
    };
    export::export(
        root.as_ref(),
        &FromBackend(root.as_ref()),
        &keep,
        &options,
        &|_| {},
    )
    .await?;
    Ok(())
}

async fn write_output(
    output: &Output,
    outcome: &engine::BuildOutcome,
    root: &Arc<LayoutDir>,
    names: &[image::ImageName],
    display: &Display,
    limits: &Limits,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let vertex = format!("output:{output:?}");
    match output {
        Output::Local { dest } => {
            display.event(Event::Start {
                vertex: vertex.clone(),
                name: "exporting to client directory".into(),
            });
            std::fs::create_dir_all(dest)
                .with_context(|| format!("creating {}", dest.display()))?;
            engine::unpack_chain(&outcome.chain, &outcome.blobs, dest, limits).await?;
        }
        Output::Oci { dest, tar } => {
            display.event(Event::Start {
                vertex: vertex.clone(),
                name: "exporting to oci image format".into(),
            });
            for desc in &outcome.chain {
                if outcome.blobs.in_root(desc).await {
                    continue;
                }
                let counter = Arc::new(AtomicU64::new(0));
                let fetch = outcome.blobs.fetch_to_root_counted(desc, &counter);
                let id = desc.digest.to_string();
                engine::track_transfer(display, &vertex, &id, desc.size, &counter, fetch).await?;
            }
            write_layout(dest, *tar, &outcome.image, names, root).await?;
        }
        Output::Image { .. } => return Ok(()),
    }
    display.event(Event::Done {
        vertex,
        duration: started.elapsed(),
    });
    Ok(())
}

/// Writes the image as an OCI layout, a tar file or a directory, on a blocking thread.
async fn write_layout(
    dest: &Path,
    tar: bool,
    image: &image::Image,
    names: &[image::ImageName],
    root: &Arc<LayoutDir>,
) -> anyhow::Result<()> {
    let (path, image, names, root) = (dest.to_owned(), image.clone(), names.to_vec(), root.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut open_blob =
            move |desc: &cache_core::Descriptor| -> std::io::Result<Box<dyn Read + Send>> {
                match root.read_blob_sync(&desc.digest) {
                    Ok(Some(reader)) => Ok(Box::new(reader)),
                    Ok(None) => Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("blob {} missing", desc.digest),
                    )),
                    Err(err) => Err(std::io::Error::other(err.to_string())),
                }
            };
        if tar {
            let file = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut out = std::io::BufWriter::new(file);
            image::write_layout_tar(&mut out, &image, &names, &mut open_blob)?;
            std::io::Write::flush(&mut out)?;
        } else {
            image::write_layout_dir(&path, &image, &names, &mut open_blob)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| anyhow::format_err!("writing the OCI layout {}: {e}", dest.display()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_host_takes_host_colon_or_equals_ip() {
        assert_eq!(
            parse_add_host("db:10.0.0.2").unwrap(),
            ("db".into(), "10.0.0.2".into())
        );
        assert_eq!(
            parse_add_host("v6=::1").unwrap(),
            ("v6".into(), "::1".into())
        );
        assert_eq!(
            parse_add_host("v6:[fe80::1]").unwrap(),
            ("v6".into(), "fe80::1".into())
        );
        for (bad, says) in [
            ("db", "use HOST:IP"),
            (":1.2.3.4", "host name is empty"),
            ("db:nope", "not an IP address"),
            ("db:host-gateway", "host-gateway"),
        ] {
            let err = parse_add_host(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn only_the_host_platform_is_accepted() {
        for ok in [
            "linux/amd64",
            "amd64",
            "linux/x86_64",
            "LINUX/AMD64",
            "linux",
        ] {
            check_platform(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let err = check_platform("linux/arm64").unwrap_err().to_string();
        assert!(
            err.contains("only for the host platform linux/amd64") && err.contains("linux/arm64"),
            "{err}"
        );
    }

    #[test]
    fn annotations_are_manifest_annotations() {
        let map = parse_annotations(&["a=1".into(), "manifest:b=2".into()]).unwrap();
        assert_eq!(map.get("a").map(String::as_str), Some("1"));
        assert_eq!(map.get("b").map(String::as_str), Some("2"));
        for bad in [
            "index:a=1",
            "manifest-descriptor:a=1",
            "manifest[linux/amd64]:a=1",
            "a",
        ] {
            assert!(parse_annotations(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn outputs_parse_like_buildx() {
        assert_eq!(
            parse_output("type=oci,dest=out.tar").unwrap(),
            Output::Oci {
                dest: "out.tar".into(),
                tar: true
            }
        );
        assert_eq!(
            parse_output("type=oci,dest=d,tar=false").unwrap(),
            Output::Oci {
                dest: "d".into(),
                tar: false
            }
        );
        assert!(
            parse_output("type=docker,dest=x")
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        assert!(
            parse_output("type=local,dest=x,foo=1")
                .unwrap_err()
                .to_string()
                .contains("unknown attribute")
        );
    }
}
