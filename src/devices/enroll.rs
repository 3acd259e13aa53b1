//! `POST /.countersign/devices/enroll`: a device enrols itself, or another one, for the
//! subject of the session the request carries, through the ordinary confirmation exchange (the
//! first call gets `401 use_dpop_nonce` and a `DPoP-Nonce` bound to the request, body included;
//! the retry carries a proof over it).
//!
//! - `{"code": "<invite>"}` with a proof by the **new** key: the invite (issued by
//!   `countersign devices invite` for the same subject) is spent and the proof's key enrolled
//!   (`by: invite`).
//! - `{"jkt": "<thumbprint>"}` with a proof by a key **already enrolled** for the subject: that
//!   thumbprint is enrolled (`by: device:<signer>`), the new trust check of a second device.
//!
//! Either way the session must name a subject, and every outcome is audited.

use std::net::IpAddr;

use pingora::proxy::Session;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::audit::{Event, Record};
use crate::body::read_body;
use crate::confirm::{Challenge, Confirmer, DeviceCheck, Exchange, Outcome};
use crate::decision::Decision;
use crate::ledger::Ledger;
use crate::reason::Reason;
use crate::refusal::{self, Answers, Fresh};
use crate::reply::{self, Reply};
use crate::store::Enrol;

use super::{is_jkt, Redeemed, Source};

/// The enrolment endpoint's path on the app origin.
pub(crate) const ENROLL_PATH: &str = "/.countersign/devices/enroll";
/// What audit records and metric labels name the endpoint (it is no configured route).
pub(crate) const ENDPOINT: &str = "countersign-devices-enroll";
/// The largest enrolment body read.
const MAX_BODY: usize = 4096;

/// The request as the gateway read it.
pub(crate) struct Request<'a> {
    /// The request id (`Countersign-Request-Id`).
    pub request_id: &'a str,
    /// The origin-form target as received, query included (the action's target).
    pub target: &'a str,
    /// The external URI of the endpoint, what the proof's `htu` must name.
    pub external: String,
    /// The client address.
    pub client_ip: Option<IpAddr>,
    /// Whether the peer is a trusted proxy (for `subject_header`).
    pub trusted_peer: bool,
}

/// The body of an enrolment request: exactly one of the two.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    code: Option<String>,
    jkt: Option<String>,
}

enum Ask {
    Code(String),
    Jkt(String),
}

fn ask(body: &[u8]) -> Option<Ask> {
    let body: Body = serde_json::from_slice(body).ok()?;
    match (body.code, body.jkt) {
        (Some(code), None) if !code.is_empty() && code.len() <= 256 => Some(Ask::Code(code)),
        (None, Some(jkt)) if is_jkt(&jkt) => Some(Ask::Jkt(jkt)),
        _ => None,
    }
}

/// Serves one enrolment request; the response is written when this returns.
pub(crate) async fn serve(
    session: &mut Session,
    confirmer: &Confirmer,
    ledger: &Ledger,
    answers: &Answers,
    request: Request<'_>,
) -> pingora::Result<()> {
    let served = Served {
        confirmer,
        ledger,
        answers,
        request,
    };
    served.run(session).await
}

struct Served<'a> {
    confirmer: &'a Confirmer,
    ledger: &'a Ledger,
    answers: &'a Answers,
    request: Request<'a>,
}

