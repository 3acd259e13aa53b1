//! Approvals on the app origin (docs/protocol.md, "Approvals"): a confirmed request on a route
//! with `approval:` becomes a pending approval (`202`); `GET /.countersign/approvals/{id}` shows
//! it; `POST …/approve` and `…/deny` are the approver's own confirmation (the §3 nonce flow, their
//! session and device); the requester's re-sent request with `Countersign-Approval` executes it
//! once ([`crate::approvals`] holds the state machine).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use pingora::proxy::Session;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::forward::Confirmed;
use super::{Gateway, RequestCtx};
use crate::approvals::{
    self, is_id, Action, Approval, Book, Delivery, Requester, Rule, Status, Voted, Voter, Worker,
};
use crate::audit::{Event, Record};
use crate::body::read_body;
use crate::confirm::{Challenge, Exchange, Outcome};
use crate::decision::Decision;
use crate::reason::Reason;
use crate::refusal::{self, Fresh};
use crate::reply::{self, Reply};
use crate::target::Target;

/// Where approvals are shown and decided, on the app origin.
pub(crate) const APPROVALS_PATH: &str = "/.countersign/approvals/";
/// The header an execution names its approval in.
pub(crate) const APPROVAL_HEADER: &str = "countersign-approval";
/// What audit records and metric labels name the approval endpoints (no configured route).
const ENDPOINT: &str = "countersign-approvals";
/// The largest body an approve or deny request may carry (it is bound by the nonce, not read).
const MAX_VOTE_BODY: usize = 4096;
/// The longest `Prefer: wait` honoured, in seconds.
const MAX_WAIT_SECS: u64 = 60;
/// Requests held waiting for their approval at once; more are answered `202` at once.
const MAX_WAITERS: usize = 256;
/// How often a held request reads its approval.
const WAIT_POLL: Duration = Duration::from_millis(200);

/// The approvals of one gateway: the store's book, the webhook worker, the waiters' bound.
pub(super) struct Approvals {
    pub book: Book,
    pub worker: Option<Worker>,
    pub waiters: Arc<Semaphore>,
}

impl Approvals {
    /// The approvals of `config` over `store`: the worker runs when a route needs approvals.
    pub fn for_config(
        config: &crate::config::Config,
        store: &Arc<dyn crate::store::ReplayStore>,
        metrics: &Arc<crate::metrics::Metrics>,
    ) -> std::io::Result<Approvals> {
        let needed = config.routes.routes().iter().any(|r| r.approval.is_some());
        Approvals::new(store.clone(), metrics.clone(), needed)
    }

    /// The approvals over `store`; the worker runs when a route needs approvals.
    pub fn new(
        store: Arc<dyn crate::store::ReplayStore>,
        metrics: Arc<crate::metrics::Metrics>,
        needed: bool,
    ) -> std::io::Result<Approvals> {
        let book = Book::new(store);
        let worker = match needed {
            true => Some(Worker::start(book.clone(), metrics)?),
            false => None,
        };
        Ok(Approvals {
            book,
            worker,
            waiters: Arc::new(Semaphore::new(MAX_WAITERS)),
        })
    }
}

/// The endpoint a path names.
enum Endpoint<'a> {
    Show(&'a str),
    Vote(&'a str, bool),
}

fn endpoint(path: &str) -> Option<Endpoint<'_>> {
    let rest = path.strip_prefix(APPROVALS_PATH)?;
    match rest.split_once('/') {
        None => Some(Endpoint::Show(rest)),
        Some((id, "approve")) => Some(Endpoint::Vote(id, true)),
        Some((id, "deny")) => Some(Endpoint::Vote(id, false)),
        Some(_) => None,
    }
}

/// `Prefer: wait=N` (RFC 7240 §4.3), at most [`MAX_WAIT_SECS`].
fn prefer_wait(headers: &http::HeaderMap) -> Option<Duration> {
    let secs = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("wait=")?.trim().parse::<u64>().ok())?;
    (secs > 0).then(|| Duration::from_secs(secs.min(MAX_WAIT_SECS)))
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

