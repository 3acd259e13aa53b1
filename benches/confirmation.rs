//! The confirmation decision without network, next to its parts: nonce issue + consume on the
//! memory store, and `Confirmer::decide` for a fresh proof (session, proof, ath, binding, nonce,
//! jti). Compare `decide` with the raw verify figures of `benches/proof.rs` for the ratio.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use countersign::alg::ProofAlg;
use countersign::confirm::{Confirmer, Exchange, Outcome};
use countersign::metrics::Metrics;
use countersign::nonce::{self, Action};
use countersign::session::Sessions;
use countersign::store::{MemoryStore, NonceRecord, ReplayStore, Take};
use countersign::tools::device_key::DeviceKey;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::HeaderMap;

const URL: &str = "http://admin.example/api/users/42";
const TARGET: &str = "/api/users/42";
const SID: &str = "bench-session";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime builds")
}

fn bench_nonce(c: &mut Criterion) {
    let rt = runtime();
    let store = MemoryStore::new(1_000_000);
    let body = [0u8; 32];
    let action = Action {
        session_id: SID,
        method: "DELETE",
        overrides: "",
        target: TARGET,
        body_sha256: &body,
    }
    .binding();
    c.bench_function("nonce/issue+consume", |b| {
        b.iter(|| {
            rt.block_on(async {
                let value = nonce::fresh();
                let key = nonce::key(&value);
                let record = NonceRecord {
                    action,
                    device: None,
                    chain: None,
                };
                // Short-lived, so the tombstones of millions of iterations expire and are swept
                // instead of filling the store.
                store
                    .put_nonce(&key, record, Duration::from_secs(1))
                    .await
                    .expect("put");
                let taken = store.take_nonce(&key, &action, "jkt").await.expect("take");
                assert!(matches!(taken, Take::Consumed(_)));
            })
        })
    });
}

fn bench_decide(c: &mut Criterion) {
    let rt = runtime();
    let yaml = "listen: \"127.0.0.1:1\"\nupstreams: { a: { address: \"127.0.0.1:2\" } }\nsession: { kind: cookie, cookie: sid }\nconfirmation: { algs: [ES256, EdDSA] }\nroutes:\n  - name: r\n    match: { path: \"/{*rest}\" }\n    upstream: a\n    risk: high\n";
    let config = countersign::config::parse(yaml, Path::new("bench.yaml")).expect("bench config");
    let sessions =
        Sessions::new(&config.session, config.confirmation.clock_skew).expect("sessions");
    let store: Arc<dyn ReplayStore> = Arc::new(MemoryStore::new(4_000_000));
    let confirmer = Confirmer::new(
        store,
        sessions,
        config.confirmation.clone(),
        config.session.binding_ttl,
        Arc::new(Metrics::new()),
    );
    let body = [7u8; 32];
    let htu = countersign::htu::normalize(URL).expect("htu");

    let mut group = c.benchmark_group("decide");
    for alg in [ProofAlg::Es256, ProofAlg::EdDsa] {
        let key = DeviceKey::generate(alg).expect("key");
        // One session per key: after the first iteration binds it, every iteration is the
        // steady state of a bound device confirming one more action.
        let credential = format!("{SID}-{}", alg.as_str());
        let mut headers = HeaderMap::new();
        headers.insert(
            "cookie",
            format!("sid={credential}").parse().expect("header value"),
        );
        let session = confirmer.session(&headers, false).expect("session");
        group.bench_function(alg.as_str(), |b| {
            b.iter_batched(
                || {
                    // Not measured: the challenge and the client's signature.
                    let exchange = Exchange {
                        method: "DELETE",
                        overrides: "",
                        target: TARGET,
                        htu: Some(&htu),
                        headers: &headers,
                        body_sha256: &body,
                        client_ip: Some([192, 0, 2, 7].into()),
                    };
                    let nonce = match rt.block_on(confirmer.decide(&session, &exchange)) {
                        Outcome::Challenged(ch) => ch.nonce,
                        other => panic!("expected a challenge, got {other:?}"),
                    };
                    let mut with_proof = headers.clone();
                    let proof = key.proof("DELETE", URL, Some(&nonce), Some(&credential));
                    with_proof.insert("dpop", proof.parse().expect("proof is a header value"));
                    with_proof
                },
                |with_proof| {
                    let exchange = Exchange {
                        method: "DELETE",
                        overrides: "",
                        target: TARGET,
                        htu: Some(&htu),
                        headers: &with_proof,
                        body_sha256: &body,
                        client_ip: Some([192, 0, 2, 7].into()),
                    };
                    let outcome = rt.block_on(confirmer.decide(&session, &exchange));
                    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
                    black_box(outcome)
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! { name = benches; config = config(); targets = bench_nonce, bench_decide }
criterion_main!(benches);
