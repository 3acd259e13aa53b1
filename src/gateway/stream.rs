//! The low-risk path Pingora streams: the upstream it goes to, the head it is sent with, the
//! response head the client sees, and its bookkeeping once done.

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use super::{Gateway, RequestCtx};
use crate::admission;
use crate::audit::Event;
use crate::forwarding::{self, Framing};
use crate::routes::Risk;

impl Gateway {
    /// The upstream of the routed request.
    pub(super) fn streamed_peer(&self, ctx: &RequestCtx) -> pingora::Result<HttpPeer> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route selected"))?;
        Ok(self.upstreams.get(&route.upstream)?.peer.clone())
    }

    /// The head a streamed request is sent upstream with.
    pub(super) fn streamed_request(
        &self,
        upstream: &mut RequestHeader,
        ctx: &RequestCtx,
    ) -> pingora::Result<()> {
        forwarding::strip_request(upstream, Framing::Streamed);
        forwarding::set_forwarded(upstream, ctx.peer, Self::view(ctx));
        if let Some(route) = &ctx.route {
            if !self.upstreams.get(&route.upstream)?.keepalive {
                upstream.insert_header(http::header::CONNECTION, "close")?;
            }
        }
        forwarding::rewrite_authorization(upstream, self.config.session.upstream_scheme)
    }

    /// The response head of a streamed request: a `101` only for a real WebSocket handshake on a
    /// route made for it, URLs on the upstream's origin rewritten, the request id added.
    pub(super) fn streamed_response(
        &self,
        req: &RequestHeader,
        head: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
            let route_allows = ctx.route.as_ref().is_some_and(|r| r.websocket);
            if !route_allows || !admission::websocket_accepted(&req.headers, &head.headers) {
                // Fail closed: a tunnel the gateway never checks opens only for a real WebSocket.
                return Err(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "upstream answered 101 without a valid WebSocket handshake",
                ));
            }
        }
        ctx.upstream_status = Some(head.status.as_u16());
        if let Some(route) = &ctx.route {
            self.rewrite_urls(head, route, req, ctx);
        }
        head.insert_header("countersign-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    /// Logs a failure once, at the level its cause deserves, and records a low-risk request's
    /// upstream answer, latency and (with `audit.passthrough`) audit record. High-impact requests
    /// were recorded when relayed.
    pub(super) fn streamed_done(&self, session: &Session, e: Option<&Error>, ctx: &RequestCtx) {
        if let Some(e) = e {
            if *e.esource() == ErrorSource::Downstream {
                tracing::debug!(parent: &ctx.span, error = %e, "client connection ended early");
            } else {
                tracing::warn!(parent: &ctx.span, error = %e, "request failed");
            }
        }
        let Some(route) = ctx.route.as_ref().filter(|r| r.risk == Risk::Low) else {
            return;
        };
        self.ledger.upstream_latency(&route.name, ctx.started);
        let upstream_failed = e.is_some_and(|e| *e.esource() != ErrorSource::Downstream);
        if ctx.upstream_status.is_some() || upstream_failed {
            self.ledger
                .upstream_answer(&route.name, ctx.upstream_status);
        }
        if self.config.audit.passthrough {
            let mut record = self.audit_base(session.req_header(), ctx);
            record.upstream_status = session.response_written().map(|h| h.status.as_u16());
            record.duration_ms = Some(ctx.started.elapsed().as_millis() as u64);
            self.ledger.finish(&mut record, Event::Passthrough);
        }
    }
}

/// Acknowledges what the upstream sent so far at once while a streamed response arrives
/// ([`crate::relay::quick_ack`]).
pub(super) fn ack(ctx: &RequestCtx, end_of_stream: bool) {
    if let (Some(fd), false) = (ctx.upstream_fd, end_of_stream) {
        crate::relay::quick_ack(fd);
    }
}
