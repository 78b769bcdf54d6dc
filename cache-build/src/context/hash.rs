//! blake3 file hashing with a persistent stat-keyed cache and a parallel cold path.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::Error;

/// Version of the cache file format; a file with another version is ignored.
const CACHE_VERSION: u32 = 1;

/// Files at least this big are hashed one at a time with blake3's rayon tree hashing; smaller
/// ones are spread over a pool of threads, one file per thread at a time.
const BIG_FILE: u64 = 8 << 20;

/// A file whose ctime is this close to (or after) the moment its hashing started is not
/// remembered: a later change within the same filesystem timestamp tick could leave its stat
/// data unchanged ("racily clean", as git calls it). Kernel file timestamps come from a coarse
/// clock that lags the real time by at most a jiffy (≤ 10 ms).
const RACY_WINDOW_NS: i64 = 50_000_000;

/// Entries not used for this many days are dropped when the cache is saved, so paths of deleted
/// files and of old stage roots do not pile up.
const FORGET_AFTER_DAYS: u32 = 30;

/// One remembered file.
#[derive(Clone, Copy, Debug)]
struct Remembered {
    key: StatKey,
    hash: [u8; 32],
    /// BuildKit's contenthash of the file: sha256 of its tarsum header, then its content.
    tarsum: [u8; 32],
    /// blake3 of the header `tarsum` was computed with.
    header: [u8; 32],
    used_day: u32,
}

/// Both digests of one file's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileHashes {
    /// blake3 of the content.
    pub(crate) blake3: [u8; 32],
    /// sha256 of the header given for the file, then its content (BuildKit's contenthash of a
    /// file when the header is `cache_llb::contenthash::header` of its stat).
    pub(crate) tarsum: [u8; 32],
}

/// The stat data a cached hash is valid for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StatKey {
    pub(crate) size: u64,
    pub(crate) mtime_ns: i64,
    pub(crate) ctime_ns: i64,
    pub(crate) ino: u64,
    pub(crate) dev: u64,
}

