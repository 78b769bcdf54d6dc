//! Metadata snapshots of a root directory and the diff of a root against a snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::Error;

/// File type of a snapshot entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

impl Kind {
    pub(crate) fn of(ft: std::fs::FileType) -> Kind {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_char_device() {
            Kind::Char
        } else if ft.is_block_device() {
            Kind::Block
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else {
            Kind::File
        }
    }
}

/// lstat data of one entry, enough to tell whether it changed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Meta {
    dev: u64,
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    rdev: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    nlink: u64,
    kind: Kind,
    link: Option<PathBuf>,
}

impl Meta {
    fn same_inode(&self, other: &Meta) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }

    /// Whether a directory kept what BuildKit's differ compares for directories (mode, owner,
    /// device number): its times, size and link count change whenever an entry inside is added
    /// or removed (mount points RUN creates and removes included), which alone is no change.
    fn same_dir_metadata(&self, other: &Meta) -> bool {
        self.mode == other.mode
            && self.uid == other.uid
            && self.gid == other.gid
            && self.rdev == other.rdev
    }
}

/// Metadata of every entry under a root, taken before a step runs.
///
/// Capturing walks the tree once with `lstat` (plus `readlink` for symlinks) and reads no file
/// contents. The walk stays on the root's filesystem: mount points below the root are not
/// descended into, because their contents belong to the mount and not to the layer.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    entries: BTreeMap<PathBuf, Meta>,
}

impl Snapshot {
    /// Records the metadata of everything under `root` (the root itself excluded).
    pub fn capture(root: &Path) -> Result<Snapshot, Error> {
        let mut entries = BTreeMap::new();
        let walk = walkdir::WalkDir::new(root)
            .follow_links(false)
            .same_file_system(true)
            .min_depth(1);
        for item in walk {
            let item = item.map_err(|err| {
                let path = err.path().unwrap_or(root).to_path_buf();
                Error::io("walk", path, err.into())
            })?;
            let md = item
                .metadata()
                .map_err(|err| Error::io("stat", item.path(), err.into()))?;
            let kind = Kind::of(md.file_type());
            let link = if kind == Kind::Symlink {
                Some(
                    std::fs::read_link(item.path())
                        .map_err(|err| Error::io("read link", item.path(), err))?,
                )
            } else {
                None
            };
            let rel = item
                .path()
                .strip_prefix(root)
                .expect("walkdir yields paths below its root")
                .to_path_buf();
            entries.insert(
                rel,
                Meta {
                    dev: md.dev(),
                    ino: md.ino(),
                    mode: md.mode(),
                    uid: md.uid(),
                    gid: md.gid(),
                    size: md.size(),
                    rdev: md.rdev(),
                    mtime: (md.mtime(), md.mtime_nsec()),
                    ctime: (md.ctime(), md.ctime_nsec()),
                    nlink: md.nlink(),
                    kind,
                    link,
                },
            );
        }
        Ok(Snapshot { entries })
    }

    /// Number of entries recorded (the root itself is not counted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if the root was empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.entries.get(path).is_some_and(|m| m.kind == Kind::Dir)
    }
}

/// Why a path is part of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The path did not exist before the step.
    Added,
    /// The path existed and its contents or metadata changed (or it was replaced).
    Modified,
    /// The path was deleted; the layer holds a whiteout `.wh.<name>` for it.
    Deleted,
    /// A directory was deleted and created again: the layer marks it opaque
    /// (`.wh..wh..opq`) and holds everything below it.
    Recreated,
    /// An unchanged directory that is included because something below it changed,
    /// so that extraction gets its mode and owner right.
    Parent,
}

/// The changes under a root since a [`Snapshot`], as one layer will store them.
///
/// Paths are relative to the root and ordered component by component, each component compared
/// bytewise: the order of a depth-first walk with sorted directory entries, in which a
/// directory comes before its contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub(crate) entries: BTreeMap<PathBuf, ChangeKind>,
}

