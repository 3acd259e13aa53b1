//! The Pingora `ProxyHttp` implementation, a sequencer over the request's journey
//! (docs/protocol.md): one reading of the target → route (methods, path, conditions) → low?
//! stream it : session → body → confirmation (or a browser hold) → policy → audit → forward.

use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::Instrument;
use uuid::Uuid;

use crate::admission;
use crate::audit::{AuditLog, Event, Record};
use crate::body::{read_body, BodyRead};
use crate::browser::{self, Browser};
use crate::conditions::{self, Body, BodyKind, Fields};
use crate::config::{Config, UpstreamScheme};
use crate::confirm::{Challenge, Confirmation, Confirmer, Exchange, Outcome};
use crate::devices;
use crate::forward::{ForwardError, Forwarder, Pending};
use crate::forwarding::{self, ClientView, Framing, Peer};
use crate::htu;
use crate::metrics::{Decision, Metrics, RouteMetrics};
use crate::nonce::Action;
use crate::policy;
use crate::provenance::{self, Signer};
use crate::reason::Reason;
use crate::reply;
use crate::routes::{self, Risk, Route};
use crate::session::Session as UserSession;
use crate::target::{Target as RequestTarget, TargetError};

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
    /// Whether its connections are reused.
    keepalive: bool,
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
    guard: policy::Guard,
    browser: Option<Browser>,
    /// The description of a `no_session` refusal, naming the credential this gateway reads.
    no_session: String,
}

