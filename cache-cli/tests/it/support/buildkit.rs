//! The real BuildKit under test (`cargo xtask test` starts it): `buildctl` builds on an offline busybox base.
//!
//! `CACHE_TEST_BUILDKIT` is the daemon's address and `CACHE_TEST_BUILDKIT_BIN` the directory of
//! `buildctl` and `dockerfile2llb`; without them the tests skip (outside CI).
//! Every user holds [`Buildkit`]'s process-wide lock, so a `prune --all` never races another
//! test's build in this process.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};

use super::{Progress, is_ci, s};

/// The image name the corpus Dockerfiles use in `FROM` and `COPY --from` for the busybox base.
pub const BASE_NAME: &str = "busybox";

/// `PATH` of the base image's config (Docker's default, as [`super::write_layout_image`] writes).
pub const BASE_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The BuildKit daemon under test, held exclusively by one test at a time.
pub struct Buildkit {
    /// `unix:///…/buildkitd.sock`.
    pub addr: String,
    /// The directory of `buildctl` and `dockerfile2llb`.
    pub bin_dir: PathBuf,
    _guard: MutexGuard<'static, ()>,
}

impl std::fmt::Debug for Buildkit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buildkit")
            .field("addr", &self.addr)
            .field("bin_dir", &self.bin_dir)
            .finish()
    }
}

/// The BuildKit under test, or `None` (skip) outside CI when `CACHE_TEST_BUILDKIT` is unset.
///
/// Waits for any other test of this process that holds it.
pub fn buildkit_under_test() -> Option<Buildkit> {
    let vars = (
        std::env::var("CACHE_TEST_BUILDKIT"),
        std::env::var_os("CACHE_TEST_BUILDKIT_BIN"),
    );
    let (Ok(addr), Some(bin_dir)) = vars else {
        if is_ci() {
            panic!("CACHE_TEST_BUILDKIT and CACHE_TEST_BUILDKIT_BIN must be set on CI");
        }
        eprintln!(
            "skipping: CACHE_TEST_BUILDKIT is not set (`cargo xtask test` sets it where \
             ../shared/tools/buildkit exists; `cargo xtask buildkit up` prints it)"
        );
        return None;
    };
    static LOCK: Mutex<()> = Mutex::new(());
    // A test that panicked while holding it left nothing half-done in the daemon that matters.
    let guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    Some(Buildkit {
        addr,
        bin_dir: PathBuf::from(bin_dir),
        _guard: guard,
    })
}

/// One `buildctl build` of a Dockerfile on the busybox base.
#[derive(Clone, Debug, Default)]
pub struct BuildkitBuild {
    /// `--opt build-arg:NAME=VALUE`.
    pub build_args: Vec<(String, String)>,
    /// `--opt target=…`.
    pub target: Option<String>,
    /// `--export-cache` values, e.g. `type=local,dest=DIR,mode=max`.
    pub cache_to: Vec<String>,
    /// `--import-cache` values, e.g. `type=registry,ref=127.0.0.1:PORT/app:cache`.
    pub cache_from: Vec<String>,
    /// `--output` value, e.g. `type=oci,dest=FILE`.
    pub output: Option<String>,
}

/// What a finished `buildctl build` printed.
#[derive(Debug)]
pub struct BuildkitOutcome {
    /// Exit status, stdout and stderr (plain progress).
    pub output: Output,
}

impl BuildkitOutcome {
    /// Its stderr: the plain progress.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Its parsed plain progress.
    pub fn progress(&self) -> Progress {
        Progress::parse(&self.stderr())
    }

    /// Panics with the progress unless it succeeded; returns `self` for chaining.
    pub fn assert_success(self) -> BuildkitOutcome {
        assert!(
            self.output.status.success(),
            "buildctl build failed ({}):\n{}",
            self.output.status,
            self.stderr()
        );
        self
    }

    /// The Dockerfile steps (`[stage n/m] …`) that printed `CACHED`.
    pub fn cached_steps(&self) -> Vec<String> {
        numbered(self.progress().cached_steps())
    }

