//! One replay-store suite, run against every backend: memory, standalone Redis, Redis Cluster
//! (three masters) and Redis behind a Sentinel. The backends must agree on every outcome of
//! CONTRACT §3–§4's single-use rules: nonces (consume once, tombstones, mismatch does not burn,
//! expiry), `jti`s, first-use device bindings, and the 64-way race. On Redis, every key is a
//! namespaced hex digest with a TTL.

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use countersign::store::{
    Bind, Chain, Key, MemoryStore, NonceRecord, RedisStore, ReplayStore, Take, Taken,
};
use redis_support::{keys, query, RedisCluster, RedisSentinel, RedisServer};

const TIMEOUT: Duration = Duration::from_millis(250);
const LONG: Duration = Duration::from_secs(60);
/// Short TTLs and the wait after which they have surely passed.
const SHORT: Duration = Duration::from_millis(150);
const PAST_SHORT: Duration = Duration::from_millis(400);

type Store = Arc<dyn ReplayStore>;
type Case = fn(Store) -> Pin<Box<dyn Future<Output = ()> + Send>>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), |s| Box::pin($name(s)))),*]
    };
}

/// Every case, each given a fresh store.
const SUITE: &[(&str, Case)] = cases![
    a_nonce_is_consumed_once_then_reported_used,
    nonces_with_and_without_device_and_chain_give_back_their_chain,
    a_mismatching_presenter_does_not_burn_the_nonce,
    a_nonce_issued_before_binding_accepts_any_device,
    unknown_and_expired_nonces_are_unknown,
    a_tombstone_lasts_as_long_as_the_nonce_would_have,
    a_jti_is_claimed_once_per_window,
    a_session_is_bound_to_its_first_device,
    a_binding_expires_and_can_then_be_taken_by_another_device,
    of_64_concurrent_takes_exactly_one_consumes,
    issued_nonces_are_counted_until_consumed,
    a_record_is_read_then_taken_once_then_reads_as_used,
    a_record_expires_at_its_ttl,
    of_64_concurrent_record_takes_exactly_one_gets_the_value,
    ping_answers,
    the_first_origin_of_a_session_holds,
    a_revocation_mark_moves_forward_only,
    a_quota_holds_its_limit_and_lapses,
    of_64_concurrent_slot_takes_exactly_the_limit_succeed,
    a_record_is_swapped_only_while_it_holds_what_was_read,
    of_64_concurrent_swaps_of_one_value_exactly_one_wins,
    an_index_lists_its_live_members_once,
];

async fn run_suite(backend: &str, make: impl Fn() -> Store) {
    for (name, case) in SUITE {
        let store = make();
        assert_eq!(store.backend(), backend);
        eprintln!("{backend}: {name}");
        case(store).await;
    }
}

fn key() -> Key {
    rand::random()
}

fn action() -> [u8; 32] {
    rand::random()
}

fn record(action: [u8; 32], device: Option<&str>, chain: Option<Chain>) -> NonceRecord {
    NonceRecord {
        action,
        device: device.map(str::to_string),
        chain,
    }
}

fn chain() -> Chain {
    Chain {
        root: uuid::Uuid::now_v7().to_string(),
        parent: uuid::Uuid::now_v7().to_string(),
    }
}

async fn put(store: &Store, nonce: &Key, record: &NonceRecord, ttl: Duration) {
    store
        .put_nonce(nonce, record.clone(), ttl)
        .await
        .expect("put_nonce");
}

async fn take(store: &Store, nonce: &Key, action: &[u8; 32], device: &str) -> Take {
    store
        .take_nonce(nonce, action, device)
        .await
        .expect("take_nonce")
}

// ───────────────────────────── the cases ─────────────────────────────

async fn a_nonce_is_consumed_once_then_reported_used(s: Store) {
    let (nonce, act) = (key(), action());
    let rec = record(act, Some("jkt-A"), None);
    put(&s, &nonce, &rec, LONG).await;
    assert_eq!(
        take(&s, &nonce, &act, "jkt-A").await,
        Take::Consumed(rec.chain)
    );
    assert_eq!(take(&s, &nonce, &act, "jkt-A").await, Take::Used);
    assert_eq!(take(&s, &nonce, &act, "jkt-A").await, Take::Used);
}

