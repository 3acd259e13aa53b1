//! Forwarding what the gateway read whole (docs/protocol.md, "Forwarding and provenance"): the
//! head a confirmed request goes upstream with (its `Countersign-*` headers and provenance token),
//! the buffered relay through the gateway's own pool, and the response head a confirmed request
//! gets back (URLs, confirmation id, a session rotation carried over, a continuation nonce).

use std::time::Instant;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

use super::{Gateway, RequestCtx};
use crate::audit::{Event, Record};
use crate::body::BodyRead;
use crate::confirm::Confirmation;
use crate::continuation::{self, Answered};
use crate::decision::Decision;
use crate::forwarding::{self, Framing};
use crate::nonce::Action;
use crate::provenance;
use crate::reason::Reason;
use crate::relay::{Pending, RelayError};
use crate::reply::{self, Reply};
use crate::routes::{Risk, Route};
use crate::session::Session as UserSession;

/// What a high-impact request has established by the time it is forwarded.
#[derive(Clone, Copy)]
pub(super) struct Confirmed<'a> {
    pub req: &'a RequestHeader,
    pub route: &'a Route,
    pub user: &'a UserSession,
    pub confirmation: &'a Confirmation,
    pub target: &'a str,
    pub body_hex: &'a str,
    pub body_sha256: &'a [u8; 32],
    /// A `Set-Cookie` the response also carries (the spent browser resume cookie).
    pub set_cookie: Option<&'a str>,
    /// The approval this request executes (a route with `approval:`).
    pub approval: Option<&'a crate::approvals::Approval>,
}

impl Gateway {
    /// Forwards a confirmed request (a DPoP one, or a held one a passkey confirmed) once its
    /// `accepted` record is written, and relays the response.
    pub(super) async fn forward_confirmed(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        mut record: Record,
        confirmed: Confirmed<'_>,
        body: Bytes,
    ) -> pingora::Result<()> {
        record.confirmation_id = Some(confirmed.confirmation.id.to_string());
        record.device = Some(confirmed.confirmation.jkt.clone());
        let enrolment = confirmed.confirmation.enrolment.clone();
        record.enrolment = record.enrolment.take().or(enrolment);
        if !self.ledger.decide(&mut record, Decision::Accepted) {
            return self
                .refuse(session, ctx, record, Reason::AuditUnavailable)
                .await;
        }
        let upstream_req = self.confirmed_request(&confirmed, ctx)?;
        let route = confirmed.route;
        self.forward_buffered(
            session,
            ctx,
            route,
            upstream_req,
            body,
            Some(&confirmed),
            record,
        )
        .await
    }

    /// Forwards a low-risk request whose body routing already read.
    pub(super) async fn forward_read(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        route: &Route,
        read: BodyRead,
    ) -> pingora::Result<()> {
        let req = session.req_header().clone();
        let record = self.audit_base(&req, ctx);
        let body = match read.complete(Reason::BodyTooLargeToRoute) {
            Ok(body) => body,
            Err(reason) => return self.refuse(session, ctx, record, reason).await,
        };
        self.ledger.count(&route.name, Decision::Passthrough);
        let upstream_req = self.plain_request(&req, ctx)?;
        self.forward_buffered(session, ctx, route, upstream_req, body, None, record)
            .await
    }

    /// The head a request is forwarded with when it is not a confirmed one.
    pub(super) fn plain_request(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
    ) -> pingora::Result<RequestHeader> {
        let mut up = req.clone();
        forwarding::strip_request(&mut up, Framing::Buffered);
        forwarding::set_forwarded(&mut up, ctx.peer, Self::view(ctx));
        forwarding::rewrite_authorization(&mut up, self.config.session.upstream_scheme)?;
        Ok(up)
    }

