//! Integration tests of the OCI layout backend: conformance, BuildKit fixtures, layout details,
//! and crash and concurrency safety with child processes.

mod conformance;
mod crash;
mod fixtures;
mod gc;
mod layout;
mod transfer;
mod util;
