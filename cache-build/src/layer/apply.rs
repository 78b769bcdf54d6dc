//! Applying a layer (with whiteouts) or extracting an archive, confined to a root directory.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::fsops::{
    Root, clean_name, file_type, list_dir, open_dir_nofollow, remove_all_at, split, stat_at,
};
use super::write::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use super::{Compression, Error};

/// What [`apply_layer`] did, and the digests of what it read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// `sha256:<hex>` of the bytes read (the blob digest); compare with the descriptor.
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar (the diffID); compare with the image config.
    pub diff_id: String,
    /// Number of tar entries processed, whiteouts included.
    pub entries: u64,
    /// Number of bytes read (the blob size).
    pub bytes: u64,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
    /// Device nodes that could not be created (no permission to `mknod`) and were skipped.
    pub skipped_devices: u64,
}

/// A reader that hashes and counts what passes through it.
struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    n_bytes: u64,
}

impl<R: Read> HashReader<R> {
    fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            n_bytes: 0,
        }
    }

    fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n_bytes += n as u64;
        Ok(n)
    }
}

/// Compression recognised by its magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Magic {
    Gzip,
    Zstd,
    Bzip2,
    Xz,
    None,
}

fn detect(head: &[u8]) -> Magic {
    if head.starts_with(&[0x1f, 0x8b]) {
        Magic::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Magic::Zstd
    } else if head.starts_with(b"BZh") {
        Magic::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Magic::Xz
    } else {
        Magic::None
    }
}

/// Reads up to `buf.len()` bytes, stopping early only at end of stream.
fn read_head(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// Wraps `source` in the decoder its first bytes call for.
fn decoder<'a>(
    magic: Magic,
    source: impl Read + 'a,
    what: &str,
) -> Result<Box<dyn Read + 'a>, Error> {
    Ok(match magic {
        Magic::Gzip => Box::new(flate2::read::MultiGzDecoder::new(source)),
        Magic::Zstd => {
            Box::new(
                zstd::stream::read::Decoder::new(source).map_err(|err| Error::Corrupt {
                    context: format!("zstd header of {what}"),
                    source: err,
                })?,
            )
        }
        Magic::Bzip2 | Magic::Xz => {
            return Err(Error::Corrupt {
                context: what.to_string(),
                source: io::Error::new(
                    io::ErrorKind::Unsupported,
                    "bzip2 and xz compression are not supported; use gzip or zstd",
                ),
            });
        }
        Magic::None => Box::new(source),
    })
}

/// Applies one layer on top of `root`.
///
/// The stream is decompressed according to its magic bytes (gzip, zstd or none), which is what
/// containerd does too; `media_type` is only used to warn about a mismatch. OCI whiteouts are
/// honoured: `.wh.<name>` deletes `name` from lower layers, `.wh..wh..opq` removes what lower
/// layers had in its directory but keeps what this layer adds there, whatever the entry order.
/// Hard links, symlinks, FIFOs and devices are created (a device that cannot be created for
/// lack of permission is skipped and counted); owners are set when running as root; modes,
/// mtimes and `SCHILY.xattr.*` records (files and directories) are applied.
///
/// Nothing outside `root` is ever created, changed or deleted: names with `..` are refused,
/// absolute names are taken relative to the root, symlinks are created as they are but parent
/// directories are resolved inside the root (`openat2(RESOLVE_IN_ROOT)`) and the last
/// component is never followed; a hard link must point to an entry inside the root.
///
/// The returned digest and diffID cover every byte of the stream; the caller compares them
/// with what it expected. On error the root is left partly modified.
pub fn apply_layer(reader: impl Read, media_type: &str, root: &Path) -> Result<ApplyStats, Error> {
    let root = Root::open(root)?;
    let mut blob = HashReader::new(reader);
    let mut head = [0u8; 6];
    let n_head = read_head(&mut blob, &mut head).map_err(|err| Error::Corrupt {
        context: "start of layer".to_string(),
        source: err,
    })?;
    let magic = detect(&head[..n_head]);
    let declared = Compression::from_media_type(media_type);
    let agrees = match (declared, magic) {
        (None, _) => true,
        (Some(Compression::Gzip { .. }), m) => m == Magic::Gzip,
        (Some(Compression::Zstd { .. }), m) => m == Magic::Zstd,
        (Some(Compression::Uncompressed), m) => m == Magic::None,
    };
    if !agrees {
        tracing::warn!(
            media_type,
            detected = ?magic,
            "layer media type does not match its content; decoding by content"
        );
    }

    let mut stats = ApplyStats::default();
    {
        let source = io::Cursor::new(&head[..n_head]).chain(&mut blob);
        let mut tar_stream = HashReader::new(decoder(magic, source, "layer")?);
        let mut extractor = Extractor::new(root, true);
        extractor.run(&mut tar_stream)?;
        // Hash whatever follows the end-of-archive marker too.
        io::copy(&mut tar_stream, &mut io::sink()).map_err(|err| Error::Corrupt {
            context: "after the end of the tar archive".to_string(),
            source: err,
        })?;
        stats.entries = extractor.entries;
        stats.skipped_devices = extractor.skipped_devices;
        stats.diff_id = tar_stream.digest();
        stats.uncompressed_size = tar_stream.n_bytes;
    }
    io::copy(&mut blob, &mut io::sink()).map_err(|err| Error::Corrupt {
        context: "after the end of the compressed stream".to_string(),
        source: err,
    })?;
    stats.digest = blob.digest();
    stats.bytes = blob.n_bytes;
    Ok(stats)
}

