//! The live tty view, seen through a real pseudo-terminal (tmux): names instead of internal ids,
//! lines cut to the width, no line drawn twice, every step in the final frame, resizes followed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{self, BuildContext, busybox_context, busybox_stage, s, steps};

/// A multi-stage build with a step longer than any terminal, a step printing output slowly (so
/// a resize happens while it runs), and a COPY --from.
fn dockerfile() -> String {
    format!(
        "{}RUN echo {} > /long.txt\n\
         RUN for i in 1 2 3 4 5 6 7 8 9 10; do echo \"output line $i of the slow step\"; sleep 0.2; done\n\
         FROM base AS final\n\
         COPY app.conf /etc/app.conf\n\
         COPY --from=base /long.txt /long.txt\n",
        busybox_stage("base"),
        "a-very-long-argument-".repeat(12)
    )
}

/// A tmux server of its own, killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Option<Tmux> {
        support::tool("tmux")?;
        let tmux = Tmux {
            socket: format!(
                "buildcache-test-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            )
            .replace(['(', ')'], ""),
        };
        // A server exits with its last session: an idle session keeps it up between builds, so
        // a new build never races a server that is shutting down.
        tmux.cmd(&["new-session", "-d", "-s", "keep", "sleep 600"]);
        Some(tmux)
    }

    fn cmd(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("running tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `buildcache build --progress=tty ARGS` in a `width`×`height` terminal; `during` is
    /// called once after a second. Returns the whole screen and scrollback, as rows and with
    /// wrapped rows joined into lines.
    fn build(
        &self,
        width: usize,
        height: usize,
        args: &[&str],
        during: impl FnOnce(&Tmux),
    ) -> (String, String) {
        let marker = tempfile::NamedTempFile::new().expect("a marker file");
        let marker_path = marker.path().to_owned();
        std::fs::remove_file(&marker_path).expect("removing the marker");
        let mut command = format!(
            "env -u BUILDKIT_PROGRESS -u BUILDCACHE_ROOT -u NO_COLOR {} build --progress=tty",
            shell_quote(&binary())
        );
        for arg in args {
            command.push(' ');
            command.push_str(&shell_quote(Path::new(arg)));
        }
        command.push_str(&format!(
            "; echo $? > {}; sleep 120",
            shell_quote(&marker_path)
        ));
        self.cmd(&[
            "new-session",
            "-d",
            "-s",
            "build",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            &command,
        ]);
        let started = Instant::now();
        let mut during = Some(during);
        while !marker_path.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the build did not finish:\n{}",
                self.capture()
            );
            if started.elapsed() > Duration::from_secs(1)
                && let Some(f) = during.take()
            {
                f(self);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let status = std::fs::read_to_string(&marker_path).expect("reading the exit status");
        let (rows, lines) = (self.capture(), self.capture_joined());
        self.cmd(&["kill-session", "-t", "build"]);
        assert_eq!(status.trim(), "0", "the build failed:\n{lines}");
        (rows, lines)
    }

    fn capture(&self) -> String {
        self.cmd(&["capture-pane", "-p", "-S", "-", "-t", "build"])
    }

    fn capture_joined(&self) -> String {
        self.cmd(&["capture-pane", "-p", "-J", "-S", "-", "-t", "build"])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

fn binary() -> PathBuf {
    assert_cmd::cargo::cargo_bin("buildcache")
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", s(path).replace('\'', r"'\''"))
}

/// Checks a screen of the tty view at `width` columns against the steps the build reported:
/// the frame (the header and the ` => ` lines under it) fits the width, names every step once
/// and shows no internal id. When the terminal was `resized`, only the final frame is checked,
/// row by row (`screen` captured without joining wrapped rows): a terminal that reflows its
/// rows on a resize may push part of the previous frame into the scrollback, out of reach.
fn check_screen(screen: &str, width: usize, meta: &serde_json::Value, cached: bool, resized: bool) {
    let mut lines: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
    for line in &lines {
        for id in ["step:", "from:", "import:", "export:", "output:"] {
            assert!(
                !line.contains(id),
                "internal id {id} on screen: {line:?}\n{screen}"
            );
        }
    }
    if resized {
        let last = lines
            .iter()
            .rposition(|l| l.contains("[+] Building "))
            .unwrap_or_else(|| panic!("no header:\n{screen}"));
        lines.drain(..last);
        // The final frame's first row may follow the rest of a reflowed row.
        let at = lines[0].find("[+] Building ").expect("found above");
        lines[0] = &lines[0][at..];
    }
    let start = lines
        .iter()
        .position(|l| l.starts_with("[+] Building "))
        .unwrap_or_else(|| panic!("no header:\n{screen}"));
    let end = lines[start + 1..]
        .iter()
        .position(|l| !l.starts_with(" => "))
        .map_or(lines.len(), |n| start + 1 + n);
    for line in &lines[start..end] {
        assert!(
            line.chars().count() < width,
            "a line is wider than the {width}-column terminal: {line:?}\n{screen}"
        );
    }
    let lines = &lines[..end];
    let headers: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("[+] Building "))
        .collect();
    assert_eq!(headers.len(), 1, "one header, redrawn in place:\n{screen}");
    let n_steps = steps(meta).len();
    assert!(
        headers[0].ends_with(") FINISHED"),
        "the final frame says FINISHED:\n{screen}"
    );
    let job_lines: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with(" => ") && !l.starts_with(" => => "))
        .collect();
    for (i, line) in job_lines.iter().enumerate() {
        assert!(
            !job_lines[..i].contains(line),
            "a line is drawn twice: {line:?}\n{screen}"
        );
    }
    for step in steps(meta) {
        let label = if cached {
            format!(" => CACHED {}", step.name)
        } else {
            format!(" => {}", step.name)
        };
        // The name as far as it fits before the timer.
        let visible: String = label.chars().take(width - 12).collect();
        let matching: Vec<&&&str> = job_lines
            .iter()
            .filter(|l| l.starts_with(visible.trim_end()))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "step {:?} is in the final frame once:\n{screen}",
            step.name
        );
        assert!(
            matching[0].trim_end().ends_with('s'),
            "the step line ends with its timer: {:?}",
            matching[0]
        );
    }
    assert!(n_steps >= 6, "{meta:#}");
}

