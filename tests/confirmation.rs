//! The confirmation exchange end to end (CONTRACT §2–§6): one test per row of the §4 table, the
//! challenge, the happy path, htu normalisation, nonce binding and single use, `bearer_jwt`
//! sessions and their downgrade rules, bodies, the concurrency race, random garbage as a proof,
//! and the exact metric counters after a scripted sequence.
//!
//! Every refusal asserts the status, the `WWW-Authenticate` error, the audit record (`event`,
//! `reason`) and that the upstream saw nothing.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use countersign::tools::device_key::DeviceKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::world::{assert_nonce_shape, ed25519, es256, hex, World};
use support::{assert_metric, one_winner, race, send, send_from};

/// The session credential (cookie value) of most tests.
const SID: &str = "alice-session-0f9a8c7e";
/// A second, unrelated session.
const OTHER_SID: &str = "bob-session-5d1e2b3a";

/// Routes shared by every world: one high-impact route, a low-risk catch-all.
const ROUTES: &str = r#"
upstreams: { legacy: { address: "{upstream}" } }
routes:
  - name: delete-user
    match: { methods: [DELETE, POST], path: "/api/users/{id}" }
    upstream: legacy
    risk: high
  - name: default
    match: { path: "/{*rest}" }
    upstream: legacy
    risk: low
"#;

const COOKIE_SESSION: &str = "session: { kind: cookie, cookie: sid }";

const HS256_ENV: &str = "CS_TEST_HS256";
const HS256_SECRET: &str = "countersign-test-hs256-secret-0123456789abcdef";

/// The high-impact target most tests confirm.
const USER: &str = "/api/users/42";

/// A cookie-session world with `extra` top-level config (e.g. `confirmation: {...}`).
async fn cookie_world(extra: &str) -> World {
    world(COOKIE_SESSION, extra).await
}

async fn world(session: &str, extra: &str) -> World {
    World::start(&format!("{session}\n{extra}\n{ROUTES}")).await
}

/// Challenges and confirms `DELETE /api/users/42` in session `sid` with `key`; returns the
/// proof used.
async fn confirm(w: &World, sid: &str, key: &DeviceKey) -> String {
    let nonce = w.request("DELETE", USER).cookie(sid).challenge().await;
    let proof = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(sid));
    let r = w
        .request("DELETE", USER)
        .cookie(sid)
        .dpop(&proof)
        .send()
        .await;
    assert_eq!(
        r.status,
        200,
        "confirmation should be accepted: {}",
        r.text()
    );
    proof
}

fn cookie(sid: &str) -> String {
    format!("sid={sid}")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The header a well-behaved client sends.
fn header_of(key: &DeviceKey) -> Value {
    json!({"typ": "dpop+jwt", "alg": key.alg().as_str(), "jwk": key.public_jwk()})
}

/// Well-formed claims with a fresh `jti` and `iat`.
fn claims(method: &str, htu: &str, nonce: Option<&str>, credential: Option<&str>) -> Value {
    let mut c = json!({
        "jti": b64(rand::random::<[u8; 16]>()),
        "htm": method,
        "htu": htu,
        "iat": now(),
    });
    if let Some(nonce) = nonce {
        c["nonce"] = json!(nonce);
    }
    if let Some(credential) = credential {
        c["ath"] = json!(countersign::session::ath(credential));
    }
    c
}

/// A compact JWS of arbitrary (possibly invalid) segments.
fn jws(header: &str, claims: &str, signature: &str) -> String {
    format!("{header}.{claims}.{signature}")
}

/// Sets the HS256 secret of the `bearer_jwt` worlds, once, before any of them starts.
fn hs256_secret() -> &'static str {
    static SET: Once = Once::new();
    SET.call_once(|| {
        // Edition 2021 treats `set_var` as safe; under 2024 it needs the block. Tests only.
        #[allow(unused_unsafe)]
        unsafe {
            std::env::set_var(HS256_ENV, HS256_SECRET);
        }
    });
    HS256_SECRET
}

async fn bearer_world() -> World {
    hs256_secret();
    let session = format!(
        "session: {{ kind: bearer_jwt, hs256_secret_env: {HS256_ENV}, upstream_scheme: bearer }}"
    );
    world(&session, "").await
}

/// An HS256 session token for `sub` alice, `sid` `sid`, bound to `jkt` when given.
fn token(sid: &str, jkt: Option<&str>, exp: i64) -> String {
    let mut claims = json!({"sub": "alice", "sid": sid, "exp": exp, "iat": now()});
    if let Some(jkt) = jkt {
        claims["cnf"] = json!({"jkt": jkt});
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(hs256_secret().as_bytes()).expect("HMAC key"),
    )
    .expect("HS256 token encodes")
}

// ───────────────────────────── session ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_credential_is_invalid_token_no_session() {
    let w = cookie_world("").await;
    let key = es256();
    let before = w.seen();
    let proof = key.proof("DELETE", &w.url(USER), None, Some(SID));
    let r = send(&w.url(USER), "DELETE", &[("dpop", &proof)], Bytes::new()).await;
    w.assert_refused(&r, before, 401, "invalid_token", "no_session")
        .await;
    let r = send(
        &w.url(USER),
        "DELETE",
        &[("cookie", "other=1")],
        Bytes::new(),
    )
    .await;
    w.assert_refused(&r, before, 401, "invalid_token", "no_session")
        .await;
}

// ───────────────────────────── challenge ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proof_is_a_use_dpop_nonce_challenge_describing_the_action() {
    let w = cookie_world("").await;
    let before = w.seen();
    let r = w.request("DELETE", USER).cookie(SID).send().await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.dpop_error().as_deref(), Some("use_dpop_nonce"));
    let www = r.header("www-authenticate").expect("WWW-Authenticate");
    assert!(www.starts_with("DPoP "), "{www}");
    assert!(www.contains("error_description=\""), "{www}");
    assert!(
        www.contains("algs=\"ES256 EdDSA"),
        "default algs are listed: {www}"
    );
    let nonce = r.header("dpop-nonce").expect("DPoP-Nonce");
    assert_nonce_shape(nonce);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let expose = r
        .header("access-control-expose-headers")
        .expect("Access-Control-Expose-Headers")
        .to_ascii_lowercase();
    assert!(
        expose.contains("dpop-nonce") && expose.contains("www-authenticate"),
        "{expose}"
    );

    let body = r.json();
    assert_eq!(body["error"], "use_dpop_nonce");
    assert!(body["error_description"].is_string());
    let c = &body["confirmation"];
    assert_eq!(c["route"], "delete-user");
    assert_eq!(c["method"], "DELETE");
    assert_eq!(c["target"], "/api/users/42");
    assert_eq!(c["htu"], w.url(USER).as_str());
    assert_eq!(c["body_sha256"], hex(&Sha256::digest(b"")));
    let expires = c["expires_at"].as_str().expect("expires_at is a string");
    let expires = humantime::parse_rfc3339(expires).expect("expires_at is RFC 3339");
    let left = expires
        .duration_since(SystemTime::now())
        .expect("expires_at is in the future");
    assert!(
        left > Duration::from_secs(50) && left <= Duration::from_secs(61),
        "default nonce_ttl is 60 s: {left:?}"
    );

    let audit = w.gw.audit_of(&r);
    assert_eq!(audit["event"], "challenged", "{audit}");
    assert_eq!(audit["route"], "delete-user");
    assert_eq!(audit["target"], "/api/users/42");
    assert_eq!(audit["session"].as_str().map(str::len), Some(16), "{audit}");
    assert_eq!(w.seen(), before);

    // Each challenge is a new nonce.
    let again = w.request("DELETE", USER).cookie(SID).send().await;
    assert_ne!(again.header("dpop-nonce"), Some(nonce));
}

