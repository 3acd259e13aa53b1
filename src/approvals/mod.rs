//! Human approval of machine-initiated actions (docs/protocol.md, "Approvals"): a confirmed
//! request on a route with `approval:` becomes a pending approval bound to its exact action;
//! approvers confirm their decision with their own session and device; the requester executes it
//! once, with a fresh confirmation.

mod book;
pub mod operator;
mod record;
mod rule;
mod webhook;

pub use book::{Book, Changed, Missing, KEPT_AFTER_TTL, LIST_MAX};
pub use record::{
    is_id, unix_ms, Action, Approval, Approvers, Requester, Status, Vote, Voted, Voter,
};
pub use rule::{Notify, Rule, SecretError, WebhookSecret, MIN_SECRET_BYTES};
pub use webhook::{refresh_pending, Delivery, Worker};

/// The groups a session's token lists under `claim` (`session.groups_claim`).
pub fn groups(session: &crate::session::Session, claim: &str) -> Vec<String> {
    match session.claims.as_deref().and_then(|c| c.get(claim)) {
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .filter_map(|g| g.as_str().map(str::to_owned))
            .collect(),
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    }
}
