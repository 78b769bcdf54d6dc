//! A test hook: named points in write paths where a test can pause or observe the process.

use std::sync::OnceLock;

type Hook = Box<dyn Fn(&str) + Send + Sync>;

static HOOK: OnceLock<Hook> = OnceLock::new();

/// Installs `hook`, called with the name of each point a write reaches; test use only.
///
/// Points: `blob:chunk-written` (after each chunk of a streamed blob), `blob:before-rename`
/// (a complete, verified, synced temporary blob), `index:blob-written` (the manifest blob of
/// `write_index` is stored), `index:locked` (the `index.json` lock is held),
/// `index:before-rename` (the new `index.json` is synced under a temporary name) and
/// `index:renamed`. Crash tests install a hook that stops the process at one of them.
/// Only the first call has an effect.
#[doc(hidden)]
pub fn set_pause_hook(hook: impl Fn(&str) + Send + Sync + 'static) {
    let _ = HOOK.set(Box::new(hook));
}

/// Calls the hook, if one is installed, with `point`.
pub(crate) fn reach(point: &str) {
    if let Some(hook) = HOOK.get() {
        hook(point);
    }
}
