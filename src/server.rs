//! Assembling and running the gateway: validated config → store, sessions, audit, signer →
//! a Pingora server with the proxy service and the operations listener (`/metrics`, `/healthz`,
//! `/readyz`, the provenance JWKS).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::connectors::ConnectorOptions;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use prometheus::IntGauge;
use tokio::net::TcpStream;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, Notify};

use crate::audit::AuditLog;
use crate::config::{Config, StoreConfig};
use crate::confirm::Confirmer;
use crate::front::{Connections, Drain, Front};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::provenance::Signer;
use crate::relay::Relay;
use crate::reload::Reloadable;
use crate::routes::Risk;
use crate::session::Sessions;
use crate::store::{MemoryStore, RedisStore, ReplayStore};

/// How long `/healthz` waits for the gateway listener to accept.
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the gateway could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A key, file or setting named by the config is unusable.
    #[error("{file}: {source}")]
    Setting {
        /// The config file.
        file: String,
        /// What is wrong.
        source: SettingError,
    },
    /// A listen address cannot be bound (in use, not local, not permitted).
    #[error("{file}: {field}: cannot listen on {address}: {source}")]
    Listen {
        /// The config file.
        file: String,
        /// `listen` or `metrics.listen`.
        field: &'static str,
        /// The address as configured.
        address: String,
        /// Why the bind failed.
        source: std::io::Error,
    },
}

/// A key, file or setting the config names that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    /// A session verification key.
    #[error(transparent)]
    SessionKey(#[from] crate::session::KeyLoadError),
    /// An upstream or the browser settings.
    #[error(transparent)]
    Gateway(#[from] crate::gateway::GatewayError),
    /// The Redis store.
    #[error(transparent)]
    Redis(#[from] crate::store::RedisSetupError),
    /// The provenance signing key.
    #[error(transparent)]
    Signer(#[from] crate::provenance::SignerError),
    /// The audit log.
    #[error("audit.path: {0}")]
    Audit(#[from] crate::audit::OpenError),
    /// The upstream CA bundle.
    #[error("upstream_ca_file: {0}")]
    CaBundle(FileError),
    /// The directory of the upgrade socket.
    #[error("server.upgrade_sock: {0}")]
    UpgradeSock(FileError),
    /// The confirmation listener's certificate or key.
    #[error("browser.tls: {0}")]
    BrowserTls(FileError),
}

/// A file or directory that is unreadable or not what it must be.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It cannot be read or created.
    #[error("cannot read or create {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is not what the setting needs.
    #[error("{0}")]
    Unfit(String),
}

impl FileError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
        move |source| FileError::Io {
            path: path.display().to_string(),
            source,
        }
    }
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
    process: Process,
}

/// What the process-owning run (`countersign run`) needs besides the server.
struct Process {
    source: PathBuf,
    gateway: Reloadable,
    parts: Parts,
    connections: Arc<Connections>,
}

/// What a gateway is built from besides its config; kept across reloads.
struct Parts {
    store: Arc<dyn ReplayStore>,
    audit: AuditLog,
    metrics: Arc<Metrics>,
    signer: Arc<Signer>,
    connector: ConnectorOptions,
}

impl Parts {
    /// The gateway for `config`: routes, upstreams, sessions, confirmation and policy settings.
    fn gateway(&self, config: Arc<Config>) -> Result<Gateway, BuildError> {
        let setting = |source: SettingError| BuildError::Setting {
            file: config.source.display().to_string(),
            source,
        };
        let sessions = Sessions::new(&config.session, config.confirmation.clock_skew)
            .map_err(|e| setting(e.into()))?;
        let confirmer = Confirmer::new(
            self.store.clone(),
            sessions,
            config.confirmation.clone(),
            config.session.binding_ttl,
            self.metrics.clone(),
        )
        .with_devices(config.session.binding, config.session.max_devices);
        let gateway = Gateway::new(
            config.clone(),
            Relay::new(self.connector.clone()),
            confirmer,
            self.audit.clone(),
            self.metrics.clone(),
            self.signer.clone(),
        )
        .map_err(|e| setting(e.into()))?;
        for risk in [Risk::Low, Risk::High] {
            let n = config
                .routes
                .routes()
                .iter()
                .filter(|r| r.risk == risk)
                .count();
            self.metrics
                .config_routes
                .with_label_values(&[risk.as_str()])
                .set(n as i64);
        }
        Ok(gateway)
    }
}

/// How `countersign run` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Bind the listen addresses.
    Fresh,
    /// Take the listening sockets over from a running gateway (sent on its SIGQUIT).
    Upgrade,
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

/// Assembles the gateway for `config`, to run inside this program on `runtime`.
pub fn assemble(config: Config, runtime: Runtime) -> Result<Assembled, BuildError> {
    build(config, runtime, None)
}

/// Assembles the gateway that owns this process (`countersign run`), started as `start`.
pub fn assemble_process(config: Config, start: Start) -> Result<Assembled, BuildError> {
    let file = config.source.display().to_string();
    private_dir(&config.server.upgrade_sock).map_err(|e| BuildError::Setting {
        file,
        source: SettingError::UpgradeSock(e),
    })?;
    raise_open_files_limit();
    build(config, Runtime::PerThread, Some(start))
}

/// Raises the soft limit on open files to the hard limit: each connection costs a descriptor on
/// each side, and the usual soft default (1024, systemd's too) would refuse clients under load.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by reference.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
            && (limit.rlim_cur >= limit.rlim_max || {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
            })
    };
    if raised {
        tracing::debug!(open_files = limit.rlim_cur, "open files limit");
    } else {
        tracing::warn!(
            open_files = limit.rlim_cur,
            "open files limit could not be raised to the hard limit"
        );
    }
}

