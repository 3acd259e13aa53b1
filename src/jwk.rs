//! Public JSON Web Keys (RFC 7517) as a DPoP proof embeds them in its `jwk` header: strict parsing
//! into a verification key, and the RFC 7638 thumbprint (`jkt`) that binds a device key to a
//! session. Only the key types DPoP confirmations accept are known (EC P-256/P-384, OKP Ed25519,
//! RSA of 2048–8192 bits); anything else, any private member, and any symmetric key is
//! `Reason::BadJwk` (RFC 9449 §4.3 (7)).

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::DecodingKey;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::alg::ProofAlg;
use crate::reason::Reason;

/// Members that only a private or symmetric JWK carries (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037 §2).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Smallest accepted RSA modulus (RFC 7518 §3.3 requires at least 2048 bits).
const MIN_RSA_BITS: usize = 2048;

/// Largest RSA modulus the verifier supports (aws-lc-rs `RSA_*_2048_8192_*`).
const MAX_RSA_BITS: usize = 8192;

/// Largest accepted RSA public exponent, in bytes (aws-lc-rs accepts at most 33 bits).
const MAX_RSA_EXPONENT_LEN: usize = 5;

/// The RFC 7638 thumbprint (base64url SHA-256 of the canonical required members) of a public JWK.
///
/// Computes the digest only; it does not validate the key material (`PublicJwk::parse` does).
/// Member values must be plain printable ASCII without `"` or `\`, as every well-formed EC, OKP
/// and RSA key is, so that the canonical form needs no JSON escaping (RFC 7638 §3.3).
pub fn thumbprint(jwk: &Map<String, Value>) -> Result<String, Reason> {
    // RFC 7638 §3.2: the required members only, in lexicographic order.
    let members: &[&str] = match string_member(jwk, "kty")? {
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        "RSA" => &["e", "kty", "n"],
        _ => return Err(Reason::BadJwk),
    };
    let mut values = [""; 4];
    for (slot, name) in values.iter_mut().zip(members) {
        let value = string_member(jwk, name)?;
        if !value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return Err(Reason::BadJwk);
        }
        *slot = value;
    }
    let len = 2 + members
        .iter()
        .zip(&values)
        .map(|(name, value)| name.len() + value.len() + 6)
        .sum::<usize>();
    let mut canonical = Vec::with_capacity(len);
    canonical.push(b'{');
    for (i, (name, value)) in members.iter().zip(&values).enumerate() {
        if i > 0 {
            canonical.push(b',');
        }
        canonical.push(b'"');
        canonical.extend_from_slice(name.as_bytes());
        canonical.extend_from_slice(b"\":\"");
        canonical.extend_from_slice(value.as_bytes());
        canonical.push(b'"');
    }
    canonical.push(b'}');
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(&canonical)))
}

/// A validated public key taken from a proof's `jwk` header, ready to verify signatures.
pub struct PublicJwk {
    kind: KeyKind,
    decoding_key: DecodingKey,
    thumbprint: String,
}

/// The key types DPoP confirmations accept; each fits exactly one algorithm family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    P256,
    P384,
    Ed25519,
    Rsa,
}

impl PublicJwk {
    /// Parses and validates a public JWK; any private, symmetric, unknown or malformed key is `BadJwk`.
    pub fn parse(jwk: &Map<String, Value>) -> Result<PublicJwk, Reason> {
        // RFC 9449 §4.3 (7): the proof key must not be a private key.
        if PRIVATE_MEMBERS
            .iter()
            .any(|member| jwk.contains_key(*member))
        {
            return Err(Reason::BadJwk);
        }
        let (kind, decoding_key) = match string_member(jwk, "kty")? {
            "EC" => {
                // RFC 7518 §6.2.1.2–6.2.1.3: x and y are the full coordinate size for the curve.
                let (kind, size) = match string_member(jwk, "crv")? {
                    "P-256" => (KeyKind::P256, 32),
                    "P-384" => (KeyKind::P384, 48),
                    _ => return Err(Reason::BadJwk),
                };
                // SEC 1 uncompressed point: 0x04 || x || y.
                let mut point = [0u8; 1 + 2 * 48];
                point[0] = 0x04;
                decode_exact(string_member(jwk, "x")?, &mut point[1..1 + size])?;
                decode_exact(string_member(jwk, "y")?, &mut point[1 + size..1 + 2 * size])?;
                (kind, DecodingKey::from_ec_der(&point[..1 + 2 * size]))
            }
            "OKP" => {
                // RFC 8037 §2: Ed25519 public keys are 32 bytes; other OKP curves are not signature keys we accept.
                if string_member(jwk, "crv")? != "Ed25519" {
                    return Err(Reason::BadJwk);
                }
                let mut x = [0u8; 32];
                decode_exact(string_member(jwk, "x")?, &mut x)?;
                (KeyKind::Ed25519, DecodingKey::from_ed_der(&x))
            }
            "RSA" => {
                let n = decode_uint(string_member(jwk, "n")?)?;
                let e = decode_uint(string_member(jwk, "e")?)?;
                // `decode_uint` guarantees a non-zero leading byte.
                let bits = n.len() * 8 - n[0].leading_zeros() as usize;
                if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) || e.len() > MAX_RSA_EXPONENT_LEN
                {
                    return Err(Reason::BadJwk);
                }
                (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
            }
            // `oct` (a shared secret) and anything unknown.
            _ => return Err(Reason::BadJwk),
        };
        Ok(PublicJwk {
            kind,
            decoding_key,
            thumbprint: thumbprint(jwk)?,
        })
    }

