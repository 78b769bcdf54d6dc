//! The builder of buildcache: a Dockerfile front end, an engine that looks every step up in a
//! BuildKit-format cache graph and runs only what misses, RUN isolation, and OCI layers and images.
//!
//! ```
//! let df = cache_build::dockerfile::parse("FROM scratch AS base\nCOPY a /a\n\nFROM base\nRUN true\n")?;
//! let plan = cache_build::dockerfile::plan(&df, &Default::default())?;
//! assert_eq!(plan.stages.len(), 2);
//! assert_eq!(plan.stages[1].steps[0].display, "RUN true");
//! # Ok::<(), cache_build::dockerfile::Error>(())
//! ```
//!
//! # Invariants
//! - Extracting a layer, or copying into a root filesystem, never writes outside that root.
//! - Storage is reached only through `cache_core`'s traits: this crate knows no backend.
//! - A step found in the cache with a result is never executed, and its layers are not unpacked
//!   unless a later step that misses needs that filesystem.
//!
//! # Limitations
//! - linux/amd64 only; `ONBUILD` and `ADD <url>` are refused with the line named.
//! - `RUN --network=default` is the host's network (the sandbox has no bridge of its own); `none`
//!   is a new network namespace with only loopback.
//! - Cache keys are our own: they follow BuildKit's record-digest form, but a BuildKit cache gives
//!   no hits to this builder (and the other way round), though each reads the other's caches.
#![deny(missing_docs)]

pub mod context;
/// The Dockerfile front end, re-exported from [`cache_dockerfile`].
pub use cache_dockerfile as dockerfile;
pub mod engine;
pub mod image;
pub mod layer;
pub mod mounts;
pub mod sandbox;
