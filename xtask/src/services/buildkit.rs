//! A real BuildKit daemon (from `../shared/tools/buildkit`) for interop tests and benchmarks.
//!
//! [`install`] extracts the tarball once into `target/buildkit/<version>/`; [`start`] runs a
//! `buildkitd` with its own state directory, socket, config and log (OCI worker on Debian's `runc`,
//! overlayfs snapshotter, native where overlayfs fails) and waits until `buildctl debug workers`
//! answers; [`Buildkit::stop`] (or dropping it) stops it and unmounts what it left in its state.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{Lifetime, Tool, find_binary};

/// The Debian packages BuildKit needs besides the tarball.
const TOOLS: &[Tool] = &[Tool {
    package: "runc",
    binary: "runc",
    must_be_static: false,
}];

/// Where the tarball lives, relative to the shared directory.
const SHARED_DIR: &str = "tools/buildkit";

/// The binaries the tarball must hold.
const BINARIES: &[&str] = &["buildkitd", "buildctl", "dockerfile2llb"];

const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Unix socket paths are limited to 108 bytes; longer ones go to the temporary directory.
const MAX_SOCKET_PATH: usize = 100;

/// The snapshotters tried in order: overlayfs is fast, native works on any filesystem.
const SNAPSHOTTERS: &[&str] = &["overlayfs", "native"];

/// The BuildKit tarball in `../shared/tools/buildkit`, or `None` where `../shared` is absent.
pub(crate) fn tarball(root: &Path) -> anyhow::Result<Option<PathBuf>> {
    let Some(shared) = crate::shared_dir(root) else {
        return Ok(None);
    };
    let dir = shared.join(SHARED_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("buildkit-") && name.ends_with(".tar.xz"))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some(path) => Ok(Some(path)),
        None => anyhow::bail!(
            "{} exists but holds no buildkit-*.tar.xz; restore it or remove the directory",
            dir.display()
        ),
    }
}

/// Extracts the tarball (once) into `target/buildkit/<version>/` and installs `runc`; returns the
/// directory of `buildkitd`, `buildctl` and `dockerfile2llb`, or `None` where `../shared` is absent.
pub(crate) fn install(root: &Path) -> anyhow::Result<Option<PathBuf>> {
    let Some(tarball) = tarball(root)? else {
        return Ok(None);
    };
    super::ensure_packages(TOOLS)?;
    let name = tarball
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_suffix(".tar.xz"))
        .expect("tarball() only returns buildkit-*.tar.xz");
    let cache = crate::target_dir().join("buildkit");
    let bin_dir = cache.join(name);
    if BINARIES.iter().all(|bin| bin_dir.join(bin).is_file()) {
        return Ok(Some(bin_dir));
    }
    // Extract beside, then rename: concurrent runs never see a half-written directory.
    let partial = cache.join(format!("{name}.partial-{}", std::process::id()));
    if partial.exists() {
        fs::remove_dir_all(&partial)?;
    }
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    eprintln!("xtask: extracting {}", tarball.display());
    super::run_checked(
        Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(&partial),
    )?;
    for bin in BINARIES {
        anyhow::ensure!(
            partial.join(bin).is_file(),
            "{} holds no `{bin}`",
            tarball.display()
        );
    }
    match fs::rename(&partial, &bin_dir) {
        Ok(()) => {}
        // Another run extracted it first.
        Err(_) if BINARIES.iter().all(|bin| bin_dir.join(bin).is_file()) => {
            let _ = fs::remove_dir_all(&partial);
        }
        Err(err) => {
            return Err(err).with_context(|| format!("renaming to {}", bin_dir.display()));
        }
    }
    Ok(Some(bin_dir))
}

/// One running `buildkitd`.
pub(crate) struct Buildkit {
    pid: u32,
    /// `None` once detached (stopped by [`down`]).
    child: Option<Child>,
    /// `base/buildkit`: config, log and (unless too long) the socket.
    dir: PathBuf,
    state: PathBuf,
    socket: PathBuf,
    bin_dir: PathBuf,
    log: PathBuf,
}

impl Buildkit {
    /// `unix:///…/buildkitd.sock`, the `--addr` of `buildctl`.
    pub(crate) fn addr(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// `buildctl --addr ADDR`, ready for a subcommand.
    pub(crate) fn buildctl(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("buildctl"));
        cmd.arg("--addr").arg(self.addr());
        cmd
    }

