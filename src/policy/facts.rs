//! A confirmed request's facts as Cedar values: principal = the subject with its token claims and
//! groups, action = the route, resource = the target with its path parameters, context = method,
//! query, body fields, client IP, time, device, session and risk facts.

use std::collections::{HashMap, HashSet};

use cedar_policy::RestrictedExpression as Expr;
use serde_json::{Map, Value};

use super::cedar::{uid, Kind, Query, Reads};
use super::Facts;

/// Deepest JSON nesting turned into Cedar records; deeper values are left out.
const MAX_DEPTH: usize = 16;

/// A field the query or the form repeats with different values (its name, at most 64
/// characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {0:?} repeated with different values")]
pub struct Ambiguous(String);

/// The Cedar query for `facts`, with the attributes `reads` says a policy can read; `Err` when
/// the query or form repeats a field with different values, which no policy can decide on (the
/// upstream may read either).
pub fn query(
    facts: &Facts<'_>,
    reads: &Reads,
    groups_claim: &str,
    ip_changed: bool,
    network: Option<&str>,
    now: i64,
) -> Result<Query, Ambiguous> {
    let session = facts.session;
    let claims = session.claims.as_deref();
    let groups = crate::approvals::groups(session, groups_claim);
    let principal = match &session.subject {
        Some(sub) => {
            let mut attrs = HashMap::new();
            if reads.attr("sub") {
                attrs.insert("sub".to_string(), Expr::new_string(sub.clone()));
            }
            if reads.attr("groups") {
                let names = groups.iter().cloned().map(Expr::new_string);
                attrs.insert("groups".to_string(), Expr::new_set(names));
            }
            if reads.attr("claims") {
                let claim_record = claims.and_then(|c| record(c.iter(), 0));
                attrs.insert("claims".to_string(), claim_record.unwrap_or_else(empty));
            }
            let parents: HashSet<_> = groups.iter().map(|g| uid(Kind::Group, g)).collect();
            (uid(Kind::User, sub), attrs, parents)
        }
        // A session that names no subject is its own principal.
        None => (
            uid(Kind::Session, &session.id_hash()),
            HashMap::new(),
            HashSet::new(),
        ),
    };

    let (path, query_text) = facts.target.split_once('?').unwrap_or((facts.target, ""));
    let mut resource_attrs = HashMap::new();
    if reads.attr("path") {
        resource_attrs.insert("path".to_string(), Expr::new_string(path.to_string()));
    }
    if reads.attr("params") {
        let values = params(facts.route.template.as_str(), path);
        let record = Expr::new_record(values.into_iter().map(|(k, v)| (k, Expr::new_string(v))));
        resource_attrs.insert("params".to_string(), record.unwrap_or_else(|_| empty()));
    }

    // A field repeated with different values is refused whether or not a policy reads it.
    let query = fields(query_text.as_bytes())?;
    let body = body(facts, reads.context("body"))?;
    let mut context: Vec<(String, Expr)> = Vec::new();
    let mut put = |key: &str, value: &dyn Fn() -> Expr| {
        if reads.context(key) {
            context.push((key.to_string(), value()));
        }
    };
    put("method", &|| Expr::new_string(facts.method.to_string()));
    put("target", &|| Expr::new_string(facts.target.to_string()));
    put("device", &|| Expr::new_string(facts.device.to_string()));
    put("time", &|| time(now));
    if let Some(ip) = facts.client_ip {
        put("client_ip", &|| Expr::new_ip(ip.to_string()));
    }
    put("session", &|| session_facts(facts, claims, now));
    put("risk", &|| risk_facts(facts, ip_changed, network));
    // An approval's execution: `context.approval.id` and `context.approval.approvers`.
    if let Some((id, approvers)) = facts.approval {
        put("approval", &|| {
            let approval = vec![
                ("id".to_string(), Expr::new_string(id.to_string())),
                (
                    "approvers".to_string(),
                    Expr::new_set(approvers.iter().cloned().map(Expr::new_string)),
                ),
            ];
            Expr::new_record(approval).unwrap_or_else(|_| empty())
        });
    }
    if reads.context("query") {
        context.push(("query".to_string(), query));
    }
    if reads.context("body") {
        context.push(("body".to_string(), body));
    }

    Ok(Query {
        principal,
        action: uid(Kind::Action, &facts.route.name),
        resource: (uid(Kind::Target, path), resource_attrs),
        context,
    })
}

