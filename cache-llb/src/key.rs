//! Cache maps, record digests, selectors and content ("slow") keys: how BuildKit's solver turns
//! an op and its inputs into the digests a cache config holds.

use cache_core::Digest;
use cache_core::digest::sha256;

/// The cache map of one op (BuildKit's `solver.CacheMap`): the digest of its definition and,
/// per input, how the input takes part in the key. Every piece is kept so that a miss can be
/// explained by comparing two maps field by field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheMap {
    /// The exact bytes hashed into [`CacheMap::digest`] (Go `encoding/json` output).
    pub json: Vec<u8>,
    /// `sha256(json)`: the "cache map digest"; a record's digest is
    /// [`record_digest`]`(digest, output)`.
    pub digest: Digest,
    /// One entry per input of the op, in input order.
    pub deps: Vec<Dep>,
}

/// How one input of an op enters its key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dep {
    /// The selector written on the link from the input's record (`None`: no selector).
    pub selector: Option<Digest>,
    /// When the input also has a content ("slow") key: the paths whose contenthash makes it,
    /// in the order BuildKit checksums them (see [`content_key`]).
    pub content: Option<Vec<ContentSelector>>,
}

/// One path of an input whose BuildKit contenthash is part of a content key
/// (BuildKit's `opsutils.Selector`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContentSelector {
    /// Absolute path inside the input (`/` for all of it).
    pub path: String,
    /// `path` is a wildcard pattern.
    pub wildcard: bool,
    /// Symlinks at the end of `path` are followed.
    pub follow_links: bool,
    /// `COPY --include`-style patterns (empty: none).
    pub include_patterns: Vec<String>,
    /// `COPY --exclude` patterns (empty: none).
    pub exclude_patterns: Vec<String>,
}

impl ContentSelector {
    /// BuildKit's `HasWildcardOrFilters`.
    pub fn has_wildcard_or_filters(&self) -> bool {
        self.wildcard || !self.include_patterns.is_empty() || !self.exclude_patterns.is_empty()
    }
}

/// A cache map of a caller's own for an op BuildKit would key differently (a form this crate
/// does not model): `sha256(version + "\0" + definition)`, inputs without selectors or content
/// keys. It never equals a BuildKit digest, so such steps only hit caches written by the
/// same `version`.
pub fn own_cache_map(version: &str, definition: &[u8], num_inputs: usize) -> CacheMap {
    let mut json = version.as_bytes().to_vec();
    json.push(0);
    json.extend_from_slice(definition);
    CacheMap {
        digest: sha256(&json),
        json,
        deps: vec![Dep::default(); num_inputs],
    }
}

/// A record digest: `sha256("<cache map digest>@<output>")` (BuildKit's `rootKey`). Content
/// keys use output `-1`.
pub fn record_digest(cache_map: &Digest, output: i64) -> Digest {
    sha256(format!("{cache_map}@{output}").as_bytes())
}

/// The content ("slow") key of an input from the contenthash of each of its selectors, in
/// selector order: `sha256(join(checksums, "\0"))` (`opsutils.NewContentHashFunc`). Its record
/// is [`record_digest`]`(key, -1)`, a root record linked from the op's record without selector.
pub fn content_key(checksums: &[Digest]) -> Digest {
    let joined: Vec<&str> = checksums.iter().map(|d| d.as_ref()).collect();
    sha256(joined.join("\0").as_bytes())
}

/// The record digest of a content key: [`record_digest`]`(`[`content_key`]`(checksums), -1)`.
pub fn content_record(checksums: &[Digest]) -> Digest {
    record_digest(&content_key(checksums), -1)
}

/// The selector digest of an exec mount's input: `sha256(join(paths, "\0"))`, paths as
/// `path.Join("/", selector)` in mount order (`/` for a whole-filesystem mount).
pub fn exec_selector(paths: &[String]) -> Digest {
    sha256(paths.join("\0").as_bytes())
}

/// The selector digest of a file op's input: its selector paths sorted by bytes, reversed
/// ("historical reasons" in BuildKit), joined with `\0`.
pub fn file_selector(paths: &[String]) -> Digest {
    let mut sorted: Vec<&str> = paths.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.reverse();
    sha256(sorted.join("\0").as_bytes())
}

/// BuildKit's `dedupePaths`: drops paths below another path of the list, sorts the rest.
pub(crate) fn dedupe_paths(paths: &[String]) -> Vec<String> {
    let mut unique: Vec<String> = paths.to_vec();
    unique.sort();
    unique.dedup();
    if unique.len() <= 1 {
        return unique;
    }
    let parent_of = |parent: &str, child: &str| {
        let prefix = if parent.ends_with('/') {
            parent.to_owned()
        } else {
            format!("{parent}/")
        };
        parent != child && child.starts_with(&prefix)
    };
    unique
        .iter()
        .filter(|p| !unique.iter().any(|q| parent_of(q, p)))
        .cloned()
        .collect()
}

/// BuildKit's `dedupeSelectors` of a file op: plain paths deduplicated (without and with
/// link following separately), wildcard or filtered ones kept, all sorted by path (stable).
pub(crate) fn dedupe_selectors(selectors: &[ContentSelector]) -> Vec<ContentSelector> {
    let plain = |follow: bool| -> Vec<String> {
        selectors
            .iter()
            .filter(|s| !s.has_wildcard_or_filters() && s.follow_links == follow)
            .map(|s| s.path.clone())
            .collect()
    };
    let mut out: Vec<ContentSelector> = Vec::new();
    for path in dedupe_paths(&plain(false)) {
        out.push(ContentSelector {
            path,
            ..ContentSelector::default()
        });
    }
    for path in dedupe_paths(&plain(true)) {
        out.push(ContentSelector {
            path,
            follow_links: true,
            ..ContentSelector::default()
        });
    }
    out.extend(
        selectors
            .iter()
            .filter(|s| s.has_wildcard_or_filters())
            .cloned(),
    );
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_selector_of_an_exec_mount() {
        // The link from a RUN's record to its root filesystem (spec §2).
        assert_eq!(
            exec_selector(&["/".to_owned()]).to_string(),
            "sha256:8a5edab282632443219e051e4ade2d1d5bbc671c781051bf1437897cbdfea0f1"
        );
    }

    #[test]
    fn file_selectors_sort_descending() {
        let a = file_selector(&["/a".to_owned(), "/b".to_owned()]);
        assert_eq!(a, sha256(b"/b\0/a"));
        assert_eq!(a, file_selector(&["/b".to_owned(), "/a".to_owned()]));
    }

    #[test]
    fn dedupe_drops_children_of_listed_paths() {
        let paths = ["/a/b", "/a", "/ab", "/a"].map(str::to_owned);
        assert_eq!(dedupe_paths(&paths), ["/a", "/ab"]);
    }

    #[test]
    fn content_key_of_one_checksum_hashes_its_text() {
        let d = sha256(b"x");
        assert_eq!(
            content_key(std::slice::from_ref(&d)),
            sha256(d.as_ref().as_bytes())
        );
        assert_eq!(
            content_record(std::slice::from_ref(&d)),
            record_digest(&content_key(&[d]), -1)
        );
    }
}
