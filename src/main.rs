//! The `countersign` command line: parse arguments, load config, hand off.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use countersign::alg::ProofAlg;
use countersign::config::{self, LogConfig};
use countersign::tools::demo;
use countersign::tools::device_key::DeviceKey;
use countersign::{audit, revocation, server};

// glibc malloc was ~12% of passthrough CPU samples; mimalloc's thread-local free lists are
// cheaper for pingora's many small per-request allocations (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A reverse proxy that makes high-impact actions on legacy admin APIs prove intent.
#[derive(Parser)]
#[command(name = "countersign", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Take the listening sockets over from a running gateway: start this, then send the
        /// old one SIGQUIT (both use `server.upgrade_sock`).
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config and print the effective route table.
    Check {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start a sample legacy API and the gateway on loopback and walk a confirmation; with
    /// --serve, keep both running for you to try.
    Demo {
        /// Instead, serve a sample legacy web UI and the confirmation origin until Ctrl-C, to
        /// click through a passkey confirmation in a browser.
        #[arg(long, conflicts_with = "serve")]
        browser: bool,
        /// Keep the sample API and the gateway running until Ctrl-C, and print where they are.
        #[arg(long)]
        serve: bool,
        /// With --serve: the gateway's address.
        #[arg(long, default_value = "127.0.0.1:8080", requires = "serve")]
        listen: String,
        /// With --serve: the metrics listener's address.
        #[arg(long, default_value = "127.0.0.1:9464", requires = "serve")]
        metrics: String,
        /// With --serve: the audit log (appended to, kept after exit).
        #[arg(
            long,
            default_value = "countersign-demo-audit.jsonl",
            requires = "serve"
        )]
        audit: PathBuf,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Session tools.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Enrolled devices of a subject (`session.binding: enrolled`), on the shared store.
    Devices {
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Approvals of machine-initiated actions: read them from the shared store, or decide one
    /// as an approver through a running gateway.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// Create a device key (PKCS#8 PEM) and print its thumbprint (jkt).
    Keygen {
        /// Where to write the private key.
        #[arg(long, short, default_value = "device-key.pem")]
        out: PathBuf,
        /// Key algorithm: ES256 or EdDSA (what `confirmation.algs` accepts by default); ES384,
        /// RS256 and PS256 only where the gateway's `confirmation.algs` lists them.
        #[arg(long, default_value = "ES256")]
        alg: String,
        /// Overwrite an existing key file (the old key is lost, and so is its session binding).
        #[arg(long)]
        force: bool,
    },
    /// Send one request through the gateway, confirming it with the device key when asked
    /// (curl-like: -X, -H, --data, -i, -o, -L).
    Request(countersign::tools::request::RequestArgs),
    /// Sign a DPoP proof for one request, to use with curl.
    Proof {
        /// The device key written by `keygen`.
        #[arg(long)]
        key: PathBuf,
        /// HTTP method of the request, upper case as sent (e.g. DELETE).
        #[arg(long)]
        method: String,
        /// Full URL of the request as the client reaches the gateway (e.g.
        /// http://127.0.0.1:8080/api/users/42).
        #[arg(long)]
        url: String,
        /// The `DPoP-Nonce` the gateway answered with.
        #[arg(long)]
        nonce: Option<String>,
        /// The session credential (token, cookie or header value), for `ath`.
        #[arg(long)]
        token: Option<String>,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// End every binding of a session or a subject on the configured (shared) store.
    Revoke {
        /// The YAML config file (its store is the one revoked on).
        #[arg(long, short)]
        config: PathBuf,
        /// The session, by its audit record's `session` field.
        #[arg(long, conflicts_with = "subject", required_unless_present = "subject")]
        session_hash: Option<String>,
        /// Every session of this subject started so far.
        #[arg(long)]
        subject: Option<String>,
    },
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// List the approvals in the store, oldest first.
    List {
        /// The gateway config (its store is read).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show one approval as JSON.
    Show {
        /// The approval id (base64url: it may start with `-`).
        #[arg(allow_hyphen_values = true)]
        id: String,
        /// The gateway config (its store is read).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Approve, with your own session and device key, through the gateway.
    Approve(VoteArgs),
    /// Deny, with your own session and device key, through the gateway.
    Deny(VoteArgs),
}

/// An approver's decision, sent through a running gateway.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("session").required(true).args(["token", "cookie", "session_header"])))]
struct VoteArgs {
    /// The approval id (base64url: it may start with `-`).
    #[arg(allow_hyphen_values = true)]
    id: String,
    /// The gateway's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    gateway: String,
    /// Your device key (PKCS#8 PEM, from `countersign keygen`).
    #[arg(long)]
    key: PathBuf,
    /// Your session token (`session.kind: bearer_jwt`).
    #[arg(long)]
    token: Option<String>,
    /// Your session cookie NAME=VALUE (`session.kind: cookie`).
    #[arg(long)]
    cookie: Option<String>,
    /// Your session header NAME=VALUE (`session.kind: header`).
    #[arg(long)]
    session_header: Option<String>,
    /// Print the status line and headers before the body.
    #[arg(short = 'i', long)]
    include: bool,
}

impl VoteArgs {
    /// The `countersign request` that makes this decision.
    fn request(self, what: &str) -> Result<countersign::tools::request::RequestArgs, CliError> {
        if !countersign::approvals::is_id(&self.id) {
            return Err(CliError::Usage(format!(
                "{:?} is not an approval id (22 characters of base64url)",
                self.id
            )));
        }
        let base = self.gateway.trim_end_matches('/');
        Ok(countersign::tools::request::RequestArgs {
            url: format!("{base}/.countersign/approvals/{}/{what}", self.id),
            method: Some("POST".to_string()),
            data: None,
            data_file: None,
            headers: Vec::new(),
            key: self.key,
            token: self.token,
            cookie: self.cookie,
            session_header: self.session_header,
            include: self.include,
            output: None,
            location: false,
            nonce_file: None,
        })
    }
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// Enrol a device key (by its thumbprint) for a subject.
    Add {
        /// The YAML config file (its store holds the registry).
        #[arg(long, short)]
        config: PathBuf,
        /// The subject, as sessions name it (`sub`, or the subject header or claim).
        #[arg(long)]
        subject: String,
        /// The key's thumbprint, as `countersign keygen` prints it (base64url: it may start
        /// with `-`).
        #[arg(long, allow_hyphen_values = true)]
        jkt: String,
    },
    /// List the devices enrolled for a subject, with who enrolled them and when.
    List {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The subject.
        #[arg(long)]
        subject: String,
    },
    /// Remove a device from a subject; it confirms nothing from then on, on every replica.
    Remove {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The subject.
        #[arg(long)]
        subject: String,
        /// The device: a key thumbprint, or `webauthn:<credential id>` for a passkey.
        #[arg(
            long,
            allow_hyphen_values = true,
            required_unless_present = "credential",
            conflicts_with = "credential"
        )]
        jkt: Option<String>,
        /// A passkey, by its credential id (base64url, as `devices list` and the audit log show
        /// it, with or without `webauthn:`).
        #[arg(long, allow_hyphen_values = true)]
        credential: Option<String>,
    },
    /// Print a one-time code (valid `session.invite_ttl`, 15 min by default) that a new device
    /// of the subject redeems to enrol itself.
    Invite {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The subject.
        #[arg(long)]
        subject: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of an audit file; report the first broken line.
    Verify {
        /// The audit log (JSON lines).
        file: PathBuf,
        /// For a rotated file: the hash its first `prev` continues from (the previous file's
        /// last line). Without it the first record must start the chain (64 zeros).
        #[arg(long)]
        from: Option<String>,
        /// A checkpoint JWS kept outside this machine (from the log stream): the file must
        /// still hold every line it covers, unchanged.
        #[arg(long)]
        checkpoint: Option<String>,
        /// The gateway's provenance JWKS (`/.well-known/countersign/jwks.json`), to verify the
        /// checkpoint's signature.
        #[arg(long)]
        jwks: Option<PathBuf>,
    },
    /// List mutating requests that went through low-risk routes (needs `audit.passthrough:
    /// true`), grouped by method and path shape, with route snippets to paste.
    Unprotected {
        /// The audit log (JSON lines).
        file: PathBuf,
        /// The gateway config, to name each snippet's upstream.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn describe_allowed(allowed: &countersign::conditions::Allowed) -> String {
    match allowed {
        countersign::conditions::Allowed::Any => "present".to_string(),
        countersign::conditions::Allowed::OneOf(values) => format!(
            "in [{}]",
            values
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The session kind, replay store and audit destination, one line each.
fn describe_setup(config: &config::Config) -> String {
    use countersign::config::{SessionKind, StoreConfig};
    let session = match &config.session.kind {
        SessionKind::BearerJwt { .. } => "bearer_jwt (Authorization: DPoP <jwt>)".to_string(),
        SessionKind::Cookie { name } => format!("cookie (cookie {name})"),
        SessionKind::Header { name } => format!("header (header {name})"),
    };
    let store = match &config.store {
        StoreConfig::Memory { max_entries } => {
            format!("memory (at most {max_entries} entries, this process only)")
        }
        StoreConfig::Redis { url, .. } => {
            // Never print a password: keep the scheme and what follows the userinfo.
            let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("redis ({scheme}://{rest})")
        }
    };
    let audit = match (&config.audit.path, config.audit.stdout) {
        (Some(path), true) => format!("{} and stdout", path.display()),
        (Some(path), false) => path.display().to_string(),
        (None, _) => "stdout".to_string(),
    };
    format!("session {session}\nstore {store}\naudit {audit}")
}

/// Why a command failed; printed as `countersign: {error}`.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Build(#[from] server::BuildError),
    #[error(transparent)]
    Signer(#[from] countersign::provenance::SignerError),
    #[error("{file}: {source}")]
    SessionKey {
        file: String,
        source: countersign::session::KeyLoadError,
    },
    #[error(transparent)]
    Demo(#[from] demo::DemoError),
    #[error(transparent)]
    BrowserDemo(#[from] countersign::tools::browser_demo::DemoError),
    #[error(transparent)]
    Request(#[from] countersign::tools::request::RequestError),
    #[error(transparent)]
    Method(#[from] countersign::tools::request::MethodError),
    #[error(transparent)]
    Revoke(#[from] revocation::RevokeError),
    #[error(transparent)]
    Devices(#[from] countersign::devices::DevicesError),
    #[error(transparent)]
    Approvals(#[from] countersign::approvals::operator::ApprovalsError),
    #[error(transparent)]
    Key(#[from] countersign::tools::device_key::KeyError),
    #[error(transparent)]
    Audit(#[from] audit::VerifyError),
    /// A file that cannot be read or written.
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    /// A file that was read but cannot be used.
    #[error("{path}: {what}")]
    Unusable { path: String, what: String },
    /// Arguments that do not fit together.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    fn file(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
        move |source| CliError::File {
            path: path.display().to_string(),
            source,
        }
    }

    fn unusable(path: &Path, what: String) -> CliError {
        CliError::Unusable {
            path: path.display().to_string(),
            what,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("countersign: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Run { config, upgrade } => {
            let config = config::load(&config)?;
            init_logs(config.log);
            let start = if upgrade {
                server::Start::Upgrade
            } else {
                server::Start::Fresh
            };
            let assembled = server::assemble_process(config, start)?;
            tracing::info!(
                listen = %assembled.summary.listen,
                metrics = %assembled.summary.metrics.as_deref().unwrap_or("off"),
                audit = %assembled.summary.audit,
                "countersign starting"
            );
            assembled.run();
            Ok(())
        }
        Command::Check { config: path } => {
            use std::fmt::Write as _;
            let config = config::load(&path)?;
            // Keys and secrets load now, so `check` fails where `run` would.
            let signer =
                countersign::provenance::Signer::load(config.provenance.signing_key.as_deref())?;
            countersign::session::Sessions::new(&config.session, config.confirmation.clock_skew)
                .map_err(|source| CliError::SessionKey {
                    file: path.display().to_string(),
                    source,
                })?;
            let mut out = format!("{}: ok\nlisten {}\n", path.display(), config.listen);
            let _ = writeln!(out, "{}", describe_setup(&config));
            // `run` refuses a name that does not resolve; here it is only a warning, since the
            // name may exist only where the gateway will run.
            for upstream in config.upstreams.values() {
                use std::net::ToSocketAddrs;
                if let Err(e) = upstream.address.to_socket_addrs() {
                    eprintln!(
                        "warning: upstreams.{}.address {:?} does not resolve here ({e}); `run` will refuse to start where it does not",
                        upstream.name, upstream.address
                    );
                }
            }
            let _ = writeln!(
                out,
                "{:<4} {:<24} {:<22} {:<40} upstream",
                "risk", "route", "methods", "path"
            );
            for r in config.routes.routes() {
                let methods = r.methods.as_ref().map_or_else(
                    || "*".to_string(),
                    |m| m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","),
                );
                let _ = writeln!(
                    out,
                    "{:<4} {:<24} {:<22} {:<40} {}",
                    r.risk.as_str(),
                    r.name,
                    methods,
                    r.template.as_str(),
                    r.upstream
                );
            }
            for r in config.routes.routes() {
                let c = &r.conditions;
                let mut notes: Vec<String> = Vec::new();
                for (what, map) in [("query", &c.query), ("form", &c.form), ("json", &c.json)] {
                    for (name, allowed) in map {
                        notes.push(format!("{what} {name} {}", describe_allowed(allowed)));
                    }
                }
                if !r.enforce {
                    notes.push(
                        "observe mode (enforce: false): forwarded unconfirmed, audited as observed"
                            .into(),
                    );
                }
                if r.websocket {
                    notes.push("WebSocket upgrades pass".into());
                }
                if let Some(a) = &r.approval {
                    let mut who: Vec<String> = a.subjects.clone();
                    who.extend(a.groups.iter().map(|g| format!("group {g}")));
                    notes.push(format!(
                        "approval by {} of {} ({}), within {}{}",
                        a.quorum,
                        who.join(", "),
                        if a.quorum == 1 {
                            "one approver"
                        } else {
                            "distinct approvers"
                        },
                        humantime::format_duration(a.ttl),
                        if a.notify.is_some() {
                            ", webhook notified"
                        } else {
                            ""
                        }
                    ));
                }
                if !notes.is_empty() {
                    let _ = writeln!(out, "  {}: {}", r.name, notes.join("; "));
                }
            }
            let _ = writeln!(
                out,
                "method overrides considered for routing: {}, and _method in the query or a form body",
                countersign::conditions::OVERRIDE_HEADERS.join(", ")
            );
            if signer.ephemeral {
                out.push_str(
                    "provenance key: none configured; an ephemeral key is generated at start\n",
                );
            } else {
                let _ = writeln!(out, "provenance public key (JWKS): {}", signer.jwks());
            }
            print_out(&out);
            Ok(())
        }
        Command::Demo { browser: true, .. } => Ok(countersign::tools::browser_demo::run()?),
        Command::Demo { serve: false, .. } => Ok(demo::run()?),
        Command::Demo {
            serve: true,
            listen,
            metrics,
            audit,
            ..
        } => Ok(demo::serve(demo::ServeOptions {
            listen,
            metrics,
            audit,
        })?),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    file,
                    from,
                    checkpoint,
                    jwks,
                },
        } => verify_audit(&file, from, checkpoint.as_deref(), jwks.as_deref()),
        Command::Audit {
            command: AuditCommand::Unprotected { file, config },
        } => {
            let text = std::fs::read_to_string(&file).map_err(CliError::file(&file))?;
            let config = match config {
                Some(path) => Some(config::load(&path)?),
                None => None,
            };
            let upstream_of = |route: &str| {
                let config = config.as_ref()?;
                let found = config.routes.routes().iter().find(|r| r.name == route)?;
                Some(found.upstream.clone())
            };
            print_out(&countersign::unprotected::report(&text, upstream_of));
            Ok(())
        }
        Command::Sessions {
            command:
                SessionsCommand::Revoke {
                    config,
                    session_hash,
                    subject,
                },
        } => {
            let config = config::load(&config)?;
            let what = match (session_hash, subject) {
                (Some(hash), _) => revocation::Revocation::SessionHash(hash),
                (None, Some(subject)) => revocation::Revocation::Subject(subject),
                (None, None) => {
                    return Err(CliError::Usage("give --session-hash or --subject".into()))
                }
            };
            println!("{}", revocation::revoke(&config, &what)?);
            Ok(())
        }
        Command::Devices { command } => {
            use countersign::devices::Operation;
            let (config, operation) = match command {
                DevicesCommand::Add {
                    config,
                    subject,
                    jkt,
                } => (config, Operation::Add { subject, jkt }),
                DevicesCommand::List { config, subject } => (config, Operation::List { subject }),
                DevicesCommand::Remove {
                    config,
                    subject,
                    jkt,
                    credential,
                } => {
                    let passkey = credential.map(|c| {
                        let id = c.strip_prefix("webauthn:").unwrap_or(&c);
                        format!("webauthn:{id}")
                    });
                    let jkt = jkt.or(passkey).unwrap_or_default();
                    (config, Operation::Remove { subject, jkt })
                }
                DevicesCommand::Invite { config, subject } => {
                    (config, Operation::Invite { subject })
                }
            };
            let config = config::load(&config)?;
            let out = countersign::devices::operate(&config, &operation)?;
            print_out(&out);
            Ok(())
        }
        Command::Keygen { out, alg, force } => {
            let known = || {
                ProofAlg::ALL
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let alg = ProofAlg::from_name(&alg).ok_or_else(|| {
                CliError::Usage(format!("unknown algorithm {alg:?}; known: {}", known()))
            })?;
            if !matches!(alg, ProofAlg::Es256 | ProofAlg::EdDsa) {
                eprintln!(
                    "note: the gateway accepts {} proofs only if its confirmation.algs lists it (the default is [ES256, EdDSA])",
                    alg.as_str()
                );
            }
            let key = DeviceKey::generate(alg)?;
            write_private(&out, key.to_pkcs8_pem().as_bytes(), force)?;
            println!("{}", key.jkt());
            eprintln!(
                "wrote {} ({}); its thumbprint (jkt) is printed above",
                out.display(),
                alg.as_str()
            );
            Ok(())
        }
        Command::Request(args) => Ok(countersign::tools::request::run(args)?),
        Command::Approvals { command } => {
            use countersign::approvals::operator::{self, Query};
            let (config, query) = match command {
                ApprovalsCommand::List { config } => (config, Query::List),
                ApprovalsCommand::Show { id, config } => (config, Query::Show(id)),
                ApprovalsCommand::Approve(vote) => {
                    return Ok(countersign::tools::request::run(vote.request("approve")?)?)
                }
                ApprovalsCommand::Deny(vote) => {
                    return Ok(countersign::tools::request::run(vote.request("deny")?)?)
                }
            };
            let config = config::load(&config)?;
            print!("{}", operator::query(&config, &query)?);
            Ok(())
        }
        Command::Proof {
            key,
            method,
            url,
            nonce,
            token,
        } => {
            countersign::tools::request::checked_method(&method)?;
            let absolute = url.parse::<http::Uri>().ok().filter(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
            });
            if absolute.is_none() {
                return Err(CliError::Usage(format!(
                    "--url {url:?}: the proof's htu must be the full URL the gateway is reached at, with scheme and host, e.g. http://127.0.0.1:8080/api/users/42"
                )));
            }
            let pem = std::fs::read_to_string(&key).map_err(CliError::file(&key))?;
            let key = DeviceKey::from_pkcs8_pem(&pem)?;
            println!(
                "{}",
                key.proof(&method, &url, nonce.as_deref(), token.as_deref())
            );
            Ok(())
        }
    }
}

/// `audit verify`: the chain, then the checkpoint (its signature too when a JWKS is given).
fn verify_audit(
    file: &Path,
    from: Option<String>,
    checkpoint: Option<&str>,
    jwks: Option<&Path>,
) -> Result<(), CliError> {
    let key = match jwks {
        Some(path) => Some(load_jwk(path)?),
        None => None,
    };
    let checkpoint = checkpoint
        .map(|jws| audit::checkpoint_claims(jws, key.as_ref()))
        .transpose()
        .map_err(|e| CliError::unusable(file, format!("checkpoint: {e}")))?;
    let covered = checkpoint.as_ref().map(|c| c.count);
    let expect = audit::Expect { from, checkpoint };
    match audit::verify(file, &expect) {
        Ok(n) => {
            let mut out = format!("{}: chain intact, {n} records", file.display());
            if let Some(count) = covered {
                out.push_str(&format!("; the checkpoint over {count} records holds"));
                if key.is_none() {
                    out.push_str(" (signature not checked: pass --jwks)");
                }
            }
            print_out(&format!("{out}\n"));
            Ok(())
        }
        Err(e @ audit::VerifyError::Unreadable { .. }) => Err(e.into()),
        Err(e) => Err(CliError::unusable(file, e.to_string())),
    }
}

/// The first key of a JWKS file (or a file holding one JWK).
fn load_jwk(path: &Path) -> Result<countersign::jwk::PublicJwk, CliError> {
    let text = std::fs::read_to_string(path).map_err(CliError::file(path))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CliError::unusable(path, format!("not JSON: {e}")))?;
    let jwk = value
        .get("keys")
        .and_then(|k| k.get(0))
        .unwrap_or(&value)
        .as_object()
        .ok_or_else(|| CliError::unusable(path, "no JWK".into()))?;
    countersign::jwk::PublicJwk::parse(jwk)
        .map_err(|e| CliError::unusable(path, format!("not a usable public key: {}", e.as_str())))
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn print_out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn write_private(path: &Path, bytes: &[u8], force: bool) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if force {
        // A fresh file, so the 0600 mode applies whatever the old one had.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(CliError::file(path)(e))
            }
            _ => {}
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => CliError::unusable(
                path,
                "already exists; keeping it (pass --force to replace it, or --out another path)"
                    .into(),
            ),
            _ => CliError::file(path)(e),
        })?;
    f.write_all(bytes).map_err(CliError::file(path))
}

fn init_logs(format: LogConfig) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt};
    use tracing_subscriber::prelude::*;

    let wanted = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Pingora logs whole request heads (cookies, Authorization, DPoP) at debug and trace: never
    // let those levels of its crates through, whatever RUST_LOG asks for.
    // The hint lets the `log` bridge drop Pingora's debug and trace records before they are
    // built, instead of building each one only to filter it out.
    let hint = wanted
        .max_level_hint()
        .unwrap_or(tracing_subscriber::filter::LevelFilter::TRACE);
    let no_header_dumps = filter_fn(|meta| {
        !(meta.target().starts_with("pingora") && *meta.level() > tracing::Level::INFO)
    })
    .with_max_level_hint(hint);
    let filter = wanted.and(no_header_dumps).and(RoutinePingoraErrors);
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogConfig::Json => tracing_subscriber::registry()
            .with(layer.json().with_filter(filter))
            .init(),
        LogConfig::Pretty => tracing_subscriber::registry()
            .with(layer.with_filter(filter))
            .init(),
    }
}

/// Pingora messages it logs at ERROR for routine events: a pooled upstream connection that its
/// idle watcher still held (a fresh one is opened instead), clients that disconnect or send
/// garbage before a request, an upgrade waiting for its sockets. Under load or a flood they would fill the log; they are dropped.
const ROUTINE_PINGORA_ERRORS: [&str; 6] = [
    "failed to acquire reusable stream",
    "Fail to proxy: ",
    "HTTP server fails to read from downstream",
    "Downstream handshake error",
    "Downstream handshake timeout",
    // `run --upgrade` waiting for the old process to be sent SIGQUIT.
    "No incoming socket transfer",
];

/// A log filter that drops [`ROUTINE_PINGORA_ERRORS`].
struct RoutinePingoraErrors;

impl<S> tracing_subscriber::layer::Filter<S> for RoutinePingoraErrors {
    fn enabled(
        &self,
        _meta: &tracing::Metadata<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        if *event.metadata().level() != tracing::Level::ERROR {
            return true;
        }
        // Records from the `log` bridge carry their target in a `log.target` field.
        #[derive(Default)]
        struct Fields {
            target: String,
            message: String,
        }
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                match field.name() {
                    "message" => self.message = value.to_string(),
                    "log.target" => self.target = value.to_string(),
                    _ => {}
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.message = format!("{value:?}");
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let target = if fields.target.is_empty() {
            event.metadata().target()
        } else {
            fields.target.as_str()
        };
        let message = fields.message;
        !target.starts_with("pingora")
            || !ROUTINE_PINGORA_ERRORS
                .iter()
                .any(|routine| message.starts_with(routine))
    }
}
