//! The sandbox's setup steps, computed in the parent: mounts, masks, credentials, in the order runc uses.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::StatVfsMountFlags;
use rustix::mount::MountFlags;
use rustix::process::{Gid, Uid};

use super::child::Op;
use super::rootfs::{Created, Ensured, Kind, Root};
use super::{
    DEFAULT_HOSTNAME, Error, Mode, Mount, MountKind, RunSpec, c_path, c_string, io_error, user,
};

/// Device nodes bound from the host into the sandbox's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Capabilities a Docker or BuildKit container keeps by default (the others are dropped).
const DEFAULT_CAPS: [u32; 14] = [
    0,  // CAP_CHOWN
    1,  // CAP_DAC_OVERRIDE
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    5,  // CAP_KILL
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    8,  // CAP_SETPCAP
    10, // CAP_NET_BIND_SERVICE
    13, // CAP_NET_RAW
    18, // CAP_SYS_CHROOT
    27, // CAP_MKNOD
    29, // CAP_AUDIT_WRITE
    31, // CAP_SETFCAP
];

/// Paths hidden from the command, as in containerd's default spec (BuildKit uses it).
const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths the command may read but not write, as in containerd's default spec.
const READ_ONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The umask runc gives container processes: the modes of files a `RUN` creates must not depend on
/// the builder's own umask, or layers would differ between machines.
pub(crate) const UMASK: u32 = 0o022;

pub(crate) const HINT_PRIVILEGE: &str = "; the builder needs root (or CAP_SYS_ADMIN), or an unprivileged user namespace: see `capability()`";
const HINT_PROC: &str = "; inside a user namespace, /proc can only be mounted where the host's /proc is fully visible (not in most containers): run as root";

