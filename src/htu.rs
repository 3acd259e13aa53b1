//! The `htu` comparison of DPoP (RFC 9449 §4.3 (9)): both the proof's `htu` and the gateway's
//! external URI are reduced to `scheme://host[:port]/path` with the syntax- and scheme-based
//! normalisations of RFC 3986 §6.2.2–6.2.3, query and fragment dropped, so that equal URIs compare
//! equal as strings. Anything that is not a plain absolute `http`/`https` URI is refused (`None`):
//! a proof the gateway cannot read unambiguously is a mismatch, never a guess.

use std::fmt::Write as _;
use std::net::Ipv6Addr;

/// Normalises an absolute `http(s)` URI for `htu` comparison; `None` if it is not one.
pub fn normalize(uri: &str) -> Option<String> {
    // RFC 3986 §2: a URI is printable ASCII; whitespace, controls and raw non-ASCII are refused.
    if !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    // RFC 9449 §4.3 (9): query and fragment are ignored.
    let uri = &uri[..uri.find(['?', '#']).unwrap_or(uri.len())];

    let (scheme, rest) = uri.split_once(':')?;
    // RFC 3986 §6.2.2.1: the scheme is case-insensitive.
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let rest = rest.strip_prefix("//")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    // RFC 3986 §3.2.1: userinfo has no place in a request target; refuse rather than strip.
    if authority.contains('@') {
        return None;
    }
    let (host, port) = split_host_port(authority)?;

    let mut out = String::with_capacity(uri.len() + 1);
    out.push_str(&scheme);
    out.push_str("://");
    push_host(&mut out, host)?;
    // RFC 3986 §6.2.3: the scheme's default port (and an empty port) is omitted.
    if let Some(port) = port.filter(|&p| p != default_port) {
        // Writing to a String cannot fail.
        let _ = write!(out, ":{port}");
    }
    push_path(&mut out, path)?;
    Some(out)
}

/// Splits `host[:port]`; the port is `None` when absent or empty, and must fit in 16 bits.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let close = authority.find(']')?;
        let (host, after) = authority.split_at(close + 1);
        if after.is_empty() {
            (host, None)
        } else {
            (host, Some(after.strip_prefix(':')?))
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(port) if port.bytes().all(|b| b.is_ascii_digit()) => Some(port.parse().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

/// Appends the normalised host: an IPv6 literal in RFC 5952 form, or a lowercased reg-name.
fn push_host(out: &mut String, host: &str) -> Option<()> {
    if let Some(literal) = host.strip_prefix('[') {
        // RFC 3986 §3.2.2: IP-literal. IPvFuture and zone identifiers are refused.
        let address: Ipv6Addr = literal.strip_suffix(']')?.parse().ok()?;
        let _ = write!(out, "[{address}]");
        return Some(());
    }
    if host.is_empty() {
        return None;
    }
    // RFC 3986 §3.2.2 reg-name (IPv4 addresses are a subset): unreserved / pct-encoded / sub-delims.
    push_normalized(out, host, |b| is_unreserved(b) || is_sub_delim(b), true)
}

/// Appends the normalised path: percent-encoding normalised, dot segments removed, `/` if empty.
fn push_path(out: &mut String, path: &str) -> Option<()> {
    if path.is_empty() {
        // RFC 3986 §6.2.3: an empty path is equivalent to `/` for http(s).
        out.push('/');
        return Some(());
    }
    // RFC 3986 §3.3: pchar and `/`.
    let mut normalized = String::with_capacity(path.len());
    push_normalized(
        &mut normalized,
        path,
        |b| is_unreserved(b) || is_sub_delim(b) || matches!(b, b':' | b'@' | b'/'),
        false,
    )?;
    // RFC 3986 §6.2.2.3: after percent-decoding, so `%2E%2E` counts as `..`.
    remove_dot_segments(out, &normalized);
    Some(())
}

/// Copies `input`, checking each literal byte with `allowed`, decoding percent-encoded unreserved
/// characters and uppercasing the hex digits of the others (RFC 3986 §6.2.2.1–6.2.2.2).
fn push_normalized(
    out: &mut String,
    input: &str,
    allowed: impl Fn(u8) -> bool,
    lowercase: bool,
) -> Option<()> {
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = hex_value(*bytes.get(i + 1)?)?;
            let lo = hex_value(*bytes.get(i + 2)?)?;
            let decoded = (hi << 4) | lo;
            if is_unreserved(decoded) {
                push_byte(out, decoded, lowercase);
            } else {
                out.push('%');
                out.push(char::from(HEX_UPPER[usize::from(hi)]));
                out.push(char::from(HEX_UPPER[usize::from(lo)]));
            }
            i += 3;
        } else if allowed(b) {
            push_byte(out, b, lowercase);
            i += 1;
        } else {
            return None;
        }
    }
    Some(())
}

