//! Dockerfile syntax: parser directives, comments, line continuations, heredocs and arguments.
//!
//! A port of BuildKit's `frontend/dockerfile/parser` and `instructions` packages, restricted to
//! syntax: nothing is expanded here, and instructions or flags that are valid Dockerfile syntax but
//! that buildcache cannot build (`ONBUILD`, `RUN --device`, ...) parse fine and are rejected by
//! [`plan`](super::plan) only when a needed stage uses them.

use std::sync::LazyLock;

use regex::Regex;

use super::Error;
use super::lex::Lex;

/// A parsed Dockerfile: syntax only, with 1-based line numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dockerfile {
    /// Parser directives from the top of the file (`# syntax=...`, `# escape=...`, `# check=...`).
    pub directives: Vec<Directive>,
    /// The escape character: `\` unless `# escape=`` ` changed it.
    pub escape: char,
    /// `ARG` instructions before the first `FROM`; usable in `FROM` lines, and inside a stage once
    /// redeclared there with `ARG NAME`.
    pub global_args: Vec<ArgInstruction>,
    /// The build stages in file order; `FROM` starts each.
    pub stages: Vec<Stage>,
}

/// A parser directive such as `# syntax=docker/dockerfile:1` (accepted; only `escape` has an effect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    /// Lower-cased name: `syntax`, `escape` or `check`.
    pub name: String,
    /// The value as written.
    pub value: String,
    /// 1-based line.
    pub line: usize,
}

/// An `ARG` instruction before the first `FROM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgInstruction {
    /// 1-based line.
    pub line: usize,
    /// The declared names with their unexpanded defaults.
    pub args: Vec<ArgDecl>,
}

/// One `NAME[=default]` of an `ARG` instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgDecl {
    /// The argument name.
    pub name: String,
    /// The default value, unexpanded (quotes still in place), if one was given.
    pub default: Option<String>,
}

/// A build stage: a `FROM` line and the instructions up to the next `FROM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    /// 1-based line of the `FROM`.
    pub line: usize,
    /// The `FROM` line as written (continuations joined, trimmed).
    pub original: String,
    /// The base as written, unexpanded: `scratch`, a stage name, an image reference, `$ARG`...
    pub base: String,
    /// The `AS` name, lower-cased like BuildKit does.
    pub name: Option<String>,
    /// The `--platform` value, unexpanded.
    pub platform: Option<String>,
    /// The instructions of the stage, in order.
    pub instructions: Vec<Instruction>,
}

/// One instruction inside a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based first line.
    pub line: usize,
    /// 1-based last line (continuations and heredoc bodies included).
    pub end_line: usize,
    /// The instruction as written, continuation lines joined and trimmed, without heredoc bodies
    /// (BuildKit's progress text is made from this).
    pub original: String,
    /// `--name[=value]` flags in order; boolean flags given without a value hold `"true"`.
    pub flags: Vec<Flag>,
    /// Heredocs opened on the instruction line (RUN, COPY and ADD only), bodies as written.
    pub heredocs: Vec<Heredoc>,
    /// What the instruction is, with its unexpanded arguments.
    pub kind: InstructionKind,
}

impl Instruction {
    /// The instruction keyword in upper case (`RUN`, `COPY`, ...).
    pub fn keyword(&self) -> &'static str {
        self.kind.keyword()
    }

    /// The values of every `--name` flag, in order.
    pub fn flag_values(&self, name: &str) -> impl Iterator<Item = &str> {
        self.flags
            .iter()
            .filter(move |f| f.name == name)
            .map(|f| f.value.as_str())
    }

    /// The value of the last `--name` flag, if given.
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flag_values(name).last()
    }
}

/// A `--name=value` instruction flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flag {
    /// Name without the leading `--`.
    pub name: String,
    /// Value; `"true"`/`"false"` for boolean flags.
    pub value: String,
}

/// A heredoc (`<<EOF`, `<<-EOF`, `<<"EOF"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word with quotes removed (`EOF`).
    pub name: String,
    /// The body. In a [`Dockerfile`] it is as written (every line with its newline); in a
    /// [`Plan`](super::Plan) leading tabs are already stripped for `<<-` and variables expanded
    /// where BuildKit expands them.
    pub content: String,
    /// False when the delimiter was quoted: the body is then taken literally.
    pub expand: bool,
    /// True for `<<-`: leading tabs are stripped from body lines and the delimiter line.
    pub chomp: bool,
    /// The file descriptor prefix of `3<<EOF` (0 when absent).
    pub file_descriptor: u32,
    /// In a plan, when `Some`, the executor must provide `content` as a read-only executable file
    /// (mode 0755) at this path while the step runs. BuildKit does this for a `RUN <<EOF` whose
    /// body starts with `#!`, and the step's command then runs that file.
    pub mount_path: Option<String>,
}

/// A command in shell form (a string for the `SHELL`) or exec form (a JSON array).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandLine {
    /// Shell form: run as `SHELL + [string]` (default `/bin/sh -c <string>`).
    Shell(String),
    /// Exec form: run as given.
    Exec(Vec<String>),
}

/// The command of a RUN step (same forms as [`CommandLine`]).
pub type RunCommand = CommandLine;

/// The `HEALTHCHECK` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthcheckSpec {
    /// `HEALTHCHECK NONE`: disable any inherited check.
    None,
    /// `HEALTHCHECK [--flags] CMD ...`.
    Cmd(CommandLine),
}

/// An instruction with its unexpanded arguments, split the way BuildKit's parser splits them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstructionKind {
    /// `ARG NAME[=default] ...`.
    Arg(Vec<ArgDecl>),
    /// `ENV` key/value pairs (values still quoted as written).
    Env(Vec<(String, String)>),
    /// `LABEL` key/value pairs (still quoted as written).
    Label(Vec<(String, String)>),
    /// `MAINTAINER name` (deprecated).
    Maintainer(String),
    /// `RUN`.
    Run(CommandLine),
    /// `CMD`.
    Cmd(CommandLine),
    /// `ENTRYPOINT`.
    Entrypoint(CommandLine),
    /// `SHELL ["exe", "arg"]`.
    Shell(Vec<String>),
    /// `COPY` sources then destination, as split words (heredoc sources appear as `<<EOF`).
    Copy(Vec<String>),
    /// `ADD` sources then destination.
    Add(Vec<String>),
    /// `WORKDIR path`.
    Workdir(String),
    /// `USER user[:group]`.
    User(String),
    /// `STOPSIGNAL signal`.
    StopSignal(String),
    /// `VOLUME` paths.
    Volume(Vec<String>),
    /// `EXPOSE` port specs, sorted as BuildKit sorts them.
    Expose(Vec<String>),
    /// `HEALTHCHECK`.
    Healthcheck(HealthcheckSpec),
    /// `ONBUILD <instruction>` (the trigger text).
    Onbuild(String),
}

