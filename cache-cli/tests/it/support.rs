//! support tests of the buildcache binary.
