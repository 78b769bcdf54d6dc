//! Path work inside a root filesystem: resolution confined to the root, mount-point creation and its undoing.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;

/// What a path must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A directory.
    Dir,
    /// A regular file (a mount point for a file bind mount).
    File,
}

/// Something this module created, with what is needed to undo it without a trace.
#[derive(Debug)]
pub(crate) struct Created {
    /// The parent directory, relative to the root (`"."` for the root itself).
    parent: String,
    /// The name inside the parent.
    name: String,
    kind: Kind,
    dev: u64,
    ino: u64,
    /// The parent's modification time before the creation.
    parent_mtime_before: Timespec,
    /// The parent's modification time right after the creation.
    parent_mtime_after: Timespec,
}

/// A root filesystem directory, opened once; every lookup stays inside it like `chroot` would.
#[derive(Debug)]
pub(crate) struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// The outcome of [`Root::ensure`].
#[derive(Debug)]
pub(crate) enum Ensured {
    /// The path exists (or was created); this is its location on the host.
    At(PathBuf),
    /// A component is a symbolic link pointing nowhere: nothing was created.
    DanglingSymlink,
}

fn mtime(stat: &rustix::fs::Stat) -> Timespec {
    Timespec {
        tv_sec: stat.st_mtime,
        tv_nsec: stat.st_mtime_nsec as _,
    }
}

fn components(rel: &str) -> Vec<&str> {
    rel.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect()
}

impl Root {
    /// Opens `path` (made absolute, symbolic links resolved) as a root filesystem.
    pub(crate) fn open(path: &Path) -> io::Result<Root> {
        let path = std::fs::canonicalize(path)?;
        let fd = rustix::fs::open(
            &path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root { fd, path })
    }

