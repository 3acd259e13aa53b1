//! Redirect continuations (docs/protocol.md, "Redirects"): when a confirmed action answers with
//! a redirect to another high-impact action on this gateway, the response carries a nonce for
//! exactly the request the client will make next.

use crate::conditions::Fields;
use crate::routes::{self, Risk, RouteTable};

/// SHA-256 of the empty body.
pub const EMPTY_SHA256: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// The confirmed request a redirect answered.
#[derive(Debug, Clone, Copy)]
pub struct Answered<'a> {
    /// Its method.
    pub method: &'a str,
    /// Its origin-form target.
    pub target: &'a str,
    /// SHA-256 of its body.
    pub body_sha256: &'a [u8; 32],
}

/// The request a redirect leads to, when it is a high-impact action on this gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowUp<'a> {
    /// The method the client will use.
    pub method: &'a str,
    /// Its origin-form target.
    pub target: String,
    /// SHA-256 of the body it will carry.
    pub body_sha256: &'a [u8; 32],
}

/// The follow-up of a response with `status` and `location` to `answered`, given `base` (the
/// external origin and prefix the client sees) and the route table.
pub fn follow_up<'a>(
    status: u16,
    location: &str,
    base: &str,
    answered: Answered<'a>,
    routes: &RouteTable,
) -> Option<FollowUp<'a>> {
    if !matches!(status, 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let request_path = answered.target.split('?').next().unwrap_or("/");
    let next = crate::forwarding::gateway_target(location, base, request_path)?;
    // RFC 9110 §15.4: 301/302/303 are followed with GET and no body; 307/308 repeat the request.
    let (method, body_sha256) = if status >= 307 {
        (answered.method, answered.body_sha256)
    } else {
        ("GET", &EMPTY_SHA256)
    };
    let next_method = method.parse::<http::Method>().ok()?;
    let (path, query) = next.split_once('?').unwrap_or((next.as_str(), ""));
    let query = Fields::urlencoded(query.as_bytes());
    let follow = routes::Request {
        query: &query,
        ..routes::Request::plain(&next_method, path)
    };
    routes
        .lookup(&follow)
        .filter(|r| r.risk == Risk::High)
        .map(|_| FollowUp {
            method,
            target: next,
            body_sha256,
        })
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;
    use crate::routes::{PathTemplate, Route};

    fn table() -> RouteTable {
        let route = |name: &str, methods: Option<Vec<Method>>, path: &str, risk: Risk| {
            let template = PathTemplate::parse(path).expect("a valid template");
            Route::new(name, methods, template, "app", risk)
        };
        RouteTable::new(vec![
            route(
                "approve",
                Some(vec![Method::GET, Method::PUT]),
                "/approve/{id}",
                Risk::High,
            ),
            route("list", None, "/users", Risk::Low),
        ])
    }

    const BODY: [u8; 32] = [7; 32];

    fn answered(method: &'static str) -> Answered<'static> {
        Answered {
            method,
            target: "/api/users/1",
            body_sha256: &BODY,
        }
    }

    const BASE: &str = "https://admin.example";

    #[test]
    fn a_303_to_a_high_impact_route_is_followed_with_get_and_no_body() {
        let next = follow_up(303, "/approve/9?x=1", BASE, answered("DELETE"), &table());
        assert_eq!(
            next,
            Some(FollowUp {
                method: "GET",
                target: "/approve/9?x=1".to_string(),
                body_sha256: &EMPTY_SHA256,
            })
        );
    }

    #[test]
    fn a_307_repeats_the_method_and_the_body() {
        let next = follow_up(
            307,
            "https://admin.example/approve/9",
            BASE,
            answered("PUT"),
            &table(),
        );
        assert_eq!(
            next,
            Some(FollowUp {
                method: "PUT",
                target: "/approve/9".to_string(),
                body_sha256: &BODY,
            })
        );
    }

    #[test]
    fn no_follow_up_to_low_risk_routes_other_origins_or_non_redirects() {
        let t = table();
        assert_eq!(follow_up(302, "/users", BASE, answered("POST"), &t), None);
        assert_eq!(
            follow_up(
                302,
                "https://evil.example/approve/9",
                BASE,
                answered("POST"),
                &t
            ),
            None
        );
        assert_eq!(
            follow_up(200, "/approve/9", BASE, answered("POST"), &t),
            None
        );
        assert_eq!(
            follow_up(304, "/approve/9", BASE, answered("POST"), &t),
            None
        );
    }

    #[test]
    fn a_relative_location_resolves_against_the_answered_target() {
        let next = follow_up(302, "../../approve/3", BASE, answered("POST"), &table());
        assert_eq!(next.map(|f| f.target), Some("/approve/3".to_string()));
    }
}
