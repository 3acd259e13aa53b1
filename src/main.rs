//! The `countersign` command line: parse arguments, load config, hand off.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use countersign::alg::ProofAlg;
use countersign::config::{self, LogConfig};
use countersign::keys::DeviceKey;
use countersign::{audit, demo, server};

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
    /// Start a sample legacy API and the gateway on loopback and walk a confirmation.
    Demo,
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Create a device key (PKCS#8 PEM) and print its thumbprint (jkt).
    Keygen {
        /// Where to write the private key.
        #[arg(long, short, default_value = "device-key.pem")]
        out: PathBuf,
        /// Key algorithm.
        #[arg(long, default_value = "ES256")]
        alg: String,
    },
    /// Sign a DPoP proof for one request, to use with curl.
    Proof {
        /// The device key written by `keygen`.
        #[arg(long)]
        key: PathBuf,
        /// HTTP method of the request.
        #[arg(long)]
        method: String,
        /// Full URL of the request.
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

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Run { config, upgrade } => {
            let config = config::load(&config).map_err(|e| e.to_string())?;
            init_logs(config.log);
            let start = if upgrade {
                server::Start::Upgrade
            } else {
                server::Start::Fresh
            };
            let assembled = server::assemble_process(config, start).map_err(|e| e.to_string())?;
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
            let config = config::load(&path).map_err(|e| e.to_string())?;
            // Keys and secrets load now, so `check` fails where `run` would.
            let signer =
                countersign::provenance::Signer::load(config.provenance.signing_key.as_deref())
                    .map_err(|e| e.to_string())?;
            countersign::session::Sessions::new(&config.session, config.confirmation.clock_skew)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let mut out = format!("{}: ok\nlisten {}\n", path.display(), config.listen);
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
        Command::Demo => demo::run(),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    file,
                    from,
                    checkpoint,
                    jwks,
                },
        } => verify_audit(&file, from, checkpoint.as_deref(), jwks.as_deref()),
        Command::Keygen { out, alg } => {
            let alg =
                ProofAlg::from_name(&alg).ok_or_else(|| format!("unknown algorithm {alg}"))?;
            let key = DeviceKey::generate(alg).map_err(|e| e.to_string())?;
            write_private(&out, key.to_pkcs8_pem().as_bytes())?;
            println!("{}", key.jkt());
            eprintln!(
                "wrote {} ({}); its thumbprint (jkt) is printed above",
                out.display(),
                alg.as_str()
            );
            Ok(())
        }
        Command::Proof {
            key,
            method,
            url,
            nonce,
            token,
        } => {
            let pem =
                std::fs::read_to_string(&key).map_err(|e| format!("{}: {e}", key.display()))?;
            let key = DeviceKey::from_pkcs8_pem(&pem).map_err(|e| e.to_string())?;
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
    file: &std::path::Path,
    from: Option<String>,
    checkpoint: Option<&str>,
    jwks: Option<&std::path::Path>,
) -> Result<(), String> {
    let key = match jwks {
        Some(path) => Some(load_jwk(path)?),
        None => None,
    };
    let checkpoint = checkpoint
        .map(|jws| audit::checkpoint_claims(jws, key.as_ref()))
        .transpose()
        .map_err(|e| format!("{}: checkpoint: {e}", file.display()))?;
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
        Err(e @ audit::VerifyError::Unreadable { .. }) => Err(e.to_string()),
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

/// The first key of a JWKS file (or a file holding one JWK).
fn load_jwk(path: &std::path::Path) -> Result<countersign::jwk::PublicJwk, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let jwk = value
        .get("keys")
        .and_then(|k| k.get(0))
        .unwrap_or(&value)
        .as_object()
        .ok_or_else(|| format!("{}: no JWK", path.display()))?;
    countersign::jwk::PublicJwk::parse(jwk).map_err(|e| {
        format!(
            "{}: not a usable public key: {}",
            path.display(),
            e.as_str()
        )
    })
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn print_out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn write_private(path: &PathBuf, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
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
