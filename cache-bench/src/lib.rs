//! Benchmarks for buildcache: criterion micro benchmarks and build scenarios.
//!
//! # Limitations
//! - Not implemented yet: see issue 5 of the project.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
