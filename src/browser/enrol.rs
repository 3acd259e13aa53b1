//! Passkey enrolment on the confirmation origin (README "Devices"). The session credential stays
//! on the app origin, as for a hold: `GET /.countersign/devices/enroll` there checks the session
//! and its subject and sends the browser, with a single-use enrolment id, to
//! `{origin}/enrol/{id}`, where the person creates a passkey (RP id of the confirmation origin)
//! trusted either by an invite code (`countersign devices invite`) or by a passkey already
//! enrolled for the same subject (the new trust check). The registration is verified by
//! `webauthn-rs`, the invite spent in one atomic step, and `webauthn:<credential id>` enrolled
//! for the subject, audited `device_enrolled` (`via: "browser"`). Refusals end the enrolment.

use std::net::IpAddr;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use webauthn_rs_core::proto::{AuthenticationState, RegistrationState};

use crate::audit::{Event, Record};
use crate::decision::Decision;
use crate::devices::enroll::{ENDPOINT, ENROLL_PATH};
use crate::devices::{Redeemed, Source, PASSKEY_PREFIX};
use crate::ledger::Ledger;
use crate::reason::Reason;
use crate::session::Session as UserSession;
use crate::store::{Enrol, Key, Taken};

use super::ceremony::unavailable;
use super::hold::{self, fresh_id};
use super::page::{self, escape};
use super::{Answer, Browser};

/// How long an enrolment page can be used: time to read out and type an invite code.
pub(super) const ENROL_TTL: Duration = Duration::from_secs(600);
/// The longest invite code read (they are 26 characters).
const MAX_CODE: usize = 256;

/// An enrolment the app origin started: who it is for, as that session named them.
#[derive(Serialize, Deserialize)]
struct Start {
    subject: String,
    session_hash: String,
    client_ip: Option<String>,
    expires_at_ms: u64,
}

/// What makes the new passkey trusted.
#[derive(Serialize, Deserialize)]
enum Trust {
    /// An invite code, by the digest that spends it (the code itself is never stored).
    Invite(Key),
    /// A passkey already enrolled for the subject (`webauthn:<credential id>`).
    Device(String),
}

/// An enrolment ceremony under way, as stored.
#[derive(Serialize, Deserialize)]
enum Pending {
    /// An enrolled passkey is asked to vouch for the new one.
    Vouch(AuthenticationState),
    /// The new passkey is being created.
    Register {
        state: RegistrationState,
        trust: Trust,
    },
}

/// The page's first step: an invite code, or a vouching passkey.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Begin {
    code: Option<String>,
    #[serde(default)]
    vouch: bool,
}

