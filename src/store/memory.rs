//! The in-process store: the keys spread over `SHARDS` mutex-guarded hash maps whose values are
//! compact (an expiry in milliseconds, a 32-byte digest of who may consume a nonce), so that an
//! outstanding nonce costs well under 256 bytes. Each operation is one critical section on one
//! shard, which makes it atomic.
//!
//! The bound is exact: a slot is reserved before a new key goes in and released when the key
//! leaves. A full store refuses (fails closed); it never evicts a live nonce, `jti` or binding.
//! Expired entries stay until their shard is swept: when the shard is touched at least a second
//! after its last sweep and something in it has expired, or, when the store is full, every shard
//! holding expired entries (at most every 100 ms, so a flood at the bound cannot turn each refusal
//! into a scan of the whole store).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use subtle::ConstantTimeEq;

use super::{Bind, Chain, Enrol, Key, NonceRecord, ReplayStore, StoreError, Take, Taken};

const SHARDS: usize = 64;
/// The most bytes records (held requests, ceremonies) may take together: held bodies are up to
/// `confirmation.max_body` each, so the entry bound alone would not bound memory.
const RECORD_BYTES_MAX: u64 = 256 << 20;
/// How often a shard in use is swept of expired entries.
const SWEEP_EVERY_MS: u64 = 1_000;
/// How often a full store looks for expired entries to make room.
const SWEEP_WHEN_FULL_EVERY_MS: u64 = 100;

/// Milliseconds since the store was created.
type Millis = u64;

struct Nonce {
    /// Digest of the action and, when the session was bound, the device: see `presenter`.
    presenter: Key,
    expires: Millis,
    chain: Option<Box<Chain>>,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Issued to a bound session: only its device may consume it.
    Bound,
    /// Issued before the session was bound: any device presenting the action may consume it.
    AnyDevice,
    /// Consumed; kept until it would have expired so a replay reads as used.
    Used,
}

/// A subject's enrolled devices: (device, entry), sorted by device.
type Registry = Vec<(Box<str>, Box<[u8]>)>;

struct Binding {
    jkt: Box<str>,
    expires: Millis,
}

struct Stored {
    /// `None` once consumed: a tombstone until it would have expired.
    value: Option<Box<[u8]>>,
    expires: Millis,
}

#[derive(Default)]
struct Shard {
    records: HashMap<Key, Stored>,
    nonces: HashMap<Key, Nonce>,
    jtis: HashMap<Key, Millis>,
    bindings: HashMap<Key, Binding>,
    /// Binding origins: (unix time, network), expiry.
    origins: HashMap<Key, (u64, Box<str>, Millis)>,
    /// Revocation marks: unix time, expiry.
    revoked: HashMap<Key, (u64, Millis)>,
    /// Quota slots held, expiry.
    slots: HashMap<Key, (u32, Millis)>,
    /// Enrolled devices by subject: (device, entry), sorted by device; they never expire, and
    /// each device holds one entry slot.
    devices: HashMap<Key, Registry>,
    /// Indexes of records (approvals): member and expiry; each member holds one entry slot.
    indexes: HashMap<Key, Vec<(Box<str>, Millis)>>,
    /// The earliest expiry of anything in the shard (a lower bound between sweeps).
    next_expiry: Millis,
    swept: Millis,
}

/// What one sweep removed.
#[derive(Default)]
struct Swept {
    entries: u64,
    open_nonces: u64,
    record_bytes: u64,
}

impl Shard {
    fn note_expiry(&mut self, expires: Millis) {
        self.next_expiry = self.next_expiry.min(expires);
    }

