//! RUN isolation: executing a command inside a root filesystem with its own namespaces.
//!
//! [`run`] executes one `RUN` step the way BuildKit's runc executor does: the command is PID 1 of
//! new mount, PID, UTS and IPC namespaces (the network is the host's, or with [`Network::None`] a
//! new network namespace with only loopback), the root filesystem is `/`
//! (via `pivot_root`), with `/proc`, a minimal `/dev`, read-only `/etc/hosts` and `/etc/resolv.conf`,
//! hostname `buildkitsandbox`, Docker's default capabilities and the `USER`'s credentials.
//!
//! The root filesystem is the build's snapshot: every mount is made inside the private mount
//! namespace and vanishes with it. Mount points that had to be created (`/proc`, `/dev`, `/etc`,
//! `/etc/hosts`, `/etc/resolv.conf`) are removed afterwards when still unused, and their parent's
//! modification time is restored, so a command that writes nothing leaves the tree as it was.
//! `/tmp` is the root filesystem's own directory (no tmpfs), as in BuildKit.
//!
//! As root the namespaces are created directly; otherwise a user namespace maps the caller to root
//! (like `unshare --map-root-user`), which allows `USER` root only. See [`capability`].

mod child;
mod plan;
mod rootfs;
mod user;

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use rustix::process::{Gid, Uid};

use self::child::{Plan, UserNamespace};
use self::plan::{HINT_PRIVILEGE, Steps};
use self::rootfs::{Created, Ensured, Kind, Root};

/// The hostname BuildKit gives its build containers.
pub const DEFAULT_HOSTNAME: &str = "buildkitsandbox";

/// Docker's default `PATH`, used when the environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One command to run in a root filesystem.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The root filesystem directory (the build's snapshot); it becomes `/`.
    pub rootfs: PathBuf,
    /// The command, already resolved: the shell form is `["/bin/sh", "-c", "cmd"]`.
    /// A name without `/` is looked up in the environment's `PATH` inside the root filesystem.
    pub argv: Vec<String>,
    /// The environment (from `ENV` and `ARG`); Docker's default `PATH` and the user's `HOME` are added
    /// when missing. A later duplicate wins.
    pub env: Vec<(String, String)>,
    /// Absolute working directory inside the root filesystem; created (`mkdir -p`, mode 0755, owned by
    /// root) when missing, like BuildKit.
    pub cwd: String,
    /// `USER`: `uid`, `uid:gid`, `name`, `name:group` (names resolved through the root filesystem's
    /// `/etc/passwd` and `/etc/group`); `None` is root.
    pub user: Option<String>,
    /// The sandbox's hostname; empty means [`DEFAULT_HOSTNAME`].
    pub hostname: String,
    /// `(host, ip)` entries added to `/etc/hosts` after the defaults (`--add-host`).
    pub extra_hosts: Vec<(String, String)>,
    /// Bytes for the command's standard input; `None` connects it to `/dev/null`.
    pub stdin: Option<Vec<u8>>,
    /// The network the command sees.
    pub network: Network,
    /// `RUN --security=insecure`: the command keeps every capability and nothing in `/proc` or
    /// `/sys` is masked.
    pub insecure: bool,
}

/// The network of a sandbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Network {
    /// The host's network namespace.
    #[default]
    Host,
    /// A new network namespace with only the loopback interface, up.
    None,
}

impl RunSpec {
    /// A spec running `argv` as root in `/` of `rootfs`, with no environment but the defaults.
    pub fn new(rootfs: impl Into<PathBuf>, argv: Vec<String>) -> RunSpec {
        RunSpec {
            rootfs: rootfs.into(),
            argv,
            env: Vec::new(),
            cwd: "/".to_owned(),
            user: None,
            hostname: DEFAULT_HOSTNAME.to_owned(),
            extra_hosts: Vec::new(),
            stdin: None,
            network: Network::Host,
            insecure: false,
        }
    }
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// The exit code, or 128 + the signal number if a signal killed it (a shell's convention).
    pub status: i32,
    /// Wall time from start to exit.
    pub duration: Duration,
}

/// What isolation this process can use, see [`capability`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// Full isolation with real root privileges; any `USER` works.
    Root,
    /// Unprivileged: a user namespace maps the caller to root (`--map-root-user` semantics), so only
    /// `USER` root (uid 0, gid 0) is possible and files the command creates belong to the caller.
    UserNamespace,
    /// No isolation is possible here; the text says why and what is needed.
    Unavailable(String),
}

/// Why a command could not be run (a non-zero exit is not an error but a [`RunOutcome`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This process cannot create the namespaces.
    #[error("RUN isolation is not available: {reason}")]
    Unavailable {
        /// What is missing and how to get it.
        reason: String,
    },
    /// The spec itself is unusable (empty command, relative working directory, NUL bytes, …).
    #[error("invalid RUN step: {reason}")]
    InvalidSpec {
        /// What is wrong.
        reason: String,
    },
    /// The root filesystem is missing or unusable.
    #[error("root filesystem {}: {source}", path.display())]
    Rootfs {
        /// The root filesystem given.
        path: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },
    /// `USER` names a user or group the root filesystem does not have, or this isolation cannot
    /// switch to it.
    #[error("{message}")]
    User {
        /// What could not be resolved and how to fix it.
        message: String,
    },
    /// The program does not exist in the root filesystem (or its interpreter/loader does not).
    #[error("executable {program} not found in the root filesystem {}{detail}", rootfs.display())]
    ExecutableNotFound {
        /// `argv[0]`.
        program: String,
        /// The root filesystem.
        rootfs: PathBuf,
        /// Extra explanation, starting with a separator, or empty.
        detail: String,
    },
    /// The program exists but could not be executed.
    #[error("executing {program} in the root filesystem {}: {source}", rootfs.display())]
    Exec {
        /// `argv[0]`.
        program: String,
        /// The root filesystem.
        rootfs: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },
    /// A sandbox setup step (namespaces, mounts, credentials) failed.
    #[error("{step} in {}: {source}{hint}", rootfs.display())]
    Setup {
        /// The step, e.g. "mounting /proc".
        step: String,
        /// The root filesystem.
        rootfs: PathBuf,
        /// The underlying failure.
        source: io::Error,
        /// How to fix it, starting with a separator, or empty.
        hint: String,
    },
    /// Other I/O around the run (pipes, temporary files, waiting).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying failure.
        source: io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidSpec {
        reason: reason.into(),
    }
}

