//! The WebAuthn ceremony of a held action, through `webauthn-rs-core` (W3C Web Authentication
//! Level 3 §7): the challenge and its state live in the store under the hold, taken once; the first
//! passkey of a session binds to it like a first DPoP key, later ones must be that passkey.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use webauthn_rs_core::error::WebauthnError;
use webauthn_rs_core::proto::{
    AuthenticationState, Credential, PublicKeyCredential, RegisterPublicKeyCredential,
    RegistrationState, UserVerificationPolicy,
};
use webauthn_rs_core::WebauthnCore;

use crate::config::{BrowserConfig, DeviceBinding, UserVerification};
use crate::confirm::binding_key;
use crate::devices::{Registry, PASSKEY_PREFIX};
use crate::reason::Reason;
use crate::store::{self, Bind, Key, ReplayStore, Taken};

use super::hold::{self, Hold};

/// The binding prefix that marks a session's device as a passkey.
const PASSKEY_DEVICE: &str = "webauthn:";
/// How long the browser waits for the authenticator.
const AUTHENTICATOR_TIMEOUT: Duration = Duration::from_secs(60);

/// The confirmation origin cannot be used as a WebAuthn origin.
#[derive(Debug, thiserror::Error)]
#[error("browser.origin {0} is not a URL WebAuthn accepts")]
pub struct CeremonyError(String);

/// A ceremony under way, as stored.
#[derive(Serialize, Deserialize)]
enum Pending {
    Register(RegistrationState),
    Authenticate(AuthenticationState),
}

/// A finished ceremony.
pub struct Proven {
    /// base64url credential id.
    pub credential_id: String,
    /// Whether the authenticator verified the user.
    pub user_verified: bool,
    /// Where the passkey's trust came from: `first_use`, or its registry entry's source.
    pub enrolment: String,
}

/// Runs ceremonies for held actions.
pub struct Ceremonies {
    core: WebauthnCore,
    store: Arc<dyn ReplayStore>,
    binding_ttl: Duration,
    policy: UserVerificationPolicy,
    binding: DeviceBinding,
    devices: Registry,
}

/// Passkeys are stored under a random handle kept in the session's binding
/// (`webauthn:{credential id}.{handle}`): a session id the app rotates on a confirmed response
/// carries the binding, so it still finds its passkey, and a credential id (chosen by an
/// authenticator, so by anyone) can never reach another session's stored key.
fn passkey_key(handle: &str) -> Key {
    store::key("passkey", &[handle.as_bytes()])
}

/// The credential id and passkey handle of a session's binding, when it is a passkey.
fn passkey_binding(device: &str) -> Option<(&str, &str)> {
    device.strip_prefix(PASSKEY_DEVICE)?.split_once('.')
}

impl Ceremonies {
    /// Ceremonies for the configured relying party.
    pub fn new(
        config: &BrowserConfig,
        store: Arc<dyn ReplayStore>,
        binding_ttl: Duration,
        binding: DeviceBinding,
        devices: Registry,
    ) -> Result<Ceremonies, CeremonyError> {
        let origin = config.origin.origin();
        let url = url::Url::parse(&origin).map_err(|_| CeremonyError(origin.clone()))?;
        let core = WebauthnCore::new_unsafe_experts_only(
            "countersign",
            &config.rp_id,
            vec![url],
            AUTHENTICATOR_TIMEOUT,
            Some(false),
            Some(false),
        );
        Ok(Ceremonies {
            core,
            store,
            binding_ttl,
            binding,
            devices,
            policy: match config.user_verification {
                UserVerification::Required => UserVerificationPolicy::Required,
                UserVerification::Preferred => UserVerificationPolicy::Preferred,
            },
        })
    }

