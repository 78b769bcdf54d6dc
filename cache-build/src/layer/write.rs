//! Writing a layer tar for a set of changes, compressing and hashing it in one pass.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

use super::snapshot::{ChangeKind, Changes, Kind};
use super::{Compression, Error, LayerInfo};

/// Tar name of the opaque-directory marker.
pub(crate) const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Prefix of whiteout names.
pub(crate) const WHITEOUT_PREFIX: &str = ".wh.";

/// Buffer between the tar writer and the hashing/compression stages.
const BUFFER_SIZE: usize = 256 * 1024;

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    n_bytes: u64,
}

impl<W: Write> HashWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            n_bytes: 0,
        }
    }

    /// Returns `("sha256:<hex>", byte count, inner writer)`.
    pub(crate) fn into_parts(self) -> (String, u64, W) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (digest, self.n_bytes, self.inner)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.n_bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The compressing stage.
enum Encoder<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

/// zstd workers. The output of libzstd is the same for any worker count >= 1 (but differs
/// from the single-threaded mode), so this only changes speed, never the digest.
fn zstd_workers() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get().clamp(1, 8) as u32)
        .unwrap_or(1)
}

impl<W: Write> Encoder<W> {
    fn new(out: W, compression: Compression, zstd_workers: u32) -> io::Result<Self> {
        Ok(match compression {
            Compression::Uncompressed => Encoder::Plain(out),
            Compression::Gzip { level } => Encoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::new(level.min(9)),
            )),
            Compression::Zstd { level } => {
                let mut enc = zstd::stream::write::Encoder::new(out, level)?;
                enc.multithread(zstd_workers.max(1))?;
                Encoder::Zstd(enc)
            }
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(enc) => enc.finish(),
            Encoder::Zstd(enc) => enc.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
        }
    }
}

/// Reads exactly `remaining` bytes from a file, failing if it ends early.
struct ExactReader {
    inner: io::Take<File>,
    remaining: u64,
    short: bool,
}

impl Read for ExactReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.short = true;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being written",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// One tar entry to write, keyed by its name in the archive.
enum Item<'a> {
    Path(&'a Path),
    Whiteout,
    Opaque,
}

/// Writes the layer tar for `changes` under `root`, compressed with `compression`, into `out`.
///
/// Entries come in the order of [`Changes`] (depth first, names compared bytewise, parents
/// before children), with real mode, owner and mtime (whole seconds). Hard links are detected
/// by inode within the layer: the first name is written as a file and the others link to it.
/// Deletions become `.wh.<name>` entries and recreated directories get a `.wh..wh..opq` entry.
/// Names that do not fit the ustar header (or are not ASCII) get a PAX `path`/`linkpath`
/// record; `security.capability` is kept as a PAX `SCHILY.xattr` record; sockets are skipped.
/// The diffID and digest are computed while writing. The same tree and changes give the same
/// bytes.
///
/// Fails with [`Error::Changed`] if a path disappeared or shrank since the diff, and with
/// [`Error::Unsupported`] for a file named `.wh.*` (the name is reserved for whiteouts).
pub fn write_layer(
    root: &Path,
    changes: &Changes,
    compression: Compression,
    out: impl Write,
) -> Result<LayerInfo, Error> {
    let options = WriteOptions {
        compression,
        source_date_epoch: None,
    };
    write_layer_with(root, changes, &options, out)
}

/// How [`write_layer_with`] writes a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOptions {
    /// Compression of the blob.
    pub compression: Compression,
    /// Clamp every mtime in the layer to at most this Unix time (BuildKit's
    /// `rewrite-timestamp=true` with `SOURCE_DATE_EPOCH`), for reproducible layers.
    pub source_date_epoch: Option<i64>,
}

/// [`write_layer`] with more options.
pub fn write_layer_with(
    root: &Path,
    changes: &Changes,
    options: &WriteOptions,
    out: impl Write,
) -> Result<LayerInfo, Error> {
    write_layer_with_workers(root, changes, options, out, zstd_workers())
}