fn c_string(text: &[u8], what: &str) -> Result<CString, Error> {
    CString::new(text).map_err(|_| invalid(format!("{what} contains a NUL byte")))
}

fn c_path(path: &Path) -> Result<CString, Error> {
    c_string(
        path.as_os_str().as_bytes(),
        &format!("path {}", path.display()),
    )
}

/// How [`run`] isolates, chosen by [`capability`] (tests pick one directly).
#[derive(Clone, Copy, Debug)]
enum Mode {
    Root,
    UserNamespace {
        /// Test hook: switch to this uid/gid before creating the user namespace.
        become_unprivileged: Option<(u32, u32)>,
    },
}

/// Reports what isolation this process can use here, probing once (the answer is cached).
///
/// As root the namespaces are created directly. Otherwise an unprivileged user namespace is tried;
/// when the kernel forbids it, the reason names the setting to change.
pub fn capability() -> Isolation {
    static CACHED: OnceLock<Isolation> = OnceLock::new();
    CACHED.get_or_init(probe_capability).clone()
}

fn user_namespace_maps(uid: u32, gid: u32) -> UserNamespace {
    UserNamespace {
        uid_map: format!("0 {uid} 1\n").into_bytes(),
        gid_map: format!("0 {gid} 1\n").into_bytes(),
    }
}

fn probe_capability() -> Isolation {
    let root_failure = if rustix::process::geteuid().is_root() {
        match child::probe(None) {
            Ok(()) => return Isolation::Root,
            Err(errno) => Some(io::Error::from(errno)),
        }
    } else {
        None
    };
    let maps = user_namespace_maps(
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    match child::probe(Some(&maps)) {
        Ok(()) => Isolation::UserNamespace,
        Err(errno) => {
            let mut reason = match root_failure {
                Some(err) => format!(
                    "creating namespaces as root failed ({err}): the process lacks CAP_SYS_ADMIN (in a container, run it privileged); "
                ),
                None => String::new(),
            };
            reason.push_str(&format!(
                "creating an unprivileged user namespace failed ({}): {}",
                io::Error::from(errno),
                user_namespace_hint()
            ));
            Isolation::Unavailable(reason)
        }
    }
}

/// Names the kernel setting that blocks unprivileged user namespaces, when one does.
fn user_namespace_hint() -> String {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_owned())
    };
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return "set `sysctl kernel.unprivileged_userns_clone=1` or run as root".to_owned();
    }
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return "set `sysctl user.max_user_namespaces=15000` (it is 0) or run as root".to_owned();
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        return "AppArmor restricts unprivileged user namespaces: set `sysctl kernel.apparmor_restrict_unprivileged_userns=0`, add an AppArmor profile allowing `userns` for this binary, or run as root".to_owned();
    }
    "enable unprivileged user namespaces (e.g. `sysctl kernel.unprivileged_userns_clone=1`, `user.max_user_namespaces` > 0) or run as root".to_owned()
}

/// Runs a command isolated inside `spec.rootfs`.
///
/// Output is passed to `on_output(stream, bytes)` as it arrives, stdout as stream 1 and stderr as
/// stream 2, interleaved in arrival order; chunks are what the pipe delivered (not split into lines).
/// Blocks until the command and everything it started have exited; run it on a blocking thread.
/// If the calling thread dies, the sandbox is killed.
///
/// A non-zero exit is an `Ok` [`RunOutcome`]; errors are for what prevented the command from running.
pub fn run(spec: &RunSpec, on_output: &mut dyn FnMut(u8, &[u8])) -> Result<RunOutcome, Error> {
    run_with_mounts(spec, &[], on_output)
}

/// An extra mount for `RUN --mount`, made inside the sandbox only (it never reaches the layer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Absolute path inside the root filesystem; created when missing and removed again afterwards
    /// if it stayed an unused mount point.
    pub target: String,
    /// What is mounted.
    pub kind: MountKind,
    /// Mount read-only.
    pub readonly: bool,
}

/// What a [`Mount`] puts at its target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountKind {
    /// A host file or directory, bound recursively (`type=bind`, `type=cache`, `type=secret`).
    Bind {
        /// The host path.
        source: PathBuf,
    },
    /// An empty tmpfs (`type=tmpfs`).
    Tmpfs {
        /// Size limit in bytes; `None` is the kernel default (half the memory).
        size: Option<u64>,
    },
}

/// Like [`run`], with extra mounts applied in order after the sandbox's own (`/proc`, `/dev`, …).
pub fn run_with_mounts(
    spec: &RunSpec,
    mounts: &[Mount],
    on_output: &mut dyn FnMut(u8, &[u8]),
) -> Result<RunOutcome, Error> {
    let mode = match capability() {
        Isolation::Root => Mode::Root,
        Isolation::UserNamespace => Mode::UserNamespace {
            become_unprivileged: None,
        },
        Isolation::Unavailable(reason) => return Err(Error::Unavailable { reason }),
    };
    run_in_mode(spec, mounts, mode, on_output)
}

/// Everything prepared in the parent for one run.
struct Prepared {
    root: Root,
    steps: Steps,
    env: Vec<(String, String)>,
    created: Vec<Created>,
    /// Holds the generated `/etc/hosts` and `/etc/resolv.conf` until the run is over.
    _files: tempfile::TempDir,
}

