//! One test world: a recording upstream, a gateway in front of it started from a config, requests
//! in a session signed with a device key, and the one refusal check every end-to-end test uses.
//!
//! A refusal (docs/protocol.md, "Checks and reasons") is the same everywhere: the status, the
//! `WWW-Authenticate` error of a `401`, the JSON `error` and `reason`, the audit record of *that*
//! request (found by its `Countersign-Request-Id`), and nothing new at the upstream.

use bytes::Bytes;
use countersign::alg::ProofAlg;
use countersign::nonce::action_hash;
use countersign::tools::device_key::DeviceKey;
use serde_json::Value;
use sha2::Digest;

use super::lenient::RawReply;
use super::{send, Gateway, Reply, Upstream};

/// A recording upstream with a gateway in front of it.
pub struct World {
    pub gw: Gateway,
    pub upstream: Upstream,
    /// The external base `htu` is compared with: `public_origin` when configured, else `gw.base`.
    pub public: String,
    /// The cookie named by `session.cookie`, for [`Request::cookie`].
    session_cookie: Option<String>,
}

impl World {
    /// A gateway configured with `config` (see [`Gateway::start`]) in front of a default
    /// recording upstream ([`Upstream::start`]).
    pub async fn start(config: &str) -> World {
        World::on(Upstream::start().await, config).await
    }

    /// A gateway configured with `config` in front of `upstream`.
    pub async fn on(upstream: Upstream, config: &str) -> World {
        let gw = Gateway::start(config, &upstream).await;
        // The world reads what a client needs to know from the config it was given.
        let yaml: Value = serde_yaml_ng::from_str(&config.replace("{upstream}", "upstream"))
            .expect("the test config is YAML");
        let public = yaml["public_origin"]
            .as_str()
            .map_or_else(|| gw.base.clone(), |o| o.trim_end_matches('/').to_string());
        let session_cookie = yaml["session"]["cookie"].as_str().map(str::to_string);
        World {
            gw,
            upstream,
            public,
            session_cookie,
        }
    }

    /// The URL a client sends `target` to.
    pub fn url(&self, target: &str) -> String {
        format!("{}{target}", self.gw.base)
    }

    /// The external URI of `target`: what `htu` must be.
    pub fn htu(&self, target: &str) -> String {
        format!("{}{}", self.public, path_of(target))
    }

    /// How many requests the upstream received so far.
    pub fn seen(&self) -> usize {
        self.upstream.count()
    }

    /// A request for `method target`, to be completed with a session, headers, a body, a proof.
    pub fn request(&self, method: &str, target: &str) -> Request<'_> {
        Request {
            world: self,
            method: method.to_string(),
            target: target.to_string(),
            headers: Vec::new(),
            body: Bytes::new(),
            credential: None,
        }
    }

    /// Asserts that `r` is a refusal (see [`assert_refused`]) and that the upstream received
    /// nothing since it had seen `before` requests. Returns the request's audit record.
    pub async fn assert_refused(
        &self,
        r: &Reply,
        before: usize,
        status: u16,
        error: &str,
        reason: &str,
    ) -> Value {
        let refused = Refused {
            status,
            error,
            reason,
            case: "",
        };
        assert_refused(&self.gw, || self.upstream.count(), before, r, refused).await
    }
}

/// A request being put together; [`Request::send`] sends it on a fresh connection.
#[derive(Clone)]
pub struct Request<'w> {
    world: &'w World,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    /// The session credential a proof's `ath` is computed over.
    credential: Option<String>,
}