    /// Removes every expired entry when one may have expired and the last sweep is `every` ago.
    fn sweep(&mut self, now: Millis, every: Millis) -> Swept {
        let mut swept = Swept::default();
        if now < self.next_expiry || now < self.swept + every {
            return swept;
        }
        self.swept = now;
        let mut next = Millis::MAX;
        let mut live = |expires: Millis| {
            let keep = expires > now;
            if keep {
                next = next.min(expires);
            } else {
                swept.entries += 1;
            }
            keep
        };
        self.nonces.retain(|_, n| {
            let keep = live(n.expires);
            if !keep && n.state != State::Used {
                swept.open_nonces += 1;
            }
            keep
        });
        self.jtis.retain(|_, expires| live(*expires));
        self.bindings.retain(|_, b| live(b.expires));
        self.origins.retain(|_, o| live(o.2));
        self.revoked.retain(|_, r| live(r.1));
        self.slots.retain(|_, s| live(s.1));
        let mut record_bytes = 0;
        self.records.retain(|_, r| {
            let keep = live(r.expires);
            if !keep {
                record_bytes += r.value.as_ref().map_or(0, |v| v.len() as u64);
            }
            keep
        });
        swept.record_bytes = record_bytes;
        self.indexes.retain(|_, members| {
            members.retain(|(_, expires)| live(*expires));
            !members.is_empty()
        });
        self.next_expiry = next;
        shrink(&mut self.nonces);
        shrink(&mut self.jtis);
        shrink(&mut self.bindings);
        shrink(&mut self.records);
        swept
    }
}

/// Gives memory back after a flood has drained.
fn shrink<V>(map: &mut HashMap<Key, V>) {
    if map.capacity() > 1024 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

/// Who may consume a nonce: the action, and the device when the session was bound at issue.
fn presenter(action: &[u8; 32], device: Option<&str>) -> Key {
    match device {
        Some(device) => super::key("presenter", &[action, device.as_bytes()]),
        None => super::key("presenter-any", &[action]),
    }
}

/// Bounded in-memory store (`store.kind: memory`).
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    epoch: Instant,
    max_entries: u64,
    /// Keys held (live or expired and not yet swept): never more than `max_entries`.
    entries: AtomicU64,
    /// Nonces held and not consumed (expired ones until their shard is swept).
    outstanding: AtomicU64,
    /// When every shard was last swept to make room, or to count outstanding nonces.
    swept_when_full: AtomicU64,
    swept_for_count: AtomicU64,
    /// Bytes of record values held: never more than `RECORD_BYTES_MAX`.
    record_bytes: AtomicU64,
}

