//! The `countersign request` verb: its arguments, and printing what came back.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{HeaderMap, Method};

use super::{add_header, exchange, parse_url, ClientError, Credential, Request, Response};
use crate::tools::device_key::{DeviceKey, KeyError};

/// Arguments of `countersign request`, named after curl's.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("session").args(["token", "cookie", "session_header"])))]
#[command(group(clap::ArgGroup::new("payload").args(["data", "data_file"])))]
pub struct RequestArgs {
    /// The absolute URL, e.g. http://127.0.0.1:8080/api/users/42.
    pub url: String,
    /// The method (upper case; default GET, or POST with a body).
    #[arg(short = 'X', long = "request")]
    pub method: Option<String>,
    /// The request body, sent as given.
    #[arg(short = 'd', long)]
    pub data: Option<String>,
    /// Send this file's contents as the body.
    #[arg(long)]
    pub data_file: Option<PathBuf>,
    /// An extra header, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// The device key (PKCS#8 PEM, from `countersign keygen`) that signs the confirmation.
    #[arg(long)]
    pub key: PathBuf,
    /// A session token, sent as `Authorization: DPoP <token>` (for `session.kind: bearer_jwt`).
    #[arg(long)]
    pub token: Option<String>,
    /// A session cookie NAME=VALUE (for `session.kind: cookie`).
    #[arg(long)]
    pub cookie: Option<String>,
    /// A session header NAME=VALUE (for `session.kind: header`).
    #[arg(long)]
    pub session_header: Option<String>,
    /// Print the status line and headers of each response before the body.
    #[arg(short = 'i', long)]
    pub include: bool,
    /// Write the body to FILE instead of stdout.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Follow redirects to the same origin, signing with the continuation nonce they carry.
    #[arg(short = 'L', long)]
    pub location: bool,
    /// Keep the session's next nonce in FILE: the next `request` with the same FILE, session and
    /// key confirms in one round trip, without a challenge (docs/protocol.md, "One round trip").
    #[arg(long)]
    pub nonce_file: Option<PathBuf>,
}

/// Why `countersign request` did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// An argument is not usable.
    #[error("{0}")]
    Argument(String),
    /// The method is not one a proof can be signed for.
    #[error(transparent)]
    Method(#[from] MethodError),
    /// The key file could not be read.
    #[error("{path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    /// The key file is not a device key.
    #[error("{path}: {source}")]
    Key { path: String, source: KeyError },
    /// The body file could not be read.
    #[error("{path}: {source}")]
    DataFile {
        path: String,
        source: std::io::Error,
    },
    /// The request could not be made.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The response could not be written out.
    #[error("writing the response: {0}")]
    Output(std::io::Error),
    /// The nonce file could not be read or written.
    #[error("{path}: {source}")]
    NonceFile {
        path: String,
        source: std::io::Error,
    },
    /// The gateway or the upstream refused; the text names the reason.
    #[error("{0}")]
    Refused(String),
    /// The async runtime did not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// A method a proof cannot be signed for.
#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    /// Lower-case letters: the gateway would refuse the proof (`htm_mismatch`).
    #[error("method {0:?}: HTTP methods are case-sensitive and the proof's htm must match the request exactly; write it in upper case: {upper:?}", upper = .0.to_ascii_uppercase())]
    LowerCase(String),
    /// Not an HTTP method token.
    #[error("{0:?} is not an HTTP method, e.g. GET, POST, DELETE")]
    Invalid(String),
}

/// Checks a method for a proof's `htm`: methods are case-sensitive (RFC 9110 §9.1) and the
/// gateway compares `htm` with the method exactly.
pub fn checked_method(method: &str) -> Result<Method, MethodError> {
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(MethodError::LowerCase(method.to_owned()));
    }
    Method::from_bytes(method.as_bytes()).map_err(|_| MethodError::Invalid(method.to_owned()))
}

fn name_value(what: &str, text: &str) -> Result<(String, String), RequestError> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.trim().to_owned(), value.to_owned())),
        _ => Err(RequestError::Argument(format!(
            "--{what} {text:?}: expected NAME=VALUE"
        ))),
    }
}

