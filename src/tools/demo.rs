//! `countersign demo`: a built-in legacy admin API and the gateway in front of it on loopback,
//! then one real confirmation walked end to end, printed step by step.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::alg::ProofAlg;
use crate::server;
use crate::tools::device_key::DeviceKey;

/// Why the demo could not show what it set out to.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A local resource (a port, a temporary directory, the runtime, a signal handler).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The demo's own configuration was refused.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The gateway could not be assembled.
    #[error("{0}")]
    Start(#[from] server::BuildError),
    /// A device key could not be made.
    #[error("{0}")]
    Key(#[from] crate::tools::device_key::KeyError),
    /// A demo request could not be made or read.
    #[error("demo request to {url}: {source}")]
    Http {
        /// The URL.
        url: String,
        /// What failed.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A step did not behave as the protocol says.
    #[error("expected {what}, got {status} {body}")]
    Unexpected {
        /// What was expected.
        what: &'static str,
        /// The status received.
        status: u16,
        /// The body received.
        body: String,
    },
    /// The gateway never listened.
    #[error("the gateway did not start listening on {0}")]
    NotListening(String),
    /// The demo's audit log does not verify.
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::VerifyError),
}

/// Wraps a failed demo request.
fn http<E: std::error::Error + Send + Sync + 'static>(
    url: &str,
) -> impl FnOnce(E) -> DemoError + '_ {
    move |e| DemoError::Http {
        url: url.to_string(),
        source: Box::new(e),
    }
}

const SESSION: &str = "demo-session-7f3a9c";
/// The cookie the demo's gateway reads the session from.
const SESSION_COOKIE: &str = "admin_session";

/// Where `demo --serve` listens and writes.
pub struct ServeOptions {
    /// The gateway's listen address.
    pub listen: String,
    /// The metrics listener's address.
    pub metrics: String,
    /// The audit log, kept after exit.
    pub audit: PathBuf,
}

/// The sample API and the gateway, running.
struct World {
    runtime: tokio::runtime::Runtime,
    upstream: SocketAddr,
    running: server::Running,
    base: String,
}

/// Starts the sample API and, in front of it, the gateway on `listen`.
fn start(
    listen: &str,
    metrics: &str,
    audit_path: &Path,
    received: Arc<Mutex<Vec<String>>>,
) -> Result<World, DemoError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let upstream = runtime.block_on(sample_api(received))?;
    let yaml = format!(
        r#"
listen: "{listen}"
metrics: {{ listen: "{metrics}" }}
upstreams:
  legacy-admin: {{ address: "{upstream}" }}
session: {{ kind: cookie, cookie: {SESSION_COOKIE} }}
audit: {{ path: "{audit}" }}
server: {{ threads: 1 }}
routes:
  - name: delete-user
    match: {{ methods: [DELETE], path: "/api/users/{{id}}" }}
    upstream: legacy-admin
    risk: high
  - name: default
    match: {{ path: "/{{*rest}}" }}
    upstream: legacy-admin
    risk: low
"#,
        audit = audit_path.display()
    );
    let config = crate::config::parse(&yaml, Path::new("<demo>"))?;
    let running = server::assemble(config, server::Runtime::Shared)?.spawn();
    runtime.block_on(wait_for(listen))?;
    Ok(World {
        runtime,
        upstream,
        running,
        base: format!("http://{listen}"),
    })
}

/// `demo --serve`: keeps the sample API and the gateway running until Ctrl-C (or SIGTERM),
/// after printing where they are.
pub fn serve(options: ServeOptions) -> Result<(), DemoError> {
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let world = start(&options.listen, &options.metrics, &options.audit, received)?;
    println!(
        "countersign demo: the sample legacy admin API on {}\n\
         gateway      {}  (DELETE /api/users/{{id}} is high risk, everything else passes)\n\
         session      cookie {SESSION_COOKIE}=<any value>, e.g. {SESSION_COOKIE}={SESSION}\n\
         metrics      http://{}/metrics\n\
         audit log    {} (kept after exit)\n\
         ready; Ctrl-C stops both",
        world.upstream,
        world.base,
        options.metrics,
        std::path::absolute(&options.audit)
            .unwrap_or_else(|_| options.audit.clone())
            .display()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    world.runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok::<(), DemoError>(())
    })?;
    world.running.stop();
    Ok(())
}

/// Runs the demo; returns an error message when a step did not behave as the contract says.
pub fn run() -> Result<(), DemoError> {
    let dir = tempdir()?;
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let (gateway_port, metrics_port) = (free_port()?, free_port()?);
    let audit_path = dir.join("audit.jsonl");
    let world = start(
        &format!("127.0.0.1:{gateway_port}"),
        &format!("127.0.0.1:{metrics_port}"),
        &audit_path,
        received.clone(),
    )?;
    let (runtime, base) = (&world.runtime, &world.base);

    println!(
        "countersign demo: a legacy admin API on {}, the gateway on {base}\n",
        world.upstream
    );
    let result = runtime.block_on(walk(base, &received));
    println!("\nAudit log (in a temporary file, removed when the demo exits):");
    let audit = std::fs::read_to_string(&audit_path).unwrap_or_default();
    for line in audit.lines() {
        println!("  {line}");
    }
    let verified = crate::audit::verify(&audit_path, &crate::audit::Expect::default());
    println!(
        "  hash chain: {}",
        match &verified {
            Ok(n) => format!("intact ({n} records)"),
            Err(e) => format!("BROKEN: {e}"),
        }
    );
    let metrics = runtime
        .block_on(send(
            &format!("http://127.0.0.1:{metrics_port}/metrics"),
            "GET",
            &[],
            "",
        ))
        .map(|r| r.body)
        .unwrap_or_default();
    println!("\nMetrics, scraped before the gateway stops, e.g.:");
    for line in metrics.lines().filter(|l| {
        l.starts_with("countersign_requests_total") || l.starts_with("countersign_rejections_total")
    }) {
        println!("  {line}");
    }
    println!(
        "\nTo keep the gateway, its metrics and its audit log around and try it yourself:\n  countersign demo --serve"
    );
    world.running.stop();
    let _ = std::fs::remove_dir_all(&dir);
    result.and(verified.map(|_| ()).map_err(DemoError::from))
}

