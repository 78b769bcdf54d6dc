//! Wire types of the BuildKit cache configuration blob (`application/vnd.buildkit.cacheconfig.v0`).
//!
//! Field names, order and omission rules mirror BuildKit's Go structs (spec §1.2), so
//! [`CacheConfig::to_json`] writes what `json.Marshal` would.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

/// The whole cache graph as stored: layers in parent chains and records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    /// Layer blobs, each with a parent pointer.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub layers: Vec<CacheLayer>,
    /// Cache-key records.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub records: Vec<CacheRecord>,
}

/// One layer blob and the index of the layer below it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheLayer {
    /// Digest of the compressed layer blob; may be empty in malformed input.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blob: String,
    /// Index into `layers` of the parent; `-1` for none. A missing key means 0 (Go `omitempty`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub parent: i64,
    /// Per-layer annotations, written only by gha/s3/azblob; kept when read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<LayerAnnotations>,
}

/// Layer data that gha, s3 and azblob caches keep in the config instead of OCI descriptors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerAnnotations {
    /// Layer media type.
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    /// Digest of the uncompressed tar.
    #[serde(rename = "diffID", default, skip_serializing_if = "String::is_empty")]
    pub diff_id: String,
    /// Compressed size.
    #[serde(default, skip_serializing_if = "is_zero_u")]
    pub size: i64,
    /// Creation time; never omitted.
    #[serde(
        rename = "createdAt",
        alias = "createdat",
        default = "zero_time",
        with = "go_time"
    )]
    pub created_at: OffsetDateTime,
}

/// One cache key: its results, its dependency links and its digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// Results, each given by its top layer.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub layers: Vec<CacheResult>,
    /// Results given as explicit layer lists (inline cache only).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub chains: Vec<ChainedResult>,
    /// The record key (spec §1.4).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// One list of alternative links per input of the step.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "inputs_null_as_empty"
    )]
    pub inputs: Vec<Vec<CacheInput>>,
}

/// A result given by the index of its top layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheResult {
    /// Index into the config's `layers`.
    pub layer: i64,
    /// When the result was created.
    #[serde(
        rename = "createdAt",
        alias = "createdat",
        default = "zero_time",
        with = "go_time"
    )]
    pub created_at: OffsetDateTime,
}

/// A result given as an explicit list of layers, bottom first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainedResult {
    /// Indexes into the config's `layers`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub layers: Vec<i64>,
    /// When the result was created.
    #[serde(
        rename = "createdAt",
        alias = "createdat",
        default = "zero_time",
        with = "go_time"
    )]
    pub created_at: OffsetDateTime,
}

/// A link from a record to one of its dependencies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheInput {
    /// Opaque selector combined with the dependency's key; empty when unused.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// Index into `records` of the dependency.
    #[serde(default)]
    pub link: i64,
}

impl CacheConfig {
    /// Parses config JSON. Only syntax and types are checked here; the graph checks the rest
    /// (see `CacheGraph::from_config`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, crate::graph::ParseError> {
        serde_json::from_slice(bytes).map_err(|err| crate::graph::ParseError::Json {
            message: err.to_string(),
        })
    }

    /// Compact JSON exactly as Go's `json.Marshal` writes it: struct field order, omitted
    /// empty fields, HTML-safe escaping and no trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        to_go_json(self)
    }

    /// The blob digest of config layer `idx`, or `None` if out of range or not a digest.
    pub fn layer_blob(&self, idx: i64) -> Option<crate::Digest> {
        let layer = self.layers.get(usize::try_from(idx).ok()?)?;
        layer.blob.parse().ok()
    }

    /// The blobs of the layer chain ending at config layer `top`, top first, following
    /// `parent` links on the raw config (a config that may not be valid: this is how verify
    /// and collection read what a result stands on). A `None` entry is an index out of range
    /// or not a digest; a loop ends the walk with a `None` after one more step than there are
    /// layers. A valid config's chains are the graph's (`CacheGraph::chain_blobs`), reversed.
    pub fn chain_blobs(&self, top: i64) -> Vec<Option<crate::Digest>> {
        let mut out = Vec::new();
        let mut cur = Some(top);
        while let Some(idx) = cur {
            if out.len() > self.layers.len() {
                out.push(None);
                break;
            }
            out.push(self.layer_blob(idx));
            cur = usize::try_from(idx)
                .ok()
                .and_then(|i| self.layers.get(i))
                .map(|l| l.parent)
                .filter(|&p| p >= 0);
        }
        out
    }
}

