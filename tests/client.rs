//! `countersign request`, `keygen` and `proof` as an operator runs them: the built binary against
//! an in-process gateway in front of a recording upstream.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use support::{Gateway, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_countersign");

const WORLD: &str = r#"
upstreams: { legacy: { address: "{upstream}" } }
session: { kind: cookie, cookie: sid }
routes:
  - name: delete-user
    match: { methods: [DELETE], path: "/api/users/{id}" }
    upstream: legacy
    risk: high
  - name: start-redirect
    match: { methods: [POST], path: "/redirect/{kind}" }
    upstream: legacy
    risk: high
  - name: finish-redirect
    match: { methods: [GET], path: "/done/{kind}" }
    upstream: legacy
    risk: high
  - name: default
    match: { path: "/{*rest}" }
    upstream: legacy
    risk: low
"#;

/// Runs the binary off the runtime's threads, so the in-process gateway keeps serving.
async fn countersign(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(&args)
            .output()
            .expect("run countersign")
    })
    .await
    .expect("join")
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = std::process::Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .expect("keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (path, String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn args(list: &[&str], key: &Path) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.push("--key".into());
    v.push(key.display().to_string());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_confirms_a_high_impact_action_and_a_second_device_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (laptop, jkt) = keygen(dir.path(), "laptop.pem");
    let (phone, _) = keygen(dir.path(), "phone.pem");
    let upstream = Upstream::start().await;
    let gw = Gateway::start(WORLD, &upstream).await;
    let url = format!("{}/api/users/42", gw.base);

    let out = countersign(args(
        &[
            "request",
            "-X",
            "DELETE",
            &url,
            "--cookie",
            "sid=alice-1",
            "-i",
        ],
        &laptop,
    ))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("HTTP/1.1 200 OK\r\n"), "{stdout}");
    assert!(
        stdout
            .to_ascii_lowercase()
            .contains("countersign-confirmation-id: "),
        "{stdout}"
    );
    assert!(stdout.ends_with(r#"{"ok":true,"len":0}"#), "{stdout}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1, "forwarded exactly once");
    assert_eq!(seen[0].method, "DELETE");
    assert_eq!(seen[0].headers["countersign-device"], jkt.as_str());
    // The completed record is written once the response is relayed, which the client may see
    // first.
    gw.wait_for_audit(|r| r["event"] == "completed").await;
    let events: Vec<String> = gw.audit().iter().map(|r| r["event"].to_string()).collect();
    assert_eq!(
        events,
        [r#""challenged""#, r#""accepted""#, r#""completed""#]
    );

    // The session is now bound to the laptop: the phone's confirmation is refused.
    let out = countersign(args(
        &["request", "-X", "DELETE", &url, "--cookie", "sid=alice-1"],
        &phone,
    ))
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("refused: HTTP 401 Unauthorized invalid_dpop_proof (reason device_mismatch)"),
        "{stderr}"
    );
    assert_eq!(upstream.seen().len(), 1, "the upstream saw nothing new");
    let last = gw.audit().pop().expect("audit record");
    assert_eq!(last["event"], "rejected");
    assert_eq!(last["reason"], "device_mismatch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_with_a_nonce_file_confirms_the_next_action_in_one_round_trip() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (key, _) = keygen(dir.path(), "k.pem");
    let nonces = dir.path().join("nonce");
    let upstream = Upstream::start().await;
    let gw = Gateway::start(WORLD, &upstream).await;
    for id in [1, 2, 3] {
        let url = format!("{}/api/users/{id}", gw.base);
        let nonce_file = nonces.display().to_string();
        let request = ["request", "-X", "DELETE", &url, "--cookie", "sid=alice-1"];
        let list = [&request[..], &["--nonce-file", &nonce_file]].concat();
        let out = countersign(args(&list, &key)).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mode = std::fs::metadata(&nonces)
            .expect("the next nonce is kept")
            .mode();
        assert_eq!(mode & 0o077, 0, "the nonce file is the owner's only");
    }
    assert_eq!(upstream.seen().len(), 3);
    gw.wait_for_audit(|r| r["event"] == "completed" && r["target"] == "/api/users/3")
        .await;
    let challenged = gw
        .audit()
        .iter()
        .filter(|r| r["event"] == "challenged")
        .count();
    assert_eq!(challenged, 1, "only the first action needed a challenge");

    // A spent or foreign nonce in the file costs one challenge, and the file is renewed.
    std::fs::write(&nonces, "not-a-nonce-of-this-gateway").expect("write");
    let url = format!("{}/api/users/4", gw.base);
    let nonce_file = nonces.display().to_string();
    let list = [
        "request",
        "-X",
        "DELETE",
        &url,
        "--cookie",
        "sid=alice-1",
        "--nonce-file",
        &nonce_file,
    ];
    let out = countersign(args(&list, &key)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(upstream.seen().len(), 4);
    let kept = std::fs::read_to_string(&nonces).expect("renewed");
    assert_eq!(kept.len(), 43, "{kept}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_without_a_session_is_refused_with_the_reason_and_nothing_forwarded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (key, _) = keygen(dir.path(), "k.pem");
    let upstream = Upstream::start().await;
    let gw = Gateway::start(WORLD, &upstream).await;
    let out = countersign(args(
        &[
            "request",
            "-X",
            "DELETE",
            &format!("{}/api/users/7", gw.base),
        ],
        &key,
    ))
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid_token (reason no_session)"),
        "{stderr}"
    );
    assert!(upstream.seen().is_empty());
    assert_eq!(gw.audit().pop().expect("record")["reason"], "no_session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_follows_a_redirect_with_its_continuation_nonce() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (key, _) = keygen(dir.path(), "k.pem");
    let body = dir.path().join("body.json");
    std::fs::write(&body, r#"{"go":1}"#).expect("write body");
    let upstream = Upstream::start().await;
    let gw = Gateway::start(WORLD, &upstream).await;
    let url = format!("{}/redirect/deploy", gw.base);
    let mut list = args(
        &["request", &url, "--session-header", "x=unused", "-L"],
        &key,
    );
    list.extend(["--cookie".into(), "sid=bob-2".into()]);
    // --session-header and --cookie are exclusive: one session per request.
    let out = countersign(list).await;
    assert!(!out.status.success());
    assert!(upstream.seen().is_empty());

    let out = countersign(args(
        &[
            "request",
            &url,
            "--data-file",
            &body.display().to_string(),
            "--cookie",
            "sid=bob-2",
            "-L",
        ],
        &key,
    ))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = upstream.seen();
    let lines: Vec<String> = seen
        .iter()
        .map(|s| format!("{} {}", s.method, s.uri))
        .collect();
    assert_eq!(lines, ["POST /redirect/deploy", "GET /done/deploy"]);
    assert_eq!(seen[0].body_len, 8);
    let audit = gw.audit();
    let accepted: Vec<&serde_json::Value> =
        audit.iter().filter(|r| r["event"] == "accepted").collect();
    assert_eq!(accepted.len(), 2);
    assert_eq!(accepted[1]["parent_id"], accepted[0]["confirmation_id"]);
    // Only the first request was challenged: the follow-up used the continuation nonce.
    assert_eq!(
        audit.iter().filter(|r| r["event"] == "challenged").count(),
        1
    );

    // Without -L the redirect itself is the answer.
    let out = countersign(args(
        &["request", "-X", "POST", &url, "--cookie", "sid=bob-2"],
        &key,
    ))
    .await;
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "see other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_writes_the_body_to_a_file_with_dash_o() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (key, _) = keygen(dir.path(), "k.pem");
    let upstream = Upstream::start().await;
    let gw = Gateway::start(WORLD, &upstream).await;
    let file = dir.path().join("out.json");
    let out = countersign(args(
        &[
            "request",
            &format!("{}/api/users", gw.base),
            "-o",
            &file.display().to_string(),
        ],
        &key,
    ))
    .await;
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert_eq!(
        std::fs::read_to_string(&file).expect("out"),
        r#"{"ok":true,"len":0}"#
    );
}

#[test]
fn request_refuses_a_lower_case_method_and_a_relative_url() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (key, _) = keygen(dir.path(), "k.pem");
    let run = |a: &[&str]| {
        std::process::Command::new(BIN)
            .args(args(a, &key))
            .output()
            .expect("run")
    };
    let out = run(&["request", "-X", "delete", "http://127.0.0.1:1/x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("upper case: \"DELETE\""));
    let out = run(&["request", "/api/users/1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected an absolute http:// URL"));
}

#[test]
fn keygen_lists_known_algorithms_and_keeps_an_existing_key_without_force() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("k.pem");
    let run = |extra: &[&str]| {
        std::process::Command::new(BIN)
            .args(["keygen", "--out"])
            .arg(&path)
            .args(extra)
            .output()
            .expect("keygen")
    };
    let out = run(&["--alg", "HS256"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown algorithm \"HS256\"; known: ES256, ES384, EdDSA, RS256, PS256"),
        "{err}"
    );
    assert!(!path.exists());

    let first = run(&["--alg", "EdDSA"]);
    assert!(first.status.success());
    let again = run(&[]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("already exists; keeping it (pass --force"),
        "{err}"
    );
    let forced = run(&["--force"]);
    assert!(forced.status.success());
    assert_ne!(first.stdout, forced.stdout, "a new key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let rsa = std::process::Command::new(BIN)
        .args(["keygen", "--alg", "RS256", "--out"])
        .arg(dir.path().join("rsa.pem"))
        .output()
        .expect("keygen rsa");
    assert!(rsa.status.success());
    assert!(String::from_utf8_lossy(&rsa.stderr).contains("only if its confirmation.algs lists it"));
}

#[test]
fn proof_refuses_a_lower_case_method_and_a_relative_url_saying_the_fix() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (key, _) = keygen(dir.path(), "k.pem");
    let proof = |method: &str, url: &str| {
        std::process::Command::new(BIN)
            .args(["proof", "--method", method, "--url", url, "--key"])
            .arg(&key)
            .output()
            .expect("proof")
    };
    let out = proof("delete", "http://127.0.0.1:8080/api/users/1");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("write it in upper case: \"DELETE\""));
    let out = proof("DELETE", "/api/users/1");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("must be the full URL the gateway is reached at"),
        "{err}"
    );
    assert!(proof("DELETE", "http://127.0.0.1:8080/api/users/1")
        .status
        .success());
}

#[test]
fn check_warns_of_an_unresolvable_upstream_and_prints_session_store_and_audit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "listen: \"127.0.0.1:8080\"\nupstreams: { legacy: { address: \"no-such-host.invalid:80\" } }\nsession: { kind: header, header: x-s }\nstore: { kind: redis, url: \"redis://ops:hunter2@redis.internal:6379/0\" }\nroutes:\n  - name: all\n    match: { path: \"/{*rest}\" }\n    upstream: legacy\n    risk: low\n",
    )
    .expect("write config");
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "warning: upstreams.legacy.address \"no-such-host.invalid:80\" does not resolve here"
        ),
        "{stderr}"
    );
    assert!(stdout.contains("session header (header x-s)\n"), "{stdout}");
    assert!(
        stdout.contains("store redis (redis://redis.internal:6379/0)\n"),
        "{stdout}"
    );
    assert!(stdout.contains("audit stdout\n"), "{stdout}");
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));
}
