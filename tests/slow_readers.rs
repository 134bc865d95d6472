//! Watchers with big contact lists and slow readers (docs/protocol.md, "Slow
//! readers"), on real binaries with a real Redis and broker: a burst during a
//! drain conflates instead of cutting watchers off, a reader that is merely
//! behind ends with the truth, and one that stops reading is dropped within
//! the write timeout.

mod common;

#[path = "common/harness.rs"]
mod harness;
#[path = "common/procs.rs"]
mod procs;
#[path = "common/tracked.rs"]
mod tracked;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use harness::{wait_for_nodes, Churn, Lcg, Setup, SECRET};
use presence_client::CoordinatorClient;
use procs::{Redis, Shared};
use tokio_tungstenite::tungstenite::Message;
use tracked::Client;

/// Connects `user` with raw tungstenite (so the test decides how fast frames
/// are read) and a small receive buffer, as a slow phone would have.
async fn raw_watcher(
    api: &CoordinatorClient,
    user: &str,
    follow: &[String],
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = api.route(user).await.expect("route").url.expect("owner");
    let addr = url.trim_start_matches("ws://").split('/').next().expect("host:port").to_string();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("rcvbuf");
    let stream = socket.connect(addr.parse().expect("addr")).await.expect("connect");
    let mut req = url.into_client_request().expect("request");
    let token = presence_model::auth::mint_hs256(SECRET.as_bytes(), user, 3600);
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.expect("upgrade");
    for chunk in follow.chunks(500) {
        let m = serde_json::json!({"type": "subscribe", "userIds": chunk});
        ws.send(Message::Text(m.to_string().into())).await.expect("subscribe");
    }
    ws
}

/// Connects these users all at once (one connection each): a burst of joins.
async fn burst(url: &str, users: &[String]) -> Vec<Client> {
    futures_util::future::join_all(users.iter().map(|u| Client::connect(url, SECRET, u, &[]))).await
}

/// Closes them all at once: a burst of leaves.
async fn leave(clients: Vec<Client>) {
    futures_util::future::join_all(clients.into_iter().map(Client::close)).await;
}

/// What a raw watcher knows: each followed user's last connection count.
type Statuses = Arc<Mutex<HashMap<String, u64>>>;

