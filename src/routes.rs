//! The compiled route table: a request (its methods, path, query and body fields) → the first
//! configured [`Route`] that matches, with its risk and upstream. Templates are parsed once at
//! load; matching walks the request path segment by segment without allocating. Every reading a
//! lenient upstream could give the request (another method through an override, a decoded or
//! resolved path) is matched too, and a high-impact match wins.

use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::conditions::{Body, Conditions, Fields};

/// How a route is treated: proxied untouched, or only with a confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Risk {
    /// Proxied untouched, streamed.
    Low,
    /// Executes only with a confirmation (docs/protocol.md, "The exchange").
    High,
}

impl Risk {
    /// The config and log name: `low` or `high`.
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::High => "high",
        }
    }
}

/// One segment of a compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Must equal the request segment exactly.
    Literal(String),
    /// `{name}`: exactly one non-empty segment.
    Param,
    /// `{*name}`: the rest of the path, possibly empty, slashes included.
    CatchAll,
}

/// A path template such as `/api/users/{id}` or `/static/{*rest}`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segments: Vec<Segment>,
}

impl PathTemplate {
    /// Parses and compiles a template; the error says what is wrong and what is expected.
    pub fn parse(template: &str) -> Result<PathTemplate, TemplateError> {
        let Some(body) = template.strip_prefix('/') else {
            return Err(TemplateError(format!(
                "path template {template:?} must start with '/', e.g. \"/api/users/{{id}}\""
            )));
        };
        if let Some(bad) = body
            .chars()
            .find(|c| matches!(c, '?' | '#') || c.is_whitespace() || c.is_control())
        {
            return Err(TemplateError(format!(
                "path template {template:?}: character {bad:?} cannot appear in a request path (templates match the path only, without query)"
            )));
        }
        let raw: Vec<&str> = body.split('/').collect();
        let mut names: Vec<&str> = Vec::new();
        let mut segments = Vec::with_capacity(raw.len());
        for (i, part) in raw.iter().enumerate() {
            let last = i + 1 == raw.len();
            if part.is_empty() && !last {
                return Err(TemplateError(format!(
                    "path template {template:?} has an empty segment (\"//\")"
                )));
            }
            let segment = if let Some(inner) =
                part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
            {
                let (name, segment) = match inner.strip_prefix('*') {
                    Some(name) if last => (name, Segment::CatchAll),
                    Some(_) => {
                        return Err(TemplateError(format!(
                            "path template {template:?}: the catch-all {part:?} must be the last segment"
                        )))
                    }
                    None => (inner, Segment::Param),
                };
                if !is_param_name(name) {
                    return Err(TemplateError(format!(
                        "path template {template:?}: parameter name {name:?} must match [A-Za-z_][A-Za-z0-9_]*"
                    )));
                }
                if names.contains(&name) {
                    return Err(TemplateError(format!(
                        "path template {template:?}: parameter {name:?} appears twice"
                    )));
                }
                names.push(name);
                segment
            } else {
                if let Some(fix) = foreign_syntax(part) {
                    return Err(TemplateError(format!(
                        "path template {template:?}: segment {part:?} looks like another router's syntax; {fix}"
                    )));
                }
                if part.contains(['{', '}']) {
                    return Err(TemplateError(format!(
                        "path template {template:?}: segment {part:?} has a stray brace; a parameter is a whole segment, {{name}} or {{*name}}"
                    )));
                }
                Segment::Literal((*part).to_string())
            };
            segments.push(segment);
        }
        Ok(PathTemplate {
            source: template.to_string(),
            segments,
        })
    }

    /// Whether the request path (without query) matches. A trailing `{*name}` also matches when
    /// the path ends right before it (`/api/{*rest}` matches `/api`, `/api/` and `/api/a/b`).
    pub fn matches(&self, path: &str) -> bool {
        self.match_with(path, |literal, segment| segment == literal)
    }

