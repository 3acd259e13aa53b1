//! Refusals and config errors that name their cause and the fix, each checked where the user
//! meets it: the response (with its audit record and an upstream that saw nothing), or the
//! command's stderr.

mod support;

use bytes::Bytes;
use countersign::alg::ProofAlg;
use countersign::tools::device_key::DeviceKey;
use serde_json::json;
use support::{send, Gateway, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_countersign");
const SECRET_ENV: &str = "COUNTERSIGN_MESSAGES_TEST_HS256";
const SECRET: &str = "messages-test-secret-0123456789abcdef-0123";

const ROUTES: &str = r#"
upstreams: { legacy: { address: "{upstream}" } }
routes:
  - name: delete-user
    match: { methods: [DELETE], path: "/api/users/{id}" }
    upstream: legacy
    risk: high
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_without_ath_says_to_sign_it_with_the_credential() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &format!("session: {{ kind: cookie, cookie: sid }}\n{ROUTES}"),
        &upstream,
    )
    .await;
    let url = format!("{}/api/users/1", gw.base);
    let cookie = [("cookie", "sid=carol-9")];
    let challenge = send(&url, "DELETE", &cookie, Bytes::new()).await;
    let nonce = challenge.header("dpop-nonce").expect("nonce").to_owned();
    let key = DeviceKey::generate(ProofAlg::Es256).expect("key");
    let proof = key.proof("DELETE", &url, Some(&nonce), None);
    let r = send(
        &url,
        "DELETE",
        &[cookie[0], ("dpop", proof.as_str())],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.dpop_error().as_deref(), Some("invalid_dpop_proof"));
    let body = r.json();
    assert_eq!(body["reason"], "missing_claim");
    let description = body["error_description"].as_str().expect("description");
    assert!(
        description.starts_with("`ath` missing: the proof must be bound to the session credential")
            && description.contains("--token"),
        "{description}"
    );
    assert!(upstream.seen().is_empty());
    let record = gw.audit().pop().expect("record");
    assert_eq!(record["event"], "rejected");
    assert_eq!(record["reason"], "missing_claim");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_sent_as_bearer_names_the_setting_that_refuses_it() {
    // Edition 2021 treats `set_var` as safe; the variable is this file's alone.
    #[allow(unused_unsafe)]
    unsafe {
        std::env::set_var(SECRET_ENV, SECRET);
    }
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &format!("session: {{ kind: bearer_jwt, hs256_secret_env: {SECRET_ENV} }}\n{ROUTES}"),
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
        &json!({"sub": "dave", "sid": "s-1", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).expect("HMAC key"),
    )
    .expect("token");
    let bearer = format!("Bearer {token}");
    let url = format!("{}/api/users/1", gw.base);
    let r = send(
        &url,
        "DELETE",
        &[("authorization", bearer.as_str())],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.dpop_error().as_deref(), Some("invalid_token"));
    let body = r.json();
    assert_eq!(body["reason"], "invalid_session");
    let description = body["error_description"].as_str().expect("description");
    assert!(
        description.contains("Bearer scheme and session.allow_bearer_scheme is false")
            && description.contains("Authorization: DPoP <token>"),
        "{description}"
    );
    assert!(upstream.seen().is_empty());
    assert_eq!(
        gw.audit().pop().expect("record")["reason"],
        "invalid_session"
    );

    // The same token with the DPoP scheme is a valid session: it is challenged, not refused.
    let dpop = format!("DPoP {token}");
    let r = send(
        &url,
        "DELETE",
        &[("authorization", dpop.as_str())],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.dpop_error().as_deref(), Some("use_dpop_nonce"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_credential_says_where_the_gateway_looks() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &format!("session: {{ kind: header, header: x-admin-session }}\n{ROUTES}"),
        &upstream,
    )
    .await;
    let r = send(
        &format!("{}/api/users/1", gw.base),
        "DELETE",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 401);
    let body = r.json();
    assert_eq!(body["reason"], "no_session");
    let description = body["error_description"].as_str().expect("description");
    assert!(
        description.contains("the session header x-admin-session"),
        "{description}"
    );
    let challenge = r.header("www-authenticate").expect("WWW-Authenticate");
    assert!(challenge.contains("x-admin-session"), "{challenge}");
    assert!(upstream.seen().is_empty());
}

fn check(yaml: Option<&str>) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gw.yaml");
    if let Some(yaml) = yaml {
        std::fs::write(&path, yaml).expect("write");
    }
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("check");
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_yaml_syntax_error_is_reported_at_its_line_and_column() {
    let err = check(Some("listen: \"127.0.0.1:8080\"\nupstreams: { a: [\n"));
    assert!(err.contains("line "), "{err}");
    assert!(err.contains("column "), "{err}");
    assert!(!err.contains(": ?:"), "{err}");
}

#[test]
fn a_missing_config_file_is_reported_as_missing_not_at_root() {
    let err = check(None);
    assert!(!err.contains("(root)"), "{err}");
    assert!(err.contains("cannot read the config file"), "{err}");
}

#[test]
fn an_audit_path_below_a_file_names_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("logs");
    std::fs::write(&file, "not a directory").expect("write");
    let yaml = format!(
        "listen: \"127.0.0.1:8080\"\nupstreams: {{ a: {{ address: \"127.0.0.1:9\" }} }}\nsession: {{ kind: header, header: x-s }}\naudit: {{ path: \"{}/audit.jsonl\" }}\nroutes:\n  - name: all\n    match: {{ path: \"/{{*rest}}\" }}\n    upstream: a\n    risk: low\n",
        file.display()
    );
    let err = check(Some(&yaml));
    assert!(
        err.contains(&format!(
            "audit.path: {} is a file, not a directory",
            file.display()
        )),
        "{err}"
    );
}

#[test]
fn audit_verify_of_a_missing_file_says_it_cannot_read_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = std::process::Command::new(BIN)
        .args(["audit", "verify"])
        .arg(dir.path().join("audit.jsonl"))
        .output()
        .expect("audit verify");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("chain broken"), "{err}");
    assert!(
        err.contains("cannot read") && err.contains("No such file"),
        "{err}"
    );
}
