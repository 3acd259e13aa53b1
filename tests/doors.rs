//! Routes that cannot be walked around: every door a legacy app opens onto a high-impact action
//! is gated. Requests are written as raw bytes; the upstream is a lenient recorder
//! (tests/support/lenient.rs) that executes what an old server would. The claim each test proves
//! is that nothing the upstream could execute as a high-impact action arrived unconfirmed, and each
//! refusal checks the status, the reason, the audit record of that request and what the upstream saw.

mod support;

use countersign::alg::ProofAlg;
use countersign::tools::device_key::DeviceKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use support::lenient::{lenient_path, raw, Lenient, RawReply, Switch};
use support::world::{assert_refused, Refused};
use support::Gateway;

const SID: &str = "victim-session-7c1d";

// Sweeps send hundreds of unanswered challenges from one session: no quota gets in their way.
const CONFIG: &str = r#"
session: { kind: cookie, cookie: sessionid }
confirmation: { max_outstanding_per_session: 100000 }
upstreams: { legacy: { address: "{upstream}" } }
routes:
  - name: delete-user
    match: { methods: [DELETE], path: "/api/users/{id}" }
    upstream: legacy
    risk: high
  - name: django-delete
    match: { methods: [POST], path: "/admin/auth/user/{id}/delete/" }
    upstream: legacy
    risk: high
  - name: bulk-delete
    match: { methods: [POST], path: "/admin/auth/user/", form: { action: delete_selected } }
    upstream: legacy
    risk: high
  - name: json-op
    match: { methods: [POST], path: "/api/ops", json: { "/op": [drop, truncate] } }
    upstream: legacy
    risk: high
  - name: export-all
    match: { methods: [GET], path: "/api/export", query: { scope: all } }
    upstream: legacy
    risk: high
  - name: rotate-observed
    match: { methods: [POST], path: "/api/secrets/{name}/rotate" }
    upstream: legacy
    risk: high
    enforce: false
  - name: ws
    match: { methods: [GET], path: "/ws/{*rest}" }
    upstream: legacy
    risk: low
    websocket: true
  - name: default
    match: { path: "/{*rest}" }
    upstream: legacy
    risk: low
"#;

struct World {
    gw: Gateway,
    up: Lenient,
    addr: String,
}

impl World {
    async fn new(switch: Switch) -> World {
        let up = Lenient::start(switch).await;
        let gw = Gateway::start_at(CONFIG, up.addr).await;
        let addr = format!("127.0.0.1:{}", gw.port);
        World { gw, up, addr }
    }

    fn host(&self) -> String {
        self.addr.clone()
    }

    /// Sends `METHOD TARGET` with the victim's session cookie, `headers` and `body`.
    async fn send(&self, method: &str, target: &str, headers: &[&str], body: &[u8]) -> RawReply {
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nCookie: sessionid={SID}\r\nConnection: close\r\n",
            self.host()
        );
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        raw(&self.addr, &bytes).await
    }

    /// Requests the upstream would execute as one of the high-impact actions of `CONFIG`.
    fn executed_high(&self) -> Vec<String> {
        self.up
            .seen()
            .into_iter()
            .filter(|s| {
                let (m, p) = s.executes();
                let segs: Vec<&str> = p.trim_start_matches('/').split('/').collect();
                let body = String::from_utf8_lossy(&s.body).to_string();
                (m == "DELETE" && segs.len() == 3 && segs[..2] == ["api", "users"])
                    || (m == "POST"
                        && segs.len() == 5
                        && segs[..3] == ["admin", "auth", "user"]
                        && segs[4] == "delete")
                    || (m == "POST" && p == "/admin/auth/user" && body.contains("delete_selected"))
            })
            .map(|s| s.line)
            .collect()
    }

    /// The audit record of the request a reply answered.
    fn audit_of(&self, r: &RawReply) -> Value {
        let id = r
            .header("countersign-request-id")
            .expect("the gateway names the request");
        self.gw
            .audit()
            .into_iter()
            .rfind(|rec| rec["request_id"] == id.as_str())
            .expect("an audit record for this request")
    }

    /// Asserts a refusal (the shared check) and that the upstream saw nothing at all.
    async fn assert_refused(
        &self,
        r: &RawReply,
        status: u16,
        error: &str,
        reason: &str,
        case: &str,
    ) -> Value {
        let refused = Refused {
            status,
            error,
            reason,
            case,
        };
        assert_refused(&self.gw, || self.up.seen().len(), 0, r, refused).await
    }

    /// Asserts a challenge: 401 use_dpop_nonce with a nonce, audit `challenged`, nothing sent.
    fn assert_challenged(&self, r: &RawReply, route: &str, what: &str) -> Value {
        assert_eq!(
            r.status,
            401,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.header("dpop-nonce").is_some(), "{what}: a nonce");
        let body = r.json();
        assert_eq!(body["error"], "use_dpop_nonce", "{what}: {body}");
        assert_eq!(body["confirmation"]["route"], route, "{what}: {body}");
        let audit = self.audit_of(r);
        assert_eq!(audit["event"], "challenged", "{what}: {audit}");
        assert_eq!(audit["route"], route, "{what}: {audit}");
        assert!(
            self.up.seen().is_empty(),
            "{what}: upstream saw {:?}",
            self.up.seen()
        );
        body
    }
}

