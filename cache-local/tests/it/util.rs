//! Helpers shared by the integration tests.

use bytes::Bytes;
use cache_core::descriptor::media_type;
use cache_core::{Backend, Blob, Descriptor, Digest, IndexRef, RawIndex, digest};
use cache_local::LayoutDir;
use futures_util::StreamExt;

/// A multi-threaded runtime for tests that are plain `#[test]` functions.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Deterministic pseudo-random bytes derived from `label`.
pub fn content(label: &str, len: usize) -> Bytes {
    let mut out = Vec::with_capacity(len + 64);
    let mut block = 0u64;
    while out.len() < len {
        let mut hasher = digest::Hasher::new();
        hasher.update(label.as_bytes());
        hasher.update(&block.to_le_bytes());
        out.extend_from_slice(hasher.finish().digest().as_bytes());
        block += 1;
    }
    out.truncate(len);
    Bytes::from(out)
}

/// A descriptor of `bytes` with media type `media_type`.
pub fn desc_of(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor::new(media_type, digest::sha256(bytes), bytes.len() as u64)
}

/// `bytes` as a stream of `chunk`-sized pieces.
pub fn chunked(bytes: &Bytes, chunk: usize) -> Blob {
    let pieces: Vec<std::io::Result<Bytes>> = (0..bytes.len())
        .step_by(chunk)
        .map(|start| Ok(bytes.slice(start..(start + chunk).min(bytes.len()))))
        .collect();
    Blob {
        size: bytes.len() as u64,
        body: Box::pin(futures_util::stream::iter(pieces)),
    }
}

/// Writes a config and a layer of `layer_size` bytes for `label`, streamed in 64 KiB chunks,
/// and returns the manifest naming them (not yet tagged).
pub async fn write_version(layout: &LayoutDir, label: &str, layer_size: usize) -> RawIndex {
    let config = content(&format!("{label}-config"), 700);
    let layer = content(&format!("{label}-layer"), layer_size);
    let config_desc = desc_of(media_type::CACHE_CONFIG, &config);
    let layer_desc = desc_of(media_type::OCI_LAYER_GZIP, &layer);
    layout
        .write_blob(&config_desc, Blob::from_bytes(config))
        .await
        .expect("write config");
    layout
        .write_blob(&layer_desc, chunked(&layer, 64 * 1024))
        .await
        .expect("write layer");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": config_desc,
        "layers": [layer_desc],
    });
    RawIndex::new(
        Some(media_type::OCI_MANIFEST.to_owned()),
        serde_json::to_vec(&manifest).expect("manifest serializes"),
    )
}

/// Reads blob `digest` fully through the async stream, returning its length; panics if absent or
/// if the stream fails (corruption).
pub async fn read_verified(layout: &LayoutDir, digest: &Digest) -> u64 {
    let blob = layout
        .read_blob(digest)
        .await
        .expect("read_blob")
        .unwrap_or_else(|| panic!("blob {digest} is missing"));
    let mut body = blob.body;
    let mut n_bytes = 0u64;
    while let Some(chunk) = body.next().await {
        n_bytes += chunk
            .unwrap_or_else(|err| panic!("blob {digest} fails to stream: {err}"))
            .len() as u64;
    }
    n_bytes
}

/// The descriptors a manifest or index refers to.
pub fn children(bytes: &[u8]) -> Vec<Descriptor> {
    let value: serde_json::Value = serde_json::from_slice(bytes).expect("manifest is JSON");
    let mut out = Vec::new();
    if let Some(config) = value.get("config") {
        out.push(serde_json::from_value(config.clone()).expect("config descriptor"));
    }
    for key in ["layers", "manifests"] {
        if let Some(list) = value.get(key).and_then(|list| list.as_array()) {
            for desc in list {
                out.push(serde_json::from_value(desc.clone()).expect("descriptor"));
            }
        }
    }
    out
}

/// Reads tag `tag` and checks that it is `expected` (if given) and that every blob it refers to
/// is present with the right size and content. Returns the manifest.
pub async fn check_tag(layout: &LayoutDir, tag: &str, expected: Option<&RawIndex>) -> RawIndex {
    let raw = layout
        .read_index(&IndexRef::Tag(tag.to_owned()))
        .await
        .unwrap_or_else(|err| panic!("read_index of tag {tag}: {err}"))
        .unwrap_or_else(|| panic!("tag {tag} is missing"));
    assert_eq!(raw.digest, digest::sha256(&raw.bytes), "tag {tag} digest");
    if let Some(expected) = expected {
        assert_eq!(
            raw.digest, expected.digest,
            "tag {tag} names another manifest"
        );
        assert_eq!(raw.bytes, expected.bytes);
    }
    let kids = children(&raw.bytes);
    assert!(!kids.is_empty(), "manifest of tag {tag} refers to no blob");
    for desc in kids {
        let stat = layout
            .stat_blob(&desc.digest)
            .await
            .expect("stat_blob")
            .unwrap_or_else(|| panic!("blob {} of tag {tag} is missing", desc.digest));
        assert_eq!(stat.size, desc.size, "size of blob {}", desc.digest);
        assert_eq!(read_verified(layout, &desc.digest).await, desc.size);
    }
    raw
}

/// Checks that every file listed as a blob hashes to its name.
pub async fn check_all_blobs(layout: &LayoutDir) {
    for (digest, size, _) in layout.list_blobs().expect("list_blobs") {
        assert_eq!(read_verified(layout, &digest).await, size, "blob {digest}");
    }
}