impl InstructionKind {
    /// The instruction keyword in upper case.
    pub fn keyword(&self) -> &'static str {
        match self {
            InstructionKind::Arg(_) => "ARG",
            InstructionKind::Env(_) => "ENV",
            InstructionKind::Label(_) => "LABEL",
            InstructionKind::Maintainer(_) => "MAINTAINER",
            InstructionKind::Run(_) => "RUN",
            InstructionKind::Cmd(_) => "CMD",
            InstructionKind::Entrypoint(_) => "ENTRYPOINT",
            InstructionKind::Shell(_) => "SHELL",
            InstructionKind::Copy(_) => "COPY",
            InstructionKind::Add(_) => "ADD",
            InstructionKind::Workdir(_) => "WORKDIR",
            InstructionKind::User(_) => "USER",
            InstructionKind::StopSignal(_) => "STOPSIGNAL",
            InstructionKind::Volume(_) => "VOLUME",
            InstructionKind::Expose(_) => "EXPOSE",
            InstructionKind::Healthcheck(_) => "HEALTHCHECK",
            InstructionKind::Onbuild(_) => "ONBUILD",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    Bool,
    Str,
    Multi,
}

fn allowed_flags(cmd: &str) -> &'static [(&'static str, FlagKind)] {
    use FlagKind::*;
    match cmd {
        "add" => &[
            ("chown", Str),
            ("chmod", Str),
            ("link", Bool),
            ("keep-git-dir", Bool),
            ("checksum", Str),
            ("exclude", Multi),
            ("unpack", Bool),
        ],
        "copy" => &[
            ("chown", Str),
            ("from", Str),
            ("chmod", Str),
            ("link", Bool),
            ("parents", Bool),
            ("exclude", Multi),
        ],
        "from" => &[("platform", Str)],
        "run" => &[
            ("mount", Multi),
            ("network", Str),
            ("security", Str),
            ("device", Multi),
        ],
        "healthcheck" => &[
            ("interval", Str),
            ("timeout", Str),
            ("start-period", Str),
            ("start-interval", Str),
            ("retries", Str),
        ],
        _ => &[],
    }
}

