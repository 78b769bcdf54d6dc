//! `RUN --mount`, `--network` and `--security`: BuildKit's option syntax, defaults and checks.
//!
//! Follows BuildKit's `instructions/commands_runmount.go` (parsing) and
//! `dockerfile2llb/convert_runmount.go`, `convert_secrets.go`, `convert_ssh.go` (defaults), so the
//! typed [`Mount`]s carry exactly what BuildKit puts into its exec op.

use super::CopyFrom;
use super::ignore::clean_path;

/// A `RUN --mount` after variable expansion, with BuildKit's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mount {
    /// `type=bind` (the default type): files of the context, a stage, an image or a named context.
    Bind(BindMount),
    /// `type=cache`: a directory that persists between builds, keyed by id.
    Cache(CacheMount),
    /// `type=tmpfs`: an empty in-memory filesystem.
    Tmpfs(TmpfsMount),
    /// `type=secret`: a secret given to the build (`--secret`), as a file or an env variable.
    Secret(SecretMount),
    /// `type=ssh`: an SSH agent socket given to the build (`--ssh`).
    Ssh(SshMount),
}

impl Mount {
    /// Where the mount appears in the step's filesystem (absolute), if it is a filesystem mount:
    /// a secret given only as `env=` has none.
    pub fn target(&self) -> Option<&str> {
        match self {
            Mount::Bind(m) => Some(&m.target),
            Mount::Cache(m) => Some(&m.target),
            Mount::Tmpfs(m) => Some(&m.target),
            Mount::Secret(m) => m.target.as_deref(),
            Mount::Ssh(m) => Some(&m.target),
        }
    }
}

/// `RUN --mount=type=bind`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    /// Absolute, cleaned; relative targets are joined to the step's working directory.
    pub target: String,
    /// Where the files come from (`from=`; the build context when absent).
    pub from: CopyFrom,
    /// Absolute, cleaned path inside `from` (`source=`; `/` when absent).
    pub source: String,
    /// True unless `rw` was given (BuildKit's default for bind mounts). A read-write bind mount
    /// lets the step write, and the writes are discarded.
    pub read_only: bool,
}

/// How concurrent builds share a cache mount (`sharing=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Sharing {
    /// Every build uses the same directory at the same time (the default).
    #[default]
    Shared,
    /// A build that finds the directory in use gets a fresh instance of its own.
    Private,
    /// A build waits until no other build uses the directory.
    Locked,
}

impl Sharing {
    /// The Dockerfile spelling: `shared`, `private` or `locked`.
    pub fn as_str(self) -> &'static str {
        match self {
            Sharing::Shared => "shared",
            Sharing::Private => "private",
            Sharing::Locked => "locked",
        }
    }
}

/// `RUN --mount=type=cache`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheMount {
    /// Absolute, cleaned; relative targets are joined to the step's working directory.
    pub target: String,
    /// `id=`, or BuildKit's default: the cleaned target as written (before joining a relative
    /// one to the working directory).
    pub id: String,
    /// The `BUILDKIT_CACHE_MOUNT_NS` build arg (empty when unset).
    pub namespace: String,
    /// `sharing=` (default shared).
    pub sharing: Sharing,
    /// `from=`: the stage, image or named context whose `source` seeds an empty cache.
    /// `None` when absent: the cache starts empty (BuildKit's `scratch`).
    pub from: Option<CopyFrom>,
    /// Absolute, cleaned `source=` inside `from` (`/` when absent).
    pub source: String,
    /// `ro`/`readonly` was given.
    pub read_only: bool,
    /// `mode=` (octal) of the cache's root directory when created; BuildKit uses 0755 when
    /// `uid`/`gid` are given without it.
    pub mode: Option<u32>,
    /// `uid=` owning the cache's root directory when created.
    pub uid: Option<u32>,
    /// `gid=` owning the cache's root directory when created.
    pub gid: Option<u32>,
}

impl CacheMount {
    /// The id BuildKit's exec op carries: `<namespace>/<id>`.
    pub fn llb_id(&self) -> String {
        format!("{}/{}", self.namespace, self.id)
    }
}

