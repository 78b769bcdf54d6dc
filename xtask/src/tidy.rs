//! `cargo xtask tidy`: repository-wide checks of docs, forbidden constructs, manifests and layering.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

mod fn_length;

/// One broken rule, located in a file (and a line where that makes sense).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Violation {
    path: PathBuf,
    line: Option<usize>,
    rule: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path.display(), self.rule),
            None => write!(f, "{}: {}", self.path.display(), self.rule),
        }
    }
}

/// A workspace member as `cargo metadata --no-deps` describes it.
#[derive(Debug)]
pub(crate) struct Package {
    pub(crate) name: String,
    pub(crate) manifest_path: PathBuf,
    /// `(dependency package name, kind)`; kind is `normal`, `dev` or `build`.
    pub(crate) deps: Vec<(String, String)>,
    /// `(target name, kinds)`, e.g. `("cache-bench", ["bin"])`.
    pub(crate) targets: Vec<(String, Vec<String>)>,
}

/// `cargo xtask tidy`: prints every violation and fails if there is any.
pub(crate) fn run(root: &Path) -> anyhow::Result<()> {
    let violations = check(root)?;
    if violations.is_empty() {
        eprintln!("tidy: ok");
        return Ok(());
    }
    for violation in &violations {
        eprintln!("tidy: {violation}");
    }
    anyhow::bail!("tidy found {} problem(s), listed above", violations.len())
}

/// Crates whose library code need not keep functions short: the CLI (glue) and the tooling.
const LONG_FNS_ALLOWED: [&str; 2] = ["cache-cli", "xtask"];

/// Runs every check over the repository at `root`.
pub(crate) fn check(root: &Path) -> anyhow::Result<Vec<Violation>> {
    let packages = workspace_packages(root)?;
    let mut violations = Vec::new();
    let relative = |path: &Path| path.strip_prefix(root).unwrap_or(path).to_path_buf();

    let ws_names: BTreeSet<&str> = packages.iter().map(|p| p.name.as_str()).collect();
    for package in &packages {
        let crate_dir = package.manifest_path.parent().unwrap_or(root);
        for sub in ["src", "tests", "benches", "examples"] {
            for file in rust_files(&crate_dir.join(sub))? {
                let text = read(&file)?;
                if !starts_with_module_doc(&text) {
                    violations.push(Violation {
                        path: relative(&file),
                        line: Some(1),
                        rule: "file must start with a `//!` one-line doc comment".to_owned(),
                    });
                }
            }
        }
        let lib = crate_dir.join("src/lib.rs");
        if lib.exists() && !has_runnable_crate_example(&read(&lib)?) {
            violations.push(Violation {
                path: relative(&lib),
                line: Some(1),
                rule: "a library crate's `//!` docs need an example that runs as a doctest \
                       (a fence not marked no_run, ignore or text)"
                    .to_owned(),
            });
        }
        if PURE_CRATES.contains(&package.name.as_str()) {
            for file in rust_files(&crate_dir.join("src"))? {
                for (line, rule) in io_constructs(&package.name, &read(&file)?) {
                    violations.push(Violation {
                        path: relative(&file),
                        line: Some(line),
                        rule,
                    });
                }
            }
        }
        if !LONG_FNS_ALLOWED.contains(&package.name.as_str()) {
            for file in rust_files(&crate_dir.join("src"))? {
                for (line, rule) in fn_length::problems(&read(&file)?) {
                    violations.push(Violation {
                        path: relative(&file),
                        line: Some(line),
                        rule,
                    });
                }
            }
        }
        let manifest = read(&package.manifest_path)?;
        for (line, rule) in check_manifest(&manifest, &ws_names) {
            violations.push(Violation {
                path: relative(&package.manifest_path),
                line,
                rule,
            });
        }
        for rule in check_layering(package, &ws_names) {
            violations.push(Violation {
                path: relative(&package.manifest_path),
                line: None,
                rule,
            });
        }
    }

    for file in rust_files(root)? {
        let text = read(&file)?;
        for (line, rule) in forbidden_constructs(&text) {
            violations.push(Violation {
                path: relative(&file),
                line: Some(line),
                rule,
            });
        }
    }
    Ok(violations)
}

/// Reads the workspace members with `cargo metadata --format-version 1 --no-deps`.
pub(crate) fn workspace_packages(root: &Path) -> anyhow::Result<Vec<Package>> {
    let output = Command::new(crate::cargo())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root)
        .output()
        .context("running `cargo metadata`")?;
    anyhow::ensure!(
        output.status.success(),
        "`cargo metadata` failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    parse_metadata(&output.stdout)
}

