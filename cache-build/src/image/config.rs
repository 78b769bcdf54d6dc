//! The image configuration blob: runtime config, history and rootfs, written as BuildKit writes it.

use std::collections::{BTreeMap, BTreeSet};

use cache_core::Digest;
use cache_core::config::go_time;
use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Error;

/// The runtime config of an image (the OCI image-spec `config` object).
///
/// Keys are the capitalised ones of the OCI and Docker specs, written in the order of Go's
/// `ocispec.ImageConfig` followed by Docker's extensions (`Healthcheck`, `OnBuild`, `Shell`),
/// with Go's `omitempty` rules. Maps and sets are sorted, so the same config gives the same bytes.
/// Reading is tolerant: `null` is an empty value, lowercase keys are accepted, unknown keys
/// (Docker's `Hostname`, `Image`, ...) are ignored, and `Entrypoint`/`Cmd` may be a string.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeConfig {
    /// `USER`: the user (and group) the process runs as.
    #[serde(
        rename = "User",
        alias = "user",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub user: Option<String>,
    /// `EXPOSE`: ports as `80/tcp`.
    #[serde(
        rename = "ExposedPorts",
        alias = "exposedPorts",
        skip_serializing_if = "BTreeSet::is_empty",
        serialize_with = "set_as_object",
        deserialize_with = "object_as_set"
    )]
    pub exposed_ports: BTreeSet<String>,
    /// `ENV`: environment as `KEY=value`, in definition order.
    #[serde(
        rename = "Env",
        alias = "env",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub env: Vec<String>,
    /// `ENTRYPOINT`.
    #[serde(
        rename = "Entrypoint",
        alias = "entrypoint",
        skip_serializing_if = "is_none_or_empty",
        deserialize_with = "str_slice"
    )]
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`.
    #[serde(
        rename = "Cmd",
        alias = "cmd",
        skip_serializing_if = "is_none_or_empty",
        deserialize_with = "str_slice"
    )]
    pub cmd: Option<Vec<String>>,
    /// `VOLUME`: paths.
    #[serde(
        rename = "Volumes",
        alias = "volumes",
        skip_serializing_if = "BTreeSet::is_empty",
        serialize_with = "set_as_object",
        deserialize_with = "object_as_set"
    )]
    pub volumes: BTreeSet<String>,
    /// `WORKDIR`.
    #[serde(
        rename = "WorkingDir",
        alias = "workingDir",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub working_dir: Option<String>,
    /// `LABEL`.
    #[serde(
        rename = "Labels",
        alias = "labels",
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub labels: BTreeMap<String, String>,
    /// `STOPSIGNAL`.
    #[serde(
        rename = "StopSignal",
        alias = "stopSignal",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub stop_signal: Option<String>,
    /// Docker's `ArgsEscaped`, which BuildKit sets whenever a Dockerfile sets `CMD`.
    #[serde(
        rename = "ArgsEscaped",
        alias = "argsEscaped",
        skip_serializing_if = "is_false",
        deserialize_with = "null_as_default"
    )]
    pub args_escaped: bool,
    /// `HEALTHCHECK` (Docker's `HealthConfig`, kept as JSON: `Test`, `Interval`, ... in nanoseconds).
    #[serde(
        rename = "Healthcheck",
        alias = "healthcheck",
        skip_serializing_if = "Option::is_none"
    )]
    pub healthcheck: Option<serde_json::Value>,
    /// `ONBUILD` triggers, in definition order.
    #[serde(
        rename = "OnBuild",
        alias = "onBuild",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub on_build: Vec<String>,
    /// `SHELL`.
    #[serde(
        rename = "Shell",
        alias = "shell",
        skip_serializing_if = "is_none_or_empty",
        deserialize_with = "str_slice"
    )]
    pub shell: Option<Vec<String>>,
}

/// One entry of the image `history`: the instruction that made a layer, or an empty layer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryEntry {
    /// When the step ran.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_go_time",
        deserialize_with = "lenient_time"
    )]
    pub created: Option<OffsetDateTime>,
    /// The instruction, as BuildKit writes it (`RUN /bin/sh -c make`, `ENV A=b`, ...).
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub created_by: String,
    /// `buildkit.dockerfile.v0` for Dockerfile steps.
    #[serde(
        skip_serializing_if = "is_none_or_empty_str",
        deserialize_with = "empty_as_none"
    )]
    pub comment: Option<String>,
    /// Whether the step made no layer (metadata instructions).
    #[serde(skip_serializing_if = "is_false", deserialize_with = "null_as_default")]
    pub empty_layer: bool,
}

/// Everything needed to write an image config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageSpec {
    /// CPU architecture in Go's naming (`amd64`).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// Creation time of the image; when `None`, the last history time is used (as BuildKit).
    pub created: Option<OffsetDateTime>,
    /// The runtime config.
    pub config: RuntimeConfig,
    /// History, bottom first: one non-empty entry per layer plus the empty-layer entries.
    pub history: Vec<HistoryEntry>,
    /// Layers, bottom first; each must carry `containerd.io/uncompressed` (its diffID).
    pub layers: Vec<cache_core::Descriptor>,
    /// Annotations of the image manifest (`--annotation`).
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// An image config read from a base image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedConfig {
    /// CPU architecture (`amd64`); empty if the config does not say.
    pub architecture: String,
    /// Operating system (`linux`); empty if the config does not say.
    pub os: String,
    /// Platform variant (`v8`), if any.
    pub variant: Option<String>,
    /// Creation time, if present and valid.
    pub created: Option<OffsetDateTime>,
    /// The runtime config (`config`, or Docker's `Config`).
    pub config: RuntimeConfig,
    /// The layers' diffIDs from `rootfs.diff_ids`, bottom first.
    pub diff_ids: Vec<Digest>,
    /// The history.
    pub history: Vec<HistoryEntry>,
}

/// Parses an image config blob (OCI or Docker), for inheriting from a base image.
///
/// Fails when the bytes are not a JSON object or a diffID is not a valid `sha256:` digest;
/// everything else missing becomes an empty value.
pub fn parse_config(bytes: &[u8]) -> Result<ParsedConfig, Error> {
    #[derive(Deserialize)]
    struct RootFsIn {
        #[serde(default, deserialize_with = "null_as_default")]
        diff_ids: Vec<String>,
    }
    #[derive(Deserialize)]
    struct ConfigIn {
        #[serde(default, deserialize_with = "null_as_default")]
        architecture: String,
        #[serde(default, deserialize_with = "null_as_default")]
        os: String,
        #[serde(default, deserialize_with = "empty_as_none")]
        variant: Option<String>,
        #[serde(default, deserialize_with = "lenient_time")]
        created: Option<OffsetDateTime>,
        #[serde(default, alias = "Config", deserialize_with = "null_as_default")]
        config: RuntimeConfig,
        #[serde(default)]
        rootfs: Option<RootFsIn>,
        #[serde(default, deserialize_with = "null_as_default")]
        history: Vec<HistoryEntry>,
    }
    let parsed: ConfigIn = serde_json::from_slice(bytes).map_err(|err| Error::InvalidConfig {
        reason: err.to_string(),
    })?;
    let diff_ids = parsed
        .rootfs
        .map(|rootfs| rootfs.diff_ids)
        .unwrap_or_default()
        .iter()
        .map(|text| {
            cache_core::digest::parse_sha256(text).map_err(|reason| Error::InvalidConfig {
                reason: format!("rootfs.diff_ids: {reason}"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ParsedConfig {
        architecture: parsed.architecture,
        os: parsed.os,
        variant: parsed.variant,
        created: parsed.created,
        config: parsed.config,
        diff_ids,
        history: parsed.history,
    })
}

/// Serializes the image config as BuildKit's exporter does.
///
/// BuildKit patches the frontend's config through a Go `map[string]json.RawMessage`, so the
/// top-level keys come out sorted: `architecture`, `config`, `created`, `history`, `os`, `rootfs`.
pub(super) fn config_json(
    spec: &ImageSpec,
    history: &[HistoryEntry],
    diff_ids: &[Digest],
) -> Vec<u8> {
    #[derive(Serialize)]
    struct RootFsOut<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        diff_ids: &'a [Digest],
    }
    #[derive(Serialize)]
    struct ConfigOut<'a> {
        architecture: &'a str,
        config: &'a RuntimeConfig,
        #[serde(skip_serializing_if = "Option::is_none")]
        created: Option<String>,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        history: &'a [HistoryEntry],
        os: &'a str,
        rootfs: RootFsOut<'a>,
    }
    let created = spec
        .created
        .or_else(|| history.iter().rev().find_map(|entry| entry.created));
    let out = ConfigOut {
        architecture: &spec.architecture,
        config: &spec.config,
        created: created.as_ref().map(go_time::format),
        history,
        os: &spec.os,
        rootfs: RootFsOut {
            kind: "layers",
            diff_ids,
        },
    };
    cache_core::config::to_go_json(&out)
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_none_or_empty(value: &Option<Vec<String>>) -> bool {
    value.as_ref().is_none_or(Vec::is_empty)
}

fn is_none_or_empty_str(value: &Option<String>) -> bool {
    value.as_ref().is_none_or(String::is_empty)
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn empty_as_none<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.filter(|text| !text.is_empty()))
}

/// Docker's `strslice`: `null`, a string (one element) or an array of strings.
fn str_slice<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StrSlice {
        One(String),
        Many(Vec<String>),
    }
    Ok(
        Option::<StrSlice>::deserialize(deserializer)?.map(|slice| match slice {
            StrSlice::One(text) => vec![text],
            StrSlice::Many(items) => items,
        }),
    )
}

/// Go's `map[string]struct{}`: `{"80/tcp":{}}`.
fn set_as_object<S: Serializer>(set: &BTreeSet<String>, serializer: S) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(set.len()))?;
    for key in set {
        map.serialize_entry(key, &serde_json::Map::new())?;
    }
    map.end()
}

/// Reads `{"80/tcp":{}}`, `null` or `["80/tcp"]` as a set of keys.
fn object_as_set<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeSet<String>, D::Error> {
    match Option::<serde_json::Value>::deserialize(deserializer)? {
        None => Ok(BTreeSet::new()),
        Some(serde_json::Value::Object(map)) => Ok(map.into_iter().map(|(key, _)| key).collect()),
        Some(serde_json::Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::String(text) => Ok(text),
                other => Err(de::Error::custom(format!(
                    "expected a string in a port or volume list, got {other}"
                ))),
            })
            .collect(),
        Some(other) => Err(de::Error::custom(format!(
            "expected an object of ports or volumes, got {other}"
        ))),
    }
}

fn opt_go_time<S: Serializer>(
    time: &Option<OffsetDateTime>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => go_time::serialize(time, serializer),
        None => serializer.serialize_none(),
    }
}

/// A time that is dropped, not refused, when it is not valid RFC 3339 (base images are not ours).
fn lenient_time<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<OffsetDateTime>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.and_then(|text| go_time::parse(&text).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).unwrap()
    }

    #[test]
    fn runtime_config_uses_go_field_order_and_omitempty() {
        let config = RuntimeConfig {
            user: Some("app".into()),
            exposed_ports: ["8080/tcp".to_string(), "53/udp".to_string()].into(),
            env: vec!["PATH=/usr/bin".into(), "A=<b>".into()],
            entrypoint: Some(vec!["/bin/app".into()]),
            cmd: Some(vec![]),
            working_dir: Some("/srv".into()),
            labels: [("z".to_string(), "1".to_string()), ("a".into(), "2".into())].into(),
            args_escaped: true,
            ..RuntimeConfig::default()
        };
        let json = String::from_utf8(cache_core::config::to_go_json(&config)).unwrap();
        assert_eq!(
            json,
            r#"{"User":"app","ExposedPorts":{"53/udp":{},"8080/tcp":{}},"Env":["PATH=/usr/bin","A=\u003cb\u003e"],"Entrypoint":["/bin/app"],"WorkingDir":"/srv","Labels":{"a":"2","z":"1"},"ArgsEscaped":true}"#
        );
        assert_eq!(
            cache_core::config::to_go_json(&RuntimeConfig::default()),
            b"{}"
        );
    }

    #[test]
    fn history_entries_are_written_like_buildkit() {
        let entry = HistoryEntry {
            created: Some(time(1_700_000_000)),
            created_by: "ENV A=b".into(),
            comment: Some("buildkit.dockerfile.v0".into()),
            empty_layer: true,
        };
        assert_eq!(
            String::from_utf8(cache_core::config::to_go_json(&entry)).unwrap(),
            r#"{"created":"2023-11-14T22:13:20Z","created_by":"ENV A=b","comment":"buildkit.dockerfile.v0","empty_layer":true}"#
        );
    }

    #[test]
    fn parses_docker_configs_with_nulls_and_capitalised_keys() {
        let docker = br#"{
            "architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05.123456789Z",
            "container_config": {"Hostname": "x"},
            "Config": {"Hostname": "", "User": "", "Env": ["PATH=/bin"], "Cmd": "sh",
                       "Entrypoint": null, "ExposedPorts": {"80/tcp": {}}, "Volumes": null,
                       "WorkingDir": "/w", "Labels": null, "OnBuild": null, "ArgsEscaped": true,
                       "Healthcheck": {"Test": ["NONE"]}},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]},
            "history": [{"created": "garbage", "created_by": "/bin/sh -c #(nop) ADD file", "empty_layer": false},
                        {"created_by": "CMD [\"sh\"]", "empty_layer": true, "author": "x"}]
        }"#;
        let parsed = parse_config(docker).unwrap();
        assert_eq!(parsed.architecture, "amd64");
        assert_eq!(parsed.os, "linux");
        assert_eq!(parsed.created.unwrap().nanosecond(), 123_456_789);
        assert_eq!(parsed.config.user, None);
        assert_eq!(parsed.config.env, ["PATH=/bin"]);
        assert_eq!(parsed.config.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(parsed.config.entrypoint, None);
        assert_eq!(
            parsed.config.exposed_ports.iter().collect::<Vec<_>>(),
            ["80/tcp"]
        );
        assert_eq!(parsed.config.working_dir.as_deref(), Some("/w"));
        assert!(parsed.config.args_escaped);
        assert!(parsed.config.healthcheck.is_some());
        assert_eq!(parsed.diff_ids.len(), 1);
        assert_eq!(parsed.history.len(), 2);
        assert_eq!(parsed.history[0].created, None);
        assert!(parsed.history[1].empty_layer);
    }

    #[test]
    fn parse_rejects_bad_diff_ids_and_non_objects() {
        let err = parse_config(br#"{"rootfs":{"diff_ids":["md5:abc"]}}"#).unwrap_err();
        assert!(err.to_string().contains("rootfs.diff_ids"), "{err}");
        assert!(parse_config(b"[1]").is_err());
        assert!(parse_config(b"{}").unwrap().diff_ids.is_empty());
    }

    #[test]
    fn written_config_parses_back_to_the_same_values() {
        let spec = ImageSpec {
            architecture: "amd64".into(),
            os: "linux".into(),
            created: None,
            config: RuntimeConfig {
                env: vec!["A=1".into()],
                cmd: Some(vec!["sh".into(), "-c".into(), "echo".into()]),
                volumes: ["/data".to_string()].into(),
                shell: Some(vec!["/bin/bash".into(), "-c".into()]),
                on_build: vec!["RUN x".into()],
                stop_signal: Some("SIGTERM".into()),
                healthcheck: Some(serde_json::json!({"Test": ["CMD", "true"], "Interval": 1000})),
                ..RuntimeConfig::default()
            },
            history: vec![
                HistoryEntry {
                    created: Some(time(10)),
                    created_by: "RUN a".into(),
                    comment: None,
                    empty_layer: false,
                },
                HistoryEntry {
                    created: Some(time(20)),
                    created_by: "CMD".into(),
                    comment: None,
                    empty_layer: true,
                },
            ],
            layers: Vec::new(),
            annotations: Default::default(),
        };
        let diff_id = cache_core::digest::sha256(b"layer");
        let bytes = config_json(&spec, &spec.history, std::slice::from_ref(&diff_id));
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"architecture":"amd64","config":{"#),
            "{text}"
        );
        assert!(
            text.contains(r#""created":"1970-01-01T00:00:20Z","history":["#),
            "{text}"
        );
        assert!(text.ends_with(&format!(
            r#""os":"linux","rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
        )));
        let parsed = parse_config(&bytes).unwrap();
        assert_eq!(parsed.config, spec.config);
        assert_eq!(parsed.history, spec.history);
        assert_eq!(parsed.diff_ids, [diff_id]);
        assert_eq!(parsed.created, Some(time(20)));
    }
}