/// Serializes `value` compactly with Go's string escaping (`<`, `>`, `&`, U+2028, U+2029).
pub fn to_go_json<T: Serialize>(value: &T) -> Vec<u8> {
    let json = serde_json::to_vec(value).expect("cache wire types always serialize");
    go_escape(json)
}

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

fn is_zero(value: &i64) -> bool {
    *value == 0
}

fn is_zero_u(value: &i64) -> bool {
    *value == 0
}

/// Go's zero `time.Time`, which BuildKit writes for unset times: `0001-01-01T00:00:00Z`.
pub fn zero_time() -> OffsetDateTime {
    time::macros::datetime!(0001-01-01 00:00:00 UTC)
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn inputs_null_as_empty<'de, D>(deserializer: D) -> Result<Vec<Vec<CacheInput>>, D::Error>
where
    D: Deserializer<'de>,
{
    let inputs: Option<Vec<Option<Vec<CacheInput>>>> = Option::deserialize(deserializer)?;
    Ok(inputs
        .unwrap_or_default()
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect())
}

/// RFC 3339 times as Go writes them (`RFC3339Nano`: trailing fraction zeros trimmed, offset kept).
pub mod go_time {
    use super::*;
    use time::format_description::well_known::Rfc3339;

    /// Formats `time` as Go's `RFC3339Nano`.
    pub fn format(time: &OffsetDateTime) -> String {
        time.format(&Rfc3339)
            .unwrap_or_else(|_| "0001-01-01T00:00:00Z".to_owned())
    }

    /// Parses an RFC 3339 time with any offset and up to 9 fraction digits.
    pub fn parse(text: &str) -> Result<OffsetDateTime, String> {
        OffsetDateTime::parse(text, &Rfc3339)
            .map_err(|err| format!("invalid RFC 3339 time {text:?}: {err}"))
    }

    /// Serde serializer.
    pub fn serialize<S: Serializer>(
        time: &OffsetDateTime,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(time))
    }

    /// Serde deserializer.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_follow_parents() {
        let config = CacheConfig::from_json(
            br#"{"layers":[{"blob":"sha256:0000000000000000000000000000000000000000000000000000000000000000","parent":-1},
                           {"blob":"sha256:1111111111111111111111111111111111111111111111111111111111111111","parent":0}],
                 "records":[]}"#,
        )
        .expect("config");
        let chain = config.chain_blobs(1);
        assert_eq!(chain.len(), 2);
        assert!(chain.iter().all(Option::is_some));
        assert_eq!(config.chain_blobs(5), vec![None]);
    }

    #[test]
    fn times_are_written_like_go() {
        let t = go_time::parse("2025-03-01T10:20:41.500000000Z").unwrap();
        assert_eq!(go_time::format(&t), "2025-03-01T10:20:41.5Z");
        let t = go_time::parse("2024-06-20T17:50:51+01:00").unwrap();
        assert_eq!(go_time::format(&t), "2024-06-20T17:50:51+01:00");
        assert_eq!(go_time::format(&zero_time()), "0001-01-01T00:00:00Z");
        assert!(go_time::parse("2024-06-20 17:50:51").is_err());
    }

    #[test]
    fn go_escaping_applies_to_html_characters() {
        let record = CacheInput {
            selector: "a<b>&c".into(),
            link: 0,
        };
        assert_eq!(
            String::from_utf8(to_go_json(&record)).unwrap(),
            r#"{"selector":"a\u003cb\u003e\u0026c","link":0}"#
        );
    }

    #[test]
    fn missing_parent_means_zero_and_null_inputs_become_empty() {
        let cfg = CacheConfig::from_json(
            br#"{"layers":[{"blob":"x"}],"records":[{"digest":"d","inputs":[null],"unknown":1}]}"#,
        )
        .unwrap();
        assert_eq!(cfg.layers[0].parent, 0);
        assert_eq!(cfg.records[0].inputs, vec![Vec::<CacheInput>::new()]);
    }
}
