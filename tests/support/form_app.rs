//! A small legacy admin web UI with a cookie session, as browser confirmations meet them: a login
//! form, a users list with a delete form per user, and an upload form whose file's SHA-256 the
//! app reports. It records every request it receives.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use sha2::{Digest, Sha256};

use crate::support::serve;

/// A request as the app received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub cookie: Option<String>,
    pub body: Bytes,
    pub provenance: bool,
}

/// The running app.
#[derive(Clone)]
pub struct FormApp {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl FormApp {
    /// Starts the app on a loopback port.
    pub async fn start() -> FormApp {
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let addr = serve(move |req, _| handle(req, log.clone())).await;
        FormApp { addr, received }
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("app log lock").clone()
    }

    /// The requests received with `method` to `path`.
    pub fn received_at(&self, method: &str, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.method == method && r.target.split('?').next() == Some(path))
            .collect()
    }
}

fn page(status: u16, body: &str, cookie: Option<String>) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "text/html; charset=utf-8");
    if let Some(cookie) = cookie {
        builder = builder.header("set-cookie", cookie);
    }
    builder
        .body(Full::new(Bytes::from(format!(
            "<!doctype html><html><head><title>Admin</title></head><body>{body}</body></html>"
        ))))
        .expect("valid app response")
}

async fn handle(
    req: Request<Incoming>,
    log: Arc<Mutex<Vec<Received>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let cookie = parts
        .headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let target = parts
        .uri
        .path_and_query()
        .map_or("/".to_string(), |pq| pq.as_str().to_string());
    log.lock().expect("app log lock").push(Received {
        method: parts.method.to_string(),
        target: target.clone(),
        cookie: cookie.clone(),
        body: body.clone(),
        provenance: parts.headers.contains_key("countersign-provenance"),
    });
    let signed_in = cookie
        .as_deref()
        .is_some_and(|c| c.split(';').any(|p| p.trim().starts_with("sessionid=")));
    let path = parts.uri.path();
    let resp = match (parts.method.as_str(), path) {
        ("GET", "/login") => page(
            200,
            "<form method=\"post\" action=\"/login\"><input name=\"user\" value=\"alice\">\
             <input name=\"password\" type=\"password\" value=\"pw\">\
             <button id=\"login\" type=\"submit\">Sign in</button></form>",
            None,
        ),
        ("POST", "/login") => {
            let session = hex::encode(rand::random::<[u8; 16]>());
            let mut resp = page(
                200,
                "<p id=\"welcome\">Signed in</p><a id=\"users\" href=\"/users\">Users</a>",
                None,
            );
            resp.headers_mut().insert(
                "set-cookie",
                format!("sessionid={session}; Path=/; HttpOnly")
                    .parse()
                    .expect("cookie header"),
            );
            resp
        }
        (_, _) if !signed_in => page(403, "<p>Sign in first</p>", None),
        ("GET", "/users") => page(
            200,
            "<ul><li>bob <form method=\"post\" action=\"/users/42/delete?confirm=yes\">\
             <input type=\"hidden\" name=\"csrfmiddlewaretoken\" value=\"c5rf\">\
             <input type=\"hidden\" name=\"reason\" value=\"left the company\">\
             <button id=\"delete\" type=\"submit\">Delete</button></form></li></ul>\
             <form method=\"post\" action=\"/upload\" enctype=\"multipart/form-data\">\
             <input type=\"text\" name=\"title\" value=\"report\">\
             <input id=\"file\" type=\"file\" name=\"file\">\
             <button id=\"upload\" type=\"submit\">Upload</button></form>",
            None,
        ),
        ("POST", "/users/42/delete") => page(
            200,
            "<p id=\"done\">Deleted user 42</p><a id=\"back\" href=\"../../users\">Back</a>",
            Some("flash=deleted; Path=/".to_string()),
        ),
        ("POST", "/upload") => {
            let content_type = parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let digest = file_digest(&content_type, body).await;
            page(200, &format!("<p id=\"done\">Uploaded {digest}</p>"), None)
        }
        _ => page(404, "<p>Not found</p>", None),
    };
    Ok(resp)
}

/// `sha256=<hex> bytes=<n>` of the `file` part of a multipart body, or `no file`.
async fn file_digest(content_type: &str, body: Bytes) -> String {
    let Ok(boundary) = multer::parse_boundary(content_type) else {
        return "no file".to_string();
    };
    let stream = futures_util::stream::once(std::future::ready(Ok::<_, Infallible>(body)));
    let mut multipart = multer::Multipart::new(stream, boundary);
    while let Ok(Some(field)) = multipart.next_field().await {
        if field.name() == Some("file") {
            let data = field.bytes().await.unwrap_or_default();
            return format!(
                "sha256={} bytes={}",
                hex::encode(Sha256::digest(&data)),
                data.len()
            );
        }
    }
    "no file".to_string()
}
