//! The YAML file format (docs/protocol.md, "Configuration"; config/example.yaml): serde structs
//! that mirror the file, and the one validation pass that turns them into the runtime [`Config`].
//! Scalars that have a syntax of their own (durations, sizes, addresses, methods, templates...) are
//! parsed while deserializing, so their errors carry the field path and the line and column;
//! cross-field rules are checked afterwards, each error naming the field path and what was
//! expected.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method};
use ipnet::IpNet;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_path_to_error::Segment;

use super::{
    AuditConfig, BrowserConfig, Config, ConfigError, ConfirmationConfig, CookieJwtSubject,
    DeviceBinding, InvalidValue, JwtKeys, LogConfig, MetricsConfig, ProvenanceConfig, PublicOrigin,
    ServerConfig, SessionConfig, SessionKind, StoreConfig, TlsFiles, Upstream, UpstreamScheme,
    UserVerification,
};
use std::sync::Arc;

use crate::alg::ProofAlg;
use crate::approvals::{Notify, Rule, WebhookSecret};
use crate::conditions::{Allowed, Conditions};
use crate::policy::{Engine, OnIpChange, RiskConfig};
use crate::routes::{PathTemplate, Risk, Route, RouteTable, StepUp};

/// The field path of an error about the document as a whole.
const ROOT: &str = "(root)";

/// Methods a route may name. Methods are case-sensitive and a misspelt one would silently never
/// match (sending a high-impact request to a later, possibly low-risk route), so only known
/// methods are accepted: RFC 9110, PATCH (RFC 5789) and WebDAV (RFC 4918).
const KNOWN_METHODS: [&str; 16] = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
];

/// Reads and parses a config file.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    // No field path: the file itself is the problem, not a field in it.
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        path: String::new(),
        message: format!("cannot read the config file: {e}"),
    })?;
    parse(&text, file)
}

/// Parses and validates config text; `file` is only used in error messages and `Config::source`.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let error = |path: String, message: String| ConfigError {
        file: file.to_path_buf(),
        path,
        message,
    };
    if text.trim().is_empty() {
        return Err(error(
            ROOT.to_string(),
            "the file is empty; expected a mapping with at least listen, upstreams, session and routes"
                .to_string(),
        ));
    }
    let deserializer = serde_yaml_ng::Deserializer::from_str(text);
    let raw: FileConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let mut path = field_path(e.path());
        // A syntax error has no field (serde_path_to_error renders it `?`): its place in the
        // file is its line and column.
        if path.contains('?') {
            if let Some(at) = e.inner().location() {
                path = format!("line {} column {}", at.line(), at.column());
            }
        }
        let message = yaml_message(e.inner());
        error(path, message)
    })?;
    raw.validate(file)
        .map_err(|Invalid { path, message }| error(path, message))
}

/// Renders a serde path as `routes[1].match.methods[0]`, or `(root)`.
fn field_path(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for segment in path {
        let key = match segment {
            Segment::Seq { index } => {
                out.push_str(&format!("[{index}]"));
                continue;
            }
            Segment::Map { key } => key.as_str(),
            Segment::Enum { variant } => variant.as_str(),
            Segment::Unknown => "?",
        };
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(key);
    }
    if out.is_empty() {
        ROOT.to_string()
    } else {
        out
    }
}

/// serde_yaml_ng's message without its own path prefix, with `(at line L column C)` when known.
fn yaml_message(error: &serde_yaml_ng::Error) -> String {
    let mut message = error.to_string();
    let location = error
        .location()
        .map(|l| format!("line {} column {}", l.line(), l.column()));
    if let Some(location) = &location {
        if let Some(stripped) = message.strip_suffix(&format!(" at {location}")) {
            message = stripped.to_string();
        }
    }
    // serde_yaml_ng prefixes messages with its own rendering of the path; ours is in `path`.
    if let Some((prefix, rest)) = message.split_once(": ") {
        // Our own messages may start with a quoted value followed by ": "; never strip those.
        if !prefix.is_empty() && !prefix.starts_with('"') && !prefix.contains(char::is_whitespace) {
            message = rest.to_string();
        }
    }
    match location {
        Some(location) if !message.contains(&location) => format!("{message} (at {location})"),
        _ => message,
    }
}

/// A validation failure before the file name is attached.
struct Invalid {
    path: String,
    message: String,
}

fn invalid<T>(path: impl Into<String>, message: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid {
        path: path.into(),
        message: message.into(),
    })
}

/// A config value with a syntax of its own, parsed from a YAML string while deserializing.
trait Scalar: Sized {
    /// What a valid value looks like, for serde's "invalid type" messages.
    const EXPECTED: &'static str;
    /// Parses the text; the error says what is wrong and what was expected.
    fn parse(text: &str) -> Result<Self, InvalidValue>;
}

/// A [`Scalar`] as it appears in a `File*` struct.
struct Parsed<T>(T);

impl<'de, T: Scalar> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor<T>(PhantomData<T>);

        impl<T: Scalar> Visitor<'_> for ScalarVisitor<T> {
            type Value = Parsed<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(T::EXPECTED)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Parsed<T>, E> {
                T::parse(text).map(Parsed).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(ScalarVisitor(PhantomData))
    }
}

impl Scalar for Duration {
    const EXPECTED: &'static str = "a duration like 250ms, 60s, 5m or 12h";
    fn parse(text: &str) -> Result<Self, InvalidValue> {
        super::parse_duration(text)
    }
}

/// A size in bytes (`max_body`).
struct Bytes(usize);

impl Scalar for Bytes {
    const EXPECTED: &'static str = "a size like 64KiB or 1MiB";
    fn parse(text: &str) -> Result<Self, InvalidValue> {
        super::parse_size(text).map(Bytes)
    }
}

impl Scalar for SocketAddr {
    const EXPECTED: &'static str = "a socket address like 0.0.0.0:8080 or [::]:8080";
    fn parse(text: &str) -> Result<Self, InvalidValue> {
        text.parse().map_err(|_| {
            InvalidValue(format!(
                "{text:?} is not a socket address; expected an IP address and port like \
                 0.0.0.0:8080, 127.0.0.1:8080 or [::]:8080"
            ))
        })
    }
}

/// An upstream `address`: `host:port`, no scheme.
struct HostPort {
    /// The address as written.
    text: String,
    /// Host without IPv6 brackets.
    host: String,
}

impl Scalar for HostPort {
    const EXPECTED: &'static str = "host:port, e.g. 127.0.0.1:9000 or backend.internal:8443";
    fn parse(text: &str) -> Result<Self, InvalidValue> {
        let expected =
            "expected host:port, e.g. 127.0.0.1:9000, [::1]:9000 or backend.internal:8443";
        if text.contains("://") {
            return Err(InvalidValue(format!(
                "{text:?} has a scheme; expected host:port (set tls: true for HTTPS)"
            )));
        }
        let (host, port) = if let Some(bracketed) = text.strip_prefix('[') {
            let Some((host, port)) = bracketed.split_once("]:") else {
                return Err(InvalidValue(format!("{text:?} lacks a port; {expected}")));
            };
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(InvalidValue(format!(
                    "{host:?} is not an IPv6 address; {expected}"
                )));
            }
            (host, port)
        } else {
            let Some((host, port)) = text.rsplit_once(':') else {
                return Err(InvalidValue(format!("{text:?} lacks a port; {expected}")));
            };
            if host.contains(':') {
                return Err(InvalidValue(format!(
                    "{text:?}: an IPv6 address needs brackets; {expected}"
                )));
            }
            if !is_host_name(host) {
                return Err(InvalidValue(format!(
                    "{host:?} is not a host name or address; {expected}"
                )));
            }
            (host, port)
        };
        parse_port(port).map_err(|e| InvalidValue(format!("{text:?}: {e}; {expected}")))?;
        Ok(HostPort {
            text: text.to_string(),
            host: host.to_string(),
        })
    }
}

