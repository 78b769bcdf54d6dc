//! Layout details: `index.json` rules, opening, corruption, temporary files, deletion, locking.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use cache_core::descriptor::media_type;
use cache_core::{Backend, Blob, ErrorKind, IndexRef, RawIndex, digest};
use cache_local::LayoutDir;
use futures_util::StreamExt;

use crate::util::{check_tag, content, desc_of, write_version};

/// Copies the layout `src` into `dst`.
fn copy_layout(src: &Path, dst: &Path) {
    for entry in walk(src) {
        let rel = entry.strip_prefix(src).expect("under src");
        let target = dst.join(rel);
        fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        fs::copy(&entry, &target).expect("copy");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn fixture(name: &str) -> Option<std::path::PathBuf> {
    let dir = match std::env::var_os("BUILDCACHE_FIXTURES") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/buildkit"),
    };
    let dir = dir.join(name);
    if dir.is_dir() {
        Some(dir)
    } else if std::env::var_os("CI").is_some() {
        panic!(
            "fixture {} is missing: set BUILDCACHE_FIXTURES",
            dir.display()
        );
    } else {
        eprintln!("skipping: fixture {} is missing", dir.display());
        None
    }
}

#[tokio::test]
async fn adding_a_tag_to_a_buildkit_index_keeps_its_bytes() {
    let Some(src) = fixture("local-min") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    copy_layout(&src, dir.path());
    let original = fs::read_to_string(dir.path().join("index.json")).expect("index.json");
    let layout = LayoutDir::open(dir.path());
    let raw = write_version(&layout, "extra", 1000).await;
    layout
        .write_index("other", &raw)
        .await
        .expect("write_index");

    let updated = fs::read_to_string(dir.path().join("index.json")).expect("index.json");
    let new_entry = format!(
        r#"{{"mediaType":"{}","digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"other"}}}}"#,
        media_type::OCI_MANIFEST,
        raw.digest,
        raw.bytes.len()
    );
    let expected = format!(
        "{},{new_entry}]}}",
        original
            .strip_suffix("]}")
            .expect("BuildKit's index ends with ]}")
    );
    assert_eq!(updated, expected);
    assert_eq!(
        fs::read_to_string(dir.path().join("oci-layout")).expect("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    check_tag(&layout, "latest", None).await;
    check_tag(&layout, "other", Some(&raw)).await;

    // Replacing `latest` drops BuildKit's entry and appends ours.
    layout
        .write_index("latest", &raw)
        .await
        .expect("write_index");
    let tags: Vec<String> = layout
        .tags()
        .expect("tags")
        .into_iter()
        .map(|(tag, desc)| format!("{tag}={}", desc.digest))
        .collect();
    assert_eq!(
        tags,
        vec![
            format!("other={}", raw.digest),
            format!("latest={}", raw.digest)
        ]
    );
}

#[tokio::test]
async fn image_name_entries_win_and_survive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutDir::open(dir.path());
    let first = write_version(&layout, "first", 100).await;
    let named = write_version(&layout, "named", 100).await;
    fs::write(
        dir.path().join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"t","io.containerd.image.name":"t"}}}}]}}"#,
            named.digest,
            named.bytes.len()
        ),
    )
    .expect("write index.json");
    fs::write(
        dir.path().join("blobs/sha256").join(named.digest.digest()),
        &named.bytes,
    )
    .expect("write manifest blob");
    layout.write_index("t", &first).await.expect("write_index");
    // The image entry is kept (BuildKit only replaces bare tags) and still wins the lookup.
    let raw = check_tag(&layout, "t", Some(&named)).await;
    assert_eq!(raw.media_type, None, "the entry had no mediaType");
    assert_eq!(layout.tags().expect("tags").len(), 2);
}

#[tokio::test]
async fn missing_things_read_as_none_and_nothing_is_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("absent");
    let layout = LayoutDir::open(&root);
    let tag = IndexRef::Tag("latest".into());
    assert!(layout.read_index(&tag).await.expect("read").is_none());
    let missing = digest::sha256(b"missing");
    assert!(layout.stat_blob(&missing).await.expect("stat").is_none());
    assert!(layout.tags().expect("tags").is_empty());
    assert!(layout.list_blobs().expect("list").is_empty());
    assert!(!root.exists(), "reads must not create the directory");

    fs::create_dir(&root).expect("mkdir");
    assert!(layout.read_index(&tag).await.expect("read").is_none());
}

