//! Fuzz target: a layer blob extracted into a fresh root, with symlinks in the root pointing out
//! of it: extraction may fail, but never panics, never writes beside the root and stops at the
//! size and entry limits.
#![no_main]

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use cache_build::layer::{LayerLimits, apply_layer};
use libfuzzer_sys::fuzz_target;

/// `dir` and everything under it: relative path, mode, owner, modification time and contents
/// (a symlink's target), so that any change made through an escaping link shows.
fn listing(dir: &Path) -> Vec<(String, u32, u32, u32, i64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = fs::symlink_metadata(&path).expect("metadata");
        let rel = path
            .strip_prefix(dir)
            .expect("below dir")
            .display()
            .to_string();
        let contents = if meta.file_type().is_symlink() {
            fs::read_link(&path)
                .expect("link")
                .display()
                .to_string()
                .into_bytes()
        } else if meta.is_dir() {
            for entry in fs::read_dir(&path).expect("listing the fuzz directory") {
                pending.push(entry.expect("entry").path());
            }
            Vec::new()
        } else {
            fs::read(&path).expect("read")
        };
        out.push((
            rel,
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.mtime(),
            meta.mtime_nsec(),
            contents,
        ));
    }
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, blob)) = data.split_first() else {
        return;
    };
    let media_type = match choice % 3 {
        0 => "application/vnd.oci.image.layer.v1.tar",
        1 => "application/vnd.oci.image.layer.v1.tar+gzip",
        _ => "application/vnd.oci.image.layer.v1.tar+zstd",
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = dir.path().join("outside");
    let root = dir.path().join("root");
    fs::create_dir_all(outside.join("sub")).expect("mkdir");
    fs::write(outside.join("sentinel"), b"keep").expect("write");
    fs::create_dir_all(root.join("etc")).expect("mkdir");
    std::os::unix::fs::symlink("../outside", root.join("up")).expect("symlink");
    std::os::unix::fs::symlink(&outside, root.join("abs")).expect("symlink");
    std::os::unix::fs::symlink("../../outside/sentinel", root.join("etc/passwd")).expect("symlink");
    let before = listing(&outside);
    let limits = LayerLimits {
        max_size: 4 << 20,
        size_limit: "layer-size",
        max_entries: 2000,
    };
    if let Ok(stats) = apply_layer(blob, media_type, &root, &limits) {
        assert!(stats.uncompressed_size <= limits.max_size);
        assert!(stats.entries <= limits.max_entries);
    }
    assert_eq!(
        listing(&outside),
        before,
        "nothing outside the root changed"
    );
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .expect("listing")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["outside", "root"],
        "nothing was created beside the root"
    );
});
