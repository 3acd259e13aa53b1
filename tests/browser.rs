//! Browser confirmations end to end, in a real headless Chromium driven over the DevTools protocol,
//! with WebAuthn virtual authenticators, against a cookie-session form app: hold → confirmation
//! page on its own origin → passkey → resume → the held request forwarded once, byte-identical,
//! and the app's own response at the held URL. Refusals forward nothing.

mod support;

#[path = "support/chromium.rs"]
mod chromium;
#[path = "support/form_app.rs"]
mod form_app;
#[path = "support/redis.rs"]
mod redis_support;

use chromium::Chromium;
use form_app::FormApp;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::Gateway;

/// The app on `http://127.0.0.1:{port}`, the confirmation origin on `http://localhost:{port}`
/// (another origin, and a secure context, on the same listener).
fn config(user_verification: &str) -> String {
    format!(
        r#"public_origin: "http://127.0.0.1:{{port}}"
browser:
  origin: "http://localhost:{{port}}"
  user_verification: {user_verification}
  hold_ttl: 120s
upstreams:
  app: {{ address: "{{upstream}}" }}
session: {{ kind: cookie, cookie: sessionid }}
routes:
  - name: delete-user
    match: {{ methods: [POST], path: "/users/{{id}}/delete" }}
    upstream: app
    risk: high
  - name: upload
    match: {{ methods: [POST], path: "/upload" }}
    upstream: app
    risk: high
  - name: default
    match: {{ path: "/{{*rest}}" }}
    upstream: app
    risk: low
"#
    )
}

struct World {
    app: FormApp,
    gateway: Gateway,
    chromium: Chromium,
}

impl World {
    async fn start(user_verification: &str) -> World {
        World::start_with(&config(user_verification)).await
    }

    async fn start_with(yaml: &str) -> World {
        let app = FormApp::start().await;
        let gateway = Gateway::start_at(yaml, app.addr).await;
        let chromium = Chromium::start().await;
        World {
            app,
            gateway,
            chromium,
        }
    }

    fn app_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.gateway.port)
    }

    /// Signs in through the gateway and opens the users page.
    async fn sign_in(&mut self) {
        let login = self.app_url("/login");
        self.chromium.goto(&login).await;
        self.chromium.click("#login").await;
        self.chromium
            .wait_for("document.getElementById('welcome')")
            .await;
        let users = self.app_url("/users");
        self.chromium.goto(&users).await;
        self.chromium
            .wait_for("document.getElementById('delete')")
            .await;
    }

    /// Clicks Delete and waits for the confirmation page.
    async fn delete_and_wait_for_confirmation(&mut self) {
        self.chromium.click("#delete").await;
        self.chromium
            .wait_for(
                "document.querySelector('#confirm[data-ready]') && location.pathname.startsWith('/confirm/')",
            )
            .await;
    }

    fn audit_events(&self) -> Vec<Value> {
        self.gateway.audit()
    }
}

