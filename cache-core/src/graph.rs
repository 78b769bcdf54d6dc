//! The in-memory cache graph: records linked to their dependencies, results as layer chains.
//!
//! A [`CacheGraph`] is built from an imported [`CacheConfig`] (with BuildKit's validations and
//! tolerances, spec §1.7), grown by a build, merged with other graphs, reduced for `mode=min` or
//! `mode=max` (spec §5) and written back as a config in BuildKit's order (spec §1.5).

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};

use time::OffsetDateTime;

use crate::config::{CacheConfig, CacheInput, CacheLayer, CacheRecord};
use crate::descriptor::Descriptor;
use crate::digest::{self, Digest};

/// Index of a record in a [`CacheGraph`].
pub type RecordIdx = usize;
/// Index of a layer in a [`CacheGraph`].
pub type LayerIdx = usize;

/// Which cache a result came from: the caller's numbering (for example the position of a
/// `--cache-from` source). On equal creation times the lower number wins.
pub type SourceId = u32;

/// A layer blob on top of its parent chain. The same blob on different parents is two layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The blob: media type, digest, size and annotations (`containerd.io/uncompressed`, …).
    pub blob: Descriptor,
    /// The layer below, if any.
    pub parent: Option<LayerIdx>,
}

/// A dependency link: a parent record combined with a selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Link {
    /// Opaque selector; empty when unused.
    pub selector: String,
    /// The dependency.
    pub record: RecordIdx,
}

/// A stored result of a record: a layer chain given by its top layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheResult {
    /// The top layer; the filesystem is this layer on its parents.
    pub layer: LayerIdx,
    /// When the result was created.
    pub created_at: OffsetDateTime,
    /// Which cache it came from.
    pub source: SourceId,
}

/// A cache key for one output of one build step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The record digest (spec §1.4).
    pub digest: Digest,
    /// Per input of the step, the alternative links that reach this record.
    pub inputs: Vec<Vec<Link>>,
    /// Stored results.
    pub results: Vec<CacheResult>,
}

impl Record {
    /// Whether this record has no dependencies.
    pub fn is_root(&self) -> bool {
        self.inputs.is_empty()
    }
}

/// Export modes (spec §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Results only for the final result's layer chain.
    #[default]
    Min,
    /// Results for every step.
    Max,
}

/// Why a config could not be read into a graph. Each message says what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The JSON is malformed or has a wrong type.
    #[error("invalid cache config JSON: {message}")]
    Json {
        /// serde_json's message with line and column.
        message: String,
    },
    /// A record digest is not a valid sha256 digest.
    #[error("invalid digest {digest:?} of record {record}")]
    RecordDigest {
        /// Index of the record.
        record: usize,
        /// The offending value.
        digest: String,
    },
    /// A link points outside `records`.
    #[error(
        "invalid record ID: {link} (record {record}, input {input}; the config has {n_records} records)"
    )]
    InvalidRecordId {
        /// Index of the record.
        record: usize,
        /// Input index.
        input: usize,
        /// The offending link.
        link: i64,
        /// Number of records.
        n_records: usize,
    },
    /// A record depends on itself.
    #[error("invalid looping record: record {record} depends on itself")]
    LoopingRecord {
        /// Index of a record on the loop.
        record: usize,
    },
    /// An input has no alternatives.
    #[error("invalid empty input for record {record} (input {input} has no links)")]
    EmptyInput {
        /// Index of the record.
        record: usize,
        /// Input index.
        input: usize,
    },
    /// A layer index is out of range.
    #[error("invalid layer index {index} in {place} (the config has {n_layers} layers)")]
    InvalidLayerIndex {
        /// The offending index.
        index: i64,
        /// Where it was found, e.g. "parent of layer 3".
        place: String,
        /// Number of layers.
        n_layers: usize,
    },
    /// Layer parents form a cycle.
    #[error("invalid looping layer: layer {layer} is its own ancestor")]
    LoopingLayer {
        /// Index of a layer on the loop.
        layer: usize,
    },
}

/// The cache graph.
#[derive(Clone, Debug, Default)]
pub struct CacheGraph {
    layers: Vec<Layer>,
    records: Vec<Record>,
    layer_ids: HashMap<(Digest, Option<LayerIdx>), LayerIdx>,
    /// The first and the last record with a digest and their number; `next_same_digest` links
    /// them in order.
    by_digest: HashMap<Digest, SameDigestList>,
    /// Per record, the next record with the same digest (`NONE` after the last).
    next_same_digest: Vec<RecordIdx>,
    /// A record by the hash of its digest and links, for the digests of more than
    /// `SHAPE_INDEX_FROM` records only: adding a record then finds an equal one without comparing
    /// every record with that digest (a hostile config may give one digest to a million records).
    by_shape: HashMap<u64, RecordIdx>,
    hasher: RandomState,
}