// ───────────────────────────── happy path ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_confirmation_is_forwarded_once_with_provenance() {
    let w = cookie_world("").await;
    let key = es256();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    let proof = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .headers(&[("dpop", &proof), ("countersign-device", "forged")])
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let cid = r
        .header("countersign-confirmation-id")
        .expect("response carries Countersign-Confirmation-Id")
        .to_owned();
    let parsed = uuid::Uuid::parse_str(&cid).expect("confirmation id is a UUID");
    assert_eq!(parsed.get_version_num(), 7, "confirmation id is a UUID v7");

    let seen = w.upstream.seen();
    assert_eq!(seen.len(), before + 1, "forwarded exactly once");
    let up = &seen[before];
    assert_eq!(up.method, "DELETE");
    assert_eq!(up.uri, "/api/users/42");
    let h = |name: &str| {
        up.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(
        h("countersign-confirmation-id").as_deref(),
        Some(cid.as_str())
    );
    assert_eq!(
        h("countersign-device"),
        Some(key.jkt()),
        "forged client value replaced by the jkt"
    );
    assert_eq!(up.headers.get_all("countersign-device").iter().count(), 1);
    let provenance = h("countersign-provenance").expect("Countersign-Provenance present");
    assert_eq!(
        provenance.split('.').count(),
        3,
        "provenance is a compact JWS"
    );
    assert!(
        up.headers.get("dpop").is_none(),
        "the DPoP proof is never forwarded"
    );

    let accepted = w.gw.wait_for_audit(|a| a["event"] == "accepted").await;
    assert_eq!(accepted["confirmation_id"], cid.as_str());
    assert_eq!(accepted["device"], key.jkt());
    assert_eq!(accepted["route"], "delete-user");

    // The provenance token verifies with the JWKS the metrics listener serves, and says what
    // was confirmed.
    let jwks = send(
        &format!(
            "http://127.0.0.1:{}/.well-known/countersign/jwks.json",
            w.gw.metrics_port
        ),
        "GET",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(jwks.status, 200, "{}", jwks.text());
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&jwks.body).expect("JWKS JSON");
    let header = jsonwebtoken::decode_header(&provenance).expect("provenance header");
    let jwk = jwks
        .keys
        .iter()
        .find(|k| k.common.key_id == header.kid)
        .expect("the provenance kid is in the JWKS");
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.validate_aud = false;
    let decoding = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("JWKS key usable");
    let token = jsonwebtoken::decode::<Value>(&provenance, &decoding, &validation)
        .expect("provenance verifies");
    let p = token.claims;
    assert_eq!(p["cid"], cid.as_str());
    assert_eq!(p["jkt"], key.jkt());
    assert_eq!(p["htm"], "DELETE");
    assert_eq!(p["target"], "/api/users/42");
    assert_eq!(p["route"], "delete-user");
    assert_eq!(p["body_sha256"], hex(&Sha256::digest(b"")));
    assert_eq!(p["sid_hash"], accepted["session"]);
    assert_eq!(p["parent"], Value::Null);
    let (iat, exp) = (
        p["iat"].as_i64().unwrap_or(0),
        p["exp"].as_i64().unwrap_or(0),
    );
    assert!(
        (iat - now()).abs() <= 5 && exp > iat,
        "iat {iat}, exp {exp}"
    );
    let completed = w.gw.wait_for_audit(|a| a["event"] == "completed").await;
    assert_eq!(completed["confirmation_id"], cid.as_str());
    assert_eq!(completed["upstream_status"], 200);
    let events: Vec<Value> = w.gw.audit().iter().map(|a| a["event"].clone()).collect();
    assert_eq!(
        events,
        vec![json!("challenged"), json!("accepted"), json!("completed")]
    );

    // Credentials and proofs are never logged.
    let log = std::fs::read_to_string(&w.gw.audit_path).expect("audit log readable");
    assert!(!log.contains(SID) && !log.contains(&proof) && !log.contains(&nonce));
}