    /// The head a confirmed request is forwarded with: the plain one, with the confirmation's
    /// headers and its signed provenance.
    fn confirmed_request(
        &self,
        c: &Confirmed<'_>,
        ctx: &RequestCtx,
    ) -> pingora::Result<RequestHeader> {
        let mut up = self.plain_request(c.req, ctx)?;
        let cid = c.confirmation.id.to_string();
        let sid_hash = c.user.id_hash();
        let iss = self
            .config
            .public_origin
            .as_ref()
            .map_or_else(|| "countersign".to_string(), |o| o.origin());
        let chain = c.confirmation.chain.as_ref();
        let approvers = c.approval.map(|a| a.approver_subjects());
        let token = self.signer.token(&provenance::Claims {
            iss: &iss,
            cid: &cid,
            parent: chain.map(|ch| ch.root.as_str()),
            via: chain.map(|ch| ch.parent.as_str()),
            sub: c.user.subject.as_deref(),
            htm_override: (!ctx.overrides.is_empty()).then_some(ctx.overrides.as_str()),
            sid_hash: &sid_hash,
            jkt: &c.confirmation.jkt,
            htm: c.req.method.as_str(),
            target: c.target,
            body_sha256: c.body_hex,
            route: &c.route.name,
            approval_id: c.approval.map(|a| a.id.as_str()),
            approvers: approvers.as_deref(),
        });
        up.insert_header("countersign-confirmation-id", cid)?;
        if let Some(sub) = &c.user.subject {
            up.insert_header("countersign-subject", sub.as_str())?;
        }
        up.insert_header("countersign-device", c.confirmation.jkt.as_str())?;
        up.insert_header("countersign-provenance", token)?;
        Ok(up)
    }

