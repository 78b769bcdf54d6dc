//! Build planning: pick the target, keep the stages it needs, expand variables, and produce steps,
//! image configs and history the way BuildKit's `dockerfile2llb` does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

use super::Error;
use super::config::{Healthcheck, ImageConfig};
use super::env::EnvList;
use super::ignore::clean_path;
use super::lex::Lex;
use super::mount::{self, Mount, Network, Security};
use super::parse::{
    ArgDecl, CommandLine, Dockerfile, HealthcheckSpec, Heredoc, Instruction, InstructionKind,
    RunCommand, chomp_heredoc, parse_heredoc,
};

/// The only platform buildcache builds for.
pub const PLATFORM: &str = "linux/amd64";

/// `PATH` that BuildKit sets when the base image defines none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `comment` BuildKit writes into every history entry it creates.
pub const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

/// Inputs of [`plan`] besides the Dockerfile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// `--build-arg NAME=VALUE` values.
    pub build_args: BTreeMap<String, String>,
    /// `--target` stage name; the last stage when `None`.
    pub target: Option<String>,
    /// Names given by `--build-context`; `FROM name`/`COPY --from=name` refer to these when no
    /// stage has that name. As in BuildKit, a context named like a stage (`FROM x AS name`)
    /// replaces that stage: its instructions are not built.
    pub named_contexts: BTreeSet<String>,
    /// `--label KEY=VALUE`: set on the target stage's image config after its own `LABEL`s, as
    /// BuildKit's frontend does (no history entry).
    pub labels: BTreeMap<String, String>,
    /// Bounds on the work the Dockerfile may cause.
    pub limits: Limits,
}

/// Bounds on the work a Dockerfile may cause, with defaults far above real builds; the caller
/// fills them from its own settings (buildcache: `--limit word-size=N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one word after variable expansion, and of a stage's whole environment
    /// (`word-size`), so that `ENV a=$a$a` repeated is refused before memory runs out.
    pub word_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            word_size: 16 << 20,
        }
    }
}

/// What a build must do, stage by stage, dependencies first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The stages the target needs, dependencies first (Dockerfile order).
    pub stages: Vec<PlannedStage>,
    /// Index into `stages` of the target.
    pub target: usize,
    /// Build args given but not declared anywhere used (for a warning like BuildKit's).
    pub unused_build_args: Vec<String>,
}

impl Plan {
    /// The image references and named contexts the planned stages start from or copy from, for
    /// fetching their configs before [`plan_with_base_configs`] (and their content before running).
    pub fn external_refs(&self) -> BTreeSet<String> {
        let mut refs = BTreeSet::new();
        for stage in &self.stages {
            if let Base::Image(r) | Base::Context(r) = &stage.base {
                refs.insert(r.clone());
            }
            for step in &stage.steps {
                match &step.op {
                    Op::Copy(CopyOp {
                        from: CopyFrom::Image(r) | CopyFrom::NamedContext(r),
                        ..
                    }) => {
                        refs.insert(r.clone());
                    }
                    Op::Run { mounts, .. } => {
                        for m in mounts {
                            let from = match m {
                                Mount::Bind(b) => Some(&b.from),
                                Mount::Cache(c) => c.from.as_ref(),
                                _ => None,
                            };
                            if let Some(CopyFrom::Image(r) | CopyFrom::NamedContext(r)) = from {
                                refs.insert(r.clone());
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        refs
    }

    /// The target stage.
    pub fn target_stage(&self) -> &PlannedStage {
        &self.stages[self.target]
    }
}

/// Where a stage starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Base {
    /// `FROM scratch`: an empty filesystem and config.
    Scratch,
    /// An earlier stage: index into [`Plan::stages`].
    Stage(usize),
    /// An image reference, variables expanded, as written (see [`normalize_image_ref`]).
    Image(String),
    /// A named build context (`--build-context name=...`).
    Context(String),
}

/// One stage of a [`Plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedStage {
    /// The `AS` name lower-cased, or `stage-N` (N = index in the Dockerfile).
    pub name: String,
    /// The name BuildKit prints in progress lines: `None` when the Dockerfile has a single stage
    /// (BuildKit then prints `[2/3]` instead of `[name 2/3]`).
    pub progress_name: Option<String>,
    /// Index of the stage in [`Dockerfile::stages`].
    pub dockerfile_index: usize,
    /// Where the stage starts from.
    pub base: Base,
    /// The `--platform` value after expansion and normalization, when given.
    pub platform: Option<String>,
    /// 1-based line of the `FROM`.
    pub from_line: usize,
    /// Progress text of the base, e.g. `FROM 127.0.0.1:5001/busybox:latest` (image references are
    /// normalized like BuildKit does; the executor may append `@sha256:...`). BuildKit shows it as
    /// step 1 only for image and context bases, see [`PlannedStage::from_number`].
    pub from_display: String,
    /// `m` of BuildKit's `[name n/m]`: the FROM of an image or context base, plus every RUN, COPY,
    /// ADD and WORKDIR.
    pub step_total: usize,
    /// The filesystem steps: RUN, COPY, ADD and WORKDIR (except `WORKDIR /`, which has nothing to create).
    pub steps: Vec<Step>,
    /// The stage's final image config after all metadata instructions, starting from the base's
    /// config (see [`plan_with_base_configs`] for image and context bases).
    pub config: ImageConfig,
    /// One entry per instruction after `FROM`, as BuildKit writes them (this stage's entries only;
    /// an image's full history is its base's history followed by these).
    pub history: Vec<HistoryEntry>,
}

impl PlannedStage {
    /// BuildKit's progress prefix for step `number`: `[final 2/4]`, or `[2/4]` for a single-stage
    /// Dockerfile; the number is padded to the width of the total (`[ 3/12]`).
    pub fn progress_prefix(&self, number: usize) -> String {
        let width = self.step_total.max(1).to_string().len();
        match &self.progress_name {
            Some(name) => format!("[{name} {number:>width$}/{}]", self.step_total),
            None => format!("[{number:>width$}/{}]", self.step_total),
        }
    }

    /// `Some(1)` when BuildKit shows the base as a step (image and context bases).
    pub fn from_number(&self) -> Option<usize> {
        matches!(self.base, Base::Image(_) | Base::Context(_)).then_some(1)
    }
}

/// A filesystem step of a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// 1-based line of the instruction.
    pub line: usize,
    /// `n` of BuildKit's `[name n/m]`.
    pub number: usize,
    /// BuildKit's progress text after the prefix, e.g. `COPY --from=builder /out/ /app/`: the
    /// instruction as written with continuation lines joined, keyword upper-cased, and variables
    /// that are set expanded (for RUN, quotes kept and unset variables left as written; a heredoc
    /// RUN gets ` (first line...)` appended).
    pub display: String,
    /// What to do.
    pub op: Op,
    /// Environment for the step: the base's env, `ENV` values and the values of `ARG`s in scope
    /// (BuildKit passes ARG values to RUN as env), in definition order.
    pub env: Vec<(String, String)>,
    /// Absolute working directory; `/` by default.
    pub workdir: String,
    /// The user as written after expansion (`1000:1000`, `app`), if set.
    pub user: Option<String>,
    /// Shell for shell-form commands; default `["/bin/sh", "-c"]`.
    pub shell: Vec<String>,
    /// Always `linux/amd64`.
    pub platform: String,
}

/// A filesystem operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Run a command.
    ///
    /// Heredocs follow BuildKit: `RUN <<EOF` alone runs the body with the shell
    /// (`command` = `Shell(body)`), or, when the body starts with `#!`, runs the file
    /// `/dev/pipes/EOF` (`command` = `Shell("/dev/pipes/EOF")`, and the heredoc's `mount_path`
    /// tells the executor to provide it); any other command (`RUN python3 <<EOF`) is passed to
    /// the shell with the heredoc bodies and delimiters appended, so the shell feeds them.
    Run {
        /// The command; shell form runs as `shell + [string]`.
        command: RunCommand,
        /// The heredocs of the instruction, tabs stripped for `<<-`, not expanded (the shell does it).
        heredocs: Vec<Heredoc>,
        /// `--mount`s in Dockerfile order, expanded, with BuildKit's defaults.
        mounts: Vec<Mount>,
        /// `--network`.
        network: Network,
        /// `--security`.
        security: Security,
    },
    /// COPY or ADD.
    Copy(CopyOp),
    /// Create the directory (with parents, owned by the step's user) if missing.
    Workdir {
        /// Absolute path.
        path: String,
    },
}

/// A COPY or ADD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyOp {
    /// Sources in BuildKit's order (paths, then heredoc files).
    pub sources: Vec<CopySource>,
    /// Absolute destination; a trailing `/` is kept (it means "into this directory").
    pub dest: String,
    /// Where path sources are read from.
    pub from: CopyFrom,
    /// `--chown` after expansion.
    pub chown: Option<String>,
    /// `--chmod` as a mode (octal in the Dockerfile).
    pub chmod: Option<u32>,
    /// `--link` was given (accepted; the result is the same files).
    pub link: bool,
    /// ADD: local tar archives (plain, gzip, bzip2, xz, zstd) are extracted into `dest`.
    pub is_add: bool,
    /// `--exclude` patterns (expanded, `.dockerignore` syntax), matched below each source.
    pub exclude: Vec<String>,
    /// `ADD <url>`: files to download first; `sources` then name them (`Path(file_name)`),
    /// read from the directory they are downloaded into.
    pub downloads: Vec<Download>,
    /// `ADD --checksum=sha256:…`: the digest every download must have.
    pub checksum: Option<String>,
    /// `COPY --parents`: each path source keeps its parent directories at the destination
    /// (below the `/./` pivot when it has one); [`ParentsSource::of`] splits a source as
    /// BuildKit does.
    pub parents: bool,
}

/// A `COPY --parents` path source as BuildKit's frontend splits it: the directory the copy
/// reads (everything before the first `/./`, else the root), the include pattern below it
/// (the rest), and the path that must exist when neither has a wildcard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentsSource {
    /// The directory copied from (its contents, filtered), absolute.
    pub dir: String,
    /// The pattern (`.dockerignore` syntax, relative to `dir`) of what is copied with its
    /// parents; a matched directory brings everything below it.
    pub pattern: String,
    /// `dir` joined with `pattern` when neither has a wildcard: the copy fails without it.
    pub required: Option<String>,
}

impl ParentsSource {
    /// Splits `source` (expanded) like BuildKit's `dispatchCopy` with `parents`.
    pub fn of(source: &str) -> ParentsSource {
        let (dir, pattern) = match source.split_once("/./") {
            Some((dir, pattern)) => (dir, pattern),
            None => ("/", source),
        };
        // `system.NormalizePath("/", p)`: relative paths are joined to `/` and cleaned,
        // absolute ones kept as written.
        let normalize = |p: &str| {
            if p.starts_with('/') {
                p.to_owned()
            } else {
                super::ignore::clean_path(&format!("/{p}"))
            }
        };
        let abs_pattern = normalize(pattern);
        let required = (!has_wildcards(dir) && !has_wildcards(&abs_pattern))
            .then(|| normalize(&super::ignore::clean_path(&format!("{dir}/{abs_pattern}"))));
        ParentsSource {
            dir: normalize(dir),
            pattern: abs_pattern
                .strip_prefix('/')
                .unwrap_or(&abs_pattern)
                .to_owned(),
            required,
        }
    }
}

/// BuildKit's `containsWildcards`: an unescaped `*`, `?` or `[`.
fn has_wildcards(p: &str) -> bool {
    let mut bytes = p.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'*' | b'?' | b'[' => return true,
            b'\\' => {
                bytes.next();
            }
            _ => {}
        }
    }
    false
}

/// A file `ADD` downloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Download {
    /// The http(s) URL, expanded.
    pub url: String,
    /// The file's name: the URL path's last element, as BuildKit names it.
    pub file_name: String,
}

/// One source of a [`CopyOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopySource {
    /// A path (may contain wildcards) relative to the source's root, variables expanded.
    Path(String),
    /// A heredoc (`COPY <<EOF /dest`): a file named `name` (mode 0644) with `content`.
    Inline {
        /// File name.
        name: String,
        /// File content (tabs stripped for `<<-`, variables expanded unless the delimiter was quoted).
        content: String,
    },
}

/// Where a COPY, a bind mount or a cache mount's seed reads from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyFrom {
    /// The build context (filtered by `.dockerignore`).
    Context,
    /// The result of an earlier stage: index into [`Plan::stages`].
    Stage(usize),
    /// A named build context.
    NamedContext(String),
    /// An image's filesystem (`COPY --from=alpine:3`).
    Image(String),
}

/// One image history entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// E.g. `RUN /bin/sh -c echo hi # buildkit`, `ENV A=1`.
    pub created_by: String,
    /// True for metadata-only instructions (no layer).
    pub empty_layer: bool,
    /// Index into [`PlannedStage::steps`] of the step that makes this entry's layer.
    pub step: Option<usize>,
}

/// Resolves a Dockerfile into a [`Plan`], treating image and context bases as having an empty
/// config (plus BuildKit's default `PATH`).
///
/// Picks the target stage (default: last), keeps the stages it needs (transitively through
/// `FROM <stage>` and `COPY --from=<stage>`), expands variables, and returns them dependencies
/// first. Errors: unknown target, `--from` referring to a later stage or using variables,
/// unsupported instructions or flags (`RUN --mount`, `ONBUILD`, `ADD <url>`, ...), invalid
/// values; each names its line.
///
/// For exact env (`ENV PATH=/x:$PATH`), workdir and user inheritance from base images, resolve
/// the image configs first and call [`plan_with_base_configs`].
pub fn plan(df: &Dockerfile, opts: &PlanOptions) -> Result<Plan, Error> {
    plan_with_base_configs(df, opts, &BTreeMap::new())
}