/// `ADD` of a local archive: extracts a tar (plain, gzip or zstd, recognised by content) into
/// `dest_in_root`, a directory inside `root` (created if missing; an absolute path is taken
/// relative to `root`).
///
/// Entries are confined to the destination directory with the same rules as [`apply_layer`];
/// whiteout names are extracted as ordinary files. Returns `Ok(false)` without touching
/// anything if the file is not a recognised archive, in which case `ADD` copies it as a file.
pub fn extract_archive(archive: &Path, root: &Path, dest_in_root: &Path) -> Result<bool, Error> {
    let open = || File::open(archive).map_err(|err| Error::io("open archive", archive, err));
    if !is_archive(open()?) {
        return Ok(false);
    }
    let outer = Root::open(root)?;
    let dest_rel = clean_name(dest_in_root.as_os_str().as_bytes())?;
    let dest_fd = outer
        .open_dir(&dest_rel, true)?
        .expect("open_dir with create returns a directory");
    let dest = Root::from_fd(dest_fd, root.join(&dest_rel));

    let mut file = open()?;
    let mut head = [0u8; 6];
    let n_head =
        read_head(&mut file, &mut head).map_err(|err| Error::io("read archive", archive, err))?;
    let magic = detect(&head[..n_head]);
    let what = archive.display().to_string();
    let source = io::Cursor::new(&head[..n_head]).chain(file);
    let mut stream = decoder(magic, source, &what)?;
    Extractor::new(dest, false).run(&mut stream)?;
    Ok(true)
}

/// True if the file decodes to a tar whose first header has a valid checksum.
fn is_archive(mut file: File) -> bool {
    let mut head = [0u8; 6];
    let Ok(n_head) = read_head(&mut file, &mut head) else {
        return false;
    };
    let magic = detect(&head[..n_head]);
    let source = io::Cursor::new(&head[..n_head]).chain(file);
    let Ok(mut stream) = decoder(magic, source, "archive") else {
        return false;
    };
    let mut block = [0u8; 512];
    match read_head(&mut stream, &mut block) {
        Ok(512) => valid_tar_header(&block),
        _ => false,
    }
}

fn valid_tar_header(block: &[u8; 512]) -> bool {
    if block.iter().all(|&b| b == 0) {
        return false;
    }
    let field = &block[148..156];
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    let Ok(text) = std::str::from_utf8(&digits) else {
        return false;
    };
    let Ok(stored) = u32::from_str_radix(text, 8) else {
        return false;
    };
    let unsigned: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    let signed: i64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                i64::from(b as i8)
            }
        })
        .sum();
    stored == unsigned || i64::from(stored) == signed
}

/// Extracts tar entries under a [`Root`].
struct Extractor {
    root: Root,
    whiteouts: bool,
    chown: bool,
    /// Paths this layer wrote, with all their ancestors.
    touched: HashSet<PathBuf>,
    /// Directory modes and mtimes, applied at the end so that writing children does not
    /// change them (and read-only directories can still be filled).
    dirs: BTreeMap<PathBuf, (u32, i64)>,
    entries: u64,
    skipped_devices: u64,
}

fn corrupt(err: io::Error, entry: &[u8]) -> Error {
    Error::Corrupt {
        context: format!("entry {:?}", String::from_utf8_lossy(entry)),
        source: err,
    }
}

