//! The image config a Dockerfile produces, and its OCI JSON form.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Map, Value, json};

/// An OCI image config (the parts a Dockerfile can set).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `KEY=VALUE` pairs in order.
    pub env: Vec<(String, String)>,
    /// Default command (shell form already wrapped in the shell).
    pub cmd: Option<Vec<String>>,
    /// Entrypoint (shell form already wrapped in the shell).
    pub entrypoint: Option<Vec<String>>,
    /// User.
    pub user: Option<String>,
    /// Absolute working directory.
    pub workdir: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Exposed ports such as `80/tcp`.
    pub exposed_ports: BTreeSet<String>,
    /// Volumes.
    pub volumes: BTreeSet<String>,
    /// Stop signal as written (`SIGTERM`, `9`).
    pub stop_signal: Option<String>,
    /// Health check.
    pub healthcheck: Option<Healthcheck>,
    /// Shell for shell-form commands (`SHELL`).
    pub shell: Option<Vec<String>>,
    /// `MAINTAINER` value: BuildKit writes it to the image's top-level `author` field (not to
    /// the `config` object).
    pub author: Option<String>,
    /// `ONBUILD` triggers (instructions as written), run by stages built on this image.
    pub on_build: Vec<String>,
}

/// A container health check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", exe, args...]` or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    /// Zero means the runtime default.
    pub interval: Duration,
    /// Zero means the runtime default.
    pub timeout: Duration,
    /// Zero means the runtime default.
    pub start_period: Duration,
    /// Zero means the runtime default.
    pub start_interval: Duration,
    /// Zero means the runtime default.
    pub retries: u32,
}

fn strings(value: &Value, key: &str) -> Result<Option<Vec<String>>, String> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| format!("{key} must hold only strings"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(format!("{key} must be an array of strings")),
    }
}

fn string(value: &Value, key: &str) -> Result<Option<String>, String> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{key} must be a string")),
    }
}

fn key_set(value: &Value, key: &str) -> Result<BTreeSet<String>, String> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(BTreeSet::new()),
        Some(Value::Object(map)) => Ok(map.keys().cloned().collect()),
        Some(_) => Err(format!("{key} must be an object")),
    }
}

