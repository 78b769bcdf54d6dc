//! The BuildKit op of each planned step (what BuildKit's Dockerfile frontend makes of it), so
//! that `cache_llb` computes BuildKit's own keys for it; and the content trees content keys are
//! computed over.

use cache_core::Digest;
use cache_llb::contenthash::{self, Tree};
use cache_llb::{
    Action, CacheMap, CacheOpt, ChownOpt, ContentSelector, Copy, ExecOp, FileAction, FileOp,
    HostIp, Meta, Mkdir, Mkfile, Mount, MountType, Platform, SecretEnv, SecretOpt, TmpfsOpt,
    UserOpt,
};

use crate::context::{EntryKind, Selection};
use crate::dockerfile::{
    CacheMount, CopyFrom, CopyOp, CopySource, Heredoc, IgnoreMatcher, Mount as RunMount, Network,
    Op, ParentsSource, RunCommand, SecretMount, Security, Sharing, SshMount, Step,
};

pub use cache_llb::{content_record, record_digest};

/// Bumped when the meaning of buildcache's own keys changes (steps BuildKit keys differently
/// or not at all), so old caches stop matching instead of lying.
const OWN_KEY_VERSION: &str = "buildcache.own.v2";

/// The op of one step, with where its inputs come from.
#[derive(Clone, Debug)]
pub(super) struct StepOp {
    /// The cache map `cache_llb` computed for it.
    pub(super) map: CacheMap,
    /// Input index of the stage's own filesystem; `None` when it is scratch (the op then reads
    /// no filesystem of its own).
    pub(super) dest: Option<usize>,
    /// Input index of a COPY's source (context, stage or image).
    pub(super) src: Option<usize>,
    /// Whether the key is BuildKit's (false: a key of our own, for forms BuildKit builds with
    /// ops this crate does not model).
    pub(super) buildkit: bool,
    /// RUN `--mount=type=bind`: the other inputs the mounts read, by input index.
    pub(super) mount_inputs: Vec<MountInput>,
    /// `COPY <<EOF`: the mkfile ops the copy reads, by input index.
    pub(super) mkfiles: Vec<MkfileInput>,
    /// `COPY --link` on a filesystem: BuildKit's copy onto scratch (its only input is the
    /// source), whose result `map`, a merge op of the stage (input 0) and this copy (input 1),
    /// puts on top. On scratch the copy is the step's op itself and this is `None`.
    pub(super) linked_copy: Option<CacheMap>,
}

/// The op of `step`, or `None` when BuildKit makes no op of it (`WORKDIR /`).
///
/// `scratch` tells whether the stage's filesystem is still empty (no op before it);
/// `has_src` whether a COPY reads paths from a context, stage or image.
/// `add_hosts` are `--add-host` entries (names only enter the key); `mounts_key` describes
/// RUN `--mount`s (for a key of our own).
pub(super) fn step_op(
    step: &Step,
    scratch: bool,
    has_src: bool,
    add_hosts: &[(String, String)],
    mounts_key: &[u8],
) -> Option<StepOp> {
    match &step.op {
        Op::Run {
            command,
            heredocs,
            mounts,
            network,
            security,
        } => {
            let run = RunStep {
                command,
                heredocs,
                mounts,
                network,
                security,
            };
            Some(run_op(step, &run, scratch, add_hosts, mounts_key))
        }
        Op::Workdir { path } => workdir_op(step, path, scratch),
        Op::Copy(copy) => copy_op(step, copy, scratch, has_src, add_hosts, mounts_key),
    }
}

/// The fields of a RUN step.
struct RunStep<'a> {
    command: &'a RunCommand,
    heredocs: &'a [Heredoc],
    mounts: &'a [RunMount],
    network: &'a Network,
    security: &'a Security,
}