async fn nonces_with_and_without_device_and_chain_give_back_their_chain(s: Store) {
    for rec in [
        record(action(), None, None),
        record(action(), Some("jkt-A"), None),
        record(action(), None, Some(chain())),
        record(
            action(),
            Some("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            Some(chain()),
        ),
    ] {
        let nonce = key();
        put(&s, &nonce, &rec, LONG).await;
        let device = rec.device.clone().unwrap_or_else(|| "any".to_string());
        assert_eq!(
            take(&s, &nonce, &rec.action, &device).await,
            Take::Consumed(rec.chain)
        );
    }
}

async fn a_mismatching_presenter_does_not_burn_the_nonce(s: Store) {
    let (nonce, act) = (key(), action());
    let rec = record(act, Some("jkt-A"), Some(chain()));
    put(&s, &nonce, &rec, LONG).await;
    assert_eq!(take(&s, &nonce, &action(), "jkt-A").await, Take::Mismatch);
    assert_eq!(take(&s, &nonce, &act, "jkt-B").await, Take::Mismatch);
    assert_eq!(take(&s, &nonce, &act, "").await, Take::Mismatch);
    assert_eq!(
        take(&s, &nonce, &act, "jkt-A").await,
        Take::Consumed(rec.chain)
    );
    // Once used, a mismatching presenter learns it is used, like anyone else.
    assert_eq!(take(&s, &nonce, &act, "jkt-B").await, Take::Used);
}

async fn a_nonce_issued_before_binding_accepts_any_device(s: Store) {
    let (nonce, act) = (key(), action());
    let rec = record(act, None, None);
    put(&s, &nonce, &rec, LONG).await;
    assert_eq!(
        take(&s, &nonce, &act, "jkt-Z").await,
        Take::Consumed(rec.chain)
    );
    assert_eq!(take(&s, &nonce, &act, "jkt-A").await, Take::Used);
}

async fn unknown_and_expired_nonces_are_unknown(s: Store) {
    let act = action();
    assert_eq!(take(&s, &key(), &act, "jkt-A").await, Take::Unknown);
    let nonce = key();
    put(&s, &nonce, &record(act, None, None), SHORT).await;
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(take(&s, &nonce, &act, "jkt-A").await, Take::Unknown);
}

async fn a_tombstone_lasts_as_long_as_the_nonce_would_have(s: Store) {
    let (nonce, act) = (key(), action());
    let rec = record(act, None, None);
    put(&s, &nonce, &rec, Duration::from_millis(500)).await;
    assert_eq!(
        take(&s, &nonce, &act, "jkt-A").await,
        Take::Consumed(rec.chain)
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(take(&s, &nonce, &act, "jkt-A").await, Take::Used);
    tokio::time::sleep(Duration::from_millis(650)).await;
    assert_eq!(take(&s, &nonce, &act, "jkt-A").await, Take::Unknown);
}

async fn a_jti_is_claimed_once_per_window(s: Store) {
    let jti = key();
    assert!(s.claim_jti(&jti, LONG).await.expect("claim"));
    assert!(!s.claim_jti(&jti, LONG).await.expect("claim"));
    assert!(s.claim_jti(&key(), LONG).await.expect("claim"));
    let short = key();
    assert!(s.claim_jti(&short, SHORT).await.expect("claim"));
    assert!(!s.claim_jti(&short, SHORT).await.expect("claim"));
    tokio::time::sleep(PAST_SHORT).await;
    assert!(s.claim_jti(&short, SHORT).await.expect("claim"));
}

async fn a_session_is_bound_to_its_first_device(s: Store) {
    let session = key();
    assert_eq!(s.device(&session).await.expect("device"), None);
    assert_eq!(
        s.bind_device(&session, "jkt-A", LONG).await.expect("bind"),
        Bind::New
    );
    assert_eq!(
        s.bind_device(&session, "jkt-A", LONG).await.expect("bind"),
        Bind::Same
    );
    assert_eq!(
        s.bind_device(&session, "jkt-B", LONG).await.expect("bind"),
        Bind::Other
    );
    assert_eq!(
        s.device(&session).await.expect("device").as_deref(),
        Some("jkt-A")
    );
    assert_eq!(s.device(&key()).await.expect("device"), None);
}

async fn the_first_origin_of_a_session_holds(s: Store) {
    let session = key();
    let first = s.record_origin(&session, "192.0.2.0/24", 100, LONG).await;
    assert_eq!(first.expect("origin"), ("192.0.2.0/24".to_string(), 100));
    let later = s
        .record_origin(&session, "198.51.100.0/24", 200, LONG)
        .await;
    assert_eq!(later.expect("origin"), ("192.0.2.0/24".to_string(), 100));
    let other = s.record_origin(&key(), "2001:db8::/64", 300, SHORT).await;
    assert_eq!(other.expect("origin"), ("2001:db8::/64".to_string(), 300));
}

async fn a_revocation_mark_moves_forward_only(s: Store) {
    let mark = key();
    assert_eq!(s.revoked(&mark).await.expect("revoked"), None);
    s.revoke(&mark, 500, LONG).await.expect("revoke");
    s.revoke(&mark, 400, LONG).await.expect("revoke");
    assert_eq!(s.revoked(&mark).await.expect("revoked"), Some(500));
    s.revoke(&mark, 600, LONG).await.expect("revoke");
    assert_eq!(s.revoked(&mark).await.expect("revoked"), Some(600));
    let short = key();
    s.revoke(&short, 1, SHORT).await.expect("revoke");
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(s.revoked(&short).await.expect("revoked"), None);
}

async fn a_quota_holds_its_limit_and_lapses(s: Store) {
    let quota = key();
    for _ in 0..3 {
        assert!(s.take_slot(&quota, 3, SHORT).await.expect("slot"));
    }
    assert!(!s.take_slot(&quota, 3, SHORT).await.expect("slot"));
    s.give_slot(&quota).await.expect("give");
    assert!(s.take_slot(&quota, 3, SHORT).await.expect("slot"));
    assert!(!s.take_slot(&quota, 3, SHORT).await.expect("slot"));
    assert!(s.take_slot(&key(), 3, SHORT).await.expect("another quota"));
    tokio::time::sleep(PAST_SHORT).await;
    assert!(s.take_slot(&quota, 3, SHORT).await.expect("lapsed"));
}

async fn of_64_concurrent_slot_takes_exactly_the_limit_succeed(s: Store) {
    let quota = key();
    let takes = (0..64).map(|_| {
        let s = s.clone();
        tokio::spawn(async move { s.take_slot(&quota, 10, LONG).await.expect("slot") })
    });
    let mut taken = 0;
    for take in takes {
        taken += usize::from(take.await.expect("task"));
    }
    assert_eq!(taken, 10);
}

async fn a_binding_expires_and_can_then_be_taken_by_another_device(s: Store) {
    let session = key();
    assert_eq!(
        s.bind_device(&session, "jkt-A", SHORT).await.expect("bind"),
        Bind::New
    );
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(s.device(&session).await.expect("device"), None);
    assert_eq!(
        s.bind_device(&session, "jkt-B", LONG).await.expect("bind"),
        Bind::New
    );
    assert_eq!(
        s.device(&session).await.expect("device").as_deref(),
        Some("jkt-B")
    );
}

async fn of_64_concurrent_takes_exactly_one_consumes(s: Store) {
    let (nonce, act) = (key(), action());
    put(&s, &nonce, &record(act, Some("jkt-A"), None), LONG).await;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.take_nonce(&nonce, &act, "jkt-A").await })
        })
        .collect();
    let (mut consumed, mut used) = (0, 0);
    for task in tasks {
        match task.await.expect("task").expect("take_nonce") {
            Take::Consumed(_) => consumed += 1,
            Take::Used => used += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((consumed, used), (1, 63));
}

async fn a_record_is_read_then_taken_once_then_reads_as_used(s: Store) {
    let k = key();
    let held: Vec<u8> = (0..=255u8).cycle().take(200 * 1024).collect();
    assert_eq!(s.take_record(&k).await.expect("take"), Taken::Unknown);
    s.put_record(&k, held.clone(), LONG).await.expect("put");
    assert_eq!(s.get_record(&k).await.expect("get"), Some(held.clone()));
    assert_eq!(s.take_record(&k).await.expect("take"), Taken::Value(held));
    assert_eq!(s.take_record(&k).await.expect("take"), Taken::Used);
    assert_eq!(s.get_record(&k).await.expect("get"), None);
}

async fn a_record_expires_at_its_ttl(s: Store) {
    let k = key();
    s.put_record(&k, b"hold".to_vec(), SHORT)
        .await
        .expect("put");
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(s.get_record(&k).await.expect("get"), None);
    assert_eq!(s.take_record(&k).await.expect("take"), Taken::Unknown);
}

async fn of_64_concurrent_record_takes_exactly_one_gets_the_value(s: Store) {
    let k = key();
    s.put_record(&k, b"hold".to_vec(), LONG).await.expect("put");
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.take_record(&k).await })
        })
        .collect();
    let (mut won, mut used) = (0, 0);
    for task in tasks {
        match task.await.expect("task").expect("take_record") {
            Taken::Value(v) => {
                assert_eq!(v, b"hold");
                won += 1
            }
            Taken::Used => used += 1,
            Taken::Unknown => panic!("a stored record read as unknown"),
        }
    }
    assert_eq!((won, used), (1, 63));
}

