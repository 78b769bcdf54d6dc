//! BENCHMARKS.md: the machine, the date, one table per scenario and mode with our figures, the
//! peer's and their ratio, the commands that reproduce them, and the micro benchmarks.

use std::fmt::Write as _;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::micro::{self, MicroResult};
use crate::scenario::Sample;
use crate::stats::Summary;
use crate::suite::{Figure, ProjectResult, Results};

/// The machine and software the figures come from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    /// UTC date and time of the run.
    pub date: String,
    /// CPU model.
    pub cpu: String,
    /// Online cores.
    pub cores: usize,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// `/etc/os-release` PRETTY_NAME.
    pub os: String,
    /// The commit measured (`git describe --always --dirty`).
    pub commit: String,
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

impl Machine {
    /// Reads `/proc`, `/etc/os-release`, `date` and `git`.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let os = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_default();
        Machine {
            date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: mem_kib / (1024.0 * 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            os,
            commit: command_line("git", &["describe", "--always", "--dirty"]),
        }
    }
}

/// Seconds with a precision that suits them.
pub fn secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

/// `median (min–max)` of `f` over the samples.
fn spread(
    samples: &[Sample],
    f: impl Fn(&Sample) -> Option<f64>,
    unit: fn(f64) -> String,
) -> String {
    let values: Vec<f64> = samples.iter().filter_map(f).collect();
    match Summary::of(&values) {
        None => "—".into(),
        Some(s) if s.count == 1 => unit(s.median),
        Some(s) => format!("{} ({}–{})", unit(s.median), unit(s.min), unit(s.max)),
    }
}

fn median(samples: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    Summary::of(&samples.iter().filter_map(f).collect::<Vec<_>>()).map(|s| s.median)
}

/// Bytes in binary units.
pub fn bytes(b: f64) -> String {
    if b < 1024.0 {
        format!("{b:.0} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    }
}

fn rss(samples: &[Sample]) -> String {
    samples
        .iter()
        .map(|s| s.peak_rss_kib)
        .max()
        .map_or("—".into(), |k| bytes(k as f64 * 1024.0))
}

fn cached(samples: &[Sample]) -> String {
    let mut counts: Vec<String> = samples
        .iter()
        .map(|s| format!("{}/{}", s.cached_steps, s.total_steps))
        .collect();
    counts.dedup();
    counts.join(", ")
}

fn count(n: f64) -> String {
    format!("{n:.0}")
}

fn find<'a>(figures: &'a [Figure], name: &str) -> Option<&'a Figure> {
    figures.iter().find(|f| f.name == name)
}

/// What each row means, and which row the peer cannot fill.
struct Row {
    label: &'static str,
    figure: &'static str,
    value: fn(&Sample) -> Option<f64>,
    unit: fn(f64) -> String,
    show_rss: bool,
    peer_missing: Option<&'static str>,
    buildkit_missing: Option<&'static str>,
}