    /// The RFC 7638 SHA-256 thumbprint (`jkt`), computed once at parse time.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The key in the form `jsonwebtoken::crypto::verify` takes.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding_key
    }

    /// Whether `alg` is the algorithm family of this key type (RFC 7518 §3.1).
    pub fn accepts(&self, alg: ProofAlg) -> bool {
        matches!(
            (alg, self.kind),
            (ProofAlg::Es256, KeyKind::P256)
                | (ProofAlg::Es384, KeyKind::P384)
                | (ProofAlg::EdDsa, KeyKind::Ed25519)
                | (ProofAlg::Rs256 | ProofAlg::Ps256, KeyKind::Rsa)
        )
    }
}

impl fmt::Debug for PublicJwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicJwk")
            .field("kind", &self.kind)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

/// A member that must be present and a string.
fn string_member<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<&'a str, Reason> {
    jwk.get(name).and_then(Value::as_str).ok_or(Reason::BadJwk)
}

/// Decodes base64url (no padding) that must yield exactly `out.len()` bytes.
fn decode_exact(encoded: &str, out: &mut [u8]) -> Result<(), Reason> {
    // A base64url encoding of `len` bytes without padding has exactly this many characters.
    if encoded.len() != (out.len() * 4).div_ceil(3) {
        return Err(Reason::BadJwk);
    }
    let mut buf = [0u8; 66];
    let written = URL_SAFE_NO_PAD
        .decode_slice(encoded, &mut buf)
        .map_err(|_| Reason::BadJwk)?;
    let decoded = buf.get(..written).ok_or(Reason::BadJwk)?;
    if decoded.len() != out.len() {
        return Err(Reason::BadJwk);
    }
    out.copy_from_slice(decoded);
    Ok(())
}

