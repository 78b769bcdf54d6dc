//! Why a step missed: what each record's key is made of ([`Facts`]), kept beside the cache, and
//! the comparison of a missing step with the nearest record of the sources.
//!
//! Cache keys are digests: a miss alone cannot say what changed. So every record this engine
//! makes gets its facts (the command text, each env variable's value hash, workdir, user, the
//! files a copy reads, the base image), and exports carry them in the annotation
//! [`ANNOTATION`] of the cache config's descriptor, which BuildKit ignores. A miss is then
//! explained by walking from the step's parent record to the records that follow it in the
//! sources and comparing facts. Nothing of this runs for a hit.

use std::collections::BTreeMap;

use cache_core::Digest;
use serde::{Deserialize, Serialize};

/// The annotation of a cache config's descriptor holding [`FactsMap`] JSON.
pub const ANNOTATION: &str = "dev.buildcache.facts.v0";

/// How many files a copy's facts list; a larger copy is compared as a whole.
const MAX_FILES: usize = 512;

/// How many paths a reason names.
const MAX_PATHS: usize = 5;

/// What a record's key is made of, values hashed (short sha256), so a cache never carries a
/// build argument's value. A wire type: the JSON of [`ANNOTATION`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// The step's instruction text (hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// Environment and build-argument names, each with its value's hash.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// The user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// For content records: the files copied, each with its content hash.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// For content records of more than 512 files: files are not listed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub many_files: bool,
    /// For base image records: the image's manifest digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

/// Facts by record digest (`sha256:…`).
pub type FactsMap = BTreeMap<String, Facts>;

/// A short hash of `value` for facts.
pub fn short_hash(value: &str) -> String {
    let digest = cache_core::digest::sha256(value.as_bytes()).to_string();
    digest["sha256:".len().."sha256:".len() + 16].to_owned()
}

/// The facts of a step from its parts.
pub fn step_facts(op: &str, env: &[(String, String)], workdir: &str, user: Option<&str>) -> Facts {
    Facts {
        op: Some(short_hash(op)),
        env: env
            .iter()
            .map(|(k, v)| (k.clone(), short_hash(v)))
            .collect(),
        workdir: Some(workdir.to_owned()),
        user: Some(user.unwrap_or("").to_owned()),
        ..Facts::default()
    }
}

/// The facts of a content record: the files (path and content hash) a copy reads.
pub fn content_facts(files: impl IntoIterator<Item = (String, String)>) -> Facts {
    let mut map = BTreeMap::new();
    let mut many = false;
    for (path, hash) in files {
        if map.len() == MAX_FILES {
            many = true;
            map.clear();
            break;
        }
        map.insert(path, hash);
    }
    Facts {
        files: map,
        many_files: many,
        ..Facts::default()
    }
}

/// Reads the facts an imported cache carries (`None` when it has none, e.g. BuildKit's).
pub fn parse_annotation(text: &str) -> Option<FactsMap> {
    serde_json::from_str(text).ok()
}

/// The annotation value for the facts of `digests` (those known).
pub fn annotation_value<'a>(
    facts: &FactsMap,
    digests: impl IntoIterator<Item = &'a Digest>,
) -> Option<String> {
    let selected: FactsMap = digests
        .into_iter()
        .filter_map(|d| {
            let key = d.to_string();
            facts.get(&key).map(|f| (key, f.clone()))
        })
        .collect();
    (!selected.is_empty())
        .then(|| serde_json::to_string(&selected).expect("facts always serialize"))
}

/// What differs between the facts of a step (`now`) and of the nearest record (`then`), as
/// the words of a reason: `the command text`, `env or build-arg NAME`, `workdir`, `user`.
pub fn step_differences(now: &Facts, then: &Facts) -> Vec<String> {
    let mut out = Vec::new();
    if now.op != then.op {
        out.push("the command text".to_owned());
    }
    let names: std::collections::BTreeSet<&String> =
        now.env.keys().chain(then.env.keys()).collect();
    for name in names {
        if now.env.get(name) != then.env.get(name) {
            out.push(format!("env or build-arg {name}"));
        }
    }
    if now.workdir != then.workdir {
        out.push("the workdir".to_owned());
    }
    if now.user != then.user {
        out.push("the user".to_owned());
    }
    out
}

/// The paths whose content differs between two content facts (added, removed or changed), up
/// to five, then `…`; `None` when either side lists no files.
pub fn file_differences(now: &Facts, then: &Facts) -> Option<String> {
    if now.many_files || then.many_files {
        return None;
    }
    let paths: std::collections::BTreeSet<&String> =
        now.files.keys().chain(then.files.keys()).collect();
    let changed: Vec<&String> = paths
        .into_iter()
        .filter(|p| now.files.get(*p) != then.files.get(*p))
        .collect();
    if changed.is_empty() {
        return None;
    }
    let mut text = changed
        .iter()
        .take(MAX_PATHS)
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if changed.len() > MAX_PATHS {
        text.push_str(", …");
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_what_changed() {
        let env = |v: &str| {
            vec![
                ("A".to_owned(), "1".to_owned()),
                ("V".to_owned(), v.to_owned()),
            ]
        };
        let then = step_facts("RUN make", &env("1"), "/src", None);
        let now = step_facts("RUN make", &env("2"), "/src", None);
        assert_eq!(step_differences(&now, &then), ["env or build-arg V"]);
        let now = step_facts("RUN make all", &env("1"), "/", Some("app"));
        assert_eq!(
            step_differences(&now, &then),
            ["the command text", "the workdir", "the user"]
        );
        let files = |n: usize, changed: usize| {
            content_facts((0..n).map(|i| {
                let hash = if i < changed { "new" } else { "old" };
                (format!("f{i:02}"), hash.to_owned())
            }))
        };
        assert_eq!(
            file_differences(&files(3, 1), &files(3, 0)).as_deref(),
            Some("f00")
        );
        assert_eq!(
            file_differences(&files(9, 7), &files(9, 0)).as_deref(),
            Some("f00, f01, f02, f03, f04, …")
        );
        assert!(file_differences(&files(600, 1), &files(600, 0)).is_none());
        let digest = cache_core::digest::sha256(b"r");
        let map: FactsMap = [(digest.to_string(), then.clone())].into();
        let value = annotation_value(&map, [&digest]).expect("some facts");
        assert_eq!(parse_annotation(&value), Some(map));
        assert!(!value.contains("\"1\""), "values are hashed: {value}");
    }
}
