//! Reading the session the legacy app or IdP already issued (docs/protocol.md, "Sessions"): a
//! DPoP-bound or bearer JWT, a cookie, or a header. The gateway never owns sessions; it only
//! identifies them, verifies what can be verified, and keeps their credentials out of every log.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::HeaderMap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use moka::sync::Cache;
use moka::Expiry;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// `session:`.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Where the credential is and how it is verified.
    pub kind: SessionKind,
    /// How `Authorization: DPoP` is presented upstream.
    pub upstream_scheme: UpstreamScheme,
    /// How long a first-use device binding lasts (default 12 h).
    pub binding_ttl: Duration,
    /// Accept `Authorization: Bearer` for tokens without `cnf` (default false).
    pub allow_bearer_scheme: bool,
    /// Header an upstream auth proxy sets with the subject; trusted only from `trusted_proxies`
    /// (`session.subject_header`, or `session.subject_from: { header }`).
    pub subject_header: Option<String>,
    /// The token claim listing the subject's groups (default `groups`).
    pub groups_claim: String,
    /// `session.subject_from: { cookie_jwt_claim }`: the session cookie is a JWT, verified with
    /// these keys, and this claim names the subject.
    pub subject_from_cookie_jwt: Option<CookieJwtSubject>,
    /// Which device keys may confirm for a session (`session.binding`, default `first_use`).
    pub binding: DeviceBinding,
    /// Most devices enrolled per subject (`session.max_devices`, default 16).
    pub max_devices: usize,
    /// How long a `countersign devices invite` code can be redeemed (default 15 min).
    pub invite_ttl: Duration,
}

/// `session.binding`: which device keys may confirm for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceBinding {
    /// The first key (or passkey) that confirms binds to the session; others are refused.
    FirstUse,
    /// Only devices enrolled for the session's subject confirm.
    Enrolled,
}

impl DeviceBinding {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceBinding::FirstUse => "first_use",
            DeviceBinding::Enrolled => "enrolled",
        }
    }
}

