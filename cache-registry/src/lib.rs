//! OCI distribution registry backend for BuildKit-format build caches (`type=registry`).
//!
//! [`Registry`] is one repository on one registry and implements [`cache_core::Backend`]
//! over the distribution API on reqwest with rustls: blob `HEAD`/`GET`/upload/mount and
//! manifest `GET`/`HEAD`/`PUT`, with anonymous, Basic and Bearer token authentication.
//!
//! A [`Registry`] is made from a reference with Docker's grammar (no request is made yet):
//!
//! ```
//! use cache_registry::{Options, Registry};
//!
//! let registry = Registry::new("127.0.0.1:5000/team/app:cache", Options::new())?;
//! assert_eq!(registry.reference().registry(), "127.0.0.1:5000");
//! assert_eq!(registry.reference().repository(), "team/app");
//! assert_eq!(registry.reference().tag(), Some("cache"));
//! assert!(Registry::new("127.0.0.1:5000/App:cache", Options::new()).is_err(), "uppercase");
//! # Ok::<(), cache_core::Error>(())
//! ```
//!
//! Against a running registry, blobs and cache manifests go through [`cache_core::Backend`]:
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
//! Temporary failures (429 honouring `Retry-After`, 5xx, broken connections, stalls) are
//! retried with exponential backoff and jitter in one place. A streamed upload is retried only
//! if no byte of its body was read; otherwise its error stays temporary and comes back after
//! the backoff, so the caller, who can re-create the body, restarts `write_blob` (see
//! `cache_core::transfer::write_blob_restarting`), which first checks whether the lost attempt
//! landed. A chunked upload resumes a broken `PATCH` from the registry's `Range`; a broken
//! download resumes with `Range`. Authentication is learnt from the first 401 (no ping);
//! Bearer tokens are cached per scope set and renewed before they expire or on a 401.
//!
//! # Transport
//! HTTPS with verified certificates (TLS roots load on the first HTTPS connection). Loopback
//! registries (`localhost`, `127.0.0.0/8`, `::1`) and [`Options::insecure`] ones (which also
//! skip certificate verification) get plain HTTP from the first request; a TLS server's `400`
//! answer moves them to HTTPS. No request has a total timeout: [`Options::timeout`] bounds how
//! long a request may make no progress. Every request is logged at debug level (`tracing`):
//! method, path (never the query or credentials), status, bytes, time, retry decisions.
//!
//! # Limitations
//! - Only sha256 digests.
//! - No blob deletion or tag listing.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod auth;
mod blob;
mod client;
mod error;
pub mod image;
mod manifest;
mod reference;
mod registry;
mod retry;

pub use auth::Credentials;
pub use reference::ImageRef;
pub use registry::{Options, Registry, RequestCounts, Stats};