fn build(config: Config, runtime: Runtime, start: Option<Start>) -> Result<Assembled, BuildError> {
    let file = config.source.display().to_string();
    let setting = |source: SettingError| BuildError::Setting {
        file: file.clone(),
        source,
    };
    // Pingora retries a busy port for half a minute and then panics a listener thread while the
    // rest of the process (and `/healthz`) stays up: try every address first and stop here.
    // An upgrade receives sockets that the old process still holds.
    if start != Some(Start::Upgrade) {
        check_listen(&file, "listen", &config.listen)?;
        if let Some(m) = &config.metrics {
            check_listen(&file, "metrics.listen", &m.listen)?;
        }
    }
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let store: Arc<dyn ReplayStore> = match &config.store {
        StoreConfig::Memory { max_entries } => Arc::new(MemoryStore::new(*max_entries)),
        StoreConfig::Redis { url, timeout } => {
            Arc::new(RedisStore::new(url, *timeout).map_err(|e| setting(e.into()))?)
        }
    };
    // Export the store's error counter at 0 from the start, so dashboards and alerts see it.
    metrics.store_errors.with_label_values(&[store.backend()]);
    let signer = Arc::new(
        Signer::load(config.provenance.signing_key.as_deref()).map_err(|e| setting(e.into()))?,
    );
    let audit = AuditLog::open(config.audit.path.as_deref(), config.audit.stdout)
        .map_err(|e| setting(e.into()))?;
    audit.checkpoint_every(signer.clone(), config.audit.checkpoint_every);
    let summary = Summary {
        listen: config.listen.clone(),
        metrics: config.metrics.as_ref().map(|m| m.listen.clone()),
        audit: audit.location(),
        jwks: signer.jwks(),
        ephemeral_key: signer.ephemeral,
    };
    if let Some(path) = &config.upstream_ca_file {
        check_ca_bundle(path).map_err(|e| setting(SettingError::CaBundle(e)))?;
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
        upgrade_sock: config.server.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    let opt = start.map(|start| Opt {
        upgrade: start == Start::Upgrade,
        ..Opt::default()
    });
    let parts = Parts {
        store: store.clone(),
        audit: audit.clone(),
        metrics: metrics.clone(),
        signer: signer.clone(),
        // The confirmed-request connector trusts the same CAs as Pingora's own proxy connector.
        connector: ConnectorOptions::from_server_conf(&server_conf),
    };
    // Everything is validated before an upgrade takes the listening sockets over.
    let drain = Drain::default();
    let gateway = Reloadable::new(parts.gateway(config.clone())?, drain.clone());
    let connections = Connections::new(&config.server, &config.trusted_proxies, &metrics, drain);
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();
    let process = Process {
        source: config.source.clone(),
        gateway: gateway.clone(),
        parts,
        connections: connections.clone(),
    };
    let audit_handle = audit.clone();
    let front = Front::new(
        pingora::proxy::http_proxy(&server.configuration, gateway.clone()),
        gateway,
        connections,
    );
    let mut proxy = Service::new("countersign".to_string(), front);
    proxy.add_tcp(&config.listen);
    if let Some(browser) = &config.browser {
        match (&browser.listen, &browser.tls) {
            (Some(listen), Some(tls)) => {
                let setting = |source: SettingError| BuildError::Setting {
                    file: config.source.display().to_string(),
                    source,
                };
                check_tls(tls).map_err(|e| setting(SettingError::BrowserTls(e)))?;
                let (cert, key) = (
                    tls.cert.display().to_string(),
                    tls.key.display().to_string(),
                );
                proxy.add_tls(listen, &cert, &key).map_err(|e| {
                    setting(SettingError::BrowserTls(FileError::Unfit(e.to_string())))
                })?;
            }
            (Some(listen), None) => proxy.add_tcp(listen),
            (None, _) => {}
        }
    }
    server.add_service(proxy);
    if let Some(m) = &config.metrics {
        let ops = Operations {
            serving: probe_address(&config.listen),
            audit: audit_handle,
            metrics,
            signer,
            store,
        };
        let mut service = Service::new("countersign operations".to_string(), ops);
        service.add_tcp(&m.listen);
        server.add_service(service);
    }
    if summary.ephemeral_key {
        tracing::warn!("provenance.signing_key not set: signing with an ephemeral key");
    }
    Ok(Assembled {
        server,
        summary,
        process,
    })
}

/// Creates the directory of `sock` with mode 0700 and checks that it is ours and private: the
/// old process hands its listening sockets to whoever answers there.
fn private_dir(sock: &Path) -> Result<(), FileError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let dir = sock
        .parent()
        .ok_or_else(|| FileError::Unfit(format!("{} has no directory", sock.display())))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(FileError::io(dir))?;
    let own = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(FileError::io(Path::new("/proc/self")))?;
    let meta = std::fs::symlink_metadata(dir).map_err(FileError::io(dir))?;
    let mode = meta.permissions().mode() & 0o777;
    if !meta.is_dir() || meta.uid() != own || mode & 0o077 != 0 {
        return Err(FileError::Unfit(format!(
            "{} must be a directory owned by uid {own} with mode 0700 (it is {}, uid {}, mode {mode:o})",
            dir.display(),
            if meta.is_dir() { "a directory" } else { "not a directory" },
            meta.uid()
        )));
    }
    Ok(())
}