pub(crate) fn write_layer_with_workers(
    root: &Path,
    changes: &Changes,
    options: &WriteOptions,
    out: impl Write,
    workers: u32,
) -> Result<LayerInfo, Error> {
    let compression = options.compression;
    let write_err = |err: io::Error| Error::io("write layer for", root, err);
    let blob = HashWriter::new(out);
    let encoder = Encoder::new(blob, compression, workers).map_err(write_err)?;
    let tar_stream = HashWriter::new(encoder);
    let mut builder = tar::Builder::new(BufWriter::with_capacity(BUFFER_SIZE, tar_stream));

    let n_entries = append_changes(&mut builder, root, changes, options.source_date_epoch)?;

    let buffered = builder.into_inner().map_err(write_err)?;
    let tar_stream = buffered
        .into_inner()
        .map_err(|err| write_err(err.into_error()))?;
    let (diff_id, uncompressed_size, encoder) = tar_stream.into_parts();
    let mut blob = encoder.finish().map_err(write_err)?;
    blob.flush().map_err(write_err)?;
    let (digest, size, _out) = blob.into_parts();
    Ok(LayerInfo {
        digest,
        size,
        diff_id,
        uncompressed_size,
        media_type: compression.media_type(true).to_string(),
        n_entries,
    })
}

/// Writes a layer into a new temporary file in `dir`; the caller renames it into its content
/// store by digest (`NamedTempFile::persist`). The file is synced before it is returned.
pub fn write_layer_file(
    root: &Path,
    changes: &Changes,
    compression: Compression,
    dir: &Path,
) -> Result<(tempfile::NamedTempFile, LayerInfo), Error> {
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|err| Error::io("create a temporary file in", dir, err))?;
    let info = {
        let mut out = BufWriter::with_capacity(BUFFER_SIZE, tmp.as_file());
        let info = write_layer(root, changes, compression, &mut out)?;
        out.flush()
            .map_err(|err| Error::io("write", tmp.path(), err))?;
        info
    };
    tmp.as_file()
        .sync_data()
        .map_err(|err| Error::io("sync", tmp.path(), err))?;
    Ok((tmp, info))
}

