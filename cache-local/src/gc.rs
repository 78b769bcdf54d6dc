//! Garbage collection of a layout directory: the writer lock, reachability from `index.json`,
//! disk usage, collection of unreachable blobs, and pruning to an age or a size budget.
//!
//! # Safety with concurrent writers
//!
//! A second lock file, `<dir>/gc.lock`, separates writers from the collector (`index.json.lock`
//! stays what it is: BuildKit's short lock around `index.json` updates).
//!
//! - Every export holds a **shared** `flock` on `gc.lock` for its whole duration, from its first
//!   blob to its `index.json` update ([`LayoutDir::writer`]). Any number of exports run at once.
//! - Collection takes the **exclusive** `flock` on `gc.lock`, trying for at most
//!   [`GC_LOCK_WAIT`]. If an export holds the shared lock, collection deletes nothing and reports
//!   `busy`: the blobs that export is writing, or has written but not tagged yet, are never seen as
//!   garbage. Every export collects after it has released its shared lock, so the last writer to
//!   finish collects for everyone.
//! - While it holds the exclusive lock, collection also takes `index.json.lock` (so BuildKit's
//!   client does not rewrite the index meanwhile), reads `index.json`, walks every entry of every
//!   tag and deletes what it did not reach. Nothing of ours can add a reference in that window.
//! - `gc.lock` is never deleted (unlike `index.json.lock`), so no writer can lock a stale inode.
//! - Every `.tmp-*` file is written by a holder of the shared lock (blobs of an export or a
//!   build, `index.json` rewrites under the collector's own lock), so while collection holds the
//!   exclusive lock every temporary file is a dead writer's: it is deleted then, whatever its age.
//! - BuildKit's own client does not know `gc.lock`. As a partial guard, collection reports `busy`
//!   while BuildKit's `ingest/` directory holds a file younger than [`TEMP_FILE_MAX_AGE`] (an
//!   upload in progress). A BuildKit export between committing its last blob and updating
//!   `index.json` can still lose blobs to a collection that runs in exactly that window.
//!
//! # Reachability
//!
//! Every entry of `index.json` is a root. A manifest or index (or an object of unknown or missing
//! media type, when it is JSON) is read and every object in it with a `digest` field is a child:
//! config, layers, listed manifests, `subject`. Layers and configs are leaves. A manifest of a
//! known type that is not valid JSON keeps every `sha256:…` string it contains. Any error while
//! reading `index.json` or a manifest stops the collection before anything is deleted. A tag whose
//! manifest is missing is already broken and names nothing: it is reported in `missing`.
//!
//! # Budgets
//!
//! [`LayoutDir::prune`] counts the bytes of live blobs (what `index.json` reaches), not
//! `index.json` itself, temporary files or file system overhead. Its age of a tag is the newest
//! `createdAt` of its config or `buildkit/createdat` of its layers, or else the modification time
//! of its manifest blob.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cache_core::backend::Result;
use cache_core::config::{CacheConfig, go_time};
use cache_core::descriptor::{annotation, media_type};
use cache_core::layout::OciIndex;
use cache_core::manifest::{self, CacheManifest};
use cache_core::{CacheGraph, Descriptor, Digest, Error, ErrorKind, IndexRef, RawIndex};
use rustix::fs::FlockOperation;
use serde_json::Value;

use crate::LayoutDir;
use crate::blob::{sync_dir, temp_file_in};
use crate::error::parse_error;
use crate::index::{INDEX_FILE, MAX_JSON_SIZE};

/// Name of the lock file that separates exports (shared) from garbage collection (exclusive).
pub const GC_LOCK_FILE: &str = "gc.lock";
/// BuildKit's `ingest/` files younger than this are uploads in progress (BuildKit does not know
/// `gc.lock`): collection then deletes nothing.
pub const TEMP_FILE_MAX_AGE: Duration = Duration::from_secs(3600);
/// How long [`LayoutDir::collect_garbage`] tries for the exclusive lock before reporting `busy`.
pub const GC_LOCK_WAIT: Duration = Duration::from_millis(500);

/// A shared lock on `gc.lock`, held by an export for its whole duration; released when dropped.
#[derive(Debug)]
pub struct WriterGuard {
    _file: File,
}

/// The exclusive lock on `gc.lock`; released when dropped.
#[derive(Debug)]
struct CollectorGuard {
    _file: File,
}

/// Knobs of [`LayoutDir::collect_garbage`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcOptions {
    /// Report what would be deleted, delete nothing.
    pub dry_run: bool,
}

/// What one tag of `index.json` reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagUsage {
    /// The tag (`org.opencontainers.image.ref.name`), empty for an entry without one.
    pub tag: String,
    /// The manifest or index the entry names.
    pub manifest: Descriptor,
    /// Blobs reached and present (the manifest included).
    pub blobs: u64,
    /// Bytes on disk of those blobs.
    pub bytes: u64,
    /// Bytes of the blobs no other tag reaches: what removing this tag would free.
    pub unique_bytes: u64,
    /// Blobs named by this tag's manifests but absent from the directory.
    pub missing: Vec<Digest>,
}

/// Disk usage of a layout directory ([`LayoutDir::disk_usage`]). Sizes are file sizes on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Per `index.json` entry, in file order.
    pub tags: Vec<TagUsage>,
    /// Blobs reachable from some tag.
    pub live_blobs: u64,
    /// Bytes of those blobs.
    pub live_bytes: u64,
    /// Bytes of live blobs reachable from more than one tag.
    pub shared_bytes: u64,
    /// Blobs no tag reaches.
    pub orphaned_blobs: u64,
    /// Bytes of those blobs.
    pub orphaned_bytes: u64,
    /// Temporary files (`.tmp-*`) left by writes in progress or killed.
    pub temp_files: u64,
    /// Bytes of those files.
    pub temp_bytes: u64,
    /// Blobs some tag names that are absent (an incomplete cache).
    pub missing: Vec<Digest>,
}

