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
    },
    /// Validate a config and print the effective route table.
    Check {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start a sample legacy API and the gateway on loopback and walk a confirmation.
    Demo {
        /// Instead, serve a sample legacy web UI and the confirmation origin until Ctrl-C, to
        /// click through a passkey confirmation in a browser.
        #[arg(long)]
        browser: bool,
    },
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
        Command::Run { config } => {
            let config = config::load(&config).map_err(|e| e.to_string())?;
            init_logs(config.log);
            let assembled =
                server::assemble(config, server::Runtime::PerThread).map_err(|e| e.to_string())?;
            tracing::info!(listen = %assembled.summary.listen, metrics = ?assembled.summary.metrics, audit = %assembled.summary.audit, "countersign starting");
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
        Command::Demo { browser: true } => {
            countersign::browser::demo::run().map_err(|e| e.to_string())
        }
        Command::Demo { browser: false } => demo::run(),
        Command::Audit {
            command: AuditCommand::Verify { file },
        } => match audit::verify(&file) {
            Ok(n) => {
                println!("{}: chain intact, {n} records", file.display());
                Ok(())
            }
            Err(e) => Err(format!("{}: chain broken at {e}", file.display())),
        },
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
    let filter = wanted.and(no_header_dumps);
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
