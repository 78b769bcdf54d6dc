//! The forked side of a sandboxed run: namespaces, mounts and credentials set up between fork and exec.
//!
//! Everything here runs in a child of a possibly multi-threaded process, after `fork` and before
//! `exec`, so it may only make async-signal-safe system calls and must not allocate. The parent
//! prepares every path, string and list beforehand (see [`Plan`]); this module only walks them.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::process::Command;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::{Gid, Pid, Signal, Uid, WaitOptions};
use rustix::thread::UnshareFlags;

/// One setup step of the sandbox's first process, done in order.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// `mount(NULL, target, NULL, MS_REC|MS_PRIVATE)`: nothing propagates back to the host.
    MakePrivate { target: CString },
    /// A recursive bind mount.
    BindRecursive { source: CString, target: CString },
    /// A plain bind mount.
    Bind { source: CString, target: CString },
    /// A new file system mount.
    Mount {
        fstype: CString,
        target: CString,
        flags: MountFlags,
        data: CString,
    },
    /// `mount(NULL, target, NULL, MS_REMOUNT|flags)`, e.g. to make a bind mount read-only.
    Remount { target: CString, flags: MountFlags },
    /// `mkdir`.
    Mkdir { path: CString, mode: u32 },
    /// Creates an empty file (a bind-mount target).
    CreateFile { path: CString },
    /// Brings the loopback interface of a new network namespace up.
    LoopbackUp,
    /// `symlink(target, link)`.
    Symlink { target: CString, link: CString },
    /// `sethostname`.
    SetHostname { name: Vec<u8> },
    /// Makes `root` the root directory with `pivot_root(".", ".")` and drops the old root.
    PivotRoot { root: CString },
    /// `chdir`.
    Chdir { path: CString },
    /// Drops these capabilities from the bounding set, so the command never gets them.
    DropBoundingCaps { caps: Vec<u32> },
    /// `setgroups`.
    SetGroups { groups: Vec<Gid> },
    /// `setresgid`.
    SetGid { gid: Gid },
    /// `setresuid`.
    SetUid { uid: Uid },
    /// `setsid`: no controlling terminal inherited from the builder.
    NewSession,
    /// `umask`.
    Umask { mode: u32 },
    /// Marks every descriptor from 3 up close-on-exec, so nothing the builder inherited leaks into
    /// the command (best effort: kernels before 5.11 lack the flag).
    CloseOnExecFrom3,
    /// Dies with the intermediate process (set last: credential changes clear it).
    DieWithParent,
}

/// What the intermediate process does before forking the sandbox's first process.
#[derive(Debug)]
pub(crate) struct UserNamespace {
    /// Contents for `/proc/self/uid_map`.
    pub(crate) uid_map: Vec<u8>,
    /// Contents for `/proc/self/gid_map`.
    pub(crate) gid_map: Vec<u8>,
}

/// Everything the forked processes need, prepared before forking.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The process that spawns the sandbox; the sandbox dies with it.
    pub(crate) parent_pid: Pid,
    /// Set for an unprivileged run.
    pub(crate) user_namespace: Option<UserNamespace>,
    /// Test hook: become this uid/gid before creating namespaces, to exercise the unprivileged path as root.
    pub(crate) become_unprivileged: Option<(Uid, Gid)>,
    /// Steps of the sandbox's first process.
    pub(crate) ops: Vec<Op>,
    /// Create a network namespace too (`RUN --network=none`).
    pub(crate) new_network: bool,
    /// Write end of the failure report pipe.
    pub(crate) report_fd: RawFd,
}

/// Failure codes of the intermediate process's own steps (indices below these are [`Plan::ops`]).
pub(crate) const STEP_DROP_PRIVILEGES: u32 = u32::MAX;
/// See [`STEP_DROP_PRIVILEGES`].
pub(crate) const STEP_DEATH_SIGNAL: u32 = u32::MAX - 1;
/// See [`STEP_DROP_PRIVILEGES`].
pub(crate) const STEP_UNSHARE: u32 = u32::MAX - 2;
/// See [`STEP_DROP_PRIVILEGES`].
pub(crate) const STEP_SETGROUPS_DENY: u32 = u32::MAX - 3;
/// See [`STEP_DROP_PRIVILEGES`].
pub(crate) const STEP_UID_MAP: u32 = u32::MAX - 4;
/// See [`STEP_DROP_PRIVILEGES`].
pub(crate) const STEP_GID_MAP: u32 = u32::MAX - 5;
/// See [`STEP_DROP_PRIVILEGES`].
pub(crate) const STEP_FORK: u32 = u32::MAX - 6;

