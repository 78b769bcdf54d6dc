//! Copying a [`Selection`] into a stage root with Docker's COPY/ADD rules, confined to the root.

use std::collections::HashMap;
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
    /// documents. `None`: copies are owned by 0:0, or keep their source's owner with
    /// `keep_owner`.
    pub chown: Option<String>,
    /// Without `chown`, copies keep the owner they have in the source (COPY --from a stage or
    /// image, as BuildKit does) instead of belonging to 0:0 (COPY from the build context).
    pub keep_owner: bool,
    /// `--chmod`: mode bits for every copied file and directory (not symlinks), and the
    /// permission bits of the destination's missing parents, as BuildKit does.
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
    /// Hard links made to a file copied earlier in the same copy (sources that were hard links
    /// of each other stay hard links).
    pub n_hard_links: u64,
    /// ADD archives extracted.
    pub n_archives: u64,
}

/// Copies `selection` (selected from `src_root`) to `dest` inside `root` with Docker's rules.
///
/// - `dest` is a directory when it ends with `/` (or is `.`), when several entries are copied
///   (several sources or a wildcard matching several paths), when a source is a directory, or
///   when it already is a directory in `root`; otherwise the single source file is written at
///   `dest` itself.
/// - A directory source copies its contents, not itself, and its mtime goes to the destination
///   directory (whose mode and owner stay as they are). Missing parents and a missing
///   destination are created with mode 0755 (or the permission bits of `chmod`), owned by the
///   `--chown` owner if given (else by root), as fsutil's `MkdirAll` does.
/// - Files keep their mode (unless `chmod`) and mtime; the owner is 0:0 unless `chown` (or the
///   source's with `keep_owner`); symlinks are copied as symlinks; an existing file at a target
///   path is replaced.
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
    let want_owner = wanted_owner(&root_fd, options)?;
    let dest_rel = dest_in_root(dest, &options.workdir);
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
        hard_links: HashMap::new(),
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

/// Creates the directory `dest` (relative to `options.workdir` unless absolute) and its missing
/// parents inside `root`, as WORKDIR does: mode 0755, owned by the `--chown` owner of `options`
/// (else by root); an existing directory is left as it is.
pub fn make_dir_all(root: &Path, dest: &str, options: &CopyOptions) -> Result<(), Error> {
    let root_fd = open_root(root)?;
    let copier = Copier {
        root,
        root_fd: &root_fd,
        src_root: root,
        src_fd: &root_fd,
        options: &CopyOptions {
            chmod: None,
            ..options.clone()
        },
        want_owner: wanted_owner(&root_fd, options)?,
        stats: CopyStats::default(),
        hard_links: HashMap::new(),
    };
    copier.mkdir_p(&dest_in_root(dest, &options.workdir))?;
    Ok(())
}

/// The owner of created directories and (without `keep_owner`) copies: the `--chown` owner or
/// root. Unprivileged, files simply belong to the caller (mapped to root inside a user
/// namespace), so nothing needs changing (`None`).
fn wanted_owner(root_fd: &OwnedFd, options: &CopyOptions) -> Result<Option<(u32, u32)>, Error> {
    Ok(match &options.chown {
        Some(spec) => Some(resolve_chown(root_fd, spec)?),
        None if rustix::process::geteuid().is_root() => Some((0, 0)),
        None => None,
    })
}

/// `dest` as a path inside the root, resolved against `workdir` when relative.
fn dest_in_root(dest: &str, workdir: &str) -> PathBuf {
    let joined = if dest.starts_with('/') {
        dest.to_string()
    } else {
        format!("{}/{}", workdir.trim_end_matches('/'), dest)
    };
    clean_components(&joined).iter().collect()
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
    /// Files with several hard links already written, by source (device, inode): an `O_PATH`
    /// descriptor of the copy, so later links to the same inode become hard links too.
    hard_links: HashMap<(u64, u64), OwnedFd>,
}

/// At most this many descriptors are kept open for hard links; later ones are copied.
const MAX_HARD_LINK_FDS: usize = 256;

/// A directory being filled during [`Copier::copy_tree`]: its path relative to the match, its
/// descriptor and the entry whose mode and mtime it gets once its children are written.
struct Frame<'e> {
    rel: PathBuf,
    fd: OwnedFd,
    dest: PathBuf,
    entry: Option<&'e SelectedEntry>,
    /// What of `entry`'s metadata the directory takes once its children are written.
    apply: Apply,
}

