//! Gateway nonces: what a challenge is bound to, and how a nonce is made. A nonce is 256 random
//! bits, base64url (a subset of RFC 9449's `1*NQCHAR`); the store keeps only its hash.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;

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
