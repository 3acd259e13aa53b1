//! Quotas of outstanding challenges (docs/protocol.md, "Checks and reasons"): what one session
//! and one client network (an IPv4 address, an IPv6 /64) may hold unconsumed at once, counted in
//! the replay store so that replicas share them. A slot is taken when a nonce or a browser hold
//! is issued and given back when it is consumed; a quota lapses one window after its last slot.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::reason::Reason;
use crate::store::{self, Key, ReplayStore, StoreError};

/// The quotas of one kind of challenge.
pub struct Quotas {
    store: Arc<dyn ReplayStore>,
    /// The store namespace: nonces and holds count separately.
    kind: &'static str,
    per_session: u32,
    per_network: u32,
    /// How long an unconsumed challenge counts: its lifetime.
    window: Duration,
}

impl Quotas {
    /// Quotas of `kind` over `store`, counting each challenge for `window`.
    pub fn new(
        store: Arc<dyn ReplayStore>,
        kind: &'static str,
        per_session: u32,
        per_network: u32,
        window: Duration,
    ) -> Quotas {
        Quotas {
            store,
            kind,
            per_session,
            per_network,
            window,
        }
    }

    /// Takes a slot of the session's and of the client network's quota, or none:
    /// `too_many_challenges` when one is held in full, the store's error when it fails.
    pub async fn take(&self, session_id: &str, client: Option<IpAddr>) -> Result<(), QuotaError> {
        let quotas = self.of(session_id, client);
        for (i, (quota, limit)) in quotas.iter().enumerate() {
            let taken = self.store.take_slot(quota, *limit, self.window).await;
            if !matches!(taken, Ok(true)) {
                self.give_slots(&quotas[..i]).await;
                return Err(match taken {
                    Err(e) => QuotaError::Store(e),
                    Ok(_) => QuotaError::Full,
                });
            }
        }
        Ok(())
    }

    /// Gives the slots of one challenge back: it was consumed, cancelled or never issued. A store
    /// that fails here only leaves the slots to lapse with the window.
    pub async fn give(&self, session_id: &str, client: Option<IpAddr>) {
        self.give_slots(&self.of(session_id, client)).await;
    }

    async fn give_slots(&self, quotas: &[(Key, u32)]) {
        for (quota, _) in quotas {
            if let Err(e) = self.store.give_slot(quota).await {
                tracing::debug!(error = %e, "challenge quota slot not given back");
            }
        }
    }

    /// The quotas a challenge counts against, each with its limit.
    fn of(&self, session_id: &str, client: Option<IpAddr>) -> Vec<(Key, u32)> {
        let mut quotas = vec![(
            store::key(self.kind, &[b"session", session_id.as_bytes()]),
            self.per_session,
        )];
        if let Some(network) = client.map(network) {
            let quota = store::key(self.kind, &[b"network", &network]);
            quotas.push((quota, self.per_network));
        }
        quotas
    }
}

/// Why no challenge may be issued.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// A quota is held in full.
    #[error("challenge quota held in full")]
    Full,
    /// The store could not count.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl QuotaError {
    /// The reason a request is refused with.
    pub fn reason(&self) -> Reason {
        match self {
            QuotaError::Full => Reason::TooManyChallenges,
            QuotaError::Store(_) => Reason::StoreUnavailable,
        }
    }
}

/// The network an address counts in: an IPv4 address (IPv4-mapped IPv6 included), or an IPv6
/// /64, which one client can always choose addresses in.
pub(crate) fn network(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets()[..8].to_vec(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn quotas(per_session: u32, per_network: u32) -> Quotas {
        let store = Arc::new(MemoryStore::new(1000));
        Quotas::new(
            store,
            "quota-test",
            per_session,
            per_network,
            Duration::from_secs(60),
        )
    }

    #[tokio::test]
    async fn a_session_and_a_network_each_hold_their_limit() {
        let q = quotas(2, 3);
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        q.take("a", Some(ip)).await.expect("1");
        q.take("a", Some(ip)).await.expect("2");
        assert!(matches!(q.take("a", Some(ip)).await, Err(QuotaError::Full)));
        q.take("b", Some(ip)).await.expect("3");
        // The network is full now, for every session; a refused take held nothing.
        assert!(matches!(q.take("c", Some(ip)).await, Err(QuotaError::Full)));
        q.give("a", Some(ip)).await;
        q.take("c", Some(ip)).await.expect("a slot given back");
    }

    #[tokio::test]
    async fn an_ipv6_client_counts_in_its_64() {
        let q = quotas(10, 2);
        for (session, ip) in [("a", "2001:db8::1"), ("b", "2001:db8::ffff:2")] {
            q.take(session, ip.parse().ok())
                .await
                .expect("below the limit");
        }
        let same_64 = "2001:db8::abcd".parse().ok();
        assert!(matches!(q.take("c", same_64).await, Err(QuotaError::Full)));
        let other_64 = "2001:db8:0:1::1".parse().ok();
        q.take("c", other_64).await.expect("another network");
        let mapped = "::ffff:192.0.2.7".parse().ok();
        q.take("d", mapped)
            .await
            .expect("counts as its IPv4 address");
    }
}
