//! Fuzz target: `.dockerignore` patterns, matched against paths taken from the same input.
#![no_main]

use cache_dockerfile::IgnoreMatcher;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Patterns, then after a NUL the paths to match, one a line.
    let (patterns, paths) = text
        .split_once('\0')
        .unwrap_or((text, "a/b/c\nd.txt\n.git/x\n"));
    let Ok(matcher) = IgnoreMatcher::parse(patterns) else {
        return;
    };
    for path in paths.lines().take(64) {
        let _ = matcher.is_excluded(path);
        let _ = matcher.may_include_under(path);
    }
});
