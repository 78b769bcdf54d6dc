//! Progress displays: BuildKit-style plain lines, a live tty view drawn like buildx's, or quiet.
//!
//! The tty view keeps a model of every vertex (step, import, export) and redraws it in place
//! from a ticker thread at a steady rate: the cursor moves up over the last frame, every line is
//! overwritten and cleared to its end, and lines are cut to the terminal width so nothing wraps.
//! The last frame, with every vertex and its time, stays on screen.

use std::collections::{HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_build::engine::{Event, Progress};

/// `--progress` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// tty on a terminal, plain otherwise.
    Auto,
    /// BuildKit's plain lines.
    Plain,
    /// Live view of running steps (plain when stderr is not a terminal or is too small).
    Tty,
    /// Only the result and errors.
    Quiet,
}

/// How often the tty view redraws.
const TICK: Duration = Duration::from_millis(150);
/// Lines of a running step's output shown under it.
const LOG_TAIL: usize = 6;
/// The smallest terminal the tty view draws in; smaller ones get plain output.
const MIN_WIDTH: usize = 40;
const MIN_HEIGHT: usize = 6;

struct StatusLine {
    id: String,
    /// Bytes moved and in all, for transfers.
    bytes: Option<(u64, u64)>,
    started: Instant,
    stopped: Option<Instant>,
}

struct Vertex {
    number: usize,
    /// `None` until the vertex starts: a vertex is never shown by its internal key.
    name: Option<String>,
    started: Instant,
    stopped: Option<Instant>,
    cached: bool,
    error: bool,
    miss: Option<String>,
    logs: VecDeque<String>,
    partial: Vec<u8>,
    statuses: Vec<StatusLine>,
}

impl Vertex {
    fn is_done(&self) -> bool {
        self.stopped.is_some()
    }

    /// The vertex starts under `name` (only the first start counts).
    fn start(&mut self, name: String, plain: bool) {
        if self.name.is_none() {
            self.started = Instant::now();
            if plain {
                eprintln!("#{} {}", self.number, plain_name(&name));
            }
            self.name = Some(name);
        }
    }

    /// A status line, `done` when it took that long.
    fn status(&mut self, text: &str, done: Option<Duration>, plain: bool) {
        if plain {
            match done {
                Some(d) => eprintln!("#{} {text} {} done", self.number, secs(d)),
                None => eprintln!("#{} {text}", self.number),
            }
            return;
        }
        let now = Instant::now();
        // Statuses that are not done yet are replaced by the next one.
        self.statuses
            .retain(|s| s.stopped.is_some() || s.bytes.is_some());
        self.statuses.push(StatusLine {
            id: clean_log(text),
            bytes: None,
            started: done.map_or(now, |d| now - d),
            stopped: done.map(|_| now),
        });
    }

    /// Transfer `id` has moved `bytes` (current, total) so far, `done` when it took that long.
    fn transfer(&mut self, id: String, bytes: (u64, u64), done: Option<Duration>, plain: bool) {
        let (current, total) = bytes;
        if plain {
            if let Some(d) = done {
                eprintln!(
                    "#{} {id} {} / {} {} done",
                    self.number,
                    human(current),
                    human(total),
                    secs(d)
                );
            }
            return;
        }
        let now = Instant::now();
        match self.statuses.iter_mut().find(|s| s.id == id) {
            Some(s) => {
                s.bytes = Some(bytes);
                s.stopped = done.map(|_| now);
            }
            None => self.statuses.push(StatusLine {
                id,
                bytes: Some(bytes),
                started: done.map_or(now, |d| now - d),
                stopped: done.map(|_| now),
            }),
        }
    }

    /// Output of the vertex: complete lines are printed (plain) and kept, the last 20 of them.
    fn log(&mut self, bytes: &[u8], plain: bool) {
        self.partial.extend_from_slice(bytes);
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            if plain {
                eprintln!(
                    "#{} {:.3} {text}",
                    self.number,
                    self.started.elapsed().as_secs_f64()
                );
            }
            self.logs.push_back(clean_log(&text));
            if self.logs.len() > 20 {
                self.logs.pop_front();
            }
        }
    }
}

