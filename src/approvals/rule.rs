//! `routes[i].approval`, validated: who may approve, how many must, for how long, and where the
//! approvers are told.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;

/// The approval a route requires before its action runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Subjects that may approve.
    pub subjects: Vec<String>,
    /// Groups (from `session.groups_claim`) whose members may approve.
    pub groups: Vec<String>,
    /// Distinct approvals needed.
    pub quorum: u32,
    /// How long a request waits for its approvals and its execution.
    pub ttl: Duration,
    /// The webhook told of each new approval.
    pub notify: Option<Notify>,
}

/// `approval.notify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// The `http://` URL the webhook is POSTed to.
    pub webhook: http::Uri,
    /// The signing key, read from `secret_env` at start.
    pub secret: WebhookSecret,
}

/// A Standard Webhooks signing key. A value `whsec_<base64>` is that spec's form and its key is
/// the decoded bytes; any other value is used as the key bytes as written.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

/// The fewest key bytes accepted: below this an HMAC key can be guessed.
pub const MIN_SECRET_BYTES: usize = 16;

/// Why a webhook secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// `whsec_` followed by something that is not base64.
    #[error("starts with whsec_ but the rest is not standard base64")]
    NotBase64,
    /// Too few bytes of key.
    #[error("holds {0} bytes of key; at least {MIN_SECRET_BYTES} are needed")]
    TooShort(usize),
}

impl WebhookSecret {
    /// Reads a secret as Standard Webhooks writes it, or as plain bytes.
    pub fn parse(value: &str) -> Result<WebhookSecret, SecretError> {
        let key = match value.strip_prefix("whsec_") {
            Some(encoded) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| SecretError::NotBase64)?,
            None => value.as_bytes().to_vec(),
        };
        if key.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort(key.len()));
        }
        Ok(WebhookSecret(key))
    }

    /// The HMAC key bytes.
    pub fn key(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never printed, not even in a debug dump of the config.
        f.write_str("WebhookSecret(..)")
    }
}

impl Rule {
    /// Whether a session with `subject` and `groups` may approve.
    pub fn admits(&self, subject: &str, groups: &[String]) -> bool {
        self.subjects.iter().any(|s| s == subject) || groups.iter().any(|g| self.groups.contains(g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whsec_secret_is_base64_and_any_other_value_is_its_bytes() {
        let encoded = base64::engine::general_purpose::STANDARD.encode([7u8; 24]);
        let secret = WebhookSecret::parse(&format!("whsec_{encoded}")).expect("whsec secret");
        assert_eq!(secret.key(), &[7u8; 24]);
        let plain = WebhookSecret::parse("a plain secret of some length").expect("plain");
        assert_eq!(plain.key(), b"a plain secret of some length");
        assert_eq!(
            WebhookSecret::parse("whsec_!!!"),
            Err(SecretError::NotBase64)
        );
        assert_eq!(WebhookSecret::parse("short"), Err(SecretError::TooShort(5)));
        assert_eq!(format!("{plain:?}"), "WebhookSecret(..)");
    }

    #[test]
    fn approvers_are_named_subjects_or_members_of_named_groups() {
        let rule = Rule {
            subjects: vec!["alice".into()],
            groups: vec!["sre-leads".into()],
            quorum: 1,
            ttl: Duration::from_secs(60),
            notify: None,
        };
        assert!(rule.admits("alice", &[]));
        assert!(rule.admits("carol", &["sre-leads".to_string()]));
        assert!(!rule.admits("mallory", &["devs".to_string()]));
    }
}
