//! Cache mounts (`RUN --mount=type=cache`) kept in the root between builds, shared by concurrent
//! builds as their `sharing` says.
//!
//! Layout under the store's directory (`ROOT/mounts`):
//!
//! ```text
//! <key>/id          the mount's id as BuildKit's exec op carries it (`<namespace>/<id>`)
//! <key>/<n>/        the contents of instance n (0 first; `sharing=private` adds more)
//! <key>/<n>.lock    the flock of instance n; its mtime is the last use
//! ```
//!
//! `<key>` is the first 32 hex digits of the id's sha256, so any id is a safe file name. Users of
//! an instance hold its lock for the whole step: `shared` a shared lock, `locked` an exclusive one
//! (waiting for the others), `private` an exclusive one on the first instance nobody holds (a new
//! instance when all are held). Removal takes the exclusive lock without waiting, so a mount in use
//! is never removed. A new instance is prepared in a temporary directory and renamed into place.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::FlockOperation;

use crate::dockerfile::Sharing;
use crate::layer::{self, Compression, LayerInfo};

/// The cache mounts of one root.
#[derive(Clone, Debug)]
pub struct CacheMounts {
    dir: PathBuf,
}

/// One instance of a cache mount, held for a step: the directory to mount and its lock.
#[derive(Debug)]
pub struct Lease {
    /// The instance's directory.
    pub path: PathBuf,
    /// True when this lease created the instance (it was prepared by `init`).
    pub created: bool,
    _lock: File,
}

/// What [`CacheMounts::list`] reports about one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    /// The mount's id (`<namespace>/<id>`).
    pub id: String,
    /// The instance number (0 unless `sharing=private` needed more).
    pub instance: u32,
    /// The instance's directory.
    pub path: PathBuf,
    /// Bytes of regular files in it.
    pub bytes: u64,
    /// When a step last used it.
    pub last_used: SystemTime,
}

fn key_of(id: &str) -> String {
    let digest = cache_core::digest::sha256(id.as_bytes());
    digest.digest()[..32].to_owned()
}

fn lock(file: &File, operation: FlockOperation) -> io::Result<bool> {
    loop {
        match rustix::fs::flock(file, operation) {
            Ok(()) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
            Err(errno) => return Err(errno.into()),
        }
    }
}

fn open_lock(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// Writes the contents of the cache mount directory `dir` as a layer tar (deterministic: the
/// same tree gives the same bytes, so an unchanged mount has the same digest) into a temporary
/// file in `tmp_dir`.
pub fn write_tar(
    dir: &Path,
    compression: Compression,
    tmp_dir: &Path,
) -> Result<(tempfile::NamedTempFile, LayerInfo), layer::Error> {
    let empty = tempfile::tempdir_in(tmp_dir).map_err(|err| layer::Error::Io {
        op: "create a temporary directory in",
        path: tmp_dir.to_owned(),
        source: err,
    })?;
    let before = layer::Snapshot::capture(empty.path())?;
    let changes = layer::diff(&before, dir)?;
    layer::write_layer_file(dir, &changes, compression, tmp_dir)
}

/// Fills the empty cache mount directory `dir` from a tar written by [`write_tar`]; nothing is
/// written outside `dir`.
pub fn fill(
    dir: &Path,
    reader: impl io::Read,
    media_type: &str,
    limits: &layer::LayerLimits,
) -> Result<(), layer::Error> {
    layer::apply_layer(reader, media_type, dir, limits).map(drop)
}

/// Removes everything inside `dir` (symlinks not followed), keeping `dir`.
pub fn clear(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Bytes of the regular files under `dir` (symlinks not followed).
pub fn dir_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

impl CacheMounts {
    /// The store in `dir` (created on first use).
    pub fn new(dir: impl Into<PathBuf>) -> CacheMounts {
        CacheMounts { dir: dir.into() }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether instance 0 of `id` exists (a step's `from=` seed is needed only when it does not).
    pub fn exists(&self, id: &str) -> bool {
        self.dir.join(key_of(id)).join("0").is_dir()
    }

    /// Whether instance 0 of `id` is missing or empty (an imported cache may fill it).
    pub fn is_empty(&self, id: &str) -> bool {
        let dir = self.dir.join(key_of(id)).join("0");
        std::fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none())
    }

    /// Takes an instance of cache mount `id` for a step, as `sharing` says; blocks while another
    /// build holds it for `locked`. A missing instance is made by `init` in an empty directory
    /// (seed, owner, mode) and then put in place.
    pub fn acquire(
        &self,
        id: &str,
        sharing: Sharing,
        init: &mut dyn FnMut(&Path) -> io::Result<()>,
    ) -> io::Result<Lease> {
        let mount_dir = self.dir.join(key_of(id));
        std::fs::create_dir_all(&mount_dir)?;
        let id_file = mount_dir.join("id");
        if !id_file.exists() {
            write_atomically(&id_file, id.as_bytes())?;
        }
        let mut instance = 0u32;
        let lock_file = loop {
            let file = open_lock(&mount_dir.join(format!("{instance}.lock")))?;
            let got = match sharing {
                Sharing::Shared => lock(&file, FlockOperation::LockShared)?,
                Sharing::Locked => lock(&file, FlockOperation::LockExclusive)?,
                Sharing::Private => lock(&file, FlockOperation::NonBlockingLockExclusive)?,
            };
            if got {
                break file;
            }
            instance += 1;
        };
        // The lock file's mtime records the last use (for pruning the least recently used).
        let _ = lock_file.set_modified(SystemTime::now());
        let path = mount_dir.join(instance.to_string());
        let mut created = false;
        if !path.is_dir() {
            let tmp = tempfile::Builder::new()
                .prefix(&format!("{instance}.new-"))
                .tempdir_in(&mount_dir)?;
            let fresh = tmp.path().join("d");
            std::fs::create_dir(&fresh)?;
            init(&fresh)?;
            match std::fs::rename(&fresh, &path) {
                Ok(()) => created = true,
                // Another shared user put it in place first: use theirs.
                Err(_) if path.is_dir() => {}
                Err(err) => return Err(err),
            }
        }
        Ok(Lease {
            path,
            created,
            _lock: lock_file,
        })
    }

    /// Every instance of every cache mount, least recently used first.
    pub fn list(&self) -> io::Result<Vec<MountInfo>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(err) => return Err(err),
        };
        for entry in entries {
            let mount_dir = entry?.path();
            let Ok(id) = std::fs::read_to_string(mount_dir.join("id")) else {
                continue;
            };
            for sub in std::fs::read_dir(&mount_dir)? {
                let sub = sub?;
                let Some(instance) = sub.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                let path = sub.path();
                if !path.is_dir() {
                    continue;
                }
                let last_used = std::fs::metadata(mount_dir.join(format!("{instance}.lock")))
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                out.push(MountInfo {
                    id: id.clone(),
                    instance,
                    bytes: dir_bytes(&path),
                    path,
                    last_used,
                });
            }
        }
        out.sort_by(|a, b| (a.last_used, &a.id, a.instance).cmp(&(b.last_used, &b.id, b.instance)));
        Ok(out)
    }

    /// Removes an instance unless a build holds it; returns whether it was removed.
    pub fn remove(&self, info: &MountInfo) -> io::Result<bool> {
        let mount_dir = self.dir.join(key_of(&info.id));
        let file = open_lock(&mount_dir.join(format!("{}.lock", info.instance)))?;
        if !lock(&file, FlockOperation::NonBlockingLockExclusive)? {
            return Ok(false);
        }
        // Renamed first, so that a crash mid-way never leaves a half-deleted instance in use.
        let doomed = mount_dir.join(format!("{}.removing", info.instance));
        match std::fs::rename(&info.path, &doomed) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(err),
        }
        make_writable(&doomed);
        std::fs::remove_dir_all(&doomed)?;
        Ok(true)
    }
}