fn append_changes<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    changes: &Changes,
    max_mtime: Option<i64>,
) -> Result<u64, Error> {
    let mut items: Vec<(PathBuf, Item<'_>)> = Vec::with_capacity(changes.len());
    for (path, kind) in changes.iter() {
        match kind {
            ChangeKind::Deleted => {
                let (parent, name) = (path.parent().unwrap_or(Path::new("")), path.file_name());
                let name = name.unwrap_or(path.as_os_str());
                let mut wh = std::ffi::OsString::from(WHITEOUT_PREFIX);
                wh.push(name);
                items.push((parent.join(wh), Item::Whiteout));
            }
            ChangeKind::Recreated => {
                items.push((path.to_path_buf(), Item::Path(path)));
                items.push((path.join(OPAQUE_MARKER), Item::Opaque));
            }
            ChangeKind::Added | ChangeKind::Modified | ChangeKind::Parent => {
                items.push((path.to_path_buf(), Item::Path(path)));
            }
        }
    }
    // Whiteout names sort differently from the deleted names; order by the archive name.
    items.sort_by(|a, b| a.0.cmp(&b.0));

    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut n_entries = 0;
    for (name, item) in &items {
        let written = match item {
            Item::Path(path) => append_path(builder, root, path, max_mtime, &mut links)?,
            Item::Whiteout | Item::Opaque => {
                let mut header = Header::new_ustar();
                header.set_entry_type(EntryType::Regular);
                header.set_mode(0);
                header.set_uid(0);
                header.set_gid(0);
                header.set_mtime(0);
                header.set_size(0);
                append_entry(
                    builder,
                    header,
                    name.as_os_str().as_bytes(),
                    None,
                    None,
                    &[],
                )
                .map_err(|err| Error::io("write whiteout", name, err))?;
                true
            }
        };
        if written {
            n_entries += 1;
        }
    }
    Ok(n_entries)
}

/// Writes one path of the tree; returns false if it was skipped (sockets).
fn append_path<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    max_mtime: Option<i64>,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<bool, Error> {
    let full = root.join(rel);
    let md = stat_path(rel, &full)?;
    let kind = Kind::of(md.file_type());
    let mut header = base_header(&md, max_mtime);

    let mut name = rel.as_os_str().as_bytes().to_vec();
    let mut link_target: Option<Vec<u8>> = None;
    let mut data: Option<u64> = None;
    match kind {
        Kind::Dir => {
            header.set_entry_type(EntryType::Directory);
            name.push(b'/');
        }
        Kind::File => {
            let key = (md.dev(), md.ino());
            let first = if md.nlink() > 1 {
                links.get(&key).cloned()
            } else {
                None
            };
            if let Some(first) = first {
                header.set_entry_type(EntryType::Link);
                link_target = Some(first.as_os_str().as_bytes().to_vec());
            } else {
                if md.nlink() > 1 {
                    links.insert(key, rel.to_path_buf());
                }
                header.set_entry_type(EntryType::Regular);
                header.set_size(md.len());
                data = Some(md.len());
            }
        }
        Kind::Symlink => {
            header.set_entry_type(EntryType::Symlink);
            let target =
                std::fs::read_link(&full).map_err(|err| Error::io("read link", &full, err))?;
            link_target = Some(target.as_os_str().as_bytes().to_vec());
        }
        Kind::Char | Kind::Block => {
            header.set_entry_type(if kind == Kind::Char {
                EntryType::Char
            } else {
                EntryType::Block
            });
            let rdev = md.rdev();
            let set = header
                .set_device_major(rustix::fs::major(rdev))
                .and_then(|()| header.set_device_minor(rustix::fs::minor(rdev)));
            set.map_err(|err| Error::io("write device", rel, err))?;
        }
        Kind::Fifo => header.set_entry_type(EntryType::Fifo),
        Kind::Socket => {
            tracing::debug!(path = %rel.display(), "skipping socket: layers cannot hold sockets");
            return Ok(false);
        }
    }

    let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
    if matches!(kind, Kind::File | Kind::Dir)
        && let Some(cap) = read_xattr(&full, "security.capability")
    {
        xattrs.push(("SCHILY.xattr.security.capability".to_string(), cap));
    }

    match data {
        Some(size) => append_file(builder, header, &name, &xattrs, rel, &full, size)?,
        None => append_entry(
            builder,
            header,
            &name,
            link_target.as_deref(),
            None,
            &xattrs,
        )
        .map_err(|err| Error::io("write layer entry for", &full, err))?,
    }
    Ok(true)
}

/// The metadata of `rel` (at `full`), refusing a name reserved for whiteouts; a path gone since
/// the changes were found is [`Error::Changed`].
fn stat_path(rel: &Path, full: &Path) -> Result<std::fs::Metadata, Error> {
    if rel
        .file_name()
        .is_some_and(|n| n.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()))
    {
        return Err(Error::Unsupported {
            path: rel.to_path_buf(),
            reason: "names starting with `.wh.` are reserved for OCI whiteouts".to_string(),
        });
    }
    match std::fs::symlink_metadata(full) {
        Ok(md) => Ok(md),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Err(Error::Changed {
            path: rel.to_path_buf(),
        }),
        Err(err) => Err(Error::io("stat", full, err)),
    }
}

