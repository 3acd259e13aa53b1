//! The pages a person sees on the confirmation origin: the action to confirm, and refusals. Each is
//! self-contained (no external resource, no inline script: the script is `/confirm/app.js` on the
//! same origin), so `Content-Security-Policy: default-src 'self'` holds with nothing relaxed.

use crate::reason::Reason;

use super::hold::Hold;

/// Headers of every page and script the confirmation origin serves. Forms post to the page's own
/// origin only, and Cancel's redirect may lead back to `app_origin` (CSP 3 `form-action` is
/// enforced on redirects too).
pub fn headers(content_type: &'static str, app_origin: &str) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", content_type.to_string()),
        ("cache-control", "no-store".to_string()),
        (
            "content-security-policy",
            format!(
                "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
                 form-action 'self' {app_origin}"
            ),
        ),
        ("referrer-policy", "no-referrer".to_string()),
        ("x-content-type-options", "nosniff".to_string()),
        ("x-frame-options", "DENY".to_string()),
    ]
}

/// One field of the held request's body, as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Field name (a JSON pointer for JSON bodies).
    pub name: String,
    /// Its value, or a mask when the name looks secret.
    pub value: String,
}

/// Field names whose values are never shown.
const SECRET_WORDS: [&str; 4] = ["password", "secret", "token", "key"];

fn shown(name: &str, value: String) -> Field {
    let lower = name.to_ascii_lowercase();
    let value = if SECRET_WORDS.iter().any(|w| lower.contains(w)) {
        "••••••".to_string()
    } else if value.chars().count() > 200 {
        format!("{}…", value.chars().take(200).collect::<String>())
    } else {
        value
    };
    Field {
        name: name.to_string(),
        value,
    }
}

/// The fields of a form (`application/x-www-form-urlencoded`, `multipart/form-data`) or JSON body,
/// secret-looking values masked; files are shown by name and size.
pub async fn fields(content_type: Option<&str>, body: &[u8]) -> Vec<Field> {
    let Some(content_type) = content_type else {
        return Vec::new();
    };
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/x-www-form-urlencoded" => form_urlencoded::parse(body)
            .map(|(n, v)| shown(n.as_ref(), v.into_owned()))
            .collect(),
        "multipart/form-data" => multipart(content_type, body).await,
        m if m == "application/json" || m.ends_with("+json") => {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
                return Vec::new();
            };
            let mut out = Vec::new();
            flatten("", &value, &mut out);
            out
        }
        _ => Vec::new(),
    }
}

fn flatten(pointer: &str, value: &serde_json::Value, out: &mut Vec<Field>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let escaped = k.replace('~', "~0").replace('/', "~1");
                flatten(&format!("{pointer}/{escaped}"), v, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{pointer}/{i}"), v, out);
            }
        }
        Value::String(s) => out.push(shown(pointer, s.clone())),
        other => out.push(shown(pointer, other.to_string())),
    }
}

async fn multipart(content_type: &str, body: &[u8]) -> Vec<Field> {
    let Ok(boundary) = multer::parse_boundary(content_type) else {
        return Vec::new();
    };
    let stream = futures_util::stream::once(std::future::ready(Ok::<_, std::io::Error>(
        bytes::Bytes::copy_from_slice(body),
    )));
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut out = Vec::new();
    while let Ok(Some(field)) = parts.next_field().await {
        let name = field.name().unwrap_or("").to_string();
        let file = field.file_name().map(str::to_string);
        let Ok(data) = field.bytes().await else {
            break;
        };
        out.push(match file {
            Some(file) => Field {
                name,
                value: format!("file {file} ({} bytes)", data.len()),
            },
            None => shown(&name, String::from_utf8_lossy(&data).into_owned()),
        });
    }
    out
}

