//! The audit log (docs/protocol.md, "Audit log"): append-only JSON lines, each carrying `prev`, the hex SHA-256 of
//! the line before it, so that an edited, dropped or reordered line breaks the chain.
//! Records never hold a credential or a proof: only hashes, thumbprints and the action.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::provenance::Signer;

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
    /// Observe mode: a high-impact request forwarded without a confirmation.
    Observed,
    /// A signed statement of the chain head and record count so far.
    Checkpoint,
    /// A device was enrolled for a subject (`by` says who enrolled it).
    #[serde(rename = "device_enrolled")]
    DeviceEnrolled,
    /// A device was removed from a subject's registry.
    #[serde(rename = "device_removed")]
    DeviceRemoved,
    /// An operator issued an invite code for a subject (the code itself is never recorded).
    #[serde(rename = "device_invited")]
    DeviceInvited,
    /// A confirmed request became a pending approval.
    #[serde(rename = "approval_requested")]
    ApprovalRequested,
    /// An approver approved (`subject`, `device` are the approver's).
    #[serde(rename = "approval_granted")]
    ApprovalGranted,
    /// An approver denied.
    #[serde(rename = "approval_denied")]
    ApprovalDenied,
    /// An approval's ttl passed before it was executed (written when the gateway sees it).
    #[serde(rename = "approval_expired")]
    ApprovalExpired,
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
    /// Request method (of the request line).
    pub method: String,
    /// Methods the request stands for through override headers or `_method`, when any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method_override: Option<String>,
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
    /// Refusal reason (docs/protocol.md, "Checks and reasons").
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
    /// On `accepted`: where the confirming device's trust came from (`first_use`, `cnf` for a
    /// DPoP-bound token, or the registry entry's source: `operator`, `invite`, `device:<jkt>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrolment: Option<String>,
    /// On `device_enrolled`, `device_removed` and `device_invited`: who did it (`operator`,
    /// `invite`, `device:<jkt>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The Cedar policies that determined the decision, when a policy is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<String>>,
    /// On `checkpoint`: a JWS over the chain head and record count (see [`CheckpointClaims`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// The approval the record is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// The subjects that approved it (an executed approval).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Vec<String>>,
    /// The approval's status after this step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_status: Option<&'static str>,
}

/// The `typ` of a checkpoint JWS.
pub const CHECKPOINT_TYP: &str = "countersign-audit-checkpoint+jwt";

/// What a checkpoint signs: the file's first `count` lines end with the line hashing to `head`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointClaims {
    /// Hex SHA-256 of the line before the checkpoint.
    pub head: String,
    /// Lines of the file before the checkpoint.
    pub count: u64,
    /// Seconds since the epoch.
    pub iat: u64,
}

struct Checkpoints {
    signer: Arc<Signer>,
    every: u64,
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
    /// The file's length after this process's last write: when it differs, another process (a
    /// `countersign devices` command) appended, and the chain continues from its last line.
    end: u64,
    stdout: bool,
    prev: String,
    /// Lines in the current file (or written to stdout).
    lines: u64,
    /// Records since the last checkpoint.
    since_checkpoint: u64,
    checkpoints: Option<Checkpoints>,
}

/// Why an audit file cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Its directory cannot be created (a file is in the way, permissions).
    #[error("cannot create directory {}: {source}", dir.display())]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file cannot be opened or read.
    #[error("cannot open {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

/// The audit log writer; one mutex orders lines and the chain. Clones share one log.
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
}

struct Shared {
    sink: Mutex<Sink>,
    path: Option<PathBuf>,
    /// The last append failed (cleared by the next one that succeeds).
    failing: AtomicBool,
}

