//! The backend conformance suite: checks that a [`Backend`] behaves as its documentation says.
//!
//! Every backend's integration tests call [`conformance`] from their own async runtime:
//!
//! ```text
//! #[tokio::test]
//! async fn conformance() {
//!     let dir = tempfile::tempdir().unwrap();
//!     cache_core::testkit::conformance(&LayoutDir::open(dir.path()), "run1").await;
//! }
//! ```
//!
//! The suite is runtime-free: it only awaits the backend's futures. Cases are gated on
//! [`Backend::capabilities`]. Content is derived from the caller's nonce, so runs against a shared
//! backend (a registry repository) do not see each other's blobs and tags.

use bytes::Bytes;
use futures_util::StreamExt;

use crate::backend::{Backend, Blob, ErrorKind, IndexRef, RawIndex};
use crate::descriptor::{Descriptor, media_type};
use crate::digest::{self, Digest, Hasher};

/// Size of the large streamed blob: 8 MiB.
const BIG_BLOB_SIZE: usize = 8 << 20;
/// Chunk size the large blob is streamed in.
const BIG_BLOB_CHUNK: usize = 61 * 1024;

/// Runs every conformance case against `backend`, panicking with a message on the first failure.
///
/// `nonce` makes generated blobs and tags unique to this run: pass something different for each
/// run against a persistent backend (a timestamp, a random string). Only ASCII letters, digits,
/// `_`, `.` and `-` of it are used in tags; other characters become `-`.
///
/// Cases, each gated on [`Backend::capabilities`]:
/// - stat and read of a missing blob are `None`;
/// - a missing tag and a missing manifest digest read as `None`;
/// - a written blob stats with its size and reads back byte for byte;
/// - writing an existing blob again succeeds;
/// - a wrong digest or a wrong size is [`ErrorKind::DigestMismatch`] and stores nothing;
/// - a manifest written under a tag reads back identical by tag and by digest;
/// - overwriting a tag returns the new manifest and keeps other tags;
/// - an 8 MiB blob streamed in many chunks round-trips;
/// - without `write` capability, writes are [`ErrorKind::Unsupported`].
///
/// # Panics
/// On the first behaviour that differs from the [`Backend`] contract; the message names the case,
/// the backend and the object.
pub async fn conformance<B: Backend>(backend: &B, nonce: &str) {
    let ctx = Ctx::new(backend, nonce);
    ctx.missing_blob_is_none().await;
    ctx.missing_index_is_none().await;
    if !backend.capabilities().write {
        ctx.writes_are_unsupported().await;
        return;
    }
    ctx.blob_round_trip().await;
    ctx.blob_write_is_idempotent().await;
    ctx.wrong_digest_is_rejected().await;
    ctx.wrong_size_is_rejected().await;
    ctx.index_round_trip_and_overwrite().await;
    ctx.big_blob_streams().await;
}

struct Ctx<'a, B> {
    backend: &'a B,
    nonce: String,
    tag_nonce: String,
}

impl<'a, B: Backend> Ctx<'a, B> {
    fn new(backend: &'a B, nonce: &str) -> Self {
        let tag_nonce: String = nonce
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        Self {
            backend,
            nonce: nonce.to_owned(),
            tag_nonce,
        }
    }

    /// Bytes unique to this run and `label`.
    fn content(&self, label: &str) -> Bytes {
        Bytes::from(format!(
            "buildcache conformance blob {label} nonce {}",
            self.nonce
        ))
    }

    fn tag(&self, label: &str) -> String {
        format!("conformance-{label}-{}", self.tag_nonce)
    }

    fn who(&self) -> String {
        self.backend.info().to_string()
    }

    async fn stat(&self, digest: &Digest) -> Option<Descriptor> {
        self.backend
            .stat_blob(digest)
            .await
            .unwrap_or_else(|err| panic!("{}: stat_blob {digest} failed: {err}", self.who()))
    }

