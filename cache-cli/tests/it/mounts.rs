//! `RUN --mount` of every type, `--secret`, `--network`, `--security`, and cache mounts shared by
//! concurrent builds on one root.

use std::path::{Path, PathBuf};

use crate::support::{self, BuildContext, build, busybox_context};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("creating a temporary directory")
}

fn context_with(body: &str) -> Option<BuildContext> {
    busybox_context(&format!(
        "{}FROM base\n{body}",
        support::busybox_stage("base")
    ))
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel))
        .unwrap_or_else(|e| panic!("reading {rel} of {}: {e}", dir.display()))
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => out.push(path),
                _ => {}
            }
        }
    }
    out
}

#[test]
fn issue_10_every_mount_type_runs_and_leaves_no_trace_in_the_layer() {
    // Owners other than root exist only when the builder runs as root (no user namespace).
    let owned = if support::is_root() {
        "RUN --mount=type=cache,id=owned,target=/o,uid=1000,gid=1001,mode=0710 stat -c '%u %g %a' /o > /owned\n"
    } else {
        "RUN --mount=type=cache,id=owned,target=/o,mode=0710 stat -c '1000 1001 %a' /o > /owned\n"
    };
    let Some(ctx) = context_with(&format!(
        "{}{owned}",
        concat!(
            "WORKDIR /w\n",
            "RUN --mount=type=cache,target=/cache,id=c1 echo run >> /cache/log && wc -l < /cache/log > /count\n",
            "RUN --mount=type=bind,source=src,target=in ls in > /bindls && cat in/a.txt >> /bindls\n",
            "RUN --mount=type=bind,source=src,target=/rw,rw touch /rw/new && ls /rw > /rwls\n",
            "RUN --mount=type=bind,from=base,source=/bin/busybox,target=/opt/busybox /opt/busybox true && echo ok > /fromstage\n",
            "RUN --mount=type=tmpfs,target=/t,size=1m df -k /t | tail -1 | awk '{print $2}' > /tmpfs && echo x > /t/y\n",
            "RUN --network=none cat /proc/net/dev | tail -n +3 | awk '{print $1}' > /net\n",
            "RUN --mount=type=cache,id=seeded,target=/s,from=base,source=/bin test -x /s/busybox && echo seeded > /seeded\n",
        )
    )) else {
        return;
    };
    ctx.write("src/a.txt", "hello\n")
        .write("src/skip.log", "ignored\n")
        .write(".dockerignore", "src/*.log\n");
    let work = tempdir();
    let root = work.path().join("root");
    let out = work.path().join("out");
    let dest = format!("type=local,dest={}", out.display());
    build(ctx.path(), &root, &["-o", &dest]).assert_success();
    assert_eq!(read(&out, "count").trim(), "1");
    // Bind mounts see exactly the selected context files (.dockerignore applies); rw writes are
    // discarded; relative targets are under the workdir.
    assert_eq!(read(&out, "bindls"), "a.txt\nhello\n");
    assert_eq!(read(&out, "rwls"), "a.txt\nnew\n");
    assert!(
        !ctx.path().join("src/new").exists(),
        "rw writes never reach the context"
    );
    assert_eq!(read(&out, "fromstage"), "ok\n");
    assert_eq!(read(&out, "tmpfs").trim(), "1024");
    assert_eq!(
        read(&out, "net").trim(),
        "lo:",
        "--network=none has only loopback"
    );
    assert_eq!(
        read(&out, "seeded"),
        "seeded\n",
        "from= seeds a new cache mount"
    );
    assert_eq!(read(&out, "owned"), "1000 1001 710\n");
    // No mount target is left in the result.
    for stub in ["cache", "rw", "opt", "t", "w/in"] {
        assert!(!out.join(stub).exists(), "/{stub} must not be in the image");
    }
    // The cache mount persists in the root between builds; a changed bind source reruns its step.
    ctx.write("src/a.txt", "changed\n");
    let second = build(ctx.path(), &root, &["-o", &dest]).assert_success();
    assert_eq!(read(&out, "bindls"), "a.txt\nchanged\n");
    let executed = second.progress().executed_steps().join("\n");
    assert!(
        executed.contains("source=src,target=in") && !executed.contains("target=/cache"),
        "only the steps whose bind sources changed run: {executed}"
    );
    // Cache mounts count in `cache du` and `cache prune --mounts` drops them.
    let du = support::buildcache()
        .args(["cache", "du", "--format", "json"])
        .arg(root.join("cache"))
        .output()
        .expect("du runs");
    let du: serde_json::Value = serde_json::from_slice(&du.stdout).expect("du prints JSON");
    assert_eq!(du["cache_mounts"][0]["id"], "/c1", "{du}");
    let prune = support::buildcache()
        .args(["cache", "prune", "--mounts"])
        .arg(root.join("cache"))
        .output()
        .expect("prune runs");
    assert!(prune.status.success(), "{prune:?}");
    let third = build(ctx.path(), &root, &["--no-cache", "-o", &dest]).assert_success();
    drop(third);
    assert_eq!(
        read(&out, "count").trim(),
        "1",
        "the pruned cache mount starts empty"
    );
}