/// Gives the owner write and search permission on every directory under `dir`, so that a tree a
/// build made read-only can be removed.
fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
    {
        if entry.file_type().is_dir()
            && let Ok(meta) = entry.metadata()
        {
            let mode = meta.permissions().mode() | 0o700;
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode));
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &Path) -> io::Result<()> {
        Ok(())
    }

    #[test]
    fn instances_follow_sharing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CacheMounts::new(dir.path().join("mounts"));
        let first = store
            .acquire("/go", Sharing::Shared, &mut none)
            .expect("acquire");
        assert!(first.created);
        std::fs::write(first.path.join("f"), "x").expect("write");
        // Shared: the same directory while the first holds it.
        let second = store
            .acquire("/go", Sharing::Shared, &mut none)
            .expect("acquire");
        assert_eq!(
            (second.path.clone(), second.created),
            (first.path.clone(), false)
        );
        // Private while shared users hold instance 0: a fresh instance.
        let private = store
            .acquire("/go", Sharing::Private, &mut |d| {
                std::fs::write(d.join("seed"), "s")
            })
            .expect("acquire");
        assert_ne!(private.path, first.path);
        assert!(private.created && private.path.join("seed").is_file());
        // In use: not removable.
        let listed = store.list().expect("list");
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|m| m.id == "/go"));
        assert!(!store.remove(&listed[0]).expect("remove"));
        drop((first, second, private));
        // Private with nobody holding instance 0 takes it.
        let again = store
            .acquire("/go", Sharing::Private, &mut none)
            .expect("acquire");
        assert!(again.path.join("f").is_file());
        drop(again);
        for info in store.list().expect("list") {
            assert!(store.remove(&info).expect("remove"));
        }
        assert!(store.list().expect("list").is_empty());
        assert!(!store.exists("/go"));
    }

    #[test]
    fn locked_waits_for_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CacheMounts::new(dir.path());
        let held = store
            .acquire("c", Sharing::Locked, &mut none)
            .expect("acquire");
        let (tx, rx) = std::sync::mpsc::channel();
        let other = store.clone();
        let waiter = std::thread::spawn(move || {
            let lease = other
                .acquire("c", Sharing::Locked, &mut none)
                .expect("acquire");
            tx.send(lease.path.clone()).expect("send");
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "the second locked user waits"
        );
        let path = held.path.clone();
        drop(held);
        assert_eq!(rx.recv().expect("acquired after release"), path);
        waiter.join().expect("joins");
    }
}
