//! The provenance token (docs/protocol.md, "Forwarding and provenance"): a compact JWS the gateway
//! signs for every confirmed request, so an upstream that can verify learns who confirmed what,
//! with which device, and which confirmation it continues. The key's type picks the algorithm; its
//! public half is served as a JWKS.

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use serde_json::{json, Value};

/// Lifetime of a provenance token.
const TOKEN_LIFETIME_SECS: u64 = 60;

/// The claims of `Countersign-Provenance`.
#[derive(Debug, Clone, Serialize)]
pub struct Claims<'a> {
    /// Issuer: the public origin, or `countersign`.
    pub iss: &'a str,
    /// Confirmation id.
    pub cid: &'a str,
    /// The first confirmation of a redirect chain this one continues, else null.
    pub parent: Option<&'a str>,
    /// The immediate parent in a redirect chain, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<&'a str>,
    /// Session subject; omitted when the session has none (RFC 7519 §4.1.2: a string).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<&'a str>,
    /// The methods the request stands for through override headers or `_method`, when any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub htm_override: Option<&'a str>,
    /// First 16 hex of SHA-256 of the session id.
    pub sid_hash: &'a str,
    /// Device key thumbprint.
    pub jkt: &'a str,
    /// Method.
    pub htm: &'a str,
    /// Request target with query.
    pub target: &'a str,
    /// Hex SHA-256 of the body.
    pub body_sha256: &'a str,
    /// Route name.
    pub route: &'a str,
    /// The approval this request executes, when its route needs one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<&'a str>,
    /// The subjects that approved it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvers: Option<&'a [String]>,
}

/// The claims with their validity window.
#[derive(Serialize)]
struct Timed<'a> {
    /// Issued at (unix seconds).
    iat: u64,
    /// Expires at (unix seconds).
    exp: u64,
    #[serde(flatten)]
    claims: &'a Claims<'a>,
}

