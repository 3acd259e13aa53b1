//! The Pingora `ProxyHttp` implementation: the sequencer of one request's journey
//! (docs/protocol.md). Admission (one reading of the target) → the browser confirmation steps →
//! routing (with the body when a route depends on it) → a low-risk request streams
//! ([`stream`]); a high-impact one is decided before a byte goes upstream ([`high_impact`]:
//! session → body → confirmation or a browser hold → policy → audit) and then forwarded through
//! the gateway's own relay ([`forward`]). Each step is one call into the module that knows it.

mod approval_step;
mod browser_step;
mod context;
mod enrol_step;
mod forward;
mod high_impact;
mod respond;
mod routing;
mod stream;

pub use context::RequestCtx;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::Error;
use tracing::Instrument;

use crate::browser::{Browser, CeremonyError};
use crate::config::Config;
use crate::confirm::Confirmer;
use crate::decision::Decision;
use crate::forwarding::{ClientView, Peer};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::policy;
use crate::provenance::Signer;
use crate::reason::Reason;
use crate::refusal::Answers;
use crate::relay::Relay;
use crate::reply::{self, Reply};
use crate::routes::Risk;
use crate::upstreams::{ResolveError, Upstreams};

/// The gateway: one config's routes, upstreams, checks and policy over the shared parts.
pub struct Gateway {
    config: Arc<Config>,
    upstreams: Upstreams,
    confirmer: Confirmer,
    ledger: Ledger,
    answers: Answers,
    signer: Arc<Signer>,
    relay: Relay,
    guard: policy::Guard,
    browser: Option<Browser>,
    approvals: approval_step::Approvals,
}

/// Why a config cannot become a gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// An upstream address does not resolve.
    #[error(transparent)]
    Upstream(#[from] ResolveError),
    /// The browser confirmation settings are unusable.
    #[error("browser: {0}")]
    Browser(#[from] CeremonyError),
    /// The approvals worker thread could not be started.
    #[error("approvals: cannot start the worker thread: {0}")]
    Approvals(#[from] std::io::Error),
}

impl Gateway {
    /// Assembles a gateway from validated parts.
    pub fn new(
        config: Arc<Config>,
        relay: Relay,
        confirmer: Confirmer,
        audit: crate::audit::AuditLog,
        metrics: Arc<Metrics>,
        signer: Arc<Signer>,
    ) -> Result<Gateway, GatewayError> {
        let upstreams = Upstreams::resolve(&config.upstreams)?;
        let no_session = crate::session::missing_description(&config.session.kind);
        let answers = Answers::new(confirmer.algs(), no_session, config.confirmation.nonce_ttl);
        let guard = policy::Guard::new(
            config.policy.clone(),
            config.risk.clone(),
            &config.session.groups_claim,
        );
        let browser = browser_step::browser_for(&config, confirmer.store())?;
        let approvals = approval_step::Approvals::for_config(&config, confirmer.store(), &metrics)?;
        Ok(Gateway {
            approvals,
            ledger: Ledger::new(audit, metrics, &config.routes),
            answers,
            browser,
            guard,
            config,
            upstreams,
            confirmer,
            signer,
            relay,
        })
    }

    /// The config this gateway serves.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The journey of one request up to forwarding; true when the gateway answered it itself.
    async fn sequence(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<bool> {
        // 1. One reading of the request: its target, its host, its header names.
        let target = match routing::admit(session) {
            Ok(target) => target,
            Err(_) => {
                let record = self.audit_base(session.req_header(), ctx);
                self.refuse(session, ctx, record, Reason::InvalidTarget)
                    .await?;
                return Ok(true);
            }
        };
        ctx.target = target.as_str().to_string();
        let req = session.req_header();
        ctx.view = Some(ClientView::of(&req.headers, &req.uri, ctx.peer));

        // 2. The browser confirmation steps that come before routing.
        if self.browser_step(session, ctx).await? {
            return Ok(true);
        }

        // 3. Device enrolment, the gateway's own endpoint on the app origin.
        if self.enrol_step(session, ctx, &target).await? {
            return Ok(true);
        }

        // 3b. Approvals, the gateway's own endpoints on the app origin.
        if self.approval_step(session, ctx, &target).await? {
            return Ok(true);
        }

        // 4. Routing, with the body when a route could depend on it.
        let reading = routing::read(session, &target, &self.config).await?;
        let route = reading.route(session.req_header(), &target, &self.config.routes);
        ctx.overrides = reading.overrides();
        let Some(route) = route else {
            reply::write(session, Reply::not_found(), &ctx.request_id).await?;
            return Ok(true);
        };
        ctx.span.record("route", route.name.as_str());
        ctx.route = Some(route.clone());

        // 5. Protocol upgrades only as WebSocket handshakes on routes made for them.
        if !routing::upgrade_allowed(session.req_header(), &route, &target, &self.config) {
            let record = self.audit_base(session.req_header(), ctx);
            self.refuse(session, ctx, record, Reason::UpgradeRefused)
                .await?;
            return Ok(true);
        }

        // 6. Low risk streams; high impact is decided in full before anything is forwarded.
        match (route.risk, reading.body) {
            (Risk::Low, None) => {
                self.ledger.count(&route.name, Decision::Passthrough);
                Ok(false)
            }
            (Risk::Low, Some(read)) => {
                self.forward_read(session, ctx, &route, read).await?;
                Ok(true)
            }
            (Risk::High, read) => {
                self.confirm_and_forward(session, ctx, route, read).await?;
                Ok(true)
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.ledger.metrics())
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
        ctx.span = tracing::info_span!(
            "request",
            request_id = %ctx.request_id,
            method = %session.req_header().method,
            route = tracing::field::Empty,
        );
        let span = ctx.span.clone();
        self.sequence(session, ctx).instrument(span).await
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        self.streamed_peer(ctx).map(Box::new)
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        self.streamed_request(upstream, ctx)
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
        stream::ack(ctx, false);
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<Duration>> {
        stream::ack(ctx, end_of_stream);
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        head: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        self.streamed_response(session.req_header(), head, ctx)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let status = reply::failure_status(e);
        if status > 0 {
            let reply = Reply::failure(status);
            if let Err(err) = reply::write(session, reply, &ctx.request_id).await {
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
        self.streamed_done(session, e, ctx);
    }
}
