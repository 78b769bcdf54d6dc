//! Integration tests of cache-core: the spec's worked example, BuildKit's real exports, and
//! properties of the graph.

mod fixtures;
mod hostile;
mod properties;
mod worked_example;