/// HTML-escapes text for element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str =
    "body{font-family:system-ui,sans-serif;max-width:40rem;margin:0 auto;padding:1rem;\
line-height:1.4;color:#111}h1{font-size:1.4rem}table{border-collapse:collapse;width:100%}\
td,th{border-bottom:1px solid #ddd;padding:.3rem;text-align:left;vertical-align:top;\
word-break:break-all}.actions{display:flex;gap:1rem;margin-top:1.5rem}button{font-size:1.1rem;\
padding:.7rem 1.2rem;border-radius:.4rem;border:1px solid #555;flex:1}#confirm{background:#0a5;\
color:#fff}#status{margin-top:1rem;min-height:1.5rem}.url{font-family:monospace}";

/// A page: `body` under `title`, with the stylesheet of the confirmation origin.
pub(super) fn document(title: &str, body: &str) -> Vec<u8> {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{title}</title><link rel=\"stylesheet\" href=\"/confirm/app.css\"></head><body>{body}</body></html>",
        title = escape(title)
    )
    .into_bytes()
}

/// The stylesheet the pages link (`/confirm/app.css`).
pub fn stylesheet() -> &'static str {
    STYLE
}

/// The page that shows a held action with Confirm and Cancel.
pub fn confirm(hold_id: &str, hold: &Hold, fields: &[Field], seconds_left: u64) -> Vec<u8> {
    let rows: String = fields
        .iter()
        .map(|f| {
            format!(
                "<tr><th>{}</th><td>{}</td></tr>",
                escape(&f.name),
                escape(&f.value)
            )
        })
        .collect();
    let fields = if rows.is_empty() {
        String::new()
    } else {
        format!("<h2>With these values</h2><table>{rows}</table>")
    };
    let id = escape(hold_id);
    let body = format!(
        "<h1>Confirm this action</h1>\
<p>The admin application asks you to confirm, with your passkey, that you want to do this:</p>\
<table><tr><th>Action</th><td>{route}</td></tr><tr><th>Method</th><td>{method}</td></tr>\
<tr><th>Address</th><td class=\"url\">{url}</td></tr></table>{fields}\
<p>Time left: <span id=\"left\" data-seconds=\"{seconds_left}\">{seconds_left} s</span></p>\
<div class=\"actions\"><button id=\"confirm\" type=\"button\" data-hold=\"{id}\">Confirm</button>\
<form method=\"post\" action=\"/confirm/{id}/cancel\" style=\"flex:1;display:flex\">\
<button id=\"cancel\" type=\"submit\">Cancel</button></form></div>\
<p id=\"status\" role=\"status\"></p>\
<p><small>If you did not ask for this, press Cancel. Nothing happens until you confirm.</small></p>\
<script src=\"/confirm/app.js\"></script>",
        route = escape(&hold.route),
        method = escape(&hold.method),
        url = escape(&hold.url),
    );
    document("Confirm this action", &body)
}

