//! Redirects keep provenance (CONTRACT §3–§5): `Location`, `Content-Location` and `Refresh`
//! rewriting; continuation nonces after a confirmed request is redirected to another high-impact
//! action (301/302/303 → GET without body, 307/308 → same method and body), their single use and
//! their bindings (session, device, target, TTL); chains that keep the root and immediate parent;
//! `public_origin` with a path prefix; `X-Forwarded-*` / `Forwarded` from trusted and untrusted
//! peers; `Set-Cookie` pass-through and session rotation carrying (or not) the device binding.
//!
//! The upstream is a recording hyper server of this file (below) that issues each kind of
//! redirect. Every refusal asserts the status, the `WWW-Authenticate` error, the audit record of
//! that very request (by `Countersign-Request-Id`) and that the upstream saw nothing new.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use countersign::alg::ProofAlg;
use countersign::keys::DeviceKey;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{one_winner, race, send, Gateway, Reply};

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

// ───────────────────────────── the recording upstream ─────────────────────────────

/// A request as the upstream received it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The claims of the `Countersign-Provenance` token it received.
    fn provenance(&self) -> Value {
        let token = self
            .header("countersign-provenance")
            .expect("a confirmed request carries Countersign-Provenance");
        claims_of(token)
    }
}

/// A legacy admin app that redirects in every way an app does, recording each request.
#[derive(Clone)]
struct Legacy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Legacy {
    async fn start() -> Legacy {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let addr = support::serve(move |req, addr| legacy_app(req, addr, record.clone())).await;
        Legacy { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("upstream record lock").clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().expect("upstream record lock").len()
    }

    fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream received a request")
    }

