//! The scenario suite: every project, with `mode=min` and `mode=max`, cold, warm from a local
//! directory, warm from the registry, one change, a no-op export; and the peers: BuildKit (a
//! running `buildkitd`, pruned before every run) and buildah.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::projects::{self, Project, Sizes};
use crate::scenario::{self, Invocation, RegistryInfo, Sample, Tool};

/// Options of one suite run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `buildcache` binary to measure.
    pub buildcache: PathBuf,
    /// This executable (it wraps each run to read the peak RSS).
    pub measure_exe: PathBuf,
    /// `examples/` of the workspace.
    pub examples: PathBuf,
    /// Scratch space (contexts, roots, caches, logs): `target/bench/work`.
    pub work: PathBuf,
    /// Kept between runs (the compiled project's `.deb` files and base): `target/bench/cache`.
    pub cache: PathBuf,
    /// Runs per figure.
    pub runs: usize,
    /// Sizes of the generated projects.
    pub sizes: Sizes,
    /// Projects to run (ids); empty for all.
    pub only: Vec<String>,
    /// Whether to run the peer.
    pub peer: bool,
    /// The running BuildKit to compare with, or why there is none.
    pub buildkit: Result<BuildKit, String>,
    /// The registry.
    pub registry: RegistryInfo,
}

/// A running `buildkitd` and its client.
#[derive(Debug, Clone)]
pub struct BuildKit {
    /// `buildctl`.
    pub buildctl: PathBuf,
    /// `--addr` of the daemon (`unix:///…`).
    pub addr: String,
}

impl BuildKit {
    /// The BuildKit `cargo xtask bench` started: `CACHE_TEST_BUILDKIT` (the address) and
    /// `CACHE_TEST_BUILDKIT_BIN` (the directory of `buildctl`), or why it is absent.
    pub fn from_env() -> Result<BuildKit, String> {
        match (
            std::env::var("CACHE_TEST_BUILDKIT"),
            std::env::var_os("CACHE_TEST_BUILDKIT_BIN"),
        ) {
            (Ok(addr), Some(bin)) => Ok(BuildKit {
                buildctl: PathBuf::from(bin).join("buildctl"),
                addr,
            }),
            _ => Err(
                "no BuildKit: ../shared/tools/buildkit is absent (cargo xtask bench starts \
                      one from there)"
                    .into(),
            ),
        }
    }

