//! Cost of the policy decision after a confirmation (step-up, network change and the sample Cedar
//! policies of `config/`) next to the ES256 proof verification every confirmation already pays.
//! Besides criterion's estimates it prints p50/p99 per sample request, timed one call at a time.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use countersign::alg::ProofAlg;
use countersign::policy::{Engine, Facts, Guard, Origin, RiskConfig};
use countersign::proof::{self, ProofCheck};
use countersign::routes::{PathTemplate, Risk, Route};
use countersign::session::Session;
use countersign::tools::device_key::DeviceKey;
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

// The gateway binary's allocator (src/main.rs), so the allocation-heavy Cedar evaluation is
// measured as it runs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const URL: &str = "https://admin.example.com/api/users/7";

struct Sample {
    name: &'static str,
    route: Route,
    target: &'static str,
    body: &'static str,
}

fn samples() -> Vec<Sample> {
    let route = |name: &str, template: &str| {
        Route::new(
            name,
            None,
            PathTemplate::parse(template).expect("bench template"),
            "legacy",
            Risk::High,
        )
    };
    vec![
        Sample {
            name: "release-deploy",
            route: route("release-deploy", "/api/deploys/{id}/release"),
            target: "/api/deploys/7/release",
            body: "",
        },
        Sample {
            name: "rotate-secret",
            route: route("rotate-secret", "/api/secrets/{name}/rotate"),
            target: "/api/secrets/db/rotate?reason=scheduled",
            body: "",
        },
        Sample {
            name: "delete-account",
            route: route("delete-account", "/api/accounts/{id}"),
            target: "/api/accounts/42",
            body: "",
        },
        Sample {
            name: "refund",
            route: route("refund", "/api/refunds"),
            target: "/api/refunds",
            body: r#"{"amount": 2500, "order": "A-17", "note": "customer request"}"#,
        },
    ]
}

fn bench_policy(c: &mut Criterion) {
    let engine = Engine::load(
        Path::new("config/policies.cedar"),
        Some(Path::new("config/policies.cedarschema")),
        &[
            "delete-account",
            "rotate-secret",
            "release-deploy",
            "refund",
        ],
    )
    .expect("the sample policies load");
    let guard = Guard::new(Some(Arc::new(engine)), RiskConfig::default(), "groups");
    let now = SystemTime::now();
    let unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let serde_json::Value::Object(claims) = json!({
        "sub": "sam", "sid": "s-1", "iat": unix, "exp": unix + 600, "groups": ["sre", "dba"],
        "acr": "phr", "amr": ["hwk", "pin"], "auth_time": unix,
    }) else {
        unreachable!("a JSON object literal")
    };
    let session = Session {
        id: "s-1".to_string(),
        subject: Some("sam".to_string()),
        ath: String::new(),
        cnf_jkt: None,
        bearer_scheme: false,
        claims: Some(Arc::new(claims)),
    };
    let origin = Origin {
        network: "192.0.2.0/24".to_string(),
        since: unix,
    };
    let samples: &'static [Sample] = Vec::leak(samples());
    let facts = |s: &'static Sample| Facts {
        route: &s.route,
        method: "POST",
        target: s.target,
        content_type: Some("application/json"),
        body: s.body.as_bytes(),
        client_ip: Some([192, 0, 2, 10].into()),
        session: &session,
        device: "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
        origin: Some(&origin),
        now,
        approval: None,
    };

    // p50 / p99 of single calls (criterion reports means of batches).
    for s in samples {
        let f = facts(s);
        let mut times: Vec<Duration> = (0..20_000)
            .map(|_| {
                let started = Instant::now();
                black_box(guard.decide(black_box(&f))).ok();
                started.elapsed()
            })
            .collect();
        times.sort();
        eprintln!(
            "policy/{:<15} p50 {:>6.2} µs  p99 {:>6.2} µs",
            s.name,
            times[times.len() / 2].as_secs_f64() * 1e6,
            times[times.len() * 99 / 100].as_secs_f64() * 1e6
        );
    }

    let mut group = c.benchmark_group("policy");
    for s in samples {
        let f = facts(s);
        group.bench_function(s.name, |b| b.iter(|| guard.decide(black_box(&f))));
    }
    let key = DeviceKey::generate(ProofAlg::Es256).expect("ES256 key");
    let proof_text = key.proof("DELETE", URL, Some("nonce-1"), Some("credential"));
    let check = ProofCheck {
        algs: &ProofAlg::ALL,
        method: "DELETE",
        htu: URL,
        now: unix as i64,
        max_age: Duration::from_secs(3600),
        clock_skew: Duration::from_secs(5),
    };
    group.bench_function("es256_proof_verify", |b| {
        b.iter(|| proof::verify(black_box(&[proof_text.as_bytes()]), black_box(&check)))
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_policy
}
criterion_main!(benches);