impl StatKey {
    pub(crate) fn from_metadata(meta: &std::fs::Metadata) -> StatKey {
        StatKey {
            size: meta.size(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            ctime_ns: meta
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CachedHash {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    dev: u64,
    blake3: String,
    /// [`Remembered::tarsum`] in hex; entries without it are hashed again.
    #[serde(default)]
    tarsum: String,
    /// [`Remembered::header`] in hex.
    #[serde(default)]
    header: String,
    /// Day (since the epoch) the entry was last used; entries unused for [`FORGET_AFTER_DAYS`]
    /// are dropped on save.
    #[serde(default)]
    used_day: u32,
}

/// The on-disk form of a [`HashCache`] (private to this module, so not a wire type).
#[derive(Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    entries: HashMap<String, CachedHash>,
}

/// Counters of one [`HashCache`] since it was loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashStats {
    /// Files whose content was read and hashed.
    pub files_hashed: u64,
    /// Files whose hash came from the cache without reading them.
    pub files_from_cache: u64,
    /// Bytes read for hashing.
    pub bytes_hashed: u64,
}

/// Remembers blake3 hashes of files by (path, size, mtime, ctime, inode, device) across builds,
/// in a JSON file under the build root.
///
/// A file whose stat data all match its remembered entry reuses the hash without being read.
/// Files changed just before they were hashed are not remembered (their stat data may not show
/// a change made within the same timestamp tick), so they are hashed again next time.
#[derive(Debug)]
pub struct HashCache {
    path: Option<PathBuf>,
    entries: HashMap<PathBuf, Remembered>,
    stats: HashStats,
    dirty: bool,
    today: u32,
}

impl HashCache {
    /// Loads the cache stored at `path`.
    ///
    /// Fails open: a missing, unreadable or corrupt file gives an empty cache (with a warning
    /// for anything but a missing file), never an error. [`HashCache::save`] writes to `path`.
    pub fn load(path: &Path) -> HashCache {
        let mut cache = HashCache::in_memory();
        cache.path = Some(path.to_path_buf());
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return cache,
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot read the context hash cache; starting empty");
                return cache;
            }
        };
        let file: CacheFile = match serde_json::from_slice(&bytes) {
            Ok(file) => file,
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "corrupt context hash cache; starting empty");
                return cache;
            }
        };
        if file.version != CACHE_VERSION {
            tracing::warn!(path = %path.display(), version = file.version, "context hash cache has an unknown version; starting empty");
            return cache;
        }
        for (name, entry) in file.entries {
            let (mut hash, mut tarsum, mut header) = ([0u8; 32], [0u8; 32], [0u8; 32]);
            if hex::decode_to_slice(&entry.blake3, &mut hash).is_err() {
                tracing::warn!(path = %path.display(), file = %name, "corrupt entry in the context hash cache; skipping it");
                continue;
            }
            if hex::decode_to_slice(&entry.tarsum, &mut tarsum).is_err()
                || hex::decode_to_slice(&entry.header, &mut header).is_err()
            {
                // Written by a version without BuildKit's contenthash: hash the file again.
                continue;
            }
            let key = StatKey {
                size: entry.size,
                mtime_ns: entry.mtime_ns,
                ctime_ns: entry.ctime_ns,
                ino: entry.ino,
                dev: entry.dev,
            };
            let remembered = Remembered {
                key,
                hash,
                tarsum,
                header,
                used_day: entry.used_day,
            };
            cache.entries.insert(PathBuf::from(name), remembered);
        }
        cache
    }

    /// A cache that lives only as long as this value; [`HashCache::save`] does nothing.
    pub fn in_memory() -> HashCache {
        HashCache {
            path: None,
            entries: HashMap::new(),
            stats: HashStats::default(),
            dirty: false,
            today: u32::try_from(now_ns() / 86_400_000_000_000).unwrap_or(0),
        }
    }

    /// Writes the cache back to the file it was loaded from, if anything changed.
    ///
    /// The write is atomic (a temporary file in the same directory, then a rename): concurrent
    /// builds never leave a torn file, and the last writer wins. Paths that are not UTF-8 are
    /// not stored.
    pub fn save(&self) -> Result<(), Error> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let save_err = |source: io::Error| Error::SaveCache {
            path: path.clone(),
            source,
        };
        let entries = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.used_day.saturating_add(FORGET_AFTER_DAYS) >= self.today)
            .filter_map(|(name, entry)| {
                let name = name.to_str()?.to_string();
                let Remembered {
                    key,
                    hash,
                    tarsum,
                    header,
                    used_day,
                } = entry;
                Some((
                    name,
                    CachedHash {
                        size: key.size,
                        mtime_ns: key.mtime_ns,
                        ctime_ns: key.ctime_ns,
                        ino: key.ino,
                        dev: key.dev,
                        blake3: hex::encode(hash),
                        tarsum: hex::encode(tarsum),
                        header: hex::encode(header),
                        used_day: *used_day,
                    },
                ))
            })
            .collect();
        let file = CacheFile {
            version: CACHE_VERSION,
            entries,
        };
        let bytes = serde_json::to_vec(&file).map_err(|err| save_err(io::Error::other(err)))?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(save_err)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(save_err)?;
        tmp.write_all(&bytes).map_err(save_err)?;
        tmp.persist(path).map_err(|err| save_err(err.error))?;
        Ok(())
    }

    /// Counters since the cache was loaded.
    pub fn stats(&self) -> HashStats {
        self.stats
    }

    /// Number of remembered files.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no file is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The remembered hash of `path` if its stat data still match; marks the entry used today.
    fn lookup(&mut self, path: &Path, key: &StatKey, header: &[u8; 32]) -> Option<FileHashes> {
        match self.entries.get_mut(path) {
            Some(entry) if entry.key == *key && entry.header == *header => {
                if entry.used_day < self.today {
                    // At most one rewrite a day for builds that only hit the cache.
                    entry.used_day = self.today;
                    self.dirty = true;
                }
                Some(FileHashes {
                    blake3: entry.hash,
                    tarsum: entry.tarsum,
                })
            }
            _ => None,
        }
    }

    /// Hashes `files` (absolute path and the stat data seen when it was listed) with blake3,
    /// taking what it can from the cache and reading the rest in parallel. Results are in input
    /// order.
    #[cfg(test)]
    pub(crate) fn hash_files(
        &mut self,
        files: &[(PathBuf, StatKey)],
    ) -> Result<Vec<[u8; 32]>, Error> {
        let headers = vec![Vec::new(); files.len()];
        Ok(self
            .hash_files_with_headers(files, &headers)?
            .into_iter()
            .map(|h| h.blake3)
            .collect())
    }

    /// Like [`HashCache::hash_files`], also giving each file's sha256 of `headers[i]` followed
    /// by its content (BuildKit's contenthash when the header is the file's tarsum header).
    pub(crate) fn hash_files_with_headers(
        &mut self,
        files: &[(PathBuf, StatKey)],
        headers: &[Vec<u8>],
    ) -> Result<Vec<FileHashes>, Error> {
        let header_ids: Vec<[u8; 32]> = headers
            .iter()
            .map(|h| *blake3::hash(h).as_bytes())
            .collect();
        let mut out: Vec<Option<FileHashes>> = Vec::with_capacity(files.len());
        let mut missing: Vec<usize> = Vec::new();
        for (idx, (path, key)) in files.iter().enumerate() {
            let hit = self.lookup(path, key, &header_ids[idx]);
            if hit.is_none() {
                missing.push(idx);
            }
            out.push(hit);
        }
        self.stats.files_from_cache += (files.len() - missing.len()) as u64;
        if missing.is_empty() {
            return Ok(out
                .into_iter()
                .map(|h| h.expect("every file was a cache hit"))
                .collect());
        }

        let (big, small): (Vec<usize>, Vec<usize>) = missing
            .iter()
            .partition(|&&idx| files[idx].1.size >= BIG_FILE);
        let mut results: Vec<(usize, Hashed)> = Vec::with_capacity(missing.len());
        for idx in big {
            results.push((idx, hash_file(&files[idx].0, &headers[idx], true)?));
        }
        results.extend(hash_parallel(files, headers, &small)?);

        for (idx, hashed) in results {
            let (path, listed) = &files[idx];
            self.stats.files_hashed += 1;
            self.stats.bytes_hashed += hashed.n_bytes;
            // Remember the hash only if the file did not change while it was read and was not
            // changed so recently that a further change could go unnoticed.
            let stable = hashed.before == *listed && hashed.after == *listed;
            let old_enough =
                listed.ctime_ns.max(listed.mtime_ns) < hashed.started_ns - RACY_WINDOW_NS;
            if stable && old_enough {
                let remembered = Remembered {
                    key: *listed,
                    hash: hashed.hashes.blake3,
                    tarsum: hashed.hashes.tarsum,
                    header: header_ids[idx],
                    used_day: self.today,
                };
                self.entries.insert(path.clone(), remembered);
                self.dirty = true;
            } else if self.entries.remove(path).is_some() {
                self.dirty = true;
            }
            out[idx] = Some(hashed.hashes);
        }
        Ok(out
            .into_iter()
            .map(|h| h.expect("every file was hashed"))
            .collect())
    }
}

