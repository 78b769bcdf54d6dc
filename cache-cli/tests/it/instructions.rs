//! Dockerfile instructions and flags beyond the basics: COPY --exclude.

use std::fs;

use crate::support::{build_ok, busybox_context, s, steps};

#[test]
fn copy_exclude_leaves_out_what_it_matches_and_keys_on_what_is_left() {
    let dockerfile = "FROM scratch\nCOPY --exclude=*.md --exclude=tmp src/ /app/\n";
    let Some(ctx) = busybox_context(dockerfile) else {
        return;
    };
    ctx.write("src/main.c", "int main;\n")
        .write("src/README.md", "docs\n")
        .write("src/lib/util.c", "int util;\n")
        .write("src/lib/NOTES.md", "notes\n")
        .write("src/tmp/scratch.o", "junk\n");
    let work = tempfile::tempdir().expect("a temporary directory");
    let (root, out) = (work.path().join("root"), work.path().join("out"));
    let output = format!("type=local,dest={}", s(&out));
    build_ok(ctx.path(), &root, &["--output", &output]);
    let mut files: Vec<String> = walkdir(&out.join("app"));
    files.sort();
    // As in BuildKit, `*` stays within one directory: lib/NOTES.md is copied.
    assert_eq!(files, ["lib/NOTES.md", "lib/util.c", "main.c"]);

    // An excluded file changing keeps the step cached; a copied one does not.
    ctx.write("src/README.md", "more docs\n");
    let again = build_ok(ctx.path(), &root, &[]);
    assert!(
        steps(again.meta()).iter().all(|s| s.cached),
        "{:?}",
        steps(again.meta())
    );
    ctx.write("src/main.c", "int main2;\n");
    let again = build_ok(ctx.path(), &root, &[]);
    assert!(
        steps(again.meta()).iter().all(|s| !s.cached),
        "{:?}",
        steps(again.meta())
    );
}

/// Files under `dir`, relative to it.
fn walkdir(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("listing") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).expect("below dir");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[test]
fn onbuild_triggers_are_recorded_and_run_by_images_built_on_them() {
    let base_dockerfile = format!(
        "{}ONBUILD RUN echo triggered > /triggered.txt\n",
        crate::support::busybox_stage("base")
    );
    let Some(ctx) = busybox_context(&base_dockerfile) else {
        return;
    };
    let work = tempfile::tempdir().expect("a temporary directory");
    let (root, layout) = (work.path().join("root"), work.path().join("layout"));
    let base = build_ok(
        ctx.path(),
        &root,
        &[
            "-t",
            "base:latest",
            "--output",
            &format!("type=oci,dest={},tar=false", s(&layout)),
        ],
    );
    let config_digest = base.meta()["containerimage.config.digest"]
        .as_str()
        .expect("a config digest")
        .to_owned();
    let config = crate::support::read_json(&crate::support::layout_blob(&layout, &config_digest));
    assert_eq!(
        config["config"]["OnBuild"],
        serde_json::json!(["RUN echo triggered > /triggered.txt"])
    );

    ctx.write(
        "Dockerfile",
        "FROM base\nRUN cat /triggered.txt > /seen.txt\n",
    );
    let out = work.path().join("out");
    let app = build_ok(
        ctx.path(),
        &root,
        &[
            "--build-context",
            &format!("base=oci-layout://{}:latest", s(&layout)),
            "--output",
            &format!("type=local,dest={}", s(&out)),
        ],
    );
    assert_eq!(
        fs::read_to_string(out.join("seen.txt")).expect("seen.txt"),
        "triggered\n"
    );
    let names: Vec<String> = steps(app.meta()).into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"[2/3] ONBUILD RUN echo triggered > /triggered.txt".to_owned()),
        "{names:?}"
    );
}
