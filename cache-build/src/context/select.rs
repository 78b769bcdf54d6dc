//! Resolving COPY/ADD sources inside a source root and checksumming exactly what they select.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use cache_core::digest::{Digest, Hasher};

use super::Error;
use super::hash::{HashCache, StatKey, to_hex};
use crate::dockerfile::IgnoreMatcher;

/// Symlinks followed while resolving one source path before giving up (Linux's limit).
const MAX_SYMLINKS: usize = 40;

/// First line of the canonical listing; bump it when the listing format changes.
const LISTING_HEADER: &[u8] = b"buildcache-context-selection v1\n";

/// What a selected entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (copied as a link).
    Symlink,
    /// A named pipe.
    Fifo,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl EntryKind {
    fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::Fifo => "fifo",
            EntryKind::CharDevice => "char",
            EntryKind::BlockDevice => "block",
        }
    }
}

/// One file, directory, link or device a source selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectedEntry {
    /// Path relative to the [`Match`] it belongs to; empty for the match itself.
    pub rel: PathBuf,
    /// Entry type.
    pub kind: EntryKind,
    /// Permission bits plus setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Size in bytes (files only; 0 otherwise).
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds part.
    pub mtime_nsec: u32,
    /// Target of a symlink, as stored in the link.
    pub link_target: Option<PathBuf>,
    /// Device number of a device node.
    pub rdev: u64,
    /// Device and inode of the source, to keep hard links together when copying.
    pub dev_ino: (u64, u64),
    /// Number of hard links of the source.
    pub nlink: u64,
    /// blake3 of a file's content.
    pub blake3: Option<[u8; 32]>,
    /// Owner as BuildKit sees it (0 for a client's context, whose owners BuildKit's client
    /// resets).
    pub uid: u32,
    /// Group, likewise.
    pub gid: u32,
    /// BuildKit's contenthash of the entry (its tarsum header, then a file's content).
    pub tarsum: Option<Digest>,
    /// A directory selected only because an include match lies below it (`COPY --parents`):
    /// one that already exists at the destination only takes its mode, as BuildKit's copier
    /// treats such parents.
    pub parent_only: bool,
}

impl SelectedEntry {
    /// The stat BuildKit's contenthash header is made of.
    pub fn contenthash_stat(&self) -> cache_llb::contenthash::Stat {
        use cache_llb::contenthash::{Kind, Stat};
        let kind = match self.kind {
            EntryKind::File => Kind::File,
            EntryKind::Dir => Kind::Dir,
            EntryKind::Symlink => Kind::Symlink,
            EntryKind::Fifo => Kind::Fifo,
            EntryKind::CharDevice => Kind::CharDevice,
            EntryKind::BlockDevice => Kind::BlockDevice,
        };
        let mut stat = Stat::new(kind, self.mode);
        stat.uid = self.uid;
        stat.gid = self.gid;
        stat.size = self.size;
        stat.link = self
            .link_target
            .as_ref()
            .map(|t| String::from_utf8_lossy(t.as_os_str().as_bytes()).into_owned())
            .unwrap_or_default();
        let rdev = self.rdev;
        stat.devmajor = u64::from(nix_major(rdev));
        stat.devminor = u64::from(nix_minor(rdev));
        stat
    }
}

/// Linux's `major()` of a device number.
fn nix_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32
}

/// Linux's `minor()` of a device number.
fn nix_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32
}

/// One path a source matched, with everything below it that is selected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    /// The path as named, relative to the source root: the source after cleaning, or for a
    /// wildcard the names it matched. Its last component names the copy at the destination.
    pub named: PathBuf,
    /// `named` with symlinks resolved inside the source root, relative to it; no component of it
    /// is a symlink.
    pub resolved: PathBuf,
    /// `resolved` joined to the source root.
    pub path: PathBuf,
    /// The match itself first (`rel` empty), then for a directory its selected descendants in
    /// depth-first order with names sorted by bytes inside each directory.
    pub entries: Vec<SelectedEntry>,
}

impl Match {
    /// The path of one of this match's entries relative to the source root, as named
    /// (`named` joined with the entry's `rel`).
    pub fn entry_path(&self, entry: &SelectedEntry) -> PathBuf {
        join_rel(&self.named, &entry.rel)
    }

    /// Where one of this match's entries is in the source root, relative to it, with no
    /// symlink in the path (`resolved` joined with the entry's `rel`).
    pub fn entry_source(&self, entry: &SelectedEntry) -> PathBuf {
        join_rel(&self.resolved, &entry.rel)
    }

    /// Whether the match is a directory (whose contents are copied, not the directory itself).
    pub fn is_dir(&self) -> bool {
        self.entries
            .first()
            .is_some_and(|entry| entry.kind == EntryKind::Dir)
    }
}

/// What one source argument selected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectedSource {
    /// The source as written.
    pub source: String,
    /// Whether the source contains wildcards (`*`, `?`, `[`).
    pub is_wildcard: bool,
    /// The paths it matched, sorted by name (one for a plain path).
    pub matches: Vec<Match>,
}

/// The result of [`select`]: what each source selected and a checksum over all of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// sha256 of the canonical listing of the selected entries: a version line, then one line
    /// per entry, `<source index>\t<path>\t<type>\t<mode octal>\t<blake3 hex | link target | ->`,
    /// where the path is the match's `named` path joined with the entry's `rel` path (control
    /// characters and `\` escaped, `.` for the root). A directory match's own mode is written
    /// as `-` (it is not copied). Ownership and timestamps are not part of it.
    pub checksum: Digest,
    /// Per source argument, in order.
    pub sources: Vec<SelectedSource>,
    /// Number of regular files selected (counted once per source that selects them).
    pub n_files: u64,
    /// Total size of those files.
    pub n_bytes: u64,
}

