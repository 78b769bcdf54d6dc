//! BuildKit's ops (`solver/pb/ops.proto`) with the JSON form Go's `encoding/json` gives their
//! generated structs, and the cache map each op kind computes (`solver/llbsolver/ops`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cache_core::Digest;
use cache_core::config::to_go_json;
use cache_core::digest::sha256;
use serde::{Serialize, Serializer};

use crate::key::{self, CacheMap, ContentSelector, Dep};

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_zero_i64(value: &i64) -> bool {
    *value == 0
}

fn is_zero_i32(value: &i32) -> bool {
    *value == 0
}

fn is_zero_u32(value: &u32) -> bool {
    *value == 0
}

/// Go encodes `[]byte` as standard base64.
fn go_bytes<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&STANDARD.encode(bytes))
}

/// The platform an op runs for (`ocispecs.Platform` as BuildKit's cache maps write it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`.
    pub architecture: String,
    /// `v8`, …; empty when none.
    pub variant: String,
    /// Windows only; empty when none.
    pub os_version: String,
    /// Windows only.
    pub os_features: Vec<String>,
}

impl Platform {
    /// `linux/amd64`, the only platform buildcache builds for.
    pub fn linux_amd64() -> Platform {
        Platform {
            os: "linux".to_owned(),
            architecture: "amd64".to_owned(),
            variant: String::new(),
            os_version: String::new(),
            os_features: Vec::new(),
        }
    }
}

/// `pb.Meta`: what an exec runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Meta {
    /// argv.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// `KEY=VALUE`, in BuildKit's order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Working directory.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cwd: String,
    /// `USER` as written (`app`, `1000:1000`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// `--add-host` entries; their IPs are not part of the key.
    #[serde(rename = "extraHosts", skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<HostIp>,
    /// Hostname.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// Always true for Dockerfile RUN.
    #[serde(rename = "removeMountStubsRecursive", skip_serializing_if = "is_false")]
    pub remove_mount_stubs_recursive: bool,
    /// Exit codes counted as success (empty: only 0).
    #[serde(rename = "validExitCodes", skip_serializing_if = "Vec::is_empty")]
    pub valid_exit_codes: Vec<i32>,
}

/// `pb.HostIP`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostIp {
    /// Host name.
    #[serde(rename = "Host", skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// Address (cleared in the cache map).
    #[serde(rename = "IP", skip_serializing_if = "String::is_empty")]
    pub ip: String,
}

/// `pb.MountType`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MountType {
    /// A bind mount of an input (the root filesystem, `--mount=type=bind`).
    #[default]
    Bind = 0,
    /// `--mount=type=secret`.
    Secret = 1,
    /// `--mount=type=ssh`.
    Ssh = 2,
    /// `--mount=type=cache`.
    Cache = 3,
    /// `--mount=type=tmpfs`.
    Tmpfs = 4,
}

/// `pb.CacheOpt` of a cache mount.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CacheOpt {
    /// `id=` (default: the target path).
    #[serde(rename = "ID", skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// 0 shared, 1 private, 2 locked.
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub sharing: i32,
}

/// `pb.SecretOpt` / `pb.SSHOpt` (same fields).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SecretOpt {
    /// `id=`.
    #[serde(rename = "ID", skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Owner uid.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub uid: u32,
    /// Owner gid.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub gid: u32,
    /// File mode.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub mode: u32,
    /// `required=false`.
    #[serde(skip_serializing_if = "is_false")]
    pub optional: bool,
}

/// `pb.TmpfsOpt`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TmpfsOpt {
    /// Size limit in bytes.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub size: i64,
}

