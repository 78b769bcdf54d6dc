//! Build events for progress displays: steps starting, logging, cached, done or failed.

use std::time::Duration;

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
