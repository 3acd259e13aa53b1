//! Config parsing and validation through the public API: every error class names the exact field
//! path and what was expected; defaults are applied; every sample file in `config/` loads.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use countersign::alg::ProofAlg;
use countersign::config::{
    self, Config, ConfigError, JwtKeys, LogConfig, PublicOrigin, SessionKind, StoreConfig,
    UpstreamScheme,
};
use countersign::routes::Risk;
use http::Method;
use ipnet::IpNet;
use proptest::prelude::*;

/// Everything before `routes:`; line numbers below depend on this layout.
const HEAD: &str = r#"listen: "127.0.0.1:8080"
upstreams:
  a: { address: "127.0.0.1:9000" }
  b: { address: "backend.internal:9001" }
session: { kind: header, header: X-Session }
"#;

const ROUTES: &str = r#"routes:
  - name: delete-user
    match: { methods: [DELETE], path: "/api/users/{id}" }
    upstream: a
    risk: high
  - name: default
    match: { path: "/{*rest}" }
    upstream: b
    risk: low
"#;

fn base() -> String {
    format!("{HEAD}{ROUTES}")
}

/// The base config with one more top-level section.
fn with(extra: &str) -> String {
    format!("{HEAD}{ROUTES}{extra}\n")
}

/// The base config with `session:` replaced.
fn with_session(session: &str) -> String {
    let head = HEAD.replace("session: { kind: header, header: X-Session }\n", "");
    format!("{head}session: {session}\n{ROUTES}")
}

/// The base config with `routes:` replaced.
fn with_routes(routes: &str) -> String {
    format!("{HEAD}routes:\n{routes}")
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    config::parse(text, Path::new("test.yaml"))
}

fn ok(text: &str) -> Config {
    match parse(text) {
        Ok(config) => config,
        Err(e) => panic!("expected the config to parse, got: {e}\n{text}"),
    }
}

/// Asserts the error's path exactly and that its message contains each of `parts`.
#[track_caller]
fn fails(text: &str, path: &str, parts: &[&str]) -> ConfigError {
    let err = match parse(text) {
        Ok(_) => panic!("expected an error at {path}, but the config parsed:\n{text}"),
        Err(e) => e,
    };
    assert_eq!(
        err.path, path,
        "wrong path; message: {}\n{text}",
        err.message
    );
    for part in parts {
        assert!(
            err.message.contains(part),
            "message {:?} lacks {part:?}",
            err.message
        );
    }
    assert_eq!(err.file, Path::new("test.yaml"));
    err
}

fn route(text: &str, path: &str) -> String {
    with_routes(&format!(
        "  - name: r\n    match: {{ path: \"{path}\" }}\n    upstream: a\n    risk: high\n{text}"
    ))
}

// ---- document shape ----------------------------------------------------------------------------

#[test]
fn base_config_parses() {
    let config = ok(&base());
    assert_eq!(config.routes.len(), 2);
    assert_eq!(config.upstreams.len(), 2);
}

#[test]
fn unknown_key_at_root_is_named() {
    let err = fails(
        &with("bogus: 1"),
        "bogus",
        &["unknown field `bogus`", "listen"],
    );
    assert!(err.message.contains("line 15 column 1"), "{}", err.message);
}

#[test]
fn unknown_key_nested_is_named() {
    fails(
        &base().replace(
            "address: \"127.0.0.1:9000\"",
            "address: \"127.0.0.1:9000\", foo: 1",
        ),
        "upstreams.a.foo",
        &["unknown field `foo`", "expected one of `address`"],
    );
    fails(
        &base().replace("path: \"/{*rest}\"", "path: \"/{*rest}\", host: x"),
        "routes[1].match.host",
        &["unknown field `host`"],
    );
    fails(
        &with("confirmation: { nonce_tl: 60s }"),
        "confirmation.nonce_tl",
        &["unknown field `nonce_tl`", "nonce_ttl"],
    );
    fails(
        &with_session("{ kind: header, header: x-s, hedaer: y }"),
        "session.hedaer",
        &["unknown field `hedaer`"],
    );
    fails(
        &with("store: { kind: memory, size: 3 }"),
        "store.size",
        &["unknown field"],
    );
    fails(
        &with("audit: { file: x }"),
        "audit.file",
        &["unknown field"],
    );
    fails(
        &with("server: { workers: 2 }"),
        "server.workers",
        &["unknown field"],
    );
    fails(
        &with("log: { level: debug }"),
        "log.level",
        &["unknown field"],
    );
    fails(
        &with("metrics: { listen: \"127.0.0.1:9464\", path: /m }"),
        "metrics.path",
        &["unknown field"],
    );
    fails(
        &with("provenance: { key: x }"),
        "provenance.key",
        &["unknown field"],
    );
}

#[test]
fn wrong_type_names_the_field_and_its_line_and_column() {
    fails(
        &base().replace(
            "address: \"127.0.0.1:9000\"",
            "address: \"127.0.0.1:9000\", tls: yes",
        ),
        "upstreams.a.tls",
        &["invalid type", "expected a boolean", "line 3 column 40"],
    );
    fails(
        &base().replace("path: \"/{*rest}\"", "path: \"/{*rest}\", methods: [[GET]]"),
        "routes[1].match.methods[0]",
        &["invalid type: sequence", "HTTP method", "line 12 column 42"],
    );
    fails(
        &base().replace("methods: [DELETE]", "methods: DELETE"),
        "routes[0].match.methods",
        &["expected a sequence", "line 8 column 23"],
    );
    fails(
        &with("confirmation: 5"),
        "confirmation",
        &["invalid type: integer `5`"],
    );
    fails(
        &with("store: { kind: memory, max_entries: lots }"),
        "store.max_entries",
        &["invalid type"],
    );
    fails(
        &with("server: { threads: -1 }"),
        "server.threads",
        &["invalid"],
    );
}

