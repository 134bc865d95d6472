//! The cluster on a real Kafka-protocol broker (tansu, started by
//! `scripts/test`): what outside consumers read, and what stale or duplicate
//! events do (nothing).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use presence::cluster::{Cluster, ClusterConfig};
use presence_backend::MemoryStore;
use presence_client::{ClientMessage, ServerMessage, UserId};
use presence_kafka::{KafkaBus, KafkaConfig};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("KAFKA_BROKERS is not set: run the tests through ./scripts/test, which starts a Kafka-protocol broker")
    })
}

/// A cluster on the embedded store and a Kafka bus with a topic of its own.
async fn cluster_on_kafka(nodes: usize) -> (Cluster, String) {
    // Unique even for two tests starting in the same microsecond (they did once).
    let topic = format!("kafka-test-{}", uuid::Uuid::new_v4().simple());
    let mut kc = KafkaConfig::new(&brokers());
    kc.topic = topic.clone();
    kc.partitions = 4;
    let bus = KafkaBus::connect(kc).await.expect("kafka");
    let c = Cluster::start_on(ClusterConfig::for_tests(nodes, SECRET), Arc::new(MemoryStore::new()), Arc::new(bus))
        .await
        .expect("cluster");
    c.wait_settled(WAIT).await.expect("settles");
    // The nodes' consumers must be assigned before events start.
    eventually("bus consumers assigned", || async { c.nodes.iter().all(|n| n.node.bus.stats().healthy) }).await;
    (c, topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_consumer_group_reads_every_event_with_the_documented_schema() {
    let (c, topic) = cluster_on_kafka(2).await;
    let (mut a1, _) = connect(&c, "alice").await;
    expect_count(&mut a1, 1).await;
    let (mut a2, _) = connect(&c, "alice").await;
    expect_count(&mut a1, 2).await;
    expect_count(&mut a2, 2).await;
    a2.close().await;
    expect_count(&mut a1, 1).await;
    a1.close().await;
    let (b, _) = connect(&c, "bob").await;
    eventually("alice offline", || async { coordinator(&c).presence("alice").await.is_ok_and(|p| !p.online) }).await;

    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("analytics-{}", presence_model::time::now_us()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut events: Vec<serde_json::Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let complete = |events: &[serde_json::Value]| {
        events.iter().filter(|e| e["userId"] == "alice").count() >= 4
            && events.iter().any(|e| e["userId"] == "bob" && e["type"] == "join" && e["connections"] == 1)
    };
    while !complete(&events) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = tokio::time::timeout(left, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("alice's four events and bob's join within 30 s; saw {events:#?}"))
            .expect("message");
        let key = String::from_utf8(m.key().expect("key").to_vec()).expect("utf8 key");
        let v: serde_json::Value = serde_json::from_slice(m.payload().expect("payload")).expect("json value");
        assert_eq!(v["userId"].as_str(), Some(key.as_str()), "key is the user ID");
        events.push(v);
    }
    let alice: Vec<&serde_json::Value> = events.iter().filter(|e| e["userId"] == "alice").collect();
    let shape: Vec<(&str, u64)> = alice
        .iter()
        .map(|e| (e["type"].as_str().expect("type"), e["connections"].as_u64().expect("connections")))
        .collect();
    assert_eq!(shape, vec![("join", 1), ("join", 2), ("leave", 1), ("leave", 0)], "all events: {events:#?}");
    // Only these two users' events are on the topic. (Delivery is at least
    // once, and a node starved past the test's 1 s TTL on a loaded machine is
    // counted out and rewrites its counts: more of bob's events may come.)
    assert!(events.iter().all(|e| e["userId"] == "alice" || e["userId"] == "bob"), "{events:#?}");
    if events.len() > 5 {
        eprintln!("more than alice's four and bob's join: {events:#?}");
    }
    assert!(alice.windows(2).all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()), "seq grows");
    for e in &events {
        assert_eq!(e["v"], 2);
        // Version 2: the devices of an online user add up to its count (these
        // clients declare none: `unknown`); a leave to zero carries lastSeen.
        let connections = e["connections"].as_u64().unwrap_or(0);
        let devices: u64 = e["devices"].as_object().map_or(0, |d| d.values().filter_map(|n| n.as_u64()).sum());
        assert_eq!(devices, connections, "devices in {e}");
        if connections == 0 {
            assert!(e["lastSeen"].is_u64(), "lastSeen in {e}");
        }
        for field in ["nodeId", "connectionId"] {
            assert!(e[field].is_string(), "{field} in {e}");
        }
        for field in ["connections", "seq", "epoch", "ts"] {
            assert!(e[field].is_u64(), "{field} in {e}");
        }
    }
    b.close().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_stale_events_change_nothing() {
    let (c, topic) = cluster_on_kafka(2).await;
    let users = users_on_every_node(&c, 1);
    let (watcher, target) = (&users[0], &users[1]);
    let (mut w, _) = connect(&c, watcher).await;
    w.send(&ClientMessage::Subscribe { user_ids: vec![UserId::parse(target).expect("id")] }).await.expect("send");
    expect_status(&mut w, target, 0).await;
    let (t1, _) = connect(&c, target).await;
    expect_status(&mut w, target, 1).await;
    let seq = coordinator(&c).presence(target).await.expect("presence");
    assert!(seq.online);
    let current = c.store().presence(&[UserId::parse(target).expect("id")]).await.expect("store")[0].seq;

    // Written straight into the topic, as a misbehaving or replaying producer would.
    let producer: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("producer");
    let event = |kind: &str, connections: u64, seq: u64| {
        serde_json::json!({"v":1,"type":kind,"userId":target,"nodeId":"rogue","connectionId":null,
            "connections":connections,"seq":seq,"epoch":1,"ts":1})
        .to_string()
    };
    for payload in [
        event("join", 7, current),      // a duplicate of the current state's seq
        event("leave", 0, current - 1), // an older event arriving late
        event("join", 9, 1),            // an ancient one
        "{not json".to_string(),        // garbage
    ] {
        producer
            .send(FutureRecord::to(&topic).key(target.as_str()).payload(&payload), Duration::from_secs(5))
            .await
            .map_err(|(e, _)| e)
            .expect("produced");
    }
    // Nothing reaches the watcher: the next thing it hears is the pong.
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.send(&ClientMessage::Ping).await.expect("send");
    let next = expect(&mut w, |_| true, "next message").await;
    assert_eq!(next, ServerMessage::Pong, "stale or duplicate events must not produce a status");
    // And the state stayed right: a real change still arrives, with the right count.
    t1.close().await;
    expect_status(&mut w, target, 0).await;
    assert_eq!(coordinator(&c).presence(target).await.expect("presence").connections, 0);
    c.shutdown().await;
}
