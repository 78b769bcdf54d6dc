//! `cargo xtask bench [--quick]`: the scenario benchmarks (cache-bench's runner driving the
//! `buildcache` binary and buildah against a loopback registry), the criterion micro
//! benchmarks, and BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;

use crate::services::{self, Lifetime};

/// Flags of `cargo xtask bench`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Flags {
    /// Reduced sizes, one run, no peer, no micro benchmarks, debug binaries; not written to
    /// BENCHMARKS.md.
    pub(crate) quick: bool,
    /// Runs per figure.
    pub(crate) runs: Option<String>,
    /// Skip buildah.
    pub(crate) no_peer: bool,
    /// Skip the criterion benchmarks.
    pub(crate) no_micro: bool,
    /// Only these projects.
    pub(crate) only: Option<String>,
}

pub(crate) const USAGE: &str = "cargo xtask bench [--quick] [--runs N] [--no-peer] [--no-micro] [--only multistage,compiled,small-files,large-layer,ccache]";

pub(crate) fn parse(args: &[String]) -> anyhow::Result<Flags> {
    let mut flags = Flags::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow::format_err!("`{name}` needs a value; usage: {USAGE}"))
        };
        match arg.as_str() {
            "--quick" => flags.quick = true,
            "--no-peer" => flags.no_peer = true,
            "--no-micro" => flags.no_micro = true,
            "--runs" => flags.runs = Some(value("--runs")?),
            "--only" => flags.only = Some(value("--only")?),
            other => anyhow::bail!("unknown argument `{other}` for `bench`; usage: {USAGE}"),
        }
    }
    Ok(flags)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Installs buildah (the peer) as root when missing; says why not otherwise.
fn ensure_peer() {
    if services::find_binary("buildah").is_some() {
        return;
    }
    if !is_root() || services::find_binary("apt-get").is_none() {
        eprintln!(
            "xtask: buildah is missing and cannot be installed here (needs root and apt-get); \
             the report will say so"
        );
        return;
    }
    eprintln!("xtask: installing the peer: apt-get install -y buildah");
    let status = Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "buildah"])
        .status();
    if !status.is_ok_and(|s| s.success()) {
        // The package lists may be missing on a fresh machine.
        let _ = Command::new("apt-get").arg("update").status();
        let _ = Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "buildah"])
            .status();
    }
}

/// `apt-get download` needs package lists; a fresh machine may have none.
fn ensure_apt_lists() {
    let lists = Path::new("/var/lib/apt/lists");
    let has_lists = std::fs::read_dir(lists)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
        })
        .unwrap_or(false);
    if !has_lists && is_root() {
        eprintln!("xtask: apt-get update (the compiled project's base is made from .deb files)");
        let _ = Command::new("apt-get").arg("update").status();
    }
}

fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

fn cargo(root: &Path, env: &[(String, String)], args: &[&str]) -> anyhow::Result<()> {
    let cargo = crate::cargo();
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(root)
        .status()
        .with_context(|| format!("could not run {}", cargo.to_string_lossy()))?;
    anyhow::ensure!(
        status.success(),
        "`cargo {}` failed with {status}",
        args.join(" ")
    );
    Ok(())
}

