//! Responses the gateway makes itself: always JSON `{"error","error_description"}` with the right
//! status, a Content-Length, and `Cache-Control: no-store`. Never a credential or a proof.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::{json, Value};

/// Writes a JSON error response; `extra` headers are added as given.
pub async fn error(
    session: &mut Session,
    status: u16,
    error: &str,
    description: &str,
    extra: &[(&'static str, String)],
    more: Option<(&str, Value)>,
) -> pingora::Result<()> {
    let mut body = json!({ "error": error, "error_description": description });
    if let (Some((key, value)), Value::Object(map)) = (more, &mut body) {
        map.insert(key.to_string(), value);
    }
    json_body(session, status, body.to_string().into_bytes(), extra).await
}

/// Writes a refusal: the JSON error with its `reason` (the audit and metric reason) and, for a
/// challenge, what is being confirmed.
pub async fn refusal(
    session: &mut Session,
    status: u16,
    error: &str,
    description: &str,
    reason: &str,
    extra: &[(&'static str, String)],
    confirmation: Option<Value>,
) -> pingora::Result<()> {
    let mut body = json!({ "error": error, "error_description": description, "reason": reason });
    if let (Some(confirmation), Value::Object(map)) = (confirmation, &mut body) {
        map.insert("confirmation".to_string(), confirmation);
    }
    json_body(session, status, body.to_string().into_bytes(), extra).await
}

/// Writes a JSON body with `status`.
pub async fn json_body(
    session: &mut Session,
    status: u16,
    body: Vec<u8>,
    extra: &[(&'static str, String)],
) -> pingora::Result<()> {
    let mut head = ResponseHeader::build(status, Some(4 + extra.len()))?;
    head.insert_header("content-type", "application/json")?;
    head.insert_header("content-length", body.len())?;
    head.insert_header("cache-control", "no-store")?;
    for (name, value) in extra {
        head.insert_header(*name, value.as_str())?;
    }
    session.write_response_header(Box::new(head), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}
