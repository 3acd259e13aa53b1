//! What the upstream sees and what the client sees back: header hygiene on every forwarded
//! request (RFC 9110 §7.6.1 hop-by-hop, `DPoP`, forged `Countersign-*`), `X-Forwarded-*`
//! (docs/protocol.md, "Forwarding and provenance"), the external URI a proof's `htu` must name,
//! and `Location` rewriting.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;
use pingora::http::RequestHeader;

use crate::config::{PublicOrigin, UpstreamScheme};

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the legacy `keep-alive`/`proxy-connection`), in
/// either direction: the relay and Pingora own the connection's framing.
pub(crate) const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// With `session.upstream_scheme: bearer`, a DPoP-bound token goes upstream as
/// `Authorization: Bearer`, the scheme a legacy app reads.
pub fn rewrite_authorization(
    up: &mut RequestHeader,
    scheme: UpstreamScheme,
) -> pingora::Result<()> {
    if scheme != UpstreamScheme::Bearer {
        return Ok(());
    }
    let rewritten = up
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("dpop"))
        .map(|(_, token)| format!("Bearer {}", token.trim_start()));
    if let Some(value) = rewritten {
        up.insert_header(http::header::AUTHORIZATION, value)?;
    }
    Ok(())
}

/// The client connection, as far as forwarding decisions go.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// Peer address.
    pub ip: Option<IpAddr>,
    /// Whether the peer is in `trusted_proxies`.
    pub trusted: bool,
}

impl Peer {
    /// Classifies a peer address against `trusted_proxies`.
    pub fn new(ip: Option<IpAddr>, trusted_proxies: &[IpNet]) -> Peer {
        let trusted = ip.is_some_and(|ip| {
            let ip = canonical(ip);
            trusted_proxies.iter().any(|net| net.contains(&ip))
        });
        Peer { ip, trusted }
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// How the request body is framed upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Pingora streams the body and owns `Transfer-Encoding`, `Connection` and `Upgrade`.
    Streamed,
    /// The gateway sends a buffered body with its own `Content-Length`.
    Buffered,
}

/// Headers some servers route on instead of the request line (IIS/ASP.NET, older Symfony and
/// Zend): the router never saw them, so they never reach the upstream.
const PATH_OVERRIDES: [&str; 2] = ["x-original-url", "x-rewrite-url"];

/// Removes hop-by-hop headers, path-override headers, `DPoP` and every client-sent
/// `Countersign-*` header.
pub fn strip_request(req: &mut RequestHeader, framing: Framing) {
    // Only what is present is touched, and nothing is allocated unless the client sent a
    // `Connection` list or headers it may not send: this runs on every passthrough request.
    let mut listed: Vec<String> = Vec::new();
    for value in req.headers.get_all(http::header::CONNECTION) {
        if let Ok(v) = value.to_str() {
            listed.extend(
                v.split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .filter(|t| !t.is_empty() && t != "upgrade"),
            );
        }
    }
    let forged =
        |n: &str| n == "dpop" || n.starts_with("countersign-") || PATH_OVERRIDES.contains(&n);
    if req.headers.keys().any(|n| forged(n.as_str())) {
        listed.extend(
            req.headers
                .keys()
                .map(|n| n.as_str())
                .filter(|n| forged(n))
                .map(str::to_owned),
        );
    }
    let buffered = framing == Framing::Buffered;
    for name in HOP_BY_HOP {
        let owned_by_pingora = matches!(name, "transfer-encoding" | "upgrade" | "connection");
        if (buffered || !owned_by_pingora) && req.headers.contains_key(name) {
            req.remove_header(name);
        }
    }
    if buffered {
        req.remove_header("content-length");
        req.remove_header("expect");
    }
    for name in listed {
        req.remove_header(&name);
    }
}

/// How the client addressed the gateway: scheme, host and path prefix, as far as this gateway
/// may believe them. `X-Forwarded-Proto/Host/Prefix` and RFC 7239 `Forwarded` count only from a
/// trusted proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientView {
    /// `http` or `https`.
    pub scheme: String,
    /// Host (with port) the client used.
    pub host: Option<String>,
    /// Path prefix an outer proxy stripped, without trailing slash.
    pub prefix: String,
}

