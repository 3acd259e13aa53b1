//! The buffered relay: how a request the gateway read whole is forwarded. Its body was read and bound before anything left
//! the gateway, so it cannot take Pingora's streaming path (whose pre-read body replay is capped at
//! 64 KiB): it goes through Pingora's own connector and connection pool, and the response is
//! relayed here. A refused request therefore never reaches the upstream, not even its head.

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

/// Why forwarding failed, and what the client is told.
#[derive(Debug)]
pub enum RelayError {
    /// Nothing was sent to the client yet: answer with this status (502 or 504).
    Upstream(u16, Box<Error>),
    /// The response was already under way; the connection can only be dropped.
    Relay(Box<Error>),
}

/// Sends buffered requests through a shared connection pool.
pub struct Relay {
    connector: Connector,
}

impl Relay {
    /// A forwarder with its own pool, built like Pingora's proxy connector.
    pub fn new(options: ConnectorOptions) -> Relay {
        Relay {
            connector: Connector::new(Some(options)),
        }
    }
}

/// An upstream response whose head has arrived and whose body is still to be relayed.
pub struct Pending {
    /// The response head, hop-by-hop headers removed and framing set for the client; rewrite
    /// it before [`Relay::relay`].
    pub head: ResponseHeader,
    upstream: HttpSession,
    bodyless: bool,
}

impl Relay {
    /// Sends `req` with `body` to `peer` and waits for the final response head.
    pub async fn send(
        &self,
        peer: &HttpPeer,
        mut req: RequestHeader,
        body: Bytes,
    ) -> Result<Pending, RelayError> {
        req.insert_header(http::header::CONTENT_LENGTH, body.len())
            .map_err(|e| RelayError::Upstream(502, e))?;
        let mut attempt = 0;
        let upstream = loop {
            attempt += 1;
            let (mut upstream, reused) = self
                .connector
                .get_http_session(peer)
                .await
                .map_err(|e| RelayError::Upstream(status_for(&e), e))?;
            match exchange(&mut upstream, &req, &body).await {
                Ok(()) => break upstream,
                // A pooled connection the upstream closed while idle: retry once on a fresh one.
                Err(_) if reused && attempt == 1 => continue,
                Err(e) => return Err(RelayError::Upstream(status_for(&e), e)),
            }
        };
        let mut head = upstream
            .response_header()
            .cloned()
            .ok_or_else(|| RelayError::Upstream(502, Error::new(ErrorType::InvalidHTTPHeader)))?;
        let status = head.status.as_u16();
        if status == 101 {
            // Nothing sent upstream asked to switch protocols: no tunnel opens on this path.
            return Err(RelayError::Upstream(
                502,
                Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "unrequested 101 from upstream",
                ),
            ));
        }
        for name in crate::forwarding::HOP_BY_HOP {
            head.remove_header(name);
        }
        let bodyless = req.method == http::Method::HEAD || matches!(status, 204 | 304);
        if !bodyless && !head.headers.contains_key(http::header::CONTENT_LENGTH) {
            // Chunked or close-delimited upstream: re-frame as chunked for the client.
            head.insert_header(http::header::TRANSFER_ENCODING, "chunked")
                .map_err(|e| RelayError::Upstream(502, e))?;
        }
        Ok(Pending {
            head,
            upstream,
            bodyless,
        })
    }

    /// Writes the (rewritten) head to the client and streams the body; the upstream connection
    /// goes back to the pool when the response ended cleanly.
    pub async fn relay(
        &self,
        downstream: &mut Session,
        peer: &HttpPeer,
        pending: Pending,
    ) -> Result<(), RelayError> {
        let Pending {
            head,
            mut upstream,
            bodyless,
        } = pending;
        downstream
            .write_response_header(Box::new(head), bodyless)
            .await
            .map_err(RelayError::Relay)?;
        if !bodyless {
            while let Some(chunk) = upstream
                .read_response_body()
                .await
                .map_err(RelayError::Relay)?
            {
                ack_now(&upstream);
                downstream
                    .write_response_body(Some(chunk), false)
                    .await
                    .map_err(RelayError::Relay)?;
            }
            downstream
                .write_response_body(None, true)
                .await
                .map_err(RelayError::Relay)?;
        }
        if upstream.response_done() {
            let idle = peer.options.idle_timeout;
            self.connector
                .release_http_session(upstream, peer, idle)
                .await;
        } else {
            upstream.shutdown().await;
        }
        Ok(())
    }
}

/// Writes the request and reads the final response head (skipping 1xx).
async fn exchange(
    upstream: &mut HttpSession,
    req: &RequestHeader,
    body: &Bytes,
) -> pingora::Result<()> {
    upstream.write_request_header(Box::new(req.clone())).await?;
    if !body.is_empty() {
        upstream.write_request_body(body.clone(), true).await?;
    }
    upstream.finish_request_body().await?;
    loop {
        upstream.read_response_header().await?;
        ack_now(upstream);
        let informational = upstream
            .response_header()
            .is_some_and(|h| h.status.is_informational() && h.status.as_u16() != 101);
        if !informational {
            return Ok(());
        }
    }
}

/// 504 for timeouts, 502 for everything else the upstream did.
pub fn status_for(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
        _ => 502,
    }
}

/// [`quick_ack`] on the socket of a forwarded request.
fn ack_now(upstream: &HttpSession) {
    if let Some(stream) = upstream.stream() {
        quick_ack(stream.id());
    }
}

/// Acknowledges what the upstream sent so far at once, and the next segments too. An upstream
/// that writes a response head and body in two small writes without `TCP_NODELAY` holds the
/// body (Nagle) until the head is acknowledged, while Linux delays that acknowledgement up to
/// 40 ms on a connection it considers interactive, as a reused one is. Setting `TCP_QUICKACK`
/// sends a pending ACK now (tcp(7)); the mode lapses, so it is set again after every read.
pub fn quick_ack(fd: std::os::unix::io::RawFd) {
    let on: libc::c_int = 1;
    // SAFETY: `fd` is the live upstream socket Pingora handed to `connected_to_upstream` for
    // this request, and the option value is a c_int of the size passed; a failure only means
    // no quick ACK.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
