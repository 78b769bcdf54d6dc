//! `cargo xtask test`, `ci` and `bench`: the whole suite against freshly started test services.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::services::{self, Lifetime, Services};

/// Which suite to run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Suite {
    /// `cargo xtask test`: fmt, clippy, tidy, tests.
    Test,
    /// `cargo xtask ci`: the same, then docs with warnings denied.
    Ci,
}

/// Runs the suite; `test_args` go to `cargo test --workspace`.
///
/// Every step runs even after an earlier one failed, so one run shows every problem.
pub(crate) fn run(root: &Path, suite: Suite, test_args: &[String]) -> anyhow::Result<()> {
    services::ensure_tools()?;
    ensure_toolchain_components()?;
    let run_dir = services::run_dir(&crate::services_dir(), "test")?;
    let services = services::start_registries(&run_dir, true, Lifetime::Owned)?;
    let buildkit = start_buildkit(root, &run_dir, &services)?;
    let mut env = suite_env(root, &services);
    if let Some(buildkit) = &buildkit {
        env.extend(buildkit.env());
    }
    for (name, value) in &env {
        eprintln!("xtask: {name}={value}");
    }

    let mut results: Vec<(&str, Duration, anyhow::Result<()>)> = Vec::new();
    let mut step = |name: &'static str, action: &mut dyn FnMut() -> anyhow::Result<()>| {
        eprintln!("\nxtask: == {name}");
        let started = Instant::now();
        let res = action();
        let elapsed = started.elapsed();
        match &res {
            Ok(()) => eprintln!("xtask: {name} passed in {elapsed:.1?}"),
            Err(err) => eprintln!("xtask: {name} FAILED in {elapsed:.1?}: {err:#}"),
        }
        results.push((name, elapsed, res));
    };

    step("fmt", &mut || {
        cargo(root, &env, &["fmt", "--all", "--", "--check"])
    });
    step("clippy", &mut || {
        cargo(
            root,
            &env,
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        )
    });
    step("tidy", &mut || crate::tidy::run(root));
    if buildkit.is_some() {
        // The corpus's op goldens must be what this BuildKit derives (`cargo xtask llb-golden`).
        step("llb-golden", &mut || crate::golden::run(root, true));
    }
    step("test", &mut || {
        let mut args = vec!["test", "--workspace"];
        args.extend(test_args.iter().map(String::as_str));
        cargo(root, &env, &args)
    });
    // The services are only needed up to here; stop them now so their shutdown errors show.
    let stopped_buildkit = buildkit.map_or(Ok(()), services::buildkit::Buildkit::stop);
    let stopped = services.stop();
    if suite == Suite::Ci {
        step("doc", &mut || {
            let mut doc_env = env.clone();
            doc_env.push(("RUSTDOCFLAGS".to_owned(), "-D warnings".to_owned()));
            cargo(root, &doc_env, &["doc", "--workspace", "--no-deps"])
        });
    }
    // Smoke test of the benchmarks: every scenario runs and warm builds are fully cached.
    step("bench", &mut || {
        crate::bench::run(root, &["--quick".to_owned()])
    });
    // Smoke test of the fuzz targets on CI: 20 s each, with the nightly toolchain CI has.
    if std::env::var_os("CI").is_some() {
        if crate::fuzz::has_nightly() {
            step("fuzz", &mut || {
                crate::fuzz::run(root, &["--seconds".to_owned(), "20".to_owned()])
            });
        } else {
            eprintln!(
                "\nxtask: no nightly toolchain, so the fuzz smoke (`cargo xtask fuzz --seconds 20`) is skipped"
            );
        }
    }

    eprintln!("\nxtask: summary");
    for (name, elapsed, res) in &results {
        let verdict = if res.is_ok() { "ok" } else { "FAILED" };
        eprintln!("  {name:<8} {verdict:<7} {elapsed:.1?}");
    }
    stopped.context("stopping the test registries")?;
    stopped_buildkit.context("stopping buildkitd")?;
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, _, res)| res.is_err())
        .map(|(name, _, _)| *name)
        .collect();
    if !failed.is_empty() {
        eprintln!("xtask: registry logs are kept in {}", run_dir.display());
        anyhow::bail!("failed steps: {}", failed.join(", "));
    }
    remove_run_dir(&run_dir);
    Ok(())
}

