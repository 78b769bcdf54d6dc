//! Why a step missed: `buildcache.steps[].miss` in the metadata, `#N MISS` lines and `--explain`.

use crate::support::{BuildContext, build_ok, busybox_context, busybox_stage, s, steps};

fn context() -> Option<BuildContext> {
    let dockerfile = format!(
        "{}\
FROM base AS files
COPY app/ /app/
FROM base AS final
ARG VERSION=1
RUN echo \"version $VERSION\" > /version.txt
COPY --from=files /app/ /app/
",
        busybox_stage("base")
    );
    let ctx = busybox_context(&dockerfile)?;
    ctx.write("app/a.txt", "a\n").write("app/b.txt", "b\n");
    Some(ctx)
}

/// The `miss` of each step by name (`None` for hits).
fn misses(meta: &serde_json::Value) -> Vec<(String, Option<String>)> {
    let steps = meta["buildcache.steps"].as_array().expect("steps");
    steps
        .iter()
        .map(|s| {
            (
                s["name"].as_str().expect("a name").to_owned(),
                s["miss"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn miss_of(meta: &serde_json::Value, prefix: &str) -> Option<String> {
    misses(meta)
        .into_iter()
        .find(|(name, _)| name.starts_with(prefix))
        .unwrap_or_else(|| panic!("no step {prefix}: {:?}", misses(meta)))
        .1
}

#[test]
fn a_changed_file_and_build_arg_are_named_as_the_reasons() {
    let Some(ctx) = context() else { return };
    let work = tempfile::tempdir().expect("a temporary directory");
    let cache = work.path().join("cache");
    let cold = build_ok(
        ctx.path(),
        &work.path().join("root-a"),
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=max", s(&cache)),
        ],
    );
    for (name, miss) in misses(cold.meta()) {
        assert_eq!(
            miss.as_deref(),
            Some("no cache source given (and this machine has built nothing yet)"),
            "{name}"
        );
    }
    assert!(
        cold.stderr().contains(" MISS no cache source given"),
        "{}",
        cold.stderr()
    );

    ctx.write("app/b.txt", "b changed\n");
    let warm = build_ok(
        ctx.path(),
        &work.path().join("root-b"),
        &[
            "--cache-from",
            &format!("type=local,src={}", s(&cache)),
            "--build-arg",
            "VERSION=2",
            "--explain",
        ],
    );
    let meta = warm.meta();
    assert_eq!(miss_of(meta, "[base 1/"), None, "{:?}", misses(meta));
    assert_eq!(miss_of(meta, "[base 2/"), None);
    assert_eq!(
        miss_of(meta, "[files 1/1] COPY app/").as_deref(),
        Some("the content of the files it copies differs: app/b.txt")
    );
    assert_eq!(
        miss_of(meta, "[final 1/2] RUN").as_deref(),
        Some("this step's own key is new; the nearest record differs in env or build-arg VERSION")
    );
    assert_eq!(
        miss_of(meta, "[final 2/2] COPY --from=files").as_deref(),
        Some("the parent step missed")
    );
    assert!(steps(meta).iter().filter(|s| s.cached).count() == 2);
    // The table at the end, and the plain MISS lines.
    let stderr = warm.stderr();
    let table = stderr
        .split_once("STEP")
        .unwrap_or_else(|| panic!("no --explain table:\n{stderr}"))
        .1;
    assert!(table.contains("WHY IT MISSED"), "{table}");
    for reason in [
        "the content of the files it copies differs: app/b.txt",
        "the nearest record differs in env or build-arg VERSION",
        "the parent step missed",
    ] {
        assert!(table.contains(reason), "{reason}:\n{table}");
    }
    assert!(
        stderr.lines().any(|l| l.starts_with('#')
            && l.contains(" MISS the content of the files it copies differs: app/b.txt")),
        "{stderr}"
    );

    // A fully cached build has no miss at all.
    let again = build_ok(
        ctx.path(),
        &work.path().join("root-b"),
        &["--build-arg", "VERSION=2", "--explain"],
    );
    assert!(misses(again.meta()).iter().all(|(_, m)| m.is_none()));
    assert!(!again.meta().to_string().contains("\"miss\""));
    assert!(
        again.stderr().contains("every step was cached"),
        "{}",
        again.stderr()
    );
}