/// `pb.Mount`: one mount of an exec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// Input index, `-1` for none (scratch, cache, tmpfs, secret).
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub input: i64,
    /// Path inside the input (cleared in the cache map; it becomes the link's selector).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// Mount point.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dest: String,
    /// Output index, `-1` for none.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub output: i64,
    /// Read-only.
    #[serde(skip_serializing_if = "is_false")]
    pub readonly: bool,
    /// Mount type (an enum: written as its number).
    #[serde(
        rename = "mountType",
        serialize_with = "mount_type",
        skip_serializing_if = "is_bind"
    )]
    pub mount_type: MountType,
    /// Tmpfs options.
    #[serde(rename = "TmpfsOpt", skip_serializing_if = "Option::is_none")]
    pub tmpfs_opt: Option<TmpfsOpt>,
    /// Cache mount options.
    #[serde(rename = "cacheOpt", skip_serializing_if = "Option::is_none")]
    pub cache_opt: Option<CacheOpt>,
    /// Secret options.
    #[serde(rename = "secretOpt", skip_serializing_if = "Option::is_none")]
    pub secret_opt: Option<SecretOpt>,
    /// SSH options.
    #[serde(rename = "SSHOpt", skip_serializing_if = "Option::is_none")]
    pub ssh_opt: Option<SecretOpt>,
    /// Result id (gateway only).
    #[serde(rename = "resultID", skip_serializing_if = "String::is_empty")]
    pub result_id: String,
    /// 0 default, 1 on, 2 off.
    #[serde(rename = "contentCache", skip_serializing_if = "is_zero_i32")]
    pub content_cache: i32,
}

fn is_bind(value: &MountType) -> bool {
    *value == MountType::Bind
}

fn mount_type<S: Serializer>(value: &MountType, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_i32(*value as i32)
}

impl Mount {
    /// The root filesystem mount of a Dockerfile RUN: input 0 at `/`, output 0.
    pub fn root() -> Mount {
        Mount {
            dest: "/".to_owned(),
            ..Mount::default()
        }
    }
}

/// `pb.ExecOp`: a RUN.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExecOp {
    /// What runs.
    pub meta: Meta,
    /// Mounts, the root first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// 0 sandbox, 1 host, 2 none.
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub network: i32,
    /// 0 sandbox, 1 insecure.
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub security: i32,
    /// Secrets given as environment variables (`--mount=type=secret,env=…`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secretenv: Vec<SecretEnv>,
}

/// `pb.SecretEnv`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SecretEnv {
    /// The secret's id.
    #[serde(rename = "ID", skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The variable.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Not `required`.
    #[serde(skip_serializing_if = "is_false")]
    pub optional: bool,
}

/// BuildKit's `checkShouldClearCacheOpts`: a cache mount's id and sharing are left out of the
/// key unless they are the Dockerfile defaults (id = target path, optionally namespaced).
fn should_clear_cache_opts(mount: &Mount) -> bool {
    let Some(opt) = &mount.cache_opt else {
        return false;
    };
    if opt.sharing != 0 {
        return true;
    }
    if opt.id == mount.dest {
        return false;
    }
    !matches!(opt.id.split_once('/'), Some((_, rest)) if rest == mount.dest)
}