/// The exec op of a RUN step, or an op of our own when BuildKit's would read inputs this
/// crate does not model.
fn run_op(
    step: &Step,
    run: &RunStep<'_>,
    scratch: bool,
    add_hosts: &[(String, String)],
    mounts_key: &[u8],
) -> StepOp {
    let RunStep {
        command,
        heredocs,
        mounts,
        network,
        security,
    } = *run;
    let platform = Platform::linux_amd64();
    let base = if scratch { -1 } else { 0 };
    let shebang_heredoc = matches!(command, RunCommand::Shell(c) if c.starts_with("/dev/pipes/"))
        && !heredocs.is_empty();
    let args = super::execute::run_argv(step, command);
    let exec = ExecOp {
        meta: Meta {
            args,
            env: step.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: step.workdir.clone(),
            user: step.user.clone().unwrap_or_default(),
            remove_mount_stubs_recursive: true,
            extra_hosts: add_hosts
                .iter()
                .map(|(host, ip)| HostIp {
                    host: host.clone(),
                    ip: ip.clone(),
                })
                .collect(),
            ..Meta::default()
        },
        mounts: vec![Mount {
            input: base,
            ..Mount::root()
        }],
        // pb.NetMode: 0 sandbox, 1 host, 2 none; pb.SecurityMode: 0 sandbox, 1 insecure.
        network: match network {
            Network::Default => 0,
            Network::Host => 1,
            Network::None => 2,
        },
        security: match security {
            Security::Sandbox => 0,
            Security::Insecure => 1,
        },
        secretenv: Vec::new(),
    };
    let mut exec = exec;
    let pipe = shebang_heredoc.then(|| &heredocs[0]);
    let mount_inputs = add_mounts(&mut exec, mounts, scratch, pipe);
    let n_inputs = usize::from(!scratch)
        + mount_inputs
            .as_ref()
            .map_or(0, |(inputs, mkdirs)| inputs.len() + mkdirs.len());
    if mount_inputs.is_none() || heredocs.len() > 1 && shebang_heredoc {
        // A `#!` heredoc, bind mounts and seeded cache mounts read other inputs.
        let bodies: Vec<String> = heredocs
            .iter()
            .map(|h| format!("{}\0{}", h.name, h.content))
            .collect();
        let definition = [
            exec.cache_map(&platform, n_inputs).json.as_slice(),
            mounts_key,
            bodies.join("\0").as_bytes(),
        ]
        .concat();
        return own_op("run", &definition, scratch);
    }
    StepOp {
        map: exec.cache_map(&platform, n_inputs),
        dest: (!scratch).then_some(0),
        src: None,
        buildkit: true,
        linked_copy: None,
        mount_inputs: mount_inputs.clone().map(|m| m.0).unwrap_or_default(),
        mkfiles: mount_inputs.map(|m| m.1).unwrap_or_default(),
    }
}

/// The mkdir of a WORKDIR step, `None` for `WORKDIR /`.
fn workdir_op(step: &Step, path: &str, scratch: bool) -> Option<StepOp> {
    let base = if scratch { -1 } else { 0 };
    if path == "/" {
        return None;
    }
    let mkdir = Mkdir {
        path: path.to_owned(),
        mode: 0o755,
        make_parents: true,
        owner: step.user.as_deref().map(|u| chown_opt(u, base)),
        timestamp: -1,
    };
    let op = FileOp {
        actions: vec![FileAction {
            input: base,
            secondary_input: -1,
            output: 0,
            action: Action::Mkdir(mkdir),
        }],
    };
    let n_inputs = usize::from(!scratch);
    Some(StepOp {
        map: op.cache_map(n_inputs),
        dest: (!scratch).then_some(0),
        src: None,
        buildkit: true,
        linked_copy: None,
        mount_inputs: Vec::new(),
        mkfiles: Vec::new(),
    })
}

