//! Reading the ops `buildctl debug dump-llb` prints (one JSON object a line, protobuf field
//! names), so that what BuildKit's frontend made of a Dockerfile can be compared with the
//! ops a caller derives, key for key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::key::CacheMap;
use crate::op::{
    Action, CacheOpt, ChownOpt, Copy, ExecOp, FileAction, FileOp, HostIp, MergeOp, Meta, Mkdir,
    Mkfile, Mount, MountType, Platform, Rm, SecretEnv, SecretOpt, TmpfsOpt, UserOpt,
};

/// An op of the dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DumpedOp {
    /// RUN.
    Exec(Box<ExecOp>),
    /// COPY, ADD, WORKDIR.
    File(FileOp),
    /// `COPY --link`.
    Merge(MergeOp),
    /// A source (`docker-image://…`, `local://context`, …) by identifier.
    Source(String),
    /// The final op naming the result (no op body).
    Terminal,
}

impl DumpedOp {
    /// The cache map of an exec, file or merge op with `num_inputs` inputs; `None` for
    /// sources (their keys need the resolved image) and the terminal op.
    pub fn cache_map(&self, num_inputs: usize) -> Option<CacheMap> {
        match self {
            DumpedOp::Exec(op) => Some(op.cache_map(&Platform::linux_amd64(), num_inputs)),
            DumpedOp::File(op) => Some(op.cache_map(num_inputs)),
            DumpedOp::Merge(op) => Some(op.cache_map()),
            DumpedOp::Source(_) | DumpedOp::Terminal => None,
        }
    }
}

/// One line of the dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpLine {
    /// The op's digest (as printed).
    pub digest: String,
    /// Digests of its inputs.
    pub inputs: Vec<String>,
    /// The op.
    pub op: DumpedOp,
    /// `llb.customname` (`[stage 2/3] RUN …`), if any.
    pub name: Option<String>,
}

/// Parses one line of `buildctl debug dump-llb` output.
pub fn parse_line(line: &str) -> Result<DumpLine, String> {
    let v: Value = serde_json::from_str(line).map_err(|err| format!("not JSON: {err}"))?;
    let inputs = v["Op"]["inputs"]
        .as_array()
        .map(|a| a.iter().map(|i| str_of(&i["digest"])).collect())
        .unwrap_or_default();
    let body = &v["Op"]["Op"];
    let op = match body.as_object().and_then(|o| o.iter().next()) {
        None => DumpedOp::Terminal,
        Some((kind, op)) => match kind.as_str() {
            "exec" => DumpedOp::Exec(Box::new(exec(op))),
            "file" => DumpedOp::File(FileOp {
                actions: array(&op["actions"])
                    .iter()
                    .map(file_action)
                    .collect::<Result<_, _>>()?,
            }),
            "merge" => DumpedOp::Merge(MergeOp {
                inputs: array(&op["inputs"])
                    .iter()
                    .map(|m| int(m, "input"))
                    .collect(),
            }),
            "source" => DumpedOp::Source(str_of(&op["identifier"])),
            other => return Err(format!("op kind {other} is not modelled")),
        },
    };
    Ok(DumpLine {
        digest: str_of(&v["Digest"]),
        inputs,
        op,
        name: v["OpMetadata"]["description"]["llb.customname"]
            .as_str()
            .map(str::to_owned),
    })
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn strings(v: &Value) -> Vec<String> {
    array(v).iter().map(str_of).collect()
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn flag(v: &Value, k: &str) -> bool {
    v[k].as_bool().unwrap_or(false)
}

fn int(v: &Value, k: &str) -> i64 {
    v[k].as_i64().unwrap_or(0)
}

fn exec(op: &Value) -> ExecOp {
    let meta = &op["meta"];
    ExecOp {
        meta: Meta {
            args: strings(&meta["args"]),
            env: strings(&meta["env"]),
            cwd: str_of(&meta["cwd"]),
            user: str_of(&meta["user"]),
            extra_hosts: array(&meta["extraHosts"])
                .iter()
                .map(|h| HostIp {
                    host: str_of(&h["Host"]),
                    ip: str_of(&h["IP"]),
                })
                .collect(),
            hostname: str_of(&meta["hostname"]),
            remove_mount_stubs_recursive: flag(meta, "removeMountStubsRecursive"),
            valid_exit_codes: array(&meta["validExitCodes"])
                .iter()
                .filter_map(|c| c.as_i64().map(|c| c as i32))
                .collect(),
        },
        mounts: array(&op["mounts"]).iter().map(mount).collect(),
        network: enum_value(&op["network"], &["UNSET", "HOST", "NONE"]),
        security: enum_value(&op["security"], &["SANDBOX", "INSECURE"]),
        secretenv: array(&op["secretenv"])
            .iter()
            .map(|e| SecretEnv {
                id: str_of(&e["ID"]),
                name: str_of(&e["name"]),
                optional: flag(e, "optional"),
            })
            .collect(),
    }
}

/// A protobuf enum printed as its number or its name.
fn enum_value(v: &Value, names: &[&str]) -> i32 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0) as i32,
        Value::String(s) => names.iter().position(|n| n == s).unwrap_or(0) as i32,
        _ => 0,
    }
}