#[test]
fn missing_required_keys_are_named() {
    for key in ["listen", "upstreams", "session", "routes"] {
        let text: String = base()
            .split_inclusive('\n')
            .scan(false, |skipping, line| {
                if line.starts_with(key) {
                    *skipping = true;
                    return Some(String::new());
                }
                if *skipping && line.starts_with(' ') {
                    return Some(String::new());
                }
                *skipping = false;
                Some(line.to_string())
            })
            .collect();
        fails(&text, "(root)", &[&format!("missing field `{key}`")]);
    }
    fails(
        &with_session("{ header: x-s }"),
        "session",
        &["missing field `kind`"],
    );
    fails(
        &base().replace("address: \"127.0.0.1:9000\"", "tls: true"),
        "upstreams.a",
        &["missing field `address`"],
    );
    fails(&with("metrics: {}"), "metrics", &["missing field `listen`"]);
    fails(
        &with_routes(
            "  - name: x\n    match: { methods: [GET] }\n    upstream: a\n    risk: low\n",
        ),
        "routes[0].match",
        &["missing field `path`"],
    );
    fails(
        &with_routes("  - name: x\n    match: { path: / }\n    upstream: a\n"),
        "routes[0]",
        &["missing field `risk`"],
    );
}

#[test]
fn empty_sections_are_refused() {
    fails(
        &with_routes(" []\n").replace("routes:\n []", "routes: []"),
        "routes",
        &["at least one route"],
    );
    fails(
        &base().replace(
            "upstreams:\n  a: { address: \"127.0.0.1:9000\" }\n  b: { address: \"backend.internal:9001\" }\n",
            "upstreams: {}\n",
        ),
        "upstreams",
        &["at least one upstream"],
    );
    fails("", "(root)", &["empty"]);
    fails("# only a comment\n", "(root)", &["missing field `listen`"]);
    fails("- 1\n", "(root)", &["expected a mapping"]);
    fails("listen: [\n", "listen", &["socket address"]);
}

#[test]
fn yaml_syntax_errors_have_a_location() {
    let err =
        parse("listen: \"127.0.0.1:8080\"\nupstreams: {a: \n  - x\n: y").expect_err("bad yaml");
    assert!(err.message.contains("line"), "{}", err.message);
}

#[test]
fn duplicate_keys_are_refused() {
    fails(
        &base().replace("  b: {", "  a: {"),
        "upstreams",
        &["upstream \"a\" is defined twice"],
    );
    fails(
        &format!("listen: \"127.0.0.1:1\"\n{}", base()),
        "(root)",
        &["duplicate field `listen`"],
    );
}

#[test]
fn error_display_names_file_path_and_message() {
    let err = parse(&base().replace("upstream: b", "upstream: x")).expect_err("unknown upstream");
    assert_eq!(
        err.to_string(),
        "test.yaml: routes[1].upstream: unknown upstream \"x\"; defined: a, b"
    );
}

// ---- routes --------------------------------------------------------------------------------------

#[test]
fn route_naming_a_missing_upstream() {
    fails(
        &base().replace("upstream: b", "upstream: x"),
        "routes[1].upstream",
        &["unknown upstream \"x\"; defined: a, b"],
    );
}

#[test]
fn duplicate_route_names() {
    fails(
        &base().replace("name: default", "name: delete-user"),
        "routes[1].name",
        &["duplicate route name \"delete-user\"", "routes[0]"],
    );
}

#[test]
fn bad_route_names() {
    fails(
        &base().replace("name: default", "name: \"\""),
        "routes[1].name",
        &["non-empty"],
    );
    fails(
        &base().replace("name: default", "name: \"two words\""),
        "routes[1].name",
        &["letters, digits"],
    );
}

#[test]
fn unknown_risk() {
    fails(
        &base().replace("risk: high", "risk: medium"),
        "routes[0].risk",
        &[
            "unknown variant `medium`",
            "`low` or `high`",
            "line 10 column 11",
        ],
    );
}

#[test]
fn bad_path_templates() {
    let cases = [
        ("api/users", "must start with '/'"),
        ("/{*rest}/tail", "must be the last segment"),
        ("/files/{name}.json", "stray brace"),
        ("/files/{name", "stray brace"),
        ("/{id}/{id}", "appears twice"),
        ("/{9}", "parameter name"),
        ("/a//b", "empty segment"),
        ("/search?q={q}", "without query"),
    ];
    for (template, message) in cases {
        fails(&route("", template), "routes[0].match.path", &[message]);
    }
}

#[test]
fn another_routers_template_syntax_is_refused_with_the_fix() {
    let cases = [
        ("/things/:id", "write a parameter as {name}"),
        ("/things/<id>", "write a parameter as {name}"),
        ("/things/*", "{*rest}"),
        ("/things/**", "{*rest}"),
        ("/things/[0-9]+", "not regular expressions"),
        ("/things/(v1)", "not regular expressions"),
        ("/things/^x$", "not regular expressions"),
    ];
    for (template, message) in cases {
        fails(
            &route("", template),
            "routes[0].match.path",
            &["looks like another router's syntax", message],
        );
    }
}