impl Request<'_> {
    /// In the cookie session `value` (the cookie named by the config's `session.cookie`).
    pub fn cookie(mut self, value: &str) -> Self {
        let name = self
            .world
            .session_cookie
            .clone()
            .expect("a cookie session: the config names session.cookie");
        self.headers
            .push(("cookie".into(), format!("{name}={value}")));
        self.credential = Some(value.to_string());
        self
    }

    /// In the `bearer_jwt` session `token`, sent as `Authorization: DPoP <token>`.
    pub fn token(mut self, token: &str) -> Self {
        self.headers
            .push(("authorization".into(), format!("DPoP {token}")));
        self.credential = Some(token.to_string());
        self
    }

    /// With one more header (headers may repeat).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// With more headers.
    pub fn headers(mut self, headers: &[(&str, &str)]) -> Self {
        self.headers.extend(
            headers
                .iter()
                .map(|(n, v)| ((*n).to_string(), (*v).to_string())),
        );
        self
    }

    /// With this body.
    pub fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.body = Bytes::copy_from_slice(body.as_ref());
        self
    }

    /// With this `DPoP` header value, exactly.
    pub fn dpop(self, proof: &str) -> Self {
        self.header("dpop", proof)
    }

    /// With a proof by `key` over `nonce` for this request: its method, the world's `htu` of its
    /// target and the hash of its session credential.
    pub fn signed(self, key: &DeviceKey, nonce: &str) -> Self {
        let htu = self.world.htu(&self.target);
        self.signed_for(&htu, key, nonce)
    }

    /// [`Request::signed`], for another `htu`.
    pub fn signed_for(self, htu: &str, key: &DeviceKey, nonce: &str) -> Self {
        let proof = key.proof(&self.method, htu, Some(nonce), self.credential.as_deref());
        self.dpop(&proof)
    }

    /// With a proof by `key` over `nonce` that also signs this exact action (`cs_ach`: method,
    /// target, body), as a one-round-trip client sends it.
    pub fn signed_action(self, key: &DeviceKey, nonce: &str) -> Self {
        let body_sha256: [u8; 32] = sha2::Sha256::digest(&self.body).into();
        let hash = action_hash(&self.method, &self.target, &body_sha256);
        self.signed_hash(key, nonce, &hash)
    }

    /// A proof by `key` over `nonce` carrying `cs_ach: hash`, whatever the request is.
    pub fn signed_hash(self, key: &DeviceKey, nonce: &str, hash: &str) -> Self {
        let htu = self.world.htu(&self.target);
        let credential = self.credential.as_deref();
        let proof = key.action_proof(&self.method, &htu, Some(nonce), credential, Some(hash));
        self.dpop(&proof)
    }

    /// Sends it on a fresh connection.
    pub async fn send(&self) -> Reply {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        send(
            &self.world.url(&self.target),
            &self.method,
            &headers,
            self.body.clone(),
        )
        .await
    }

    /// Sends it (without a proof) and returns the `DPoP-Nonce` of its `401 use_dpop_nonce`.
    pub async fn challenge(&self) -> String {
        let r = self.send().await;
        assert_eq!(r.status, 401, "challenge: {}", r.text());
        assert_eq!(r.dpop_error().as_deref(), Some("use_dpop_nonce"));
        r.header("dpop-nonce")
            .expect("a challenge carries a DPoP-Nonce")
            .to_owned()
    }

    /// Challenge, then the retry signed by `key`: a whole confirmation. Asserts it was confirmed.
    pub async fn confirm(&self, key: &DeviceKey) -> Reply {
        let nonce = self.challenge().await;
        let r = self.clone().signed(key, &nonce).send().await;
        assert!(
            r.header("countersign-confirmation-id").is_some(),
            "{} {} should be confirmed: {}",
            self.method,
            self.target,
            r.text()
        );
        r
    }
}

/// A refusal a test expects.
#[derive(Debug, Clone, Copy)]
pub struct Refused<'a> {
    pub status: u16,
    /// The `error` code of the JSON body (and of `WWW-Authenticate` on a `401`).
    pub error: &'a str,
    /// The reason in the JSON body and the audit record.
    pub reason: &'a str,
    /// What the test was trying, for the failure message (may be empty).
    pub case: &'a str,
}

/// A response as a client read it: the hyper client's [`Reply`] or the raw client's [`RawReply`].
pub trait Answer {
    fn status_code(&self) -> u16;
    fn header_value(&self, name: &str) -> Option<String>;
    fn body_bytes(&self) -> &[u8];
}

impl Answer for Reply {
    fn status_code(&self) -> u16 {
        self.status
    }
    fn header_value(&self, name: &str) -> Option<String> {
        self.header(name).map(str::to_string)
    }
    fn body_bytes(&self) -> &[u8] {
        &self.body
    }
}

impl Answer for RawReply {
    fn status_code(&self) -> u16 {
        self.status
    }
    fn header_value(&self, name: &str) -> Option<String> {
        self.header(name)
    }
    fn body_bytes(&self) -> &[u8] {
        &self.body
    }
}