impl Usage {
    /// Bytes of every blob and temporary file.
    pub fn total_bytes(&self) -> u64 {
        self.live_bytes + self.orphaned_bytes + self.temp_bytes
    }
}

/// What [`LayoutDir::collect_garbage`] did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Another export holds the directory: nothing was examined or deleted. The last export to
    /// finish collects.
    pub busy: bool,
    /// Nothing was deleted; the `deleted_*` figures are what would have been.
    pub dry_run: bool,
    /// Blobs kept because a tag reaches them.
    pub live_blobs: u64,
    /// Bytes of those blobs.
    pub live_bytes: u64,
    /// Unreachable blobs deleted.
    pub deleted_blobs: u64,
    /// Bytes of those blobs.
    pub deleted_bytes: u64,
    /// Temporary files of dead writers deleted (no live writer holds the lock).
    pub deleted_temp_files: u64,
    /// Bytes of those files.
    pub deleted_temp_bytes: u64,
    /// Bytes of blobs and temporary files left on disk afterwards (live blobs, and whatever
    /// could not be deleted).
    pub bytes_left: u64,
    /// Per tag, what it reaches.
    pub tags: Vec<TagUsage>,
    /// Blobs some tag names that are absent.
    pub missing: Vec<Digest>,
    /// Deletions that failed (path and error); the rest went on.
    pub errors: Vec<String>,
}

/// Knobs of [`LayoutDir::prune`].
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Tags never removed, and never trimmed for age (they may lose old results to `max_size`).
    pub keep_tags: Vec<String>,
    /// Remove tags whose newest result is older than this, and results older than this inside
    /// the other caches.
    pub older_than: Option<Duration>,
    /// Size budget of the directory in bytes: remove whole tags, oldest first (never the newest
    /// tag), then the oldest results inside the remaining caches, until the live blobs fit.
    pub max_size: Option<u64>,
    /// Report what would be removed, change nothing.
    pub dry_run: bool,
    /// The current time, for ages.
    pub now: SystemTime,
}

/// Why [`LayoutDir::prune`] removed a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Its newest result is older than `older_than`.
    OlderThan,
    /// Removing it was needed to fit `max_size`.
    Budget,
    /// Every one of its results was removed.
    NoResultsLeft,
}

/// A tag [`LayoutDir::prune`] removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedTag {
    /// The tag.
    pub tag: String,
    /// The manifest it named.
    pub manifest: Digest,
    /// Its age: the newest creation time in its cache (or its manifest's modification time).
    pub newest: Option<SystemTime>,
    /// Why.
    pub reason: DropReason,
}

/// A cache whose config [`LayoutDir::prune`] rewrote without its oldest results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrimmedTag {
    /// The tag.
    pub tag: String,
    /// The manifest it named before.
    pub old_manifest: Digest,
    /// The manifest it names now.
    pub new_manifest: Digest,
    /// Results removed.
    pub results_removed: usize,
    /// Results kept.
    pub results_left: usize,
}

/// What [`LayoutDir::prune`] did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Nothing was changed; the figures are what would have been.
    pub dry_run: bool,
    /// Bytes of blobs and temporary files before.
    pub bytes_before: u64,
    /// Bytes of live blobs after.
    pub bytes_after: u64,
    /// Blobs deleted.
    pub freed_blobs: u64,
    /// Bytes of blobs and temporary files deleted.
    pub freed_bytes: u64,
    /// Of `freed_bytes`, bytes of blobs no tag reached before pruning.
    pub orphaned_bytes: u64,
    /// Temporary files deleted.
    pub deleted_temp_files: u64,
    /// Tags removed.
    pub dropped_tags: Vec<DroppedTag>,
    /// Caches rewritten without some results.
    pub trimmed: Vec<TrimmedTag>,
    /// `max_size` could not be met with what pruning may remove.
    pub over_budget: bool,
}

