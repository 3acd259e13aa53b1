//! Configuration: the YAML file format (`file.rs`, serde structs that mirror it) is validated once
//! into the runtime types below. Runtime code never sees the file format or an `Option` that
//! validation could have settled. This is the only place YAML is known.

mod file;
mod units;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::alg::ProofAlg;
use crate::routes::RouteTable;

pub use crate::session::{
    CookieJwtSubject, DeviceBinding, JwtKeys, SessionConfig, SessionKind, UpstreamScheme,
};

pub use file::{load, parse};
pub use units::{parse_duration, parse_size, InvalidValue};

/// A configuration error: which file, which field, what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}{message}", .file.display(), field_prefix(.path))]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// Dotted field path, e.g. `routes[2].match.path`; `(root)` for the document itself; a line
    /// and column for a syntax error; empty when the file could not be read.
    pub path: String,
    /// What was wrong and what was expected (with line and column when the parser knows them).
    pub message: String,
}

/// `path: ` for the message, or nothing when the error is about the file itself.
fn field_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// File it was loaded from (for messages).
    pub source: PathBuf,
    /// Gateway listen address, `host:port`.
    pub listen: String,
    /// External origin clients use, for `htu` and `Location` rewriting.
    pub public_origin: Option<PublicOrigin>,
    /// Peers whose `X-Forwarded-*` / `Forwarded` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Metrics listener; `None` opens none.
    pub metrics: Option<MetricsConfig>,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Upstream>,
    /// PEM bundle of CAs trusted for TLS upstreams instead of the system roots (an extension).
    pub upstream_ca_file: Option<PathBuf>,
    /// How sessions are read.
    pub session: SessionConfig,
    /// Confirmation parameters.
    pub confirmation: ConfirmationConfig,
    /// Provenance signing.
    pub provenance: ProvenanceConfig,
    /// Replay store.
    pub store: StoreConfig,
    /// Audit log.
    pub audit: AuditConfig,
    /// Compiled route table, first match wins.
    pub routes: RouteTable,
    /// Process settings (threads, shutdown).
    pub server: ServerConfig,
    /// Log output.
    pub log: LogConfig,
    /// Cedar policies evaluated after every confirmation (`policy:`); `None` when not configured.
    pub policy: Option<std::sync::Arc<crate::policy::Engine>>,
    /// Live risk settings (`risk:`).
    pub risk: crate::policy::RiskConfig,
    /// Browser confirmations; `None` keeps every high-impact route on the DPoP exchange.
    pub browser: Option<BrowserConfig>,
}

/// `browser:`: where people confirm with a passkey.
#[derive(Debug, Clone)]
pub struct BrowserConfig {
    /// The confirmation origin; never the app's origin.
    pub origin: PublicOrigin,
    /// A listener of its own, else the main listener serves it by `Host`.
    pub listen: Option<String>,
    /// WebAuthn relying-party id.
    pub rp_id: String,
    /// Whether the ceremony must carry user verification.
    pub user_verification: UserVerification,
    /// How long a held action waits for its confirmation.
    pub hold_ttl: Duration,
    /// TLS on `listen` (`browser.tls`).
    pub tls: Option<TlsFiles>,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// Its PKCS#8 or SEC 1 private key.
    pub key: PathBuf,
}

/// `browser.user_verification`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserVerification {
    /// No UV flag, no confirmation.
    Required,
    /// UV asked for, its absence tolerated.
    Preferred,
}

/// `public_origin`: scheme, host, port and an optional path prefix an outer proxy strips.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicOrigin {
    /// `http` or `https`, lower case.
    pub scheme: String,
    /// Host, lower case (IPv6 literals keep their brackets).
    pub host: String,
    /// Port when not the scheme's default.
    pub port: Option<u16>,
    /// Path prefix without trailing slash, e.g. `/admin`; empty when none.
    pub prefix: String,
}

impl PublicOrigin {
    /// `scheme://host[:port]`, without the prefix.
    pub fn origin(&self) -> String {
        match self.port {
            Some(p) => format!("{}://{}:{}", self.scheme, self.host, p),
            None => format!("{}://{}", self.scheme, self.host),
        }
    }
}

/// `metrics:`.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Listen address, `host:port`.
    pub listen: String,
}

