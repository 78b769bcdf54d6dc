//! Building the config blob and image manifest of an image from its spec.

use std::collections::BTreeMap;

use bytes::Bytes;
use cache_core::descriptor::{annotation, media_type};
use cache_core::{Descriptor, Digest, RawIndex};
use serde::Serialize;

use super::Error;
use super::config::{HistoryEntry, ImageSpec, config_json};

/// An assembled image: config blob, manifest, and the layers the manifest names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The config descriptor (`application/vnd.oci.image.config.v1+json`) and its bytes.
    pub config: (Descriptor, Vec<u8>),
    /// The image manifest (`application/vnd.oci.image.manifest.v1+json`); its digest is
    /// `containerimage.digest`.
    pub manifest: RawIndex,
    /// The layers as given in the spec (with their annotations), bottom first.
    pub layers: Vec<Descriptor>,
}

impl Image {
    /// The digest of the config blob (`containerimage.config.digest`).
    pub fn config_digest(&self) -> &Digest {
        &self.config.0.digest
    }

    /// The digest of the manifest (`containerimage.digest`).
    pub fn manifest_digest(&self) -> &Digest {
        &self.manifest.digest
    }

    /// The exporter response buildx writes to `--metadata-file` for this image:
    /// `containerimage.config.digest`, `containerimage.descriptor` (the manifest descriptor, with
    /// `org.opencontainers.image.created` when the config has a creation time),
    /// `containerimage.digest` and, when `names` is not empty, `image.name` (full names joined by
    /// `,`). Sorted by key, as Go writes a map.
    pub fn metadata(&self, names: &[super::ImageName]) -> BTreeMap<String, serde_json::Value> {
        let mut out = BTreeMap::new();
        out.insert(
            "containerimage.config.digest".to_owned(),
            self.config_digest().to_string().into(),
        );
        out.insert(
            "containerimage.descriptor".to_owned(),
            serde_json::to_value(super::layout::manifest_entry(self))
                .expect("descriptors always serialize"),
        );
        out.insert(
            "containerimage.digest".to_owned(),
            self.manifest_digest().to_string().into(),
        );
        if !names.is_empty() {
            let joined: Vec<&str> = names.iter().map(|name| name.full.as_str()).collect();
            out.insert("image.name".to_owned(), joined.join(",").into());
        }
        out
    }
}

