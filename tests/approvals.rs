//! Human approval of machine-initiated actions (docs/protocol.md, "Approvals"), end to end: a
//! bot's confirmed request becomes a pending approval (202, nothing forwarded); approvers decide
//! with their own session and device through the nonce flow; the bot executes it once with a
//! fresh confirmation. Every refusal is checked for its status, error, reason, its audit record
//! and an upstream that saw nothing.

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use countersign::tools::device_key::DeviceKey;
use http_body_util::BodyExt;
use redis_support::RedisServer;
use serde_json::{json, Value};
use support::world::{es256, World};
use support::{race, send, Gateway, Reply, Upstream};

const HS256_ENV: &str = "CS_APPROVALS_TEST_HS256";
const HS256_SECRET: &str = "countersign-approvals-test-hs256-secret-0123456789";
const WEBHOOK_ENV: &str = "CS_APPROVALS_TEST_WEBHOOK";
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const RELEASE: &str = "/api/deploys/7/release";
const BODY: &str = r#"{"version":"1.4.2"}"#;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn secrets() {
    static SET: Once = Once::new();
    SET.call_once(|| {
        // Set once, before any gateway of this binary reads them. Tests only.
        #[allow(unused_unsafe)]
        unsafe {
            std::env::set_var(HS256_ENV, HS256_SECRET);
            std::env::set_var(WEBHOOK_ENV, WEBHOOK_SECRET);
        }
    });
}

/// An HS256 session token for `sub` in session `sid` with `groups`.
fn token(sub: &str, sid: &str, groups: &[&str]) -> String {
    secrets();
    let claims =
        json!({"sub": sub, "sid": sid, "groups": groups, "exp": now() + 600, "iat": now()});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(HS256_SECRET.as_bytes()).expect("HMAC key"),
    )
    .expect("token encodes")
}

/// The config of a world whose release route needs `approval` (YAML flow mapping).
fn config(approval: &str, extra: &str) -> String {
    secrets();
    format!(
        r#"upstreams: {{ legacy: {{ address: "{{upstream}}" }} }}
session: {{ kind: bearer_jwt, hs256_secret_env: {HS256_ENV}, groups_claim: groups }}
{extra}
routes:
  - name: release-deploy
    match: {{ methods: [POST], path: "/api/deploys/{{id}}/release" }}
    upstream: legacy
    risk: high
    approval: {approval}
  - name: default
    match: {{ path: "/{{*rest}}" }}
    upstream: legacy
    risk: low
"#
    )
}

const TWO_OF: &str = "{ approvers: { subjects: [alice, bob], groups: [sre-leads] }, quorum: 2 }";

/// People and their devices.
struct Cast {
    bot: String,
    bot_key: DeviceKey,
    alice: String,
    alice_key: DeviceKey,
    bob: String,
    bob_key: DeviceKey,
}

fn cast() -> Cast {
    Cast {
        bot: token("deploy-bot", "bot-session", &[]),
        bot_key: es256(),
        alice: token("alice", "alice-session", &[]),
        alice_key: es256(),
        bob: token("bob", "bob-session", &[]),
        bob_key: es256(),
    }
}

/// The bot's release request, confirmed (challenge, then the signed retry).
async fn request(
    w: &World,
    token: &str,
    key: &DeviceKey,
    body: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let r = w
        .request("POST", RELEASE)
        .token(token)
        .body(body)
        .headers(headers);
    let nonce = r.challenge().await;
    r.signed(key, &nonce).send().await
}

/// A pending approval's id, from a 202.
fn approval_id(r: &Reply) -> String {
    assert_eq!(r.status, 202, "{}", r.text());
    r.json()["approval"]["id"]
        .as_str()
        .expect("an approval id")
        .to_string()
}

/// An approver's decision through the nonce flow.
async fn vote(w: &World, token: &str, key: &DeviceKey, id: &str, what: &str) -> Reply {
    let r = w
        .request("POST", &format!("/.countersign/approvals/{id}/{what}"))
        .token(token);
    let nonce = r.challenge().await;
    r.signed(key, &nonce).send().await
}

