//! Assembling and running the gateway: validated config → store, sessions, audit, signer →
//! a Pingora server with the proxy service and the operations listener (`/metrics`, `/healthz`,
//! `/readyz`, the provenance JWKS).

use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::connectors::ConnectorOptions;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use tokio::sync::Notify;

use crate::audit::AuditLog;
use crate::config::{Config, StoreConfig};
use crate::confirm::Confirmer;
use crate::forward::Forwarder;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::provenance::Signer;
use crate::routes::Risk;
use crate::session::Sessions;
use crate::store::{MemoryStore, RedisStore, ReplayStore};

/// Why the gateway could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A key, file or setting named by the config is unusable.
    #[error("{file}: {0}", file = .1)]
    Setting(String, String),
}

/// What a started gateway tells its operator.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Gateway listen address.
    pub listen: String,
    /// Operations listener, when configured.
    pub metrics: Option<String>,
    /// Where audit records go.
    pub audit: String,
    /// The provenance public key (JWKS).
    pub jwks: String,
    /// Whether the provenance key is ephemeral.
    pub ephemeral_key: bool,
}

/// A gateway assembled but not yet running.
pub struct Assembled {
    server: Server,
    /// What it will serve.
    pub summary: Summary,
}

/// Which Tokio runtimes Pingora gives the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// The gateway owns the process (`countersign run`): one single-threaded runtime per worker
    /// thread, like nginx's workers, so the request path has no cross-thread wake-ups (+20 %
    /// passthrough requests/s, BENCHMARKS.md).
    PerThread,
    /// Inside another program (`countersign demo`, tests): one work-stealing runtime. Pingora 0.9
    /// registers per-thread runtimes in a process-wide table keyed by thread ids that are reused
    /// once a thread exits, so a per-thread server started after another one stopped in the same
    /// process can be handed the stopped server's runtime and never accept (pingora issue #981).
    Shared,
}

/// Assembles the gateway for `config`, to run on `runtime`.
pub fn assemble(config: Config, runtime: Runtime) -> Result<Assembled, BuildError> {
    let file = config.source.display().to_string();
    let setting = |e: String| BuildError::Setting(e, file.clone());
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    for risk in [Risk::Low, Risk::High] {
        let n = config
            .routes
            .routes()
            .iter()
            .filter(|r| r.risk == risk)
            .count();
        metrics
            .config_routes
            .with_label_values(&[risk.as_str()])
            .set(n as i64);
    }
    let store: Arc<dyn ReplayStore> = match &config.store {
        StoreConfig::Memory { max_entries } => Arc::new(MemoryStore::new(*max_entries)),
        StoreConfig::Redis { url, timeout } => {
            Arc::new(RedisStore::new(url, *timeout).map_err(|e| setting(e.to_string()))?)
        }
    };
    // Export the store's error counter at 0 from the start, so dashboards and alerts see it.
    metrics.store_errors.with_label_values(&[store.backend()]);
    let sessions = Sessions::new(&config.session, config.confirmation.clock_skew)
        .map_err(|e| setting(e.to_string()))?;
    let signer = Arc::new(
        Signer::load(config.provenance.signing_key.as_deref())
            .map_err(|e| setting(e.to_string()))?,
    );
    if signer.ephemeral {
        tracing::warn!("provenance.signing_key not set: signing with an ephemeral key");
    }
    let audit = AuditLog::open(config.audit.path.as_deref(), config.audit.stdout)
        .map_err(|e| setting(format!("audit.path: cannot open: {e}")))?;
    let summary = Summary {
        listen: config.listen.clone(),
        metrics: config.metrics.as_ref().map(|m| m.listen.clone()),
        audit: audit.location(),
        jwks: signer.jwks(),
        ephemeral_key: signer.ephemeral,
    };
    let confirmer = Confirmer::new(
        store.clone(),
        sessions,
        config.confirmation.clone(),
        config.session.binding_ttl,
        metrics.clone(),
    );

    if let Some(path) = &config.upstream_ca_file {
        check_ca_bundle(path).map_err(|e| setting(format!("upstream_ca_file: {e}")))?;
    }
    let server_conf = ServerConf {
        ca_file: config
            .upstream_ca_file
            .as_ref()
            .map(|p| p.display().to_string()),
        threads: config.server.threads,
        work_stealing: runtime == Runtime::Shared,
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.server.shutdown_timeout.as_secs()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, server_conf);
    server.bootstrap();
    // The confirmed-request connector trusts the same CAs as Pingora's own proxy connector.
    let forwarder = Forwarder::new(ConnectorOptions::from_server_conf(&server.configuration));
    let gateway = Gateway::new(
        config.clone(),
        forwarder,
        confirmer,
        audit,
        metrics.clone(),
        signer.clone(),
    )
    .map_err(setting)?;
    let mut proxy =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, gateway, "countersign");
    proxy.add_tcp(&config.listen);
    if let Some(listen) = config.browser.as_ref().and_then(|b| b.listen.as_ref()) {
        proxy.add_tcp(listen);
    }
    server.add_service(proxy);
    if let Some(m) = &config.metrics {
        let ops = Operations {
            metrics,
            signer,
            store,
        };
        let mut service = Service::new("countersign operations".to_string(), ops);
        service.add_tcp(&m.listen);
        server.add_service(service);
    }
    Ok(Assembled { server, summary })
}