/// A DNS name or IPv4 literal: letters, digits, `-`, `.`, `_`.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// A TCP port 1..=65535, digits only.
fn parse_port(port: &str) -> Result<u16, InvalidValue> {
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InvalidValue(format!("port {port:?} is not a number")));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(InvalidValue(format!("port {port} is not in 1..=65535"))),
        Ok(p) => Ok(p),
    }
}

impl Scalar for PublicOrigin {
    const EXPECTED: &'static str = "an origin like https://admin.example.com";
    fn parse(text: &str) -> Result<Self, InvalidValue> {
        let expected = "expected an origin like https://admin.example.com, optionally with a path \
                        prefix like https://example.com/admin";
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(InvalidValue(format!("{text:?} has no scheme; {expected}")));
        };
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => {
                return Err(InvalidValue(format!(
                    "scheme {scheme:?} is not http or https; {expected}"
                )))
            }
        };
        if rest.contains('?') {
            return Err(InvalidValue(format!("{text:?} has a query; {expected}")));
        }
        if rest.contains('#') {
            return Err(InvalidValue(format!("{text:?} has a fragment; {expected}")));
        }
        let (authority, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err(InvalidValue(format!("{text:?} has user info; {expected}")));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let Some((address, after)) = bracketed.split_once(']') else {
                return Err(InvalidValue(format!(
                    "{text:?} has an unclosed '['; {expected}"
                )));
            };
            if address.parse::<Ipv6Addr>().is_err() {
                return Err(InvalidValue(format!(
                    "{address:?} is not an IPv6 address; {expected}"
                )));
            }
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => {
                        return Err(InvalidValue(format!(
                            "{text:?}: junk after ']'; {expected}"
                        )))
                    }
                },
            };
            (format!("[{}]", address.to_ascii_lowercase()), port)
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if !is_host_name(host) {
                return Err(InvalidValue(format!(
                    "{host:?} is not a host name; {expected}"
                )));
            }
            (host.to_ascii_lowercase(), port)
        };
        let port = match port {
            None => None,
            Some(port) => match parse_port(port) {
                Ok(p) if p == default_port => None,
                Ok(p) => Some(p),
                Err(e) => return Err(InvalidValue(format!("{text:?}: {e}; {expected}"))),
            },
        };
        if prefix.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(InvalidValue(format!(
                "{text:?}: the path prefix has whitespace; {expected}"
            )));
        }
        if prefix
            .split('/')
            .any(|segment| segment == "." || segment == "..")
        {
            return Err(InvalidValue(format!(
                "{text:?}: the path prefix has a dot segment; {expected}"
            )));
        }
        Ok(PublicOrigin {
            scheme,
            host,
            port,
            prefix: prefix.trim_end_matches('/').to_string(),
        })
    }
}

impl Scalar for IpNet {
    const EXPECTED: &'static str = "a CIDR like 10.0.0.0/8 or an IP address";
    fn parse(text: &str) -> Result<Self, InvalidValue> {
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                InvalidValue(format!(
                    "{text:?} is not a network; expected a CIDR like 10.0.0.0/8 or fd00::/8, \
                     or a single address like 192.0.2.1"
                ))
            })
    }
}

impl Scalar for Method {
    const EXPECTED: &'static str = "an HTTP method like GET, POST or DELETE";
    fn parse(text: &str) -> Result<Self, InvalidValue> {
        let upper = text.to_ascii_uppercase();
        if KNOWN_METHODS.contains(&text) {
            Method::from_bytes(text.as_bytes()).map_err(|e| InvalidValue(format!("{text:?}: {e}")))
        } else if KNOWN_METHODS.contains(&upper.as_str()) {
            Err(InvalidValue(format!(
                "HTTP methods are case-sensitive: write {upper:?}, not {text:?}"
            )))
        } else {
            Err(InvalidValue(format!(
                "unknown HTTP method {text:?}; expected one of {}",
                KNOWN_METHODS.join(", ")
            )))
        }
    }
}

impl Scalar for ProofAlg {
    const EXPECTED: &'static str = "a proof algorithm name like ES256 or EdDSA";
    fn parse(text: &str) -> Result<Self, InvalidValue> {
        let accepted = "ES256, ES384, EdDSA (or Ed25519), RS256, PS256";
        if let Some(alg) = ProofAlg::from_name(text) {
            return Ok(alg);
        }
        let why = if text.eq_ignore_ascii_case("none") {
            "an unsigned proof proves nothing".to_string()
        } else if text.len() >= 2 && text[..2].eq_ignore_ascii_case("HS") {
            "a symmetric (HMAC) key cannot be a device's public key".to_string()
        } else {
            "it is not a supported proof algorithm".to_string()
        };
        Err(InvalidValue(format!(
            "algorithm {text:?} is not accepted: {why}; expected one of {accepted}"
        )))
    }
}

impl Scalar for PathTemplate {
    const EXPECTED: &'static str = "a path template like /api/users/{id} or /{*rest}";
    fn parse(text: &str) -> Result<Self, InvalidValue> {
        PathTemplate::parse(text).map_err(|e| InvalidValue(e.0))
    }
}

/// A header name, stored lower case.
struct HeaderText(String);

impl Scalar for HeaderText {
    const EXPECTED: &'static str = "an HTTP header name like x-session";
    fn parse(text: &str) -> Result<Self, InvalidValue> {
        let name = HeaderName::from_bytes(text.as_bytes()).map_err(|_| {
            InvalidValue(format!(
                "{text:?} is not an HTTP header name; expected a token like x-session"
            ))
        })?;
        if name == "dpop" {
            return Err(InvalidValue(
                "the DPoP header carries proofs; expected another header name".to_string(),
            ));
        }
        if name.as_str().contains('_') {
            return Err(InvalidValue(format!(
                "{text:?}: the gateway drops header names containing '_' (CGI-style servers read them as '-'); use {:?}",
                name.as_str().replace('_', "-")
            )));
        }
        Ok(HeaderText(name.as_str().to_string()))
    }
}

/// A cookie name (RFC 6265 §4.1.1: a token).
struct CookieName(String);

impl Scalar for CookieName {
    const EXPECTED: &'static str = "a cookie name like session_id";
    fn parse(text: &str) -> Result<Self, InvalidValue> {
        let is_token_char = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c);
        if text.is_empty() || !text.chars().all(is_token_char) {
            return Err(InvalidValue(format!(
                "{text:?} is not a cookie name; expected a token like session_id"
            )));
        }
        Ok(CookieName(text.to_string()))
    }
}

/// A Redis URL.
struct RedisUrl(String);

impl Scalar for RedisUrl {
    const EXPECTED: &'static str = "a Redis URL like redis://127.0.0.1:6379";
    fn parse(text: &str) -> Result<Self, InvalidValue> {
        let schemes = [
            "redis://",
            "rediss://",
            "redis+sentinel://",
            "redis+cluster://",
        ];
        match schemes.iter().find_map(|s| text.strip_prefix(s)) {
            Some(rest) if !rest.is_empty() => Ok(RedisUrl(text.to_string())),
            _ => Err(InvalidValue(format!(
                "{text:?} is not a Redis URL; expected one starting with {} and a host, \
                 e.g. redis://127.0.0.1:6379",
                schemes.join(", ")
            ))),
        }
    }
}

/// The document (docs/protocol.md, "Configuration"; config/example.yaml).
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with at least listen, upstreams, session and routes"
)]
struct FileConfig {
    listen: Parsed<SocketAddr>,
    public_origin: Option<Parsed<PublicOrigin>>,
    trusted_proxies: Option<Vec<Parsed<IpNet>>>,
    metrics: Option<FileMetrics>,
    upstreams: FileUpstreams,
    upstream_ca_file: Option<PathBuf>,
    session: FileSession,
    confirmation: Option<FileConfirmation>,
    provenance: Option<FileProvenance>,
    store: Option<FileStore>,
    audit: Option<FileAudit>,
    server: Option<FileServer>,
    log: Option<FileLog>,
    browser: Option<FileBrowser>,
    policy: Option<FilePolicy>,
    risk: Option<FileRisk2>,
    routes: Vec<FileRoute>,
}

