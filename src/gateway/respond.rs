//! How the gateway answers a request itself: the decision recorded, then the reply written.

use pingora::proxy::Session;

use super::{Gateway, RequestCtx};
use crate::audit::Record;
use crate::browser;
use crate::decision::Decision;
use crate::reason::Reason;
use crate::refusal::Fresh;
use crate::reply::{self, Reply};

impl Gateway {
    /// Refuses a request: audit, metrics, response.
    pub(super) async fn refuse(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        record: Record,
        reason: Reason,
    ) -> pingora::Result<()> {
        self.refuse_with(session, ctx, record, reason, None, "")
            .await
    }

    /// [`Gateway::refuse`] with a fresh nonce and more `WWW-Authenticate` parameters.
    pub(super) async fn refuse_with(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        mut record: Record,
        reason: Reason,
        fresh: Option<Fresh>,
        auth_params: &str,
    ) -> pingora::Result<()> {
        self.ledger.decide(&mut record, Decision::Rejected(reason));
        if reason.ends_connection() {
            session.set_keepalive(None);
        }
        let reply = self.answers.refusal(reason, fresh, auth_params);
        reply::write(session, reply, &ctx.request_id).await
    }

    /// Writes a browser step's answer and records its decision.
    pub(super) async fn answer(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        answer: browser::Answer,
    ) -> pingora::Result<()> {
        if let Some((decision, mut record)) = answer.decided {
            record.request_id = Some(ctx.request_id.clone());
            record.client_ip = record
                .client_ip
                .or_else(|| ctx.peer.ip.map(|ip| ip.to_string()));
            self.ledger.decide(&mut record, decision);
        }
        let reply = Reply {
            status: answer.status,
            headers: answer.headers,
            body: answer.body,
        };
        reply::write(session, reply, &ctx.request_id).await
    }
}