const ROWS: &[Row] = &[
    Row {
        label: "cold (empty root, no cache; ours exports to a local dir)",
        figure: "cold",
        value: |s| Some(s.wall_s),
        unit: secs,
        show_rss: true,
        peer_missing: None,
        buildkit_missing: None,
    },
    Row {
        label: "cold + registry export",
        figure: "cold-registry",
        value: |s| Some(s.wall_s),
        unit: secs,
        show_rss: true,
        peer_missing: None,
        buildkit_missing: None,
    },
    Row {
        label: "bytes uploaded by the cold registry export",
        figure: "cold-registry",
        value: |s| Some(s.traffic.bytes_up as f64),
        unit: bytes,
        show_rss: false,
        peer_missing: None,
        buildkit_missing: None,
    },
    Row {
        label: "warm-local (empty root, `--cache-from type=local`)",
        figure: "warm-local",
        value: |s| Some(s.wall_s),
        unit: secs,
        show_rss: true,
        peer_missing: Some(
            "buildah 1.28 has no local cache import: its `--cache-from` takes only a registry repository",
        ),
        buildkit_missing: None,
    },
    Row {
        label: "import latency, local (start → first cached step)",
        figure: "warm-local",
        value: |s| s.first_cached_s,
        unit: secs,
        show_rss: false,
        peer_missing: Some("no local cache import in buildah"),
        buildkit_missing: None,
    },
    Row {
        label: "warm-registry (empty root, `--cache-from` the registry)",
        figure: "warm-registry",
        value: |s| Some(s.wall_s),
        unit: secs,
        show_rss: true,
        peer_missing: None,
        buildkit_missing: None,
    },
    Row {
        label: "import latency, registry (start → first cached step)",
        figure: "warm-registry",
        value: |s| s.first_cached_s,
        unit: secs,
        show_rss: false,
        peer_missing: None,
        buildkit_missing: None,
    },
    Row {
        label: "layer blobs downloaded by warm-registry",
        figure: "warm-registry",
        value: |s| Some(s.traffic.layer_gets as f64),
        unit: count,
        show_rss: false,
        peer_missing: None,
        buildkit_missing: None,
    },
    Row {
        label: "one-change (one source file edited, warm from the registry)",
        figure: "one-change",
        value: |s| Some(s.wall_s),
        unit: secs,
        show_rss: true,
        peer_missing: None,
        buildkit_missing: None,
    },
    Row {
        label: "one-change importing a `cache-mounts=true` cache (cache mounts filled from it)",
        figure: "one-change-mounts",
        value: |s| Some(s.wall_s),
        unit: secs,
        show_rss: true,
        peer_missing: Some("buildah cannot export cache mounts"),
        buildkit_missing: Some("BuildKit cannot export cache mounts (moby/buildkit#1474)"),
    },
    Row {
        label: "bytes uploaded by the cold `cache-mounts=true` registry export",
        figure: "cold-mounts",
        value: |s| Some(s.traffic.bytes_up as f64),
        unit: bytes,
        show_rss: false,
        peer_missing: Some("buildah cannot export cache mounts"),
        buildkit_missing: Some("BuildKit cannot export cache mounts"),
    },
    Row {
        label: "no-op export: whole warm build with an unchanged re-export",
        figure: "noop-export",
        value: |s| Some(s.wall_s),
        unit: secs,
        show_rss: true,
        peer_missing: None,
        buildkit_missing: None,
    },
    Row {
        label: "no-op export: the export phase alone",
        figure: "noop-export",
        value: |s| s.exports.first().map(|e| e.duration_ms as f64 / 1000.0),
        unit: secs,
        show_rss: false,
        peer_missing: Some("buildah reports no export time of its own"),
        buildkit_missing: Some("the export runs inside the daemon"),
    },
    Row {
        label: "no-op export: blob bytes uploaded (registry log)",
        figure: "noop-export",
        value: |s| Some(s.traffic.bytes_up as f64),
        unit: bytes,
        show_rss: false,
        peer_missing: None,
        buildkit_missing: None,
    },
];

fn ratio(ours: Option<f64>, peer: Option<f64>) -> String {
    match (ours, peer) {
        (Some(o), Some(p)) if p > 0.0 => format!("{:.2}", o / p),
        (Some(o), Some(p)) if o == 0.0 && p == 0.0 => "equal (0)".into(),
        _ => "—".into(),
    }
}

/// A peer's cells of one row: value, steps cached (and peak RSS when `rss`), ratio.
fn peer_cells(
    row: &Row,
    ours: &Figure,
    peer: Option<&Figure>,
    missing_row: Option<&'static str>,
    missing_peer: Option<&str>,
    rss_cell: bool,
) -> Vec<String> {
    let mut cells = Vec::new();
    match peer {
        Some(p) if missing_row.is_none() => {
            cells.push(spread(&p.samples, row.value, row.unit));
            if rss_cell {
                cells.push(if row.show_rss {
                    rss(&p.samples)
                } else {
                    String::new()
                });
            }
            cells.push(if row.show_rss {
                cached(&p.samples)
            } else {
                String::new()
            });
            cells.push(ratio(
                median(&ours.samples, row.value),
                median(&p.samples, row.value),
            ));
        }
        _ => {
            let why = missing_row
                .map(str::to_owned)
                .or_else(|| missing_peer.map(|_| "not run (see below)".to_owned()))
                .unwrap_or_else(|| "—".to_owned());
            cells.push(format!("n/a: {why}"));
            if rss_cell {
                cells.push(String::new());
            }
            cells.push(String::new());
            cells.push("—".into());
        }
    }
    cells
}

