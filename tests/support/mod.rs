//! The world an end-to-end test owns: a recording upstream on an ephemeral loopback port, the
//! gateway in-process in front of it, a plain HTTP/1.1 client, and the audit log it wrote.
#![allow(dead_code)]

pub mod lenient;
pub mod world;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use countersign::server::{self, Running};
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};

/// A request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    /// The body, when it is at most [`KEPT_BODY`] bytes (only its length and hash otherwise).
    pub body: Bytes,
    pub body_len: usize,
    pub body_sha256: [u8; 32],
}

/// Largest request body a recording upstream keeps whole; larger ones stream through and only
/// their length and hash are kept, so a test can send far more than fits in memory.
pub const KEPT_BODY: usize = 2 * 1024 * 1024;

impl Seen {
    /// A request header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The path of the request target, without the query.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or(&self.uri)
    }

    /// The claims of the `Countersign-Provenance` token it received (unverified).
    pub fn provenance(&self) -> Value {
        let token = self
            .header("countersign-provenance")
            .expect("a confirmed request carries Countersign-Provenance");
        world::jws_claims(token)
    }
}

/// A recording upstream: keeps every request it received, in order, before it answers.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// Starts one on the current runtime. Paths: `/redirect/...` → 303 to its own origin,
    /// `/slow[/MS]` → answers after MS (default 3000) ms, else 200 JSON.
    pub async fn start() -> Upstream {
        Upstream::start_with(answer).await
    }

    /// Starts one that records each request, then answers it with `app(request, own address)`.
    pub async fn start_with<F, Fut>(app: F) -> Upstream
    where
        F: Fn(Seen, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
    {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let addr = serve(move |req, addr| {
            let (record, app) = (record.clone(), app.clone());
            async move {
                let seen = receive(req).await;
                record
                    .lock()
                    .expect("upstream record lock")
                    .push(seen.clone());
                Ok::<_, Infallible>(app(seen, addr).await)
            }
        })
        .await;
        Upstream { addr, seen }
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("upstream record lock").clone()
    }

    /// How many requests it received so far.
    pub fn count(&self) -> usize {
        self.seen.lock().expect("upstream record lock").len()
    }

    /// The last request it received.
    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream received a request")
    }

    /// Its own origin, as it writes it in absolute `Location`s.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Serves HTTP/1 on a fresh loopback port, each request answered by `app(request, own address)`;
/// returns the address. Runs until the test's runtime ends.
pub async fn serve<F, Fut, B>(app: F) -> SocketAddr
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let app = app.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| app(req, addr));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// The body type of a recording upstream's answers.
pub type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Reads a request whole (hashing the body as it streams, keeping at most [`KEPT_BODY`]).
async fn receive(req: Request<Incoming>) -> Seen {
    let (parts, mut body) = req.into_parts();
    let mut hasher = Sha256::new();
    let mut kept = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            len += data.len();
            hasher.update(data);
            if len <= KEPT_BODY {
                kept.extend_from_slice(data);
            }
        }
    }
    if len > KEPT_BODY {
        kept.clear();
    }
    Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body: Bytes::from(kept),
        body_len: len,
        body_sha256: hasher.finalize().into(),
    }
}

