//! Fuzz target: a Dockerfile parsed and planned for its last stage and for each named stage, with
//! a small word-size limit so expansion bombs are cheap, and word expansion on its own.
#![no_main]

use cache_dockerfile::{Limits, PlanOptions, expand, parse, plan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let vars = |name: &str| (name.len() % 3 == 0).then(|| format!("<{name}>"));
    let _ = expand(text, &vars, '\\');
    let _ = expand(text, &vars, '`');
    let Ok(df) = parse(text) else {
        return;
    };
    let options = PlanOptions {
        limits: Limits {
            word_size: 64 << 10,
        },
        build_args: [("A".to_owned(), "$B".to_owned())].into(),
        ..PlanOptions::default()
    };
    let _ = plan(&df, &options);
    for stage in df.stages.iter().filter_map(|s| s.name.clone()).take(4) {
        let _ = plan(
            &df,
            &PlanOptions {
                target: Some(stage),
                ..options.clone()
            },
        );
    }
});
