//! `countersign request`: a curl-like client that speaks the confirmation exchange of
//! docs/protocol.md ("The confirmation exchange") for its user. It sends the request with the
//! session credential; when the gateway answers `401` with `WWW-Authenticate: DPoP
//! error="use_dpop_nonce"` and a `DPoP-Nonce` (RFC 9449 §8), it signs a proof for exactly that
//! request with the device key and sends it again, once. With `follow`, a redirect to the same
//! origin is followed, signed with the continuation nonce the redirect carries.
//!
//! Plain `http://` only: the client is meant for an operator's shell on the gateway's network.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

use crate::tools::device_key::DeviceKey;

mod command;
pub use command::{checked_method, run, MethodError, RequestArgs, RequestError};

/// How long one connection, or one request and its response, may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Most redirects followed for one request (curl's `--max-redirs` spirit, smaller).
const MAX_REDIRECTS: usize = 10;

/// The session credential a request carries, and that `ath` hashes (RFC 9449 §4.2).
#[derive(Clone)]
pub enum Credential {
    /// A token sent as `Authorization: DPoP <token>`.
    Token(String),
    /// A cookie `NAME=VALUE`.
    Cookie { name: String, value: String },
    /// A header `NAME: VALUE`.
    Header { name: String, value: String },
}

impl Credential {
    /// The value the proof's `ath` is the hash of.
    fn value(&self) -> &str {
        match self {
            Credential::Token(token) => token,
            Credential::Cookie { value, .. } | Credential::Header { value, .. } => value,
        }
    }

    /// Adds the credential to a request's headers.
    fn attach(&self, headers: &mut HeaderMap) -> Result<(), ClientError> {
        let (name, value) = match self {
            Credential::Token(token) => (http::header::AUTHORIZATION, format!("DPoP {token}")),
            Credential::Cookie { name, value } => (http::header::COOKIE, format!("{name}={value}")),
            Credential::Header { name, value } => (
                HeaderName::try_from(name.as_str())
                    .map_err(|_| ClientError::HeaderName(name.clone()))?,
                value.clone(),
            ),
        };
        let value = HeaderValue::try_from(value).map_err(|_| ClientError::CredentialValue)?;
        if name == http::header::COOKIE {
            headers.append(name, value);
        } else {
            headers.insert(name, value);
        }
        Ok(())
    }
}

/// One request as the user asked for it.
pub struct Request {
    /// The method, upper case as sent.
    pub method: Method,
    /// The absolute `http://` URL.
    pub url: Uri,
    /// Extra headers (`-H`).
    pub headers: HeaderMap,
    /// The body (`--data`, `--data-file`).
    pub body: Bytes,
    /// The session credential, when the route needs one.
    pub credential: Option<Credential>,
    /// Follow redirects (`-L`).
    pub follow: bool,
    /// A session nonce from an earlier response, to confirm in one round trip (`--nonce-file`).
    pub nonce: Option<String>,
}