struct State {
    started: Instant,
    vertices: Vec<Vertex>,
    index: HashMap<String, usize>,
    /// Display widths of the lines of the frame on screen (tty).
    drawn: Vec<usize>,
    /// Something changed since the last frame.
    dirty: bool,
    /// The final frame is drawn: the view no longer redraws.
    finished: bool,
}

impl State {
    fn new() -> State {
        State {
            started: Instant::now(),
            vertices: Vec::new(),
            index: HashMap::new(),
            drawn: Vec::new(),
            dirty: false,
            finished: false,
        }
    }

    /// The vertex of `key`, numbered in order of first appearance.
    fn vertex(&mut self, key: &str) -> &mut Vertex {
        let idx = match self.index.get(key) {
            Some(&idx) => idx,
            None => {
                let idx = self.vertices.len();
                self.vertices.push(Vertex {
                    number: idx + 1,
                    name: None,
                    started: Instant::now(),
                    stopped: None,
                    cached: false,
                    error: false,
                    miss: None,
                    logs: VecDeque::new(),
                    partial: Vec::new(),
                    statuses: Vec::new(),
                });
                self.index.insert(key.to_owned(), idx);
                idx
            }
        };
        &mut self.vertices[idx]
    }
}

struct Shared {
    state: Mutex<State>,
    color: bool,
}

/// A display writing to stderr.
pub struct Display {
    mode: Mode,
    shared: Arc<Shared>,
    ticker: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
}

/// The terminal size of stderr (columns, rows), if it is a terminal.
fn terminal_size() -> Option<(usize, usize)> {
    let (w, h) = terminal_size::terminal_size_of(std::io::stderr())?;
    Some((w.0 as usize, h.0 as usize))
}