impl LayoutDir {
    /// Takes a shared lock on `gc.lock` for an export: collection deletes nothing while it is held.
    ///
    /// Blocking: waits (up to the lock timeout, 60 s by default) while a collection holds the
    /// exclusive lock; call it on a blocking thread in async code. Creates the directory if
    /// needed. Hold the guard from the first blob written to the `index.json` update, then drop it
    /// and call [`LayoutDir::collect_garbage`].
    pub fn writer(&self) -> Result<WriterGuard> {
        let file = open_gc_lock(self.root())?;
        lock_file(
            &file,
            &self.root().join(GC_LOCK_FILE),
            FlockOperation::NonBlockingLockShared,
            self.lock_timeout,
        )?
        .then_some(WriterGuard { _file: file })
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Unexpected,
                format!(
                    "timed out after {}s waiting for {}: a garbage collection or prune of this \
                     cache directory is still running; retry when it has finished",
                    self.lock_timeout.as_secs(),
                    self.root().join(GC_LOCK_FILE).display()
                ),
            )
            .set_temporary(true)
        })
    }

    /// The exclusive lock on `gc.lock`, or `None` if writers still hold it after `wait`.
    fn collector(&self, wait: Duration) -> Result<Option<CollectorGuard>> {
        let file = open_gc_lock(self.root())?;
        let locked = lock_file(
            &file,
            &self.root().join(GC_LOCK_FILE),
            FlockOperation::NonBlockingLockExclusive,
            wait,
        )?;
        Ok(locked.then_some(CollectorGuard { _file: file }))
    }

    /// Live, shared and orphaned bytes of the directory, per tag.
    ///
    /// Takes no lock: a concurrent export's fresh blobs count as orphaned until it tags them.
    /// A malformed `index.json` or an unreadable manifest is an error; a missing directory or
    /// `index.json` has no tags.
    pub fn disk_usage(&self) -> Result<Usage> {
        Ok(self.analyze()?.usage)
    }

    /// Deletes every blob no tag of `index.json` reaches, and every temporary file (no writer
    /// is alive while collection holds its lock).
    ///
    /// Behavior:
    /// - if an export holds [`LayoutDir::writer`] (or BuildKit is uploading into `ingest/`),
    ///   returns at once with `busy` set and deletes nothing; see the module documentation;
    /// - a directory without `index.json` is left alone (nothing is known to be garbage);
    /// - any error reading `index.json` or a manifest is returned before anything is deleted;
    ///   a failed deletion is listed in `errors` and the others go on.
    pub fn collect_garbage(&self, options: &GcOptions) -> Result<GcReport> {
        if !self.root().is_dir() {
            return Ok(GcReport {
                dry_run: options.dry_run,
                ..GcReport::default()
            });
        }
        let Some(_collector) = self.collector(GC_LOCK_WAIT)? else {
            return Ok(busy_report(options.dry_run));
        };
        if self.is_ingest_active()? {
            return Ok(busy_report(options.dry_run));
        }
        self.sweep(options.dry_run)
    }

    /// Removes tags and results by age and size budget, then everything no tag reaches.
    ///
    /// Order: tags (not in `keep_tags`) whose newest result is older than `older_than`; results
    /// older than that inside the other caches (not the kept ones); then, while the live blobs
    /// exceed `max_size`, whole tags oldest first (never a kept tag nor the newest one), then
    /// the least recently used results of the remaining caches, kept ones included (a result
    /// counts as used when a newer result's chain stands on its layers, so the steps the newest
    /// build took from the cache are kept with it). Records left leading to no result are
    /// dropped from rewritten configs. A cache that loses results
    /// is rewritten through [`CacheGraph`] (new config, new manifest in the same form, tag
    /// updated); a cache left without results loses its tag. No tag is ever left naming a
    /// missing blob.
    ///
    /// Takes the exclusive `gc.lock`, waiting up to the lock timeout for exports to finish
    /// (a temporary error if they do not). Errors reading `index.json` or a cache stop before
    /// anything changes.
    pub fn prune(&self, options: &PruneOptions) -> Result<PruneReport> {
        self.check_existing()?;
        let Some(_collector) = self.collector(self.lock_timeout)? else {
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!(
                    "{}: exports into this cache directory are still running after {}s; retry \
                     when they have finished",
                    self.root().display(),
                    self.lock_timeout.as_secs()
                ),
            )
            .set_temporary(true));
        };
        let analysis = {
            let _index = self.lock()?;
            self.analyze()?
        };
        let mut plan = Plan::new(self, &analysis, options)?;
        plan.apply_age(options);
        if let Some(max_size) = options.max_size {
            plan.apply_budget(max_size);
        }
        let outcome = plan.materialize()?;
        let mut report = PruneReport {
            dry_run: options.dry_run,
            bytes_before: analysis.usage.total_bytes(),
            dropped_tags: outcome.dropped.clone(),
            trimmed: outcome.trimmed.clone(),
            over_budget: plan.over_budget,
            ..PruneReport::default()
        };
        if options.dry_run {
            for (_, size, _) in &analysis.temp {
                report.deleted_temp_files += 1;
                report.freed_bytes += size;
            }
            for (digest, (size, _)) in &analysis.on_disk {
                if !outcome.live.contains(digest) {
                    report.freed_blobs += 1;
                    report.freed_bytes += size;
                    if !analysis.live.contains(digest) {
                        report.orphaned_bytes += size;
                    }
                }
            }
            report.bytes_after = outcome
                .live
                .iter()
                .map(|d| {
                    analysis
                        .on_disk
                        .get(d)
                        .map(|(size, _)| *size)
                        .or_else(|| outcome.new_blobs.get(d).map(|b| b.len() as u64))
                        .unwrap_or(0)
                })
                .sum();
            return Ok(report);
        }
        for rewrite in &outcome.rewrites {
            self.write_blob_sync(&rewrite.config, rewrite.config_bytes.as_slice())?;
            self.write_index_sync(&rewrite.tag, &rewrite.manifest)?;
        }
        let drops: Vec<(String, Digest)> = outcome
            .dropped
            .iter()
            .map(|d| (d.tag.clone(), d.manifest.clone()))
            .collect();
        self.remove_tags(&drops)?;
        let swept = self.sweep(false)?;
        report.freed_blobs = swept.deleted_blobs;
        report.freed_bytes = swept.deleted_bytes + swept.deleted_temp_bytes;
        report.deleted_temp_files = swept.deleted_temp_files;
        report.bytes_after = swept.bytes_left;
        report.orphaned_bytes = analysis
            .on_disk
            .iter()
            .filter(|(d, _)| !analysis.live.contains(*d) && !self.blob_path(d).exists())
            .map(|(_, (size, _))| size)
            .sum();
        Ok(report)
    }

    /// Whether BuildKit's `ingest/` holds a file modified less than [`TEMP_FILE_MAX_AGE`] ago.
    fn is_ingest_active(&self) -> Result<bool> {
        let ingest = self.root().join("ingest");
        let entries = match fs::read_dir(&ingest) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(parse_error("listing", &ingest, err)),
        };
        let now = SystemTime::now();
        for entry in entries {
            let entry = entry.map_err(|err| parse_error("listing", &ingest, err))?;
            let recent = walk_newest(&entry.path())
                .is_some_and(|modified| !is_older(modified, now, TEMP_FILE_MAX_AGE));
            if recent {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Deletes what no tag reaches; the caller holds the exclusive `gc.lock`.
    fn sweep(&self, dry_run: bool) -> Result<GcReport> {
        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };
        if !self.root().join(INDEX_FILE).exists() {
            return Ok(report);
        }
        let _index = self.lock()?;
        let analysis = self.analyze()?;
        report.live_blobs = analysis.usage.live_blobs;
        report.live_bytes = analysis.usage.live_bytes;
        report.tags = analysis.usage.tags.clone();
        report.missing = analysis.usage.missing.clone();
        for (digest, (size, _)) in &analysis.on_disk {
            if analysis.live.contains(digest) {
                continue;
            }
            if !dry_run && let Err(err) = self.delete_blob(digest) {
                report.errors.push(err.to_string());
                continue;
            }
            report.deleted_blobs += 1;
            report.deleted_bytes += size;
        }
        let mut left = report.live_bytes;
        for (digest, (size, _)) in &analysis.on_disk {
            if !analysis.live.contains(digest) && !dry_run && self.blob_path(digest).exists() {
                left += size;
            }
        }
        for (path, size, _) in &analysis.temp {
            if !dry_run {
                match fs::remove_file(path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                    Err(err) => {
                        report
                            .errors
                            .push(parse_error("deleting", path, err).to_string());
                        left += size;
                        continue;
                    }
                }
            }
            report.deleted_temp_files += 1;
            report.deleted_temp_bytes += size;
        }
        report.bytes_left = left;
        Ok(report)
    }

    /// Removes the `index.json` entries of `drops` (tag and the manifest it must still name),
    /// keeping every other entry and field as it was.
    fn remove_tags(&self, drops: &[(String, Digest)]) -> Result<()> {
        if drops.is_empty() {
            return Ok(());
        }
        let _index = self.lock()?;
        let path = self.root().join(INDEX_FILE);
        let bytes = fs::read(&path).map_err(|err| parse_error("reading", &path, err))?;
        let corrupt = |err: serde_json::Error| {
            Error::new(
                ErrorKind::Corrupt,
                format!("{} is not a valid OCI index: {err}", path.display()),
            )
        };
        let mut doc = OciIndex::from_json(&bytes).map_err(corrupt)?;
        for (tag, digest) in drops {
            doc.remove_tag(tag, digest);
        }
        let out = doc.to_json();
        let mut temp = temp_file_in(self.root())?;
        temp.write_all(&out)
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|err| parse_error("writing", temp.path(), err))?;
        temp.persist(&path)
            .map_err(|err| parse_error("replacing", &path, err.error))?;
        sync_dir(self.root())
    }

    /// Reads `index.json`, lists blobs and temporary files, and walks every tag.
    fn analyze(&self) -> Result<Analysis> {
        let on_disk: HashMap<Digest, (u64, SystemTime)> = self
            .list_blobs()?
            .into_iter()
            .map(|(digest, size, modified)| (digest, (size, modified)))
            .collect();
        let mut temp = Vec::new();
        for (path, modified) in self.list_temp_files()? {
            let size = fs::symlink_metadata(&path).map_or(0, |meta| meta.len());
            temp.push((path, size, modified));
        }
        let tags = self.tags()?;
        let mut reaches = Vec::with_capacity(tags.len());
        for (tag, desc) in &tags {
            let mut reached = HashSet::new();
            let mut missing = HashSet::new();
            self.walk(desc, &on_disk, &mut reached, &mut missing)?;
            reaches.push((tag.clone(), desc.clone(), reached, missing));
        }
        let mut users: HashMap<&Digest, u32> = HashMap::new();
        for (_, _, reached, _) in &reaches {
            for digest in reached {
                *users.entry(digest).or_default() += 1;
            }
        }
        let size_of = |d: &Digest| on_disk.get(d).map_or(0, |(size, _)| *size);
        let mut usage = Usage::default();
        let mut all_missing = HashSet::new();
        for (tag, desc, reached, missing) in &reaches {
            usage.tags.push(TagUsage {
                tag: tag.clone(),
                manifest: desc.clone(),
                blobs: reached.len() as u64,
                bytes: reached.iter().map(size_of).sum(),
                unique_bytes: reached
                    .iter()
                    .filter(|d| users.get(d) == Some(&1))
                    .map(size_of)
                    .sum(),
                missing: sorted(missing.iter().cloned()),
            });
            all_missing.extend(missing.iter().cloned());
        }
        let live: HashSet<Digest> = users.keys().map(|d| (*d).clone()).collect();
        usage.live_blobs = live.len() as u64;
        usage.live_bytes = live.iter().map(size_of).sum();
        usage.shared_bytes = users
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(d, _)| size_of(d))
            .sum();
        for (digest, (size, _)) in &on_disk {
            if !live.contains(digest) {
                usage.orphaned_blobs += 1;
                usage.orphaned_bytes += size;
            }
        }
        usage.temp_files = temp.len() as u64;
        usage.temp_bytes = temp.iter().map(|(_, size, _)| size).sum();
        usage.missing = sorted(all_missing);
        let reaches = reaches
            .into_iter()
            .map(|(_, _, reached, _)| reached)
            .collect();
        Ok(Analysis {
            on_disk,
            temp,
            tags,
            reaches,
            live,
            usage,
        })
    }

    /// Adds to `reached` every present blob `root` reaches, and to `missing` the absent ones.
    fn walk(
        &self,
        root: &Descriptor,
        on_disk: &HashMap<Digest, (u64, SystemTime)>,
        reached: &mut HashSet<Digest>,
        missing: &mut HashSet<Digest>,
    ) -> Result<()> {
        let mut stack = vec![(root.digest.clone(), root.media_type.clone())];
        while let Some((digest, media)) = stack.pop() {
            if reached.contains(&digest) || missing.contains(&digest) {
                continue;
            }
            let Some((size, _)) = on_disk.get(&digest) else {
                missing.insert(digest);
                continue;
            };
            reached.insert(digest.clone());
            if is_leaf(&media) || *size > MAX_JSON_SIZE {
                continue;
            }
            let path = self.blob_path(&digest);
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                // Deleted since the listing (by BuildKit's own reset): nothing below it to keep.
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(parse_error("reading", &path, err)),
            };
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(value) => collect_descriptors(&value, &mut stack),
                Err(_) if is_manifest_type(&media) => {
                    // A damaged manifest: keep whatever it might name.
                    for found in scan_digests(&bytes) {
                        if on_disk.contains_key(&found) {
                            stack.push((found, String::new()));
                        }
                    }
                }
                Err(_) => {}
            }
        }
        Ok(())
    }
}

