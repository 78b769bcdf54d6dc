//! registry tests of the buildcache binary.
