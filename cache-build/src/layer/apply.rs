//! Applying a layer (with whiteouts) or extracting an archive, confined to a root directory.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::fsops::{
    Root, clean_name, create_new_file, file_type, list_dir, open_dir_nofollow, remove_all_at,
    split, stat_at,
};
use super::write::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use super::{Compression, Error, pipe};
use cache_core::limits::Limits;

/// Bounds on what one layer may unpack to, from `--limit` and the blob's compressed size: a
/// decompression bomb is stopped after about `max_size` bytes, never written out in full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerLimits {
    /// Uncompressed bytes (of the tar stream) the layer may have.
    pub max_size: u64,
    /// The `--limit` name that set `max_size` (`layer-size` or `layer-ratio`).
    pub size_limit: &'static str,
    /// Tar entries the layer may have.
    pub max_entries: u64,
}

impl LayerLimits {
    /// No bound: for layers this build wrote itself and archives of the build context.
    pub const NONE: LayerLimits = LayerLimits {
        max_size: u64::MAX,
        size_limit: "layer-size",
        max_entries: u64::MAX,
    };

    /// The bounds of a blob of `compressed` bytes: `layer_size`, and `layer_ratio` times its
    /// size unless that is below [`Limits::RATIO_FLOOR`].
    pub fn for_blob(limits: &Limits, compressed: u64) -> LayerLimits {
        let by_ratio = limits
            .layer_ratio
            .saturating_mul(compressed)
            .max(Limits::RATIO_FLOOR);
        let (max_size, size_limit) = if by_ratio < limits.layer_size {
            (by_ratio, "layer-ratio")
        } else {
            (limits.layer_size, "layer-size")
        };
        LayerLimits {
            max_size,
            size_limit,
            max_entries: limits.layer_entries,
        }
    }
}

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
        self.n_bytes += n as u64;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A reader that fails once more than `cap` bytes went through it.
struct Capped<R> {
    inner: R,
    n_bytes: u64,
    cap: u64,
    exceeded: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.exceeded {
            return Err(io::Error::other("layer size limit exceeded"));
        }
        // Never ask for more than one byte past the cap: what is written stays within it.
        let room = self.cap.saturating_sub(self.n_bytes).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.n_bytes += n as u64;
        if self.n_bytes > self.cap {
            self.exceeded = true;
            return Err(io::Error::other("layer size limit exceeded"));
        }
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
    match pipe::fill(reader, buf) {
        (_, Some(err)) => Err(err),
        (filled, None) => Ok(filled),
    }
}

