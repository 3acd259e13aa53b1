//! One approval and its state machine, with no store and no network: pending → approved (a
//! quorum of distinct approvers) | denied (one deny) | expired (its ttl), and approved → executed
//! (once, by its requester, for exactly its action).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::Rule;
use crate::reason::Reason;

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for approvals.
    Pending,
    /// The quorum approved; the requester may execute it.
    Approved,
    /// An approver denied it.
    Denied,
    /// Its ttl passed before it was executed.
    Expired,
    /// Executed; it cannot run again.
    Executed,
}

impl Status {
    /// The JSON and audit name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
            Status::Executed => "executed",
        }
    }
}

/// Who asked for the action: their session and device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    /// The session's subject.
    pub subject: Option<String>,
    /// First 16 hex of SHA-256 of the session id (what audit records show).
    pub session: String,
    /// The device key thumbprint that confirmed the request.
    pub device: String,
    /// Hex SHA-256 of the session id, which an execution's session must match. Never shown.
    pub session_sha256: String,
}

/// One approver's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// The approver's subject.
    pub subject: String,
    /// The device key (or passkey) that confirmed it.
    pub device: String,
    /// When, in unix milliseconds.
    pub at: u64,
}

/// Who may approve, as the route said when the approval was requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approvers {
    /// Subjects that may approve.
    pub subjects: Vec<String>,
    /// Groups whose members may approve.
    pub groups: Vec<String>,
}

/// One approval, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// 128 random bits, base64url.
    pub id: String,
    /// The route.
    pub route: String,
    /// The request method.
    pub method: String,
    /// The origin-form target, query included.
    pub target: String,
    /// Hex SHA-256 of the body.
    pub body_sha256: String,
    /// Who asked.
    pub requester: Requester,
    /// The confirmation id of the request that asked.
    pub confirmation_id: String,
    /// Who may approve.
    pub approvers: Approvers,
    /// Distinct approvals needed.
    pub quorum: u32,
    /// Approvals so far, one per subject.
    pub approvals: Vec<Vote>,
    /// The deny that ended it.
    pub denied_by: Option<Vote>,
    /// Where it stands.
    pub status: Status,
    /// Unix milliseconds.
    pub created_at: u64,
    /// Unix milliseconds; after this it can be neither approved nor executed.
    pub expires_at: u64,
    /// When the quorum was reached.
    pub approved_at: Option<u64>,
    /// When it was executed, and by which confirmation.
    pub executed: Option<(u64, String)>,
}

/// The action a request stands for, and who sends it.
#[derive(Debug, Clone, Copy)]
pub struct Action<'a> {
    /// Route name.
    pub route: &'a str,
    /// Request method.
    pub method: &'a str,
    /// Origin-form target.
    pub target: &'a str,
    /// Hex SHA-256 of the body.
    pub body_sha256: &'a str,
    /// Hex SHA-256 of the session id.
    pub session_sha256: &'a str,
    /// The confirming device.
    pub device: &'a str,
}

/// An approver's confirmed decision.
#[derive(Debug, Clone, Copy)]
pub struct Voter<'a> {
    /// Their subject (a session without one cannot approve).
    pub subject: &'a str,
    /// Their groups (`session.groups_claim`).
    pub groups: &'a [String],
    /// The device that confirmed the decision.
    pub device: &'a str,
}

/// What a vote changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Voted {
    /// Counted; still pending.
    Counted,
    /// This approval reached the quorum.
    Approved,
    /// Denied.
    Denied,
    /// This approver had approved already: counted once.
    Again,
}

