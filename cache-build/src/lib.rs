//! Dockerfile front end, step executor and OCI layer handling for buildcache.
//!
//! # Invariants
//! - Extracting a layer never writes outside the target root.
#![deny(missing_docs)]

pub mod context;
pub mod engine;
pub mod dockerfile;
pub mod image;
pub mod layer;
pub mod sandbox;
