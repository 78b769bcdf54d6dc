//! OCI layers: filesystem diffs, deterministic tar writing, compression and safe extraction.