fn busy_report(dry_run: bool) -> GcReport {
    GcReport {
        busy: true,
        dry_run,
        ..GcReport::default()
    }
}

/// The state of a directory: blobs, temporary files, tags and what they reach.
struct Analysis {
    on_disk: HashMap<Digest, (u64, SystemTime)>,
    temp: Vec<(PathBuf, u64, SystemTime)>,
    tags: Vec<(String, Descriptor)>,
    /// Per tag, in the order of `tags`, the blobs it reaches.
    reaches: Vec<HashSet<Digest>>,
    live: HashSet<Digest>,
    usage: Usage,
}

/// Opens (creating it and the directory) `<root>/gc.lock`.
fn open_gc_lock(root: &Path) -> Result<File> {
    fs::create_dir_all(root)
        .map_err(|err| parse_error("creating the cache directory", root, err))?;
    let path = root.join(GC_LOCK_FILE);
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|err| parse_error("opening the lock file", &path, err))
}

/// Tries the non-blocking `operation` on `file` until it succeeds (`true`) or `wait` has passed
/// (`false`).
fn lock_file(file: &File, path: &Path, operation: FlockOperation, wait: Duration) -> Result<bool> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(2);
    loop {
        match rustix::fs::flock(file, operation) {
            Ok(()) => return Ok(true),
            Err(errno) if errno == rustix::io::Errno::WOULDBLOCK => {}
            Err(errno) if errno == rustix::io::Errno::INTR => continue,
            Err(errno) => {
                return Err(parse_error(
                    "locking",
                    path,
                    io::Error::from_raw_os_error(errno.raw_os_error()),
                ));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// `digests` in string order.
fn sorted(digests: impl IntoIterator<Item = Digest>) -> Vec<Digest> {
    let mut out: Vec<Digest> = digests.into_iter().collect();
    out.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    out
}

/// Whether `modified` is more than `age` before `now`.
fn is_older(modified: SystemTime, now: SystemTime, age: Duration) -> bool {
    now.duration_since(modified)
        .is_ok_and(|elapsed| elapsed > age)
}

/// The newest modification time of `path` or anything below it.
fn walk_newest(path: &Path) -> Option<SystemTime> {
    let meta = fs::symlink_metadata(path).ok()?;
    let mut newest = meta.modified().ok();
    if meta.is_dir()
        && let Ok(entries) = fs::read_dir(path)
    {
        for entry in entries.flatten() {
            if let Some(modified) = walk_newest(&entry.path()) {
                newest = Some(newest.map_or(modified, |n| n.max(modified)));
            }
        }
    }
    newest
}

/// Media types whose blobs name no other blob.
fn is_leaf(media: &str) -> bool {
    media == media_type::CACHE_CONFIG
        || media == media_type::OCI_IMAGE_CONFIG
        || media == media_type::DOCKER_IMAGE_CONFIG
        || media.contains(".layer.")
        || media.contains(".rootfs.")
        || media.contains("tar")
}

/// Manifest and index media types.
fn is_manifest_type(media: &str) -> bool {
    matches!(
        media,
        media_type::OCI_MANIFEST
            | media_type::OCI_INDEX
            | media_type::DOCKER_MANIFEST
            | media_type::DOCKER_LIST
    )
}

/// Pushes every object of `value` with a valid `digest` field (and its `mediaType`).
fn collect_descriptors(value: &Value, out: &mut Vec<(Digest, String)>) {
    match value {
        Value::Object(map) => {
            if let Some(digest) = map
                .get("digest")
                .and_then(Value::as_str)
                .and_then(|d| d.parse::<Digest>().ok())
            {
                let media = map
                    .get("mediaType")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                out.push((digest, media.to_owned()));
            }
            for child in map.values() {
                collect_descriptors(child, out);
            }
        }
        Value::Array(items) => {
            for child in items {
                collect_descriptors(child, out);
            }
        }
        _ => {}
    }
}

/// Every `sha256:<64 hex>` in `bytes`.
fn scan_digests(bytes: &[u8]) -> Vec<Digest> {
    const PREFIX: &[u8] = b"sha256:";
    let mut found = Vec::new();
    let mut pos = 0;
    while let Some(offset) = bytes[pos..]
        .windows(PREFIX.len())
        .position(|window| window == PREFIX)
    {
        let start = pos + offset + PREFIX.len();
        let end = start + 64;
        if end <= bytes.len()
            && bytes[start..end]
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            && let Ok(text) = std::str::from_utf8(&bytes[start - PREFIX.len()..end])
            && let Ok(digest) = text.parse::<Digest>()
        {
            found.push(digest);
        }
        pos = start;
    }
    found
}

/// Seconds since the Unix epoch of `time`, negative before it.
fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    }
}

fn from_unix_seconds(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// One result of a cache config: where it is, when it was made and the blobs of its chain.
struct ResultInfo {
    record: usize,
    /// Index in `chains` (legacy form) rather than `layers`.
    chain: bool,
    idx: usize,
    created: i128,
    /// The newest `created` of the results whose chain holds this result's top layer (itself
    /// included): a result the newest build stands on (a base step it took from the cache,
    /// which keeps its old `createdAt`) is as recent as that build.
    used: i128,
    /// The chain's blobs, the top layer first.
    blobs: Vec<Digest>,
}

/// A cache tag as prune sees it.
struct CacheTag {
    raw: RawIndex,
    manifest: CacheManifest,
    config: CacheConfig,
    results: Vec<ResultInfo>,
    removed: Vec<bool>,
}

impl CacheTag {
    fn results_left(&self) -> usize {
        self.removed.iter().filter(|r| !**r).count()
    }

    fn is_trimmed(&self) -> bool {
        self.removed.iter().any(|r| *r)
    }
}

/// One `index.json` entry and what prune decided for it.
struct TagState {
    tag: String,
    desc: Descriptor,
    reach: HashSet<Digest>,
    newest: i64,
    cache: Option<CacheTag>,
    /// Never dropped (in `keep_tags`, or not addressable by tag).
    kept: bool,
    dropped: Option<DropReason>,
}

/// The decisions of a prune, made in memory before anything changes.
struct Plan<'a> {
    tags: Vec<TagState>,
    sizes: &'a HashMap<Digest, (u64, SystemTime)>,
    over_budget: bool,
}

/// A cache rewritten without some results: the new config and the manifest for its tag.
struct Rewrite {
    tag: String,
    config: Descriptor,
    config_bytes: Vec<u8>,
    manifest: RawIndex,
    layers: Vec<Digest>,
}

/// The result of a plan: new configs and manifests, removed tags and what stays live.
struct Outcome {
    rewrites: Vec<Rewrite>,
    new_blobs: HashMap<Digest, Vec<u8>>,
    dropped: Vec<DroppedTag>,
    trimmed: Vec<TrimmedTag>,
    live: HashSet<Digest>,
}

impl<'a> Plan<'a> {
    fn new(layout: &LayoutDir, analysis: &'a Analysis, options: &PruneOptions) -> Result<Self> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (tag, _) in &analysis.tags {
            *counts.entry(tag.as_str()).or_default() += 1;
        }
        let mut tags = Vec::new();
        for (idx, (tag, desc)) in analysis.tags.iter().enumerate() {
            let reach = analysis.reaches[idx].clone();
            let cache = read_cache(layout, desc)?;
            let mtime = analysis
                .on_disk
                .get(&desc.digest)
                .map_or(0, |(_, modified)| unix_seconds(*modified));
            let newest = cache
                .as_ref()
                .and_then(|c| {
                    let results = c.results.iter().map(|r| (r.created / 1_000_000_000) as i64);
                    let layers = c.manifest.layers.iter().filter_map(|l| {
                        let text = l.annotation(annotation::CREATED_AT)?;
                        Some(go_time::parse(text).ok()?.unix_timestamp())
                    });
                    results.chain(layers).filter(|t| *t > 0).max()
                })
                .unwrap_or(mtime);
            let addressable = !tag.is_empty() && counts.get(tag.as_str()) == Some(&1);
            tags.push(TagState {
                tag: tag.clone(),
                desc: desc.clone(),
                reach,
                newest,
                // A tag named twice or not at all cannot be rewritten by tag.
                cache: cache.filter(|_| addressable),
                kept: !addressable || options.keep_tags.contains(tag),
                dropped: None,
            });
        }
        Ok(Plan {
            tags,
            sizes: &analysis.on_disk,
            over_budget: false,
        })
    }

    fn apply_age(&mut self, options: &PruneOptions) {
        let Some(older_than) = options.older_than else {
            return;
        };
        let cutoff = unix_seconds(options.now) - older_than.as_secs() as i64;
        for state in &mut self.tags {
            if state.kept {
                continue;
            }
            if state.newest < cutoff {
                state.dropped = Some(DropReason::OlderThan);
                continue;
            }
            if let Some(cache) = &mut state.cache {
                for (result, removed) in cache.results.iter().zip(cache.removed.iter_mut()) {
                    if result.used < i128::from(cutoff) * 1_000_000_000 {
                        *removed = true;
                    }
                }
                if cache.results_left() == 0 {
                    state.dropped = Some(DropReason::NoResultsLeft);
                }
            }
        }
    }

    fn apply_budget(&mut self, max_size: u64) {
        while self.live_bytes() > max_size {
            let remaining: Vec<usize> = (0..self.tags.len())
                .filter(|&i| self.tags[i].dropped.is_none())
                .collect();
            let newest = remaining
                .iter()
                .copied()
                .max_by_key(|&i| (self.tags[i].newest, i));
            let oldest = remaining
                .iter()
                .copied()
                .filter(|&i| !self.tags[i].kept && Some(i) != newest)
                .min_by_key(|&i| (self.tags[i].newest, i));
            let Some(oldest) = oldest else {
                break;
            };
            self.tags[oldest].dropped = Some(DropReason::Budget);
        }
        while self.live_bytes() > max_size {
            // The least recently used result left in any remaining cache (by `used`, then
            // `created`): results the newest build stands on go last.
            let mut oldest: Option<((i128, i128), usize, usize)> = None;
            for (tag_idx, state) in self.tags.iter().enumerate() {
                if state.dropped.is_some() {
                    continue;
                }
                let Some(cache) = &state.cache else {
                    continue;
                };
                for (result_idx, result) in cache.results.iter().enumerate() {
                    let age = (result.used, result.created);
                    if !cache.removed[result_idx]
                        && oldest.is_none_or(|(oldest_age, _, _)| age < oldest_age)
                    {
                        oldest = Some((age, tag_idx, result_idx));
                    }
                }
            }
            let Some((_, tag_idx, result_idx)) = oldest else {
                self.over_budget = true;
                break;
            };
            let state = &mut self.tags[tag_idx];
            let cache = state.cache.as_mut().expect("chosen from a cache tag");
            cache.removed[result_idx] = true;
            if cache.results_left() == 0 {
                state.dropped = Some(DropReason::NoResultsLeft);
            }
        }
    }

    /// The blobs a tag will reach under the current decisions (the manifest and config of a
    /// trimmed cache count with their current sizes, a close estimate).
    fn planned_reach(&self, state: &TagState) -> HashSet<Digest> {
        if state.dropped.is_some() {
            return HashSet::new();
        }
        match &state.cache {
            Some(cache) if cache.is_trimmed() => {
                let mut out = HashSet::from([
                    cache.raw.digest.clone(),
                    cache.manifest.config.digest.clone(),
                ]);
                for (result, removed) in cache.results.iter().zip(&cache.removed) {
                    if !removed {
                        out.extend(result.blobs.iter().cloned());
                    }
                }
                out
            }
            _ => state.reach.clone(),
        }
    }

    fn live_bytes(&self) -> u64 {
        let mut live = HashSet::new();
        for state in &self.tags {
            live.extend(self.planned_reach(state));
        }
        live.iter()
            .map(|d| self.sizes.get(d).map_or(0, |(size, _)| *size))
            .sum()
    }

    /// Builds the new configs and manifests of trimmed caches and the set of blobs left live.
    fn materialize(&mut self) -> Result<Outcome> {
        let mut outcome = Outcome {
            rewrites: Vec::new(),
            new_blobs: HashMap::new(),
            dropped: Vec::new(),
            trimmed: Vec::new(),
            live: HashSet::new(),
        };
        for state in &mut self.tags {
            if state.dropped.is_none()
                && let Some(cache) = &state.cache
                && cache.is_trimmed()
            {
                match rewrite(&state.tag, cache)? {
                    Some(rewrite) => {
                        outcome.trimmed.push(TrimmedTag {
                            tag: state.tag.clone(),
                            old_manifest: cache.raw.digest.clone(),
                            new_manifest: rewrite.manifest.digest.clone(),
                            results_removed: cache.results.len() - cache.results_left(),
                            results_left: cache.results_left(),
                        });
                        outcome.live.insert(rewrite.manifest.digest.clone());
                        outcome.live.insert(rewrite.config.digest.clone());
                        outcome.live.extend(rewrite.layers.iter().cloned());
                        outcome
                            .new_blobs
                            .insert(rewrite.config.digest.clone(), rewrite.config_bytes.clone());
                        outcome.new_blobs.insert(
                            rewrite.manifest.digest.clone(),
                            rewrite.manifest.bytes.to_vec(),
                        );
                        outcome.rewrites.push(rewrite);
                        continue;
                    }
                    None => state.dropped = Some(DropReason::NoResultsLeft),
                }
            }
            match state.dropped {
                Some(reason) => outcome.dropped.push(DroppedTag {
                    tag: state.tag.clone(),
                    manifest: state.desc.digest.clone(),
                    newest: (state.newest > 0).then(|| from_unix_seconds(state.newest)),
                    reason,
                }),
                None => outcome.live.extend(state.reach.iter().cloned()),
            }
        }
        Ok(outcome)
    }
}

