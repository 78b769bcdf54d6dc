//! Golden tests: every key computed here is a record digest of a real BuildKit export.
//!
//! `fixtures/t2` holds a Dockerfile (FROM scratch, COPY with wildcards, `--chown`, `--chmod`,
//! several sources, ADD, `COPY .`, ENV/ARG, USER, WORKDIR, exec form, heredoc, SHELL,
//! `COPY --from` a stage, `COPY --link`), the ops BuildKit's frontend made of it
//! (`dockerfile2llb < Dockerfile | buildctl debug dump-llb` → `dump.jsonl`) and the records of
//! the cache BuildKit v0.32.0-57-g73ed6825c exported after building it with
//! `--export-cache type=local,mode=max` (`records.json`: the config's `records` without
//! results). Each op is rebuilt from the dump into this crate's types, and its record digest
//! and input links must be in the export.

use std::collections::{BTreeSet, HashMap};

use cache_core::Digest;
use cache_core::digest::sha256;
use cache_llb::contenthash::{self, Kind, Stat, Tree};
use cache_llb::dump::parse_line;
use cache_llb::{Platform, content_record, image_records, record_digest};
use serde_json::Value;

const DUMP: &str = include_str!("fixtures/t2/dump.jsonl");
const RECORDS: &str = include_str!("fixtures/t2/records.json");
const DOCKERFILE: &str = include_str!("fixtures/t2/Dockerfile");
const DOCKERIGNORE: &str = include_str!("fixtures/t2/.dockerignore");

/// Entry digest of the Debian busybox binary that was in the context (mode 0755, root,
/// 1982256 bytes): too big to commit, its digest stands for it.
const BUSYBOX: &str = "sha256:a24009f3f92c83319f80b61209878a57fac799a5690951a94d84997f8c635142";

/// One link of a record: (selector, linked record's digest).
type Link = (Option<String>, String);

struct Export {
    /// digest → inputs, per slot its alternatives.
    records: HashMap<String, Vec<Vec<Link>>>,
}

