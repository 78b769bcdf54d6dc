//! Project automation for buildcache: `cargo xtask test`, `ci`, `registry`, `buildkit`, `deps`, `tidy`, `bench`, `fuzz`.

mod bench;
mod demo;
mod fuzz;
mod golden;
mod services;
mod test;
mod tidy;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  test [-- ARGS]                     the whole suite: fmt --check, clippy, tidy, cargo test --workspace ARGS,
                                     against freshly started loopback registries (installs missing tools as root)
  ci                                 test, then cargo doc with warnings denied
  deps                               install (as root) or list the Debian packages the suite needs
  registry up [--auth] [--dir DIR]   start loopback registries and print their CACHE_TEST_REGISTRY* variables
  registry down                      stop the registries started by `registry up`
  buildkit up                        start a buildkitd from ../shared/tools/buildkit (its own state and socket)
                                     and print its CACHE_TEST_BUILDKIT* variables
  buildkit down                      stop the buildkitd started by `buildkit up` and remove its state
  llb-golden [--check]               write (or check) cache-cli/tests/corpus/*/llb.jsonl: the ops BuildKit's
                                     dockerfile2llb derives from each corpus Dockerfile
  demo                               the main job: build examples/multistage cold with --cache-to type=local,
                                     then warm on an empty root with --cache-from, and print both times
  tidy                               check docs, banned constructs, function length, manifests and layering
  bench [--quick] [--runs N] [--no-peer] [--no-micro] [--only IDS]
                                     scenario benchmarks (vs buildah) and criterion micro benchmarks
                                     into BENCHMARKS.md; --quick is the smoke test of `test`
  fuzz [--seconds N] [--target T]... [--record]
                                     run the cargo-fuzz targets of fuzz/ (nightly; installs cargo-fuzz),
                                     N seconds each (60); --record appends the results to fuzz/RESULTS.md";

fn main() -> ExitCode {
    match run_task() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Printed by hand rather than by returning the error, which would add a backtrace
            // whenever RUST_BACKTRACE is set for the tests.
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run_task() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    let (task, rest) = match args.split_first() {
        Some((task, rest)) => (task.as_str(), rest),
        None => ("help", &[][..]),
    };
    match task {
        "test" => test::run(&root, test::Suite::Test, passthrough_args(task, rest)?),
        "ci" => {
            no_args(task, rest)?;
            test::run(&root, test::Suite::Ci, &[])
        }
        "deps" => {
            no_args(task, rest)?;
            services::ensure_tools()?;
            eprintln!("xtask: all test tools are installed");
            Ok(())
        }
        "registry" => registry(rest),
        "buildkit" => buildkit(&root, rest),
        "llb-golden" => match rest {
            [] => golden::run(&root, false),
            [flag] if flag == "--check" => golden::run(&root, true),
            _ => anyhow::bail!("`llb-golden` takes only `--check`\n\n{USAGE}"),
        },
        "demo" => {
            no_args(task, rest)?;
            demo::run(&root)
        }
        "tidy" => {
            no_args(task, rest)?;
            tidy::run(&root)
        }
        "bench" => test::run_bench_scenarios(&root, rest),
        "fuzz" => fuzz::run(&root, rest),
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(anyhow::format_err!("unknown task `{other}`\n\n{USAGE}")),
    }
}

fn registry(args: &[String]) -> anyhow::Result<()> {
    let services_dir = services_dir();
    match args.split_first() {
        Some((action, rest)) if action == "up" => {
            let mut auth = false;
            let mut base = services_dir.clone();
            let mut rest = rest.iter();
            while let Some(arg) = rest.next() {
                match arg.as_str() {
                    "--auth" => auth = true,
                    "--dir" => {
                        let dir = rest
                            .next()
                            .ok_or_else(|| anyhow::format_err!("`--dir` needs a directory"))?;
                        base = std::env::current_dir()?.join(dir);
                    }
                    other => {
                        anyhow::bail!("unknown argument `{other}` for `registry up`\n\n{USAGE}")
                    }
                }
            }
            services::registry_up(&services_dir, &base, auth)
        }
        Some((action, rest)) if action == "down" => {
            no_args("registry down", rest)?;
            services::registry_down(&services_dir)
        }
        _ => anyhow::bail!("`registry` needs `up` or `down`\n\n{USAGE}"),
    }
}

fn buildkit(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let services_dir = services_dir();
    match args.split_first() {
        Some((action, rest)) if action == "up" => {
            no_args("buildkit up", rest)?;
            services::buildkit::up(root, &services_dir)
        }
        Some((action, rest)) if action == "down" => {
            no_args("buildkit down", rest)?;
            services::buildkit::down(&services_dir)
        }
        _ => anyhow::bail!("`buildkit` needs `up` or `down`\n\n{USAGE}"),
    }
}

/// Everything after an optional leading `--`; anything else is a usage error.
fn passthrough_args<'a>(task: &str, args: &'a [String]) -> anyhow::Result<&'a [String]> {
    match args.split_first() {
        None => Ok(args),
        Some((first, rest)) if first == "--" => Ok(rest),
        Some((first, _)) => anyhow::bail!(
            "unknown argument `{first}` for `{task}`; pass cargo test arguments after `--`, \
             e.g. `cargo xtask {task} -- -p cache-core`"
        ),
    }
}

fn no_args(task: &str, args: &[String]) -> anyhow::Result<()> {
    match args.first() {
        None => Ok(()),
        Some(arg) => anyhow::bail!("`{task}` takes no arguments, got `{arg}`\n\n{USAGE}"),
    }
}

/// The workspace root: the parent of this crate's directory.
pub(crate) fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits one directory below the workspace root")
        .to_path_buf()
}

/// `target/test-services`: registry configs, storage, logs and `state.json`.
pub(crate) fn services_dir() -> PathBuf {
    target_dir().join("test-services")
}

/// `../shared` beside the checkout (tools, fixtures and specs), or `None` where it is absent.
///
/// A git worktree elsewhere finds it beside the main checkout.
pub(crate) fn shared_dir(root: &Path) -> Option<PathBuf> {
    let beside = root.join("../shared");
    if beside.is_dir() {
        return Some(beside);
    }
    let output = std::process::Command::new("git")
        .args(["rev-parse", "--path-format=absolute", "--git-common-dir"])
        .current_dir(root)
        .output()
        .ok()?;
    let common = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    let main_checkout = common.parent()?;
    let shared = main_checkout.join("../shared");
    (output.status.success() && shared.is_dir()).then_some(shared)
}

/// The cargo target directory (`CARGO_TARGET_DIR` or `target`).
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => project_root().join(dir),
        None => project_root().join("target"),
    }
}

/// The cargo that runs xtask (`$CARGO`), or `cargo` from `PATH`.
pub(crate) fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_args_follow_a_double_dash() {
        let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(passthrough_args("test", &[]).expect("no args").is_empty());
        let given = args(&["--", "-p", "cache-core"]);
        assert_eq!(
            passthrough_args("test", &given).expect("after --"),
            &given[1..]
        );
        let err = passthrough_args("test", &args(&["-p"])).expect_err("needs --");
        assert!(err.to_string().contains("after `--`"), "{err}");
    }

    #[test]
    fn project_root_is_the_workspace() {
        let root = project_root();
        assert!(
            root.join("xtask/Cargo.toml").is_file(),
            "{}",
            root.display()
        );
        assert!(
            std::fs::read_to_string(root.join("Cargo.toml"))
                .expect("root manifest")
                .contains("[workspace]")
        );
    }
}