/// `RUN --mount=type=tmpfs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TmpfsMount {
    /// Absolute, cleaned; relative targets are joined to the step's working directory.
    pub target: String,
    /// `size=` in bytes (`64m`, `1g`, ... as Docker's `RAMInBytes` reads them); `None` = no limit.
    pub size: Option<u64>,
}

/// `RUN --mount=type=secret`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretMount {
    /// The secret's id as `--secret id=...` names it: `id=` (or `source=`), else the base name
    /// of the target.
    pub id: String,
    /// Where the secret appears as a file. Defaults to `/run/secrets/<id>` unless `env=` is given
    /// without a target (then the secret is only an env variable). Kept as written, like
    /// BuildKit: a relative path is relative to `/`.
    pub target: Option<String>,
    /// `env=`: the env variable that holds the secret's value while the step runs.
    pub env: Option<String>,
    /// `required`: the build fails when the secret is not given (otherwise the step runs without it).
    pub required: bool,
    /// File mode (octal `mode=`, default 0400).
    pub mode: u32,
    /// File owner (`uid=`, default 0).
    pub uid: u32,
    /// File group (`gid=`, default 0).
    pub gid: u32,
}

/// `RUN --mount=type=ssh`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshMount {
    /// `id=` as written; `None` means the `default` agent (BuildKit's exec op then carries an
    /// empty id).
    pub id: Option<String>,
    /// Where the agent socket appears: `target=`, or `/run/buildkit/ssh_agent.<n>` where `n`
    /// counts the step's SSH mounts from 0.
    pub target: String,
    /// `required`: the build fails when the agent is not given.
    pub required: bool,
    /// Socket mode (octal `mode=`, default 0600).
    pub mode: u32,
    /// Socket owner (`uid=`, default 0).
    pub uid: u32,
    /// Socket group (`gid=`, default 0).
    pub gid: u32,
}

impl SshMount {
    /// The agent id the build's `--ssh` must provide: `id=`, or `default`.
    pub fn agent_id(&self) -> &str {
        self.id.as_deref().unwrap_or("default")
    }
}

/// `RUN --network=` (default `default`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Network {
    /// The builder's default network.
    #[default]
    Default,
    /// No network: a network namespace with only a loopback interface.
    None,
    /// The host's network.
    Host,
}

impl Network {
    /// Parses `default`, `none` or `host`.
    pub fn parse(value: &str) -> Result<Network, String> {
        match value {
            "default" => Ok(Network::Default),
            "none" => Ok(Network::None),
            "host" => Ok(Network::Host),
            other => Err(format!(
                "invalid network mode {other:?} (use default, none or host)"
            )),
        }
    }

    /// The Dockerfile spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Default => "default",
            Network::None => "none",
            Network::Host => "host",
        }
    }
}

/// `RUN --security=` (default `sandbox`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Security {
    /// The normal, confined sandbox.
    #[default]
    Sandbox,
    /// All capabilities; only allowed when the build is given `--allow security.insecure`.
    Insecure,
}

impl Security {
    /// Parses `sandbox` or `insecure`.
    pub fn parse(value: &str) -> Result<Security, String> {
        match value {
            "sandbox" => Ok(Security::Sandbox),
            "insecure" => Ok(Security::Insecure),
            other => Err(format!(
                "security {other:?} is not valid (use sandbox or insecure)"
            )),
        }
    }

    /// The Dockerfile spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Sandbox => "sandbox",
            Security::Insecure => "insecure",
        }
    }
}

/// The mount types, as BuildKit spells them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum MountType {
    #[default]
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl MountType {
    fn as_str(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }
}

/// A `--mount` value as BuildKit's `parseMount` reads it, before defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawMount {
    pub(crate) kind: MountType,
    pub(crate) from: String,
    pub(crate) source: String,
    pub(crate) target: String,
    pub(crate) read_only: bool,
    pub(crate) size: u64,
    pub(crate) id: String,
    pub(crate) sharing: Option<Sharing>,
    pub(crate) required: bool,
    pub(crate) env: Option<String>,
    pub(crate) mode: Option<u32>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
}

const ALL_KEYS: &str = "type, from, source (src), target (dst, destination), readonly (ro), readwrite (rw), id, sharing, required, size, mode, uid, gid, env";