/// An invite code as a person types it: spaces and dashes dropped, any case.
fn normalise(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

impl Browser {
    /// `GET /.countersign/devices/enroll` on the app origin: a session that names a subject is
    /// sent to an enrolment page for that subject on the confirmation origin.
    pub async fn enrol_start(
        &self,
        user: Result<UserSession, Reason>,
        client_ip: Option<IpAddr>,
    ) -> Answer {
        let mut record = Record {
            route: ENDPOINT.to_string(),
            method: "GET".to_string(),
            target: ENROLL_PATH.to_string(),
            client_ip: client_ip.map(|ip| ip.to_string()),
            ..Record::default()
        };
        let user = match user {
            Ok(user) => user,
            Err(reason) => return self.enrol_refused(reason, record),
        };
        record.session = Some(user.id_hash());
        record.subject = user.subject.clone();
        let Some(subject) = user.subject.clone() else {
            return self.enrol_refused(Reason::NoSubject, record);
        };
        let session_hash = user.id_hash();
        if let Err(e) = self.enrol_quotas.take(&session_hash, client_ip).await {
            return self.enrol_refused(e.reason(), record);
        }
        let id = fresh_id();
        let start = Start {
            subject,
            session_hash,
            client_ip: record.client_ip.clone(),
            expires_at_ms: crate::clock::now_millis() + ENROL_TTL.as_millis() as u64,
        };
        let stored = match serde_json::to_vec(&start) {
            Ok(wire) => self
                .store
                .put_record(&hold::key("enrol", &id), wire, ENROL_TTL)
                .await
                .map_err(unavailable),
            Err(_) => Err(Reason::StoreUnavailable),
        };
        if let Err(reason) = stored {
            self.enrol_quotas.give(&start.session_hash, client_ip).await;
            return self.enrol_refused(reason, record);
        }
        Answer {
            status: 303,
            headers: vec![
                (
                    "location",
                    format!("{}/enrol/{id}", self.config.origin.origin()),
                ),
                ("cache-control", "no-store".to_string()),
                ("referrer-policy", "no-referrer".to_string()),
                ("content-type", "text/plain; charset=utf-8".to_string()),
            ],
            body: b"Enrol a passkey on the confirmation page.\n".to_vec(),
            decided: None,
        }
    }

    /// Answers the enrolment paths of the confirmation origin (`segments` after `enrol`).
    pub(super) async fn enrol_origin(
        &self,
        method: &str,
        segments: &[&str],
        body: &[u8],
        ledger: &Ledger,
        request_id: &str,
    ) -> Answer {
        match (method, segments) {
            ("GET", ["app.js"]) => self.static_answer("text/javascript", SCRIPT),
            ("GET" | "HEAD", ["done"]) => self.page_answer(200, self.enrolled_page(), None),
            ("GET" | "HEAD", ["refused", reason]) => {
                let reason = enrol_refusal_named(reason);
                self.page_answer(200, self.enrol_refusal_page(reason), None)
            }
            ("GET" | "HEAD", [id]) => self.enrol_page(id).await,
            ("POST", [id, "begin"]) => self.enrol_begin(id, body).await,
            ("POST", [id, "vouch"]) => self.enrol_vouch(id, body).await,
            ("POST", [id, "finish"]) => self.enrol_finish(id, body, ledger, request_id).await,
            _ => self.page_answer(404, self.enrol_refusal_page(Reason::NonceExpired), None),
        }
    }

    async fn enrol_load(&self, id: &str) -> Result<Option<Start>, Reason> {
        let wire = self
            .store
            .get_record(&hold::key("enrol", id))
            .await
            .map_err(unavailable)?;
        Ok(wire.and_then(|w| serde_json::from_slice(&w).ok()))
    }

    async fn enrol_page(&self, id: &str) -> Answer {
        let start = match self.enrol_load(id).await {
            Ok(Some(start)) => start,
            Ok(None) => {
                return self.page_answer(404, self.enrol_refusal_page(Reason::NonceExpired), None)
            }
            Err(reason) => return self.enrol_refused(reason, Record::default()),
        };
        let left = start
            .expires_at_ms
            .saturating_sub(crate::clock::now_millis())
            / 1000;
        self.page_answer(200, enrol_page(id, &start.subject, left), None)
    }

    /// The first step: checks the invite code (without spending it) or asks an enrolled passkey
    /// to vouch; the options of the ceremony that follows.
    async fn enrol_begin(&self, id: &str, body: &[u8]) -> Answer {
        let start = match self.enrol_load(id).await {
            Ok(Some(start)) => start,
            Ok(None) => return self.enrol_json_refused(Reason::NonceExpired, None),
            Err(reason) => return self.enrol_json_refused(reason, None),
        };
        let record = enrol_record(&start);
        let begin = serde_json::from_slice::<Begin>(body).ok();
        let asked = match begin {
            Some(Begin {
                code: Some(code),
                vouch: false,
            }) if !normalise(&code).is_empty() && code.len() <= MAX_CODE => {
                self.invite_begin(&start, &normalise(&code)).await
            }
            Some(Begin {
                code: None,
                vouch: true,
            }) => self.vouch_begin(&start).await,
            _ => Err(Reason::EnrolmentMalformed),
        };
        match asked {
            Ok((options, pending)) => match self.enrol_keep(id, &start, &pending).await {
                Ok(()) => self.json_answer(options),
                Err(reason) => self.enrol_json_refused(reason, Some(record)),
            },
            Err(reason) => {
                // Fail closed: a refused step ends the enrolment; the person starts again.
                self.enrol_discard(id).await;
                self.enrol_json_refused(reason, Some(record))
            }
        }
    }

    async fn invite_begin(
        &self,
        start: &Start,
        code: &str,
    ) -> Result<(serde_json::Value, Pending), Reason> {
        let devices = self.ceremonies.devices();
        let held = devices.list(&start.subject).await.map_err(unavailable)?;
        if held.len() >= devices.max() {
            return Err(Reason::TooManyDevices);
        }
        let (found, digest) = devices.peek(code).await.map_err(unavailable)?;
        match found {
            Redeemed::Subject(invited) if invited == start.subject => {}
            Redeemed::Subject(_) => {
                // A code for another subject is spent too: it was shown to the wrong session.
                devices.redeem_digest(&digest).await.map_err(unavailable)?;
                return Err(Reason::InviteInvalid);
            }
            Redeemed::Unknown => return Err(Reason::InviteInvalid),
            Redeemed::Used => return Err(Reason::InviteUsed),
        }
        let (options, state) = self.ceremonies.challenge_register(&start.subject).await?;
        let trust = Trust::Invite(digest);
        Ok((options, Pending::Register { state, trust }))
    }

    async fn vouch_begin(&self, start: &Start) -> Result<(serde_json::Value, Pending), Reason> {
        let (options, state) = self.ceremonies.challenge_enrolled(&start.subject).await?;
        Ok((options, Pending::Vouch(state)))
    }

    /// The vouching passkey's assertion: it must be enrolled for the subject; then the new
    /// passkey is created.
    async fn enrol_vouch(&self, id: &str, body: &[u8]) -> Answer {
        let (start, pending) = match self.enrol_take(id).await {
            Ok(taken) => taken,
            Err((reason, record)) => return self.enrol_json_refused(reason, record),
        };
        let mut record = enrol_record(&start);
        let Pending::Vouch(state) = pending else {
            self.enrol_discard(id).await;
            return self.enrol_json_refused(Reason::EnrolmentMalformed, Some(record));
        };
        let vouched = self
            .ceremonies
            .assert_enrolled(Some(&start.subject), state, body)
            .await;
        let proven = match vouched {
            Ok(proven) => proven,
            Err((reason, credential)) => {
                record.credential_id = credential;
                self.enrol_discard(id).await;
                return self.enrol_json_refused(reason, Some(record));
            }
        };
        let voucher = format!("{PASSKEY_PREFIX}{}", proven.credential_id);
        let registered = self.ceremonies.challenge_register(&start.subject).await;
        let (options, state) = match registered {
            Ok(ceremony) => ceremony,
            Err(reason) => {
                self.enrol_discard(id).await;
                return self.enrol_json_refused(reason, Some(record));
            }
        };
        let pending = Pending::Register {
            state,
            trust: Trust::Device(voucher),
        };
        match self.enrol_keep(id, &start, &pending).await {
            Ok(()) => self.json_answer(options),
            Err(reason) => self.enrol_json_refused(reason, Some(record)),
        }
    }

    /// The new passkey's registration: verified, its trust spent (the invite) or checked again
    /// (the vouching passkey is still enrolled), then enrolled and audited.
    async fn enrol_finish(
        &self,
        id: &str,
        body: &[u8],
        ledger: &Ledger,
        request_id: &str,
    ) -> Answer {
        let (start, pending) = match self.enrol_take(id).await {
            Ok(taken) => taken,
            Err((reason, record)) => return self.enrol_json_refused(reason, record),
        };
        // The enrolment is spent whatever happens next.
        self.enrol_discard(id).await;
        let mut record = enrol_record(&start);
        record.request_id = Some(request_id.to_string());
        let Pending::Register { state, trust } = pending else {
            return self.enrol_json_refused(Reason::EnrolmentMalformed, Some(record));
        };
        let credential = match self.ceremonies.register(&state, body) {
            Ok(credential) => credential,
            Err((reason, named)) => {
                record.credential_id = named;
                return self.enrol_json_refused(reason, Some(record));
            }
        };
        let credential_id = URL_SAFE_NO_PAD.encode(credential.cred_id.as_ref());
        let device = format!("{PASSKEY_PREFIX}{credential_id}");
        record.credential_id = Some(credential_id);
        record.device = Some(device.clone());
        record.user_verified = Some(credential.user_verified);
        let by = match self.trusted(&start, trust).await {
            Ok(by) => by,
            Err(reason) => return self.enrol_json_refused(reason, Some(record)),
        };
        let devices = self.ceremonies.devices();
        let passkey = serde_json::to_value(&credential).ok();
        let enrolled = devices.enrol(&start.subject, &device, &by, passkey).await;
        match enrolled {
            Ok(Enrol::New) => {}
            Ok(Enrol::Already) => {
                // The same credential id twice: an authenticator that reuses ids; keep the first.
                return self.enrol_json_refused(Reason::DeviceMismatch, Some(record));
            }
            Ok(Enrol::Full) => {
                return self.enrol_json_refused(Reason::TooManyDevices, Some(record))
            }
            Err(e) => return self.enrol_json_refused(unavailable(e), Some(record)),
        }
        record.event = Some(Event::DeviceEnrolled);
        record.by = Some(by.name());
        if !ledger.write(&record) {
            // Fail closed: an enrolment without its audit record is undone.
            if let Err(e) = devices.remove(&start.subject, &device).await {
                tracing::warn!(error = %e, "unaudited passkey enrolment could not be undone");
            }
            return self.enrol_json_refused(Reason::AuditUnavailable, Some(record));
        }
        tracing::info!(source = by.label(), via = "browser", "device enrolled");
        ledger
            .metrics()
            .device_enrolments
            .with_label_values(&[by.label()])
            .inc();
        self.json_next(&format!("{}/enrol/done", self.config.origin.origin()))
    }

    /// Spends the invite, or checks that the vouching passkey is still enrolled.
    async fn trusted(&self, start: &Start, trust: Trust) -> Result<Source, Reason> {
        let devices = self.ceremonies.devices();
        match trust {
            Trust::Invite(digest) => match devices.redeem_digest(&digest).await {
                Ok(Redeemed::Subject(invited)) if invited == start.subject => Ok(Source::Invite),
                Ok(Redeemed::Subject(_) | Redeemed::Unknown) => Err(Reason::InviteInvalid),
                Ok(Redeemed::Used) => Err(Reason::InviteUsed),
                Err(e) => Err(unavailable(e)),
            },
            Trust::Device(voucher) => match devices.entry(&start.subject, &voucher).await {
                Ok(Some(_)) => Ok(Source::Device(voucher)),
                // Removed while the new passkey was created.
                Ok(None) => Err(Reason::DeviceNotEnrolled),
                Err(e) => Err(unavailable(e)),
            },
        }
    }

    async fn enrol_keep(&self, id: &str, start: &Start, pending: &Pending) -> Result<(), Reason> {
        let remaining = Duration::from_millis(
            start
                .expires_at_ms
                .saturating_sub(crate::clock::now_millis()),
        );
        let wire = serde_json::to_vec(pending).map_err(|_| Reason::StoreUnavailable)?;
        self.store
            .put_record(&hold::key("enrol-ceremony", id), wire, remaining)
            .await
            .map_err(unavailable)
    }

    /// The enrolment and its ceremony, the ceremony taken once.
    async fn enrol_take(&self, id: &str) -> Result<(Start, Pending), (Reason, Option<Record>)> {
        let start = match self.enrol_load(id).await {
            Ok(Some(start)) => start,
            Ok(None) => return Err((Reason::NonceExpired, None)),
            Err(reason) => return Err((reason, None)),
        };
        let record = Some(enrol_record(&start));
        let taken = self
            .store
            .take_record(&hold::key("enrol-ceremony", id))
            .await;
        let pending = match taken {
            Ok(Taken::Value(wire)) => serde_json::from_slice::<Pending>(&wire)
                .map_err(|_| (Reason::NonceExpired, record.clone()))?,
            Ok(Taken::Used) => return Err((Reason::NonceReplay, record)),
            Ok(Taken::Unknown) => return Err((Reason::NonceExpired, record)),
            Err(e) => return Err((unavailable(e), record)),
        };
        Ok((start, pending))
    }

    /// Ends an enrolment: its id works no more, and its quota slot is given back.
    async fn enrol_discard(&self, id: &str) {
        match self.store.take_record(&hold::key("enrol", id)).await {
            Ok(Taken::Value(wire)) => {
                if let Ok(start) = serde_json::from_slice::<Start>(&wire) {
                    let client = start.client_ip.as_deref().and_then(|ip| ip.parse().ok());
                    self.enrol_quotas.give(&start.session_hash, client).await;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "enrolment not removed; it expires at its TTL"),
        }
    }

    /// A refused enrolment step answered to the page's script, which navigates to the refusal
    /// page; audited when it concerns an enrolment.
    fn enrol_json_refused(&self, reason: Reason, record: Option<Record>) -> Answer {
        let next = format!(
            "{}/enrol/refused/{}",
            self.config.origin.origin(),
            reason.as_str()
        );
        let mut answer = self.json_next(&next);
        answer.decided = record.map(|mut record| {
            record.via = Some("browser".to_string());
            (Decision::Rejected(reason), record)
        });
        answer
    }

    /// A refused enrolment as a page, audited.
    fn enrol_refused(&self, reason: Reason, mut record: Record) -> Answer {
        record.via = Some("browser".to_string());
        let status = match reason {
            Reason::StoreUnavailable | Reason::AuditUnavailable => 503,
            Reason::TooManyChallenges => 429,
            Reason::NoSession | Reason::InvalidSession | Reason::BearerNotAllowed => 401,
            _ => 403,
        };
        let decided = Some((Decision::Rejected(reason), record));
        self.page_answer(status, self.enrol_refusal_page(reason), decided)
    }

    /// Where a person starts an enrolment again: the app origin's enrol address.
    fn enrol_again(&self) -> String {
        format!(
            "{}{}{ENROLL_PATH}",
            self.public_origin.origin(),
            self.public_origin.prefix
        )
    }

    fn enrol_refusal_page(&self, reason: Reason) -> Vec<u8> {
        let (title, advice) = match reason {
            Reason::InviteInvalid => (
                "This invite code is not valid",
                "It is mistyped, expired (codes last 15 minutes unless your administrator set \
                 otherwise), or it was issued for another person. Ask your administrator for a \
                 new code, then start again.",
            ),
            Reason::InviteUsed | Reason::NonceReplay => (
                "This code was already used",
                "An invite code, and each enrolment step, works once. Nothing new was enrolled. \
                 Ask your administrator for a new code, then start again.",
            ),
            Reason::TooManyDevices => (
                "You have enrolled as many devices as allowed",
                "Ask your administrator to remove a device you no longer use, then start again.",
            ),
            Reason::DeviceNotEnrolled => (
                "That passkey is not enrolled for you",
                "Only a passkey already enrolled for your account can vouch for a new one. Use an \
                 invite code from your administrator instead.",
            ),
            Reason::DeviceMismatch => (
                "This passkey is already enrolled",
                "The authenticator offered a passkey that is already enrolled. Nothing new was \
                 enrolled.",
            ),
            Reason::NonceExpired => (
                "This enrolment page has expired",
                "It was not used in time, or it was already finished. Start again from the \
                 application.",
            ),
            Reason::EnrolmentMalformed => (
                "Enter the invite code",
                "Type the code your administrator gave you, or vouch with a passkey you already \
                 enrolled. Start again from the application.",
            ),
            other => return page::refusal(other, Some(&self.enrol_again())),
        };
        let body = format!(
            "<h1>{}</h1><p>{}</p><p><small>Reason: <code id=\"reason\">{}</code></small></p>\
<p><a href=\"{}\">Start again</a></p>",
            escape(title),
            escape(advice),
            reason.as_str(),
            escape(&self.enrol_again())
        );
        page::document(title, &body)
    }

    fn enrolled_page(&self) -> Vec<u8> {
        let back = format!(
            "{}{}/",
            self.public_origin.origin(),
            self.public_origin.prefix
        );
        let body = format!(
            "<h1 id=\"enrolled\">Passkey enrolled</h1><p>This passkey now confirms actions for \
your account. You can close this page.</p><p><a href=\"{}\">Back to the application</a></p>",
            escape(&back)
        );
        page::document("Passkey enrolled", &body)
    }
}

/// The audit record of an enrolment started for `start`.
fn enrol_record(start: &Start) -> Record {
    Record {
        route: ENDPOINT.to_string(),
        method: "POST".to_string(),
        target: ENROLL_PATH.to_string(),
        subject: Some(start.subject.clone()),
        session: Some(start.session_hash.clone()),
        client_ip: start.client_ip.clone(),
        via: Some("browser".to_string()),
        ..Record::default()
    }
}

fn enrol_refusal_named(name: &str) -> Reason {
    [
        Reason::InviteInvalid,
        Reason::InviteUsed,
        Reason::TooManyDevices,
        Reason::DeviceNotEnrolled,
        Reason::DeviceMismatch,
        Reason::NonceExpired,
        Reason::EnrolmentMalformed,
        Reason::UserVerificationRequired,
        Reason::StoreUnavailable,
        Reason::AuditUnavailable,
        Reason::BadSignature,
    ]
    .into_iter()
    .find(|r| r.as_str() == name)
    .unwrap_or(Reason::NonceExpired)
}

/// The enrolment page: an invite code field, and the vouching alternative.
fn enrol_page(id: &str, subject: &str, seconds_left: u64) -> Vec<u8> {
    let body = format!(
        "<h1>Enrol a passkey</h1>\
<p>A passkey on this device will confirm actions for <strong id=\"subject\">{subject}</strong>.</p>\
<form id=\"enrol-form\" data-enrol=\"{id}\"><p><label for=\"code\">Invite code from your \
administrator</label><br><input id=\"code\" name=\"code\" autocomplete=\"off\" autocapitalize=\"none\" \
spellcheck=\"false\" inputmode=\"text\" maxlength=\"64\"></p>\
<div class=\"actions\"><button id=\"confirm\" type=\"submit\">Create passkey</button></div></form>\
<p>Or, without a code: <button id=\"vouch\" type=\"button\">Vouch with a passkey you already \
enrolled</button></p>\
<p>Time left: <span id=\"left\" data-seconds=\"{seconds_left}\">{seconds_left} s</span></p>\
<p id=\"status\" role=\"status\"></p>\
<p><small>The code works once. If you did not ask for this, close this page.</small></p>\
<script src=\"/enrol/app.js\"></script>",
        subject = escape(subject),
        id = escape(id),
    );
    page::document("Enrol a passkey", &body)
}

/// The enrolment page's script: sends the code (or asks to vouch), runs the WebAuthn ceremonies
/// the gateway answers with, and follows its last answer.
const SCRIPT: &str = r#""use strict";
(function () {
  var form = document.getElementById("enrol-form");
  var vouch = document.getElementById("vouch");
  var code = document.getElementById("code");
  var status = document.getElementById("status");
  var left = document.getElementById("left");
  if (!form) { return; }
  var id = form.getAttribute("data-enrol");
  var seconds = parseInt(left.getAttribute("data-seconds"), 10);
  var timer = setInterval(function () {
    seconds -= 1;
    if (seconds <= 0) {
      clearInterval(timer);
      left.textContent = "expired";
      status.textContent = "This page has expired. Start again from the application.";
      return;
    }
    left.textContent = seconds + " s";
  }, 1000);
  function b64(buf) {
    var s = "", bytes = new Uint8Array(buf);
    for (var i = 0; i < bytes.length; i++) { s += String.fromCharCode(bytes[i]); }
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function unb64(s) {
    s = s.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) { s += "="; }
    var bin = atob(s), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) { out[i] = bin.charCodeAt(i); }
    return out.buffer;
  }
  function post(path, body) {
    return fetch("/enrol/" + id + path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      credentials: "omit"
    }).then(function (r) { return r.json(); });
  }
  function create(answer) {
    if (answer.next) { return answer; }
    var pk = answer.options.publicKey;
    pk.challenge = unb64(pk.challenge);
    pk.user.id = unb64(pk.user.id);
    (pk.excludeCredentials || []).forEach(function (c) { c.id = unb64(c.id); });
    status.textContent = "Create the passkey on your authenticator…";
    return navigator.credentials.create({ publicKey: pk }).then(function (cred) {
      return post("/finish", {
        id: cred.id, rawId: b64(cred.rawId), type: cred.type, extensions: {},
        response: {
          attestationObject: b64(cred.response.attestationObject),
          clientDataJSON: b64(cred.response.clientDataJSON)
        }
      });
    });
  }
  function vouched(answer) {
    if (answer.next) { return answer; }
    var pk = answer.options.publicKey;
    pk.challenge = unb64(pk.challenge);
    (pk.allowCredentials || []).forEach(function (c) { c.id = unb64(c.id); });
    status.textContent = "Confirm with the passkey you already enrolled…";
    return navigator.credentials.get({ publicKey: pk }).then(function (cred) {
      return post("/vouch", {
        id: cred.id, rawId: b64(cred.rawId), type: cred.type, extensions: {},
        response: {
          authenticatorData: b64(cred.response.authenticatorData),
          clientDataJSON: b64(cred.response.clientDataJSON),
          signature: b64(cred.response.signature),
          userHandle: cred.response.userHandle ? b64(cred.response.userHandle) : null
        }
      });
    });
  }
  function run(steps) {
    form.querySelector("button").disabled = true;
    vouch.disabled = true;
    steps.then(function (answer) {
      if (answer && answer.next) { window.location.assign(answer.next); return; }
      status.textContent = "The enrolment did not succeed. Start again from the application.";
    }).catch(function () {
      form.querySelector("button").disabled = false;
      vouch.disabled = false;
      status.textContent = "The passkey step was cancelled or failed. Press the button to try again.";
    });
  }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    status.textContent = "Checking the code…";
    run(post("/begin", { code: code.value }).then(create));
  });
  vouch.addEventListener("click", function () {
    run(post("/begin", { vouch: true }).then(vouched).then(create));
  });
  form.setAttribute("data-ready", "1");
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typed_code_is_read_as_issued() {
        assert_eq!(normalise(" ABCD-efgh 2345\n"), "abcdefgh2345");
    }

    #[test]
    fn the_enrolment_page_never_echoes_a_code_and_loads_nothing_external() {
        let page = String::from_utf8(enrol_page("id1", "<alice>", 600)).unwrap();
        assert!(page.contains("&lt;alice&gt;"));
        assert!(!page.contains("https://") && !page.contains("http://"));
        assert!(page.contains("src=\"/enrol/app.js\""));
        assert!(!page.contains("value="));
    }
}
