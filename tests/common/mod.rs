//! Helpers for the integration tests: a cluster on port 0, tokens, and
//! clients that read until a condition holds or a deadline passes.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use presence::cluster::{Cluster, ClusterConfig};
use presence_client::{Connection, CoordinatorClient, Frame, ServerMessage, TokenPlacement};
use presence_model::api::PresenceView;

pub const SECRET: &str = "integration-test-secret";
pub const WAIT: Duration = Duration::from_secs(10);

/// `presence demo` with two nodes, every listener on a free port (the
/// arguments after the binary's name).
pub const DEMO_ON_FREE_PORTS: [&str; 11] = [
    "demo",
    "--listen",
    "127.0.0.1:0",
    "--admin-listen",
    "127.0.0.1:0",
    "--try-listen",
    "127.0.0.1:0",
    "--node-port",
    "0",
    "--nodes",
    "2",
];

pub fn token(user: &str) -> String {
    presence_model::auth::mint_hs256(SECRET.as_bytes(), user, 3600)
}

pub async fn cluster(nodes: usize) -> Cluster {
    let c = Cluster::start(ClusterConfig::for_tests(nodes, SECRET)).await.expect("cluster starts");
    c.wait_settled(WAIT).await.expect("cluster settles");
    c
}

/// A client of the coordinator's admin listener (it serves `/route` too).
pub fn coordinator(c: &Cluster) -> CoordinatorClient {
    CoordinatorClient::new(&c.admin_url).expect("coordinator url")
}

/// The node ID and URL that own `user`.
pub fn owner(c: &Cluster, user: &str) -> (String, String) {
    let t = c.coordinator.table.get().expect("table");
    let n = t.owner(user).expect("owner");
    (n.id.clone(), n.url.clone())
}

/// Connects `user` to its owner (token in the header) and reads the welcome.
pub async fn connect(c: &Cluster, user: &str) -> (Connection, ServerMessage) {
    let (_, url) = owner(c, user);
    let mut conn = Connection::connect(&url, TokenPlacement::Header(token(user))).await.expect("connects");
    let welcome = expect(&mut conn, |m| matches!(m, ServerMessage::Welcome { .. }), "welcome").await;
    (conn, welcome)
}

/// The cluster still accepts and serves a fresh client.
pub async fn still_serving(c: &Cluster) {
    let (mut conn, _) = connect(c, "still-here").await;
    conn.send(&presence_client::ClientMessage::Ping).await.expect("send");
    expect(&mut conn, |m| *m == ServerMessage::Pong, "pong").await;
    conn.close().await;
}

/// Reads messages until one matches; panics with what was seen otherwise.
pub async fn expect(conn: &mut Connection, pred: impl Fn(&ServerMessage) -> bool, what: &str) -> ServerMessage {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, conn.next()).await {
            Ok(Some(Frame::Message(m))) if pred(&m) => return m,
            Ok(Some(f)) => seen.push(format!("{f:?}")),
            Ok(None) => panic!("connection ended waiting for {what}; saw {seen:?}"),
            Err(_) => panic!("timed out waiting for {what}; saw {seen:?}"),
        }
    }
}

/// Reads until the close frame; returns its code (panics if none comes).
pub async fn expect_close(conn: &mut Connection) -> (u16, Vec<ServerMessage>) {
    let mut before = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, conn.next()).await {
            Ok(Some(Frame::Closed { code, .. })) => return (code, before),
            Ok(Some(Frame::Message(m))) => before.push(m),
            Ok(Some(Frame::Unparsed(t))) => panic!("unparsed frame {t}"),
            Ok(None) => panic!("connection dropped without a close frame; saw {before:?}"),
            Err(_) => panic!("no close within {WAIT:?}; saw {before:?}"),
        }
    }
}

/// Waits for the count stream of `conn` to reach `n`.
pub async fn expect_count(conn: &mut Connection, n: u64) {
    expect(conn, |m| matches!(m, ServerMessage::Count { connections, .. } if *connections == n), &format!("count {n}"))
        .await;
}

/// Waits for a `status` of `user` with `n` connections.
pub async fn expect_status(conn: &mut Connection, user: &str, n: u64) -> ServerMessage {
    expect(
        conn,
        |m| matches!(m, ServerMessage::Status(PresenceView { user_id, connections, .. }) if user_id.as_str() == user && *connections == n),
        &format!("status of {user} with {n} connections"),
    )
    .await
}

/// The next `status` of `user` that satisfies `pred`.
pub async fn status_of(
    conn: &mut Connection,
    user: &str,
    pred: impl Fn(&ServerMessage) -> bool,
    what: &str,
) -> ServerMessage {
    expect(conn, |m| matches!(m, ServerMessage::Status(v) if v.user_id == user) && pred(m), what).await
}

/// A counter's or gauge's value in a server's `/metrics` (0 when absent),
/// over a plain HTTP/1.0 GET so the test needs no client library.
pub async fn metric(base: &str, name: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut text = String::new();
    if let Ok(mut s) = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await {
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text)).await;
    }
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// Polls `check` until it returns true or the deadline passes.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Users that the current table spreads over every node (at least `per_node` each).
pub fn users_on_every_node(c: &Cluster, per_node: usize) -> Vec<String> {
    let t = c.coordinator.table.get().expect("table");
    let mut out = Vec::new();
    for n in &t.nodes {
        let mine: Vec<String> = (0..)
            .map(|i| format!("user-{i}"))
            .filter(|u| t.owner(u).is_some_and(|o| o.id == n.id))
            .take(per_node)
            .collect();
        out.extend(mine);
    }
    out
}
