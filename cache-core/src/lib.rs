//! BuildKit-compatible build cache model.
#![forbid(unsafe_code)]