impl ExecOp {
    /// The cache map (`ExecOp.CacheMap`): the op with extra-host IPs, mount selectors and
    /// non-default cache ids cleared, the lone root mount dropped, then
    /// `{"Type":"buildkit.exec.v0","Exec":…,"OS":…,"Arch":…}`; per input, the selector
    /// `sha256(join(mount paths, "\0"))` and, for read-only or output-less mounts other than
    /// the root, a content key over those paths.
    pub fn cache_map(&self, platform: &Platform, num_inputs: usize) -> CacheMap {
        let mut op = self.clone();
        for host in &mut op.meta.extra_hosts {
            host.ip.clear();
        }
        for mount in &mut op.mounts {
            mount.selector.clear();
            if should_clear_cache_opts(mount)
                && let Some(opt) = &mut mount.cache_opt
            {
                opt.id.clear();
                opt.sharing = 0;
            }
        }
        if let [only] = op.mounts.as_slice()
            && only.dest == "/"
            && !only.readonly
            && only.mount_type == MountType::Bind
            && only.cache_opt.is_none()
            && only.ssh_opt.is_none()
            && only.secret_opt.is_none()
            && only.result_id.is_empty()
        {
            op.mounts.clear();
        }
        #[derive(Serialize)]
        struct Map<'a> {
            #[serde(rename = "Type")]
            kind: &'a str,
            #[serde(rename = "Exec")]
            exec: &'a ExecOp,
            #[serde(rename = "OS")]
            os: &'a str,
            #[serde(rename = "Arch")]
            arch: &'a str,
            #[serde(rename = "Variant", skip_serializing_if = "str::is_empty")]
            variant: &'a str,
            #[serde(rename = "OSVersion", skip_serializing_if = "str::is_empty")]
            os_version: &'a str,
            #[serde(rename = "OSFeatures", skip_serializing_if = "<[String]>::is_empty")]
            os_features: &'a [String],
        }
        let json = to_go_json(&Map {
            kind: "buildkit.exec.v0",
            exec: &op,
            os: &platform.os,
            arch: &platform.architecture,
            variant: &platform.variant,
            os_version: &platform.os_version,
            os_features: &platform.os_features,
        });
        CacheMap {
            digest: sha256(&json),
            json,
            deps: self.mount_deps(num_inputs),
        }
    }

    /// `getMountDeps` and the selectors derived from it.
    fn mount_deps(&self, num_inputs: usize) -> Vec<Dep> {
        let mut paths: Vec<Vec<String>> = vec![Vec::new(); num_inputs];
        let mut content: Vec<bool> = vec![false; num_inputs];
        for mount in &self.mounts {
            if matches!(
                mount.mount_type,
                MountType::Secret | MountType::Ssh | MountType::Tmpfs
            ) || mount.input < 0
            {
                continue;
            }
            let Some(slot) = paths.get_mut(mount.input as usize) else {
                continue;
            };
            let sel = clean_abs(&mount.selector);
            let mut content_based = mount.output == -1 || mount.readonly || sel == "/";
            match mount.content_cache {
                2 => content_based = false,
                1 => {}
                _ if mount.dest == "/" => content_based = false,
                _ => {}
            }
            slot.push(sel);
            content[mount.input as usize] = content_based;
        }
        paths
            .into_iter()
            .zip(content)
            .map(|(paths, content_based)| Dep {
                selector: (!paths.is_empty()).then(|| key::exec_selector(&paths)),
                content: content_based.then(|| {
                    let deduped = key::dedupe_paths(&paths);
                    if deduped.iter().any(|p| p.is_empty() || p == "/") {
                        // No selectors: BuildKit checksums the whole input, links not followed.
                        vec![ContentSelector {
                            path: "/".to_owned(),
                            ..ContentSelector::default()
                        }]
                    } else {
                        deduped
                            .into_iter()
                            .map(|path| ContentSelector {
                                path,
                                follow_links: true,
                                ..ContentSelector::default()
                            })
                            .collect()
                    }
                }),
            })
            .collect()
    }
}

/// Go's `path.Join("/", p)`: absolute, cleaned.
pub(crate) fn clean_abs(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for comp in p.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Go's `path.Base`.
pub(crate) fn go_base(p: &str) -> String {
    if p.is_empty() {
        return ".".to_owned();
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/".to_owned();
    }
    trimmed.rsplit('/').next().unwrap_or(trimmed).to_owned()
}

/// `pb.UserOpt`: a user by name (looked up in an input's `/etc/passwd`) or by id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserOpt {
    /// By name, resolved in input `input`'s `/etc/passwd` or `/etc/group`.
    ByName {
        /// The name.
        name: String,
        /// Input index holding the passwd/group file.
        input: i64,
    },
    /// By numeric id.
    ById(u32),
}

