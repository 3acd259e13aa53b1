//! A real Chromium (Debian's `chromium`), headless, driven over the DevTools protocol with a small
//! client on a websocket: one page, commands answered by id, events ignored.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A headless Chromium with one page attached.
pub struct Chromium {
    child: Child,
    socket: Socket,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// Starts Chromium with a fresh profile and opens a blank page.
    pub async fn start() -> Chromium {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts (apt-get install chromium)");
        let stderr = child.stderr.take().expect("stderr piped");
        let mut lines = BufReader::new(stderr).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_string();
                }
            }
            panic!("chromium exited before listening for DevTools");
        })
        .await
        .expect("chromium listens for DevTools within 30 s");
        // Keep draining stderr so Chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("DevTools websocket");
        let mut chromium = Chromium {
            child,
            socket,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = chromium
            .browser_call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = chromium
            .browser_call(
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        chromium.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        chromium.call("Page.enable", json!({})).await;
        chromium.call("Runtime.enable", json!({})).await;
        chromium
    }

    async fn send(&mut self, method: &str, params: Value, session: Option<String>) -> Value {
        match self.try_send(method, params, session).await {
            Ok(result) => result,
            Err(error) => panic!("{method} failed: {error}"),
        }
    }

    async fn try_send(
        &mut self,
        method: &str,
        params: Value,
        session: Option<String>,
    ) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = Value::String(session);
        }
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("DevTools send");
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no DevTools answer to {method} within 30 s"))
                .expect("DevTools connection open")
                .expect("DevTools frame");
            let Message::Text(text) = frame else {
                continue;
            };
            let value: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if value["id"].as_u64() == Some(id) {
                if let Some(error) = value.get("error") {
                    return Err(error.clone());
                }
                return Ok(value["result"].clone());
            }
        }
    }

    async fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None).await
    }

    /// Calls a DevTools method on the page.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(method, params, Some(session)).await
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value; `null`
    /// when the page navigated away while it ran.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let session = self.session.clone();
        let params =
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        match self
            .try_send("Runtime.evaluate", params, Some(session))
            .await
        {
            Ok(result) => result["result"]["value"].clone(),
            Err(error) => {
                let message = error["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains("navigated") || message.contains("context"),
                    "Runtime.evaluate failed: {error}"
                );
                Value::Null
            }
        }
    }

    /// Opens `url` in the page.
    pub async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
        self.wait_for("document.readyState === 'complete'").await;
    }

    /// Waits until `condition` (a JS expression) is true in the page, for up to 20 s.
    pub async fn wait_for(&mut self, condition: &str) {
        let started = std::time::Instant::now();
        let expression = format!(
            "(function(){{ try {{ return !!({condition}); }} catch (e) {{ return false; }} }})()"
        );
        loop {
            if self.eval(&expression).await == Value::Bool(true) {
                return;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let url = self.eval("location.href").await;
                let text = self
                    .eval("document.body ? document.body.innerText : ''")
                    .await;
                panic!("timed out waiting for {condition}; page {url}: {text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the element `selector` names.
    pub async fn click(&mut self, selector: &str) {
        let clicked = self
            .eval(&format!(
                "(function(){{ var e = document.querySelector({s}); if (!e) return false; e.click(); return true; }})()",
                s = Value::String(selector.to_string())
            ))
            .await;
        assert_eq!(clicked, Value::Bool(true), "no element {selector} to click");
    }

    /// Sets the files of the file input `selector`.
    pub async fn set_files(&mut self, selector: &str, paths: &[&str]) {
        let found = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": format!("document.querySelector({})", Value::String(selector.to_string())) }),
            )
            .await;
        let object_id = found["result"]["objectId"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {selector}"))
            .to_string();
        self.call(
            "DOM.setFileInputFiles",
            json!({ "files": paths, "objectId": object_id }),
        )
        .await;
    }

    /// The page's address.
    pub async fn url(&mut self) -> String {
        self.eval("location.href")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page's text.
    pub async fn text(&mut self) -> String {
        self.eval("document.body ? document.body.innerText : ''")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Enables WebAuthn virtual authenticators on the page and adds one (CTAP2, internal
    /// transport, resident keys; with or without user verification); returns its id.
    pub async fn add_authenticator(&mut self, user_verification: bool) -> String {
        self.call("WebAuthn.enable", json!({ "enableUI": false }))
            .await;
        let added = self
            .call(
                "WebAuthn.addVirtualAuthenticator",
                json!({ "options": {
                    "protocol": "ctap2",
                    "transport": "internal",
                    "hasResidentKey": true,
                    "hasUserVerification": user_verification,
                    "isUserVerified": user_verification,
                    "automaticPresenceSimulation": true,
                }}),
            )
            .await;
        added["authenticatorId"]
            .as_str()
            .expect("authenticatorId")
            .to_string()
    }

    /// Removes a virtual authenticator.
    pub async fn remove_authenticator(&mut self, id: &str) {
        self.call(
            "WebAuthn.removeVirtualAuthenticator",
            json!({ "authenticatorId": id }),
        )
        .await;
    }

    /// Sets a cookie in the browser.
    pub async fn set_cookie(&mut self, name: &str, value: &str, url: &str) {
        self.call(
            "Network.setCookie",
            json!({ "name": name, "value": value, "url": url }),
        )
        .await;
    }

    /// The cookies the browser holds for `url`.
    pub async fn cookies(&mut self, url: &str) -> Vec<(String, String)> {
        let got = self
            .call("Network.getCookies", json!({ "urls": [url] }))
            .await;
        got["cookies"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        (
                            c["name"].as_str().unwrap_or_default().to_string(),
                            c["value"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
