//! Fuzz target: `--cache-to` and `--cache-from` values, and the tag and size syntax they use.
#![no_main]

use cache_core::spec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = spec::parse_export(text);
    let _ = spec::parse_import(text);
    let _ = spec::check_tag(text);
    let _ = spec::parse_size(text);
});