/// `policy:`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { cedar: config/policies.cedar, schema: config/policies.cedarschema }"
)]
struct FilePolicy {
    cedar: PathBuf,
    schema: Option<PathBuf>,
}

/// `risk.on_ip_change`.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum FileOnIpChange {
    Allow,
    StepUp,
    Deny,
}

/// `risk:`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { on_ip_change: step_up, max_age: 5m }"
)]
struct FileRisk2 {
    on_ip_change: Option<FileOnIpChange>,
    max_age: Option<Parsed<Duration>>,
}

/// `routes[i].require`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { acr: [phr], max_age: 5m }"
)]
struct FileRequire {
    acr: Option<Vec<String>>,
    max_age: Option<Parsed<Duration>>,
}

/// `browser:`: confirmations by people in a browser, on a separate origin.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { origin: \"https://confirm.admin.example.com\" }"
)]
struct FileBrowser {
    origin: Parsed<PublicOrigin>,
    listen: Option<Parsed<SocketAddr>>,
    rp_id: Option<String>,
    user_verification: Option<FileUserVerification>,
    hold_ttl: Option<Parsed<Duration>>,
    tls: Option<FileTls>,
}

/// `browser.tls`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { cert: /etc/countersign/confirm.pem, key: /etc/countersign/confirm.key }"
)]
struct FileTls {
    cert: PathBuf,
    key: PathBuf,
}

/// `browser.user_verification`.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum FileUserVerification {
    Required,
    Preferred,
}

impl FileBrowser {
    fn validate(self, public_origin: Option<&PublicOrigin>) -> Result<BrowserConfig, Invalid> {
        let Parsed(origin) = self.origin;
        if !origin.prefix.is_empty() {
            return invalid(
                "browser.origin",
                "must be an origin without a path, like https://confirm.admin.example.com",
            );
        }
        match public_origin {
            None => {
                return invalid(
                    "browser.origin",
                    "needs public_origin: the confirmation returns the browser to the app there",
                )
            }
            Some(public) if public.origin() == origin.origin() => {
                return invalid(
                    "browser.origin",
                    "must differ from public_origin: a script in the app must not reach the \
                     confirmation page; use another host, e.g. confirm.admin.example.com",
                )
            }
            Some(_) => {}
        }
        let rp_id = match self.rp_id {
            None => origin.host.clone(),
            Some(rp_id) => {
                let rp_id = rp_id.to_ascii_lowercase();
                // WebAuthn §5.1.4: the RP id is the origin's host or a registrable suffix of it.
                let host = &origin.host;
                if rp_id.is_empty() || !(host == &rp_id || host.ends_with(&format!(".{rp_id}"))) {
                    return invalid(
                        "browser.rp_id",
                        format!("must be {host} or a parent domain of it"),
                    );
                }
                rp_id
            }
        };
        let tls =
            match self.tls {
                None => None,
                Some(_) if self.listen.is_none() => return invalid(
                    "browser.tls",
                    "needs browser.listen: TLS is served on the confirmation origin's own listener",
                ),
                Some(_) if origin.scheme != "https" => return invalid(
                    "browser.tls",
                    "needs an https:// browser.origin: the browser reaches the listener over TLS",
                ),
                Some(FileTls { cert, key }) => Some(TlsFiles { cert, key }),
            };
        Ok(BrowserConfig {
            origin,
            tls,
            listen: self.listen.map(|Parsed(a)| a.to_string()),
            rp_id,
            user_verification: match self.user_verification {
                None | Some(FileUserVerification::Required) => UserVerification::Required,
                Some(FileUserVerification::Preferred) => UserVerification::Preferred,
            },
            hold_ttl: positive("browser.hold_ttl", self.hold_ttl, DEFAULT_HOLD_TTL)?,
        })
    }
}

/// `metrics:`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { listen: \"127.0.0.1:9464\" }"
)]
struct FileMetrics {
    listen: Parsed<SocketAddr>,
}

/// `upstreams:`, in file order, names unique.
struct FileUpstreams(Vec<(String, FileUpstream)>);

impl<'de> Deserialize<'de> for FileUpstreams {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UpstreamsVisitor;

        impl<'de> Visitor<'de> for UpstreamsVisitor {
            type Value = FileUpstreams;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of upstream names to { address: host:port }")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FileUpstreams, A::Error> {
                let mut upstreams: Vec<(String, FileUpstream)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if upstreams.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!(
                            "upstream {name:?} is defined twice"
                        )));
                    }
                    let upstream = map.next_value::<FileUpstream>()?;
                    upstreams.push((name, upstream));
                }
                Ok(FileUpstreams(upstreams))
            }
        }

        deserializer.deserialize_map(UpstreamsVisitor)
    }
}

/// One upstream.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { address: \"127.0.0.1:9000\", tls: false }"
)]
struct FileUpstream {
    address: Parsed<HostPort>,
    tls: Option<bool>,
    sni: Option<String>,
    connect_timeout: Option<Parsed<Duration>>,
    read_timeout: Option<Parsed<Duration>>,
    keepalive: Option<bool>,
}

/// `session.kind`.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum FileSessionKind {
    BearerJwt,
    Cookie,
    Header,
}

impl FileSessionKind {
    fn as_str(self) -> &'static str {
        match self {
            FileSessionKind::BearerJwt => "bearer_jwt",
            FileSessionKind::Cookie => "cookie",
            FileSessionKind::Header => "header",
        }
    }
}

/// `session.upstream_scheme`.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum FileUpstreamScheme {
    Bearer,
    Dpop,
}

/// `session:`; which keys apply depends on `kind`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { kind: header, header: x-session }"
)]
struct FileSession {
    kind: FileSessionKind,
    jwks_file: Option<PathBuf>,
    public_key_pem: Option<PathBuf>,
    hs256_secret_env: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    cookie: Option<Parsed<CookieName>>,
    header: Option<Parsed<HeaderText>>,
    upstream_scheme: Option<FileUpstreamScheme>,
    binding_ttl: Option<Parsed<Duration>>,
    allow_bearer_scheme: Option<bool>,
    subject_header: Option<Parsed<HeaderText>>,
    groups_claim: Option<String>,
    subject_from: Option<FileSubjectFrom>,
    binding: Option<FileBinding>,
    max_devices: Option<u64>,
    invite_ttl: Option<Parsed<Duration>>,
}

/// `session.binding`.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum FileBinding {
    FirstUse,
    Enrolled,
}

/// `session.subject_from`: exactly one of its keys.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { header: x-authenticated-user } or { cookie_jwt_claim: sub }"
)]
struct FileSubjectFrom {
    header: Option<Parsed<HeaderText>>,
    cookie_jwt_claim: Option<String>,
}

/// `confirmation:`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { algs: [ES256, EdDSA], nonce_ttl: 60s }"
)]
struct FileConfirmation {
    algs: Option<Vec<Parsed<ProofAlg>>>,
    nonce_ttl: Option<Parsed<Duration>>,
    proof_max_age: Option<Parsed<Duration>>,
    clock_skew: Option<Parsed<Duration>>,
    continuation_ttl: Option<Parsed<Duration>>,
    max_body: Option<Parsed<Bytes>>,
    max_outstanding_per_session: Option<u32>,
    max_outstanding_per_ip: Option<u32>,
}

/// `provenance:`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { signing_key: config/gateway-signing.pem }"
)]
struct FileProvenance {
    signing_key: Option<PathBuf>,
}

/// `store.kind`.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum FileStoreKind {
    Memory,
    Redis,
}