    /// The Dockerfile steps that ran (ended `DONE`).
    pub fn executed_steps(&self) -> Vec<String> {
        numbered(self.progress().executed_steps())
    }

    /// Every Dockerfile step shown.
    pub fn all_steps(&self) -> Vec<String> {
        numbered(self.progress().all_steps())
    }

    /// The lines after `importing cache manifest` that report an error, if any.
    pub fn import_errors(&self) -> Vec<String> {
        self.stderr()
            .lines()
            .filter(|line| line.contains("ERROR") && line.contains("importing cache"))
            .map(str::to_owned)
            .collect()
    }
}

/// The names of numbered Dockerfile steps (`[2/4] RUN …`, `[build 1/3] COPY …`), without
/// BuildKit's internal vertices (`[internal] …`, `[context busybox] …`).
pub fn numbered(names: Vec<&str>) -> Vec<String> {
    names
        .into_iter()
        .filter(|name| is_numbered_step(name))
        .map(str::to_owned)
        .collect()
}

fn is_numbered_step(name: &str) -> bool {
    let Some(label) = name
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .map(|(label, _)| label)
    else {
        return false;
    };
    let counter = label.rsplit(' ').next().unwrap_or(label);
    counter
        .split_once('/')
        .is_some_and(|(n, m)| n.parse::<u32>().is_ok() && m.parse::<u32>().is_ok())
}

impl Buildkit {
    /// `buildctl --addr ADDR`, ready for a subcommand.
    pub fn buildctl(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("buildctl"));
        cmd.arg("--addr").arg(&self.addr);
        cmd
    }

    /// `dockerfile2llb`.
    pub fn dockerfile2llb(&self) -> Command {
        Command::new(self.bin_dir.join("dockerfile2llb"))
    }

    /// Builds `context/Dockerfile` with the busybox base as the named context [`BASE_NAME`].
    pub fn build(
        &self,
        context: &Path,
        base: &BaseImage,
        build: &BuildkitBuild,
    ) -> BuildkitOutcome {
        self.build_with_dockerfile(context, context, base, build)
    }

    /// Builds a corpus entry prepared at `context` (its Dockerfile beside it) with its options.
    pub fn build_entry(
        &self,
        entry: &super::corpus::Entry,
        context: &Path,
        base: &BaseImage,
        build: &BuildkitBuild,
    ) -> BuildkitOutcome {
        let mut build = build.clone();
        build.build_args.extend(entry.build_args.iter().cloned());
        build.target = build.target.or_else(|| entry.target.clone());
        let dockerfile_dir = context.parent().expect("a prepared entry has a parent");
        self.build_with_dockerfile(context, dockerfile_dir, base, &build)
    }

    /// Builds `dockerfile_dir/Dockerfile` on `context`.
    pub fn build_with_dockerfile(
        &self,
        context: &Path,
        dockerfile_dir: &Path,
        base: &BaseImage,
        build: &BuildkitBuild,
    ) -> BuildkitOutcome {
        let mut cmd = self.buildctl();
        cmd.args(["build", "--progress=plain", "--frontend", "dockerfile.v0"])
            .arg(format!("--local=context={}", s(context)))
            .arg(format!("--local=dockerfile={}", s(dockerfile_dir)))
            .arg(format!("--oci-layout={BASE_NAME}={}", s(&base.layout)))
            .arg("--opt")
            .arg(format!(
                "context:{BASE_NAME}=oci-layout://{BASE_NAME}@{}",
                base.manifest_digest
            ));
        for (name, value) in &build.build_args {
            cmd.arg("--opt").arg(format!("build-arg:{name}={value}"));
        }
        if let Some(target) = &build.target {
            cmd.arg("--opt").arg(format!("target={target}"));
        }
        for spec in &build.cache_to {
            cmd.arg("--export-cache").arg(spec);
        }
        for spec in &build.cache_from {
            cmd.arg("--import-cache").arg(spec);
        }
        if let Some(output) = &build.output {
            cmd.arg("--output").arg(output);
        }
        let output = cmd.output().expect("running buildctl build");
        BuildkitOutcome { output }
    }

    /// `buildctl prune --all`: the daemon then holds no cache, as a machine that never built.
    pub fn prune_all(&self) {
        let output = self
            .buildctl()
            .args(["prune", "--all"])
            .output()
            .expect("running buildctl prune");
        assert!(
            output.status.success(),
            "buildctl prune --all failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// An offline base image in an OCI layout: the `latest` tag of `layout`.
#[derive(Clone, Debug)]
pub struct BaseImage {
    /// The layout directory.
    pub layout: PathBuf,
    /// Its manifest's digest (`sha256:…`).
    pub manifest_digest: String,
}

impl BaseImage {
    /// `--build-context busybox=oci-layout://LAYOUT:latest`, buildcache's form of the same base.
    pub fn buildcache_args(&self) -> [String; 2] {
        [
            "--build-context".to_owned(),
            format!("{BASE_NAME}=oci-layout://{}:latest", s(&self.layout)),
        ]
    }
}

/// The busybox base (made once per busybox binary, under cargo's test tmpdir), or `None` (skip)
/// without busybox.
///
/// One uncompressed layer, deterministic: `bin/busybox` with a symlink per applet, `etc/passwd` and
/// `etc/group` (root, `app` 1000:1000, nobody), `tmp` (1777), empty `dev`, `proc`, `sys` and
/// `root`; the config sets only [`BASE_PATH_ENV`].
pub fn busybox_base() -> Option<BaseImage> {
    let busybox = super::busybox_path()?;
    static BASE: OnceLock<BaseImage> = OnceLock::new();
    Some(BASE.get_or_init(|| make_busybox_base(&busybox)).clone())
}

fn make_busybox_base(busybox: &Path) -> BaseImage {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(busybox).expect("busybox is readable");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "busybox-base-v2-{}-{}",
        meta.len(),
        meta.mtime()
    ));
    let index = dir.join("index.json");
    if !index.is_file() {
        let partial = dir.with_extension(format!("partial-{}", std::process::id()));
        let _ = fs::remove_dir_all(&partial);
        super::write_layout_image(&partial, "latest", &[base_layer_tar(busybox)]);
        // Another test process may have made it first: both are identical.
        if fs::rename(&partial, &dir).is_err() {
            let _ = fs::remove_dir_all(&partial);
        }
    }
    let index = super::read_json(&index);
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("the base layout names its manifest")
        .to_owned();
    BaseImage {
        layout: dir,
        manifest_digest,
    }
}

