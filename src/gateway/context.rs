//! The state of one request on its journey, and what it says about the request for its audit
//! record and for the URLs the client sees.

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use pingora::http::RequestHeader;
use uuid::Uuid;

use super::Gateway;
use crate::audit::Record;
use crate::forwarding::{ClientView, Peer};
use crate::metrics::{InFlight, Metrics};
use crate::routes::Route;

/// Per-request state.
pub struct RequestCtx {
    pub(super) route: Option<Arc<Route>>,
    /// The one origin-form target routed, bound, audited and forwarded.
    pub(super) target: String,
    /// The methods the request stands for through overrides, comma-joined.
    pub(super) overrides: String,
    pub(super) peer: Peer,
    pub(super) view: Option<ClientView>,
    pub(super) request_id: String,
    pub(super) started: Instant,
    pub(super) span: tracing::Span,
    /// Status of the upstream's answer on the streamed path.
    pub(super) upstream_status: Option<u16>,
    _in_flight: InFlight,
    /// The upstream socket of the streamed path, for quick ACKs while its response arrives.
    pub(super) upstream_fd: Option<std::os::unix::io::RawFd>,
}

impl RequestCtx {
    /// The state of a request just arrived, counted in flight until it is done.
    pub(super) fn new(metrics: &Metrics) -> RequestCtx {
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
            _in_flight: metrics.enter(),
            upstream_fd: None,
        }
    }
}

impl Gateway {
    /// How the client sees this gateway (a default before the request head was read).
    pub(super) fn view(ctx: &RequestCtx) -> &ClientView {
        static UNKNOWN: LazyLock<ClientView> = LazyLock::new(|| ClientView {
            scheme: "http".into(),
            host: None,
            prefix: String::new(),
        });
        ctx.view.as_ref().unwrap_or(&UNKNOWN)
    }

    /// The audit record of this request as far as routing knows it.
    pub(super) fn audit_base(&self, req: &RequestHeader, ctx: &RequestCtx) -> Record {
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
}
