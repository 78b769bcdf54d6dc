//! Build context: selecting and hashing COPY/ADD sources, and copying them with Docker semantics.
//!
//! [`select`] resolves the sources of one COPY/ADD against a source root (the build context or
//! an earlier stage's root filesystem) and computes a checksum over exactly the entries they
//! select: relative paths, entry types, mode bits, symlink targets and the blake3 hash of file
//! content. Ownership and timestamps never enter the checksum, and files a step does not select
//! never change it. File hashes are remembered in a [`HashCache`] keyed by the file's stat data,
//! so a warm selection reads no file.
//!
//! [`copy_into`] then copies a [`Selection`] into a stage root with Docker's COPY rules, never
//! writing outside that root.
//!
//! ```no_run
//! use std::path::Path;
//! use cache_build::context::{CopyOptions, HashCache, copy_into, select};
//! use cache_build::dockerfile::IgnoreMatcher;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let context = Path::new("/src/app");
//! let ignore = IgnoreMatcher::parse("target\n.git\n")?;
//! let mut cache = HashCache::load(Path::new("/var/lib/buildcache/context-hashes.json"));
//! // COPY src/ Cargo.toml /app/
//! let sources = vec!["src/".to_string(), "Cargo.toml".to_string()];
//! let selection = select(context, &sources, Some(&ignore), &mut cache)?;
//! println!("content key {}", selection.checksum);
//! let options = CopyOptions { workdir: "/".into(), ..CopyOptions::default() };
//! copy_into(&selection, context, Path::new("/stage/rootfs"), "/app/", &options)?;
//! cache.save()?;
//! # Ok(())
//! # }
//! ```
//!
//! # Invariants
//! - Source paths never leave the source root: `..` is clamped and symlinks in source paths
//!   resolve as if the source root were `/`.
//! - Copying never writes outside the destination root: destination paths are resolved with
//!   `openat2(RESOLVE_IN_ROOT)` and entries are created relative to directory descriptors without
//!   following symlinks.
//!
//! # Limitations
//! - Hard links inside a copied tree are copied as separate files; extended attributes are not
//!   copied.
//! - A source file changed between [`select`] and [`copy_into`] is copied as it is at copy time.
//! - `--chown`/`--chmod` are not applied to the content of archives that ADD extracts.

mod copy;
mod hash;
mod select;

use std::io;
use std::path::PathBuf;

pub use copy::{CopyOptions, CopyStats, copy_into, make_dir_all};
pub use hash::{HashCache, HashStats};
pub use select::{
    EntryKind, Match, SelectedEntry, SelectedSource, Selection, select, select_excluding,
    select_including, select_with,
};

/// Errors of selecting, hashing and copying COPY/ADD sources.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A source names nothing in the source root.
    #[error(
        "COPY source {source_path:?} not found in the {root_name}: check the path (sources are relative to the {root_name}) and the .dockerignore"
    )]
    NotFound {
        /// The source as written.
        source_path: String,
        /// "build context" or "source stage".
        root_name: &'static str,
    },
    /// A wildcard source matches nothing.
    #[error(
        "COPY source {source_path:?} matches no files in the {root_name}: check the pattern and the .dockerignore"
    )]
    NoMatch {
        /// The source as written.
        source_path: String,
        /// "build context" or "source stage".
        root_name: &'static str,
    },
    /// A wildcard source is not a valid pattern.
    #[error("invalid COPY source pattern {source_path:?}: {reason}")]
    BadPattern {
        /// The source as written.
        source_path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A filesystem operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done ("read", "create", ...).
        op: &'static str,
        /// The path the operation was about.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A `--chown` value is malformed or names an unknown user or group.
    #[error("invalid --chown={spec:?}: {reason}")]
    Chown {
        /// The value as written.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The copy would replace a directory with a non-directory or the other way round.
    #[error("cannot copy {source_path} to {dest}: {reason}")]
    Conflict {
        /// The source path (relative to the source root).
        source_path: PathBuf,
        /// The destination path inside the root.
        dest: PathBuf,
        /// What is in the way.
        reason: String,
    },
    /// Extracting an ADD archive failed.
    #[error("cannot extract ADD archive {archive}: {source}")]
    Extract {
        /// The archive in the source root.
        archive: PathBuf,
        /// The extraction error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The hash cache file could not be written.
    #[error("cannot save the context hash cache {path}: {source}")]
    SaveCache {
        /// The cache file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<io::Error>,
    ) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers shared by this module's unit tests.

    use std::path::Path;

    /// Writes `content` at `rel` under `root`, creating parents.
    pub(crate) fn write(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("create parents");
        std::fs::write(&path, content).expect("write file");
    }

    /// Waits until files written so far are old enough for the hash cache to remember them.
    pub(crate) fn age_files() {
        std::thread::sleep(std::time::Duration::from_millis(120));
    }

    /// Sets the permission bits of `rel` under `root`.
    pub(crate) fn chmod(root: &Path, rel: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join(rel), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
    }
}