// ───────────────────────────── alg ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_is_bad_alg() {
    let w = cookie_world("").await;
    let key = es256();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    let header = json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.public_jwk()});
    let c = claims("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let proof = jws(&b64(header.to_string()), &b64(c.to_string()), "");
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "bad_alg")
        .await;
    // Even with a real signature appended.
    let proof = key.sign_jws(
        &header,
        &claims("DELETE", &w.url(USER), Some(&nonce), Some(SID)),
    );
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "bad_alg")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_signed_with_the_public_key_as_secret_is_bad_alg() {
    use aws_lc_rs::hmac;
    let w = cookie_world("").await;
    let key = es256();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    let jwk = key.public_jwk();
    let header = json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": jwk});
    let c = claims("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let input = format!("{}.{}", b64(header.to_string()), b64(c.to_string()));
    // The classic key-confusion attack: the verifier's "key" (the public JWK) used as HMAC secret.
    for secret in [
        jwk.to_string(),
        jwk["x"].as_str().unwrap_or_default().to_owned(),
    ] {
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            input.as_bytes(),
        );
        let proof = format!("{input}.{}", b64(tag.as_ref()));
        let r = w
            .request("DELETE", USER)
            .cookie(SID)
            .dpop(&proof)
            .send()
            .await;
        w.assert_refused(&r, before, 401, "invalid_dpop_proof", "bad_alg")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_is_accepted_under_both_names_and_only_with_its_key_type() {
    let w = cookie_world("").await;
    let ed = ed25519();
    for (n, alg) in ["EdDSA", "Ed25519"].into_iter().enumerate() {
        let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
        let header = json!({"typ": "dpop+jwt", "alg": alg, "jwk": ed.public_jwk()});
        let proof = ed.sign_jws(
            &header,
            &claims("DELETE", &w.url(USER), Some(&nonce), Some(SID)),
        );
        let r = w
            .request("DELETE", USER)
            .cookie(SID)
            .dpop(&proof)
            .send()
            .await;
        assert_eq!(r.status, 200, "alg {alg}: {}", r.text());
        assert_eq!(w.seen(), n + 1);
    }
    // An algorithm that does not fit the key type.
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    for alg in ["ES256", "ES384", "RS256"] {
        let header = json!({"typ": "dpop+jwt", "alg": alg, "jwk": ed.public_jwk()});
        let proof = ed.sign_jws(
            &header,
            &claims("DELETE", &w.url(USER), Some(&nonce), Some(SID)),
        );
        let r = w
            .request("DELETE", USER)
            .cookie(SID)
            .dpop(&proof)
            .send()
            .await;
        w.assert_refused(&r, before, 401, "invalid_dpop_proof", "bad_alg")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_not_in_confirmation_algs_is_bad_alg() {
    let w = cookie_world("confirmation: { algs: [ES256] }").await;
    let r = w.request("DELETE", USER).cookie(SID).send().await;
    let www = r.header("www-authenticate").unwrap_or_default().to_owned();
    assert!(
        www.contains("algs=\"ES256\""),
        "only the configured algs are listed: {www}"
    );
    let nonce = r.header("dpop-nonce").expect("DPoP-Nonce").to_owned();
    let before = w.seen();
    let proof = ed25519().proof("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "bad_alg")
        .await;
}

// ───────────────────────────── jwk ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_jwk_is_bad_jwk() {
    let w = cookie_world("").await;
    let key = es256();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    let mut jwk = key.public_jwk();
    jwk["d"] = json!(b64(rand::random::<[u8; 32]>()));
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
    let proof = key.sign_jws(
        &header,
        &claims("DELETE", &w.url(USER), Some(&nonce), Some(SID)),
    );
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "bad_jwk")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oct_jwk_is_bad_jwk() {
    let w = cookie_world("").await;
    let key = es256();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": {"kty": "oct", "k": b64(rand::random::<[u8; 32]>())}});
    let proof = key.sign_jws(
        &header,
        &claims("DELETE", &w.url(USER), Some(&nonce), Some(SID)),
    );
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "bad_jwk")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_references_without_jwk_are_bad_jwk() {
    let w = cookie_world("").await;
    let key = es256();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    let references = [
        json!({"typ": "dpop+jwt", "alg": "ES256", "jku": "https://attacker.example/jwks.json"}),
        json!({"typ": "dpop+jwt", "alg": "ES256", "kid": "device-1"}),
        json!({"typ": "dpop+jwt", "alg": "ES256", "x5u": "https://attacker.example/cert.pem"}),
        json!({"typ": "dpop+jwt", "alg": "ES256"}),
        json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": "not an object"}),
    ];
    for header in references {
        let proof = key.sign_jws(
            &header,
            &claims("DELETE", &w.url(USER), Some(&nonce), Some(SID)),
        );
        let r = w
            .request("DELETE", USER)
            .cookie(SID)
            .dpop(&proof)
            .send()
            .await;
        w.assert_refused(&r, before, 401, "invalid_dpop_proof", "bad_jwk")
            .await;
    }
}

// ───────────────────────────── signature, typ ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_by_another_key_is_bad_signature() {
    let w = cookie_world("").await;
    let (claimed, signer) = (es256(), es256());
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    let proof = signer.sign_jws(
        &header_of(&claimed),
        &claims("DELETE", &w.url(USER), Some(&nonce), Some(SID)),
    );
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "bad_signature")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_typ_is_bad_typ() {
    let w = cookie_world("").await;
    let key = ed25519();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    for typ in [
        json!("JWT"),
        json!("at+jwt"),
        json!("DPOP+JWT"),
        Value::Null,
    ] {
        let mut header = header_of(&key);
        if typ.is_null() {
            header.as_object_mut().map(|h| h.remove("typ"));
        } else {
            header["typ"] = typ;
        }
        let proof = key.sign_jws(
            &header,
            &claims("DELETE", &w.url(USER), Some(&nonce), Some(SID)),
        );
        let r = w
            .request("DELETE", USER)
            .cookie(SID)
            .dpop(&proof)
            .send()
            .await;
        w.assert_refused(&r, before, 401, "invalid_dpop_proof", "bad_typ")
            .await;
    }
}

// ───────────────────────────── iat ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iat_too_old_is_stale_proof() {
    let w = cookie_world("").await;
    let key = es256();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    let mut c = claims("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    c["iat"] = json!(now() - 120);
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&key.sign_jws(&header_of(&key), &c))
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "stale_proof")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iat_in_the_future_is_stale_proof() {
    let w = cookie_world("").await;
    let key = es256();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    let mut c = claims("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    c["iat"] = json!(now() + 60);
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&key.sign_jws(&header_of(&key), &c))
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "stale_proof")
        .await;
}

// ───────────────────────────── htm, htu ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htm_mismatch() {
    let w = cookie_world("").await;
    let key = es256();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    for htm in ["POST", "delete", "GET"] {
        let proof = key.proof(htm, &w.url(USER), Some(&nonce), Some(SID));
        let r = w
            .request("DELETE", USER)
            .cookie(SID)
            .dpop(&proof)
            .send()
            .await;
        w.assert_refused(&r, before, 401, "invalid_dpop_proof", "htm_mismatch")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htu_of_another_host_path_or_scheme_is_htu_mismatch() {
    let w = cookie_world("").await;
    let key = es256();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    let port = w.gw.port;
    for htu in [
        format!("http://attacker.example:{port}/api/users/42"),
        format!("http://127.0.0.1:{}/api/users/42", port.wrapping_add(1)),
        format!("http://127.0.0.1:{port}/api/users/43"),
        format!("http://127.0.0.1:{port}/api/users/42/"),
        format!("https://127.0.0.1:{port}/api/users/42"),
        "/api/users/42".to_string(),
    ] {
        let proof = key.proof("DELETE", &htu, Some(&nonce), Some(SID));
        let r = w
            .request("DELETE", USER)
            .cookie(SID)
            .dpop(&proof)
            .send()
            .await;
        w.assert_refused(&r, before, 401, "invalid_dpop_proof", "htu_mismatch")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htu_with_the_default_port_is_normalised_and_accepted() {
    let w = cookie_world("").await;
    let key = es256();
    let cookie = cookie(SID);
    // The client addressed the gateway as plain `127.0.0.1` (port 80 in front of it).
    let headers = [("cookie", cookie.as_str()), ("host", "127.0.0.1")];
    let r = send(&w.url(USER), "DELETE", &headers, Bytes::new()).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["confirmation"]["htu"],
        "http://127.0.0.1/api/users/42"
    );
    let nonce = r.header("dpop-nonce").expect("DPoP-Nonce");
    let proof = key.proof(
        "DELETE",
        "http://127.0.0.1:80/api/users/42",
        Some(nonce),
        Some(SID),
    );
    let r = send(
        &w.url(USER),
        "DELETE",
        &[headers[0], headers[1], ("dpop", &proof)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(w.seen(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htu_host_and_scheme_case_is_normalised_and_accepted() {
    let w = cookie_world("").await;
    let key = es256();
    let cookie = cookie(SID);
    let port = w.gw.port;
    let cases = [
        (
            format!("gateway.example:{port}"),
            format!("HTTP://GateWay.EXAMPLE:{port}/api/users/42"),
        ),
        (
            format!("GATEWAY.Example:{port}"),
            format!("http://gateway.example:{port}/api/users/42"),
        ),
    ];
    for (n, (host, htu)) in cases.iter().enumerate() {
        let headers = [("cookie", cookie.as_str()), ("host", host.as_str())];
        let nonce = w
            .request("DELETE", USER)
            .headers(&headers)
            .challenge()
            .await;
        let proof = key.proof("DELETE", htu, Some(&nonce), Some(SID));
        let r = send(
            &w.url(USER),
            "DELETE",
            &[headers[0], headers[1], ("dpop", &proof)],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, 200, "Host {host}, htu {htu}: {}", r.text());
        assert_eq!(w.seen(), n + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htu_query_and_fragment_are_ignored() {
    let w = cookie_world("").await;
    let key = es256();
    let cookie = cookie(SID);
    let target = "/api/users/42?force=true";
    let url = w.url(target);
    let nonce = w.request("DELETE", target).cookie(SID).challenge().await;
    let htu = format!("{}?force=false&x=1#section", w.url(USER));
    let proof = key.proof("DELETE", &htu, Some(&nonce), Some(SID));
    let r = send(
        &url,
        "DELETE",
        &[("cookie", &cookie), ("dpop", &proof)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = w.upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].uri, "/api/users/42?force=true",
        "the target is forwarded exactly as received"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htu_percent_encoding_and_dot_segments_are_normalised_and_accepted() {
    let w = cookie_world("").await;
    let key = es256();
    let cookie = cookie(SID);
    let base = &w.gw.base;
    let cases = [
        // Request path, proof htu.
        ("/api/users/a%2fb", format!("{base}/api/users/a%2Fb")),
        ("/api/users/a%2Fb", format!("{base}/api/x/../users/./a%2fb")),
        ("/api/users/42", format!("{base}/api/users/%34%32")),
        ("/api/users/%7Ebob", format!("{base}/api/users/~bob")),
    ];
    for (n, (path, htu)) in cases.iter().enumerate() {
        let url = w.url(path);
        let nonce = w.request("DELETE", path).cookie(SID).challenge().await;
        let proof = key.proof("DELETE", htu, Some(&nonce), Some(SID));
        let r = send(
            &url,
            "DELETE",
            &[("cookie", &cookie), ("dpop", &proof)],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, 200, "{path} with htu {htu}: {}", r.text());
        assert_eq!(w.seen(), n + 1);
        assert_eq!(
            w.upstream.seen()[n].uri,
            *path,
            "forwarded exactly as received"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equivalent_forms_of_a_high_impact_target_never_bypass_confirmation() {
    let w = cookie_world("").await;
    let cookie = cookie(SID);
    // Each of these is, per RFC 3986 §6.2.2, the same URI as /api/users/42.
    let mut bypassed = Vec::new();
    for path in [
        "/api/./users/42",
        "/api/users/../users/42",
        "/api/x/../users/42",
        "/api/%75sers/42",
        "/api/user%73/42",
        "/%61pi/users/42",
    ] {
        let before = w.seen();
        let r = send(&w.url(path), "DELETE", &[("cookie", &cookie)], Bytes::new()).await;
        if !matches!(r.status, 400 | 401 | 404) || w.seen() != before {
            let uri = w.upstream.seen().get(before).map(|s| s.uri.clone());
            bypassed.push(format!(
                "DELETE {path} → {} (upstream saw {uri:?})",
                r.status
            ));
        }
    }
    assert!(
        bypassed.is_empty(),
        "forwarded without a confirmation:\n{}",
        bypassed.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_session_cookie_cannot_ride_on_a_confirmation() {
    // The attacker holds their own session (and device) plus a stolen cookie of a session whose
    // device they do not have. The gateway must not confirm one session and forward another.
    let w = cookie_world("").await;
    let key = es256();
    // The victim's session is bound to the victim's device.
    confirm(&w, OTHER_SID, &ed25519()).await;
    let (mine, stolen) = (cookie(SID), cookie(OTHER_SID));
    let both = format!("{mine}; {stolen}");
    let smuggled = [
        vec![("cookie", both.as_str())],
        vec![("cookie", mine.as_str()), ("cookie", stolen.as_str())],
    ];

    // Asking with both cookies: no session, so no nonce either.
    for headers in &smuggled {
        let before = w.seen();
        let r = send(&w.url(USER), "DELETE", headers, Bytes::new()).await;
        w.assert_refused(&r, before, 401, "invalid_token", "invalid_session")
            .await;
    }

    // A nonce fetched in the attacker's own session, and proofs that would confirm it (bound to
    // either credential), sent with the stolen cookie riding along.
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    for headers in &smuggled {
        for credential in [SID, OTHER_SID] {
            let before = w.seen();
            let proof = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(credential));
            let mut with_proof = headers.clone();
            with_proof.push(("dpop", &proof));
            let r = send(&w.url(USER), "DELETE", &with_proof, Bytes::new()).await;
            w.assert_refused(&r, before, 401, "invalid_token", "invalid_session")
                .await;
        }
    }

    // The refusals were the second cookie's doing: the same nonce, signed the same way, confirms
    // the attacker's own session alone, and only that session's cookie reaches the upstream.
    let proof = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let cookies: Vec<String> = w
        .upstream
        .last()
        .headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    assert_eq!(
        cookies,
        [mine],
        "the upstream got only the confirmed session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_host_from_an_untrusted_peer_does_not_change_the_htu() {
    let w = cookie_world("").await;
    let key = es256();
    let cookie = cookie(SID);
    let headers = [
        ("cookie", cookie.as_str()),
        ("x-forwarded-host", "attacker.example"),
        ("x-forwarded-proto", "https"),
    ];
    let r = send(&w.url(USER), "DELETE", &headers, Bytes::new()).await;
    assert_eq!(
        r.json()["confirmation"]["htu"],
        w.url(USER).as_str(),
        "X-Forwarded-* ignored from an untrusted peer"
    );
    let nonce = r.header("dpop-nonce").expect("DPoP-Nonce").to_owned();
    let before = w.seen();
    let proof = key.proof(
        "DELETE",
        "https://attacker.example/api/users/42",
        Some(&nonce),
        Some(SID),
    );
    let r = send(
        &w.url(USER),
        "DELETE",
        &[headers[0], headers[1], headers[2], ("dpop", &proof)],
        Bytes::new(),
    )
    .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "htu_mismatch")
        .await;
    let proof = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let r = send(
        &w.url(USER),
        "DELETE",
        &[headers[0], headers[1], headers[2], ("dpop", &proof)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_origin_is_the_htu_when_configured() {
    let w = cookie_world("public_origin: \"https://admin.example.com\"").await;
    let key = es256();
    let r = w.request("DELETE", USER).cookie(SID).send().await;
    assert_eq!(
        r.json()["confirmation"]["htu"],
        "https://admin.example.com/api/users/42"
    );
    let nonce = r.header("dpop-nonce").expect("DPoP-Nonce").to_owned();
    let before = w.seen();
    // The address the client happened to connect to is not the external URI.
    let proof = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "htu_mismatch")
        .await;
    let proof = key.proof(
        "DELETE",
        "https://ADMIN.example.com:443/api/users/42",
        Some(&nonce),
        Some(SID),
    );
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

// ───────────────────────────── claims, ath ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ath_of_another_credential_is_session_mismatch() {
    let w = cookie_world("").await;
    let key = es256();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    let proof = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(OTHER_SID));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "session_mismatch")
        .await;
    assert_eq!(
        w.gw.audit_of(&r)["device"],
        key.jkt(),
        "the audit names the device that tried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_mistyped_claims_are_missing_claim() {
    let w = cookie_world("").await;
    let key = es256();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    let mut cases = Vec::new();
    for name in ["ath", "jti", "htm", "htu", "iat"] {
        let mut c = claims("DELETE", &w.url(USER), Some(&nonce), Some(SID));
        c.as_object_mut().map(|m| m.remove(name));
        cases.push((format!("without {name}"), c));
    }
    let mut c = claims("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    c["iat"] = json!(now().to_string());
    cases.push(("string iat".into(), c));
    let mut c = claims("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    c["ath"] = json!(42);
    cases.push(("numeric ath".into(), c));
    for (what, c) in cases {
        let r = w
            .request("DELETE", USER)
            .cookie(SID)
            .dpop(&key.sign_jws(&header_of(&key), &c))
            .send()
            .await;
        assert_eq!(r.status, 401, "{what}");
        w.assert_refused(&r, before, 401, "invalid_dpop_proof", "missing_claim")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jti_longer_than_256_bytes_is_missing_claim() {
    let w = cookie_world("").await;
    let key = es256();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    let mut c = claims("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    c["jti"] = json!("j".repeat(257));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&key.sign_jws(&header_of(&key), &c))
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "missing_claim")
        .await;
    // 256 bytes exactly is fine.
    c["jti"] = json!("j".repeat(256));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&key.sign_jws(&header_of(&key), &c))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

// ───────────────────────────── nonce ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_nonce_is_use_dpop_nonce_with_a_fresh_nonce() {
    let w = cookie_world("").await;
    let key = es256();
    let first = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    let proof = key.proof("DELETE", &w.url(USER), None, Some(SID));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "use_dpop_nonce", "nonce_missing")
        .await;
    let fresh = r.header("dpop-nonce").expect("fresh DPoP-Nonce").to_owned();
    assert_ne!(fresh, first);
    assert_eq!(
        r.json()["confirmation"]["target"],
        "/api/users/42",
        "the 401 describes the action"
    );
    // The fresh nonce completes the confirmation, as an RFC 9449 client retrying once would.
    let proof = key.proof("DELETE", &w.url(USER), Some(&fresh), Some(SID));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_nonce_is_nonce_expired() {
    let w = cookie_world("").await;
    let key = es256();
    let _ = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    let forged = b64(rand::random::<[u8; 32]>());
    let proof = key.proof("DELETE", &w.url(USER), Some(&forged), Some(SID));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "use_dpop_nonce", "nonce_expired")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonce_of_another_session_is_action_mismatch() {
    let w = cookie_world("").await;
    let key = es256();
    let nonce = w
        .request("DELETE", USER)
        .cookie(OTHER_SID)
        .challenge()
        .await;
    let before = w.seen();
    let proof = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "use_dpop_nonce", "action_mismatch")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonce_of_another_target_is_action_mismatch() {
    let w = cookie_world("").await;
    let key = es256();
    let nonce = w
        .request("DELETE", "/api/users/43")
        .cookie(SID)
        .challenge()
        .await;
    let before = w.seen();
    let proof = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "use_dpop_nonce", "action_mismatch")
        .await;
    // Nor another query, nor another method.
    let nonce = w
        .request("DELETE", "/api/users/42?dry_run=false")
        .cookie(SID)
        .challenge()
        .await;
    let proof = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "use_dpop_nonce", "action_mismatch")
        .await;
    let nonce = w.request("POST", USER).cookie(SID).challenge().await;
    let proof = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "use_dpop_nonce", "action_mismatch")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonce_of_another_body_is_action_mismatch() {
    let w = cookie_world("").await;
    let key = es256();
    let cookie = cookie(SID);
    let nonce = w
        .request("POST", USER)
        .cookie(SID)
        .body(b"{\"role\":\"viewer\"}")
        .challenge()
        .await;
    let before = w.seen();
    let proof = key.proof("POST", &w.url(USER), Some(&nonce), Some(SID));
    let r = send(
        &w.url(USER),
        "POST",
        &[("cookie", &cookie), ("dpop", &proof)],
        Bytes::from_static(b"{\"role\":\"admin\"}"),
    )
    .await;
    w.assert_refused(&r, before, 401, "use_dpop_nonce", "action_mismatch")
        .await;
    assert_eq!(
        r.json()["confirmation"]["body_sha256"],
        hex(&Sha256::digest(b"{\"role\":\"admin\"}"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonce_bound_to_another_device_is_action_mismatch() {
    // The binding expires quickly, so the nonce's own device binding is what refuses key B
    // (with a live binding, the device check refuses it first: see the device test).
    const BINDING_TTL: Duration = Duration::from_millis(300);
    let w = world(
        "session: { kind: cookie, cookie: sid, binding_ttl: 300ms }",
        "",
    )
    .await;
    let (a, b) = (es256(), ed25519());
    // The nonce must be issued while the binding to A is live; a machine too slow for that
    // tries again in a fresh session rather than testing nothing.
    let (sid, nonce) = 'bound: {
        for attempt in 0..5 {
            let sid = format!("{SID}-{attempt}");
            let started = Instant::now();
            confirm(&w, &sid, &a).await;
            let nonce = w.request("DELETE", USER).cookie(&sid).challenge().await; // for device A
            if started.elapsed() < BINDING_TTL {
                break 'bound (sid, nonce);
            }
        }
        panic!("no challenge within {BINDING_TTL:?} of the confirmation that bound the session");
    };
    // Whenever the binding was last written, it is gone after this.
    tokio::time::sleep(BINDING_TTL + Duration::from_millis(100)).await;
    let before = w.seen();
    let proof = b.proof("DELETE", &w.url(USER), Some(&nonce), Some(&sid));
    let r = w
        .request("DELETE", USER)
        .cookie(&sid)
        .dpop(&proof)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "use_dpop_nonce", "action_mismatch")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_nonce_is_nonce_expired() {
    let w = cookie_world("confirmation: { nonce_ttl: 200ms }").await;
    let key = es256();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = w.seen();
    let proof = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "use_dpop_nonce", "nonce_expired")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_nonce_is_refused_and_counted() {
    let w = cookie_world("").await;
    let key = es256();
    let proof = confirm(&w, SID, &key).await;
    let before = w.seen();
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "use_dpop_nonce", "replay")
        .await;
    // A new proof over the consumed nonce: still a replay of the nonce.
    let nonce = {
        let c: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(proof.split('.').nth(1).expect("claims segment"))
                .expect("base64url"),
        )
        .expect("claims JSON");
        c["nonce"].as_str().expect("nonce claim").to_owned()
    };
    let again = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&again)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "use_dpop_nonce", "replay")
        .await;
    let metrics = w.gw.metrics().await;
    assert_metric(
        &metrics,
        r#"countersign_replays_blocked_total{route="delete-user"} 2"#,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_jti_with_a_fresh_nonce_is_invalid_dpop_proof_replay() {
    let w = cookie_world("").await;
    let key = es256();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let mut c = claims("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&key.sign_jws(&header_of(&key), &c))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let fresh = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    c["nonce"] = json!(fresh);
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&key.sign_jws(&header_of(&key), &c))
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "replay")
        .await;
    let metrics = w.gw.metrics().await;
    assert_metric(
        &metrics,
        r#"countersign_replays_blocked_total{route="delete-user"} 1"#,
    );
}

// ───────────────────────────── structure ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dpop_headers_are_malformed() {
    let w = cookie_world("").await;
    let key = es256();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    let p1 = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let p2 = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .headers(&[("dpop", &p1), ("dpop", &p2)])
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "malformed")
        .await;
    // Nor one header holding both (a list).
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .headers(&[("dpop", &format!("{p1}, {p2}"))])
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "malformed")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_segments_are_refused() {
    let w = cookie_world("").await;
    let key = es256();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    let valid = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let parts: Vec<&str> = valid.split('.').collect();
    let (h, c, s) = (parts[0], parts[1], parts[2]);
    let not_json = b64("not json {");
    let array = b64("[1,2,3]");
    let cases: Vec<(&str, String, &str)> = vec![
        ("header not base64url", jws("%%%", c, s), "malformed"),
        ("header padded", jws(&format!("{h}="), c, s), "malformed"),
        ("header not JSON", jws(&not_json, c, s), "malformed"),
        ("header not an object", jws(&array, c, s), "malformed"),
        ("header empty", jws("", c, s), "malformed"),
        ("claims not base64url", jws(h, "%%%", s), "malformed"),
        ("claims not JSON", jws(h, &not_json, s), "malformed"),
        ("claims not an object", jws(h, &array, s), "malformed"),
        ("signature not base64url", jws(h, c, "%%%"), "malformed"),
        (
            "signature with whitespace",
            jws(h, c, &format!("{} {}", &s[..10], &s[10..])),
            "malformed",
        ),
        ("two segments", format!("{h}.{c}"), "malformed"),
        ("four segments", format!("{valid}.{s}"), "malformed"),
        (
            "JSON instead of JWS",
            json!({"jwk": key.public_jwk()}).to_string(),
            "malformed",
        ),
        // Base64url alphabet but not decodable (length ≡ 1 mod 4): proof.rs reports it as a
        // signature that does not verify (documented decision); still invalid_dpop_proof.
        ("signature undecodable", jws(h, c, "A"), "bad_signature"),
        (
            "signature truncated",
            jws(h, c, &s[..s.len() - 4]),
            "bad_signature",
        ),
    ];
    for (what, proof, reason) in cases {
        let r = w
            .request("DELETE", USER)
            .cookie(SID)
            .dpop(&proof)
            .send()
            .await;
        assert_eq!(w.gw.audit_of(&r)["reason"], reason, "{what}");
        w.assert_refused(&r, before, 401, "invalid_dpop_proof", reason)
            .await;
        assert!(
            !String::from_utf8_lossy(&r.body).contains(h),
            "{what}: errors never echo the proof"
        );
    }
    // The nonce survived all of that: the original proof still works.
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&valid)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

// ───────────────────────────── device binding ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_device_after_first_use_binding_is_device_mismatch() {
    let w = cookie_world("").await;
    let (a, b) = (es256(), ed25519());
    confirm(&w, SID, &a).await;
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let before = w.seen();
    let proof = b.proof("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "device_mismatch")
        .await;
    assert_eq!(w.gw.audit_of(&r)["device"], b.jkt());
    // B keeps being refused with invalid_dpop_proof (no use_dpop_nonce loop) ...
    let fresh = r.header("dpop-nonce").expect("fresh DPoP-Nonce").to_owned();
    let proof = b.proof("DELETE", &w.url(USER), Some(&fresh), Some(SID));
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "device_mismatch")
        .await;
    // ... while A, with the same session, still confirms.
    confirm(&w, SID, &a).await;
    // And B is welcome in a new session.
    confirm(&w, OTHER_SID, &b).await;
}

// ───────────────────────────── bearer_jwt sessions ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_scheme_with_a_dpop_bound_token_is_a_downgrade() {
    let w = bearer_world().await;
    let key = es256();
    let token = token("sess-1", Some(&key.jkt()), now() + 600);
    let bearer = format!("Bearer {token}");
    let before = w.seen();
    let r = send(
        &w.url(USER),
        "DELETE",
        &[("authorization", &bearer)],
        Bytes::new(),
    )
    .await;
    w.assert_refused(&r, before, 401, "invalid_token", "invalid_session")
        .await;
    assert!(
        !String::from_utf8_lossy(&r.body).contains(&token),
        "errors never echo the token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_scheme_with_a_dpop_proof_is_mixed_schemes_invalid_request() {
    let w = bearer_world().await;
    let key = es256();
    let token = token("sess-1", Some(&key.jkt()), now() + 600);
    // Get a nonce legitimately first.
    let nonce = w.request("DELETE", USER).token(&token).challenge().await;
    let before = w.seen();
    let proof = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(&token));
    let bearer = format!("Bearer {token}");
    let r = send(
        &w.url(USER),
        "DELETE",
        &[("authorization", &bearer), ("dpop", &proof)],
        Bytes::new(),
    )
    .await;
    // §4 has no reason row for mixed schemes; the gateway files it under `malformed`.
    w.assert_refused(&r, before, 400, "invalid_request", "malformed")
        .await;
    assert_eq!(
        r.dpop_error().as_deref(),
        Some("invalid_request"),
        "the 400 names the scheme error in WWW-Authenticate too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_scheme_token_confirmed_by_its_cnf_key_reaches_the_upstream_as_bearer() {
    let w = bearer_world().await;
    let key = es256();
    let token = token("sess-1", Some(&key.jkt()), now() + 600);
    let auth = format!("DPoP {token}");
    let nonce = w.request("DELETE", USER).token(&token).challenge().await;
    let proof = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(&token));
    let r = send(
        &w.url(USER),
        "DELETE",
        &[("authorization", &auth), ("dpop", &proof)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = w.upstream.seen();
    assert_eq!(seen.len(), 1);
    let h = |name: &str| {
        seen[0]
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(h("authorization"), Some(format!("Bearer {token}")));
    assert_eq!(h("countersign-subject").as_deref(), Some("alice"));
    assert_eq!(h("countersign-device"), Some(key.jkt()));
    assert!(seen[0].headers.get("dpop").is_none());
    let accepted = w.gw.wait_for_audit(|a| a["event"] == "accepted").await;
    assert_eq!(accepted["subject"], "alice");
    let log = std::fs::read_to_string(&w.gw.audit_path).expect("audit log readable");
    assert!(!log.contains(&token), "the token is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proof_by_a_key_other_than_cnf_jkt_is_device_mismatch() {
    let w = bearer_world().await;
    let (bound, other) = (es256(), es256());
    let token = token("sess-1", Some(&bound.jkt()), now() + 600);
    let auth = format!("DPoP {token}");
    let nonce = w.request("DELETE", USER).token(&token).challenge().await;
    let before = w.seen();
    let proof = other.proof("DELETE", &w.url(USER), Some(&nonce), Some(&token));
    let r = send(
        &w.url(USER),
        "DELETE",
        &[("authorization", &auth), ("dpop", &proof)],
        Bytes::new(),
    )
    .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "device_mismatch")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_or_forged_token_is_invalid_token_invalid_session() {
    let w = bearer_world().await;
    let key = es256();
    let before = w.seen();
    let expired = token("sess-1", Some(&key.jkt()), now() - 600);
    let proof = key.proof("DELETE", &w.url(USER), None, Some(&expired));
    let r = send(
        &w.url(USER),
        "DELETE",
        &[
            ("authorization", &format!("DPoP {expired}")),
            ("dpop", &proof),
        ],
        Bytes::new(),
    )
    .await;
    w.assert_refused(&r, before, 401, "invalid_token", "invalid_session")
        .await;
    // Signed with another secret.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "admin", "sid": "sess-1", "exp": now() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-gateway-secret-0123456789abcdef")
            .expect("HMAC key"),
    )
    .expect("HS256 token encodes");
    let r = send(
        &w.url(USER),
        "DELETE",
        &[("authorization", &format!("DPoP {forged}"))],
        Bytes::new(),
    )
    .await;
    w.assert_refused(&r, before, 401, "invalid_token", "invalid_session")
        .await;
    // No credential at all.
    let r = send(&w.url(USER), "DELETE", &[], Bytes::new()).await;
    w.assert_refused(&r, before, 401, "invalid_token", "no_session")
        .await;
}

// ───────────────────────────── bodies ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_413_and_never_forwarded() {
    let w = cookie_world("confirmation: { max_body: 1KiB }").await;
    let before = w.seen();
    let body = Bytes::from(vec![b'x'; 2048]);
    let r = send(&w.url(USER), "POST", &[("cookie", &cookie(SID))], body).await;
    w.assert_refused(&r, before, 413, "invalid_request", "body_too_large")
        .await;
    assert!(
        r.header("dpop-nonce").is_none(),
        "no nonce for an action that cannot be confirmed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_up_to_max_body_are_confirmed_and_arrive_intact() {
    let w = cookie_world("").await;
    let key = es256();
    let cookie = cookie(SID);
    for (n, size) in [1024usize, 64 * 1024 + 1, 1024 * 1024]
        .into_iter()
        .enumerate()
    {
        let body: Vec<u8> = (0..size).map(|_| rand::random::<u8>()).collect();
        let body = Bytes::from(body);
        let digest: [u8; 32] = Sha256::digest(&body).into();
        let r = send(&w.url(USER), "POST", &[("cookie", &cookie)], body.clone()).await;
        assert_eq!(r.status, 401, "{size}: {}", r.text());
        assert_eq!(r.json()["confirmation"]["body_sha256"], hex(&digest));
        let nonce = r.header("dpop-nonce").expect("DPoP-Nonce");
        let proof = key.proof("POST", &w.url(USER), Some(nonce), Some(SID));
        let r = send(
            &w.url(USER),
            "POST",
            &[("cookie", &cookie), ("dpop", &proof)],
            body,
        )
        .await;
        assert_eq!(r.status, 200, "{size}: {}", r.text());
        let seen = w.upstream.seen();
        assert_eq!(seen.len(), n + 1);
        assert_eq!(seen[n].body_len, size);
        assert_eq!(
            seen[n].body_sha256, digest,
            "{size}-byte body arrives intact"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_body_is_confirmed() {
    let w = cookie_world("").await;
    let key = es256();
    let cookie = cookie(SID);
    let body = Bytes::from(vec![b'e'; 64 * 1024 + 1]);
    let headers = [("cookie", cookie.as_str()), ("expect", "100-continue")];
    let nonce = w
        .request("POST", USER)
        .headers(&headers)
        .body(&body)
        .challenge()
        .await;
    let proof = key.proof("POST", &w.url(USER), Some(&nonce), Some(SID));
    let r = send(
        &w.url(USER),
        "POST",
        &[headers[0], headers[1], ("dpop", &proof)],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = w.upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, body.len());
    assert_eq!(seen[0].body_sha256, <[u8; 32]>::from(Sha256::digest(&body)));
}

// ───────────────────────────── concurrency ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_32_concurrent_identical_retries_exactly_one_is_forwarded() {
    let w = cookie_world("").await;
    let key = es256();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let proof = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let headers = vec![
        ("cookie".to_string(), cookie(SID)),
        ("dpop".to_string(), proof),
    ];
    let replies = race("DELETE", vec![(w.url(USER), headers); 32]).await;
    one_winner(replies);
    assert_eq!(w.seen(), 1, "the upstream saw exactly one");
    let audit = w.gw.audit();
    assert_eq!(audit.iter().filter(|a| a["event"] == "accepted").count(), 1);
    assert_eq!(audit.iter().filter(|a| a["reason"] == "replay").count(), 31);
}

// ───────────────────────────── property ─────────────────────────────

/// A printable, header-safe string: visible ASCII and inner spaces.
fn random_header_value(rng: &mut StdRng, valid: &str) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b64char = |rng: &mut StdRng| B64[rng.random_range(0..B64.len())] as char;
    let mut value = match rng.random_range(0..6) {
        // Any visible ASCII.
        0 => (0..rng.random_range(1..300))
            .map(|_| rng.random_range(0x21u8..0x7F) as char)
            .collect(),
        // Three (or so) base64url segments.
        1 => (0..rng.random_range(1..6))
            .map(|_| {
                (0..rng.random_range(0..120))
                    .map(|_| b64char(rng))
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("."),
        // The valid proof with one character changed.
        2 => {
            let mut bytes = valid.as_bytes().to_vec();
            let i = rng.random_range(0..bytes.len());
            let mut c = b64char(rng) as u8;
            while c == bytes[i] {
                c = b64char(rng) as u8;
            }
            bytes[i] = c;
            String::from_utf8(bytes).unwrap_or_default()
        }
        // The valid proof truncated.
        3 => valid[..rng.random_range(0..valid.len())].to_string(),
        // The valid proof with junk inserted.
        4 => {
            let i = rng.random_range(0..valid.len());
            let junk: String = (0..rng.random_range(1..8))
                .map(|_| rng.random_range(0x20u8..0x7F) as char)
                .collect();
            format!("{}{junk}{}", &valid[..i], &valid[i..])
        }
        // Valid header and claims, random signature.
        _ => {
            let mut parts = valid.rsplitn(2, '.');
            let _ = parts.next();
            let signed = parts.next().unwrap_or_default();
            let sig: String = (0..86).map(|_| b64char(rng)).collect();
            format!("{signed}.{sig}")
        }
    };
    // Header values travel trimmed; keep what is sent what is received.
    value = value.trim().to_string();
    if value.is_empty() {
        value.push('x');
    }
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_dpop_headers_never_succeed_never_fail_open_and_never_reach_the_upstream() {
    // Each refusal of a valid session carries a fresh nonce: 200 of them, none consumed.
    let w = cookie_world("confirmation: { max_outstanding_per_session: 1000 }").await;
    let key = es256();
    let nonce = w.request("DELETE", USER).cookie(SID).challenge().await;
    let valid = key.proof("DELETE", &w.url(USER), Some(&nonce), Some(SID));
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<String> = (0..200)
        .map(|_| random_header_value(&mut rng, &valid))
        .collect();
    let reasons = [
        "malformed",
        "bad_typ",
        "bad_alg",
        "bad_jwk",
        "bad_signature",
        "missing_claim",
        "htm_mismatch",
        "htu_mismatch",
        "stale_proof",
        "session_mismatch",
        "device_mismatch",
        "nonce_missing",
        "nonce_expired",
        "replay",
        "action_mismatch",
    ];
    for value in &values {
        let r = w
            .request("DELETE", USER)
            .cookie(SID)
            .dpop(value)
            .send()
            .await;
        assert!(
            r.status != 200 && r.status < 500,
            "seed {seed}: DPoP {value:?} → {}",
            r.text()
        );
        assert_eq!(r.status, 401, "seed {seed}: DPoP {value:?} → {}", r.text());
        let error = r.dpop_error().unwrap_or_default();
        assert!(
            matches!(error.as_str(), "invalid_dpop_proof" | "use_dpop_nonce"),
            "seed {seed}: {value:?} → {error}"
        );
        let audit = w.gw.audit_of(&r);
        assert_eq!(audit["event"], "rejected", "seed {seed}: {value:?}");
        let reason = audit["reason"].as_str().unwrap_or_default();
        assert!(
            reasons.contains(&reason),
            "seed {seed}: {value:?} → reason {reason}"
        );
        assert_eq!(w.seen(), 0, "seed {seed}: {value:?} reached the upstream");
    }
    // And the genuine proof still goes through afterwards.
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&valid)
        .send()
        .await;
    assert_eq!(r.status, 200, "seed {seed}: {}", r.text());
}

// ───────────────────────────── metrics ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_each_decision_exactly() {
    let w = cookie_world("").await;
    let key = es256();
    // passthrough
    let r = send(
        &w.url("/api/users"),
        "GET",
        &[("cookie", &cookie(SID))],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    // challenge + accept
    let proof = confirm(&w, SID, &key).await;
    // replay
    let r = w
        .request("DELETE", USER)
        .cookie(SID)
        .dpop(&proof)
        .send()
        .await;
    assert_eq!(r.status, 401);
    let metrics = w.gw.metrics().await;
    // Every series of each counter, with its value: nothing else was counted.
    let series = |name: &str| -> BTreeSet<&str> {
        metrics
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .collect()
    };
    assert_eq!(
        series("countersign_requests_total"),
        BTreeSet::from([
            r#"countersign_requests_total{decision="accepted",route="delete-user"} 1"#,
            r#"countersign_requests_total{decision="challenged",route="delete-user"} 1"#,
            r#"countersign_requests_total{decision="passthrough",route="default"} 1"#,
            r#"countersign_requests_total{decision="rejected",route="delete-user"} 1"#,
        ]),
        "exactly these decisions are counted"
    );
    assert_eq!(
        series("countersign_rejections_total"),
        BTreeSet::from([r#"countersign_rejections_total{reason="replay",route="delete-user"} 1"#]),
        "exactly these rejections are counted"
    );
    assert_eq!(
        series("countersign_replays_blocked_total"),
        BTreeSet::from([r#"countersign_replays_blocked_total{route="delete-user"} 1"#]),
    );
    assert!(
        metrics.contains("countersign_proof_verify_seconds_count"),
        "{metrics}"
    );
    assert!(
        !metrics.contains(SID) && !metrics.contains("/api/users/42"),
        "labels never carry unbounded values"
    );
}

#[tokio::test]
async fn a_session_past_its_challenge_quota_is_refused_and_others_still_confirm() {
    let w = cookie_world("confirmation: { max_outstanding_per_session: 3 }").await;
    for _ in 0..3 {
        w.request("DELETE", USER)
            .cookie("s-greedy")
            .challenge()
            .await;
    }
    let before = w.seen();
    let r = w.request("DELETE", USER).cookie("s-greedy").send().await;
    let record = w
        .assert_refused(&r, before, 429, "too_many_requests", "too_many_challenges")
        .await;
    assert_eq!(record["session"].as_str().map(str::len), Some(16));
    assert_eq!(r.header("retry-after"), Some("60"));
    assert!(
        r.header("dpop-nonce").is_none(),
        "a refused session gets no nonce"
    );
    // Another session on the same client is not held back by it.
    let key = es256();
    let r = w
        .request("DELETE", USER)
        .cookie("s-other")
        .confirm(&key)
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_consumed_challenge_gives_its_quota_slot_back() {
    let w = cookie_world("confirmation: { max_outstanding_per_session: 2 }").await;
    let key = es256();
    // Each confirmation holds one slot between its challenge and its retry, then frees it.
    for _ in 0..5 {
        let r = w
            .request("DELETE", USER)
            .cookie("s-busy")
            .confirm(&key)
            .await;
        assert_eq!(r.status, 200);
    }
    w.request("DELETE", USER).cookie("s-busy").challenge().await;
    w.request("DELETE", USER).cookie("s-busy").challenge().await;
    let before = w.seen();
    let r = w.request("DELETE", USER).cookie("s-busy").send().await;
    w.assert_refused(&r, before, 429, "too_many_requests", "too_many_challenges")
        .await;
}

#[tokio::test]
async fn invented_sessions_from_one_client_meet_its_network_quota() {
    let w = cookie_world("confirmation: { max_outstanding_per_ip: 20 }").await;
    // Cookie sessions need no credential the gateway can check: each invented cookie is a new
    // session, so only the client's own quota bounds what it can make the store hold.
    for i in 0..20 {
        let sid = format!("s-invented-{i}");
        w.request("DELETE", USER).cookie(&sid).challenge().await;
    }
    let before = w.seen();
    let r = w
        .request("DELETE", USER)
        .cookie("s-invented-20")
        .send()
        .await;
    w.assert_refused(&r, before, 429, "too_many_requests", "too_many_challenges")
        .await;
    let metrics = w.gw.metrics().await;
    assert!(
        metrics.contains(
            r#"countersign_rejections_total{reason="too_many_challenges",route="delete-user"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_invented_sessions_from_one_client_leaves_other_clients_confirming() {
    // Default quotas: 1024 unconsumed challenges per client network.
    let w = Arc::new(cookie_world("").await);
    let flood = (0..16).map(|worker| {
        let w = w.clone();
        tokio::spawn(async move {
            let (mut challenged, mut refused) = (0, 0);
            for i in 0..125 {
                let cookie = format!("sid=flood-{worker}-{i}");
                let r = send(&w.url(USER), "DELETE", &[("cookie", &cookie)], Bytes::new()).await;
                match r.status {
                    401 => challenged += 1,
                    429 => refused += 1,
                    other => panic!("flood request answered {other}: {}", r.text()),
                }
            }
            (challenged, refused)
        })
    });
    let (mut challenged, mut refused) = (0, 0);
    for worker in flood {
        let (c, r) = worker.await.expect("flood worker");
        challenged += c;
        refused += r;
    }
    assert_eq!((challenged, refused), (1024, 2000 - 1024));

    // Another client confirms as if nothing happened, and only its action reaches the upstream.
    let other: std::net::IpAddr = "127.0.0.2".parse().expect("loopback");
    let cookie = ("cookie", "sid=s-legit");
    let r = send_from(other, &w.url(USER), "DELETE", &[cookie], Bytes::new()).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let nonce = r
        .header("dpop-nonce")
        .expect("a nonce for the other client");
    let key = es256();
    let proof = key.proof("DELETE", &w.url(USER), Some(nonce), Some("s-legit"));
    let r = send_from(
        other,
        &w.url(USER),
        "DELETE",
        &[cookie, ("dpop", &proof)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(w.seen(), 1);
}
