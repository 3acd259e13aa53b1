//! What a request says beyond its method and path: query parameters, form fields, JSON members and
//! the methods it stands for through overrides. Routes match on them (`match.query`, `match.form`,
//! `match.json`), so the other doors of a legacy UI ("delete selected" is a form field of a POST to
//! a list page) reach the route that gates them. A body the gateway cannot read while a high-impact
//! route could depend on it counts as matching that route: fail closed.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// Headers that make a request stand for another method (Rails, Laravel, Symfony, Express
/// `method-override`, Spring `HiddenHttpMethodFilter`, Flask's documented middleware).
pub const OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];
/// The query parameter and form field with the same effect.
pub const OVERRIDE_FIELD: &str = "_method";

/// Allowed values of one condition: any of a list, or `*` (present at all).
#[derive(Debug, Clone, PartialEq)]
pub enum Allowed {
    /// Present with any value.
    Any,
    /// Present with one of these values (strings, or JSON scalars for `match.json`).
    OneOf(Vec<Value>),
}

impl Allowed {
    fn admits(&self, value: &Value) -> bool {
        match self {
            Allowed::Any => true,
            Allowed::OneOf(values) => values.iter().any(|v| scalar_eq(v, value)),
        }
    }
}

/// `1` in the config equals `"1"` in a query, a form or a JSON body: legacy apps compare text.
fn scalar_eq(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), b) | (b, Value::String(a)) => scalar_text(b).is_some_and(|t| &t == a),
        (a, b) => a == b,
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A route's conditions beyond method and path; all must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conditions {
    /// `match.query`: parameter name → allowed values.
    pub query: BTreeMap<String, Allowed>,
    /// `match.form`: field name → allowed values (urlencoded and multipart bodies).
    pub form: BTreeMap<String, Allowed>,
    /// `match.json`: JSON pointer → allowed values.
    pub json: BTreeMap<String, Allowed>,
}

impl Conditions {
    /// Whether the route needs the body to decide.
    pub fn on_body(&self) -> bool {
        !self.form.is_empty() || !self.json.is_empty()
    }

    /// Whether the request satisfies every condition. `fail_closed` (high-impact routes) makes an
    /// unreadable body satisfy body conditions.
    pub fn hold(&self, query: &Fields, body: &Body, fail_closed: bool) -> bool {
        let query_ok = self
            .query
            .iter()
            .all(|(name, allowed)| query.admits(name, allowed));
        if !query_ok {
            return false;
        }
        if !self.on_body() {
            return true;
        }
        match body {
            Body::Unreadable => fail_closed,
            Body::Form(fields) => {
                self.json.is_empty()
                    && self
                        .form
                        .iter()
                        .all(|(n, allowed)| fields.admits(n, allowed))
            }
            Body::Json(value) => {
                self.form.is_empty()
                    && self.json.iter().all(|(pointer, allowed)| {
                        value.pointer(pointer).is_some_and(|v| allowed.admits(v))
                    })
            }
            Body::Other => false,
        }
    }
}

/// Name/value pairs of a query or a form, every occurrence kept: servers disagree on which of
/// two equal names wins, so a condition holds when any occurrence satisfies it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// No fields.
    pub const fn empty() -> Fields {
        Fields(Vec::new())
    }

    /// Parses `application/x-www-form-urlencoded` text (a query or a body).
    pub fn urlencoded(text: &[u8]) -> Fields {
        Fields(
            form_urlencoded::parse(text)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The values named `name`.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every pair, in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    fn admits(&self, name: &str, allowed: &Allowed) -> bool {
        self.values(name)
            .any(|v| allowed.admits(&Value::String(v.to_string())))
    }
}

/// What the gateway read of a body, for routing and for showing it to a person.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Form fields (urlencoded or multipart; a file part counts with its file name as value).
    Form(Fields),
    /// A JSON document (duplicate member names make it unreadable, since parsers differ on them).
    Json(Value),
    /// Too large, encoded, or of its declared type but unparsable.
    Unreadable,
    /// No body, or a body that is neither form nor JSON.
    Other,
}

/// How a request body will be read, from its head alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/x-www-form-urlencoded`.
    UrlEncoded,
    /// `multipart/form-data`.
    Multipart,
    /// `application/json` or `*/*+json`.
    Json,
    /// Anything else (JSON is still tried, for apps that parse JSON whatever the type says).
    Other,
    /// A `Content-Encoding` other than identity: the gateway does not decode it.
    Encoded,
}