/// The applets `busybox --list` names.
fn applets(busybox: &Path) -> Vec<String> {
    let output = Command::new(busybox)
        .arg("--list")
        .output()
        .expect("running busybox --list");
    assert!(output.status.success(), "busybox --list failed");
    let mut applets: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|name| !name.is_empty() && name != "busybox" && !name.contains('/'))
        .collect();
    applets.sort();
    applets.dedup();
    applets
}

/// The base layer as an uncompressed tar with fixed owners and times.
fn base_layer_tar(busybox: &Path) -> Vec<u8> {
    let binary = fs::read(busybox).expect("reading busybox");
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        if let Some(link) = link {
            header.set_link_name(link).expect("a short link target");
        }
        builder
            .append_data(&mut header, path, data)
            .expect("appending to a tar in memory");
    };
    // `dev`, `proc` and `sys` are in every real base: BuildKit's RUN adds them where missing.
    for dir in ["bin/", "dev/", "etc/", "proc/", "root/", "sys/"] {
        add(dir, tar::EntryType::Directory, 0o755, b"", None);
    }
    add("tmp/", tar::EntryType::Directory, 0o1777, b"", None);
    add("bin/busybox", tar::EntryType::Regular, 0o755, &binary, None);
    for applet in applets(busybox) {
        add(
            &format!("bin/{applet}"),
            tar::EntryType::Symlink,
            0o777,
            b"",
            Some("busybox"),
        );
    }
    add(
        "etc/passwd",
        tar::EntryType::Regular,
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        None,
    );
    add(
        "etc/group",
        tar::EntryType::Regular,
        0o644,
        b"root:x:0:\napp:x:1000:\nnogroup:x:65534:\n",
        None,
    );
    builder.into_inner().expect("finishing a tar in memory")
}