impl Gateway {
    /// Serves the approval endpoints; true when `target` was one of them.
    pub(super) async fn approval_step(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        target: &Target,
    ) -> pingora::Result<bool> {
        if !target.path().starts_with(APPROVALS_PATH) {
            return Ok(false);
        }
        let req = session.req_header().clone();
        let mut record = self.audit_base(&req, ctx);
        record.route = ENDPOINT.to_string();
        let Some(endpoint) = endpoint(target.path()) else {
            reply::write(session, Reply::not_found(), &ctx.request_id).await?;
            return Ok(true);
        };
        let (id, vote) = match endpoint {
            Endpoint::Show(id) => (id, None),
            Endpoint::Vote(id, approve) => (id, Some(approve)),
        };
        let allowed = if vote.is_some() { "POST" } else { "GET" };
        let method_ok = match vote {
            Some(_) => req.method == http::Method::POST,
            None => req.method == http::Method::GET || req.method == http::Method::HEAD,
        };
        if !method_ok {
            let text = "approvals are read with GET and decided with POST …/approve or …/deny";
            let reply = Reply::error(405, "invalid_request", text).with("allow", allowed.into());
            reply::write(session, reply, &ctx.request_id).await?;
            return Ok(true);
        }
        let user = match self.confirmer.session(&req.headers, ctx.peer.trusted) {
            Ok(user) => user,
            Err(reason) => {
                self.refuse(session, ctx, record, reason).await?;
                return Ok(true);
            }
        };
        record.subject = user.subject.clone();
        record.session = Some(user.id_hash());
        if is_id(id) {
            record.approval_id = Some(id.to_string());
        }
        match vote {
            None => self.show(session, ctx, id, record).await?,
            Some(approve) => {
                self.vote(session, ctx, id, approve, &user, record).await?;
            }
        }
        Ok(true)
    }

    /// `GET /.countersign/approvals/{id}`.
    async fn show(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        id: &str,
        record: Record,
    ) -> pingora::Result<()> {
        if !is_id(id) {
            return self
                .refuse(session, ctx, record, Reason::ApprovalUnknown)
                .await;
        }
        let book = &self.approvals.book;
        let now = Book::now();
        let found = match book.get(id).await {
            Ok(found) => found,
            Err(_) => {
                return self
                    .refuse(session, ctx, record, Reason::StoreUnavailable)
                    .await
            }
        };
        let Some(mut approval) = found else {
            return self
                .refuse(session, ctx, record, Reason::ApprovalUnknown)
                .await;
        };
        if approval.lapsed(now) {
            if let Ok(Some(expired)) = book.expire(id, now).await {
                self.audit_expired(&expired);
            }
            approval.expire(now);
        }
        let reply = Reply::json(200, &json!({ "approval": approval.view() }));
        reply::write(session, reply, &ctx.request_id).await
    }