impl BodyKind {
    /// Classifies a request by its `Content-Type` and `Content-Encoding`.
    pub fn of(headers: &HeaderMap) -> BodyKind {
        let encoded = headers
            .get_all(http::header::CONTENT_ENCODING)
            .iter()
            .any(|v| {
                v.to_str()
                    .map_or(true, |v| !v.trim().eq_ignore_ascii_case("identity"))
            });
        if encoded {
            return BodyKind::Encoded;
        }
        let media = content_type(headers).unwrap_or_default();
        let essence = media.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            BodyKind::UrlEncoded
        } else if essence.eq_ignore_ascii_case("multipart/form-data") {
            BodyKind::Multipart
        } else if essence.eq_ignore_ascii_case("application/json")
            || essence.to_ascii_lowercase().ends_with("+json")
        {
            BodyKind::Json
        } else {
            BodyKind::Other
        }
    }

    /// Whether a form field (`_method`) could be read from such a body.
    pub fn may_hold_form(self) -> bool {
        matches!(
            self,
            BodyKind::UrlEncoded | BodyKind::Multipart | BodyKind::Encoded
        )
    }
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// Most parts a multipart body may have before it counts as unreadable.
const MAX_PARTS: usize = 1000;

impl Body {
    /// Reads a complete body. `None` bytes means the body was larger than the gateway reads.
    pub async fn read(headers: &HeaderMap, bytes: Option<&Bytes>) -> Body {
        let Some(bytes) = bytes else {
            return Body::Unreadable;
        };
        match BodyKind::of(headers) {
            BodyKind::Encoded if bytes.is_empty() => Body::Other,
            BodyKind::Encoded => Body::Unreadable,
            BodyKind::UrlEncoded => Body::Form(Fields::urlencoded(bytes)),
            BodyKind::Multipart => {
                let boundary = content_type(headers).and_then(|ct| multer::parse_boundary(ct).ok());
                match boundary {
                    Some(b) => multipart(bytes.clone(), b).await,
                    None => Body::Unreadable,
                }
            }
            BodyKind::Json => match strict_json(bytes) {
                Some(v) => Body::Json(v),
                None if bytes.iter().all(u8::is_ascii_whitespace) => Body::Other,
                None => Body::Unreadable,
            },
            BodyKind::Other => strict_json(bytes).map_or(Body::Other, Body::Json),
        }
    }

    /// The form fields, when it is a form.
    pub fn form(&self) -> Option<&Fields> {
        match self {
            Body::Form(f) => Some(f),
            _ => None,
        }
    }
}

async fn multipart(bytes: Bytes, boundary: String) -> Body {
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut fields = Vec::new();
    loop {
        match parts.next_field().await {
            Ok(Some(field)) => {
                if fields.len() == MAX_PARTS {
                    return Body::Unreadable;
                }
                let name = field.name().unwrap_or("").to_string();
                let value = match field.file_name() {
                    Some(file) => file.to_string(),
                    None => match field.text().await {
                        Ok(text) => text,
                        Err(_) => return Body::Unreadable,
                    },
                };
                fields.push((name, value));
            }
            Ok(None) => return Body::Form(Fields(fields)),
            Err(_) => return Body::Unreadable,
        }
    }
}

/// JSON with duplicate member names refused: one parser keeps the first, another the last, so
/// such a document has no single reading.
fn strict_json(bytes: &[u8]) -> Option<Value> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue::deserialize(&mut de).ok()?.0;
    de.end().ok()?;
    Some(value)
}

struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value without duplicate member names")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(v) = map.next_value()?;
            if out.insert(key, v).is_some() {
                return Err(de::Error::custom("duplicate member name"));
            }
        }
        Ok(Value::Object(out))
    }
}

