//! Running builds as subprocesses and measuring them: wall time, peak RSS, the time to the
//! first cached step, cached-step counts, export figures and registry traffic.

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::registry_log::{self, Traffic};

/// Which builder ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    /// `buildcache build`.
    Ours,
    /// `buildah build --layers`.
    Peer,
    /// `buildctl build` against a running `buildkitd`.
    #[serde(rename = "buildkit")]
    BuildKit,
}

/// What one export of ours reported in its metadata file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportFigures {
    /// The export's own time.
    pub duration_ms: u64,
    /// Blob bytes written.
    pub bytes_written: u64,
    /// Blob bytes already there.
    pub bytes_skipped: u64,
    /// Whether the manifest was unchanged (nothing written).
    pub unchanged: bool,
}

/// One measured run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Wall time of the whole process.
    pub wall_s: f64,
    /// Peak resident set of the process (and of the largest child it waited for), KiB.
    pub peak_rss_kib: u64,
    /// Seconds from start to the first step reported cached, if any.
    pub first_cached_s: Option<f64>,
    /// Steps reported cached.
    pub cached_steps: usize,
    /// Steps in all.
    pub total_steps: usize,
    /// Registry requests of this run.
    pub traffic: Traffic,
    /// Our cache exports (from the metadata file).
    pub exports: Vec<ExportFigures>,
    /// Layer blobs our build fetched into its root.
    pub blobs_fetched: u64,
}

impl Sample {
    /// Whether every step was cached (and there was at least one).
    pub fn all_cached(&self) -> bool {
        self.total_steps > 0 && self.cached_steps == self.total_steps
    }
}

/// A command to measure.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Which builder it is (decides how its output is read).
    pub tool: Tool,
    /// Our `--metadata-file`, read after the run.
    pub metadata: Option<PathBuf>,
}

impl Invocation {
    /// The command as a shell line, for the report.
    pub fn display(&self) -> String {
        let mut parts: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", shell_quote(v)))
            .collect();
        parts.push(shell_quote(&self.program.to_string_lossy()));
        parts.extend(self.args.iter().map(|a| shell_quote(&a.to_string_lossy())));
        parts.join(" ")
    }
}

/// Quotes `word` for a POSIX shell when it needs it.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Whether a line of a builder's progress output says a step was cached.
pub fn is_cached_line(tool: Tool, line: &str) -> bool {
    match tool {
        // BuildKit's plain progress, which ours follows: `#5 CACHED`.
        Tool::Ours | Tool::BuildKit => {
            line.trim_end().ends_with(" CACHED") && line.starts_with('#')
        }
        Tool::Peer => line.starts_with("--> Using cache"),
    }
}

/// buildah's steps: `STEP n/m: INSTR` lines that are not `FROM`, and how many were cached.
pub fn peer_steps(output: &str) -> (usize, usize) {
    let mut total = 0;
    let mut cached = 0;
    for line in output.lines() {
        // Multi-stage builds prefix the stage: `[2/3] STEP 1/4: COPY …`.
        if let Some(rest) = line.find("STEP ").map(|at| &line[at + "STEP ".len()..])
            && let Some((_, instr)) = rest.split_once(": ")
            && !instr.starts_with("FROM ")
        {
            total += 1;
        }
        if is_cached_line(Tool::Peer, line) {
            cached += 1;
        }
    }
    (cached, total)
}

/// BuildKit's Dockerfile steps in its plain progress, and how many were cached: vertices named
/// `[stage n/m] INSTR` (or `[n/m] INSTR`) that are not `FROM`, each counted once by number.
pub fn buildkit_steps(output: &str) -> (usize, usize) {
    let mut steps = std::collections::BTreeSet::new();
    let mut cached = std::collections::BTreeSet::new();
    for line in output.lines() {
        let Some((number, rest)) = line.strip_prefix('#').and_then(|l| l.split_once(' ')) else {
            continue;
        };
        if rest.trim_end() == "CACHED" {
            cached.insert(number.to_owned());
            continue;
        }
        let Some((label, instr)) = rest.strip_prefix('[').and_then(|r| r.split_once("] ")) else {
            continue;
        };
        let counter = label.rsplit(' ').next().unwrap_or(label);
        let is_step = counter
            .split_once('/')
            .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok());
        if is_step && !instr.starts_with("FROM ") {
            steps.insert(number.to_owned());
        }
    }
    let hits = steps.intersection(&cached).count();
    (hits, steps.len())
}

