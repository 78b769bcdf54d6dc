//! A build's scratch directory in `ROOT/tmp`, and the collection of those killed builds left.
//!
//! A build holds an exclusive `flock` on `ROOT/tmp/build-ID.lock` for its whole life and works in
//! `ROOT/tmp/build-ID`. Whoever can take that lock knows the build is gone: its directory (root
//! filesystems of every stage, possibly gigabytes) is deleted at once, under the lock, then the
//! lock file. Directories of older versions (`build-PID`, no lock file) go once no process has
//! that PID.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// The scratch directory of this build; its lock and directory are removed when dropped.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: File,
    /// Whether drop hands the directory to a background `buildcache` process.
    hand_over: bool,
}

impl WorkDir {
    /// Locks a new `ROOT/tmp/build-ID.lock` and names the directory beside it (created by the
    /// engine when it starts).
    pub fn create(root_dir: &Path) -> io::Result<WorkDir> {
        let tmp = root_dir.join("tmp");
        fs::create_dir_all(&tmp)?;
        let pid = std::process::id();
        for attempt in 0u32.. {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let name = format!("build-{pid}-{nanos:x}{attempt:x}");
            let lock_path = tmp.join(format!("{name}.lock"));
            let file = match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock_path)
            {
                Ok(file) => file,
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err),
            };
            match file.try_lock() {
                Ok(()) => {}
                // A collector saw the new file first and took it for a dead build's: it
                // deletes it; use another name.
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(err)) => return Err(err),
            }
            if !same_file(&file, &lock_path)? {
                continue;
            }
            return Ok(WorkDir {
                path: tmp.join(name),
                lock_path,
                _lock: file,
                hand_over: false,
            });
        }
        unreachable!("the loop only ends by returning")
    }

    /// Makes drop hand the directory to a background process of this executable, which must
    /// be `buildcache` (it runs `buildcache __remove-work-dir DIR LOCK`).
    pub fn hand_over_when_dropped(&mut self) {
        self.hand_over = true;
    }

    /// The directory the build works in.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    /// Hands the directory and its lock to a background process (`buildcache` again, with the
    /// hidden command `__remove-work-dir`) that deletes them after this process is gone:
    /// deleting a build's root filesystems takes seconds on disks that discard freed blocks,
    /// and the build's result need not wait for it. The lock passes as the child's stdin (an
    /// flock belongs to the open file, so the child holds it on), so no collector deletes
    /// the directory meanwhile. Without a child, the directory goes here.
    fn drop(&mut self) {
        if self.hand_over {
            match self.spawn_remover() {
                Ok(_) => return,
                Err(err) => tracing::debug!("removing {} here: {err}", self.path.display()),
            }
        }
        remove_handed_over(&self.path, &self.lock_path);
    }
}

impl WorkDir {
    /// Starts `buildcache __remove-work-dir DIR LOCK`, detached, with the lock as its stdin.
    fn spawn_remover(&self) -> io::Result<std::process::Child> {
        std::process::Command::new(std::env::current_exe()?)
            .arg(REMOVE_COMMAND)
            .arg(&self.path)
            .arg(&self.lock_path)
            .stdin(self._lock.try_clone()?)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
    }
}

/// The hidden command that removes a work directory handed over by [`WorkDir`]'s drop.
pub const REMOVE_COMMAND: &str = "__remove-work-dir";

/// `buildcache __remove-work-dir DIR LOCK`: removes what a build handed over, holding its
/// lock (this process's stdin) until both are gone.
pub fn remove_handed_over(dir: &Path, lock: &Path) {
    remove_work_dir(dir);
    let _ = fs::remove_file(lock);
}

/// Removes a build's work directory, after taking down overlays a killed build left mounted
/// there (a build whose process had its own mount namespace leaves none).
fn remove_work_dir(dir: &Path) {
    let _ = cache_build::layer::overlay::unmount_under(dir);
    let _ = fs::remove_dir_all(dir);
}

/// Whether the open `file` is still the file at `path`.
fn same_file(file: &File, path: &Path) -> io::Result<bool> {
    let open = file.metadata()?;
    match fs::metadata(path) {
        Ok(current) => Ok(current.dev() == open.dev() && current.ino() == open.ino()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

/// Deletes the scratch directories in `ROOT/tmp` of builds that are no longer running; returns
/// how many went. Errors are left for the next collection.
pub fn collect_dead(root_dir: &Path) -> usize {
    let tmp = root_dir.join("tmp");
    let Ok(entries) = fs::read_dir(&tmp) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let Some(rest) = name.strip_prefix("build-") else {
            continue;
        };
        if let Some(id) = rest.strip_suffix(".lock") {
            let Ok(file) = File::open(entry.path()) else {
                continue;
            };
            if file.try_lock().is_ok() {
                remove_work_dir(&tmp.join(format!("build-{id}")));
                let _ = fs::remove_file(entry.path());
                removed += 1;
            }
        } else if let Ok(pid) = rest.parse::<u32>()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            // A directory of a version without lock files, whose process is gone.
            remove_work_dir(&entry.path());
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "buildcache-work-dirs-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn only_dead_builds_lose_their_directory() {
        let root = temp_root("dead");
        let live = WorkDir::create(&root).unwrap();
        fs::create_dir_all(live.path().join("rootfs-1")).unwrap();
        // A killed build: its lock file stays, nobody holds it.
        let dead = root.join("tmp/build-1-dead");
        fs::create_dir_all(dead.join("rootfs-1")).unwrap();
        fs::write(dead.join("rootfs-1/big"), b"data").unwrap();
        fs::write(root.join("tmp/build-1-dead.lock"), b"").unwrap();
        // An older version's directory whose process is gone (PIDs stop below 2^22).
        let legacy = root.join("tmp/build-4294967294");
        fs::create_dir_all(&legacy).unwrap();
        // ... and one whose process runs (this one).
        let running = root.join(format!("tmp/build-{}", std::process::id()));
        fs::create_dir_all(&running).unwrap();
        assert_eq!(collect_dead(&root), 2);
        assert!(!dead.exists() && !root.join("tmp/build-1-dead.lock").exists());
        assert!(!legacy.exists());
        assert!(running.exists() && live.path().join("rootfs-1").exists());
        let (path, lock) = (live.path().to_owned(), live.lock_path.clone());
        // Not handed over (only the binary can take it): removed by drop itself.
        drop(live);
        assert!(!path.exists() && !lock.exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