/// Reads the cache `desc` names, or `None` if it is not a readable cache (an image, a damaged
/// manifest or config): such a tag is only ever kept or dropped whole.
fn read_cache(layout: &LayoutDir, desc: &Descriptor) -> Result<Option<CacheTag>> {
    let raw = match layout.read_index_sync(&IndexRef::Digest(desc.digest.clone())) {
        Ok(Some(raw)) => raw,
        Ok(None) | Err(_) => return Ok(None),
    };
    let raw = RawIndex {
        media_type: (!desc.media_type.is_empty()).then(|| desc.media_type.clone()),
        ..raw
    };
    let Ok(cache_manifest) = manifest::read(&raw) else {
        return Ok(None);
    };
    let config_bytes =
        match layout.read_blob_bytes(&cache_manifest.config.digest, crate::index::MAX_JSON_SIZE) {
            Ok(Some(bytes)) => bytes,
            Ok(None) | Err(_) => return Ok(None),
        };
    let Ok(config) = CacheConfig::from_json(&config_bytes) else {
        return Ok(None);
    };
    let listed: HashMap<Digest, Descriptor> = cache_manifest
        .layers
        .iter()
        .map(|d| (d.digest.clone(), d.clone()))
        .collect();
    if CacheGraph::from_config(&config, &|d| listed.get(d).cloned(), 0).is_err() {
        return Ok(None);
    }
    let mut results = Vec::new();
    for (record_idx, record) in config.records.iter().enumerate() {
        for (idx, result) in record.layers.iter().enumerate() {
            let blobs = config
                .chain_blobs(result.layer)
                .into_iter()
                .flatten()
                .collect();
            results.push(ResultInfo {
                record: record_idx,
                chain: false,
                idx,
                created: result.created_at.unix_timestamp_nanos(),
                used: 0,
                blobs,
            });
        }
        for (idx, chain) in record.chains.iter().enumerate() {
            // Chains list their layers bottom first.
            let blobs = chain
                .layers
                .iter()
                .rev()
                .filter_map(|&l| config.layer_blob(l))
                .collect();
            results.push(ResultInfo {
                record: record_idx,
                chain: true,
                idx,
                created: chain.created_at.unix_timestamp_nanos(),
                used: 0,
                blobs,
            });
        }
    }
    let mut newest_holding: HashMap<&Digest, i128> = HashMap::new();
    for result in &results {
        for blob in &result.blobs {
            let newest = newest_holding.entry(blob).or_insert(result.created);
            *newest = (*newest).max(result.created);
        }
    }
    let used: Vec<i128> = results
        .iter()
        .map(|result| {
            result
                .blobs
                .first()
                .and_then(|top| newest_holding.get(top))
                .map_or(result.created, |&newest| newest.max(result.created))
        })
        .collect();
    for (result, used) in results.iter_mut().zip(used) {
        result.used = used;
    }
    let removed = vec![false; results.len()];
    Ok(Some(CacheTag {
        raw,
        manifest: cache_manifest,
        config,
        results,
        removed,
    }))
}

