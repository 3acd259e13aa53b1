//! The Pingora `ProxyHttp` implementation: a thin sequencer that reads like CONTRACT §3.
//! match route → low? stream it : session → body → confirmation → audit → forward.

use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::Instrument;
use uuid::Uuid;

use crate::audit::{AuditLog, Event, Record};
use crate::browser::{self, Browser};
use crate::config::{Config, UpstreamScheme};
use crate::confirm::{Challenge, Confirmation, Confirmer, Exchange, Outcome};
use crate::forward::{ForwardError, Forwarder, Pending};
use crate::forwarding::{self, ClientView, Framing, Peer};
use crate::htu;
use crate::metrics::{Decision, Metrics, RouteMetrics};
use crate::nonce::Action;
use crate::provenance::{self, Signer};
use crate::reason::Reason;
use crate::reply;
use crate::routes::{Risk, Route};
use crate::session::Session as UserSession;

/// How long a high-impact request body may take to arrive.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// SHA-256 of the empty body.
const EMPTY_SHA256: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// An upstream, ready to connect to.
struct Target {
    peer: HttpPeer,
    /// The upstream's own origin (its configured address).
    origin: String,
}

/// The gateway.
pub struct Gateway {
    config: Arc<Config>,
    targets: HashMap<String, Target>,
    confirmer: Confirmer,
    audit: AuditLog,
    metrics: Arc<Metrics>,
    signer: Arc<Signer>,
    forwarder: Forwarder,
    algs: String,
    route_metrics: HashMap<String, RouteMetrics>,
    browser: Option<Browser>,
}

/// Per-request state.
pub struct RequestCtx {
    route: Option<Arc<Route>>,
    peer: Peer,
    view: Option<ClientView>,
    request_id: String,
    started: Instant,
    span: tracing::Span,
}

/// What a high-impact request has established by the time it is forwarded.
struct Confirmed<'a> {
    req: &'a RequestHeader,
    route: &'a Route,
    user: &'a UserSession,
    confirmation: &'a Confirmation,
    target: &'a str,
    body_hex: &'a str,
    body_sha256: &'a [u8; 32],
}