/// Runs everything and writes BENCHMARKS.md (not for `--quick`, whose report goes to
/// `target/bench/quick/BENCHMARKS.md`).
pub(crate) fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let flags = parse(args)?;
    let started = Instant::now();
    services::ensure_tools()?;
    ensure_apt_lists();
    if !flags.quick && !flags.no_peer {
        ensure_peer();
    }
    let profile: &[&str] = if flags.quick { &[] } else { &["--release"] };
    let profile_dir = if flags.quick { "debug" } else { "release" };
    let mut build = vec!["build", "-p", "cache-cli", "-p", "cache-bench"];
    build.extend(profile);
    cargo(root, &[], &build)?;
    let target = target_dir(root);
    let bin_dir = target.join(profile_dir);
    let out = if flags.quick {
        target.join("bench/quick")
    } else {
        target.join("bench")
    };

    let run_dir = services::run_dir(&crate::services_dir(), "bench")?;
    let services = services::start_registries(&run_dir, false, Lifetime::Owned)?;
    let mut env = services.env();
    // BuildKit, the peer of the headline: the scenario runner prunes it before every run.
    let buildkit = if flags.quick || flags.no_peer {
        None
    } else if let Some(bin_dir) = services::buildkit::install(root)? {
        let buildkit =
            services::buildkit::start(&bin_dir, &run_dir, &services.addrs(), Lifetime::Owned)
                .context("starting buildkitd for the benchmarks")?;
        env.extend(buildkit.env());
        Some(buildkit)
    } else {
        eprintln!(
            "xtask: ../shared/tools/buildkit is absent: BENCHMARKS.md will have no BuildKit figures"
        );
        None
    };
    let mut scenario = Command::new(bin_dir.join("cache-bench"));
    scenario
        .arg("scenarios")
        .arg("--buildcache")
        .arg(bin_dir.join("buildcache"))
        .arg("--out")
        .arg(&out)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(root);
    if flags.quick {
        scenario.arg("--quick");
    }
    if flags.no_peer {
        scenario.arg("--no-peer");
    }
    if let Some(runs) = &flags.runs {
        scenario.args(["--runs", runs]);
    }
    if let Some(only) = &flags.only {
        scenario.args(["--only", only]);
    }
    let scenarios = scenario.status().context("running cache-bench scenarios");
    let stopped_buildkit = buildkit.map_or(Ok(()), services::buildkit::Buildkit::stop);

    // The micro benchmarks' registry cases use the same registry.
    let mut micro_note = None;
    if flags.quick {
        micro_note = Some("skipped by --quick (run `cargo xtask bench` for them)".to_owned());
    } else if flags.no_micro {
        micro_note = Some("skipped by --no-micro".to_owned());
    } else {
        let criterion = target.join("criterion");
        let _ = std::fs::remove_dir_all(&criterion);
        let res = cargo(
            root,
            &env,
            &[
                "bench",
                "-p",
                "cache-bench",
                "--bench",
                "micro",
                "--",
                "--warm-up-time",
                "1",
                "--measurement-time",
                "3",
                "--sample-size",
                "10",
                "--noplot",
            ],
        );
        if let Err(err) = res {
            micro_note = Some(format!("`cargo bench -p cache-bench` failed: {err:#}"));
        }
    }
    let stopped = services.stop();
    let scenarios = scenarios?;

    let markdown = if flags.quick {
        out.join("BENCHMARKS.md")
    } else {
        root.join("BENCHMARKS.md")
    };
    let mut report = Command::new(bin_dir.join("cache-bench"));
    report
        .arg("report")
        .arg("--out")
        .arg(&out)
        .arg("--markdown")
        .arg(&markdown)
        .arg("--invocation")
        .arg(format!("cargo xtask bench {}", args.join(" ")).trim_end())
        .current_dir(root);
    match &micro_note {
        Some(note) => report.arg("--no-micro").arg(note),
        None => report.arg("--criterion").arg(target.join("criterion")),
    };
    let reported = report.status().context("running cache-bench report")?;
    stopped.context("stopping the bench registry")?;
    stopped_buildkit.context("stopping the bench buildkitd")?;
    anyhow::ensure!(
        scenarios.success(),
        "cache-bench scenarios failed ({scenarios}); logs of each run are in {}",
        out.join("work/runs").display()
    );
    anyhow::ensure!(reported.success(), "cache-bench report failed ({reported})");
    let _ = std::fs::remove_dir_all(&run_dir);
    eprintln!(
        "xtask: bench done in {:.0?}; report {}",
        started.elapsed(),
        markdown.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_reject_unknown_ones() {
        let args = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let flags = parse(&args(&["--quick", "--runs", "2", "--only", "compiled"])).expect("ok");
        assert!(flags.quick && !flags.no_peer);
        assert_eq!(flags.runs.as_deref(), Some("2"));
        assert_eq!(flags.only.as_deref(), Some("compiled"));
        assert!(parse(&args(&["--runs"])).is_err());
        let err = parse(&args(&["--fast"])).expect_err("unknown");
        assert!(err.to_string().contains("--fast"), "{err}");
    }
}