impl Serialize for UserOpt {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // `solver/pb/json.go` gives UserOpt its own MarshalJSON:
        // `{"User":{"byName":{…},"byId":n}}`, both omitempty (so uid 0 is `{"User":{}}`).
        #[derive(Serialize)]
        struct Named<'a> {
            #[serde(skip_serializing_if = "str::is_empty")]
            name: &'a str,
            #[serde(skip_serializing_if = "is_zero_i64")]
            input: &'a i64,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            #[serde(rename = "byName", skip_serializing_if = "Option::is_none")]
            by_name: Option<Named<'a>>,
            #[serde(rename = "byId", skip_serializing_if = "is_zero_u32")]
            by_id: u32,
        }
        #[derive(Serialize)]
        struct Wrapper<'a> {
            #[serde(rename = "User")]
            user: Inner<'a>,
        }
        let user = match self {
            UserOpt::ByName { name, input } => Inner {
                by_name: Some(Named { name, input }),
                by_id: 0,
            },
            UserOpt::ById(id) => Inner {
                by_name: None,
                by_id: *id,
            },
        };
        Wrapper { user }.serialize(serializer)
    }
}

/// `pb.ChownOpt`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChownOpt {
    /// Owner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<UserOpt>,
    /// Group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<UserOpt>,
}

/// `pb.FileActionCopy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Copy {
    /// Source path in the secondary input.
    pub src: String,
    /// Destination path.
    pub dest: String,
    /// `--chown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<ChownOpt>,
    /// `--chmod` as a number, `-1` when unset.
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub mode: i32,
    /// Follow a symlink named by `src`.
    #[serde(rename = "followSymlink", skip_serializing_if = "is_false")]
    pub follow_symlink: bool,
    /// Copy a directory's contents, not the directory.
    #[serde(rename = "dirCopyContents", skip_serializing_if = "is_false")]
    pub dir_copy_contents: bool,
    /// ADD: unpack local archives.
    #[serde(
        rename = "attemptUnpackDockerCompatibility",
        skip_serializing_if = "is_false"
    )]
    pub attempt_unpack_docker_compatibility: bool,
    /// Create missing parents of `dest`.
    #[serde(rename = "createDestPath", skip_serializing_if = "is_false")]
    pub create_dest_path: bool,
    /// `src` may be a pattern.
    #[serde(rename = "allowWildcard", skip_serializing_if = "is_false")]
    pub allow_wildcard: bool,
    /// A pattern matching nothing is not an error.
    #[serde(rename = "allowEmptyWildcard", skip_serializing_if = "is_false")]
    pub allow_empty_wildcard: bool,
    /// Fixed timestamp, `-1` for none.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub timestamp: i64,
    /// Include patterns.
    #[serde(rename = "include_patterns", skip_serializing_if = "Vec::is_empty")]
    pub include_patterns: Vec<String>,
    /// `--exclude` patterns.
    #[serde(rename = "exclude_patterns", skip_serializing_if = "Vec::is_empty")]
    pub exclude_patterns: Vec<String>,
    /// Replace existing destination paths.
    #[serde(
        rename = "alwaysReplaceExistingDestPaths",
        skip_serializing_if = "is_false"
    )]
    pub always_replace_existing_dest_paths: bool,
    /// `--chmod` in symbolic form.
    #[serde(rename = "modeStr", skip_serializing_if = "String::is_empty")]
    pub mode_str: String,
    /// Paths that must exist.
    #[serde(rename = "required_paths", skip_serializing_if = "Vec::is_empty")]
    pub required_paths: Vec<String>,
}

impl Copy {
    /// The copy action the Dockerfile frontend makes for `COPY src dest` without flags.
    pub fn dockerfile(src: &str, dest: &str) -> Copy {
        Copy {
            src: src.to_owned(),
            dest: dest.to_owned(),
            owner: None,
            mode: -1,
            follow_symlink: true,
            dir_copy_contents: true,
            attempt_unpack_docker_compatibility: false,
            create_dest_path: true,
            allow_wildcard: true,
            allow_empty_wildcard: true,
            timestamp: -1,
            include_patterns: Vec::new(),
            exclude_patterns: Vec::new(),
            always_replace_existing_dest_paths: false,
            mode_str: String::new(),
            required_paths: Vec::new(),
        }
    }
}

/// `pb.FileActionMkDir`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mkdir {
    /// Path.
    pub path: String,
    /// Mode (`0o755` for WORKDIR).
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub mode: i32,
    /// `mkdir -p`.
    #[serde(rename = "makeParents", skip_serializing_if = "is_false")]
    pub make_parents: bool,
    /// Owner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<ChownOpt>,
    /// Fixed timestamp, `-1` for none.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub timestamp: i64,
}

