//! Connection floods against the gateway binary on loopback: a normal client's latency with
//! and without 2,000 stalled request heads, the gateway's memory before, during and after 400
//! connections sending huge unfinished heads, and a request answered by a gateway limited to
//! 1,024 open files while 1,100 half-open connections press on it.
//!
//! `cargo bench --bench flood` measures (about half a minute, release binary) and prints
//! Markdown tables. Without `--bench` (as `cargo test --all-targets` runs it) it does a smaller,
//! quicker run of the same steps. `COUNTERSIGN_BIN` runs another gateway binary.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

struct Settings {
    /// Stalled heads held open while a normal client measures its latency.
    stalled: usize,
    /// Requests per latency sample.
    samples: usize,
    /// Whether to wait out `server.header_timeout` and count the stalled heads closed.
    wait_deadline: bool,
    /// Connections of the header flood, and the unfinished head each one sends.
    header_flood: usize,
    head_bytes: usize,
    /// Half-open connections against the gateway with 1,024 open files.
    half_open: usize,
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let settings = if measuring {
        Settings {
            stalled: 2_000,
            samples: 500,
            wait_deadline: true,
            header_flood: 400,
            head_bytes: 960_000,
            half_open: 1_100,
        }
    } else {
        Settings {
            stalled: 200,
            samples: 20,
            wait_deadline: false,
            header_flood: 20,
            head_bytes: 100_000,
            half_open: 600,
        }
    };
    raise_own_open_files(8_192);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    runtime.block_on(async {
        let upstream = upstream().await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        stalled_heads(&settings, dir.path(), upstream).await;
        header_flood(&settings, dir.path(), upstream).await;
        few_files(&settings, dir.path(), upstream).await;
    });
}

/// A normal client's latency (fresh connection, one GET) with and without stalled heads.
async fn stalled_heads(s: &Settings, dir: &Path, upstream: SocketAddr) {
    let gateway = Gateway::start(dir, upstream, None).await;
    let normal = client(60_000);
    let (base_p50, base_p99) = latency(gateway.addr, normal, s.samples).await;
    let before = gateway.rss_mib();
    let mut stalled = half_open(gateway.addr, s.stalled).await;
    let during = gateway.rss_mib();
    let (flood_p50, flood_p99) = latency(gateway.addr, normal, s.samples).await;
    let open = s.stalled - closed(&mut stalled).await;
    let deadline = if s.wait_deadline {
        tokio::time::sleep(Duration::from_secs(11)).await;
        format!("{} of {}", closed(&mut stalled).await, s.stalled)
    } else {
        "not waited for".to_string()
    };
    drop(stalled);
    println!("## Stalled request heads\n");
    println!(
        "{} connections from {} loopback addresses, each sending a request line and one header \
         and then nothing; a normal client (another address) sends {} GETs, each on a fresh \
         connection, before and while they are held. Default `server` settings, one thread.\n",
        s.stalled, s.stalled, s.samples
    );
    println!("| | p50 | p99 | gateway RSS |");
    println!("|---|---|---|---|");
    println!("| no flood | {base_p50:.2} ms | {base_p99:.2} ms | {before:.1} MiB |");
    println!(
        "| {} stalled heads ({open} still open) | {flood_p50:.2} ms | {flood_p99:.2} ms | {during:.1} MiB |\n",
        s.stalled
    );
    println!("Stalled heads closed by `server.header_timeout` (10 s) after 11 s: {deadline}.\n");
}