/// A CA bundle must hold at least one PEM certificate: Pingora's TLS connector panics on one
/// it cannot load, so it is checked before the server starts.
fn check_ca_bundle(path: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let blocks =
        pem::parse_many(&text).map_err(|e| format!("{} is not PEM: {e}", path.display()))?;
    if blocks.iter().any(|b| b.tag() == "CERTIFICATE") {
        Ok(())
    } else {
        Err(format!("{} holds no CERTIFICATE", path.display()))
    }
}

impl Assembled {
    /// Runs until SIGTERM (graceful drain), SIGINT or SIGQUIT.
    pub fn run(self) {
        self.server.run(RunArgs::default());
    }

    /// Runs on a thread of its own until the handle is stopped or dropped.
    pub fn spawn(self) -> Running {
        let stop = Arc::new(Notify::new());
        let watch = StopWatch(stop.clone());
        let server = self.server;
        let thread = std::thread::spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(watch),
            })
        });
        Running {
            stop,
            thread: Some(thread),
            summary: self.summary,
        }
    }
}

struct StopWatch(Arc<Notify>);

#[async_trait]
impl ShutdownSignalWatch for StopWatch {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}

/// A gateway running in this process.
pub struct Running {
    stop: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
    /// What it serves.
    pub summary: Summary,
}

impl Running {
    /// Stops it and waits for its threads.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The operations listener.
struct Operations {
    metrics: Arc<Metrics>,
    signer: Arc<Signer>,
    store: Arc<dyn ReplayStore>,
}

#[async_trait]
impl ServeHttp for Operations {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let (status, content_type, body) = match path.as_str() {
            "/metrics" => {
                self.metrics
                    .nonces_outstanding
                    .set(self.store.outstanding_nonces() as i64);
                (200, "text/plain; version=0.0.4", self.metrics.render())
            }
            "/healthz" => (200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            "/readyz" => match self.store.ping().await {
                Ok(()) => (200, "application/json", br#"{"status":"ready"}"#.to_vec()),
                Err(_) => (
                    503,
                    "application/json",
                    br#"{"status":"unavailable","error":"replay store unreachable"}"#.to_vec(),
                ),
            },
            "/.well-known/countersign/jwks.json" => (
                200,
                "application/jwk-set+json",
                self.signer.jwks().into_bytes(),
            ),
            _ => (
                404,
                "application/json",
                br#"{"error":"not_found","error_description":"no such endpoint"}"#.to_vec(),
            ),
        };
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}