#[test]
fn route_conditions_parse_and_say_what_is_wrong() {
    let conditioned = |matcher: &str| {
        with_routes(&format!(
            "  - name: bulk\n    match: {{ methods: [POST], path: \"/admin/auth/user/\", {matcher} }}\n    upstream: a\n    risk: high\n\
             \x20 - name: default\n    match: {{ path: \"/{{*rest}}\" }}\n    upstream: a\n    risk: low\n"
        ))
    };
    let config = ok(&conditioned(
        "form: { action: [delete_selected, purge] }, query: { confirm: \"*\", n: 1 }",
    ));
    let bulk = &config.routes.routes()[0];
    assert_eq!(bulk.conditions.form.len(), 1);
    assert_eq!(bulk.conditions.query.len(), 2);
    ok(&conditioned("json: { \"/op\": drop }"));
    fails(
        &conditioned("json: { op: drop }"),
        "routes[0].match.json.op",
        &["JSON pointer"],
    );
    fails(
        &conditioned("form: { action: [] }"),
        "routes[0].match.form.action",
        &["lists no value"],
    );
    fails(
        &conditioned("form: { a: x }, json: { \"/b\": y }"),
        "routes[0].match",
        &["form or JSON, never both"],
    );
    // A conditioned route does not shadow an unconditioned one with the same template.
    ok(&with_routes(
        "  - name: bulk\n    match: { methods: [POST], path: \"/x/\", form: { action: d } }\n    upstream: a\n    risk: high\n\
         \x20 - name: list\n    match: { methods: [POST], path: \"/x/\" }\n    upstream: a\n    risk: low\n",
    ));
}

#[test]
fn observe_mode_and_websockets_apply_where_they_make_sense() {
    ok(&base().replace("risk: high", "risk: high\n    enforce: false"));
    fails(
        &base().replace("risk: low", "risk: low\n    enforce: false"),
        "routes[1].enforce",
        &["risk: high routes only"],
    );
    ok(&base().replace("risk: low", "risk: low\n    websocket: true"));
    fails(
        &base().replace("risk: high", "risk: high\n    websocket: true"),
        "routes[0].websocket",
        &["never confirmed"],
    );
}

#[test]
fn a_session_header_with_an_underscore_is_refused() {
    fails(
        &with_session("{ kind: header, header: x_session }"),
        "session.header",
        &["drops header names containing '_'", "\"x-session\""],
    );
}

#[test]
fn bad_methods() {
    fails(
        &base().replace("methods: [DELETE]", "methods: [GET, DELTE]"),
        "routes[0].match.methods[1]",
        &["unknown HTTP method \"DELTE\"", "expected one of GET"],
    );
    fails(
        &base().replace("methods: [DELETE]", "methods: [delete]"),
        "routes[0].match.methods[0]",
        &["case-sensitive", "\"DELETE\""],
    );
    fails(
        &base().replace("methods: [DELETE]", "methods: []"),
        "routes[0].match.methods",
        &["lists no method"],
    );
}

#[test]
fn route_after_a_catch_all_is_shadowed() {
    let err = fails(
        &with_routes(
            "  - name: default\n    match: { path: \"/{*rest}\" }\n    upstream: a\n    risk: low\n\
             \x20 - name: delete-user\n    match: { methods: [DELETE], path: \"/api/users/{id}\" }\n    upstream: a\n    risk: high\n",
        ),
        "routes[1].match",
        &["\"delete-user\" can never match", "\"default\" (routes[0])", "every path"],
    );
    assert!(err.message.contains("every method"), "{}", err.message);
}

#[test]
fn catch_all_covering_only_some_methods_shadows_only_those() {
    let routes = |first: &str, second: &str| {
        with_routes(&format!(
            "  - name: reads\n    match: {{ methods: [{first}], path: \"/{{*rest}}\" }}\n    upstream: a\n    risk: low\n\
             \x20 - name: writes\n    match: {{ {second}path: \"/api/{{id}}\" }}\n    upstream: a\n    risk: high\n"
        ))
    };
    ok(&routes("GET, HEAD", "methods: [DELETE], "));
    ok(&routes("GET, HEAD", ""));
    fails(
        &routes("GET, DELETE", "methods: [DELETE], "),
        "routes[1].match",
        &["\"reads\"", "GET, DELETE"],
    );
}

#[test]
fn route_with_the_same_template_and_methods_is_shadowed() {
    fails(
        &with_routes(
            "  - name: one\n    match: { methods: [POST, PUT], path: \"/x/{id}\" }\n    upstream: a\n    risk: high\n\
             \x20 - name: two\n    match: { methods: [PUT], path: \"/x/{id}\" }\n    upstream: a\n    risk: low\n",
        ),
        "routes[1].match",
        &["\"two\" can never match", "\"one\" (routes[0])", "the same path"],
    );
}

#[test]
fn route_table_is_compiled_in_order() {
    let config = ok(&base());
    let table = &config.routes;
    let hit = table.find(&Method::DELETE, "/api/users/1").expect("route");
    assert_eq!((hit.name.as_str(), hit.risk), ("delete-user", Risk::High));
    assert_eq!(hit.upstream, "a");
    let hit = table.find(&Method::GET, "/api/users/1").expect("route");
    assert_eq!((hit.name.as_str(), hit.risk), ("default", Risk::Low));
    assert_eq!(table.routes()[1].template.as_str(), "/{*rest}");
    assert_eq!(table.routes()[0].methods, Some(vec![Method::DELETE]));
    assert_eq!(table.routes()[1].methods, None);
}

