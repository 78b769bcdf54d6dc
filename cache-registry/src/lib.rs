//! OCI distribution registry backend for BuildKit-format build caches (`type=registry`).
//!
//! This crate implements [`cache_core::backend::Backend`] on top of the OCI distribution API.
//!
//! # Invariants
//! - Credentials are never printed or logged.
//!
//! # Limitations
//! - Not implemented yet: see issue 4 of the project.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
