//! Benchmarks for buildcache: the build scenario runner (`cargo xtask bench`), its report, and
//! helpers shared with the criterion micro benchmarks (`cargo bench -p cache-bench`).
//!
//! The figures of BENCHMARKS.md are medians of runs, and the bytes a builder moved come from
//! the registry's access log, so that every builder is counted the same way:
//!
//! ```
//! use cache_bench::{registry_log, stats::Summary};
//!
//! let walls = Summary::of(&[7.1, 6.9, 9.4]).expect("three samples");
//! assert_eq!((walls.median, walls.min, walls.max), (7.1, 6.9, 9.4));
//!
//! let log = r#"127.0.0.1 - - [04/Dec/2026:10:00:00 +0000] "PUT /v2/app/blobs/uploads/x?digest=sha256:ab HTTP/1.1" 201 0 "" "buildcache""#;
//! let put = &registry_log::requests(log)[0];
//! assert_eq!((put.method.as_str(), put.status), ("PUT", 201));
//! ```
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