#[test]
fn issue_10_a_secret_never_reaches_anything_written() {
    const SECRET: &str = "pa55-Wrd-9f3e1c";
    let Some(ctx) = context_with(concat!(
        "RUN --mount=type=secret,id=tok,required test \"$(cut -c1-4 /run/secrets/tok)\" = pa55 && stat -c 'file-ok %a' /run/secrets/tok > /file\n",
        "RUN --mount=type=secret,id=tok,env=TOKEN,mode=0444 test \"${TOKEN%-*}\" = pa55-Wrd && echo env-ok > /env && echo $TOKEN | wc -c > /len\n",
    )) else {
        return;
    };
    let work = tempdir();
    let secret_file = work.path().join("token");
    std::fs::write(&secret_file, SECRET).expect("writing the secret");
    let root = work.path().join("root");
    let out = work.path().join("out");
    let cache = work.path().join("cache");
    let done = build(
        ctx.path(),
        &root,
        &[
            "--secret",
            &format!("id=tok,src={}", secret_file.display()),
            "-o",
            &format!("type=local,dest={}", out.display()),
            "--cache-to",
            &format!(
                "type=local,dest={},mode=max,compression=uncompressed",
                cache.display()
            ),
        ],
    )
    .assert_success();
    assert_eq!(read(&out, "file"), "file-ok 400\n");
    assert_eq!(read(&out, "env"), "env-ok\n");
    assert_eq!(read(&out, "len").trim(), "16");
    let mut written = files_under(&root);
    written.extend(files_under(&out));
    written.extend(files_under(&cache));
    assert!(written.len() > 5, "the build wrote files: {written:?}");
    for path in written {
        let bytes = std::fs::read(&path).unwrap_or_default();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the secret is in {}",
            path.display()
        );
    }
    let logs = format!("{}{}{}", done.stdout(), done.stderr(), done.meta());
    assert!(!logs.contains(SECRET), "the secret is in the output");
    // A required secret that is not given fails naming the line and the fix.
    let err = build(ctx.path(), &root, &["--no-cache"]).assert_failure();
    assert!(
        err.contains("secret tok is required") && err.contains("--secret id=tok"),
        "{err}"
    );
    assert!(err.contains("line 5"), "{err}");
}

#[test]
fn issue_10_insecure_and_host_network_need_entitlements() {
    let Some(ctx) =
        context_with("RUN --security=insecure cat /proc/self/status | grep CapBnd > /caps\n")
    else {
        return;
    };
    let work = tempdir();
    let root = work.path().join("root");
    let err = build(ctx.path(), &root, &[]).assert_failure();
    assert!(err.contains("--allow security.insecure"), "{err}");
    let out = work.path().join("out");
    build(
        ctx.path(),
        &root,
        &[
            "--allow",
            "security.insecure",
            "-o",
            &format!("type=local,dest={}", out.display()),
        ],
    )
    .assert_success();
    // Every capability stays in the bounding set (Docker's default set is 00000000a80425fb).
    let caps = read(&out, "caps");
    assert!(!caps.contains("00000000a80425fb"), "{caps}");
}