impl AuditLog {
    /// Opens (appending to) `path`, continuing its chain, or writes to stdout when `None`.
    pub fn open(path: Option<&Path>, also_stdout: bool) -> Result<AuditLog, OpenError> {
        let (file, prev, lines) = match path {
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    create_dir(dir)?;
                }
                let file_error = |source| OpenError::File {
                    path: p.to_path_buf(),
                    source,
                };
                let mut f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .read(true)
                    .open(p)
                    .map_err(file_error)?;
                let prev = last_line_hash(&mut f).map_err(file_error)?;
                let lines = count_lines(&mut f).map_err(file_error)?;
                (Some(f), prev, lines)
            }
            None => (None, GENESIS.to_string(), 0),
        };
        let end = match &file {
            Some(f) => f.metadata().map_or(0, |m| m.len()),
            None => 0,
        };
        Ok(AuditLog {
            shared: Arc::new(Shared {
                sink: Mutex::new(Sink {
                    stdout: also_stdout || file.is_none(),
                    end,
                    file,
                    prev,
                    lines,
                    since_checkpoint: 0,
                    checkpoints: None,
                }),
                path: path.map(Path::to_path_buf),
                failing: AtomicBool::new(false),
            }),
        })
    }

    /// Where records go: the file, or `stdout`.
    pub fn location(&self) -> String {
        self.shared
            .path
            .as_ref()
            .map_or_else(|| "stdout".to_string(), |p| p.display().to_string())
    }

    /// Whether records can be written now: the last append succeeded and the file can still be
    /// opened for appending (its directory was not removed, the file system is not read-only).
    pub fn writable(&self) -> bool {
        if self.shared.failing.load(Ordering::Relaxed) {
            return false;
        }
        match &self.shared.path {
            Some(p) => OpenOptions::new().append(true).open(p).is_ok(),
            None => true,
        }
    }

    /// Opens the file at the configured path anew, after logrotate moved the old one away. An
    /// empty new file continues the chain of the old one (its first `prev` is the hash of the
    /// old file's last line: verify it with `--from`); a file with records continues its own.
    pub fn reopen(&self) -> Result<(), OpenError> {
        let Some(p) = &self.shared.path else {
            return Ok(());
        };
        let file_error = |source| OpenError::File {
            path: p.clone(),
            source,
        };
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(p)
            .map_err(file_error)?;
        let last = last_line_hash(&mut f).map_err(file_error)?;
        let lines = count_lines(&mut f).map_err(file_error)?;
        let mut sink = self.shared.sink.lock().unwrap_or_else(|e| e.into_inner());
        // The file being left (already moved away by logrotate) ends with a checkpoint.
        if let Err(e) = Self::write_checkpoint(&mut sink) {
            tracing::warn!(error = %e, "no audit checkpoint before reopening");
        }
        if last != GENESIS {
            sink.prev = last;
        }
        sink.end = f.metadata().map_or(0, |m| m.len());
        sink.file = Some(f);
        sink.lines = lines;
        Ok(())
    }

    /// Signs a checkpoint with `signer` after every `every` records.
    pub fn checkpoint_every(&self, signer: Arc<Signer>, every: u64) {
        let mut sink = self.shared.sink.lock().unwrap_or_else(|e| e.into_inner());
        sink.checkpoints = Some(Checkpoints { signer, every });
    }

    /// Writes a checkpoint now (at shutdown) when records were written since the last one.
    pub fn checkpoint(&self) -> io::Result<()> {
        let mut sink = self.shared.sink.lock().unwrap_or_else(|e| e.into_inner());
        Self::write_checkpoint(&mut sink)
    }

    fn write_checkpoint(sink: &mut Sink) -> io::Result<()> {
        let Some(checkpoints) = &sink.checkpoints else {
            return Ok(());
        };
        if sink.since_checkpoint == 0 {
            return Ok(());
        }
        let claims = CheckpointClaims {
            head: sink.prev.clone(),
            count: sink.lines,
            iat: crate::clock::now_secs(),
        };
        let jws = checkpoints
            .signer
            .sign_typed(CHECKPOINT_TYP, &serde_json::to_vec(&claims)?);
        let record = Record {
            event: Some(Event::Checkpoint),
            checkpoint: Some(jws.clone()),
            ..Record::default()
        };
        Self::write_line(sink, &record)?;
        sink.since_checkpoint = 0;
        // Also to the log stream, so the head leaves the machine even if the file does not.
        tracing::info!(head = %claims.head, count = claims.count, checkpoint = %jws, "audit checkpoint");
        Ok(())
    }

    /// Appends one record. An error means it was not written (the caller fails closed).
    pub fn append(&self, record: &Record) -> io::Result<()> {
        let written = self.write(record);
        self.shared
            .failing
            .store(written.is_err(), Ordering::Relaxed);
        written
    }

    fn write(&self, record: &Record) -> io::Result<()> {
        let mut sink = self.shared.sink.lock().unwrap_or_else(|e| e.into_inner());
        Self::write_line(&mut sink, record)?;
        sink.since_checkpoint += 1;
        let due = sink
            .checkpoints
            .as_ref()
            .is_some_and(|c| sink.since_checkpoint >= c.every);
        if due {
            // The record is written: a failed checkpoint is reported, not the record's failure.
            if let Err(e) = Self::write_checkpoint(&mut sink) {
                tracing::warn!(error = %e, "audit checkpoint not written");
            }
        }
        Ok(())
    }

    fn write_line(sink: &mut Sink, record: &Record) -> io::Result<()> {
        // Other processes append too (`countersign devices`): one at a time, each after the last
        // line of the file as it is now, so the file holds one chain.
        let _locked = match &sink.file {
            Some(f) => Some(FileLock::exclusive(f)?),
            None => None,
        };
        let len = Self::follow(sink)?;
        let n = Self::write_unlocked(sink, record)?;
        sink.end = len + n as u64;
        Ok(())
    }

    /// The file's length; when it changed since this process's last write (another process
    /// appended), the chain continues from its last line. Called with the file locked.
    fn follow(sink: &mut Sink) -> io::Result<u64> {
        let Some(f) = sink.file.as_mut() else {
            return Ok(0);
        };
        let len = f.metadata()?.len();
        if len != sink.end {
            let last = last_line_hash(f)?;
            sink.lines = count_lines(f)?;
            // An emptied file (copytruncate) continues the chain it had, as after a reopen.
            if last != GENESIS {
                sink.prev = last;
            }
        }
        Ok(len)
    }

    /// Writes one line on the current chain head; answers its length in bytes.
    fn write_unlocked(sink: &mut Sink, record: &Record) -> io::Result<usize> {
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
        sink.lines += 1;
        Ok(bytes.len())
    }
}