/// The file op of a COPY or ADD step (a merge for `--link`), or an op of our own where
/// BuildKit's key depends on what we do not model.
fn copy_op(
    step: &Step,
    copy: &CopyOp,
    scratch: bool,
    has_src: bool,
    add_hosts: &[(String, String)],
    mounts_key: &[u8],
) -> Option<StepOp> {
    let base = if scratch { -1 } else { 0 };
    let paths: Vec<&String> = copy
        .sources
        .iter()
        .filter_map(|s| match s {
            CopySource::Path(p) => Some(p),
            CopySource::Inline { .. } => None,
        })
        .collect();
    let dest_path = relative_to_workdir(&step.workdir, &copy.dest);
    let (dest, src) = match (scratch, has_src) {
        (true, true) => (None, Some(0)),
        (true, false) => (None, None),
        (false, true) => (Some(0), Some(1)),
        (false, false) => (Some(0), None),
    };
    let n_inputs = usize::from(dest.is_some()) + usize::from(src.is_some());
    let mut actions = Vec::new();
    for (i, source) in paths.iter().enumerate() {
        let mut action = if copy.parents {
            // `COPY --parents`: the directory before the `/./` pivot (or the root),
            // filtered by the rest as an include pattern.
            let split = ParentsSource::of(source);
            let mut action = Copy::dockerfile(&clean_source(&split.dir), &dest_path);
            action.include_patterns = vec![split.pattern];
            action.required_paths = split.required.into_iter().collect();
            action
        } else {
            Copy::dockerfile(&clean_source(source), &dest_path)
        };
        action.exclude_patterns = copy.exclude.clone();
        action.owner = copy.chown.as_deref().map(|u| chown_opt(u, base));
        if let Some(mode) = copy.chmod {
            action.mode = mode as i32;
        }
        // Downloads are never unpacked (BuildKit's ADD <url> without --unpack).
        action.attempt_unpack_docker_compatibility = copy.is_add && copy.downloads.is_empty();
        let input = if i == 0 {
            base
        } else {
            (n_inputs + i - 1) as i64
        };
        actions.push(FileAction {
            input,
            secondary_input: src.map_or(-1, |s| s as i64),
            output: if i + 1 == paths.len() { 0 } else { -1 },
            action: Action::Copy(action),
        });
    }
    let op = FileOp { actions };
    let map = op.cache_map(n_inputs);
    let inline = paths.len() != copy.sources.len();
    if paths.is_empty() && !copy.link && copy.exclude.is_empty() {
        return Some(heredoc_copy(copy, &dest_path, scratch));
    }
    // Heredocs mixed with paths, or with `--link`; `--exclude` with a wildcard source
    // (BuildKit's content key then matches the patterns below each match, not by name).
    let wildcard_excluding = !copy.exclude.is_empty()
        && op.actions.iter().any(|a| match &a.action {
            Action::Copy(c) => c.src.contains(['*', '?', '[']),
            _ => false,
        });
    if inline || paths.is_empty() || wildcard_excluding {
        let mut own = own_op("copy", &map.json, scratch);
        let inline: Vec<String> = copy
            .sources
            .iter()
            .filter_map(|s| match s {
                CopySource::Inline { name, content } => Some(format!("{name}\0{content}")),
                CopySource::Path(_) => None,
            })
            .collect();
        own.map = cache_llb::own_cache_map(
            OWN_KEY_VERSION,
            &[own.map.json.as_slice(), inline.join("\0").as_bytes()].concat(),
            n_inputs,
        );
        own.src = src;
        own.dest = dest;
        return Some(own);
    }
    if copy.link && copy.chmod.is_none() && !scratch {
        // `COPY --link`: the copy runs on scratch and is merged onto the stage (on
        // scratch, BuildKit's merge of scratch and the copy is the copy itself).
        let on_scratch = step_op(step, true, has_src, add_hosts, mounts_key)?;
        let merge = cache_llb::MergeOp { inputs: vec![0, 1] };
        return Some(StepOp {
            map: merge.cache_map(),
            dest: Some(0),
            src: None,
            buildkit: true,
            linked_copy: Some(on_scratch.map),
            mount_inputs: Vec::new(),
            mkfiles: Vec::new(),
        });
    }
    Some(StepOp {
        map,
        dest,
        src,
        buildkit: true,
        linked_copy: None,
        mount_inputs: Vec::new(),
        mkfiles: Vec::new(),
    })
}

/// The key of one planned step, as [`plan_cache_maps`] gives it.
#[derive(Clone, Debug)]
pub struct StepKey {
    /// The cache map (the JSON hashed, its digest, the input selectors).
    pub map: CacheMap,
    /// Whether it is BuildKit's key (false: one of buildcache's own, README lists the forms).
    pub buildkit: bool,
    /// The other ops BuildKit makes of the step: for `COPY --link`, the copy onto scratch that
    /// `map` (a merge) puts on the stage; for `COPY <<EOF`, the mkfile ops the copy reads.
    pub other_ops: Vec<CacheMap>,
}

