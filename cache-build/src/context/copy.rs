//! Copying a [`Selection`] into a stage root with Docker's COPY/ADD rules, confined to the root.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::Error;
use super::select::{
    EntryKind, Match, SelectedEntry, Selection, clean_components, resolve_for_create,
};

/// Options of one COPY/ADD.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyOptions {
    /// `--chown`: `uid`, `uid:gid`, `name` or `name:group` (names looked up in the destination
    /// root's `/etc/passwd` and `/etc/group`). Without a group the gid equals the uid, as Docker
    /// documents. `None`: copies are owned by 0:0.
    pub chown: Option<String>,
    /// `--chmod`: mode bits for every copied file and directory (not symlinks).
    pub chmod: Option<u32>,
    /// ADD: a local tar archive source (plain or compressed, recognised by content) is
    /// extracted at the destination directory instead of being copied.
    pub extract_archives: bool,
    /// The stage's WORKDIR (absolute), against which a relative destination is resolved.
    pub workdir: String,
}

/// What [`copy_into`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Regular files written.
    pub n_files: u64,
    /// Directories created or updated (not counting created parents of the destination).
    pub n_dirs: u64,
    /// Symlinks created.
    pub n_symlinks: u64,
    /// Fifos and device nodes created.
    pub n_special: u64,
    /// Bytes of file content written.
    pub n_bytes: u64,
    /// ADD archives extracted.
    pub n_archives: u64,
}

/// Copies `selection` (selected from `src_root`) to `dest` inside `root` with Docker's rules.
///
/// - `dest` is a directory when it ends with `/` (or is `.`), when several entries are copied
///   (several sources or a wildcard matching several paths), when a source is a directory, or
///   when it already is a directory in `root`; otherwise the single source file is written at
///   `dest` itself.
/// - A directory source copies its contents, not itself. Missing parents are created with mode
///   0755, owned by the `--chown` owner if given (else by root).
/// - Files keep their mode (unless `chmod`) and mtime; the owner is 0:0 unless `chown`;
///   symlinks are copied as symlinks; an existing file at a target path is replaced.
/// - Nothing is written outside `root`: symlinks in destination paths resolve as if `root` were
///   `/`, and sources are read through `src_root` the same way.
///
/// Errors name the path: a `--chown` that does not resolve, a directory in the way of a file
/// (or the other way round), an I/O failure, a failed archive extraction.
pub fn copy_into(
    selection: &Selection,
    src_root: &Path,
    root: &Path,
    dest: &str,
    options: &CopyOptions,
) -> Result<CopyStats, Error> {
    let root_fd = open_root(root)?;
    let src_fd = open_root(src_root)?;
    let owner = match &options.chown {
        Some(spec) => Some(resolve_chown(&root_fd, spec)?),
        None => None,
    };
    let is_root_user = rustix::process::geteuid().is_root();
    // Without --chown, copies belong to root. Unprivileged, files simply belong to the caller
    // (mapped to root inside a user namespace), so nothing needs changing.
    let want_owner = owner.or(if is_root_user { Some((0, 0)) } else { None });

    let joined = if dest.starts_with('/') {
        dest.to_string()
    } else {
        format!("{}/{}", options.workdir.trim_end_matches('/'), dest)
    };
    let dest_rel: PathBuf = clean_components(&joined).iter().collect();
    let last_raw = dest.rsplit('/').next().unwrap_or("");
    let says_dir = dest.is_empty() || dest.ends_with('/') || last_raw == "." || last_raw == "..";
    let n_matches: usize = selection.sources.iter().map(|s| s.matches.len()).sum();
    let any_dir = selection
        .sources
        .iter()
        .flat_map(|s| &s.matches)
        .any(Match::is_dir);
    let exists_as_dir = open_in_root(&root_fd, &dest_rel).is_ok();
    let as_dir =
        says_dir || n_matches > 1 || any_dir || exists_as_dir || dest_rel.as_os_str().is_empty();

    let mut copier = Copier {
        root,
        root_fd: &root_fd,
        src_root,
        src_fd: &src_fd,
        options,
        want_owner,
        stats: CopyStats::default(),
    };
    let mut dest_dir: Option<OwnedFd> = None;
    for source in &selection.sources {
        for found in &source.matches {
            if options.extract_archives && found.entries[0].kind == EntryKind::File {
                let extracted = crate::layer::extract_archive(&found.path, root, &dest_rel)
                    .map_err(|err| Error::Extract {
                        archive: found.named.clone(),
                        source: Box::new(err),
                    })?;
                if extracted {
                    copier.stats.n_archives += 1;
                    continue;
                }
            }
            if as_dir {
                if dest_dir.is_none() {
                    dest_dir = Some(copier.mkdir_p(&dest_rel)?);
                }
                let dir = dest_dir.as_ref().expect("set above");
                if found.is_dir() {
                    copier.copy_tree(found, dir, &dest_rel)?;
                } else {
                    let name = found.named.file_name().unwrap_or(OsStr::new("."));
                    copier.create_leaf(
                        dir,
                        name,
                        &dest_rel.join(name),
                        found,
                        &found.entries[0],
                    )?;
                }
            } else {
                let parent_rel = dest_rel.parent().unwrap_or(Path::new(""));
                let name = dest_rel
                    .file_name()
                    .expect("a non-root destination has a final name");
                let parent = copier.mkdir_p(parent_rel)?;
                copier.create_leaf(&parent, name, &dest_rel, found, &found.entries[0])?;
            }
        }
    }
    Ok(copier.stats)
}

