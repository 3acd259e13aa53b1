//! DPoP proof verification (RFC 9449 §4.3), the structural half of a confirmation: one compact JWS
//! in one `DPoP` header, `typ` `dpop+jwt`, an allowed asymmetric `alg` that fits the embedded
//! public `jwk`, a valid signature, the required claims, and `htm`/`htu`/`iat` matching this
//! request. Checks run in the order of docs/protocol.md ("Checks and reasons") and the first
//! failure is the `Reason`. What needs state (the session's `ath` and device binding, the nonce,
//! `jti` replay) is the caller's, using the returned `VerifiedProof`. Pure and synchronous: no I/O,
//! no clock, never panics on input.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use crate::alg::ProofAlg;
use crate::htu;
use crate::jwk::PublicJwk;
use crate::reason::Reason;

/// Largest accepted `DPoP` header value, in bytes (a 4096-bit RSA proof is about 1.5 KiB).
pub const MAX_PROOF_LEN: usize = 8 * 1024;

/// Longest accepted `jti`, in bytes.
pub const MAX_JTI_LEN: usize = 256;

/// Longest accepted `cs_ach` (a base64url SHA-256 is 43 characters).
const MAX_ACTION_HASH_LEN: usize = 64;

/// Header parameters that locate a key elsewhere; a proof carries its key in `jwk` only (RFC 9449 §4.2).
const KEY_REFERENCES: [&str; 4] = ["jku", "x5u", "x5c", "kid"];

/// What a proof must match: the gateway's policy and this request.
#[derive(Debug, Clone, Copy)]
pub struct ProofCheck<'a> {
    /// Algorithms enabled by `confirmation.algs`.
    pub algs: &'a [ProofAlg],
    /// The request method, compared exactly with `htm`.
    pub method: &'a str,
    /// The external URI of the request, already passed through `htu::normalize`.
    pub htu: &'a str,
    /// The current time, in seconds since the Unix epoch.
    pub now: i64,
    /// How old `iat` may be (`confirmation.proof_max_age`).
    pub max_age: Duration,
    /// How far in the future `iat` may be (`confirmation.clock_skew`).
    pub clock_skew: Duration,
}

/// A proof whose structure, signature and request binding have been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// RFC 7638 thumbprint of the proof key.
    pub jkt: String,
    /// The proof's unique identifier, for replay detection.
    pub jti: String,
    /// When the proof was created, in seconds since the Unix epoch.
    pub iat: i64,
    /// The gateway nonce the proof answers, if any.
    pub nonce: Option<String>,
    /// Hash of the session credential the proof is bound to.
    pub ath: String,
    /// `cs_ach`: the hash of the exact action the proof signs (docs/protocol.md, "One round
    /// trip"), when the client binds it itself.
    pub action_hash: Option<String>,
}

impl VerifiedProof {
    /// Whether `ath` equals `expected` (the hash of this request's credential), in constant time.
    pub fn ath_matches(&self, expected: &str) -> bool {
        self.ath.as_bytes().ct_eq(expected.as_bytes()).into()
    }
}