/// `store:`; which keys apply depends on `kind`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { kind: memory } or { kind: redis, url: \"redis://127.0.0.1:6379\" }"
)]
struct FileStore {
    kind: FileStoreKind,
    max_entries: Option<u64>,
    url: Option<Parsed<RedisUrl>>,
    timeout: Option<Parsed<Duration>>,
}

/// `audit:`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { path: /var/log/countersign/audit.jsonl }"
)]
struct FileAudit {
    path: Option<PathBuf>,
    stdout: Option<bool>,
    passthrough: Option<bool>,
    checkpoint_every: Option<u64>,
}

/// Refuses an audit path below something that exists and is not a directory: opening it would
/// fail with the operating system's "File exists" or "Not a directory", which names neither.
fn audit_parent_is_a_directory(path: &Path) -> Result<(), Invalid> {
    for ancestor in path.ancestors().skip(1) {
        if let Ok(meta) = std::fs::metadata(ancestor) {
            if meta.is_dir() {
                return Ok(());
            }
            return invalid(
                "audit.path",
                format!(
                    "{} is a file, not a directory, so {} cannot be created in it; point audit.path into a directory",
                    ancestor.display(),
                    path.display()
                ),
            );
        }
    }
    Ok(())
}

/// `server:`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { threads: 4, shutdown_timeout: 10s }"
)]
struct FileServer {
    threads: Option<usize>,
    grace_period: Option<Parsed<Duration>>,
    shutdown_timeout: Option<Parsed<Duration>>,
    upgrade_sock: Option<PathBuf>,
    keepalive_timeout: Option<Parsed<Duration>>,
    header_timeout: Option<Parsed<Duration>>,
    max_header_bytes: Option<Parsed<Bytes>>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
}

/// `log.format`.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum FileLogFormat {
    Pretty,
    Json,
}

/// `log:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping like { format: json }")]
struct FileLog {
    format: Option<FileLogFormat>,
}

/// `routes[i].risk`.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum FileRisk {
    Low,
    High,
}

/// One entry of `routes:`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a route like { name: delete-user, match: { methods: [DELETE], path: \"/api/users/{id}\" }, upstream: legacy-admin, risk: high }"
)]
struct FileRoute {
    name: String,
    #[serde(rename = "match")]
    matcher: FileMatch,
    upstream: String,
    risk: FileRisk,
    /// `false`: observe mode (high-impact routes only).
    enforce: Option<bool>,
    /// `true`: WebSocket upgrades may pass (low-risk routes only).
    websocket: Option<bool>,
    require: Option<FileRequire>,
    approval: Option<FileApproval>,
}

/// `routes[i].approval`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an approval like { approvers: { subjects: [alice, bob] }, quorum: 2, ttl: 30m }"
)]
struct FileApproval {
    approvers: FileApprovers,
    quorum: Option<u64>,
    ttl: Option<Parsed<Duration>>,
    notify: Option<FileNotify>,
}

/// `routes[i].approval.approvers`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "approvers like { subjects: [alice, bob], groups: [sre-leads] }"
)]
struct FileApprovers {
    subjects: Option<Vec<String>>,
    groups: Option<Vec<String>>,
}

/// `routes[i].approval.notify`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a webhook like { webhook: \"http://127.0.0.1:9300/hooks\", secret_env: CS_WEBHOOK_SECRET }"
)]
struct FileNotify {
    webhook: String,
    secret_env: String,
}

/// One condition's allowed values: a scalar, a list of scalars, or `"*"` (present at all).
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a value, a list of values, or \"*\" for present with any value"
)]
enum FileAllowed {
    One(FileScalar),
    Many(Vec<FileScalar>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FileScalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl FileScalar {
    fn value(self) -> serde_json::Value {
        match self {
            FileScalar::Bool(b) => b.into(),
            FileScalar::Int(i) => i.into(),
            FileScalar::Float(f) => f.into(),
            FileScalar::Str(s) => s.into(),
        }
    }
}

/// Compiles `match.query`, `match.form` or `match.json`.
fn conditions(
    path: &str,
    file: Option<BTreeMap<String, FileAllowed>>,
    pointers: bool,
) -> Result<BTreeMap<String, Allowed>, Invalid> {
    let mut out = BTreeMap::new();
    for (name, allowed) in file.unwrap_or_default() {
        if pointers && !name.starts_with('/') {
            return invalid(
                format!("{path}.{name}"),
                "a JSON pointer (RFC 6901) starting with '/', e.g. \"/action\" or \"/user/role\"",
            );
        }
        if name.is_empty() {
            return invalid(path, "a condition needs a non-empty name");
        }
        let allowed =
            match allowed {
                FileAllowed::One(FileScalar::Str(s)) if s == "*" => Allowed::Any,
                FileAllowed::One(v) => Allowed::OneOf(vec![v.value()]),
                FileAllowed::Many(list) if list.is_empty() => return invalid(
                    format!("{path}.{name}"),
                    "lists no value, so the condition could never hold; use \"*\" for any value",
                ),
                FileAllowed::Many(list) => {
                    Allowed::OneOf(list.into_iter().map(FileScalar::value).collect())
                }
            };
        out.insert(name, allowed);
    }
    Ok(out)
}

/// `routes[i].match`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { methods: [DELETE], path: \"/api/users/{id}\" }"
)]
struct FileMatch {
    methods: Option<Vec<Parsed<Method>>>,
    path: Parsed<PathTemplate>,
    query: Option<BTreeMap<String, FileAllowed>>,
    form: Option<BTreeMap<String, FileAllowed>>,
    json: Option<BTreeMap<String, FileAllowed>>,
}

/// Route and upstream names: they end up in metric labels, audit records and log lines.
fn check_name(path: &str, what: &str, name: &str) -> Result<(), Invalid> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return invalid(
            path,
            format!("{what} name {name:?} must be non-empty and use only letters, digits, '-', '_' and '.'"),
        );
    }
    Ok(())
}

/// A non-empty string setting.
fn non_empty(path: &str, value: String) -> Result<String, Invalid> {
    if value.trim().is_empty() {
        return invalid(path, "must not be empty");
    }
    Ok(value)
}

/// A duration that must be longer than zero.
fn positive(
    path: &str,
    value: Option<Parsed<Duration>>,
    default: Duration,
) -> Result<Duration, Invalid> {
    let value = value.map_or(default, |Parsed(d)| d);
    if value.is_zero() {
        return invalid(path, "must be longer than 0s");
    }
    Ok(value)
}

/// Whether `earlier` matches every method `later` does.
fn covers(earlier: &Option<Vec<Method>>, later: &Option<Vec<Method>>) -> bool {
    match (earlier, later) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(earlier), Some(later)) => later.iter().all(|m| earlier.contains(m)),
    }
}

