//! Browser confirmations (README "Browser users"): a person in a cookie-session
//! web UI cannot attach a DPoP proof, so a high-impact navigation is held in the store, confirmed on
//! a separate confirmation origin with a WebAuthn passkey (W3C Web Authentication Level 3), and
//! resumed on the app origin, where the held request is forwarded exactly once, as held.
//!
//! Sequence: hold (303 to `{origin}/confirm/{id}`) → page → ceremony (`begin`, `finish`) → 303 to
//! `{public_origin}/.countersign/resume/{token}` → a single-use, HttpOnly, path-scoped resume
//! cookie and 303 to the held target → that navigation, with the same session credential, takes
//! the hold and is answered by the upstream's response to the held request. Nothing here knows
//! Pingora: every step returns an [`Answer`] (and its audit record) for the gateway to write.

mod ceremony;
mod enrol;
pub mod hold;
pub mod page;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::audit::Record;
use crate::config::{BrowserConfig, ConfirmationConfig, PublicOrigin, SessionConfig};
use crate::decision::Decision;
use crate::devices::Registry;
use crate::ledger::Ledger;
use crate::quota::Quotas;
use crate::reason::Reason;
use crate::session::Session as UserSession;
use crate::store::{ReplayStore, StoreError, Taken};

pub use ceremony::CeremonyError;
pub use hold::{is_navigation, Held, Hold};

use ceremony::Ceremonies;

/// The path prefix of the resume endpoint on the app origin.
pub const RESUME_PREFIX: &str = "/.countersign/resume/";
/// The resume cookie's name.
const RESUME_COOKIE: &str = "countersign-resume";
/// How long a resume link and a resume cookie live.
const RESUME_TTL: Duration = Duration::from_secs(60);
/// The largest request body the confirmation origin reads (a WebAuthn response is a few KiB).
pub const MAX_CEREMONY_BODY: usize = 64 * 1024;

/// What the gateway writes back, and the audit record of the decision, if any.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers (Content-Length is the gateway's).
    pub headers: Vec<(&'static str, String)>,
    /// Response body.
    pub body: Vec<u8>,
    /// The decision, with the audit record to write it in.
    pub decided: Option<(Decision, Record)>,
}

/// A held request whose confirmation arrived: forward it, then clear the resume cookie.
#[derive(Debug)]
pub struct Resumed {
    /// The held request.
    pub hold: Hold,
    /// The `accepted` audit record (via browser, credential id, user verified).
    pub record: Record,
    /// The device as provenance names it: `webauthn:` + the credential id.
    pub device: String,
    /// A `Set-Cookie` that removes the resume cookie.
    pub clear_cookie: String,
}

/// What a resume token and a resume cookie stand for.
#[derive(serde::Serialize, serde::Deserialize)]
struct Proven {
    hold_id: String,
    credential_id: String,
    user_verified: bool,
    /// Where the passkey's trust came from (`first_use`, or its registry entry's source).
    #[serde(default)]
    enrolment: Option<String>,
    /// The held action's session id and target, so the resume step needs no read of the hold.
    #[serde(default)]
    session_id: String,
    #[serde(default)]
    target: String,
}

/// Browser confirmations over the replay store.
pub struct Browser {
    config: BrowserConfig,
    public_origin: PublicOrigin,
    store: Arc<dyn ReplayStore>,
    ceremonies: Ceremonies,
    /// `host[:port]` of the confirmation origin, as a `Host` header names it.
    authority: String,
    /// The confirmation origin's own listener, when it has one.
    listen: Option<SocketAddr>,
    /// Holds outstanding per session and per client network.
    quotas: Quotas,
    /// Passkey enrolments outstanding per session and per client network.
    enrol_quotas: Quotas,
}

