//! Browser confirmations end to end, in a real headless Chromium driven over the DevTools protocol,
//! with WebAuthn virtual authenticators, against a cookie-session form app: hold → confirmation
//! page on its own origin → passkey → resume → the held request forwarded once, byte-identical,
//! and the app's own response at the held URL. Refusals forward nothing.

mod support;

#[path = "support/chromium.rs"]
mod chromium;
#[path = "support/form_app.rs"]
mod form_app;

use chromium::Chromium;
use form_app::FormApp;
use serde_json::Value;
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
        let app = FormApp::start().await;
        let gateway = Gateway::start_at(&config(user_verification), app.addr).await;
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
                "document.getElementById('confirm') && location.pathname.startsWith('/confirm/')",
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
        .wait_for("document.getElementById('confirm')")
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