/// `context.session`: hash, age, and the token's `auth_time`, `acr` and `amr` when it has them.
fn session_facts(facts: &Facts<'_>, claims: Option<&Map<String, Value>>, now: i64) -> Expr {
    let session = facts.session;
    let mut session_facts = vec![("hash".to_string(), Expr::new_string(session.id_hash()))];
    let iat = claims.and_then(|c| c.get("iat")).and_then(Value::as_i64);
    let started = iat.or(facts.origin.map(|o| o.since as i64));
    if let Some(started) = started {
        session_facts.push(("age".to_string(), Expr::new_long((now - started).max(0))));
    }
    if let Some(t) = claims
        .and_then(|c| c.get("auth_time"))
        .and_then(Value::as_i64)
    {
        session_facts.push(("auth_time".to_string(), Expr::new_long(t)));
        session_facts.push(("auth_age".to_string(), Expr::new_long((now - t).max(0))));
    }
    if let Some(acr) = claims.and_then(|c| c.get("acr")).and_then(Value::as_str) {
        session_facts.push(("acr".to_string(), Expr::new_string(acr.to_string())));
    }
    let amr = claims
        .and_then(|c| c.get("amr"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str())
                .map(|m| Expr::new_string(m.to_string()))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    session_facts.push(("amr".to_string(), Expr::new_set(amr)));
    Expr::new_record(session_facts).unwrap_or_else(|_| empty())
}

/// `context.risk`: whether the network changed, the current one and the one first bound.
fn risk_facts(facts: &Facts<'_>, ip_changed: bool, network: Option<&str>) -> Expr {
    let mut risk = vec![("ip_changed".to_string(), Expr::new_bool(ip_changed))];
    if let Some(network) = network {
        risk.push(("network".to_string(), Expr::new_string(network.to_string())));
    }
    if let Some(origin) = facts.origin {
        risk.push((
            "bound_network".to_string(),
            Expr::new_string(origin.network.clone()),
        ));
    }
    Expr::new_record(risk).unwrap_or_else(|_| empty())
}

fn empty() -> Expr {
    Expr::new_record(Vec::new()).expect("an empty record has no duplicate keys")
}

/// `context.time`: `unix`, and the UTC `hour` (0–23), `minute` and ISO `weekday` (1 = Monday …
/// 7 = Sunday), so working hours are one comparison. (No `datetime` value: Cedar parses its
/// text with a regex on every request, a third of the evaluation's cost.)
fn time(now: i64) -> Expr {
    let days = now.div_euclid(86_400);
    let secs = now.rem_euclid(86_400);
    let weekday = (days + 3).rem_euclid(7) + 1; // 1970-01-01 was a Thursday.
    Expr::new_record([
        ("unix".to_string(), Expr::new_long(now)),
        ("hour".to_string(), Expr::new_long(secs / 3600)),
        ("minute".to_string(), Expr::new_long(secs % 3600 / 60)),
        ("weekday".to_string(), Expr::new_long(weekday)),
    ])
    .unwrap_or_else(|_| empty())
}

/// The body's fields: a JSON object, or an `application/x-www-form-urlencoded` form; an empty
/// record otherwise. With `build: false` (no policy reads the body) a form is only checked for
/// ambiguous fields.
fn body(facts: &Facts<'_>, build: bool) -> Result<Expr, Ambiguous> {
    let media = facts
        .content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if media == "application/x-www-form-urlencoded" {
        return fields(facts.body);
    }
    if build && (media == "application/json" || media.ends_with("+json")) {
        if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(facts.body) {
            return Ok(record(map.iter(), 0).unwrap_or_else(empty));
        }
    }
    Ok(empty())
}

/// URL-encoded name=value pairs as a record of strings. A name given twice with one value is
/// that value; with different values it is ambiguous.
fn fields(text: &[u8]) -> Result<Expr, Ambiguous> {
    let mut seen: HashMap<String, String> = HashMap::new();
    for (name, value) in form_urlencoded::parse(text) {
        match seen.get(name.as_ref()) {
            Some(earlier) if *earlier != value => {
                // The name is client data: bounded before it reaches a log line.
                let shown: String = name.chars().take(64).collect();
                return Err(Ambiguous(shown));
            }
            Some(_) => {}
            None => {
                seen.insert(name.into_owned(), value.into_owned());
            }
        }
    }
    Ok(
        Expr::new_record(seen.into_iter().map(|(k, v)| (k, Expr::new_string(v))))
            .unwrap_or_else(|_| empty()),
    )
}

/// A JSON object as a Cedar record. Cedar has no floats and no null: those values are left out
/// (a policy testing them sees the attribute as absent).
fn record<'a>(
    entries: impl Iterator<Item = (&'a String, &'a Value)>,
    depth: usize,
) -> Option<Expr> {
    let pairs: Vec<(String, Expr)> = entries
        .filter_map(|(k, v)| Some((k.clone(), value(v, depth + 1)?)))
        .collect();
    Expr::new_record(pairs).ok()
}

fn value(v: &Value, depth: usize) -> Option<Expr> {
    if depth > MAX_DEPTH {
        return None;
    }
    match v {
        Value::Null => None,
        Value::Bool(b) => Some(Expr::new_bool(*b)),
        Value::Number(n) => n.as_i64().map(Expr::new_long),
        Value::String(s) => Some(Expr::new_string(s.clone())),
        Value::Array(items) => Some(Expr::new_set(
            items.iter().filter_map(|i| value(i, depth + 1)),
        )),
        Value::Object(map) => record(map.iter(), depth),
    }
}

/// The path parameters of `template` in `path`, percent-decoded, read from the canonical form of
/// the path (as a normalising upstream reads it): `{id}` → one segment, `{*rest}` → the rest.
pub fn params(template: &str, path: &str) -> Vec<(String, String)> {
    let canonical = crate::routes::canonical_path(path);
    let mut values = canonical.trim_start_matches('/').split('/');
    let mut out = Vec::new();
    for part in template.trim_start_matches('/').split('/') {
        let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) else {
            if values.next().is_none() {
                break;
            }
            continue;
        };
        if let Some(name) = inner.strip_prefix('*') {
            let rest: Vec<&str> = values.by_ref().collect();
            out.push((name.to_string(), decode(&rest.join("/"))));
            break;
        }
        match values.next() {
            Some(v) => out.push((inner.to_string(), decode(v))),
            None => break,
        }
    }
    out
}

fn decode(text: &str) -> String {
    percent_decode(text.as_bytes())
}

fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_follow_the_template_on_the_canonical_path() {
        assert_eq!(
            params("/api/accounts/{id}", "/api/accounts/%34%32"),
            vec![("id".to_string(), "42".to_string())]
        );
        assert_eq!(
            params("/api/{kind}/{*rest}", "/api/deploys/7/release"),
            vec![
                ("kind".to_string(), "deploys".to_string()),
                ("rest".to_string(), "7/release".to_string())
            ]
        );
    }
}