/// A refusal, for a person: what happened and what to do now.
pub fn refusal(reason: Reason, back: Option<&str>) -> Vec<u8> {
    let (title, advice) = match reason {
        Reason::NonceExpired => (
            "This confirmation has expired",
            "It was not used in time, or it was already finished. Go back to the application and \
             start the action again.",
        ),
        Reason::SessionMismatch => (
            "This confirmation belongs to another session",
            "It was started in another browser session. Start the action again from the \
             application in this browser.",
        ),
        Reason::DeviceMismatch => (
            "This passkey is not the one of this session",
            "This session already confirmed with another passkey. Use that one, or sign in again \
             to confirm with this one.",
        ),
        Reason::DeviceNotEnrolled => (
            "This passkey is not enrolled for you",
            "Only devices enrolled for your account confirm actions here. Enrol this passkey with \
             an invite code from your administrator, or use a device you enrolled before.",
        ),
        Reason::NoSubject => (
            "This session does not say who you are",
            "Actions here are confirmed only by devices enrolled for a person, and this session \
             names none. Ask your administrator.",
        ),
        Reason::UserVerificationRequired => (
            "Your passkey did not verify you",
            "This action needs your passkey to check that it is you (PIN, fingerprint or face). \
             Start the action again and complete that step.",
        ),
        Reason::NonceReplay | Reason::JtiReplay => (
            "This confirmation was already used",
            "A confirmation works once. Nothing was done twice. Start the action again if needed.",
        ),
        Reason::Cancelled => (
            "Cancelled",
            "Nothing was done. You can close this page or go back to the application.",
        ),
        Reason::NoSession | Reason::InvalidSession | Reason::BearerNotAllowed => (
            "Sign in first",
            "This action needs a signed-in session of the application, and this request carries \
             none that is valid. Sign in to the application, then start the action again.",
        ),
        Reason::SessionRevoked => (
            "This session was ended",
            "An administrator ended this session, so it cannot confirm actions any more. Sign in \
             again, then start the action again.",
        ),
        Reason::PolicyDenied | Reason::PolicyError => (
            "The policy does not allow this action",
            "Your confirmation was checked, and the organisation's policy does not allow this \
             action for you now. Nothing was done. Ask your administrator if you think it should.",
        ),
        Reason::RiskDenied => (
            "This session moved to another network",
            "This session confirmed actions from another network before, so the action was not \
             done. Sign in again from this network, then start the action again.",
        ),
        Reason::StepUpRequired => (
            "Sign in again to do this",
            "This action needs a stronger or more recent sign-in than this session has. Sign in \
             again, then start the action again.",
        ),
        Reason::TooManyChallenges => (
            "Too many confirmations are waiting",
            "This session has started more actions than it has confirmed. Finish or cancel them, \
             or wait a minute, then start this one again.",
        ),
        Reason::StoreUnavailable | Reason::AuditUnavailable => (
            "Confirmations are paused",
            "The gateway cannot record confirmations right now, so nothing was done. Try again \
             in a minute.",
        ),
        _ => (
            "The confirmation did not succeed",
            "Nothing was done. Go back to the application and start the action again.",
        ),
    };
    let back = back
        .map(|url| {
            format!(
                "<p><a href=\"{}\">Back to the application</a></p>",
                escape(url)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<h1>{}</h1><p>{}</p><p><small>Reason: <code id=\"reason\">{}</code></small></p>{back}",
        escape(title),
        escape(advice),
        reason.as_str()
    );
    document(title, &body)
}

/// The confirmation page's script: runs the WebAuthn ceremony (W3C Web Authentication Level 3)
/// with the options the gateway sends and posts the result back; then follows the gateway's answer.
pub const SCRIPT: &str = r#""use strict";
(function () {
  var button = document.getElementById("confirm");
  var status = document.getElementById("status");
  var left = document.getElementById("left");
  if (!button) { return; }
  var hold = button.getAttribute("data-hold");
  var seconds = parseInt(left.getAttribute("data-seconds"), 10);
  var timer = setInterval(function () {
    seconds -= 1;
    if (seconds <= 0) {
      clearInterval(timer);
      left.textContent = "expired";
      button.disabled = true;
      status.textContent = "This confirmation has expired. Go back and start the action again.";
      return;
    }
    left.textContent = seconds + " s";
  }, 1000);
  function b64(buf) {
    var s = "", bytes = new Uint8Array(buf);
    for (var i = 0; i < bytes.length; i++) { s += String.fromCharCode(bytes[i]); }
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function unb64(s) {
    s = s.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) { s += "="; }
    var bin = atob(s), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) { out[i] = bin.charCodeAt(i); }
    return out.buffer;
  }
  function post(path, body) {
    return fetch("/confirm/" + hold + path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body || {}),
      credentials: "omit"
    }).then(function (r) { return r.json(); });
  }
  function follow(answer) {
    if (answer.next) { window.location.assign(answer.next); return true; }
    return false;
  }
  button.addEventListener("click", function () {
    button.disabled = true;
    status.textContent = "Waiting for your passkey…";
    post("/begin").then(function (answer) {
      if (follow(answer)) { return; }
      var pk = answer.options.publicKey;
      pk.challenge = unb64(pk.challenge);
      if (answer.mode === "create") {
        pk.user.id = unb64(pk.user.id);
        (pk.excludeCredentials || []).forEach(function (c) { c.id = unb64(c.id); });
        return navigator.credentials.create({ publicKey: pk }).then(function (cred) {
          return post("/finish", {
            id: cred.id, rawId: b64(cred.rawId), type: cred.type, extensions: {},
            response: {
              attestationObject: b64(cred.response.attestationObject),
              clientDataJSON: b64(cred.response.clientDataJSON)
            }
          });
        });
      }
      (pk.allowCredentials || []).forEach(function (c) { c.id = unb64(c.id); });
      return navigator.credentials.get({ publicKey: pk }).then(function (cred) {
        return post("/finish", {
          id: cred.id, rawId: b64(cred.rawId), type: cred.type, extensions: {},
          response: {
            authenticatorData: b64(cred.response.authenticatorData),
            clientDataJSON: b64(cred.response.clientDataJSON),
            signature: b64(cred.response.signature),
            userHandle: cred.response.userHandle ? b64(cred.response.userHandle) : null
          }
        });
      });
    }).then(function (answer) {
      if (answer && !follow(answer)) {
        status.textContent = "The confirmation did not succeed. Go back and start again.";
      }
    }).catch(function () {
      button.disabled = false;
      status.textContent = "The passkey step was cancelled or failed. Press Confirm to try again, or Cancel.";
    });
  });
  button.setAttribute("data-ready", "1");
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn secret_looking_fields_are_masked_in_forms_json_and_multipart() {
        let form = b"user=alice&new_password=hunter2&api_key=abc&csrfmiddlewaretoken=t&note=hi";
        let shown = fields(Some("application/x-www-form-urlencoded"), form).await;
        let values: Vec<_> = shown
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_str()))
            .collect();
        assert_eq!(
            values,
            [
                ("user", "alice"),
                ("new_password", "••••••"),
                ("api_key", "••••••"),
                ("csrfmiddlewaretoken", "••••••"),
                ("note", "hi"),
            ]
        );
        let json = br#"{"user":{"id":7,"Secret":"s"},"tags":["a"]}"#;
        let shown = fields(Some("application/json; charset=utf-8"), json).await;
        // Member order depends on serde_json's map features; compare sorted.
        let mut values: Vec<_> = shown
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_str()))
            .collect();
        values.sort();
        assert_eq!(
            values,
            [
                ("/tags/0", "a"),
                ("/user/Secret", "••••••"),
                ("/user/id", "7")
            ]
        );
        let multipart = b"--b\r\nContent-Disposition: form-data; name=\"token\"\r\n\r\nxyz\r\n\
--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\r\n12345\r\n--b--\r\n";
        let shown = fields(Some("multipart/form-data; boundary=b"), multipart).await;
        let values: Vec<_> = shown
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_str()))
            .collect();
        assert_eq!(
            values,
            [("token", "••••••"), ("file", "file a.bin (5 bytes)")]
        );
        assert!(fields(None, b"a=b").await.is_empty());
    }

    #[test]
    fn pages_carry_the_isolation_headers() {
        let h = headers("text/html; charset=utf-8", "https://app.example");
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert!(get("content-security-policy").is_some_and(|v| v
            .starts_with("default-src 'self'")
            && v.contains("frame-ancestors 'none'")));
        assert_eq!(get("referrer-policy"), Some("no-referrer"));
        assert_eq!(get("cache-control"), Some("no-store"));
    }

    #[test]
    fn pages_escape_what_they_show_and_load_nothing_external() {
        let page =
            String::from_utf8(refusal(Reason::Cancelled, Some("http://a/\"><script>"))).unwrap();
        assert!(!page.contains("\"><script>"));
        assert!(page.contains("cancelled"));
        assert!(
            !page.contains("http://")
                || page.contains("href=\"http://a/&quot;&gt;&lt;script&gt;\"")
        );
        assert!(!page.contains("<script>"));
        assert!(!page.contains("https://"));
    }
}
