//! BuildKit's op model and cache keys, byte for byte, as pure functions: the ops a Dockerfile
//! step becomes (exec, file, source), the cache-map digest each op kind computes, the
//! selectors on the links between records, and the contenthash of the files a step reads.
//! A cache written by BuildKit then gives hits to whoever computes the same digests, and the
//! other way round.
//!
//! Reference: `github.com/moby/buildkit` at `73ed6825c4b7569379ef89df0aedcdbe64473d31`
//! (v0.32.0-57, Dockerfile frontend 1.26.0-57). No I/O: callers describe files ([`contenthash`])
//! and pass digests in.
//!
//! ```
//! use cache_llb::{ExecOp, Meta, Mount, Platform, record_digest};
//!
//! // RUN mkdir -p /work /out && echo "base-ready" > /work/base.txt, on a base with PATH=/bin.
//! let op = ExecOp {
//!     meta: Meta {
//!         args: vec!["/bin/sh".into(), "-c".into(),
//!                    r#"mkdir -p /work /out && echo "base-ready" > /work/base.txt"#.into()],
//!         env: vec!["PATH=/bin".into()],
//!         cwd: "/".into(),
//!         remove_mount_stubs_recursive: true,
//!         ..Meta::default()
//!     },
//!     mounts: vec![Mount::root()],
//!     ..ExecOp::default()
//! };
//! let map = op.cache_map(&Platform::linux_amd64(), 1);
//! assert_eq!(
//!     record_digest(&map.digest, 0).to_string(),
//!     "sha256:ce284eac4a981bd08f498f5d617047ada6d4646edca2ee64105aa9e4c07284bf",
//! );
//! ```
//!
//! # How a record digest is made (each fact found in a real BuildKit export)
//!
//! A record is `sha256("<cache map digest>@<output>")` ([`record_digest`]); its inputs are links
//! to the records of the op's inputs, each with the selector of [`Dep::selector`]; an input slot
//! may hold several alternatives and matches through any. Every JSON below is Go's
//! `encoding/json` (struct field order, `omitempty`, `<`, `>`, `&` escaped).
//!
//! - **Exec** (RUN): `{"Type":"buildkit.exec.v0","Exec":<ExecOp>,"OS":"linux","Arch":"amd64"}`,
//!   the lone root mount dropped; link to the root filesystem with selector `sha256("/")`.
//!   `RUN ["/bin/busybox","--install","-s","/bin"]` with env
//!   `PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`, cwd `/`: record
//!   `sha256:a9915c3f…2c54` (`tests/fixtures/t2`).
//! - **File** (COPY, ADD, WORKDIR): `{"Type":"buildkit.file.v0","Actions":[<base64 of each
//!   action's JSON>],"indexes":[[input,secondary,output],…]}`, `indexes` left out for the
//!   common chain (first action on input 0, secondary 1 or -1, output 0 on the last action);
//!   a copy's `src` is reduced to its base name. `COPY busybox /bin/busybox` on scratch: action
//!   `{"src":"busybox","dest":"/bin/busybox","mode":-1,"followSymlink":true,
//!   "dirCopyContents":true,"createDestPath":true,"allowWildcard":true,"allowEmptyWildcard":true,
//!   "timestamp":-1}`, indexes `[[-1,0,0]]`, one input (the context): record
//!   `sha256:1616bd1a…3412`. `COPY src/ /src/` on a filesystem: no indexes, record
//!   `sha256:692d4f6f…a798`, also in `../shared/fixtures/buildkit`'s registry export. Owners are
//!   `{"user":{"User":{"byId":1000}},…}` (`solver/pb/json.go`). The written input's link has
//!   no selector.
//! - **Content keys**: each selector path of an input gets BuildKit's contenthash
//!   ([`contenthash::Tree::checksum`]); the key is `sha256(join(checksums, "\0"))` and its
//!   record `sha256("<key>@-1")`, a root record linked without selector. COPY from the context
//!   links only to it (the context's own key is session-scoped, never exported); the context's
//!   root header is `sha256("")`. COPY --from a stage links both to the stage's record, with
//!   selector `sha256(paths sorted descending, joined by "\0")` (`/out`: `sha256:a5bcd92e…ce5d`),
//!   and to the content key of those paths in it.
//! - **Merge** (`COPY --link`): `{"Type":"buildkit.merge.v0","Merge":{"inputs":[{},{"input":1}]}}`.
//! - **Image sources** (FROM): two root records, `sha256("buildkit.source.v0:" + key)@0` with
//!   key the digest of `{"Digest":<manifest>,"OS":"linux","Arch":"amd64"}` or the chain ID of
//!   the config's diff IDs ([`image_records`]).
//!
//! - **Exec mounts** (RUN `--mount`): as `llb` marshals them: the root, bind, cache and tmpfs
//!   mounts sorted by target (inputs numbered in that order, one per distinct source), then
//!   secret files, then ssh sockets; env secrets in `secretenv`; cache ids
//!   `<namespace>/<id>` (`//root/.cache` by default) kept only for the Dockerfile default.
//!   A read-only or output-less mount's input has a content key over its paths (the whole
//!   input, links not followed, when it mounts `/`).
//! - **Snapshots**: the root header digest of an op's result is the entry digest of its root
//!   directory (0755, root): the `#!` heredoc RUN's mounted mkfile snapshot gives the content
//!   record `sha256:8c24f9ca…1e` of that export; a client's context has `sha256("")` instead,
//!   and its files are owned by 0:0 (BuildKit's client resets owners).
//! - **Env order** of an exec (`meta.env`): `llb.EnvList`, where a variable set again (ENV or
//!   ARG) moves to the end; the image config's `Env` replaces in place instead.
//!
//! `tests/golden.rs` rebuilds every op of `tests/fixtures/t2/Dockerfile` from what BuildKit's
//! frontend made of it and finds each record, link and content key in BuildKit's export;
//! `cache-build`'s `tests/corpus_keys.rs` compares the keys the engine derives for the interop corpus
//! (and RUN `--mount` forms) with the ops `dockerfile2llb` made of them.

pub mod contenthash;
pub mod dump;
mod key;
mod op;

pub use key::{
    CacheMap, ContentSelector, Dep, content_key, content_record, exec_selector, file_selector,
    own_cache_map, record_digest,
};
pub use op::{
    Action, CacheOpt, ChownOpt, Copy, ExecOp, FileAction, FileOp, HostIp, MergeOp, Meta, Mkdir,
    Mkfile, Mount, MountType, Platform, Rm, SecretEnv, SecretOpt, TmpfsOpt, UserOpt, chain_id,
    image_records, source_record,
};
