//! The confirmation decision (docs/protocol.md, "The confirmation exchange" and "Checks and
//! reasons"), with no network and no Pingora: session → proof (structure, typ, alg, jwk, signature,
//! claims, htm, htu, iat) → ath → device binding → nonce → jti, first failure wins. Single use is
//! enforced by the store's atomic operations.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::alg::ProofAlg;
use crate::config::{ConfirmationConfig, DeviceBinding};
use crate::devices::Registry;
use crate::metrics::Metrics;
use crate::nonce::{self, Action};
use crate::policy::{self, Origin};
use crate::proof::{self, ProofCheck};
use crate::quota::{QuotaError, Quotas};
use crate::reason::Reason;
use crate::session::{Session, SessionError, Sessions};
use crate::store::{self, Bind, Chain, NonceRecord, ReplayStore, StoreError, Take};

/// A nonce handed to the client.
#[derive(Debug, Clone)]
pub struct Challenge {
    /// The `DPoP-Nonce` value.
    pub nonce: String,
    /// When it stops being accepted.
    pub expires_at: SystemTime,
}

/// An accepted confirmation.
#[derive(Debug, Clone)]
pub struct Confirmation {
    /// UUID v7 confirmation id.
    pub id: Uuid,
    /// The device key thumbprint.
    pub jkt: String,
    /// The confirmations this one continues, when it follows a redirect.
    pub chain: Option<Chain>,
    /// Where the session's binding was made (first confirmation), when the client address is known.
    pub origin: Option<Origin>,
    /// Where the device's trust came from: `first_use`, `cnf` (a DPoP-bound token), or the
    /// registry entry's source (`operator`, `invite`, `device:<jkt>`); `None` when no device
    /// check applied (an invite redemption, where the key is the one being enrolled).
    pub enrolment: Option<String>,
    /// Whether the proof signed its action (`cs_ach`): its response carries the session's next
    /// open nonce, so the client's next confirmation needs no challenge.
    pub next_nonce: bool,
}

/// Which device keys a decision accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeviceCheck {
    /// The session's device, as `session.binding` says: its first-use key (or `cnf.jkt`), or a
    /// key enrolled for its subject.
    Session,
    /// A key enrolled for the session's subject, whatever `session.binding` says (a device
    /// enrolling another one).
    Enrolled,
    /// Any key, bound to nothing (an invite redemption: the key is the one being enrolled).
    Any,
}

/// The decision for one high-impact request.
#[derive(Debug)]
pub enum Outcome {
    /// Confirmed: forward it.
    Accepted(Confirmation),
    /// No proof at all: here is a nonce to sign.
    Challenged(Challenge),
    /// Refused; a fresh nonce comes with every 401 of a valid session.
    Rejected {
        /// Why.
        reason: Reason,
        /// The device the proof named, when it got that far.
        device: Option<String>,
        /// A fresh nonce for this action, when one may be issued.
        challenge: Option<Challenge>,
    },
}

/// One high-impact request, as the decision needs it.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    /// Method of the request line (the proof's `htm`).
    pub method: &'a str,
    /// Methods it stands for through overrides, comma-joined (bound by the nonce).
    pub overrides: &'a str,
    /// Request target in origin-form, query included.
    pub target: &'a str,
    /// The normalised external URI (`htu::normalize`), or `None` when it cannot be formed.
    pub htu: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// SHA-256 of the body.
    pub body_sha256: &'a [u8; 32],
    /// The client address, whose network the binding records.
    pub client_ip: Option<IpAddr>,
}

/// Makes confirmation decisions.
pub struct Confirmer {
    store: Arc<dyn ReplayStore>,
    sessions: Sessions,
    config: ConfirmationConfig,
    binding_ttl: Duration,
    metrics: Arc<Metrics>,
    binding: DeviceBinding,
    devices: Registry,
    /// Challenges outstanding per session and per client network.
    quotas: Quotas,
}