// ---- scalars -------------------------------------------------------------------------------------

#[test]
fn bad_durations() {
    fails(
        &with("confirmation: { nonce_ttl: 60 }"),
        "confirmation.nonce_ttl",
        &[
            "missing unit",
            "a duration like 250ms, 60s, 5m or 12h",
            "line 15 column 28",
        ],
    );
    fails(
        &with("confirmation: { clock_skew: -5s }"),
        "confirmation.clock_skew",
        &["negative"],
    );
    fails(
        &with("confirmation: { proof_max_age: 1.5s }"),
        "confirmation.proof_max_age",
        &["250ms"],
    );
    fails(
        &with("confirmation: { nonce_ttl: 5d }"),
        "confirmation.nonce_ttl",
        &["unknown unit \"d\""],
    );
    fails(
        &with("store: { kind: redis, url: \"redis://r\", timeout: 99999999999999999999ms }"),
        "store.timeout",
        &["too large"],
    );
    fails(
        &with("server: { shutdown_timeout: \"\" }"),
        "server.shutdown_timeout",
        &["empty"],
    );
    fails(
        &with_session("{ kind: header, header: x-s, binding_ttl: 12 }"),
        "session.binding_ttl",
        &["missing unit"],
    );
    fails(
        &base().replace(
            "address: \"127.0.0.1:9000\"",
            "address: \"127.0.0.1:9000\", connect_timeout: 5",
        ),
        "upstreams.a.connect_timeout",
        &["missing unit"],
    );
}

#[test]
fn zero_lifetimes_are_refused() {
    fails(
        &with("confirmation: { nonce_ttl: 0s }"),
        "confirmation.nonce_ttl",
        &["longer than 0s"],
    );
    fails(
        &with_session("{ kind: header, header: x-s, binding_ttl: 0ms }"),
        "session.binding_ttl",
        &["longer than 0s"],
    );
}

#[test]
fn bad_sizes() {
    fails(
        &with("confirmation: { max_body: 1MB }"),
        "confirmation.max_body",
        &["decimal unit", "64KiB"],
    );
    fails(
        &with("confirmation: { max_body: 1048576 }"),
        "confirmation.max_body",
        &["missing unit", "1MiB"],
    );
    fails(
        &with("confirmation: { max_body: 99999999999999999999GiB }"),
        "confirmation.max_body",
        &["too large"],
    );
}

#[test]
fn bad_cidrs() {
    fails(
        &with("trusted_proxies: [10.0.0.0/8, 300.1.1.1]"),
        "trusted_proxies[1]",
        &["\"300.1.1.1\" is not a network", "10.0.0.0/8"],
    );
    fails(
        &with("trusted_proxies: [10.0.0.0/33]"),
        "trusted_proxies[0]",
        &["not a network"],
    );
    fails(
        &with("trusted_proxies: [\"10.0.0.0/8 \"]"),
        "trusted_proxies[0]",
        &["not a network"],
    );
    fails(
        &with("trusted_proxies: 10.0.0.0/8"),
        "trusted_proxies",
        &["expected a sequence"],
    );
}

#[test]
fn bad_public_origins() {
    let cases = [
        ("ftp://admin.example.com", "not http or https"),
        ("admin.example.com", "no scheme"),
        ("https://admin.example.com/?x=1", "query"),
        ("https://admin.example.com/#top", "fragment"),
        ("https://user:pw@admin.example.com", "user info"),
        ("https://", "not a host name"),
        ("https://admin.example.com:0", "not in 1..=65535"),
        ("https://admin.example.com:70000", "not in 1..=65535"),
        ("https://admin.example.com:x", "not a number"),
        ("https://[::1", "unclosed"),
        ("https://[zz]:443", "not an IPv6 address"),
        ("https://a b.com", "not a host name"),
        ("https://example.com/a/../b", "dot segment"),
    ];
    for (origin, message) in cases {
        fails(
            &with(&format!("public_origin: \"{origin}\"")),
            "public_origin",
            &[message],
        );
    }
}

#[test]
fn public_origin_is_normalised() {
    let origin = |text: &str| {
        ok(&with(&format!("public_origin: \"{text}\"")))
            .public_origin
            .expect("public_origin set")
    };
    assert_eq!(
        origin("HTTPS://Admin.Example.COM:443/admin/"),
        PublicOrigin {
            scheme: "https".into(),
            host: "admin.example.com".into(),
            port: None,
            prefix: "/admin".into(),
        }
    );
    let o = origin("http://[::1]:8080");
    assert_eq!((o.host.as_str(), o.port), ("[::1]", Some(8080)));
    assert_eq!(o.origin(), "http://[::1]:8080");
    let o = origin("http://example.com:80/");
    assert_eq!((o.port, o.prefix.as_str()), (None, ""));
    assert_eq!(origin("https://example.com:8443").port, Some(8443));
}