fn describe_methods(methods: &Option<Vec<Method>>) -> String {
    match methods {
        None => "every method".to_string(),
        Some(methods) => methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

impl FileConfig {
    /// Validates in file order, so the first error reported is the first one in the file.
    fn validate(self, file: &Path) -> Result<Config, Invalid> {
        let trusted_proxies: Vec<IpNet> = self
            .trusted_proxies
            .unwrap_or_default()
            .into_iter()
            .map(|Parsed(net)| net)
            .collect();
        if self.upstreams.0.is_empty() {
            return invalid(
                "upstreams",
                "at least one upstream is required, e.g. legacy-admin: { address: \"127.0.0.1:9000\" }",
            );
        }
        let mut upstreams = BTreeMap::new();
        for (name, upstream) in self.upstreams.0 {
            let path = format!("upstreams.{name}");
            check_name(&path, "upstream", &name)?;
            let upstream = upstream.validate(&path, name.clone())?;
            upstreams.insert(name, upstream);
        }
        let groups_claim_set = self.session.groups_claim.is_some();
        let session = self.session.validate()?;
        if session.subject_header.is_some() && trusted_proxies.is_empty() {
            return invalid(
                "session.subject_header",
                "is believed only from trusted_proxies, and none are configured; \
                 add the auth proxy's address to trusted_proxies",
            );
        }
        let confirmation = match self.confirmation {
            Some(c) => c.validate()?,
            None => FileConfirmation::default_config(),
        };
        let store = match self.store {
            Some(store) => store.validate()?,
            None => StoreConfig::Memory {
                max_entries: DEFAULT_MAX_ENTRIES,
            },
        };
        if session.binding == DeviceBinding::Enrolled && matches!(store, StoreConfig::Memory { .. })
        {
            // Nothing could ever enrol a first device: the commands cannot reach a process's memory.
            return invalid(
                "session.binding",
                "enrolled needs the shared store (store.kind: redis): devices are enrolled with \
                 countersign devices, which cannot reach the memory store inside a gateway process",
            );
        }
        if let Some(path) = self.audit.as_ref().and_then(|a| a.path.as_deref()) {
            audit_parent_is_a_directory(path)?;
        }
        let audit = match self.audit {
            None => AuditConfig {
                path: None,
                stdout: false,
                passthrough: false,
                checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            },
            Some(a) => AuditConfig {
                checkpoint_every: match a.checkpoint_every {
                    Some(0) => return invalid("audit.checkpoint_every", "must be at least 1"),
                    n => n.unwrap_or(DEFAULT_CHECKPOINT_EVERY),
                },
                path: a.path,
                stdout: a.stdout.unwrap_or(false),
                passthrough: a.passthrough.unwrap_or(false),
            },
        };
        let server = match self.server {
            Some(server) => server.validate()?,
            None => ServerConfig {
                threads: default_threads(),
                grace_period: DEFAULT_GRACE_PERIOD,
                shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
                upgrade_sock: super::default_upgrade_sock(),
                keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
                header_timeout: DEFAULT_HEADER_TIMEOUT,
                max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            },
        };
        let log = match self.log.and_then(|l| l.format) {
            None | Some(FileLogFormat::Pretty) => LogConfig::Pretty,
            Some(FileLogFormat::Json) => LogConfig::Json,
        };
        let bearer_jwt = matches!(session.kind, SessionKind::BearerJwt { .. });
        let routes = validate_routes(self.routes, &upstreams, bearer_jwt, groups_claim_set)?;
        let risk = match self.risk {
            None => RiskConfig::default(),
            Some(risk) => RiskConfig {
                on_ip_change: match risk.on_ip_change {
                    None | Some(FileOnIpChange::Allow) => OnIpChange::Allow,
                    Some(FileOnIpChange::StepUp) => OnIpChange::StepUp,
                    Some(FileOnIpChange::Deny) => OnIpChange::Deny,
                },
                max_age: positive("risk.max_age", risk.max_age, RiskConfig::default().max_age)?,
            },
        };
        let policy = match self.policy {
            None => None,
            Some(policy) => {
                let actions: Vec<&str> = routes
                    .routes()
                    .iter()
                    .filter(|r| r.risk == Risk::High)
                    .map(|r| r.name.as_str())
                    .collect();
                let engine = Engine::load(&policy.cedar, policy.schema.as_deref(), &actions)
                    .map_err(|e| Invalid {
                        path: "policy".to_string(),
                        message: e.to_string(),
                    })?;
                Some(Arc::new(engine))
            }
        };
        let public_origin = self.public_origin.map(|Parsed(o)| o);
        let browser = match self.browser {
            Some(b) => Some(b.validate(public_origin.as_ref())?),
            None => None,
        };
        Ok(Config {
            source: file.to_path_buf(),
            listen: self.listen.0.to_string(),
            public_origin,
            trusted_proxies,
            metrics: self.metrics.map(|m| MetricsConfig {
                listen: m.listen.0.to_string(),
            }),
            upstreams,
            upstream_ca_file: self.upstream_ca_file,
            session,
            confirmation,
            provenance: ProvenanceConfig {
                signing_key: self.provenance.and_then(|p| p.signing_key),
            },
            store,
            audit,
            routes,
            server,
            log,
            policy,
            risk,
            browser,
        })
    }
}

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_BINDING_TTL: Duration = Duration::from_secs(12 * 3600);
/// Devices enrolled per subject: a laptop, a phone, a hardware key or two, with room to spare.
const DEFAULT_MAX_DEVICES: usize = 16;
/// A bound on the bound: the registry of a subject is read whole by `devices list`.
const MAX_MAX_DEVICES: u64 = 1024;
const DEFAULT_INVITE_TTL: Duration = Duration::from_secs(15 * 60);
const DEFAULT_NONCE_TTL: Duration = Duration::from_secs(60);
const DEFAULT_PROOF_MAX_AGE: Duration = Duration::from_secs(60);
const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(5);
const DEFAULT_CONTINUATION_TTL: Duration = Duration::from_secs(30);
const DEFAULT_OUTSTANDING_PER_SESSION: u32 = 32;
const DEFAULT_OUTSTANDING_PER_IP: u32 = 1024;

/// A count that must be at least 1, or its default.
fn at_least_one(path: &str, value: Option<u32>, default: u32) -> Result<u32, Invalid> {
    match value {
        None => Ok(default),
        Some(0) => invalid(path, "must be at least 1 (challenges outstanding at once)"),
        Some(n) => Ok(n),
    }
}
const DEFAULT_MAX_BODY: usize = 1 << 20;
const DEFAULT_ALGS: [ProofAlg; 2] = [ProofAlg::Es256, ProofAlg::EdDsa];
const DEFAULT_HOLD_TTL: Duration = Duration::from_secs(120);
const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// How long SIGTERM lets in-flight requests finish before the runtimes stop.
const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5);
const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;
const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_HEADER_BYTES: usize = 32 << 10;
/// The range a request head limit may be set in: below 1 KiB ordinary browsers are refused,
/// above 1 MiB Pingora's own limit applies first.
const HEADER_BYTES_RANGE: std::ops::RangeInclusive<usize> = (1 << 10)..=(1 << 20);
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl FileUpstream {
    fn validate(self, path: &str, name: String) -> Result<Upstream, Invalid> {
        let Parsed(address) = self.address;
        let sni = match self.sni {
            Some(sni) => non_empty(&format!("{path}.sni"), sni)?,
            None => address.host,
        };
        Ok(Upstream {
            name,
            address: address.text,
            tls: self.tls.unwrap_or(false),
            sni,
            connect_timeout: positive(
                &format!("{path}.connect_timeout"),
                self.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
            )?,
            read_timeout: positive(
                &format!("{path}.read_timeout"),
                self.read_timeout,
                DEFAULT_READ_TIMEOUT,
            )?,
            keepalive: self.keepalive.unwrap_or(true),
        })
    }
}

impl FileSession {
    fn validate(self) -> Result<SessionConfig, Invalid> {
        let kind = self.kind;
        // Keys that belong to another kind are refused rather than ignored: a `cookie:` next to
        // `kind: bearer_jwt` means the operator believes something that is not true.
        let only_for = |key: &str, set: bool, allowed: &[FileSessionKind]| -> Result<(), Invalid> {
            if set && !allowed.contains(&kind) {
                let kinds: Vec<&str> = allowed.iter().map(|k| k.as_str()).collect();
                return invalid(
                    format!("session.{key}"),
                    format!(
                        "only used with kind: {}; this session has kind: {}",
                        kinds.join(" or "),
                        kind.as_str()
                    ),
                );
            }
            Ok(())
        };
        use FileSessionKind::{BearerJwt, Cookie, Header};
        only_for(
            "subject_from",
            self.subject_from.is_some(),
            &[Cookie, Header],
        )?;
        let (subject_from_header, cookie_jwt_claim) =
            match self.subject_from {
                None => (None, None),
                Some(FileSubjectFrom {
                    header: Some(_),
                    cookie_jwt_claim: Some(_),
                })
                | Some(FileSubjectFrom {
                    header: None,
                    cookie_jwt_claim: None,
                }) => return invalid(
                    "session.subject_from",
                    "takes exactly one of header (set by a trusted auth proxy) or cookie_jwt_claim",
                ),
                Some(FileSubjectFrom {
                    header: Some(Parsed(HeaderText(name))),
                    ..
                }) => (Some(name), None),
                Some(FileSubjectFrom {
                    cookie_jwt_claim: Some(claim),
                    ..
                }) => (
                    None,
                    Some(non_empty("session.subject_from.cookie_jwt_claim", claim)?),
                ),
            };
        if cookie_jwt_claim.is_some() && kind != Cookie {
            return invalid(
                "session.subject_from.cookie_jwt_claim",
                format!(
                    "only used with kind: cookie; this session has kind: {}",
                    kind.as_str()
                ),
            );
        }
        if subject_from_header.is_some() && self.subject_header.is_some() {
            return invalid(
                "session.subject_from",
                "subject_header and subject_from both name the subject; keep one",
            );
        }
        // A cookie JWT is verified like a bearer_jwt session token, with the same keys.
        let jwt_kinds: &[FileSessionKind] = if cookie_jwt_claim.is_some() {
            &[BearerJwt, Cookie]
        } else {
            &[BearerJwt]
        };
        only_for("jwks_file", self.jwks_file.is_some(), jwt_kinds)?;
        only_for("public_key_pem", self.public_key_pem.is_some(), jwt_kinds)?;
        only_for(
            "hs256_secret_env",
            self.hs256_secret_env.is_some(),
            jwt_kinds,
        )?;
        only_for("issuer", self.issuer.is_some(), jwt_kinds)?;
        only_for("audience", self.audience.is_some(), jwt_kinds)?;
        only_for(
            "allow_bearer_scheme",
            self.allow_bearer_scheme.is_some(),
            &[BearerJwt],
        )?;
        only_for("cookie", self.cookie.is_some(), &[Cookie])?;
        only_for("header", self.header.is_some(), &[Header])?;
        only_for("groups_claim", self.groups_claim.is_some(), &[BearerJwt])?;
        only_for(
            "subject_header",
            self.subject_header.is_some(),
            &[Cookie, Header],
        )?;

        let issuer = self
            .issuer
            .map(|v| non_empty("session.issuer", v))
            .transpose()?;
        let audience = self
            .audience
            .map(|v| non_empty("session.audience", v))
            .transpose()?;
        let subject_from_cookie_jwt = match cookie_jwt_claim {
            Some(claim) => Some(CookieJwtSubject {
                claim,
                keys: key_source(
                    "cookie with subject_from.cookie_jwt_claim",
                    self.jwks_file.clone(),
                    self.public_key_pem.clone(),
                    self.hs256_secret_env.clone(),
                )?,
                issuer: issuer.clone(),
                audience: audience.clone(),
            }),
            None => None,
        };
        let session_kind = match kind {
            BearerJwt => {
                let keys = key_source(
                    "bearer_jwt",
                    self.jwks_file.clone(),
                    self.public_key_pem.clone(),
                    self.hs256_secret_env.clone(),
                )?;
                SessionKind::BearerJwt {
                    keys,
                    issuer: issuer.clone(),
                    audience: audience.clone(),
                }
            }
            Cookie => match self.cookie {
                Some(Parsed(CookieName(name))) => SessionKind::Cookie { name },
                None => {
                    return invalid(
                        "session.cookie",
                        "kind cookie needs the cookie name, e.g. cookie: session_id",
                    )
                }
            },
            Header => match self.header {
                Some(Parsed(HeaderText(name))) => SessionKind::Header { name },
                None => {
                    return invalid(
                        "session.header",
                        "kind header needs the header name, e.g. header: x-session",
                    )
                }
            },
        };
        Ok(SessionConfig {
            kind: session_kind,
            upstream_scheme: match self.upstream_scheme {
                None | Some(FileUpstreamScheme::Bearer) => UpstreamScheme::Bearer,
                Some(FileUpstreamScheme::Dpop) => UpstreamScheme::Dpop,
            },
            binding_ttl: positive("session.binding_ttl", self.binding_ttl, DEFAULT_BINDING_TTL)?,
            binding: match self.binding {
                None | Some(FileBinding::FirstUse) => DeviceBinding::FirstUse,
                Some(FileBinding::Enrolled) => DeviceBinding::Enrolled,
            },
            max_devices: match self.max_devices {
                None => DEFAULT_MAX_DEVICES,
                Some(0) => {
                    return invalid(
                        "session.max_devices",
                        "must be at least 1 (devices enrolled per subject)",
                    )
                }
                Some(n) if n > MAX_MAX_DEVICES => {
                    return invalid(
                        "session.max_devices",
                        format!("must be at most {MAX_MAX_DEVICES} (devices enrolled per subject)"),
                    )
                }
                Some(n) => n as usize,
            },
            invite_ttl: positive("session.invite_ttl", self.invite_ttl, DEFAULT_INVITE_TTL)?,
            allow_bearer_scheme: self.allow_bearer_scheme.unwrap_or(false),
            subject_header: self
                .subject_header
                .map(|Parsed(HeaderText(name))| name)
                .or(subject_from_header),
            subject_from_cookie_jwt,
            groups_claim: match self.groups_claim {
                Some(claim) => non_empty("session.groups_claim", claim)?,
                None => "groups".to_string(),
            },
        })
    }
}

/// The one JWT key source of `session` (for `kind`, named in messages).
fn key_source(
    kind: &str,
    jwks_file: Option<PathBuf>,
    public_key_pem: Option<PathBuf>,
    hs256_secret_env: Option<String>,
) -> Result<JwtKeys, Invalid> {
    let mut sources = Vec::new();
    if let Some(file) = jwks_file {
        sources.push(("jwks_file", JwtKeys::JwksFile(file)));
    }
    if let Some(file) = public_key_pem {
        sources.push(("public_key_pem", JwtKeys::PublicKeyPem(file)));
    }
    if let Some(var) = hs256_secret_env {
        sources.push(("hs256_secret_env", JwtKeys::Hs256Env(var)));
    }
    match sources.as_slice() {
        [] => invalid(
            "session",
            format!(
                "kind {kind} needs exactly one key source: jwks_file, public_key_pem or \
                 hs256_secret_env; none is set"
            ),
        ),
        [(first, _), (second, _), ..] => invalid(
            format!("session.{second}"),
            format!(
                "kind {kind} takes exactly one key source (jwks_file, public_key_pem or \
                 hs256_secret_env), but both {first} and {second} are set"
            ),
        ),
        [(key, keys)] => {
            check_key_source(key, keys)?;
            Ok(keys.clone())
        }
    }
}

/// The single `bearer_jwt` key source must name something.
fn check_key_source(key: &str, keys: &JwtKeys) -> Result<(), Invalid> {
    let path = format!("session.{key}");
    match keys {
        JwtKeys::JwksFile(file) | JwtKeys::PublicKeyPem(file) if file.as_os_str().is_empty() => {
            invalid(path, "must name a file")
        }
        JwtKeys::Hs256Env(var)
            if var.is_empty()
                || var.starts_with(|c: char| c.is_ascii_digit())
                || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            invalid(
                path,
                format!(
                    "{var:?} is not an environment variable name; expected one like IDP_HS256_SECRET"
                ),
            )
        }
        _ => Ok(()),
    }
}