    /// `buildctl --version`.
    pub fn version(&self) -> Result<String, String> {
        let out = Command::new(&self.buildctl)
            .arg("--version")
            .output()
            .map_err(|err| format!("running {}: {err}", self.buildctl.display()))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `buildctl prune --all`: the daemon forgets every build, as a machine that never built.
    pub fn prune(&self) -> anyhow::Result<()> {
        let out = Command::new(&self.buildctl)
            .args(["--addr", &self.addr, "prune", "--all"])
            .output()
            .with_context(|| format!("running {} prune", self.buildctl.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "`buildctl prune --all` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    fn invocation(&self, project: &Project, extra: &[String]) -> Invocation {
        let mut args = os(&["--addr", &self.addr, "build", "--progress=plain"]);
        args.extend(os(&["--frontend", "dockerfile.v0", "--local"]));
        args.push(format!("context={}", project.context.display()).into());
        args.push("--local".into());
        args.push(format!("dockerfile={}", project.context.display()).into());
        args.extend(project.buildkit_args.iter().map(OsString::from));
        args.extend(extra.iter().map(OsString::from));
        Invocation {
            program: self.buildctl.clone(),
            args,
            env: Vec::new(),
            tool: Tool::BuildKit,
            metadata: None,
        }
    }
}

/// Every figure of one scenario, for one tool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    /// `cold`, `cold-registry`, `warm-local`, `warm-registry`, `noop-export`, `one-change`.
    pub name: String,
    /// Which builder.
    pub tool: Tool,
    /// The command of the first run.
    pub command: String,
    /// One sample per run.
    pub samples: Vec<Sample>,
}

/// The figures of one project.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectResult {
    /// Project id.
    pub id: String,
    /// Description.
    pub title: String,
    /// `(mode, figures of ours)` for `min` and `max`.
    pub modes: Vec<(String, Vec<Figure>)>,
    /// The peer's figures (mode-independent).
    pub peer: Vec<Figure>,
    /// `(mode, BuildKit's figures)` for `min` and `max`.
    #[serde(default)]
    pub buildkit: Vec<(String, Vec<Figure>)>,
    /// Why some or all of BuildKit's figures are missing.
    #[serde(default)]
    pub buildkit_missing: Option<String>,
    /// Why some or all of the peer's figures are missing.
    pub peer_missing: Option<String>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// Whether `--quick` sizes were used.
    pub quick: bool,
    /// Runs per figure.
    pub runs: usize,
    /// Sizes used.
    pub sizes: Sizes,
    /// Projects.
    pub projects: Vec<ProjectResult>,
    /// Violated expectations (warm builds not fully cached, layer downloads on unchanged builds).
    pub failures: Vec<String>,
    /// The peer's version, or why it is absent.
    pub peer_version: Result<String, String>,
    /// BuildKit's version, or why it is absent.
    #[serde(default = "no_buildkit")]
    pub buildkit_version: Result<String, String>,
}

fn no_buildkit() -> Result<String, String> {
    Err("not recorded".into())
}

/// `buildah --version`, or why buildah cannot run here.
pub fn peer_version() -> Result<String, String> {
    match Command::new("buildah").arg("--version").output() {
        Ok(out) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        Ok(out) => Err(format!(
            "`buildah --version` failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(err) => Err(format!(
            "buildah is not installed ({err}); `cargo xtask bench` installs it as root with \
             `apt-get install -y buildah`"
        )),
    }
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// Removes `dir`, whoever else is removing parts of it (a build hands its work directory to a
/// background removal that may still run): tries again until nothing is left.
fn clean(dir: &Path) {
    for _ in 0..20 {
        match fs::remove_dir_all(dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound && dir.exists() => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            _ if dir.exists() => {}
            _ => return,
        }
    }
}

struct Ctx<'a> {
    opts: &'a Options,
    failures: Vec<String>,
}

fn ours(
    opts: &Options,
    project: &Project,
    root: &Path,
    meta: &Path,
    extra: &[String],
) -> Invocation {
    let mut args = os(&["build", "--progress=plain", "--root"]);
    args.push(root.into());
    args.push("--metadata-file".into());
    args.push(meta.into());
    args.extend(project.ours_args.iter().map(OsString::from));
    args.extend(extra.iter().map(OsString::from));
    args.push(project.context.clone().into());
    Invocation {
        program: opts.buildcache.clone(),
        args,
        env: Vec::new(),
        tool: Tool::Ours,
        metadata: Some(meta.to_owned()),
    }
}

fn peer(project: &Project, root: &Path, extra: &[String]) -> Invocation {
    let mut args = os(&["--root"]);
    args.push(root.join("root").into());
    args.push("--runroot".into());
    args.push(root.join("runroot").into());
    args.extend(os(&["build", "--layers", "--tls-verify=false", "-t"]));
    args.push(format!("bench-{}", project.id).into());
    args.extend(project.peer_args.iter().map(OsString::from));
    args.extend(extra.iter().map(OsString::from));
    args.push(project.context.clone().into());
    Invocation {
        program: "buildah".into(),
        args,
        env: vec![
            ("STORAGE_DRIVER".into(), "vfs".into()),
            ("BUILDAH_ISOLATION".into(), "chroot".into()),
        ],
        tool: Tool::Peer,
        metadata: None,
    }
}

/// Runs `make(i, dir)` `runs` times, each in a fresh `dir`, removed afterwards.
fn figure(
    opts: &Options,
    name: &str,
    tool: Tool,
    dir: &Path,
    mut before: impl FnMut(usize) -> anyhow::Result<()>,
    make: impl Fn(usize, &Path) -> Invocation,
) -> anyhow::Result<Figure> {
    let mut figure = Figure {
        name: name.to_owned(),
        tool,
        command: String::new(),
        samples: Vec::new(),
    };
    for i in 0..opts.runs {
        before(i)?;
        let run_dir = dir.join(format!("{name}-{i}"));
        clean(&run_dir);
        fs::create_dir_all(&run_dir)?;
        let inv = make(i, &run_dir);
        if i == 0 {
            figure.command = inv.display();
        }
        let log = dir.join(format!("{name}-{i}.log"));
        eprintln!(
            "cache-bench: {} ({name} {}/{})",
            inv.display(),
            i + 1,
            opts.runs
        );
        let sample = scenario::run(&opts.measure_exe, &inv, &opts.registry, &log)?;
        eprintln!(
            "cache-bench:   {:.2}s, {} KiB peak RSS, {}/{} steps cached",
            sample.wall_s, sample.peak_rss_kib, sample.cached_steps, sample.total_steps
        );
        figure.samples.push(sample);
        clean(&run_dir);
    }
    Ok(figure)
}

/// Our one-change figure: the edit file changed before each run, an empty root importing `from`;
/// the file is restored afterwards.
fn one_change(
    opts: &Options,
    project: &Project,
    dir: &Path,
    name: &str,
    from: &str,
) -> anyhow::Result<Figure> {
    let original = fs::read(project.context.join(&project.edit_file))?;
    let result = figure(
        opts,
        name,
        Tool::Ours,
        dir,
        |i| project.edit(i),
        |_, d| {
            ours(
                opts,
                project,
                &d.join("root"),
                &d.join("meta.json"),
                &["--cache-from".into(), from.to_owned()],
            )
        },
    );
    fs::write(project.context.join(&project.edit_file), &original)?;
    result
}

impl Ctx<'_> {
    fn expect(&mut self, ok: bool, what: String) {
        if !ok {
            eprintln!("cache-bench: FAILED: {what}");
            self.failures.push(what);
        }
    }

