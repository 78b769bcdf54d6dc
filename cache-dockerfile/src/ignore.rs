//! `.dockerignore` matching: a port of `moby/patternmatcher` and `moby/patternmatcher/ignorefile`.
//!
//! Docker's rules, which differ from gitignore and from globset: patterns are anchored at the
//! context root, `*` and `?` never cross `/`, `**` crosses any number of directories, a pattern
//! that matches a directory excludes everything below it, `!` re-includes, and the last matching
//! line wins.

use regex::Regex;

use super::Error;

#[derive(Clone, Debug)]
enum MatchKind {
    Exact,
    /// `foo**`: any path starting with the text before `**`.
    Prefix(String),
    /// `**foo` / `**/foo`: any path ending with the text after `**`.
    Suffix(String),
    Regex(Regex),
}

#[derive(Clone, Debug)]
struct Pattern {
    /// The cleaned pattern without the `!`.
    cleaned: String,
    exclusion: bool,
    kind: MatchKind,
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            MatchKind::Exact => path == self.cleaned,
            MatchKind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            MatchKind::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            MatchKind::Regex(re) => re.is_match(path),
        }
    }
}

/// Decides which context paths a `.dockerignore` excludes.
#[derive(Clone, Debug, Default)]
pub struct IgnoreMatcher {
    patterns: Vec<Pattern>,
}