impl MemoryStore {
    /// A store holding at most `max_entries` records.
    pub fn new(max_entries: u64) -> MemoryStore {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            epoch: Instant::now(),
            max_entries,
            entries: AtomicU64::new(0),
            outstanding: AtomicU64::new(0),
            swept_when_full: AtomicU64::new(0),
            swept_for_count: AtomicU64::new(0),
            record_bytes: AtomicU64::new(0),
        }
    }

    fn now(&self) -> Millis {
        self.epoch.elapsed().as_millis() as Millis
    }

    fn expiry(&self, now: Millis, ttl: Duration) -> Millis {
        now.saturating_add(ttl.as_millis() as Millis)
    }

    /// The key's shard, locked and swept if it is due.
    fn shard(&self, key: &Key, now: Millis) -> MutexGuard<'_, Shard> {
        // Keys are SHA-256 digests: any byte spreads them evenly.
        self.lock_swept(&self.shards[key[0] as usize % SHARDS], now, SWEEP_EVERY_MS)
    }

    fn lock_swept<'a>(
        &self,
        shard: &'a Mutex<Shard>,
        now: Millis,
        every: Millis,
    ) -> MutexGuard<'a, Shard> {
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let swept = shard.sweep(now, every);
        if swept.entries > 0 {
            self.entries.fetch_sub(swept.entries, Ordering::AcqRel);
            self.outstanding
                .fetch_sub(swept.open_nonces, Ordering::Relaxed);
            self.record_bytes
                .fetch_sub(swept.record_bytes, Ordering::AcqRel);
        }
        shard
    }

    /// Sweeps every shard that is due, unless `last` says this was done less than `every` ago.
    fn sweep_all(&self, last: &AtomicU64, every: Millis) {
        let now = self.now();
        let then = last.load(Ordering::Acquire);
        if now < then + every
            || last
                .compare_exchange(then, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        for shard in self.shards.iter() {
            drop(self.lock_swept(shard, now, every));
        }
    }

    /// Reserves room for one new key; `Full` at the bound, after making room from expired ones.
    /// Called with no shard locked.
    fn reserve(&self) -> Result<(), StoreError> {
        self.reserve_below(self.max_entries)
    }

    /// [`MemoryStore::reserve`] for a new challenge (a nonce or a quota slot): an eighth of the
    /// store stays free for what consuming issued nonces needs (`jti`s, bindings).
    fn reserve_for_challenge(&self) -> Result<(), StoreError> {
        self.reserve_below(self.max_entries - self.max_entries / 8)
    }

    fn reserve_below(&self, bound: u64) -> Result<(), StoreError> {
        let take = || {
            self.entries
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < bound).then_some(n + 1)
                })
                .is_ok()
        };
        if take() {
            return Ok(());
        }
        self.sweep_all(&self.swept_when_full, SWEEP_WHEN_FULL_EVERY_MS);
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

    /// Reserves `n` bytes of record values; `Full` above `RECORD_BYTES_MAX`.
    fn reserve_bytes(&self, n: u64) -> Result<(), StoreError> {
        self.record_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held + n <= RECORD_BYTES_MAX).then_some(held + n)
            })
            .map(drop)
            .map_err(|_| StoreError::Full)
    }

    fn release_bytes(&self, value: Option<&[u8]>) {
        if let Some(v) = value {
            self.record_bytes
                .fetch_sub(v.len() as u64, Ordering::AcqRel);
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
        self.reserve_for_challenge()?;
        let now = self.now();
        let expires = self.expiry(now, ttl);
        let entry = Nonce {
            presenter: presenter(&record.action, record.device.as_deref()),
            expires,
            chain: record.chain.map(Box::new),
            state: match record.device {
                Some(_) => State::Bound,
                None => State::AnyDevice,
            },
        };
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.shard(nonce, now);
        shard.note_expiry(expires);
        if let Some(old) = shard.nonces.insert(*nonce, entry) {
            // The key already had its slot.
            self.unreserve();
            if old.state != State::Used {
                self.outstanding.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    async fn take_nonce(
        &self,
        nonce: &Key,
        action: &[u8; 32],
        device: &str,
    ) -> Result<Take, StoreError> {
        let now = self.now();
        let mut shard = self.shard(nonce, now);
        let Some(entry) = shard.nonces.get_mut(nonce).filter(|n| n.expires > now) else {
            return Ok(Take::Unknown);
        };
        let expected = match entry.state {
            State::Used => return Ok(Take::Used),
            State::Bound => presenter(action, Some(device)),
            State::AnyDevice => presenter(action, None),
        };
        if !bool::from(entry.presenter.ct_eq(&expected)) {
            return Ok(Take::Mismatch);
        }
        entry.state = State::Used;
        let chain = entry.chain.take().map(|chain| *chain);
        drop(shard);
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
        Ok(Take::Consumed(chain))
    }

    async fn claim_jti(&self, jti: &Key, ttl: Duration) -> Result<bool, StoreError> {
        // Reserved before locking: making room sweeps every shard.
        self.reserve()?;
        let now = self.now();
        let expires = self.expiry(now, ttl);
        let mut shard = self.shard(jti, now);
        let claimed = match shard.jtis.get_mut(jti) {
            Some(held) if *held > now => false,
            Some(held) => {
                // Expired and not yet swept: reuse its slot.
                *held = expires;
                self.unreserve();
                true
            }
            None => {
                shard.jtis.insert(*jti, expires);
                true
            }
        };
        if claimed {
            shard.note_expiry(expires);
        } else {
            self.unreserve();
        }
        Ok(claimed)
    }

    async fn bind_device(
        &self,
        session: &Key,
        jkt: &str,
        ttl: Duration,
    ) -> Result<Bind, StoreError> {
        let reserved = self.reserve().is_ok();
        let now = self.now();
        let expires = self.expiry(now, ttl);
        let mut shard = self.shard(session, now);
        let (outcome, used_slot) = match shard.bindings.get_mut(session) {
            Some(bound) if bound.expires > now => {
                let same = bound.jkt.as_bytes().ct_eq(jkt.as_bytes());
                (
                    Ok(if same.into() { Bind::Same } else { Bind::Other }),
                    false,
                )
            }
            Some(expired) => {
                *expired = Binding {
                    jkt: jkt.into(),
                    expires,
                };
                (Ok(Bind::New), false)
            }
            None if reserved => {
                let binding = Binding {
                    jkt: jkt.into(),
                    expires,
                };
                shard.bindings.insert(*session, binding);
                (Ok(Bind::New), true)
            }
            None => (Err(StoreError::Full), false),
        };
        if matches!(outcome, Ok(Bind::New)) {
            shard.note_expiry(expires);
        }
        drop(shard);
        if reserved && !used_slot {
            self.unreserve();
        }
        outcome
    }

    async fn device(&self, session: &Key) -> Result<Option<String>, StoreError> {
        let now = self.now();
        let shard = self.shard(session, now);
        Ok(shard
            .bindings
            .get(session)
            .filter(|b| b.expires > now)
            .map(|b| b.jkt.to_string()))
    }

    async fn record_origin(
        &self,
        session: &Key,
        network: &str,
        at: u64,
        ttl: Duration,
    ) -> Result<(String, u64), StoreError> {
        let reserved = self.reserve().is_ok();
        let now = self.now();
        let expires = self.expiry(now, ttl);
        let mut shard = self.shard(session, now);
        let (held, used_slot) = match shard.origins.get_mut(session) {
            Some(held) if held.2 > now => (Ok((held.1.to_string(), held.0)), false),
            Some(expired) => {
                *expired = (at, network.into(), expires);
                (Ok((network.to_string(), at)), false)
            }
            None if reserved => {
                shard
                    .origins
                    .insert(*session, (at, network.into(), expires));
                (Ok((network.to_string(), at)), true)
            }
            None => (Err(StoreError::Full), false),
        };
        shard.note_expiry(expires);
        drop(shard);
        if reserved && !used_slot {
            self.unreserve();
        }
        held
    }

    async fn revoke(&self, mark: &Key, at: u64, ttl: Duration) -> Result<(), StoreError> {
        let reserved = self.reserve().is_ok();
        let now = self.now();
        let expires = self.expiry(now, ttl);
        let mut shard = self.shard(mark, now);
        let (outcome, used_slot) = match shard.revoked.get_mut(mark) {
            Some(held) => {
                *held = (held.0.max(at), expires);
                (Ok(()), false)
            }
            None if reserved => {
                shard.revoked.insert(*mark, (at, expires));
                (Ok(()), true)
            }
            None => (Err(StoreError::Full), false),
        };
        shard.note_expiry(expires);
        drop(shard);
        if reserved && !used_slot {
            self.unreserve();
        }
        outcome
    }

    async fn take_slot(&self, quota: &Key, limit: u32, ttl: Duration) -> Result<bool, StoreError> {
        let reserved = self.reserve_for_challenge().is_ok();
        let now = self.now();
        let expires = self.expiry(now, ttl);
        let mut shard = self.shard(quota, now);
        let (outcome, used_slot) = match shard.slots.get_mut(quota) {
            Some(held) if held.1 > now && held.0 >= limit => (Ok(false), false),
            Some(held) => {
                let count = if held.1 > now { held.0 } else { 0 };
                *held = (count + 1, expires);
                (Ok(true), false)
            }
            None if !reserved => (Err(StoreError::Full), false),
            None if limit == 0 => (Ok(false), false),
            None => {
                shard.slots.insert(*quota, (1, expires));
                (Ok(true), true)
            }
        };
        shard.note_expiry(expires);
        drop(shard);
        if reserved && !used_slot {
            self.unreserve();
        }
        outcome
    }

    async fn give_slot(&self, quota: &Key) -> Result<(), StoreError> {
        let now = self.now();
        let mut shard = self.shard(quota, now);
        let emptied = match shard.slots.get_mut(quota) {
            Some(held) if held.0 > 1 => {
                held.0 -= 1;
                false
            }
            Some(_) => true,
            None => false,
        };
        if emptied {
            shard.slots.remove(quota);
            drop(shard);
            self.unreserve();
        }
        Ok(())
    }

    async fn revoked(&self, mark: &Key) -> Result<Option<u64>, StoreError> {
        let now = self.now();
        let shard = self.shard(mark, now);
        Ok(shard.revoked.get(mark).filter(|r| r.1 > now).map(|r| r.0))
    }

    async fn put_record(&self, key: &Key, value: Vec<u8>, ttl: Duration) -> Result<(), StoreError> {
        self.reserve()?;
        if let Err(full) = self.reserve_bytes(value.len() as u64) {
            self.unreserve();
            return Err(full);
        }
        let now = self.now();
        let expires = self.expiry(now, ttl);
        let mut shard = self.shard(key, now);
        shard.note_expiry(expires);
        let stored = Stored {
            value: Some(value.into_boxed_slice()),
            expires,
        };
        if let Some(old) = shard.records.insert(*key, stored) {
            drop(shard);
            // The key already had its slot.
            self.unreserve();
            self.release_bytes(old.value.as_deref());
        }
        Ok(())
    }

    async fn get_record(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        let now = self.now();
        let shard = self.shard(key, now);
        Ok(shard
            .records
            .get(key)
            .filter(|r| r.expires > now)
            .and_then(|r| r.value.as_deref())
            .map(<[u8]>::to_vec))
    }

    async fn take_record(&self, key: &Key) -> Result<Taken, StoreError> {
        let now = self.now();
        let mut shard = self.shard(key, now);
        let Some(stored) = shard.records.get_mut(key).filter(|r| r.expires > now) else {
            return Ok(Taken::Unknown);
        };
        let Some(value) = stored.value.take() else {
            return Ok(Taken::Used);
        };
        drop(shard);
        self.release_bytes(Some(&value));
        Ok(Taken::Value(value.into_vec()))
    }

    async fn swap_record(
        &self,
        key: &Key,
        expected: &[u8],
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        // Reserved before the shard is locked (making room may sweep every shard); given back
        // when nothing is swapped.
        let new_len = value.len() as u64;
        self.reserve_bytes(new_len)?;
        let now = self.now();
        let expires = self.expiry(now, ttl);
        let mut shard = self.shard(key, now);
        let old = match shard.records.get_mut(key).filter(|r| r.expires > now) {
            Some(held) if held.value.as_deref() == Some(expected) => {
                let old = held.value.replace(value.into_boxed_slice());
                held.expires = expires;
                old
            }
            _ => {
                drop(shard);
                self.record_bytes.fetch_sub(new_len, Ordering::AcqRel);
                return Ok(false);
            }
        };
        shard.note_expiry(expires);
        drop(shard);
        self.release_bytes(old.as_deref());
        Ok(true)
    }

    async fn index_add(&self, index: &Key, member: &str, ttl: Duration) -> Result<(), StoreError> {
        self.reserve()?;
        let now = self.now();
        let expires = self.expiry(now, ttl);
        let mut shard = self.shard(index, now);
        shard.note_expiry(expires);
        let members = shard.indexes.entry(*index).or_default();
        match members.iter_mut().find(|(m, _)| &**m == member) {
            Some(held) => {
                held.1 = held.1.max(expires);
                drop(shard);
                self.unreserve();
            }
            None => members.push((member.into(), expires)),
        }
        Ok(())
    }

    async fn index_members(&self, index: &Key, limit: usize) -> Result<Vec<String>, StoreError> {
        let now = self.now();
        let shard = self.shard(index, now);
        Ok(shard
            .indexes
            .get(index)
            .map(|members| {
                members
                    .iter()
                    .filter(|(_, expires)| *expires > now)
                    .take(limit)
                    .map(|(m, _)| m.to_string())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn enrol_device(
        &self,
        subject: &Key,
        device: &str,
        entry: Vec<u8>,
        max: usize,
    ) -> Result<Enrol, StoreError> {
        self.reserve()?;
        let now = self.now();
        let mut shard = self.shard(subject, now);
        let devices = shard.devices.entry(*subject).or_default();
        let outcome = match devices.binary_search_by(|(d, _)| (**d).cmp(device)) {
            Ok(_) => Enrol::Already,
            Err(_) if devices.len() >= max => Enrol::Full,
            Err(at) => {
                devices.insert(at, (device.into(), entry.into_boxed_slice()));
                Enrol::New
            }
        };
        if devices.is_empty() {
            shard.devices.remove(subject);
        }
        drop(shard);
        if outcome != Enrol::New {
            self.unreserve();
        }
        Ok(outcome)
    }

    async fn enrolled_device(
        &self,
        subject: &Key,
        device: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let shard = self.shard(subject, self.now());
        Ok(shard.devices.get(subject).and_then(|devices| {
            devices
                .binary_search_by(|(d, _)| (**d).cmp(device))
                .ok()
                .map(|at| devices[at].1.to_vec())
        }))
    }

    async fn enrolled_devices(&self, subject: &Key) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let shard = self.shard(subject, self.now());
        Ok(shard
            .devices
            .get(subject)
            .map(|devices| {
                devices
                    .iter()
                    .map(|(d, e)| (d.to_string(), e.to_vec()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn update_device(
        &self,
        subject: &Key,
        device: &str,
        entry: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let mut shard = self.shard(subject, self.now());
        let Some(devices) = shard.devices.get_mut(subject) else {
            return Ok(false);
        };
        match devices.binary_search_by(|(d, _)| (**d).cmp(device)) {
            Ok(at) => {
                devices[at].1 = entry.into_boxed_slice();
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    async fn remove_device(&self, subject: &Key, device: &str) -> Result<bool, StoreError> {
        let mut shard = self.shard(subject, self.now());
        let Some(devices) = shard.devices.get_mut(subject) else {
            return Ok(false);
        };
        let removed = match devices.binary_search_by(|(d, _)| (**d).cmp(device)) {
            Ok(at) => {
                devices.remove(at);
                true
            }
            Err(_) => false,
        };
        if devices.is_empty() {
            shard.devices.remove(subject);
        }
        drop(shard);
        if removed {
            self.unreserve();
        }
        Ok(removed)
    }

    fn outstanding_nonces(&self) -> u64 {
        self.sweep_all(&self.swept_for_count, SWEEP_EVERY_MS);
        self.outstanding.load(Ordering::Relaxed)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn record(i: u64) -> NonceRecord {
        NonceRecord {
            action: super::super::key("action", &[&i.to_be_bytes()]),
            device: Some("jkt".to_string()),
            chain: None,
        }
    }

    fn nonce(i: u64) -> Key {
        super::super::key("nonce", &[&i.to_be_bytes()])
    }

    #[tokio::test]
    async fn a_record_is_taken_once_and_then_reads_as_used() {
        let store = MemoryStore::new(10);
        let key = nonce(1);
        assert_eq!(store.take_record(&key).await.unwrap(), Taken::Unknown);
        store
            .put_record(&key, b"held".to_vec(), MINUTE)
            .await
            .unwrap();
        assert_eq!(
            store.get_record(&key).await.unwrap().as_deref(),
            Some(&b"held"[..])
        );
        assert_eq!(
            store.take_record(&key).await.unwrap(),
            Taken::Value(b"held".to_vec())
        );
        assert_eq!(store.take_record(&key).await.unwrap(), Taken::Used);
        assert_eq!(store.get_record(&key).await.unwrap(), None);
        assert_eq!(store.record_bytes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn records_are_bounded_by_bytes_as_well_as_by_entries() {
        let store = MemoryStore::new(1_000);
        let big = vec![0u8; (RECORD_BYTES_MAX / 2) as usize];
        store
            .put_record(&nonce(1), big.clone(), MINUTE)
            .await
            .unwrap();
        store
            .put_record(&nonce(2), big.clone(), MINUTE)
            .await
            .unwrap();
        let refused = store.put_record(&nonce(3), vec![0u8; 1], MINUTE).await;
        assert!(matches!(refused, Err(StoreError::Full)));
        store.take_record(&nonce(1)).await.unwrap();
        store
            .put_record(&nonce(3), vec![0u8; 1], MINUTE)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_full_store_refuses_challenges_evicts_nothing_and_keeps_room_to_consume() {
        let store = MemoryStore::new(100);
        // Challenges may take seven eighths of the store.
        for i in 0..88 {
            store.put_nonce(&nonce(i), record(i), MINUTE).await.unwrap();
        }
        let refused = store.put_nonce(&nonce(100), record(100), MINUTE).await;
        assert!(matches!(refused, Err(StoreError::Full)));
        let quota = store.take_slot(&nonce(101), 5, MINUTE).await;
        assert!(matches!(quota, Err(StoreError::Full)));
        // What consuming issued nonces needs still fits, up to the bound itself.
        for i in 0..11 {
            assert!(store.claim_jti(&nonce(200 + i), MINUTE).await.unwrap());
        }
        store.bind_device(&nonce(102), "jkt", MINUTE).await.unwrap();
        assert!(matches!(
            store.claim_jti(&nonce(103), MINUTE).await,
            Err(StoreError::Full)
        ));
        assert_eq!(store.outstanding_nonces(), 88);
        for i in 0..88 {
            let taken = store.take_nonce(&nonce(i), &record(i).action, "jkt").await;
            assert_eq!(taken.unwrap(), Take::Consumed(None), "nonce {i}");
        }
        assert_eq!(store.outstanding_nonces(), 0);
        // Consumed nonces keep their slot as tombstones until they expire.
        let refused = store.put_nonce(&nonce(100), record(100), MINUTE).await;
        assert!(matches!(refused, Err(StoreError::Full)));
    }

    #[tokio::test]
    async fn expired_entries_give_their_slots_back() {
        let store = MemoryStore::new(16);
        let short = Duration::from_millis(50);
        for i in 0..14 {
            store.put_nonce(&nonce(i), record(i), short).await.unwrap();
        }
        assert!(store
            .put_nonce(&nonce(14), record(14), short)
            .await
            .is_err());
        tokio::time::sleep(Duration::from_millis(200)).await;
        for i in 20..34 {
            store.put_nonce(&nonce(i), record(i), MINUTE).await.unwrap();
        }
        assert_eq!(store.entries.load(Ordering::Relaxed), 14);
        assert_eq!(store.outstanding.load(Ordering::Relaxed), 14);
    }

    #[tokio::test]
    async fn a_quota_holds_its_limit_gives_slots_back_and_lapses() {
        let store = MemoryStore::new(100);
        let quota = nonce(1);
        let short = Duration::from_millis(50);
        for _ in 0..3 {
            assert!(store.take_slot(&quota, 3, short).await.unwrap());
        }
        assert!(!store.take_slot(&quota, 3, short).await.unwrap());
        store.give_slot(&quota).await.unwrap();
        assert!(store.take_slot(&quota, 3, short).await.unwrap());
        assert!(!store.take_slot(&quota, 3, short).await.unwrap());
        // Another quota is not affected.
        assert!(store.take_slot(&nonce(2), 3, short).await.unwrap());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(store.take_slot(&quota, 3, MINUTE).await.unwrap());
        for _ in 0..3 {
            store.give_slot(&quota).await.unwrap();
        }
        // Emptied quotas give their entry back.
        assert_eq!(store.entries.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_registry_is_bounded_per_subject_and_removal_frees_a_place() {
        let store = MemoryStore::new(100);
        let alice = nonce(1);
        for d in ["c", "a", "b"] {
            let enrolled = store.enrol_device(&alice, d, d.as_bytes().to_vec(), 3);
            assert_eq!(enrolled.await.unwrap(), Enrol::New);
        }
        let again = store.enrol_device(&alice, "a", b"other".to_vec(), 3).await;
        assert_eq!(again.unwrap(), Enrol::Already);
        let full = store.enrol_device(&alice, "d", Vec::new(), 3).await;
        assert_eq!(full.unwrap(), Enrol::Full);
        let listed = store.enrolled_devices(&alice).await.unwrap();
        let names: Vec<&str> = listed.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(
            store.enrolled_device(&alice, "a").await.unwrap().as_deref(),
            Some(&b"a"[..])
        );
        assert_eq!(store.enrolled_device(&nonce(2), "a").await.unwrap(), None);
        assert!(store.remove_device(&alice, "b").await.unwrap());
        assert!(!store.remove_device(&alice, "b").await.unwrap());
        assert!(!store.update_device(&alice, "b", Vec::new()).await.unwrap());
        assert!(store
            .update_device(&alice, "a", b"n".to_vec())
            .await
            .unwrap());
        let enrolled = store.enrol_device(&alice, "d", Vec::new(), 3).await;
        assert_eq!(enrolled.unwrap(), Enrol::New);
        assert_eq!(store.entries.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn repeated_claims_and_bindings_take_one_slot() {
        let store = MemoryStore::new(3);
        assert!(store.claim_jti(&nonce(1), MINUTE).await.unwrap());
        assert!(!store.claim_jti(&nonce(1), MINUTE).await.unwrap());
        let session = nonce(2);
        assert_eq!(
            store.bind_device(&session, "a", MINUTE).await.unwrap(),
            Bind::New
        );
        assert_eq!(
            store.bind_device(&session, "a", MINUTE).await.unwrap(),
            Bind::Same
        );
        assert_eq!(
            store.bind_device(&session, "b", MINUTE).await.unwrap(),
            Bind::Other
        );
        assert_eq!(store.entries.load(Ordering::Relaxed), 2);
    }
}