/// `base/rel`, without the trailing `/` that `Path::join` adds for an empty `rel`.
fn join_rel(base: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

/// Resolves COPY/ADD `sources` against `src_root` and checksums exactly the entries they select.
///
/// Sources are relative to `src_root` with Docker's semantics: a leading `/` or `..` cannot
/// leave it, symlinks in the path resolve inside it, a source naming a directory selects its
/// contents, and Go `filepath.Match` wildcards (`*`, `?`, `[...]`, `\` escapes) apply per path
/// component. Entries `ignore` excludes (the `.dockerignore` of the build context) are left out;
/// pass `None` for a stage's root filesystem. File content is hashed with blake3 through `cache`,
/// so an unchanged file is not read again.
///
/// Errors: a source matching nothing ([`Error::NotFound`], or [`Error::NoMatch`] for a
/// wildcard), an invalid pattern, or an I/O failure while listing or reading.
pub fn select(
    src_root: &Path,
    sources: &[String],
    ignore: Option<&IgnoreMatcher>,
    cache: &mut HashCache,
) -> Result<Selection, Error> {
    select_excluding(src_root, sources, ignore, None, cache)
}

/// [`select`], leaving out what `exclude` matches (`COPY --exclude`): patterns are matched
/// against paths relative to each source's match (a file match by its name), and a matched
/// directory leaves out everything below it, as BuildKit's copy does.
pub fn select_excluding(
    src_root: &Path,
    sources: &[String],
    ignore: Option<&IgnoreMatcher>,
    exclude: Option<&IgnoreMatcher>,
    cache: &mut HashCache,
) -> Result<Selection, Error> {
    select_with(src_root, sources, ignore, exclude, cache, ignore.is_some())
}

/// [`select_excluding`], with every entry's BuildKit contenthash ([`SelectedEntry::tarsum`])
/// computed as if owned by 0:0 when `reset_owner` (BuildKit's client sends a context so).
pub fn select_with(
    src_root: &Path,
    sources: &[String],
    ignore: Option<&IgnoreMatcher>,
    exclude: Option<&IgnoreMatcher>,
    cache: &mut HashCache,
    reset_owner: bool,
) -> Result<Selection, Error> {
    select_including(src_root, sources, &[], ignore, exclude, cache, reset_owner)
}

/// [`select_with`], where a source with an include matcher in `includes` (same index; missing
/// or `None`: everything) selects below its match only what the matcher matches, relative to
/// the match, with the directories leading there (`COPY --parents`, as BuildKit's copy with
/// include patterns): a matched directory brings everything below it, other directories only
/// come with a match below them, and files that do not match are left out.
pub fn select_including(
    src_root: &Path,
    sources: &[String],
    includes: &[Option<&IgnoreMatcher>],
    ignore: Option<&IgnoreMatcher>,
    exclude: Option<&IgnoreMatcher>,
    cache: &mut HashCache,
    reset_owner: bool,
) -> Result<Selection, Error> {
    let root_name = if ignore.is_some() {
        "build context"
    } else {
        "source stage"
    };
    let mut selected = Vec::with_capacity(sources.len());
    // Files to hash: (source idx, match idx, entry idx) and (absolute path, stat data).
    let mut refs: Vec<(usize, usize, usize)> = Vec::new();
    let mut to_hash: Vec<(PathBuf, StatKey)> = Vec::new();
    let mut headers: Vec<Vec<u8>> = Vec::new();
    for (source_idx, source) in sources.iter().enumerate() {
        let is_wildcard = has_wildcard(source);
        let comps = clean_components(source);
        let named_paths = if is_wildcard {
            expand_wildcards(src_root, source, &comps)?
        } else {
            vec![comps.iter().collect::<PathBuf>()]
        };
        let mut matches = Vec::new();
        for named in named_paths {
            let walker = Walker {
                root: src_root,
                ignore,
                exclude,
                include: includes.get(source_idx).copied().flatten(),
                reset_owner,
            };
            if let Some((found, files)) = walker.match_path(&named)? {
                let match_idx = matches.len();
                for (entry_idx, abs, key) in files {
                    refs.push((source_idx, match_idx, entry_idx));
                    headers.push(cache_llb::contenthash::header(
                        &found.entries[entry_idx].contenthash_stat(),
                    ));
                    to_hash.push((abs, key));
                }
                matches.push(found);
            }
        }
        if matches.is_empty() {
            return Err(if is_wildcard {
                Error::NoMatch {
                    source_path: source.clone(),
                    root_name,
                }
            } else {
                Error::NotFound {
                    source_path: source.clone(),
                    root_name,
                }
            });
        }
        selected.push(SelectedSource {
            source: source.clone(),
            is_wildcard,
            matches,
        });
    }

    let hashes = cache.hash_files_with_headers(&to_hash, &headers)?;
    let mut n_bytes = 0;
    for ((source_idx, match_idx, entry_idx), hash) in refs.iter().zip(hashes) {
        let entry = &mut selected[*source_idx].matches[*match_idx].entries[*entry_idx];
        entry.blake3 = Some(hash.blake3);
        entry.tarsum = Some(
            Digest::try_from(format!("sha256:{}", hex::encode(hash.tarsum)))
                .expect("a sha256 digest"),
        );
        n_bytes += entry.size;
    }
    for source in &mut selected {
        for found in &mut source.matches {
            for entry in &mut found.entries {
                if entry.tarsum.is_none() {
                    entry.tarsum = Some(cache_llb::contenthash::entry_digest(
                        &entry.contenthash_stat(),
                        b"",
                    ));
                }
            }
        }
    }

    let mut hasher = Hasher::new();
    hasher.update(LISTING_HEADER);
    let mut line = Vec::with_capacity(256);
    for (source_idx, source) in selected.iter().enumerate() {
        for found in &source.matches {
            for entry in &found.entries {
                line.clear();
                listing_line(&mut line, source_idx, found, entry);
                hasher.update(&line);
            }
        }
    }
    Ok(Selection {
        checksum: hasher.finish(),
        sources: selected,
        n_files: refs.len() as u64,
        n_bytes,
    })
}

/// Appends the canonical listing line of `entry` to `out`.
fn listing_line(out: &mut Vec<u8>, source_idx: usize, found: &Match, entry: &SelectedEntry) {
    out.extend_from_slice(source_idx.to_string().as_bytes());
    out.push(b'\t');
    let path = found.entry_path(entry);
    if path.as_os_str().is_empty() {
        out.push(b'.');
    } else {
        escape_into(out, path.as_os_str().as_bytes());
    }
    out.push(b'\t');
    out.extend_from_slice(entry.kind.as_str().as_bytes());
    out.push(b'\t');
    if entry.kind == EntryKind::Dir && entry.rel.as_os_str().is_empty() {
        // A directory source copies its contents, not itself: its own mode never reaches the
        // destination, so it must not split the cache between machines with other umasks.
        out.push(b'-');
    } else {
        out.extend_from_slice(format!("{:o}", entry.mode).as_bytes());
    }
    out.push(b'\t');
    match (entry.kind, &entry.blake3, &entry.link_target) {
        (EntryKind::File, Some(hash), _) => out.extend_from_slice(to_hex(hash).as_bytes()),
        (EntryKind::Symlink, _, Some(target)) => escape_into(out, target.as_os_str().as_bytes()),
        (EntryKind::CharDevice | EntryKind::BlockDevice, _, _) => {
            out.extend_from_slice(format!("rdev={}", entry.rdev).as_bytes())
        }
        _ => out.push(b'-'),
    }
    out.push(b'\n');
}

/// Copies `bytes`, escaping `\` and control characters so that tabs and newlines in names
/// cannot forge listing lines.
fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            _ => out.push(b),
        }
    }
}