    fn check_warm(&mut self, project: &str, mode: &str, figure: &Figure, no_layer_gets: bool) {
        for (i, s) in figure.samples.iter().enumerate() {
            self.expect(
                s.all_cached(),
                format!(
                    "{project} mode={mode} {} run {}: {}/{} steps cached, expected all",
                    figure.name,
                    i + 1,
                    s.cached_steps,
                    s.total_steps
                ),
            );
            if no_layer_gets {
                self.expect(
                    s.traffic.layer_gets == 0,
                    format!(
                        "{project} mode={mode} {} run {}: {} layer blobs downloaded, expected none",
                        figure.name,
                        i + 1,
                        s.traffic.layer_gets
                    ),
                );
            }
        }
    }

    fn ours_mode(&mut self, project: &Project, mode: &str) -> anyhow::Result<Vec<Figure>> {
        let opts = self.opts;
        let dir = self.opts.work.join("runs").join(project.id).join(mode);
        clean(&dir);
        fs::create_dir_all(&dir)?;
        let reg = &self.opts.registry.addr;
        let local = |i: usize| dir.join(format!("cache-local-{i}"));
        let remote = |i: usize| format!("{reg}/bench/{}-{mode}-{i}:cache", project.id);
        let last = self.opts.runs - 1;
        let mut figures = Vec::new();
        let none = |_| Ok(());

        figures.push(figure(opts, "cold", Tool::Ours, &dir, none, |i, d| {
            clean(&local(i));
            ours(
                opts,
                project,
                &d.join("root"),
                &d.join("meta.json"),
                &[
                    "--cache-to".into(),
                    format!("type=local,dest={},mode={mode}", local(i).display()),
                ],
            )
        })?);
        figures.push(figure(
            opts,
            "cold-registry",
            Tool::Ours,
            &dir,
            none,
            |i, d| {
                ours(
                    opts,
                    project,
                    &d.join("root"),
                    &d.join("meta.json"),
                    &[
                        "--cache-to".into(),
                        format!("type=registry,ref={},mode={mode}", remote(i)),
                    ],
                )
            },
        )?);
        let from_local = format!("type=local,src={}", local(last).display());
        let from_remote = format!("type=registry,ref={}", remote(last));
        let warm_local = figure(opts, "warm-local", Tool::Ours, &dir, none, |_, d| {
            ours(
                opts,
                project,
                &d.join("root"),
                &d.join("meta.json"),
                &["--cache-from".into(), from_local.clone()],
            )
        })?;
        self.check_warm(project.id, mode, &warm_local, false);
        figures.push(warm_local);
        let warm_registry = figure(opts, "warm-registry", Tool::Ours, &dir, none, |_, d| {
            ours(
                opts,
                project,
                &d.join("root"),
                &d.join("meta.json"),
                &["--cache-from".into(), from_remote.clone()],
            )
        })?;
        self.check_warm(project.id, mode, &warm_registry, true);
        figures.push(warm_registry);
        let noop = figure(opts, "noop-export", Tool::Ours, &dir, none, |_, d| {
            ours(
                opts,
                project,
                &d.join("root"),
                &d.join("meta.json"),
                &[
                    "--cache-from".into(),
                    from_remote.clone(),
                    "--cache-to".into(),
                    format!("type=registry,ref={},mode={mode}", remote(last)),
                ],
            )
        })?;
        self.check_warm(project.id, mode, &noop, true);
        for (i, s) in noop.samples.iter().enumerate() {
            let uploaded: u64 = s.exports.iter().map(|e| e.bytes_written).sum();
            self.expect(
                uploaded == 0 && s.traffic.bytes_up == 0,
                format!(
                    "{} mode={mode} noop-export run {}: {uploaded} bytes written, {} blob bytes received by the registry, expected none",
                    project.id,
                    i + 1,
                    s.traffic.bytes_up
                ),
            );
        }
        figures.push(noop);
        figures.push(one_change(opts, project, &dir, "one-change", &from_remote)?);
        if project.cache_mounts {
            figures.extend(self.cache_mount_figures(project, mode, &dir)?);
        }
        for i in 0..self.opts.runs {
            clean(&local(i));
        }
        Ok(figures)
    }