/// Verifies the `DPoP` header values of one request against `check` (RFC 9449 §4.3).
pub fn verify(dpop_headers: &[&[u8]], check: &ProofCheck) -> Result<VerifiedProof, Reason> {
    // RFC 9449 §4.3 (1): exactly one DPoP header.
    let [proof] = dpop_headers else {
        return Err(Reason::Malformed);
    };
    let CompactJws {
        signing_input,
        signature,
        header,
        mut claims,
    } = CompactJws::split(trim_ows(proof))?;

    // RFC 9449 §4.3 (4).
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err(Reason::BadTyp);
    }
    // RFC 9449 §4.3 (5): an asymmetric algorithm the gateway enabled; `from_name` knows no
    // `none` and no HMAC, so those never pass.
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(ProofAlg::from_name)
        .filter(|alg| check.algs.contains(alg))
        .ok_or(Reason::BadAlg)?;
    // RFC 9449 §4.2: the key is the `jwk` header, never found by reference.
    if KEY_REFERENCES.iter().any(|name| header.contains_key(*name)) {
        return Err(Reason::BadJwk);
    }
    let Some(Value::Object(jwk)) = header.get("jwk") else {
        return Err(Reason::BadJwk);
    };
    // RFC 9449 §4.3 (7): a public key of a supported type.
    let key = PublicJwk::parse(jwk)?;
    if !key.accepts(alg) {
        return Err(Reason::BadAlg);
    }
    // RFC 9449 §4.3 (6), over the exact bytes received (RFC 7515 §5.2). An undecodable signature
    // or one of the wrong form (e.g. DER instead of JOSE r||s for ECDSA) is a bad signature.
    match jsonwebtoken::crypto::verify(
        signature,
        signing_input,
        key.decoding_key(),
        jws_algorithm(alg),
    ) {
        Ok(true) => {}
        _ => return Err(Reason::BadSignature),
    }

    // RFC 9449 §4.3 (3), §4.2: required claims, with their types.
    let jti = take_string(&mut claims, "jti")
        .filter(|jti| !jti.is_empty() && jti.len() <= MAX_JTI_LEN)
        .ok_or(Reason::MissingClaim)?;
    let htm = take_string(&mut claims, "htm").ok_or(Reason::MissingClaim)?;
    let proof_htu = take_string(&mut claims, "htu").ok_or(Reason::MissingClaim)?;
    // RFC 7519 §2 allows fractional NumericDates; proofs carry whole seconds, and an integer is
    // the only unambiguous form, so a float or an out-of-range number is refused.
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or(Reason::MissingClaim)?;
    let ath = take_string(&mut claims, "ath").ok_or(Reason::AthMissing)?;
    let nonce = match claims.remove("nonce") {
        None => None,
        Some(Value::String(nonce)) => Some(nonce),
        Some(_) => return Err(Reason::MissingClaim),
    };
    let action_hash = match claims.remove("cs_ach") {
        None => None,
        Some(Value::String(hash)) if hash.len() <= MAX_ACTION_HASH_LEN => Some(hash),
        Some(_) => return Err(Reason::MissingClaim),
    };

    // RFC 9449 §4.3 (8): the method, exactly (RFC 9110 §9.1: methods are case-sensitive).
    if htm != check.method {
        return Err(Reason::HtmMismatch);
    }
    // RFC 9449 §4.3 (9): the URI without query and fragment, both sides normalised.
    if htu::normalize(&proof_htu).as_deref() != Some(check.htu) {
        return Err(Reason::HtuMismatch);
    }
    // RFC 9449 §4.3 (11), §11.1: created within the accepted window.
    let max_age = i64::try_from(check.max_age.as_secs()).unwrap_or(i64::MAX);
    let clock_skew = i64::try_from(check.clock_skew.as_secs()).unwrap_or(i64::MAX);
    if iat < check.now.saturating_sub(max_age) || iat > check.now.saturating_add(clock_skew) {
        return Err(Reason::StaleProof);
    }

    Ok(VerifiedProof {
        jkt: key.thumbprint().to_owned(),
        jti,
        iat,
        nonce,
        ath,
        action_hash,
    })
}

/// A compact JWS (RFC 7515 §7.1) taken apart, not yet verified.
struct CompactJws<'a> {
    /// `header.payload` exactly as received: what the signature covers.
    signing_input: &'a [u8],
    /// The base64url signature segment.
    signature: &'a str,
    header: Map<String, Value>,
    claims: Map<String, Value>,
}

impl<'a> CompactJws<'a> {
    /// Splits a proof into its parts; any structural fault is `Malformed`.
    fn split(proof: &'a [u8]) -> Result<CompactJws<'a>, Reason> {
        if proof.is_empty() || proof.len() > MAX_PROOF_LEN {
            return Err(Reason::Malformed);
        }
        // Only the base64url alphabet and the two dots: no whitespace, padding or non-ASCII.
        if !proof
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(Reason::Malformed);
        }
        let text = std::str::from_utf8(proof).map_err(|_| Reason::Malformed)?;
        let mut segments = text.split('.');
        let (Some(header), Some(payload), Some(signature), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(Reason::Malformed);
        };
        let header_json = json_object(header)?;
        // RFC 7515 §4.1.11: no extension is understood here, so a critical one cannot be honoured
        // (this also refuses RFC 7797 unencoded payloads).
        if header_json.contains_key("crit") {
            return Err(Reason::Malformed);
        }
        Ok(CompactJws {
            signing_input: &proof[..header.len() + 1 + payload.len()],
            signature,
            header: header_json,
            claims: json_object(payload)?,
        })
    }
}

