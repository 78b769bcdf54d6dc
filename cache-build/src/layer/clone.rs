//! Copying an unpacked root filesystem, so that two stages on one base unpack it once.
//!
//! The copy keeps what unpacking a layer gives: file types (directories, regular files,
//! symlinks, device nodes, FIFOs), owners (when running as root), permission bits including
//! set-id bits, extended attributes, access and modification times to the nanosecond, and hard
//! links between files of the tree. Sockets are skipped, as layers do not hold them. Regular
//! files are copied with `copy_file_range` (in the kernel; a reflink where the filesystem can).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};

use super::Error;

/// Copies the tree at `src` into `dst`, an empty or missing directory.
pub fn clone_tree(src: &Path, dst: &Path) -> Result<(), Error> {
    let mut cloner = Cloner {
        chown: rustix::process::geteuid().is_root(),
        links: HashMap::new(),
        dirs: Vec::new(),
    };
    let meta = fs::symlink_metadata(src).map_err(|err| Error::io("stat", src, err))?;
    fs::create_dir_all(dst).map_err(|err| Error::io("create", dst, err))?;
    cloner.dir(src, dst, &meta)?;
    // Directory times last, deepest first: creating children changed them.
    for (path, meta) in cloner.dirs.iter().rev() {
        set_times(path, meta)?;
    }
    Ok(())
}

struct Cloner {
    chown: bool,
    /// (device, inode) of files with several links → their first copy.
    links: HashMap<(u64, u64), PathBuf>,
    /// Directories copied, with their source metadata, in creation order.
    dirs: Vec<(PathBuf, Metadata)>,
}

impl Cloner {
    fn dir(&mut self, src: &Path, dst: &Path, meta: &Metadata) -> Result<(), Error> {
        let entries = fs::read_dir(src).map_err(|err| Error::io("list", src, err))?;
        for entry in entries {
            let entry = entry.map_err(|err| Error::io("list", src, err))?;
            let (from, to) = (entry.path(), dst.join(entry.file_name()));
            let meta = entry
                .metadata()
                .map_err(|err| Error::io("stat", &from, err))?;
            self.entry(&from, &to, &meta)?;
        }
        self.attributes(src, dst, meta)?;
        self.dirs.push((dst.to_path_buf(), meta.clone()));
        Ok(())
    }

    fn entry(&mut self, from: &Path, to: &Path, meta: &Metadata) -> Result<(), Error> {
        let kind = meta.file_type();
        if kind.is_dir() {
            fs::create_dir(to).map_err(|err| Error::io("create", to, err))?;
            return self.dir(from, to, meta);
        }
        if kind.is_socket() {
            return Ok(());
        }
        let inode = (meta.dev(), meta.ino());
        if meta.nlink() > 1
            && !kind.is_symlink()
            && let Some(first) = self.links.get(&inode)
        {
            return fs::hard_link(first, to).map_err(|err| Error::io("link", to, err));
        }
        if kind.is_symlink() {
            let target = fs::read_link(from).map_err(|err| Error::io("read link", from, err))?;
            std::os::unix::fs::symlink(target, to).map_err(|err| Error::io("create", to, err))?;
            self.owner(to, meta)?;
            return set_times(to, meta);
        }
        if kind.is_file() {
            fs::copy(from, to).map_err(|err| Error::io("copy", from, err))?;
        } else {
            let file_type = if kind.is_char_device() {
                FileType::CharacterDevice
            } else if kind.is_block_device() {
                FileType::BlockDevice
            } else {
                FileType::Fifo
            };
            rustix::fs::mknodat(CWD, to, file_type, Mode::from_raw_mode(0o600), meta.rdev())
                .map_err(|err| Error::io("create", to, err.into()))?;
        }
        self.attributes(from, to, meta)?;
        set_times(to, meta)?;
        if meta.nlink() > 1 {
            self.links.insert(inode, to.to_path_buf());
        }
        Ok(())
    }

    /// Owner, then mode (a change of owner clears set-id bits), then extended attributes.
    fn attributes(&self, from: &Path, to: &Path, meta: &Metadata) -> Result<(), Error> {
        self.owner(to, meta)?;
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|err| Error::io("change mode of", to, err))?;
        for (name, value) in xattrs(from)? {
            if let Err(err) = rustix::fs::lsetxattr(to, &name, &value, XattrFlags::empty()) {
                tracing::warn!(path = %to.display(), key = %name.to_string_lossy(), error = %err, "cannot copy extended attribute");
            }
        }
        Ok(())
    }

    fn owner(&self, to: &Path, meta: &Metadata) -> Result<(), Error> {
        if !self.chown {
            return Ok(());
        }
        rustix::fs::chownat(
            CWD,
            to,
            Some(rustix::fs::Uid::from_raw(meta.uid())),
            Some(rustix::fs::Gid::from_raw(meta.gid())),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|err| Error::io("change owner of", to, err.into()))
    }
}

fn set_times(path: &Path, meta: &Metadata) -> Result<(), Error> {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec() as _,
        },
        last_modification: Timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec() as _,
        },
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|err| Error::io("set times of", path, err.into()))
}