impl FileConfirmation {
    fn default_config() -> ConfirmationConfig {
        ConfirmationConfig {
            algs: DEFAULT_ALGS.to_vec(),
            nonce_ttl: DEFAULT_NONCE_TTL,
            proof_max_age: DEFAULT_PROOF_MAX_AGE,
            clock_skew: DEFAULT_CLOCK_SKEW,
            continuation_ttl: DEFAULT_CONTINUATION_TTL,
            max_body: DEFAULT_MAX_BODY,
            max_outstanding_per_session: DEFAULT_OUTSTANDING_PER_SESSION,
            max_outstanding_per_ip: DEFAULT_OUTSTANDING_PER_IP,
        }
    }

    fn validate(self) -> Result<ConfirmationConfig, Invalid> {
        let algs = match self.algs {
            None => DEFAULT_ALGS.to_vec(),
            Some(names) => {
                let mut algs = Vec::new();
                // `EdDSA` and `Ed25519` name the same algorithm; keep the first.
                for Parsed(alg) in names {
                    if !algs.contains(&alg) {
                        algs.push(alg);
                    }
                }
                if algs.is_empty() {
                    return invalid(
                        "confirmation.algs",
                        "at least one algorithm is required, e.g. [ES256, EdDSA]",
                    );
                }
                algs
            }
        };
        Ok(ConfirmationConfig {
            algs,
            nonce_ttl: positive("confirmation.nonce_ttl", self.nonce_ttl, DEFAULT_NONCE_TTL)?,
            proof_max_age: positive(
                "confirmation.proof_max_age",
                self.proof_max_age,
                DEFAULT_PROOF_MAX_AGE,
            )?,
            clock_skew: self.clock_skew.map_or(DEFAULT_CLOCK_SKEW, |Parsed(d)| d),
            continuation_ttl: positive(
                "confirmation.continuation_ttl",
                self.continuation_ttl,
                DEFAULT_CONTINUATION_TTL,
            )?,
            max_body: self.max_body.map_or(DEFAULT_MAX_BODY, |Parsed(Bytes(n))| n),
            max_outstanding_per_session: at_least_one(
                "confirmation.max_outstanding_per_session",
                self.max_outstanding_per_session,
                DEFAULT_OUTSTANDING_PER_SESSION,
            )?,
            max_outstanding_per_ip: at_least_one(
                "confirmation.max_outstanding_per_ip",
                self.max_outstanding_per_ip,
                DEFAULT_OUTSTANDING_PER_IP,
            )?,
        })
    }
}

