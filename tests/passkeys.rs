//! Passkey enrolment with `session.binding: enrolled`, in a real headless Chromium with WebAuthn
//! virtual authenticators, on a real Redis shared with the `countersign devices` commands: a
//! person signed in to the app opens `/.countersign/devices/enroll`, types the invite code an
//! operator issued, and creates a passkey on the confirmation origin; that passkey then confirms
//! held actions, no other does, and a removal holds at once.

mod support;

#[path = "support/chromium.rs"]
mod chromium;
#[path = "support/form_app.rs"]
mod form_app;
#[path = "support/redis.rs"]
mod redis_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chromium::Chromium;
use form_app::FormApp;
use redis_support::RedisServer;
use serde_json::{json, Value};
use support::Gateway;

const BIN: &str = env!("CARGO_BIN_EXE_countersign");
const DELETE: &str = "/users/42/delete";

/// The app on `http://127.0.0.1:{port}` behind an auth proxy on loopback that names the subject
/// in `x-user`; the confirmation origin on `http://localhost:{port}`; devices enrolled in Redis.
fn config(redis: &RedisServer) -> String {
    format!(
        r#"public_origin: "http://127.0.0.1:{{port}}"
trusted_proxies: ["127.0.0.1/32"]
browser:
  origin: "http://localhost:{{port}}"
  user_verification: required
  hold_ttl: 120s
upstreams:
  app: {{ address: "{{upstream}}" }}
session: {{ kind: cookie, cookie: sessionid, subject_header: x-user, binding: enrolled }}
store: {{ kind: redis, url: "{}", timeout: 500ms }}
routes:
  - name: delete-user
    match: {{ methods: [POST], path: "/users/{{id}}/delete" }}
    upstream: app
    risk: high
  - name: default
    match: {{ path: "/{{*rest}}" }}
    upstream: app
    risk: low
"#,
        redis.url()
    )
}

struct World {
    app: FormApp,
    gateway: Gateway,
    chromium: Chromium,
    redis: RedisServer,
    dir: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        let redis = RedisServer::start();
        let app = FormApp::start().await;
        let gateway = Gateway::start_at(&config(&redis), app.addr).await;
        let mut chromium = Chromium::start().await;
        chromium.call("Network.enable", json!({})).await;
        let mut w = World {
            app,
            gateway,
            chromium,
            redis,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        w.as_subject("alice").await;
        w
    }

    /// The auth proxy names `subject` from now on.
    async fn as_subject(&mut self, subject: &str) {
        self.chromium
            .call(
                "Network.setExtraHTTPHeaders",
                json!({ "headers": { "x-user": subject } }),
            )
            .await;
    }