impl Extractor {
    fn new(root: Root, whiteouts: bool) -> Extractor {
        Extractor {
            root,
            whiteouts,
            chown: rustix::process::geteuid().is_root(),
            touched: HashSet::new(),
            dirs: BTreeMap::new(),
            entries: 0,
            skipped_devices: 0,
        }
    }

    fn run(&mut self, stream: &mut dyn Read) -> Result<(), Error> {
        let mut archive = tar::Archive::new(stream);
        let entries = archive.entries().map_err(|err| corrupt(err, b"(start)"))?;
        for entry in entries {
            let mut entry = entry.map_err(|err| Error::Corrupt {
                context: "tar header".to_string(),
                source: err,
            })?;
            self.entry(&mut entry)?;
        }
        self.finish_dirs()
    }

    fn entry(&mut self, entry: &mut tar::Entry<'_, &mut dyn Read>) -> Result<(), Error> {
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        self.entries += 1;
        let rel = clean_name(&raw)?;
        if rel.as_os_str().is_empty() {
            // The root's own entry (`./`): the root directory is not the layer's to change.
            return Ok(());
        }
        let (parent, name) = split(&rel);
        let (parent, name) = (parent.to_path_buf(), name.to_os_string());

        if self.whiteouts {
            let bytes = name.as_bytes();
            if bytes == OPAQUE_MARKER.as_bytes() {
                return self.opaque(&parent, &raw);
            }
            if bytes.starts_with(b".wh..wh.") {
                // aufs bookkeeping (`.wh..wh.plnk` etc.), not content.
                return Ok(());
            }
            if let Some(target) = bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
                return self.whiteout(&parent, OsStr::from_bytes(target), &raw);
            }
        }

        self.touch(&rel);
        let header = entry.header().clone();
        let mode = header.mode().map_err(|err| corrupt(err, &raw))? & 0o7777;
        let uid = header.uid().map_err(|err| corrupt(err, &raw))?;
        let gid = header.gid().map_err(|err| corrupt(err, &raw))?;
        let mtime =
            i64::try_from(header.mtime().map_err(|err| corrupt(err, &raw))?).unwrap_or(i64::MAX);
        let owner = match (u32::try_from(uid), u32::try_from(gid)) {
            (Ok(uid), Ok(gid)) => (uid, gid),
            _ => return Err(Error::refused(&raw, "uid or gid does not fit in 32 bits")),
        };
        let xattrs = pax_xattrs(entry).map_err(|err| corrupt(err, &raw))?;

        let dir = self
            .root
            .open_dir(&parent, true)?
            .expect("open_dir with create returns a directory");
        let existing = stat_at(&dir, &name).map_err(|err| self.io_err("stat", &rel, err))?;

