//! Audit integrity as an auditor checks it with the built binary: the chain must start at the
//! genesis value (or the `--from` of a rotated file), signed checkpoints expose a truncated or
//! rewritten tail, and an unreadable file is not reported as a broken chain.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use countersign::audit::{AuditLog, Event, Record};
use serde_json::Value;
use support::{free_port, send, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_countersign");

fn verify(file: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["audit", "verify"])
        .arg(file)
        .args(args)
        .output()
        .expect("run audit verify")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write_records(path: &Path, routes: &[&str]) {
    let log = AuditLog::open(Some(path), false).expect("open");
    for route in routes {
        log.append(&Record {
            event: Some(Event::Accepted),
            route: route.to_string(),
            ..Record::default()
        })
        .expect("append");
    }
}

fn sha256_hex(line: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(line.as_bytes()))
}

#[test]
fn a_deleted_head_breaks_the_chain_at_line_1_unless_from_names_what_came_before() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("audit.jsonl");
    write_records(&path, &["a", "b", "c"]);
    assert!(verify(&path, &[]).status.success());

    let text = std::fs::read_to_string(&path).expect("read");
    let (first, rest) = text.split_once('\n').expect("lines");
    std::fs::write(&path, rest).expect("drop the first line");
    let out = verify(&path, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("chain broken at line 1"), "{err}");
    assert!(err.contains("64 zeros"), "{err}");

    // A rotated file continues from the last line of the one before it.
    let out = verify(&path, &["--from", &sha256_hex(first)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = verify(&path, &["--from", &"1".repeat(64)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--from"), "{}", stderr(&out));
}

#[test]
fn a_missing_file_is_reported_as_unreadable_not_as_a_broken_chain() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nope.jsonl");
    let out = verify(&path, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot read {}", path.display())),
        "{err}"
    );
    assert!(!err.contains("chain broken"), "{err}");
}

/// Runs the gateway with checkpoints every 3 records, sends `requests` passthrough requests,
/// stops it with SIGTERM; returns (audit file, checkpoints from its JSON log, JWKS).
async fn gateway_run(dir: &Path, requests: usize) -> (std::path::PathBuf, Vec<String>, String) {
    let upstream = Upstream::start().await;
    let key = dir.join("signing.pem");
    let made = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .expect("keygen");
    assert!(made.status.success());
    let audit = dir.join("audit.jsonl");
    let (port, metrics) = (free_port(), free_port());
    let config = dir.join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:{port}\"\nmetrics: {{ listen: \"127.0.0.1:{metrics}\" }}\nupstreams: {{ a: {{ address: \"{}\" }} }}\nsession: {{ kind: header, header: x-s }}\nprovenance: {{ signing_key: \"{}\" }}\naudit: {{ path: \"{}\", passthrough: true, checkpoint_every: 3 }}\nlog: {{ format: json }}\nserver: {{ threads: 1, grace_period: 2s, shutdown_timeout: 1s }}\nroutes:\n  - name: all\n    match: {{ path: \"/{{*rest}}\" }}\n    upstream: a\n    risk: low\n",
            upstream.addr,
            key.display(),
            audit.display()
        ),
    )
    .expect("config");
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(started.elapsed() < Duration::from_secs(10), "no listener");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..requests {
        let r = send(
            &format!("http://127.0.0.1:{port}/r/{i}"),
            "GET",
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let jwks = send(
        &format!("http://127.0.0.1:{metrics}/.well-known/countersign/jwks.json"),
        "GET",
        &[],
        Bytes::new(),
    )
    .await;
    let jwks = String::from_utf8_lossy(&jwks.body).into_owned();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let out = child.wait_with_output().expect("exit");
    assert!(out.status.success());
    let checkpoints = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "audit checkpoint")
        .map(|v| v["fields"]["checkpoint"].as_str().expect("jws").to_string())
        .collect();
    (audit, checkpoints, jwks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_checkpoints_expose_a_truncated_or_rewritten_tail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (audit, checkpoints, jwks) = gateway_run(dir.path(), 7).await;
    // 7 records: checkpoints after 3 and 6 records, and one at shutdown after the 7th.
    assert_eq!(checkpoints.len(), 3, "{checkpoints:?}");
    let text = std::fs::read_to_string(&audit).expect("audit");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 10);
    let events: Vec<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).expect("json")["event"].to_string())
        .collect();
    assert_eq!(events[3], "\"checkpoint\"");
    assert_eq!(events[9], "\"checkpoint\"");
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, &jwks).expect("jwks");
    let last = checkpoints.last().expect("checkpoint");
    let jwks_arg = jwks_file.display().to_string();
    let out = verify(&audit, &["--checkpoint", last, "--jwks", &jwks_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("checkpoint over 9 records holds"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Truncated: the last two lines are gone; the chain alone cannot tell.
    let truncated: String = lines[..8].iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&audit, &truncated).expect("truncate");
    assert!(verify(&audit, &[]).status.success());
    let out = verify(&audit, &["--checkpoint", last, "--jwks", &jwks_arg]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));

    // Rewritten: the tail replaced by well-chained records of the same length.
    write_records(&audit, &["forged"]);
    assert!(verify(&audit, &[]).status.success());
    let out = verify(&audit, &["--checkpoint", last, "--jwks", &jwks_arg]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("rewritten"), "{}", stderr(&out));

    // A checkpoint signed by another key is refused.
    let other = countersign::provenance::Signer::load(None).expect("signer");
    let other_jwks = dir.path().join("other.json");
    std::fs::write(&other_jwks, other.jwks()).expect("jwks");
    let out = verify(
        &audit,
        &[
            "--checkpoint",
            &checkpoints[0],
            "--jwks",
            &other_jwks.display().to_string(),
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("signature"), "{}", stderr(&out));
}