/// The final response.
pub struct Response {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

impl Response {
    /// Why the gateway (or the upstream) refused, when the status says it did: the `reason` and
    /// `error_description` of the gateway's JSON error, else the `WWW-Authenticate` error, else
    /// the status alone.
    pub fn refusal(&self) -> Option<String> {
        if self.status.as_u16() < 400 {
            return None;
        }
        let json: Option<serde_json::Value> = serde_json::from_slice(&self.body).ok();
        let field = |name: &str| {
            json.as_ref()
                .and_then(|j| j.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let mut out = format!("refused: HTTP {}", self.status);
        match (field("error"), field("reason")) {
            (Some(error), Some(reason)) => out.push_str(&format!(" {error} (reason {reason})")),
            (Some(error), None) => out.push_str(&format!(" {error}")),
            _ => {
                if let Some(challenge) = self.header("www-authenticate") {
                    out.push_str(&format!(" ({challenge})"));
                }
            }
        }
        if let Some(description) = field("error_description") {
            out.push_str(&format!(": {description}"));
        }
        Some(out)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `DPoP-Nonce` when the response is the RFC 9449 §8 nonce challenge.
    fn nonce_challenge(&self) -> Option<String> {
        let asks = self.status == StatusCode::UNAUTHORIZED
            && self
                .headers
                .get_all(http::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("use_dpop_nonce"));
        asks.then(|| self.header("dpop-nonce").map(str::to_owned))
            .flatten()
    }
}

/// Why a request could not be made (a refusal is a [`Response`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not an absolute `http://` URL.
    #[error("{0}: expected an absolute http:// URL, e.g. http://127.0.0.1:8080/api/users/42")]
    Url(String),
    /// A `-H` header is not `Name: value`.
    #[error("header {0:?}: expected 'Name: value'")]
    Header(String),
    /// A header name is not a valid token.
    #[error("{0:?} is not a valid header name")]
    HeaderName(String),
    /// The credential contains bytes a header cannot carry.
    #[error("the session credential contains characters a header cannot carry")]
    CredentialValue,
    /// Connecting or talking to the server failed.
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    /// The server took too long.
    #[error("{0}: no response within {TIMEOUT:?}")]
    Timeout(String),
    /// Redirects went round too many times.
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    /// A redirect to another origin, which would carry the session credential away.
    #[error("not following the redirect to {0}: another origin would receive the session credential; request it yourself if you trust it")]
    CrossOrigin(String),
}

/// Parses `-H 'Name: value'` into `headers`.
pub fn add_header(headers: &mut HeaderMap, line: &str) -> Result<(), ClientError> {
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| ClientError::Header(line.to_owned()))?;
    let name = HeaderName::try_from(name.trim())
        .map_err(|_| ClientError::HeaderName(name.trim().to_owned()))?;
    let value =
        HeaderValue::try_from(value.trim()).map_err(|_| ClientError::Header(line.to_owned()))?;
    headers.append(name, value);
    Ok(())
}

/// Parses an absolute `http://` URL.
pub fn parse_url(url: &str) -> Result<Uri, ClientError> {
    let uri: Uri = url.parse().map_err(|_| ClientError::Url(url.to_owned()))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(ClientError::Url(url.to_owned()));
    }
    Ok(uri)
}

/// Does the whole exchange for `request`, signing with `key`; every response along the way is
/// passed to `each` (for `-i` across redirects), and the last one is returned.
pub async fn exchange(
    key: &DeviceKey,
    request: Request,
    mut each: impl FnMut(&Response),
) -> Result<Response, ClientError> {
    let Request {
        mut method,
        mut url,
        headers,
        mut body,
        credential,
        follow,
        nonce,
    } = request;
    let mut nonce = nonce;
    for _ in 0..=MAX_REDIRECTS {
        let mut response = send_signed(
            key,
            &method,
            &url,
            &headers,
            &body,
            &credential,
            nonce.take(),
        )
        .await?;
        // RFC 9449 §8: one retry with the nonce the server asked for.
        if let Some(challenge) = response.nonce_challenge() {
            response = send_signed(
                key,
                &method,
                &url,
                &headers,
                &body,
                &credential,
                Some(challenge),
            )
            .await?;
        }
        let location = response
            .header("location")
            .filter(|_| follow && response.status.is_redirection())
            .map(str::to_owned);
        let Some(location) = location else {
            return Ok(response);
        };
        let next = resolve(&url, &location)?;
        if next.authority() != url.authority() || next.scheme_str() != Some("http") {
            return Err(ClientError::CrossOrigin(next.to_string()));
        }
        each(&response);
        // RFC 9110 §15.4: 301/302/303 become GET without a body; 307/308 repeat as they were.
        if matches!(response.status.as_u16(), 301..=303) {
            method = Method::GET;
            body = Bytes::new();
        }
        // A redirect to a high-impact route carries a continuation nonce for the follow-up.
        nonce = response.header("dpop-nonce").map(str::to_owned);
        url = next;
    }
    Err(ClientError::TooManyRedirects)
}

/// Sends once: with the credential, and with a proof when there is a nonce to sign.
async fn send_signed(
    key: &DeviceKey,
    method: &Method,
    url: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    credential: &Option<Credential>,
    nonce: Option<String>,
) -> Result<Response, ClientError> {
    let mut headers = headers.clone();
    if let Some(credential) = credential {
        credential.attach(&mut headers)?;
    }
    if let Some(nonce) = nonce {
        // The proof signs the exact action too (`cs_ach`), so the response's next nonce can
        // confirm the next action without a challenge.
        let target = url.path_and_query().map_or("/", |p| p.as_str());
        let body_sha256: [u8; 32] = Sha256::digest(body).into();
        let action_hash = crate::nonce::action_hash(method.as_str(), target, &body_sha256);
        let proof = key.action_proof(
            method.as_str(),
            &htu(url),
            Some(&nonce),
            credential.as_ref().map(Credential::value),
            Some(&action_hash),
        );
        let proof = HeaderValue::try_from(proof).map_err(|_| ClientError::CredentialValue)?;
        headers.insert("dpop", proof);
    }
    let attempt = send(method, url, headers, body.clone());
    tokio::time::timeout(TIMEOUT, attempt)
        .await
        .map_err(|_| ClientError::Timeout(url.to_string()))?
}

/// The proof's `htu`: the URL without query and fragment (RFC 9449 §4.2).
fn htu(url: &Uri) -> String {
    format!(
        "{}://{}{}",
        url.scheme_str().unwrap_or("http"),
        url.authority().map_or("", |a| a.as_str()),
        url.path()
    )
}

/// Resolves a `Location` against the URL it answered (RFC 3986 §5.2, the forms servers send).
fn resolve(base: &Uri, location: &str) -> Result<Uri, ClientError> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location
            .parse()
            .map_err(|_| ClientError::Url(location.to_owned()));
    }
    let authority = base.authority().map_or("", |a| a.as_str());
    let joined = if location.starts_with('/') {
        format!("http://{authority}{location}")
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(dir, _)| dir);
        format!("http://{authority}{dir}/{location}")
    };
    joined
        .parse()
        .map_err(|_| ClientError::Url(location.to_owned()))
}