/// Parses the raw flag words like BuildKit's `BFlags.Parse`.
fn parse_flags(cmd: &str, words: &[String]) -> Result<Vec<Flag>, String> {
    let allowed = allowed_flags(cmd);
    let mut flags: Vec<Flag> = Vec::new();
    for word in words {
        let Some(arg) = word.strip_prefix("--") else {
            return Err(format!("arg should start with -- : {word}"));
        };
        let (name, value) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (arg, None),
        };
        let Some(&(_, kind)) = allowed.iter().find(|(n, _)| *n == name) else {
            return Err(format!(
                "unknown flag: {name} (the {} instruction takes {})",
                cmd.to_uppercase(),
                if allowed.is_empty() {
                    "no flags".to_string()
                } else {
                    allowed
                        .iter()
                        .map(|(n, _)| format!("--{n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        };
        if kind != FlagKind::Multi && flags.iter().any(|f| f.name == name) {
            return Err(format!("Duplicate flag specified: {name}"));
        }
        let value = match (kind, value) {
            (FlagKind::Bool, None) => "true".to_string(),
            (FlagKind::Bool, Some(v)) => match v.to_lowercase().as_str() {
                "true" => "true".to_string(),
                "false" => "false".to_string(),
                _ => return Err(format!("expecting boolean value for flag {name}, not: {v}")),
            },
            (_, None) => return Err(format!("missing a value on flag: {name}")),
            (_, Some(v)) => v.to_string(),
        };
        flags.push(Flag {
            name: name.to_string(),
            value,
        });
    }
    Ok(flags)
}

#[derive(Default)]
struct DirectiveParser {
    done: bool,
    directives: Vec<Directive>,
}

static DIRECTIVE_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$").expect("directive regex is valid")
});
static HEREDOC_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(\d*)<<(-?)\s*([^<]*)$").expect("heredoc regex is valid"));

impl DirectiveParser {
    /// Looks for a parser directive on `line` (1-based `line_no`); returns a new escape character.
    fn parse_line(&mut self, line: &str, line_no: usize) -> Result<Option<char>, String> {
        if self.done {
            return Ok(None);
        }
        let Some(rest) = line.strip_prefix('#') else {
            self.done = true;
            return Ok(None);
        };
        let rest = rest.trim_start();
        let Some(caps) = DIRECTIVE_RE.captures(rest) else {
            self.done = true;
            return Ok(None);
        };
        let name = caps[1].to_lowercase();
        if !matches!(name.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return Ok(None);
        }
        if self.directives.iter().any(|d| d.name == name) {
            return Err(format!("only one {name} parser directive can be used"));
        }
        let value = caps[2].to_string();
        let mut escape = None;
        if name == "escape" {
            escape = match value.as_str() {
                "`" => Some('`'),
                "\\" => Some('\\'),
                _ => {
                    return Err(format!(
                        "invalid escape token '{value}' does not match ` or \\"
                    ));
                }
            };
        }
        self.directives.push(Directive {
            name,
            value,
            line: line_no,
        });
        Ok(escape)
    }
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Removes a trailing escape character (line continuation); returns the line and whether it ends here.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    let Some(before) = trimmed.strip_suffix(escape) else {
        return (line, true);
    };
    if before.is_empty() {
        return ("", false);
    }
    if before.ends_with(escape) {
        return (line, true);
    }
    (before, false)
}

/// Splits off leading `--flag` words like BuildKit's `extractBuilderFlags`.
fn extract_builder_flags(line: &str) -> (String, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let n = chars.len();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut pos = 0;
    while pos <= n {
        let ch = if pos < n { chars[pos].1 } else { '\0' };
        if phase == Phase::Spaces {
            if pos == n {
                break;
            }
            if ch.is_whitespace() {
                pos += 1;
                continue;
            }
            if ch != '-' || pos + 1 == n || chars[pos + 1].1 != '-' {
                return (line[chars[pos].0..].to_string(), words);
            }
            phase = Phase::Word;
        }
        if pos == n {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if word == "--" {
                    return (line[chars[pos].0..].to_string(), words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            let mut ch = ch;
            if ch == '\\' {
                if pos + 1 == n {
                    pos += 1;
                    continue;
                }
                pos += 1;
                ch = chars[pos].1;
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Inside quotes.
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        let mut ch = ch;
        if ch == '\\' {
            if pos + 1 == n {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            ch = chars[pos].1;
        }
        word.push(ch);
        pos += 1;
    }
    (String::new(), words)
}

/// Splits words keeping quotes and escapes, like BuildKit's `parseWords`.
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let n = chars.len();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut word = String::new();
    let mut pos = 0;
    while pos <= n {
        let mut ch = if pos < n { chars[pos] } else { '\0' };
        if phase == Phase::Spaces {
            if pos == n {
                break;
            }
            if ch.is_whitespace() {
                pos += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if pos == n {
            if blank_ok || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if pos + 1 == n {
                    pos += 1;
                    continue;
                }
                word.push(ch);
                pos += 1;
                ch = chars[pos];
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Inside quotes.
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if pos + 1 == n {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            word.push(ch);
            ch = chars[pos];
        }
        word.push(ch);
        pos += 1;
    }
    words
}

fn split_whitespace_words(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        return Vec::new();
    }
    rest.split([' ', '\t', '\u{b}', '\u{c}', '\r'])
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// Parses a JSON array of strings; `Ok(None)` when `rest` is not a JSON array at all.
fn parse_json(rest: &str) -> Result<Option<Vec<String>>, String> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Ok(None);
    }
    let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(rest) else {
        return Ok(None);
    };
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(
                "when using JSON array syntax, arrays must be comprised of strings only"
                    .to_string(),
            ),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn parse_maybe_json(rest: &str) -> Result<CommandLine, String> {
    Ok(match parse_json(rest)? {
        Some(args) => CommandLine::Exec(args),
        None => CommandLine::Shell(rest.to_string()),
    })
}

fn parse_maybe_json_to_list(rest: &str) -> Result<(Vec<String>, bool), String> {
    Ok(match parse_json(rest)? {
        Some(args) => (args, true),
        None => (split_whitespace_words(rest), false),
    })
}

/// Parses `ENV`/`LABEL` arguments: `k=v ...` or the legacy `k v`.
fn parse_name_val(rest: &str, cmd: &str, escape: char) -> Result<Vec<(String, String)>, String> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Err(format!("{cmd} requires at least one argument"));
    }
    if !words[0].contains('=') {
        let mut parts = rest.splitn(2, |c: char| {
            matches!(c, ' ' | '\t' | '\u{b}' | '\u{c}' | '\r')
        });
        let key = parts.next().unwrap_or_default();
        let value = parts
            .next()
            .map(|v| v.trim_start_matches([' ', '\t', '\u{b}', '\u{c}', '\r']));
        return match value {
            Some(value) => Ok(vec![(key.to_string(), value.to_string())]),
            None => Err(format!("{cmd} must have two arguments")),
        };
    }
    words
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some(("", _)) => Err(format!("{cmd} names can not be blank")),
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => Err(format!(
                "Syntax error - can't find = in {word:?}. Must be of the form: name=value"
            )),
        })
        .collect()
}

fn parse_arg_decls(rest: &str, escape: char) -> Result<Vec<ArgDecl>, String> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Err("ARG requires at least one argument".into());
    }
    words
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some(("", _)) => Err("ARG names can not be blank".to_string()),
            Some((k, v)) => Ok(ArgDecl {
                name: k.to_string(),
                default: Some(v.to_string()),
            }),
            None => Ok(ArgDecl {
                name: word,
                default: None,
            }),
        })
        .collect()
}

/// Finds the heredocs opened on `line`, like BuildKit's `heredocsFromLine`.
fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, String> {
    let lex = Lex {
        raw_quotes: true,
        raw_escapes: true,
        skip_unset_env: true,
        ..Lex::new('\\')
    };
    let words = lex.process_words(line, &|_| None).unwrap_or_default();
    let mut docs = Vec::new();
    for word in words {
        if let Some(doc) = parse_heredoc(&word)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// Parses one `[n]<<[-]WORD` argument, like BuildKit's `ParseHeredoc`.
pub(crate) fn parse_heredoc(src: &str) -> Result<Option<Heredoc>, String> {
    let Some(caps) = HEREDOC_RE.captures(src) else {
        return Ok(None);
    };
    let file_descriptor = caps[1].parse().unwrap_or(0);
    let chomp = &caps[2] == "-";
    let rest = &caps[3];
    if rest.is_empty() {
        return Ok(None);
    }
    let lex = Lex {
        skip_unset_env: true,
        ..Lex::new('\\')
    };
    let words = lex.process_words(rest, &|_| None)?;
    if words.len() != 1 {
        return Ok(None);
    }
    let raw_words = Lex {
        raw_quotes: true,
        ..lex
    }
    .process_words(rest, &|_| None)?;
    if raw_words.len() != words.len() {
        return Err(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        ));
    }
    let quotes = |s: &str| s.matches(['\'', '"']).count();
    Ok(Some(Heredoc {
        name: words[0].clone(),
        content: String::new(),
        expand: quotes(&words[0]) == quotes(&raw_words[0]),
        chomp,
        file_descriptor,
        mount_path: None,
    }))
}

/// Strips leading tabs from every line, like BuildKit's `ChompHeredocContent`.
pub(crate) fn chomp_heredoc(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|line| line.trim_start_matches('\t'))
        .collect()
}

enum Parsed {
    From(Stage),
    Instruction(Instruction),
}

struct RawNode {
    line: usize,
    end_line: usize,
    cmd: String,
    original: String,
    flags: Vec<String>,
    args: String,
    heredocs: Vec<Heredoc>,
}

fn can_contain_heredoc(cmd: &str, args: &str) -> bool {
    let (cmd, args) = if cmd == "onbuild" {
        let trimmed = args.trim_start();
        let (sub, rest) = trimmed
            .split_once(char::is_whitespace)
            .unwrap_or((trimmed, ""));
        (sub.to_lowercase(), extract_builder_flags(rest).0)
    } else {
        (cmd.to_string(), args.to_string())
    };
    matches!(cmd.as_str(), "run" | "copy" | "add") && !matches!(parse_json(&args), Ok(Some(_)))
}

/// Parses a Dockerfile (syntax only); errors name the line.
pub fn parse(text: &str) -> Result<Dockerfile, Error> {
    let mut reader = LineReader::new(text);
    let mut nodes = Vec::new();
    while let Some(node) = reader.next_node()? {
        nodes.push(node);
    }
    if nodes.is_empty() {
        return Err(Error::general("file with no instructions: add a FROM line"));
    }
    // Instructions are parsed with the escape character of the whole file, as BuildKit does.
    let (global_args, stages) = group_into_stages(&nodes, reader.escape)?;
    Ok(Dockerfile {
        directives: reader.directives.directives,
        escape: reader.escape,
        global_args,
        stages,
    })
}

/// Reads physical lines into instruction nodes: parser directives, comments, line
/// continuations and heredoc bodies (BuildKit's `parser.Parse` loop).
struct LineReader<'a> {
    lines: Vec<&'a str>,
    /// How many lines were read: also the 1-based number of the last one.
    consumed: usize,
    escape: char,
    directives: DirectiveParser,
}

