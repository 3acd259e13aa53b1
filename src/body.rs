//! Reading a request body the gateway must see whole (a high-impact request, or one whose route
//! depends on its fields): bounded by size and by time, with `Expect: 100-continue` answered only
//! for a body that may fit. Pingora replays a pre-read body upstream only up to 64 KiB, so a body
//! read here is always forwarded by the gateway's own relay.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::proxy::Session;

use crate::reason::Reason;

/// How long a request body the gateway reads may take to arrive.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A request body as far as the gateway read it.
pub(crate) enum BodyRead {
    /// All of it.
    Complete(Bytes),
    /// Larger than the limit; the rest is unread.
    TooLarge,
    /// It did not arrive within [`BODY_READ_TIMEOUT`].
    TimedOut,
}

/// Reads the whole body up to `max` bytes. Answers `Expect: 100-continue` only for a body that
/// may fit.
pub(crate) async fn read_body(
    session: &mut Session,
    req: &RequestHeader,
    max: usize,
) -> pingora::Result<BodyRead> {
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Ok(BodyRead::TooLarge);
    }
    let expects_continue = req
        .headers
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects_continue {
        // Writing the 100 before the body is read must not cost the connection its keep-alive.
        session.set_close_on_response_before_downstream_finish(false);
        session.write_continue_response().await?;
        session.set_close_on_response_before_downstream_finish(true);
    }
    let mut body = BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
    let deadline = tokio::time::Instant::now() + BODY_READ_TIMEOUT;
    loop {
        let Ok(chunk) = tokio::time::timeout_at(deadline, session.read_request_body()).await else {
            return Ok(BodyRead::TimedOut);
        };
        match chunk? {
            Some(chunk) => {
                if body.len() + chunk.len() > max {
                    return Ok(BodyRead::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            None => return Ok(BodyRead::Complete(body.freeze())),
        }
    }
}

impl BodyRead {
    /// The whole body, or the reason it cannot be had (`too_large` when over the limit).
    pub(crate) fn complete(self, too_large: Reason) -> Result<Bytes, Reason> {
        match self {
            BodyRead::Complete(body) => Ok(body),
            BodyRead::TooLarge => Err(too_large),
            BodyRead::TimedOut => Err(Reason::BodyTimeout),
        }
    }
}
