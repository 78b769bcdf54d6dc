//! buildx's build flags: --iidfile, --label, --annotation, --add-host, --platform, --pull and
//! --no-cache-filter.

use std::fs;

use crate::support::{build, build_ok, busybox_context, busybox_stage, read_json, s, steps};

const DOCKERFILE: &str = "LABEL from.dockerfile=yes overridden=dockerfile\n\
RUN cat /etc/hosts > /hosts.txt\n";

fn dockerfile() -> String {
    format!("{}FROM base AS final\n{DOCKERFILE}", busybox_stage("base"))
}

/// The JSON blob `digest` of an OCI layout directory.
fn blob_json(layout: &std::path::Path, digest: &str) -> serde_json::Value {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    read_json(&layout.join("blobs/sha256").join(hex))
}

#[test]
fn image_flags_reach_the_image_and_run() {
    let Some(ctx) = busybox_context(&dockerfile()) else {
        return;
    };
    let work = tempfile::tempdir().expect("a temporary directory");
    let (iid, layout, rootfs) = (
        work.path().join("iid"),
        work.path().join("layout"),
        work.path().join("rootfs"),
    );
    let outcome = build_ok(
        ctx.path(),
        &work.path().join("root"),
        &[
            "--iidfile",
            s(&iid),
            "--label",
            "overridden=cli",
            "--label",
            "org.example.empty",
            "--annotation",
            "org.opencontainers.image.title=app",
            "--annotation",
            "manifest:org.example.kind=test",
            "--add-host",
            "db:10.0.0.2,cache=fe80::1",
            "--platform",
            "linux/amd64",
            "--pull",
            "--output",
            &format!("type=oci,dest={},tar=false", s(&layout)),
            "--output",
            &format!("type=local,dest={}", s(&rootfs)),
        ],
    );
    let meta = outcome.meta();
    let config_digest = meta["containerimage.config.digest"]
        .as_str()
        .expect("a config digest");
    assert_eq!(
        fs::read_to_string(&iid).expect("the iidfile"),
        config_digest
    );

    let manifest = blob_json(&layout, meta["containerimage.digest"].as_str().unwrap());
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.title"],
        "app"
    );
    assert_eq!(manifest["annotations"]["org.example.kind"], "test");
    let config = blob_json(&layout, config_digest);
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["from.dockerfile"], "yes");
    assert_eq!(labels["overridden"], "cli", "--label wins over LABEL");
    assert_eq!(labels["org.example.empty"], "");

    let hosts = fs::read_to_string(rootfs.join("hosts.txt")).expect("hosts.txt");
    assert!(hosts.contains("10.0.0.2\tdb\n"), "{hosts}");
    assert!(hosts.contains("fe80::1\tcache\n"), "{hosts}");
    assert!(hosts.starts_with("127.0.0.1\tlocalhost"), "{hosts}");
}

#[test]
fn no_cache_filter_reruns_only_the_named_stage() {
    let Some(ctx) = busybox_context(&dockerfile()) else {
        return;
    };
    let work = tempfile::tempdir().expect("a temporary directory");
    let root = work.path().join("root");
    build_ok(ctx.path(), &root, &[]);
    let again = build_ok(ctx.path(), &root, &["--no-cache-filter", "final"]);
    for step in steps(again.meta()) {
        let in_final = step.name.starts_with("[final ");
        assert_eq!(step.cached, !in_final, "{step:?}");
    }
    // An unknown stage is an error naming the stages there are.
    let err = build(ctx.path(), &root, &["--no-cache-filter", "nope"]).assert_failure();
    assert!(
        err.contains("--no-cache-filter nope: the Dockerfile has no stage named nope (its named stages: base, final)"),
        "{err}"
    );
}

#[test]
fn bad_flag_values_are_errors_naming_them() {
    let Some(ctx) = busybox_context(&dockerfile()) else {
        return;
    };
    let work = tempfile::tempdir().expect("a temporary directory");
    for (args, says) in [
        (
            &["--platform", "linux/arm64"][..],
            "--platform linux/arm64: buildcache builds only for the host platform linux/amd64",
        ),
        (
            &["--add-host", "db"],
            "invalid --add-host \"db\": use HOST:IP",
        ),
        (
            &["--annotation", "index:a=b"],
            "only image manifest annotations are supported",
        ),
        (
            &["--label", "=x"],
            "invalid --label \"=x\": the key is empty",
        ),
    ] {
        let err = build(ctx.path(), &work.path().join("root"), args).assert_failure();
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// Issue 12: `buildcache build --help` lists every buildx flag the issue asks for, and README's
/// flag list names every flag `--help` shows.
#[test]
fn help_lists_the_buildx_flags_and_readme_names_them_all() {
    let out = crate::support::buildcache()
        .args(["build", "--help"])
        .output()
        .expect("running buildcache build --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    // (short, long) of every flag shown.
    let shown: Vec<(Option<&str>, &str)> = help
        .lines()
        // Flag lines are indented by 2 or 6 columns, descriptions by 10.
        .filter(|l| l.len() - l.trim_start().len() <= 6)
        .filter_map(|l| {
            let l = l.trim_start();
            let (short, long) = match l.split_once(", ") {
                Some((short, long)) if short.len() == 2 && short.starts_with('-') => {
                    (Some(short), long)
                }
                _ => (None, l),
            };
            long.starts_with("--")
                .then(|| (short, long.split(' ').next().unwrap_or(long)))
        })
        .filter(|(_, long)| *long != "--help")
        .collect();
    for flag in [
        "--iidfile",
        "--label",
        "--annotation",
        "--no-cache-filter",
        "--pull",
        "--network",
        "--add-host",
        "--platform",
        "--explain",
        "--metadata-file",
        "--progress",
    ] {
        assert!(
            shown.iter().any(|(_, long)| *long == flag),
            "{flag} is not in --help:\n{help}"
        );
    }
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let list: String = readme
        .lines()
        .filter(|l| {
            l.starts_with("`buildcache build` takes buildx's flags")
                || l.starts_with("For RUN steps it also takes")
        })
        .collect();
    assert!(!list.is_empty(), "README's flag list is gone");
    for (short, long) in &shown {
        let named = list.contains(&format!("`{long}"))
            || short.is_some_and(|short| list.contains(&format!("`{short}`")));
        assert!(named, "README's flag list lacks {long}");
    }
}