/// Asserts that `r` is the refusal `want`, made by `gw`, and that the upstream (whose request
/// count `upstream_count` reads) received nothing since it had seen `before` requests:
///
/// - the status; `Cache-Control: no-store`; no `Countersign-Confirmation-Id`;
/// - a `401` carries `WWW-Authenticate: DPoP error="<error>"` (any other status, if it carries
///   one, the same error); a `401` of a valid session (any error but `invalid_token`) carries a
///   fresh, exposed `DPoP-Nonce`, one of no session or an ended one none;
/// - the JSON body's `error`, `reason` and `error_description`;
/// - the audit record of this very request (by `Countersign-Request-Id`): `rejected`, `reason`;
/// - the upstream's request count is unchanged.
///
/// Returns the audit record.
pub async fn assert_refused(
    gw: &Gateway,
    upstream_count: impl Fn() -> usize,
    before: usize,
    r: &impl Answer,
    want: Refused<'_>,
) -> Value {
    let case = want.case;
    let text = String::from_utf8_lossy(r.body_bytes()).into_owned();
    assert_eq!(r.status_code(), want.status, "{case}: status; body: {text}");
    assert_eq!(
        r.header_value("cache-control").as_deref(),
        Some("no-store"),
        "{case}: a refusal is never cached"
    );
    assert!(
        r.header_value("countersign-confirmation-id").is_none(),
        "{case}: a refusal is no confirmation"
    );

    let www = r.header_value("www-authenticate");
    if want.status == 401 || www.is_some() {
        let www = www.unwrap_or_default();
        assert!(www.starts_with("DPoP "), "{case}: WWW-Authenticate: {www}");
        assert_eq!(
            dpop_error(&www),
            Some(want.error),
            "{case}: WWW-Authenticate: {www}"
        );
    }
    if want.status == 401 {
        let nonce = r.header_value("dpop-nonce");
        if want.error == "invalid_token" {
            assert_eq!(nonce, None, "{case}: no nonce without a valid session");
        } else {
            let nonce =
                nonce.unwrap_or_else(|| panic!("{case}: a 401 of a valid session has a nonce"));
            assert_nonce_shape(&nonce);
            let expose = r
                .header_value("access-control-expose-headers")
                .unwrap_or_default()
                .to_ascii_lowercase();
            assert!(
                expose.contains("dpop-nonce") && expose.contains("www-authenticate"),
                "{case}: exposed: {expose}"
            );
        }
    }

    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{case}: a refusal is JSON: {text}"));
    assert_eq!(body["error"], want.error, "{case}: JSON body: {body}");
    assert_eq!(body["reason"], want.reason, "{case}: JSON body: {body}");
    assert!(
        body["error_description"].is_string(),
        "{case}: JSON body: {body}"
    );

    let id = r.header_value("countersign-request-id").unwrap_or_else(|| {
        panic!("{case}: the gateway names the request in Countersign-Request-Id")
    });
    let audit = gw.wait_for_audit(|a| a["request_id"] == id.as_str()).await;
    assert_eq!(audit["event"], "rejected", "{case}: audit: {audit}");
    assert_eq!(audit["reason"], want.reason, "{case}: audit: {audit}");
    assert_eq!(
        upstream_count(),
        before,
        "{case}: the upstream must see nothing of a refused request"
    );
    audit
}

/// The `error` of `WWW-Authenticate: DPoP error="..."`.
fn dpop_error(www: &str) -> Option<&str> {
    let start = www.find("error=\"")? + 7;
    www[start..].split('"').next()
}

/// `1*NQCHAR` (RFC 9449 §8.1) and at least 128 bits worth of base64url.
pub fn assert_nonce_shape(nonce: &str) {
    assert!(
        nonce.len() >= 22,
        "nonce too short to carry 128 bits: {nonce}"
    );
    assert!(
        nonce
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b)),
        "nonce is not 1*NQCHAR: {nonce}"
    );
}

/// The path of a request target, without the query.
pub fn path_of(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}

/// The payload of a compact JWS, unverified.
pub fn jws_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a compact JWS");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url JWS payload");
    serde_json::from_slice(&bytes).expect("JSON JWS payload")
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh ES256 device key.
pub fn es256() -> DeviceKey {
    DeviceKey::generate(ProofAlg::Es256).expect("ES256 key generation works on this platform")
}

/// A fresh Ed25519 device key.
pub fn ed25519() -> DeviceKey {
    DeviceKey::generate(ProofAlg::EdDsa).expect("Ed25519 key generation works on this platform")
}
