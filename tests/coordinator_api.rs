//! The coordinator's HTTP API (docs/protocol.md) and both servers' metrics.

mod common;

use common::*;
use presence_client::Error;

async fn raw(url: &str, method: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = request(url, method, body, None).await;
    (status, body)
}

/// The status of a GET, without reading the body (the dashboard stream never ends).
async fn status_of(url: &str) -> u16 {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, http_body_util::Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    client.get(url.parse().expect("uri")).await.expect("response").status().as_u16()
}

/// One request with an optional `Authorization` header: status, `WWW-Authenticate`, JSON body.
async fn request(url: &str, method: &str, body: &str, auth: Option<&str>) -> (u16, Option<String>, serde_json::Value) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    if let Some(a) = auth {
        req = req.header(http::header::AUTHORIZATION, a);
    }
    let req = req.body(Full::new(bytes::Bytes::from(body.to_string()))).expect("request");
    let res = client.request(req).await.expect("response");
    let status = res.status().as_u16();
    let challenge = res.headers().get(http::header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(String::from);
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    (status, challenge, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_listener_serves_routing_and_health_only() {
    let c = cluster(1).await;
    let public = &c.coordinator_url;
    for path in ["/route?userId=alice", "/healthz", "/readyz"] {
        assert_eq!(raw(&format!("{public}{path}"), "GET", "").await.0, 200, "{path} on the public listener");
    }
    for path in ["/", "/dashboard/stream", "/nodes", "/ring", "/metrics", "/presence?userId=alice"] {
        let (status, body) = raw(&format!("{public}{path}"), "GET", "").await;
        assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{path} on the public listener");
        assert_eq!(status_of(&format!("{}{path}", c.admin_url)).await, 200, "{path} on the admin listener");
    }
    let (status, _) = raw(&format!("{public}/presence"), "POST", r#"{"userIds":["a"]}"#).await;
    assert_eq!(status, 404, "POST /presence is not public either");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_api_key_admin_routes_and_presence_ask_for_it() {
    const KEY: &str = "test-admin-key-0123456789";
    let mut config = presence::cluster::ClusterConfig::for_tests(1, SECRET);
    config.coordinator.admin_key = Some(presence_coordinator::admin::AdminKey::new(KEY).expect("key"));
    let c = presence::cluster::Cluster::start(config).await.expect("cluster starts");
    c.wait_settled(WAIT).await.expect("cluster settles");
    let (public, admin) = (&c.coordinator_url, &c.admin_url);
    let bearer = format!("Bearer {KEY}");
    // The server API on either listener: refused without the key, served with it.
    for base in [public, admin] {
        let url = format!("{base}/presence?userId=alice");
        let (status, challenge, body) = request(&url, "GET", "", None).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")), "{url}: {body}");
        assert!(challenge.is_some_and(|c| c.starts_with("Basic")), "{url}: a browser is asked for the key");
        assert_eq!(request(&url, "GET", "", Some("Bearer wrong-key-0123456789")).await.0, 401);
        let (status, _, body) = request(&url, "GET", "", Some(&bearer)).await;
        assert_eq!((status, body["online"].as_bool()), (200, Some(false)), "{url}: {body}");
    }
    // The rest of the admin side needs it too; a browser sends it as the Basic password.
    let basic = format!("Basic {}", base64_of(&format!("operator:{KEY}")));
    for path in ["/nodes", "/ring", "/metrics", "/"] {
        assert_eq!(request(&format!("{admin}{path}"), "GET", "", None).await.0, 401, "{path}");
        assert_eq!(request(&format!("{admin}{path}"), "GET", "", Some(&basic)).await.0, 200, "{path}");
        assert_eq!(request(&format!("{public}{path}"), "GET", "", Some(&bearer)).await.0, 404, "{path} stays private");
    }
    // Health checks stay open for load balancers and orchestrators; routing stays public.
    for base in [public, admin] {
        for path in ["/healthz", "/readyz", "/route?userId=alice"] {
            assert_eq!(request(&format!("{base}{path}"), "GET", "", None).await.0, 200, "{base}{path}");
        }
    }
    // The SDK's coordinator client carries the key.
    let api = presence_client::CoordinatorClient::new(public).expect("url");
    assert!(matches!(api.presence("alice").await, Err(Error::Api { status: 401, .. })));
    let api = api.with_api_key(KEY).expect("key");
    assert!(!api.presence("alice").await.expect("presence with the key").online);
    // Each refusal counted: 2 listeners x (no key, wrong key), 4 admin paths, the SDK without the key.
    assert_eq!(metric_with(admin, &bearer, "presence_admin_unauthorized_total").await, 9.0);
    c.shutdown().await;
}

/// Standard base64 with padding (HTTP Basic credentials), written out so the test checks the server's decoder.
fn base64_of(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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
    let (status, body) = raw(&format!("{}/presence", c.admin_url), "POST", "{\"userIds\":[\"a\",\"b\"]}").await;
    assert_eq!(status, 200);
    assert_eq!(body["users"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        body["users"][0],
        serde_json::json!({"userId":"a","online":false,"connections":0,"lastSeen":null,"availability":"available"})
    );
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
    let (status, _) = raw(&format!("{}/nodes", c.admin_url), "DELETE", "").await;
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
    metric_with(url, "", name).await
}

/// A metric's value, sending `auth` (if not empty) as the `Authorization` header.
async fn metric_with(url: &str, auth: &str, name: &str) -> f64 {
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, http_body_util::Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::get(format!("{url}/metrics"));
    if !auth.is_empty() {
        req = req.header(http::header::AUTHORIZATION, auth);
    }
    let res = client.request(req.body(Default::default()).expect("request")).await.expect("metrics");
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8(bytes.to_vec()).expect("utf8");
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
    assert!(metric(&c.admin_url, "presence_route_duration_seconds_count").await >= 1.0);
    assert_eq!(metric(&c.admin_url, "presence_coordinator_leader").await, 1.0);
    c.shutdown().await;
}