impl Served<'_> {
    async fn run(&self, session: &mut Session) -> pingora::Result<()> {
        let req = session.req_header().clone();
        let mut record = Record {
            route: ENDPOINT.to_string(),
            method: req.method.as_str().to_string(),
            target: self.request.target.to_string(),
            client_ip: self.request.client_ip.map(|ip| ip.to_string()),
            request_id: Some(self.request.request_id.to_string()),
            ..Record::default()
        };
        if req.method != http::Method::POST {
            let text = "enrol a device with POST and a JSON body";
            let reply = Reply::error(405, "invalid_request", text).with("allow", "POST".into());
            return reply::write(session, reply, self.request.request_id).await;
        }
        let user = match self
            .confirmer
            .session(&req.headers, self.request.trusted_peer)
        {
            Ok(user) => user,
            Err(reason) => return self.refuse(session, record, reason, None).await,
        };
        record.subject = user.subject.clone();
        record.session = Some(user.id_hash());
        let read = read_body(session, &req, MAX_BODY).await?;
        let body = match read.complete(Reason::BodyTooLarge) {
            Ok(body) => body,
            Err(reason) => return self.refuse(session, record, reason, None).await,
        };
        let body_sha256: [u8; 32] = Sha256::digest(&body).into();
        let body_hex = hex::encode(body_sha256);
        record.body_sha256 = Some(body_hex.clone());
        let Some(ask) = ask(&body) else {
            return self
                .refuse(session, record, Reason::EnrolmentMalformed, None)
                .await;
        };
        // The new key proves itself with an invite; another key is vouched for by an enrolled one.
        let check = match ask {
            Ask::Code(_) => DeviceCheck::Any,
            Ask::Jkt(_) => DeviceCheck::Enrolled,
        };
        let Some(subject) = user.subject.clone() else {
            return self.refuse(session, record, Reason::NoSubject, None).await;
        };
        let htu = crate::htu::normalize(&self.request.external);
        let exchange = Exchange {
            method: "POST",
            overrides: "",
            target: self.request.target,
            htu: htu.as_deref(),
            headers: &req.headers,
            body_sha256: &body_sha256,
            // An enrolment records no network for the session's binding.
            client_ip: None,
        };
        let shown = refusal::Action {
            route: ENDPOINT,
            method: "POST",
            overrides: "",
            target: self.request.target,
            htu: htu.as_deref().unwrap_or(&self.request.external),
            body_sha256: &body_hex,
        };
        let fresh = |c: Challenge| Fresh {
            action: shown.describe(c.expires_at),
            nonce: c.nonce,
        };
        let confirmation = match self.confirmer.decide_with(&user, &exchange, check).await {
            Outcome::Accepted(c) => c,
            Outcome::Challenged(challenge) => {
                self.ledger.decide(&mut record, Decision::Challenged);
                let reply = self.answers.challenge(fresh(challenge));
                return reply::write(session, reply, self.request.request_id).await;
            }
            Outcome::Rejected {
                reason,
                device,
                challenge,
            } => {
                record.device = device;
                return self
                    .refuse(session, record, reason, challenge.map(fresh))
                    .await;
            }
        };
        record.confirmation_id = Some(confirmation.id.to_string());
        let (device, by) = match ask {
            Ask::Code(code) => {
                record.device = Some(confirmation.jkt.clone());
                match self.redeem(&code, &subject).await {
                    Ok(()) => (confirmation.jkt.clone(), Source::Invite),
                    Err(reason) => return self.refuse(session, record, reason, None).await,
                }
            }
            Ask::Jkt(jkt) => {
                record.device = Some(jkt.clone());
                (jkt, Source::Device(confirmation.jkt.clone()))
            }
        };
        let devices = self.confirmer.devices();
        let enrolled = match devices.enrol(&subject, &device, &by, None).await {
            Ok(enrolled) => enrolled,
            Err(e) => {
                tracing::warn!(error = %e, "device not enrolled: the store failed");
                let reason = Reason::StoreUnavailable;
                return self.refuse(session, record, reason, None).await;
            }
        };
        match enrolled {
            Enrol::Full => {
                self.refuse(session, record, Reason::TooManyDevices, None)
                    .await
            }
            Enrol::Already => {
                self.enrolled(session, &subject, &device, true, &by.name())
                    .await
            }
            Enrol::New => {
                record.event = Some(Event::DeviceEnrolled);
                record.by = Some(by.name());
                if !self.ledger.write(&record) {
                    // Fail closed: an enrolment without its audit record is undone.
                    if let Err(e) = devices.remove(&subject, &device).await {
                        tracing::warn!(error = %e, "unaudited enrolment could not be undone");
                    }
                    let reason = Reason::AuditUnavailable;
                    return self.refuse(session, record, reason, None).await;
                }
                tracing::info!(source = by.label(), "device enrolled");
                self.ledger
                    .metrics()
                    .device_enrolments
                    .with_label_values(&[by.label()])
                    .inc();
                self.enrolled(session, &subject, &device, false, &by.name())
                    .await
            }
        }
    }

    /// Spends an invite for `subject`; a full registry refuses before the code is spent.
    async fn redeem(&self, code: &str, subject: &str) -> Result<(), Reason> {
        let devices = self.confirmer.devices();
        let unavailable = |e: crate::store::StoreError| {
            tracing::warn!(error = %e, "invite not redeemed: the store failed");
            Reason::StoreUnavailable
        };
        let held = devices.list(subject).await.map_err(unavailable)?;
        if held.len() >= devices.max() {
            return Err(Reason::TooManyDevices);
        }
        match devices.redeem(code).await.map_err(unavailable)? {
            // A code for another subject is spent too: it was shown to the wrong session.
            Redeemed::Subject(invited) if invited == subject => Ok(()),
            Redeemed::Subject(_) | Redeemed::Unknown => Err(Reason::InviteInvalid),
            Redeemed::Used => Err(Reason::InviteUsed),
        }
    }

    async fn enrolled(
        &self,
        session: &mut Session,
        subject: &str,
        device: &str,
        already: bool,
        by: &str,
    ) -> pingora::Result<()> {
        let body = json!({
            "enrolled": { "subject": subject, "device": device, "by": by, "already": already },
        });
        let reply = Reply::json(200, &body);
        reply::write(session, reply, self.request.request_id).await
    }

    /// Refuses the enrolment: audit, metrics, response.
    async fn refuse(
        &self,
        session: &mut Session,
        mut record: Record,
        reason: Reason,
        fresh: Option<Fresh>,
    ) -> pingora::Result<()> {
        self.ledger.decide(&mut record, Decision::Rejected(reason));
        if reason.ends_connection() {
            session.set_keepalive(None);
        }
        let reply = self.answers.refusal(reason, fresh, "");
        reply::write(session, reply, self.request.request_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_asks_for_exactly_one_thing() {
        assert!(matches!(ask(br#"{"code":"abc"}"#), Some(Ask::Code(_))));
        let jkt = br#"{"jkt":"0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}"#;
        assert!(matches!(ask(jkt), Some(Ask::Jkt(_))));
        assert!(ask(br#"{"jkt":"short"}"#).is_none());
        assert!(
            ask(br#"{"code":"a","jkt":"0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}"#).is_none()
        );
        assert!(ask(br#"{"code":""}"#).is_none());
        assert!(ask(br#"{"code":"a","extra":1}"#).is_none());
        assert!(ask(b"code=a").is_none());
    }
}
