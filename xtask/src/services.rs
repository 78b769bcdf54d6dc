//! Test services: the Debian packages the suite needs and the loopback distribution registries.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

pub(crate) mod buildkit;

/// A Debian package the test suite needs and the binary whose presence proves it is installed.
struct Tool {
    package: &'static str,
    binary: &'static str,
    /// The binary is copied into build root filesystems, so a dynamically linked one is useless.
    must_be_static: bool,
}

const TOOLS: &[Tool] = &[
    Tool {
        package: "docker-registry",
        binary: "docker-registry",
        must_be_static: false,
    },
    Tool {
        package: "apache2-utils",
        binary: "htpasswd",
        must_be_static: false,
    },
    Tool {
        package: "busybox-static",
        binary: "busybox",
        must_be_static: true,
    },
    Tool {
        package: "skopeo",
        binary: "skopeo",
        must_be_static: false,
    },
    Tool {
        package: "umoci",
        binary: "umoci",
        must_be_static: false,
    },
];

/// Where binaries are looked up when `PATH` does not name them (root's usual `sbin` dirs included).
const FALLBACK_BIN_DIRS: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"];

/// User name of the Basic-auth registry.
const AUTH_USER: &str = "buildcache";
/// Password of the Basic-auth registry; it only ever listens on loopback.
const AUTH_PASSWORD: &str = "buildcache-test-password";

const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `cargo xtask deps`: makes sure every test tool is installed, installing it with apt where possible.
pub(crate) fn ensure_tools() -> anyhow::Result<()> {
    ensure_packages(TOOLS)
}

/// Installs the packages of `tools` whose binary is missing, with apt where possible.
fn ensure_packages(tools: &[Tool]) -> anyhow::Result<()> {
    let missing = missing_packages(tools);
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !(is_root() && find_binary("apt-get").is_some()) {
        anyhow::bail!(
            "the test suite needs these Debian packages, which are missing: {list}\n\
             install them with: sudo apt-get install -y {list}"
        );
    }
    eprintln!("xtask: installing missing packages: {list}");
    run_checked(Command::new("apt-get").arg("update"))?;
    run_checked(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(&missing),
    )?;
    let still_missing = missing_packages(tools);
    if !still_missing.is_empty() {
        anyhow::bail!(
            "`apt-get install -y {list}` succeeded but these packages still lack their binary: {}",
            still_missing.join(" ")
        );
    }
    Ok(())
}

/// The packages of `tools` whose binary is missing (or not static where it must be).
fn missing_packages(tools: &[Tool]) -> Vec<&'static str> {
    tools
        .iter()
        .filter(|tool| match find_binary(tool.binary) {
            None => true,
            Some(path) => tool.must_be_static && !is_static_elf(&path).unwrap_or(false),
        })
        .map(|tool| tool.package)
        .collect()
}

/// Finds `name` in `PATH`, then in the usual system directories.
pub(crate) fn find_binary(name: &str) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_dirs)
        .chain(FALLBACK_BIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn is_root() -> bool {
    // `/proc/self/status` has "Uid: real effective saved fs"; the effective one decides.
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        == Some("0")
}

/// Whether `path` is a 64-bit little-endian ELF file without a program interpreter (`PT_INTERP`).
fn is_static_elf(path: &Path) -> anyhow::Result<bool> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(elf_is_static(&bytes))
}

fn elf_is_static(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |off: usize| {
        bytes
            .get(off..off + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |off: usize| {
        bytes
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |off: usize| {
        bytes.get(off..off + 8).map(|b| {
            let mut word = [0; 8];
            word.copy_from_slice(b);
            u64::from_le_bytes(word)
        })
    };
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum)).all(|idx| {
        let header = phoff + idx * usize::from(phentsize);
        u32_at(header).is_some_and(|p_type| p_type != PT_INTERP)
    })
}

fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not run {cmd:?}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed with {status}");
    Ok(())
}

/// Basic-auth credentials of a registry instance.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub(crate) user: String,
    pub(crate) password: String,
}

/// One running `docker-registry serve` process.
pub(crate) struct Registry {
    name: String,
    pid: u32,
    port: u16,
    log: PathBuf,
    auth: Option<Credentials>,
    /// `None` once the process is detached (it outlives xtask and is stopped by `registry down`).
    child: Option<Child>,
}