fn parse_metadata(json: &[u8]) -> anyhow::Result<Vec<Package>> {
    let metadata: serde_json::Value =
        serde_json::from_slice(json).context("`cargo metadata` printed invalid JSON")?;
    let str_of = |value: &serde_json::Value, what: &str| {
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::format_err!("`cargo metadata` output lacks {what}"))
    };
    let empty = Vec::new();
    let mut packages = Vec::new();
    for package in metadata["packages"].as_array().unwrap_or(&empty) {
        let deps = package["dependencies"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|dep| {
                let kind = dep["kind"].as_str().unwrap_or("normal").to_owned();
                Ok((str_of(&dep["name"], "a dependency name")?, kind))
            })
            .collect::<anyhow::Result<_>>()?;
        let targets = package["targets"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|target| {
                let kinds = target["kind"]
                    .as_array()
                    .unwrap_or(&empty)
                    .iter()
                    .filter_map(|kind| kind.as_str().map(str::to_owned))
                    .collect();
                Ok((str_of(&target["name"], "a target name")?, kinds))
            })
            .collect::<anyhow::Result<_>>()?;
        packages.push(Package {
            name: str_of(&package["name"], "a package name")?,
            manifest_path: PathBuf::from(str_of(&package["manifest_path"], "a manifest path")?),
            deps,
            targets,
        });
    }
    Ok(packages)
}

fn read(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Every `.rs` file under `dir`, skipping hidden directories and `target`.
fn rust_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if !dir.is_dir() {
        return Ok(files);
    }
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    pending.push(path);
                }
            } else if file_type.is_file() && name.ends_with(".rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Whether the crate docs (`//!` lines) open a code fence that rustdoc runs.
fn has_runnable_crate_example(text: &str) -> bool {
    let mut inside = false;
    for line in text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("//!"))
    {
        let Some(info) = line.trim().strip_prefix("```") else {
            continue;
        };
        if !inside {
            let skipped = [
                "no_run",
                "ignore",
                "text",
                "compile_fail",
                "sh",
                "toml",
                "json",
            ];
            if !info.split(',').any(|word| skipped.contains(&word.trim())) {
                return true;
            }
        }
        inside = !inside;
    }
    false
}

fn starts_with_module_doc(text: &str) -> bool {
    text.trim_start_matches('\u{feff}').starts_with("//!")
}

/// Crates that do no I/O (ARCHITECTURE.md): the cache model, the Dockerfile front end and
/// BuildKit's op model. Their library code may not name the filesystem, network, environment,
/// processes, the clock or an async runtime.
const PURE_CRATES: [&str; 3] = ["cache-core", "cache-dockerfile", "cache-llb"];

/// Lines of a pure crate's library code (before its `#[cfg(test)]` module) that do I/O.
fn io_constructs(crate_name: &str, text: &str) -> Vec<(usize, String)> {
    const NEEDLES: [&str; 10] = [
        "std::fs",
        "TcpStream",
        "TcpListener",
        "UdpSocket",
        "std::env",
        "std::process",
        "SystemTime::now",
        "Instant::now",
        "tokio::",
        "std::io::stdin",
    ];
    let mut found = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or_default();
        for needle in NEEDLES {
            if code.contains(needle) {
                found.push((
                    idx + 1,
                    format!("`{needle}` in {crate_name}, which does no I/O: pass data in from the caller"),
                ));
            }
        }
    }
    found
}

/// Lines holding constructs the project bans, as `(line number, rule)`.
fn forbidden_constructs(text: &str) -> Vec<(usize, String)> {
    // Assembled at compile time so this file does not trip over its own needles.
    const NEEDLES: [(&str, &str); 4] = [
        (
            concat!("#[", "ignore"),
            "tests are never ignored: fix, gate on an env var, or delete",
        ),
        (
            concat!("#[", "should_panic"),
            "assert the error instead of expecting a panic",
        ),
        (concat!("dbg", "!("), "no debug macros in committed code"),
        (
            concat!("todo", "!("),
            "no unfinished code: return an error or write a FIXME(#issue)",
        ),
    ];
    let mut found = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        for (needle, why) in NEEDLES {
            if line.contains(needle) {
                found.push((idx + 1, format!("`{needle}` is not allowed: {why}")));
            }
        }
    }
    found
}