impl ClientView {
    /// Reads the view from a request.
    pub fn of(headers: &HeaderMap, uri: &http::Uri, peer: Peer) -> ClientView {
        let forwarded = if peer.trusted {
            last_forwarded(headers)
        } else {
            Default::default()
        };
        let trusted = |name| {
            if peer.trusted {
                header_str(headers, name)
                    .map(|v| v.rsplit(',').next().unwrap_or(v).trim().to_string())
            } else {
                None
            }
        };
        let scheme = trusted("x-forwarded-proto")
            .or(forwarded.proto)
            .filter(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"))
            .map_or_else(|| "http".to_string(), |s| s.to_ascii_lowercase());
        // Only a valid authority is believed as the host (it reaches `Forwarded` and htu).
        let host = trusted("x-forwarded-host")
            .or(forwarded.host)
            .filter(|h| crate::target::valid_authority(h))
            .or_else(|| header_str(headers, "host").map(str::to_owned))
            .or_else(|| uri.authority().map(|a| a.as_str().to_owned()));
        let prefix = trusted("x-forwarded-prefix")
            .filter(|p| p.starts_with('/'))
            .map(|p| p.trim_end_matches('/').to_string())
            .unwrap_or_default();
        ClientView {
            scheme,
            host,
            prefix,
        }
    }

    /// The external URI of a request path (the `htu` of docs/protocol.md), before normalisation:
    /// `public_origin` + its prefix + path when configured, else what the client used.
    pub fn external_uri(&self, public: Option<&PublicOrigin>, path: &str) -> String {
        format!("{}{path}", self.base(public))
    }

    /// `scheme://host[/prefix]` as the client sees the gateway.
    pub fn base(&self, public: Option<&PublicOrigin>) -> String {
        match public {
            Some(o) => format!("{}{}", o.origin(), o.prefix),
            None => format!(
                "{}://{}{}",
                self.scheme,
                self.host.as_deref().unwrap_or("localhost"),
                self.prefix
            ),
        }
    }
}

#[derive(Default)]
struct ForwardedElement {
    proto: Option<String>,
    host: Option<String>,
}

/// The last element of RFC 7239 `Forwarded`: the one our trusted peer appended. Elements to its
/// left may come from the client and are not believed (the same holds for the rightmost value
/// of `X-Forwarded-Proto/Host/Prefix`).
fn last_forwarded(headers: &HeaderMap) -> ForwardedElement {
    let mut out = ForwardedElement::default();
    let Some(value) = header_str(headers, "forwarded") else {
        return out;
    };
    let last = value.rsplit(',').next().unwrap_or("");
    for pair in last.split(';') {
        let Some((k, v)) = pair.trim().split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_string();
        match k.trim().to_ascii_lowercase().as_str() {
            "proto" => out.proto = Some(v),
            "host" => out.host = Some(v),
            _ => {}
        }
    }
    out
}

/// Sets `X-Forwarded-For/Proto/Host` and `Forwarded`: appended to (For, Forwarded) or kept
/// (Proto, Host, Prefix) from a trusted proxy, replaced from anyone else.
pub fn set_forwarded(req: &mut RequestHeader, peer: Peer, view: &ClientView) {
    let ip = peer.ip.map(canonical);
    let ip_text = ip.map(|ip| ip.to_string());
    let append = |prior: Option<&str>, new: Option<String>| match (peer.trusted, prior, new) {
        (true, Some(prior), Some(new)) => Some(format!("{prior}, {new}")),
        (_, _, new) => new,
    };
    let xff = append(header_str(&req.headers, "x-forwarded-for"), ip_text.clone());
    let node = ip.map(|ip| match ip {
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
        v4 => v4.to_string(),
    });
    let element = node.map(|n| {
        let host = view
            .host
            .as_deref()
            .map_or_else(String::new, |h| format!(";host={}", quoted(h)));
        format!("for={n};proto={}{host}", view.scheme)
    });
    let forwarded = append(header_str(&req.headers, "forwarded"), element);
    set_or_remove(req, "x-forwarded-for", xff.as_deref());
    set_or_remove(req, "forwarded", forwarded.as_deref());
    if !peer.trusted {
        req.remove_header("x-forwarded-prefix");
    }
    set_or_remove(req, "x-forwarded-proto", Some(&view.scheme));
    set_or_remove(req, "x-forwarded-host", view.host.as_deref());
}

/// An RFC 7239 §4 quoted-string (RFC 9110 §5.6.4: `"` and `\` escaped).
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn set_or_remove(req: &mut RequestHeader, name: &'static str, value: Option<&str>) {
    // A value that is not a valid header value is dropped rather than forwarded.
    let ok = value.is_some_and(|v| req.insert_header(name, v).is_ok());
    if !ok {
        req.remove_header(name);
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Splits an absolute or scheme-relative URL into its normalised origin
/// (`scheme://host[:port]`, lower case, default port dropped) and the rest (path, query,
/// fragment, as written). `default_scheme` completes a scheme-relative `//host/...`.
fn split_origin<'a>(url: &'a str, default_scheme: &str) -> Option<(String, &'a str)> {
    let (scheme, after) = match url.split_once("://") {
        Some((scheme, after))
            if scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            (scheme.to_ascii_lowercase(), after)
        }
        _ => (default_scheme.to_ascii_lowercase(), url.strip_prefix("//")?),
    };
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    let authority = authority.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => "",
    };
    let authority = match authority.strip_suffix(default_port) {
        Some(host) if !default_port.is_empty() => host.to_string(),
        _ => authority,
    };
    Some((format!("{scheme}://{authority}"), rest))
}

/// Rewrites an absolute (or scheme-relative) URL on one of the upstream's own origins to the
/// public base; relative and foreign URLs are left alone (`None`). Origins compare normalised,
/// so `HTTP://Host:80/x` and `//host/x` are the upstream's too.
pub fn rewrite_location(
    location: &str,
    upstream_origins: &[String],
    public_base: &str,
) -> Option<String> {
    let scheme = public_base.split("://").next().unwrap_or("http");
    let (origin, rest) = split_origin(location, scheme)?;
    upstream_origins
        .iter()
        .filter_map(|o| split_origin(o, scheme).map(|(o, _)| o))
        .any(|o| o == origin)
        .then(|| format!("{public_base}{rest}"))
}