    /// Starts the ceremony of hold `id`: `get` for a session with a passkey, `create` for one with
    /// none. The options the browser gets.
    pub async fn begin(&self, id: &str, hold: &Hold, remaining: Duration) -> Result<Value, Reason> {
        if self.binding == DeviceBinding::Enrolled {
            return self.begin_enrolled(id, hold, remaining).await;
        }
        let device = self
            .store
            .device(&binding_key(&hold.session_id))
            .await
            .map_err(unavailable)?;
        let (answer, pending) = match device {
            None => {
                let user_id = rand::random::<[u8; 16]>();
                let builder = self
                    .core
                    .new_challenge_register_builder(
                        &user_id,
                        &format!("session {}", hold.session_hash),
                        "countersign session",
                    )
                    .map_err(refusal)?
                    .user_verification_policy(self.policy)
                    // Discoverable, so a later `get` names the passkey the person chose.
                    .require_resident_key(true);
                let (mut options, state) = self
                    .core
                    .generate_challenge_register(builder)
                    .map_err(refusal)?;
                // Ask for verification without letting the browser refuse on its own: the gateway
                // enforces the policy on the response, so a refusal is recorded with its reason.
                if let Some(selection) = options.public_key.authenticator_selection.as_mut() {
                    selection.user_verification = UserVerificationPolicy::Preferred;
                }
                (
                    json!({ "mode": "create", "options": options }),
                    Pending::Register(state),
                )
            }
            Some(device) if passkey_binding(&device).is_some() => {
                let builder = self
                    .core
                    .new_challenge_authenticate_builder(Vec::new(), Some(self.policy))
                    .map_err(refusal)?;
                let (mut options, state) = self
                    .core
                    .generate_challenge_authenticate(builder)
                    .map_err(refusal)?;
                options.public_key.user_verification = UserVerificationPolicy::Preferred;
                options.mediation = None;
                (
                    json!({ "mode": "get", "options": options }),
                    Pending::Authenticate(state),
                )
            }
            // Bound to a DPoP key: that device confirms, not a passkey.
            Some(_) => return Err(Reason::DeviceMismatch),
        };
        self.keep(id, &pending, remaining).await?;
        Ok(answer)
    }

    /// `session.binding: enrolled`: `get`, offering only the passkeys enrolled for the held
    /// session's subject; nothing new binds here.
    async fn begin_enrolled(
        &self,
        id: &str,
        hold: &Hold,
        remaining: Duration,
    ) -> Result<Value, Reason> {
        let subject = hold.subject.as_deref().ok_or(Reason::NoSubject)?;
        let (options, state) = self.challenge_enrolled(subject).await?;
        self.keep(id, &Pending::Authenticate(state), remaining)
            .await?;
        Ok(options)
    }

    /// A `get` offering only the passkeys enrolled for `subject`: the options the browser gets
    /// and the state that verifies its answer ([`Ceremonies::assert_enrolled`]).
    pub(super) async fn challenge_enrolled(
        &self,
        subject: &str,
    ) -> Result<(Value, AuthenticationState), Reason> {
        let enrolled = self.enrolled_passkeys(subject).await?;
        if enrolled.is_empty() {
            return Err(Reason::DeviceNotEnrolled);
        }
        let builder = self
            .core
            .new_challenge_authenticate_builder(enrolled, Some(self.policy))
            .map_err(refusal)?;
        let (mut options, state) = self
            .core
            .generate_challenge_authenticate(builder)
            .map_err(refusal)?;
        options.public_key.user_verification = UserVerificationPolicy::Preferred;
        options.mediation = None;
        Ok((json!({ "mode": "get", "options": options }), state))
    }

    /// A `create` of a new passkey for `subject`, excluding the authenticators of the passkeys
    /// already enrolled for it: the options the browser gets and the state that verifies its
    /// answer ([`Ceremonies::register`]).
    pub(super) async fn challenge_register(
        &self,
        subject: &str,
    ) -> Result<(Value, RegistrationState), Reason> {
        let enrolled = self.enrolled_passkeys(subject).await?;
        let exclude = enrolled.into_iter().map(|c| c.cred_id).collect();
        // A random user handle: the authenticator learns the subject's name, not a stable id.
        let user_id = rand::random::<[u8; 16]>();
        let builder = self
            .core
            .new_challenge_register_builder(&user_id, subject, subject)
            .map_err(refusal)?
            .user_verification_policy(self.policy)
            .exclude_credentials(Some(exclude));
        let (mut options, state) = self
            .core
            .generate_challenge_register(builder)
            .map_err(refusal)?;
        // As for a first passkey: the gateway enforces the policy on the response.
        if let Some(selection) = options.public_key.authenticator_selection.as_mut() {
            selection.user_verification = UserVerificationPolicy::Preferred;
        }
        Ok((json!({ "mode": "create", "options": options }), state))
    }