fn export() -> Export {
    let json: Value = serde_json::from_str(RECORDS).unwrap();
    let list = json["records"].as_array().unwrap();
    let digests: Vec<String> = list
        .iter()
        .map(|r| r["digest"].as_str().unwrap().to_owned())
        .collect();
    let mut records = HashMap::new();
    for r in list {
        let inputs = r["inputs"]
            .as_array()
            .map(|slots| {
                slots
                    .iter()
                    .map(|slot| {
                        slot.as_array()
                            .unwrap()
                            .iter()
                            .map(|l| {
                                (
                                    l["selector"].as_str().map(str::to_owned),
                                    digests[l["link"].as_u64().unwrap() as usize].clone(),
                                )
                            })
                            .collect()
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.insert(r["digest"].as_str().unwrap().to_owned(), inputs);
    }
    Export { records }
}

fn file(content: &str, mode: u32, uid: u32) -> (Stat, Vec<u8>) {
    let mut stat = Stat::new(Kind::File, mode);
    stat.size = content.len() as u64;
    stat.uid = uid;
    stat.gid = uid;
    (stat, content.as_bytes().to_vec())
}

fn dir(mode: u32, uid: u32) -> Stat {
    let mut stat = Stat::new(Kind::Dir, mode);
    stat.uid = uid;
    stat.gid = uid;
    stat
}

fn add_file(tree: &mut Tree, path: &str, content: &str, mode: u32, uid: u32) -> Digest {
    let (stat, bytes) = file(content, mode, uid);
    let digest = contenthash::entry_digest(&stat, &bytes);
    tree.insert(path, Kind::File, "", digest.clone());
    digest
}

fn add_dir(tree: &mut Tree, path: &str, mode: u32, uid: u32) {
    tree.insert(
        path,
        Kind::Dir,
        "",
        contenthash::entry_digest(&dir(mode, uid), b""),
    );
}

fn add_link(tree: &mut Tree, path: &str, target: &str) {
    let mut stat = Stat::new(Kind::Symlink, 0o777);
    stat.link = target.to_owned();
    tree.insert(
        path,
        Kind::Symlink,
        target,
        contenthash::entry_digest(&stat, b""),
    );
}

/// The build context as the client sent it (`.dockerignore` applied: no `secret.txt`,
/// `debug.log`), files 0644 unless said, owned by root; its root's header digest is
/// `sha256("")` (checked by `COPY . /all/`).
fn context() -> Tree {
    let mut tree = Tree::new(contenthash::local_root_header());
    add_file(&mut tree, "/.dockerignore", DOCKERIGNORE, 0o644, 0);
    add_file(&mut tree, "/Dockerfile", DOCKERFILE, 0o644, 0);
    tree.insert("/busybox", Kind::File, "", BUSYBOX.parse().unwrap());
    add_dir(&mut tree, "/conf", 0o755, 0);
    // The dump was written into the context before the build.
    add_file(&mut tree, "/dump.jsonl", DUMP, 0o644, 0);
    add_file(&mut tree, "/conf/one.conf", "x=1\n", 0o644, 0);
    add_file(&mut tree, "/conf/two.conf", "y=2\n", 0o600, 0);
    add_dir(&mut tree, "/src", 0o755, 0);
    add_file(&mut tree, "/src/a.txt", "a\n", 0o644, 0);
    add_file(&mut tree, "/src/b.md", "bb\n", 0o644, 0);
    add_link(&mut tree, "/src/link.txt", "a.txt");
    add_dir(&mut tree, "/src/sub", 0o755, 0);
    add_file(&mut tree, "/src/sub/c.txt", "sub\n", 0o644, 0);
    tree
}

/// Stage `base` after its last RUN, as far as `COPY --from=base` reads it (a snapshot: the
/// root's header is its real stat).
fn base_stage() -> Tree {
    let mut tree = Tree::new(contenthash::entry_digest(&dir(0o755, 0), b""));
    add_dir(&mut tree, "/etc", 0o755, 0);
    add_dir(&mut tree, "/etc/app", 0o755, 0);
    add_file(&mut tree, "/etc/app/one.conf", "x=1\n", 0o640, 0);
    add_file(&mut tree, "/etc/app/two.conf", "y=2\n", 0o640, 0);
    add_dir(&mut tree, "/out", 0o755, 0);
    add_dir(&mut tree, "/out/d", 0o755, 0);
    add_file(&mut tree, "/out/d/f", "out\n", 0o644, 0);
    add_link(&mut tree, "/out/l", "d/f");
    add_dir(&mut tree, "/txt", 0o755, 0);
    add_file(&mut tree, "/txt/a.txt", "a\n", 0o644, 1000);
    add_file(&mut tree, "/txt/link.txt", "a\n", 0o644, 1000);
    tree
}

#[test]
fn every_op_of_the_dockerfile_is_a_record_of_the_export() {
    let export = export();
    let mut explained: BTreeSet<String> = BTreeSet::new();
    let mut by_op: HashMap<String, String> = HashMap::new();
    let mut context = context();
    let mut base = base_stage();
    for line in DUMP.lines() {
        let op = parse_line(line).unwrap();
        let inputs = op.inputs.clone();
        let Some(map) = op.op.cache_map(inputs.len()) else {
            continue;
        };
        let title = op.name.clone().unwrap_or_default();
        let record = record_digest(&map.digest, 0).to_string();
        let Some(links) = export.records.get(&record) else {
            panic!(
                "{title}: record {record} (map {}) not in the export; JSON {}",
                map.digest,
                String::from_utf8_lossy(&map.json)
            );
        };
        explained.insert(record.clone());
        by_op.insert(op.digest.clone(), record.clone());
        assert_eq!(links.len(), inputs.len(), "{title}: input slots");
        for (slot, (input, dep)) in inputs.iter().zip(&map.deps).enumerate() {
            let fast: Vec<&Link> = links[slot]
                .iter()
                .filter(|(_, r)| by_op.get(input) == Some(r))
                .collect();
            // The input's own record (none for the session-scoped context source).
            if let Some(input_record) = by_op.get(input) {
                assert_eq!(
                    fast,
                    [&(
                        dep.selector.as_ref().map(|d| d.to_string()),
                        input_record.clone()
                    )],
                    "{title}: link of input {slot}"
                );
            }
            // The content key, linked without selector.
            if let Some(selectors) = &dep.content {
                let tree = if by_op.contains_key(input) {
                    &mut base
                } else {
                    &mut context
                };
                let checksums: Vec<Digest> = selectors
                    .iter()
                    .map(|s| tree.checksum(s).unwrap())
                    .collect();
                let content = content_record(&checksums).to_string();
                assert!(
                    links[slot].contains(&(None, content.clone())),
                    "{title}: content key {content} of input {slot} ({selectors:?}) not linked; links {:?}",
                    links[slot]
                );
                assert!(export.records[&content].is_empty());
                explained.insert(content);
            }
        }
    }
    let unexplained: Vec<&String> = export
        .records
        .keys()
        .filter(|d| !explained.contains(*d))
        .collect();
    assert!(
        unexplained.is_empty(),
        "records no op explains: {unexplained:?}"
    );
}

#[test]
fn image_source_records_of_the_spec() {
    // ../shared/spec/buildkit-cache-keys.md §3 (local-max fixture, record 3).
    let manifest: Digest =
        "sha256:e604afb185179f2e42f725e78192d3b938051910e606393a4cab609fa41b1dbf"
            .parse()
            .unwrap();
    let [by_manifest, _] = image_records(&manifest, &[sha256(b"layer")], &Platform::linux_amd64());
    assert_eq!(
        by_manifest.to_string(),
        "sha256:4ebf873c3eba0c62da4ac8cd79c216c41e00ebfdde88b4fb7e57b3c5193816e8"
    );
}