    /// [`PathTemplate::matches`] with literal segments compared without regard to ASCII case,
    /// as case-insensitive upstreams compare them.
    pub fn matches_ignoring_case(&self, path: &str) -> bool {
        self.match_with(path, |literal, segment| {
            segment.eq_ignore_ascii_case(literal)
        })
    }

    /// Whether a path in its canonical form ([`canonical_path`]: no trailing slash) matches
    /// the template read the same way: literals without regard to case, a trailing slash of the
    /// template dropped (`/users/{id}/delete/` matches `/users/5/delete`).
    pub fn matches_canonical(&self, canonical: &str) -> bool {
        let segments = match self.segments.split_last() {
            Some((Segment::Literal(last), rest)) if last.is_empty() && !rest.is_empty() => rest,
            _ => &self.segments[..],
        };
        Self::walk(segments, canonical, |literal, segment| {
            segment.eq_ignore_ascii_case(literal)
        })
    }

    fn match_with(&self, path: &str, literal_eq: impl Fn(&str, &str) -> bool) -> bool {
        Self::walk(&self.segments, path, literal_eq)
    }

    fn walk(segments: &[Segment], path: &str, literal_eq: impl Fn(&str, &str) -> bool) -> bool {
        let Some(body) = path.strip_prefix('/') else {
            return false;
        };
        let mut rest = Some(body);
        for segment in segments {
            let remaining = match (segment, rest) {
                (Segment::CatchAll, _) => return true,
                (_, None) => return false,
                (_, Some(remaining)) => remaining,
            };
            let (head, tail) = match remaining.split_once('/') {
                Some((head, tail)) => (head, Some(tail)),
                None => (remaining, None),
            };
            let ok = match segment {
                Segment::Literal(literal) => literal_eq(literal, head),
                Segment::Param => !head.is_empty(),
                Segment::CatchAll => true,
            };
            if !ok {
                return false;
            }
            rest = tail;
        }
        rest.is_none()
    }

    /// The template as written in the config.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether this template is a bare catch-all such as `/{*rest}`, matching every path.
    pub fn is_catch_all(&self) -> bool {
        matches!(self.segments.as_slice(), [Segment::CatchAll])
    }
}

/// What to write instead of a segment in another router's syntax (`:id`, `<id>`, `*`, a regex),
/// which would otherwise be a literal that never matches.
fn foreign_syntax(part: &str) -> Option<&'static str> {
    if part.starts_with(':') || (part.starts_with('<') && part.ends_with('>')) {
        Some("write a parameter as {name}, e.g. /things/{id}")
    } else if part.contains('*') {
        Some("write the rest of the path as a last segment {*rest}")
    } else if part.contains(['(', ')', '[', ']', '^', '$', '|', '+', '<', '>'])
        || part.contains(".*")
    {
        Some("templates are not regular expressions: use literal segments, {name} and {*rest}")
    } else {
        None
    }
}

fn is_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A path template that cannot be used: what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// `routes[i].require`: RFC 9470 step-up for `bearer_jwt` sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUp {
    /// Accepted `acr` values; empty accepts any.
    pub acr: Vec<String>,
    /// Oldest accepted `auth_time`.
    pub max_age: Option<Duration>,
}

/// One configured route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its name, used in audit records, metric labels and the provenance token.
    pub name: String,
    /// Methods it matches; `None` matches every method.
    pub methods: Option<Vec<Method>>,
    /// Path template it matches.
    pub template: PathTemplate,
    /// Name of the upstream it forwards to.
    pub upstream: String,
    /// Whether it needs a confirmation.
    pub risk: Risk,
    /// Query, form and JSON conditions (`match.query/form/json`).
    pub conditions: Conditions,
    /// `false`: observe mode, a high-impact route that forwards unconfirmed requests and audits
    /// them as `observed`.
    pub enforce: bool,
    /// Whether WebSocket upgrades may pass (`websocket: true`, low-risk routes only).
    pub websocket: bool,
    /// RFC 9470 step-up required of `bearer_jwt` sessions (`require:`).
    pub require: Option<StepUp>,
    /// People who must approve its action before it runs (`approval:`).
    pub approval: Option<std::sync::Arc<crate::approvals::Rule>>,
}

