//! Enrolled devices (docs/protocol.md, "Devices"): with `session.binding: enrolled`, a DPoP key
//! (by its thumbprint) or a passkey (`webauthn:` + its credential id) confirms only when it is in
//! the registry of the session's subject. The registry lives in the replay store (Redis for
//! replicas) and is read on every confirmation, so a removal holds on every replica at once.
//!
//! Devices are enrolled three ways, each audited with who did it: by an operator
//! (`countersign devices add`), by redeeming an invite code (`countersign devices invite`, then
//! `POST /.countersign/devices/enroll` with a proof by the new key), or by a confirmation from a
//! device already enrolled for the same subject (the new trust check of a second device).

pub(crate) mod enroll;
mod operator;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::{self, Enrol, Key, ReplayStore, StoreError, Taken};

pub use operator::{operate, DevicesError, Operation};

/// The device name of a passkey in the registry: this prefix and its base64url credential id.
pub(crate) const PASSKEY_PREFIX: &str = "webauthn:";

/// Who enrolled a device: the `by` of audit records and the `enrolment` of the confirmations it
/// makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An operator, with `countersign devices add`.
    Operator,
    /// The device itself, redeeming an invite code an operator issued.
    Invite,
    /// A confirmation by another device of the same subject (its thumbprint).
    Device(String),
}

impl Source {
    /// `operator`, `invite` or `device:<jkt>`.
    pub fn name(&self) -> String {
        match self {
            Source::Operator => "operator".to_string(),
            Source::Invite => "invite".to_string(),
            Source::Device(jkt) => format!("device:{jkt}"),
        }
    }

    /// The metric label: bounded, so without the thumbprint.
    pub fn label(&self) -> &'static str {
        match self {
            Source::Operator => "operator",
            Source::Invite => "invite",
            Source::Device(_) => "device",
        }
    }
}

/// A registry entry, as stored (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// [`Source::name`] of whoever enrolled it.
    pub by: String,
    /// When, in unix seconds.
    pub at: u64,
    /// A passkey's WebAuthn credential (public key, counter), for `webauthn:` devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passkey: Option<serde_json::Value>,
}

/// What redeeming an invite code found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Redeemed {
    /// The code was valid and is now spent: the subject it was issued for.
    Subject(String),
    /// Already redeemed.
    Used,
    /// Never issued, or expired.
    Unknown,
}

/// What an invite is stored as.
#[derive(Serialize, Deserialize)]
struct Invite {
    subject: String,
}

/// The registry of enrolled devices over the replay store.
#[derive(Clone)]
pub(crate) struct Registry {
    store: Arc<dyn ReplayStore>,
    max: usize,
}

impl Registry {
    /// A registry holding at most `max` devices per subject.
    pub fn new(store: Arc<dyn ReplayStore>, max: usize) -> Registry {
        Registry { store, max }
    }

    /// The most devices per subject.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Enrols `device` for `subject`; `Full` at the bound.
    pub async fn enrol(
        &self,
        subject: &str,
        device: &str,
        by: &Source,
        passkey: Option<serde_json::Value>,
    ) -> Result<Enrol, StoreError> {
        let entry = Entry {
            by: by.name(),
            at: crate::clock::now_secs(),
            passkey,
        };
        let wire =
            serde_json::to_vec(&entry).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        self.store
            .enrol_device(&subject_key(subject), device, wire, self.max)
            .await
    }

    /// The entry of `device` when it is enrolled for `subject`. An entry that does not decode
    /// reads as not enrolled (fail closed).
    pub async fn entry(&self, subject: &str, device: &str) -> Result<Option<Entry>, StoreError> {
        let wire = self
            .store
            .enrolled_device(&subject_key(subject), device)
            .await?;
        Ok(wire.and_then(|w| serde_json::from_slice(&w).ok()))
    }

    /// Every device enrolled for `subject`.
    pub async fn list(&self, subject: &str) -> Result<Vec<(String, Entry)>, StoreError> {
        let all = self.store.enrolled_devices(&subject_key(subject)).await?;
        Ok(all
            .into_iter()
            .filter_map(|(device, wire)| Some((device, serde_json::from_slice(&wire).ok()?)))
            .collect())
    }

    /// Replaces a passkey's stored credential (its counter moved); false when it was removed.
    pub async fn update(
        &self,
        subject: &str,
        device: &str,
        entry: &Entry,
    ) -> Result<bool, StoreError> {
        let wire = serde_json::to_vec(entry).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        self.store
            .update_device(&subject_key(subject), device, wire)
            .await
    }

    /// Removes `device` from `subject`'s registry; false when it was not enrolled.
    pub async fn remove(&self, subject: &str, device: &str) -> Result<bool, StoreError> {
        self.store
            .remove_device(&subject_key(subject), device)
            .await
    }

