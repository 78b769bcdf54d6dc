//! OCI layers: filesystem diffs, deterministic tar writing, compression and safe extraction.
//!
//! The executor runs each step in place on one materialised root directory per stage.
//! A layer is produced by taking a [`Snapshot`] before the step, computing [`diff`] after it,
//! and writing the changes with [`write_layer`] (or [`write_layer_file`]).
//! Layers from a cache hit or a base image are applied with [`apply_layer`];
//! `ADD` of a local archive uses [`extract_archive`].
//!
//! # Invariants
//! - Extraction never creates, changes or deletes anything outside the target root:
//!   entries with `..` components are refused, absolute names are taken relative to the root,
//!   parent directories are resolved with `openat2(RESOLVE_IN_ROOT)` (symlinks are confined to
//!   the root, never followed out of it) and the last component is never followed.
//! - Writing the same tree with the same [`Changes`] and [`Compression`] gives the same bytes.
//! - The diffID (sha256 of the tar) and the blob digest (sha256 of the compressed bytes) are
//!   computed in the same pass that writes or reads the layer.
//!
//! # Limitations
//! - Only the `security.capability` extended attribute is written (as containerd does);
//!   extraction applies `SCHILY.xattr.*` records to regular files and directories.
//! - Timestamps are written with one-second precision (as containerd does).
//! - Sockets are not stored in layers; sparse tar entries are refused.
//! - Archives for `ADD` may be plain tar, gzip or zstd; bzip2 and xz are not recognised and are
//!   then copied as plain files.

mod apply;
mod clone;
mod fsops;
pub mod overlay;
pub(crate) use fsops::create_new_file;
mod pipe;
mod snapshot;
mod write;

use std::io;
use std::path::PathBuf;

pub use apply::{ApplyStats, LayerLimits, apply_layer, extract_archive};
pub use clone::clone_tree;
pub use snapshot::{ChangeKind, Changes, Snapshot, diff};
pub use write::{WriteOptions, write_layer, write_layer_file, write_layer_with};

/// Errors of layer diffing, writing and extraction.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem operation on `path` failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done ("read", "create", "stat", ...).
        op: &'static str,
        /// The path the operation was about (relative to the root for extraction).
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The layer or archive stream could not be decoded.
    #[error("corrupt layer stream ({context}): {source}")]
    Corrupt {
        /// Where in the stream the problem was found.
        context: String,
        /// The underlying decoder or tar error.
        #[source]
        source: io::Error,
    },
    /// An entry was refused because it could escape the root or is otherwise unsafe.
    #[error("refusing tar entry {entry:?}: {reason}")]
    Refused {
        /// The entry name as written in the archive.
        entry: String,
        /// Why it was refused.
        reason: String,
    },
    /// The layer is larger than a `--limit` allows; extraction stopped there.
    #[error(
        "layer exceeds --limit {limit}: {detail}; {}",
        cache_core::limits::Limits::hint(limit)
    )]
    Limit {
        /// The limit's name (`layer-size`, `layer-ratio`, `layer-entries`).
        limit: &'static str,
        /// What the layer holds beyond it.
        detail: String,
    },
    /// A file changed between the diff and the writing of the layer.
    #[error("{path} changed while its layer was being written; run the step again")]
    Changed {
        /// The path under the root.
        path: PathBuf,
    },
    /// Something the layer format cannot represent.
    #[error("cannot store {path} in a layer: {reason}")]
    Unsupported {
        /// The path under the root.
        path: PathBuf,
        /// What is not supported.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn refused(entry: impl AsRef<[u8]>, reason: impl Into<String>) -> Error {
        Error::Refused {
            entry: String::from_utf8_lossy(entry.as_ref()).into_owned(),
            reason: reason.into(),
        }
    }
}