/// Reads `buildcache.steps`, `buildcache.cache_export` and `buildcache.blobs_fetched`.
pub fn read_metadata(sample: &mut Sample, json: &serde_json::Value) {
    let steps = json["buildcache.steps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    sample.total_steps = steps.len();
    sample.cached_steps = steps.iter().filter(|s| s["cached"] == true).count();
    sample.blobs_fetched = json["buildcache.blobs_fetched"].as_u64().unwrap_or(0);
    sample.exports = json["buildcache.cache_export"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| ExportFigures {
            duration_ms: e["duration_ms"].as_u64().unwrap_or(0),
            bytes_written: e["bytes_written"].as_u64().unwrap_or(0),
            bytes_skipped: e["bytes_skipped"].as_u64().unwrap_or(0),
            unchanged: e["unchanged"] == true,
        })
        .collect();
}

/// The loopback registry: its address, access log and storage.
#[derive(Debug, Clone)]
pub struct RegistryInfo {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The access log (`CACHE_TEST_REGISTRY_LOG`).
    pub log: PathBuf,
    /// Its `rootdirectory`.
    pub storage: PathBuf,
}

impl RegistryInfo {
    /// From `CACHE_TEST_REGISTRY` and `CACHE_TEST_REGISTRY_LOG` (set by `cargo xtask bench`).
    pub fn from_env() -> anyhow::Result<RegistryInfo> {
        let addr = std::env::var("CACHE_TEST_REGISTRY").context(
            "CACHE_TEST_REGISTRY is not set: run the scenarios with `cargo xtask bench`, which starts the registry",
        )?;
        let log = PathBuf::from(
            std::env::var("CACHE_TEST_REGISTRY_LOG")
                .context("CACHE_TEST_REGISTRY_LOG is not set: run `cargo xtask bench`")?,
        );
        let storage = log
            .parent()
            .map(|dir| dir.join("storage"))
            .context("CACHE_TEST_REGISTRY_LOG has no parent directory")?;
        Ok(RegistryInfo { addr, log, storage })
    }

    fn log_len(&self) -> u64 {
        fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    fn traffic_since(&self, offset: u64) -> Traffic {
        // The registry logs a request just after answering it.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let bytes = fs::read(&self.log).unwrap_or_default();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let text = String::from_utf8_lossy(&bytes[start..]);
        registry_log::traffic(&registry_log::requests(&text), &self.storage)
    }
}

/// Runs `inv` through `measure_exe __measure` (which reports the child's peak RSS), saving its
/// output to `log`, and returns what was measured. A failing build is an error.
pub fn run(
    measure_exe: &Path,
    inv: &Invocation,
    registry: &RegistryInfo,
    log: &Path,
) -> anyhow::Result<Sample> {
    let rusage_file = log.with_extension("rusage");
    let offset = registry.log_len();
    if let Some(meta) = &inv.metadata {
        let _ = fs::remove_file(meta);
    }
    let mut out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    writeln!(out, "$ {}", inv.display())?;
    let started = Instant::now();
    let mut child = Command::new(measure_exe)
        .arg("__measure")
        .arg(&rusage_file)
        .arg(&inv.program)
        .args(&inv.args)
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", inv.display()))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let stderr = child.stderr.take().context("child stderr")?;
    let tool = inv.tool;
    // Both streams are read with a timestamp per line; buildah prints steps on stdout,
    // buildcache's plain progress goes to stderr.
    let reader = |stream: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut first = None;
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if first.is_none() && is_cached_line(tool, &line) {
                    first = Some(started.elapsed().as_secs_f64());
                }
                lines.push(line);
            }
            (lines, first)
        })
    };
    let out_thread = reader(Box::new(stdout));
    let err_thread = reader(Box::new(stderr));
    let status = child.wait()?;
    let wall_s = started.elapsed().as_secs_f64();
    let (out_lines, out_first) = out_thread.join().expect("stdout reader does not panic");
    let (err_lines, err_first) = err_thread.join().expect("stderr reader does not panic");
    let text = [out_lines, err_lines].concat().join("\n");
    writeln!(out, "{text}")?;
    anyhow::ensure!(
        status.success(),
        "`{}` failed with {status}; its output is in {}",
        inv.display(),
        log.display()
    );
    let peak_rss_kib = fs::read_to_string(&rusage_file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let mut sample = Sample {
        wall_s,
        peak_rss_kib,
        first_cached_s: match (out_first, err_first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
        traffic: registry.traffic_since(offset),
        ..Sample::default()
    };
    match (inv.tool, &inv.metadata) {
        (Tool::Ours, Some(meta)) => {
            let json: serde_json::Value = serde_json::from_slice(
                &fs::read(meta).with_context(|| format!("reading {}", meta.display()))?,
            )
            .with_context(|| format!("parsing {}", meta.display()))?;
            read_metadata(&mut sample, &json);
        }
        (Tool::BuildKit, _) => {
            let (cached, total) = buildkit_steps(&text);
            sample.cached_steps = cached;
            sample.total_steps = total;
        }
        _ => {
            let (cached, total) = peer_steps(&text);
            sample.cached_steps = cached;
            sample.total_steps = total;
        }
    }
    Ok(sample)
}

/// The `__measure` helper: runs `program args`, then writes the peak RSS (KiB) of the
/// children it waited for to `rusage_file`, and exits with the child's code.
pub fn measure_main(rusage_file: &Path, program: &OsString, args: &[OsString]) -> i32 {
    let status = match Command::new(program).args(args).status() {
        Ok(status) => status,
        Err(err) => {
            eprintln!(
                "cache-bench: could not run {}: {err}",
                program.to_string_lossy()
            );
            return 127;
        }
    };
    let rss = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map(|usage| usage.max_rss())
        .unwrap_or(0);
    let _ = fs::write(rusage_file, rss.to_string());
    status.code().unwrap_or(128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_lines_of_both_builders_are_recognised() {
        assert!(is_cached_line(Tool::Ours, "#5 CACHED"));
        assert!(!is_cached_line(
            Tool::Ours,
            "#5 [builder 1/3] COPY CACHED/ /x"
        ));
        assert!(!is_cached_line(Tool::Ours, "#5 DONE 0.1s"));
        assert!(is_cached_line(Tool::Peer, "--> Using cache 19dc1fbc0af4"));
        assert!(!is_cached_line(Tool::Peer, "--> 19dc1fbc0af"));
    }

    #[test]
    fn buildkit_steps_count_numbered_non_from_vertices_once() {
        let output = "#1 [internal] load build definition from Dockerfile\n\
#1 DONE 0.0s\n\
#4 [base 1/3] FROM docker.io/library/busybox@sha256:abc\n\
#4 CACHED\n\
#5 [base 2/3] COPY busybox /bin/busybox\n\
#5 CACHED\n\
#6 [base 3/3] RUN echo hi\n\
#6 0.101 hi\n\
#6 DONE 0.2s\n\
#7 [2/2] COPY --from=base /bin /bin\n\
#7 CACHED\n\
#8 exporting cache to client directory\n";
        assert_eq!(buildkit_steps(output), (2, 3));
        assert!(is_cached_line(Tool::BuildKit, "#7 CACHED"));
    }

    #[test]
    fn peer_steps_count_non_from_steps_and_cache_hits() {
        let out = "STEP 1/4: FROM scratch AS base\nSTEP 2/4: COPY busybox /bin/busybox\n\
                   --> Using cache fdafca\n--> fdafca\nSTEP 3/4: RUN true\n--> 19dc1f\n\
                   STEP 4/4: FROM base\n[2/2] STEP 1/2: COPY a b\n";
        assert_eq!(peer_steps(out), (1, 3));
    }

    #[test]
    fn metadata_gives_steps_and_exports() {
        let json = serde_json::json!({
            "buildcache.steps": [{"cached": true}, {"cached": false}, {"cached": true}],
            "buildcache.blobs_fetched": 2,
            "buildcache.cache_export": [{"duration_ms": 10, "bytes_written": 0,
                "bytes_skipped": 99, "unchanged": true}],
        });
        let mut sample = Sample::default();
        read_metadata(&mut sample, &json);
        assert_eq!((sample.cached_steps, sample.total_steps), (2, 3));
        assert!(!sample.all_cached());
        assert_eq!(sample.blobs_fetched, 2);
        assert_eq!(
            sample.exports,
            vec![ExportFigures {
                duration_ms: 10,
                bytes_written: 0,
                bytes_skipped: 99,
                unchanged: true
            }]
        );
    }

    #[test]
    fn commands_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("type=local,dest=/x"), "type=local,dest=/x");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn measure_reports_the_child_peak_rss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("rusage");
        let code = measure_main(&file, &"true".into(), &[]);
        assert_eq!(code, 0);
        let kib: u64 = fs::read_to_string(&file)
            .expect("written")
            .parse()
            .expect("number");
        assert!(kib > 0);
        assert_eq!(measure_main(&file, &"false".into(), &[]), 1);
    }
}