    /// A project with cache mounts: a cold build exporting them (`cache-mounts=true`) to the
    /// registry, then the one-change build on an empty root importing that cache.
    fn cache_mount_figures(
        &mut self,
        project: &Project,
        mode: &str,
        dir: &Path,
    ) -> anyhow::Result<Vec<Figure>> {
        let opts = self.opts;
        let reg = &opts.registry.addr;
        let remote = |i: usize| format!("{reg}/bench/{}-{mode}-mounts-{i}:cache", project.id);
        let last = opts.runs - 1;
        let none = |_| Ok(());
        let mut figures = Vec::new();
        figures.push(figure(
            opts,
            "cold-mounts",
            Tool::Ours,
            dir,
            none,
            |i, d| {
                ours(
                    opts,
                    project,
                    &d.join("root"),
                    &d.join("meta.json"),
                    &[
                        "--cache-to".into(),
                        format!(
                            "type=registry,ref={},mode={mode},cache-mounts=true",
                            remote(i)
                        ),
                    ],
                )
            },
        )?);
        let from = format!("type=registry,ref={}", remote(last));
        figures.push(one_change(opts, project, dir, "one-change-mounts", &from)?);
        Ok(figures)
    }

    /// BuildKit's figures for `mode`: the same scenarios as ours, the daemon pruned before each
    /// run (so every run is a machine that never built, like our empty root).
    fn buildkit_mode(
        &mut self,
        buildkit: &BuildKit,
        project: &Project,
        mode: &str,
    ) -> anyhow::Result<Vec<Figure>> {
        let opts = self.opts;
        let dir = opts
            .work
            .join("runs")
            .join(project.id)
            .join(format!("buildkit-{mode}"));
        clean(&dir);
        fs::create_dir_all(&dir)?;
        let reg = &opts.registry.addr;
        let local = |i: usize| dir.join(format!("cache-local-{i}"));
        let remote = |i: usize| format!("{reg}/buildkit/{}-{mode}-{i}:cache", project.id);
        let last = opts.runs - 1;
        let prune = |_| buildkit.prune();
        let run = |extra: &[String]| buildkit.invocation(project, extra);
        let mut figures = Vec::new();
        figures.push(figure(
            opts,
            "cold",
            Tool::BuildKit,
            &dir,
            prune,
            |i, _| {
                clean(&local(i));
                run(&[
                    "--export-cache".into(),
                    format!("type=local,dest={},mode={mode}", local(i).display()),
                ])
            },
        )?);
        figures.push(figure(
            opts,
            "cold-registry",
            Tool::BuildKit,
            &dir,
            prune,
            |i, _| {
                run(&[
                    "--export-cache".into(),
                    format!("type=registry,ref={},mode={mode}", remote(i)),
                ])
            },
        )?);
        let from_local = format!("type=local,src={}", local(last).display());
        let from_remote = format!("type=registry,ref={}", remote(last));
        figures.push(figure(
            opts,
            "warm-local",
            Tool::BuildKit,
            &dir,
            prune,
            |_, _| run(&["--import-cache".into(), from_local.clone()]),
        )?);
        figures.push(figure(
            opts,
            "warm-registry",
            Tool::BuildKit,
            &dir,
            prune,
            |_, _| run(&["--import-cache".into(), from_remote.clone()]),
        )?);
        figures.push(figure(
            opts,
            "noop-export",
            Tool::BuildKit,
            &dir,
            prune,
            |_, _| {
                run(&[
                    "--import-cache".into(),
                    from_remote.clone(),
                    "--export-cache".into(),
                    format!("type=registry,ref={},mode={mode}", remote(last)),
                ])
            },
        )?);
        let original = fs::read(project.context.join(&project.edit_file))?;
        let one_change = figure(
            opts,
            "one-change",
            Tool::BuildKit,
            &dir,
            |i| {
                buildkit.prune()?;
                project.edit(i)
            },
            |_, _| run(&["--import-cache".into(), from_remote.clone()]),
        );
        fs::write(project.context.join(&project.edit_file), &original)?;
        figures.push(one_change?);
        for i in 0..opts.runs {
            clean(&local(i));
        }
        Ok(figures)
    }