fn validate(spec: &RunSpec) -> Result<(), Error> {
    let Some(program) = spec.argv.first() else {
        return Err(invalid("the command is empty"));
    };
    if program.is_empty() {
        return Err(invalid("the program name is empty"));
    }
    if !spec.cwd.starts_with('/') {
        return Err(invalid(format!(
            "working directory {:?} is not absolute (WORKDIR resolves it against the previous one)",
            spec.cwd
        )));
    }
    for (key, value) in &spec.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(invalid(format!(
                "environment variable name {key:?} is not valid"
            )));
        }
        if value.contains('\0') {
            return Err(invalid(format!(
                "environment variable {key} contains a NUL byte"
            )));
        }
    }
    for arg in &spec.argv {
        if arg.contains('\0') {
            return Err(invalid(format!(
                "command argument {arg:?} contains a NUL byte"
            )));
        }
    }
    if spec.hostname.len() > 64 {
        return Err(invalid(format!(
            "hostname {:?} is longer than 64 bytes",
            spec.hostname
        )));
    }
    Ok(())
}

fn lookup_user(spec: &RunSpec, root: &Root) -> Result<user::ExecUser, Error> {
    let read = |rel: &str| {
        root.read_to_string(rel).map_err(|source| Error::Rootfs {
            path: root.path().join(rel),
            source,
        })
    };
    let passwd = read("etc/passwd")?;
    let group = read("etc/group")?;
    let shown = spec.user.as_deref().unwrap_or("root");
    user::resolve(spec.user.as_deref(), passwd.as_deref(), group.as_deref()).map_err(|err| {
        let message = match err {
            user::LookupError::User { name, has_passwd: true } => format!(
                "USER {shown}: unable to find user {name}: no matching entry in /etc/passwd of the root filesystem {} (create it in an earlier step, e.g. `RUN adduser`, or use a numeric uid)",
                root.path().display()
            ),
            user::LookupError::User { name, has_passwd: false } => format!(
                "USER {shown}: unable to find user {name}: the root filesystem {} has no /etc/passwd (use a numeric uid)",
                root.path().display()
            ),
            user::LookupError::Group { name, has_group: true } => format!(
                "USER {shown}: unable to find group {name}: no matching entry in /etc/group of the root filesystem {} (create it, or use a numeric gid)",
                root.path().display()
            ),
            user::LookupError::Group { name, has_group: false } => format!(
                "USER {shown}: unable to find group {name}: the root filesystem {} has no /etc/group (use a numeric gid)",
                root.path().display()
            ),
            user::LookupError::Range { id } => {
                format!("USER {shown}: id {id} is out of range (0 to 2147483647)")
            }
        };
        Error::User { message }
    })
}

fn prepare(spec: &RunSpec, mounts: &[Mount], mode: Mode) -> Result<Prepared, Error> {
    validate(spec)?;
    let root = Root::open(&spec.rootfs).map_err(|source| Error::Rootfs {
        path: spec.rootfs.clone(),
        source,
    })?;
    if !root.path().is_dir() {
        return Err(Error::Rootfs {
            path: spec.rootfs.clone(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let rootfs_error = |rel: &str| {
        let path = root.path().join(rel.trim_start_matches('/'));
        move |source| Error::Rootfs { path, source }
    };

    let exec_user = lookup_user(spec, &root)?;
    if matches!(mode, Mode::UserNamespace { .. }) && (exec_user.uid != 0 || exec_user.gid != 0) {
        return Err(Error::User {
            message: format!(
                "USER {} (uid {}, gid {}) cannot be used without root: the unprivileged user namespace maps only uid 0 and gid 0; run the build as root",
                spec.user.as_deref().unwrap_or("root"),
                exec_user.uid,
                exec_user.gid
            ),
        });
    }

    // The working directory is a real change that stays in the layer, as with BuildKit.
    let mut untracked = Vec::new();
    match root
        .ensure(&spec.cwd, Kind::Dir, &mut untracked)
        .map_err(rootfs_error(&spec.cwd))?
    {
        Ensured::At(_) => {}
        Ensured::DanglingSymlink => {
            return Err(Error::Rootfs {
                path: root.path().join(spec.cwd.trim_start_matches('/')),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "the working directory goes through a symbolic link to nothing",
                ),
            });
        }
    }

    let mut created = Vec::new();
    let result = plan::plan(spec, mounts, mode, &root, &exec_user, &mut created);
    let (steps, files) = match result {
        Ok(ok) => ok,
        Err(err) => {
            root.undo(&created);
            return Err(err);
        }
    };

    let mut env = spec.env.clone();
    if !env.iter().any(|(key, _)| key == "PATH") {
        env.push(("PATH".to_owned(), DEFAULT_PATH.to_owned()));
    }
    if !env.iter().any(|(key, _)| key == "HOME") {
        env.push(("HOME".to_owned(), exec_user.home.clone()));
    }
    Ok(Prepared {
        root,
        steps,
        env,
        created,
        _files: files,
    })
}

/// Runs a command with an explicitly chosen isolation mode.
fn run_in_mode(
    spec: &RunSpec,
    mounts: &[Mount],
    mode: Mode,
    on_output: &mut dyn FnMut(u8, &[u8]),
) -> Result<RunOutcome, Error> {
    tracing::debug!(argv = ?spec.argv, rootfs = %spec.rootfs.display(), ?mode, "RUN in a sandbox");
    let prepared = prepare(spec, mounts, mode)?;
    let _undo = UndoMountPoints(&prepared);
    execute(spec, mode, &prepared, on_output)
}

/// Removes the unused mount points after the run, also when the output callback panics.
struct UndoMountPoints<'a>(&'a Prepared);

impl Drop for UndoMountPoints<'_> {
    fn drop(&mut self) {
        let kept = self.0.root.undo(&self.0.created);
        if !kept.is_empty() {
            tracing::debug!(paths = ?kept, "mount points created for RUN stay: the command used them");
        }
    }
}

/// Kills the intermediate process (and with it the sandbox) unless it was waited for.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn execute(
    spec: &RunSpec,
    mode: Mode,
    prepared: &Prepared,
    on_output: &mut dyn FnMut(u8, &[u8]),
) -> Result<RunOutcome, Error> {
    let rootfs = prepared.root.path().to_path_buf();
    let program = spec.argv[0].clone();
    let (mut child, started) = spawn(spec, mode, prepared, &rootfs, &program)?;
    let running = child.0.as_mut().expect("the guard was just filled");
    if let Some(panic) = relay_output(running, spec.stdin.as_deref(), on_output) {
        drop(child);
        std::panic::resume_unwind(panic);
    }

    let mut running = child.0.take().expect("the guard still holds the child");
    let status = running.wait().map_err(io_error(format!(
        "waiting for {program} in {}",
        rootfs.display()
    )))?;
    let duration = started.elapsed();
    let status = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 255,
    };
    Ok(RunOutcome { status, duration })
}