/// The namespaces every sandbox gets; the network namespace is the host's.
fn sandbox_namespaces() -> UnshareFlags {
    UnshareFlags::NEWNS | UnshareFlags::NEWPID | UnshareFlags::NEWUTS | UnshareFlags::NEWIPC
}

/// Installs the sandbox setup on `cmd`: the spawned process becomes the intermediate process, which
/// creates the namespaces and forks the command's process (PID 1 of the new PID namespace).
pub(crate) fn install(cmd: &mut Command, plan: Plan) {
    use std::os::unix::process::CommandExt;
    // SAFETY: `pre_exec` closures run after `fork` in a copy of a possibly multi-threaded process.
    // `intermediate` only makes raw system calls (through rustix or libc) on data prepared before
    // the fork, takes no locks and allocates nothing: `io::Error::from_raw_os_error` and rustix's
    // `Errno` conversions do not allocate, and every path is a `CString` built by the parent.
    unsafe {
        cmd.pre_exec(move || intermediate(&plan));
    }
}

/// Reports which step failed, then hands the error to `std`, which passes it to `spawn`.
fn fail(plan: &Plan, step: u32, errno: Errno) -> io::Error {
    let mut report = [0u8; 8];
    report[..4].copy_from_slice(&step.to_le_bytes());
    report[4..].copy_from_slice(&errno.raw_os_error().to_le_bytes());
    // SAFETY: `report_fd` is the write end of a pipe that the parent keeps open until `spawn`
    // returns, and it is inherited by this process; the borrow does not outlive this call.
    let fd = unsafe { BorrowedFd::borrow_raw(plan.report_fd) };
    // A short or failed write only loses the detail; `spawn` still fails with the errno.
    let _ = rustix::io::write(fd, &report);
    io::Error::from_raw_os_error(errno.raw_os_error())
}

/// Writes `data` to a file given by an absolute path (used for `/proc/self/*_map`).
fn write_file(path: &std::ffi::CStr, data: &[u8]) -> Result<(), Errno> {
    let fd = rustix::fs::open(path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
    let written = rustix::io::write(&fd, data)?;
    if written != data.len() {
        return Err(Errno::IO);
    }
    Ok(())
}

/// Exits this process at once, without running any of the parent's atexit handlers or destructors.
fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// The intermediate process: namespaces, then fork; it stays outside the new PID namespace, waits for
/// the sandbox's first process and exits with its status.
fn intermediate(plan: &Plan) -> io::Result<()> {
    if let Some((uid, gid)) = plan.become_unprivileged {
        rustix::thread::set_thread_groups(&[])
            .and_then(|()| rustix::thread::set_thread_res_gid(gid, gid, gid))
            .and_then(|()| rustix::thread::set_thread_res_uid(uid, uid, uid))
            // Changing credentials makes the process non-dumpable, which makes `/proc/self/*_map`
            // root-owned; an ordinary unprivileged process is dumpable.
            .and_then(|()| {
                rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::Dumpable)
            })
            .map_err(|errno| fail(plan, STEP_DROP_PRIVILEGES, errno))?;
    }
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(|errno| fail(plan, STEP_DEATH_SIGNAL, errno))?;
    if rustix::process::getppid() != Some(plan.parent_pid) {
        // The spawning process died before the death signal was armed.
        exit_now(128 + Signal::KILL.as_raw());
    }

    let mut flags = sandbox_namespaces();
    if plan.user_namespace.is_some() {
        flags |= UnshareFlags::NEWUSER;
    }
    if plan.new_network {
        flags |= UnshareFlags::NEWNET;
    }
    // SAFETY: `unshare_unsafe` is unsafe only for `CLONE_FILES`, which is not among the flags.
    unsafe { rustix::thread::unshare_unsafe(flags) }
        .map_err(|errno| fail(plan, STEP_UNSHARE, errno))?;
    if let Some(userns) = &plan.user_namespace {
        write_file(c"/proc/self/setgroups", b"deny")
            .map_err(|errno| fail(plan, STEP_SETGROUPS_DENY, errno))?;
        write_file(c"/proc/self/uid_map", &userns.uid_map)
            .map_err(|errno| fail(plan, STEP_UID_MAP, errno))?;
        write_file(c"/proc/self/gid_map", &userns.gid_map)
            .map_err(|errno| fail(plan, STEP_GID_MAP, errno))?;
    }

    // SAFETY: this process is single-threaded (it is itself a fresh fork), so `fork` duplicates a
    // consistent process; both sides go on with async-signal-safe calls only.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(fail(
            plan,
            STEP_FORK,
            Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::AGAIN),
        ));
    }
    if pid == 0 {
        // The sandbox's first process: PID 1 in the new PID namespace. Returning `Ok` lets `std` exec
        // the command.
        return sandbox_init(plan);
    }

    // The intermediate process holds no descriptor the parent waits on: not the output pipes, not
    // `std`'s exec-status pipe, not the report pipe. Only the sandbox does.
    // SAFETY: `close_range` is a plain system call on descriptors this process owns and no longer uses.
    unsafe {
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
    }
    let child = Pid::from_raw(pid);
    loop {
        match rustix::process::waitpid(child, WaitOptions::empty()) {
            Ok(Some((_, status))) => {
                if let Some(code) = status.exit_status() {
                    exit_now(code);
                }
                if let Some(signal) = status.terminating_signal() {
                    exit_now(128 + signal);
                }
            }
            Ok(None) | Err(Errno::INTR) => {}
            Err(_) => exit_now(255),
        }
    }
}

