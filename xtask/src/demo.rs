//! `cargo xtask demo`: the README's main job, a real multi-stage build cold and then warm from
//! a local cache directory on an empty root, with both times.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;

use crate::{cargo, services};

/// Builds `examples/multistage` twice: cold with `--cache-to type=local`, then on an empty root
/// with `--cache-from type=local`, and prints both wall times.
pub(crate) fn run(root: &Path) -> anyhow::Result<()> {
    services::ensure_tools()?;
    let status = Command::new(cargo())
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "cache-cli",
            "--bin",
            "buildcache",
        ])
        .status()
        .context("running cargo build")?;
    anyhow::ensure!(status.success(), "building buildcache failed");
    let bin = root.join("target/release/buildcache");
    let work = root.join("target/demo");
    let _ = std::fs::remove_dir_all(&work);
    let context = work.join("context");
    copy_dir(&root.join("examples/multistage"), &context)?;
    let busybox = services::find_binary("busybox").ok_or_else(|| {
        anyhow::format_err!("busybox is not installed: apt-get install busybox-static")
    })?;
    std::fs::copy(&busybox, context.join("busybox"))
        .with_context(|| format!("copying {}", busybox.display()))?;
    let cache = work.join("cache");
    let cold = timed_build(
        &bin,
        &[
            "--root".as_ref(),
            work.join("root-cold").as_os_str(),
            "--cache-to".as_ref(),
            format!("type=local,dest={},mode=max", cache.display()).as_ref(),
            "--metadata-file".as_ref(),
            work.join("cold.json").as_os_str(),
            context.as_os_str(),
        ],
    )?;
    let warm = timed_build(
        &bin,
        &[
            "--root".as_ref(),
            work.join("root-warm").as_os_str(),
            "--cache-from".as_ref(),
            format!("type=local,src={}", cache.display()).as_ref(),
            "--metadata-file".as_ref(),
            work.join("warm.json").as_os_str(),
            context.as_os_str(),
        ],
    )?;
    let steps = |file: &str| -> anyhow::Result<(usize, usize, String)> {
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(work.join(file))?)?;
        let steps = meta["buildcache.steps"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let cached = steps.iter().filter(|s| s["cached"] == true).count();
        Ok((
            cached,
            steps.len(),
            meta["containerimage.digest"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        ))
    };
    let (cold_cached, cold_total, cold_digest) = steps("cold.json")?;
    let (warm_cached, warm_total, warm_digest) = steps("warm.json")?;
    println!();
    println!(
        "cold build (empty root, --cache-to type=local):   {cold:.2}s, {cold_cached}/{cold_total} steps cached"
    );
    println!(
        "warm build (empty root, --cache-from type=local): {warm:.2}s, {warm_cached}/{warm_total} steps cached"
    );
    println!(
        "speed-up: {:.1}x; same image: {}",
        cold / warm.max(0.001),
        cold_digest == warm_digest
    );
    println!("image {warm_digest}; cache in {}", cache.display());
    anyhow::ensure!(
        cold_digest == warm_digest,
        "the warm build produced a different image"
    );
    Ok(())
}

fn timed_build(bin: &Path, args: &[&std::ffi::OsStr]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = Command::new(bin)
        .arg("build")
        .arg("--progress=plain")
        .args(args)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    anyhow::ensure!(status.success(), "buildcache build failed");
    Ok(started.elapsed().as_secs_f64())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target: PathBuf = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