impl FileStore {
    fn validate(self) -> Result<StoreConfig, Invalid> {
        match self.kind {
            FileStoreKind::Memory => {
                if self.url.is_some() {
                    return invalid("store.url", "only used with kind: redis");
                }
                if self.timeout.is_some() {
                    return invalid("store.timeout", "only used with kind: redis");
                }
                let max_entries = self.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES);
                if max_entries == 0 {
                    return invalid("store.max_entries", "must be at least 1");
                }
                Ok(StoreConfig::Memory { max_entries })
            }
            FileStoreKind::Redis => {
                if self.max_entries.is_some() {
                    return invalid("store.max_entries", "only used with kind: memory");
                }
                let Some(Parsed(RedisUrl(url))) = self.url else {
                    return invalid(
                        "store.url",
                        "kind redis needs a url, e.g. url: \"redis://127.0.0.1:6379\"",
                    );
                };
                Ok(StoreConfig::Redis {
                    url,
                    timeout: positive("store.timeout", self.timeout, DEFAULT_REDIS_TIMEOUT)?,
                })
            }
        }
    }
}

impl FileServer {
    fn validate(self) -> Result<ServerConfig, Invalid> {
        let threads = self.threads.unwrap_or_else(default_threads);
        if threads == 0 {
            return invalid("server.threads", "must be at least 1");
        }
        Ok(ServerConfig {
            threads,
            grace_period: self
                .grace_period
                .map_or(DEFAULT_GRACE_PERIOD, |Parsed(d)| d),
            shutdown_timeout: self
                .shutdown_timeout
                .map_or(DEFAULT_SHUTDOWN_TIMEOUT, |Parsed(d)| d),
            upgrade_sock: match self.upgrade_sock {
                Some(p) if p.is_relative() || p.parent().is_none_or(|d| d == Path::new("/")) => {
                    return invalid(
                        "server.upgrade_sock",
                        "must be an absolute path inside a private directory, e.g. /run/countersign/upgrade.sock",
                    )
                }
                Some(p) => p,
                None => super::default_upgrade_sock(),
            },
            keepalive_timeout: match self.keepalive_timeout {
                Some(Parsed(d)) if d < Duration::from_secs(1) => {
                    return invalid("server.keepalive_timeout", "must be at least 1s")
                }
                Some(Parsed(d)) => d,
                None => DEFAULT_KEEPALIVE_TIMEOUT,
            },
            header_timeout: match self.header_timeout {
                Some(Parsed(d)) if d < Duration::from_secs(1) => {
                    return invalid("server.header_timeout", "must be at least 1s")
                }
                Some(Parsed(d)) => d,
                None => DEFAULT_HEADER_TIMEOUT,
            },
            max_header_bytes: match self.max_header_bytes {
                Some(Parsed(Bytes(n))) if !HEADER_BYTES_RANGE.contains(&n) => {
                    return invalid(
                        "server.max_header_bytes",
                        "must be between 1KiB and 1MiB (nginx, Envoy and HAProxy use 8KiB to 64KiB)",
                    )
                }
                Some(Parsed(Bytes(n))) => n,
                None => DEFAULT_MAX_HEADER_BYTES,
            },
            max_connections: match self.max_connections {
                Some(0) => return invalid("server.max_connections", "must be at least 1"),
                Some(n) => n,
                None => DEFAULT_MAX_CONNECTIONS,
            },
            max_connections_per_ip: match self.max_connections_per_ip {
                Some(0) => return invalid("server.max_connections_per_ip", "must be at least 1"),
                Some(n) => n,
                None => DEFAULT_MAX_CONNECTIONS_PER_IP,
            },
        })
    }
}

