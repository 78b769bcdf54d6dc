//! BuildKit's `cache/contenthash`: the checksum of a path in a filesystem, over a described
//! tree (the caller walks the real files and feeds their bytes; nothing here does I/O).
//!
//! A file's digest is `sha256(header || content)` where the header is the "v1 tarsum" selection
//! of a tar header built from the file's stat: `name` (always empty), `mode` (permission bits
//! plus setuid/setgid/sticky, decimal), `uid`, `gid`, `size` (regular files only, else 0),
//! `typeflag` (`0` file, `5` dir, `2` symlink, `3` char, `4` block, `6` fifo), `linkname`,
//! `uname`, `gname` (both empty), `devmajor`, `devminor`, then the xattrs other than
//! `security.*` (except `security.capability`) and `system.*`, sorted, each key then value,
//! all concatenated without separators. A directory has a header digest (its own stat,
//! no content) and a tree digest: `sha256("\0" + header digest + for each child by byte order
//! of name: "\0" + name + child digest)`, a child directory counting with its tree digest.

use std::collections::{BTreeMap, HashMap};

use cache_core::Digest;
use cache_core::digest::{Hasher, sha256};

use crate::key::ContentSelector;
use crate::op::{clean_abs, go_base};

/// Symlinks followed while resolving one path (BuildKit's `maxSymlinkLimit`).
const MAX_SYMLINKS: usize = 255;

/// What a tree entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
}

/// The stat fields BuildKit's file header is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Entry type.
    pub kind: Kind,
    /// Permission bits plus setuid, setgid and sticky (`st_mode & 0o7777`); a symlink's is
    /// always `0o777`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size of a regular file (ignored for other kinds).
    pub size: u64,
    /// A symlink's target.
    pub link: String,
    /// Device major number (devices only).
    pub devmajor: u64,
    /// Device minor number (devices only).
    pub devminor: u64,
    /// Extended attributes, any order.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Stat {
    /// A stat of `kind` with `mode`, owned by root, no size, link or xattrs.
    pub fn new(kind: Kind, mode: u32) -> Stat {
        Stat {
            kind,
            mode,
            uid: 0,
            gid: 0,
            size: 0,
            link: String::new(),
            devmajor: 0,
            devminor: 0,
            xattrs: Vec::new(),
        }
    }
}

/// The v1 tarsum header bytes of `stat` (see the module docs).
pub fn header(stat: &Stat) -> Vec<u8> {
    let (typeflag, size, link, mode) = match stat.kind {
        Kind::File => ('0', stat.size, "", stat.mode & 0o7777),
        Kind::Dir => ('5', 0, "", stat.mode & 0o7777),
        Kind::Symlink => ('2', 0, stat.link.as_str(), (stat.mode & 0o7000) | 0o777),
        Kind::CharDevice => ('3', 0, "", stat.mode & 0o7777),
        Kind::BlockDevice => ('4', 0, "", stat.mode & 0o7777),
        Kind::Fifo => ('6', 0, "", stat.mode & 0o7777),
    };
    let (devmajor, devminor) = match stat.kind {
        Kind::CharDevice | Kind::BlockDevice => (stat.devmajor, stat.devminor),
        _ => (0, 0),
    };
    let mut out = format!(
        "namemode{mode}uid{}gid{}size{size}typeflag{typeflag}linkname{link}unamegnamedevmajor{devmajor}devminor{devminor}",
        stat.uid, stat.gid
    )
    .into_bytes();
    let mut xattrs: Vec<&(String, Vec<u8>)> = stat
        .xattrs
        .iter()
        .filter(|(k, _)| {
            k == "security.capability" || !(k.starts_with("security.") || k.starts_with("system."))
        })
        .collect();
    xattrs.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in xattrs {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// Streams one entry's digest: the header of its stat, then (regular files) its content.
#[derive(Debug)]
pub struct FileHasher {
    inner: Hasher,
}

impl FileHasher {
    /// Starts with `stat`'s header.
    pub fn new(stat: &Stat) -> FileHasher {
        let mut inner = Hasher::new();
        inner.update(&header(stat));
        FileHasher { inner }
    }

    /// Feeds content bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
    }

    /// The entry's digest.
    pub fn finish(self) -> Digest {
        self.inner.finish()
    }
}

/// The digest of an entry whose content is `content` (empty for anything but a regular file).
pub fn entry_digest(stat: &Stat, content: &[u8]) -> Digest {
    let mut hasher = FileHasher::new(stat);
    hasher.update(content);
    hasher.finish()
}

/// The header digest a directory root gets when the tree was sent by a client (BuildKit's
/// local source never sees the root's stat and uses `sha256("")`).
pub fn local_root_header() -> Digest {
    sha256(b"")
}

/// Why a checksum could not be computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The path is not in the tree.
    NotFound(String),
    /// A symlink chain longer than 255 links.
    TooManyLinks(String),
    /// Include or exclude patterns, which this crate does not compute.
    Unsupported(String),
}

