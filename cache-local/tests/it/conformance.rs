//! The shared backend conformance suite on a fresh layout directory.

use cache_local::LayoutDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_fresh_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutDir::open(dir.path().join("cache"));
    cache_core::testkit::conformance(&layout, "first").await;
    // A second run against the same directory, as on a shared backend.
    cache_core::testkit::conformance(&layout, "second").await;
    assert!(
        LayoutDir::open_existing(dir.path().join("cache")).is_ok(),
        "the conformance writes leave a complete layout"
    );
}
