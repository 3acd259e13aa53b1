//! Redirects keep provenance (CONTRACT §3–§5): `Location`, `Content-Location` and `Refresh`
//! rewriting; continuation nonces after a confirmed request is redirected to another high-impact
//! action (301/302/303 → GET without body, 307/308 → same method and body), their single use and
//! their bindings (session, device, target, TTL); chains that keep the root and immediate parent;
//! `public_origin` with a path prefix; `X-Forwarded-*` / `Forwarded` from trusted and untrusted
//! peers; `Set-Cookie` pass-through and session rotation carrying (or not) the device binding.
//!
//! The upstream is the recording upstream of tests/support with the app of this file (below),
//! which issues each kind of redirect. Every refusal asserts the status, the `WWW-Authenticate` error, the audit record of
//! that very request (by `Countersign-Request-Id`) and that the upstream saw nothing new.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use countersign::tools::device_key::DeviceKey;
use hyper::Response;
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::world::{assert_nonce_shape, es256, hex, World};
use support::{full, one_winner, race, send, Body, Reply, Seen, Upstream};

/// The session credential (cookie value) of most tests.
const SID: &str = "alice-session-7c1d0e9b";
/// A second, unrelated session.
const OTHER_SID: &str = "mallory-session-3a8f2c61";
/// The public origin of most worlds.
const PUBLIC: &str = "https://admin.example";
/// SHA-256 of the empty body.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

const COOKIE_SESSION: &str = "session: { kind: cookie, cookie: sid }";

/// One route per upstream behaviour; `{upstream}` is replaced by the recording upstream.
const ROUTES: &str = r#"
upstreams: { legacy: { address: "{upstream}" } }
routes:
  - name: create-deploy
    match: { methods: [POST], path: "/api/deploys" }
    upstream: legacy
    risk: high
  - name: confirm-deploy
    match: { methods: [GET], path: "/api/deploys/{id}/confirm" }
    upstream: legacy
    risk: high
  - name: redirect
    match: { methods: [POST], path: "/api/redirect/{kind}" }
    upstream: legacy
    risk: high
  - name: delete-user
    match: { methods: [POST], path: "/api/users/{id}/delete" }
    upstream: legacy
    risk: high
  - name: transfer
    match: { methods: [POST], path: "/api/transfers" }
    upstream: legacy
    risk: high
  - name: transfer-retry
    match: { methods: [POST], path: "/api/transfers/retry" }
    upstream: legacy
    risk: high
  - name: config
    match: { methods: [PUT], path: "/api/config" }
    upstream: legacy
    risk: high
  - name: config-v2
    match: { methods: [PUT], path: "/api/config/v2" }
    upstream: legacy
    risk: high
  - name: purge
    match: { methods: [POST], path: "/api/purge" }
    upstream: legacy
    risk: high
  - name: purge-confirm
    match: { methods: [GET], path: "/api/purge/confirm" }
    upstream: legacy
    risk: high
  - name: chain
    match: { methods: [GET, POST], path: "/api/chain/{step}" }
    upstream: legacy
    risk: high
  - name: rotate
    match: { methods: [POST], path: "/api/session/rotate" }
    upstream: legacy
    risk: high
  - name: default
    match: { path: "/{*rest}" }
    upstream: legacy
    risk: low
"#;

// ───────────────────────────── the legacy app ─────────────────────────────

/// A legacy admin app that redirects in every way an app does.
async fn legacy() -> Upstream {
    Upstream::start_with(|seen, addr| async move { legacy_app(&seen, addr) }).await
}

