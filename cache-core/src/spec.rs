//! `--cache-to` and `--cache-from` values, parsed as buildx does (CSV `type=…,key=value`; a bare
//! reference means `type=registry,ref=…`), with every attribute validated.
//!
//! Unlike BuildKit, an invalid value or an unknown attribute is an error naming it and the
//! allowed values, never a silent fallback.

use std::fmt;
use std::path::PathBuf;

use crate::digest::{self, Digest};
use crate::graph::Mode;
use crate::manifest::ManifestForm;

/// Layer compression requested for an export (spec §2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionKind {
    /// No compression.
    Uncompressed,
    /// gzip (the default).
    Gzip,
    /// zstd.
    Zstd,
}

/// Compression attributes of an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compression {
    /// The algorithm.
    pub kind: CompressionKind,
    /// `compression-level`, if given (gzip 0–9, zstd 0–22).
    pub level: Option<i32>,
    /// `force-compression`: recompress existing blobs too.
    pub force: bool,
}

impl Default for Compression {
    fn default() -> Self {
        Self {
            kind: CompressionKind::Gzip,
            level: None,
            force: false,
        }
    }
}

/// Where a cache is exported to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportTarget {
    /// An OCI layout directory.
    Local {
        /// `dest`.
        dest: PathBuf,
        /// `tag`, default `latest`.
        tag: String,
    },
    /// A registry reference.
    Registry {
        /// `ref`, as typed.
        reference: String,
        /// `registry.insecure`.
        insecure: bool,
    },
}

/// A parsed `--cache-to` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSpec {
    /// The value exactly as typed.
    pub raw: String,
    /// Destination.
    pub target: ExportTarget,
    /// `mode`, default min.
    pub mode: Mode,
    /// From `oci-mediatypes` and `image-manifest`.
    pub form: ManifestForm,
    /// Compression attributes.
    pub compression: Compression,
    /// `ignore-error`: an export failure is a warning.
    pub ignore_error: bool,
    /// `gc` (or BuildKit's `reset`) for local exports: remove blobs no tag reaches; default true.
    pub gc: bool,
    /// `cache-mounts` (buildcache's own): add the contents of the build's cache mounts to the
    /// cache as extra blobs; default false, so the export is exactly BuildKit's.
    pub cache_mounts: bool,
    /// `cache-mounts-max-size`: a cache mount larger than this is left out (default 1 GiB).
    pub cache_mounts_max_size: u64,
}

/// The default of `cache-mounts-max-size`: 1 GiB.
pub const DEFAULT_CACHE_MOUNTS_MAX_SIZE: u64 = 1 << 30;

/// Parses a size: bytes, or a number with `k`, `m`, `g` or `t` (binary multiples; an optional
/// `i` and `b` after it are accepted: `512MiB`, `1g`, `2GB`).
pub fn parse_size(text: &str) -> Option<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let number: f64 = lower[..split].parse().ok()?;
    let unit = lower[split..].trim_start();
    let unit = unit.strip_suffix('b').unwrap_or(unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let multiplier: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    let bytes = number * multiplier as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// Where a cache is imported from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImportSource {
    /// An OCI layout directory.
    Local {
        /// `src`.
        src: PathBuf,
        /// `tag`, default `latest`; ignored when `digest` is given.
        tag: String,
        /// `digest` of the top-level manifest.
        digest: Option<Digest>,
    },
    /// A registry reference.
    Registry {
        /// `ref`, as typed.
        reference: String,
        /// `registry.insecure`.
        insecure: bool,
    },
}

/// A parsed `--cache-from` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportSpec {
    /// The value exactly as typed.
    pub raw: String,
    /// The source.
    pub source: ImportSource,
}

/// Checks that `tag` is an OCI tag, `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`, as the tag of a local
/// cache, an image or a layout must be (so that no tag is ever a path like `../../x`). The error
/// quotes the tag and the rule.
pub fn check_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let first = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first && rest && tag.len() <= 128 {
        return Ok(());
    }
    let shown = if tag.len() > 140 {
        let head = crate::limits::prefix_within(tag, 128);
        format!("{head:?}... ({} bytes)", tag.len())
    } else {
        format!("{tag:?}")
    };
    Err(format!(
        "{shown} is not a valid tag: a tag is 1 to 128 letters, digits, '_', '.' and '-', and does \
         not start with '.' or '-' ([a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}})"
    ))
}

/// An invalid cache option; the message names the attribute and the allowed values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The option value.
    pub value: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid cache option {:?}: {}", self.value, self.message)
    }
}

impl std::error::Error for SpecError {}

