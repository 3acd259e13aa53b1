//! Request heads and client connections are bounded: a deadline and a size limit for every
//! head, caps in total and per client network that shed idle and half-open connections first,
//! and a gateway that keeps answering under `ulimit -n 1024`. The built binary, real sockets, a
//! recording upstream.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_countersign");

/// The built gateway, killed when dropped.
struct Gateway {
    child: Child,
    port: u16,
    metrics: u16,
    audit: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `countersign run` in front of `upstream` with `server` settings, its open-files limit
/// set to `files` when given.
async fn start(upstream: &Upstream, server: &str, files: Option<u32>) -> Gateway {
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, metrics) = (free_port(), free_port());
    let audit = dir.path().join("audit.jsonl");
    let config = dir.path().join("countersign.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:{port}\"\nmetrics: {{ listen: \"127.0.0.1:{metrics}\" }}\nupstreams: {{ a: {{ address: \"{}\" }} }}\nsession: {{ kind: header, header: x-s }}\naudit: {{ path: \"{}\", passthrough: true }}\nserver: {{ threads: 1, grace_period: 1s, shutdown_timeout: 1s, {server} }}\nroutes:\n  - name: all\n    match: {{ path: \"/{{*rest}}\" }}\n    upstream: a\n    risk: low\n",
            upstream.addr,
            audit.display()
        ),
    )
    .expect("write config");
    let child = match files {
        None => Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn(),
        // Soft and hard: the gateway cannot raise it.
        Some(n) => Command::new("bash")
            .arg("-c")
            .arg(format!(
                "ulimit -n {n} && exec {BIN} run --config {}",
                config.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn(),
    }
    .expect("start gateway");
    let gateway = Gateway {
        child,
        port,
        metrics,
        audit,
        _dir: dir,
    };
    wait_listening(port).await;
    wait_listening(metrics).await;
    gateway
}

async fn wait_listening(port: u16) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "not listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connection to the gateway from `source`, a loopback address.
async fn connect_from(source: IpAddr, port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind source");
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("connect")
}

/// Everything the gateway sends until it closes the connection (at most `limit`).
async fn read_to_close(c: &mut TcpStream, limit: Duration) -> String {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    let read = tokio::time::timeout(limit, async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection stayed open for {limit:?}");
    String::from_utf8_lossy(&all).into_owned()
}

/// One request on a fresh connection from `source`; its status line.
async fn get_from(source: IpAddr, port: u16, path: &str) -> String {
    let mut c = connect_from(source, port).await;
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let response = read_to_close(&mut c, Duration::from_secs(10)).await;
    response.lines().next().unwrap_or_default().to_string()
}

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A loopback address of its own for client `i` (127.0.x.y, never 127.0.0.1).
fn client(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        1 + (i / 250) as u8,
        1 + (i % 250) as u8,
    ))
}

async fn metric(gateway: &Gateway, line: &str) -> bool {
    let reply = support::send(
        &format!("http://127.0.0.1:{}/metrics", gateway.metrics),
        "GET",
        &[],
        bytes::Bytes::new(),
    )
    .await;
    String::from_utf8_lossy(&reply.body)
        .lines()
        .any(|l| l == line)
}