/// Builds the config blob and image manifest for `spec`, as BuildKit's image exporter does.
///
/// - The config's `rootfs.diff_ids` come from each layer's `containerd.io/uncompressed`
///   annotation; a layer without one is an [`Error::MissingDiffId`].
/// - The config's `created` is `spec.created`, or the time of the last history entry that has one.
/// - History is matched to the layers as BuildKit does: non-empty entries beyond the number of
///   layers become empty, and layers without an entry get one (`created_by` from the layer's
///   `buildkit/description`, `created` from `buildkit/createdat`, comment
///   `buildkit.exporter.image.v0`).
/// - Manifest layers carry only media type (converted to its OCI form), digest, size and URLs:
///   BuildKit drops `containerd.io/*` and `buildkit/*` annotations from image manifests.
/// - The manifest is indented with three spaces, as BuildKit's `json.MarshalIndent` writes it.
///
/// The result depends only on `spec`: the same spec always gives the same digests.
pub fn assemble(spec: &ImageSpec) -> Result<Image, Error> {
    let diff_ids = spec
        .layers
        .iter()
        .map(|layer| {
            layer.diff_id().ok_or_else(|| Error::MissingDiffId {
                digest: layer.digest.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let history = normalize_history(&spec.history, &spec.layers);
    let config_bytes = config_json(spec, &history, &diff_ids);
    let config_desc = Descriptor::new(
        media_type::OCI_IMAGE_CONFIG,
        cache_core::digest::sha256(&config_bytes),
        config_bytes.len() as u64,
    );

    #[derive(Serialize)]
    struct ManifestOut<'a> {
        #[serde(rename = "mediaType")]
        media_type: &'static str,
        #[serde(rename = "schemaVersion")]
        schema_version: u32,
        config: &'a Descriptor,
        layers: Vec<Descriptor>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        annotations: &'a BTreeMap<String, String>,
    }
    let layers = spec
        .layers
        .iter()
        .map(|layer| Descriptor {
            media_type: media_type::convert_layer(&layer.media_type, true)
                .map_or_else(|| layer.media_type.clone(), str::to_owned),
            digest: layer.digest.clone(),
            size: layer.size,
            urls: layer.urls.clone(),
            annotations: Default::default(),
            platform: None,
        })
        .collect();
    let manifest = ManifestOut {
        media_type: media_type::OCI_MANIFEST,
        schema_version: 2,
        config: &config_desc,
        layers,
        annotations: &spec.annotations,
    };
    let manifest_bytes = to_go_json_indent(&manifest);
    Ok(Image {
        config: (config_desc, config_bytes),
        manifest: RawIndex::new(
            Some(media_type::OCI_MANIFEST.to_owned()),
            Bytes::from(manifest_bytes),
        ),
        layers: spec.layers.clone(),
    })
}

/// BuildKit's `normalizeLayersAndHistory`: one non-empty history entry per layer.
fn normalize_history(history: &[HistoryEntry], layers: &[Descriptor]) -> Vec<HistoryEntry> {
    let mut n_layers_seen = 0;
    let mut out: Vec<HistoryEntry> = history
        .iter()
        .map(|entry| {
            let mut entry = entry.clone();
            if n_layers_seen >= layers.len() {
                entry.empty_layer = true;
            }
            if !entry.empty_layer {
                n_layers_seen += 1;
            }
            entry
        })
        .collect();
    for layer in &layers[n_layers_seen..] {
        out.push(HistoryEntry {
            created: layer
                .annotation(annotation::CREATED_AT)
                .and_then(|text| cache_core::config::go_time::parse(text).ok()),
            created_by: layer
                .annotation(annotation::DESCRIPTION)
                .unwrap_or("created by buildkit")
                .to_owned(),
            comment: Some("buildkit.exporter.image.v0".to_owned()),
            empty_layer: false,
        });
    }
    out
}

/// `json.MarshalIndent(v, "", "   ")`: three-space indent and Go's HTML escaping.
pub(super) fn to_go_json_indent<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"   ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    value
        .serialize(&mut serializer)
        .expect("image wire types always serialize");
    go_escape(out)
}

/// Go escapes `<`, `>`, `&`, U+2028 and U+2029 in strings; outside strings they cannot occur.
fn go_escape(json: Vec<u8>) -> Vec<u8> {
    if !json.iter().any(|b| matches!(b, b'<' | b'>' | b'&' | 0xE2)) {
        return json;
    }
    let text = String::from_utf8(json).expect("serde_json writes UTF-8");
    let mut out = String::with_capacity(text.len() + 16);
    for ch in text.chars() {
        match ch {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            other => out.push(other),
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{RuntimeConfig, parse_config};

    pub(crate) fn layer(content: &[u8], diff_content: &[u8]) -> Descriptor {
        let mut desc = Descriptor::new(
            media_type::DOCKER_LAYER_GZIP,
            cache_core::digest::sha256(content),
            content.len() as u64,
        );
        desc.annotations.insert(
            annotation::UNCOMPRESSED.into(),
            cache_core::digest::sha256(diff_content).to_string(),
        );
        desc.annotations
            .insert(annotation::CREATED_AT.into(), "2024-01-01T00:00:00Z".into());
        desc
    }

    fn spec() -> ImageSpec {
        ImageSpec {
            architecture: "amd64".into(),
            os: "linux".into(),
            created: None,
            config: RuntimeConfig {
                env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()],
                cmd: Some(vec!["/app".into()]),
                ..RuntimeConfig::default()
            },
            history: vec![
                HistoryEntry {
                    created: Some(time::OffsetDateTime::from_unix_timestamp(1).unwrap()),
                    created_by: "COPY app /app # buildkit".into(),
                    comment: Some(crate::image::HISTORY_COMMENT.into()),
                    empty_layer: false,
                },
                HistoryEntry {
                    created: None,
                    created_by: "RUN true".into(),
                    comment: None,
                    empty_layer: false,
                },
            ],
            layers: vec![layer(b"one", b"one-tar"), layer(b"two", b"two-tar")],
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn annotations_go_into_the_manifest() {
        let mut spec = spec();
        let plain = assemble(&spec).unwrap();
        spec.annotations
            .insert("org.opencontainers.image.title".into(), "app".into());
        let annotated = assemble(&spec).unwrap();
        let manifest: serde_json::Value =
            serde_json::from_slice(&annotated.manifest.bytes).unwrap();
        assert_eq!(
            manifest["annotations"]["org.opencontainers.image.title"],
            "app"
        );
        let manifest: serde_json::Value = serde_json::from_slice(&plain.manifest.bytes).unwrap();
        assert!(manifest.get("annotations").is_none(), "{manifest}");
        assert_eq!(plain.config_digest(), annotated.config_digest());
    }

    #[test]
    fn assemble_is_deterministic_and_links_config_and_layers() {
        let spec = spec();
        let image = assemble(&spec).unwrap();
        assert_eq!(image, assemble(&spec).unwrap());
        assert_eq!(image.layers, spec.layers);

        let (config_desc, config_bytes) = &image.config;
        assert_eq!(config_desc.media_type, media_type::OCI_IMAGE_CONFIG);
        assert_eq!(config_desc.digest, cache_core::digest::sha256(config_bytes));
        assert_eq!(config_desc.size, config_bytes.len() as u64);
        assert_eq!(
            image.manifest.digest,
            cache_core::digest::sha256(&image.manifest.bytes)
        );

        let manifest: serde_json::Value = serde_json::from_slice(&image.manifest.bytes).unwrap();
        assert_eq!(manifest["mediaType"], media_type::OCI_MANIFEST);
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["config"]["digest"], config_desc.digest.to_string());
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        for (json, desc) in layers.iter().zip(&spec.layers) {
            assert_eq!(json["digest"], desc.digest.to_string());
            assert_eq!(json["size"], desc.size);
            assert_eq!(json["mediaType"], media_type::OCI_LAYER_GZIP);
            assert!(json.get("annotations").is_none(), "{json}");
        }
        let text = std::str::from_utf8(&image.manifest.bytes).unwrap();
        assert!(
            text.starts_with("{\n   \"mediaType\": \"application/vnd.oci.image.manifest.v1+json\",\n   \"schemaVersion\": 2,\n   \"config\": {\n      \"mediaType\""),
            "{text}"
        );

        let parsed = parse_config(config_bytes).unwrap();
        let expected: Vec<_> = spec.layers.iter().map(|l| l.diff_id().unwrap()).collect();
        assert_eq!(parsed.diff_ids, expected);
        assert_eq!(parsed.created, spec.history[0].created);

        let mut changed = spec.clone();
        changed.config.cmd = Some(vec!["/other".into()]);
        let other = assemble(&changed).unwrap();
        assert_ne!(other.config.0.digest, config_desc.digest);
        assert_ne!(other.manifest.digest, image.manifest.digest);
    }

    #[test]
    fn metadata_names_the_manifest_and_config() {
        let image = assemble(&spec()).unwrap();
        let names = [
            crate::image::image_names("app:1").unwrap(),
            crate::image::image_names("reg.io/app").unwrap(),
        ];
        let metadata = serde_json::to_value(image.metadata(&names)).unwrap();
        assert_eq!(
            metadata,
            serde_json::json!({
                "containerimage.config.digest": image.config.0.digest.to_string(),
                "containerimage.descriptor": {
                    "mediaType": media_type::OCI_MANIFEST,
                    "digest": image.manifest.digest.to_string(),
                    "size": image.manifest.bytes.len(),
                    "annotations": {"org.opencontainers.image.created": "1970-01-01T00:00:01Z"},
                },
                "containerimage.digest": image.manifest.digest.to_string(),
                "image.name": "docker.io/library/app:1,reg.io/app:latest",
            })
        );
        assert!(!image.metadata(&[]).contains_key("image.name"));
    }

    #[test]
    fn history_is_matched_to_the_layers_like_buildkit() {
        let mut spec = spec();
        spec.history.truncate(1);
        let parsed = parse_config(&assemble(&spec).unwrap().config.1).unwrap();
        assert_eq!(parsed.history.len(), 2);
        assert_eq!(parsed.history[0], spec.history[0]);
        assert_eq!(parsed.history[1].created_by, "created by buildkit");
        assert_eq!(
            parsed.history[1].comment.as_deref(),
            Some("buildkit.exporter.image.v0")
        );
        assert_eq!(
            parsed.history[1].created.map(|t| t.unix_timestamp()),
            Some(1_704_067_200)
        );

        let mut spec = self::spec();
        spec.layers.truncate(1);
        let parsed = parse_config(&assemble(&spec).unwrap().config.1).unwrap();
        assert_eq!(parsed.history.len(), 2);
        assert!(!parsed.history[0].empty_layer);
        assert!(parsed.history[1].empty_layer);
    }

    #[test]
    fn a_layer_without_diff_id_is_refused() {
        let mut spec = spec();
        spec.layers[1].annotations.remove(annotation::UNCOMPRESSED);
        let err = assemble(&spec).unwrap_err();
        assert!(
            matches!(&err, Error::MissingDiffId { digest } if *digest == spec.layers[1].digest),
            "{err}"
        );
    }

    #[test]
    fn an_image_without_layers_has_an_empty_layer_list() {
        let mut spec = spec();
        spec.layers.clear();
        spec.history.clear();
        let image = assemble(&spec).unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&image.manifest.bytes).unwrap();
        assert_eq!(manifest["layers"], serde_json::json!([]));
        let config = std::str::from_utf8(&image.config.1).unwrap();
        assert!(
            config.contains(r#""rootfs":{"type":"layers","diff_ids":[]}"#),
            "{config}"
        );
        assert!(!config.contains("created"), "{config}");
    }
}
