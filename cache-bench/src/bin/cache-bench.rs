//! The scenario runner of `cargo xtask bench`: builds real projects with `buildcache` and
//! `buildah`, and writes `scenarios.json`, `micro.json` and BENCHMARKS.md.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use cache_bench::projects::Sizes;
use cache_bench::scenario::{self, RegistryInfo};
use cache_bench::{micro, report, suite};

const USAGE: &str = "\
usage:
  cache-bench scenarios --buildcache BIN --out DIR [--quick] [--runs N] [--no-peer] [--only ID,ID]
      runs the scenarios (ids: multistage, compiled, small-files, large-layer) against the
      registry named by CACHE_TEST_REGISTRY and CACHE_TEST_REGISTRY_LOG; writes DIR/scenarios.json
  cache-bench report --out DIR --markdown FILE [--criterion DIR | --no-micro WHY] [--invocation TEXT]
      writes DIR/micro.json from criterion's output and the report FILE from DIR/scenarios.json
  (`cargo xtask bench [--quick]` runs both, with the registry and the micro benchmarks)";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "__measure") {
        let (Some(file), Some(program)) = (args.get(1), args.get(2)) else {
            eprintln!("cache-bench __measure RUSAGE_FILE PROGRAM [ARGS…]");
            return ExitCode::from(2);
        };
        let code = scenario::measure_main(&PathBuf::from(file), program, &args[3..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    match run(args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect())
    {
        Ok(code) => code,
        Err(err) => {
            eprintln!("cache-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn value(args: &mut std::slice::Iter<'_, String>, flag: &str) -> anyhow::Result<String> {
    args.next()
        .cloned()
        .ok_or_else(|| anyhow::format_err!("{flag} needs a value\n\n{USAGE}"))
}

/// The flags of both commands.
struct Args {
    buildcache: Option<PathBuf>,
    out: Option<PathBuf>,
    quick: bool,
    runs: Option<usize>,
    peer: bool,
    only: Vec<String>,
    markdown: Option<PathBuf>,
    criterion: Option<PathBuf>,
    no_micro: Option<String>,
    invocation: String,
}

/// Reads the flags after the command; `None` when help was asked for (and printed).
fn parse_args(rest: &[String]) -> anyhow::Result<Option<Args>> {
    let mut args = Args {
        buildcache: None,
        out: None,
        quick: false,
        runs: None,
        peer: true,
        only: Vec::new(),
        markdown: None,
        criterion: None,
        no_micro: None,
        invocation: "cargo xtask bench".to_owned(),
    };
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--buildcache" => args.buildcache = Some(PathBuf::from(value(&mut it, arg)?)),
            "--out" => args.out = Some(PathBuf::from(value(&mut it, arg)?)),
            "--quick" => args.quick = true,
            "--runs" => {
                let v = value(&mut it, arg)?;
                args.runs = Some(v.parse::<usize>().map_err(|_| {
                    anyhow::format_err!("--runs {v:?}: give a whole number of runs, e.g. --runs 3")
                })?);
            }
            "--no-peer" => args.peer = false,
            "--only" => args.only = value(&mut it, arg)?.split(',').map(str::to_owned).collect(),
            "--markdown" => args.markdown = Some(PathBuf::from(value(&mut it, arg)?)),
            "--criterion" => args.criterion = Some(PathBuf::from(value(&mut it, arg)?)),
            "--no-micro" => args.no_micro = Some(value(&mut it, arg)?),
            "--invocation" => args.invocation = value(&mut it, arg)?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => anyhow::bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    Ok(Some(args))
}

fn run(args: Vec<String>) -> anyhow::Result<ExitCode> {
    let Some((command, rest)) = args.split_first() else {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    };
    let Some(args) = parse_args(rest)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let out = args
        .out
        .clone()
        .ok_or_else(|| anyhow::format_err!("--out DIR is required\n\n{USAGE}"))?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    match command.as_str() {
        "scenarios" => scenarios(args, &out),
        "report" => write_report(args, &out),
        other => anyhow::bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

/// `cache-bench scenarios`: runs the suite into `out`/scenarios.json; fails if an expectation did.
fn scenarios(args: Args, out: &Path) -> anyhow::Result<ExitCode> {
    let scenarios_json = out.join("scenarios.json");
    let buildcache = args
        .buildcache
        .ok_or_else(|| anyhow::format_err!("--buildcache BIN is required\n\n{USAGE}"))?;
    anyhow::ensure!(
        buildcache.is_file(),
        "--buildcache {}: no such file; build it with `cargo build --release -p cache-cli`",
        buildcache.display()
    );
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let quick = args.quick;
    let opts = suite::Options {
        buildcache: std::fs::canonicalize(&buildcache)?,
        measure_exe: std::env::current_exe().context("finding cache-bench itself")?,
        examples,
        work: out.join("work"),
        cache: out.join("cache"),
        runs: args.runs.unwrap_or(if quick { 1 } else { 3 }),
        sizes: if quick { Sizes::QUICK } else { Sizes::FULL },
        only: args.only,
        peer: args.peer && !quick,
        buildkit: suite::BuildKit::from_env(),
        registry: RegistryInfo::from_env()?,
    };
    let results = suite::run(&opts, quick)?;
    std::fs::write(&scenarios_json, serde_json::to_vec_pretty(&results)?)
        .with_context(|| format!("writing {}", scenarios_json.display()))?;
    eprintln!("cache-bench: wrote {}", scenarios_json.display());
    if results.failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "cache-bench: {} expectation(s) failed:",
            results.failures.len()
        );
        for failure in &results.failures {
            eprintln!("  {failure}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// `cache-bench report`: writes `out`/micro.json and the markdown report from
/// `out`/scenarios.json and criterion's results.
fn write_report(args: Args, out: &Path) -> anyhow::Result<ExitCode> {
    let scenarios_json = out.join("scenarios.json");
    let markdown = args
        .markdown
        .ok_or_else(|| anyhow::format_err!("--markdown FILE is required\n\n{USAGE}"))?;
    let results: suite::Results =
        serde_json::from_slice(&std::fs::read(&scenarios_json).with_context(|| {
            format!(
                "reading {}: run `cache-bench scenarios` first",
                scenarios_json.display()
            )
        })?)
        .with_context(|| format!("parsing {}", scenarios_json.display()))?;
    let micro = match (args.no_micro, args.criterion) {
        (Some(why), _) => Err(why),
        (None, Some(dir)) => {
            let list = micro::collect(&dir);
            if list.is_empty() {
                Err(format!("no criterion results under {}", dir.display()))
            } else {
                Ok(list)
            }
        }
        (None, None) => Err("no criterion directory given".to_owned()),
    };
    let micro_json = out.join("micro.json");
    std::fs::write(&micro_json, serde_json::to_vec_pretty(&micro)?)
        .with_context(|| format!("writing {}", micro_json.display()))?;
    let machine = report::Machine::detect();
    let text = report::render(&results, &machine, &micro, &args.invocation);
    std::fs::write(&markdown, text).with_context(|| format!("writing {}", markdown.display()))?;
    eprintln!(
        "cache-bench: wrote {} and {}",
        markdown.display(),
        micro_json.display()
    );
    Ok(ExitCode::SUCCESS)
}
