//! The exclusive lock on a layout's `index.json`, shared by exports and garbage collection.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cache_core::backend::Result;
use cache_core::{Error, ErrorKind};
use rustix::fs::FlockOperation;

use crate::error::parse_error;

/// Name of the lock file, as BuildKit's client names it.
pub(crate) const LOCK_FILE: &str = "index.json.lock";

/// An exclusive `flock` on `<dir>/index.json.lock`, released when dropped.
///
/// BuildKit's client takes the same lock (without waiting) around its `index.json` updates, so
/// holding it also keeps a concurrent `buildctl` export from rewriting the index. Like BuildKit,
/// the lock file is deleted on release; a waiter that locked a file which was deleted or replaced
/// meanwhile notices and locks the current one.
#[derive(Debug)]
pub struct IndexLock {
    _file: File,
    path: PathBuf,
}

impl IndexLock {
    /// The path of the lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the lock on the layout in `root`, creating `root` if needed, waiting up to `timeout`.
    pub(crate) fn acquire(root: &Path, timeout: Duration) -> Result<IndexLock> {
        fs::create_dir_all(root)
            .map_err(|err| parse_error("creating the cache directory", root, err))?;
        let path = root.join(LOCK_FILE);
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|err| parse_error("opening the lock file", &path, err))?;
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {
                    if same_file(&file, &path)? {
                        return Ok(IndexLock { _file: file, path });
                    }
                    // The file was unlinked or replaced while we waited: lock the current one.
                    continue;
                }
                Err(errno) if errno == rustix::io::Errno::WOULDBLOCK => {}
                Err(errno) => {
                    return Err(parse_error(
                        "locking",
                        &path,
                        std::io::Error::from_raw_os_error(errno.raw_os_error()),
                    ));
                }
            }
            drop(file);
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Unexpected,
                    format!(
                        "timed out after {}s waiting for the lock {}: another export or \
                         garbage collection of this cache directory is still running; retry \
                         when it has finished",
                        timeout.as_secs(),
                        path.display()
                    ),
                )
                .set_temporary(true));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

impl Drop for IndexLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock, so nobody can lock this inode after us and think
        // it holds the lock; waiters recheck the path. Failure leaves a harmless empty file.
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether the open `file` is still the file at `path`.
fn same_file(file: &File, path: &Path) -> Result<bool> {
    let open = file
        .metadata()
        .map_err(|err| parse_error("reading the metadata of", path, err))?;
    match fs::metadata(path) {
        Ok(current) => Ok(current.dev() == open.dev() && current.ino() == open.ino()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(parse_error("reading the metadata of", path, err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_waits_then_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = IndexLock::acquire(dir.path(), Duration::from_secs(1)).expect("first lock");
        let err = IndexLock::acquire(dir.path(), Duration::from_millis(100))
            .expect_err("the lock is held");
        assert!(err.is_temporary());
        assert!(err.to_string().contains("index.json.lock"), "{err}");
        drop(held);
        IndexLock::acquire(dir.path(), Duration::from_millis(100)).expect("lock after release");
    }

    #[test]
    fn waiter_gets_the_lock_when_the_holder_releases_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = IndexLock::acquire(dir.path(), Duration::from_secs(1)).expect("first lock");
        let root = dir.path().to_owned();
        let waiter = std::thread::spawn(move || IndexLock::acquire(&root, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        waiter.join().expect("no panic").expect("waiter locks");
    }

    #[test]
    fn deleted_lock_file_is_recreated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = IndexLock::acquire(dir.path(), Duration::from_secs(1)).expect("first lock");
        let root = dir.path().to_owned();
        let waiter = std::thread::spawn(move || IndexLock::acquire(&root, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        // BuildKit's client deletes the lock file after use, while still holding it.
        fs::remove_file(held.path()).expect("unlink");
        drop(held);
        let lock = waiter.join().expect("no panic").expect("waiter locks");
        assert!(lock.path().exists());
        drop(lock);
        assert!(
            !dir.path().join(LOCK_FILE).exists(),
            "the lock file is removed on release, as BuildKit does"
        );
    }
}
