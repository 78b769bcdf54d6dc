//! `buildcache cache du | prune | copy | verify`: managing exported caches, ours and BuildKit's.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use cache_core::limits::Limits;
use cache_core::manifest;
use cache_core::spec::{self, ExportSpec, ImportSpec};
use cache_core::transfer::{self, Step};
use cache_core::{Backend, IndexRef};
use cache_local::{DropReason, GcOptions, LayoutDir, PruneOptions, PruneReport, Usage};
use serde_json::{Value, json};

use crate::inspect::human_bytes;
use crate::stores::AnyBackend;

/// Cache management subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum ManageCommand {
    /// Live and orphaned bytes of a cache, per tag.
    Du {
        /// The cache: a directory, type=local,src=DIR or type=registry,ref=REF.
        source: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Remove orphaned blobs of a local cache and, with a budget, old tags and old results.
    Prune {
        /// The cache directory, or type=local,src=DIR.
        source: String,
        /// Tags never removed (comma-separated or repeated); their results may still be trimmed
        /// to meet --max-size.
        #[arg(long = "keep-tags", value_delimiter = ',')]
        keep_tags: Vec<String>,
        /// Remove tags and results older than this (e.g. 30m, 12h, 7d, 2w).
        #[arg(long = "older-than", value_parser = parse_duration)]
        older_than: Option<Duration>,
        /// Size budget: remove old tags, then old results, until the cache fits (e.g. 10GB,
        /// 9.5GiB, 500M, 1234567).
        #[arg(long = "max-size", value_parser = parse_size)]
        max_size: Option<u64>,
        /// Show what would be removed, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also remove every cache mount (`RUN --mount=type=cache`) of the root that no build is
        /// using (the cache being `ROOT/cache`). Without it, unused cache mounts go only to meet
        /// --older-than and --max-size, least recently used first.
        #[arg(long)]
        mounts: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Copy a cache between backends: only missing blobs move, the tag is written last.
    Copy {
        /// Source: a directory, type=local,src=DIR[,tag=T] or type=registry,ref=REF.
        from: String,
        /// Destination: a directory, type=local,dest=DIR[,tag=T] or type=registry,ref=REF.
        to: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        #[command(flatten)]
        limits: crate::LimitArgs,
    },
    /// Check that every blob of a cache is present and intact and its config valid.
    Verify {
        /// The cache: a directory, type=local,src=DIR[,tag=T] or type=registry,ref=REF.
        source: String,
        /// Verify every tag of a local cache directory.
        #[arg(long)]
        all_tags: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        #[command(flatten)]
        limits: crate::LimitArgs,
    },
}

/// Output formats of the management commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object on stdout; sizes in bytes.
    Json,
}

/// Runs a management subcommand.
pub async fn run(command: ManageCommand) -> anyhow::Result<()> {
    match command {
        ManageCommand::Du { source, format } => du(&source, format).await,
        ManageCommand::Prune {
            source,
            keep_tags,
            older_than,
            max_size,
            dry_run,
            mounts,
            format,
        } => {
            let options = PruneOptions {
                keep_tags,
                older_than,
                max_size,
                dry_run,
                now: SystemTime::now(),
            };
            prune(&source, options, mounts, format).await
        }
        ManageCommand::Copy {
            from,
            to,
            format,
            limits,
        } => copy(&from, &to, format, &limits.limits()?).await,
        ManageCommand::Verify {
            source,
            all_tags,
            format,
            limits,
        } => verify(&source, all_tags, format, &limits.limits()?).await,
    }
}

/// A bare path (absolute, relative with `.`, or an existing directory) is a local cache.
fn is_bare_path(value: &str) -> bool {
    !value.contains('=')
        && (value.starts_with('/') || value.starts_with('.') || Path::new(value).is_dir())
}

/// Parses a source: a bare directory or `--cache-from` syntax.
fn parse_source(value: &str) -> anyhow::Result<ImportSpec> {
    let value = if is_bare_path(value) {
        format!("type=local,src={value}")
    } else {
        value.to_owned()
    };
    Ok(spec::parse_import(&value)?)
}

