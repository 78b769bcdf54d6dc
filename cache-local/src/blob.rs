//! Blobs under `blobs/<algorithm>/<hex>`: stat, verified reads, atomic verified writes, listing.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use cache_core::backend::Result;
use cache_core::digest::Hasher;
use cache_core::{Descriptor, Digest, Error, ErrorKind};
use tempfile::NamedTempFile;

use crate::LayoutDir;
use crate::error::parse_error;
use crate::hook;

/// Prefix of temporary files; readers and listings skip names that are not digests.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// Refuses digests whose algorithm this layout does not store.
pub(crate) fn check_algorithm(digest: &Digest) -> Result<()> {
    if digest.algorithm().as_ref() == "sha256" {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Unsupported,
            format!("digest {digest}: only sha256 blobs are supported in an OCI layout cache"),
        ))
    }
}

/// Makes `path`'s directory entry changes durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|err| parse_error("syncing directory", dir, err))
}

/// A temporary file in `dir` with a name readers skip, readable by others like BuildKit's files.
pub(crate) fn temp_file_in(dir: &Path) -> Result<NamedTempFile> {
    tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .permissions(fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(|err| parse_error("creating a temporary file in", dir, err))
}

/// A blob being written: bytes go to a temporary file in the blob directory and are hashed;
/// [`finish`](BlobWriter::finish) verifies and renames it into place.
///
/// Dropping an unfinished writer removes the temporary file; a killed process leaves a
/// `.tmp-*` file that readers ignore.
#[derive(Debug)]
pub struct BlobWriter {
    temp: NamedTempFile,
    hasher: Hasher,
    expected: Descriptor,
    final_path: PathBuf,
}

impl BlobWriter {
    /// Appends `bytes` to the blob.
    ///
    /// Fails with [`ErrorKind::DigestMismatch`] as soon as the blob grows past its expected size.
    pub fn write_chunk(&mut self, bytes: &[u8]) -> Result<()> {
        let size = self.expected.size;
        if self.hasher.len() + bytes.len() as u64 > size {
            return Err(Error::new(
                ErrorKind::DigestMismatch,
                format!(
                    "blob {} is longer than its expected size of {size} bytes; nothing was stored",
                    self.expected.digest
                ),
            ));
        }
        self.hasher.update(bytes);
        self.temp
            .write_all(bytes)
            .map_err(|err| parse_error("writing", self.temp.path(), err))?;
        hook::reach("blob:chunk-written");
        Ok(())
    }

    /// Verifies size and digest, makes the file durable and renames it to its digest.
    ///
    /// An existing blob of the same digest is replaced by identical content, which readers may
    /// see at any time: both are complete.
    pub fn finish(self) -> Result<()> {
        let Self {
            temp,
            hasher,
            expected,
            final_path,
        } = self;
        let n_bytes = hasher.len();
        if n_bytes != expected.size {
            return Err(Error::new(
                ErrorKind::DigestMismatch,
                format!(
                    "blob {} is {n_bytes} bytes, expected {}; nothing was stored",
                    expected.digest, expected.size
                ),
            ));
        }
        let got = hasher.finish();
        if got != expected.digest {
            return Err(Error::new(
                ErrorKind::DigestMismatch,
                format!(
                    "blob content hashes to {got}, expected {}; nothing was stored",
                    expected.digest
                ),
            ));
        }
        temp.as_file()
            .sync_all()
            .map_err(|err| parse_error("syncing", temp.path(), err))?;
        hook::reach("blob:before-rename");
        temp.persist(&final_path)
            .map_err(|err| parse_error("renaming a temporary blob to", &final_path, err.error))?;
        let dir = final_path
            .parent()
            .expect("a blob path has a parent directory");
        sync_dir(dir)
    }
}

/// A blob opened for reading that checks size and digest as it reaches the end.
///
/// At the end of a blob whose content does not match, `read` fails with an `io::Error` of kind
/// `InvalidData` wrapping an [`Error`] of kind [`ErrorKind::DigestMismatch`].
#[derive(Debug)]
pub struct BlobReader {
    file: File,
    hasher: Hasher,
    digest: Digest,
    size: u64,
    path: PathBuf,
    checked: bool,
}

impl BlobReader {
    /// The size of the blob file.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn check(&mut self) -> io::Result<()> {
        self.checked = true;
        let n_bytes = self.hasher.len();
        let got = std::mem::take(&mut self.hasher).finish();
        if n_bytes != self.size || got != self.digest {
            let err = Error::new(
                ErrorKind::DigestMismatch,
                format!(
                    "blob {} is corrupt: {} holds {n_bytes} bytes hashing to {got}; delete it and \
                     export again",
                    self.digest,
                    self.path.display()
                ),
            );
            return Err(io::Error::new(io::ErrorKind::InvalidData, err));
        }
        Ok(())
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.file.read(buf)?;
        if n == 0 {
            if !self.checked {
                self.check()?;
            }
            return Ok(0);
        }
        self.hasher.update(&buf[..n]);
        if self.hasher.len() > self.size {
            self.checked = true;
            let err = Error::new(
                ErrorKind::DigestMismatch,
                format!(
                    "blob {} grew past its size of {} bytes while being read",
                    self.digest, self.size
                ),
            );
            return Err(io::Error::new(io::ErrorKind::InvalidData, err));
        }
        Ok(n)
    }
}

