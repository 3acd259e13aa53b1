//! Policy and live risk at the time of use: the sample Cedar policies in `config/` (loaded,
//! validated against their schema, and their decisions checked against a table of expectations
//! written from the policies' English descriptions, not from the implementation), Cedar errors at
//! load with file and line, and end to end: `policy_denied`, `policy_error`, RFC 9470 step-up
//! (`step_up_required`), a network change (`risk.on_ip_change`) and revocation (`session_revoked`).
//!
//! Every refusal asserts the status, the error, the reason, the audit record and that the upstream
//! saw nothing.

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::path::Path;
use std::sync::{Arc, Once};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use countersign::alg::ProofAlg;
use countersign::policy::{Engine, Facts, Guard, Origin, RiskConfig};
use countersign::routes::{PathTemplate, Risk, Route};
use countersign::session::Session;
use countersign::tools::device_key::DeviceKey;
use redis_support::RedisServer;
use serde_json::{json, Value};
use support::world::{assert_refused, Refused};
use support::{send, Gateway, Reply, Upstream};

const POLICIES: &str = "config/policies.cedar";
const SCHEMA: &str = "config/policies.cedarschema";
const SAMPLE_ACTIONS: [&str; 4] = [
    "delete-account",
    "rotate-secret",
    "release-deploy",
    "refund",
];

const HS256_ENV: &str = "CS_POLICY_TEST_HS256";
const HS256_SECRET: &str = "countersign-policy-test-hs256-secret-0123456789";

fn engine() -> Arc<Engine> {
    Arc::new(
        Engine::load(
            Path::new(POLICIES),
            Some(Path::new(SCHEMA)),
            &SAMPLE_ACTIONS,
        )
        .expect("the sample policies load and validate against their schema"),
    )
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn route(name: &str, template: &str) -> Route {
    Route::new(
        name,
        None,
        PathTemplate::parse(template).expect("test template"),
        "legacy",
        Risk::High,
    )
}

fn session(subject: Option<&str>, claims: Value) -> Session {
    let Value::Object(claims) = claims else {
        panic!("claims are an object")
    };
    Session {
        id: "sid-1".to_string(),
        subject: subject.map(str::to_owned),
        ath: String::new(),
        cnf_jkt: None,
        bearer_scheme: false,
        claims: Some(Arc::new(claims)),
    }
}

/// A UTC instant: 2026-11-30 is a Monday, so `day` 0..=6 is Monday..Sunday.
fn at(day: u64, hour: u64, minute: u64) -> SystemTime {
    const MONDAY_2026_11_30: u64 = 1_795_996_800;
    UNIX_EPOCH + Duration::from_secs(MONDAY_2026_11_30 + day * 86_400 + hour * 3600 + minute * 60)
}

/// One row: what an SRE reading the policy file expects for a request.
struct Case {
    what: &'static str,
    route: (&'static str, &'static str),
    path: &'static str,
    subject: Option<&'static str>,
    groups: &'static [&'static str],
    content_type: Option<&'static str>,
    body: &'static str,
    when: SystemTime,
    /// `Ok(())` allowed, `Err(policy id)` denied by that policy.
    expect: Result<(), &'static str>,
}

const RELEASE: (&str, &str) = ("release-deploy", "/api/deploys/{id}/release");
const ROTATE: (&str, &str) = ("rotate-secret", "/api/secrets/{name}/rotate");
const DELETE: (&str, &str) = ("delete-account", "/api/accounts/{id}");
const REFUND: (&str, &str) = ("refund", "/api/refunds");
const JSON: Option<&str> = Some("application/json");