fn audited(audit: &Path, target: &str) -> bool {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .contains(&format!("\"target\":\"{target}\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_max_header_bytes_is_431_and_reaches_no_upstream() {
    let upstream = Upstream::start().await;
    let gateway = start(&upstream, "max_header_bytes: 8KiB", None).await;

    // Just under the limit: served.
    let mut c = connect_from(LOCAL, gateway.port).await;
    let pad = "a".repeat(7 << 10);
    c.write_all(
        format!("GET /fits HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    let response = read_to_close(&mut c, Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(upstream.count(), 1);

    // Over it, complete: 431 and closed.
    let mut c = connect_from(LOCAL, gateway.port).await;
    let pad = "a".repeat(9 << 10);
    c.write_all(format!("GET /big HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let response = read_to_close(&mut c, Duration::from_secs(5)).await;
    assert!(
        response.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{response}"
    );
    assert!(response.contains("Connection: close"), "{response}");
    assert!(
        response.contains(r#""error":"request_header_too_large""#),
        "{response}"
    );

    // Over it and never finished: refused as soon as the limit is passed, not at a timeout.
    let started = Instant::now();
    let mut c = connect_from(LOCAL, gateway.port).await;
    c.write_all(
        format!(
            "GET /huge HTTP/1.1\r\nHost: x\r\nX-Pad: {}",
            "a".repeat(40 << 10)
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let response = read_to_close(&mut c, Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    assert_eq!(
        upstream.count(),
        1,
        "the refused heads reached the upstream"
    );
    assert!(audited(&gateway.audit, "/fits"));
    assert!(!audited(&gateway.audit, "/big") && !audited(&gateway.audit, "/huge"));
    assert!(
        metric(
            &gateway,
            r#"countersign_connections_dropped_total{reason="header_too_large"} 2"#
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_past_header_timeout_is_408_and_a_silent_connection_is_closed() {
    let upstream = Upstream::start().await;
    let gateway = start(&upstream, "header_timeout: 1s", None).await;

    // One header line every 200 ms: each read is quick, the whole head is not.
    let started = Instant::now();
    let c = connect_from(LOCAL, gateway.port).await;
    let (mut rx, mut tx) = c.into_split();
    tx.write_all(b"GET /trickle HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let trickle = tokio::spawn(async move {
        for i in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if tx
                .write_all(format!("X-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut all = Vec::new();
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the trickling connection stayed open");
    let took = started.elapsed();
    trickle.abort();
    let response = String::from_utf8_lossy(&all);
    assert!(
        response.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{response}"
    );
    assert!(
        response.contains(r#""error":"request_timeout""#),
        "{response}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );

    // A connection that sends nothing is closed at the deadline without an answer.
    let started = Instant::now();
    let mut c = connect_from(LOCAL, gateway.port).await;
    let response = read_to_close(&mut c, Duration::from_secs(5)).await;
    assert_eq!(response, "");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );

    assert_eq!(upstream.count(), 0);
    assert!(!audited(&gateway.audit, "/trickle"));
    assert!(
        metric(
            &gateway,
            r#"countersign_connections_dropped_total{reason="header_timeout"} 2"#
        )
        .await
    );
}

/// Opens `n` connections, connection `i` from `from(i)`, each sending the start of a head.
async fn half_open(port: u16, n: usize, from: impl Fn(usize) -> IpAddr) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = connect_from(from(i), port).await;
        c.write_all(b"GET /never HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        held.push(c);
    }
    held
}

/// How many of `held` the gateway has closed.
async fn closed(held: &mut [TcpStream]) -> usize {
    let mut n = 0;
    let mut buf = [0u8; 64];
    for c in held.iter_mut() {
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), c.read(&mut buf)).await
        {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_at_a_cap_are_shed_for_a_new_client() {
    let upstream = Upstream::start().await;
    let gateway = start(
        &upstream,
        "max_connections: 64, max_connections_per_ip: 16",
        None,
    )
    .await;

    // One client network: it keeps at most 16; a new request of its own still gets through.
    let mut same = half_open(gateway.port, 40, |_| LOCAL).await;
    assert_eq!(
        get_from(LOCAL, gateway.port, "/mine").await,
        "HTTP/1.1 200 OK"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shed = closed(&mut same).await;
    assert!(shed >= 40 - 16, "only {shed} of 40 closed");
    drop(same);

    // Many networks: the total holds 64, and a newcomer is served.
    let mut many = half_open(gateway.port, 150, client).await;
    assert_eq!(
        get_from(client(1000), gateway.port, "/newcomer").await,
        "HTTP/1.1 200 OK"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shed = closed(&mut many).await;
    assert!(shed >= 150 - 64, "only {shed} of 150 closed");
    // The oldest went first.
    assert!(closed(&mut many[..50]).await == 50);
    assert_eq!(upstream.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_serving_requests_are_never_shed_and_a_newcomer_is_refused() {
    let upstream = Upstream::start().await;
    let gateway = start(&upstream, "max_connections: 3", None).await;
    let port = gateway.port;
    let slow: Vec<_> = (0..3)
        .map(|i| tokio::spawn(async move { get_from(client(i), port, "/slow/1000").await }))
        .collect();
    let started = Instant::now();
    while upstream.count() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the slow requests did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // All three are busy: the fourth connection is closed without a word.
    let mut c = connect_from(client(3), port).await;
    let _ = c
        .write_all(b"GET /fourth HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert_eq!(read_to_close(&mut c, Duration::from_secs(5)).await, "");
    for s in slow {
        assert_eq!(s.await.expect("client"), "HTTP/1.1 200 OK");
    }
    assert_eq!(
        upstream.count(),
        3,
        "the refused request reached the upstream"
    );
    assert!(
        metric(
            &gateway,
            r#"countersign_connections_dropped_total{reason="refused"} 1"#
        )
        .await
    );
    // Room again.
    assert_eq!(get_from(client(4), port, "/after").await, "HTTP/1.1 200 OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_ulimit_1024_a_client_is_answered_through_1100_half_open_connections() {
    // This process needs more than 1,100 descriptors itself.
    raise_own_open_files(4096);
    let upstream = Upstream::start().await;
    let gateway = start(&upstream, "header_timeout: 30s", Some(1024)).await;
    let mut flood = half_open(gateway.port, 1100, client).await;
    let started = Instant::now();
    assert_eq!(
        get_from(client(2000), gateway.port, "/legit").await,
        "HTTP/1.1 200 OK"
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    // The gateway holds what fits its descriptors and no more.
    let shed = closed(&mut flood).await;
    assert!(shed >= 1100 - 480, "only {shed} of 1100 closed");
    assert_eq!(upstream.count(), 1);
    assert!(audited(&gateway.audit, "/legit"));
    assert!(gateway_alive(&gateway));
}

fn gateway_alive(gateway: &Gateway) -> bool {
    Path::new(&format!("/proc/{}", gateway.child.id())).exists()
}

fn raise_own_open_files(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct passed by reference.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(
        limit.rlim_cur >= 1200,
        "this test needs 1200 open files, the hard limit is {}",
        limit.rlim_max
    );
}