#[test]
fn bad_listen_and_upstream_addresses() {
    fails(
        &base().replace("\"127.0.0.1:8080\"", "\"localhost\""),
        "listen",
        &["not a socket address", "0.0.0.0:8080"],
    );
    fails(
        &base().replace("\"127.0.0.1:8080\"", "\"127.0.0.1:99999\""),
        "listen",
        &["not a socket address"],
    );
    fails(
        &with("metrics: { listen: \":9464\" }"),
        "metrics.listen",
        &["not a socket address"],
    );
    let address = |a: &str| base().replace("\"127.0.0.1:9000\"", &format!("\"{a}\""));
    fails(
        &address("http://127.0.0.1:9000"),
        "upstreams.a.address",
        &["has a scheme", "tls: true"],
    );
    fails(
        &address("127.0.0.1"),
        "upstreams.a.address",
        &["lacks a port"],
    );
    fails(
        &address("127.0.0.1:0"),
        "upstreams.a.address",
        &["not in 1..=65535"],
    );
    fails(
        &address("127.0.0.1:+80"),
        "upstreams.a.address",
        &["not a number"],
    );
    fails(
        &address("::1:9000"),
        "upstreams.a.address",
        &["needs brackets"],
    );
    fails(&address("[::1]"), "upstreams.a.address", &["lacks a port"]);
    fails(
        &address(":9000"),
        "upstreams.a.address",
        &["not a host name"],
    );
    fails(
        &base().replace("  b: {", "  \"b c\": {"),
        "upstreams.b c",
        &["upstream name"],
    );
}

#[test]
fn bad_algorithms() {
    fails(
        &with("confirmation: { algs: [ES256, none] }"),
        "confirmation.algs[1]",
        &[
            "\"none\" is not accepted",
            "unsigned",
            "ES256, ES384, EdDSA",
        ],
    );
    fails(
        &with("confirmation: { algs: [HS256] }"),
        "confirmation.algs[0]",
        &["\"HS256\" is not accepted", "HMAC", "RS256, PS256"],
    );
    fails(
        &with("confirmation: { algs: [ES512] }"),
        "confirmation.algs[0]",
        &["not a supported", "EdDSA"],
    );
    fails(
        &with("confirmation: { algs: [] }"),
        "confirmation.algs",
        &["at least one algorithm"],
    );
}

#[test]
fn algorithm_aliases_are_merged() {
    let config = ok(&with("confirmation: { algs: [Ed25519, EdDSA, ES384] }"));
    assert_eq!(
        config.confirmation.algs,
        vec![ProofAlg::EdDsa, ProofAlg::Es384]
    );
}

// ---- session -------------------------------------------------------------------------------------

#[test]
fn cookie_session_needs_a_cookie_name() {
    fails(
        &with_session("{ kind: cookie }"),
        "session.cookie",
        &["kind cookie needs the cookie name"],
    );
    fails(
        &with_session("{ kind: cookie, cookie: \"a;b\" }"),
        "session.cookie",
        &["not a cookie name"],
    );
}

#[test]
fn header_session_needs_a_header_name() {
    fails(
        &with_session("{ kind: header }"),
        "session.header",
        &["kind header needs the header name"],
    );
    fails(
        &with_session("{ kind: header, header: DPoP }"),
        "session.header",
        &["DPoP header"],
    );
}

#[test]
fn bearer_jwt_needs_exactly_one_key_source() {
    fails(
        &with_session("{ kind: bearer_jwt }"),
        "session",
        &["exactly one key source", "none is set"],
    );
    fails(
        &with_session("{ kind: bearer_jwt, jwks_file: jwks.json, public_key_pem: key.pem }"),
        "session.public_key_pem",
        &[
            "exactly one key source",
            "both jwks_file and public_key_pem",
        ],
    );
    fails(
        &with_session("{ kind: bearer_jwt, jwks_file: jwks.json, hs256_secret_env: S }"),
        "session.hs256_secret_env",
        &["both jwks_file and hs256_secret_env"],
    );
    fails(
        &with_session("{ kind: bearer_jwt, hs256_secret_env: \"NOT-A-VAR\" }"),
        "session.hs256_secret_env",
        &["not an environment variable name"],
    );
    fails(
        &with_session("{ kind: bearer_jwt, jwks_file: \"\" }"),
        "session.jwks_file",
        &["must name a file"],
    );
    fails(
        &with_session("{ kind: bearer_jwt, jwks_file: j.json, issuer: \"\" }"),
        "session.issuer",
        &["must not be empty"],
    );
}

#[test]
fn subject_header_needs_trusted_proxies() {
    fails(
        &with_session("{ kind: cookie, cookie: sid, subject_header: x-user }"),
        "session.subject_header",
        &["trusted_proxies"],
    );
}

#[test]
fn session_keys_of_another_kind_are_refused() {
    fails(
        &with_session("{ kind: header, header: x-s, cookie: sid }"),
        "session.cookie",
        &["only used with kind: cookie", "kind: header"],
    );
    fails(
        &with_session("{ kind: cookie, cookie: sid, jwks_file: j.json }"),
        "session.jwks_file",
        &["only used with kind: bearer_jwt"],
    );
    fails(
        &with_session("{ kind: bearer_jwt, jwks_file: j.json, subject_header: x-user }"),
        "session.subject_header",
        &["only used with kind: cookie or header"],
    );
    fails(
        &with_session("{ kind: oauth }"),
        "session.kind",
        &["unknown variant `oauth`", "`bearer_jwt`"],
    );
    fails(
        &with_session("{ kind: header, header: x-s, upstream_scheme: basic }"),
        "session.upstream_scheme",
        &["`bearer` or `dpop`"],
    );
}