impl std::error::Error for Error {}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotFound(p) => write!(f, "{p:?}: not found"),
            Error::TooManyLinks(p) => write!(f, "{p:?}: too many levels of symbolic links"),
            Error::Unsupported(what) => write!(f, "{what}: not supported for content keys"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecordType {
    File,
    Dir,
    DirHeader,
    Symlink,
}

#[derive(Clone, Debug)]
struct Record {
    kind: RecordType,
    /// Known digest (files, symlinks, dir headers); a directory's is computed.
    digest: Option<Digest>,
    link: String,
}

/// A filesystem as BuildKit's contenthash sees it: every entry with its digest, keyed by path.
#[derive(Clone, Debug)]
pub struct Tree {
    /// Keys are paths with `/` turned into `\0`; a directory `/a` is `\0a` (its tree) and
    /// `\0a\0` (its header), the root `""` and `\0`.
    records: BTreeMap<Vec<u8>, Record>,
    dir_digests: HashMap<Vec<u8>, Digest>,
}

fn key_of(path: &str) -> Vec<u8> {
    path.bytes()
        .map(|b| if b == b'/' { 0 } else { b })
        .collect()
}

fn path_of(key: &[u8]) -> String {
    String::from_utf8_lossy(
        &key.iter()
            .map(|&b| if b == 0 { b'/' } else { b })
            .collect::<Vec<u8>>(),
    )
    .into_owned()
}

/// BuildKit's `keyPath`: absolute and clean, the root as `""`.
fn key_path(p: &str) -> String {
    let p = clean_abs(p);
    if p == "/" { String::new() } else { p }
}

impl Tree {
    /// An empty filesystem whose root directory has header digest `root_header` (the entry
    /// digest of the root's stat for a snapshot, [`local_root_header`] for a client's context).
    pub fn new(root_header: Digest) -> Tree {
        let mut records = BTreeMap::new();
        records.insert(
            Vec::new(),
            Record {
                kind: RecordType::Dir,
                digest: None,
                link: String::new(),
            },
        );
        records.insert(
            vec![0],
            Record {
                kind: RecordType::DirHeader,
                digest: Some(root_header),
                link: String::new(),
            },
        );
        Tree {
            records,
            dir_digests: HashMap::new(),
        }
    }

    /// Adds the entry at absolute `path` with its [`entry_digest`] (a directory's header digest).
    /// `link` is a symlink's target. Parents must be added too (their headers count).
    pub fn insert(&mut self, path: &str, kind: Kind, link: &str, digest: Digest) {
        let p = key_path(path);
        let mut k = key_of(&p);
        self.dir_digests.clear();
        let kind = match kind {
            Kind::Dir => {
                self.records.insert(
                    k.clone(),
                    Record {
                        kind: RecordType::Dir,
                        digest: None,
                        link: String::new(),
                    },
                );
                k.push(0);
                RecordType::DirHeader
            }
            Kind::Symlink => RecordType::Symlink,
            _ => RecordType::File,
        };
        self.records.insert(
            k,
            Record {
                kind,
                digest: Some(digest),
                link: link.to_owned(),
            },
        );
    }

    /// Whether an entry is at absolute `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.records.contains_key(&key_of(&key_path(path)))
    }

    /// The contenthash of what `selector` selects (`contenthash.Checksum`). Exclude patterns
    /// must already be applied to the tree (it holds only what they leave, as a caller's
    /// selection does); they switch to BuildKit's listing of every included header and file.
    /// Include patterns need [`Tree::checksum_including`].
    pub fn checksum(&mut self, selector: &ContentSelector) -> Result<Digest, Error> {
        if !selector.include_patterns.is_empty() {
            return Err(Error::Unsupported(format!(
                "include patterns of {:?}",
                selector.path
            )));
        }
        self.checksum_with(selector, None)
    }

    /// [`Tree::checksum`] of a selector with include patterns (`COPY --parents`): `includes`
    /// tells whether a path relative to the selected directory (or wildcard match) is matched
    /// by them, or lies below a path they match (patternmatcher's `MatchesUsingParentResults`).
    /// Directories above a matched path count once something below them is included, as in
    /// BuildKit's `includedPaths`.
    pub fn checksum_including(
        &mut self,
        selector: &ContentSelector,
        includes: &dyn Fn(&str) -> bool,
    ) -> Result<Digest, Error> {
        self.checksum_with(selector, Some(includes))
    }

    fn checksum_with(
        &mut self,
        selector: &ContentSelector,
        includes: Option<&dyn Fn(&str) -> bool>,
    ) -> Result<Digest, Error> {
        let path = clean_abs(&selector.path);
        if !selector.wildcard && selector.exclude_patterns.is_empty() && includes.is_none() {
            return self.lazy_checksum(&path, selector.follow_links);
        }
        let raw = if selector.path.starts_with('/') {
            selector.path.clone()
        } else {
            format!("/{}", selector.path)
        };
        let (prefix, mut included) = self.included_paths(&raw, selector.wildcard, includes)?;
        for item in &mut included {
            if item.follow_links && item.kind == RecordType::Symlink {
                item.digest = self.lazy_checksum(&item.path, selector.follow_links)?;
            }
        }
        if included.is_empty() {
            return Ok(sha256(b""));
        }
        if included.len() == 1 && go_base(&path) == go_base(&included[0].path) {
            return Ok(included[0].digest.clone());
        }
        let mut hasher = Hasher::new();
        for item in &included {
            let rel = item.path.strip_prefix(&prefix).unwrap_or(&item.path);
            let mut k = key_of(rel);
            if k.is_empty() {
                k = vec![0];
            }
            hasher.update(&k);
            hasher.update(item.digest.as_ref().as_bytes());
        }
        Ok(hasher.finish())
    }

    fn lazy_checksum(&mut self, path: &str, follow_trailing: bool) -> Result<Digest, Error> {
        let k = key_of(&key_path(path));
        let (k, found) = self.follow_links(&k, follow_trailing)?;
        if found.is_none() {
            return Err(Error::NotFound(path.to_owned()));
        }
        self.record_digest(&k)
    }

    /// The digest of the record at `k` (which exists): stored, or a directory's tree digest.
    fn record_digest(&mut self, k: &[u8]) -> Result<Digest, Error> {
        let record = self
            .records
            .get(k)
            .ok_or_else(|| Error::NotFound(path_of(k)))?;
        if let Some(digest) = &record.digest {
            return Ok(digest.clone());
        }
        if let Some(digest) = self.dir_digests.get(k) {
            return Ok(digest.clone());
        }
        let mut prefix = k.to_vec();
        prefix.push(0);
        let children: Vec<Vec<u8>> = self
            .records
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .map(|(key, _)| key.clone())
            .filter(|key| key.len() == prefix.len() || !key[prefix.len()..].contains(&0))
            .collect();
        if children.first().map(Vec::as_slice) != Some(prefix.as_slice()) {
            return Err(Error::NotFound(format!("{}/", path_of(k))));
        }
        let mut hasher = Hasher::new();
        for child in children {
            let digest = self.record_digest(&child)?;
            hasher.update(&child[k.len()..]);
            hasher.update(digest.as_ref().as_bytes());
        }
        let digest = hasher.finish();
        self.dir_digests.insert(k.to_vec(), digest.clone());
        Ok(digest)
    }

    /// `getFollowLinks`: resolves symlinks in every component of `k` (the last one only when
    /// `follow_trailing`), returning the resolved key and whether it exists.
    fn follow_links(
        &self,
        k: &[u8],
        follow_trailing: bool,
    ) -> Result<(Vec<u8>, Option<RecordType>), Error> {
        if let Some(record) = self.records.get(k)
            && (!follow_trailing || record.kind != RecordType::Symlink)
        {
            return Ok((k.to_vec(), Some(record.kind)));
        }
        if k.is_empty() {
            return Ok((Vec::new(), None));
        }
        let full = path_of(k);
        let (mut remaining, trailing_slash) = match full.strip_suffix('/') {
            Some(rest) => (rest.to_owned(), true),
            None => (full.clone(), false),
        };
        let mut current = String::from("/");
        let mut found: Option<&Record> = None;
        let mut links = 0;
        while !remaining.is_empty() {
            let (part, rest) = match remaining.find('/') {
                Some(i) => (remaining[..i].to_owned(), remaining[i + 1..].to_owned()),
                None => (remaining.clone(), String::new()),
            };
            remaining = rest;
            let next = key_path(&format!("{current}/{part}"));
            found = self.records.get(&key_of(&next));
            match found {
                Some(record) if record.kind == RecordType::Symlink => {
                    if !follow_trailing && remaining.is_empty() {
                        current = next;
                        break;
                    }
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(Error::TooManyLinks(full));
                    }
                    remaining = format!("{}/{remaining}", record.link);
                    if record.link.starts_with('/') {
                        current = "/".to_owned();
                    }
                }
                _ => current = next,
            }
        }
        if trailing_slash {
            current.push('/');
            found = self.records.get(&key_of(&current));
        }
        Ok((key_of(&current), found.map(|r| r.kind)))
    }

    /// `includedPaths` for a wildcard selector or one with exclude patterns (already applied:
    /// the tree holds only what they leave) or include patterns (`includes`).
    fn included_paths(
        &mut self,
        raw: &str,
        wildcard: bool,
        includes: Option<&dyn Fn(&str) -> bool>,
    ) -> Result<(String, Vec<Included>), Error> {
        let ends_in_sep = raw.ends_with('/');
        let p = key_path(raw);
        let (orig_prefix, start) = if wildcard {
            let (d1, d2) = split_wildcards(&p);
            if d1 == "/" {
                (String::new(), Some(Vec::new()))
            } else {
                let (k, found) = self.follow_links(&key_of(&d1), !d2.is_empty())?;
                (d1.clone(), found.map(|_| k))
            }
        } else if p.is_empty() {
            (String::new(), Some(Vec::new()))
        } else {
            let (k, found) = self.follow_links(&key_of(&p), false)?;
            (p.clone(), found.map(|_| k))
        };
        let Some(start_key) = start else {
            return Ok((orig_prefix, Vec::new()));
        };
        let resolved_prefix = if orig_prefix.is_empty() {
            String::new()
        } else {
            path_of(&start_key)
        };
        let mut lower = start_key.clone();
        if !orig_prefix.is_empty() {
            lower.push(0);
        }
        let keys: Vec<Vec<u8>> = self
            .records
            .range(lower..)
            .map(|(k, _)| k.clone())
            .collect();
        let mut included: Vec<Included> = Vec::new();
        // Indexes into `parents` of the enclosing matched directory headers, innermost last.
        let mut parents: Vec<Included> = Vec::new();
        let mut last_matched = String::new();
        for k in keys {
            let mut name = path_of(&k);
            if let Some(rest) = name.strip_prefix(&resolved_prefix) {
                name = format!("{orig_prefix}{rest}");
            }
            while let Some(last) = parents.last() {
                if name.starts_with(&format!("{}/", last.path)) {
                    break;
                }
                parents.pop();
            }
            let has_parent = !parents.is_empty();
            let is_header = k.last() == Some(&0);
            if is_header {
                name.pop();
                if name == p && ends_in_sep {
                    continue;
                }
            }
            let base = if !wildcard {
                if !format!("{name}/").starts_with(&format!("{p}/")) {
                    break;
                }
                &p
            } else {
                if !p.is_empty()
                    && (last_matched.is_empty() || !name.starts_with(&format!("{last_matched}/")))
                {
                    if !go_path_match(&p, &name) {
                        continue;
                    }
                    last_matched = name.clone();
                }
                &last_matched
            };
            let should_include = includes.is_none_or(|includes| {
                // The path relative to the selected directory or wildcard match.
                let with_slash = format!("{name}/");
                let rel = with_slash
                    .strip_prefix(&format!("{base}/"))
                    .unwrap_or(&with_slash);
                includes(rel.strip_suffix('/').unwrap_or(rel))
            });
            if !should_include && !is_header {
                continue;
            }
            let kind = self.records[&k].kind;
            let digest = self.record_digest(&k)?;
            let item = Included {
                path: name,
                kind,
                digest,
                follow_links: !has_parent,
                included: should_include,
            };
            if kind == RecordType::Dir {
                continue;
            }
            if should_include {
                for parent in &mut parents {
                    if !parent.included {
                        parent.included = true;
                        included.push(parent.clone());
                    }
                }
                included.push(item.clone());
            }
            if kind == RecordType::DirHeader {
                // Kept whether included or not: a match below includes it then.
                parents.push(item);
            }
        }
        Ok((orig_prefix, included))
    }
}

