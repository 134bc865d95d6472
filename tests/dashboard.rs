//! The dashboard in a real browser: headless Chromium (Debian's `chromium`,
//! installed by scripts/test) driven over the DevTools protocol.

#[path = "common/browser.rs"]
mod browser;
mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_and_updates_live() {
    let c = cluster(3).await;
    let browser = browser::Browser::start().await;
    let mut page = browser.open(&format!("{}/", c.admin_url)).await;
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
    browser.stop().await;
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