impl<'a> LineReader<'a> {
    fn new(text: &'a str) -> Self {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        LineReader {
            lines: text.split_inclusive('\n').collect(),
            consumed: 0,
            escape: '\\',
            directives: DirectiveParser::default(),
        }
    }

    /// The next physical line as written, with its 1-based number.
    fn next_line(&mut self) -> Option<(&'a str, usize)> {
        let raw = *self.lines.get(self.consumed)?;
        self.consumed += 1;
        Some((raw, self.consumed))
    }

    /// Looks for a parser directive on the line and blanks it if it is a comment.
    fn process(&mut self, raw: &str, strip: bool, line_no: usize) -> Result<String, Error> {
        let mut token = trim_newline(raw);
        if strip {
            token = token.trim_start();
        }
        if let Some(esc) = self
            .directives
            .parse_line(token, line_no)
            .map_err(|e| Error::at(line_no, e))?
        {
            self.escape = esc;
        }
        Ok(if is_comment(token) { "" } else { token }.to_string())
    }

    /// The next instruction, or `None` at the end of the file.
    fn next_node(&mut self) -> Result<Option<RawNode>, Error> {
        while let Some((raw, start_line)) = self.next_line() {
            let processed = self.process(raw, true, start_line)?;
            let (first, end) = trim_continuation(&processed, self.escape);
            if end && first.is_empty() {
                continue;
            }
            let joined = self.join_continuations(first.to_string(), end)?;
            return self.node_from(&joined, start_line).map(Some);
        }
        Ok(None)
    }

    /// Appends continuation lines to `buf` until a line ends the instruction; comment and empty
    /// lines in between are skipped.
    fn join_continuations(&mut self, mut buf: String, mut end: bool) -> Result<String, Error> {
        while !end {
            let Some((raw, line_no)) = self.next_line() else {
                break;
            };
            let processed = self.process(raw, false, line_no)?;
            if is_comment(raw) || processed.trim_start().is_empty() {
                continue;
            }
            let (part, e) = trim_continuation(&processed, self.escape);
            buf.push_str(part);
            end = e;
        }
        Ok(buf)
    }

    /// Splits the joined instruction line into keyword, flags and arguments, and reads the
    /// bodies of the heredocs it opens.
    fn node_from(&mut self, joined: &str, start_line: usize) -> Result<RawNode, Error> {
        let trimmed = joined.trim();
        let (cmd_word, rest) = match trimmed.find([' ', '\t', '\u{b}', '\u{c}', '\r']) {
            Some(i) => (&trimmed[..i], &trimmed[i..]),
            None => (trimmed, ""),
        };
        let cmd = cmd_word.to_lowercase();
        let (args, flags) = extract_builder_flags(rest);
        let args = args.trim().to_string();
        let heredocs = if can_contain_heredoc(&cmd, &args) && joined.contains("<<") {
            self.read_heredocs(joined, start_line)?
        } else {
            Vec::new()
        };
        Ok(RawNode {
            line: start_line,
            end_line: self.consumed,
            cmd,
            original: trimmed.to_string(),
            flags,
            args,
            heredocs,
        })
    }

    /// Reads, in order, the bodies of the heredocs opened on `line`.
    fn read_heredocs(&mut self, line: &str, start_line: usize) -> Result<Vec<Heredoc>, Error> {
        let mut docs = heredocs_from_line(line).map_err(|e| Error::at(start_line, e))?;
        for doc in &mut docs {
            if !self.read_heredoc_body(doc) {
                return Err(Error::at(
                    start_line,
                    format!(
                        "unterminated heredoc: no line with only {:?} ends it",
                        doc.name
                    ),
                ));
            }
        }
        Ok(docs)
    }

    /// Appends lines to the heredoc's body up to its delimiter line; false if none came.
    fn read_heredoc_body(&mut self, doc: &mut Heredoc) -> bool {
        while let Some((raw, _)) = self.next_line() {
            let mut candidate = trim_newline(raw);
            if doc.chomp {
                candidate = candidate.trim_start_matches('\t');
            }
            if candidate == doc.name {
                return true;
            }
            doc.content.push_str(raw);
        }
        false
    }
}

/// Parses every node and sorts the instructions into their stages; the ARGs before the first
/// FROM become the global ARGs.
fn group_into_stages(
    nodes: &[RawNode],
    escape: char,
) -> Result<(Vec<ArgInstruction>, Vec<Stage>), Error> {
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for node in nodes {
        let parsed = parse_node(node, escape).map_err(|e| Error::at(node.line, e))?;
        let ins = match parsed {
            Parsed::From(stage) => {
                stages.push(stage);
                continue;
            }
            Parsed::Instruction(ins) => ins,
        };
        if let Some(stage) = stages.last_mut() {
            stage.instructions.push(ins);
            continue;
        }
        match ins.kind {
            InstructionKind::Arg(args) => global_args.push(ArgInstruction {
                line: ins.line,
                args,
            }),
            _ => {
                return Err(Error::at(
                    ins.line,
                    format!(
                        "no build stage in current context: {} must come after a FROM line (only ARG may precede the first FROM)",
                        ins.keyword()
                    ),
                ));
            }
        }
    }
    if stages.is_empty() {
        return Err(Error::general(
            "dockerfile contains no stages to build: add a FROM line",
        ));
    }
    Ok((global_args, stages))
}