/// An exclusive advisory lock (flock(2)) on an open audit file, held until dropped; the
/// `countersign devices` commands take it too.
struct FileLock(std::os::fd::RawFd);

impl FileLock {
    fn exclusive(file: &File) -> io::Result<FileLock> {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: `fd` is an open descriptor owned by `file`, which outlives the lock (the sink
        // keeps it while writing); flock only takes an integer and a flag.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(FileLock(fd))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: as in `exclusive`; unlocking a descriptor cannot fail in a way to act on.
        unsafe {
            libc::flock(self.0, libc::LOCK_UN);
        }
    }
}

/// Creates `dir` and its parents; a file in the way is named as such, not as "File exists".
fn create_dir(dir: &Path) -> Result<(), OpenError> {
    std::fs::create_dir_all(dir).map_err(|source| {
        let blocker = dir
            .ancestors()
            .find(|a| a.metadata().is_ok_and(|m| !m.is_dir()));
        match blocker {
            Some(file) => OpenError::Directory {
                dir: dir.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", file.display()),
                ),
            },
            None => OpenError::Directory {
                dir: dir.to_path_buf(),
                source,
            },
        }
    })
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
    // Bounded by the length seen: a device (or a file still growing) is never read to its end.
    f.take(tail).read_to_end(&mut buf)?;
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

/// Newline-terminated lines in `f`.
fn count_lines(f: &mut File) -> io::Result<u64> {
    let len = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    // Bounded by the length seen, like `last_line_hash`.
    let mut reader = BufReader::new((&mut *f).take(len));
    let mut lines = 0;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(lines);
        }
        lines += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        let n = buf.len();
        reader.consume(n);
    }
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

/// Why `audit verify` failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file cannot be opened or read: nothing is known about its chain.
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A line does not continue the chain.
    #[error("chain broken at {0}")]
    Broken(ChainBreak),
    /// The checkpoint given is not one this file satisfies.
    #[error("checkpoint: {0}")]
    Checkpoint(CheckpointError),
}

/// Why a checkpoint does not hold.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Not a compact JWS with checkpoint claims.
    #[error("not a countersign audit checkpoint")]
    Malformed,
    /// The signature does not verify with the key given.
    #[error("signature does not verify with the given key")]
    BadSignature,
    /// The file has fewer lines than the checkpoint covers.
    #[error(
        "the checkpoint covers {count} lines but the file has {lines}: its tail was truncated"
    )]
    Truncated {
        /// Lines the checkpoint covers.
        count: u64,
        /// Lines in the file.
        lines: u64,
    },
    /// Line `count` is not the one signed.
    #[error("line {count} is not the line the checkpoint signed: the file was rewritten")]
    Rewritten {
        /// Lines the checkpoint covers.
        count: u64,
    },
}

