//! A gateway whose configuration can be replaced while it runs (SIGHUP). Each request takes the
//! gateway that is current when it starts and finishes on it, so an in-flight request never
//! sees a mix of the old and the new configuration.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::Error;

use crate::front::{Drain, HeadLimits};
use crate::gateway::{Gateway, RequestCtx};

/// The current gateway, shared by the proxy service and the reload signal.
#[derive(Clone)]
pub struct Reloadable {
    current: Arc<RwLock<Arc<Gateway>>>,
    drain: Drain,
}

impl Reloadable {
    /// Starts with `gateway`; once `drain` is on, responses close their connection.
    pub fn new(gateway: Gateway, drain: Drain) -> Reloadable {
        Reloadable {
            current: Arc::new(RwLock::new(Arc::new(gateway))),
            drain,
        }
    }

    /// The request head limits of the current config.
    pub fn head_limits(&self) -> HeadLimits {
        HeadLimits::of(&self.current().config().server)
    }

    /// New requests use `gateway` from now on.
    pub fn replace(&self, gateway: Gateway) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(gateway);
    }

    fn current(&self) -> Arc<Gateway> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A request's state: the gateway it started on and that gateway's own state.
pub struct Ctx {
    gateway: Arc<Gateway>,
    inner: RequestCtx,
}

#[async_trait]
impl ProxyHttp for Reloadable {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        let gateway = self.current();
        let inner = gateway.new_ctx();
        Ctx { gateway, inner }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        ctx.gateway.request_filter(session, &mut ctx.inner).await
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<Box<HttpPeer>> {
        ctx.gateway.upstream_peer(session, &mut ctx.inner).await
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        ctx.gateway
            .upstream_request_filter(session, upstream, &mut ctx.inner)
            .await
    }

    async fn connected_to_upstream(
        &self,
        session: &mut Session,
        reused: bool,
        peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        ctx.gateway
            .connected_to_upstream(session, reused, peer, fd, digest, &mut ctx.inner)
            .await
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        head: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        ctx.gateway
            .upstream_response_filter(session, head, &mut ctx.inner)
            .await
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<Option<Duration>> {
        ctx.gateway
            .upstream_response_body_filter(session, body, end_of_stream, &mut ctx.inner)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        head: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        // A request that was in flight when the drain began: its client must not reuse the
        // connection.
        if self.drain.on() {
            session.set_keepalive(None);
        }
        ctx.gateway
            .response_filter(session, head, &mut ctx.inner)
            .await
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        ctx.gateway.fail_to_proxy(session, e, &mut ctx.inner).await
    }

    fn suppress_error_log(&self, session: &Session, ctx: &Ctx, e: &Error) -> bool {
        ctx.gateway.suppress_error_log(session, &ctx.inner, e)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.gateway.logging(session, e, &mut ctx.inner).await
    }
}