impl Route {
    /// A route with no conditions, enforcing, without upgrades.
    pub fn new(
        name: &str,
        methods: Option<Vec<Method>>,
        template: PathTemplate,
        upstream: &str,
        risk: Risk,
    ) -> Route {
        Route {
            name: name.to_string(),
            methods,
            template,
            upstream: upstream.to_string(),
            risk,
            conditions: Conditions::default(),
            enforce: true,
            websocket: false,
            require: None,
            approval: None,
        }
    }

    /// Whether this route matches the request method and path (conditions aside).
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        self.accepts(method) && self.template.matches(path)
    }

    /// Whether the route takes this method. A route listing GET also takes HEAD: most
    /// frameworks run the GET handler for a HEAD (RFC 9110 §9.3.2), so a HEAD must not slip
    /// past a high-impact GET route.
    pub fn accepts(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|methods| {
            methods.contains(method) || (*method == Method::HEAD && methods.contains(&Method::GET))
        })
    }
}

/// Routes in config order; the first one that matches wins.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// A high-impact template ends in `/`: every path is also read loosely, since lenient
    /// routers treat `/x/delete` as `/x/delete/`.
    loose_always: bool,
}

impl RouteTable {
    /// Builds the table, keeping the order given.
    pub fn new(routes: Vec<Route>) -> RouteTable {
        let loose_always = routes.iter().any(|r| {
            r.risk == Risk::High
                && r.template.as_str().len() > 1
                && r.template.as_str().ends_with('/')
        });
        RouteTable {
            routes: routes.into_iter().map(Arc::new).collect(),
            loose_always,
        }
    }

    /// The route called `name`, if this table has one.
    pub fn named(&self, name: &str) -> Option<Arc<Route>> {
        self.routes.iter().find(|r| r.name == name).cloned()
    }