/// The cache map of every step of `plan`, by stage and step (`None` for a step BuildKit makes
/// no op of, `WORKDIR /`), as the engine computes them: what a build would look up, without
/// building. Content keys and image roots need the files and images, so they are not here.
pub fn plan_cache_maps(
    plan: &crate::dockerfile::Plan,
    add_hosts: &[(String, String)],
) -> Vec<Vec<Option<StepKey>>> {
    use crate::dockerfile::Base;
    let mut scratch_after: Vec<bool> = Vec::with_capacity(plan.stages.len());
    let mut out = Vec::with_capacity(plan.stages.len());
    for stage in &plan.stages {
        let mut scratch = match &stage.base {
            Base::Scratch => true,
            Base::Stage(j) => scratch_after[*j],
            Base::Image(_) | Base::Context(_) => false,
        };
        let mut keys = Vec::with_capacity(stage.steps.len());
        for step in &stage.steps {
            let has_src = matches!(&step.op, Op::Copy(copy)
                if copy.sources.iter().any(|s| matches!(s, CopySource::Path(_))));
            let key = step_op(step, scratch, has_src, add_hosts, &[]).map(|op| StepKey {
                map: op.map,
                buildkit: op.buildkit,
                other_ops: op
                    .linked_copy
                    .into_iter()
                    .chain(op.mkfiles.into_iter().map(|m| m.map))
                    .collect(),
            });
            scratch &= key.is_none();
            keys.push(key);
        }
        scratch_after.push(scratch);
        out.push(keys);
    }
    out
}

/// `COPY <<EOF dest` (heredoc sources only): each heredoc is a file BuildKit makes with a
/// mkfile op on scratch (a root record: `/<name>`, mode 0644, the content), copied from there.
fn heredoc_copy(copy: &crate::dockerfile::CopyOp, dest_path: &str, scratch: bool) -> StepOp {
    let base: i64 = if scratch { -1 } else { 0 };
    let first = usize::from(!scratch);
    let n_inputs = first + copy.sources.len();
    let mut actions = Vec::new();
    let mut mkfiles = Vec::new();
    for (i, source) in copy.sources.iter().enumerate() {
        let CopySource::Inline { name, content } = source else {
            continue;
        };
        let path = clean_source(name);
        let tree = Tree::new(contenthash::local_root_header());
        mkfiles.push(mkfile_input(first + i, &path, 0o644, content, tree));
        let mut action = Copy::dockerfile(&path, dest_path);
        action.follow_symlink = false;
        action.dir_copy_contents = false;
        action.allow_wildcard = false;
        action.allow_empty_wildcard = false;
        action.owner = copy.chown.as_deref().map(|u| chown_opt(u, base));
        if let Some(mode) = copy.chmod {
            action.mode = mode as i32;
        }
        actions.push(FileAction {
            input: if i == 0 {
                base
            } else {
                (n_inputs + i - 1) as i64
            },
            secondary_input: (first + i) as i64,
            output: if i + 1 == copy.sources.len() { 0 } else { -1 },
            action: Action::Copy(action),
        });
    }
    StepOp {
        map: FileOp { actions }.cache_map(n_inputs),
        dest: (!scratch).then_some(0),
        src: None,
        buildkit: true,
        linked_copy: None,
        mount_inputs: Vec::new(),
        mkfiles,
    }
}

/// An op on scratch a step reads (a heredoc's mkfile for COPY, a cache mount's mkdir for RUN).
#[derive(Clone, Debug)]
pub(super) struct MkfileInput {
    /// Input index in the copy.
    pub(super) index: usize,
    /// The mkfile op's record (a root record).
    pub(super) record: Digest,
    /// The mkfile op's cache map.
    pub(super) map: CacheMap,
    /// What the mkfile op makes, for the copy's content key.
    pub(super) tree: Tree,
}

impl MkfileInput {
    /// The file op `map` on scratch, making `tree`, as input `index`.
    fn new(index: usize, map: CacheMap, tree: Tree) -> Self {
        MkfileInput {
            index,
            record: record_digest(&map.digest, 0),
            map,
            tree,
        }
    }
}

/// An input a RUN bind mount reads: where from, and the paths mounted from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct MountInput {
    /// Input index in the exec op.
    pub(super) index: usize,
    /// The context, a named context, a stage or an image.
    pub(super) from: CopyFrom,
    /// The mounted paths (absolute, cleaned), for the content key.
    pub(super) sources: Vec<String>,
}