/// Where a cookie session's subject comes from when the cookie is a JWT.
#[derive(Debug, Clone)]
pub struct CookieJwtSubject {
    /// The claim holding the subject, e.g. `sub` or `email`.
    pub claim: String,
    /// Verification keys.
    pub keys: JwtKeys,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud`.
    pub audience: Option<String>,
}

/// `session.kind` and its parameters.
#[derive(Debug, Clone)]
pub enum SessionKind {
    /// `Authorization: DPoP <jwt>`.
    BearerJwt {
        /// Verification keys.
        keys: JwtKeys,
        /// Required `iss`.
        issuer: Option<String>,
        /// Required `aud`.
        audience: Option<String>,
    },
    /// Cookie named `session.cookie`.
    Cookie {
        /// Cookie name.
        name: String,
    },
    /// Header named `session.header`.
    Header {
        /// Header name, lower case.
        name: String,
    },
}

/// Where session JWT keys come from.
#[derive(Debug, Clone)]
pub enum JwtKeys {
    /// `session.jwks_file`.
    JwksFile(PathBuf),
    /// `session.public_key_pem`.
    PublicKeyPem(PathBuf),
    /// `session.hs256_secret_env`: the variable's name.
    Hs256Env(String),
}

/// `session.upstream_scheme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamScheme {
    /// Rewrite `Authorization: DPoP` to `Bearer` (default).
    Bearer,
    /// Forward the scheme unchanged.
    Dpop,
}

/// A session identified on a request.
#[derive(Debug, Clone)]
pub struct Session {
    /// The session id (`sid`, else `jti`, else a hash of the credential).
    pub id: String,
    /// The subject, when known.
    pub subject: Option<String>,
    /// base64url(SHA-256(credential)): what a proof's `ath` must equal.
    pub ath: String,
    /// `cnf.jkt` of a DPoP-bound token.
    pub cnf_jkt: Option<String>,
    /// Whether the credential came as `Authorization: Bearer`.
    pub bearer_scheme: bool,
    /// Every claim of a verified session JWT (for policy and RFC 9470 step-up); `None` for
    /// cookie and header sessions.
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

impl Session {
    /// First 16 hex digits of SHA-256 of the session id: what audit records show.
    pub fn id_hash(&self) -> String {
        let digest = Sha256::digest(self.id.as_bytes());
        hex::encode(&digest[..8])
    }
}

/// Why no session could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    /// No credential on the request.
    Missing,
    /// A credential that does not verify, has expired, or comes in an unaccepted form.
    Invalid,
    /// A DPoP-bound token sent with the `Bearer` scheme (RFC 9449 §7.2).
    Downgrade,
    /// A token sent with the `Bearer` scheme while `session.allow_bearer_scheme` is false.
    BearerNotAllowed,
}

#[derive(Debug, Clone, Deserialize)]
struct Claims {
    sub: Option<String>,
    sid: Option<String>,
    jti: Option<String>,
    exp: Option<i64>,
    cnf: Option<Cnf>,
    /// Every other claim, for `session.subject_from: { cookie_jwt_claim }`.
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

impl Claims {
    /// The string value of `name`.
    fn string(&self, name: &str) -> Option<String> {
        match name {
            "sub" => self.sub.clone(),
            "sid" => self.sid.clone(),
            "jti" => self.jti.clone(),
            _ => self.other.get(name)?.as_str().map(str::to_owned),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Cnf {
    jkt: Option<String>,
}

struct TokenKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

struct Verified {
    claims: Claims,
    all: Arc<serde_json::Map<String, serde_json::Value>>,
    expires: SystemTime,
}

struct UntilExp;

impl Expiry<[u8; 32], Arc<Verified>> for UntilExp {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        v: &Arc<Verified>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(
            v.expires
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }
}

/// Verifies session JWTs, caching each verified token by its hash until its `exp`.
struct JwtVerifier {
    keys: Vec<TokenKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    cache: Cache<[u8; 32], Arc<Verified>>,
}

/// Reads sessions as configured.
pub struct Sessions {
    config: SessionConfig,
    jwt: Option<JwtVerifier>,
    /// `subject_from: { cookie_jwt_claim }`: the claim, and the verifier of the cookie JWT.
    cookie_subject: Option<(String, JwtVerifier)>,
}

/// A session key material problem at start-up.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct KeyLoadError {
    /// The config field.
    pub field: &'static str,
    /// What went wrong.
    pub message: String,
}

impl Sessions {
    /// Prepares session reading, loading JWT keys when `kind` is `bearer_jwt`.
    pub fn new(config: &SessionConfig, clock_skew: Duration) -> Result<Sessions, KeyLoadError> {
        let verifier = |keys, issuer: &Option<String>, audience: &Option<String>| {
            Ok::<_, KeyLoadError>(JwtVerifier {
                keys: load_keys(keys)?,
                issuer: issuer.clone(),
                audience: audience.clone(),
                leeway: clock_skew.as_secs(),
                cache: Cache::builder()
                    .max_capacity(100_000)
                    .expire_after(UntilExp)
                    .build(),
            })
        };
        let jwt = match &config.kind {
            SessionKind::BearerJwt {
                keys,
                issuer,
                audience,
            } => Some(verifier(keys, issuer, audience)?),
            _ => None,
        };
        let cookie_subject = match &config.subject_from_cookie_jwt {
            Some(from) => Some((
                from.claim.clone(),
                verifier(&from.keys, &from.issuer, &from.audience)?,
            )),
            None => None,
        };
        Ok(Sessions {
            config: config.clone(),
            jwt,
            cookie_subject,
        })
    }

    /// Where the session credential is read from.
    pub fn kind(&self) -> &SessionKind {
        &self.config.kind
    }

    /// Identifies the session of a request. `trusted_peer` says whether `subject_header` may be
    /// believed.
    pub fn read(&self, headers: &HeaderMap, trusted_peer: bool) -> Result<Session, SessionError> {
        let subject_from_proxy = || {
            let name = self.config.subject_header.as_deref()?;
            if !trusted_peer {
                return None;
            }
            headers.get(name)?.to_str().ok().map(str::to_owned)
        };
        match (&self.config.kind, &self.jwt) {
            (SessionKind::BearerJwt { .. }, Some(jwt)) => {
                let (scheme_bearer, token) = authorization(headers)?;
                let claims = jwt.verify(token)?;
                let cnf_jkt = claims.cnf.as_ref().and_then(|c| c.jkt.clone());
                if scheme_bearer && cnf_jkt.is_some() {
                    return Err(SessionError::Downgrade);
                }
                if scheme_bearer && !self.config.allow_bearer_scheme {
                    return Err(SessionError::BearerNotAllowed);
                }
                let id = claims
                    .sid
                    .clone()
                    .or_else(|| claims.jti.clone())
                    .unwrap_or_else(|| hex::encode(Sha256::digest(token.as_bytes())));
                Ok(Session {
                    id,
                    subject: claims.sub.clone(),
                    ath: ath(token),
                    cnf_jkt,
                    bearer_scheme: scheme_bearer,
                    claims: Some(claims.all.clone()),
                })
            }
            (SessionKind::Cookie { name }, _) => {
                let value = cookie(headers, name)?;
                let subject = match &self.cookie_subject {
                    // The operator said the cookie is a JWT: one that does not verify (or has
                    // expired) is no session, rather than a session of nobody.
                    Some((claim, verifier)) => verifier.verify(value)?.string(claim),
                    None => subject_from_proxy(),
                };
                Ok(opaque(value, subject))
            }
            (SessionKind::Header { name }, _) => {
                let mut values = headers.get_all(name.as_str()).iter();
                let value = values.next().ok_or(SessionError::Missing)?;
                if values.next().is_some() {
                    return Err(SessionError::Invalid);
                }
                let value = value.to_str().map_err(|_| SessionError::Invalid)?;
                if value.is_empty() {
                    return Err(SessionError::Missing);
                }
                Ok(opaque(value, subject_from_proxy()))
            }
            (SessionKind::BearerJwt { .. }, None) => Err(SessionError::Invalid),
        }
    }
}

impl Sessions {
    /// The new session id when a response to a request of `current` sets a different session
    /// cookie (the app rotating its session id); `None` otherwise, or for other session kinds.
    pub fn rotated(&self, response: &HeaderMap, current: &Session) -> Option<String> {
        let SessionKind::Cookie { name } = &self.config.kind else {
            return None;
        };
        response
            .get_all(http::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| {
                let mut parts = v.split(';');
                let (k, value) = parts.next()?.trim().split_once('=')?;
                let value = value.trim().trim_matches('"');
                // A cookie being deleted is no new session.
                let deleting = parts.any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
                (k.trim() == name && !value.is_empty() && !deleting).then(|| opaque(value, None).id)
            })
            .next_back()
            .filter(|id| *id != current.id)
    }
}

fn opaque(value: &str, subject: Option<String>) -> Session {
    Session {
        id: hex::encode(Sha256::digest(value.as_bytes())),
        subject,
        ath: ath(value),
        cnf_jkt: None,
        bearer_scheme: false,
        claims: None,
    }
}

/// base64url(SHA-256(credential)), the RFC 9449 §4.2 `ath`.
pub fn ath(credential: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(credential.as_bytes()))
}

/// The one `Authorization` header: (is Bearer, token).
fn authorization(headers: &HeaderMap) -> Result<(bool, &str), SessionError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values.next().ok_or(SessionError::Missing)?;
    if values.next().is_some() {
        return Err(SessionError::Invalid);
    }
    let value = value.to_str().map_err(|_| SessionError::Invalid)?;
    let (scheme, token) = value.split_once(' ').ok_or(SessionError::Invalid)?;
    let token = token.trim_start_matches(' ');
    if token.is_empty() {
        return Err(SessionError::Missing);
    }
    if scheme.eq_ignore_ascii_case("DPoP") {
        Ok((false, token))
    } else if scheme.eq_ignore_ascii_case("Bearer") {
        Ok((true, token))
    } else {
        Err(SessionError::Invalid)
    }
}

/// The one cookie called `name`. A request carrying it twice is ambiguous (the upstream may read
/// either), so it identifies no session; so is one carrying a look-alike (`Session`, `sess%69on`)
/// next to it, since case-insensitive (ASP.NET) or percent-decoding (older PHP) upstreams read
/// the look-alike as the session cookie.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, SessionError> {
    let mut values = headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| {
            let pair = std::str::from_utf8(pair).ok()?.trim();
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            (k == name || looks_like(k, name)).then(|| v.trim().trim_matches('"'))
        });
    let value = values.next().ok_or(SessionError::Missing)?;
    if values.next().is_some() {
        return Err(SessionError::Invalid);
    }
    if value.is_empty() {
        return Err(SessionError::Missing);
    }
    Ok(value)
}