fn mode_table(out: &mut String, project: &ProjectResult, mode: &str, ours: &[Figure]) {
    let _ = writeln!(out, "#### `mode={mode}`\n");
    out.push_str("| figure | buildcache: median (min–max) | peak RSS | steps cached | BuildKit: median (min–max) | steps cached | ours / BuildKit | buildah: median (min–max) | peak RSS | steps cached | ours / buildah |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    let buildkit = project
        .buildkit
        .iter()
        .find(|(m, _)| m == mode)
        .map(|(_, f)| f.as_slice())
        .unwrap_or_default();
    for row in ROWS {
        let Some(o) = find(ours, row.figure) else {
            continue;
        };
        let mut cells = vec![
            row.label.to_owned(),
            spread(&o.samples, row.value, row.unit),
            if row.show_rss {
                rss(&o.samples)
            } else {
                String::new()
            },
            if row.show_rss {
                cached(&o.samples)
            } else {
                String::new()
            },
        ];
        cells.extend(peer_cells(
            row,
            o,
            find(buildkit, row.figure),
            row.buildkit_missing,
            project.buildkit_missing.as_deref(),
            false,
        ));
        cells.extend(peer_cells(
            row,
            o,
            find(&project.peer, row.figure),
            row.peer_missing,
            project.peer_missing.as_deref(),
            true,
        ));
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
}

fn headline(results: &Results) -> String {
    let mut out = String::new();
    let wall = |f: Option<&Figure>| f.and_then(|f| median(&f.samples, |s| Some(s.wall_s)));
    for project in &results.projects {
        if !matches!(project.id.as_str(), "multistage" | "compiled") {
            continue;
        }
        let Some((_, max)) = project.modes.iter().find(|(m, _)| m == "max") else {
            continue;
        };
        let bk = project
            .buildkit
            .iter()
            .find(|(m, _)| m == "max")
            .map(|(_, f)| f.as_slice())
            .unwrap_or_default();
        let pair = |name: &str| {
            let ours = wall(find(max, name));
            let theirs = wall(find(bk, name));
            match (ours, theirs) {
                (Some(o), Some(t)) => {
                    format!("{} vs BuildKit {} ({:.2}×)", secs(o), secs(t), o / t)
                }
                (Some(o), None) => format!("{} (BuildKit: —)", secs(o)),
                _ => "—".into(),
            }
        };
        let gap = match (
            wall(find(max, "warm-registry")),
            wall(find(max, "warm-local")),
        ) {
            (Some(r), Some(l)) => secs((r - l).max(0.0)),
            _ => "—".into(),
        };
        let _ = writeln!(
            out,
            "- `{}` (`mode=max`), every run on an empty root / a pruned daemon: warm from the registry {}; warm from a local directory {}; cold with registry export {}; registry warm − local warm: {gap}.",
            project.id,
            pair("warm-registry"),
            pair("warm-local"),
            pair("cold-registry"),
        );
        if let Some(why) = &project.buildkit_missing {
            let _ = writeln!(out, "  No BuildKit figures for `{}`: {why}", project.id);
        }
    }
    let Some(compiled) = results.projects.iter().find(|p| p.id == "compiled") else {
        return out;
    };
    let Some((_, max)) = compiled.modes.iter().find(|(m, _)| m == "max") else {
        return out;
    };
    let cold = wall(find(max, "cold"));
    let warm = wall(find(max, "warm-registry"));
    let change = wall(find(max, "one-change"));
    if let (Some(cold), Some(warm)) = (cold, warm) {
        let _ = writeln!(
            out,
            "- Compiled project (gcc, `mode=max`): cold {} → warm from the registry on an empty root {} ({:.0}× faster); one source file changed: {}.",
            secs(cold),
            secs(warm),
            cold / warm.max(1e-3),
            change.map_or("—".into(), secs)
        );
    }
    let peer_warm = wall(find(&compiled.peer, "warm-registry"));
    let peer_cold = wall(find(&compiled.peer, "cold"));
    match (warm, peer_warm, cold, peer_cold) {
        (Some(w), Some(pw), Some(c), Some(pc)) => {
            let _ = writeln!(
                out,
                "- Against buildah (same Dockerfile, same registry): warm {} vs {} ({:.2}× buildah's time), cold {} vs {} ({:.2}×).",
                secs(w),
                secs(pw),
                w / pw,
                secs(c),
                secs(pc),
                c / pc
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "- No buildah figures: {}",
                compiled
                    .peer_missing
                    .as_deref()
                    .unwrap_or("see the scenario tables")
            );
        }
    }
    out
}

/// Renders the whole report; `micro` is `Err(why)` when the micro benchmarks did not run.
pub fn render(
    results: &Results,
    machine: &Machine,
    micro: &Result<Vec<MicroResult>, String>,
    invocation: &str,
) -> String {
    let mut out = String::new();
    out.push_str("# Benchmarks\n\n");
    let _ = writeln!(
        out,
        "Written by `{invocation}` on {}; raw data in `target/bench/scenarios.json` and `target/bench/micro.json`, each run's output in `target/bench/work/runs/`.\n",
        machine.date
    );
    if results.quick {
        out.push_str("**This is a `--quick` run** (reduced sizes, one run per figure, no peer): a smoke test, not figures to quote.\n\n");
    }
    out.push_str("## Headline\n\n");
    out.push_str(&headline(results));
    out.push('\n');
    machine_section(&mut out, results, machine);
    method_section(&mut out, results);
    scenarios_section(&mut out, results);
    out.push_str("## Micro benchmarks\n\n");
    match micro {
        Err(why) => {
            let _ = writeln!(out, "Not run: {why}.\n");
        }
        Ok(list) => micro_section(&mut out, list),
    }
    out
}

/// Where the figures were taken: CPU, OS, commit, the peers and the registry.
fn machine_section(out: &mut String, results: &Results, machine: &Machine) {
    out.push_str("## Machine\n\n");
    let _ = writeln!(
        out,
        "- CPU: {} ({} cores online), memory {:.1} GiB",
        machine.cpu, machine.cores, machine.memory_gib
    );
    let _ = writeln!(out, "- OS: {}, kernel {}", machine.os, machine.kernel);
    let _ = writeln!(
        out,
        "- buildcache: commit `{}`, {} build",
        machine.commit,
        if results.quick { "debug" } else { "release" }
    );
    let _ = writeln!(
        out,
        "- peer: BuildKit {}",
        match &results.buildkit_version {
            Ok(v) => format!(
                "({v}), `buildkitd` from ../shared/tools/buildkit (OCI worker, `runc`, overlayfs) started by `cargo xtask bench`, emptied with `buildctl prune --all` before every run"
            ),
            Err(why) => format!("not run: {why}"),
        }
    );
    let _ = writeln!(
        out,
        "- peer: {}",
        match &results.peer_version {
            Ok(v) => format!(
                "{v} (Debian), `STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot`, its own `--root`/`--runroot` per run"
            ),
            Err(why) => format!("not run: {why}"),
        }
    );
    out.push_str("- registry: Debian's `docker-registry` (distribution 2.8) on 127.0.0.1, started by `cargo xtask bench`; filesystem storage on the same disk\n\n");
}

/// How each figure is measured and compared.
fn method_section(out: &mut String, results: &Results) {
    out.push_str("## How the figures are taken\n\n");
    let _ = writeln!(
        out,
        "- Each figure is the median of {} run(s), with min and max; every run starts from an empty root (`--root` for buildcache, `--root/--runroot` for buildah), so only the named cache is warm.",
        results.runs
    );
    out.push_str("- Wall time of the whole process; peak RSS is `ru_maxrss` of the builder process (getrusage of waited-for children, so it is the largest single process of the build: the builder itself or a RUN step).\n");
    out.push_str("- BuildKit runs in a daemon: its wall time is `buildctl build`'s (the client waits for the whole build, cache export included); the daemon's own memory is not measured, so its peak RSS column is left out.\n");
    out.push_str("- Steps cached: buildcache's metadata file (`buildcache.steps`); BuildKit: `#N CACHED` over its numbered non-`FROM` steps; buildah: `--> Using cache` lines over its non-`FROM` steps.\n");
    out.push_str("- Import latency: time from the start of the process to the first line saying a step is cached (`#N CACHED` / `--> Using cache`).\n");
    out.push_str("- Bytes uploaded and layer blobs downloaded come from the registry's access log (completed blob `PUT`s, sized from the registry's storage; `GET`s of non-JSON blobs), so both builders are counted the same way.\n");
    out.push_str("- buildah has no cache modes (it pushes every layer, like `mode=max`): its figures are the same runs in both tables of a project.\n");
    out.push_str(
        "- Ratios are ours / the peer's medians: below 1 means buildcache is faster or smaller.\n\n",
    );
}

/// A table per project and cache mode, the commands behind it, and the failed expectations.
fn scenarios_section(out: &mut String, results: &Results) {
    out.push_str("## Scenarios\n\n");
    for (i, project) in results.projects.iter().enumerate() {
        let letter = ["a", "b", "c", "d", "e", "f"]
            .get(i)
            .copied()
            .unwrap_or("?");
        let _ = writeln!(out, "### ({letter}) `{}`: {}\n", project.id, project.title);
        if let Some(why) = &project.buildkit_missing {
            let _ = writeln!(out, "No BuildKit figures for this project: {why}.\n");
        }
        if let Some(why) = &project.peer_missing {
            let _ = writeln!(out, "No buildah figures for this project: {why}.\n");
        }
        for (mode, figures) in &project.modes {
            mode_table(out, project, mode, figures);
        }
        out.push_str("<details><summary>Commands (first run of each figure; paths are per run)</summary>\n\n```sh\n");
        for (mode, figures) in &project.modes {
            for f in figures {
                let _ = writeln!(out, "# buildcache, mode={mode}, {}\n{}", f.name, f.command);
            }
        }
        for (mode, figures) in &project.buildkit {
            for f in figures {
                let _ = writeln!(out, "# BuildKit, mode={mode}, {}\n{}", f.name, f.command);
            }
        }
        for f in &project.peer {
            let _ = writeln!(out, "# buildah, {}\n{}", f.name, f.command);
        }
        out.push_str("```\n\n</details>\n\n");
    }
    if results.failures.is_empty() {
        out.push_str("Every warm build above had every step cached, warm-registry builds downloaded no layer blob, and no-op exports uploaded nothing.\n\n");
    } else {
        out.push_str("**Expectations that failed:**\n\n");
        for f in &results.failures {
            let _ = writeln!(out, "- {f}");
        }
        out.push('\n');
    }
}

fn rate(r: &MicroResult) -> String {
    if let Some(b) = r.bytes_per_s() {
        format!("{:.0} MB/s", b / 1e6)
    } else if let Some(e) = r.elements_per_s() {
        format!("{:.0} /s", e)
    } else {
        "—".into()
    }
}

fn micro_section(out: &mut String, list: &[MicroResult]) {
    out.push_str(
        "`cargo bench -p cache-bench --bench micro` (criterion; median time per iteration).\n\n",
    );
    out.push_str("| benchmark | median time | throughput |\n|---|---|---|\n");
    for r in list.iter().filter(|r| !r.id.starts_with("limit/")) {
        let time = if r.median_ns < 1e6 {
            format!("{:.1} µs", r.median_ns / 1e3)
        } else {
            secs(r.median_ns / 1e9)
        };
        let _ = writeln!(out, "| `{}` | {time} | {} |", r.id, rate(r));
    }
    out.push_str("\nThroughput next to its limit (the same data through the standard tool):\n\n");
    out.push_str("| operation | ours | limit | ours / limit |\n|---|---|---|---|\n");
    for (ours, limit, what) in micro::LIMITS {
        for r in list
            .iter()
            .filter(|r| r.id.starts_with(&format!("{ours}/")))
        {
            let size = r.id.rsplit('/').next().unwrap_or("");
            let l = list.iter().find(|l| l.id == format!("{limit}/{size}"));
            let (limit_cell, ratio_cell) = match l {
                Some(l) => (
                    rate(l),
                    match (r.bytes_per_s(), l.bytes_per_s()) {
                        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                        _ => "—".into(),
                    },
                ),
                None => ("not measured".into(), "—".into()),
            };
            let _ = writeln!(
                out,
                "| {what} ({size}) | {} | {limit_cell} | {ratio_cell} |",
                rate(r)
            );
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projects::Sizes;
    use crate::scenario::Tool;

    fn sample(wall: f64) -> Sample {
        Sample {
            wall_s: wall,
            peak_rss_kib: 2048,
            cached_steps: 3,
            total_steps: 3,
            ..Sample::default()
        }
    }

    fn figure(name: &str, tool: Tool, walls: &[f64]) -> Figure {
        Figure {
            name: name.into(),
            tool,
            command: format!("cmd {name}"),
            samples: walls.iter().map(|w| sample(*w)).collect(),
        }
    }

    #[test]
    fn tables_show_medians_ratios_and_missing_peer_rows() {
        let results = Results {
            quick: false,
            runs: 3,
            sizes: Sizes::FULL,
            projects: vec![ProjectResult {
                id: "compiled".into(),
                title: "a C program".into(),
                modes: vec![(
                    "max".into(),
                    vec![
                        figure("cold", Tool::Ours, &[10.0, 12.0, 11.0]),
                        figure("warm-local", Tool::Ours, &[0.5, 0.4, 0.6]),
                        figure("warm-registry", Tool::Ours, &[1.0, 1.0, 1.0]),
                    ],
                )],
                peer: vec![
                    figure("cold", Tool::Peer, &[22.0, 22.0, 22.0]),
                    figure("warm-registry", Tool::Peer, &[4.0, 4.0, 4.0]),
                ],
                peer_missing: None,
                buildkit: vec![(
                    "max".into(),
                    vec![
                        figure("cold", Tool::BuildKit, &[20.0, 20.0, 20.0]),
                        figure("warm-registry", Tool::BuildKit, &[2.0, 2.0, 2.0]),
                    ],
                )],
                buildkit_missing: None,
            }],
            failures: vec![],
            peer_version: Ok("buildah version 1.28.2".into()),
            buildkit_version: Ok("buildctl github.com/moby/buildkit v0.32.0".into()),
        };
        let md = render(
            &results,
            &Machine::default(),
            &Err("skipped".into()),
            "cargo xtask bench",
        );
        assert!(md.contains("| cold (empty root, no cache; ours exports to a local dir) | 11.0 s (10.0 s–12.0 s) | 2.0 MiB | 3/3 | 20.0 s (20.0 s–20.0 s) | 3/3 | 0.55 | 22.0 s (22.0 s–22.0 s) | 2.0 MiB | 3/3 | 0.50 |"), "{md}");
        assert!(
            md.contains("warm from the registry 1.00 s vs BuildKit 2.00 s (0.50×)"),
            "{md}"
        );
        assert!(md.contains("# BuildKit, mode=max, cold"), "{md}");
        assert!(
            md.contains("n/a: buildah 1.28 has no local cache import"),
            "{md}"
        );
        assert!(
            md.contains(
                "cold 11.0 s → warm from the registry on an empty root 1.00 s (11× faster)"
            ),
            "{md}"
        );
        assert!(
            md.contains("warm 1.00 s vs 4.00 s (0.25× buildah's time)"),
            "{md}"
        );
        assert!(md.contains("Not run: skipped."), "{md}");
        assert!(md.contains("cmd warm-local"), "{md}");
    }

    #[test]
    fn micro_limits_are_paired_by_size() {
        let r = |id: &str, ns: f64| MicroResult {
            id: id.into(),
            median_ns: ns,
            mean_ns: ns,
            bytes: Some(100_000_000),
            elements: None,
        };
        let list = vec![r("cache-local/export/64MiB", 1e9), r("limit/cp/64MiB", 5e8)];
        let mut out = String::new();
        micro_section(&mut out, &list);
        assert!(out.contains("| local export of the blobs vs `cp` of the same blobs (64MiB) | 100 MB/s | 200 MB/s | 0.50 |"), "{out}");
    }
}