/// Splits a CSV record like Go's `encoding/csv` (what BuildKit's `csvvalue.Fields` accepts).
fn csv_fields(value: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("extraneous or missing \" in quoted-field".into()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err("extraneous or missing \" in quoted-field".into()),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("bare \" in non-quoted-field".into()),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!(
            "invalid value for {key}: {value} (use true or false)"
        )),
    }
}

/// Docker's `units.RAMInBytes`: `64m`, `1.5g`, `512kib`, `100` (binary multiples).
pub(crate) fn ram_in_bytes(value: &str) -> Option<u64> {
    let lower = value.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let number: f64 = lower[..digits_end].parse().ok()?;
    if lower[..digits_end].starts_with('.') {
        return None;
    }
    let unit = lower[digits_end..].trim_start_matches(' ');
    let unit = unit.strip_suffix('b').unwrap_or(unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let multiplier: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return None,
    };
    let bytes = number * multiplier as f64;
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// Expands a word of a mount option with the step's variables.
pub(crate) type Expander<'a> = &'a dyn Fn(&str) -> Result<String, String>;

/// BuildKit's `parseMount`. Without `expand`, only checks `from` (it may not use variables) and
/// reads `type` and `from` unexpanded, as BuildKit does when it first parses the Dockerfile.
pub(crate) fn parse_mount(value: &str, expand: Option<Expander<'_>>) -> Result<RawMount, String> {
    let fields = csv_fields(value).map_err(|e| format!("failed to parse csv mounts: {e}"))?;
    let mut m = RawMount::default();
    // Set by readonly/readwrite; when never given, the mount type decides.
    let mut read_only = None;
    for field in fields {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.to_lowercase(), Some(v.to_string())),
            None => (field.to_lowercase(), None),
        };
        match value {
            None if expand.is_none() => {}
            None => m.set_bare_key(&key, &field, &mut read_only)?,
            Some(value) => {
                if let Some(value) = option_value(&key, value, expand)? {
                    m.set_key(&key, value, &field, &mut read_only)?;
                }
            }
        }
    }
    if expand.is_none() {
        return Ok(m);
    }
    m.check_options_fit_type()?;
    m.read_only = read_only.unwrap_or(!matches!(m.kind, MountType::Cache | MountType::Tmpfs));
    m.check_secret_and_sharing()?;
    Ok(m)
}

/// The value of `key=value` expanded, or without `expand` the raw value of `from` (checked to
/// use no variable) and `None` for every other key.
fn option_value(
    key: &str,
    value: String,
    expand: Option<Expander<'_>>,
) -> Result<Option<String>, String> {
    match expand {
        Some(expand) => expand(&value).map(Some),
        None if key == "from" => {
            if value.find('$').is_some_and(|i| i != value.len() - 1) {
                return Err(format!(
                    "'{key}' doesn't support variable expansion, define alias stage instead"
                ));
            }
            Ok(Some(value))
        }
        None => Ok(None),
    }
}

/// The choice named by `value`, case-insensitively.
fn choose<T: Copy>(value: &str, choices: &[(&str, T)]) -> Option<T> {
    let lower = value.to_lowercase();
    choices
        .iter()
        .find(|(name, _)| *name == lower)
        .map(|&(_, choice)| choice)
}

impl MountType {
    fn parse(value: &str) -> Result<MountType, String> {
        use MountType::*;
        let types = [
            ("bind", Bind),
            ("cache", Cache),
            ("tmpfs", Tmpfs),
            ("secret", Secret),
            ("ssh", Ssh),
        ];
        choose(value, &types).ok_or_else(|| {
            format!("unsupported mount type {value:?} (use bind, cache, tmpfs, secret or ssh)")
        })
    }
}

impl Sharing {
    fn parse(value: &str) -> Result<Sharing, String> {
        use Sharing::*;
        let modes = [("shared", Shared), ("private", Private), ("locked", Locked)];
        choose(value, &modes).ok_or_else(|| {
            format!("unsupported sharing value {value:?} (use shared, private or locked)")
        })
    }
}