/// Go `path.Clean("/" + source)` split into components: no empty, `.` or `..` parts, so the
/// result can never leave the root.
pub(crate) fn clean_components(source: &str) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    for part in source.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(OsString::from(part)),
        }
    }
    out
}

/// Whether `source` has an unescaped `*`, `?` or `[` (BuildKit's `containsWildcards`).
fn has_wildcard(source: &str) -> bool {
    let mut escaped = false;
    for c in source.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// Removes `\` escapes from a literal pattern component.
fn unescape(comp: &str) -> String {
    let mut out = String::with_capacity(comp.len());
    let mut chars = comp.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Expands a wildcard source into the named paths it matches (that exist as names; they are
/// resolved later), in sorted order.
fn expand_wildcards(root: &Path, source: &str, comps: &[OsString]) -> Result<Vec<PathBuf>, Error> {
    let mut candidates: Vec<PathBuf> = vec![PathBuf::new()];
    for comp in comps {
        let comp_str = comp.to_str().expect("components of a &str are UTF-8");
        if !has_wildcard(comp_str) {
            let literal = unescape(comp_str);
            for cand in &mut candidates {
                cand.push(&literal);
            }
            continue;
        }
        let pattern: Vec<char> = comp_str.chars().collect();
        validate_pattern(&pattern).map_err(|reason| Error::BadPattern {
            source_path: source.to_string(),
            reason,
        })?;
        let mut next = Vec::new();
        for cand in &candidates {
            let cand_comps: Vec<OsString> = cand.iter().map(OsStr::to_os_string).collect();
            let Some(resolved) = resolve_in_root(root, &cand_comps, true)
                .map_err(|err| Error::io("resolve", root.join(cand), err))?
            else {
                continue;
            };
            let dir = root.join(&resolved);
            let mut names: Vec<OsString> = match std::fs::read_dir(&dir) {
                Ok(iter) => iter
                    .map(|res| res.map(|entry| entry.file_name()))
                    .collect::<Result<_, _>>()
                    .map_err(|err| Error::io("list", &dir, err))?,
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
                    continue;
                }
                Err(err) => return Err(Error::io("list", &dir, err)),
            };
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for name in names {
                let name_chars: Vec<char> =
                    String::from_utf8_lossy(name.as_bytes()).chars().collect();
                if match_component(&pattern, &name_chars) {
                    next.push(cand.join(&name));
                }
            }
        }
        candidates = next;
    }
    Ok(candidates)
}

/// Checks a pattern component the way Go's `filepath.Match` reports `ErrBadPattern`.
fn validate_pattern(pattern: &[char]) -> Result<(), String> {
    let mut idx = 0;
    while idx < pattern.len() {
        match pattern[idx] {
            '\\' => {
                if idx + 1 >= pattern.len() {
                    return Err("a trailing `\\` escapes nothing".into());
                }
                idx += 2;
            }
            '[' => match parse_class(pattern, idx + 1) {
                Some(class) => idx = class.end,
                None => return Err("unterminated or empty character class `[...]`".into()),
            },
            _ => idx += 1,
        }
    }
    Ok(())
}

/// A parsed `[...]` character class.
struct CharClass {
    negated: bool,
    /// Inclusive ranges; a single character is a range of one.
    ranges: Vec<(char, char)>,
    /// Index in the pattern after the closing `]`.
    end: usize,
}

/// Parses a character class starting after its `[`; `None` if it is empty or unterminated.
fn parse_class(pattern: &[char], mut idx: usize) -> Option<CharClass> {
    let negated = pattern.get(idx) == Some(&'^');
    if negated {
        idx += 1;
    }
    let mut ranges = Vec::new();
    let read_char = |idx: &mut usize| -> Option<char> {
        let c = *pattern.get(*idx)?;
        if c == '\\' {
            let escaped = *pattern.get(*idx + 1)?;
            *idx += 2;
            Some(escaped)
        } else if c == ']' || c == '-' {
            None
        } else {
            *idx += 1;
            Some(c)
        }
    };
    loop {
        if pattern.get(idx) == Some(&']') && !ranges.is_empty() {
            return Some(CharClass {
                negated,
                ranges,
                end: idx + 1,
            });
        }
        let lo = read_char(&mut idx)?;
        let hi = if pattern.get(idx) == Some(&'-') {
            idx += 1;
            read_char(&mut idx)?
        } else {
            lo
        };
        ranges.push((lo, hi));
    }
}

/// Go `filepath.Match` for one path component (the pattern was validated).
fn match_component(pattern: &[char], name: &[char]) -> bool {
    let Some(&first) = pattern.first() else {
        return name.is_empty();
    };
    match first {
        '*' => {
            let rest = &pattern[1..];
            (0..=name.len()).any(|skip| match_component(rest, &name[skip..]))
        }
        '?' => !name.is_empty() && match_component(&pattern[1..], &name[1..]),
        '[' => {
            let Some(&c) = name.first() else {
                return false;
            };
            let Some(class) = parse_class(pattern, 1) else {
                return false;
            };
            let hit = class.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
            hit != class.negated && match_component(&pattern[class.end..], &name[1..])
        }
        '\\' if pattern.len() > 1 => {
            name.first() == Some(&pattern[1]) && match_component(&pattern[2..], &name[1..])
        }
        c => name.first() == Some(&c) && match_component(&pattern[1..], &name[1..]),
    }
}

/// Resolves `components` inside `root` as if `root` were `/`: `..` stops at the root and
/// absolute symlink targets start again from it. The final component is followed only if
/// `follow_final`. Returns the resolved path relative to `root` (no component of it is a
/// symlink, except possibly the last when not following), or `None` if it does not exist.
pub(crate) fn resolve_in_root(
    root: &Path,
    components: &[OsString],
    follow_final: bool,
) -> io::Result<Option<PathBuf>> {
    resolve_impl(root, components, follow_final, false)
}

/// Like [`resolve_in_root`], but a missing component ends the resolution with the rest of the
/// path appended as written (`..` still clamped): where `mkdir -p` inside the root would create
/// directories, following symlinks (also dangling ones) inside the root.
pub(crate) fn resolve_for_create(root: &Path, components: &[OsString]) -> io::Result<PathBuf> {
    Ok(resolve_impl(root, components, true, true)?.expect("missing components are kept"))
}

fn resolve_impl(
    root: &Path,
    components: &[OsString],
    follow_final: bool,
    keep_missing: bool,
) -> io::Result<Option<PathBuf>> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut todo: VecDeque<OsString> = components.iter().cloned().collect();
    let mut n_links = 0;
    while let Some(comp) = todo.pop_front() {
        if comp.is_empty() || comp == "." {
            continue;
        }
        if comp == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&comp);
        let meta = match std::fs::symlink_metadata(&candidate) {
            Ok(meta) => meta,
            Err(err) if keep_missing && err.kind() == io::ErrorKind::NotFound => {
                resolved.push(comp);
                for rest in todo {
                    if rest == ".." {
                        resolved.pop();
                    } else if !rest.is_empty() && rest != "." {
                        resolved.push(rest);
                    }
                }
                return Ok(Some(resolved.iter().collect()));
            }
            Err(err)
                if !keep_missing
                    && matches!(
                        err.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
            {
                return Ok(None);
            }
            Err(err) => return Err(err),
        };
        if meta.file_type().is_symlink() && (follow_final || !todo.is_empty()) {
            n_links += 1;
            if n_links > MAX_SYMLINKS {
                return Err(io::Error::other(format!(
                    "too many levels of symbolic links at {}",
                    candidate.display()
                )));
            }
            let target = std::fs::read_link(&candidate)?;
            if target.is_absolute() {
                resolved.clear();
            }
            for part in target.iter().rev() {
                if part != "/" {
                    todo.push_front(part.to_os_string());
                }
            }
            continue;
        }
        resolved.push(comp);
    }
    Ok(Some(resolved.iter().collect()))
}

/// Lists what one named path selects.
struct Walker<'a> {
    root: &'a Path,
    ignore: Option<&'a IgnoreMatcher>,
    /// `COPY --exclude` patterns, relative to the match.
    exclude: Option<&'a IgnoreMatcher>,
    /// `COPY --parents` include pattern, relative to the match.
    include: Option<&'a IgnoreMatcher>,
    reset_owner: bool,
}

