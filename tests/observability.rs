//! What an SRE watches: exact counters after a scripted sequence, the operations endpoints, the
//! request id threading response, audit and logs, and dashboards and alerts that name only
//! metrics the gateway exports.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use countersign::alg::ProofAlg;
use countersign::tools::device_key::DeviceKey;
use serde_json::{json, Value};
use support::{assert_metric, free_port, send, Gateway, Reply, Upstream};

const SID: &str = "sre-session-4b1d";
const CONFIG: &str = r#"
upstreams: { legacy: { address: "{upstream}" } }
session: { kind: cookie, cookie: sid }
confirmation: { max_body: 1KiB }
routes:
  - name: delete-user
    match: { methods: [DELETE, POST], path: "/api/users/{id}" }
    upstream: legacy
    risk: high
  - name: release-deploy
    match: { methods: [POST], path: "/api/deploys/{id}/release" }
    upstream: legacy
    risk: high
    approval: { approvers: { subjects: [alice] } }
  - name: default
    match: { path: "/{*rest}" }
    upstream: legacy
    risk: low
"#;

struct Script {
    gw: Gateway,
    url: String,
    cookie: String,
}

impl Script {
    async fn delete(&self, headers: &[(&str, &str)]) -> Reply {
        let mut all = vec![("cookie", self.cookie.as_str())];
        all.extend_from_slice(headers);
        send(&self.url, "DELETE", &all, Bytes::new()).await
    }

    async fn nonce(&self) -> String {
        let r = self.delete(&[]).await;
        r.header("dpop-nonce").expect("challenge nonce").to_string()
    }
}

/// passthrough, challenge, accept, and one request of each of several rejection kinds.
async fn scripted() -> (Script, Upstream) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(CONFIG, &upstream).await;
    let s = Script {
        url: format!("{}/api/users/42", gw.base),
        cookie: format!("sid={SID}"),
        gw,
    };
    let laptop = DeviceKey::generate(ProofAlg::Es256).expect("key");
    let phone = DeviceKey::generate(ProofAlg::EdDsa).expect("key");

    assert_eq!(
        send(
            &format!("{}/api/users", s.gw.base),
            "GET",
            &[],
            Bytes::new()
        )
        .await
        .status,
        200
    );
    let nonce = s.nonce().await; // challenged
    let proof = laptop.proof("DELETE", &s.url, Some(&nonce), Some(SID));
    assert_eq!(s.delete(&[("dpop", &proof)]).await.status, 200); // accepted
    assert_eq!(s.delete(&[("dpop", &proof)]).await.status, 401); // replay
    let no_nonce = laptop.proof("DELETE", &s.url, None, Some(SID));
    assert_eq!(s.delete(&[("dpop", &no_nonce)]).await.status, 401); // nonce_missing
    let nonce = s.nonce().await; // challenged
    let other_device = phone.proof("DELETE", &s.url, Some(&nonce), Some(SID));
    assert_eq!(s.delete(&[("dpop", &other_device)]).await.status, 401); // device_mismatch
    let bad_typ = laptop.sign_jws(
        &json!({"typ": "jwt", "alg": "ES256", "jwk": laptop.public_jwk()}),
        &json!({"jti": "j1", "htm": "DELETE", "htu": s.url, "iat": 0, "ath": countersign::session::ath(SID)}),
    );
    assert_eq!(s.delete(&[("dpop", &bad_typ)]).await.status, 401); // bad_typ
    assert_eq!(send(&s.url, "DELETE", &[], Bytes::new()).await.status, 401); // no_session
    let big = Bytes::from(vec![b'x'; 2048]);
    assert_eq!(
        send(&s.url, "POST", &[("cookie", &s.cookie)], big)
            .await
            .status,
        413
    ); // body_too_large
    (s, upstream)
}

