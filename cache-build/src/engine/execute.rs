//! Running a step that missed: RUN in the sandbox, COPY and ADD, and the layer it makes.

use std::path::Path;
use std::time::Instant;

use cache_core::descriptor::annotation;
use cache_core::{Descriptor, Digest};

use super::materialize::lay_over;
use super::{
    Engine, Error, Event, Extra, LayerUse, SlotState, StepReport, Target, blocking, cut_command,
    file_blob, step_error,
};
use crate::context::{self, CopyOptions, HashCache};
use crate::dockerfile::{self, CopySource, Op, RunCommand, Step};
use crate::layer::{self, Snapshot};
use crate::sandbox;

impl Engine<'_> {
    /// Runs pending slot `key` on `dir`, the materialized filesystem of `target`.
    pub(super) async fn execute(
        &mut self,
        key: (usize, usize),
        target: Target,
        dir: &Path,
    ) -> Result<(), Error> {
        let (si, k) = key;
        let step = self.plan.stages[si].steps[k].clone();
        let vertex = format!("step:{si}:{k}");
        let (name, extra) = {
            let slot = &self.slots[&key];
            (slot.name.clone(), slot.extra.clone())
        };
        let started = Instant::now();
        self.progress().event(Event::Start {
            vertex: vertex.clone(),
            name: name.clone(),
        });
        if let Some(reason) = self.slots[&key].miss.clone() {
            self.progress().event(Event::Miss {
                vertex: vertex.clone(),
                reason,
            });
        }
        let before = snapshot(dir).await?;
        let previous = self.active.replace((vertex.clone(), name.clone()));
        let outcome = self.run_op(&step, &extra, dir, &vertex, &name).await;
        self.active = previous;
        if let Err(err) = outcome {
            self.progress().event(Event::Error {
                vertex,
                message: err.to_string(),
            });
            return Err(err);
        }
        // Every step that runs adds a layer, an empty one when nothing changed, as in BuildKit,
        // whose history marks every RUN, COPY, ADD and WORKDIR as a layer.
        let role = LayerUse::of_stage(&self.plan, si);
        let desc = self.make_layer(dir, before, role).await?;
        let fs = self.fs_mut(target);
        fs.chain.push(desc);
        let chain = fs.chain.clone();
        let record = self.slots[&key].records[0];
        self.add_result(record, &chain);
        for copy in self.slots[&key].linked_copies.clone() {
            self.add_result(copy, &chain[chain.len() - 1..]);
        }
        let duration = started.elapsed();
        self.progress().event(Event::Done { vertex, duration });
        let slot = self.slots.get_mut(&key).expect("slot exists");
        slot.state = SlotState::Ran;
        slot.duration = duration;
        slot.reported = true;
        let slot_digest = slot.digest.clone();
        let miss = self.slots[&key].miss.clone();
        self.reports.push(StepReport {
            name,
            cached: false,
            cache_source: None,
            duration_ms: duration.as_millis() as u64,
            finished_at: Instant::now(),
            miss,
            key: Some(slot_digest),
        });
        Ok(())
    }

    pub(super) async fn run_op(
        &mut self,
        step: &Step,
        extra: &Extra,
        dir: &Path,
        vertex: &str,
        name: &str,
    ) -> Result<(), Error> {
        match &step.op {
            Op::Run {
                command,
                heredocs,
                mounts: run_mounts,
                network,
                security,
            } => {
                let prepared = self
                    .prepare_run(step, run_mounts, *network, *security, name)
                    .await?;
                let mut mounts = self.heredoc_mounts(step, heredocs, name)?;
                mounts.extend(prepared.mounts.iter().cloned());
                let mut env = step.env.clone();
                env.extend(prepared.env.iter().cloned());
                let spec = sandbox::RunSpec {
                    rootfs: dir.to_path_buf(),
                    argv: run_argv(step, command),
                    env,
                    cwd: step.workdir.clone(),
                    user: step.user.clone(),
                    hostname: sandbox::DEFAULT_HOSTNAME.to_owned(),
                    extra_hosts: self.request.add_hosts.clone(),
                    stdin: None,
                    network: prepared.network,
                    insecure: prepared.insecure,
                };
                let progress = self.services.progress;
                let vertex_owned = vertex.to_owned();
                let outcome = tokio::task::block_in_place(|| {
                    sandbox::run_with_mounts(&spec, &mounts, &mut |stream, bytes| {
                        progress.event(Event::Log {
                            vertex: vertex_owned.clone(),
                            stream,
                            bytes: bytes.to_vec(),
                        })
                    })
                })
                .map_err(|err| step_error(name, step.line, err.to_string()))?;
                if outcome.status != 0 {
                    return Err(Error::Step {
                        name: name.to_owned(),
                        line: step.line,
                        message: format!(
                            "process {:?} did not complete successfully: exit code: {}",
                            cut_command(&spec.argv.join(" ")),
                            outcome.status
                        ),
                        exit_code: Some(outcome.status),
                    });
                }
                Ok(())
            }
            Op::Workdir { path } => {
                let opts = CopyOptions {
                    chown: step.user.clone(),
                    keep_owner: false,
                    chmod: None,
                    extract_archives: false,
                    workdir: "/".into(),
                };
                let (root, path) = (dir.to_path_buf(), path.clone());
                let res = blocking(move || context::make_dir_all(&root, &path, &opts)).await?;
                res.map_err(|err| step_error(name, step.line, err.to_string()))?;
                Ok(())
            }
            Op::Copy(copy) => self.copy_step(step, copy, extra, dir, name).await,
        }
    }

    /// The files of a RUN's heredocs with a mount path, written into the work directory and
    /// bind-mounted read-only: `RUN <<EOF` with a `#!` body runs the body as a file, as
    /// BuildKit does.
    fn heredoc_mounts(
        &mut self,
        step: &Step,
        heredocs: &[dockerfile::Heredoc],
        name: &str,
    ) -> Result<Vec<sandbox::Mount>, Error> {
        let mut mounts = Vec::new();
        for heredoc in heredocs {
            let Some(target) = &heredoc.mount_path else {
                continue;
            };
            let dir = self.new_dir("heredoc")?;
            let file = dir.join(&heredoc.name);
            write_executable(&file, &heredoc.content).map_err(|err| {
                step_error(
                    name,
                    step.line,
                    format!("writing heredoc {}: {err}", heredoc.name),
                )
            })?;
            mounts.push(sandbox::Mount {
                target: target.clone(),
                kind: sandbox::MountKind::Bind { source: file },
                readonly: true,
            });
        }
        Ok(mounts)
    }

    /// Runs a COPY or ADD step onto `dir`: from the context, a stage or an image, then its
    /// heredocs; with `--link`, onto an empty directory laid over `dir` afterwards.
    async fn copy_step(
        &mut self,
        step: &Step,
        copy: &dockerfile::CopyOp,
        extra: &Extra,
        dir: &Path,
        name: &str,
    ) -> Result<(), Error> {
        let opts = CopyOptions {
            chown: copy.chown.clone(),
            // BuildKit keeps the owners of what COPY --from copies; the build context's
            // files belong to 0:0.
            keep_owner: matches!(extra, Extra::Stage(_) | Extra::Image(_)),
            chmod: copy.chmod,
            extract_archives: copy.is_add && copy.downloads.is_empty(),
            workdir: step.workdir.clone(),
        };
        // COPY --link copies onto an empty filesystem, then lays that over the stage, as
        // BuildKit's merge does: missing parents are created afresh (with the copy's owner)
        // and nothing of the stage (an existing directory, a symlink) steers the copy.
        let link_dir = if copy.link {
            Some(self.new_dir("link")?)
        } else {
            None
        };
        let copy_root = link_dir.clone().unwrap_or_else(|| dir.to_path_buf());
        let n_sources = copy.sources.len();
        let dest = if n_sources > 1 && !copy.dest.ends_with('/') {
            format!("{}/", copy.dest)
        } else {
            copy.dest.clone()
        };
        let src = match extra {
            Extra::None => None,
            Extra::Content {
                src_root,
                selection,
                ..
            } => Some((src_root.clone(), selection.clone())),
            Extra::Stage(j) => {
                let src_root = self.ensure_fs(Target::Stage(*j)).await?;
                let sel = self.copy_selection(&src_root, copy, name, step.line)?;
                Some((src_root, sel))
            }
            Extra::Image(i) => {
                let src_root = self.ensure_fs(Target::Image(*i)).await?;
                let sel = self.copy_selection(&src_root, copy, name, step.line)?;
                Some((src_root, sel))
            }
        };
        if let Some((src_root, selection)) = src {
            let (root, dest, opts) = (copy_root.clone(), dest.clone(), opts.clone());
            blocking(move || context::copy_into(&selection, &src_root, &root, &dest, &opts))
                .await?
                .map_err(|err| step_error(name, step.line, err.to_string()))?;
        }
        let inline: Vec<(&String, &String)> = copy
            .sources
            .iter()
            .filter_map(|s| match s {
                CopySource::Inline { name, content } => Some((name, content)),
                CopySource::Path(_) => None,
            })
            .collect();
        if !inline.is_empty() {
            let tmp = self.new_dir("heredoc")?;
            let mut names = Vec::new();
            for (file, content) in inline {
                std::fs::write(tmp.join(file), content).map_err(|err| {
                    step_error(name, step.line, format!("writing heredoc {file}: {err}"))
                })?;
                names.push(file.clone());
            }
            let selection = context::select(&tmp, &names, None, &mut HashCache::in_memory())
                .map_err(|err| step_error(name, step.line, err.to_string()))?;
            let root = copy_root.clone();
            let opts = CopyOptions {
                keep_owner: false,
                ..opts
            };
            let res =
                blocking(move || context::copy_into(&selection, &tmp, &root, &dest, &opts)).await?;
            res.map_err(|err| step_error(name, step.line, err.to_string()))?;
        }
        if let Some(link_dir) = link_dir {
            let (root, tmp_dir) = (dir.to_path_buf(), self.request.work_dir.clone());
            blocking(move || lay_over(&link_dir, &root, &tmp_dir))
                .await?
                .map_err(|err| step_error(name, step.line, err.to_string()))?;
        }
        Ok(())
    }

    pub(super) fn copy_selection(
        &mut self,
        src_root: &Path,
        copy: &dockerfile::CopyOp,
        name: &str,
        line: usize,
    ) -> Result<context::Selection, Error> {
        let (paths, includes) = copy_paths(copy).map_err(|err| step_error(name, line, err))?;
        let exclude = exclude_matcher(&copy.exclude).map_err(|err| step_error(name, line, err))?;
        let selection = context::select_including(
            src_root,
            &paths,
            &includes.iter().map(Option::as_ref).collect::<Vec<_>>(),
            None,
            exclude.as_ref(),
            &mut self.hashes,
            false,
        )
        .map_err(|err| step_error(name, line, err.to_string()))?;
        parents_found(copy, &selection).map_err(|err| step_error(name, line, err))?;
        Ok(selection)
    }

    /// Writes the layer of what changed in `dir` since `before` into the root store (an empty
    /// layer when nothing did) and announces it as `role`.
    pub(super) async fn make_layer(
        &mut self,
        dir: &Path,
        before: Snapshot,
        role: LayerUse,
    ) -> Result<Descriptor, Error> {
        let root = dir.to_path_buf();
        let tmp_dir = self.request.work_dir.clone();
        let compression = self.request.compression;
        let (file, info) = blocking(
            move || -> Result<(tempfile::NamedTempFile, layer::LayerInfo), layer::Error> {
                let changes = layer::diff(&before, &root)?;
                layer::write_layer_file(&root, &changes, compression, &tmp_dir)
            },
        )
        .await?
        .map_err(Error::layer("writing a layer"))?;
        let digest: Digest = info.digest.parse().map_err(|_| {
            Error::other(format!(
                "layer writer gave an invalid digest {}",
                info.digest
            ))
        })?;
        let mut desc = Descriptor::new(info.media_type.clone(), digest, info.size);
        desc.annotations.insert(
            annotation::CREATED_AT.to_owned(),
            cache_core::config::go_time::format(&self.request.now),
        );
        desc.annotations
            .insert(annotation::UNCOMPRESSED.to_owned(), info.diff_id.clone());
        let blob = file_blob(file.path()).await.map_err(Error::io(format!(
            "reading layer {}",
            file.path().display()
        )))?;
        self.blobs
            .root
            .write(&desc, blob)
            .await
            .map_err(Error::store(format!("storing layer {}", desc.digest)))?;
        if role == LayerUse::Target {
            self.target_layers.insert(desc.digest.clone());
        }
        self.announce_layer(&desc);
        Ok(desc)
    }

    /// Tells [`Services::on_layer`] that `desc` is in the root store, and whether it is known
    /// to be in the target's chain.
    pub(super) fn announce_layer(&self, desc: &Descriptor) {
        if let Some(on_layer) = self.services.on_layer {
            let role = if self.target_layers.contains(&desc.digest) {
                LayerUse::Target
            } else {
                LayerUse::Other
            };
            on_layer(desc, role);
        }
    }
}