/// Per-request state.
pub struct RequestCtx {
    route: Option<Arc<Route>>,
    /// The one origin-form target routed, bound, audited and forwarded.
    target: String,
    /// The methods the request stands for through overrides, comma-joined.
    overrides: String,
    peer: Peer,
    view: Option<ClientView>,
    request_id: String,
    started: Instant,
    span: tracing::Span,
    /// Status of the upstream's answer on the streamed path.
    upstream_status: Option<u16>,
    _in_flight: crate::metrics::InFlight,
    /// The upstream socket of the streamed path, for quick ACKs while its response arrives.
    upstream_fd: Option<std::os::unix::io::RawFd>,
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
    /// A `Set-Cookie` the response also carries (the spent browser resume cookie).
    set_cookie: Option<&'a str>,
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
                let keepalive = u.keepalive;
                Ok((
                    u.name.clone(),
                    Target {
                        peer,
                        origin,
                        keepalive,
                    },
                ))
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
                    metrics.for_route(&r.name, r.risk == Risk::High, !r.enforce),
                )
            })
            .collect();
        let guard = policy::Guard::new(
            config.policy.clone(),
            config.risk.clone(),
            &config.session.groups_claim,
        );
        let browser = match (&config.browser, &config.public_origin) {
            (Some(b), Some(public)) => Some(
                Browser::new(
                    b.clone(),
                    public.clone(),
                    confirmer.store().clone(),
                    &config.session,
                )
                .map_err(|e| e.to_string())?,
            ),
            _ => None,
        };
        Ok(Gateway {
            no_session: crate::session::missing_description(&config.session.kind),
            browser,
            guard,
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

    fn count_upstream(&self, route: &str, status: Option<u16>) {
        if let Some(m) = self.route_metrics.get(route) {
            m.upstream_response(status);
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
            method_override: (!ctx.overrides.is_empty()).then(|| ctx.overrides.clone()),
            target: ctx.target.clone(),
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

    /// Refuses a request: audit, metrics, response.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        record: Record,
        reason: Reason,
        challenge: Option<(Challenge, Value)>,
    ) -> pingora::Result<()> {
        self.refuse_with(session, ctx, record, reason, challenge, "")
            .await
    }

    /// [`Gateway::refuse`] with more `WWW-Authenticate` parameters (RFC 9470 §3 for a step-up).
    async fn refuse_with(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        mut record: Record,
        reason: Reason,
        challenge: Option<(Challenge, Value)>,
        auth_params: &str,
    ) -> pingora::Result<()> {
        let route = record.route.clone();
        let label = if route.is_empty() { "unrouted" } else { &route };
        record.event = Some(Event::Rejected);
        record.reason = Some(reason.as_str());
        self.write_audit(&record);
        tracing::info!(route = %label, reason = reason.as_str(), "rejected");
        self.count(&route, Decision::Rejected);
        self.metrics
            .rejections
            .with_label_values(&[label, reason.as_str()])
            .inc();
        if matches!(reason, Reason::NonceReplay | Reason::JtiReplay) {
            self.metrics
                .replays_blocked
                .with_label_values(&[label])
                .inc();
        }
        if matches!(
            reason,
            Reason::BodyTooLarge | Reason::BodyTooLargeToRoute | Reason::BodyTimeout
        ) || reason.status() == 400
        {
            // The rest of the body was never read (or the request has no single reading): this
            // connection cannot carry another request.
            session.set_keepalive(None);
        }
        let status = reason.status();
        let description = match reason {
            Reason::NoSession => self.no_session.as_str(),
            _ => reason.description(),
        };
        let mut headers = vec![("countersign-request-id", ctx.request_id.clone())];
        if status == 401 || reason == Reason::MixedSchemes {
            headers.extend(self.authenticate(reason.error_code(), description, auth_params));
        }
        let confirmation = challenge.map(|(challenge, confirmation)| {
            headers.push(("dpop-nonce", challenge.nonce));
            confirmation
        });
        reply::refusal(
            session,
            status,
            reason.error_code(),
            description,
            reason.as_str(),
            &headers,
            confirmation,
        )
        .await
    }

    /// `WWW-Authenticate` (RFC 9449 §7.1) and the CORS exposure a browser client needs.
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

    /// The high-impact path: everything is decided before a byte goes upstream. `read` is the
    /// body when routing already read it.
    async fn confirm_and_forward(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        route: Arc<Route>,
        read: Option<BodyRead>,
    ) -> pingora::Result<()> {
        let req = session.req_header().clone();
        let mut record = self.audit_base(&req, ctx);

        // 1. Session.
        let user = match self.confirmer.session(&req.headers, ctx.peer.trusted) {
            Ok(user) => user,
            Err(reason) if !route.enforce => {
                return self
                    .observe(session, ctx, &route, record, reason, read)
                    .await
            }
            Err(reason) => return self.refuse(session, ctx, record, reason, None).await,
        };
        record.subject = user.subject.clone();
        record.session = Some(user.id_hash());

        // 2. Body, bounded.
        let read = match read {
            Some(read) => read,
            None => read_body(session, &req, self.config.confirmation.max_body).await?,
        };
        let body = match read {
            BodyRead::Complete(body) => body,
            BodyRead::TooLarge => {
                return self
                    .refuse(session, ctx, record, Reason::BodyTooLarge, None)
                    .await
            }
            BodyRead::TimedOut => {
                return self
                    .refuse(session, ctx, record, Reason::BodyTimeout, None)
                    .await
            }
        };
        let body_sha256: [u8; 32] = Sha256::digest(&body).into();
        let body_hex = hex::encode(body_sha256);
        record.body_sha256 = Some(body_hex.clone());
        if !route.enforce && !req.headers.contains_key("dpop") {
            let read = Some(BodyRead::Complete(body));
            return self
                .observe(session, ctx, &route, record, Reason::Unconfirmed, read)
                .await;
        }

        // 3. Confirmation.
        let target = RequestTarget::Origin(ctx.target.clone());
        let external =
            Self::view(ctx).external_uri(self.config.public_origin.as_ref(), target.path());
        let htu = htu::normalize(&external);
        // A browser navigation without a proof is held for a passkey instead.
        let navigation = browser::is_navigation(&req.headers) && !req.headers.contains_key("dpop");
        if let Some(browser) = self.browser.as_ref().filter(|_| navigation) {
            let held = browser::Held {
                route: &route.name,
                method: req.method.as_str(),
                target: &ctx.target,
                url: Self::view(ctx).external_uri(self.config.public_origin.as_ref(), &ctx.target),
                headers: &req.headers,
                body: &body,
                body_sha256: &body_hex,
            };
            let client_ip = ctx.peer.ip.map(|ip| ip.to_string());
            let answer = browser.hold(held, &user, client_ip, record).await;
            return self.answer(session, ctx, answer).await;
        }
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
        let describe = |c: &Challenge| {
            let mut described = json!({
                "route": route.name,
                "method": req.method.as_str(),
                "target": ctx.target,
                "htu": htu.as_deref().unwrap_or(&external),
                "body_sha256": body_hex,
                "expires_at": humantime::format_rfc3339_seconds(c.expires_at).to_string(),
            });
            if !ctx.overrides.is_empty() {
                described["method_override"] = json!(ctx.overrides);
            }
            described
        };
        let confirmation = match self.confirmer.decide(&user, &exchange).await {
            Outcome::Accepted(c) => c,
            Outcome::Rejected { reason, .. } if !route.enforce => {
                let read = Some(BodyRead::Complete(body));
                return self
                    .observe(session, ctx, &route, record, reason, read)
                    .await;
            }
            Outcome::Challenged(_) if !route.enforce => {
                let reason = Reason::Unconfirmed;
                let read = Some(BodyRead::Complete(body));
                return self
                    .observe(session, ctx, &route, record, reason, read)
                    .await;
            }
            Outcome::Challenged(challenge) => {
                record.event = Some(Event::Challenged);
                self.write_audit(&record);
                self.count(&route.name, Decision::Challenged);
                let description = "confirmation required: sign this action with the DPoP-Nonce";
                let described = describe(&challenge);
                let mut headers = vec![("countersign-request-id", ctx.request_id.clone())];
                headers.extend(self.authenticate("use_dpop_nonce", description, ""));
                headers.push(("dpop-nonce", challenge.nonce));
                return reply::error(
                    session,
                    401,
                    "use_dpop_nonce",
                    description,
                    &headers,
                    Some(("confirmation", described)),
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

        // 4. Policy and live risk at the time of use (RFC 9470 step-up, network change, Cedar).
        record.device = Some(confirmation.jkt.clone());
        let facts = policy::Facts {
            route: &route,
            method: req.method.as_str(),
            target: &ctx.target,
            content_type: req
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            body: &body,
            client_ip,
            session: &user,
            device: &confirmation.jkt,
            origin: confirmation.origin.as_ref(),
            now: std::time::SystemTime::now(),
        };
        match self.guard.decide(&facts) {
            Ok(policies) => record.policies = Some(policies).filter(|p| !p.is_empty()),
            Err(denial) => {
                record.confirmation_id = Some(confirmation.id.to_string());
                record.policies = Some(denial.policies);
                let params = denial.challenge.unwrap_or_default();
                let mut challenge = None;
                if denial.reason.status() == 401 {
                    if let Ok(c) = self.confirmer.fresh_challenge(&user, &exchange).await {
                        let described = describe(&c);
                        challenge = Some((c, described));
                    }
                }
                return self
                    .refuse_with(session, ctx, record, denial.reason, challenge, &params)
                    .await;
            }
        }

        // 5. Audit before forwarding; fail closed. 6. Forward.
        record.parent_id = confirmation.chain.as_ref().map(|c| c.root.clone());
        record.via = confirmation.chain.as_ref().map(|c| c.parent.clone());
        let confirmed = Confirmed {
            req: &req,
            route: &route,
            user: &user,
            confirmation: &confirmation,
            target: &ctx.target,
            body_hex: &body_hex,
            body_sha256: &body_sha256,
            set_cookie: None,
        };
        self.forward_confirmed(session, ctx, record, confirmed, body)
            .await
    }

    /// Forwards a confirmed request (a DPoP one, or a held one a passkey confirmed) after its
    /// `accepted` record is written, and relays the response.
    async fn forward_confirmed(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        mut record: Record,
        confirmed: Confirmed<'_>,
        body: Bytes,
    ) -> pingora::Result<()> {
        let (route, confirmation) = (confirmed.route, confirmed.confirmation);
        record.event = Some(Event::Accepted);
        record.confirmation_id = Some(confirmation.id.to_string());
        record.device = Some(confirmation.jkt.clone());
        record.enrolment = record.enrolment.take().or(confirmation.enrolment.clone());
        if !self.write_audit(&record) {
            return self
                .refuse(session, ctx, record, Reason::AuditUnavailable, None)
                .await;
        }
        tracing::info!(route = %route.name, confirmation_id = %confirmation.id, "accepted");
        self.count(&route.name, Decision::Accepted);
        let upstream_req = self.confirmed_request(&confirmed, ctx)?;
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
            let body = match read_body(session, &req, browser::MAX_CEREMONY_BODY).await? {
                BodyRead::Complete(body) => body,
                BodyRead::TooLarge | BodyRead::TimedOut => Bytes::new(),
            };
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
            origin: None,
            enrolment: None,
        };
        let mut record = resumed.record;
        record.request_id = Some(ctx.request_id.clone());
        // Revocation, policy and live risk apply to a passkey confirmation as to a DPoP one.
        if let Err(reason) = self.confirmer.refuse_revoked(&user).await {
            self.refuse(session, ctx, record, reason, None).await?;
            return Ok(true);
        }
        let client_ip = policy::client_address(
            ctx.peer.ip,
            ctx.peer.trusted,
            &held.headers,
            &self.config.trusted_proxies,
        );
        let facts = policy::Facts {
            route: &route,
            method: hold.method.as_str(),
            target: &hold.target,
            content_type: held
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            body: &body,
            client_ip,
            session: &user,
            device: &confirmation.jkt,
            origin: None,
            now: std::time::SystemTime::now(),
        };
        match self.guard.decide(&facts) {
            Ok(policies) => record.policies = Some(policies).filter(|p| !p.is_empty()),
            Err(denial) => {
                record.policies = Some(denial.policies);
                self.refuse(session, ctx, record, denial.reason, None)
                    .await?;
                return Ok(true);
            }
        }
        let confirmed = Confirmed {
            req: &held,
            route: &route,
            user: &user,
            confirmation: &confirmation,
            target: &hold.target,
            body_hex: &hold.body_sha256,
            body_sha256: &body_sha256,
            set_cookie: Some(&resumed.clear_cookie),
        };
        self.forward_confirmed(session, ctx, record, confirmed, body)
            .await?;
        Ok(true)
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
        let read = match read {
            Some(read) => read,
            None => read_body(session, &req, self.config.confirmation.max_body).await?,
        };
        let body = match read {
            BodyRead::Complete(body) => body,
            BodyRead::TooLarge => {
                return self
                    .refuse(session, ctx, record, Reason::BodyTooLarge, None)
                    .await
            }
            BodyRead::TimedOut => {
                return self
                    .refuse(session, ctx, record, Reason::BodyTimeout, None)
                    .await
            }
        };
        record.body_sha256 = Some(hex::encode(Sha256::digest(&body)));
        record.event = Some(Event::Observed);
        record.reason = Some(reason.as_str());
        self.write_audit(&record);
        tracing::info!(route = %route.name, reason = reason.as_str(), "observed");
        self.count(&route.name, Decision::Observed);
        let upstream_req = self.plain_request(&req, ctx)?;
        self.forward_buffered(session, ctx, route, upstream_req, body, None, record)
            .await
    }

    /// The head a request is forwarded with when it is not a confirmed one.
    fn plain_request(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
    ) -> pingora::Result<RequestHeader> {
        let mut up = req.clone();
        forwarding::strip_request(&mut up, Framing::Buffered);
        forwarding::set_forwarded(&mut up, ctx.peer, Self::view(ctx));
        self.rewrite_authorization(&mut up)?;
        Ok(up)
    }

    /// Sends a buffered request through the gateway's own connection pool, relays the response
    /// with its rewrites and writes the `completed` record.
    #[allow(clippy::too_many_arguments)]
    async fn forward_buffered(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        route: &Route,
        mut upstream_req: RequestHeader,
        body: Bytes,
        confirmed: Option<&Confirmed<'_>>,
        mut record: Record,
    ) -> pingora::Result<()> {
        let upstream = self.target(route)?;
        if !upstream.keepalive {
            upstream_req.insert_header(http::header::CONNECTION, "close")?;
        }
        let started = Instant::now();
        let sent = self
            .forwarder
            .send(&upstream.peer, upstream_req, body)
            .await;
        let (status, outcome) = match sent {
            Ok(mut pending) => {
                let status = pending.head.status.as_u16();
                match confirmed {
                    Some(c) => self.finish_head(&mut pending, c, ctx).await,
                    None => {
                        let req = session.req_header().clone();
                        self.rewrite_urls(&mut pending.head, route, &req, ctx);
                        let _ = pending
                            .head
                            .insert_header("countersign-request-id", ctx.request_id.as_str());
                    }
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
                let mut headers = vec![("countersign-request-id", ctx.request_id.clone())];
                if let Some(c) = confirmed {
                    headers.push(("countersign-confirmation-id", c.confirmation.id.to_string()));
                }
                (
                    None,
                    reply::error(session, status, code, text, &headers, None).await,
                )
            }
            Err(ForwardError::Relay(e)) => (None, Err(e)),
        };
        // Streamed low-risk requests are counted in `logging`; these never pass there.
        self.count_upstream(&route.name, status);
        if route.risk == Risk::High {
            // Low-risk requests are measured and audited in `logging`, like streamed ones.
            self.observe_upstream(&route.name, started);
            record.event = Some(Event::Completed);
            record.reason = None;
            record.upstream_status = status;
            record.duration_ms = Some(ctx.started.elapsed().as_millis() as u64);
            self.write_audit(&record);
        }
        outcome
    }

    /// Admits a request head: one valid `Host`, one target ([`RequestTarget::read`]), header
    /// names without `_`. An absolute-form target is forwarded in the origin-form routed.
    fn admit(&self, session: &mut Session) -> Result<RequestTarget, TargetError> {
        let req = session.req_header();
        let http11 = req.version == http::Version::HTTP_11;
        let authority = req.uri.authority().map(|a| a.as_str());
        let host = admission::host(&req.headers, authority, http11)?;
        let target = RequestTarget::read(req.raw_path(), req.method.as_str(), host)?;
        let rewrite = req.raw_path() != target.as_str().as_bytes();
        let dropped = admission::underscored(&req.headers);
        let req = session.req_header_mut();
        for name in &dropped {
            req.remove_header(name);
        }
        if rewrite {
            req.set_raw_path(target.as_str().as_bytes())
                .map_err(|_| TargetError::NotOriginForm)?;
        }
        Ok(target)
    }

    /// Reads what routing needs beyond the head: the query, the override methods and, when a
    /// route could depend on it, the body (bounded by `confirmation.max_body`).
    async fn read_for_routing(
        &self,
        session: &mut Session,
        target: &RequestTarget,
    ) -> pingora::Result<Reading> {
        let req = session.req_header();
        let query = target
            .query()
            .map(|q| Fields::urlencoded(q.as_bytes()))
            .unwrap_or_default();
        let overrides = conditions::overrides(&req.headers, &query, None);
        let kind = BodyKind::of(&req.headers);
        let needed = self.config.routes.needs_body(
            &req.method,
            &overrides,
            target.path(),
            kind.may_hold_form(),
        );
        if !needed {
            return Ok(Reading {
                body: None,
                query,
                fields: Body::Other,
                overrides,
            });
        }
        let req = req.clone();
        let read = read_body(session, &req, self.config.confirmation.max_body).await?;
        let fields = match &read {
            BodyRead::Complete(bytes) => Body::read(&req.headers, Some(bytes)).await,
            _ => Body::Unreadable,
        };
        let overrides = conditions::overrides(&req.headers, &query, fields.form());
        Ok(Reading {
            body: Some(read),
            query,
            fields,
            overrides,
        })
    }

    /// Forwards a low-risk request whose body routing already read.
    async fn forward_read(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        route: &Route,
        read: BodyRead,
    ) -> pingora::Result<()> {
        let req = session.req_header().clone();
        let record = self.audit_base(&req, ctx);
        let body = match read {
            BodyRead::Complete(body) => body,
            BodyRead::TooLarge => {
                let reason = Reason::BodyTooLargeToRoute;
                return self.refuse(session, ctx, record, reason, None).await;
            }
            BodyRead::TimedOut => {
                return self
                    .refuse(session, ctx, record, Reason::BodyTimeout, None)
                    .await
            }
        };
        self.count(&route.name, Decision::Passthrough);
        let upstream_req = self.plain_request(&req, ctx)?;
        self.forward_buffered(session, ctx, route, upstream_req, body, None, record)
            .await
    }

    /// Rewrites the response head of a confirmed request: URLs, the confirmation id, a session
    /// rotation carry-over and, for a redirect to another high-impact action, a continuation nonce.
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

        let status = head.status.as_u16();
        if !matches!(status, 301 | 302 | 303 | 307 | 308) {
            return;
        }
        let Some(location) = head.headers.get("location").and_then(|v| v.to_str().ok()) else {
            return;
        };
        let base = Self::view(ctx).base(self.config.public_origin.as_ref());
        let request_path = c.target.split('?').next().unwrap_or("/");
        let Some(next) = forwarding::gateway_target(location, &base, request_path) else {
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
        let (path, query) = next.split_once('?').unwrap_or((next.as_str(), ""));
        let query = Fields::urlencoded(query.as_bytes());
        let follow = routes::Request {
            query: &query,
            ..routes::Request::plain(&next_method, path)
        };
        let leads_to_high = self
            .config
            .routes
            .lookup(&follow)
            .is_some_and(|r| r.risk == Risk::High);
        if !leads_to_high {
            return;
        }
        let follow_up = Action {
            session_id: &session_id,
            method,
            overrides: "",
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
            htm_override: (!ctx.overrides.is_empty()).then_some(ctx.overrides.as_str()),
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

/// A client that went away is routine (debug); anything else is worth a warning.
fn log_failure(e: &Error, span: &tracing::Span) {
    if *e.esource() == pingora::ErrorSource::Downstream {
        tracing::debug!(parent: span, error = %e, "client connection ended early");
    } else {
        tracing::warn!(parent: span, error = %e, "request failed");
    }
}

/// What routing learnt of a request beyond its target.
struct Reading {
    /// The body, when routing had to read it.
    body: Option<BodyRead>,
    /// Its query parameters.
    query: Fields,
    /// Its form or JSON fields, when the body was read.
    fields: Body,
    /// The methods the request stands for through overrides.
    overrides: Vec<http::Method>,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            route: None,
            target: String::new(),
            overrides: String::new(),
            peer: Peer {
                ip: None,
                trusted: false,
            },
            view: None,
            request_id: Uuid::now_v7().simple().to_string(),
            started: Instant::now(),
            span: tracing::Span::none(),
            upstream_status: None,
            _in_flight: self.metrics.enter(),
            upstream_fd: None,
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
        // Pingora keeps an idle HTTP/1.1 connection open forever unless told otherwise.
        session.set_keepalive(Some(self.config.server.keepalive_timeout.as_secs()));
        ctx.span = tracing::info_span!(
            "request",
            request_id = %ctx.request_id,
            method = %session.req_header().method,
            route = tracing::field::Empty,
        );

        // One reading of the request: its target, its host, its header names.
        let target = match self.admit(session) {
            Ok(target) => target,
            Err(_) => {
                let record = self.audit_base(session.req_header(), ctx);
                let span = ctx.span.clone();
                self.refuse(session, ctx, record, Reason::InvalidTarget, None)
                    .instrument(span)
                    .await?;
                return Ok(true);
            }
        };
        ctx.target = target.as_str().to_string();
        let req = session.req_header();
        ctx.view = Some(ClientView::of(&req.headers, &req.uri, ctx.peer));
        if self
            .browser_step(session, ctx)
            .instrument(ctx.span.clone())
            .await?
        {
            return Ok(true);
        }
        if target.path() == devices::enroll::ENROLL_PATH {
            let view = Self::view(ctx);
            let request = devices::enroll::Request {
                request_id: &ctx.request_id,
                target: &ctx.target,
                external: view.external_uri(self.config.public_origin.as_ref(), target.path()),
                client_ip: ctx.peer.ip,
                trusted_peer: ctx.peer.trusted,
            };
            devices::enroll::serve(session, &self.confirmer, &self.audit, request)
                .instrument(ctx.span.clone())
                .await?;
            return Ok(true);
        }

        // Routing, with the body when a route could depend on it.
        let reading = self.read_for_routing(session, &target).await?;
        let req = session.req_header();
        let route = {
            let any_method =
                reading.fields == Body::Unreadable && BodyKind::of(&req.headers).may_hold_form();
            self.config
                .routes
                .lookup(&routes::Request {
                    method: &req.method,
                    overrides: &reading.overrides,
                    any_method,
                    path: target.path(),
                    query: &reading.query,
                    body: &reading.fields,
                })
                .cloned()
        };
        ctx.overrides = reading
            .overrides
            .iter()
            .map(http::Method::as_str)
            .collect::<Vec<_>>()
            .join(",");
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
        ctx.span.record("route", route.name.as_str());
        ctx.route = Some(route.clone());
        let span = ctx.span.clone();

        // Protocol upgrades only as WebSocket handshakes on routes made for them.
        let req = session.req_header();
        if admission::wants_upgrade(&req.headers) {
            let allowed = route.websocket
                && admission::is_websocket_handshake(&req.headers)
                && !self.config.routes.high_on_path(target.path());
            if !allowed {
                let record = self.audit_base(req, ctx);
                self.refuse(session, ctx, record, Reason::UpgradeRefused, None)
                    .instrument(span)
                    .await?;
                return Ok(true);
            }
        }
        match (route.risk, reading.body) {
            (Risk::Low, None) => {
                self.count(&route.name, Decision::Passthrough);
                Ok(false)
            }
            (Risk::Low, Some(read)) => {
                self.forward_read(session, ctx, &route, read)
                    .instrument(span)
                    .await?;
                Ok(true)
            }
            (Risk::High, read) => {
                self.confirm_and_forward(session, ctx, route, read)
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
        if let Some(route) = &ctx.route {
            if !self.target(route)?.keepalive {
                upstream.insert_header(http::header::CONNECTION, "close")?;
            }
        }
        self.rewrite_authorization(upstream)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        ctx.upstream_fd = Some(fd);
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _head: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(fd) = ctx.upstream_fd {
            crate::forward::quick_ack(fd);
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<Duration>> {
        if let (Some(fd), false) = (ctx.upstream_fd, end_of_stream) {
            crate::forward::quick_ack(fd);
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        head: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
            let route_allows = ctx.route.as_ref().is_some_and(|r| r.websocket);
            if !route_allows
                || !admission::websocket_accepted(&session.req_header().headers, &head.headers)
            {
                // Fail closed: a tunnel the gateway never checks opens only for a real WebSocket.
                return Err(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "upstream answered 101 without a valid WebSocket handshake",
                ));
            }
        }
        ctx.upstream_status = Some(head.status.as_u16());
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

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // `logging` reports each failure once, at the level its cause deserves.
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(e) = e {
            log_failure(e, &ctx.span);
        }
        let Some(route) = ctx.route.as_ref().filter(|r| r.risk == Risk::Low) else {
            return;
        };
        self.observe_upstream(&route.name, ctx.started);
        let upstream_failed = e.is_some_and(|e| *e.esource() != pingora::ErrorSource::Downstream);
        if ctx.upstream_status.is_some() || upstream_failed {
            self.count_upstream(&route.name, ctx.upstream_status);
        }
        if self.config.audit.passthrough {
            let mut record = self.audit_base(session.req_header(), ctx);
            record.event = Some(Event::Passthrough);
            record.upstream_status = session.response_written().map(|h| h.status.as_u16());
            record.duration_ms = Some(ctx.started.elapsed().as_millis() as u64);
            self.write_audit(&record);
        }
    }
}