/// End of a `next_same_digest` list.
const NONE: RecordIdx = RecordIdx::MAX;

/// Records of one digest beyond which `by_shape` indexes them.
const SHAPE_INDEX_FROM: usize = 8;

#[derive(Clone, Copy, Debug)]
struct SameDigestList {
    first: RecordIdx,
    last: RecordIdx,
    len: usize,
}

/// The records with one digest, in the order they were added.
struct SameDigest<'a> {
    next: &'a [RecordIdx],
    cur: RecordIdx,
}

impl Iterator for SameDigest<'_> {
    type Item = RecordIdx;

    fn next(&mut self) -> Option<RecordIdx> {
        let cur = self.cur;
        if cur == NONE {
            return None;
        }
        self.cur = self.next[cur];
        Some(cur)
    }
}

impl CacheGraph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// All layers.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// All records.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Record `idx`.
    pub fn record(&self, idx: RecordIdx) -> &Record {
        &self.records[idx]
    }

    /// Layer `idx`.
    pub fn layer(&self, idx: LayerIdx) -> &Layer {
        &self.layers[idx]
    }

    /// Interns a layer: the same blob on the same parent is one layer.
    pub fn add_layer(&mut self, blob: Descriptor, parent: Option<LayerIdx>) -> LayerIdx {
        let key = (blob.digest.clone(), parent);
        if let Some(&idx) = self.layer_ids.get(&key) {
            return idx;
        }
        let idx = self.layers.len();
        self.layers.push(Layer { blob, parent });
        self.layer_ids.insert(key, idx);
        idx
    }

    /// Interns a chain of blobs, bottom first, and returns its top layer (`None` for no blobs).
    pub fn add_chain(&mut self, blobs: impl IntoIterator<Item = Descriptor>) -> Option<LayerIdx> {
        let mut top = None;
        for blob in blobs {
            top = Some(self.add_layer(blob, top));
        }
        top
    }

    /// The layers of the chain ending at `top`, bottom first.
    pub fn chain(&self, top: LayerIdx) -> Vec<LayerIdx> {
        let mut chain = Vec::new();
        let mut cur = Some(top);
        while let Some(idx) = cur {
            chain.push(idx);
            cur = self.layers[idx].parent;
        }
        chain.reverse();
        chain
    }

    /// The blob descriptors of the chain ending at `top`, bottom first.
    pub fn chain_blobs(&self, top: LayerIdx) -> Vec<&Descriptor> {
        self.chain(top)
            .into_iter()
            .map(|idx| &self.layers[idx].blob)
            .collect()
    }

    /// The records with `digest`, in the order they were added.
    fn same_digest(&self, digest: &Digest) -> SameDigest<'_> {
        SameDigest {
            next: &self.next_same_digest,
            cur: self.by_digest.get(digest).map_or(NONE, |list| list.first),
        }
    }

    /// Adds a record, or returns the existing one with the same digest and the same links.
    pub fn add_record(&mut self, digest: Digest, inputs: Vec<Vec<Link>>) -> RecordIdx {
        let inputs: Vec<Vec<Link>> = inputs
            .into_iter()
            .map(|mut links| {
                links.sort_unstable();
                links.dedup();
                links
            })
            .collect();
        let idx = self.records.len();
        match self.by_digest.get_mut(&digest) {
            None => {
                self.by_digest.insert(
                    digest.clone(),
                    SameDigestList {
                        first: idx,
                        last: idx,
                        len: 1,
                    },
                );
            }
            Some(list) => {
                let same = SameDigest {
                    next: &self.next_same_digest,
                    cur: list.first,
                };
                let mut shape = None;
                if list.len < SHAPE_INDEX_FROM {
                    if let Some(found) =
                        same.into_iter().find(|&i| self.records[i].inputs == inputs)
                    {
                        return found;
                    }
                } else {
                    let hash = self.hasher.hash_one((&digest, &inputs));
                    if list.len == SHAPE_INDEX_FROM {
                        // The list becomes long: index the records already there.
                        for i in same {
                            let old = self.hasher.hash_one((&digest, &self.records[i].inputs));
                            self.by_shape.entry(old).or_insert(i);
                        }
                    }
                    if let Some(&found) = self.by_shape.get(&hash) {
                        let record = &self.records[found];
                        if record.digest == digest && record.inputs == inputs {
                            return found;
                        }
                        // Two shapes with one hash: compare with every record of this digest.
                        let same = SameDigest {
                            next: &self.next_same_digest,
                            cur: list.first,
                        };
                        if let Some(found) =
                            same.into_iter().find(|&i| self.records[i].inputs == inputs)
                        {
                            return found;
                        }
                    }
                    shape = Some(hash);
                }
                self.next_same_digest[list.last] = idx;
                list.last = idx;
                list.len += 1;
                if let Some(hash) = shape {
                    self.by_shape.entry(hash).or_insert(idx);
                }
            }
        }
        self.next_same_digest.push(NONE);
        self.records.push(Record {
            digest,
            inputs,
            results: Vec::new(),
        });
        idx
    }

    /// Adds a result to a record unless an equal one (same layer and time) is there.
    pub fn add_result(&mut self, record: RecordIdx, result: CacheResult) {
        self.add_results(record, vec![result]);
    }

    /// Adds results to a record, leaving out those equal (same layer and time) to one there or
    /// to an earlier one of `new`.
    pub fn add_results(&mut self, record: RecordIdx, new: Vec<CacheResult>) {
        let results = &mut self.records[record].results;
        if results.len() + new.len() <= 16 {
            for result in new {
                if !results
                    .iter()
                    .any(|r| r.layer == result.layer && r.created_at == result.created_at)
                {
                    results.push(result);
                }
            }
            return;
        }
        // Many results (only hostile configs have them): a set keeps this linear.
        let mut seen: HashSet<(LayerIdx, OffsetDateTime)> =
            results.iter().map(|r| (r.layer, r.created_at)).collect();
        results.extend(
            new.into_iter()
                .filter(|r| seen.insert((r.layer, r.created_at))),
        );
    }

    /// Drops every result whose layer chain holds one of `blobs` (blobs found unusable), so
    /// that exports and later builds never offer them again.
    pub fn drop_results_using(&mut self, blobs: &HashSet<Digest>) {
        // Layers are only added on top of existing ones: a parent's index is below its child's.
        let mut bad = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let below = layer.parent.is_some_and(|p| bad[p]);
            bad.push(below || blobs.contains(&layer.blob.digest));
        }
        for record in &mut self.records {
            record.results.retain(|result| !bad[result.layer]);
        }
    }

    /// The root record (no inputs) with `digest`.
    pub fn find_root(&self, digest: &Digest) -> Option<RecordIdx> {
        self.same_digest(digest)
            .find(|&idx| self.records[idx].is_root())
    }

    /// Records with `digest` whose every input slot links to one of that slot's alternatives
    /// in `inputs` (same record and selector), as BuildKit matches a key whose inputs have
    /// several keys (e.g. a stage's record with a selector, and a content key without).
    pub fn find_links(&self, digest: &Digest, inputs: &[Vec<Link>]) -> Vec<RecordIdx> {
        self.same_digest(digest)
            .filter(|&idx| {
                let record = &self.records[idx];
                record.inputs.len() == inputs.len()
                    && record
                        .inputs
                        .iter()
                        .zip(inputs)
                        .all(|(links, wanted)| links.iter().any(|link| wanted.contains(link)))
            })
            .collect()
    }

    /// Records with `digest` reachable from the given dependencies (spec §1.4 `WalkLinks`).
    ///
    /// `inputs[i]` is the selector and the candidate records of input `i`; a record matches when,
    /// for every input, one of its links has that selector and one of the candidates.
    pub fn find(&self, digest: &Digest, inputs: &[(&str, &[RecordIdx])]) -> Vec<RecordIdx> {
        self.same_digest(digest)
            .filter(|&idx| {
                let record = &self.records[idx];
                record.inputs.len() == inputs.len()
                    && record
                        .inputs
                        .iter()
                        .zip(inputs)
                        .all(|(links, (selector, parents))| {
                            links.iter().any(|link| {
                                link.selector == *selector && parents.contains(&link.record)
                            })
                        })
            })
            .collect()
    }

    /// The records that link to `parent` through input `input` with `selector`.
    pub fn children(&self, parent: RecordIdx, input: usize, selector: &str) -> Vec<RecordIdx> {
        (0..self.records.len())
            .filter(|&idx| {
                self.records[idx].inputs.get(input).is_some_and(|links| {
                    links
                        .iter()
                        .any(|link| link.record == parent && link.selector == selector)
                })
            })
            .collect()
    }

    /// The results of `record`, best first: newest `createdAt`, then lowest source.
    pub fn results_by_preference(&self, record: RecordIdx) -> Vec<&CacheResult> {
        let mut results: Vec<&CacheResult> = self.records[record].results.iter().collect();
        results.sort_by(|a, b| compare_results(a, b));
        results
    }

    /// The best result of `record`: newest `createdAt`, then lowest source.
    pub fn best_result(&self, record: RecordIdx) -> Option<&CacheResult> {
        self.records[record]
            .results
            .iter()
            .min_by(|a, b| compare_results(a, b))
    }

    /// Reads a config into a graph, validating it as BuildKit's importer does (spec §1.7).
    ///
    /// `blob` looks a layer digest up in the manifest around the config; results whose chain
    /// contains a blob it does not know are dropped (the record stays). Hard errors are returned
    /// for bad links, loops, empty inputs and bad layer indexes. Every result is tagged `source`.
    pub fn from_config(
        config: &CacheConfig,
        blob: &dyn Fn(&Digest) -> Option<Descriptor>,
        source: SourceId,
    ) -> Result<CacheGraph, ParseError> {
        let parents = layer_parents(config)?;
        let mut digests = checked_record_digests(config)?;
        let order = topological_order(&config.records)?;

        let mut graph = CacheGraph::with_capacity(config.layers.len(), config.records.len());
        let mut layers = LayerMap::new(config, &parents, blob);
        let mut record_map = vec![usize::MAX; config.records.len()];
        for i in order {
            let record = &config.records[i];
            let inputs = record
                .inputs
                .iter()
                .map(|links| {
                    links
                        .iter()
                        .map(|link| Link {
                            selector: link.selector.clone(),
                            record: record_map[link.link as usize],
                        })
                        .collect()
                })
                .collect();
            let digest = digests[i].take().expect("each record is visited once");
            let idx = graph.add_record(digest, inputs);
            record_map[i] = idx;
            let results = layers.results(&mut graph, record, source);
            graph.add_results(idx, results);
        }
        Ok(graph)
    }

    /// An empty graph with room for a config's layers and records.
    fn with_capacity(n_layers: usize, n_records: usize) -> CacheGraph {
        // Sized up front: growing maps of a million entries rehashes every key several times.
        CacheGraph {
            layers: Vec::with_capacity(n_layers),
            records: Vec::with_capacity(n_records),
            layer_ids: HashMap::with_capacity(n_layers),
            by_digest: HashMap::with_capacity(n_records),
            next_same_digest: Vec::with_capacity(n_records),
            by_shape: HashMap::new(),
            hasher: RandomState::new(),
        }
    }

    /// Writes the graph as a config in BuildKit's form (spec §1.5, §1.6).
    ///
    /// Every record is written with at most one result (the best); only layers used by those
    /// results are listed. Layers are sorted by blob digest, records by digest and link shape,
    /// with stable tie-breaks so the same graph always gives the same bytes. Returns the config
    /// and the layer descriptors in config order (the manifest lists them in that order).
    pub fn to_config(&self) -> (CacheConfig, Vec<Descriptor>) {
        // Which layers are used by the chosen results.
        let best: Vec<Option<&CacheResult>> = (0..self.records.len())
            .map(|idx| self.best_result(idx))
            .collect();
        let mut used = vec![false; self.layers.len()];
        for result in best.iter().flatten() {
            // A chain below a used layer is used already: stop there.
            let mut cur = Some(result.layer);
            while let Some(idx) = cur.filter(|&idx| !used[idx]) {
                used[idx] = true;
                cur = self.layers[idx].parent;
            }
        }
        let mut layer_order: Vec<LayerIdx> = (0..self.layers.len()).filter(|&i| used[i]).collect();
        // Chain identities break ties between layers of one blob on different parents only.
        let mut n_by_blob: HashMap<&Digest, usize> = HashMap::new();
        for &idx in &layer_order {
            *n_by_blob.entry(&self.layers[idx].blob.digest).or_default() += 1;
        }
        let chain_ids = self.chain_identities(
            layer_order
                .iter()
                .copied()
                .filter(|&idx| n_by_blob[&self.layers[idx].blob.digest] > 1),
        );
        layer_order.sort_by(|&a, &b| {
            self.layers[a]
                .blob
                .digest
                .as_ref()
                .cmp(self.layers[b].blob.digest.as_ref())
                .then_with(|| chain_ids[&a].as_ref().cmp(chain_ids[&b].as_ref()))
        });
        let mut layer_pos = vec![usize::MAX; self.layers.len()];
        for (pos, &idx) in layer_order.iter().enumerate() {
            layer_pos[idx] = pos;
        }

        let identities = self.record_identities();
        let mut record_order: Vec<RecordIdx> = (0..self.records.len()).collect();
        record_order.sort_by(|&a, &b| self.compare_records(a, b, &identities));
        let mut record_pos = vec![usize::MAX; self.records.len()];
        for (pos, &idx) in record_order.iter().enumerate() {
            record_pos[idx] = pos;
        }

        let layers = layer_order
            .iter()
            .map(|&idx| CacheLayer {
                blob: self.layers[idx].blob.digest.to_string(),
                parent: self.layers[idx].parent.map_or(-1, |p| layer_pos[p] as i64),
                annotations: None,
            })
            .collect();
        let records = record_order
            .iter()
            .map(|&idx| {
                let record = &self.records[idx];
                let inputs = record
                    .inputs
                    .iter()
                    .map(|links| {
                        let mut links: Vec<CacheInput> = links
                            .iter()
                            .map(|link| CacheInput {
                                selector: link.selector.clone(),
                                link: record_pos[link.record] as i64,
                            })
                            .collect();
                        links.sort_by(|a, b| {
                            a.link
                                .cmp(&b.link)
                                .then_with(|| a.selector.cmp(&b.selector))
                        });
                        links
                    })
                    .collect();
                CacheRecord {
                    layers: best[idx]
                        .map(|result| crate::config::CacheResult {
                            layer: layer_pos[result.layer] as i64,
                            created_at: result.created_at,
                        })
                        .into_iter()
                        .collect(),
                    chains: Vec::new(),
                    digest: record.digest.to_string(),
                    inputs,
                }
            })
            .collect();
        let descriptors = layer_order
            .iter()
            .map(|&idx| self.layers[idx].blob.clone())
            .collect();
        (CacheConfig { layers, records }, descriptors)
    }

    /// The part of the graph to export for `targets` in `mode` (spec §5).
    ///
    /// Records: every record reachable from the targets through their links, in both modes.
    /// Results: roots never get one; `Max` keeps the best result of every other record; `Min`
    /// keeps the targets' best results and, below them, only results whose layer chain is part
    /// of a target's chain (the final image's layers), as BuildKit's remote-only mode does.
    pub fn select(&self, targets: &[RecordIdx], mode: Mode) -> CacheGraph {
        let mut reachable = vec![false; self.records.len()];
        let mut stack: Vec<RecordIdx> = targets.to_vec();
        while let Some(idx) = stack.pop() {
            if !std::mem::replace(&mut reachable[idx], true) {
                for links in &self.records[idx].inputs {
                    stack.extend(links.iter().map(|link| link.record));
                }
            }
        }
        let mut is_target = vec![false; self.records.len()];
        for &target in targets {
            is_target[target] = true;
        }
        // The layers of the targets' chains; each chain is walked down to the first layer seen.
        let mut target_layers: HashSet<LayerIdx> = HashSet::new();
        if mode == Mode::Min {
            for result in targets.iter().filter_map(|&t| self.best_result(t)) {
                let mut cur = Some(result.layer);
                while let Some(idx) = cur.filter(|&idx| target_layers.insert(idx)) {
                    cur = self.layers[idx].parent;
                }
            }
        }
        let mut out = CacheGraph::new();
        let mut map = vec![usize::MAX; self.records.len()];
        let mut copied = vec![None; self.layers.len()];
        for idx in self.topological((0..self.records.len()).filter(|&i| reachable[i])) {
            let record = &self.records[idx];
            let inputs = record
                .inputs
                .iter()
                .map(|links| {
                    links
                        .iter()
                        .map(|link| Link {
                            selector: link.selector.clone(),
                            record: map[link.record],
                        })
                        .collect()
                })
                .collect();
            let new_idx = out.add_record(record.digest.clone(), inputs);
            map[idx] = new_idx;
            if record.is_root() {
                continue;
            }
            let keep = match mode {
                Mode::Max => self.best_result(idx),
                Mode::Min if is_target[idx] => self.best_result(idx),
                Mode::Min => self
                    .best_result(idx)
                    .filter(|result| target_layers.contains(&result.layer)),
            };
            if let Some(result) = keep {
                let top = out.copy_chain(self, result.layer, &mut copied);
                out.add_result(
                    new_idx,
                    CacheResult {
                        layer: top,
                        created_at: result.created_at,
                        source: result.source,
                    },
                );
            }
        }
        out
    }

    /// The union of several graphs. Records with the same digest and links become one and keep
    /// the results of all; each result keeps the source it was tagged with.
    pub fn merge<'a>(graphs: impl IntoIterator<Item = &'a CacheGraph>) -> CacheGraph {
        let mut out = CacheGraph::new();
        for graph in graphs {
            out.absorb(graph);
        }
        out
    }

    /// Adds every record, layer and result of `other` into `self`; returns the mapping of
    /// `other`'s record indexes to `self`'s.
    pub fn absorb(&mut self, other: &CacheGraph) -> Vec<RecordIdx> {
        self.absorb_set(other, 0..other.records.len())
    }

    /// The graph without the records that can never give a hit: those with no result and no
    /// descendant with one (a step whose results were all pruned, and the steps above it).
    /// Without this, a cache rewritten after every build (the root's own) keeps the records of
    /// every version ever built and grows without bound.
    pub fn without_dead_records(&self) -> CacheGraph {
        let mut useful = vec![false; self.records.len()];
        // Dependents come before their inputs in reverse topological order.
        for idx in self.topological(0..self.records.len()).into_iter().rev() {
            if !self.records[idx].results.is_empty() {
                useful[idx] = true;
            }
            if useful[idx] {
                for links in &self.records[idx].inputs {
                    for link in links {
                        useful[link.record] = true;
                    }
                }
            }
        }
        let mut out = CacheGraph::new();
        out.absorb_set(self, (0..self.records.len()).filter(|&i| useful[i]));
        out
    }

    /// Adds the records of `set` (which holds the inputs of its members) with their layers and
    /// results; returns the mapping of `other`'s record indexes (`usize::MAX` outside `set`).
    fn absorb_set(
        &mut self,
        other: &CacheGraph,
        set: impl IntoIterator<Item = RecordIdx>,
    ) -> Vec<RecordIdx> {
        self.records.reserve(other.records.len());
        self.next_same_digest.reserve(other.records.len());
        self.by_digest.reserve(other.records.len());
        self.layers.reserve(other.layers.len());
        self.layer_ids.reserve(other.layers.len());
        let mut map = vec![usize::MAX; other.records.len()];
        let mut copied = vec![None; other.layers.len()];
        for idx in other.topological(set) {
            let record = &other.records[idx];
            let inputs = record
                .inputs
                .iter()
                .map(|links| {
                    links
                        .iter()
                        .map(|link| Link {
                            selector: link.selector.clone(),
                            record: map[link.record],
                        })
                        .collect()
                })
                .collect();
            let new_idx = self.add_record(record.digest.clone(), inputs);
            map[idx] = new_idx;
            let results = record
                .results
                .iter()
                .map(|result| CacheResult {
                    layer: self.copy_chain(other, result.layer, &mut copied),
                    created_at: result.created_at,
                    source: result.source,
                })
                .collect();
            self.add_results(new_idx, results);
        }
        map
    }

    /// The records of `set` (which holds the inputs of its members), in ascending order except
    /// that dependencies come first (the graph has no loops).
    fn topological(&self, set: impl IntoIterator<Item = RecordIdx>) -> Vec<RecordIdx> {
        let mut order = Vec::new();
        let mut seen = vec![false; self.records.len()];
        for start in set {
            if seen[start] {
                continue;
            }
            let mut stack = vec![(start, false)];
            while let Some((idx, expanded)) = stack.pop() {
                if expanded {
                    order.push(idx);
                    continue;
                }
                if seen[idx] {
                    continue;
                }
                seen[idx] = true;
                stack.push((idx, true));
                for links in &self.records[idx].inputs {
                    for link in links {
                        if !seen[link.record] {
                            stack.push((link.record, false));
                        }
                    }
                }
            }
        }
        order
    }

    /// Per layer of `tops`, a digest naming its chain by the blobs in it, bottom first (the
    /// sha256 of each blob digest and a newline). The hash state of every chain prefix is kept,
    /// so that a layer's chain is hashed from its parent's state, never from the bottom again.
    fn chain_identities(&self, tops: impl Iterator<Item = LayerIdx>) -> HashMap<LayerIdx, Digest> {
        let mut states: HashMap<LayerIdx, digest::Hasher> = HashMap::new();
        let mut ids = HashMap::new();
        let mut todo = Vec::new();
        for top in tops {
            let mut cur = Some(top);
            let mut state = digest::Hasher::new();
            while let Some(idx) = cur {
                if let Some(known) = states.get(&idx) {
                    state = known.clone();
                    break;
                }
                todo.push(idx);
                cur = self.layers[idx].parent;
            }
            for idx in todo.drain(..).rev() {
                state.update(self.layers[idx].blob.digest.as_ref().as_bytes());
                state.update(b"\n");
                states.insert(idx, state.clone());
            }
            ids.insert(top, state.finish());
        }
        ids
    }

    /// The layer of `self` for layer `top` of `from`: adds the part of its chain not yet copied
    /// (`copied` maps `from`'s layers to `self`'s), walking down only to the first copied layer,
    /// so that copying every layer of a deep chain stays linear.
    fn copy_chain(
        &mut self,
        from: &CacheGraph,
        top: LayerIdx,
        copied: &mut [Option<LayerIdx>],
    ) -> LayerIdx {
        let mut todo = Vec::new();
        let mut cur = Some(top);
        let mut below = None;
        while let Some(idx) = cur {
            if let Some(mapped) = copied[idx] {
                below = Some(mapped);
                break;
            }
            todo.push(idx);
            cur = from.layers[idx].parent;
        }
        for idx in todo.into_iter().rev() {
            let mapped = self.add_layer(from.layers[idx].blob.clone(), below);
            copied[idx] = Some(mapped);
            below = Some(mapped);
        }
        below.expect("a chain has at least its top layer")
    }

    /// A digest per record naming it by its digest and, recursively, its links.
    fn record_identities(&self) -> Vec<Digest> {
        let mut ids: Vec<Option<Digest>> = vec![None; self.records.len()];
        for idx in self.topological(0..self.records.len()) {
            let record = &self.records[idx];
            let mut text = record.digest.to_string();
            for links in &record.inputs {
                let mut parts: Vec<String> = links
                    .iter()
                    .map(|link| {
                        let parent = ids[link.record].as_ref().expect("dependencies come first");
                        format!("{}|{}", link.selector, parent)
                    })
                    .collect();
                parts.sort();
                text.push_str(&format!("[{}]", parts.join(",")));
            }
            ids[idx] = Some(digest::sha256(text.as_bytes()));
        }
        ids.into_iter()
            .map(|id| id.expect("every record is visited"))
            .collect()
    }

    fn compare_records(&self, a: RecordIdx, b: RecordIdx, identities: &[Digest]) -> Ordering {
        let (ra, rb) = (&self.records[a], &self.records[b]);
        ra.digest
            .as_ref()
            .cmp(rb.digest.as_ref())
            .then_with(|| ra.inputs.len().cmp(&rb.inputs.len()))
            .then_with(|| {
                for (la, lb) in ra.inputs.iter().zip(&rb.inputs) {
                    let ord = la.len().cmp(&lb.len());
                    if ord != Ordering::Equal {
                        return ord;
                    }
                }
                Ordering::Equal
            })
            .then_with(|| {
                // Links in an order that does not depend on record indexes (which differ between
                // a graph and the same graph read back): selector, parent digest, parent identity.
                fn canonical<'a>(
                    graph: &'a CacheGraph,
                    identities: &'a [Digest],
                    links: &'a [Link],
                ) -> Vec<(&'a str, &'a str, &'a str)> {
                    let mut keys: Vec<(&str, &str, &str)> = links
                        .iter()
                        .map(|link| {
                            (
                                link.selector.as_str(),
                                graph.records[link.record].digest.as_ref(),
                                identities[link.record].as_ref(),
                            )
                        })
                        .collect();
                    keys.sort_unstable();
                    keys
                }
                for (la, lb) in ra.inputs.iter().zip(&rb.inputs) {
                    let ord = canonical(self, identities, la).cmp(&canonical(self, identities, lb));
                    if ord != Ordering::Equal {
                        return ord;
                    }
                }
                Ordering::Equal
            })
            .then_with(|| identities[a].as_ref().cmp(identities[b].as_ref()))
    }
}