/// Like [`plan`], with the configs of image and context bases, keyed by the string in
/// [`Base::Image`] or [`Base::Context`] (a first `plan` call lists them).
///
/// A stage then starts from that config exactly as BuildKit does: its env (plus the default
/// `PATH` when it has none) is in scope for expansion and steps, its workdir and user apply,
/// and its cmd, entrypoint, labels and the rest carry into [`PlannedStage::config`].
pub fn plan_with_base_configs(
    df: &Dockerfile,
    opts: &PlanOptions,
    base_configs: &BTreeMap<String, ImageConfig>,
) -> Result<Plan, Error> {
    Planner::new(df, opts, base_configs)?.run()
}

/// Normalizes an image reference like Docker: `busybox` becomes `docker.io/library/busybox:latest`.
///
/// Errors when the reference is invalid (upper case in the repository, bad characters).
pub fn normalize_image_ref(reference: &str) -> Result<String, String> {
    static COMPONENT: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$").expect("component regex is valid")
    });
    // Go's `\w` is ASCII only; Rust's is Unicode, which makes this automaton about 100 times
    // bigger and costs tens of milliseconds to compile on every build.
    static TAG: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$").expect("tag regex is valid")
    });
    static DIGEST: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
            .expect("digest regex is valid")
    });
    static DOMAIN: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$")
            .expect("domain regex is valid")
    });
    let invalid = || format!("invalid reference format: {reference:?}");
    let (name_tag, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    if let Some(d) = digest
        && !DIGEST.is_match(d)
    {
        return Err(invalid());
    }
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag
        && !TAG.is_match(t)
    {
        return Err(invalid());
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    let domain = if parts.len() > 1
        && (parts[0].contains('.')
            || parts[0].contains(':')
            || parts[0] == "localhost"
            || parts[0].chars().any(|c| c.is_ascii_uppercase()))
    {
        let d = parts.remove(0);
        if !DOMAIN.is_match(d) {
            return Err(invalid());
        }
        d.to_string()
    } else {
        "docker.io".to_string()
    };
    for part in &parts {
        if part.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "invalid reference format: repository name must be lowercase: {reference:?}"
            ));
        }
        if !COMPONENT.is_match(part) {
            return Err(invalid());
        }
    }
    if domain == "docker.io" && parts.len() == 1 {
        parts.insert(0, "library");
    }
    let mut out = format!("{domain}/{}", parts.join("/"));
    match (tag, digest) {
        (Some(t), _) => out.push_str(&format!(":{t}")),
        (None, None) => out.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(d) = digest {
        out.push_str(&format!("@{d}"));
    }
    Ok(out)
}

/// How a stage's base resolved, in Dockerfile indexes.
#[derive(Clone, Debug)]
enum RawBase {
    Scratch,
    Stage(usize),
    Image(String),
    Context(String),
}

#[derive(Clone, Debug)]
enum RawFrom {
    Stage(usize),
    Image(String),
    Context(String),
}

struct Resolved {
    base: RawBase,
    base_expanded: String,
    platform: Option<String>,
    /// `--from` of each COPY, keyed by instruction index.
    copy_from: BTreeMap<usize, RawFrom>,
    /// `from=` of each `RUN --mount` (`None` when absent), keyed by instruction index.
    mount_from: BTreeMap<usize, Vec<Option<RawFrom>>>,
    /// A named context has the stage's name: like BuildKit, it replaces the whole stage.
    replaced: bool,
}

/// The dispatch state of a stage (BuildKit's `dispatchState`).
#[derive(Clone, Debug, Default)]
struct State {
    /// Env of the LLB state: base env, ENV and ARG values.
    env: EnvList,
    /// The image config's `Env`, kept here while the stage is planned (`config.env` is empty
    /// until then).
    config_env: EnvList,
    config: ImageConfig,
    /// Declared ARGs with their values, for RUN history.
    build_args: Vec<(String, Option<String>)>,
}

impl State {
    fn get(&self, name: &str) -> Option<String> {
        self.env.get(name).map(str::to_owned)
    }

    /// The image config with its `Env`.
    fn image_config(&self) -> ImageConfig {
        let mut config = self.config.clone();
        config.env = self.config_env.to_vec();
        config
    }
}

struct Planner<'a> {
    df: &'a Dockerfile,
    opts: &'a PlanOptions,
    base_configs: &'a BTreeMap<String, ImageConfig>,
    globals: EnvList,
    declared_args: BTreeSet<String>,
    resolved: Vec<Resolved>,
    target: usize,
    single_stage: bool,
}

fn default_args(target: &str) -> EnvList {
    [
        ("BUILDPLATFORM", PLATFORM),
        ("BUILDOS", "linux"),
        ("BUILDARCH", "amd64"),
        ("BUILDVARIANT", ""),
        ("TARGETPLATFORM", PLATFORM),
        ("TARGETOS", "linux"),
        ("TARGETARCH", "amd64"),
        ("TARGETVARIANT", ""),
        ("TARGETSTAGE", target),
    ]
    .into_iter()
    .fold(EnvList::default(), |mut list, (k, v)| {
        list.set(k, v);
        list
    })
}

fn lookup_in(list: &EnvList, name: &str) -> Option<String> {
    list.get(name).map(str::to_owned)
}

fn normalize_platform(value: &str) -> Option<String> {
    let parts: Vec<String> = value.split('/').map(|p| p.to_lowercase()).collect();
    let arch_ok = |a: &str| matches!(a, "amd64" | "x86_64" | "x86-64");
    let ok = match parts.as_slice() {
        [os, arch] => os == "linux" && arch_ok(arch),
        [os, arch, variant] => os == "linux" && arch_ok(arch) && variant == "v1",
        _ => false,
    };
    ok.then(|| PLATFORM.to_string())
}

impl<'a> Planner<'a> {
    fn new(
        df: &'a Dockerfile,
        opts: &'a PlanOptions,
        base_configs: &'a BTreeMap<String, ImageConfig>,
    ) -> Result<Self, Error> {
        let stages = &df.stages;
        if stages.is_empty() {
            return Err(Error::general(
                "dockerfile contains no stages to build: add a FROM line",
            ));
        }
        let target = match &opts.target {
            None => stages.len() - 1,
            Some(t) => target_stage(stages, t)?,
        };
        let target_name = stages[target].name.clone().unwrap_or_default();
        let lex = Lex {
            max_word: opts.limits.word_size,
            ..Lex::new(df.escape)
        };
        let (globals, declared_args) = global_args(df, opts, &lex, &target_name)?;

        // Resolve every stage's base and COPY --from, like BuildKit does for all stages.
        let mut resolved = Vec::with_capacity(stages.len());
        let mut n_states = stages.len();
        for i in 0..stages.len() {
            let (stage, sources) = resolve_stage(df, i, opts, &lex, &globals)?;
            n_states += sources;
            resolved.push(stage);
        }

        Ok(Planner {
            df,
            opts,
            base_configs,
            globals,
            declared_args,
            resolved,
            target,
            single_stage: n_states == 1,
        })
    }

    fn run(mut self) -> Result<Plan, Error> {
        // Stages reachable from the target.
        let mut needed = BTreeSet::new();
        let mut stack = vec![self.target];
        while let Some(i) = stack.pop() {
            if !needed.insert(i) {
                continue;
            }
            if let RawBase::Stage(j) = self.resolved[i].base {
                stack.push(j);
            }
            for from in self.resolved[i].copy_from.values() {
                if let RawFrom::Stage(j) = from {
                    stack.push(*j);
                }
            }
            for from in self.resolved[i].mount_from.values().flatten().flatten() {
                if let RawFrom::Stage(j) = from {
                    stack.push(*j);
                }
            }
        }
        let order: Vec<usize> = needed.into_iter().collect();
        let plan_index: BTreeMap<usize, usize> =
            order.iter().enumerate().map(|(p, d)| (*d, p)).collect();

        let mut stages: Vec<PlannedStage> = Vec::with_capacity(order.len());
        let mut finals: Vec<State> = Vec::with_capacity(order.len());
        for &i in &order {
            let (planned, state) = self.dispatch_stage(i, &plan_index, &finals)?;
            stages.push(planned);
            finals.push(state);
        }

        let unused_build_args = self
            .opts
            .build_args
            .keys()
            .filter(|k| !self.declared_args.contains(*k) && !is_builtin_arg(k))
            .cloned()
            .collect();
        let target = plan_index[&self.target];
        for (k, v) in &self.opts.labels {
            stages[target].config.labels.insert(k.clone(), v.clone());
        }
        Ok(Plan {
            target,
            stages,
            unused_build_args,
        })
    }

    fn dispatch_stage(
        &mut self,
        i: usize,
        plan_index: &BTreeMap<usize, usize>,
        finals: &[State],
    ) -> Result<(PlannedStage, State), Error> {
        let stage = &self.df.stages[i];
        let resolved = &self.resolved[i];
        let name = stage.name.clone().unwrap_or_else(|| format!("stage-{i}"));
        let platform = match &resolved.platform {
            None => None,
            Some(p) => Some(supported_platform(stage.line, p)?),
        };
        let (base, from_display, mut state) = self.base_state(i, plan_index, finals)?;

        let from_counts = matches!(base, Base::Image(_) | Base::Context(_));
        let instructions = if resolved.replaced {
            &[][..]
        } else {
            &stage.instructions[..]
        };
        // The base's ONBUILD triggers run first, as BuildKit does; they do not carry over.
        let triggers = if resolved.replaced {
            Vec::new()
        } else {
            std::mem::take(&mut state.config.on_build)
                .iter()
                .map(|t| parse_trigger(t, stage.line))
                .collect::<Result<Vec<_>, _>>()?
        };
        let step_total = usize::from(from_counts && !resolved.replaced)
            + numbered_steps(triggers.iter().chain(instructions));

        let mut d = StageDispatch {
            escape: self.df.escape,
            opts: self.opts,
            globals: &self.globals,
            declared_args: &mut self.declared_args,
            state: &mut state,
            steps: Vec::new(),
            history: Vec::new(),
            cmd_index: usize::from(from_counts),
            cmd_set: false,
            mount_from: Vec::new(),
        };
        d.dispatch_triggers(&triggers)?;
        for (idx, ins) in instructions.iter().enumerate() {
            let from = match resolved.copy_from.get(&idx) {
                None => CopyFrom::Context,
                Some(raw) => copy_from_of(raw, ins, "--from=", plan_index)?,
            };
            d.mount_from = match resolved.mount_from.get(&idx) {
                None => Vec::new(),
                Some(froms) => froms
                    .iter()
                    .map(|f| {
                        f.as_ref()
                            .map(|raw| copy_from_of(raw, ins, "--mount from=", plan_index))
                            .transpose()
                    })
                    .collect::<Result<_, _>>()?,
            };
            d.dispatch(ins, from).map_err(|e| e.or_line(ins.line))?;
        }
        let steps = d.steps;
        let history = d.history;
        let planned_stage = PlannedStage {
            name: name.clone(),
            progress_name: (!self.single_stage).then_some(name),
            dockerfile_index: i,
            base,
            platform,
            from_line: stage.line,
            from_display,
            step_total,
            steps,
            config: state.image_config(),
            history,
        };
        Ok((planned_stage, state))
    }

    /// Dockerfile stage `i`'s base, the progress text of its FROM, and the state it starts from:
    /// an earlier stage's final state, or an image's config (`base_configs`).
    fn base_state(
        &self,
        i: usize,
        plan_index: &BTreeMap<usize, usize>,
        finals: &[State],
    ) -> Result<(Base, String, State), Error> {
        let stage = &self.df.stages[i];
        let resolved = &self.resolved[i];
        Ok(match &resolved.base {
            RawBase::Scratch => {
                // BuildKit's empty image has `WorkingDir` "/" (`emptyImage`).
                let mut state = self.initial_state(None);
                state.config.workdir = Some("/".into());
                (Base::Scratch, "FROM scratch".to_string(), state)
            }
            RawBase::Stage(j) => {
                let p = plan_index[j];
                (
                    Base::Stage(p),
                    format!("FROM {}", resolved.base_expanded),
                    finals[p].clone(),
                )
            }
            RawBase::Image(r) => {
                let normalized = normalize_image_ref(r).map_err(|e| {
                    Error::at(stage.line, format!("failed to parse stage name {r:?}: {e}"))
                })?;
                (
                    Base::Image(r.clone()),
                    format!("FROM {normalized}"),
                    self.initial_state(self.base_configs.get(r)),
                )
            }
            RawBase::Context(c) => (
                Base::Context(c.clone()),
                format!("FROM {c}"),
                self.initial_state(self.base_configs.get(c)),
            ),
        })
    }

    fn initial_state(&self, config: Option<&ImageConfig>) -> State {
        let mut config = config.cloned().unwrap_or_default();
        if !config.env.iter().any(|(k, _)| k == "PATH") {
            config.env.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        if let Some(wd) = &config.workdir {
            config.workdir = Some(normalize_workdir("/", wd));
        }
        let env = EnvList::from_pairs(&std::mem::take(&mut config.env));
        State {
            config_env: env.clone(),
            env,
            config,
            build_args: Vec::new(),
        }
    }
}

/// A stage's `--platform` as the one platform buildcache builds, or an error.
fn supported_platform(line: usize, platform: &str) -> Result<String, Error> {
    normalize_platform(platform).ok_or_else(|| {
        Error::at(line, format!("unsupported platform {platform:?}: buildcache builds only {PLATFORM}; drop --platform or use --platform={PLATFORM}"))
    })
}

/// How many of `instructions` get a step number in progress (`[n/total]`), as BuildKit counts.
fn numbered_steps<'i>(instructions: impl Iterator<Item = &'i Instruction>) -> usize {
    instructions
        .filter(|ins| {
            matches!(
                ins.kind,
                InstructionKind::Run(_)
                    | InstructionKind::Copy(_)
                    | InstructionKind::Add(_)
                    | InstructionKind::Workdir(_)
            )
        })
        .count()
}

