//! build tests of the buildcache binary.
