//! The function-length rule: no `fn` in library code runs over [`MAX_FN_LINES`] lines unless a
//! `Reads better whole:` comment above it says why.
//!
//! A line-based scan, not a parser: comments and the insides of string and char literals are
//! blanked out first, so the braces left are the code's own, then braces are counted.

/// The longest a function may be, from its `fn` line to its closing brace, both included.
pub(crate) const MAX_FN_LINES: usize = 120;

/// The words that excuse a long function when they appear just above it.
pub(crate) const EXCUSE: &str = "Reads better whole:";

/// A function as the scan found it: name, first line (of `fn`) and last line (its `}`), 1-based.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FnSpan {
    pub(crate) name: String,
    pub(crate) first: usize,
    pub(crate) last: usize,
}

impl FnSpan {
    /// Lines from the `fn` line to the closing brace, both included.
    pub(crate) fn lines(&self) -> usize {
        self.last - self.first + 1
    }
}

/// The rule's violations in `text`, as `(line number, rule)`.
pub(crate) fn problems(text: &str) -> Vec<(usize, String)> {
    match long_fns(text) {
        Ok(long) => long
            .into_iter()
            .map(|span| {
                let rule = format!(
                    "`fn {}` is {} lines (over {MAX_FN_LINES}): split it into named steps, or say \
                     why it reads better whole in a `// {EXCUSE} ...` comment just above it",
                    span.name,
                    span.lines(),
                );
                (span.first, rule)
            })
            .collect(),
        Err(line) => vec![(
            line,
            "the function-length scan lost track of braces here: teach \
             xtask/src/tidy/fn_length.rs the construct"
                .to_owned(),
        )],
    }
}

/// Functions of `text` longer than [`MAX_FN_LINES`] without an excuse, outside `#[cfg(test)]` items.
///
/// Errs with a line number where the braces the scan sees do not balance: the scan misread the
/// file (a literal it does not know), and its findings cannot be trusted.
pub(crate) fn long_fns(text: &str) -> Result<Vec<FnSpan>, usize> {
    let lines: Vec<&str> = text.lines().collect();
    Ok(fn_spans(text)?
        .into_iter()
        .filter(|span| span.lines() > MAX_FN_LINES && !excused(&lines, span.first))
        .collect())
}

/// Whether the comments and attributes just above line `first` (1-based) hold [`EXCUSE`].
fn excused(lines: &[&str], first: usize) -> bool {
    for line in lines[..first - 1].iter().rev() {
        let trimmed = line.trim();
        if trimmed.contains(EXCUSE) {
            return true;
        }
        // Comments and attributes belong to the function; a blank line or the end of the
        // previous item (`}`, `;`, `{`) is where its preamble starts.
        let ends_item = trimmed.ends_with('}') || trimmed.ends_with(';') || trimmed.ends_with('{');
        if trimmed.is_empty() || (!trimmed.starts_with("//") && ends_item) {
            return false;
        }
    }
    false
}

/// What an open brace belongs to.
enum Open {
    Block,
    Fn {
        name: String,
        first: usize,
    },
    /// A `#[cfg(test)]` item: nothing inside is library code.
    TestOnly,
}