impl Registry {
    /// `127.0.0.1:PORT`.
    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends SIGTERM and waits for the process to exit, then SIGKILL if it did not in time.
    fn stop(&mut self) -> anyhow::Result<()> {
        match self.child.take() {
            Some(mut child) => {
                stop_owned(&mut child, self.pid, STOP_TIMEOUT)?;
                Ok(())
            }
            None => stop_detached(self.pid),
        }
    }
}

/// Stops a process this xtask started: SIGTERM, then SIGKILL if it has not exited after `timeout`.
pub(crate) fn stop_owned(child: &mut Child, pid: u32, timeout: Duration) -> anyhow::Result<()> {
    if child.try_wait()?.is_none() {
        signal(pid, "TERM")?;
        let deadline = Instant::now() + timeout;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Registries started together; stops them when dropped, so a failing run leaves nothing behind.
pub(crate) struct Services {
    registries: Vec<Registry>,
}

impl Services {
    /// The environment the test suite reads, as `(name, value)` pairs.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        for registry in &self.registries {
            match &registry.auth {
                None => {
                    env.push(("CACHE_TEST_REGISTRY".to_owned(), registry.addr()));
                    env.push((
                        "CACHE_TEST_REGISTRY_LOG".to_owned(),
                        registry.log.display().to_string(),
                    ));
                }
                Some(credentials) => {
                    env.push(("CACHE_TEST_REGISTRY_AUTH".to_owned(), registry.addr()));
                    env.push((
                        "CACHE_TEST_REGISTRY_USER".to_owned(),
                        credentials.user.clone(),
                    ));
                    env.push((
                        "CACHE_TEST_REGISTRY_PASSWORD".to_owned(),
                        credentials.password.clone(),
                    ));
                }
            }
        }
        env
    }

    /// `127.0.0.1:PORT` of every registry.
    pub(crate) fn addrs(&self) -> Vec<String> {
        self.registries.iter().map(Registry::addr).collect()
    }

    /// Stops every registry, reporting the first failure after trying them all.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        self.stop_all()
    }

    fn stop_all(&mut self) -> anyhow::Result<()> {
        let mut first_err = None;
        for mut registry in self.registries.drain(..) {
            if let Err(err) = registry.stop() {
                let err = err.context(format!("stopping registry `{}`", registry.name));
                first_err.get_or_insert(err);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Lets the registries outlive xtask and records them in `state` for [`registry_down`].
    fn detach(mut self, state: &Path) -> anyhow::Result<()> {
        let entries: Vec<serde_json::Value> = self
            .registries
            .iter()
            .map(|registry| {
                serde_json::json!({
                    "name": registry.name,
                    "pid": registry.pid,
                    "port": registry.port,
                    "log": registry.log.display().to_string(),
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&serde_json::json!({ "registries": entries }))?;
        fs::write(state, text + "\n").with_context(|| format!("writing {}", state.display()))?;
        for registry in &mut self.registries {
            // Dropping a `Child` neither kills nor waits for it.
            registry.child = None;
        }
        self.registries.clear();
        Ok(())
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        if let Err(err) = self.stop_all() {
            eprintln!("xtask: {err:#}");
        }
    }
}

/// Whether registries outlive xtask (`registry up`) or belong to it (`test`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifetime {
    /// Own process group, so a Ctrl-C in the terminal that ran `registry up` does not reach them.
    Detached,
    /// Stopped by [`Services`]'s drop, and by Ctrl-C with xtask.
    Owned,
}

/// Starts the open registry `registry` and, with `auth`, `registry-auth` under `base`.
///
/// Each instance gets a fresh `base/<name>/` with `config.yml`, `storage/` and `registry.log`.
pub(crate) fn start_registries(
    base: &Path,
    auth: bool,
    lifetime: Lifetime,
) -> anyhow::Result<Services> {
    let mut services = Services {
        registries: Vec::new(),
    };
    services
        .registries
        .push(start_registry(base, "registry", None, lifetime)?);
    if auth {
        let credentials = Credentials {
            user: AUTH_USER.to_owned(),
            password: AUTH_PASSWORD.to_owned(),
        };
        services.registries.push(start_registry(
            base,
            "registry-auth",
            Some(credentials),
            lifetime,
        )?);
    }
    Ok(services)
}

fn start_registry(
    base: &Path,
    name: &str,
    auth: Option<Credentials>,
    lifetime: Lifetime,
) -> anyhow::Result<Registry> {
    let binary = find_binary("docker-registry").ok_or_else(|| {
        anyhow::format_err!(
            "docker-registry is not installed: run `cargo xtask deps` or `sudo apt-get install -y docker-registry`"
        )
    })?;
    let dir = base.join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing old {}", dir.display()))?;
    }
    let storage = dir.join("storage");
    fs::create_dir_all(&storage).with_context(|| format!("creating {}", storage.display()))?;
    let htpasswd = match &auth {
        None => None,
        Some(credentials) => {
            let path = dir.join("htpasswd");
            write_htpasswd(&path, credentials)?;
            Some(path)
        }
    };
    let config = dir.join("config.yml");
    fs::write(&config, registry_config(&storage, htpasswd.as_deref()))
        .with_context(|| format!("writing {}", config.display()))?;

    let log = dir.join("registry.log");
    let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(&binary);
    // The access log goes to stdout and everything else to stderr: keep both in one file.
    cmd.arg("serve")
        .arg(&config)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    if lifetime == Lifetime::Detached {
        cmd.process_group(0);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut registry = Registry {
        name: name.to_owned(),
        pid: child.id(),
        port: 0,
        log,
        auth,
        child: Some(child),
    };
    match wait_until_ready(&mut registry) {
        Ok(port) => {
            registry.port = port;
            eprintln!(
                "xtask: registry `{name}` listening on {} (log: {})",
                registry.addr(),
                registry.log.display()
            );
            Ok(registry)
        }
        Err(err) => {
            let _ = registry.stop();
            let tail = log_tail(&registry.log);
            Err(err.context(format!(
                "registry `{name}` did not start; last lines of {}:\n{tail}",
                registry.log.display()
            )))
        }
    }
}

fn write_htpasswd(path: &Path, credentials: &Credentials) -> anyhow::Result<()> {
    let output = Command::new("htpasswd")
        .args(["-Bbn", &credentials.user, &credentials.password])
        .output()
        .context(
            "running htpasswd: run `cargo xtask deps` or `sudo apt-get install -y apache2-utils`",
        )?;
    anyhow::ensure!(
        output.status.success(),
        "htpasswd -Bbn failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    fs::write(path, &output.stdout).with_context(|| format!("writing {}", path.display()))
}

fn registry_config(storage: &Path, htpasswd: Option<&Path>) -> String {
    let mut config = format!(
        "version: 0.1\n\
         log:\n  level: info\n  formatter: text\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:0\n  secret: buildcache-loopback-test-registry\n",
        storage.display()
    );
    if let Some(path) = htpasswd {
        config.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: buildcache-test\n    path: {}\n",
            path.display()
        ));
    }
    config
}

/// Waits for the port in the log, then for `GET /v2/` to answer; returns the port.
fn wait_until_ready(registry: &mut Registry) -> anyhow::Result<u16> {
    let deadline = Instant::now() + START_TIMEOUT;
    let port = loop {
        if let Some(child) = registry.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            anyhow::bail!("docker-registry exited with {status}");
        }
        let text = fs::read_to_string(&registry.log).unwrap_or_default();
        if let Some(port) = parse_listen_port(&text) {
            break port;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no `listening on` line after {START_TIMEOUT:?}"
        );
        thread::sleep(Duration::from_millis(20));
    };
    loop {
        match probe_v2(port, None) {
            Ok(200 | 401) => return Ok(port),
            Ok(status) if Instant::now() > deadline => {
                anyhow::bail!("GET /v2/ on port {port} answered {status}, expected 200 or 401")
            }
            Err(err) if Instant::now() > deadline => return Err(err),
            _ => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Finds the port in the registry's `listening on 127.0.0.1:PORT` log line.
fn parse_listen_port(log: &str) -> Option<u16> {
    log.lines().find_map(|line| {
        let rest = &line[line.find("listening on ")? + "listening on ".len()..];
        let addr = rest.split(|c: char| c == '"' || c.is_whitespace()).next()?;
        addr.rsplit_once(':')?.1.parse().ok()
    })
}

/// Sends `GET /v2/` over HTTP/1.0 to `127.0.0.1:port` and returns the status code.
///
/// `authorization` is the full value of the `Authorization` header, if any.
pub(crate) fn probe_v2(port: u16, authorization: Option<&str>) -> anyhow::Result<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(value) = authorization {
        request.push_str(&format!("Authorization: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    // HTTP/1.0: the server closes the connection after the response.
    stream.take(64 * 1024).read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    parse_status_line(&response)
        .ok_or_else(|| anyhow::format_err!("{addr} sent no HTTP status line: {response:?}"))
}

fn parse_status_line(response: &str) -> Option<u16> {
    let line = response.lines().next()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    run_checked(
        Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string()),
    )
}

/// Whether `pid` is a live (not zombie) `docker-registry` process.
#[cfg(test)]
fn is_live_registry(pid: u32) -> bool {
    is_live_process(pid, "docker-registry")
}

/// Whether `pid` is a live (not zombie) process whose command line contains `name`.
fn is_live_process(pid: u32, name: &str) -> bool {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name: "PID (comm) S ...".
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    String::from_utf8_lossy(&cmdline).contains(name) && !matches!(state, None | Some('Z'))
}

/// Stops a registry started by an earlier `registry up`, if that process still runs.
fn stop_detached(pid: u32) -> anyhow::Result<()> {
    stop_detached_process(pid, "docker-registry", STOP_TIMEOUT)
}

/// Stops `pid` (SIGTERM, then SIGKILL after `timeout`) if it is still a live `name` process.
fn stop_detached_process(pid: u32, name: &str, timeout: Duration) -> anyhow::Result<()> {
    if !is_live_process(pid, name) {
        return Ok(());
    }
    signal(pid, "TERM")?;
    let deadline = Instant::now() + timeout;
    while is_live_process(pid, name) {
        if Instant::now() > deadline {
            signal(pid, "KILL")?;
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `cargo xtask registry up [--auth] [--dir DIR]`: starts registries that outlive xtask.
///
/// Prints the `CACHE_TEST_REGISTRY…=` lines on stdout, everything else on stderr.
pub(crate) fn registry_up(services_dir: &Path, base: &Path, auth: bool) -> anyhow::Result<()> {
    ensure_tools()?;
    registry_down(services_dir)?;
    fs::create_dir_all(services_dir)
        .with_context(|| format!("creating {}", services_dir.display()))?;
    let services = start_registries(base, auth, Lifetime::Detached)?;
    for (name, value) in services.env() {
        println!("{name}={value}");
    }
    services.detach(&state_path(services_dir))
}

/// `cargo xtask registry down`: stops the registries recorded by `registry up`.
pub(crate) fn registry_down(services_dir: &Path) -> anyhow::Result<()> {
    let state = state_path(services_dir);
    let text = match fs::read_to_string(&state) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", state.display())),
    };
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}; delete it if it is stale", state.display()))?;
    let registries = value["registries"].as_array().cloned().unwrap_or_default();
    for registry in registries {
        let pid = registry["pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .ok_or_else(|| anyhow::format_err!("{} has an entry without a pid", state.display()))?;
        let name = registry["name"].as_str().unwrap_or("?");
        stop_detached(pid).with_context(|| format!("stopping registry `{name}` (pid {pid})"))?;
        eprintln!("xtask: stopped registry `{name}` (pid {pid})");
    }
    fs::remove_file(&state).with_context(|| format!("removing {}", state.display()))
}

/// A fresh `services_dir/<kind>-<pid>` for the registries of one run.
///
/// Several people may run the suite in one tree at once, so runs never share storage or logs.
/// Directories of earlier runs whose process is gone are removed first.
pub(crate) fn run_dir(services_dir: &Path, kind: &str) -> anyhow::Result<PathBuf> {
    if let Ok(entries) = fs::read_dir(services_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|name| {
                name.strip_prefix(kind)?
                    .strip_prefix('-')?
                    .parse::<u32>()
                    .ok()
            });
            if let Some(pid) = pid
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                // A killed run may have left a buildkitd's mounts behind.
                let _ = buildkit::unmount_under(&entry.path());
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = services_dir.join(format!("{kind}-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn state_path(services_dir: &Path) -> PathBuf {
    services_dir.join("state.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn listen_port_is_read_from_the_log_line() {
        let log = "time=\"x\" level=info msg=\"redis not configured\"\n\
                   time=\"x\" level=info msg=\"listening on 127.0.0.1:40249\" go.version=go1.19.8\n";
        assert_eq!(parse_listen_port(log), Some(40249));
        assert_eq!(
            parse_listen_port("level=info msg=\"redis not configured\"\n"),
            None
        );
    }

    #[test]
    fn status_line_is_parsed() {
        assert_eq!(
            parse_status_line("HTTP/1.0 401 Unauthorized\r\nX: y\r\n"),
            Some(401)
        );
        assert_eq!(parse_status_line("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(""), None);
    }

    #[test]
    fn config_binds_loopback_and_enables_delete_and_auth() {
        let open = registry_config(Path::new("/s"), None);
        assert!(open.contains("addr: 127.0.0.1:0\n"), "{open}");
        assert!(open.contains("rootdirectory: /s\n"), "{open}");
        assert!(open.contains("delete:\n    enabled: true\n"), "{open}");
        assert!(!open.contains("auth:"), "{open}");
        let auth = registry_config(Path::new("/s"), Some(Path::new("/h")));
        assert!(
            auth.contains("auth:\n  htpasswd:\n    realm: buildcache-test\n    path: /h\n"),
            "{auth}"
        );
    }

    #[test]
    fn dynamic_executables_are_not_static() {
        let exe = std::env::current_exe().expect("test binary has a path");
        let bytes = fs::read(exe).expect("test binary is readable");
        assert!(bytes.starts_with(b"\x7fELF"));
        assert!(
            !elf_is_static(&bytes),
            "the test binary is dynamically linked"
        );
        assert!(!elf_is_static(b"#!/bin/sh\n"));
    }

    #[test]
    fn static_busybox_is_static() {
        // busybox-static is one of the tools the suite installs; skip where it is absent (not CI).
        let Some(path) = find_binary("busybox") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "busybox must be installed on CI"
            );
            eprintln!("skipping: busybox is not installed");
            return;
        };
        assert!(
            is_static_elf(&path).expect("busybox is readable"),
            "{}",
            path.display()
        );
    }

    #[test]
    fn registries_start_answer_and_stop() {
        if find_binary("docker-registry").is_none() || find_binary("htpasswd").is_none() {
            assert!(
                std::env::var_os("CI").is_none(),
                "docker-registry and htpasswd must be installed on CI"
            );
            eprintln!("skipping: docker-registry or htpasswd is not installed");
            return;
        }
        let base = run_dir(&crate::services_dir(), "selftest").expect("run dir");
        let services = start_registries(&base, true, Lifetime::Owned).expect("registries start");
        let env = services.env();
        let get = |name: &str| {
            env.iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
                .unwrap_or_else(|| panic!("{name} is set"))
        };
        let port = |addr: String| -> u16 {
            addr.rsplit_once(':')
                .expect("host:port")
                .1
                .parse()
                .expect("port")
        };
        let open_port = port(get("CACHE_TEST_REGISTRY"));
        let auth_port = port(get("CACHE_TEST_REGISTRY_AUTH"));
        assert_eq!(
            probe_v2(open_port, None).expect("open registry answers"),
            200
        );
        assert_eq!(
            probe_v2(auth_port, None).expect("auth registry answers"),
            401
        );
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            get("CACHE_TEST_REGISTRY_USER"),
            get("CACHE_TEST_REGISTRY_PASSWORD")
        ));
        assert_eq!(
            probe_v2(auth_port, Some(&format!("Basic {token}"))).expect("auth answers"),
            200
        );
        assert_eq!(
            probe_v2(auth_port, Some("Basic Ym9ndXM6Ym9ndXM=")).expect("auth answers"),
            401
        );
        let log = fs::read_to_string(get("CACHE_TEST_REGISTRY_LOG")).expect("log exists");
        assert!(
            log.contains("\"GET /v2/ HTTP/1.0\" 200"),
            "access log lists requests:\n{log}"
        );
        let pids: Vec<u32> = services
            .registries
            .iter()
            .map(|registry| registry.pid)
            .collect();
        services.stop().expect("registries stop");
        for pid in pids {
            assert!(!is_live_registry(pid), "registry {pid} still runs");
        }
        fs::remove_dir_all(&base).expect("run dir is removable");
        assert!(
            probe_v2(open_port, None).is_err(),
            "nothing listens on {open_port} any more"
        );
    }
}
