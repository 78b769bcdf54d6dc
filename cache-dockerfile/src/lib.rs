//! The Dockerfile front end of buildcache: parsing, variable expansion, `.dockerignore` and build
//! planning, with no I/O: reusable by any tool that reads Dockerfiles.
//!
//! [`parse`] reads the syntax (keeping 1-based line numbers), [`plan`] resolves it for one target
//! the way BuildKit's Dockerfile frontend does (stages the target does not need are dropped,
//! variables expanded, steps, image config and history computed), and [`IgnoreMatcher`] applies
//! `.dockerignore` rules to context paths.
//!
//! ```
//! use cache_dockerfile::{Base, Op, PlanOptions, parse, plan};
//!
//! let df = parse("FROM busybox AS build\nRUN echo hi > /out\nFROM scratch\nCOPY --from=build /out /\n")?;
//! let plan = plan(&df, &PlanOptions::default())?;
//! assert_eq!(plan.stages.len(), 2);
//! let target = plan.target_stage();
//! assert_eq!(target.base, Base::Scratch);
//! assert!(matches!(target.steps[0].op, Op::Copy(_)));
//! assert_eq!(format!("{} {}", target.progress_prefix(1), target.steps[0].display), "[stage-1 1/1] COPY --from=build /out /");
//! # Ok::<(), cache_dockerfile::Error>(())
//! ```
//!
//! `RUN --mount`, `--network` and `--security` become typed data ([`Mount`], [`Network`],
//! [`Security`]) in [`Op::Run`], with BuildKit's defaults and checks.
//!
//! Anything buildcache cannot build faithfully (`ADD <git repository>`, `ADD --unpack`,
//! `RUN --device`, other platforms than `linux/amd64`, ...) is an error naming the Dockerfile
//! line, never ignored.

mod config;
mod env;
mod error;
mod ignore;
mod lex;
mod mount;
mod parse;
mod plan;

pub use config::{Healthcheck, ImageConfig};
pub use error::Error;
pub use ignore::IgnoreMatcher;
pub use mount::{
    BindMount, CacheMount, Mount, Network, SecretMount, Security, Sharing, SshMount, TmpfsMount,
};
pub use parse::{
    ArgDecl, ArgInstruction, CommandLine, Directive, Dockerfile, Flag, HealthcheckSpec, Heredoc,
    Instruction, InstructionKind, RunCommand, Stage, parse,
};
pub use plan::{
    Base, CopyFrom, CopyOp, CopySource, DEFAULT_PATH, Download, HISTORY_COMMENT, HistoryEntry,
    Limits, Op, PLATFORM, ParentsSource, Plan, PlanOptions, PlannedStage, Step,
    normalize_image_ref, plan, plan_with_base_configs,
};

/// Expands variables in `word` like BuildKit's shell lexer (`frontend/dockerfile/shell/lex.go`).
///
/// Supports `$V`, `${V}`, `${V:-w}`, `${V-w}`, `${V:+w}`, `${V+w}`, `${V:?msg}`, `${V?msg}`,
/// `${V#p}`, `${V##p}`, `${V%p}`, `${V%%p}` and `${V/p/r}`, `${V//p/r}`. Single quotes suppress
/// expansion, double quotes allow it, and both are removed; `escape` (`\` or `` ` ``) escapes the
/// next character. Unset variables expand to nothing.
pub fn expand(
    word: &str,
    vars: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<String, Error> {
    lex::Lex::new(escape)
        .process_word(word, vars)
        .map_err(Error::general)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn expand_uses_the_given_escape() {
        let vars = |name: &str| (name == "A").then(|| "x".to_string());
        assert_eq!(
            expand("${A}-\\$A-'$A'", &vars, '\\'),
            Ok("x-$A-$A".to_string())
        );
        assert_eq!(expand("`$A\\", &vars, '`'), Ok("$A\\".to_string()));
        let err = expand("${A", &vars, '\\').expect_err("unterminated");
        assert!(err.message().contains("missing '}'"), "{err}");
    }

    proptest! {
        #[test]
        fn expand_never_panics(word in ".{0,64}", escape in prop::sample::select(vec!['\\', '`'])) {
            let vars = |name: &str| name.len().is_multiple_of(2).then(|| name.to_string());
            let _ = expand(&word, &vars, escape);
        }

        #[test]
        fn expand_never_panics_on_dollar_soup(word in "[${}:?+#%/*\\\\'\"a-c -]{0,40}") {
            let vars = |name: &str| (name == "a").then(|| "a*b".to_string());
            let _ = expand(&word, &vars, '\\');
        }

        #[test]
        fn parse_and_plan_never_panic(text in "(((FROM|RUN|COPY|ARG|ENV|WORKDIR|ONBUILD|ADD|#|LABEL|EXPOSE|HEALTHCHECK) )?[a-z$={}<>\\\\\"' :/.\\[\\]-]{0,20}(\n|\\\\\n)){0,8}") {
            if let Ok(df) = parse(&text) {
                let _ = plan(&df, &PlanOptions::default());
            }
        }

        #[test]
        fn parse_never_panics_on_arbitrary_text(text in ".{0,200}") {
            let _ = parse(&text);
        }

        #[test]
        fn ignore_never_panics(text in "[a-z*?!\\[\\]\\\\/.# \n-]{0,60}", path in "[a-z/.*]{0,20}") {
            if let Ok(m) = IgnoreMatcher::parse(&text) {
                let _ = m.is_excluded(&path);
                let _ = m.may_include_under(&path);
            }
        }
    }
}
