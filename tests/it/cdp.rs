//! A headless Chromium driven over the DevTools protocol: navigate, evaluate JavaScript in
//! the page, wait for a condition, take a screenshot. Just the four calls the dashboard
//! tests need; the browser dies with this value.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The Chromium to drive: `$ORRERY_CHROMIUM` or `chromium` on PATH.
fn chromium() -> String {
    std::env::var("ORRERY_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// One browser with one page.
pub struct Browser {
    _child: tokio::process::Child,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium (1280×900) and attaches to its first page.
    pub async fn start() -> Self {
        let profile = tempfile::tempdir().unwrap();
        let child = tokio::process::Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1280,900",
            ])
            // Port 0: Chromium picks a free one and writes it to DevToolsActivePort. A port
            // picked here could be taken by a parallel test before Chromium binds it, and then
            // DevTools never answers.
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium (install Debian's chromium or set ORRERY_CHROMIUM)");
        let http = reqwest::Client::new();
        let started = Instant::now();
        let active = profile.path().join("DevToolsActivePort");
        let page_ws = loop {
            let port: Option<u16> = std::fs::read_to_string(&active)
                .ok()
                .and_then(|s| s.lines().next()?.trim().parse().ok());
            let Some(port) = port else {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "chromium did not write its DevTools port"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let pages: Option<Vec<Value>> = match http
                .get(format!("http://127.0.0.1:{port}/json/list"))
                .send()
                .await
            {
                Ok(res) => res.json().await.ok(),
                Err(_) => None,
            };
            let found = pages.and_then(|pages| {
                pages
                    .into_iter()
                    .find(|p| p["type"] == "page")
                    .and_then(|p| p["webSocketDebuggerUrl"].as_str().map(str::to_owned))
            });
            if let Some(url) = found {
                break url;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromium's DevTools did not answer"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(page_ws).await.unwrap();
        let mut browser = Self {
            _child: child,
            ws,
            next_id: 0,
            _profile: profile,
        };
        browser.call("Page.enable", json!({})).await;
        browser.call("Runtime.enable", json!({})).await;
        browser
    }

    /// Sends one DevTools command and returns its result (events in between are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let v = self.call_raw(method, params).await;
        assert!(v.get("error").is_none(), "{method}: {v}");
        v["result"].clone()
    }

    /// Sends one DevTools command and returns its whole answer, an error included.
    async fn call_raw(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer from chromium"))
                .expect("devtools connection closed")
                .unwrap();
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                return v;
            }
        }
    }

    /// Runs `script` in every document the page loads from now on, before its own scripts.
    pub async fn on_new_document(&mut self, script: &str) {
        self.call(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({"source": script}),
        )
        .await;
    }

    /// Opens `url` in the page.
    pub async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
    }

    /// Evaluates `expression` in the page (promises awaited) and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "`{expression}` threw: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy; panics with `what` and the page's text after
    /// `limit`.
    pub async fn wait_for(&mut self, expression: &str, what: &str, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let answer = self
                .call_raw(
                    "Runtime.evaluate",
                    json!({"expression": expression, "returnByValue": true,
                           "awaitPromise": true}),
                )
                .await;
            // A page that navigates (a reload, a sign-in redirect) while it is asked
            // refuses the question; ask the new page.
            let navigated = answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("navigated or closed") || m.contains("context"));
            assert!(
                navigated || answer.get("error").is_none(),
                "Runtime.evaluate: {answer}"
            );
            let v = &answer["result"];
            let value = &v["result"]["value"];
            let truthy = !(value.is_null()
                || *value == json!(false)
                || *value == json!("")
                || *value == json!(0));
            if v.get("exceptionDetails").is_none() && truthy {
                return value.clone();
            }
            if started.elapsed() > limit {
                let text = self.eval("document.body.innerText").await;
                panic!("timed out waiting for {what}; the page reads:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the page to `path`.
    pub async fn screenshot(&mut self, path: &std::path::Path) {
        use base64::Engine as _;
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}
