//! Word expansion as BuildKit's shell lexer does it (`frontend/dockerfile/shell/lex.go`).

use std::sync::LazyLock;

use regex::Regex;

/// Looks up a variable by name; `None` means unset.
pub(crate) type Vars<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Lexer options, named after the fields of BuildKit's `shell.Lex`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lex {
    pub escape: char,
    /// Keep quote characters in the output (they still group words).
    pub raw_quotes: bool,
    /// Keep escape characters in the output.
    pub raw_escapes: bool,
    /// Treat quotes as ordinary characters.
    pub skip_process_quotes: bool,
    /// Leave references to unset variables as written.
    pub skip_unset_env: bool,
    /// Bytes an expanded word may have (`word-size`): a longer one is an error, so that
    /// `ENV a=$a$a` repeated stops at the limit instead of doubling until memory runs out.
    pub max_word: usize,
}

impl Lex {
    /// A lexer with BuildKit's default options and the given escape character.
    pub(crate) fn new(escape: char) -> Self {
        Lex {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
            max_word: usize::MAX,
        }
    }

    /// Expands `word` into one string (whitespace kept), like `ProcessWord`.
    pub(crate) fn process_word(&self, word: &str, vars: Vars<'_>) -> Result<String, String> {
        self.process(word, vars).map(|(word, _)| word)
    }

    /// Expands `word` and splits the result into words, like `ProcessWords`.
    pub(crate) fn process_words(&self, word: &str, vars: Vars<'_>) -> Result<Vec<String>, String> {
        self.process(word, vars).map(|(_, words)| words)
    }

    fn process(&self, word: &str, vars: Vars<'_>) -> Result<(String, Vec<String>), String> {
        let mut sw = ShellWord {
            lex: *self,
            chars: word.chars().collect(),
            pos: 0,
            vars,
            raw_escapes: self.raw_escapes,
        };
        sw.process_stop_on(None, self.raw_escapes).map_err(|err| {
            format!(
                "failed to process {}: {err}",
                crate::error::shorten(&format!("{word:?}"))
            )
        })
    }
}

struct ShellWord<'a> {
    lex: Lex,
    chars: Vec<char>,
    pos: usize,
    vars: Vars<'a>,
    raw_escapes: bool,
}

#[derive(Default)]
struct Words {
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() && self.in_word {
            if !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else if !ch.is_whitespace() {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        for ch in s.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(std::mem::take(&mut self.word));
        }
        self.words
    }
}

