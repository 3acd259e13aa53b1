//! `countersign demo --browser`: a sample legacy web UI (sign-in form, a users list with a delete
//! button per user, a cookie session) behind the gateway, with the confirmation origin on the same
//! loopback listener, running until Ctrl-C so a person can click through a passkey confirmation.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::server;

/// Why the browser demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A socket, runtime or temporary directory could not be had.
    #[error("demo: {0}")]
    Io(#[from] std::io::Error),
    /// The demo's own configuration was refused.
    #[error("demo: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// The gateway did not assemble.
    #[error("demo: the gateway did not start: {0}")]
    Gateway(String),
}

/// The users of the sample UI.
type Users = Arc<Mutex<Vec<(u32, &'static str)>>>;

/// Runs the sample web UI and the gateway until Ctrl-C, printing the URL to open.
pub fn run() -> Result<(), DemoError> {
    let dir = std::env::temp_dir().join(format!(
        "countersign-browser-demo-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let users: Users = Arc::new(Mutex::new(vec![
        (1, "ada"),
        (2, "grace"),
        (3, "linus"),
        (4, "margaret"),
    ]));
    let app = runtime.block_on(sample_ui(users))?;
    let port = StdListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let audit = dir.join("audit.jsonl");
    let yaml = config(port, app, &audit);
    let config = crate::config::parse(&yaml, Path::new("<demo --browser>"))?;
    let running = server::assemble(config, server::Runtime::Shared)
        .map_err(|e| DemoError::Gateway(e.to_string()))?
        .spawn();
    println!("countersign demo --browser: a legacy admin web UI on {app}, behind the gateway.\n");
    println!("  Open   http://127.0.0.1:{port}/login   (the app's origin)");
    println!("  Sign in, press Delete on a user: the gateway holds the request and sends you to");
    println!("  http://localhost:{port}/confirm/... (the confirmation origin). Confirm with a");
    println!("  passkey: a platform authenticator, a security key, or Chrome DevTools →");
    println!("  More tools → WebAuthn → \"Enable virtual authenticator environment\".");
    println!("  The delete then runs once, exactly as you sent it, and you land on its result.\n");
    println!("  Audit log: {}", audit.display());
    println!("  Press Ctrl-C to stop.");
    let stopped = runtime.block_on(tokio::signal::ctrl_c());
    running.stop();
    let _ = std::fs::remove_dir_all(&dir);
    stopped?;
    Ok(())
}

fn config(port: u16, app: SocketAddr, audit: &Path) -> String {
    format!(
        r#"
listen: "127.0.0.1:{port}"
public_origin: "http://127.0.0.1:{port}"
browser:
  origin: "http://localhost:{port}"
  user_verification: preferred
upstreams:
  legacy-admin: {{ address: "{app}" }}
session: {{ kind: cookie, cookie: demo_session }}
audit: {{ path: "{audit}" }}
server: {{ threads: 1 }}
routes:
  - name: delete-user
    match: {{ methods: [POST], path: "/users/{{id}}/delete" }}
    upstream: legacy-admin
    risk: high
  - name: default
    match: {{ path: "/{{*rest}}" }}
    upstream: legacy-admin
    risk: low
"#,
        audit = PathBuf::from(audit).display()
    )
}

fn html(status: u16, body: &str, set_cookie: Option<String>) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "text/html; charset=utf-8");
    if let Some(cookie) = set_cookie {
        builder = builder.header("set-cookie", cookie);
    }
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>Legacy admin</title>\
</head><body style=\"font-family:sans-serif;max-width:40rem;margin:auto;padding:1rem\">\
<h1>Legacy admin</h1>{body}</body></html>"
    );
    builder
        .body(Full::new(Bytes::from(page)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn users_page(users: &Users, flash: &str) -> Response<Full<Bytes>> {
    let list: String = users
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(id, name)| {
            format!(
                "<li>{name} <form method=\"post\" action=\"/users/{id}/delete\" style=\"display:inline\">\
<button id=\"delete-{id}\" type=\"submit\">Delete</button></form></li>"
            )
        })
        .collect();
    html(200, &format!("{flash}<h2>Users</h2><ul>{list}</ul>"), None)
}

async fn answer(req: Request<Incoming>, users: Users) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let _ = body.collect().await;
    let signed_in = parts
        .headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.split(';').any(|p| p.trim().starts_with("demo_session=")));
    let path = parts.uri.path();
    match (parts.method.as_str(), path) {
        ("GET", "/" | "/login") => html(
            200,
            "<form method=\"post\" action=\"/login\"><label>User <input name=\"user\" \
value=\"admin\"></label> <button id=\"login\" type=\"submit\">Sign in</button></form>",
            None,
        ),
        ("POST", "/login") => {
            let session = hex::encode(rand::random::<[u8; 16]>());
            let mut page = users_page(&users, "<p id=\"welcome\">Signed in.</p>");
            if let Ok(cookie) = format!("demo_session={session}; Path=/; HttpOnly").parse() {
                page.headers_mut().insert("set-cookie", cookie);
            }
            page
        }
        _ if !signed_in => html(
            403,
            "<p>Sign in first: <a href=\"/login\">sign in</a></p>",
            None,
        ),
        ("GET", "/users") => users_page(&users, ""),
        ("POST", _) => {
            let id = path
                .strip_prefix("/users/")
                .and_then(|rest| rest.strip_suffix("/delete"))
                .and_then(|id| id.parse::<u32>().ok());
            let Some(id) = id else {
                return html(404, "<p>Not found</p>", None);
            };
            let confirmed = parts.headers.contains_key("countersign-confirmation-id");
            users
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|(uid, _)| *uid != id);
            let flash = format!(
                "<p id=\"done\">Deleted user {id}{}.</p><p><a href=\"/users\">Back to users</a></p>",
                if confirmed {
                    " (confirmed with your passkey)"
                } else {
                    ""
                }
            );
            html(200, &flash, None)
        }
        _ => html(404, "<p>Not found</p>", None),
    }
}

async fn sample_ui(users: Users) -> Result<SocketAddr, DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let users = users.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let users = users.clone();
                    async move { Ok::<_, Infallible>(answer(req, users).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