/// The config without the removed results, re-serialized through the graph, and its manifest in
/// the cache's form; `None` when no layer is left.
fn rewrite(tag: &str, cache: &CacheTag) -> Result<Option<Rewrite>> {
    let mut config = cache.config.clone();
    let gone: BTreeSet<(usize, bool, usize)> = cache
        .results
        .iter()
        .zip(&cache.removed)
        .filter(|(_, removed)| **removed)
        .map(|(r, _)| (r.record, r.chain, r.idx))
        .collect();
    for (record_idx, record) in config.records.iter_mut().enumerate() {
        let mut idx = 0;
        record.layers.retain(|_| {
            let keep = !gone.contains(&(record_idx, false, idx));
            idx += 1;
            keep
        });
        let mut idx = 0;
        record.chains.retain(|_| {
            let keep = !gone.contains(&(record_idx, true, idx));
            idx += 1;
            keep
        });
    }
    let listed: HashMap<Digest, Descriptor> = cache
        .manifest
        .layers
        .iter()
        .map(|d| (d.digest.clone(), d.clone()))
        .collect();
    let graph =
        CacheGraph::from_config(&config, &|d| listed.get(d).cloned(), 0).map_err(|err| {
            Error::new(
                ErrorKind::Corrupt,
                format!(
                    "cache config {} cannot be rewritten: {err}",
                    cache.manifest.config.digest
                ),
            )
        })?;
    // Records left without results (and nothing below them) would keep growing the config.
    let (new_config, layers) = graph.without_dead_records().to_config();
    if layers.is_empty() {
        return Ok(None);
    }
    // Blobs no record names (cache mount contents of `cache-mounts=true` exports) stay listed.
    let mounts = cache
        .manifest
        .layers
        .iter()
        .filter(|d| d.annotations.contains_key(annotation::CACHE_MOUNT_ID))
        .cloned();
    let assembled = cache_core::export::assemble(
        &new_config,
        layers,
        mounts,
        &Default::default(),
        cache.manifest.form,
    );
    let (config_desc, config_bytes, raw, layers) = (
        assembled.config_desc,
        assembled.config_bytes,
        assembled.manifest,
        assembled.layers,
    );
    Ok(Some(Rewrite {
        tag: tag.to_owned(),
        config: config_desc,
        config_bytes,
        manifest: raw,
        layers: layers.into_iter().map(|d| d.digest).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_core::digest;

    #[test]
    fn writers_share_and_exclude_the_collector() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = LayoutDir::open(dir.path()).with_lock_timeout(Duration::from_millis(100));
        let one = layout.writer().expect("first writer");
        let two = layout.writer().expect("writers share the lock");
        assert!(layout.collector(Duration::ZERO).expect("try").is_none());
        drop(one);
        assert!(layout.collector(Duration::ZERO).expect("try").is_none());
        drop(two);
        let collector = layout.collector(Duration::ZERO).expect("try");
        assert!(collector.is_some());
        let err = layout.writer().expect_err("a collection holds the lock");
        assert!(err.is_temporary());
        assert!(err.to_string().contains("gc.lock"), "{err}");
        drop(collector);
        layout.writer().expect("writer after the collection");
        assert!(dir.path().join(GC_LOCK_FILE).exists(), "gc.lock is kept");
    }

    #[test]
    fn scans_digests_in_damaged_json() {
        let a = digest::sha256(b"a");
        let b = digest::sha256(b"b");
        let text = format!("{{\"x\":\"{a}\", broken {b}sha256:12 sha256:");
        let found = scan_digests(text.as_bytes());
        assert_eq!(found, vec![a, b]);
    }

    #[test]
    fn descriptors_anywhere_in_json_are_children() {
        let a = digest::sha256(b"a");
        let b = digest::sha256(b"b");
        let value = serde_json::json!({
            "config": {"mediaType": media_type::CACHE_CONFIG, "digest": a.to_string()},
            "deep": [{"x": {"digest": b.to_string()}}, {"digest": "not a digest"}],
        });
        let mut out = Vec::new();
        collect_descriptors(&value, &mut out);
        out.sort_by(|x, y| x.0.as_ref().cmp(y.0.as_ref()));
        let mut expected = vec![(a, media_type::CACHE_CONFIG.to_owned()), (b, String::new())];
        expected.sort_by(|x, y| x.0.as_ref().cmp(y.0.as_ref()));
        assert_eq!(out, expected);
    }

    #[test]
    fn leaves_and_manifests() {
        assert!(is_leaf(media_type::OCI_LAYER_GZIP));
        assert!(is_leaf(media_type::DOCKER_LAYER_GZIP));
        assert!(is_leaf(media_type::CACHE_CONFIG));
        assert!(!is_leaf(media_type::OCI_INDEX));
        assert!(!is_leaf(""));
        assert!(is_manifest_type(media_type::DOCKER_LIST));
        assert!(!is_manifest_type("application/x-unknown"));
    }

    #[test]
    fn ages() {
        let now = SystemTime::now();
        assert!(is_older(
            now - Duration::from_secs(10),
            now,
            Duration::from_secs(5)
        ));
        assert!(!is_older(
            now - Duration::from_secs(1),
            now,
            Duration::from_secs(5)
        ));
        assert!(!is_older(
            now + Duration::from_secs(100),
            now,
            Duration::from_secs(5)
        ));
        assert_eq!(unix_seconds(from_unix_seconds(-5)), -5);
        assert_eq!(
            unix_seconds(from_unix_seconds(1_700_000_000)),
            1_700_000_000
        );
    }
}