#[tokio::test]
async fn targets_that_are_not_origin_form_are_refused_before_routing() {
    for target in [
        "api/users/42",
        "x:api/users/42",
        "foo:/api/users/42",
        "urn:/api/users/42",
        "./api/users/42",
        "//api/users/42",
    ] {
        let w = World::new(Switch::Correct).await;
        let r = w.send("DELETE", target, &[], b"").await;
        w.assert_refused(&r, 400, "invalid_request", "invalid_target", target)
            .await;
        assert_eq!(
            w.audit_of(&r)["route"],
            "",
            "{target}: refused before routing"
        );
    }
    // Two spaces (the target starts with a space), and an absolute-form target naming another
    // authority than Host (Pingora refuses that one itself, before any filter runs).
    for target in [" /api/users/42", "http://elsewhere.example/api/users/42"] {
        let w = World::new(Switch::Correct).await;
        let r = w.send("DELETE", target, &[], b"").await;
        assert_eq!(r.status, 400, "{target:?}");
        assert!(w.up.seen().is_empty(), "{target:?}");
    }
}

#[tokio::test]
async fn an_absolute_form_target_for_this_host_is_routed_and_forwarded_as_origin_form() {
    let w = World::new(Switch::Correct).await;
    let absolute = format!("http://{}/api/users/42", w.host());
    let r = w.send("DELETE", &absolute, &[], b"").await;
    let body = w.assert_challenged(&r, "delete-user", "absolute-form DELETE");
    assert_eq!(body["confirmation"]["target"], "/api/users/42");

    let r = w
        .send("GET", &format!("http://{}/reports?x=1", w.host()), &[], b"")
        .await;
    assert_eq!(r.status, 200);
    let seen = w.up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].line, "GET /reports?x=1 HTTP/1.1",
        "origin-form upstream"
    );
}