/// OCI media type of uncompressed layers.
pub const MEDIA_TYPE_OCI_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI media type of gzip layers.
pub const MEDIA_TYPE_OCI_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI media type of zstd layers.
pub const MEDIA_TYPE_OCI_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker media type of uncompressed layers.
pub const MEDIA_TYPE_DOCKER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker media type of gzip layers.
pub const MEDIA_TYPE_DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker-style media type BuildKit uses for zstd layers in Docker manifests.
pub const MEDIA_TYPE_DOCKER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";

/// Compression of a layer blob (`compression=` of BuildKit's exporters).
///
/// The level is part of the cache identity: a different level gives different blob bytes and
/// therefore a different digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    Uncompressed,
    /// gzip at the given level (0-9).
    Gzip {
        /// zlib level; BuildKit's default is Go's `gzip.DefaultCompression`, i.e. 6.
        level: u32,
    },
    /// zstd at the given level (1-22).
    Zstd {
        /// zstd level; BuildKit's default (`zstd.SpeedDefault`) corresponds to 3.
        level: i32,
    },
}

impl Default for Compression {
    /// gzip level 6, BuildKit's default.
    fn default() -> Self {
        Compression::GZIP
    }
}

impl Compression {
    /// gzip at BuildKit's default level (6).
    pub const GZIP: Compression = Compression::Gzip { level: 6 };
    /// zstd at BuildKit's default level (3).
    pub const ZSTD: Compression = Compression::Zstd { level: 3 };

    /// The layer media type: OCI (`application/vnd.oci.image.layer.v1.tar[+gzip|+zstd]`) when
    /// `oci` is true, else Docker (`application/vnd.docker.image.rootfs.diff.tar[.gzip|.zstd]`).
    pub fn media_type(&self, oci: bool) -> &'static str {
        match (self, oci) {
            (Compression::Uncompressed, true) => MEDIA_TYPE_OCI_TAR,
            (Compression::Gzip { .. }, true) => MEDIA_TYPE_OCI_GZIP,
            (Compression::Zstd { .. }, true) => MEDIA_TYPE_OCI_ZSTD,
            (Compression::Uncompressed, false) => MEDIA_TYPE_DOCKER_TAR,
            (Compression::Gzip { .. }, false) => MEDIA_TYPE_DOCKER_GZIP,
            (Compression::Zstd { .. }, false) => MEDIA_TYPE_DOCKER_ZSTD,
        }
    }

    /// The compression named by a layer media type (OCI, Docker, and their non-distributable
    /// variants), with the default level; `None` for anything else.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        // Parameters such as `;charset=` are not used by layer types, but ignore them anyway.
        let mt = media_type.split(';').next().unwrap_or("").trim();
        match mt {
            MEDIA_TYPE_OCI_TAR
            | MEDIA_TYPE_DOCKER_TAR
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
                Some(Compression::Uncompressed)
            }
            MEDIA_TYPE_OCI_GZIP
            | MEDIA_TYPE_DOCKER_GZIP
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::GZIP)
            }
            MEDIA_TYPE_OCI_ZSTD
            | MEDIA_TYPE_DOCKER_ZSTD
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Compression::ZSTD)
            }
            _ => None,
        }
    }
}

/// What [`write_layer`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// `sha256:<hex>` of the compressed blob (the descriptor digest).
    pub digest: String,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// `sha256:<hex>` of the uncompressed tar (the diffID in the image config).
    pub diff_id: String,
    /// Size of the uncompressed tar in bytes.
    pub uncompressed_size: u64,
    /// The OCI media type of the blob.
    pub media_type: String,
    /// Number of tar entries (files, directories, links, whiteouts), not counting PAX headers.
    pub n_entries: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_round_trip() {
        for c in [
            Compression::Uncompressed,
            Compression::GZIP,
            Compression::ZSTD,
        ] {
            for oci in [true, false] {
                assert_eq!(Compression::from_media_type(c.media_type(oci)), Some(c));
            }
        }
        assert_eq!(
            Compression::GZIP.media_type(false),
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
        assert_eq!(
            Compression::ZSTD.media_type(true),
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        assert_eq!(Compression::from_media_type("application/json"), None);
        assert_eq!(Compression::default(), Compression::Gzip { level: 6 });
    }
}
