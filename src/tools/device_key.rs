//! The client side of a confirmation: a device key that signs DPoP proofs (RFC 9449 §4.2). Used by
//! `countersign keygen` / `countersign proof`, the demo, the tests and the benchmarks. Keys are
//! PKCS#8; the key type decides the algorithm (EC P-256 → ES256, P-384 → ES384, Ed25519 → EdDSA,
//! RSA → RS256 unless `with_alg` picks PS256). Signing is done with aws-lc-rs directly.

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents,
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, RSA_PKCS1_SHA256,
    RSA_PSS_SHA256,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::alg::ProofAlg;
use crate::jwk;

/// PEM label of an unencrypted PKCS#8 private key (RFC 7468 §10).
const PKCS8_LABEL: &str = "PRIVATE KEY";

/// Why a device key could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not PEM.
    #[error("not a PEM document: {0}")]
    Pem(#[from] pem::PemError),
    /// The PEM block is not an unencrypted PKCS#8 private key.
    #[error("expected a PEM \"{PKCS8_LABEL}\" block (unencrypted PKCS#8), found \"{0}\"")]
    NotPkcs8(String),
    /// The key is not one a DPoP confirmation accepts.
    #[error("not an EC P-256, EC P-384, Ed25519 or RSA (2048-8192 bit) PKCS#8 private key")]
    Unsupported,
    /// The algorithm does not fit the key type.
    #[error("{0} cannot be used with this key type")]
    AlgMismatch(&'static str),
    /// The crypto library could not generate or serialise a key.
    #[error("key generation failed")]
    Generation,
}

/// A device's private key, with its public JWK and thumbprint, that signs DPoP proofs.
pub struct DeviceKey {
    alg: ProofAlg,
    signer: Signer,
    pkcs8: Vec<u8>,
    public_jwk: Value,
    jkt: String,
}

enum Signer {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

impl DeviceKey {
    /// Generates a fresh key for `alg` (RSA keys are 2048 bits).
    pub fn generate(alg: ProofAlg) -> Result<DeviceKey, KeyError> {
        let generated = |_| KeyError::Generation;
        let pkcs8 = match alg {
            ProofAlg::Es256 => EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .and_then(|k| k.to_pkcs8v1())
                .map_err(generated)?
                .as_ref()
                .to_vec(),
            ProofAlg::Es384 => EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING)
                .and_then(|k| k.to_pkcs8v1())
                .map_err(generated)?
                .as_ref()
                .to_vec(),
            ProofAlg::EdDsa => Ed25519KeyPair::generate()
                .and_then(|k| k.to_pkcs8())
                .map_err(generated)?
                .as_ref()
                .to_vec(),
            ProofAlg::Rs256 | ProofAlg::Ps256 => RsaKeyPair::generate(KeySize::Rsa2048)
                .and_then(|k| AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&k))
                .map_err(generated)?
                .as_ref()
                .to_vec(),
        };
        DeviceKey::from_pkcs8_der(pkcs8)?.with_alg(alg)
    }

    /// Loads an unencrypted PKCS#8 PEM key, detecting EC P-256/P-384, Ed25519 or RSA.
    pub fn from_pkcs8_pem(pem_text: &str) -> Result<DeviceKey, KeyError> {
        let block = pem::parse(pem_text)?;
        if block.tag() != PKCS8_LABEL {
            return Err(KeyError::NotPkcs8(block.tag().to_owned()));
        }
        DeviceKey::from_pkcs8_der(block.into_contents())
    }

    /// The same key used with another algorithm of its family (RSA: RS256 or PS256).
    pub fn with_alg(mut self, alg: ProofAlg) -> Result<DeviceKey, KeyError> {
        let fits = alg == self.alg
            || (matches!(self.signer, Signer::Rsa(_))
                && matches!(alg, ProofAlg::Rs256 | ProofAlg::Ps256));
        if !fits {
            return Err(KeyError::AlgMismatch(alg.as_str()));
        }
        self.alg = alg;
        Ok(self)
    }

    /// The key as an unencrypted PKCS#8 PEM document.
    pub fn to_pkcs8_pem(&self) -> String {
        let block = pem::Pem::new(PKCS8_LABEL, self.pkcs8.clone());
        pem::encode_config(
            &block,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// The algorithm this key signs proofs with.
    pub fn alg(&self) -> ProofAlg {
        self.alg
    }

    /// The public JWK, as embedded in each proof's header.
    pub fn public_jwk(&self) -> Value {
        self.public_jwk.clone()
    }

    /// The RFC 7638 SHA-256 thumbprint of the public key.
    pub fn jkt(&self) -> String {
        self.jkt.clone()
    }

    /// Signs a DPoP proof for `method` and `url` (RFC 9449 §4.2), with `nonce` and `ath` when given.
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        nonce: Option<&str>,
        credential: Option<&str>,
    ) -> String {
        self.action_proof(method, url, nonce, credential, None)
    }

    /// A proof that also signs its exact action: `action_hash` is the `cs_ach` claim
    /// (`nonce::action_hash`), which lets it answer a session's open nonce (one round trip).
    pub fn action_proof(
        &self,
        method: &str,
        url: &str,
        nonce: Option<&str>,
        credential: Option<&str>,
        action_hash: Option<&str>,
    ) -> String {
        let iat = crate::clock::now_secs();
        let mut claims = Map::new();
        // RFC 9449 §4.2: a unique identifier with at least 96 bits of randomness; 128 here.
        claims.insert(
            "jti".into(),
            Value::String(URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())),
        );
        claims.insert("htm".into(), Value::String(method.to_owned()));
        claims.insert("htu".into(), Value::String(url.to_owned()));
        claims.insert("iat".into(), Value::from(iat));
        if let Some(nonce) = nonce {
            claims.insert("nonce".into(), Value::String(nonce.to_owned()));
        }
        if let Some(credential) = credential {
            claims.insert("ath".into(), Value::String(crate::session::ath(credential)));
        }
        if let Some(hash) = action_hash {
            claims.insert("cs_ach".into(), Value::String(hash.to_owned()));
        }
        let header = json!({"typ": "dpop+jwt", "alg": self.alg.as_str(), "jwk": self.public_jwk});
        self.sign_jws(&header, &Value::Object(claims))
    }

    /// Signs any header and claims as a compact JWS with this key and its algorithm, whatever the
    /// header says (tests use it to craft malicious proofs).
    pub fn sign_jws(&self, header: &Value, claims: &Value) -> String {
        let mut jws = String::new();
        URL_SAFE_NO_PAD.encode_string(header.to_string(), &mut jws);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut jws);
        let signature = self.sign(jws.as_bytes());
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut jws);
        jws
    }

    /// The raw JWS signature (RFC 7518 §3: fixed-size r||s for ECDSA) of `message`.
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Ecdsa(key) => key
                .sign(&rng, message)
                .expect("aws-lc-rs ECDSA signing with a key it parsed fails only on internal error")
                .as_ref()
                .to_vec(),
            Signer::Ed25519(key) => key.sign(message).as_ref().to_vec(),
            Signer::Rsa(key) => {
                let padding = match self.alg {
                    ProofAlg::Ps256 => &RSA_PSS_SHA256,
                    _ => &RSA_PKCS1_SHA256,
                };
                let mut signature = vec![0; key.public_modulus_len()];
                key.sign(padding, &rng, message, &mut signature)
                    .expect("aws-lc-rs RSA signing into a modulus-sized buffer fails only on internal error");
                signature
            }
        }
    }

    /// Builds a device key from PKCS#8 DER, detecting its type.
    fn from_pkcs8_der(pkcs8: Vec<u8>) -> Result<DeviceKey, KeyError> {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let (alg, signer, public_jwk) = if let Ok(key) =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
        {
            let jwk = ec_jwk("P-256", key.public_key().as_ref());
            (ProofAlg::Es256, Signer::Ecdsa(key), jwk)
        } else if let Ok(key) = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &pkcs8) {
            let jwk = ec_jwk("P-384", key.public_key().as_ref());
            (ProofAlg::Es384, Signer::Ecdsa(key), jwk)
        } else if let Ok(key) = Ed25519KeyPair::from_pkcs8(&pkcs8) {
            let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(key.public_key().as_ref())});
            (ProofAlg::EdDsa, Signer::Ed25519(key), jwk)
        } else if let Ok(key) = RsaKeyPair::from_pkcs8(&pkcs8) {
            // aws-lc-rs only parses RSA keys of 2048 to 8192 bits.
            let components = RsaPublicKeyComponents::<Vec<u8>>::from(key.public_key());
            let jwk = json!({"kty": "RSA", "n": b64(&components.n), "e": b64(&components.e)});
            (ProofAlg::Rs256, Signer::Rsa(key), jwk)
        } else {
            return Err(KeyError::Unsupported);
        };
        let jkt = match &public_jwk {
            Value::Object(members) => {
                jwk::thumbprint(members).map_err(|_| KeyError::Unsupported)?
            }
            _ => return Err(KeyError::Unsupported),
        };
        Ok(DeviceKey {
            alg,
            signer,
            pkcs8,
            public_jwk,
            jkt,
        })
    }
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private key.
        f.debug_struct("DeviceKey")
            .field("alg", &self.alg)
            .field("jkt", &self.jkt)
            .finish_non_exhaustive()
    }
}

