//! What bounds the connections strangers open (docs/security.md), over real
//! sockets against an in-process cluster: slow and oversized headers, idle
//! keep-alive connections, connection caps, and the cap on connections that
//! have not authenticated.

mod common;

use std::time::Duration;

use common::*;
use presence::cluster::{Cluster, ClusterConfig};
use presence_client::{Connection, ServerMessage, TokenPlacement};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn cluster_with(f: impl FnOnce(&mut ClusterConfig)) -> Cluster {
    let mut config = ClusterConfig::for_tests(1, SECRET);
    f(&mut config);
    let c = Cluster::start(config).await.expect("cluster starts");
    c.wait_settled(WAIT).await.expect("cluster settles");
    c
}

fn addr(base: &str) -> String {
    base.trim_start_matches("http://").trim_start_matches("ws://").split('/').next().expect("host:port").to_string()
}

/// Reads until the server closes; the bytes read. Fails if it stays open past `within`.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "still open after {within:?}");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_connections_are_closed_on_both_servers() {
    let c = cluster_with(|c| {
        c.coordinator.http.header_timeout = Duration::from_millis(300);
        c.node.http.header_timeout = Duration::from_millis(300);
    })
    .await;
    for base in [c.coordinator_url.clone(), c.nodes[0].http_url.clone()] {
        // Slowloris: half a request, then nothing.
        let mut s = TcpStream::connect(addr(&base)).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.expect("write");
        let started = tokio::time::Instant::now();
        read_until_closed(&mut s, Duration::from_secs(3)).await;
        assert!(started.elapsed() < Duration::from_secs(2), "{base}: closed after {:?}", started.elapsed());
        // Keep-alive: one request answered, then idle.
        let mut s = TcpStream::connect(addr(&base)).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let answer = read_until_closed(&mut s, Duration::from_secs(3)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{base}: {answer}");
        // A trickle: a byte every 50 ms keeps the socket busy but the head never ends.
        let mut s = TcpStream::connect(addr(&base)).await.expect("connect");
        let started = tokio::time::Instant::now();
        let mut closed = false;
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Trickle: ".iter().cycle().take(60) {
            if s.write_all(&[*b]).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(closed, "{base}: a trickled head was still read after {:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(2), "{base}: closed after {:?}", started.elapsed());
    }
    let metrics = reqwest_free_get(&c.admin_url, "/metrics").await;
    assert!(metrics.contains("presence_http_header_timeouts_total{listener=\"public\"} 3"), "{metrics}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_outlives_the_header_timeout() {
    let c = cluster_with(|c| c.coordinator.http.header_timeout = Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(addr(&c.admin_url)).await.expect("connect");
    s.write_all(b"GET /dashboard/stream HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    // Snapshots come every second: three of them take far longer than the header timeout.
    let mut seen = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while String::from_utf8_lossy(&seen).matches("event: snapshot").count() < 3 {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf)).await.expect("events in time").expect("read");
        assert!(n > 0, "the stream was closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused() {
    let c = cluster(1).await;
    for base in [c.coordinator_url.clone(), c.nodes[0].http_url.clone()] {
        let mut s = TcpStream::connect(addr(&base)).await.expect("connect");
        let big = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(300 * 1024));
        let _ = s.write_all(big.as_bytes()).await;
        let answer = read_until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(!answer.starts_with("HTTP/1.1 200"), "{base} accepted 300 KB of headers");
    }
    still_serving(&c).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_answer_503_and_recover() {
    let c = cluster_with(|c| c.coordinator.http.max_connections_per_ip = 4).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr(&c.coordinator_url)).await.expect("connect"));
    }
    let mut fifth = TcpStream::connect(addr(&c.coordinator_url)).await.expect("connect");
    let answer = read_until_closed(&mut fifth, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    held.pop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ok = reqwest_free_get(&c.coordinator_url, "/healthz").await;
    assert!(ok.contains("ok"), "served again once a place was free: {ok}");
    drop(held);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_waiting_for_auth_are_capped() {
    let c = cluster_with(|c| c.node.max_pending_auth = 2).await;
    let url = c.nodes[0].url.clone();
    let mut waiting = Vec::new();
    for _ in 0..2 {
        waiting.push(Connection::connect(&url, TokenPlacement::None).await.expect("upgrades"));
    }
    let third = Connection::connect(&url, TokenPlacement::None).await;
    let Err(presence_client::Error::Api { status, code, .. }) = third else { panic!("a third one was let in") };
    assert_eq!((status, code.as_str()), (503, "too_many_unauthenticated"));
    // A token on the upgrade does not wait, so it is not capped.
    let (mut alice, _) = connect(&c, "alice").await;
    // One of the waiting authenticates: a place is free again.
    let mut first = waiting.remove(0);
    first.send(&presence_client::ClientMessage::Auth { token: token("bob"), device: None }).await.expect("auth");
    let owner_is_here = owner(&c, "bob").1 == url;
    if owner_is_here {
        expect(&mut first, |m| matches!(m, ServerMessage::Welcome { .. }), "welcome").await;
    }
    eventually("a place frees up", || async { Connection::connect(&url, TokenPlacement::None).await.is_ok() }).await;
    expect_count(&mut alice, 1).await;
    c.shutdown().await;
}

/// A plain HTTP/1.0 GET (no client library, so the test controls the socket).
async fn reqwest_free_get(base: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr(base)).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.expect("write");
    read_until_closed(&mut s, Duration::from_secs(5)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_holds_at_most_the_configured_connections() {
    let c = cluster_with(|c| c.node.max_connections_per_user = 2).await;
    let (mut a, _) = connect(&c, "alice").await;
    let (_b, _) = connect(&c, "alice").await;
    expect_count(&mut a, 2).await;
    let (_, url) = owner(&c, "alice");
    let mut third = Connection::connect(&url, TokenPlacement::Header(token("alice"))).await.expect("upgrades");
    let (code, before) = expect_close(&mut third).await;
    assert_eq!(code, 4029);
    assert!(
        matches!(before.as_slice(), [ServerMessage::Error { code, .. }] if code == "too_many_user_connections"),
        "{before:?}"
    );
    a.close().await;
    let (_again, _) = connect(&c, "alice").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_beyond_the_rate_are_refused_then_the_flooder_is_closed() {
    let c = cluster_with(|c| {
        c.node.message_rate = 5;
        c.node.message_burst = 5;
    })
    .await;
    // Over the burst: refused, the connection stays.
    let (mut conn, _) = connect(&c, "alice").await;
    for _ in 0..8 {
        conn.send(&presence_client::ClientMessage::Ping).await.expect("send");
    }
    expect(&mut conn, |m| matches!(m, ServerMessage::Error { code, .. } if code == "rate_limited"), "refusal").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    conn.send(&presence_client::ClientMessage::Ping).await.expect("send");
    expect(&mut conn, |m| *m == ServerMessage::Pong, "served again at the allowed pace").await;
    // A flood: closed.
    let (mut flood, _) = connect(&c, "bob").await;
    for _ in 0..40 {
        if flood.send(&presence_client::ClientMessage::Ping).await.is_err() {
            break;
        }
    }
    let (code, _) = expect_close(&mut flood).await;
    assert_eq!(code, 4029);
    still_serving(&c).await;
    c.shutdown().await;
}