/// Gateway memory before, during and after connections that send huge unfinished heads.
async fn header_flood(s: &Settings, dir: &Path, upstream: SocketAddr) {
    let gateway = Gateway::start(dir, upstream, None).await;
    // Warm up the allocator and the pools with ordinary traffic first.
    latency(gateway.addr, client(60_000), 50).await;
    let before = gateway.rss_mib();
    let addr = gateway.addr;
    let pad = Bytes::from(vec![b'a'; s.head_bytes]);
    let started = Instant::now();
    let tasks: Vec<_> = (0..s.header_flood)
        .map(|i| {
            let pad = pad.clone();
            tokio::spawn(async move {
                let mut c = connect_from(client(i), addr).await;
                let _ = c
                    .write_all(b"GET /flood HTTP/1.1\r\nHost: x\r\nX-Pad: ")
                    .await;
                let _ = c.write_all(&pad).await;
                let mut answer = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer)).await;
                answer.starts_with(b"HTTP/1.1 431")
            })
        })
        .collect();
    let mut peak = before;
    while !tasks.iter().all(|t| t.is_finished()) {
        peak = peak.max(gateway.rss_mib());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let mut refused = 0;
    for t in tasks {
        refused += usize::from(t.await.expect("a flood task finishes"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = gateway.rss_mib();
    println!("## A header flood\n");
    println!(
        "{} connections, each sending a request line and a {} KB header that never ends (the \
         default `server.max_header_bytes` is 32 KiB).\n",
        s.header_flood,
        s.head_bytes / 1000
    );
    println!("| answered 431 | flood took | RSS before | RSS peak | RSS 2 s after |");
    println!("|---|---|---|---|---|");
    println!(
        "| {refused} of {} | {:.2} s | {before:.1} MiB | {peak:.1} MiB | {after:.1} MiB |\n",
        s.header_flood,
        took.as_secs_f64()
    );
}

/// A gateway whose open-files limit is 1,024 (soft and hard), pressed by half-open
/// connections from many addresses, answers a request.
async fn few_files(s: &Settings, dir: &Path, upstream: SocketAddr) {
    let gateway = Gateway::start(dir, upstream, Some(1024)).await;
    let mut held = half_open(gateway.addr, s.half_open).await;
    let started = Instant::now();
    let status = get(gateway.addr, client(60_000)).await;
    let took = started.elapsed();
    let shed = closed(&mut held).await;
    drop(held);
    println!("## Under `ulimit -n 1024`\n");
    println!(
        "The gateway started with `ulimit -n 1024` (it cannot raise the limit, so it caps \
         itself at 480 client connections); {} half-open connections from as many addresses, \
         then one GET from another address.\n",
        s.half_open
    );
    println!("| half-open | shed by the gateway | the GET | answered in |");
    println!("|---|---|---|---|");
    println!(
        "| {} | {shed} | {status} | {:.1} ms |\n",
        s.half_open,
        took.as_secs_f64() * 1e3
    );
    assert_eq!(
        status, "200",
        "the gateway under ulimit -n 1024 answered {status}"
    );
}

/// Client `i`'s own loopback address (127.0.x.y, never 127.0.0.1).
fn client(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (i / 250 / 250) as u8,
        (i / 250 % 250) as u8,
        1 + (i % 250) as u8,
    ))
}

async fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind the source address");
    socket.connect(addr).await.expect("connect to the gateway")
}

/// `n` connections from `n` addresses, each holding the start of a request head.
async fn half_open(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = connect_from(client(i), addr).await;
        c.write_all(b"GET /stalled HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("the start of a head is sent");
        held.push(c);
    }
    held
}

/// How many of `held` the gateway has answered (408) or closed: it sends nothing else on them.
async fn closed(held: &mut [TcpStream]) -> usize {
    let mut n = 0;
    let mut buf = [0u8; 256];
    for c in held.iter_mut() {
        if tokio::time::timeout(Duration::from_millis(1), c.read(&mut buf))
            .await
            .is_ok()
        {
            n += 1;
        }
    }
    n
}

/// One GET on a fresh connection from `source`: the status code.
async fn get(addr: SocketAddr, source: IpAddr) -> String {
    let mut c = connect_from(source, addr).await;
    c.write_all(b"GET /normal HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("the request is sent");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(answer.get(9..12).unwrap_or_default()).into_owned()
}

/// p50 and p99 in ms of `n` GETs from `source`, each on a fresh connection.
async fn latency(addr: SocketAddr, source: IpAddr, n: usize) -> (f64, f64) {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        assert_eq!(get(addr, source).await, "200");
        took.push(started.elapsed().as_secs_f64() * 1e3);
    }
    took.sort_by(f64::total_cmp);
    (took[n / 2], took[(n * 99 / 100).min(n - 1)])
}

/// The gateway binary with default `server` settings and one thread.
struct Gateway {
    child: Child,
    addr: SocketAddr,
}

impl Gateway {
    /// Started with its open-files limit set to `files` (soft and hard) when given.
    async fn start(dir: &Path, upstream: SocketAddr, files: Option<u32>) -> Gateway {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = dir.join(format!("gateway-{port}.yaml"));
        std::fs::write(
            &config,
            format!(
                r#"listen: "{addr}"
server: {{ threads: 1 }}
upstreams:
  app: {{ address: "{upstream}" }}
session: {{ kind: cookie, cookie: sid }}
routes:
  - {{ name: default, match: {{ path: "/{{*rest}}" }}, upstream: app, risk: low }}
"#
            ),
        )
        .expect("the config is written");
        let binary = std::env::var("COUNTERSIGN_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_countersign").to_string());
        let limit = files.map_or(String::new(), |n| format!("ulimit -n {n} && "));
        let child = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "{limit}exec {binary} run --config {}",
                config.display()
            ))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the gateway binary starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "the gateway did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Gateway { child, addr }
    }

    /// Resident memory in MiB.
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A keep-alive upstream answering `200 ok` to everything.
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

/// This process holds thousands of connections itself.
fn raise_own_open_files(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct passed by reference.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
