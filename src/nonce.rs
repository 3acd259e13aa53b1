//! Gateway nonces: what a challenge is bound to, and how a nonce is made. A nonce is 256 random
//! bits, base64url (a subset of RFC 9449's `1*NQCHAR`); the store keeps only its hash.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::store::{self, Key};

/// The action a confirmation is for (docs/protocol.md, "The exchange"): session, method, the
/// methods it stands for through overrides, exact target, body.
#[derive(Debug, Clone, Copy)]
pub struct Action<'a> {
    /// The session id.
    pub session_id: &'a str,
    /// The request method.
    pub method: &'a str,
    /// The methods the request stands for through override headers or `_method`, comma-joined;
    /// empty when none. A nonce for a plain POST cannot confirm a POST that stands for DELETE.
    pub overrides: &'a str,
    /// The request target in origin-form, query included, exactly as received.
    pub target: &'a str,
    /// SHA-256 of the request body.
    pub body_sha256: &'a [u8; 32],
}

impl Action<'_> {
    /// `cs_ach`, the action a client binds in its proof for one round trip (docs/protocol.md):
    /// base64url SHA-256 of the method, LF, the target, LF, the body's lowercase hex SHA-256. It
    /// covers no method override: a request that stands for another method has no such hash.
    pub fn hash(&self) -> Option<String> {
        if !self.overrides.is_empty() {
            return None;
        }
        Some(action_hash(self.method, self.target, self.body_sha256))
    }

    /// The digest a nonce for any action of the session is bound to: one the proof's `cs_ach`
    /// binds to its action instead.
    pub fn open(session_id: &str) -> [u8; 32] {
        store::key("open-action", &[session_id.as_bytes()])
    }

    /// The digest a nonce is bound to.
    pub fn binding(&self) -> [u8; 32] {
        store::key(
            "action",
            &[
                self.session_id.as_bytes(),
                self.method.as_bytes(),
                self.overrides.as_bytes(),
                self.target.as_bytes(),
                self.body_sha256,
            ],
        )
    }
}

/// `cs_ach` of a request: base64url SHA-256 of `method` LF `target` LF the lowercase hex SHA-256
/// of its body.
pub fn action_hash(method: &str, target: &str, body_sha256: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update(b"\n");
    h.update(target.as_bytes());
    h.update(b"\n");
    h.update(hex::encode(body_sha256).as_bytes());
    URL_SAFE_NO_PAD.encode(h.finalize())
}

/// A fresh, unpredictable nonce.
pub fn fresh() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The store key of a nonce.
pub fn key(nonce: &str) -> Key {
    store::key("nonce", &[nonce.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_unique_nqchar_and_256_bit() {
        let a = fresh();
        assert_ne!(a, fresh());
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }

    #[test]
    fn every_part_of_the_action_changes_the_binding() {
        let body = [0u8; 32];
        let other_body = [1u8; 32];
        let base = Action {
            session_id: "s",
            method: "POST",
            overrides: "",
            target: "/a?x=1",
            body_sha256: &body,
        };
        let variants = [
            Action {
                session_id: "t",
                ..base
            },
            Action {
                method: "PUT",
                ..base
            },
            Action {
                overrides: "DELETE",
                ..base
            },
            Action {
                target: "/a?x=2",
                ..base
            },
            Action {
                body_sha256: &other_body,
                ..base
            },
        ];
        for v in variants {
            assert_ne!(v.binding(), base.binding());
        }
    }
}
