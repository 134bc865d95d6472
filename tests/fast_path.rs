//! The fast path of live status (docs/architecture.md, "Fast path"), on real
//! binaries with a real Redis and broker: a watcher on one node hears a user
//! on another through Redis pub/sub even with Kafka stopped; with the pub/sub
//! connections cut again and again it still hears every change, through
//! Kafka and the re-read after each gap; a node's channel subscription lives
//! exactly as long as someone there watches the user.

mod common;

#[path = "common/harness.rs"]
mod harness;
#[path = "common/procs.rs"]
mod procs;
#[path = "common/tracked.rs"]
mod tracked;

use std::time::Duration;

use harness::{Setup, SECRET};
use presence_client::{ClientMessage, Connection, Frame, ServerMessage, TokenPlacement};
use presence_model::api::PresenceView;
use procs::Tansu;

fn uid(s: &str) -> presence_model::UserId {
    presence_model::UserId::parse(s).expect("id")
}

fn token(user: &str) -> String {
    presence_model::auth::mint_hs256(SECRET.as_bytes(), user, 3600)
}

/// A user of `prefix` whose vnode `node` owns.
async fn user_on(setup: &Setup, node: &str, prefix: &str) -> (String, String) {
    for i in 0.. {
        let user = format!("{prefix}-{i}");
        let r = setup.api.route(&user).await.expect("route");
        if r.node_id.as_deref() == Some(node) {
            return (user, r.url.expect("url"));
        }
    }
    unreachable!()
}

async fn connect_as(url: &str, user: &str) -> Connection {
    let mut c = Connection::connect(url, TokenPlacement::Query(token(user))).await.expect("connect");
    match c.next_within(Duration::from_secs(10)).await {
        Ok(Some(Frame::Message(ServerMessage::Welcome { .. }))) => c,
        other => panic!("{user}: no welcome: {other:?}"),
    }
}

/// The (online, connections) of every `status` of `user` that reaches the
/// watcher until it has seen `want` (or 10 s pass).
async fn statuses_until(w: &mut Connection, user: &str, want: (bool, u64)) -> Vec<(bool, u64)> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.last() != Some(&want) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, w.next()).await {
            Ok(Some(Frame::Message(ServerMessage::Status(PresenceView { user_id, online, connections, .. }))))
                if user_id.as_str() == user =>
            {
                seen.push((online, connections));
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the watcher's connection ended; saw {seen:?}"),
            Err(_) => panic!("{user} never reached {want:?}; saw {seen:?}"),
        }
    }
    seen
}

/// Steps a user through 1, 2, 1, 0 connections, a pause apart, checking that
/// the watcher hears each state once, in order, within `within` of the step.
async fn step_and_watch(setup: &Setup, watcher: &mut Connection, within: Duration) {
    let (user, url) = user_on(setup, "node-2", "target").await;
    watcher.send(&ClientMessage::Subscribe { user_ids: vec![uid(&user)] }).await.expect("subscribe");
    assert_eq!(statuses_until(watcher, &user, (false, 0)).await, vec![(false, 0)], "the snapshot");
    let mut conns = Vec::new();
    for want in [(true, 1), (true, 2), (true, 1), (false, 0)] {
        let started = tokio::time::Instant::now();
        if want.1 > conns.len() as u64 {
            conns.push(connect_as(&url, &user).await);
        } else {
            conns.pop().expect("a connection").close().await;
        }
        let seen = statuses_until(watcher, &user, want).await;
        assert_eq!(seen, vec![want], "each state once, nothing stale or repeated");
        assert!(started.elapsed() < within, "{want:?} took {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_another_node_hears_through_redis_with_kafka_stopped() {
    let _serial = procs::serial().await;
    let dir = procs::output_dir("fast-path-no-kafka");
    let mut kafka = Tansu::start(&dir).await;
    let setup = Setup::start("fast-path-no-kafka", 2, Some(kafka.brokers())).await;
    let (w_user, w_url) = user_on(&setup, "node-1", "watcher").await;
    let mut watcher = connect_as(&w_url, &w_user).await;
    kafka.stop();
    // Without Kafka, only the fast path carries the change across nodes in time.
    step_and_watch(&setup, &mut watcher, Duration::from_secs(2)).await;
    let heard = common::metric(&setup.nodes[0].2, "presence_live_changes_total").await;
    assert!(heard >= 4.0, "node-1 heard {heard} changes on the live feed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_pubsub_connections_cut_every_change_still_arrives_once_in_order() {
    let _serial = procs::serial().await;
    let setup = Setup::start("fast-path-cut", 2, None).await;
    let (w_user, w_url) = user_on(&setup, "node-1", "watcher").await;
    let mut watcher = connect_as(&w_url, &w_user).await;
    // Every 20 ms, every subscribed connection of this Redis is killed.
    let port = setup.redis.port;
    let cutter = tokio::spawn(async move {
        loop {
            let _ = tokio::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "client", "kill", "type", "pubsub"])
                .output()
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    step_and_watch(&setup, &mut watcher, Duration::from_secs(5)).await;
    cutter.abort();
    let gaps = common::metric(&setup.nodes[0].2, "presence_live_gaps_total").await;
    assert!(gaps >= 1.0, "node-1 saw no gap on its live feed ({gaps}): the cut did not happen");
}

/// `PUBSUB NUMSUB` of one channel on the test's Redis.
async fn subscribers(port: u16, channel: &str) -> u64 {
    let out = tokio::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "pubsub", "numsub", channel])
        .output()
        .await
        .expect("redis-cli");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("NUMSUB said {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_is_followed_while_someone_on_the_node_watches() {
    let _serial = procs::serial().await;
    let setup = Setup::start("fast-path-interest", 2, None).await;
    let (a, a_url) = user_on(&setup, "node-1", "watcher-a").await;
    let (b, b_url) = user_on(&setup, "node-1", "watcher-b").await;
    let (target, _) = user_on(&setup, "node-2", "target").await;
    let vnode = presence_model::UserId::parse(&target).expect("id").vnode();
    let channel = format!("{{{}:v{vnode}}}:ch:{target}", setup.sh.namespace);
    let port = setup.redis.port;
    let count_is = |n: u64| {
        let channel = channel.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                let now = subscribers(port, &channel).await;
                if now == n {
                    return;
                }
                assert!(tokio::time::Instant::now() < deadline, "{channel}: {now} subscribers, want {n}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    count_is(0).await;
    let mut wa = connect_as(&a_url, &a).await;
    let mut wb = connect_as(&b_url, &b).await;
    wa.send(&ClientMessage::Subscribe { user_ids: vec![uid(&target)] }).await.expect("subscribe");
    count_is(1).await;
    wb.send(&ClientMessage::Subscribe { user_ids: vec![uid(&target)] }).await.expect("subscribe");
    tokio::time::sleep(Duration::from_millis(200)).await;
    count_is(1).await; // one subscription per node, however many watch there
    wa.send(&ClientMessage::Unsubscribe { user_ids: vec![uid(&target)] }).await.expect("unsubscribe");
    tokio::time::sleep(Duration::from_millis(200)).await;
    count_is(1).await;
    wb.close().await; // the last watcher leaves by disconnecting
    count_is(0).await;
    wa.close().await;
}