/// The loaded private key, parsed once (parsing an Ed25519 key derives its public half, which
/// costs as much as a signature).
enum SigningKey {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// The gateway's provenance signer.
pub struct Signer {
    key: SigningKey,
    /// The protected header, base64url-encoded once: it never changes.
    header: String,
    public_jwk: Value,
    /// Whether the key was generated at start (no `provenance.signing_key`).
    pub ephemeral: bool,
}

/// A signing key problem at start-up.
#[derive(Debug, thiserror::Error)]
#[error("provenance.signing_key: {0}")]
pub struct SignerError(String);

impl Signer {
    /// Loads a PKCS#8 PEM key (EC P-256 → ES256, Ed25519 → EdDSA), or generates an Ed25519 key.
    pub fn load(path: Option<&Path>) -> Result<Signer, SignerError> {
        let Some(path) = path else {
            let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| SignerError("cannot generate an ephemeral key".into()))?;
            let mut signer = Signer::from_pkcs8(der.as_ref())?;
            signer.ephemeral = true;
            return Ok(signer);
        };
        let text = std::fs::read(path)
            .map_err(|e| SignerError(format!("cannot read {}: {e}", path.display())))?;
        let block = pem::parse(&text)
            .map_err(|e| SignerError(format!("{} is not PEM: {e}", path.display())))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(SignerError(format!(
                "{} holds a {:?} block; expected a PKCS#8 \"PRIVATE KEY\"",
                path.display(),
                block.tag()
            )));
        }
        Signer::from_pkcs8(block.contents())
    }

    /// A signer from PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Signer, SignerError> {
        let (alg, mut public_jwk, key) = if let Ok(pair) =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
        {
            // Uncompressed point: 0x04 || x || y.
            let point = pair.public_key().as_ref();
            let (x, y) = point[1..].split_at(32);
            let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)});
            ("ES256", jwk, SigningKey::Es256(pair))
        } else if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())});
            ("EdDSA", jwk, SigningKey::EdDsa(pair))
        } else {
            return Err(SignerError(
                "expected an EC P-256 or Ed25519 private key in PKCS#8".into(),
            ));
        };
        // The JWK was built just above from a valid key: its members always canonicalise.
        let kid = match &public_jwk {
            Value::Object(members) => crate::jwk::thumbprint(members).unwrap_or_default(),
            _ => String::new(),
        };
        if let Value::Object(m) = &mut public_jwk {
            m.insert("kid".into(), Value::String(kid.clone()));
            m.insert("use".into(), Value::String("sig".into()));
            m.insert("alg".into(), Value::String(alg.into()));
        }
        let header = json!({"typ": "countersign-provenance+jwt", "alg": alg, "kid": kid});
        Ok(Signer {
            key,
            header: b64(header.to_string().as_bytes()),
            public_jwk,
            ephemeral: false,
        })
    }

    /// Signs the claims, issued now and valid for a minute.
    pub fn token(&self, claims: &Claims<'_>) -> String {
        let iat = crate::clock::now_secs();
        let timed = Timed {
            iat,
            exp: iat + TOKEN_LIFETIME_SECS,
            claims,
        };
        // Serialising borrowed strings and numbers cannot fail.
        let payload = serde_json::to_vec(&timed).unwrap_or_default();
        self.compact(format!("{}.{}", self.header, b64(&payload)))
    }

    /// Signs `payload` as a compact JWS with its own `typ`, so that it can never pass for a
    /// provenance token (audit checkpoints).
    pub fn sign_typed(&self, typ: &str, payload: &[u8]) -> String {
        let header = json!({
            "typ": typ,
            "alg": self.public_jwk["alg"],
            "kid": self.public_jwk["kid"],
        });
        self.compact(format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload)
        ))
    }

    /// `input` (header.payload) with its signature appended.
    fn compact(&self, mut token: String) -> String {
        let signature = match &self.key {
            SigningKey::Es256(pair) => pair
                .sign(&SystemRandom::new(), token.as_bytes())
                .map(|s| b64(s.as_ref())),
            SigningKey::EdDsa(pair) => Ok(b64(pair.sign(token.as_bytes()).as_ref())),
        };
        match signature {
            Ok(signature) => {
                token.push('.');
                token.push_str(&signature);
                token
            }
            // ECDSA signing fails only without randomness; an empty token is refused upstream.
            Err(_) => String::new(),
        }
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> String {
        json!({ "keys": [self.public_jwk] }).to_string()
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> &Value {
        &self.public_jwk
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    fn claims<'a>(parent: Option<&'a str>, sub: Option<&'a str>) -> Claims<'a> {
        Claims {
            iss: "countersign",
            cid: "c",
            parent,
            via: None,
            sub,
            htm_override: None,
            sid_hash: "0123456789abcdef",
            jkt: "k",
            htm: "DELETE",
            target: "/x",
            body_sha256: "00",
            route: "r",
            approval_id: None,
            approvers: None,
        }
    }

    /// Verifies `token` against the signer's published JWKS; checks the protected header.
    fn verify(signer: &Signer, token: &str, alg: Algorithm) -> Value {
        let jwks: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(&signer.jwks()).expect("jwks parses");
        let key = DecodingKey::from_jwk(&jwks.keys[0]).expect("jwk is a key");
        let header = jsonwebtoken::decode_header(token).expect("header");
        assert_eq!(header.alg, alg);
        assert_eq!(header.typ.as_deref(), Some("countersign-provenance+jwt"));
        assert_eq!(header.kid.as_deref(), jwks.keys[0].common.key_id.as_deref());
        let mut v = Validation::new(alg);
        v.validate_aud = false;
        jsonwebtoken::decode::<Value>(token, &key, &v)
            .expect("verifies")
            .claims
    }

    #[test]
    fn ephemeral_tokens_verify_with_the_published_jwks() {
        let signer = Signer::load(None).expect("ephemeral key");
        assert!(signer.ephemeral);
        let token = signer.token(&claims(None, Some("alice")));
        let claims = verify(&signer, &token, Algorithm::EdDSA);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["parent"], Value::Null);
    }

    #[test]
    fn p256_keys_sign_es256() {
        let der =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .expect("keygen");
        let signer = Signer::from_pkcs8(der.as_ref()).expect("loads");
        assert_eq!(signer.public_jwk()["alg"], "ES256");
        let token = signer.token(&claims(Some("p"), None));
        let claims = verify(&signer, &token, Algorithm::ES256);
        assert_eq!(claims["parent"], "p");
        // RFC 7519 §4.1.2: `sub` is a string; a session without a subject has none.
        assert!(claims.get("sub").is_none(), "{claims}");
    }
}
