//! The replay and binding store: nonces, `jti`s, device bindings and the registry of enrolled
//! devices. Every single-use decision is
//! one atomic operation here (never get-then-remove), so of N concurrent identical confirmations
//! exactly one wins. Keys are SHA-256 digests: no credential or proof ever becomes a key.

mod memory;
mod redis;

use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

pub use self::redis::{RedisSetupError, RedisStore};
pub use memory::MemoryStore;

/// A store key: SHA-256 over a namespace and the item.
pub type Key = [u8; 32];

/// Derives the key of `item` in `namespace` (`nonce`, `jti`, `binding`).
pub fn key(namespace: &str, parts: &[&[u8]]) -> Key {
    let mut h = Sha256::new();
    h.update(namespace.as_bytes());
    for p in parts {
        // Length-prefixed, so ("ab","c") and ("a","bc") never collide.
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// What a nonce was issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonceRecord {
    /// SHA-256 of (session id, method, target, body SHA-256): see `nonce::Action::binding`.
    pub action: [u8; 32],
    /// The device key the session was bound to when the nonce was issued.
    pub device: Option<String>,
    /// For a continuation nonce (issued on a redirect): the confirmations it continues.
    pub chain: Option<Chain>,
}

/// The confirmations a continuation follows (docs/protocol.md, "Redirects and continuations").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The first confirmation of the chain.
    pub root: String,
    /// The confirmation whose response redirected here.
    pub parent: String,
}

/// The outcome of trying to consume a nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// Consumed now: this caller is the one winner. Carries the nonce's chain, if any.
    Consumed(Option<Chain>),
    /// Never issued, or expired.
    Unknown,
    /// Already consumed.
    Used,
    /// Issued for another session, action or device; left unconsumed.
    Mismatch,
}

/// The outcome of binding a device key to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// The session was unbound and is now bound to this key.
    New,
    /// Already bound to this key.
    Same,
    /// Bound to another key.
    Other,
}

/// The outcome of enrolling a device for a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrol {
    /// Enrolled now.
    New,
    /// Already enrolled; its entry is left as it was.
    Already,
    /// The subject has `max` devices already: nothing was changed.
    Full,
}

/// The outcome of consuming a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Consumed now by this caller: the record's value.
    Value(Vec<u8>),
    /// Already consumed (kept as a tombstone until it would have expired).
    Used,
    /// Never stored, or expired.
    Unknown,
}

/// The store could not answer; high-impact routes fail closed on it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// At `max_entries`: new challenges are refused rather than replay records evicted.
    #[error("replay store is full")]
    Full,
    /// The backend did not answer in time or answered an error.
    #[error("replay store unavailable: {0}")]
    Unavailable(String),
}

/// The operations the gateway needs, with identical semantics on every backend.
#[async_trait]
pub trait ReplayStore: Send + Sync {
    /// Records a fresh nonce for `ttl`.
    async fn put_nonce(
        &self,
        nonce: &Key,
        record: NonceRecord,
        ttl: Duration,
    ) -> Result<(), StoreError>;
    /// Consumes the nonce in one atomic step if it was issued for `action` and (when it names one)
    /// `device`; a mismatching presenter does not burn it.
    async fn take_nonce(
        &self,
        nonce: &Key,
        action: &[u8; 32],
        device: &str,
    ) -> Result<Take, StoreError>;
    /// Records a `jti` for `ttl`; false when it was already there.
    async fn claim_jti(&self, jti: &Key, ttl: Duration) -> Result<bool, StoreError>;
    /// Binds `jkt` to a session on first use.
    async fn bind_device(
        &self,
        session: &Key,
        jkt: &str,
        ttl: Duration,
    ) -> Result<Bind, StoreError>;
    /// The key bound to a session, if any.
    async fn device(&self, session: &Key) -> Result<Option<String>, StoreError>;
    /// Records where a session's binding was made (its client network and unix time) on its
    /// first confirmation; answers the record that holds (the first one wins).
    async fn record_origin(
        &self,
        session: &Key,
        network: &str,
        at: u64,
        ttl: Duration,
    ) -> Result<(String, u64), StoreError>;
    /// Marks a session hash or subject revoked at unix time `at` for `ttl`.
    async fn revoke(&self, mark: &Key, at: u64, ttl: Duration) -> Result<(), StoreError>;
    /// When `mark` was revoked, if it was.
    async fn revoked(&self, mark: &Key) -> Result<Option<u64>, StoreError>;
    /// Stores an opaque record (a held request, a ceremony, a resume token) for `ttl`,
    /// replacing one under the same key.
    async fn put_record(&self, key: &Key, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError>;
    /// Reads a record without consuming it; a consumed one reads as absent.
    async fn get_record(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError>;
    /// Consumes a record in one atomic step: of N concurrent takers exactly one gets the value.
    async fn take_record(&self, key: &Key) -> Result<Taken, StoreError>;
    /// Replaces a record in one atomic step if it still holds `expected` (compare and swap),
    /// for `ttl` from now; false, and nothing written, when it holds anything else or is gone.
    async fn swap_record(
        &self,
        key: &Key,
        expected: &[u8],
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, StoreError>;
    /// Adds `member` to an index of records for `ttl` (extended, never shortened, when it is
    /// there already).
    async fn index_add(&self, index: &Key, member: &str, ttl: Duration) -> Result<(), StoreError>;
    /// Up to `limit` live members of an index.
    async fn index_members(&self, index: &Key, limit: usize) -> Result<Vec<String>, StoreError>;
    /// Enrols `device` for a subject with `entry` (opaque), unless the subject already has
    /// `max` devices: one atomic step, so concurrent enrolments never exceed the bound. Entries
    /// do not expire.
    async fn enrol_device(
        &self,
        subject: &Key,
        device: &str,
        entry: Vec<u8>,
        max: usize,
    ) -> Result<Enrol, StoreError>;
    /// The entry of a device enrolled for a subject, if it is.
    async fn enrolled_device(
        &self,
        subject: &Key,
        device: &str,
    ) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every device enrolled for a subject with its entry, in device order.
    async fn enrolled_devices(&self, subject: &Key) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Replaces the entry of a device that is enrolled (a passkey's signature counter); false
    /// when it is not (it was removed meanwhile), and then nothing is written.
    async fn update_device(
        &self,
        subject: &Key,
        device: &str,
        entry: Vec<u8>,
    ) -> Result<bool, StoreError>;
    /// Removes a device from a subject's registry; false when it was not enrolled.
    async fn remove_device(&self, subject: &Key, device: &str) -> Result<bool, StoreError>;
    /// Takes one of `limit` slots of a quota (challenges outstanding per session or per client
    /// address) for `ttl` from now; the count lapses `ttl` after the last slot taken. False, and
    /// nothing taken, when all `limit` are held.
    async fn take_slot(&self, quota: &Key, limit: u32, ttl: Duration) -> Result<bool, StoreError>;
    /// Gives a slot of a quota back (its nonce was consumed).
    async fn give_slot(&self, quota: &Key) -> Result<(), StoreError>;
    /// Nonces issued and neither consumed nor expired (approximate).
    fn outstanding_nonces(&self) -> u64;
    /// Whether the backend answers now.
    async fn ping(&self) -> Result<(), StoreError>;
    /// The backend's name for metric labels.
    fn backend(&self) -> &'static str;
}