/// What a refusal for a missing session credential tells the client to send.
pub fn missing_description(kind: &SessionKind) -> String {
    let expected = match kind {
        SessionKind::BearerJwt { .. } => "an Authorization: DPoP <token> header".to_string(),
        SessionKind::Cookie { name } => format!("the session cookie {name}"),
        SessionKind::Header { name } => format!("the session header {name}"),
    };
    format!("no session credential: send {expected}")
}

/// Whether a cookie name reads as `name` once case is ignored or percent-escapes decoded.
fn looks_like(candidate: &str, name: &str) -> bool {
    if candidate.eq_ignore_ascii_case(name) {
        return true;
    }
    if !candidate.contains('%') {
        return false;
    }
    let decoded: Vec<u8> = form_urlencoded::parse(format!("{candidate}=").as_bytes())
        .next()
        .map(|(k, _)| k.into_owned().into_bytes())
        .unwrap_or_default();
    decoded.eq_ignore_ascii_case(name.as_bytes())
}

impl JwtVerifier {
    fn verify(&self, token: &str) -> Result<Arc<Verified>, SessionError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = SystemTime::now();
        if let Some(hit) = self.cache.get(&digest) {
            if hit.expires > now {
                return Ok(hit);
            }
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| SessionError::Invalid)?;
        let candidates = self.keys.iter().filter(|k| {
            k.alg == header.alg && (header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
        });
        for candidate in candidates {
            let mut validation = Validation::new(candidate.alg);
            validation.leeway = self.leeway;
            validation.validate_nbf = true;
            validation.set_required_spec_claims(&["exp"]);
            match &self.audience {
                Some(aud) => validation.set_audience(&[aud]),
                None => validation.validate_aud = false,
            }
            if let Some(iss) = &self.issuer {
                validation.set_issuer(&[iss]);
            }
            let decoded = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                &candidate.key,
                &validation,
            );
            if let Ok(data) = decoded {
                let Ok(claims) = serde_json::from_value::<Claims>(serde_json::Value::Object(
                    data.claims.clone(),
                )) else {
                    return Err(SessionError::Invalid);
                };
                let exp = claims.exp.unwrap_or(0).max(0) as u64;
                let verified = Arc::new(Verified {
                    expires: UNIX_EPOCH + Duration::from_secs(exp),
                    claims,
                    all: Arc::new(data.claims),
                });
                self.cache.insert(digest, verified.clone());
                return Ok(verified);
            }
        }
        Err(SessionError::Invalid)
    }
}

