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
        &format!(
            "audit.path: cannot create directory {0}: {0} is not a directory",
            file.display()
        ),
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
async fn confirmed_delete(base: &str, sid: &str, key: &countersign::keys::DeviceKey) -> u16 {
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
        countersign::keys::DeviceKey::generate(countersign::alg::ProofAlg::Es256).expect("key");
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