    /// Verifies a `create` answer: the new credential (public key, counter, whether the user was
    /// verified), or the refusal, naming the credential when known.
    pub(super) fn register(
        &self,
        state: &RegistrationState,
        body: &[u8],
    ) -> Result<Credential, (Reason, Option<String>)> {
        let response: RegisterPublicKeyCredential =
            serde_json::from_slice(body).map_err(|_| (Reason::Malformed, None))?;
        let named = Some(URL_SAFE_NO_PAD.encode(response.raw_id.as_ref()));
        self.core
            .register_credential(&response, state, None)
            .map_err(|e| (refusal(e), named))
    }

    /// The registry passkeys are enrolled in.
    pub(super) fn devices(&self) -> &Registry {
        &self.devices
    }

    /// The passkeys enrolled for `subject`.
    async fn enrolled_passkeys(&self, subject: &str) -> Result<Vec<Credential>, Reason> {
        let listed = self.devices.list(subject).await.map_err(unavailable)?;
        Ok(listed
            .into_iter()
            .filter(|(device, _)| device.starts_with(PASSKEY_PREFIX))
            .filter_map(|(_, entry)| serde_json::from_value(entry.passkey?).ok())
            .collect())
    }

    async fn keep(&self, id: &str, pending: &Pending, remaining: Duration) -> Result<(), Reason> {
        let wire = serde_json::to_vec(pending).map_err(|_| Reason::StoreUnavailable)?;
        self.store
            .put_record(&hold::key("ceremony", id), wire, remaining)
            .await
            .map_err(unavailable)
    }

    /// Verifies the browser's answer for hold `id`; the refusal names the credential when known.
    pub async fn finish(
        &self,
        id: &str,
        hold: &Hold,
        body: &[u8],
    ) -> Result<Proven, (Reason, Option<String>)> {
        let pending = match self.store.take_record(&hold::key("ceremony", id)).await {
            Ok(Taken::Value(wire)) => serde_json::from_slice::<Pending>(&wire)
                .map_err(|_| (Reason::NonceExpired, None))?,
            Ok(Taken::Used) => return Err((Reason::NonceReplay, None)),
            Ok(Taken::Unknown) => return Err((Reason::NonceExpired, None)),
            Err(e) => return Err((unavailable(e), None)),
        };
        let session = binding_key(&hold.session_id);
        if self.binding == DeviceBinding::Enrolled {
            let Pending::Authenticate(state) = pending else {
                return Err((Reason::DeviceNotEnrolled, None));
            };
            return self
                .assert_enrolled(hold.subject.as_deref(), state, body)
                .await;
        }
        match pending {
            Pending::Register(state) => {
                let credential = self.register(&state, body)?;
                let credential_id = URL_SAFE_NO_PAD.encode(credential.cred_id.as_ref());
                let handle = super::hold::fresh_id();
                let device = format!("{PASSKEY_DEVICE}{credential_id}.{handle}");
                let named = Some(credential_id.clone());
                match self
                    .store
                    .bind_device(&session, &device, self.binding_ttl)
                    .await
                {
                    Ok(Bind::New | Bind::Same) => {}
                    Ok(Bind::Other) => return Err((Reason::DeviceMismatch, named)),
                    Err(e) => return Err((unavailable(e), named)),
                }
                self.save(&handle, &credential)
                    .await
                    .map_err(|r| (r, named))?;
                Ok(Proven {
                    credential_id,
                    user_verified: credential.user_verified,
                    enrolment: "first_use".to_string(),
                })
            }
            Pending::Authenticate(mut state) => {
                let response: PublicKeyCredential =
                    serde_json::from_slice(body).map_err(|_| (Reason::Malformed, None))?;
                let credential_id = URL_SAFE_NO_PAD.encode(response.get_credential_id());
                let named = Some(credential_id.clone());
                let bound = self
                    .store
                    .device(&session)
                    .await
                    .map_err(|e| (unavailable(e), None))?;
                let Some((bound_id, handle)) = bound.as_deref().and_then(passkey_binding) else {
                    return Err((Reason::DeviceMismatch, named));
                };
                let same =
                    subtle::ConstantTimeEq::ct_eq(bound_id.as_bytes(), credential_id.as_bytes());
                if !bool::from(same) {
                    return Err((Reason::DeviceMismatch, named));
                }
                let handle = handle.to_string();
                let mut credential = self
                    .load(&handle)
                    .await
                    .map_err(|r| (r, named.clone()))?
                    .ok_or((Reason::DeviceMismatch, named.clone()))?;
                state.set_allowed_credentials(vec![credential.clone()]);
                let result = self
                    .core
                    .authenticate_credential(&response, &state)
                    .map_err(|e| (refusal(e), named.clone()))?;
                if result.needs_update() {
                    credential.counter = result.counter();
                    self.save(&handle, &credential)
                        .await
                        .map_err(|r| (r, named))?;
                }
                Ok(Proven {
                    credential_id,
                    user_verified: result.user_verified(),
                    enrolment: "first_use".to_string(),
                })
            }
        }
    }

