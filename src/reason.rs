//! Why a request was refused. One enum, so the response, the audit record and the metric label
//! can never disagree: `as_str()` is the reason string of docs/protocol.md ("Checks and reasons").

/// A refusal, in the order the checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The request target or `Host` has no single reading (400, before routing).
    InvalidTarget,
    /// A protocol upgrade outside a route made for WebSockets (400).
    UpgradeRefused,
    /// The body needed for routing is larger than `confirmation.max_body` (413).
    BodyTooLargeToRoute,
    /// The body did not arrive within the body read timeout (408).
    BodyTimeout,
    /// Observe mode only: the request carried no confirmation at all.
    Unconfirmed,
    /// No session credential on the request.
    NoSession,
    /// The session credential is invalid or expired, or a DPoP-bound token came as `Bearer`.
    InvalidSession,
    /// A token came as `Bearer` while `session.allow_bearer_scheme` is false.
    BearerNotAllowed,
    /// Body larger than `confirmation.max_body`.
    BodyTooLarge,
    /// More than one `DPoP` header, not a compact JWS, bad base64/JSON, or mixed schemes.
    Malformed,
    /// `Authorization: Bearer` with a DPoP proof for a DPoP-bound token (400 `invalid_request`).
    MixedSchemes,
    /// `typ` is not `dpop+jwt`.
    BadTyp,
    /// `alg` not allowed (never `none`, never HMAC), or not matching the key type.
    BadAlg,
    /// `jwk` missing, not a public key, or another key-finding header used.
    BadJwk,
    /// The signature does not verify with the embedded `jwk`.
    BadSignature,
    /// A required claim is missing or of the wrong type; `jti` too long.
    MissingClaim,
    /// `ath` is missing or not a string: the proof is not bound to the session credential.
    AthMissing,
    /// `htm` differs from the request method.
    HtmMismatch,
    /// `htu` differs from the external URI.
    HtuMismatch,
    /// `iat` outside the accepted window.
    StaleProof,
    /// `ath` differs from the hash of this request's session credential.
    SessionMismatch,
    /// The proof key is not the one bound to the session.
    DeviceMismatch,
    /// `session.binding: enrolled` and the session names no subject to look devices up for.
    NoSubject,
    /// `session.binding: enrolled` and the key (or passkey) is not enrolled for the subject.
    DeviceNotEnrolled,
    /// An enrolment request whose body is not `{"code": ...}` or `{"jkt": ...}`.
    EnrolmentMalformed,
    /// An invite code that is unknown, expired, or for another subject.
    InviteInvalid,
    /// An invite code that was already redeemed.
    InviteUsed,
    /// The subject already has `session.max_devices` devices enrolled.
    TooManyDevices,
    /// The session or the client network holds as many unconsumed challenges as its quota
    /// (`confirmation.max_outstanding_per_session`, `max_outstanding_per_ip`) allows.
    TooManyChallenges,
    /// The proof carries no `nonce`.
    NonceMissing,
    /// The nonce is unknown or expired.
    NonceExpired,
    /// The nonce was already consumed.
    NonceReplay,
    /// The nonce was issued for another session, device or action.
    ActionMismatch,
    /// The `jti` was already seen within the window.
    JtiReplay,
    /// A browser confirmation's passkey did not verify the user, and verification is required.
    UserVerificationRequired,
    /// The person cancelled a browser confirmation.
    Cancelled,
    /// The replay store could not answer: fail closed.
    StoreUnavailable,
    /// The `accepted` audit record could not be written: fail closed.
    AuditUnavailable,
    /// The session was revoked (`countersign sessions revoke`).
    SessionRevoked,
    /// RFC 9470: the authentication behind the session is not strong or recent enough.
    StepUpRequired,
    /// A network change the risk settings refuse.
    RiskDenied,
    /// The Cedar policy denied the action.
    PolicyDenied,
    /// The Cedar policy could not be evaluated: fail closed.
    PolicyError,
    /// No approval has this id (never requested, or forgotten after its ttl).
    ApprovalUnknown,
    /// The approver is neither a listed subject nor in a listed group.
    NotAnApprover,
    /// The requester's own subject or device tried to approve.
    SelfApproval,
    /// A vote on an approval that is no longer pending (approved, denied or executed).
    ApprovalClosed,
    /// An execution before the quorum approved.
    ApprovalPending,
    /// An execution of a denied approval.
    ApprovalDenied,
    /// The approval's ttl passed.
    ApprovalExpired,
    /// The approval was executed already.
    ApprovalExecuted,
    /// An execution whose action (route, method, target, body) is not the approved one.
    ApprovalActionMismatch,
    /// An execution from another session than the requester's.
    ApprovalSessionMismatch,
    /// An execution confirmed by another device than the requester's.
    ApprovalDeviceMismatch,
}