impl Confirmer {
    /// A confirmer over a store and a session reader.
    pub fn new(
        store: Arc<dyn ReplayStore>,
        sessions: Sessions,
        config: ConfirmationConfig,
        binding_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Confirmer {
        let quotas = Quotas::new(
            store.clone(),
            "quota-nonce",
            config.max_outstanding_per_session,
            config.max_outstanding_per_ip,
            config.nonce_ttl,
        );
        Confirmer {
            quotas,
            devices: Registry::new(store.clone(), usize::MAX),
            binding: DeviceBinding::FirstUse,
            store,
            sessions,
            config,
            binding_ttl,
            metrics,
        }
    }

    /// The same confirmer with `session.binding` and its registry bound (`session.max_devices`).
    pub fn with_devices(mut self, binding: DeviceBinding, max_devices: usize) -> Confirmer {
        self.binding = binding;
        self.devices = Registry::new(self.store.clone(), max_devices);
        self
    }

    /// The registry of enrolled devices.
    pub(crate) fn devices(&self) -> &Registry {
        &self.devices
    }

    /// `session.binding`.
    pub fn binding(&self) -> DeviceBinding {
        self.binding
    }

    /// The store, for readiness checks.
    pub fn store(&self) -> &Arc<dyn ReplayStore> {
        &self.store
    }

    /// The session reader.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Binds a rotated session id to the device that confirmed the request whose response
    /// rotated it.
    pub async fn carry_binding(&self, session_id: &str, jkt: &str) -> Result<(), Reason> {
        let key = binding_key(session_id);
        match self.store_call(self.store.bind_device(&key, jkt, self.binding_ttl).await) {
            Ok(Bind::New | Bind::Same) => Ok(()),
            Ok(Bind::Other) => Err(Reason::DeviceMismatch),
            Err(refusal) => Err(refusal.reason()),
        }
    }

    /// The accepted algorithms.
    pub fn algs(&self) -> &[ProofAlg] {
        &self.config.algs
    }

    /// Identifies the session; the first check of every high-impact request.
    pub fn session(&self, headers: &HeaderMap, trusted_peer: bool) -> Result<Session, Reason> {
        self.sessions
            .read(headers, trusted_peer)
            .map_err(|e| match e {
                SessionError::Missing => Reason::NoSession,
                SessionError::Invalid => Reason::InvalidSession,
                SessionError::BearerNotAllowed => Reason::BearerNotAllowed,
                // RFC 9449 §7.2: a DPoP-bound token must not be downgraded to Bearer.
                SessionError::Downgrade if headers.contains_key("dpop") => Reason::MixedSchemes,
                SessionError::Downgrade => Reason::InvalidSession,
            })
    }

    /// Decides a high-impact request of a known session.
    pub async fn decide(&self, session: &Session, ex: &Exchange<'_>) -> Outcome {
        self.decide_with(session, ex, DeviceCheck::Session).await
    }

    /// Decides a confirmation whose device is checked as `check` says.
    pub(crate) async fn decide_with(
        &self,
        session: &Session,
        ex: &Exchange<'_>,
        check: DeviceCheck,
    ) -> Outcome {
        let action = Action {
            session_id: &session.id,
            method: ex.method,
            overrides: ex.overrides,
            target: ex.target,
            body_sha256: ex.body_sha256,
        };
        match self.revoked(session, None).await {
            Ok(false) => {}
            Ok(true) => return rejected(Reason::SessionRevoked, None, None),
            Err(refusal) => return rejected(refusal.reason(), None, None),
        }
        // No enrolled device can confirm for nobody: refused before any nonce is issued.
        if self.uses_registry(check) && session.subject.is_none() {
            return rejected(Reason::NoSubject, None, None);
        }
        match self.check(session, ex, &action, check).await {
            Ok(confirmation) => Outcome::Accepted(confirmation),
            Err(Refusal::NoProof) => {
                match self.challenge(session, &action, check, ex.client_ip).await {
                    Ok(challenge) => Outcome::Challenged(challenge),
                    Err(reason) => rejected(reason, None, None),
                }
            }
            Err(Refusal::Reason(reason, device)) if reason.status() == 401 => {
                match self.challenge(session, &action, check, ex.client_ip).await {
                    Ok(challenge) => rejected(reason, device, Some(challenge)),
                    Err(store_reason) => rejected(store_reason, device, None),
                }
            }
            Err(Refusal::Reason(reason, device)) => rejected(reason, device, None),
        }
    }

    /// Whether `check` looks devices up in the subject's registry.
    fn uses_registry(&self, check: DeviceCheck) -> bool {
        match check {
            DeviceCheck::Session => self.binding == DeviceBinding::Enrolled,
            DeviceCheck::Enrolled => true,
            DeviceCheck::Any => false,
        }
    }

    /// Whether `check` binds a session's first key to it.
    fn first_use(&self, check: DeviceCheck) -> bool {
        check == DeviceCheck::Session && self.binding == DeviceBinding::FirstUse
    }

    /// How long a first-use binding of `session` lasts: as long as the session it binds, i.e.
    /// until a token's `exp`, else `session.binding_ttl`.
    fn binding_lifetime(&self, session: &Session) -> Duration {
        let exp = session
            .claims
            .as_deref()
            .and_then(|c| c.get("exp"))
            .and_then(serde_json::Value::as_i64);
        match exp {
            Some(exp) => Duration::from_secs(
                exp.saturating_sub(crate::clock::now_secs() as i64).max(1) as u64,
            ),
            None => self.binding_ttl,
        }
    }

    async fn check(
        &self,
        session: &Session,
        ex: &Exchange<'_>,
        action: &Action<'_>,
        check: DeviceCheck,
    ) -> Result<Confirmation, Refusal> {
        let proofs: Vec<&[u8]> = ex
            .headers
            .get_all("dpop")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        if proofs.is_empty() {
            return Err(Refusal::NoProof);
        }
        let started = Instant::now();
        let verified = proof::verify(
            &proofs,
            &ProofCheck {
                algs: &self.config.algs,
                method: ex.method,
                htu: ex.htu.unwrap_or(""),
                now: crate::clock::now_secs() as i64,
                max_age: self.config.proof_max_age,
                clock_skew: self.config.clock_skew,
            },
        );
        self.metrics
            .proof_verify
            .observe(started.elapsed().as_secs_f64());
        let proof = verified.map_err(|r| Refusal::Reason(r, None))?;
        let fail = |reason| Refusal::Reason(reason, Some(proof.jkt.clone()));

        if !bool::from(proof.ath.as_bytes().ct_eq(session.ath.as_bytes())) {
            return Err(fail(Reason::SessionMismatch));
        }
        let session_key = binding_key(&session.id);
        // A DPoP-bound token names its key whatever else applies (RFC 9449 §6).
        let bound = match (&session.cnf_jkt, self.first_use(check)) {
            (Some(jkt), _) => Some(jkt.clone()),
            (None, true) => self.store_call(self.store.device(&session_key).await)?,
            (None, false) => None,
        };
        if bound.as_deref().is_some_and(|b| b != proof.jkt) {
            return Err(fail(Reason::DeviceMismatch));
        }
        let enrolment = if self.uses_registry(check) {
            // Read from the shared store on every confirmation: a removal holds on every
            // replica from the next request on.
            let Some(subject) = session.subject.as_deref() else {
                return Err(fail(Reason::NoSubject));
            };
            let entry = self.store_call(self.devices.entry(subject, &proof.jkt).await)?;
            match entry {
                Some(entry) => Some(entry.by),
                None => return Err(fail(Reason::DeviceNotEnrolled)),
            }
        } else if check == DeviceCheck::Any {
            None
        } else if session.cnf_jkt.is_some() {
            Some("cnf".to_string())
        } else {
            Some("first_use".to_string())
        };
        let Some(presented) = proof.nonce.as_deref() else {
            return Err(fail(Reason::NonceMissing));
        };
        // One round trip (docs/protocol.md): a proof that signs its action (`cs_ach`) may answer
        // the session's open nonce as well as one bound to this action.
        let signs_action = match (proof.action_hash.as_deref(), action.hash()) {
            (Some(claimed), Some(expected)) => {
                if !bool::from(claimed.as_bytes().ct_eq(expected.as_bytes())) {
                    return Err(fail(Reason::ActionMismatch));
                }
                true
            }
            _ => false,
        };
        let nonce_key = nonce::key(presented);
        let take = |binding: [u8; 32]| {
            let (store, key, jkt) = (&self.store, &nonce_key, &proof.jkt);
            async move { store.take_nonce(key, &binding, jkt).await }
        };
        let mut open = signs_action;
        let mut taken = if open {
            self.store_call(take(nonce::Action::open(&session.id)).await)?
        } else {
            self.store_call(take(action.binding()).await)?
        };
        if open && matches!(taken, Take::Mismatch) {
            open = false;
            taken = self.store_call(take(action.binding()).await)?;
        }
        let chain = match taken {
            Take::Consumed(chain) => {
                // A challenge's slots are free again; a continuation nonce (one with a chain)
                // and an open one took none.
                if chain.is_none() && !open {
                    self.quotas.give(&session.id, ex.client_ip).await;
                }
                chain
            }
            Take::Unknown => return Err(fail(Reason::NonceExpired)),
            Take::Used => return Err(fail(Reason::NonceReplay)),
            Take::Mismatch => return Err(fail(Reason::ActionMismatch)),
        };
        let jti_window = self.config.proof_max_age + self.config.clock_skew;
        let jti_key = store::key("jti", &[proof.jkt.as_bytes(), proof.jti.as_bytes()]);
        if !self.store_call(self.store.claim_jti(&jti_key, jti_window).await)? {
            return Err(fail(Reason::JtiReplay));
        }
        if bound.is_none() && self.first_use(check) {
            let lifetime = self.binding_lifetime(session);
            let bind = self.store_call(
                self.store
                    .bind_device(&session_key, &proof.jkt, lifetime)
                    .await,
            )?;
            // Another device won a concurrent first use.
            if bind == Bind::Other {
                return Err(fail(Reason::DeviceMismatch));
            }
        }
        let origin = self.origin(session, ex.client_ip).await?;
        if let Some(origin) = &origin {
            if self.revoked(session, Some(origin.since)).await? {
                return Err(fail(Reason::SessionRevoked));
            }
        }
        Ok(Confirmation {
            id: Uuid::now_v7(),
            jkt: proof.jkt,
            chain,
            origin,
            enrolment,
            next_nonce: signs_action,
        })
    }

    /// The checks of a confirmation that does not pass [`Confirmer::decide`] (a passkey
    /// confirmation resumed in the browser): the session's binding origin, recorded on its first
    /// confirmation from `client_ip`, for live risk; refused when the session was revoked.
    pub async fn passkey_origin(
        &self,
        session: &Session,
        client_ip: Option<IpAddr>,
    ) -> Result<Option<Origin>, Reason> {
        let origin = self
            .origin(session, client_ip)
            .await
            .map_err(Refusal::reason)?;
        match self
            .revoked(session, origin.as_ref().map(|o| o.since))
            .await
        {
            Ok(false) => Ok(origin),
            Ok(true) => Err(Reason::SessionRevoked),
            Err(refusal) => Err(refusal.reason()),
        }
    }

    /// Where the session's binding was made: recorded on its first confirmation (the first one
    /// wins), read on every later one.
    async fn origin(
        &self,
        session: &Session,
        client_ip: Option<IpAddr>,
    ) -> Result<Option<Origin>, Refusal> {
        let Some(ip) = client_ip else {
            return Ok(None);
        };
        let (network, since) = self.store_call(
            self.store
                .record_origin(
                    &store::key("origin", &[session.id.as_bytes()]),
                    &policy::network(ip),
                    crate::clock::now_secs(),
                    self.binding_ttl,
                )
                .await,
        )?;
        Ok(Some(Origin { network, since }))
    }

    /// Whether the session, or its subject since before the session started, was revoked. The
    /// session starts at its token's `iat`, else at `since` (its first confirmation); a subject
    /// mark on a session with neither is decided once `since` is known.
    async fn revoked(&self, session: &Session, since: Option<u64>) -> Result<bool, Refusal> {
        let marked =
            self.store_call(self.store.revoked(&session_mark(&session.id_hash())).await)?;
        if marked.is_some() {
            return Ok(true);
        }
        let Some(subject) = &session.subject else {
            return Ok(false);
        };
        let Some(at) = self.store_call(self.store.revoked(&subject_mark(subject)).await)? else {
            return Ok(false);
        };
        let iat = session
            .claims
            .as_deref()
            .and_then(|c| c.get("iat"))
            .and_then(serde_json::Value::as_i64)
            .map(|t| t.max(0) as u64);
        Ok(iat.or(since).is_some_and(|started| started <= at))
    }

    /// Revokes every binding of a session (by the hash audit records show) or of a subject, on
    /// the store every replica shares; marks last `binding_ttl`.
    pub async fn revoke(&self, mark: &store::Key) -> Result<(), StoreError> {
        self.store
            .revoke(mark, crate::clock::now_secs(), self.binding_ttl)
            .await
    }

    /// A fresh nonce for the action of `ex`, for a 401 that follows an accepted confirmation
    /// (an RFC 9470 step-up): every 401 of a valid session carries one.
    pub async fn fresh_challenge(
        &self,
        session: &Session,
        ex: &Exchange<'_>,
    ) -> Result<Challenge, Reason> {
        let action = Action {
            session_id: &session.id,
            method: ex.method,
            overrides: ex.overrides,
            target: ex.target,
            body_sha256: ex.body_sha256,
        };
        self.challenge(session, &action, DeviceCheck::Session, ex.client_ip)
            .await
    }

    /// Issues a nonce for `action`, bound to the session's device when it has one (its
    /// first-use key, or `cnf.jkt`; enrolled sessions may confirm from any enrolled device).
    async fn challenge(
        &self,
        session: &Session,
        action: &Action<'_>,
        check: DeviceCheck,
        client_ip: Option<IpAddr>,
    ) -> Result<Challenge, Reason> {
        let device = match &session.cnf_jkt {
            Some(jkt) => Some(jkt.clone()),
            _ if !self.first_use(check) => None,
            _ => self
                .store_call(self.store.device(&binding_key(&session.id)).await)
                .map_err(Refusal::reason)?,
        };
        match self.quotas.take(&session.id, client_ip).await {
            Ok(()) => {}
            Err(QuotaError::Full) => return Err(Reason::TooManyChallenges),
            Err(QuotaError::Store(e)) => return self.store_call(Err(e)).map_err(Refusal::reason),
        }
        let record = NonceRecord {
            action: action.binding(),
            device,
            chain: None,
        };
        let issued = self.issue(record, self.config.nonce_ttl).await;
        if issued.is_err() {
            self.quotas.give(&session.id, client_ip).await;
        }
        issued
    }

    /// Issues a continuation nonce after a confirmed request was redirected to another
    /// high-impact action: bound to the same session and device, the follow-up action, and the
    /// confirmation chain; valid `continuation_ttl`.
    pub async fn continuation(
        &self,
        confirmation: &Confirmation,
        follow_up: &Action<'_>,
    ) -> Result<Challenge, Reason> {
        let parent = confirmation.id.to_string();
        let root = confirmation
            .chain
            .as_ref()
            .map_or_else(|| parent.clone(), |c| c.root.clone());
        self.issue(
            NonceRecord {
                action: follow_up.binding(),
                device: Some(confirmation.jkt.clone()),
                chain: Some(Chain { root, parent }),
            },
            self.config.continuation_ttl,
        )
        .await
    }

    /// A nonce for any one action of the session, from the device that confirmed: the client's
    /// next proof binds the action itself (`cs_ach`).
    pub async fn open_nonce(
        &self,
        session_id: &str,
        confirmation: &Confirmation,
    ) -> Result<Challenge, Reason> {
        self.issue(
            NonceRecord {
                action: nonce::Action::open(session_id),
                device: Some(confirmation.jkt.clone()),
                chain: None,
            },
            self.config.nonce_ttl,
        )
        .await
    }

    async fn issue(&self, record: NonceRecord, ttl: Duration) -> Result<Challenge, Reason> {
        let value = nonce::fresh();
        self.store_call(self.store.put_nonce(&nonce::key(&value), record, ttl).await)
            .map_err(Refusal::reason)?;
        self.metrics
            .nonces_outstanding
            .set(self.store.outstanding_nonces() as i64);
        Ok(Challenge {
            nonce: value,
            expires_at: SystemTime::now() + ttl,
        })
    }

    fn store_call<T>(&self, result: Result<T, StoreError>) -> Result<T, Refusal> {
        result.map_err(|e| {
            self.metrics
                .store_errors
                .with_label_values(&[self.store.backend()])
                .inc();
            tracing::warn!(error = %e, "replay store failed; refusing high-impact request");
            Refusal::Reason(Reason::StoreUnavailable, None)
        })
    }
}

enum Refusal {
    NoProof,
    Reason(Reason, Option<String>),
}

impl Refusal {
    fn reason(self) -> Reason {
        match self {
            Refusal::NoProof => Reason::NonceMissing,
            Refusal::Reason(r, _) => r,
        }
    }
}

fn rejected(reason: Reason, device: Option<String>, challenge: Option<Challenge>) -> Outcome {
    Outcome::Rejected {
        reason,
        device,
        challenge,
    }
}

/// The revocation mark of a session, by its audit hash (first 16 hex of SHA-256 of its id).
pub fn session_mark(hash: &str) -> store::Key {
    store::key("revoked-session", &[hash.to_ascii_lowercase().as_bytes()])
}

/// The revocation mark of a subject.
pub fn subject_mark(subject: &str) -> store::Key {
    store::key("revoked-subject", &[subject.as_bytes()])
}

/// The store key of a session's device binding.
/// The store key of a session's device binding (a DPoP key or a passkey).
pub fn binding_key(session_id: &str) -> store::Key {
    store::key("binding", &[session_id.as_bytes()])
}