impl std::ops::Deref for Verified {
    type Target = Claims;
    fn deref(&self) -> &Claims {
        &self.claims
    }
}

fn load_keys(keys: &JwtKeys) -> Result<Vec<TokenKey>, KeyLoadError> {
    match keys {
        JwtKeys::JwksFile(path) => {
            let err = |message: String| KeyLoadError {
                field: "session.jwks_file",
                message,
            };
            let text = std::fs::read_to_string(path)
                .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
            let set: JwkSet = serde_json::from_str(&text)
                .map_err(|e| err(format!("{} is not a JWKS: {e}", path.display())))?;
            let mut out = Vec::new();
            for jwk in &set.keys {
                let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
                    (_, Some(a)) => a.to_string().parse::<Algorithm>().ok(),
                    (AlgorithmParameters::RSA(_), None) => Some(Algorithm::RS256),
                    (AlgorithmParameters::EllipticCurve(ec), None) => match ec.curve {
                        EllipticCurve::P256 => Some(Algorithm::ES256),
                        EllipticCurve::P384 => Some(Algorithm::ES384),
                        _ => None,
                    },
                    (AlgorithmParameters::OctetKeyPair(_), None) => Some(Algorithm::EdDSA),
                    _ => None,
                };
                let (Some(alg), Ok(key)) = (alg, DecodingKey::from_jwk(jwk)) else {
                    continue;
                };
                out.push(TokenKey {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                });
            }
            if out.is_empty() {
                return Err(err(format!("{} holds no usable key", path.display())));
            }
            Ok(out)
        }
        JwtKeys::PublicKeyPem(path) => {
            let err = |message: String| KeyLoadError {
                field: "session.public_key_pem",
                message,
            };
            let pem = std::fs::read(path)
                .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
            let mut out = Vec::new();
            if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                for alg in [Algorithm::RS256, Algorithm::PS256] {
                    out.push(TokenKey {
                        kid: None,
                        alg,
                        key: key.clone(),
                    });
                }
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                for alg in [Algorithm::ES256, Algorithm::ES384] {
                    out.push(TokenKey {
                        kid: None,
                        alg,
                        key: key.clone(),
                    });
                }
            } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
                out.push(TokenKey {
                    kid: None,
                    alg: Algorithm::EdDSA,
                    key,
                });
            } else {
                return Err(err(format!(
                    "{} is not an RSA, EC or Ed25519 public key in PEM",
                    path.display()
                )));
            }
            Ok(out)
        }
        JwtKeys::Hs256Env(var) => {
            let secret = std::env::var(var).map_err(|_| KeyLoadError {
                field: "session.hs256_secret_env",
                message: format!("environment variable {var} is not set"),
            })?;
            if secret.len() < 32 {
                return Err(KeyLoadError {
                    field: "session.hs256_secret_env",
                    message: format!("{var} must hold at least 32 bytes"),
                });
            }
            let key = DecodingKey::from_secret(secret.as_bytes()).map_err(|e| KeyLoadError {
                field: "session.hs256_secret_env",
                message: format!("{var} is not a usable HMAC key: {e}"),
            })?;
            Ok(vec![TokenKey {
                kid: None,
                alg: Algorithm::HS256,
                key,
            }])
        }
    }
}