/// Decodes an RFC 7518 §2 Base64urlUInt: non-empty, in the minimum number of octets.
fn decode_uint(encoded: &str) -> Result<Vec<u8>, Reason> {
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| Reason::BadJwk)?;
    // A leading zero octet would give the same key a second thumbprint.
    match bytes.first() {
        Some(&first) if first != 0 => Ok(bytes),
        _ => Err(Reason::BadJwk),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// RFC 7638 §3.1.
    const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("test fixture is not an object: {other}"),
        }
    }

    fn rfc7638_key() -> Map<String, Value> {
        object(
            json!({"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}),
        )
    }

    /// RFC 9449 §4.1 (the example proof's `jwk`), whose jkt §6.1 gives.
    fn rfc9449_key() -> Map<String, Value> {
        object(json!({
            "kty": "EC",
            "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
            "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
            "crv": "P-256"
        }))
    }

    fn ed25519_key() -> Map<String, Value> {
        // RFC 8037 §A.2.
        object(
            json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
        )
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        assert_eq!(
            thumbprint(&rfc7638_key()).as_deref(),
            Ok("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
        let key =
            PublicJwk::parse(&rfc7638_key()).expect("the RFC 7638 key is a valid 2048-bit RSA key");
        assert_eq!(
            key.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert!(key.accepts(ProofAlg::Rs256) && key.accepts(ProofAlg::Ps256));
        assert!(!key.accepts(ProofAlg::Es256) && !key.accepts(ProofAlg::EdDsa));
    }

    #[test]
    fn rfc9449_example_thumbprint() {
        let key = PublicJwk::parse(&rfc9449_key()).expect("the RFC 9449 key is a valid P-256 key");
        assert_eq!(
            key.thumbprint(),
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
        );
        assert!(key.accepts(ProofAlg::Es256));
        assert!(!key.accepts(ProofAlg::Es384) && !key.accepts(ProofAlg::Rs256));
    }

    #[test]
    fn rfc8037_ed25519_thumbprint() {
        // RFC 8037 §A.3.
        let key =
            PublicJwk::parse(&ed25519_key()).expect("the RFC 8037 key is a valid Ed25519 key");
        assert_eq!(
            key.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        assert!(key.accepts(ProofAlg::EdDsa) && !key.accepts(ProofAlg::Es256));
    }

    #[test]
    fn optional_members_do_not_change_the_thumbprint() {
        let mut key = rfc9449_key();
        key.insert("kid".into(), json!("device-1"));
        key.insert("use".into(), json!("sig"));
        key.insert("alg".into(), json!("ES256"));
        assert_eq!(
            thumbprint(&key).as_deref(),
            Ok("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I")
        );
    }

    #[test]
    fn private_members_are_refused() {
        for member in PRIVATE_MEMBERS {
            let mut key = rfc9449_key();
            key.insert(member.into(), json!("AAAA"));
            assert_eq!(
                PublicJwk::parse(&key).err(),
                Some(Reason::BadJwk),
                "{member}"
            );
        }
    }

    #[test]
    fn symmetric_and_unknown_key_types_are_refused() {
        for key in [
            json!({"kty": "oct", "k": "c2VjcmV0"}),
            json!({"kty": "oct"}),
            json!({"kty": "ec", "crv": "P-256", "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs", "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA"}),
            json!({"kty": "AKP", "alg": "ML-DSA-44", "pub": "AAAA"}),
            json!({"kty": 1}),
            json!({}),
        ] {
            assert_eq!(
                PublicJwk::parse(&object(key.clone())).err(),
                Some(Reason::BadJwk),
                "{key}"
            );
        }
    }

    #[test]
    fn unsupported_curves_are_refused() {
        for key in [
            json!({"kty": "EC", "crv": "P-521", "x": "AAAA", "y": "AAAA"}),
            json!({"kty": "EC", "crv": "secp256k1", "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs", "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA"}),
            json!({"kty": "OKP", "crv": "X25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
            json!({"kty": "OKP", "crv": "Ed448", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
            json!({"kty": "EC", "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs", "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA"}),
        ] {
            assert_eq!(
                PublicJwk::parse(&object(key.clone())).err(),
                Some(Reason::BadJwk),
                "{key}"
            );
        }
    }

    #[test]
    fn coordinates_must_be_well_formed_and_full_size() {
        let x = "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs";
        for (bad_x, why) in [
            (&x[1..], "short"),
            ("l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFsA", "long"),
            (
                "l8tFrhx+34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
                "standard alphabet",
            ),
            ("l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBF=", "padding"),
            (
                "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFt",
                "non-canonical trailing bits",
            ),
            ("", "empty"),
        ] {
            let mut key = rfc9449_key();
            key.insert("x".into(), json!(bad_x));
            assert_eq!(PublicJwk::parse(&key).err(), Some(Reason::BadJwk), "{why}");
        }
        let mut key = rfc9449_key();
        key.insert("y".into(), json!(42));
        assert_eq!(PublicJwk::parse(&key).err(), Some(Reason::BadJwk));
        // A P-256 key labelled P-384 has the wrong coordinate size.
        let mut key = rfc9449_key();
        key.insert("crv".into(), json!("P-384"));
        assert_eq!(PublicJwk::parse(&key).err(), Some(Reason::BadJwk));
        let mut key = ed25519_key();
        key.insert(
            "x".into(),
            json!("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHUR"),
        );
        assert_eq!(PublicJwk::parse(&key).err(), Some(Reason::BadJwk));
    }

    #[test]
    fn rsa_keys_below_2048_bits_are_refused() {
        // 1024-bit and 2047-bit moduli (top bit set), and a 2048-bit one with a leading zero octet.
        let n1024 = URL_SAFE_NO_PAD.encode([0xC5u8; 128]);
        let n2047 = URL_SAFE_NO_PAD.encode([[0x75u8].as_slice(), &[0xA3; 255]].concat());
        let padded = URL_SAFE_NO_PAD.encode([[0u8].as_slice(), &[0xC5; 256]].concat());
        for n in [n1024, n2047, padded, String::new()] {
            let key = object(json!({"kty": "RSA", "n": n, "e": "AQAB"}));
            assert_eq!(PublicJwk::parse(&key).err(), Some(Reason::BadJwk));
        }
        let n2048 = URL_SAFE_NO_PAD.encode([0x85u8; 256]);
        assert!(PublicJwk::parse(&object(json!({"kty": "RSA", "n": n2048, "e": "AQAB"}))).is_ok());
        for e in ["", "AAEAAQ", "AQABAQABAQAB"] {
            let key =
                object(json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0x85u8; 256]), "e": e}));
            assert_eq!(PublicJwk::parse(&key).err(), Some(Reason::BadJwk), "e={e}");
        }
    }

    #[test]
    fn thumbprint_needs_the_required_members_as_plain_strings() {
        let mut key = rfc9449_key();
        key.remove("y");
        assert_eq!(thumbprint(&key), Err(Reason::BadJwk));
        let mut key = rfc9449_key();
        key.insert("crv".into(), json!("P-256\",\"z\":\"1"));
        assert_eq!(thumbprint(&key), Err(Reason::BadJwk));
        assert_eq!(
            thumbprint(&object(json!({"kty": "oct", "k": "c2VjcmV0"}))),
            Err(Reason::BadJwk)
        );
    }
}
