//! Filesystem operations confined to a root directory (openat2 RESOLVE_IN_ROOT, no following).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::Error;

/// A directory that extraction must not leave.
pub(crate) struct Root {
    fd: OwnedFd,
    /// The root as given, for error messages only.
    pub(crate) path: PathBuf,
}

/// Turns an archive entry name into a path relative to the root.
///
/// Leading `/` and `.` components are dropped (absolute names are taken relative to the root,
/// as every tar implementation does); a `..` component is refused. An empty result means the
/// root itself.
pub(crate) fn clean_name(name: &[u8]) -> Result<PathBuf, Error> {
    if name.contains(&0) {
        return Err(Error::refused(name, "the name contains a NUL byte"));
    }
    let mut out = PathBuf::new();
    for comp in Path::new(OsStr::from_bytes(name)).components() {
        match comp {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                return Err(Error::refused(
                    name,
                    "`..` components could write outside the root",
                ));
            }
            Component::Normal(part) => out.push(part),
            Component::Prefix(_) => {
                return Err(Error::refused(name, "unexpected path prefix"));
            }
        }
    }
    Ok(out)
}

/// Splits a cleaned, non-empty relative path into parent and final name.
pub(crate) fn split(rel: &Path) -> (&Path, &OsStr) {
    let name = rel.file_name().unwrap_or(rel.as_os_str());
    let parent = rel.parent().unwrap_or(Path::new(""));
    (parent, name)
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
}

fn dir_path_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC
}

impl Root {
    /// Opens `path` as the confinement root.
    pub(crate) fn open(path: &Path) -> Result<Root, Error> {
        let fd = rustix::fs::open(path, dir_path_flags(), Mode::empty())
            .map_err(|err| Error::io("open root directory", path, err.into()))?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// A root made from an already opened directory; `path` is for error messages.
    pub(crate) fn from_fd(fd: OwnedFd, path: PathBuf) -> Root {
        Root { fd, path }
    }

    /// The root directory itself.
    #[cfg(test)]
    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Opens the directory `rel` (resolved inside the root; symlinks are followed but can never
    /// leave the root). Returns `Ok(None)` if it does not exist and `create` is false; with
    /// `create`, missing directories are made with mode 0755.
    pub(crate) fn open_dir(&self, rel: &Path, create: bool) -> Result<Option<OwnedFd>, Error> {
        match self.resolve(rel) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::NOENT) if create => {}
            Err(Errno::NOENT) => return Ok(None),
            Err(err) => return Err(Error::io("open directory", rel, err.into())),
        }
        // Slow path: find the deepest prefix that resolves (existence is monotone in the
        // prefix length: a binary search, so a deep path costs O(depth log depth) lookups, not
        // one walk from the root per component), then create the rest one by one, each inside
        // the directory the previous one resolved to.
        let parts: Vec<&OsStr> = rel
            .components()
            .filter_map(|comp| match comp {
                Component::Normal(part) => Some(part),
                _ => None,
            })
            .collect();
        let prefix_of = |n: usize| parts[..n].iter().collect::<PathBuf>();
        // `cur` is always the directory of the first `found` components.
        let (mut found, mut missing) = (0, parts.len());
        let mut cur = self
            .resolve(Path::new(""))
            .map_err(|err| Error::io("open directory", &self.path, err.into()))?;
        while missing - found > 1 {
            let mid = found + (missing - found) / 2;
            match self.resolve(&prefix_of(mid)) {
                Ok(fd) => {
                    found = mid;
                    cur = fd;
                }
                Err(Errno::NOENT) => missing = mid,
                Err(err) => return Err(Error::io("open directory", prefix_of(mid), err.into())),
            }
        }
        for (i, part) in parts.iter().enumerate().skip(found) {
            match rustix::fs::mkdirat(&cur, *part, Mode::from_raw_mode(0o755)) {
                Ok(()) => {}
                Err(Errno::EXIST) => {
                    // Something is there after all (a symlink leading nowhere, a race):
                    // resolve it inside the root as a whole.
                    let prefix = prefix_of(i + 1);
                    cur = self.resolve(&prefix).map_err(|err| {
                        let err = if err == Errno::NOENT {
                            std::io::Error::other(
                                "it is a symbolic link that leads nowhere inside the root (links pointing outside the root are never followed)",
                            )
                        } else {
                            err.into()
                        };
                        Error::io("create directory", &prefix, err)
                    })?;
                    continue;
                }
                Err(err) => {
                    return Err(Error::io("create directory", prefix_of(i + 1), err.into()));
                }
            }
            // A directory this call just made: no symlink to follow.
            cur = rustix::fs::openat(
                &cur,
                *part,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|err| Error::io("open directory", prefix_of(i + 1), err.into()))?;
        }
        Ok(Some(cur))
    }