impl Display {
    /// A display for `mode`: `auto` and `tty` draw the live view when stderr is a terminal of at
    /// least 40×6, and print plain lines otherwise.
    pub fn new(mode: Mode) -> Display {
        let fits = || {
            std::io::stderr().is_terminal()
                && terminal_size().is_some_and(|(w, h)| w >= MIN_WIDTH && h >= MIN_HEIGHT)
        };
        let mode = match mode {
            Mode::Auto | Mode::Tty if fits() => Mode::Tty,
            Mode::Auto | Mode::Tty => Mode::Plain,
            other => other,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        });
        let ticker = (mode == Mode::Tty).then(|| {
            let (stop, stopped) = mpsc::channel::<()>();
            let shared = shared.clone();
            let handle = std::thread::spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
                    let mut state = shared.state.lock().expect("display lock");
                    let running = state.vertices.iter().any(|v| !v.is_done());
                    if !state.finished && (state.dirty || running) {
                        draw(&mut state, shared.color, &[], false);
                    }
                }
            });
            (stop, handle)
        });
        Display {
            mode,
            shared,
            ticker: Mutex::new(ticker),
        }
    }

    /// Whether anything but errors and the result is shown.
    pub fn is_quiet(&self) -> bool {
        self.mode == Mode::Quiet
    }

    /// Prints a line outside any vertex (summary, warnings), above the live view.
    pub fn line(&self, text: &str) {
        if self.mode == Mode::Quiet {
            return;
        }
        let mut state = self.shared.state.lock().expect("display lock");
        if self.mode == Mode::Tty && !state.finished {
            draw(&mut state, self.shared.color, &[text], false);
        } else {
            eprintln!("{text}");
        }
    }

    /// Draws the final frame (tty) and stops redrawing; later lines print below it. Called
    /// at the end of a build, and on drop.
    pub fn finish(&self) {
        let ticker = self.ticker.lock().expect("ticker lock").take();
        let Some((stop, handle)) = ticker else {
            return;
        };
        drop(stop);
        let _ = handle.join();
        let mut state = self.shared.state.lock().expect("display lock");
        draw(&mut state, self.shared.color, &[], true);
        state.finished = true;
        // Like buildx: the output of failed steps, after the frame.
        let mut err = std::io::stderr().lock();
        for v in state
            .vertices
            .iter()
            .filter(|v| v.error && !v.logs.is_empty())
        {
            let _ = writeln!(err, "------");
            let _ = writeln!(err, " > {}:", v.name.as_deref().unwrap_or_default());
            for line in &v.logs {
                let _ = writeln!(err, "{line}");
            }
            let _ = writeln!(err, "------");
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Redraws the view in place, printing `above` first (lines that stay in the scrollback).
fn draw(state: &mut State, color: bool, above: &[&str], final_frame: bool) {
    let (width, height) = terminal_size().unwrap_or((80, 24));
    let now = Instant::now();
    let lines = frame(
        state,
        now,
        width,
        (!final_frame).then_some(height),
        final_frame,
    );
    let mut out = String::new();
    out.push_str("\x1b[?25l");
    // The last frame's lines, re-wrapped if the terminal got narrower since.
    let rows: usize = state
        .drawn
        .iter()
        .map(|&w| w.max(1).div_ceil(width.max(1)))
        .sum();
    if rows > 0 {
        out.push_str(&format!("\r\x1b[{rows}A"));
    }
    for text in above {
        out.push_str(text);
        out.push_str("\x1b[K\n");
    }
    state.drawn.clear();
    for line in &lines {
        let (start, end) = match line.style {
            _ if !color => ("", ""),
            Style::Plain => ("", ""),
            Style::Done => ("\x1b[34m", "\x1b[0m"),
            Style::Error => ("\x1b[31m", "\x1b[0m"),
            Style::Dim => ("\x1b[2m", "\x1b[0m"),
        };
        out.push_str(start);
        out.push_str(&line.text);
        out.push_str(end);
        out.push_str("\x1b[K\n");
        state.drawn.push(text_width(&line.text));
    }
    out.push_str("\x1b[J\x1b[?25h");
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(out.as_bytes());
    let _ = err.flush();
    state.dirty = false;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    Plain,
    Done,
    Error,
    Dim,
}

/// One line of a frame, already cut to the width.
#[derive(Debug)]
struct Line {
    text: String,
    style: Style,
}

/// The lines of one frame for a terminal `width` columns wide: the header, then one line per
/// vertex with its timer, its transfers, and the last output lines of running steps. With a
/// `height`, the frame fits in it (finished vertices scroll away first); the final frame
/// (`all`) shows every vertex and no output lines.
fn frame(state: &State, now: Instant, width: usize, height: Option<usize>, all: bool) -> Vec<Line> {
    // Stay one column short of the edge: a line filling the last column would leave the
    // cursor waiting to wrap.
    let usable = width.saturating_sub(1).max(1);
    let shown: Vec<&Vertex> = state.vertices.iter().filter(|v| v.name.is_some()).collect();
    let n_done = shown.iter().filter(|v| v.is_done()).count();
    let finished = all && n_done == shown.len() && !shown.is_empty();
    let header = format!(
        "[+] Building {:.1}s ({n_done}/{}){}",
        now.duration_since(state.started).as_secs_f64(),
        shown.len(),
        if finished { " FINISHED" } else { "" }
    );
    let mut blocks: Vec<(bool, Vec<Line>)> = Vec::new();
    for v in shown {
        let mut block = Vec::new();
        let secs = v
            .stopped
            .unwrap_or(now)
            .saturating_duration_since(v.started)
            .as_secs_f64();
        let mut label = String::new();
        if v.error {
            label.push_str("ERROR ");
        } else if v.cached {
            label.push_str("CACHED ");
        }
        label.push_str(v.name.as_deref().unwrap_or_default());
        // The reason follows the name and is cut first when the line is too long.
        if let Some(miss) = &v.miss {
            label.push_str(&format!(" (MISS: {miss})"));
        }
        let style = match (v.error, v.is_done()) {
            (true, _) => Style::Error,
            (false, true) => Style::Done,
            (false, false) => Style::Plain,
        };
        block.push(Line {
            text: job_line(&label, None, secs, usable),
            style,
        });
        let mut statuses: Vec<&StatusLine> = v.statuses.iter().collect();
        statuses.sort_by_key(|s| s.started);
        for s in statuses {
            let stopped = s.stopped.or(v.stopped).unwrap_or(now);
            let secs = stopped.saturating_duration_since(s.started).as_secs_f64();
            let bytes = s
                .bytes
                .map(|(cur, total)| format!("{} / {}", human(cur), human(total)));
            block.push(Line {
                text: job_line(&format!("=> {}", s.id), bytes.as_deref(), secs, usable),
                style: if s.stopped.or(v.stopped).is_some() {
                    Style::Done
                } else {
                    Style::Plain
                },
            });
        }
        if !all && !v.is_done() {
            let skip = v.logs.len().saturating_sub(LOG_TAIL);
            for l in v.logs.iter().skip(skip) {
                block.push(Line {
                    text: cut(&format!(" => => # {l}"), usable),
                    style: Style::Dim,
                });
            }
        }
        blocks.push((v.is_done(), block));
    }
    if let Some(height) = height {
        // The header and one spare row, so the frame never scrolls the screen.
        let room = height.saturating_sub(2);
        let count = |blocks: &[(bool, Vec<Line>)]| blocks.iter().map(|b| b.1.len()).sum::<usize>();
        // Finished vertices scroll away first, then output lines shrink, then the oldest go.
        while count(&blocks) > room {
            match blocks.iter().position(|(done, _)| *done) {
                Some(pos) => {
                    blocks.remove(pos);
                }
                None => break,
            }
        }
        while count(&blocks) > room {
            let Some(block) = blocks
                .iter_mut()
                .filter(|(_, b)| b.iter().any(|l| l.style == Style::Dim))
                .max_by_key(|(_, b)| b.len())
            else {
                break;
            };
            let pos = block
                .1
                .iter()
                .position(|l| l.style == Style::Dim)
                .expect("the block has output lines");
            block.1.remove(pos);
        }
        let mut lines: Vec<Line> = blocks.into_iter().flat_map(|b| b.1).collect();
        if lines.len() > room {
            lines.drain(..lines.len() - room);
        }
        let mut out = vec![Line {
            text: cut(&header, usable),
            style: Style::Plain,
        }];
        out.extend(lines);
        return out;
    }
    let mut out = vec![Line {
        text: cut(&header, usable),
        style: Style::Plain,
    }];
    out.extend(blocks.into_iter().flat_map(|b| b.1));
    out
}

/// ` => NAME [STATUS]   1.2s`, cut to `width` columns: the timer stays at the right edge, the
/// status is kept when there is room for it, and the name is cut.
fn job_line(name: &str, status: Option<&str>, secs: f64, width: usize) -> String {
    let secs = if secs < 0.05 { 0.0 } else { secs };
    let timer = format!("{secs:.1}s");
    let prefix = " => ";
    let fixed = text_width(prefix) + 1 + timer.len();
    if width < fixed + 8 {
        return cut(&format!("{prefix}{name}"), width);
    }
    let mut room = width - fixed;
    let status = status.filter(|s| text_width(s) + 1 + 12 <= room);
    if let Some(s) = status {
        room -= text_width(s) + 1;
    }
    let mut left = format!("{prefix}{}", cut(name, room));
    if let Some(s) = status {
        left.push(' ');
        left.push_str(s);
    }
    let pad = width.saturating_sub(text_width(&left) + timer.len());
    format!("{left}{}{timer}", " ".repeat(pad))
}

/// `text` cut to at most `width` columns.
fn cut(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = char_width(c);
        if used + w > width {
            break;
        }
        used += w;
        out.push(c);
    }
    out
}

/// Columns `text` takes on a terminal (text holds no control characters).
fn text_width(text: &str) -> usize {
    text.chars().map(char_width).sum()
}

/// Columns of one character: 2 for East Asian wide ones and emoji, 0 for combining marks.
fn char_width(c: char) -> usize {
    match c as u32 {
        0x0300..=0x036F | 0x200B..=0x200F | 0xFE00..=0xFE0F => 0,
        0x1100..=0x115F
        | 0x2E80..=0xA4CF
        | 0xAC00..=0xD7A3
        | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F
        | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6
        | 0x1F300..=0x1F64F
        | 0x1F900..=0x1F9FF
        | 0x20000..=0x3FFFD => 2,
        _ => 1,
    }
}

/// A line of program output made safe to draw: what follows the last carriage return (progress
/// bars), without escape sequences and control characters, tabs as spaces.
fn clean_log(line: &str) -> String {
    let line = line
        .rsplit('\r')
        .find(|part| !part.is_empty())
        .unwrap_or("");
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                // CSI: parameters, then one final byte in @..~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC \.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' {
                            chars.next();
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\t' => out.push_str("    "),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Sizes as BuildKit prints them (`1.05MB`).
fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}GB", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}MB", n as f64 / 1e6),
        n if n >= 1000 => format!("{:.2}kB", n as f64 / 1e3),
        n => format!("{n}B"),
    }
}