#[test]
fn session_kinds_parse() {
    let config = ok(&with_session(
        "{ kind: bearer_jwt, jwks_file: config/idp-jwks.json, issuer: \"https://idp\", audience: api, \
         upstream_scheme: dpop, allow_bearer_scheme: true, binding_ttl: 30m }",
    ));
    match &config.session.kind {
        SessionKind::BearerJwt {
            keys: JwtKeys::JwksFile(file),
            issuer,
            audience,
        } => {
            assert_eq!(file, Path::new("config/idp-jwks.json"));
            assert_eq!(issuer.as_deref(), Some("https://idp"));
            assert_eq!(audience.as_deref(), Some("api"));
        }
        other => panic!("unexpected kind {other:?}"),
    }
    assert_eq!(config.session.upstream_scheme, UpstreamScheme::Dpop);
    assert!(config.session.allow_bearer_scheme);
    assert_eq!(config.session.binding_ttl, Duration::from_secs(1800));

    let config = ok(&with_session(
        "{ kind: bearer_jwt, public_key_pem: idp.pem }",
    ));
    assert!(matches!(
        config.session.kind,
        SessionKind::BearerJwt {
            keys: JwtKeys::PublicKeyPem(_),
            issuer: None,
            audience: None
        }
    ));
    let config = ok(&with_session(
        "{ kind: bearer_jwt, hs256_secret_env: IDP_SECRET }",
    ));
    assert!(matches!(
        &config.session.kind,
        SessionKind::BearerJwt { keys: JwtKeys::Hs256Env(var), .. } if var == "IDP_SECRET"
    ));

    let config = ok(&format!(
        "{}trusted_proxies: [10.0.0.0/8]\n",
        with_session("{ kind: cookie, cookie: SESSIONID, subject_header: X-Auth-User }")
    ));
    assert!(matches!(&config.session.kind, SessionKind::Cookie { name } if name == "SESSIONID"));
    assert_eq!(
        config.session.subject_header.as_deref(),
        Some("x-auth-user")
    );

    let config = ok(&base());
    assert!(matches!(&config.session.kind, SessionKind::Header { name } if name == "x-session"));
}

// ---- store ---------------------------------------------------------------------------------------

#[test]
fn store_settings_are_checked() {
    fails(
        &with("store: { kind: memory, max_entries: 0 }"),
        "store.max_entries",
        &["at least 1"],
    );
    fails(
        &with("store: { kind: redis }"),
        "store.url",
        &["kind redis needs a url"],
    );
    fails(
        &with("store: { kind: redis, url: \"http://127.0.0.1:6379\" }"),
        "store.url",
        &[
            "not a Redis URL",
            "redis://",
            "rediss://",
            "redis+sentinel://",
            "redis+cluster://",
        ],
    );
    fails(
        &with("store: { kind: redis, url: \"redis://\" }"),
        "store.url",
        &["not a Redis URL"],
    );
    fails(
        &with("store: { kind: memory, url: \"redis://r\" }"),
        "store.url",
        &["only used with kind: redis"],
    );
    fails(
        &with("store: { kind: redis, url: \"redis://r\", max_entries: 5 }"),
        "store.max_entries",
        &["only used with kind: memory"],
    );
    fails(
        &with("store: { kind: sqlite }"),
        "store.kind",
        &["`memory` or `redis`"],
    );
    fails(
        &with("store: { max_entries: 5 }"),
        "store",
        &["missing field `kind`"],
    );
}

#[test]
fn redis_store_parses() {
    for url in [
        "redis://127.0.0.1:6379",
        "rediss://r:6380/0",
        "redis+sentinel://s/mymaster",
        "redis+cluster://c:7000",
    ] {
        let config = ok(&with(&format!(
            "store: {{ kind: redis, url: \"{url}\", timeout: 100ms }}"
        )));
        match config.store {
            StoreConfig::Redis { url: got, timeout } => {
                assert_eq!(got, url);
                assert_eq!(timeout, Duration::from_millis(100));
            }
            other => panic!("unexpected store {other:?}"),
        }
    }
    let config = ok(&with("store: { kind: redis, url: \"redis://r\" }"));
    assert!(
        matches!(config.store, StoreConfig::Redis { timeout, .. } if timeout == Duration::from_millis(250))
    );
}

#[test]
fn server_threads_must_be_positive() {
    fails(
        &with("server: { threads: 0 }"),
        "server.threads",
        &["at least 1"],
    );
}

// ---- defaults and explicit values ----------------------------------------------------------------

#[test]
fn defaults_are_applied() {
    let config = ok(&base());
    assert_eq!(config.source, Path::new("test.yaml"));
    assert_eq!(config.listen, "127.0.0.1:8080");
    assert!(config.public_origin.is_none());
    assert!(config.trusted_proxies.is_empty());
    assert!(config.metrics.is_none());

    let a = &config.upstreams["a"];
    assert_eq!(a.name, "a");
    assert_eq!(a.address, "127.0.0.1:9000");
    assert!(!a.tls);
    assert_eq!(a.sni, "127.0.0.1");
    assert_eq!(a.connect_timeout, Duration::from_secs(5));
    assert_eq!(a.read_timeout, Duration::from_secs(30));
    assert_eq!(config.upstreams["b"].sni, "backend.internal");

    assert_eq!(config.session.upstream_scheme, UpstreamScheme::Bearer);
    assert_eq!(config.session.binding_ttl, Duration::from_secs(12 * 3600));
    assert!(!config.session.allow_bearer_scheme);
    assert!(config.session.subject_header.is_none());

    let c = &config.confirmation;
    assert_eq!(c.algs, vec![ProofAlg::Es256, ProofAlg::EdDsa]);
    assert_eq!(c.nonce_ttl, Duration::from_secs(60));
    assert_eq!(c.proof_max_age, Duration::from_secs(60));
    assert_eq!(c.clock_skew, Duration::from_secs(5));
    assert_eq!(c.continuation_ttl, Duration::from_secs(30));
    assert_eq!(c.max_body, 1 << 20);

    assert!(config.provenance.signing_key.is_none());
    assert!(matches!(
        config.store,
        StoreConfig::Memory {
            max_entries: 1_000_000
        }
    ));
    assert!(config.audit.path.is_none());
    assert!(!config.audit.stdout);
    assert!(!config.audit.passthrough);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(config.server.threads, cpus);
    assert_eq!(config.server.grace_period, Duration::from_secs(5));
    assert_eq!(config.server.shutdown_timeout, Duration::from_secs(10));
    assert_eq!(config.log, LogConfig::Pretty);
}