impl Changes {
    /// True if the step changed nothing (the step then produces no layer).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of changed paths, including deletions and included parent directories.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The changed paths in layer order.
    pub fn iter(&self) -> impl Iterator<Item = (&Path, ChangeKind)> + '_ {
        self.entries.iter().map(|(p, k)| (p.as_path(), *k))
    }
}

/// What changed under `root` since `before` was captured.
///
/// An entry is modified if its inode, device, ctime, mode, owner, size, mtime, type, device
/// number or symlink target differ; a directory only if its mode, owner or device number do
/// (BuildKit's `sameDirent`), its children being compared on their own. A deleted path is reported once at its top-most deleted
/// ancestor. A directory that was deleted and created again (a different inode) is
/// [`ChangeKind::Recreated`]: everything below it is included and nothing below it needs a
/// whiteout. (If the filesystem reuses the inode number, the directory is reported as
/// modified and its deleted children get whiteouts instead, which extracts to the same tree.)
/// Parent directories of changed entries are included as [`ChangeKind::Parent`].
///
/// Change detection relies on ctime: a file rewritten within one timestamp tick of its previous
/// change, with the same size and mtime, would be missed on filesystems without fine-grained
/// (multigrain) timestamps.
pub fn diff(before: &Snapshot, root: &Path) -> Result<Changes, Error> {
    let after = Snapshot::capture(root)?;
    Ok(diff_snapshots(before, &after))
}

fn diff_snapshots(before: &Snapshot, after: &Snapshot) -> Changes {
    let mut entries: BTreeMap<PathBuf, ChangeKind> = BTreeMap::new();
    // Directories whose whole content is written (recreated ones).
    let mut opaque: BTreeSet<PathBuf> = BTreeSet::new();

    for (path, meta) in &after.entries {
        if has_ancestor_in(path, &opaque) {
            entries.insert(path.clone(), ChangeKind::Added);
            continue;
        }
        let kind = match before.entries.get(path) {
            None => Some(ChangeKind::Added),
            Some(old) if old.kind == Kind::Dir && meta.kind == Kind::Dir => {
                if !old.same_inode(meta) {
                    opaque.insert(path.clone());
                    Some(ChangeKind::Recreated)
                } else if !old.same_dir_metadata(meta) {
                    Some(ChangeKind::Modified)
                } else {
                    None
                }
            }
            Some(old) if old != meta => Some(ChangeKind::Modified),
            Some(_) => None,
        };
        if let Some(kind) = kind {
            entries.insert(path.clone(), kind);
        }
    }

    for path in before.entries.keys() {
        if after.entries.contains_key(path) {
            continue;
        }
        let parent = path.parent().unwrap_or(Path::new(""));
        // Only the top-most deleted path gets a whiteout: if the parent is gone, replaced by a
        // non-directory, or recreated, the deletion is already implied.
        let parent_is_root = parent.as_os_str().is_empty();
        if !parent_is_root && !after.is_dir(parent) {
            continue;
        }
        if has_ancestor_in(path, &opaque) {
            continue;
        }
        entries.insert(path.clone(), ChangeKind::Deleted);
    }

    // Include every parent directory of a change.
    let mut parents = Vec::new();
    for path in entries.keys() {
        let mut cur = path.parent();
        while let Some(dir) = cur {
            if dir.as_os_str().is_empty() {
                break;
            }
            if !entries.contains_key(dir) {
                parents.push(dir.to_path_buf());
            }
            cur = dir.parent();
        }
    }
    for dir in parents {
        entries.entry(dir).or_insert(ChangeKind::Parent);
    }
    Changes { entries }
}