/// The extended attributes of `path` (not following a symlink), names with values.
fn xattrs(path: &Path) -> Result<Vec<(OsString, Vec<u8>)>, Error> {
    let read_err = |err: rustix::io::Errno| Error::io("read attributes of", path, err.into());
    let mut names = vec![0u8; 256];
    let len = loop {
        match rustix::fs::llistxattr(path, &mut names) {
            Ok(len) => break len,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(err) => return Err(read_err(err)),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = OsString::from(std::str::from_utf8(name).map_or_else(
            |_| String::from_utf8_lossy(name).into_owned(),
            str::to_owned,
        ));
        let mut value = vec![0u8; 256];
        let len = loop {
            match rustix::fs::lgetxattr(path, &name, &mut value) {
                Ok(len) => break len,
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(err) => return Err(read_err(err)),
            }
        };
        value.truncate(len);
        out.push((name, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything the copy promises to keep, per path.
    fn state(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut inodes: HashMap<u64, String> = HashMap::new();
        for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
            let entry = entry.expect("walk");
            let rel = entry
                .path()
                .strip_prefix(root)
                .expect("inside")
                .display()
                .to_string();
            let meta = entry.path().symlink_metadata().expect("stat");
            let content = if meta.is_file() {
                fs::read(entry.path()).expect("read").len().to_string()
            } else if meta.file_type().is_symlink() {
                fs::read_link(entry.path())
                    .expect("link")
                    .display()
                    .to_string()
            } else {
                String::new()
            };
            let link = if meta.is_file() && meta.nlink() > 1 {
                inodes
                    .entry(meta.ino())
                    .or_insert_with(|| rel.clone())
                    .clone()
            } else {
                String::new()
            };
            let attrs = xattrs(entry.path()).expect("xattrs");
            let mtime = if meta.file_type().is_symlink() || rel.is_empty() {
                0
            } else {
                meta.mtime_nsec() + meta.mtime() * 1_000_000_000
            };
            out.push(format!(
                "{rel} mode={:o} uid={} gid={} rdev={} {content} link={link} mtime={mtime} xattrs={attrs:?}",
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.rdev(),
            ));
        }
        out
    }

    #[test]
    fn the_copy_keeps_types_owners_modes_times_links_and_attributes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("usr/bin")).expect("mkdir");
        fs::write(src.join("usr/bin/tool"), b"#!/bin/sh\necho hi\n").expect("write");
        fs::set_permissions(src.join("usr/bin/tool"), fs::Permissions::from_mode(0o4755))
            .expect("chmod");
        fs::hard_link(src.join("usr/bin/tool"), src.join("usr/bin/tool2")).expect("link");
        std::os::unix::fs::symlink("bin/tool", src.join("usr/alias")).expect("symlink");
        std::os::unix::fs::symlink("../../etc/passwd", src.join("usr/out")).expect("symlink");
        fs::create_dir(src.join("tmp")).expect("mkdir");
        fs::set_permissions(src.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod");
        rustix::fs::mknodat(
            CWD,
            src.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o640),
            0,
        )
        .expect("mkfifo");
        // user.* attributes work without privileges on ext4 and tmpfs.
        let xattr = rustix::fs::lsetxattr(
            src.join("usr/bin/tool"),
            "user.origin",
            b"layer",
            XattrFlags::empty(),
        );
        if rustix::process::geteuid().is_root() {
            rustix::fs::chownat(
                CWD,
                src.join("usr/out"),
                Some(rustix::fs::Uid::from_raw(1234)),
                Some(rustix::fs::Gid::from_raw(99)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .expect("chown");
            rustix::fs::mknodat(
                CWD,
                src.join("null"),
                FileType::CharacterDevice,
                Mode::from_raw_mode(0o666),
                rustix::fs::makedev(1, 3),
            )
            .expect("mknod");
        }
        let old = Timestamps {
            last_access: Timespec {
                tv_sec: 1_000_000,
                tv_nsec: 5,
            },
            last_modification: Timespec {
                tv_sec: 1_500_000_000,
                tv_nsec: 123_456_789,
            },
        };
        for path in ["usr/bin/tool", "usr/bin", "usr", "tmp"] {
            rustix::fs::utimensat(CWD, src.join(path), &old, AtFlags::empty()).expect("times");
        }
        let dst = tmp.path().join("dst");
        clone_tree(&src, &dst).expect("clone");
        assert_eq!(state(&dst), state(&src));
        if xattr.is_ok() {
            assert_eq!(
                xattrs(&dst.join("usr/bin/tool")).expect("xattrs"),
                vec![(OsString::from("user.origin"), b"layer".to_vec())]
            );
        }
        // The copy is independent: writing through it leaves the source as it was.
        fs::write(dst.join("usr/bin/tool2"), b"changed").expect("write");
        assert_eq!(
            fs::read(src.join("usr/bin/tool")).expect("read"),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            fs::read(dst.join("usr/bin/tool")).expect("read"),
            b"changed"
        );
    }
}
