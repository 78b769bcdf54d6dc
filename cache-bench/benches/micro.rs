//! Criterion micro benchmarks: cache config parse/write/merge/lookup, context hashing, layer
//! compression, layer extraction, local export and registry push/pull, each with the standard tool that bounds it.
//!
//! Inputs come from a fixed seed. Registry cases run only when `CACHE_TEST_REGISTRY` is set.

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::path::Path;
use std::process::Command;

use cache_build::layer::{Compression, LayerLimits, Snapshot, apply_layer, diff, write_layer};
use cache_core::config::CacheConfig;
use cache_core::export::{self, FromBackend};
use cache_core::graph::{CacheGraph, CacheResult, Link};
use cache_core::manifest::ManifestForm;
use cache_core::{Backend, Blob, Descriptor, Digest, digest::sha256};
use cache_local::LayoutDir;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Bytes of the compression, export and registry data sets.
const DATA_BYTES: usize = 64 << 20;
const BLOBS: usize = 8;
/// Where skopeo, run as root, keeps which repositories hold which blobs.
const SKOPEO_BLOB_INFO_CACHE: &str = "/var/lib/containers/cache/blob-info-cache-v1.boltdb";

/// xorshift64*: deterministic bytes from a fixed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Half text-like, half random: compressible about like a real layer.
    fn fill(&mut self, buf: &mut [u8]) {
        for (i, chunk) in buf.chunks_mut(8).enumerate() {
            let word = self.next();
            if (i / 512) % 2 == 0 {
                for (j, b) in chunk.iter_mut().enumerate() {
                    *b = b"abcdefgh ijklmnop\n"[((word >> (j * 4)) & 0xf) as usize];
                }
            } else {
                chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
            }
        }
    }
}

fn chain_graph(n: usize, source: u32, layer_seed: u64) -> CacheGraph {
    let mut graph = CacheGraph::new();
    let mut parent_layer = None;
    for i in 0..n {
        let digest = sha256(format!("record {i}").as_bytes());
        let inputs = if i == 0 {
            Vec::new()
        } else {
            vec![vec![Link {
                selector: String::new(),
                record: i - 1,
            }]]
        };
        let record = graph.add_record(digest, inputs);
        let blob = Descriptor::new(
            LAYER_TYPE,
            sha256(format!("layer {layer_seed} {i}").as_bytes()),
            1000 + i as u64,
        );
        let layer = graph.add_layer(blob, parent_layer);
        parent_layer = Some(layer);
        graph.add_result(
            record,
            CacheResult {
                layer,
                created_at: time::OffsetDateTime::UNIX_EPOCH,
                source,
            },
        );
    }
    graph
}

fn config_benches(c: &mut Criterion) {
    for n in [100usize, 1_000, 10_000] {
        let graph = chain_graph(n, 0, 0);
        let (config, layers) = graph.to_config();
        let json = config.to_json();
        let by_digest: HashMap<Digest, Descriptor> = layers
            .iter()
            .map(|l| (l.digest.clone(), l.clone()))
            .collect();
        let lookup = |d: &Digest| by_digest.get(d).cloned();
        let mut group = c.benchmark_group("cache-core/config-parse");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &json, |b, json| {
            b.iter(|| {
                let config = CacheConfig::from_json(json).expect("valid config");
                black_box(CacheGraph::from_config(&config, &lookup, 1).expect("valid graph"))
            })
        });
        group.finish();
        let mut group = c.benchmark_group("cache-core/config-write");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &graph, |b, graph| {
            b.iter(|| black_box(graph.to_config().0.to_json()))
        });
        group.finish();
        let other = chain_graph(n, 1, 1);
        let mut group = c.benchmark_group("cache-core/merge");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &other, |b, other| {
            b.iter(|| black_box(CacheGraph::merge([&graph, other])))
        });
        group.finish();
        let digests: Vec<Digest> = (0..n)
            .map(|i| sha256(format!("record {i}").as_bytes()))
            .collect();
        let mut group = c.benchmark_group("cache-core/lookup");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &digests, |b, digests| {
            b.iter(|| {
                let mut parent = graph.find_root(&digests[0]).expect("root");
                for digest in &digests[1..] {
                    let found = graph.find(digest, &[("", &[parent])]);
                    parent = *found.first().expect("record found");
                }
                black_box(parent)
            })
        });
        group.finish();
    }
}

