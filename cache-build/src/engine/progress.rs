//! Build events for progress displays: steps starting, logging, cached, done or failed.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One event of a build. `vertex` is a stable key per step or phase; displays number vertices
/// in the order they first appear (`#N`).
#[derive(Clone, Debug)]
pub enum Event {
    /// A vertex starts, with its display name (`[final 2/4] COPY app.conf /etc/app.conf`).
    Start {
        /// The key.
        vertex: String,
        /// The name.
        name: String,
    },
    /// A status line inside a vertex (`extracting sha256:…`), done when `done` is set.
    Status {
        /// The key.
        vertex: String,
        /// The text.
        text: String,
        /// How long it took, once done.
        done: Option<Duration>,
    },
    /// Output of a running command (1 = stdout, 2 = stderr).
    Log {
        /// The key.
        vertex: String,
        /// The stream.
        stream: u8,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Bytes of a blob moving between stores (`id` is its digest): `current` of `total`.
    /// Sent a few times a second while it moves, and once with `done` set.
    Transfer {
        /// The key.
        vertex: String,
        /// What moves (`sha256:…`).
        id: String,
        /// Bytes moved so far.
        current: u64,
        /// Bytes in all.
        total: u64,
        /// How long it took, once done.
        done: Option<Duration>,
    },
    /// Why the vertex's step was not found in any cache (sent before it runs).
    Miss {
        /// The key.
        vertex: String,
        /// The reason (`the parent step missed`, `the command text differs`, …).
        reason: String,
    },
    /// The vertex was satisfied from a cache.
    Cached {
        /// The key.
        vertex: String,
    },
    /// The vertex finished.
    Done {
        /// The key.
        vertex: String,
        /// Its duration.
        duration: Duration,
    },
    /// The vertex failed.
    Error {
        /// The key.
        vertex: String,
        /// What went wrong.
        message: String,
    },
    /// A warning not tied to a step.
    Warning(String),
}

/// Receives build events; implemented by the CLI's displays.
pub trait Progress: Send + Sync {
    /// Handles one event.
    fn event(&self, event: Event);
}

/// A display that ignores everything.
#[derive(Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _event: Event) {}
}

/// How often a moving blob's byte count is reported.
const TRANSFER_TICK: Duration = Duration::from_millis(150);

/// Runs `work`, which moves the blob `id` of `total` bytes and counts them in `counter`, and
/// reports its progress on `vertex`: a [`Event::Transfer`] every 150 ms while it runs, and one
/// when it is done (also on failure). The count itself costs one atomic add per chunk.
pub async fn track_transfer<T>(
    progress: &dyn Progress,
    vertex: &str,
    id: &str,
    total: u64,
    counter: &AtomicU64,
    work: impl Future<Output = T>,
) -> T {
    let started = Instant::now();
    let event = |done: Option<Duration>| Event::Transfer {
        vertex: vertex.to_owned(),
        id: id.to_owned(),
        current: counter.load(Ordering::Relaxed),
        total,
        done,
    };
    let mut work = std::pin::pin!(work);
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + TRANSFER_TICK, TRANSFER_TICK);
    progress.event(event(None));
    loop {
        tokio::select! {
            out = &mut work => {
                progress.event(event(Some(started.elapsed())));
                return out;
            }
            _ = ticks.tick() => progress.event(event(None)),
        }
    }
}

/// Counts the bytes of `blob`'s body into `counter` as they are read.
pub fn counted(blob: cache_core::Blob, counter: std::sync::Arc<AtomicU64>) -> cache_core::Blob {
    cache_core::transfer::counted(blob, counter)
}
