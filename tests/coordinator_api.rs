//! The coordinator's HTTP API (docs/protocol.md) and both servers' metrics.

mod common;

use common::*;
use presence_client::Error;

async fn raw(url: &str, method: &str, body: &str) -> (u16, serde_json::Value) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .expect("request");
    let res = client.request(req).await.expect("response");
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_validates_user_ids() {
    let c = cluster(3).await;
    let base = &c.coordinator_url;
    for q in ["", "?userId=", "?other=1", &format!("?userId={}", "a".repeat(129)), "?userId=a%0Ab"] {
        let (status, body) = raw(&format!("{base}/route{q}"), "GET", "").await;
        assert_eq!(status, 400, "GET /route{q}");
        assert_eq!(body["code"], "invalid_user_id", "{q}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let (status, body) = raw(&format!("{base}/route?userId=%E7%94%A8%E6%88%B7"), "GET", "").await;
    assert_eq!(status, 200);
    assert_eq!(body["userId"], "用户");
    assert_eq!(body["vnode"], 3723, "golden vector vnode");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_single_and_batch_agree_with_the_table() {
    let c = cluster(3).await;
    let api = coordinator(&c);
    let r = api.route("alice").await.expect("route");
    assert_eq!(r.vnode, 1242);
    let (id, url) = owner(&c, "alice");
    assert_eq!((r.node_id.as_deref(), r.url.as_deref()), (Some(id.as_str()), Some(url.as_str())));
    assert_eq!(r.epoch, c.coordinator.table.epoch());
    let ids: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let routes = api.routes(&refs).await.expect("batch");
    assert_eq!(routes.len(), 1000);
    for (r, u) in routes.iter().zip(&ids) {
        assert_eq!(&r.user_id, u);
        assert_eq!(r.node_id.as_deref(), Some(owner(&c, u).0.as_str()));
    }
    let base = &c.coordinator_url;
    let too_many = serde_json::json!({ "userIds": (0..1001).map(|i| format!("u{i}")).collect::<Vec<_>>() }).to_string();
    let (status, body) = raw(&format!("{base}/route"), "POST", &too_many).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("batch_too_large")));
    for bad in ["{", "{\"userIds\":5}", "{\"userIds\":[\"\"]}", "{\"ids\":[]}"] {
        let (status, body) = raw(&format!("{base}/route"), "POST", bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) = raw(&format!("{base}/presence"), "POST", "{\"userIds\":[\"a\",\"b\"]}").await;
    assert_eq!(status, 200);
    assert_eq!(body["users"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["users"][0], serde_json::json!({"userId":"a","online":false,"connections":0,"lastSeen":null}));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_views_and_health() {
    let c = cluster(3).await;
    let api = coordinator(&c);
    let nodes = api.nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes.iter().map(|n| n.vnodes).sum::<usize>(), 4096);
    let ring = api.ring().await.expect("ring");
    assert_eq!(ring["owners"].as_array().map(Vec::len), Some(4096));
    assert_eq!(ring["nodes"].as_array().map(Vec::len), Some(3));
    let ready: serde_json::Value = api.get("/readyz").await.expect("ready");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["leader"], true);
    let (status, body) = raw(&format!("{}/nope", c.coordinator_url), "GET", "").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (status, _) = raw(&format!("{}/nodes", c.coordinator_url), "DELETE", "").await;
    assert_eq!(status, 405);
    match api.get::<serde_json::Value>("/route?userId=").await {
        Err(Error::Api { status: 400, .. }) => {}
        other => panic!("{other:?}"),
    }
    c.shutdown().await;
}

/// Parses Prometheus text into (name{labels}, value) pairs, failing on any malformed line.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(name.starts_with("presence_"), "unprefixed metric {name}");
        out.push((name.to_string(), v));
    }
    out
}

async fn metric(url: &str, name: &str) -> f64 {
    let (_, text) = {
        use http_body_util::BodyExt;
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;
        let client: Client<_, http_body_util::Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let res = client.get(format!("{url}/metrics").parse().expect("uri")).await.expect("metrics");
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8(bytes.to_vec()).expect("utf8"))
    };
    parse_prometheus(&text).into_iter().find(|(n, _)| n == name).map(|(_, v)| v).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_the_connection_gauge_follows() {
    let c = cluster(1).await;
    let node = c.nodes[0].http_url.clone();
    assert_eq!(metric(&node, "presence_connections").await, 0.0);
    let (a, _) = connect(&c, "alice").await;
    let (b, _) = connect(&c, "bob").await;
    eventually("gauge at 2", || async { metric(&node, "presence_connections").await == 2.0 }).await;
    a.close().await;
    eventually("gauge at 1", || async { metric(&node, "presence_connections").await == 1.0 }).await;
    b.close().await;
    eventually("gauge at 0", || async { metric(&node, "presence_connections").await == 0.0 }).await;
    assert!(metric(&node, "presence_connects_total").await >= 2.0);
    let api = coordinator(&c);
    api.route("alice").await.expect("route");
    assert!(metric(&c.coordinator_url, "presence_route_duration_seconds_count").await >= 1.0);
    assert_eq!(metric(&c.coordinator_url, "presence_coordinator_leader").await, 1.0);
    c.shutdown().await;
}