impl Gateway {
    /// Assembles a gateway from validated parts.
    pub fn new(
        config: Arc<Config>,
        forwarder: Forwarder,
        confirmer: Confirmer,
        audit: AuditLog,
        metrics: Arc<Metrics>,
        signer: Arc<Signer>,
    ) -> Result<Gateway, String> {
        let targets = config
            .upstreams
            .values()
            .map(|u| {
                // Resolved once, here: an unresolvable name stops the start with a clear error.
                let addr = u
                    .address
                    .to_socket_addrs()
                    .map_err(|e| e.to_string())
                    .and_then(|mut a| a.next().ok_or_else(|| "no address".to_string()))
                    .map_err(|e| {
                        format!(
                            "upstreams.{}.address: cannot resolve {}: {e}",
                            u.name, u.address
                        )
                    })?;
                let mut peer = HttpPeer::new(addr, u.tls, u.sni.clone());
                peer.options.connection_timeout = Some(u.connect_timeout);
                peer.options.read_timeout = Some(u.read_timeout);
                peer.options.idle_timeout = Some(Duration::from_secs(60));
                let scheme = if u.tls { "https" } else { "http" };
                let origin = format!("{scheme}://{}", u.address.to_ascii_lowercase());
                Ok((u.name.clone(), Target { peer, origin }))
            })
            .collect::<Result<_, String>>()?;
        let algs = confirmer
            .algs()
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let route_metrics = config
            .routes
            .routes()
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    metrics.for_route(&r.name, r.risk == Risk::High),
                )
            })
            .collect();
        let browser = match (&config.browser, &config.public_origin) {
            (Some(b), Some(public)) => Some(
                Browser::new(
                    b.clone(),
                    public.clone(),
                    confirmer.store().clone(),
                    config.session.binding_ttl,
                )
                .map_err(|e| e.to_string())?,
            ),
            _ => None,
        };
        Ok(Gateway {
            browser,
            route_metrics,
            config,
            targets,
            confirmer,
            audit,
            metrics,
            signer,
            forwarder,
            algs,
        })
    }

    /// The route's metric handles (every configured route has them).
    fn count(&self, route: &str, decision: Decision) {
        if let Some(m) = self.route_metrics.get(route) {
            m.decision(decision);
        }
    }

    fn observe_upstream(&self, route: &str, started: Instant) {
        if let Some(m) = self.route_metrics.get(route) {
            m.upstream.observe(started.elapsed().as_secs_f64());
        }
    }

    fn target(&self, route: &Route) -> pingora::Result<&Target> {
        self.targets
            .get(&route.upstream)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "route names no upstream"))
    }

    fn view(ctx: &RequestCtx) -> &ClientView {
        static UNKNOWN: LazyLock<ClientView> = LazyLock::new(|| ClientView {
            scheme: "http".into(),
            host: None,
            prefix: String::new(),
        });
        ctx.view.as_ref().unwrap_or(&UNKNOWN)
    }

    /// Rewrites `Location`, `Content-Location` and `Refresh` URLs on the upstream's own origin
    /// (its configured address, or the `Host` it was sent) to the origin the client sees.
    fn rewrite_urls(
        &self,
        head: &mut ResponseHeader,
        route: &Route,
        req: &RequestHeader,
        ctx: &RequestCtx,
    ) {
        const URL_HEADERS: [&str; 3] = ["location", "content-location", "refresh"];
        if !URL_HEADERS.iter().any(|h| head.headers.contains_key(*h)) {
            return;
        }
        let Ok(target) = self.target(route) else {
            return;
        };
        let view = Self::view(ctx);
        let mut origins = vec![target.origin.clone()];
        if let Some(host) = req.headers.get("host").and_then(|h| h.to_str().ok()) {
            let scheme = if target.peer.is_tls() {
                "https"
            } else {
                "http"
            };
            origins.push(format!("{scheme}://{}", host.to_ascii_lowercase()));
        }
        let base = view.base(self.config.public_origin.as_ref());
        for name in URL_HEADERS {
            let Some(value) = head.headers.get(name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let rewritten = if name == "refresh" {
                forwarding::rewrite_refresh(value, &origins, &base)
            } else {
                forwarding::rewrite_location(value, &origins, &base)
            };
            if let Some(new) = rewritten {
                let _ = head.insert_header(name, new);
            }
        }
    }

    fn audit_base(&self, req: &RequestHeader, ctx: &RequestCtx) -> Record {
        Record {
            route: ctx
                .route
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_default(),
            method: req.method.as_str().to_string(),
            target: target_of(req),
            client_ip: ctx.peer.ip.map(|ip| ip.to_string()),
            request_id: Some(ctx.request_id.clone()),
            ..Record::default()
        }
    }

    fn write_audit(&self, record: &Record) -> bool {
        match self.audit.append(record) {
            Ok(()) => true,
            Err(e) => {
                self.metrics.audit_failures.inc();
                tracing::error!(error = %e, "audit record could not be written");
                false
            }
        }
    }

    /// Refuses a high-impact request: audit, metrics, response.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        mut record: Record,
        reason: Reason,
        challenge: Option<(Challenge, Value)>,
    ) -> pingora::Result<()> {
        let route = record.route.clone();
        record.event = Some(Event::Rejected);
        record.reason = Some(reason.as_str());
        self.write_audit(&record);
        tracing::info!(route = %route, reason = reason.as_str(), "rejected");
        self.count(&route, Decision::Rejected);
        self.metrics
            .rejections
            .with_label_values(&[&route, reason.as_str()])
            .inc();
        if matches!(reason, Reason::NonceReplay | Reason::JtiReplay) {
            self.metrics
                .replays_blocked
                .with_label_values(&[&route])
                .inc();
        }
        if reason == Reason::BodyTooLarge {
            // The rest of the body was never read: this connection cannot carry another request.
            session.set_keepalive(None);
        }
        self.respond(
            session,
            ctx,
            reason.status(),
            reason.error_code(),
            reason.description(),
            challenge,
        )
        .await
    }

    /// The gateway's own answer to a high-impact request, with the DPoP headers a client needs.
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        status: u16,
        code: &str,
        description: &str,
        challenge: Option<(Challenge, Value)>,
    ) -> pingora::Result<()> {
        let mut headers = vec![("countersign-request-id", ctx.request_id.clone())];
        if matches!(status, 400 | 401) {
            headers.push((
                "www-authenticate",
                format!(
                    r#"DPoP error="{code}", error_description="{description}", algs="{}""#,
                    self.algs
                ),
            ));
            headers.push((
                "access-control-expose-headers",
                "WWW-Authenticate, DPoP-Nonce".to_string(),
            ));
        }
        let mut more = None;
        if let Some((challenge, confirmation)) = challenge {
            headers.push(("dpop-nonce", challenge.nonce));
            more = Some(("confirmation", confirmation));
        }
        reply::error(session, status, code, description, &headers, more).await
    }

    /// The high-impact path: everything is decided before a byte goes upstream.
    async fn confirm_and_forward(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        route: Arc<Route>,
    ) -> pingora::Result<()> {
        let req = session.req_header().clone();
        let mut record = self.audit_base(&req, ctx);

        // 1. Session.
        let user = match self.confirmer.session(&req.headers, ctx.peer.trusted) {
            Ok(user) => user,
            Err(reason) => return self.refuse(session, ctx, record, reason, None).await,
        };
        record.subject = user.subject.clone();
        record.session = Some(user.id_hash());

        // 2. Body, bounded.
        let Some(body) = read_body(session, &req, self.config.confirmation.max_body).await? else {
            return self
                .refuse(session, ctx, record, Reason::BodyTooLarge, None)
                .await;
        };
        let body_sha256: [u8; 32] = Sha256::digest(&body).into();
        let body_hex = hex::encode(body_sha256);
        record.body_sha256 = Some(body_hex.clone());

        // 3. Confirmation; a browser navigation without a proof is held for a passkey instead.
        let external =
            Self::view(ctx).external_uri(self.config.public_origin.as_ref(), req.uri.path());
        let htu = htu::normalize(&external);
        let target = target_of(&req);
        if let Some(browser) = self
            .browser
            .as_ref()
            .filter(|_| browser::is_navigation(&req.headers) && !req.headers.contains_key("dpop"))
        {
            let held = browser::Held {
                route: &route.name,
                method: req.method.as_str(),
                target: &target,
                url: Self::view(ctx).external_uri(self.config.public_origin.as_ref(), &target),
                headers: &req.headers,
                body: &body,
                body_sha256: &body_hex,
            };
            let client_ip = ctx.peer.ip.map(|ip| ip.to_string());
            let answer = browser.hold(held, &user, client_ip, record).await;
            return self.answer(session, ctx, answer).await;
        }
        let exchange = Exchange {
            method: req.method.as_str(),
            target: &target,
            htu: htu.as_deref(),
            headers: &req.headers,
            body_sha256: &body_sha256,
        };
        let describe = |c: &Challenge| {
            json!({
                "route": route.name,
                "method": req.method.as_str(),
                "target": target,
                "htu": htu.as_deref().unwrap_or(&external),
                "body_sha256": body_hex,
                "expires_at": humantime::format_rfc3339_seconds(c.expires_at).to_string(),
            })
        };
        let confirmation = match self.confirmer.decide(&user, &exchange).await {
            Outcome::Accepted(c) => c,
            Outcome::Challenged(challenge) => {
                record.event = Some(Event::Challenged);
                self.write_audit(&record);
                self.count(&route.name, Decision::Challenged);
                let description = "confirmation required: sign this action with the DPoP-Nonce";
                let described = describe(&challenge);
                return self
                    .respond(
                        session,
                        ctx,
                        401,
                        "use_dpop_nonce",
                        description,
                        Some((challenge, described)),
                    )
                    .await;
            }
            Outcome::Rejected {
                reason,
                device,
                challenge,
            } => {
                record.device = device;
                let challenge = challenge.map(|c| {
                    let described = describe(&c);
                    (c, described)
                });
                return self.refuse(session, ctx, record, reason, challenge).await;
            }
        };

        // 4. Audit before forwarding; fail closed.
        record.event = Some(Event::Accepted);
        record.parent_id = confirmation.chain.as_ref().map(|c| c.root.clone());
        record.via = confirmation.chain.as_ref().map(|c| c.parent.clone());
        let confirmed = Confirmed {
            req: &req,
            route: &route,
            user: &user,
            confirmation: &confirmation,
            target: &target,
            body_hex: &body_hex,
            body_sha256: &body_sha256,
        };
        self.forward_confirmed(session, ctx, record, confirmed, body, None)
            .await
    }

    /// Forwards a confirmed request (a DPoP one, or a held one a passkey confirmed) after its
    /// `accepted` record is written, and relays the response; `set_cookie` is added to it.
    async fn forward_confirmed(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        mut record: Record,
        confirmed: Confirmed<'_>,
        body: Bytes,
        set_cookie: Option<String>,
    ) -> pingora::Result<()> {
        let (route, confirmation) = (confirmed.route, confirmed.confirmation);
        record.confirmation_id = Some(confirmation.id.to_string());
        record.device = Some(confirmation.jkt.clone());
        if !self.write_audit(&record) {
            return self
                .refuse(session, ctx, record, Reason::AuditUnavailable, None)
                .await;
        }
        tracing::info!(route = %route.name, confirmation_id = %confirmation.id, "accepted");
        self.count(&route.name, Decision::Accepted);

        // 5. Forward, then relay the response with its rewrites.
        let upstream_req = self.confirmed_request(&confirmed, ctx)?;
        let upstream = self.target(route)?;
        let started = Instant::now();
        let sent = self
            .forwarder
            .send(&upstream.peer, upstream_req, body)
            .await;
        let (status, outcome) = match sent {
            Ok(mut pending) => {
                let status = pending.head.status.as_u16();
                self.finish_head(&mut pending, &confirmed, ctx).await;
                if let Some(cookie) = set_cookie {
                    let _ = pending.head.append_header("set-cookie", cookie);
                }
                let relayed = self.forwarder.relay(session, &upstream.peer, pending).await;
                (
                    Some(status),
                    relayed.map_err(|e| match e {
                        ForwardError::Relay(e) | ForwardError::Upstream(_, e) => e,
                    }),
                )
            }
            Err(ForwardError::Upstream(status, e)) => {
                tracing::warn!(error = %e, route = %route.name, "upstream failed");
                let (code, text) = upstream_error(status);
                let headers = [
                    ("countersign-confirmation-id", confirmation.id.to_string()),
                    ("countersign-request-id", ctx.request_id.clone()),
                ];
                (
                    None,
                    reply::error(session, status, code, text, &headers, None).await,
                )
            }
            Err(ForwardError::Relay(e)) => (None, Err(e)),
        };
        self.observe_upstream(&route.name, started);
        record.event = Some(Event::Completed);
        record.upstream_status = status;
        record.duration_ms = Some(ctx.started.elapsed().as_millis() as u64);
        self.write_audit(&record);
        outcome
    }

    /// Writes a browser step's answer and its audit record.
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        answer: browser::Answer,
    ) -> pingora::Result<()> {
        if let Some(mut record) = answer.record {
            record.request_id = Some(ctx.request_id.clone());
            record.client_ip = record
                .client_ip
                .or_else(|| ctx.peer.ip.map(|ip| ip.to_string()));
            let decision = match record.event {
                Some(Event::Challenged) => Some(Decision::Challenged),
                Some(Event::Rejected) => Some(Decision::Rejected),
                _ => None,
            };
            self.write_audit(&record);
            if let Some(decision) = decision {
                self.count(&record.route, decision);
            }
            if let Some(reason) = record.reason.filter(|_| !record.route.is_empty()) {
                self.metrics
                    .rejections
                    .with_label_values(&[&record.route, reason])
                    .inc();
                if reason == Reason::NonceReplay.as_str() {
                    self.metrics
                        .replays_blocked
                        .with_label_values(&[&record.route])
                        .inc();
                }
            }
        }
        let mut head = ResponseHeader::build(answer.status, Some(answer.headers.len() + 2))?;
        for (name, value) in answer.headers {
            head.append_header(name, value)?;
        }
        head.insert_header("content-length", answer.body.len())?;
        head.insert_header("countersign-request-id", ctx.request_id.as_str())?;
        session.write_response_header(Box::new(head), false).await?;
        session
            .write_response_body(Some(Bytes::from(answer.body)), true)
            .await
    }

    /// The browser confirmation steps that come before routing: the confirmation origin (by
    /// `Host`), the resume endpoint, and the navigation that carries a resume cookie. True when
    /// the request was answered.
    async fn browser_step(&self, session: &mut Session, ctx: &RequestCtx) -> pingora::Result<bool> {
        let Some(browser) = &self.browser else {
            return Ok(false);
        };
        let req = session.req_header().clone();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or(req.uri.authority().map(|a| a.as_str()));
        let local = session.server_addr().and_then(|a| a.as_inet()).copied();
        if browser.serves(host, local) {
            // The confirmation origin never sees the app's session: nothing here reads it.
            let body = read_body(session, &req, browser::MAX_CEREMONY_BODY)
                .await?
                .unwrap_or_default();
            let answer = browser
                .confirmation_origin(req.method.as_str(), req.uri.path(), &body)
                .await;
            self.answer(session, ctx, answer).await?;
            return Ok(true);
        }
        let user = || self.confirmer.session(&req.headers, ctx.peer.trusted);
        if let Some(token) = browser.resume_token(req.uri.path()) {
            let answer = browser.resume(token, user()).await;
            self.answer(session, ctx, answer).await?;
            return Ok(true);
        }
        let Some(cookie) = Browser::resume_cookie(&req.headers) else {
            return Ok(false);
        };
        let resumed = match browser.arrive(&cookie, req.uri.path(), user()).await {
            Ok(resumed) => resumed,
            Err(answer) => {
                self.answer(session, ctx, answer).await?;
                return Ok(true);
            }
        };
        let Ok(user) = user() else {
            return Ok(false);
        };
        let hold = &resumed.hold;
        let Some(route) = self
            .config
            .routes
            .routes()
            .iter()
            .find(|r| r.name == hold.route)
            .cloned()
        else {
            // The config changed under the hold: nothing to forward it to (fail closed).
            let answer = browser.gone(resumed.record);
            self.answer(session, ctx, answer).await?;
            return Ok(true);
        };
        let mut held = RequestHeader::build(hold.method.as_str(), hold.target.as_bytes(), None)?;
        for (name, value) in hold.headers() {
            if let Ok(value) = http::HeaderValue::from_bytes(&value) {
                held.append_header(name.to_string(), value)?;
            }
        }
        let body = Bytes::from(hold.body());
        let body_sha256: [u8; 32] = Sha256::digest(&body).into();
        let confirmation = Confirmation {
            id: Uuid::now_v7(),
            jkt: resumed.device.clone(),
            chain: None,
        };
        let mut record = resumed.record;
        record.request_id = Some(ctx.request_id.clone());
        let confirmed = Confirmed {
            req: &held,
            route: &route,
            user: &user,
            confirmation: &confirmation,
            target: &hold.target,
            body_hex: &hold.body_sha256,
            body_sha256: &body_sha256,
        };
        self.forward_confirmed(
            session,
            ctx,
            record,
            confirmed,
            body,
            Some(resumed.clear_cookie),
        )
        .await?;
        Ok(true)
    }

    /// Rewrites the response head of a confirmed request: URLs, the confirmation id, a session
    /// rotation carry-over and, for a redirect to another high-impact action, a continuation nonce.
    async fn finish_head(&self, pending: &mut Pending, c: &Confirmed<'_>, ctx: &RequestCtx) {
        let head = &mut pending.head;
        self.rewrite_urls(head, c.route, c.req, ctx);
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

        let status = head.status.as_u16();
        if !matches!(status, 301 | 302 | 303 | 307 | 308) {
            return;
        }
        let Some(location) = head.headers.get("location").and_then(|v| v.to_str().ok()) else {
            return;
        };
        let base = Self::view(ctx).base(self.config.public_origin.as_ref());
        let Some(next) = forwarding::gateway_target(location, &base, c.req.uri.path()) else {
            return;
        };
        // RFC 9110 §15.4: 301/302/303 are followed with GET and no body; 307/308 repeat the request.
        let (method, body_sha256) = if status >= 307 {
            (c.req.method.as_str(), c.body_sha256)
        } else {
            ("GET", &EMPTY_SHA256)
        };
        let Ok(next_method) = method.parse::<http::Method>() else {
            return;
        };
        let path = next.split('?').next().unwrap_or("/");
        let leads_to_high = self
            .config
            .routes
            .lookup(&next_method, path)
            .is_some_and(|r| r.risk == Risk::High);
        if !leads_to_high {
            return;
        }
        let follow_up = Action {
            session_id: &session_id,
            method,
            target: &next,
            body_sha256,
        };
        match self
            .confirmer
            .continuation(c.confirmation, &follow_up)
            .await
        {
            Ok(challenge) => {
                let _ = head.insert_header("dpop-nonce", challenge.nonce);
                let _ = head.insert_header(
                    "access-control-expose-headers",
                    "DPoP-Nonce, Countersign-Confirmation-Id",
                );
            }
            Err(reason) => tracing::warn!(reason = reason.as_str(), "no continuation nonce issued"),
        }
    }

    /// The request head a confirmed request is forwarded with.
    fn confirmed_request(
        &self,
        c: &Confirmed<'_>,
        ctx: &RequestCtx,
    ) -> pingora::Result<RequestHeader> {
        let mut up = c.req.clone();
        forwarding::strip_request(&mut up, Framing::Buffered);
        forwarding::set_forwarded(&mut up, ctx.peer, Self::view(ctx));
        self.rewrite_authorization(&mut up)?;
        let cid = c.confirmation.id.to_string();
        let sid_hash = c.user.id_hash();
        let iss = self
            .config
            .public_origin
            .as_ref()
            .map_or_else(|| "countersign".to_string(), |o| o.origin());
        let chain = c.confirmation.chain.as_ref();
        let token = self.signer.token(provenance::Claims {
            iss: &iss,
            iat: 0,
            exp: 0,
            cid: &cid,
            parent: chain.map(|ch| ch.root.as_str()),
            via: chain.map(|ch| ch.parent.as_str()),
            sub: c.user.subject.as_deref(),
            sid_hash: &sid_hash,
            jkt: &c.confirmation.jkt,
            htm: c.req.method.as_str(),
            target: c.target,
            body_sha256: c.body_hex,
            route: &c.route.name,
        });
        up.insert_header("countersign-confirmation-id", cid)?;
        if let Some(sub) = &c.user.subject {
            up.insert_header("countersign-subject", sub.as_str())?;
        }
        up.insert_header("countersign-device", c.confirmation.jkt.as_str())?;
        up.insert_header("countersign-provenance", token)?;
        Ok(up)
    }

    fn rewrite_authorization(&self, up: &mut RequestHeader) -> pingora::Result<()> {
        if self.config.session.upstream_scheme != UpstreamScheme::Bearer {
            return Ok(());
        }
        let rewritten = up
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("dpop"))
            .map(|(_, token)| format!("Bearer {}", token.trim_start()));
        if let Some(value) = rewritten {
            up.insert_header(http::header::AUTHORIZATION, value)?;
        }
        Ok(())
    }
}

