//! A fault-injecting HTTP/1.1 proxy for tests: it stands in front of the real test registry and
//! answers a seeded share of the requests with a fault instead of the registry's answer.
//!
//! Faults: `500`, `503`, `429` with `Retry-After: 1`, a reset before the answer (for a request
//! with a body, after reading half of it), a reset part-way through the answer (for an answer
//! without a body, after the registry handled the request: a lost answer), a hang, and a delay.
//! The decision for the n-th request (counted among the methods the faults apply to) depends on
//! the seed and n only.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status (and a small error body) without asking the registry.
    Status(u16),
    /// `429 Too Many Requests` with `Retry-After: 1`.
    TooManyRequests,
    /// Close the connection before answering (after half of a request body).
    ResetBefore,
    /// Forward the request, then send half of the answer (none of a body-less one) and close.
    ResetMidBody,
    /// Never answer (until the proxy stops).
    Hang,
    /// Wait this long, then forward.
    Delay(Duration),
}

/// What the proxy does.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Faulty requests per thousand (of those with a matching method).
    pub per_mille: u64,
    /// The faults, picked in turn by the seeded generator.
    pub kinds: Vec<Fault>,
    /// Methods the faults apply to; empty: all.
    pub methods: Vec<&'static str>,
    /// The seed.
    pub seed: u64,
}

impl Faults {
    /// No faults: a counting pass-through.
    pub fn none() -> Faults {
        Faults {
            per_mille: 0,
            kinds: Vec::new(),
            methods: Vec::new(),
            seed: 0,
        }
    }

    /// The decision for the `n`-th matching request.
    fn pick(&self, n: u64) -> Option<Fault> {
        if self.kinds.is_empty() {
            return None;
        }
        let roll = splitmix(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        if roll % 1000 >= self.per_mille {
            return None;
        }
        Some(self.kinds[((roll >> 20) % self.kinds.len() as u64) as usize])
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Counts of what passed through.
#[derive(Debug, Default)]
struct Counts {
    /// Request lines (`METHOD /path`, without query) in arrival order.
    lines: Vec<String>,
    /// Faults injected, by kind.
    faults: BTreeMap<String, u64>,
}

struct State {
    upstream: String,
    faults: Mutex<Faults>,
    matching: AtomicU64,
    counts: Mutex<Counts>,
    stop: AtomicBool,
}

/// A running proxy; stopped when dropped.
pub struct FaultProxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    state: Arc<State>,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str, faults: Faults) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fault proxy");
        let addr = listener
            .local_addr()
            .expect("the proxy has an address")
            .to_string();
        let state = Arc::new(State {
            upstream: upstream.to_owned(),
            faults: Mutex::new(faults),
            matching: AtomicU64::new(0),
            counts: Mutex::new(Counts::default()),
            stop: AtomicBool::new(false),
        });
        let accept_state = Arc::clone(&state);
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        std::thread::spawn(move || {
            while !accept_state.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let state = Arc::clone(&accept_state);
                        std::thread::spawn(move || serve(&state, client));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy { addr, state }
    }

    /// Replaces the faults (the request counter goes on).
    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.lock().expect("proxy lock") = faults;
    }

    /// Request lines (`METHOD /path`) seen, in order.
    pub fn request_lines(&self) -> Vec<String> {
        self.state.counts.lock().expect("proxy lock").lines.clone()
    }

    /// Faults injected so far, by kind.
    pub fn faults_injected(&self) -> BTreeMap<String, u64> {
        self.state.counts.lock().expect("proxy lock").faults.clone()
    }

    /// Forgets the counts.
    pub fn reset_counts(&self) {
        *self.state.counts.lock().expect("proxy lock") = Counts::default();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
    }
}

/// An HTTP message head: the first line and the headers, as received.
struct Head {
    raw: Vec<u8>,
    first: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_head(reader: &mut impl BufRead) -> Option<Head> {
    let mut raw = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        raw.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.lines();
    let first = lines.next()?.to_owned();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(Head {
        raw,
        first,
        headers,
    })
}

/// Reads a body framed as `head` says, returning its raw bytes (chunk framing kept).
fn read_body(reader: &mut impl BufRead, head: &Head, has_body: bool) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    if !has_body {
        return Some(out);
    }
    if head
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            let mut line = Vec::new();
            if reader.read_until(b'\n', &mut line).ok()? == 0 {
                return None;
            }
            out.extend_from_slice(&line);
            let size_text = String::from_utf8_lossy(&line);
            let size_text = size_text.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16).ok()?;
            if size == 0 {
                // Trailers end with an empty line.
                loop {
                    let mut trailer = Vec::new();
                    if reader.read_until(b'\n', &mut trailer).ok()? == 0 {
                        return None;
                    }
                    out.extend_from_slice(&trailer);
                    if trailer == b"\r\n" || trailer == b"\n" {
                        return Some(out);
                    }
                }
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            out.extend_from_slice(&chunk);
        }
    }
    let len: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    out.resize(len, 0);
    reader.read_exact(&mut out).ok()?;
    Some(out)
}

