//! BuildKit-compatible build cache model: cache records, the cache graph, the manifests around it,
//! and the storage backend trait that destinations implement.
//!
//! ```
//! use cache_core::config::CacheConfig;
//! use cache_core::graph::CacheGraph;
//! use cache_core::Descriptor;
//!
//! // A config as BuildKit writes it: one layer, a root record and one step with a result.
//! let blob = cache_core::digest::sha256(b"layer");
//! let json = format!(
//!     r#"{{"layers":[{{"blob":"{blob}","parent":-1}}],"records":[{{"layers":[{{"layer":0,"createdAt":"2025-03-01T10:20:30Z"}}],"digest":"{}","inputs":[[{{"link":1}}]]}},{{"digest":"{}"}}]}}"#,
//!     cache_core::digest::sha256(b"step"),
//!     cache_core::digest::sha256(b"root"),
//! );
//! let config = CacheConfig::from_json(json.as_bytes())?;
//! let lookup = |d: &cache_core::Digest| Some(Descriptor::new("application/vnd.oci.image.layer.v1.tar+gzip", d.clone(), 5));
//! let graph = CacheGraph::from_config(&config, &lookup, 0)?;
//! assert_eq!(graph.records().len(), 2);
//! // Writing it back gives BuildKit's bytes.
//! assert_eq!(graph.to_config().0.to_json(), json.as_bytes());
//! # Ok::<(), cache_core::graph::ParseError>(())
//! ```
//!
//! # Invariants
//! - No I/O: no filesystem, network, environment or clock. Callers pass timestamps in, so output
//!   is deterministic and golden-testable.
//!
//! # Limitations
//! - Only sha256 digests; only the `registry` and `local` forms of the cache (no gha, s3, azblob
//!   or inline cache).
//!
//! # Feature flags
//! - `testkit`: the backend conformance suite, for backends' own tests.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backend;
pub mod config;
pub mod descriptor;
pub mod digest;
pub mod export;
pub mod graph;
pub mod import;
pub mod layout;
pub mod limits;
pub mod manifest;
pub mod spec;
pub mod transfer;

pub use backend::{Backend, Blob, Error, ErrorKind, IndexRef, MountSource, RawIndex, Result};
pub use descriptor::Descriptor;
pub use digest::Digest;
pub use graph::{CacheGraph, Mode};

#[cfg(feature = "testkit")]
pub mod testkit;