    /// Issues a one-time invite code for `subject`, redeemable for `ttl`. The store keeps only
    /// its SHA-256 (as the record's key), never the code.
    pub async fn invite(&self, subject: &str, ttl: Duration) -> Result<String, StoreError> {
        let code = fresh_code();
        let wire = serde_json::to_vec(&Invite {
            subject: subject.to_string(),
        })
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        self.store.put_record(&invite_key(&code), wire, ttl).await?;
        Ok(code)
    }

    /// Spends `code` in one atomic step: of concurrent redemptions exactly one finds the subject.
    /// The code is looked up by its digest, so nothing compares it byte by byte.
    pub async fn redeem(&self, code: &str) -> Result<Redeemed, StoreError> {
        self.redeem_digest(&invite_key(code)).await
    }

    /// What `code` would redeem, without spending it; with the digest that later spends it
    /// ([`Registry::redeem_digest`]), so the code itself need not be kept.
    pub async fn peek(&self, code: &str) -> Result<(Redeemed, Key), StoreError> {
        let digest = invite_key(code);
        let found = match self.store.get_record(&digest).await? {
            Some(wire) => match serde_json::from_slice::<Invite>(&wire) {
                Ok(invite) => Redeemed::Subject(invite.subject),
                Err(_) => Redeemed::Unknown,
            },
            // Absent, or spent: taking an absent record tells which, and changes nothing.
            None => match self.store.take_record(&digest).await? {
                Taken::Used => Redeemed::Used,
                _ => Redeemed::Unknown,
            },
        };
        Ok((found, digest))
    }

    /// Spends the invite whose digest [`Registry::peek`] gave, in one atomic step.
    pub async fn redeem_digest(&self, digest: &Key) -> Result<Redeemed, StoreError> {
        Ok(match self.store.take_record(digest).await? {
            Taken::Value(wire) => match serde_json::from_slice::<Invite>(&wire) {
                Ok(invite) => Redeemed::Subject(invite.subject),
                Err(_) => Redeemed::Unknown,
            },
            Taken::Used => Redeemed::Used,
            Taken::Unknown => Redeemed::Unknown,
        })
    }
}

/// The store key of a subject's registry.
fn subject_key(subject: &str) -> Key {
    store::key("devices", &[subject.as_bytes()])
}

/// The store key of an invite: a SHA-256 digest of the code.
fn invite_key(code: &str) -> Key {
    store::key("invite", &[code.as_bytes()])
}

/// Whether `jkt` looks like an RFC 7638 SHA-256 thumbprint: 43 base64url characters.
pub(crate) fn is_jkt(jkt: &str) -> bool {
    jkt.len() == 43
        && jkt
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A fresh invite code: 130 random bits as 26 lower-case base32 characters (RFC 4648 alphabet),
/// easy to read out and to type on a new device.
fn fresh_code() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let bytes: [u8; 26] = rand::random();
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn invite_codes_are_base32_and_unique() {
        let a = fresh_code();
        assert_eq!(a.len(), 26);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
        assert_ne!(a, fresh_code());
    }

    #[test]
    fn thumbprints_are_recognised() {
        assert!(is_jkt("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"));
        assert!(!is_jkt("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4"));
        assert!(!is_jkt("0ZcOCORZNYy+DWpqq30jZyJGHTN0d2HglBV3uiguA4I"));
    }

    #[tokio::test]
    async fn an_invite_is_redeemed_once_and_only_by_its_code() {
        let registry = Registry::new(Arc::new(MemoryStore::new(100)), 4);
        let code = registry
            .invite("alice", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            registry.redeem("not-the-code").await.unwrap(),
            Redeemed::Unknown
        );
        assert_eq!(
            registry.redeem(&code).await.unwrap(),
            Redeemed::Subject("alice".to_string())
        );
        assert_eq!(registry.redeem(&code).await.unwrap(), Redeemed::Used);
    }

    #[tokio::test]
    async fn entries_name_who_enrolled_them() {
        let registry = Registry::new(Arc::new(MemoryStore::new(100)), 1);
        let by = Source::Device("k1".to_string());
        assert_eq!(
            registry.enrol("alice", "k2", &by, None).await.unwrap(),
            Enrol::New
        );
        let entry = registry.entry("alice", "k2").await.unwrap().unwrap();
        assert_eq!(entry.by, "device:k1");
        assert_eq!(
            registry
                .enrol("alice", "k3", &Source::Operator, None)
                .await
                .unwrap(),
            Enrol::Full
        );
        assert!(registry.entry("bob", "k2").await.unwrap().is_none());
    }
}
