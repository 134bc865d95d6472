//! The dashboard in a real browser: headless Chromium (Debian's `chromium`,
//! installed by scripts/test) driven over the DevTools protocol.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A page driven over the DevTools protocol.
struct Page {
    ws: Ws,
    session: String,
    next_id: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: serde_json::Value, session: bool) -> serde_json::Value {
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

    async fn eval(&mut self, expr: &str) -> serde_json::Value {
        let r =
            self.call("Runtime.evaluate", serde_json::json!({"expression": expr, "returnByValue": true}), true).await;
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is true.
    async fn until(&mut self, what: &str, expr: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.eval(expr).await != serde_json::Value::Bool(true) {
            assert!(tokio::time::Instant::now() < deadline, "dashboard never showed {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_and_updates_live() {
    let c = cluster(3).await;
    let profile = std::env::temp_dir().join(format!("presence-chromium-{}", presence_model::time::now_us()));
    let mut browser = tokio::process::Command::new(chromium())
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
    let mut err = BufReader::new(browser.stderr.take().expect("stderr")).lines();
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

    let (ws, _) = tokio_tungstenite::connect_async(&endpoint).await.expect("devtools");
    let mut page = Page { ws, session: String::new(), next_id: 0 };
    let target = page.call("Target.createTarget", serde_json::json!({"url": format!("{}/", c.admin_url)}), false).await;
    let attached = page
        .call("Target.attachToTarget", serde_json::json!({"targetId": target["targetId"], "flatten": true}), false)
        .await;
    page.session = attached["sessionId"].as_str().expect("session").to_string();

    page.until("3 nodes", "document.querySelectorAll('#nodes tbody tr').length === 3").await;
    page.until("the ring", "document.getElementById('ring').dataset.epoch !== undefined").await;
    page.until("the live stream", "document.getElementById('conn').className === 'live'").await;
    let legend = page.eval("document.getElementById('legend').textContent").await;
    assert!(legend.as_str().is_some_and(|l| l.contains("node-1") && l.contains("node-3")), "{legend}");

    // A client connects: the feed and the counts change in the same page, no reload.
    let (a, _) = connect(&c, "alice").await;
    page.until("alice in the feed", "document.querySelector('#feed li[data-user=\"alice\"] .join') !== null").await;
    page.until(
        "the connection counted",
        "[...document.querySelectorAll('#nodes td.conns')].reduce((s, td) => s + Number(td.textContent), 0) === 1",
    )
    .await;
    // Unique users and the day's peak (refreshed with each snapshot).
    page.until("alice among today's unique users", "document.getElementById('s-unique').textContent === '1 / 1'").await;
    page.until("the peak", "document.getElementById('s-peak').textContent === '1'").await;
    // Rich presence in the feed: alice's device.
    page.until(
        "alice's device in the feed",
        "document.querySelector('#feed li[data-user=\"alice\"]').textContent.includes('[unknown=1]')",
    )
    .await;
    let navigations = page.eval("performance.getEntriesByType('navigation').length").await;
    assert_eq!(navigations, 1, "the page was not reloaded");

    // The lookup box.
    page.eval(
        "document.getElementById('user').value = 'alice'; document.getElementById('lookup').requestSubmit(); true",
    )
    .await;
    page.until("the lookup answer", "document.getElementById('answer').textContent.includes('\"vnode\": 1242')").await;

    let shot = page.call("Page.captureScreenshot", serde_json::json!({"format": "png"}), true).await;
    let png = base64_decode(shot["data"].as_str().expect("png data"));
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dir = std::env::current_exe()
        .ok()
        .and_then(|e| {
            e.parent().and_then(|d| d.parent()).and_then(|d| d.parent()).map(|t| t.join("test-output/dashboard"))
        })
        .expect("target dir");
    std::fs::create_dir_all(&dir).expect("output dir");
    std::fs::write(dir.join("dashboard.png"), &png).expect("screenshot written");

    a.close().await;
    page.until("alice's leave in the feed", "document.querySelector('#feed li[data-user=\"alice\"] .leave') !== null")
        .await;
    let _ = browser.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
    c.shutdown().await;
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => 0,
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &c)| n | val(c) << (18 - 6 * i));
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}
