//! Overlay mounts: several stages built on one unpacked base without copying it.
//!
//! Two stages `FROM` one image used to get the base unpacked once and copied once (hundreds of
//! megabytes written twice). Where this process may mount (root), the base is unpacked once into
//! a read-only lower directory and every stage gets an overlay on top of it, as BuildKit's
//! overlayfs snapshotter does: the stage's writes land in its own upper directory, the lower one
//! never changes. Where mounting is not allowed (no privilege, a kernel without overlayfs, a
//! path overlayfs cannot name), [`supported`] says no and the caller copies the tree instead.
//!
//! Mounts made here are undone by [`unmount_under`] before their directories are removed; a
//! process that calls [`private_mounts`] first also loses them when it dies, however it dies.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

/// Mounts an overlay at `target` with `lower` read-only below and `upper` (with its scratch
/// directory `work`, both empty and on the same filesystem) receiving every change.
pub fn mount(lower: &Path, upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        option_path(lower)?,
        option_path(upper)?,
        option_path(work)?
    );
    let options = CString::new(options).map_err(|_| unnameable(lower))?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
        Some(options.as_c_str()),
    )?;
    Ok(())
}

/// A path as overlayfs options can hold it: absolute, without the option separators.
fn option_path(path: &Path) -> io::Result<String> {
    let path = std::path::absolute(path)?;
    match path.to_str() {
        Some(text) if !text.contains([',', ':', '\\', '=']) => Ok(text.to_owned()),
        _ => Err(unnameable(&path)),
    }
}

fn unnameable(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} cannot be named in overlay mount options (',', ':', '\\' and '=' are separators)",
            path.display()
        ),
    )
}

/// Whether overlays can be mounted in `scratch` (a directory this process owns): mounts one on
/// empty directories and takes it down again.
pub fn supported(scratch: &Path) -> bool {
    let probe = scratch.join("overlay-probe");
    let dirs = ["lower", "upper", "work", "merged"].map(|name| probe.join(name));
    let made = dirs.iter().try_for_each(std::fs::create_dir_all);
    let mounted = made.is_ok() && mount(&dirs[0], &dirs[1], &dirs[2], &dirs[3]).is_ok();
    if mounted {
        let _ = rustix::mount::unmount(&dirs[3], UnmountFlags::DETACH);
    }
    let _ = std::fs::remove_dir_all(&probe);
    tracing::debug!(mounted, "probing overlay mounts in {}", scratch.display());
    mounted
}

/// Unmounts every mount at or below `dir` (deepest first, detached so that an open file
/// cannot hold it), so that removing `dir` afterwards removes only its own files.
pub fn unmount_under(dir: &Path) -> io::Result<()> {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return Ok(());
    };
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut points: Vec<PathBuf> = mount_points(&table)
        .filter(|point| point.starts_with(&dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    for point in points {
        match rustix::mount::unmount(&point, UnmountFlags::DETACH) {
            Ok(()) => {}
            // Already gone (a parent's detach took it along).
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// The mount points of a `/proc/self/mountinfo` table (its fifth field, octal escapes undone).
fn mount_points(table: &str) -> impl Iterator<Item = PathBuf> + '_ {
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
}

/// Undoes the kernel's `\ooo` escapes of space, tab, newline and backslash in mountinfo.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match octal {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    use std::os::unix::ffi::OsStringExt;
    std::ffi::OsString::from_vec(out)
        .into_string()
        .unwrap_or_else(|raw| raw.to_string_lossy().into_owned())
}

/// Gives this process its own mount namespace, receiving the host's mounts but never sending
/// its own back: overlays mounted for a build then vanish with the process, even on `kill -9`.
/// Must run before any thread is started (unshare moves only the calling thread's view, and
/// threads started later inherit it). Fails without privilege; callers go on without it.
pub fn private_mounts() -> io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_points_are_unescaped() {
        let table = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                     37 35 98:0 / /plain rw - ext4 /dev/vda rw\n";
        let points: Vec<PathBuf> = mount_points(table).collect();
        assert_eq!(
            points,
            [PathBuf::from("/mnt/with space"), PathBuf::from("/plain")]
        );
        assert_eq!(unescape("a\\134b\\011c"), "a\\b\tc");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn paths_overlayfs_cannot_name_are_refused() {
        assert!(option_path(Path::new("/tmp/a,b")).is_err());
        assert!(option_path(Path::new("/tmp/a:b")).is_err());
        assert_eq!(option_path(Path::new("/tmp/ab")).unwrap(), "/tmp/ab");
    }

    /// Where this process may mount: the lower directory never changes, the upper one gets the
    /// writes, and unmount_under leaves only plain directories behind.
    #[test]
    fn an_overlay_keeps_its_lower_directory_untouched() {
        let scratch = tempfile::tempdir().unwrap();
        if !supported(scratch.path()) {
            eprintln!("skipped: this process cannot mount overlays (needs root and overlayfs)");
            return;
        }
        let [lower, upper, work, merged] =
            ["lower", "upper", "work", "merged"].map(|name| scratch.path().join(name));
        for dir in [&lower, &upper, &work, &merged] {
            std::fs::create_dir(dir).unwrap();
        }
        std::fs::write(lower.join("base.txt"), "base").unwrap();
        mount(&lower, &upper, &work, &merged).unwrap();
        std::fs::write(merged.join("base.txt"), "changed").unwrap();
        std::fs::write(merged.join("new.txt"), "new").unwrap();
        assert_eq!(
            std::fs::read_to_string(lower.join("base.txt")).unwrap(),
            "base"
        );
        assert!(!lower.join("new.txt").exists());
        assert_eq!(
            std::fs::read_to_string(upper.join("new.txt")).unwrap(),
            "new"
        );
        unmount_under(scratch.path()).unwrap();
        assert!(!merged.join("base.txt").exists(), "still mounted");
        std::fs::remove_dir_all(scratch.path()).unwrap();
    }
}
