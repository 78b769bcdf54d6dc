//! The in-memory cache graph: records linked to their dependencies, results as layer chains.
//!
//! A [`CacheGraph`] is built from an imported [`CacheConfig`] (with BuildKit's validations and
//! tolerances, spec §1.7), grown by a build, merged with other graphs, reduced for `mode=min` or
//! `mode=max` (spec §5) and written back as a config in BuildKit's order (spec §1.5).

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};

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
    by_digest: HashMap<Digest, Vec<RecordIdx>>,
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

    /// Adds a record, or returns the existing one with the same digest and the same links.
    pub fn add_record(&mut self, digest: Digest, inputs: Vec<Vec<Link>>) -> RecordIdx {
        let inputs: Vec<Vec<Link>> = inputs
            .into_iter()
            .map(|links| {
                let set: BTreeSet<Link> = links.into_iter().collect();
                set.into_iter().collect()
            })
            .collect();
        if let Some(candidates) = self.by_digest.get(&digest) {
            for &idx in candidates {
                if self.records[idx].inputs == inputs {
                    return idx;
                }
            }
        }
        let idx = self.records.len();
        self.records.push(Record {
            digest: digest.clone(),
            inputs,
            results: Vec::new(),
        });
        self.by_digest.entry(digest).or_default().push(idx);
        idx
    }

    /// Adds a result to a record unless an equal one (same layer and time) is there.
    pub fn add_result(&mut self, record: RecordIdx, result: CacheResult) {
        let results = &mut self.records[record].results;
        if !results
            .iter()
            .any(|r| r.layer == result.layer && r.created_at == result.created_at)
        {
            results.push(result);
        }
    }

    /// The root record (no inputs) with `digest`.
    pub fn find_root(&self, digest: &Digest) -> Option<RecordIdx> {
        self.by_digest
            .get(digest)?
            .iter()
            .copied()
            .find(|&idx| self.records[idx].is_root())
    }

    /// Records with `digest` whose every input slot links to one of that slot's alternatives
    /// in `inputs` (same record and selector), as BuildKit matches a key whose inputs have
    /// several keys (e.g. a stage's record with a selector, and a content key without).
    pub fn find_links(&self, digest: &Digest, inputs: &[Vec<Link>]) -> Vec<RecordIdx> {
        let Some(candidates) = self.by_digest.get(digest) else {
            return Vec::new();
        };
        candidates
            .iter()
            .copied()
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
        let Some(candidates) = self.by_digest.get(digest) else {
            return Vec::new();
        };
        candidates
            .iter()
            .copied()
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
        let n_layers = config.layers.len();
        let n_records = config.records.len();
        let layer_index = |index: i64, place: &dyn Fn() -> String| -> Result<usize, ParseError> {
            usize::try_from(index)
                .ok()
                .filter(|&i| i < n_layers)
                .ok_or_else(|| ParseError::InvalidLayerIndex {
                    index,
                    place: place(),
                    n_layers,
                })
        };
        // Layer parents: validate and detect loops.
        let mut parents = Vec::with_capacity(n_layers);
        for (i, layer) in config.layers.iter().enumerate() {
            parents.push(if layer.parent == -1 {
                None
            } else {
                Some(layer_index(layer.parent, &|| {
                    format!("parent of layer {i}")
                })?)
            });
        }
        for start in 0..n_layers {
            let mut cur = parents[start];
            let mut steps = 0;
            while let Some(idx) = cur {
                steps += 1;
                if idx == start || steps > n_layers {
                    return Err(ParseError::LoopingLayer { layer: start });
                }
                cur = parents[idx];
            }
        }
        // Records: digests, links, empty inputs, loops.
        let mut digests = Vec::with_capacity(n_records);
        for (i, record) in config.records.iter().enumerate() {
            digests.push(digest::parse_sha256(&record.digest).map_err(|_| {
                ParseError::RecordDigest {
                    record: i,
                    digest: record.digest.clone(),
                }
            })?);
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
                layer_index(result.layer, &|| format!("result of record {i}"))?;
            }
            for chain in &record.chains {
                for &layer in &chain.layers {
                    layer_index(layer, &|| format!("chain of record {i}"))?;
                }
            }
        }
        let order = topological_order(&config.records)?;

        let mut graph = CacheGraph::new();
        // Config layer index -> graph layer, or None when a blob of its chain is not listed.
        let mut layer_map: Vec<Option<Option<LayerIdx>>> = vec![None; n_layers];
        let mut resolve = |graph: &mut CacheGraph, top: usize| -> Option<LayerIdx> {
            let mut chain = Vec::new();
            let mut cur = Some(top);
            while let Some(idx) = cur {
                chain.push(idx);
                cur = parents[idx];
            }
            let mut below: Option<LayerIdx> = None;
            for &idx in chain.iter().rev() {
                let mapped = match layer_map[idx] {
                    Some(done) => done,
                    None => {
                        let layer = &config.layers[idx];
                        let desc = layer.blob.parse::<Digest>().ok().and_then(|d| blob(&d));
                        let mapped = desc.map(|desc| graph.add_layer(desc, below));
                        layer_map[idx] = Some(mapped);
                        mapped
                    }
                };
                below = Some(mapped?);
            }
            below
        };
        let mut record_map = vec![usize::MAX; n_records];
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
            let idx = graph.add_record(digests[i].clone(), inputs);
            record_map[i] = idx;
            for result in &record.layers {
                if let Some(top) = resolve(&mut graph, result.layer as usize) {
                    graph.add_result(
                        idx,
                        CacheResult {
                            layer: top,
                            created_at: result.created_at,
                            source,
                        },
                    );
                }
            }
            for chain in &record.chains {
                let blobs: Option<Vec<Descriptor>> = chain
                    .layers
                    .iter()
                    .map(|&l| {
                        let d = config.layers[l as usize].blob.parse::<Digest>().ok()?;
                        blob(&d)
                    })
                    .collect();
                if let Some(top) = blobs.and_then(|blobs| graph.add_chain(blobs)) {
                    graph.add_result(
                        idx,
                        CacheResult {
                            layer: top,
                            created_at: chain.created_at,
                            source,
                        },
                    );
                }
            }
        }
        Ok(graph)
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
        let mut used = BTreeSet::new();
        for result in best.iter().flatten() {
            used.extend(self.chain(result.layer));
        }
        let chain_ids: HashMap<LayerIdx, Digest> = used
            .iter()
            .map(|&idx| (idx, self.chain_identity(idx)))
            .collect();
        let mut layer_order: Vec<LayerIdx> = used.into_iter().collect();
        layer_order.sort_by(|&a, &b| {
            self.layers[a]
                .blob
                .digest
                .as_ref()
                .cmp(self.layers[b].blob.digest.as_ref())
                .then_with(|| chain_ids[&a].as_ref().cmp(chain_ids[&b].as_ref()))
        });
        let layer_pos: HashMap<LayerIdx, usize> = layer_order
            .iter()
            .enumerate()
            .map(|(pos, &idx)| (idx, pos))
            .collect();

        let identities = self.record_identities();
        let mut record_order: Vec<RecordIdx> = (0..self.records.len()).collect();
        record_order.sort_by(|&a, &b| self.compare_records(a, b, &identities));
        let record_pos: HashMap<RecordIdx, usize> = record_order
            .iter()
            .enumerate()
            .map(|(pos, &idx)| (idx, pos))
            .collect();

        let layers = layer_order
            .iter()
            .map(|&idx| CacheLayer {
                blob: self.layers[idx].blob.digest.to_string(),
                parent: self.layers[idx].parent.map_or(-1, |p| layer_pos[&p] as i64),
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
                                link: record_pos[&link.record] as i64,
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
                            layer: layer_pos[&result.layer] as i64,
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
        let mut reachable = BTreeSet::new();
        let mut stack: Vec<RecordIdx> = targets.to_vec();
        while let Some(idx) = stack.pop() {
            if reachable.insert(idx) {
                for links in &self.records[idx].inputs {
                    stack.extend(links.iter().map(|link| link.record));
                }
            }
        }
        let target_layers: HashSet<LayerIdx> = targets
            .iter()
            .filter_map(|&t| self.best_result(t))
            .flat_map(|result| self.chain(result.layer))
            .collect();
        let mut out = CacheGraph::new();
        let mut map: HashMap<RecordIdx, RecordIdx> = HashMap::new();
        for idx in self.topological(&reachable) {
            let record = &self.records[idx];
            let inputs = record
                .inputs
                .iter()
                .map(|links| {
                    links
                        .iter()
                        .map(|link| Link {
                            selector: link.selector.clone(),
                            record: map[&link.record],
                        })
                        .collect()
                })
                .collect();
            let new_idx = out.add_record(record.digest.clone(), inputs);
            map.insert(idx, new_idx);
            if record.is_root() {
                continue;
            }
            let keep = match mode {
                Mode::Max => self.best_result(idx),
                Mode::Min if targets.contains(&idx) => self.best_result(idx),
                Mode::Min => self
                    .best_result(idx)
                    .filter(|result| target_layers.contains(&result.layer)),
            };
            if let Some(result) = keep {
                let blobs = self.chain_blobs(result.layer).into_iter().cloned();
                if let Some(top) = out.add_chain(blobs) {
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
        let all: BTreeSet<RecordIdx> = (0..other.records.len()).collect();
        self.absorb_set(other, &all)
    }

    /// The graph without the records that can never give a hit: those with no result and no
    /// descendant with one (a step whose results were all pruned, and the steps above it).
    /// Without this, a cache rewritten after every build (the root's own) keeps the records of
    /// every version ever built and grows without bound.
    pub fn without_dead_records(&self) -> CacheGraph {
        let all: BTreeSet<RecordIdx> = (0..self.records.len()).collect();
        let mut useful = vec![false; self.records.len()];
        // Dependents come before their inputs in reverse topological order.
        for idx in self.topological(&all).into_iter().rev() {
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
        let set: BTreeSet<RecordIdx> = (0..self.records.len()).filter(|&i| useful[i]).collect();
        let mut out = CacheGraph::new();
        out.absorb_set(self, &set);
        out
    }

    /// Adds the records of `set` (which holds the inputs of its members) with their layers and
    /// results; returns the mapping of `other`'s record indexes (`usize::MAX` outside `set`).
    fn absorb_set(&mut self, other: &CacheGraph, set: &BTreeSet<RecordIdx>) -> Vec<RecordIdx> {
        let mut map = vec![usize::MAX; other.records.len()];
        let mut layer_map: HashMap<LayerIdx, LayerIdx> = HashMap::new();
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
            for result in &record.results {
                let mut below = None;
                for layer in other.chain(result.layer) {
                    let mapped = match layer_map.get(&layer) {
                        Some(&m) => m,
                        None => {
                            let m = self.add_layer(other.layers[layer].blob.clone(), below);
                            layer_map.insert(layer, m);
                            m
                        }
                    };
                    below = Some(mapped);
                }
                if let Some(top) = below {
                    self.add_result(
                        new_idx,
                        CacheResult {
                            layer: top,
                            created_at: result.created_at,
                            source: result.source,
                        },
                    );
                }
            }
        }
        map
    }

    /// Records of `set` ordered so that dependencies come first (the graph has no loops).
    fn topological(&self, set: &BTreeSet<RecordIdx>) -> Vec<RecordIdx> {
        let mut order = Vec::with_capacity(set.len());
        let mut state: HashMap<RecordIdx, bool> = HashMap::new();
        for &start in set {
            if state.contains_key(&start) {
                continue;
            }
            let mut stack = vec![(start, false)];
            while let Some((idx, expanded)) = stack.pop() {
                if expanded {
                    state.insert(idx, true);
                    order.push(idx);
                    continue;
                }
                if state.contains_key(&idx) {
                    continue;
                }
                state.insert(idx, false);
                stack.push((idx, true));
                for links in &self.records[idx].inputs {
                    for link in links {
                        if !state.contains_key(&link.record) {
                            stack.push((link.record, false));
                        }
                    }
                }
            }
        }
        order
    }

    /// A digest naming a layer chain by the blobs in it, bottom first.
    fn chain_identity(&self, top: LayerIdx) -> Digest {
        let mut text = String::new();
        for idx in self.chain(top) {
            text.push_str(self.layers[idx].blob.digest.as_ref());
            text.push('\n');
        }
        digest::sha256(text.as_bytes())
    }

    /// A digest per record naming it by its digest and, recursively, its links.
    fn record_identities(&self) -> Vec<Digest> {
        let all: BTreeSet<RecordIdx> = (0..self.records.len()).collect();
        let mut ids: Vec<Option<Digest>> = vec![None; self.records.len()];
        for idx in self.topological(&all) {
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

/// Orders config records dependencies-first, failing on loops.
fn topological_order(records: &[CacheRecord]) -> Result<Vec<usize>, ParseError> {
    // 0 = unvisited, 1 = in progress, 2 = done.
    let mut state = vec![0u8; records.len()];
    let mut order = Vec::with_capacity(records.len());
    for start in 0..records.len() {
        if state[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = 1;
        while let Some(&mut (idx, ref mut next)) = stack.last_mut() {
            let links: Vec<usize> = records[idx]
                .inputs
                .iter()
                .flatten()
                .map(|link| link.link as usize)
                .collect();
            if *next < links.len() {
                let dep = links[*next];
                *next += 1;
                match state[dep] {
                    0 => {
                        state[dep] = 1;
                        stack.push((dep, 0));
                    }
                    1 => return Err(ParseError::LoopingRecord { record: dep }),
                    _ => {}
                }
            } else {
                state[idx] = 2;
                order.push(idx);
                stack.pop();
            }
        }
    }
    Ok(order)
}