const EXPORT_LOCAL: &[&str] = &[
    "type",
    "dest",
    "tag",
    "mode",
    "oci-mediatypes",
    "image-manifest",
    "compression",
    "compression-level",
    "force-compression",
    "ignore-error",
    "gc",
    "reset",
    "cache-mounts",
    "cache-mounts-max-size",
];
const EXPORT_REGISTRY: &[&str] = &[
    "type",
    "ref",
    "mode",
    "oci-mediatypes",
    "image-manifest",
    "compression",
    "compression-level",
    "force-compression",
    "ignore-error",
    "registry.insecure",
    "cache-mounts",
    "cache-mounts-max-size",
];
const IMPORT_LOCAL: &[&str] = &["type", "src", "tag", "digest"];
const IMPORT_REGISTRY: &[&str] = &["type", "ref", "registry.insecure"];

/// Parses a `--cache-to` value.
pub fn parse_export(value: &str) -> Result<ExportSpec, SpecError> {
    let attrs = Attrs::parse(value)?;
    let kind = attrs.kind()?;
    let allowed = match kind {
        Kind::Local => EXPORT_LOCAL,
        Kind::Registry => EXPORT_REGISTRY,
    };
    attrs.check_known(allowed, kind)?;
    let target = match kind {
        Kind::Local => ExportTarget::Local {
            dest: PathBuf::from(attrs.required("dest", "type=local,dest=DIR")?),
            tag: attrs.tag()?,
        },
        Kind::Registry => ExportTarget::Registry {
            reference: attrs
                .required("ref", "type=registry,ref=HOST/REPO:TAG")?
                .to_owned(),
            insecure: attrs.bool("registry.insecure", false)?,
        },
    };
    let mode = match attrs.get("mode") {
        None | Some("min") => Mode::Min,
        Some("max") => Mode::Max,
        Some(other) => {
            return Err(attrs.error(format!(
                "mode={other:?} is not valid: use mode=min or mode=max"
            )));
        }
    };
    let oci = attrs.bool("oci-mediatypes", true)?;
    let image_manifest = match attrs.get("image-manifest") {
        None => None,
        Some(_) => Some(attrs.bool("image-manifest", true)?),
    };
    let form =
        ManifestForm::from_attributes(oci, image_manifest).map_err(|msg| attrs.error(msg))?;
    let kind_c = match attrs.get("compression") {
        None | Some("gzip") => CompressionKind::Gzip,
        Some("zstd") => CompressionKind::Zstd,
        Some("uncompressed") => CompressionKind::Uncompressed,
        Some(other) => {
            return Err(attrs.error(format!(
                "compression={other:?} is not supported: use gzip, zstd or uncompressed"
            )));
        }
    };
    let level = match attrs.get("compression-level") {
        None => None,
        Some(text) => {
            let max = match kind_c {
                CompressionKind::Zstd => 22,
                _ => 9,
            };
            let level: i32 = text
                .parse()
                .ok()
                .filter(|l| (0..=max).contains(l))
                .ok_or_else(|| {
                    attrs.error(format!(
                        "compression-level={text:?} is not valid: use an integer from 0 to {max}"
                    ))
                })?;
            Some(level)
        }
    };
    let compression = Compression {
        kind: kind_c,
        level,
        force: attrs.bool_empty_true("force-compression")?,
    };
    let gc = match (attrs.get("gc"), attrs.get("reset")) {
        (Some(_), Some(_)) => {
            return Err(attrs.error("give gc or reset, not both (they mean the same)".into()));
        }
        (Some(_), None) => attrs.bool("gc", true)?,
        (None, Some(_)) => attrs.bool("reset", true)?,
        (None, None) => true,
    };
    Ok(ExportSpec {
        raw: value.to_owned(),
        target,
        mode,
        form,
        compression,
        ignore_error: attrs.bool("ignore-error", false)?,
        gc,
        cache_mounts: attrs.bool("cache-mounts", false)?,
        cache_mounts_max_size: match attrs.get("cache-mounts-max-size") {
            None => DEFAULT_CACHE_MOUNTS_MAX_SIZE,
            Some(text) => parse_size(text).ok_or_else(|| {
                attrs.error(format!(
                    "cache-mounts-max-size={text:?} is not a size: use bytes or e.g. 512MiB, 2GB"
                ))
            })?,
        },
    })
}