    /// Writes `bytes` as a blob under its own digest, panicking on failure.
    async fn put(&self, bytes: &Bytes) -> Descriptor {
        let desc = Descriptor::new(
            "application/octet-stream",
            digest::sha256(bytes),
            bytes.len() as u64,
        );
        self.backend
            .write_blob(&desc, Blob::from_bytes(bytes.clone()))
            .await
            .unwrap_or_else(|err| {
                panic!("{}: write_blob {} failed: {err}", self.who(), desc.digest)
            });
        desc
    }

    /// Reads blob `digest` to the end, returning its length and the digest of what was streamed.
    async fn read_hash(&self, digest: &Digest) -> (u64, Digest, Vec<u8>) {
        let blob = self
            .backend
            .read_blob(digest)
            .await
            .unwrap_or_else(|err| panic!("{}: read_blob {digest} failed: {err}", self.who()))
            .unwrap_or_else(|| panic!("{}: read_blob {digest} is None after a write", self.who()));
        let claimed = blob.size;
        let mut body = blob.body;
        let mut hasher = Hasher::new();
        let mut head = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.unwrap_or_else(|err| {
                panic!("{}: streaming blob {digest} failed: {err}", self.who())
            });
            hasher.update(&chunk);
            if head.len() < 4096 {
                let n = chunk.len().min(4096 - head.len());
                head.extend_from_slice(&chunk[..n]);
            }
        }
        assert_eq!(
            claimed,
            hasher.len(),
            "{}: read_blob {digest} announced {claimed} bytes but streamed {}",
            self.who(),
            hasher.len()
        );
        (hasher.len(), hasher.finish(), head)
    }

    async fn missing_blob_is_none(&self) {
        let missing = digest::sha256(&self.content("never-written"));
        assert!(
            self.stat(&missing).await.is_none(),
            "{}: stat_blob of never-written blob {missing} is not None",
            self.who()
        );
        let read = self
            .backend
            .read_blob(&missing)
            .await
            .unwrap_or_else(|err| panic!("{}: read_blob {missing} failed: {err}", self.who()));
        assert!(
            read.is_none(),
            "{}: read_blob of never-written blob {missing} is not None",
            self.who()
        );
    }

    async fn missing_index_is_none(&self) {
        let tag = self.tag("missing");
        let read = self
            .backend
            .read_index(&IndexRef::Tag(tag.clone()))
            .await
            .unwrap_or_else(|err| panic!("{}: read_index of tag {tag} failed: {err}", self.who()));
        assert!(
            read.is_none(),
            "{}: read_index of never-written tag {tag} is not None",
            self.who()
        );
        let missing = digest::sha256(&self.content("never-written-manifest"));
        let read = self
            .backend
            .read_index(&IndexRef::Digest(missing.clone()))
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "{}: read_index of digest {missing} failed: {err}",
                    self.who()
                )
            });
        assert!(
            read.is_none(),
            "{}: read_index of never-written digest {missing} is not None",
            self.who()
        );
    }

    async fn writes_are_unsupported(&self) {
        let bytes = self.content("read-only");
        let desc = Descriptor::new(
            "application/octet-stream",
            digest::sha256(&bytes),
            bytes.len() as u64,
        );
        let err = self
            .backend
            .write_blob(&desc, Blob::from_bytes(bytes.clone()))
            .await
            .expect_err("write_blob on a backend without write capability must fail");
        assert_eq!(
            err.kind(),
            ErrorKind::Unsupported,
            "{}: write_blob without write capability: {err}",
            self.who()
        );
        let raw = RawIndex::new(Some(media_type::OCI_MANIFEST.to_owned()), bytes);
        let err = self
            .backend
            .write_index(&self.tag("read-only"), &raw)
            .await
            .expect_err("write_index on a backend without write capability must fail");
        assert_eq!(
            err.kind(),
            ErrorKind::Unsupported,
            "{}: write_index without write capability: {err}",
            self.who()
        );
    }

    async fn blob_round_trip(&self) {
        let bytes = self.content("round-trip");
        let desc = self.put(&bytes).await;
        let stat = self.stat(&desc.digest).await.unwrap_or_else(|| {
            panic!(
                "{}: stat_blob {} is None right after write_blob",
                self.who(),
                desc.digest
            )
        });
        assert_eq!(
            stat.size,
            desc.size,
            "{}: stat_blob {} size",
            self.who(),
            desc.digest
        );
        assert_eq!(stat.digest, desc.digest, "{}: stat_blob digest", self.who());
        let (len, got, head) = self.read_hash(&desc.digest).await;
        assert_eq!(len, desc.size, "{}: read back length", self.who());
        assert_eq!(got, desc.digest, "{}: read back digest", self.who());
        assert_eq!(head, bytes.as_ref(), "{}: read back bytes", self.who());
    }

    async fn blob_write_is_idempotent(&self) {
        let bytes = self.content("idempotent");
        let first = self.put(&bytes).await;
        let second = self.put(&bytes).await;
        assert_eq!(first, second);
        let (len, got, _) = self.read_hash(&first.digest).await;
        assert_eq!(
            (len, &got),
            (first.size, &first.digest),
            "{}: blob {} after writing it twice",
            self.who(),
            first.digest
        );
    }

    async fn wrong_digest_is_rejected(&self) {
        let bytes = self.content("wrong-digest-body");
        let claimed = digest::sha256(&self.content("wrong-digest-claimed"));
        let desc = Descriptor::new(
            "application/octet-stream",
            claimed.clone(),
            bytes.len() as u64,
        );
        let err = self
            .backend
            .write_blob(&desc, Blob::from_bytes(bytes.clone()))
            .await
            .expect_err("write_blob with a digest that does not match the body must fail");
        assert_eq!(
            err.kind(),
            ErrorKind::DigestMismatch,
            "{}: write_blob with a wrong digest: {err}",
            self.who()
        );
        assert!(
            self.stat(&claimed).await.is_none(),
            "{}: blob {claimed} exists after a write with a wrong digest",
            self.who()
        );
        let actual = digest::sha256(&bytes);
        assert!(
            self.stat(&actual).await.is_none(),
            "{}: blob {actual} was stored by a write that claimed digest {claimed}",
            self.who()
        );
    }

    async fn wrong_size_is_rejected(&self) {
        for (label, delta) in [("wrong-size-long", 1i64), ("wrong-size-short", -1)] {
            let bytes = self.content(label);
            let digest = digest::sha256(&bytes);
            let size = (bytes.len() as i64 + delta) as u64;
            let desc = Descriptor::new("application/octet-stream", digest.clone(), size);
            let err = self
                .backend
                .write_blob(&desc, Blob::from_bytes(bytes.clone()))
                .await
                .expect_err("write_blob with a size that does not match the body must fail");
            assert_eq!(
                err.kind(),
                ErrorKind::DigestMismatch,
                "{}: write_blob of {} bytes claiming {size}: {err}",
                self.who(),
                bytes.len()
            );
            assert!(
                self.stat(&digest).await.is_none(),
                "{}: blob {digest} exists after a write with a wrong size",
                self.who()
            );
        }
    }

    /// A small image manifest referring to a config and a layer that are stored first.
    async fn manifest(&self, label: &str) -> RawIndex {
        let config = self.put(&self.content(&format!("{label}-config"))).await;
        let layer = self.put(&self.content(&format!("{label}-layer"))).await;
        let json = format!(
            concat!(
                r#"{{"schemaVersion":2,"mediaType":"{mt}","#,
                r#""config":{{"mediaType":"{ct}","digest":"{cd}","size":{cs}}},"#,
                r#""layers":[{{"mediaType":"{lt}","digest":"{ld}","size":{ls}}}]}}"#
            ),
            mt = media_type::OCI_MANIFEST,
            ct = media_type::CACHE_CONFIG,
            cd = config.digest,
            cs = config.size,
            lt = media_type::OCI_LAYER_GZIP,
            ld = layer.digest,
            ls = layer.size,
        );
        RawIndex::new(Some(media_type::OCI_MANIFEST.to_owned()), json)
    }

    async fn write_index(&self, tag: &str, raw: &RawIndex) {
        self.backend
            .write_index(tag, raw)
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "{}: write_index of tag {tag} ({}) failed: {err}",
                    self.who(),
                    raw.digest
                )
            });
    }

    async fn expect_index(&self, reference: IndexRef, want: &RawIndex) {
        let got = self
            .backend
            .read_index(&reference)
            .await
            .unwrap_or_else(|err| panic!("{}: read_index {reference} failed: {err}", self.who()))
            .unwrap_or_else(|| {
                panic!(
                    "{}: read_index {reference} is None, expected {}",
                    self.who(),
                    want.digest
                )
            });
        assert_eq!(
            got.digest,
            want.digest,
            "{}: read_index {reference} digest",
            self.who()
        );
        assert_eq!(
            got.bytes,
            want.bytes,
            "{}: read_index {reference} bytes",
            self.who()
        );
        assert_eq!(
            got.digest,
            digest::sha256(&got.bytes),
            "{}: read_index {reference} returned a digest that is not the digest of its bytes",
            self.who()
        );
        if let Some(media_type) = &got.media_type
            && matches!(reference, IndexRef::Tag(_))
        {
            assert_eq!(
                Some(media_type),
                want.media_type.as_ref(),
                "{}: read_index {reference} media type",
                self.who()
            );
        }
    }

    async fn index_round_trip_and_overwrite(&self) {
        let tag_a = self.tag("a");
        let tag_b = self.tag("b");
        let first = self.manifest("index-first").await;
        self.write_index(&tag_a, &first).await;
        self.expect_index(IndexRef::Tag(tag_a.clone()), &first)
            .await;
        self.expect_index(IndexRef::Digest(first.digest.clone()), &first)
            .await;

        let other = self.manifest("index-other").await;
        self.write_index(&tag_b, &other).await;
        let second = self.manifest("index-second").await;
        self.write_index(&tag_a, &second).await;
        self.expect_index(IndexRef::Tag(tag_a.clone()), &second)
            .await;
        self.expect_index(IndexRef::Tag(tag_b.clone()), &other)
            .await;
        // The replaced manifest stays addressable by digest: tags move, blobs stay.
        self.expect_index(IndexRef::Digest(first.digest.clone()), &first)
            .await;

        // Writing the same manifest under the same tag again changes nothing.
        self.write_index(&tag_a, &second).await;
        self.expect_index(IndexRef::Tag(tag_a), &second).await;
    }

    async fn big_blob_streams(&self) {
        // Deterministic content unique to the nonce: a counter hashed with the nonce.
        let seed = digest::sha256(self.nonce.as_bytes());
        let seed = seed.digest().as_bytes().to_vec();
        let mut data = Vec::with_capacity(BIG_BLOB_SIZE);
        let mut block = 0u64;
        while data.len() < BIG_BLOB_SIZE {
            let mut hasher = Hasher::new();
            hasher.update(&seed);
            hasher.update(&block.to_le_bytes());
            data.extend_from_slice(hasher.finish().digest().as_bytes());
            block += 1;
        }
        data.truncate(BIG_BLOB_SIZE);
        let data = Bytes::from(data);
        let desc = Descriptor::new(
            media_type::OCI_LAYER_TAR,
            digest::sha256(&data),
            data.len() as u64,
        );
        let chunks: Vec<std::io::Result<Bytes>> = (0..data.len())
            .step_by(BIG_BLOB_CHUNK)
            .map(|start| Ok(data.slice(start..(start + BIG_BLOB_CHUNK).min(data.len()))))
            .collect();
        assert!(chunks.len() > 100);
        let blob = Blob {
            size: desc.size,
            body: Box::pin(futures_util::stream::iter(chunks)),
        };
        self.backend
            .write_blob(&desc, blob)
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "{}: streaming write of 8 MiB blob {} failed: {err}",
                    self.who(),
                    desc.digest
                )
            });
        let stat = self.stat(&desc.digest).await;
        assert_eq!(
            stat.map(|stat| stat.size),
            Some(desc.size),
            "{}: stat_blob of the 8 MiB blob",
            self.who()
        );
        let (len, got, head) = self.read_hash(&desc.digest).await;
        assert_eq!(
            len,
            desc.size,
            "{}: 8 MiB blob read back length",
            self.who()
        );
        assert_eq!(
            got,
            desc.digest,
            "{}: 8 MiB blob read back digest",
            self.who()
        );
        assert_eq!(head, data[..head.len()], "{}: 8 MiB blob head", self.who());
    }
}
