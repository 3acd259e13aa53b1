//! `countersign approvals list|show --config FILE`: what an operator reads of the approvals in
//! the configured shared store. The memory store lives inside each gateway process, so these
//! commands refuse it.

use std::sync::Arc;

use crate::config::{Config, StoreConfig};
use crate::store::{RedisStore, ReplayStore};

use super::{is_id, unix_ms, Book};

/// What the operator asked for.
#[derive(Debug, Clone)]
pub enum Query {
    /// Every approval the store holds, oldest first.
    List,
    /// One approval, as JSON.
    Show(String),
}

/// Why an approvals command failed.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalsError {
    /// The memory store lives inside each gateway process; nothing outside it can reach it.
    #[error(
        "{0}: store.kind memory lives inside each gateway process, so this command cannot reach \
         its approvals; use store.kind: redis to read them from here"
    )]
    MemoryStore(String),
    /// Not an approval id.
    #[error("{0:?} is not an approval id (22 characters of base64url)")]
    BadId(String),
    /// No approval has the id.
    #[error("no approval {0} in the store (never requested, or forgotten after its ttl)")]
    Unknown(String),
    /// The store could not answer.
    #[error("store: {0}")]
    Store(String),
}

/// Answers `query` from the configured store; the text to print.
pub fn query(config: &Config, query: &Query) -> Result<String, ApprovalsError> {
    if let Query::Show(id) = query {
        if !is_id(id) {
            return Err(ApprovalsError::BadId(id.clone()));
        }
    }
    let StoreConfig::Redis { url, timeout } = &config.store else {
        return Err(ApprovalsError::MemoryStore(
            config.source.display().to_string(),
        ));
    };
    let store: Arc<dyn ReplayStore> =
        Arc::new(RedisStore::new(url, *timeout).map_err(|e| ApprovalsError::Store(e.to_string()))?);
    let book = Book::new(store);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ApprovalsError::Store(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(answer(&book, query))
}

async fn answer(book: &Book, query: &Query) -> Result<String, ApprovalsError> {
    let store = |e: crate::store::StoreError| ApprovalsError::Store(e.to_string());
    let now = unix_ms(std::time::SystemTime::now());
    match query {
        Query::Show(id) => {
            let mut approval = book
                .get(id)
                .await
                .map_err(store)?
                .ok_or_else(|| ApprovalsError::Unknown(id.clone()))?;
            approval.expire(now);
            let view = serde_json::json!({ "approval": approval.view() });
            Ok(serde_json::to_string_pretty(&view).unwrap_or_default())
        }
        Query::List => {
            let mut out = String::new();
            for mut approval in book.list().await.map_err(store)? {
                approval.expire(now);
                let view = approval.view();
                out.push_str(&format!(
                    "{}  {:<8}  {}  {} {}  requester {}  approvals {}/{}  expires {}\n",
                    approval.id,
                    approval.status.as_str(),
                    approval.route,
                    approval.method,
                    approval.target,
                    approval.requester.subject.as_deref().unwrap_or("-"),
                    approval.approvals.len(),
                    approval.quorum,
                    view["expires_at"].as_str().unwrap_or_default(),
                ));
            }
            if out.is_empty() {
                out.push_str("no approvals\n");
            }
            Ok(out)
        }
    }
}