/// Parses a `--cache-from` value.
pub fn parse_import(value: &str) -> Result<ImportSpec, SpecError> {
    let attrs = Attrs::parse(value)?;
    let kind = attrs.kind()?;
    let allowed = match kind {
        Kind::Local => IMPORT_LOCAL,
        Kind::Registry => IMPORT_REGISTRY,
    };
    attrs.check_known(allowed, kind)?;
    let source = match kind {
        Kind::Local => {
            let digest = match attrs.get("digest") {
                None => None,
                Some(text) => Some(digest::parse_sha256(text).map_err(|msg| attrs.error(msg))?),
            };
            ImportSource::Local {
                src: PathBuf::from(attrs.required("src", "type=local,src=DIR")?),
                tag: attrs.tag()?,
                digest,
            }
        }
        Kind::Registry => ImportSource::Registry {
            reference: attrs
                .required("ref", "type=registry,ref=HOST/REPO:TAG")?
                .to_owned(),
            insecure: attrs.bool("registry.insecure", false)?,
        },
    };
    Ok(ImportSpec {
        raw: value.to_owned(),
        source,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Local,
    Registry,
}

struct Attrs {
    value: String,
    pairs: Vec<(String, String)>,
}

impl Attrs {
    fn parse(value: &str) -> Result<Self, SpecError> {
        let err = |message: String| SpecError {
            value: value.to_owned(),
            message,
        };
        if value.trim().is_empty() {
            return Err(err(
                "the value is empty: use type=local,… or type=registry,ref=…".into(),
            ));
        }
        let fields = split_csv(value).map_err(err)?;
        if !value.contains('=') {
            // buildx: a bare reference is a registry ref.
            if fields.len() != 1 {
                return Err(err("give one reference per option".into()));
            }
            return Ok(Self {
                value: value.to_owned(),
                pairs: vec![
                    ("type".into(), "registry".into()),
                    ("ref".into(), fields[0].clone()),
                ],
            });
        }
        let mut pairs: Vec<(String, String)> = Vec::new();
        for field in fields {
            let Some((key, val)) = field.split_once('=') else {
                return Err(err(format!("{field:?} is not key=value")));
            };
            let key = key.trim().to_ascii_lowercase();
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(err(format!("attribute {key} is given twice")));
            }
            pairs.push((key, val.to_owned()));
        }
        Ok(Self {
            value: value.to_owned(),
            pairs,
        })
    }

    fn error(&self, message: String) -> SpecError {
        SpecError {
            value: self.value.clone(),
            message,
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn kind(&self) -> Result<Kind, SpecError> {
        match self.get("type") {
            Some("local") => Ok(Kind::Local),
            Some("registry") => Ok(Kind::Registry),
            None => Err(self.error("type is missing: use type=local or type=registry".into())),
            Some(other) => Err(self.error(format!(
                "cache type {other:?} is not supported: use type=local or type=registry"
            ))),
        }
    }

    fn check_known(&self, allowed: &[&str], kind: Kind) -> Result<(), SpecError> {
        for (key, _) in &self.pairs {
            if !allowed.contains(&key.as_str()) {
                let name = match kind {
                    Kind::Local => "local",
                    Kind::Registry => "registry",
                };
                return Err(self.error(format!(
                    "unknown attribute {key:?} for type={name}: allowed are {}",
                    allowed.join(", ")
                )));
            }
        }
        Ok(())
    }

    fn required(&self, key: &str, example: &str) -> Result<&str, SpecError> {
        match self.get(key) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(self.error(format!("{key} is required, e.g. {example}"))),
        }
    }

    fn tag(&self) -> Result<String, SpecError> {
        match self.get("tag") {
            None => Ok("latest".into()),
            Some("") => {
                Err(self.error("tag is empty: give a tag name or leave tag out for latest".into()))
            }
            Some(tag) => {
                check_tag(tag).map_err(|message| self.error(format!("tag={message}")))?;
                Ok(tag.to_owned())
            }
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool, SpecError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => parse_bool(v).ok_or_else(|| {
                self.error(format!(
                    "{key}={v:?} is not valid: use {key}=true or {key}=false"
                ))
            }),
        }
    }

    fn bool_empty_true(&self, key: &str) -> Result<bool, SpecError> {
        match self.get(key) {
            Some("") => Ok(true),
            _ => self.bool(key, false),
        }
    }
}

/// Go's `strconv.ParseBool`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Splits one CSV record (Go's encoding/csv rules: fields may be double-quoted, `""` escapes).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut at_start = true;
    let mut quoted = false;
    while let Some(ch) = chars.next() {
        if quoted {
            if ch == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push('"');
                } else {
                    quoted = false;
                    if !matches!(chars.peek(), None | Some(',')) {
                        return Err("extraneous text after a closing quote".into());
                    }
                }
            } else {
                cur.push(ch);
            }
            continue;
        }
        match ch {
            '"' if at_start => {
                quoted = true;
                at_start = false;
            }
            ',' => {
                fields.push(std::mem::take(&mut cur));
                at_start = true;
            }
            _ => {
                cur.push(ch);
                at_start = false;
            }
        }
    }
    if quoted {
        return Err("a quoted field is not closed".into());
    }
    fields.push(cur);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_mounts_attributes() {
        let plain = parse_export("type=local,dest=d").expect("valid");
        assert!(!plain.cache_mounts);
        assert_eq!(plain.cache_mounts_max_size, DEFAULT_CACHE_MOUNTS_MAX_SIZE);
        let spec =
            parse_export("type=registry,ref=r/a:c,cache-mounts=true,cache-mounts-max-size=512MiB")
                .expect("valid");
        assert!(spec.cache_mounts);
        assert_eq!(spec.cache_mounts_max_size, 512 << 20);
        let err = parse_export("type=local,dest=d,cache-mounts-max-size=huge")
            .expect_err("not a size")
            .to_string();
        assert!(err.contains("cache-mounts-max-size"), "{err}");
        assert_eq!(parse_size("2GB"), Some(2 << 30));
        assert_eq!(parse_size("1.5k"), Some(1536));
        assert_eq!(parse_size("-1"), None);
    }

    #[test]
    fn bare_reference_is_a_registry_import() {
        let spec = parse_import("127.0.0.1:5000/app:cache").unwrap();
        assert_eq!(
            spec.source,
            ImportSource::Registry {
                reference: "127.0.0.1:5000/app:cache".into(),
                insecure: false
            }
        );
    }

    #[test]
    fn export_defaults_and_attributes() {
        let spec = parse_export("type=local,dest=/tmp/c").unwrap();
        assert_eq!(spec.mode, Mode::Min);
        assert_eq!(spec.form, ManifestForm::ImageManifest);
        assert!(spec.gc);
        assert!(!spec.ignore_error);
        let spec = parse_export(
            "type=registry,ref=r/a:c,mode=max,oci-mediatypes=false,compression=zstd,compression-level=3,force-compression=,ignore-error=true,registry.insecure=true",
        )
        .unwrap();
        assert_eq!(spec.mode, Mode::Max);
        assert_eq!(spec.form, ManifestForm::DockerList);
        assert_eq!(spec.compression.kind, CompressionKind::Zstd);
        assert_eq!(spec.compression.level, Some(3));
        assert!(spec.compression.force && spec.ignore_error);
        assert_eq!(
            parse_export("type=local,dest=d,image-manifest=false")
                .unwrap()
                .form,
            ManifestForm::OciIndex
        );
    }

    #[test]
    fn invalid_values_name_the_attribute_and_the_allowed_values() {
        let check = |value: &str, needle: &str| {
            let err = parse_export(value).unwrap_err().to_string();
            assert!(err.contains(needle), "{value}: {err}");
        };
        check("type=local,dest=d,mode=maximum", "use mode=min or mode=max");
        check("type=local,dest=d,foo=bar", "unknown attribute \"foo\"");
        check("type=local,dest=d,ref=x", "allowed are");
        check("type=gha", "not supported");
        check("type=local", "dest is required");
        check(
            "type=local,dest=d,ignore-error=yes",
            "ignore-error=true or ignore-error=false",
        );
        check(
            "type=local,dest=d,compression=brotli",
            "gzip, zstd or uncompressed",
        );
        check(
            "type=local,dest=d,compression=zstd,compression-level=30",
            "0 to 22",
        );
        check(
            "type=local,dest=d,oci-mediatypes=false,image-manifest=true",
            "oci-mediatypes=true",
        );
        check("type=local,dest=d,mode=max,mode=min", "twice");
        let err = parse_import("type=local,src=d,digest=sha256:zz")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid digest"), "{err}");
        let err = parse_import("type=local,src=d,tag=")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tag is empty"), "{err}");
    }

    #[test]
    fn tags_must_be_oci_tags() {
        for tag in ["latest", "v1.2.3", "_x", "A-b_c.9", &"t".repeat(128)] {
            parse_import(&format!("type=local,src=d,tag={tag}")).unwrap();
            check_tag(tag).unwrap();
        }
        for tag in [
            "../../x",
            ".hidden",
            "-x",
            "a/b",
            "a:b",
            "é",
            &"t".repeat(129),
        ] {
            let err = parse_export(&format!("type=local,dest=d,tag={tag}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("is not a valid tag")
                    && err.contains("[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"),
                "{tag}: {err}"
            );
            assert!(err.contains("tag="), "{err}");
        }
    }

    #[test]
    fn csv_quoting_follows_go() {
        let spec = parse_export(r#"type=local,"dest=/tmp/a,b""#).unwrap();
        assert_eq!(
            spec.target,
            ExportTarget::Local {
                dest: "/tmp/a,b".into(),
                tag: "latest".into()
            }
        );
        assert!(parse_export(r#"type=local,"dest=x"#).is_err());
    }
}
