//! Admission and routing of a request head: one reading of its target, then the route, with the
//! body read first when a route's conditions or the methods it stands for depend on it.

use std::sync::Arc;

use pingora::http::RequestHeader;
use pingora::proxy::Session;

use crate::admission;
use crate::body::{read_body, BodyRead};
use crate::conditions::{self, Body, BodyKind, Fields};
use crate::config::Config;
use crate::routes::{self, Route, RouteTable};
use crate::target::{Target, TargetError};

/// Admits a request head: one valid `Host`, one target ([`Target::read`]), header names without
/// `_`. An absolute-form target is forwarded in the origin-form routed.
pub(super) fn admit(session: &mut Session) -> Result<Target, TargetError> {
    let req = session.req_header();
    let http11 = req.version == http::Version::HTTP_11;
    let authority = req.uri.authority().map(|a| a.as_str());
    let host = admission::host(&req.headers, authority, http11)?;
    let target = Target::read(req.raw_path(), req.method.as_str(), host)?;
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

/// What routing learnt of a request beyond its target.
pub(super) struct Reading {
    /// The body, when routing had to read it.
    pub body: Option<BodyRead>,
    /// Its query parameters.
    query: Fields,
    /// Its form or JSON fields, when the body was read.
    fields: Body,
    /// The methods the request stands for through overrides.
    overrides: Vec<http::Method>,
}

/// Reads what routing needs beyond the head: the query, the override methods and, when a route
/// could depend on it, the body (bounded by `confirmation.max_body`).
pub(super) async fn read(
    session: &mut Session,
    target: &Target,
    config: &Config,
) -> pingora::Result<Reading> {
    let req = session.req_header();
    let query = target
        .query()
        .map(|q| Fields::urlencoded(q.as_bytes()))
        .unwrap_or_default();
    let overrides = conditions::overrides(&req.headers, &query, None);
    let kind = BodyKind::of(&req.headers);
    let needed =
        config
            .routes
            .needs_body(&req.method, &overrides, target.path(), kind.may_hold_form());
    if !needed {
        return Ok(Reading {
            body: None,
            query,
            fields: Body::Other,
            overrides,
        });
    }
    let req = req.clone();
    let read = read_body(session, &req, config.confirmation.max_body).await?;
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

impl Reading {
    /// The route of this request. A form body that could not be read may stand for any method.
    pub fn route(
        &self,
        req: &RequestHeader,
        target: &Target,
        routes: &RouteTable,
    ) -> Option<Arc<Route>> {
        let any_method =
            self.fields == Body::Unreadable && BodyKind::of(&req.headers).may_hold_form();
        routes
            .lookup(&routes::Request {
                method: &req.method,
                overrides: &self.overrides,
                any_method,
                path: target.path(),
                query: &self.query,
                body: &self.fields,
            })
            .cloned()
    }

    /// The override methods, comma-joined (empty: none).
    pub fn overrides(&self) -> String {
        self.overrides
            .iter()
            .map(http::Method::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Whether the request may go on as far as protocol upgrades go: only a WebSocket handshake on a
/// route made for it, on a path no high-impact route shares, may ask for one.
pub(super) fn upgrade_allowed(
    req: &RequestHeader,
    route: &Route,
    target: &Target,
    config: &Config,
) -> bool {
    !admission::wants_upgrade(&req.headers)
        || (route.websocket
            && admission::is_websocket_handshake(&req.headers)
            && !config.routes.high_on_path(target.path()))
}
