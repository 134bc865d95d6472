//! The monitoring assets (`deploy/prometheus/`, `deploy/grafana/`) name only
//! metrics that exist: a cluster serves some traffic, its coordinator and
//! nodes are scraped, and every `presence_*` name in the alerting rules and
//! the Grafana dashboard must be among what they expose. (`promtool check
//! rules` and `promtool test rules` run in ./scripts/test.)

mod common;

use std::collections::BTreeSet;

use common::*;
use presence_client::{ClientMessage, Connection, TokenPlacement};

/// The metric families a `/metrics` page declares (`# TYPE <name> <type>`).
async fn families(base: &str) -> BTreeSet<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut text = String::new();
    let mut s = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.expect("connects");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n").await.expect("asks");
    s.read_to_string(&mut text).await.expect("reads");
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// Every `presence_…` name in `text`, histogram series reduced to their family.
fn named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("presence_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_lowercase() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        // "presence_" alone (a word in a comment) is no metric.
        if family.len() > "presence_".len() {
            out.insert(family.to_string());
        }
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_the_dashboard_name_exists() {
    let c = cluster(2).await;
    // Some traffic, so that labelled series and histograms have values:
    // a connection, a watcher's status, a refused token.
    let (mut a, _) = connect(&c, "alice").await;
    a.send(&ClientMessage::Subscribe { user_ids: vec![presence_model::UserId::parse("bob").expect("id")] })
        .await
        .expect("send");
    let (_b, _) = connect(&c, "bob").await;
    expect_status(&mut a, "bob", 1).await;
    let refused = Connection::connect(&c.nodes[0].url, TokenPlacement::Header("not-a-token".into())).await;
    assert!(refused.is_err(), "a bad token is refused");
    let _ = coordinator(&c).route("alice").await.expect("route");

    let mut exposed = families(&c.admin_url).await;
    for n in &c.nodes {
        exposed.extend(families(&n.http_url).await);
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/presence-rules.yml")).expect("rules");
    let grafana = std::fs::read_to_string(root.join("deploy/grafana/presence-dashboard.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&grafana).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.iter().all(|p| p["targets"].as_array().is_some_and(|t| !t.is_empty())), "every panel queries");
    for (what, text) in
        [("deploy/prometheus/presence-rules.yml", &rules), ("deploy/grafana/presence-dashboard.json", &grafana)]
    {
        let names = named(text);
        assert!(names.len() >= 10, "{what} names {names:?}");
        let missing: Vec<&String> = names.iter().filter(|n| !exposed.contains(*n)).collect();
        assert!(missing.is_empty(), "{what} names metrics nothing exposes: {missing:?}\nexposed: {exposed:?}");
    }
    // The metrics this issue added are among them.
    for m in ["presence_bus_consumer_lag", "presence_store_seconds", "presence_fanout_latency_seconds"] {
        assert!(exposed.contains(m), "{m} is exposed");
    }
    a.close().await;
    c.shutdown().await;
}
