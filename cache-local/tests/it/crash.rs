//! Crash and concurrency safety: exports killed at each step, and exports racing on one directory.
//!
//! Child processes re-run this test binary with `CACHE_LOCAL_CHILD` set; [`child_process`] is
//! their entry point and does nothing in a normal run.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cache_core::Backend;
use cache_local::LayoutDir;

use crate::util::{check_all_blobs, check_tag, runtime, write_version};

const CHILD_ENV: &str = "CACHE_LOCAL_CHILD";
const DIR_ENV: &str = "CACHE_LOCAL_CHILD_DIR";
const TAG: &str = "latest";
/// The layer size of exported versions: large enough to be streamed in 128 chunks.
const LAYER_SIZE: usize = 8 << 20;

/// Entry point of the child processes; returns at once unless `CACHE_LOCAL_CHILD` is set.
///
/// Modes: `kill/<point>/<n>` exports version `v2` of tag `latest` and stops at the `n`th time
/// the write path reaches `<point>`, printing `PAUSED` and waiting to be killed;
/// `race/<tag>/<rounds>` exports `rounds` versions of `<tag>`.
#[test]
fn child_process() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = std::env::var(DIR_ENV).expect("CACHE_LOCAL_CHILD_DIR is set for children");
    let layout = LayoutDir::open(dir);
    let parts: Vec<&str> = mode.split('/').collect();
    match parts.as_slice() {
        ["kill", point, nth] => {
            let point = (*point).to_owned();
            let nth: u64 = nth.parse().expect("count");
            let seen = AtomicU64::new(0);
            cache_local::set_pause_hook(move |reached| {
                if reached == point && seen.fetch_add(1, Ordering::SeqCst) + 1 == nth {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "PAUSED").expect("stdout");
                    out.flush().expect("stdout");
                    loop {
                        std::thread::sleep(Duration::from_secs(60));
                    }
                }
            });
            runtime().block_on(async {
                let raw = write_version(&layout, "v2", LAYER_SIZE).await;
                layout.write_index(TAG, &raw).await.expect("write_index");
            });
            println!("DONE");
        }
        ["race", tag, rounds] => {
            let rounds: u32 = rounds.parse().expect("rounds");
            let layout = layout.with_lock_timeout(Duration::from_secs(30));
            runtime().block_on(async {
                for round in 0..rounds {
                    let raw = write_version(&layout, &format!("{tag}-{round}"), 4096).await;
                    layout.write_index(tag, &raw).await.expect("write_index");
                }
            });
        }
        _ => panic!("unknown {CHILD_ENV} mode {mode:?}"),
    }
}