/// Runs `countersign request`.
pub fn run(args: RequestArgs) -> Result<(), RequestError> {
    let url = parse_url(&args.url)?;
    let body = match (&args.data, &args.data_file) {
        (Some(data), _) => Bytes::from(data.clone()),
        (None, Some(path)) => {
            Bytes::from(
                std::fs::read(path).map_err(|source| RequestError::DataFile {
                    path: path.display().to_string(),
                    source,
                })?,
            )
        }
        (None, None) => Bytes::new(),
    };
    let method = match &args.method {
        Some(m) => checked_method(m)?,
        None if body.is_empty() => Method::GET,
        None => Method::POST,
    };
    let mut headers = HeaderMap::new();
    for line in &args.headers {
        add_header(&mut headers, line)?;
    }
    let credential = if let Some(token) = &args.token {
        Some(Credential::Token(token.clone()))
    } else if let Some(cookie) = &args.cookie {
        let (name, value) = name_value("cookie", cookie)?;
        Some(Credential::Cookie { name, value })
    } else if let Some(header) = &args.session_header {
        let (name, value) = name_value("session-header", header)?;
        Some(Credential::Header { name, value })
    } else {
        None
    };
    let pem = std::fs::read_to_string(&args.key).map_err(|source| RequestError::KeyFile {
        path: args.key.display().to_string(),
        source,
    })?;
    let key = DeviceKey::from_pkcs8_pem(&pem).map_err(|source| RequestError::Key {
        path: args.key.display().to_string(),
        source,
    })?;
    let request = Request {
        method,
        url,
        headers,
        body,
        credential,
        follow: args.location,
        nonce: match &args.nonce_file {
            Some(path) => read_nonce(path)?,
            None => None,
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RequestError::Runtime)?;
    let mut heads = Vec::new();
    let include = args.include;
    let response = runtime.block_on(exchange(&key, request, |r| {
        if include {
            heads.push(head(r));
        }
    }))?;
    if include {
        heads.push(head(&response));
    }
    let mut out = std::io::stdout().lock();
    for h in &heads {
        out.write_all(h.as_bytes()).map_err(RequestError::Output)?;
    }
    match &args.output {
        Some(path) => std::fs::write(path, &response.body).map_err(RequestError::Output)?,
        None => {
            out.write_all(&response.body)
                .map_err(RequestError::Output)?;
            out.flush().map_err(RequestError::Output)?;
        }
    }
    if let Some(path) = &args.nonce_file {
        keep_nonce(path, &response)?;
    }
    match response.refusal() {
        Some(refusal) => Err(RequestError::Refused(refusal)),
        None => Ok(()),
    }
}

/// The nonce an earlier response left in `path`; none when there is no file yet.
fn read_nonce(path: &Path) -> Result<Option<String>, RequestError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|n| !n.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RequestError::NonceFile {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Keeps the response's next nonce in `path` (owner-only), or removes the spent one.
fn keep_nonce(path: &Path, response: &Response) -> Result<(), RequestError> {
    let error = |source| RequestError::NonceFile {
        path: path.display().to_string(),
        source,
    };
    let next = response
        .headers
        .get("dpop-nonce")
        .and_then(|v| v.to_str().ok())
        .filter(|_| response.refusal().is_none());
    match next {
        Some(nonce) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .map_err(error)?;
            file.write_all(nonce.as_bytes()).map_err(error)
        }
        None => match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(error(e)),
            _ => Ok(()),
        },
    }
}

/// The status line and headers, as `curl -i` prints them.
fn head(response: &Response) -> String {
    let mut text = format!("HTTP/1.1 {}\r\n", response.status);
    for (name, value) in &response.headers {
        text.push_str(&format!(
            "{name}: {}\r\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    text.push_str("\r\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_case_method_is_refused_with_the_fix() {
        let err = checked_method("delete")
            .expect_err("lower case")
            .to_string();
        assert!(err.contains("\"DELETE\""), "{err}");
        assert_eq!(checked_method("DELETE").expect("upper"), Method::DELETE);
    }
}
