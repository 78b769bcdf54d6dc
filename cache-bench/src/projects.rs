//! The real projects the scenarios build, made offline: the README's multi-stage example, a C
//! program compiled with gcc on a base made from Debian packages, many small files, one large layer.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

/// Sizes of the generated projects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sizes {
    /// Files in the COPY of the many-files project, and files its RUN writes.
    pub small_files: usize,
    /// Bytes of the large layer.
    pub large_layer_bytes: u64,
    /// C source files of the compiled project.
    pub c_modules: usize,
}

impl Sizes {
    /// The full benchmark: 20,000 files, 1 GiB, 40 modules (about 4,000 lines).
    pub const FULL: Sizes = Sizes {
        small_files: 20_000,
        large_layer_bytes: 1 << 30,
        c_modules: 40,
    };
    /// `--quick`: 2,000 files, 64 MiB, 10 modules.
    pub const QUICK: Sizes = Sizes {
        small_files: 2_000,
        large_layer_bytes: 64 << 20,
        c_modules: 10,
    };
}

/// A project ready to build: its context and how each builder is pointed at its base.
#[derive(Debug, Clone)]
pub struct Project {
    /// Short id: `multistage`, `compiled`, `small-files`, `large-layer`.
    pub id: &'static str,
    /// One line for the report.
    pub title: String,
    /// The build context (the Dockerfile is `context/Dockerfile`).
    pub context: PathBuf,
    /// Extra `buildcache build` arguments (the base image as a named context).
    pub ours_args: Vec<String>,
    /// Extra `buildah build` arguments (the same base image).
    pub peer_args: Vec<String>,
    /// Extra `buildctl build` arguments (the same base image as an OCI-layout named context).
    pub buildkit_args: Vec<String>,
    /// The file the one-change scenario edits, relative to the context.
    pub edit_file: PathBuf,
    /// Whether its RUN steps use cache mounts: the suite then also measures the one-change
    /// build importing a `cache-mounts=true` export.
    pub cache_mounts: bool,
}

impl Project {
    /// Appends a line to [`Project::edit_file`], so the one-change build sees a new version.
    pub fn edit(&self, generation: usize) -> anyhow::Result<()> {
        let path = self.context.join(&self.edit_file);
        let mut text = fs::read_to_string(&path)
            .with_context(|| format!("reading {} to edit it", path.display()))?;
        let comment = if path.extension().is_some_and(|e| e == "c") {
            format!("/* edit {generation} */\n")
        } else {
            format!("edit {generation}\n")
        };
        text.push_str(&comment);
        fs::write(&path, text).with_context(|| format!("editing {}", path.display()))
    }
}

/// The static busybox the Dockerfiles copy in (Debian's `busybox-static`).
pub fn find_busybox() -> anyhow::Result<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::format_err!("busybox is missing: apt-get install -y busybox-static"))
}

fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let output = cmd
        .output()
        .with_context(|| format!("could not run {cmd:?}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{cmd:?} failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// (a) The README's multi-stage example with busybox copied in.
pub fn multistage(examples: &Path, work: &Path) -> anyhow::Result<Project> {
    let context = work.join("multistage");
    fresh_dir(&context)?;
    copy_tree(&examples.join("multistage"), &context)?;
    fs::copy(find_busybox()?, context.join("busybox")).context("copying busybox")?;
    Ok(Project {
        id: "multistage",
        title: "the README's multi-stage example (examples/multistage)".into(),
        context,
        ours_args: Vec::new(),
        peer_args: Vec::new(),
        buildkit_args: Vec::new(),
        edit_file: "src/greeting.txt".into(),
        cache_mounts: false,
    })
}

/// The C source of module `index`: a few arithmetic functions, about 100 lines, deterministic.
pub fn c_module(index: usize) -> String {
    let mut src = format!("/* module {index}: generated by cache-bench */\n#include \"app.h\"\n\n");
    for f in 0..8 {
        let _ = write!(
            src,
            "static unsigned long m{index}_f{f}(unsigned long x) {{\n\
             \x20   unsigned long acc = {seed}UL;\n\
             \x20   for (int i = 0; i < {rounds}; i++) {{\n\
             \x20       acc = acc * 6364136223846793005UL + x + (unsigned long)i;\n\
             \x20       acc ^= acc >> {shift};\n\
             \x20       if (acc % {modulus} == 0) acc += {f};\n\
             \x20   }}\n\
             \x20   return acc;\n\
             }}\n\n",
            seed = 1_000_003 * (index + 1) + f,
            rounds = 16 + (index * 7 + f) % 32,
            shift = 13 + f % 17,
            modulus = 3 + (index + f) % 11,
        );
    }
    let _ = writeln!(src, "unsigned long module_{index}(unsigned long x) {{");
    src.push_str("    unsigned long acc = x;\n");
    for f in 0..8 {
        let _ = writeln!(src, "    acc = m{index}_f{f}(acc);");
    }
    src.push_str("    return acc;\n}\n");
    src
}

/// The C program: `modules` modules, a header and a main that calls them all.
pub fn c_sources(modules: usize) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut header = String::from("#ifndef APP_H\n#define APP_H\n");
    for i in 0..modules {
        let _ = writeln!(header, "unsigned long module_{i}(unsigned long x);");
    }
    header.push_str("#endif\n");
    files.push(("app.h".to_owned(), header));
    let mut main = String::from(
        "#include <stdio.h>\n#include \"app.h\"\n\nint main(void) {\n    unsigned long acc = 1;\n",
    );
    for i in 0..modules {
        let _ = writeln!(main, "    acc = module_{i}(acc);");
    }
    main.push_str("    printf(\"%lu\\n\", acc);\n    return 0;\n}\n");
    files.push(("main.c".to_owned(), main));
    for i in 0..modules {
        files.push((format!("mod{i:03}.c"), c_module(i)));
    }
    files
}

const COMPILED_DOCKERFILE: &str = r#"# A C program compiled with gcc 12; the base is made offline from Debian's .deb files.
FROM base AS runtime
ENV PATH=/usr/local/bin:/usr/bin:/bin

FROM runtime AS build
COPY src/ /src/
RUN mkdir -p /obj /out \
 && for f in /src/*.c; do gcc -O2 -Wall -c "$f" -o "/obj/$(basename "$f" .c).o" || exit 1; done \
 && gcc -O2 -o /out/app /obj/*.o \
 && /out/app > /out/result.txt

FROM runtime
COPY --from=build /out/ /app/
RUN /app/app > /app/check.txt && cmp /app/check.txt /app/result.txt
CMD ["/app/app"]
"#;

/// The Debian packages of the compiled project's base: gcc, libc6-dev and what they depend on.
pub const BASE_PACKAGES: &[&str] = &["gcc", "libc6-dev"];

/// The ccache project's base: the compiled project's packages plus ccache.
pub const CCACHE_PACKAGES: &[&str] = &["gcc", "libc6-dev", "ccache"];

/// Downloads (once) the `.deb` closure of `packages` into `debs`, with `apt-get download`.
pub fn download_base_debs(debs: &Path, packages: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let marker = debs.join(".complete");
    if !marker.exists() {
        fresh_dir(debs)?;
        let output = Command::new("apt-cache")
            .args([
                "depends",
                "--recurse",
                "--no-recommends",
                "--no-suggests",
                "--no-conflicts",
                "--no-breaks",
                "--no-replaces",
                "--no-enhances",
            ])
            .args(packages)
            .output()
            .context("running apt-cache depends (Debian's apt is needed to make the base)")?;
        anyhow::ensure!(
            output.status.success(),
            "apt-cache depends failed: {}; run `apt-get update` first",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut packages: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.starts_with(' ') && !l.starts_with('<') && !l.is_empty())
            .map(str::to_owned)
            .collect();
        packages.sort();
        packages.dedup();
        run(Command::new("apt-get")
            .arg("download")
            .args(&packages)
            .current_dir(debs))
        .context("downloading the base's .deb files (apt-get update may be needed)")?;
        fs::write(&marker, packages.join("\n"))?;
    }
    let mut files: Vec<PathBuf> = fs::read_dir(debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    files.sort();
    Ok(files)
}

/// Makes (once) the OCI layout `layout` (tag `base`) of the compiled project's base: the
/// `.deb` files unpacked with `dpkg-deb -x`, plus busybox for `/bin/sh`, packed with `umoci`.
pub fn compiled_base(cache: &Path) -> anyhow::Result<PathBuf> {
    debian_base(cache, "debs", "gcc-base", BASE_PACKAGES)
}

/// Makes (once) the OCI layout `<name>-oci` in `cache` of a base made of the `.deb` closure of
/// `packages` (downloaded into `debs_dir`), plus busybox for `/bin/sh`.
fn debian_base(
    cache: &Path,
    debs_dir: &str,
    name: &str,
    packages: &[&str],
) -> anyhow::Result<PathBuf> {
    let layout = cache.join(format!("{name}-oci"));
    if layout.join("index.json").is_file() && layout.join(".complete").exists() {
        return Ok(layout);
    }
    let debs = download_base_debs(&cache.join(debs_dir), packages)?;
    let bundle = cache.join(format!("{name}-bundle"));
    if bundle.exists() {
        fs::remove_dir_all(&bundle)?;
    }
    if layout.exists() {
        fs::remove_dir_all(&layout)?;
    }
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&layout))?;
    let image = format!("{}:base", layout.display());
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    let rootfs = bundle.join("rootfs");
    for deb in &debs {
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&rootfs))?;
    }
    let bin = rootfs.join("bin");
    fs::create_dir_all(&bin)?;
    fs::copy(find_busybox()?, bin.join("busybox"))?;
    for applet in ["sh", "mkdir", "basename", "cmp", "cat", "ls", "rm", "echo"] {
        let link = bin.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)?;
        }
    }
    fs::create_dir_all(rootfs.join("tmp"))?;
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle))?;
    fs::remove_dir_all(&bundle)?;
    fs::write(layout.join(".complete"), "")?;
    Ok(layout)
}

/// The manifest digest tagged `tag` in the OCI layout `layout` (BuildKit names layout contexts
/// by digest).
pub fn layout_manifest(layout: &Path, tag: &str) -> anyhow::Result<String> {
    let path = layout.join("index.json");
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let index = cache_core::layout::OciIndex::from_json(&bytes)
        .with_context(|| format!("parsing {}", path.display()))?;
    let entry = index
        .find_image(tag, None)
        .with_context(|| format!("{} has no image tagged {tag}", path.display()))?;
    let digest = entry
        .descriptor()
        .map_err(|what| anyhow::format_err!("{} has an entry with {what}", path.display()))?
        .digest;
    Ok(digest.to_string())
}

/// (b) The compiled project: `sizes.c_modules` C files built with gcc on the Debian base.
pub fn compiled(work: &Path, cache: &Path, sizes: Sizes) -> anyhow::Result<Project> {
    let layout = compiled_base(cache)?;
    c_project(
        work,
        cache,
        sizes,
        &layout,
        "compiled",
        "debs",
        COMPILED_DOCKERFILE,
    )
}

/// (e) The C program of [`compiled`] built through `ccache` whose cache directory is a
/// `RUN --mount=type=cache`: with a `cache-mounts=true` cache, a fresh machine recompiles only
/// the edited file.
pub fn ccache(work: &Path, cache: &Path, sizes: Sizes) -> anyhow::Result<Project> {
    let layout = debian_base(cache, "debs-ccache", "ccache-base", CCACHE_PACKAGES)?;
    let mut project = c_project(
        work,
        cache,
        sizes,
        &layout,
        "ccache",
        "debs-ccache",
        CCACHE_DOCKERFILE,
    )?;
    project.title = format!("{} through ccache in a cache mount", project.title);
    project.cache_mounts = true;
    Ok(project)
}

const CCACHE_DOCKERFILE: &str = r#"# The compiled C program, each file compiled through ccache; its cache is a cache mount.
FROM base
ENV PATH=/usr/local/bin:/usr/bin:/bin CCACHE_DIR=/ccache CCACHE_COMPILERCHECK=content
COPY src/ /src/
RUN --mount=type=cache,id=ccache,target=/ccache mkdir -p /obj /out \
 && for f in /src/*.c; do ccache gcc -O2 -Wall -c "$f" -o "/obj/$(basename "$f" .c).o" || exit 1; done \
 && gcc -O2 -o /out/app /obj/*.o \
 && /out/app > /out/result.txt
"#;

/// A project of `sizes.c_modules` C files on the base `layout`, built by `dockerfile`.
fn c_project(
    work: &Path,
    cache: &Path,
    sizes: Sizes,
    layout: &Path,
    id: &'static str,
    debs_dir: &str,
    dockerfile: &str,
) -> anyhow::Result<Project> {
    let context = work.join(id);
    fresh_dir(&context)?;
    let src = context.join("src");
    fs::create_dir_all(&src)?;
    let mut lines = 0;
    for (name, text) in c_sources(sizes.c_modules) {
        lines += text.lines().count();
        fs::write(src.join(name), text)?;
    }
    fs::write(context.join("Dockerfile"), dockerfile)?;
    Ok(Project {
        id,
        title: format!(
            "a C program of {} files and {lines} lines compiled with gcc 12 -O2 on a base of {} Debian packages",
            sizes.c_modules + 2,
            fs::read_to_string(cache.join(debs_dir).join(".complete"))
                .map(|t| t.lines().count())
                .unwrap_or(0)
        ),
        context,
        ours_args: vec![
            "--build-context".into(),
            format!("base=oci-layout://{}:base", layout.display()),
        ],
        peer_args: vec!["--from".into(), format!("oci:{}:base", layout.display())],
        buildkit_args: vec![
            "--oci-layout".into(),
            format!("base={}", layout.display()),
            "--opt".into(),
            format!(
                "context:base=oci-layout://base@{}",
                layout_manifest(layout, "base")?
            ),
        ],
        edit_file: "src/mod000.c".into(),
        cache_mounts: false,
    })
}

/// (c) Many small files: a COPY of `sizes.small_files` files and a RUN that writes as many.
pub fn small_files(work: &Path, sizes: Sizes) -> anyhow::Result<Project> {
    let context = work.join("small-files");
    fresh_dir(&context)?;
    fs::copy(find_busybox()?, context.join("busybox"))?;
    let per_dir = 200;
    for i in 0..sizes.small_files {
        let dir = context.join(format!("files/d{:03}", i / per_dir));
        if i % per_dir == 0 {
            fs::create_dir_all(&dir)?;
        }
        fs::write(dir.join(format!("f{i:05}.txt")), format!("file {i}\n"))?;
    }
    let n = sizes.small_files;
    let dockerfile = format!(
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         COPY files/ /data/files/\n\
         RUN i=0; while [ $i -lt {n} ]; do d=/data/gen/d$((i / {per_dir})); \
         [ -d $d ] || mkdir -p $d; echo \"generated $i\" > $d/f$i.txt; i=$((i + 1)); done\n"
    );
    fs::write(context.join("Dockerfile"), dockerfile)?;
    Ok(Project {
        id: "small-files",
        title: format!("{n} small files in a COPY and a RUN that writes {n} more"),
        context,
        ours_args: Vec::new(),
        peer_args: Vec::new(),
        buildkit_args: Vec::new(),
        edit_file: "files/d000/f00000.txt".into(),
        cache_mounts: false,
    })
}

/// (d) One large layer of incompressible bytes, then a small file copied on top.
pub fn large_layer(work: &Path, sizes: Sizes) -> anyhow::Result<Project> {
    let context = work.join("large-layer");
    fresh_dir(&context)?;
    fs::copy(find_busybox()?, context.join("busybox"))?;
    fs::write(context.join("app.txt"), "version 1\n")?;
    let bytes = sizes.large_layer_bytes;
    let dockerfile = format!(
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN mkdir -p /data && head -c {bytes} /dev/urandom > /data/large.bin\n\
         COPY app.txt /app.txt\n"
    );
    fs::write(context.join("Dockerfile"), dockerfile)?;
    Ok(Project {
        id: "large-layer",
        title: format!(
            "one large layer ({} MiB of random bytes) under a small COPY",
            bytes >> 20
        ),
        context,
        ours_args: Vec::new(),
        peer_args: Vec::new(),
        buildkit_args: Vec::new(),
        edit_file: "app.txt".into(),
        cache_mounts: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_sources_are_deterministic_and_sized() {
        let a = c_sources(40);
        assert_eq!(a, c_sources(40));
        assert_eq!(a.len(), 42);
        let lines: usize = a.iter().map(|(_, t)| t.lines().count()).sum();
        assert!((3000..6000).contains(&lines), "{lines} lines");
        assert!(a[1].1.contains("module_39(acc)"));
    }

    #[test]
    fn small_files_context_has_every_file_and_edit_changes_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sizes = Sizes {
            small_files: 450,
            ..Sizes::QUICK
        };
        let project = small_files(dir.path(), sizes).expect("project");
        let count = walk_count(&project.context.join("files"));
        assert_eq!(count, 450);
        let edited = project.context.join(&project.edit_file);
        let before = fs::read_to_string(&edited).expect("read");
        project.edit(1).expect("edit");
        assert_eq!(
            fs::read_to_string(&edited).expect("read"),
            before + "edit 1\n"
        );
    }

    fn walk_count(dir: &Path) -> usize {
        fs::read_dir(dir)
            .expect("dir")
            .map(|e| {
                let e = e.expect("entry");
                if e.file_type().expect("type").is_dir() {
                    walk_count(&e.path())
                } else {
                    1
                }
            })
            .sum()
    }
}
