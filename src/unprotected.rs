//! `countersign audit unprotected FILE`: from an audit log written with `audit.passthrough: true`,
//! the mutating requests (methods other than GET, HEAD, OPTIONS) that went through low-risk routes,
//! grouped by method and path shape, each with a route snippet to paste into the config. This is
//! how an SRE finds the doors of a legacy app that the route table does not gate yet.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

/// One group of unprotected requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Request method.
    pub method: String,
    /// Path with numeric and uuid-like segments folded to `{id}`.
    pub shape: String,
    /// How many requests.
    pub count: usize,
    /// The low-risk route they went through.
    pub route: String,
}

/// Groups the passthrough records of mutating requests; lines that are not JSON audit records
/// are skipped (and counted in the second value).
pub fn groups(audit: &str) -> (Vec<Group>, usize) {
    let mut by_key: BTreeMap<(String, String), Group> = BTreeMap::new();
    let mut skipped = 0;
    for line in audit.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(record) = serde_json::from_str::<Value>(line) else {
            skipped += 1;
            continue;
        };
        if record["event"] != "passthrough" {
            continue;
        }
        let method = record["method"].as_str().unwrap_or("").to_ascii_uppercase();
        if matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS" | "") {
            continue;
        }
        let target = record["target"].as_str().unwrap_or("/");
        let shape = shape(target.split('?').next().unwrap_or("/"));
        let route = record["route"].as_str().unwrap_or("").to_string();
        by_key
            .entry((shape.clone(), method.clone()))
            .or_insert_with(|| Group {
                method,
                shape,
                count: 0,
                route,
            })
            .count += 1;
    }
    let mut groups: Vec<Group> = by_key.into_values().collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.shape.cmp(&b.shape)));
    (groups, skipped)
}

/// The report `audit unprotected` prints. `upstream_of` names a route's upstream (from
/// `--config`); without it the snippet says which one to fill in.
pub fn report(audit: &str, upstream_of: impl Fn(&str) -> Option<String>) -> String {
    let (groups, skipped) = groups(audit);
    let mut out = String::new();
    if groups.is_empty() {
        out.push_str("no mutating request went through a low-risk route\n");
    }
    for g in &groups {
        let _ = writeln!(
            out,
            "{:>6}  {:<7} {}   (via route {})",
            g.count, g.method, g.shape, g.route
        );
    }
    if !groups.is_empty() {
        out.push_str("\n# Route snippets (place them above the catch-all; review the risk):\n");
        for g in &groups {
            let upstream = upstream_of(&g.route)
                .unwrap_or_else(|| format!("UPSTREAM    # the upstream of route {}", g.route));
            let _ = writeln!(
                out,
                "  - name: {}\n    match: {{ methods: [{}], path: \"{}\" }}\n    upstream: {upstream}\n    risk: high",
                snippet_name(&g.method, &g.shape),
                g.method,
                g.shape,
            );
        }
    }
    if skipped > 0 {
        let _ = writeln!(
            out,
            "\n{skipped} lines were not audit records and were skipped"
        );
    }
    out
}

/// Folds segments that look like identifiers (numbers, UUIDs, long hex) to `{id}`; a path with
/// several gets `{id}`, `{id2}`, ...
pub fn shape(path: &str) -> String {
    let mut n = 0;
    let segments: Vec<String> = path
        .split('/')
        .map(|s| {
            if looks_like_id(s) {
                n += 1;
                if n == 1 {
                    "{id}".to_string()
                } else {
                    format!("{{id{n}}}")
                }
            } else {
                s.to_string()
            }
        })
        .collect();
    let joined = segments.join("/");
    if joined.is_empty() {
        "/".to_string()
    } else {
        joined
    }
}

fn looks_like_id(segment: &str) -> bool {
    let numeric = !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit());
    let hex_dashed = segment.len() >= 16
        && segment.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        && segment.bytes().any(|b| b.is_ascii_digit());
    numeric || hex_dashed
}

fn snippet_name(method: &str, shape: &str) -> String {
    let words: Vec<&str> = shape
        .split('/')
        .filter(|s| !s.is_empty() && !s.starts_with('{'))
        .collect();
    let tail = words
        .iter()
        .rev()
        .take(2)
        .rev()
        .copied()
        .collect::<Vec<_>>()
        .join("-");
    let name = format!("{}-{}", method.to_ascii_lowercase(), tail);
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_and_uuid_segments_fold_to_id() {
        assert_eq!(shape("/api/users/42"), "/api/users/{id}");
        assert_eq!(
            shape("/api/users/0192f5a0-7c1d-7000-8000-000000000000/keys/7"),
            "/api/users/{id}/keys/{id2}"
        );
        assert_eq!(shape("/admin/auth/user/"), "/admin/auth/user/");
        assert_eq!(shape("/v2/items"), "/v2/items");
    }

    #[test]
    fn mutating_passthrough_requests_are_grouped_with_snippets() {
        let audit = [
            r#"{"event":"passthrough","method":"DELETE","target":"/api/users/1","route":"default"}"#,
            r#"{"event":"passthrough","method":"DELETE","target":"/api/users/2?x=1","route":"default"}"#,
            r#"{"event":"passthrough","method":"GET","target":"/api/users/2","route":"default"}"#,
            r#"{"event":"accepted","method":"DELETE","target":"/api/users/3","route":"delete"}"#,
            r#"{"event":"passthrough","method":"POST","target":"/admin/auth/user/","route":"default"}"#,
            "not json",
        ]
        .join("\n");
        let (groups, skipped) = groups(&audit);
        assert_eq!(skipped, 1);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].method, "DELETE");
        assert_eq!(groups[0].shape, "/api/users/{id}");
        assert_eq!(groups[0].count, 2);
        let text = report(&audit, |route| {
            (route == "default").then(|| "legacy".to_string())
        });
        assert!(text.contains("upstream: legacy\n"), "{text}");
        assert!(
            text.contains("match: { methods: [DELETE], path: \"/api/users/{id}\" }"),
            "{text}"
        );
        assert!(text.contains("name: delete-api-users"), "{text}");
        assert!(text.contains("name: post-auth-user"), "{text}");
    }
}