async fn a_record_is_swapped_only_while_it_holds_what_was_read(s: Store) {
    let k = key();
    assert!(!s
        .swap_record(&k, b"a", b"b".to_vec(), LONG)
        .await
        .expect("swap"));
    s.put_record(&k, b"a".to_vec(), LONG).await.expect("put");
    assert!(!s
        .swap_record(&k, b"x", b"b".to_vec(), LONG)
        .await
        .expect("swap"));
    assert_eq!(
        s.get_record(&k).await.expect("get").as_deref(),
        Some(&b"a"[..])
    );
    assert!(s
        .swap_record(&k, b"a", b"longer value".to_vec(), SHORT)
        .await
        .expect("swap"));
    assert_eq!(
        s.get_record(&k).await.expect("get").as_deref(),
        Some(&b"longer value"[..])
    );
    // The swap set the new TTL.
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(s.get_record(&k).await.expect("get"), None);
    assert!(!s
        .swap_record(&k, b"longer value", b"c".to_vec(), LONG)
        .await
        .expect("swap"));
}

async fn of_64_concurrent_swaps_of_one_value_exactly_one_wins(s: Store) {
    let k = key();
    s.put_record(&k, b"approved".to_vec(), LONG)
        .await
        .expect("put");
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let value = format!("executed by {i}").into_bytes();
                s.swap_record(&k, b"approved", value, LONG).await
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        if task.await.expect("task").expect("swap_record") {
            won += 1;
        }
    }
    assert_eq!(won, 1);
}