/// A resolved `--from=` or `--mount from=` (`flag`, for the message) in plan terms; an image
/// reference must be valid.
fn copy_from_of(
    raw: &RawFrom,
    ins: &Instruction,
    flag: &str,
    plan_index: &BTreeMap<usize, usize>,
) -> Result<CopyFrom, Error> {
    match raw {
        RawFrom::Stage(j) => Ok(CopyFrom::Stage(plan_index[j])),
        RawFrom::Context(c) => Ok(CopyFrom::NamedContext(c.clone())),
        RawFrom::Image(r) => {
            normalize_image_ref(r).map_err(|e| {
                Error::at(ins.line, format!("{flag}{r} is neither a stage, a named context nor a valid image reference: {e}"))
            })?;
            Ok(CopyFrom::Image(r.clone()))
        }
    }
}

/// The stage `--target` names (the last of that name).
fn target_stage(stages: &[super::Stage], target: &str) -> Result<usize, Error> {
    stage_named(stages, target).ok_or_else(|| {
        let names: Vec<&str> = stages.iter().filter_map(|s| s.name.as_deref()).collect();
        Error::general(format!(
            "target stage {target:?} could not be found; the stages are: {}",
            if names.is_empty() {
                "(none named; add AS <name> to a FROM)".to_string()
            } else {
                names.join(", ")
            }
        ))
    })
}

/// The global ARGs (BuildKit's `buildMetaArgs`): the platform and target defaults, then the ARGs
/// before the first FROM, build args overriding both; also the names those ARGs declare.
fn global_args(
    df: &Dockerfile,
    opts: &PlanOptions,
    lex: &Lex,
    target_name: &str,
) -> Result<(EnvList, BTreeSet<String>), Error> {
    let mut globals = default_args(target_name);
    let defaults: Vec<(String, String)> = globals.to_vec();
    for (k, _) in defaults {
        if let Some(over) = opts.build_args.get(k.as_str()) {
            globals.set(&k, over);
        }
    }
    let mut declared_args = BTreeSet::new();
    for ins in &df.global_args {
        for decl in &ins.args {
            declared_args.insert(decl.name.clone());
            let value = match (opts.build_args.get(&decl.name), &decl.default) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(default)) => Some(
                    lex.process_word(default, &|n| lookup_in(&globals, n))
                        .map_err(|e| Error::at(ins.line, e))?,
                ),
                (None, None) => None,
            };
            if let Some(value) = value {
                globals.set(&decl.name, &value);
            }
        }
    }
    Ok((globals, declared_args))
}

/// Resolves Dockerfile stage `i`: its base, platform, COPY `--from` and RUN `--mount from=`.
/// Also returns how many source states (images, named contexts) its instructions add, which
/// BuildKit counts to decide whether progress names the stage.
fn resolve_stage(
    df: &Dockerfile,
    i: usize,
    opts: &PlanOptions,
    lex: &Lex,
    globals: &EnvList,
) -> Result<(Resolved, usize), Error> {
    let stages = &df.stages;
    let stage = &stages[i];
    let base_expanded = lex
        .process_word(&stage.base, &|n| lookup_in(globals, n))
        .map_err(|e| Error::at(stage.line, e))?;
    if base_expanded.is_empty() {
        return Err(Error::at(
            stage.line,
            format!(
                "base name ({}) should not be blank: set the ARG it uses (--build-arg)",
                stage.base
            ),
        ));
    }
    let platform = match &stage.platform {
        None => None,
        Some(p) => Some(expand_platform(stage.line, p, lex, globals)?),
    };
    let base = stage_base(&stages[..i], &base_expanded, opts);

    let mut sources = 0;
    let mut copy_from = BTreeMap::new();
    let mut mount_from = BTreeMap::new();
    for (idx, ins) in stage.instructions.iter().enumerate() {
        match ins.kind {
            InstructionKind::Run(_) => {
                let froms = resolve_mount_froms(ins, i, stages, opts)?;
                // Like BuildKit, every mount not from a stage adds a source state.
                sources += froms
                    .iter()
                    .filter(|f| !matches!(f, Some(RawFrom::Stage(_))))
                    .count();
                if !froms.is_empty() {
                    mount_from.insert(idx, froms);
                }
            }
            InstructionKind::Copy(_) => {
                let Some(from) = ins.flag("from") else {
                    continue;
                };
                let raw = resolve_copy_from(df, i, ins, from, opts)?;
                sources += usize::from(!matches!(raw, RawFrom::Stage(_)));
                copy_from.insert(idx, raw);
            }
            _ => {}
        }
    }
    // Like BuildKit, a named context with the stage's name replaces the stage.
    let replaced = stage
        .name
        .as_ref()
        .is_some_and(|n| opts.named_contexts.contains(n));
    let (base, copy_from, mount_from) = match (&stage.name, replaced) {
        (Some(n), true) => (
            RawBase::Context(n.clone()),
            BTreeMap::new(),
            BTreeMap::new(),
        ),
        _ => (base, copy_from, mount_from),
    };
    let resolved = Resolved {
        base,
        base_expanded,
        platform,
        copy_from,
        mount_from,
        replaced,
    };
    Ok((resolved, sources))
}

/// A stage's `--platform`, expanded with the global ARGs; it may not come out empty.
fn expand_platform(
    line: usize,
    platform: &str,
    lex: &Lex,
    globals: &EnvList,
) -> Result<String, Error> {
    let v = lex
        .process_word(platform, &|n| lookup_in(globals, n))
        .map_err(|e| {
            Error::at(
                line,
                format!("failed to process arguments for platform {platform}: {e}"),
            )
        })?;
    if v.is_empty() {
        return Err(Error::at(
            line,
            format!("empty platform value from expression {platform}"),
        ));
    }
    Ok(v)
}

/// What the expanded FROM of a stage names, given the stages `before` it: an earlier stage (by
/// name, else by index), `scratch`, a named context, else an image.
fn stage_base(before: &[super::Stage], base: &str, opts: &PlanOptions) -> RawBase {
    if let Some(j) = stage_named(before, base) {
        RawBase::Stage(j)
    } else if base == "scratch" {
        RawBase::Scratch
    } else if let Some(j) = base.parse::<usize>().ok().filter(|j| *j < before.len()) {
        RawBase::Stage(j)
    } else if opts.named_contexts.contains(base) {
        RawBase::Context(base.to_string())
    } else {
        RawBase::Image(base.to_string())
    }
}

/// The `--from` of COPY `ins` in Dockerfile stage `current`: an earlier stage (by index or
/// name), else a named context, else an image. Variables are not expanded in it, as in BuildKit.
fn resolve_copy_from(
    df: &Dockerfile,
    current: usize,
    ins: &Instruction,
    from: &str,
    opts: &PlanOptions,
) -> Result<RawFrom, Error> {
    let stages = &df.stages;
    if from.contains(['$', '"', '\'', df.escape]) {
        return Err(Error::at(
            ins.line,
            "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround",
        ));
    }
    let found = match from.parse::<usize>() {
        Ok(j) if j < stages.len() => Some(j),
        Ok(j) => {
            return Err(Error::at(
                ins.line,
                format!(
                    "invalid stage index {j} in --from: the Dockerfile has {} stages",
                    stages.len()
                ),
            ));
        }
        Err(_) => stage_named(stages, from),
    };
    Ok(match found {
        Some(j) if j >= current => {
            let this_name = stages[current]
                .name
                .clone()
                .unwrap_or_else(|| format!("stage-{current}"));
            return Err(Error::at(
                ins.line,
                format!(
                    "cannot copy from stage {from:?}, it needs to be defined before current stage {this_name:?}"
                ),
            ));
        }
        Some(j) => RawFrom::Stage(j),
        None if opts.named_contexts.contains(from) => RawFrom::Context(from.to_string()),
        None => RawFrom::Image(from.to_string()),
    })
}

/// The last stage named `name` (case-insensitive): like BuildKit's name map, a later stage with
/// the same name shadows an earlier one.
fn stage_named(stages: &[super::Stage], name: &str) -> Option<usize> {
    stages.iter().rposition(|s| {
        s.name
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
    })
}

/// Resolves the `from=` of each `--mount` of RUN `ins` in Dockerfile stage `current`, like
/// BuildKit's `detectRunMount`: a stage name (not an index), else a named context, else an image.
fn resolve_mount_froms(
    ins: &Instruction,
    current: usize,
    stages: &[super::Stage],
    opts: &PlanOptions,
) -> Result<Vec<Option<RawFrom>>, Error> {
    ins.flag_values("mount")
        .map(|value| {
            let raw = mount::parse_mount(value, None)
                .map_err(|e| Error::at(ins.line, format!("--mount={value}: {e}")))?;
            if raw.from.is_empty() {
                return Ok(None);
            }
            let from = raw.from;
            Ok(Some(match stage_named(stages, &from) {
                Some(j) if j >= current => {
                    return Err(Error::at(
                        ins.line,
                        format!(
                            "--mount={value}: cannot mount from stage {from:?}, stage needs to be defined before current command"
                        ),
                    ));
                }
                Some(j) => RawFrom::Stage(j),
                None if opts.named_contexts.contains(&from) => RawFrom::Context(from),
                None => RawFrom::Image(from),
            }))
        })
        .collect()
}

fn is_builtin_arg(name: &str) -> bool {
    const PROXY: [&str; 5] = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "FTP_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
    ];
    PROXY.iter().any(|p| p.eq_ignore_ascii_case(name)) || name.starts_with("BUILDKIT_")
}

/// `system.NormalizeWorkdir` for Linux: relative paths are joined to the current directory.
fn normalize_workdir(current: &str, requested: &str) -> String {
    if requested.starts_with('/') {
        clean_path(requested)
    } else {
        clean_path(&format!("/{current}/{requested}"))
    }
}

/// BuildKit's `pathRelativeToWorkingDir` with `keepSlash`: absolute, trailing `/` kept.
fn dest_path(workdir: &str, dest: &str) -> String {
    let rel = if dest.is_empty() || dest == "." {
        "./"
    } else {
        dest
    };
    let joined = if rel.starts_with('/') {
        rel.to_string()
    } else {
        format!("{workdir}/{rel}")
    };
    let trailing = joined.ends_with('/') || joined.ends_with("/.");
    let mut cleaned = clean_path(&format!("/{joined}"));
    if trailing && !cleaned.ends_with('/') {
        cleaned.push('/');
    }
    cleaned
}

fn uppercase_cmd(s: &str) -> String {
    match s.split_once(' ') {
        Some((first, rest)) => format!("{} {rest}", first.to_uppercase()),
        None => s.to_uppercase(),
    }
}

fn summarize_heredoc(doc: &str) -> String {
    let doc = doc.trim();
    let doc = doc.replace("\r\n", "\n");
    let mut lines = doc.split('\n');
    let first = lines.next().unwrap_or_default().to_string();
    if lines.next().is_some() {
        format!("{first}...")
    } else {
        first
    }
}

/// Go's `strconv.Quote`.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `fmt.Sprintf("%q", []string)`.
fn go_quote_list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| go_quote(s))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Go's `time.Duration.String`.
fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    fn frac(value: u128, unit: u128) -> String {
        let whole = value / unit;
        let rest = value % unit;
        if rest == 0 {
            return whole.to_string();
        }
        let digits = unit.to_string().len() - 1;
        let s = format!("{rest:0digits$}");
        format!("{whole}.{}", s.trim_end_matches('0'))
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", frac(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", frac(nanos, 1_000_000));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = (nanos / 60_000_000_000) % 60;
    let secs = frac(nanos % 60_000_000_000, 1_000_000_000);
    if hours > 0 {
        format!("{hours}h{minutes}m{secs}s")
    } else if minutes > 0 {
        format!("{minutes}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// Go's `time.ParseDuration` (non-negative values).
fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("time: invalid duration {s:?}");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() || rest.starts_with('-') {
        return Err(err());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(err());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(format!("time: missing or unknown unit in duration {s:?}")),
        };
        rest = &rest[unit_len..];
        total += value * unit;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(err());
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

fn parse_port_range(ports: &str) -> Option<(u16, u16)> {
    match ports.split_once('-') {
        None => ports.parse().ok().map(|p| (p, p)),
        Some((a, b)) => {
            let (a, b): (u16, u16) = (a.parse().ok()?, b.parse().ok()?);
            (a <= b).then_some((a, b))
        }
    }
}

/// BuildKit's `parsePortSpec`: `[ip:][hostPort:]port[-end][/proto]` into `port/proto` entries.
fn parse_port_spec(raw: &str) -> Result<Vec<String>, String> {
    let parts: Vec<&str> = raw.split(':').collect();
    let (ip, container) = match parts.len() {
        1 => (String::new(), parts[0]),
        n => (parts[..n - 2].join(":"), parts[n - 1]),
    };
    let (port, proto) = container.split_once('/').unwrap_or((container, ""));
    if port.is_empty() {
        return Err(format!("no port specified: {container}<empty>"));
    }
    let proto = match proto.to_lowercase().as_str() {
        "" => "tcp".to_string(),
        p @ ("tcp" | "udp" | "sctp") => p.to_string(),
        p => return Err(format!("invalid proto: {p}")),
    };
    if !ip.is_empty() {
        let bare = ip.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("invalid IP address: {ip}"));
        }
    }
    let (start, end) =
        parse_port_range(port).ok_or_else(|| format!("invalid containerPort: {port}"))?;
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

fn is_valid_signal(raw: &str) -> bool {
    const NAMES: [&str; 34] = [
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
    ];
    if let Ok(n) = raw.parse::<i64>() {
        return n > 0;
    }
    let upper = raw.to_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if NAMES.contains(&name) {
        return true;
    }
    let rt = |prefix: &str, max: u32| {
        name.strip_prefix(prefix)
            .is_some_and(|n| n.is_empty() || n.parse::<u32>().is_ok_and(|v| v <= max))
    };
    rt("RTMIN+", 15) || rt("RTMAX-", 14) || name == "RTMIN" || name == "RTMAX"
}

/// An `ONBUILD` trigger as the instruction it runs (at `line`, the FROM that runs it). Like
/// BuildKit: one instruction, not ONBUILD, FROM or MAINTAINER; here also without `--from` and
/// mounts from other stages, whose dependencies the plan would not know.
fn parse_trigger(trigger: &str, line: usize) -> Result<Instruction, Error> {
    let df = super::parse::parse(&format!("FROM scratch\n{trigger}\n"))
        .map_err(|e| Error::at(line, format!("ONBUILD {trigger}: {}", e.message())))?;
    let mut instructions = match df.stages.as_slice() {
        [stage] => stage.instructions.clone(),
        _ => {
            return Err(Error::at(
                line,
                format!("ONBUILD {trigger}: FROM isn't allowed as an ONBUILD trigger"),
            ));
        }
    };
    if instructions.len() != 1 {
        return Err(Error::at(
            line,
            format!("ONBUILD {trigger}: an onbuild trigger should be a single expression"),
        ));
    }
    let mut ins = instructions.remove(0);
    match &ins.kind {
        InstructionKind::Onbuild(_) => {
            return Err(Error::at(
                line,
                "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
            ));
        }
        InstructionKind::Maintainer(_) => {
            return Err(Error::at(
                line,
                "MAINTAINER isn't allowed as an ONBUILD trigger",
            ));
        }
        _ => {}
    }
    if ins.flag("from").is_some() || ins.flag_values("mount").any(|m| m.contains("from=")) {
        return Err(Error::at(
            line,
            format!(
                "ONBUILD {trigger}: triggers reading another stage or image (--from, --mount from=) are not supported; put the instruction in the Dockerfile instead"
            ),
        ));
    }
    ins.line = line;
    Ok(ins)
}

fn is_url(src: &str) -> bool {
    src.starts_with("http://") || src.starts_with("https://")
}

fn is_git(src: &str) -> bool {
    src.starts_with("git://")
        || src.starts_with("git@")
        || src.starts_with("ssh://")
        || (is_url(src)
            && src
                .split(['?', '#'])
                .next()
                .is_some_and(|s| s.ends_with(".git")))
}

struct StageDispatch<'p> {
    escape: char,
    opts: &'p PlanOptions,
    globals: &'p EnvList,
    declared_args: &'p mut BTreeSet<String>,
    state: &'p mut State,
    steps: Vec<Step>,
    history: Vec<HistoryEntry>,
    cmd_index: usize,
    cmd_set: bool,
    /// The resolved `from=` of each `--mount` of the instruction being dispatched.
    mount_from: Vec<Option<CopyFrom>>,
}