impl Browser {
    /// Browser confirmations for `config`, returning people to `public_origin`.
    pub fn new(
        config: BrowserConfig,
        public_origin: PublicOrigin,
        store: Arc<dyn ReplayStore>,
        session: &SessionConfig,
        confirmation: &ConfirmationConfig,
    ) -> Result<Browser, CeremonyError> {
        let quotas = Quotas::new(
            store.clone(),
            "quota-hold",
            confirmation.max_outstanding_per_session,
            confirmation.max_outstanding_per_ip,
            config.hold_ttl,
        );
        let enrol_quotas = Quotas::new(
            store.clone(),
            "quota-enrol",
            confirmation.max_outstanding_per_session,
            confirmation.max_outstanding_per_ip,
            enrol::ENROL_TTL,
        );
        let devices = Registry::new(store.clone(), session.max_devices);
        let ceremonies = Ceremonies::new(
            &config,
            store.clone(),
            session.binding_ttl,
            session.binding,
            devices,
        )?;
        let authority = match config.origin.port {
            Some(port) => format!("{}:{port}", config.origin.host),
            None => config.origin.host.clone(),
        };
        let listen = config.listen.as_deref().and_then(|l| l.parse().ok());
        Ok(Browser {
            quotas,
            enrol_quotas,
            listen,
            config,
            public_origin,
            store,
            ceremonies,
            authority,
        })
    }

    /// Whether a request is for the confirmation origin: it came in on the confirmation
    /// listener, or its `Host` names the confirmation origin.
    pub fn serves(&self, host: Option<&str>, local: Option<SocketAddr>) -> bool {
        if self.listen.is_some() && local == self.listen {
            return true;
        }
        host.is_some_and(|h| {
            let h = h.trim().to_ascii_lowercase();
            let default = if self.config.origin.scheme == "https" {
                ":443"
            } else {
                ":80"
            };
            h == self.authority || h.strip_suffix(default) == Some(self.authority.as_str())
        })
    }

    /// Holds a high-impact navigation and sends the browser to its confirmation page.
    pub async fn hold(
        &self,
        held: Held<'_>,
        user: &UserSession,
        client_ip: Option<String>,
        mut record: Record,
    ) -> Answer {
        let id = hold::fresh_id();
        let expires = crate::clock::now_millis() + self.config.hold_ttl.as_millis() as u64;
        let hold = Hold::new(
            held,
            &user.id,
            user.id_hash(),
            user.subject.clone(),
            client_ip,
            expires,
        );
        record.via = Some("browser".to_string());
        let client = held_client(&hold);
        if let Err(e) = self.quotas.take(&user.id, client).await {
            return self.refused(e.reason(), record, None);
        }
        let stored = match serde_json::to_vec(&hold) {
            Ok(wire) => {
                self.store
                    .put_record(&hold::key("hold", &id), wire, self.config.hold_ttl)
                    .await
            }
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        };
        if let Err(e) = stored {
            tracing::warn!(error = %e, "hold not stored");
            self.quotas.give(&user.id, client).await;
            return self.refused(Reason::StoreUnavailable, record, None);
        }
        let location = format!("{}/confirm/{id}", self.config.origin.origin());
        Answer {
            status: 303,
            headers: vec![
                ("location", location),
                ("cache-control", "no-store".to_string()),
                ("content-type", "text/plain; charset=utf-8".to_string()),
            ],
            body: b"This action needs your confirmation.\n".to_vec(),
            decided: Some((Decision::Challenged, record)),
        }
    }

