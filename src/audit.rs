//! The audit log (CONTRACT §6): append-only JSON lines, each carrying `prev`, the hex SHA-256 of
//! the line before it, so that an edited, dropped or reordered line breaks the chain.
//! Records never hold a credential or a proof: only hashes, thumbprints and the action.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev` of the first line of a new log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The decision a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// A challenge (nonce) was issued.
    Challenged,
    /// A high-impact request was refused.
    Rejected,
    /// A confirmation was accepted; written before forwarding.
    Accepted,
    /// A forwarded request completed.
    Completed,
    /// A low-risk request was forwarded (only with `audit.passthrough`).
    Passthrough,
}

/// One audit record; `ts` and `prev` are added when it is written.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    /// What happened.
    pub event: Option<Event>,
    /// UUID v7 of the confirmation.
    pub confirmation_id: Option<String>,
    /// The confirmation this one continues (redirect chains).
    pub parent_id: Option<String>,
    /// The immediate parent in a redirect chain (`parent_id` is the chain's root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Route name.
    pub route: String,
    /// Request method.
    pub method: String,
    /// Request target (origin-form, with query).
    pub target: String,
    /// Hex SHA-256 of the body, when buffered.
    pub body_sha256: Option<String>,
    /// Session subject.
    pub subject: Option<String>,
    /// First 16 hex of SHA-256 of the session id.
    pub session: Option<String>,
    /// Device key thumbprint.
    pub device: Option<String>,
    /// Client address.
    pub client_ip: Option<String>,
    /// Refusal reason (CONTRACT §4).
    pub reason: Option<&'static str>,
    /// Upstream status, on `completed`.
    pub upstream_status: Option<u16>,
    /// Time from request to completion, on `completed`.
    pub duration_ms: Option<u64>,
    /// Request id (also in `Countersign-Request-Id`).
    pub request_id: Option<String>,
    /// The passkey (base64url credential id) of a browser confirmation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    /// Whether the passkey verified the user (PIN, biometrics), on a browser confirmation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_verified: Option<bool>,
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    #[serde(flatten)]
    record: &'a Record,
    prev: &'a str,
}

struct Sink {
    file: Option<File>,
    stdout: bool,
    prev: String,
}

/// The audit log writer; one mutex orders lines and the chain.
pub struct AuditLog {
    sink: Mutex<Sink>,
    path: Option<PathBuf>,
}

impl AuditLog {
    /// Opens (appending to) `path`, continuing its chain, or writes to stdout when `None`.
    pub fn open(path: Option<&Path>, also_stdout: bool) -> io::Result<AuditLog> {
        let (file, prev) = match path {
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let mut f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .read(true)
                    .open(p)?;
                let prev = last_line_hash(&mut f)?;
                (Some(f), prev)
            }
            None => (None, GENESIS.to_string()),
        };
        Ok(AuditLog {
            sink: Mutex::new(Sink {
                stdout: also_stdout || file.is_none(),
                file,
                prev,
            }),
            path: path.map(Path::to_path_buf),
        })
    }

    /// Where records go: the file, or `stdout`.
    pub fn location(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "stdout".to_string(), |p| p.display().to_string())
    }

    /// Appends one record. An error means it was not written (the caller fails closed).
    pub fn append(&self, record: &Record) -> io::Result<()> {
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let line = serde_json::to_string(&Line {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            record,
            prev: &sink.prev,
        })?;
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        if let Some(f) = sink.file.as_mut() {
            f.write_all(&bytes)?;
        }
        if sink.stdout {
            let mut out = io::stdout().lock();
            out.write_all(&bytes)?;
            out.flush()?;
        }
        sink.prev = hex_sha256(line.as_bytes());
        Ok(())
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The hash of the last complete line of an audit file, or the genesis value.
fn last_line_hash(f: &mut File) -> io::Result<String> {
    let len = f.seek(SeekFrom::End(0))?;
    let tail = len.min(1 << 20);
    f.seek(SeekFrom::Start(len - tail))?;
    let mut buf = Vec::with_capacity(tail as usize);
    f.read_to_end(&mut buf)?;
    let trimmed = buf.strip_suffix(b"\n").unwrap_or(&buf);
    if trimmed.is_empty() {
        return Ok(GENESIS.to_string());
    }
    let start = trimmed
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    Ok(hex_sha256(&trimmed[start..]))
}

/// Where the chain of an audit file breaks.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ChainBreak {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong there.
    pub message: String,
}

/// Checks the hash chain of an audit file; returns the number of lines.
pub fn verify(path: &Path) -> Result<usize, ChainBreak> {
    let file = File::open(path).map_err(|e| ChainBreak {
        line: 0,
        message: format!("cannot open {}: {e}", path.display()),
    })?;
    let mut prev: Option<String> = None;
    let mut count = 0;
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| ChainBreak {
            line: n,
            message: format!("read error: {e}"),
        })?;
        #[derive(Deserialize)]
        struct Chained {
            prev: String,
        }
        let parsed: Chained = serde_json::from_slice(&line).map_err(|e| ChainBreak {
            line: n,
            message: format!("not an audit record: {e}"),
        })?;
        if let Some(expected) = &prev {
            if &parsed.prev != expected {
                return Err(ChainBreak {
                    line: n,
                    message: "prev does not match the hash of the line before".to_string(),
                });
            }
        }
        prev = Some(hex_sha256(&line));
        count = n;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(route: &str) -> Record {
        Record {
            event: Some(Event::Accepted),
            route: route.to_string(),
            method: "POST".to_string(),
            target: "/x".to_string(),
            ..Record::default()
        }
    }

    #[test]
    fn chain_verifies_survives_reopen_and_reports_the_first_edited_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(Some(&path), false).expect("open");
        log.append(&record("a")).expect("append");
        log.append(&record("b")).expect("append");
        drop(log);
        let log = AuditLog::open(Some(&path), false).expect("reopen");
        log.append(&record("c")).expect("append");
        assert_eq!(verify(&path), Ok(3));

        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.lines().next().expect("line").contains(GENESIS));
        std::fs::write(
            &path,
            text.replacen("\"route\":\"b\"", "\"route\":\"z\"", 1),
        )
        .expect("write");
        assert_eq!(verify(&path).map_err(|e| e.line), Err(3));
    }
}