    /// The first route matching `method` and `path` (the path without query) with no regard to
    /// conditions, if any: where a redirect leads, for continuation nonces.
    pub fn find(&self, method: &Method, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|route| route.matches(method, path))
    }

    /// The route for a request. The request line's method and path are matched first, first
    /// route wins. Then every other reading a lenient upstream could give the request: each
    /// method it stands for through an override; a lower-case method upper-cased; a path with
    /// dot or empty segments, backslashes, percent-encoding, `;` parameters, a trailing slash or
    /// upper-case letters in its canonical form ([`canonical_path`]), literals without regard to
    /// case. If any reading reaches a high-impact route, that route applies, so an upstream that
    /// normalises or honours overrides cannot be reached around a confirmation.
    pub fn lookup(&self, req: &Request<'_>) -> Option<&Arc<Route>> {
        let strict = |method: &Method| {
            self.routes.iter().find(|r| {
                r.matches(method, req.path)
                    && r.conditions.hold(req.query, req.body, r.risk == Risk::High)
            })
        };
        let raw = strict(req.method);
        if raw.is_some_and(|r| r.risk == Risk::High) {
            return raw;
        }
        let mut first_override = None;
        for method in req.overrides {
            let hit = strict(method);
            if hit.is_some_and(|r| r.risk == Risk::High) {
                return hit;
            }
            first_override = first_override.or(hit);
        }
        let odd_method = req.method.as_str().bytes().any(|b| b.is_ascii_lowercase());
        let loose_needed =
            self.loose_always || odd_method || req.any_method || is_ambiguous(req.path);
        if loose_needed {
            let canonical = canonical_path(req.path);
            let loose_method =
                Method::from_bytes(req.method.as_str().to_ascii_uppercase().as_bytes())
                    .unwrap_or_else(|_| req.method.clone());
            let loose = |route: &&Arc<Route>| {
                route.risk == Risk::High
                    && (req.any_method
                        || route.accepts(&loose_method)
                        || req.overrides.iter().any(|m| route.accepts(m)))
                    && (route.template.matches_canonical(&canonical)
                        || route.template.matches_ignoring_case(req.path))
                    && route.conditions.hold(req.query, req.body, true)
            };
            if let Some(high) = self.routes.iter().find(loose) {
                return Some(high);
            }
        }
        raw.or(first_override)
    }

    /// Whether the body must be read before routing: a route that could match by method and
    /// path has body conditions, or the body is a form whose `_method` field could make the
    /// request stand for the method of a high-impact route on this path.
    pub fn needs_body(
        &self,
        method: &Method,
        overrides: &[Method],
        path: &str,
        form: bool,
    ) -> bool {
        let mut canonical = None;
        self.routes.iter().any(|r| {
            let by_body = r.conditions.on_body() || (form && r.risk == Risk::High);
            if !by_body {
                return false;
            }
            let by_method = form
                || r.accepts(method)
                || overrides.iter().any(|m| r.accepts(m))
                || r.risk == Risk::High;
            if !by_method {
                return false;
            }
            r.template.matches(path)
                || (r.risk == Risk::High && {
                    let c = canonical.get_or_insert_with(|| canonical_path(path));
                    r.template.matches_canonical(c) || r.template.matches_ignoring_case(path)
                })
        })
    }

    /// Whether a high-impact route matches this path (any reading, any method).
    pub fn high_on_path(&self, path: &str) -> bool {
        let canonical = canonical_path(path);
        self.routes.iter().any(|r| {
            r.risk == Risk::High
                && (r.template.matches(path) || r.template.matches_canonical(&canonical))
        })
    }

    /// Every route, in match order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// A request as the router sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The request line's method.
    pub method: &'a Method,
    /// Further methods it stands for (override headers, `_method`).
    pub overrides: &'a [Method],
    /// `true` when an unreadable form body could name any method: every method is considered.
    pub any_method: bool,
    /// The path, without query.
    pub path: &'a str,
    /// The query's parameters.
    pub query: &'a Fields,
    /// What was read of the body (`Body::Other` when it was not needed).
    pub body: &'a Body,
}

impl<'a> Request<'a> {
    /// A request with nothing but a method and a path.
    pub fn plain(method: &'a Method, path: &'a str) -> Request<'a> {
        static NO_FIELDS: Fields = Fields::empty();
        Request {
            method,
            overrides: &[],
            any_method: false,
            path,
            query: &NO_FIELDS,
            body: &Body::Other,
        }
    }
}

/// Whether a path may mean something else to an upstream that normalises it.
fn is_ambiguous(path: &str) -> bool {
    path.bytes()
        .any(|b| matches!(b, b'%' | b'\\' | b';') || b.is_ascii_uppercase())
        || path.contains("//")
        || path.contains("/.")
        || (path.len() > 1 && path.ends_with('/'))
}