impl StageDispatch<'_> {
    fn lex(&self) -> Lex {
        Lex {
            max_word: self.opts.limits.word_size,
            ..Lex::new(self.escape)
        }
    }

    /// Refuses an environment larger than the word-size limit: each value is bounded by it,
    /// but a hostile Dockerfile could otherwise set many variables to one huge value.
    /// The working directory so far (`/` when none was set).
    fn workdir(&self) -> String {
        self.state
            .config
            .workdir
            .clone()
            .unwrap_or_else(|| "/".into())
    }

    fn check_env_size(&self) -> Result<(), Error> {
        let limit = self.opts.limits.word_size;
        if self.state.env.bytes() <= limit && self.state.config_env.bytes() <= limit {
            return Ok(());
        }
        Err(Error::general(format!(
            "the environment of this stage ({} variables) is larger than the word-size limit of {limit} bytes; raise it with --limit word-size=N if this Dockerfile is trusted",
            self.state.env.len().max(self.state.config_env.len())
        )))
    }

    /// Expands `word` with the current env, like BuildKit's single-word expansion.
    fn expand(&self, word: &str) -> Result<String, Error> {
        let state = &*self.state;
        self.lex()
            .process_word(word, &|n| state.get(n))
            .map_err(Error::general)
    }

    fn display(&self, original: &str, raw_quotes: bool) -> String {
        let state = &*self.state;
        self.display_with(original, raw_quotes, &|n| state.get(n))
    }

    fn display_with(
        &self,
        original: &str,
        raw_quotes: bool,
        vars: &dyn Fn(&str) -> Option<String>,
    ) -> String {
        let lex = Lex {
            raw_quotes,
            skip_unset_env: raw_quotes,
            ..self.lex()
        };
        uppercase_cmd(
            &lex.process_word(original, vars)
                .unwrap_or_else(|_| original.to_string()),
        )
    }

    fn shell(&self) -> Vec<String> {
        self.state
            .config
            .shell
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    fn with_shell(&self, cmd: &CommandLine) -> Vec<String> {
        match cmd {
            CommandLine::Exec(v) => v.clone(),
            CommandLine::Shell(s) => {
                let mut v = self.shell();
                v.push(s.clone());
                v
            }
        }
    }

    fn commit(&mut self, created_by: String, step: Option<usize>) {
        self.history.push(HistoryEntry {
            created_by,
            empty_layer: step.is_none(),
            step,
        });
    }

    fn push_step(&mut self, ins: &Instruction, display: String, op: Op) -> usize {
        self.cmd_index += 1;
        self.steps.push(Step {
            line: ins.line,
            number: self.cmd_index,
            display,
            op,
            env: self.state.env.to_vec(),
            workdir: self.workdir(),
            user: self.state.config.user.clone(),
            shell: self.shell(),
            platform: PLATFORM.into(),
        });
        self.steps.len() - 1
    }

    fn unsupported(ins: &Instruction, what: &str, hint: &str) -> Error {
        Error::at(
            ins.line,
            format!("{what} is not supported by buildcache: {hint}"),
        )
    }

    /// Dispatches the base's ONBUILD triggers; their steps show as `ONBUILD <instruction>`.
    fn dispatch_triggers(&mut self, triggers: &[Instruction]) -> Result<(), Error> {
        for ins in triggers {
            let n_steps = self.steps.len();
            self.dispatch(ins, CopyFrom::Context)
                .map_err(|e| e.or_line(ins.line))?;
            for step in &mut self.steps[n_steps..] {
                step.display = format!("ONBUILD {}", step.display);
            }
        }
        Ok(())
    }

    fn dispatch(&mut self, ins: &Instruction, from: CopyFrom) -> Result<(), Error> {
        match &ins.kind {
            InstructionKind::Arg(decls) => self.dispatch_arg(decls),
            InstructionKind::Env(pairs) => self.dispatch_env(pairs),
            InstructionKind::Label(pairs) => self.dispatch_label(pairs),
            InstructionKind::Maintainer(m) => {
                self.state.config.author = Some(m.clone());
                self.commit(format!("MAINTAINER {m}"), None);
                Ok(())
            }
            InstructionKind::Run(cmd) => self.dispatch_run(ins, cmd),
            InstructionKind::Copy(args) => self.dispatch_copy(ins, args, from, false),
            InstructionKind::Add(args) => self.dispatch_copy(ins, args, CopyFrom::Context, true),
            InstructionKind::Workdir(path) => self.dispatch_workdir(ins, path),
            InstructionKind::User(user) => {
                let user = self.expand(user)?;
                self.commit(format!("USER {user}"), None);
                self.state.config.user = Some(user);
                Ok(())
            }
            InstructionKind::StopSignal(sig) => self.dispatch_stopsignal(ins, sig),
            InstructionKind::Volume(vols) => self.dispatch_volume(ins, vols),
            InstructionKind::Expose(ports) => self.dispatch_expose(ins, ports),
            InstructionKind::Shell(shell) => {
                self.commit(format!("SHELL [{}]", shell.join(" ")), None);
                self.state.config.shell = Some(shell.clone());
                Ok(())
            }
            InstructionKind::Cmd(cmd) => {
                let args = self.with_shell(cmd);
                self.commit(format!("CMD {}", go_quote_list(&args)), None);
                self.state.config.cmd = Some(args);
                self.cmd_set = true;
                Ok(())
            }
            InstructionKind::Entrypoint(cmd) => {
                self.dispatch_entrypoint(cmd);
                Ok(())
            }
            InstructionKind::Healthcheck(spec) => self.dispatch_healthcheck(ins, spec),
            InstructionKind::Onbuild(trigger) => {
                parse_trigger(trigger, ins.line)?;
                self.state.config.on_build.push(trigger.clone());
                Ok(())
            }
        }
    }

    fn dispatch_env(&mut self, pairs: &[(String, String)]) -> Result<(), Error> {
        let expanded = self.expand_pairs(pairs)?;
        let mut msg = String::from("ENV");
        for (k, v) in &expanded {
            self.state.env.set_last(k, v);
            self.state.config_env.set(k, v);
            msg.push_str(&format!(" {k}={v}"));
        }
        self.check_env_size()?;
        self.commit(msg, None);
        Ok(())
    }

    fn dispatch_label(&mut self, pairs: &[(String, String)]) -> Result<(), Error> {
        let expanded = self.expand_pairs(pairs)?;
        let mut msg = String::from("LABEL");
        for (k, v) in expanded {
            msg.push_str(&format!(" {k}={v}"));
            self.state.config.labels.insert(k, v);
        }
        self.commit(msg, None);
        Ok(())
    }

    /// WORKDIR is a step (it creates the directory) unless it is `/`.
    fn dispatch_workdir(&mut self, ins: &Instruction, path: &str) -> Result<(), Error> {
        let path = self.expand(path)?;
        let current = self.workdir();
        let wd = normalize_workdir(&current, &path);
        self.state.config.workdir = Some(wd.clone());
        if wd == "/" {
            self.commit(format!("WORKDIR {wd}"), None);
        } else {
            let display = self.display(&ins.original, false);
            let idx = self.push_step(ins, display, Op::Workdir { path: wd.clone() });
            self.commit(format!("WORKDIR {wd}"), Some(idx));
        }
        Ok(())
    }

    fn dispatch_stopsignal(&mut self, ins: &Instruction, sig: &str) -> Result<(), Error> {
        let sig = self.expand(sig)?;
        if !is_valid_signal(&sig) {
            return Err(Error::at(
                ins.line,
                format!("invalid signal: {sig} (use a name like SIGTERM or a number)"),
            ));
        }
        self.commit(format!("STOPSIGNAL {sig}"), None);
        self.state.config.stop_signal = Some(sig);
        Ok(())
    }

    fn dispatch_volume(&mut self, ins: &Instruction, vols: &[String]) -> Result<(), Error> {
        let mut expanded = Vec::new();
        for v in vols {
            let v = self.expand(v)?;
            if v.is_empty() {
                return Err(Error::at(
                    ins.line,
                    "VOLUME specified can not be an empty string",
                ));
            }
            expanded.push(v);
        }
        self.commit(format!("VOLUME [{}]", expanded.join(" ")), None);
        self.state.config.volumes.extend(expanded);
        Ok(())
    }

    /// EXPOSE: each word expands to words, each a port spec that may be a range.
    fn dispatch_expose(&mut self, ins: &Instruction, ports: &[String]) -> Result<(), Error> {
        let mut specs = Vec::new();
        for p in ports {
            let state = &*self.state;
            let words = self
                .lex()
                .process_words(p, &|n| state.get(n))
                .map_err(Error::general)?;
            for w in words {
                specs.extend(
                    parse_port_spec(&w)
                        .map_err(|e| Error::at(ins.line, format!("EXPOSE {w}: {e}")))?,
                );
            }
        }
        self.commit(format!("EXPOSE [{}]", specs.join(" ")), None);
        self.state.config.exposed_ports.extend(specs);
        Ok(())
    }

    /// ENTRYPOINT (`[]` clears it); it also clears a CMD inherited from the base.
    fn dispatch_entrypoint(&mut self, cmd: &CommandLine) {
        let args = match cmd {
            CommandLine::Exec(v) if v.is_empty() => None,
            other => Some(self.with_shell(other)),
        };
        self.commit(
            format!(
                "ENTRYPOINT {}",
                go_quote_list(args.as_deref().unwrap_or_default())
            ),
            None,
        );
        self.state.config.entrypoint = args;
        if !self.cmd_set {
            self.state.config.cmd = None;
        }
    }

    fn dispatch_healthcheck(
        &mut self,
        ins: &Instruction,
        spec: &HealthcheckSpec,
    ) -> Result<(), Error> {
        let hc = self.healthcheck(ins, spec)?;
        self.commit(
            format!(
                "HEALTHCHECK {{Test:[{}] Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
                hc.test.join(" "),
                go_duration(hc.interval),
                go_duration(hc.timeout),
                go_duration(hc.start_period),
                go_duration(hc.start_interval),
                hc.retries
            ),
            None,
        );
        self.state.config.healthcheck = Some(hc);
        Ok(())
    }

    fn expand_pairs(&self, pairs: &[(String, String)]) -> Result<Vec<(String, String)>, Error> {
        pairs
            .iter()
            .map(|(k, v)| Ok((self.expand(k)?, self.expand(v)?)))
            .collect()
    }

    fn dispatch_arg(&mut self, decls: &[ArgDecl]) -> Result<(), Error> {
        let mut commits = Vec::new();
        for decl in decls {
            self.declared_args.insert(decl.name.clone());
            let given = self.opts.build_args.get(&decl.name);
            let value = match (given, &decl.default) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(default)) => Some(self.expand(default)?),
                (None, None) => lookup_in(self.globals, &decl.name),
            };
            if let Some(v) = &value {
                self.state.env.set_last(&decl.name, v);
            }
            commits.push(match &value {
                Some(v) => format!("{}={v}", decl.name),
                None => decl.name.clone(),
            });
            self.state.build_args.push((decl.name.clone(), value));
        }
        self.check_env_size()?;
        self.commit(format!("ARG {}", commits.join(" ")), None);
        Ok(())
    }

    fn healthcheck(&self, ins: &Instruction, spec: &HealthcheckSpec) -> Result<Healthcheck, Error> {
        let cmd = match spec {
            HealthcheckSpec::None => {
                return Ok(Healthcheck {
                    test: vec!["NONE".into()],
                    ..Healthcheck::default()
                });
            }
            HealthcheckSpec::Cmd(cmd) => cmd,
        };
        let test = match cmd {
            CommandLine::Exec(v) => std::iter::once("CMD".to_string())
                .chain(v.iter().cloned())
                .collect(),
            CommandLine::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
        };
        let duration = |name: &str| -> Result<Duration, Error> {
            let Some(v) = ins.flag(name) else {
                return Ok(Duration::ZERO);
            };
            if v.is_empty() {
                return Ok(Duration::ZERO);
            }
            let d =
                parse_go_duration(v).map_err(|e| Error::at(ins.line, format!("--{name}: {e}")))?;
            if !d.is_zero() && d < Duration::from_millis(1) {
                return Err(Error::at(
                    ins.line,
                    format!("Interval \"{name}\" cannot be less than 1ms"),
                ));
            }
            Ok(d)
        };
        let retries = match ins.flag("retries") {
            None | Some("") => 0,
            Some(v) => v.parse::<u32>().map_err(|_| {
                Error::at(
                    ins.line,
                    format!("--retries must be a non-negative integer, got {v:?}"),
                )
            })?,
        };
        Ok(Healthcheck {
            test,
            interval: duration("interval")?,
            timeout: duration("timeout")?,
            start_period: duration("start-period")?,
            start_interval: duration("start-interval")?,
            retries,
        })
    }

    /// The typed `--mount`s, `--network` and `--security` of a RUN, expanded with the stage's env.
    fn run_options(&self, ins: &Instruction) -> Result<(Vec<Mount>, Network, Security), Error> {
        if ins.flag("device").is_some() {
            return Err(Self::unsupported(
                ins,
                "RUN --device",
                "buildcache has no CDI devices; remove the flag",
            ));
        }
        let workdir = self.workdir();
        let namespace = self
            .opts
            .build_args
            .get("BUILDKIT_CACHE_MOUNT_NS")
            .cloned()
            .unwrap_or_default();
        let expand = |word: &str| self.expand(word).map_err(|e| e.message().to_string());
        let mut mounts = Vec::new();
        let mut n_ssh = 0;
        for (n, value) in ins.flag_values("mount").enumerate() {
            let in_flag = |e: String| Error::at(ins.line, format!("--mount={value}: {e}"));
            let raw = mount::parse_mount(value, Some(&expand)).map_err(in_flag)?;
            let from = self.mount_from.get(n).cloned().flatten();
            let typed = mount::resolve(raw, from, &workdir, &namespace, n_ssh).map_err(in_flag)?;
            if let Mount::Ssh(_) = typed {
                n_ssh += 1;
            }
            mounts.push(typed);
        }
        let network = match ins.flag("network") {
            None => Network::Default,
            Some(v) => {
                Network::parse(v).map_err(|e| Error::at(ins.line, format!("--network={v}: {e}")))?
            }
        };
        let security = match ins.flag("security") {
            None => Security::Sandbox,
            Some(v) => Security::parse(v)
                .map_err(|e| Error::at(ins.line, format!("--security={v}: {e}")))?,
        };
        Ok((mounts, network, security))
    }

    fn dispatch_run(&mut self, ins: &Instruction, cmd: &CommandLine) -> Result<(), Error> {
        let (mounts, network, security) = self.run_options(ins)?;
        let mut display_source = ins.original.clone();
        let mut heredocs = Vec::new();
        let command = match cmd {
            CommandLine::Exec(v) => CommandLine::Exec(v.clone()),
            CommandLine::Shell(s) if ins.heredocs.is_empty() => CommandLine::Shell(s.clone()),
            CommandLine::Shell(s) => {
                for h in &ins.heredocs {
                    let content = if h.chomp {
                        chomp_heredoc(&h.content)
                    } else {
                        h.content.clone()
                    };
                    heredocs.push(Heredoc {
                        content,
                        ..h.clone()
                    });
                }
                display_source.push_str(&format!(
                    " ({})",
                    summarize_heredoc(&ins.heredocs[0].content)
                ));
                if parse_heredoc(s).ok().flatten().is_some() {
                    let first = &mut heredocs[0];
                    if first.content.starts_with("#!") {
                        let path = format!("/dev/pipes/{}", first.name);
                        first.mount_path = Some(path.clone());
                        CommandLine::Shell(path)
                    } else {
                        CommandLine::Shell(first.content.clone())
                    }
                } else {
                    let mut script = s.clone();
                    for h in &ins.heredocs {
                        script.push('\n');
                        script.push_str(&h.content);
                        script.push_str(&h.name);
                    }
                    CommandLine::Shell(script)
                }
            }
        };
        // Like BuildKit, variables that name a secret's env show as `****` in the progress text.
        let secret_envs: BTreeSet<&str> = mounts
            .iter()
            .filter_map(|m| match m {
                Mount::Secret(mount::SecretMount { env: Some(env), .. }) => Some(env.as_str()),
                _ => None,
            })
            .collect();
        let state = &*self.state;
        let display = self.display_with(&display_source, true, &|n| {
            if secret_envs.contains(n) {
                Some("****".to_owned())
            } else {
                state.get(n)
            }
        });
        let args = self.with_shell(&command);
        let created_by = format!("RUN {} # buildkit", self.run_command_string(&args));
        let ssh_sock = mounts.iter().find_map(|m| match m {
            Mount::Ssh(s) => Some(s.target.clone()),
            _ => None,
        });
        let idx = self.push_step(
            ins,
            display,
            Op::Run {
                command,
                heredocs,
                mounts,
                network,
                security,
            },
        );
        // BuildKit's exec op points SSH_AUTH_SOCK at the first agent socket unless it is set.
        if let Some(sock) = ssh_sock {
            let env = &mut self.steps[idx].env;
            if !env.iter().any(|(k, _)| k == "SSH_AUTH_SOCK") {
                env.push(("SSH_AUTH_SOCK".into(), sock));
            }
        }
        self.commit(created_by, Some(idx));
        Ok(())
    }

    /// BuildKit's `runCommandString`: `|N K=V ... args`.
    fn run_command_string(&self, args: &[String]) -> String {
        let mut build_env = EnvList::default();
        for (key, value) in &self.state.build_args {
            let v = self
                .state
                .get(key)
                .or_else(|| value.clone())
                .unwrap_or_default();
            build_env.set(key, &v);
        }
        let mut parts: Vec<String> = Vec::new();
        if !build_env.is_empty() {
            parts.push(format!("|{}", build_env.len()));
            parts.extend(build_env.iter().map(|(k, v)| format!("{k}={v}")));
        }
        parts.extend(args.iter().cloned());
        parts.join(" ")
    }

    fn dispatch_copy(
        &mut self,
        ins: &Instruction,
        args: &[String],
        from: CopyFrom,
        is_add: bool,
    ) -> Result<(), Error> {
        let keyword = if is_add { "ADD" } else { "COPY" };
        Self::check_copy_flags(ins, is_add)?;
        let Some((dest_raw, srcs)) = args.split_last().filter(|(_, srcs)| !srcs.is_empty()) else {
            return Err(Error::at(
                ins.line,
                format!("{keyword} requires at least two arguments: sources and a destination"),
            ));
        };
        let sources = self.copy_sources(ins, srcs, is_add)?;
        let dest_expanded = self.expand(dest_raw)?;
        let dest = dest_path(&self.workdir(), &dest_expanded);
        let chown = self.non_empty_flag(ins, "chown")?;
        let chmod_raw = self.non_empty_flag(ins, "chmod")?;
        let chmod = match &chmod_raw {
            None => None,
            Some(c) => Some(parse_chmod(ins.line, c)?),
        };
        let link = ins.flag("link") == Some("true");
        let downloads = sources.downloads;
        if !downloads.is_empty() && downloads.len() != sources.paths.len() {
            return Err(Error::at(
                ins.line,
                "ADD mixing URLs with local files is not supported: split it into one ADD for the URLs and one for the files",
            ));
        }
        let checksum = self.add_checksum(ins, !downloads.is_empty())?;
        let exclude = self.copy_excludes(ins, keyword)?;
        let parents = !is_add && ins.flag("parents") == Some("true");

        let mut msg = String::from(keyword);
        if parents {
            msg.push_str(" --parents");
        }
        if let Some(c) = &chown {
            msg.push_str(&format!(" --chown={c}"));
        }
        if let Some(c) = &chmod_raw {
            msg.push_str(&format!(" --chmod={c}"));
        }
        msg.extend(sources.history);
        msg.push_str(&format!(" {dest_expanded} # buildkit"));

        let display = self.display(&ins.original, false);
        let mut paths = sources.paths;
        paths.extend(sources.inline);
        let op = Op::Copy(CopyOp {
            sources: paths,
            dest,
            from,
            chown,
            chmod,
            link,
            is_add,
            exclude,
            downloads,
            checksum,
            parents,
        });
        let idx = self.push_step(ins, display, op);
        self.commit(msg, Some(idx));
        Ok(())
    }

    /// The flags COPY and ADD take; any other is refused with the list.
    fn check_copy_flags(ins: &Instruction, is_add: bool) -> Result<(), Error> {
        let keyword = if is_add { "ADD" } else { "COPY" };
        for flag in &ins.flags {
            match flag.name.as_str() {
                "from" | "chown" | "chmod" | "link" | "exclude" => {}
                "checksum" if is_add => {}
                "parents" if !is_add => {}
                other => {
                    return Err(Self::unsupported(
                        ins,
                        &format!("{keyword} --{other}"),
                        if is_add {
                            "remove the flag (supported: --chown, --chmod, --link, --exclude, --checksum)"
                        } else {
                            "remove the flag (supported: --from, --chown, --chmod, --link, --exclude, --parents)"
                        },
                    ));
                }
            }
        }
        Ok(())
    }

    /// The expanded sources of COPY or ADD `ins`: paths, URLs to download (ADD only; git and
    /// COPY of a URL are refused) and heredoc bodies.
    fn copy_sources(
        &self,
        ins: &Instruction,
        srcs: &[String],
        is_add: bool,
    ) -> Result<CopySources, Error> {
        let mut out = CopySources::default();
        for src in srcs {
            if let Some(h) = parse_heredoc(src).map_err(Error::general)? {
                out.inline.push(self.heredoc_source(ins, h)?);
                continue;
            }
            let path = self.expand(src)?;
            if is_add && is_url(&path) && !is_git(&path) {
                let file_name = url_file_name(&path).to_owned();
                out.history.push(format!(" {path}"));
                out.paths.push(CopySource::Path(file_name.clone()));
                out.downloads.push(Download {
                    url: path,
                    file_name,
                });
                continue;
            }
            if is_url(&path) || is_git(&path) {
                let what = if is_add {
                    "ADD from a git repository"
                } else {
                    "COPY from a URL"
                };
                return Err(Self::unsupported(
                    ins,
                    what,
                    &format!(
                        "builds have no network access; download {path} into the build context and COPY it"
                    ),
                ));
            }
            out.history.push(format!(" {path}"));
            out.paths.push(CopySource::Path(path));
        }
        for source in &out.inline {
            if let CopySource::Inline { name, .. } = source {
                out.history.push(format!(" <<{name}"));
            }
        }
        Ok(out)
    }

    /// A heredoc source's body: tabs chomped for `<<-`, variables expanded unless the
    /// delimiter was quoted (quotes in the body are kept, as BuildKit does).
    fn heredoc_source(&self, ins: &Instruction, h: Heredoc) -> Result<CopySource, Error> {
        let body = ins
            .heredocs
            .iter()
            .find(|d| d.name == h.name)
            .map(|d| d.content.clone())
            .unwrap_or_default();
        let body = if h.chomp { chomp_heredoc(&body) } else { body };
        let content = if h.expand {
            let lex = Lex {
                skip_process_quotes: true,
                escape: '\\',
                ..self.lex()
            };
            let state = &*self.state;
            lex.process_word(&body, &|n| state.get(n))
                .map_err(Error::general)?
        } else {
            body
        };
        Ok(CopySource::Inline {
            name: h.name,
            content,
        })
    }

    /// The expanded value of flag `name`, `None` when absent or empty.
    fn non_empty_flag(&self, ins: &Instruction, name: &str) -> Result<Option<String>, Error> {
        match ins.flag(name) {
            Some(c) if !c.is_empty() => Ok(Some(self.expand(c)?)),
            _ => Ok(None),
        }
    }

    /// ADD `--checksum`: only for URL sources, and only `sha256:<hex>`.
    fn add_checksum(
        &self,
        ins: &Instruction,
        has_downloads: bool,
    ) -> Result<Option<String>, Error> {
        let raw = match ins.flag("checksum") {
            None | Some("") => return Ok(None),
            Some(raw) => raw,
        };
        let value = self.expand(raw)?;
        if !has_downloads {
            return Err(Error::at(
                ins.line,
                format!(
                    "ADD --checksum={value}: a checksum can only be given for an http(s) URL source"
                ),
            ));
        }
        let valid = value.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        });
        if !valid {
            return Err(Error::at(
                ins.line,
                format!(
                    "ADD --checksum={value}: use sha256:<64 lowercase hex digits> (the only algorithm BuildKit supports for URLs)"
                ),
            ));
        }
        Ok(Some(value))
    }

    /// The `--exclude` patterns, expanded; each must be a valid, non-empty pattern.
    fn copy_excludes(&self, ins: &Instruction, keyword: &str) -> Result<Vec<String>, Error> {
        let mut exclude = Vec::new();
        for pattern in ins.flag_values("exclude") {
            let pattern = self.expand(pattern)?;
            if pattern.is_empty() {
                return Err(Error::at(
                    ins.line,
                    format!("{keyword} --exclude needs a pattern (--exclude=*.md)"),
                ));
            }
            if let Err(err) = super::IgnoreMatcher::from_patterns([pattern.as_str()]) {
                return Err(Error::at(
                    ins.line,
                    format!("{keyword} --exclude={pattern}: {}", err.message()),
                ));
            }
            exclude.push(pattern);
        }
        Ok(exclude)
    }
}