/// Spawns the sandbox's intermediate process running `program`, and when it started. A busy
/// executable (`ETXTBSY`) is retried; a failed setup step is reported by the step's description.
fn spawn(
    spec: &RunSpec,
    mode: Mode,
    prepared: &Prepared,
    rootfs: &Path,
    program: &str,
) -> Result<(ChildGuard, Instant), Error> {
    let mut attempt = 0u32;
    loop {
        let (mut report_reader, report_writer) =
            io::pipe().map_err(io_error("creating the sandbox's report pipe"))?;
        let plan = child_plan(
            spec,
            mode,
            prepared,
            std::os::fd::AsRawFd::as_raw_fd(&report_writer),
        );
        let mut cmd = Command::new(program);
        cmd.args(&spec.argv[1..])
            .env_clear()
            .envs(prepared.env.iter().map(|(k, v)| (k, v)))
            .stdin(if spec.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        child::install(&mut cmd, plan);

        let started = Instant::now();
        let spawned = cmd.spawn();
        drop(report_writer);
        drop(cmd);
        match spawned {
            Ok(child) => return Ok((ChildGuard(Some(child)), started)),
            Err(err) => {
                let mut report = Vec::new();
                let _ = report_reader.read_to_end(&mut report);
                // "Text file busy": another thread of this process was writing the executable
                // (e.g. extracting a layer) when some process forked, and that fork still holds the
                // descriptor until it execs. It passes within moments; retry like a shell would.
                if report.is_empty() && err.raw_os_error() == Some(libc::ETXTBSY) && attempt < 8 {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(5 << attempt));
                    continue;
                }
                return Err(spawn_error(prepared, rootfs, program, err, &report));
            }
        }
    }
}

/// What the sandbox's processes do between fork and exec, all of it computed here, before the
/// fork; failures are reported on `report_fd`.
fn child_plan(
    spec: &RunSpec,
    mode: Mode,
    prepared: &Prepared,
    report_fd: std::os::fd::RawFd,
) -> Plan {
    let (user_namespace, become_unprivileged) = match mode {
        Mode::Root => (None, None),
        Mode::UserNamespace {
            become_unprivileged,
        } => {
            let (uid, gid) = become_unprivileged.unwrap_or((
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            ));
            let become_unprivileged =
                become_unprivileged.map(|(uid, gid)| (Uid::from_raw(uid), Gid::from_raw(gid)));
            (Some(user_namespace_maps(uid, gid)), become_unprivileged)
        }
    };
    Plan {
        parent_pid: rustix::process::getpid(),
        user_namespace,
        become_unprivileged,
        ops: prepared.steps.ops.clone(),
        new_network: spec.network == Network::None,
        report_fd,
    }
}

/// Passes the command's output to `on_output` as it comes, and writes `stdin` to it, until its
/// pipes close. A panic of `on_output` kills the sandbox and is returned.
fn relay_output(
    running: &mut Child,
    stdin: Option<&[u8]>,
    on_output: &mut dyn FnMut(u8, &[u8]),
) -> Option<Box<dyn std::any::Any + Send>> {
    let stdout = running.stdout.take();
    let stderr = running.stderr.take();
    let stdin_pipe = running.stdin.take();
    let intermediate_pid = rustix::process::Pid::from_raw(running.id() as i32);
    std::thread::scope(|scope| {
        let (sender, receiver) = mpsc::channel::<(u8, Vec<u8>)>();
        for (stream, pipe) in [
            (1u8, stdout.map(|p| Box::new(p) as Box<dyn Read + Send>)),
            (2u8, stderr.map(|p| Box::new(p) as Box<dyn Read + Send>)),
        ] {
            let Some(mut pipe) = pipe else { continue };
            let sender = sender.clone();
            scope.spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if sender.send((stream, buf[..n].to_vec())).is_err() {
                                break;
                            }
                        }
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        Err(err) => {
                            tracing::warn!(stream, error = %err, "reading RUN output failed");
                            break;
                        }
                    }
                }
            });
        }
        drop(sender);
        if let (Some(mut pipe), Some(data)) = (stdin_pipe, stdin) {
            scope.spawn(move || {
                // The command may exit without reading everything; that is not an error.
                let _ = pipe.write_all(data);
            });
        }
        for (stream, bytes) in receiver {
            let delivered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                on_output(stream, &bytes)
            }));
            if let Err(panic) = delivered {
                // Stop the sandbox so that the readers see the end of the pipes and the scope ends.
                if let Some(pid) = intermediate_pid {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
                return Some(panic);
            }
        }
        None
    })
}

