//! What the upstream sees and what the client sees back: header hygiene on every forwarded
//! request (RFC 9110 §7.6.1 hop-by-hop, `DPoP`, forged `Countersign-*`), `X-Forwarded-*`
//! (CONTRACT §5), the external URI a proof's `htu` must name, and `Location` rewriting.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;
use pingora::http::RequestHeader;

use crate::config::PublicOrigin;

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the legacy `keep-alive`/`proxy-connection`).
const HOP_BY_HOP: [&str; 9] = [
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

/// Removes hop-by-hop headers, `DPoP` and every client-sent `Countersign-*` header.
pub fn strip_request(req: &mut RequestHeader, framing: Framing) {
    let mut doomed: Vec<String> = Vec::new();
    for value in req.headers.get_all(http::header::CONNECTION) {
        if let Ok(v) = value.to_str() {
            doomed.extend(
                v.split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .filter(|t| !t.is_empty() && t != "upgrade"),
            );
        }
    }
    for name in req.headers.keys() {
        let n = name.as_str();
        if n == "dpop" || n.starts_with("countersign-") {
            doomed.push(n.to_string());
        }
    }
    for name in HOP_BY_HOP {
        let owned_by_pingora = matches!(name, "transfer-encoding" | "upgrade" | "connection");
        if framing == Framing::Buffered || !owned_by_pingora {
            doomed.push(name.to_string());
        }
    }
    if framing == Framing::Buffered {
        doomed.push("content-length".to_string());
        doomed.push("expect".to_string());
    }
    for name in doomed {
        req.remove_header(&name);
    }
}

/// Sets `X-Forwarded-For/Proto/Host`: appended to (For) or kept (Proto, Host) from a trusted
/// proxy, replaced from anyone else.
pub fn set_forwarded(req: &mut RequestHeader, peer: Peer, scheme: &str, host: Option<&str>) {
    let ip = peer.ip.map(|ip| canonical(ip).to_string());
    let prior_for = header_str(&req.headers, "x-forwarded-for").map(str::to_owned);
    let xff = match (peer.trusted, prior_for, ip) {
        (true, Some(prior), Some(ip)) => Some(format!("{prior}, {ip}")),
        (_, _, ip) => ip,
    };
    match xff {
        Some(v) => insert(req, "x-forwarded-for", &v),
        None => {
            req.remove_header("x-forwarded-for");
        }
    }
    let keep_proto = peer.trusted && req.headers.contains_key("x-forwarded-proto");
    let keep_host = peer.trusted && req.headers.contains_key("x-forwarded-host");
    if !keep_proto {
        insert(req, "x-forwarded-proto", scheme);
    }
    if !keep_host {
        match host {
            Some(h) => insert(req, "x-forwarded-host", h),
            None => {
                req.remove_header("x-forwarded-host");
            }
        }
    }
}

fn insert(req: &mut RequestHeader, name: &'static str, value: &str) {
    // Values come from validated headers or addresses; a value that is not a valid header
    // value is dropped rather than forwarded.
    if req.insert_header(name, value).is_err() {
        req.remove_header(name);
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The scheme and authority the client used, as this gateway may believe them.
pub fn client_origin<'h>(
    headers: &'h HeaderMap,
    uri: &'h http::Uri,
    peer: Peer,
) -> (&'h str, Option<&'h str>) {
    let forwarded = |name| {
        if peer.trusted {
            header_str(headers, name).map(|v| v.split(',').next().unwrap_or(v).trim())
        } else {
            None
        }
    };
    let scheme = forwarded("x-forwarded-proto").unwrap_or("http");
    let host = forwarded("x-forwarded-host")
        .or_else(|| header_str(headers, "host"))
        .or_else(|| uri.authority().map(|a| a.as_str()));
    (scheme, host)
}

/// The external URI of a request (CONTRACT §4 htu), before normalisation.
pub fn external_uri(
    public: Option<&PublicOrigin>,
    scheme: &str,
    host: Option<&str>,
    path: &str,
) -> String {
    match public {
        Some(o) => format!("{}{}{}", o.origin(), o.prefix, path),
        None => format!("{scheme}://{}{path}", host.unwrap_or("")),
    }
}

/// Rewrites an absolute `Location` on one of the upstream's own origins to the public origin;
/// relative and foreign Locations are left alone (`None`).
pub fn rewrite_location(
    location: &str,
    upstream_origins: &[String],
    public_origin: &str,
) -> Option<String> {
    let lower = location.to_ascii_lowercase();
    upstream_origins.iter().find_map(|origin| {
        let rest = lower.strip_prefix(origin.as_str())?;
        // The origin must end here: "http://a:1" must not match "http://a:10".
        if rest.is_empty() || rest.starts_with(['/', '?', '#']) {
            Some(format!("{public_origin}{}", &location[origin.len()..]))
        } else {
            None
        }
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
            rewrite_location("http://127.0.0.1:90001/x", &origins, "https://a"),
            None
        );
        assert_eq!(
            rewrite_location("https://elsewhere/x", &origins, "https://a"),
            None
        );
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