    /// Answers a request to the confirmation origin. A passkey enrolment writes its
    /// `device_enrolled` record itself, in `ledger` (it is undone when that fails).
    pub async fn confirmation_origin(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        ledger: &Ledger,
        request_id: &str,
    ) -> Answer {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (_, ["enrol", rest @ ..]) => {
                self.enrol_origin(method, rest, body, ledger, request_id)
                    .await
            }
            ("GET", ["confirm", "app.js"]) => self.static_answer("text/javascript", page::SCRIPT),
            ("GET", ["confirm", "app.css"]) => self.static_answer("text/css", page::stylesheet()),
            ("GET" | "HEAD", ["confirm", "refused", reason]) => {
                let reason = refusal_named(reason);
                self.page_answer(200, page::refusal(reason, Some(&self.back(None))), None)
            }
            ("GET" | "HEAD", ["confirm", id]) => self.show(id).await,
            ("POST", ["confirm", id, "begin"]) => self.begin(id).await,
            ("POST", ["confirm", id, "finish"]) => self.finish(id, body).await,
            ("POST", ["confirm", id, "cancel"]) => self.cancel(id).await,
            _ => self.page_answer(
                404,
                page::refusal(Reason::NonceExpired, Some(&self.back(None))),
                None,
            ),
        }
    }

    async fn load(&self, id: &str) -> Result<Option<Hold>, Reason> {
        match self.store.get_record(&hold::key("hold", id)).await {
            Ok(Some(wire)) => Ok(serde_json::from_slice(&wire).ok()),
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::warn!(error = %e, "hold not read");
                Err(Reason::StoreUnavailable)
            }
        }
    }

    async fn show(&self, id: &str) -> Answer {
        let hold = match self.load(id).await {
            Ok(Some(hold)) => hold,
            Ok(None) => return self.unknown_hold(),
            Err(reason) => return self.refused(reason, Record::default(), None),
        };
        let fields = page::fields(hold.header("content-type").as_deref(), &hold.body()).await;
        let left = hold
            .expires_at_ms
            .saturating_sub(crate::clock::now_millis())
            / 1000;
        self.page_answer(200, page::confirm(id, &hold, &fields, left), None)
    }

    async fn begin(&self, id: &str) -> Answer {
        let hold = match self.load(id).await {
            Ok(Some(hold)) => hold,
            Ok(None) => return self.json_next(&self.refusal_url(Reason::NonceExpired)),
            Err(reason) => return self.refused_json(reason, Record::default()),
        };
        let remaining = Duration::from_millis(
            hold.expires_at_ms
                .saturating_sub(crate::clock::now_millis()),
        );
        match self.ceremonies.begin(id, &hold, remaining).await {
            Ok(options) => self.json_answer(options),
            Err(reason) => {
                let record = self.record_of(&hold);
                self.discard(id).await;
                self.refused_json(reason, record)
            }
        }
    }

    async fn finish(&self, id: &str, body: &[u8]) -> Answer {
        let hold = match self.load(id).await {
            Ok(Some(hold)) => hold,
            Ok(None) => return self.refused_json(Reason::NonceExpired, Record::default()),
            Err(reason) => return self.refused_json(reason, Record::default()),
        };
        let mut record = self.record_of(&hold);
        let proven = match self.ceremonies.finish(id, &hold, body).await {
            Ok(proven) => proven,
            Err((reason, credential)) => {
                record.credential_id = credential;
                if reason != Reason::NonceReplay {
                    // Fail closed: a refused ceremony ends the hold; the person starts again.
                    self.discard(id).await;
                }
                return self.refused_json(reason, record);
            }
        };
        let token = hold::fresh_id();
        let proven = Proven {
            hold_id: id.to_string(),
            credential_id: proven.credential_id,
            user_verified: proven.user_verified,
            enrolment: Some(proven.enrolment),
            session_id: hold.session_id.clone(),
            target: hold.target.clone(),
        };
        if let Err(reason) = self.put_proven("resume", &token, &proven).await {
            return self.refused_json(reason, record);
        }
        let next = format!(
            "{}{}{RESUME_PREFIX}{token}",
            self.public_origin.origin(),
            self.public_origin.prefix
        );
        self.json_next(&next)
    }

    async fn cancel(&self, id: &str) -> Answer {
        let hold = match self.store.take_record(&hold::key("hold", id)).await {
            Ok(Taken::Value(wire)) => serde_json::from_slice::<Hold>(&wire).ok(),
            Ok(_) => None,
            Err(_) => return self.refused(Reason::StoreUnavailable, Record::default(), None),
        };
        let Some(hold) = hold else {
            return self.unknown_hold();
        };
        self.quotas.give(&hold.session_id, held_client(&hold)).await;
        let record = self.record_of(&hold);
        Answer {
            status: 303,
            headers: vec![
                ("location", self.back(hold.referer.as_deref())),
                ("cache-control", "no-store".to_string()),
            ],
            body: Vec::new(),
            decided: Some((Decision::Rejected(Reason::Cancelled), record)),
        }
    }

    /// The token of a resume URL on the app origin, when `path` is one.
    pub fn resume_token<'a>(&self, path: &'a str) -> Option<&'a str> {
        let path = path.strip_prefix(self.public_origin.prefix.as_str())?;
        path.strip_prefix(RESUME_PREFIX)
            .filter(|t| !t.is_empty() && !t.contains('/'))
    }

    /// The resume step on the app origin: checks the session, sets the resume cookie and sends the
    /// browser to the held request's own URL.
    pub async fn resume(&self, token: &str, user: Result<UserSession, Reason>) -> Answer {
        let proven = match self.take_proven("resume", token).await {
            Ok(proven) => proven,
            Err(reason) => return self.refused(reason, Record::default(), None),
        };
        // The token carries the held session and target: the hold itself is read only to
        // describe a refusal.
        let checked = same_session(&proven.session_id, user);
        let cookie = hold::fresh_id();
        let stored = match checked {
            Ok(()) => self.put_proven("arrival", &cookie, &proven).await,
            Err(reason) => Err(reason),
        };
        if let Err(reason) = stored {
            let hold = match self.load(&proven.hold_id).await {
                Ok(Some(hold)) => hold,
                Ok(None) => return self.unknown_hold(),
                Err(reason) => return self.refused(reason, Record::default(), None),
            };
            let mut record = self.record_of(&hold);
            record.credential_id = Some(proven.credential_id.clone());
            return self.refused(reason, record, Some(&hold));
        }
        let target = proven.target.as_str();
        let path = target.split('?').next().unwrap_or("/");
        let secure = if self.public_origin.scheme == "https" {
            "; Secure"
        } else {
            ""
        };
        let set_cookie = format!(
            "{RESUME_COOKIE}={cookie}; Path={}; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
            cookie_path(&self.public_origin.prefix, path),
            RESUME_TTL.as_secs()
        );
        let location = format!(
            "{}{}{target}",
            self.public_origin.origin(),
            self.public_origin.prefix,
        );
        Answer {
            status: 303,
            headers: vec![
                ("location", location),
                ("set-cookie", set_cookie),
                ("cache-control", "no-store".to_string()),
                ("referrer-policy", "no-referrer".to_string()),
            ],
            body: Vec::new(),
            decided: None,
        }
    }

    /// Whether a request carries a resume cookie: it is then the navigation that resumes a hold.
    pub fn resume_cookie(headers: &HeaderMap) -> Option<String> {
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(name, _)| *name == RESUME_COOKIE)
            .map(|(_, value)| value.trim().to_string())
    }

    /// The navigation that carries the resume cookie: the hold is taken (once), and handed back to
    /// forward when the navigation carries the same session credential as the held action.
    pub async fn arrive(
        &self,
        cookie: &str,
        path: &str,
        user: Result<UserSession, Reason>,
    ) -> Result<Resumed, Answer> {
        self.arrive_checked(cookie, path, user)
            .await
            .map_err(|mut refused| {
                // A refused resume cookie is spent: the browser must not present it again.
                refused.headers.push((
                    "set-cookie",
                    format!(
                        "{RESUME_COOKIE}=; Path={}; Max-Age=0; HttpOnly; SameSite=Lax",
                        cookie_path("", path)
                    ),
                ));
                refused
            })
    }

    async fn arrive_checked(
        &self,
        cookie: &str,
        path: &str,
        user: Result<UserSession, Reason>,
    ) -> Result<Resumed, Answer> {
        let proven = self
            .take_proven("arrival", cookie)
            .await
            .map_err(|reason| self.refused(reason, Record::default(), None))?;
        // Single use: of two navigations that get here, one takes the hold. It is taken before
        // the checks: a refused arrival ends the hold (fail closed; the person starts again).
        let hold = match self
            .store
            .take_record(&hold::key("hold", &proven.hold_id))
            .await
        {
            Ok(Taken::Value(wire)) => serde_json::from_slice::<Hold>(&wire)
                .map_err(|_| self.refused(Reason::StoreUnavailable, Record::default(), None))?,
            Ok(Taken::Used) => {
                return Err(self.refused(Reason::NonceReplay, Record::default(), None))
            }
            Ok(Taken::Unknown) => return Err(self.unknown_hold()),
            Err(_) => return Err(self.refused(Reason::StoreUnavailable, Record::default(), None)),
        };
        self.quotas.give(&hold.session_id, held_client(&hold)).await;
        let mut record = self.record_of(&hold);
        record.credential_id = Some(proven.credential_id.clone());
        let expected_path = format!("{}{}", self.public_origin.prefix, hold.path());
        if path != expected_path {
            return Err(self.refused(Reason::ActionMismatch, record, Some(&hold)));
        }
        if let Err(reason) = same_session(&hold.session_id, user) {
            return Err(self.refused(reason, record, Some(&hold)));
        }
        record.via = Some("browser".to_string());
        record.user_verified = Some(proven.user_verified);
        record.enrolment = proven.enrolment.clone();
        let clear_cookie = format!(
            "{RESUME_COOKIE}=; Path={}; Max-Age=0; HttpOnly; SameSite=Lax",
            cookie_path(&self.public_origin.prefix, hold.path())
        );
        Ok(Resumed {
            device: format!("webauthn:{}", proven.credential_id),
            hold,
            record,
            clear_cookie,
        })
    }

    /// Refuses a resumed hold whose route is no longer configured.
    pub fn gone(&self, record: Record) -> Answer {
        self.refused(Reason::NonceExpired, record, None)
    }

    async fn put_proven(&self, namespace: &str, id: &str, proven: &Proven) -> Result<(), Reason> {
        let wire = serde_json::to_vec(proven).map_err(|_| Reason::StoreUnavailable)?;
        self.store
            .put_record(&hold::key(namespace, id), wire, RESUME_TTL)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "resume token not stored");
                Reason::StoreUnavailable
            })
    }

    async fn take_proven(&self, namespace: &str, id: &str) -> Result<Proven, Reason> {
        match self.store.take_record(&hold::key(namespace, id)).await {
            Ok(Taken::Value(wire)) => {
                serde_json::from_slice(&wire).map_err(|_| Reason::NonceExpired)
            }
            Ok(Taken::Used) => Err(Reason::NonceReplay),
            Ok(Taken::Unknown) => Err(Reason::NonceExpired),
            Err(_) => Err(Reason::StoreUnavailable),
        }
    }

    async fn discard(&self, id: &str) {
        match self.store.take_record(&hold::key("hold", id)).await {
            Ok(Taken::Value(wire)) => {
                if let Ok(hold) = serde_json::from_slice::<Hold>(&wire) {
                    self.quotas.give(&hold.session_id, held_client(&hold)).await;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "refused hold not removed; it expires at its TTL"),
        }
    }

    fn record_of(&self, hold: &Hold) -> Record {
        Record {
            route: hold.route.clone(),
            method: hold.method.clone(),
            target: hold.target.clone(),
            body_sha256: Some(hold.body_sha256.clone()),
            subject: hold.subject.clone(),
            session: Some(hold.session_hash.clone()),
            client_ip: hold.client_ip.clone(),
            via: Some("browser".to_string()),
            ..Record::default()
        }
    }

    /// Where Cancel and refusals send a person back to: the app page they came from, when it is
    /// on the app origin, else the app's root.
    fn back(&self, referer: Option<&str>) -> String {
        let app = self.public_origin.origin();
        match referer {
            Some(r) if r.starts_with(&format!("{app}/")) => r.to_string(),
            _ => format!("{app}{}/", self.public_origin.prefix),
        }
    }

    fn unknown_hold(&self) -> Answer {
        self.refused(Reason::NonceExpired, Record::default(), None)
    }

    fn refusal_url(&self, reason: Reason) -> String {
        format!(
            "{}/confirm/refused/{}",
            self.config.origin.origin(),
            reason.as_str()
        )
    }

    /// The refusal page of a navigation the gateway refuses on the app origin (no valid session,
    /// a revoked one, policy or live risk), with its audit record.
    pub fn refusal(&self, reason: Reason, record: Record) -> Answer {
        self.refused(reason, record, None)
    }

    /// A refusal page for a person, with its audit record.
    fn refused(&self, reason: Reason, mut record: Record, hold: Option<&Hold>) -> Answer {
        record.via = Some("browser".to_string());
        let status = match reason {
            Reason::StoreUnavailable | Reason::AuditUnavailable | Reason::PolicyError => 503,
            Reason::TooManyChallenges => 429,
            Reason::NonceExpired => 404,
            // No valid session: the person must sign in to the app first.
            Reason::NoSession | Reason::InvalidSession | Reason::BearerNotAllowed => 401,
            _ => 403,
        };
        let back = self.back(hold.and_then(|h| h.referer.as_deref()));
        let decided = Some((Decision::Rejected(reason), record));
        self.page_answer(status, page::refusal(reason, Some(&back)), decided)
    }

    /// A refusal of a ceremony step, answered to the page's script: it navigates to the page.
    fn refused_json(&self, reason: Reason, mut record: Record) -> Answer {
        record.via = Some("browser".to_string());
        let mut answer = self.json_next(&self.refusal_url(reason));
        answer.decided = Some((Decision::Rejected(reason), record));
        answer
    }

    fn json_next(&self, next: &str) -> Answer {
        self.json_answer(serde_json::json!({ "next": next }))
    }

    fn static_answer(&self, content_type: &'static str, body: &str) -> Answer {
        Answer {
            status: 200,
            headers: page::headers(content_type, &self.public_origin.origin()),
            body: body.as_bytes().to_vec(),
            decided: None,
        }
    }

    fn json_answer(&self, value: serde_json::Value) -> Answer {
        Answer {
            status: 200,
            headers: page::headers("application/json", &self.public_origin.origin()),
            body: value.to_string().into_bytes(),
            decided: None,
        }
    }

    fn page_answer(
        &self,
        status: u16,
        body: Vec<u8>,
        decided: Option<(Decision, Record)>,
    ) -> Answer {
        Answer {
            status,
            headers: page::headers("text/html; charset=utf-8", &self.public_origin.origin()),
            body,
            decided,
        }
    }
}