fn mount(m: &Value) -> Mount {
    let mount_type = match enum_value(
        &m["mountType"],
        &["BIND", "SECRET", "SSH", "CACHE", "TMPFS"],
    ) {
        1 => MountType::Secret,
        2 => MountType::Ssh,
        3 => MountType::Cache,
        4 => MountType::Tmpfs,
        _ => MountType::Bind,
    };
    let secret = |o: &Value| SecretOpt {
        id: str_of(&o["ID"]),
        uid: int(o, "uid") as u32,
        gid: int(o, "gid") as u32,
        mode: int(o, "mode") as u32,
        optional: flag(o, "optional"),
    };
    Mount {
        input: int(m, "input"),
        selector: str_of(&m["selector"]),
        dest: str_of(&m["dest"]),
        output: int(m, "output"),
        readonly: flag(m, "readonly"),
        mount_type,
        tmpfs_opt: m.get("TmpfsOpt").map(|o| TmpfsOpt {
            size: int(o, "size"),
        }),
        cache_opt: m.get("cacheOpt").map(|o| CacheOpt {
            id: str_of(&o["ID"]),
            sharing: enum_value(&o["sharing"], &["SHARED", "PRIVATE", "LOCKED"]),
        }),
        secret_opt: m.get("secretOpt").map(secret),
        ssh_opt: m.get("SSHOpt").map(secret),
        result_id: str_of(&m["resultID"]),
        content_cache: enum_value(&m["contentCache"], &["DEFAULT", "ON", "OFF"]),
    }
}

fn user_opt(v: &Value) -> Option<UserOpt> {
    let user = v.get("User")?;
    if let Some(named) = user.get("byName") {
        return Some(UserOpt::ByName {
            name: str_of(&named["name"]),
            input: int(named, "input"),
        });
    }
    Some(UserOpt::ById(user["byId"].as_u64().unwrap_or(0) as u32))
}

fn owner(v: &Value) -> Option<ChownOpt> {
    let o = v.get("owner")?;
    Some(ChownOpt {
        user: o.get("user").and_then(user_opt),
        group: o.get("group").and_then(user_opt),
    })
}

fn file_action(a: &Value) -> Result<FileAction, String> {
    let (kind, act) = a["Action"]
        .as_object()
        .and_then(|o| o.iter().next())
        .ok_or("a file action without a body")?;
    let action = match kind.as_str() {
        "copy" => Action::Copy(Copy {
            src: str_of(&act["src"]),
            dest: str_of(&act["dest"]),
            owner: owner(act),
            mode: int(act, "mode") as i32,
            follow_symlink: flag(act, "followSymlink"),
            dir_copy_contents: flag(act, "dirCopyContents"),
            attempt_unpack_docker_compatibility: flag(act, "attemptUnpackDockerCompatibility"),
            create_dest_path: flag(act, "createDestPath"),
            allow_wildcard: flag(act, "allowWildcard"),
            allow_empty_wildcard: flag(act, "allowEmptyWildcard"),
            timestamp: int(act, "timestamp"),
            include_patterns: strings(&act["include_patterns"]),
            exclude_patterns: strings(&act["exclude_patterns"]),
            always_replace_existing_dest_paths: flag(act, "alwaysReplaceExistingDestPaths"),
            mode_str: str_of(&act["modeStr"]),
            required_paths: strings(&act["required_paths"]),
        }),
        "mkdir" => Action::Mkdir(Mkdir {
            path: str_of(&act["path"]),
            mode: int(act, "mode") as i32,
            make_parents: flag(act, "makeParents"),
            owner: owner(act),
            timestamp: int(act, "timestamp"),
        }),
        "mkfile" => Action::Mkfile(Mkfile {
            path: str_of(&act["path"]),
            mode: int(act, "mode") as i32,
            data: STANDARD
                .decode(str_of(&act["data"]))
                .map_err(|err| format!("mkfile data is not base64: {err}"))?,
            owner: owner(act),
            timestamp: int(act, "timestamp"),
        }),
        "rm" => Action::Rm(Rm {
            path: str_of(&act["path"]),
            allow_not_found: flag(act, "allowNotFound"),
            allow_wildcard: flag(act, "allowWildcard"),
        }),
        other => return Err(format!("file action {other} is not modelled")),
    };
    Ok(FileAction {
        input: int(a, "input"),
        secondary_input: int(a, "secondaryInput"),
        output: int(a, "output"),
        action,
    })
}
