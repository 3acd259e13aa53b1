//! Two gateways sharing one real Redis, as two replicas behind one load balancer (same
//! `public_origin`, same upstream): what one replica accepted, issued or bound, the other knows.
//! Redis stopping mid-run fails high-impact routes closed with a quick `503` while low-risk
//! routes keep flowing, and service resumes by itself when Redis returns.

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use countersign::alg::ProofAlg;
use countersign::tools::device_key::DeviceKey;
use redis_support::RedisServer;
use support::{one_winner, race, send, Gateway, Reply, Upstream};

/// The origin both replicas are reached at, so a proof's `htu` fits either.
const ORIGIN: &str = "http://admin.example.test";
const TARGET: &str = "/api/users/42";
const SID: &str = "alice-session-0f9a8c7e";

/// Two replicas of one gateway and the upstream behind them.
struct Replicas {
    a: Gateway,
    b: Gateway,
    upstream: Upstream,
}

impl Replicas {
    async fn start(redis: &RedisServer) -> Replicas {
        let upstream = Upstream::start().await;
        let config = format!(
            r#"
public_origin: "{ORIGIN}"
session: {{ kind: cookie, cookie: sid }}
store: {{ kind: redis, url: "{}", timeout: 250ms }}
upstreams: {{ legacy: {{ address: "{{upstream}}" }} }}
routes:
  - name: delete-user
    match: {{ methods: [DELETE], path: "/api/users/{{id}}" }}
    upstream: legacy
    risk: high
  - name: default
    match: {{ path: "/{{*rest}}" }}
    upstream: legacy
    risk: low
"#,
            redis.url()
        );
        let a = Gateway::start(&config, &upstream).await;
        let b = Gateway::start(&config, &upstream).await;
        Replicas { a, b, upstream }
    }

    fn seen(&self) -> usize {
        self.upstream.seen().len()
    }
}

fn es256() -> DeviceKey {
    DeviceKey::generate(ProofAlg::Es256).expect("ES256 key generation works on this platform")
}

fn text(r: &Reply) -> String {
    format!("{} {}", r.status, String::from_utf8_lossy(&r.body))
}

/// `DELETE /api/users/42` on `gw` in session `SID`, with a proof when given.
async fn delete(gw: &Gateway, proof: Option<&str>) -> Reply {
    let cookie = format!("sid={SID}");
    let mut headers = vec![("cookie", cookie.as_str())];
    if let Some(proof) = proof {
        headers.push(("dpop", proof));
    }
    send(
        &format!("{}{TARGET}", gw.base),
        "DELETE",
        &headers,
        Bytes::new(),
    )
    .await
}

/// The `DPoP-Nonce` of the challenge `gw` answers.
async fn challenge(gw: &Gateway) -> String {
    let r = delete(gw, None).await;
    assert_eq!(r.status, 401, "challenge: {}", text(&r));
    assert_eq!(r.dpop_error().as_deref(), Some("use_dpop_nonce"));
    r.header("dpop-nonce")
        .expect("a challenge carries a DPoP-Nonce")
        .to_owned()
}

/// A proof for the action, signed with `key` over `nonce`.
fn proof(key: &DeviceKey, nonce: &str) -> String {
    key.proof(
        "DELETE",
        &format!("{ORIGIN}{TARGET}"),
        Some(nonce),
        Some(SID),
    )
}