impl LayoutDir {
    /// The path of blob `digest`: `<dir>/blobs/<algorithm>/<hex>`, whether it exists or not.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_ref())
            .join(digest.digest())
    }

    /// The descriptor (empty media type) of blob `digest`, or `None` if absent.
    ///
    /// Behavior: nothing but existence and size is checked.
    pub fn stat_blob_sync(&self, digest: &Digest) -> Result<Option<Descriptor>> {
        check_algorithm(digest)?;
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(Some(Descriptor::new(
                String::new(),
                digest.clone(),
                meta.len(),
            ))),
            Ok(_) => Err(Error::new(
                ErrorKind::Corrupt,
                format!("{} is not a regular file; remove it", path.display()),
            )),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(parse_error("reading the metadata of", &path, err)),
        }
    }

    /// Opens blob `digest` with its size, or `None` if absent. The file is not verified.
    pub(crate) fn open_blob(&self, digest: &Digest) -> Result<Option<(File, u64, PathBuf)>> {
        check_algorithm(digest)?;
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(parse_error("opening", &path, err)),
        };
        let meta = file
            .metadata()
            .map_err(|err| parse_error("reading the metadata of", &path, err))?;
        if !meta.is_file() {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("{} is not a regular file; remove it", path.display()),
            ));
        }
        Ok(Some((file, meta.len(), path)))
    }

    /// A reader over blob `digest` that verifies it at the end, or `None` if absent.
    pub fn read_blob_sync(&self, digest: &Digest) -> Result<Option<BlobReader>> {
        Ok(self
            .open_blob(digest)?
            .map(|(file, size, path)| BlobReader {
                file,
                hasher: Hasher::new(),
                digest: digest.clone(),
                size,
                path,
                checked: false,
            }))
    }

    /// Reads blob `digest` into memory, verified, refusing blobs over `limit` bytes.
    pub(crate) fn read_blob_bytes(&self, digest: &Digest, limit: u64) -> Result<Option<Vec<u8>>> {
        let Some(mut reader) = self.read_blob_sync(digest)? else {
            return Ok(None);
        };
        if reader.size > limit {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "blob {digest} is {} bytes, more than the {limit} bytes a manifest may have",
                    reader.size
                ),
            ));
        }
        let mut bytes = Vec::with_capacity(reader.size as usize);
        let path = reader.path.clone();
        reader
            .read_to_end(&mut bytes)
            .map_err(|err| parse_error("reading", &path, err))?;
        Ok(Some(bytes))
    }

    /// A writer for the blob `desc`, or `None` if a blob of that digest and size exists already
    /// (its modification time is then set to now, for garbage collection's grace period).
    ///
    /// Creates `blobs/<algorithm>/` (and the layout directory) when needed.
    pub fn blob_writer(&self, desc: &Descriptor) -> Result<Option<BlobWriter>> {
        if let Some(existing) = self.stat_blob_sync(&desc.digest)?
            && existing.size == desc.size
        {
            touch(&self.blob_path(&desc.digest));
            return Ok(None);
        }
        let final_path = self.blob_path(&desc.digest);
        let dir = final_path
            .parent()
            .expect("a blob path has a parent directory");
        fs::create_dir_all(dir)
            .map_err(|err| parse_error("creating the blob directory", dir, err))?;
        Ok(Some(BlobWriter {
            temp: temp_file_in(dir)?,
            hasher: Hasher::new(),
            expected: Descriptor::new(String::new(), desc.digest.clone(), desc.size),
            final_path,
        }))
    }

    /// Stores the bytes of `body` as blob `desc`, verifying digest and size before it is visible.
    ///
    /// Behavior: idempotent (an existing blob is success and `body` is left unread); a mismatch
    /// is [`ErrorKind::DigestMismatch`] and stores nothing.
    pub fn write_blob_sync(&self, desc: &Descriptor, mut body: impl Read) -> Result<()> {
        let Some(mut writer) = self.blob_writer(desc)? else {
            return Ok(());
        };
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    return Err(Error::from_io(
                        format!("reading the body of blob {}", desc.digest),
                        err,
                    ));
                }
            };
            writer.write_chunk(&buf[..n])?;
        }
        writer.finish()
    }

    /// Every blob stored: digest, size and modification time. Temporary files are left out.
    ///
    /// A layout without `blobs/` has none.
    pub fn list_blobs(&self) -> Result<Vec<(Digest, u64, SystemTime)>> {
        let blobs = self.root.join("blobs");
        let mut found = Vec::new();
        for algorithm_dir in read_dir_or_empty(&blobs)? {
            let Some(algorithm) = algorithm_dir.file_name().and_then(|name| name.to_str()) else {
                continue;
            };
            if !algorithm_dir.is_dir() {
                continue;
            }
            let algorithm = algorithm.to_owned();
            for path in read_dir_or_empty(&algorithm_dir)? {
                let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
                    continue;
                };
                let Ok(digest) = Digest::try_from(format!("{algorithm}:{name}")) else {
                    continue;
                };
                let meta = match fs::symlink_metadata(&path) {
                    Ok(meta) => meta,
                    // Deleted since the listing: not a blob any more.
                    Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                    Err(err) => return Err(parse_error("reading the metadata of", &path, err)),
                };
                if !meta.is_file() {
                    continue;
                }
                let modified = meta
                    .modified()
                    .map_err(|err| parse_error("reading the modification time of", &path, err))?;
                found.push((digest, meta.len(), modified));
            }
        }
        found.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        Ok(found)
    }

    /// Temporary files left by interrupted writes (`.tmp-*` in the layout and blob directories),
    /// with their modification times, for garbage collection to remove once they are old.
    pub fn list_temp_files(&self) -> Result<Vec<(PathBuf, SystemTime)>> {
        let mut dirs = vec![self.root.clone()];
        for algorithm_dir in read_dir_or_empty(&self.root.join("blobs"))? {
            if algorithm_dir.is_dir() {
                dirs.push(algorithm_dir);
            }
        }
        let mut found = Vec::new();
        for dir in dirs {
            for path in read_dir_or_empty(&dir)? {
                let is_temp = path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with(TEMP_PREFIX));
                if !is_temp {
                    continue;
                }
                match fs::symlink_metadata(&path).and_then(|meta| meta.modified()) {
                    Ok(modified) => found.push((path, modified)),
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => return Err(parse_error("reading the metadata of", &path, err)),
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// Deletes blob `digest`; returns whether it existed.
    ///
    /// Callers collecting garbage hold [`LayoutDir::lock`] so no export adds a reference meanwhile.
    pub fn delete_blob(&self, digest: &Digest) -> Result<bool> {
        check_algorithm(digest)?;
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(parse_error("deleting", &path, err)),
        }
    }
}

/// Sets the modification time of `path` to now, best effort.
///
/// An export that finds a blob already stored refreshes its time, so garbage collection with a
/// grace period on modification times keeps blobs that an export in progress is about to name.
/// Failure (a read-only cache someone else owns) only weakens that protection, so it is ignored.
fn touch(path: &Path) {
    let now = rustix::fs::Timespec {
        tv_sec: 0,
        tv_nsec: rustix::fs::UTIME_NOW,
    };
    let times = rustix::fs::Timestamps {
        last_access: now,
        last_modification: now,
    };
    let _ = rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::empty());
}

/// The entries of `dir`, or none if it does not exist.
fn read_dir_or_empty(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(parse_error("listing", dir, err)),
    };
    entries
        .map(|entry| {
            entry
                .map(|entry| entry.path())
                .map_err(|err| parse_error("listing", dir, err))
        })
        .collect()
}