fn spawn_child(dir: &Path, mode: &str) -> Child {
    Command::new(std::env::current_exe().expect("test binary path"))
        .args([
            "crash::child_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .env(DIR_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child test process")
}

/// Runs a child that exports `v2` and stops at `point`, then kills it with SIGKILL.
fn kill_at(dir: &Path, point: &str, nth: u64) {
    let mut child = spawn_child(dir, &format!("kill/{point}/{nth}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest prints `test crash::child_process ... ` before the test's own output.
            for word in ["PAUSED", "DONE"] {
                if line.ends_with(word) {
                    let _ = tx.send(word);
                    return;
                }
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(120));
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    match line {
        Ok("PAUSED") => {}
        other => panic!("child did not pause at {point} #{nth}: {other:?}"),
    }
}

#[test]
fn killed_exports_leave_the_previous_version_readable() {
    // (point, occurrence, whether the new version is visible afterwards, temp file expected in)
    let cases = [
        ("blob:chunk-written", 60, false, Some("blobs/sha256")),
        ("blob:before-rename", 2, false, Some("blobs/sha256")),
        ("index:blob-written", 1, false, None),
        ("index:locked", 1, false, None),
        ("index:before-rename", 1, false, Some("")),
        ("index:renamed", 1, true, None),
    ];
    let rt = runtime();
    for (point, nth, new_visible, temp_in) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = LayoutDir::open(dir.path()).with_lock_timeout(Duration::from_secs(10));
        let v1 = rt.block_on(async {
            let v1 = write_version(&layout, "v1", 300_000).await;
            layout.write_index(TAG, &v1).await.expect("write v1");
            v1
        });
        kill_at(dir.path(), point, nth);

        let temps = layout.list_temp_files().expect("temps");
        match temp_in {
            Some(sub) => assert!(
                temps
                    .iter()
                    .any(|(path, _)| path.parent() == Some(&dir.path().join(sub))),
                "{point}: the kill should leave a temporary file in {sub:?}: {temps:?}"
            ),
            None => assert!(temps.is_empty(), "{point}: {temps:?}"),
        }
        let index = std::fs::read(dir.path().join("index.json")).expect("index.json");
        serde_json::from_slice::<serde_json::Value>(&index)
            .unwrap_or_else(|err| panic!("{point}: index.json is not JSON: {err}"));
        rt.block_on(async {
            let raw = check_tag(&layout, TAG, None).await;
            if new_visible {
                assert_ne!(raw.digest, v1.digest, "{point}: v2 was committed");
            } else {
                assert_eq!(raw.digest, v1.digest, "{point}: v1 must still be the tag");
            }
            check_all_blobs(&layout).await;
            // The killed process held no lock any more: a new export succeeds promptly.
            let v3 = write_version(&layout, "v3", 1000).await;
            layout
                .write_index(TAG, &v3)
                .await
                .unwrap_or_else(|err| panic!("{point}: export after the kill failed: {err}"));
            check_tag(&layout, TAG, Some(&v3)).await;
        });
    }
}

#[test]
fn racing_exports_from_two_processes_keep_both_tags() {
    let rounds = 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutDir::open(dir.path());
    let mut children = [
        spawn_child(dir.path(), &format!("race/alpha/{rounds}")),
        spawn_child(dir.path(), &format!("race/beta/{rounds}")),
    ];
    // Meanwhile, readers must always see a complete index.json.
    let mut n_reads = 0;
    loop {
        let finished = children
            .iter_mut()
            .all(|child| child.try_wait().expect("try_wait").is_some());
        let tags = layout
            .tags()
            .unwrap_or_else(|err| panic!("reading index.json during the race: {err}"));
        assert!(tags.len() <= 2, "duplicate entries: {tags:?}");
        n_reads += 1;
        if finished {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for mut child in children {
        let status = child.wait().expect("wait");
        assert!(status.success(), "a racing export failed: {status}");
    }
    assert!(n_reads > 1);
    let tags: Vec<String> = layout
        .tags()
        .expect("tags")
        .into_iter()
        .map(|(tag, _)| tag)
        .collect();
    let mut sorted = tags.clone();
    sorted.sort();
    assert_eq!(sorted, ["alpha", "beta"], "index.json entries: {tags:?}");
    runtime().block_on(async {
        for tag in ["alpha", "beta"] {
            let raw = check_tag(&layout, tag, None).await;
            let last = write_version(&layout, &format!("{tag}-{}", rounds - 1), 4096).await;
            assert_eq!(raw.digest, last.digest, "{tag}: the last round wins");
        }
    });
}

#[test]
fn racing_exports_from_threads_keep_all_tags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let threads: Vec<_> = (0..4)
        .map(|thread| {
            let root = dir.path().to_owned();
            std::thread::spawn(move || {
                // A handle per thread: each opens and locks the lock file separately.
                let layout = LayoutDir::open(root);
                let tag = format!("thread{thread}");
                for round in 0..20 {
                    let raw = RawIndexFor::new(&tag, round);
                    layout
                        .write_blob_sync(&raw.config_desc, raw.config.as_ref())
                        .expect("write config");
                    layout
                        .write_index_sync(&tag, &raw.manifest)
                        .expect("write_index");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("thread");
    }
    let layout = LayoutDir::open(dir.path());
    let mut tags: Vec<String> = layout
        .tags()
        .expect("tags")
        .into_iter()
        .map(|(tag, _)| tag)
        .collect();
    tags.sort();
    assert_eq!(tags, ["thread0", "thread1", "thread2", "thread3"]);
    runtime().block_on(async {
        for tag in &tags {
            check_tag(&layout, tag, Some(&RawIndexFor::new(tag, 19).manifest)).await;
        }
    });
}

/// A manifest with only a config, built synchronously for the threaded race.
struct RawIndexFor {
    config: bytes::Bytes,
    config_desc: cache_core::Descriptor,
    manifest: cache_core::RawIndex,
}

impl RawIndexFor {
    fn new(tag: &str, round: u32) -> Self {
        let config = crate::util::content(&format!("{tag}-{round}-config"), 500);
        let config_desc =
            crate::util::desc_of(cache_core::descriptor::media_type::CACHE_CONFIG, &config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": cache_core::descriptor::media_type::OCI_MANIFEST,
            "config": config_desc,
            "layers": [],
        });
        let manifest = cache_core::RawIndex::new(
            Some(cache_core::descriptor::media_type::OCI_MANIFEST.to_owned()),
            serde_json::to_vec(&manifest).expect("serializes"),
        );
        Self {
            config,
            config_desc,
            manifest,
        }
    }
}