/// Parses a destination: a bare directory or `--cache-to` syntax.
fn parse_destination(value: &str) -> anyhow::Result<ExportSpec> {
    let value = if is_bare_path(value) {
        format!("type=local,dest={value}")
    } else {
        value.to_owned()
    };
    Ok(spec::parse_export(&value)?)
}

/// The local directory of `spec`, which must exist and be a cache (an explicit request).
fn existing_layout(spec: &ImportSpec) -> anyhow::Result<Option<LayoutDir>> {
    match &spec.source {
        cache_core::spec::ImportSource::Local { src, .. } => Ok(Some(
            LayoutDir::open_existing(src.clone())
                .with_context(|| format!("opening the cache {}", spec.raw))?,
        )),
        cache_core::spec::ImportSource::Registry { .. } => Ok(None),
    }
}

/// Runs blocking cache-local work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> cache_core::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .context("a blocking task did not complete")??)
}

// ----- du -----

async fn du(source: &str, format: OutputFormat) -> anyhow::Result<()> {
    let spec = parse_source(source)?;
    let Some(layout) = existing_layout(&spec)? else {
        return du_registry(&spec, format).await;
    };
    let mounts = match crate::root_mounts::of_layout(layout.root()) {
        Some(store) => Some(
            tokio::task::spawn_blocking(move || store.list())
                .await
                .map_err(|e| anyhow::format_err!("listing cache mounts failed: {e}"))?
                .context("listing cache mounts")?,
        ),
        None => None,
    };
    let usage = blocking(move || layout.disk_usage()).await?;
    if format == OutputFormat::Json {
        let mut value = usage_json(source, &usage);
        if let Some(mounts) = &mounts {
            value["cache_mounts"] = mounts
                .iter()
                .map(|m| json!({"id": m.id, "instance": m.instance, "bytes": m.bytes}))
                .collect();
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("cache:     {source}");
    for tag in &usage.tags {
        let name = if tag.tag.is_empty() {
            "(untagged)"
        } else {
            &tag.tag
        };
        println!(
            "  tag {name}: {} in {} blobs ({} only this tag), manifest {}{}",
            human_bytes(tag.bytes),
            tag.blobs,
            human_bytes(tag.unique_bytes),
            tag.manifest.digest,
            if tag.missing.is_empty() {
                String::new()
            } else {
                format!(", {} blobs MISSING", tag.missing.len())
            }
        );
    }
    println!(
        "live:      {} in {} blobs ({} bytes; {} shared by several tags)",
        human_bytes(usage.live_bytes),
        usage.live_blobs,
        usage.live_bytes,
        human_bytes(usage.shared_bytes)
    );
    println!(
        "orphaned:  {} in {} blobs ({} bytes; `buildcache cache prune` removes them)",
        human_bytes(usage.orphaned_bytes),
        usage.orphaned_blobs,
        usage.orphaned_bytes
    );
    println!(
        "temporary: {} in {} files{}",
        human_bytes(usage.temp_bytes),
        usage.temp_files,
        if usage.temp_files > 0 {
            " (of exports running now, or left by killed ones: `buildcache cache prune` removes those)"
        } else {
            ""
        }
    );
    println!("total:     {}", human_bytes(usage.total_bytes()));
    if let Some(mounts) = &mounts {
        let total: u64 = mounts.iter().map(|m| m.bytes).sum();
        println!(
            "cache mounts: {} in {} (RUN --mount=type=cache of this root; `buildcache cache prune --mounts` removes them)",
            human_bytes(total),
            mounts.len()
        );
        for m in mounts {
            println!(
                "  {} (instance {}): {}",
                m.id,
                m.instance,
                human_bytes(m.bytes)
            );
        }
    }
    if !usage.missing.is_empty() {
        println!(
            "missing:   {} blobs named by tags are absent (run `buildcache cache verify`)",
            usage.missing.len()
        );
    }
    Ok(())
}

fn usage_json(source: &str, usage: &Usage) -> Value {
    json!({
        "source": source,
        "tags": usage.tags.iter().map(|t| json!({
            "tag": t.tag,
            "manifest": t.manifest.digest.to_string(),
            "blobs": t.blobs,
            "bytes": t.bytes,
            "unique_bytes": t.unique_bytes,
            "missing": t.missing.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "live_blobs": usage.live_blobs,
        "live_bytes": usage.live_bytes,
        "shared_bytes": usage.shared_bytes,
        "orphaned_blobs": usage.orphaned_blobs,
        "orphaned_bytes": usage.orphaned_bytes,
        "temp_files": usage.temp_files,
        "temp_bytes": usage.temp_bytes,
        "total_bytes": usage.total_bytes(),
        "missing": usage.missing.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// `du` of a registry tag: what its manifest names; a registry cannot list orphaned blobs.
async fn du_registry(spec: &ImportSpec, format: OutputFormat) -> anyhow::Result<()> {
    let (backend, reference) = AnyBackend::for_import(&spec.source)?;
    let raw = backend
        .read_index(&reference)
        .await?
        .ok_or_else(|| anyhow::format_err!("no cache found for {reference} in {}", spec.raw))?;
    let cache = manifest::read(&raw)?;
    let mut seen = HashSet::new();
    let mut bytes = raw.bytes.len() as u64 + cache.config.size;
    let mut blobs = 2u64;
    for layer in &cache.layers {
        if seen.insert(layer.digest.clone()) {
            bytes += layer.size;
            blobs += 1;
        }
    }
    if format == OutputFormat::Json {
        let out = json!({
            "source": spec.raw,
            "tags": [{"tag": reference.to_string(), "manifest": raw.digest.to_string(),
                      "blobs": blobs, "bytes": bytes, "unique_bytes": bytes, "missing": []}],
            "live_blobs": blobs,
            "live_bytes": bytes,
            "orphaned_blobs": Value::Null,
            "orphaned_bytes": Value::Null,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("cache:     {}", spec.raw);
    println!(
        "  {reference}: {} in {blobs} blobs, manifest {}",
        human_bytes(bytes),
        raw.digest
    );
    println!("live:      {} ({bytes} bytes)", human_bytes(bytes));
    println!("orphaned:  unknown (a registry does not list the blobs of a repository)");
    Ok(())
}

// ----- prune -----

async fn prune(
    source: &str,
    options: PruneOptions,
    all_mounts: bool,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let spec = parse_source(source)?;
    let Some(layout) = existing_layout(&spec)? else {
        anyhow::bail!(
            "{source}: prune works on local cache directories only; a registry cannot list or \
             delete blobs through the distribution API (use the registry's own garbage \
             collection)"
        );
    };
    let root_mounts = crate::root_mounts::of_layout(layout.root());
    if all_mounts && root_mounts.is_none() {
        anyhow::bail!(
            "{source}: --mounts needs a root's own cache (ROOT/cache, next to ROOT/mounts); this cache has no cache mounts"
        );
    }
    let (max_size, older_than, dry_run) = (options.max_size, options.older_than, options.dry_run);
    let report = blocking(move || layout.prune(&options)).await?;
    let mounts = match root_mounts {
        Some(mounts) => {
            let other = report.bytes_after;
            Some(
                tokio::task::spawn_blocking(move || {
                    crate::root_mounts::remove(
                        &mounts, other, max_size, older_than, all_mounts, dry_run,
                    )
                })
                .await
                .map_err(|e| anyhow::format_err!("removing cache mounts failed: {e}"))?
                .context("removing cache mounts")?,
            )
        }
        None => None,
    };
    if format == OutputFormat::Json {
        let mut value = prune_json(source, &report);
        if let Some(removed) = &mounts {
            value["cache_mounts_removed"] = removed
                .mounts
                .iter()
                .map(|m| json!({"id": m.id, "instance": m.instance, "bytes": m.bytes}))
                .collect();
            value["cache_mounts_bytes_left"] = json!(removed.bytes_left);
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    if let Some(removed) = &mounts {
        let verb = if dry_run { "would remove" } else { "removed" };
        for m in &removed.mounts {
            println!(
                "{verb} cache mount {} (instance {}, {})",
                m.id,
                m.instance,
                human_bytes(m.bytes)
            );
        }
        println!("cache mounts: {} left", human_bytes(removed.bytes_left));
    }
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for dropped in &report.dropped_tags {
        let why = match dropped.reason {
            DropReason::OlderThan => "older than --older-than",
            DropReason::Budget => "to fit --max-size",
            DropReason::NoResultsLeft => "no result left",
        };
        println!(
            "{verb} tag {} (manifest {}, {why})",
            dropped.tag, dropped.manifest
        );
    }
    for trimmed in &report.trimmed {
        println!(
            "{} {} of {} results of tag {} (new manifest {})",
            verb,
            trimmed.results_removed,
            trimmed.results_removed + trimmed.results_left,
            trimmed.tag,
            trimmed.new_manifest
        );
    }
    println!(
        "{} {} ({} bytes) in {} blobs and {} temporary files; {} were orphaned",
        if report.dry_run {
            "would free"
        } else {
            "freed"
        },
        human_bytes(report.freed_bytes),
        report.freed_bytes,
        report.freed_blobs,
        report.deleted_temp_files,
        human_bytes(report.orphaned_bytes)
    );
    println!(
        "size: {} before, {} after",
        human_bytes(report.bytes_before),
        human_bytes(report.bytes_after)
    );
    if report.over_budget {
        println!(
            "warning: the cache does not fit --max-size even with every removable result gone"
        );
    }
    Ok(())
}

fn prune_json(source: &str, report: &PruneReport) -> Value {
    json!({
        "source": source,
        "dry_run": report.dry_run,
        "bytes_before": report.bytes_before,
        "bytes_after": report.bytes_after,
        "freed_blobs": report.freed_blobs,
        "freed_bytes": report.freed_bytes,
        "orphaned_bytes": report.orphaned_bytes,
        "deleted_temp_files": report.deleted_temp_files,
        "over_budget": report.over_budget,
        "dropped_tags": report.dropped_tags.iter().map(|d| json!({
            "tag": d.tag,
            "manifest": d.manifest.to_string(),
            "reason": match d.reason {
                DropReason::OlderThan => "older-than",
                DropReason::Budget => "max-size",
                DropReason::NoResultsLeft => "no-results-left",
            },
        })).collect::<Vec<_>>(),
        "trimmed": report.trimmed.iter().map(|t| json!({
            "tag": t.tag,
            "old_manifest": t.old_manifest.to_string(),
            "new_manifest": t.new_manifest.to_string(),
            "results_removed": t.results_removed,
            "results_left": t.results_left,
        })).collect::<Vec<_>>(),
    })
}

/// Parses a duration: a number with a unit `s`, `m`, `h`, `d` or `w` (e.g. `7d`, `36h`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: use e.g. 90m, 12h, 7d or 2w"))?;
    let seconds = match unit.trim() {
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "w" => 7.0 * 86_400.0,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {text:?}: use s, m, h, d or w (e.g. 7d)"
            ));
        }
    };
    Duration::try_from_secs_f64(number * seconds).map_err(|_| {
        format!("duration {text:?} is out of range: use at most a few thousand years, e.g. 3650d")
    })
}

/// Parses a size in bytes: a number with an optional unit (`K`, `M`, `G`, `T` are powers of
/// 1000 with or without `B`; `KiB`, `MiB`, `GiB`, `TiB` powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: use e.g. 10GB, 9.5GiB, 500M or 1234567"))?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {text:?}: use B, KB, MB, GB, TB, KiB, MiB, GiB \
                 or TiB"
            ));
        }
    };
    Ok((number * factor).round() as u64)
}

// ----- verify -----

async fn verify(
    source: &str,
    all_tags: bool,
    format: OutputFormat,
    limits: &Limits,
) -> anyhow::Result<()> {
    let spec = parse_source(source)?;
    let layout = existing_layout(&spec)?;
    let (backend, reference) = AnyBackend::for_import(&spec.source)?;
    let references = match (&layout, all_tags) {
        (Some(layout), true) => {
            let layout = layout.clone();
            let tags = blocking(move || layout.tags()).await?;
            if tags.is_empty() {
                anyhow::bail!("{source}: index.json names no tag");
            }
            tags.into_iter()
                .map(|(tag, desc)| {
                    if tag.is_empty() {
                        IndexRef::Digest(desc.digest)
                    } else {
                        IndexRef::Tag(tag)
                    }
                })
                .collect()
        }
        (None, true) => anyhow::bail!(
            "{source}: --all-tags needs a local cache directory (a registry does not list tags here)"
        ),
        (_, false) => vec![reference],
    };
    let mut reports = Vec::new();
    for reference in &references {
        let mut report = transfer::verify(&backend, reference, limits).await;
        if report.manifest.is_none()
            && let Some(layout) = &layout
        {
            let layout = layout.clone();
            let tags: Vec<String> = blocking(move || layout.tags())
                .await?
                .into_iter()
                .map(|(tag, _)| tag)
                .filter(|tag| !tag.is_empty())
                .collect();
            if let Some(problem) = report.problems.last_mut() {
                problem.push_str(&format!(
                    " (tags in this directory: {}; choose one with tag=… or use --all-tags)",
                    if tags.is_empty() {
                        "none".to_owned()
                    } else {
                        tags.join(", ")
                    }
                ));
            }
        }
        reports.push(report);
    }
    let n_problems: usize = reports.iter().map(|r| r.problems.len()).sum();
    if format == OutputFormat::Json {
        let out = json!({
            "source": source,
            "ok": n_problems == 0,
            "caches": reports.iter().map(|r| json!({
                "reference": r.reference,
                "manifest": r.manifest,
                "blobs_checked": r.blobs_checked,
                "bytes_checked": r.bytes_checked,
                "results": r.results,
                "incomplete_results": r.incomplete_results,
                "problems": r.problems,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for report in &reports {
            let status = if report.problems.is_empty() {
                "ok"
            } else {
                "BROKEN"
            };
            println!(
                "{} {status}: manifest {}, {} blobs ({}) checked, {} results, {} with an \
                 incomplete layer chain",
                report.reference,
                report.manifest.as_deref().unwrap_or("-"),
                report.blobs_checked,
                human_bytes(report.bytes_checked),
                report.results,
                report.incomplete_results
            );
            for problem in &report.problems {
                println!("  problem: {problem}");
            }
        }
    }
    if n_problems > 0 {
        anyhow::bail!(
            "{source}: {n_problems} problem{} found",
            if n_problems == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

// ----- copy -----

async fn copy(from: &str, to: &str, format: OutputFormat, limits: &Limits) -> anyhow::Result<()> {
    let from_spec = parse_source(from)?;
    let to_spec = parse_destination(to)?;
    existing_layout(&from_spec)?;
    let (source, reference) = AnyBackend::for_import(&from_spec.source)?;
    let (destination, tag) = AnyBackend::for_export(&to_spec.target)?;
    let guard = match destination.local() {
        Some(layout) => {
            let layout = layout.clone();
            Some(blocking(move || layout.writer()).await?)
        }
        None => None,
    };
    let copied = transfer::copy_cache(&source, &reference, &destination, &tag, limits)
        .await
        .map_err(|err| copy_error(err, from, to, &tag, &source, &destination))?;
    drop(guard);
    let raw = copied
        .manifest
        .clone()
        .expect("a finished copy names its manifest");
    let mut collected = None;
    if let Some(layout) = destination.local()
        && to_spec.gc
    {
        let layout = layout.clone();
        collected =
            Some(blocking(move || layout.collect_garbage(&GcOptions { dry_run: false })).await?);
    }
    if format == OutputFormat::Json {
        let out = json!({
            "from": from,
            "to": to,
            "tag": tag,
            "manifest": raw.digest.to_string(),
            "blobs_copied": copied.blobs_copied,
            "bytes_copied": copied.bytes_copied,
            "blobs_mounted": copied.blobs_mounted,
            "bytes_mounted": copied.bytes_mounted,
            "blobs_present": copied.blobs_present,
            "bytes_present": copied.bytes_present,
            "gc_deleted_bytes": collected.as_ref().map(|c| c.deleted_bytes),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("copied {from} to {to} (tag {tag}, manifest {})", raw.digest);
    println!(
        "  {} blobs sent ({}), {} mounted ({}), {} already there ({})",
        copied.blobs_copied,
        human_bytes(copied.bytes_copied),
        copied.blobs_mounted,
        human_bytes(copied.bytes_mounted),
        copied.blobs_present,
        human_bytes(copied.bytes_present)
    );
    if let Some(report) = collected
        && report.deleted_blobs > 0
    {
        println!(
            "  removed {} blobs ({}) no tag uses any more",
            report.deleted_blobs,
            human_bytes(report.deleted_bytes)
        );
    }
    Ok(())
}

/// `cache copy`'s words for what went wrong.
fn copy_error(
    err: transfer::CopyError,
    from: &str,
    to: &str,
    tag: &str,
    source: &AnyBackend,
    destination: &AnyBackend,
) -> anyhow::Error {
    use transfer::CopyError;
    match err {
        CopyError::ReadManifest(err) => {
            anyhow::Error::new(err).context(format!("reading the cache manifest of {from}"))
        }
        CopyError::NoCache(reference) => {
            anyhow::format_err!("no cache found for {reference} in {from}")
        }
        CopyError::Manifest(err) => {
            anyhow::Error::new(err).context(format!("reading the cache of {from}"))
        }
        CopyError::Blob(transfer::Error::Missing { digest }) => anyhow::format_err!(
            "blob {digest} is missing from {}: the source cache is incomplete (run \
             `buildcache cache verify` on it)",
            source.info()
        ),
        CopyError::Blob(transfer::Error::Backend {
            step,
            digest,
            source: err,
        }) => {
            let context = match step {
                Step::Checking => format!("checking blob {digest} in {}", destination.info()),
                Step::Mounting(from) => format!("mounting blob {digest} from {from}"),
                Step::Reading => format!("reading blob {digest} from {}", source.info()),
                Step::Writing => format!("writing blob {digest} to {}", destination.info()),
            };
            anyhow::Error::new(err).context(context)
        }
        CopyError::Check { digest, source } => {
            anyhow::Error::new(source).context(format!("checking blob {digest} in {to}"))
        }
        CopyError::Incomplete {
            digest,
            found: Some(found),
            expected,
        } => anyhow::format_err!(
            "copy to {to} is incomplete: blob {digest} is {found} bytes there, expected \
             {expected}; the tag was not written"
        ),
        CopyError::Incomplete { digest, .. } => anyhow::format_err!(
            "copy to {to} is incomplete: blob {digest} is missing there; the tag was not written"
        ),
        CopyError::Config(problem) => {
            anyhow::format_err!("copy to {to}: {problem}; the tag was not written")
        }
        CopyError::WriteTag(err) => {
            anyhow::Error::new(err).context(format!("writing tag {tag} in {to}"))
        }
        err => anyhow::Error::new(err).context(format!("copying {from} to {to}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(1_209_600)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("7").unwrap_err().contains("unit"));
        assert!(
            parse_duration("d")
                .unwrap_err()
                .contains("invalid duration")
        );
        assert!(parse_duration("3y").is_err());
        let huge = parse_duration("99999999999999999999d").unwrap_err();
        assert!(huge.contains("out of range"), "{huge}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1234567"), Ok(1_234_567));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("10G"), Ok(10_000_000_000));
        assert_eq!(parse_size("500M"), Ok(500_000_000));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("1.5GiB"), Ok(1_610_612_736));
        assert_eq!(parse_size("2 MiB"), Ok(2 * 1024 * 1024));
        assert!(parse_size("10XB").unwrap_err().contains("unit"));
        assert!(parse_size("GB").is_err());
    }

    #[test]
    fn bare_paths_are_local() {
        let spec = parse_source("/tmp/cache").expect("parses");
        assert!(matches!(
            spec.source,
            cache_core::spec::ImportSource::Local { .. }
        ));
        let spec = parse_source("127.0.0.1:5000/app:cache").expect("parses");
        assert!(matches!(
            spec.source,
            cache_core::spec::ImportSource::Registry { .. }
        ));
        let spec = parse_destination("./out").expect("parses");
        assert!(matches!(
            spec.target,
            cache_core::spec::ExportTarget::Local { .. }
        ));
    }
}
