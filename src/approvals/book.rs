//! Approvals in the replay store, shared by every replica on Redis. Each transition is a compare
//! and swap of the whole record ([`ReplayStore::swap_record`]): read, apply the state machine,
//! write only if nobody wrote in between, else read again. So of N concurrent executions exactly
//! one wins, and concurrent votes are all counted.

use std::sync::Arc;
use std::time::Duration;

use super::record::{unix_ms, Approval};
use crate::reason::Reason;
use crate::store::{self, Key, ReplayStore, StoreError};

/// How long a settled approval is kept after its ttl, so that `approvals show` and a late
/// execution read what happened to it rather than "unknown".
pub const KEPT_AFTER_TTL: Duration = Duration::from_secs(3600);
/// The most approvals `list` reads.
pub const LIST_MAX: usize = 1000;
/// Compare-and-swap attempts before a transition gives up (only concurrent writers cause a retry).
const ATTEMPTS: usize = 64;

/// Why a transition could not even be tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// No approval has the id.
    Unknown,
    /// The store could not answer.
    Store(String),
}

impl Missing {
    /// The refusal's reason.
    pub fn reason(&self) -> Reason {
        match self {
            Missing::Unknown => Reason::ApprovalUnknown,
            Missing::Store(_) => Reason::StoreUnavailable,
        }
    }
}

impl From<StoreError> for Missing {
    fn from(e: StoreError) -> Missing {
        Missing::Store(e.to_string())
    }
}

/// A transition as written: what the state machine answered, and the approval as it now stands.
pub struct Changed<T> {
    /// What the state machine answered; a refused change wrote nothing but the expiry.
    pub outcome: Result<T, Reason>,
    /// The approval as it now stands.
    pub approval: Approval,
    /// Whether this call found it lapsed and wrote it expired.
    pub expired_now: bool,
    /// The approval as it stood before, to put back with [`Book::restore`].
    pub before: Approval,
}

/// The approvals of one store.
#[derive(Clone)]
pub struct Book {
    store: Arc<dyn ReplayStore>,
}

fn record_key(id: &str) -> Key {
    store::key("approval", &[id.as_bytes()])
}

fn index_key() -> Key {
    store::key("approval-index", &[])
}

fn ttl_of(approval: &Approval, now: u64) -> Duration {
    let kept = u64::try_from(KEPT_AFTER_TTL.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(
        approval
            .expires_at
            .saturating_add(kept)
            .saturating_sub(now)
            .max(1),
    )
}

impl Book {
    /// The approvals in `store`.
    pub fn new(store: Arc<dyn ReplayStore>) -> Book {
        Book { store }
    }

    /// Records a new approval.
    pub async fn create(&self, approval: &Approval) -> Result<(), StoreError> {
        let now = approval.created_at;
        let ttl = ttl_of(approval, now);
        let bytes = serialize(approval);
        self.store
            .put_record(&record_key(&approval.id), bytes, ttl)
            .await?;
        self.store.index_add(&index_key(), &approval.id, ttl).await
    }

    /// Forgets an approval that was never announced (its audit record could not be written).
    pub async fn forget(&self, id: &str) -> Result<(), StoreError> {
        self.store.take_record(&record_key(id)).await.map(drop)
    }

    /// The approval, as stored (a lapsed one still reads as it was last written).
    pub async fn get(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        let bytes = self.store.get_record(&record_key(id)).await?;
        Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Every approval the store still holds (at most [`LIST_MAX`]), oldest first.
    pub async fn list(&self) -> Result<Vec<Approval>, StoreError> {
        let ids = self.store.index_members(&index_key(), LIST_MAX).await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(approval) = self.get(&id).await? {
                out.push(approval);
            }
        }
        out.sort_by_key(|a| a.created_at);
        Ok(out)
    }

    /// Applies `change` to the approval `id` atomically at unix ms `now`. A lapsed approval is
    /// written expired first, even when `change` then refuses.
    pub async fn change<T>(
        &self,
        id: &str,
        now: u64,
        change: impl Fn(&mut Approval) -> Result<T, Reason>,
    ) -> Result<Changed<T>, Missing> {
        let key = record_key(id);
        for _ in 0..ATTEMPTS {
            let Some(held) = self.store.get_record(&key).await? else {
                return Err(Missing::Unknown);
            };
            let Ok(approval) = serde_json::from_slice::<Approval>(&held) else {
                return Err(Missing::Unknown);
            };
            let mut next = approval.clone();
            let expired_now = next.expire(now);
            let outcome = change(&mut next);
            if outcome.is_err() {
                // The refused change is dropped; only an expiry is written.
                next = approval.clone();
                next.expire(now);
            }
            if next == approval {
                return Ok(Changed {
                    outcome,
                    approval: next,
                    expired_now: false,
                    before: approval,
                });
            }
            let ttl = ttl_of(&next, now);
            if self
                .store
                .swap_record(&key, &held, serialize(&next), ttl)
                .await?
            {
                return Ok(Changed {
                    outcome,
                    approval: next,
                    expired_now,
                    before: approval,
                });
            }
        }
        Err(Missing::Store(
            "an approval changed too often to be written".to_string(),
        ))
    }

    /// Puts `before` back if the approval still stands as `after` (a change whose audit record
    /// could not be written is undone); false when it changed meanwhile.
    pub async fn restore(&self, before: &Approval, after: &Approval) -> Result<bool, StoreError> {
        let now = Book::now();
        let ttl = ttl_of(before, now);
        let key = record_key(&before.id);
        self.store
            .swap_record(&key, &serialize(after), serialize(before), ttl)
            .await
    }

    /// Marks a lapsed approval expired; the approval when this call was the one that did.
    pub async fn expire(&self, id: &str, now: u64) -> Result<Option<Approval>, Missing> {
        let changed = self.change(id, now, |_| Ok(())).await?;
        Ok(changed.expired_now.then_some(changed.approval))
    }

    /// Unix ms now.
    pub fn now() -> u64 {
        unix_ms(std::time::SystemTime::now())
    }
}

fn serialize(approval: &Approval) -> Vec<u8> {
    // Serializing plain strings, numbers and vectors cannot fail.
    serde_json::to_vec(approval).unwrap_or_default()
}