    /// The assertion's passkey must be enrolled for `subject` (the held session's, with
    /// `session.binding: enrolled`, or the one an enrolment is vouched for), read from the
    /// registry now (a removed passkey confirms nothing).
    pub(super) async fn assert_enrolled(
        &self,
        subject: Option<&str>,
        mut state: AuthenticationState,
        body: &[u8],
    ) -> Result<Proven, (Reason, Option<String>)> {
        let response: PublicKeyCredential =
            serde_json::from_slice(body).map_err(|_| (Reason::Malformed, None))?;
        let credential_id = URL_SAFE_NO_PAD.encode(response.get_credential_id());
        let named = Some(credential_id.clone());
        let subject = subject.ok_or((Reason::NoSubject, None))?;
        let device = format!("{PASSKEY_PREFIX}{credential_id}");
        let entry = self
            .devices
            .entry(subject, &device)
            .await
            .map_err(|e| (unavailable(e), named.clone()))?;
        let Some(mut entry) = entry else {
            return Err((Reason::DeviceNotEnrolled, named));
        };
        let mut credential: Credential = entry
            .passkey
            .clone()
            .and_then(|p| serde_json::from_value(p).ok())
            .ok_or((Reason::DeviceNotEnrolled, named.clone()))?;
        state.set_allowed_credentials(vec![credential.clone()]);
        let result = self
            .core
            .authenticate_credential(&response, &state)
            .map_err(|e| (refusal(e), named.clone()))?;
        if result.needs_update() {
            credential.counter = result.counter();
            entry.passkey = serde_json::to_value(&credential).ok();
            let updated = self
                .devices
                .update(subject, &device, &entry)
                .await
                .map_err(|e| (unavailable(e), named.clone()))?;
            if !updated {
                // Removed while the ceremony ran.
                return Err((Reason::DeviceNotEnrolled, named));
            }
        }
        Ok(Proven {
            credential_id,
            user_verified: result.user_verified(),
            enrolment: entry.by,
        })
    }

    async fn save(&self, handle: &str, credential: &Credential) -> Result<(), Reason> {
        let wire = serde_json::to_vec(credential).map_err(|_| Reason::StoreUnavailable)?;
        self.store
            .put_record(&passkey_key(handle), wire, self.binding_ttl)
            .await
            .map_err(unavailable)
    }

    async fn load(&self, handle: &str) -> Result<Option<Credential>, Reason> {
        let wire = self
            .store
            .get_record(&passkey_key(handle))
            .await
            .map_err(unavailable)?;
        Ok(wire.and_then(|w| serde_json::from_slice(&w).ok()))
    }
}

pub(super) fn unavailable(e: store::StoreError) -> Reason {
    tracing::warn!(error = %e, "browser confirmation store call failed");
    Reason::StoreUnavailable
}

/// The reason a WebAuthn verification failed with.
fn refusal(e: WebauthnError) -> Reason {
    match e {
        WebauthnError::UserNotVerified => Reason::UserVerificationRequired,
        // A counter that did not move forward: a cloned authenticator (W3C WebAuthn §6.1.1).
        WebauthnError::CredentialPossibleCompromise => Reason::DeviceMismatch,
        WebauthnError::InvalidRPOrigin | WebauthnError::InvalidRPIDHash => Reason::HtuMismatch,
        WebauthnError::MismatchedChallenge => Reason::ActionMismatch,
        other => {
            tracing::info!(error = %other, "passkey response refused");
            Reason::BadSignature
        }
    }
}
