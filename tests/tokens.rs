//! A token's expiry holds for the whole connection (docs/protocol.md,
//! "Authentication"): a connection is closed 4001 `token_expired` at `exp`
//! plus the leeway unless a fresh `auth` came first, and the SDK refreshes
//! ahead of expiry on its own.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use presence::cluster::{Cluster, ClusterConfig};
use presence_client::{
    Client, ClientMessage, ConnectOptions, Connection, Event, ServerMessage, TokenPlacement, TokenSource,
};

/// A cluster whose nodes allow no leeway on `exp`.
async fn strict_cluster() -> Cluster {
    let mut config = ClusterConfig::for_tests(1, SECRET);
    config.jwt_leeway_secs = Some(0);
    let c = Cluster::start(config).await.expect("cluster starts");
    c.wait_settled(WAIT).await.expect("cluster settles");
    c
}

fn short_token(user: &str, secs: u64) -> String {
    presence_model::auth::mint_hs256(SECRET.as_bytes(), user, secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_during_a_connection_closes_it_4001() {
    let c = strict_cluster().await;
    let url = c.nodes[0].url.clone();
    let mut conn = Connection::connect(&url, TokenPlacement::Header(short_token("alice", 2))).await.expect("connects");
    let welcome = expect(&mut conn, |m| matches!(m, ServerMessage::Welcome { .. }), "welcome").await;
    let ServerMessage::Welcome { token_expires_at: Some(at), .. } = welcome else {
        panic!("welcome says when: {welcome:?}")
    };
    let (code, before) = expect_close(&mut conn).await;
    let late = presence_model::time::now_ms().saturating_sub(at);
    assert_eq!(code, 4001);
    assert!(
        before.iter().any(|m| matches!(m, ServerMessage::Error { code, .. } if code == "token_expired")),
        "{before:?}"
    );
    assert!(late < 1_000, "closed {late} ms after the token ran out");
    // Offline, and it says why.
    let api = coordinator(&c);
    eventually("alice offline because her token expired", || async {
        api.presence("alice")
            .await
            .is_ok_and(|p| p.connections == 0 && p.reason == Some(presence_model::EventReason::TokenExpired))
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_auth_in_time_keeps_the_connection() {
    let c = strict_cluster().await;
    let url = c.nodes[0].url.clone();
    let mut conn = Connection::connect(&url, TokenPlacement::Header(short_token("alice", 2))).await.expect("connects");
    expect(&mut conn, |m| matches!(m, ServerMessage::Welcome { .. }), "welcome").await;
    // Another user's token does not extend it.
    conn.send(&ClientMessage::Auth { token: short_token("mallory", 3600), device: None }).await.expect("send");
    expect(&mut conn, |m| matches!(m, ServerMessage::Error { code, .. } if code == "unauthorized"), "refusal").await;
    conn.send(&ClientMessage::Auth { token: short_token("alice", 3600), device: None }).await.expect("send");
    tokio::time::sleep(Duration::from_secs(3)).await;
    conn.send(&ClientMessage::Ping).await.expect("still open");
    expect(&mut conn, |m| *m == ServerMessage::Pong, "pong after the first token ran out").await;
    conn.close().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_refreshes_its_token_ahead_of_expiry() {
    let c = strict_cluster().await;
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let tokens = TokenSource::callback(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move { Ok(short_token("alice", 2)) }
    });
    let client = Client::new(&c.coordinator_url).expect("client");
    let mut session = client.connect("alice", ConnectOptions::new(tokens)).await.expect("session");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut events = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, session.next_event()).await {
        events.push(e);
    }
    assert!(
        !events.iter().any(|e| matches!(e, Event::Reconnecting { .. } | Event::Error { .. })),
        "no reconnect needed: {events:?}"
    );
    assert!(calls.load(Ordering::SeqCst) >= 3, "refreshed {} times in 5 s of 2 s tokens", calls.load(Ordering::SeqCst));
    let p = coordinator(&c).presence("alice").await.expect("presence");
    assert_eq!(p.connections, 1, "still the same single connection");
    session.close().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_session_still_refreshes_on_time() {
    let c = strict_cluster().await;
    // Each token handed out: when, and when it expires (both ms).
    let issued = Arc::new(std::sync::Mutex::new(Vec::<(u64, u64)>::new()));
    let log = issued.clone();
    let tokens = TokenSource::callback(move |_| {
        let now = presence_model::time::now_ms();
        let t = short_token("alice", 3);
        log.lock().expect("log").push((now, (now / 1000 + 3) * 1000));
        async move { Ok(t) }
    });
    let client = Client::new(&c.coordinator_url).expect("client");
    let mut session = client.connect("alice", ConnectOptions::new(tokens)).await.expect("session");
    session.subscribe(&["flapper"]).await.expect("subscribe");
    // A status every 50 ms or so: the refresh must not be pushed back by the traffic.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flapping = {
        let (stop, url) = (stop.clone(), owner(&c, "flapper").1);
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let mut conn = presence_client::Connection::connect(
                    &url,
                    presence_client::TokenPlacement::Header(token("flapper")),
                )
                .await
                .expect("flapper connects");
                let _ = conn.next_within(Duration::from_secs(5)).await;
                tokio::time::sleep(Duration::from_millis(25)).await;
                conn.close().await;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut events = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, session.next_event()).await {
        events.push(e);
    }
    stop.store(true, Ordering::SeqCst);
    let _ = flapping.await;
    let statuses = events.iter().filter(|e| matches!(e, Event::Status(_))).count();
    assert!(statuses > 20, "the session was busy: {statuses} statuses");
    let troubles: Vec<&Event> =
        events.iter().filter(|e| matches!(e, Event::Reconnecting { .. } | Event::Error { .. })).collect();
    assert!(troubles.is_empty(), "no reconnect needed: {troubles:?}");
    // Each refresh came about 80% into the life the previous token had left,
    // not at its last moment (traffic must not keep moving the deadline).
    let issued = issued.lock().expect("log").clone();
    assert!(issued.len() >= 3, "refreshed {} times in 6 s of 3 s tokens", issued.len());
    for w in issued.windows(2) {
        let ((t0, exp0), (t1, _)) = (w[0], w[1]);
        let life = exp0.saturating_sub(t0);
        assert!(t1 - t0 <= life * 9 / 10 + 150, "a refresh {} ms into a token with {life} ms to live", t1 - t0);
    }
    session.close().await;
    c.shutdown().await;
}