/// Adds RUN `--mount`s to `exec` as BuildKit's `llb` marshals them: the root and bind, cache
/// and tmpfs mounts sorted by target, inputs numbered in that order (one per distinct source,
/// after the root), then secret files, then ssh sockets; secrets as env go to `secretenv`.
/// Returns the inputs bind mounts read, or `None`, leaving `exec` as it was, for cache mounts
/// seeded `from` another input or created with an owner or mode (BuildKit reads them from ops
/// this crate does not model).
fn add_mounts(
    exec: &mut ExecOp,
    mounts: &[RunMount],
    scratch: bool,
    pipe: Option<&Heredoc>,
) -> Option<(Vec<MountInput>, Vec<MkfileInput>)> {
    let MountsByKind {
        mut sorted,
        secrets,
        ssh,
        secretenv,
    } = mounts_by_kind(mounts, pipe)?;
    sorted.extend(exec.mounts.drain(..).map(|m| (m, None)));
    sorted.sort_by(|a, b| a.0.dest.cmp(&b.0.dest));
    let (mut out, inputs, made) =
        number_inputs(sorted, usize::from(!scratch), secrets.len() + ssh.len());
    out.extend(secrets);
    out.extend(ssh);
    exec.mounts = out;
    exec.secretenv = secretenv;
    Some((inputs, made))
}

/// A RUN's mounts as the exec op orders them: those sorted by destination (with where their
/// input comes from), then secrets, then SSH agents; and secrets given as env variables.
struct MountsByKind {
    sorted: Vec<(Mount, Option<MountSource>)>,
    secrets: Vec<Mount>,
    ssh: Vec<Mount>,
    secretenv: Vec<SecretEnv>,
}

/// The exec op's mounts of `mounts` (and of the `#!` heredoc `pipe`), `None` for a cache mount
/// seeded `from` another input (see [`add_mounts`]).
fn mounts_by_kind(mounts: &[RunMount], pipe: Option<&Heredoc>) -> Option<MountsByKind> {
    let mut sorted: Vec<(Mount, Option<MountSource>)> = Vec::new();
    if let Some(heredoc) = pipe {
        // `RUN <<EOF` starting with `#!`: the file, made by a mkfile on scratch, is mounted
        // read-only at /dev/pipes/ and run from there.
        sorted.push((
            Mount {
                selector: "/".to_owned(),
                dest: "/dev/pipes/".to_owned(),
                output: -1,
                readonly: true,
                ..Mount::default()
            },
            Some(MountSource::Pipe(heredoc.clone())),
        ));
    }
    let mut secrets: Vec<Mount> = Vec::new();
    let mut ssh: Vec<Mount> = Vec::new();
    let mut secretenv: Vec<SecretEnv> = Vec::new();
    for mount in mounts {
        match mount {
            RunMount::Bind(b) => sorted.push((
                Mount {
                    selector: if b.source == "/" {
                        String::new()
                    } else {
                        b.source.clone()
                    },
                    dest: b.target.clone(),
                    output: -1,
                    readonly: b.read_only,
                    ..Mount::default()
                },
                Some(MountSource::From(b.from.clone())),
            )),
            RunMount::Cache(c) => {
                if c.from.is_some() {
                    return None;
                }
                sorted.push(cache_mount(c));
            }
            RunMount::Tmpfs(t) => sorted.push((
                Mount {
                    input: -1,
                    dest: t.target.clone(),
                    output: -1,
                    mount_type: MountType::Tmpfs,
                    tmpfs_opt: Some(TmpfsOpt {
                        size: t.size.map_or(0, |s| s as i64),
                    }),
                    ..Mount::default()
                },
                None,
            )),
            RunMount::Secret(sec) => {
                if let Some(env) = &sec.env {
                    secretenv.push(SecretEnv {
                        id: sec.id.clone(),
                        name: env.clone(),
                        optional: !sec.required,
                    });
                }
                secrets.extend(secret_mount(sec));
            }
            RunMount::Ssh(s) => ssh.push(ssh_mount(s)),
        }
    }
    Some(MountsByKind {
        sorted,
        secrets,
        ssh,
        secretenv,
    })
}