fn has_ancestor_in(path: &Path, set: &BTreeSet<PathBuf>) -> bool {
    if set.is_empty() {
        return false;
    }
    let mut cur = path.parent();
    while let Some(dir) = cur {
        if set.contains(dir) {
            return true;
        }
        cur = dir.parent();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn kinds(changes: &Changes) -> Vec<(String, ChangeKind)> {
        changes
            .iter()
            .map(|(p, k)| (p.to_string_lossy().into_owned(), k))
            .collect()
    }

    #[test]
    fn unchanged_tree_gives_empty_diff() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        fs::write(dir.path().join("a/b/f"), b"x").expect("write");
        let snap = Snapshot::capture(dir.path()).expect("capture");
        assert_eq!(snap.len(), 3);
        let changes = diff(&snap, dir.path()).expect("diff");
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(changes.len(), 0);
    }

    #[test]
    fn a_directory_whose_entries_came_and_went_is_unchanged_unless_its_mode_or_owner_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        fs::create_dir_all(root.join("chmodded")).expect("mkdir");
        let snap = Snapshot::capture(root).expect("capture");
        // What a RUN's mount point does to /etc: created, then removed (times and size change).
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(root.join("etc/hosts"), b"").expect("write");
        fs::remove_file(root.join("etc/hosts")).expect("rm");
        fs::set_permissions(root.join("chmodded"), fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let changes = diff(&snap, root).expect("diff");
        assert_eq!(
            kinds(&changes),
            vec![("chmodded".to_string(), ChangeKind::Modified)],
            "as BuildKit's sameDirent, a directory's times are no change"
        );
    }

    #[test]
    fn detects_add_modify_chmod_delete_and_recreate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("keep/sub")).expect("mkdir");
        fs::write(root.join("keep/sub/mod"), b"old").expect("write");
        fs::write(root.join("keep/chmod"), b"same").expect("write");
        fs::create_dir_all(root.join("gone/deep")).expect("mkdir");
        fs::write(root.join("gone/deep/f"), b"x").expect("write");
        fs::create_dir_all(root.join("redo/old")).expect("mkdir");
        fs::write(root.join("redo/old/f"), b"x").expect("write");
        fs::write(root.join("delme"), b"x").expect("write");
        let snap = Snapshot::capture(root).expect("capture");

        fs::write(root.join("keep/sub/mod"), b"new!").expect("write");
        fs::set_permissions(root.join("keep/chmod"), fs::Permissions::from_mode(0o600))
            .expect("chmod");
        fs::remove_dir_all(root.join("gone")).expect("rm");
        // Keep the old directory alive elsewhere so that its inode number cannot be reused.
        let graveyard = tempfile::tempdir().expect("tempdir");
        fs::rename(root.join("redo"), graveyard.path().join("redo")).expect("mv");
        fs::create_dir_all(root.join("redo/new")).expect("mkdir");
        fs::remove_file(root.join("delme")).expect("rm");
        fs::write(root.join("added"), b"x").expect("write");

        let changes = diff(&snap, root).expect("diff");
        let got = kinds(&changes);
        let want = vec![
            ("added".to_string(), ChangeKind::Added),
            ("delme".to_string(), ChangeKind::Deleted),
            ("gone".to_string(), ChangeKind::Deleted),
            ("keep".to_string(), ChangeKind::Parent),
            ("keep/chmod".to_string(), ChangeKind::Modified),
            ("keep/sub".to_string(), ChangeKind::Parent),
            ("keep/sub/mod".to_string(), ChangeKind::Modified),
            ("redo".to_string(), ChangeKind::Recreated),
            ("redo/new".to_string(), ChangeKind::Added),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn order_is_depth_first_with_parents_first() {
        let mut entries = BTreeMap::new();
        for p in ["a-b", "a/b", "a", "a/b/c", "A"] {
            entries.insert(PathBuf::from(p), ChangeKind::Added);
        }
        let order: Vec<_> = Changes { entries }
            .iter()
            .map(|(p, _)| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(order, ["A", "a", "a/b", "a/b/c", "a-b"]);
    }
}