/// Hostile sizes (issue 15): a config of one 128k-layer chain with a record per layer, and one
/// of a million records without layers, parsed and validated into a graph as an import does.
fn hostile_config_benches(c: &mut Criterion) {
    let n = 128 * 1024;
    let (config, layers) = chain_graph(n, 0, 0).to_config();
    let json = config.to_json();
    let by_digest: HashMap<Digest, Descriptor> = layers
        .iter()
        .map(|l| (l.digest.clone(), l.clone()))
        .collect();
    let lookup = |d: &Digest| by_digest.get(d).cloned();
    let mut group = c.benchmark_group("cache-core/config-parse-chain");
    group.throughput(Throughput::Elements(n as u64));
    group.bench_with_input(BenchmarkId::from_parameter(n), &json, |b, json| {
        b.iter(|| {
            let config = CacheConfig::from_json(json).expect("valid config");
            black_box(CacheGraph::from_config(&config, &lookup, 1).expect("valid graph"))
        })
    });
    group.finish();
    let n = 1_000_000;
    let mut json = String::from("{\"records\":[");
    for i in 0..n {
        let digest = sha256(format!("record {i}").as_bytes());
        if i == 0 {
            json.push_str(&format!("{{\"digest\":\"{digest}\"}}"));
        } else {
            json.push_str(&format!(
                ",{{\"digest\":\"{digest}\",\"inputs\":[[{{\"link\":{}}}]]}}",
                i - 1
            ));
        }
    }
    json.push_str("]}");
    let none = |_: &Digest| None;
    let mut group = c.benchmark_group("cache-core/config-parse-records");
    group.throughput(Throughput::Elements(n as u64));
    group.bench_with_input(BenchmarkId::from_parameter(n), &json, |b, json| {
        b.iter(|| {
            let config = CacheConfig::from_json(json.as_bytes()).expect("valid config");
            black_box(CacheGraph::from_config(&config, &none, 1).expect("valid graph"))
        })
    });
    group.finish();
}

/// A Dockerfile of 100,000 `ENV` (or `ARG`) lines and a RUN, parsed and planned (issue 15).
fn hostile_dockerfile_benches(c: &mut Criterion) {
    use cache_build::dockerfile;
    let n = 100_000;
    for keyword in ["ENV", "ARG"] {
        let mut text = String::from("FROM scratch\n");
        for i in 0..n {
            text.push_str(&format!("{keyword} v{i}=value{i}\n"));
        }
        text.push_str("RUN true\n");
        let mut group =
            c.benchmark_group(format!("cache-dockerfile/plan-{}", keyword.to_lowercase()));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
            b.iter(|| {
                let df = dockerfile::parse(text).expect("parses");
                black_box(dockerfile::plan(&df, &Default::default()).expect("plans"))
            })
        });
        group.finish();
    }
}

fn context_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = 10_000;
    let mut rng = Rng(7);
    let mut buf = vec![0u8; 1024];
    for i in 0..files {
        let sub = dir.path().join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&sub).expect("mkdir");
        }
        rng.fill(&mut buf);
        std::fs::write(sub.join(format!("f{i}")), &buf).expect("write");
    }
    let sources = vec![".".to_owned()];
    let mut group = c.benchmark_group("cache-build/context-hash-cold");
    group.throughput(Throughput::Elements(files));
    group.bench_function(BenchmarkId::from_parameter(files), |b| {
        b.iter(|| {
            let mut cache = cache_build::context::HashCache::in_memory();
            black_box(cache_build::context::select(
                dir.path(),
                &sources,
                None,
                &mut cache,
            ))
            .expect("select")
        })
    });
    group.finish();
    let mut warm = cache_build::context::HashCache::in_memory();
    cache_build::context::select(dir.path(), &sources, None, &mut warm).expect("prime");
    let mut group = c.benchmark_group("cache-build/context-hash-warm");
    group.throughput(Throughput::Elements(files));
    group.bench_function(BenchmarkId::from_parameter(files), |b| {
        b.iter(|| {
            black_box(cache_build::context::select(
                dir.path(),
                &sources,
                None,
                &mut warm,
            ))
            .expect("select")
        })
    });
    group.finish();
}