impl RawMount {
    /// A key given without `=value`: only the booleans take that form.
    fn set_bare_key(
        &mut self,
        key: &str,
        field: &str,
        read_only: &mut Option<bool>,
    ) -> Result<(), String> {
        match key {
            "readonly" | "ro" => *read_only = Some(true),
            "readwrite" | "rw" => *read_only = Some(false),
            "required" => {
                self.require_kind(key, &[MountType::Secret, MountType::Ssh], "secret and ssh")?;
                self.required = true;
            }
            _ => return Err(format!("invalid field '{field}' must be a key=value pair")),
        }
        Ok(())
    }

    /// A `key=value` field, the value already expanded.
    fn set_key(
        &mut self,
        key: &str,
        value: String,
        field: &str,
        read_only: &mut Option<bool>,
    ) -> Result<(), String> {
        match key {
            "type" => self.kind = MountType::parse(&value)?,
            "from" => self.from = value,
            "source" | "src" => self.source = value,
            "target" | "dst" | "destination" => self.target = value,
            "readonly" | "ro" => *read_only = Some(parse_bool(key, &value)?),
            "readwrite" | "rw" => *read_only = Some(!parse_bool(key, &value)?),
            "required" => {
                self.require_kind(key, &[MountType::Secret, MountType::Ssh], "secret and ssh")?;
                self.required = parse_bool(key, &value)?;
            }
            "size" => {
                self.require_kind(key, &[MountType::Tmpfs], "tmpfs")?;
                self.size = ram_in_bytes(&value).ok_or_else(|| {
                    format!("invalid value for {key}: {value} (use bytes or a size like 64m)")
                })?;
            }
            "id" => self.id = value,
            "sharing" => self.sharing = Some(Sharing::parse(&value)?),
            "mode" => {
                self.mode = Some(u32::from_str_radix(&value, 8).map_err(|_| {
                    format!("invalid value {value} for mode (use octal, e.g. 0755)")
                })?)
            }
            "uid" => self.uid = Some(parse_id(key, &value)?),
            "gid" => self.gid = Some(parse_id(key, &value)?),
            "env" => self.env = Some(value),
            _ => {
                return Err(format!(
                    "unexpected key '{key}' in '{field}' (the keys are: {ALL_KEYS})"
                ));
            }
        }
        Ok(())
    }

    /// Fails unless the mount, as typed so far, is one of `kinds` (`which`, for the message).
    fn require_kind(&self, key: &str, kinds: &[MountType], which: &str) -> Result<(), String> {
        if kinds.contains(&self.kind) {
            return Ok(());
        }
        Err(format!(
            "unexpected key '{key}' for mount type '{}' (only {which} mounts take it)",
            self.kind.as_str()
        ))
    }

    /// `mode`, `uid` and `gid` are for secret, ssh and cache mounts only.
    fn check_options_fit_type(&self) -> Result<(), String> {
        if matches!(
            self.kind,
            MountType::Secret | MountType::Ssh | MountType::Cache
        ) {
            return Ok(());
        }
        for (name, set) in [
            ("mode", self.mode.is_some()),
            ("uid", self.uid.is_some()),
            ("gid", self.gid.is_some()),
        ] {
            if set {
                return Err(format!(
                    "{name} not allowed for \"{}\" type mounts",
                    self.kind.as_str()
                ));
            }
        }
        Ok(())
    }

    /// What a secret mount must and must not have; `sharing` is for cache mounts only.
    fn check_secret_and_sharing(&self) -> Result<(), String> {
        if self.kind == MountType::Secret {
            if !self.from.is_empty() {
                return Err("secret mount should not have a from".into());
            }
            if self.sharing.is_some() {
                return Err("secret mount should not define sharing".into());
            }
            if self.source.is_empty() && self.target.is_empty() && self.id.is_empty() {
                return Err("invalid secret mount: one of id, source or target is required".into());
            }
            if !self.source.is_empty() && !self.id.is_empty() {
                return Err("both source and id can't be set for a secret mount".into());
            }
        }
        if self.sharing.is_some() && self.kind != MountType::Cache {
            return Err(format!(
                "invalid cache sharing set for {} mount (only cache mounts take sharing)",
                self.kind.as_str()
            ));
        }
        Ok(())
    }
}