/// The methods a request stands for beyond its request line: override headers, `_method` in the
/// query, and `_method` in a form body. Upper-cased (frameworks upper-case them), deduplicated,
/// in that order; values that are not method tokens are ignored, since no framework acts on them.
pub fn overrides(headers: &HeaderMap, query: &Fields, body: Option<&Fields>) -> Vec<Method> {
    let from_headers = OVERRIDE_HEADERS
        .iter()
        .flat_map(|h| headers.get_all(*h).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    let from_fields = query
        .values(OVERRIDE_FIELD)
        .chain(body.into_iter().flat_map(|f| f.values(OVERRIDE_FIELD)));
    let mut out: Vec<Method> = Vec::new();
    for text in from_headers.chain(from_fields) {
        let upper = text.trim().to_ascii_uppercase();
        if let Ok(method) = Method::from_bytes(upper.as_bytes()) {
            if !upper.is_empty() && !out.contains(&method) {
                out.push(method);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("test header value"));
        }
        h
    }

    fn one_of(values: &[&str]) -> Allowed {
        Allowed::OneOf(
            values
                .iter()
                .map(|v| Value::String(v.to_string()))
                .collect(),
        )
    }

    #[tokio::test]
    async fn django_bulk_delete_is_a_form_field() {
        let h = headers(&[("content-type", "application/x-www-form-urlencoded")]);
        let body = Bytes::from_static(
            b"csrfmiddlewaretoken=x&action=delete_selected&_selected_action=1&_selected_action=2",
        );
        let read = Body::read(&h, Some(&body)).await;
        let mut c = Conditions::default();
        c.form.insert("action".into(), one_of(&["delete_selected"]));
        assert!(c.hold(&Fields::default(), &read, true));
        let other = Body::read(&h, Some(&Bytes::from_static(b"action=export"))).await;
        assert!(!c.hold(&Fields::default(), &other, true));
    }

    #[tokio::test]
    async fn multipart_fields_are_read() {
        let h = headers(&[("content-type", "multipart/form-data; boundary=XyZ")]);
        let body = Bytes::from_static(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\ndelete\r\n\
              --XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\n\r\nabc\r\n--XyZ--\r\n",
        );
        let read = Body::read(&h, Some(&body)).await;
        let fields = read.form().expect("a form");
        assert_eq!(fields.values("_method").collect::<Vec<_>>(), ["delete"]);
        assert_eq!(fields.values("f").collect::<Vec<_>>(), ["a.txt"]);
        let broken = Body::read(&h, Some(&Bytes::from_static(b"--XyZ\r\nnonsense"))).await;
        assert_eq!(broken, Body::Unreadable);
    }

    #[tokio::test]
    async fn unreadable_bodies_match_high_routes_only() {
        let mut c = Conditions::default();
        c.json.insert("/op".into(), Allowed::Any);
        for (h, body) in [
            (
                headers(&[
                    ("content-type", "application/json"),
                    ("content-encoding", "gzip"),
                ]),
                Some(Bytes::from_static(b"\x1f\x8b")),
            ),
            (
                headers(&[("content-type", "application/json")]),
                Some(Bytes::from_static(b"{nope")),
            ),
            (headers(&[("content-type", "application/json")]), None),
            (
                headers(&[("content-type", "application/json")]),
                Some(Bytes::from_static(br#"{"op":"delete","op":"noop"}"#)),
            ),
        ] {
            let read = Body::read(&h, body.as_ref()).await;
            assert_eq!(read, Body::Unreadable);
            assert!(c.hold(&Fields::default(), &read, true));
            assert!(!c.hold(&Fields::default(), &read, false));
        }
    }

    #[tokio::test]
    async fn json_pointers_and_scalars() {
        let h = headers(&[("content-type", "text/plain")]);
        let read = Body::read(
            &h,
            Some(&Bytes::from_static(br#"{"a":{"b":[1,"x"]},"n":5}"#)),
        )
        .await;
        let mut c = Conditions::default();
        c.json.insert("/a/b/1".into(), one_of(&["x"]));
        c.json.insert("/n".into(), one_of(&["5"]));
        assert!(c.hold(&Fields::default(), &read, false));
        c.json.insert("/missing".into(), Allowed::Any);
        assert!(!c.hold(&Fields::default(), &read, true));
    }

    #[test]
    fn query_conditions_see_every_occurrence() {
        let q = Fields::urlencoded(b"action=view&action=delete&x=%41");
        let mut c = Conditions::default();
        c.query.insert("action".into(), one_of(&["delete"]));
        c.query.insert("x".into(), one_of(&["A"]));
        assert!(c.hold(&q, &Body::Other, false));
        c.query.insert("y".into(), Allowed::Any);
        assert!(!c.hold(&q, &Body::Other, false));
    }

    #[test]
    fn overrides_come_from_headers_query_and_form() {
        let h = headers(&[
            ("x-http-method-override", "delete"),
            ("x-method-override", "PUT, DELETE"),
        ]);
        let q = Fields::urlencoded(b"_method=patch");
        let f = Fields::urlencoded(b"_method=Delete&_method=bad%20one");
        let got = overrides(&h, &q, Some(&f));
        assert_eq!(got, vec![Method::DELETE, Method::PUT, Method::PATCH]);
        assert!(overrides(&HeaderMap::new(), &Fields::default(), None).is_empty());
    }
}