    fn peer_figures(&mut self, project: &Project) -> anyhow::Result<Vec<Figure>> {
        let opts = self.opts;
        let dir = self.opts.work.join("runs").join(project.id).join("peer");
        clean(&dir);
        fs::create_dir_all(&dir)?;
        let reg = &self.opts.registry.addr;
        let repo = |i: usize| format!("{reg}/peer/{}-{i}", project.id);
        let last = repo(self.opts.runs - 1);
        let none = |_| Ok(());
        let mut figures = Vec::new();
        figures.push(figure(opts, "cold", Tool::Peer, &dir, none, |_, d| {
            peer(project, d, &[])
        })?);
        figures.push(figure(
            opts,
            "cold-registry",
            Tool::Peer,
            &dir,
            none,
            |i, d| peer(project, d, &["--cache-to".into(), repo(i)]),
        )?);
        figures.push(figure(
            opts,
            "warm-registry",
            Tool::Peer,
            &dir,
            none,
            |_, d| peer(project, d, &["--cache-from".into(), last.clone()]),
        )?);
        figures.push(figure(
            opts,
            "noop-export",
            Tool::Peer,
            &dir,
            none,
            |_, d| {
                peer(
                    project,
                    d,
                    &[
                        "--cache-from".into(),
                        last.clone(),
                        "--cache-to".into(),
                        last.clone(),
                    ],
                )
            },
        )?);
        let original = fs::read(project.context.join(&project.edit_file))?;
        let one_change = figure(
            opts,
            "one-change",
            Tool::Peer,
            &dir,
            |i| project.edit(i),
            |_, d| peer(project, d, &["--cache-from".into(), last.clone()]),
        );
        fs::write(project.context.join(&project.edit_file), &original)?;
        figures.push(one_change?);
        Ok(figures)
    }
}