/// `pb.FileActionMkFile`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mkfile {
    /// Path.
    pub path: String,
    /// Mode.
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub mode: i32,
    /// Content (base64 in JSON, as Go writes `[]byte`).
    #[serde(serialize_with = "go_bytes", skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<u8>,
    /// Owner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<ChownOpt>,
    /// Fixed timestamp, `-1` for none.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub timestamp: i64,
}

/// `pb.FileActionRm`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rm {
    /// Path.
    pub path: String,
    /// No error when missing.
    #[serde(rename = "allowNotFound", skip_serializing_if = "is_false")]
    pub allow_not_found: bool,
    /// `path` may be a pattern.
    #[serde(rename = "allowWildcard", skip_serializing_if = "is_false")]
    pub allow_wildcard: bool,
}

/// One action of a file op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Copy from the secondary input.
    Copy(Copy),
    /// Make a directory.
    Mkdir(Mkdir),
    /// Make a file.
    Mkfile(Mkfile),
    /// Remove.
    Rm(Rm),
}

/// `pb.FileAction`: an action with its input indexes. Indexes below the op's input count name
/// inputs, above it earlier actions' results; `-1` is none (scratch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileAction {
    /// The filesystem acted on.
    pub input: i64,
    /// Where a copy reads from.
    pub secondary_input: i64,
    /// Output index, `-1` when the result is only used by a later action.
    pub output: i64,
    /// What to do.
    pub action: Action,
}

/// `pb.FileOp`: COPY, ADD, WORKDIR's mkdir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOp {
    /// Actions in order.
    pub actions: Vec<FileAction>,
}

impl FileOp {
    /// The cache map (`fileOp.CacheMap`): each action's JSON (a copy's `src` reduced to its base
    /// name when it reads an input), base64 in `{"Type":"buildkit.file.v0","Actions":[…]}` with
    /// `"indexes"` unless they are the common chain; per input, the selector over its copy
    /// sources (and `/etc/passwd`, `/etc/group` for owners by name) and a content key, except
    /// for inputs that an action writes to.
    pub fn cache_map(&self, num_inputs: usize) -> CacheMap {
        let mut selectors: Vec<Vec<ContentSelector>> = vec![Vec::new(); num_inputs];
        let mut written = vec![false; num_inputs];
        let mut actions: Vec<String> = Vec::with_capacity(self.actions.len());
        let mut indexes: Vec<[i64; 3]> = Vec::with_capacity(self.actions.len());
        for action in &self.actions {
            if let Some(w) = usize::try_from(action.input)
                .ok()
                .and_then(|i| written.get_mut(i))
            {
                *w = true;
            }
            let json = match &action.action {
                Action::Mkdir(m) => {
                    add_owner_selectors(&mut selectors, &m.owner);
                    to_go_json(m)
                }
                Action::Mkfile(m) => {
                    add_owner_selectors(&mut selectors, &m.owner);
                    to_go_json(m)
                }
                Action::Rm(r) => to_go_json(r),
                Action::Copy(c) => {
                    add_owner_selectors(&mut selectors, &c.owner);
                    let mut c = c.clone();
                    if action.secondary_input != -1
                        && (action.secondary_input as usize) < num_inputs
                    {
                        add_selector(
                            &mut selectors,
                            action.secondary_input,
                            ContentSelector {
                                path: c.src.clone(),
                                wildcard: c.allow_wildcard && contains_wildcards(&c.src),
                                follow_links: c.follow_symlink,
                                include_patterns: c.include_patterns.clone(),
                                exclude_patterns: c.exclude_patterns.clone(),
                            },
                        );
                        c.src = go_base(&c.src);
                    }
                    to_go_json(&c)
                }
            };
            actions.push(STANDARD.encode(json));
            indexes.push([action.input, action.secondary_input, action.output]);
        }
        #[derive(Serialize)]
        struct Map<'a> {
            #[serde(rename = "Type")]
            kind: &'a str,
            #[serde(rename = "Actions")]
            actions: &'a [String],
            #[serde(skip_serializing_if = "Option::is_none")]
            indexes: Option<&'a [[i64; 3]]>,
        }
        let json = to_go_json(&Map {
            kind: "buildkit.file.v0",
            actions: &actions,
            indexes: (!is_default_indexes(&indexes)).then_some(indexes.as_slice()),
        });
        let deps = selectors
            .into_iter()
            .zip(written)
            .map(|(sels, written)| {
                if written || sels.is_empty() {
                    return Dep::default();
                }
                let paths: Vec<String> = sels.iter().map(|s| s.path.clone()).collect();
                Dep {
                    selector: Some(key::file_selector(&paths)),
                    content: Some(key::dedupe_selectors(&sels)),
                }
            })
            .collect();
        CacheMap {
            digest: sha256(&json),
            json,
            deps,
        }
    }
}