/// A tree of 64 files holding `DATA_BYTES` in all.
fn data_tree(dir: &Path) {
    let mut rng = Rng(42);
    let mut buf = vec![0u8; DATA_BYTES / 64];
    std::fs::create_dir_all(dir).expect("mkdir");
    for i in 0..64 {
        rng.fill(&mut buf);
        std::fs::write(dir.join(format!("file{i:02}.bin")), &buf).expect("write");
    }
}

fn sh(script: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .expect("sh runs");
    assert!(status.success(), "{script}");
}

fn compression_benches(c: &mut Criterion) {
    let work = tempfile::tempdir().expect("tempdir");
    let empty = work.path().join("empty");
    let root = work.path().join("root");
    std::fs::create_dir_all(&empty).expect("mkdir");
    data_tree(&root);
    let before = Snapshot::capture(&empty).expect("snapshot");
    let changes = diff(&before, &root).expect("diff");
    let size = "64MiB";
    let cases: [(&str, Compression, &str, String); 2] = [
        (
            "cache-build/layer-tar-gzip",
            Compression::Gzip { level: 1 },
            "limit/gzip-1",
            format!("tar -cf - -C {} . | gzip -1 > /dev/null", root.display()),
        ),
        (
            "cache-build/layer-tar-zstd",
            Compression::Zstd { level: 3 },
            "limit/zstd-3",
            format!(
                "tar -cf - -C {} . | zstd -3 -T0 -q > /dev/null",
                root.display()
            ),
        ),
    ];
    for (ours, compression, limit, script) in cases {
        let mut group = c.benchmark_group(ours);
        group.throughput(Throughput::Bytes(DATA_BYTES as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| black_box(write_layer(&root, &changes, compression, std::io::sink())))
        });
        group.finish();
        let mut group = c.benchmark_group(limit);
        group.throughput(Throughput::Bytes(DATA_BYTES as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| sh(&script))
        });
        group.finish();
    }
}

/// A tree like a toolchain base: 2000 files of 1 to 64 KiB in 100 directories, plus four of
/// 8 MiB (compilers, libraries): about 96 MiB in all.
fn many_files_tree(dir: &Path) {
    let mut rng = Rng(11);
    let mut buf = vec![0u8; 8 << 20];
    for i in 0..2000u64 {
        let sub = dir.join(format!("usr/lib/d{:03}", i / 20));
        if i % 20 == 0 {
            std::fs::create_dir_all(&sub).expect("mkdir");
        }
        let len = 1024 * (1 + (rng.next() % 64) as usize);
        rng.fill(&mut buf[..len]);
        std::fs::write(sub.join(format!("f{i}.so")), &buf[..len]).expect("write");
    }
    std::fs::create_dir_all(dir.join("usr/bin")).expect("mkdir");
    for i in 0..4 {
        rng.fill(&mut buf);
        std::fs::write(dir.join(format!("usr/bin/tool{i}")), &buf).expect("write");
    }
}