/// The sandbox's first-process steps, each with a description and a fix hint for error messages.
#[derive(Debug, Default)]
pub(crate) struct Steps {
    pub(crate) ops: Vec<Op>,
    pub(crate) what: Vec<(String, &'static str)>,
}

impl Steps {
    fn push(&mut self, op: Op, what: impl Into<String>, hint: &'static str) {
        self.ops.push(op);
        self.what.push((what.into(), hint));
    }
}

/// The flags a read-only remount of a bind mount of `source` needs: the source mount's own flags
/// (a user namespace may not clear them) plus read-only.
fn read_only_remount_flags(source: &Path) -> MountFlags {
    hardened_remount_flags(source) | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC
}

/// The flags a read-only remount of a `RUN --mount` bind of `source` needs: the source mount's
/// own flags plus read-only. Executables stay executable (a `#!` heredoc is run from one).
fn user_remount_flags(source: &Path) -> MountFlags {
    hardened_remount_flags(source)
}

fn hardened_remount_flags(source: &Path) -> MountFlags {
    let mut flags = MountFlags::BIND | MountFlags::RDONLY;
    if let Ok(stat) = rustix::fs::statvfs(source) {
        let pairs = [
            (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
            (StatVfsMountFlags::NODEV, MountFlags::NODEV),
            (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
            (StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
            (StatVfsMountFlags::NODIRATIME, MountFlags::NODIRATIME),
            (StatVfsMountFlags::RELATIME, MountFlags::RELATIME),
        ];
        for (has, set) in pairs {
            if stat.f_flag.contains(has) {
                flags |= set;
            }
        }
    }
    flags
}

fn path_of(c_path: &CString) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(c_path.as_bytes()))
}

/// Prepares the mount points (recording what it creates in `created`), the generated `/etc` files
/// and the steps. The returned directory holds the generated files and must outlive the run.
pub(crate) fn plan(
    spec: &RunSpec,
    mounts: &[Mount],
    mode: Mode,
    root: &Root,
    exec_user: &user::ExecUser,
    created: &mut Vec<Created>,
) -> Result<(Steps, tempfile::TempDir), Error> {
    let MountPoints {
        proc,
        sys,
        dev,
        hosts,
        resolv,
        mut extra,
        under_dev,
    } = mount_points(mounts, root, created)?;
    let hostname = if spec.hostname.is_empty() {
        DEFAULT_HOSTNAME
    } else {
        spec.hostname.as_str()
    };
    let etc = write_etc_files(spec, hostname)?;

    let rootfs = c_path(root.path())?;
    let is_root_mode = matches!(mode, Mode::Root);
    let mut steps = Steps::default();
    namespace_steps(&mut steps, spec, hostname, &rootfs);
    if let Some(target) = &proc {
        steps.push(
            Op::Mount {
                fstype: c"proc".to_owned(),
                target: target.clone(),
                flags: MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
                data: c"".to_owned(),
            },
            "mounting /proc",
            if is_root_mode {
                HINT_PRIVILEGE
            } else {
                HINT_PROC
            },
        );
    }
    if let Some(target) = &sys {
        sys_steps(&mut steps, target, is_root_mode)?;
    }
    if let Some(dev) = &dev {
        dev_steps(&mut steps, dev, is_root_mode)?;
        under_dev_steps(&mut steps, dev, under_dev, &mut extra)?;
    }
    if !spec.insecure {
        mask_steps(&mut steps, proc.as_ref(), sys.as_ref())?;
    }
    for (target, source, shown) in [
        (hosts, &etc.hosts, "/etc/hosts"),
        (resolv, &etc.resolv, "/etc/resolv.conf"),
    ] {
        if let Some(target) = target {
            etc_file_steps(&mut steps, target, source, shown)?;
        }
    }
    for (mount, target) in extra {
        extra_mount_steps(&mut steps, mount, target)?;
    }
    steps.push(
        Op::PivotRoot { root: rootfs },
        "switching to the root filesystem (pivot_root)",
        HINT_PRIVILEGE,
    );
    steps.push(
        Op::Chdir {
            path: c_string(spec.cwd.as_bytes(), "working directory")?,
        },
        format!("changing to the working directory {}", spec.cwd),
        "",
    );
    steps.push(Op::Umask { mode: UMASK }, "setting the umask", "");
    credential_steps(&mut steps, exec_user, is_root_mode, spec.insecure);
    Ok((steps, etc.dir))
}

/// The mount points made (or found) in the root; `None` where a dangling symbolic link is in the
/// way.
struct MountPoints<'m> {
    proc: Option<CString>,
    sys: Option<CString>,
    dev: Option<CString>,
    hosts: Option<CString>,
    resolv: Option<CString>,
    /// `RUN --mount`s with their mount point in the root.
    extra: Vec<(&'m Mount, CString)>,
    /// `RUN --mount`s under `/dev`, with their path below it and the kind of their mount point:
    /// made in the sandbox's `/dev` tmpfs once it is mounted.
    under_dev: Vec<(&'m Mount, String, Kind)>,
}

/// Makes the mount points of the sandbox's filesystems and of `mounts` in the root, refusing a
/// mount target that is not absolute.
fn mount_points<'m>(
    mounts: &'m [Mount],
    root: &Root,
    created: &mut Vec<Created>,
) -> Result<MountPoints<'m>, Error> {
    let mut ensure = |rel: &str, kind: Kind| ensure_mount_point(root, created, rel, kind);
    let proc = ensure("/proc", Kind::Dir)?;
    let sys = ensure("/sys", Kind::Dir)?;
    let dev = ensure("/dev", Kind::Dir)?;
    let hosts = ensure("/etc/hosts", Kind::File)?;
    let resolv = ensure("/etc/resolv.conf", Kind::File)?;
    let mut extra = Vec::with_capacity(mounts.len());
    let mut under_dev = Vec::new();
    for mount in mounts {
        if !mount.target.starts_with('/') {
            return Err(Error::InvalidSpec {
                reason: format!("mount target {:?} is not absolute", mount.target),
            });
        }
        let kind = match &mount.kind {
            MountKind::Bind { source } if !source.is_dir() => Kind::File,
            _ => Kind::Dir,
        };
        // Targets under /dev live in the sandbox's /dev tmpfs, made after it is mounted
        // (BuildKit's `RUN <<EOF` with a `#!` body runs /dev/pipes/EOF).
        if let (Some(rest), Some(_)) = (mount.target.strip_prefix("/dev/"), &dev) {
            under_dev.push((mount, rest.to_owned(), kind));
            continue;
        }
        if let Some(target) = ensure(&mount.target, kind)? {
            extra.push((mount, target));
        }
    }
    Ok(MountPoints {
        proc,
        sys,
        dev,
        hosts,
        resolv,
        extra,
        under_dev,
    })
}

/// Makes `rel` in the root as a `kind`, giving its path, or `None` (with a warning) where a
/// dangling symbolic link is in the way.
fn ensure_mount_point(
    root: &Root,
    created: &mut Vec<Created>,
    rel: &str,
    kind: Kind,
) -> Result<Option<CString>, Error> {
    let ensured = root
        .ensure(rel, kind, created)
        .map_err(|source| Error::Rootfs {
            path: root.path().join(rel.trim_start_matches('/')),
            source,
        })?;
    match ensured {
        Ensured::At(path) => Ok(Some(c_path(&path)?)),
        Ensured::DanglingSymlink => {
            tracing::warn!(path = rel, rootfs = %root.path().display(), "not mounting over a dangling symbolic link");
            Ok(None)
        }
    }
}

/// The generated `/etc/hosts` and `/etc/resolv.conf`, in a directory that must outlive the run.
struct EtcFiles {
    dir: tempfile::TempDir,
    hosts: PathBuf,
    resolv: PathBuf,
}

fn write_etc_files(spec: &RunSpec, hostname: &str) -> Result<EtcFiles, Error> {
    let dir = tempfile::Builder::new()
        .prefix("buildcache-run-")
        // An unprivileged sandbox must reach the files through the host's permissions.
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .tempdir()
        .map_err(io_error("creating a temporary directory for /etc/hosts"))?;
    let hosts = dir.path().join("hosts");
    let mut hosts_text =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (host, ip) in &spec.extra_hosts {
        hosts_text.push_str(&format!("{ip}\t{host}\n"));
    }
    std::fs::write(&hosts, hosts_text).map_err(io_error(format!("writing {}", hosts.display())))?;
    // With the host's network, the host's resolver configuration applies as it is.
    let resolv = dir.path().join("resolv.conf");
    let resolv_text = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    std::fs::write(&resolv, resolv_text)
        .map_err(io_error(format!("writing {}", resolv.display())))?;
    Ok(EtcFiles { dir, hosts, resolv })
}

/// The new namespaces' own setup: loopback (without network), hostname, private mounts, and
/// the root filesystem bound onto itself (for `pivot_root`).
fn namespace_steps(steps: &mut Steps, spec: &RunSpec, hostname: &str, rootfs: &CString) {
    if spec.network == super::Network::None {
        steps.push(
            Op::LoopbackUp,
            "bringing up the loopback interface of the new network namespace",
            HINT_PRIVILEGE,
        );
    }
    steps.push(
        Op::SetHostname {
            name: hostname.as_bytes().to_vec(),
        },
        format!("setting the hostname to {hostname}"),
        HINT_PRIVILEGE,
    );
    steps.push(
        Op::MakePrivate {
            target: c"/".to_owned(),
        },
        "making the mounts of the new mount namespace private",
        HINT_PRIVILEGE,
    );
    steps.push(
        Op::BindRecursive {
            source: rootfs.clone(),
            target: rootfs.clone(),
        },
        "bind-mounting the root filesystem onto itself",
        HINT_PRIVILEGE,
    );
}

/// Makes the mount points of the `RUN --mount`s under `/dev` in the sandbox's `/dev` (`dev`),
/// adding them to `extra`.
fn under_dev_steps<'m>(
    steps: &mut Steps,
    dev: &CString,
    under_dev: Vec<(&'m Mount, String, Kind)>,
    extra: &mut Vec<(&'m Mount, CString)>,
) -> Result<(), Error> {
    let dev_path = path_of(dev);
    for (mount, rest, kind) in under_dev {
        let rel = Path::new(&rest);
        let mut cur = dev_path.clone();
        if let Some(parent) = rel.parent() {
            for component in parent.components() {
                cur.push(component);
                steps.push(
                    Op::Mkdir {
                        path: c_path(&cur)?,
                        mode: 0o755,
                    },
                    format!("creating {} in /dev", cur.display()),
                    "",
                );
            }
        }
        let target = c_path(&dev_path.join(rel))?;
        let op = match kind {
            Kind::File => Op::CreateFile {
                path: target.clone(),
            },
            Kind::Dir => Op::Mkdir {
                path: target.clone(),
                mode: 0o755,
            },
        };
        steps.push(op, format!("creating the mount point {}", mount.target), "");
        extra.push((mount, target));
    }
    Ok(())
}

/// Binds a generated `/etc` file (`source`) read-only over its mount point `target`.
fn etc_file_steps(
    steps: &mut Steps,
    target: CString,
    source: &Path,
    shown: &str,
) -> Result<(), Error> {
    steps.push(
        Op::Bind {
            source: c_path(source)?,
            target: target.clone(),
        },
        format!("bind-mounting {shown}"),
        HINT_PRIVILEGE,
    );
    steps.push(
        Op::Remount {
            target,
            flags: read_only_remount_flags(source),
        },
        format!("making {shown} read-only"),
        HINT_PRIVILEGE,
    );
    Ok(())
}

/// A `RUN --mount`: a recursive bind or a tmpfs, then read-only if asked.
fn extra_mount_steps(steps: &mut Steps, mount: &Mount, target: CString) -> Result<(), Error> {
    let shown = &mount.target;
    match &mount.kind {
        MountKind::Bind { source } => {
            if !source.exists() {
                return Err(Error::InvalidSpec {
                    reason: format!("mount source {} does not exist", source.display()),
                });
            }
            steps.push(
                Op::BindRecursive {
                    source: c_path(source)?,
                    target: target.clone(),
                },
                format!("bind-mounting {} on {shown}", source.display()),
                HINT_PRIVILEGE,
            );
            if mount.readonly {
                steps.push(
                    Op::Remount {
                        target,
                        flags: user_remount_flags(source),
                    },
                    format!("making {shown} read-only"),
                    HINT_PRIVILEGE,
                );
            }
        }
        MountKind::Tmpfs { size } => {
            let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
            if mount.readonly {
                flags |= MountFlags::RDONLY;
            }
            let data = match size {
                Some(bytes) => format!("mode=1777,size={bytes}"),
                None => "mode=1777".to_owned(),
            };
            steps.push(
                Op::Mount {
                    fstype: c"tmpfs".to_owned(),
                    target,
                    flags,
                    data: c_string(data.as_bytes(), "tmpfs options")?,
                },
                format!("mounting a tmpfs on {shown}"),
                HINT_PRIVILEGE,
            );
        }
    }
    Ok(())
}

/// `/sys`: a read-only sysfs as root. A user namespace may not mount sysfs for the host's network
/// namespace, so there the host's `/sys` is bound instead (its top mount read-only).
fn sys_steps(steps: &mut Steps, target: &CString, is_root_mode: bool) -> Result<(), Error> {
    let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    if is_root_mode {
        steps.push(
            Op::Mount {
                fstype: c"sysfs".to_owned(),
                target: target.clone(),
                flags: flags | MountFlags::RDONLY,
                data: c"".to_owned(),
            },
            "mounting /sys",
            HINT_PRIVILEGE,
        );
    } else {
        steps.push(
            Op::BindRecursive {
                source: c"/sys".to_owned(),
                target: target.clone(),
            },
            "bind-mounting the host's /sys",
            HINT_PRIVILEGE,
        );
        steps.push(
            Op::Remount {
                target: target.clone(),
                flags: read_only_remount_flags(Path::new("/sys")),
            },
            "making /sys read-only",
            HINT_PRIVILEGE,
        );
    }
    Ok(())
}

/// The minimal `/dev`: a tmpfs with the host's basic devices bound in, a private devpts, shm, mqueue
/// and the usual links.
fn dev_steps(steps: &mut Steps, dev: &CString, is_root_mode: bool) -> Result<(), Error> {
    let dev_path = path_of(dev);
    let in_dev = |name: &str| c_path(&dev_path.join(name));
    steps.push(
        Op::Mount {
            fstype: c"tmpfs".to_owned(),
            target: dev.clone(),
            flags: MountFlags::NOSUID | MountFlags::STRICTATIME,
            data: c"mode=755,size=65536k".to_owned(),
        },
        "mounting a tmpfs on /dev",
        HINT_PRIVILEGE,
    );
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            tracing::debug!(device = %host.display(), "host device missing; not in the sandbox's /dev");
            continue;
        }
        steps.push(
            Op::CreateFile {
                path: in_dev(name)?,
            },
            format!("creating /dev/{name}"),
            "",
        );
        steps.push(
            Op::Bind {
                source: c_path(&host)?,
                target: in_dev(name)?,
            },
            format!("bind-mounting the host's /dev/{name}"),
            HINT_PRIVILEGE,
        );
    }
    // Only uid 0 and gid 0 exist in an unprivileged user namespace, so `gid=5` (tty) would be refused.
    let pts_options = if is_root_mode {
        c"newinstance,ptmxmode=0666,mode=0620,gid=5"
    } else {
        c"newinstance,ptmxmode=0666,mode=0620"
    };
    let special: [(&str, u32, &std::ffi::CStr, MountFlags, &std::ffi::CStr); 3] = [
        (
            "pts",
            0o755,
            c"devpts",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            pts_options,
        ),
        (
            "shm",
            0o1777,
            c"tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            c"mode=1777,size=65536k",
        ),
        (
            "mqueue",
            0o755,
            c"mqueue",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            c"",
        ),
    ];
    for (name, mode, fstype, flags, data) in special {
        steps.push(
            Op::Mkdir {
                path: in_dev(name)?,
                mode,
            },
            format!("creating /dev/{name}"),
            "",
        );
        steps.push(
            Op::Mount {
                fstype: fstype.to_owned(),
                target: in_dev(name)?,
                flags,
                data: data.to_owned(),
            },
            format!("mounting {} on /dev/{name}", fstype.to_string_lossy()),
            HINT_PRIVILEGE,
        );
    }
    let links = [
        ("pts/ptmx", "ptmx"),
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("/proc/kcore", "core"),
    ];
    for (target, name) in links {
        steps.push(
            Op::Symlink {
                target: c_string(target.as_bytes(), "link target")?,
                link: in_dev(name)?,
            },
            format!("creating the symbolic link /dev/{name}"),
            "",
        );
    }
    Ok(())
}