/// Go's `path.Clean` for slash-separated paths.
pub(crate) fn clean_path(path: &str) -> String {
    if path.is_empty() {
        return ".".into();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// Checks glob syntax like Go's `filepath.Match(pattern, ".")`, which patternmatcher uses to reject
/// malformed patterns (`[`, `[]a]`, `[x-]`, a trailing `\\`).
fn validate_glob(pattern: &str) -> Result<(), String> {
    let bad = || Err(format!("syntax error in pattern {pattern:?}"));
    let bytes = pattern.as_bytes();
    // One escapable character of a class range: not empty, not `-` or `]`, and more must follow.
    let get_esc = |mut i: usize| -> Option<usize> {
        match bytes.get(i) {
            None | Some(b'-') | Some(b']') => return None,
            Some(b'\\') => i += 1,
            Some(_) => {}
        }
        let ch = pattern.get(i..)?.chars().next()?;
        let next = i + ch.len_utf8();
        (next < bytes.len()).then_some(next)
    };
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'[' => {
                i += 1;
                if bytes.get(i) == Some(&b'^') {
                    i += 1;
                }
                let mut n_ranges = 0;
                loop {
                    if bytes.get(i) == Some(&b']') && n_ranges > 0 {
                        i += 1;
                        break;
                    }
                    let Some(next) = get_esc(i) else { return bad() };
                    i = next;
                    if bytes[i] == b'-' {
                        let Some(next) = get_esc(i + 1) else {
                            return bad();
                        };
                        i = next;
                    }
                    n_ranges += 1;
                }
            }
            b'\\' => {
                if i + 1 >= bytes.len() {
                    return bad();
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Compiles a cleaned pattern like `patternmatcher.Pattern.compile`.
fn compile(pattern: &str) -> Result<MatchKind, String> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut re = String::from("^");
    let mut kind = Kind::Exact;
    let mut pos = 0;
    let mut i = 0;
    let mut in_class = false;
    // Escapes one literal character; any ASCII punctuation may be escaped, in or out of a class.
    let literal = |ch: char| {
        if ch.is_ascii_punctuation() {
            format!("\\{ch}")
        } else {
            ch.to_string()
        }
    };
    while pos < chars.len() {
        let ch = chars[pos];
        pos += 1;
        if in_class && ch != ']' && ch != '\\' {
            // Go passes class contents to its regexp engine unchanged; keep ranges and negation.
            if ch == '-' || ch == '^' {
                re.push(ch);
            } else {
                re.push_str(&literal(ch));
            }
        } else if ch == '*' {
            if chars.get(pos) == Some(&'*') {
                pos += 1;
                if chars.get(pos) == Some(&'/') {
                    pos += 1;
                }
                if pos == chars.len() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        re.push_str(".*");
                        kind = Kind::Regex;
                    }
                } else {
                    re.push_str("(.*/)?");
                    kind = Kind::Regex;
                }
                if i == 0 {
                    kind = Kind::Suffix;
                }
            } else {
                re.push_str("[^/]*");
                kind = Kind::Regex;
            }
        } else if ch == '?' {
            re.push_str("[^/]");
            kind = Kind::Regex;
        } else if ".+()|{}$".contains(ch) {
            re.push('\\');
            re.push(ch);
        } else if ch == '\\' {
            match chars.get(pos) {
                Some(&next) => {
                    pos += 1;
                    re.push_str(&literal(next));
                    kind = Kind::Regex;
                }
                None => re.push_str("\\\\"),
            }
        } else if ch == '[' || ch == ']' {
            in_class = ch == '[';
            re.push(ch);
            kind = Kind::Regex;
        } else {
            re.push_str(&literal(ch));
        }
        i += 1;
    }
    Ok(match kind {
        Kind::Exact => MatchKind::Exact,
        Kind::Prefix => MatchKind::Prefix(pattern[..pattern.len() - 2].to_string()),
        Kind::Suffix => MatchKind::Suffix(pattern[2..].to_string()),
        Kind::Regex => {
            re.push('$');
            MatchKind::Regex(
                Regex::new(&re).map_err(|err| format!("syntax error in pattern: {err}"))?,
            )
        }
    })
}

/// Normalizes a context-relative path (`\` is an ordinary character): no leading `/`, cleaned.
fn normalize_rel(path: &str) -> String {
    let cleaned = clean_path(path);
    cleaned.trim_start_matches('/').to_string()
}

impl IgnoreMatcher {
    /// A matcher that excludes nothing (no `.dockerignore`).
    pub fn empty() -> Self {
        IgnoreMatcher::default()
    }

    /// Parses `.dockerignore` text: one pattern a line, `#` comments and blank lines ignored.
    ///
    /// Errors name the line of an invalid pattern (a lone `!`, an unclosed `[`).
    pub fn parse(text: &str) -> Result<Self, Error> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        Self::compile_lines(
            text.lines()
                .enumerate()
                .filter(|(_, line)| !line.starts_with('#'))
                .map(|(idx, line)| (idx + 1, line)),
        )
    }

    /// A matcher of `patterns`, one pattern each (no comments): `COPY --exclude` values.
    ///
    /// Errors name the 1-based position of an invalid pattern.
    pub fn from_patterns<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Result<Self, Error> {
        Self::compile_lines(patterns.into_iter().enumerate().map(|(i, p)| (i + 1, p)))
    }

    fn compile_lines<'a>(lines: impl Iterator<Item = (usize, &'a str)>) -> Result<Self, Error> {
        let mut patterns = Vec::new();
        for (line_no, line) in lines {
            let mut pattern = line.trim();
            if pattern.is_empty() {
                continue;
            }
            let exclusion = pattern.starts_with('!');
            if exclusion {
                pattern = pattern[1..].trim();
                if pattern.is_empty() {
                    return Err(Error::ignore_file(
                        line_no,
                        "illegal exclusion pattern: \"!\" needs a pattern after it",
                    ));
                }
            }
            let mut cleaned = clean_path(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            validate_glob(&cleaned).map_err(|err| Error::ignore_file(line_no, err))?;
            let kind = compile(&cleaned)
                .map_err(|err| Error::ignore_file(line_no, format!("{err} in {line:?}")))?;
            patterns.push(Pattern {
                cleaned,
                exclusion,
                kind,
            });
        }
        Ok(IgnoreMatcher { patterns })
    }

    /// Whether the context-relative `rel_path` is excluded: the last pattern matching it or one of
    /// its parent directories decides.
    pub fn is_excluded(&self, rel_path: &str) -> bool {
        let file = normalize_rel(rel_path);
        if file.is_empty() || file == "." {
            return false;
        }
        let parents: Vec<&str> = match file.rfind('/') {
            Some(i) => file[..i].split('/').collect(),
            None => Vec::new(),
        };
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            let mut hit = pattern.matches(&file);
            if !hit {
                for i in 0..parents.len() {
                    if pattern.matches(&parents[..=i].join("/")) {
                        hit = true;
                        break;
                    }
                }
            }
            if hit {
                matched = !pattern.exclusion;
            }
        }
        matched
    }

    /// Whether a walker must descend into the excluded directory `dir_rel` because a later `!`
    /// pattern may re-include something below it. Conservative: true when unsure.
    pub fn may_include_under(&self, dir_rel: &str) -> bool {
        self.may_match_below(dir_rel, true)
    }

    /// Whether a (non-`!`) pattern may match something below the directory `dir_rel` that it
    /// does not match itself: where a walker looking for `COPY --parents` matches must descend.
    /// Conservative: true when unsure.
    pub fn may_match_under(&self, dir_rel: &str) -> bool {
        self.may_match_below(dir_rel, false)
    }

    fn may_match_below(&self, dir_rel: &str, exclusion: bool) -> bool {
        let dir = normalize_rel(dir_rel);
        let dir_parts: Vec<&str> = if dir.is_empty() || dir == "." {
            Vec::new()
        } else {
            dir.split('/').collect()
        };
        self.patterns
            .iter()
            .filter(|p| p.exclusion == exclusion)
            .any(|p| {
                let pat_parts: Vec<&str> = p.cleaned.split('/').collect();
                for (i, dir_part) in dir_parts.iter().enumerate() {
                    let Some(pat_part) = pat_parts.get(i) else {
                        // The pattern names an ancestor of the directory: it matches it all.
                        return true;
                    };
                    if pat_part.contains("**") {
                        return true;
                    }
                    match compile(pat_part) {
                        Ok(kind) => {
                            let single = Pattern {
                                cleaned: pat_part.to_string(),
                                exclusion,
                                kind,
                            };
                            if !single.matches(dir_part) {
                                return false;
                            }
                        }
                        Err(_) => return true,
                    }
                }
                true
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(patterns: &str, path: &str, excluded: bool) {
        let m = IgnoreMatcher::parse(patterns).expect("valid patterns");
        assert_eq!(
            m.is_excluded(path),
            excluded,
            "patterns {patterns:?} path {path:?}"
        );
    }

    #[test]
    fn where_globset_differs() {
        check("[!a]", "b", false);
        check("[!a]", "!", true);
        check("foo", "foo/bar", true);
        check("a**", "a/b/c", true);
    }

    #[test]
    fn docker_pattern_rules() {
        check("*.md", "README.md", true);
        check("*.md", "docs/README.md", false);
        check("*/*.md", "docs/README.md", true);
        check("**/*.md", "docs/deep/README.md", true);
        check("**/*.md", "README.md", true);
        check("**/node_modules", "a/b/node_modules/x/y.js", true);
        check("**/node_modules", "node_modules", true);
        check("docs/**", "docs/a/b", true);
        check("docs/**", "docsx", false);
        check("**", "anything/at/all", true);
        check("a?c", "abc", true);
        check("a?c", "a/c", false);
        check("[a-c]x", "bx", true);
        check("[^a]x", "ax", false);
        check("[^a]x", "bx", true);
        check("[a&&b]", "&", true);
        check("x[.]y", "x.y", true);
        check("x[.]y", "xzy", false);
        check("\\*", "*", true);
        check("\\*", "a", false);
        check("/abs/path", "abs/path", true);
        check("./rel//x/../y", "rel/y", true);
        check("a.b", "axb", false);
        check("dir", "dir", true);
        check("dir", "dir2", false);
        check("dir", "other/dir", false);
        check("*", "x/y", true);
        check("", "x", false);
    }

    #[test]
    fn exclusions_and_order() {
        check("*.md\n!README.md", "README.md", false);
        check("*.md\n!README.md", "CHANGES.md", true);
        check("!README.md\n*.md", "README.md", true);
        check("docs\n!docs/keep.txt", "docs/keep.txt", false);
        check("docs\n!docs/keep.txt", "docs/other.txt", true);
        check("# comment\n\n  build  \n", "build/out", true);
        check("#*.md", "#x.md", false);
        check(" # not a comment", "# not a comment", true);
    }

    /// moby/patternmatcher's `TestMatches` (MatchesOrParentMatches) and `TestMatch` tables.
    #[test]
    fn patternmatcher_tables() {
        let (exact, inexact, fail) = (true, true, false);
        for (pattern, text, pass) in [
            ("**", "file", exact),
            ("**", "file/", exact),
            ("**/", "file", exact),
            ("**/", "file/", exact),
            ("**", "dir/file", exact),
            ("**/", "dir/file", exact),
            ("**", "dir/file/", exact),
            ("**/", "dir/file/", exact),
            ("**/**", "dir/file", exact),
            ("**/**", "dir/file/", exact),
            ("dir/**", "dir/file", exact),
            ("dir/**", "dir/file/", exact),
            ("dir/**", "dir/dir2/file", exact),
            ("dir/**", "dir/dir2/file/", exact),
            ("**/dir", "dir", exact),
            ("**/dir", "dir/file", inexact),
            ("**/dir2/*", "dir/dir2/file", exact),
            ("**/dir2/*", "dir/dir2/file/", inexact),
            ("**/dir2/**", "dir/dir2/dir3/file", exact),
            ("**/dir2/**", "dir/dir2/dir3/file/", exact),
            ("**file", "file", exact),
            ("**file", "dir/file", exact),
            ("**/file", "dir/file", exact),
            ("**file", "dir/dir/file", exact),
            ("**/file", "dir/dir/file", exact),
            ("**/file*", "dir/dir/file", exact),
            ("**/file*", "dir/dir/file.txt", exact),
            ("**/file*txt", "dir/dir/file.txt", exact),
            ("**/file*.txt", "dir/dir/file.txt", exact),
            ("**/file*.txt*", "dir/dir/file.txt", exact),
            ("**/**/*.txt", "dir/dir/file.txt", exact),
            ("**/**/*.txt2", "dir/dir/file.txt", fail),
            ("**/*.txt", "file.txt", exact),
            ("**/**/*.txt", "file.txt", exact),
            ("a**/*.txt", "a/file.txt", exact),
            ("a**/*.txt", "a/dir/file.txt", exact),
            ("a**/*.txt", "a/dir/dir/file.txt", exact),
            ("a/*.txt", "a/dir/file.txt", fail),
            ("a/*.txt", "a/file.txt", exact),
            ("a/*.txt**", "a/file.txt", exact),
            ("a[b-d]e", "ae", fail),
            ("a[b-d]e", "ace", exact),
            ("a[b-d]e", "aae", fail),
            ("a[^b-d]e", "aze", exact),
            (".*", ".foo", exact),
            (".*", "foo", fail),
            ("abc.def", "abcdef", fail),
            ("abc.def", "abc.def", exact),
            ("abc.def", "abcZdef", fail),
            ("abc?def", "abcZdef", exact),
            ("abc?def", "abcdef", fail),
            ("**/foo/bar", "foo/bar", exact),
            ("**/foo/bar", "dir/foo/bar", exact),
            ("**/foo/bar", "dir/dir2/foo/bar", exact),
            ("abc/**", "abc", fail),
            ("abc/**", "abc/def", exact),
            ("abc/**", "abc/def/ghi", exact),
            ("**/.foo", ".foo", exact),
            ("**/.foo", "bar.foo", fail),
            ("a(b)c/def", "a(b)c/def", exact),
            ("a(b)c/def", "a(b)c/xyz", fail),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", exact),
            (
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                exact,
            ),
            (
                "dist/*.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                exact,
            ),
            ("a\\\\", "a\\", exact),
            ("a\\*b", "a*b", exact),
            // Go's filepath.Match tests.
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", true),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("a[^a][^a][^a]b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("[\\-x]", "-", true),
            ("[\\-x]", "a", false),
            ("*x", "xxx", true),
        ] {
            check(pattern, text, pass);
        }
        for patterns in [
            "[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a[", "x\n!",
        ] {
            assert!(
                IgnoreMatcher::parse(patterns).is_err(),
                "{patterns:?} must be rejected"
            );
        }
        check("**\n!util/docker/web", "util/docker/web/foo", false);
        check(
            "**\n!util/docker/web\nutil/docker/web/foo",
            "util/docker/web/foo",
            true,
        );
        check(
            "**\n!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            false,
        );
        check(
            "**\n!dist/*.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            false,
        );
        check("docs/\n!docs/README.md", "docs/README.md", false);
        check("docs/*\n!docs/README.md", "docs/README.md", false);
        check("!fileutils.go\n*.go", "fileutils.go", true);
        check("*.go", ".", false);
    }

    #[test]
    fn descend_only_when_a_later_exclusion_may_apply() {
        let m = IgnoreMatcher::parse("docs\n!docs/keep/*.txt").expect("valid");
        assert!(m.is_excluded("docs"));
        assert!(m.may_include_under("docs"));
        assert!(m.may_include_under("docs/keep"));
        assert!(!m.may_include_under("docs/other"));
        let m = IgnoreMatcher::parse("build").expect("valid");
        assert!(!m.may_include_under("build"));
        let m = IgnoreMatcher::parse("*\n!**/*.rs").expect("valid");
        assert!(m.may_include_under("src/deep"));
    }

    #[test]
    fn invalid_patterns_name_the_line() {
        let err = IgnoreMatcher::parse("ok\n!\n").expect_err("lone ! is invalid");
        assert_eq!(err.line(), Some(2));
        assert_eq!(err.file(), ".dockerignore");
        let err = IgnoreMatcher::parse("a\nb\n[abc").expect_err("unclosed class");
        assert_eq!(err.line(), Some(3));
    }

    #[test]
    fn clean_path_matches_go() {
        for (input, expected) in [
            ("", "."),
            ("a/b/../c", "a/c"),
            ("/../a", "/a"),
            ("../a", "../a"),
            ("a/./b/", "a/b"),
            ("//a", "/a"),
            ("a/..", "."),
        ] {
            assert_eq!(clean_path(input), expected, "{input}");
        }
    }

    #[test]
    fn include_patterns_say_where_matches_may_be() {
        let m = IgnoreMatcher::from_patterns(["src/*/lib/*.rs"]).expect("valid");
        assert!(m.may_match_under("src"));
        assert!(m.may_match_under("src/a"));
        assert!(m.may_match_under("src/a/lib"));
        assert!(!m.may_match_under("docs"));
        assert!(!m.may_match_under("src/a/bin"));
        assert!(m.is_excluded("src/a/lib/x.rs"));
        let deep = IgnoreMatcher::from_patterns(["src/**/*.md"]).expect("valid");
        assert!(deep.may_match_under("src/a/b/c"));
        assert!(!deep.may_match_under("doc"));
    }

    #[test]
    fn empty_excludes_nothing() {
        assert!(!IgnoreMatcher::empty().is_excluded("a/b"));
        assert!(!IgnoreMatcher::empty().may_include_under("a"));
    }
}
