//! Integration tests: a real loopback registry (env-gated) and a scripted fake for error paths.

mod fake;
mod memory;
mod real;
mod scripted;