fn cases() -> Vec<Case> {
    let tuesday_noon = at(1, 12, 0);
    let base = |what, route, path| Case {
        what,
        route,
        path,
        subject: Some("alice"),
        groups: &[],
        content_type: None,
        body: "",
        when: tuesday_noon,
        expect: Ok(()),
    };
    vec![
        // Only group sre releases a deploy.
        Case {
            groups: &["sre"],
            ..base("sre member releases", RELEASE, "/api/deploys/7/release")
        },
        Case {
            groups: &["sre", "dba"],
            ..base("sre among other groups", RELEASE, "/api/deploys/7/release")
        },
        Case {
            groups: &["dev"],
            expect: Err("release-needs-sre"),
            ..base(
                "developer cannot release",
                RELEASE,
                "/api/deploys/7/release",
            )
        },
        Case {
            groups: &[],
            expect: Err("release-needs-sre"),
            ..base(
                "no groups cannot release",
                RELEASE,
                "/api/deploys/7/release",
            )
        },
        Case {
            groups: &["SRE"],
            expect: Err("release-needs-sre"),
            ..base("group names are exact", RELEASE, "/api/deploys/7/release")
        },
        Case {
            subject: None,
            expect: Err("release-needs-sre"),
            ..base(
                "a session without subject cannot release",
                RELEASE,
                "/api/deploys/7/release",
            )
        },
        // Secret rotation only Monday–Friday 08:00–18:00 UTC.
        Case {
            when: at(0, 8, 0),
            ..base("Monday 08:00 rotates", ROTATE, "/api/secrets/db/rotate")
        },
        Case {
            when: at(4, 17, 59),
            ..base("Friday 17:59 rotates", ROTATE, "/api/secrets/db/rotate")
        },
        Case {
            when: at(4, 18, 0),
            expect: Err("rotate-in-working-hours"),
            ..base(
                "Friday 18:00 is after hours",
                ROTATE,
                "/api/secrets/db/rotate",
            )
        },
        Case {
            when: at(2, 7, 59),
            expect: Err("rotate-in-working-hours"),
            ..base(
                "Wednesday 07:59 is before hours",
                ROTATE,
                "/api/secrets/db/rotate",
            )
        },
        Case {
            when: at(5, 12, 0),
            expect: Err("rotate-in-working-hours"),
            ..base(
                "Saturday noon is the weekend",
                ROTATE,
                "/api/secrets/db/rotate",
            )
        },
        Case {
            when: at(6, 10, 0),
            expect: Err("rotate-in-working-hours"),
            ..base(
                "Sunday morning is the weekend",
                ROTATE,
                "/api/secrets/db/rotate",
            )
        },
        // Protected accounts are never deleted.
        Case {
            ..base("an ordinary account is deleted", DELETE, "/api/accounts/42")
        },
        Case {
            expect: Err("protected-accounts"),
            ..base("account 1 is protected", DELETE, "/api/accounts/1")
        },
        Case {
            expect: Err("protected-accounts"),
            ..base("root is protected", DELETE, "/api/accounts/root")
        },
        Case {
            expect: Err("protected-accounts"),
            ..base(
                "svc-backup is protected",
                DELETE,
                "/api/accounts/svc-backup",
            )
        },
        Case {
            expect: Err("protected-accounts"),
            ..base(
                "an encoded id is read as the upstream reads it",
                DELETE,
                "/api/accounts/%31",
            )
        },
        Case {
            ..base("account 10 is not account 1", DELETE, "/api/accounts/10")
        },
        // Refunds up to 10000.
        Case {
            content_type: JSON,
            body: r#"{"amount": 10000, "order": "A-17"}"#,
            ..base("10000 is within the limit", REFUND, "/api/refunds")
        },
        Case {
            content_type: JSON,
            body: r#"{"amount": 500}"#,
            ..base("500 is within the limit", REFUND, "/api/refunds")
        },
        Case {
            content_type: JSON,
            body: r#"{"amount": 10001}"#,
            expect: Err("refund-limit"),
            ..base("10001 is over", REFUND, "/api/refunds")
        },
        Case {
            content_type: JSON,
            body: r#"{"amount": 25000.5}"#,
            expect: Err("refund-limit"),
            ..base("a fractional amount is refused", REFUND, "/api/refunds")
        },
        Case {
            content_type: JSON,
            body: r#"{"order": "A-17"}"#,
            expect: Err("refund-limit"),
            ..base("no amount is refused", REFUND, "/api/refunds")
        },
        Case {
            content_type: JSON,
            body: r#"{"amount": 99999999999999999999}"#,
            expect: Err("refund-limit"),
            ..base(
                "an amount beyond 64 bits is refused",
                REFUND,
                "/api/refunds",
            )
        },
        Case {
            content_type: None,
            body: r#"{"amount": 5}"#,
            expect: Err("refund-limit"),
            ..base(
                "a body that is not declared JSON has no amount",
                REFUND,
                "/api/refunds",
            )
        },
    ]
}