impl Reason {
    /// The contract's reason string, used in audit records and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidTarget => "invalid_target",
            Reason::UpgradeRefused => "upgrade_refused",
            Reason::BodyTimeout => "body_timeout",
            Reason::Unconfirmed => "unconfirmed",
            Reason::NoSession => "no_session",
            Reason::InvalidSession | Reason::BearerNotAllowed => "invalid_session",
            Reason::BodyTooLarge | Reason::BodyTooLargeToRoute => "body_too_large",
            Reason::Malformed | Reason::MixedSchemes => "malformed",
            Reason::BadTyp => "bad_typ",
            Reason::BadAlg => "bad_alg",
            Reason::BadJwk => "bad_jwk",
            Reason::BadSignature => "bad_signature",
            Reason::MissingClaim | Reason::AthMissing => "missing_claim",
            Reason::HtmMismatch => "htm_mismatch",
            Reason::HtuMismatch => "htu_mismatch",
            Reason::StaleProof => "stale_proof",
            Reason::SessionMismatch => "session_mismatch",
            Reason::DeviceMismatch => "device_mismatch",
            Reason::NoSubject => "no_subject",
            Reason::DeviceNotEnrolled => "device_not_enrolled",
            Reason::EnrolmentMalformed => "malformed",
            Reason::InviteInvalid => "invite_invalid",
            Reason::InviteUsed => "replay",
            Reason::TooManyDevices => "too_many_devices",
            Reason::TooManyChallenges => "too_many_challenges",
            Reason::NonceMissing => "nonce_missing",
            Reason::NonceExpired => "nonce_expired",
            Reason::NonceReplay | Reason::JtiReplay => "replay",
            Reason::ActionMismatch => "action_mismatch",
            Reason::UserVerificationRequired => "user_verification_required",
            Reason::Cancelled => "cancelled",
            Reason::StoreUnavailable => "store_unavailable",
            Reason::AuditUnavailable => "audit_unavailable",
            Reason::SessionRevoked => "session_revoked",
            Reason::StepUpRequired => "step_up_required",
            Reason::RiskDenied => "risk_denied",
            Reason::PolicyDenied => "policy_denied",
            Reason::PolicyError => "policy_error",
            Reason::ApprovalUnknown => "approval_unknown",
            Reason::NotAnApprover => "not_an_approver",
            Reason::SelfApproval => "self_approval",
            Reason::ApprovalClosed => "approval_closed",
            Reason::ApprovalPending => "approval_pending",
            Reason::ApprovalDenied => "approval_denied",
            Reason::ApprovalExpired => "approval_expired",
            Reason::ApprovalExecuted => "approval_executed",
            Reason::ApprovalActionMismatch => "action_mismatch",
            Reason::ApprovalSessionMismatch => "requester_session_mismatch",
            Reason::ApprovalDeviceMismatch => "requester_device_mismatch",
        }
    }

    /// The `error` code of the response (and of `WWW-Authenticate` for 401s).
    pub fn error_code(self) -> &'static str {
        match self {
            Reason::NoSession
            | Reason::InvalidSession
            | Reason::BearerNotAllowed
            | Reason::SessionRevoked => "invalid_token",
            Reason::StepUpRequired => "insufficient_user_authentication",
            Reason::RiskDenied
            | Reason::PolicyDenied
            | Reason::NoSubject
            | Reason::InviteInvalid
            | Reason::InviteUsed
            | Reason::NotAnApprover
            | Reason::SelfApproval
            | Reason::ApprovalDenied
            | Reason::ApprovalExpired
            | Reason::ApprovalActionMismatch
            | Reason::ApprovalSessionMismatch
            | Reason::ApprovalDeviceMismatch => "forbidden",
            Reason::ApprovalUnknown => "not_found",
            Reason::ApprovalClosed | Reason::ApprovalPending | Reason::ApprovalExecuted => {
                "conflict"
            }
            Reason::EnrolmentMalformed | Reason::TooManyDevices => "invalid_request",
            Reason::TooManyChallenges => "too_many_requests",
            Reason::InvalidTarget
            | Reason::UpgradeRefused
            | Reason::BodyTooLarge
            | Reason::BodyTooLargeToRoute
            | Reason::MixedSchemes => "invalid_request",
            Reason::BodyTimeout => "request_timeout",
            Reason::Unconfirmed => "use_dpop_nonce",
            Reason::NonceMissing
            | Reason::NonceExpired
            | Reason::NonceReplay
            | Reason::ActionMismatch => "use_dpop_nonce",
            Reason::StoreUnavailable | Reason::AuditUnavailable | Reason::PolicyError => {
                "temporarily_unavailable"
            }
            _ => "invalid_dpop_proof",
        }
    }

    /// The HTTP status of the refusal.
    pub fn status(self) -> u16 {
        match self {
            Reason::BodyTooLarge | Reason::BodyTooLargeToRoute => 413,
            Reason::MixedSchemes | Reason::InvalidTarget | Reason::UpgradeRefused => 400,
            Reason::BodyTimeout => 408,
            Reason::StoreUnavailable | Reason::AuditUnavailable | Reason::PolicyError => 503,
            Reason::RiskDenied
            | Reason::PolicyDenied
            | Reason::NoSubject
            | Reason::InviteInvalid
            | Reason::InviteUsed
            | Reason::NotAnApprover
            | Reason::SelfApproval
            | Reason::ApprovalDenied
            | Reason::ApprovalExpired
            | Reason::ApprovalActionMismatch
            | Reason::ApprovalSessionMismatch
            | Reason::ApprovalDeviceMismatch => 403,
            Reason::ApprovalUnknown => 404,
            Reason::ApprovalClosed | Reason::ApprovalPending | Reason::ApprovalExecuted => 409,
            Reason::EnrolmentMalformed => 400,
            Reason::TooManyDevices => 409,
            Reason::TooManyChallenges => 429,
            _ => 401,
        }
    }

    /// Whether the connection cannot carry another request after this refusal: the rest of the
    /// body was never read, or the request has no single reading.
    pub fn ends_connection(self) -> bool {
        matches!(
            self,
            Reason::BodyTooLarge | Reason::BodyTooLargeToRoute | Reason::BodyTimeout
        ) || self.status() == 400
    }

    /// A human-readable description; never contains request data.
    pub fn description(self) -> &'static str {
        match self {
            Reason::InvalidTarget => {
                "the request target must be one absolute path (or absolute URL for this host) and Host one valid host[:port]"
            }
            Reason::UpgradeRefused => "protocol upgrades pass only on routes configured for WebSockets",
            Reason::BodyTooLargeToRoute => {
                "request body exceeds the limit the gateway reads to route this request"
            }
            Reason::BodyTimeout => "the request body did not arrive in time",
            Reason::Unconfirmed => "no confirmation: this request would have been challenged",
            // The gateway names the configured credential in place of this (session.rs).
            Reason::NoSession => "no session credential",
            Reason::InvalidSession => "session credential invalid or expired",
            Reason::BearerNotAllowed => {
                "the token came with the Bearer scheme and session.allow_bearer_scheme is false: send it as Authorization: DPoP <token>, or set session.allow_bearer_scheme: true"
            }
            Reason::BodyTooLarge => "request body exceeds the confirmation limit",
            Reason::Malformed => "DPoP proof is not a single compact JWS",
            Reason::MixedSchemes => "a DPoP-bound token must use the DPoP scheme, not Bearer",
            Reason::BadTyp => "DPoP proof typ must be dpop+jwt",
            Reason::BadAlg => "DPoP proof alg is not accepted",
            Reason::BadJwk => "DPoP proof must embed one public jwk and nothing else",
            Reason::BadSignature => "DPoP proof signature does not verify",
            Reason::MissingClaim => {
                "DPoP proof lacks a required claim or has one of the wrong type: jti (string, at most 256 bytes), htm, htu (strings), iat (integer seconds), nonce (string)"
            }
            Reason::AthMissing => {
                "`ath` missing: the proof must be bound to the session credential; sign it with the credential (countersign proof/request --token, --cookie or --session-header)"
            }
            Reason::HtmMismatch => "DPoP proof htm does not match the request method",
            Reason::HtuMismatch => "DPoP proof htu does not match the request URI",
            Reason::StaleProof => "DPoP proof iat is outside the accepted window",
            Reason::SessionMismatch => "DPoP proof ath does not match the session credential",
            Reason::DeviceMismatch => "DPoP proof key is not the device bound to this session",
            Reason::NoSubject => {
                "this session names no subject, so no enrolled device can confirm for it"
            }
            Reason::DeviceNotEnrolled => {
                "this device is not enrolled for the session's subject: enrol it (an invite code, or a confirmation from an enrolled device) first"
            }
            Reason::EnrolmentMalformed => {
                "an enrolment body is JSON {\"code\": \"<invite code>\"} or {\"jkt\": \"<thumbprint of the new key>\"}"
            }
            Reason::InviteInvalid => "the invite code is unknown, expired, or for another subject",
            Reason::InviteUsed => "the invite code was already redeemed",
            Reason::TooManyDevices => {
                "the subject has as many devices enrolled as session.max_devices allows: remove one first"
            }
            Reason::TooManyChallenges => {
                "too many confirmations are outstanding for this session or client: complete one or let it expire (Retry-After), then try again"
            }
            Reason::NonceMissing => "confirmation required: sign the action with this nonce",
            Reason::NonceExpired => "nonce unknown or expired: sign the action with this nonce",
            Reason::NonceReplay => "nonce already used: sign the action with this nonce",
            Reason::ActionMismatch => "nonce was issued for another action: use this nonce",
            Reason::JtiReplay => "DPoP proof jti was already used",
            Reason::UserVerificationRequired => "the passkey did not verify the user",
            Reason::Cancelled => "the confirmation was cancelled",
            Reason::StoreUnavailable => "replay store unavailable; high-impact actions are paused",
            Reason::AuditUnavailable => "audit log unavailable; high-impact actions are paused",
            Reason::SessionRevoked => "this session was revoked; sign in again",
            Reason::StepUpRequired => {
                "a stronger or more recent authentication is required for this action"
            }
            Reason::RiskDenied => "this session is used from another network than it was bound on",
            Reason::PolicyDenied => "the policy does not allow this action",
            Reason::PolicyError => {
                "the policy could not be evaluated; high-impact actions are paused"
            }
            Reason::ApprovalUnknown => "no approval has this id (or it was forgotten after its ttl)",
            Reason::NotAnApprover => "this subject may not approve this route's actions",
            Reason::SelfApproval => {
                "the requester's own subject or device cannot approve its request"
            }
            Reason::ApprovalClosed => "this approval is no longer pending",
            Reason::ApprovalPending => {
                "this approval is still waiting for its approvers; retry once it is approved"
            }
            Reason::ApprovalDenied => "an approver denied this request",
            Reason::ApprovalExpired => "this approval expired before it was executed",
            Reason::ApprovalExecuted => "this approval was executed already",
            Reason::ApprovalActionMismatch => {
                "this request is not the action that was approved (method, target and body must be the same)"
            }
            Reason::ApprovalSessionMismatch => {
                "an approval is executed from the session that requested it"
            }
            Reason::ApprovalDeviceMismatch => {
                "an approval is executed with the device that requested it"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_refusals_ask_for_a_new_nonce_and_proof_refusals_do_not() {
        assert_eq!(Reason::ActionMismatch.error_code(), "use_dpop_nonce");
        assert_eq!(Reason::NonceReplay.as_str(), "replay");
        assert_eq!(Reason::JtiReplay.as_str(), "replay");
        assert_eq!(Reason::JtiReplay.error_code(), "invalid_dpop_proof");
        assert_eq!(Reason::DeviceMismatch.error_code(), "invalid_dpop_proof");
        assert_eq!(Reason::InvalidSession.error_code(), "invalid_token");
        assert_eq!(Reason::BodyTooLarge.status(), 413);
        assert_eq!(Reason::AthMissing.as_str(), "missing_claim");
        assert_eq!(Reason::BearerNotAllowed.as_str(), "invalid_session");
        assert_eq!(Reason::BearerNotAllowed.error_code(), "invalid_token");
        assert_eq!(Reason::DeviceNotEnrolled.error_code(), "invalid_dpop_proof");
        assert_eq!(Reason::DeviceNotEnrolled.status(), 401);
        assert_eq!(Reason::NoSubject.status(), 403);
        assert_eq!(Reason::TooManyDevices.status(), 409);
    }
}