/// State of one [`copy_into`].
struct Copier<'a> {
    root: &'a Path,
    root_fd: &'a OwnedFd,
    src_root: &'a Path,
    src_fd: &'a OwnedFd,
    options: &'a CopyOptions,
    want_owner: Option<(u32, u32)>,
    stats: CopyStats,
}

/// A directory being filled during [`Copier::copy_tree`]: its path relative to the match, its
/// descriptor and the entry whose mode and mtime it gets once its children are written.
struct Frame<'e> {
    rel: PathBuf,
    fd: OwnedFd,
    dest: PathBuf,
    entry: Option<&'e SelectedEntry>,
}

impl Copier<'_> {
    /// A destination path for messages: `/` plus the path inside the root.
    fn show(&self, dest: &Path) -> PathBuf {
        Path::new("/").join(dest)
    }

    fn io_dest(&self, op: &'static str, dest: &Path, err: impl Into<std::io::Error>) -> Error {
        Error::io(op, self.root.join(dest), err)
    }

    /// Opens the directory `rel` inside the root, creating missing components (mode 0755,
    /// owned by the copy's owner).
    fn mkdir_p(&self, rel: &Path) -> Result<OwnedFd, Error> {
        match open_in_root(self.root_fd, rel) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(Errno::NOTDIR) => return Err(self.not_a_dir(rel)),
            Err(err) => return Err(self.io_dest("open directory", rel, err)),
        }
        // Follow symlinks (also dangling ones) inside the root to find the directories to make,
        // as `mkdir -p` in a chroot would; every step below is still confined by the kernel.
        let comps: Vec<std::ffi::OsString> = rel.iter().map(OsStr::to_os_string).collect();
        let rel = &resolve_for_create(self.root, &comps)
            .map_err(|err| self.io_dest("resolve", rel, err))?;
        match open_in_root(self.root_fd, rel) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(Errno::NOTDIR) => return Err(self.not_a_dir(rel)),
            Err(err) => return Err(self.io_dest("open directory", rel, err)),
        }
        let mut cur = open_in_root(self.root_fd, Path::new(""))
            .map_err(|err| self.io_dest("open", Path::new(""), err))?;
        let mut prefix = PathBuf::new();
        for comp in rel.iter() {
            prefix.push(comp);
            match open_in_root(self.root_fd, &prefix) {
                Ok(fd) => {
                    cur = fd;
                    continue;
                }
                Err(Errno::NOENT) => {}
                Err(Errno::NOTDIR) => return Err(self.not_a_dir(&prefix)),
                Err(err) => return Err(self.io_dest("open directory", &prefix, err)),
            }
            match rustix::fs::mkdirat(&cur, comp, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(err) => return Err(self.io_dest("create directory", &prefix, err)),
            }
            let fd = open_in_root(self.root_fd, &prefix).map_err(|err| {
                let err: std::io::Error = if err == Errno::NOENT {
                    std::io::Error::other("it is a dangling symbolic link")
                } else {
                    err.into()
                };
                self.io_dest("create directory", &prefix, err)
            })?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))
                .map_err(|err| self.io_dest("chmod", &prefix, err))?;
            self.set_owner_fd(&fd, &prefix)?;
            cur = fd;
        }
        Ok(cur)
    }

    fn not_a_dir(&self, rel: &Path) -> Error {
        Error::Conflict {
            source_path: PathBuf::from("(destination)"),
            dest: self.show(rel),
            reason: "a part of the destination path exists and is not a directory".into(),
        }
    }

    /// Changes the owner of an open entry to the wanted one if it differs.
    fn set_owner_fd(&self, fd: &OwnedFd, dest: &Path) -> Result<(), Error> {
        let Some((uid, gid)) = self.want_owner else {
            return Ok(());
        };
        let st = rustix::fs::fstat(fd).map_err(|err| self.io_dest("stat", dest, err))?;
        if st.st_uid != uid || st.st_gid != gid {
            rustix::fs::fchown(fd, Some(uid_of(uid)), Some(gid_of(gid)))
                .map_err(|err| self.io_dest("chown", dest, err))?;
        }
        Ok(())
    }

    /// Changes the owner of `name` in `dir` without following a symlink.
    fn set_owner_at(&self, dir: &OwnedFd, name: &OsStr, dest: &Path) -> Result<(), Error> {
        let Some((uid, gid)) = self.want_owner else {
            return Ok(());
        };
        let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|err| self.io_dest("stat", dest, err))?;
        if st.st_uid != uid || st.st_gid != gid {
            rustix::fs::chownat(
                dir,
                name,
                Some(uid_of(uid)),
                Some(gid_of(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|err| self.io_dest("chown", dest, err))?;
        }
        Ok(())
    }

    fn mode_for(&self, entry: &SelectedEntry) -> Mode {
        Mode::from_raw_mode(self.options.chmod.unwrap_or(entry.mode) & 0o7777)
    }

    /// Copies the contents of the directory match `found` into `dir` (`dest` inside the root).
    fn copy_tree(&mut self, found: &Match, dir: &OwnedFd, dest: &Path) -> Result<(), Error> {
        let top = dir
            .try_clone()
            .map_err(|err| self.io_dest("open directory", dest, err))?;
        let mut stack: Vec<Frame<'_>> = vec![Frame {
            rel: PathBuf::new(),
            fd: top,
            dest: dest.to_path_buf(),
            entry: None,
        }];
        for entry in &found.entries[1..] {
            let parent_rel = entry.rel.parent().unwrap_or(Path::new(""));
            while stack.last().is_some_and(|frame| frame.rel != parent_rel) {
                let frame = stack.pop().expect("checked non-empty");
                self.finish_dir(&frame)?;
            }
            let Some(parent) = stack.last() else {
                return Err(Error::io(
                    "copy",
                    found.path.join(&entry.rel),
                    std::io::Error::other("selection entries are out of order"),
                ));
            };
            let name = entry
                .rel
                .file_name()
                .expect("entries below a match have names");
            let entry_dest = parent.dest.join(name);
            if entry.kind == EntryKind::Dir {
                let fd = self.make_dir(
                    &parent.fd,
                    name,
                    &entry_dest,
                    &found.resolved.join(&entry.rel),
                )?;
                stack.push(Frame {
                    rel: entry.rel.clone(),
                    fd,
                    dest: entry_dest,
                    entry: Some(entry),
                });
            } else {
                self.create_leaf(&parent.fd, name, &entry_dest, found, entry)?;
            }
        }
        while let Some(frame) = stack.pop() {
            self.finish_dir(&frame)?;
        }
        Ok(())
    }

    /// Creates (or reuses) the directory `name` in `parent` and returns it open.
    fn make_dir(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        dest: &Path,
        src_rel: &Path,
    ) -> Result<OwnedFd, Error> {
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
            Ok(_) => {
                return Err(Error::Conflict {
                    source_path: src_rel.to_path_buf(),
                    dest: self.show(dest),
                    reason: "a non-directory is in the way of a directory".into(),
                });
            }
            Err(Errno::NOENT) => {
                // Created owner-only; the real mode is set once the children are written.
                rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
                    .map_err(|err| self.io_dest("create directory", dest, err))?;
            }
            Err(err) => return Err(self.io_dest("stat", dest, err)),
        }
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|err| self.io_dest("open directory", dest, err))?;
        self.set_owner_fd(&fd, dest)?;
        self.stats.n_dirs += 1;
        Ok(fd)
    }

    /// Applies a copied directory's mode and mtime after its children are written.
    fn finish_dir(&self, frame: &Frame<'_>) -> Result<(), Error> {
        let Some(entry) = frame.entry else {
            return Ok(());
        };
        rustix::fs::fchmod(&frame.fd, self.mode_for(entry))
            .map_err(|err| self.io_dest("chmod", &frame.dest, err))?;
        rustix::fs::futimens(&frame.fd, &timestamps(entry))
            .map_err(|err| self.io_dest("set times of", &frame.dest, err))?;
        Ok(())
    }

    /// Writes the non-directory `entry` of `found` as `name` in `parent` (`dest` in the root),
    /// replacing an existing non-directory.
    fn create_leaf(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        dest: &Path,
        found: &Match,
        entry: &SelectedEntry,
    ) -> Result<(), Error> {
        let src_rel = found.resolved.join(&entry.rel);
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(Error::Conflict {
                    source_path: src_rel,
                    dest: self.show(dest),
                    reason: "a directory is in the way of a file; copy into it by ending the destination with `/`".into(),
                });
            }
            Ok(_) => rustix::fs::unlinkat(parent, name, AtFlags::empty())
                .map_err(|err| self.io_dest("replace", dest, err))?,
            Err(Errno::NOENT) => {}
            Err(err) => return Err(self.io_dest("stat", dest, err)),
        }
        match entry.kind {
            EntryKind::File => {
                let src = rustix::fs::openat2(
                    self.src_fd,
                    if src_rel.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        &src_rel
                    },
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
                )
                .map_err(|err| Error::io("open source", self.src_root.join(&src_rel), err))?;
                let out = rustix::fs::openat(
                    parent,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|err| self.io_dest("create", dest, err))?;
                let mut src_file = File::from(src);
                let mut out_file = File::from(out);
                let n_bytes = std::io::copy(&mut src_file, &mut out_file)
                    .map_err(|err| Error::io("copy", self.src_root.join(&src_rel), err))?;
                let out: OwnedFd = out_file.into();
                self.set_owner_fd(&out, dest)?;
                rustix::fs::fchmod(&out, self.mode_for(entry))
                    .map_err(|err| self.io_dest("chmod", dest, err))?;
                rustix::fs::futimens(&out, &timestamps(entry))
                    .map_err(|err| self.io_dest("set times of", dest, err))?;
                self.stats.n_files += 1;
                self.stats.n_bytes += n_bytes;
            }
            EntryKind::Symlink => {
                let target = entry.link_target.as_deref().unwrap_or(Path::new(""));
                rustix::fs::symlinkat(target, parent, name)
                    .map_err(|err| self.io_dest("create symlink", dest, err))?;
                self.set_owner_at(parent, name, dest)?;
                rustix::fs::utimensat(parent, name, &timestamps(entry), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|err| self.io_dest("set times of", dest, err))?;
                self.stats.n_symlinks += 1;
            }
            EntryKind::Fifo | EntryKind::CharDevice | EntryKind::BlockDevice => {
                let file_type = match entry.kind {
                    EntryKind::Fifo => FileType::Fifo,
                    EntryKind::CharDevice => FileType::CharacterDevice,
                    _ => FileType::BlockDevice,
                };
                rustix::fs::mknodat(
                    parent,
                    name,
                    file_type,
                    Mode::from_raw_mode(0o600),
                    entry.rdev,
                )
                .map_err(|err| self.io_dest("create", dest, err))?;
                self.set_owner_at(parent, name, dest)?;
                rustix::fs::chmodat(parent, name, self.mode_for(entry), AtFlags::empty())
                    .map_err(|err| self.io_dest("chmod", dest, err))?;
                rustix::fs::utimensat(parent, name, &timestamps(entry), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|err| self.io_dest("set times of", dest, err))?;
                self.stats.n_special += 1;
            }
            EntryKind::Dir => {
                // Directories are handled by `copy_tree`; a directory match never gets here.
                let fd = self.make_dir(parent, name, dest, &src_rel)?;
                let frame = Frame {
                    rel: PathBuf::new(),
                    fd,
                    dest: dest.to_path_buf(),
                    entry: Some(entry),
                };
                self.finish_dir(&frame)?;
            }
        }
        Ok(())
    }
}