static STAGE_NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z][a-z0-9\-_.]*$").expect("stage name regex is valid"));

fn parse_node(node: &RawNode, escape: char) -> Result<Parsed, String> {
    let flags = parse_flags(&node.cmd, &node.flags)?;
    if node.cmd == "from" {
        return parse_from(node, &flags).map(Parsed::From);
    }
    Ok(Parsed::Instruction(Instruction {
        line: node.line,
        end_line: node.end_line,
        original: node.original.clone(),
        flags,
        heredocs: node.heredocs.clone(),
        kind: parse_kind(node, escape)?,
    }))
}

/// `FROM image [AS name]`, with its `--platform`.
fn parse_from(node: &RawNode, flags: &[Flag]) -> Result<Stage, String> {
    let args = split_whitespace_words(&node.args);
    let name = match args.len() {
        3 if args[1].eq_ignore_ascii_case("as") => {
            let name = args[2].to_lowercase();
            if !STAGE_NAME_RE.is_match(&name) {
                return Err(format!(
                    "invalid name for build stage: {:?}, name can't start with a number or contain symbols",
                    args[2]
                ));
            }
            Some(name)
        }
        1 => None,
        _ => {
            return Err(
                "FROM requires either one or three arguments (FROM image [AS name])".into(),
            );
        }
    };
    let platform = flags
        .iter()
        .rev()
        .find(|f| f.name == "platform")
        .map(|f| f.value.clone());
    Ok(Stage {
        line: node.line,
        original: node.original.clone(),
        base: args[0].clone(),
        name,
        platform,
        instructions: Vec::new(),
    })
}

/// The arguments of every instruction but FROM, split as BuildKit splits them.
fn parse_kind(node: &RawNode, escape: char) -> Result<InstructionKind, String> {
    let rest = node.args.as_str();
    Ok(match node.cmd.as_str() {
        "arg" => InstructionKind::Arg(parse_arg_decls(rest, escape)?),
        "env" => InstructionKind::Env(parse_name_val(rest, "ENV", escape)?),
        "label" => InstructionKind::Label(parse_name_val(rest, "LABEL", escape)?),
        "maintainer" => InstructionKind::Maintainer(one_argument(rest, "MAINTAINER")?),
        "run" => {
            if rest.is_empty() {
                return Err("RUN requires at least one argument".into());
            }
            InstructionKind::Run(parse_maybe_json(rest)?)
        }
        "cmd" => InstructionKind::Cmd(parse_maybe_json(rest)?),
        "entrypoint" => InstructionKind::Entrypoint(parse_maybe_json(rest)?),
        "shell" => InstructionKind::Shell(parse_shell(rest, &node.original)?),
        "copy" => InstructionKind::Copy(parse_copy_args(rest, "COPY")?),
        "add" => InstructionKind::Add(parse_copy_args(rest, "ADD")?),
        "workdir" => InstructionKind::Workdir(one_argument(rest, "WORKDIR")?),
        "user" => InstructionKind::User(one_argument(rest, "USER")?),
        "stopsignal" => InstructionKind::StopSignal(one_argument(rest, "STOPSIGNAL")?),
        "volume" => InstructionKind::Volume(parse_volumes(rest)?),
        "expose" => {
            let mut ports = split_whitespace_words(rest);
            if ports.is_empty() {
                return Err("EXPOSE requires at least one argument".into());
            }
            ports.sort();
            InstructionKind::Expose(ports)
        }
        "healthcheck" => InstructionKind::Healthcheck(parse_healthcheck(rest)?),
        "onbuild" => {
            if rest.is_empty() {
                return Err("ONBUILD requires at least one argument".into());
            }
            InstructionKind::Onbuild(rest.to_string())
        }
        _ => {
            return Err(format!(
                "unknown instruction: {} (instructions are FROM, ARG, ENV, RUN, COPY, ADD, WORKDIR, USER, LABEL, EXPOSE, CMD, ENTRYPOINT, SHELL, STOPSIGNAL, HEALTHCHECK, VOLUME, ONBUILD, MAINTAINER)",
                node.original
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_uppercase()
            ));
        }
    })
}

/// The whole argument text of MAINTAINER, WORKDIR, USER and STOPSIGNAL, which must not be empty.
fn one_argument(rest: &str, keyword: &str) -> Result<String, String> {
    if rest.is_empty() {
        return Err(format!("{keyword} requires exactly one argument"));
    }
    Ok(rest.to_string())
}

/// `SHELL ["exe", "arg"]`: JSON form only.
fn parse_shell(rest: &str, original: &str) -> Result<Vec<String>, String> {
    match parse_json(rest)? {
        Some(args) if args.is_empty() => Err("SHELL requires at least one argument".into()),
        Some(args) => Ok(args),
        None if rest.is_empty() => Err("SHELL requires at least one argument".into()),
        None => Err(format!(
            "SHELL requires the arguments to be in JSON form, e.g. SHELL [\"/bin/bash\", \"-c\"], got: {original}"
        )),
    }
}

/// The sources and destination of COPY or ADD; the destination can't be a heredoc.
fn parse_copy_args(rest: &str, keyword: &str) -> Result<Vec<String>, String> {
    let (args, _) = parse_maybe_json_to_list(rest)?;
    if args.len() < 2 {
        return Err(format!(
            "{keyword} requires at least two arguments, but only one was provided. Destination could not be determined"
        ));
    }
    if parse_heredoc(&args[args.len() - 1])
        .ok()
        .flatten()
        .is_some()
    {
        return Err(format!(
            "{keyword} cannot accept a heredoc as a destination"
        ));
    }
    Ok(args)
}