/// Appends `sel` to the selectors of input `idx` (when it names an input).
fn add_selector(selectors: &mut [Vec<ContentSelector>], idx: i64, sel: ContentSelector) {
    if let Some(list) = usize::try_from(idx).ok().and_then(|i| selectors.get_mut(i)) {
        list.push(sel);
    }
}

/// `processOwner`: an owner given by name reads `/etc/passwd` or `/etc/group` of an input.
fn add_owner_selectors(selectors: &mut [Vec<ContentSelector>], owner: &Option<ChownOpt>) {
    let Some(owner) = owner else { return };
    for (user, file) in [(&owner.user, "/etc/passwd"), (&owner.group, "/etc/group")] {
        if let Some(UserOpt::ByName { input, .. }) = user {
            add_selector(
                selectors,
                *input,
                ContentSelector {
                    path: file.to_owned(),
                    follow_links: true,
                    ..ContentSelector::default()
                },
            );
        }
    }
}

/// `pb.MergeOp`: `COPY --link` layers merged onto the stage (`llb.Merge`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeOp {
    /// The input index of each layer, bottom first.
    pub inputs: Vec<i64>,
}

impl MergeOp {
    /// The cache map: `{"Type":"buildkit.merge.v0","Merge":{"inputs":[{"input":i},…]}}`
    /// (input 0 written as `{}`), no selectors, no content keys.
    pub fn cache_map(&self) -> CacheMap {
        #[derive(Serialize)]
        struct Input {
            #[serde(skip_serializing_if = "is_zero_i64")]
            input: i64,
        }
        #[derive(Serialize)]
        struct Merge {
            #[serde(skip_serializing_if = "Vec::is_empty")]
            inputs: Vec<Input>,
        }
        #[derive(Serialize)]
        struct Map<'a> {
            #[serde(rename = "Type")]
            kind: &'a str,
            #[serde(rename = "Merge")]
            merge: Merge,
        }
        let json = to_go_json(&Map {
            kind: "buildkit.merge.v0",
            merge: Merge {
                inputs: self.inputs.iter().map(|&input| Input { input }).collect(),
            },
        });
        CacheMap {
            digest: sha256(&json),
            json,
            deps: vec![Dep::default(); self.inputs.len()],
        }
    }
}