async fn walk(base: &str, received: &Mutex<Vec<String>>) -> Result<(), DemoError> {
    let cookie = ("cookie", format!("{SESSION_COOKIE}={SESSION}"));
    let url = format!("{base}/api/users/42");
    let seen = || received.lock().map(|r| r.len()).unwrap_or(0);

    println!("1. GET /api/users (low risk) streams straight through");
    let r = send(
        &format!("{base}/api/users"),
        "GET",
        std::slice::from_ref(&cookie),
        "",
    )
    .await?;
    expect(r.status == 200, "passthrough answered 200", &r)?;

    println!("2. DELETE /api/users/42 with no proof: the gateway asks for a confirmation");
    let before = seen();
    let r = send(&url, "DELETE", std::slice::from_ref(&cookie), "").await?;
    expect(
        r.status == 401 && r.nonce.is_some(),
        "401 use_dpop_nonce with a DPoP-Nonce",
        &r,
    )?;
    println!("   WWW-Authenticate: {}", r.www_authenticate);
    println!("   what the user confirms: {}", r.body);
    expect(seen() == before, "the upstream saw nothing", &r)?;

    let laptop = DeviceKey::generate(ProofAlg::Es256)?;
    println!(
        "3. The user's device (ES256 key {}) signs exactly that action",
        laptop.jkt()
    );
    let nonce = r.nonce.clone().unwrap_or_default();
    let proof = laptop.proof("DELETE", &url, Some(&nonce), Some(SESSION));
    let r = send(
        &url,
        "DELETE",
        &[cookie.clone(), ("dpop", proof.clone())],
        "",
    )
    .await?;
    expect(
        r.status == 200 && seen() == before + 1,
        "confirmed and forwarded once",
        &r,
    )?;
    println!("   200, Countersign-Confirmation-Id: {}", r.confirmation_id);

    println!("4. The same proof replayed: refused, never forwarded");
    let r = send(&url, "DELETE", &[cookie.clone(), ("dpop", proof)], "").await?;
    expect(r.status == 401 && seen() == before + 1, "401 replay", &r)?;
    println!("   {}", r.www_authenticate);

    println!("5. A second device approving the same session: refused");
    let phone = DeviceKey::generate(ProofAlg::EdDsa)?;
    let nonce = r.nonce.clone().unwrap_or_default();
    let proof = phone.proof("DELETE", &url, Some(&nonce), Some(SESSION));
    let r = send(&url, "DELETE", &[cookie, ("dpop", proof)], "").await?;
    expect(
        r.status == 401
            && r.www_authenticate.contains("invalid_dpop_proof")
            && seen() == before + 1,
        "401 device_mismatch",
        &r,
    )?;
    println!("   {}", r.www_authenticate);
    Ok(())
}

fn expect(ok: bool, what: &'static str, r: &Reply) -> Result<(), DemoError> {
    if ok {
        println!("   ok: {what}");
        Ok(())
    } else {
        Err(DemoError::Unexpected {
            what,
            status: r.status,
            body: r.body.clone(),
        })
    }
}

/// What the demo client keeps of a response.
struct Reply {
    status: u16,
    nonce: Option<String>,
    www_authenticate: String,
    confirmation_id: String,
    body: String,
}

async fn send(
    url: &str,
    method: &str,
    headers: &[(&str, String)],
    body: &str,
) -> Result<Reply, DemoError> {
    let uri: hyper::Uri = url.parse().map_err(http(url))?;
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let stream = TcpStream::connect(&authority).await.map_err(http(url))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http(url))?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(uri.path())
        .header("host", authority);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(http(url))?;
    let resp = sender.send_request(req).await.map_err(http(url))?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let status = resp.status().as_u16();
    let nonce = header("dpop-nonce");
    let www_authenticate = header("www-authenticate").unwrap_or_default();
    let confirmation_id = header("countersign-confirmation-id").unwrap_or_default();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(http(url))?
        .to_bytes();
    Ok(Reply {
        status,
        nonce,
        www_authenticate,
        confirmation_id,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The sample legacy admin API: answers every request with JSON and remembers what it saw.
async fn sample_api(received: Arc<Mutex<Vec<String>>>) -> Result<SocketAddr, DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let received = received.clone();
                    async move {
                        let line = format!("{} {}", req.method(), req.uri());
                        if let Ok(mut r) = received.lock() {
                            r.push(line.clone());
                        }
                        let who = req
                            .headers()
                            .get("countersign-device")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string();
                        let body = format!(r#"{{"done":"{line}","confirmed_by_device":"{who}"}}"#);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn wait_for(listen: &str) -> Result<(), DemoError> {
    for _ in 0..200 {
        if TcpStream::connect(listen).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(DemoError::NotListening(listen.to_string()))
}

fn free_port() -> Result<u16, DemoError> {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(DemoError::from)
}

fn tempdir() -> Result<std::path::PathBuf, DemoError> {
    let dir = std::env::temp_dir().join(format!(
        "countersign-demo-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