/// The metadata a copied directory takes from its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Apply {
    /// Mode (or `--chmod`) and times (the owner was set when it was made).
    All,
    /// The source's own mode only, `--chmod` or not: an existing directory that is only a
    /// parent of what `COPY --parents` copies (BuildKit's `copyDirectoryOnly`).
    Mode,
    /// Times only: the destination directory of a directory source.
    Times,
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
            let mode = self.options.chmod.map_or(0o755, |mode| mode & 0o777);
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                .map_err(|err| self.io_dest("chmod", &prefix, err))?;
            self.set_owner_fd(&fd, &prefix, self.want_owner)?;
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

    /// The owner a copy of the source entry `src_rel` gets: the `--chown` owner, root, or with
    /// `keep_owner` the source's own (`None`: leave it, as an unprivileged caller must).
    fn entry_owner(&self, src_rel: &Path) -> Result<Option<(u32, u32)>, Error> {
        if self.options.chown.is_some() || !self.options.keep_owner || self.want_owner.is_none() {
            return Ok(self.want_owner);
        }
        let fd = rustix::fs::openat2(
            self.src_fd,
            if src_rel.as_os_str().is_empty() {
                Path::new(".")
            } else {
                src_rel
            },
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|err| Error::io("stat source", self.src_root.join(src_rel), err))?;
        let st = rustix::fs::fstat(&fd)
            .map_err(|err| Error::io("stat source", self.src_root.join(src_rel), err))?;
        Ok(Some((st.st_uid, st.st_gid)))
    }

    /// Changes the owner of an open entry to `owner` if it differs.
    fn set_owner_fd(
        &self,
        fd: &OwnedFd,
        dest: &Path,
        owner: Option<(u32, u32)>,
    ) -> Result<(), Error> {
        let Some((uid, gid)) = owner else {
            return Ok(());
        };
        let st = rustix::fs::fstat(fd).map_err(|err| self.io_dest("stat", dest, err))?;
        if st.st_uid != uid || st.st_gid != gid {
            rustix::fs::fchown(fd, Some(uid_of(uid)), Some(gid_of(gid)))
                .map_err(|err| self.io_dest("chown", dest, err))?;
        }
        Ok(())
    }

    /// Changes the owner of `name` in `dir` to `owner` without following a symlink.
    fn set_owner_at(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        dest: &Path,
        owner: Option<(u32, u32)>,
    ) -> Result<(), Error> {
        let Some((uid, gid)) = owner else {
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
        // The destination directory (made by `mkdir_p` if missing) only takes the source
        // directory's mtime: BuildKit's copier finds it existing, so `copyFileTimestamp`.
        let top_entry = &found.entries[0];
        let mut stack: Vec<Frame<'_>> = vec![Frame {
            rel: PathBuf::new(),
            fd: top,
            dest: dest.to_path_buf(),
            entry: Some(top_entry),
            apply: Apply::Times,
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
                    self.src_root.join(found.entry_source(entry)),
                    std::io::Error::other("selection entries are out of order"),
                ));
            };
            let name = entry
                .rel
                .file_name()
                .expect("entries below a match have names");
            let entry_dest = parent.dest.join(name);
            if entry.kind == EntryKind::Dir {
                let (fd, own, existed) = self.make_dir(
                    &parent.fd,
                    name,
                    &entry_dest,
                    &found.entry_source(entry),
                    entry.parent_only,
                )?;
                stack.push(Frame {
                    rel: entry.rel.clone(),
                    fd,
                    dest: entry_dest,
                    entry: own.then_some(entry),
                    apply: if existed && entry.parent_only {
                        Apply::Mode
                    } else {
                        Apply::All
                    },
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

    /// Creates (or reuses) the directory `name` in `parent` and returns it open, whether it
    /// is the directory itself (`false`: a symlink in the root led to it, as `/lib -> usr/lib`
    /// on merged-usr systems; its metadata is then left alone), and whether it existed. An
    /// existing `parent_only` directory keeps its owner.
    fn make_dir(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        dest: &Path,
        src_rel: &Path,
        parent_only: bool,
    ) -> Result<(OwnedFd, bool, bool), Error> {
        let mut existed = false;
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => existed = true,
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                // Follow it inside the root, as copying into a chroot would.
                return match open_in_root(self.root_fd, dest) {
                    Ok(fd) => {
                        self.stats.n_dirs += 1;
                        Ok((fd, false, true))
                    }
                    Err(_) => Err(Error::Conflict {
                        source_path: src_rel.to_path_buf(),
                        dest: self.show(dest),
                        reason: "a symlink that does not lead to a directory is in the way of a directory".into(),
                    }),
                };
            }
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
        if !(existed && parent_only) {
            self.set_owner_fd(&fd, dest, self.entry_owner(src_rel)?)?;
        }
        self.stats.n_dirs += 1;
        Ok((fd, true, existed))
    }

    /// Applies a copied directory's mode and mtime after its children are written.
    fn finish_dir(&self, frame: &Frame<'_>) -> Result<(), Error> {
        let Some(entry) = frame.entry else {
            return Ok(());
        };
        let mode = match frame.apply {
            Apply::All => Some(self.mode_for(entry)),
            Apply::Mode => Some(Mode::from_raw_mode(entry.mode)),
            Apply::Times => None,
        };
        if let Some(mode) = mode {
            rustix::fs::fchmod(&frame.fd, mode)
                .map_err(|err| self.io_dest("chmod", &frame.dest, err))?;
        }
        if frame.apply == Apply::Mode {
            return Ok(());
        }
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
        let src_rel = found.entry_source(entry);
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
                if entry.nlink > 1
                    && let Some(first) = self.hard_links.get(&entry.dev_ino)
                    && rustix::fs::linkat(first, "", parent, name, AtFlags::EMPTY_PATH).is_ok()
                {
                    // Linking needs CAP_DAC_READ_SEARCH; without it the file is copied below.
                    self.stats.n_hard_links += 1;
                    return Ok(());
                }
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
                let out = crate::layer::create_new_file(parent, name)
                    .map_err(|err| self.io_dest("create", dest, err))?;
                let mut src_file = File::from(src);
                let mut out_file = File::from(out);
                let n_bytes = std::io::copy(&mut src_file, &mut out_file)
                    .map_err(|err| Error::io("copy", self.src_root.join(&src_rel), err))?;
                let out: OwnedFd = out_file.into();
                self.set_owner_fd(&out, dest, self.entry_owner(&src_rel)?)?;
                rustix::fs::fchmod(&out, self.mode_for(entry))
                    .map_err(|err| self.io_dest("chmod", dest, err))?;
                rustix::fs::futimens(&out, &timestamps(entry))
                    .map_err(|err| self.io_dest("set times of", dest, err))?;
                self.stats.n_files += 1;
                self.stats.n_bytes += n_bytes;
                if entry.nlink > 1
                    && self.hard_links.len() < MAX_HARD_LINK_FDS
                    && !self.hard_links.contains_key(&entry.dev_ino)
                    && let Ok(fd) = rustix::fs::openat(
                        parent,
                        name,
                        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                {
                    self.hard_links.insert(entry.dev_ino, fd);
                }
            }
            EntryKind::Symlink => {
                let target = entry.link_target.as_deref().unwrap_or(Path::new(""));
                rustix::fs::symlinkat(target, parent, name)
                    .map_err(|err| self.io_dest("create symlink", dest, err))?;
                self.set_owner_at(parent, name, dest, self.entry_owner(&src_rel)?)?;
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
                self.set_owner_at(parent, name, dest, self.entry_owner(&src_rel)?)?;
                rustix::fs::chmodat(parent, name, self.mode_for(entry), AtFlags::empty())
                    .map_err(|err| self.io_dest("chmod", dest, err))?;
                rustix::fs::utimensat(parent, name, &timestamps(entry), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|err| self.io_dest("set times of", dest, err))?;
                self.stats.n_special += 1;
            }
            EntryKind::Dir => {
                // `copy_tree` creates directories; only non-directories get here.
                return Err(Error::io(
                    "copy",
                    self.src_root.join(&src_rel),
                    std::io::Error::other("a directory was passed as a single entry"),
                ));
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;
    use crate::context::HashCache;
    use crate::context::select::select;
    use crate::context::test_support::write;
    use crate::dockerfile::IgnoreMatcher;

    struct Fixture {
        _dir: tempfile::TempDir,
        ctx: PathBuf,
        root: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = dir.path().join("ctx");
        let root = dir.path().join("root");
        write(&ctx, "a.txt", "a");
        write(&ctx, "b.txt", "bb");
        write(&ctx, "dir/one.txt", "1");
        write(&ctx, "dir/sub/two.txt", "2");
        write(&ctx, "dir/secret.key", "k");
        std::os::unix::fs::symlink("one.txt", ctx.join("dir/link")).expect("symlink");
        std::fs::create_dir_all(&root).expect("root");
        Fixture {
            _dir: dir,
            ctx,
            root,
        }
    }

    fn opts() -> CopyOptions {
        CopyOptions {
            workdir: "/".into(),
            ..CopyOptions::default()
        }
    }

    fn copy(
        f: &Fixture,
        sources: &[&str],
        dest: &str,
        options: &CopyOptions,
    ) -> Result<CopyStats, Error> {
        copy_with(f, sources, dest, options, None)
    }

    fn copy_with(
        f: &Fixture,
        sources: &[&str],
        dest: &str,
        options: &CopyOptions,
        ignore: Option<&IgnoreMatcher>,
    ) -> Result<CopyStats, Error> {
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        let selection = select(&f.ctx, &sources, ignore, &mut HashCache::in_memory())?;
        copy_into(&selection, &f.ctx, &f.root, dest, options)
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
    }

    #[test]
    fn directory_source_copies_its_contents() {
        let f = fixture();
        let stats = copy(&f, &["dir"], "/app", &opts()).expect("copy");
        assert_eq!(read(&f.root.join("app/one.txt")), "1");
        assert_eq!(read(&f.root.join("app/sub/two.txt")), "2");
        assert!(!f.root.join("app/dir").exists());
        let link = std::fs::read_link(f.root.join("app/link")).expect("copied as a symlink");
        assert_eq!(link, Path::new("one.txt"));
        assert_eq!((stats.n_files, stats.n_symlinks, stats.n_dirs), (3, 1, 1));
    }

    #[test]
    fn file_to_directory_and_to_file_path() {
        let f = fixture();
        copy(&f, &["a.txt"], "/dest/", &opts()).expect("copy");
        assert_eq!(read(&f.root.join("dest/a.txt")), "a");
        copy(&f, &["a.txt"], "/x/y.txt", &opts()).expect("copy");
        assert_eq!(read(&f.root.join("x/y.txt")), "a");
        // An existing directory is copied into, even without a trailing slash.
        copy(&f, &["b.txt"], "/dest", &opts()).expect("copy");
        assert_eq!(read(&f.root.join("dest/b.txt")), "bb");
        // A relative destination is relative to the WORKDIR; `.` is the WORKDIR itself.
        let in_workdir = CopyOptions {
            workdir: "/work".into(),
            ..opts()
        };
        copy(&f, &["a.txt"], ".", &in_workdir).expect("copy");
        assert_eq!(read(&f.root.join("work/a.txt")), "a");
        copy(&f, &["a.txt"], "renamed", &in_workdir).expect("copy");
        assert_eq!(read(&f.root.join("work/renamed")), "a");
        // An existing file is replaced.
        copy(&f, &["b.txt"], "/x/y.txt", &opts()).expect("copy");
        assert_eq!(read(&f.root.join("x/y.txt")), "bb");
    }

    #[test]
    fn multiple_sources_and_wildcards_go_into_a_directory() {
        let f = fixture();
        copy(&f, &["a.txt", "b.txt"], "/multi", &opts()).expect("copy");
        assert_eq!(read(&f.root.join("multi/a.txt")), "a");
        assert_eq!(read(&f.root.join("multi/b.txt")), "bb");
        copy(&f, &["*.txt"], "/wild", &opts()).expect("copy");
        assert_eq!(read(&f.root.join("wild/a.txt")), "a");
        assert_eq!(read(&f.root.join("wild/b.txt")), "bb");
    }

    #[test]
    fn keeps_mode_and_mtime_owner_is_root() {
        let f = fixture();
        std::fs::set_permissions(f.ctx.join("a.txt"), std::fs::Permissions::from_mode(0o4751))
            .expect("chmod");
        let mtime = filetime::FileTime::from_unix_time(1_500_000_000, 123);
        filetime::set_file_mtime(f.ctx.join("a.txt"), mtime).expect("mtime");
        filetime::set_file_mtime(f.ctx.join("dir/sub"), mtime).expect("mtime");
        copy(&f, &["a.txt"], "/a.txt", &opts()).expect("copy");
        copy(&f, &["dir"], "/d/", &opts()).expect("copy");
        let meta = std::fs::metadata(f.root.join("a.txt")).expect("stat");
        assert_eq!(meta.mode() & 0o7777, 0o4751);
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_500_000_000, 123));
        let sub = std::fs::metadata(f.root.join("d/sub")).expect("stat");
        assert_eq!(
            sub.mtime(),
            1_500_000_000,
            "directory mtime kept after writing children"
        );
        if rustix::process::geteuid().is_root() {
            assert_eq!((meta.uid(), meta.gid()), (0, 0));
        }
    }

    #[test]
    fn chmod_applies_to_files_and_dirs() {
        let f = fixture();
        let options = CopyOptions {
            chmod: Some(0o640),
            ..opts()
        };
        copy(&f, &["dir"], "/c", &options).expect("copy");
        let mode = |rel: &str| {
            std::fs::symlink_metadata(f.root.join(rel))
                .expect("stat")
                .mode()
                & 0o7777
        };
        assert_eq!(mode("c/one.txt"), 0o640);
        assert_eq!(mode("c/sub"), 0o640);
        assert_eq!(mode("c/sub/two.txt"), 0o640);
    }

    #[test]
    fn issue_9_copies_keep_source_owners_with_keep_owner_only() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping owner test: needs root");
            return;
        }
        let f = fixture();
        let owned = f.ctx.join("dir/sub/two.txt");
        rustix::fs::chown(&owned, Some(uid_of(1000)), Some(gid_of(1001))).expect("chown");
        rustix::fs::chown(f.ctx.join("dir"), Some(uid_of(7)), Some(gid_of(8))).expect("chown");
        let owner = |rel: &str| {
            let meta = std::fs::symlink_metadata(f.root.join(rel)).expect("stat");
            (meta.uid(), meta.gid())
        };
        copy(&f, &["dir"], "/context/", &opts()).expect("copy");
        assert_eq!(
            owner("context/sub/two.txt"),
            (0, 0),
            "the context's files: 0:0"
        );
        let from_stage = CopyOptions {
            keep_owner: true,
            ..opts()
        };
        copy(&f, &["dir"], "/stage/", &from_stage).expect("copy");
        assert_eq!(owner("stage/sub/two.txt"), (1000, 1001));
        assert_eq!(
            owner("stage"),
            (0, 0),
            "the destination is made as fsutil's MkdirAll makes it, not with the source dir's owner"
        );
        let chowned = CopyOptions {
            chown: Some("5:6".into()),
            ..from_stage
        };
        copy(&f, &["dir"], "/chowned/", &chowned).expect("copy");
        assert_eq!(owner("chowned/sub/two.txt"), (5, 6), "--chown wins");
    }

    #[test]
    fn issue_9_chmod_applies_to_created_parents_and_a_created_destination_directory() {
        let f = fixture();
        let mode = |rel: &str| {
            std::fs::symlink_metadata(f.root.join(rel))
                .expect("stat")
                .mode()
                & 0o7777
        };
        let chmod = CopyOptions {
            chmod: Some(0o640),
            ..opts()
        };
        copy(&f, &["a.txt"], "/made/a.txt", &chmod).expect("copy");
        assert_eq!(
            mode("made"),
            0o640,
            "a created parent gets the --chmod bits"
        );
        assert_eq!(mode("made/a.txt"), 0o640);
        copy(&f, &["dir"], "/made/dir", &chmod).expect("copy");
        assert_eq!(
            mode("made/dir"),
            0o640,
            "a created destination directory too"
        );
        std::fs::create_dir_all(f.root.join("existing")).expect("mkdir");
        std::fs::set_permissions(
            f.root.join("existing"),
            std::fs::Permissions::from_mode(0o710),
        )
        .expect("chmod");
        copy(&f, &["dir"], "/existing", &chmod).expect("copy");
        assert_eq!(
            mode("existing"),
            0o710,
            "an existing destination directory keeps its mode (checked against BuildKit)"
        );
        std::fs::set_permissions(f.ctx.join("dir"), std::fs::Permissions::from_mode(0o750))
            .expect("chmod");
        copy(&f, &["dir"], "/plain", &opts()).expect("copy");
        assert_eq!(
            mode("plain"),
            0o755,
            "without --chmod it is made 0755, whatever the source's mode"
        );
    }

    #[test]
    fn chown_numeric_and_by_name() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping chown test: needs root");
            return;
        }
        let f = fixture();
        write(
            &f.root,
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\napp:x:1234:1000::/home/app:/bin/sh\n",
        );
        write(&f.root, "etc/group", "root:x:0:\nstaff:x:50:app\n");
        let owner = |rel: &str| {
            let meta = std::fs::symlink_metadata(f.root.join(rel)).expect("stat");
            (meta.uid(), meta.gid())
        };
        let chown = |spec: &str| CopyOptions {
            chown: Some(spec.into()),
            ..opts()
        };
        copy(&f, &["a.txt"], "/n/a.txt", &chown("1000:1001")).expect("copy");
        assert_eq!(owner("n/a.txt"), (1000, 1001));
        assert_eq!(
            owner("n"),
            (1000, 1001),
            "created parents get the --chown owner"
        );
        copy(&f, &["a.txt"], "/n/b.txt", &chown("77")).expect("copy");
        assert_eq!(owner("n/b.txt"), (77, 77), "a uid alone is also the gid");
        copy(&f, &["dir"], "/named/", &chown("app:staff")).expect("copy");
        assert_eq!(owner("named/sub/two.txt"), (1234, 50));
        assert_eq!(owner("named/link"), (1234, 50));
        copy(&f, &["a.txt"], "/named/x", &chown("app")).expect("copy");
        assert_eq!(owner("named/x"), (1234, 1234));

        let err = copy(&f, &["a.txt"], "/z", &chown("nobody2")).expect_err("unknown user");
        assert!(err.to_string().contains("\"nobody2\""), "{err}");
        let err = copy(&f, &["a.txt"], "/z", &chown("app:nogroup")).expect_err("unknown group");
        assert!(err.to_string().contains("\"nogroup\""), "{err}");
        assert!(!f.root.join("z").exists());
    }

    #[test]
    fn destination_symlinks_stay_inside_the_root() {
        let f = fixture();
        std::fs::create_dir_all(f.root.join("etc")).expect("mkdir");
        std::os::unix::fs::symlink("/etc", f.root.join("link")).expect("symlink");
        std::os::unix::fs::symlink("/nowhere/deeper", f.root.join("dangling")).expect("symlink");
        std::os::unix::fs::symlink("../../../../../../etc", f.root.join("up")).expect("symlink");
        let name = format!("buildcache-escape-test-{}", std::process::id());

        copy(&f, &["a.txt"], &format!("/link/{name}"), &opts()).expect("copy");
        assert_eq!(read(&f.root.join("etc").join(&name)), "a");
        copy(&f, &["dir"], "/up/sub/", &opts()).expect("copy");
        assert_eq!(read(&f.root.join("etc/sub/one.txt")), "1");
        copy(&f, &["a.txt"], "/dangling/", &opts()).expect("copy");
        assert_eq!(read(&f.root.join("nowhere/deeper/a.txt")), "a");
        assert!(
            !Path::new("/etc").join(&name).exists(),
            "wrote to the host /etc"
        );
        assert!(!Path::new("/nowhere").exists(), "wrote to the host /");

        // A symlink as the final destination is replaced, never written through.
        std::os::unix::fs::symlink("/etc/hostname-target", f.root.join("final")).expect("symlink");
        copy(&f, &["a.txt"], "/final", &opts()).expect("copy");
        assert!(
            std::fs::symlink_metadata(f.root.join("final"))
                .expect("stat")
                .is_file()
        );
    }

    #[test]
    fn directories_merge_through_symlinks_in_the_root() {
        let f = fixture();
        // A merged-usr root: /lib -> usr/lib.
        std::fs::create_dir_all(f.root.join("usr/lib")).expect("mkdir");
        std::os::unix::fs::symlink("usr/lib", f.root.join("lib")).expect("symlink");
        write(&f.ctx, "tree/lib/libx.so", "x");
        copy(&f, &["tree"], "/", &opts()).expect("copy");
        assert_eq!(read(&f.root.join("usr/lib/libx.so")), "x");
        assert!(
            std::fs::symlink_metadata(f.root.join("lib"))
                .expect("stat")
                .is_symlink()
        );
    }

    #[test]
    fn hard_links_stay_hard_links() {
        let f = fixture();
        std::fs::hard_link(
            f.ctx.join("dir/one.txt"),
            f.ctx.join("dir/sub/one-again.txt"),
        )
        .expect("link");
        let stats = copy(&f, &["dir"], "/h", &opts()).expect("copy");
        let ino = |rel: &str| std::fs::metadata(f.root.join(rel)).expect("stat").ino();
        if rustix::process::geteuid().is_root() {
            assert_eq!(stats.n_hard_links, 1);
            assert_eq!(ino("h/one.txt"), ino("h/sub/one-again.txt"));
        }
        assert_eq!(read(&f.root.join("h/sub/one-again.txt")), "1");
    }

    #[test]
    fn dockerignore_exclusion_is_not_copied() {
        let f = fixture();
        let ignore = IgnoreMatcher::parse("**/*.key\n").expect("parse");
        copy_with(&f, &["."], "/all/", &opts(), Some(&ignore)).expect("copy");
        assert!(f.root.join("all/dir/one.txt").exists());
        assert!(!f.root.join("all/dir/secret.key").exists());
    }

    #[test]
    fn copy_from_stage_resolves_source_links_inside_the_stage() {
        let f = fixture();
        let stage = f.ctx.parent().expect("parent").join("stage");
        write(&stage, "data/file", "from stage");
        std::os::unix::fs::symlink("/data/file", stage.join("abs-link")).expect("symlink");
        let selection = select(
            &stage,
            &["abs-link".to_string()],
            None,
            &mut HashCache::in_memory(),
        )
        .expect("select");
        copy_into(&selection, &stage, &f.root, "/out/", &opts()).expect("copy");
        assert_eq!(read(&f.root.join("out/abs-link")), "from stage");
        assert!(
            std::fs::symlink_metadata(f.root.join("out/abs-link"))
                .expect("stat")
                .is_file()
        );
    }

    #[test]
    fn conflicts_are_errors() {
        let f = fixture();
        std::fs::create_dir_all(f.root.join("busy/a.txt")).expect("mkdir");
        let err = copy(&f, &["a.txt"], "/busy/", &opts()).expect_err("dir in the way");
        assert!(matches!(err, Error::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("/busy/a.txt"), "{err}");
        write(&f.root, "file", "x");
        let err = copy(&f, &["dir"], "/file/sub", &opts()).expect_err("file in the way");
        assert!(matches!(err, Error::Conflict { .. }), "{err}");
    }

    #[test]
    fn add_extracts_local_archives() {
        let f = fixture();
        let archive = f.ctx.join("bundle.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(
                File::create(&archive).expect("create"),
                flate2::Compression::default(),
            );
            let mut tar = tar::Builder::new(gz);
            let mut header = tar::Header::new_gnu();
            header.set_size(5);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, "pkg/hello.txt", &b"hello"[..])
                .expect("append");
            tar.into_inner()
                .expect("finish tar")
                .finish()
                .expect("finish gzip");
        }
        let add = CopyOptions {
            extract_archives: true,
            ..opts()
        };
        let stats = copy(&f, &["bundle.tar.gz", "a.txt"], "/opt/", &add).expect("add");
        assert_eq!(stats.n_archives, 1);
        assert_eq!(read(&f.root.join("opt/pkg/hello.txt")), "hello");
        assert_eq!(
            read(&f.root.join("opt/a.txt")),
            "a",
            "a non-archive is copied as a file"
        );
        assert!(!f.root.join("opt/bundle.tar.gz").exists());

        // COPY never extracts.
        copy(&f, &["bundle.tar.gz"], "/copy/", &opts()).expect("copy");
        assert!(f.root.join("copy/bundle.tar.gz").is_file());
    }
}
