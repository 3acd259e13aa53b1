//! `countersign sessions revoke`: ends every binding of one session (by the hash audit records
//! show) or of one subject, on the store the replicas share. A revoked session is refused
//! (`invalid_token`, reason `session_revoked`) on its next high-impact request on any replica; a
//! revoked subject's sessions that started before the revocation are, and new sign-ins are not.

use crate::config::{Config, StoreConfig};
use crate::confirm;
use crate::store::{RedisStore, ReplayStore};

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// A session, by the 16 hex digits of its audit `session` field.
    SessionHash(String),
    /// Every session of a subject.
    Subject(String),
}

/// Why a revocation could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// The session hash is not the 16 hex digits audit records show.
    #[error("--session-hash {0:?}: expected the 16 hex digits of an audit record's session field")]
    BadHash(String),
    /// An empty subject.
    #[error("--subject must not be empty")]
    EmptySubject,
    /// The memory store lives inside each gateway process; nothing outside it can reach it.
    #[error(
        "{0}: store.kind memory lives inside each gateway process; revocation needs the shared \
         store (store.kind: redis)"
    )]
    MemoryStore(String),
    /// The store could not be reached or refused the write.
    #[error("{0}")]
    Store(String),
}

/// Records the revocation on the configured store; returns a line for the operator.
pub fn revoke(config: &Config, what: &Revocation) -> Result<String, RevokeError> {
    let mark = match what {
        Revocation::SessionHash(hash) => {
            let valid = hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit());
            if !valid {
                return Err(RevokeError::BadHash(hash.clone()));
            }
            confirm::session_mark(hash)
        }
        Revocation::Subject(subject) if subject.is_empty() => {
            return Err(RevokeError::EmptySubject)
        }
        Revocation::Subject(subject) => confirm::subject_mark(subject),
    };
    let StoreConfig::Redis { url, timeout } = &config.store else {
        return Err(RevokeError::MemoryStore(
            config.source.display().to_string(),
        ));
    };
    let store = RedisStore::new(url, *timeout).map_err(|e| RevokeError::Store(e.to_string()))?;
    let now = crate::clock::now_secs();
    let ttl = config.session.binding_ttl;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RevokeError::Store(format!("cannot start a runtime: {e}")))?;
    runtime
        .block_on(store.revoke(&mark, now, ttl))
        .map_err(|e| RevokeError::Store(e.to_string()))?;
    let what = match what {
        Revocation::SessionHash(hash) => format!("session {hash}"),
        Revocation::Subject(subject) => {
            format!("every session of subject {subject:?} started so far")
        }
    };
    Ok(format!(
        "revoked {what} (for {})",
        humantime::format_duration(ttl)
    ))
}