/// One entry of `upstreams:`.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Its name in the config.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// Connect with TLS.
    pub tls: bool,
    /// SNI and certificate name when `tls`; defaults to the host part of `address`.
    pub sni: String,
    /// Connect timeout (default 5 s).
    pub connect_timeout: Duration,
    /// Read timeout between bytes of the response (default 30 s).
    pub read_timeout: Duration,
    /// Reuse connections to it (default true); `false` sends `Connection: close` on every request.
    pub keepalive: bool,
}

/// `confirmation:`.
#[derive(Debug, Clone)]
pub struct ConfirmationConfig {
    /// Accepted proof algorithms (default ES256, EdDSA).
    pub algs: Vec<ProofAlg>,
    /// Nonce lifetime (default 60 s).
    pub nonce_ttl: Duration,
    /// Oldest accepted `iat` (default 60 s).
    pub proof_max_age: Duration,
    /// Tolerance for `iat` in the future (default 5 s).
    pub clock_skew: Duration,
    /// Continuation nonce lifetime after a redirect (default 30 s).
    pub continuation_ttl: Duration,
    /// Largest buffered high-impact body in bytes (default 1 MiB).
    pub max_body: usize,
    /// Most challenges outstanding for one session (default 32).
    pub max_outstanding_per_session: u32,
    /// Most challenges outstanding for one client network: an IPv4 address or IPv6 /64 (default
    /// 1024).
    pub max_outstanding_per_ip: u32,
}

/// `provenance:`.
#[derive(Debug, Clone, Default)]
pub struct ProvenanceConfig {
    /// PKCS#8 PEM signing key; `None` generates an ephemeral one.
    pub signing_key: Option<PathBuf>,
}

/// `store:`.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// In-process, bounded.
    Memory {
        /// Most entries held (default 1 000 000).
        max_entries: u64,
    },
    /// Shared by replicas.
    Redis {
        /// `redis://`, `rediss://`, `redis+sentinel://` or `redis+cluster://` URL.
        url: String,
        /// Per-operation timeout (default 250 ms).
        timeout: Duration,
    },
}

/// `audit:`.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// File to append to; `None` writes to stdout.
    pub path: Option<PathBuf>,
    /// Also write every record to stdout when `path` is set.
    pub stdout: bool,
    /// Audit passthrough requests too (default false).
    pub passthrough: bool,
    /// A signed checkpoint record after this many records (default 1000) and at shutdown.
    pub checkpoint_every: u64,
}

/// `server:` (an extension): process settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Worker threads (default: number of CPUs).
    pub threads: usize,
    /// After SIGTERM: listeners close and in-flight requests have this long to finish (default 5 s).
    pub grace_period: Duration,
    /// Then: how long the runtimes get to wind down their remaining tasks (default 10 s).
    pub shutdown_timeout: Duration,
    /// Where `run --upgrade` receives the listening sockets; its directory is private (0700).
    pub upgrade_sock: PathBuf,
    /// How long an idle client connection is kept open for its next request (default 60 s).
    pub keepalive_timeout: Duration,
    /// How long a client has to send a whole request head, from its first byte (from the
    /// connection's start for the first request); default 10 s.
    pub header_timeout: Duration,
    /// The largest request head accepted, request line and headers (default 32 KiB).
    pub max_header_bytes: usize,
    /// Client connections open at once (default 10 000, lowered to fit the open-files limit).
    pub max_connections: usize,
    /// Client connections open at once from one client network (default 256); peers in
    /// `trusted_proxies` count only in the total.
    pub max_connections_per_ip: usize,
}

/// The default upgrade socket: in the user's runtime directory, `/run/countersign` for root,
/// else a per-user directory under `/tmp` (created 0700 and checked before use).
pub fn default_upgrade_sock() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("countersign/upgrade.sock");
    }
    match std::fs::metadata("/proc/self").map(|m| m.uid()) {
        Ok(0) => PathBuf::from("/run/countersign/upgrade.sock"),
        Ok(uid) => PathBuf::from(format!("/tmp/countersign-{uid}/upgrade.sock")),
        Err(_) => PathBuf::from("/run/countersign/upgrade.sock"),
    }
}

/// `log:` (an extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogConfig {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}