fn facts_for<'a>(case: &'a Case, route: &'a Route, session: &'a Session) -> Facts<'a> {
    Facts {
        route,
        method: "POST",
        target: case.path,
        content_type: case.content_type,
        body: case.body.as_bytes(),
        client_ip: Some([192, 0, 2, 10].into()),
        session,
        device: "device-jkt",
        origin: None,
        now: case.when,
        approval: None,
    }
}

#[test]
fn sample_policies_decide_as_their_descriptions_say() {
    let guard = Guard::new(Some(engine()), RiskConfig::default(), "groups");
    for case in cases() {
        let route = route(case.route.0, case.route.1);
        let user = session(
            case.subject,
            json!({"sub": case.subject, "groups": case.groups, "iat": now()}),
        );
        let decided = guard.decide(&facts_for(&case, &route, &user));
        match (case.expect, decided) {
            (Ok(()), Ok(policies)) => assert_eq!(
                policies,
                vec!["confirmed-actions".to_string()],
                "{}: allowed by the baseline",
                case.what
            ),
            (Err(id), Err(denial)) => {
                assert_eq!(denial.reason.as_str(), "policy_denied", "{}", case.what);
                assert_eq!(denial.policies, vec![id.to_string()], "{}", case.what);
            }
            (expected, got) => panic!("{}: expected {expected:?}, got {got:?}", case.what),
        }
    }
}

#[test]
fn groups_come_from_the_configured_claim() {
    let guard = Guard::new(Some(engine()), RiskConfig::default(), "roles");
    let route = route(RELEASE.0, RELEASE.1);
    let user = session(Some("alice"), json!({"groups": ["dev"], "roles": ["sre"]}));
    let case = Case {
        what: "roles claim",
        route: RELEASE,
        path: "/api/deploys/7/release",
        subject: Some("alice"),
        groups: &[],
        content_type: None,
        body: "",
        when: at(1, 12, 0),
        expect: Ok(()),
    };
    assert!(guard.decide(&facts_for(&case, &route, &user)).is_ok());
}

#[test]
fn a_network_change_is_a_fact_for_the_policy_and_a_risk_decision() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("p.cedar");
    std::fs::write(
        &file,
        "@id(\"all\") permit(principal, action, resource);\n\
         @id(\"same-network\") forbid(principal, action, resource) when { context.risk.ip_changed };\n\
         @id(\"office\") forbid(principal, action, resource) unless { context.client_ip.isInRange(ip(\"192.0.2.0/24\")) };",
    )
    .expect("write policy");
    let engine = Arc::new(Engine::load(&file, None, &[]).expect("policy loads"));
    let guard = Guard::new(Some(engine), RiskConfig::default(), "groups");
    let route = route(DELETE.0, DELETE.1);
    let user = session(Some("alice"), json!({}));
    let case = &cases()[12];
    let origin = Origin {
        network: "192.0.2.0/24".to_string(),
        since: now() as u64,
    };
    let mut facts = facts_for(case, &route, &user);
    facts.origin = Some(&origin);
    assert!(guard.decide(&facts).is_ok(), "same /24");
    facts.client_ip = Some([192, 0, 2, 200].into());
    assert!(
        guard.decide(&facts).is_ok(),
        "another address of the same /24"
    );
    facts.client_ip = Some([198, 51, 100, 1].into());
    let denial = guard.decide(&facts).expect_err("another network");
    assert_eq!(denial.policies, vec!["office", "same-network"]);
}

#[test]
fn a_field_repeated_with_different_values_is_refused() {
    let guard = Guard::new(Some(engine()), RiskConfig::default(), "groups");
    let route = route(ROTATE.0, ROTATE.1);
    let user = session(Some("alice"), json!({}));
    let mut case = cases().remove(6);
    for (target, allowed) in [
        ("/api/secrets/db/rotate?force=yes&force=yes", true),
        ("/api/secrets/db/rotate?force=no&force=yes", false),
    ] {
        case.path = target;
        let decided = guard.decide(&facts_for(&case, &route, &user));
        assert_eq!(decided.is_ok(), allowed, "{target}: {decided:?}");
        if let Err(denial) = decided {
            assert_eq!(denial.reason.as_str(), "policy_denied");
            assert!(denial.policies.is_empty());
        }
    }
    let mut form = cases().remove(6);
    form.content_type = Some("application/x-www-form-urlencoded");
    form.body = "reason=a&reason=b";
    assert!(guard.decide(&facts_for(&form, &route, &user)).is_err());
}