    /// The variables the tests read: `CACHE_TEST_BUILDKIT` (the address) and
    /// `CACHE_TEST_BUILDKIT_BIN` (the directory of `buildctl` and `dockerfile2llb`).
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        vec![
            ("CACHE_TEST_BUILDKIT".to_owned(), self.addr()),
            (
                "CACHE_TEST_BUILDKIT_BIN".to_owned(),
                self.bin_dir.display().to_string(),
            ),
        ]
    }

    /// Stops the daemon (SIGTERM, then SIGKILL), unmounts what is left in its state and removes it.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> anyhow::Result<()> {
        match self.child.take() {
            Some(mut child) => {
                super::stop_owned(&mut child, self.pid, STOP_TIMEOUT)?;
            }
            None => stop_detached(self.pid)?,
        }
        remove_state(&self.dir, &self.socket)
    }

    /// Lets the daemon outlive xtask; records it in `state` for [`down`].
    fn detach(mut self, state: &Path) -> anyhow::Result<()> {
        let record = serde_json::json!({
            "pid": self.pid,
            "dir": self.dir.display().to_string(),
            "state": self.state.display().to_string(),
            "socket": self.socket.display().to_string(),
            "bin_dir": self.bin_dir.display().to_string(),
            "log": self.log.display().to_string(),
        });
        fs::write(state, serde_json::to_string_pretty(&record)? + "\n")
            .with_context(|| format!("writing {}", state.display()))?;
        // Dropping a `Child` neither kills nor waits for it.
        self.child = None;
        self.pid = 0;
        Ok(())
    }
}

impl Drop for Buildkit {
    fn drop(&mut self) {
        // A detached daemon has pid 0 here: it is not ours to stop any more.
        if self.pid != 0
            && let Err(err) = self.stop_inner()
        {
            eprintln!("xtask: stopping buildkitd: {err:#}");
        }
    }
}

/// Starts `buildkitd` from `bin_dir` with everything under `base/buildkit`.
///
/// `registries` (`127.0.0.1:PORT`) are configured as plain-HTTP registries.
pub(crate) fn start(
    bin_dir: &Path,
    base: &Path,
    registries: &[String],
    lifetime: Lifetime,
) -> anyhow::Result<Buildkit> {
    let runc = find_binary("runc").ok_or_else(|| {
        anyhow::format_err!(
            "runc is not installed: run `cargo xtask deps` or `apt-get install -y runc`"
        )
    })?;
    let dir = base.join("buildkit");
    if dir.exists() {
        let socket = socket_path(&dir);
        remove_state(&dir, &socket)?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let config = dir.join("buildkitd.toml");
    fs::write(&config, config_toml(registries))
        .with_context(|| format!("writing {}", config.display()))?;
    let mut last_err = None;
    for snapshotter in SNAPSHOTTERS {
        match start_with(bin_dir, &dir, &config, &runc, snapshotter, lifetime) {
            Ok(buildkit) => return Ok(buildkit),
            Err(err) => {
                eprintln!("xtask: buildkitd with the {snapshotter} snapshotter: {err:#}");
                last_err = Some(err);
            }
        }
    }
    Err(last_err.expect("SNAPSHOTTERS is not empty"))
}

fn start_with(
    bin_dir: &Path,
    dir: &Path,
    config: &Path,
    runc: &Path,
    snapshotter: &str,
    lifetime: Lifetime,
) -> anyhow::Result<Buildkit> {
    let state = dir.join("state");
    let socket = socket_path(dir);
    let log = dir.join("buildkitd.log");
    let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(bin_dir.join("buildkitd"));
    cmd.arg("--root")
        .arg(&state)
        .arg("--addr")
        .arg(format!("unix://{}", socket.display()))
        .arg("--config")
        .arg(config)
        .arg("--oci-worker=true")
        .arg(format!("--oci-worker-snapshotter={snapshotter}"))
        .arg(format!("--oci-worker-binary={}", runc.display()))
        .arg("--containerd-worker=false")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    if lifetime == Lifetime::Detached {
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin_dir.join("buildkitd").display()))?;
    let mut buildkit = Buildkit {
        pid: child.id(),
        child: Some(child),
        dir: dir.to_owned(),
        state,
        socket,
        bin_dir: bin_dir.to_owned(),
        log,
    };
    let started = Instant::now();
    match wait_until_ready(&mut buildkit) {
        Ok(()) => {
            eprintln!(
                "xtask: buildkitd ({snapshotter}) ready on {} in {:.1?} (log: {})",
                buildkit.addr(),
                started.elapsed(),
                buildkit.log.display()
            );
            Ok(buildkit)
        }
        Err(err) => {
            let tail = super::log_tail(&buildkit.log);
            let log = buildkit.log.display().to_string();
            let _ = buildkit.stop_inner();
            Err(err.context(format!(
                "buildkitd did not start; last lines of {log}:\n{tail}"
            )))
        }
    }
}