/// Hides and write-protects kernel interfaces under `/proc` and `/sys` like containerd's default spec.
///
/// Which paths exist is read from the host's `/proc` and `/sys` (same kernel).
fn mask_steps(
    steps: &mut Steps,
    proc_dir: Option<&CString>,
    sys_dir: Option<&CString>,
) -> Result<(), Error> {
    let inside = |path: &str| -> Option<PathBuf> {
        let (base, rest) = if let Some(rest) = path.strip_prefix("/proc/") {
            (proc_dir?, rest)
        } else {
            (sys_dir?, path.strip_prefix("/sys/")?)
        };
        Some(path_of(base).join(rest))
    };
    for path in MASKED_PATHS {
        let Some(target) = inside(path) else { continue };
        let Ok(host) = std::fs::symlink_metadata(path) else {
            continue;
        };
        if host.is_dir() {
            steps.push(
                Op::Mount {
                    fstype: c"tmpfs".to_owned(),
                    target: c_path(&target)?,
                    flags: MountFlags::RDONLY,
                    data: c"".to_owned(),
                },
                format!("masking {path}"),
                HINT_PRIVILEGE,
            );
        } else {
            steps.push(
                Op::Bind {
                    source: c"/dev/null".to_owned(),
                    target: c_path(&target)?,
                },
                format!("masking {path}"),
                HINT_PRIVILEGE,
            );
        }
    }
    for path in READ_ONLY_PATHS {
        let Some(target) = inside(path) else { continue };
        if std::fs::symlink_metadata(path).is_err() {
            continue;
        }
        let target = c_path(&target)?;
        steps.push(
            Op::BindRecursive {
                source: target.clone(),
                target: target.clone(),
            },
            format!("bind-mounting {path} onto itself"),
            HINT_PRIVILEGE,
        );
        steps.push(
            Op::Remount {
                target,
                flags: MountFlags::BIND
                    | MountFlags::RDONLY
                    | MountFlags::NOSUID
                    | MountFlags::NODEV
                    | MountFlags::NOEXEC,
            },
            format!("making {path} read-only"),
            HINT_PRIVILEGE,
        );
    }
    Ok(())
}

