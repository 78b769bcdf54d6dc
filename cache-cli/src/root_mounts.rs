//! The root's cache mounts (`ROOT/mounts`) in size budgets, `cache du` and `cache prune`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use cache_build::mounts::{CacheMounts, MountInfo};

/// The cache mounts of the root whose own cache is the layout `layout_dir` (`ROOT/cache`), if
/// that root has any.
pub fn of_layout(layout_dir: &Path) -> Option<CacheMounts> {
    let root = std::path::absolute(layout_dir).ok()?;
    let dir = root.parent()?.join("mounts");
    dir.is_dir().then(|| CacheMounts::new(dir))
}

/// What a removal pass did.
#[derive(Debug, Default)]
pub struct Removed {
    /// The instances removed.
    pub mounts: Vec<MountInfo>,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes of the instances left.
    pub bytes_left: u64,
}

/// Removes instances no build holds, least recently used first: those unused for longer than
/// `older_than`, then more while `other_bytes` plus the mounts exceed `max_size`; everything
/// unused with `all`. With `dry_run`, removes nothing and reports what would go.
pub fn remove(
    mounts: &CacheMounts,
    other_bytes: u64,
    max_size: Option<u64>,
    older_than: Option<Duration>,
    all: bool,
    dry_run: bool,
) -> std::io::Result<Removed> {
    let list = mounts.list()?;
    let mut total: u64 = list.iter().map(|m| m.bytes).sum();
    let mut removed = Removed::default();
    let now = SystemTime::now();
    for info in list {
        let too_old = older_than.is_some_and(|age| {
            now.duration_since(info.last_used)
                .is_ok_and(|unused| unused > age)
        });
        let over = max_size.is_some_and(|max| other_bytes + total > max);
        if !(all || too_old || over) {
            continue;
        }
        let gone = dry_run || mounts.remove(&info)?;
        if gone {
            total -= info.bytes;
            removed.bytes += info.bytes;
            removed.mounts.push(info);
        }
    }
    removed.bytes_left = total;
    Ok(removed)
}
