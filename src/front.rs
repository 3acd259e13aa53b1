//! The client side of every connection, before Pingora's HTTP/1 session sees it: caps on client
//! connections in total and per client network, a deadline and a size limit for every request
//! head, the idle wait between requests, and the drain of a stopping or upgrading gateway.
//!
//! Pingora 0.9 reads a request head of up to 1 MiB with a timeout per read (so a client that
//! trickles a byte now and then holds its connection for ever), keeps an idle connection as long
//! as its keep-alive lasts, and on shutdown drops every connection it is still reading a head
//! from, including one it accepted a moment before. Here the head is read whole, within
//! `server.header_timeout` and `server.max_header_bytes`, and handed to Pingora as a complete
//! prefix, so Pingora never waits on a client for a head and serves every connection that got
//! that far.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use ipnet::IpNet;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::reload::Reloadable;

/// The `reason` labels of `countersign_connections_dropped_total`.
pub const DROP_REASONS: [&str; 4] = ["header_timeout", "header_too_large", "shed", "refused"];

/// How much of a head is read at once: the first read takes what a usual head needs, later
/// ones double up to the chunk.
const FIRST_READ: usize = 1 << 10;
const READ_CHUNK: usize = 8 << 10;

/// After refusing a head: how long, and how much, the rest of what the client sends is read and
/// thrown away, so that closing does not reset the connection before the client reads the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 << 10;

/// Once the gateway drains, how long an idle connection still waits for a request (answered
/// with `Connection: close`): a client may be sending one on it right now, and closing under it
/// would fail that request.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// File descriptors kept back from the connection cap: listeners, the audit file, the store,
/// upstream connections being opened.
const RESERVED_FDS: u64 = 64;

/// The head settings of the current config (they follow a reload).
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    keepalive: Duration,
    header_timeout: Duration,
    max_header_bytes: usize,
}

impl HeadLimits {
    /// The limits `server` sets.
    pub fn of(server: &ServerConfig) -> HeadLimits {
        HeadLimits {
            keepalive: server.keepalive_timeout,
            header_timeout: server.header_timeout,
            max_header_bytes: server.max_header_bytes,
        }
    }
}

/// Set once the gateway starts to drain (SIGTERM, or SIGQUIT handing its sockets over): every
/// response from then on says `Connection: close`.
#[derive(Clone, Default)]
pub struct Drain(Arc<AtomicBool>);

impl Drain {
    /// Whether the gateway is draining.
    pub fn on(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What a connection is doing, for shedding and draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for, or reading, a request head: the first on its connection, or one that has
    /// started to arrive.
    Head,
    /// Waiting for the next request after a response.
    Idle,
    /// A request is being served.
    Busy,
}

struct Entry {
    network: Option<Vec<u8>>,
    state: State,
    since: Instant,
    stop: Arc<Notify>,
}

#[derive(Default)]
struct Table {
    next: u64,
    live: HashMap<u64, Entry>,
    per_network: HashMap<Vec<u8>, usize>,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.live.remove(&id)?;
        if let Some(net) = &entry.network {
            if let Some(n) = self.per_network.get_mut(net) {
                *n -= 1;
                if *n == 0 {
                    self.per_network.remove(net);
                }
            }
        }
        Some(entry)
    }

    /// Closes the connection that has waited longest for a request, idle or half-open, among
    /// those `fits`; false when every such connection is serving a request.
    fn shed(&mut self, fits: impl Fn(&Entry) -> bool) -> bool {
        let victim = self
            .live
            .iter()
            .filter(|(_, e)| e.state != State::Busy && fits(e))
            .min_by_key(|(_, e)| e.since)
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.remove(id)) {
            Some(entry) => {
                entry.stop.notify_one();
                true
            }
            None => false,
        }
    }
}

/// The client connections open now, with their caps.
pub struct Connections {
    table: Mutex<Table>,
    drain: Drain,
    /// Wakes idle connections when the drain begins.
    drained: Notify,
    max_total: usize,
    max_per_network: usize,
    trusted_proxies: Vec<IpNet>,
    open: IntGauge,
    shed: IntCounter,
    refused: IntCounter,
    header_timeout: IntCounter,
    header_too_large: IntCounter,
}