#[tokio::test]
async fn a_forwarded_element_cannot_be_injected_through_host() {
    let w = World::new(Switch::Correct).await;
    let req = "GET /reports HTTP/1.1\r\nHost: evil\", for=10.0.0.7;proto=https;host=\"x\r\nConnection: close\r\n\r\n";
    let r = raw(&w.addr, req.as_bytes()).await;
    w.assert_refused(
        &r,
        400,
        "invalid_request",
        "invalid_target",
        "Host injection",
    )
    .await;
    let r = raw(
        &w.addr,
        format!(
            "GET /reports HTTP/1.1\r\nHost: {0}\r\nHost: {0}\r\nConnection: close\r\n\r\n",
            w.host()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400, "two Host headers");
    assert!(w.up.seen().is_empty());
}

#[tokio::test]
async fn method_overrides_reach_the_high_impact_route() {
    let cases: [(&str, &str, &[&str], &[u8]); 6] = [
        (
            "GET",
            "/api/users/42",
            &["X-HTTP-Method-Override: DELETE"],
            b"",
        ),
        ("GET", "/api/users/42", &["X-HTTP-Method: delete"], b""),
        ("POST", "/api/users/42", &["X-Method-Override: DELETE"], b""),
        ("POST", "/api/users/42?_method=DELETE", &[], b""),
        (
            "POST",
            "/api/users/42",
            &["Content-Type: application/x-www-form-urlencoded"],
            b"name=x&_method=delete",
        ),
        (
            "POST",
            "/api/users/42",
            &["Content-Type: multipart/form-data; boundary=B"],
            b"--B\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--B--\r\n",
        ),
    ];
    for (method, target, headers, body) in cases {
        let w = World::new(Switch::Correct).await;
        let what = format!("{method} {target} {headers:?}");
        let r = w.send(method, target, headers, body).await;
        let body = w.assert_challenged(&r, "delete-user", &what);
        assert_eq!(
            body["confirmation"]["method"], method,
            "{what}: htm is the request line's"
        );
        assert_eq!(
            body["confirmation"]["method_override"], "DELETE",
            "{what}: {body}"
        );
        let audit = w.audit_of(&r);
        assert_eq!(audit["method_override"], "DELETE", "{what}: {audit}");
    }
}

#[tokio::test]
async fn an_override_added_after_the_challenge_is_refused_and_one_confirmed_is_forwarded() {
    let w = World::new(Switch::Correct).await;
    let key = DeviceKey::generate(ProofAlg::Es256).expect("key");
    let url = format!("{}/api/users/42", w.gw.base);

    // A confirmation of the plain POST cannot carry an override added afterwards.
    let django = format!("{}/admin/auth/user/5/delete/", w.gw.base);
    let r = w.send("POST", "/admin/auth/user/5/delete/", &[], b"").await;
    w.assert_challenged(&r, "django-delete", "plain POST");
    let nonce = r.header("dpop-nonce").expect("nonce");
    let proof = key.proof("POST", &django, Some(&nonce), Some(SID));
    let dpop = format!("DPoP: {proof}");
    let r = w
        .send(
            "POST",
            "/admin/auth/user/5/delete/",
            &[&dpop, "X-HTTP-Method-Override: DELETE"],
            b"",
        )
        .await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(w.audit_of(&r)["reason"], "action_mismatch");
    assert!(w.up.seen().is_empty(), "upstream saw {:?}", w.up.seen());

    // A POST that stands for DELETE is challenged with the override bound...
    let r = w
        .send(
            "POST",
            "/api/users/42",
            &["X-HTTP-Method-Override: DELETE"],
            b"",
        )
        .await;
    w.assert_challenged(&r, "delete-user", "override");
    let nonce = r.header("dpop-nonce").expect("nonce");
    let proof = key.proof("POST", &url, Some(&nonce), Some(SID));
    let dpop = format!("DPoP: {proof}");
    // The confirmation of the override is forwarded with it, and provenance names it.
    let r = w
        .send(
            "POST",
            "/api/users/42",
            &[&dpop, "X-HTTP-Method-Override: DELETE"],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = w.up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-http-method-override"), Some("DELETE"));
    let token = seen[0]
        .header("countersign-provenance")
        .expect("provenance");
    let claims = token.split('.').nth(1).expect("payload");
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims)
            .expect("base64url"),
    )
    .expect("json");
    assert_eq!(claims["htm"], "POST");
    assert_eq!(claims["htm_override"], "DELETE");
    assert!(claims.get("sub").is_none(), "no subject, no sub: {claims}");
}

#[tokio::test]
async fn disguised_django_paths_are_challenged() {
    for target in [
        "/admin/auth/%75ser/5/%64elete/",
        "/admin/auth/user%2F5/delete/",
        "/admin//auth/user/5/delete/",
        "/admin/auth/user/5/delete",
        "/admin/auth/user/5/delete;x/",
        "/admin\\auth\\user\\5\\delete\\",
        "/ADMIN/auth/user/5/delete/",
        "/admin/auth/x/../user/5/delete/",
    ] {
        let w = World::new(Switch::Correct).await;
        let r = w.send("POST", target, &[], b"").await;
        w.assert_challenged(&r, "django-delete", target);
    }
}

#[tokio::test]
async fn the_bulk_delete_form_action_is_challenged_and_other_actions_pass_intact() {
    let w = World::new(Switch::Correct).await;
    let form = ["Content-Type: application/x-www-form-urlencoded"];
    let bulk =
        b"csrfmiddlewaretoken=t&action=delete_selected&_selected_action=3&_selected_action=4";
    let r = w.send("POST", "/admin/auth/user/", &form, bulk).await;
    w.assert_challenged(&r, "bulk-delete", "delete_selected");

    let other = b"csrfmiddlewaretoken=t&action=export_csv&_selected_action=3";
    let r = w.send("POST", "/admin/auth/user/", &form, other).await;
    assert_eq!(r.status, 200);
    let seen = w.up.seen();
    assert_eq!(seen.len(), 1, "the other action is forwarded");
    assert_eq!(seen[0].body, other.to_vec(), "byte for byte");
    assert!(w.executed_high().is_empty());
}

