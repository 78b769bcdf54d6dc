//! The engine's keys against BuildKit's ops for every Dockerfile of the interop corpus.
//!
//! `cache-cli/tests/corpus/*/llb.jsonl` holds what BuildKit's Dockerfile frontend made of each
//! Dockerfile (`dockerfile2llb | buildctl debug dump-llb`, base `busybox` with
//! `Env = [PATH=…]`). Every step the engine keys as BuildKit must have the cache map of one of
//! those ops, and every exec, file and merge op must be the key of a step, apart from the
//! forms README lists as keyed by buildcache itself. `tests/fixtures/*` adds entries of the same
//! form for RUN `--mount`, `--network`, `--security` and COPY `--exclude` (FROM scratch, so no base
//! is needed).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cache_build::dockerfile::{self, ImageConfig, PlanOptions};
use cache_build::engine::plan_cache_maps;
use cache_llb::dump::{DumpedOp, parse_line};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cache-cli/tests/corpus")
}

/// Entries of this crate's own (RUN --mount forms), made like the corpus's.
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The base every corpus entry builds on (the tests' busybox image config).
fn busybox() -> ImageConfig {
    ImageConfig {
        env: vec![(
            "PATH".to_owned(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        )],
        ..ImageConfig::default()
    }
}

struct Outcome {
    /// Steps keyed as BuildKit whose map is no op of the dump: (step, our JSON).
    unmatched_steps: Vec<(String, String)>,
    /// Exec/file/merge ops of the dump no step has: (name, JSON).
    unmatched_ops: Vec<(String, String)>,
    /// Steps with keys of our own.
    own_keys: usize,
    /// Steps keyed as BuildKit whose map is an op of the dump.
    matched: usize,
}

fn compare(entry: &Path) -> Outcome {
    let dockerfile = std::fs::read_to_string(entry.join("Dockerfile")).expect("Dockerfile");
    let target = std::fs::read_to_string(entry.join("options.json"))
        .ok()
        .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok())
        .and_then(|o| o["target"].as_str().map(str::to_owned));
    let df = dockerfile::parse(&dockerfile).expect("the corpus Dockerfile parses");
    let opts = PlanOptions {
        target,
        ..PlanOptions::default()
    };
    let first = dockerfile::plan(&df, &opts).expect("plans");
    let configs: BTreeMap<String, ImageConfig> = first
        .external_refs()
        .into_iter()
        .map(|r| (r, busybox()))
        .collect();
    let plan = dockerfile::plan_with_base_configs(&df, &opts, &configs).expect("plans");
    let ours = plan_cache_maps(&plan, &[]);

    let dump = std::fs::read_to_string(entry.join("llb.jsonl")).expect("llb.jsonl");
    let mut theirs: Vec<(String, cache_llb::CacheMap)> = Vec::new();
    for line in dump.lines() {
        let op = parse_line(line).unwrap_or_else(|err| panic!("{}: {err}", entry.display()));
        if matches!(op.op, DumpedOp::Source(_) | DumpedOp::Terminal) {
            continue;
        }
        let map = op.op.cache_map(op.inputs.len()).expect("a keyed op");
        theirs.push((op.name.unwrap_or_default(), map));
    }
    let their_digests: BTreeSet<String> =
        theirs.iter().map(|(_, m)| m.digest.to_string()).collect();
    let mut our_digests = BTreeSet::new();
    let mut outcome = Outcome {
        unmatched_steps: Vec::new(),
        unmatched_ops: Vec::new(),
        own_keys: 0,
        matched: 0,
    };
    for (stage, keys) in plan.stages.iter().zip(&ours) {
        for (step, key) in stage.steps.iter().zip(keys) {
            let Some(key) = key else { continue };
            if !key.buildkit {
                outcome.own_keys += 1;
                continue;
            }
            for map in std::iter::once(&key.map).chain(&key.other_ops) {
                our_digests.insert(map.digest.to_string());
                if their_digests.contains(&map.digest.to_string()) {
                    outcome.matched += 1;
                } else {
                    outcome.unmatched_steps.push((
                        format!("{} {}", stage.progress_prefix(step.number), step.display),
                        String::from_utf8_lossy(&map.json).into_owned(),
                    ));
                }
            }
        }
    }
    for (name, map) in theirs {
        if !our_digests.contains(&map.digest.to_string()) {
            outcome
                .unmatched_ops
                .push((name, String::from_utf8_lossy(&map.json).into_owned()));
        }
    }
    outcome
}

#[test]
fn every_step_keyed_as_buildkit_is_an_op_buildkit_derives() {
    let mut entries: Vec<PathBuf> = Vec::new();
    for dir in [corpus(), fixtures()] {
        let Ok(read) = std::fs::read_dir(&dir) else {
            panic!("the corpus is missing at {}", dir.display());
        };
        entries.extend(
            read.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.join("llb.jsonl").is_file()),
        );
    }
    entries.sort();
    assert!(entries.len() >= 26, "{} corpus entries", entries.len());
    let mut failures = Vec::new();
    let (mut matched, mut own) = (0, 0);
    for entry in &entries {
        let outcome = compare(entry);
        matched += outcome.matched;
        own += outcome.own_keys;
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        for (step, json) in &outcome.unmatched_steps {
            failures.push(format!("{name}: {step}: no BuildKit op has our map {json}"));
        }
        // Each step with a key of our own stands for BuildKit ops we do not compare (the
        // copy and merge of COPY --link, the mkfile and copy of a heredoc COPY).
        if outcome.unmatched_ops.len() > 2 * outcome.own_keys {
            for (op, json) in &outcome.unmatched_ops {
                failures.push(format!(
                    "{name}: BuildKit's {op:?} is no step's key: {json}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Most steps are keyed as BuildKit: the comparison is not vacuous.
    assert!(
        matched > 10 * own,
        "{matched} steps matched, {own} keys of our own"
    );
}