    /// Resolves a directory inside the root to an `O_PATH` descriptor.
    fn resolve(&self, rel: &Path) -> Result<OwnedFd, Errno> {
        let target: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        loop {
            match rustix::fs::openat2(
                &self.fd,
                target,
                dir_path_flags(),
                Mode::empty(),
                resolve_flags(),
            ) {
                // The kernel asks for a retry when a rename raced with the lookup.
                Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
                Err(Errno::NOSYS) => return self.resolve_without_openat2(rel),
                other => return other,
            }
        }
    }

    /// For kernels older than 5.6: walk component by component and refuse any symlink.
    fn resolve_without_openat2(&self, rel: &Path) -> Result<OwnedFd, Errno> {
        let mut cur = rustix::fs::openat(&self.fd, ".", dir_path_flags(), Mode::empty())?;
        for comp in rel.components() {
            let Component::Normal(part) = comp else {
                continue;
            };
            cur = rustix::fs::openat(
                &cur,
                part,
                dir_path_flags() | OFlags::NOFOLLOW,
                Mode::empty(),
            )
            .map_err(|err| {
                if err == Errno::LOOP {
                    Errno::NOTDIR
                } else {
                    err
                }
            })?;
        }
        Ok(cur)
    }
}

/// `lstat` of `name` in `dir`; `None` if it does not exist.
pub(crate) fn stat_at(dir: impl AsFd, name: &OsStr) -> Result<Option<rustix::fs::Stat>, Errno> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(err) => Err(err),
    }
}

pub(crate) fn file_type(st: &rustix::fs::Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Creates the regular file `name` in `dir` for writing, with mode 0600; fails with `EEXIST`
/// if anything (a symlink included) is there.
pub(crate) fn create_new_file(dir: impl AsFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
}

/// Opens a directory entry for listing, never following a symlink.
pub(crate) fn open_dir_nofollow(dir: impl AsFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Names in a directory (without `.` and `..`).
pub(crate) fn list_dir(dir: &OwnedFd) -> Result<Vec<OsString>, Errno> {
    // Reopen for reading: `dir` may be an `O_PATH` descriptor, which cannot be listed.
    let readable = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::new(readable)? {
        let entry = entry?;
        let bytes = entry.file_name().to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        names.push(OsString::from_vec(bytes.to_vec()));
    }
    names.sort();
    Ok(names)
}

/// Removes `name` in `dir` and, if it is a directory, everything below it, without following
/// symlinks. A missing entry is not an error.
pub(crate) fn remove_all_at(dir: &OwnedFd, name: &OsStr) -> Result<(), Errno> {
    let Some(st) = stat_at(dir, name)? else {
        return Ok(());
    };
    if file_type(&st) == FileType::Directory {
        let sub = open_dir_nofollow(dir, name)?;
        for child in list_dir(&sub)? {
            remove_all_at(&sub, &child)?;
        }
        match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(err) => Err(err),
        }
    } else {
        match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_name_confines_absolute_and_refuses_dotdot() {
        assert_eq!(
            clean_name(b"/abs/path").expect("ok"),
            PathBuf::from("abs/path")
        );
        assert_eq!(
            clean_name(b"./a//b/./c/").expect("ok"),
            PathBuf::from("a/b/c")
        );
        assert_eq!(clean_name(b"./").expect("ok"), PathBuf::new());
        assert!(matches!(
            clean_name(b"../escape"),
            Err(Error::Refused { .. })
        ));
        assert!(matches!(
            clean_name(b"a/../../b"),
            Err(Error::Refused { .. })
        ));
    }

    #[test]
    fn open_dir_confines_symlinks_to_the_root() {
        let outer = tempfile::tempdir().expect("tempdir");
        let root_path = outer.path().join("root");
        std::fs::create_dir(&root_path).expect("mkdir");
        std::os::unix::fs::symlink("../..", root_path.join("up")).expect("symlink");
        let root = Root::open(&root_path).expect("open");
        let fd = root
            .open_dir(Path::new("up/made"), true)
            .expect("open")
            .expect("created");
        // `up` resolves to the root itself, so the directory is created inside it.
        assert!(root_path.join("made").is_dir());
        assert!(!outer.path().join("made").exists());
        drop(fd);
    }

    #[test]
    fn remove_all_does_not_follow_symlinks() {
        let outer = tempfile::tempdir().expect("tempdir");
        let victim = outer.path().join("victim");
        std::fs::create_dir(&victim).expect("mkdir");
        std::fs::write(victim.join("f"), b"x").expect("write");
        let root_path = outer.path().join("root");
        std::fs::create_dir_all(root_path.join("d")).expect("mkdir");
        std::os::unix::fs::symlink(&victim, root_path.join("d/link")).expect("symlink");
        let root = Root::open(&root_path).expect("open");
        remove_all_at(root.fd(), OsStr::new("d")).expect("remove");
        assert!(!root_path.join("d").exists());
        assert!(victim.join("f").exists());
    }
}
