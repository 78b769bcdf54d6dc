//! Making filesystems real: unpacking layer chains (shared, overlaid or copied), base images
//! and named contexts, and the outputs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use cache_core::{Descriptor, Digest};
use futures_util::future::BoxFuture;

use super::execute::snapshot;
use super::{
    Blobs, Engine, Error, Event, Fs, LayerUse, SlotState, Target, blocking, blocking_reader, keys,
    link, track_transfer,
};
use crate::context::{self, CopyOptions};
use crate::dockerfile::{self};
use crate::layer::{self, Snapshot};

impl Engine<'_> {
    /// `FROM <directory context>`: the directory's files as one layer on an empty base.
    pub(super) async fn dir_base(
        &mut self,
        name: &str,
        dir: &Path,
        role: LayerUse,
    ) -> Result<Fs, Error> {
        let selection = self.select(dir, &[".".to_owned()], false, &[], name)?;
        // BuildKit's key of a local source is session-scoped: a key of our own.
        let content = self.root_record(keys::record_digest(&selection.checksum, -1));
        let map = cache_llb::own_cache_map("buildcache.own.v2", b"from-dir", 1);
        let digest = keys::record_digest(&map.digest, 0);
        let found = self.graph.find(&digest, &[("", &[content])]);
        if !self.request.no_cache
            && let Some((record, chain, _)) = self.best_hit(&found).await
        {
            return Ok(Fs {
                records: vec![record],
                chain,
                pending: Vec::new(),
                rootfs: None,
            });
        }
        let rootfs = self.new_dir("rootfs")?;
        let before = snapshot(&rootfs).await?;
        let opts = CopyOptions {
            chown: None,
            keep_owner: false,
            chmod: None,
            extract_archives: false,
            workdir: "/".into(),
        };
        let (sel, src, dst) = (selection.clone(), dir.to_path_buf(), rootfs.clone());
        blocking(move || context::copy_into(&sel, &src, &dst, "/", &opts))
            .await?
            .map_err(Error::context(format!("build context {name}")))?;
        let record = match found.first() {
            Some(&r) => r,
            None => self.graph.add_record(digest, vec![vec![link(content)]]),
        };
        let chain = vec![self.make_layer(&rootfs, before, role).await?];
        self.add_result(record, &chain);
        Ok(Fs {
            records: vec![record],
            chain,
            pending: Vec::new(),
            rootfs: Some(rootfs),
        })
    }

    /// An image used by `COPY --from`, resolved once.
    pub(super) async fn image_fs(
        &mut self,
        reference: &str,
        is_context: bool,
    ) -> Result<usize, Error> {
        if let Some(&idx) = self.image_index.get(reference) {
            return Ok(idx);
        }
        let img = if is_context {
            self.resolve_context_image(reference)?
                .ok_or_else(|| Error::NotAnImage {
                    name: reference.to_owned(),
                })?
        } else {
            self.resolve_image(reference).await?
        };
        let records = self.image_roots(&img);
        self.images.push(Fs {
            records,
            chain: img.layers.clone(),
            pending: Vec::new(),
            rootfs: None,
        });
        let idx = self.images.len() - 1;
        self.image_index.insert(reference.to_owned(), idx);
        Ok(idx)
    }

    pub(super) fn fs_mut(&mut self, target: Target) -> &mut Fs {
        match target {
            Target::Stage(si) => &mut self.stages[si].fs,
            Target::Image(i) => &mut self.images[i],
        }
    }

    /// Materializes the filesystem of `target`: unpacks its known chain and runs what is
    /// pending on top. Returns the directory.
    pub(super) fn ensure_fs(&mut self, target: Target) -> BoxFuture<'_, Result<PathBuf, Error>> {
        Box::pin(async move {
            // Pending steps that ran meanwhile (through another stage) shorten the list.
            let mut ran_upto = None;
            {
                let fs = self.fs_mut(target);
                let pending = fs.pending.clone();
                for (pos, key) in pending.iter().enumerate() {
                    if matches!(self.slots.get(key).map(|s| s.state), Some(SlotState::Ran)) {
                        ran_upto = Some(pos);
                    }
                }
            }
            if let Some(pos) = ran_upto {
                let key = self.fs_mut(target).pending[pos];
                let record = self.slots[&key].records[0];
                let chain = match self.graph.best_result(record) {
                    Some(result) => self
                        .graph
                        .chain_blobs(result.layer)
                        .into_iter()
                        .cloned()
                        .collect(),
                    // A step that ran on an empty base and changed nothing has no result.
                    None => self.fs_mut(target).chain.clone(),
                };
                let fs = self.fs_mut(target);
                fs.chain = chain;
                fs.pending.drain(..=pos);
                if let Some(dir) = fs.rootfs.take() {
                    remove_dir(&dir);
                }
            }
            let dir = match self.fs_mut(target).rootfs.clone() {
                Some(dir) => dir,
                None => {
                    let chain = self.fs_mut(target).chain.clone();
                    let dir = self.new_dir("rootfs")?;
                    let vertex = self.current_vertex(target);
                    let started = Instant::now();
                    self.unpack_shared(target, &chain, &dir, &vertex).await?;
                    if vertex == "unpack" {
                        self.progress().event(Event::Done {
                            vertex,
                            duration: started.elapsed(),
                        });
                    }
                    self.fs_mut(target).rootfs = Some(dir.clone());
                    dir
                }
            };
            while let Some(&key) = self.fs_mut(target).pending.first() {
                self.execute(key, target, &dir).await?;
                self.fs_mut(target).pending.remove(0);
            }
            Ok(dir)
        })
    }

    /// The vertex that unpacking `target` is part of, started so that displays know its name:
    /// the first step pending on it, else the step being resolved or run.
    pub(super) fn current_vertex(&mut self, target: Target) -> String {
        let key = self.fs_mut(target).pending.first().copied();
        let (vertex, name) = match key {
            Some((s, k)) => (format!("step:{s}:{k}"), self.slots[&(s, k)].name.clone()),
            None => match &self.active {
                Some(active) => active.clone(),
                None => ("unpack".to_owned(), "unpacking layers".to_owned()),
            },
        };
        self.progress().event(Event::Start {
            vertex: vertex.clone(),
            name,
        });
        vertex
    }

    /// Unpacks the filesystem of stage `target` into `dest`: into a directory beside it first
    /// (or in the work directory when its parent is not writable), renamed into place when
    /// `dest` is absent or empty, else laid over it.
    pub(super) async fn unpack_output(&mut self, target: usize, dest: &Path) -> Result<(), Error> {
        if !self.stages[target].fs.pending.is_empty() {
            self.ensure_fs(Target::Stage(target)).await?;
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent)
            .map_err(Error::io(format!("creating {}", parent.display())))?;
        let staging = tempfile::Builder::new()
            .prefix(".buildcache-output-")
            .tempdir_in(&parent)
            .or_else(|_| tempfile::tempdir_in(&self.request.work_dir))
            .map_err(Error::io(format!(
                "creating a directory in {}",
                parent.display()
            )))?;
        let vertex = "output:local".to_owned();
        let started = Instant::now();
        self.progress().event(Event::Start {
            vertex: vertex.clone(),
            name: "exporting to client directory".into(),
        });
        let chain = self.stages[target].fs.chain.clone();
        self.unpack(&chain, staging.path(), &vertex, false).await?;
        // A new directory gets the usual mode, not the private one of a temporary directory.
        let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
        std::fs::set_permissions(staging.path(), mode).map_err(Error::io(format!(
            "setting the mode of {}",
            staging.path().display()
        )))?;
        let empty = match std::fs::read_dir(dest) {
            Ok(mut entries) => entries.next().is_none(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => true,
            Err(err) => return Err(Error::io(format!("reading {}", dest.display()))(err)),
        };
        let moved = empty && std::fs::rename(staging.path(), dest).is_ok();
        if !moved {
            std::fs::create_dir_all(dest)
                .map_err(Error::io(format!("creating {}", dest.display())))?;
            let (top, dest, tmp) = (
                staging.path().to_path_buf(),
                dest.to_path_buf(),
                self.request.work_dir.clone(),
            );
            blocking(move || lay_over(&top, &dest, &tmp))
                .await?
                .map_err(Error::layer("writing the output"))?;
        }
        self.progress().event(Event::Done {
            vertex,
            duration: started.elapsed(),
        });
        Ok(())
    }

    /// Unpacks `chain` into the empty `dir` for `target`. When another target still to be
    /// materialized runs steps on the same chain (two stages `FROM` one base), the unpacked tree
    /// is copied aside once and that copy serves the other target instead of a second unpack.
    pub(super) async fn unpack_shared(
        &mut self,
        target: Target,
        chain: &[Descriptor],
        dir: &Path,
        vertex: &str,
    ) -> Result<(), Error> {
        let key: Vec<Digest> = chain.iter().map(|desc| desc.digest.clone()).collect();
        let shared = !chain.is_empty() && self.others_waiting_on(target, chain);
        let pristine = self.work.unpacked.get(&key).cloned();
        // A stage that ended on this chain holds it already, and no step changes it any more.
        let finished = match pristine {
            None if !chain.is_empty() => self.finished_dir(chain),
            _ => None,
        };
        if (shared || pristine.is_some() || finished.is_some()) && self.overlays_supported() {
            let lower = match pristine.or(finished) {
                Some(lower) => lower,
                None => {
                    let lower = self.new_dir("lower")?;
                    self.unpack(chain, &lower, vertex, true).await?;
                    self.work.unpacked.insert(key, lower.clone());
                    lower
                }
            };
            let started = Instant::now();
            let (upper, work) = (self.new_dir("upper")?, self.new_dir("overlay-work")?);
            match layer::overlay::mount(&lower, &upper, &work, dir) {
                Ok(()) => self.status_done(vertex, "mounting the unpacked base (overlay)", started),
                Err(err) => {
                    // Overlays stack two deep at most; a deeper one gets a copy.
                    tracing::debug!("overlay on {} refused ({err}): copying", dir.display());
                    clone_unpacked(lower, dir.to_path_buf()).await?;
                    self.status_done(
                        vertex,
                        "copying the base unpacked for another stage",
                        started,
                    );
                }
            }
            return Ok(());
        }
        if let Some(finished) = finished {
            let started = Instant::now();
            clone_unpacked(finished, dir.to_path_buf()).await?;
            self.status_done(vertex, "copying the filesystem of the base stage", started);
            return Ok(());
        }
        if let Some(pristine) = pristine {
            let started = Instant::now();
            let text = if shared {
                clone_unpacked(pristine, dir.to_path_buf()).await?;
                "copying the base unpacked for another stage"
            } else {
                self.work.unpacked.remove(&key);
                let to = dir.to_path_buf();
                blocking(move || std::fs::rename(&pristine, &to))
                    .await?
                    .map_err(Error::io("moving an unpacked base"))?;
                "reusing the base unpacked for another stage"
            };
            self.status_done(vertex, text, started);
            return Ok(());
        }
        self.unpack(chain, dir, vertex, true).await?;
        if shared {
            let started = Instant::now();
            let pristine = self.new_dir("unpacked")?;
            clone_unpacked(dir.to_path_buf(), pristine.clone()).await?;
            self.work.unpacked.insert(key, pristine);
            self.status_done(
                vertex,
                "copying the unpacked base for another stage",
                started,
            );
        }
        Ok(())
    }

    /// The materialized directory of a stage whose filesystem is `chain` and stays so: every
    /// step of the stage was resolved and nothing is pending on it.
    pub(super) fn finished_dir(&self, chain: &[Descriptor]) -> Option<PathBuf> {
        let plan = &self.plan.stages;
        self.stages.iter().enumerate().find_map(|(si, state)| {
            let fs = &state.fs;
            let done = (0..plan[si].steps.len()).all(|k| self.slots.contains_key(&(si, k)));
            let finished = done && fs.pending.is_empty() && fs.chain == chain;
            fs.rootfs.clone().filter(|_| finished)
        })
    }

    /// Whether overlays can be mounted in the work directory, probed once per build.
    pub(super) fn overlays_supported(&mut self) -> bool {
        *self
            .work
            .overlays
            .get_or_insert_with(|| layer::overlay::supported(&self.request.work_dir))
    }

    /// A finished status line of `vertex`, timed from `started`.
    pub(super) fn status_done(&self, vertex: &str, text: &str, started: Instant) {
        self.progress().event(Event::Status {
            vertex: vertex.to_owned(),
            text: text.to_owned(),
            done: Some(started.elapsed()),
        });
    }

    /// Whether a target other than `target`, not materialized yet, is on `chain` with steps to
    /// run or still to look up: a started stage or image with pending steps or steps not looked
    /// up yet, or a stage not started yet whose base is a started stage without steps (two
    /// stages `FROM` one `runtime` stage).
    pub(super) fn others_waiting_on(&self, target: Target, chain: &[Descriptor]) -> bool {
        let plan = &self.plan.stages;
        let unresolved =
            |si: usize| (0..plan[si].steps.len()).any(|k| !self.slots.contains_key(&(si, k)));
        let stages = self.stages.iter().enumerate();
        let stages = stages.map(|(i, s)| (Target::Stage(i), &s.fs, unresolved(i)));
        let images = self.images.iter().enumerate();
        let images = images.map(|(i, fs)| (Target::Image(i), fs, false));
        let started = stages.chain(images).any(|(other, fs, unresolved)| {
            other != target
                && fs.rootfs.is_none()
                && (unresolved || !fs.pending.is_empty())
                && fs.chain == chain
        });
        let later = (self.stages.len()..plan.len()).any(|si| {
            let mut cur = si;
            while let dockerfile::Base::Stage(j) = plan[cur].base {
                if !plan[j].steps.is_empty() {
                    return false;
                }
                if let Some(started) = self.stages.get(j) {
                    return !plan[si].steps.is_empty() && started.fs.chain == chain;
                }
                cur = j;
            }
            false
        });
        started || later
    }

    /// Unpacks `chain` into `dir`, fetching blobs into the root store first; `report` shows
    /// each layer in the progress.
    pub(super) async fn unpack(
        &mut self,
        chain: &[Descriptor],
        dir: &Path,
        vertex: &str,
        report: bool,
    ) -> Result<(), Error> {
        for desc in chain {
            if !self.blobs.in_root(desc).await {
                let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let id = desc.digest.to_string();
                let fetch = self.blobs.fetch_to_root_counted(desc, &counter);
                let fetched =
                    track_transfer(self.progress(), vertex, &id, desc.size, &counter, fetch)
                        .await
                        .map_err(|err| Error::BadBlob {
                            digest: desc.digest.clone(),
                            message: err.to_string(),
                        })?;
                if fetched {
                    self.blobs_fetched += 1;
                }
            }
            self.announce_layer(desc);
            let started = Instant::now();
            // Every failure (garbage, a refused entry, a limit) makes the blob unusable: a
            // cache's results that need it become misses, an image's layer fails the build.
            apply_from_root(&self.blobs, desc, dir, &self.request.limits)
                .await?
                .map_err(|err| Error::BadBlob {
                    digest: desc.digest.clone(),
                    message: err.to_string(),
                })?;
            if report {
                self.progress().event(Event::Status {
                    vertex: vertex.to_owned(),
                    text: format!("extracting {}", desc.digest),
                    done: Some(started.elapsed()),
                });
            }
        }
        Ok(())
    }
}

