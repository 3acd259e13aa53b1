//! How the gateway answers a challenge and a refusal on the DPoP path, built in one place from the
//! [`Reason`] (docs/protocol.md, "The exchange" and "Checks and reasons"): the status, the JSON
//! error with its `reason`, `WWW-Authenticate` (RFC 9449 §7.1, RFC 9470 §3) and, with a fresh
//! nonce, `DPoP-Nonce` and what is being confirmed.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::alg::ProofAlg;
use crate::reason::Reason;
use crate::reply::Reply;

/// The description of a challenge.
const CHALLENGE: &str = "confirmation required: sign this action with the DPoP-Nonce";

/// A nonce to answer with, and the action it is for.
pub struct Fresh {
    /// The nonce (`DPoP-Nonce`).
    pub nonce: String,
    /// What it confirms (the `confirmation` member of the body).
    pub action: Value,
}

/// The action a nonce is issued for, as the client is shown it.
pub struct Action<'a> {
    /// Route name.
    pub route: &'a str,
    /// Request method.
    pub method: &'a str,
    /// The methods it stands for through overrides, comma-joined (empty: none).
    pub overrides: &'a str,
    /// Origin-form target.
    pub target: &'a str,
    /// The `htu` a proof must name.
    pub htu: &'a str,
    /// Hex SHA-256 of the body.
    pub body_sha256: &'a str,
}

impl Action<'_> {
    /// The `confirmation` member describing this action under a nonce valid until `expires_at`.
    pub fn describe(&self, expires_at: SystemTime) -> Value {
        let mut described = json!({
            "route": self.route,
            "method": self.method,
            "target": self.target,
            "htu": self.htu,
            "body_sha256": self.body_sha256,
            "expires_at": humantime::format_rfc3339_seconds(expires_at).to_string(),
        });
        if !self.overrides.is_empty() {
            described["method_override"] = json!(self.overrides);
        }
        described
    }
}

/// The answers of one gateway: its accepted algorithms and the credential it reads.
pub struct Answers {
    /// `algs` of `WWW-Authenticate`, space-separated.
    algs: String,
    /// The description of `no_session`, naming the credential this gateway reads.
    no_session: String,
    /// `Retry-After` of a quota refusal, in seconds: when an unconsumed challenge lapses.
    retry_after: u64,
}

impl Answers {
    /// Answers naming `algs`, for a missing session `no_session`, and for a quota refusal the
    /// nonce lifetime `nonce_ttl`.
    pub fn new(algs: &[ProofAlg], no_session: String, nonce_ttl: Duration) -> Answers {
        let algs = algs.iter().map(|a| a.as_str()).collect::<Vec<_>>();
        Answers {
            algs: algs.join(" "),
            no_session,
            retry_after: nonce_ttl.as_secs_f64().ceil() as u64,
        }
    }

    /// A challenge: sign this action with this nonce.
    pub fn challenge(&self, fresh: Fresh) -> Reply {
        let code = Reason::NonceMissing.error_code();
        let body =
            json!({ "error": code, "error_description": CHALLENGE, "confirmation": fresh.action });
        let mut reply = Reply::json(401, &body);
        reply.headers.extend(self.authenticate(code, CHALLENGE, ""));
        reply.with("dpop-nonce", fresh.nonce)
    }

    /// A refusal for `reason`, with a fresh nonce when the client may try again at once, and
    /// more `WWW-Authenticate` parameters (`auth_params`, e.g. RFC 9470 `acr_values`).
    pub fn refusal(&self, reason: Reason, fresh: Option<Fresh>, auth_params: &str) -> Reply {
        let status = reason.status();
        let code = reason.error_code();
        let description = match reason {
            Reason::NoSession => self.no_session.as_str(),
            _ => reason.description(),
        };
        let mut body =
            json!({ "error": code, "error_description": description, "reason": reason.as_str() });
        let mut headers = Vec::new();
        if status == 401 || reason == Reason::MixedSchemes {
            headers.extend(self.authenticate(code, description, auth_params));
        }
        if reason == Reason::TooManyChallenges {
            headers.push(("retry-after", self.retry_after.to_string()));
        }
        if let Some(fresh) = fresh {
            headers.push(("dpop-nonce", fresh.nonce));
            body["confirmation"] = fresh.action;
        }
        let mut reply = Reply::json(status, &body);
        reply.headers.extend(headers);
        reply
    }