/// Gives the `sorted` mounts their op input indexes from `first` on, in order: one input per
/// source (a bind's `from`, shared by its mounts), per distinct mkdir, per heredoc file. Returns
/// the mounts (with room for `more` after them), the bind inputs, and the mkfile inputs by
/// index.
fn number_inputs(
    sorted: Vec<(Mount, Option<MountSource>)>,
    first: usize,
    more: usize,
) -> (Vec<Mount>, Vec<MountInput>, Vec<MkfileInput>) {
    let mut inputs: Vec<MountInput> = Vec::new();
    let mut mkdirs: Vec<(Mkdir, MkfileInput)> = Vec::new();
    let mut pipes: Vec<MkfileInput> = Vec::new();
    let mut out: Vec<Mount> = Vec::with_capacity(sorted.len() + more);
    for (mut mount, source) in sorted {
        let next = first + inputs.len() + mkdirs.len() + pipes.len();
        match source {
            None => {}
            Some(MountSource::Pipe(heredoc)) => {
                pipes.push(pipe_file(&heredoc, next));
                mount.input = next as i64;
            }
            Some(MountSource::From(from)) => {
                let path = if mount.selector.is_empty() {
                    "/".to_owned()
                } else {
                    mount.selector.clone()
                };
                let input = match inputs.iter_mut().find(|i| i.from == from) {
                    Some(input) => {
                        input.sources.push(path);
                        input.index
                    }
                    None => {
                        inputs.push(MountInput {
                            index: next,
                            from,
                            sources: vec![path],
                        });
                        next
                    }
                };
                mount.input = input as i64;
            }
            Some(MountSource::Mkdir(mkdir)) => {
                let input = match mkdirs.iter().find(|(m, _)| *m == mkdir) {
                    Some((_, made)) => made.index,
                    None => {
                        let made = mkdir_file(&mkdir, next);
                        mkdirs.push((mkdir, made));
                        next
                    }
                };
                mount.input = input as i64;
            }
        }
        out.push(mount);
    }
    let mut made: Vec<MkfileInput> = mkdirs.into_iter().map(|(_, made)| made).collect();
    made.extend(pipes);
    made.sort_by_key(|m| m.index);
    (out, inputs, made)
}

/// A secret mounted as a file (`target`), if it is one.
fn secret_mount(sec: &SecretMount) -> Option<Mount> {
    let target = sec.target.as_ref()?;
    Some(Mount {
        input: -1,
        dest: target.clone(),
        mount_type: MountType::Secret,
        secret_opt: Some(SecretOpt {
            id: sec.id.clone(),
            uid: sec.uid,
            gid: sec.gid,
            mode: sec.mode,
            optional: !sec.required,
        }),
        ..Mount::default()
    })
}

/// An SSH agent socket mount.
fn ssh_mount(s: &SshMount) -> Mount {
    Mount {
        input: -1,
        dest: s.target.clone(),
        mount_type: MountType::Ssh,
        ssh_opt: Some(SecretOpt {
            id: s.id.clone().unwrap_or_default(),
            uid: s.uid,
            gid: s.gid,
            mode: s.mode,
            optional: !s.required,
        }),
        ..Mount::default()
    }
}

/// A cache mount as BuildKit marshals it, with the mkdir its owner or mode needs.
fn cache_mount(c: &CacheMount) -> (Mount, Option<MountSource>) {
    // An owner or mode: the cache starts as BuildKit's mkdir of /cache on scratch.
    let owned = c.mode.is_some() || c.uid.is_some() || c.gid.is_some();
    let source = owned.then(|| {
        MountSource::Mkdir(Mkdir {
            path: "/cache".to_owned(),
            mode: c.mode.unwrap_or(0o755) as i32,
            make_parents: false,
            owner: Some(ChownOpt {
                user: Some(UserOpt::ById(c.uid.unwrap_or(0))),
                group: Some(UserOpt::ById(c.gid.unwrap_or(0))),
            }),
            timestamp: -1,
        })
    });
    (
        Mount {
            input: -1,
            selector: if owned {
                "/cache".to_owned()
            } else {
                String::new()
            },
            dest: c.target.clone(),
            output: -1,
            readonly: c.read_only,
            mount_type: MountType::Cache,
            cache_opt: Some(CacheOpt {
                id: c.llb_id(),
                sharing: match c.sharing {
                    Sharing::Shared => 0,
                    Sharing::Private => 1,
                    Sharing::Locked => 2,
                },
            }),
            ..Mount::default()
        },
        source,
    )
}