/// Lays the tree `top` over `root` as a layer would be (directories of `top` replace the
/// metadata of those in `root`, files replace files), through a layer file in `tmp_dir`.
pub(super) fn lay_over(top: &Path, root: &Path, tmp_dir: &Path) -> Result<(), layer::Error> {
    let changes = layer::diff(&Snapshot::default(), top)?;
    let (file, info) =
        layer::write_layer_file(top, &changes, layer::Compression::Uncompressed, tmp_dir)?;
    let reader = std::fs::File::open(file.path())
        .map_err(|err| layer::Error::io("open", file.path(), err))?;
    layer::apply_layer(reader, &info.media_type, root, &layer::LayerLimits::NONE)?;
    Ok(())
}

/// Copies the unpacked tree `from` into the empty directory `to`, off the async runtime.
pub(super) async fn clone_unpacked(from: PathBuf, to: PathBuf) -> Result<(), Error> {
    blocking(move || layer::clone_tree(&from, &to))
        .await?
        .map_err(Error::layer("copying an unpacked base"))
}

/// Removes a directory of the work directory, after taking down the overlays mounted in it.
pub(super) fn remove_dir(dir: &Path) {
    if let Err(err) = layer::overlay::unmount_under(dir) {
        tracing::warn!("unmounting the overlays under {}: {err}", dir.display());
    }
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!("removing {}: {err}", dir.display());
        }
        _ => {}
    }
}

