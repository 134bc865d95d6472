//! What a stranger (or a broken peer) can put in the shared systems, on real
//! binaries with a real Redis and broker (docs/security.md): a forged event
//! on the topic, a malformed node record in Redis.

mod common;

#[path = "common/harness.rs"]
mod harness;
#[path = "common/procs.rs"]
mod procs;
#[path = "common/tracked.rs"]
mod tracked;

use std::time::Duration;

use harness::{wait_for_nodes, Setup, SECRET};
use presence_backend::Bus;
use presence_model::{EventKind, NodeRecord, StatusEvent, UserId};
use tracked::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_far_future_seq_on_the_topic_changes_nothing() {
    let _serial = procs::serial().await;
    let setup = Setup::start("forged-seq", 2, None).await;
    let (url, api) = (setup.url.clone(), setup.api.clone());
    let target = "target-user".to_string();
    let watcher = Client::connect(&url, SECRET, "watcher", std::slice::from_ref(&target)).await;
    common::eventually("initial status", || async { watcher.seen().status.get(&target) == Some(&0) }).await;

    // Anyone who can write to the topic claims the user has 5 connections, at the last possible seq.
    let mut config = presence_kafka::KafkaConfig::new(&setup.sh.kafka);
    config.topic = setup.sh.namespace.clone();
    let bus = presence_kafka::KafkaBus::connect(config).await.expect("kafka");
    let forged = StatusEvent {
        v: 1,
        kind: EventKind::Join,
        user_id: UserId::parse(&target).expect("id"),
        node_id: "node-1".into(),
        connection_id: None,
        connections: 5,
        seq: u64::MAX,
        epoch: 1,
        ts: presence_model::time::now_ms(),
        reason: None,
        run_id: None,
        last_seen: None,
        devices: Default::default(),
        idle_since: None,
        status: None,
    };
    bus.publish(forged).await.expect("published");
    let _ = tokio::task::spawn_blocking(move || bus.flush(Duration::from_secs(5))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Real changes still get through, and nobody saw the forged count.
    let c = Client::connect(&url, SECRET, &target, &[]).await;
    common::eventually("the real count arrives", || async { watcher.seen().status.get(&target) == Some(&1) }).await;
    c.close().await;
    common::eventually("and the next", || async { watcher.seen().status.get(&target) == Some(&0) }).await;
    assert!(watcher.seen().history.iter().all(|(_, _, n)| *n != 5), "{:?}", watcher.seen().history);
    assert_eq!(api.presence(&target).await.expect("presence").connections, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_node_record_does_not_stop_assignment() {
    let _serial = procs::serial().await;
    let mut setup = Setup::start("bad-record", 2, None).await;
    let api = setup.api.clone();
    // A record that pins a vnode beyond 4095 (it used to panic the control loop).
    let mut config = presence_redis::RedisConfig::parse(&setup.redis.url());
    config.prefix = setup.sh.namespace.clone();
    let store = presence_redis::connect(&config).await.expect("redis");
    let evil = NodeRecord {
        id: "evil".into(),
        run_id: "x".into(),
        url: "ws://127.0.0.1:1/socket".into(),
        capacity: 1,
        connections: 0,
        users: 0,
        vnode_load: vec![],
        pinned: vec![5000],
        draining: false,
        heartbeat_ms: 0,
    };
    store.heartbeat(&evil, Duration::from_secs(60)).await.expect("written");
    // The coordinator keeps assigning: a third node joins and gets its share.
    setup.nodes.push(setup.sh.node("node-3"));
    wait_for_nodes(&api, 3).await;
    let nodes = api.nodes().await.expect("nodes");
    assert!(nodes.iter().all(|n| n.id != "evil"), "the bad record is not listed");
    let ready: serde_json::Value = api.get("/readyz").await.expect("ready");
    assert_eq!(ready["ready"], true, "{ready}");
}
