//! The in-process store: one bounded moka cache whose entries expire at their own TTL.
//! Atomicity comes from moka's per-key `and_compute_with`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
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
    outstanding: Arc<AtomicU64>,
}

impl MemoryStore {
    /// A store holding at most `max_entries` records.
    pub fn new(max_entries: u64) -> MemoryStore {
        let outstanding = Arc::new(AtomicU64::new(0));
        let counter = outstanding.clone();
        let cache = Cache::builder()
            .max_capacity(max_entries)
            .expire_after(UntilExpiry)
            .eviction_listener(move |_k, v: Entry, _cause| {
                // A nonce leaves the cache by consumption (replaced), expiry or eviction.
                if matches!(v, Entry::Nonce(..)) {
                    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        Some(n.saturating_sub(1))
                    });
                }
            })
            .build();
        MemoryStore {
            cache,
            max_entries,
            outstanding,
        }
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
        // Fail closed at the bound: refusing a new challenge is safe, evicting a live replay
        // record is not.
        if self.cache.entry_count() >= self.max_entries {
            self.cache.run_pending_tasks();
            if self.cache.entry_count() >= self.max_entries {
                return Err(StoreError::Full);
            }
        }
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
        let entry = self
            .cache
            .entry(*jti)
            .or_insert_with(|| Entry::Jti(Instant::now() + ttl));
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
        self.cache.entry(*session).and_compute_with(|current| {
            match current.map(|e| e.into_value()) {
                Some(Entry::Binding(bound, expires)) if expires > now => {
                    outcome = if bound.as_ref() == jkt {
                        Bind::Same
                    } else {
                        Bind::Other
                    };
                    Op::Nop
                }
                _ => Op::Put(Entry::Binding(Arc::from(jkt), now + ttl)),
            }
        });
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