/// The sandbox's first process: runs the prepared steps, then returns so that `std` execs the command.
fn sandbox_init(plan: &Plan) -> io::Result<()> {
    // Armed now for the setup, and again as the last step because credential changes clear it.
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(|errno| fail(plan, STEP_DEATH_SIGNAL, errno))?;
    for (idx, op) in plan.ops.iter().enumerate() {
        apply(op).map_err(|errno| fail(plan, idx as u32, errno))?;
    }
    Ok(())
}

fn apply(op: &Op) -> Result<(), Errno> {
    match op {
        Op::MakePrivate { target } => rustix::mount::mount_change(
            target.as_c_str(),
            MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
        ),
        Op::BindRecursive { source, target } => {
            rustix::mount::mount_bind_recursive(source.as_c_str(), target.as_c_str())
        }
        Op::Bind { source, target } => {
            rustix::mount::mount_bind(source.as_c_str(), target.as_c_str())
        }
        Op::Mount {
            fstype,
            target,
            flags,
            data,
        } => rustix::mount::mount(
            fstype.as_c_str(),
            target.as_c_str(),
            fstype.as_c_str(),
            *flags,
            Some(data.as_c_str()),
        ),
        Op::Remount { target, flags } => {
            rustix::mount::mount_remount(target.as_c_str(), *flags, c"")
        }
        Op::Mkdir { path, mode } => rustix::fs::mkdir(path.as_c_str(), Mode::from_raw_mode(*mode)),
        Op::CreateFile { path } => rustix::fs::open(
            path.as_c_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map(drop),
        Op::Symlink { target, link } => rustix::fs::symlink(target.as_c_str(), link.as_c_str()),
        Op::SetHostname { name } => rustix::system::sethostname(name),
        Op::LoopbackUp => loopback_up(),
        Op::PivotRoot { root } => {
            rustix::process::chdir(root.as_c_str())?;
            rustix::process::pivot_root(c".", c".")?;
            // The old root is now stacked on top of the new one; detach it and everything under it.
            rustix::mount::unmount(c".", UnmountFlags::DETACH)?;
            rustix::process::chdir(c"/")
        }
        Op::Chdir { path } => rustix::process::chdir(path.as_c_str()),
        Op::DropBoundingCaps { caps } => {
            for cap in caps {
                // SAFETY: `prctl(PR_CAPBSET_DROP, cap)` takes two integers and touches no memory.
                let res =
                    unsafe { libc::prctl(libc::PR_CAPBSET_DROP, *cap as libc::c_ulong, 0, 0, 0) };
                if res != 0 {
                    let errno =
                        Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::INVAL);
                    // Capabilities this kernel does not know are simply absent.
                    if errno != Errno::INVAL {
                        return Err(errno);
                    }
                }
            }
            Ok(())
        }
        Op::SetGroups { groups } => rustix::thread::set_thread_groups(groups),
        Op::SetGid { gid } => rustix::thread::set_thread_res_gid(*gid, *gid, *gid),
        Op::SetUid { uid } => rustix::thread::set_thread_res_uid(*uid, *uid, *uid),
        Op::NewSession => rustix::process::setsid().map(drop),
        Op::Umask { mode } => {
            rustix::process::umask(Mode::from_raw_mode(*mode));
            Ok(())
        }
        Op::CloseOnExecFrom3 => {
            // SAFETY: `close_range` with `CLOSE_RANGE_CLOEXEC` only sets a flag on this process's
            // descriptors; the exec-status pipe of `std` and the report pipe are close-on-exec already.
            unsafe {
                libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
            }
            Ok(())
        }
        Op::DieWithParent => rustix::process::set_parent_process_death_signal(Some(Signal::KILL)),
    }
}