/// The mkfile on scratch that makes the file of a `#!` heredoc RUN, as input `index`.
fn pipe_file(heredoc: &Heredoc, index: usize) -> MkfileInput {
    let path = clean_source(&heredoc.name);
    // A snapshot's root: its real stat (0755, root), found in a BuildKit export.
    let root = contenthash::Stat::new(contenthash::Kind::Dir, 0o755);
    let tree = Tree::new(contenthash::entry_digest(&root, b""));
    mkfile_input(index, &path, 0o755, &heredoc.content, tree)
}

/// A one-file mkfile on scratch (`path` with `mode` and `content`) as input `index`: its op's
/// cache map and the content checksum of the file in `tree` (empty, with the root's header).
fn mkfile_input(index: usize, path: &str, mode: u16, content: &str, mut tree: Tree) -> MkfileInput {
    let op = FileOp {
        actions: vec![FileAction {
            input: -1,
            secondary_input: -1,
            output: 0,
            action: Action::Mkfile(Mkfile {
                path: path.to_owned(),
                mode: i32::from(mode),
                data: content.as_bytes().to_vec(),
                owner: None,
                timestamp: -1,
            }),
        }],
    };
    let mut stat = contenthash::Stat::new(contenthash::Kind::File, u32::from(mode));
    stat.size = content.len() as u64;
    tree.insert(
        path,
        contenthash::Kind::File,
        "",
        contenthash::entry_digest(&stat, content.as_bytes()),
    );
    MkfileInput::new(index, op.cache_map(0), tree)
}

/// BuildKit's mkdir on scratch for a cache mount with an owner or mode, as input `index`.
fn mkdir_file(mkdir: &Mkdir, index: usize) -> MkfileInput {
    let op = FileOp {
        actions: vec![FileAction {
            input: -1,
            secondary_input: -1,
            output: 0,
            action: Action::Mkdir(mkdir.clone()),
        }],
    };
    let map = op.cache_map(0);
    let mut stat = contenthash::Stat::new(contenthash::Kind::Dir, mkdir.mode as u32);
    if let Some(ChownOpt {
        user: Some(UserOpt::ById(uid)),
        group: Some(UserOpt::ById(gid)),
    }) = &mkdir.owner
    {
        stat.uid = *uid;
        stat.gid = *gid;
    }
    let mut tree = Tree::new(contenthash::local_root_header());
    tree.insert(
        &mkdir.path,
        contenthash::Kind::Dir,
        "",
        contenthash::entry_digest(&stat, b""),
    );
    MkfileInput::new(index, map, tree)
}

/// Where a RUN mount's files come from.
enum MountSource {
    /// A context, stage or image.
    From(CopyFrom),
    /// The file of a `#!` heredoc RUN.
    Pipe(Heredoc),
    /// BuildKit's mkdir on scratch for a cache mount with an owner or mode.
    Mkdir(Mkdir),
}

/// A key of our own for a step whose BuildKit ops this crate does not model.
fn own_op(kind: &str, json: &[u8], scratch: bool) -> StepOp {
    let n_inputs = usize::from(!scratch);
    let mut bytes = kind.as_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(json);
    StepOp {
        map: cache_llb::own_cache_map(OWN_KEY_VERSION, &bytes, n_inputs),
        dest: (!scratch).then_some(0),
        src: None,
        buildkit: false,
        linked_copy: None,
        mount_inputs: Vec::new(),
        mkfiles: Vec::new(),
    }
}

/// `llb.WithUser`: `user[:group]`, each a number (or `root`) or a name read from the
/// filesystem the action writes (`base`).
fn chown_opt(spec: &str, base: i64) -> ChownOpt {
    let one = |part: &str| match part {
        "root" => UserOpt::ById(0),
        _ => match part.parse::<i32>() {
            Ok(id) => UserOpt::ById(id as u32),
            Err(_) => UserOpt::ByName {
                name: part.to_owned(),
                input: base,
            },
        },
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (one(u), Some(one(g))),
        None => (one(spec), None),
    };
    ChownOpt {
        user: Some(user),
        group,
    }
}

/// A COPY source as BuildKit writes it: absolute, cleaned, no trailing slash.
fn clean_source(src: &str) -> String {
    clean_join("/", src)
}

