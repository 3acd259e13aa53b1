//! Why a high-impact request was refused. One enum, so the response, the audit record and the
//! metric label can never disagree: `as_str()` is the contract's reason string (CONTRACT §4).

/// A refusal of a high-impact request, in the order the checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No session credential on the request.
    NoSession,
    /// The session credential is invalid or expired, or a DPoP-bound token came as `Bearer`.
    InvalidSession,
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
}

impl Reason {
    /// The contract's reason string, used in audit records and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoSession => "no_session",
            Reason::InvalidSession => "invalid_session",
            Reason::BodyTooLarge => "body_too_large",
            Reason::Malformed | Reason::MixedSchemes => "malformed",
            Reason::BadTyp => "bad_typ",
            Reason::BadAlg => "bad_alg",
            Reason::BadJwk => "bad_jwk",
            Reason::BadSignature => "bad_signature",
            Reason::MissingClaim => "missing_claim",
            Reason::HtmMismatch => "htm_mismatch",
            Reason::HtuMismatch => "htu_mismatch",
            Reason::StaleProof => "stale_proof",
            Reason::SessionMismatch => "session_mismatch",
            Reason::DeviceMismatch => "device_mismatch",
            Reason::NonceMissing => "nonce_missing",
            Reason::NonceExpired => "nonce_expired",
            Reason::NonceReplay | Reason::JtiReplay => "replay",
            Reason::ActionMismatch => "action_mismatch",
            Reason::UserVerificationRequired => "user_verification_required",
            Reason::Cancelled => "cancelled",
            Reason::StoreUnavailable => "store_unavailable",
            Reason::AuditUnavailable => "audit_unavailable",
        }
    }

    /// The `error` code of the response (and of `WWW-Authenticate` for 401s).
    pub fn error_code(self) -> &'static str {
        match self {
            Reason::NoSession | Reason::InvalidSession => "invalid_token",
            Reason::BodyTooLarge | Reason::MixedSchemes => "invalid_request",
            Reason::NonceMissing
            | Reason::NonceExpired
            | Reason::NonceReplay
            | Reason::ActionMismatch => "use_dpop_nonce",
            Reason::StoreUnavailable | Reason::AuditUnavailable => "temporarily_unavailable",
            _ => "invalid_dpop_proof",
        }
    }

    /// The HTTP status of the refusal.
    pub fn status(self) -> u16 {
        match self {
            Reason::BodyTooLarge => 413,
            Reason::MixedSchemes => 400,
            Reason::StoreUnavailable | Reason::AuditUnavailable => 503,
            _ => 401,
        }
    }

    /// A human-readable description; never contains request data.
    pub fn description(self) -> &'static str {
        match self {
            Reason::NoSession => "no session credential",
            Reason::InvalidSession => "session credential invalid or expired",
            Reason::BodyTooLarge => "request body exceeds the confirmation limit",
            Reason::Malformed => "DPoP proof is not a single compact JWS",
            Reason::MixedSchemes => "a DPoP-bound token must use the DPoP scheme, not Bearer",
            Reason::BadTyp => "DPoP proof typ must be dpop+jwt",
            Reason::BadAlg => "DPoP proof alg is not accepted",
            Reason::BadJwk => "DPoP proof must embed one public jwk and nothing else",
            Reason::BadSignature => "DPoP proof signature does not verify",
            Reason::MissingClaim => "DPoP proof lacks a required claim",
            Reason::HtmMismatch => "DPoP proof htm does not match the request method",
            Reason::HtuMismatch => "DPoP proof htu does not match the request URI",
            Reason::StaleProof => "DPoP proof iat is outside the accepted window",
            Reason::SessionMismatch => "DPoP proof ath does not match the session credential",
            Reason::DeviceMismatch => "DPoP proof key is not the device bound to this session",
            Reason::NonceMissing => "confirmation required: sign the action with this nonce",
            Reason::NonceExpired => "nonce unknown or expired: sign the action with this nonce",
            Reason::NonceReplay => "nonce already used: sign the action with this nonce",
            Reason::ActionMismatch => "nonce was issued for another action: use this nonce",
            Reason::JtiReplay => "DPoP proof jti was already used",
            Reason::UserVerificationRequired => "the passkey did not verify the user",
            Reason::Cancelled => "the confirmation was cancelled",
            Reason::StoreUnavailable => "replay store unavailable; high-impact actions are paused",
            Reason::AuditUnavailable => "audit log unavailable; high-impact actions are paused",
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
    }
}
