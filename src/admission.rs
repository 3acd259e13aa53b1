//! What the gateway decides from a request head before routing, so that the router, the nonce,
//! the audit record and the upstream see one and the same request: one valid `Host`, no header
//! a CGI-style server would read as another (`Countersign_Subject` as `Countersign-Subject`), and
//! no protocol upgrade except a WebSocket handshake on a route made for it.

use aws_lc_rs::digest;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{HeaderMap, HeaderName};

use crate::target::{valid_authority, TargetError};

/// The one `Host` of a request: a repeated or invalid `Host` is refused, and so is an HTTP/1.1
/// request without one (RFC 9112 §3.2). `authority` is the URI's (HTTP/2 `:authority`).
pub fn host<'h>(
    headers: &'h HeaderMap,
    authority: Option<&'h str>,
    http11: bool,
) -> Result<Option<&'h str>, TargetError> {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(TargetError::BadHost),
        (Some(h), None) => Some(h.to_str().map_err(|_| TargetError::BadHost)?),
        (None, _) => authority,
    };
    match host {
        Some(h) if valid_authority(h) => Ok(Some(h)),
        Some(_) => Err(TargetError::BadHost),
        None if http11 => Err(TargetError::BadHost),
        None => Ok(None),
    }
}

/// Header names containing `_`: CGI-style servers (gunicorn before 22, PHP's built-in server,
/// Puma before 6.4.3) read `X_Forwarded_For` as `X-Forwarded-For`, so such headers could stand
/// next to (or before) the ones the gateway sets. They are dropped, as nginx does by default.
pub fn underscored(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if name.as_str().contains('_') && !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// Whether the request asks to switch protocols.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::UPGRADE)
}

/// Whether the request is a WebSocket handshake (RFC 6455 §4.1): `Upgrade: websocket` and a key.
pub fn is_websocket_handshake(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    upgrade && headers.contains_key(http::header::SEC_WEBSOCKET_KEY)
}

/// Whether a `101` answers the WebSocket handshake in `request` correctly (RFC 6455 §4.2.2):
/// `Upgrade: websocket` and `Sec-WebSocket-Accept` = base64(SHA-1(key + GUID)). Anything else
/// would open a raw tunnel the gateway never checks.
pub fn websocket_accepted(request: &HeaderMap, response: &HeaderMap) -> bool {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let Some(key) = request
        .get(http::header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let upgrade = response
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    let expected = STANDARD.encode(
        digest::digest(
            &digest::SHA1_FOR_LEGACY_USE_ONLY,
            format!("{}{GUID}", key.trim()).as_bytes(),
        )
        .as_ref(),
    );
    let accept = response
        .get(http::header::SEC_WEBSOCKET_ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == expected);
    upgrade && accept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("test header value"));
        }
        h
    }

    #[test]
    fn one_valid_host() {
        let h = headers(&[("host", "admin.example:8080")]);
        assert_eq!(host(&h, None, true), Ok(Some("admin.example:8080")));
        let two = headers(&[("host", "a"), ("host", "b")]);
        assert_eq!(host(&two, None, true), Err(TargetError::BadHost));
        let forged = headers(&[("host", "evil\", for=10.0.0.7;proto=https;host=\"x")]);
        assert_eq!(host(&forged, None, true), Err(TargetError::BadHost));
        assert_eq!(
            host(&HeaderMap::new(), None, true),
            Err(TargetError::BadHost)
        );
        assert_eq!(host(&HeaderMap::new(), None, false), Ok(None));
        assert_eq!(
            host(&HeaderMap::new(), Some("h2.example"), true),
            Ok(Some("h2.example"))
        );
    }

    #[test]
    fn underscored_names_are_found() {
        let h = headers(&[
            ("countersign_subject", "admin"),
            ("x-forwarded_for", "10.0.0.1"),
            ("x-ok", "1"),
        ]);
        let names: Vec<String> = underscored(&h).iter().map(|n| n.to_string()).collect();
        assert_eq!(names, ["countersign_subject", "x-forwarded_for"]);
    }

    #[test]
    fn only_a_correct_websocket_101_opens_a_tunnel() {
        // RFC 6455 §1.3's example.
        let req = headers(&[
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert!(is_websocket_handshake(&req));
        let good = headers(&[
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        assert!(websocket_accepted(&req, &good));
        let wrong = headers(&[("upgrade", "websocket"), ("sec-websocket-accept", "AAAA")]);
        assert!(!websocket_accepted(&req, &wrong));
        let other = headers(&[
            ("upgrade", "h2c"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        assert!(!websocket_accepted(&req, &other));
        assert!(!websocket_accepted(&HeaderMap::new(), &good));
    }
}
