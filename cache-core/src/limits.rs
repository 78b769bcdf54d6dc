//! Bounds on the work an untrusted input may cause: a cache config, a cache layer, a Dockerfile.
//!
//! A cache is untrusted input (anyone who can push to the cache ref or write the shared
//! directory controls it), and so is a Dockerfile from a pull request. Each limit's default is far
//! above what a real build meets; `--limit NAME=VALUE` raises (or lowers) one.
//!
//! ```
//! use cache_core::limits::Limits;
//!
//! let mut limits = Limits::default();
//! limits.set("layer-entries=5000000")?;
//! assert_eq!(limits.layer_entries, 5_000_000);
//! assert!(limits.set("layer-size=lots").is_err());
//! # Ok::<(), String>(())
//! ```

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Every limit, with its default from [`Limits::default`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Uncompressed bytes one cache layer may unpack to (`layer-size`).
    pub layer_size: u64,
    /// Uncompressed bytes per compressed byte of one cache layer (`layer-ratio`); a layer below
    /// [`Limits::RATIO_FLOOR`] bytes uncompressed is never refused for its ratio.
    pub layer_ratio: u64,
    /// Tar entries in one cache layer (`layer-entries`).
    pub layer_entries: u64,
    /// Bytes of one cache config or manifest (`config-size`).
    pub config_size: u64,
    /// Records in one cache config (`config-records`).
    pub config_records: u64,
    /// Layers in one cache config (`config-layers`).
    pub config_layers: u64,
    /// Bytes of a Dockerfile (`dockerfile-size`).
    pub dockerfile_size: u64,
    /// Bytes of one word after variable expansion in a Dockerfile (`word-size`).
    pub word_size: u64,
}

impl Limits {
    /// Uncompressed size below which a layer's compression ratio is not checked: small layers of
    /// zeros compress very well and are harmless.
    pub const RATIO_FLOOR: u64 = 64 * MIB;

    /// The names `--limit` accepts, in the order `--help` lists them.
    pub const NAMES: [&'static str; 8] = [
        "layer-size",
        "layer-ratio",
        "layer-entries",
        "config-size",
        "config-records",
        "config-layers",
        "dockerfile-size",
        "word-size",
    ];

    fn slot(&mut self, name: &str) -> Option<&mut u64> {
        Some(match name {
            "layer-size" => &mut self.layer_size,
            "layer-ratio" => &mut self.layer_ratio,
            "layer-entries" => &mut self.layer_entries,
            "config-size" => &mut self.config_size,
            "config-records" => &mut self.config_records,
            "config-layers" => &mut self.config_layers,
            "dockerfile-size" => &mut self.dockerfile_size,
            "word-size" => &mut self.word_size,
            _ => return None,
        })
    }

    /// Applies one `NAME=VALUE` override. Values are counts or sizes with an optional binary
    /// suffix (`K`, `M`, `G`, `T`, with or without `B`/`iB`): `layer-size=200G`.
    pub fn set(&mut self, assignment: &str) -> Result<(), String> {
        let names = Self::NAMES.join(", ");
        let (name, value) = assignment.split_once('=').ok_or_else(|| {
            format!("invalid --limit {assignment:?}: expected NAME=VALUE, NAME one of {names}")
        })?;
        let name = name.trim();
        let value = parse_amount(value.trim()).ok_or_else(|| {
            format!(
                "invalid --limit {assignment:?}: {value:?} is not a number (use e.g. 5000000, 512M or 20G)"
            )
        })?;
        let slot = self.slot(name).ok_or_else(|| {
            format!("invalid --limit {assignment:?}: unknown limit {name:?} (one of {names})")
        })?;
        *slot = value;
        Ok(())
    }

    /// The hint that ends every "limit exceeded" message: the flag that raises `name`.
    pub fn hint(name: &str) -> String {
        format!("raise it with --limit {name}=N if this input is trusted")
    }

    /// The value of limit `name` (one of [`Limits::NAMES`]).
    pub fn get(&self, name: &str) -> Option<u64> {
        self.clone().slot(name).map(|value| *value)
    }

    /// `Ok` when `actual` is within limit `name`; else an [`Exceeded`] naming `what`.
    ///
    /// # Panics
    ///
    /// If `name` is not one of [`Limits::NAMES`] (a bug in the caller).
    pub fn check(
        &self,
        name: &'static str,
        what: &dyn Fn() -> String,
        actual: u64,
    ) -> Result<(), Exceeded> {
        let limit = self.get(name).expect("checked limits are known names");
        if actual <= limit {
            return Ok(());
        }
        Err(Exceeded {
            what: what(),
            name,
            actual,
            limit,
        })
    }