fn last_with(audit: &[Value], event: &str) -> Value {
    audit
        .iter()
        .rev()
        .find(|r| r["event"] == event)
        .cloned()
        .unwrap_or_else(|| panic!("no {event} record in {audit:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_delete_is_confirmed_with_a_passkey_and_forwarded_once_at_its_own_url() {
    let mut w = World::start("required").await;
    w.chromium.add_authenticator(true).await;
    w.sign_in().await;
    w.delete_and_wait_for_confirmation().await;

    // The page is on the confirmation origin, shows the action, masks the CSRF token.
    let page_url = w.chromium.url().await;
    assert!(
        page_url.starts_with(&format!("http://localhost:{}/confirm/", w.gateway.port)),
        "{page_url}"
    );
    let text = w.chromium.text().await;
    assert!(text.contains("delete-user"), "{text}");
    assert!(text.contains("POST"), "{text}");
    assert!(text.contains("/users/42/delete?confirm=yes"), "{text}");
    assert!(text.contains("left the company"), "{text}");
    assert!(
        !text.contains("c5rf"),
        "a token-like field is masked: {text}"
    );
    assert!(w.app.received_at("POST", "/users/42/delete").is_empty());

    w.chromium.click("#confirm").await;
    w.chromium.wait_for("document.getElementById('done')").await;

    // The app's own answer, at the held request's own URL, its cookie set.
    assert_eq!(
        w.chromium.url().await,
        w.app_url("/users/42/delete?confirm=yes")
    );
    assert!(w.chromium.text().await.contains("Deleted user 42"));
    let cookies = w.chromium.cookies(&w.app_url("/")).await;
    assert!(cookies.iter().any(|(n, v)| n == "flash" && v == "deleted"));
    assert!(
        !w.chromium
            .cookies(&w.app_url("/users/42/delete"))
            .await
            .iter()
            .any(|(n, _)| n == "countersign-resume"),
        "the resume cookie is cleared"
    );

    // Exactly one request upstream, exactly as held.
    let deletes = w.app.received_at("POST", "/users/42/delete");
    assert_eq!(deletes.len(), 1, "{deletes:#?}");
    let delete = &deletes[0];
    assert_eq!(delete.target, "/users/42/delete?confirm=yes");
    assert_eq!(
        &delete.body[..],
        b"csrfmiddlewaretoken=c5rf&reason=left+the+company"
    );
    assert!(delete.provenance, "provenance headers are added");
    assert!(delete
        .cookie
        .as_deref()
        .is_some_and(|c| c.contains("sessionid=") && !c.contains("countersign-resume")));

    let audit = w.audit_events();
    let challenged = last_with(&audit, "challenged");
    assert_eq!(challenged["via"], "browser");
    assert_eq!(challenged["route"], "delete-user");
    let accepted = last_with(&audit, "accepted");
    assert_eq!(accepted["via"], "browser");
    assert_eq!(accepted["user_verified"], true);
    assert!(accepted["credential_id"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    assert!(accepted["device"]
        .as_str()
        .is_some_and(|d| d.starts_with("webauthn:")));
    assert_eq!(
        accepted["body_sha256"],
        hex::encode(Sha256::digest(&delete.body))
    );
    let completed = last_with(&audit, "completed");
    assert_eq!(completed["upstream_status"], 200);

    // A second action in the same session is confirmed with the same passkey (`get` this time).
    let users = w.app_url("/users");
    w.chromium.goto(&users).await;
    w.delete_and_wait_for_confirmation().await;
    w.chromium.click("#confirm").await;
    w.chromium.wait_for("document.getElementById('done')").await;
    assert_eq!(w.app.received_at("POST", "/users/42/delete").len(), 2);
    let second = last_with(&w.audit_events(), "accepted");
    assert_eq!(second["credential_id"], accepted["credential_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_ceremonies_and_resumes_live_in_redis_when_the_store_is_redis() {
    let redis = redis_support::RedisServer::start();
    let yaml = format!(
        "{}store: {{ kind: redis, url: \"{}\" }}\n",
        config("required"),
        redis.url()
    );
    let mut w = World::start_with(&yaml).await;
    w.chromium.add_authenticator(true).await;
    w.sign_in().await;
    w.delete_and_wait_for_confirmation().await;
    let held = redis_support::keys(&redis.url(), "countersign:record:*");
    assert_eq!(held.len(), 1, "the hold is in Redis: {held:?}");
    w.chromium.click("#confirm").await;
    w.chromium.wait_for("document.getElementById('done')").await;
    assert_eq!(w.app.received_at("POST", "/users/42/delete").len(), 1);
    assert_eq!(last_with(&w.audit_events(), "accepted")["via"], "browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passkey_confirmation_from_another_network_is_denied_by_live_risk() {
    // The gateway sits behind a proxy on loopback that names the client in X-Forwarded-For.
    let yaml = format!(
        "trusted_proxies: [\"127.0.0.1\"]\nrisk: {{ on_ip_change: deny }}\n{}",
        config("required")
    );
    let mut w = World::start_with(&yaml).await;
    w.chromium.add_authenticator(true).await;
    let from = |ip: &str| json!({ "headers": { "X-Forwarded-For": ip } });
    w.chromium.call("Network.enable", json!({})).await;
    w.chromium
        .call("Network.setExtraHTTPHeaders", from("192.0.2.10"))
        .await;
    w.sign_in().await;
    w.delete_and_wait_for_confirmation().await;
    w.chromium.click("#confirm").await;
    w.chromium.wait_for("document.getElementById('done')").await;
    assert_eq!(w.app.received_at("POST", "/users/42/delete").len(), 1);

    // The same session, now from another network: the passkey confirms, the risk check refuses.
    w.chromium
        .call("Network.setExtraHTTPHeaders", from("198.51.100.20"))
        .await;
    let users = w.app_url("/users");
    w.chromium.goto(&users).await;
    w.delete_and_wait_for_confirmation().await;
    w.chromium.click("#confirm").await;
    w.chromium
        .wait_for("document.body && document.body.innerText.includes('risk_denied')")
        .await;
    assert_eq!(w.app.received_at("POST", "/users/42/delete").len(), 1);
    let refused = last_with(&w.audit_events(), "rejected");
    assert_eq!(refused["reason"], "risk_denied", "{refused}");
    assert_eq!(refused["via"], "browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_revoked_while_its_action_was_held_confirms_nothing() {
    let redis = redis_support::RedisServer::start();
    let yaml = format!(
        "{}store: {{ kind: redis, url: \"{}\" }}\n",
        config("required"),
        redis.url()
    );
    let mut w = World::start_with(&yaml).await;
    w.chromium.add_authenticator(true).await;
    w.sign_in().await;
    w.delete_and_wait_for_confirmation().await;
    // The operator ends the session (as `countersign sessions revoke --session-hash` does)
    // while the person is on the confirmation page.
    let hash = last_with(&w.audit_events(), "challenged")["session"]
        .as_str()
        .expect("the hold names its session hash")
        .to_string();
    let store =
        countersign::store::RedisStore::new(&redis.url(), std::time::Duration::from_secs(1))
            .expect("redis store");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    countersign::store::ReplayStore::revoke(
        &store,
        &countersign::confirm::session_mark(&hash),
        now,
        std::time::Duration::from_secs(3600),
    )
    .await
    .expect("revoke");
    w.chromium.click("#confirm").await;
    w.chromium
        .wait_for("document.body && document.body.innerText.includes('session_revoked')")
        .await;
    assert!(w.app.received_at("POST", "/users/42/delete").is_empty());
    let refused = last_with(&w.audit_events(), "rejected");
    assert_eq!(refused["reason"], "session_revoked", "{refused}");
    assert!(w.audit_events().iter().all(|r| r["event"] != "accepted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_kib_multipart_upload_reaches_the_app_byte_identical() {
    let mut w = World::start("required").await;
    w.chromium.add_authenticator(true).await;
    w.sign_in().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("report.bin");
    let data: Vec<u8> = (0..200 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &data).expect("write upload");
    w.chromium
        .set_files("#file", &[file.to_str().expect("utf-8 path")])
        .await;
    w.chromium.click("#upload").await;
    w.chromium
        .wait_for("document.querySelector('#confirm[data-ready]')")
        .await;
    assert!(w
        .chromium
        .text()
        .await
        .contains("file report.bin (204800 bytes)"));
    w.chromium.click("#confirm").await;
    w.chromium.wait_for("document.getElementById('done')").await;
    let expected = format!("sha256={} bytes=204800", hex::encode(Sha256::digest(&data)));
    let text = w.chromium.text().await;
    assert!(text.contains(&expected), "{text}");
    assert_eq!(w.chromium.url().await, w.app_url("/upload"));
    let uploads = w.app.received_at("POST", "/upload");
    assert_eq!(uploads.len(), 1);
    let accepted = last_with(&w.audit_events(), "accepted");
    assert_eq!(
        accepted["body_sha256"],
        hex::encode(Sha256::digest(&uploads[0].body))
    );
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

/// Keeps the resume link the confirmation page would follow, instead of following it.
const CAPTURE_RESUME: &str = r#"(function () {
  var f = window.fetch;
  window.fetch = function (u, o) {
    return f(u, o).then(function (r) { return r.json(); }).then(function (j) {
      if (j.next && j.next.indexOf('/.countersign/resume/') > 0) {
        window.__resume = j.next;
        return new Response('{}');
      }
      return new Response(JSON.stringify(j));
    });
  };
  return true;
})()"#;

impl World {
    /// Confirms on the page but keeps the resume link; returns it.
    async fn confirm_and_capture_resume(&mut self) -> String {
        self.chromium.eval(CAPTURE_RESUME).await;
        self.chromium.click("#confirm").await;
        self.chromium.wait_for("window.__resume").await;
        self.chromium
            .eval("window.__resume")
            .await
            .as_str()
            .expect("resume link")
            .to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passkey_without_user_verification_is_refused_when_it_is_required() {
    let mut w = World::start("required").await;
    w.chromium.add_authenticator(false).await;
    w.sign_in().await;
    w.delete_and_wait_for_confirmation().await;
    w.chromium.click("#confirm").await;
    assert_eq!(
        refusal_reason(&mut w.chromium).await,
        "user_verification_required"
    );
    assert!(w.app.received_at("POST", "/users/42/delete").is_empty());
    let rejected = last_with(&w.audit_events(), "rejected");
    assert_eq!(rejected["reason"], "user_verification_required");
    assert_eq!(rejected["route"], "delete-user");
    assert_eq!(rejected["via"], "browser");
    assert!(w.audit_events().iter().all(|r| r["event"] != "accepted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_passkey_on_the_same_session_is_a_device_mismatch() {
    let mut w = World::start("required").await;
    let first = w.chromium.add_authenticator(true).await;
    w.sign_in().await;
    w.delete_and_wait_for_confirmation().await;
    w.chromium.click("#confirm").await;
    w.chromium.wait_for("document.getElementById('done')").await;
    assert_eq!(w.app.received_at("POST", "/users/42/delete").len(), 1);

    // Another authenticator, with a passkey of its own for this relying party.
    w.chromium.remove_authenticator(&first).await;
    let second = w.chromium.add_authenticator(true).await;
    add_resident_passkey(&mut w.chromium, &second).await;
    let users = w.app_url("/users");
    w.chromium.goto(&users).await;
    w.delete_and_wait_for_confirmation().await;
    w.chromium.click("#confirm").await;
    assert_eq!(refusal_reason(&mut w.chromium).await, "device_mismatch");
    assert_eq!(
        w.app.received_at("POST", "/users/42/delete").len(),
        1,
        "the refused action never reached the app"
    );
    let rejected = last_with(&w.audit_events(), "rejected");
    assert_eq!(rejected["reason"], "device_mismatch");
    let accepted = last_with(&w.audit_events(), "accepted");
    assert_ne!(rejected["credential_id"], accepted["credential_id"]);
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
            serde_json::json!({
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_link_works_once_and_only_in_the_session_that_held_the_action() {
    let mut w = World::start("required").await;
    w.chromium.add_authenticator(true).await;
    w.sign_in().await;

    // Opened in another session (signed in again: a new session cookie), it completes nothing.
    w.delete_and_wait_for_confirmation().await;
    let resume = w.confirm_and_capture_resume().await;
    let login = w.app_url("/login");
    w.chromium.goto(&login).await;
    w.chromium.click("#login").await;
    w.chromium
        .wait_for("document.getElementById('welcome')")
        .await;
    w.chromium.goto(&resume).await;
    assert_eq!(refusal_reason(&mut w.chromium).await, "session_mismatch");
    assert!(w.app.received_at("POST", "/users/42/delete").is_empty());
    assert_eq!(
        last_with(&w.audit_events(), "rejected")["reason"],
        "session_mismatch"
    );

    // In the right session it works once; the second use is a replay.
    let users = w.app_url("/users");
    w.chromium.goto(&users).await;
    w.delete_and_wait_for_confirmation().await;
    let resume = w.confirm_and_capture_resume().await;
    w.chromium.goto(&resume).await;
    w.chromium.wait_for("document.getElementById('done')").await;
    assert_eq!(w.app.received_at("POST", "/users/42/delete").len(), 1);
    w.chromium.goto(&resume).await;
    assert_eq!(refusal_reason(&mut w.chromium).await, "replay");
    assert_eq!(w.app.received_at("POST", "/users/42/delete").len(), 1);
    assert_eq!(last_with(&w.audit_events(), "rejected")["reason"], "replay");
    let metrics = w.gateway.metrics().await;
    for line in [
        r#"countersign_rejections_total{reason="session_mismatch",route="delete-user"} 1"#,
        r#"countersign_requests_total{decision="accepted",route="delete-user"} 1"#,
        r#"countersign_requests_total{decision="challenged",route="delete-user"} 2"#,
        r#"countersign_requests_total{decision="rejected",route="delete-user"} 1"#,
    ] {
        support::assert_metric(&metrics, line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_forgets_the_action_and_returns_to_the_app_page() {
    let mut w = World::start("required").await;
    w.chromium.add_authenticator(true).await;
    w.sign_in().await;
    w.delete_and_wait_for_confirmation().await;
    let page = w.chromium.url().await;
    w.chromium.click("#cancel").await;
    w.chromium
        .wait_for("document.getElementById('delete')")
        .await;
    assert_eq!(w.chromium.url().await, w.app_url("/users"));
    let rejected = last_with(&w.audit_events(), "rejected");
    assert_eq!(rejected["reason"], "cancelled");
    assert_eq!(rejected["route"], "delete-user");
    // The hold is gone: its page now says so.
    w.chromium.goto(&page).await;
    assert_eq!(refusal_reason(&mut w.chromium).await, "nonce_expired");
    assert!(w.app.received_at("POST", "/users/42/delete").is_empty());
}

/// Without a browser: plain HTTP against the gateway.
mod without_a_browser {
    use super::*;
    use bytes::Bytes;
    use support::send;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_navigation_without_a_session_gets_a_sign_in_page_and_the_app_nothing() {
        let app = FormApp::start().await;
        let gateway = Gateway::start_at(&config("required"), app.addr).await;
        let url = format!("{}/users/42/delete", gateway.base);
        let headers = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("sec-fetch-mode", "navigate"),
        ];
        let page = send(&url, "POST", &headers, Bytes::from_static(b"a=1")).await;
        assert_eq!(page.status, 401);
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        let html = String::from_utf8_lossy(&page.body);
        assert!(html.contains("Sign in first"), "{html}");
        assert!(html.contains(">no_session<"), "{html}");
        let record = gateway.audit().pop().expect("the refusal is audited");
        assert_eq!(record["event"], "rejected");
        assert_eq!(record["reason"], "no_session");
        assert_eq!(
            record["request_id"].as_str(),
            page.header("countersign-request-id")
        );
        // An API client without a session still gets the JSON refusal.
        let api = send(&url, "POST", &headers[..1], Bytes::from_static(b"a=1")).await;
        assert_eq!(api.status, 401);
        assert_eq!(api.header("content-type"), Some("application/json"));
        assert!(app.received_at("POST", "/users/42/delete").is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_past_its_hold_quota_gets_a_refusal_page_and_the_app_nothing() {
        let app = FormApp::start().await;
        let yaml = config("required").replace(
            "session: {",
            "confirmation: { max_outstanding_per_session: 2 }\nsession: {",
        );
        let gateway = Gateway::start_at(&yaml, app.addr).await;
        let url = format!("{}/users/42/delete", gateway.base);
        let navigate = |sid: &'static str| {
            let url = url.clone();
            async move {
                let cookie = format!("sessionid={sid}");
                let headers = [
                    ("cookie", cookie.as_str()),
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("sec-fetch-mode", "navigate"),
                ];
                send(&url, "POST", &headers, Bytes::from_static(b"a=1")).await
            }
        };
        for _ in 0..2 {
            assert_eq!(navigate("s-holds").await.status, 303);
        }
        let refused = navigate("s-holds").await;
        assert_eq!(refused.status, 429);
        let html = String::from_utf8_lossy(&refused.body);
        assert!(html.contains("<html"), "a page for a person: {html}");
        let audit = gateway.audit();
        let record = audit.last().expect("the refusal is audited");
        assert_eq!(record["event"], "rejected");
        assert_eq!(record["reason"], "too_many_challenges");
        assert_eq!(
            record["request_id"].as_str(),
            refused.header("countersign-request-id")
        );
        // Another session is not held back, and the app saw none of it.
        assert_eq!(navigate("s-other").await.status, 303);
        assert!(app.received_at("POST", "/users/42/delete").is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_navigations_are_held_and_api_clients_keep_the_dpop_exchange() {
        let app = FormApp::start().await;
        let gateway = Gateway::start_at(&config("required"), app.addr).await;
        let url = format!("{}/users/42/delete", gateway.base);
        let cookie = ("cookie", "sessionid=s1");
        let form = ("content-type", "application/x-www-form-urlencoded");

        let held = send(
            &url,
            "POST",
            &[cookie, form, ("sec-fetch-mode", "navigate")],
            Bytes::from_static(b"a=1"),
        )
        .await;
        assert_eq!(held.status, 303);
        assert_eq!(held.header("cache-control"), Some("no-store"));
        let location = held.header("location").expect("location");
        let prefix = format!("http://localhost:{}/confirm/", gateway.port);
        let id = location
            .strip_prefix(&prefix)
            .expect("to the confirmation origin");
        assert_eq!(id.len(), 43, "256 random bits, base64url");

        // fetch() from the app's page, and API clients: the RFC 9449 401.
        for headers in [
            vec![
                cookie,
                form,
                ("sec-fetch-mode", "cors"),
                ("accept", "text/html"),
            ],
            vec![cookie, form, ("accept", "application/json")],
        ] {
            let reply = send(&url, "POST", &headers, Bytes::from_static(b"a=1")).await;
            assert_eq!(reply.status, 401);
            assert!(reply.header("dpop-nonce").is_some());
        }
        assert!(app.received_at("POST", "/users/42/delete").is_empty());

        // The confirmation page, read by Host on the same listener, with its isolation headers;
        // it never receives or shows the session credential.
        let page = send(
            &format!("{}/confirm/{id}", gateway.base),
            "GET",
            &[("host", &format!("localhost:{}", gateway.port))],
            Bytes::new(),
        )
        .await;
        assert_eq!(page.status, 200);
        let csp = page.header("content-security-policy").expect("csp");
        assert!(csp.starts_with("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
        assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(page.header("cache-control"), Some("no-store"));
        let html = String::from_utf8_lossy(&page.body);
        assert!(html.contains("name=\"viewport\""));
        assert!(!html.contains("s1"));
        assert!(!html.contains("<script>"), "no inline script");
        assert!(!html.contains("http://") || !html.contains("src=\"http"));

        // An unknown hold is a page for a person, and an audited refusal.
        let unknown = send(
            &format!("{}/confirm/nothing-here", gateway.base),
            "GET",
            &[("host", &format!("localhost:{}", gateway.port))],
            Bytes::new(),
        )
        .await;
        assert_eq!(unknown.status, 404);
        assert!(String::from_utf8_lossy(&unknown.body).contains("nonce_expired"));
        let audit = gateway.audit();
        let challenged: Vec<_> = audit
            .iter()
            .filter(|r| r["event"] == "challenged")
            .collect();
        assert_eq!(challenged.len(), 3);
        assert_eq!(challenged[0]["via"], "browser");
        assert!(challenged[1..].iter().all(|r| r["via"].is_null()));
        assert_eq!(last_with(&audit, "rejected")["reason"], "nonce_expired");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_confirmation_listener_serves_the_confirmation_origin_and_nothing_of_the_app() {
        let app = FormApp::start().await;
        let own = support::free_port();
        let yaml = config("required").replace(
            "  hold_ttl: 120s\n",
            &format!("  hold_ttl: 120s\n  listen: \"127.0.0.1:{own}\"\n"),
        );
        let _gateway = Gateway::start_at(&yaml, app.addr).await;
        let base = format!("http://127.0.0.1:{own}");
        let script = send(&format!("{base}/confirm/app.js"), "GET", &[], Bytes::new()).await;
        assert_eq!(script.status, 200);
        assert!(script
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/javascript")));
        let app_page = send(
            &format!("{base}/users"),
            "GET",
            &[("cookie", "sessionid=s1")],
            Bytes::new(),
        )
        .await;
        assert_eq!(app_page.status, 404);
        assert!(app.received().is_empty(), "nothing reached the app");
    }

    #[test]
    fn the_confirmation_origin_must_differ_from_the_public_origin() {
        let yaml = config("required")
            .replace("{port}", "8080")
            .replace("{upstream}", "127.0.0.1:9000")
            .replace("http://localhost:8080", "http://127.0.0.1:8080");
        let yaml = format!("listen: \"127.0.0.1:8080\"\n{yaml}");
        let err = countersign::config::parse(&yaml, std::path::Path::new("t.yaml"))
            .expect_err("equal origins are refused");
        assert_eq!(err.path, "browser.origin");
        assert!(err.message.contains("must differ from public_origin"));
        let ok = yaml.replace(
            "origin: \"http://127.0.0.1:8080\"\n  user",
            "origin: \"http://localhost:8080\"\n  user",
        );
        countersign::config::parse(&ok, std::path::Path::new("t.yaml")).expect("distinct origins");
        let bad_uv = ok.replace(
            "user_verification: required",
            "user_verification: sometimes",
        );
        assert!(countersign::config::parse(&bad_uv, std::path::Path::new("t.yaml")).is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_demo_can_be_clicked_through_with_a_passkey() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut demo = tokio::process::Command::new(env!("CARGO_BIN_EXE_countersign"))
        .args(["demo", "--browser"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("demo starts");
    let mut lines = BufReader::new(demo.stdout.take().expect("stdout")).lines();
    let login = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(url) = line.trim().strip_prefix("Open") {
                return url.split_whitespace().next().map(str::to_string);
            }
        }
        None
    })
    .await
    .expect("the demo prints its URL")
    .expect("a URL to open");
    assert!(login.starts_with("http://127.0.0.1:") && login.ends_with("/login"));

    let mut chromium = Chromium::start().await;
    chromium.add_authenticator(true).await;
    chromium.goto(&login).await;
    chromium.click("#login").await;
    chromium
        .wait_for("document.getElementById('delete-2')")
        .await;
    chromium.click("#delete-2").await;
    chromium
        .wait_for("document.querySelector('#confirm[data-ready]')")
        .await;
    chromium.click("#confirm").await;
    chromium.wait_for("document.getElementById('done')").await;
    let text = chromium.text().await;
    assert!(
        text.contains("Deleted user 2 (confirmed with your passkey)"),
        "{text}"
    );
    let pid = demo.id().expect("demo pid").to_string();
    let _ = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status();
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), demo.wait())
        .await
        .expect("the demo stops on Ctrl-C")
        .expect("demo status");
    assert!(status.success(), "{status}");
}