fn compare_results(a: &CacheResult, b: &CacheResult) -> Ordering {
    b.created_at
        .cmp(&a.created_at)
        .then_with(|| a.source.cmp(&b.source))
        .then_with(|| a.layer.cmp(&b.layer))
}

/// `index` as a layer index of a config with `n_layers` layers; `place` names where it was read.
fn layer_index(
    index: i64,
    n_layers: usize,
    place: impl FnOnce() -> String,
) -> Result<usize, ParseError> {
    usize::try_from(index)
        .ok()
        .filter(|&i| i < n_layers)
        .ok_or_else(|| ParseError::InvalidLayerIndex {
            index,
            place: place(),
            n_layers,
        })
}

/// Each config layer's parent, validated and checked for loops.
fn layer_parents(config: &CacheConfig) -> Result<Vec<Option<usize>>, ParseError> {
    let n_layers = config.layers.len();
    let mut parents = Vec::with_capacity(n_layers);
    for (i, layer) in config.layers.iter().enumerate() {
        parents.push(if layer.parent == -1 {
            None
        } else {
            Some(layer_index(layer.parent, n_layers, || {
                format!("parent of layer {i}")
            })?)
        });
    }
    check_layer_loops(&parents)?;
    Ok(parents)
}

/// Each config record's digest, after checking its links, inputs and layer indexes (loops
/// are `topological_order`'s to find).
fn checked_record_digests(config: &CacheConfig) -> Result<Vec<Option<Digest>>, ParseError> {
    let n_layers = config.layers.len();
    let n_records = config.records.len();
    let mut digests = Vec::with_capacity(n_records);
    for (i, record) in config.records.iter().enumerate() {
        digests.push(Some(digest::parse_sha256(&record.digest).map_err(
            |_| ParseError::RecordDigest {
                record: i,
                digest: record.digest.clone(),
            },
        )?));
        for (input, links) in record.inputs.iter().enumerate() {
            if links.is_empty() {
                return Err(ParseError::EmptyInput { record: i, input });
            }
            for link in links {
                if usize::try_from(link.link).map_or(true, |l| l >= n_records) {
                    return Err(ParseError::InvalidRecordId {
                        record: i,
                        input,
                        link: link.link,
                        n_records,
                    });
                }
            }
        }
        for result in &record.layers {
            layer_index(result.layer, n_layers, || format!("result of record {i}"))?;
        }
        for chain in &record.chains {
            for &layer in &chain.layers {
                layer_index(layer, n_layers, || format!("chain of record {i}"))?;
            }
        }
    }
    Ok(digests)
}