/// Makes the projects selected by `opts.only`; `--quick` leaves out the ccache project unless
/// `--only` names it (its base is a second set of Debian packages).
pub fn make_projects(opts: &Options, quick: bool) -> anyhow::Result<Vec<Project>> {
    let want = |id: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == id);
    let contexts = opts.work.join("contexts");
    fs::create_dir_all(&contexts)?;
    fs::create_dir_all(&opts.cache)?;
    let mut projects = Vec::new();
    if want("multistage") {
        projects.push(projects::multistage(&opts.examples, &contexts)?);
    }
    if want("compiled") {
        projects.push(
            projects::compiled(&contexts, &opts.cache, opts.sizes)
                .context("making the compiled project (gcc base from Debian packages)")?,
        );
    }
    if want("small-files") {
        projects.push(projects::small_files(&contexts, opts.sizes)?);
    }
    if want("large-layer") {
        projects.push(projects::large_layer(&contexts, opts.sizes)?);
    }
    let named = |id: &str| opts.only.iter().any(|o| o == id);
    if want("ccache") && (!quick || named("ccache")) {
        projects.push(
            projects::ccache(&contexts, &opts.cache, opts.sizes)
                .context("making the ccache project (gcc and ccache base from Debian packages)")?,
        );
    }
    Ok(projects)
}

/// Runs every scenario; a build that fails is an error, an expectation that fails is recorded.
pub fn run(opts: &Options, quick: bool) -> anyhow::Result<Results> {
    anyhow::ensure!(opts.runs >= 1, "--runs must be at least 1");
    let projects = make_projects(opts, quick)?;
    let peer_version = if opts.peer {
        peer_version()
    } else {
        Err("the peer was not run (--no-peer, or --quick, which skips it to stay short)".into())
    };
    let buildkit = match (&opts.buildkit, opts.peer) {
        (Ok(buildkit), true) => buildkit.version().map(|v| (buildkit, v)),
        (Err(why), _) => Err(why.clone()),
        (Ok(_), false) => Err(
            "BuildKit was not run (--no-peer, or --quick, which skips the peers to stay short)"
                .into(),
        ),
    };
    let mut ctx = Ctx {
        opts,
        failures: Vec::new(),
    };
    let mut results = Vec::new();
    for project in &projects {
        eprintln!("\ncache-bench: == {}: {}", project.id, project.title);
        let mut modes = Vec::new();
        for mode in ["max", "min"] {
            modes.push((mode.to_owned(), ctx.ours_mode(project, mode)?));
        }
        let (peer, peer_missing) = match &peer_version {
            Err(why) => (Vec::new(), Some(why.clone())),
            Ok(_) => match ctx.peer_figures(project) {
                Ok(figures) => (figures, None),
                Err(err) => (
                    Vec::new(),
                    Some(format!("buildah failed on this project: {err:#}")),
                ),
            },
        };
        if let Some(why) = &peer_missing {
            eprintln!("cache-bench: no peer figures for {}: {why}", project.id);
        }
        let (buildkit_figures, buildkit_missing) = match &buildkit {
            Err(why) => (Vec::new(), Some(why.clone())),
            Ok((bk, _)) => {
                let mut figures = Vec::new();
                let mut missing = None;
                for mode in ["max", "min"] {
                    match ctx.buildkit_mode(bk, project, mode) {
                        Ok(f) => figures.push((mode.to_owned(), f)),
                        Err(err) => {
                            missing = Some(format!("BuildKit failed on this project: {err:#}"));
                            break;
                        }
                    }
                }
                (figures, missing)
            }
        };
        if let Some(why) = &buildkit_missing {
            eprintln!("cache-bench: no BuildKit figures for {}: {why}", project.id);
        }
        results.push(ProjectResult {
            id: project.id.to_owned(),
            title: project.title.clone(),
            modes,
            peer,
            peer_missing,
            buildkit: buildkit_figures,
            buildkit_missing,
        });
    }
    Ok(Results {
        quick,
        runs: opts.runs,
        sizes: opts.sizes,
        projects: results,
        failures: ctx.failures,
        peer_version,
        buildkit_version: buildkit.map(|(_, v)| v),
    })
}
