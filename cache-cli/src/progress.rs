//! Progress displays: BuildKit-style plain lines, a live tty view, or quiet.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cache_build::engine::{Event, Progress};

/// `--progress` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// tty on a terminal, plain otherwise.
    Auto,
    /// BuildKit's plain lines.
    Plain,
    /// Live view of running steps.
    Tty,
    /// Only the result and errors.
    Quiet,
}

struct Vertex {
    number: usize,
    name: String,
    started: Instant,
    last_lines: Vec<String>,
    partial: Vec<u8>,
    finished: bool,
}

struct State {
    vertices: HashMap<String, Vertex>,
    order: Vec<String>,
    drawn_lines: usize,
}

/// A display writing to stderr.
pub struct Display {
    mode: Mode,
    state: Mutex<State>,
}

impl Display {
    /// A display for `mode`, resolving `auto` by whether stderr is a terminal.
    pub fn new(mode: Mode) -> Display {
        let mode = match mode {
            Mode::Auto if std::io::stderr().is_terminal() => Mode::Tty,
            Mode::Auto => Mode::Plain,
            other => other,
        };
        Display {
            mode,
            state: Mutex::new(State {
                vertices: HashMap::new(),
                order: Vec::new(),
                drawn_lines: 0,
            }),
        }
    }

    /// Whether anything but errors and the result is shown.
    pub fn is_quiet(&self) -> bool {
        self.mode == Mode::Quiet
    }

    /// Prints a line outside any vertex (summary, warnings).
    pub fn line(&self, text: &str) {
        if self.mode == Mode::Quiet {
            return;
        }
        let mut state = self.state.lock().expect("display lock");
        clear(&mut state);
        eprintln!("{text}");
        redraw(self.mode, &mut state);
    }
}

fn clear(state: &mut State) {
    if state.drawn_lines > 0 {
        let mut err = std::io::stderr();
        let _ = write!(err, "\x1b[{}A\x1b[J", state.drawn_lines);
        state.drawn_lines = 0;
    }
}

fn redraw(mode: Mode, state: &mut State) {
    if mode != Mode::Tty {
        return;
    }
    let mut lines = Vec::new();
    for key in &state.order {
        let v = &state.vertices[key];
        if v.finished {
            continue;
        }
        lines.push(format!(
            "=> {} {:.1}s",
            v.name,
            v.started.elapsed().as_secs_f64()
        ));
        for l in v.last_lines.iter().rev().take(5).rev() {
            lines.push(format!("   | {l}"));
        }
    }
    let mut err = std::io::stderr();
    for l in &lines {
        let _ = writeln!(err, "{l}");
    }
    state.drawn_lines = lines.len();
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl Progress for Display {
    fn event(&self, event: Event) {
        if self.mode == Mode::Quiet {
            if let Event::Error { message, .. } = &event {
                eprintln!("ERROR: {message}");
            }
            return;
        }
        let mut state = self.state.lock().expect("display lock");
        clear(&mut state);
        let tty = self.mode == Mode::Tty;
        let number_of = |state: &mut State, key: &str, name: Option<&str>| -> usize {
            if let Some(v) = state.vertices.get(key) {
                return v.number;
            }
            let number = state.order.len() + 1;
            state.order.push(key.to_owned());
            state.vertices.insert(
                key.to_owned(),
                Vertex {
                    number,
                    name: name.unwrap_or(key).to_owned(),
                    started: Instant::now(),
                    last_lines: Vec::new(),
                    partial: Vec::new(),
                    finished: false,
                },
            );
            number
        };
        match event {
            Event::Start { vertex, name } => {
                let n = number_of(&mut state, &vertex, Some(&name));
                if !tty {
                    eprintln!("#{n} {name}");
                }
            }
            Event::Status { vertex, text, done } => {
                let n = number_of(&mut state, &vertex, None);
                if !tty {
                    match done {
                        Some(d) => eprintln!("#{n} {text} {} done", secs(d)),
                        None => eprintln!("#{n} {text}"),
                    }
                }
            }
            Event::Log { vertex, bytes, .. } => {
                let n = number_of(&mut state, &vertex, None);
                let v = state.vertices.get_mut(&vertex).expect("vertex exists");
                v.partial.extend_from_slice(&bytes);
                while let Some(pos) = v.partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = v.partial.drain(..=pos).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    if !tty {
                        eprintln!("#{n} {:.3} {text}", v.started.elapsed().as_secs_f64());
                    }
                    v.last_lines.push(text);
                    if v.last_lines.len() > 20 {
                        v.last_lines.remove(0);
                    }
                }
            }
            Event::Cached { vertex } => {
                let n = number_of(&mut state, &vertex, None);
                let v = state.vertices.get_mut(&vertex).expect("vertex exists");
                v.finished = true;
                if tty {
                    eprintln!("=> CACHED {}", v.name);
                } else {
                    eprintln!("#{n} CACHED\n");
                }
            }
            Event::Done { vertex, duration } => {
                let n = number_of(&mut state, &vertex, None);
                let v = state.vertices.get_mut(&vertex).expect("vertex exists");
                v.finished = true;
                if tty {
                    eprintln!("=> {} {}", v.name, secs(duration));
                } else {
                    eprintln!("#{n} DONE {}\n", secs(duration));
                }
            }
            Event::Error { vertex, message } => {
                let n = number_of(&mut state, &vertex, None);
                let v = state.vertices.get_mut(&vertex).expect("vertex exists");
                v.finished = true;
                if tty {
                    eprintln!("=> ERROR {}", v.name);
                    for l in &v.last_lines {
                        eprintln!("   | {l}");
                    }
                    eprintln!("ERROR: {message}");
                } else {
                    eprintln!("#{n} ERROR: {message}\n");
                }
            }
            Event::Warning(text) => eprintln!("WARNING: {text}"),
        }
        redraw(self.mode, &mut state);
    }
}
