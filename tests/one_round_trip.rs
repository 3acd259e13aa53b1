//! One-round-trip confirmations (docs/protocol.md, "One round trip"): a proof that signs its exact
//! action (`cs_ach`) gets the session's next nonce on its response, and that nonce confirms the
//! next action of the same session and device with no challenge, once. A standard RFC 9449 client
//! sees none of it.
//!
//! Every refusal asserts the status, the error, the reason, the audit record and that the upstream
//! saw nothing.

mod support;

use countersign::nonce::action_hash;
use countersign::tools::device_key::DeviceKey;
use sha2::{Digest, Sha256};
use support::world::{assert_nonce_shape, assert_refused, es256, path_of, Refused, World};
use support::Reply;

const SID: &str = "alice-session-0f9a8c7e";
const OTHER_SID: &str = "bob-session-5d1e2b3a";

const CONFIG: &str = r#"
session: { kind: cookie, cookie: sid }
upstreams: { legacy: { address: "{upstream}" } }
routes:
  - name: delete-user
    match: { methods: [DELETE, POST], path: "/api/users/{id}" }
    upstream: legacy
    risk: high
  - name: default
    match: { path: "/{*rest}" }
    upstream: legacy
    risk: low
"#;

/// The next nonce a confirmed response carries, exposed to scripts.
fn next_nonce(r: &Reply) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("countersign-confirmation-id").is_some());
    let expose = r
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(expose.contains("dpop-nonce"), "exposed: {expose}");
    let nonce = r
        .header("dpop-nonce")
        .expect("a proof that signed its action gets the next nonce")
        .to_owned();
    assert_nonce_shape(&nonce);
    nonce
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Asserts `r` is the refusal `want`, with the upstream still at `before` requests.
async fn refused_as(w: &World, r: &Reply, before: usize, want: Refused<'_>) {
    assert_refused(&w.gw, || w.upstream.count(), before, r, want).await;
}

/// The first confirmation of a session: challenge, then a retry that signs its action.
async fn first(w: &World, key: &DeviceKey) -> String {
    let nonce = w
        .request("DELETE", "/api/users/1")
        .cookie(SID)
        .challenge()
        .await;
    let r = w
        .request("DELETE", "/api/users/1")
        .cookie(SID)
        .signed_action(key, &nonce)
        .send()
        .await;
    next_nonce(&r)
}

#[tokio::test]
async fn the_next_nonce_confirms_the_next_action_in_one_request() {
    let w = World::start(CONFIG).await;
    let key = es256();
    let mut nonce = first(&w, &key).await;
    for (i, target) in ["/api/users/2", "/api/users/3?hard=yes"].iter().enumerate() {
        let before = w.seen();
        let r = w
            .request("POST", target)
            .cookie(SID)
            .body(format!("{{\"step\":{i}}}"))
            .signed_action(&key, &nonce)
            .send()
            .await;
        let next = next_nonce(&r);
        assert_ne!(next, nonce, "each nonce is used once");
        assert_eq!(w.seen(), before + 1, "forwarded at once");
        assert_eq!(w.upstream.last().path(), path_of(target));
        let id = r.header("countersign-request-id").expect("request id");
        let accepted =
            w.gw.wait_for_audit(|a| a["request_id"] == id && a["event"] == "accepted")
                .await;
        assert_eq!(accepted["device"], key.jkt().as_str(), "{accepted}");
        nonce = next;
    }
    // Only the first action was challenged.
    let challenged =
        w.gw.audit()
            .iter()
            .filter(|a| a["event"] == "challenged")
            .count();
    assert_eq!(challenged, 1);
}

#[tokio::test]
async fn a_standard_client_gets_no_next_nonce() {
    let w = World::start(CONFIG).await;
    let r = w
        .request("DELETE", "/api/users/1")
        .cookie(SID)
        .confirm(&es256())
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("dpop-nonce"), None);
}

#[tokio::test]
async fn the_next_nonce_confirms_only_the_signed_action_of_its_session_and_device() {
    let w = World::start(CONFIG).await;
    let key = es256();
    let nonce = first(&w, &key).await;
    let target = "/api/users/7";
    let refused = |case| Refused {
        status: 401,
        error: "use_dpop_nonce",
        reason: "action_mismatch",
        case,
    };

    // A proof whose cs_ach names another action.
    let before = w.seen();
    let other = action_hash("DELETE", "/api/users/8", &sha256(b""));
    let r = w
        .request("DELETE", target)
        .cookie(SID)
        .signed_hash(&key, &nonce, &other)
        .send()
        .await;
    refused_as(&w, &r, before, refused("cs_ach of another action")).await;

    // The body is part of the action.
    let r = w
        .request("POST", target)
        .cookie(SID)
        .body("a")
        .signed_hash(&key, &nonce, &action_hash("POST", target, &sha256(b"")))
        .send()
        .await;
    refused_as(&w, &r, before, refused("cs_ach of another body")).await;

    // A proof that does not sign its action cannot use an open nonce.
    let r = w
        .request("DELETE", target)
        .cookie(SID)
        .signed(&key, &nonce)
        .send()
        .await;
    refused_as(&w, &r, before, refused("no cs_ach")).await;

    // Another device (refused as for any nonce: the session is bound to the first), and
    // another session.
    let r = w
        .request("DELETE", target)
        .cookie(SID)
        .signed_action(&es256(), &nonce)
        .send()
        .await;
    let another_device = Refused {
        error: "invalid_dpop_proof",
        reason: "device_mismatch",
        ..refused("another device")
    };
    refused_as(&w, &r, before, another_device).await;
    let r = w
        .request("DELETE", target)
        .cookie(OTHER_SID)
        .signed_action(&key, &nonce)
        .send()
        .await;
    refused_as(&w, &r, before, refused("another session")).await;

    // None of those spent it; used once, it is spent.
    let r = w
        .request("DELETE", target)
        .cookie(SID)
        .signed_action(&key, &nonce)
        .send()
        .await;
    next_nonce(&r);
    let r = w
        .request("DELETE", target)
        .cookie(SID)
        .signed_action(&key, &nonce)
        .send()
        .await;
    let replay = Refused {
        reason: "replay",
        ..refused("used twice")
    };
    refused_as(&w, &r, before + 1, replay).await;
}