fn counters(metrics: &str, family: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_counter_has_its_exact_value_after_a_scripted_sequence() {
    let (s, _upstream) = scripted().await;
    let metrics = s.gw.metrics().await;
    let expect = |lines: &[&str]| lines.iter().map(|l| l.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        counters(&metrics, "countersign_requests_total"),
        expect(&[
            r#"countersign_requests_total{decision="accepted",route="delete-user"} 1"#,
            r#"countersign_requests_total{decision="challenged",route="delete-user"} 2"#,
            r#"countersign_requests_total{decision="passthrough",route="default"} 1"#,
            r#"countersign_requests_total{decision="rejected",route="delete-user"} 6"#,
            r#"countersign_requests_total{decision="accepted",route="release-deploy"} 0"#,
            r#"countersign_requests_total{decision="challenged",route="release-deploy"} 0"#,
            r#"countersign_requests_total{decision="rejected",route="release-deploy"} 0"#,
        ])
    );
    assert_eq!(
        counters(&metrics, "countersign_rejections_total"),
        expect(&[
            r#"countersign_rejections_total{reason="bad_typ",route="delete-user"} 1"#,
            r#"countersign_rejections_total{reason="body_too_large",route="delete-user"} 1"#,
            r#"countersign_rejections_total{reason="device_mismatch",route="delete-user"} 1"#,
            r#"countersign_rejections_total{reason="no_session",route="delete-user"} 1"#,
            r#"countersign_rejections_total{reason="nonce_missing",route="delete-user"} 1"#,
            r#"countersign_rejections_total{reason="replay",route="delete-user"} 1"#,
        ])
    );
    assert_eq!(
        counters(&metrics, "countersign_replays_blocked_total"),
        expect(&[r#"countersign_replays_blocked_total{route="delete-user"} 1"#])
    );
    // Proofs reached verification five times: accepted, replay, nonce_missing, device_mismatch, bad_typ.
    assert_metric(&metrics, "countersign_proof_verify_seconds_count 5");
    assert_metric(&metrics, "countersign_audit_write_failures_total 0");
    for line in [
        r#"countersign_upstream_responses_total{class="2xx",route="default"} 1"#,
        r#"countersign_upstream_responses_total{class="2xx",route="delete-user"} 1"#,
        r#"countersign_upstream_responses_total{class="5xx",route="delete-user"} 0"#,
        r#"countersign_upstream_responses_total{class="error",route="delete-user"} 0"#,
        r#"countersign_config_reloads_total{result="error"} 0"#,
    ] {
        assert_metric(&metrics, line);
    }
    assert!(
        metrics.contains(r#"countersign_upstream_seconds_count{route="delete-user"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"countersign_config_routes{risk="high"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"countersign_build_info{version=""#),
        "{metrics}"
    );
    assert!(
        metrics.contains("process_resident_memory_bytes"),
        "{metrics}"
    );
    assert!(
        !metrics.contains(SID) && !metrics.contains("/api/users/42"),
        "labels stay bounded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_refuses_connections_is_counted_as_error_on_both_paths() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let gw = Gateway::start_at(CONFIG, addr).await;
    let s = Script {
        url: format!("{}/api/users/42", gw.base),
        cookie: format!("sid={SID}"),
        gw,
    };
    let passthrough = send(
        &format!("{}/api/users", s.gw.base),
        "GET",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(passthrough.status, 502);
    let key = DeviceKey::generate(ProofAlg::Es256).expect("key");
    let nonce = s.nonce().await;
    let proof = key.proof("DELETE", &s.url, Some(&nonce), Some(SID));
    let confirmed = s.delete(&[("dpop", &proof)]).await;
    assert_eq!(confirmed.status, 502);
    // The confirmed path counts once it has relayed the answer: wait for it.
    let wanted = r#"countersign_upstream_responses_total{class="error",route="delete-user"} 1"#;
    let mut metrics = s.gw.metrics().await;
    for _ in 0..100 {
        if metrics.lines().any(|l| l == wanted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        metrics = s.gw.metrics().await;
    }
    for line in [
        r#"countersign_upstream_responses_total{class="error",route="default"} 1"#,
        r#"countersign_upstream_responses_total{class="error",route="delete-user"} 1"#,
        r#"countersign_upstream_responses_total{class="5xx",route="default"} 0"#,
        r#"countersign_upstream_responses_total{class="2xx",route="delete-user"} 0"#,
    ] {
        assert_metric(&metrics, line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_answer_on_the_metrics_listener() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(CONFIG, &upstream).await;
    let ops = format!("http://127.0.0.1:{}", gw.metrics_port);
    assert_eq!(
        send(&format!("{ops}/healthz"), "GET", &[], Bytes::new())
            .await
            .status,
        200
    );
    let ready = send(&format!("{ops}/readyz"), "GET", &[], Bytes::new()).await;
    assert_eq!(
        (ready.status, ready.json()["status"].clone()),
        (200, json!("ready"))
    );
    let jwks = send(
        &format!("{ops}/.well-known/countersign/jwks.json"),
        "GET",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(jwks.status, 200);
    let key = &jwks.json()["keys"][0];
    assert_eq!(key["use"], "sig");
    assert!(key.get("d").is_none(), "only the public half is published");
    assert_eq!(
        send(&format!("{ops}/nope"), "GET", &[], Bytes::new())
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_in_the_response_is_the_one_in_the_audit_record() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(CONFIG, &upstream).await;
    // Two challenges, told apart in the audit log by their targets alone.
    let mut ids = Vec::new();
    for target in ["/api/users/7", "/api/users/8"] {
        let r = send(
            &format!("{}{target}", gw.base),
            "DELETE",
            &[("cookie", "sid=x")],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
        let id = r
            .header("countersign-request-id")
            .expect("request id header")
            .to_string();
        ids.push((target, id));
    }
    let audit = gw.audit();
    assert_eq!(audit.len(), 2, "one record per challenge: {audit:?}");
    for (target, id) in &ids {
        let record = audit
            .iter()
            .find(|r| r["target"] == *target)
            .unwrap_or_else(|| panic!("a record of {target}: {audit:?}"));
        assert_eq!(record["event"], "challenged", "{record}");
        assert_eq!(record["request_id"], id.as_str(), "{target}: {record}");
    }
    assert_ne!(ids[0].1, ids[1].1, "each request has its own id");
    let low = send(&format!("{}/api/users", gw.base), "GET", &[], Bytes::new()).await;
    let low_id = low
        .header("countersign-request-id")
        .expect("a passthrough response names its request too");
    assert!(ids.iter().all(|(_, id)| id != low_id));
}

/// Names of the metric families `/metrics` exposes, with the series names histograms add.
fn exported(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let mut parts = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// Every `countersign_*` or `process_*` identifier in a PromQL expression.
fn referenced(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if boundary && (rest.starts_with("countersign_") || rest.starts_with("process_")) {
            let len = rest
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            out.push(rest[..len].to_string());
            i += len;
        } else {
            i += 1;
        }
    }
    out
}

fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string("deploy/grafana/countersign.json").expect("dashboard file");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(q) = var["query"].as_str() {
            exprs.push(q.to_string());
        }
    }
    exprs
}

fn alert_exprs() -> Vec<String> {
    let text = std::fs::read_to_string("deploy/prometheus/alerts.yml").expect("alerts file");
    let rules: Value = serde_yaml_ng::from_str(&text).expect("the alert rules are YAML");
    let mut exprs = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            exprs.push(rule["expr"].as_str().expect("expr").to_string());
            assert!(
                rule["annotations"]["runbook"]
                    .as_str()
                    .is_some_and(|r| r.len() > 40),
                "{rule}"
            );
        }
    }
    exprs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_name_only_exported_metrics() {
    let (s, _upstream) = scripted().await;
    let names = exported(&s.gw.metrics().await);
    let dashboard = dashboard_exprs();
    let alerts = alert_exprs();
    assert!(dashboard.len() >= 10 && alerts.len() >= 5);
    let mut used = BTreeSet::new();
    for expr in dashboard.iter().chain(&alerts) {
        for name in referenced(expr) {
            assert!(
                names.contains(&name),
                "{name} (in `{expr}`) is not exported; exported: {names:?}"
            );
            used.insert(name);
        }
    }
    for needed in [
        "countersign_requests_total",
        "countersign_rejections_total",
        "countersign_replays_blocked_total",
        "countersign_proof_verify_seconds_bucket",
        "countersign_upstream_seconds_bucket",
        "countersign_nonces_outstanding",
        "countersign_store_errors_total",
        "countersign_audit_write_failures_total",
        "countersign_approvals_total",
        "countersign_approvals_pending",
        "countersign_approval_wait_seconds_bucket",
        "countersign_approval_webhook_failures_total",
    ] {
        assert!(
            used.contains(needed),
            "{needed} is on no dashboard panel or alert"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_never_carry_credentials_or_proofs() {
    let upstream = Upstream::start().await;
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("c.yaml");
    let log = dir.path().join("stderr.log");
    let yaml = CONFIG.replace("{upstream}", &upstream.addr.to_string());
    std::fs::write(
        &config,
        format!("listen: \"127.0.0.1:{port}\"\naudit: {{ path: \"{}\" }}\nlog: {{ format: json }}\nserver: {{ grace_period: 0s }}\n{yaml}", dir.path().join("a.jsonl").display()),
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_countersign"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start");
    let url = format!("http://127.0.0.1:{port}/api/users/42");
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cookie = format!("sid={SID}");
    let r = send(&url, "DELETE", &[("cookie", &cookie)], Bytes::new()).await;
    let nonce = r.header("dpop-nonce").expect("nonce").to_string();
    let key = DeviceKey::generate(ProofAlg::Es256).expect("key");
    let proof = key.proof("DELETE", &url, Some(&nonce), Some(SID));
    let r = send(
        &url,
        "DELETE",
        &[("cookie", &cookie), ("dpop", &proof)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).expect("read log");
    assert!(text.lines().count() > 3, "the gateway logged: {text}");
    for line in text.lines() {
        let _: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    assert!(text.contains("accepted"), "decisions are logged: {text}");
    for secret in [SID, proof.as_str(), &proof[..40]] {
        let hit = text.lines().find(|l| l.contains(secret));
        assert!(
            hit.is_none(),
            "a credential or proof reached the logs: {hit:?}"
        );
    }
}