/// A validated config's layers as they are mapped into a graph, each once: a chain is walked
/// down only to the first layer already mapped, so resolving every layer of a deep chain stays
/// linear.
struct LayerMap<'a> {
    config: &'a CacheConfig,
    parents: &'a [Option<usize>],
    blob: &'a dyn Fn(&Digest) -> Option<Descriptor>,
    /// Config layer index -> graph layer, or `Some(None)` when a blob of its chain is not listed.
    mapped: Vec<Option<Option<LayerIdx>>>,
}

impl<'a> LayerMap<'a> {
    fn new(
        config: &'a CacheConfig,
        parents: &'a [Option<usize>],
        blob: &'a dyn Fn(&Digest) -> Option<Descriptor>,
    ) -> Self {
        LayerMap {
            config,
            parents,
            blob,
            mapped: vec![None; config.layers.len()],
        }
    }

    /// The graph layer of config layer `top`, mapping it and the layers below it as needed;
    /// `None` when the manifest lacks a blob of its chain.
    fn resolve(&mut self, graph: &mut CacheGraph, top: usize) -> Option<LayerIdx> {
        let mut unmapped = Vec::new();
        let mut cur = Some(top);
        let mut below: Option<LayerIdx> = None;
        while let Some(idx) = cur {
            match self.mapped[idx] {
                Some(done) => {
                    below = Some(done?);
                    break;
                }
                None => {
                    unmapped.push(idx);
                    cur = self.parents[idx];
                }
            }
        }
        // Map the unmapped part bottom first; `unmapped` is top first.
        for (pos, &idx) in unmapped.iter().enumerate().rev() {
            let layer = &self.config.layers[idx];
            let desc = layer
                .blob
                .parse::<Digest>()
                .ok()
                .and_then(|d| (self.blob)(&d));
            let mapped = desc.map(|desc| graph.add_layer(desc, below));
            self.mapped[idx] = Some(mapped);
            if mapped.is_none() {
                // Every layer above a blob the manifest lacks is unusable too.
                for &above in &unmapped[..pos] {
                    self.mapped[above] = Some(None);
                }
                return None;
            }
            below = mapped;
        }
        below
    }