fn spawn_error(
    prepared: &Prepared,
    rootfs: &Path,
    program: &str,
    err: io::Error,
    report: &[u8],
) -> Error {
    if report.len() >= 8 {
        let step = u32::from_le_bytes([report[0], report[1], report[2], report[3]]);
        let errno = i32::from_le_bytes([report[4], report[5], report[6], report[7]]);
        let (what, hint) = match step {
            child::STEP_DROP_PRIVILEGES => {
                ("switching to the unprivileged test user".to_owned(), "")
            }
            child::STEP_DEATH_SIGNAL => ("arming the parent-death signal".to_owned(), ""),
            child::STEP_UNSHARE => (
                "creating the mount, PID, UTS and IPC namespaces".to_owned(),
                HINT_PRIVILEGE,
            ),
            child::STEP_SETGROUPS_DENY => {
                ("writing /proc/self/setgroups".to_owned(), HINT_PRIVILEGE)
            }
            child::STEP_UID_MAP => ("writing /proc/self/uid_map".to_owned(), HINT_PRIVILEGE),
            child::STEP_GID_MAP => ("writing /proc/self/gid_map".to_owned(), HINT_PRIVILEGE),
            child::STEP_FORK => ("forking the sandbox's first process".to_owned(), ""),
            idx => prepared
                .steps
                .what
                .get(idx as usize)
                .cloned()
                .unwrap_or_else(|| (format!("sandbox setup step {idx}"), "")),
        };
        return Error::Setup {
            step: what,
            rootfs: rootfs.to_path_buf(),
            source: io::Error::from_raw_os_error(errno),
            hint: hint.to_owned(),
        };
    }
    match err.kind() {
        io::ErrorKind::NotFound => {
            let detail = if program.contains('/') && prepared.root.exists(program) {
                ": it exists, so its interpreter or dynamic loader is missing".to_owned()
            } else if program.contains('/') {
                String::new()
            } else {
                let path = prepared
                    .env
                    .iter()
                    .rev()
                    .find(|(key, _)| key == "PATH")
                    .map(|(_, value)| value.as_str())
                    .unwrap_or(DEFAULT_PATH);
                format!(" (searched PATH={path})")
            };
            Error::ExecutableNotFound {
                program: program.to_owned(),
                rootfs: rootfs.to_path_buf(),
                detail,
            }
        }
        _ => Error::Exec {
            program: program.to_owned(),
            rootfs: rootfs.to_path_buf(),
            source: err,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const APPLETS: [&str; 14] = [
        "sh", "echo", "cat", "id", "ls", "hostname", "pwd", "head", "wc", "touch", "sleep", "grep",
        "true", "mkdir",
    ];

    fn busybox() -> PathBuf {
        ["/usr/bin/busybox", "/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|path| path.exists())
            .expect("the tests need a static busybox (Debian package busybox-static)")
    }

    /// A root filesystem holding only `bin/` with busybox and relative applet links.
    fn make_rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("mkdir bin");
        std::fs::copy(busybox(), bin.join("busybox")).expect("copy busybox");
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
        }
        dir
    }

    /// The mode the tests run with here, or `None` (after checking the explanation) when no isolation
    /// is possible on this machine.
    fn test_mode() -> Option<Mode> {
        match capability() {
            Isolation::Root => Some(Mode::Root),
            Isolation::UserNamespace => Some(Mode::UserNamespace {
                become_unprivileged: None,
            }),
            Isolation::Unavailable(reason) => {
                assert!(
                    reason.contains("root"),
                    "the reason says what is needed: {reason}"
                );
                eprintln!("skipping: {reason}");
                None
            }
        }
    }

    fn sh(rootfs: &Path, script: &str) -> RunSpec {
        RunSpec::new(rootfs, vec!["/bin/sh".into(), "-c".into(), script.into()])
    }

    struct Ran {
        outcome: RunOutcome,
        stdout: String,
        stderr: String,
        chunks: usize,
    }

    fn run_with(spec: &RunSpec, mode: Mode) -> Result<Ran, Error> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut chunks = 0;
        let outcome = run_in_mode(spec, &[], mode, &mut |stream, bytes| {
            chunks += 1;
            match stream {
                1 => stdout.extend_from_slice(bytes),
                2 => stderr.extend_from_slice(bytes),
                other => panic!("unexpected stream {other}"),
            }
        })?;
        Ok(Ran {
            outcome,
            stdout: String::from_utf8(stdout).expect("utf-8 stdout"),
            stderr: String::from_utf8(stderr).expect("utf-8 stderr"),
            chunks,
        })
    }

    fn run_ok(spec: &RunSpec, mode: Mode) -> Ran {
        let ran = run_with(spec, mode).expect("the command runs");
        assert_eq!(
            ran.outcome.status, 0,
            "exit status; stdout {:?} stderr {:?}",
            ran.stdout, ran.stderr
        );
        ran
    }

    fn top_level(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root)
            .expect("read rootfs")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn output_is_streamed_per_stream() {
        let Some(mode) = test_mode() else { return };
        let root = make_rootfs();
        let ran = run_ok(
            &sh(root.path(), "echo hello; echo oops >&2; echo again"),
            mode,
        );
        assert_eq!(ran.stdout, "hello\nagain\n");
        assert_eq!(ran.stderr, "oops\n");
        assert!(ran.chunks >= 2);
    }

    #[test]
    fn container_defaults_match_docker() {
        let Some(mode) = test_mode() else { return };
        let root = make_rootfs();
        let ran = run_ok(
            &sh(
                root.path(),
                "umask; grep -E '^Cap(Bnd|Eff):' /proc/self/status; echo $(ls /proc/self/fd); \
                 echo 1 > /proc/sys/kernel/domainname && echo proc-sys-writable; \
                 cat /proc/timer_list 2>/dev/null | wc -c; ls /sys/kernel >/dev/null && echo sys-ok; \
                 touch /sys/x 2>/dev/null || echo sys-ro",
            ),
            mode,
        );
        let lines: Vec<&str> = ran.stdout.lines().collect();
        assert_eq!(lines[0], "0022", "{:?}", ran.stdout);
        // Docker's default capability set, and nothing more in the bounding set.
        assert_eq!(lines[1], "CapEff:\t00000000a80425fb", "{:?}", ran.stdout);
        assert_eq!(lines[2], "CapBnd:\t00000000a80425fb", "{:?}", ran.stdout);
        // Only stdin, stdout, stderr and the descriptor `ls` opens: nothing leaked from the builder.
        let fds: Vec<&str> = lines[3].split_whitespace().collect();
        assert!(fds.len() <= 4, "leaked descriptors: {fds:?}");
        assert!(
            !ran.stdout.contains("proc-sys-writable"),
            "{:?}",
            ran.stdout
        );
        if Path::new("/proc/timer_list").exists() {
            assert_eq!(lines[4].trim(), "0", "/proc/timer_list is masked");
        }
        assert!(ran.stdout.contains("sys-ok\nsys-ro\n"), "{:?}", ran.stdout);
        assert_eq!(
            top_level(root.path()),
            ["bin"],
            "no /sys or /proc left behind"
        );
    }

    #[test]
    fn output_arrives_while_the_command_runs() {
        let Some(mode) = test_mode() else { return };
        let root = make_rootfs();
        let spec = sh(root.path(), "echo first; sleep 1; echo second");
        let started = Instant::now();
        let mut first_seen = None;
        run_in_mode(&spec, &[], mode, &mut |_, bytes| {
            if bytes.starts_with(b"first") && first_seen.is_none() {
                first_seen = Some(started.elapsed());
            }
        })
        .expect("runs");
        let total = started.elapsed();
        let first_seen = first_seen.expect("saw the first line");
        assert!(
            first_seen + Duration::from_millis(700) < total,
            "first line at {first_seen:?}, end at {total:?}"
        );
    }

    #[test]
    fn a_panicking_output_callback_stops_the_sandbox() {
        let Some(mode) = test_mode() else { return };
        let root = make_rootfs();
        let spec = sh(root.path(), "echo go; sleep 60");
        let started = Instant::now();
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_in_mode(&spec, &[], mode, &mut |_, _| panic!("the display broke"))
        }));
        let panic = res.expect_err("the panic reaches the caller");
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"the display broke"));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the sandbox was killed"
        );
        assert_eq!(top_level(root.path()), ["bin"], "mount points removed");
    }

    #[test]
    fn run_mounts_stay_out_of_the_rootfs() {
        let Some(mode) = test_mode() else { return };
        let root = make_rootfs();
        let cache = tempfile::tempdir().expect("cache dir");
        std::fs::set_permissions(
            cache.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let secret = cache.path().join("token");
        std::fs::write(&secret, "s3cret").expect("secret");
        let mounts = [
            Mount {
                target: "/root/.cache".into(),
                kind: MountKind::Bind {
                    source: cache.path().to_path_buf(),
                },
                readonly: false,
            },
            Mount {
                target: "/run/secrets/token".into(),
                kind: MountKind::Bind {
                    source: secret.clone(),
                },
                readonly: true,
            },
            Mount {
                target: "/scratch".into(),
                kind: MountKind::Tmpfs {
                    size: Some(1 << 20),
                },
                readonly: false,
            },
        ];
        let spec = sh(
            root.path(),
            "echo cached > /root/.cache/out; cat /run/secrets/token; echo; \
             echo x > /run/secrets/token || echo secret-ro; echo y > /scratch/tmp && echo scratch-ok",
        );
        let mut stdout = Vec::new();
        let outcome = run_in_mode(&spec, &mounts, mode, &mut |stream, bytes| {
            if stream == 1 {
                stdout.extend_from_slice(bytes);
            }
        })
        .expect("runs");
        assert_eq!(outcome.status, 0);
        assert_eq!(
            String::from_utf8_lossy(&stdout),
            "s3cret\nsecret-ro\nscratch-ok\n"
        );
        assert_eq!(
            std::fs::read_to_string(cache.path().join("out")).expect("written through the mount"),
            "cached\n"
        );
        assert_eq!(std::fs::read_to_string(&secret).expect("secret"), "s3cret");
        assert_eq!(top_level(root.path()), ["bin"], "mount points removed");
    }

    #[test]
    fn exit_code_is_propagated() {
        let Some(mode) = test_mode() else { return };
        let root = make_rootfs();
        let ran = run_with(&sh(root.path(), "exit 7"), mode).expect("runs");
        assert_eq!(ran.outcome.status, 7);
    }

    #[test]
    fn command_is_pid_1_with_the_sandbox_hostname() {
        let Some(mode) = test_mode() else { return };
        let root = make_rootfs();
        let ran = run_ok(&sh(root.path(), "echo $$; hostname"), mode);
        assert_eq!(ran.stdout, format!("1\n{DEFAULT_HOSTNAME}\n"));
        let mut spec = sh(root.path(), "hostname");
        spec.hostname = "builder-7".into();
        assert_eq!(run_ok(&spec, mode).stdout, "builder-7\n");
    }

    #[test]
    fn proc_and_dev_are_mounted() {
        let Some(mode) = test_mode() else { return };
        let root = make_rootfs();
        let ran = run_ok(
            &sh(
                root.path(),
                "grep '^Pid:' /proc/self/status; echo x > /dev/null; head -c 16 /dev/urandom | wc -c; \
                 head -c 4 /dev/zero | wc -c; ls /dev/pts/ptmx /dev/shm /dev/fd/ >/dev/null && echo dev-ok",
            ),
            mode,
        );
        let lines: Vec<&str> = ran.stdout.lines().collect();
        assert!(lines[0].starts_with("Pid:"), "{:?}", ran.stdout);
        assert_eq!(lines[1].trim(), "16");
        assert_eq!(lines[2].trim(), "4");
        assert_eq!(lines[3], "dev-ok");
    }

    #[test]
    fn missing_working_directory_is_created() {
        let Some(mode) = test_mode() else { return };
        let root = make_rootfs();
        let mut spec = sh(root.path(), "pwd");
        spec.cwd = "/srv/app/src".into();
        let ran = run_ok(&spec, mode);
        assert_eq!(ran.stdout, "/srv/app/src\n");
        let created = root.path().join("srv/app/src");
        assert!(created.is_dir());
        assert_eq!(
            std::fs::metadata(&created).expect("stat").mode() & 0o7777,
            0o755
        );
    }

    #[test]
    fn user_switches_to_uid_gid_and_names_from_the_rootfs() {
        let Some(mode) = test_mode() else { return };
        let root = make_rootfs();
        let etc = root.path().join("etc");
        std::fs::create_dir(&etc).expect("mkdir etc");
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            etc.join("group"),
            "root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
        )
        .expect("group");

        let mut numeric = sh(root.path(), "id -u; id -g");
        numeric.user = Some("1234:5678".into());
        let mut named = sh(root.path(), "id -u; id -g; id -G; echo $HOME");
        named.user = Some("app".into());
        let mut unknown = sh(root.path(), "true");
        unknown.user = Some("nosuchuser".into());

        match mode {
            Mode::Root => {
                assert_eq!(run_ok(&numeric, mode).stdout, "1234\n5678\n");
                assert_eq!(
                    run_ok(&named, mode).stdout,
                    "1000\n1000\n1000 50\n/home/app\n"
                );
            }
            Mode::UserNamespace { .. } => {
                let err = run_with(&numeric, mode).err().expect("needs root");
                assert!(matches!(err, Error::User { .. }), "{err}");
            }
        }
        let err = run_with(&unknown, mode).err().expect("unknown user");
        assert!(err.to_string().contains("nosuchuser"), "{err}");
        assert!(matches!(err, Error::User { .. }), "{err}");
    }

    #[test]
    fn environment_gets_docker_defaults() {
        let Some(mode) = test_mode() else { return };
        let root = make_rootfs();
        let mut spec = sh(root.path(), "echo $PATH; echo $HOME; echo $GREETING");
        spec.env = vec![("GREETING".into(), "hi there".into())];
        let ran = run_ok(&spec, mode);
        assert_eq!(ran.stdout, format!("{DEFAULT_PATH}\n/\nhi there\n"));

        spec.env = vec![("PATH".into(), "/bin".into()), ("HOME".into(), "/h".into())];
        assert_eq!(run_ok(&spec, mode).stdout, "/bin\n/h\n\n");
    }

    #[test]
    fn host_filesystem_is_not_visible() {
        let Some(mode) = test_mode() else { return };
        let root = make_rootfs();
        let ran = run_with(&sh(root.path(), "ls /work"), mode).expect("runs");
        assert_ne!(ran.outcome.status, 0, "ls /work must fail: {}", ran.stdout);
        let ran = run_ok(&sh(root.path(), "ls /"), mode);
        let seen: Vec<&str> = ran.stdout.split_whitespace().collect();
        assert!(
            !seen.contains(&"usr") && !seen.contains(&"work"),
            "{seen:?}"
        );
    }

    #[test]
    fn mount_points_leave_no_trace() {
        let Some(mode) = test_mode() else { return };
        let root = make_rootfs();
        let mtime_before = std::fs::metadata(root.path()).expect("stat").mtime_nsec();
        let mtime_before_s = std::fs::metadata(root.path()).expect("stat").mtime();
        run_ok(
            &sh(root.path(), "cat /etc/hosts /proc/self/status >/dev/null"),
            mode,
        );
        assert_eq!(top_level(root.path()), ["bin"]);
        let after = std::fs::metadata(root.path()).expect("stat");
        assert_eq!(
            (after.mtime(), after.mtime_nsec()),
            (mtime_before_s, mtime_before)
        );

        // An existing /etc keeps its content and modification time too.
        let etc = root.path().join("etc");
        std::fs::create_dir(&etc).expect("mkdir etc");
        std::fs::write(etc.join("os-release"), "ID=test\n").expect("write");
        let etc_before = std::fs::metadata(&etc).expect("stat");
        run_ok(&sh(root.path(), "grep localhost /etc/hosts"), mode);
        let mut etc_names: Vec<String> = std::fs::read_dir(&etc)
            .expect("read etc")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        etc_names.sort();
        assert_eq!(etc_names, ["os-release"]);
        let etc_after = std::fs::metadata(&etc).expect("stat");
        assert_eq!(
            (etc_after.mtime(), etc_after.mtime_nsec()),
            (etc_before.mtime(), etc_before.mtime_nsec())
        );
    }

    #[test]
    fn writes_stay_in_the_rootfs_including_tmp() {
        let Some(mode) = test_mode() else { return };
        let root = make_rootfs();
        std::fs::create_dir(root.path().join("tmp")).expect("mkdir tmp");
        run_ok(
            &sh(
                root.path(),
                "echo kept > /tmp/x; mkdir -p /etc/app; echo y > /etc/app/conf",
            ),
            mode,
        );
        assert_eq!(
            std::fs::read_to_string(root.path().join("tmp/x")).expect("tmp/x"),
            "kept\n"
        );
        assert_eq!(top_level(root.path()), ["bin", "etc", "tmp"]);
        let etc_names = top_level(&root.path().join("etc"));
        assert_eq!(etc_names, ["app"], "no leftover hosts/resolv.conf");
    }

    #[test]
    fn hosts_and_resolv_conf_are_read_only() {
        let Some(mode) = test_mode() else { return };
        let root = make_rootfs();
        let ran =
            run_with(&sh(root.path(), "echo 1.2.3.4 evil >> /etc/hosts"), mode).expect("runs");
        assert_ne!(ran.outcome.status, 0);
        let ran = run_with(
            &sh(root.path(), "echo nameserver 9.9.9.9 >> /etc/resolv.conf"),
            mode,
        )
        .expect("runs");
        assert_ne!(ran.outcome.status, 0);
        assert_eq!(top_level(root.path()), ["bin"]);
    }

    #[test]
    fn stdin_bytes_reach_the_command() {
        let Some(mode) = test_mode() else { return };
        let root = make_rootfs();
        let mut spec = RunSpec::new(root.path(), vec!["cat".into()]);
        spec.stdin = Some(b"from stdin\n".to_vec());
        assert_eq!(run_ok(&spec, mode).stdout, "from stdin\n");
        let spec = RunSpec::new(root.path(), vec!["cat".into()]);
        assert_eq!(run_ok(&spec, mode).stdout, "", "no stdin is /dev/null");
    }

    #[test]
    fn background_processes_die_with_the_command() {
        let Some(mode) = test_mode() else { return };
        let root = make_rootfs();
        let ran = run_ok(&sh(root.path(), "sleep 60 & echo started"), mode);
        assert_eq!(ran.stdout, "started\n");
        assert!(ran.outcome.duration < Duration::from_secs(20));
    }

    #[test]
    fn missing_executable_is_a_clear_error() {
        let Some(mode) = test_mode() else { return };
        let root = make_rootfs();
        let err = run_with(&RunSpec::new(root.path(), vec!["/bin/nope".into()]), mode)
            .err()
            .expect("must fail");
        assert!(matches!(err, Error::ExecutableNotFound { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("executable /bin/nope not found in the root filesystem"),
            "{err}"
        );
        assert_eq!(top_level(root.path()), ["bin"]);

        let err = run_with(&RunSpec::new(root.path(), vec!["nope".into()]), mode)
            .err()
            .expect("must fail");
        assert!(err.to_string().contains("searched PATH="), "{err}");
    }

    #[test]
    fn setup_failures_name_the_step() {
        let Some(mode) = test_mode() else { return };
        let root = make_rootfs();
        std::fs::write(root.path().join("proc"), "not a directory").expect("write");
        let err = run_with(&sh(root.path(), "true"), mode)
            .err()
            .expect("mounting /proc on a file fails");
        assert!(matches!(err, Error::Setup { .. }), "{err:?}");
        let message = err.to_string();
        let expected = format!(
            "mounting /proc in {}: ",
            root.path().canonicalize().expect("canonical").display()
        );
        assert!(message.starts_with(&expected), "{message}");
        assert_eq!(
            top_level(root.path()),
            ["bin", "proc"],
            "mount points removed"
        );
    }

    #[test]
    fn missing_rootfs_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nothing");
        let err = run_with(&sh(&missing, "true"), Mode::Root)
            .err()
            .expect("must fail");
        assert!(matches!(err, Error::Rootfs { .. }), "{err:?}");
        assert!(err.to_string().contains("nothing"), "{err}");
    }

    #[test]
    fn invalid_specs_are_rejected() {
        let root = make_rootfs();
        let mut spec = sh(root.path(), "true");
        spec.cwd = "relative".into();
        assert!(matches!(
            run_with(&spec, Mode::Root),
            Err(Error::InvalidSpec { .. })
        ));
        let spec = RunSpec::new(root.path(), Vec::new());
        assert!(matches!(
            run_with(&spec, Mode::Root),
            Err(Error::InvalidSpec { .. })
        ));
    }

    #[test]
    fn capability_matches_privileges() {
        let isolation = capability();
        if rustix::process::geteuid().is_root() {
            assert_eq!(isolation, Isolation::Root);
        } else {
            match isolation {
                Isolation::Root => panic!("not root, cannot be Root"),
                Isolation::UserNamespace => {}
                Isolation::Unavailable(reason) => {
                    assert!(reason.contains("run as root"), "{reason}")
                }
            }
        }
    }

    #[test]
    fn user_namespace_mode_runs_as_mapped_root() {
        let Some(_) = test_mode() else { return };
        let root = make_rootfs();
        let mode = Mode::UserNamespace {
            become_unprivileged: None,
        };
        let ran = run_ok(
            &sh(
                root.path(),
                "id -u; echo $$; hostname; cat /proc/self/uid_map",
            ),
            mode,
        );
        let lines: Vec<&str> = ran.stdout.lines().collect();
        assert_eq!(&lines[..3], ["0", "1", DEFAULT_HOSTNAME]);
        let host_uid = rustix::process::geteuid().as_raw().to_string();
        let map: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(map, ["0", host_uid.as_str(), "1"]);
    }

    #[test]
    fn unprivileged_caller_uses_a_user_namespace() {
        if !rustix::process::geteuid().is_root() {
            // The real unprivileged path is what `capability()` picks here; the other tests run it.
            return;
        }
        let root = make_rootfs();
        // The unprivileged caller must be able to reach and write its own root filesystem.
        std::fs::set_permissions(
            root.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        for entry in walkdir::WalkDir::new(root.path()) {
            let entry = entry.expect("walk");
            std::os::unix::fs::lchown(entry.path(), Some(65534), Some(65534)).expect("chown");
        }
        let mode = Mode::UserNamespace {
            become_unprivileged: Some((65534, 65534)),
        };
        let ran = run_ok(
            &sh(
                root.path(),
                "id -u; echo $$; cat /proc/self/uid_map; touch /made-here",
            ),
            mode,
        );
        let lines: Vec<&str> = ran.stdout.lines().collect();
        assert_eq!(&lines[..2], ["0", "1"]);
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["0", "65534", "1"]
        );
        let made = std::fs::metadata(root.path().join("made-here")).expect("file written");
        assert_eq!(made.uid(), 65534, "files belong to the unprivileged caller");
        assert_eq!(top_level(root.path()), ["bin", "made-here"]);
    }
}