/// `path.Join(parent, p)` for a relative `p`, `path.Clean(p)` for an absolute one.
fn clean_join(parent: &str, p: &str) -> String {
    let joined = if p.starts_with('/') {
        p.to_owned()
    } else {
        format!("{parent}/{p}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for comp in joined.split('/') {
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

/// BuildKit's `pathRelativeToWorkingDir` with its trailing-slash rule (`NormalizePath` with
/// `keepSlash`): a destination written with a trailing `/` (or `.`, `""`) keeps one.
fn relative_to_workdir(workdir: &str, dest: &str) -> String {
    let dest = if dest.is_empty() || dest == "." {
        "./"
    } else {
        dest
    };
    let mut out = clean_join(workdir, dest);
    if dest.ends_with('/') && !out.ends_with('/') {
        out.push('/');
    } else if dest.ends_with("/.") {
        if out != "/" {
            out.push('/');
        }
        out.push('.');
    }
    out
}

/// The content-key checksums of `selectors` over what `selection` found.
///
/// `root` is the header digest of the source's root directory: [`contenthash::local_root_header`]
/// for a client's context (whose own root entry is then not used), the root's entry digest for
/// a stage's filesystem.
pub(super) fn content_checksums(
    selection: &Selection,
    selectors: &[ContentSelector],
    context: bool,
) -> Result<Vec<Digest>, String> {
    let mut tree = Tree::new(contenthash::local_root_header());
    for source in &selection.sources {
        for found in &source.matches {
            for entry in &found.entries {
                let path = found.entry_path(entry);
                let path = format!(
                    "/{}",
                    String::from_utf8_lossy(path.as_os_str().as_encoded_bytes())
                );
                if context && path == "/" {
                    continue;
                }
                let Some(digest) = entry.tarsum.clone() else {
                    return Err(format!("{path}: no content hash"));
                };
                let kind = entry.contenthash_stat().kind;
                let link = if entry.kind == EntryKind::Symlink {
                    entry.contenthash_stat().link
                } else {
                    String::new()
                };
                tree.insert(&path, kind, &link, digest);
            }
            // Parents of a match take part in path resolution only.
            let mut parent = found.named.parent();
            while let Some(dir) = parent {
                if dir.as_os_str().is_empty() {
                    break;
                }
                let path = format!(
                    "/{}",
                    String::from_utf8_lossy(dir.as_os_str().as_encoded_bytes())
                );
                if !tree_has(&tree, &path) {
                    tree.insert(
                        &path,
                        contenthash::Kind::Dir,
                        "",
                        contenthash::local_root_header(),
                    );
                }
                parent = dir.parent();
            }
        }
    }
    selectors
        .iter()
        .map(|sel| {
            if sel.include_patterns.is_empty() {
                return tree.checksum(sel).map_err(|err| err.to_string());
            }
            let includes =
                IgnoreMatcher::from_patterns(sel.include_patterns.iter().map(String::as_str))
                    .map_err(|err| {
                        format!(
                            "include patterns {:?}: {}",
                            sel.include_patterns,
                            err.message()
                        )
                    })?;
            tree.checksum_including(sel, &|rel| includes.is_excluded(rel))
                .map_err(|err| err.to_string())
        })
        .collect()
}

fn tree_has(tree: &Tree, path: &str) -> bool {
    tree.contains(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_follow_buildkit() {
        assert_eq!(relative_to_workdir("/", "/etc/app.conf"), "/etc/app.conf");
        assert_eq!(relative_to_workdir("/w", "app/"), "/w/app/");
        assert_eq!(relative_to_workdir("/w", "."), "/w/");
        assert_eq!(relative_to_workdir("/", "."), "/");
        assert_eq!(relative_to_workdir("/w", "a/../b"), "/w/b");
        assert_eq!(clean_source("src/"), "/src");
        assert_eq!(clean_source("."), "/");
        assert_eq!(clean_source("./a/*.txt"), "/a/*.txt");
    }

    #[test]
    fn chown_forms() {
        let o = chown_opt("1000:staff", 0);
        assert_eq!(o.user, Some(UserOpt::ById(1000)));
        assert_eq!(
            o.group,
            Some(UserOpt::ByName {
                name: "staff".into(),
                input: 0
            })
        );
        assert_eq!(chown_opt("root", -1).user, Some(UserOpt::ById(0)));
        assert_eq!(chown_opt("app", 0).group, None);
    }
}