/// The daemon's config: no automatic garbage collection (tests prune by hand) and the loopback
/// registries as plain HTTP.
fn config_toml(registries: &[String]) -> String {
    let mut config = String::from("[worker.oci]\n  gc = false\n");
    for registry in registries {
        config.push_str(&format!(
            "\n[registry.\"{registry}\"]\n  http = true\n  insecure = true\n"
        ));
    }
    config
}

/// `dir/buildkitd.sock`, or a path in the temporary directory where that is too long for a socket.
fn socket_path(dir: &Path) -> PathBuf {
    let socket = dir.join("buildkitd.sock");
    if socket.as_os_str().len() <= MAX_SOCKET_PATH {
        return socket;
    }
    let tag: u64 = dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
        });
    std::env::temp_dir().join(format!("buildcache-buildkitd-{tag:016x}.sock"))
}

/// Polls `buildctl debug workers` until it lists a worker.
fn wait_until_ready(buildkit: &mut Buildkit) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(child) = buildkit.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            anyhow::bail!("buildkitd exited with {status}");
        }
        if buildkit.socket.exists() {
            let output = buildkit
                .buildctl()
                .args(["debug", "workers"])
                .stdin(Stdio::null())
                .output()
                .context("running buildctl debug workers")?;
            if output.status.success()
                && String::from_utf8_lossy(&output.stdout).lines().count() > 1
            {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "`buildctl debug workers` did not answer within {START_TIMEOUT:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Unmounts everything under `dir` (deepest first), then removes it and the socket.
fn remove_state(dir: &Path, socket: &Path) -> anyhow::Result<()> {
    unmount_under(dir)?;
    let _ = fs::remove_file(socket);
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Unmounts every mount point at or below `dir`, deepest first (what `umount -R` does for a tree
/// whose top is not itself a mount point).
pub(crate) fn unmount_under(dir: &Path) -> anyhow::Result<()> {
    let Ok(dir) = dir.canonicalize() else {
        return Ok(());
    };
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points = mount_points_under(&mountinfo, &dir);
    points.sort_by_key(|point| std::cmp::Reverse(point.as_os_str().len()));
    points.dedup();
    for point in points {
        let status = Command::new("umount")
            .arg(&point)
            .stderr(Stdio::null())
            .status();
        if !status.is_ok_and(|status| status.success()) {
            // Busy (a process still holds it): detach it so the directory can go.
            super::run_checked(Command::new("umount").arg("-l").arg(&point))
                .with_context(|| format!("unmounting {}", point.display()))?;
        }
    }
    Ok(())
}

/// The mount points of `/proc/self/mountinfo` text at or below `dir`.
fn mount_points_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|point| point.starts_with(dir))
        .collect()
}

/// Mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        let octal = bytes
            .get(idx + 1..idx + 4)
            .filter(|digits| digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        if bytes[idx] == b'\\'
            && let Some(digits) = octal
        {
            let value = digits
                .iter()
                .fold(0u8, |acc, d| acc.wrapping_mul(8).wrapping_add(d - b'0'));
            out.push(value);
            idx += 4;
        } else {
            out.push(bytes[idx]);
            idx += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `pid` is a live (not zombie) `buildkitd`.
#[cfg(test)]
fn is_live_buildkitd(pid: u32) -> bool {
    super::is_live_process(pid, "buildkitd")
}

fn stop_detached(pid: u32) -> anyhow::Result<()> {
    super::stop_detached_process(pid, "buildkitd", STOP_TIMEOUT)
}

fn state_path(services_dir: &Path) -> PathBuf {
    services_dir.join("buildkit.json")
}

/// `cargo xtask buildkit up`: starts a `buildkitd` that outlives xtask, with its state in
/// `services_dir/buildkit-up`; prints the `CACHE_TEST_BUILDKIT*=` lines on stdout.
pub(crate) fn up(root: &Path, services_dir: &Path) -> anyhow::Result<()> {
    let Some(bin_dir) = install(root)? else {
        anyhow::bail!(
            "../shared/{SHARED_DIR} is absent: BuildKit comes from the shared tools beside the checkout ({})",
            root.display()
        );
    };
    down(services_dir)?;
    fs::create_dir_all(services_dir)
        .with_context(|| format!("creating {}", services_dir.display()))?;
    let registries = registries_of_registry_up(services_dir);
    let buildkit = start(
        &bin_dir,
        &services_dir.join("buildkit-up"),
        &registries,
        Lifetime::Detached,
    )?;
    for (name, value) in buildkit.env() {
        println!("{name}={value}");
    }
    buildkit.detach(&state_path(services_dir))
}

/// `127.0.0.1:PORT` of the registries `registry up` recorded, if any.
fn registries_of_registry_up(services_dir: &Path) -> Vec<String> {
    let Ok(text) = fs::read_to_string(services_dir.join("state.json")) else {
        return Vec::new();
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    value["registries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|registry| registry["port"].as_u64())
        .map(|port| format!("127.0.0.1:{port}"))
        .collect()
}

/// `cargo xtask buildkit down`: stops the daemon `buildkit up` started and removes its state.
pub(crate) fn down(services_dir: &Path) -> anyhow::Result<()> {
    let state = state_path(services_dir);
    let text = match fs::read_to_string(&state) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", state.display())),
    };
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}; delete it if it is stale", state.display()))?;
    let field = |name: &str| {
        value[name]
            .as_str()
            .map(PathBuf::from)
            .ok_or_else(|| anyhow::format_err!("{} has no `{name}`", state.display()))
    };
    let pid = value["pid"]
        .as_u64()
        .and_then(|pid| u32::try_from(pid).ok())
        .ok_or_else(|| anyhow::format_err!("{} has no pid", state.display()))?;
    stop_detached(pid).with_context(|| format!("stopping buildkitd (pid {pid})"))?;
    remove_state(&field("dir")?, &field("socket")?)?;
    eprintln!("xtask: stopped buildkitd (pid {pid})");
    fs::remove_file(&state).with_context(|| format!("removing {}", state.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_makes_the_registries_plain_http() {
        let config = config_toml(&["127.0.0.1:5000".to_owned()]);
        assert!(
            config.starts_with("[worker.oci]\n  gc = false\n"),
            "{config}"
        );
        assert!(
            config.contains("[registry.\"127.0.0.1:5000\"]\n  http = true\n  insecure = true\n"),
            "{config}"
        );
    }

    #[test]
    fn mount_points_below_a_directory_are_found_and_unescaped() {
        let mountinfo = "\
22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
90 22 0:50 / /s/state/a rw - overlay overlay rw\n\
91 90 0:51 / /s/state/a/proc rw - proc proc rw\n\
92 22 0:52 / /s/state\\040x rw - tmpfs tmpfs rw\n\
93 22 0:53 / /s/other rw - tmpfs tmpfs rw\n";
        let points = mount_points_under(mountinfo, Path::new("/s/state"));
        assert_eq!(
            points,
            vec![
                PathBuf::from("/s/state/a"),
                PathBuf::from("/s/state/a/proc")
            ]
        );
        assert_eq!(unescape_mountinfo("/a\\040b\\134c"), "/a b\\c");
    }

    #[test]
    fn long_directories_get_a_short_socket() {
        let short = socket_path(Path::new("/t/buildkit"));
        assert_eq!(short, Path::new("/t/buildkit/buildkitd.sock"));
        let long_dir = PathBuf::from(format!("/{}", "d".repeat(120)));
        let long = socket_path(&long_dir);
        assert!(
            long.as_os_str().len() <= MAX_SOCKET_PATH + 40,
            "{}",
            long.display()
        );
        assert_eq!(
            long,
            socket_path(&long_dir),
            "the same directory gives the same socket"
        );
    }

    #[test]
    fn buildkitd_starts_builds_and_stops() {
        let root = crate::project_root();
        let bin_dir = match install(&root) {
            Ok(Some(bin_dir)) => bin_dir,
            Ok(None) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "../shared/tools/buildkit must exist on CI"
                );
                eprintln!("skipping: ../shared/tools/buildkit is absent");
                return;
            }
            Err(err) => panic!("installing BuildKit: {err:#}"),
        };
        let base =
            super::super::run_dir(&crate::services_dir(), "selftest-buildkit").expect("run dir");
        let buildkit = start(&bin_dir, &base, &[], Lifetime::Owned).expect("buildkitd starts");
        let state = buildkit.state.clone();
        let pid = buildkit.pid;
        // A scratch build runs no container but goes through the solver and the snapshotter.
        let context = base.join("context");
        fs::create_dir_all(&context).expect("context dir");
        fs::write(context.join("Dockerfile"), "FROM scratch\nCOPY a /a\n").expect("Dockerfile");
        fs::write(context.join("a"), "a\n").expect("a");
        let output = buildkit
            .buildctl()
            .args(["build", "--progress=plain", "--frontend", "dockerfile.v0"])
            .arg(format!("--local=context={}", context.display()))
            .arg(format!("--local=dockerfile={}", context.display()))
            .output()
            .expect("running buildctl build");
        assert!(
            output.status.success(),
            "buildctl build failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        buildkit.stop().expect("buildkitd stops");
        assert!(!is_live_buildkitd(pid), "buildkitd {pid} still runs");
        assert!(!state.exists(), "{} is removed", state.display());
        fs::remove_dir_all(&base).expect("run dir is removable");
    }
}