/// RFC 3986 §5.2.4 `remove_dot_segments` on an absolute path; encoding is left as written.
pub(crate) fn without_dot_segments(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    remove_dot_segments(&mut out, path);
    out
}

/// [`without_dot_segments`] into `out`.
fn remove_dot_segments(out: &mut String, path: &str) {
    let mut segments: Vec<&str> = Vec::new();
    // A trailing `.` or `..` leaves the path ending in `/` ("/a/b/.." is "/a/").
    let mut ends_in_slash = false;
    for segment in path.split('/').skip(1) {
        match segment {
            "." => ends_in_slash = true,
            ".." => {
                segments.pop();
                ends_in_slash = true;
            }
            _ => {
                segments.push(segment);
                ends_in_slash = false;
            }
        }
    }
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if segments.is_empty() || ends_in_slash {
        out.push('/');
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn push_byte(out: &mut String, b: u8, lowercase: bool) {
    let b = if lowercase { b.to_ascii_lowercase() } else { b };
    out.push(char::from(b));
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §2.2.
fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::normalize;

    fn n(uri: &str) -> Option<String> {
        normalize(uri)
    }

    #[test]
    fn plain_uris_are_kept() {
        assert_eq!(
            n("https://admin.example.com/api/users/7").as_deref(),
            Some("https://admin.example.com/api/users/7")
        );
        assert_eq!(
            n("http://127.0.0.1:8080/x").as_deref(),
            Some("http://127.0.0.1:8080/x")
        );
    }

    #[test]
    fn scheme_and_host_case_is_ignored_but_path_case_is_not() {
        assert_eq!(
            n("HTTPS://Admin.EXAMPLE.com/Api/Users").as_deref(),
            Some("https://admin.example.com/Api/Users")
        );
        assert_ne!(n("https://a.example/Users"), n("https://a.example/users"));
    }

    #[test]
    fn default_and_empty_ports_are_removed() {
        let canonical = Some("https://a.example/p".to_owned());
        assert_eq!(n("https://a.example:443/p"), canonical);
        assert_eq!(n("https://a.example:/p"), canonical);
        assert_eq!(n("https://a.example:0443/p"), canonical);
        assert_eq!(
            n("http://a.example:80/p").as_deref(),
            Some("http://a.example/p")
        );
        // A default port of the other scheme is significant.
        assert_eq!(
            n("http://a.example:443/p").as_deref(),
            Some("http://a.example:443/p")
        );
        assert_eq!(
            n("https://a.example:80/p").as_deref(),
            Some("https://a.example:80/p")
        );
        assert_eq!(
            n("https://a.example:8443/p").as_deref(),
            Some("https://a.example:8443/p")
        );
    }

    #[test]
    fn bad_ports_are_refused() {
        assert_eq!(n("https://a.example:65536/"), None);
        assert_eq!(n("https://a.example:+443/"), None);
        assert_eq!(n("https://a.example:44a/"), None);
        assert_eq!(n("https://a.example:1:2/"), None);
    }

    #[test]
    fn empty_path_is_slash() {
        assert_eq!(
            n("https://a.example").as_deref(),
            Some("https://a.example/")
        );
        assert_eq!(
            n("https://a.example?x=1").as_deref(),
            Some("https://a.example/")
        );
        assert_eq!(
            n("https://a.example:443#f").as_deref(),
            Some("https://a.example/")
        );
    }

    #[test]
    fn percent_encoding_is_normalised() {
        // Unreserved characters are decoded.
        assert_eq!(
            n("https://a.example/%7euser").as_deref(),
            Some("https://a.example/~user")
        );
        assert_eq!(n("https://a.example/%7Euser"), n("https://a.example/~user"));
        assert_eq!(
            n("https://a.example/%41%2d%5F").as_deref(),
            Some("https://a.example/A-_")
        );
        // Reserved ones stay encoded, with uppercase hex; `%2F` is not a path separator.
        assert_eq!(
            n("https://a.example/a%2fb").as_deref(),
            Some("https://a.example/a%2Fb")
        );
        assert_ne!(n("https://a.example/a%2Fb"), n("https://a.example/a/b"));
        assert_eq!(
            n("https://a.example/caf%c3%a9").as_deref(),
            Some("https://a.example/caf%C3%A9")
        );
        // In the host, decoded letters are lowercased too.
        assert_eq!(
            n("https://%41dmin.example/").as_deref(),
            Some("https://admin.example/")
        );
    }

    #[test]
    fn invalid_percent_encoding_is_refused() {
        assert_eq!(n("https://a.example/%"), None);
        assert_eq!(n("https://a.example/%4"), None);
        assert_eq!(n("https://a.example/%zz"), None);
        assert_eq!(n("https://a.%g1example/"), None);
    }

    #[test]
    fn dot_segments_are_removed() {
        let cases = [
            ("https://a.example/a/b/c/./../../g", "https://a.example/a/g"),
            ("https://a.example/a/./b", "https://a.example/a/b"),
            ("https://a.example/a/b/..", "https://a.example/a/"),
            ("https://a.example/a/b/.", "https://a.example/a/b/"),
            ("https://a.example/../../x", "https://a.example/x"),
            ("https://a.example/..", "https://a.example/"),
            ("https://a.example/a/%2E%2E/b", "https://a.example/b"),
            ("https://a.example/a/.%2e/b", "https://a.example/b"),
            ("https://a.example/a//b/", "https://a.example/a//b/"),
            ("https://a.example/a/..b/.c", "https://a.example/a/..b/.c"),
        ];
        for (input, expected) in cases {
            assert_eq!(n(input).as_deref(), Some(expected), "{input}");
        }
    }

    #[test]
    fn ipv6_literals_are_canonical() {
        assert_eq!(n("https://[::1]/x").as_deref(), Some("https://[::1]/x"));
        assert_eq!(
            n("https://[0:0:0:0:0:0:0:1]:443/x").as_deref(),
            Some("https://[::1]/x")
        );
        assert_eq!(
            n("http://[2001:DB8::A]:8080/").as_deref(),
            Some("http://[2001:db8::a]:8080/")
        );
        assert_eq!(n("https://[::1"), None);
        assert_eq!(n("https://[::1]x/"), None);
        assert_eq!(n("https://[fe80::1%25eth0]/"), None);
        assert_eq!(n("https://[v1.fe]/"), None);
        assert_eq!(n("https://[not-an-address]/"), None);
    }

    #[test]
    fn query_and_fragment_are_ignored() {
        let canonical = Some("https://a.example/p".to_owned());
        assert_eq!(n("https://a.example/p?x=1&y=2"), canonical);
        assert_eq!(n("https://a.example/p#frag"), canonical);
        assert_eq!(n("https://a.example/p?x=1#frag"), canonical);
        assert_eq!(n("https://a.example/p?q=\"{|}\""), canonical);
    }

    #[test]
    fn non_http_and_relative_uris_are_refused() {
        for uri in [
            "",
            "/api/users",
            "//a.example/x",
            "ftp://a.example/x",
            "wss://a.example/x",
            "https:a.example/x",
            "https:/a.example/x",
            "https://",
            "https:///x",
            "https://:443/x",
            "mailto:user@a.example",
        ] {
            assert_eq!(n(uri), None, "{uri:?}");
        }
    }

    #[test]
    fn userinfo_is_refused() {
        assert_eq!(n("https://user@a.example/"), None);
        assert_eq!(n("https://user:pw@a.example/"), None);
        assert_eq!(n("https://@a.example/"), None);
    }

    #[test]
    fn whitespace_controls_and_non_ascii_are_refused() {
        for uri in [
            " https://a.example/",
            "https://a.example/ ",
            "https://a.example/a b",
            "https://a.example/\t",
            "https://a.example/\r\n",
            "https://a.example/\u{0}",
            "https://a.example/\u{7f}",
            "https://a.example/café",
            "https://exämple.com/",
            "https://a.example/?q=a b",
        ] {
            assert_eq!(n(uri), None, "{uri:?}");
        }
    }

    #[test]
    fn characters_outside_the_grammar_are_refused() {
        for uri in [
            "https://a.example/<script>",
            "https://a.example/a\\b",
            "https://a.example/a\"b",
            "https://a.example/{x}",
            "https://a^b.example/",
            "https://a.example/a|b",
        ] {
            assert_eq!(n(uri), None, "{uri:?}");
        }
        // `_` is unreserved, hence a valid reg-name character.
        assert_eq!(
            n("https://a.ex_ample/").as_deref(),
            Some("https://a.ex_ample/")
        );
    }

    #[test]
    fn sub_delims_and_colons_in_the_path_are_kept() {
        assert_eq!(
            n("https://a.example/a:b@c;d=e,f!$&'()*+").as_deref(),
            Some("https://a.example/a:b@c;d=e,f!$&'()*+")
        );
    }

    proptest! {
        #[test]
        fn normalisation_is_idempotent(
            uri in "(https?|HTTPS?|ftp)://(\\[[0-9a-fA-F:.]{0,20}\\]|[a-zA-Z0-9.%_~!$&'()*+,;=-]{0,16})(:[0-9]{0,6})?(/[a-zA-Z0-9.%_~:@!$&'()*+,;=-]{0,8}){0,6}(\\?[ -~]{0,8})?(#[ -~]{0,8})?"
        ) {
            if let Some(once) = normalize(&uri) {
                prop_assert_eq!(normalize(&once), Some(once.clone()));
            }
        }

        #[test]
        fn arbitrary_input_never_panics(uri in "\\PC{0,64}") {
            if let Some(normalized) = normalize(&uri) {
                prop_assert!(normalized.starts_with("http://") || normalized.starts_with("https://"));
            }
        }
    }
}