        match kind {
            EntryType::Directory => {
                let is_dir = existing
                    .as_ref()
                    .is_some_and(|st| file_type(st) == FileType::Directory);
                if !is_dir {
                    if existing.is_some() {
                        remove_all_at(&dir, &name)
                            .map_err(|err| self.io_err("replace", &rel, err))?;
                    }
                    rustix::fs::mkdirat(&dir, &name, Mode::from_raw_mode(0o755))
                        .map_err(|err| self.io_err("create directory", &rel, err))?;
                }
                self.set_owner(&dir, &name, &rel, owner)?;
                if !xattrs.is_empty() {
                    match open_dir_nofollow(&dir, &name) {
                        Ok(fd) => self.set_xattrs(&fd, &rel, &xattrs),
                        Err(err) => return Err(self.io_err("open directory", &rel, err)),
                    }
                }
                self.dirs.insert(rel, (mode, mtime));
            }
            EntryType::Regular | EntryType::Continuous => {
                if existing.is_some() {
                    remove_all_at(&dir, &name).map_err(|err| self.io_err("replace", &rel, err))?;
                }
                let fd = rustix::fs::openat(
                    &dir,
                    &name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|err| self.io_err("create file", &rel, err))?;
                let mut file = File::from(fd);
                io::copy(entry, &mut file).map_err(|err| corrupt(err, &raw))?;
                if self.chown {
                    rustix::fs::fchown(
                        &file,
                        Some(rustix::fs::Uid::from_raw(owner.0)),
                        Some(rustix::fs::Gid::from_raw(owner.1)),
                    )
                    .map_err(|err| self.io_err("change owner of", &rel, err))?;
                }
                rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))
                    .map_err(|err| self.io_err("change mode of", &rel, err))?;
                self.set_xattrs(&file, &rel, &xattrs);
                rustix::fs::futimens(&file, &times(mtime))
                    .map_err(|err| self.io_err("set mtime of", &rel, err))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .filter(|t| !t.is_empty() && !t.contains(&0))
                    .ok_or_else(|| Error::refused(&raw, "symlink without a valid target"))?;
                if existing.is_some() {
                    remove_all_at(&dir, &name).map_err(|err| self.io_err("replace", &rel, err))?;
                }
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &dir, &name)
                    .map_err(|err| self.io_err("create symlink", &rel, err))?;
                self.set_owner(&dir, &name, &rel, owner)?;
                rustix::fs::utimensat(&dir, &name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|err| self.io_err("set mtime of", &rel, err))?;
            }
            EntryType::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .ok_or_else(|| Error::refused(&raw, "hard link without a target"))?;
                let target = clean_name(&target_raw).map_err(|_| {
                    Error::refused(
                        &raw,
                        format!(
                            "hard link target {:?} is outside the root",
                            String::from_utf8_lossy(&target_raw)
                        ),
                    )
                })?;
                if target.as_os_str().is_empty() {
                    return Err(Error::refused(&raw, "hard link to the root directory"));
                }
                if target == rel {
                    return Ok(());
                }
                let (tparent, tname) = split(&target);
                let tdir = self.root.open_dir(tparent, false)?.ok_or_else(|| {
                    Error::refused(&raw, format!("hard link target {target:?} does not exist"))
                })?;
                if existing.is_some() {
                    remove_all_at(&dir, &name).map_err(|err| self.io_err("replace", &rel, err))?;
                }
                rustix::fs::linkat(&tdir, tname, &dir, &name, AtFlags::empty()).map_err(|err| {
                    Error::refused(
                        &raw,
                        format!("cannot link to {target:?}: {}", io::Error::from(err)),
                    )
                })?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                if existing.is_some() {
                    remove_all_at(&dir, &name).map_err(|err| self.io_err("replace", &rel, err))?;
                }
                let (ft, dev) = match kind {
                    EntryType::Fifo => (FileType::Fifo, 0),
                    _ => {
                        let major = header
                            .device_major()
                            .map_err(|err| corrupt(err, &raw))?
                            .unwrap_or(0);
                        let minor = header
                            .device_minor()
                            .map_err(|err| corrupt(err, &raw))?
                            .unwrap_or(0);
                        let ft = if kind == EntryType::Char {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        (ft, rustix::fs::makedev(major, minor))
                    }
                };
                match rustix::fs::mknodat(&dir, &name, ft, Mode::from_raw_mode(0o600), dev) {
                    Ok(()) => {}
                    Err(Errno::PERM) | Err(Errno::ACCESS) if ft != FileType::Fifo => {
                        tracing::warn!(path = %rel.display(), "skipping device node: no permission to create it");
                        self.skipped_devices += 1;
                        return Ok(());
                    }
                    Err(err) => return Err(self.io_err("create node", &rel, err)),
                }
                self.set_owner(&dir, &name, &rel, owner)?;
                rustix::fs::chmodat(&dir, &name, Mode::from_raw_mode(mode), AtFlags::empty())
                    .map_err(|err| self.io_err("change mode of", &rel, err))?;
                rustix::fs::utimensat(&dir, &name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|err| self.io_err("set mtime of", &rel, err))?;
            }
            EntryType::GNUSparse => {
                return Err(Error::refused(&raw, "sparse files are not supported"));
            }
            other => {
                tracing::warn!(entry = %String::from_utf8_lossy(&raw), kind = ?other, "skipping tar entry of unsupported type");
            }
        }
        Ok(())
    }

    fn io_err(&self, op: &'static str, rel: &Path, err: Errno) -> Error {
        Error::io(op, self.root.path.join(rel), err.into())
    }

    fn touch(&mut self, rel: &Path) {
        let mut cur = Some(rel);
        while let Some(path) = cur {
            if path.as_os_str().is_empty() || !self.touched.insert(path.to_path_buf()) {
                break;
            }
            cur = path.parent();
        }
    }

    fn set_owner(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        rel: &Path,
        owner: (u32, u32),
    ) -> Result<(), Error> {
        if !self.chown {
            return Ok(());
        }
        rustix::fs::chownat(
            dir,
            name,
            Some(rustix::fs::Uid::from_raw(owner.0)),
            Some(rustix::fs::Gid::from_raw(owner.1)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|err| self.io_err("change owner of", rel, err))
    }

    fn set_xattrs(&self, fd: impl AsFd, rel: &Path, xattrs: &[(OsString, Vec<u8>)]) {
        for (key, value) in xattrs {
            if let Err(err) =
                rustix::fs::fsetxattr(&fd, key.as_os_str(), value, rustix::fs::XattrFlags::empty())
            {
                tracing::warn!(path = %rel.display(), key = %key.to_string_lossy(), error = %err, "cannot set extended attribute");
            }
        }
    }

    /// `.wh.<target>` in `parent`: delete what lower layers had at `parent/target`.
    fn whiteout(&mut self, parent: &Path, target: &OsStr, raw: &[u8]) -> Result<(), Error> {
        if target.is_empty() || target == "." || target == ".." {
            return Err(Error::refused(raw, "whiteout of an invalid name"));
        }
        let rel = parent.join(target);
        let Some(dir) = self.root.open_dir(parent, false)? else {
            return Ok(());
        };
        if self.touched.contains(&rel) {
            // This layer wrote `target` (or something below it) before its whiteout: keep
            // what it wrote and hide only the lower content.
            let is_dir = stat_at(&dir, target)
                .map_err(|err| self.io_err("stat", &rel, err))?
                .is_some_and(|st| file_type(&st) == FileType::Directory);
            if is_dir {
                let sub = open_dir_nofollow(&dir, target)
                    .map_err(|err| self.io_err("open directory", &rel, err))?;
                self.prune(&sub, &rel)?;
            }
            return Ok(());
        }
        remove_all_at(&dir, target).map_err(|err| self.io_err("remove", &rel, err))
    }

    /// `.wh..wh..opq` in `dir_rel`: remove everything lower layers had there.
    fn opaque(&mut self, dir_rel: &Path, _raw: &[u8]) -> Result<(), Error> {
        let Some(dir) = self.root.open_dir(dir_rel, false)? else {
            return Ok(());
        };
        self.prune(&dir, dir_rel)
    }

    /// Removes everything under `dir` that this layer did not write.
    fn prune(&self, dir: &OwnedFd, dir_rel: &Path) -> Result<(), Error> {
        let names = list_dir(dir).map_err(|err| self.io_err("list", dir_rel, err))?;
        for name in names {
            let rel = dir_rel.join(&name);
            if !self.touched.contains(&rel) {
                remove_all_at(dir, &name).map_err(|err| self.io_err("remove", &rel, err))?;
                continue;
            }
            let is_dir = stat_at(dir, &name)
                .map_err(|err| self.io_err("stat", &rel, err))?
                .is_some_and(|st| file_type(&st) == FileType::Directory);
            if is_dir {
                let sub = open_dir_nofollow(dir, &name)
                    .map_err(|err| self.io_err("open directory", &rel, err))?;
                self.prune(&sub, &rel)?;
            }
        }
        Ok(())
    }

    /// Applies the deferred directory modes and mtimes, deepest first.
    fn finish_dirs(&mut self) -> Result<(), Error> {
        let dirs = std::mem::take(&mut self.dirs);
        for (rel, (mode, mtime)) in dirs.iter().rev() {
            let (parent, name) = split(rel);
            let Some(dir) = self.root.open_dir(parent, false)? else {
                continue;
            };
            let still_dir = stat_at(&dir, name)
                .map_err(|err| self.io_err("stat", rel, err))?
                .is_some_and(|st| file_type(&st) == FileType::Directory);
            if !still_dir {
                continue;
            }
            rustix::fs::chmodat(&dir, name, Mode::from_raw_mode(*mode), AtFlags::empty())
                .map_err(|err| self.io_err("change mode of", rel, err))?;
            rustix::fs::utimensat(&dir, name, &times(*mtime), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|err| self.io_err("set mtime of", rel, err))?;
        }
        Ok(())
    }
}

fn times(mtime: i64) -> Timestamps {
    let ts = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: ts,
        last_modification: ts,
    }
}

/// `SCHILY.xattr.<name>` PAX records of an entry.
fn pax_xattrs(entry: &mut tar::Entry<'_, &mut dyn Read>) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            if let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.")
                && !key.is_empty()
                && !key.contains(&0)
            {
                out.push((
                    OsStr::from_bytes(key).to_os_string(),
                    ext.value_bytes().to_vec(),
                ));
            }
        }
    }
    Ok(out)
}