/// Binds `address` once, without listening, and lets it go, so a busy or foreign address stops
/// the start at once and no client can connect to a socket that is about to close.
fn check_listen(file: &str, field: &'static str, address: &str) -> Result<(), BuildError> {
    use socket2::{Domain, Socket, Type};
    use std::net::ToSocketAddrs;
    let bound = address.to_socket_addrs().and_then(|mut addrs| {
        let addr = addrs
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        // As the listener will: a socket of a previous run in TIME_WAIT does not count as busy.
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())
    });
    bound.map_err(|source| BuildError::Listen {
        file: file.to_string(),
        field,
        address: address.to_string(),
        source,
    })
}

/// The confirmation listener's certificate file must hold a PEM certificate and its key file a
/// PEM private key, so a wrong file stops the start with its name.
fn check_tls(tls: &crate::config::TlsFiles) -> Result<(), FileError> {
    let holds = |path: &Path, tags: &[&str], what: &str| {
        let text = std::fs::read(path).map_err(FileError::io(path))?;
        let blocks = pem::parse_many(&text)
            .map_err(|e| FileError::Unfit(format!("{} is not PEM: {e}", path.display())))?;
        if blocks.iter().any(|b| tags.contains(&b.tag())) {
            Ok(())
        } else {
            Err(FileError::Unfit(format!(
                "{} holds no {what}",
                path.display()
            )))
        }
    };
    holds(&tls.cert, &["CERTIFICATE"], "CERTIFICATE")?;
    holds(
        &tls.key,
        &["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"],
        "PRIVATE KEY",
    )
}

