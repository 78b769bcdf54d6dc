//! Looking a step up: its key, the best hit among the sources, the choice between hits, and
//! why a step missed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cache_core::graph::{CacheResult, Link, RecordIdx, SourceId};
use cache_core::{Descriptor, Digest};

use super::execute::{copy_paths, exclude_matcher, parents_found, run_argv};
use super::materialize::remove_dir;
use super::{
    Engine, Error, Event, Extra, Facts, FactsMap, LOCAL_SOURCE, NamedContext, Slot, SlotState,
    StepReport, Target, blocking, explain, keys, link, step_error, step_name,
};
use crate::context;
use crate::dockerfile::{self, Base, CopyFrom, CopySource, Op, PlannedStage, Step};

/// A usable result found in a cache: the record, its layer chain and the source holding it.
type Hit = (RecordIdx, Vec<Descriptor>, SourceId);

impl Engine<'_> {
    pub(super) fn select(
        &mut self,
        src_root: &Path,
        sources: &[String],
        use_ignore: bool,
        exclude: &[String],
        what: &str,
    ) -> Result<context::Selection, Error> {
        let ignore = use_ignore.then_some(&self.ignore);
        let exclude = exclude_matcher(exclude).map_err(|message| Error::Exclude {
            at: what.to_owned(),
            message,
        })?;
        context::select_excluding(
            src_root,
            sources,
            ignore,
            exclude.as_ref(),
            &mut self.hashes,
        )
        .map_err(Error::context(what))
    }

    /// The best usable result among `records`: newest first, skipping local results whose
    /// blobs are gone from the root store.
    pub(super) async fn best_hit(
        &mut self,
        records: &[RecordIdx],
    ) -> Option<(RecordIdx, Vec<Descriptor>, SourceId)> {
        self.blob_health.last_unusable = None;
        let mut candidates: Vec<(RecordIdx, CacheResult)> = records
            .iter()
            .flat_map(|&r| {
                self.graph
                    .record(r)
                    .results
                    .iter()
                    .map(move |res| (r, res.clone()))
            })
            .collect();
        candidates.sort_by(|a, b| {
            b.1.created_at
                .cmp(&a.1.created_at)
                .then_with(|| a.1.source.cmp(&b.1.source))
        });
        for (record, result) in candidates {
            if self.blob_health.caches_off
                && (result.source != LOCAL_SOURCE || result.created_at != self.request.now)
            {
                continue;
            }
            let chain: Vec<Descriptor> = self
                .graph
                .chain_blobs(result.layer)
                .into_iter()
                .cloned()
                .collect();
            let mut usable = true;
            for desc in &chain {
                if self.blob_health.bad.contains(&desc.digest) {
                    self.blob_health.last_unusable = Some(desc.digest.clone());
                    usable = false;
                    break;
                }
                let available = match self.blob_health.available.get(&desc.digest) {
                    Some(&known) => known,
                    None => {
                        let known = self.blobs.is_available(desc).await;
                        if !known && result.source != LOCAL_SOURCE {
                            self.progress().event(Event::Warning(format!(
                                "layer blob {} listed by cache {} is missing: its results are misses",
                                desc.digest,
                                self.source_name(result.source)
                            )));
                        }
                        self.blob_health
                            .available
                            .insert(desc.digest.clone(), known);
                        known
                    }
                };
                if !available {
                    self.blob_health.last_unusable = Some(desc.digest.clone());
                    usable = false;
                    break;
                }
            }
            if usable {
                return Some((record, chain, result.source));
            }
        }
        None
    }

    pub(super) fn add_result(&mut self, record: RecordIdx, chain: &[Descriptor]) {
        if let Some(top) = self.graph.add_chain(chain.iter().cloned()) {
            self.graph.add_result(
                record,
                CacheResult {
                    layer: top,
                    created_at: self.request.now,
                    source: LOCAL_SOURCE,
                },
            );
        }
    }

    /// Keeps what the key of `step` (record digest `digest`) is made of, and for a copy from
    /// a directory the files it reads.
    pub(super) fn record_facts(&mut self, step: &Step, digest: &Digest, extra: &Extra) {
        // A RUN's text as the key has it: unexpanded (the display shows variables' values).
        let op_text = match &step.op {
            Op::Run { command, .. } => run_argv(step, command).join("\0"),
            _ => step.display.clone(),
        };
        self.facts.ours.insert(
            digest.to_string(),
            explain::step_facts(&op_text, &step.env, &step.workdir, step.user.as_deref()),
        );
        if let Extra::Content {
            record, selection, ..
        } = extra
        {
            let content = self.graph.record(*record).digest.to_string();
            self.facts.ours.entry(content).or_insert_with(|| {
                let files = selection.sources.iter().flat_map(|source| {
                    source.matches.iter().flat_map(move |found| {
                        found.entries.iter().filter_map(move |entry| {
                            let hash = entry.blake3.as_ref()?;
                            let path = found.entry_path(entry).to_string_lossy().into_owned();
                            Some((path, hex::encode(&hash[..8])))
                        })
                    })
                });
                explain::content_facts(files)
            });
        }
    }

    /// The facts the sources carry, parsed once.
    pub(super) fn source_facts(&mut self) -> &FactsMap {
        self.facts.sources.get_or_insert_with(|| {
            let mut all = FactsMap::new();
            for text in &self.services.facts {
                all.extend(explain::parse_annotation(text).unwrap_or_default());
            }
            all
        })
    }

    /// Why step `k` of stage `si` (record digest `digest`) has no usable result: `parents`
    /// are the records of the filesystem it works on (none on scratch), `sources` those of
    /// what it copies from, `found` the records with its key.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn explain_miss(
        &mut self,
        si: usize,
        stage: &PlannedStage,
        k: usize,
        digest: &Digest,
        parents: &[RecordIdx],
        sources: &[RecordIdx],
        found: &[RecordIdx],
        no_cache: bool,
    ) -> String {
        if let Some(reason) = self.miss_before_comparing(stage, found, no_cache) {
            return reason;
        }
        let n_sources = self.facts.n_source_records;
        let from_sources = |r: &RecordIdx| *r < n_sources;
        let known_parents: Vec<RecordIdx> = parents.iter().copied().filter(from_sources).collect();
        if !parents.is_empty() && known_parents.is_empty() {
            return match (&stage.base, k == 0) {
                (Base::Image(_) | Base::Context(_), true) => self.explain_base(si, stage),
                _ => "the parent step missed".to_owned(),
            };
        }
        let siblings = self.sibling_records(&known_parents, digest);
        if !sources.is_empty()
            && !sources.iter().any(from_sources)
            && let Some(reason) = self.explain_copy_source(sources[0], &siblings, digest)
        {
            return reason;
        }
        let candidates: Vec<RecordIdx> = if known_parents.is_empty() {
            (0..n_sources).collect()
        } else {
            siblings
        };
        self.explain_by_nearest(digest, &candidates)
    }

    /// The reasons of a miss that need no comparison with the sources' records: `--no-cache`,
    /// no records at all, or a record found without a usable result.
    fn miss_before_comparing(
        &mut self,
        stage: &PlannedStage,
        found: &[RecordIdx],
        no_cache: bool,
    ) -> Option<String> {
        if self.request.no_cache {
            return Some("--no-cache was given".to_owned());
        }
        if no_cache {
            return Some(format!("--no-cache-filter {} was given", stage.name));
        }
        if self.facts.n_source_records == 0 {
            return Some(if self.services.source_names.len() <= 1 {
                "no cache source given (and this machine has built nothing yet)".to_owned()
            } else {
                "the cache sources hold no records".to_owned()
            });
        }
        if !found.is_empty() {
            return Some(match self.blob_health.last_unusable.take() {
                Some(blob) => format!(
                    "the cache has this step, but its result's blob {blob} is missing or unusable"
                ),
                None => "the cache has this step's record but not its result (a mode=min export keeps only the final stage's results)".to_owned(),
            });
        }
        None
    }

    /// The records of the sources a step (key `digest`) could have matched: those following
    /// one of `known_parents`, or without parents those with the same key.
    fn sibling_records(&self, known_parents: &[RecordIdx], digest: &Digest) -> Vec<RecordIdx> {
        (0..self.facts.n_source_records)
            .filter(|&idx| {
                let record = self.graph.record(idx);
                if known_parents.is_empty() {
                    &record.digest == digest
                } else {
                    record
                        .inputs
                        .iter()
                        .flatten()
                        .any(|l| known_parents.contains(&l.record))
                }
            })
            .collect()
    }

    /// Why a step whose copy source (record `source`) is in no cache source missed: the files
    /// it copies differ from those of a sibling with the same instruction, or its source stage
    /// or image changed. `None` when no sibling with the same instruction copied listed files.
    fn explain_copy_source(
        &mut self,
        source: RecordIdx,
        siblings: &[RecordIdx],
        digest: &Digest,
    ) -> Option<String> {
        let same_op: Vec<RecordIdx> = siblings
            .iter()
            .copied()
            .filter(|&r| &self.graph.record(r).digest == digest)
            .collect();
        let ours = self.graph.record(source).digest.to_string();
        match self.facts.ours.get(&ours).cloned() {
            // Same instruction, other files: name them.
            Some(ours) if !ours.files.is_empty() || ours.many_files => {
                let theirs: Vec<Facts> = same_op
                    .iter()
                    .flat_map(|&r| self.graph.record(r).inputs.clone())
                    .flatten()
                    .map(|l| self.graph.record(l.record).digest.to_string())
                    .collect::<Vec<_>>()
                    .into_iter()
                    .filter_map(|d| self.source_facts().get(&d).cloned())
                    .filter(|f| !f.files.is_empty() || f.many_files)
                    .collect();
                if same_op.is_empty() {
                    return None;
                }
                Some(
                    match theirs
                        .iter()
                        .find_map(|t| explain::file_differences(&ours, t))
                    {
                        Some(paths) => {
                            format!("the content of the files it copies differs: {paths}")
                        }
                        None => "the content of the files it copies differs".to_owned(),
                    },
                )
            }
            _ => Some("what it copies from (another stage or image) changed".to_owned()),
        }
    }

    /// Why a step (key `digest`) missed, from the facts of the nearest of `candidates`: the
    /// record whose facts differ from the step's in the fewest ways.
    fn explain_by_nearest(&mut self, digest: &Digest, candidates: &[RecordIdx]) -> String {
        let ours = self
            .facts
            .ours
            .get(&digest.to_string())
            .cloned()
            .unwrap_or_default();
        let mut nearest: Option<Vec<String>> = None;
        let mut with_facts = 0;
        for &candidate in candidates {
            let candidate_digest = self.graph.record(candidate).digest.to_string();
            let Some(theirs) = self.source_facts().get(&candidate_digest).cloned() else {
                continue;
            };
            if theirs.op.is_none() {
                continue;
            }
            with_facts += 1;
            let diffs = explain::step_differences(&ours, &theirs);
            if nearest.as_ref().is_none_or(|n| diffs.len() < n.len()) {
                nearest = Some(diffs);
            }
        }
        match nearest {
            Some(diffs) if !diffs.is_empty() => format!(
                "this step's own key is new; the nearest record differs in {}",
                diffs.join(", ")
            ),
            Some(_) => "this step's own key is new; the nearest record has the same command, env, workdir and user (another input differs)".to_owned(),
            None if candidates.is_empty() => {
                "this step's own key is new: no record in the sources follows its parent step"
                    .to_owned()
            }
            None => format!(
                "this step's own key is new; the {} records it could have matched carry no facts to compare (made by another builder)",
                candidates.len() - with_facts
            ),
        }
    }

    /// Why the first step on an image base missed: the sources know another digest of it, or
    /// nothing of it.
    pub(super) fn explain_base(&mut self, si: usize, stage: &PlannedStage) -> String {
        let ours: Vec<String> = self.stages[si]
            .fs
            .records
            .iter()
            .map(|&r| self.graph.record(r).digest.to_string())
            .collect();
        let now = ours
            .iter()
            .find_map(|d| self.facts.ours.get(d))
            .and_then(|f| f.base.clone());
        let cached = self
            .source_facts()
            .values()
            .filter_map(|f| f.base.clone())
            .find(|b| Some(b) != now.as_ref());
        match (cached, now) {
            (Some(old), Some(now)) => format!(
                "the base image digest differs: this build uses {now}, the cache was made on {old}"
            ),
            _ => format!(
                "no source holds any record of this stage's base ({})",
                stage.from_display
            ),
        }
    }

    pub(super) fn source_name(&self, source: SourceId) -> String {
        self.services
            .source_names
            .get(source as usize)
            .cloned()
            .unwrap_or_else(|| "local".to_owned())
    }

    /// Computes the key of step `k` of stage `si`, looks it up, and either takes the hit,
    /// leaves it pending, or runs it.
    pub(super) async fn resolve_step(
        &mut self,
        si: usize,
        stage: &PlannedStage,
        k: usize,
        step: &Step,
    ) -> Result<(), Error> {
        let name = step_name(stage, step);
        let started = Instant::now();
        let scratch = self.stages[si].fs.records.is_empty();
        let has_src = matches!(&step.op, Op::Copy(copy)
            if copy.sources.iter().any(|s| matches!(s, CopySource::Path(_))));
        let mounts_key = match &step.op {
            Op::Run { mounts, .. } if !mounts.is_empty() => {
                let keys = self.mount_keys(mounts, &name).await?;
                serde_json::to_vec(&keys).map_err(|err| Error::other(err.to_string()))?
            }
            _ => Vec::new(),
        };
        let Some(sop) = keys::step_op(step, scratch, has_src, &self.request.add_hosts, &mounts_key)
        else {
            // `WORKDIR /`: BuildKit makes no op of it; the filesystem is unchanged.
            self.report_no_op(si, k, name, started);
            return Ok(());
        };
        let extra = self.step_extra(step, &name, &sop).await?;
        let digest = keys::record_digest(&sop.map.digest, 0);
        tracing::debug!(step = %name, record = %digest, buildkit = sop.buildkit, "step key");
        let (mut inputs, linked_copies) = self.step_inputs(si, step, &sop, &extra, &name).await?;
        let found = self.graph.find_links(&digest, &inputs);
        self.record_facts(step, &digest, &extra);
        let no_cache = self.request.no_cache
            || self
                .request
                .no_cache_filter
                .iter()
                .any(|n| n.to_lowercase() == stage.name);
        let mut hit = if no_cache {
            None
        } else {
            self.best_hit(&found).await
        };
        let mut also_records = Vec::new();
        if hit.is_none()
            && found.is_empty()
            && !no_cache
            && let Some((by_content, linked)) = self
                .hit_by_content(step, &extra, &sop, &digest, &mut inputs, &name)
                .await?
        {
            also_records.extend(linked);
            hit = Some(by_content);
        }
        let mut slot = Slot {
            name: name.clone(),
            digest,
            extra,
            records: found.clone(),
            linked_copies,
            state: SlotState::Pending,
            duration: Duration::ZERO,
            reported: false,
            miss: None,
        };
        if let Some(hit) = hit {
            self.take_hit(si, k, slot, hit, also_records, started);
            return Ok(());
        }
        if hit.is_none() {
            let records_of = |input: Option<usize>| -> Vec<RecordIdx> {
                input
                    .map(|i| inputs[i].iter().map(|l| l.record).collect())
                    .unwrap_or_default()
            };
            let (parents, sources) = (records_of(sop.dest), records_of(sop.src));
            slot.miss = Some(self.explain_miss(
                si,
                stage,
                k,
                &slot.digest,
                &parents,
                &sources,
                &found,
                no_cache,
            ));
        }
        if !found.is_empty() && !no_cache {
            // Known key without a result: run only if something needs this filesystem.
            self.stages[si].fs.records = found;
            self.stages[si].fs.pending.push((si, k));
            self.slots.insert((si, k), slot);
            return Ok(());
        }
        // A miss: create the record and run the step now.
        let record = self.graph.add_record(slot.digest.clone(), inputs);
        slot.records = vec![record];
        self.stages[si].fs.records = vec![record];
        self.stages[si].fs.pending.push((si, k));
        self.slots.insert((si, k), slot);
        self.ensure_fs(Target::Stage(si)).await?;
        Ok(())
    }

    /// For `COPY --from` a stage or image: BuildKit's content ("slow") key of exactly the files
    /// it copies, linked into `inputs` as BuildKit does, and the hit it finds with the other
    /// inputs, with the record linking this step's key to the hit's result when it is a new one.
    /// Looked up when the stage's record misses: the stage changed, but identical files keep
    /// the step cached.
    async fn hit_by_content(
        &mut self,
        step: &Step,
        extra: &Extra,
        sop: &keys::StepOp,
        digest: &Digest,
        inputs: &mut [Vec<Link>],
        name: &str,
    ) -> Result<Option<(Hit, Option<RecordIdx>)>, Error> {
        let (Op::Copy(copy), Extra::Stage(_) | Extra::Image(_), Some(src)) =
            (&step.op, extra, sop.src)
        else {
            return Ok(None);
        };
        let Some(selectors) = sop.map.deps[src].content.clone() else {
            return Ok(None);
        };
        let source = match extra {
            Extra::Stage(j) => Target::Stage(*j),
            Extra::Image(i) => Target::Image(*i),
            _ => unreachable!("matched above"),
        };
        let src_root = self.ensure_fs(source).await?;
        let selection = self.copy_selection(&src_root, copy, name, step.line)?;
        let checksums = keys::content_checksums(&selection, &selectors, false)
            .map_err(|err| step_error(name, step.line, err))?;
        let content = self.root_record(keys::content_record(&checksums));
        inputs[src].push(link(content));
        let mut by_content_query = inputs.to_vec();
        by_content_query[src] = vec![link(content)];
        let by_content = self.graph.find_links(digest, &by_content_query);
        let Some((record, chain, source)) = self.best_hit(&by_content).await else {
            return Ok(None);
        };
        // Reachable by definition next time, too.
        let linked = self.graph.add_record(digest.clone(), inputs.to_vec());
        let linked = (linked != record).then(|| {
            self.add_result(linked, &chain);
            linked
        });
        // Children of the matched record are what later steps find.
        Ok(Some(((record, chain, source), linked)))
    }

    /// The links of a step's inputs, by input index: the stage's records, the sources of a
    /// COPY, the inputs of RUN mounts and the files made on scratch; for `COPY --link`, also
    /// the copy's own records (found, or made without a result), which the merge links to.
    async fn step_inputs(
        &mut self,
        si: usize,
        step: &Step,
        sop: &keys::StepOp,
        extra: &Extra,
        name: &str,
    ) -> Result<(Vec<Vec<Link>>, Vec<RecordIdx>), Error> {
        let selector = |i: usize| {
            sop.map.deps[i]
                .selector
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_default()
        };
        let mut inputs: Vec<Vec<Link>> = vec![Vec::new(); sop.map.deps.len()];
        if let Some(d) = sop.dest {
            inputs[d] = self.stages[si]
                .fs
                .records
                .iter()
                .map(|&record| Link {
                    selector: selector(d),
                    record,
                })
                .collect();
        }
        if let Some(src) = sop.src {
            inputs[src] = self.source_links(extra, selector(src));
        }
        for input in &sop.mount_inputs {
            inputs[input.index] = self
                .mount_input_links(input, &sop.map.deps[input.index], name)
                .await?;
        }
        for mkfile in &sop.mkfiles {
            let record = self.root_record(mkfile.record.clone());
            let mut links = vec![Link {
                selector: selector(mkfile.index),
                record,
            }];
            if let Some(selectors) = &sop.map.deps[mkfile.index].content {
                let mut tree = mkfile.tree.clone();
                let checksums = selectors
                    .iter()
                    .map(|sel| tree.checksum(sel))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| step_error(name, step.line, err.to_string()))?;
                links.push(link(self.root_record(keys::content_record(&checksums))));
            }
            inputs[mkfile.index] = links;
        }
        let mut linked_copies = Vec::new();
        if let Some(copy_map) = &sop.linked_copy {
            // COPY --link: the copy's own record (found, or made without a result), then the
            // merge links to it.
            let copy_selector = copy_map.deps[0]
                .selector
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_default();
            let copy_inputs = vec![self.source_links(extra, copy_selector)];
            let copy_digest = keys::record_digest(&copy_map.digest, 0);
            let mut copies = self.graph.find_links(&copy_digest, &copy_inputs);
            if copies.is_empty() {
                copies.push(self.graph.add_record(copy_digest, copy_inputs));
            }
            inputs[1] = copies.iter().copied().map(link).collect();
            linked_copies = copies;
        }
        Ok((inputs, linked_copies))
    }

    /// Takes a hit for slot `(si, k)`: the stage's filesystem becomes the hit's chain (its
    /// unpacked directory, if any, goes) and the step is reported cached.
    fn take_hit(
        &mut self,
        si: usize,
        k: usize,
        mut slot: Slot,
        (record, chain, source): (RecordIdx, Vec<Descriptor>, SourceId),
        also_records: Vec<RecordIdx>,
        started: Instant,
    ) {
        slot.state = SlotState::Hit(source);
        slot.records = vec![record];
        slot.reported = true;
        self.last_hit_source = Some(source);
        let vertex = format!("step:{si}:{k}");
        self.progress().event(Event::Start {
            vertex: vertex.clone(),
            name: slot.name.clone(),
        });
        self.progress().event(Event::Cached { vertex });
        self.reports.push(StepReport {
            name: slot.name.clone(),
            cached: true,
            cache_source: Some(self.source_name(source)),
            duration_ms: started.elapsed().as_millis() as u64,
            finished_at: Instant::now(),
            miss: None,
            key: Some(slot.digest.clone()),
        });
        let fs = &mut self.stages[si].fs;
        fs.records = vec![record];
        fs.records.extend(also_records);
        fs.chain = chain;
        fs.pending.clear();
        if let Some(dir) = fs.rootfs.take() {
            remove_dir(&dir);
        }
        self.slots.insert((si, k), slot);
    }

    /// What a COPY reads besides the stage's filesystem: for the context or a directory, the
    /// selection and its content key (BuildKit's, over the selectors of the op's source input).
    pub(super) async fn step_extra(
        &mut self,
        step: &Step,
        name: &str,
        sop: &keys::StepOp,
    ) -> Result<Extra, Error> {
        let Op::Copy(copy) = &step.op else {
            return Ok(Extra::None);
        };
        let (paths, includes) = copy_paths(copy).map_err(|err| step_error(name, step.line, err))?;
        if paths.is_empty() {
            return Ok(Extra::None);
        }
        let dir_source = |root: PathBuf, use_ignore: bool| (root, use_ignore);
        let (src_root, use_ignore) = match &copy.from {
            _ if !copy.downloads.is_empty() => {
                let dir = self.new_dir("download")?;
                for download in &copy.downloads {
                    self.download(download, copy.checksum.as_deref(), &dir, name, step.line)
                        .await?;
                }
                dir_source(dir, false)
            }
            CopyFrom::Context => dir_source(self.request.context.clone(), true),
            CopyFrom::Stage(j) => return Ok(Extra::Stage(*j)),
            CopyFrom::Image(reference) => {
                let idx = self.image_fs(reference, false).await?;
                return Ok(Extra::Image(idx));
            }
            CopyFrom::NamedContext(ctx_name) => {
                match self.request.named_contexts.get(ctx_name).cloned() {
                    Some(NamedContext::Dir(dir)) => dir_source(dir, false),
                    Some(NamedContext::OciLayout { .. }) => {
                        let idx = self.image_fs(ctx_name, true).await?;
                        return Ok(Extra::Image(idx));
                    }
                    None => {
                        return Err(step_error(
                            name,
                            step.line,
                            format!("unknown build context {ctx_name}"),
                        ));
                    }
                }
            }
        };
        let ignore = use_ignore.then_some(&self.ignore);
        let exclude = exclude_matcher(&copy.exclude).map_err(|message| Error::Exclude {
            at: name.to_owned(),
            message,
        })?;
        // A client sends its files as owned by 0:0 (BuildKit's client resets owners).
        let selection = context::select_including(
            &src_root,
            &paths,
            &includes.iter().map(Option::as_ref).collect::<Vec<_>>(),
            ignore,
            exclude.as_ref(),
            &mut self.hashes,
            true,
        )
        .map_err(Error::context(name))?;
        parents_found(copy, &selection).map_err(|err| step_error(name, step.line, err))?;
        let selectors = match (&sop.linked_copy, sop.src) {
            (Some(copy), _) => copy.deps[0].content.as_ref(),
            (None, Some(i)) => sop.map.deps[i].content.as_ref(),
            (None, None) => None,
        };
        let content = match selectors {
            Some(selectors) => {
                let checksums = keys::content_checksums(&selection, selectors, true)
                    .map_err(|err| step_error(name, step.line, err))?;
                keys::content_record(&checksums)
            }
            // A key of our own: the selection's own checksum stands for the content.
            None => keys::record_digest(&selection.checksum, -1),
        };
        let record = self.root_record(content);
        Ok(Extra::Content {
            record,
            src_root,
            selection,
        })
    }

    /// Downloads an `ADD <url>` source into `dir` (mode 0600, as BuildKit's http source),
    /// checking `checksum` when given.
    pub(super) async fn download(
        &mut self,
        download: &dockerfile::Download,
        checksum: Option<&str>,
        dir: &Path,
        name: &str,
        line: usize,
    ) -> Result<(), Error> {
        let url = &download.url;
        let Some(fetcher) = self.services.urls else {
            return Err(step_error(
                name,
                line,
                format!("ADD {url}: downloads are not available here"),
            ));
        };
        let file = dir.join(&download.file_name);
        let vertex = self.active.as_ref().map(|(v, _)| v.clone());
        let started = Instant::now();
        fetcher
            .fetch(url, &file)
            .await
            .map_err(|err| step_error(name, line, format!("downloading {url}: {err}")))?;
        let path = file.clone();
        let digest = blocking(move || -> std::io::Result<Digest> {
            use std::io::Read;
            let mut reader = std::fs::File::open(&path)?;
            let mut hasher = cache_core::digest::Hasher::new();
            let mut buf = vec![0; 256 * 1024];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            Ok(hasher.finish())
        })
        .await?
        .map_err(|err| step_error(name, line, format!("reading the download of {url}: {err}")))?;
        if let Some(want) = checksum
            && digest.to_string() != want
        {
            return Err(step_error(
                name,
                line,
                format!(
                    "ADD --checksum={want}: {url} has digest {digest}; fix the checksum or the URL"
                ),
            ));
        }
        if let Some(vertex) = vertex {
            self.progress().event(Event::Status {
                vertex,
                text: format!("downloading {url} ({digest})"),
                done: Some(started.elapsed()),
            });
        }
        Ok(())
    }

    /// Links to what a RUN bind mount reads: the content record of the mounted paths of a
    /// context (whose own key BuildKit never exports), or a stage's or image's records with the
    /// mount's selector.
    pub(super) async fn mount_input_links(
        &mut self,
        input: &keys::MountInput,
        dep: &cache_llb::Dep,
        name: &str,
    ) -> Result<Vec<Link>, Error> {
        let selector = dep
            .selector
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default();
        let (dir, use_ignore) = match &input.from {
            CopyFrom::Context => (self.request.context.clone(), true),
            CopyFrom::Stage(j) => {
                return Ok(self.source_links(&Extra::Stage(*j), selector));
            }
            CopyFrom::Image(reference) => {
                let idx = self.image_fs(reference, false).await?;
                return Ok(self.source_links(&Extra::Image(idx), selector));
            }
            CopyFrom::NamedContext(ctx_name) => {
                match self.request.named_contexts.get(ctx_name).cloned() {
                    Some(NamedContext::Dir(dir)) => (dir, false),
                    Some(NamedContext::OciLayout { .. }) => {
                        let idx = self.image_fs(ctx_name, true).await?;
                        return Ok(self.source_links(&Extra::Image(idx), selector));
                    }
                    None => {
                        return Err(Error::UnknownContext {
                            at: name.to_owned(),
                            name: ctx_name.clone(),
                        });
                    }
                }
            }
        };
        let Some(selectors) = &dep.content else {
            return Ok(Vec::new());
        };
        let sources: Vec<String> = input
            .sources
            .iter()
            .map(|s| match s.trim_start_matches('/') {
                "" => ".".to_owned(),
                rel => rel.to_owned(),
            })
            .collect();
        let ignore = use_ignore.then_some(&self.ignore);
        let selection = context::select_with(&dir, &sources, ignore, None, &mut self.hashes, true)
            .map_err(Error::context(format!("{name}: --mount source")))?;
        let checksums = keys::content_checksums(&selection, selectors, true)
            .map_err(|err| Error::other(format!("{name}: {err}")))?;
        let record = self.root_record(keys::content_record(&checksums));
        Ok(vec![link(record)])
    }

    /// Links to what a COPY reads: a content record without selector, or a stage's or image's
    /// records with `selector`.
    pub(super) fn source_links(&self, extra: &Extra, selector: String) -> Vec<Link> {
        let records = match extra {
            Extra::None => return Vec::new(),
            Extra::Content { record, .. } => return vec![link(*record)],
            Extra::Stage(j) => &self.stages[*j].fs.records,
            Extra::Image(i) => &self.images[*i].records,
        };
        records
            .iter()
            .map(|&record| Link {
                selector: selector.clone(),
                record,
            })
            .collect()
    }

    /// Reports a step that changes nothing and has no op (`WORKDIR /`) as done from cache.
    pub(super) fn report_no_op(&mut self, si: usize, k: usize, name: String, started: Instant) {
        let vertex = format!("step:{si}:{k}");
        self.progress().event(Event::Start {
            vertex: vertex.clone(),
            name: name.clone(),
        });
        self.progress().event(Event::Cached { vertex });
        self.reports.push(StepReport {
            name,
            cached: true,
            cache_source: None,
            duration_ms: started.elapsed().as_millis() as u64,
            finished_at: Instant::now(),
            miss: None,
            key: None,
        });
    }
}
