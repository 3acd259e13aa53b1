//! Human approval of machine-initiated actions (docs/protocol.md, "Approvals"): a confirmed
//! request on a route with `approval:` becomes a pending approval bound to its exact action;
//! approvers confirm their decision with their own session and device; the requester executes it
//! once, with a fresh confirmation.

mod rule;

pub use rule::{Notify, Rule, SecretError, WebhookSecret, MIN_SECRET_BYTES};
