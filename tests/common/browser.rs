//! Headless Chromium (Debian's `chromium`, installed by scripts/test) driven
//! over the DevTools protocol: one browser per test, one DevTools connection
//! per page.

#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use crate::common::WAIT;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A running headless browser.
pub struct Browser {
    process: tokio::process::Child,
    endpoint: String,
    profile: std::path::PathBuf,
}

impl Browser {
    /// Starts Chromium with a fresh profile and the flags a closed network needs.
    pub async fn start() -> Browser {
        let profile = std::env::temp_dir().join(format!("presence-chromium-{}", presence_model::time::now_us()));
        let mut process = tokio::process::Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let mut err = BufReader::new(process.stderr.take().expect("stderr")).lines();
        let endpoint = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = err.next_line().await {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    return url.trim().to_string();
                }
            }
            panic!("chromium printed no DevTools endpoint");
        })
        .await
        .expect("chromium ready in time");
        // Keep draining chromium's stderr so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = err.next_line().await {} });
        Browser { process, endpoint, profile }
    }

    /// Opens `url` in a new tab.
    pub async fn open(&self, url: &str) -> Page {
        let (ws, _) = tokio_tungstenite::connect_async(&self.endpoint).await.expect("devtools");
        let mut page = Page { ws, session: String::new(), target: String::new(), next_id: 0 };
        let target = page.call("Target.createTarget", serde_json::json!({"url": url}), false).await;
        page.target = target["targetId"].as_str().expect("target").to_string();
        let attached = page
            .call("Target.attachToTarget", serde_json::json!({"targetId": page.target, "flatten": true}), false)
            .await;
        page.session = attached["sessionId"].as_str().expect("session").to_string();
        page
    }

    /// Stops the browser and removes its profile.
    pub async fn stop(mut self) {
        let _ = self.process.kill().await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn chromium() -> String {
    for candidate in ["chromium", "chromium-browser", "google-chrome"] {
        if std::process::Command::new(candidate).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return candidate.to_string();
        }
    }
    panic!("no chromium found: ./scripts/test installs Debian's `chromium` package");
}

/// A tab driven over the DevTools protocol.
pub struct Page {
    ws: Ws,
    session: String,
    target: String,
    next_id: u64,
}

impl Page {
    /// Calls a DevTools method (in this page's session when `session`).
    pub async fn call(&mut self, method: &str, params: serde_json::Value, session: bool) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = serde_json::json!({"id": id, "method": method, "params": params});
        if session {
            msg["sessionId"] = serde_json::Value::String(self.session.clone());
        }
        self.ws.send(Message::Text(msg.to_string().into())).await.expect("cdp send");
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next()).await.expect("cdp answer in time");
            let Some(Ok(Message::Text(t))) = frame else { panic!("cdp connection ended") };
            let v: serde_json::Value = serde_json::from_str(&t).expect("cdp json");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    pub async fn eval(&mut self, expr: &str) -> serde_json::Value {
        let r =
            self.call("Runtime.evaluate", serde_json::json!({"expression": expr, "returnByValue": true}), true).await;
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is true (for `WAIT`, or `within` when given).
    pub async fn until(&mut self, what: &str, expr: &str) {
        self.until_within(what, expr, WAIT).await
    }

    /// Polls `expr` until it is true, for at most `within`.
    pub async fn until_within(&mut self, what: &str, expr: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.eval(expr).await != serde_json::Value::Bool(true) {
            assert!(tokio::time::Instant::now() < deadline, "the page never showed {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Closes the tab (its connections go with it).
    pub async fn close(mut self) {
        let target = self.target.clone();
        self.call("Target.closeTarget", serde_json::json!({"targetId": target}), false).await;
    }
}