/// The BuildKit of `../shared/tools/buildkit`, started for the interop tests; `None` (the tests
/// skip) where `../shared` is absent, an error there on CI.
fn start_buildkit(
    root: &Path,
    run_dir: &Path,
    services: &Services,
) -> anyhow::Result<Option<services::buildkit::Buildkit>> {
    let Some(bin_dir) = services::buildkit::install(root)? else {
        anyhow::ensure!(
            std::env::var_os("CI").is_none(),
            "../shared/tools/buildkit is absent, and CI requires the BuildKit interop tests"
        );
        eprintln!(
            "xtask: ../shared/tools/buildkit is absent: the BuildKit interop tests will skip"
        );
        return Ok(None);
    };
    let registries = services.addrs();
    let buildkit = services::buildkit::start(&bin_dir, run_dir, &registries, Lifetime::Owned)?;
    Ok(Some(buildkit))
}

/// Logs and storage of a successful run are of no further use.
fn remove_run_dir(run_dir: &Path) {
    if let Err(err) = std::fs::remove_dir_all(run_dir) {
        eprintln!("xtask: could not remove {}: {err}", run_dir.display());
    }
}

/// `cargo xtask bench [--quick] [ARGS]`: scenario and micro benchmarks, then BENCHMARKS.md.
pub(crate) fn run_bench_scenarios(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let packages = crate::tidy::workspace_packages(root)?;
    let has_runner = packages.iter().any(|package| {
        package.name == "cache-bench"
            && package.targets.iter().any(|(name, kinds)| {
                name == "cache-bench" && kinds.iter().any(|kind| kind == "bin")
            })
    });
    anyhow::ensure!(
        has_runner,
        "cache-bench has no scenario runner (no `cache-bench` bin target)"
    );
    crate::bench::run(root, args)
}

/// The registry variables plus `BUILDCACHE_FIXTURES` when `../shared/fixtures/buildkit` exists.
fn suite_env(root: &Path, services: &Services) -> Vec<(String, String)> {
    let mut env = services.env();
    let fixtures = crate::shared_dir(root).map(|shared| shared.join("fixtures/buildkit"));
    if let Some(Ok(fixtures)) = fixtures.map(|fixtures| fixtures.canonicalize()) {
        env.push((
            "BUILDCACHE_FIXTURES".to_owned(),
            fixtures.display().to_string(),
        ));
    }
    env
}

/// rustfmt and clippy are rustup components that a minimal toolchain lacks.
fn ensure_toolchain_components() -> anyhow::Result<()> {
    let missing: Vec<&str> = [("fmt", "rustfmt"), ("clippy", "clippy")]
        .into_iter()
        .filter(|(subcommand, _)| {
            !Command::new(crate::cargo())
                .args([*subcommand, "--version"])
                .output()
                .is_ok_and(|output| output.status.success())
        })
        .map(|(_, component)| component)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let has_rustup = Command::new("rustup")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    anyhow::ensure!(
        has_rustup,
        "the toolchain lacks {}; install them (with rustup: `rustup component add {}`)",
        missing.join(" and "),
        missing.join(" ")
    );
    eprintln!("xtask: rustup component add {}", missing.join(" "));
    let status = Command::new("rustup")
        .args(["component", "add"])
        .args(&missing)
        .status()
        .context("running rustup")?;
    anyhow::ensure!(
        status.success(),
        "`rustup component add {}` failed with {status}",
        missing.join(" ")
    );
    Ok(())
}

/// Runs `$CARGO args` in `root` with `env` added.
fn cargo(root: &Path, env: &[(String, String)], args: &[&str]) -> anyhow::Result<()> {
    let cargo: OsString = crate::cargo();
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().map(|(name, value)| (name, value)))
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