/// Capabilities, groups, ids, session and parent-death signal, in this order: dropping the bounding
/// set needs root's capabilities, and any credential change clears the parent-death signal.
fn credential_steps(
    steps: &mut Steps,
    exec_user: &user::ExecUser,
    is_root_mode: bool,
    insecure: bool,
) {
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .unwrap_or(63);
    // `--security=insecure` keeps every capability, as BuildKit's insecure mode does.
    if !insecure {
        steps.push(
            Op::DropBoundingCaps {
                caps: (0..=last_cap)
                    .filter(|cap| !DEFAULT_CAPS.contains(cap))
                    .collect(),
            },
            "dropping capabilities beyond Docker's default set",
            HINT_PRIVILEGE,
        );
    }
    // An unprivileged user namespace refuses `setgroups` (it was denied to make the gid map legal).
    if is_root_mode {
        // BuildKit's `ensureAdditionalGids`: the primary group is a supplementary group too.
        let mut sgids = exec_user.sgids.clone();
        if !sgids.contains(&exec_user.gid) {
            sgids.insert(0, exec_user.gid);
        }
        steps.push(
            Op::SetGroups {
                groups: sgids.iter().map(|gid| Gid::from_raw(*gid)).collect(),
            },
            format!("setting the supplementary groups {sgids:?}"),
            "",
        );
    }
    steps.push(
        Op::SetGid {
            gid: Gid::from_raw(exec_user.gid),
        },
        format!("switching to gid {}", exec_user.gid),
        "",
    );
    steps.push(
        Op::SetUid {
            uid: Uid::from_raw(exec_user.uid),
        },
        format!("switching to uid {}", exec_user.uid),
        "",
    );
    steps.push(Op::NewSession, "starting a new session", "");
    steps.push(Op::DieWithParent, "arming the parent-death signal", "");
    steps.push(
        Op::CloseOnExecFrom3,
        "marking inherited descriptors close-on-exec",
        "",
    );
}
