//! The load harness: confirmed actions end to end through the release gateway binary, the
//! gateway's CPU per action next to the signature verification each action needs, and the memory
//! store's bytes per entry and behaviour at its bound, and what a client waits for with and
//! without one-round-trip confirmations.
//!
//! `cargo bench --bench load` measures (about a minute) and prints Markdown tables. Without
//! `--bench` (as `cargo test --all-targets` runs it) it does a smoke run of a few requests.
//! Knobs: `LOAD_SECONDS` (per cell, default 5), `LOAD_CLIENTS` (concurrent clients, default 16),
//! `MEMORY_ENTRIES` (default 1000000), `COUNTERSIGN_BIN` (the gateway binary to run, e.g. a build
//! with frame pointers for `perf`; default: this package's release binary).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, Ed25519KeyPair, UnparsedPublicKey, VerificationAlgorithm};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use countersign::alg::ProofAlg;
use countersign::store::{self, MemoryStore, NonceRecord, ReplayStore, StoreError, Take};
use countersign::tools::device_key::DeviceKey;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[path = "load/browser.rs"]
mod browser;

/// Linux reports /proc/<pid>/stat times in USER_HZ, which is 100 on every architecture's ABI.
const USER_HZ: f64 = 100.0;

struct Settings {
    seconds: u64,
    clients: usize,
    memory_entries: u64,
    /// Challenges of invented sessions sent from one client in the flood.
    flood: u64,
    workers: &'static [usize],
    algs: &'static [ProofAlg],
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let settings = if measuring {
        Settings {
            seconds: env("LOAD_SECONDS", 5),
            clients: env("LOAD_CLIENTS", 16) as usize,
            memory_entries: env("MEMORY_ENTRIES", 1_000_000),
            flood: env("FLOOD_CHALLENGES", 50_000),
            workers: &[1, 2],
            algs: &[ProofAlg::Es256, ProofAlg::EdDsa],
        }
    } else {
        Settings {
            seconds: 0,
            clients: 2,
            memory_entries: 1_000,
            flood: 1_200,
            workers: &[1],
            algs: &[ProofAlg::EdDsa],
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    runtime.block_on(confirmations(&settings));
    runtime.block_on(browser::measure(&settings));
    runtime.block_on(flood(&settings));
    runtime.block_on(memory(&settings));
    runtime.block_on(round_trips(measuring));
}

/// What one client iteration sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A whole confirmed action: challenge, signed retry, forward.
    Action,
    /// Only the first half: the unsigned request and its challenge.
    Challenge,
    /// A low-risk request, forwarded as is.
    Passthrough,
}

/// One measured cell: confirmed actions through a gateway with `workers` threads.
struct Cell {
    alg: ProofAlg,
    workers: usize,
    actions: u64,
    seconds: f64,
    cpu: f64,
    verify: f64,
}

async fn confirmations(s: &Settings) {
    let upstream = upstream().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut cells = Vec::new();
    let mut parts = Vec::new();
    let sign = provenance_sign_seconds(s.seconds > 0);
    for &workers in s.workers {
        let gateway = Gateway::start(dir.path(), upstream, workers, UNBOUNDED).await;
        for &alg in s.algs {
            let verify = raw_verify_seconds(alg, s.seconds > 0);
            let keys = keys(alg, s.clients);
            let (actions, seconds, cpu) = measure(&gateway, &keys, s.seconds, Step::Action).await;
            cells.push(Cell {
                alg,
                workers,
                actions,
                seconds,
                cpu,
                verify,
            });
        }
        if workers == 1 {
            let keys = keys(ProofAlg::EdDsa, s.clients);
            for (step, name) in [
                (Step::Passthrough, "low-risk GET, forwarded"),
                (
                    Step::Challenge,
                    "unsigned DELETE, challenged (nonce issued, audit record)",
                ),
            ] {
                let (n, _, cpu) = measure(&gateway, &keys, s.seconds, step).await;
                parts.push((name, cpu / n as f64));
            }
        }
    }
    println!("## Confirmed actions (challenge → signed retry → forward)\n");
    println!(
        "{} concurrent clients, {} s per cell; client signing runs in this process on the same 2 cores.",
        s.clients, s.seconds
    );
    println!("CPU = gateway utime+stime from /proc/<pid>/stat over the run; verify = aws-lc-rs");
    println!(
        "`UnparsedPublicKey::verify` of one proof, measured in the same run (one per action);"
    );
    println!(
        "all crypto = that verify + the Ed25519 provenance signature each forwarded action carries ({:.1} µs).\n",
        sign * 1e6
    );
    println!("| alg | gateway threads | actions | actions/s | gateway CPU µs/action | raw verify µs | overhead ratio | ratio to all crypto |");
    println!("|---|---|---|---|---|---|---|---|");
    for c in &cells {
        let per_action = c.cpu / c.actions as f64;
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.2}× | {:.2}× |",
            c.alg.as_str(),
            c.workers,
            c.actions,
            c.actions as f64 / c.seconds,
            per_action * 1e6,
            c.verify * 1e6,
            per_action / c.verify,
            per_action / (c.verify + sign)
        );
    }
    println!();
    println!("Where one action's CPU goes (gateway threads 1): the same clients sending only");
    println!("low-risk requests, then only the unsigned first half of an action.\n");
    println!("| request | gateway CPU µs/request |");
    println!("|---|---|");
    for (name, cpu) in &parts {
        println!("| {name} | {:.0} |", cpu * 1e6);
    }
    println!();
}

