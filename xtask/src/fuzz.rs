//! `cargo xtask fuzz`: runs the cargo-fuzz targets of `fuzz/` with the nightly toolchain,
//! installing cargo-fuzz from crates.io when it is missing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

pub(crate) const USAGE: &str = "cargo xtask fuzz [--seconds N] [--target T]... [--record]";

/// Every target of `fuzz/Cargo.toml`, in the order they run.
pub(crate) const TARGETS: [&str; 6] = [
    "config",
    "manifest",
    "spec",
    "dockerfile",
    "dockerignore",
    "layer",
];

#[derive(Debug, PartialEq, Eq)]
struct Flags {
    /// Seconds per target.
    seconds: u64,
    /// The targets to run; all when empty.
    targets: Vec<String>,
    /// Append the results to `fuzz/RESULTS.md`.
    record: bool,
}

fn parse(args: &[String]) -> anyhow::Result<Flags> {
    let mut flags = Flags {
        seconds: 60,
        targets: Vec::new(),
        record: false,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let value = args
                    .next()
                    .ok_or_else(|| anyhow::format_err!("`--seconds` needs a number\n\n{USAGE}"))?;
                flags.seconds = value.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                    anyhow::format_err!("`--seconds {value}` is not a positive number")
                })?;
            }
            "--target" => {
                let value = args
                    .next()
                    .ok_or_else(|| anyhow::format_err!("`--target` needs a name\n\n{USAGE}"))?;
                anyhow::ensure!(
                    TARGETS.contains(&value.as_str()),
                    "unknown fuzz target `{value}` (one of {})",
                    TARGETS.join(", ")
                );
                flags.targets.push(value.clone());
            }
            "--record" => flags.record = true,
            other => anyhow::bail!("unknown argument `{other}` for `fuzz`\n\n{USAGE}"),
        }
    }
    Ok(flags)
}

/// What one target's run did.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    target: String,
    seconds: u64,
    executions: u64,
    /// The input that crashed (or hung, or ran out of memory), if one did.
    crash: Option<String>,
}

/// Whether `rustup` has a nightly toolchain (cargo-fuzz needs one).
pub(crate) fn has_nightly() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// `rustup run nightly cargo ARGS`: cargo-fuzz needs nightly's sanitizer flags.
fn nightly_cargo(root: &Path) -> Command {
    let mut command = Command::new("rustup");
    command.args(["run", "nightly", "cargo"]).current_dir(root);
    // `cargo xtask` runs under the stable toolchain's cargo; let rustup choose again.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "CARGO_TARGET_DIR",
    ] {
        command.env_remove(var);
    }
    command
}

fn ensure_cargo_fuzz(root: &Path) -> anyhow::Result<()> {
    let installed = nightly_cargo(root)
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if installed {
        return Ok(());
    }
    eprintln!(
        "xtask: installing cargo-fuzz from crates.io (cargo +nightly install cargo-fuzz --locked)"
    );
    let status = nightly_cargo(root)
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running cargo install")?;
    anyhow::ensure!(
        status.success(),
        "installing cargo-fuzz failed with {status}"
    );
    Ok(())
}

pub(crate) fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let flags = parse(args)?;
    anyhow::ensure!(
        has_nightly(),
        "fuzzing needs the nightly toolchain: rustup toolchain install nightly"
    );
    ensure_cargo_fuzz(root)?;
    let targets: Vec<String> = if flags.targets.is_empty() {
        TARGETS.iter().map(|t| (*t).to_owned()).collect()
    } else {
        flags.targets.clone()
    };
    let status = nightly_cargo(root)
        .args(["fuzz", "build"])
        .status()
        .context("running cargo fuzz build")?;
    anyhow::ensure!(status.success(), "`cargo fuzz build` failed with {status}");
    let work = root.join("target/fuzz");
    let mut outcomes = Vec::new();
    for target in &targets {
        outcomes.push(run_target(root, &work, target, flags.seconds)?);
    }
    eprintln!("\nxtask: fuzz results ({} s per target)", flags.seconds);
    for outcome in &outcomes {
        let verdict = match &outcome.crash {
            None => "no crash".to_owned(),
            Some(input) => format!("CRASH: {input}"),
        };
        eprintln!(
            "  {:<13} {:>12} executions  {verdict}",
            outcome.target, outcome.executions
        );
    }
    if flags.record {
        record(root, &outcomes)?;
    }
    let crashed: Vec<&str> = outcomes.iter().filter_map(|o| o.crash.as_deref()).collect();
    anyhow::ensure!(
        crashed.is_empty(),
        "fuzzing found crashes (reproduce with `cargo +nightly fuzz run TARGET INPUT`, then add a regression test to the crate's tests): {}",
        crashed.join(", ")
    );
    Ok(())
}

