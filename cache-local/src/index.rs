//! `index.json` and `oci-layout`: naming manifests by tag, read leniently and replaced atomically.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use cache_core::backend::Result;
use cache_core::descriptor::{annotation, media_type};
use cache_core::{Descriptor, Digest, Error, ErrorKind, IndexRef, RawIndex, digest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

/// `index.json` as read: the fields this crate uses, everything else kept as it was.
///
/// Known fields are in the order of Go's `ocispec.Index`, so an index BuildKit wrote is rewritten
/// with the same layout.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct IndexFile {
    #[serde(
        rename = "schemaVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    schema_version: Option<Value>,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    media_type: Option<Value>,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    artifact_type: Option<Value>,
    #[serde(default)]
    manifests: Option<Vec<IndexEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<Value>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// One `manifests` entry, in the field order of Go's `ocispec.Descriptor`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct IndexEntry {
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    media_type: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    urls: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform: Option<Value>,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    artifact_type: Option<Value>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

impl IndexEntry {
    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key)?.as_str()
    }

    fn media_type(&self) -> Option<&str> {
        self.media_type.as_ref()?.as_str()
    }

    /// The entry as a descriptor; an entry without a valid digest or size is corrupt.
    fn descriptor(&self, index_path: &Path) -> Result<Descriptor> {
        let corrupt = |what: &str| {
            Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{} has an entry with {what}; fix or remove that entry",
                    index_path.display()
                ),
            )
        };
        let digest = self
            .digest
            .as_ref()
            .and_then(Value::as_str)
            .ok_or_else(|| corrupt("no digest"))?;
        let digest: Digest = digest
            .parse()
            .map_err(|err| corrupt(&format!("an invalid digest {digest:?} ({err})")))?;
        let size = match &self.size {
            None => 0,
            Some(size) => size
                .as_u64()
                .ok_or_else(|| corrupt(&format!("an invalid size {size}")))?,
        };
        let mut desc = Descriptor::new(self.media_type().unwrap_or_default(), digest, size);
        if let Some(annotations) = &self.annotations {
            desc.annotations = annotations
                .iter()
                .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
                .collect();
        }
        if let Some(Value::Array(urls)) = &self.urls {
            desc.urls = urls
                .iter()
                .filter_map(|url| url.as_str().map(str::to_owned))
                .collect();
        }
        desc.platform = self.platform.clone();
        Ok(desc)
    }
}

impl IndexFile {
    /// The entry an import of `tag` uses, as BuildKit picks it: the first whose
    /// `io.containerd.image.name` is `tag`, else the first whose `ref.name` is `tag`.
    fn find(&self, tag: &str) -> Option<&IndexEntry> {
        let entries = self.manifests.as_deref().unwrap_or_default();
        entries
            .iter()
            .find(|entry| entry.annotation(annotation::IMAGE_NAME) == Some(tag))
            .or_else(|| {
                entries
                    .iter()
                    .find(|entry| entry.annotation(annotation::REF_NAME) == Some(tag))
            })
    }