/// `apply_layer` of a gzip layer of many files into an empty directory, against `tar -xzf` of
/// the same blob.
fn apply_benches(c: &mut Criterion) {
    let work = tempfile::tempdir().expect("tempdir");
    let tree = work.path().join("tree");
    many_files_tree(&tree);
    let empty = work.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let changes = diff(&Snapshot::capture(&empty).expect("snapshot"), &tree).expect("diff");
    let mut blob = Vec::new();
    let info =
        write_layer(&tree, &changes, Compression::Gzip { level: 1 }, &mut blob).expect("layer");
    let blob_path = work.path().join("layer.tar.gz");
    std::fs::write(&blob_path, &blob).expect("write");
    let out = work.path().join("out");
    let fresh_out = || {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir(&out).expect("mkdir");
    };
    let size = "2004-files";
    let mut group = c.benchmark_group("cache-build/layer-apply");
    group.throughput(Throughput::Bytes(info.uncompressed_size));
    group.bench_function(BenchmarkId::from_parameter(size), |b| {
        b.iter_batched(
            fresh_out,
            |()| {
                black_box(apply_layer(&blob[..], LAYER_TYPE, &out, &LayerLimits::NONE))
                    .expect("apply")
            },
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
    let mut group = c.benchmark_group("limit/tar-xzf");
    group.throughput(Throughput::Bytes(info.uncompressed_size));
    let script = format!("tar -xzf {} -C {}", blob_path.display(), out.display());
    group.bench_function(BenchmarkId::from_parameter(size), |b| {
        b.iter_batched(
            fresh_out,
            |()| sh(&script),
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// `BLOBS` blobs of `DATA_BYTES / BLOBS` bytes in an OCI layout, and a graph naming them.
fn blob_source(dir: &Path) -> (LayoutDir, CacheGraph, Vec<Descriptor>) {
    let layout = LayoutDir::open(dir);
    let mut rng = Rng(99);
    let mut buf = vec![0u8; DATA_BYTES / BLOBS];
    let mut graph = CacheGraph::new();
    let mut descs = Vec::new();
    let mut parent = None;
    for i in 0..BLOBS {
        rng.fill(&mut buf);
        // A real gzip stream (stored blocks) as the media type says: skopeo recompresses a
        // "gzip" layer that is not one, and the pull benchmarks would miss the digests.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
        std::io::Write::write_all(&mut gz, &buf).expect("gzip in memory");
        let blob = gz.finish().expect("gzip in memory");
        let desc = Descriptor::new(LAYER_TYPE, sha256(&blob), blob.len() as u64);
        layout
            .write_blob_sync(&desc, blob.as_slice())
            .expect("write blob");
        let record = graph.add_record(
            sha256(format!("export record {i}").as_bytes()),
            match parent {
                None => Vec::new(),
                Some(_) => vec![vec![Link {
                    selector: String::new(),
                    record: i - 1,
                }]],
            },
        );
        let layer = graph.add_layer(desc.clone(), parent);
        parent = Some(layer);
        graph.add_result(
            record,
            CacheResult {
                layer,
                created_at: time::OffsetDateTime::UNIX_EPOCH,
                source: 0,
            },
        );
        descs.push(desc);
    }
    (layout, graph, descs)
}

fn export_options(tag: &str) -> export::Options {
    export::Options {
        tag: tag.to_owned(),
        form: ManifestForm::ImageManifest,
        max_parallel: 4,
        known_present: HashSet::new(),
        extra_blobs: Vec::new(),
        config_annotations: Default::default(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn export_benches(c: &mut Criterion) {
    let rt = runtime();
    let work = tempfile::tempdir().expect("tempdir");
    let (source, graph, _) = blob_source(&work.path().join("source"));
    let dest = work.path().join("dest");
    let mut group = c.benchmark_group("cache-local/export");
    group.throughput(Throughput::Bytes(DATA_BYTES as u64));
    group.bench_function(BenchmarkId::from_parameter("64MiB"), |b| {
        b.iter(|| {
            let _ = std::fs::remove_dir_all(&dest);
            let layout = LayoutDir::open(&dest);
            rt.block_on(export::export(
                &layout,
                &FromBackend(&source),
                &graph,
                &export_options("bench"),
                &|_| {},
            ))
            .expect("export")
        })
    });
    group.finish();
    let blobs = work.path().join("source/blobs");
    let script = format!(
        "rm -rf {d} && mkdir -p {d} && cp -r {b} {d}/",
        d = dest.display(),
        b = blobs.display()
    );
    let mut group = c.benchmark_group("limit/cp");
    group.throughput(Throughput::Bytes(DATA_BYTES as u64));
    group.bench_function(BenchmarkId::from_parameter("64MiB"), |b| {
        b.iter(|| sh(&script))
    });
    group.finish();
}

/// An OCI image layout of the same blobs, for skopeo (which wants an image manifest).
fn image_layout(layout: &LayoutDir, descs: &[Descriptor]) {
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": descs.iter().map(|d| d.digest.to_string()).collect::<Vec<_>>()},
    })
    .to_string();
    let config_desc = Descriptor::new(
        "application/vnd.oci.image.config.v1+json",
        sha256(config.as_bytes()),
        config.len() as u64,
    );
    layout
        .write_blob_sync(&config_desc, config.as_bytes())
        .expect("config");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": config_desc.media_type, "digest": config_desc.digest.to_string(), "size": config_desc.size},
        "layers": descs.iter().map(|d| serde_json::json!({"mediaType": LAYER_TYPE, "digest": d.digest.to_string(), "size": d.size})).collect::<Vec<_>>(),
    })
    .to_string();
    layout
        .write_index_sync(
            "image",
            &cache_core::RawIndex::new(
                Some("application/vnd.oci.image.manifest.v1+json".into()),
                manifest.into_bytes(),
            ),
        )
        .expect("index");
}

fn registry_benches(c: &mut Criterion) {
    let Ok(addr) = std::env::var("CACHE_TEST_REGISTRY") else {
        eprintln!("registry benchmarks skipped: CACHE_TEST_REGISTRY is not set");
        return;
    };
    let rt = runtime();
    let work = tempfile::tempdir().expect("tempdir");
    let (source, graph, descs) = blob_source(&work.path().join("source"));
    image_layout(&source, &descs);
    let open = |repo: &str| {
        cache_registry::Registry::new(
            &format!("{addr}/{repo}:cache"),
            cache_registry::Options::new(),
        )
        .expect("registry reference")
    };
    let mut round = 0u32;
    let mut group = c.benchmark_group("cache-registry/push");
    group.throughput(Throughput::Bytes(DATA_BYTES as u64));
    group.bench_function(BenchmarkId::from_parameter("64MiB"), |b| {
        b.iter(|| {
            round += 1;
            let registry = open(&format!("micro/push-{}-{round}", std::process::id()));
            rt.block_on(export::export(
                &registry,
                &FromBackend(&source),
                &graph,
                &export_options("cache"),
                &|_| {},
            ))
            .expect("push")
        })
    });
    group.finish();
    let layout = source.root().display().to_string();
    let mut group = c.benchmark_group("limit/skopeo-push");
    group.throughput(Throughput::Bytes(DATA_BYTES as u64));
    group.bench_function(BenchmarkId::from_parameter("64MiB"), |b| {
        b.iter(|| {
            round += 1;
            // skopeo remembers where it pushed each blob (its blob-info cache, a cache only)
            // and would mount the layers from the previous round's repository instead of
            // uploading them: forget it, so that this measures an upload like ours.
            let _ = std::fs::remove_file(SKOPEO_BLOB_INFO_CACHE);
            sh(&format!(
                "skopeo copy -q --dest-tls-verify=false oci:{layout}:image docker://{addr}/micro/skopeo-{}-{round}:image",
                std::process::id()
            ))
        })
    });
    group.finish();
    // Pull: both from one repository that holds everything, into a fresh layout on disk.
    let pulled = work.path().join("pulled");
    sh(&format!(
        "skopeo copy -q --dest-tls-verify=false oci:{layout}:image docker://{addr}/micro/pull:image"
    ));
    let from = open("micro/pull");
    let mut group = c.benchmark_group("cache-registry/pull");
    group.throughput(Throughput::Bytes(DATA_BYTES as u64));
    group.bench_function(BenchmarkId::from_parameter("64MiB"), |b| {
        b.iter(|| {
            let _ = std::fs::remove_dir_all(&pulled);
            let dest = LayoutDir::open(&pulled);
            rt.block_on(async {
                for desc in &descs {
                    let blob: Blob = from
                        .read_blob(&desc.digest)
                        .await
                        .expect("read")
                        .expect("present");
                    dest.write_blob(desc, blob).await.expect("write");
                }
            })
        })
    });
    group.finish();
    let mut group = c.benchmark_group("limit/skopeo-pull");
    group.throughput(Throughput::Bytes(DATA_BYTES as u64));
    group.bench_function(BenchmarkId::from_parameter("64MiB"), |b| {
        b.iter(|| {
            sh(&format!(
                "rm -rf {p} && skopeo copy -q --src-tls-verify=false docker://{addr}/micro/pull:image oci:{p}:image",
                p = pulled.display()
            ))
        })
    });
    group.finish();
}

criterion_group! {
    name = micro;
    config = Criterion::default().sample_size(10);
    targets = config_benches, hostile_config_benches, hostile_dockerfile_benches, context_benches, compression_benches, apply_benches, export_benches, registry_benches
}
criterion_main!(micro);