/// Runs two builds of `ctx` on one root at the same time, with build arg ID=a and ID=b.
fn concurrently(ctx: &BuildContext, root: &Path) -> Vec<PathBuf> {
    let outs: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|id| {
            root.parent()
                .expect("has a parent")
                .join(format!("out-{id}"))
        })
        .collect();
    let handles: Vec<_> = ["a", "b"]
        .iter()
        .zip(&outs)
        .map(|(id, out)| {
            let (ctx, root) = (ctx.path().to_owned(), root.to_owned());
            let args = [
                "--build-arg".to_owned(),
                format!("ID={id}"),
                "-o".to_owned(),
                format!("type=local,dest={}", out.display()),
            ];
            std::thread::spawn(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                build(&ctx, &root, &args).assert_success();
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("a build thread");
    }
    outs
}

#[test]
fn issue_10_locked_cache_mounts_serialize_concurrent_builds() {
    // Each build marks the locked mount busy, then waits up to 4s for the other to show up in a
    // shared mount. With `locked` the other cannot start meanwhile: both see the mount idle.
    let Some(ctx) = context_with(concat!(
        "ARG ID\n",
        "RUN --mount=type=cache,id=data,target=/c,sharing=locked --mount=type=cache,id=sync,target=/sync \\\n",
        "  if [ -e /c/busy ]; then echo overlap > /result; else echo alone > /result; fi; \\\n",
        "  touch /c/busy; echo start $ID >> /c/log; touch /sync/$ID; \\\n",
        "  i=0; while [ $(ls /sync | wc -l) -lt 2 ] && [ $i -lt 40 ]; do sleep 0.1; i=$((i+1)); done; \\\n",
        "  echo end $ID >> /c/log; rm /c/busy\n",
    )) else {
        return;
    };
    let work = tempdir();
    let root = work.path().join("root");
    let outs = concurrently(&ctx, &root);
    for out in &outs {
        assert_eq!(read(out, "result"), "alone\n");
    }
    let store = cache_build::mounts::CacheMounts::new(root.join("mounts"));
    let data = store
        .list()
        .expect("listing mounts")
        .into_iter()
        .find(|m| m.id == "/data")
        .expect("the data mount");
    let log = read(&data.path, "log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 4, "{log}");
    assert!(
        lines[0].replace("start", "end") == lines[1]
            && lines[2].replace("start", "end") == lines[3],
        "one build at a time: {log}"
    );
}

#[test]
fn issue_10_private_cache_mounts_give_each_concurrent_build_its_own() {
    // Both builds meet in a shared mount while each holds the private one: each must see only
    // its own file there.
    let Some(ctx) = context_with(concat!(
        "ARG ID\n",
        "RUN --mount=type=cache,id=data,target=/c,sharing=private --mount=type=cache,id=sync,target=/sync \\\n",
        "  touch /c/$ID /sync/$ID; \\\n",
        "  i=0; while [ $(ls /sync | wc -l) -lt 2 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \\\n",
        "  ls /sync | wc -l > /met; ls /c > /result\n",
    )) else {
        return;
    };
    let work = tempdir();
    let root = work.path().join("root");
    let outs = concurrently(&ctx, &root);
    for (out, id) in outs.iter().zip(["a", "b"]) {
        assert_eq!(read(out, "met").trim(), "2", "the builds ran concurrently");
        assert_eq!(read(out, "result"), format!("{id}\n"));
    }
    let store = cache_build::mounts::CacheMounts::new(root.join("mounts"));
    let instances = store
        .list()
        .expect("listing mounts")
        .into_iter()
        .filter(|m| m.id == "/data")
        .count();
    assert_eq!(instances, 2);
}

/// The blobs of the cache manifest tagged `latest` in the local cache `dir` that hold cache
/// mount contents: (id, digest).
fn mount_blobs_in(dir: &Path) -> Vec<(String, String)> {
    let index = support::read_json(&dir.join("index.json"));
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("a manifest");
    let manifest = support::read_json(
        &dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    );
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .filter_map(|l| {
            let id = l["annotations"]["dev.buildcache.cache-mount.id"].as_str()?;
            Some((id.to_owned(), l["digest"].as_str()?.to_owned()))
        })
        .collect()
}

#[test]
fn issue_10_cache_mounts_travel_with_the_exported_cache() {
    let Some(ctx) = context_with(concat!(
        "COPY src.txt /src.txt\n",
        "RUN --mount=type=cache,target=/cache (ls /cache; cat /src.txt) > /seen && cp /src.txt /cache/f-$(cat /src.txt)\n",
        "RUN --mount=type=cache,id=big,target=/big head -c 4096 /dev/zero > /big/zeros\n",
    )) else {
        return;
    };
    ctx.write("src.txt", "1\n");
    let work = tempdir();
    let cache = work.path().join("cache");
    let cache_to = format!(
        "type=local,dest={},mode=max,cache-mounts=true,cache-mounts-max-size=1k",
        cache.display()
    );
    let cache_from = format!("type=local,src={}", cache.display());
    let out = work.path().join("out");
    let output = format!("type=local,dest={}", out.display());
    // A plain export carries no mount; cache-mounts=true adds the one within the size budget.
    let first = build(
        ctx.path(),
        &work.path().join("root1"),
        &[
            "--cache-to",
            &format!("type=local,dest={}", work.path().join("plain").display()),
        ],
    )
    .assert_success();
    drop(first);
    assert!(mount_blobs_in(&work.path().join("plain")).is_empty());
    let first = build(
        ctx.path(),
        &work.path().join("root1"),
        &["--cache-to", &cache_to],
    )
    .assert_success();
    assert!(
        first.stderr().contains("cache mount /big holds"),
        "{}",
        first.stderr()
    );
    let exported = mount_blobs_in(&cache);
    assert_eq!(exported.len(), 1, "{exported:?}");
    assert_eq!(exported[0].0, "//cache");
    // A fresh root importing the cache starts the mount with the first build's contents.
    ctx.write("src.txt", "2\n");
    let second = build(
        ctx.path(),
        &work.path().join("root2"),
        &[
            "--cache-from",
            &cache_from,
            "--cache-to",
            &cache_to,
            "-o",
            &output,
        ],
    )
    .assert_success();
    drop(second);
    assert_eq!(read(&out, "seen"), "f-1\n2\n");
    let after_second = mount_blobs_in(&cache);
    assert_ne!(
        after_second, exported,
        "the changed mount is exported again"
    );
    // Nothing changed in the mount: the same blob, nothing written for it.
    let third = build(
        ctx.path(),
        &work.path().join("root2"),
        &["--cache-from", &cache_from, "--cache-to", &cache_to],
    )
    .assert_success();
    assert_eq!(mount_blobs_in(&cache), after_second);
    assert_eq!(
        third.meta()["buildcache.cache_export"][0]["blobs_written"],
        0,
        "{}",
        third.meta()
    );
    // The management commands see and keep the mount blob.
    let run = |args: &[&str]| {
        let output = support::buildcache()
            .args(args)
            .output()
            .expect("buildcache runs");
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let cache_dir = cache.display().to_string();
    assert!(run(&["cache", "inspect", &cache_from]).contains("(cache mount //cache)"));
    run(&["cache", "verify", &cache_dir]);
    let copy = work.path().join("copy");
    run(&["cache", "copy", &cache_dir, &copy.display().to_string()]);
    assert_eq!(mount_blobs_in(&copy), after_second);
    let du: serde_json::Value =
        serde_json::from_str(&run(&["cache", "du", "--format", "json", &cache_dir]))
            .expect("du prints JSON");
    let budget = (du["live_bytes"].as_u64().expect("live bytes") - 1).to_string();
    let pruned = run(&["cache", "prune", &cache_dir, "--max-size", &budget]);
    assert!(
        pruned.contains("results of tag"),
        "a result was trimmed: {pruned}"
    );
    assert_eq!(
        mount_blobs_in(&cache),
        after_second,
        "trimming results keeps mounts"
    );
}

#[test]
fn issue_10_buildkit_imports_a_cache_with_cache_mounts() {
    let Some(bk) = support::buildkit::buildkit_under_test() else {
        return;
    };
    let Some(base) = support::buildkit::busybox_base() else {
        return;
    };
    let work = tempdir();
    let context = work.path().join("context");
    support::write_file(
        &context.join("Dockerfile"),
        "FROM busybox\nRUN --mount=type=cache,target=/c echo hi > /c/x && echo one > /one\n",
    );
    let cache = work.path().join("cache");
    build(
        &context,
        &work.path().join("root"),
        &[
            "--build-context",
            &format!(
                "busybox=oci-layout://{}@{}",
                base.layout.display(),
                base.manifest_digest
            ),
            "--cache-to",
            &format!(
                "type=local,dest={},mode=max,cache-mounts=true",
                cache.display()
            ),
        ],
    )
    .assert_success();
    assert_eq!(mount_blobs_in(&cache).len(), 1);
    bk.prune_all();
    let outcome = bk
        .build(
            &context,
            &base,
            &support::buildkit::BuildkitBuild {
                cache_from: vec![format!("type=local,src={}", cache.display())],
                ..Default::default()
            },
        )
        .assert_success();
    assert!(outcome.import_errors().is_empty(), "{}", outcome.stderr());
}

#[test]
fn issue_10_ssh_agent_sockets_are_forwarded() {
    let Some(ctx) = context_with(concat!(
        "RUN --mount=type=ssh if [ -S \"$SSH_AUTH_SOCK\" ]; then echo $SSH_AUTH_SOCK; else echo none; fi > /sock\n",
        "RUN --mount=type=ssh,id=deploy,target=/agent,required test -S /agent && echo ok > /deploy\n",
    )) else {
        return;
    };
    let work = tempdir();
    let sock = work.path().join("agent.sock");
    let _agent = std::os::unix::net::UnixListener::bind(&sock).expect("binding a socket");
    let out = work.path().join("out");
    let root = work.path().join("root");
    build(
        ctx.path(),
        &root,
        &[
            "--ssh",
            &format!("default={}", sock.display()),
            "--ssh",
            &format!("deploy={}", sock.display()),
            "-o",
            &format!("type=local,dest={}", out.display()),
        ],
    )
    .assert_success();
    assert_eq!(read(&out, "sock"), "/run/buildkit/ssh_agent.0\n");
    assert_eq!(read(&out, "deploy"), "ok\n");
    assert!(!out.join("agent").exists() && !out.join("run/buildkit").exists());
    // A required agent that is not given fails naming it and the fix.
    let err = build(ctx.path(), &root, &["--no-cache"]).assert_failure();
    assert!(
        err.contains("SSH agent deploy is required") && err.contains("--ssh deploy"),
        "{err}"
    );
}

#[test]
fn issue_10_cache_mounts_count_toward_the_root_budget() {
    let Some(ctx) =
        context_with("RUN --mount=type=cache,target=/c head -c 65536 /dev/zero > /c/zeros\n")
    else {
        return;
    };
    let work = tempdir();
    let root = work.path().join("root");
    let store = cache_build::mounts::CacheMounts::new(root.join("mounts"));
    build(ctx.path(), &root, &[]).assert_success();
    assert_eq!(
        store.list().expect("listing").len(),
        1,
        "kept within the default budget"
    );
    build(
        ctx.path(),
        &root,
        &["--no-cache", "--root-max-size", "32KiB"],
    )
    .assert_success();
    assert!(
        store.list().expect("listing").is_empty(),
        "a mount over the budget is removed once no build uses it"
    );
}
