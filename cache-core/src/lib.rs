//! BuildKit-compatible build cache model: cache records, the cache graph, the manifests around it,
//! and the storage backend trait that destinations implement.
//!
//! # Invariants
//! - No I/O: no filesystem, network, environment or clock. Callers pass timestamps in, so output
//!   is deterministic and golden-testable.
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
pub mod manifest;
pub mod spec;

pub use backend::{Backend, Blob, Error, ErrorKind, IndexRef, RawIndex, Result};
pub use descriptor::Descriptor;
pub use digest::Digest;
pub use graph::{CacheGraph, Mode};

#[cfg(feature = "testkit")]
pub mod testkit;