/// Unix milliseconds of `t`.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// RFC 3339 of unix milliseconds, to the second.
fn rfc3339(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A fresh approval id: 128 random bits, base64url without padding (22 characters).
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `text` has the shape of an approval id (so no other text becomes a store lookup).
pub fn is_id(text: &str) -> bool {
    text.len() == 22
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Approval {
    /// A pending approval of `action` under `rule`, asked by `requester` at `now`.
    pub fn new(
        action: &Action<'_>,
        requester: Requester,
        confirmation_id: String,
        rule: &Rule,
        now: SystemTime,
    ) -> Approval {
        let created_at = unix_ms(now);
        let ttl = u64::try_from(rule.ttl.as_millis()).unwrap_or(u64::MAX);
        Approval {
            id: new_id(),
            route: action.route.to_string(),
            method: action.method.to_string(),
            target: action.target.to_string(),
            body_sha256: action.body_sha256.to_string(),
            requester,
            confirmation_id,
            approvers: Approvers {
                subjects: rule.subjects.clone(),
                groups: rule.groups.clone(),
            },
            quorum: rule.quorum,
            approvals: Vec::new(),
            denied_by: None,
            status: Status::Pending,
            created_at,
            expires_at: created_at.saturating_add(ttl),
            approved_at: None,
            executed: None,
        }
    }

    /// Whether its ttl has passed while it could still change (pending or approved) at `now`.
    pub fn lapsed(&self, now: u64) -> bool {
        matches!(self.status, Status::Pending | Status::Approved) && now >= self.expires_at
    }

    /// Marks a lapsed approval expired; false when it had not lapsed.
    pub fn expire(&mut self, now: u64) -> bool {
        if !self.lapsed(now) {
            return false;
        }
        self.status = Status::Expired;
        true
    }

    /// The subjects that approved it.
    pub fn approver_subjects(&self) -> Vec<String> {
        self.approvals.iter().map(|v| v.subject.clone()).collect()
    }

    /// An approver's decision at `now` (`approve` false: a deny).
    pub fn vote(&mut self, voter: &Voter<'_>, approve: bool, now: u64) -> Result<Voted, Reason> {
        if self.expire(now) || self.status == Status::Expired {
            return Err(Reason::ApprovalExpired);
        }
        if self.status != Status::Pending {
            return Err(Reason::ApprovalClosed);
        }
        // The requester never approves its own action, by its subject or by its device.
        if self.requester.subject.as_deref() == Some(voter.subject)
            || self.requester.device == voter.device
        {
            return Err(Reason::SelfApproval);
        }
        let named = self.approvers.subjects.iter().any(|s| s == voter.subject);
        let in_group = voter
            .groups
            .iter()
            .any(|g| self.approvers.groups.contains(g));
        if !named && !in_group {
            return Err(Reason::NotAnApprover);
        }
        let vote = Vote {
            subject: voter.subject.to_string(),
            device: voter.device.to_string(),
            at: now,
        };
        if !approve {
            self.denied_by = Some(vote);
            self.status = Status::Denied;
            return Ok(Voted::Denied);
        }
        if self.approvals.iter().any(|v| v.subject == voter.subject) {
            return Ok(Voted::Again);
        }
        self.approvals.push(vote);
        if self.approvals.len() >= self.quorum as usize {
            self.status = Status::Approved;
            self.approved_at = Some(now);
            return Ok(Voted::Approved);
        }
        Ok(Voted::Counted)
    }

    /// Whether `action` may execute this approval now; the first failing check wins: the
    /// requester's session, its device, the action, then the status.
    pub fn check_execution(&self, action: &Action<'_>, now: u64) -> Result<(), Reason> {
        if self.requester.session_sha256 != action.session_sha256 {
            return Err(Reason::ApprovalSessionMismatch);
        }
        if self.requester.device != action.device {
            return Err(Reason::ApprovalDeviceMismatch);
        }
        if self.route != action.route
            || self.method != action.method
            || self.target != action.target
            || self.body_sha256 != action.body_sha256
        {
            return Err(Reason::ApprovalActionMismatch);
        }
        if self.lapsed(now) {
            return Err(Reason::ApprovalExpired);
        }
        match self.status {
            Status::Approved => Ok(()),
            Status::Pending => Err(Reason::ApprovalPending),
            Status::Denied => Err(Reason::ApprovalDenied),
            Status::Expired => Err(Reason::ApprovalExpired),
            Status::Executed => Err(Reason::ApprovalExecuted),
        }
    }

    /// Marks it executed by confirmation `cid`, after [`Approval::check_execution`].
    pub fn execute(&mut self, action: &Action<'_>, cid: &str, now: u64) -> Result<(), Reason> {
        self.check_execution(action, now)?;
        self.status = Status::Executed;
        self.executed = Some((now, cid.to_string()));
        Ok(())
    }

    /// The approval as clients and approvers see it (docs/protocol.md, "Approvals").
    pub fn view(&self) -> Value {
        let votes =
            |v: &Vote| json!({ "subject": v.subject, "device": v.device, "at": rfc3339(v.at) });
        let mut view = json!({
            "id": self.id,
            "status": self.status.as_str(),
            "route": self.route,
            "method": self.method,
            "target": self.target,
            "body_sha256": self.body_sha256,
            "requester": {
                "subject": self.requester.subject,
                "session": self.requester.session,
                "device": self.requester.device,
            },
            "approvers": { "subjects": self.approvers.subjects, "groups": self.approvers.groups },
            "quorum": self.quorum,
            "approvals": self.approvals.iter().map(votes).collect::<Vec<_>>(),
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
        });
        if let Some(deny) = &self.denied_by {
            view["denied_by"] = votes(deny);
        }
        if let Some(at) = self.approved_at {
            view["approved_at"] = json!(rfc3339(at));
        }
        if let Some((at, cid)) = &self.executed {
            view["executed_at"] = json!(rfc3339(*at));
            view["executed_by"] = json!(cid);
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    fn rule(quorum: u32) -> Rule {
        Rule {
            subjects: vec!["alice".into(), "bob".into(), "bot".into()],
            groups: vec!["sre-leads".into()],
            quorum,
            ttl: Duration::from_secs(3600),
            notify: None,
        }
    }

    fn action() -> Action<'static> {
        Action {
            route: "release-deploy",
            method: "POST",
            target: "/api/deploys/7/release",
            body_sha256: "ab",
            session_sha256: "s1",
            device: "bot-key",
        }
    }

    fn approval(quorum: u32) -> Approval {
        let requester = Requester {
            subject: Some("bot".into()),
            session: "s1-short".into(),
            device: "bot-key".into(),
            session_sha256: "s1".into(),
        };
        Approval::new(
            &action(),
            requester,
            "cid".into(),
            &rule(quorum),
            UNIX_EPOCH,
        )
    }

    fn voter<'a>(subject: &'a str, device: &'a str) -> Voter<'a> {
        Voter {
            subject,
            groups: &[],
            device,
        }
    }

    #[test]
    fn ids_are_128_bits_of_base64url() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert!(is_id(&a) && is_id(&b), "{a} {b}");
        assert!(!is_id("short") && !is_id("../../../../../../etc/x"));
    }

    #[test]
    fn a_quorum_of_distinct_approvers_approves_and_a_repeat_counts_once() {
        let mut a = approval(2);
        assert_eq!(a.vote(&voter("alice", "ka"), true, 1), Ok(Voted::Counted));
        assert_eq!(a.vote(&voter("alice", "ka2"), true, 2), Ok(Voted::Again));
        assert_eq!(a.status, Status::Pending);
        assert_eq!(a.vote(&voter("bob", "kb"), true, 3), Ok(Voted::Approved));
        assert_eq!(a.status, Status::Approved);
        assert_eq!(a.approver_subjects(), ["alice", "bob"]);
        assert_eq!(
            a.vote(&voter("carol", "kc"), true, 4),
            Err(Reason::ApprovalClosed)
        );
    }

    #[test]
    fn the_requester_never_approves_by_subject_or_by_device() {
        let mut a = approval(1);
        let bot = voter("bot", "other-key");
        assert_eq!(a.vote(&bot, true, 1), Err(Reason::SelfApproval));
        let borrowed = voter("alice", "bot-key");
        assert_eq!(a.vote(&borrowed, true, 1), Err(Reason::SelfApproval));
        assert_eq!(
            a.vote(&voter("mallory", "km"), true, 1),
            Err(Reason::NotAnApprover)
        );
        let lead = Voter {
            subject: "carol",
            groups: &["sre-leads".to_string()],
            device: "kc",
        };
        assert_eq!(a.vote(&lead, true, 1), Ok(Voted::Approved));
    }

    #[test]
    fn one_deny_ends_it_and_the_ttl_expires_it() {
        let mut a = approval(2);
        assert_eq!(a.vote(&voter("alice", "ka"), true, 1), Ok(Voted::Counted));
        assert_eq!(a.vote(&voter("bob", "kb"), false, 2), Ok(Voted::Denied));
        assert_eq!(a.status, Status::Denied);
        assert_eq!(a.check_execution(&action(), 3), Err(Reason::ApprovalDenied));
        let mut b = approval(1);
        assert_eq!(
            b.vote(&voter("alice", "ka"), true, HOUR),
            Err(Reason::ApprovalExpired)
        );
        assert_eq!(b.status, Status::Expired);
    }

    #[test]
    fn execution_needs_the_same_requester_the_same_action_and_an_approval() {
        let mut a = approval(1);
        assert_eq!(
            a.check_execution(&action(), 1),
            Err(Reason::ApprovalPending)
        );
        a.vote(&voter("alice", "ka"), true, 1).expect("approved");
        let other_session = Action {
            session_sha256: "s2",
            ..action()
        };
        assert_eq!(
            a.check_execution(&other_session, 2),
            Err(Reason::ApprovalSessionMismatch)
        );
        let other_device = Action {
            device: "k2",
            ..action()
        };
        assert_eq!(
            a.check_execution(&other_device, 2),
            Err(Reason::ApprovalDeviceMismatch)
        );
        let other_body = Action {
            body_sha256: "cd",
            ..action()
        };
        assert_eq!(
            a.check_execution(&other_body, 2),
            Err(Reason::ApprovalActionMismatch)
        );
        assert_eq!(
            a.check_execution(&action(), HOUR),
            Err(Reason::ApprovalExpired)
        );
        assert_eq!(a.execute(&action(), "cid2", 2), Ok(()));
        assert_eq!(
            a.execute(&action(), "cid3", 3),
            Err(Reason::ApprovalExecuted)
        );
        assert_eq!(a.view()["status"], "executed");
    }
}
