//! The approvals worker: delivers approval webhooks signed per the Standard Webhooks spec
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 over
//! "{id}.{timestamp}.{body}">`, signed with the `standardwebhooks` crate) from a bounded queue,
//! retrying with backoff, and keeps `countersign_approvals_pending` current from the shared
//! store. It runs on a thread of its own, so a slow receiver never delays a request; it stops
//! once the gateway that owns it is dropped and its queue is drained.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, Semaphore};

use super::{Book, WebhookSecret};
use crate::metrics::Metrics;

/// Deliveries waiting; past this a new one is dropped (and counted as a failure).
const QUEUE: usize = 1024;
/// Deliveries in progress at once.
const CONCURRENT: usize = 8;
/// Attempts per delivery: at 1 s, 2 s, 4 s … after the first (about 4 minutes in all).
const ATTEMPTS: u32 = 9;
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the pending gauge is read from the store.
const GAUGE_EVERY: Duration = Duration::from_secs(5);

/// One webhook to deliver.
pub struct Delivery {
    /// Where.
    pub url: http::Uri,
    /// The signing key.
    pub secret: WebhookSecret,
    /// `webhook-id`: the same on every retry, so receivers can drop duplicates.
    pub id: String,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// The handle the gateway keeps: queue a delivery, never wait.
pub struct Worker {
    queue: mpsc::Sender<Delivery>,
    metrics: Arc<Metrics>,
}

impl Worker {
    /// Starts the worker thread over `book`.
    pub fn start(book: Book, metrics: Arc<Metrics>) -> std::io::Result<Worker> {
        let (queue, deliveries) = mpsc::channel(QUEUE);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let worker_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("countersign-approvals".to_string())
            .spawn(move || runtime.block_on(run(deliveries, book, worker_metrics)))?;
        Ok(Worker { queue, metrics })
    }

    /// Queues a delivery; a full queue drops it, counted as a failure.
    pub fn send(&self, delivery: Delivery) {
        if self.queue.try_send(delivery).is_err() {
            tracing::warn!("approval webhook dropped: the delivery queue is full");
            self.metrics.approval_webhook_failures.inc();
        }
    }
}

async fn run(mut deliveries: mpsc::Receiver<Delivery>, book: Book, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(CONCURRENT));
    let mut tick = tokio::time::interval(GAUGE_EVERY);
    loop {
        tokio::select! {
            delivery = deliveries.recv() => {
                let Some(delivery) = delivery else { break };
                let Ok(slot) = slots.clone().acquire_owned().await else { break };
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    deliver(delivery, &metrics).await;
                    drop(slot);
                });
            }
            _ = tick.tick() => refresh_pending(&book, &metrics).await,
        }
    }
    // Let deliveries in progress finish their attempts.
    let _ = slots.acquire_many(CONCURRENT as u32).await;
}

/// Sets `countersign_approvals_pending` from the store (every replica reports the shared count).
pub async fn refresh_pending(book: &Book, metrics: &Metrics) {
    let now = Book::now();
    if let Ok(all) = book.list().await {
        let pending = all
            .iter()
            .filter(|a| a.status == super::Status::Pending && !a.lapsed(now))
            .count();
        metrics.approvals_pending.set(pending as i64);
    }
}

async fn deliver(delivery: Delivery, metrics: &Metrics) {
    let mut backoff = Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt_once(&delivery)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => return,
            Ok(Ok(status)) => {
                tracing::warn!(attempt, status, "approval webhook refused");
            }
            Ok(Err(e)) => tracing::warn!(attempt, error = %e, "approval webhook failed"),
            Err(_) => tracing::warn!(attempt, "approval webhook timed out"),
        }
        metrics.approval_webhook_failures.inc();
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    }
    tracing::warn!(webhook_id = %delivery.id, "approval webhook given up");
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("the webhook URL has no host and port")]
    Address,
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("cannot build the request: {0}")]
    Request(#[from] http::Error),
    #[error("cannot sign: {0}")]
    Sign(String),
}

async fn attempt_once(d: &Delivery) -> Result<u16, AttemptError> {
    let authority = d.url.authority().ok_or(AttemptError::Address)?;
    let address = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let timestamp = crate::clock::now_secs() as i64;
    let signature = standardwebhooks::Webhook::from_bytes(d.secret.key().to_vec())
        .and_then(|w| w.sign(&d.id, timestamp, &d.body))
        .map_err(|e| AttemptError::Sign(e.to_string()))?;
    let stream = tokio::net::TcpStream::connect(&address)
        .await
        .map_err(AttemptError::Connect)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let path = d.url.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::post(path)
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &d.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(Full::new(Bytes::from(d.body.clone())))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    // Read the answer whole so the connection ends cleanly.
    let _ = response.into_body().collect().await;
    Ok(status)
}
