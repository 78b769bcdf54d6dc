//! `index.json` and `oci-layout`: naming manifests by tag, read leniently and replaced atomically.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use cache_core::backend::Result;
use cache_core::layout::OciIndex;
use cache_core::{Descriptor, Error, ErrorKind, IndexRef, RawIndex, digest};
use serde::Deserialize;
use serde_json::Value;

use crate::LayoutDir;
use crate::blob::{sync_dir, temp_file_in};
use crate::error::parse_error;
use crate::hook;

/// File name of the index.
pub(crate) const INDEX_FILE: &str = "index.json";
/// File name of the layout marker.
pub(crate) const LAYOUT_FILE: &str = "oci-layout";
/// Content of `oci-layout`, byte for byte as BuildKit writes it.
const LAYOUT_CONTENT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
/// Largest `index.json` or manifest read into memory.
pub(crate) const MAX_JSON_SIZE: u64 = 64 << 20;

/// The top-level `mediaType` of a manifest, for index entries of manifests written without one.
fn sniff_media_type(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Probe>(bytes).ok()?.media_type
}

impl LayoutDir {
    /// Reads and parses `index.json`; `None` if it or the directory does not exist.
    pub(crate) fn read_index_file(&self) -> Result<Option<OciIndex>> {
        match self.read_index_file_once() {
            // BuildKit's client rewrites `index.json` in place (truncate, then write), so a reader
            // racing it can see a partial file; a second look after it finished is whole.
            Err(err) if err.kind() == ErrorKind::Corrupt => {
                std::thread::sleep(std::time::Duration::from_millis(100));
                self.read_index_file_once().map_err(|_| err)
            }
            res => res,
        }
    }