async fn an_index_lists_its_live_members_once(s: Store) {
    let index = key();
    s.index_add(&index, "a", LONG).await.expect("add");
    s.index_add(&index, "b", SHORT).await.expect("add");
    s.index_add(&index, "a", SHORT).await.expect("add again");
    let mut members = s.index_members(&index, 10).await.expect("members");
    members.sort();
    assert_eq!(members, ["a", "b"]);
    assert_eq!(s.index_members(&index, 1).await.expect("members").len(), 1);
    tokio::time::sleep(PAST_SHORT).await;
    // "a" kept its longer TTL; "b" lapsed.
    assert_eq!(s.index_members(&index, 10).await.expect("members"), ["a"]);
}

async fn issued_nonces_are_counted_until_consumed(s: Store) {
    let act = action();
    let nonces = [key(), key(), key()];
    for nonce in &nonces {
        put(&s, nonce, &record(act, None, None), LONG).await;
    }
    assert_eq!(s.outstanding_nonces(), 3);
    assert!(matches!(
        take(&s, &nonces[0], &act, "jkt-A").await,
        Take::Consumed(_)
    ));
    assert_eq!(s.outstanding_nonces(), 2);
}

async fn ping_answers(s: Store) {
    s.ping().await.expect("ping");
}

// ───────────────────────────── the backends ─────────────────────────────

fn redis_store(url: &str) -> Store {
    Arc::new(RedisStore::new(url, TIMEOUT).expect("redis store"))
}