/// A header with the mode, owner and mtime (clamped to `max_mtime`) of `md`, size 0.
fn base_header(md: &std::fs::Metadata, max_mtime: Option<i64>) -> Header {
    let mut header = Header::new_ustar();
    header.set_mode(md.mode() & 0o7777);
    header.set_uid(u64::from(md.uid()));
    header.set_gid(u64::from(md.gid()));
    let mtime = match max_mtime {
        Some(max) => md.mtime().min(max),
        None => md.mtime(),
    };
    header.set_mtime(mtime.max(0) as u64);
    header.set_size(0);
    header
}

/// Appends the regular file `rel` (at `full`) with its `size` bytes; a file that changed size
/// or vanished meanwhile is [`Error::Changed`].
fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    header: Header,
    name: &[u8],
    xattrs: &[(String, Vec<u8>)],
    rel: &Path,
    full: &Path,
    size: u64,
) -> Result<(), Error> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(full)
        .map_err(|err| {
            if err.kind() == io::ErrorKind::NotFound {
                Error::Changed {
                    path: rel.to_path_buf(),
                }
            } else {
                Error::io("open", full, err)
            }
        })?;
    let mut reader = ExactReader {
        inner: file.take(size),
        remaining: size,
        short: false,
    };
    match append_entry(builder, header, name, None, Some(&mut reader), xattrs) {
        Ok(()) => Ok(()),
        Err(_) if reader.short => Err(Error::Changed {
            path: rel.to_path_buf(),
        }),
        Err(err) => Err(Error::io("write layer entry for", full, err)),
    }
}

fn read_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(_) => None,
    }
}

/// Splits a long ASCII name into ustar prefix and name the way Go's archive/tar does.
fn split_ustar(name: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut length = name.len();
    if length <= 100 || !name.is_ascii() {
        return None;
    }
    if length > 156 {
        length = 156;
    } else if name[length - 1] == b'/' {
        length -= 1;
    }
    let i = name[..length].iter().rposition(|&b| b == b'/')?;
    let (prefix, rest) = (&name[..i], &name[i + 1..]);
    if i == 0 || rest.is_empty() || rest.len() > 100 || prefix.len() > 155 {
        return None;
    }
    Some((prefix, rest))
}

fn copy_field(dst: &mut [u8], src: &[u8]) {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
    for b in &mut dst[n..] {
        *b = 0;
    }
}