/// The most-decoded reading of a path: backslashes and encoded slashes become `/`, encoded
/// unreserved characters are decoded (RFC 3986 §6.2.2.2), dot segments are removed (§5.2.4),
/// empty segments, `;` path parameters and a trailing slash are dropped.
pub fn canonical_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let hex = |c: u8| (c as char).to_digit(16);
        if b == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = (h * 16 + l) as u8;
                if c == b'/' || c == b'\\' {
                    decoded.push('/');
                } else if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    decoded.push(c as char);
                } else {
                    decoded.push('%');
                    decoded.push((bytes[i + 1] as char).to_ascii_uppercase());
                    decoded.push((bytes[i + 2] as char).to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        decoded.push(if b == b'\\' { '/' } else { b as char });
        i += 1;
    }
    let mut out: Vec<&str> = Vec::new();
    // Path parameters (`/users;jsessionid=x/42`) are dropped by servlet containers.
    for segment in decoded
        .split('/')
        .map(|s| s.split(';').next().unwrap_or(""))
    {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    // Without a trailing slash: lenient routers treat `/users/42/` as `/users/42`.
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_resolve_every_disguise() {
        assert_eq!(canonical_path("/api/./users/1"), "/api/users/1");
        assert_eq!(canonical_path("/api//users/1"), "/api/users/1");
        assert_eq!(canonical_path("/api/%75sers/1"), "/api/users/1");
        assert_eq!(canonical_path("/api/x/../users/1"), "/api/users/1");
        assert_eq!(canonical_path("/api/%2e%2e/api/users/1"), "/api/users/1");
        assert_eq!(canonical_path("/api%2Fusers%5c1"), "/api/users/1");
        assert_eq!(canonical_path("/api\\users\\1"), "/api/users/1");
        assert_eq!(canonical_path("/a%20b/"), "/a%20b");
        assert_eq!(
            canonical_path("/api/users;jsessionid=1/42;v=2"),
            "/api/users/42"
        );
        assert_eq!(canonical_path("/%zz"), "/%zz");
    }

    #[test]
    fn head_is_matched_by_a_get_route() {
        let table = RouteTable::new(vec![
            route(
                "confirm",
                Some(&[Method::GET]),
                "/deploys/{id}/confirm",
                Risk::High,
            ),
            route("default", None, "/{*rest}", Risk::Low),
        ]);
        let found = table
            .lookup(&Request::plain(&Method::HEAD, "/deploys/17/confirm"))
            .expect("route");
        assert_eq!(found.name, "confirm");
        let found = table
            .lookup(&Request::plain(&Method::POST, "/deploys/17/confirm"))
            .expect("route");
        assert_eq!(found.name, "default");
    }

    #[test]
    fn a_disguised_path_still_reaches_the_high_impact_route() {
        let table = RouteTable::new(vec![
            route(
                "delete",
                Some(&[Method::DELETE]),
                "/api/users/{id}",
                Risk::High,
            ),
            route("default", None, "/{*rest}", Risk::Low),
        ]);
        for path in [
            "/api/./users/1",
            "/api//users/1",
            "/api/%75sers/1",
            "/api%2Fusers/1",
            "/api/users/a%2Fb",
            "/api/users/1/",
            "/API/Users/1",
            "/api/users;x=1/1",
        ] {
            let found = table
                .lookup(&Request::plain(&Method::DELETE, path))
                .expect("a route matches");
            assert_eq!(found.name, "delete", "{path}");
        }
        assert_eq!(
            table
                .lookup(&Request::plain(&Method::DELETE, "/api/users"))
                .expect("route")
                .name,
            "default"
        );
        let lower = Method::from_bytes(b"delete").expect("an extension method");
        assert_eq!(
            table
                .lookup(&Request::plain(&lower, "/api/users/1"))
                .expect("route")
                .name,
            "delete"
        );
    }

    fn template(text: &str) -> PathTemplate {
        PathTemplate::parse(text).expect("test template is valid")
    }

    fn route(name: &str, methods: Option<&[Method]>, path: &str, risk: Risk) -> Route {
        Route::new(
            name,
            methods.map(<[Method]>::to_vec),
            template(path),
            "legacy-admin",
            risk,
        )
    }

    #[test]
    fn literal_templates_match_exactly() {
        let t = template("/api/users");
        assert!(t.matches("/api/users"));
        assert!(!t.matches("/api/users/"));
        assert!(!t.matches("/api/Users"));
        assert!(!t.matches("/api/users/1"));
        assert!(!t.matches("/api"));
        assert!(!t.matches("api/users"));
        assert!(!t.matches(""));
    }

    #[test]
    fn root_template_matches_only_root() {
        let t = template("/");
        assert!(t.matches("/"));
        assert!(!t.matches("/a"));
        assert!(!t.matches(""));
    }

    #[test]
    fn trailing_slash_is_a_literal_empty_segment() {
        let t = template("/api/users/");
        assert!(t.matches("/api/users/"));
        assert!(!t.matches("/api/users"));
    }

    #[test]
    fn params_match_one_non_empty_segment() {
        let t = template("/api/users/{id}");
        assert!(t.matches("/api/users/42"));
        assert!(t.matches("/api/users/a%2Fb"));
        assert!(!t.matches("/api/users/"));
        assert!(!t.matches("/api/users"));
        assert!(!t.matches("/api/users/42/roles"));
        let t = template("/api/secrets/{name}/rotate");
        assert!(t.matches("/api/secrets/db/rotate"));
        assert!(!t.matches("/api/secrets//rotate"));
        assert!(!t.matches("/api/secrets/db/rotate/now"));
    }

    #[test]
    fn catch_all_matches_the_rest_including_empty() {
        let t = template("/{*rest}");
        assert!(t.is_catch_all());
        for path in ["/", "/a", "/a/b/c", "//x", "/a/"] {
            assert!(t.matches(path), "{path}");
        }
        assert!(!t.matches(""));
        assert!(!t.matches("*"));

        let t = template("/static/{*file}");
        assert!(!t.is_catch_all());
        assert!(t.matches("/static"));
        assert!(t.matches("/static/"));
        assert!(t.matches("/static/css/site.css"));
        assert!(!t.matches("/statics"));
        assert!(!t.matches("/other/static"));
    }

    #[test]
    fn as_str_returns_the_source() {
        assert_eq!(template("/a/{b}/{*c}").as_str(), "/a/{b}/{*c}");
    }

    #[test]
    fn bad_templates_say_why() {
        let cases = [
            ("", "must start with '/'"),
            ("api/users", "must start with '/'"),
            ("/api//users", "empty segment"),
            ("/{*rest}/x", "must be the last segment"),
            ("/{}", "parameter name"),
            ("/{*}", "parameter name"),
            ("/{1id}", "parameter name"),
            ("/{id-x}", "parameter name"),
            ("/{id}/{id}", "appears twice"),
            ("/{a}/{*a}", "appears twice"),
            ("/files/{name}.json", "stray brace"),
            ("/files/{name", "stray brace"),
            ("/files/name}", "stray brace"),
            ("/{{id}}", "parameter name"),
            ("/search?q=1", "without query"),
            ("/a b", "without query"),
        ];
        for (text, want) in cases {
            let err = PathTemplate::parse(text).expect_err(text);
            assert!(err.0.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn first_matching_route_wins() {
        let table = RouteTable::new(vec![
            route(
                "delete-user",
                Some(&[Method::DELETE]),
                "/api/users/{id}",
                Risk::High,
            ),
            route("default", None, "/{*rest}", Risk::Low),
        ]);
        assert_eq!(table.len(), 2);
        assert!(!table.is_empty());
        let hit = table
            .find(&Method::DELETE, "/api/users/7")
            .expect("delete matches");
        assert_eq!(hit.name, "delete-user");
        assert_eq!(hit.risk, Risk::High);
        let hit = table
            .find(&Method::GET, "/api/users/7")
            .expect("catch-all matches");
        assert_eq!(hit.name, "default");
        assert_eq!(hit.risk.as_str(), "low");
        assert_eq!(table.routes()[0].name, "delete-user");
    }

    #[test]
    fn no_route_means_none() {
        let table = RouteTable::new(vec![route(
            "rotate",
            Some(&[Method::POST]),
            "/api/secrets/{name}/rotate",
            Risk::High,
        )]);
        assert!(table.find(&Method::POST, "/api/secrets/x").is_none());
        assert!(table.find(&Method::GET, "/api/secrets/x/rotate").is_none());
        assert!(RouteTable::default().find(&Method::GET, "/").is_none());
    }
}