    fn read_index_file_once(&self) -> Result<Option<OciIndex>> {
        let path = self.root.join(INDEX_FILE);
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(parse_error("opening", &path, err)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_JSON_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(|err| parse_error("reading", &path, err))?;
        if bytes.len() as u64 > MAX_JSON_SIZE {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{} is larger than {MAX_JSON_SIZE} bytes; it cannot be a cache index",
                    path.display()
                ),
            ));
        }
        let index = OciIndex::from_json(&bytes).map_err(|err| {
            Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{} is not a valid OCI index: {err}; remove the directory or export to a \
                     fresh one",
                    path.display()
                ),
            )
        })?;
        Ok(Some(index))
    }

    /// Every entry of `index.json` with its tag (`org.opencontainers.image.ref.name`, or the
    /// empty string for an entry without one), in file order. No `index.json` means no entries.
    ///
    /// Behavior: an entry without a valid digest or size is [`ErrorKind::Corrupt`].
    pub fn tags(&self) -> Result<Vec<(String, Descriptor)>> {
        let Some(index) = self.read_index_file()? else {
            return Ok(Vec::new());
        };
        let path = self.root.join(INDEX_FILE);
        index
            .entries()
            .iter()
            .map(|entry| {
                let tag = entry.tag().unwrap_or_default().to_owned();
                Ok((tag, entry_descriptor(entry, &path)?))
            })
            .collect()
    }

    /// The manifest named by `reference`, or `None` if there is none.
    ///
    /// Behavior:
    /// - a missing directory, `index.json` or tag, or a missing blob for a digest, is `Ok(None)`;
    /// - a tag is looked up as BuildKit does (first `io.containerd.image.name` match, then first
    ///   `org.opencontainers.image.ref.name` match) and the media type is the entry's;
    /// - an unreadable or malformed `index.json` is an error naming it ([`ErrorKind::Corrupt`]
    ///   when malformed);
    /// - a tag whose blob is missing is [`ErrorKind::NotFound`]; a blob that does not match its
    ///   digest or the entry's size is [`ErrorKind::DigestMismatch`].
    ///
    /// Fail-open policy (a warning and no cache on import) is the caller's.
    pub fn read_index_sync(&self, reference: &IndexRef) -> Result<Option<RawIndex>> {
        let (digest, media_type, size) = match reference {
            IndexRef::Digest(digest) => (digest.clone(), None, None),
            IndexRef::Tag(tag) => {
                let Some(index) = self.read_index_file()? else {
                    return Ok(None);
                };
                let Some(entry) = index.find_tag(tag) else {
                    return Ok(None);
                };
                let desc = entry_descriptor(entry, &self.root.join(INDEX_FILE))?;
                let size = entry.has_size().then_some(desc.size);
                (desc.digest, entry.media_type().map(str::to_owned), size)
            }
        };
        let bytes = self
            .read_blob_bytes(&digest, MAX_JSON_SIZE)
            .map_err(|err| {
                Error::new(
                    err.kind(),
                    format!(
                        "reading the manifest of {reference} in {}",
                        self.root.display()
                    ),
                )
                .with_source(err)
            })?;
        let Some(bytes) = bytes else {
            return match reference {
                IndexRef::Digest(_) => Ok(None),
                IndexRef::Tag(tag) => Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "{} names {digest} for tag {tag}, but {} is missing: the cache \
                         directory is incomplete; export to it again",
                        self.root.join(INDEX_FILE).display(),
                        self.blob_path(&digest).display()
                    ),
                )),
            };
        };
        if let Some(size) = size
            && size != bytes.len() as u64
        {
            return Err(Error::new(
                ErrorKind::DigestMismatch,
                format!(
                    "{} says {digest} is {size} bytes but the blob is {} bytes",
                    self.root.join(INDEX_FILE).display(),
                    bytes.len()
                ),
            ));
        }
        Ok(Some(RawIndex {
            media_type,
            digest,
            bytes: bytes.into(),
        }))
    }

    /// Stores `index` as a blob and points `tag` at it in `index.json`.
    ///
    /// Behavior:
    /// - the blobs `index` refers to must already be stored (not checked);
    /// - `index.digest` must be the digest of its bytes, otherwise [`ErrorKind::DigestMismatch`];
    /// - waits for [`LayoutDir::lock`] (never fails just because another export holds it, unlike
    ///   BuildKit), then replaces the untagged-image entries for `tag` as BuildKit does, keeps
    ///   every other entry and field, writes `oci-layout` if missing and replaces `index.json`
    ///   atomically: readers see the old or the new file, and a crash leaves the old one;
    /// - an empty tag is [`ErrorKind::InvalidConfig`]; a malformed existing `index.json` is
    ///   [`ErrorKind::Corrupt`] and is left untouched.
    pub fn write_index_sync(&self, tag: &str, index: &RawIndex) -> Result<()> {
        if tag.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "the tag of a local cache must not be empty (the default is latest)",
            ));
        }
        let actual = digest::sha256(&index.bytes);
        if actual != index.digest {
            return Err(Error::new(
                ErrorKind::DigestMismatch,
                format!(
                    "manifest for tag {tag} claims digest {} but its bytes hash to {actual}",
                    index.digest
                ),
            ));
        }
        let mut desc = index.descriptor();
        if desc.media_type.is_empty() {
            desc.media_type = sniff_media_type(&index.bytes).unwrap_or_default();
        }
        self.write_blob_sync(&desc, index.bytes.as_ref())?;
        hook::reach("index:blob-written");

        let _lock = self.lock()?;
        hook::reach("index:locked");
        let mut file = self.read_index_file()?.unwrap_or_default();
        file.put_tag(tag, &desc);
        let layout_path = self.root.join(LAYOUT_FILE);
        if !layout_path.exists() {
            self.replace_file(LAYOUT_FILE, LAYOUT_CONTENT.as_bytes())?;
        }
        self.replace_file(INDEX_FILE, &file.to_json())?;
        hook::reach("index:renamed");
        Ok(())
    }

    /// Replaces `<dir>/<name>` atomically: temporary file, fsync, rename, fsync of the directory.
    fn replace_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let mut temp = temp_file_in(&self.root)?;
        temp.write_all(bytes)
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|err| parse_error("writing", temp.path(), err))?;
        if name == INDEX_FILE {
            hook::reach("index:before-rename");
        }
        let path = self.root.join(name);
        temp.persist(&path)
            .map_err(|err| parse_error("replacing", &path, err.error))?;
        sync_dir(&self.root)
    }

    /// Checks that `oci-layout` and `index.json` exist and parse.
    pub(crate) fn check_existing(&self) -> Result<()> {
        let root = &self.root;
        let meta = fs::metadata(root)
            .map_err(|err| parse_error("no cache directory (an OCI image layout) at", root, err))?;
        if !meta.is_dir() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "{} is not a directory: a local cache is a directory",
                    root.display()
                ),
            ));
        }
        let layout_path = root.join(LAYOUT_FILE);
        let layout = fs::read(&layout_path).map_err(|err| {
            parse_error(
                "not an OCI image layout (is this a directory written by --cache-to \
                 type=local?): cannot read",
                &layout_path,
                err,
            )
        })?;
        let version = serde_json::from_slice::<Value>(&layout)
            .ok()
            .and_then(|value| value.get("imageLayoutVersion")?.as_str().map(str::to_owned));
        if version.is_none() {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{} has no imageLayoutVersion; it is not an OCI image layout",
                    layout_path.display()
                ),
            ));
        }
        match self.read_index_file()? {
            Some(_) => Ok(()),
            None => Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "{} is missing: {} holds no cache yet",
                    root.join(INDEX_FILE).display(),
                    root.display()
                ),
            )),
        }
    }
}

/// An `index.json` entry as a descriptor; an entry without a valid digest or size is corrupt.
pub(crate) fn entry_descriptor(
    entry: &cache_core::layout::IndexEntry,
    index_path: &Path,
) -> Result<Descriptor> {
    entry.descriptor().map_err(|what| {
        Error::new(
            ErrorKind::Corrupt,
            format!(
                "{} has an entry with {what}; fix or remove that entry",
                index_path.display()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_media_type() {
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":2,"mediaType":"m"}"#).as_deref(),
            Some("m")
        );
        assert_eq!(sniff_media_type(b"{}"), None);
        assert_eq!(sniff_media_type(b"not json"), None);
    }
}