    /// Sends a buffered request through the gateway's own connection pool, relays the response
    /// with its rewrites and, for a high-impact request, writes the `completed` record.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn forward_buffered(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        route: &Route,
        mut upstream_req: RequestHeader,
        body: Bytes,
        confirmed: Option<&Confirmed<'_>>,
        mut record: Record,
    ) -> pingora::Result<()> {
        let upstream = self.upstreams.get(&route.upstream)?;
        if !upstream.keepalive {
            upstream_req.insert_header(http::header::CONNECTION, "close")?;
        }
        let started = Instant::now();
        let sent = self.relay.send(&upstream.peer, upstream_req, body).await;
        let (status, outcome) = match sent {
            Ok(mut pending) => {
                let status = pending.head.status.as_u16();
                match confirmed {
                    Some(c) => self.finish_head(&mut pending, c, ctx).await,
                    None => {
                        self.rewrite_urls(&mut pending.head, route, session.req_header(), ctx);
                        let _ = pending
                            .head
                            .insert_header("countersign-request-id", ctx.request_id.as_str());
                    }
                }
                let relayed = self.relay.relay(session, &upstream.peer, pending).await;
                (
                    Some(status),
                    relayed.map_err(|e| match e {
                        RelayError::Relay(e) | RelayError::Upstream(_, e) => e,
                    }),
                )
            }
            Err(RelayError::Upstream(status, e)) => {
                tracing::warn!(error = %e, route = %route.name, "upstream failed");
                let mut reply = Reply::failure(status);
                if let Some(c) = confirmed {
                    let cid = c.confirmation.id.to_string();
                    reply = reply.with("countersign-confirmation-id", cid);
                }
                (None, reply::write(session, reply, &ctx.request_id).await)
            }
            Err(RelayError::Relay(e)) => (None, Err(e)),
        };
        // Streamed low-risk requests are counted in `logging`; these never pass there.
        self.ledger.upstream_answer(&route.name, status);
        if route.risk == Risk::High {
            // Low-risk requests are measured and audited in `logging`, like streamed ones.
            self.ledger.upstream_latency(&route.name, started);
            record.upstream_status = status;
            record.duration_ms = Some(ctx.started.elapsed().as_millis() as u64);
            self.ledger.finish(&mut record, Event::Completed);
        }
        outcome
    }

    /// Rewrites `Location`, `Content-Location` and `Refresh` URLs on the route's upstream origin
    /// to the origin the client sees.
    pub(super) fn rewrite_urls(
        &self,
        head: &mut ResponseHeader,
        route: &Route,
        req: &RequestHeader,
        ctx: &RequestCtx,
    ) {
        let Ok(upstream) = self.upstreams.get(&route.upstream) else {
            return;
        };
        let sent_host = req.headers.get("host").and_then(|h| h.to_str().ok());
        let base = || Self::view(ctx).base(self.config.public_origin.as_ref());
        upstream.rewrite_urls(head, sent_host, base);
    }

    /// Rewrites the response head of a confirmed request: URLs, the confirmation id, a session
    /// rotation carry-over and, for a redirect to another high-impact action, a continuation nonce
    /// (else, for a proof that signed its action, the session's next open nonce).
    async fn finish_head(&self, pending: &mut Pending, c: &Confirmed<'_>, ctx: &RequestCtx) {
        let head = &mut pending.head;
        self.rewrite_urls(head, c.route, c.req, ctx);
        if let Some(cookie) = c.set_cookie {
            let _ = head.append_header("set-cookie", cookie);
        }
        let _ = head.insert_header("countersign-confirmation-id", c.confirmation.id.to_string());
        let _ = head.insert_header("countersign-request-id", ctx.request_id.as_str());

        // A rotated session cookie keeps the binding: this response answers a confirmed request
        // of the bound device (session-fixation safe: nothing else carries a binding over).
        let mut session_id = c.user.id.clone();
        if let Some(rotated) = self.confirmer.sessions().rotated(&head.headers, c.user) {
            match self
                .confirmer
                .carry_binding(&rotated, &c.confirmation.jkt)
                .await
            {
                Ok(()) => session_id = rotated,
                Err(reason) => tracing::warn!(
                    reason = reason.as_str(),
                    "session rotation not carried over"
                ),
            }
        }

        let nonce = match self.continuation_nonce(head, c, ctx, &session_id).await {
            Some(nonce) => Some(nonce),
            // One round trip: the client that signed its action gets the session's next nonce.
            None if c.confirmation.next_nonce => {
                match self.confirmer.open_nonce(&session_id, c.confirmation).await {
                    Ok(challenge) => Some(challenge.nonce),
                    Err(reason) => {
                        tracing::warn!(reason = reason.as_str(), "no next nonce issued");
                        None
                    }
                }
            }
            None => None,
        };
        if let Some(nonce) = nonce {
            let _ = head.insert_header("dpop-nonce", nonce);
            let _ = head.insert_header(
                "access-control-expose-headers",
                "DPoP-Nonce, Countersign-Confirmation-Id",
            );
        }
    }

    /// For a redirect to another high-impact action, a continuation nonce bound to the follow-up.
    async fn continuation_nonce(
        &self,
        head: &ResponseHeader,
        c: &Confirmed<'_>,
        ctx: &RequestCtx,
        session_id: &str,
    ) -> Option<String> {
        let location = head.headers.get("location").and_then(|v| v.to_str().ok())?;
        let base = Self::view(ctx).base(self.config.public_origin.as_ref());
        let answered = Answered {
            method: c.req.method.as_str(),
            target: c.target,
            body_sha256: c.body_sha256,
        };
        let status = head.status.as_u16();
        let routes = &self.config.routes;
        let next = continuation::follow_up(status, location, &base, answered, routes)?;
        let follow_up = Action {
            session_id,
            method: next.method,
            overrides: "",
            target: &next.target,
            body_sha256: next.body_sha256,
        };
        match self
            .confirmer
            .continuation(c.confirmation, &follow_up)
            .await
        {
            Ok(challenge) => Some(challenge.nonce),
            Err(reason) => {
                tracing::warn!(reason = reason.as_str(), "no continuation nonce issued");
                None
            }
        }
    }
}
