//! End-to-end tests of the `buildcache` binary: builds, cache export and import, registries and
//! cache management.

mod build;
mod cache_hits;
mod explain;
mod faultproxy;
mod faults;
mod flags;
mod hostile;
mod inspect;
mod instructions;
mod interop;
mod manage;
mod mounts;
mod registry;
mod robustness;
mod support;
mod tty;