#[tokio::test]
async fn broken_index_json_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutDir::open(dir.path());
    fs::write(dir.path().join("index.json"), "{not json").expect("write");
    let err = layout
        .read_index(&IndexRef::Tag("latest".into()))
        .await
        .expect_err("corrupt index.json");
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("index.json"), "{err}");
    // A write refuses to replace what it cannot parse.
    let raw = RawIndex::new(None, "{}");
    let err = layout
        .write_index("latest", &raw)
        .await
        .expect_err("corrupt");
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert_eq!(
        fs::read_to_string(dir.path().join("index.json")).expect("read"),
        "{not json"
    );
}

#[tokio::test]
async fn tag_naming_a_missing_or_wrong_blob_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutDir::open(dir.path());
    let raw = write_version(&layout, "v", 100).await;
    layout
        .write_index("latest", &raw)
        .await
        .expect("write_index");
    let manifest_path = layout.blob_path(&raw.digest);
    let mut corrupted = raw.bytes.to_vec();
    corrupted[0] ^= 1;
    fs::write(&manifest_path, &corrupted).expect("corrupt");
    let err = layout
        .read_index(&IndexRef::Tag("latest".into()))
        .await
        .expect_err("corrupt manifest");
    assert_eq!(err.kind(), ErrorKind::DigestMismatch, "{err}");
    fs::remove_file(&manifest_path).expect("remove");
    let err = layout
        .read_index(&IndexRef::Tag("latest".into()))
        .await
        .expect_err("missing manifest");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains(raw.digest.digest()), "{err}");
    assert!(
        layout
            .read_index(&IndexRef::Digest(raw.digest.clone()))
            .await
            .expect("by digest")
            .is_none()
    );
}

#[test]
fn open_existing_requires_a_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("cache");
    let err = LayoutDir::open_existing(&root).expect_err("missing dir");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("cache"), "{err}");

    fs::create_dir(&root).expect("mkdir");
    let err = LayoutDir::open_existing(&root).expect_err("no oci-layout");
    assert!(err.to_string().contains("oci-layout"), "{err}");

    fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
    let err = LayoutDir::open_existing(&root).expect_err("no index.json");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("index.json"), "{err}");

    fs::write(root.join("index.json"), "[]").expect("write");
    let err = LayoutDir::open_existing(&root).expect_err("index.json is not an index");
    assert_eq!(err.kind(), ErrorKind::Corrupt);

    fs::write(
        root.join("index.json"),
        r#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .expect("write");
    LayoutDir::open_existing(&root).expect("complete layout");

    let file = dir.path().join("file");
    fs::write(&file, "x").expect("write");
    let err = LayoutDir::open_existing(&file).expect_err("not a directory");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
}

#[tokio::test]
async fn corrupt_blob_fails_while_streaming() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutDir::open(dir.path());
    let bytes = content("corrupt", 300_000);
    let desc = desc_of(media_type::OCI_LAYER_TAR, &bytes);
    layout
        .write_blob(&desc, Blob::from_bytes(bytes.clone()))
        .await
        .expect("write");
    let mut corrupted = bytes.to_vec();
    corrupted[299_999] ^= 0xff;
    fs::write(layout.blob_path(&desc.digest), &corrupted).expect("corrupt");

    let blob = layout
        .read_blob(&desc.digest)
        .await
        .expect("read")
        .expect("present");
    let mut body = blob.body;
    let mut failure = None;
    while let Some(chunk) = body.next().await {
        if let Err(err) = chunk {
            failure = Some(cache_core::Error::from_io("streaming", err));
            break;
        }
    }
    let failure = failure.expect("a corrupt blob must fail to stream");
    assert_eq!(failure.kind(), ErrorKind::DigestMismatch, "{failure}");

    let mut reader = layout
        .read_blob_sync(&desc.digest)
        .expect("read")
        .expect("present");
    let err = reader.read_to_end(&mut Vec::new()).expect_err("corrupt");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn failing_body_stores_nothing_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutDir::open(dir.path());
    let bytes = content("failing", 200_000);
    let desc = desc_of(media_type::OCI_LAYER_TAR, &bytes);
    let pieces: Vec<std::io::Result<Bytes>> = vec![
        Ok(bytes.slice(..100_000)),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "peer went away",
        )),
    ];
    let blob = Blob {
        size: desc.size,
        body: Box::pin(futures_util::stream::iter(pieces)),
    };
    let err = layout
        .write_blob(&desc, blob)
        .await
        .expect_err("body fails");
    assert!(err.to_string().contains("peer went away"), "{err}");
    assert!(
        err.is_temporary(),
        "a reset connection may be retried: {err}"
    );
    assert!(
        layout
            .stat_blob(&desc.digest)
            .await
            .expect("stat")
            .is_none()
    );
    assert_eq!(layout.list_temp_files().expect("temps"), vec![]);
}

