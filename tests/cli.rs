//! The command line as an operator uses it: the built binary, real processes and signals.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::{free_port, send, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_countersign");

#[test]
fn check_accepts_the_example_config_and_prints_the_route_table() {
    let out = Command::new(BIN)
        .args(["check", "--config", "config/example.yaml"])
        .output()
        .expect("run check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("delete-user"), "{text}");
    assert!(text.contains("/api/users/{id}"), "{text}");
    assert!(text.contains("high"), "{text}");
    assert!(
        text.contains(
            "release-deploy: approval by 2 of alice, bob (distinct approvers), within 30m"
        ),
        "{text}"
    );
}

#[test]
fn check_and_run_refuse_an_approval_webhook_whose_secret_is_not_in_the_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("approval.yaml");
    std::fs::write(
        &path,
        "listen: \"127.0.0.1:1\"\nupstreams: { a: { address: \"127.0.0.1:9\" } }\nsession: { kind: header, header: x-s }\nroutes:\n  - name: r\n    match: { path: \"/x\" }\n    upstream: a\n    risk: high\n    approval: { approvers: { subjects: [alice] }, notify: { webhook: \"http://127.0.0.1:9300/h\", secret_env: CS_CLI_TEST_NO_SUCH_SECRET } }\n",
    )
    .expect("write config");
    for verb in ["check", "run"] {
        let out = Command::new(BIN)
            .args([verb, "--config"])
            .arg(&path)
            .env_remove("CS_CLI_TEST_NO_SUCH_SECRET")
            .output()
            .expect("run the command");
        assert!(!out.status.success(), "{verb} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("routes[0].approval.notify.secret_env")
                && err.contains("CS_CLI_TEST_NO_SUCH_SECRET"),
            "{verb}: {err}"
        );
    }
}

#[test]
fn check_names_the_file_and_field_of_a_config_error_and_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listen: \"127.0.0.1:8080\"\nupstreams: { a: { address: \"127.0.0.1:9\" } }\nsession: { kind: header, header: x-s }\nroutes:\n  - name: r\n    match: { path: \"/x\" }\n    upstream: missing\n    risk: high\n",
    )
    .expect("write config");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run check");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(err.contains("routes[0].upstream"), "{err}");
}

#[test]
fn keygen_and_proof_make_a_proof_for_the_printed_thumbprint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("device.pem");
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .expect("keygen");
    assert!(out.status.success());
    let jkt = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(jkt.len(), 43);
    let out = Command::new(BIN)
        .args(["proof", "--key"])
        .arg(&key)
        .args([
            "--method",
            "POST",
            "--url",
            "https://admin.example/api/x",
            "--nonce",
            "n0nce",
            "--token",
            "tok",
        ])
        .output()
        .expect("proof");
    assert!(out.status.success());
    let proof = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let check = countersign::proof::ProofCheck {
        algs: &[countersign::alg::ProofAlg::Es256],
        method: "POST",
        htu: "https://admin.example/api/x",
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64,
        max_age: Duration::from_secs(60),
        clock_skew: Duration::from_secs(5),
    };
    let verified =
        countersign::proof::verify(&[proof.as_bytes()], &check).expect("the proof verifies");
    assert_eq!(verified.jkt, jkt);
    assert_eq!(verified.nonce.as_deref(), Some("n0nce"));
    assert_eq!(verified.ath, countersign::session::ath("tok"));
}

#[test]
fn audit_verify_fails_on_an_edited_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("audit.jsonl");
    let log = countersign::audit::AuditLog::open(Some(&path), false).expect("open");
    for route in ["a", "b"] {
        log.append(&countersign::audit::Record {
            event: Some(countersign::audit::Event::Accepted),
            route: route.into(),
            ..Default::default()
        })
        .expect("append");
    }
    let ok = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(&path)
        .output()
        .expect("verify");
    assert!(ok.status.success());
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, text.replace("\"route\":\"a\"", "\"route\":\"z\"")).expect("tamper");
    let bad = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(&path)
        .output()
        .expect("verify");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("line 2"));
}

#[test]
fn demo_walks_a_confirmation_and_exits_zero() {
    let out = Command::new(BIN).arg("demo").output().expect("demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "401 use_dpop_nonce",
        "confirmed and forwarded once",
        "401 replay",
        "401 device_mismatch",
        "hash chain: intact",
    ] {
        assert!(text.contains(step), "missing {step:?} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_then_exits() {
    let upstream = Upstream::start().await;
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("c.yaml");
    let mut f = std::fs::File::create(&config).expect("config file");
    write!(
        f,
        "listen: \"127.0.0.1:{port}\"\nupstreams: {{ a: {{ address: \"{}\" }} }}\nsession: {{ kind: header, header: x-s }}\nserver: {{ threads: 1, grace_period: 3s, shutdown_timeout: 1s }}\nroutes:\n  - name: all\n    match: {{ path: \"/{{*rest}}\" }}\n    upstream: a\n    risk: low\n",
        upstream.addr
    )
    .expect("write config");
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gateway");
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let in_flight =
        tokio::spawn(
            async move { send(&format!("{base}/slow/1500"), "GET", &[], Bytes::new()).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let reply = in_flight.await.expect("request task");
    assert_eq!(reply.status, 200, "the in-flight request finished");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn an_upstream_name_that_does_not_resolve_stops_the_start_with_its_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: \"127.0.0.1:{}\"\nupstreams: {{ legacy: {{ address: \"no-such-host.invalid:80\" }} }}\nsession: {{ kind: header, header: x-s }}\nroutes:\n  - name: all\n    match: {{ path: \"/{{*rest}}\" }}\n    upstream: legacy\n    risk: low\n",
            free_port()
        ),
    )
    .expect("write config");
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upstreams.legacy.address: cannot resolve"),
        "{err}"
    );
}
