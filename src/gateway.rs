//! The Pingora `ProxyHttp` implementation: a thin sequencer that reads like CONTRACT §3.
//! match route → low? stream it : session → body → confirmation → audit → forward.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::audit::{AuditLog, Event, Record};
use crate::config::{Config, UpstreamScheme};
use crate::confirm::{Challenge, Confirmation, Confirmer, Exchange, Outcome};
use crate::forward::{ForwardError, Forwarder};
use crate::forwarding::{self, Framing, Peer};
use crate::htu;
use crate::metrics::{Decision, Metrics};
use crate::provenance::{self, Signer};
use crate::reason::Reason;
use crate::reply;
use crate::routes::{Risk, Route};
use crate::session::Session as UserSession;

/// How long a high-impact request body may take to arrive.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// An upstream, ready to connect to.
struct Target {
    peer: HttpPeer,
    /// Origins whose absolute `Location`s are rewritten to the public origin.
    origins: Vec<String>,
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
}

/// Per-request state.
pub struct RequestCtx {
    route: Option<Arc<Route>>,
    peer: Peer,
    request_id: String,
    started: Instant,
}

impl Gateway {
    /// Assembles a gateway from validated parts.
    pub fn new(
        config: Arc<Config>,
        confirmer: Confirmer,
        audit: AuditLog,
        metrics: Arc<Metrics>,
        signer: Arc<Signer>,
    ) -> Gateway {
        let targets = config
            .upstreams
            .values()
            .map(|u| {
                let mut peer = HttpPeer::new(u.address.as_str(), u.tls, u.sni.clone());
                peer.options.connection_timeout = Some(u.connect_timeout);
                peer.options.read_timeout = Some(u.read_timeout);
                peer.options.idle_timeout = Some(Duration::from_secs(60));
                let scheme = if u.tls { "https" } else { "http" };
                let origins = vec![format!("{scheme}://{}", u.address.to_ascii_lowercase())];
                (u.name.clone(), Target { peer, origins })
            })
            .collect();
        let algs = confirmer
            .algs()
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        Gateway {
            config,
            targets,
            confirmer,
            audit,
            metrics,
            signer,
            forwarder: Forwarder::default(),
            algs,
        }
    }