/// A flood of challenges for invented cookie sessions from one client (cookie sessions cost
/// nothing to invent), with the default quotas; then a confirmation by another client.
async fn flood(s: &Settings) {
    let upstream = upstream().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let gateway = Gateway::start(dir.path(), upstream, 1, "").await;
    let addr = gateway.addr;
    let before = gateway.rss_bytes();
    let sent = Arc::new(AtomicU64::new(0));
    let challenged = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|worker| {
            let (sent, challenged) = (sent.clone(), challenged.clone());
            let total = s.flood;
            tokio::spawn(async move {
                let mut sender = connect(addr, None).await;
                loop {
                    let n = sent.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    let cookie = format!("flood-{worker}-{n}");
                    sender.ready().await.expect("the connection stays open");
                    let answer = sender
                        .send_request(delete(addr, &cookie, n, None))
                        .await
                        .expect("the flood is answered");
                    match answer.status().as_u16() {
                        401 => {
                            challenged.fetch_add(1, Ordering::Relaxed);
                        }
                        429 => {}
                        other => panic!("a flood request was answered {other}"),
                    }
                    let _ = answer.into_body().collect().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a flood task finishes");
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = gateway.rss_bytes();
    let challenged = challenged.load(Ordering::Relaxed);

    // Another client (another loopback address) confirms an action.
    let mut other = connect(addr, Some([127, 0, 0, 2].into())).await;
    let key = DeviceKey::generate(ProofAlg::EdDsa).expect("a device key");
    let confirmed = Instant::now();
    confirm(&mut other, addr, &key, "legit-session", 7).await;
    let confirmed = confirmed.elapsed();

    println!("## A challenge flood from one client\n");
    println!(
        "{} unsigned DELETEs, each with a new invented session cookie, from 127.0.0.1 over 16 \
         connections, default quotas (1024 per client network); then one confirmed action from \
         127.0.0.2.\n",
        s.flood
    );
    println!("| challenges issued | refused 429 | flood req/s | gateway RSS before → after | other client's confirmed action |");
    println!("|---|---|---|---|---|");
    println!(
        "| {challenged} | {} | {:.0} | {:.1} → {:.1} MiB | 200 in {:.1} ms |\n",
        s.flood - challenged,
        s.flood as f64 / seconds,
        before as f64 / (1 << 20) as f64,
        after as f64 / (1 << 20) as f64,
        confirmed.as_secs_f64() * 1e3
    );
    assert_eq!(
        challenged,
        1024.min(s.flood),
        "the client network's quota holds"
    );
}

/// An HTTP/1.1 connection to the gateway, from `source` when given.
async fn connect(addr: SocketAddr, source: Option<std::net::IpAddr>) -> SendRequest<Empty<Bytes>> {
    let stream = match source {
        None => TcpStream::connect(addr).await.expect("connect to gateway"),
        Some(ip) => {
            let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
            socket
                .bind((ip, 0).into())
                .expect("bind the source address");
            socket.connect(addr).await.expect("connect to gateway")
        }
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("an HTTP/1.1 connection");
    tokio::spawn(conn);
    sender
}

/// One device key per client.
fn keys(alg: ProofAlg, clients: usize) -> Arc<Vec<DeviceKey>> {
    Arc::new(
        (0..clients)
            .map(|_| DeviceKey::generate(alg).expect("device key generation works"))
            .collect(),
    )
}

/// Warms up, then runs `step` for `seconds`: (completed, wall seconds, gateway CPU seconds).
async fn measure(
    gateway: &Gateway,
    keys: &Arc<Vec<DeviceKey>>,
    seconds: u64,
    step: Step,
) -> (u64, f64, f64) {
    // Warm up connections and the first-use device bindings, then measure.
    drive(gateway.addr, keys, Duration::from_millis(300), 1, step).await;
    let before = gateway.cpu_seconds();
    let started = Instant::now();
    let done = drive(gateway.addr, keys, Duration::from_secs(seconds), 2, step).await;
    let wall = started.elapsed().as_secs_f64();
    let cpu = gateway.cpu_seconds() - before;
    assert!(done > 0, "no request completed");
    (done, wall, cpu)
}

/// The gateway binary, running with a generated config.
struct Gateway {
    child: Child,
    addr: SocketAddr,
}

/// Challenge quotas out of the way: the measuring clients share one address and send challenges
/// they never answer.
const UNBOUNDED: &str = "max_outstanding_per_session: 100000, max_outstanding_per_ip: 1000000";

impl Gateway {
    /// A gateway with `workers` threads; `quotas` are `confirmation:` settings.
    async fn start(dir: &Path, upstream: SocketAddr, workers: usize, quotas: &str) -> Gateway {
        Gateway::start_with(dir, upstream, workers, quotas, "").await
    }

    /// [`Gateway::start`] with `extra` config (`{addr}` and `{port}` replaced).
    async fn start_with(
        dir: &Path,
        upstream: SocketAddr,
        workers: usize,
        quotas: &str,
        extra: &str,
    ) -> Gateway {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = dir.join(format!("gateway-{port}.yaml"));
        let audit = dir.join(format!("audit-{port}.jsonl"));
        std::fs::write(
            &config,
            format!(
                r#"listen: "{addr}"
server: {{ threads: {workers} }}
upstreams:
  app: {{ address: "{upstream}" }}
session: {{ kind: cookie, cookie: sid }}
confirmation: {{ algs: [ES256, EdDSA], {quotas} }}
audit: {{ path: "{}" }}
routes:
  - {{ name: delete-user, match: {{ methods: [DELETE], path: "/api/users/{{id}}" }}, upstream: app, risk: high }}
  - {{ name: delete-form, match: {{ methods: [POST], path: "/users/{{id}}/delete" }}, upstream: app, risk: high }}
  - {{ name: default, match: {{ path: "/{{*rest}}" }}, upstream: app, risk: low }}
{}"#,
                audit.display(),
                extra
                    .replace("{addr}", &addr.to_string())
                    .replace("{port}", &port.to_string())
            ),
        )
        .expect("the config is written");
        let binary = std::env::var_os("COUNTERSIGN_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_countersign").into());
        let child = Command::new(binary)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("the gateway binary starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "the gateway did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Gateway { child, addr }
    }

    /// The gateway process's resident memory.
    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the gateway's /proc/<pid>/status is readable");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("the gateway's /proc/<pid>/stat is readable");
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        (ticks(11) + ticks(12)) as f64 / USER_HZ
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal keep-alive upstream answering `200 ok` to everything.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("the upstream binds");
    let addr = listener.local_addr().expect("the upstream has an address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Runs one client per key for `duration` (at least `min` actions each); returns the number of
/// confirmed actions completed.
async fn drive(
    addr: SocketAddr,
    keys: &Arc<Vec<DeviceKey>>,
    duration: Duration,
    min: u64,
    step: Step,
) -> u64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..keys.len())
        .map(|i| {
            let keys = keys.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let key = &keys[i];
                let cookie = format!("bench-session-{i}-{}", key.jkt());
                let mut sender = connect(addr, None).await;
                let mut n = 0u64;
                while n < min || Instant::now() < deadline {
                    match step {
                        Step::Action => confirm(&mut sender, addr, key, &cookie, n).await,
                        Step::Challenge => {
                            challenge(&mut sender, addr, &cookie, n).await;
                        }
                        Step::Passthrough => passthrough(&mut sender, addr).await,
                    }
                    n += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a client task finishes");
    }
    done.load(Ordering::Relaxed)
}

/// One confirmed action: the challenge, the signed retry, the forwarded answer.
async fn confirm(
    sender: &mut SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    key: &DeviceKey,
    cookie: &str,
    n: u64,
) {
    let nonce = challenge(sender, addr, cookie, n).await;
    let htu = format!("http://{addr}/api/users/{n}");
    let proof = key.proof("DELETE", &htu, Some(&nonce), Some(cookie));
    sender.ready().await.expect("the connection stays open");
    let confirmed = sender
        .send_request(delete(addr, cookie, n, Some(proof)))
        .await
        .expect("the confirmed answer arrives");
    assert_eq!(confirmed.status(), 200, "the confirmed action is forwarded");
    let _ = confirmed.into_body().collect().await;
}

fn delete(addr: SocketAddr, cookie: &str, n: u64, proof: Option<String>) -> Request<Empty<Bytes>> {
    let mut b = Request::delete(format!("/api/users/{n}"))
        .header("host", addr.to_string())
        .header("cookie", format!("sid={cookie}"));
    if let Some(p) = proof {
        b = b.header("dpop", p);
    }
    b.body(Empty::new()).expect("a valid request")
}

/// The unsigned first half of an action; returns the nonce of the challenge.
async fn challenge(
    sender: &mut SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    cookie: &str,
    n: u64,
) -> String {
    let challenge = sender
        .send_request(delete(addr, cookie, n, None))
        .await
        .expect("the challenge arrives");
    assert_eq!(challenge.status(), 401, "a fresh action is challenged");
    let nonce = challenge
        .headers()
        .get("dpop-nonce")
        .and_then(|v| v.to_str().ok())
        .expect("the challenge carries a DPoP-Nonce")
        .to_owned();
    let _ = challenge.into_body().collect().await;
    nonce
}

async fn passthrough(sender: &mut SendRequest<Empty<Bytes>>, addr: SocketAddr) {
    let request = Request::get("/status")
        .header("host", addr.to_string())
        .body(Empty::new())
        .expect("a valid request");
    let answer = sender.send_request(request).await.expect("an answer");
    assert_eq!(answer.status(), 200, "a low-risk request is forwarded");
    let _ = answer.into_body().collect().await;
}

/// Seconds per `UnparsedPublicKey::verify` of a proof signed by a fresh key.
fn raw_verify_seconds(alg: ProofAlg, measuring: bool) -> f64 {
    let key = DeviceKey::generate(alg).expect("device key generation works");
    let proof = key.proof(
        "DELETE",
        "http://127.0.0.1/api/users/1",
        Some("n"),
        Some("c"),
    );
    let (input, sig) = proof.rsplit_once('.').expect("a compact JWS");
    let sig = URL_SAFE_NO_PAD.decode(sig).expect("base64url signature");
    let jwk = key.public_jwk();
    let b64 = |name: &str| {
        URL_SAFE_NO_PAD
            .decode(jwk[name].as_str().expect("the JWK has this member"))
            .expect("base64url JWK member")
    };
    let (algorithm, public): (&dyn VerificationAlgorithm, Vec<u8>) = match alg {
        ProofAlg::EdDsa => (&signature::ED25519, b64("x")),
        _ => {
            // SEC1 uncompressed point: 0x04 ‖ x ‖ y.
            let mut point = vec![4];
            point.extend(b64("x"));
            point.extend(b64("y"));
            (&signature::ECDSA_P256_SHA256_FIXED, point)
        }
    };
    let key = UnparsedPublicKey::new(algorithm, public);
    median_seconds(measuring, || {
        key.verify(std::hint::black_box(input.as_bytes()), &sig)
            .expect("the proof verifies");
    })
}

/// Seconds per Ed25519 signature with aws-lc-rs, what the default (ephemeral) provenance key
/// costs per forwarded action (median of 7 batches when measuring).
fn provenance_sign_seconds(measuring: bool) -> f64 {
    let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("an Ed25519 key");
    let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).expect("the generated key loads");
    let claims = [b'x'; 400];
    median_seconds(measuring, || {
        std::hint::black_box(pair.sign(std::hint::black_box(&claims)));
    })
}

/// Seconds per call of `f`: the median of 7 batches of 2000 when measuring, else one of 10.
fn median_seconds(measuring: bool, mut f: impl FnMut()) -> f64 {
    let (batches, per_batch) = if measuring { (7, 2_000) } else { (1, 10) };
    let mut times: Vec<f64> = (0..batches)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            started.elapsed().as_secs_f64() / per_batch as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

async fn memory(s: &Settings) {
    let n = s.memory_entries;
    let ttl = Duration::from_secs(600);
    let device = DeviceKey::generate(ProofAlg::EdDsa)
        .expect("device key generation works")
        .jkt();
    let nonce_key = |i: u64| store::key("nonce", &[&i.to_be_bytes()]);
    let jti_key = |i: u64| store::key("jti", &[&i.to_be_bytes()]);

    // Bytes per entry: RSS growth while one store holds n outstanding nonces, then n jti.
    let memory = MemoryStore::new(2 * n + 1);
    let base = rss_bytes();
    for i in 0..n {
        let record = NonceRecord {
            action: nonce_key(i),
            device: Some(device.clone()),
            chain: None,
        };
        memory
            .put_nonce(&nonce_key(i), record, ttl)
            .await
            .expect("below the bound a nonce is stored");
    }
    let with_nonces = rss_bytes();
    for i in 0..n {
        assert!(memory
            .claim_jti(&jti_key(i), ttl)
            .await
            .expect("jti stored"));
    }
    let with_jti = rss_bytes();
    let outstanding = memory.outstanding_nonces();
    drop(memory);

    // The bound: challenges may fill seven eighths of max_entries (the rest stays free for
    // consuming them); there a new nonce is refused and every stored one is still there.
    let bound = n.min(100_000);
    let room = bound - bound / 8;
    let bounded = MemoryStore::new(bound);
    for i in 0..room {
        let record = NonceRecord {
            action: nonce_key(i),
            device: None,
            chain: None,
        };
        bounded
            .put_nonce(&nonce_key(i), record, ttl)
            .await
            .expect("below the bound a nonce is stored");
    }
    let refused = matches!(
        bounded
            .put_nonce(
                &nonce_key(room),
                NonceRecord {
                    action: [0; 32],
                    device: None,
                    chain: None
                },
                ttl
            )
            .await,
        Err(StoreError::Full)
    );
    let mut kept = 0u64;
    for i in 0..room {
        if let Ok(Take::Consumed(_)) = bounded.take_nonce(&nonce_key(i), &nonce_key(i), "").await {
            kept += 1;
        }
    }

    println!("## Memory store\n");
    println!("| entries | RSS growth | bytes per entry |");
    println!("|---|---|---|");
    let per = |delta: u64| delta as f64 / n as f64;
    let nonces = with_nonces.saturating_sub(base);
    let jtis = with_jti.saturating_sub(with_nonces);
    println!(
        "| {n} outstanding nonces (device bound, {outstanding} counted) | {:.1} MiB | {:.0} |",
        nonces as f64 / 1048576.0,
        per(nonces)
    );
    println!(
        "| {n} jti | {:.1} MiB | {:.0} |",
        jtis as f64 / 1048576.0,
        per(jtis)
    );
    println!();
    println!(
        "At the challenge bound ({room} of {bound} entries): a new nonce refused with \
         `StoreError::Full`: {}; stored nonces still consumable: {kept} of {room}.\n",
        if refused { "yes" } else { "NO" }
    );
    assert!(refused, "a full store must refuse new nonces");
    assert_eq!(kept, room, "a full store must not evict outstanding nonces");
}

/// What a client waits for: a confirmed action in two steps (challenge, signed retry) next to one
/// round trip with the session's next nonce (`cs_ach`), alternating, through a relay that adds
/// `rtt` to every round trip. `countersign request`'s own client, a fresh connection per request.
async fn round_trips(measuring: bool) {
    use countersign::tools::request::{exchange, Credential, Request as Action};

    let dir = tempfile::tempdir().expect("a temporary directory");
    let gateway = Gateway::start(dir.path(), upstream().await, 1, UNBOUNDED).await;
    let samples = if measuring { 25 } else { 2 };
    println!("\n## Client-visible latency of one confirmed action (median of {samples})\n");
    println!("| added RTT | two steps (challenge + signed retry) | one round trip (next nonce) |");
    println!("|---|---|---|");
    for rtt in [Duration::from_millis(1), Duration::from_millis(50)] {
        let relay = delaying_relay(gateway.addr, rtt).await;
        let key = DeviceKey::generate(ProofAlg::Es256).expect("a device key");
        let cookie = format!("rt-{}", rtt.as_millis());
        let action = |n: u64, nonce: Option<String>| Action {
            method: http::Method::DELETE,
            url: format!("http://{relay}/api/users/{n}")
                .parse()
                .expect("a URL"),
            headers: http::HeaderMap::new(),
            body: Bytes::new(),
            credential: Some(Credential::Cookie {
                name: "sid".into(),
                value: cookie.clone(),
            }),
            follow: false,
            nonce,
        };
        let (mut two, mut one) = (Vec::new(), Vec::new());
        for n in 0..samples {
            let started = Instant::now();
            let r = exchange(&key, action(n, None), |_| {})
                .await
                .expect("two steps");
            two.push(started.elapsed());
            assert_eq!(r.status, 200, "two steps confirmed");
            let next = r.headers.get("dpop-nonce").and_then(|v| v.to_str().ok());
            let next = next.expect("the next nonce").to_owned();
            let started = Instant::now();
            let r = exchange(&key, action(n, Some(next)), |_| {})
                .await
                .expect("one round trip");
            one.push(started.elapsed());
            assert_eq!(r.status, 200, "one round trip confirmed");
        }
        let median = |mut v: Vec<Duration>| {
            v.sort();
            v[v.len() / 2].as_secs_f64() * 1e3
        };
        println!(
            "| {} ms | {:.1} ms | {:.1} ms |",
            rtt.as_millis(),
            median(two),
            median(one)
        );
    }
}

/// A loopback TCP relay to `to` that delivers every chunk `rtt / 2` after it arrived, in each
/// direction (latency, not bandwidth).
async fn delaying_relay(to: SocketAddr, rtt: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("the relay binds");
    let addr = listener.local_addr().expect("the relay has an address");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(to).await else {
                continue;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(delayed_copy(client_read, server_write, rtt / 2));
            tokio::spawn(delayed_copy(server_read, client_write, rtt / 2));
        }
    });
    addr
}

async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(256);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            let due = Instant::now() + delay;
            if n == 0 || tx.send((due, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    });
    while let Some((due, bytes)) = rx.recv().await {
        tokio::time::sleep_until(due.into()).await;
        if to.write_all(&bytes).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
