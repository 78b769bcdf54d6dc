//! Garbage collection, disk usage and pruning: bounded size over many exports, concurrent
//! exporters, BuildKit fixtures, damaged directories, age and size budgets.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cache_core::backend::Result as BackendResult;
use cache_core::config::go_time;
use cache_core::descriptor::media_type;
use cache_core::export::{self, BlobSource};
use cache_core::graph::CacheResult;
use cache_core::manifest::ManifestForm;
use cache_core::{Backend, Blob, CacheGraph, Descriptor, Digest, IndexRef, RawIndex, digest};
use cache_local::{DropReason, GcOptions, LayoutDir, PruneOptions};

use crate::util::{check_tag, content, desc_of, runtime};

/// Blobs held in memory, as a build's store would hold them.
#[derive(Default)]
struct Memory(HashMap<Digest, Bytes>);

impl BlobSource for Memory {
    async fn open_blob(&self, desc: &Descriptor) -> BackendResult<Option<Blob>> {
        Ok(self.0.get(&desc.digest).cloned().map(Blob::from_bytes))
    }
}

/// A cache of independent results: each a record whose chain is the listed layers.
#[derive(Default)]
struct Cache {
    graph: CacheGraph,
    blobs: Memory,
}

impl Cache {
    /// Adds a record `name` with a result made of layers `(label, size)` (bottom first) at
    /// `created` (RFC 3339).
    fn result(mut self, name: &str, layers: &[(&str, usize)], created: &str) -> Cache {
        let descs: Vec<Descriptor> = layers
            .iter()
            .map(|(label, size)| {
                let bytes = content(label, *size);
                let desc = desc_of(media_type::OCI_LAYER_GZIP, &bytes);
                self.blobs.0.insert(desc.digest.clone(), bytes);
                desc
            })
            .collect();
        let top = self
            .graph
            .add_chain(descs)
            .expect("a chain of at least one layer");
        let record = self
            .graph
            .add_record(digest::sha256(name.as_bytes()), Vec::new());
        self.graph.add_result(
            record,
            CacheResult {
                layer: top,
                created_at: go_time::parse(created).expect("valid time"),
                source: 0,
            },
        );
        self
    }

    /// Bytes of the layers, config and manifest an export of this cache writes.
    fn export_size(&self) -> u64 {
        let (config, layers) = self.graph.to_config();
        let config_bytes = config.to_json();
        let config_desc = Descriptor::new(
            media_type::CACHE_CONFIG,
            digest::sha256(&config_bytes),
            config_bytes.len() as u64,
        );
        let raw = cache_core::manifest::write(ManifestForm::ImageManifest, &config_desc, &layers);
        let unique: HashMap<&Digest, u64> = layers.iter().map(|l| (&l.digest, l.size)).collect();
        unique.values().sum::<u64>() + config_desc.size + raw.bytes.len() as u64
    }

    /// Exports into `layout` under `tag` holding the writer lock, then collects garbage if `gc`.
    async fn export(&self, layout: &LayoutDir, tag: &str, gc: bool) -> RawIndex {
        let guard = layout.writer().expect("writer lock");
        let options = export::Options {
            tag: tag.to_owned(),
            form: ManifestForm::ImageManifest,
            max_parallel: 4,
            known_present: HashSet::new(),
            extra_blobs: Vec::new(),
            config_annotations: Default::default(),
        };
        let report = export::export(layout, &self.blobs, &self.graph, &options, &|_| {})
            .await
            .unwrap_or_else(|err| panic!("export of {tag}: {err}"));
        drop(guard);
        if gc {
            let report = layout
                .collect_garbage(&GcOptions { dry_run: false })
                .expect("collect garbage");
            assert!(report.errors.is_empty(), "{:?}", report.errors);
        }
        report.manifest.expect("a non-empty cache")
    }
}

/// Checks that `tag` names a complete, valid cache that imports with `n_results` results.
async fn check_cache(layout: &LayoutDir, tag: &str, n_results: usize) {
    check_tag(layout, tag, None).await;
    let imported = cache_core::import::import(
        layout,
        &IndexRef::Tag(tag.to_owned()),
        0,
        &Default::default(),
    )
    .await
    .unwrap_or_else(|err| panic!("import of {tag}: {err}"))
    .unwrap_or_else(|| panic!("tag {tag} is missing"));
    let results: usize = imported
        .graph
        .records()
        .iter()
        .map(|r| r.results.len())
        .sum();
    assert_eq!(results, n_results, "results of tag {tag}");
}