    fn app_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.gateway.port)
    }

    /// A config file for the `countersign devices` commands: the gateway's store and audit log.
    fn cli_config(&self, session_extra: &str) -> PathBuf {
        let yaml = format!(
            r#"listen: "127.0.0.1:1"
public_origin: "http://127.0.0.1:{port}"
upstreams: {{ app: {{ address: "127.0.0.1:9" }} }}
session: {{ kind: cookie, cookie: sessionid, binding: enrolled{session_extra} }}
store: {{ kind: redis, url: "{url}" }}
audit: {{ path: "{audit}" }}
routes:
  - name: default
    match: {{ path: "/{{*rest}}" }}
    upstream: app
    risk: low
"#,
            port = self.gateway.port,
            url = self.redis.url(),
            audit = self.gateway.audit_path.display()
        );
        let path = self
            .dir
            .path()
            .join(format!("cli-{}.yaml", rand::random::<u32>()));
        std::fs::write(&path, yaml).expect("write CLI config");
        path
    }

    fn devices(&self, args: &[&str]) -> Output {
        devices(&self.cli_config(""), args)
    }

    /// A fresh invite code for `subject`, as `countersign devices invite` prints it.
    fn invite(&self, subject: &str) -> String {
        invite(&self.cli_config(""), subject)
    }

    async fn sign_in(&mut self) {
        let login = self.app_url("/login");
        self.chromium.goto(&login).await;
        self.chromium.click("#login").await;
        self.chromium
            .wait_for("document.getElementById('welcome')")
            .await;
    }

    /// Opens the enrol address on the app origin and waits for the enrol page it leads to.
    async fn open_enrol_page(&mut self) {
        let enrol = self.app_url("/.countersign/devices/enroll");
        self.chromium.goto(&enrol).await;
        self.chromium
            .wait_for("document.querySelector('#enrol-form[data-ready]')")
            .await;
        let url = self.chromium.url().await;
        assert!(
            url.starts_with(&format!("http://localhost:{}/enrol/", self.gateway.port)),
            "the enrol page is on the confirmation origin: {url}"
        );
    }

    /// Types `code` on the enrol page and presses Create passkey.
    async fn submit_code(&mut self, code: &str) {
        let typed = Value::String(code.to_string());
        self.chromium
            .eval(&format!("document.getElementById('code').value = {typed}"))
            .await;
        self.chromium.click("#confirm").await;
    }

    /// Enrols the page's authenticator with a fresh invite for `subject`; the device name.
    async fn enrol_with_invite(&mut self, subject: &str) -> String {
        let code = self.invite(subject);
        self.open_enrol_page().await;
        self.submit_code(&code).await;
        self.chromium
            .wait_for("document.getElementById('enrolled')")
            .await;
        let enrolled = last_with(&self.gateway.audit(), "device_enrolled");
        enrolled["device"].as_str().expect("device").to_string()
    }

    /// Presses Delete on the users page, then Confirm on the confirmation page.
    async fn delete_and_confirm(&mut self) {
        let users = self.app_url("/users");
        self.chromium.goto(&users).await;
        self.chromium
            .wait_for("document.getElementById('delete')")
            .await;
        self.chromium.click("#delete").await;
        self.chromium
            .wait_for("document.querySelector('#confirm[data-ready]')")
            .await;
        self.chromium.click("#confirm").await;
    }

    fn deletes(&self) -> usize {
        self.app.received_at("POST", DELETE).len()
    }

    /// Nothing of an enrolment ever reaches the app.
    fn assert_app_saw_no_enrolment(&self) {
        let seen: Vec<_> = self
            .app
            .received()
            .into_iter()
            .filter(|r| r.target.contains("countersign") || r.target.starts_with("/enrol"))
            .collect();
        assert!(seen.is_empty(), "{seen:#?}");
    }
}

fn devices(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("devices")
        .arg(args[0])
        .arg("--config")
        .arg(config)
        .args(&args[1..])
        .output()
        .expect("run countersign devices")
}