/// A request carries only the facts some policy reads; whichever way a policy reads one (`.`,
/// `[".."]`, `has`, through an entity literal, or the whole context record) it is there.
#[test]
fn a_fact_is_there_however_a_policy_reads_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let user = session(
        Some("alice"),
        json!({"sub": "alice", "dept": "ops", "acr": "phr", "groups": ["sre"]}),
    );
    let route = route(ROTATE.0, ROTATE.1);
    let case = cases().remove(6);
    let decide = |rule: &str| {
        let file = write(
            dir.path(),
            "p.cedar",
            &format!("permit(principal, action, resource);\n@id(\"rule\")\nforbid(principal, action, resource) when {{ {rule} }};\n"),
        );
        let engine = Arc::new(Engine::load(Path::new(&file), None, &[]).expect("policy loads"));
        let guard = Guard::new(Some(engine), RiskConfig::default(), "groups");
        guard
            .decide(&facts_for(&case, &route, &user))
            .map_err(|d| d.policies)
    };
    let forbidden = Err(vec!["rule".to_string()]);
    for rule in [
        r#"context["client_ip"].isInRange(ip("192.0.2.0/24"))"#,
        r#"context has session.acr && context.session.acr == "phr""#,
        r#"principal.claims.dept == "ops""#,
        r#"User::"alice".claims has dept"#,
        r#"context.device == "device-jkt" && context.method == "POST""#,
        r#"resource.path like "/api/secrets/*""#,
        r#"principal in Group::"sre""#,
        // The whole record: a context missing any fact would equal this one.
        r#"context != {"time": context.time}"#,
    ] {
        assert_eq!(decide(rule), forbidden, "{rule}");
    }
    // The same facts, absent or different, forbid nothing.
    assert!(decide(r#"principal.claims.dept == "hr""#).is_ok());
    assert!(decide(r#"principal in Group::"dba""#).is_ok());
    assert!(decide(r#"Group::"sre" has name"#).is_ok());
    assert!(
        decide(r#"context == {}"#).is_ok(),
        "the context is never empty"
    );
}

#[test]
fn a_template_with_slots_is_refused_at_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write(
        dir.path(),
        "t.cedar",
        "permit(principal, action, resource);\npermit(principal == ?principal, action, resource);\n",
    );
    let e = Engine::load(Path::new(&file), None, &[]).expect_err("template refused");
    assert!(e.to_string().contains("slots"), "{e}");
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path.display().to_string()
}

fn config_with(policy: &str) -> String {
    format!(
        "listen: \"127.0.0.1:8080\"\nupstreams: {{ legacy: {{ address: \"127.0.0.1:9000\" }} }}\n\
         session: {{ kind: header, header: x-session }}\npolicy: {policy}\nroutes:\n\
         \x20 - {{ name: delete-account, match: {{ path: \"/api/accounts/{{id}}\" }}, upstream: legacy, risk: high }}\n\
         \x20 - {{ name: default, match: {{ path: \"/{{*rest}}\" }}, upstream: legacy, risk: low }}\n"
    )
}

fn config_error(policy: &str) -> String {
    countersign::config::parse(&config_with(policy), Path::new("gw.yaml"))
        .expect_err("the config must be refused")
        .to_string()
}

#[test]
fn a_broken_policy_stops_the_start_with_cedars_error_and_its_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write(
        dir.path(),
        "broken.cedar",
        "permit(principal, action, resource);\n\nforbid(principal, action resource);\n",
    );
    let e = config_error(&format!("{{ cedar: \"{file}\" }}"));
    assert!(e.starts_with("gw.yaml: policy: "), "{e}");
    assert!(
        e.contains(&format!("{file}:3:")),
        "names the file and line 3: {e}"
    );
    assert!(e.contains("unexpected token"), "Cedar's own message: {e}");

    let e = config_error(&format!(
        "{{ cedar: \"{}/missing.cedar\" }}",
        dir.path().display()
    ));
    assert!(
        e.contains("cannot read") && e.contains("missing.cedar"),
        "{e}"
    );
}

#[test]
fn a_policy_that_does_not_match_its_schema_stops_the_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let schema = write(
        dir.path(),
        "s.cedarschema",
        "entity User; entity Session; entity Target { path: String };\n\
         action \"delete-account\" appliesTo { principal: [User, Session], resource: Target, context: {} };\n",
    );
    let policy = write(
        dir.path(),
        "p.cedar",
        "permit(principal, action, resource);\nforbid(principal, action, resource)\n  when { resource.owner == \"x\" };\n",
    );
    let e = config_error(&format!("{{ cedar: \"{policy}\", schema: \"{schema}\" }}"));
    assert!(
        e.contains(&format!("{policy}:3:")),
        "names the policy file and line: {e}"
    );
    assert!(e.contains("owner"), "Cedar's validation message: {e}");

    let bad_schema = write(
        dir.path(),
        "bad.cedarschema",
        "entity User {\n  name: Strin,\n};\n",
    );
    let e = config_error(&format!(
        "{{ cedar: \"{policy}\", schema: \"{bad_schema}\" }}"
    ));
    assert!(
        e.contains(&format!("{bad_schema}:")),
        "names the schema file: {e}"
    );

    let other = write(
        dir.path(),
        "o.cedarschema",
        "entity User; entity Session; entity Target;\n\
         action \"rotate-secret\" appliesTo { principal: [User, Session], resource: Target };\n",
    );
    let allow = write(
        dir.path(),
        "a.cedar",
        "permit(principal, action, resource);\n",
    );
    let e = config_error(&format!("{{ cedar: \"{allow}\", schema: \"{other}\" }}"));
    assert!(
        e.contains("\"delete-account\"") && e.contains("declares no action"),
        "{e}"
    );
}

#[test]
fn step_up_needs_a_bearer_jwt_session_and_asks_for_something() {
    let base = |session: &str, require: &str| {
        format!(
            "listen: \"127.0.0.1:8080\"\nupstreams: {{ legacy: {{ address: \"127.0.0.1:9000\" }} }}\n\
             session: {session}\nroutes:\n\
             \x20 - {{ name: rotate-secret, match: {{ path: \"/s\" }}, upstream: legacy, risk: high, require: {require} }}\n"
        )
    };
    let parse = |text: String| countersign::config::parse(&text, Path::new("gw.yaml"));
    let e = parse(base(
        "{ kind: header, header: x-session }",
        "{ acr: [phr] }",
    ))
    .expect_err("require needs bearer_jwt")
    .to_string();
    assert!(
        e.contains("routes[0].require") && e.contains("bearer_jwt"),
        "{e}"
    );
    let jwt = "{ kind: bearer_jwt, hs256_secret_env: X }";
    let e = parse(base(jwt, "{}"))
        .expect_err("empty require")
        .to_string();
    assert!(
        e.contains("routes[0].require") && e.contains("requires nothing"),
        "{e}"
    );
    let e = parse(base(jwt, "{ acr: [\"a b\"] }"))
        .expect_err("bad acr")
        .to_string();
    assert!(e.contains("routes[0].require.acr[0]"), "{e}");
    let ok = parse(base(jwt, "{ acr: [phr, phrh], max_age: 5m }")).expect("valid require");
    let require = ok.routes.routes()[0].require.clone().expect("require kept");
    assert_eq!(require.acr, vec!["phr", "phrh"]);
    assert_eq!(require.max_age, Some(Duration::from_secs(300)));
    let e = parse(base(jwt, "{ acr: [phr] }").replace("risk: high", "risk: low"))
        .expect_err("low route")
        .to_string();
    assert!(e.contains("risk: high"), "{e}");
}

// ───────────────────────────── end to end ─────────────────────────────

fn hs256_secret() -> &'static str {
    static SET: Once = Once::new();
    SET.call_once(|| {
        #[allow(unused_unsafe)]
        unsafe {
            std::env::set_var(HS256_ENV, HS256_SECRET);
        }
    });
    HS256_SECRET
}

fn token(claims: Value) -> String {
    hs256_secret();
    let mut claims = claims;
    claims["exp"] = json!(now() + 600);
    claims
        .as_object_mut()
        .map(|c| c.entry("iat").or_insert(json!(now())));
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(HS256_SECRET.as_bytes()).expect("HMAC key"),
    )
    .expect("token encodes")
}

const WORLD_ROUTES: &str = r#"
upstreams: { legacy: { address: "{upstream}" } }
routes:
  - name: release-deploy
    match: { methods: [POST], path: "/api/deploys/{id}/release" }
    upstream: legacy
    risk: high
  - name: delete-account
    match: { methods: [DELETE], path: "/api/accounts/{id}" }
    upstream: legacy
    risk: high
  - name: refund
    match: { methods: [POST], path: "/api/refunds" }
    upstream: legacy
    risk: high
  - name: rotate-secret
    match: { methods: [POST], path: "/api/secrets/{name}/rotate" }
    upstream: legacy
    risk: high
    require: { acr: [phr], max_age: 5m }
  - name: default
    match: { path: "/{*rest}" }
    upstream: legacy
    risk: low
"#;

struct World {
    gw: Gateway,
    upstream: Upstream,
    key: DeviceKey,
}

impl World {
    async fn start(extra: &str) -> World {
        hs256_secret();
        let upstream = Upstream::start().await;
        let config = format!(
            "session: {{ kind: bearer_jwt, hs256_secret_env: {HS256_ENV} }}\n{extra}\n{WORLD_ROUTES}"
        );
        let gw = Gateway::start(&config, &upstream).await;
        World {
            gw,
            upstream,
            key: DeviceKey::generate(ProofAlg::Es256).expect("device key"),
        }
    }

    /// Challenge, sign and send `method path` with `token`, a body and extra headers.
    async fn confirm(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: &str,
        extra: &[(&str, &str)],
    ) -> Reply {
        let url = format!("{}{path}", self.gw.base);
        let auth = format!("DPoP {token}");
        let mut headers = vec![
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        headers.extend_from_slice(extra);
        let first = send(&url, method, &headers, Bytes::from(body.to_string())).await;
        assert_eq!(
            first.status,
            401,
            "challenge: {}",
            String::from_utf8_lossy(&first.body)
        );
        let nonce = first
            .header("dpop-nonce")
            .expect("challenge nonce")
            .to_string();
        let proof = self.key.proof(method, &url, Some(&nonce), Some(token));
        headers.push(("dpop", &proof));
        send(&url, method, &headers, Bytes::from(body.to_string())).await
    }

    /// Asserts a refusal after the confirmation (the shared check); returns its audit record.
    async fn assert_refused(
        &self,
        r: &Reply,
        seen_before: usize,
        status: u16,
        error: &str,
        reason: &str,
    ) -> Value {
        let refused = Refused {
            status,
            error,
            reason,
            case: "",
        };
        assert_refused(&self.gw, || self.upstream.count(), seen_before, r, refused).await
    }
}

fn sample_policy() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    format!("policy: {{ cedar: \"{root}/{POLICIES}\", schema: \"{root}/{SCHEMA}\" }}")
}

#[tokio::test]
async fn the_policy_refuses_with_policy_denied_and_names_the_policy() {
    let w = World::start(&sample_policy()).await;
    let dev = token(json!({"sub": "dave", "sid": "s-dave", "groups": ["dev"]}));
    let before = w.upstream.seen().len();
    let r = w
        .confirm("POST", "/api/deploys/7/release", &dev, "", &[])
        .await;
    let audit = w
        .assert_refused(&r, before, 403, "forbidden", "policy_denied")
        .await;
    assert_eq!(audit["policies"], json!(["release-needs-sre"]));
    assert_eq!(audit["subject"], "dave");

    let sre = token(json!({"sub": "sam", "sid": "s-sam", "groups": ["sre"]}));
    let r = w
        .confirm("POST", "/api/deploys/7/release", &sre, "", &[])
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(w.upstream.seen().len(), before + 1);
    let accepted =
        w.gw.audit()
            .into_iter()
            .find(|a| a["event"] == "accepted")
            .expect("accepted record");
    assert_eq!(accepted["policies"], json!(["confirmed-actions"]));

    let before = w.upstream.seen().len();
    let r = w
        .confirm("DELETE", "/api/accounts/%31", &sre, "", &[])
        .await;
    let audit = w
        .assert_refused(&r, before, 403, "forbidden", "policy_denied")
        .await;
    assert_eq!(audit["policies"], json!(["protected-accounts"]));

    let r = w
        .confirm("POST", "/api/refunds", &sre, r#"{"amount": 20000}"#, &[])
        .await;
    let audit = w
        .assert_refused(&r, before, 403, "forbidden", "policy_denied")
        .await;
    assert_eq!(audit["policies"], json!(["refund-limit"]));
    let r = w
        .confirm("POST", "/api/refunds", &sre, r#"{"amount": 200}"#, &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(w.upstream.seen().len(), before + 1);
}

#[tokio::test]
async fn a_policy_that_cannot_be_evaluated_fails_closed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write(
        dir.path(),
        "p.cedar",
        "permit(principal, action, resource);\n\
         @id(\"needs-ticket\") forbid(principal, action, resource) unless { context.body.ticket != \"\" };\n",
    );
    let w = World::start(&format!("policy: {{ cedar: \"{file}\" }}")).await;
    let t = token(json!({"sub": "sam", "sid": "s-1"}));
    let before = w.upstream.seen().len();
    let r = w
        .confirm("POST", "/api/refunds", &t, r#"{"amount": 1}"#, &[])
        .await;
    w.assert_refused(&r, before, 503, "temporarily_unavailable", "policy_error")
        .await;
    let r = w
        .confirm("POST", "/api/refunds", &t, r#"{"ticket": "OPS-1"}"#, &[])
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn step_up_asks_for_the_listed_acr_and_a_recent_authentication() {
    let w = World::start("").await;
    let path = "/api/secrets/db/rotate";
    let cases = [
        ("no acr, no auth_time", json!({"sub": "sam", "sid": "a"})),
        (
            "acr not listed",
            json!({"sub": "sam", "sid": "b", "acr": "pwd", "auth_time": now()}),
        ),
        (
            "acr without auth_time",
            json!({"sub": "sam", "sid": "c", "acr": "phr"}),
        ),
        (
            "authentication too old",
            json!({"sub": "sam", "sid": "d", "acr": "phr", "auth_time": now() - 600}),
        ),
    ];
    for (what, claims) in cases {
        let before = w.upstream.seen().len();
        let r = w.confirm("POST", path, &token(claims), "", &[]).await;
        w.assert_refused(
            &r,
            before,
            401,
            "insufficient_user_authentication",
            "step_up_required",
        )
        .await;
        let challenge = r.header("www-authenticate").expect("WWW-Authenticate");
        assert!(
            challenge.starts_with("DPoP error=\"insufficient_user_authentication\"")
                && challenge.contains("acr_values=\"phr\"")
                && challenge.contains("max_age=300"),
            "{what}: {challenge}"
        );
    }
    let before = w.upstream.seen().len();
    let fresh = token(json!({"sub": "sam", "sid": "e", "acr": "phr", "auth_time": now() - 30}));
    let r = w.confirm("POST", path, &fresh, "", &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(w.upstream.seen().len(), before + 1);
}

async fn network_change(on_ip_change: &str) -> (World, String, usize, Reply) {
    let w = World::start(&format!(
        "trusted_proxies: [\"127.0.0.1\"]\nrisk: {{ on_ip_change: {on_ip_change} }}"
    ))
    .await;
    let t = token(
        json!({"sub": "sam", "sid": format!("net-{on_ip_change}"), "auth_time": now() - 3600}),
    );
    let home = [("x-forwarded-for", "198.51.100.7")];
    let r = w.confirm("DELETE", "/api/accounts/42", &t, "", &home).await;
    assert_eq!(r.status, 200, "first confirmation records the network");
    let same = [("x-forwarded-for", "198.51.100.200")];
    let r = w.confirm("DELETE", "/api/accounts/43", &t, "", &same).await;
    assert_eq!(
        r.status, 200,
        "another address in the same /24 is the same network"
    );
    let before = w.upstream.seen().len();
    let away = [("x-forwarded-for", "203.0.113.9")];
    let r = w.confirm("DELETE", "/api/accounts/44", &t, "", &away).await;
    (w, t, before, r)
}

#[tokio::test]
async fn a_network_change_is_allowed_by_default() {
    let (w, _, before, r) = network_change("allow").await;
    assert_eq!(r.status, 200);
    assert_eq!(w.upstream.seen().len(), before + 1);
}

#[tokio::test]
async fn a_network_change_is_denied_with_risk_denied() {
    let (w, _, before, r) = network_change("deny").await;
    let audit = w
        .assert_refused(&r, before, 403, "forbidden", "risk_denied")
        .await;
    assert_eq!(audit["client_ip"], "127.0.0.1");
}

#[tokio::test]
async fn a_network_change_asks_for_a_fresh_authentication() {
    let (w, _, before, r) = network_change("step_up").await;
    w.assert_refused(
        &r,
        before,
        401,
        "insufficient_user_authentication",
        "step_up_required",
    )
    .await;
    assert!(r
        .header("www-authenticate")
        .is_some_and(|h| h.contains("max_age=300")));
    // The same session, re-authenticated just now, may go on from the new network.
    let fresh = token(json!({"sub": "sam", "sid": "net-step_up", "auth_time": now()}));
    let away = [("x-forwarded-for", "203.0.113.9")];
    let r = w
        .confirm("DELETE", "/api/accounts/44", &fresh, "", &away)
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// Runs `countersign sessions revoke` against the store of `store_line`.
fn revoke_cli(store_line: &str, flag: &str, value: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("gw.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:8080\"\nupstreams: {{ legacy: {{ address: \"127.0.0.1:9000\" }} }}\n\
             session: {{ kind: bearer_jwt, hs256_secret_env: {HS256_ENV} }}\n{store_line}\n\
             routes:\n  - {{ name: default, match: {{ path: \"/{{*rest}}\" }}, upstream: legacy, risk: low }}\n"
        ),
    )
    .expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_countersign"))
        .args(["sessions", "revoke", "--config"])
        .arg(&config)
        .args([flag, value])
        .output()
        .expect("run countersign");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "revoke failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("revoked "), "{stdout}");
}

#[tokio::test]
async fn revocation_ends_a_session_and_a_subject_on_every_replica() {
    let redis = RedisServer::start();
    let store = format!("store: {{ kind: redis, url: \"{}\" }}", redis.url());
    let a = World::start(&store).await;
    let mut b = World::start(&store).await;
    b.key = DeviceKey::from_pkcs8_pem(&a.key.to_pkcs8_pem()).expect("same device key");

    // A session revoked by its audit hash is refused on the other replica.
    let first = token(json!({"sub": "sam", "sid": "revoke-1"}));
    let r = a
        .confirm("DELETE", "/api/accounts/42", &first, "", &[])
        .await;
    assert_eq!(r.status, 200);
    let hash = a.gw.audit_of(&r)["session"]
        .as_str()
        .expect("session hash")
        .to_string();
    revoke_cli(&store, "--session-hash", &hash);
    let before = b.upstream.seen().len();
    let url = format!("{}/api/accounts/42", b.gw.base);
    let auth = format!("DPoP {first}");
    let r = send(&url, "DELETE", &[("authorization", &auth)], Bytes::new()).await;
    let audit = b
        .assert_refused(&r, before, 401, "invalid_token", "session_revoked")
        .await;
    assert_eq!(audit["session"], hash.as_str());

    // A subject's sessions that started before its revocation end; a new sign-in works.
    let second = token(json!({"sub": "sam", "sid": "revoke-2", "iat": now() - 10}));
    let r = b
        .confirm("DELETE", "/api/accounts/43", &second, "", &[])
        .await;
    assert_eq!(r.status, 200);
    revoke_cli(&store, "--subject", "sam");
    let before = a.upstream.seen().len();
    let url = format!("{}/api/accounts/43", a.gw.base);
    let auth = format!("DPoP {second}");
    let r = send(&url, "DELETE", &[("authorization", &auth)], Bytes::new()).await;
    a.assert_refused(&r, before, 401, "invalid_token", "session_revoked")
        .await;
    let other = token(json!({"sub": "kim", "sid": "revoke-3"}));
    let r = a
        .confirm("DELETE", "/api/accounts/44", &other, "", &[])
        .await;
    assert_eq!(r.status, 200, "another subject is untouched");
    let later = token(json!({"sub": "sam", "sid": "revoke-4", "iat": now() + 2}));
    let r = a
        .confirm("DELETE", "/api/accounts/45", &later, "", &[])
        .await;
    assert_eq!(
        r.status, 200,
        "a session started after the revocation works"
    );
}

#[test]
fn revocation_needs_the_shared_store_and_a_real_hash() {
    let config = countersign::config::parse(
        &config_with("{ cedar: config/policies.cedar }")
            .replace("policy: { cedar: config/policies.cedar }\n", ""),
        Path::new("gw.yaml"),
    )
    .expect("valid config");
    use countersign::revocation::{revoke, Revocation};
    let e = revoke(&config, &Revocation::SessionHash("0123456789abcdef".into()))
        .expect_err("memory store");
    assert!(e.to_string().contains("store.kind: redis"), "{e}");
    let e = revoke(&config, &Revocation::SessionHash("not-a-hash".into())).expect_err("bad hash");
    assert!(e.to_string().contains("16 hex digits"), "{e}");
}
