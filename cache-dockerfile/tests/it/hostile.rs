//! Hostile Dockerfiles (issue 15): huge ENV/ARG lists plan in linear time (speed is measured in
//! cache-bench, `cache-dockerfile/plan-env`), expansion bombs stop at the word-size limit.

use cache_dockerfile::{Limits, PlanOptions, parse, plan};

fn plan_text(
    text: &str,
    word_size: usize,
) -> Result<cache_dockerfile::Plan, cache_dockerfile::Error> {
    let df = parse(text)?;
    plan(
        &df,
        &PlanOptions {
            limits: Limits { word_size },
            ..PlanOptions::default()
        },
    )
}

fn many_lines(keyword: &str, n: usize) -> String {
    let mut text = String::from("FROM scratch\n");
    for i in 0..n {
        text.push_str(&format!("{keyword} v{i}=value{i}\n"));
    }
    // Reads a variable from the middle and runs with the whole environment.
    text.push_str(&format!("ENV last=$v{}\nRUN true\n", n / 2));
    text
}

#[test]
fn issue_15_100k_env_lines_plan() {
    let n = 100_000;
    let plan = plan_text(&many_lines("ENV", n), 16 << 20).unwrap();
    let stage = plan.target_stage();
    assert_eq!(
        stage.config.env.len(),
        n + 2,
        "PATH, the variables and last"
    );
    assert_eq!(
        stage.config.env[n + 1],
        ("last".into(), format!("value{}", n / 2))
    );
    assert_eq!(stage.steps[0].env.len(), n + 2);
}

#[test]
fn issue_15_100k_arg_lines_plan() {
    let n = 100_000;
    let plan = plan_text(&many_lines("ARG", n), 16 << 20).unwrap();
    let stage = plan.target_stage();
    // ARG values reach RUN's env but not the image config.
    assert_eq!(stage.steps[0].env.len(), n + 2);
    assert_eq!(stage.config.env.len(), 2);
    assert_eq!(
        stage.config.env[1],
        ("last".into(), format!("value{}", n / 2))
    );
}

#[test]
fn issue_15_env_expansion_bomb_stops_at_the_word_size_limit() {
    let mut text = String::from("FROM scratch\nENV a=xx\n");
    for _ in 0..64 {
        text.push_str("ENV a=$a$a\n");
    }
    let err = plan_text(&text, 1 << 20).unwrap_err();
    // Line 21 makes a value of exactly 1 MiB: the word fits, the environment (with PATH) not.
    assert_eq!(err.line(), Some(21), "{err}");
    assert!(
        err.message().contains("word-size limit of 1048576 bytes")
            && err.message().contains("--limit word-size="),
        "{err}"
    );
    // With room for the environment, the next line's 2 MiB word is refused.
    let err = plan_text(&text, (1 << 20) + 1000).unwrap_err();
    assert_eq!(err.line(), Some(22), "{err}");
    assert!(err.message().contains("expanded word is longer"), "{err}");
    assert!(err.to_string().len() < 1000, "the message is cut: {err}");
    // Under the limit the same lines plan.
    let ok: String = text.lines().take(12).map(|l| format!("{l}\n")).collect();
    let plan = plan_text(&ok, 1 << 20).unwrap();
    assert_eq!(plan.target_stage().config.env[1].1.len(), 2 << 10);
}

#[test]
fn issue_15_one_word_of_many_references_stops_at_the_limit() {
    let refs = "$a".repeat(2000);
    let text = format!("FROM scratch\nENV a={}\nLABEL l={refs}\n", "x".repeat(1000));
    let err = plan_text(&text, 1 << 20).unwrap_err();
    assert_eq!(err.line(), Some(3), "{err}");
    assert!(err.message().contains("word-size limit"), "{err}");
}

#[test]
fn issue_15_a_growing_replacement_stops_at_the_limit() {
    // Every character of a 1000-byte value replaced by the value itself: 1 MB.
    let text = format!(
        "FROM scratch\nENV a={}\nENV b=${{a//?/$a}}\n",
        "x".repeat(1000)
    );
    let err = plan_text(&text, 64 << 10).unwrap_err();
    assert_eq!(err.line(), Some(3), "{err}");
    assert!(err.message().contains("word-size limit of 65536"), "{err}");
    assert!(plan_text(&text, 2 << 20).is_ok());
}

#[test]
fn issue_15_many_variables_of_one_big_value_stop_at_the_limit() {
    let mut text = format!("FROM scratch\nENV big={}\n", "x".repeat(100_000));
    for i in 0..100 {
        text.push_str(&format!("ENV copy{i}=$big\n"));
    }
    let err = plan_text(&text, 1 << 20).unwrap_err();
    assert!(
        err.message().contains("environment of this stage")
            && err.message().contains("word-size limit of 1048576"),
        "{err}"
    );
    assert_eq!(err.line(), Some(12), "{err}");
}