#[tokio::test]
async fn temp_files_are_not_blobs_and_delete_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutDir::open(dir.path());
    let bytes = content("listed", 1234);
    let desc = desc_of(media_type::OCI_LAYER_TAR, &bytes);
    layout
        .write_blob(&desc, Blob::from_bytes(bytes))
        .await
        .expect("write");
    let temp = dir.path().join("blobs/sha256/.tmp-leftover");
    fs::write(&temp, "partial").expect("write temp");

    let blobs = layout.list_blobs().expect("list");
    assert_eq!(blobs.len(), 1);
    assert_eq!((&blobs[0].0, blobs[0].1), (&desc.digest, 1234));
    let temps = layout.list_temp_files().expect("temps");
    assert_eq!(temps.len(), 1);
    assert_eq!(temps[0].0, temp);

    let _lock = layout.lock().expect("lock for gc");
    assert!(layout.delete_blob(&desc.digest).expect("delete"));
    assert!(!layout.delete_blob(&desc.digest).expect("delete again"));
    assert!(
        layout
            .stat_blob(&desc.digest)
            .await
            .expect("stat")
            .is_none()
    );
}

#[tokio::test]
async fn index_writes_wait_for_the_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutDir::open(dir.path()).with_lock_timeout(Duration::from_millis(200));
    let raw = write_version(&layout, "locked", 100).await;
    let lock = layout.lock().expect("lock");
    let err = layout.write_index("t", &raw).await.expect_err("lock held");
    assert!(err.is_temporary(), "{err}");
    assert!(err.to_string().contains("index.json.lock"), "{err}");

    let patient = LayoutDir::open(dir.path()).with_lock_timeout(Duration::from_secs(20));
    let writer = tokio::spawn({
        let raw = raw.clone();
        async move { patient.write_index("t", &raw).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!writer.is_finished(), "the write must wait for the lock");
    drop(lock);
    writer.await.expect("join").expect("write after release");
    check_tag(&layout, "t", Some(&raw)).await;
}

#[tokio::test]
async fn wrong_manifest_digest_and_empty_tag_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutDir::open(dir.path());
    let mut raw = RawIndex::new(None, "{}");
    let err = layout.write_index("", &raw).await.expect_err("empty tag");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    raw.digest = digest::sha256(b"other");
    let err = layout.write_index("t", &raw).await.expect_err("bad digest");
    assert_eq!(err.kind(), ErrorKind::DigestMismatch);
    assert!(!dir.path().join("index.json").exists());
}

#[tokio::test]
async fn media_type_is_sniffed_when_not_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutDir::open(dir.path());
    let mut raw = write_version(&layout, "sniff", 10).await;
    raw.media_type = None;
    layout.write_index("t", &raw).await.expect("write");
    let read = check_tag(&layout, "t", Some(&raw)).await;
    assert_eq!(read.media_type.as_deref(), Some(media_type::OCI_MANIFEST));
}

#[tokio::test]
async fn rewriting_an_existing_blob_refreshes_its_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutDir::open(dir.path());
    let bytes = content("touched", 100);
    let desc = desc_of(media_type::OCI_LAYER_TAR, &bytes);
    layout
        .write_blob(&desc, Blob::from_bytes(bytes.clone()))
        .await
        .expect("write");
    let path = layout.blob_path(&desc.digest);
    let old = std::time::SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
    fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|file| file.set_modified(old))
        .expect("age the blob");
    layout
        .write_blob(&desc, Blob::from_bytes(bytes))
        .await
        .expect("write again");
    let modified = fs::metadata(&path)
        .and_then(|meta| meta.modified())
        .expect("mtime");
    assert!(
        modified > old + Duration::from_secs(24 * 3600),
        "an export reusing a blob must protect it from a grace-period GC"
    );
}
