//! The high-impact path (docs/protocol.md, "The exchange"): session → body → confirmation (or a
//! browser hold) → policy and live risk → audit, all before a byte goes upstream; observe mode
//! forwards unconfirmed requests with the reason they would have been refused.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use sha2::{Digest, Sha256};

use super::forward::Confirmed;
use super::{Gateway, RequestCtx};
use crate::audit::Record;
use crate::body::{read_body, BodyRead};
use crate::browser;
use crate::confirm::{Challenge, Exchange, Outcome};
use crate::decision::Decision;
use crate::htu;
use crate::policy::{self, Denial};
use crate::reason::Reason;
use crate::refusal::{self, Fresh};
use crate::reply;
use crate::routes::Route;

impl Gateway {
    /// Decides a high-impact request in full, then forwards it. `read` is the body when routing
    /// already read it.
    pub(super) async fn confirm_and_forward(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        route: Arc<Route>,
        read: Option<BodyRead>,
    ) -> pingora::Result<()> {
        let req = session.req_header().clone();
        let mut record = self.audit_base(&req, ctx);

        // A person in a browser is answered with pages; an API client with the DPoP exchange.
        let navigation = browser::is_navigation(&req.headers) && !req.headers.contains_key("dpop");
        // A route that needs approvals never holds a navigation: a passkey confirmation would
        // resume it straight to the upstream, around its approvers.
        let browser = self
            .browser
            .as_ref()
            .filter(|_| navigation && route.approval.is_none());

        // 1. Session.
        let user = match self.confirmer.session(&req.headers, ctx.peer.trusted) {
            Ok(user) => user,
            Err(reason) if !route.enforce => {
                return self
                    .observe(session, ctx, &route, record, reason, read)
                    .await
            }
            Err(reason) => match browser {
                Some(browser) => {
                    let answer = browser.refusal(reason, record);
                    return self.answer(session, ctx, answer).await;
                }
                None => return self.refuse(session, ctx, record, reason).await,
            },
        };
        record.subject = user.subject.clone();
        record.session = Some(user.id_hash());

        // 2. Body, bounded.
        let body = match self
            .whole_body(session, &req, read)
            .await?
            .complete(Reason::BodyTooLarge)
        {
            Ok(body) => body,
            Err(reason) => return self.refuse(session, ctx, record, reason).await,
        };
        let body_sha256: [u8; 32] = Sha256::digest(&body).into();
        let body_hex = hex::encode(body_sha256);
        record.body_sha256 = Some(body_hex.clone());
        let unconfirmed = |body: Bytes| Some(BodyRead::Complete(body));
        if !route.enforce && !req.headers.contains_key("dpop") {
            return self
                .observe(
                    session,
                    ctx,
                    &route,
                    record,
                    Reason::Unconfirmed,
                    unconfirmed(body),
                )
                .await;
        }

        // 3. Confirmation; a browser navigation without a proof is held for a passkey instead.
        let view = Self::view(ctx);
        let public = self.config.public_origin.as_ref();
        if let Some(browser) = browser {
            let held = browser::Held {
                route: &route.name,
                method: req.method.as_str(),
                target: &ctx.target,
                url: view.external_uri(public, &ctx.target),
                headers: &req.headers,
                body: &body,
                body_sha256: &body_hex,
            };
            let client_ip = ctx.peer.ip.map(|ip| ip.to_string());
            let answer = browser.hold(held, &user, client_ip, record).await;
            return self.answer(session, ctx, answer).await;
        }
        let external = view.external_uri(public, &ctx.target);
        let htu = htu::normalize(&external);
        let client_ip = policy::client_address(
            ctx.peer.ip,
            ctx.peer.trusted,
            &req.headers,
            &self.config.trusted_proxies,
        );
        let exchange = Exchange {
            method: req.method.as_str(),
            overrides: &ctx.overrides,
            target: &ctx.target,
            htu: htu.as_deref(),
            headers: &req.headers,
            body_sha256: &body_sha256,
            client_ip,
        };
        let shown = refusal::Action {
            route: &route.name,
            method: req.method.as_str(),
            overrides: &ctx.overrides,
            target: &ctx.target,
            htu: htu.as_deref().unwrap_or(&external),
            body_sha256: &body_hex,
        };
        let fresh = |c: Challenge| Fresh {
            action: shown.describe(c.expires_at),
            nonce: c.nonce,
        };
        let confirmation = match self.confirmer.decide(&user, &exchange).await {
            Outcome::Accepted(c) => c,
            Outcome::Rejected { reason, .. } if !route.enforce => {
                return self
                    .observe(session, ctx, &route, record, reason, unconfirmed(body))
                    .await;
            }
            Outcome::Challenged(_) if !route.enforce => {
                let reason = Reason::Unconfirmed;
                return self
                    .observe(session, ctx, &route, record, reason, unconfirmed(body))
                    .await;
            }
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

        // 4. Policy and live risk at the time of use (RFC 9470 step-up, network change, Cedar).
        record.device = Some(confirmation.jkt.clone());
        let confirmed = Confirmed {
            req: &req,
            route: &route,
            user: &user,
            confirmation: &confirmation,
            target: &ctx.target,
            body_hex: &body_hex,
            body_sha256: &body_sha256,
            set_cookie: None,
            approval: None,
        };
        // A route with `approval:`: the execution of an approved request names its approval.
        let approval_header = req.headers.get(super::approval_step::APPROVAL_HEADER);
        let execution = match (&route.approval, approval_header) {
            (Some(_), Some(value)) => {
                match self
                    .approval_to_execute(&confirmed, value, &mut record)
                    .await
                {
                    Ok(approval) => Some(approval),
                    Err(reason) => {
                        record.confirmation_id = Some(confirmation.id.to_string());
                        return self.refuse(session, ctx, record, reason).await;
                    }
                }
            }
            _ => None,
        };
        let confirmed = Confirmed {
            approval: execution.as_ref(),
            ..confirmed
        };
        if let Err(denial) = self.check_policy(&confirmed, &body, client_ip, &mut record) {
            record.confirmation_id = Some(confirmation.id.to_string());
            let mut fresh_nonce = None;
            if denial.reason.status() == 401 {
                // A step-up: the client may retry at once, after signing in again.
                if let Ok(c) = self.confirmer.fresh_challenge(&user, &exchange).await {
                    fresh_nonce = Some(fresh(c));
                }
            }
            let params = denial.challenge.unwrap_or_default();
            return self
                .refuse_with(session, ctx, record, denial.reason, fresh_nonce, &params)
                .await;
        }

        // 5. An approval route records the request for its approvers, or spends the approval.
        let spent;
        let confirmed = match (&route.approval, &execution) {
            (Some(rule), None) => {
                return self
                    .request_approval(session, ctx, rule, &confirmed, record, body)
                    .await
            }
            (Some(_), Some(approval)) => {
                spent = match self
                    .spend_approval(&confirmed, &approval.id, &mut record)
                    .await
                {
                    Ok(spent) => spent,
                    Err(reason) => {
                        record.confirmation_id = Some(confirmation.id.to_string());
                        return self.refuse(session, ctx, record, reason).await;
                    }
                };
                Confirmed {
                    approval: Some(&spent),
                    ..confirmed
                }
            }
            (None, _) => confirmed,
        };

        // 6. Audit before forwarding (fail closed), then relay.
        record.parent_id = confirmation.chain.as_ref().map(|c| c.root.clone());
        record.via = confirmation.chain.as_ref().map(|c| c.parent.clone());
        self.forward_confirmed(session, ctx, record, confirmed, body)
            .await
    }

    /// Policy and live risk over a confirmed request; the determining policies go into its record.
    pub(super) fn check_policy(
        &self,
        c: &Confirmed<'_>,
        body: &[u8],
        client_ip: Option<IpAddr>,
        record: &mut Record,
    ) -> Result<(), Denial> {
        let approvers = c
            .approval
            .map(|a| a.approver_subjects())
            .unwrap_or_default();
        let facts = policy::Facts {
            route: c.route,
            method: c.req.method.as_str(),
            target: c.target,
            content_type: c
                .req
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            body,
            client_ip,
            session: c.user,
            device: &c.confirmation.jkt,
            origin: c.confirmation.origin.as_ref(),
            now: SystemTime::now(),
            approval: c.approval.map(|a| (a.id.as_str(), approvers.as_slice())),
        };
        match self.guard.decide(&facts) {
            Ok(policies) => {
                record.policies = Some(policies).filter(|p| !p.is_empty());
                Ok(())
            }
            Err(mut denial) => {
                record.policies = Some(std::mem::take(&mut denial.policies));
                Err(denial)
            }
        }
    }

    /// The request's body: as routing read it, or read now (bounded by `confirmation.max_body`).
    async fn whole_body(
        &self,
        session: &mut Session,
        req: &RequestHeader,
        read: Option<BodyRead>,
    ) -> pingora::Result<BodyRead> {
        match read {
            Some(read) => Ok(read),
            None => read_body(session, req, self.config.confirmation.max_body).await,
        }
    }

    /// Observe mode: audits the request as `observed` with the reason it would have been
    /// refused, then forwards it unconfirmed. A body too large to read cannot be forwarded.
    async fn observe(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        route: &Route,
        mut record: Record,
        reason: Reason,
        read: Option<BodyRead>,
    ) -> pingora::Result<()> {
        let req = session.req_header().clone();
        let body = match self
            .whole_body(session, &req, read)
            .await?
            .complete(Reason::BodyTooLarge)
        {
            Ok(body) => body,
            Err(reason) => return self.refuse(session, ctx, record, reason).await,
        };
        record.body_sha256 = Some(hex::encode(Sha256::digest(&body)));
        self.ledger.decide(&mut record, Decision::Observed(reason));
        let upstream_req = self.plain_request(&req, ctx)?;
        self.forward_buffered(session, ctx, route, upstream_req, body, None, record)
            .await
    }
}