/// RFC 9110 §5.5: a field value excludes surrounding spaces and tabs (nothing else is trimmed).
fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| matches!(b, b' ' | b'\t');
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// Decodes one base64url segment that must hold a JSON object. Duplicate member names resolve to
/// the last one (RFC 7515 §5.2 (4) allows this); the signature covers the bytes either way.
fn json_object(segment: &str) -> Result<Map<String, Value>, Reason> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Reason::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Reason::Malformed),
    }
}

/// Removes a claim that must be a string, taking ownership of it without copying.
fn take_string(claims: &mut Map<String, Value>, name: &str) -> Option<String> {
    match claims.remove(name) {
        Some(Value::String(value)) => Some(value),
        _ => None,
    }
}

/// The JWS algorithm (RFC 7518 §3.1, RFC 8037 §3.1) that verifies `alg`.
fn jws_algorithm(alg: ProofAlg) -> Algorithm {
    match alg {
        ProofAlg::Es256 => Algorithm::ES256,
        ProofAlg::Es384 => Algorithm::ES384,
        ProofAlg::EdDsa => Algorithm::EdDSA,
        ProofAlg::Rs256 => Algorithm::RS256,
        ProofAlg::Ps256 => Algorithm::PS256,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::tools::device_key::DeviceKey;

    const URL: &str = "https://admin.example.com/api/users/7";
    const NOW: i64 = 1_700_000_000;

    fn check(algs: &[ProofAlg]) -> ProofCheck<'_> {
        ProofCheck {
            algs,
            method: "DELETE",
            htu: URL,
            now: NOW,
            max_age: Duration::from_secs(60),
            clock_skew: Duration::from_secs(5),
        }
    }

    fn claims() -> Value {
        json!({"jti": "j-1", "htm": "DELETE", "htu": URL, "iat": NOW, "nonce": "n-1", "ath": crate::session::ath("token")})
    }

    fn header(key: &DeviceKey) -> Value {
        json!({"typ": "dpop+jwt", "alg": key.alg().as_str(), "jwk": key.public_jwk()})
    }

    #[test]
    fn jsonwebtoken_has_a_crypto_provider() {
        // With both or neither of its crypto features, `jsonwebtoken::crypto::verify` would panic.
        assert!(jsonwebtoken::crypto::CryptoProvider::try_get_default().is_some());
    }

    #[test]
    fn a_valid_proof_verifies() {
        let key =
            DeviceKey::generate(ProofAlg::Es256).expect("key generation works on this platform");
        let proof = key.sign_jws(&header(&key), &claims());
        let verified =
            verify(&[proof.as_bytes()], &check(&[ProofAlg::Es256])).expect("valid proof");
        assert_eq!(verified.jkt, key.jkt());
        assert_eq!(verified.jti, "j-1");
        assert_eq!(verified.iat, NOW);
        assert_eq!(verified.nonce.as_deref(), Some("n-1"));
        assert!(verified.ath_matches(&crate::session::ath("token")));
        assert!(!verified.ath_matches(&crate::session::ath("other")));
        assert!(!verified.ath_matches(""));
    }

    #[test]
    fn crit_is_refused() {
        let key =
            DeviceKey::generate(ProofAlg::EdDsa).expect("key generation works on this platform");
        let mut h = header(&key);
        h["crit"] = json!(["b64"]);
        h["b64"] = json!(false);
        let proof = key.sign_jws(&h, &claims());
        assert_eq!(
            verify(&[proof.as_bytes()], &check(&[ProofAlg::EdDsa])),
            Err(Reason::Malformed)
        );
    }

    #[test]
    fn float_and_string_iat_are_refused() {
        let key =
            DeviceKey::generate(ProofAlg::EdDsa).expect("key generation works on this platform");
        for iat in [
            json!(1_700_000_000.0),
            json!(1.7e9),
            json!("1700000000"),
            json!(u64::MAX),
            json!(null),
        ] {
            let mut c = claims();
            c["iat"] = iat.clone();
            let proof = key.sign_jws(&header(&key), &c);
            assert_eq!(
                verify(&[proof.as_bytes()], &check(&[ProofAlg::EdDsa])),
                Err(Reason::MissingClaim),
                "{iat}"
            );
        }
    }

    #[test]
    fn extreme_iat_and_window_do_not_overflow() {
        let key =
            DeviceKey::generate(ProofAlg::EdDsa).expect("key generation works on this platform");
        let mut wide = check(&[ProofAlg::EdDsa]);
        wide.max_age = Duration::MAX;
        wide.clock_skew = Duration::MAX;
        let at = |iat: i64, check: &ProofCheck| {
            let mut c = claims();
            c["iat"] = json!(iat);
            verify(&[key.sign_jws(&header(&key), &c).as_bytes()], check).map(|p| p.iat)
        };
        // The window saturates: now - i64::MAX is still above i64::MIN.
        assert_eq!(at(i64::MIN, &wide), Err(Reason::StaleProof));
        assert_eq!(at(i64::MAX, &wide), Ok(i64::MAX));
        assert_eq!(
            at(i64::MIN, &check(&[ProofAlg::EdDsa])),
            Err(Reason::StaleProof)
        );
        assert_eq!(
            at(i64::MAX, &check(&[ProofAlg::EdDsa])),
            Err(Reason::StaleProof)
        );
    }

    #[test]
    fn window_edges() {
        let key =
            DeviceKey::generate(ProofAlg::EdDsa).expect("key generation works on this platform");
        let at = |iat: i64| {
            let mut c = claims();
            c["iat"] = json!(iat);
            verify(
                &[key.sign_jws(&header(&key), &c).as_bytes()],
                &check(&[ProofAlg::EdDsa]),
            )
            .map(|p| p.iat)
        };
        assert_eq!(at(NOW - 60), Ok(NOW - 60));
        assert_eq!(at(NOW - 61), Err(Reason::StaleProof));
        assert_eq!(at(NOW + 5), Ok(NOW + 5));
        assert_eq!(at(NOW + 6), Err(Reason::StaleProof));
    }

    #[test]
    fn jti_length_limits() {
        let key =
            DeviceKey::generate(ProofAlg::EdDsa).expect("key generation works on this platform");
        let with = |jti: &str| {
            let mut c = claims();
            c["jti"] = json!(jti);
            verify(
                &[key.sign_jws(&header(&key), &c).as_bytes()],
                &check(&[ProofAlg::EdDsa]),
            )
            .map(|p| p.jti.len())
        };
        assert_eq!(with(&"a".repeat(MAX_JTI_LEN)), Ok(MAX_JTI_LEN));
        assert_eq!(
            with(&"a".repeat(MAX_JTI_LEN + 1)),
            Err(Reason::MissingClaim)
        );
        assert_eq!(with(""), Err(Reason::MissingClaim));
    }

    #[test]
    fn oversized_proofs_are_malformed_before_decoding() {
        let big = vec![b'A'; MAX_PROOF_LEN + 1];
        assert_eq!(
            verify(&[&big], &check(&ProofAlg::ALL)),
            Err(Reason::Malformed)
        );
        assert_eq!(verify(&[], &check(&ProofAlg::ALL)), Err(Reason::Malformed));
        assert_eq!(
            verify(&[b""], &check(&ProofAlg::ALL)),
            Err(Reason::Malformed)
        );
    }

    #[test]
    fn the_first_failure_wins() {
        let key =
            DeviceKey::generate(ProofAlg::Es256).expect("key generation works on this platform");
        // Wrong typ and an unknown alg: typ is checked first.
        let proof = key.sign_jws(
            &json!({"typ": "JWT", "alg": "none", "jwk": key.public_jwk()}),
            &claims(),
        );
        assert_eq!(
            verify(&[proof.as_bytes()], &check(&[ProofAlg::Es256])),
            Err(Reason::BadTyp)
        );
        // Bad signature and missing claims: the signature is checked first.
        let other =
            DeviceKey::generate(ProofAlg::Es256).expect("key generation works on this platform");
        let proof = other.sign_jws(&header(&key), &json!({}));
        assert_eq!(
            verify(&[proof.as_bytes()], &check(&[ProofAlg::Es256])),
            Err(Reason::BadSignature)
        );
        // Wrong method and wrong URI and stale: htm is checked first.
        let proof = key.sign_jws(
            &header(&key),
            &json!({"jti": "j", "htm": "GET", "htu": "https://x/", "iat": 0, "ath": "a"}),
        );
        assert_eq!(
            verify(&[proof.as_bytes()], &check(&[ProofAlg::Es256])),
            Err(Reason::HtmMismatch)
        );
    }
}