#[derive(Clone, Debug)]
struct Included {
    path: String,
    kind: RecordType,
    digest: Digest,
    follow_links: bool,
    included: bool,
}

/// `splitWildcards`: the components before the first one with a wildcard, and the rest.
fn split_wildcards(p: &str) -> (String, String) {
    let cleaned = clean_abs(p);
    let mut before: Vec<&str> = Vec::new();
    let mut after: Vec<&str> = Vec::new();
    for comp in cleaned.split('/').skip(1) {
        if !after.is_empty() || crate::op::contains_wildcards(comp) {
            after.push(comp);
        } else {
            before.push(comp);
        }
    }
    (format!("/{}", before.join("/")), after.join("/"))
}

/// Go's `path.Match` for a whole path: `*` and `?` never match `/`.
fn go_path_match(pattern: &str, name: &str) -> bool {
    let pats: Vec<&str> = pattern.split('/').collect();
    let names: Vec<&str> = name.split('/').collect();
    pats.len() == names.len()
        && pats.iter().zip(&names).all(|(p, n)| {
            match_component(
                &p.chars().collect::<Vec<_>>(),
                &n.chars().collect::<Vec<_>>(),
            )
        })
}

fn match_component(pattern: &[char], name: &[char]) -> bool {
    match pattern.first() {
        None => name.is_empty(),
        Some('*') => (0..=name.len()).any(|i| match_component(&pattern[1..], &name[i..])),
        Some('?') => !name.is_empty() && match_component(&pattern[1..], &name[1..]),
        Some('[') => {
            let Some((&c, rest)) = name.split_first() else {
                return false;
            };
            let mut i = 1;
            let negate = pattern.get(i) == Some(&'^');
            if negate {
                i += 1;
            }
            let mut matched = false;
            let mut first = true;
            loop {
                let Some(&lo) = pattern.get(i) else {
                    return false;
                };
                if lo == ']' && !first {
                    i += 1;
                    break;
                }
                first = false;
                let (lo, next) = if lo == '\\' {
                    match pattern.get(i + 1) {
                        Some(&e) => (e, i + 2),
                        None => return false,
                    }
                } else {
                    (lo, i + 1)
                };
                let (hi, next) =
                    if pattern.get(next) == Some(&'-') && pattern.get(next + 1) != Some(&']') {
                        match pattern.get(next + 1) {
                            Some(&'\\') => match pattern.get(next + 2) {
                                Some(&e) => (e, next + 3),
                                None => return false,
                            },
                            Some(&h) => (h, next + 2),
                            None => return false,
                        }
                    } else {
                        (lo, next)
                    };
                if lo <= c && c <= hi {
                    matched = true;
                }
                i = next;
            }
            matched != negate && match_component(&pattern[i..], rest)
        }
        Some('\\') => match (pattern.get(1), name.split_first()) {
            (Some(&e), Some((&c, rest))) => e == c && match_component(&pattern[2..], rest),
            _ => false,
        },
        Some(&p) => name.first() == Some(&p) && match_component(&pattern[1..], &name[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_of_a_regular_file() {
        let mut stat = Stat::new(Kind::File, 0o644);
        stat.size = 6;
        assert_eq!(
            String::from_utf8(header(&stat)).unwrap(),
            "namemode420uid0gid0size6typeflag0linknameunamegnamedevmajor0devminor0"
        );
    }

    #[test]
    fn xattrs_follow_the_header_sorted_without_security_ones() {
        let mut stat = Stat::new(Kind::Dir, 0o755);
        stat.xattrs = vec![
            ("user.b".to_owned(), b"2".to_vec()),
            ("security.selinux".to_owned(), b"x".to_vec()),
            ("security.capability".to_owned(), b"c".to_vec()),
            ("user.a".to_owned(), b"1".to_vec()),
        ];
        assert!(
            String::from_utf8(header(&stat))
                .unwrap()
                .ends_with("devminor0security.capabilitycuser.a1user.b2")
        );
    }

    #[test]
    fn path_match_follows_go() {
        assert!(go_path_match("/src/*.txt", "/src/a.txt"));
        assert!(!go_path_match("/src/*.txt", "/src/d/a.txt"));
        assert!(go_path_match("/a/[a-c]?", "/a/bx"));
        assert!(!go_path_match("/a/[^a-c]?", "/a/bx"));
        assert!(go_path_match("/a/\\*", "/a/*"));
    }

    #[test]
    fn include_patterns_list_matches_with_their_parent_headers() {
        let dir = |mode| entry_digest(&Stat::new(Kind::Dir, mode), b"");
        let file = |content: &[u8]| entry_digest(&Stat::new(Kind::File, 0o644), content);
        let mut tree = Tree::new(local_root_header());
        tree.insert("/x", Kind::Dir, "", dir(0o755));
        tree.insert("/x/y", Kind::Dir, "", dir(0o700));
        tree.insert("/x/y/a.txt", Kind::File, "", file(b"a"));
        tree.insert("/x/y/b.md", Kind::File, "", file(b"b"));
        tree.insert("/z", Kind::Dir, "", dir(0o755));
        let selector = |path: &str| ContentSelector {
            path: path.to_owned(),
            include_patterns: vec!["unused: the closure decides".to_owned()],
            ..ContentSelector::default()
        };
        assert!(matches!(
            tree.checksum(&selector("/")),
            Err(Error::Unsupported(_))
        ));
        let list = |items: &[(&str, Digest)]| {
            let mut h = Hasher::new();
            for (path, digest) in items {
                h.update(&key_of(path));
                h.update(digest.as_ref().as_bytes());
            }
            h.finish()
        };
        // From the root: the root's own header never counts, /x and /x/y come with the match.
        let txt = |rel: &str| rel.ends_with(".txt");
        assert_eq!(
            tree.checksum_including(&selector("/"), &txt).unwrap(),
            list(&[
                ("/x", dir(0o755)),
                ("/x/y", dir(0o700)),
                ("/x/y/a.txt", file(b"a")),
            ])
        );
        // Below a pivot directory: paths relative to it, its own header first.
        let y = |rel: &str| rel == "y" || rel.starts_with("y/");
        assert_eq!(
            tree.checksum_including(&selector("/x"), &y).unwrap(),
            list(&[
                ("/", dir(0o755)),
                ("/y", dir(0o700)),
                ("/y/a.txt", file(b"a")),
                ("/y/b.md", file(b"b")),
            ])
        );
        // Nothing matched: the empty list.
        assert_eq!(
            tree.checksum_including(&selector("/x"), &|_: &str| false)
                .unwrap(),
            sha256(b"")
        );
    }

    #[test]
    fn split_at_first_wildcard_component() {
        assert_eq!(
            split_wildcards("/src/*.txt"),
            ("/src".to_owned(), "*.txt".to_owned())
        );
        assert_eq!(split_wildcards("/*/x"), ("/".to_owned(), "*/x".to_owned()));
    }
}
