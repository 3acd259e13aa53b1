//! The browser confirmation steps that come before routing (docs/protocol.md, "Browser
//! confirmations"): the confirmation origin, the resume endpoint, and the navigation back to the
//! held request, which is then forwarded like any confirmed one.

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::forward::Confirmed;
use super::{Gateway, RequestCtx};
use crate::body::{read_body, BodyRead};
use crate::browser::{self, Browser, CeremonyError};
use crate::config::Config;
use crate::confirm::Confirmation;
use crate::policy;
use crate::store::ReplayStore;

/// Browser confirmations, when the config has a `browser:` section (which needs `public_origin`).
pub(super) fn browser_for(
    config: &Config,
    store: &Arc<dyn ReplayStore>,
) -> Result<Option<Browser>, CeremonyError> {
    match (&config.browser, &config.public_origin) {
        (Some(b), Some(public)) => Browser::new(
            b.clone(),
            public.clone(),
            store.clone(),
            &config.session,
            &config.confirmation,
        )
        .map(Some),
        _ => Ok(None),
    }
}

impl Gateway {
    /// Answers the steps of a browser confirmation; true when the request was answered.
    pub(super) async fn browser_step(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
    ) -> pingora::Result<bool> {
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
                .confirmation_origin(
                    req.method.as_str(),
                    req.uri.path(),
                    &body,
                    &self.ledger,
                    &ctx.request_id,
                )
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
        let Some(route) = self.config.routes.named(&hold.route) else {
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
            next_nonce: false,
        };
        let mut record = resumed.record;
        record.request_id = Some(ctx.request_id.clone());
        // Revocation, policy and live risk apply to a passkey confirmation as to a DPoP one.
        let client_ip = policy::client_address(
            ctx.peer.ip,
            ctx.peer.trusted,
            &held.headers,
            &self.config.trusted_proxies,
        );
        let confirmation = match self.confirmer.passkey_origin(&user, client_ip).await {
            Ok(origin) => Confirmation {
                origin,
                ..confirmation
            },
            Err(reason) => {
                self.answer(session, ctx, browser.refusal(reason, record))
                    .await?;
                return Ok(true);
            }
        };
        let confirmed = Confirmed {
            req: &held,
            route: &route,
            user: &user,
            confirmation: &confirmation,
            target: &hold.target,
            body_hex: &hold.body_sha256,
            body_sha256: &body_sha256,
            set_cookie: Some(&resumed.clear_cookie),
            approval: None,
        };
        if let Err(denial) = self.check_policy(&confirmed, &body, client_ip, &mut record) {
            let answer = browser.refusal(denial.reason, record);
            self.answer(session, ctx, answer).await?;
            return Ok(true);
        }
        self.forward_confirmed(session, ctx, record, confirmed, body)
            .await?;
        Ok(true)
    }
}
