//! Pushing layers to a registry cache while the build still runs.
//!
//! A `mode=max` export writes every layer the build used or made, a `mode=min` export the layers
//! of the final image. Each of them is known as soon as it lands in the root store (a base
//! layer once fetched, a step's layer once written), and the engine says whether it is in the
//! target's chain, so the upload need not wait for the last step: here each
//! `--cache-to type=registry` gets a task that checks and uploads the layers its mode exports
//! as the engine announces them, beside the steps that still run. The export afterwards skips what was pushed and writes the rest, then the
//! config and the manifest; the tag is still written last, so a failed build or export leaves
//! the previous cache in place (blobs pushed early are then unreferenced, as after any failed
//! push). A failed early push is only logged: the export tries that blob again. Waiting for
//! the queue after the build counts against the export's time budget.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use cache_build::engine::LayerUse;
use cache_core::Mode;
use cache_core::spec::{ExportSpec, ExportTarget};
use cache_core::{Backend, Descriptor, Digest};
use cache_local::LayoutDir;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::stores::AnyBackend;

/// What one export's early pushes achieved.
#[derive(Debug, Default)]
pub struct Pushed {
    /// Layers now in the repository with the right size (written or found there).
    pub present: HashSet<Digest>,
    /// Layers this build uploaded, and their bytes.
    pub blobs_written: u64,
    pub bytes_written: u64,
    /// How long the export waited for the queue to drain after the build.
    pub waited: std::time::Duration,
}

/// The running early pushes of a build, one per eligible export.
pub struct EarlyPush {
    /// Emptied by [`EarlyPush::finish`]: the pushers end when their queue is drained. Each
    /// with whether it takes only the target's layers (`mode=min`).
    senders: Mutex<Vec<(bool, mpsc::UnboundedSender<Descriptor>)>>,
    tasks: Mutex<Vec<(String, JoinHandle<Pushed>)>>,
}

impl EarlyPush {
    /// Starts a pusher for each registry export whose layers are the ones the build writes (`same_compression` says whether the export asks for the build's own
    /// compression; another one is converted at export time, so pushing early would be waste).
    pub fn start(
        exports: &[ExportSpec],
        root: &Arc<LayoutDir>,
        same_compression: impl Fn(&ExportSpec) -> bool,
    ) -> EarlyPush {
        let mut senders = Vec::new();
        let mut tasks = Vec::new();
        for spec in exports {
            let eligible =
                matches!(spec.target, ExportTarget::Registry { .. }) && same_compression(spec);
            if !eligible {
                continue;
            }
            let Ok((AnyBackend::Registry(registry), _)) = AnyBackend::for_export(&spec.target)
            else {
                continue;
            };
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push((spec.mode == Mode::Min, tx));
            let task = tokio::spawn(push_all(registry, root.clone(), rx));
            tasks.push((spec.raw.clone(), task));
        }
        EarlyPush {
            senders: Mutex::new(senders),
            tasks: Mutex::new(tasks),
        }
    }

    /// Whether any export pushes early (the engine is told about layers only then).
    pub fn is_active(&self) -> bool {
        !self.tasks.lock().expect("early push lock").is_empty()
    }

    /// A layer is in the root store: queue it for every pusher whose mode exports it.
    pub fn announce(&self, desc: &Descriptor, role: LayerUse) {
        for (only_target, sender) in self.senders.lock().expect("early push lock").iter() {
            if !only_target || role == LayerUse::Target {
                let _ = sender.send(desc.clone());
            }
        }
    }

    /// Ends the queues (the build is over): the pushes still running by export (its `raw`
    /// value), for each export to wait for within its own time budget.
    pub fn finish(&self) -> HashMap<String, Pending> {
        self.senders.lock().expect("early push lock").clear();
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("early push lock"));
        tasks
            .into_iter()
            .map(|(raw, task)| (raw, Pending { task }))
            .collect()
    }
}

/// The early push of one export, draining its queue; dropped unfinished (an export out of
/// time), it stops.
pub struct Pending {
    task: JoinHandle<Pushed>,
}

impl Pending {
    /// Waits for the queued layers to be pushed.
    pub async fn wait(mut self) -> Pushed {
        let started = std::time::Instant::now();
        match (&mut self.task).await {
            Ok(mut pushed) => {
                pushed.waited = started.elapsed();
                pushed
            }
            Err(err) => {
                tracing::debug!("early push ended: {err}");
                Pushed::default()
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Pushes each announced layer once, one at a time (the build uses the other core).
async fn push_all<B: Backend>(
    registry: B,
    root: Arc<LayoutDir>,
    mut queue: mpsc::UnboundedReceiver<Descriptor>,
) -> Pushed {
    let mut pushed = Pushed::default();
    let mut tried = HashSet::new();
    while let Some(desc) = queue.recv().await {
        if !tried.insert(desc.digest.clone()) {
            continue;
        }
        match push_one(&registry, &root, &desc).await {
            Ok(written) => {
                if written {
                    pushed.blobs_written += 1;
                    pushed.bytes_written += desc.size;
                }
                pushed.present.insert(desc.digest);
            }
            Err(err) => tracing::debug!("early push of {} failed: {err}", desc.digest),
        }
    }
    pushed
}

/// Uploads `desc` from the root store unless the repository has it with the right size;
/// whether it uploaded.
async fn push_one<B: Backend>(
    registry: &B,
    root: &LayoutDir,
    desc: &Descriptor,
) -> cache_core::Result<bool> {
    let source = cache_core::transfer::FromBackend(root);
    let how = cache_core::transfer::BlobCopy::default();
    match cache_core::transfer::copy_blob(registry, &source, desc, &how).await {
        Ok(moved) => Ok(moved != cache_core::transfer::Moved::Present),
        Err(cache_core::transfer::Error::Missing { digest }) => Err(cache_core::Error::new(
            cache_core::ErrorKind::NotFound,
            format!("layer {digest} left the root store"),
        )),
        Err(cache_core::transfer::Error::Backend { source, .. }) => Err(source),
        Err(err) => Err(cache_core::Error::new(
            cache_core::ErrorKind::Unexpected,
            err.to_string(),
        )),
    }
}