    /// `WWW-Authenticate` and the CORS exposure a browser-based client needs to read it.
    fn authenticate(
        &self,
        code: &str,
        description: &str,
        auth_params: &str,
    ) -> [(&'static str, String); 2] {
        let more = if auth_params.is_empty() {
            String::new()
        } else {
            format!(", {auth_params}")
        };
        [
            (
                "www-authenticate",
                format!(
                    r#"DPoP error="{code}", error_description="{description}", algs="{}"{more}"#,
                    self.algs
                ),
            ),
            (
                "access-control-expose-headers",
                "WWW-Authenticate, DPoP-Nonce".to_string(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers() -> Answers {
        let ttl = Duration::from_millis(59_500);
        Answers::new(
            &[ProofAlg::Es256],
            "no session cookie `sid`".to_string(),
            ttl,
        )
    }

    fn header<'r>(reply: &'r Reply, name: &str) -> Option<&'r str> {
        reply
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn body(reply: &Reply) -> Value {
        serde_json::from_slice(&reply.body).expect("a JSON body")
    }

    #[test]
    fn a_refusal_names_its_reason_in_the_body_and_the_challenge_header() {
        let reply = answers().refusal(Reason::DeviceMismatch, None, "");
        assert_eq!(reply.status, 401);
        assert_eq!(body(&reply)["error"], "invalid_dpop_proof");
        assert_eq!(body(&reply)["reason"], "device_mismatch");
        let auth = header(&reply, "www-authenticate").expect("WWW-Authenticate");
        assert!(
            auth.starts_with(r#"DPoP error="invalid_dpop_proof""#),
            "{auth}"
        );
        assert!(auth.ends_with(r#"algs="ES256""#), "{auth}");
        assert_eq!(header(&reply, "dpop-nonce"), None);
    }

    #[test]
    fn a_refusal_with_a_fresh_nonce_carries_it_and_the_action() {
        let fresh = Fresh {
            nonce: "n1".to_string(),
            action: json!({"route": "delete-user"}),
        };
        let reply = answers().refusal(Reason::NonceReplay, Some(fresh), "");
        assert_eq!(header(&reply, "dpop-nonce"), Some("n1"));
        assert_eq!(body(&reply)["confirmation"]["route"], "delete-user");
        assert_eq!(body(&reply)["reason"], "replay");
    }

    #[test]
    fn a_missing_session_names_the_credential_read_and_a_step_up_its_parameters() {
        let reply = answers().refusal(Reason::NoSession, None, "");
        assert_eq!(body(&reply)["error_description"], "no session cookie `sid`");
        let reply = answers().refusal(Reason::StepUpRequired, None, r#"acr_values="mfa""#);
        let auth = header(&reply, "www-authenticate").expect("WWW-Authenticate");
        assert!(auth.ends_with(r#", acr_values="mfa""#), "{auth}");
    }

    #[test]
    fn refusals_that_are_not_401_carry_no_challenge_header() {
        for reason in [
            Reason::PolicyDenied,
            Reason::BodyTooLarge,
            Reason::StoreUnavailable,
        ] {
            let reply = answers().refusal(reason, None, "");
            assert_eq!(reply.status, reason.status());
            assert_eq!(header(&reply, "www-authenticate"), None, "{reason:?}");
        }
        let reply = answers().refusal(Reason::MixedSchemes, None, "");
        assert_eq!(reply.status, 400);
        assert!(header(&reply, "www-authenticate").is_some());
    }

    #[test]
    fn a_quota_refusal_says_when_to_retry() {
        let reply = answers().refusal(Reason::TooManyChallenges, None, "");
        assert_eq!(reply.status, 429);
        assert_eq!(body(&reply)["reason"], "too_many_challenges");
        assert_eq!(header(&reply, "retry-after"), Some("60"));
        assert_eq!(header(&reply, "www-authenticate"), None);
    }

    #[test]
    fn a_challenge_asks_for_a_nonce_without_a_reason() {
        let fresh = Fresh {
            nonce: "n2".to_string(),
            action: json!({"route": "r"}),
        };
        let reply = answers().challenge(fresh);
        assert_eq!(reply.status, 401);
        assert_eq!(body(&reply)["error"], "use_dpop_nonce");
        assert!(body(&reply).get("reason").is_none());
        assert_eq!(header(&reply, "dpop-nonce"), Some("n2"));
    }
}