    /// `POST /.countersign/approvals/{id}/approve|deny`: the approver's confirmation, then the vote.
    async fn vote(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        id: &str,
        approve: bool,
        user: &crate::session::Session,
        mut record: Record,
    ) -> pingora::Result<()> {
        let req = session.req_header().clone();
        let read = read_body(session, &req, MAX_VOTE_BODY).await?;
        let body = match read.complete(Reason::BodyTooLarge) {
            Ok(body) => body,
            Err(reason) => return self.refuse(session, ctx, record, reason).await,
        };
        let body_sha256: [u8; 32] = Sha256::digest(&body).into();
        let body_hex = hex::encode(body_sha256);
        record.body_sha256 = Some(body_hex.clone());
        let Some(subject) = user.subject.clone() else {
            return self.refuse(session, ctx, record, Reason::NoSubject).await;
        };
        // The approver's own confirmation of exactly this decision (docs/protocol.md, §3).
        let public = self.config.public_origin.as_ref();
        let external = Self::view(ctx).external_uri(public, &ctx.target);
        let htu = crate::htu::normalize(&external);
        let exchange = Exchange {
            method: "POST",
            overrides: "",
            target: &ctx.target,
            htu: htu.as_deref(),
            headers: &req.headers,
            body_sha256: &body_sha256,
            client_ip: None,
        };
        let shown = refusal::Action {
            route: ENDPOINT,
            method: "POST",
            overrides: "",
            target: &ctx.target,
            htu: htu.as_deref().unwrap_or(&external),
            body_sha256: &body_hex,
        };
        let fresh = |c: Challenge| Fresh {
            action: shown.describe(c.expires_at),
            nonce: c.nonce,
        };
        let confirmation = match self.confirmer.decide(user, &exchange).await {
            Outcome::Accepted(c) => c,
            Outcome::Challenged(challenge) => {
                self.ledger.decide(&mut record, Decision::Challenged);
                let reply = self.answers.challenge(fresh(challenge));
                return reply::write(session, reply, &ctx.request_id).await;
            }
            Outcome::Rejected {
                reason,
                device,
                challenge,
            } => {
                record.device = device;
                let fresh = challenge.map(fresh);
                return self
                    .refuse_with(session, ctx, record, reason, fresh, "")
                    .await;
            }
        };
        record.device = Some(confirmation.jkt.clone());
        record.confirmation_id = Some(confirmation.id.to_string());
        if !is_id(id) {
            return self
                .refuse(session, ctx, record, Reason::ApprovalUnknown)
                .await;
        }
        let groups = approvals::groups(user, &self.config.session.groups_claim);
        let voter = Voter {
            subject: &subject,
            groups: &groups,
            device: &confirmation.jkt,
        };
        let now = Book::now();
        let changed = match self
            .approvals
            .book
            .change(id, now, |a| a.vote(&voter, approve, now))
            .await
        {
            Ok(changed) => changed,
            Err(missing) => {
                return self.refuse(session, ctx, record, missing.reason()).await;
            }
        };
        let (approval, before) = (changed.approval, changed.before);
        if changed.expired_now {
            self.audit_expired(&approval);
        }
        let voted = match changed.outcome {
            Ok(voted) => voted,
            Err(reason) => return self.refuse(session, ctx, record, reason).await,
        };
        record.approval_status = Some(approval.status.as_str());
        let metrics = self.ledger.metrics();
        record.event = match voted {
            Voted::Again => None,
            Voted::Counted | Voted::Approved => Some(Event::ApprovalGranted),
            Voted::Denied => Some(Event::ApprovalDenied),
        };
        if record.event.is_some() && !self.ledger.write(&record) {
            // Fail closed: a decision that is not on record is undone.
            match self.approvals.book.restore(&before, &approval).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!("unaudited approval decision changed meanwhile"),
                Err(e) => tracing::warn!(error = %e, "unaudited approval decision not undone"),
            }
            record.event = None;
            record.approval_status = None;
            return self
                .refuse(session, ctx, record, Reason::AuditUnavailable)
                .await;
        }
        match voted {
            Voted::Again => {}
            Voted::Counted | Voted::Approved => {
                tracing::info!(route = %approval.route, "approval granted")
            }
            Voted::Denied => {
                metrics.approval(&approval.route, "denied");
                tracing::info!(route = %approval.route, "approval denied");
            }
        }
        if voted == Voted::Approved {
            metrics.approval(&approval.route, "approved");
            let waited = approval.approved_at.unwrap_or(now) - approval.created_at;
            metrics.approval_wait.observe(waited as f64 / 1000.0);
        }
        if matches!(voted, Voted::Approved | Voted::Denied) {
            metrics.approvals_pending.dec();
        }
        let body = json!({ "approval": approval.view(), "counted": voted != Voted::Again });
        reply::write(session, Reply::json(200, &body), &ctx.request_id).await
    }

    /// Writes `approval_expired` for an approval this gateway found lapsed.
    fn audit_expired(&self, approval: &Approval) {
        let mut record = Record {
            event: Some(Event::ApprovalExpired),
            route: approval.route.clone(),
            method: approval.method.clone(),
            target: approval.target.clone(),
            body_sha256: Some(approval.body_sha256.clone()),
            subject: approval.requester.subject.clone(),
            session: Some(approval.requester.session.clone()),
            device: Some(approval.requester.device.clone()),
            approval_id: Some(approval.id.clone()),
            approval_status: Some(Status::Expired.as_str()),
            ..Record::default()
        };
        record.confirmation_id = Some(approval.confirmation_id.clone());
        self.ledger.write(&record);
        let metrics = self.ledger.metrics();
        metrics.approval(&approval.route, "expired");
        if approval.approved_at.is_none() {
            metrics.approvals_pending.dec();
        }
    }

    /// The action of a confirmed request, as an approval binds it.
    fn approval_action<'a>(c: &'a Confirmed<'a>, session_sha256: &'a str) -> Action<'a> {
        Action {
            route: &c.route.name,
            method: c.req.method.as_str(),
            target: c.target,
            body_sha256: c.body_hex,
            session_sha256,
            device: &c.confirmation.jkt,
        }
    }

    /// The approval an execution names, when it may execute: refused otherwise.
    pub(super) async fn approval_to_execute(
        &self,
        c: &Confirmed<'_>,
        value: &http::HeaderValue,
        record: &mut Record,
    ) -> Result<Approval, Reason> {
        let id = value.to_str().map_err(|_| Reason::ApprovalUnknown)?.trim();
        if !is_id(id) {
            return Err(Reason::ApprovalUnknown);
        }
        record.approval_id = Some(id.to_string());
        let session_sha256 = sha256_hex(&c.user.id);
        let action = Self::approval_action(c, &session_sha256);
        let now = Book::now();
        let book = &self.approvals.book;
        let approval = match book.get(id).await {
            Ok(Some(approval)) => approval,
            Ok(None) => return Err(Reason::ApprovalUnknown),
            Err(_) => return Err(Reason::StoreUnavailable),
        };
        if approval.lapsed(now) {
            if let Ok(Some(expired)) = book.expire(id, now).await {
                self.audit_expired(&expired);
            }
        }
        approval.check_execution(&action, now)?;
        Ok(approval)
    }

    /// Spends an approved approval for this confirmed request: of concurrent executions exactly
    /// one gets it.
    pub(super) async fn spend_approval(
        &self,
        c: &Confirmed<'_>,
        id: &str,
        record: &mut Record,
    ) -> Result<Approval, Reason> {
        let session_sha256 = sha256_hex(&c.user.id);
        let action = Self::approval_action(c, &session_sha256);
        let cid = c.confirmation.id.to_string();
        let now = Book::now();
        let changed = self
            .approvals
            .book
            .change(id, now, |a| a.execute(&action, &cid, now))
            .await
            .map_err(|m| m.reason())?;
        if changed.expired_now {
            self.audit_expired(&changed.approval);
        }
        changed.outcome?;
        let approval = changed.approval;
        record.approval_id = Some(approval.id.clone());
        record.approvers = Some(approval.approver_subjects());
        self.ledger.metrics().approval(&approval.route, "executed");
        Ok(approval)
    }

    /// Records a pending approval for a confirmed request and answers `202`, or (with `Prefer:
    /// wait`) holds the request until it is approved and then executes it.
    pub(super) async fn request_approval(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        rule: &Rule,
        c: &Confirmed<'_>,
        mut record: Record,
        body: Bytes,
    ) -> pingora::Result<()> {
        let session_sha256 = sha256_hex(&c.user.id);
        let action = Self::approval_action(c, &session_sha256);
        let requester = Requester {
            subject: c.user.subject.clone(),
            session: c.user.id_hash(),
            device: c.confirmation.jkt.clone(),
            session_sha256: session_sha256.clone(),
        };
        let cid = c.confirmation.id.to_string();
        let approval = Approval::new(&action, requester, cid.clone(), rule, SystemTime::now());
        let book = &self.approvals.book;
        if let Err(e) = book.create(&approval).await {
            tracing::warn!(error = %e, "approval not recorded: the store failed");
            return self
                .refuse(session, ctx, record, Reason::StoreUnavailable)
                .await;
        }
        record.event = Some(Event::ApprovalRequested);
        record.confirmation_id = Some(cid);
        record.device = Some(c.confirmation.jkt.clone());
        record.approval_id = Some(approval.id.clone());
        record.approval_status = Some(Status::Pending.as_str());
        if !self.ledger.write(&record) {
            // Fail closed: an approval nobody can trace is forgotten.
            if let Err(e) = book.forget(&approval.id).await {
                tracing::warn!(error = %e, "unaudited approval could not be forgotten");
            }
            return self
                .refuse(session, ctx, record, Reason::AuditUnavailable)
                .await;
        }
        let metrics = self.ledger.metrics();
        metrics.approval(&c.route.name, "requested");
        metrics.approvals_pending.inc();
        tracing::info!(route = %c.route.name, "approval requested");
        let location = format!("{APPROVALS_PATH}{}", approval.id);
        let public = self.config.public_origin.as_ref();
        let url = Self::view(ctx).external_uri(public, &location);
        let view = approval.view();
        if let (Some(notify), Some(worker)) = (&rule.notify, &self.approvals.worker) {
            let payload = json!({ "type": "approval.requested", "approval": view, "url": url });
            worker.send(Delivery {
                url: notify.webhook.clone(),
                secret: notify.secret.clone(),
                id: format!("msg_{}", approval.id),
                body: payload.to_string().into_bytes(),
            });
        }
        if let Some(wait) = prefer_wait(&c.req.headers) {
            if let Ok(_waiting) = self.approvals.waiters.clone().try_acquire_owned() {
                if self.wait_for_approval(&approval.id, wait).await {
                    return self
                        .execute_held(session, ctx, c, &approval.id, record, body)
                        .await;
                }
            }
        }
        let reply =
            Reply::json(202, &json!({ "approval": view, "url": url })).with("location", location);
        reply::write(session, reply, &ctx.request_id).await
    }

    /// Waits up to `wait` for the approval to be approved; false when it was not.
    async fn wait_for_approval(&self, id: &str, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            tokio::time::sleep(WAIT_POLL).await;
            match self.approvals.book.get(id).await {
                Ok(Some(a)) if a.status == Status::Approved => return true,
                Ok(Some(a)) if a.status == Status::Pending && !a.lapsed(Book::now()) => {}
                _ => return false,
            }
        }
        false
    }

    /// Executes a request held with `Prefer: wait` whose approval arrived: policy again with the
    /// approval's facts, the approval spent, then forwarded.
    async fn execute_held(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        c: &Confirmed<'_>,
        id: &str,
        mut record: Record,
        body: Bytes,
    ) -> pingora::Result<()> {
        record.event = None;
        record.approval_status = None;
        let approval = match self.approvals.book.get(id).await {
            Ok(Some(a)) => a,
            _ => {
                return self
                    .refuse(session, ctx, record, Reason::StoreUnavailable)
                    .await
            }
        };
        let client_ip = crate::policy::client_address(
            ctx.peer.ip,
            ctx.peer.trusted,
            &c.req.headers,
            &self.config.trusted_proxies,
        );
        let with_approval = Confirmed {
            approval: Some(&approval),
            ..*c
        };
        if let Err(denial) = self.check_policy(&with_approval, &body, client_ip, &mut record) {
            return self.refuse(session, ctx, record, denial.reason).await;
        }
        let spent = match self.spend_approval(c, id, &mut record).await {
            Ok(spent) => spent,
            Err(reason) => return self.refuse(session, ctx, record, reason).await,
        };
        let confirmed = Confirmed {
            approval: Some(&spent),
            ..*c
        };
        self.forward_confirmed(session, ctx, record, confirmed, body)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_an_approval_and_what_to_do_with_it() {
        assert!(matches!(
            endpoint("/.countersign/approvals/abc"),
            Some(Endpoint::Show("abc"))
        ));
        assert!(matches!(
            endpoint("/.countersign/approvals/abc/approve"),
            Some(Endpoint::Vote("abc", true))
        ));
        assert!(matches!(
            endpoint("/.countersign/approvals/abc/deny"),
            Some(Endpoint::Vote("abc", false))
        ));
        assert!(endpoint("/.countersign/approvals/abc/other").is_none());
        assert!(endpoint("/api/x").is_none());
    }

    #[test]
    fn prefer_wait_is_read_and_bounded() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(prefer_wait(&headers), None);
        headers.insert("prefer", "respond-async, wait=10".parse().expect("value"));
        assert_eq!(prefer_wait(&headers), Some(Duration::from_secs(10)));
        headers.insert("prefer", "wait=600".parse().expect("value"));
        assert_eq!(prefer_wait(&headers), Some(Duration::from_secs(60)));
        headers.insert("prefer", "wait=abc".parse().expect("value"));
        assert_eq!(prefer_wait(&headers), None);
    }
}