/// The paths of VOLUME, trimmed; none may be empty.
fn parse_volumes(rest: &str) -> Result<Vec<String>, String> {
    let (args, _) = parse_maybe_json_to_list(rest)?;
    if args.is_empty() {
        return Err("VOLUME requires at least one argument".into());
    }
    args.iter()
        .map(|v| match v.trim() {
            "" => Err("VOLUME specified can not be an empty string".into()),
            v => Ok(v.to_string()),
        })
        .collect()
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK CMD ...` (the flags are parsed apart).
fn parse_healthcheck(rest: &str) -> Result<HealthcheckSpec, String> {
    let (typ, cmd_rest) = match rest.find(char::is_whitespace) {
        Some(i) => (&rest[..i], rest[i..].trim_start()),
        None => (rest, ""),
    };
    if typ.is_empty() {
        return Err("HEALTHCHECK requires at least one argument".into());
    }
    match typ.to_uppercase().as_str() {
        "NONE" if !cmd_rest.is_empty() => Err("HEALTHCHECK NONE takes no arguments".into()),
        "NONE" => Ok(HealthcheckSpec::None),
        "CMD" => {
            let cmd = parse_maybe_json(cmd_rest)?;
            let empty = match &cmd {
                CommandLine::Shell(s) => s.is_empty(),
                CommandLine::Exec(v) => v.is_empty(),
            };
            if empty {
                return Err("Missing command after HEALTHCHECK CMD".into());
            }
            Ok(HealthcheckSpec::Cmd(cmd))
        }
        other => Err(format!("Unknown type {other:?} in HEALTHCHECK (try CMD)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only_instruction(text: &str) -> Instruction {
        let df = parse(text).expect("parses");
        assert_eq!(df.stages.len(), 1);
        assert_eq!(
            df.stages[0].instructions.len(),
            1,
            "{:?}",
            df.stages[0].instructions
        );
        df.stages[0].instructions[0].clone()
    }

    #[track_caller]
    fn check_kind(body: &str, expected: InstructionKind) {
        let ins = only_instruction(&format!("FROM scratch\n{body}\n"));
        assert_eq!(ins.kind, expected, "input: {body:?}");
    }

    #[track_caller]
    fn check_error(text: &str, line: Option<usize>, contains: &str) {
        let err = parse(text).expect_err("must fail");
        assert_eq!(err.line(), line, "{err}");
        assert!(
            err.message().contains(contains),
            "{err:?} should contain {contains:?}"
        );
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fixture_dockerfile_structure() {
        // `BUILDCACHE_FIXTURES` (set by `cargo xtask test`, which finds `../shared` from a
        // worktree too), else `../shared` beside the checkout.
        let dir = std::env::var_os("BUILDCACHE_FIXTURES").map_or_else(
            || {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../shared/fixtures/buildkit")
            },
            std::path::PathBuf::from,
        );
        let text = std::fs::read_to_string(dir.join("context/Dockerfile"))
            .expect("fixture Dockerfile is readable");
        let df = parse(&text).expect("parses");
        let names: Vec<_> = df
            .stages
            .iter()
            .map(|s| s.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, ["base", "builder", "unused", "final"]);
        assert_eq!(df.stages[0].line, 3);
        assert_eq!(df.stages[0].base, "127.0.0.1:5001/busybox:latest");
        let run = &df.stages[1].instructions[2];
        assert_eq!((run.line, run.end_line), (12, 14));
        assert_eq!(
            run.original,
            "RUN seq 1 3000000 | md5sum > /work/seq.md5  && cat /src/greeting.txt /src/numbers.txt /work/zeros.sha256 /work/seq.md5 > /out/artifact.txt  && sha256sum /out/artifact.txt > /out/artifact.sha256"
        );
    }

    #[test]
    fn continuations_and_comments() {
        let ins = only_instruction("FROM scratch\nRUN a \\\n  # a comment inside\n\n  b \\\n c\n");
        assert_eq!(
            ins.kind,
            InstructionKind::Run(CommandLine::Shell("a   b  c".into()))
        );
        assert_eq!((ins.line, ins.end_line), (2, 6));
        // An escaped escape at the end is not a continuation.
        let df = parse("FROM scratch\nRUN echo \\\\\nRUN b\n").expect("parses");
        assert_eq!(df.stages[0].instructions.len(), 2);
        // Leading whitespace and blank lines are fine; case-insensitive keywords.
        let df = parse("\n   from scratch as B\n\trun x\n").expect("parses");
        assert_eq!(df.stages[0].name.as_deref(), Some("b"));
        assert_eq!(df.stages[0].instructions[0].line, 3);
    }

    #[test]
    fn directives() {
        let df = parse("# syntax=docker/dockerfile:1\n# escape=`\nFROM scratch\nRUN a `\n b\n")
            .expect("parses");
        assert_eq!(df.escape, '`');
        assert_eq!(df.directives.len(), 2);
        assert_eq!(df.directives[0].name, "syntax");
        assert_eq!(
            df.stages[0].instructions[0].kind,
            InstructionKind::Run(CommandLine::Shell("a  b".into()))
        );
        // After a normal comment, directives are plain comments.
        let df = parse("# hello\n# escape=`\nFROM scratch\n").expect("parses");
        assert_eq!(df.escape, '\\');
        assert!(df.directives.is_empty());
        check_error(
            "# escape=x\nFROM scratch\n",
            Some(1),
            "invalid escape token",
        );
        check_error(
            "# syntax=a\n# syntax=b\nFROM scratch\n",
            Some(2),
            "only one syntax parser directive",
        );
    }

    #[test]
    fn instruction_arguments() {
        check_kind(
            "ENV A=1 B=\"x y\"",
            InstructionKind::Env(vec![
                ("A".into(), "1".into()),
                ("B".into(), "\"x y\"".into()),
            ]),
        );
        check_kind(
            "ENV A hello world",
            InstructionKind::Env(vec![("A".into(), "hello world".into())]),
        );
        check_kind(
            "LABEL \"com.x\"=\"v 1\"",
            InstructionKind::Label(vec![("\"com.x\"".into(), "\"v 1\"".into())]),
        );
        check_kind(
            "ARG A B=2",
            InstructionKind::Arg(vec![
                ArgDecl {
                    name: "A".into(),
                    default: None,
                },
                ArgDecl {
                    name: "B".into(),
                    default: Some("2".into()),
                },
            ]),
        );
        check_kind(
            "RUN [\"echo\", \"hi\"]",
            InstructionKind::Run(CommandLine::Exec(s(&["echo", "hi"]))),
        );
        check_kind(
            "RUN [not json",
            InstructionKind::Run(CommandLine::Shell("[not json".into())),
        );
        check_kind(
            "CMD echo $HOME",
            InstructionKind::Cmd(CommandLine::Shell("echo $HOME".into())),
        );
        check_kind(
            "ENTRYPOINT []",
            InstructionKind::Entrypoint(CommandLine::Exec(vec![])),
        );
        check_kind(
            "SHELL [\"/bin/bash\", \"-c\"]",
            InstructionKind::Shell(s(&["/bin/bash", "-c"])),
        );
        check_kind(
            "COPY a  b /c/",
            InstructionKind::Copy(s(&["a", "b", "/c/"])),
        );
        check_kind(
            "COPY [\"a b\", \"/c/\"]",
            InstructionKind::Copy(s(&["a b", "/c/"])),
        );
        check_kind("WORKDIR /a b", InstructionKind::Workdir("/a b".into()));
        check_kind(
            "EXPOSE 8080 443/tcp 80",
            InstructionKind::Expose(s(&["443/tcp", "80", "8080"])),
        );
        check_kind(
            "VOLUME [\"/data\", \"/x\"]",
            InstructionKind::Volume(s(&["/data", "/x"])),
        );
        check_kind(
            "HEALTHCHECK NONE",
            InstructionKind::Healthcheck(HealthcheckSpec::None),
        );
        check_kind(
            "HEALTHCHECK --interval=5s CMD curl -f x",
            InstructionKind::Healthcheck(HealthcheckSpec::Cmd(CommandLine::Shell(
                "curl -f x".into(),
            ))),
        );
        check_kind("ONBUILD RUN x", InstructionKind::Onbuild("RUN x".into()));
        check_kind(
            "MAINTAINER Jane <j@x>",
            InstructionKind::Maintainer("Jane <j@x>".into()),
        );
    }

    #[test]
    fn flags() {
        let ins = only_instruction("FROM scratch\nCOPY --from=builder --chown=1:1 --link /a /b\n");
        assert_eq!(ins.flag("from"), Some("builder"));
        assert_eq!(ins.flag("chown"), Some("1:1"));
        assert_eq!(ins.flag("link"), Some("true"));
        assert_eq!(ins.kind, InstructionKind::Copy(s(&["/a", "/b"])));
        let ins = only_instruction(
            "FROM scratch\nRUN --mount=type=cache,target=/x --mount=type=tmpfs,target=/t make\n",
        );
        assert_eq!(ins.flag_values("mount").count(), 2);
        let df = parse("FROM --platform=linux/amd64 alpine AS a\n").expect("parses");
        assert_eq!(df.stages[0].platform.as_deref(), Some("linux/amd64"));
        check_error(
            "FROM scratch\nCOPY --frm=x a b\n",
            Some(2),
            "unknown flag: frm",
        );
        check_error(
            "FROM scratch\nCOPY --from=a --from=b a b\n",
            Some(2),
            "Duplicate flag",
        );
        check_error(
            "FROM scratch\nCOPY --link=maybe a b\n",
            Some(2),
            "expecting boolean",
        );
        check_error(
            "FROM scratch\nCOPY --chown a b\n",
            Some(2),
            "missing a value",
        );
        check_error(
            "FROM scratch\nWORKDIR --x=1 /a\n",
            Some(2),
            "unknown flag: x",
        );
    }

    #[test]
    fn heredocs() {
        let df = parse("FROM scratch\nRUN <<EOF\necho a\necho b\nEOF\nRUN <<-\"EOT\" cat\n\tindented $X\n\tEOT\nCOPY <<A <<B /dst/\naaa\nA\nbbb\nB\n").expect("parses");
        let ins = &df.stages[0].instructions;
        assert_eq!(ins.len(), 3);
        assert_eq!(ins[0].heredocs[0].name, "EOF");
        assert_eq!(ins[0].heredocs[0].content, "echo a\necho b\n");
        assert!(ins[0].heredocs[0].expand);
        assert_eq!((ins[0].line, ins[0].end_line), (2, 5));
        assert_eq!(ins[0].original, "RUN <<EOF");
        let h = &ins[1].heredocs[0];
        assert_eq!((h.name.as_str(), h.chomp, h.expand), ("EOT", true, false));
        assert_eq!(h.content, "\tindented $X\n");
        assert_eq!(
            ins[2]
                .heredocs
                .iter()
                .map(|h| h.content.as_str())
                .collect::<Vec<_>>(),
            ["aaa\n", "bbb\n"]
        );
        assert_eq!(
            ins[2].kind,
            InstructionKind::Copy(s(&["<<A", "<<B", "/dst/"]))
        );
        assert_eq!(ins[2].line, 9);
        check_error(
            "FROM scratch\nRUN <<EOF\necho\n",
            Some(2),
            "unterminated heredoc",
        );
        check_error(
            "FROM scratch\nCOPY a <<EOF\nx\nEOF\n",
            Some(2),
            "heredoc as a destination",
        );
        // Exec form and quoted text do not open heredocs.
        let df =
            parse("FROM scratch\nRUN [\"sh\", \"<<EOF\"]\nRUN echo '<<EOF'\n").expect("parses");
        assert!(
            df.stages[0]
                .instructions
                .iter()
                .all(|i| i.heredocs.is_empty())
        );
    }

    /// BuildKit's `TestParseExtractsHeredoc`, case by case.
    #[test]
    fn heredoc_cases_from_buildkit() {
        #[track_caller]
        fn check(body: &str, expected: &[(&str, &str, bool, bool, u32)]) {
            let df = parse(&format!("FROM alpine:3.6\n{body}")).expect("parses");
            let got: Vec<(String, String, bool, bool, u32)> = df.stages[0]
                .instructions
                .iter()
                .flat_map(|i| &i.heredocs)
                .map(|h| {
                    (
                        h.name.clone(),
                        h.content.clone(),
                        h.expand,
                        h.chomp,
                        h.file_descriptor,
                    )
                })
                .collect();
            let expected: Vec<(String, String, bool, bool, u32)> = expected
                .iter()
                .map(|(n, c, e, ch, fd)| (n.to_string(), c.to_string(), *e, *ch, *fd))
                .collect();
            assert_eq!(got, expected, "input: {body:?}");
        }
        check("RUN ls\n", &[]);
        check("USER <<INVALID\nRUN x\n", &[]);
        check("RUN <<EMPTY\nEMPTY\n", &[("EMPTY", "", true, false, 0)]);
        check("RUN 3<<EMPTY2\nEMPTY2\n", &[("EMPTY2", "", true, false, 3)]);
        check("RUN \"<<NOHEREDOC\"\n", &[]);
        check(
            "RUN <<INDENT\n\tfoo\n\tbar\nINDENT\n",
            &[("INDENT", "\tfoo\n\tbar\n", true, false, 0)],
        );
        check(
            "RUN <<-UNINDENT\n\tbaz\n\tquux\nUNINDENT\n",
            &[("UNINDENT", "\tbaz\n\tquux\n", true, true, 0)],
        );
        check(
            "RUN <<-UNINDENT2\n\tbaz\n\tquux\n\tUNINDENT2\n",
            &[("UNINDENT2", "\tbaz\n\tquux\n", true, true, 0)],
        );
        check(
            "RUN <<-'NOEXPAND'\n\tdon't expand $NAME\nNOEXPAND\n",
            &[("NOEXPAND", "\tdon't expand $NAME\n", false, true, 0)],
        );
        check(
            "RUN <<COMMENT\n# internal comment\necho foo bar # trailing comment\nCOMMENT\n",
            &[(
                "COMMENT",
                "# internal comment\necho foo bar # trailing comment\n",
                true,
                false,
                0,
            )],
        );
        check(
            "RUN --mount=type=cache,target=/foo <<MOUNT\necho hello\nMOUNT\n",
            &[("MOUNT", "echo hello\n", true, false, 0)],
        );
        check(
            "COPY <<EOF /quotes\n\"foo\"\n'bar'\nEOF\n",
            &[("EOF", "\"foo\"\n'bar'\n", true, false, 0)],
        );
        check(
            "COPY <<X <<Y /dest\nY\nX\nX\nY\n",
            &[("X", "Y\n", true, false, 0), ("Y", "X\n", true, false, 0)],
        );
        check(
            "RUN <<COMPLEX python3\nprint('hello world')\nCOMPLEX\n",
            &[("COMPLEX", "print('hello world')\n", true, false, 0)],
        );
        check(
            "COPY <<file.txt /dest\nhello world\nfile.txt\n",
            &[("file.txt", "hello world\n", true, false, 0)],
        );
        check(
            "RUN <<eo'f'\necho foo\neof\n",
            &[("eof", "echo foo\n", false, false, 0)],
        );
        check(
            "RUN <<eo\\'f\necho foo\neo'f\n",
            &[("eo'f", "echo foo\n", true, false, 0)],
        );
        check(
            "RUN <<'e'o\\'f\necho foo\neo'f\n",
            &[("eo'f", "echo foo\n", false, false, 0)],
        );
        check(
            "RUN <<'one two'\necho bar\none two\n",
            &[("one two", "echo bar\n", false, false, 0)],
        );
        check("RUN <<$EOF\n$EOF\n", &[("$EOF", "", true, false, 0)]);
        check("RUN <<  EOF\nEOF\n", &[("EOF", "", true, false, 0)]);
        check("RUN <<  EOF  > foo\nEOF\n", &[("EOF", "", true, false, 0)]);
        check("RUN << -EOF\n-EOF\n", &[("-EOF", "", true, false, 0)]);
        check("RUN [\"<<EOF\"]\nRUN [\"<<'EOF'\"]\n", &[]);
        check(
            "ONBUILD RUN <<EOF\nx\nEOF\n",
            &[("EOF", "x\n", true, false, 0)],
        );
    }

    /// BuildKit's `TestParseHeredocHelpers`.
    #[test]
    fn heredoc_words() {
        for src in [
            "<<EOF",
            "<<'EOF'",
            "<<\"EOF\"",
            "<<-EOF",
            "<<-'EOF'",
            "<<-\"EOF\"",
            "<<EO\"F\"",
            "<< EOF",
            "<<- EOF",
        ] {
            assert_eq!(
                parse_heredoc(src).expect("valid").map(|h| h.name),
                Some("EOF".to_string()),
                "{src}"
            );
        }
        for src in ["<<'EOF", "<<\"EOF", "<<EOF'", "<<EOF\""] {
            assert!(parse_heredoc(src).is_err(), "{src}");
        }
        for src in ["", "EOF", "<<", "<<-", "<EOF", "<<<EOF", "<<EOF sh"] {
            assert_eq!(parse_heredoc(src), Ok(None), "{src}");
        }
    }

    #[test]
    fn syntax_errors_name_the_line() {
        check_error(
            "FROM scratch\n\nFOOBAR x\n",
            Some(3),
            "unknown instruction: FOOBAR",
        );
        check_error(
            "RUN x\nFROM scratch\n",
            Some(1),
            "no build stage in current context",
        );
        check_error("", None, "file with no instructions");
        check_error("# only a comment\n", None, "file with no instructions");
        check_error("ARG A\n", None, "no stages");
        check_error("FROM a b\n", Some(1), "one or three arguments");
        check_error("FROM a AS 1x\n", Some(1), "invalid name for build stage");
        check_error("FROM scratch\nSHELL /bin/bash -c\n", Some(2), "JSON form");
        check_error("FROM scratch\nRUN [1, 2]\n", Some(2), "strings only");
        check_error(
            "FROM scratch\nENV A\n",
            Some(2),
            "ENV must have two arguments",
        );
        check_error("FROM scratch\nENV =1\n", Some(2), "names can not be blank");
        check_error("FROM scratch\nCOPY a\n", Some(2), "at least two arguments");
        check_error("FROM scratch\nHEALTHCHECK FOO x\n", Some(2), "Unknown type");
    }

    #[test]
    fn global_args() {
        let df = parse("ARG A=1\nARG B\nFROM scratch\nARG A\n").expect("parses");
        assert_eq!(df.global_args.len(), 2);
        assert_eq!(
            df.global_args[0].args[0],
            ArgDecl {
                name: "A".into(),
                default: Some("1".into())
            }
        );
        assert_eq!(df.global_args[1].line, 2);
        assert_eq!(df.stages[0].instructions.len(), 1);
    }

    #[test]
    fn word_helpers() {
        assert_eq!(
            parse_words("a=\"x y\" b='c d' e\\ f", '\\'),
            ["a=\"x y\"", "b='c d'", "e\\ f"]
        );
        assert_eq!(
            extract_builder_flags("--a=1 --b --c=\"x y\" rest of line"),
            ("rest of line".to_string(), s(&["--a=1", "--b", "--c=x y"]))
        );
        assert_eq!(
            extract_builder_flags("--a \"--b\" x"),
            ("\"--b\" x".to_string(), s(&["--a"]))
        );
        assert_eq!(
            extract_builder_flags("-- --notflag"),
            (" --notflag".to_string(), vec![])
        );
        assert_eq!(trim_continuation("a \\  ", '\\'), ("a ", false));
        assert_eq!(trim_continuation("\\", '\\'), ("", false));
        assert_eq!(trim_continuation("a\\\\", '\\'), ("a\\\\", true));
        assert_eq!(chomp_heredoc("\t\ta\n\tb\nc"), "a\nb\nc");
    }
}