/// BuildKit's `containsWildcards` on Linux: `*`, `?` or `[` not escaped by `\`.
pub(crate) fn contains_wildcards(name: &str) -> bool {
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// `isDefaultIndexes`: the first action reads input 0, each later one the previous action, the
/// secondary input is 1 or none, and only the last action has an output (0). Such ops keep
/// the older checksum without `"indexes"`.
fn is_default_indexes(indexes: &[[i64; 3]]) -> bool {
    if indexes.is_empty() {
        return false;
    }
    let n = indexes.len() as i64;
    indexes.iter().enumerate().all(|(i, idx)| {
        let i = i as i64;
        let input_ok = if i == 0 {
            idx[0] == 0
        } else {
            idx[0] == n + i - 1
        };
        let secondary_ok = idx[1] == -1 || idx[1] == 1;
        let output_ok = if i == n - 1 {
            idx[2] == 0
        } else {
            idx[2] == -1
        };
        input_ok && secondary_ok && output_ok
    })
}

/// The two root records an image source gives (`source/containerimage`): by manifest
/// (`{"Digest":…,"OS":…,"Arch":…}`) and by the chain ID of the config's `rootfs.diff_ids`.
/// The step after `FROM` links to both.
pub fn image_records(manifest: &Digest, diff_ids: &[Digest], platform: &Platform) -> [Digest; 2] {
    #[derive(Serialize)]
    struct ManifestKey<'a> {
        #[serde(rename = "Digest")]
        digest: &'a str,
        #[serde(rename = "OS")]
        os: &'a str,
        #[serde(rename = "Arch")]
        arch: &'a str,
        #[serde(rename = "Variant", skip_serializing_if = "str::is_empty")]
        variant: &'a str,
        #[serde(rename = "OSVersion", skip_serializing_if = "str::is_empty")]
        os_version: &'a str,
        #[serde(rename = "OSFeatures", skip_serializing_if = "<[String]>::is_empty")]
        os_features: &'a [String],
    }
    let by_manifest = sha256(&to_go_json(&ManifestKey {
        digest: manifest.as_ref(),
        os: &platform.os,
        arch: &platform.architecture,
        variant: &platform.variant,
        os_version: &platform.os_version,
        os_features: &platform.os_features,
    }));
    [
        source_record(by_manifest.as_ref()),
        source_record(chain_id(diff_ids).as_ref().map_or("", |d| d.as_ref())),
    ]
}

/// The record of a source op with cache key `key`: map `sha256("buildkit.source.v0:" + key)`,
/// output 0.
pub fn source_record(key: &str) -> Digest {
    key::record_digest(&sha256(format!("buildkit.source.v0:{key}").as_bytes()), 0)
}

/// The OCI chain ID of a layer stack (`chain(n) = sha256(chain(n-1) + " " + diff_id(n))`).
pub fn chain_id(diff_ids: &[Digest]) -> Option<Digest> {
    let mut iter = diff_ids.iter();
    let mut chain = iter.next()?.clone();
    for diff in iter {
        chain = sha256(format!("{chain} {diff}").as_bytes());
    }
    Some(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_path_helpers() {
        assert_eq!(go_base("/src"), "src");
        assert_eq!(go_base("/out/"), "out");
        assert_eq!(go_base("/"), "/");
        assert_eq!(clean_abs(""), "/");
        assert_eq!(clean_abs("a/../b/"), "/b");
        assert!(contains_wildcards("/a/*.txt"));
        assert!(!contains_wildcards("/a/\\*.txt"));
    }

    #[test]
    fn cache_opts_cleared_unless_dockerfile_defaults() {
        let mut m = Mount {
            dest: "/root/.cache".to_owned(),
            mount_type: MountType::Cache,
            cache_opt: Some(CacheOpt {
                id: "/root/.cache".to_owned(),
                sharing: 0,
            }),
            ..Mount::default()
        };
        assert!(!should_clear_cache_opts(&m));
        m.cache_opt.as_mut().unwrap().id = "ns//root/.cache".to_owned();
        assert!(!should_clear_cache_opts(&m));
        m.cache_opt.as_mut().unwrap().id = "ns/root/.cache".to_owned();
        assert!(should_clear_cache_opts(&m));
        m.cache_opt.as_mut().unwrap().id = "mine".to_owned();
        assert!(should_clear_cache_opts(&m));
    }

    #[test]
    fn user_opt_json() {
        let owner = ChownOpt {
            user: Some(UserOpt::ById(1000)),
            group: Some(UserOpt::ByName {
                name: "staff".to_owned(),
                input: 0,
            }),
        };
        assert_eq!(
            String::from_utf8(to_go_json(&owner)).unwrap(),
            r#"{"user":{"User":{"byId":1000}},"group":{"User":{"byName":{"name":"staff"}}}}"#
        );
    }
}
