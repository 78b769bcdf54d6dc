//! Benchmarks for buildcache: the build scenario runner (`cargo xtask bench`), its report, and
//! helpers shared with the criterion micro benchmarks (`cargo bench -p cache-bench`).
//!
//! # Limitations
//! - The scenarios drive the `buildcache` and `buildah` binaries as subprocesses and need root
//!   (RUN steps use namespaces), Debian's `apt` (the compiled project's base is made from
//!   `.deb` files), `umoci` and a loopback registry started by `cargo xtask bench`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod micro;
pub mod projects;
pub mod registry_log;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod suite;