/// Wraps `source` in the decoder its first bytes call for.
fn decoder<'a>(
    magic: Magic,
    source: impl Read + 'a,
    what: &str,
) -> Result<Box<dyn Read + 'a>, Error> {
    Ok(match magic {
        // Large reads of the compressed stream: flate2's own buffer is 32 KiB.
        Magic::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(
            io::BufReader::with_capacity(256 << 10, source),
        )),
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
/// `limits` bound the uncompressed size and the entries: past them extraction stops with
/// [`Error::Limit`] (having written at most about `max_size` bytes).
///
/// The returned digest and diffID cover every byte of the stream; the caller compares them
/// with what it expected. On error the root is left partly modified.
pub fn apply_layer(
    reader: impl Read,
    media_type: &str,
    root: &Path,
    limits: &LayerLimits,
) -> Result<ApplyStats, Error> {
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

    // This thread reads, hashes and inflates the blob; another parses the tar and writes the
    // files (and hashes the diffID), so decompression overlaps with file writing.
    let mut tar_stream = Capped {
        inner: decoder(
            magic,
            io::Cursor::new(&head[..n_head]).chain(&mut blob),
            "layer",
        )?,
        n_bytes: 0,
        cap: limits.max_size,
        exceeded: false,
    };
    let (sender, mut input) = pipe::pipe();
    let max_entries = limits.max_entries;
    // Warnings from the extracting thread keep the caller's span.
    let span = tracing::Span::current();
    let (pumped, extracted) = std::thread::scope(|scope| {
        let extract = scope.spawn(move || {
            let _span = span.enter();
            let mut extractor = Extractor::new(root, true, max_entries);
            extractor.run(&mut input)?;
            // Hash whatever follows the end-of-archive marker too.
            io::copy(&mut input, &mut io::sink()).map_err(|err| Error::Corrupt {
                context: "after the end of the tar archive".to_string(),
                source: err,
            })?;
            Ok::<_, Error>(ApplyStats {
                diff_id: input.digest(),
                uncompressed_size: input.n_bytes,
                entries: extractor.entries,
                skipped_devices: extractor.skipped_devices,
                ..ApplyStats::default()
            })
        });
        let pumped = sender.pump(&mut tar_stream);
        let extracted = extract
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (pumped, extracted)
    });
    if tar_stream.exceeded {
        return Err(Error::Limit {
            limit: limits.size_limit,
            detail: format!("it unpacks to more than {} bytes", limits.max_size),
        });
    }
    let mut stats = extracted?;
    drop(tar_stream);
    debug_assert!(pumped, "the extraction read to the end");
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
    Extractor::new(dest, false, u64::MAX).run(&mut stream)?;
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

/// The paths a layer wrote, with all their ancestors, kept as 128-bit hashes computed one
/// component at a time: a deep path costs time and memory in its length, never in its length
/// times its depth (a layer of entries 1000 directories deep would otherwise hold and hash
/// every prefix of every entry).
#[derive(Default)]
struct Touched {
    keys: std::hash::RandomState,
    seen: HashSet<(u64, u64)>,
}

impl Touched {
    /// The hash of every non-empty prefix of `rel`, shortest first.
    fn prefixes(&self, rel: &Path) -> Vec<(u64, u64)> {
        use std::hash::{BuildHasher, Hasher};
        let mut low = self.keys.build_hasher();
        let mut high = self.keys.build_hasher();
        high.write_u8(1);
        let mut out = Vec::new();
        for comp in rel.components() {
            let bytes = comp.as_os_str().as_bytes();
            low.write(bytes);
            low.write_u8(b'/');
            high.write(bytes);
            high.write_u8(b'/');
            out.push((low.finish(), high.finish()));
        }
        out
    }

    fn insert_with_ancestors(&mut self, rel: &Path) {
        for key in self.prefixes(rel).into_iter().rev() {
            if !self.seen.insert(key) {
                break;
            }
        }
    }

    fn contains(&self, rel: &Path) -> bool {
        self.prefixes(rel)
            .last()
            .is_some_and(|key| self.seen.contains(key))
    }
}

/// Extracts tar entries under a [`Root`].
struct Extractor {
    root: Root,
    whiteouts: bool,
    chown: bool,
    /// Paths this layer wrote, with all their ancestors.
    touched: Touched,
    /// Directory modes and mtimes, applied at the end so that writing children does not
    /// change them (and read-only directories can still be filled).
    dirs: BTreeMap<PathBuf, (u32, i64)>,
    entries: u64,
    max_entries: u64,
    skipped_devices: u64,
    /// The directory of the previous entry: consecutive entries of one directory resolve it
    /// once. Forgotten whenever anything is removed, so it never names a replaced directory.
    last_dir: Option<(PathBuf, Arc<OwnedFd>)>,
    /// File contents pass through here: few, large writes.
    buf: Vec<u8>,
}

/// Where an entry goes: its directory, opened inside the root, and its name there.
struct Place {
    dir: Arc<OwnedFd>,
    name: OsString,
    /// The entry's path relative to the root, for messages and bookkeeping.
    rel: PathBuf,
}

/// What an entry's header (and its PAX records, which win) says about what it creates.
struct Attrs {
    /// Permission bits, `0o7777` at most.
    mode: u32,
    /// Uid and gid.
    owner: (u32, u32),
    mtime: i64,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Attrs {
    fn read(entry: &mut tar::Entry<'_, &mut dyn Read>, raw: &[u8]) -> Result<Attrs, Error> {
        let header = entry.header().clone();
        let pax = pax_info(entry).map_err(|err| corrupt(err, raw))?;
        let old = header.as_old();
        let mode = numeric(header.mode().map(u64::from), &old.mode)
            .map_err(|err| corrupt(err, raw))? as u32
            & 0o7777;
        let uid = match pax.uid {
            Some(uid) => uid,
            None => numeric(header.uid(), &old.uid).map_err(|err| corrupt(err, raw))?,
        };
        let gid = match pax.gid {
            Some(gid) => gid,
            None => numeric(header.gid(), &old.gid).map_err(|err| corrupt(err, raw))?,
        };
        let mtime = match pax.mtime {
            Some(mtime) => mtime,
            None => {
                i64::try_from(numeric(header.mtime(), &old.mtime).map_err(|err| corrupt(err, raw))?)
                    .unwrap_or(i64::MAX)
            }
        };
        let owner = match (u32::try_from(uid), u32::try_from(gid)) {
            (Ok(uid), Ok(gid)) => (uid, gid),
            _ => return Err(Error::refused(raw, "uid or gid does not fit in 32 bits")),
        };
        Ok(Attrs {
            mode,
            owner,
            mtime,
            xattrs: pax.xattrs,
        })
    }
}

/// Bytes per write of file contents.
const WRITE_CHUNK: usize = 1 << 20;

fn corrupt(err: io::Error, entry: &[u8]) -> Error {
    Error::Corrupt {
        context: format!("entry {:?}", String::from_utf8_lossy(entry)),
        source: err,
    }
}

impl Extractor {
    fn new(root: Root, whiteouts: bool, max_entries: u64) -> Extractor {
        Extractor {
            root,
            whiteouts,
            chown: rustix::process::geteuid().is_root(),
            touched: Touched::default(),
            dirs: BTreeMap::new(),
            entries: 0,
            max_entries,
            skipped_devices: 0,
            last_dir: None,
            buf: Vec::new(),
        }
    }

    /// The directory `parent` (created if missing), resolved inside the root.
    fn parent_dir(&mut self, parent: &Path) -> Result<Arc<OwnedFd>, Error> {
        if let Some((path, fd)) = &self.last_dir
            && path == parent
        {
            return Ok(Arc::clone(fd));
        }
        let fd = Arc::new(
            self.root
                .open_dir(parent, true)?
                .expect("open_dir with create returns a directory"),
        );
        self.last_dir = Some((parent.to_path_buf(), Arc::clone(&fd)));
        Ok(fd)
    }

    /// Runs `create`; if it fails because `name` exists, removes what is there (a directory
    /// with all it holds) and runs it once more.
    fn replacing<T>(
        &mut self,
        dir: &OwnedFd,
        name: &OsStr,
        rel: &Path,
        mut create: impl FnMut() -> Result<T, Errno>,
    ) -> Result<Result<T, Errno>, Error> {
        match create() {
            Err(Errno::EXIST) => {
                self.last_dir = None;
                remove_all_at(dir, name).map_err(|err| self.io_err("replace", rel, err))?;
                Ok(create())
            }
            other => Ok(other),
        }
    }

    /// Copies an entry's contents to `file` in writes of up to [`WRITE_CHUNK`] bytes.
    fn copy_data(&mut self, entry: &mut impl Read, file: &mut File) -> io::Result<()> {
        use std::io::Write as _;
        if self.buf.is_empty() {
            self.buf = vec![0; WRITE_CHUNK];
        }
        loop {
            let filled = read_head(entry, &mut self.buf)?;
            if filled == 0 {
                return Ok(());
            }
            file.write_all(&self.buf[..filled])?;
            if filled < self.buf.len() {
                return Ok(());
            }
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
        if self.entries > self.max_entries {
            return Err(Error::Limit {
                limit: "layer-entries",
                detail: format!("it has more than {} entries", self.max_entries),
            });
        }
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
        let attrs = Attrs::read(entry, &raw)?;
        let place = Place {
            dir: self.parent_dir(&parent)?,
            name,
            rel,
        };

        // Each kind is created first and what was there is looked at only if that fails with
        // `EEXIST`: on a fresh root most entries cost no `lstat`.
        match kind {
            EntryType::Directory => self.make_dir(place, attrs),
            EntryType::Regular | EntryType::Continuous => {
                self.make_file(entry, &place, &attrs, &raw)
            }
            EntryType::Symlink => self.make_symlink(entry, &place, &attrs, &raw),
            EntryType::Link => self.make_hard_link(entry, &place, &raw),
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.make_node(entry.header(), &place, &attrs, &raw)
            }
            EntryType::GNUSparse => Err(Error::refused(&raw, "sparse files are not supported")),
            other => {
                tracing::warn!(entry = %String::from_utf8_lossy(&raw), kind = ?other, "skipping tar entry of unsupported type");
                Ok(())
            }
        }
    }

    fn make_dir(&mut self, place: Place, attrs: Attrs) -> Result<(), Error> {
        let Place { dir, name, rel } = place;
        match rustix::fs::mkdirat(&*dir, &name, Mode::from_raw_mode(0o755)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let is_dir = stat_at(&*dir, &name)
                    .map_err(|err| self.io_err("stat", &rel, err))?
                    .is_some_and(|st| file_type(&st) == FileType::Directory);
                if !is_dir {
                    self.replacing(&dir, &name, &rel, || {
                        rustix::fs::mkdirat(&*dir, &name, Mode::from_raw_mode(0o755))
                    })?
                    .map_err(|err| self.io_err("create directory", &rel, err))?;
                }
            }
            Err(err) => return Err(self.io_err("create directory", &rel, err)),
        }
        self.set_owner(&dir, &name, &rel, attrs.owner)?;
        if !attrs.xattrs.is_empty() {
            match open_dir_nofollow(&dir, &name) {
                Ok(fd) => self.set_xattrs(&fd, &rel, &attrs.xattrs),
                Err(err) => return Err(self.io_err("open directory", &rel, err)),
            }
        }
        self.dirs.insert(rel, (attrs.mode, attrs.mtime));
        Ok(())
    }

    fn make_file(
        &mut self,
        entry: &mut impl Read,
        place: &Place,
        attrs: &Attrs,
        raw: &[u8],
    ) -> Result<(), Error> {
        let Place { dir, name, rel } = place;
        let fd = self
            .replacing(dir, name, rel, || create_new_file(&**dir, name))?
            .map_err(|err| self.io_err("create file", rel, err))?;
        let mut file = File::from(fd);
        self.copy_data(entry, &mut file)
            .map_err(|err| corrupt(err, raw))?;
        if self.chown {
            rustix::fs::fchown(
                &file,
                Some(rustix::fs::Uid::from_raw(attrs.owner.0)),
                Some(rustix::fs::Gid::from_raw(attrs.owner.1)),
            )
            .map_err(|err| self.io_err("change owner of", rel, err))?;
        }
        rustix::fs::fchmod(&file, Mode::from_raw_mode(attrs.mode))
            .map_err(|err| self.io_err("change mode of", rel, err))?;
        self.set_xattrs(&file, rel, &attrs.xattrs);
        rustix::fs::futimens(&file, &times(attrs.mtime))
            .map_err(|err| self.io_err("set mtime of", rel, err))
    }

    fn make_symlink(
        &mut self,
        entry: &tar::Entry<'_, &mut dyn Read>,
        place: &Place,
        attrs: &Attrs,
        raw: &[u8],
    ) -> Result<(), Error> {
        let Place { dir, name, rel } = place;
        let target = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .filter(|t| !t.is_empty() && !t.contains(&0))
            .ok_or_else(|| Error::refused(raw, "symlink without a valid target"))?;
        self.replacing(dir, name, rel, || {
            rustix::fs::symlinkat(OsStr::from_bytes(&target), &**dir, name)
        })?
        .map_err(|err| self.io_err("create symlink", rel, err))?;
        self.set_owner(dir, name, rel, attrs.owner)?;
        rustix::fs::utimensat(dir, name, &times(attrs.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|err| self.io_err("set mtime of", rel, err))
    }

    /// Links to an entry the layer (or a lower one) already wrote; the target is resolved
    /// inside the root like any entry's path.
    fn make_hard_link(
        &mut self,
        entry: &tar::Entry<'_, &mut dyn Read>,
        place: &Place,
        raw: &[u8],
    ) -> Result<(), Error> {
        let Place { dir, name, rel } = place;
        let target_raw = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .ok_or_else(|| Error::refused(raw, "hard link without a target"))?;
        let target = clean_name(&target_raw).map_err(|_| {
            Error::refused(
                raw,
                format!(
                    "hard link target {:?} is outside the root",
                    String::from_utf8_lossy(&target_raw)
                ),
            )
        })?;
        if target.as_os_str().is_empty() {
            return Err(Error::refused(raw, "hard link to the root directory"));
        }
        if target == *rel {
            return Ok(());
        }
        let (tparent, tname) = split(&target);
        let tdir = self.root.open_dir(tparent, false)?.ok_or_else(|| {
            Error::refused(raw, format!("hard link target {target:?} does not exist"))
        })?;
        self.replacing(dir, name, rel, || {
            rustix::fs::linkat(&tdir, tname, &**dir, name, AtFlags::empty())
        })?
        .map_err(|err| {
            Error::refused(
                raw,
                format!("cannot link to {target:?}: {}", io::Error::from(err)),
            )
        })?;
        Ok(())
    }

    /// A character or block device or a FIFO; devices are skipped with a warning where this
    /// process may not create them.
    fn make_node(
        &mut self,
        header: &tar::Header,
        place: &Place,
        attrs: &Attrs,
        raw: &[u8],
    ) -> Result<(), Error> {
        let Place { dir, name, rel } = place;
        let (ft, dev) = match header.entry_type() {
            EntryType::Fifo => (FileType::Fifo, 0),
            kind => {
                let major = header
                    .device_major()
                    .map_err(|err| corrupt(err, raw))?
                    .unwrap_or(0);
                let minor = header
                    .device_minor()
                    .map_err(|err| corrupt(err, raw))?
                    .unwrap_or(0);
                let ft = if kind == EntryType::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                (ft, rustix::fs::makedev(major, minor))
            }
        };
        let made = self.replacing(dir, name, rel, || {
            rustix::fs::mknodat(&**dir, name, ft, Mode::from_raw_mode(0o600), dev)
        })?;
        match made {
            Ok(()) => {}
            Err(Errno::PERM) | Err(Errno::ACCESS) if ft != FileType::Fifo => {
                tracing::warn!(path = %rel.display(), "skipping device node: no permission to create it");
                self.skipped_devices += 1;
                return Ok(());
            }
            Err(err) => return Err(self.io_err("create node", rel, err)),
        }
        self.set_owner(dir, name, rel, attrs.owner)?;
        rustix::fs::chmodat(dir, name, Mode::from_raw_mode(attrs.mode), AtFlags::empty())
            .map_err(|err| self.io_err("change mode of", rel, err))?;
        rustix::fs::utimensat(dir, name, &times(attrs.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|err| self.io_err("set mtime of", rel, err))
    }

    fn io_err(&self, op: &'static str, rel: &Path, err: Errno) -> Error {
        Error::io(op, self.root.path.join(rel), err.into())
    }

    fn touch(&mut self, rel: &Path) {
        self.touched.insert_with_ancestors(rel);
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
        self.last_dir = None;
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
        self.last_dir = None;
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

/// An empty numeric header field (all NUL or spaces) means 0, as in Go's archive/tar.
fn numeric(parsed: io::Result<u64>, field: &[u8]) -> io::Result<u64> {
    match parsed {
        Ok(value) => Ok(value),
        Err(_) if field.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        Err(err) => Err(err),
    }
}

/// PAX records of an entry that the header fields do not carry.
#[derive(Default)]
struct PaxInfo {
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<i64>,
    /// `SCHILY.xattr.<name>` records.
    xattrs: Vec<(OsString, Vec<u8>)>,
}

fn pax_info(entry: &mut tar::Entry<'_, &mut dyn Read>) -> io::Result<PaxInfo> {
    let mut info = PaxInfo::default();
    let Some(exts) = entry.pax_extensions()? else {
        return Ok(info);
    };
    let bad = |key: &str| io::Error::new(io::ErrorKind::InvalidData, format!("bad PAX {key}"));
    for ext in exts {
        let ext = ext?;
        let key = ext.key_bytes();
        let value = ext.value().unwrap_or("");
        match key {
            b"uid" => info.uid = Some(value.parse().map_err(|_| bad("uid"))?),
            b"gid" => info.gid = Some(value.parse().map_err(|_| bad("gid"))?),
            b"mtime" => {
                let secs = value.split('.').next().unwrap_or("");
                info.mtime = Some(secs.parse().map_err(|_| bad("mtime"))?);
            }
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.")
                    && !name.is_empty()
                    && !name.contains(&0)
                {
                    info.xattrs.push((
                        OsStr::from_bytes(name).to_os_string(),
                        ext.value_bytes().to_vec(),
                    ));
                }
            }
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Snapshot, diff, write_layer};
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    /// Everything a round trip must preserve, per relative path.
    fn tree_state(root: &Path) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
        for item in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
            let item = item.expect("walk");
            let rel = item
                .path()
                .strip_prefix(root)
                .expect("below root")
                .to_string_lossy()
                .into_owned();
            let md = item.path().symlink_metadata().expect("lstat");
            let ft = md.file_type();
            let what = if ft.is_symlink() {
                format!(
                    "symlink -> {}",
                    fs::read_link(item.path()).expect("readlink").display()
                )
            } else if ft.is_dir() {
                "dir".to_string()
            } else if ft.is_file() {
                let content = fs::read(item.path()).expect("read");
                let mut cap = [0u8; 64];
                let cap = match rustix::fs::lgetxattr(item.path(), "security.capability", &mut cap)
                {
                    Ok(n) => format!(" cap {}", hex::encode(&cap[..n])),
                    Err(_) => String::new(),
                };
                let link = if md.nlink() > 1 {
                    let first = inodes
                        .entry((md.dev(), md.ino()))
                        .or_insert_with(|| rel.clone());
                    format!(" linked with {first}")
                } else {
                    String::new()
                };
                format!(
                    "file {} mtime {}{link}{cap}",
                    hex::encode(Sha256::digest(&content)),
                    md.mtime()
                )
            } else {
                format!("special {:o} rdev {}", md.mode() & 0o170000, md.rdev())
            };
            out.insert(
                rel,
                format!(
                    "{what} mode {:o} owner {}:{}",
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid()
                ),
            );
        }
        out
    }

    fn copy_tree(src: &Path, dst: &Path) {
        for item in walkdir::WalkDir::new(src).min_depth(1).sort_by_file_name() {
            let item = item.expect("walk");
            let rel = item.path().strip_prefix(src).expect("below root");
            let target = dst.join(rel);
            let md = item.path().symlink_metadata().expect("lstat");
            if md.file_type().is_symlink() {
                symlink(fs::read_link(item.path()).expect("readlink"), &target).expect("symlink");
            } else if md.is_dir() {
                fs::create_dir(&target).expect("mkdir");
                fs::set_permissions(&target, md.permissions()).expect("chmod");
            } else {
                fs::copy(item.path(), &target).expect("copy");
                let mtime = filetime::FileTime::from_last_modification_time(&md);
                filetime::set_file_mtime(&target, mtime).expect("mtime");
            }
        }
    }

    fn build_original(root: &Path) {
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        fs::write(root.join("etc/passwd"), b"root:x:0:0").expect("write");
        fs::write(root.join("etc/keep"), b"file that becomes a dir").expect("write");
        fs::create_dir_all(root.join("bin")).expect("mkdir");
        fs::write(root.join("bin/tool"), b"#!/bin/sh\n").expect("write");
        fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
        fs::create_dir_all(root.join("data/old/sub")).expect("mkdir");
        fs::write(root.join("data/old/f1"), b"1").expect("write");
        fs::write(root.join("data/old/sub/f2"), b"2").expect("write");
        fs::write(root.join("data/stays"), b"s").expect("write");
        fs::create_dir_all(root.join("redo/b")).expect("mkdir");
        fs::write(root.join("redo/a"), b"a").expect("write");
        fs::write(root.join("redo/b/c"), b"c").expect("write");
        fs::write(root.join("del.txt"), b"bye").expect("write");
        fs::write(root.join("chm"), b"mode").expect("write");
        symlink("etc/passwd", root.join("link")).expect("symlink");
        fs::create_dir(root.join("dir_to_file")).expect("mkdir");
        fs::write(root.join("dir_to_file/child"), b"c").expect("write");
    }

    fn modify(root: &Path) {
        fs::write(root.join("etc/new"), b"new file").expect("write");
        fs::create_dir_all(root.join("newdir/x/y")).expect("mkdir");
        fs::write(root.join("newdir/x/y/z"), vec![42u8; 70_000]).expect("write");
        fs::write(root.join("etc/passwd"), b"root:x:0:0\nuser:x:1000:1000").expect("write");
        fs::set_permissions(root.join("chm"), fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::set_permissions(root.join("bin"), fs::Permissions::from_mode(0o700)).expect("chmod");
        fs::remove_file(root.join("del.txt")).expect("rm");
        fs::remove_dir_all(root.join("data/old")).expect("rm");
        fs::remove_dir_all(root.join("redo")).expect("rm");
        fs::create_dir(root.join("redo")).expect("mkdir");
        fs::write(root.join("redo/z"), b"z").expect("write");
        fs::remove_file(root.join("link")).expect("rm");
        symlink("bin/tool", root.join("link")).expect("symlink");
        symlink("/nonexistent/abs", root.join("abs_link")).expect("symlink");
        symlink("t/".repeat(80), root.join("long_target")).expect("symlink");
        // File capabilities (v2, cap_net_raw permitted) survive as a PAX SCHILY.xattr record.
        let cap: [u8; 20] = [
            0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let cap_set = rustix::fs::setxattr(
            root.join("bin/tool").as_path(),
            "security.capability",
            &cap,
            rustix::fs::XattrFlags::empty(),
        );
        if rustix::process::geteuid().is_root() {
            cap_set.expect("root can set file capabilities");
        }
        fs::hard_link(root.join("etc/new"), root.join("hl")).expect("hardlink");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("fifo").as_path(),
            FileType::Fifo,
            Mode::from_raw_mode(0o640),
            0,
        )
        .expect("mkfifo");
        let long = "n".repeat(110);
        fs::create_dir_all(root.join("long").join(&long)).expect("mkdir");
        fs::write(root.join("long").join(&long).join(&long), b"long name").expect("write");
        fs::write(root.join("ünïcode"), b"utf8").expect("write");
        fs::write(root.join("suid"), b"s").expect("write");
        fs::set_permissions(root.join("suid"), fs::Permissions::from_mode(0o4755)).expect("chmod");
        fs::remove_file(root.join("etc/keep")).expect("rm");
        fs::create_dir_all(root.join("etc/keep/inner")).expect("mkdir");
        fs::remove_dir_all(root.join("dir_to_file")).expect("rm");
        fs::write(root.join("dir_to_file"), b"now a file").expect("write");
        if rustix::process::geteuid().is_root() {
            rustix::fs::chownat(
                rustix::fs::CWD,
                root.join("etc/new").as_path(),
                Some(rustix::fs::Uid::from_raw(1234)),
                Some(rustix::fs::Gid::from_raw(5678)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .expect("chown");
        }
    }

    fn round_trip(compression: Compression) {
        let work = tempfile::tempdir().expect("tempdir");
        let built = work.path().join("built");
        let applied = work.path().join("applied");
        fs::create_dir(&built).expect("mkdir");
        fs::create_dir(&applied).expect("mkdir");
        build_original(&built);
        copy_tree(&built, &applied);
        assert_eq!(tree_state(&built), tree_state(&applied));

        let snap = Snapshot::capture(&built).expect("capture");
        modify(&built);
        let changes = diff(&snap, &built).expect("diff");
        let mut blob = Vec::new();
        let info = write_layer(&built, &changes, compression, &mut blob).expect("write");
        let stats = apply_layer(
            &blob[..],
            info.media_type.as_str(),
            &applied,
            &LayerLimits::NONE,
        )
        .expect("apply");

        assert_eq!(stats.digest, info.digest);
        assert_eq!(stats.diff_id, info.diff_id);
        assert_eq!(stats.bytes, info.size);
        assert_eq!(stats.uncompressed_size, info.uncompressed_size);
        assert_eq!(stats.entries, info.n_entries);
        assert_eq!(stats.skipped_devices, 0);

        let want = tree_state(&built);
        let got = tree_state(&applied);
        let diffs: Vec<_> = want
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}: want {v}, got {:?}", got.get(k)))
            .chain(
                got.keys()
                    .filter(|k| !want.contains_key(*k))
                    .map(|k| format!("{k}: unexpected")),
            )
            .collect();
        assert!(diffs.is_empty(), "{compression:?}: {diffs:#?}");
        assert!(got["hl"].contains("linked with etc/new"), "{}", got["hl"]);
        if rustix::process::geteuid().is_root() {
            assert!(
                got["bin/tool"].contains(" cap 00000002"),
                "{}",
                got["bin/tool"]
            );
        }
    }

    #[test]
    fn round_trip_gzip() {
        round_trip(Compression::GZIP);
    }

    #[test]
    fn round_trip_zstd() {
        round_trip(Compression::ZSTD);
    }

    #[test]
    fn round_trip_uncompressed() {
        round_trip(Compression::Uncompressed);
    }

    /// One hand-made tar entry; names are written raw so that malicious ones survive.
    fn raw_entry(name: &[u8], kind: EntryType, link: &[u8], data: &[u8]) -> Vec<u8> {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_size(data.len() as u64);
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_cksum();
        let mut out = header.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    fn tar_of(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut out: Vec<u8> = entries.concat();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    /// A root next to an `outside` directory holding a sentinel file.
    struct Jail {
        dir: tempfile::TempDir,
    }

    impl Jail {
        fn new() -> Jail {
            let dir = tempfile::tempdir().expect("tempdir");
            fs::create_dir(dir.path().join("root")).expect("mkdir");
            fs::create_dir(dir.path().join("outside")).expect("mkdir");
            fs::write(dir.path().join("outside/sentinel"), b"untouched").expect("write");
            Jail { dir }
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("root")
        }

        fn outside(&self) -> PathBuf {
            self.dir.path().join("outside")
        }

        /// State of everything in the temp dir except the root.
        fn outside_state(&self) -> BTreeMap<String, String> {
            let mut state = tree_state(self.dir.path());
            state.retain(|k, _| !k.starts_with("root/"));
            state
        }

        fn apply(&self, entries: &[Vec<u8>]) -> (Result<ApplyStats, Error>, bool) {
            let before = self.outside_state();
            let etc_passwd = fs::read("/etc/passwd").ok();
            let res = apply_layer(&tar_of(entries)[..], "", &self.root(), &LayerLimits::NONE);
            let untouched =
                before == self.outside_state() && etc_passwd == fs::read("/etc/passwd").ok();
            (res, untouched)
        }
    }

    #[test]
    fn dotdot_entry_is_refused() {
        let jail = Jail::new();
        let (res, untouched) = jail.apply(&[raw_entry(
            b"../outside/escape",
            EntryType::Regular,
            b"",
            b"pwned",
        )]);
        assert!(matches!(res, Err(Error::Refused { .. })), "{res:?}");
        assert!(untouched);
        assert!(!jail.outside().join("escape").exists());
    }

    #[test]
    fn absolute_entry_is_confined() {
        let jail = Jail::new();
        let abs = format!("{}/abs", jail.outside().display());
        let (res, untouched) = jail.apply(&[
            raw_entry(b"/abs/path", EntryType::Regular, b"", b"data"),
            raw_entry(abs.as_bytes(), EntryType::Regular, b"", b"data"),
        ]);
        res.expect("absolute names are taken relative to the root");
        assert!(untouched);
        assert_eq!(
            fs::read(jail.root().join("abs/path")).expect("confined"),
            b"data"
        );
        assert!(jail.root().join(abs.trim_start_matches('/')).exists());
    }

    #[test]
    fn symlink_to_etc_is_not_followed() {
        let jail = Jail::new();
        let (res, untouched) = jail.apply(&[
            raw_entry(b"evil", EntryType::Symlink, b"/etc", b""),
            raw_entry(b"evil/passwd", EntryType::Regular, b"", b"pwned"),
        ]);
        assert!(untouched);
        // `/etc` inside the root does not exist: either refused or created inside the root.
        if res.is_ok() {
            assert_eq!(
                fs::read(jail.root().join("etc/passwd")).expect("read"),
                b"pwned"
            );
        }
        assert!(
            fs::symlink_metadata(jail.root().join("evil"))
                .expect("symlink created as is")
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn symlink_to_outside_dir_is_not_followed() {
        let jail = Jail::new();
        let target = jail.outside();
        let (res, untouched) = jail.apply(&[
            raw_entry(
                b"evil",
                EntryType::Symlink,
                target.as_os_str().as_bytes(),
                b"",
            ),
            raw_entry(b"evil/sentinel", EntryType::Regular, b"", b"pwned"),
        ]);
        assert!(untouched, "{res:?}");
        assert_eq!(
            fs::read(jail.outside().join("sentinel")).expect("read"),
            b"untouched"
        );
    }

    #[test]
    fn relative_symlink_up_is_clamped_to_the_root() {
        let jail = Jail::new();
        let (res, untouched) = jail.apply(&[
            raw_entry(b"up", EntryType::Symlink, b"../../..", b""),
            raw_entry(b"up/x", EntryType::Regular, b"", b"confined"),
            raw_entry(b"up/outside/sentinel", EntryType::Regular, b"", b"pwned"),
        ]);
        res.expect("`up` resolves to the root itself");
        assert!(untouched);
        assert_eq!(fs::read(jail.root().join("x")).expect("read"), b"confined");
        assert_eq!(
            fs::read(jail.root().join("outside/sentinel")).expect("read"),
            b"pwned"
        );
    }

    #[test]
    fn symlinked_parents_resolve_inside_the_root() {
        // Merged-/usr images: `lib -> usr/lib` and an absolute `lib64 -> /usr/lib64`.
        let jail = Jail::new();
        let root = jail.root();
        fs::create_dir_all(root.join("usr/lib")).expect("mkdir");
        fs::create_dir_all(root.join("usr/lib64")).expect("mkdir");
        symlink("usr/lib", root.join("lib")).expect("symlink");
        symlink("/usr/lib64", root.join("lib64")).expect("symlink");
        let (res, untouched) = jail.apply(&[
            raw_entry(b"lib/libfoo.so", EntryType::Regular, b"", b"foo"),
            raw_entry(b"lib64/ld.so", EntryType::Regular, b"", b"ld"),
            raw_entry(b"lib64/ld-link", EntryType::Link, b"lib/libfoo.so", b""),
        ]);
        res.expect("apply");
        assert!(untouched);
        assert_eq!(
            fs::read(root.join("usr/lib/libfoo.so")).expect("read"),
            b"foo"
        );
        assert_eq!(fs::read(root.join("usr/lib64/ld.so")).expect("read"), b"ld");
        assert_eq!(
            fs::read(root.join("usr/lib64/ld-link")).expect("read"),
            b"foo"
        );
        assert!(
            fs::symlink_metadata(root.join("lib"))
                .expect("lstat")
                .is_symlink()
        );
    }

    #[test]
    fn hardlink_outside_is_refused() {
        let jail = Jail::new();
        let (res, untouched) = jail.apply(&[raw_entry(
            b"link",
            EntryType::Link,
            b"../../etc/passwd",
            b"",
        )]);
        assert!(matches!(res, Err(Error::Refused { .. })), "{res:?}");
        assert!(untouched);

        // An absolute target is looked up inside the root, where it does not exist.
        let (res, untouched) =
            jail.apply(&[raw_entry(b"link2", EntryType::Link, b"/etc/passwd", b"")]);
        assert!(matches!(res, Err(Error::Refused { .. })), "{res:?}");
        assert!(untouched);
        assert!(!jail.root().join("link2").exists());
    }

    #[test]
    fn file_over_symlink_replaces_the_symlink() {
        let jail = Jail::new();
        let sentinel = jail.outside().join("sentinel");
        let (res, untouched) = jail.apply(&[
            raw_entry(
                b"s",
                EntryType::Symlink,
                sentinel.as_os_str().as_bytes(),
                b"",
            ),
            raw_entry(b"s", EntryType::Regular, b"", b"pwned"),
            raw_entry(b"h", EntryType::Link, b"s", b""),
        ]);
        res.expect("apply");
        assert!(untouched);
        assert_eq!(fs::read(jail.root().join("s")).expect("read"), b"pwned");
        assert_eq!(fs::read(jail.root().join("h")).expect("read"), b"pwned");
    }

    #[test]
    fn whiteouts_do_not_follow_symlinks_out() {
        let jail = Jail::new();
        let out = jail.outside();
        // Symlinks from a lower layer.
        symlink(&out, jail.root().join("w")).expect("symlink");
        symlink(&out, jail.root().join("o")).expect("symlink");
        let (res, untouched) = jail.apply(&[
            raw_entry(b"w/.wh.sentinel", EntryType::Regular, b"", b""),
            raw_entry(b"o/.wh..wh..opq", EntryType::Regular, b"", b""),
            raw_entry(b"u", EntryType::Symlink, b"../..", b""),
            raw_entry(b"u/outside/.wh.sentinel", EntryType::Regular, b"", b""),
            raw_entry(b".wh.w", EntryType::Regular, b"", b""),
        ]);
        res.expect("apply");
        assert!(untouched);
        assert!(fs::symlink_metadata(jail.root().join("w")).is_err());
        assert!(fs::symlink_metadata(jail.root().join("o")).is_ok());
    }

    #[test]
    fn opaque_keeps_what_this_layer_adds_in_any_order() {
        let jail = Jail::new();
        let root = jail.root();
        fs::create_dir_all(root.join("d/lowerdir")).expect("mkdir");
        fs::write(root.join("d/lower"), b"lower").expect("write");
        fs::write(root.join("d/lowerdir/f"), b"lower").expect("write");
        fs::create_dir_all(root.join("e/sub")).expect("mkdir");
        fs::write(root.join("e/sub/lower"), b"lower").expect("write");
        fs::write(root.join("gone"), b"x").expect("write");
        let (res, untouched) = jail.apply(&[
            raw_entry(b"d/", EntryType::Directory, b"", b""),
            raw_entry(b"d/zz-new", EntryType::Regular, b"", b"new"),
            raw_entry(b"e/sub/upper", EntryType::Regular, b"", b"new"),
            // Opaque markers after the entries they must keep.
            raw_entry(b"d/.wh..wh..opq", EntryType::Regular, b"", b""),
            raw_entry(b"e/.wh..wh..opq", EntryType::Regular, b"", b""),
            raw_entry(b".wh.gone", EntryType::Regular, b"", b""),
            raw_entry(b".wh.missing", EntryType::Regular, b"", b""),
            raw_entry(b"f/.wh..wh.plnk", EntryType::Regular, b"", b""),
        ]);
        let stats = res.expect("apply");
        assert!(untouched);
        assert_eq!(stats.entries, 8);
        assert_eq!(
            tree_names(&root),
            ["d", "d/zz-new", "e", "e/sub", "e/sub/upper"]
        );
    }

    #[test]
    fn whiteout_of_a_path_this_layer_wrote_keeps_it() {
        let jail = Jail::new();
        let root = jail.root();
        fs::create_dir_all(root.join("x")).expect("mkdir");
        fs::write(root.join("x/lower"), b"lower").expect("write");
        let (res, _) = jail.apply(&[
            raw_entry(b"x/upper", EntryType::Regular, b"", b"up"),
            raw_entry(b".wh.x", EntryType::Regular, b"", b""),
        ]);
        res.expect("apply");
        assert_eq!(tree_names(&root), ["x", "x/upper"]);
    }

    fn tree_names(root: &Path) -> Vec<String> {
        tree_state(root).into_keys().collect()
    }

    #[test]
    fn devices_are_created_or_counted() {
        let jail = Jail::new();
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(EntryType::Char);
        header.set_mode(0o666);
        header.set_size(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_path("dev/null").expect("path");
        header.set_device_major(1).expect("major");
        header.set_device_minor(3).expect("minor");
        header.set_cksum();
        let (res, untouched) = jail.apply(&[header.as_bytes().to_vec()]);
        let stats = res.expect("apply");
        assert!(untouched);
        match fs::symlink_metadata(jail.root().join("dev/null")) {
            Ok(md) => {
                assert_eq!(md.rdev(), rustix::fs::makedev(1, 3));
                assert_eq!(stats.skipped_devices, 0);
            }
            Err(_) => assert_eq!(stats.skipped_devices, 1),
        }
    }

    #[test]
    fn digest_mismatch_is_visible_to_the_caller() {
        let jail = Jail::new();
        let tar_bytes = tar_of(&[raw_entry(b"f", EntryType::Regular, b"", b"data")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        io::Write::write_all(&mut gz, &tar_bytes).expect("gzip");
        let blob = gz.finish().expect("gzip");
        let stats = apply_layer(
            &blob[..],
            crate::layer::MEDIA_TYPE_OCI_GZIP,
            &jail.root(),
            &LayerLimits::NONE,
        )
        .expect("apply");
        assert_eq!(
            stats.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(&blob)))
        );
        assert_eq!(
            stats.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&tar_bytes)))
        );
        assert_eq!(stats.bytes, blob.len() as u64);
    }

    #[test]
    fn extract_archive_handles_plain_gzip_and_zstd() {
        let tar_bytes = tar_of(&[
            raw_entry(b"pkg/", EntryType::Directory, b"", b""),
            raw_entry(b"pkg/a.txt", EntryType::Regular, b"", b"hello"),
            raw_entry(b"pkg/.wh.keep", EntryType::Regular, b"", b""),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        io::Write::write_all(&mut gz, &tar_bytes).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let zst = zstd::encode_all(&tar_bytes[..], 3).expect("zstd");
        for (label, bytes) in [("tar", tar_bytes.clone()), ("gz", gz), ("zst", zst)] {
            let jail = Jail::new();
            let archive = jail.dir.path().join(format!("a.{label}"));
            fs::write(&archive, &bytes).expect("write");
            let done =
                extract_archive(&archive, &jail.root(), Path::new("/opt/app")).expect("extract");
            assert!(done, "{label}");
            assert_eq!(
                fs::read(jail.root().join("opt/app/pkg/a.txt")).expect(label),
                b"hello"
            );
            // No whiteout processing for ADD.
            assert!(jail.root().join("opt/app/pkg/.wh.keep").exists());
        }
    }

    #[test]
    fn extract_archive_declines_non_archives_and_confines_entries() {
        let jail = Jail::new();
        let text = jail.dir.path().join("notes.txt");
        fs::write(&text, b"just some text, not a tar archive\n".repeat(30)).expect("write");
        assert!(!extract_archive(&text, &jail.root(), Path::new("dst")).expect("check"));
        assert!(!jail.root().join("dst").exists());

        let bad = jail.dir.path().join("bad.tar");
        fs::write(
            &bad,
            tar_of(&[
                raw_entry(b"up", EntryType::Symlink, b"../../..", b""),
                raw_entry(b"up/escaped", EntryType::Regular, b"", b"x"),
                raw_entry(b"../escape", EntryType::Regular, b"", b"x"),
            ]),
        )
        .expect("write");
        let before = jail.outside_state();
        let res = extract_archive(&bad, &jail.root(), Path::new("dst"));
        assert!(matches!(res, Err(Error::Refused { .. })), "{res:?}");
        assert_eq!(before, jail.outside_state());
        // The symlink is confined to the destination directory.
        assert!(jail.root().join("dst/escaped").exists());
        assert!(!jail.root().join("escaped").exists());
    }

    #[test]
    fn garbage_and_truncated_streams_are_errors() {
        let jail = Jail::new();
        let err = apply_layer(
            &[0x1f, 0x8b, 1, 2, 3][..],
            "",
            &jail.root(),
            &LayerLimits::NONE,
        )
        .expect_err("bad gzip");
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        let tar_bytes = tar_of(&[raw_entry(b"f", EntryType::Regular, b"", &[1u8; 2000])]);
        let err = apply_layer(&tar_bytes[..700], "", &jail.root(), &LayerLimits::NONE)
            .expect_err("truncated");
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    /// A gzip layer holding one file of `mib` MiB of zeros, made of cheap concatenated gzip
    /// members (as a bomb would be): about 1 KiB of blob per MiB.
    fn zeros_bomb(mib: u64) -> Vec<u8> {
        let gzip = |bytes: &[u8]| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            io::Write::write_all(&mut gz, bytes).expect("gzip");
            gz.finish().expect("gzip")
        };
        let mut header = tar::Header::new_gnu();
        header.set_path("zeros").expect("path");
        header.set_size(mib << 20);
        header.set_mode(0o644);
        header.set_entry_type(EntryType::Regular);
        header.set_cksum();
        let mut blob = gzip(header.as_bytes());
        let member = gzip(&vec![0u8; 1 << 20]);
        for _ in 0..mib {
            blob.extend_from_slice(&member);
        }
        blob.extend(gzip(&[0u8; 1024]));
        blob
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_size_limit() {
        let blob = zeros_bomb(1024);
        assert!(blob.len() < 2 << 20, "{} bytes", blob.len());
        let limits = Limits {
            layer_size: 8 << 20,
            ..Limits::default()
        };
        let bounds = LayerLimits::for_blob(&limits, blob.len() as u64);
        assert_eq!(bounds.size_limit, "layer-size");
        let jail = Jail::new();
        let err = apply_layer(&blob[..], "", &jail.root(), &bounds).expect_err("bomb");
        assert!(
            matches!(
                err,
                Error::Limit {
                    limit: "layer-size",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("--limit layer-size=N"), "{err}");
        // Stopped within the limit: the file holds at most 8 MiB of the 1 GiB.
        let written = fs::metadata(jail.root().join("zeros")).map_or(0, |m| m.len());
        assert!(written <= 8 << 20, "{written} bytes written");
    }

    #[test]
    fn a_layer_past_its_ratio_stops_above_the_floor() {
        // 100 MiB from about 100 KiB: a ratio of about 1000, above the default of 256.
        let blob = zeros_bomb(100);
        let bounds = LayerLimits::for_blob(&Limits::default(), blob.len() as u64);
        assert_eq!(bounds.size_limit, "layer-ratio");
        assert_eq!(bounds.max_size, Limits::RATIO_FLOOR);
        let jail = Jail::new();
        let err = apply_layer(&blob[..], "", &jail.root(), &bounds).expect_err("bomb");
        assert!(
            matches!(
                err,
                Error::Limit {
                    limit: "layer-ratio",
                    ..
                }
            ),
            "{err}"
        );
        let written = fs::metadata(jail.root().join("zeros")).map_or(0, |m| m.len());
        assert!(written <= Limits::RATIO_FLOOR, "{written} bytes written");
        // Below the floor the ratio is not checked.
        let small = zeros_bomb(2);
        let bounds = LayerLimits::for_blob(&Limits::default(), small.len() as u64);
        apply_layer(&small[..], "", &Jail::new().root(), &bounds).expect("small layer of zeros");
    }

    #[test]
    fn deep_paths_are_created_inside_the_root_and_remembered() {
        let jail = Jail::new();
        fs::create_dir_all(jail.root().join("lower/a")).expect("mkdir");
        fs::write(jail.root().join("lower/a/old"), b"old").expect("write");
        let deep = format!("d/{}f", "a/".repeat(300));
        let half = format!("d/{}", "a/".repeat(40));
        let (res, untouched) = jail.apply(&[
            raw_pax_path(&deep, b"deep"),
            // A whiteout of a directory this layer wrote below keeps what it wrote.
            raw_entry(b".wh.d", EntryType::Regular, b"", b""),
            // A symlink partway down, then an entry through it: resolved inside the root.
            raw_entry(
                b"s",
                EntryType::Symlink,
                half.trim_end_matches('/').as_bytes(),
                b"",
            ),
            raw_entry(b"s/g", EntryType::Regular, b"", b"through the link"),
            raw_entry(b"lower/.wh..wh..opq", EntryType::Regular, b"", b""),
        ]);
        res.expect("apply");
        assert!(untouched);
        assert_eq!(fs::read(jail.root().join(&deep)).expect("deep"), b"deep");
        assert_eq!(
            fs::read(jail.root().join(&half).join("g")).expect("via link"),
            b"through the link"
        );
        assert!(
            !jail.root().join("lower/a").exists(),
            "opaque removed lower content"
        );
    }

    /// A regular file entry whose long name travels in a PAX `path` record.
    fn raw_pax_path(name: &str, data: &[u8]) -> Vec<u8> {
        let record = {
            let body = format!(" path={name}\n");
            let mut len = body.len() + 1;
            while format!("{len}{body}").len() != len {
                len += 1;
            }
            format!("{len}{body}")
        };
        let mut out = raw_entry(b"pax", EntryType::XHeader, b"", record.as_bytes());
        out.extend(raw_entry(b"placeholder", EntryType::Regular, b"", data));
        out
    }

    #[test]
    fn entries_past_the_limit_are_refused() {
        let entries: Vec<Vec<u8>> = (0..5)
            .map(|i| raw_entry(format!("f{i}").as_bytes(), EntryType::Regular, b"", b"x"))
            .collect();
        let bounds = LayerLimits {
            max_entries: 4,
            ..LayerLimits::NONE
        };
        let jail = Jail::new();
        let err =
            apply_layer(&tar_of(&entries)[..], "", &jail.root(), &bounds).expect_err("too many");
        assert!(
            matches!(
                err,
                Error::Limit {
                    limit: "layer-entries",
                    ..
                }
            ),
            "{err}"
        );
        assert!(!jail.root().join("f4").exists());
        let bounds = LayerLimits {
            max_entries: 5,
            ..LayerLimits::NONE
        };
        apply_layer(&tar_of(&entries)[..], "", &Jail::new().root(), &bounds).expect("five entries");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        #[test]
        fn apply_layer_never_panics_on_random_bytes(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let _ = apply_layer(&bytes[..], "", dir.path(), &LayerLimits::NONE);
        }

        #[test]
        fn apply_layer_never_panics_on_mutated_layers(
            flips in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..8),
            gzip in proptest::prelude::any::<bool>(),
        ) {
            let mut tar_bytes = tar_of(&[
                raw_entry(b"d/", EntryType::Directory, b"", b""),
                raw_entry(b"d/f", EntryType::Regular, b"", b"content"),
                raw_entry(b"d/l", EntryType::Symlink, b"f", b""),
                raw_entry(b"d/h", EntryType::Link, b"d/f", b""),
                raw_entry(b"d/.wh.x", EntryType::Regular, b"", b""),
            ]);
            let mut blob = if gzip {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
                io::Write::write_all(&mut gz, &tar_bytes).expect("gzip");
                gz.finish().expect("gzip")
            } else {
                std::mem::take(&mut tar_bytes)
            };
            for (pos, byte) in flips {
                let len = blob.len();
                blob[pos % len] = byte;
            }
            let outer = tempfile::tempdir().expect("tempdir");
            let root = outer.path().join("root");
            fs::create_dir(&root).expect("mkdir");
            let _ = apply_layer(&blob[..], "", &root, &LayerLimits::NONE);
            let names: Vec<_> = fs::read_dir(outer.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
            proptest::prop_assert_eq!(names, vec![std::ffi::OsString::from("root")]);
        }
    }
}