/// The paths a COPY or ADD selects, and for `COPY --parents` the include matcher of each:
/// the directory before a source's `/./` pivot (else the root), filtered by the rest.
pub(super) fn copy_paths(
    copy: &dockerfile::CopyOp,
) -> Result<(Vec<String>, Vec<Option<dockerfile::IgnoreMatcher>>), String> {
    let mut paths = Vec::new();
    let mut includes = Vec::new();
    for source in &copy.sources {
        let CopySource::Path(path) = source else {
            continue;
        };
        if copy.parents {
            let split = dockerfile::ParentsSource::of(path);
            let include = dockerfile::IgnoreMatcher::from_patterns([split.pattern.as_str()])
                .map_err(|err| format!("COPY --parents {path}: {}", err.message()))?;
            paths.push(split.dir);
            includes.push(Some(include));
        } else {
            paths.push(path.clone());
            includes.push(None);
        }
    }
    Ok((paths, includes))
}

/// `COPY --parents` without wildcards must copy something for each source (BuildKit's
/// required paths).
pub(super) fn parents_found(
    copy: &dockerfile::CopyOp,
    selection: &context::Selection,
) -> Result<(), String> {
    if !copy.parents {
        return Ok(());
    }
    let paths = copy.sources.iter().filter_map(|s| match s {
        CopySource::Path(p) => Some(p),
        CopySource::Inline { .. } => None,
    });
    for (path, selected) in paths.zip(&selection.sources) {
        let split = dockerfile::ParentsSource::of(path);
        let empty = selected.matches.iter().all(|m| m.entries.len() <= 1);
        if let (Some(required), true) = (split.required, empty) {
            return Err(format!(
                "COPY --parents {path}: {required} not found; check the path (relative to the build context or the --from source)"
            ));
        }
    }
    Ok(())
}

/// The matcher of `COPY --exclude` patterns, `None` without any.
pub(super) fn exclude_matcher(
    patterns: &[String],
) -> Result<Option<dockerfile::IgnoreMatcher>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    dockerfile::IgnoreMatcher::from_patterns(patterns.iter().map(String::as_str))
        .map(Some)
        .map_err(|err| format!("--exclude: {}", err.message()))
}

/// The command of a RUN step as the sandbox runs it.
pub(super) fn run_argv(step: &Step, command: &RunCommand) -> Vec<String> {
    match command {
        RunCommand::Shell(cmd) => {
            let mut argv = step.shell.clone();
            argv.push(cmd.clone());
            argv
        }
        RunCommand::Exec(argv) => argv.clone(),
    }
}

pub(super) fn write_executable(path: &Path, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

pub(super) async fn snapshot(dir: &Path) -> Result<Snapshot, Error> {
    let dir = dir.to_path_buf();
    blocking(move || Snapshot::capture(&dir))
        .await?
        .map_err(Error::layer("reading the filesystem"))
}