/// Bytes of every file under `dir/blobs`.
fn blob_bytes(dir: &Path) -> u64 {
    fn walk(dir: &Path) -> u64 {
        let Ok(entries) = fs::read_dir(dir) else {
            return 0;
        };
        entries
            .map(|e| e.expect("entry").path())
            .map(|p| {
                if p.is_dir() {
                    walk(&p)
                } else {
                    fs::metadata(&p).expect("metadata").len()
                }
            })
            .sum()
    }
    walk(&dir.join("blobs"))
}

/// A cache whose content changes with `round`: a shared base layer and a changing top.
fn changing_cache(label: &str, round: u32) -> Cache {
    Cache::default()
        .result(
            &format!("{label}-base"),
            &[("base", 200_000)],
            "2026-01-01T00:00:00Z",
        )
        .result(
            &format!("{label}-app"),
            &[
                ("base", 200_000),
                (&format!("{label}-deps-{}", round / 3), 150_000),
                (&format!("{label}-app-{round}"), 100_000 + round as usize),
            ],
            "2026-01-01T00:00:00Z",
        )
}

#[test]
fn twenty_exports_stay_within_one_export_per_tag() {
    let rt = runtime();
    rt.block_on(async {
        let with_gc = tempfile::tempdir().expect("tempdir");
        let without_gc = tempfile::tempdir().expect("tempdir");
        let layout = LayoutDir::open(with_gc.path());
        let plain = LayoutDir::open(without_gc.path());
        let stable =
            Cache::default().result("stable", &[("stable", 50_000)], "2026-01-01T00:00:00Z");
        stable.export(&layout, "stable", true).await;
        stable.export(&plain, "stable", false).await;
        for round in 0..20 {
            let cache = changing_cache("app", round);
            cache.export(&layout, "latest", true).await;
            cache.export(&plain, "latest", false).await;
            // Shared blobs (the base) are counted once, so one export per tag is an upper bound.
            let bound = cache.export_size() + stable.export_size();
            let size = blob_bytes(with_gc.path());
            assert!(
                size <= bound,
                "round {round}: {size} bytes on disk, more than one export per tag ({bound})"
            );
            let usage = layout.disk_usage().expect("du");
            assert_eq!(usage.orphaned_blobs, 0, "round {round}");
            assert_eq!(usage.live_bytes, size, "round {round}");
            check_cache(&layout, "latest", 2).await;
            check_cache(&layout, "stable", 1).await;
        }
        let size = blob_bytes(with_gc.path());
        let grown = blob_bytes(without_gc.path());
        eprintln!("20 exports: {size} bytes with gc, {grown} bytes without");
        assert!(
            grown > 5 * size,
            "without gc the directory grows: {grown} vs {size}"
        );
        let usage = plain.disk_usage().expect("du");
        assert_eq!(usage.live_bytes, size);
        assert_eq!(usage.orphaned_bytes + usage.live_bytes, grown);
    });
}