/// A numeric `uid` or `gid`.
fn parse_id(key: &str, value: &str) -> Result<u32, String> {
    value
        .parse()
        .map_err(|_| format!("invalid value {value} for {key} (use a number)"))
}

/// `path.Base` of Go.
fn base_name(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return if path.is_empty() {
            ".".into()
        } else {
            "/".into()
        };
    }
    trimmed.rsplit('/').next().unwrap_or(trimmed).to_string()
}

/// Turns a parsed mount into its typed form with BuildKit's defaults.
///
/// `from` is the resolved `from=` (`None` when absent), `workdir` the step's working directory,
/// `ssh_index` the number of SSH mounts before this one in the step.
pub(crate) fn resolve(
    m: RawMount,
    from: Option<CopyFrom>,
    workdir: &str,
    namespace: &str,
    ssh_index: usize,
) -> Result<Mount, String> {
    let absolute_target = || -> Result<String, String> {
        let target = if m.target.starts_with('/') {
            clean_path(&m.target)
        } else {
            clean_path(&format!("/{workdir}/{}", m.target))
        };
        if target == "/" {
            return Err(format!(
                "invalid mount target {:?}: give target=<path other than />",
                m.target
            ));
        }
        Ok(target)
    };
    let source = clean_path(&format!("/{}", m.source));
    Ok(match m.kind {
        MountType::Bind => Mount::Bind(BindMount {
            target: absolute_target()?,
            from: from.unwrap_or(CopyFrom::Context),
            source,
            read_only: m.read_only,
        }),
        MountType::Cache => Mount::Cache(CacheMount {
            target: absolute_target()?,
            id: if m.id.is_empty() {
                clean_path(&m.target)
            } else {
                m.id
            },
            namespace: namespace.to_string(),
            sharing: m.sharing.unwrap_or_default(),
            from,
            source,
            read_only: m.read_only,
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
        }),
        MountType::Tmpfs => Mount::Tmpfs(TmpfsMount {
            target: absolute_target()?,
            size: (m.size > 0).then_some(m.size),
        }),
        MountType::Secret => {
            let id = if !m.source.is_empty() {
                m.source
            } else if !m.id.is_empty() {
                m.id
            } else {
                base_name(&m.target)
            };
            let target = match (&m.env, m.target.is_empty()) {
                (_, false) => Some(m.target),
                (None, true) => Some(format!("/run/secrets/{}", base_name(&id))),
                (Some(_), true) => None,
            };
            Mount::Secret(SecretMount {
                id,
                target,
                env: m.env,
                required: m.required,
                mode: m.mode.unwrap_or(0o400),
                uid: m.uid.unwrap_or(0),
                gid: m.gid.unwrap_or(0),
            })
        }
        MountType::Ssh => {
            if !m.source.is_empty() {
                return Err("ssh does not support source".into());
            }
            Mount::Ssh(SshMount {
                id: (!m.id.is_empty()).then_some(m.id),
                target: if m.target.is_empty() {
                    format!("/run/buildkit/ssh_agent.{ssh_index}")
                } else {
                    m.target
                },
                required: m.required,
                mode: m.mode.unwrap_or(0o600),
                uid: m.uid.unwrap_or(0),
                gid: m.gid.unwrap_or(0),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(value: &str) -> Result<Mount, String> {
        let expand = |w: &str| -> Result<String, String> { Ok(w.replace("$V", "v")) };
        let raw = parse_mount(value, Some(&expand))?;
        resolve(raw, None, "/work", "", 0)
    }

    #[test]
    fn csv_fields_follow_go() {
        assert_eq!(
            csv_fields("a,\"b,c\",\"d\"\"e\"").expect("valid"),
            ["a", "b,c", "d\"e"]
        );
        assert_eq!(csv_fields("").expect("valid"), [""]);
        assert!(csv_fields("a\"b").is_err());
        assert!(csv_fields("\"ab").is_err());
    }

    #[test]
    fn defaults_follow_buildkit() {
        assert_eq!(
            typed("type=cache,target=.cache/go"),
            Ok(Mount::Cache(CacheMount {
                target: "/work/.cache/go".into(),
                id: ".cache/go".into(),
                namespace: String::new(),
                sharing: Sharing::Shared,
                from: None,
                source: "/".into(),
                read_only: false,
                mode: None,
                uid: None,
                gid: None,
            }))
        );
        assert_eq!(
            typed("target=/src,source=$V/x,rw"),
            Ok(Mount::Bind(BindMount {
                target: "/src".into(),
                from: CopyFrom::Context,
                source: "/v/x".into(),
                read_only: false,
            }))
        );
        assert_eq!(
            typed("type=tmpfs,dst=/t,size=64m"),
            Ok(Mount::Tmpfs(TmpfsMount {
                target: "/t".into(),
                size: Some(64 << 20),
            }))
        );
        assert_eq!(
            typed("type=secret,id=tok"),
            Ok(Mount::Secret(SecretMount {
                id: "tok".into(),
                target: Some("/run/secrets/tok".into()),
                env: None,
                required: false,
                mode: 0o400,
                uid: 0,
                gid: 0,
            }))
        );
        let Ok(Mount::Secret(env_only)) = typed("type=secret,id=tok,env=TOKEN,required") else {
            panic!("a secret mount");
        };
        assert_eq!(
            (env_only.target, env_only.env.as_deref(), env_only.required),
            (None, Some("TOKEN"), true)
        );
        let Ok(Mount::Secret(by_target)) = typed("type=secret,target=/root/.npmrc,mode=0444")
        else {
            panic!("a secret mount");
        };
        assert_eq!((by_target.id.as_str(), by_target.mode), (".npmrc", 0o444));
        let Ok(Mount::Ssh(ssh)) = typed("type=ssh") else {
            panic!("an ssh mount");
        };
        assert_eq!(
            (ssh.agent_id(), ssh.target.as_str(), ssh.mode),
            ("default", "/run/buildkit/ssh_agent.0", 0o600)
        );
    }

    #[test]
    fn bad_mounts_say_why() {
        for (value, expect) in [
            ("type=volume,target=/x", "unsupported mount type \"volume\""),
            ("type=cache,target=/x,colour=red", "unexpected key 'colour'"),
            (
                "type=cache,target=/x,sharing=sometimes",
                "unsupported sharing value",
            ),
            (
                "type=bind,target=/x,sharing=locked",
                "invalid cache sharing set for bind",
            ),
            ("type=bind,target=/x,uid=1", "uid not allowed for \"bind\""),
            ("type=cache,target=/x,required", "unexpected key 'required'"),
            ("type=cache,target=/x,size=1m", "unexpected key 'size'"),
            ("type=tmpfs,target=/x,size=lots", "invalid value for size"),
            (
                "type=cache,target=/x,mode=999",
                "invalid value 999 for mode",
            ),
            ("type=cache,target=/x,ro=maybe", "invalid value for ro"),
            ("type=cache,target=/", "invalid mount target"),
            ("type=cache,target", "must be a key=value pair"),
            ("type=secret,id=a,source=b", "both source and id"),
            ("type=secret", "one of id, source or target"),
            (
                "type=secret,id=a,from=x",
                "secret mount should not have a from",
            ),
            ("type=ssh,source=x", "ssh does not support source"),
            ("type=cache,\"target=/x", "failed to parse csv"),
        ] {
            let err = typed(value).expect_err(value);
            assert!(err.contains(expect), "{value}: {err}");
        }
    }

    #[test]
    fn first_pass_reads_only_type_and_from() {
        let raw = parse_mount("type=cache,from=base,target=$X,rw", None).expect("valid");
        assert_eq!(
            (raw.kind, raw.from.as_str(), raw.target.as_str()),
            (MountType::Bind, "base", "")
        );
        assert!(parse_mount("from=$STAGE", None).is_err());
        assert!(parse_mount("type=$T", None).is_ok());
    }

    #[test]
    fn sizes_read_like_docker() {
        for (value, bytes) in [
            ("100", Some(100)),
            ("64m", Some(64 << 20)),
            ("1.5g", Some(3 << 29)),
            ("512KiB", Some(512 << 10)),
            ("2 mb", Some(2 << 20)),
            ("x", None),
            ("", None),
        ] {
            assert_eq!(ram_in_bytes(value), bytes, "{value}");
        }
    }
}
