//! A held action: the high-impact request a browser navigation made, kept in the replay store
//! until its confirmation, then forwarded exactly as held (method, target, headers, body bytes).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::store::{self, Key};

/// What a held request keeps. Header values and the body are base64 so any bytes survive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hold {
    /// Route name.
    pub route: String,
    /// Request method.
    pub method: String,
    /// Request target in origin-form, query included.
    pub target: String,
    /// The public URL the user sees on the page.
    pub url: String,
    /// Request headers as received (hop-by-hop and provenance headers are stripped at forwarding).
    headers: Vec<(String, String)>,
    /// The body, base64.
    body: String,
    /// Hex SHA-256 of the body.
    pub body_sha256: String,
    /// The session id the hold belongs to.
    pub session_id: String,
    /// Audit form of the session id.
    pub session_hash: String,
    /// Session subject.
    pub subject: Option<String>,
    /// Client address.
    pub client_ip: Option<String>,
    /// The app page the request came from (`Referer`), for Cancel.
    pub referer: Option<String>,
    /// Unix milliseconds after which the hold is gone.
    pub expires_at_ms: u64,
}

/// The parts of a request a hold is made of.
pub struct Held<'a> {
    /// Route name.
    pub route: &'a str,
    /// Method.
    pub method: &'a str,
    /// Target in origin-form.
    pub target: &'a str,
    /// The public URL of the target.
    pub url: String,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Body bytes.
    pub body: &'a [u8],
    /// Hex SHA-256 of the body.
    pub body_sha256: &'a str,
}

impl Hold {
    /// A hold of `held` for the session `session_id`.
    pub fn new(
        held: Held<'_>,
        session_id: &str,
        session_hash: String,
        subject: Option<String>,
        client_ip: Option<String>,
        expires_at_ms: u64,
    ) -> Hold {
        let headers = held
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_string(), STANDARD.encode(value.as_bytes())))
            .collect();
        let referer = held
            .headers
            .get(http::header::REFERER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Hold {
            route: held.route.to_string(),
            method: held.method.to_string(),
            target: held.target.to_string(),
            url: held.url,
            headers,
            body: STANDARD.encode(held.body),
            body_sha256: held.body_sha256.to_string(),
            session_id: session_id.to_string(),
            session_hash,
            subject,
            client_ip,
            referer,
            expires_at_ms,
        }
    }

    /// The held headers, in order; a value that does not decode is dropped (it was stored by us).
    pub fn headers(&self) -> impl Iterator<Item = (&str, Vec<u8>)> {
        self.headers
            .iter()
            .filter_map(|(n, v)| STANDARD.decode(v).ok().map(|v| (n.as_str(), v)))
    }

    /// A held header's value, when it is text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| String::from_utf8(v).ok())
    }

    /// The held body bytes.
    pub fn body(&self) -> Vec<u8> {
        STANDARD.decode(&self.body).unwrap_or_default()
    }

    /// The path of the target, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("/")
    }
}

/// A fresh 256-bit identifier for a hold, a resume token or a resume cookie.
pub fn fresh_id() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// The store key of `id` in `namespace` (`hold`, `ceremony`, `resume`, `arrival`).
pub fn key(namespace: &str, id: &str) -> Key {
    store::key(namespace, &[id.as_bytes()])
}

/// Whether a request is a browser navigation (Fetch Metadata, W3C): `Sec-Fetch-Mode: navigate`,
/// or, from a browser that sends no `Sec-Fetch-*` headers, an `Accept` preferring `text/html`.
pub fn is_navigation(headers: &HeaderMap) -> bool {
    if let Some(mode) = headers.get("sec-fetch-mode") {
        return mode.as_bytes().eq_ignore_ascii_case(b"navigate");
    }
    if headers.keys().any(|k| k.as_str().starts_with("sec-fetch-")) {
        return false;
    }
    headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(prefers_html)
}

/// Whether `text/html` has the highest quality of the media ranges in `accept` (RFC 9110 §12.5.1).
fn prefers_html(accept: &str) -> bool {
    let mut best_html = None::<f32>;
    let mut best_other = 0f32;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "text/html" | "application/xhtml+xml" => {
                best_html = Some(best_html.map_or(q, |b| b.max(q)))
            }
            "" => {}
            _ => best_other = best_other.max(q),
        }
    }
    best_html.is_some_and(|h| h > 0.0 && h >= best_other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn a_navigation_is_told_by_fetch_metadata_first() {
        assert!(is_navigation(&headers(&[("sec-fetch-mode", "navigate")])));
        // fetch() from a page of a browser with Fetch Metadata: never held.
        assert!(!is_navigation(&headers(&[
            ("sec-fetch-mode", "cors"),
            ("accept", "text/html")
        ])));
        assert!(!is_navigation(&headers(&[
            ("sec-fetch-site", "same-origin"),
            ("accept", "text/html")
        ])));
    }

    #[test]
    fn without_fetch_metadata_an_accept_preferring_html_is_a_navigation() {
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(is_navigation(&headers(&[("accept", browser)])));
        assert!(!is_navigation(&headers(&[("accept", "application/json")])));
        assert!(!is_navigation(&headers(&[("accept", "*/*")])));
        assert!(!is_navigation(&headers(&[(
            "accept",
            "application/json, text/html;q=0.5"
        )])));
        assert!(!is_navigation(&headers(&[("accept", "text/html;q=0")])));
        assert!(!is_navigation(&HeaderMap::new()));
    }

    #[test]
    fn a_hold_gives_back_its_bytes_exactly() {
        let body: Vec<u8> = (0..=255u8).collect();
        let h = headers(&[
            ("content-type", "application/octet-stream"),
            ("referer", "http://app/x"),
        ]);
        let held = Held {
            route: "r",
            method: "POST",
            target: "/a?b=c",
            url: "http://app/a?b=c".into(),
            headers: &h,
            body: &body,
            body_sha256: "00",
        };
        let hold = Hold::new(held, "sid", "hash".into(), None, None, 1);
        let wire = serde_json::to_vec(&hold).expect("hold serialises");
        let back: Hold = serde_json::from_slice(&wire).expect("hold parses");
        assert_eq!(back.body(), body);
        assert_eq!(back.referer.as_deref(), Some("http://app/x"));
        assert_eq!(back.path(), "/a");
        assert_eq!(
            back.header("content-type").as_deref(),
            Some("application/octet-stream")
        );
    }

    #[test]
    fn ids_carry_256_bits() {
        let (a, b) = (fresh_id(), fresh_id());
        assert_ne!(a, b);
        assert_eq!(URL_SAFE_NO_PAD.decode(a).expect("base64url").len(), 32);
    }
}