fn nanos(value: &Value, key: &str) -> Result<Duration, String> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(Duration::ZERO),
        Some(v) => v.as_u64().map(Duration::from_nanos).ok_or_else(|| {
            format!("Healthcheck.{key} must be a non-negative number of nanoseconds")
        }),
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl ImageConfig {
    /// Reads the `config` object of an OCI (or Docker) image config JSON, e.g. a base image's,
    /// for [`plan_with_base_configs`](super::plan_with_base_configs). Unknown keys are ignored.
    pub fn from_oci_json(config: &Value) -> Result<Self, String> {
        if config.is_null() {
            return Ok(ImageConfig::default());
        }
        if !config.is_object() {
            return Err("image config must be a JSON object".into());
        }
        let env = strings(config, "Env")?
            .unwrap_or_default()
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv, String::new()),
            })
            .collect();
        let labels = match config.get("Labels") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| {
                    v.as_str()
                        .map(|v| (k.clone(), v.to_string()))
                        .ok_or_else(|| "Labels must map to strings".to_string())
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("Labels must be an object".into()),
        };
        let healthcheck = match config.get("Healthcheck") {
            None | Some(Value::Null) => None,
            Some(hc) => Some(Healthcheck {
                test: strings(hc, "Test")?.unwrap_or_default(),
                interval: nanos(hc, "Interval")?,
                timeout: nanos(hc, "Timeout")?,
                start_period: nanos(hc, "StartPeriod")?,
                start_interval: nanos(hc, "StartInterval")?,
                retries: hc
                    .get("Retries")
                    .and_then(Value::as_u64)
                    .and_then(|r| u32::try_from(r).ok())
                    .unwrap_or(0),
            }),
        };
        Ok(ImageConfig {
            env,
            cmd: strings(config, "Cmd")?,
            entrypoint: strings(config, "Entrypoint")?,
            user: string(config, "User")?,
            workdir: string(config, "WorkingDir")?,
            labels,
            exposed_ports: key_set(config, "ExposedPorts")?,
            volumes: key_set(config, "Volumes")?,
            stop_signal: string(config, "StopSignal")?,
            healthcheck,
            shell: strings(config, "Shell")?,
            author: None,
            on_build: strings(config, "OnBuild")?.unwrap_or_default(),
        })
    }

    /// The `config` object in OCI JSON form, with the keys BuildKit writes (empty ones omitted).
    /// `author` is not part of it (it is a top-level image field).
    pub fn to_oci_json(&self) -> Value {
        let mut map = Map::new();
        if let Some(user) = &self.user {
            map.insert("User".into(), json!(user));
        }
        let empty_objects = |keys: &BTreeSet<String>| {
            Value::Object(keys.iter().map(|k| (k.clone(), json!({}))).collect())
        };
        if !self.exposed_ports.is_empty() {
            map.insert("ExposedPorts".into(), empty_objects(&self.exposed_ports));
        }
        if !self.env.is_empty() {
            map.insert(
                "Env".into(),
                json!(
                    self.env
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                ),
            );
        }
        if let Some(entrypoint) = &self.entrypoint {
            map.insert("Entrypoint".into(), json!(entrypoint));
        }
        if let Some(cmd) = &self.cmd {
            map.insert("Cmd".into(), json!(cmd));
        }
        if !self.volumes.is_empty() {
            map.insert("Volumes".into(), empty_objects(&self.volumes));
        }
        if let Some(wd) = &self.workdir {
            map.insert("WorkingDir".into(), json!(wd));
        }
        if !self.labels.is_empty() {
            map.insert("Labels".into(), json!(self.labels));
        }
        if let Some(sig) = &self.stop_signal {
            map.insert("StopSignal".into(), json!(sig));
        }
        if self.cmd.is_some() || self.entrypoint.is_some() {
            // BuildKit sets the (Docker-specific) ArgsEscaped whenever CMD or ENTRYPOINT is set.
            map.insert("ArgsEscaped".into(), json!(true));
        }
        if !self.on_build.is_empty() {
            map.insert("OnBuild".into(), json!(self.on_build));
        }
        if let Some(shell) = &self.shell {
            map.insert("Shell".into(), json!(shell));
        }
        if let Some(hc) = &self.healthcheck {
            let mut h = Map::new();
            h.insert("Test".into(), json!(hc.test));
            for (key, d) in [
                ("Interval", hc.interval),
                ("Timeout", hc.timeout),
                ("StartPeriod", hc.start_period),
                ("StartInterval", hc.start_interval),
            ] {
                if !d.is_zero() {
                    h.insert(key.into(), json!(duration_nanos(d)));
                }
            }
            if hc.retries != 0 {
                h.insert("Retries".into(), json!(hc.retries));
            }
            map.insert("Healthcheck".into(), Value::Object(h));
        }
        Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_json_round_trip() {
        let config = ImageConfig {
            env: vec![
                ("PATH".into(), "/bin".into()),
                ("EMPTY".into(), String::new()),
                ("EQ".into(), "a=b".into()),
            ],
            cmd: Some(vec!["sh".into()]),
            entrypoint: None,
            user: Some("app".into()),
            workdir: Some("/srv".into()),
            labels: BTreeMap::from([("a".to_string(), "1".to_string())]),
            exposed_ports: BTreeSet::from(["80/tcp".to_string()]),
            volumes: BTreeSet::from(["/data".to_string()]),
            stop_signal: Some("SIGINT".into()),
            healthcheck: Some(Healthcheck {
                test: vec!["CMD-SHELL".into(), "true".into()],
                interval: Duration::from_secs(30),
                retries: 3,
                ..Healthcheck::default()
            }),
            shell: Some(vec!["/bin/bash".into(), "-c".into()]),
            author: None,
            on_build: vec!["RUN make".into()],
        };
        let value = config.to_oci_json();
        assert_eq!(value["OnBuild"], json!(["RUN make"]));
        assert_eq!(value["Env"], json!(["PATH=/bin", "EMPTY=", "EQ=a=b"]));
        assert_eq!(value["ExposedPorts"], json!({"80/tcp": {}}));
        assert_eq!(
            value["Healthcheck"],
            json!({"Test": ["CMD-SHELL", "true"], "Interval": 30_000_000_000u64, "Retries": 3})
        );
        assert_eq!(value["ArgsEscaped"], json!(true));
        assert!(value.get("Entrypoint").is_none());
        assert_eq!(ImageConfig::from_oci_json(&value), Ok(config));
    }

    #[test]
    fn reads_a_real_image_config() {
        let value = json!({
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
            "WorkingDir": "",
            "Entrypoint": null,
            "OnBuild": null,
            "Labels": null
        });
        let config = ImageConfig::from_oci_json(&value).expect("valid");
        assert_eq!(config.cmd, Some(vec!["sh".into()]));
        assert_eq!(config.workdir, None);
        assert_eq!(config.env.len(), 1);
        assert_eq!(
            ImageConfig::from_oci_json(&Value::Null),
            Ok(ImageConfig::default())
        );
        assert!(ImageConfig::from_oci_json(&json!({"Env": "x"})).is_err());
        assert!(ImageConfig::from_oci_json(&json!([1])).is_err());
    }
}