async fn send(
    method: &Method,
    url: &Uri,
    mut headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ClientError> {
    let transport = |e: &dyn std::fmt::Display| ClientError::Transport {
        url: url.to_string(),
        message: e.to_string(),
    };
    let authority = url
        .authority()
        .ok_or_else(|| ClientError::Url(url.to_string()))?;
    let address = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let stream = TcpStream::connect(&address)
        .await
        .map_err(|e| transport(&e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transport(&e))?;
    tokio::spawn(connection);
    let target = url.path_and_query().map_or("/", |p| p.as_str());
    let mut builder = hyper::Request::builder().method(method.clone()).uri(target);
    if !headers.contains_key(http::header::HOST) {
        let host = HeaderValue::try_from(authority.as_str()).map_err(|e| transport(&e))?;
        headers.insert(http::header::HOST, host);
    }
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    let request = builder.body(Full::new(body)).map_err(|e| transport(&e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| transport(&e))?;
    let (parts, incoming) = response.into_parts();
    let body = incoming
        .collect()
        .await
        .map_err(|e| transport(&e))?
        .to_bytes();
    Ok(Response {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htu_drops_query_and_keeps_the_origin() {
        let url = parse_url("http://127.0.0.1:8080/api/users/42?force=1").expect("url");
        assert_eq!(htu(&url), "http://127.0.0.1:8080/api/users/42");
    }

    #[test]
    fn relative_and_absolute_locations_resolve_against_the_request() {
        let base = parse_url("http://h:1/a/b").expect("url");
        assert_eq!(
            resolve(&base, "/x?y=1").expect("abs path").to_string(),
            "http://h:1/x?y=1"
        );
        assert_eq!(
            resolve(&base, "c").expect("relative").to_string(),
            "http://h:1/a/c"
        );
        assert_eq!(
            resolve(&base, "http://other:2/z")
                .expect("absolute")
                .to_string(),
            "http://other:2/z"
        );
    }

    #[test]
    fn only_absolute_http_urls_are_accepted() {
        assert!(parse_url("/api/users").is_err());
        assert!(parse_url("https://h/").is_err());
        assert!(parse_url("http://h/").is_ok());
    }

    #[test]
    fn a_header_line_needs_a_colon() {
        let mut headers = HeaderMap::new();
        assert!(add_header(&mut headers, "X-A: b").is_ok());
        assert_eq!(headers["x-a"], "b");
        assert!(add_header(&mut headers, "no colon").is_err());
    }
}
