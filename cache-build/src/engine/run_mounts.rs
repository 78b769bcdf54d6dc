//! `RUN --mount`, `--network` and `--security` in the engine: what goes into a step's key, and the
//! sandbox mounts, env and guards a step runs with.
//!
//! Cache mounts live in the root's [`CacheMounts`]; bind mounts are copies of exactly the files
//! they select (so `.dockerignore` applies, writes of `rw` are discarded, and nothing outside the
//! source is reachable through its symlinks); secrets are files in a private temporary directory
//! (`/dev/shm` when there is one) or env variables, read when the step runs and never written to
//! the key, the logs or an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cache_core::Descriptor;
use serde::Serialize;

use super::{Engine, Error, Event, NamedContext, Target, step_error};
use crate::context::{self, CopyOptions};
use crate::dockerfile::{self, CopyFrom, Mount, Network, Security, Step};
use crate::mounts::{CacheMounts, Lease};
use crate::sandbox;

/// Where a `--secret` value comes from; read each time a step uses it.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file's content (`--secret id=X,src=FILE`).
    File(PathBuf),
    /// An env variable of the builder (`--secret id=X,env=VAR`).
    Env(String),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names where the value is, never the value.
        match self {
            SecretSource::File(path) => write!(f, "File({})", path.display()),
            SecretSource::Env(name) => write!(f, "Env({name})"),
        }
    }
}

/// The inputs of RUN steps besides the Dockerfile: cache mount store, secrets, SSH agents, the
/// default network and the entitlements (`--allow`).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Where cache mounts persist (`ROOT/mounts`); `None` keeps them in the work directory for
    /// this build only.
    pub cache_mounts: Option<PathBuf>,
    /// `--secret` values by id.
    pub secrets: BTreeMap<String, SecretSource>,
    /// `--ssh` agent sockets by id.
    pub ssh: BTreeMap<String, PathBuf>,
    /// What `RUN --network=default` (and a RUN without the flag) uses: the CLI's `--network`.
    pub network: Network,
    /// `--allow network.host`: `RUN --network=host` is allowed.
    pub allow_network_host: bool,
    /// `--allow security.insecure`: `RUN --security=insecure` is allowed.
    pub allow_insecure: bool,
    /// Cache mount contents found in imported caches (`cache-mounts=true` exports), by mount id
    /// (`<namespace>/<id>`); one fills the mount when it is empty on this root.
    pub cache_mount_seeds: BTreeMap<String, Descriptor>,
}

