//! The one model of an OCI image layout's `index.json` and of the platform choice in an image
//! index, shared by the local cache directory, image layouts (`--output type=oci`, `FROM
//! oci-layout://`) and registry image resolution.
//!
//! [`OciIndex`] is read leniently and written back faithfully: the fields this crate knows are
//! typed, everything else (unknown fields of the index and of every entry) is kept as it was, in
//! the field order of Go's `ocispec.Index`, so an index BuildKit wrote is rewritten with BuildKit's
//! layout.
//!
//! ```
//! use cache_core::layout::OciIndex;
//! use cache_core::{Descriptor, digest};
//!
//! let mut index = OciIndex::from_json(br#"{"schemaVersion":2,"manifests":[],"x-extra":1}"#)?;
//! let manifest = Descriptor::new("application/vnd.oci.image.manifest.v1+json", digest::sha256(b"m"), 1);
//! index.put_tag("cache", &manifest);
//! assert_eq!(index.find_tag("cache").unwrap().descriptor().unwrap().digest, manifest.digest);
//! assert!(String::from_utf8(index.to_json()).unwrap().contains(r#""x-extra":1"#));
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::descriptor::{annotation, media_type};
use crate::{Descriptor, Digest};

/// Annotation of buildx's attestation manifests in an image index (never a runnable image).
pub const REFERENCE_TYPE: &str = "vnd.docker.reference.type";

/// `index.json` as read: the fields buildcache uses, everything else kept as it was.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OciIndex {
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