/// Rewrites the URL of a `Refresh: 5; url=...` header like a `Location`.
pub fn rewrite_refresh(
    refresh: &str,
    upstream_origins: &[String],
    public_base: &str,
) -> Option<String> {
    let at = refresh.to_ascii_lowercase().find("url=")? + 4;
    let (head, url) = refresh.split_at(at);
    let quote = url.chars().next().filter(|c| *c == '\'' || *c == '"');
    let inner = quote.map_or(url, |q| url.trim_start_matches(q).trim_end_matches(q));
    let rewritten = rewrite_location(inner, upstream_origins, public_base)?;
    Some(match quote {
        Some(q) => format!("{head}{q}{rewritten}{q}"),
        None => format!("{head}{rewritten}"),
    })
}

/// The origin-form target (path and query) a `Location` leads to on this gateway, if it leads
/// here at all, resolved as a client following it would (RFC 3986 §5.2): absolute on the public
/// base (origins compared normalised), absolute-path, or relative to `request_path`, with dot
/// segments removed.
pub fn gateway_target(location: &str, public_base: &str, request_path: &str) -> Option<String> {
    let location = location.split('#').next().unwrap_or("");
    let scheme = public_base.split("://").next().unwrap_or("http");
    let (base_origin, prefix) = split_origin(public_base, scheme)?;
    let reference = if location.starts_with("//") || location.contains("://") {
        let (origin, rest) = split_origin(location, scheme)?;
        if origin != base_origin {
            return None;
        }
        let rest = rest.strip_prefix(prefix.trim_end_matches('/'))?;
        match rest.chars().next() {
            None => "/".to_string(),
            Some('/') => rest.to_string(),
            Some('?') => format!("/{rest}"),
            _ => return None,
        }
    } else if location.starts_with('/') {
        location.to_string()
    } else {
        let dir = request_path.rsplit_once('/').map_or("", |(d, _)| d);
        format!("{dir}/{location}")
    };
    let (path, query) = match reference.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (reference.as_str(), None),
    };
    let path = crate::htu::without_dot_segments(path);
    Some(match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_on_the_upstream_origin_moves_to_the_public_origin() {
        let origins = vec!["http://127.0.0.1:9000".to_string()];
        assert_eq!(
            rewrite_location(
                "http://127.0.0.1:9000/users?x=1",
                &origins,
                "https://admin.example"
            ),
            Some("https://admin.example/users?x=1".to_string())
        );
        assert_eq!(rewrite_location("/users", &origins, "https://a"), None);
        assert_eq!(
            rewrite_location("HTTP://127.0.0.1:9000/x", &origins, "https://a"),
            Some("https://a/x".to_string())
        );
        assert_eq!(
            rewrite_location(
                "//127.0.0.1:9000/x",
                &["https://up:443".to_string()],
                "https://a"
            ),
            None
        );
        assert_eq!(
            rewrite_location("//up/x", &["https://up:443".to_string()], "https://a"),
            Some("https://a/x".to_string())
        );
        assert_eq!(
            rewrite_location("http://127.0.0.1:90001/x", &origins, "https://a"),
            None
        );
        assert_eq!(
            rewrite_location("https://elsewhere/x", &origins, "https://a"),
            None
        );
    }

    #[test]
    fn redirect_targets_resolve_like_a_client_following_them() {
        let base = "https://admin.example/admin";
        let t = |loc| gateway_target(loc, base, "/api/redirect/to");
        assert_eq!(
            t("../deploys/17/confirm?x=1").as_deref(),
            Some("/api/deploys/17/confirm?x=1")
        );
        assert_eq!(
            t("/api/deploys/99/../17/confirm").as_deref(),
            Some("/api/deploys/17/confirm")
        );
        assert_eq!(
            t("https://ADMIN.example:443/admin/api/x?y").as_deref(),
            Some("/api/x?y")
        );
        assert_eq!(t("//admin.example/admin/api/x").as_deref(), Some("/api/x"));
        assert_eq!(t("https://admin.example/other/api/x"), None);
        assert_eq!(t("https://elsewhere.example/admin/api/x"), None);
        assert_eq!(t("confirm").as_deref(), Some("/api/redirect/confirm"));
        assert_eq!(t("./").as_deref(), Some("/api/redirect/"));
    }

    #[test]
    fn only_listed_peers_are_trusted() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("cidr")];
        assert!(Peer::new(Some("10.1.2.3".parse().expect("ip")), &nets).trusted);
        assert!(Peer::new(Some("::ffff:10.1.2.3".parse().expect("ip")), &nets).trusted);
        assert!(!Peer::new(Some("11.1.2.3".parse().expect("ip")), &nets).trusted);
        assert!(!Peer::new(None, &nets).trusted);
    }
}
