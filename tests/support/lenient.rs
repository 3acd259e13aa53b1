//! A legacy upstream as lenient as old servers are, recording the raw bytes it received, and a raw
//! client that writes request bytes exactly as given. The claim a test proves with them is "nothing
//! the upstream could execute as a high-impact action arrived unconfirmed", judged by the reading
//! this upstream gives a request: a target without a leading slash gets one, an absolute-form target
//! loses its authority, the path is percent-decoded, dot segments, `;params`, empty segments and a
//! trailing slash are resolved, case is ignored, `_` and `-` are the same in header names, and
//! override headers and `_method` are honoured.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the lenient upstream received it.
#[derive(Debug, Clone)]
pub struct RawSeen {
    /// The request line, exactly.
    pub line: String,
    /// Header names as sent, with values.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl RawSeen {
    /// The request-line target, exactly as received.
    pub fn target(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or("")
    }

    /// A header by name, read the CGI way: case and `_`/`-` ignored.
    pub fn header(&self, name: &str) -> Option<&str> {
        let want = cgi(name);
        self.headers
            .iter()
            .find(|(n, _)| cgi(n) == want)
            .map(|(_, v)| v.as_str())
    }

    /// The method and path a lenient framework would execute.
    pub fn executes(&self) -> (String, String) {
        let mut parts = self.line.split_whitespace();
        let method = parts.next().unwrap_or("").to_ascii_uppercase();
        let target = parts.next().unwrap_or("");
        let target = match target.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => target,
        };
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let override_field = |text: &str| {
            form_urlencoded::parse(text.as_bytes())
                .find(|(k, _)| k == "_method")
                .map(|(_, v)| v.to_ascii_uppercase())
        };
        let method = [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ]
        .iter()
        .find_map(|h| self.header(h).map(|v| v.trim().to_ascii_uppercase()))
        .or_else(|| override_field(query))
        .or_else(|| {
            let form = self
                .header("content-type")
                .is_some_and(|t| t.contains("x-www-form-urlencoded"));
            form.then(|| override_field(&String::from_utf8_lossy(&self.body)))
                .flatten()
        })
        .unwrap_or(method);
        (method, lenient_path(path))
    }
}

fn cgi(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// Fully decoded, resolved, lower-cased, without empty segments, `;params` or trailing slash.
pub fn lenient_path(path: &str) -> String {
    let mut decoded = path.replace('\\', "/");
    for _ in 0..3 {
        decoded = percent_decode(&decoded);
    }
    let decoded = decoded.replace('\\', "/").to_ascii_lowercase();
    let mut out: Vec<&str> = Vec::new();
    for segment in decoded
        .split('/')
        .map(|s| s.split(';').next().unwrap_or(""))
    {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How the lenient upstream answers a WebSocket handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// `101` with the correct `Sec-WebSocket-Accept`.
    Correct,
    /// `101` with a wrong accept value, then keeps speaking HTTP.
    Wrong,
}

/// The lenient recording upstream.
#[derive(Clone)]
pub struct Lenient {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<RawSeen>>>,
}

impl Lenient {
    /// Starts one; every request gets `200 ok`, an upgrade request gets a `101` per `switch`.
    pub async fn start(switch: Switch) -> Lenient {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(connection(stream, record.clone(), switch));
            }
        });
        Lenient { addr, seen }
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<RawSeen> {
        self.seen.lock().expect("lock").clone()
    }

    /// The requests it received that it would execute as `method` on a path `high` accepts.
    pub fn executed(&self, method: &str, high: impl Fn(&str) -> bool) -> Vec<RawSeen> {
        self.seen()
            .into_iter()
            .filter(|s| {
                let (m, p) = s.executes();
                m == method && high(&p)
            })
            .collect()
    }
}

async fn connection(mut stream: TcpStream, record: Arc<Mutex<Vec<RawSeen>>>, switch: Switch) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let line = lines.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_string(), v.trim().to_string()))
            .collect();
        let seen = RawSeen {
            line,
            headers,
            body: Vec::new(),
        };
        let len: usize = seen
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        buf.drain(..head_end + 4);
        while buf.len() < len {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..len).collect();
        let key = seen.header("sec-websocket-key").map(str::to_string);
        record.lock().expect("lock").push(RawSeen { body, ..seen });
        let reply = match key {
            Some(key) => {
                let accept = match switch {
                    Switch::Correct => websocket_accept(&key),
                    Switch::Wrong => "bm90LXRoZS1yaWdodC1vbmU=".to_string(),
                };
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                )
            }
            None => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_string(),
        };
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn websocket_accept(key: &str) -> String {
    use base64::Engine;
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A response as read off the wire.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawReply {
    /// A header value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    }

    /// The body as JSON (gateway refusals are JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Writes `request` to `addr` exactly as given and reads one response (Content-Length framed or
/// until the connection closes; at most 5 s).
pub async fn raw(addr: &str, request: &[u8]) -> RawReply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let reply = RawReply {
                status: head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                head,
                body: Vec::new(),
            };
            let len: Option<usize> = reply.header("content-length").and_then(|v| v.parse().ok());
            if let Some(len) = len {
                if buf.len() >= end + 4 + len {
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    return RawReply { body, ..reply };
                }
            } else if reply.status == 101 {
                return reply;
            }
        }
        let mut chunk = [0u8; 8192];
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await;
        match read {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => {
                let end = find(&buf, b"\r\n\r\n").unwrap_or(buf.len());
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let body = buf.get(end + 4..).unwrap_or_default().to_vec();
                return RawReply { status, head, body };
            }
        }
    }
}
