//! Responses the gateway makes itself, as values, and the one place they are written. JSON
//! errors are `{"error","error_description"}` with the right status and `Cache-Control:
//! no-store`; none ever carries a credential or a proof. Every failure maps to its status here.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};
use serde_json::{json, Value};

/// A response the gateway writes itself.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Its headers (`Content-Length` and `Countersign-Request-Id` are added when written).
    pub headers: Vec<(&'static str, String)>,
    /// Its body.
    pub body: Vec<u8>,
}

impl Reply {
    /// A JSON body with `status`.
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            headers: vec![
                ("content-type", "application/json".to_string()),
                ("cache-control", "no-store".to_string()),
            ],
            body: body.to_string().into_bytes(),
        }
    }

    /// A JSON error.
    pub fn error(status: u16, error: &str, description: &str) -> Reply {
        Reply::json(
            status,
            &json!({ "error": error, "error_description": description }),
        )
    }

    /// No route matches the request.
    pub fn not_found() -> Reply {
        Reply::error(404, "not_found", "no route matches this request")
    }

    /// The answer to a request that failed with `status` (see [`failure_status`]).
    pub fn failure(status: u16) -> Reply {
        let (code, text) = match status {
            504 => ("upstream_timeout", "the upstream did not answer in time"),
            502 => ("bad_gateway", "the upstream could not be reached"),
            400 => ("invalid_request", "the request could not be read"),
            _ => (
                "internal_error",
                "the gateway failed to handle this request",
            ),
        };
        Reply::error(status, code, text)
    }

    /// The same reply with one more header.
    pub fn with(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// The status a failed request is answered with; 0 when the client is gone and nothing can be
/// answered. Upstream timeouts are 504, other upstream failures 502.
pub fn failure_status(e: &Error) -> u16 {
    match e.esource() {
        ErrorSource::Upstream => crate::relay::status_for(e),
        ErrorSource::Downstream => match e.etype() {
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
            _ => 400,
        },
        _ => match e.etype() {
            ErrorType::ConnectTimedout => 504,
            ErrorType::ConnectRefused | ErrorType::ConnectError | ErrorType::ConnectNoRoute => 502,
            _ => 500,
        },
    }
}

/// Writes `reply` as the whole response to the request `request_id`.
pub async fn write(session: &mut Session, reply: Reply, request_id: &str) -> pingora::Result<()> {
    let mut head = ResponseHeader::build(reply.status, Some(reply.headers.len() + 2))?;
    for (name, value) in reply.headers {
        head.append_header(name, value)?;
    }
    head.insert_header("content-length", reply.body.len())?;
    head.insert_header("countersign-request-id", request_id)?;
    session.write_response_header(Box::new(head), false).await?;
    session
        .write_response_body(Some(Bytes::from(reply.body)), true)
        .await
}