#[tokio::test]
async fn bodies_the_gateway_cannot_read_fail_closed() {
    let form = "Content-Type: application/x-www-form-urlencoded";
    // Encoded, unparsable JSON, duplicate JSON members, and too large.
    let big = vec![b'a'; 1024 * 1024 + 10];
    let cases: Vec<(&str, Vec<&str>, Vec<u8>, &str)> = vec![
        (
            "/admin/auth/user/",
            vec![form, "Content-Encoding: gzip"],
            b"\x1f\x8b\x08".to_vec(),
            "bulk-delete",
        ),
        (
            "/api/ops",
            vec!["Content-Type: application/json"],
            b"{\"op\": dr".to_vec(),
            "json-op",
        ),
        (
            "/api/ops",
            vec!["Content-Type: application/json"],
            br#"{"op":"drop","op":"noop"}"#.to_vec(),
            "json-op",
        ),
    ];
    for (target, headers, body, route) in cases {
        let w = World::new(Switch::Correct).await;
        let r = w.send("POST", target, &headers, &body).await;
        w.assert_challenged(&r, route, &format!("{target} {headers:?}"));
    }
    let w = World::new(Switch::Correct).await;
    let r = w.send("POST", "/admin/auth/user/", &[form], &big).await;
    w.assert_refused(
        &r,
        413,
        "invalid_request",
        "body_too_large",
        "oversized form",
    )
    .await;
    assert_eq!(w.audit_of(&r)["route"], "bulk-delete");
}