/// Serves one client connection, request after request.
fn serve(state: &State, client: TcpStream) {
    let _ = client.set_nonblocking(false);
    let Ok(client_write) = client.try_clone() else {
        return;
    };
    let mut client_write = client_write;
    let mut reader = BufReader::new(client);
    let mut upstream: Option<(TcpStream, BufReader<TcpStream>)> = None;
    loop {
        let Some(head) = read_head(&mut reader) else {
            return;
        };
        let mut parts = head.first.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let path = parts
            .next()
            .unwrap_or("")
            .split('?')
            .next()
            .unwrap_or("")
            .to_owned();
        let faults = state.faults.lock().expect("proxy lock").clone();
        let matches = faults.methods.is_empty() || faults.methods.contains(&method.as_str());
        let fault = if matches {
            let n = state.matching.fetch_add(1, Ordering::SeqCst);
            faults.pick(n)
        } else {
            None
        };
        {
            let mut counts = state.counts.lock().expect("proxy lock");
            counts.lines.push(format!("{method} {path}"));
            if let Some(fault) = fault {
                let name = match fault {
                    Fault::Status(code) => code.to_string(),
                    Fault::TooManyRequests => "429".into(),
                    Fault::ResetBefore => "reset-before".into(),
                    Fault::ResetMidBody => "reset-mid-body".into(),
                    Fault::Hang => "hang".into(),
                    Fault::Delay(_) => "delay".into(),
                };
                *counts.faults.entry(name).or_default() += 1;
            }
        }
        let request_has_body = head.header("content-length").is_some_and(|v| v != "0")
            || head.header("transfer-encoding").is_some();
        match fault {
            Some(Fault::ResetBefore) => {
                if request_has_body {
                    let len: usize = head
                        .header("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(2);
                    let mut half = vec![0; len / 2];
                    let _ = reader.read_exact(&mut half);
                }
                let _ = client_write.shutdown(Shutdown::Both);
                return;
            }
            Some(Fault::Hang) => {
                let until = Instant::now() + Duration::from_secs(600);
                while Instant::now() < until && !state.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = client_write.shutdown(Shutdown::Both);
                return;
            }
            _ => {}
        }
        let Some(body) = read_body(&mut reader, &head, true) else {
            return;
        };
        let canned = match fault {
            Some(Fault::Status(code)) => Some((code, "")),
            Some(Fault::TooManyRequests) => Some((429, "Retry-After: 1\r\n")),
            _ => None,
        };
        if let Some((code, extra)) = canned {
            let text = format!(
                "{{\"errors\":[{{\"code\":\"UNAVAILABLE\",\"message\":\"injected fault {code}\"}}]}}"
            );
            let answer = format!(
                "HTTP/1.1 {code} Injected\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{text}",
                text.len()
            );
            if client_write.write_all(answer.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        if let Some(Fault::Delay(delay)) = fault {
            std::thread::sleep(delay);
        }
        // Forward on this client's upstream connection (opened on first use).
        if upstream.is_none() {
            let Ok(stream) = TcpStream::connect(&state.upstream) else {
                return;
            };
            let Ok(read_half) = stream.try_clone() else {
                return;
            };
            upstream = Some((stream, BufReader::new(read_half)));
        }
        let (up_write, up_read) = upstream.as_mut().expect("opened above");
        if up_write.write_all(&head.raw).is_err() || up_write.write_all(&body).is_err() {
            return;
        }
        let Some(answer) = read_head(up_read) else {
            return;
        };
        let status: u16 = answer
            .first
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let has_body = method != "HEAD" && status != 204 && status != 304 && status >= 200;
        let Some(answer_body) = read_body(up_read, &answer, has_body) else {
            return;
        };
        if fault == Some(Fault::ResetMidBody) {
            if !answer_body.is_empty() {
                let _ = client_write.write_all(&answer.raw);
                let _ = client_write.write_all(&answer_body[..answer_body.len() / 2]);
                let _ = client_write.flush();
            }
            let _ = client_write.shutdown(Shutdown::Both);
            return;
        }
        if client_write.write_all(&answer.raw).is_err()
            || client_write.write_all(&answer_body).is_err()
        {
            return;
        }
        if answer
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            let _ = client_write.shutdown(Shutdown::Both);
            return;
        }
    }
}