/// The sources of one COPY or ADD, as its step and its history entry want them.
#[derive(Default)]
struct CopySources {
    /// Context (or stage) paths; for ADD of URLs, the names of the downloaded files.
    paths: Vec<CopySource>,
    /// Heredoc bodies: they follow the paths.
    inline: Vec<CopySource>,
    /// The URLs ADD downloads.
    downloads: Vec<Download>,
    /// ` <source>` for each, paths first then `<<NAME`s, for the history entry.
    history: Vec<String>,
}

/// BuildKit names a downloaded file after the URL path's last element.
fn url_file_name(url: &str) -> &str {
    let url_path = url.split(['?', '#']).next().unwrap_or_default();
    url_path
        .splitn(4, '/')
        .nth(3)
        .and_then(|p| p.rsplit('/').next())
        .filter(|b| !b.is_empty() && *b != ".")
        .unwrap_or("__unnamed__")
}

/// `--chmod`: an octal mode up to 07777.
fn parse_chmod(line: usize, chmod: &str) -> Result<u32, Error> {
    match u32::from_str_radix(chmod, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(Error::at(
            line,
            format!(
                "invalid chmod parameter: '{chmod}'. it should be octal string and between 0 and 07777"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse;
    use super::*;

    fn plan_text(
        text: &str,
        build_args: &[(&str, &str)],
        target: Option<&str>,
    ) -> Result<Plan, Error> {
        let df = parse(text)?;
        let opts = PlanOptions {
            build_args: build_args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            target: target.map(String::from),
            ..PlanOptions::default()
        };
        plan(&df, &opts)
    }

    #[test]
    fn label_options_override_the_target_stages_labels_only() {
        let df = parse("FROM scratch AS a\nLABEL x=1 y=1\nFROM a\nLABEL x=2\n").expect("parses");
        let opts = PlanOptions {
            labels: BTreeMap::from([("x".into(), "cli".into()), ("z".into(), "3".into())]),
            ..PlanOptions::default()
        };
        let plan = plan(&df, &opts).expect("plans");
        let labels = |i: usize| plan.stages[i].config.labels.clone();
        assert_eq!(labels(0).get("x").map(String::as_str), Some("1"));
        assert_eq!(labels(1).get("x").map(String::as_str), Some("cli"));
        assert_eq!(labels(1).get("y").map(String::as_str), Some("1"));
        assert_eq!(labels(1).get("z").map(String::as_str), Some("3"));
        assert_eq!(
            plan.stages[1].history.len(),
            1,
            "no history entry for --label"
        );
    }

    fn ok(text: &str) -> Plan {
        plan_text(text, &[], None).expect("plans")
    }

    /// Every step of the plan as BuildKit prints it in progress output.
    fn progress_lines(plan: &Plan) -> Vec<String> {
        let mut lines = Vec::new();
        for stage in &plan.stages {
            if let Some(n) = stage.from_number() {
                lines.push(format!(
                    "{} {}",
                    stage.progress_prefix(n),
                    stage.from_display
                ));
            }
            for step in &stage.steps {
                lines.push(format!(
                    "{} {}",
                    stage.progress_prefix(step.number),
                    step.display
                ));
            }
        }
        lines
    }

    #[track_caller]
    fn check_error(text: &str, line: Option<usize>, contains: &str) {
        let err = plan_text(text, &[], None).expect_err("must fail");
        assert_eq!(err.line(), line, "{err}");
        assert!(
            err.message().contains(contains),
            "{err} should contain {contains:?}"
        );
    }

    /// `BUILDCACHE_FIXTURES` (set by `cargo xtask test`, which finds `../shared` from a worktree
    /// too), else `../shared` beside the checkout.
    fn fixture_dir() -> std::path::PathBuf {
        std::env::var_os("BUILDCACHE_FIXTURES").map_or_else(
            || {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../shared/fixtures/buildkit")
            },
            std::path::PathBuf::from,
        )
    }

    #[test]
    fn fixture_plan_matches_buildkit_progress() {
        let text =
            std::fs::read_to_string(fixture_dir().join("context/Dockerfile")).expect("fixture");
        let plan = ok(&text);
        let names: Vec<&str> = plan.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["base", "builder", "final"]);
        assert_eq!(plan.target, 2);
        assert_eq!(plan.stages[1].base, Base::Stage(0));
        assert_eq!(
            plan.stages[2].base,
            Base::Image("127.0.0.1:5001/busybox:latest".into())
        );
        let Op::Copy(copy) = &plan.stages[2].steps[1].op else {
            panic!("COPY expected")
        };
        assert_eq!(copy.from, CopyFrom::Stage(1));
        assert_eq!(copy.dest, "/app/");
        assert_eq!(copy.sources, [CopySource::Path("/out/".into())]);

        // Every "#N [stage n/m] ..." line of the real BuildKit run, without the resolved digest.
        let progress =
            std::fs::read_to_string(fixture_dir().join("progress/b-cold-export-local-max.txt"))
                .expect("fixture");
        let mut expected: Vec<String> = progress
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(_, rest)| rest))
            .filter(|rest| rest.starts_with('[') && !rest.starts_with("[internal]"))
            .map(|rest| rest.split('@').next().unwrap_or(rest).to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut got = progress_lines(&plan);
        // BuildKit only shows one FROM vertex per distinct image; both base and final use busybox.
        got.retain(|l| l != "[final 1/4] FROM 127.0.0.1:5001/busybox:latest");
        got.sort();
        expected.sort();
        assert_eq!(got, expected);

        let final_stage = &plan.stages[2];
        assert_eq!(
            final_stage.config.cmd,
            Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                "cat /app/artifact.txt".into()
            ])
        );
        assert_eq!(
            final_stage
                .history
                .iter()
                .map(|h| (h.created_by.as_str(), h.empty_layer))
                .collect::<Vec<_>>(),
            [
                ("COPY app.conf /etc/app.conf # buildkit", false),
                ("COPY /out/ /app/ # buildkit", false),
                (
                    "RUN /bin/sh -c wc -c /app/artifact.txt > /app/size.txt # buildkit",
                    false
                ),
                ("CMD [\"/bin/sh\" \"-c\" \"cat /app/artifact.txt\"]", true),
            ]
        );
        assert_eq!(final_stage.history[2].step, Some(2));
        assert!(plan.unused_build_args.is_empty());
    }

    #[test]
    fn issue_9_a_scratch_stage_has_working_dir_root_as_buildkits_empty_image() {
        let plan = ok("FROM scratch\nCOPY a /a\n");
        assert_eq!(plan.stages[0].config.workdir.as_deref(), Some("/"));
        let plan = ok("FROM alpine\nCOPY a /a\n");
        assert_eq!(
            plan.stages[0].config.workdir, None,
            "an image keeps its own"
        );
    }

    #[test]
    fn unused_stages_are_not_planned_and_targets_select() {
        let text =
            "FROM alpine AS a\nRUN a\nFROM alpine AS b\nRUN b\nFROM a AS c\nCOPY --from=1 /x /y\n";
        let plan = ok(text);
        assert_eq!(
            plan.stages
                .iter()
                .map(|s| s.dockerfile_index)
                .collect::<Vec<_>>(),
            [0, 1, 2]
        );
        let plan = plan_text(text, &[], Some("B")).expect("plans");
        assert_eq!(plan.stages.len(), 1);
        assert_eq!(plan.stages[0].name, "b");
        let err = plan_text(text, &[], Some("nope")).expect_err("unknown target");
        assert!(
            err.to_string()
                .contains("target stage \"nope\" could not be found; the stages are: a, b, c"),
            "{err}"
        );
        // Unused stages may use unsupported features.
        let plan = ok("FROM alpine AS x\nRUN --device=gpu make\nFROM alpine\nRUN ok\n");
        assert_eq!(plan.stages.len(), 1);
        assert_eq!(plan.stages[0].name, "stage-1");
    }

    #[test]
    fn single_stage_progress_has_no_name() {
        let plan = ok("FROM busybox\nWORKDIR /app\nRUN true\n");
        assert_eq!(
            progress_lines(&plan),
            [
                "[1/3] FROM docker.io/library/busybox:latest",
                "[2/3] WORKDIR /app",
                "[3/3] RUN true"
            ]
        );
        // BuildKit's own base image build: scratch is no step.
        assert_eq!(
            progress_lines(&ok("FROM scratch\nCOPY rootfs/ /\n")),
            ["[1/1] COPY rootfs/ /"]
        );
        // A COPY --from of an image makes BuildKit name the stage.
        let plan = ok("FROM busybox\nCOPY --from=alpine /a /b\n");
        assert_eq!(plan.stages[0].progress_name.as_deref(), Some("stage-0"));
        let Op::Copy(copy) = &plan.stages[0].steps[0].op else {
            panic!("COPY expected")
        };
        assert_eq!(copy.from, CopyFrom::Image("alpine".into()));
        assert_eq!(
            plan.external_refs(),
            BTreeSet::from(["alpine".to_string(), "busybox".to_string()])
        );
        assert_eq!(plan.target_stage().name, "stage-0");
    }

    #[test]
    fn progress_numbers_pad_like_buildkit() {
        let mut text = String::from("FROM scratch AS s\n");
        for i in 0..12 {
            text.push_str(&format!("COPY f{i} /\n"));
        }
        let plan = ok(&text);
        assert_eq!(plan.stages[0].progress_prefix(3), "[ 3/12]");
        let plan = plan_text(&format!("{text}FROM scratch AS t\n"), &[], Some("s")).expect("plans");
        assert_eq!(plan.stages[0].progress_prefix(3), "[s  3/12]");
        assert_eq!(plan.stages[0].from_number(), None);
        // WORKDIR / counts in the total but makes no step.
        let plan = ok("FROM scratch\nWORKDIR /\nCOPY a /\n");
        assert_eq!(plan.stages[0].step_total, 2);
        assert_eq!(plan.stages[0].steps.len(), 1);
        assert_eq!(plan.stages[0].steps[0].number, 1);
    }

    #[test]
    fn displays_keep_text_and_expand_set_variables() {
        let plan = ok(
            "FROM scratch\nARG V=1\nENV E=e\nrun echo \"$V\" '$E' $UNSET \\\n  && true\nCOPY --chown=$E \"a\" ${E}/\nWORKDIR /w/$E\n",
        );
        let displays: Vec<&str> = plan.stages[0]
            .steps
            .iter()
            .map(|s| s.display.as_str())
            .collect();
        assert_eq!(
            displays,
            [
                "RUN echo \"1\" '$E' $UNSET   && true",
                "COPY --chown=e a e/",
                "WORKDIR /w/e"
            ]
        );
    }

    #[test]
    fn arg_scoping_and_build_args() {
        let text = "ARG BASE=alpine\nARG G=global\nFROM $BASE AS s\nARG G\nARG L=local\nRUN echo\nFROM ${BASE}:3 AS t\nCOPY --from=s /x /y\nRUN echo $G\n";
        let plan = ok(text);
        assert_eq!(plan.stages[0].base, Base::Image("alpine".into()));
        assert_eq!(plan.stages[1].base, Base::Image("alpine:3".into()));
        let env_of = |stage: &PlannedStage, step: usize| stage.steps[step].env.clone();
        let env = env_of(&plan.stages[0], 0);
        assert!(env.contains(&("G".into(), "global".into())), "{env:?}");
        assert!(env.contains(&("L".into(), "local".into())));
        assert!(env.contains(&("PATH".into(), DEFAULT_PATH.into())));
        // Global ARGs are not in scope inside a stage without a redeclaration.
        let env = env_of(&plan.stages[1], 1);
        assert!(!env.iter().any(|(k, _)| k == "G"), "{env:?}");
        // ARG values are env for RUN but not image config env.
        assert!(!plan.stages[0].config.env.iter().any(|(k, _)| k == "L"));
        assert_eq!(
            plan.stages[0].history[2].created_by,
            "RUN |2 G=global L=local /bin/sh -c echo # buildkit"
        );

        let plan = plan_text(
            text,
            &[
                ("BASE", "debian"),
                ("L", "cli"),
                ("NOPE", "x"),
                ("HTTP_PROXY", "p"),
            ],
            None,
        )
        .expect("plans");
        assert_eq!(plan.stages[0].base, Base::Image("debian".into()));
        assert!(
            plan.stages[0].steps[0]
                .env
                .contains(&("L".into(), "cli".into()))
        );
        assert_eq!(plan.unused_build_args, ["NOPE"]);

        // Platform args need a declaration inside the stage.
        let plan = ok(
            "FROM --platform=$BUILDPLATFORM scratch\nARG TARGETARCH\nARG TARGETOS TARGETPLATFORM\nRUN echo\n",
        );
        let env = &plan.stages[0].steps[0].env;
        assert!(env.contains(&("TARGETARCH".into(), "amd64".into())));
        assert!(env.contains(&("TARGETOS".into(), "linux".into())));
        assert!(env.contains(&("TARGETPLATFORM".into(), "linux/amd64".into())));
        assert_eq!(plan.stages[0].platform.as_deref(), Some("linux/amd64"));

        // Stage inheritance carries ENV and ARG values.
        let plan = ok("FROM scratch AS a\nARG X=1\nENV Y=2\nFROM a\nRUN echo\n");
        let env = &plan.stages[1].steps[0].env;
        assert!(env.contains(&("X".into(), "1".into())) && env.contains(&("Y".into(), "2".into())));
        assert_eq!(
            plan.stages[1].config.env,
            [
                ("PATH".to_string(), DEFAULT_PATH.to_string()),
                ("Y".into(), "2".into())
            ]
        );
    }

    #[test]
    fn env_and_config_instructions() {
        let plan = ok(concat!(
            "FROM scratch\n",
            "ENV A=1 B=\"two words\" C=$A\n",
            "ENV A=3\n",
            "ENV D ${A:-x}-${NOPE:-y}\n",
            "LABEL \"org.x\"=\"v $A\" plain=1\n",
            "USER 1000:1000\n",
            "WORKDIR app\n",
            "WORKDIR ../srv\n",
            "EXPOSE 80 8000-8001/udp\n",
            "VOLUME /data [\"/x\"]\n",
            "STOPSIGNAL SIGINT\n",
            "SHELL [\"/bin/bash\", \"-eu\", \"-c\"]\n",
            "CMD run it\n",
            "ENTRYPOINT [\"/e\"]\n",
            "HEALTHCHECK --interval=1m30s --retries=3 CMD curl -f x\n",
            "MAINTAINER me\n",
        ));
        let c = &plan.stages[0].config;
        assert_eq!(
            c.env,
            [
                ("PATH".to_string(), DEFAULT_PATH.to_string()),
                ("A".into(), "3".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "".into()),
                ("D".into(), "3-y".into()),
            ]
        );
        assert_eq!(c.labels.get("org.x").map(String::as_str), Some("v 3"));
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.workdir.as_deref(), Some("/srv"));
        assert_eq!(
            c.exposed_ports.iter().collect::<Vec<_>>(),
            ["80/tcp", "8000/udp", "8001/udp"]
        );
        // Not JSON as a whole: split on whitespace, then quotes are removed by expansion.
        assert_eq!(c.volumes.iter().collect::<Vec<_>>(), ["/data", "[/x]"]);
        assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(
            c.shell,
            Some(vec!["/bin/bash".into(), "-eu".into(), "-c".into()])
        );
        // ENTRYPOINT after CMD in the same stage keeps CMD.
        assert_eq!(
            c.cmd,
            Some(vec![
                "/bin/bash".into(),
                "-eu".into(),
                "-c".into(),
                "run it".into()
            ])
        );
        assert_eq!(c.entrypoint, Some(vec!["/e".into()]));
        let hc = c.healthcheck.as_ref().expect("healthcheck");
        assert_eq!(hc.test, ["CMD-SHELL", "curl -f x"]);
        assert_eq!((hc.interval, hc.retries), (Duration::from_secs(90), 3));
        assert_eq!(c.author.as_deref(), Some("me"));
        let steps: Vec<_> = plan.stages[0]
            .steps
            .iter()
            .map(|s| (&s.op, s.user.as_deref()))
            .collect();
        assert_eq!(
            steps,
            [
                (
                    &Op::Workdir {
                        path: "/app".into()
                    },
                    Some("1000:1000")
                ),
                (
                    &Op::Workdir {
                        path: "/srv".into()
                    },
                    Some("1000:1000")
                )
            ]
        );
        let history: Vec<&str> = plan.stages[0]
            .history
            .iter()
            .map(|h| h.created_by.as_str())
            .collect();
        assert_eq!(
            history,
            [
                "ENV A=1 B=two words C=",
                "ENV A=3",
                "ENV D=3-y",
                "LABEL org.x=v 3 plain=1",
                "USER 1000:1000",
                "WORKDIR /app",
                "WORKDIR /srv",
                "EXPOSE [80/tcp 8000/udp 8001/udp]",
                "VOLUME [/data [/x]]",
                "STOPSIGNAL SIGINT",
                "SHELL [/bin/bash -eu -c]",
                "CMD [\"/bin/bash\" \"-eu\" \"-c\" \"run it\"]",
                "ENTRYPOINT [\"/e\"]",
                "HEALTHCHECK {Test:[CMD-SHELL curl -f x] Interval:1m30s Timeout:0s StartPeriod:0s StartInterval:0s Retries:3}",
                "MAINTAINER me",
            ]
        );
        // ENTRYPOINT without a CMD in the stage resets an inherited CMD.
        let plan = ok("FROM scratch AS a\nCMD [\"x\"]\nFROM a\nENTRYPOINT [\"e\"]\n");
        assert_eq!(plan.stages[1].config.cmd, None);
        let plan = ok("FROM scratch\nCMD [\"x\"]\nENTRYPOINT []\n");
        assert_eq!(
            (
                plan.stages[0].config.cmd.clone(),
                plan.stages[0].config.entrypoint.clone()
            ),
            (Some(vec!["x".into()]), None)
        );
    }

    #[test]
    fn run_forms_and_shell() {
        let plan = ok(
            "FROM scratch\nRUN [\"echo\", \"hi\"]\nSHELL [\"/bin/bash\", \"-c\"]\nRUN echo $0\n",
        );
        let s = &plan.stages[0].steps;
        assert_eq!(
            s[0].op,
            Op::Run {
                command: RunCommand::Exec(vec!["echo".into(), "hi".into()]),
                heredocs: vec![],
                mounts: vec![],
                network: Network::Default,
                security: Security::Sandbox,
            }
        );
        assert_eq!(s[0].shell, ["/bin/sh", "-c"]);
        assert_eq!(
            s[1].op,
            Op::Run {
                command: RunCommand::Shell("echo $0".into()),
                heredocs: vec![],
                mounts: vec![],
                network: Network::Default,
                security: Security::Sandbox,
            }
        );
        assert_eq!(s[1].shell, ["/bin/bash", "-c"]);
        assert_eq!(
            plan.stages[0].history[0].created_by,
            "RUN echo hi # buildkit"
        );
        assert_eq!(
            plan.stages[0].history[2].created_by,
            "RUN /bin/bash -c echo $0 # buildkit"
        );
    }

    #[test]
    fn heredocs() {
        let plan = ok(
            "FROM scratch\nRUN <<EOF\necho a\necho b\nEOF\nRUN <<-EOF\n\t#!/usr/bin/env python3\n\tprint(1)\n\tEOF\nRUN python3 - <<'PY' > out\nprint($X)\nPY\nENV X=1\nCOPY <<A <<\"B\" /etc/\nx=$X\nA\ny=$X\nB\n",
        );
        let s = &plan.stages[0].steps;
        let Op::Run {
            command, heredocs, ..
        } = &s[0].op
        else {
            panic!("RUN")
        };
        assert_eq!(command, &RunCommand::Shell("echo a\necho b\n".into()));
        assert_eq!(heredocs[0].mount_path, None);
        assert_eq!(s[0].display, "RUN <<EOF (echo a...)");
        let Op::Run {
            command, heredocs, ..
        } = &s[1].op
        else {
            panic!("RUN")
        };
        assert_eq!(command, &RunCommand::Shell("/dev/pipes/EOF".into()));
        assert_eq!(heredocs[0].content, "#!/usr/bin/env python3\nprint(1)\n");
        assert_eq!(heredocs[0].mount_path.as_deref(), Some("/dev/pipes/EOF"));
        let Op::Run { command, .. } = &s[2].op else {
            panic!("RUN")
        };
        assert_eq!(
            command,
            &RunCommand::Shell("python3 - <<'PY' > out\nprint($X)\nPY".into())
        );
        let Op::Copy(copy) = &s[3].op else {
            panic!("COPY")
        };
        assert_eq!(
            copy.sources,
            [
                CopySource::Inline {
                    name: "A".into(),
                    content: "x=1\n".into()
                },
                CopySource::Inline {
                    name: "B".into(),
                    content: "y=$X\n".into()
                }
            ]
        );
        assert_eq!(copy.dest, "/etc/");
        assert_eq!(
            plan.stages[0].history.last().map(|h| h.created_by.as_str()),
            Some("COPY <<A <<B /etc/ # buildkit")
        );
    }

    #[test]
    fn copy_options_and_destinations() {
        let plan = ok(
            "FROM scratch\nWORKDIR /w\nCOPY --chown=app:app --chmod=755 --link a b ./\nCOPY x .\nCOPY y sub\nADD data.tar.gz /d\nCOPY [\"/s p\", \"/t/\"]\n",
        );
        let copies: Vec<&CopyOp> = plan.stages[0]
            .steps
            .iter()
            .filter_map(|s| {
                if let Op::Copy(c) = &s.op {
                    Some(c)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(copies[0].dest, "/w/");
        assert_eq!(
            (copies[0].chown.as_deref(), copies[0].chmod, copies[0].link),
            (Some("app:app"), Some(0o755), true)
        );
        assert_eq!(copies[1].dest, "/w/");
        assert_eq!(copies[2].dest, "/w/sub");
        assert!(copies[3].is_add && !copies[2].is_add);
        assert_eq!(copies[4].sources, [CopySource::Path("/s p".into())]);
        assert_eq!(
            plan.stages[0].history[1].created_by,
            "COPY --chown=app:app --chmod=755 a b ./ # buildkit"
        );
    }

    #[test]
    fn onbuild_triggers_run_first_in_stages_built_on_them_and_do_not_carry_over() {
        let plan = ok(
            "FROM scratch AS base\nONBUILD RUN echo triggered\nONBUILD ENV T=1\nRUN echo base\n\nFROM base AS app\nRUN echo app\n",
        );
        let (base, app) = (&plan.stages[0], &plan.stages[1]);
        assert_eq!(base.config.on_build, ["RUN echo triggered", "ENV T=1"]);
        assert_eq!(
            progress_lines(&plan)[1..],
            [
                "[app 1/2] ONBUILD RUN echo triggered".to_owned(),
                "[app 2/2] RUN echo app".to_owned(),
            ]
        );
        assert!(app.config.on_build.is_empty(), "triggers do not carry over");
        assert!(app.config.env.contains(&("T".to_owned(), "1".to_owned())));
        assert_eq!(app.steps[0].line, 6, "a trigger runs at the FROM");
        // An image base's triggers, from its config.
        let df = parse("FROM img\nRUN echo mine\n").expect("parses");
        let base = ImageConfig {
            on_build: vec!["RUN echo from-image".into()],
            ..ImageConfig::default()
        };
        let plan = plan_with_base_configs(
            &df,
            &PlanOptions::default(),
            &BTreeMap::from([("img".to_owned(), base)]),
        )
        .expect("plans");
        assert_eq!(
            progress_lines(&plan)[1..],
            [
                "[2/3] ONBUILD RUN echo from-image".to_owned(),
                "[3/3] RUN echo mine".to_owned(),
            ]
        );
    }

    #[test]
    fn add_url_downloads_name_the_file_after_the_url_path() {
        let sum = format!("sha256:{}", "a".repeat(64));
        let plan = ok(&format!(
            "FROM scratch\nADD --checksum={sum} https://example.com/d/tool.tgz?x=1 /opt/\nADD http://example.com/ /x\n"
        ));
        let copies: Vec<&CopyOp> = plan.stages[0]
            .steps
            .iter()
            .map(|s| match &s.op {
                Op::Copy(c) => c,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(copies[0].downloads[0].file_name, "tool.tgz");
        assert_eq!(copies[0].sources, [CopySource::Path("tool.tgz".into())]);
        assert_eq!(copies[0].checksum.as_deref(), Some(sum.as_str()));
        assert_eq!(copies[1].downloads[0].file_name, "__unnamed__");
        assert_eq!(copies[1].checksum, None);
    }

    #[test]
    fn copy_exclude_patterns_are_expanded_and_kept() {
        let plan = plan_text(
            "FROM scratch\nARG EXT=md\nADD --exclude=*.$EXT --exclude=tmp/ . /\n",
            &[],
            None,
        )
        .expect("plans");
        let Op::Copy(copy) = &plan.stages[0].steps[0].op else {
            panic!("a copy");
        };
        assert_eq!(copy.exclude, ["*.md", "tmp/"]);
    }

    #[test]
    fn copy_parents_is_kept_and_in_history() {
        let plan = plan_text(
            "FROM scratch\nARG D=x\nCOPY --parents --chmod=644 $D/a.txt ./src/./y/*.txt /p/\nCOPY --parents=false a /q/\n",
            &[],
            None,
        )
        .expect("plans");
        let stage = &plan.stages[0];
        let copies: Vec<&CopyOp> = stage
            .steps
            .iter()
            .filter_map(|s| match &s.op {
                Op::Copy(c) => Some(c),
                _ => None,
            })
            .collect();
        assert!(copies[0].parents);
        assert!(!copies[1].parents);
        assert_eq!(
            copies[0].sources,
            [
                CopySource::Path("x/a.txt".into()),
                CopySource::Path("./src/./y/*.txt".into())
            ]
        );
        let history: Vec<&str> = stage
            .history
            .iter()
            .map(|h| h.created_by.as_str())
            .collect();
        assert!(
            history.contains(&"COPY --parents --chmod=644 x/a.txt ./src/./y/*.txt /p/ # buildkit"),
            "{history:?}"
        );
        assert!(history.contains(&"COPY a /q/ # buildkit"), "{history:?}");
    }

    #[test]
    fn parents_sources_split_as_buildkit() {
        // The ops dockerfile2llb makes (include_patterns, required_paths) for these sources.
        let cases = [
            ("x/a.txt", "/", "x/a.txt", Some("/x/a.txt")),
            ("./src/./y/*.txt", "/src", "y/*.txt", None),
            ("/out/./bin/app", "/out", "bin/app", Some("/out/bin/app")),
            ("/out/./lib/", "/out", "lib", Some("/out/lib")),
            ("docs/", "/", "docs", Some("/docs")),
            ("src/**/*.md", "/", "src/**/*.md", None),
            ("d*/./a", "/d*", "a", None),
            ("a/./b/./c", "/a", "b/c", Some("/a/b/c")),
        ];
        for (source, dir, pattern, required) in cases {
            assert_eq!(
                ParentsSource::of(source),
                ParentsSource {
                    dir: dir.into(),
                    pattern: pattern.into(),
                    required: required.map(String::from),
                },
                "{source}"
            );
        }
    }

    #[test]
    fn unsupported_features_name_the_line() {
        check_error(
            "FROM scratch\nRUN --device=gpu make\n",
            Some(2),
            "RUN --device is not supported",
        );
        check_error(
            "FROM scratch\n\nONBUILD ONBUILD RUN x\n",
            Some(3),
            "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
        );
        check_error(
            "FROM scratch\nONBUILD MAINTAINER me\n",
            Some(2),
            "MAINTAINER isn't allowed as an ONBUILD trigger",
        );
        check_error(
            "FROM scratch AS a\nFROM scratch\nONBUILD COPY --from=a / /\n",
            Some(3),
            "triggers reading another stage or image (--from, --mount from=) are not supported",
        );
        check_error(
            "FROM scratch\nADD https://example.com/a.tgz a.txt /\n",
            Some(2),
            "ADD mixing URLs with local files is not supported",
        );
        check_error(
            "FROM scratch\nADD git@github.com:a/b.git /\n",
            Some(2),
            "ADD from a git repository",
        );
        check_error(
            "FROM scratch\nCOPY http://x/y /\n",
            Some(2),
            "COPY from a URL",
        );
        check_error(
            "FROM scratch\nADD --parents a/ /\n",
            Some(2),
            "unknown flag: parents",
        );
        check_error(
            "FROM scratch\nCOPY --exclude= . /\n",
            Some(2),
            "COPY --exclude needs a pattern",
        );
        check_error(
            "FROM scratch\nCOPY --exclude=[a . /\n",
            Some(2),
            "COPY --exclude=[a: ",
        );
        check_error(
            "FROM scratch\nADD --checksum=sha256:x a /\n",
            Some(2),
            "ADD --checksum=sha256:x: a checksum can only be given for an http(s) URL source",
        );
        check_error(
            "FROM scratch\nADD --checksum=md5:x http://h/a /\n",
            Some(2),
            "use sha256:<64 lowercase hex digits>",
        );
        check_error(
            "FROM --platform=linux/arm64 scratch\n",
            Some(1),
            "unsupported platform \"linux/arm64\"",
        );
        check_error(
            "FROM scratch\nCOPY --chmod=u+x a /\n",
            Some(2),
            "invalid chmod",
        );
        check_error("FROM scratch\nSTOPSIGNAL NOPE\n", Some(2), "invalid signal");
        check_error("FROM scratch\nEXPOSE 80/xyz\n", Some(2), "invalid proto");
        check_error(
            "FROM scratch\nHEALTHCHECK --interval=1us CMD x\n",
            Some(2),
            "cannot be less than 1ms",
        );
        check_error("FROM scratch\nENV A=${B:?must}\n", Some(2), "B: must");
        check_error(
            "FROM scratch\nCOPY --from=$X a /\n",
            Some(2),
            "variable expansion is not supported for --from",
        );
        check_error(
            "FROM scratch AS a\nCOPY --from=b a /\nFROM scratch AS b\n",
            Some(2),
            "needs to be defined before current stage",
        );
        check_error(
            "FROM scratch AS a\nCOPY --from=a a /\n",
            Some(2),
            "needs to be defined before",
        );
        check_error(
            "FROM scratch\nCOPY --from=7 a /\n",
            Some(2),
            "invalid stage index 7",
        );
        check_error("ARG B\nFROM $B\n", Some(2), "should not be blank");
        check_error("FROM Alpine\n", Some(1), "must be lowercase");
        check_error(
            "FROM scratch\nCOPY --from=Bad:Ref a /\n",
            Some(2),
            "neither a stage",
        );
    }

    #[test]
    fn bases_resolve_like_buildkit() {
        let text = concat!(
            "FROM scratch AS base\n", // 0
            "FROM BASE AS x\n",       // 1: stage names are case-insensitive
            "FROM 0 AS byindex\n",    // 2: an earlier stage by index
            "FROM ctx AS y\n",        // 3: a named context
            "COPY --from=ctx /a /b\n",
            "COPY --from=1 /a /b\n",
            "COPY --from=busybox /a /b\n",
            "FROM later AS z\n", // 4: a later stage name is an image reference, like BuildKit
            "FROM x AS later\n", // 5
            "COPY --from=Y / /\n",
            "COPY --from=byindex / /\n",
        );
        let df = parse(text).expect("parses");
        let opts = PlanOptions {
            named_contexts: BTreeSet::from(["ctx".to_string()]),
            ..PlanOptions::default()
        };
        let p = plan(&df, &opts).expect("plans");
        let bases: Vec<(usize, Base)> = p
            .stages
            .iter()
            .map(|s| (s.dockerfile_index, s.base.clone()))
            .collect();
        assert_eq!(
            bases,
            [
                (0, Base::Scratch),
                (1, Base::Stage(0)),
                (2, Base::Stage(0)),
                (3, Base::Context("ctx".into())),
                (5, Base::Stage(1))
            ]
        );
        let froms = |stage: &PlannedStage| -> Vec<CopyFrom> {
            stage
                .steps
                .iter()
                .filter_map(|s| {
                    if let Op::Copy(c) = &s.op {
                        Some(c.from.clone())
                    } else {
                        None
                    }
                })
                .collect()
        };
        assert_eq!(
            froms(&p.stages[3]),
            [
                CopyFrom::NamedContext("ctx".into()),
                CopyFrom::Stage(1),
                CopyFrom::Image("busybox".into())
            ]
        );
        assert_eq!(
            froms(&p.stages[4]),
            [CopyFrom::Stage(3), CopyFrom::Stage(2)]
        );
        assert_eq!(p.stages[3].from_display, "FROM ctx");
        assert_eq!(p.stages[1].from_display, "FROM BASE");
        let p = plan(
            &df,
            &PlanOptions {
                target: Some("z".into()),
                ..opts
            },
        )
        .expect("plans");
        assert_eq!(p.stages[0].base, Base::Image("later".into()));
        assert_eq!(
            p.stages[0].from_display,
            "FROM docker.io/library/later:latest"
        );
    }

    fn run_of(plan: &Plan, stage: usize, step: usize) -> (Vec<Mount>, Network, Security) {
        match &plan.stages[stage].steps[step].op {
            Op::Run {
                mounts,
                network,
                security,
                ..
            } => (mounts.clone(), *network, *security),
            other => panic!("not a RUN: {other:?}"),
        }
    }

    #[test]
    fn run_mounts_are_typed_expanded_and_resolved() {
        let df = parse(concat!(
            "FROM alpine AS deps\n",
            "RUN true\n",
            "FROM alpine AS unused\n",
            "FROM alpine\n",
            "ARG CACHE=/root/.cache\n",
            "WORKDIR /src\n",
            "RUN --mount=type=cache,target=$CACHE,sharing=locked,id=c1 \\\n",
            "    --mount=type=bind,from=deps,source=/out,target=out \\\n",
            "    --mount=type=bind,from=busybox:1,target=/bb \\\n",
            "    --mount=type=bind,from=ctx,target=/ctx \\\n",
            "    --mount=type=secret,id=tok,env=TOKEN \\\n",
            "    --mount=type=ssh,required \\\n",
            "    --network=none --security=sandbox echo $TOKEN $CACHE\n",
        ))
        .expect("parses");
        let opts = PlanOptions {
            named_contexts: BTreeSet::from(["ctx".to_string()]),
            build_args: BTreeMap::from([("BUILDKIT_CACHE_MOUNT_NS".into(), "ns".into())]),
            ..PlanOptions::default()
        };
        let p = plan(&df, &opts).expect("plans");
        // The mount from `deps` makes it a needed stage; `unused` is not.
        assert_eq!(p.stages.len(), 2);
        let (mounts, network, security) = run_of(&p, 1, 1);
        assert_eq!((network, security), (Network::None, Security::Sandbox));
        let Mount::Cache(cache) = &mounts[0] else {
            panic!("cache")
        };
        assert_eq!(
            (cache.target.as_str(), cache.llb_id(), cache.sharing),
            ("/root/.cache", "ns/c1".to_string(), crate::Sharing::Locked)
        );
        assert_eq!(
            mounts[1],
            Mount::Bind(crate::BindMount {
                target: "/src/out".into(),
                from: CopyFrom::Stage(0),
                source: "/out".into(),
                read_only: true,
            })
        );
        assert!(
            matches!(&mounts[2], Mount::Bind(b) if b.from == CopyFrom::Image("busybox:1".into()))
        );
        assert!(
            matches!(&mounts[3], Mount::Bind(b) if b.from == CopyFrom::NamedContext("ctx".into()))
        );
        assert!(matches!(&mounts[4], Mount::Secret(s) if s.env.as_deref() == Some("TOKEN")));
        assert!(matches!(&mounts[5], Mount::Ssh(s) if s.required));
        let step = &p.stages[1].steps[1];
        assert!(
            step.env
                .contains(&("SSH_AUTH_SOCK".into(), "/run/buildkit/ssh_agent.0".into()))
        );
        // The secret's env variable is masked in the progress text, like BuildKit's.
        assert!(
            step.display.ends_with("echo **** /root/.cache"),
            "{}",
            step.display
        );
        let refs = p.external_refs();
        assert!(refs.contains("busybox:1") && refs.contains("ctx"));
    }

    #[test]
    fn run_mounts_name_stages_like_buildkit() {
        // Any mount not from a stage adds a source state, so even one stage gets its name.
        let p = ok("FROM busybox\nRUN --mount=type=cache,target=/c true\n");
        assert_eq!(p.stages[0].progress_prefix(2), "[stage-0 2/2]");
        // A mount's from is a stage name, never an index.
        let p = ok("FROM busybox AS a\nFROM busybox\nRUN --mount=from=0,target=/x true\n");
        assert_eq!(p.stages.len(), 1);
        let (mounts, ..) = run_of(&p, 0, 0);
        assert!(matches!(&mounts[0], Mount::Bind(b) if b.from == CopyFrom::Image("0".into())));
    }

    #[test]
    fn bad_run_flags_name_line_and_flag() {
        for (text, contains) in [
            (
                "FROM scratch\nRUN --mount=type=volume,target=/x make\n",
                "--mount=type=volume,target=/x: unsupported mount type \"volume\"",
            ),
            (
                "FROM scratch\nRUN --mount=type=cache,target=/x,foo=1 make\n",
                "--mount=type=cache,target=/x,foo=1: unexpected key 'foo'",
            ),
            (
                "FROM scratch\nRUN --mount=type=bind,target=/x,from=later make\nFROM scratch AS later\n",
                "cannot mount from stage \"later\"",
            ),
            (
                "FROM scratch\nRUN --mount=type=bind,target=/x,from=Not_An_Image make\n",
                "--mount from=Not_An_Image is neither a stage, a named context nor a valid image reference",
            ),
            (
                "FROM scratch\nRUN --mount=type=bind,target=/x,from=$S make\n",
                "'from' doesn't support variable expansion",
            ),
            (
                "FROM scratch\nRUN --mount=type=cache,target=${NOPE} make\n",
                "invalid mount target",
            ),
            (
                "FROM scratch\nRUN --network=bridge make\n",
                "--network=bridge: invalid network mode",
            ),
            (
                "FROM scratch\nRUN --security=root make\n",
                "--security=root: security \"root\" is not valid",
            ),
        ] {
            check_error(text, Some(2), contains);
        }
    }

    #[test]
    fn named_context_replaces_a_stage_of_the_same_name() {
        let df = parse("FROM alpine AS deps\nRUN --mount=type=cache,target=/x make\nFROM scratch\nCOPY --from=deps /a /b\n").expect("parses");
        let opts = PlanOptions {
            named_contexts: BTreeSet::from(["deps".to_string()]),
            ..PlanOptions::default()
        };
        let p = plan(&df, &opts).expect("the replaced stage's instructions are not built");
        assert_eq!(p.stages[0].base, Base::Context("deps".into()));
        assert!(p.stages[0].steps.is_empty() && p.stages[0].history.is_empty());
        assert_eq!(p.stages[0].step_total, 0);
        let Op::Copy(copy) = &p.stages[1].steps[0].op else {
            panic!("COPY")
        };
        assert_eq!(copy.from, CopyFrom::Stage(0));
    }

    #[test]
    fn base_configs_seed_the_stage() {
        let df = parse("FROM img\nENV PATH=/opt/bin:$PATH\nWORKDIR sub\nRUN id\n").expect("parses");
        let base = ImageConfig {
            env: vec![
                ("PATH".into(), "/usr/bin".into()),
                ("LANG".into(), "C".into()),
            ],
            workdir: Some("/home/u".into()),
            user: Some("u".into()),
            cmd: Some(vec!["sh".into()]),
            ..ImageConfig::default()
        };
        let configs = BTreeMap::from([("img".to_string(), base)]);
        let plan = plan_with_base_configs(&df, &PlanOptions::default(), &configs).expect("plans");
        let stage = &plan.stages[0];
        assert_eq!(
            stage.config.env[0],
            ("PATH".to_string(), "/opt/bin:/usr/bin".to_string())
        );
        assert_eq!(stage.config.workdir.as_deref(), Some("/home/u/sub"));
        assert_eq!(stage.config.cmd, Some(vec!["sh".into()]));
        let run = &stage.steps[1];
        assert_eq!(
            (run.workdir.as_str(), run.user.as_deref()),
            ("/home/u/sub", Some("u"))
        );
        assert!(run.env.contains(&("LANG".into(), "C".into())));
    }

    #[test]
    fn image_refs_normalize() {
        for (input, expected) in [
            ("busybox", Ok("docker.io/library/busybox:latest")),
            ("busybox:1.36", Ok("docker.io/library/busybox:1.36")),
            ("user/app", Ok("docker.io/user/app:latest")),
            (
                "127.0.0.1:5001/busybox:latest",
                Ok("127.0.0.1:5001/busybox:latest"),
            ),
            ("localhost/a/b", Ok("localhost/a/b:latest")),
            (
                "ghcr.io/o/r@sha256:e604afb185179f2e42f725e78192d3b938051910e606393a4cab609fa41b1dbf",
                Ok(
                    "ghcr.io/o/r@sha256:e604afb185179f2e42f725e78192d3b938051910e606393a4cab609fa41b1dbf",
                ),
            ),
            ("UPPER", Err(())),
            ("a b", Err(())),
            ("a:", Err(())),
        ] {
            assert_eq!(
                normalize_image_ref(input).map_err(|_| ()),
                expected.map(String::from),
                "{input}"
            );
        }
    }

    #[test]
    fn go_formatting_helpers() {
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(5)), "5ms");
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(parse_go_duration("10").is_err());
        assert_eq!(
            go_quote_list(&["a\"b".into(), "c\n".into()]),
            "[\"a\\\"b\" \"c\\n\"]"
        );
        assert_eq!(dest_path("/w", "."), "/w/");
        assert_eq!(dest_path("/w", "../x/"), "/x/");
        assert_eq!(dest_path("/", "/a/./"), "/a/");
        assert_eq!(normalize_workdir("/a", "b/../c"), "/a/c");
        assert_eq!(
            parse_port_spec("127.0.0.1:8080:80/udp"),
            Ok(vec!["80/udp".to_string()])
        );
        assert!(is_valid_signal("9") && is_valid_signal("sigrtmin+3") && !is_valid_signal("0"));
    }
}
