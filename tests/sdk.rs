//! The client SDK (client-sdk/README.md) and `presence watch`, against real servers.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use presence::cluster::{Cluster, ClusterConfig};
use presence_client::{Client, ConnectOptions, Event, ReconnectReason, Session, TokenSource};
use presence_model::api::PresenceView;

fn options(user: &str) -> ConnectOptions {
    ConnectOptions::new(TokenSource::fixed(token(user)))
}

/// Reads events until one matches; panics with what was seen otherwise.
async fn until(s: &mut Session, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, s.next_event()).await {
            Ok(Some(e)) if pred(&e) => return e,
            Ok(Some(e)) => seen.push(e),
            Ok(None) => panic!("session ended waiting for {what}; saw {seen:?}"),
            Err(_) => panic!("timed out waiting for {what}; saw {seen:?}"),
        }
    }
}

fn status_of(user: &str, n: u64) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::Status(PresenceView { user_id, connections, .. }) if user_id == user && *connections == n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_through_the_coordinator_count_and_status() {
    let c = cluster(3).await;
    let client = Client::new(&c.coordinator_url).expect("client");
    assert_eq!(client.route("alice").await.expect("route").vnode, 1242);
    let mut a = client.connect("alice", options("alice")).await.expect("connect");
    let w = until(&mut a, "welcome", |e| matches!(e, Event::Welcome { .. })).await;
    assert!(
        matches!(w, Event::Welcome { ref node_id, connections: 1, .. } if *node_id == owner(&c, "alice").0),
        "{w:?}"
    );
    a.subscribe(&["bob"]).await.expect("subscribe");
    until(&mut a, "bob offline", status_of("bob", 0)).await;
    let mut b = client.connect("bob", options("bob")).await.expect("connect");
    until(&mut b, "bob's welcome", |e| matches!(e, Event::Welcome { .. })).await;
    until(&mut a, "bob online", status_of("bob", 1)).await;
    let mut a2 = client.connect("alice", options("alice")).await.expect("connect");
    until(&mut a2, "welcome", |e| matches!(e, Event::Welcome { connections: 2, .. })).await;
    until(&mut a, "count 2", |e| matches!(e, Event::Count { connections: 2 })).await;
    b.close().await;
    until(&mut a, "bob offline again", status_of("bob", 0)).await;
    a.unsubscribe(&["bob"]).await.expect("unsubscribe");
    let status = coordinator(&c).status(&["alice", "bob"]).await.expect("status");
    assert_eq!((status[0].connections, status[1].connections), (2, 0));
    a2.close().await;
    until(&mut a, "count 1", |e| matches!(e, Event::Count { connections: 1 })).await;
    a.close().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_at_the_wrong_node_ends_on_the_right_one() {
    let c = cluster(3).await;
    let (owner_id, _) = owner(&c, "alice");
    let wrong = c.nodes.iter().find(|n| n.node.config.node_id != owner_id).expect("another").url.clone();
    let client = Client::new(&c.coordinator_url).expect("client");
    let mut opts = options("alice");
    opts.url = Some(wrong);
    let mut a = client.connect("alice", opts).await.expect("connect");
    let w = until(&mut a, "welcome", |e| matches!(e, Event::Welcome { .. })).await;
    assert!(matches!(w, Event::Welcome { ref node_id, .. } if *node_id == owner_id), "{w:?}");
    a.close().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_moves_the_client_with_no_gap() {
    let mut c = cluster(2).await;
    let client = Client::new(&c.coordinator_url).expect("client");
    let mut watcher = client.connect("watcher", options("watcher")).await.expect("connect");
    watcher.subscribe(&["alice"]).await.expect("subscribe");
    until(&mut watcher, "alice offline", status_of("alice", 0)).await;
    let mut a = client.connect("alice", options("alice")).await.expect("connect");
    until(&mut a, "welcome", |e| matches!(e, Event::Welcome { .. })).await;
    until(&mut watcher, "alice online", status_of("alice", 1)).await;

    c.config_mut().node.pinned = vec![presence_model::vnode("alice")];
    c.add_node().await.expect("node");
    let new_id = c.nodes.last().expect("node").node.config.node_id.clone();
    until(&mut a, "handoff", |e| matches!(e, Event::Reconnecting { reason: ReconnectReason::Handoff { .. }, .. }))
        .await;
    let w = until(&mut a, "welcome on the new node", |e| matches!(e, Event::Welcome { .. })).await;
    assert!(matches!(w, Event::Welcome { ref node_id, .. } if *node_id == new_id), "{w:?}");
    until(&mut a, "count back to 1", |e| matches!(e, Event::Count { connections: 1 })).await;
    // The watcher saw 1 -> 2 -> 1, never 0.
    until(&mut watcher, "both sides counted", status_of("alice", 2)).await;
    let back = until(
        &mut watcher,
        "old side gone",
        |e| matches!(e, Event::Status(PresenceView { user_id, .. }) if user_id == "alice"),
    )
    .await;
    assert!(matches!(back, Event::Status(PresenceView { online: true, connections: 1, .. })), "{back:?}");
    a.close().await;
    watcher.close().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_its_node_goes_the_client_reconnects_and_resubscribes() {
    let mut c = cluster(3).await;
    let client = Client::new(&c.coordinator_url).expect("client");
    let mut a = client.connect("alice", options("alice")).await.expect("connect");
    let w = until(&mut a, "welcome", |e| matches!(e, Event::Welcome { .. })).await;
    let Event::Welcome { node_id: first, .. } = w else { unreachable!() };
    a.subscribe(&["bob"]).await.expect("subscribe");
    until(&mut a, "bob offline", status_of("bob", 0)).await;

    let i = c.nodes.iter().position(|n| n.node.config.node_id == first).expect("alice's node");
    c.stop_node(i).await;
    until(&mut a, "reconnecting", |e| matches!(e, Event::Reconnecting { reason: ReconnectReason::Dropped { .. }, .. }))
        .await;
    let w = until(&mut a, "welcome elsewhere", |e| matches!(e, Event::Welcome { .. })).await;
    assert!(matches!(w, Event::Welcome { ref node_id, .. } if *node_id != first), "{w:?}");
    // Re-subscribed: the status comes again, and later changes arrive.
    until(&mut a, "bob's status again", status_of("bob", 0)).await;
    let mut b = client.connect("bob", options("bob")).await.expect("connect");
    until(&mut b, "welcome", |e| matches!(e, Event::Welcome { .. })).await;
    until(&mut a, "bob online after the reconnect", status_of("bob", 1)).await;
    b.close().await;
    a.close().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refreshed_through_the_callback() {
    let mut config = ClusterConfig::for_tests(1, SECRET);
    config.jwt_leeway_secs = Some(0);
    let c = Cluster::start(config).await.expect("cluster");
    c.wait_settled(WAIT).await.expect("settles");
    let refreshes = Arc::new(AtomicU32::new(0));
    let r = refreshes.clone();
    let tokens = TokenSource::callback(move |expired| {
        let r = r.clone();
        async move {
            if expired {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(presence_model::auth::mint_hs256(SECRET.as_bytes(), "alice", 600))
            } else {
                // The token the app had cached has just expired.
                let now = presence_model::time::now_ms() / 1000;
                Ok(presence_model::auth::mint_hs256_claims(
                    SECRET.as_bytes(),
                    &presence_model::auth::Claims {
                        sub: "alice".into(),
                        exp: now - 5,
                        nbf: None,
                        iat: None,
                        iss: None,
                        aud: None,
                        ..Default::default()
                    },
                ))
            }
        }
    });
    let client = Client::new(&c.coordinator_url).expect("client");
    let mut a = client.connect("alice", ConnectOptions::new(tokens)).await.expect("connect");
    until(&mut a, "token refresh", |e| matches!(e, Event::Reconnecting { reason: ReconnectReason::TokenExpired, .. }))
        .await;
    until(&mut a, "welcome", |e| matches!(e, Event::Welcome { .. })).await;
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);
    a.close().await;
    c.shutdown().await;
}

/// Reads a child's stdout until a line starts with `want`.
async fn expect_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    want: &str,
) -> String {
    let got = tokio::time::timeout(WAIT, async {
        loop {
            let line = lines.next_line().await.expect("read").expect("watch still running");
            if line.starts_with(want) {
                return line;
            }
        }
    })
    .await;
    got.unwrap_or_else(|_| panic!("watch never printed {want:?}"))
}

/// `presence watch <args>`, and its output lines.
fn watch(
    args: &[&str],
) -> (tokio::process::Child, tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_presence"))
        .arg("watch")
        .args(args)
        .env("JWT_SECRET", SECRET)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("watch starts");
    let lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

/// `presence demo` with two nodes on free ports, on its embedded backends
/// (not the Redis and Kafka of the test's environment, which demos running
/// at once would share under the same node IDs), and the URL of its banner
/// line named `which`.
async fn demo(which: &str) -> (tokio::process::Child, String) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut demo = tokio::process::Command::new(env!("CARGO_BIN_EXE_presence"))
        .args(DEMO_ON_FREE_PORTS)
        .env("JWT_SECRET", SECRET)
        .env_remove("REDIS_URL")
        .env_remove("KAFKA_BROKERS")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("demo starts");
    let mut banner = BufReader::new(demo.stdout.take().expect("stdout")).lines();
    let url = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = banner.next_line().await {
            if let Some(rest) = line.trim().strip_prefix(which) {
                return rest.split_whitespace().next().expect("a URL").to_string();
            }
        }
        panic!("the demo printed no {which} line");
    })
    .await
    .expect("banner in time");
    (demo, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_watch_prints_the_count_as_it_changes() {
    let (mut demo, coordinator) = demo("coordinator").await;
    let (mut watch, mut lines) = watch(&["alice", "--coordinator", &coordinator]);
    expect_line(&mut lines, "alice: 1 connection (connected to").await;
    let client = Client::new(&coordinator).expect("client");
    let mut other = client.connect("alice", options("alice")).await.expect("connect");
    until(&mut other, "welcome", |e| matches!(e, Event::Welcome { .. })).await;
    expect_line(&mut lines, "alice: 2 connections").await;
    other.close().await;
    expect_line(&mut lines, "alice: 1 connection").await;
    let _ = watch.kill().await;
    let _ = demo.kill().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Runs `presence <args>` against `coordinator` to its end; its stdout.
async fn presence_cli(coordinator: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_presence"))
        .args(args)
        .args(["--coordinator", coordinator])
        .env("JWT_SECRET", SECRET)
        .output()
        .await
        .expect("runs");
    assert!(out.status.success(), "presence {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sets_statuses_and_shows_devices_availability_and_unique_users() {
    let (mut demo, admin) = demo("admin").await;
    let (mut watch, mut lines) = watch(&["alice", "--device", "mobile", "--subscribe", "bob", "--coordinator", &admin]);
    expect_line(&mut lines, "alice: 1 connection (connected to").await;
    let said = presence_cli(&admin, &["set-status", "bob", "busy", "--text", "On a call", "--for", "600"]).await;
    assert_eq!(said.trim(), "bob: busy \"On a call\"");
    // The watch saw bob come (to set it), busy, and go; the last line says offline and busy.
    let line = expect_line(&mut lines, "bob ").await;
    assert!(line.contains("online") || line.contains("offline"), "{line}");
    let mut last = line;
    while !(last.contains("offline") && last.contains("busy \"On a call\"")) {
        last = expect_line(&mut lines, "bob ").await;
    }
    let status = presence_cli(&admin, &["status", "alice", "bob"]).await;
    let rows: Vec<&str> = status.lines().collect();
    assert!(rows[0].starts_with("alice") && rows[0].contains("online") && rows[0].contains("[mobile=1]"), "{status}");
    assert!(
        rows[1].starts_with("bob") && rows[1].contains("offline") && rows[1].contains("busy \"On a call\""),
        "{status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&presence_cli(&admin, &["status", "bob", "--json"]).await).expect("json");
    assert_eq!(json[0]["availability"], "busy");
    // Unique users: alice and bob were seen today (recorded within a second).
    let mut stats = String::new();
    for _ in 0..50 {
        stats = presence_cli(&admin, &["stats"]).await;
        if stats.contains("2 today") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stats.contains("unique users: 2 this hour, 2 today"), "{stats}");
    let _ = watch.kill().await;
    let _ = demo.kill().await;
}

#[tokio::test]
async fn the_demo_banner_has_one_header_that_names_the_backends() {
    let c = cluster(2).await;
    for (store, bus, says) in
        [("memory", "memory", "embedded in-memory store and bus"), ("redis", "kafka", "store: redis, bus: kafka")]
    {
        let banner = presence::cli::banner(&c, SECRET, store, bus);
        assert_eq!(banner.matches("presence demo:").count(), 1, "{banner}");
        assert!(banner.contains(says), "{banner}");
        assert_eq!(banner.contains("embedded"), store == "memory", "{banner}");
        let admin = format!("dashboard    {}/", c.admin_url);
        assert!(banner.contains(&admin), "the dashboard is on the admin listener: {banner}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_loop_is_followed_a_few_hops_with_pauses_then_backed_off() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;
    // A node that sends every client back to itself.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/socket", listener.local_addr().expect("addr"));
    let accepted = Arc::new(AtomicU32::new(0));
    let (count, me) = (accepted.clone(), url.clone());
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let me = me.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                let redirect = serde_json::json!({"type": "redirect", "url": me, "epoch": 1}).to_string();
                let _ = ws.send(Message::Text(redirect.into())).await;
                let _ = ws
                    .send(Message::Close(Some(CloseFrame { code: CloseCode::from(4010), reason: "wrong node".into() })))
                    .await;
            });
        }
    });
    let client = Client::new("http://127.0.0.1:9").expect("client");
    let mut opts = options("alice");
    opts.url = Some(url);
    opts.backoff.initial = Duration::from_millis(100);
    let mut session = client.connect("alice", opts).await.expect("session");
    let reason = until(&mut session, "the chain given up", |e| {
        matches!(e, Event::Reconnecting { reason: ReconnectReason::Dropped { cause }, .. } if cause.contains("too many redirects"))
    })
    .await;
    drop(reason);
    tokio::time::sleep(Duration::from_secs(1)).await;
    session.close().await;
    server.abort();
    let n = accepted.load(Ordering::SeqCst);
    assert!((5..40).contains(&n), "{n} connections: a few hops with pauses, not a tight loop");
}
