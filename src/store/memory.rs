//! The in-process store: one moka cache whose entries expire at their own TTL.
//! Atomicity comes from moka's per-key `and_compute_with`. The bound is ours, not moka's: moka's
//! size eviction would silently drop live nonces and `jti`s, and its `entry_count` lags behind
//! inserts. A slot is reserved atomically before a new key goes in and given back when moka
//! removes an entry; a full store refuses (fails closed) instead of evicting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::sync::Cache;
use moka::Expiry;

use super::{Bind, Key, NonceRecord, ReplayStore, StoreError, Take};

#[derive(Clone)]
enum Entry {
    Nonce(Arc<NonceRecord>, Instant),
    Used(Instant),
    Jti(Instant),
    Binding(Arc<str>, Instant),
}

impl Entry {
    fn expires(&self) -> Instant {
        match self {
            Entry::Nonce(_, t) | Entry::Used(t) | Entry::Jti(t) | Entry::Binding(_, t) => *t,
        }
    }
}

struct UntilExpiry;

impl Expiry<Key, Entry> for UntilExpiry {
    fn expire_after_create(&self, _: &Key, v: &Entry, _: Instant) -> Option<Duration> {
        Some(v.expires().saturating_duration_since(Instant::now()))
    }

    fn expire_after_update(
        &self,
        _: &Key,
        v: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.expires().saturating_duration_since(Instant::now()))
    }
}

/// Bounded in-memory store (`store.kind: memory`).
pub struct MemoryStore {
    cache: Cache<Key, Entry>,
    max_entries: u64,
    /// Entries stored and not yet removed by moka: never more than `max_entries`.
    entries: Arc<AtomicU64>,
    outstanding: Arc<AtomicU64>,
}

impl MemoryStore {
    /// A store holding at most `max_entries` records.
    pub fn new(max_entries: u64) -> MemoryStore {
        let outstanding = Arc::new(AtomicU64::new(0));
        let entries = Arc::new(AtomicU64::new(0));
        let (nonces, slots) = (outstanding.clone(), entries.clone());
        let release = |counter: &AtomicU64| {
            let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
        };
        let cache = Cache::builder()
            .expire_after(UntilExpiry)
            .eviction_listener(move |_k, v: Entry, cause| {
                // A nonce leaves the cache by consumption (replaced) or expiry.
                if matches!(v, Entry::Nonce(..)) {
                    release(&nonces);
                }
                // A replaced entry keeps its key's slot.
                if cause != RemovalCause::Replaced {
                    release(&slots);
                }
            })
            .build();
        MemoryStore {
            cache,
            max_entries,
            entries,
            outstanding,
        }
    }

    /// Reserves room for one new key; `Full` at the bound, after letting moka drop what expired.
    fn reserve(&self) -> Result<(), StoreError> {
        let take = || {
            self.entries
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.max_entries).then_some(n + 1)
                })
                .is_ok()
        };
        if take() {
            return Ok(());
        }
        self.cache.run_pending_tasks();
        if take() {
            return Ok(());
        }
        // Fail closed at the bound: refusing a new challenge is safe, evicting a live replay
        // record is not.
        Err(StoreError::Full)
    }

    fn unreserve(&self) {
        self.entries.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl ReplayStore for MemoryStore {
    async fn put_nonce(
        &self,
        nonce: &Key,
        record: NonceRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.reserve()?;
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        self.cache
            .insert(*nonce, Entry::Nonce(Arc::new(record), Instant::now() + ttl));
        Ok(())
    }

    async fn take_nonce(
        &self,
        nonce: &Key,
        action: &[u8; 32],
        device: &str,
    ) -> Result<Take, StoreError> {
        let now = Instant::now();
        let mut outcome = Take::Unknown;
        self.cache.entry(*nonce).and_compute_with(|current| {
            let Some(current) = current else {
                return Op::Nop;
            };
            match current.into_value() {
                Entry::Nonce(record, expires) if expires > now => {
                    if record.matches(action, device) {
                        outcome = Take::Consumed((*record).clone());
                        Op::Put(Entry::Used(expires))
                    } else {
                        outcome = Take::Mismatch;
                        Op::Nop
                    }
                }
                Entry::Used(expires) if expires > now => {
                    outcome = Take::Used;
                    Op::Nop
                }
                _ => Op::Nop,
            }
        });
        Ok(outcome)
    }

    async fn claim_jti(&self, jti: &Key, ttl: Duration) -> Result<bool, StoreError> {
        self.reserve()?;
        let entry = self
            .cache
            .entry(*jti)
            .or_insert_with(|| Entry::Jti(Instant::now() + ttl));
        if !entry.is_fresh() {
            self.unreserve();
        }
        Ok(entry.is_fresh())
    }

    async fn bind_device(
        &self,
        session: &Key,
        jkt: &str,
        ttl: Duration,
    ) -> Result<Bind, StoreError> {
        let now = Instant::now();
        let mut outcome = Bind::New;
        // Reserved outside moka's per-key compute (making room runs moka's housekeeping).
        let reserved = self.reserve().is_ok();
        let mut used_slot = false;
        let mut full = false;
        self.cache.entry(*session).and_compute_with(|current| {
            let absent = current.is_none();
            match current.map(|e| e.into_value()) {
                Some(Entry::Binding(bound, expires)) if expires > now => {
                    outcome = if bound.as_ref() == jkt {
                        Bind::Same
                    } else {
                        Bind::Other
                    };
                    Op::Nop
                }
                // A new key needs a slot; an expired entry's slot is reused.
                _ if absent && !reserved => {
                    full = true;
                    Op::Nop
                }
                _ => {
                    used_slot = absent;
                    Op::Put(Entry::Binding(Arc::from(jkt), now + ttl))
                }
            }
        });
        if reserved && !used_slot {
            self.unreserve();
        }
        if full {
            return Err(StoreError::Full);
        }
        Ok(outcome)
    }

    async fn device(&self, session: &Key) -> Result<Option<String>, StoreError> {
        Ok(match self.cache.get(session) {
            Some(Entry::Binding(jkt, expires)) if expires > Instant::now() => Some(jkt.to_string()),
            _ => None,
        })
    }

    fn outstanding_nonces(&self) -> u64 {
        self.outstanding.load(Ordering::Relaxed)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}