/// Appends one entry with its name (and link target), adding PAX records where the ustar
/// fields cannot hold them.
fn append_entry<W: Write>(
    builder: &mut tar::Builder<W>,
    mut header: Header,
    name: &[u8],
    link: Option<&[u8]>,
    data: Option<&mut ExactReader>,
    extra_pax: &[(String, Vec<u8>)],
) -> io::Result<()> {
    let mut pax: Vec<(String, Vec<u8>)> = extra_pax.to_vec();
    if name.len() <= 100 && name.is_ascii() {
        copy_field(&mut header.as_old_mut().name, name);
    } else if let Some((prefix, rest)) = split_ustar(name) {
        copy_field(&mut header.as_old_mut().name, rest);
        if let Some(ustar) = header.as_ustar_mut() {
            copy_field(&mut ustar.prefix, prefix);
        }
    } else {
        copy_field(&mut header.as_old_mut().name, name);
        pax.push(("path".to_string(), name.to_vec()));
    }
    if let Some(link) = link {
        copy_field(&mut header.as_old_mut().linkname, link);
        if link.len() > 100 || !link.is_ascii() {
            pax.push(("linkpath".to_string(), link.to_vec()));
        }
    }
    if !pax.is_empty() {
        pax.sort();
        builder.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    }
    header.set_cksum();
    match data {
        Some(reader) => builder.append(&header, reader),
        None => builder.append(&header, io::empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Snapshot, diff};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn sha256(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    fn decompress(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if bytes.starts_with(&[0x1f, 0x8b]) {
            flate2::read::MultiGzDecoder::new(bytes)
                .read_to_end(&mut out)
                .expect("gunzip");
        } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            out = zstd::decode_all(bytes).expect("unzstd");
        } else {
            out = bytes.to_vec();
        }
        out
    }

    fn tar_names(tar_bytes: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                String::from_utf8_lossy(&e.path_bytes()).into_owned()
            })
            .collect()
    }

    /// A tree, a snapshot of it, and a set of changes made after the snapshot.
    fn changed_tree() -> (tempfile::TempDir, Changes) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("data/old/sub")).expect("mkdir");
        fs::write(root.join("data/old/sub/f"), b"old").expect("write");
        fs::write(root.join("data/stay"), b"stay").expect("write");
        fs::create_dir_all(root.join("redo/inner")).expect("mkdir");
        fs::write(root.join("redo/inner/f"), b"x").expect("write");
        fs::write(root.join("del.txt"), b"bye").expect("write");
        let snap = Snapshot::capture(root).expect("capture");

        fs::remove_dir_all(root.join("data/old")).expect("rm");
        fs::remove_file(root.join("del.txt")).expect("rm");
        // Keep the old directory alive elsewhere so that its inode number cannot be reused.
        let graveyard = tempfile::tempdir().expect("tempdir");
        fs::rename(root.join("redo"), graveyard.path().join("redo")).expect("mv");
        fs::create_dir(root.join("redo")).expect("mkdir");
        fs::write(root.join("redo/new"), b"new").expect("write");
        fs::write(root.join("added"), vec![7u8; 100_000]).expect("write");
        fs::set_permissions(root.join("data/stay"), fs::Permissions::from_mode(0o600))
            .expect("chmod");
        let long = "l".repeat(120);
        fs::create_dir_all(root.join("deep").join(&long)).expect("mkdir");
        fs::write(root.join("deep").join(&long).join(&long), b"long").expect("write");
        let changes = diff(&snap, root).expect("diff");
        (dir, changes)
    }

    #[test]
    fn digests_match_the_bytes_and_the_decompressed_tar() {
        let (dir, changes) = changed_tree();
        for compression in [
            Compression::Uncompressed,
            Compression::GZIP,
            Compression::ZSTD,
        ] {
            let mut blob = Vec::new();
            let info = write_layer(dir.path(), &changes, compression, &mut blob).expect("write");
            assert_eq!(info.digest, sha256(&blob), "{compression:?}");
            assert_eq!(info.size, blob.len() as u64);
            let tar_bytes = decompress(&blob);
            assert_eq!(info.diff_id, sha256(&tar_bytes), "{compression:?}");
            assert_eq!(info.uncompressed_size, tar_bytes.len() as u64);
            assert_eq!(info.media_type, compression.media_type(true));
            assert_eq!(info.n_entries, tar_names(&tar_bytes).len() as u64);
            if compression == Compression::Uncompressed {
                assert_eq!(info.digest, info.diff_id);
            } else {
                assert_ne!(info.digest, info.diff_id);
            }
        }
    }

    #[test]
    fn writing_twice_gives_identical_bytes() {
        let (dir, changes) = changed_tree();
        for compression in [Compression::GZIP, Compression::ZSTD] {
            let mut first = Vec::new();
            let mut second = Vec::new();
            let a = write_layer(dir.path(), &changes, compression, &mut first).expect("write");
            let b = write_layer(dir.path(), &changes, compression, &mut second).expect("write");
            assert_eq!(a, b);
            assert_eq!(first, second);
        }
        // The zstd worker count must not change the bytes.
        let mut one = Vec::new();
        let mut two = Vec::new();
        let options = WriteOptions {
            compression: Compression::ZSTD,
            source_date_epoch: None,
        };
        let a =
            write_layer_with_workers(dir.path(), &changes, &options, &mut one, 1).expect("write");
        let b =
            write_layer_with_workers(dir.path(), &changes, &options, &mut two, 4).expect("write");
        assert_eq!(a.digest, b.digest);
    }

    #[test]
    fn whiteouts_opaque_markers_and_order() {
        let (dir, changes) = changed_tree();
        let mut blob = Vec::new();
        write_layer(dir.path(), &changes, Compression::Uncompressed, &mut blob).expect("write");
        let names = tar_names(&blob);
        let long = "l".repeat(120);
        let want: Vec<String> = vec![
            ".wh.del.txt".to_string(),
            "added".to_string(),
            "data/".to_string(),
            "data/.wh.old".to_string(),
            "data/stay".to_string(),
            "deep/".to_string(),
            format!("deep/{long}/"),
            format!("deep/{long}/{long}"),
            "redo/".to_string(),
            "redo/.wh..wh..opq".to_string(),
            "redo/new".to_string(),
        ];
        assert_eq!(names, want);
        // Entry headers carry the real mode.
        let mut archive = tar::Archive::new(&blob[..]);
        let stay = archive
            .entries()
            .expect("entries")
            .map(|e| e.expect("entry"))
            .find(|e| e.path_bytes().as_ref() == b"data/stay")
            .expect("data/stay present");
        assert_eq!(stay.header().mode().expect("mode"), 0o600);
    }

    #[test]
    fn empty_changes_give_an_empty_tar() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snap = Snapshot::capture(dir.path()).expect("capture");
        let changes = diff(&snap, dir.path()).expect("diff");
        assert!(changes.is_empty());
        let mut blob = Vec::new();
        let info =
            write_layer(dir.path(), &changes, Compression::Uncompressed, &mut blob).expect("write");
        assert_eq!(info.n_entries, 0);
        assert_eq!(blob, vec![0u8; 1024]);
    }

    #[test]
    fn file_deleted_after_diff_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snap = Snapshot::capture(dir.path()).expect("capture");
        fs::write(dir.path().join("f"), b"x").expect("write");
        let changes = diff(&snap, dir.path()).expect("diff");
        fs::remove_file(dir.path().join("f")).expect("rm");
        let err = write_layer(dir.path(), &changes, Compression::GZIP, Vec::new())
            .expect_err("file is gone");
        assert!(matches!(err, Error::Changed { .. }), "{err}");
    }

    #[test]
    fn write_layer_file_persists_a_blob_with_the_reported_digest() {
        let (dir, changes) = changed_tree();
        let out = tempfile::tempdir().expect("tempdir");
        let (tmp, info) =
            write_layer_file(dir.path(), &changes, Compression::ZSTD, out.path()).expect("write");
        let bytes = fs::read(tmp.path()).expect("read");
        assert_eq!(sha256(&bytes), info.digest);
        assert_eq!(tmp.path().parent(), Some(out.path()));
    }

    #[test]
    fn source_date_epoch_clamps_mtimes() {
        let (dir, changes) = changed_tree();
        let options = WriteOptions {
            compression: Compression::Uncompressed,
            source_date_epoch: Some(1_000_000),
        };
        let mut blob = Vec::new();
        write_layer_with(dir.path(), &changes, &options, &mut blob).expect("write");
        let mut archive = tar::Archive::new(&blob[..]);
        let mtimes: Vec<u64> = archive
            .entries()
            .expect("entries")
            .map(|e| e.expect("entry").header().mtime().expect("mtime"))
            .collect();
        assert!(mtimes.iter().all(|m| *m <= 1_000_000), "{mtimes:?}");
        assert!(mtimes.contains(&1_000_000));
    }

    #[test]
    fn ustar_split_follows_go() {
        let name = format!("{}/{}", "a".repeat(60), "b".repeat(60));
        let (prefix, rest) = split_ustar(name.as_bytes()).expect("splits");
        assert_eq!(prefix, "a".repeat(60).as_bytes());
        assert_eq!(rest, "b".repeat(60).as_bytes());
        assert!(split_ustar("c".repeat(120).as_bytes()).is_none());
        assert!(split_ustar(b"short").is_none());
    }
}