/// Leaves one record of each kind with a long TTL, then checks every key on every node: a
/// `countersign:` namespace, a hex SHA-256 (never the raw nonce, jti, session or device), a TTL.
async fn keys_are_hashed_and_expire(store: Store, nodes: &[String]) {
    let raw = "RAW-credential-must-not-appear";
    let nonce = countersign::store::key("nonce", &[raw.as_bytes()]);
    put(
        &store,
        &nonce,
        &record(action(), Some(raw), Some(chain())),
        LONG,
    )
    .await;
    let jti = countersign::store::key("jti", &[raw.as_bytes()]);
    assert!(store.claim_jti(&jti, LONG).await.expect("claim"));
    let session = countersign::store::key("binding", &[raw.as_bytes()]);
    store.bind_device(&session, raw, LONG).await.expect("bind");
    let origin = countersign::store::key("origin", &[raw.as_bytes()]);
    store
        .record_origin(&origin, "192.0.2.0/24", 1, LONG)
        .await
        .expect("origin");
    let mark = countersign::store::key("revoked-subject", &[raw.as_bytes()]);
    store.revoke(&mark, 1, LONG).await.expect("revoke");
    store
        .put_record(&session, raw.as_bytes().to_vec(), LONG)
        .await
        .expect("record");
    store
        .index_add(&session, "member", LONG)
        .await
        .expect("index");

    let mut found = Vec::new();
    for node in nodes {
        for name in keys(node, "*") {
            let ttl: i64 = query(node, redis::cmd("PTTL").arg(&name)).expect("PTTL");
            // -2: expired between SCAN and PTTL; -1 would be a key that never expires.
            assert!(ttl > 0 || ttl == -2, "{name} has no TTL ({ttl})");
            found.push(name);
        }
    }
    let kinds = [
        "nonce", "jti", "binding", "origin", "revoked", "record", "slots", "index",
    ];
    for kind in kinds {
        assert!(
            found
                .iter()
                .any(|k| k.starts_with(&format!("countersign:{kind}:"))),
            "no {kind} key among {found:?}"
        );
    }
    for name in &found {
        let digest = kinds
            .iter()
            .find_map(|kind| name.strip_prefix(&format!("countersign:{kind}:")))
            .unwrap_or_else(|| panic!("{name} is outside the countersign namespaces"));
        assert!(
            digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name} is not a hex SHA-256"
        );
        assert!(!name.contains(raw));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_passes_the_suite() {
    run_suite("memory", || Arc::new(MemoryStore::new(10_000))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_passes_the_suite() {
    let server = RedisServer::start();
    let url = server.url();
    run_suite("redis", || redis_store(&url)).await;
    keys_are_hashed_and_expire(redis_store(&url), std::slice::from_ref(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_passes_the_suite() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    run_suite("redis", || redis_store(&url)).await;
    keys_are_hashed_and_expire(redis_store(&url), &cluster.node_urls()).await;
    // The keys spread over the masters: single-key operations never need one slot.
    let holding = cluster
        .node_urls()
        .iter()
        .filter(|node| !keys(node, "countersign:*").is_empty())
        .count();
    assert!(holding >= 2, "keys landed on {holding} of 3 masters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_store_passes_the_suite() {
    let sentinel = RedisSentinel::start();
    let url = sentinel.url();
    run_suite("redis", || redis_store(&url)).await;
    keys_are_hashed_and_expire(redis_store(&url), &[sentinel.master.url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_fails_closed_at_once() {
    // A port nothing listens on: every operation is an error, never an answer, and nobody
    // waits for the timeout to learn it.
    let store = redis_store(&format!("redis://127.0.0.1:{}", unused_port()));
    let started = Instant::now();
    assert!(store.ping().await.is_err());
    assert!(store.take_nonce(&key(), &action(), "jkt-A").await.is_err());
    assert!(store.claim_jti(&key(), LONG).await.is_err());
    assert!(store.bind_device(&key(), "jkt-A", LONG).await.is_err());
    assert!(store.device(&key()).await.is_err());
    assert!(store
        .put_nonce(&key(), record(action(), None, None), LONG)
        .await
        .is_err());
    assert!(
        started.elapsed() < TIMEOUT,
        "six refused operations took {:?}",
        started.elapsed()
    );
    assert_eq!(store.outstanding_nonces(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_fails_closed_after_the_timeout() {
    // Accepts connections (the kernel completes the handshake) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let store = redis_store(&format!("redis://127.0.0.1:{port}"));
    for _ in 0..2 {
        let started = Instant::now();
        let taken = store.take_nonce(&key(), &action(), "jkt-A").await;
        let took = started.elapsed();
        assert!(taken.is_err(), "{taken:?}");
        assert!(
            took >= TIMEOUT && took < TIMEOUT + Duration::from_millis(500),
            "took {took:?}"
        );
    }
}

fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_made_outside_any_runtime_works_from_several_runtimes() {
    let server = RedisServer::start();
    let store = std::thread::spawn({
        let url = server.url();
        move || redis_store(&url)
    })
    .join()
    .expect("store built on a plain thread");
    let (nonce, act) = (key(), action());
    put(&store, &nonce, &record(act, None, None), LONG).await;
    // Another runtime, as Pingora runs each service on its own: the connection made on the
    // first use keeps serving it, and this runtime stopping does not break the store.
    let other = store.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            assert!(other.claim_jti(&key(), LONG).await.expect("claim"));
        });
    })
    .join()
    .expect("second runtime");
    assert!(matches!(
        take(&store, &nonce, &act, "jkt-A").await,
        Take::Consumed(_)
    ));
}