#[test]
fn four_concurrent_exporters_all_land() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = Arc::new(dir.path().to_owned());
    let running = Arc::new(AtomicUsize::new(4));
    // A collector that runs all the time, on top of each exporter collecting after its export:
    // without the writer lock it would delete blobs of exports in flight.
    let collector = {
        let root = Arc::clone(&root);
        let running = Arc::clone(&running);
        std::thread::spawn(move || {
            let layout = LayoutDir::open(root.as_path());
            let (mut busy, mut done) = (0u32, 0u32);
            while running.load(Ordering::SeqCst) > 0 {
                let report = layout.collect_garbage(&GcOptions::default()).expect("gc");
                if report.busy {
                    busy += 1;
                } else {
                    done += 1;
                }
            }
            (busy, done)
        })
    };
    let threads: Vec<_> = (0..4)
        .map(|n| {
            let root = Arc::clone(&root);
            let running = Arc::clone(&running);
            std::thread::spawn(move || {
                let layout = LayoutDir::open(root.as_path());
                let tag = format!("job{n}");
                runtime().block_on(async {
                    for round in 0..6 {
                        let cache = Cache::default().result(
                            &tag,
                            &[
                                ("shared-base", 300_000),
                                (&format!("{tag}-{round}"), 1_000_000),
                            ],
                            "2026-01-01T00:00:00Z",
                        );
                        cache.export(&layout, &tag, true).await;
                        // Every tag exported so far is complete after every collection.
                        check_tag(&layout, &tag, None).await;
                    }
                });
                running.fetch_sub(1, Ordering::SeqCst);
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("exporter thread");
    }
    let (busy, done) = collector.join().expect("collector thread");
    eprintln!("concurrent collections: {busy} busy (skipped), {done} done");
    assert!(done > 10, "the collector ran {done} times only");
    let layout = LayoutDir::open(dir.path());
    let report = layout.collect_garbage(&GcOptions::default()).expect("gc");
    assert!(!report.busy);
    runtime().block_on(async {
        for n in 0..4 {
            check_cache(&layout, &format!("job{n}"), 1).await;
        }
    });
    // Four tags of one unique layer each, plus the shared base and small metadata.
    let usage = layout.disk_usage().expect("du");
    assert_eq!(usage.tags.len(), 4);
    assert_eq!(usage.orphaned_blobs, 0);
    assert!(
        usage.live_bytes < 4 * 1_000_000 + 300_000 + 4 * 2_000,
        "{usage:?}"
    );
}

#[test]
fn a_running_export_blocks_collection() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutDir::open(dir.path());
    rt.block_on(async {
        let old = Cache::default().result("r", &[("old", 10_000)], "2026-01-01T00:00:00Z");
        old.export(&layout, "latest", true).await;
        // An export in flight: its blobs are written but not yet tagged.
        let guard = layout.writer().expect("writer");
        let fresh = content("fresh", 20_000);
        let fresh_desc = desc_of(media_type::OCI_LAYER_GZIP, &fresh);
        layout
            .write_blob(&fresh_desc, Blob::from_bytes(fresh))
            .await
            .expect("write");
        let report = layout.collect_garbage(&GcOptions::default()).expect("gc");
        assert!(report.busy, "{report:?}");
        assert_eq!(report.deleted_blobs, 0);
        assert!(layout.blob_path(&fresh_desc.digest).exists());
        drop(guard);
        let report = layout.collect_garbage(&GcOptions::default()).expect("gc");
        assert!(!report.busy);
        assert_eq!(report.deleted_blobs, 1);
        assert_eq!(report.deleted_bytes, 20_000);
        assert!(!layout.blob_path(&fresh_desc.digest).exists());
        check_cache(&layout, "latest", 1).await;
    });
}

#[test]
fn collection_keeps_everything_any_entry_reaches() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutDir::open(dir.path());
    rt.block_on(async {
        let put = |bytes: Vec<u8>, media: &str| {
            let desc = desc_of(media, &bytes);
            let layout = layout.clone();
            async move {
                layout
                    .write_blob(&desc, Blob::from_bytes(bytes))
                    .await
                    .expect("write");
                desc
            }
        };
        // An image index -> image manifest -> config and layer, as an image in the layout.
        let layer = put(
            content("img-layer", 5_000).to_vec(),
            media_type::OCI_LAYER_GZIP,
        )
        .await;
        let config = put(b"{}".to_vec(), media_type::OCI_IMAGE_CONFIG).await;
        let image = serde_json::json!({
            "schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST,
            "config": config, "layers": [layer],
        });
        let image = put(
            serde_json::to_vec(&image).unwrap(),
            media_type::OCI_MANIFEST,
        )
        .await;
        let index = serde_json::json!({
            "schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": [image],
        });
        let index = RawIndex::new(
            Some(media_type::OCI_INDEX.to_owned()),
            serde_json::to_vec(&index).unwrap(),
        );
        layout
            .write_index("image", &index)
            .await
            .expect("tag image");
        // An artifact of an unknown type whose JSON names a blob somewhere deep.
        let deep = put(content("deep", 3_000).to_vec(), "").await;
        let artifact = serde_json::json!({"things": [{"nested": {"digest": deep.digest}}]});
        let artifact = RawIndex::new(
            Some("application/x-unknown+json".to_owned()),
            serde_json::to_vec(&artifact).unwrap(),
        );
        layout
            .write_index("artifact", &artifact)
            .await
            .expect("tag");
        // A damaged manifest: not JSON, but it names a blob.
        let named = put(content("named", 1_000).to_vec(), "").await;
        let damaged = RawIndex::new(
            Some(media_type::OCI_MANIFEST.to_owned()),
            format!("{{\"layers\":[{{\"digest\":\"{}\" truncated", named.digest),
        );
        layout.write_index("damaged", &damaged).await.expect("tag");
        let orphan = put(content("orphan", 7_000).to_vec(), "").await;

        let dry = layout
            .collect_garbage(&GcOptions { dry_run: true })
            .expect("dry run");
        assert!(dry.dry_run);
        assert_eq!((dry.deleted_blobs, dry.deleted_bytes), (1, 7_000));
        assert!(
            layout.blob_path(&orphan.digest).exists(),
            "dry run deletes nothing"
        );
        let report = layout.collect_garbage(&GcOptions::default()).expect("gc");
        assert_eq!((report.deleted_blobs, report.deleted_bytes), (1, 7_000));
        assert_eq!(report.live_blobs, 8);
        for desc in [&layer, &config, &image, &deep, &named] {
            assert!(layout.blob_path(&desc.digest).exists(), "{}", desc.digest);
        }
        assert!(!layout.blob_path(&orphan.digest).exists());
        check_tag(&layout, "image", Some(&index)).await;
    });
}