/// What `audit verify` checks besides the chain.
#[derive(Debug, Default)]
pub struct Expect {
    /// The `prev` of the first line: the hash of the last line of the previous file of a rotated
    /// log; the genesis value (64 zeros) when `None`.
    pub from: Option<String>,
    /// A checkpoint the file must satisfy (claims already verified).
    pub checkpoint: Option<CheckpointClaims>,
}

/// Decodes a checkpoint JWS and, when `key` is given, verifies its signature with it.
pub fn checkpoint_claims(
    jws: &str,
    key: Option<&crate::jwk::PublicJwk>,
) -> Result<CheckpointClaims, CheckpointError> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let mut parts = jws.trim().split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(CheckpointError::Malformed);
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .ok_or(CheckpointError::Malformed)
    };
    let head = decode(header)?;
    if head["typ"] != CHECKPOINT_TYP {
        return Err(CheckpointError::Malformed);
    }
    if let Some(key) = key {
        let alg = match head["alg"].as_str() {
            Some("ES256") => jsonwebtoken::Algorithm::ES256,
            Some("EdDSA") => jsonwebtoken::Algorithm::EdDSA,
            _ => return Err(CheckpointError::BadSignature),
        };
        let input = &jws.trim()[..header.len() + 1 + payload.len()];
        let verified =
            jsonwebtoken::crypto::verify(signature, input.as_bytes(), key.decoding_key(), alg);
        if !matches!(verified, Ok(true)) {
            return Err(CheckpointError::BadSignature);
        }
    }
    serde_json::from_value(decode(payload)?).map_err(|_| CheckpointError::Malformed)
}

/// Checks the hash chain of an audit file from its first line (whose `prev` must be the
/// genesis value, or `expect.from`) and the checkpoint if any; returns the number of lines.
pub fn verify(path: &Path, expect: &Expect) -> Result<usize, VerifyError> {
    let unreadable = |source| VerifyError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(unreadable)?;
    let broken = |line, message: &str| {
        VerifyError::Broken(ChainBreak {
            line,
            message: message.to_string(),
        })
    };
    let mut prev = expect.from.clone().unwrap_or_else(|| GENESIS.to_string());
    let mut count = 0;
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let n = i + 1;
        let line = line.map_err(unreadable)?;
        #[derive(Deserialize)]
        struct Chained {
            prev: String,
        }
        let parsed: Chained = serde_json::from_slice(&line).map_err(|e| {
            VerifyError::Broken(ChainBreak {
                line: n,
                message: format!("not an audit record: {e}"),
            })
        })?;
        if parsed.prev != prev {
            return Err(broken(
                n,
                if n == 1 && expect.from.is_none() {
                    "the first record does not start the chain (prev is not 64 zeros): \
                     records before it are missing, or pass --from for a rotated file"
                } else if n == 1 {
                    "the first record does not continue from the --from hash"
                } else {
                    "prev does not match the hash of the line before"
                },
            ));
        }
        prev = hex_sha256(&line);
        count = n;
        if let Some(c) = &expect.checkpoint {
            if c.count == n as u64 && c.head != prev {
                return Err(VerifyError::Checkpoint(CheckpointError::Rewritten {
                    count: c.count,
                }));
            }
        }
    }
    if let Some(c) = &expect.checkpoint {
        if c.count > count as u64 {
            return Err(VerifyError::Checkpoint(CheckpointError::Truncated {
                count: c.count,
                lines: count as u64,
            }));
        }
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
        assert_eq!(verify(&path, &Expect::default()).ok(), Some(3));

        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.lines().next().expect("line").contains(GENESIS));
        std::fs::write(
            &path,
            text.replacen("\"route\":\"b\"", "\"route\":\"z\"", 1),
        )
        .expect("write");
        assert!(matches!(
            verify(&path, &Expect::default()),
            Err(VerifyError::Broken(ChainBreak { line: 3, .. }))
        ));
    }
}
