//! Device enrolment (docs/protocol.md, "Devices"): `POST /.countersign/devices/enroll` on the app
//! origin, answered by the gateway itself ([`crate::devices::enroll`]); with a `browser:` section,
//! `GET` there starts a passkey enrolment on the confirmation origin.

use pingora::proxy::Session;

use super::{Gateway, RequestCtx};
use crate::devices::enroll::{self, ENROLL_PATH};
use crate::target::Target;

impl Gateway {
    /// Serves an enrolment request; true when `target` was the enrolment endpoint.
    pub(super) async fn enrol_step(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        target: &Target,
    ) -> pingora::Result<bool> {
        if target.path() != ENROLL_PATH {
            return Ok(false);
        }
        // A person's browser opening the address: a passkey is enrolled on the confirmation
        // origin, sent there with the session's subject (the credential stays here).
        let req = session.req_header();
        if let (Some(browser), &http::Method::GET) = (&self.browser, &req.method) {
            let user = self.confirmer.session(&req.headers, ctx.peer.trusted);
            let answer = browser.enrol_start(user, ctx.peer.ip).await;
            self.answer(session, ctx, answer).await?;
            return Ok(true);
        }
        let public = self.config.public_origin.as_ref();
        let request = enroll::Request {
            request_id: &ctx.request_id,
            target: &ctx.target,
            external: Self::view(ctx).external_uri(public, target.path()),
            client_ip: ctx.peer.ip,
            trusted_peer: ctx.peer.trusted,
        };
        let (confirmer, ledger, answers) = (&self.confirmer, &self.ledger, &self.answers);
        enroll::serve(session, confirmer, ledger, answers, request).await?;
        Ok(true)
    }
}
