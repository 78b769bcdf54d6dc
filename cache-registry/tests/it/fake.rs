//! A scripted in-process HTTP/1.1 server for what a real registry will not do on demand.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as the fake server received it.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or(&self.target)
    }

    /// All values of query parameter `name`, percent-decoded.
    pub fn query(&self, name: &str) -> Vec<String> {
        let Some((_, query)) = self.target.split_once('?') else {
            return Vec::new();
        };
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .filter(|(key, _)| *key == name)
            .map(|(_, value)| decode(value))
            .collect()
    }
}

fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
                out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).expect("utf-8 query")
}

/// What the server does with a request.
pub enum Reply {
    /// A complete response. `Content-Length` is added from the body unless given.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Close the connection with a TCP reset, without answering.
    Reset,
    /// Promise `declared` body bytes, send `body` (shorter), then close.
    Truncated {
        status: u16,
        headers: Vec<(String, String)>,
        declared: usize,
        body: Vec<u8>,
    },
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply::Full {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        if let Reply::Full { headers, .. } | Reply::Truncated { headers, .. } = &mut self {
            headers.push((name.to_string(), value.into()));
        }
        self
    }

    pub fn body(mut self, bytes: impl Into<Vec<u8>>) -> Reply {
        if let Reply::Full { body, .. } = &mut self {
            *body = bytes.into();
        }
        self
    }

    /// A distribution error body.
    pub fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply::status(status)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"errors":[{{"code":"{code}","message":"{message}","detail":null}}]}}"#
            ))
    }
}

/// The request handler of a fake server.
type Handler = Arc<dyn Fn(&Req) -> Reply + Send + Sync>;

/// A running fake server.
pub struct Fake {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    log: Arc<Mutex<Vec<Req>>>,
}

impl Fake {
    /// Starts a server; `make` gets the address and returns the request handler.
    pub async fn start<H>(make: impl FnOnce(String) -> H) -> Fake
    where
        H: Fn(&Req) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr").to_string();
        let handler: Handler = Arc::new(make(addr.clone()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let conn_log = Arc::clone(&log);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = Arc::clone(&handler);
                let log = Arc::clone(&conn_log);
                tokio::spawn(async move {
                    let _ = serve(stream, handler, &log).await;
                });
            }
        });
        Fake { addr, log }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Req> {
        self.log.lock().expect("log lock").clone()
    }

    /// Requests whose method and path match.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|req| req.method == method && req.path() == path)
            .count()
    }
}

async fn serve(
    mut stream: TcpStream,
    handler: Handler,
    log: &Mutex<Vec<Req>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        // Read the head.
        let head_end = loop {
            if let Some(pos) = find(&buf, b"\r\n\r\n") {
                break pos;
            }
            if buf.first() == Some(&0x16) {
                // A TLS ClientHello: this server speaks plain HTTP only.
                return Ok(());
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split(' ');
        let method = first.next().unwrap_or_default().to_string();
        let target = first.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut req = Req {
            method,
            target,
            headers,
            body: Vec::new(),
        };
        let chunked = req
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if chunked {
            loop {
                let line_end = loop {
                    if let Some(pos) = find(&buf, b"\r\n") {
                        break pos;
                    }
                    read_more(&mut stream, &mut buf).await?;
                };
                let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
                        .unwrap_or(0);
                buf.drain(..line_end + 2);
                while buf.len() < size + 2 {
                    read_more(&mut stream, &mut buf).await?;
                }
                req.body.extend_from_slice(&buf[..size]);
                buf.drain(..size + 2);
                if size == 0 {
                    break;
                }
            }
        } else {
            let len: usize = req
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < len {
                read_more(&mut stream, &mut buf).await?;
            }
            req.body = buf.drain(..len).collect();
        }
        log.lock().expect("log lock").push(req.clone());
        let head_only = req.method == "HEAD";
        // Handlers may block (to simulate slow servers): keep them off the runtime's workers.
        let call = Arc::clone(&handler);
        let reply = tokio::task::spawn_blocking(move || call(&req))
            .await
            .expect("handler panicked");
        match reply {
            Reply::Reset => {
                stream.set_zero_linger()?;
                return Ok(());
            }
            Reply::Full {
                status,
                headers,
                body,
            } => {
                let out = response(
                    status,
                    &headers,
                    body.len(),
                    if head_only { &[] } else { &body },
                );
                stream.write_all(&out).await?;
            }
            Reply::Truncated {
                status,
                headers,
                declared,
                body,
            } => {
                let out = response(status, &headers, declared, &body);
                stream.write_all(&out).await?;
                stream.flush().await?;
                return Ok(());
            }
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 65536];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn response(status: u16, headers: &[(String, String)], length: usize, body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} Scripted\r\n");
    let has_length = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_length {
        out.push_str(&format!("content-length: {length}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