    /// Points `tag` at `desc` as BuildKit's `ociindex.Put` does.
    fn put(&mut self, tag: &str, desc: &Descriptor) {
        self.schema_version.get_or_insert_with(|| Value::from(2));
        self.media_type
            .get_or_insert_with(|| Value::from(media_type::OCI_INDEX));
        let entries = self.manifests.get_or_insert_with(Vec::new);
        entries.retain(|entry| {
            entry.annotation(annotation::REF_NAME) != Some(tag)
                || entry.annotation(annotation::IMAGE_NAME).is_some()
        });
        entries.push(IndexEntry {
            media_type: (!desc.media_type.is_empty()).then(|| Value::from(desc.media_type.clone())),
            digest: Some(Value::from(desc.digest.to_string())),
            size: Some(Value::from(desc.size)),
            annotations: Some(BTreeMap::from([(
                annotation::REF_NAME.to_owned(),
                Value::from(tag),
            )])),
            ..IndexEntry::default()
        });
    }
}

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
    pub(crate) fn read_index_file(&self) -> Result<Option<IndexFile>> {
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

    fn read_index_file_once(&self) -> Result<Option<IndexFile>> {
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
        let index: IndexFile = serde_json::from_slice(&bytes).map_err(|err| {
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
            .manifests
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|entry| {
                let tag = entry
                    .annotation(annotation::REF_NAME)
                    .unwrap_or_default()
                    .to_owned();
                Ok((tag, entry.descriptor(&path)?))
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
                let Some(entry) = index.find(tag) else {
                    return Ok(None);
                };
                let desc = entry.descriptor(&self.root.join(INDEX_FILE))?;
                let size = entry.size.is_some().then_some(desc.size);
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
        file.put(tag, &desc);
        let layout_path = self.root.join(LAYOUT_FILE);
        if !layout_path.exists() {
            self.replace_file(LAYOUT_FILE, LAYOUT_CONTENT.as_bytes())?;
        }
        let bytes = serde_json::to_vec(&file).expect("an index of JSON values serializes");
        self.replace_file(INDEX_FILE, &bytes)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(json: &str) -> IndexEntry {
        serde_json::from_str(json).expect("entry parses")
    }

    #[test]
    fn unknown_fields_and_entries_survive_a_put() {
        let input = concat!(
            r#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:"#,
            "0000000000000000000000000000000000000000000000000000000000000000",
            r#"","size":1,"annotations":{"io.containerd.image.name":"docker.io/a:latest","#,
            r#""org.opencontainers.image.ref.name":"latest"},"future":true}],"#,
            r#""annotations":{"k":"v"},"extra":[1]}"#
        );
        let mut index: IndexFile = serde_json::from_str(input).expect("parses");
        let raw = RawIndex::new(Some(media_type::OCI_MANIFEST.into()), "{}");
        index.put("latest", &raw.descriptor());
        let out = serde_json::to_string(&index).expect("serializes");
        let expected = format!(
            concat!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","#,
                r#""manifests":[{{"mediaType":"x","digest":"sha256:"#,
                "0000000000000000000000000000000000000000000000000000000000000000",
                r#"","size":1,"annotations":{{"io.containerd.image.name":"docker.io/a:latest","#,
                r#""org.opencontainers.image.ref.name":"latest"}},"future":true}},"#,
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","#,
                r#""size":2,"annotations":{{"org.opencontainers.image.ref.name":"latest"}}}}],"#,
                r#""annotations":{{"k":"v"}},"extra":[1]}}"#
            ),
            raw.digest
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn put_replaces_bare_tag_entries_only() {
        let mut index = IndexFile::default();
        let one = RawIndex::new(None, "1").descriptor();
        let two = RawIndex::new(None, "2").descriptor();
        index.put("a", &one);
        index.put("b", &one);
        index.put("a", &two);
        let tags: Vec<_> = index
            .manifests
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|entry| {
                (
                    entry.annotation(annotation::REF_NAME).map(str::to_owned),
                    entry.digest.clone(),
                )
            })
            .collect();
        assert_eq!(
            tags,
            vec![
                (Some("b".into()), Some(Value::from(one.digest.to_string()))),
                (Some("a".into()), Some(Value::from(two.digest.to_string()))),
            ]
        );
    }

    #[test]
    fn find_prefers_image_name_then_first_ref_name() {
        let mut index = IndexFile::default();
        let digests: Vec<String> = (0..3).map(|i| digest::sha256(&[i]).to_string()).collect();
        index.manifests = Some(vec![
            entry(&format!(
                r#"{{"digest":"{}","annotations":{{"org.opencontainers.image.ref.name":"t"}}}}"#,
                digests[0]
            )),
            entry(&format!(
                r#"{{"digest":"{}","annotations":{{"org.opencontainers.image.ref.name":"t"}}}}"#,
                digests[1]
            )),
            entry(&format!(
                r#"{{"digest":"{}","annotations":{{"io.containerd.image.name":"t"}}}}"#,
                digests[2]
            )),
        ]);
        let found = index.find("t").expect("found");
        assert_eq!(found.digest, Some(Value::from(digests[2].clone())));
        index.manifests.as_mut().expect("set").pop();
        let found = index.find("t").expect("found");
        assert_eq!(found.digest, Some(Value::from(digests[0].clone())));
        assert!(index.find("u").is_none());
    }

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