    /// The root's canonical host path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `rel` as the command would see it (`/` is the root, `..` and symbolic links stay inside).
    fn resolve(&self, rel: &str, flags: OFlags) -> io::Result<Option<OwnedFd>> {
        let rel = if components(rel).is_empty() {
            "."
        } else {
            rel.trim_start_matches('/')
        };
        match rustix::fs::openat2(
            &self.fd,
            rel,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) => Ok(None),
            Err(errno) => Err(errno.into()),
        }
    }

    /// Reads a file of the root filesystem; `None` if it does not exist.
    pub(crate) fn read_to_string(&self, rel: &str) -> io::Result<Option<String>> {
        let Some(fd) = self.resolve(rel, OFlags::RDONLY)? else {
            return Ok(None);
        };
        let mut text = String::new();
        File::from(fd).read_to_string(&mut text)?;
        Ok(Some(text))
    }

    /// Whether `rel` exists inside the root (following symbolic links inside the root).
    pub(crate) fn exists(&self, rel: &str) -> bool {
        matches!(self.resolve(rel, OFlags::PATH), Ok(Some(_)))
    }

    /// Makes sure `rel` exists as `kind`, creating missing directories (mode 0755) and the final file or
    /// directory, like `mkdir -p`; returns where it is on the host.
    ///
    /// Everything created is appended to `created` so that [`Root::undo`] can remove it again.
    pub(crate) fn ensure(
        &self,
        rel: &str,
        kind: Kind,
        created: &mut Vec<Created>,
    ) -> io::Result<Ensured> {
        let parts = components(rel);
        let mut parent = self
            .resolve(".", OFlags::PATH | OFlags::DIRECTORY)?
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "the root directory disappeared")
            })?;
        let mut parent_rel = String::from(".");
        for (idx, name) in parts.iter().enumerate() {
            let sub_rel = format!("{parent_rel}/{name}");
            let is_last = idx + 1 == parts.len();
            let want = if is_last { kind } else { Kind::Dir };
            let existing = self.resolve(&sub_rel, OFlags::PATH)?;
            let fd = match existing {
                Some(fd) => fd,
                None => {
                    match rustix::fs::statat(&parent, *name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink => {
                            return Ok(Ensured::DanglingSymlink);
                        }
                        _ => {}
                    }
                    let before = mtime(&rustix::fs::fstat(&parent)?);
                    let fd = match want {
                        Kind::Dir => {
                            rustix::fs::mkdirat(&parent, *name, Mode::from_raw_mode(0o755))?;
                            let fd = rustix::fs::openat(
                                &parent,
                                *name,
                                OFlags::RDONLY
                                    | OFlags::DIRECTORY
                                    | OFlags::NOFOLLOW
                                    | OFlags::CLOEXEC,
                                Mode::empty(),
                            )?;
                            // The mode is part of the layer: do not let the umask decide it.
                            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))?;
                            fd
                        }
                        Kind::File => {
                            let fd = rustix::fs::openat(
                                &parent,
                                *name,
                                OFlags::WRONLY
                                    | OFlags::CREATE
                                    | OFlags::EXCL
                                    | OFlags::NOFOLLOW
                                    | OFlags::CLOEXEC,
                                Mode::from_raw_mode(0o644),
                            )?;
                            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o644))?;
                            fd
                        }
                    };
                    let stat = rustix::fs::fstat(&fd)?;
                    created.push(Created {
                        parent: parent_rel.clone(),
                        name: (*name).to_owned(),
                        kind: want,
                        dev: stat.st_dev,
                        ino: stat.st_ino,
                        parent_mtime_before: before,
                        parent_mtime_after: mtime(&rustix::fs::fstat(&parent)?),
                    });
                    fd
                }
            };
            if !is_last {
                let stat = rustix::fs::fstat(&fd)?;
                if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("/{} is not a directory", sub_rel.trim_start_matches("./")),
                    ));
                }
                parent = fd;
            } else {
                return Ok(Ensured::At(host_path(&fd)?));
            }
            parent_rel = sub_rel;
        }
        Ok(Ensured::At(host_path(&parent)?))
    }

    /// Removes what [`Root::ensure`] created if it is still unused: empty directories and empty files
    /// that are the very ones created.
    ///
    /// The parent's modification time is put back when nothing else changed it, so that a run that
    /// wrote nothing leaves an identical tree. Returns the paths that had to stay.
    pub(crate) fn undo(&self, created: &[Created]) -> Vec<String> {
        let mut kept = Vec::new();
        for item in created.iter().rev() {
            let shown = format!("{}/{}", item.parent, item.name)
                .trim_start_matches('.')
                .to_owned();
            match self.undo_one(item) {
                Ok(true) => {}
                Ok(false) => kept.push(shown),
                Err(err) => {
                    tracing::warn!(path = %shown, error = %err, "could not remove a mount point created for RUN");
                    kept.push(shown);
                }
            }
        }
        kept
    }

    fn undo_one(&self, item: &Created) -> io::Result<bool> {
        let Some(parent) = self.resolve(&item.parent, OFlags::RDONLY | OFlags::DIRECTORY)? else {
            return Ok(false);
        };
        let stat = match rustix::fs::statat(&parent, item.name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
        {
            Ok(stat) => stat,
            Err(Errno::NOENT) => return Ok(false),
            Err(errno) => return Err(errno.into()),
        };
        if stat.st_dev != item.dev || stat.st_ino != item.ino {
            return Ok(false);
        }
        // Our creation set the parent's time to `parent_mtime_after`; if it still shows that, the
        // command did not change the parent and the removal may put the earlier time back.
        let untouched = mtime(&rustix::fs::fstat(&parent)?) == item.parent_mtime_after;
        let file_type = FileType::from_raw_mode(stat.st_mode);
        match item.kind {
            Kind::Dir if file_type == FileType::Directory => {
                match rustix::fs::unlinkat(&parent, item.name.as_str(), AtFlags::REMOVEDIR) {
                    Ok(()) => {}
                    Err(Errno::NOTEMPTY | Errno::EXIST | Errno::BUSY) => return Ok(false),
                    Err(errno) => return Err(errno.into()),
                }
            }
            Kind::File if file_type == FileType::RegularFile && stat.st_size == 0 => {
                rustix::fs::unlinkat(&parent, item.name.as_str(), AtFlags::empty())?;
            }
            _ => return Ok(false),
        }
        if untouched {
            let times = Timestamps {
                last_access: Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_OMIT,
                },
                last_modification: item.parent_mtime_before,
            };
            rustix::fs::futimens(&parent, &times)?;
        }
        Ok(true)
    }
}

/// The host path of an open file, as the kernel names it.
fn host_path(fd: &impl AsFd) -> io::Result<PathBuf> {
    let link = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    std::fs::read_link(link)
}