#[test]
fn empty_sections_take_defaults() {
    let config = ok(&with(
        "confirmation: {}\nserver: {}\naudit: {}\nlog: {}\nprovenance: {}",
    ));
    assert_eq!(config.confirmation.nonce_ttl, Duration::from_secs(60));
    assert_eq!(config.server.shutdown_timeout, Duration::from_secs(10));
    assert_eq!(config.log, LogConfig::Pretty);
}

#[test]
fn explicit_values_are_kept() {
    let config = ok(&format!(
        "{}{}",
        base().replace(
            "a: { address: \"127.0.0.1:9000\" }",
            "a: { address: \"[::1]:9443\", tls: true, sni: admin.internal, connect_timeout: 250ms, read_timeout: 2m }"
        ),
        r#"public_origin: "https://admin.example.com"
trusted_proxies: [10.0.0.0/8, 192.0.2.7, "2001:db8::1", "fd00::/8"]
metrics: { listen: "[::1]:9464" }
confirmation: { algs: [ES256], nonce_ttl: 30s, proof_max_age: 2m, clock_skew: 0s, continuation_ttl: 10s, max_body: 64KiB }
provenance: { signing_key: config/gateway-signing.pem }
store: { kind: memory, max_entries: 10 }
audit: { path: /var/log/countersign/audit.jsonl, stdout: true, passthrough: true }
server: { threads: 3, grace_period: 5s, shutdown_timeout: 1m }
log: { format: json }
"#
    ));
    let a = &config.upstreams["a"];
    assert_eq!(
        (a.address.as_str(), a.tls, a.sni.as_str()),
        ("[::1]:9443", true, "admin.internal")
    );
    assert_eq!(a.connect_timeout, Duration::from_millis(250));
    assert_eq!(a.read_timeout, Duration::from_secs(120));
    let net = |s: &str| s.parse::<IpNet>().expect("test network");
    let host = |s: &str| IpNet::from(s.parse::<IpAddr>().expect("test address"));
    assert_eq!(
        config.trusted_proxies,
        vec![
            net("10.0.0.0/8"),
            host("192.0.2.7"),
            host("2001:db8::1"),
            net("fd00::/8")
        ]
    );
    assert_eq!(config.trusted_proxies[1].prefix_len(), 32);
    assert_eq!(config.trusted_proxies[2].prefix_len(), 128);
    assert_eq!(
        config.metrics.as_ref().map(|m| m.listen.as_str()),
        Some("[::1]:9464")
    );
    let c = &config.confirmation;
    assert_eq!(c.algs, vec![ProofAlg::Es256]);
    assert_eq!(c.nonce_ttl, Duration::from_secs(30));
    assert_eq!(c.proof_max_age, Duration::from_secs(120));
    assert_eq!(c.clock_skew, Duration::ZERO);
    assert_eq!(c.continuation_ttl, Duration::from_secs(10));
    assert_eq!(c.max_body, 64 * 1024);
    assert_eq!(
        config.provenance.signing_key.as_deref(),
        Some(Path::new("config/gateway-signing.pem"))
    );
    assert!(matches!(
        config.store,
        StoreConfig::Memory { max_entries: 10 }
    ));
    assert_eq!(
        config.audit.path.as_deref(),
        Some(Path::new("/var/log/countersign/audit.jsonl"))
    );
    assert!(config.audit.stdout && config.audit.passthrough);
    assert_eq!(config.server.threads, 3);
    assert_eq!(config.server.grace_period, Duration::from_secs(5));
    assert_eq!(config.server.shutdown_timeout, Duration::from_secs(60));
    assert_eq!(config.log, LogConfig::Json);
}

// ---- files ---------------------------------------------------------------------------------------

#[test]
fn every_sample_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).expect("config/ exists") {
        let path = entry.expect("readable config/ entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            if let Err(e) = config::load(&path) {
                panic!("{e}");
            }
            loaded += 1;
        }
    }
    assert!(loaded > 0, "no *.yaml file in {}", dir.display());
}

#[test]
fn example_config_is_what_the_docs_say() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.yaml");
    let config = config::load(&path).expect("example loads");
    assert_eq!(config.listen, "127.0.0.1:8080");
    assert!(matches!(&config.session.kind, SessionKind::Header { name } if name == "x-session"));
    let hit = config
        .routes
        .find(&Method::POST, "/api/secrets/db/rotate")
        .expect("rotate route");
    assert_eq!((hit.name.as_str(), hit.risk), ("rotate-secret", Risk::High));
    let last = config.routes.routes().last().expect("routes");
    assert_eq!((last.name.as_str(), last.risk), ("default", Risk::Low));
    assert!(last.template.is_catch_all());
    assert!(config.audit.path.is_none());
    assert!(config.provenance.signing_key.is_none());
}