/// The JWK of an uncompressed SEC 1 point `0x04 || x || y` (RFC 7518 §6.2.1).
fn ec_jwk(crv: &str, point: &[u8]) -> Value {
    let coordinates = point.get(1..).unwrap_or_default();
    let (x, y) = coordinates.split_at(coordinates.len() / 2);
    json!({"kty": "EC", "crv": crv, "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwk::PublicJwk;
    use crate::session::ath;

    #[test]
    fn rfc9449_ath_example() {
        // RFC 9449 §7.1.
        assert_eq!(
            ath("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
    }

    #[test]
    fn generated_keys_round_trip_through_pem() {
        for alg in ProofAlg::ALL {
            let key = DeviceKey::generate(alg).expect("key generation works on this platform");
            assert_eq!(key.alg(), alg);
            let pem_text = key.to_pkcs8_pem();
            assert!(pem_text.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            let loaded = DeviceKey::from_pkcs8_pem(&pem_text).expect("our own PEM loads");
            assert_eq!(loaded.jkt(), key.jkt());
            assert_eq!(loaded.public_jwk(), key.public_jwk());
            // RSA keys load as RS256; PS256 is chosen with `with_alg`.
            let expected = if alg == ProofAlg::Ps256 {
                ProofAlg::Rs256
            } else {
                alg
            };
            assert_eq!(loaded.alg(), expected);
        }
    }

    #[test]
    fn public_jwk_is_public_and_matches_jkt() {
        for alg in [ProofAlg::Es256, ProofAlg::Es384, ProofAlg::EdDsa] {
            let key = DeviceKey::generate(alg).expect("key generation works on this platform");
            let jwk = key.public_jwk();
            let members = jwk.as_object().expect("public_jwk is an object");
            assert!(!members.contains_key("d"));
            let parsed = PublicJwk::parse(members).expect("a generated public JWK validates");
            assert_eq!(parsed.thumbprint(), key.jkt());
            assert!(parsed.accepts(alg));
        }
    }

    #[test]
    fn with_alg_only_switches_within_a_family() {
        let rsa =
            DeviceKey::generate(ProofAlg::Rs256).expect("key generation works on this platform");
        let pss = rsa.with_alg(ProofAlg::Ps256).expect("RSA keys sign PS256");
        assert_eq!(pss.alg(), ProofAlg::Ps256);
        assert!(matches!(
            pss.with_alg(ProofAlg::Es256),
            Err(KeyError::AlgMismatch("ES256"))
        ));
        let ec =
            DeviceKey::generate(ProofAlg::Es256).expect("key generation works on this platform");
        assert!(matches!(
            ec.with_alg(ProofAlg::Es384),
            Err(KeyError::AlgMismatch("ES384"))
        ));
    }

    #[test]
    fn bad_pem_is_refused() {
        assert!(matches!(
            DeviceKey::from_pkcs8_pem("not pem"),
            Err(KeyError::Pem(_))
        ));
        let public = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(
            matches!(DeviceKey::from_pkcs8_pem(public), Err(KeyError::NotPkcs8(tag)) if tag == "PUBLIC KEY")
        );
        let junk = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            DeviceKey::from_pkcs8_pem(junk),
            Err(KeyError::Unsupported)
        ));
    }

    #[test]
    fn debug_does_not_print_the_private_key() {
        let key =
            DeviceKey::generate(ProofAlg::EdDsa).expect("key generation works on this platform");
        let shown = format!("{key:?}");
        assert!(shown.contains(&key.jkt()) && !shown.contains("pkcs8"));
    }

    #[test]
    fn proofs_carry_the_rfc9449_claims() {
        let key =
            DeviceKey::generate(ProofAlg::Es256).expect("key generation works on this platform");
        let proof = key.proof("POST", "https://a.example/x?y", Some("n-1"), Some("token"));
        let parts: Vec<&str> = proof.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |part: &str| -> Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
        };
        let header = decode(parts[0]);
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["jwk"], key.public_jwk());
        let claims = decode(parts[1]);
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], "https://a.example/x?y");
        assert_eq!(claims["nonce"], "n-1");
        assert_eq!(claims["ath"], ath("token"));
        assert_eq!(claims["jti"].as_str().map(str::len), Some(22));
        assert!(claims["iat"].is_u64());
        let bare = decode(
            key.proof("GET", "https://a.example/", None, None)
                .split('.')
                .nth(1)
                .unwrap_or_default(),
        );
        assert!(bare.get("nonce").is_none() && bare.get("ath").is_none());
        assert_ne!(bare["jti"], claims["jti"]);
    }
}