/// The value of `countersign_store_errors_total{backend="redis"}` on `gw`.
async fn store_errors(gw: &Gateway) -> f64 {
    gw.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(r#"countersign_store_errors_total{backend="redis"} "#))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn readyz(gw: &Gateway) -> u16 {
    send(
        &format!("http://127.0.0.1:{}/readyz", gw.metrics_port),
        "GET",
        &[],
        Bytes::new(),
    )
    .await
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_accepted_by_one_replica_is_refused_by_the_other() {
    let redis = RedisServer::start();
    let r = Replicas::start(&redis).await;
    let key = es256();
    let used = proof(&key, &challenge(&r.a).await);
    let first = delete(&r.a, Some(&used)).await;
    assert_eq!(first.status, 200, "{}", text(&first));
    assert_eq!(r.seen(), 1);

    let replay = delete(&r.b, Some(&used)).await;
    assert_eq!(replay.status, 401, "{}", text(&replay));
    assert_eq!(replay.dpop_error().as_deref(), Some("use_dpop_nonce"));
    let audit = r.b.audit_of(&replay);
    assert_eq!(audit["event"], "rejected", "{audit}");
    assert_eq!(audit["reason"], "replay", "{audit}");
    assert_eq!(r.seen(), 1, "the replay never reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_issued_by_one_replica_is_redeemed_on_the_other() {
    let redis = RedisServer::start();
    let r = Replicas::start(&redis).await;
    let key = es256();
    let nonce = challenge(&r.a).await;
    let accepted = delete(&r.b, Some(&proof(&key, &nonce))).await;
    assert_eq!(accepted.status, 200, "{}", text(&accepted));
    assert_eq!(r.seen(), 1);
    assert!(r.b.audit().iter().any(|a| a["event"] == "accepted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_bound_on_one_replica_is_enforced_on_the_other() {
    let redis = RedisServer::start();
    let r = Replicas::start(&redis).await;
    let (first, second) = (es256(), es256());
    let bound = delete(&r.a, Some(&proof(&first, &challenge(&r.a).await))).await;
    assert_eq!(bound.status, 200, "{}", text(&bound));

    let nonce = challenge(&r.b).await;
    let other = delete(&r.b, Some(&proof(&second, &nonce))).await;
    assert_eq!(other.status, 401, "{}", text(&other));
    assert_eq!(other.dpop_error().as_deref(), Some("invalid_dpop_proof"));
    let audit = r.b.audit_of(&other);
    assert_eq!(audit["reason"], "device_mismatch", "{audit}");
    assert_eq!(r.seen(), 1);
    // The bound device still confirms on the other replica.
    let again = delete(&r.b, Some(&proof(&first, &challenge(&r.b).await))).await;
    assert_eq!(again.status, 200, "{}", text(&again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_32_identical_retries_across_both_replicas_exactly_one_is_forwarded() {
    let redis = RedisServer::start();
    let r = Replicas::start(&redis).await;
    let key = es256();
    let raced = proof(&key, &challenge(&r.a).await);
    let headers = vec![
        ("cookie".to_string(), format!("sid={SID}")),
        ("dpop".to_string(), raced),
    ];
    let requests = (0..32)
        .map(|i| {
            let base = if i % 2 == 0 { &r.a.base } else { &r.b.base };
            (format!("{base}{TARGET}"), headers.clone())
        })
        .collect();
    one_winner(race("DELETE", requests).await);
    assert_eq!(r.seen(), 1, "the upstream saw exactly one");
    let replays = [&r.a, &r.b]
        .iter()
        .flat_map(|gw| gw.audit())
        .filter(|a| a["reason"] == "replay")
        .count();
    assert_eq!(replays, 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopping_fails_high_impact_closed_and_recovery_needs_no_restart() {
    let mut redis = RedisServer::start();
    let r = Replicas::start(&redis).await;
    let key = es256();
    let ok = delete(&r.a, Some(&proof(&key, &challenge(&r.a).await))).await;
    assert_eq!(ok.status, 200, "{}", text(&ok));
    assert_eq!(readyz(&r.a).await, 200);
    let pending = challenge(&r.b).await;

    redis.stop();

    // High-impact: refused, quickly, whether the request carries a proof or not.
    for (gw, proof) in [(&r.a, None), (&r.b, Some(proof(&key, &pending)))] {
        let started = Instant::now();
        let refused = delete(gw, proof.as_deref()).await;
        let took = started.elapsed();
        eprintln!("503 with Redis down took {took:?}");
        assert_eq!(refused.status, 503, "{}", text(&refused));
        assert_eq!(refused.json()["error"], "temporarily_unavailable");
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert_eq!(gw.audit_of(&refused)["reason"], "store_unavailable");
    }
    assert_eq!(
        r.seen(),
        1,
        "nothing is accepted because the store could not be asked"
    );

    // Low-risk: flows.
    let low = send(&format!("{}/api/users", r.a.base), "GET", &[], Bytes::new()).await;
    assert_eq!(low.status, 200, "{}", text(&low));
    assert_eq!(r.seen(), 2);

    assert_eq!(readyz(&r.a).await, 503);
    assert!(store_errors(&r.a).await > 0.0);
    assert!(store_errors(&r.b).await > 0.0);

    redis.restart();

    // Both replicas recover on their own. The restarted Redis kept nothing (no persistence):
    // the old nonce is unknown and the session is unbound until the next confirmation binds it.
    let started = Instant::now();
    let nonce = loop {
        let reply = delete(&r.a, None).await;
        if reply.status == 401 {
            break reply
                .header("dpop-nonce")
                .expect("a challenge carries a DPoP-Nonce")
                .to_owned();
        }
        assert_eq!(reply.status, 503, "{}", text(&reply));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no recovery after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("recovered {:?} after the restart", started.elapsed());
    let resumed = delete(&r.b, Some(&proof(&key, &nonce))).await;
    assert_eq!(resumed.status, 200, "{}", text(&resumed));
    let stale = delete(&r.b, Some(&proof(&key, &pending))).await;
    assert_eq!(stale.status, 401, "{}", text(&stale));
    assert!(r.b.audit().iter().any(|a| a["reason"] == "nonce_expired"));
    assert_eq!(readyz(&r.a).await, 200);
    assert_eq!(readyz(&r.b).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_fails_high_impact_closed_within_the_timeout() {
    let redis = RedisServer::start();
    let r = Replicas::start(&redis).await;
    let key = es256();
    let pending = challenge(&r.a).await;

    redis.pause();
    let started = Instant::now();
    let refused = delete(&r.b, Some(&proof(&key, &pending))).await;
    let took = started.elapsed();
    eprintln!("503 with Redis paused took {took:?}");
    assert_eq!(refused.status, 503, "{}", text(&refused));
    // store.timeout is 250ms; the request makes one store call before it gives up.
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(1),
        "took {took:?}"
    );
    let low = send(&format!("{}/reports", r.b.base), "GET", &[], Bytes::new()).await;
    assert_eq!(low.status, 200, "{}", text(&low));
    assert_eq!(readyz(&r.b).await, 503);
    assert_eq!(r.seen(), 1);

    redis.resume();
    let accepted = delete(&r.b, Some(&proof(&key, &challenge(&r.b).await))).await;
    assert_eq!(accepted.status, 200, "{}", text(&accepted));
    assert_eq!(r.seen(), 2);
}