/// Entry index in [`Match::entries`], absolute path and stat data of a file to hash.
type FileRef = (usize, PathBuf, StatKey);

impl Walker<'_> {
    fn is_excluded(&self, rel: &Path) -> bool {
        match self.ignore {
            Some(ignore) if !rel.as_os_str().is_empty() => {
                ignore.is_excluded(&String::from_utf8_lossy(rel.as_os_str().as_bytes()))
            }
            _ => false,
        }
    }

    /// Whether `COPY --exclude` leaves out `match_rel` (relative to the match).
    fn is_left_out(&self, match_rel: &Path) -> bool {
        match self.exclude {
            Some(exclude) if !match_rel.as_os_str().is_empty() => {
                exclude.is_excluded(&String::from_utf8_lossy(match_rel.as_os_str().as_bytes()))
            }
            _ => false,
        }
    }

    /// Whether the include pattern matches `match_rel` (relative to the match) or a parent of
    /// it; true without one.
    fn is_included(&self, match_rel: &Path) -> bool {
        self.include.is_none_or(|include| {
            include.is_excluded(&String::from_utf8_lossy(match_rel.as_os_str().as_bytes()))
        })
    }

    /// Whether the include pattern may match something below the directory `match_rel`.
    fn may_match_under(&self, match_rel: &Path) -> bool {
        self.include.is_none_or(|include| {
            include.may_match_under(&String::from_utf8_lossy(match_rel.as_os_str().as_bytes()))
        })
    }

    fn may_include_under(&self, rel: &Path) -> bool {
        match self.ignore {
            Some(ignore) => {
                ignore.may_include_under(&String::from_utf8_lossy(rel.as_os_str().as_bytes()))
            }
            None => true,
        }
    }

    /// The match for `named`, or `None` if it does not exist or is excluded.
    fn match_path(&self, named: &Path) -> Result<Option<(Match, Vec<FileRef>)>, Error> {
        let comps: Vec<OsString> = named.iter().map(OsStr::to_os_string).collect();
        let Some(resolved) = resolve_in_root(self.root, &comps, true)
            .map_err(|err| Error::io("resolve", self.root.join(named), err))?
        else {
            return Ok(None);
        };
        let path = self.root.join(&resolved);
        let meta = std::fs::symlink_metadata(&path).map_err(|err| Error::io("stat", &path, err))?;
        let excluded = self.is_excluded(named) || self.is_excluded(&resolved);
        let mut entries = Vec::new();
        let mut files = Vec::new();
        let Some(first) = entry_from_meta(PathBuf::new(), &meta, &path, self.reset_owner)? else {
            return Ok(None);
        };
        let is_dir = first.kind == EntryKind::Dir;
        if first.kind == EntryKind::File {
            files.push((0, path.clone(), StatKey::from_metadata(&meta)));
        }
        entries.push(first);
        if is_dir {
            if excluded && !self.may_include_under(&resolved) {
                return Ok(None);
            }
            let n_included =
                self.walk(&path, &resolved, Path::new(""), &mut entries, &mut files)?;
            if excluded && n_included == 0 {
                return Ok(None);
            }
        } else if excluded
            || named
                .file_name()
                .is_some_and(|n| self.is_left_out(Path::new(n)))
        {
            return Ok(None);
        }
        Ok(Some((
            Match {
                named: named.to_path_buf(),
                resolved,
                path,
                entries,
            },
            files,
        )))
    }

    /// Adds the selected entries below the directory `abs` (`ctx_rel` relative to the root,
    /// `match_rel` relative to the match). Returns how many entries were added.
    fn walk(
        &self,
        abs: &Path,
        ctx_rel: &Path,
        match_rel: &Path,
        entries: &mut Vec<SelectedEntry>,
        files: &mut Vec<FileRef>,
    ) -> Result<usize, Error> {
        let mut children: Vec<(OsString, std::fs::Metadata)> = Vec::new();
        let iter = std::fs::read_dir(abs).map_err(|err| Error::io("list", abs, err))?;
        for res in iter {
            let entry = res.map_err(|err| Error::io("list", abs, err))?;
            let meta = entry
                .metadata()
                .map_err(|err| Error::io("stat", entry.path(), err))?;
            children.push((entry.file_name(), meta));
        }
        children.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut n_added = 0;
        for (name, meta) in children {
            let child_ctx = ctx_rel.join(&name);
            let child_abs = abs.join(&name);
            let child_rel = match_rel.join(&name);
            // Below an excluded directory only re-included paths count; the matcher checks
            // parents itself, so asking about the child is enough either way.
            if self.is_left_out(&child_rel) {
                continue;
            }
            let excluded = self.is_excluded(&child_ctx);
            let is_dir = meta.file_type().is_dir();
            if excluded && !(is_dir && self.may_include_under(&child_ctx)) {
                continue;
            }
            // Not matched by the include pattern: only a directory a match may be below.
            let unmatched = !self.is_included(&child_rel);
            if unmatched && !(is_dir && self.may_match_under(&child_rel)) {
                continue;
            }
            let Some(mut entry) =
                entry_from_meta(child_rel.clone(), &meta, &child_abs, self.reset_owner)?
            else {
                continue;
            };
            entry.parent_only = unmatched;
            let idx = entries.len();
            if entry.kind == EntryKind::File {
                files.push((idx, child_abs.clone(), StatKey::from_metadata(&meta)));
            }
            entries.push(entry);
            if is_dir {
                let n_files_before = files.len();
                let n_below = self.walk(&child_abs, &child_ctx, &child_rel, entries, files)?;
                if (excluded || unmatched) && n_below == 0 {
                    // An excluded directory with nothing re-included below it, or one leading
                    // to no include match, is not selected.
                    entries.truncate(idx);
                    files.truncate(n_files_before);
                    continue;
                }
                n_added += n_below;
            }
            n_added += 1;
        }
        Ok(n_added)
    }
}