#[test]
fn temporary_files_go_as_soon_as_no_writer_holds_the_lock() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutDir::open(dir.path());
    rt.block_on(async {
        Cache::default()
            .result("r", &[("l", 1_000)], "2026-01-01T00:00:00Z")
            .export(&layout, "latest", false)
            .await;
    });
    // Fresh files of killed writers, in the blob directory and at the top.
    let in_blobs = dir.path().join("blobs/sha256/.tmp-killed");
    let at_top = dir.path().join(".tmp-index");
    fs::write(&in_blobs, b"left by a killed export").expect("write");
    fs::write(&at_top, b"index").expect("write");
    let usage = layout.disk_usage().expect("du");
    assert_eq!((usage.temp_files, usage.temp_bytes), (2, 28));
    // A live writer may own them: nothing goes.
    let writer = layout.writer().expect("writer");
    let report = layout.collect_garbage(&GcOptions::default()).expect("gc");
    assert!(report.busy);
    assert!(in_blobs.exists() && at_top.exists());
    drop(writer);
    // A dry run of prune counts them; prune deletes them and reports what is left on disk.
    let options = PruneOptions {
        keep_tags: Vec::new(),
        older_than: None,
        max_size: None,
        dry_run: true,
        now: SystemTime::now(),
    };
    let dry = layout.prune(&options).expect("dry prune");
    assert_eq!((dry.deleted_temp_files, dry.freed_bytes), (2, 28));
    assert!(in_blobs.exists());
    let report = layout
        .prune(&PruneOptions {
            dry_run: false,
            ..options
        })
        .expect("prune");
    assert_eq!(report.deleted_temp_files, 2);
    assert!(!in_blobs.exists() && !at_top.exists());
    let after = layout.disk_usage().expect("du");
    assert_eq!(report.bytes_before, usage.total_bytes());
    assert_eq!(report.bytes_after, after.total_bytes());
    assert_eq!(report.bytes_before - report.freed_bytes, report.bytes_after);
}

#[test]
fn a_recent_buildkit_upload_makes_collection_busy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutDir::open(dir.path());
    runtime().block_on(async {
        Cache::default()
            .result("r", &[("l", 1_000)], "2026-01-01T00:00:00Z")
            .export(&layout, "latest", false)
            .await;
    });
    let orphan = dir.path().join(format!(
        "blobs/sha256/{}",
        digest::sha256(b"orphan").digest()
    ));
    fs::write(&orphan, b"orphan").expect("write");
    fs::create_dir_all(dir.path().join("ingest/abc")).expect("mkdir");
    fs::write(dir.path().join("ingest/abc/data"), b"partial").expect("write");
    let report = layout.collect_garbage(&GcOptions::default()).expect("gc");
    assert!(report.busy);
    assert!(orphan.exists());
    fs::remove_dir_all(dir.path().join("ingest/abc")).expect("rm");
    let report = layout.collect_garbage(&GcOptions::default()).expect("gc");
    assert!(!report.busy);
    assert!(!orphan.exists());
}

/// The BuildKit fixtures directory, or `None` (with a message) when it is absent outside CI.
fn fixtures_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("BUILDCACHE_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/buildkit"),
    };
    if dir.join("local-min").is_dir() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "BuildKit fixtures not found at {}: set BUILDCACHE_FIXTURES on CI",
            dir.display()
        );
    }
    eprintln!(
        "skipping: BuildKit fixtures not found at {} (set BUILDCACHE_FIXTURES)",
        dir.display()
    );
    None
}

