//! Cookie and header sessions that name their subject (`session.subject_from`), so the audit
//! record says who acted: from a header a trusted auth proxy sets, or from a claim of a session
//! cookie that is a verified JWT.

mod support;

use bytes::Bytes;
use countersign::alg::ProofAlg;
use countersign::tools::device_key::DeviceKey;
use serde_json::json;
use support::{send, Gateway, Upstream};

const SECRET_ENV: &str = "COUNTERSIGN_SUBJECT_TEST_HS256";
const SECRET: &str = "subject-test-secret-0123456789abcdef-01234";

const ROUTES: &str = r#"
upstreams: { legacy: { address: "{upstream}" } }
routes:
  - name: delete-user
    match: { methods: [DELETE], path: "/api/users/{id}" }
    upstream: legacy
    risk: high
"#;

fn set_secret() {
    // Edition 2021 treats `set_var` as safe; the variable is this file's alone.
    #[allow(unused_unsafe)]
    unsafe {
        std::env::set_var(SECRET_ENV, SECRET);
    }
}

fn cookie_jwt(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("HMAC key"),
    )
    .expect("token")
}

fn in_ten_minutes() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600
}

/// Challenge, sign, resend; returns the final reply.
async fn confirm(url: &str, headers: &[(&str, &str)], credential: &str) -> support::Reply {
    let challenge = send(url, "DELETE", headers, Bytes::new()).await;
    let nonce = challenge.header("dpop-nonce").expect("nonce").to_owned();
    let key = DeviceKey::generate(ProofAlg::Es256).expect("key");
    let proof = key.proof("DELETE", url, Some(&nonce), Some(credential));
    let mut with_proof = headers.to_vec();
    with_proof.push(("dpop", proof.as_str()));
    send(url, "DELETE", &with_proof, Bytes::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_jwt_claim_names_the_subject_in_the_audit_and_upstream() {
    set_secret();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &format!(
            "session: {{ kind: cookie, cookie: sid, hs256_secret_env: {SECRET_ENV}, subject_from: {{ cookie_jwt_claim: email }} }}\n{ROUTES}"
        ),
        &upstream,
    )
    .await;
    let jwt = cookie_jwt(
        json!({"sub": "u-17", "email": "erin@example.com", "exp": in_ten_minutes()}),
        SECRET,
    );
    let cookie = format!("sid={jwt}");
    let url = format!("{}/api/users/5", gw.base);
    let r = confirm(&url, &[("cookie", cookie.as_str())], &jwt).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["countersign-subject"], "erin@example.com");
    let accepted = gw
        .audit()
        .into_iter()
        .find(|r| r["event"] == "accepted")
        .expect("accepted record");
    assert_eq!(accepted["subject"], "erin@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_that_is_not_a_valid_jwt_is_no_session() {
    set_secret();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &format!(
            "session: {{ kind: cookie, cookie: sid, hs256_secret_env: {SECRET_ENV}, subject_from: {{ cookie_jwt_claim: sub }} }}\n{ROUTES}"
        ),
        &upstream,
    )
    .await;
    let forged = cookie_jwt(
        json!({"sub": "admin", "exp": in_ten_minutes()}),
        "not-the-gateway-secret-0123456789abcdef-0",
    );
    for value in ["opaque-session-value".to_owned(), forged] {
        let cookie = format!("sid={value}");
        let r = send(
            &format!("{}/api/users/5", gw.base),
            "DELETE",
            &[("cookie", cookie.as_str())],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, 401);
        assert_eq!(r.dpop_error().as_deref(), Some("invalid_token"));
        assert_eq!(r.json()["reason"], "invalid_session");
        assert_eq!(
            gw.audit().pop().expect("record")["reason"],
            "invalid_session"
        );
    }
    assert!(upstream.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_from_a_trusted_proxy_names_the_subject() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &format!(
            "trusted_proxies: [\"127.0.0.1/32\"]\nsession: {{ kind: header, header: x-session, subject_from: {{ header: x-authenticated-user }} }}\n{ROUTES}"
        ),
        &upstream,
    )
    .await;
    let url = format!("{}/api/users/5", gw.base);
    let headers = [
        ("x-session", "frank-session-1"),
        ("x-authenticated-user", "frank"),
    ];
    let r = confirm(&url, &headers, "frank-session-1").await;
    assert_eq!(r.status, 200);
    let accepted = gw
        .audit()
        .into_iter()
        .find(|r| r["event"] == "accepted")
        .expect("accepted record");
    assert_eq!(accepted["subject"], "frank");
}

#[test]
fn subject_from_is_checked_against_the_session_kind() {
    let fails = |session: &str, field: &str, words: &str| {
        let yaml = format!(
            "listen: \"127.0.0.1:1\"\nupstreams: {{ a: {{ address: \"127.0.0.1:9\" }} }}\nsession: {session}\nroutes:\n  - name: all\n    match: {{ path: \"/{{*rest}}\" }}\n    upstream: a\n    risk: low\n"
        );
        let err = countersign::config::parse(&yaml, std::path::Path::new("t.yaml"))
            .expect_err("invalid session");
        assert_eq!(err.path, field, "{err}");
        assert!(err.message.contains(words), "{err}");
    };
    fails(
        "{ kind: header, header: x-s, subject_from: { cookie_jwt_claim: sub } }",
        "session.subject_from.cookie_jwt_claim",
        "only used with kind: cookie",
    );
    fails(
        "{ kind: cookie, cookie: sid, subject_from: { header: x-u, cookie_jwt_claim: sub } }",
        "session.subject_from",
        "exactly one of",
    );
    fails(
        "{ kind: cookie, cookie: sid, subject_from: { cookie_jwt_claim: sub } }",
        "session",
        "needs exactly one key source",
    );
    fails(
        "{ kind: cookie, cookie: sid, jwks_file: j.json }",
        "session.jwks_file",
        "only used with kind: bearer_jwt",
    );
    fails(
        "{ kind: cookie, cookie: sid, subject_header: x-u, subject_from: { header: x-v } }",
        "session.subject_from",
        "keep one",
    );
    fails(
        "{ kind: bearer_jwt, hs256_secret_env: X, subject_from: { header: x-v } }",
        "session.subject_from",
        "only used with kind: cookie or header",
    );
}
