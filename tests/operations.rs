//! Operating the built binary: start-up failures, health, signals, reload and upgrade, with real
//! processes, real sockets and a recording upstream.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::{free_port, send, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_countersign");

/// Writes a config with a high-impact route and a low-risk catch-all in front of `upstream`.
fn config_with_high(dir: &Path, listen: u16, metrics: u16, upstream: &str, extra: &str) -> PathBuf {
    let path = dir.join("countersign.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: \"127.0.0.1:{listen}\"\nmetrics: {{ listen: \"127.0.0.1:{metrics}\" }}\nupstreams: {{ a: {{ address: \"{upstream}\" }} }}\nsession: {{ kind: header, header: x-s }}\n{extra}\nroutes:\n  - name: delete-user\n    match: {{ methods: [DELETE], path: \"/api/users/{{id}}\" }}\n    upstream: a\n    risk: high\n  - name: all\n    match: {{ path: \"/{{*rest}}\" }}\n    upstream: a\n    risk: low\n"
        ),
    )
    .expect("write config");
    path
}

/// Writes a config with one low-risk catch-all route in front of `upstream`, plus `extra` lines.
fn config(dir: &Path, listen: u16, metrics: u16, upstream: &str, extra: &str) -> PathBuf {
    let path = dir.join("countersign.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: \"127.0.0.1:{listen}\"\nmetrics: {{ listen: \"127.0.0.1:{metrics}\" }}\nupstreams: {{ a: {{ address: \"{upstream}\" }} }}\nsession: {{ kind: header, header: x-s }}\n{extra}\nroutes:\n  - name: all\n    match: {{ path: \"/{{*rest}}\" }}\n    upstream: a\n    risk: low\n"
        ),
    )
    .expect("write config");
    path
}

/// Runs `countersign run` and waits for it to exit, at most `limit`.
fn run_to_exit(config: &Path, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gateway");
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "still running after {limit:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    (child.wait_with_output().expect("output"), elapsed)
}

/// A start that must fail: non-zero, within 5 s, one line on stderr containing `cause`.
fn assert_start_fails(config: &Path, cause: &str) {
    let (out, elapsed) = run_to_exit(config, Duration::from_secs(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exited zero:\n{err}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line, not:\n{err}");
    assert!(lines[0].contains(cause), "{cause:?} not in {err}");
    assert!(lines[0].starts_with("countersign: "), "{err}");
}

#[test]
fn a_held_gateway_port_stops_the_start_at_once_naming_the_port() {
    let dir = tempfile::tempdir().expect("temp dir");
    let held = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let port = held.local_addr().expect("addr").port();
    let path = config(dir.path(), port, free_port(), "127.0.0.1:9", "");
    assert_start_fails(
        &path,
        &format!("listen: cannot listen on 127.0.0.1:{port}: Address already in use"),
    );
}

#[test]
fn a_held_metrics_port_stops_the_start_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let held = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let port = held.local_addr().expect("addr").port();
    let path = config(dir.path(), free_port(), port, "127.0.0.1:9", "");
    assert_start_fails(
        &path,
        &format!("metrics.listen: cannot listen on 127.0.0.1:{port}"),
    );
}

#[test]
fn an_unreadable_signing_key_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("missing.pem");
    let path = config(
        dir.path(),
        free_port(),
        free_port(),
        "127.0.0.1:9",
        &format!("provenance: {{ signing_key: \"{}\" }}", key.display()),
    );
    assert_start_fails(
        &path,
        &format!("provenance.signing_key: cannot read {}", key.display()),
    );
}

#[test]
fn an_audit_path_under_a_regular_file_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("plain");
    std::fs::write(&file, "not a directory").expect("write file");
    let path = config(
        dir.path(),
        free_port(),
        free_port(),
        "127.0.0.1:9",
        &format!("audit: {{ path: \"{}/audit.jsonl\" }}", file.display()),
    );
    assert_start_fails(
        &path,
        &format!("audit.path: {} is a file, not a directory", file.display()),
    );
}

#[test]
fn an_unusable_store_url_stops_the_start_naming_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = config(
        dir.path(),
        free_port(),
        free_port(),
        "127.0.0.1:9",
        "store: { kind: redis, url: \"redis://[::1\" }",
    );
    assert_start_fails(&path, "store.url");
}

