//! Enrolled devices (`session.binding: enrolled`): only keys in the registry of the session's
//! subject confirm. The registry lives in a real Redis shared by the gateways and by the
//! `countersign devices` commands an operator runs; devices also enrol themselves with an
//! invite code, or are vouched for by a device already enrolled.

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bytes::Bytes;
use countersign::alg::ProofAlg;
use countersign::tools::device_key::DeviceKey;
use redis_support::RedisServer;
use serde_json::{json, Value};
use support::{send, Gateway, Reply, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_countersign");
/// The origin every gateway is reached at, so a proof's `htu` fits each of them.
const ORIGIN: &str = "http://admin.example.test";
const TARGET: &str = "/api/users/42";
const ENROLL: &str = "/.countersign/devices/enroll";

fn es256() -> DeviceKey {
    DeviceKey::generate(ProofAlg::Es256).expect("ES256 key generation works on this platform")
}

fn text(r: &Reply) -> String {
    format!("{} {}", r.status, String::from_utf8_lossy(&r.body))
}

/// The gateway config body: cookie sessions whose subject an auth proxy on loopback names in
/// `x-user`, devices enrolled in `redis`.
fn gateway_config(redis: &RedisServer, session_extra: &str) -> String {
    format!(
        r#"
public_origin: "{ORIGIN}"
trusted_proxies: ["127.0.0.1/32"]
session: {{ kind: cookie, cookie: sid, subject_header: x-user, binding: enrolled{session_extra} }}
store: {{ kind: redis, url: "{}", timeout: 500ms }}
upstreams: {{ legacy: {{ address: "{{upstream}}" }} }}
routes:
  - name: delete-user
    match: {{ methods: [DELETE], path: "/api/users/{{id}}" }}
    upstream: legacy
    risk: high
  - name: default
    match: {{ path: "/{{*rest}}" }}
    upstream: legacy
    risk: low
"#,
        redis.url()
    )
}

/// A config file for the `countersign devices` commands: the same store, and the audit log of
/// `gw` when given.
fn cli_config(
    dir: &Path,
    redis: &RedisServer,
    audit: Option<&Path>,
    session_extra: &str,
) -> PathBuf {
    let audit = match audit {
        Some(path) => format!("audit: {{ path: \"{}\" }}\n", path.display()),
        None => String::new(),
    };
    let yaml = format!(
        r#"listen: "127.0.0.1:1"
upstreams: {{ legacy: {{ address: "127.0.0.1:9" }} }}
session: {{ kind: cookie, cookie: sid, binding: enrolled{session_extra} }}
store: {{ kind: redis, url: "{}" }}
{audit}routes:
  - name: default
    match: {{ path: "/{{*rest}}" }}
    upstream: legacy
    risk: low
"#,
        redis.url()
    );
    let path = dir.join(format!("cli-{}.yaml", rand::random::<u32>()));
    std::fs::write(&path, yaml).expect("write CLI config");
    path
}

fn cli(config: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command
        .arg("devices")
        .arg(args[0])
        .arg("--config")
        .arg(config);
    command
        .args(&args[1..])
        .output()
        .expect("run countersign devices")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Enrols `key` for `subject` as an operator would.
fn add(config: &Path, subject: &str, key: &DeviceKey) {
    let out = cli(config, &["add", "--subject", subject, "--jkt", &key.jkt()]);
    assert!(out.status.success(), "devices add: {}", stderr(&out));
}

fn session_of(subject: &str) -> String {
    format!("{subject}-session-5c1e")
}

/// A request in `subject`'s session (no `x-user` at all for `None`), with a proof when given.
async fn request(
    gw: &Gateway,
    method: &str,
    path: &str,
    subject: Option<&str>,
    body: &str,
    proof: Option<&str>,
) -> Reply {
    let cookie = format!("sid={}", session_of(subject.unwrap_or("nobody")));
    let mut headers = vec![("cookie", cookie.as_str())];
    if let Some(subject) = subject {
        headers.push(("x-user", subject));
    }
    if !body.is_empty() {
        headers.push(("content-type", "application/json"));
    }
    if let Some(proof) = proof {
        headers.push(("dpop", proof));
    }
    let url = format!("{}{path}", gw.base);
    send(&url, method, &headers, Bytes::from(body.to_string())).await
}

/// The whole exchange: ask, read the nonce, sign it with `key`, send again.
async fn confirmed(
    gw: &Gateway,
    method: &str,
    path: &str,
    subject: Option<&str>,
    body: &str,
    key: &DeviceKey,
) -> Reply {
    let first = request(gw, method, path, subject, body, None).await;
    assert_eq!(first.status, 401, "challenge: {}", text(&first));
    assert_eq!(first.dpop_error().as_deref(), Some("use_dpop_nonce"));
    let nonce = first
        .header("dpop-nonce")
        .expect("a challenge carries a nonce");
    let credential = session_of(subject.unwrap_or("nobody"));
    let proof = key.proof(
        method,
        &format!("{ORIGIN}{path}"),
        Some(nonce),
        Some(&credential),
    );
    request(gw, method, path, subject, body, Some(&proof)).await
}

async fn delete(gw: &Gateway, subject: &str, key: &DeviceKey) -> Reply {
    confirmed(gw, "DELETE", TARGET, Some(subject), "", key).await
}

async fn enroll(gw: &Gateway, subject: &str, body: Value, key: &DeviceKey) -> Reply {
    confirmed(gw, "POST", ENROLL, Some(subject), &body.to_string(), key).await
}

fn invite(config: &Path, subject: &str) -> String {
    let out = cli(config, &["invite", "--subject", subject]);
    assert!(out.status.success(), "devices invite: {}", stderr(&out));
    let code = stdout(&out);
    let lines: Vec<&str> = code.lines().collect();
    assert_eq!(lines.len(), 1, "the code alone on its line: {code:?}");
    assert!(!stderr(&out).contains(lines[0]), "the code is shown once");
    lines[0].to_string()
}

fn assert_refused(r: &Reply, status: u16, error: &str, reason: &str) {
    assert_eq!(r.status, status, "{}", text(r));
    assert_eq!(r.json()["error"], error, "{}", text(r));
    assert_eq!(r.json()["reason"], reason, "{}", text(r));
}

fn verify_audit(path: &Path) {
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(path)
        .output()
        .expect("run audit verify");
    assert!(
        out.status.success(),
        "one chain across the gateway and the CLI: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_device_confirms_and_its_record_names_the_enrolment() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&gateway_config(&redis, ""), &upstream).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = cli_config(dir.path(), &redis, Some(&gw.audit_path), "");
    let laptop = es256();
    add(&config, "alice", &laptop);

    let r = delete(&gw, "alice", &laptop).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let accepted = gw
        .audit()
        .into_iter()
        .find(|a| a["event"] == "accepted")
        .expect("an accepted record");
    assert_eq!(accepted["enrolment"], "operator", "{accepted}");
    assert_eq!(accepted["device"], laptop.jkt().as_str(), "{accepted}");
    assert_eq!(accepted["subject"], "alice", "{accepted}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["countersign-device"], laptop.jkt().as_str());

    let enrolled = gw
        .audit()
        .into_iter()
        .find(|a| a["event"] == "device_enrolled")
        .expect("the CLI's enrolment is in the gateway's audit log");
    assert_eq!(enrolled["by"], "operator", "{enrolled}");
    assert_eq!(enrolled["subject"], "alice", "{enrolled}");
    verify_audit(&gw.audit_path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_device_is_refused_and_nothing_reaches_the_upstream() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&gateway_config(&redis, ""), &upstream).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = cli_config(dir.path(), &redis, None, "");
    add(&config, "alice", &es256());
    // Bob's key is enrolled, for Bob: it is no device of Alice's.
    let stranger = es256();
    add(&config, "bob", &stranger);

    let r = delete(&gw, "alice", &stranger).await;
    assert_refused(&r, 401, "invalid_dpop_proof", "device_not_enrolled");
    assert_eq!(r.dpop_error().as_deref(), Some("invalid_dpop_proof"));
    assert!(
        r.header("dpop-nonce").is_some(),
        "a 401 of a valid session carries a nonce"
    );
    let audit = gw.audit_of(&r);
    assert_eq!(audit["event"], "rejected", "{audit}");
    assert_eq!(audit["reason"], "device_not_enrolled", "{audit}");
    assert_eq!(audit["device"], stranger.jkt().as_str(), "{audit}");
    assert_eq!(audit["subject"], "alice", "{audit}");
    assert!(upstream.seen().is_empty(), "the upstream saw nothing");
    let metrics = gw.metrics().await;
    support::assert_metric(
        &metrics,
        r#"countersign_rejections_total{reason="device_not_enrolled",route="delete-user"} 1"#,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_without_a_subject_cannot_confirm() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&gateway_config(&redis, ""), &upstream).await;
    let r = request(&gw, "DELETE", TARGET, None, "", None).await;
    assert_refused(&r, 403, "forbidden", "no_subject");
    assert!(
        r.header("dpop-nonce").is_none(),
        "no nonce for a session that cannot confirm"
    );
    let audit = gw.audit_of(&r);
    assert_eq!(audit["reason"], "no_subject", "{audit}");
    // Not even with a proof, by any key.
    let key = es256();
    let proof = key.proof("DELETE", &format!("{ORIGIN}{TARGET}"), Some("n"), Some("x"));
    let r = request(&gw, "DELETE", TARGET, None, "", Some(&proof)).await;
    assert_refused(&r, 403, "forbidden", "no_subject");
    assert!(upstream.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_enrols_the_new_key_once() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&gateway_config(&redis, ""), &upstream).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = cli_config(dir.path(), &redis, None, "");
    let phone = es256();
    let refused = delete(&gw, "alice", &phone).await;
    assert_refused(&refused, 401, "invalid_dpop_proof", "device_not_enrolled");

    let code = invite(&config, "alice");
    let r = enroll(&gw, "alice", json!({ "code": code }), &phone).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["enrolled"]["device"], phone.jkt().as_str());
    assert_eq!(r.json()["enrolled"]["by"], "invite");
    let audit = gw.audit_of(&r);
    assert_eq!(audit["event"], "device_enrolled", "{audit}");
    assert_eq!(audit["by"], "invite", "{audit}");
    assert_eq!(audit["device"], phone.jkt().as_str(), "{audit}");
    assert!(
        !audit.to_string().contains(&code),
        "the code is never recorded"
    );

    let r = delete(&gw, "alice", &phone).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(gw.audit_of(&r)["enrolment"], "invite");

    // Single use: the same code enrols no other key.
    let other = es256();
    let again = enroll(&gw, "alice", json!({ "code": code }), &other).await;
    assert_refused(&again, 403, "forbidden", "replay");
    assert_eq!(gw.audit_of(&again)["event"], "rejected");
    let refused = delete(&gw, "alice", &other).await;
    assert_refused(&refused, 401, "invalid_dpop_proof", "device_not_enrolled");

    // A code for Alice does nothing in Bob's session (and is spent by trying).
    let code = invite(&config, "alice");
    let bob = enroll(&gw, "bob", json!({ "code": code }), &other).await;
    assert_refused(&bob, 403, "forbidden", "invite_invalid");
    let alice = enroll(&gw, "alice", json!({ "code": code }), &other).await;
    assert_refused(&alice, 403, "forbidden", "replay");
    assert_eq!(
        upstream.seen().len(),
        1,
        "only the enrolled phone's delete went through"
    );
    let metrics = gw.metrics().await;
    support::assert_metric(
        &metrics,
        r#"countersign_device_enrolments_total{source="invite"} 1"#,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_expires() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&gateway_config(&redis, ""), &upstream).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = cli_config(dir.path(), &redis, None, ", invite_ttl: 300ms");
    let code = invite(&config, "alice");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let phone = es256();
    let r = enroll(&gw, "alice", json!({ "code": code }), &phone).await;
    assert_refused(&r, 403, "forbidden", "invite_invalid");
    let refused = delete(&gw, "alice", &phone).await;
    assert_refused(&refused, 401, "invalid_dpop_proof", "device_not_enrolled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_holds_on_every_replica_at_once() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let body = gateway_config(&redis, "");
    let a = Gateway::start(&body, &upstream).await;
    let b = Gateway::start(&body, &upstream).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = cli_config(dir.path(), &redis, None, "");
    let laptop = es256();
    add(&config, "alice", &laptop);
    for gw in [&a, &b] {
        let r = delete(gw, "alice", &laptop).await;
        assert_eq!(r.status, 200, "{}", text(&r));
    }

    let out = cli(
        &config,
        &["remove", "--subject", "alice", "--jkt", &laptop.jkt()],
    );
    assert!(out.status.success(), "devices remove: {}", stderr(&out));
    for gw in [&b, &a] {
        let r = delete(gw, "alice", &laptop).await;
        assert_refused(&r, 401, "invalid_dpop_proof", "device_not_enrolled");
    }
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_device_enrols_another_and_without_it_the_new_one_is_refused() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&gateway_config(&redis, ""), &upstream).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = cli_config(dir.path(), &redis, None, "");
    let (laptop, phone) = (es256(), es256());
    add(&config, "alice", &laptop);

    let refused = delete(&gw, "alice", &phone).await;
    assert_refused(&refused, 401, "invalid_dpop_proof", "device_not_enrolled");
    // A new key cannot vouch for itself.
    let itself = enroll(&gw, "alice", json!({ "jkt": phone.jkt() }), &phone).await;
    assert_refused(&itself, 401, "invalid_dpop_proof", "device_not_enrolled");
    // Nor can another subject's device.
    let bobs = es256();
    add(&config, "bob", &bobs);
    let other = enroll(&gw, "alice", json!({ "jkt": phone.jkt() }), &bobs).await;
    assert_refused(&other, 401, "invalid_dpop_proof", "device_not_enrolled");

    let r = enroll(&gw, "alice", json!({ "jkt": phone.jkt() }), &laptop).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let by = format!("device:{}", laptop.jkt());
    assert_eq!(r.json()["enrolled"]["by"], by.as_str());
    let audit = gw.audit_of(&r);
    assert_eq!(audit["event"], "device_enrolled", "{audit}");
    assert_eq!(audit["by"], by.as_str(), "{audit}");
    assert_eq!(audit["device"], phone.jkt().as_str(), "{audit}");

    let r = delete(&gw, "alice", &phone).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(gw.audit_of(&r)["enrolment"], by.as_str());
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enrolment_endpoint_refuses_what_it_cannot_read() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&gateway_config(&redis, ""), &upstream).await;
    let bad = request(
        &gw,
        "POST",
        ENROLL,
        Some("alice"),
        r#"{"jkt":"short"}"#,
        None,
    )
    .await;
    assert_refused(&bad, 400, "invalid_request", "malformed");
    let nobody = request(&gw, "POST", ENROLL, None, r#"{"code":"abc"}"#, None).await;
    assert_refused(&nobody, 403, "forbidden", "no_subject");
    let anonymous = send(
        &format!("{}{ENROLL}", gw.base),
        "POST",
        &[("x-user", "alice")],
        Bytes::from_static(br#"{"code":"abc"}"#),
    )
    .await;
    assert_refused(&anonymous, 401, "invalid_token", "no_session");
    let get = request(&gw, "GET", ENROLL, Some("alice"), "", None).await;
    assert_eq!(get.status, 405, "{}", text(&get));
    assert!(
        upstream.seen().is_empty(),
        "the endpoint is the gateway's own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_adds_lists_and_removes_against_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let audit = dir.path().join("audit.jsonl");
    let config = cli_config(dir.path(), &redis, Some(&audit), ", max_devices: 2");
    let (a, b, c) = (es256(), es256(), es256());
    add(&config, "alice", &a);
    add(&config, "alice", &b);
    let full = cli(&config, &["add", "--subject", "alice", "--jkt", &c.jkt()]);
    assert!(!full.status.success());
    assert!(
        stderr(&full).contains("already has 2 devices"),
        "{}",
        stderr(&full)
    );

    let listed = cli(&config, &["list", "--subject", "alice"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let text = stdout(&listed);
    assert!(text.contains(&a.jkt()) && text.contains(&b.jkt()), "{text}");
    assert!(text.contains("by operator"), "{text}");
    assert!(!text.contains(&c.jkt()), "{text}");

    let removed = cli(
        &config,
        &["remove", "--subject", "alice", "--jkt", &a.jkt()],
    );
    assert!(removed.status.success(), "{}", stderr(&removed));
    let again = cli(
        &config,
        &["remove", "--subject", "alice", "--jkt", &a.jkt()],
    );
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("is not enrolled"),
        "{}",
        stderr(&again)
    );
    let listed = stdout(&cli(&config, &["list", "--subject", "alice"]));
    assert!(
        !listed.contains(&a.jkt()) && listed.contains(&b.jkt()),
        "{listed}"
    );
    let nobody = stdout(&cli(&config, &["list", "--subject", "carol"]));
    assert!(nobody.contains("no devices enrolled"), "{nobody}");

    let bad = cli(
        &config,
        &["add", "--subject", "alice", "--jkt", "not-a-thumbprint"],
    );
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("thumbprint"), "{}", stderr(&bad));

    let records: Vec<Value> = std::fs::read_to_string(&audit)
        .expect("the CLI wrote its audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let events: Vec<&str> = records.iter().filter_map(|r| r["event"].as_str()).collect();
    assert_eq!(
        events,
        ["device_enrolled", "device_enrolled", "device_removed"]
    );
    assert!(records.iter().all(|r| r["by"] == "operator"));
    verify_audit(&audit);
}

#[test]
fn enrolled_devices_need_the_shared_store() {
    let yaml = "listen: \"127.0.0.1:1\"\nupstreams: { a: { address: \"127.0.0.1:9\" } }\nsession: { kind: cookie, cookie: sid, binding: enrolled }\nroutes:\n  - name: r\n    match: { path: \"/{*rest}\" }\n    upstream: a\n    risk: low\n";
    let err = countersign::config::parse(yaml, Path::new("memory.yaml"))
        .expect_err("enrolled with the memory store is refused");
    let err = err.to_string();
    assert!(err.contains("session.binding"), "{err}");
    assert!(err.contains("store.kind: redis"), "{err}");
}

#[test]
fn the_cli_refuses_the_memory_store_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("memory.yaml");
    std::fs::write(
        &path,
        "listen: \"127.0.0.1:1\"\nupstreams: { a: { address: \"127.0.0.1:9\" } }\nsession: { kind: cookie, cookie: sid }\nroutes:\n  - name: r\n    match: { path: \"/{*rest}\" }\n    upstream: a\n    risk: low\n",
    )
    .expect("write config");
    for args in [
        vec![
            "add",
            "--subject",
            "alice",
            "--jkt",
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
        ],
        // A thumbprint is base64url: one that starts with `-` is a value, not an option.
        vec![
            "remove",
            "--subject",
            "alice",
            "--jkt",
            "-nZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4",
        ],
        vec!["invite", "--subject", "alice"],
    ] {
        let out = cli(&path, &args);
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains("memory.yaml"), "{err}");
        assert!(err.contains("store.kind: redis"), "{err}");
        assert!(
            stdout(&out).is_empty(),
            "no code for an invite nobody can redeem"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_use_binding_lasts_as_long_as_the_token_it_binds() {
    const SECRET_ENV: &str = "COUNTERSIGN_DEVICES_TEST_HS256";
    const SECRET: &str = "devices-test-secret-0123456789abcdef-0123";
    // Edition 2021 treats `set_var` as safe; the variable is this test's alone.
    #[allow(unused_unsafe)]
    unsafe {
        std::env::set_var(SECRET_ENV, SECRET);
    }
    let upstream = Upstream::start().await;
    // binding_ttl is far shorter than the token: the token decides.
    let gw = Gateway::start(
        &format!(
            r#"
public_origin: "{ORIGIN}"
session: {{ kind: bearer_jwt, hs256_secret_env: {SECRET_ENV}, binding_ttl: 200ms }}
upstreams: {{ legacy: {{ address: "{{upstream}}" }} }}
routes:
  - name: delete-user
    match: {{ methods: [DELETE], path: "/api/users/{{id}}" }}
    upstream: legacy
    risk: high
"#
        ),
        &upstream,
    )
    .await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": "alice", "sid": "s-1", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).expect("HMAC key"),
    )
    .expect("token");
    let url = format!("{}{TARGET}", gw.base);
    let (first, second) = (es256(), es256());
    let r = bearer_delete(&url, &token, &first).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(gw.audit_of(&r)["enrolment"], "first_use");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let r = bearer_delete(&url, &token, &second).await;
    assert_refused(&r, 401, "invalid_dpop_proof", "device_mismatch");
    let r = bearer_delete(&url, &token, &first).await;
    assert_eq!(r.status, 200, "{}", text(&r));
}

/// The exchange for `DELETE TARGET` in a `bearer_jwt` session.
async fn bearer_delete(url: &str, token: &str, key: &DeviceKey) -> Reply {
    let authorization = format!("DPoP {token}");
    let auth = [("authorization", authorization.as_str())];
    let first = send(url, "DELETE", &auth, Bytes::new()).await;
    let nonce = first.header("dpop-nonce").expect("nonce");
    let proof = key.proof(
        "DELETE",
        &format!("{ORIGIN}{TARGET}"),
        Some(nonce),
        Some(token),
    );
    let headers = [
        ("authorization", authorization.as_str()),
        ("dpop", proof.as_str()),
    ];
    send(url, "DELETE", &headers, Bytes::new()).await
}