    /// The results of a config record (its layer results, then its chains) whose blobs the
    /// manifest lists, tagged `source`.
    fn results(
        &mut self,
        graph: &mut CacheGraph,
        record: &CacheRecord,
        source: SourceId,
    ) -> Vec<CacheResult> {
        let mut results = Vec::with_capacity(record.layers.len());
        for result in &record.layers {
            if let Some(top) = self.resolve(graph, result.layer as usize) {
                results.push(CacheResult {
                    layer: top,
                    created_at: result.created_at,
                    source,
                });
            }
        }
        for chain in &record.chains {
            let blobs: Option<Vec<Descriptor>> = chain
                .layers
                .iter()
                .map(|&l| {
                    let d = self.config.layers[l as usize].blob.parse::<Digest>().ok()?;
                    (self.blob)(&d)
                })
                .collect();
            if let Some(top) = blobs.and_then(|blobs| graph.add_chain(blobs)) {
                results.push(CacheResult {
                    layer: top,
                    created_at: chain.created_at,
                    source,
                });
            }
        }
        results
    }
}

/// Fails if following layer parents ever comes back to a layer: one pass over all layers, each
/// visited once (a layer's chain is only walked until it reaches a layer already checked).
fn check_layer_loops(parents: &[Option<usize>]) -> Result<(), ParseError> {
    // 0 = unvisited, 1 = on the walk in progress, 2 = checked: its chain ends without a loop.
    let mut state = vec![0u8; parents.len()];
    let mut walk = Vec::new();
    for start in 0..parents.len() {
        let mut cur = Some(start);
        while let Some(idx) = cur {
            match state[idx] {
                0 => {
                    state[idx] = 1;
                    walk.push(idx);
                    cur = parents[idx];
                }
                1 => return Err(ParseError::LoopingLayer { layer: idx }),
                _ => break,
            }
        }
        for idx in walk.drain(..) {
            state[idx] = 2;
        }
    }
    Ok(())
}