/// The result of reading one file.
struct Hashed {
    hashes: FileHashes,
    n_bytes: u64,
    /// Stat data of the open file before and after reading.
    before: StatKey,
    after: StatKey,
    /// Wall clock when reading started, in ns since the epoch.
    started_ns: i64,
}

fn now_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Reads and hashes one file without following a symlink at its path.
fn hash_file(path: &Path, header: &[u8], rayon: bool) -> Result<Hashed, Error> {
    let started_ns = now_ns();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|err| Error::io("open for hashing", path, err))?;
    let stat = |file: &File| {
        file.metadata()
            .map(|meta| StatKey::from_metadata(&meta))
            .map_err(|err| Error::io("stat", path, err))
    };
    let before = stat(&file)?;
    let mut hasher = blake3::Hasher::new();
    let mut tarsum = sha2::Sha256::new();
    tarsum.update(header);
    let mut buf = vec![0u8; if rayon { 4 << 20 } else { 128 << 10 }];
    let mut n_bytes = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(Error::io("read", path, err)),
        };
        if rayon {
            hasher.update_rayon(&buf[..n]);
        } else {
            hasher.update(&buf[..n]);
        }
        tarsum.update(&buf[..n]);
        n_bytes += n as u64;
    }
    let after = stat(&file)?;
    Ok(Hashed {
        hashes: FileHashes {
            blake3: *hasher.finalize().as_bytes(),
            tarsum: tarsum.finalize().into(),
        },
        n_bytes,
        before,
        after,
        started_ns,
    })
}