/// A CA bundle must hold at least one PEM certificate: Pingora's TLS connector panics on one
/// it cannot load, so it is checked before the server starts.
fn check_ca_bundle(path: &Path) -> Result<(), FileError> {
    let text = std::fs::read(path).map_err(FileError::io(path))?;
    let blocks = pem::parse_many(&text)
        .map_err(|e| FileError::Unfit(format!("{} is not PEM: {e}", path.display())))?;
    if blocks.iter().any(|b| b.tag() == "CERTIFICATE") {
        Ok(())
    } else {
        Err(FileError::Unfit(format!(
            "{} holds no CERTIFICATE",
            path.display()
        )))
    }
}

impl Assembled {
    /// Runs until SIGTERM (drain, then exit), SIGINT (stop now) or SIGQUIT (hand the listening
    /// sockets to `run --upgrade`, then drain); SIGHUP reloads.
    pub fn run(self) {
        let Assembled {
            server, process, ..
        } = self;
        // Until the server's own handler is installed, a SIGHUP must not end the process.
        ignore_hangup_until_handled();
        let phases = server.watch_execution_phase();
        let in_flight = process.parts.metrics.in_flight.clone();
        let connections = process.connections.clone();
        let audit = process.parts.audit.clone();
        let drained = audit.clone();
        std::thread::spawn(move || exit_when_drained(phases, &connections, in_flight, &drained));
        server.run(RunArgs {
            shutdown_signal: Box::new(OperatorSignals { process }),
        });
        final_checkpoint(&audit);
        tracing::info!("countersign stopped");
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

/// Registers the process-wide SIGHUP handler now (it stays registered): the default action of
/// SIGHUP is to terminate, and logrotate may send one at any time.
fn ignore_hangup_until_handled() {
    let registered = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map(|rt| rt.block_on(async { signal(SignalKind::hangup()).map(drop) }));
    if !matches!(registered, Ok(Ok(()))) {
        tracing::warn!("SIGHUP handler not installed early");
    }
}

/// Drains once SIGTERM or SIGQUIT arrives (idle connections close, responses say
/// `Connection: close`); after the listeners closed, exits as soon as no connection is reading
/// a head or serving a request instead of waiting out the whole grace period.
fn exit_when_drained(
    mut phases: broadcast::Receiver<ExecutionPhase>,
    connections: &Connections,
    in_flight: IntGauge,
    audit: &AuditLog,
) {
    loop {
        match phases.blocking_recv() {
            // SIGQUIT: the sockets are on their way to the new process, which takes new
            // connections from now on; clients of this one move over as their connections close.
            Ok(
                ExecutionPhase::GracefulUpgradeTransferringFds | ExecutionPhase::GracefulTerminate,
            ) => connections.drain(),
            Ok(ExecutionPhase::ShutdownGracePeriod) => break,
            Ok(ExecutionPhase::ShutdownRuntimes | ExecutionPhase::Terminated) => return,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
    connections.drain();
    // Two idle looks in a row: a connection the last accept handed over may not have reached
    // the connection table yet.
    let mut idle = 0;
    while idle < 2 {
        std::thread::sleep(DRAIN_POLL);
        idle = if connections.busy() == 0 && in_flight.get() == 0 {
            idle + 1
        } else {
            0
        };
    }
    final_checkpoint(audit);
    tracing::info!("no request in flight: exiting");
    std::process::exit(0);
}

/// The checkpoint a stopping gateway leaves at the end of its audit file and in its log.
fn final_checkpoint(audit: &AuditLog) {
    if let Err(e) = audit.checkpoint() {
        tracing::warn!(error = %e, "no audit checkpoint at shutdown");
    }
}

/// How often a draining gateway looks at its in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// The signals of `countersign run`.
struct OperatorSignals {
    process: Process,
}

impl OperatorSignals {
    /// SIGHUP: reopen the audit file, re-read and validate the config.
    fn reload(&self) {
        if let Err(e) = self.process.parts.audit.reopen() {
            tracing::warn!(error = %e, "audit file not reopened");
        }
        let result = crate::config::load(&self.process.source)
            .map_err(|e| e.to_string())
            .and_then(|config| {
                self.process
                    .parts
                    .gateway(Arc::new(config))
                    .map_err(|e| e.to_string())
            })
            .map(|gateway| self.process.gateway.replace(gateway));
        let label = match &result {
            Ok(()) => {
                tracing::info!(config = %self.process.source.display(), "config reloaded");
                "ok"
            }
            Err(e) => {
                tracing::warn!(error = %e, "config reload refused; the running config stays");
                "error"
            }
        };
        self.process
            .parts
            .metrics
            .config_reloads
            .with_label_values(&[label])
            .inc();
    }
}

#[async_trait]
impl ShutdownSignalWatch for OperatorSignals {
    async fn recv(&self) -> ShutdownSignal {
        let streams = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        );
        let (Ok(mut hup), Ok(mut term), Ok(mut int), Ok(mut quit)) = streams else {
            tracing::error!("signal handlers cannot be installed: stopping");
            return ShutdownSignal::FastShutdown;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => self.reload(),
                _ = term.recv() => return ShutdownSignal::GracefulTerminate,
                _ = int.recv() => return ShutdownSignal::FastShutdown,
                _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
            }
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

/// The address `/healthz` connects to: the gateway listener, through loopback when it listens on
/// every interface.
fn probe_address(listen: &str) -> Option<SocketAddr> {
    let mut addr = listen.to_socket_addrs().ok()?.next()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Some(addr)
}

/// The operations listener.
struct Operations {
    /// The gateway listener `/healthz` checks is accepting.
    serving: Option<SocketAddr>,
    /// High-impact requests fail closed while it cannot be written.
    audit: AuditLog,
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
            "/healthz" => {
                // Healthy means the gateway port accepts connections, not merely that this
                // listener is up: a gateway whose listener failed must never look alive.
                let accepting = match self.serving {
                    Some(addr) => matches!(
                        tokio::time::timeout(HEALTH_PROBE_TIMEOUT, TcpStream::connect(addr)).await,
                        Ok(Ok(_))
                    ),
                    None => false,
                };
                if accepting {
                    (200, "application/json", br#"{"status":"ok"}"#.to_vec())
                } else {
                    (
                        503,
                        "application/json",
                        br#"{"status":"unavailable","error":"gateway listener not accepting"}"#
                            .to_vec(),
                    )
                }
            }
            "/readyz" => {
                if !self.audit.writable() {
                    (
                        503,
                        "application/json",
                        br#"{"status":"unavailable","error":"audit log not writable"}"#.to_vec(),
                    )
                } else if self.store.ping().await.is_err() {
                    (
                        503,
                        "application/json",
                        br#"{"status":"unavailable","error":"replay store unreachable"}"#.to_vec(),
                    )
                } else {
                    (200, "application/json", br#"{"status":"ready"}"#.to_vec())
                }
            }
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