/// How the app answers `seen`; `addr` is its own address.
fn legacy_app(seen: &Seen, addr: SocketAddr) -> Response<Body> {
    let header = |name: &str| seen.header(name).unwrap_or_default().to_string();
    let (host, rotate_to) = (header("host"), header("x-rotate-to"));
    // What an app that believes its proxy thinks its public URL is.
    let proxied = format!(
        "{}://{}{}",
        header("x-forwarded-proto"),
        header("x-forwarded-host"),
        header("x-forwarded-prefix")
    );
    let own = format!("http://{addr}");
    let rotate = || {
        (
            "set-cookie",
            format!("sid={rotate_to}; Path=/; HttpOnly; SameSite=Lax"),
        )
    };
    let path = seen.path();
    let (status, headers): (u16, Vec<(&str, String)>) = match path {
        // High-impact actions that redirect.
        "/api/deploys" => (
            302,
            vec![
                ("location", format!("{own}{FOLLOW_UP}")),
                ("content-location", format!("{own}/api/deploys/17")),
            ],
        ),
        "/api/redirect/hosted" => (302, vec![("location", format!("http://{host}{FOLLOW_UP}"))]),
        "/api/redirect/proxy-aware" => (302, vec![("location", format!("{proxied}{FOLLOW_UP}"))]),
        // Whatever Location the test asks for (`{own}` = the upstream's origin).
        "/api/redirect/to" => (
            302,
            vec![("location", header("x-location").replace("{own}", &own))],
        ),
        "/api/redirect/foreign" => (
            302,
            vec![(
                "location",
                "https://elsewhere.example/api/deploys/17/confirm".into(),
            )],
        ),
        "/api/redirect/rotating" => (303, vec![("location", FOLLOW_UP.into()), rotate()]),
        "/api/users/42/delete" => (303, vec![("location", "/users?deleted=42".into())]),
        "/api/transfers" => (307, vec![("location", "/api/transfers/retry".into())]),
        "/api/config" => (308, vec![("location", format!("{own}/api/config/v2"))]),
        "/api/purge" => (301, vec![("location", format!("{own}/api/purge/confirm"))]),
        "/api/chain/a" => (303, vec![("location", "/api/chain/b".into())]),
        "/api/chain/b" => (303, vec![("location", format!("{own}/api/chain/c"))]),
        // Session rotation, on a high-impact and on a low-risk route.
        "/api/session/rotate" | "/session/rotate" => (
            200,
            vec![rotate(), ("set-cookie", "theme=dark; Path=/".into())],
        ),
        // Low-risk pages.
        "/pages/moved" => (
            302,
            vec![("location", format!("{own}/pages/new?from=moved"))],
        ),
        "/pages/moved-upper" => (302, vec![("location", format!("HTTP://{addr}/Pages/New"))]),
        "/pages/moved-relative" => (302, vec![("location", "/pages/new".into())]),
        "/pages/moved-foreign" => (
            302,
            vec![("location", "https://elsewhere.example/pages/new".into())],
        ),
        // Same host, a port that merely starts with the upstream's port.
        "/pages/moved-lookalike" => (302, vec![("location", format!("{own}0/pages/new"))]),
        "/pages/hosted" => (302, vec![("location", format!("http://{host}/pages/new"))]),
        "/pages/refresh" => (
            200,
            vec![
                ("refresh", format!("0; url={own}/x")),
                ("content-location", format!("{own}/here")),
            ],
        ),
        "/pages/refresh-quoted" => (200, vec![("refresh", format!("3;URL='{own}/q'"))]),
        "/pages/refresh-foreign" => (
            200,
            vec![
                ("refresh", "5; url=https://elsewhere.example/x".into()),
                ("content-location", "/here".into()),
            ],
        ),
        _ => (200, vec![("content-type", "application/json".into())]),
    };
    let mut resp = Response::builder().status(status);
    for (name, value) in headers {
        resp = resp.header(name, value);
    }
    let text = format!(r#"{{"ok":true,"path":"{path}","len":{}}}"#, seen.body_len);
    resp.body(full(&text)).expect("valid test response")
}

// ───────────────────────────── the world ─────────────────────────────

/// A cookie-session world in front of the legacy app; `public_origin` when given, and `extra`
/// top-level config.
async fn start(public_origin: Option<&str>, extra: &str) -> World {
    build(public_origin, COOKIE_SESSION, extra).await
}

async fn build(public_origin: Option<&str>, session: &str, extra: &str) -> World {
    let public_line = public_origin.map_or_else(String::new, |o| format!("public_origin: \"{o}\""));
    World::on(
        legacy().await,
        &format!("{public_line}\n{session}\n{extra}\n{ROUTES}"),
    )
    .await
}

/// The `accepted` record of a confirmation.
async fn accepted_record(w: &World, cid: &str) -> Value {
    w.gw.wait_for_audit(|r| r["event"] == "accepted" && r["confirmation_id"] == cid)
        .await
}

/// Asserts that `r` is the accepted follow-up of a redirect: the response, its `accepted`
/// audit record (`parent_id` = `root`, `via` = `via`), the request the upstream received
/// (method, target, body, confirmation id) and its provenance claims. Returns its id.
async fn assert_continued(
    w: &World,
    r: &Reply,
    (method, target, body): (&str, &str, &[u8]),
    root: &str,
    via: &str,
) -> String {
    assert!(matches!(r.status / 100, 2 | 3), "follow-up: {}", r.text());
    let cid = r
        .header("countersign-confirmation-id")
        .expect("the follow-up is confirmed")
        .to_string();
    assert_ne!(cid, root, "the follow-up is a confirmation of its own");
    assert_ne!(cid, via);
    let body_sha256 = hex(&Sha256::digest(body));

    let accepted = accepted_record(w, &cid).await;
    assert_eq!(accepted["parent_id"], root, "audit: {accepted}");
    assert_eq!(accepted["via"], via, "audit: {accepted}");
    assert_eq!(accepted["method"], method, "audit: {accepted}");
    assert_eq!(accepted["target"], target, "audit: {accepted}");
    assert_eq!(accepted["body_sha256"], body_sha256, "audit: {accepted}");
    let completed =
        w.gw.wait_for_audit(|a| a["event"] == "completed" && a["confirmation_id"] == cid)
            .await;
    assert_eq!(completed["parent_id"], root, "audit: {completed}");

    // Accepted without a fresh challenge round-trip.
    let challenged =
        w.gw.audit()
            .into_iter()
            .filter(|a| a["event"] == "challenged" && a["target"] == target)
            .count();
    assert_eq!(
        challenged, 0,
        "a continuation needs no challenge for {target}"
    );

    let seen = w.upstream.last();
    assert_eq!((seen.method.as_str(), seen.uri.as_str()), (method, target));
    assert_eq!(
        &seen.body[..],
        body,
        "the follow-up body reaches the upstream"
    );
    assert_eq!(
        seen.header("countersign-confirmation-id"),
        Some(cid.as_str())
    );
    assert!(seen.header("dpop").is_none(), "DPoP is never forwarded");
    let claims = seen.provenance();
    assert_eq!(claims["cid"], cid, "provenance: {claims}");
    assert_eq!(claims["parent"], root, "provenance: {claims}");
    assert_eq!(claims["via"], via, "provenance: {claims}");
    assert_eq!(claims["htm"], method, "provenance: {claims}");
    assert_eq!(claims["target"], target, "provenance: {claims}");
    assert_eq!(claims["body_sha256"], body_sha256, "provenance: {claims}");
    cid
}

/// The id and continuation nonce of a confirmed request's redirect, after checking the status,
/// the (rewritten) `Location` and that the nonce is exposed to browser clients.
fn continuation_of(r: &Reply, status: u16, location: &str) -> (String, String) {
    assert_eq!(r.status, status, "redirect: {}", r.text());
    assert_eq!(r.header("location"), Some(location));
    let cid = r
        .header("countersign-confirmation-id")
        .expect("the redirect answers a confirmed request")
        .to_string();
    let nonce = r
        .header("dpop-nonce")
        .unwrap_or_else(|| panic!("a redirect to {location} carries a continuation DPoP-Nonce"))
        .to_string();
    assert_nonce_shape(&nonce);
    let expose = r
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(expose.contains("dpop-nonce"), "exposed: {expose}");
    (cid, nonce)
}

/// Confirms `POST /api/deploys` in session `sid` and returns (its id, the continuation nonce
/// for `GET` [`FOLLOW_UP`]).
async fn deploy(w: &World, key: &DeviceKey, sid: &str) -> (String, String) {
    let r = w
        .request("POST", "/api/deploys")
        .cookie(sid)
        .body(b"{\"service\":\"billing\"}")
        .confirm(key)
        .await;
    continuation_of(&r, 302, &format!("{}{FOLLOW_UP}", w.public))
}

/// Where `POST /api/deploys` (and its variants) redirect: a high-impact GET, with a query.
const FOLLOW_UP: &str = "/api/deploys/17/confirm?from=create";

// ───────────────────────────── rewriting ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_origin_locations_move_to_the_public_origin_and_others_stay() {
    let w = start(Some(PUBLIC), "").await;
    let own = w.upstream.origin();
    let cases = [
        ("/pages/moved", format!("{PUBLIC}/pages/new?from=moved")),
        // Scheme and host compare case-insensitively; the path keeps its case.
        ("/pages/moved-upper", format!("{PUBLIC}/Pages/New")),
        ("/pages/moved-relative", "/pages/new".to_string()),
        (
            "/pages/moved-foreign",
            "https://elsewhere.example/pages/new".to_string(),
        ),
        // `http://127.0.0.1:4000` is no prefix-origin of `http://127.0.0.1:40000`.
        ("/pages/moved-lookalike", format!("{own}0/pages/new")),
    ];
    for (path, expected) in cases {
        let r = send(&format!("{}{path}", w.gw.base), "GET", &[], Bytes::new()).await;
        assert_eq!(r.status, 302, "{path}: {}", r.text());
        assert_eq!(r.header("location"), Some(expected.as_str()), "{path}");
        assert!(
            r.header("dpop-nonce").is_none(),
            "a low-risk redirect never carries a nonce"
        );
    }

    // An absolute Location built from the `Host` the upstream was sent is its own origin too.
    let r = send(
        &format!("{}/pages/hosted", w.gw.base),
        "GET",
        &[("host", "legacy-admin.internal")],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        w.upstream.last().header("host"),
        Some("legacy-admin.internal")
    );
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(r.header("location"), Some(&*format!("{PUBLIC}/pages/new")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_and_content_location_are_rewritten_like_location() {
    let w = start(Some(PUBLIC), "").await;

    let r = send_get(&w, "/pages/refresh").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("refresh"), Some(&*format!("0; url={PUBLIC}/x")));
    assert_eq!(
        r.header("content-location"),
        Some(&*format!("{PUBLIC}/here"))
    );

    let r = send_get(&w, "/pages/refresh-quoted").await;
    assert_eq!(r.header("refresh"), Some(&*format!("3;URL='{PUBLIC}/q'")));

    let r = send_get(&w, "/pages/refresh-foreign").await;
    assert_eq!(
        r.header("refresh"),
        Some("5; url=https://elsewhere.example/x")
    );
    assert_eq!(r.header("content-location"), Some("/here"));

    // The same on a confirmed (buffered, high-impact) response.
    let key = es256();
    let r = w
        .request("POST", "/api/deploys")
        .cookie(SID)
        .body(b"{}")
        .confirm(&key)
        .await;
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(r.header("location"), Some(&*format!("{PUBLIC}{FOLLOW_UP}")));
    assert_eq!(
        r.header("content-location"),
        Some(&*format!("{PUBLIC}/api/deploys/17"))
    );
}

async fn send_get(w: &World, path: &str) -> Reply {
    send(&format!("{}{path}", w.gw.base), "GET", &[], Bytes::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_from_the_upstream_passes_through() {
    let w = start(Some(PUBLIC), "").await;
    let expected = [
        "sid=fresh-low-1; Path=/; HttpOnly; SameSite=Lax",
        "theme=dark; Path=/",
    ];
    let r = w
        .request("GET", "/session/rotate")
        .cookie(SID)
        .headers(&[("x-rotate-to", "fresh-low-1")])
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let cookies: Vec<_> = r.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, expected, "low-risk Set-Cookie passes untouched");

    let key = es256();
    let r = w
        .request("POST", "/api/session/rotate")
        .cookie(SID)
        .headers(&[("x-rotate-to", "fresh-high-1")])
        .confirm(&key)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let cookies: Vec<_> = r.headers.get_all("set-cookie").iter().collect();
    assert_eq!(
        cookies,
        [
            "sid=fresh-high-1; Path=/; HttpOnly; SameSite=Lax",
            "theme=dark; Path=/"
        ],
        "Set-Cookie of a confirmed response passes untouched"
    );
}

// ───────────────────────────── continuations accepted ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_after_302_is_a_get_without_body_accepted_with_the_parent_id() {
    let w = start(Some(PUBLIC), "").await;
    let key = es256();
    let (root, nonce) = deploy(&w, &key, SID).await;

    let original = w.upstream.last();
    assert_eq!(
        (original.method.as_str(), original.uri.as_str()),
        ("POST", "/api/deploys")
    );
    assert_eq!(original.provenance()["parent"], Value::Null);
    let accepted = accepted_record(&w, &root).await;
    assert_eq!(accepted["parent_id"], Value::Null, "audit: {accepted}");
    w.gw.wait_for_audit(|a| {
        a["event"] == "completed" && a["confirmation_id"] == root && a["upstream_status"] == 302
    })
    .await;

    let r = w
        .request("GET", FOLLOW_UP)
        .cookie(SID)
        .signed(&key, &nonce)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let cid = assert_continued(&w, &r, ("GET", FOLLOW_UP, b""), &root, &root).await;
    assert_eq!(accepted_record(&w, &cid).await["body_sha256"], EMPTY_SHA256);
    assert_eq!(accepted_record(&w, &cid).await["device"], key.jkt());

    // The provenance token verifies with the JWKS the gateway publishes.
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
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&jwks.body).expect("a JWKS");
    let token = w
        .upstream
        .last()
        .header("countersign-provenance")
        .expect("provenance")
        .to_string();
    let header = jsonwebtoken::decode_header(&token).expect("JWS header");
    let jwk = set
        .keys
        .iter()
        .find(|k| k.common.key_id == header.kid)
        .expect("the signing key is published");
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.validate_aud = false;
    let verified = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).expect("usable JWK"),
        &validation,
    )
    .expect("provenance verifies");
    assert_eq!(verified.claims["parent"], root);
    assert_eq!(verified.claims["cid"], cid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_after_303_with_a_relative_location_is_a_get() {
    let w = start(Some(PUBLIC), "").await;
    let key = es256();
    let body = b"{\"step\":\"a\"}";
    let r = w
        .request("POST", "/api/chain/a")
        .cookie(SID)
        .body(body)
        .confirm(&key)
        .await;
    // A relative Location stays relative.
    let (root, nonce) = continuation_of(&r, 303, "/api/chain/b");

    // After a 303 the follow-up is a GET: repeating the POST with its body is another action.
    let before = w.upstream.count();
    let r = w
        .request("POST", "/api/chain/b")
        .cookie(SID)
        .body(body)
        .signed(&key, &nonce)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "use_dpop_nonce", "action_mismatch")
        .await;

    // A refused presenter does not burn it: the real follow-up still goes through.
    let r = w
        .request("GET", "/api/chain/b")
        .cookie(SID)
        .signed(&key, &nonce)
        .send()
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_continued(&w, &r, ("GET", "/api/chain/b", b""), &root, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_after_301_is_a_get_without_body() {
    let w = start(Some(PUBLIC), "").await;
    let key = es256();
    let r = w
        .request("POST", "/api/purge")
        .cookie(SID)
        .body(b"{\"all\":true}")
        .confirm(&key)
        .await;
    let (root, nonce) = continuation_of(&r, 301, &format!("{PUBLIC}/api/purge/confirm"));
    let r = w
        .request("GET", "/api/purge/confirm")
        .cookie(SID)
        .signed(&key, &nonce)
        .send()
        .await;
    assert_continued(&w, &r, ("GET", "/api/purge/confirm", b""), &root, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_after_307_repeats_the_method_and_body() {
    let w = start(Some(PUBLIC), "").await;
    let key = es256();
    let body = b"{\"amount\":100,\"to\":\"acct-9\"}";
    let r = w
        .request("POST", "/api/transfers")
        .cookie(SID)
        .body(body)
        .confirm(&key)
        .await;
    let (root, nonce) = continuation_of(&r, 307, "/api/transfers/retry");

    // Another body is another action.
    let before = w.upstream.count();
    let r = w
        .request("POST", "/api/transfers/retry")
        .cookie(SID)
        .body(b"{\"amount\":100000,\"to\":\"acct-666\"}")
        .signed(&key, &nonce)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "use_dpop_nonce", "action_mismatch")
        .await;

    let r = w
        .request("POST", "/api/transfers/retry")
        .cookie(SID)
        .body(body)
        .signed(&key, &nonce)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_continued(&w, &r, ("POST", "/api/transfers/retry", body), &root, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_after_308_repeats_the_method_and_body() {
    let w = start(Some(PUBLIC), "").await;
    let key = es256();
    let body = b"{\"maintenance\":true}";
    let r = w
        .request("PUT", "/api/config")
        .cookie(SID)
        .body(body)
        .confirm(&key)
        .await;
    let (root, nonce) = continuation_of(&r, 308, &format!("{PUBLIC}/api/config/v2"));

    // A GET (or an empty PUT) is not what a 308 repeats.
    let before = w.upstream.count();
    let r = w
        .request("PUT", "/api/config/v2")
        .cookie(SID)
        .signed(&key, &nonce)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "use_dpop_nonce", "action_mismatch")
        .await;

    let r = w
        .request("PUT", "/api/config/v2")
        .cookie(SID)
        .body(body)
        .signed(&key, &nonce)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_continued(&w, &r, ("PUT", "/api/config/v2", body), &root, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_on_the_host_the_upstream_was_sent_is_rewritten_and_continued() {
    let w = start(Some(PUBLIC), "").await;
    let key = es256();
    let host = [("host", "legacy-admin.internal")];
    let r = w
        .request("POST", "/api/redirect/hosted")
        .cookie(SID)
        .headers(&host)
        .confirm(&key)
        .await;
    assert_eq!(
        w.upstream.last().header("host"),
        Some("legacy-admin.internal")
    );
    let (root, nonce) = continuation_of(&r, 302, &format!("{PUBLIC}{FOLLOW_UP}"));
    let r = w
        .request("GET", FOLLOW_UP)
        .cookie(SID)
        .headers(&host)
        .signed(&key, &nonce)
        .send()
        .await;
    assert_continued(&w, &r, ("GET", FOLLOW_UP, b""), &root, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_chain_keeps_the_root_as_parent_and_the_immediate_parent_as_via() {
    let w = start(Some(PUBLIC), "").await;
    let key = es256();
    let r = w
        .request("POST", "/api/chain/a")
        .cookie(SID)
        .body(b"{\"go\":1}")
        .confirm(&key)
        .await;
    let (a, nonce_b) = continuation_of(&r, 303, "/api/chain/b");

    let r = w
        .request("GET", "/api/chain/b")
        .cookie(SID)
        .signed(&key, &nonce_b)
        .send()
        .await;
    let b = assert_continued(&w, &r, ("GET", "/api/chain/b", b""), &a, &a).await;
    // The second hop's Location was absolute on the upstream's origin.
    let (b_again, nonce_c) = continuation_of(&r, 303, &format!("{PUBLIC}/api/chain/c"));
    assert_eq!(b_again, b);

    let r = w
        .request("GET", "/api/chain/c")
        .cookie(SID)
        .signed(&key, &nonce_c)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let c = assert_continued(&w, &r, ("GET", "/api/chain/c", b""), &a, &b).await;
    assert!(r.header("dpop-nonce").is_none(), "the chain ends here");
    let ids = [&a, &b, &c];
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_that_rotates_the_session_continues_in_the_new_session() {
    let w = start(Some(PUBLIC), "").await;
    let key = es256();
    let new_sid = "alice-session-rotated-55";
    let r = w
        .request("POST", "/api/redirect/rotating")
        .cookie(SID)
        .headers(&[("x-rotate-to", new_sid)])
        .confirm(&key)
        .await;
    let (root, nonce) = continuation_of(&r, 303, FOLLOW_UP);
    assert!(r
        .header("set-cookie")
        .is_some_and(|c| c.starts_with(&format!("sid={new_sid};"))));

    // A browser follows with the cookie it was just given.
    let r = w
        .request("GET", FOLLOW_UP)
        .cookie(new_sid)
        .signed(&key, &nonce)
        .send()
        .await;
    assert_continued(&w, &r, ("GET", FOLLOW_UP, b""), &root, &root).await;
}

// ───────────────────────────── continuations refused ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_nonce_is_single_use() {
    let w = start(Some(PUBLIC), "").await;
    let key = es256();
    let (root, nonce) = deploy(&w, &key, SID).await;
    let r = w
        .request("GET", FOLLOW_UP)
        .cookie(SID)
        .signed(&key, &nonce)
        .send()
        .await;
    assert_continued(&w, &r, ("GET", FOLLOW_UP, b""), &root, &root).await;

    // A fresh proof (new jti) with the consumed nonce.
    let before = w.upstream.count();
    let r = w
        .request("GET", FOLLOW_UP)
        .cookie(SID)
        .signed(&key, &nonce)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "use_dpop_nonce", "replay")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_follow_ups_with_one_continuation_nonce_forward_exactly_one() {
    let w = start(Some(PUBLIC), "").await;
    let key = es256();
    let (root, nonce) = deploy(&w, &key, SID).await;
    let before = w.upstream.count();
    let url = format!("{}{FOLLOW_UP}", w.gw.base);
    // Each with its own proof (own jti): only the nonce is shared.
    let requests = (0..6)
        .map(|_| {
            let proof = key.proof("GET", &w.htu(FOLLOW_UP), Some(&nonce), Some(SID));
            let headers = vec![
                ("cookie".to_string(), format!("sid={SID}")),
                ("dpop".to_string(), proof),
            ];
            (url.clone(), headers)
        })
        .collect();
    let (won, lost) = one_winner(race("GET", requests).await);
    for r in &lost {
        let id = r.header("countersign-request-id").expect("request id");
        let audit = w.gw.wait_for_audit(|a| a["request_id"] == id).await;
        assert_eq!(audit["reason"], "replay", "audit: {audit}");
    }
    assert_eq!(
        w.upstream.count(),
        before + 1,
        "one follow-up reached the upstream"
    );
    assert_continued(&w, &won, ("GET", FOLLOW_UP, b""), &root, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_nonce_in_another_session_is_action_mismatch() {
    let w = start(Some(PUBLIC), "").await;
    let key = es256();
    let (root, nonce) = deploy(&w, &key, SID).await;

    // Another (unbound) session, even with the same device key.
    let before = w.upstream.count();
    let r = w
        .request("GET", FOLLOW_UP)
        .cookie(OTHER_SID)
        .signed(&key, &nonce)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "use_dpop_nonce", "action_mismatch")
        .await;

    let r = w
        .request("GET", FOLLOW_UP)
        .cookie(SID)
        .signed(&key, &nonce)
        .send()
        .await;
    assert_continued(&w, &r, ("GET", FOLLOW_UP, b""), &root, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_nonce_from_another_device_is_device_mismatch() {
    let w = start(Some(PUBLIC), "").await;
    let (key, thief) = (es256(), es256());
    let (root, nonce) = deploy(&w, &key, SID).await;

    // The session is bound to `key`: device binding is checked before the nonce (§4 order).
    let before = w.upstream.count();
    let r = w
        .request("GET", FOLLOW_UP)
        .cookie(SID)
        .signed(&thief, &nonce)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "device_mismatch")
        .await;

    let r = w
        .request("GET", FOLLOW_UP)
        .cookie(SID)
        .signed(&key, &nonce)
        .send()
        .await;
    assert_continued(&w, &r, ("GET", FOLLOW_UP, b""), &root, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_nonce_keeps_its_device_when_the_session_binding_is_gone() {
    let session = "session: { kind: cookie, cookie: sid, binding_ttl: 200ms }";
    let w = build(Some(PUBLIC), session, "").await;
    let (key, thief) = (es256(), es256());
    let (root, nonce) = deploy(&w, &key, SID).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The session binding expired, so the device check passes; the nonce itself names `key`.
    let before = w.upstream.count();
    let r = w
        .request("GET", FOLLOW_UP)
        .cookie(SID)
        .signed(&thief, &nonce)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "use_dpop_nonce", "action_mismatch")
        .await;

    let r = w
        .request("GET", FOLLOW_UP)
        .cookie(SID)
        .signed(&key, &nonce)
        .send()
        .await;
    assert_continued(&w, &r, ("GET", FOLLOW_UP, b""), &root, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_nonce_for_another_target_is_action_mismatch() {
    let w = start(Some(PUBLIC), "").await;
    let key = es256();
    let (root, nonce) = deploy(&w, &key, SID).await;

    for target in [
        "/api/deploys/18/confirm",
        "/api/deploys/17/confirm?from=create&force=1",
        "/api/deploys/17/confirm",
        "/api/purge/confirm",
    ] {
        let before = w.upstream.count();
        let r = w
            .request("GET", target)
            .cookie(SID)
            .signed(&key, &nonce)
            .send()
            .await;
        w.assert_refused(&r, before, 401, "use_dpop_nonce", "action_mismatch")
            .await;
    }

    let r = w
        .request("GET", FOLLOW_UP)
        .cookie(SID)
        .signed(&key, &nonce)
        .send()
        .await;
    assert_continued(&w, &r, ("GET", FOLLOW_UP, b""), &root, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_nonce_expires_after_continuation_ttl() {
    let w = start(Some(PUBLIC), "confirmation: { continuation_ttl: 200ms }").await;
    let key = es256();
    let (_root, nonce) = deploy(&w, &key, SID).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = w.upstream.count();
    let r = w
        .request("GET", FOLLOW_UP)
        .cookie(SID)
        .signed(&key, &nonce)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "use_dpop_nonce", "nonce_expired")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_continuation_to_low_risk_routes_foreign_origins_or_without_a_redirect() {
    let w = start(Some(PUBLIC), "").await;
    let key = es256();

    // 303 to a low-risk page: a relative Location stays, and no nonce.
    let r = w
        .request("POST", "/api/users/42/delete")
        .cookie(SID)
        .confirm(&key)
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/users?deleted=42"));
    assert!(r.header("dpop-nonce").is_none(), "{}", r.text());

    // 302 to another origin, on a path that would be high-impact here: untouched, no nonce.
    let r = w
        .request("POST", "/api/redirect/foreign")
        .cookie(SID)
        .confirm(&key)
        .await;
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some("https://elsewhere.example/api/deploys/17/confirm")
    );
    assert!(r.header("dpop-nonce").is_none(), "{}", r.text());

    // A confirmed request answered without a redirect.
    let r = w
        .request("POST", "/api/transfers/retry")
        .cookie(SID)
        .body(b"{}")
        .confirm(&key)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("dpop-nonce").is_none(), "{}", r.text());

    // And the high-impact route behind the foreign redirect still needs its own challenge.
    let r = w.request("GET", FOLLOW_UP).cookie(SID).send().await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.dpop_error().as_deref(), Some("use_dpop_nonce"));
}

// ───────────────────────────── outer proxies ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_origin_with_a_prefix_shapes_htu_and_locations() {
    let public = "https://corp.example/admin";
    let w = start(Some(public), "").await;
    let key = es256();
    let body = b"{\"service\":\"billing\"}";

    let r = w
        .request("POST", "/api/deploys")
        .cookie(SID)
        .body(body)
        .send()
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.json()["confirmation"]["htu"],
        "https://corp.example/admin/api/deploys"
    );
    let mut nonce = r.header("dpop-nonce").expect("nonce").to_string();

    for wrong in [
        "https://corp.example/api/deploys",
        "http://corp.example/admin/api/deploys",
        &format!("{}/api/deploys", w.gw.base),
    ] {
        let before = w.upstream.count();
        let r = w
            .request("POST", "/api/deploys")
            .cookie(SID)
            .body(body)
            .signed_for(wrong, &key, &nonce)
            .send()
            .await;
        w.assert_refused(&r, before, 401, "invalid_dpop_proof", "htu_mismatch")
            .await;
        nonce = r.header("dpop-nonce").expect("fresh nonce").to_string();
    }

    let r = w
        .request("POST", "/api/deploys")
        .cookie(SID)
        .body(body)
        .signed_for("https://corp.example/admin/api/deploys", &key, &nonce)
        .send()
        .await;
    let (root, nonce) = continuation_of(&r, 302, &format!("https://corp.example/admin{FOLLOW_UP}"));
    let r = w
        .request("GET", FOLLOW_UP)
        .cookie(SID)
        .signed_for(
            "https://corp.example/admin/api/deploys/17/confirm",
            &key,
            &nonce,
        )
        .send()
        .await;
    assert_continued(&w, &r, ("GET", FOLLOW_UP, b""), &root, &root).await;
}

/// Spoofable headers an outer proxy (or an attacker) sends.
const OUTER: [(&str, &str); 4] = [
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "corp.example"),
    ("x-forwarded-prefix", "/admin"),
    ("x-forwarded-for", "203.0.113.7"),
];

fn first(v: Option<&str>) -> Option<&str> {
    v.map(|v| v.split(',').next().unwrap_or(v).trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_x_forwarded_headers_shape_htu_and_locations() {
    let w = start(None, "trusted_proxies: [\"127.0.0.1/32\"]").await;
    let key = es256();
    let external = "https://corp.example/admin";
    let body = b"{}";

    let r = w
        .request("POST", "/api/deploys")
        .cookie(SID)
        .headers(&OUTER)
        .body(body)
        .send()
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.json()["confirmation"]["htu"],
        format!("{external}/api/deploys")
    );
    let nonce = r.header("dpop-nonce").expect("nonce").to_string();

    let before = w.upstream.count();
    let htu = format!("{}/api/deploys", w.gw.base);
    let r = w
        .request("POST", "/api/deploys")
        .cookie(SID)
        .headers(&OUTER)
        .body(body)
        .signed_for(&htu, &key, &nonce)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "htu_mismatch")
        .await;
    let nonce = r.header("dpop-nonce").expect("fresh nonce").to_string();

    let htu = format!("{external}/api/deploys");
    let r = w
        .request("POST", "/api/deploys")
        .cookie(SID)
        .headers(&OUTER)
        .body(body)
        .signed_for(&htu, &key, &nonce)
        .send()
        .await;
    let (root, nonce) = continuation_of(&r, 302, &format!("{external}{FOLLOW_UP}"));

    // What a trusted proxy said is kept (and the chain of addresses appended to).
    let seen = w.upstream.last();
    assert_eq!(first(seen.header("x-forwarded-proto")), Some("https"));
    assert_eq!(first(seen.header("x-forwarded-host")), Some("corp.example"));
    assert_eq!(seen.header("x-forwarded-prefix"), Some("/admin"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );

    let htu = format!("{external}{FOLLOW_UP}");
    let r = w
        .request("GET", FOLLOW_UP)
        .cookie(SID)
        .headers(&OUTER)
        .signed_for(&htu, &key, &nonce)
        .send()
        .await;
    assert_continued(&w, &r, ("GET", FOLLOW_UP, b""), &root, &root).await;

    // An app that builds its Location from the forwarded headers already names the public
    // URL: it stays as it is, and still leads to a continuation.
    let target = "/api/redirect/proxy-aware";
    let nonce = w
        .request("POST", target)
        .cookie(SID)
        .headers(&OUTER)
        .challenge()
        .await;
    let r = w
        .request("POST", target)
        .cookie(SID)
        .headers(&OUTER)
        .signed_for(&format!("{external}{target}"), &key, &nonce)
        .send()
        .await;
    let (root, nonce) = continuation_of(&r, 302, &format!("{external}{FOLLOW_UP}"));
    let r = w
        .request("GET", FOLLOW_UP)
        .cookie(SID)
        .headers(&OUTER)
        .signed_for(&htu, &key, &nonce)
        .send()
        .await;
    assert_continued(&w, &r, ("GET", FOLLOW_UP, b""), &root, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_forwarded_header_shapes_htu_and_locations() {
    let w = start(None, "trusted_proxies: [\"127.0.0.1/32\"]").await;
    let key = es256();
    let fwd = [("forwarded", "proto=https;host=corp.example")];
    let body = b"{}";

    let r = w
        .request("POST", "/api/deploys")
        .cookie(SID)
        .headers(&fwd)
        .body(body)
        .send()
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.json()["confirmation"]["htu"],
        "https://corp.example/api/deploys"
    );
    let nonce = r.header("dpop-nonce").expect("nonce").to_string();

    for wrong in [
        "http://corp.example/api/deploys",
        &format!("{}/api/deploys", w.gw.base),
    ] {
        let before = w.upstream.count();
        let r = w
            .request("POST", "/api/deploys")
            .cookie(SID)
            .headers(&fwd)
            .body(body)
            .signed_for(wrong, &key, &nonce)
            .send()
            .await;
        w.assert_refused(&r, before, 401, "invalid_dpop_proof", "htu_mismatch")
            .await;
    }

    let r = w
        .request("POST", "/api/deploys")
        .cookie(SID)
        .headers(&fwd)
        .body(body)
        .signed_for("https://corp.example/api/deploys", &key, &nonce)
        .send()
        .await;
    let (root, nonce) = continuation_of(&r, 302, &format!("https://corp.example{FOLLOW_UP}"));
    let seen = w.upstream.last();
    let forwarded = seen.header("forwarded").expect("Forwarded");
    assert!(
        forwarded.starts_with("proto=https;host=corp.example, for=127.0.0.1"),
        "a trusted proxy's Forwarded is appended to: {forwarded}"
    );
    assert_eq!(first(seen.header("x-forwarded-proto")), Some("https"));
    assert_eq!(first(seen.header("x-forwarded-host")), Some("corp.example"));

    let htu = format!("https://corp.example{FOLLOW_UP}");
    let r = w
        .request("GET", FOLLOW_UP)
        .cookie(SID)
        .headers(&fwd)
        .signed_for(&htu, &key, &nonce)
        .send()
        .await;
    assert_continued(&w, &r, ("GET", FOLLOW_UP, b""), &root, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_forwarding_headers_are_ignored_and_replaced() {
    let w = start(None, "trusted_proxies: [\"10.0.0.0/8\"]").await;
    let key = es256();
    let mut spoofed = OUTER.to_vec();
    spoofed.push((
        "forwarded",
        "for=198.51.100.9;proto=https;host=corp.example",
    ));
    let own_host = w.gw.base.trim_start_matches("http://").to_string();
    let body = b"{}";

    let r = w
        .request("POST", "/api/deploys")
        .cookie(SID)
        .headers(&spoofed)
        .body(body)
        .send()
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.json()["confirmation"]["htu"],
        format!("{}/api/deploys", w.gw.base)
    );
    let mut nonce = r.header("dpop-nonce").expect("nonce").to_string();

    for wrong in [
        "https://corp.example/admin/api/deploys",
        "https://corp.example/api/deploys",
    ] {
        let before = w.upstream.count();
        let r = w
            .request("POST", "/api/deploys")
            .cookie(SID)
            .headers(&spoofed)
            .body(body)
            .signed_for(wrong, &key, &nonce)
            .send()
            .await;
        w.assert_refused(&r, before, 401, "invalid_dpop_proof", "htu_mismatch")
            .await;
        nonce = r.header("dpop-nonce").expect("fresh nonce").to_string();
    }

    let htu = format!("{}/api/deploys", w.gw.base);
    let r = w
        .request("POST", "/api/deploys")
        .cookie(SID)
        .headers(&spoofed)
        .body(body)
        .signed_for(&htu, &key, &nonce)
        .send()
        .await;
    // The Location is rewritten to what this client really used, not the spoofed origin.
    let (root, nonce) = continuation_of(&r, 302, &format!("{}{FOLLOW_UP}", w.gw.base));
    let expected_forwarded = format!("for=127.0.0.1;proto=http;host=\"{own_host}\"");
    let check = |seen: &Seen| {
        assert_eq!(seen.header("x-forwarded-proto"), Some("http"), "{seen:?}");
        assert_eq!(seen.header("x-forwarded-host"), Some(own_host.as_str()));
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(seen.header("forwarded"), Some(expected_forwarded.as_str()));
        assert!(seen.header("x-forwarded-prefix").is_none(), "{seen:?}");
        for name in [
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-for",
            "forwarded",
        ] {
            assert_eq!(seen.headers.get_all(name).iter().count(), 1, "one {name}");
        }
    };
    check(&w.upstream.last());

    let htu = format!("{}{FOLLOW_UP}", w.gw.base);
    let r = w
        .request("GET", FOLLOW_UP)
        .cookie(SID)
        .headers(&spoofed)
        .signed_for(&htu, &key, &nonce)
        .send()
        .await;
    assert_continued(&w, &r, ("GET", FOLLOW_UP, b""), &root, &root).await;
    check(&w.upstream.last());

    // The same on a low-risk passthrough.
    let r = w
        .request("GET", "/pages/anything")
        .cookie(SID)
        .headers(&spoofed)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    check(&w.upstream.last());
}

// ───────────────────────────── session rotation ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_rotation_on_a_confirmed_response_keeps_the_device_binding() {
    let w = start(Some(PUBLIC), "").await;
    let (key, other) = (es256(), es256());
    let new_sid = "alice-session-after-login-1";
    let r = w
        .request("POST", "/api/session/rotate")
        .cookie(SID)
        .headers(&[("x-rotate-to", new_sid)])
        .confirm(&key)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("set-cookie")
        .is_some_and(|c| c.starts_with(&format!("sid={new_sid};"))));

    // The new session is already bound to `key`: another device is refused.
    let target = "/api/transfers/retry";
    let nonce = w
        .request("POST", target)
        .cookie(new_sid)
        .body(b"{}")
        .challenge()
        .await;
    let before = w.upstream.count();
    let r = w
        .request("POST", target)
        .cookie(new_sid)
        .body(b"{}")
        .signed(&other, &nonce)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "device_mismatch")
        .await;

    let r = w
        .request("POST", target)
        .cookie(new_sid)
        .body(b"{}")
        .confirm(&key)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let cid = r.header("countersign-confirmation-id").expect("cid");
    assert_eq!(accepted_record(&w, cid).await["device"], key.jkt());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_rotation_on_a_low_risk_response_starts_unbound() {
    let w = start(Some(PUBLIC), "").await;
    let (key, other) = (es256(), es256());
    let target = "/api/transfers/retry";
    // `SID` is bound to `key`.
    w.request("POST", target)
        .cookie(SID)
        .body(b"{}")
        .confirm(&key)
        .await;

    let new_sid = "alice-session-rotated-by-page-2";
    let r = w
        .request("GET", "/session/rotate")
        .cookie(SID)
        .headers(&[("x-rotate-to", new_sid)])
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("set-cookie")
        .is_some_and(|c| c.starts_with(&format!("sid={new_sid};"))));

    // Nothing carried over: another device is accepted as the first use of the new session...
    let r = w
        .request("POST", target)
        .cookie(new_sid)
        .body(b"{}")
        .confirm(&other)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let cid = r.header("countersign-confirmation-id").expect("cid");
    assert_eq!(accepted_record(&w, cid).await["device"], other.jkt());

    // ...and from then on it is that device's session.
    let nonce = w
        .request("POST", target)
        .cookie(new_sid)
        .body(b"{}")
        .challenge()
        .await;
    let before = w.upstream.count();
    let r = w
        .request("POST", target)
        .cookie(new_sid)
        .body(b"{}")
        .signed(&key, &nonce)
        .send()
        .await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "device_mismatch")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_after_relative_dot_segment_location_binds_the_resolved_target() {
    let w = start(Some(PUBLIC), "").await;
    let key = es256();
    // From `/api/redirect/to`, RFC 3986 §5.2 resolves this to FOLLOW_UP.
    let location = "../deploys/17/confirm?from=create";
    let r = w
        .request("POST", "/api/redirect/to")
        .cookie(SID)
        .headers(&[("x-location", location)])
        .confirm(&key)
        .await;
    let (root, nonce) = continuation_of(&r, 302, location);
    // What a client following the redirect requests.
    let r = w
        .request("GET", FOLLOW_UP)
        .cookie(SID)
        .signed(&key, &nonce)
        .send()
        .await;
    assert_continued(&w, &r, ("GET", FOLLOW_UP, b""), &root, &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_after_an_equivalent_spelling_of_the_public_origin() {
    let w = start(Some(PUBLIC), "").await;
    let key = es256();
    for location in [
        // Explicit default port (RFC 3986 §6.2.3).
        format!("https://admin.example:443{FOLLOW_UP}"),
        // Network-path reference: resolves against https://admin.example.
        format!("//admin.example{FOLLOW_UP}"),
    ] {
        let r = w
            .request("POST", "/api/redirect/to")
            .cookie(SID)
            .headers(&[("x-location", &location)])
            .confirm(&key)
            .await;
        let (root, nonce) = continuation_of(&r, 302, &location);
        let r = w
            .request("GET", FOLLOW_UP)
            .cookie(SID)
            .signed(&key, &nonce)
            .send()
            .await;
        assert_continued(&w, &r, ("GET", FOLLOW_UP, b""), &root, &root).await;
    }
}