/// A gateway process started from `config`, killed when dropped.
struct Gateway {
    child: Child,
}

impl Gateway {
    async fn start(config: &Path, port: u16) -> Gateway {
        Self::start_with(config, port, &[]).await
    }

    async fn start_with(config: &Path, port: u16, args: &[&str]) -> Gateway {
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gateway");
        let gateway = Gateway { child };
        wait_listening(port).await;
        gateway
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
    }

    /// Waits for the process to exit, at most `limit`; returns its status and stderr.
    async fn exit_within(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return (status, err);
            }
            assert!(
                started.elapsed() < limit,
                "the gateway did not exit within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_listening(port: u16) {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "gateway did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_only_while_the_gateway_port_accepts() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, metrics) = (free_port(), free_port());
    let path = config(
        dir.path(),
        port,
        metrics,
        &upstream.addr.to_string(),
        "server: { threads: 1, grace_period: 1s, shutdown_timeout: 1s }",
    );
    let gateway = Gateway::start(&path, port).await;
    // The operations listener opens once the gateway port is bound.
    wait_listening(metrics).await;
    let health = format!("http://127.0.0.1:{metrics}/healthz");
    let reply = send(&health, "GET", &[], Bytes::new()).await;
    assert_eq!(reply.status, 200);
    let reply = send(
        &format!("http://127.0.0.1:{port}/x"),
        "GET",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, 200, "the gateway port serves");
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_at_once_even_with_a_request_in_flight() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let path = config(
        dir.path(),
        port,
        free_port(),
        &upstream.addr.to_string(),
        "server: { threads: 1, grace_period: 10s, shutdown_timeout: 10s }",
    );
    let gateway = Gateway::start(&path, port).await;
    let in_flight = tokio::spawn(async move {
        send(
            &format!("http://127.0.0.1:{port}/slow/5000"),
            "GET",
            &[],
            Bytes::new(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway.signal("INT");
    let (status, err) = gateway.exit_within(Duration::from_secs(2)).await;
    assert!(status.success(), "{status}: {err}");
    in_flight.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_audit_log_cannot_be_written() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    // A full disk: every write to /dev/full fails with ENOSPC.
    let audit = dir.path().join("audit.jsonl");
    std::os::unix::fs::symlink("/dev/full", &audit).expect("symlink");
    let (port, metrics) = (free_port(), free_port());
    let path = config(
        dir.path(),
        port,
        metrics,
        &upstream.addr.to_string(),
        &format!(
            "audit: {{ path: \"{}\", passthrough: true }}\nserver: {{ threads: 1, grace_period: 1s, shutdown_timeout: 1s }}",
            audit.display()
        ),
    );
    let _gateway = Gateway::start(&path, port).await;
    // The operations listener opens once the gateway port is bound.
    wait_listening(metrics).await;
    let ready = format!("http://127.0.0.1:{metrics}/readyz");
    assert_eq!(send(&ready, "GET", &[], Bytes::new()).await.status, 200);
    let reply = send(
        &format!("http://127.0.0.1:{port}/x"),
        "GET",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, 200);
    // The passthrough record is written once the response is sent: wait for the failure.
    let mut reply = send(&ready, "GET", &[], Bytes::new()).await;
    for _ in 0..100 {
        if reply.status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        reply = send(&ready, "GET", &[], Bytes::new()).await;
    }
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"], "audit log not writable");
}

/// One confirmed DELETE: challenge, sign, send. Returns the final status.
async fn confirmed_delete(
    base: &str,
    sid: &str,
    key: &countersign::tools::device_key::DeviceKey,
) -> u16 {
    let url = format!("{base}/api/users/7");
    let challenge = send(&url, "DELETE", &[("x-s", sid)], Bytes::new()).await;
    assert_eq!(challenge.status, 401);
    let nonce = challenge.header("dpop-nonce").expect("nonce").to_string();
    let proof = key.proof("DELETE", &url, Some(&nonce), Some(sid));
    send(
        &url,
        "DELETE",
        &[("x-s", sid), ("dpop", &proof)],
        Bytes::new(),
    )
    .await
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_run_of_mixed_traffic_logs_no_error_and_no_debug_formatting() {
    use tokio::io::AsyncWriteExt;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, metrics) = (free_port(), free_port());
    let path = config_with_high(
        dir.path(),
        port,
        metrics,
        &upstream.addr.to_string(),
        &format!(
            "audit: {{ path: \"{}\" }}\nserver: {{ threads: 2, grace_period: 1s, shutdown_timeout: 1s }}",
            dir.path().join("audit.jsonl").display()
        ),
    );
    let gateway = Gateway::start(&path, port).await;
    let base = format!("http://127.0.0.1:{port}");
    let key =
        countersign::tools::device_key::DeviceKey::generate(countersign::alg::ProofAlg::Es256)
            .expect("key");
    // Concurrent passthrough on pooled upstream connections.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..40 {
                let r = send(&format!("{base}/page/{i}/{j}"), "GET", &[], Bytes::new()).await;
                assert_eq!(r.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("passthrough task");
    }
    // Confirmations, a replay, a refusal, an unknown path on the operations listener.
    for i in 0..5 {
        assert_eq!(
            confirmed_delete(&base, &format!("sid-{i}"), &key).await,
            200
        );
    }
    let url = format!("{base}/api/users/7");
    assert_eq!(send(&url, "DELETE", &[], Bytes::new()).await.status, 401);
    let ops = format!("http://127.0.0.1:{metrics}");
    assert_eq!(
        send(&format!("{ops}/metrics"), "GET", &[], Bytes::new())
            .await
            .status,
        200
    );
    assert_eq!(
        send(&format!("{ops}/nope"), "GET", &[], Bytes::new())
            .await
            .status,
        404
    );
    // Clients that go away: before a request, mid-head, and while the upstream is answering.
    for partial in [&b""[..], b"GET /x HTTP/1.1\r\nHo"] {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        c.write_all(partial).await.expect("write");
        drop(c);
    }
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    c.write_all(b"GET /slow/300 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(c);
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", metrics))
        .await
        .expect("connect");
    c.write_all(b"GET /met").await.expect("write");
    drop(c);
    tokio::time::sleep(Duration::from_millis(500)).await;

    gateway.signal("TERM");
    let (status, log) = gateway.exit_within(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("countersign starting"), "{log}");
    for line in log.lines() {
        assert!(
            !line.contains("ERROR"),
            "an ERROR line in a normal run: {line}"
        );
        assert!(
            !line.contains("Some("),
            "Debug formatting in the log: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight_then_exits_without_waiting_out_the_grace_period() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let path = config(
        dir.path(),
        port,
        free_port(),
        &upstream.addr.to_string(),
        "server: { threads: 1, grace_period: 20s, shutdown_timeout: 5s }",
    );
    let gateway = Gateway::start(&path, port).await;
    let in_flight = tokio::spawn(async move {
        send(
            &format!("http://127.0.0.1:{port}/slow/800"),
            "GET",
            &[],
            Bytes::new(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = Instant::now();
    gateway.signal("TERM");
    let (status, err) = gateway.exit_within(Duration::from_secs(5)).await;
    let took = signalled.elapsed();
    assert!(status.success(), "{status}: {err}");
    assert_eq!(in_flight.await.expect("request").status, 200);
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "exited {took:?} after SIGTERM"
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "nothing listens after the exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_an_idle_gateway_exits_at_once() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let path = config(
        dir.path(),
        port,
        free_port(),
        &upstream.addr.to_string(),
        "server: { threads: 1, grace_period: 20s, shutdown_timeout: 5s }",
    );
    let gateway = Gateway::start(&path, port).await;
    gateway.signal("TERM");
    let (status, err) = gateway.exit_within(Duration::from_secs(2)).await;
    assert!(status.success(), "{status}: {err}");
}

async fn metric_line(metrics: u16, line: &str) -> bool {
    let text = send(
        &format!("http://127.0.0.1:{metrics}/metrics"),
        "GET",
        &[],
        Bytes::new(),
    )
    .await;
    String::from_utf8_lossy(&text.body)
        .lines()
        .any(|l| l == line)
}

async fn eventually(metrics: u16, line: &str) {
    for _ in 0..100 {
        if metric_line(metrics, line).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never saw {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_audit_file_and_a_bad_config_keeps_the_old_one_serving() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, metrics) = (free_port(), free_port());
    let audit = dir.path().join("audit.jsonl");
    let extra = format!(
        "audit: {{ path: \"{}\", passthrough: true }}\nserver: {{ threads: 1, grace_period: 1s, shutdown_timeout: 1s }}",
        audit.display()
    );
    let path = config(
        dir.path(),
        port,
        metrics,
        &upstream.addr.to_string(),
        &extra,
    );
    let gateway = Gateway::start(&path, port).await;
    let get = |p: &'static str| async move {
        send(
            &format!("http://127.0.0.1:{port}{p}"),
            "GET",
            &[],
            Bytes::new(),
        )
        .await
        .status
    };
    assert_eq!(get("/before").await, 200);
    eventually(
        metrics,
        r#"countersign_upstream_responses_total{class="2xx",route="all"} 1"#,
    )
    .await;

    // logrotate: move the file away, then SIGHUP.
    let rotated = dir.path().join("audit.jsonl.1");
    std::fs::rename(&audit, &rotated).expect("rotate");
    gateway.signal("HUP");
    eventually(
        metrics,
        r#"countersign_config_reloads_total{result="ok"} 1"#,
    )
    .await;
    assert_eq!(get("/after").await, 200);
    let mut fresh = String::new();
    for _ in 0..100 {
        fresh = std::fs::read_to_string(&audit).unwrap_or_default();
        if fresh.contains("/after") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(fresh.contains("\"target\":\"/after\""), "{fresh}");
    let old = std::fs::read_to_string(&rotated).expect("rotated file");
    assert!(old.contains("/before") && !old.contains("/after"), "{old}");

    // A route made high-impact takes effect for new requests.
    let delete = || async move {
        send(
            &format!("http://127.0.0.1:{port}/api/users/1"),
            "DELETE",
            &[("x-s", "s1")],
            Bytes::new(),
        )
        .await
        .status
    };
    assert_eq!(delete().await, 200, "passthrough before the reload");
    config_with_high(
        dir.path(),
        port,
        metrics,
        &upstream.addr.to_string(),
        &extra,
    );
    gateway.signal("HUP");
    eventually(
        metrics,
        r#"countersign_config_reloads_total{result="ok"} 2"#,
    )
    .await;
    assert_eq!(delete().await, 401, "challenged after the reload");

    // A config that does not validate: counted, logged, and the old one keeps serving.
    std::fs::write(&path, "listen: [not, an, address]\n").expect("break config");
    gateway.signal("HUP");
    eventually(
        metrics,
        r#"countersign_config_reloads_total{result="error"} 1"#,
    )
    .await;
    assert_eq!(get("/still").await, 200);
    assert_eq!(delete().await, 401, "the last good config still serves");
    gateway.signal("TERM");
    let (status, log) = gateway.exit_within(Duration::from_secs(5)).await;
    assert!(status.success(), "{status}: {log}");
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("config reload refused")
            && l.contains("listen")),
        "{log}"
    );
}

#[test]
fn an_upgrade_socket_directory_others_can_enter_stops_the_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = config(
        dir.path(),
        free_port(),
        free_port(),
        "127.0.0.1:9",
        &format!(
            "server: {{ upgrade_sock: \"{}/upgrade.sock\" }}",
            shared.display()
        ),
    );
    assert_start_fails(&path, "server.upgrade_sock: ");
    assert_start_fails(&path, "mode 0700");
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>;

async fn connect(port: u16) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One GET on `sender`; any failure (reset, no answer, non-200) is an `Err`. `Ok(true)` when
/// the gateway closes the connection after it (`Connection: close`).
async fn get_on(sender: &mut Sender, port: u16, path: &str) -> Result<bool, String> {
    use http_body_util::{BodyExt, Empty};
    let req = hyper::Request::get(path)
        .header("host", format!("127.0.0.1:{port}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let close = resp
        .headers()
        .get("connection")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    if status == 200 {
        Ok(close)
    } else {
        Err(format!("status {status}"))
    }
}

/// One GET on a fresh connection; any failure (connect, reset, non-200) is an `Err`.
async fn try_get(port: u16, path: &str) -> Result<(), String> {
    get_on(&mut connect(port).await?, port, path)
        .await
        .map(drop)
}

/// How a load client uses connections.
#[derive(Clone, Copy)]
enum Client {
    /// A fresh connection per request.
    Fresh,
    /// A fresh connection per request, the request sent 20 ms after the connection is made.
    Slow,
    /// One connection for as long as the gateway keeps it (a new one after `Connection:
    /// close`), as browsers and pooled HTTP clients do.
    KeepAlive,
}

/// Loopback load from `clients` tasks until `stop`; returns (requests, failures).
fn load(
    port: u16,
    clients: &[Client],
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(usize, Vec<String>)>> {
    use std::sync::atomic::Ordering;
    clients
        .iter()
        .copied()
        .enumerate()
        .map(|(c, kind)| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut done, mut failed) = (0, Vec::new());
                let mut kept: Option<Sender> = None;
                while !stop.load(Ordering::Relaxed) {
                    let path = format!("/load/{c}/{done}");
                    let result = match kind {
                        Client::Fresh => try_get(port, &path).await,
                        Client::Slow => match connect(port).await {
                            Ok(mut sender) => {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                get_on(&mut sender, port, &path).await.map(drop)
                            }
                            Err(e) => Err(e),
                        },
                        Client::KeepAlive => {
                            let sender = match kept.take() {
                                Some(s) => Ok(s),
                                None => connect(port).await,
                            };
                            match sender {
                                Ok(mut sender) => {
                                    let r = get_on(&mut sender, port, &path).await;
                                    if r == Ok(false) {
                                        kept = Some(sender);
                                    }
                                    r.map(drop)
                                }
                                Err(e) => Err(e),
                            }
                        }
                    };
                    if let Err(e) = result {
                        failed.push(format!("{path}: {e}"));
                    }
                    done += 1;
                }
                (done, failed)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_and_an_upgrade_under_load_fail_no_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, metrics) = (free_port(), free_port());
    let sock = dir.path().join("private/upgrade.sock");
    let extra = format!(
        "server: {{ threads: 1, grace_period: 5s, shutdown_timeout: 1s, upgrade_sock: \"{}\" }}",
        sock.display()
    );
    let path = config(
        dir.path(),
        port,
        metrics,
        &upstream.addr.to_string(),
        &extra,
    );
    let old = Gateway::start(&path, port).await;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let clients = load(
        port,
        &[
            Client::Fresh,
            Client::Fresh,
            Client::Slow,
            Client::Slow,
            Client::KeepAlive,
            Client::KeepAlive,
        ],
        stop.clone(),
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    old.signal("HUP");
    eventually(
        metrics,
        r#"countersign_config_reloads_total{result="ok"} 1"#,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The new process waits on the upgrade socket; the old one hands over on SIGQUIT.
    let new = Gateway::start_with(&path, port, &["--upgrade"]).await;
    let started = Instant::now();
    while !sock.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no upgrade socket"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let private = std::fs::metadata(sock.parent().expect("dir")).expect("dir");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(private.permissions().mode() & 0o777, 0o700);
    old.signal("QUIT");
    let (status, err) = old.exit_within(Duration::from_secs(15)).await;
    assert!(status.success(), "{status}: {err}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Relaxed);
    let (mut total, mut failures) = (0, Vec::new());
    for c in clients {
        let (done, failed) = c.await.expect("client");
        total += done;
        failures.extend(failed);
    }
    assert!(total > 100, "only {total} requests were sent");
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {failures:?}",
        failures.len()
    );
    // The new process serves alone now.
    assert!(try_get(port, "/after").await.is_ok());
    new.signal("TERM");
    let (status, err) = new.exit_within(Duration::from_secs(5)).await;
    assert!(status.success(), "{status}: {err}");
}

/// An upstream like Python's http.server: keep-alive, the head and the body in two small
/// writes, Nagle left on. Counts the connections it accepted.
async fn split_write_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            stream.set_nodelay(false).expect("nagle on");
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
                    let close = String::from_utf8_lossy(&buf[..end])
                        .to_ascii_lowercase()
                        .contains("connection: close");
                    buf.drain(..end);
                    let body = b"{\"ok\":true}\n";
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if stream.write_all(head.as_bytes()).await.is_err()
                        || stream.write_all(body).await.is_err()
                    {
                        return;
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

async fn median_latency(base: &str, n: usize) -> Duration {
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let r = send(&format!("{base}/legacy/{i}"), "GET", &[], Bytes::new()).await;
        assert_eq!(r.status, 200);
        took.push(started.elapsed());
    }
    took.sort();
    took[n / 2]
}

const LEGACY: &str = r#"
upstreams: { legacy: { address: "{upstream}" } }
session: { kind: header, header: x-s }
routes:
  - name: all
    match: { path: "/{*rest}" }
    upstream: legacy
    risk: low
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_write_upstream_adds_no_delayed_ack_stall_on_reused_connections() {
    use std::sync::atomic::Ordering;
    let (addr, accepted) = split_write_upstream().await;
    let gw = support::Gateway::start_at(LEGACY, addr).await;
    let median = median_latency(&gw.base, 30).await;
    // A delayed ACK costs 40 ms per request; a reused connection without it answers in well
    // under 10 ms even on a loaded debug build.
    assert!(median < Duration::from_millis(15), "median {median:?}");
    assert!(
        accepted.load(Ordering::Relaxed) < 5,
        "upstream connections were reused ({} opened)",
        accepted.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_false_opens_a_connection_per_request() {
    use std::sync::atomic::Ordering;
    let (addr, accepted) = split_write_upstream().await;
    let config = LEGACY.replace(
        r#"{ address: "{upstream}" }"#,
        r#"{ address: "{upstream}", keepalive: false }"#,
    );
    let gw = support::Gateway::start_at(&config, addr).await;
    median_latency(&gw.base, 10).await;
    assert_eq!(accepted.load(Ordering::Relaxed), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_files_soft_limit_is_raised_to_the_hard_limit() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let path = config(
        dir.path(),
        port,
        free_port(),
        &upstream.addr.to_string(),
        "server: { threads: 1, grace_period: 1s, shutdown_timeout: 1s }",
    );
    let child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 256 && exec {BIN} run --config {}",
            path.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gateway");
    let gateway = Gateway { child };
    wait_listening(port).await;
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", gateway.child.id())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files  SOFT  HARD  files"
    assert_eq!(fields[3], fields[4], "{line}");
    assert_ne!(fields[3], "256", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_keepalive_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let path = config(
        dir.path(),
        port,
        free_port(),
        &upstream.addr.to_string(),
        "server: { threads: 1, keepalive_timeout: 1s, grace_period: 1s, shutdown_timeout: 1s }",
    );
    let _gateway = Gateway::start(&path, port).await;
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    c.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.expect("response");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection stayed open");
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(800) && idle < Duration::from_secs(3),
        "closed after {idle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_requests_to_a_split_write_upstream_add_no_delayed_ack_stall() {
    let (addr, _accepted) = split_write_upstream().await;
    let config = r#"
upstreams: { legacy: { address: "{upstream}" } }
session: { kind: header, header: x-s }
routes:
  - name: delete-user
    match: { methods: [DELETE], path: "/api/users/{id}" }
    upstream: legacy
    risk: high
"#;
    let gw = support::Gateway::start_at(config, addr).await;
    let key =
        countersign::tools::device_key::DeviceKey::generate(countersign::alg::ProofAlg::Es256)
            .expect("key");
    let url = format!("{}/api/users/7", gw.base);
    let mut took = Vec::new();
    for _ in 0..15 {
        let challenge = send(&url, "DELETE", &[("x-s", "s1")], Bytes::new()).await;
        let nonce = challenge.header("dpop-nonce").expect("nonce").to_string();
        let proof = key.proof("DELETE", &url, Some(&nonce), Some("s1"));
        let started = Instant::now();
        let r = send(
            &url,
            "DELETE",
            &[("x-s", "s1"), ("dpop", &proof)],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, 200);
        took.push(started.elapsed());
    }
    took.sort();
    assert!(took[7] < Duration::from_millis(20), "median {:?}", took[7]);
}