impl Connections {
    /// Caps from `server`, the total lowered to what the open-files limit allows; peers in
    /// `trusted_proxies` count only in the total.
    pub fn new(
        server: &ServerConfig,
        trusted_proxies: &[IpNet],
        metrics: &Metrics,
        drain: Drain,
    ) -> Arc<Connections> {
        let max_total = match open_files_limit() {
            Some(files) => {
                let fit = (files.saturating_sub(RESERVED_FDS) / 2).max(16) as usize;
                if fit < server.max_connections {
                    tracing::warn!(
                        max_connections = fit,
                        open_files = files,
                        "server.max_connections lowered to fit the open-files limit"
                    );
                }
                server.max_connections.min(fit)
            }
            None => server.max_connections,
        };
        let dropped = |reason: &str| metrics.connections_dropped.with_label_values(&[reason]);
        Arc::new(Connections {
            table: Mutex::new(Table::default()),
            drain,
            drained: Notify::new(),
            max_total,
            max_per_network: server.max_connections_per_ip,
            trusted_proxies: trusted_proxies.to_vec(),
            open: metrics.connections_open.clone(),
            shed: dropped("shed"),
            refused: dropped("refused"),
            header_timeout: dropped("header_timeout"),
            header_too_large: dropped("header_too_large"),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place for a new connection from `ip`. At a cap, the connection of the same
    /// network (or, for the total, any) that has waited longest for a request is closed to make
    /// room; when all of them are serving requests the new one is refused.
    fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Option<Slot> {
        let network = ip
            .filter(|ip| !self.trusted_proxies.iter().any(|net| net.contains(ip)))
            .map(crate::quota::network);
        let mut table = self.lock();
        if let Some(net) = &network {
            if table.per_network.get(net).copied().unwrap_or(0) >= self.max_per_network {
                if !table.shed(|e| e.network.as_ref() == Some(net)) {
                    return self.refuse(table, ip);
                }
                self.shed.inc();
            }
        }
        if table.live.len() >= self.max_total {
            if !table.shed(|_| true) {
                return self.refuse(table, ip);
            }
            self.shed.inc();
        }
        let id = table.next;
        table.next += 1;
        let stop = Arc::new(Notify::new());
        if let Some(net) = &network {
            *table.per_network.entry(net.clone()).or_default() += 1;
        }
        table.live.insert(
            id,
            Entry {
                network,
                state: State::Head,
                since: Instant::now(),
                stop: stop.clone(),
            },
        );
        self.open.set(table.live.len() as i64);
        Some(Slot {
            connections: self.clone(),
            id,
            stop,
        })
    }

    fn refuse(&self, table: MutexGuard<'_, Table>, ip: Option<IpAddr>) -> Option<Slot> {
        drop(table);
        self.refused.inc();
        let client = ip.map(|ip| ip.to_string()).unwrap_or_default();
        tracing::debug!(%client, "connection refused: every connection is serving a request");
        None
    }

    /// Starts the drain: every later response says `Connection: close`, idle connections close
    /// once idle for [`DRAIN_IDLE`], and connections still reading their first head are served.
    pub fn drain(&self) {
        self.drain.0.store(true, Ordering::Release);
        self.drained.notify_waiters();
    }

    /// Connections reading a head or serving a request: a draining gateway waits for them.
    pub fn busy(&self) -> usize {
        self.lock()
            .live
            .values()
            .filter(|e| e.state != State::Idle)
            .count()
    }
}

/// The soft limit on open files.
fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed by reference.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// One connection's place in [`Connections`]; dropping it frees the place.
struct Slot {
    connections: Arc<Connections>,
    id: u64,
    stop: Arc<Notify>,
}

impl Slot {
    fn set(&self, state: State) {
        let mut table = self.connections.lock();
        if let Some(entry) = table.live.get_mut(&self.id) {
            entry.state = state;
            entry.since = Instant::now();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = self.connections.lock();
        table.remove(self.id);
        self.connections.open.set(table.live.len() as i64);
    }
}

/// The gateway's listeners: [`Connections`] and whole request heads in front of Pingora's proxy.
pub struct Front {
    proxy: Arc<HttpProxy<Reloadable>>,
    gateway: Reloadable,
    connections: Arc<Connections>,
}

impl Front {
    /// `proxy` serves the requests of `gateway` that get through.
    pub fn new(
        proxy: HttpProxy<Reloadable>,
        gateway: Reloadable,
        connections: Arc<Connections>,
    ) -> Front {
        Front {
            proxy: Arc::new(proxy),
            gateway,
            connections,
        }
    }

    async fn serve_http1(&self, mut stream: Stream, slot: Slot, shutdown: &ShutdownWatch) {
        let mut reused = false;
        loop {
            let limits = self.gateway.head_limits();
            let head = match read_head(&mut stream, &slot, &limits, reused).await {
                Ok(head) => head,
                Err(end) => {
                    self.end(stream, end).await;
                    return;
                }
            };
            slot.set(State::Busy);
            let mut session = ServerSession::new_http1(stream);
            session.set_pipelined_prefix(head);
            session.set_keepalive(if self.connections.drain.on() {
                None
            } else {
                Some(limits.keepalive.as_secs().max(1))
            });
            let Some(next) = self.proxy.process_new_http(session, shutdown).await else {
                return;
            };
            stream = next.consume().0;
            reused = true;
        }
    }

    /// Closes a connection whose head did not arrive, answering when the client is owed one.
    async fn end(&self, mut stream: Stream, end: HeadEnd) {
        match end {
            HeadEnd::Closed | HeadEnd::Stopped | HeadEnd::Idle => {}
            HeadEnd::TimedOut { partial } => {
                self.connections.header_timeout.inc();
                tracing::debug!("request head not complete within server.header_timeout");
                if partial {
                    answer(
                        &mut stream,
                        "408 Request Timeout",
                        "request_timeout",
                        "the request head did not arrive within the time allowed",
                    )
                    .await;
                }
            }
            HeadEnd::TooLarge => {
                self.connections.header_too_large.inc();
                tracing::debug!("request head larger than server.max_header_bytes");
                answer(
                    &mut stream,
                    "431 Request Header Fields Too Large",
                    "request_header_too_large",
                    "the request head is larger than the gateway accepts",
                )
                .await;
            }
        }
    }
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let slot = self.connections.admit(ip)?;
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // HTTP/2 negotiated over TLS: Pingora's own session, which bounds its header
            // list and ends with GOAWAY on shutdown.
            slot.set(State::Busy);
            return self.proxy.process_new(stream, shutdown).await;
        }
        self.serve_http1(stream, slot, shutdown).await;
        None
    }
    // No `cleanup`: Pingora's would drop every session waiting on a head read, and none waits
    // here (heads arrive whole); a draining gateway exits once `Connections::busy` is zero.
}

/// Why no request head arrived.
#[derive(Debug, PartialEq, Eq)]
enum HeadEnd {
    /// The client closed or reset the connection.
    Closed,
    /// Shed for another connection.
    Stopped,
    /// No next request within `server.keepalive_timeout` (or [`DRAIN_IDLE`] when draining).
    Idle,
    /// Not complete within `server.header_timeout`; `partial` when some of it arrived.
    TimedOut { partial: bool },
    /// Larger than `server.max_header_bytes`.
    TooLarge,
}

/// Reads one request head (and whatever follows it in the same reads). On a reused
/// connection the wait for its first byte is the keep-alive idle time; the head's deadline
/// starts with that byte (with the connection, for the first request).
async fn read_head(
    stream: &mut Stream,
    slot: &Slot,
    limits: &HeadLimits,
    reused: bool,
) -> Result<BytesMut, HeadEnd> {
    let max = limits.max_header_bytes;
    let mut buf = BytesMut::new();
    if reused {
        slot.set(State::Idle);
        let idle_since = tokio::time::Instant::now();
        let drained = slot.connections.drained.notified();
        tokio::pin!(drained);
        drained.as_mut().enable();
        let mut draining = slot.connections.drain.on();
        let mut until = idle_since + limits.keepalive;
        if draining {
            until = until.min(idle_since + DRAIN_IDLE);
        }
        loop {
            tokio::select! {
                biased;
                _ = slot.stop.notified() => return Err(HeadEnd::Stopped),
                _ = drained.as_mut(), if !draining => {
                    draining = true;
                    until = until.min(idle_since + DRAIN_IDLE);
                }
                read = tokio::time::timeout_at(until, read_some(stream, &mut buf, max)) => {
                    match read {
                        Err(_) => return Err(HeadEnd::Idle),
                        Ok(Ok(0) | Err(_)) => return Err(HeadEnd::Closed),
                        Ok(Ok(_)) => break,
                    }
                }
            }
        }
        slot.set(State::Head);
    }
    let deadline = tokio::time::Instant::now() + limits.header_timeout;
    let mut scanned = 0;
    loop {
        if let Some(end) = head_end(&buf, scanned) {
            return if end > max {
                Err(HeadEnd::TooLarge)
            } else {
                Ok(buf)
            };
        }
        if buf.len() > max {
            return Err(HeadEnd::TooLarge);
        }
        scanned = buf.len().saturating_sub(2);
        let partial = !buf.is_empty();
        tokio::select! {
            biased;
            _ = slot.stop.notified() => return Err(HeadEnd::Stopped),
            read = tokio::time::timeout_at(deadline, read_some(stream, &mut buf, max)) => {
                match read {
                    Err(_) => return Err(HeadEnd::TimedOut { partial }),
                    Ok(Ok(0) | Err(_)) => return Err(HeadEnd::Closed),
                    Ok(Ok(_)) => {}
                }
            }
        }
    }
}

/// Reads what is there into `buf`, never past `max + 1` bytes in all. Cancel-safe: bytes
/// are added only when they were read.
async fn read_some(stream: &mut Stream, buf: &mut BytesMut, max: usize) -> std::io::Result<usize> {
    use bytes::BufMut;
    let room = (max + 1)
        .saturating_sub(buf.len())
        .min(buf.len().clamp(FIRST_READ, READ_CHUNK))
        .max(1);
    buf.reserve(room);
    stream.read_buf(&mut (&mut *buf).limit(room)).await
}

/// Where the head in `buf` ends (just past its empty line), looking for the end from `from`
/// on. Empty lines before the request line are not its end (RFC 9112, section 2.2).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = buf.iter().position(|b| *b != b'\r' && *b != b'\n')?;
    let mut at = from.max(start);
    while let Some(offset) = buf[at..].iter().position(|b| *b == b'\n') {
        let newline = at + offset;
        match buf.get(newline + 1..newline + 3) {
            Some([b'\n', _]) => return Some(newline + 2),
            Some([b'\r', b'\n']) => return Some(newline + 3),
            None if buf.get(newline + 1) == Some(&b'\n') => return Some(newline + 2),
            _ => {}
        }
        at = newline + 1;
    }
    None
}

/// Answers a head the gateway will not read, closes the sending side, and reads (for a
/// moment) whatever the client still sends so it gets to read the answer.
async fn answer(stream: &mut Stream, status: &str, error: &str, description: &str) {
    let body = format!(r#"{{"error":"{error}","error_description":"{description}"}}"#);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(response.as_bytes()).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    if AsyncWriteExt::shutdown(stream).await.is_err() {
        return;
    }
    let mut sink = vec![0u8; FIRST_READ];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_its_empty_line() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
        assert_eq!(head_end(head, 0), Some(head.len() - 4));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nrest", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0), None);
    }

    #[test]
    fn empty_lines_before_the_request_line_are_not_its_end() {
        assert_eq!(head_end(b"\r\n\r\n", 0), None);
        let head = b"\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(head_end(head, 0), Some(head.len()));
    }

    #[test]
    fn the_end_is_found_across_reads() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        // Scanning resumes two bytes before the end of what was read before.
        for split in 1..head.len() {
            let scanned = split.saturating_sub(2);
            assert_eq!(head_end(&head[..split], 0), None, "{split}");
            assert_eq!(head_end(head, scanned), Some(head.len()), "{split}");
        }
    }
}
