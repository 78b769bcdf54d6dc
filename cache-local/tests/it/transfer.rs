//! `cache_core::transfer::copy_blob` between two layout directories.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cache_core::descriptor::media_type;
use cache_core::transfer::{self, BlobCopy, FromBackend, InMemory, Moved};
use cache_core::{Backend, Blob, ErrorKind, MountSource};
use cache_local::LayoutDir;

use crate::util::{content, desc_of, runtime};

#[test]
fn copy_blob_sends_only_what_is_missing_and_never_mounts_into_a_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = LayoutDir::open(dir.path().join("src"));
    let dst = LayoutDir::open(dir.path().join("dst"));
    let bytes = content("transfer", 300_000);
    let desc = desc_of(media_type::OCI_LAYER_GZIP, &bytes);
    let hint = [MountSource {
        registry: "127.0.0.1:5000".to_owned(),
        repository: "other".to_owned(),
    }];
    runtime().block_on(async {
        src.write_blob(&desc, Blob::from_bytes(bytes.clone()))
            .await
            .expect("write source");
        let counter = Arc::new(AtomicU64::new(0));
        let how = BlobCopy {
            mount_from: &hint,
            verify: true,
            counter: Some(counter.clone()),
            ..BlobCopy::default()
        };
        // A directory cannot mount: the hint is ignored and the bytes are streamed, counted.
        let moved = transfer::copy_blob(&dst, &FromBackend(&src), &desc, &how)
            .await
            .expect("copy");
        assert_eq!(moved, Moved::Copied);
        assert_eq!(counter.load(Ordering::Relaxed), desc.size);
        assert_eq!(
            dst.stat_blob(&desc.digest)
                .await
                .expect("stat")
                .map(|d| d.size),
            Some(desc.size)
        );
        // Present with its size: nothing is read from the source, not even opened.
        let empty = LayoutDir::open(dir.path().join("empty"));
        let again = transfer::copy_blob(&dst, &FromBackend(&empty), &desc, &how)
            .await
            .expect("present");
        assert_eq!(again, Moved::Present);
        assert_eq!(counter.load(Ordering::Relaxed), desc.size);

        // Missing in the destination and in the source.
        let other = desc_of(media_type::OCI_LAYER_GZIP, b"nowhere");
        let missing = transfer::copy_blob(&dst, &FromBackend(&empty), &other, &how).await;
        assert!(
            matches!(&missing, Err(transfer::Error::Missing { digest }) if *digest == other.digest),
            "{missing:?}"
        );

        // A source whose bytes are not the descriptor's is refused and nothing is stored.
        let lying = desc_of(media_type::OCI_LAYER_GZIP, b"the real bytes");
        let corrupt = transfer::copy_blob(
            &dst,
            &InMemory(b"other bytes!!!".as_slice().into()),
            &lying,
            &how,
        )
        .await;
        match corrupt {
            Err(transfer::Error::Backend { source, .. }) => {
                assert_eq!(source.kind(), ErrorKind::DigestMismatch, "{source}")
            }
            other => panic!("a corrupt source must fail, got {other:?}"),
        }
        assert!(dst.stat_blob(&lying.digest).await.expect("stat").is_none());
    });
}