    /// Checks a parsed cache config's records and layers against `config-records` and
    /// `config-layers`; `what` names the config and where it came from.
    pub fn check_config(
        &self,
        what: &dyn Fn() -> String,
        config: &crate::config::CacheConfig,
    ) -> Result<(), Exceeded> {
        self.check("config-records", what, config.records.len() as u64)?;
        self.check("config-layers", what, config.layers.len() as u64)
    }
}

/// An input over one of the [`Limits`]. Its message names the input, the limit and how to raise
/// it: `cache config sha256:… from type=local,src=/c has 6000000 records, more than the
/// config-records limit of 5000000; raise it with --limit config-records=N if this input is trusted`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} has {actual} {unit}, more than the {name} limit of {limit}; {hint}", unit = unit_of(name), hint = Limits::hint(name))]
pub struct Exceeded {
    /// The input: what it is and where it came from.
    pub what: String,
    /// The limit's name, as `--limit` takes it.
    pub name: &'static str,
    /// The input's amount.
    pub actual: u64,
    /// The limit.
    pub limit: u64,
}

fn unit_of(name: &str) -> &'static str {
    match name.rsplit('-').next() {
        Some("records") => "records",
        Some("layers") => "layers",
        Some("entries") => "entries",
        Some("ratio") => "bytes per compressed byte",
        _ => "bytes",
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            layer_size: 64 * GIB,
            layer_ratio: 256,
            layer_entries: 10_000_000,
            config_size: 512 * MIB,
            config_records: 5_000_000,
            config_layers: 5_000_000,
            dockerfile_size: 32 * MIB,
            word_size: 16 * MIB,
        }
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends at a character boundary: how
/// messages cut untrusted text (a 1 MB command, a hostile tag) before quoting it.
pub fn prefix_within(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn parse_amount(value: &str) -> Option<u64> {
    let digits = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let number: u64 = value[..digits].parse().ok()?;
    let unit = match value[digits..].to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => KIB,
        "M" | "MB" | "MIB" => MIB,
        "G" | "GB" | "GIB" => GIB,
        "T" | "TB" | "TIB" => 1024 * GIB,
        _ => return None,
    };
    number.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_end_at_character_boundaries() {
        assert_eq!(prefix_within("abc", 5), "abc");
        assert_eq!(prefix_within("abcdef", 3), "abc");
        assert_eq!(prefix_within("aéb", 2), "a");
        assert_eq!(prefix_within("éé", 3), "é");
    }

    #[test]
    fn every_name_sets_its_own_field() {
        for (i, name) in Limits::NAMES.iter().enumerate() {
            let mut limits = Limits::default();
            limits.set(&format!("{name}={}", i + 1)).unwrap();
            let mut expected = Limits::default();
            *expected.slot(name).unwrap() = i as u64 + 1;
            assert_eq!(limits, expected, "{name}");
        }
    }

    #[test]
    fn check_names_the_input_the_limit_and_the_flag() {
        let mut limits = Limits::default();
        limits.set("config-records=10").unwrap();
        assert_eq!(limits.get("config-records"), Some(10));
        assert!(limits.check("config-records", &|| "x".into(), 10).is_ok());
        let err = limits
            .check(
                "config-records",
                &|| "cache config sha256:ab from type=local,src=/c".into(),
                11,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cache config sha256:ab from type=local,src=/c has 11 records, more than the config-records limit of 10; raise it with --limit config-records=N if this input is trusted"
        );
        let err = limits
            .check("config-size", &|| "m".into(), u64::MAX)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("bytes, more than the config-size limit"),
            "{err}"
        );
    }

    #[test]
    fn sizes_take_binary_suffixes_and_refuse_overflow() {
        let mut limits = Limits::default();
        limits.set("layer-size=3G").unwrap();
        assert_eq!(limits.layer_size, 3 * GIB);
        limits.set("config-size = 5MiB").unwrap();
        assert_eq!(limits.config_size, 5 * MIB);
        let err = limits.set("layer-size=99999999999999999999T").unwrap_err();
        assert!(err.contains("is not a number"), "{err}");
        let err = limits.set("layers=3").unwrap_err();
        assert!(
            err.contains("unknown limit \"layers\"") && err.contains("layer-entries"),
            "{err}"
        );
        let err = limits.set("layer-size").unwrap_err();
        assert!(err.contains("expected NAME=VALUE"), "{err}");
    }
}
