//! OCI images: assembling config and manifest, and reading and writing OCI image layouts.
//!
//! [`assemble`] turns an [`ImageSpec`] (runtime config, history, layer descriptors) into the
//! config blob and image manifest that BuildKit's image exporter would write for it.
//! [`write_layout_dir`] and [`write_layout_tar`] write the result as `--output type=oci` does
//! (buildx: `index.json` entries named by `-t`), and [`read_layout_image`] reads an image back for
//! `--build-context NAME=oci-layout://DIR[:TAG]`.
//!
//! # Invariants
//! - [`assemble`] is a pure function: the same spec gives the same bytes and digests.
//! - Every blob written to or read from a layout is checked against its digest and size.
//!
//! # Limitations
//! - Only single-platform images are written; reading picks `linux/amd64` from an index.
//! - Image manifests and configs always use the OCI media types (buildx `type=oci`).

mod assemble;
mod config;
mod layout;
mod name;

use std::io;
use std::path::PathBuf;

pub use assemble::{Image, assemble};
pub use config::{HistoryEntry, ImageSpec, ParsedConfig, RuntimeConfig, parse_config};
pub use layout::{
    LayoutImage, read_layout_image, split_layout_ref, write_layout_dir, write_layout_tar,
};
pub use name::{ImageName, image_names};

/// The `comment` BuildKit's Dockerfile frontend puts on history entries.
pub const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

/// Errors of image assembly and OCI layout I/O.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A layer descriptor has no `containerd.io/uncompressed` annotation (its diffID).
    #[error(
        "layer {digest} has no valid containerd.io/uncompressed annotation: set it to the digest of the uncompressed tar"
    )]
    MissingDiffId {
        /// The layer's blob digest.
        digest: cache_core::Digest,
    },
    /// An image config could not be parsed.
    #[error("invalid image config: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// An image name (`-t`) is not a valid reference.
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A filesystem operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", "create", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading a blob from the caller's stores, or writing the output stream, failed.
    #[error("cannot copy blob {digest}: {source}")]
    Blob {
        /// The blob's digest.
        digest: cache_core::Digest,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A blob's content does not match its descriptor.
    #[error("blob {expected} has the wrong content ({actual}): {context}")]
    DigestMismatch {
        /// The digest the descriptor names.
        expected: cache_core::Digest,
        /// What was found instead (a digest or a size).
        actual: String,
        /// Where the blob came from.
        context: String,
    },
    /// An OCI layout is missing something or holds something this builder cannot use.
    #[error("OCI layout {dir}: {reason}")]
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// What is wrong and, where possible, how to fix it.
        reason: String,
    },
}