    /// Its own origin, as it writes it in absolute `Location`s.
    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn legacy_app(
    req: Request<Incoming>,
    addr: SocketAddr,
    record: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (host, rotate_to) = (header("host"), header("x-rotate-to"));
    // What an app that believes its proxy thinks its public URL is.
    let proxied = format!(
        "{}://{}{}",
        header("x-forwarded-proto"),
        header("x-forwarded-host"),
        header("x-forwarded-prefix")
    );
    record.lock().expect("upstream record lock").push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let own = format!("http://{addr}");
    let rotate = || {
        (
            "set-cookie",
            format!("sid={rotate_to}; Path=/; HttpOnly; SameSite=Lax"),
        )
    };
    let path = parts.uri.path();
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
    let text = format!(r#"{{"ok":true,"path":"{path}","len":{}}}"#, body.len());
    Ok(resp
        .body(Full::new(Bytes::from(text)))
        .expect("valid test response"))
}

// ───────────────────────────── the world ─────────────────────────────

/// The recording upstream with a gateway in front of it.
struct World {
    legacy: Legacy,
    gw: Gateway,
    /// `http://127.0.0.1:<port>`: where requests are sent.
    base: String,
    /// The external base the gateway compares `htu` with (public origin or `base`).
    public: String,
    metrics_port: u16,
}

impl World {
    /// A cookie-session world; `public_origin` when given, and `extra` top-level config.
    async fn start(public_origin: Option<&str>, extra: &str) -> World {
        World::build(public_origin, COOKIE_SESSION, extra).await
    }

    async fn build(public_origin: Option<&str>, session: &str, extra: &str) -> World {
        let legacy = Legacy::start().await;
        let public_line =
            public_origin.map_or_else(String::new, |o| format!("public_origin: \"{o}\""));
        let body = format!("{public_line}\n{session}\n{extra}\n{ROUTES}");
        let gw = Gateway::start_at(&body, legacy.addr).await;
        World {
            legacy,
            public: public_origin.unwrap_or(&gw.base).to_string(),
            base: gw.base.clone(),
            metrics_port: gw.metrics_port,
            gw,
        }
    }

    /// The external URI of `target` (what `htu` must be).
    fn htu(&self, target: &str) -> String {
        format!("{}{}", self.public, path_of(target))
    }

    /// Sends `method target` in session `sid` with `dpop` (when given) and `extra` headers.
    async fn request(
        &self,
        method: &str,
        target: &str,
        sid: &str,
        dpop: Option<&str>,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let cookie = format!("sid={sid}");
        let mut headers = vec![("cookie", cookie.as_str())];
        if let Some(proof) = dpop {
            headers.push(("dpop", proof));
        }
        headers.extend_from_slice(extra);
        send(
            &format!("{}{target}", self.base),
            method,
            &headers,
            Bytes::copy_from_slice(body),
        )
        .await
    }

    /// Sends the request signed by `key` with `nonce`, for the `htu` given.
    #[allow(clippy::too_many_arguments)]
    async fn signed_for(
        &self,
        htu: &str,
        key: &DeviceKey,
        nonce: &str,
        method: &str,
        target: &str,
        sid: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let proof = key.proof(method, htu, Some(nonce), Some(sid));
        self.request(method, target, sid, Some(&proof), extra, body)
            .await
    }

    /// Sends the request signed by `key` with `nonce`, `htu` from the public origin.
    #[allow(clippy::too_many_arguments)]
    async fn signed(
        &self,
        key: &DeviceKey,
        nonce: &str,
        method: &str,
        target: &str,
        sid: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        self.signed_for(
            &self.htu(target),
            key,
            nonce,
            method,
            target,
            sid,
            extra,
            body,
        )
        .await
    }

    /// The `DPoP-Nonce` of the `401 use_dpop_nonce` challenge for this request.
    async fn challenge(
        &self,
        method: &str,
        target: &str,
        sid: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> String {
        let r = self.request(method, target, sid, None, extra, body).await;
        assert_eq!(r.status, 401, "challenge: {}", text(&r));
        assert_eq!(r.dpop_error().as_deref(), Some("use_dpop_nonce"));
        r.header("dpop-nonce")
            .expect("a challenge carries a DPoP-Nonce")
            .to_owned()
    }

    /// Challenge, then the signed retry: a full confirmation. Asserts it was not refused.
    async fn confirm(
        &self,
        key: &DeviceKey,
        method: &str,
        target: &str,
        sid: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let nonce = self.challenge(method, target, sid, extra, body).await;
        let r = self
            .signed(key, &nonce, method, target, sid, extra, body)
            .await;
        assert!(
            r.header("countersign-confirmation-id").is_some(),
            "{method} {target} should be confirmed: {}",
            text(&r)
        );
        r
    }

    fn audit(&self) -> Vec<Value> {
        self.gw.audit()
    }

    /// Waits for the first audit record that satisfies `what`.
    async fn record(&self, what: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..300 {
            if let Some(r) = self.audit().into_iter().find(|r| what(r)) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("audit record never written; log: {:#?}", self.audit());
    }

    /// The `accepted` record of a confirmation.
    async fn accepted(&self, cid: &str) -> Value {
        self.record(|r| r["event"] == "accepted" && r["confirmation_id"] == cid)
            .await
    }

    /// Asserts a refusal of a valid session's request: `401`, the `WWW-Authenticate` error, the
    /// audit `reason` of this very request, a fresh nonce, and nothing new upstream.
    async fn assert_refused(&self, r: &Reply, seen_before: usize, error: &str, reason: &str) {
        assert_eq!(r.status, 401, "status: {}", text(r));
        assert_eq!(
            r.dpop_error().as_deref(),
            Some(error),
            "WWW-Authenticate: {:?}",
            r.header("www-authenticate")
        );
        assert_eq!(r.json()["error"], error, "JSON body: {}", text(r));
        assert!(
            r.header("countersign-confirmation-id").is_none(),
            "a refusal is no confirmation"
        );
        assert!(
            r.header("dpop-nonce").is_some(),
            "every 401 of a valid session carries a fresh DPoP-Nonce"
        );
        let request_id = r
            .header("countersign-request-id")
            .expect("Countersign-Request-Id")
            .to_string();
        let audit = self.record(|a| a["request_id"] == request_id).await;
        assert_eq!(audit["event"], "rejected", "audit: {audit}");
        assert_eq!(audit["reason"], reason, "audit: {audit}");
        assert_eq!(
            self.legacy.count(),
            seen_before,
            "the upstream must see nothing of a refused request"
        );
    }

    /// Asserts that `r` is the accepted follow-up of a redirect: the response, its `accepted`
    /// audit record (`parent_id` = `root`, `via` = `via`), the request the upstream received
    /// (method, target, body, confirmation id) and its provenance claims. Returns its id.
    async fn assert_continued(
        &self,
        r: &Reply,
        (method, target, body): (&str, &str, &[u8]),
        root: &str,
        via: &str,
    ) -> String {
        assert!(matches!(r.status / 100, 2 | 3), "follow-up: {}", text(r));
        let cid = r
            .header("countersign-confirmation-id")
            .expect("the follow-up is confirmed")
            .to_string();
        assert_ne!(cid, root, "the follow-up is a confirmation of its own");
        assert_ne!(cid, via);
        let body_sha256 = hex(&Sha256::digest(body));

        let accepted = self.accepted(&cid).await;
        assert_eq!(accepted["parent_id"], root, "audit: {accepted}");
        assert_eq!(accepted["via"], via, "audit: {accepted}");
        assert_eq!(accepted["method"], method, "audit: {accepted}");
        assert_eq!(accepted["target"], target, "audit: {accepted}");
        assert_eq!(accepted["body_sha256"], body_sha256, "audit: {accepted}");
        let completed = self
            .record(|a| a["event"] == "completed" && a["confirmation_id"] == cid)
            .await;
        assert_eq!(completed["parent_id"], root, "audit: {completed}");

        // Accepted without a fresh challenge round-trip.
        let challenged = self
            .audit()
            .into_iter()
            .filter(|a| a["event"] == "challenged" && a["target"] == target)
            .count();
        assert_eq!(
            challenged, 0,
            "a continuation needs no challenge for {target}"
        );

        let seen = self.legacy.last();
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
}

/// The id and continuation nonce of a confirmed request's redirect, after checking the status,
/// the (rewritten) `Location` and that the nonce is exposed to browser clients.
fn continuation_of(r: &Reply, status: u16, location: &str) -> (String, String) {
    assert_eq!(r.status, status, "redirect: {}", text(r));
    assert_eq!(r.header("location"), Some(location));
    let cid = r
        .header("countersign-confirmation-id")
        .expect("the redirect answers a confirmed request")
        .to_string();
    let nonce = r
        .header("dpop-nonce")
        .unwrap_or_else(|| panic!("a redirect to {location} carries a continuation DPoP-Nonce"))
        .to_string();
    assert_nqchar_nonce(&nonce);
    let expose = r
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(expose.contains("dpop-nonce"), "exposed: {expose}");
    (cid, nonce)
}

fn path_of(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}

fn text(r: &Reply) -> String {
    format!(
        "{} {:?} {}",
        r.status,
        r.headers,
        String::from_utf8_lossy(&r.body)
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn es256() -> DeviceKey {
    DeviceKey::generate(ProofAlg::Es256).expect("ES256 key generation works on this platform")
}

/// The payload of a compact JWS, unverified.
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a compact JWS");
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url JWS payload");
    serde_json::from_slice(&bytes).expect("JSON JWS payload")
}

/// `1*NQCHAR` (RFC 9449 §8.1) and at least 128 bits worth of base64url.
fn assert_nqchar_nonce(nonce: &str) {
    assert!(nonce.len() >= 22, "nonce too short: {nonce}");
    assert!(
        nonce
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b)),
        "nonce is not 1*NQCHAR: {nonce}"
    );
}

/// Confirms `POST /api/deploys` in session `sid` and returns (its id, the continuation nonce
/// for `GET` [`FOLLOW_UP`]).
async fn deploy(w: &World, key: &DeviceKey, sid: &str) -> (String, String) {
    let r = w
        .confirm(
            key,
            "POST",
            "/api/deploys",
            sid,
            &[],
            b"{\"service\":\"billing\"}",
        )
        .await;
    continuation_of(&r, 302, &format!("{}{FOLLOW_UP}", w.public))
}

/// Where `POST /api/deploys` (and its variants) redirect: a high-impact GET, with a query.
const FOLLOW_UP: &str = "/api/deploys/17/confirm?from=create";

// ───────────────────────────── rewriting ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_origin_locations_move_to_the_public_origin_and_others_stay() {
    let w = World::start(Some(PUBLIC), "").await;
    let own = w.legacy.origin();
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
        let r = send(&format!("{}{path}", w.base), "GET", &[], Bytes::new()).await;
        assert_eq!(r.status, 302, "{path}: {}", text(&r));
        assert_eq!(r.header("location"), Some(expected.as_str()), "{path}");
        assert!(
            r.header("dpop-nonce").is_none(),
            "a low-risk redirect never carries a nonce"
        );
    }

    // An absolute Location built from the `Host` the upstream was sent is its own origin too.
    let r = send(
        &format!("{}/pages/hosted", w.base),
        "GET",
        &[("host", "legacy-admin.internal")],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        w.legacy.last().header("host"),
        Some("legacy-admin.internal")
    );
    assert_eq!(r.status, 302, "{}", text(&r));
    assert_eq!(r.header("location"), Some(&*format!("{PUBLIC}/pages/new")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_and_content_location_are_rewritten_like_location() {
    let w = World::start(Some(PUBLIC), "").await;

    let r = send_get(&w, "/pages/refresh").await;
    assert_eq!(r.status, 200, "{}", text(&r));
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
        .confirm(&key, "POST", "/api/deploys", SID, &[], b"{}")
        .await;
    assert_eq!(r.status, 302, "{}", text(&r));
    assert_eq!(r.header("location"), Some(&*format!("{PUBLIC}{FOLLOW_UP}")));
    assert_eq!(
        r.header("content-location"),
        Some(&*format!("{PUBLIC}/api/deploys/17"))
    );
}

async fn send_get(w: &World, path: &str) -> Reply {
    send(&format!("{}{path}", w.base), "GET", &[], Bytes::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_from_the_upstream_passes_through() {
    let w = World::start(Some(PUBLIC), "").await;
    let expected = [
        "sid=fresh-low-1; Path=/; HttpOnly; SameSite=Lax",
        "theme=dark; Path=/",
    ];
    let r = w
        .request(
            "GET",
            "/session/rotate",
            SID,
            None,
            &[("x-rotate-to", "fresh-low-1")],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let cookies: Vec<_> = r.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, expected, "low-risk Set-Cookie passes untouched");

    let key = es256();
    let r = w
        .confirm(
            &key,
            "POST",
            "/api/session/rotate",
            SID,
            &[("x-rotate-to", "fresh-high-1")],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
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
    let w = World::start(Some(PUBLIC), "").await;
    let key = es256();
    let (root, nonce) = deploy(&w, &key, SID).await;

    let original = w.legacy.last();
    assert_eq!(
        (original.method.as_str(), original.uri.as_str()),
        ("POST", "/api/deploys")
    );
    assert_eq!(original.provenance()["parent"], Value::Null);
    let accepted = w.accepted(&root).await;
    assert_eq!(accepted["parent_id"], Value::Null, "audit: {accepted}");
    w.record(|a| {
        a["event"] == "completed" && a["confirmation_id"] == root && a["upstream_status"] == 302
    })
    .await;

    let r = w
        .signed(&key, &nonce, "GET", FOLLOW_UP, SID, &[], b"")
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let cid = w
        .assert_continued(&r, ("GET", FOLLOW_UP, b""), &root, &root)
        .await;
    assert_eq!(w.accepted(&cid).await["body_sha256"], EMPTY_SHA256);
    assert_eq!(w.accepted(&cid).await["device"], key.jkt());

    // The provenance token verifies with the JWKS the gateway publishes.
    let jwks = send(
        &format!(
            "http://127.0.0.1:{}/.well-known/countersign/jwks.json",
            w.metrics_port
        ),
        "GET",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(jwks.status, 200, "{}", text(&jwks));
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&jwks.body).expect("a JWKS");
    let token = w
        .legacy
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
    let w = World::start(Some(PUBLIC), "").await;
    let key = es256();
    let body = b"{\"step\":\"a\"}";
    let r = w
        .confirm(&key, "POST", "/api/chain/a", SID, &[], body)
        .await;
    // A relative Location stays relative.
    let (root, nonce) = continuation_of(&r, 303, "/api/chain/b");

    // After a 303 the follow-up is a GET: repeating the POST with its body is another action.
    let before = w.legacy.count();
    let r = w
        .signed(&key, &nonce, "POST", "/api/chain/b", SID, &[], body)
        .await;
    w.assert_refused(&r, before, "use_dpop_nonce", "action_mismatch")
        .await;

    // A refused presenter does not burn it: the real follow-up still goes through.
    let r = w
        .signed(&key, &nonce, "GET", "/api/chain/b", SID, &[], b"")
        .await;
    assert_eq!(r.status, 303, "{}", text(&r));
    w.assert_continued(&r, ("GET", "/api/chain/b", b""), &root, &root)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_after_301_is_a_get_without_body() {
    let w = World::start(Some(PUBLIC), "").await;
    let key = es256();
    let r = w
        .confirm(&key, "POST", "/api/purge", SID, &[], b"{\"all\":true}")
        .await;
    let (root, nonce) = continuation_of(&r, 301, &format!("{PUBLIC}/api/purge/confirm"));
    let r = w
        .signed(&key, &nonce, "GET", "/api/purge/confirm", SID, &[], b"")
        .await;
    w.assert_continued(&r, ("GET", "/api/purge/confirm", b""), &root, &root)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_after_307_repeats_the_method_and_body() {
    let w = World::start(Some(PUBLIC), "").await;
    let key = es256();
    let body = b"{\"amount\":100,\"to\":\"acct-9\"}";
    let r = w
        .confirm(&key, "POST", "/api/transfers", SID, &[], body)
        .await;
    let (root, nonce) = continuation_of(&r, 307, "/api/transfers/retry");

    // Another body is another action.
    let before = w.legacy.count();
    let r = w
        .signed(
            &key,
            &nonce,
            "POST",
            "/api/transfers/retry",
            SID,
            &[],
            b"{\"amount\":100000,\"to\":\"acct-666\"}",
        )
        .await;
    w.assert_refused(&r, before, "use_dpop_nonce", "action_mismatch")
        .await;

    let r = w
        .signed(&key, &nonce, "POST", "/api/transfers/retry", SID, &[], body)
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    w.assert_continued(&r, ("POST", "/api/transfers/retry", body), &root, &root)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_after_308_repeats_the_method_and_body() {
    let w = World::start(Some(PUBLIC), "").await;
    let key = es256();
    let body = b"{\"maintenance\":true}";
    let r = w.confirm(&key, "PUT", "/api/config", SID, &[], body).await;
    let (root, nonce) = continuation_of(&r, 308, &format!("{PUBLIC}/api/config/v2"));

    // A GET (or an empty PUT) is not what a 308 repeats.
    let before = w.legacy.count();
    let r = w
        .signed(&key, &nonce, "PUT", "/api/config/v2", SID, &[], b"")
        .await;
    w.assert_refused(&r, before, "use_dpop_nonce", "action_mismatch")
        .await;

    let r = w
        .signed(&key, &nonce, "PUT", "/api/config/v2", SID, &[], body)
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    w.assert_continued(&r, ("PUT", "/api/config/v2", body), &root, &root)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_on_the_host_the_upstream_was_sent_is_rewritten_and_continued() {
    let w = World::start(Some(PUBLIC), "").await;
    let key = es256();
    let host = [("host", "legacy-admin.internal")];
    let r = w
        .confirm(&key, "POST", "/api/redirect/hosted", SID, &host, b"")
        .await;
    assert_eq!(
        w.legacy.last().header("host"),
        Some("legacy-admin.internal")
    );
    let (root, nonce) = continuation_of(&r, 302, &format!("{PUBLIC}{FOLLOW_UP}"));
    let r = w
        .signed(&key, &nonce, "GET", FOLLOW_UP, SID, &host, b"")
        .await;
    w.assert_continued(&r, ("GET", FOLLOW_UP, b""), &root, &root)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_chain_keeps_the_root_as_parent_and_the_immediate_parent_as_via() {
    let w = World::start(Some(PUBLIC), "").await;
    let key = es256();
    let r = w
        .confirm(&key, "POST", "/api/chain/a", SID, &[], b"{\"go\":1}")
        .await;
    let (a, nonce_b) = continuation_of(&r, 303, "/api/chain/b");

    let r = w
        .signed(&key, &nonce_b, "GET", "/api/chain/b", SID, &[], b"")
        .await;
    let b = w
        .assert_continued(&r, ("GET", "/api/chain/b", b""), &a, &a)
        .await;
    // The second hop's Location was absolute on the upstream's origin.
    let (b_again, nonce_c) = continuation_of(&r, 303, &format!("{PUBLIC}/api/chain/c"));
    assert_eq!(b_again, b);

    let r = w
        .signed(&key, &nonce_c, "GET", "/api/chain/c", SID, &[], b"")
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let c = w
        .assert_continued(&r, ("GET", "/api/chain/c", b""), &a, &b)
        .await;
    assert!(r.header("dpop-nonce").is_none(), "the chain ends here");
    let ids = [&a, &b, &c];
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_that_rotates_the_session_continues_in_the_new_session() {
    let w = World::start(Some(PUBLIC), "").await;
    let key = es256();
    let new_sid = "alice-session-rotated-55";
    let r = w
        .confirm(
            &key,
            "POST",
            "/api/redirect/rotating",
            SID,
            &[("x-rotate-to", new_sid)],
            b"",
        )
        .await;
    let (root, nonce) = continuation_of(&r, 303, FOLLOW_UP);
    assert!(r
        .header("set-cookie")
        .is_some_and(|c| c.starts_with(&format!("sid={new_sid};"))));

    // A browser follows with the cookie it was just given.
    let r = w
        .signed(&key, &nonce, "GET", FOLLOW_UP, new_sid, &[], b"")
        .await;
    w.assert_continued(&r, ("GET", FOLLOW_UP, b""), &root, &root)
        .await;
}

// ───────────────────────────── continuations refused ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_nonce_is_single_use() {
    let w = World::start(Some(PUBLIC), "").await;
    let key = es256();
    let (root, nonce) = deploy(&w, &key, SID).await;
    let r = w
        .signed(&key, &nonce, "GET", FOLLOW_UP, SID, &[], b"")
        .await;
    w.assert_continued(&r, ("GET", FOLLOW_UP, b""), &root, &root)
        .await;

    // A fresh proof (new jti) with the consumed nonce.
    let before = w.legacy.count();
    let r = w
        .signed(&key, &nonce, "GET", FOLLOW_UP, SID, &[], b"")
        .await;
    w.assert_refused(&r, before, "use_dpop_nonce", "replay")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_follow_ups_with_one_continuation_nonce_forward_exactly_one() {
    let w = World::start(Some(PUBLIC), "").await;
    let key = es256();
    let (root, nonce) = deploy(&w, &key, SID).await;
    let before = w.legacy.count();
    let url = format!("{}{FOLLOW_UP}", w.base);
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
        let audit = w.record(|a| a["request_id"] == id).await;
        assert_eq!(audit["reason"], "replay", "audit: {audit}");
    }
    assert_eq!(
        w.legacy.count(),
        before + 1,
        "one follow-up reached the upstream"
    );
    w.assert_continued(&won, ("GET", FOLLOW_UP, b""), &root, &root)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_nonce_in_another_session_is_action_mismatch() {
    let w = World::start(Some(PUBLIC), "").await;
    let key = es256();
    let (root, nonce) = deploy(&w, &key, SID).await;

    // Another (unbound) session, even with the same device key.
    let before = w.legacy.count();
    let r = w
        .signed(&key, &nonce, "GET", FOLLOW_UP, OTHER_SID, &[], b"")
        .await;
    w.assert_refused(&r, before, "use_dpop_nonce", "action_mismatch")
        .await;

    let r = w
        .signed(&key, &nonce, "GET", FOLLOW_UP, SID, &[], b"")
        .await;
    w.assert_continued(&r, ("GET", FOLLOW_UP, b""), &root, &root)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_nonce_from_another_device_is_device_mismatch() {
    let w = World::start(Some(PUBLIC), "").await;
    let (key, thief) = (es256(), es256());
    let (root, nonce) = deploy(&w, &key, SID).await;

    // The session is bound to `key`: device binding is checked before the nonce (§4 order).
    let before = w.legacy.count();
    let r = w
        .signed(&thief, &nonce, "GET", FOLLOW_UP, SID, &[], b"")
        .await;
    w.assert_refused(&r, before, "invalid_dpop_proof", "device_mismatch")
        .await;

    let r = w
        .signed(&key, &nonce, "GET", FOLLOW_UP, SID, &[], b"")
        .await;
    w.assert_continued(&r, ("GET", FOLLOW_UP, b""), &root, &root)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_nonce_keeps_its_device_when_the_session_binding_is_gone() {
    let session = "session: { kind: cookie, cookie: sid, binding_ttl: 1s }";
    let w = World::build(Some(PUBLIC), session, "").await;
    let (key, thief) = (es256(), es256());
    let (root, nonce) = deploy(&w, &key, SID).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;

    // The session binding expired, so the device check passes; the nonce itself names `key`.
    let before = w.legacy.count();
    let r = w
        .signed(&thief, &nonce, "GET", FOLLOW_UP, SID, &[], b"")
        .await;
    w.assert_refused(&r, before, "use_dpop_nonce", "action_mismatch")
        .await;

    let r = w
        .signed(&key, &nonce, "GET", FOLLOW_UP, SID, &[], b"")
        .await;
    w.assert_continued(&r, ("GET", FOLLOW_UP, b""), &root, &root)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_nonce_for_another_target_is_action_mismatch() {
    let w = World::start(Some(PUBLIC), "").await;
    let key = es256();
    let (root, nonce) = deploy(&w, &key, SID).await;

    for target in [
        "/api/deploys/18/confirm",
        "/api/deploys/17/confirm?from=create&force=1",
        "/api/deploys/17/confirm",
        "/api/purge/confirm",
    ] {
        let before = w.legacy.count();
        let r = w.signed(&key, &nonce, "GET", target, SID, &[], b"").await;
        w.assert_refused(&r, before, "use_dpop_nonce", "action_mismatch")
            .await;
    }

    let r = w
        .signed(&key, &nonce, "GET", FOLLOW_UP, SID, &[], b"")
        .await;
    w.assert_continued(&r, ("GET", FOLLOW_UP, b""), &root, &root)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_nonce_expires_after_continuation_ttl() {
    let w = World::start(Some(PUBLIC), "confirmation: { continuation_ttl: 1s }").await;
    let key = es256();
    let (_root, nonce) = deploy(&w, &key, SID).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let before = w.legacy.count();
    let r = w
        .signed(&key, &nonce, "GET", FOLLOW_UP, SID, &[], b"")
        .await;
    w.assert_refused(&r, before, "use_dpop_nonce", "nonce_expired")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_continuation_to_low_risk_routes_foreign_origins_or_without_a_redirect() {
    let w = World::start(Some(PUBLIC), "").await;
    let key = es256();

    // 303 to a low-risk page: a relative Location stays, and no nonce.
    let r = w
        .confirm(&key, "POST", "/api/users/42/delete", SID, &[], b"")
        .await;
    assert_eq!(r.status, 303, "{}", text(&r));
    assert_eq!(r.header("location"), Some("/users?deleted=42"));
    assert!(r.header("dpop-nonce").is_none(), "{}", text(&r));

    // 302 to another origin, on a path that would be high-impact here: untouched, no nonce.
    let r = w
        .confirm(&key, "POST", "/api/redirect/foreign", SID, &[], b"")
        .await;
    assert_eq!(r.status, 302, "{}", text(&r));
    assert_eq!(
        r.header("location"),
        Some("https://elsewhere.example/api/deploys/17/confirm")
    );
    assert!(r.header("dpop-nonce").is_none(), "{}", text(&r));

    // A confirmed request answered without a redirect.
    let r = w
        .confirm(&key, "POST", "/api/transfers/retry", SID, &[], b"{}")
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(r.header("dpop-nonce").is_none(), "{}", text(&r));

    // And the high-impact route behind the foreign redirect still needs its own challenge.
    let r = w.request("GET", FOLLOW_UP, SID, None, &[], b"").await;
    assert_eq!(r.status, 401, "{}", text(&r));
    assert_eq!(r.dpop_error().as_deref(), Some("use_dpop_nonce"));
}

// ───────────────────────────── outer proxies ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_origin_with_a_prefix_shapes_htu_and_locations() {
    let public = "https://corp.example/admin";
    let w = World::start(Some(public), "").await;
    let key = es256();
    let body = b"{\"service\":\"billing\"}";

    let r = w
        .request("POST", "/api/deploys", SID, None, &[], body)
        .await;
    assert_eq!(r.status, 401, "{}", text(&r));
    assert_eq!(
        r.json()["confirmation"]["htu"],
        "https://corp.example/admin/api/deploys"
    );
    let mut nonce = r.header("dpop-nonce").expect("nonce").to_string();

    for wrong in [
        "https://corp.example/api/deploys",
        "http://corp.example/admin/api/deploys",
        &format!("{}/api/deploys", w.base),
    ] {
        let before = w.legacy.count();
        let r = w
            .signed_for(wrong, &key, &nonce, "POST", "/api/deploys", SID, &[], body)
            .await;
        w.assert_refused(&r, before, "invalid_dpop_proof", "htu_mismatch")
            .await;
        nonce = r.header("dpop-nonce").expect("fresh nonce").to_string();
    }

    let r = w
        .signed_for(
            "https://corp.example/admin/api/deploys",
            &key,
            &nonce,
            "POST",
            "/api/deploys",
            SID,
            &[],
            body,
        )
        .await;
    let (root, nonce) = continuation_of(&r, 302, &format!("https://corp.example/admin{FOLLOW_UP}"));
    let r = w
        .signed_for(
            "https://corp.example/admin/api/deploys/17/confirm",
            &key,
            &nonce,
            "GET",
            FOLLOW_UP,
            SID,
            &[],
            b"",
        )
        .await;
    w.assert_continued(&r, ("GET", FOLLOW_UP, b""), &root, &root)
        .await;
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
    let w = World::start(None, "trusted_proxies: [\"127.0.0.1/32\"]").await;
    let key = es256();
    let external = "https://corp.example/admin";
    let body = b"{}";

    let r = w
        .request("POST", "/api/deploys", SID, None, &OUTER, body)
        .await;
    assert_eq!(r.status, 401, "{}", text(&r));
    assert_eq!(
        r.json()["confirmation"]["htu"],
        format!("{external}/api/deploys")
    );
    let nonce = r.header("dpop-nonce").expect("nonce").to_string();

    let before = w.legacy.count();
    let htu = format!("{}/api/deploys", w.base);
    let r = w
        .signed_for(
            &htu,
            &key,
            &nonce,
            "POST",
            "/api/deploys",
            SID,
            &OUTER,
            body,
        )
        .await;
    w.assert_refused(&r, before, "invalid_dpop_proof", "htu_mismatch")
        .await;
    let nonce = r.header("dpop-nonce").expect("fresh nonce").to_string();

    let htu = format!("{external}/api/deploys");
    let r = w
        .signed_for(
            &htu,
            &key,
            &nonce,
            "POST",
            "/api/deploys",
            SID,
            &OUTER,
            body,
        )
        .await;
    let (root, nonce) = continuation_of(&r, 302, &format!("{external}{FOLLOW_UP}"));

    // What a trusted proxy said is kept (and the chain of addresses appended to).
    let seen = w.legacy.last();
    assert_eq!(first(seen.header("x-forwarded-proto")), Some("https"));
    assert_eq!(first(seen.header("x-forwarded-host")), Some("corp.example"));
    assert_eq!(seen.header("x-forwarded-prefix"), Some("/admin"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );

    let htu = format!("{external}{FOLLOW_UP}");
    let r = w
        .signed_for(&htu, &key, &nonce, "GET", FOLLOW_UP, SID, &OUTER, b"")
        .await;
    w.assert_continued(&r, ("GET", FOLLOW_UP, b""), &root, &root)
        .await;

    // An app that builds its Location from the forwarded headers already names the public
    // URL: it stays as it is, and still leads to a continuation.
    let target = "/api/redirect/proxy-aware";
    let nonce = w.challenge("POST", target, SID, &OUTER, b"").await;
    let r = w
        .signed_for(
            &format!("{external}{target}"),
            &key,
            &nonce,
            "POST",
            target,
            SID,
            &OUTER,
            b"",
        )
        .await;
    let (root, nonce) = continuation_of(&r, 302, &format!("{external}{FOLLOW_UP}"));
    let r = w
        .signed_for(&htu, &key, &nonce, "GET", FOLLOW_UP, SID, &OUTER, b"")
        .await;
    w.assert_continued(&r, ("GET", FOLLOW_UP, b""), &root, &root)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_forwarded_header_shapes_htu_and_locations() {
    let w = World::start(None, "trusted_proxies: [\"127.0.0.1/32\"]").await;
    let key = es256();
    let fwd = [("forwarded", "proto=https;host=corp.example")];
    let body = b"{}";

    let r = w
        .request("POST", "/api/deploys", SID, None, &fwd, body)
        .await;
    assert_eq!(r.status, 401, "{}", text(&r));
    assert_eq!(
        r.json()["confirmation"]["htu"],
        "https://corp.example/api/deploys"
    );
    let nonce = r.header("dpop-nonce").expect("nonce").to_string();

    for wrong in [
        "http://corp.example/api/deploys",
        &format!("{}/api/deploys", w.base),
    ] {
        let before = w.legacy.count();
        let r = w
            .signed_for(wrong, &key, &nonce, "POST", "/api/deploys", SID, &fwd, body)
            .await;
        w.assert_refused(&r, before, "invalid_dpop_proof", "htu_mismatch")
            .await;
    }

    let r = w
        .signed_for(
            "https://corp.example/api/deploys",
            &key,
            &nonce,
            "POST",
            "/api/deploys",
            SID,
            &fwd,
            body,
        )
        .await;
    let (root, nonce) = continuation_of(&r, 302, &format!("https://corp.example{FOLLOW_UP}"));
    let seen = w.legacy.last();
    let forwarded = seen.header("forwarded").expect("Forwarded");
    assert!(
        forwarded.starts_with("proto=https;host=corp.example, for=127.0.0.1"),
        "a trusted proxy's Forwarded is appended to: {forwarded}"
    );
    assert_eq!(first(seen.header("x-forwarded-proto")), Some("https"));
    assert_eq!(first(seen.header("x-forwarded-host")), Some("corp.example"));

    let htu = format!("https://corp.example{FOLLOW_UP}");
    let r = w
        .signed_for(&htu, &key, &nonce, "GET", FOLLOW_UP, SID, &fwd, b"")
        .await;
    w.assert_continued(&r, ("GET", FOLLOW_UP, b""), &root, &root)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_forwarding_headers_are_ignored_and_replaced() {
    let w = World::start(None, "trusted_proxies: [\"10.0.0.0/8\"]").await;
    let key = es256();
    let mut spoofed = OUTER.to_vec();
    spoofed.push((
        "forwarded",
        "for=198.51.100.9;proto=https;host=corp.example",
    ));
    let own_host = w.base.trim_start_matches("http://").to_string();
    let body = b"{}";

    let r = w
        .request("POST", "/api/deploys", SID, None, &spoofed, body)
        .await;
    assert_eq!(r.status, 401, "{}", text(&r));
    assert_eq!(
        r.json()["confirmation"]["htu"],
        format!("{}/api/deploys", w.base)
    );
    let mut nonce = r.header("dpop-nonce").expect("nonce").to_string();

    for wrong in [
        "https://corp.example/admin/api/deploys",
        "https://corp.example/api/deploys",
    ] {
        let before = w.legacy.count();
        let r = w
            .signed_for(
                wrong,
                &key,
                &nonce,
                "POST",
                "/api/deploys",
                SID,
                &spoofed,
                body,
            )
            .await;
        w.assert_refused(&r, before, "invalid_dpop_proof", "htu_mismatch")
            .await;
        nonce = r.header("dpop-nonce").expect("fresh nonce").to_string();
    }

    let htu = format!("{}/api/deploys", w.base);
    let r = w
        .signed_for(
            &htu,
            &key,
            &nonce,
            "POST",
            "/api/deploys",
            SID,
            &spoofed,
            body,
        )
        .await;
    // The Location is rewritten to what this client really used, not the spoofed origin.
    let (root, nonce) = continuation_of(&r, 302, &format!("{}{FOLLOW_UP}", w.base));
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
    check(&w.legacy.last());

    let htu = format!("{}{FOLLOW_UP}", w.base);
    let r = w
        .signed_for(&htu, &key, &nonce, "GET", FOLLOW_UP, SID, &spoofed, b"")
        .await;
    w.assert_continued(&r, ("GET", FOLLOW_UP, b""), &root, &root)
        .await;
    check(&w.legacy.last());

    // The same on a low-risk passthrough.
    let r = w
        .request("GET", "/pages/anything", SID, None, &spoofed, b"")
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    check(&w.legacy.last());
}

// ───────────────────────────── session rotation ─────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_rotation_on_a_confirmed_response_keeps_the_device_binding() {
    let w = World::start(Some(PUBLIC), "").await;
    let (key, other) = (es256(), es256());
    let new_sid = "alice-session-after-login-1";
    let r = w
        .confirm(
            &key,
            "POST",
            "/api/session/rotate",
            SID,
            &[("x-rotate-to", new_sid)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(r
        .header("set-cookie")
        .is_some_and(|c| c.starts_with(&format!("sid={new_sid};"))));

    // The new session is already bound to `key`: another device is refused.
    let target = "/api/transfers/retry";
    let nonce = w.challenge("POST", target, new_sid, &[], b"{}").await;
    let before = w.legacy.count();
    let r = w
        .signed(&other, &nonce, "POST", target, new_sid, &[], b"{}")
        .await;
    w.assert_refused(&r, before, "invalid_dpop_proof", "device_mismatch")
        .await;

    let r = w.confirm(&key, "POST", target, new_sid, &[], b"{}").await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let cid = r.header("countersign-confirmation-id").expect("cid");
    assert_eq!(w.accepted(cid).await["device"], key.jkt());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_rotation_on_a_low_risk_response_starts_unbound() {
    let w = World::start(Some(PUBLIC), "").await;
    let (key, other) = (es256(), es256());
    let target = "/api/transfers/retry";
    // `SID` is bound to `key`.
    w.confirm(&key, "POST", target, SID, &[], b"{}").await;

    let new_sid = "alice-session-rotated-by-page-2";
    let r = w
        .request(
            "GET",
            "/session/rotate",
            SID,
            None,
            &[("x-rotate-to", new_sid)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(r
        .header("set-cookie")
        .is_some_and(|c| c.starts_with(&format!("sid={new_sid};"))));

    // Nothing carried over: another device is accepted as the first use of the new session...
    let r = w.confirm(&other, "POST", target, new_sid, &[], b"{}").await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let cid = r.header("countersign-confirmation-id").expect("cid");
    assert_eq!(w.accepted(cid).await["device"], other.jkt());

    // ...and from then on it is that device's session.
    let nonce = w.challenge("POST", target, new_sid, &[], b"{}").await;
    let before = w.legacy.count();
    let r = w
        .signed(&key, &nonce, "POST", target, new_sid, &[], b"{}")
        .await;
    w.assert_refused(&r, before, "invalid_dpop_proof", "device_mismatch")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_after_relative_dot_segment_location_binds_the_resolved_target() {
    let w = World::start(Some(PUBLIC), "").await;
    let key = es256();
    // From `/api/redirect/to`, RFC 3986 §5.2 resolves this to FOLLOW_UP.
    let location = "../deploys/17/confirm?from=create";
    let r = w
        .confirm(
            &key,
            "POST",
            "/api/redirect/to",
            SID,
            &[("x-location", location)],
            b"",
        )
        .await;
    let (root, nonce) = continuation_of(&r, 302, location);
    // What a client following the redirect requests.
    let r = w
        .signed(&key, &nonce, "GET", FOLLOW_UP, SID, &[], b"")
        .await;
    w.assert_continued(&r, ("GET", FOLLOW_UP, b""), &root, &root)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_after_an_equivalent_spelling_of_the_public_origin() {
    let w = World::start(Some(PUBLIC), "").await;
    let key = es256();
    for location in [
        // Explicit default port (RFC 3986 §6.2.3).
        format!("https://admin.example:443{FOLLOW_UP}"),
        // Network-path reference: resolves against https://admin.example.
        format!("//admin.example{FOLLOW_UP}"),
    ] {
        let r = w
            .confirm(
                &key,
                "POST",
                "/api/redirect/to",
                SID,
                &[("x-location", &location)],
                b"",
            )
            .await;
        let (root, nonce) = continuation_of(&r, 302, &location);
        let r = w
            .signed(&key, &nonce, "GET", FOLLOW_UP, SID, &[], b"")
            .await;
        w.assert_continued(&r, ("GET", FOLLOW_UP, b""), &root, &root)
            .await;
    }
}