/// Checks names, upstream references and reachability, and compiles the table.
fn validate_routes(
    file_routes: Vec<FileRoute>,
    upstreams: &BTreeMap<String, Upstream>,
    bearer_jwt: bool,
    groups_claim_set: bool,
) -> Result<RouteTable, Invalid> {
    if file_routes.is_empty() {
        return invalid(
            "routes",
            "at least one route is required; the last is usually a catch-all like \
             { name: default, match: { path: \"/{*rest}\" }, upstream: legacy-admin, risk: low }",
        );
    }
    let mut routes: Vec<Route> = Vec::with_capacity(file_routes.len());
    for (i, file_route) in file_routes.into_iter().enumerate() {
        let path = format!("routes[{i}]");
        let name = file_route.name;
        check_name(&format!("{path}.name"), "route", &name)?;
        if let Some(j) = routes.iter().position(|r| r.name == name) {
            return invalid(
                format!("{path}.name"),
                format!("duplicate route name {name:?}: routes[{j}] already has it; names must be unique"),
            );
        }
        if !upstreams.contains_key(&file_route.upstream) {
            let defined: Vec<&str> = upstreams.keys().map(String::as_str).collect();
            return invalid(
                format!("{path}.upstream"),
                format!(
                    "unknown upstream {:?}; defined: {}",
                    file_route.upstream,
                    defined.join(", ")
                ),
            );
        }
        let matcher = file_route.matcher;
        let methods = match matcher.methods {
            None => None,
            Some(list) if list.is_empty() => {
                return invalid(
                    format!("{path}.match.methods"),
                    "lists no method, so the route could never match; omit methods to match every method",
                )
            }
            Some(list) => {
                let mut methods: Vec<Method> = Vec::with_capacity(list.len());
                for Parsed(method) in list {
                    if !methods.contains(&method) {
                        methods.push(method);
                    }
                }
                Some(methods)
            }
        };
        let template = matcher.path.0;
        let conditions = Conditions {
            query: conditions(&format!("{path}.match.query"), matcher.query, false)?,
            form: conditions(&format!("{path}.match.form"), matcher.form, false)?,
            json: conditions(&format!("{path}.match.json"), matcher.json, true)?,
        };
        if !conditions.form.is_empty() && !conditions.json.is_empty() {
            return invalid(
                format!("{path}.match"),
                "a body is a form or JSON, never both: split form and json conditions into two routes",
            );
        }
        let risk = match file_route.risk {
            FileRisk::Low => Risk::Low,
            FileRisk::High => Risk::High,
        };
        let enforce = file_route.enforce.unwrap_or(true);
        if !enforce && risk == Risk::Low {
            return invalid(
                format!("{path}.enforce"),
                "observe mode (enforce: false) applies to risk: high routes only",
            );
        }
        let websocket = file_route.websocket.unwrap_or(false);
        if websocket && risk == Risk::High {
            return invalid(
                format!("{path}.websocket"),
                "a high-impact route cannot open a WebSocket tunnel: what passes through it is never confirmed",
            );
        }
        for (j, earlier) in routes.iter().enumerate() {
            let same_paths =
                earlier.template.is_catch_all() || earlier.template.as_str() == template.as_str();
            let unconditional = earlier.conditions == Conditions::default();
            if same_paths && unconditional && covers(&earlier.methods, &methods) {
                return invalid(
                    format!("{path}.match"),
                    format!(
                        "route {name:?} can never match: the earlier route {:?} (routes[{j}]) \
                         matches {} on {} first; move {name:?} above it or narrow the earlier route",
                        earlier.name,
                        if earlier.template.is_catch_all() {
                            "every path".to_string()
                        } else {
                            format!("the same path {:?}", template.as_str())
                        },
                        describe_methods(&earlier.methods),
                    ),
                );
            }
        }
        let require = match file_route.require {
            None => None,
            Some(require) => Some(validate_require(&path, require, risk, bearer_jwt)?),
        };
        let approval = match file_route.approval {
            None => None,
            Some(approval) => Some(Arc::new(validate_approval(
                &path,
                approval,
                risk,
                enforce,
                groups_claim_set,
            )?)),
        };
        let mut route = Route::new(&name, methods, template, &file_route.upstream, risk);
        route.conditions = conditions;
        route.enforce = enforce;
        route.websocket = websocket;
        route.require = require;
        route.approval = approval;
        routes.push(route);
    }
    Ok(RouteTable::new(routes))
}

/// The approval time when `approval.ttl` is not given.
const DEFAULT_APPROVAL_TTL: Duration = Duration::from_secs(30 * 60);
/// The longest an approval may wait: its record and the request it stands for live that long.
const MAX_APPROVAL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// `routes[i].approval`: people approve the action of a high-impact route before it runs.
fn validate_approval(
    path: &str,
    approval: FileApproval,
    risk: Risk,
    enforce: bool,
    groups_claim_set: bool,
) -> Result<Rule, Invalid> {
    let path = format!("{path}.approval");
    if risk != Risk::High {
        return invalid(
            path,
            "only applies to risk: high routes (an approval binds a confirmed action)",
        );
    }
    if !enforce {
        return invalid(
            path,
            "cannot be combined with enforce: false: observe mode forwards without waiting",
        );
    }
    let subjects = approval.approvers.subjects.unwrap_or_default();
    let groups = approval.approvers.groups.unwrap_or_default();
    for (what, list) in [("subjects", &subjects), ("groups", &groups)] {
        if let Some(i) = list.iter().position(|n| n.trim().is_empty()) {
            return invalid(
                format!("{path}.approvers.{what}[{i}]"),
                "must be a non-empty name",
            );
        }
    }
    if subjects.is_empty() && groups.is_empty() {
        return invalid(
            format!("{path}.approvers"),
            "names no approver; give subjects: [alice] and/or groups: [sre-leads]",
        );
    }
    if !groups.is_empty() && !groups_claim_set {
        return invalid(
            format!("{path}.approvers.groups"),
            "needs session.groups_claim: the claim of the approver's token that lists their groups",
        );
    }
    let quorum = match approval.quorum {
        None => 1,
        Some(0) => return invalid(format!("{path}.quorum"), "must be at least 1"),
        Some(n) => match u32::try_from(n) {
            Ok(n) if n <= 64 => n,
            _ => return invalid(format!("{path}.quorum"), "must be at most 64"),
        },
    };
    let mut distinct = subjects.clone();
    distinct.sort();
    distinct.dedup();
    if groups.is_empty() && (distinct.len() as u32) < quorum {
        return invalid(
            format!("{path}.quorum"),
            format!(
                "is {quorum} but only {} distinct subjects may approve, so no request could ever be approved",
                distinct.len()
            ),
        );
    }
    let ttl = positive(&format!("{path}.ttl"), approval.ttl, DEFAULT_APPROVAL_TTL)?;
    if ttl > MAX_APPROVAL_TTL {
        return invalid(format!("{path}.ttl"), "must be at most 7 days (168h)");
    }
    let notify = match approval.notify {
        None => None,
        Some(notify) => Some(validate_notify(&format!("{path}.notify"), notify)?),
    };
    Ok(Rule {
        subjects,
        groups,
        quorum,
        ttl,
        notify,
    })
}

/// `approval.notify`: the URL is `http://` and the secret is in the environment now.
fn validate_notify(path: &str, notify: FileNotify) -> Result<Notify, Invalid> {
    let webhook =
        match notify.webhook.parse::<http::Uri>() {
            Ok(uri)
                if uri.scheme_str() == Some("http")
                    && uri.authority().is_some()
                    && uri.path().starts_with('/') =>
            {
                uri
            }
            _ => return invalid(
                format!("{path}.webhook"),
                "an http:// URL like http://127.0.0.1:9300/hooks (https is not supported: point \
                 it at a relay on the gateway's network)",
            ),
        };
    let var = notify.secret_env;
    if var.is_empty() {
        return invalid(
            format!("{path}.secret_env"),
            "the name of the environment variable holding the signing secret",
        );
    }
    let value = match std::env::var(&var) {
        Ok(value) if !value.is_empty() => value,
        _ => {
            return invalid(
                format!("{path}.secret_env"),
                format!("environment variable {var} is not set or empty; it must hold the webhook signing secret"),
            )
        }
    };
    let secret = WebhookSecret::parse(&value).map_err(|e| Invalid {
        path: format!("{path}.secret_env"),
        message: format!("{var} {e}"),
    })?;
    Ok(Notify { webhook, secret })
}

/// `routes[i].require`: RFC 9470 step-up needs a token carrying `acr` and `auth_time`, so it is
/// only accepted for high-impact routes of `bearer_jwt` sessions.
fn validate_require(
    path: &str,
    require: FileRequire,
    risk: Risk,
    bearer_jwt: bool,
) -> Result<StepUp, Invalid> {
    let path = format!("{path}.require");
    if risk != Risk::High {
        return invalid(
            path,
            "only applies to risk: high routes (it is checked after the confirmation)",
        );
    }
    if !bearer_jwt {
        return invalid(
            path,
            "needs session.kind: bearer_jwt: only a token carries acr and auth_time (RFC 9470)",
        );
    }
    let acr = require.acr.unwrap_or_default();
    if let Some(i) = acr
        .iter()
        .position(|a| a.trim().is_empty() || a.contains(['"', '\\', ' ']))
    {
        return invalid(
            format!("{path}.acr[{i}]"),
            "must be a non-empty acr value without spaces, quotes or backslashes",
        );
    }
    let max_age = match require.max_age {
        None => None,
        Some(age) => Some(positive(
            &format!("{path}.max_age"),
            Some(age),
            Duration::ZERO,
        )?),
    };
    if acr.is_empty() && max_age.is_none() {
        return invalid(path, "requires nothing; give acr: [...] and/or max_age: 5m");
    }
    Ok(StepUp { acr, max_age })
}