#[tokio::test]
async fn json_and_query_conditions_gate_their_routes() {
    let w = World::new(Switch::Correct).await;
    let json = ["Content-Type: application/json"];
    let r = w
        .send(
            "POST",
            "/api/ops",
            &json,
            br#"{"op":"truncate","table":"users"}"#,
        )
        .await;
    w.assert_challenged(&r, "json-op", "truncate");
    let r = w
        .send("GET", "/api/export?scope=mine&scope=all", &[], b"")
        .await;
    w.assert_challenged(&r, "export-all", "scope=all");
    let r = w
        .send("POST", "/api/ops", &json, br#"{"op":"vacuum"}"#)
        .await;
    assert_eq!(r.status, 200);
    let r = w.send("GET", "/api/export?scope=mine", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(w.up.seen().len(), 2, "the harmless ones pass");
}

#[tokio::test]
async fn look_alike_session_cookies_identify_no_session() {
    for cookie in [
        "Sessionid=victim; sessionid=invented",
        "sessionid=invented; SESSIONID=victim",
        "sess%69onid=victim; sessionid=invented",
    ] {
        let w = World::new(Switch::Correct).await;
        let req = format!(
            "DELETE /api/users/42 HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n",
            w.host()
        );
        let r = raw(&w.addr, req.as_bytes()).await;
        w.assert_refused(&r, 401, "invalid_token", "invalid_session", cookie)
            .await;
    }
}

#[tokio::test]
async fn headers_a_cgi_server_would_misread_never_reach_the_upstream() {
    let w = World::new(Switch::Correct).await;
    let r = w
        .send(
            "GET",
            "/public/x",
            &[
                "Countersign_Subject: admin",
                "X-Forwarded_For: 10.0.0.7",
                "X_Forwarded_Proto: https",
                "X-Original-URL: /api/users/42",
                "X-Rewrite-URL: /api/users/42",
            ],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = w.up.seen();
    assert_eq!(seen.len(), 1);
    let names: Vec<&str> = seen[0].headers.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.iter().all(|n| !n.contains('_')), "{names:?}");
    for h in ["x-original-url", "x-rewrite-url", "countersign-subject"] {
        assert!(seen[0].header(h).is_none(), "{h} forwarded: {names:?}");
    }
    assert_eq!(seen[0].header("x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test]
async fn upgrades_open_only_as_checked_websockets_on_their_routes() {
    let handshake = [
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];
    let w = World::new(Switch::Correct).await;
    let r = w.send("GET", "/public/x", &handshake, b"").await;
    w.assert_refused(
        &r,
        400,
        "invalid_request",
        "upgrade_refused",
        "upgrade on a plain route",
    )
    .await;

    let w = World::new(Switch::Correct).await;
    let r = w.send("GET", "/ws/feed", &handshake, b"").await;
    assert_eq!(
        r.status, 101,
        "a real WebSocket handshake passes on its route"
    );

    // A 101 that is not a correct WebSocket answer opens no tunnel.
    let w = World::new(Switch::Wrong).await;
    let mut bytes = format!(
        "GET /ws/feed HTTP/1.1\r\nHost: {}\r\n{}\r\n\r\n",
        w.host(),
        handshake.join("\r\n")
    )
    .into_bytes();
    bytes.extend_from_slice(b"DELETE /api/users/42 HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = raw(&w.addr, &bytes).await;
    assert_ne!(r.status, 101, "no tunnel: {}", r.head);
    assert!(w.executed_high().is_empty(), "{:?}", w.executed_high());
}

#[tokio::test]
async fn observe_mode_forwards_and_audits_what_it_would_have_challenged() {
    let w = World::new(Switch::Correct).await;
    let r = w.send("POST", "/api/secrets/db/rotate", &[], b"now").await;
    assert_eq!(r.status, 200, "observe mode forwards");
    let audit = w.audit_of(&r);
    assert_eq!(audit["route"], "rotate-observed");
    let observed =
        w.gw.audit()
            .into_iter()
            .find(|rec| rec["event"] == "observed")
            .expect("an observed record");
    assert_eq!(observed["reason"], "unconfirmed");
    assert_eq!(w.up.seen().len(), 1);
    assert_eq!(w.up.seen()[0].body, b"now".to_vec());
    support::assert_metric(
        &w.gw.metrics().await,
        r#"countersign_requests_total{decision="observed",route="rotate-observed"} 1"#,
    );
}

/// Generated spellings of a target: whatever the gateway does with each, the router and the
/// forwarded request line agree, and nothing the lenient upstream executes as `DELETE
/// /api/users/{id}` arrives unconfirmed.
#[tokio::test]
async fn generated_target_spellings_never_reach_the_action_unconfirmed() {
    let mut rng = StdRng::seed_from_u64(0x00c0_ffee);
    let w = World::new(Switch::Correct).await;
    for _ in 0..300 {
        let target = spelling(&mut rng);
        let method = ["DELETE", "delete", "GET", "POST"][rng.random_range(0..4)];
        let extra: &[&str] = match rng.random_range(0..4) {
            0 => &["X-HTTP-Method-Override: DELETE"],
            _ => &[],
        };
        let r = w.send(method, &target, extra, b"").await;
        assert!(
            matches!(r.status, 200 | 400 | 401 | 404),
            "{method} {target}: {}",
            r.status
        );
        if r.status == 200 {
            let last = w.up.seen().pop().expect("forwarded");
            let sent = last.target().to_string();
            // What was routed is what was forwarded: the origin-form spelling sent.
            let origin = match target.split_once("://") {
                Some((_, rest)) => rest[rest.find('/').unwrap_or(rest.len())..].to_string(),
                None => target.clone(),
            };
            assert_eq!(sent, origin, "{method} {target}");
        }
    }
    assert!(
        w.executed_high().is_empty(),
        "executed: {:?}",
        w.executed_high()
    );
    assert!(lenient_path("/API/./users/%34%32/") == "/api/users/42");
}

fn spelling(rng: &mut StdRng) -> String {
    let segments = ["api", "users", "42"];
    let mut out = String::new();
    for (i, seg) in segments.iter().enumerate() {
        let sep =
            ["/", "/", "/", "//", "\\", "/./", "/x/../", "%2F", "%2f"][rng.random_range(0..9)];
        if i == 0 && rng.random_range(0..6) == 0 {
            out.push_str(["", "./", "x:", "http://127.0.0.1:1/"][rng.random_range(0..4)]);
        } else {
            out.push_str(sep);
        }
        for c in seg.chars() {
            match rng.random_range(0..6) {
                0 => out.push_str(&format!("%{:02X}", c as u8)),
                1 => out.push(c.to_ascii_uppercase()),
                _ => out.push(c),
            }
        }
        if rng.random_range(0..8) == 0 {
            out.push_str(";p=1");
        }
    }
    match rng.random_range(0..5) {
        0 => out.push('/'),
        1 => out.push_str("?a=1"),
        _ => {}
    }
    out
}

#[test]
fn audit_unprotected_lists_the_doors_left_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("audit.jsonl");
    let lines = [
        r#"{"event":"passthrough","method":"POST","target":"/admin/auth/user/","route":"default"}"#,
        r#"{"event":"passthrough","method":"DELETE","target":"/api/keys/17","route":"default"}"#,
        r#"{"event":"passthrough","method":"DELETE","target":"/api/keys/18","route":"default"}"#,
        r#"{"event":"passthrough","method":"GET","target":"/api/keys/18","route":"default"}"#,
    ];
    std::fs::write(&file, lines.join("\n")).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_countersign"))
        .args(["audit", "unprotected"])
        .arg(&file)
        .output()
        .expect("run countersign");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().expect("a line");
    assert!(
        first.contains("2") && first.contains("DELETE") && first.contains("/api/keys/{id}"),
        "{text}"
    );
    assert!(!text.contains("GET"), "{text}");
    assert!(
        text.contains("match: { methods: [POST], path: \"/admin/auth/user/\" }"),
        "{text}"
    );
}