fn uid_of(uid: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(uid)
}

fn gid_of(gid: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(gid)
}

fn timestamps(entry: &SelectedEntry) -> Timestamps {
    let time = Timespec {
        tv_sec: entry.mtime_sec,
        tv_nsec: i64::from(entry.mtime_nsec),
    };
    Timestamps {
        last_access: time,
        last_modification: time,
    }
}

fn open_root(path: &Path) -> Result<OwnedFd, Error> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|err| Error::io("open directory", path, err))
}

/// Opens the directory `rel` inside `root_fd`, resolving symlinks as if it were `/`.
fn open_in_root(root_fd: &OwnedFd, rel: &Path) -> Result<OwnedFd, Errno> {
    let target = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    loop {
        match rustix::fs::openat2(
            root_fd.as_fd(),
            target,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            // The kernel asks for a retry when a rename raced with the lookup.
            Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}

/// Reads a file inside the root (resolved as if the root were `/`); `None` if missing.
fn read_in_root(root_fd: &OwnedFd, rel: &str) -> Result<Option<String>, Errno> {
    let fd = match rustix::fs::openat2(
        root_fd.as_fd(),
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut text = Vec::new();
    File::from(fd)
        .read_to_end(&mut text)
        .map_err(|err| Errno::from_io_error(&err).unwrap_or(Errno::IO))?;
    Ok(Some(String::from_utf8_lossy(&text).into_owned()))
}

/// Looks `name` up in a passwd/group style file: the third field of the line whose first field
/// is `name`.
fn lookup_id(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        fields.nth(1)?.trim().parse().ok()
    })
}

/// Resolves a `--chown` value to numeric ids using the destination root's user database.
fn resolve_chown(root_fd: &OwnedFd, spec: &str) -> Result<(u32, u32), Error> {
    let err = |reason: String| Error::Chown {
        spec: spec.to_string(),
        reason,
    };
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(err(
            "expected `user`, `user:group`, `uid` or `uid:gid`".into()
        ));
    }
    let lookup = |file: &str, name: &str, what: &str| -> Result<u32, Error> {
        if let Ok(id) = name.parse::<u32>() {
            return Ok(id);
        }
        let text = read_in_root(root_fd, file)
            .map_err(|errno| err(format!("cannot read {file} of the destination root: {errno}")))?
            .ok_or_else(|| err(format!("the destination root has no /{file} to look up {what} {name:?}; use a numeric id")))?;
        lookup_id(&text, name).ok_or_else(|| {
            err(format!("no {what} {name:?} in /{file} of the destination root; create it in an earlier step or use a numeric id"))
        })
    };
    let uid = lookup("etc/passwd", user, "user")?;
    let gid = match group {
        Some(group) => lookup("etc/group", group, "group")?,
        None => uid,
    };
    Ok((uid, gid))
}