fn record(statuses: &Statuses, text: &str) {
    let v: serde_json::Value = serde_json::from_str(text).expect("json");
    let entries = match v["type"].as_str() {
        Some("status") => vec![v.clone()],
        Some("statuses") => v["statuses"].as_array().cloned().unwrap_or_default(),
        _ => return,
    };
    let mut g = statuses.lock().unwrap_or_else(|p| p.into_inner());
    for e in entries {
        if let (Some(u), Some(n)) = (e["userId"].as_str(), e["connections"].as_u64()) {
            g.insert(u.to_string(), n);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_watchers_of_a_thousand_users_survive_a_drain_under_churn() {
    let _serial = procs::serial().await;
    let mut setup = Setup::start("big-lists", 3, None).await;
    let (url, api) = (setup.url.clone(), setup.api.clone());
    let mut churn = Churn::new(&url, 1000, 20).await;
    for u in &churn.users[..300] {
        churn.clients.push(Client::connect(&url, SECRET, u, &[]).await);
    }
    churn.converges(&api, "300 of 1000 online").await;

    // SIGTERM node-2 while users keep coming and going: its users move (each
    // goes 1 -> 2 -> 1 connections), every watcher hears about all of them.
    let drained = tokio::spawn(async move {
        setup.nodes[1].0.terminate(Duration::from_secs(30)).await;
        setup
    });
    churn.run(150).await;
    let setup = drained.await.expect("drained");
    wait_for_nodes(&api, 2).await;
    churn.converges(&api, "after the drain").await;
    for w in &churn.watchers {
        assert!(w.alive(), "{} was cut off", w.user);
    }
    drop(setup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_reading_100_messages_a_second_ends_with_the_truth() {
    let _serial = procs::serial().await;
    let setup = Setup::start("slow-reader", 3, None).await;
    let (url, api) = (setup.url.clone(), setup.api.clone());
    let mut churn = Churn {
        users: (0..1000).map(|i| format!("user-{i}")).collect(),
        clients: Vec::new(),
        watchers: Vec::new(),
        rng: Lcg(3),
        coordinator: url.clone(),
    };
    let mut ws = raw_watcher(&api, "slow-watcher", &churn.users).await;
    let statuses: Statuses = Arc::default();
    let (st, closed) = (statuses.clone(), Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let cl = closed.clone();
    // The reader starts behind: it reads nothing during the first two waves
    // (its window fills and its outbox must conflate), then 100 messages a
    // second. Read from the start, a batch of 256 statuses per message let
    // it keep up with the churn in some runs, and the check that it was
    // ever behind failed.
    let (go, mut started) = tokio::sync::watch::channel(false);
    let reader = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), started.wait_for(|go| *go)).await;
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(Message::Text(t)) => record(&st, &t),
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(10)).await; // 100 messages a second
        }
        cl.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    // Bursts of joins and leaves over the 1000 followed users, far above what
    // the reader takes (each wave changes hundreds of users in about a second).
    let mut rng = Lcg(11);
    for wave in 0..4 {
        let picked: Vec<String> = (0..250)
            .map(|_| churn.users[rng.next(1000)].clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let joined = burst(&url, &picked).await;
        if wave < 3 {
            leave(joined).await;
        } else {
            churn.clients = joined;
        }
        if wave == 1 {
            let _ = go.send(true);
        }
    }
    let behind = statuses.lock().unwrap_or_else(|p| p.into_inner()).len();
    eprintln!("the reader had seen {behind} users when the churn stopped");
    let stopped = tokio::time::Instant::now();
    let truth = churn.truth();
    let metrics = setup.nodes.iter().map(|n| n.2.clone()).collect::<Vec<_>>();
    let deadline = stopped + Duration::from_secs(3);
    loop {
        let wrong = {
            let g = statuses.lock().unwrap_or_else(|p| p.into_inner());
            truth.iter().filter(|(u, n)| g.get(*u) != Some(n)).count()
        };
        if wrong == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{wrong} statuses still wrong 3 s after the churn stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = stopped.elapsed();
    eprintln!("a 100 msg/s reader held the truth {took:?} after the churn stopped");
    assert!(took <= Duration::from_secs(1), "took {took:?}: the goal is within a second");
    assert!(!closed.load(std::sync::atomic::Ordering::SeqCst), "the slow reader stayed connected");
    reader.abort();
    let mut conflated = 0.0;
    for base in &metrics {
        conflated += common::metric(base, "presence_statuses_conflated_total").await;
    }
    eprintln!("statuses conflated: {conflated}");
    assert!(conflated > 0.0, "the reader was behind: its outbox conflated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_within_the_write_timeout() {
    let _serial = procs::serial().await;
    let dir = procs::output_dir("stuck-reader");
    let redis = Redis::start(&dir).await;
    let sh = Shared::new("stuck-reader", redis.url(), SECRET);
    let (_coord, url) = sh.coordinator("coord");
    let _node = sh.node_with("node-1", &[("WRITE_TIMEOUT_MS", "1000")]);
    let api = CoordinatorClient::new(&url).expect("url");
    wait_for_nodes(&api, 1).await;
    let users: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    // Subscribes to 1000 users and never reads again.
    let ws = raw_watcher(&api, "stuck", &users).await;
    common::eventually("the stuck client is counted", || async {
        api.presence("stuck").await.is_ok_and(|p| p.connections == 1)
    })
    .await;
    let mut churn = Churn { users, clients: Vec::new(), watchers: Vec::new(), rng: Lcg(5), coordinator: url.clone() };
    let started = tokio::time::Instant::now();
    let mut rng = Lcg(7);
    loop {
        if api.presence("stuck").await.is_ok_and(|p| p.connections == 0) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the stuck client was never dropped");
        let picked: Vec<String> = (0..200)
            .map(|_| churn.users[rng.next(1000)].clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        leave(burst(&url, &picked).await).await;
    }
    eprintln!("a client that stopped reading was dropped after {:?}", started.elapsed());
    // Its buffers fill within a wave or two; then one write timeout (1 s).
    assert!(started.elapsed() <= Duration::from_secs(10), "dropped after {:?}", started.elapsed());
    drop(ws);
    churn.clients = burst(&url, &churn.users[..10]).await;
    churn.converges(&api, "others are served").await;
}