/// Every function of `text` with a body, outside `#[cfg(test)]` items, in the order they close;
/// errs with the line where a `}` closes nothing, or the last line if a `{` is never closed.
pub(crate) fn fn_spans(text: &str) -> Result<Vec<FnSpan>, usize> {
    let code = blank_non_code(text);
    let mut spans = Vec::new();
    let mut stack: Vec<Open> = Vec::new();
    let mut test_only_depth = 0usize;
    // A `fn name` seen whose body has not opened yet, and the paren/bracket depth at that point.
    let mut pending_fn: Option<(String, usize, usize)> = None;
    let mut pending_test_only: Option<usize> = None;
    let mut parens = 0usize;
    for (idx, line) in code.lines().enumerate() {
        let number = idx + 1;
        if line.trim_start().starts_with("#[cfg(test)]") {
            pending_test_only = Some(parens);
        }
        let chars: Vec<char> = line.chars().collect();
        let mut at = 0;
        while at < chars.len() {
            let c = chars[at];
            if is_ident_start(c) && (at == 0 || !is_ident(chars[at - 1])) {
                let end = at + chars[at..].iter().take_while(|c| is_ident(**c)).count();
                let word: String = chars[at..end].iter().collect();
                if word == "fn" {
                    let rest = chars[end..].iter().skip_while(|c| c.is_whitespace());
                    let name: String = rest.take_while(|c| is_ident(**c)).collect();
                    // `fn(u8) -> u8` is a pointer type, not an item.
                    if !name.is_empty() {
                        pending_fn = Some((name, number, parens));
                    }
                }
                at = end;
                continue;
            }
            match c {
                '(' | '[' => parens += 1,
                ')' | ']' => parens = parens.saturating_sub(1),
                ';' => {
                    // A declaration without a body (`fn f();` in a trait, `#[cfg(test)] use x;`).
                    if pending_fn.as_ref().is_some_and(|p| p.2 == parens) {
                        pending_fn = None;
                    }
                    if pending_test_only == Some(parens) {
                        pending_test_only = None;
                    }
                }
                '{' => {
                    if pending_test_only.is_some_and(|p| p == parens) {
                        pending_test_only = None;
                        pending_fn = None;
                        test_only_depth += 1;
                        stack.push(Open::TestOnly);
                    } else if let Some((name, first, _)) = pending_fn.take_if(|p| p.2 == parens) {
                        stack.push(Open::Fn { name, first });
                    } else {
                        stack.push(Open::Block);
                    }
                }
                '}' => match stack.pop() {
                    Some(Open::Fn { name, first }) if test_only_depth == 0 => {
                        spans.push(FnSpan {
                            name,
                            first,
                            last: number,
                        });
                    }
                    Some(Open::TestOnly) => test_only_depth -= 1,
                    Some(_) => {}
                    None => return Err(number),
                },
                _ => {}
            }
            at += 1;
        }
    }
    if stack.is_empty() {
        Ok(spans)
    } else {
        Err(text.lines().count())
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `text` with comments removed and the insides of string, byte-string, raw-string and char
/// literals replaced by spaces; line breaks stay where they were.
pub(crate) fn blank_non_code(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    // Keeps line breaks, blanks everything else.
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    let mut at = 0;
    while at < chars.len() {
        let c = chars[at];
        let next = chars.get(at + 1).copied();
        let prev_is_ident = at > 0 && is_ident(chars[at - 1]);
        if c == '/' && next == Some('/') {
            while at < chars.len() && chars[at] != '\n' {
                at += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0usize;
            while at < chars.len() {
                if chars[at] == '/' && chars.get(at + 1) == Some(&'*') {
                    depth += 1;
                    at += 2;
                } else if chars[at] == '*' && chars.get(at + 1) == Some(&'/') {
                    depth -= 1;
                    at += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, chars[at]);
                    at += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(&chars, at).filter(|_| !prev_is_ident) {
            // r"…", r#"…"#, br"…": no escapes, ends at a quote followed by as many hashes.
            let open = chars[at..].iter().position(|&c| c == '"').unwrap_or(0) + at;
            out.push('"');
            at = open + 1;
            while at < chars.len() {
                let closes =
                    chars[at] == '"' && (1..=hashes).all(|k| chars.get(at + k) == Some(&'#'));
                if closes {
                    at += 1 + hashes;
                    break;
                }
                blank(&mut out, chars[at]);
                at += 1;
            }
            out.push('"');
        } else if c == '"' {
            out.push('"');
            at += 1;
            while at < chars.len() && chars[at] != '"' {
                if chars[at] == '\\' {
                    blank(&mut out, chars[at]);
                    at += 1;
                }
                if let Some(&c) = chars.get(at) {
                    blank(&mut out, c);
                }
                at += 1;
            }
            out.push('"');
            at += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1F600}', '\''), else a lifetime or label ('a).
            let end = if next == Some('\\') {
                chars[at + 2..]
                    .iter()
                    .skip(1)
                    .position(|&c| c == '\'')
                    .map(|p| at + 3 + p)
            } else if next.is_some() && chars.get(at + 2) == Some(&'\'') {
                Some(at + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    out.push_str("' '");
                    at = end + 1;
                }
                None => {
                    out.push('\'');
                    at += 1;
                }
            }
        } else {
            out.push(c);
            at += 1;
        }
    }
    out
}

/// If a raw string (`r"`, `r#"`, `br##"` …) starts at `at`, the number of its hashes.
fn raw_string_start(chars: &[char], at: usize) -> Option<usize> {
    let mut i = at;
    if chars.get(i) == Some(&'b') {
        i += 1;
    }
    if chars.get(i) != Some(&'r') {
        return None;
    }
    i += 1;
    let hashes = chars[i..].iter().take_while(|&&c| c == '#').count();
    (chars.get(i + hashes) == Some(&'"')).then_some(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(text: &str) -> Vec<(String, usize, usize)> {
        fn_spans(text)
            .expect("braces balance")
            .into_iter()
            .map(|s| (s.name, s.first, s.last))
            .collect()
    }

    #[test]
    fn braces_in_strings_chars_and_comments_are_not_code() {
        let text = r####"fn a() {
    let s = "}{ \" }";
    let c = '{';
    let e = '\'';
    let u = '\u{7d}';
    let r = r#"}" {"#;
    let b = br##"}"#}"##;
    // } a comment
    /* } /* nested { */ } */
    let l: &'static str = "x";
    'outer: loop { break 'outer; }
}
fn b<'a>(x: &'a str) -> fn(u8) -> u8 { let _ = x; |_| 0 }
"####;
        assert_eq!(spans(text), [("a".into(), 1, 12), ("b".into(), 13, 13)]);
    }

    #[test]
    fn declarations_nested_fns_and_test_modules() {
        let text = "trait T {\n    fn decl(&self, x: [u8; 4]);\n    fn body(&self) {\n        fn inner() {}\n    }\n}\n\
                    #[cfg(test)]\nuse std::fs;\nfn after() {\n}\n#[cfg(test)]\nmod tests {\n    fn helper() {\n    }\n}\n\
                    #[cfg(test)]\nfn test_only() {}\nfn last()\nwhere\n    u8: Copy,\n{\n}\n";
        assert_eq!(
            spans(text),
            [
                ("inner".into(), 4, 4),
                ("body".into(), 3, 5),
                ("after".into(), 9, 10),
                ("last".into(), 18, 22),
            ]
        );
    }

    #[test]
    fn long_fns_need_an_excuse_just_above() {
        let body = "    let x = 1;\n".repeat(MAX_FN_LINES - 2);
        let fits = format!("fn fits() {{\n{body}}}\n");
        assert!(long_fns(&fits).unwrap().is_empty());
        let long = format!("fn long() {{\n{body}    x;\n}}\n");
        let found = long_fns(&long).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].name.as_str(), found[0].lines()), ("long", 121));
        let rule = &problems(&long)[0].1;
        assert!(
            rule.contains("`fn long` is 121 lines") && rule.contains(EXCUSE),
            "{rule}"
        );
        let excused =
            format!("// {EXCUSE} one table.\n/// Docs.\n#[allow(clippy::too_many_lines)]\n{long}");
        assert!(long_fns(&excused).unwrap().is_empty());
        let too_far = format!("// {EXCUSE} about the item above.\nfn other() {{}}\n{long}");
        assert_eq!(long_fns(&too_far).unwrap().len(), 1);
    }

    #[test]
    fn a_misread_file_is_an_error_not_a_clean_bill() {
        assert_eq!(fn_spans("fn a() {\n}\n}\n"), Err(3));
        assert_eq!(fn_spans("fn a() {\n    let s = \"\n}\n"), Err(3));
        let found = problems("fn a() {\n}\n}\n");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, 3);
        assert!(found[0].1.contains("lost track of braces"), "{found:?}");
    }
}