/// One `manifests` entry, in the field order of Go's `ocispec.Descriptor`, unknown fields kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
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
    /// A string annotation of the entry.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key)?.as_str()
    }

    /// The entry's tag (`org.opencontainers.image.ref.name`), if it has one.
    pub fn tag(&self) -> Option<&str> {
        self.annotation(annotation::REF_NAME)
    }

    /// The entry's media type, if it has one.
    pub fn media_type(&self) -> Option<&str> {
        self.media_type.as_ref()?.as_str()
    }

    /// Whether the entry gives a size (a missing one reads as 0 in [`IndexEntry::descriptor`]).
    pub fn has_size(&self) -> bool {
        self.size.is_some()
    }

    /// The entry's digest as written, if it is a string.
    pub fn digest_text(&self) -> Option<&str> {
        self.digest.as_ref()?.as_str()
    }

    /// The entry as a descriptor.
    ///
    /// Behavior: an entry without a valid sha256 digest, or with a size that is not a
    /// non-negative integer, is an error saying what is wrong (for the caller to name the file);
    /// a missing size is 0, non-string annotations and URLs are left out.
    pub fn descriptor(&self) -> Result<Descriptor, String> {
        let digest = self.digest_text().ok_or("no digest")?;
        let digest: Digest = digest
            .parse()
            .map_err(|err| format!("an invalid digest {digest:?} ({err})"))?;
        let size = match &self.size {
            None => 0,
            Some(size) => size
                .as_u64()
                .ok_or_else(|| format!("an invalid size {size}"))?,
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

    /// A new entry for `desc`: media type (when known), digest, size, annotations, platform.
    pub fn from_descriptor(desc: &Descriptor) -> Self {
        IndexEntry {
            media_type: (!desc.media_type.is_empty()).then(|| Value::from(desc.media_type.clone())),
            digest: Some(Value::from(desc.digest.to_string())),
            size: Some(Value::from(desc.size)),
            urls: (!desc.urls.is_empty()).then(|| Value::from(desc.urls.clone())),
            annotations: (!desc.annotations.is_empty()).then(|| {
                desc.annotations
                    .iter()
                    .map(|(key, value)| (key.clone(), Value::from(value.clone())))
                    .collect()
            }),
            platform: desc.platform.clone(),
            ..IndexEntry::default()
        }
    }
}

impl OciIndex {
    /// Parses `index.json` leniently (unknown fields kept, `manifests` may be missing or null).
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The bytes of `index.json`, with Go's field order and string escaping.
    pub fn to_json(&self) -> Vec<u8> {
        crate::config::to_go_json(self)
    }

    /// The index's own media type, if it has one.
    pub fn media_type(&self) -> Option<&str> {
        self.media_type.as_ref()?.as_str()
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> &[IndexEntry] {
        self.manifests.as_deref().unwrap_or_default()
    }

    /// The entry an import of cache tag `tag` uses, as BuildKit's `ociindex` picks it: the first
    /// whose `io.containerd.image.name` is `tag`, else the first whose `ref.name` is `tag`.
    pub fn find_tag(&self, tag: &str) -> Option<&IndexEntry> {
        let entries = self.entries();
        entries
            .iter()
            .find(|entry| entry.annotation(annotation::IMAGE_NAME) == Some(tag))
            .or_else(|| entries.iter().find(|entry| entry.tag() == Some(tag)))
    }

    /// The entry of an image named `reference` (`FROM oci-layout://DIR:REF`): [`find_tag`]'s
    /// rule, then the image whose name is `full_name` (the caller's normalised form of
    /// `reference`, e.g. `docker.io/library/app:1.0` for `app:1.0`), then the first image name
    /// ending in `:reference`, then the only entry of an index without tags when `reference` is
    /// `latest`. Images are named more loosely than caches because people type them.
    ///
    /// [`find_tag`]: OciIndex::find_tag
    pub fn find_image(&self, reference: &str, full_name: Option<&str>) -> Option<&IndexEntry> {
        let entries = self.entries();
        let suffix = format!(":{reference}");
        self.find_tag(reference)
            .or_else(|| {
                let full = full_name?;
                entries
                    .iter()
                    .find(|entry| entry.annotation(annotation::IMAGE_NAME) == Some(full))
            })
            .or_else(|| {
                entries.iter().find(|entry| {
                    entry
                        .annotation(annotation::IMAGE_NAME)
                        .is_some_and(|name| name.ends_with(&suffix))
                })
            })
            .or_else(|| match entries {
                [only] if reference == "latest" && only.tag().is_none() => Some(only),
                _ => None,
            })
    }

    /// The first entry for `digest`.
    pub fn find_digest(&self, digest: &Digest) -> Option<&IndexEntry> {
        self.entries()
            .iter()
            .find(|entry| entry.digest_text() == Some(digest.as_ref()))
    }

    /// Points cache tag `tag` at `desc` as BuildKit's `ociindex.Put` does: entries tagged `tag`
    /// that name no image are replaced; every other entry and field stays.
    pub fn put_tag(&mut self, tag: &str, desc: &Descriptor) {
        let mut entry = IndexEntry::from_descriptor(&Descriptor::new(
            desc.media_type.clone(),
            desc.digest.clone(),
            desc.size,
        ));
        entry.annotations = Some(BTreeMap::from([(
            annotation::REF_NAME.to_owned(),
            Value::from(tag),
        )]));
        self.upsert(entry, |existing| {
            existing.tag() != Some(tag) || existing.annotation(annotation::IMAGE_NAME).is_some()
        });
    }

    /// Adds image manifest `desc` tagged `tag` and, when given, named `full_name`
    /// (`io.containerd.image.name`), replacing the entry with the same tag and name, as buildx's
    /// OCI exporter does.
    pub fn put_image(&mut self, desc: &Descriptor, tag: &str, full_name: Option<&str>) {
        let mut desc = desc.clone();
        if let Some(full) = full_name {
            desc.annotations
                .insert(annotation::IMAGE_NAME.into(), full.into());
        }
        desc.annotations
            .insert(annotation::REF_NAME.into(), tag.into());
        self.upsert(IndexEntry::from_descriptor(&desc), |existing| {
            existing.tag() != Some(tag) || existing.annotation(annotation::IMAGE_NAME) != full_name
        });
    }

    /// Adds `desc` as it is (no tag, no name), as buildx's OCI exporter does for an unnamed image.
    pub fn put_untagged(&mut self, desc: &Descriptor) {
        self.upsert(IndexEntry::from_descriptor(desc), |_| true);
    }

    /// Removes every entry tagged `tag` that names `digest`; returns how many were removed.
    pub fn remove_tag(&mut self, tag: &str, digest: &Digest) -> usize {
        let Some(entries) = self.manifests.as_mut() else {
            return 0;
        };
        let before = entries.len();
        entries.retain(|entry| {
            entry.tag() != Some(tag) || entry.digest_text() != Some(digest.as_ref())
        });
        before - entries.len()
    }

    fn upsert(&mut self, entry: IndexEntry, keep: impl Fn(&IndexEntry) -> bool) {
        self.schema_version.get_or_insert_with(|| Value::from(2));
        self.media_type
            .get_or_insert_with(|| Value::from(media_type::OCI_INDEX));
        let entries = self.manifests.get_or_insert_with(Vec::new);
        entries.retain(keep);
        entries.push(entry);
    }
}

/// The image of `os`/`architecture` in an image index's `manifests`, the one rule every image
/// lookup uses: attestation manifests are skipped; an entry without a variant is preferred; an
/// index whose only image has no platform gives that image.
pub fn pick_platform<'a>(
    entries: &'a [Descriptor],
    os: &str,
    architecture: &str,
) -> Option<&'a Descriptor> {
    let images: Vec<&Descriptor> = entries
        .iter()
        .filter(|entry| entry.annotation(REFERENCE_TYPE) != Some("attestation-manifest"))
        .collect();
    let field = |entry: &Descriptor, key: &str| -> Option<String> {
        entry
            .platform
            .as_ref()?
            .get(key)?
            .as_str()
            .map(str::to_owned)
    };
    let matching = |entry: &&&Descriptor| {
        field(entry, "os").as_deref() == Some(os)
            && field(entry, "architecture").as_deref() == Some(architecture)
    };
    images
        .iter()
        .filter(matching)
        .find(|entry| field(entry, "variant").is_none())
        .or_else(|| images.iter().find(matching))
        .or_else(|| match images.as_slice() {
            [only] if only.platform.is_none() => Some(only),
            _ => None,
        })
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest;

    fn desc(name: &str) -> Descriptor {
        Descriptor::new(
            media_type::OCI_MANIFEST,
            digest::sha256(name.as_bytes()),
            10,
        )
    }

    #[test]
    fn unknown_fields_survive_a_rewrite_in_go_order() {
        let text = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"m","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1,"annotations":{"a":"<b>"},"x-entry":true}],"x-top":[1]}"#;
        let index = OciIndex::from_json(text.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(index.to_json()).unwrap(),
            text.replace("<b>", r"\u003cb\u003e")
        );
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
        let mut index = OciIndex::from_json(input.as_bytes()).expect("parses");
        let manifest = desc("m");
        index.put_tag("latest", &manifest);
        let expected = format!(
            concat!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","#,
                r#""manifests":[{{"mediaType":"x","digest":"sha256:"#,
                "0000000000000000000000000000000000000000000000000000000000000000",
                r#"","size":1,"annotations":{{"io.containerd.image.name":"docker.io/a:latest","#,
                r#""org.opencontainers.image.ref.name":"latest"}},"future":true}},"#,
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","#,
                r#""size":10,"annotations":{{"org.opencontainers.image.ref.name":"latest"}}}}],"#,
                r#""annotations":{{"k":"v"}},"extra":[1]}}"#
            ),
            manifest.digest
        );
        assert_eq!(String::from_utf8(index.to_json()).unwrap(), expected);
    }

    #[test]
    fn find_tag_prefers_image_name_then_first_ref_name() {
        let digests: Vec<String> = (0..3u8).map(|i| digest::sha256(&[i]).to_string()).collect();
        let entry = |key: &str, digest: &str| -> IndexEntry {
            serde_json::from_str(&format!(
                r#"{{"digest":"{digest}","annotations":{{"{key}":"t"}}}}"#
            ))
            .expect("entry parses")
        };
        let mut index = OciIndex {
            manifests: Some(vec![
                entry(annotation::REF_NAME, &digests[0]),
                entry(annotation::REF_NAME, &digests[1]),
                entry(annotation::IMAGE_NAME, &digests[2]),
            ]),
            ..OciIndex::default()
        };
        assert_eq!(
            index.find_tag("t").unwrap().digest_text(),
            Some(digests[2].as_str())
        );
        index.manifests.as_mut().expect("set").pop();
        assert_eq!(
            index.find_tag("t").unwrap().digest_text(),
            Some(digests[0].as_str())
        );
        assert!(index.find_tag("u").is_none());
    }

    #[test]
    fn put_tag_replaces_bare_tag_entries_only() {
        let mut index = OciIndex::default();
        index.put_image(&desc("image"), "cache", Some("docker.io/library/app:cache"));
        index.put_tag("cache", &desc("one"));
        index.put_tag("cache", &desc("two"));
        let digests: Vec<String> = index
            .entries()
            .iter()
            .map(|e| e.digest_text().unwrap().to_owned())
            .collect();
        assert_eq!(
            digests,
            [
                desc("image").digest.to_string(),
                desc("two").digest.to_string()
            ]
        );
        // An image name wins over a bare tag, as in BuildKit.
        let found = index.find_tag("docker.io/library/app:cache").unwrap();
        assert_eq!(found.digest_text(), Some(desc("image").digest.as_ref()));
        assert_eq!(
            index.find_tag("cache").unwrap().digest_text(),
            Some(desc("image").digest.as_ref())
        );
        assert_eq!(index.remove_tag("cache", &desc("two").digest), 1);
        assert_eq!(index.entries().len(), 1);
    }

    #[test]
    fn images_are_found_by_loose_names() {
        let mut index = OciIndex::default();
        index.put_image(&desc("app"), "1.0", Some("docker.io/library/app:1.0"));
        let found = |r: &str, full: Option<&str>| {
            index
                .find_image(r, full)
                .and_then(IndexEntry::digest_text)
                .map(str::to_owned)
        };
        let app = Some(desc("app").digest.to_string());
        assert_eq!(found("1.0", None), app);
        assert_eq!(found("app:1.0", Some("docker.io/library/app:1.0")), app);
        assert_eq!(found("2.0", None), None);
        let mut bare = OciIndex::default();
        bare.put_untagged(&desc("only"));
        assert!(bare.find_image("latest", None).is_some());
        assert!(bare.find_tag("latest").is_none());
    }

    #[test]
    fn platform_choice_skips_attestations_and_prefers_no_variant() {
        let with = |name: &str, platform: Value, attestation: bool| {
            let mut d = desc(name);
            d.platform = Some(platform);
            if attestation {
                d.annotations
                    .insert(REFERENCE_TYPE.into(), "attestation-manifest".into());
            }
            d
        };
        let entries = vec![
            with(
                "att",
                serde_json::json!({"os":"linux","architecture":"amd64"}),
                true,
            ),
            with(
                "arm",
                serde_json::json!({"os":"linux","architecture":"arm64"}),
                false,
            ),
            with(
                "v3",
                serde_json::json!({"os":"linux","architecture":"amd64","variant":"v3"}),
                false,
            ),
            with(
                "plain",
                serde_json::json!({"os":"linux","architecture":"amd64"}),
                false,
            ),
        ];
        assert_eq!(
            pick_platform(&entries, "linux", "amd64").unwrap().digest,
            desc("plain").digest
        );
        assert_eq!(
            pick_platform(&entries[..3], "linux", "amd64")
                .unwrap()
                .digest,
            desc("v3").digest
        );
        assert!(pick_platform(&entries[..2], "linux", "amd64").is_none());
        assert!(pick_platform(&[desc("bare")], "linux", "amd64").is_some());
    }
}