#[test]
fn unreadable_file_is_a_config_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.yaml");
    let err = config::load(&missing).expect_err("missing file");
    assert_eq!(err.path, "");
    assert_eq!(err.file, missing);
    assert!(err.message.contains("cannot read"), "{}", err.message);

    let not_utf8 = dir.path().join("binary.yaml");
    std::fs::write(&not_utf8, [0xff, 0xfe, 0x00]).expect("write temp file");
    assert_eq!(config::load(&not_utf8).expect_err("binary file").path, "");
}

// ---- robustness ----------------------------------------------------------------------------------

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = parse(&text);
    }

    #[test]
    fn arbitrary_scalars_never_panic(value in "\\PC{0,40}") {
        let quoted = format!("{value:?}");
        let _ = parse(&with(&format!("public_origin: {quoted}")));
        let _ = parse(&with(&format!("trusted_proxies: [{quoted}]")));
        let _ = parse(&with(&format!("confirmation: {{ nonce_ttl: {quoted}, max_body: {quoted}, algs: [{quoted}] }}")));
        let _ = parse(&route("", &value.replace('"', "")));
        let _ = parse(&base().replace("\"127.0.0.1:9000\"", &quoted));
        let _ = config::parse_duration(&value);
        let _ = config::parse_size(&value);
    }
}

// ---- approvals -----------------------------------------------------------------------------------

/// The base config with an `approval:` on its high-impact route.
fn with_approval(approval: &str) -> String {
    base().replace(
        "risk: high",
        &format!("risk: high\n    approval: {approval}"),
    )
}

#[test]
fn an_approval_is_read_with_its_defaults() {
    let config = ok(&with_approval("{ approvers: { subjects: [alice, bob] } }"));
    let route = &config.routes.routes()[0];
    let rule = route.approval.as_ref().expect("an approval rule");
    assert_eq!(rule.subjects, ["alice", "bob"]);
    assert_eq!(rule.quorum, 1);
    assert_eq!(rule.ttl, Duration::from_secs(30 * 60));
    assert!(rule.notify.is_none());
    let config = ok(&with_approval(
        "{ approvers: { subjects: [alice, bob] }, quorum: 2, ttl: 5m }",
    ));
    let rule = config.routes.routes()[0].approval.clone().expect("rule");
    assert_eq!((rule.quorum, rule.ttl), (2, Duration::from_secs(300)));
}

#[test]
fn an_approval_says_what_is_wrong_with_it() {
    fails(
        &base().replace(
            "risk: low",
            "risk: low\n    approval: { approvers: { subjects: [a] } }",
        ),
        "routes[1].approval",
        &["risk: high routes"],
    );
    fails(
        &with_approval("{ approvers: {} }"),
        "routes[0].approval.approvers",
        &["names no approver"],
    );
    fails(
        &with_approval("{ approvers: { subjects: [alice] }, quorum: 0 }"),
        "routes[0].approval.quorum",
        &["at least 1"],
    );
    fails(
        &with_approval("{ approvers: { subjects: [alice, alice] }, quorum: 2 }"),
        "routes[0].approval.quorum",
        &["only 1 distinct"],
    );
    fails(
        &with_approval("{ approvers: { groups: [sre-leads] } }"),
        "routes[0].approval.approvers.groups",
        &["session.groups_claim"],
    );
    fails(
        &with_approval("{ approvers: { subjects: [\"\"] } }"),
        "routes[0].approval.approvers.subjects[0]",
        &["non-empty"],
    );
    fails(
        &with_approval("{ approvers: { subjects: [a] }, ttl: 0s }"),
        "routes[0].approval.ttl",
        &["longer than 0s"],
    );
    fails(
        &with_approval("{ approvers: { subjects: [a] }, quorom: 1 }"),
        "routes[0].approval.quorom",
        &["unknown field", "quorum"],
    );
    fails(
        &with_approval("{ approvers: { subjects: [a] }, notify: { webhook: \"https://hooks.example.com/x\", secret_env: CS_TEST_UNSET_SECRET } }"),
        "routes[0].approval.notify.webhook",
        &["http://"],
    );
}

#[test]
fn a_webhook_secret_must_be_in_the_environment_at_start() {
    let notify = |var: &str| {
        with_approval(&format!(
            "{{ approvers: {{ subjects: [a] }}, notify: {{ webhook: \"http://127.0.0.1:9300/hooks\", secret_env: {var} }} }}"
        ))
    };
    fails(
        &notify("CS_TEST_APPROVAL_SECRET_UNSET"),
        "routes[0].approval.notify.secret_env",
        &["CS_TEST_APPROVAL_SECRET_UNSET", "not set or empty"],
    );
    // Each variable is set by this test alone, before it is read.
    std::env::set_var("CS_TEST_APPROVAL_SECRET_EMPTY", "");
    fails(
        &notify("CS_TEST_APPROVAL_SECRET_EMPTY"),
        "routes[0].approval.notify.secret_env",
        &["not set or empty"],
    );
    std::env::set_var("CS_TEST_APPROVAL_SECRET_SHORT", "short");
    fails(
        &notify("CS_TEST_APPROVAL_SECRET_SHORT"),
        "routes[0].approval.notify.secret_env",
        &["at least 16"],
    );
    std::env::set_var(
        "CS_TEST_APPROVAL_SECRET_OK",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    );
    let config = ok(&notify("CS_TEST_APPROVAL_SECRET_OK"));
    let rule = config.routes.routes()[0].approval.clone().expect("rule");
    let notify = rule.notify.as_ref().expect("notify");
    assert_eq!(notify.webhook.to_string(), "http://127.0.0.1:9300/hooks");
    assert_eq!(notify.secret.key().len(), 24);
}