    fn target(&self, route: &Route) -> pingora::Result<&Target> {
        self.targets
            .get(&route.upstream)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "route names no upstream"))
    }

    /// Location rewrite for one response (both paths).
    fn rewrite_location(&self, head: &mut ResponseHeader, target: &Target, public: &str) {
        for name in ["location", "content-location"] {
            let Some(value) = head.headers.get(name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            if let Some(new) = forwarding::rewrite_location(value, &target.origins, public) {
                let _ = head.insert_header(name, new);
            }
        }
    }

    /// The origin clients see, for Location rewriting.
    fn public_origin(&self, req: &RequestHeader, peer: Peer) -> String {
        match &self.config.public_origin {
            Some(o) => format!("{}{}", o.origin(), o.prefix),
            None => {
                let (scheme, host) = forwarding::client_origin(&req.headers, &req.uri, peer);
                format!("{scheme}://{}", host.unwrap_or("localhost"))
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
        challenge: Option<(&Challenge, String)>,
    ) -> pingora::Result<()> {
        let route = record.route.clone();
        record.event = Some(Event::Rejected);
        record.reason = Some(reason.as_str());
        self.write_audit(&record);
        self.metrics.decision(&route, Decision::Rejected);
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
        if reason.status() == 413 || reason == Reason::BodyTooLarge {
            // The rest of the body was never read: this connection cannot carry another request.
            session.set_keepalive(None);
        }
        self.challenge_response(
            session,
            ctx,
            reason.status(),
            reason.error_code(),
            reason.description(),
            challenge,
        )
        .await
    }

    async fn challenge_response(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        status: u16,
        code: &str,
        description: &str,
        challenge: Option<(&Challenge, String)>,
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
        if let Some((challenge, body)) = challenge {
            headers.push(("dpop-nonce", challenge.nonce.clone()));
            more = Some((
                "confirmation",
                serde_json::from_str(&body).unwrap_or_default(),
            ));
        }
        reply::error(session, status, code, description, &headers, more).await
    }

    /// The high-impact path: everything is decided before a byte goes upstream.
    async fn confirm_and_forward(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: Arc<Route>,
    ) -> pingora::Result<()> {
        let req = session.req_header().clone();
        let base = self.audit_base(&req, ctx);

        // 1. Session.
        let user = match self.confirmer.session(&req.headers, ctx.peer.trusted) {
            Ok(user) => user,
            Err(reason) => return self.refuse(session, ctx, base, reason, None).await,
        };
        let mut base = base;
        base.subject = user.subject.clone();
        base.session = Some(user.id_hash());

        // 2. Body, bounded.
        let body = match read_body(session, &req, self.config.confirmation.max_body).await? {
            Some(body) => body,
            None => {
                return self
                    .refuse(session, ctx, base, Reason::BodyTooLarge, None)
                    .await
            }
        };
        let body_sha256: [u8; 32] = Sha256::digest(&body).into();
        let body_hex = hex(&body_sha256);
        base.body_sha256 = Some(body_hex.clone());

        // 3. Confirmation.
        let (scheme, host) = forwarding::client_origin(&req.headers, &req.uri, ctx.peer);
        let external = forwarding::external_uri(
            self.config.public_origin.as_ref(),
            scheme,
            host,
            req.uri.path(),
        );
        let htu = htu::normalize(&external);
        let target = target_of(&req);
        let exchange = Exchange {
            method: req.method.as_str(),
            target: &target,
            htu: htu.as_deref(),
            headers: &req.headers,
            body_sha256: &body_sha256,
        };
        let confirmation_body = |c: &Challenge| {
            json!({
                "route": route.name,
                "method": req.method.as_str(),
                "target": target,
                "htu": htu.as_deref().unwrap_or(&external),
                "body_sha256": body_hex,
                "expires_at": humantime::format_rfc3339_seconds(c.expires_at).to_string(),
            })
            .to_string()
        };
        let confirmation = match self.confirmer.decide(&user, &exchange).await {
            Outcome::Accepted(c) => c,
            Outcome::Challenged(challenge) => {
                let mut record = base;
                record.event = Some(Event::Challenged);
                self.write_audit(&record);
                self.metrics.decision(&route.name, Decision::Challenged);
                let reason = Reason::NonceMissing;
                return self
                    .challenge_response(
                        session,
                        ctx,
                        401,
                        reason.error_code(),
                        "confirmation required: sign this action with the DPoP-Nonce",
                        Some((&challenge, confirmation_body(&challenge))),
                    )
                    .await;
            }
            Outcome::Rejected {
                reason,
                device,
                challenge,
            } => {
                let mut record = base;
                record.device = device;
                let challenge = challenge.map(|c| {
                    let body = confirmation_body(&c);
                    (c, body)
                });
                return self
                    .refuse(
                        session,
                        ctx,
                        record,
                        reason,
                        challenge.as_ref().map(|(c, b)| (c, b.clone())),
                    )
                    .await;
            }
        };

        // 4. Audit before forwarding; fail closed.
        let mut record = base;
        record.event = Some(Event::Accepted);
        record.confirmation_id = Some(confirmation.id.to_string());
        record.device = Some(confirmation.jkt.clone());
        if !self.write_audit(&record) {
            return self
                .refuse(session, ctx, record, Reason::AuditUnavailable, None)
                .await;
        }
        self.metrics.decision(&route.name, Decision::Accepted);

        // 5. Forward.
        let upstream_req =
            self.confirmed_request(&req, ctx, &route, &user, &confirmation, &target, &body_hex)?;
        let target_upstream = self.target(&route)?;
        let public = self.public_origin(&req, ctx.peer);
        let cid = confirmation.id.to_string();
        let started = Instant::now();
        let result = self
            .forwarder
            .relay(session, &target_upstream.peer, upstream_req, body, |head| {
                self.rewrite_location(head, target_upstream, &public);
                let _ = head.insert_header("countersign-confirmation-id", cid.as_str());
                let _ = head.insert_header("countersign-request-id", ctx.request_id.as_str());
            })
            .await;
        let elapsed = started.elapsed();
        self.metrics
            .upstream
            .with_label_values(&[&route.name])
            .observe(elapsed.as_secs_f64());
        let (status, outcome) = match result {
            Ok(status) => (Some(status), Ok(())),
            Err(ForwardError::Upstream(status, e)) => {
                tracing::warn!(error = %e, route = %route.name, "upstream failed");
                let (code, text) = upstream_error(status);
                (
                    None,
                    reply::error(
                        session,
                        status,
                        code,
                        text,
                        &[("countersign-confirmation-id", cid.clone())],
                        None,
                    )
                    .await,
                )
            }
            Err(ForwardError::Relay(e)) => (None, Err(e)),
        };
        record.event = Some(Event::Completed);
        record.upstream_status = status;
        record.duration_ms = Some(ctx.started.elapsed().as_millis() as u64);
        self.write_audit(&record);
        outcome
    }

    /// The request head a confirmed request is forwarded with.
    #[allow(clippy::too_many_arguments)]
    fn confirmed_request(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
        route: &Route,
        user: &UserSession,
        confirmation: &Confirmation,
        target: &str,
        body_hex: &str,
    ) -> pingora::Result<RequestHeader> {
        let mut up = req.clone();
        let (scheme, host) = forwarding::client_origin(&req.headers, &req.uri, ctx.peer);
        let host = host.map(str::to_owned);
        forwarding::strip_request(&mut up, Framing::Buffered);
        forwarding::set_forwarded(&mut up, ctx.peer, scheme, host.as_deref());
        self.rewrite_authorization(&mut up)?;
        let cid = confirmation.id.to_string();
        let sid_hash = user.id_hash();
        let iss = self
            .config
            .public_origin
            .as_ref()
            .map_or_else(|| "countersign".to_string(), |o| o.origin());
        let token = self.signer.token(provenance::Claims {
            iss: &iss,
            iat: 0,
            exp: 0,
            cid: &cid,
            parent: None,
            sub: user.subject.as_deref(),
            sid_hash: &sid_hash,
            jkt: &confirmation.jkt,
            htm: req.method.as_str(),
            target,
            body_sha256: body_hex,
            route: &route.name,
        });
        up.insert_header("countersign-confirmation-id", cid)?;
        if let Some(sub) = &user.subject {
            up.insert_header("countersign-subject", sub.as_str())?;
        }
        up.insert_header("countersign-device", confirmation.jkt.as_str())?;
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
            request_id: Uuid::now_v7().simple().to_string(),
            started: Instant::now(),
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
        let Some(route) = self
            .config
            .routes
            .lookup(&req.method, req.uri.path())
            .cloned()
        else {
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
                self.metrics.decision(&route.name, Decision::Passthrough);
                Ok(false)
            }
            Risk::High => {
                self.confirm_and_forward(session, ctx, route).await?;
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
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let (scheme, host) = forwarding::client_origin(
            &session.req_header().headers,
            &session.req_header().uri,
            ctx.peer,
        );
        let host = host.map(str::to_owned);
        forwarding::strip_request(upstream, Framing::Streamed);
        forwarding::set_forwarded(upstream, ctx.peer, scheme, host.as_deref());
        self.rewrite_authorization(upstream)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        head: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(route) = &ctx.route {
            let public = self.public_origin(session.req_header(), ctx.peer);
            self.rewrite_location(head, self.target(route)?, &public);
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
                tracing::debug!(error = %err, "could not send error response");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, _session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(route) = &ctx.route {
            if route.risk == Risk::Low {
                self.metrics
                    .upstream
                    .with_label_values(&[&route.name])
                    .observe(ctx.started.elapsed().as_secs_f64());
            }
        }
    }
}