impl ShellWord<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.chars.get(self.pos).copied();
        if ch.is_some() {
            self.pos += 1;
        }
        ch
    }

    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), String> {
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let res = self.process_stop_on_inner(stop);
        self.raw_escapes = saved;
        res
    }

    fn process_stop_on_inner(
        &mut self,
        stop: Option<char>,
    ) -> Result<(String, Vec<String>), String> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if stop == Some(ch) {
                self.next();
                return Ok((result, words.finish()));
            }
            self.check_size(result.len())?;
            let special = ch == '$'
                || ch == '<'
                || (!self.lex.skip_process_quotes && (ch == '\'' || ch == '"'));
            if special {
                let tmp = match ch {
                    '$' => self.process_dollar()?,
                    '<' => self.process_possible_heredoc(),
                    '\'' => self.process_single_quote()?,
                    _ => self.process_double_quote()?,
                };
                result.push_str(&tmp);
                if ch == '$' {
                    words.add_string(&tmp);
                } else {
                    words.add_raw_string(&tmp);
                }
                continue;
            }
            let mut ch = self.next().expect("peeked a character");
            if ch == self.lex.escape {
                if self.raw_escapes {
                    words.add_raw_char(ch);
                    result.push(ch);
                }
                match self.next() {
                    None => break,
                    Some(escaped) => ch = escaped,
                }
                words.add_raw_char(ch);
            } else {
                words.add_char(ch);
            }
            result.push(ch);
        }
        if let Some(stop) = stop {
            return Err(format!(
                "unexpected end of statement while looking for matching {stop}"
            ));
        }
        self.check_size(result.len())?;
        Ok((result, words.finish()))
    }

    /// Keeps `<<` and the blanks after it in one word, so `<< EOF` splits as one heredoc word.
    fn process_possible_heredoc(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".into();
        }
        self.next();
        let mut result = String::from("<<");
        while let Some(ch) = self.peek().filter(|c| matches!(c, ' ' | '\t' | '\r')) {
            self.next();
            result.push(ch);
        }
        result
    }

    fn process_single_quote(&mut self) -> Result<String, String> {
        let mut result = String::new();
        let open = self.next().expect("peeked a quote");
        if self.lex.raw_quotes {
            result.push(open);
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    );
                }
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(ch) => result.push(ch),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, String> {
        let mut result = String::new();
        let open = self.next().expect("peeked a quote");
        if self.lex.raw_quotes {
            result.push(open);
        }
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    );
                }
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                    self.check_size(result.len())?;
                }
                Some(_) => {
                    let mut ch = self.next().expect("peeked a character");
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(next) if next == '"' || next == '$' || next == self.lex.escape => {
                                ch = self.next().expect("peeked a character");
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn lookup(&self, name: &str) -> Option<String> {
        (self.vars)(name)
    }

    fn check_size(&self, len: usize) -> Result<(), String> {
        if len <= self.lex.max_word {
            return Ok(());
        }
        Err(format!(
            "the expanded word is longer than the word-size limit of {} bytes; raise it with --limit word-size=N if this Dockerfile is trusted",
            self.lex.max_word
        ))
    }

    /// Expands a `$name` or `${...}` reference; the next character is the `$`.
    fn process_dollar(&mut self) -> Result<String, String> {
        self.next();
        if self.peek() != Some('{') {
            return Ok(self.expand_bare());
        }
        self.next();
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            Some(_) => {}
        }
        let name = self.process_name();
        match self.next() {
            None => Err("syntax error: missing '}'".into()),
            Some('}') => Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.lex.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(op @ (':' | '+' | '-' | '?' | '#' | '%')) => self.expand_modifier(&name, op),
            Some('/') => self.expand_replace(&name),
            Some(other) => Err(format!("unsupported modifier ({other}) in substitution")),
        }
    }

    /// `$name` without braces; a `$` followed by no name stays a `$`.
    fn expand_bare(&mut self) -> String {
        let name = self.process_name();
        if name.is_empty() {
            return "$".into();
        }
        match self.lookup(&name) {
            Some(value) => value,
            None if self.lex.skip_unset_env => format!("${name}"),
            None => String::new(),
        }
    }

    /// Expands the text up to `stop` (consumed); `missing` is the error when the word ends first.
    fn read_until(&mut self, stop: char, raw: bool, missing: &str) -> Result<String, String> {
        match self.process_stop_on(Some(stop), raw) {
            Ok((word, _)) => Ok(word),
            Err(_) if self.peek().is_none() => Err(missing.into()),
            Err(err) => Err(err),
        }
    }

    /// `${name<op>word}` for `-`, `+`, `?`, `#`, `%` (`##` and `%%` greedy), and `:-`, `:+`, `:?`
    /// where the colon makes an empty value count as unset; `op` was just read.
    fn expand_modifier(&mut self, name: &str, op: char) -> Result<String, String> {
        let mut ch = op;
        let mut modifier = op.to_string();
        let null_is_unset = op == ':';
        if null_is_unset {
            ch = self
                .next()
                .ok_or_else(|| "syntax error: missing '}'".to_string())?;
            modifier.push(ch);
        }
        let raw = ch == '#' || ch == '%';
        // BuildKit has no `${V:#p}` or `${V:%p}`: the colon only modifies -, + and ?.
        if null_is_unset && raw {
            return Err(format!("unsupported modifier ({modifier}) in substitution"));
        }
        let word = self.read_until('}', raw, "syntax error: missing '}'")?;
        let value = self.lookup(name);
        if self.lex.skip_unset_env && value.is_none() {
            return Ok(format!("${{{name}{modifier}{word}}}"));
        }
        let empty = value
            .as_deref()
            .is_none_or(|v| null_is_unset && v.is_empty());
        match ch {
            '-' => Ok(if empty {
                word
            } else {
                value.unwrap_or_default()
            }),
            '+' => Ok(if empty { String::new() } else { word }),
            '?' => required_value(name, value, null_is_unset, &word),
            '%' | '#' => trim_pattern(ch, &word, &value.unwrap_or_default()),
            _ => Err(format!("unsupported modifier ({modifier}) in substitution")),
        }
    }

    /// `${name/pattern/replacement}` (first match) and `${name//pattern/replacement}` (every
    /// match); the first `/` was just read.
    fn expand_replace(&mut self, name: &str) -> Result<String, String> {
        let replace_all = self.peek() == Some('/');
        if replace_all {
            self.next();
        }
        let pattern = self.read_until('/', true, "syntax error: missing '/' in ${}")?;
        let replacement = self.read_until('}', true, "syntax error: missing '}'")?;
        let Some(value) = self.lookup(name) else {
            if self.lex.skip_unset_env {
                return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
            }
            return Ok(String::new());
        };
        let re = shell_pattern_to_regex(&pattern, true, false)
            .map_err(|err| format!("invalid pattern ({pattern}) in substitution: {err}"))?;
        // As in BuildKit: `//` expands `$0`, `$name`, `${name}` and `$$` in the replacement
        // (Go's regexp template, which the regex crate's syntax matches), `/` does not.
        if !replace_all {
            let replaced = re
                .replace(&value, regex::NoExpand(&replacement))
                .into_owned();
            self.check_size(replaced.len())?;
            return Ok(replaced);
        }
        self.replace_every_match(&re, &value, &replacement)
    }

    /// Replaces match by match, so that a replacement longer than what it replaces stops at the
    /// size limit instead of first filling memory.
    fn replace_every_match(
        &self,
        re: &Regex,
        value: &str,
        replacement: &str,
    ) -> Result<String, String> {
        let mut out = String::new();
        let mut last = 0;
        for caps in re.captures_iter(value) {
            let whole = caps.get(0).expect("group 0 is the match");
            out.push_str(&value[last..whole.start()]);
            caps.expand(replacement, &mut out);
            last = whole.end();
            self.check_size(out.len())?;
        }
        out.push_str(&value[last..]);
        self.check_size(out.len())?;
        Ok(out)
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_decimal_digit(ch) {
                while let Some(d) = self.peek().filter(|&c| is_decimal_digit(c)) {
                    self.next();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return ch.to_string();
            }
            if !is_letter(ch) && !is_decimal_digit(ch) && ch != '_' {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }
}

/// Unicode general category Nd (Go's `unicode.IsDigit`): `²` is not one, `٣` is.
fn is_decimal_digit(ch: char) -> bool {
    static ND: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\p{Nd}$").expect("valid regex"));
    ch.is_ascii_digit() || (!ch.is_ascii() && ND.is_match(ch.encode_utf8(&mut [0; 4])))
}

/// Unicode general category L (Go's `unicode.IsLetter`), narrower than Rust's `is_alphabetic`.
fn is_letter(ch: char) -> bool {
    static L: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\p{L}$").expect("valid regex"));
    ch.is_ascii_alphabetic() || (!ch.is_ascii() && L.is_match(ch.encode_utf8(&mut [0; 4])))
}

/// `${name?word}` and `${name:?word}`: the value, or an error naming the variable (`word` is
/// the message if given).
fn required_value(
    name: &str,
    value: Option<String>,
    null_is_unset: bool,
    word: &str,
) -> Result<String, String> {
    let problem = match value {
        None => "is not allowed to be unset",
        Some(v) if null_is_unset && v.is_empty() => "is not allowed to be empty",
        Some(v) => return Ok(v),
    };
    Err(format!(
        "{name}: {}",
        if word.is_empty() { problem } else { word }
    ))
}

/// `${name#pattern}`, `${name##pattern}` (`op` `#`) and `${name%pattern}`, `${name%%pattern}`
/// (`op` `%`): `value` without its shortest (doubled: longest) matching prefix or suffix.
fn trim_pattern(op: char, word: &str, value: &str) -> Result<String, String> {
    let (pattern, greedy) = match word.strip_prefix(op) {
        Some(rest) => (rest, true),
        None => (word, false),
    };
    if op == '%' {
        trim_suffix(pattern, value, greedy)
    } else {
        trim_prefix(pattern, value, greedy)
    }
}

/// Converts a `${var%pattern}`-style pattern to a regex (no bracket expressions).
fn shell_pattern_to_regex(pattern: &str, greedy: bool, anchored: bool) -> Result<Regex, String> {
    let mut out = String::new();
    if anchored {
        out.push('^');
    }
    let star = if greedy { ".*" } else { ".*?" };
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let tok = chars[i];
        i += 1;
        match tok {
            '*' => out.push_str(star),
            '?' => out.push('.'),
            '\\' => {
                if matches!(chars.get(i), Some('}' | '/')) {
                    continue;
                }
                let Some(&next) = chars.get(i) else {
                    return Err("invalid escape at end of pattern".into());
                };
                i += 1;
                if !matches!(next, '*' | '?' | '\\') {
                    return Err(format!("invalid escape '\\{next}'"));
                }
                out.push('\\');
                out.push(next);
            }
            _ => out.push_str(&regex::escape(&tok.to_string())),
        }
    }
    Regex::new(&out).map_err(|err| err.to_string())
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let re = shell_pattern_to_regex(pattern, greedy, true)
        .map_err(|err| format!("invalid pattern ({pattern}) in substitution: {err}"))?;
    Ok(match re.find(value) {
        Some(m) => value[m.end()..].to_string(),
        None => value.to_string(),
    })
}

/// Reverses a pattern while keeping each escape in front of the character it escapes.
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut units: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\\' && i + 1 < chars.len() {
            units.push(format!("\\{}", chars[i + 1]));
            i += 2;
        } else {
            units.push(chars[i].to_string());
            i += 1;
        }
    }
    units.reverse();
    units.concat()
}

fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let reversed: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn vars() -> BTreeMap<&'static str, &'static str> {
        BTreeMap::from([
            ("V", "val"),
            ("EMPTY", ""),
            ("PATHV", "/usr/local/bin:/usr/bin"),
            ("FILE", "archive.tar.gz"),
            ("SP", "a b"),
        ])
    }

    fn run(lex: Lex, input: &str) -> Result<(String, Vec<String>), String> {
        let vars = vars();
        let lookup = |name: &str| vars.get(name).map(|v| v.to_string());
        lex.process(input, &lookup).map_err(|err| {
            // Strip the "failed to process" wrapper so expectations stay short.
            err.split_once(": ")
                .map(|(_, rest)| rest.to_string())
                .unwrap_or(err)
        })
    }

    #[track_caller]
    fn check(input: &str, expected: Result<&str, &str>) {
        let got = run(Lex::new('\\'), input).map(|(word, _)| word);
        let got = got.as_ref().map(String::as_str).map_err(String::as_str);
        assert_eq!(got, expected, "input: {input:?}");
    }

    #[test]
    fn expansion_forms() {
        check("$V", Ok("val"));
        check("${V}", Ok("val"));
        check("x${V}y", Ok("xvaly"));
        check("$Vx", Ok(""));
        check("$UNSET", Ok(""));
        check("${UNSET:-w}", Ok("w"));
        check("${EMPTY:-w}", Ok("w"));
        check("${EMPTY-w}", Ok(""));
        check("${UNSET-w}", Ok("w"));
        check("${V:-w}", Ok("val"));
        check("${V:+w}", Ok("w"));
        check("${EMPTY:+w}", Ok(""));
        check("${EMPTY+w}", Ok("w"));
        check("${UNSET+w}", Ok(""));
        check("${V:-$EMPTY}", Ok("val"));
        check("${UNSET:-${V}}", Ok("val"));
        check("${V:?oops}", Ok("val"));
        check("${UNSET:?oops}", Err("UNSET: oops"));
        check("${UNSET?}", Err("UNSET: is not allowed to be unset"));
        check("${EMPTY:?}", Err("EMPTY: is not allowed to be empty"));
        check("${FILE%.*}", Ok("archive.tar"));
        check("${FILE%%.*}", Ok("archive"));
        check("${FILE#*.}", Ok("tar.gz"));
        check("${FILE##*.}", Ok("gz"));
        check("${PATHV/usr/opt}", Ok("/opt/local/bin:/usr/bin"));
        check("${PATHV//usr/opt}", Ok("/opt/local/bin:/opt/bin"));
        check("$", Ok("$"));
        check("a$ b", Ok("a$ b"));
        check("$1", Ok(""));
    }

    #[test]
    fn matches_buildkit_where_shells_differ() {
        // Found by running BuildKit's own envVarTest data: the colon only modifies -, + and ?.
        for modifier in [":#", ":##", ":%", ":%%"] {
            let message = format!("unsupported modifier ({}) in substitution", &modifier[..2]);
            check(&format!("${{FILE{modifier}*.}}"), Err(message.as_str()));
        }
        // `//` expands regexp template references in the replacement (`$0` is the match, an
        // unknown group is empty); `/` keeps the replacement literal.
        check(r"${PATHV//usr/<\$0>}", Ok(r"/<\usr>/local/bin:/<\usr>/bin"));
        check(r"${PATHV//usr/<\$1>}", Ok(r"/<\>/local/bin:/<\>/bin"));
        check(r"${PATHV/usr/<\$0>}", Ok(r"/<\$0>/local/bin:/usr/bin"));
        // Names are Unicode letters and decimal digits only, as Go's unicode.IsLetter/IsDigit:
        // `²` (category No) ends the name, `é` and `٣` (Nd) do not.
        let vars = BTreeMap::from([("é٣", "x")]);
        let lookup = |name: &str| vars.get(name).map(|v| v.to_string());
        let word = |input: &str| Lex::new('\\').process(input, &lookup).unwrap().0;
        assert_eq!(word("$é٣"), "x");
        assert_eq!(word("$é٣²"), "x²");
        assert_eq!(word("$²x"), "$²x");
    }

    #[test]
    fn quotes_and_escapes() {
        check("'$V'", Ok("$V"));
        check("\"$V\"", Ok("val"));
        check("\"a 'b' c\"", Ok("a 'b' c"));
        check("\\$V", Ok("$V"));
        check("\"\\$V\"", Ok("$V"));
        check("\"a\\b\"", Ok("a\\b"));
        check("a\\ b", Ok("a b"));
        check("trailing\\", Ok("trailing"));
        check(
            "'unterminated",
            Err("unexpected end of statement while looking for matching single-quote"),
        );
        check(
            "\"unterminated",
            Err("unexpected end of statement while looking for matching double-quote"),
        );
        check("${V", Err("syntax error: missing '}'"));
        check("${}", Err("syntax error: bad substitution"));
        check("${:a}", Err("syntax error: bad substitution"));
        check("${V:=x}", Err("unsupported modifier (:=) in substitution"));
        check("${V^}", Err("unsupported modifier (^) in substitution"));
    }

    /// BuildKit's `TestProcessWithMatches` and `TestShellParserMandatoryEnvVars` (results only).
    #[test]
    fn buildkit_expansion_cases() {
        #[track_caller]
        fn check_with(env: &[(&str, &str)], input: &str, expected: Option<&str>) {
            let lookup = |name: &str| {
                env.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            };
            let got = Lex::new('\\').process_word(input, &lookup);
            match expected {
                Some(e) => assert_eq!(got.as_deref(), Ok(e), "input: {input:?}"),
                None => assert!(got.is_err(), "input: {input:?} should fail, got {got:?}"),
            }
        }
        let fb = [("FOO", "xxx"), ("BAR", "")];
        check_with(&[("DUMMY", "dummy")], "x ${UNUSED}", Some("x "));
        check_with(&fb, "${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", Some("xxx  ccc"));
        check_with(
            &fb,
            "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
            Some("xxx bbb ccc"),
        );
        check_with(&fb, "${FOO:-}", Some("xxx"));
        check_with(&[], "${FOO:-}", Some(""));
        check_with(&fb, "${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}", Some("aaa bbb "));
        check_with(&fb, "${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}", Some("aaa  "));
        check_with(&fb, "${FOO?aaa}", Some("xxx"));
        check_with(&fb, "${BAR?bbb}", Some(""));
        check_with(&fb, "${BAZ?ccc}", None);
        check_with(&fb, "${BAR:?bbb}", None);
        check_with(&fb, "${BAZ:?}", None);
        check_with(&fb, "${FOO=aaa}", None);
        check_with(&fb, "${FOO=:aaa}", None);
        check_with(&[], "${FOO=}", None);
        check_with(
            &[("FOO", "()[]{}^$.*?|\\x")],
            "${FOO#()[]{\\}^$.\\*\\?|\\\\}",
            Some("x"),
        );
        check_with(&[("FOO", "xx**")], "${FOO%%\\**}", Some("xx"));
        check_with(&[("FOO", "xxyy")], "${FOO#*x*y}", Some("y"));
        check_with(&[("FOO", "xxyy")], "${FOO#*}", Some("xxyy"));
        check_with(&[("FOO", "xxyy"), ("BAR", "x")], "${FOO#$BAR}", Some("xyy"));
        check_with(&[("FOO", "xxyy"), ("BAR", "")], "${FOO#$BAR}", Some("xxyy"));
        check_with(&[("FOO", "xxyy")], "${FOO#}", Some("xxyy"));
        check_with(&[("FOO", "xxyy")], "${FOO##*x}", Some("yy"));
        check_with(&[("FOO", "???y")], "${FOO#?\\?}", Some("?y"));
        check_with(
            &[("FOO", "xxyy")],
            "${ABC:-.}${FOO%x}${ABC:-.}",
            Some(".xxyy."),
        );
        check_with(&[("FOO", "a***yy*")], "${FOO%%\\**\\*}", Some("a"));
        check_with(
            &[("FOO", "xxyy"), ("BAR", "")],
            "${FOO%%$BAR}",
            Some("xxyy"),
        );
        check_with(
            &[("FOO", "/foo*/*/*.txt"), ("NEEDLE", "\\*/")],
            "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
            Some("/foo.*/*.txt - /foo..*.txt"),
        );
        check_with(
            &[("FOO", "/tmp/tmp/bar.txt"), ("NEEDLE", "/tmp")],
            "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
            Some("/tmp/bar.txt - /bar.txt"),
        );
        check_with(
            &[
                ("FOO", "/a/foo/b/c.txt"),
                ("NEEDLE", "/?/"),
                ("REPLACEMENT", "/"),
            ],
            "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
            Some("/foo/b/c.txt - /foo/c.txt"),
        );
        check_with(
            &[
                ("FOO", "http://google.de"),
                ("NEEDLE", "http://"),
                ("REPLACEMENT", "https://"),
            ],
            "${FOO/$NEEDLE/$REPLACEMENT}",
            Some("https://google.de"),
        );
        check_with(
            &[("FOO", "/tmp/foo.txt")],
            "${FOO//\\//\\/}",
            Some("\\/tmp\\/foo.txt"),
        );
        check_with(
            &[("FOO", "xxyy"), ("BAR", "")],
            "${FOO/$BAR/ww}",
            Some("wwxxyy"),
        );
        check_with(&[("FOO", "xxyy")], "${FOO//ww}", None);
        check_with(&[("FOO", "xxyy")], "${FOO//}", None);
        check_with(&[("FOO", "xxyy")], "${FOO///}", Some("xxyy"));
        check_with(&[], "${FOO///}", Some(""));
        let release = "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz";
        check_with(
            &[
                ("VERSION", "v1.2.3"),
                ("TARGETOS", "linux"),
                ("TARGETARCH", "arm"),
                ("TARGETVARIANT", "v7"),
            ],
            release,
            Some("something-v1.2.3.linux-arm-v7.tar.gz"),
        );
        check_with(
            &[
                ("VERSION", "v1.2.3"),
                ("TARGETOS", "linux"),
                ("TARGETARCH", "amd64"),
            ],
            release,
            Some("something-v1.2.3.linux-amd64.tar.gz"),
        );
        // Mandatory variables: the message is expanded too.
        let err = Lex::new('\\').process_word("${VAR:?message here$ARG}", &|n| {
            (n == "ARG").then(|| "x".to_string())
        });
        assert!(err.is_err_and(|e| e.contains("message herex")));
        check_with(
            &[("VAR", ""), ("ARG", "x")],
            "${VAR?message here$ARG}",
            Some(""),
        );
    }

    #[test]
    fn pattern_helpers_match_buildkit() {
        for invalid in ["\\", "\\x", "\\\\\\"] {
            assert!(
                shell_pattern_to_regex(invalid, true, true).is_err(),
                "{invalid}"
            );
        }
        for (pattern, expected) in [
            ("a\\*c", "c\\*a"),
            ("\\\\\\ab", "b\\a\\\\"),
            ("ab\\", "\\ba"),
            ("👽\\🚀🖖", "🖖\\🚀👽"),
            ("\\\\b", "b\\\\"),
        ] {
            assert_eq!(reverse_pattern(pattern), expected, "{pattern}");
        }
    }

    #[test]
    fn backtick_escape() {
        let lex = Lex::new('`');
        assert_eq!(run(lex, "`$V").expect("valid").0, "$V");
        assert_eq!(run(lex, "a\\b").expect("valid").0, "a\\b");
    }

    #[test]
    fn raw_modes_keep_quotes_and_unset_references() {
        let lex = Lex {
            raw_quotes: true,
            skip_unset_env: true,
            ..Lex::new('\\')
        };
        assert_eq!(
            run(lex, "echo \"$V\" '$V' $NOPE ${NOPE:-x}")
                .expect("valid")
                .0,
            "echo \"val\" '$V' $NOPE ${NOPE:-x}"
        );
    }

    #[test]
    fn word_splitting() {
        let words = |s: &str| run(Lex::new('\\'), s).expect("valid").1;
        assert_eq!(words("a  b\tc"), ["a", "b", "c"]);
        assert_eq!(words("$SP c"), ["a", "b", "c"]);
        assert_eq!(words("\"$SP\" c"), ["a b", "c"]);
        assert_eq!(words("a\\ b"), ["a b"]);
        assert_eq!(words("cat <<  EOF > x"), ["cat", "<<  EOF", ">", "x"]);
        assert_eq!(words("a < b"), ["a", "<", "b"]);
    }
}
