//! OCI distribution registry backend for BuildKit-format build caches (`type=registry`).
//!
//! [`Registry`] is one repository on one registry and implements [`cache_core::Backend`]
//! over the distribution API on reqwest with rustls: blob `HEAD`/`GET`/upload/mount and
//! manifest `GET`/`HEAD`/`PUT`, with anonymous, Basic and Bearer token authentication.
//!
//! ```no_run
//! use cache_core::{Backend, Blob, IndexRef, digest};
//! use cache_registry::{Options, Registry};
//!
//! # async fn demo() -> Result<(), cache_core::Error> {
//! let registry = Registry::new("127.0.0.1:5000/app:cache", Options::new())?;
//! let bytes = b"layer bytes".to_vec();
//! let desc = cache_core::Descriptor::new(
//!     "application/vnd.oci.image.layer.v1.tar",
//!     digest::sha256(&bytes),
//!     bytes.len() as u64,
//! );
//! registry.write_blob(&desc, Blob::from_bytes(bytes)).await?;
//! let manifest = registry.read_index(&IndexRef::Tag("cache".into())).await?;
//! println!("{:?} after {:?}", manifest.map(|m| m.digest), registry.stats());
//! # Ok(()) }
//! ```
//!
//! # Invariants
//! - Credentials are never printed or logged; `Debug` shows `<redacted>`, and credentials are
//!   never sent to a host other than the registry and its token realm (redirects to blob
//!   storage go without `Authorization`).
//! - Every downloaded blob is checked against its digest and size while it streams, and every
//!   manifest against the requested digest and `Docker-Content-Digest`.
//! - Blob bodies are streamed: memory stays flat whatever the blob size (chunked uploads buffer
//!   one chunk).
//! - Errors carry the registry's own `errors[].code` and `message`.
//!
//! # Retries and tokens
//! Temporary failures (429 honouring `Retry-After`, 5xx, broken connections, timeouts) are
//! retried with exponential backoff and jitter in one place. A streamed upload is retried only
//! if no byte of its body was read; otherwise its error stays temporary so the caller, who can
//! re-create the body, may retry `write_blob`. Bearer tokens are cached per scope set and
//! renewed before they expire or when the registry answers 401.
//!
//! # Transport
//! HTTPS with verified certificates. Plain HTTP is allowed for loopback registries
//! (`localhost`, `127.0.0.0/8`, `::1`) and with [`Options::insecure`] (which also skips
//! certificate verification); as in Docker, HTTPS is tried first.
//!
//! # Limitations
//! - Only sha256 digests.
//! - No blob deletion or tag listing.
//! - A chunked upload whose `PATCH` broke half-way is restarted by the caller, not resumed.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod auth;
mod blob;
mod client;
mod error;
mod manifest;
mod reference;
mod registry;
mod retry;

pub use auth::Credentials;
pub use reference::ImageRef;
pub use registry::{Options, Registry, Stats};