/// Builds an entry from `lstat` data; `None` for sockets, which are never copied.
fn entry_from_meta(
    rel: PathBuf,
    meta: &std::fs::Metadata,
    abs: &Path,
    reset_owner: bool,
) -> Result<Option<SelectedEntry>, Error> {
    let file_type = meta.file_type();
    let kind = if file_type.is_file() {
        EntryKind::File
    } else if file_type.is_dir() {
        EntryKind::Dir
    } else if file_type.is_symlink() {
        EntryKind::Symlink
    } else if file_type.is_fifo() {
        EntryKind::Fifo
    } else if file_type.is_char_device() {
        EntryKind::CharDevice
    } else if file_type.is_block_device() {
        EntryKind::BlockDevice
    } else {
        return Ok(None);
    };
    let link_target = if kind == EntryKind::Symlink {
        Some(std::fs::read_link(abs).map_err(|err| Error::io("read symlink", abs, err))?)
    } else {
        None
    };
    Ok(Some(SelectedEntry {
        rel,
        kind,
        mode: meta.mode() & 0o7777,
        size: if kind == EntryKind::File {
            meta.size()
        } else {
            0
        },
        mtime_sec: meta.mtime(),
        mtime_nsec: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
        link_target,
        rdev: meta.rdev(),
        dev_ino: (meta.dev(), meta.ino()),
        nlink: meta.nlink(),
        blake3: None,
        uid: if reset_owner { 0 } else { meta.uid() },
        gid: if reset_owner { 0 } else { meta.gid() },
        tarsum: None,
        parent_only: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::test_support::{age_files, chmod, write};

    fn sel(
        root: &Path,
        sources: &[&str],
        ignore: Option<&IgnoreMatcher>,
    ) -> Result<Selection, Error> {
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        select(root, &sources, ignore, &mut HashCache::in_memory())
    }

    /// Context-relative paths of everything selected, as `named/rel`.
    fn names(selection: &Selection) -> Vec<String> {
        let mut out = Vec::new();
        for source in &selection.sources {
            for found in &source.matches {
                for entry in &found.entries {
                    out.push(found.entry_path(entry).to_string_lossy().into_owned());
                }
            }
        }
        out
    }

    fn context() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.txt", "a");
        write(dir.path(), "b.txt", "b");
        write(dir.path(), "c.md", "c");
        write(dir.path(), "src/x/a", "xa");
        write(dir.path(), "src/x/b", "xb");
        write(dir.path(), "src/y/a", "ya");
        write(dir.path(), "dir/one.txt", "1");
        write(dir.path(), "dir/sub/two.txt", "2");
        write(dir.path(), "dir/secret.key", "k");
        dir
    }

    /// `COPY --parents`: what an include pattern selects below each source, and the
    /// directories that lead there (none that lead nowhere).
    #[test]
    fn include_patterns_select_matches_and_the_directories_to_them() {
        let dir = context();
        let check = |sources: &[&str], pattern: &str, expect: &[&str]| {
            let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
            let include = IgnoreMatcher::from_patterns([pattern]).expect("pattern");
            let includes = vec![Some(&include); sources.len()];
            let selection = select_including(
                dir.path(),
                &sources,
                &includes,
                None,
                None,
                &mut HashCache::in_memory(),
                false,
            )
            .expect("select");
            assert_eq!(names(&selection), expect, "{sources:?} include {pattern}");
        };
        check(&["."], "src/x/a", &["", "src", "src/x", "src/x/a"]);
        check(
            &["src"],
            "*/a",
            &["src", "src/x", "src/x/a", "src/y", "src/y/a"],
        );
        check(
            &["."],
            "dir",
            &[
                "",
                "dir",
                "dir/one.txt",
                "dir/secret.key",
                "dir/sub",
                "dir/sub/two.txt",
            ],
        );
        check(
            &["."],
            "**/*.txt",
            &[
                "",
                "a.txt",
                "b.txt",
                "dir",
                "dir/one.txt",
                "dir/sub",
                "dir/sub/two.txt",
            ],
        );
        check(&["."], "nothing/here", &[""]);
    }

    /// BuildKit's `testExcludedFilesOnCopy` cases: patterns match below each source's match.
    #[test]
    fn exclude_patterns_match_relative_to_each_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for (path, body) in [
            ("dir1/file-101.png", "2"),
            ("dir1/file-102.txt", "3"),
            ("dir2/file-201.pdf", "6"),
            ("dir3/file-301.mp3", "9"),
            ("dir3/file-302.mpeg", "10"),
        ] {
            write(root, path, body);
        }
        let check = |sources: &[&str], exclude: &[&str], expect: &[&str]| {
            let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
            let exclude = IgnoreMatcher::parse(&exclude.join("\n")).expect("patterns");
            let selection = select_excluding(
                root,
                &sources,
                None,
                Some(&exclude),
                &mut HashCache::in_memory(),
            )
            .expect("select");
            let mut got = names(&selection);
            got.retain(|n| n.contains('.'));
            assert_eq!(got, expect, "{sources:?} --exclude {exclude:?}");
        };
        check(
            &["."],
            &["*/*.png", "*/*.pdf"],
            &[
                "dir1/file-102.txt",
                "dir3/file-301.mp3",
                "dir3/file-302.mpeg",
            ],
        );
        check(&["dir3/"], &["*.mp3"], &["dir3/file-302.mpeg"]);
        check(
            &["dir*"],
            &["*.mp*", "*.png", "*.pdf"],
            &["dir1/file-102.txt"],
        );
        check(&["dir*/file-1*"], &["*.png"], &["dir1/file-102.txt"]);
        check(
            &["."],
            &["dir1", "dir2"],
            &["dir3/file-301.mp3", "dir3/file-302.mpeg"],
        );
        let plain = sel(root, &["."], None).expect("select").checksum;
        let sources = vec![".".to_string()];
        let exclude = IgnoreMatcher::parse("*/*.png").expect("pattern");
        let excluded = select_excluding(
            root,
            &sources,
            None,
            Some(&exclude),
            &mut HashCache::in_memory(),
        )
        .expect("select")
        .checksum;
        assert_ne!(plain, excluded, "what is left out is not in the checksum");
    }

    #[test]
    fn checksum_covers_exactly_the_selected_content() {
        let ctx = context();
        let root = ctx.path();
        let sources = ["a.txt", "dir"];
        let base = sel(root, &sources, None).expect("select").checksum;

        // Timestamps and unselected files do not count.
        let old = filetime::FileTime::from_unix_time(1_000_000, 0);
        filetime::set_file_mtime(root.join("a.txt"), old).expect("set mtime");
        filetime::set_file_mtime(root.join("dir/sub"), old).expect("set mtime");
        write(root, "b.txt", "changed");
        write(root, "unrelated/new.txt", "new");
        assert_eq!(sel(root, &sources, None).expect("select").checksum, base);

        write(root, "a.txt", "A");
        let content = sel(root, &sources, None).expect("select").checksum;
        assert_ne!(content, base, "content change");
        write(root, "a.txt", "a");
        assert_eq!(sel(root, &sources, None).expect("select").checksum, base);

        chmod(root, "dir/one.txt", 0o755);
        assert_ne!(
            sel(root, &sources, None).expect("select").checksum,
            base,
            "mode change"
        );
        chmod(root, "dir/one.txt", 0o644);
        assert_eq!(sel(root, &sources, None).expect("select").checksum, base);

        // The mode of a directory source itself is not copied, so it does not count.
        chmod(root, "dir", 0o700);
        assert_eq!(sel(root, &sources, None).expect("select").checksum, base);
        chmod(root, "dir/sub", 0o700);
        assert_ne!(
            sel(root, &sources, None).expect("select").checksum,
            base,
            "subdir mode"
        );
        chmod(root, "dir/sub", 0o755);

        std::fs::rename(root.join("dir/sub/two.txt"), root.join("dir/sub/three.txt"))
            .expect("rename");
        assert_ne!(
            sel(root, &sources, None).expect("select").checksum,
            base,
            "rename"
        );
    }

    #[test]
    fn checksum_is_a_sha256_of_the_listing() {
        let ctx = context();
        let selection = sel(ctx.path(), &["a.txt"], None).expect("select");
        let hash = blake3::hash(b"a").to_hex();
        let listing = format!("buildcache-context-selection v1\n0\ta.txt\tfile\t644\t{hash}\n");
        assert_eq!(
            selection.checksum,
            cache_core::digest::sha256(listing.as_bytes())
        );
        assert_eq!((selection.n_files, selection.n_bytes), (1, 1));
    }

    #[test]
    fn dockerignore_excludes_from_selection_and_checksum() {
        let ctx = context();
        let root = ctx.path();
        let ignore = IgnoreMatcher::parse("**/*.key\nsrc\n!src/y\n").expect("parse");
        let selection = sel(root, &["dir"], Some(&ignore)).expect("select");
        assert_eq!(
            names(&selection),
            ["dir", "dir/one.txt", "dir/sub", "dir/sub/two.txt"]
        );
        let base = selection.checksum;
        write(root, "dir/secret.key", "changed secret");
        assert_eq!(
            sel(root, &["dir"], Some(&ignore)).expect("select").checksum,
            base
        );

        let err = sel(root, &["dir/secret.key"], Some(&ignore)).expect_err("excluded file");
        assert!(matches!(err, Error::NotFound { .. }), "{err}");

        // An excluded directory contributes only what `!` re-includes.
        let selection = sel(root, &["."], Some(&ignore)).expect("select");
        let listed = names(&selection);
        assert!(listed.contains(&"src/y/a".to_string()), "{listed:?}");
        assert!(!listed.iter().any(|p| p.starts_with("src/x")), "{listed:?}");
        assert!(!listed.iter().any(|p| p.ends_with(".key")), "{listed:?}");
    }

    #[test]
    fn wildcards_match_per_component() {
        let ctx = context();
        let root = ctx.path();
        let check = |pattern: &str, expect: &[&str]| {
            let selection = sel(root, &[pattern], None).expect("select");
            assert!(selection.sources[0].is_wildcard);
            let named: Vec<String> = selection.sources[0]
                .matches
                .iter()
                .map(|m| m.named.to_string_lossy().into_owned())
                .collect();
            assert_eq!(named, expect, "pattern {pattern}");
        };
        check("*.txt", &["a.txt", "b.txt"]);
        check("/src/*/a", &["src/x/a", "src/y/a"]);
        check("?.md", &["c.md"]);
        check("[ab].txt", &["a.txt", "b.txt"]);
        check("[^a].txt", &["b.txt"]);
        check("s*", &["src"]);
        let err = sel(root, &["*.none"], None).expect_err("no match");
        assert!(err.to_string().contains("\"*.none\""), "{err}");
        let err = sel(root, &["[a.txt"], None).expect_err("bad pattern");
        assert!(matches!(err, Error::BadPattern { .. }), "{err}");
    }

    #[test]
    fn go_match_semantics() {
        let m = |pattern: &str, name: &str| {
            let pattern: Vec<char> = pattern.chars().collect();
            validate_pattern(&pattern).expect("valid");
            match_component(&pattern, &name.chars().collect::<Vec<_>>())
        };
        assert!(m("*", ".hidden"));
        assert!(m("a*b*c", "aXbYc"));
        assert!(!m("a*b", "aXbY"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[^a-c]x", "bx"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "a"));
        assert!(m("é?", "éü"));
        assert!(validate_pattern(&['[', ']']).is_err());
        assert!(validate_pattern(&['a', '\\']).is_err());
    }

    #[test]
    fn odd_names_cannot_forge_listing_lines() {
        let ctx = tempfile::tempdir().expect("tempdir");
        let root = ctx.path();
        // One file whose name looks like two listing lines, versus two real files.
        let hash = blake3::hash(b"x").to_hex();
        write(root, &format!("d/a\tfile\t644\t{hash}\n0\td/b"), "x");
        let forged = sel(root, &["d"], None).expect("select").checksum;
        std::fs::remove_dir_all(root.join("d")).expect("rm");
        write(root, "d/a", "x");
        write(root, "d/b", "x");
        assert_ne!(sel(root, &["d"], None).expect("select").checksum, forged);
    }

    #[test]
    fn missing_source_error_names_it() {
        let ctx = context();
        let err =
            sel(ctx.path(), &["missing.txt"], Some(&IgnoreMatcher::empty())).expect_err("missing");
        let msg = err.to_string();
        assert!(
            msg.starts_with("COPY source \"missing.txt\" not found in the build context"),
            "{msg}"
        );
    }

    #[test]
    fn sources_cannot_leave_the_root() {
        let base = tempfile::tempdir().expect("tempdir");
        write(base.path(), "outside", "secret");
        write(base.path(), "ctx/inside", "in");
        write(base.path(), "ctx/etc/hostname", "inner");
        let root = base.path().join("ctx");
        std::os::unix::fs::symlink("/etc/hostname", root.join("abs-link")).expect("symlink");
        std::os::unix::fs::symlink("../../outside", root.join("rel-link")).expect("symlink");

        for source in ["../outside", "/../outside", "rel-link"] {
            let err = sel(&root, &[source], None).expect_err(source);
            assert!(matches!(err, Error::NotFound { .. }), "{source}: {err}");
        }
        // An absolute link target resolves inside the root, not on the host.
        let selection = sel(&root, &["abs-link"], None).expect("select");
        let found = &selection.sources[0].matches[0];
        assert_eq!(found.resolved, Path::new("etc/hostname"));
        assert_eq!(found.named, Path::new("abs-link"));
        assert_eq!(
            found.entries[0].blake3,
            Some(*blake3::hash(b"inner").as_bytes())
        );
        // `..` in a source is clamped at the root.
        let selection = sel(&root, &["../../inside"], None).expect("select");
        assert_eq!(
            selection.sources[0].matches[0].resolved,
            Path::new("inside")
        );
    }

    #[test]
    fn symlinks_inside_directories_are_listed_not_followed() {
        let ctx = context();
        let root = ctx.path();
        std::os::unix::fs::symlink("/etc/passwd", root.join("dir/link")).expect("symlink");
        let selection = sel(root, &["dir"], None).expect("select");
        let link = selection.sources[0].matches[0]
            .entries
            .iter()
            .find(|e| e.rel == Path::new("link"))
            .expect("link listed");
        assert_eq!(link.kind, EntryKind::Symlink);
        assert_eq!(link.link_target.as_deref(), Some(Path::new("/etc/passwd")));
        let base = selection.checksum;
        std::fs::remove_file(root.join("dir/link")).expect("rm");
        std::os::unix::fs::symlink("/etc/group", root.join("dir/link")).expect("symlink");
        assert_ne!(
            sel(root, &["dir"], None).expect("select").checksum,
            base,
            "link target change"
        );
    }

    #[test]
    fn warm_select_reads_no_file() {
        let ctx = tempfile::tempdir().expect("tempdir");
        let root = ctx.path();
        for i in 0..10_000 {
            write(
                root,
                &format!("d{}/f{i}.txt", i % 100),
                &format!("file {i}"),
            );
        }
        age_files();
        let cache_path = root.join(".state/hashes.json");
        let sources = vec![".".to_string()];
        let ignore = IgnoreMatcher::parse(".state\n").expect("parse");
        let mut cache = HashCache::load(&cache_path);
        let cold = select(root, &sources, Some(&ignore), &mut cache).expect("select");
        assert_eq!(cold.n_files, 10_000);
        assert_eq!(cache.stats().files_hashed, 10_000);
        cache.save().expect("save");

        let mut cache = HashCache::load(&cache_path);
        let warm = select(root, &sources, Some(&ignore), &mut cache).expect("select");
        assert_eq!(warm.checksum, cold.checksum);
        assert_eq!(cache.stats().files_hashed, 0);
        assert_eq!(cache.stats().files_from_cache, 10_000);
        assert_eq!(cache.stats().bytes_hashed, 0);

        // One changed file is the only one read again.
        write(root, "d7/f7.txt", "changed");
        let changed = select(root, &sources, Some(&ignore), &mut cache).expect("select");
        assert_ne!(changed.checksum, cold.checksum);
        assert_eq!(cache.stats().files_hashed, 1);
    }
}