fn invite(config: &Path, subject: &str) -> String {
    let out = devices(config, &["invite", "--subject", subject]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn last_with(audit: &[Value], event: &str) -> Value {
    audit
        .iter()
        .rev()
        .find(|r| r["event"] == event)
        .cloned()
        .unwrap_or_else(|| panic!("no {event} record in {audit:#?}"))
}

/// The refusal page's reason code.
async fn refusal_reason(chromium: &mut Chromium) -> String {
    chromium.wait_for("document.getElementById('reason')").await;
    chromium
        .eval("document.getElementById('reason').textContent")
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Gives a virtual authenticator a discoverable P-256 passkey for RP id `localhost`.
async fn add_resident_passkey(chromium: &mut Chromium, authenticator: &str) {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
        .expect("P-256 key");
    chromium
        .call(
            "WebAuthn.addCredential",
            json!({
                "authenticatorId": authenticator,
                "credential": {
                    "credentialId": STANDARD.encode(rand::random::<[u8; 16]>()),
                    "isResidentCredential": true,
                    "rpId": "localhost",
                    "privateKey": STANDARD.encode(pkcs8.as_ref()),
                    "userHandle": STANDARD.encode(rand::random::<[u8; 16]>()),
                    "signCount": 0,
                }
            }),
        )
        .await;
}

/// A browser that ignores the gateway's list of allowed passkeys, as an attacker's own browser
/// may: the authenticator answers with whatever passkey it has.
const IGNORE_ALLOWED: &str = r#"(function () {
  var get = navigator.credentials.get.bind(navigator.credentials);
  navigator.credentials.get = function (o) { delete o.publicKey.allowCredentials; return get(o); };
  return true;
})()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passkey_enrolled_with_an_invite_confirms_and_a_removal_holds_at_once() {
    let mut w = World::start().await;
    w.chromium.add_authenticator(true).await;
    w.sign_in().await;

    // Before enrolment the subject has no passkey: the ceremony refuses, nothing is forwarded.
    w.delete_and_confirm().await;
    assert_eq!(refusal_reason(&mut w.chromium).await, "device_not_enrolled");
    assert_eq!(w.deletes(), 0);

    let code = w.invite("alice");
    w.open_enrol_page().await;
    let page = w.chromium.text().await;
    assert!(page.contains("alice"), "{page}");
    w.submit_code(&code).await;
    w.chromium
        .wait_for("document.getElementById('enrolled')")
        .await;

    let audit = w.gateway.audit();
    let enrolled = last_with(&audit, "device_enrolled");
    assert_eq!(enrolled["by"], "invite", "{enrolled}");
    assert_eq!(enrolled["via"], "browser");
    assert_eq!(enrolled["subject"], "alice");
    assert_eq!(enrolled["route"], "countersign-devices-enroll");
    assert_eq!(enrolled["user_verified"], true);
    let device = enrolled["device"].as_str().expect("device").to_string();
    let credential = enrolled["credential_id"].as_str().expect("credential id");
    assert_eq!(device, format!("webauthn:{credential}"));
    // The code is shown once, by the command: never in the log, the page or the registry.
    let log = std::fs::read_to_string(&w.gateway.audit_path).expect("audit log");
    assert!(!log.contains(&code));
    assert!(!w.chromium.text().await.contains(&code));
    let keys = redis_support::keys(&w.redis.url(), "*");
    assert!(keys.iter().all(|k| !k.contains(&code)), "{keys:?}");
    support::assert_metric(
        &w.gateway.metrics().await,
        "countersign_device_enrolments_total{source=\"invite\"} 1",
    );
    let listed = w.devices(&["list", "--subject", "alice"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains(&format!("{device}  by invite")), "{listed}");
    w.assert_app_saw_no_enrolment();

    // The enrolled passkey confirms a held action: forwarded once, as held.
    w.delete_and_confirm().await;
    w.chromium.wait_for("document.getElementById('done')").await;
    let deletes = w.app.received_at("POST", DELETE);
    assert_eq!(deletes.len(), 1, "{deletes:#?}");
    assert_eq!(
        &deletes[0].body[..],
        b"csrfmiddlewaretoken=c5rf&reason=left+the+company"
    );
    let accepted = last_with(&w.gateway.audit(), "accepted");
    assert_eq!(accepted["via"], "browser");
    assert_eq!(accepted["credential_id"], credential);
    assert_eq!(accepted["enrolment"], "invite");
    assert_eq!(accepted["subject"], "alice");

    // The operator removes it by its credential id: the next confirmation is refused.
    let removed = w.devices(&["remove", "--subject", "alice", "--credential", credential]);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let audit = w.gateway.audit();
    let record = last_with(&audit, "device_removed");
    assert_eq!(record["device"], device.as_str());
    assert_eq!(record["by"], "operator");
    w.delete_and_confirm().await;
    assert_eq!(refusal_reason(&mut w.chromium).await, "device_not_enrolled");
    assert_eq!(w.deletes(), 1, "nothing more reached the app");
    let rejected = last_with(&w.gateway.audit(), "rejected");
    assert_eq!(rejected["reason"], "device_not_enrolled", "{rejected}");
    assert_eq!(rejected["route"], "delete-user");
    assert_eq!(rejected["via"], "browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passkey_that_is_not_enrolled_confirms_nothing() {
    let mut w = World::start().await;
    let enrolled = w.chromium.add_authenticator(true).await;
    w.sign_in().await;
    let device = w.enrol_with_invite("alice").await;

    // Another authenticator, whose passkey was never enrolled, in a browser that offers it anyway.
    w.chromium.remove_authenticator(&enrolled).await;
    let other = w.chromium.add_authenticator(true).await;
    add_resident_passkey(&mut w.chromium, &other).await;
    let users = w.app_url("/users");
    w.chromium.goto(&users).await;
    w.chromium.click("#delete").await;
    w.chromium
        .wait_for("document.querySelector('#confirm[data-ready]')")
        .await;
    w.chromium.eval(IGNORE_ALLOWED).await;
    w.chromium.click("#confirm").await;
    assert_eq!(refusal_reason(&mut w.chromium).await, "device_not_enrolled");
    assert_eq!(w.deletes(), 0, "the app saw nothing");
    let rejected = last_with(&w.gateway.audit(), "rejected");
    assert_eq!(rejected["reason"], "device_not_enrolled", "{rejected}");
    assert_eq!(rejected["route"], "delete-user");
    assert_eq!(rejected["via"], "browser");
    let refused = rejected["credential_id"].as_str().expect("credential id");
    assert_ne!(format!("webauthn:{refused}"), device);
    assert!(w.gateway.audit().iter().all(|r| r["event"] != "accepted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_expired_and_other_subjects_codes_enrol_nothing() {
    let mut w = World::start().await;
    w.chromium.add_authenticator(true).await;
    w.sign_in().await;

    let refused = |w: &World, reason: &str| {
        let audit = w.gateway.audit();
        let rejected = last_with(&audit, "rejected");
        assert_eq!(rejected["reason"], reason, "{rejected}");
        assert_eq!(rejected["route"], "countersign-devices-enroll");
        assert_eq!(rejected["via"], "browser");
        assert_eq!(rejected["subject"], "alice");
        assert!(rejected["device"].is_null(), "{rejected}");
    };
    let nothing_enrolled = |w: &World| {
        let listed = w.devices(&["list", "--subject", "alice"]);
        let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
        assert!(listed.contains("no devices enrolled"), "{listed}");
        assert!(w
            .gateway
            .audit()
            .iter()
            .all(|r| r["event"] != "device_enrolled"));
    };

    // A code issued for another subject: refused, and spent.
    let bobs = w.invite("bob");
    w.open_enrol_page().await;
    w.submit_code(&bobs).await;
    assert_eq!(refusal_reason(&mut w.chromium).await, "invite_invalid");
    refused(&w, "invite_invalid");
    nothing_enrolled(&w);

    // That code is spent for its own subject too.
    w.as_subject("bob").await;
    w.open_enrol_page().await;
    w.submit_code(&bobs).await;
    assert_eq!(refusal_reason(&mut w.chromium).await, "replay");
    w.as_subject("alice").await;

    // A code that expired (a config with a one-second invite_ttl issues it).
    let expiring = invite(&w.cli_config(", invite_ttl: 1s"), "alice");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    w.open_enrol_page().await;
    w.submit_code(&expiring).await;
    assert_eq!(refusal_reason(&mut w.chromium).await, "invite_invalid");
    refused(&w, "invite_invalid");
    nothing_enrolled(&w);

    // A mistyped code.
    w.open_enrol_page().await;
    w.submit_code("abcdefghijklmnopqrstuvwxyz").await;
    assert_eq!(refusal_reason(&mut w.chromium).await, "invite_invalid");
    nothing_enrolled(&w);

    // A code used once is spent.
    let code = w.invite("alice");
    w.open_enrol_page().await;
    w.submit_code(&code).await;
    w.chromium
        .wait_for("document.getElementById('enrolled')")
        .await;
    w.open_enrol_page().await;
    w.submit_code(&code).await;
    assert_eq!(refusal_reason(&mut w.chromium).await, "replay");
    let audit = w.gateway.audit();
    let rejected = last_with(&audit, "rejected");
    assert_eq!(rejected["reason"], "replay", "{rejected}");
    assert_eq!(rejected["route"], "countersign-devices-enroll");
    let enrolled: Vec<_> = audit
        .iter()
        .filter(|r| r["event"] == "device_enrolled")
        .collect();
    assert_eq!(enrolled.len(), 1, "{enrolled:#?}");
    w.assert_app_saw_no_enrolment();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enrol_address_needs_a_session_that_names_a_subject() {
    let mut w = World::start().await;
    // No session cookie: a sign-in page, audited, nothing enrolled.
    let enrol = w.app_url("/.countersign/devices/enroll");
    w.chromium.goto(&enrol).await;
    assert_eq!(refusal_reason(&mut w.chromium).await, "no_session");
    let rejected = last_with(&w.gateway.audit(), "rejected");
    assert_eq!(rejected["route"], "countersign-devices-enroll");
    assert_eq!(rejected["reason"], "no_session");
    // A session the auth proxy names no subject for.
    w.chromium
        .call("Network.setExtraHTTPHeaders", json!({ "headers": {} }))
        .await;
    w.sign_in().await;
    w.chromium.goto(&enrol).await;
    assert_eq!(refusal_reason(&mut w.chromium).await, "no_subject");
    assert_eq!(
        last_with(&w.gateway.audit(), "rejected")["reason"],
        "no_subject"
    );
    // The page itself carries the confirmation origin's isolation headers.
    w.as_subject("alice").await;
    let reply = support::send(
        &enrol,
        "GET",
        &[("cookie", "sessionid=s1"), ("x-user", "alice")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, 303);
    let page = reply.header("location").expect("location").to_string();
    assert!(page.starts_with(&format!("http://localhost:{}/enrol/", w.gateway.port)));
    let page = support::send(
        &page.replace("localhost", "127.0.0.1"),
        "GET",
        &[("host", &format!("localhost:{}", w.gateway.port))],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.text());
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.starts_with("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert!(page.text().contains("width=device-width"));
    w.assert_app_saw_no_enrolment();
}

/// Holds the page's `create` until the test sets `window.__go`: the test changes authenticators
/// between the vouching passkey's assertion and the new passkey's creation.
const HOLD_CREATE: &str = r#"(function () {
  var create = navigator.credentials.create.bind(navigator.credentials);
  navigator.credentials.create = function (o) {
    window.__waiting = true;
    return new Promise(function (resolve) {
      var t = setInterval(function () {
        if (window.__go) { clearInterval(t); resolve(create(o)); }
      }, 50);
    });
  };
  return true;
})()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_passkey_vouches_for_a_new_one_and_nothing_else_does() {
    let mut w = World::start().await;
    let phone = w.chromium.add_authenticator(true).await;
    w.sign_in().await;
    let voucher = w.enrol_with_invite("alice").await;

    // The enrolled passkey (say, on a phone) vouches; the laptop's authenticator creates the new
    // one: enrolled by device:<voucher>, with no invite at all.
    w.open_enrol_page().await;
    w.chromium.eval(HOLD_CREATE).await;
    w.chromium.click("#vouch").await;
    w.chromium.wait_for("window.__waiting").await;
    w.chromium.remove_authenticator(&phone).await;
    let laptop = w.chromium.add_authenticator(true).await;
    w.chromium.eval("window.__go = true").await;
    w.chromium
        .wait_for("document.getElementById('enrolled')")
        .await;
    let enrolled = last_with(&w.gateway.audit(), "device_enrolled");
    assert_eq!(enrolled["by"], format!("device:{voucher}"), "{enrolled}");
    assert_eq!(enrolled["via"], "browser");
    let device = enrolled["device"].as_str().expect("device").to_string();
    assert_ne!(device, voucher);
    support::assert_metric(
        &w.gateway.metrics().await,
        "countersign_device_enrolments_total{source=\"device\"} 1",
    );

    // The new passkey confirms, and its confirmations say where its trust came from.
    w.delete_and_confirm().await;
    w.chromium.wait_for("document.getElementById('done')").await;
    assert_eq!(w.deletes(), 1);
    let accepted = last_with(&w.gateway.audit(), "accepted");
    let credential = accepted["credential_id"].as_str().unwrap_or_default();
    assert_eq!(format!("webauthn:{credential}"), device);
    assert_eq!(accepted["enrolment"], format!("device:{voucher}"));

    // A passkey that is not enrolled cannot vouch, even from a browser that offers it anyway.
    w.chromium.remove_authenticator(&laptop).await;
    let stranger = w.chromium.add_authenticator(true).await;
    add_resident_passkey(&mut w.chromium, &stranger).await;
    w.open_enrol_page().await;
    w.chromium.eval(IGNORE_ALLOWED).await;
    w.chromium.click("#vouch").await;
    assert_eq!(refusal_reason(&mut w.chromium).await, "device_not_enrolled");
    let rejected = last_with(&w.gateway.audit(), "rejected");
    assert_eq!(rejected["route"], "countersign-devices-enroll");
    assert_eq!(rejected["reason"], "device_not_enrolled");
    assert!(rejected["credential_id"].is_string(), "{rejected}");
    let enrolments = w.gateway.audit();
    let enrolments = enrolments
        .iter()
        .filter(|r| r["event"] == "device_enrolled");
    assert_eq!(enrolments.count(), 2);
    w.assert_app_saw_no_enrolment();
}