/// Runs `target` for `seconds` on a working copy of its corpus (new inputs go to `target/fuzz`,
/// never to the seeds in `fuzz/corpus`).
fn run_target(root: &Path, work: &Path, target: &str, seconds: u64) -> anyhow::Result<Outcome> {
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    for dir in [&corpus, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let seeds = root.join("fuzz/corpus").join(target);
    let log = work.join(format!("{target}.log"));
    eprintln!(
        "\nxtask: == fuzz {target} for {seconds} s (log: {})",
        log.display()
    );
    let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let status = nightly_cargo(root)
        .args(["fuzz", "run", target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args([
            "-timeout=20",
            "-rss_limit_mb=2048",
            "-max_len=262144",
            "-print_final_stats=1",
        ])
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()
        .context("running cargo fuzz run")?;
    let text = fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let outcome = outcome_of(target, seconds, &text, status.success());
    if outcome.crash.is_some() {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        for line in tail.into_iter().rev() {
            eprintln!("  {line}");
        }
    }
    Ok(outcome)
}

/// Reads libFuzzer's output: the executions of `-print_final_stats` and the input it wrote on a
/// crash (`Test unit written to PATH`); a failed run with no such input is a crash too.
fn outcome_of(target: &str, seconds: u64, log: &str, success: bool) -> Outcome {
    let executions = log
        .lines()
        .rev()
        .filter_map(|line| line.strip_prefix("stat::number_of_executed_units:"))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0);
    // libFuzzer also writes `slow-unit-*` files for inputs over 10 s (a loaded machine makes
    // them); they are no failure: only crash-, timeout-, oom- and leak- inputs are.
    let written = log
        .lines()
        .rev()
        .filter_map(|line| line.split_once("Test unit written to "))
        .map(|(_, path)| path.trim().to_owned())
        .find(|path| {
            let name = path.rsplit('/').next().unwrap_or(path);
            ["crash-", "timeout-", "oom-", "leak-"]
                .iter()
                .any(|prefix| name.starts_with(prefix))
        });
    let crash = match (success, written) {
        (true, None) => None,
        (_, Some(path)) => Some(path),
        (false, None) => Some(format!(
            "{target} failed before writing an input (see its log)"
        )),
    };
    Outcome {
        target: target.to_owned(),
        seconds,
        executions,
        crash,
    }
}

/// Appends one row per outcome to `fuzz/RESULTS.md`.
fn record(root: &Path, outcomes: &[Outcome]) -> anyhow::Result<()> {
    let path: PathBuf = root.join("fuzz/RESULTS.md");
    let date = command_line(root, "date", &["-u", "+%Y-%m-%d %H:%M"])?;
    let commit = command_line(root, "git", &["rev-parse", "--short=10", "HEAD"])?;
    let mut text =
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    for outcome in outcomes {
        let crashes = match &outcome.crash {
            None => "0".to_owned(),
            Some(input) => format!("1 ({input})"),
        };
        text.push_str(&format!(
            "| {date} | {commit} | {} | {} | {} | {crashes} |\n",
            outcome.target, outcome.seconds, outcome.executions
        ));
    }
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask: results appended to {}", path.display());
    Ok(())
}

fn command_line(root: &Path, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .current_dir(root)
        .output()
        .with_context(|| format!("running {program}"))?;
    anyhow::ensure!(output.status.success(), "`{program}` failed");
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn flags_are_parsed_and_checked() {
        let flags = parse(&args(&["--seconds", "20", "--target", "layer", "--record"])).unwrap();
        assert_eq!(
            flags,
            Flags {
                seconds: 20,
                targets: vec!["layer".to_owned()],
                record: true
            }
        );
        assert!(
            parse(&args(&["--target", "nope"]))
                .unwrap_err()
                .to_string()
                .contains("one of config")
        );
        assert!(parse(&args(&["--seconds", "0"])).is_err());
        assert!(parse(&args(&["--jobs"])).is_err());
    }

    #[test]
    fn the_targets_are_those_of_the_fuzz_manifest() {
        let manifest = fs::read_to_string(crate::project_root().join("fuzz/Cargo.toml")).unwrap();
        let names: Vec<&str> = manifest
            .lines()
            .filter_map(|line| line.strip_prefix("name = \""))
            .filter_map(|rest| rest.strip_suffix('"'))
            .filter(|name| *name != "buildcache-fuzz")
            .collect();
        assert_eq!(names, TARGETS);
        for target in TARGETS {
            let seeds = crate::project_root().join("fuzz/corpus").join(target);
            assert!(
                fs::read_dir(&seeds).unwrap().count() > 0,
                "{target} has seeds"
            );
        }
    }

    #[test]
    fn libfuzzer_output_gives_executions_and_the_crashing_input() {
        let clean =
            "#1024 DONE cov: 10\nstat::number_of_executed_units: 123456\nstat::peak_rss_mb: 50\n";
        assert_eq!(
            outcome_of("spec", 20, clean, true),
            Outcome {
                target: "spec".into(),
                seconds: 20,
                executions: 123456,
                crash: None
            }
        );
        let crashed = "==1== ERROR: libFuzzer: deadly signal\nartifact_prefix='a/'; Test unit written to a/crash-abc\nstat::number_of_executed_units: 77\n";
        let outcome = outcome_of("layer", 20, crashed, false);
        assert_eq!(outcome.crash.as_deref(), Some("a/crash-abc"));
        assert_eq!(outcome.executions, 77);
        assert!(
            outcome_of("layer", 20, "error: could not compile", false)
                .crash
                .is_some()
        );
        // A slow unit (an input over 10 s on a loaded machine) is written too, but the run
        // went on and ended well: no crash.
        let slow = "Test unit written to a/slow-unit-1f\nDone 9 runs in 3601 second(s)\nstat::number_of_executed_units: 9\n";
        assert_eq!(outcome_of("spec", 3600, slow, true).crash, None);
        let timeout = "Test unit written to a/slow-unit-1f\nTest unit written to a/timeout-2e\n";
        assert_eq!(
            outcome_of("spec", 3600, timeout, false).crash.as_deref(),
            Some("a/timeout-2e")
        );
    }
}
