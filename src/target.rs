//! One reading of the request target (RFC 9112 §3.2): the bytes the client sent become the single
//! origin-form target that the router matches, the nonce binds, the audit and provenance name and
//! the upstream receives. Anything a lenient upstream could read as another target is refused here,
//! before routing (docs/protocol.md, "What the gateway normalises and refuses").

use thiserror::Error;

/// Why a request target or `Host` was refused (`400`, reason `invalid_target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TargetError {
    /// Not origin-form, not absolute-form for this host, and not `OPTIONS *`.
    #[error("the request target must be an absolute path such as /api/users/42")]
    NotOriginForm,
    /// A byte outside RFC 3986's request-target characters (space, control, `#`, non-ASCII, ...).
    #[error("the request target contains a character that is not allowed in a URI")]
    BadCharacter,
    /// An absolute-form target naming another authority than `Host`, or another scheme.
    #[error("an absolute-form request target must name this host over http or https")]
    ForeignAuthority,
    /// `Host` missing (HTTP/1.1), repeated, or not an RFC 3986 authority.
    #[error("the Host header must be one valid host[:port]")]
    BadHost,
}

/// A request target the gateway accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/path?query`, exactly as it will be forwarded.
    Origin(String),
    /// `OPTIONS *` (RFC 9110 §9.3.7): routed as `/`, forwarded as `*`.
    Asterisk,
}

impl Target {
    /// Reads the raw request-target bytes of a request with `method` and the `Host` header
    /// value `host` (already validated by [`valid_authority`]).
    pub fn read(raw: &[u8], method: &str, host: Option<&str>) -> Result<Target, TargetError> {
        if raw == b"*" {
            return if method == "OPTIONS" {
                Ok(Target::Asterisk)
            } else {
                Err(TargetError::NotOriginForm)
            };
        }
        if !raw.iter().all(|b| is_target_byte(*b)) {
            // `#` never belongs in a request target; a space means a request line split oddly
            // (`DELETE  /x`), which some servers read as another target.
            return Err(TargetError::BadCharacter);
        }
        // Every byte is ASCII now.
        let text = std::str::from_utf8(raw).map_err(|_| TargetError::BadCharacter)?;
        if text.starts_with('/') {
            if text.starts_with("//") {
                // `//host/x` is a network-path reference to some parsers (RFC 3986 §4.2).
                return Err(TargetError::NotOriginForm);
            }
            return Ok(Target::Origin(text.to_string()));
        }
        let (scheme, rest) = text.split_once("://").ok_or(TargetError::NotOriginForm)?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(TargetError::NotOriginForm);
        }
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let same_host = host.is_some_and(|h| same_authority(h, authority, scheme));
        if authority.contains('@') || !same_host {
            return Err(TargetError::ForeignAuthority);
        }
        let origin = match path.chars().next() {
            None => "/".to_string(),
            Some('?') => format!("/{path}"),
            Some(_) if path.starts_with("//") => return Err(TargetError::NotOriginForm),
            Some(_) => path.to_string(),
        };
        Ok(Target::Origin(origin))
    }

    /// The path the router matches (without query).
    pub fn path(&self) -> &str {
        match self {
            Target::Origin(t) => t.split_once('?').map_or(t.as_str(), |(p, _)| p),
            Target::Asterisk => "/",
        }
    }

    /// The query, without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        match self {
            Target::Origin(t) => t.split_once('?').map(|(_, q)| q),
            Target::Asterisk => None,
        }
    }

    /// The target as forwarded, bound and audited.
    pub fn as_str(&self) -> &str {
        match self {
            Target::Origin(t) => t,
            Target::Asterisk => "*",
        }
    }
}

/// RFC 3986 §3.2.2–3.2.3: `reg-name | IPv4 | [IPv6]`, optional `:port`. What `Host` must be.
pub fn valid_authority(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => (None, p.strip_prefix(':')),
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        }
    };
    let port_ok = match port {
        None => true,
        Some(p) => p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()),
    };
    let name_ok = name.is_none_or(|n| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    });
    port_ok && name_ok
}

/// Whether two authorities name the same host and port (case-insensitive, default port implied).
fn same_authority(host: &str, authority: &str, scheme: &str) -> bool {
    let default = if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else {
        ":80"
    };
    let norm = |a: &str| {
        let a = a.to_ascii_lowercase();
        match a.strip_suffix(default) {
            Some(h) => h.to_string(),
            None => a,
        }
    };
    valid_authority(authority) && norm(host) == norm(authority)
}

/// Bytes RFC 3986 allows in a request target (unreserved, reserved less `#`, `%`), plus the
/// backslash that legacy clients send and the router reads loosely.
fn is_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'/'
                | b'?'
                | b':'
                | b'@'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b'['
                | b']'
                | b'\\'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(raw: &str) -> Result<Target, TargetError> {
        Target::read(raw.as_bytes(), "DELETE", Some("gw.example:8080"))
    }

    #[test]
    fn origin_form_is_kept_exactly() {
        let t = read("/api/users/42?x=1").expect("origin-form");
        assert_eq!(t.as_str(), "/api/users/42?x=1");
        assert_eq!(t.path(), "/api/users/42");
        assert_eq!(t.query(), Some("x=1"));
        assert_eq!(read("/a%2Fb/./c").expect("kept").as_str(), "/a%2Fb/./c");
    }

    #[test]
    fn targets_a_lenient_server_would_reinterpret_are_refused() {
        for raw in [
            "api/users/42",
            "x:api/users/42",
            "foo:/api/users/42",
            "urn:/api/users/42",
            "./api/users/42",
            " /api/users/42",
            "//api/users/42",
            "/api/users/42#frag",
            "/api/us\u{e9}rs",
            "/api/users/42\t",
            "",
            "*",
        ] {
            assert!(read(raw).is_err(), "{raw:?} must be refused");
        }
    }

    #[test]
    fn absolute_form_for_this_host_becomes_origin_form() {
        let t = read("http://GW.example:8080/api/users/42?x").expect("same host");
        assert_eq!(t, Target::Origin("/api/users/42?x".into()));
        assert_eq!(read("http://gw.example:8080").expect("root").as_str(), "/");
        let default_port = Target::read(b"https://gw.example:443/x", "GET", Some("gw.example"));
        assert_eq!(default_port.expect("default port").as_str(), "/x");
        assert_eq!(
            read("http://other.example/api/users/42"),
            Err(TargetError::ForeignAuthority)
        );
        assert_eq!(
            read("http://u@gw.example:8080/x"),
            Err(TargetError::ForeignAuthority)
        );
        assert_eq!(
            read("ftp://gw.example:8080/x"),
            Err(TargetError::NotOriginForm)
        );
        assert!(Target::read(b"http://gw.example/x", "GET", None).is_err());
    }

    #[test]
    fn asterisk_only_for_options() {
        assert_eq!(
            Target::read(b"*", "OPTIONS", Some("h")).expect("OPTIONS *"),
            Target::Asterisk
        );
        assert_eq!(Target::Asterisk.path(), "/");
        assert!(Target::read(b"*", "GET", Some("h")).is_err());
    }

    #[test]
    fn hosts_are_rfc_3986_authorities() {
        for ok in [
            "admin.example",
            "admin.example:8443",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(valid_authority(ok), "{ok}");
        }
        for bad in [
            "",
            "evil\", for=10.0.0.7;proto=https;host=\"x",
            "a b",
            "h:port",
            "h:123456",
            "[::1",
            "[zz]:1",
            "h/x",
            "h;x",
            ":80",
        ] {
            assert!(!valid_authority(bad), "{bad}");
        }
    }
}