/// Unpacks `chain` into `dest` (for `--output type=local`), fetching blobs into the root store.
/// Build with [`BuildRequest::unpack_target`](super::BuildRequest::unpack_target) first, so
/// that a bad cache layer was a miss.
pub async fn unpack_chain(
    chain: &[Descriptor],
    blobs: &Blobs,
    dest: &Path,
    limits: &cache_core::limits::Limits,
) -> Result<(), Error> {
    for desc in chain {
        blobs
            .fetch_to_root(desc)
            .await
            .map_err(Error::store(format!("fetching layer {}", desc.digest)))?;
        apply_from_root(blobs, desc, dest, limits)
            .await?
            .map_err(Error::layer(format!("extracting layer {}", desc.digest)))?;
    }
    Ok(())
}

/// Applies layer `desc` from the root store onto `dest`, verifying its digest on the way: the
/// outer error is the store's, the inner one the layer's own (which makes the blob unusable).
async fn apply_from_root(
    blobs: &Blobs,
    desc: &Descriptor,
    dest: &Path,
    limits: &cache_core::limits::Limits,
) -> Result<Result<(), layer::Error>, Error> {
    let blob = blobs
        .root
        .read(&desc.digest)
        .await
        .map_err(Error::store(format!("reading layer {}", desc.digest)))?
        .ok_or_else(|| Error::MissingLayer {
            digest: desc.digest.clone(),
        })?;
    let reader = blocking_reader(blob.verified(desc.digest.clone()));
    let media_type = desc.media_type.clone();
    let root = dest.to_path_buf();
    let limits = layer::LayerLimits::for_blob(limits, desc.size);
    blocking(move || layer::apply_layer(reader, &media_type, &root, &limits).map(|_| ())).await
}
