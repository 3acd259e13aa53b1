//! Human approval of machine-initiated actions (docs/protocol.md, "Approvals"): a confirmed
//! request on a route with `approval:` becomes a pending approval bound to its exact action;
//! approvers confirm their decision with their own session and device; the requester executes it
//! once, with a fresh confirmation.

mod book;
mod record;
mod rule;

pub use book::{Book, Changed, Missing, KEPT_AFTER_TTL, LIST_MAX};
pub use record::{
    is_id, unix_ms, Action, Approval, Approvers, Requester, Status, Vote, Voted, Voter,
};
pub use rule::{Notify, Rule, SecretError, WebhookSecret, MIN_SECRET_BYTES};
