//! `countersign devices add|list|remove|invite`: an operator's changes to a subject's registry,
//! on the store the replicas share. Each change is audited (`device_enrolled`,
//! `device_removed`, `device_invited`, by `operator`) in the configured audit log, appended
//! after its current last line so the hash chain stays whole while gateways write to it too.

use std::sync::Arc;

use crate::audit::{AuditLog, Event, Record};
use crate::config::{Config, StoreConfig};
use crate::store::{Enrol, RedisStore, ReplayStore, StoreError};

use super::{is_jkt, Registry, Source};

/// What an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Enrol a DPoP key by its thumbprint.
    Add {
        /// The subject.
        subject: String,
        /// The key's RFC 7638 thumbprint.
        jkt: String,
    },
    /// List a subject's devices.
    List {
        /// The subject.
        subject: String,
    },
    /// Remove a device (a thumbprint, or `webauthn:<credential id>`).
    Remove {
        /// The subject.
        subject: String,
        /// The device.
        jkt: String,
    },
    /// Issue a one-time invite code for a new device of the subject.
    Invite {
        /// The subject.
        subject: String,
    },
}

/// Why an operation was not done.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    /// The memory store lives inside each gateway process; nothing outside it can reach it.
    #[error(
        "{0}: store.kind memory lives inside each gateway process, so this command cannot reach \
         a running gateway's devices; enrolment from the command line needs the shared store \
         (store.kind: redis)"
    )]
    MemoryStore(String),
    /// An empty subject.
    #[error("--subject must not be empty")]
    EmptySubject,
    /// Not a thumbprint.
    #[error("--jkt {0:?}: expected an RFC 7638 SHA-256 thumbprint (43 base64url characters, as `countersign keygen` prints)")]
    BadJkt(String),
    /// At `session.max_devices`.
    #[error("subject {subject:?} already has {max} devices enrolled (session.max_devices); remove one first")]
    Full {
        /// The subject.
        subject: String,
        /// The bound.
        max: usize,
    },
    /// Nothing to remove.
    #[error("{device} is not enrolled for subject {subject:?}")]
    NotEnrolled {
        /// The subject.
        subject: String,
        /// The device.
        device: String,
    },
    /// The store could not be reached or refused the operation.
    #[error("{0}")]
    Store(String),
    /// The audit record could not be written.
    #[error("audit log: {0}")]
    Audit(String),
}

impl From<StoreError> for DevicesError {
    fn from(e: StoreError) -> DevicesError {
        DevicesError::Store(e.to_string())
    }
}

/// Runs `operation` on the configured store; the text to print (an invite code alone on its
/// line).
pub fn operate(config: &Config, operation: &Operation) -> Result<String, DevicesError> {
    let subject = match operation {
        Operation::Add { subject, .. }
        | Operation::List { subject }
        | Operation::Remove { subject, .. }
        | Operation::Invite { subject } => subject,
    };
    if subject.is_empty() {
        return Err(DevicesError::EmptySubject);
    }
    if let Operation::Add { jkt, .. } = operation {
        if !is_jkt(jkt) {
            return Err(DevicesError::BadJkt(jkt.clone()));
        }
    }
    let StoreConfig::Redis { url, timeout } = &config.store else {
        return Err(DevicesError::MemoryStore(
            config.source.display().to_string(),
        ));
    };
    let store: Arc<dyn ReplayStore> =
        Arc::new(RedisStore::new(url, *timeout).map_err(|e| DevicesError::Store(e.to_string()))?);
    let registry = Registry::new(store, config.session.max_devices);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DevicesError::Store(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(apply(config, &registry, subject, operation))
}

async fn apply(
    config: &Config,
    registry: &Registry,
    subject: &str,
    operation: &Operation,
) -> Result<String, DevicesError> {
    let record = |event, device: Option<&str>| Record {
        event: Some(event),
        subject: Some(subject.to_string()),
        device: device.map(str::to_string),
        by: Some(Source::Operator.name()),
        ..Record::default()
    };
    match operation {
        Operation::Add { jkt, .. } => {
            match registry
                .enrol(subject, jkt, &Source::Operator, None)
                .await?
            {
                Enrol::New => {
                    if let Err(e) = audit(config, &record(Event::DeviceEnrolled, Some(jkt))) {
                        // Fail closed: no enrolment without its audit record.
                        registry.remove(subject, jkt).await?;
                        return Err(e);
                    }
                    Ok(format!("enrolled {jkt} for subject {subject:?}\n"))
                }
                Enrol::Already => Ok(format!(
                    "{jkt} was already enrolled for subject {subject:?}\n"
                )),
                Enrol::Full => Err(DevicesError::Full {
                    subject: subject.to_string(),
                    max: registry.max(),
                }),
            }
        }
        Operation::List { .. } => {
            let devices = registry.list(subject).await?;
            if devices.is_empty() {
                return Ok(format!("no devices enrolled for subject {subject:?}\n"));
            }
            let mut out = String::new();
            for (device, entry) in devices {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(entry.at);
                out.push_str(&format!(
                    "{device}  by {}  at {}\n",
                    entry.by,
                    humantime::format_rfc3339_seconds(at)
                ));
            }
            Ok(out)
        }
        Operation::Remove { jkt, .. } => {
            if !registry.remove(subject, jkt).await? {
                return Err(DevicesError::NotEnrolled {
                    subject: subject.to_string(),
                    device: jkt.clone(),
                });
            }
            audit(config, &record(Event::DeviceRemoved, Some(jkt)))?;
            Ok(format!(
                "removed {jkt} from subject {subject:?}; it confirms nothing from now on\n"
            ))
        }
        Operation::Invite { .. } => {
            let ttl = config.session.invite_ttl;
            let code = registry.invite(subject, ttl).await?;
            audit(config, &record(Event::DeviceInvited, None))?;
            eprintln!(
                "invite for subject {subject:?}, single use, valid {}: redeem it with \
                 POST /.countersign/devices/enroll {{\"code\": ...}} and a proof by the new key, \
                 or for a passkey by opening {}/.countersign/devices/enroll in a browser signed \
                 in as {subject:?}",
                humantime::format_duration(ttl),
                config
                    .public_origin
                    .as_ref()
                    .map(|o| format!("{}{}", o.origin(), o.prefix))
                    .unwrap_or_else(|| "the app origin".to_string())
            );
            // The code, alone on its line: the only place it is ever shown.
            Ok(format!("{code}\n"))
        }
    }
}

/// Appends `record` to the configured audit log; without `audit.path` (the gateway writes to
/// stdout) it goes to stderr, since stdout carries the command's answer.
fn audit(config: &Config, record: &Record) -> Result<(), DevicesError> {
    match &config.audit.path {
        Some(path) => {
            let log = AuditLog::open(Some(path), false)
                .map_err(|e| DevicesError::Audit(e.to_string()))?;
            log.append(record)
                .map_err(|e| DevicesError::Audit(e.to_string()))
        }
        None => {
            let line =
                serde_json::to_string(record).map_err(|e| DevicesError::Audit(e.to_string()))?;
            eprintln!("audit: {line}");
            Ok(())
        }
    }
}