/// Removes a `#` comment (outside of a string) and surrounding whitespace.
fn strip_toml_comment(line: &str) -> &str {
    let mut in_string = false;
    for (idx, c) in line.char_indices() {
        match c {
            '"' => in_string = !in_string,
            '#' if !in_string => return line[..idx].trim(),
            _ => {}
        }
    }
    line.trim()
}

/// Whether a TOML value or table body says `workspace = true`, whatever the spacing.
fn says_workspace_true(text: &str) -> bool {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    compact.contains("workspace=true")
}

fn is_dependency_table(section: &str) -> bool {
    let last = section.rsplit('.').next().unwrap_or(section);
    matches!(
        last,
        "dependencies" | "dev-dependencies" | "build-dependencies"
    )
}

/// Whether `name` is (or would be) one of this workspace's crates.
fn is_internal(name: &str, ws_names: &BTreeSet<&str>) -> bool {
    ws_names.contains(name) || name.starts_with("cache-") || name == "xtask"
}

/// Checks a crate's `Cargo.toml` text: workspace lints, internal deps through the workspace.
fn check_manifest(text: &str, ws_names: &BTreeSet<&str>) -> Vec<(Option<usize>, String)> {
    let mut problems = Vec::new();
    let mut section = String::new();
    let mut has_workspace_lints = false;
    // A `[dependencies.cache-x]` table: (dependency, header line, saw `workspace = true`).
    let mut dep_table: Option<(String, usize, bool)> = None;
    fn close_dep_table(
        table: Option<(String, usize, bool)>,
        problems: &mut Vec<(Option<usize>, String)>,
    ) {
        if let Some((name, line, false)) = table {
            problems.push((Some(line), internal_dep_rule(&name)));
        }
    }

    for (idx, raw) in text.lines().enumerate() {
        let line = strip_toml_comment(raw);
        if line.is_empty() {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            close_dep_table(dep_table.take(), &mut problems);
            section = header
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
            if let Some((table, dep)) = section.rsplit_once('.')
                && is_dependency_table(table)
            {
                let dep = dep.trim_matches('"').to_owned();
                if is_internal(&dep, ws_names) {
                    dep_table = Some((dep, idx + 1, false));
                }
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        if let Some(table) = dep_table.as_mut() {
            if key == "workspace" && value == "true" {
                table.2 = true;
            }
            continue;
        }
        match section.as_str() {
            "lints" if key == "workspace" && value == "true" => has_workspace_lints = true,
            "" if (key == "lints.workspace" && value == "true")
                || (key == "lints" && says_workspace_true(value)) =>
            {
                has_workspace_lints = true;
            }
            table if is_dependency_table(table) => {
                let (name, via_workspace) = match key.split_once('.') {
                    Some((name, "workspace")) => (name, value == "true"),
                    _ => (key, says_workspace_true(value)),
                };
                let name = name.trim_matches('"');
                if is_internal(name, ws_names) && !via_workspace {
                    problems.push((Some(idx + 1), internal_dep_rule(name)));
                }
            }
            _ => {}
        }
    }
    close_dep_table(dep_table.take(), &mut problems);
    if !has_workspace_lints {
        problems.push((None, "missing `[lints]` with `workspace = true`".to_owned()));
    }
    problems
}

fn internal_dep_rule(name: &str) -> String {
    format!("internal dependency `{name}` must be taken with `workspace = true`")
}

/// Which workspace crates a crate may depend on; `None` means any (apart from the never-deps).
fn allowed_workspace_deps(name: &str) -> Option<&'static [&'static str]> {
    match name {
        "cache-core" | "cache-dockerfile" | "xtask" => Some(&[]),
        "cache-local" | "cache-registry" => Some(&["cache-core"]),
        "cache-llb" => Some(&["cache-core"]),
        "cache-build" => Some(&["cache-core", "cache-dockerfile", "cache-llb"]),
        _ => None,
    }
}

/// The layering of STYLE.md §2, checked on one package's dependencies.
fn check_layering(package: &Package, ws_names: &BTreeSet<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    for (dep, kind) in &package.deps {
        // A crate may dev-depend on itself to turn on features (e.g. a testkit) in its own tests.
        if *dep == package.name {
            continue;
        }
        let kind_note = if kind == "normal" {
            String::new()
        } else {
            format!(" ({kind})")
        };
        if matches!(dep.as_str(), "cache-cli" | "cache-bench" | "xtask") {
            problems.push(format!(
                "layering: depends on `{dep}`{kind_note}, but nothing may depend on cache-cli, cache-bench or xtask"
            ));
            continue;
        }
        if matches!(package.name.as_str(), "cache-core" | "cache-llb")
            && kind != "dev"
            && matches!(dep.as_str(), "tokio" | "reqwest")
        {
            problems.push(format!(
                "layering: {} depends on `{dep}`{kind_note}; it must stay runtime- and I/O-free",
                package.name
            ));
        }
        if !ws_names.contains(dep.as_str()) {
            continue;
        }
        if let Some(allowed) = allowed_workspace_deps(&package.name)
            && !allowed.contains(&dep.as_str())
        {
            let allowed = if allowed.is_empty() {
                "no workspace crate".to_owned()
            } else {
                allowed.join(", ")
            };
            problems.push(format!(
                "layering: `{}` depends on `{dep}`{kind_note}, but may depend on {allowed} (STYLE.md §2)",
                package.name
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crate_example_must_run() {
        assert!(has_runnable_crate_example(
            "//! A crate.\n//! ```\n//! assert!(true);\n//! ```\n"
        ));
        assert!(has_runnable_crate_example("//! ```rust\n//! ```\n"));
        assert!(!has_runnable_crate_example(
            "//! ```no_run\n//! x\n//! ```\n"
        ));
        assert!(!has_runnable_crate_example(
            "//! ```text\n//! ```\n/// ```\nfn f() {}\n"
        ));
        assert!(!has_runnable_crate_example("//! No example.\n"));
    }

    #[test]
    fn pure_crates_may_not_do_io_outside_tests() {
        let text = "//! doc\nuse std::fs;\n// std::env in a comment is fine\nfn f() { let _ = std::time::Instant::now(); }\n#[cfg(test)]\nmod tests { use std::fs; }\n";
        let found = io_constructs("cache-core", text);
        let lines: Vec<usize> = found.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, [2, 4], "{found:?}");
        assert!(found[0].1.contains("cache-core"));
    }

    fn names() -> BTreeSet<&'static str> {
        [
            "cache-core",
            "cache-local",
            "cache-registry",
            "cache-dockerfile",
            "cache-llb",
            "cache-build",
            "cache-cli",
            "cache-bench",
            "xtask",
        ]
        .into_iter()
        .collect()
    }

    fn package(name: &str, deps: &[(&str, &str)]) -> Package {
        Package {
            name: name.to_owned(),
            manifest_path: PathBuf::from(format!("{name}/Cargo.toml")),
            deps: deps
                .iter()
                .map(|(d, k)| ((*d).to_owned(), (*k).to_owned()))
                .collect(),
            targets: Vec::new(),
        }
    }

    /// The whole repository is tidy: this makes plain `cargo test` enforce `cargo xtask tidy`.
    #[test]
    fn repository_is_tidy() {
        let violations = check(&crate::project_root()).expect("tidy checks run");
        let report: Vec<String> = violations.iter().map(ToString::to_string).collect();
        assert!(
            report.is_empty(),
            "run `cargo xtask tidy`:\n{}",
            report.join("\n")
        );
    }

    #[test]
    fn module_doc_must_come_first() {
        assert!(starts_with_module_doc("//! Does things.\n\nfn f() {}\n"));
        assert!(!starts_with_module_doc("// Not a doc.\n//! Late.\n"));
        assert!(!starts_with_module_doc("use std::fs;\n"));
        assert!(!starts_with_module_doc(""));
    }

    #[test]
    fn forbidden_constructs_are_found_with_their_line() {
        let text = format!(
            "//! Doc.\nfn ok() {{}}\n{}\nfn f() {{ {}1); }}\n{} = \"flaky\"]\nlet x = {});\n",
            concat!("#[", "ignore]"),
            concat!("dbg", "!("),
            concat!("#[", "ignore"),
            concat!("todo", "!(")
        );
        let lines: Vec<usize> = forbidden_constructs(&text)
            .into_iter()
            .map(|(line, _)| line)
            .collect();
        assert_eq!(lines, [3, 4, 5, 6]);
        let panics = concat!("#[", "should_panic(expected = \"x\")]");
        assert_eq!(forbidden_constructs(panics).len(), 1);
        assert!(forbidden_constructs("fn dbg_free() { todo_list(); }\n").is_empty());
    }

    #[test]
    fn manifest_needs_workspace_lints() {
        let ws = names();
        let ok = "[package]\nname = \"a\"\n\n[lints]\nworkspace = true\n";
        assert!(check_manifest(ok, &ws).is_empty());
        assert!(
            check_manifest("[package]\nname = \"a\"\nlints.workspace = true\n", &ws).len() == 1
        );
        assert!(
            check_manifest("lints.workspace = true\n[package]\nname = \"a\"\n", &ws).is_empty()
        );
        let missing = check_manifest(
            "[package]\nname = \"a\"\n[lints]\n# workspace = true\n",
            &ws,
        );
        assert_eq!(
            missing,
            [(None, "missing `[lints]` with `workspace = true`".to_owned())]
        );
    }

    #[test]
    fn internal_dependencies_go_through_the_workspace() {
        let ws = names();
        let manifest = "[dependencies]\n\
                        cache-core.workspace = true\n\
                        serde = \"1\"\n\
                        cache-local = { path = \"../cache-local\" }\n\
                        [dev-dependencies]\n\
                        cache-core = { workspace = true, features = [\"testkit\"] }\n\
                        [target.'cfg(unix)'.dependencies]\n\
                        cache-build = { version = \"0.1\" } # no workspace = true here\n\
                        [dependencies.cache-registry]\n\
                        path = \"../cache-registry\"\n\
                        [build-dependencies.cache-cli]\n\
                        workspace = true\n\
                        [lints]\n\
                        workspace = true\n";
        let lines: Vec<Option<usize>> = check_manifest(manifest, &ws)
            .into_iter()
            .map(|(line, _)| line)
            .collect();
        assert_eq!(lines, [Some(4), Some(8), Some(9)]);
    }

    #[test]
    fn layering_follows_style_section_2() {
        let ws = names();
        let allowed = [
            package(
                "cache-core",
                &[("serde", "normal"), ("tokio", "dev"), ("cache-core", "dev")],
            ),
            package(
                "cache-local",
                &[("cache-core", "normal"), ("tokio", "normal")],
            ),
            package("cache-build", &[("cache-core", "normal")]),
            package(
                "cache-cli",
                &[
                    ("cache-local", "normal"),
                    ("cache-registry", "normal"),
                    ("cache-build", "normal"),
                ],
            ),
            package(
                "cache-bench",
                &[("cache-local", "normal"), ("cache-core", "dev")],
            ),
            package("xtask", &[("anyhow", "normal"), ("serde_json", "normal")]),
        ];
        for package in &allowed {
            assert!(check_layering(package, &ws).is_empty(), "{}", package.name);
        }
        let forbidden = [
            package("cache-core", &[("tokio", "normal")]),
            package("cache-core", &[("reqwest", "build")]),
            package("cache-core", &[("cache-local", "dev")]),
            package("cache-local", &[("cache-registry", "normal")]),
            package("cache-registry", &[("cache-build", "dev")]),
            package("cache-build", &[("cache-local", "normal")]),
            package("cache-cli", &[("cache-bench", "normal")]),
            package("cache-bench", &[("cache-cli", "dev")]),
            package("cache-local", &[("xtask", "build")]),
            package("xtask", &[("cache-core", "normal")]),
            package("cache-llb", &[("tokio", "normal")]),
            package("cache-llb", &[("cache-build", "normal")]),
        ];
        for package in &forbidden {
            assert_eq!(check_layering(package, &ws).len(), 1, "{package:?}");
        }
    }

    #[test]
    fn metadata_is_parsed() {
        let json = br#"{"packages":[{"name":"cache-bench","manifest_path":"/r/cache-bench/Cargo.toml",
            "dependencies":[{"name":"cache-core","kind":null},{"name":"criterion","kind":"dev"}],
            "targets":[{"name":"cache-bench","kind":["lib"]},{"name":"cache-bench","kind":["bin"]}]}]}"#;
        let packages = parse_metadata(json).expect("valid metadata");
        assert_eq!(packages.len(), 1);
        assert_eq!(
            packages[0].manifest_path,
            Path::new("/r/cache-bench/Cargo.toml")
        );
        assert_eq!(
            packages[0].deps,
            [
                ("cache-core".to_owned(), "normal".to_owned()),
                ("criterion".to_owned(), "dev".to_owned())
            ]
        );
        assert_eq!(
            packages[0].targets[1],
            ("cache-bench".to_owned(), vec!["bin".to_owned()])
        );
    }
}