/// Hashes `files[idx]` for each `idx` of `todo` on a small pool of threads.
fn hash_parallel(
    files: &[(PathBuf, StatKey)],
    headers: &[Vec<u8>],
    todo: &[usize],
) -> Result<Vec<(usize, Hashed)>, Error> {
    if todo.is_empty() {
        return Ok(Vec::new());
    }
    let n_threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8)
        .min(todo.len());
    if n_threads <= 1 {
        return todo
            .iter()
            .map(|&idx| Ok((idx, hash_file(&files[idx].0, &headers[idx], false)?)))
            .collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Hashed)>> = Mutex::new(Vec::with_capacity(todo.len()));
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..n_threads {
            scope.spawn(|| {
                let mut local = Vec::new();
                loop {
                    let pos = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&idx) = todo.get(pos) else { break };
                    match hash_file(&files[idx].0, &headers[idx], false) {
                        Ok(hashed) => local.push((idx, hashed)),
                        Err(err) => {
                            // Stop the other workers early: one error fails the selection.
                            next.store(todo.len(), Ordering::Relaxed);
                            let mut slot = first_err.lock().unwrap_or_else(|e| e.into_inner());
                            slot.get_or_insert(err);
                            break;
                        }
                    }
                }
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(local);
            });
        }
    });
    if let Some(err) = first_err.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(err);
    }
    Ok(results.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// Lowercase hex of a blake3 hash, for the canonical listing.
pub(crate) fn to_hex(hash: &[u8; 32]) -> String {
    hex::encode(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_old(path: &Path, content: &[u8]) -> StatKey {
        std::fs::write(path, content).expect("write");
        // Let the file age past the racy window so its hash is remembered.
        crate::context::test_support::age_files();
        StatKey::from_metadata(&std::fs::symlink_metadata(path).expect("stat"))
    }

    #[test]
    fn warm_lookup_reads_nothing_and_survives_save_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.txt");
        let key = write_old(&file, b"hello");
        let cache_path = dir.path().join("state/hashes.json");

        let mut cache = HashCache::load(&cache_path);
        let cold = cache.hash_files(&[(file.clone(), key)]).expect("hash");
        assert_eq!(cold[0], *blake3::hash(b"hello").as_bytes());
        assert_eq!(cache.stats().files_hashed, 1);
        assert_eq!(cache.stats().bytes_hashed, 5);
        cache.save().expect("save");

        let mut warm = HashCache::load(&cache_path);
        assert_eq!(warm.len(), 1);
        let again = warm.hash_files(&[(file.clone(), key)]).expect("hash");
        assert_eq!(again, cold);
        assert_eq!(
            warm.stats(),
            HashStats {
                files_hashed: 0,
                files_from_cache: 1,
                bytes_hashed: 0
            }
        );
    }

    #[test]
    fn entries_unused_for_a_month_are_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache_path = dir.path().join("hashes.json");
        let old = write_old(&dir.path().join("old"), b"old");
        let new = write_old(&dir.path().join("new"), b"new");
        let mut cache = HashCache::load(&cache_path);
        cache
            .hash_files(&[(dir.path().join("old"), old), (dir.path().join("new"), new)])
            .expect("hash");
        let today = cache.today;
        cache
            .entries
            .get_mut(&dir.path().join("old"))
            .expect("remembered")
            .used_day = today - FORGET_AFTER_DAYS - 1;
        cache.save().expect("save");
        let loaded = HashCache::load(&cache_path);
        assert_eq!(loaded.len(), 1);
        assert!(loaded.entries.contains_key(&dir.path().join("new")));
    }

    #[test]
    fn big_files_hash_like_small_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big");
        let content: Vec<u8> = (0..BIG_FILE + 12_345).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).expect("write");
        let key = StatKey::from_metadata(&std::fs::symlink_metadata(&path).expect("stat"));
        let mut cache = HashCache::in_memory();
        let hashes = cache.hash_files(&[(path, key)]).expect("hash");
        assert_eq!(hashes[0], *blake3::hash(&content).as_bytes());
        assert_eq!(cache.stats().bytes_hashed, content.len() as u64);
    }

    #[test]
    fn changed_stat_rehashes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.txt");
        let key = write_old(&file, b"one");
        let mut cache = HashCache::in_memory();
        cache.hash_files(&[(file.clone(), key)]).expect("hash");
        let key2 = write_old(&file, b"two!");
        let hashes = cache.hash_files(&[(file.clone(), key2)]).expect("hash");
        assert_eq!(hashes[0], *blake3::hash(b"two!").as_bytes());
        assert_eq!(cache.stats().files_hashed, 2);
    }

    #[test]
    fn fresh_files_are_not_remembered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.txt");
        std::fs::write(&file, b"now").expect("write");
        let key = StatKey::from_metadata(&std::fs::symlink_metadata(&file).expect("stat"));
        let mut cache = HashCache::in_memory();
        cache.hash_files(&[(file.clone(), key)]).expect("hash");
        assert!(
            cache.is_empty(),
            "a file changed within the racy window must not be cached"
        );
    }

    #[test]
    fn corrupt_or_missing_file_is_an_empty_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hashes.json");
        assert!(HashCache::load(&path).is_empty());
        std::fs::write(&path, b"{not json").expect("write");
        assert!(HashCache::load(&path).is_empty());
        std::fs::write(&path, br#"{"version":1,"entries":{"/x":{"size":1,"mtime_ns":0,"ctime_ns":0,"ino":1,"dev":1,"blake3":"zz"}}}"#)
            .expect("write");
        assert!(HashCache::load(&path).is_empty());
    }

    #[test]
    fn parallel_hashing_matches_sequential() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut files = Vec::new();
        for i in 0..50 {
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, format!("content {i}").repeat(i * 100)).expect("write");
            let key = StatKey::from_metadata(&std::fs::symlink_metadata(&path).expect("stat"));
            files.push((path, key));
        }
        let mut cache = HashCache::in_memory();
        let hashes = cache.hash_files(&files).expect("hash");
        for (i, hash) in hashes.iter().enumerate() {
            let expect = blake3::hash(format!("content {i}").repeat(i * 100).as_bytes());
            assert_eq!(hash, expect.as_bytes());
        }
    }
}
