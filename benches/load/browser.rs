//! Browser confirmations in the load harness: each client is a browser with a software WebAuthn
//! authenticator (P-256, `none` attestation, its own session cookie), and one action is the whole
//! journey a browser makes: the held POST (303), the confirmation page, the ceremony's `begin`
//! and `finish` (a real assertion the gateway verifies with webauthn-rs), the resume link (303
//! and the resume cookie), and the navigation that forwards the held request. The first action
//! of each client creates its passkey (first use) during the warm-up; measured ones assert.
//!
//! With the Redis store the same run counts the store's round trips per action (Redis
//! `total_commands_processed`), and one traced action counts them per step.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

use super::{upstream, Gateway, Settings, UNBOUNDED};

/// A software authenticator with one passkey for RP id `localhost`.
struct Authenticator {
    key: EcdsaKeyPair,
    credential_id: [u8; 16],
    counter: u32,
    registered: bool,
}

impl Authenticator {
    fn new() -> Authenticator {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
                .expect("a P-256 key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
            .expect("the P-256 key parses");
        Authenticator {
            key,
            credential_id: rand::random(),
            counter: 0,
            registered: false,
        }
    }

    /// Authenticator data: RP id hash, flags (UP, UV, and AT with `attested`), counter.
    fn auth_data(&mut self, attested: Option<&[u8]>) -> Vec<u8> {
        self.counter += 1;
        let mut data = Sha256::digest(b"localhost").to_vec();
        data.push(if attested.is_some() { 0x45 } else { 0x05 });
        data.extend_from_slice(&self.counter.to_be_bytes());
        if let Some(attested) = attested {
            data.extend_from_slice(attested);
        }
        data
    }

    /// The answer to `navigator.credentials.create` or `.get` with `options`.
    fn answer(&mut self, mode: &str, options: &Value, origin: &str) -> Value {
        let challenge = options["publicKey"]["challenge"]
            .as_str()
            .expect("a challenge");
        let kind = if mode == "create" {
            "webauthn.create"
        } else {
            "webauthn.get"
        };
        let client_data = json!({
            "type": kind, "challenge": challenge, "origin": origin, "crossOrigin": false
        })
        .to_string();
        let id = URL_SAFE_NO_PAD.encode(self.credential_id);
        if mode == "create" {
            self.registered = true;
            let attested = self.attested_credential();
            let auth_data = self.auth_data(Some(&attested));
            let mut attestation = vec![0xa3];
            cbor_text(&mut attestation, "fmt");
            cbor_text(&mut attestation, "none");
            cbor_text(&mut attestation, "attStmt");
            attestation.push(0xa0);
            cbor_text(&mut attestation, "authData");
            cbor_bytes(&mut attestation, &auth_data);
            return json!({
                "id": id, "rawId": id, "type": "public-key", "extensions": {},
                "response": {
                    "attestationObject": URL_SAFE_NO_PAD.encode(attestation),
                    "clientDataJSON": URL_SAFE_NO_PAD.encode(client_data.as_bytes()),
                }
            });
        }
        let auth_data = self.auth_data(None);
        let mut signed = auth_data.clone();
        signed.extend_from_slice(&Sha256::digest(client_data.as_bytes()));
        let signature = self
            .key
            .sign(&SystemRandom::new(), &signed)
            .expect("the assertion is signed");
        json!({
            "id": id, "rawId": id, "type": "public-key", "extensions": {},
            "response": {
                "authenticatorData": URL_SAFE_NO_PAD.encode(auth_data),
                "clientDataJSON": URL_SAFE_NO_PAD.encode(client_data.as_bytes()),
                "signature": URL_SAFE_NO_PAD.encode(signature.as_ref()),
                "userHandle": null,
            }
        })
    }

    /// AAGUID (zero), credential id and its COSE EC2 P-256 public key.
    fn attested_credential(&self) -> Vec<u8> {
        let public = self.key.public_key().as_ref();
        let (x, y) = (&public[1..33], &public[33..65]);
        let mut out = vec![0u8; 16];
        out.extend_from_slice(&(self.credential_id.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.credential_id);
        // {1: 2 (EC2), 3: -7 (ES256), -1: 1 (P-256), -2: x, -3: y}
        out.extend_from_slice(&[0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21]);
        cbor_bytes(&mut out, x);
        out.push(0x22);
        cbor_bytes(&mut out, y);
        out
    }
}

fn cbor_text(out: &mut Vec<u8>, text: &str) {
    assert!(text.len() < 24);
    out.push(0x60 | text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

fn cbor_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    match bytes.len() {
        n if n < 24 => out.push(0x40 | n as u8),
        n if n < 256 => out.extend_from_slice(&[0x58, n as u8]),
        n => {
            out.push(0x59);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(bytes);
}

/// One browser: its session, its authenticator, its connection.
struct Browser {
    sender: SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    cookie: String,
    authenticator: Authenticator,
}

/// The answer's status, headers and body.
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Browser {
    async fn new(addr: SocketAddr, i: usize) -> Browser {
        let stream = TcpStream::connect(addr).await.expect("connect to gateway");
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("an HTTP/1.1 connection");
        tokio::spawn(conn);
        Browser {
            sender,
            addr,
            cookie: format!("sid=browser-{i}-{}", rand::random::<u64>()),
            authenticator: Authenticator::new(),
        }
    }

    fn confirmation_host(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }

    async fn send(
        &mut self,
        method: &str,
        target: &str,
        host: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(target)
            .header("host", host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request");
        self.sender
            .ready()
            .await
            .expect("the connection stays open");
        let answer = self
            .sender
            .send_request(request)
            .await
            .expect("an answer arrives");
        let status = answer.status().as_u16();
        let headers = answer.headers().clone();
        let body = answer
            .into_body()
            .collect()
            .await
            .expect("the body")
            .to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    }

    /// One browser confirmation, step by step; `trace` is called after each step with its name.
    async fn action(&mut self, n: u64, trace: &mut impl FnMut(&'static str)) {
        let app = self.addr.to_string();
        let confirm = self.confirmation_host();
        let target = format!("/users/{n}/delete");
        let cookie = self.cookie.clone();
        let held = self
            .send(
                "POST",
                &target,
                &app,
                &[
                    ("cookie", &cookie),
                    ("sec-fetch-mode", "navigate"),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                b"reason=load&csrfmiddlewaretoken=t".to_vec(),
            )
            .await;
        assert_eq!(held.status, 303, "the navigation is held");
        let page = location(&held, &format!("http://{confirm}"));
        trace("hold");
        let shown = self.send("GET", &page, &confirm, &[], Vec::new()).await;
        assert_eq!(shown.status, 200, "the confirmation page is shown");
        trace("page");
        let json = [("content-type", "application/json")];
        let begun = self
            .send(
                "POST",
                &format!("{page}/begin"),
                &confirm,
                &json,
                b"{}".to_vec(),
            )
            .await;
        let begun: Value = serde_json::from_slice(&begun.body).expect("options JSON");
        let mode = begun["mode"].as_str().expect("a ceremony mode").to_string();
        assert_eq!(mode == "create", !self.authenticator.registered);
        trace("begin");
        let origin = format!("http://{confirm}");
        let response = self.authenticator.answer(&mode, &begun["options"], &origin);
        let finished = self
            .send(
                "POST",
                &format!("{page}/finish"),
                &confirm,
                &json,
                response.to_string().into_bytes(),
            )
            .await;
        let finished: Value = serde_json::from_slice(&finished.body).expect("finish JSON");
        let next = finished["next"].as_str().expect("a next address");
        let resume = next
            .strip_prefix(&format!("http://{app}"))
            .unwrap_or_else(|| panic!("the ceremony succeeds: {next}"))
            .to_string();
        trace("finish");
        let resumed = self
            .send("GET", &resume, &app, &[("cookie", &cookie)], Vec::new())
            .await;
        assert_eq!(resumed.status, 303, "the resume link works");
        let set = resumed
            .headers
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .expect("a resume cookie")
            .to_string();
        trace("resume");
        let both = format!("{cookie}; {set}");
        let forwarded = self
            .send("GET", &target, &app, &[("cookie", &both)], Vec::new())
            .await;
        assert_eq!(forwarded.status, 200, "the held request is forwarded");
        trace("arrival");
    }
}

fn location(answer: &Answer, origin: &str) -> String {
    let location = answer
        .headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("a Location");
    location
        .strip_prefix(origin)
        .unwrap_or_else(|| panic!("{location} is on {origin}"))
        .to_string()
}

/// A `redis-server` of the bench's own, and its command counter.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Option<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let dir = tempfile::tempdir().ok()?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Redis {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.commands().is_none() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    /// The text of `INFO {section}`.
    fn info(&self, section: &str) -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let ask = format!("*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len());
        s.write_all(ask.as_bytes()).ok()?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 8192];
        // A bulk string: `$<len>\r\n<len bytes>\r\n`.
        loop {
            let n = s.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            reply.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&reply);
            let (len, rest) = text.strip_prefix('$')?.split_once("\r\n")?;
            if rest.len() >= len.parse::<usize>().ok()? {
                return Some(rest.to_string());
            }
        }
    }

    /// Commands processed so far, not counting the `INFO` that asks.
    fn commands(&self) -> Option<u64> {
        self.info("stats")?
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Watches every command the server runs (`MONITOR`), on a thread of its own.
    fn monitor(&self) -> Option<Monitor> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.write_all(b"*1\r\n$7\r\nMONITOR\r\n").ok()?;
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = lines.clone();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stream);
            let mut line = String::new();
            while std::io::BufRead::read_line(&mut reader, &mut line).is_ok_and(|n| n > 0) {
                if let Ok(mut seen) = seen.lock() {
                    seen.push(line.trim_end().to_string());
                }
                line.clear();
            }
        });
        let monitor = Monitor {
            lines,
            port: self.port,
        };
        // MONITOR answers +OK first; then every command, ours included.
        monitor.mark("start");
        Some(monitor)
    }
}

/// The commands a Redis server ran, as `MONITOR` reports them.
struct Monitor {
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    port: u16,
}

impl Monitor {
    /// Sends `ECHO <name>` and waits until the monitor saw it: the commands before it are done.
    fn mark(&self, name: &str) {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let echo = format!("*2\r\n$4\r\nECHO\r\n${}\r\n{name}\r\n", name.len());
            let _ = s.write_all(echo.as_bytes());
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf);
        }
        let wanted = format!("\"ECHO\" \"{name}\"");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self
                .lines
                .lock()
                .is_ok_and(|l| l.iter().any(|l| l.ends_with(&wanted)))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The commands clients sent (Lua's own calls inside a script left out) between the marks
    /// `from` and `to`, by name.
    fn between(&self, from: &str, to: &str) -> Vec<(String, u64)> {
        let lines = self.lines.lock().map(|l| l.clone()).unwrap_or_default();
        let at = |name: &str| {
            let wanted = format!("\"ECHO\" \"{name}\"");
            lines.iter().position(|l| l.ends_with(&wanted))
        };
        let (Some(a), Some(b)) = (at(from), at(to)) else {
            return Vec::new();
        };
        let mut counts: Vec<(String, u64)> = Vec::new();
        for line in &lines[a + 1..b] {
            if line.contains("[0 lua]") {
                continue;
            }
            let Some(name) = line.split('"').nth(1) else {
                continue;
            };
            let name = name.to_ascii_uppercase();
            if name == "INFO" || name == "ECHO" {
                continue;
            }
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => *c += 1,
                None => counts.push((name, 1)),
            }
        }
        counts
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The config part that turns browser confirmations on (first-use passkeys), on `store`.
fn browser_config(store: &str) -> String {
    format!(
        "public_origin: \"http://{{addr}}\"\nbrowser: {{ origin: \"http://localhost:{{port}}\", \
         user_verification: required, hold_ttl: 120s }}\n{store}"
    )
}

/// Runs `clients` browsers for `seconds` after a warm-up that registers their passkeys:
/// (actions, wall seconds, gateway CPU seconds, Redis commands over the measured actions).
async fn run(
    gateway: &Gateway,
    clients: usize,
    seconds: u64,
    redis: Option<&Redis>,
) -> (u64, f64, f64, Option<u64>) {
    let addr = gateway.addr;
    let mut browsers = Vec::new();
    for i in 0..clients {
        let mut b = Browser::new(addr, i).await;
        b.action(0, &mut |_| {}).await;
        b.action(1, &mut |_| {}).await;
        browsers.push(b);
    }
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let counted = redis.and_then(Redis::commands);
    let before = gateway.cpu_seconds();
    let started = Instant::now();
    let tasks: Vec<_> = browsers
        .into_iter()
        .map(|mut b| {
            let done = done.clone();
            tokio::spawn(async move {
                let mut n = 2;
                while n < 3 || Instant::now() < deadline {
                    b.action(n, &mut |_| {}).await;
                    n += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a browser finishes");
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = gateway.cpu_seconds() - before;
    let commands = match (counted, redis.and_then(Redis::commands)) {
        // The second INFO is not the gateway's.
        (Some(a), Some(b)) => Some(b.saturating_sub(a + 1)),
        _ => None,
    };
    (done.load(Ordering::Relaxed), wall, cpu, commands)
}

pub(super) async fn measure(s: &Settings) {
    let upstream = upstream().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let clients = s.clients.min(8);
    let memory = Gateway::start_with(dir.path(), upstream, 1, UNBOUNDED, &browser_config("")).await;
    let (actions, wall, cpu, _) = run(&memory, clients, s.seconds, None).await;
    drop(memory);
    let mut rows = vec![("memory", actions, wall, cpu, None)];
    let mut steps = Vec::new();
    if let Some(redis) = Redis::start() {
        let store = format!(
            "store: {{ kind: redis, url: \"redis://127.0.0.1:{}\" }}\n",
            redis.port
        );
        let gateway =
            Gateway::start_with(dir.path(), upstream, 1, UNBOUNDED, &browser_config(&store)).await;
        let (actions, wall, cpu, commands) = run(&gateway, clients, s.seconds, Some(&redis)).await;
        let per_action = commands.map(|c| c as f64 / actions as f64);
        rows.push(("redis", actions, wall, cpu, per_action));
        // One traced action of a browser whose passkey is registered.
        let mut b = Browser::new(gateway.addr, 99).await;
        b.action(0, &mut |_| {}).await;
        if let Some(monitor) = redis.monitor() {
            let mut previous = "start";
            b.action(1, &mut |step| {
                monitor.mark(step);
                steps.push((step, monitor.between(previous, step)));
                previous = step;
            })
            .await;
        }
    }
    println!("## Browser confirmations (hold → page → begin → finish → resume → forward)\n");
    println!(
        "{clients} concurrent browsers, {} s per store, gateway threads 1; each browser is a \
         software authenticator in this process (P-256 assertion per action, verified by the \
         gateway with webauthn-rs). CPU = gateway utime+stime from /proc/<pid>/stat.\n",
        s.seconds
    );
    println!("| store | actions | actions/s | gateway CPU µs/action | store commands/action |");
    println!("|---|---|---|---|---|");
    for (store, actions, wall, cpu, commands) in &rows {
        println!(
            "| {store} | {actions} | {:.0} | {:.0} | {} |",
            *actions as f64 / wall,
            cpu / *actions as f64 * 1e6,
            commands.map_or("—".to_string(), |c| format!("{c:.1}"))
        );
    }
    if !steps.is_empty() {
        println!(
            "\n(store commands/action counts every command Redis ran, the calls inside its Lua \
             scripts included.) Store round trips of one traced action, by step, as `MONITOR` \
             sees the gateway's commands (a script is one round trip):\n"
        );
        println!("| step | store round trips | which |");
        println!("|---|---|---|");
        for (step, made) in &steps {
            let total: u64 = made.iter().map(|(_, n)| n).sum();
            let which: Vec<String> = made.iter().map(|(c, n)| format!("{c} ×{n}")).collect();
            println!("| {step} | {total} | {} |", which.join(", "));
        }
    }
    println!();
}