/// Orders config records dependencies-first, failing on loops. Each link is followed once.
fn topological_order(records: &[CacheRecord]) -> Result<Vec<usize>, ParseError> {
    // 0 = unvisited, 1 = in progress, 2 = done.
    let mut state = vec![0u8; records.len()];
    let mut order = Vec::with_capacity(records.len());
    // A record in progress and the position (input, link) of the next link to follow.
    let mut stack: Vec<(usize, usize, usize)> = Vec::new();
    for start in 0..records.len() {
        if state[start] != 0 {
            continue;
        }
        stack.push((start, 0, 0));
        state[start] = 1;
        while let Some(&mut (idx, ref mut input, ref mut link)) = stack.last_mut() {
            let inputs = &records[idx].inputs;
            while *input < inputs.len() && *link >= inputs[*input].len() {
                *input += 1;
                *link = 0;
            }
            if *input == inputs.len() {
                state[idx] = 2;
                order.push(idx);
                stack.pop();
                continue;
            }
            let dep = inputs[*input][*link].link as usize;
            *link += 1;
            match state[dep] {
                0 => {
                    state[dep] = 1;
                    stack.push((dep, 0, 0));
                }
                1 => return Err(ParseError::LoopingRecord { record: dep }),
                _ => {}
            }
        }
    }
    Ok(order)
}