/// The client a hold's quota slot was taken for.
fn held_client(hold: &Hold) -> Option<std::net::IpAddr> {
    hold.client_ip.as_deref().and_then(|ip| ip.parse().ok())
}

/// The resume step and the arrival carry the held action's session credential, or nothing is done.
fn same_session(held: &str, user: Result<UserSession, Reason>) -> Result<(), Reason> {
    let user = user.map_err(|_| Reason::SessionMismatch)?;
    if !held.is_empty() && bool::from(user.id.as_bytes().ct_eq(held.as_bytes())) {
        Ok(())
    } else {
        Err(Reason::SessionMismatch)
    }
}

/// A cookie `Path` for `path` (RFC 6265 §5.2.4): only characters a cookie attribute may carry.
fn cookie_path(prefix: &str, path: &str) -> String {
    format!("{prefix}{path}")
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != ';')
        .collect()
}

fn refusal_named(name: &str) -> Reason {
    [
        Reason::NonceExpired,
        Reason::SessionMismatch,
        Reason::DeviceMismatch,
        Reason::DeviceNotEnrolled,
        Reason::NoSubject,
        Reason::UserVerificationRequired,
        Reason::NonceReplay,
        Reason::Cancelled,
        Reason::StoreUnavailable,
        Reason::BadSignature,
    ]
    .into_iter()
    .find(|r| r.as_str() == name)
    .unwrap_or(Reason::NonceExpired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resume_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            "cookie",
            "sessionid=abc; countersign-resume=tok".parse().unwrap(),
        );
        assert_eq!(Browser::resume_cookie(&h).as_deref(), Some("tok"));
        let mut h = HeaderMap::new();
        h.append("cookie", "xcountersign-resume=tok".parse().unwrap());
        assert_eq!(Browser::resume_cookie(&h), None);
    }

    #[test]
    fn a_cookie_path_cannot_carry_attributes() {
        assert_eq!(cookie_path("", "/a;Domain=x"), "/aDomain=x");
        assert_eq!(cookie_path("/admin", "/users/1"), "/admin/users/1");
    }
}