/// The answers of [`Upstream::start`].
async fn answer(seen: Seen, addr: SocketAddr) -> Response<Body> {
    let path = seen.path().to_string();
    let resp = if let Some(rest) = path.strip_prefix("/redirect") {
        Response::builder()
            .status(303)
            .header("location", format!("http://{addr}/done{rest}"))
            .header("content-location", format!("http://{addr}/here"))
            .body(full("see other"))
    } else if let Some(ms) = path.strip_prefix("/slow") {
        let ms = ms.trim_start_matches('/').parse().unwrap_or(3000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Response::builder().body(full("late"))
    } else {
        Response::builder()
            .header("content-type", "application/json")
            .body(full(&format!(r#"{{"ok":true,"len":{}}}"#, seen.body_len)))
    };
    resp.expect("valid test response")
}

/// A whole body of text.
pub fn full(s: &str) -> Body {
    BodyExt::boxed(Full::new(Bytes::from(s.to_string())))
}

/// A gateway running in this process, with its audit log in a temp dir.
pub struct Gateway {
    pub base: String,
    pub port: u16,
    pub metrics_port: u16,
    pub audit_path: PathBuf,
    running: Option<Running>,
    _dir: tempfile::TempDir,
}

/// A free loopback port for a server a test starts. It lies below the kernel's ephemeral range,
/// so no client connection of the tests can take it as its source port before the server binds
/// it, and it is never handed out twice in one process.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral_start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let low = 10_000.min(ephemeral_start / 2);
    loop {
        let port = rand::random_range(low..ephemeral_start);
        let mut handed_out = HANDED_OUT.lock().expect("port registry lock");
        if !handed_out.contains(&port) && StdListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
}

impl Gateway {
    /// Starts a gateway whose config is `body` (upstreams, session, routes, ...) with `listen`,
    /// `metrics`, `audit` and `server` filled in; `{upstream}` is replaced by the upstream address
    /// and `{port}` by the gateway's own port.
    pub async fn start(body: &str, upstream: &Upstream) -> Gateway {
        Gateway::start_at(body, upstream.addr).await
    }

    /// [`Gateway::start`] in front of any upstream address.
    pub async fn start_at(body: &str, upstream: SocketAddr) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let (port, metrics_port) = (free_port(), free_port());
        let audit_path = dir.path().join("audit.jsonl");
        let yaml = format!(
            "listen: \"127.0.0.1:{port}\"\nmetrics: {{ listen: \"127.0.0.1:{metrics_port}\" }}\naudit: {{ path: \"{}\" }}\nserver: {{ threads: 2, shutdown_timeout: 1s }}\n{}",
            audit_path.display(),
            body.replace("{upstream}", &upstream.to_string())
                .replace("{port}", &port.to_string())
        );
        let config = countersign::config::parse(&yaml, Path::new("test.yaml"))
            .expect("test config is valid");
        let running = server::assemble(config, server::Runtime::Shared)
            .expect("gateway assembles")
            .spawn();
        let started = std::time::Instant::now();
        // Both listeners bind on their own threads, in no fixed order.
        for p in [port, metrics_port] {
            while TcpStream::connect(("127.0.0.1", p)).await.is_err() {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "the gateway did not start listening on port {p}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Gateway {
            base: format!("http://127.0.0.1:{port}"),
            port,
            metrics_port,
            audit_path,
            running: Some(running),
            _dir: dir,
        }
    }

    /// The audit records written so far: every complete line (the gateway may be writing the
    /// next one while this reads).
    pub fn audit(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.audit_path).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    /// The last audit record of the request a reply answered (by `Countersign-Request-Id`):
    /// records of different requests may interleave, e.g. a `completed` written after the
    /// response was sent.
    pub fn audit_of(&self, reply: &Reply) -> Value {
        let id = reply
            .header("countersign-request-id")
            .expect("the gateway names the request in Countersign-Request-Id");
        self.audit()
            .into_iter()
            .rfind(|r| r["request_id"] == id)
            .expect("an audit record was written for this request")
    }

    /// Waits (a `completed` record is written after the response) for the first audit record
    /// that satisfies `what`.
    pub async fn wait_for_audit(&self, what: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..300 {
            if let Some(record) = self.audit().into_iter().find(|r| what(r)) {
                return record;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("audit record never written; log: {:#?}", self.audit());
    }

    /// The gateway's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = send(
            &format!("http://127.0.0.1:{}/metrics", self.metrics_port),
            "GET",
            &[],
            Bytes::new(),
        )
        .await;
        String::from_utf8_lossy(&r.body).into_owned()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            // Stopping joins runtime threads: never do it on an async worker.
            std::thread::spawn(move || r.stop());
        }
    }
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The JSON body.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// Status, headers and body, for assertion messages.
    pub fn text(&self) -> String {
        format!(
            "{} {:?} {}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }

    /// The `error` of `WWW-Authenticate: DPoP error="..."`.
    pub fn dpop_error(&self) -> Option<String> {
        let v = self.header("www-authenticate")?;
        let start = v.find("error=\"")? + 7;
        Some(v[start..].split('"').next()?.to_string())
    }
}

/// Sends one request on a fresh connection; headers may repeat.
pub async fn send(url: &str, method: &str, headers: &[(&str, &str)], body: Bytes) -> Reply {
    send_via(None, url, method, headers, body).await
}

/// [`send`] from `source`, a loopback address other than 127.0.0.1: another client, as far as
/// the gateway can tell.
pub async fn send_from(
    source: std::net::IpAddr,
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    send_via(Some(source), url, method, headers, body).await
}

async fn send_via(
    source: Option<std::net::IpAddr>,
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let uri: hyper::Uri = url.parse().expect("test url");
    let authority = uri.authority().expect("authority").to_string();
    let stream = match source {
        None => TcpStream::connect(&authority).await.expect("connect"),
        Some(ip) => {
            let peer: std::net::SocketAddr = authority.parse().expect("an IP authority");
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind((ip, 0).into())
                .expect("bind the source address");
            socket.connect(peer).await.expect("connect")
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::builder().method(method).uri(target);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", authority.as_str());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(body)).expect("request"))
        .await
        .expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// Sends one request per `(url, headers)` pair, all at once; the replies in the same order.
pub async fn race(method: &str, requests: Vec<(String, Vec<(String, String)>)>) -> Vec<Reply> {
    let method = method.to_string();
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(url, headers)| {
            let method = method.clone();
            tokio::spawn(async move {
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                send(&url, &method, &headers, Bytes::new()).await
            })
        })
        .collect();
    let mut replies = Vec::with_capacity(tasks.len());
    for task in tasks {
        replies.push(task.await.expect("request task"));
    }
    replies
}

/// Asserts that exactly one reply is a 200 and every other a `use_dpop_nonce` 401; returns
/// the winner and the losers.
pub fn one_winner(replies: Vec<Reply>) -> (Reply, Vec<Reply>) {
    let (mut won, lost): (Vec<_>, Vec<_>) = replies.into_iter().partition(|r| r.status == 200);
    let statuses: Vec<u16> = lost.iter().map(|r| r.status).collect();
    assert_eq!(won.len(), 1, "exactly one wins; the others: {statuses:?}");
    for r in &lost {
        assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.dpop_error().as_deref(), Some("use_dpop_nonce"));
    }
    (won.remove(0), lost)
}

/// Asserts that the Prometheus text `metrics` has exactly this sample line.
pub fn assert_metric(metrics: &str, line: &str) {
    assert!(
        metrics.lines().any(|l| l == line),
        "missing `{line}` in:\n{metrics}"
    );
}