/// A mount as it enters the step's key: its options, and for a bind mount the identity of the
/// files it selects. A cache mount's contents and a secret's value never do.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(super) enum MountKey<'a> {
    Bind {
        target: &'a str,
        source: &'a str,
        readonly: bool,
        /// `content:<checksum>` of the selected files, or the source stage's record digests.
        input: String,
    },
    Cache {
        target: &'a str,
        id: String,
        sharing: &'static str,
        readonly: bool,
        from: Option<String>,
        source: &'a str,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    Tmpfs {
        target: &'a str,
        size: Option<u64>,
    },
    Secret {
        id: &'a str,
        target: Option<&'a str>,
        env: Option<&'a str>,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Ssh {
        id: Option<&'a str>,
        target: &'a str,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// What a RUN step runs with besides its command: sandbox mounts, extra env (secrets), and what
/// must live until it ends (cache mount locks, copies, secret files).
#[derive(Default)]
pub(super) struct Prepared {
    pub(super) mounts: Vec<sandbox::Mount>,
    pub(super) env: Vec<(String, String)>,
    pub(super) network: sandbox::Network,
    pub(super) insecure: bool,
    _leases: Vec<Lease>,
    _secrets: Option<tempfile::TempDir>,
}

/// Prepares a new cache mount instance `dir`: the files of its `from=` source (`seed`), then
/// its owner and mode.
fn init_cache_mount(
    dir: &Path,
    seed: Option<&Path>,
    c: &dockerfile::CacheMount,
) -> std::io::Result<()> {
    if let Some(seed) = seed {
        if seed.is_dir() {
            copy_tree(seed, dir)?;
        } else {
            let name = seed.file_name().unwrap_or_default();
            std::fs::copy(seed, dir.join(name))?;
        }
    }
    if c.uid.is_some() || c.gid.is_some() {
        chown(dir, c.uid.unwrap_or(0), c.gid.unwrap_or(0))?;
    }
    chmod(dir, c.mode.unwrap_or(0o755))
}

/// The directory secret files are written to: memory-backed `/dev/shm` when usable.
fn secret_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let builder = || {
        let mut b = tempfile::Builder::new();
        b.prefix("buildcache-secrets-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
        b
    };
    if shm.is_dir()
        && let Ok(dir) = builder().tempdir_in(shm)
    {
        return Ok(dir);
    }
    builder().tempdir()
}

/// Gives `path` to `uid:gid`. Without root the builder's files are root's inside the sandbox's
/// user namespace already, so 0:0 needs nothing and any other owner cannot be given.
fn chown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    if !rustix::process::geteuid().is_root() {
        if (uid, gid) == (0, 0) {
            return Ok(());
        }
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("owner {uid}:{gid} needs a builder running as root (uid/gid other than 0)"),
        ));
    }
    let (cur_uid, cur_gid) = {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path)?;
        (meta.uid(), meta.gid())
    };
    if (cur_uid, cur_gid) == (uid, gid) {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

fn chmod(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// `source` of a mount as a selection source: `.` for the whole root.
fn selection_source(source: &str) -> String {
    let rel = source.trim_start_matches('/');
    if rel.is_empty() {
        ".".to_owned()
    } else {
        rel.to_owned()
    }
}

impl Engine<'_> {
    /// Checks `--network` and `--security` against the entitlements; returns what the sandbox uses.
    fn run_isolation(
        &self,
        step: &Step,
        network: Network,
        security: Security,
        name: &str,
    ) -> Result<(sandbox::Network, bool), Error> {
        let run = &self.request.run;
        let effective = match network {
            Network::Default => run.network,
            other => other,
        };
        if network == Network::Host && !run.allow_network_host {
            return Err(step_error(
                name,
                step.line,
                "RUN --network=host needs the network.host entitlement: add --allow network.host",
            ));
        }
        if security == Security::Insecure && !run.allow_insecure {
            return Err(step_error(
                name,
                step.line,
                "RUN --security=insecure needs the security.insecure entitlement: add --allow security.insecure",
            ));
        }
        // The default network is the host's, as buildcache's sandbox has no bridge of its own.
        let sandbox_network = match effective {
            Network::None => sandbox::Network::None,
            Network::Default | Network::Host => sandbox::Network::Host,
        };
        Ok((sandbox_network, security == Security::Insecure))
    }

    /// What identifies the files a bind mount or a cache mount's seed reads, for the key.
    async fn mount_input(
        &mut self,
        from: &CopyFrom,
        source: &str,
        name: &str,
    ) -> Result<String, Error> {
        let what = format!("{name}: --mount source {source}");
        Ok(match from {
            CopyFrom::Context => {
                let ctx = self.request.context.clone();
                let sel = self.select(&ctx, &[selection_source(source)], true, &[], &what)?;
                format!("content:{}", sel.checksum)
            }
            CopyFrom::NamedContext(ctx_name) => {
                match self.request.named_contexts.get(ctx_name).cloned() {
                    Some(NamedContext::Dir(dir)) => {
                        let sel =
                            self.select(&dir, &[selection_source(source)], false, &[], &what)?;
                        format!("content:{}", sel.checksum)
                    }
                    Some(NamedContext::OciLayout { .. }) => {
                        let idx = self.image_fs(ctx_name, true).await?;
                        self.records_input(&self.images[idx].records.clone())
                    }
                    None => {
                        return Err(Error::UnknownContext {
                            at: what.clone(),
                            name: ctx_name.clone(),
                        });
                    }
                }
            }
            CopyFrom::Stage(j) => self.records_input(&self.stages[*j].fs.records.clone()),
            CopyFrom::Image(reference) => {
                let idx = self.image_fs(reference, false).await?;
                self.records_input(&self.images[idx].records.clone())
            }
        })
    }

    fn records_input(&self, records: &[cache_core::graph::RecordIdx]) -> String {
        let mut digests: Vec<String> = records
            .iter()
            .map(|r| self.graph.record(*r).digest.to_string())
            .collect();
        digests.sort();
        format!("records:{}", digests.join(","))
    }

    /// The key entries of a RUN's mounts, in Dockerfile order.
    pub(super) async fn mount_keys<'m>(
        &mut self,
        mounts: &'m [Mount],
        name: &str,
    ) -> Result<Vec<MountKey<'m>>, Error> {
        let mut keys = Vec::with_capacity(mounts.len());
        for mount in mounts {
            keys.push(match mount {
                Mount::Bind(b) => MountKey::Bind {
                    target: &b.target,
                    source: &b.source,
                    readonly: b.read_only,
                    input: self.mount_input(&b.from, &b.source, name).await?,
                },
                Mount::Cache(c) => MountKey::Cache {
                    target: &c.target,
                    id: c.llb_id(),
                    sharing: c.sharing.as_str(),
                    readonly: c.read_only,
                    from: match &c.from {
                        Some(from) => Some(self.mount_input(from, &c.source, name).await?),
                        None => None,
                    },
                    source: &c.source,
                    mode: c.mode,
                    uid: c.uid,
                    gid: c.gid,
                },
                Mount::Tmpfs(t) => MountKey::Tmpfs {
                    target: &t.target,
                    size: t.size,
                },
                Mount::Secret(s) => MountKey::Secret {
                    id: &s.id,
                    target: s.target.as_deref(),
                    env: s.env.as_deref(),
                    required: s.required,
                    mode: s.mode,
                    uid: s.uid,
                    gid: s.gid,
                },
                Mount::Ssh(s) => MountKey::Ssh {
                    id: s.id.as_deref(),
                    target: &s.target,
                    required: s.required,
                    mode: s.mode,
                    uid: s.uid,
                    gid: s.gid,
                },
            });
        }
        Ok(keys)
    }

    /// Copies exactly the files `source` selects in `from` into a new directory of the work
    /// directory; returns the path to mount (a directory, or a file for a file source).
    async fn materialize(
        &mut self,
        from: &CopyFrom,
        source: &str,
        name: &str,
        line: usize,
    ) -> Result<PathBuf, Error> {
        let what = format!("{name}: --mount source {source}");
        let src = selection_source(source);
        // Owners are kept from a stage or image; a directory's files belong to 0:0, as BuildKit's
        // client sends a local context.
        let keep_owner = match from {
            CopyFrom::Context => false,
            CopyFrom::NamedContext(ctx_name) => !matches!(
                self.request.named_contexts.get(ctx_name),
                Some(NamedContext::Dir(_))
            ),
            _ => true,
        };
        let (src_root, selection) = match from {
            CopyFrom::Context => {
                let ctx = self.request.context.clone();
                let sel = self.select(&ctx, std::slice::from_ref(&src), true, &[], &what)?;
                (ctx, sel)
            }
            CopyFrom::NamedContext(ctx_name) => {
                match self.request.named_contexts.get(ctx_name).cloned() {
                    Some(NamedContext::Dir(dir)) => {
                        let sel =
                            self.select(&dir, std::slice::from_ref(&src), false, &[], &what)?;
                        (dir, sel)
                    }
                    _ => {
                        let idx = self.image_fs(ctx_name, true).await?;
                        let root = self.ensure_fs(Target::Image(idx)).await?;
                        let sel =
                            self.select(&root, std::slice::from_ref(&src), false, &[], &what)?;
                        (root, sel)
                    }
                }
            }
            CopyFrom::Stage(j) => {
                let root = self.ensure_fs(Target::Stage(*j)).await?;
                let sel = self.select(&root, std::slice::from_ref(&src), false, &[], &what)?;
                (root, sel)
            }
            CopyFrom::Image(reference) => {
                let idx = self.image_fs(reference, false).await?;
                let root = self.ensure_fs(Target::Image(idx)).await?;
                let sel = self.select(&root, std::slice::from_ref(&src), false, &[], &what)?;
                (root, sel)
            }
        };
        let is_dir = selection
            .sources
            .first()
            .and_then(|s| s.matches.first())
            .is_none_or(|m| m.is_dir());
        let dest_root = self.new_dir("bind")?;
        let dest = if is_dir { "/m/" } else { "/m" };
        let opts = CopyOptions {
            chown: None,
            keep_owner,
            chmod: None,
            extract_archives: false,
            workdir: "/".into(),
        };
        let (root, dest_owned) = (dest_root.clone(), dest.to_owned());
        super::blocking(move || {
            context::copy_into(&selection, &src_root, &root, &dest_owned, &opts)
        })
        .await?
        .map_err(|err| step_error(name, line, format!("--mount source {source}: {err}")))?;
        Ok(dest_root.join("m"))
    }

    /// Prepares everything a RUN step's mounts need, in Dockerfile order.
    pub(super) async fn prepare_run(
        &mut self,
        step: &Step,
        mounts: &[Mount],
        network: Network,
        security: Security,
        name: &str,
    ) -> Result<Prepared, Error> {
        let (sandbox_network, insecure) = self.run_isolation(step, network, security, name)?;
        let mut prepared = Prepared {
            network: sandbox_network,
            insecure,
            ..Prepared::default()
        };
        for mount in mounts {
            match mount {
                Mount::Bind(b) => {
                    let source = self
                        .materialize(&b.from, &b.source, name, step.line)
                        .await?;
                    prepared.mounts.push(sandbox::Mount {
                        target: b.target.clone(),
                        kind: sandbox::MountKind::Bind { source },
                        readonly: b.read_only,
                    });
                }
                Mount::Cache(c) => {
                    let lease = self.cache_mount(c, name, step.line).await?;
                    prepared.mounts.push(sandbox::Mount {
                        target: c.target.clone(),
                        kind: sandbox::MountKind::Bind {
                            source: lease.path.clone(),
                        },
                        readonly: c.read_only,
                    });
                    prepared._leases.push(lease);
                }
                Mount::Tmpfs(t) => prepared.mounts.push(sandbox::Mount {
                    target: t.target.clone(),
                    kind: sandbox::MountKind::Tmpfs { size: t.size },
                    readonly: false,
                }),
                Mount::Secret(s) => self.secret_mount(s, &mut prepared, name, step.line)?,
                Mount::Ssh(s) => {
                    if let Some(mount) = self.ssh_mount(s, name, step.line)? {
                        prepared.mounts.push(mount);
                    }
                }
            }
        }
        Ok(prepared)
    }

    /// Acquires the instance of cache mount `c`, filled when it is new: from the imported
    /// caches' contents of the mount when there are any, else from its `from=` source.
    async fn cache_mount(
        &mut self,
        c: &dockerfile::CacheMount,
        name: &str,
        line: usize,
    ) -> Result<Lease, Error> {
        let fail = |message: String| step_error(name, line, message);
        let store = match &self.request.run.cache_mounts {
            Some(dir) => CacheMounts::new(dir),
            None => CacheMounts::new(self.request.work_dir.join("cache-mounts")),
        };
        let id = c.llb_id();
        let seed = match &c.from {
            Some(from) if !store.exists(&id) => {
                Some(self.materialize(from, &c.source, name, line).await?)
            }
            _ => None,
        };
        let imported = self.imported_mount_contents(&store, &id, name).await;
        // A seed from a cache that cannot be unpacked (garbage, a refused entry, a
        // limit) is left out, as any unusable cache blob: the mount starts empty.
        let refused = std::cell::RefCell::new(None);
        let fill = |dir: &Path| -> std::io::Result<()> {
            let Some((file, media_type, limits)) = &imported else {
                return Ok(());
            };
            let reader = std::fs::File::open(file.path())?;
            if let Err(err) = crate::mounts::fill(dir, reader, media_type, limits) {
                crate::mounts::clear(dir)?;
                *refused.borrow_mut() = Some(err.to_string());
            }
            Ok(())
        };
        let lease = tokio::task::block_in_place(|| {
            store.acquire(&id, c.sharing, &mut |dir| {
                if imported.is_some() {
                    return fill(dir);
                }
                init_cache_mount(dir, seed.as_deref(), c)
            })
        })
        .map_err(|err| {
            fail(format!(
                "cache mount {id} (under {}): {err}",
                store.dir().display()
            ))
        })?;
        // An instance that exists but is empty is filled in place.
        if !lease.created && imported.is_some() && store.is_empty(&id) {
            tokio::task::block_in_place(|| fill(&lease.path)).map_err(|err| {
                fail(format!(
                    "filling cache mount {id} from the imported cache: {err}"
                ))
            })?;
        }
        if let (Some(reason), Some(desc)) =
            (refused.take(), self.request.run.cache_mount_seeds.get(&id))
        {
            self.unusable_seed(&id, &desc.digest, &reason);
        }
        Ok(lease)
    }

    /// The imported caches' contents of cache mount `id`, fetched, when its instance here is
    /// empty; a blob that cannot be fetched is warned about and left out.
    async fn imported_mount_contents(
        &mut self,
        store: &CacheMounts,
        id: &str,
        name: &str,
    ) -> Option<(tempfile::NamedTempFile, String, crate::layer::LayerLimits)> {
        let desc = self.request.run.cache_mount_seeds.get(id)?;
        if !store.is_empty(id) {
            return None;
        }
        let limits = crate::layer::LayerLimits::for_blob(&self.request.limits, desc.size);
        match self.fetch_mount_seed(desc, id, name).await {
            Ok((file, media_type)) => Some((file, media_type, limits)),
            Err(err) => {
                self.unusable_seed(id, &desc.digest, &err.to_string());
                None
            }
        }
    }

    /// A `RUN --mount=type=secret`: its value as an env variable, a file, or both; nothing for
    /// an optional secret that was not given.
    fn secret_mount(
        &self,
        s: &dockerfile::SecretMount,
        prepared: &mut Prepared,
        name: &str,
        line: usize,
    ) -> Result<(), Error> {
        let fail = |message: String| step_error(name, line, message);
        let Some(value) = self.secret_value(s, name, line)? else {
            return Ok(());
        };
        if let Some(env) = &s.env {
            let text = String::from_utf8(value.clone()).map_err(|_| {
                fail(format!(
                    "secret {} is not valid UTF-8 and cannot be given as env {env}; mount it as a file instead",
                    s.id
                ))
            })?;
            prepared.env.push((env.clone(), text));
        }
        let Some(target) = &s.target else {
            return Ok(());
        };
        if prepared._secrets.is_none() {
            prepared._secrets =
                Some(secret_dir().map_err(|err| {
                    fail(format!("creating a directory for secret files: {err}"))
                })?);
        }
        let dir = prepared._secrets.as_ref().expect("created above").path();
        let file = dir.join(format!("{}", prepared.mounts.len()));
        let written = std::fs::write(&file, &value)
            .and_then(|()| chmod(&file, s.mode))
            .and_then(|()| chown(&file, s.uid, s.gid));
        written.map_err(|err| fail(format!("preparing secret {} for {target}: {err}", s.id)))?;
        let target = if target.starts_with('/') {
            target.clone()
        } else {
            format!("/{target}")
        };
        prepared.mounts.push(sandbox::Mount {
            target,
            kind: sandbox::MountKind::Bind { source: file },
            readonly: true,
        });
        Ok(())
    }

    /// A `RUN --mount=type=ssh`: the agent's socket, or nothing for an optional agent that was
    /// not given.
    fn ssh_mount(
        &self,
        s: &dockerfile::SshMount,
        name: &str,
        line: usize,
    ) -> Result<Option<sandbox::Mount>, Error> {
        let id = s.agent_id();
        let Some(socket) = self.request.run.ssh.get(id) else {
            if s.required {
                return Err(step_error(
                    name,
                    line,
                    format!(
                        "SSH agent {id} is required by --mount=type=ssh: pass --ssh {id} (the agent of SSH_AUTH_SOCK) or --ssh {id}=/path/to/agent.sock"
                    ),
                ));
            }
            return Ok(None);
        };
        Ok(Some(sandbox::Mount {
            target: s.target.clone(),
            kind: sandbox::MountKind::Bind {
                source: socket.clone(),
            },
            readonly: false,
        }))
    }

    /// Warns that the imported contents of cache mount `id` (blob `digest`) cannot be used.
    fn unusable_seed(&self, id: &str, digest: &cache_core::Digest, reason: &str) {
        self.progress().event(Event::Warning(format!(
            "cache blob {digest} from {} (contents of cache mount {id}) is unusable ({reason}): \
             the mount starts empty",
            self.blob_source(digest)
        )));
    }

    /// Fetches an imported cache mount's blob into a temporary file of the work directory.
    async fn fetch_mount_seed(
        &mut self,
        desc: &Descriptor,
        id: &str,
        name: &str,
    ) -> Result<(tempfile::NamedTempFile, String), Error> {
        let what = |message: String| Error::CacheMountSeed {
            step: name.to_owned(),
            id: id.to_owned(),
            digest: desc.digest.clone(),
            message,
        };
        let blob = self
            .blobs
            .open(&desc.digest)
            .await
            .map_err(|err| what(err.to_string()))?
            .ok_or_else(|| what("no cache has the blob".into()))?;
        let mut reader = super::blocking_reader(blob.verified(desc.digest.clone()));
        let file = tempfile::NamedTempFile::new_in(&self.request.work_dir)
            .map_err(|err| what(err.to_string()))?;
        let mut out = file.reopen().map_err(|err| what(err.to_string()))?;
        super::blocking(move || std::io::copy(&mut reader, &mut out))
            .await?
            .map_err(|err| what(err.to_string()))?;
        Ok((file, desc.media_type.clone()))
    }

    /// Reads secret `s`; `None` when it was not given and is optional.
    fn secret_value(
        &self,
        s: &dockerfile::SecretMount,
        name: &str,
        line: usize,
    ) -> Result<Option<Vec<u8>>, Error> {
        let Some(source) = self.request.run.secrets.get(&s.id) else {
            if s.required {
                return Err(step_error(
                    name,
                    line,
                    format!(
                        "secret {} is required by --mount=type=secret but was not given: pass --secret id={},src=FILE or --secret id={},env=VAR",
                        s.id, s.id, s.id
                    ),
                ));
            }
            return Ok(None);
        };
        match source {
            SecretSource::File(path) => std::fs::read(path).map(Some).map_err(|err| {
                step_error(
                    name,
                    line,
                    format!("reading secret {} from {}: {err}", s.id, path.display()),
                )
            }),
            SecretSource::Env(var) => match std::env::var_os(var) {
                Some(value) => Ok(Some(
                    std::os::unix::ffi::OsStrExt::as_bytes(value.as_os_str()).to_vec(),
                )),
                None if s.required => Err(step_error(
                    name,
                    line,
                    format!(
                        "secret {} comes from env variable {var}, which is not set",
                        s.id
                    ),
                )),
                None => Ok(None),
            },
        }
    }
}

/// The ids (`<namespace>/<id>`) of every cache mount the plan's RUN steps use, sorted.
pub(super) fn cache_mount_ids(plan: &dockerfile::Plan) -> Vec<String> {
    let mut ids = std::collections::BTreeSet::new();
    for step in plan.stages.iter().flat_map(|s| &s.steps) {
        if let dockerfile::Op::Run { mounts, .. } = &step.op {
            for mount in mounts {
                if let Mount::Cache(c) = mount {
                    ids.insert(c.llb_id());
                }
            }
        }
    }
    ids.into_iter().collect()
}

/// Copies the tree `src` into the existing directory `dest` (contents, modes, symlinks as links).
fn copy_tree(src: &Path, dest: &Path) -> std::io::Result<()> {
    for entry in walkdir::WalkDir::new(src).min_depth(1).sort_by_file_name() {
        let entry = entry.map_err(std::io::Error::other)?;
        let rel = entry
            .path()
            .strip_prefix(src)
            .map_err(std::io::Error::other)?;
        let to = dest.join(rel);
        let kind = entry.file_type();
        if kind.is_dir() {
            std::fs::create_dir(&to)?;
            std::fs::set_permissions(&to, entry.metadata()?.permissions())?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &to)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}