/// A vertex name as the plain view prints it: cut to 72 bytes and `...` when
/// `PROGRESS_NO_TRUNC=0`, as BuildKit's plain printer does (names are already bounded by the
/// engine, `SHOWN_COMMAND_BYTES`).
fn plain_name(name: &str) -> std::borrow::Cow<'_, str> {
    const LIMIT: usize = 72;
    if std::env::var("PROGRESS_NO_TRUNC").as_deref() != Ok("0") || name.len() <= LIMIT {
        return name.into();
    }
    format!("{}...", cache_core::limits::prefix_within(name, LIMIT)).into()
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
        let plain = self.mode == Mode::Plain;
        let mut state = self.shared.state.lock().expect("display lock");
        state.dirty = true;
        if !plain && state.finished {
            // Events after the final frame (a late warning) print as lines.
            if let Event::Warning(text) = &event {
                eprintln!("WARNING: {text}");
            }
            return;
        }
        match event {
            Event::Start { vertex, name } => state.vertex(&vertex).start(name, plain),
            Event::Status { vertex, text, done } => {
                state.vertex(&vertex).status(&text, done, plain);
            }
            Event::Transfer {
                vertex,
                id,
                current,
                total,
                done,
            } => state
                .vertex(&vertex)
                .transfer(id, (current, total), done, plain),
            Event::Log { vertex, bytes, .. } => state.vertex(&vertex).log(&bytes, plain),
            Event::Miss { vertex, reason } => {
                let v = state.vertex(&vertex);
                if plain {
                    eprintln!("#{} MISS {reason}", v.number);
                }
                v.miss = Some(reason);
            }
            Event::Cached { vertex } => {
                let v = state.vertex(&vertex);
                v.cached = true;
                v.stopped = Some(v.started);
                if plain {
                    eprintln!("#{} CACHED\n", v.number);
                }
            }
            Event::Done { vertex, duration } => {
                let v = state.vertex(&vertex);
                v.stopped = Some(v.started + duration);
                if plain {
                    eprintln!("#{} DONE {}\n", v.number, secs(duration));
                }
            }
            Event::Error { vertex, message } => {
                let v = state.vertex(&vertex);
                v.error = true;
                v.stopped = Some(Instant::now());
                if plain {
                    eprintln!("#{} ERROR: {message}\n", v.number);
                }
            }
            Event::Warning(text) => {
                if plain {
                    eprintln!("WARNING: {text}");
                } else {
                    let line = format!("WARNING: {text}");
                    draw(&mut state, self.shared.color, &[&line], false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(events: Vec<Event>) -> State {
        let display = Display {
            mode: Mode::Tty,
            shared: Arc::new(Shared {
                state: Mutex::new(State::new()),
                color: false,
            }),
            ticker: Mutex::new(None),
        };
        for event in events {
            if !matches!(event, Event::Warning(_)) {
                display.event(event);
            }
        }
        let mut state = display.shared.state.lock().unwrap();
        std::mem::replace(&mut *state, State::new())
    }

    fn start(vertex: &str, name: &str) -> Event {
        Event::Start {
            vertex: vertex.into(),
            name: name.into(),
        }
    }

    #[test]
    fn lines_are_cut_to_the_width_and_keep_the_timer() {
        let long = format!("[build 2/9] RUN {}", "x".repeat(300));
        let state = state_with(vec![
            start("step:0:0", &long),
            Event::Done {
                vertex: "step:0:0".into(),
                duration: Duration::from_millis(1500),
            },
            start(
                "step:0:1",
                "[build 3/9] RUN 漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字",
            ),
            Event::Log {
                vertex: "step:0:1".into(),
                stream: 1,
                bytes: format!("\x1b[31mred\x1b[0m\tout {}\rdone\n", "y".repeat(200)).into_bytes(),
            },
        ]);
        for width in [40, 61, 100, 120] {
            let lines = frame(&state, Instant::now(), width, Some(30), false);
            for line in &lines {
                assert!(text_width(&line.text) < width, "{width}: {:?}", line.text);
                assert!(!line.text.contains('\x1b'), "{:?}", line.text);
            }
            assert!(lines[0].text.starts_with("[+] Building "), "{lines:?}");
            assert!(lines[0].text.contains("(1/2)"), "{lines:?}");
            assert!(lines[1].text.ends_with(" 1.5s"), "{lines:?}");
            assert!(lines.iter().any(|l| l.text == " => => # done"), "{lines:?}");
        }
    }

    #[test]
    fn unnamed_vertices_are_never_shown_and_the_final_frame_has_every_step() {
        let mut events = vec![Event::Status {
            vertex: "step:1:0".into(),
            text: "extracting sha256:abc".into(),
            done: Some(Duration::ZERO),
        }];
        for k in 0..30 {
            let vertex = format!("step:0:{k}");
            events.push(start(&vertex, &format!("[s {}/30] RUN echo {k}", k + 1)));
            events.push(Event::Cached { vertex });
        }
        let state = state_with(events);
        let live = frame(&state, Instant::now(), 80, Some(10), false);
        assert!(live.len() <= 9, "{live:?}");
        let last = frame(&state, Instant::now(), 80, None, true);
        assert_eq!(last[0].text.trim_end(), last[0].text);
        assert!(last[0].text.ends_with("(30/30) FINISHED"), "{:?}", last[0]);
        for k in 0..30 {
            let name = format!("CACHED [s {}/30] RUN echo {k}", k + 1);
            assert_eq!(
                last.iter().filter(|l| l.text.contains(&name)).count(),
                1,
                "{name}: {last:?}"
            );
        }
        assert!(!last.iter().any(|l| l.text.contains("step:")), "{last:?}");
    }

    #[test]
    fn transfers_show_bytes_done_of_total() {
        let state = state_with(vec![
            start("step:0:0", "[a 1/2] COPY --from=b / /"),
            Event::Transfer {
                vertex: "step:0:0".into(),
                id: "sha256:0123".into(),
                current: 1_500_000,
                total: 3_000_000,
                done: None,
            },
        ]);
        let lines = frame(&state, Instant::now(), 100, Some(20), false);
        assert!(
            lines[2]
                .text
                .starts_with(" => => sha256:0123 1.50MB / 3.00MB "),
            "{lines:?}"
        );
    }

    #[test]
    fn a_miss_reason_is_on_the_steps_line() {
        let state = state_with(vec![
            start("step:0:0", "[a 1/1] RUN make"),
            Event::Miss {
                vertex: "step:0:0".into(),
                reason: "the parent step missed".into(),
            },
        ]);
        let lines = frame(&state, Instant::now(), 100, Some(20), false);
        assert!(
            lines[1]
                .text
                .starts_with(" => [a 1/1] RUN make (MISS: the parent step missed) "),
            "{lines:?}"
        );
        let narrow = frame(&state, Instant::now(), 40, Some(20), false);
        assert!(
            narrow[1].text.starts_with(" => [a 1/1] RUN make (MISS: "),
            "{narrow:?}"
        );
    }

    #[test]
    fn logs_are_cleaned() {
        assert_eq!(clean_log("a\x1b[1;32mb\x1b[0mc"), "abc");
        assert_eq!(clean_log("10%\r50%\r100%"), "100%");
        assert_eq!(clean_log("\x1b]0;title\x07x\ty"), "x    y");
    }
}
