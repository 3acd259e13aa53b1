//! The configured upstreams, resolved once at start, and the URLs their responses name,
//! rewritten to the origin the client sees (docs/protocol.md, "Redirects").

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::ToSocketAddrs;
use std::time::Duration;

use pingora::http::ResponseHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

use crate::config::Upstream as UpstreamConfig;
use crate::forwarding;

/// How long an idle pooled upstream connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The response headers that carry URLs.
const URL_HEADERS: [&str; 3] = ["location", "content-location", "refresh"];

/// An upstream, ready to connect to.
pub struct Upstream {
    /// Where and how to connect.
    pub peer: HttpPeer,
    /// Its own origin (its configured address).
    origin: String,
    /// Whether its connections are reused.
    pub keepalive: bool,
}

/// An upstream address that does not resolve: the start stops.
#[derive(Debug, thiserror::Error)]
#[error("upstreams.{name}.address: cannot resolve {address}: {source}")]
pub struct ResolveError {
    name: String,
    address: String,
    source: io::Error,
}

/// All upstreams, by name.
pub struct Upstreams(HashMap<String, Upstream>);

impl Upstreams {
    /// Resolves every configured upstream once.
    pub fn resolve(config: &BTreeMap<String, UpstreamConfig>) -> Result<Upstreams, ResolveError> {
        config
            .values()
            .map(|u| Ok((u.name.clone(), Upstream::resolve(u)?)))
            .collect::<Result<_, _>>()
            .map(Upstreams)
    }

    /// The upstream a route names (every route names a configured one).
    pub fn get(&self, name: &str) -> pingora::Result<&Upstream> {
        self.0
            .get(name)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "route names no upstream"))
    }
}

impl Upstream {
    fn resolve(u: &UpstreamConfig) -> Result<Upstream, ResolveError> {
        let resolved = u.address.to_socket_addrs().and_then(|mut addrs| {
            addrs
                .next()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))
        });
        let addr = resolved.map_err(|source| ResolveError {
            name: u.name.clone(),
            address: u.address.clone(),
            source,
        })?;
        let mut peer = HttpPeer::new(addr, u.tls, u.sni.clone());
        peer.options.connection_timeout = Some(u.connect_timeout);
        peer.options.read_timeout = Some(u.read_timeout);
        peer.options.idle_timeout = Some(IDLE_TIMEOUT);
        let scheme = if u.tls { "https" } else { "http" };
        Ok(Upstream {
            peer,
            origin: format!("{scheme}://{}", u.address.to_ascii_lowercase()),
            keepalive: u.keepalive,
        })
    }

    /// Rewrites `Location`, `Content-Location` and `Refresh` URLs on this upstream's own origin
    /// (its configured address, or the `Host` it was sent) to `base`, the origin the client sees
    /// (computed only when the response names a URL).
    pub fn rewrite_urls(
        &self,
        head: &mut ResponseHeader,
        sent_host: Option<&str>,
        base: impl FnOnce() -> String,
    ) {
        if !URL_HEADERS.iter().any(|h| head.headers.contains_key(*h)) {
            return;
        }
        let base = base();
        let mut origins = vec![self.origin.clone()];
        if let Some(host) = sent_host {
            let scheme = if self.peer.is_tls() { "https" } else { "http" };
            origins.push(format!("{scheme}://{}", host.to_ascii_lowercase()));
        }
        for name in URL_HEADERS {
            let Some(value) = head.headers.get(name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let rewritten = if name == "refresh" {
                forwarding::rewrite_refresh(value, &origins, &base)
            } else {
                forwarding::rewrite_location(value, &origins, &base)
            };
            if let Some(new) = rewritten {
                let _ = head.insert_header(name, new);
            }
        }
    }
}