/// Copies fixture `name` into a fresh temporary directory (fixtures are read-only).
fn copy_fixture(fixtures: &Path, name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = fixtures.join(name);
    for file in ["oci-layout", "index.json"] {
        fs::copy(src.join(file), dir.path().join(file)).expect("copy");
    }
    fs::create_dir_all(dir.path().join("blobs/sha256")).expect("mkdir");
    for entry in fs::read_dir(src.join("blobs/sha256")).expect("read_dir") {
        let path = entry.expect("entry").path();
        let target = dir
            .path()
            .join("blobs/sha256")
            .join(path.file_name().expect("name"));
        fs::write(&target, fs::read(&path).expect("read")).expect("write");
    }
    dir
}

/// Sizes of the fixture's blobs.
fn fixture_blobs(dir: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = fs::read_dir(dir.join("blobs/sha256"))
        .expect("read_dir")
        .map(|e| {
            let path = e.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            (name, fs::metadata(&path).expect("metadata").len())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn disk_usage_and_collection_of_buildkit_fixtures() {
    let Some(fixtures) = fixtures_dir() else {
        return;
    };
    for name in ["local-min", "local-max", "local-max-legacy-index"] {
        let dir = copy_fixture(&fixtures, name);
        let blobs = fixture_blobs(dir.path());
        let total: u64 = blobs.iter().map(|(_, size)| size).sum();
        let layout = LayoutDir::open_existing(dir.path()).expect("layout");
        let usage = layout.disk_usage().expect("du");
        assert_eq!(
            usage.live_blobs,
            blobs.len() as u64,
            "{name}: every blob is live"
        );
        assert_eq!(usage.live_bytes, total, "{name}");
        assert_eq!(
            (usage.orphaned_blobs, usage.orphaned_bytes),
            (0, 0),
            "{name}"
        );
        assert_eq!(usage.tags.len(), 1);
        assert_eq!(usage.tags[0].tag, "latest");
        assert_eq!(usage.tags[0].bytes, total);
        assert_eq!(usage.tags[0].unique_bytes, total);
        assert!(usage.missing.is_empty());
        let report = layout.collect_garbage(&GcOptions::default()).expect("gc");
        assert_eq!(report.deleted_blobs, 0, "{name}: nothing to collect");
        assert_eq!(fixture_blobs(dir.path()), blobs);

        // An orphan, a deleted layer and a second tag sharing the manifest.
        let orphan = b"not referenced by anything";
        fs::write(
            dir.path()
                .join("blobs/sha256")
                .join(digest::sha256(orphan).digest()),
            orphan,
        )
        .expect("write orphan");
        let (biggest, biggest_size) = blobs
            .iter()
            .max_by_key(|(_, size)| *size)
            .cloned()
            .expect("blobs");
        fs::remove_file(dir.path().join("blobs/sha256").join(&biggest)).expect("rm");
        let usage = layout.disk_usage().expect("du");
        assert_eq!(usage.orphaned_blobs, 1, "{name}");
        assert_eq!(usage.orphaned_bytes, orphan.len() as u64);
        assert_eq!(usage.live_bytes, total - biggest_size);
        assert_eq!(
            usage
                .missing
                .iter()
                .map(|d| d.digest().to_owned())
                .collect::<Vec<_>>(),
            vec![biggest.clone()],
            "{name}"
        );
        assert_eq!(usage.tags[0].missing.len(), 1);
        let report = layout.collect_garbage(&GcOptions::default()).expect("gc");
        assert_eq!(report.deleted_blobs, 1);
        assert_eq!(report.deleted_bytes, orphan.len() as u64);
        assert_eq!(fixture_blobs(dir.path()).len(), blobs.len() - 1);
    }
}

/// A cache directory with three tags of different ages sharing one base layer:
/// `old` (2025-01), `mid` (2026-06) and `new` (2026-11, two results of different ages).
async fn three_tags(layout: &LayoutDir) {
    Cache::default()
        .result(
            "old",
            &[("base", 100_000), ("old", 100_000)],
            "2025-01-01T00:00:00Z",
        )
        .export(layout, "old", false)
        .await;
    Cache::default()
        .result(
            "mid",
            &[("base", 100_000), ("mid", 100_000)],
            "2026-06-01T00:00:00Z",
        )
        .export(layout, "mid", false)
        .await;
    Cache::default()
        .result(
            "new-a",
            &[("base", 100_000), ("new-a", 100_000)],
            "2026-11-01T00:00:00Z",
        )
        .result(
            "new-b",
            &[("base", 100_000), ("new-b", 100_000)],
            "2026-11-20T00:00:00Z",
        )
        .export(layout, "new", false)
        .await;
}

fn prune_options(now: &str) -> PruneOptions {
    let now = go_time::parse(now).expect("time").unix_timestamp();
    PruneOptions {
        keep_tags: Vec::new(),
        older_than: None,
        max_size: None,
        dry_run: false,
        now: SystemTime::UNIX_EPOCH + Duration::from_secs(now as u64),
    }
}

fn tag_names(layout: &LayoutDir) -> Vec<String> {
    let mut tags: Vec<String> = layout
        .tags()
        .expect("tags")
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    tags.sort();
    tags
}

#[test]
fn prune_by_age_drops_old_tags_and_keeps_kept_ones() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutDir::open(dir.path());
    rt.block_on(three_tags(&layout));
    let mut options = prune_options("2026-11-23T00:00:00Z");
    options.older_than = Some(Duration::from_secs(90 * 86_400));
    options.keep_tags = vec!["mid".into()];
    options.dry_run = true;
    let dry = layout.prune(&options).expect("dry run");
    assert_eq!(
        tag_names(&layout),
        ["mid", "new", "old"],
        "a dry run changes nothing"
    );
    options.dry_run = false;
    let report = layout.prune(&options).expect("prune");
    assert_eq!(tag_names(&layout), ["mid", "new"]);
    assert_eq!(report.dropped_tags.len(), 1);
    assert_eq!(report.dropped_tags[0].tag, "old");
    assert_eq!(report.dropped_tags[0].reason, DropReason::OlderThan);
    assert!(report.trimmed.is_empty(), "{report:?}");
    // The old tag's own layer, config and manifest; the base is shared.
    assert!(
        report.freed_bytes > 100_000 && report.freed_bytes < 103_000,
        "{report:?}"
    );
    assert_eq!(report.freed_bytes, dry.freed_bytes);
    assert_eq!(report.freed_blobs, dry.freed_blobs);
    assert_eq!(report.bytes_after, dry.bytes_after);
    assert_eq!(report.bytes_before - report.freed_bytes, report.bytes_after);
    rt.block_on(async {
        check_cache(&layout, "mid", 1).await;
        check_cache(&layout, "new", 2).await;
    });

    // Results older than the cutoff inside a kept cache go, the cache is rewritten.
    options.older_than = Some(Duration::from_secs(10 * 86_400));
    options.keep_tags = vec!["mid".into()];
    let report = layout.prune(&options).expect("prune");
    assert_eq!(report.trimmed.len(), 1, "{report:?}");
    assert_eq!(report.trimmed[0].tag, "new");
    assert_eq!(
        (
            report.trimmed[0].results_removed,
            report.trimmed[0].results_left
        ),
        (1, 1)
    );
    assert_eq!(tag_names(&layout), ["mid", "new"]);
    rt.block_on(async {
        check_cache(&layout, "mid", 1).await;
        check_cache(&layout, "new", 1).await;
    });
    assert_eq!(layout.disk_usage().expect("du").orphaned_blobs, 0);
}

#[test]
fn prune_to_a_budget_drops_old_tags_then_old_results() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutDir::open(dir.path());
    rt.block_on(three_tags(&layout));
    let before = layout.disk_usage().expect("du");
    assert!(before.live_bytes > 500_000 && before.live_bytes < 510_000);
    assert_eq!(before.shared_bytes, 100_000, "the base layer is shared");

    // Room for two tags: the oldest goes.
    let mut options = prune_options("2026-11-23T00:00:00Z");
    options.max_size = Some(420_000);
    let report = layout.prune(&options).expect("prune");
    assert_eq!(tag_names(&layout), ["mid", "new"]);
    assert_eq!(report.dropped_tags[0].reason, DropReason::Budget);
    assert!(report.bytes_after <= 420_000);
    assert!(!report.over_budget);

    // Room for less than the newest cache: `mid` goes, then the older result of `new`.
    options.max_size = Some(250_000);
    options.dry_run = true;
    let dry = layout.prune(&options).expect("dry run");
    options.dry_run = false;
    let report = layout.prune(&options).expect("prune");
    assert_eq!(tag_names(&layout), ["new"]);
    assert_eq!(report.trimmed.len(), 1);
    assert_eq!(report.trimmed[0].results_left, 1);
    assert!(report.bytes_after <= 250_000, "{report:?}");
    assert_eq!(dry.freed_blobs, report.freed_blobs);
    assert_eq!(dry.bytes_after, report.bytes_after);
    rt.block_on(check_cache(&layout, "new", 1));
    let usage = layout.disk_usage().expect("du");
    assert_eq!(usage.live_bytes, report.bytes_after);
    assert_eq!(usage.orphaned_blobs, 0);

    // A budget nothing fits: the last result goes with its tag, and the report says so.
    options.max_size = Some(1_000);
    let report = layout.prune(&options).expect("prune");
    assert!(
        report.over_budget || tag_names(&layout).is_empty(),
        "{report:?}"
    );
    assert!(tag_names(&layout).is_empty());
    assert_eq!(layout.disk_usage().expect("du").live_bytes, 0);
}

#[test]
fn prune_of_a_buildkit_fixture_rewrites_its_config() {
    let Some(fixtures) = fixtures_dir() else {
        return;
    };
    let rt = runtime();
    for name in ["local-max", "local-max-legacy-index"] {
        let dir = copy_fixture(&fixtures, name);
        let layout = LayoutDir::open_existing(dir.path()).expect("layout");
        let before = layout.disk_usage().expect("du");
        // Just under the whole cache: the oldest results go, the big base layer stays if it can.
        let mut options = prune_options("2026-11-23T00:00:00Z");
        options.max_size = Some(before.live_bytes - 1);
        let report = layout.prune(&options).expect("prune");
        assert_eq!(report.trimmed.len(), 1, "{name}: {report:?}");
        assert!(report.bytes_after < before.live_bytes);
        assert_eq!(tag_names(&layout), ["latest"]);
        let imported = rt
            .block_on(cache_core::import::import(
                &layout,
                &IndexRef::Tag("latest".into()),
                0,
                &Default::default(),
            ))
            .expect("import")
            .expect("tag");
        assert_eq!(imported.cache_manifest.form, {
            if name == "local-max" {
                ManifestForm::ImageManifest
            } else {
                ManifestForm::OciIndex
            }
        });
        rt.block_on(check_tag(&layout, "latest", None));
    }
}

#[test]
fn removing_a_tag_keeps_every_other_entry_and_field() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutDir::open(dir.path());
    let image_entry = rt.block_on(async {
        Cache::default()
            .result("old", &[("old", 1_000)], "2020-01-01T00:00:00Z")
            .export(&layout, "old", false)
            .await;
        let kept = Cache::default()
            .result("kept", &[("kept", 1_000)], "2026-11-01T00:00:00Z")
            .export(&layout, "kept", false)
            .await;
        // An entry as containerd writes it, with a field this crate does not know.
        format!(
            concat!(
                r#"{{"mediaType":"{}","digest":"{}","size":{},"#,
                r#""annotations":{{"io.containerd.image.name":"docker.io/library/app:1","#,
                r#""org.opencontainers.image.ref.name":"1"}},"future":[1,2]}}"#
            ),
            media_type::OCI_MANIFEST,
            kept.digest,
            kept.bytes.len()
        )
    });
    let index_path = dir.path().join("index.json");
    let index = fs::read_to_string(&index_path).expect("index");
    let patched = index.replacen(
        r#""manifests":["#,
        &format!(r#""annotations":{{"k":"v"}},"manifests":[{image_entry},"#),
        1,
    );
    fs::write(&index_path, &patched).expect("write index");
    let mut options = prune_options("2026-11-23T00:00:00Z");
    options.older_than = Some(Duration::from_secs(365 * 86_400));
    options.keep_tags = vec!["1".into()];
    let report = layout.prune(&options).expect("prune");
    assert_eq!(report.dropped_tags.len(), 1, "{report:?}");
    assert_eq!(report.dropped_tags[0].tag, "old");
    let after = fs::read_to_string(&index_path).expect("index");
    assert!(after.contains(&image_entry), "{after}");
    assert!(after.contains(r#""annotations":{"k":"v"}"#), "{after}");
    assert!(!after.contains(r#""org.opencontainers.image.ref.name":"old""#));
    assert_eq!(tag_names(&layout), ["1", "kept"]);
    rt.block_on(check_cache(&layout, "kept", 1));
}