/// The bot's execution of approval `id`.
async fn execute(w: &World, token: &str, key: &DeviceKey, id: &str, body: &str) -> Reply {
    request(w, token, key, body, &[("countersign-approval", id)]).await
}

async fn show(w: &World, token: &str, id: &str) -> Reply {
    w.request("GET", &format!("/.countersign/approvals/{id}"))
        .token(token)
        .send()
        .await
}

/// The audit records of `event` about approval `id`.
fn events(gw: &Gateway, event: &str, id: &str) -> Vec<Value> {
    gw.audit()
        .into_iter()
        .filter(|r| r["event"] == event && r["approval_id"] == id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_request_becomes_a_pending_approval_and_reaches_nothing() {
    let w = World::start(&config(TWO_OF, "")).await;
    let c = cast();
    let r = request(&w, &c.bot, &c.bot_key, BODY, &[]).await;
    let id = approval_id(&r);
    assert_eq!(id.len(), 22, "128 bits of base64url: {id}");
    assert_eq!(
        r.header("location"),
        Some(format!("/.countersign/approvals/{id}").as_str())
    );
    let approval = &r.json()["approval"];
    assert_eq!(approval["status"], "pending");
    assert_eq!(approval["route"], "release-deploy");
    assert_eq!(approval["method"], "POST");
    assert_eq!(approval["target"], RELEASE);
    assert_eq!(approval["body_sha256"], support::world::hex(&sha256(BODY)));
    assert_eq!(approval["requester"]["subject"], "deploy-bot");
    assert_eq!(approval["requester"]["device"], c.bot_key.jkt());
    assert_eq!(approval["approvers"]["subjects"], json!(["alice", "bob"]));
    assert_eq!(approval["approvers"]["groups"], json!(["sre-leads"]));
    assert_eq!(approval["quorum"], 2);
    assert!(approval["expires_at"].is_string());
    assert_eq!(w.seen(), 0, "nothing reaches the upstream before approval");
    let audit =
        w.gw.wait_for_audit(|a| a["event"] == "approval_requested")
            .await;
    assert_eq!(audit["approval_id"], id.as_str());
    assert_eq!(audit["subject"], "deploy-bot");
    assert_eq!(audit["device"], c.bot_key.jkt());
    assert_eq!(audit["route"], "release-deploy");

    let shown = show(&w, &c.alice, &id).await;
    assert_eq!(shown.status, 200, "{}", shown.text());
    assert_eq!(shown.json()["approval"]["status"], "pending");
    // Without a session nothing is shown.
    let before = w.seen();
    let anonymous = send(
        &w.url(&format!("/.countersign/approvals/{id}")),
        "GET",
        &[],
        Bytes::new(),
    )
    .await;
    w.assert_refused(&anonymous, before, 401, "invalid_token", "no_session")
        .await;
    let metrics = w.gw.metrics().await;
    support::assert_metric(
        &metrics,
        r#"countersign_approvals_total{outcome="requested",route="release-deploy"} 1"#,
    );
    support::assert_metric(&metrics, "countersign_approvals_pending 1");
}

fn sha256(text: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_of_distinct_approvers_lets_the_requester_execute_once() {
    let w = World::start(&config(TWO_OF, "")).await;
    let c = cast();
    let id = approval_id(&request(&w, &c.bot, &c.bot_key, BODY, &[]).await);

    let first = vote(&w, &c.alice, &c.alice_key, &id, "approve").await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["approval"]["status"], "pending");
    // The same approver twice counts once.
    let again = vote(&w, &c.alice, &c.alice_key, &id, "approve").await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["counted"], false);
    assert_eq!(
        again.json()["approval"]["approvals"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(again.json()["approval"]["status"], "pending");
    let second = vote(&w, &c.bob, &c.bob_key, &id, "approve").await;
    assert_eq!(
        second.json()["approval"]["status"],
        "approved",
        "{}",
        second.text()
    );
    assert_eq!(w.seen(), 0, "approving runs nothing");
    let granted = events(&w.gw, "approval_granted", &id);
    assert_eq!(granted.len(), 2, "{granted:#?}");
    assert_eq!(granted[0]["subject"], "alice");
    assert_eq!(granted[0]["device"], c.alice_key.jkt());
    assert_eq!(granted[1]["subject"], "bob");
    assert_eq!(granted[1]["device"], c.bob_key.jkt());

    let run = execute(&w, &c.bot, &c.bot_key, &id, BODY).await;
    assert_eq!(run.status, 200, "{}", run.text());
    assert_eq!(w.seen(), 1);
    let seen = w.upstream.last();
    assert_eq!(seen.path(), RELEASE);
    assert!(
        seen.header("countersign-approval").is_none(),
        "Countersign-* never forwarded from a client"
    );
    let provenance = seen.provenance();
    assert_eq!(provenance["approval_id"], id.as_str());
    assert_eq!(provenance["approvers"], json!(["alice", "bob"]));
    assert_eq!(provenance["sub"], "deploy-bot");
    let accepted = w.gw.audit_of(&run);
    let accepted = if accepted["event"] == "accepted" {
        accepted
    } else {
        w.gw.wait_for_audit(|a| a["event"] == "accepted" && a["approval_id"] == id.as_str())
            .await
    };
    assert_eq!(accepted["approval_id"], id.as_str());
    assert_eq!(accepted["approvers"], json!(["alice", "bob"]));

    // Executed once: the same request again is refused.
    let before = w.seen();
    let twice = execute(&w, &c.bot, &c.bot_key, &id, BODY).await;
    let audit = w
        .assert_refused(&twice, before, 409, "conflict", "approval_executed")
        .await;
    assert_eq!(audit["approval_id"], id.as_str());
    let shown = show(&w, &c.alice, &id).await;
    assert_eq!(shown.json()["approval"]["status"], "executed");
    let metrics = w.gw.metrics().await;
    for outcome in ["requested", "approved", "executed"] {
        support::assert_metric(
            &metrics,
            &format!(
                r#"countersign_approvals_total{{outcome="{outcome}",route="release-deploy"}} 1"#
            ),
        );
    }
    support::assert_metric(&metrics, "countersign_approval_wait_seconds_count 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_approvers_and_never_the_requester_approve() {
    let w = World::start(&config(TWO_OF, "")).await;
    let c = cast();
    let id = approval_id(&request(&w, &c.bot, &c.bot_key, BODY, &[]).await);

    let mallory = token("mallory", "mallory-session", &["devs"]);
    let before = w.seen();
    let r = vote(&w, &mallory, &es256(), &id, "approve").await;
    let audit = w
        .assert_refused(&r, before, 403, "forbidden", "not_an_approver")
        .await;
    assert_eq!(audit["subject"], "mallory");
    assert_eq!(audit["approval_id"], id.as_str());

    // The requester's own subject, even from another session and device.
    let bot_again = token("deploy-bot", "bot-other-session", &[]);
    let r = vote(&w, &bot_again, &es256(), &id, "approve").await;
    w.assert_refused(&r, before, 403, "forbidden", "self_approval")
        .await;
    // An approver signing with the requester's device.
    let alice_elsewhere = token("alice", "alice-on-the-bot", &[]);
    let r = vote(&w, &alice_elsewhere, &c.bot_key, &id, "approve").await;
    let audit = w
        .assert_refused(&r, before, 403, "forbidden", "self_approval")
        .await;
    assert_eq!(audit["device"], c.bot_key.jkt());

    // A member of a listed group approves; a vote without a proof is only challenged.
    let carol = token("carol", "carol-session", &["sre-leads"]);
    let r = vote(&w, &carol, &es256(), &id, "approve").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["approval"]["approvals"][0]["subject"], "carol");
    // A proof by another key than the approver's session is bound to is refused before counting.
    let r = vote(&w, &c.alice, &c.alice_key, &id, "approve").await;
    assert_eq!(r.json()["approval"]["status"], "approved");
    let r = vote(&w, &carol, &es256(), &id, "approve").await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "device_mismatch")
        .await;
    // Unknown ids.
    let r = vote(&w, &c.bob, &c.bob_key, "AAAAAAAAAAAAAAAAAAAAAA", "approve").await;
    w.assert_refused(&r, before, 404, "not_found", "approval_unknown")
        .await;
    assert_eq!(w.seen(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deny_ends_it() {
    let w = World::start(&config(TWO_OF, "")).await;
    let c = cast();
    let id = approval_id(&request(&w, &c.bot, &c.bot_key, BODY, &[]).await);
    let r = vote(&w, &c.alice, &c.alice_key, &id, "approve").await;
    assert_eq!(r.status, 200);
    let r = vote(&w, &c.bob, &c.bob_key, &id, "deny").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["approval"]["status"], "denied");
    assert_eq!(r.json()["approval"]["denied_by"]["subject"], "bob");
    let denied = events(&w.gw, "approval_denied", &id);
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["subject"], "bob");
    assert_eq!(denied[0]["device"], c.bob_key.jkt());

    let before = w.seen();
    let r = execute(&w, &c.bot, &c.bot_key, &id, BODY).await;
    w.assert_refused(&r, before, 403, "forbidden", "approval_denied")
        .await;
    let carol = token("carol", "carol-session", &["sre-leads"]);
    let r = vote(&w, &carol, &es256(), &id, "approve").await;
    w.assert_refused(&r, before, 409, "conflict", "approval_closed")
        .await;
    assert_eq!(w.seen(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_must_be_the_approved_action_by_its_requester() {
    let w = World::start(&config(TWO_OF, "")).await;
    let c = cast();
    let id = approval_id(&request(&w, &c.bot, &c.bot_key, BODY, &[]).await);
    let before = w.seen();
    let r = execute(&w, &c.bot, &c.bot_key, &id, BODY).await;
    w.assert_refused(&r, before, 409, "conflict", "approval_pending")
        .await;
    vote(&w, &c.alice, &c.alice_key, &id, "approve").await;
    vote(&w, &c.bob, &c.bob_key, &id, "approve").await;

    let r = execute(&w, &c.bot, &c.bot_key, &id, r#"{"version":"6.6.6"}"#).await;
    let audit = w
        .assert_refused(&r, before, 403, "forbidden", "action_mismatch")
        .await;
    assert_eq!(audit["approval_id"], id.as_str());
    let other_session = token("deploy-bot", "bot-second-session", &[]);
    let r = execute(&w, &other_session, &c.bot_key, &id, BODY).await;
    w.assert_refused(&r, before, 403, "forbidden", "requester_session_mismatch")
        .await;
    let r = execute(&w, &c.bot, &c.bot_key, "not-an-id", BODY).await;
    w.assert_refused(&r, before, 404, "not_found", "approval_unknown")
        .await;
    // Still approved after the refusals: the real execution runs.
    let r = execute(&w, &c.bot, &c.bot_key, &id, BODY).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(w.seen(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_expires_at_its_ttl() {
    let approval = "{ approvers: { subjects: [alice] }, ttl: 1s }";
    let w = World::start(&config(approval, "")).await;
    let c = cast();
    let id = approval_id(&request(&w, &c.bot, &c.bot_key, BODY, &[]).await);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let before = w.seen();
    let r = execute(&w, &c.bot, &c.bot_key, &id, BODY).await;
    w.assert_refused(&r, before, 403, "forbidden", "approval_expired")
        .await;
    let r = vote(&w, &c.alice, &c.alice_key, &id, "approve").await;
    w.assert_refused(&r, before, 403, "forbidden", "approval_expired")
        .await;
    let expired = events(&w.gw, "approval_expired", &id);
    assert_eq!(
        expired.len(),
        1,
        "audited once, when first seen: {expired:#?}"
    );
    assert_eq!(expired[0]["subject"], "deploy-bot");
    assert_eq!(
        show(&w, &c.alice, &id).await.json()["approval"]["status"],
        "expired"
    );
    let metrics = w.gw.metrics().await;
    support::assert_metric(
        &metrics,
        r#"countersign_approvals_total{outcome="expired",route="release-deploy"} 1"#,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_20_concurrent_executions_exactly_one_is_forwarded() {
    let approval = "{ approvers: { subjects: [alice] } }";
    let w = World::start(&config(approval, "")).await;
    let c = cast();
    let id = approval_id(&request(&w, &c.bot, &c.bot_key, "", &[]).await);
    vote(&w, &c.alice, &c.alice_key, &id, "approve").await;
    let mut requests = Vec::new();
    for _ in 0..20 {
        let r = w
            .request("POST", RELEASE)
            .token(&c.bot)
            .header("countersign-approval", &id);
        let nonce = r.challenge().await;
        let proof = c
            .bot_key
            .proof("POST", &w.htu(RELEASE), Some(&nonce), Some(&c.bot));
        requests.push((
            w.url(RELEASE),
            vec![
                ("authorization".to_string(), format!("DPoP {}", c.bot)),
                ("countersign-approval".to_string(), id.clone()),
                ("dpop".to_string(), proof),
            ],
        ));
    }
    let replies = race("POST", requests).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    for r in replies.iter().filter(|r| r.status != 200) {
        assert_eq!(r.status, 409, "{}", r.text());
        assert_eq!(r.json()["reason"], "approval_executed");
    }
    assert_eq!(w.seen(), 1, "exactly one execution reaches the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_wait_holds_the_request_until_the_quorum_arrives() {
    let approval = "{ approvers: { subjects: [alice] } }";
    let w = Arc::new(World::start(&config(approval, "")).await);
    let c = Arc::new(cast());
    let held = {
        let (w, c) = (w.clone(), c.clone());
        tokio::spawn(async move {
            request(&w, &c.bot, &c.bot_key, BODY, &[("prefer", "wait=20")]).await
        })
    };
    let audit =
        w.gw.wait_for_audit(|a| a["event"] == "approval_requested")
            .await;
    let id = audit["approval_id"].as_str().expect("id").to_string();
    assert_eq!(w.seen(), 0);
    let r = vote(&w, &c.alice, &c.alice_key, &id, "approve").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let executed = held.await.expect("held request");
    assert_eq!(executed.status, 200, "{}", executed.text());
    assert_eq!(w.seen(), 1);
    assert_eq!(w.upstream.last().provenance()["approval_id"], id.as_str());

    // Without an approval in time, the 202.
    let r = request(&w, &c.bot, &c.bot_key, "{}", &[("prefer", "wait=1")]).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(w.seen(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_sees_the_approval_at_execution() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policies = dir.path().join("p.cedar");
    std::fs::write(
        &policies,
        r#"permit(principal, action, resource);
@id("needs-bob")
forbid(principal, action == Action::"release-deploy", resource)
  when { context has approval && !context.approval.approvers.contains("bob") };
"#,
    )
    .expect("write policies");
    let extra = format!("policy: {{ cedar: \"{}\" }}", policies.display());
    let w = World::start(&config("{ approvers: { subjects: [alice, bob] } }", &extra)).await;
    let c = cast();
    let id = approval_id(&request(&w, &c.bot, &c.bot_key, BODY, &[]).await);
    vote(&w, &c.alice, &c.alice_key, &id, "approve").await;
    let before = w.seen();
    let r = execute(&w, &c.bot, &c.bot_key, &id, BODY).await;
    let audit = w
        .assert_refused(&r, before, 403, "forbidden", "policy_denied")
        .await;
    assert_eq!(audit["policies"], json!(["needs-bob"]));
    // A policy refusal does not spend the approval.
    let shown = show(&w, &c.alice, &id).await;
    assert_eq!(shown.json()["approval"]["status"], "approved");
}

// ───────────────────────────── webhook ─────────────────────────────

/// A webhook receiver on loopback: answers `fail_first` requests with 500, then 200, and keeps
/// every request it got.
struct Receiver {
    addr: std::net::SocketAddr,
    got: Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>>,
}

async fn receiver(fail_first: usize) -> Receiver {
    let got: Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>> = Arc::default();
    let kept = got.clone();
    let addr = support::serve(move |req: http::Request<hyper::body::Incoming>, _| {
        let kept = kept.clone();
        async move {
            let (head, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let n = {
                let mut kept = kept.lock().expect("lock");
                kept.push((head.headers, body));
                kept.len()
            };
            let status = if n <= fail_first { 500 } else { 204 };
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(status)
                    .body(support::full(""))
                    .expect("response"),
            )
        }
    })
    .await;
    Receiver { addr, got }
}

/// Verifies a Standard Webhooks signature from the spec, with another HMAC implementation than
/// the gateway's (aws-lc-rs): `v1,` base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), the
/// key being the base64 after `whsec_`.
fn verify_standard_webhook(headers: &http::HeaderMap, body: &[u8]) {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{n}"))
            .to_string()
    };
    let (id, ts, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let ts: i64 = ts.parse().expect("timestamp is unix seconds");
    assert!((now() - ts).abs() < 30, "fresh timestamp");
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64
        .decode(WEBHOOK_SECRET.strip_prefix("whsec_").expect("whsec_"))
        .expect("secret is base64");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
    let mut signed = format!("{id}.{ts}.").into_bytes();
    signed.extend_from_slice(body);
    let expected = b64.encode(aws_lc_rs::hmac::sign(&key, &signed).as_ref());
    assert!(
        signature.split(' ').any(|s| s == format!("v1,{expected}")),
        "signature {signature} is not v1,{expected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvers_are_told_by_a_signed_webhook_retried_until_it_is_taken() {
    let hook = receiver(1).await;
    let approval = format!(
        "{{ approvers: {{ subjects: [alice] }}, notify: {{ webhook: \"http://{}/hooks\", secret_env: {WEBHOOK_ENV} }} }}",
        hook.addr
    );
    let w = World::start(&config(&approval, "")).await;
    let c = cast();
    let started = std::time::Instant::now();
    let r = request(&w, &c.bot, &c.bot_key, BODY, &[]).await;
    let id = approval_id(&r);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the webhook never delays the request"
    );
    // The first delivery fails (500); the retry a second later is taken.
    for _ in 0..100 {
        if hook.got.lock().expect("lock").len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = hook.got.lock().expect("lock").clone();
    assert_eq!(got.len(), 2, "one failure, one retry");
    for (headers, body) in &got {
        verify_standard_webhook(headers, body);
    }
    assert_eq!(
        got[0].0.get("webhook-id"),
        got[1].0.get("webhook-id"),
        "a retry keeps its webhook-id"
    );
    let payload: Value = serde_json::from_slice(&got[1].1).expect("JSON payload");
    assert_eq!(payload["approval"]["id"], id.as_str());
    assert_eq!(payload["approval"]["status"], "pending");
    assert_eq!(
        payload["url"],
        w.url(&format!("/.countersign/approvals/{id}"))
    );
    support::assert_metric(
        &w.gw.metrics().await,
        "countersign_approval_webhook_failures_total 1",
    );
    // A tampered body fails the same check.
    let tampered = std::panic::catch_unwind(|| verify_standard_webhook(&got[1].0, b"{}"));
    assert!(tampered.is_err());
}

// ───────────────────────────── replicas ─────────────────────────────

fn redis_config(redis: &RedisServer) -> String {
    config(
        TWO_OF,
        &format!(
            "public_origin: \"http://admin.example.test\"\nstore: {{ kind: redis, url: \"{}\" }}",
            redis.url()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_is_shared_by_replicas_and_outlives_a_gateway() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let a = World::on(upstream, &redis_config(&redis)).await;
    let b_gw = Gateway::start(&redis_config(&redis), &a.upstream).await;
    let c = cast();
    let id = approval_id(&request(&a, &c.bot, &c.bot_key, BODY, &[]).await);

    // Approved on replica B, through B's own nonce flow.
    for (token, key) in [(&c.alice, &c.alice_key), (&c.bob, &c.bob_key)] {
        let url = format!("{}/.countersign/approvals/{id}/approve", b_gw.base);
        let auth = format!("DPoP {token}");
        let r = send(&url, "POST", &[("authorization", &auth)], Bytes::new()).await;
        let nonce = r.header("dpop-nonce").expect("a nonce").to_string();
        let htu = format!("http://admin.example.test/.countersign/approvals/{id}/approve");
        let proof = key.proof("POST", &htu, Some(&nonce), Some(token));
        let r = send(
            &url,
            "POST",
            &[("authorization", &auth), ("dpop", &proof)],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    drop(b_gw);
    // Executed on A.
    let r = execute(&a, &c.bot, &c.bot_key, &id, BODY).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.seen(), 1);
    // A new gateway on the same store sees it executed.
    let fresh = Gateway::start(&redis_config(&redis), &a.upstream).await;
    let r = send(
        &format!("{}/.countersign/approvals/{id}", fresh.base),
        "GET",
        &[("authorization", &format!("DPoP {}", c.alice))],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.json()["approval"]["status"], "executed", "{}", r.text());
}

// ───────────────────────────── the command line ─────────────────────────────

const BIN: &str = env!("CARGO_BIN_EXE_countersign");

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .env(HS256_ENV, HS256_SECRET)
        .env(WEBHOOK_ENV, WEBHOOK_SECRET)
        .output()
        .expect("the countersign binary runs")
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A device key written by `countersign keygen`; its path and thumbprint.
fn keygen(dir: &std::path::Path, name: &str) -> (String, String) {
    let path = dir.join(name);
    let path = path.to_str().expect("UTF-8 path").to_string();
    let out = cli(&["keygen", "--out", &path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jkt = stdout(&out)
        .split_whitespace()
        .find(|w| w.len() == 43)
        .expect("keygen prints the jkt")
        .to_string();
    (path, jkt)
}

/// The whole flow from shells: the requester is the `countersign request` client (it answers
/// the nonce challenge itself), the approvers use `countersign approvals approve`, an operator
/// `countersign approvals list|show`, all against one gateway on a real Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_from_the_command_line() {
    let redis = RedisServer::start();
    let body = config(
        TWO_OF,
        &format!("store: {{ kind: redis, url: \"{}\" }}", redis.url()),
    );
    let w = World::start(&body).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config_file = dir.path().join("gateway.yaml");
    std::fs::write(
        &config_file,
        format!(
            "listen: \"127.0.0.1:1\"\n{}",
            body.replace("{upstream}", "127.0.0.1:1")
        ),
    )
    .expect("write config");
    let config_file = config_file.to_str().expect("UTF-8").to_string();
    let (bot_key, bot_jkt) = keygen(dir.path(), "bot.pem");
    let (alice_key, _) = keygen(dir.path(), "alice.pem");
    let (bob_key, _) = keygen(dir.path(), "bob.pem");
    let c = cast();
    let url = w.url(RELEASE);

    let out = cli(&[
        "request", "-X", "POST", &url, "--data", BODY, "--key", &bot_key, "--token", &c.bot,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pending: Value = serde_json::from_str(&stdout(&out)).expect("the 202 body");
    let id = pending["approval"]["id"].as_str().expect("id").to_string();
    assert_eq!(pending["approval"]["requester"]["device"], bot_jkt.as_str());
    assert_eq!(w.seen(), 0);

    let listed = cli(&["approvals", "list", "--config", &config_file]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let line = stdout(&listed);
    assert!(
        line.contains(&id) && line.contains("pending") && line.contains("approvals 0/2"),
        "{line}"
    );

    for (key, token) in [(&alice_key, &c.alice), (&bob_key, &c.bob)] {
        let out = cli(&[
            "approvals",
            "approve",
            &id,
            "--gateway",
            &w.gw.base,
            "--key",
            key,
            "--token",
            token,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let shown = cli(&["approvals", "show", &id, "--config", &config_file]);
    let shown: Value = serde_json::from_str(&stdout(&shown)).expect("show prints JSON");
    assert_eq!(shown["approval"]["status"], "approved");

    let header = format!("Countersign-Approval: {id}");
    let out = cli(&[
        "request", "-X", "POST", &url, "--data", BODY, "-H", &header, "--key", &bot_key, "--token",
        &c.bot,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.seen(), 1);
    assert_eq!(
        w.upstream.last().provenance()["approvers"],
        json!(["alice", "bob"])
    );

    // A refused decision says why and exits non-zero.
    let out = cli(&[
        "approvals",
        "deny",
        &id,
        "--gateway",
        &w.gw.base,
        "--key",
        &alice_key,
        "--token",
        &c.alice,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("approval_closed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn listing_approvals_refuses_the_memory_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("gateway.yaml");
    let body = config(TWO_OF, "").replace("{upstream}", "127.0.0.1:1");
    std::fs::write(&file, format!("listen: \"127.0.0.1:1\"\n{body}")).expect("write config");
    let out = cli(&[
        "approvals",
        "list",
        "--config",
        file.to_str().expect("UTF-8"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("store.kind memory") && err.contains("store.kind: redis"),
        "{err}"
    );
    let out = cli(&[
        "approvals",
        "show",
        "nope",
        "--config",
        file.to_str().expect("UTF-8"),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an approval id"));
    // An id is base64url: one that starts with `-` is an id, not an option.
    let file = file.to_str().expect("UTF-8");
    let out = cli(&[
        "approvals",
        "show",
        "-AAAAAAAAAAAAAAAAAAAAA",
        "--config",
        file,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("store.kind memory"), "{err}");
    let vote = [
        "approvals",
        "approve",
        "-AAAAAAAAAAAAAAAAAAAAA",
        "--gateway",
        "http://127.0.0.1:1",
        "--key",
        file,
        "--token",
        "t",
    ];
    let err = String::from_utf8_lossy(&cli(&vote).stderr).into_owned();
    assert!(!err.contains("unexpected argument"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_navigation_to_an_approval_route_is_never_held_for_a_passkey() {
    let extra = "public_origin: \"http://app.example.test\"\nbrowser: { origin: \"http://confirm.example.test\" }";
    let w = World::start(&config(TWO_OF, extra)).await;
    let c = cast();
    let r = w
        .request("POST", RELEASE)
        .token(&c.bot)
        .header("sec-fetch-mode", "navigate")
        .header("accept", "text/html")
        .body(BODY)
        .send()
        .await;
    // The DPoP exchange, not a 303 to the confirmation origin whose resume would skip approvers.
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.header("location").is_none());
    assert!(r.header("dpop-nonce").is_some());
    assert_eq!(w.seen(), 0);
}

/// With `session.binding: enrolled` a subject may confirm from any of its enrolled devices: the
/// execution must still come from the device that made the request, and approvers need an
/// enrolled device of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_enrolled_devices_the_execution_needs_the_requesting_device() {
    let redis = RedisServer::start();
    let extra = format!("store: {{ kind: redis, url: \"{}\" }}", redis.url());
    let body = config("{ approvers: { subjects: [alice] } }", &extra).replace(
        "groups_claim: groups }",
        "groups_claim: groups, binding: enrolled }",
    );
    let w = World::start(&body).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("gateway.yaml");
    std::fs::write(
        &file,
        format!(
            "listen: \"127.0.0.1:1\"\n{}",
            body.replace("{upstream}", "127.0.0.1:1")
        ),
    )
    .expect("write config");
    let file = file.to_str().expect("UTF-8").to_string();
    let c = cast();
    let second_bot_key = es256();
    for (subject, key) in [
        ("deploy-bot", &c.bot_key),
        ("deploy-bot", &second_bot_key),
        ("alice", &c.alice_key),
    ] {
        let jkt = key.jkt();
        let out = cli(&[
            "devices",
            "add",
            "--config",
            &file,
            "--subject",
            subject,
            "--jkt",
            &jkt,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let id = approval_id(&request(&w, &c.bot, &c.bot_key, BODY, &[]).await);
    // An approver's key that is not enrolled cannot decide.
    let before = w.seen();
    let r = vote(&w, &c.alice, &es256(), &id, "approve").await;
    w.assert_refused(&r, before, 401, "invalid_dpop_proof", "device_not_enrolled")
        .await;
    let r = vote(&w, &c.alice, &c.alice_key, &id, "approve").await;
    assert_eq!(r.json()["approval"]["status"], "approved", "{}", r.text());

    let r = execute(&w, &c.bot, &second_bot_key, &id, BODY).await;
    let audit = w
        .assert_refused(&r, before, 403, "forbidden", "requester_device_mismatch")
        .await;
    assert_eq!(audit["device"], second_bot_key.jkt());
    let r = execute(&w, &c.bot, &c.bot_key, &id, BODY).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(w.seen(), before + 1);
}