/// `ifconfig lo up` with an `ioctl` on a throw-away socket (no allocation).
fn loopback_up() -> Result<(), Errno> {
    let last_errno = || Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::INVAL);
    // SAFETY: `socket` takes integers; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: `ifreq` is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: `SIOCSIFFLAGS` reads the `ifreq` it is given, which lives for the call.
    let res = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req as *const libc::ifreq) };
    let err = (res != 0).then(last_errno);
    // SAFETY: `fd` was opened above and is not used after this.
    unsafe { libc::close(fd) };
    match err {
        Some(errno) => Err(errno),
        None => Ok(()),
    }
}

/// Checks in a throw-away child whether this process can create the sandbox's namespaces.
///
/// With `user_namespace`, the child also creates a user namespace and maps itself to root in it.
/// Returns the errno of the first failing step.
pub(crate) fn probe(user_namespace: Option<&UserNamespace>) -> Result<(), Errno> {
    let (reader, writer) =
        std::io::pipe().map_err(|err| Errno::from_io_error(&err).unwrap_or(Errno::IO))?;
    let writer_fd = std::os::fd::AsRawFd::as_raw_fd(&writer);
    let mut flags = sandbox_namespaces();
    if user_namespace.is_some() {
        flags |= UnshareFlags::NEWUSER;
    }
    // SAFETY: the child only makes raw system calls on data prepared before the fork and leaves with
    // `_exit`, so the state it inherits from other threads (locks, allocator) is never touched.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::AGAIN));
    }
    if pid == 0 {
        // SAFETY: unsafe only for `CLONE_FILES`, which is not among the flags.
        let mut res = unsafe { rustix::thread::unshare_unsafe(flags) };
        if let (Ok(()), Some(userns)) = (res, user_namespace) {
            res = write_file(c"/proc/self/setgroups", b"deny")
                .and_then(|()| write_file(c"/proc/self/uid_map", &userns.uid_map))
                .and_then(|()| write_file(c"/proc/self/gid_map", &userns.gid_map));
        }
        if let Err(errno) = res {
            // SAFETY: `writer_fd` is the pipe's write end, open in this child; borrowed for one call.
            let fd = unsafe { BorrowedFd::borrow_raw(writer_fd) };
            let _ = rustix::io::write(fd, &errno.raw_os_error().to_le_bytes());
        }
        exit_now(0);
    }
    drop(writer);
    let child = Pid::from_raw(pid);
    loop {
        match rustix::process::waitpid(child, WaitOptions::empty()) {
            Ok(Some(_)) => break,
            Ok(None) | Err(Errno::INTR) => {}
            Err(errno) => return Err(errno),
        }
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &reader, &mut bytes)
        .map_err(|err| Errno::from_io_error(&err).unwrap_or(Errno::IO))?;
    match <[u8; 4]>::try_from(bytes.as_slice()) {
        Ok(raw) => Err(Errno::from_raw_os_error(i32::from_le_bytes(raw))),
        Err(_) => Ok(()),
    }
}
