//! Dockerfile instructions and flags beyond the basics: COPY --exclude, COPY --parents, ONBUILD,
//! ADD <url>.

use std::fs;

use crate::support::{build, build_ok, busybox_context, s, steps};

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

#[test]
fn copy_parents_keeps_the_directories_and_keys_on_what_it_copies() {
    let dockerfile = "FROM scratch\nCOPY --parents src/**/*.c ./lib/./x/ /app/\n";
    let Some(ctx) = busybox_context(dockerfile) else {
        return;
    };
    ctx.write("src/main.c", "int main;\n")
        .write("src/README.md", "docs\n")
        .write("src/net/tcp.c", "int tcp;\n")
        .write("src/empty/notes.txt", "notes\n")
        .write("lib/x/y/z.h", "z\n")
        .write("lib/other.h", "o\n");
    let work = tempfile::tempdir().expect("a temporary directory");
    let (root, out) = (work.path().join("root"), work.path().join("out"));
    let output = format!("type=local,dest={}", s(&out));
    build_ok(ctx.path(), &root, &["--output", &output]);
    let mut files: Vec<String> = walkdir(&out.join("app"));
    files.sort();
    // Parents up to the source (below the `/./` pivot), nothing that does not match, and no
    // directory that leads to no match.
    assert_eq!(files, ["src/main.c", "src/net/tcp.c", "x/y/z.h"]);
    assert!(!out.join("app/src/empty").exists());

    // A file the patterns leave out changing keeps the step cached; a copied one does not.
    ctx.write("src/README.md", "more docs\n")
        .write("lib/other.h", "o2\n");
    let again = build_ok(ctx.path(), &root, &[]);
    assert!(
        steps(again.meta()).iter().all(|s| s.cached),
        "{:?}",
        steps(again.meta())
    );
    ctx.write("src/net/tcp.c", "int tcp2;\n");
    let again = build_ok(ctx.path(), &root, &[]);
    assert!(
        steps(again.meta()).iter().all(|s| !s.cached),
        "{:?}",
        steps(again.meta())
    );

    // A source without wildcards must exist, as in BuildKit.
    ctx.write(
        "Dockerfile",
        "FROM scratch\nCOPY --parents src/main.c src/gone.c /app/\n",
    );
    let err = build(ctx.path(), &root, &[]).assert_failure();
    assert!(
        err.contains("COPY --parents src/gone.c: /src/gone.c not found"),
        "{err}"
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

/// A loopback HTTP server, for the test's lifetime: `GET /files/hello.txt` answers `body`,
/// anything else 404.
fn serve(body: &'static str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let addr = listener.local_addr().expect("an address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) <= 2 {
                    break;
                }
            }
            let response = if request.starts_with("GET /files/hello.txt ") {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = stream.write_all(response.as_bytes());
        }
    });
    format!("http://{addr}")
}

#[test]
fn add_url_downloads_and_verifies_the_checksum() {
    use std::os::unix::fs::PermissionsExt;
    let body = "hello from the web\n";
    let server = serve(body);
    let digest = cache_core::digest::sha256(body.as_bytes()).to_string();
    let dockerfile = |checksum: &str, path: &str| {
        format!("FROM scratch\nADD {checksum} {server}/files/{path} /dl/\n")
    };
    let Some(ctx) = busybox_context(&dockerfile("", "hello.txt")) else {
        return;
    };
    let work = tempfile::tempdir().expect("a temporary directory");
    let (root, out) = (work.path().join("root"), work.path().join("out"));
    let output = format!("type=local,dest={}", s(&out));
    build_ok(ctx.path(), &root, &["--output", &output]);
    let file = out.join("dl/hello.txt");
    assert_eq!(fs::read_to_string(&file).expect("the download"), body);
    assert_eq!(
        fs::metadata(&file).expect("stat").permissions().mode() & 0o777,
        0o600,
        "BuildKit's http source mode"
    );

    ctx.write(
        "Dockerfile",
        &dockerfile(&format!("--checksum={digest}"), "hello.txt"),
    );
    build_ok(ctx.path(), &root, &[]);

    let wrong = format!("sha256:{}", "0".repeat(64));
    ctx.write(
        "Dockerfile",
        &dockerfile(&format!("--checksum={wrong}"), "hello.txt"),
    );
    let err = crate::support::build(ctx.path(), &root, &[]).assert_failure();
    assert!(
        err.contains(&format!(
            "ADD --checksum={wrong}: {server}/files/hello.txt has digest {digest}"
        )),
        "{err}"
    );

    ctx.write("Dockerfile", &dockerfile("", "missing.txt"));
    let err = crate::support::build(ctx.path(), &root, &[]).assert_failure();
    assert!(
        err.contains(&format!(
            "downloading {server}/files/missing.txt: the server answered 404"
        )),
        "{err}"
    );
}