fn upstream_error(status: u16) -> (&'static str, &'static str) {
    if status == 504 {
        ("upstream_timeout", "the upstream did not answer in time")
    } else {
        ("bad_gateway", "the upstream could not be reached")
    }
}

/// The request target in origin-form, exactly as received.
fn target_of(req: &RequestHeader) -> String {
    req.uri
        .path_and_query()
        .map_or_else(|| req.uri.path().to_string(), |pq| pq.as_str().to_string())
}

/// Reads the whole body up to `max` bytes; `None` when it is larger. Answers
/// `Expect: 100-continue` only for a body that may fit.
async fn read_body(
    session: &mut Session,
    req: &RequestHeader,
    max: usize,
) -> pingora::Result<Option<Bytes>> {
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Ok(None);
    }
    let expects_continue = req
        .headers
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects_continue {
        // Writing the 100 before the body is read must not cost the connection its keep-alive.
        session.set_close_on_response_before_downstream_finish(false);
        session.write_continue_response().await?;
        session.set_close_on_response_before_downstream_finish(true);
    }
    let mut body = BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
    let deadline = tokio::time::Instant::now() + BODY_READ_TIMEOUT;
    loop {
        let chunk = tokio::time::timeout_at(deadline, session.read_request_body())
            .await
            .map_err(|_| {
                Error::explain(ErrorType::ReadTimedout, "request body read timed out")
            })??;
        match chunk {
            Some(chunk) => {
                if body.len() + chunk.len() > max {
                    return Ok(None);
                }
                body.extend_from_slice(&chunk);
            }
            None => return Ok(Some(body.freeze())),
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            route: None,
            peer: Peer {
                ip: None,
                trusted: false,
            },
            view: None,
            request_id: Uuid::now_v7().simple().to_string(),
            started: Instant::now(),
            span: tracing::Span::none(),
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.peer = Peer::new(ip, &self.config.trusted_proxies);
        let req = session.req_header();
        ctx.view = Some(ClientView::of(&req.headers, &req.uri, ctx.peer));
        if self.browser_step(session, ctx).await? {
            return Ok(true);
        }
        let req = session.req_header();
        let route = self
            .config
            .routes
            .lookup(&req.method, req.uri.path())
            .cloned();
        ctx.span = tracing::info_span!(
            "request",
            request_id = %ctx.request_id,
            method = %req.method,
            route = route.as_ref().map_or("", |r| r.name.as_str()),
        );
        let Some(route) = route else {
            let headers = [("countersign-request-id", ctx.request_id.clone())];
            reply::error(
                session,
                404,
                "not_found",
                "no route matches this request",
                &headers,
                None,
            )
            .await?;
            return Ok(true);
        };
        ctx.route = Some(route.clone());
        match route.risk {
            Risk::Low => {
                self.count(&route.name, Decision::Passthrough);
                Ok(false)
            }
            Risk::High => {
                let span = ctx.span.clone();
                self.confirm_and_forward(session, ctx, route)
                    .instrument(span)
                    .await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route selected"))?;
        Ok(Box::new(self.target(route)?.peer.clone()))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        forwarding::strip_request(upstream, Framing::Streamed);
        forwarding::set_forwarded(upstream, ctx.peer, Self::view(ctx));
        self.rewrite_authorization(upstream)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        head: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(route) = ctx.route.clone() {
            self.rewrite_urls(head, &route, session.req_header(), ctx);
        }
        head.insert_header("countersign-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let status = match e.esource() {
            pingora::ErrorSource::Upstream => crate::forward::status_for(e),
            pingora::ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            _ => match e.etype() {
                ErrorType::ConnectTimedout => 504,
                ErrorType::ConnectRefused | ErrorType::ConnectError | ErrorType::ConnectNoRoute => {
                    502
                }
                _ => 500,
            },
        };
        if status > 0 {
            let (code, text) = match status {
                502 | 504 => upstream_error(status),
                400 => ("invalid_request", "the request could not be read"),
                _ => (
                    "internal_error",
                    "the gateway failed to handle this request",
                ),
            };
            let headers = [("countersign-request-id", ctx.request_id.clone())];
            if let Err(err) = reply::error(session, status, code, text, &headers, None).await {
                tracing::debug!(parent: &ctx.span, error = %err, "could not send error response");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let Some(route) = ctx.route.as_ref().filter(|r| r.risk == Risk::Low) else {
            return;
        };
        self.observe_upstream(&route.name, ctx.started);
        if self.config.audit.passthrough {
            let mut record = self.audit_base(session.req_header(), ctx);
            record.event = Some(Event::Passthrough);
            record.upstream_status = session.response_written().map(|h| h.status.as_u16());
            record.duration_ms = Some(ctx.started.elapsed().as_millis() as u64);
            self.write_audit(&record);
        }
        if let Some(e) = e {
            tracing::debug!(parent: &ctx.span, error = %e, "passthrough ended with an error");
        }
    }
}