fn context() -> Option<BuildContext> {
    let ctx = busybox_context(&dockerfile())?;
    ctx.write("app.conf", "port = 1\n");
    Some(ctx)
}

#[test]
fn the_tty_view_draws_cold_and_warm_builds_in_place() {
    let Some(tmux) = Tmux::new() else { return };
    let Some(ctx) = context() else { return };
    let work = tempfile::tempdir().expect("a temporary directory");
    let cache = work.path().join("cache");
    let meta_path = work.path().join("meta.json");
    let cold_root = work.path().join("root-cold");
    let to = format!("type=local,dest={},mode=max", s(&cache));
    // Cold, in 100 columns, narrowed to 80 while the slow step prints.
    let (screen, _) = tmux.build(
        100,
        40,
        &[
            "--root",
            s(&cold_root),
            "--cache-to",
            &to,
            "--metadata-file",
            s(&meta_path),
            s(ctx.path()),
        ],
        |tmux| {
            tmux.cmd(&["resize-window", "-t", "build", "-x", "80"]);
        },
    );
    let meta = support::read_metadata(&meta_path);
    check_screen(&screen, 80, &meta, false, true);
    assert!(
        screen.contains(" => exporting cache to client directory "),
        "{screen}"
    );
    assert!(
        screen
            .lines()
            .any(|l| l.starts_with(" => => sha256:") && l.contains(" / ")),
        "exported blobs show bytes done / total:\n{screen}"
    );

    // Warm, on an empty root, in 120 columns: every step CACHED, blobs fetched for the output.
    let from = format!("type=local,src={}", s(&cache));
    let out = work.path().join("image.tar");
    let output = format!("type=oci,dest={}", s(&out));
    let (_, screen) = tmux.build(
        120,
        40,
        &[
            "--root",
            s(&work.path().join("root-warm")),
            "--cache-from",
            &from,
            "--metadata-file",
            s(&meta_path),
            "--output",
            &output,
            s(ctx.path()),
        ],
        |_| {},
    );
    let meta = support::read_metadata(&meta_path);
    check_screen(&screen, 120, &meta, true, false);
    assert!(
        screen.contains(" => importing cache manifest from "),
        "{screen}"
    );

    // Too small for the view: plain lines.
    let (_, screen) = tmux.build(
        30,
        10,
        &[
            "--root",
            s(&cold_root),
            "--metadata-file",
            s(&meta_path),
            s(ctx.path()),
        ],
        |_| {},
    );
    assert!(
        screen.contains("#1 "),
        "plain output in a tiny terminal:\n{screen}"
    );
    assert!(!screen.contains("[+] Building"), "{screen}");
}
