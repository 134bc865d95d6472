//! The Kafka bus against a real Kafka-protocol broker (tansu, started by
//! `scripts/test`): topic creation, idempotent produce, every-partition consume.

use std::collections::HashMap;
use std::time::Duration;

use presence_backend::{Bus, BusMessage};
use presence_kafka::{KafkaBus, KafkaConfig};
use presence_model::{StatusEvent, UserId};

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("KAFKA_BROKERS is not set: run the tests through ./scripts/test, which starts a Kafka-protocol broker")
    })
}

fn event(user: &str, seq: u64, connections: u64) -> StatusEvent {
    let presence = presence_model::Presence::counted(UserId::parse(user).expect("id"), connections, seq);
    let change = presence_model::PresenceChange { presence, previous: 0 };
    StatusEvent::from_change(&change, "test", None, 1, seq, None)
}

async fn bus(topic: &str) -> KafkaBus {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut c = KafkaConfig::new(&brokers());
    c.topic = topic.into();
    c.partitions = 4;
    KafkaBus::connect(c).await.expect("connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_event_in_per_user_order() {
    let topic = format!("bus-test-{}", presence_model::time::now_us());
    let bus = bus(&topic).await;
    let mut subs = [bus.subscribe(), bus.subscribe()];
    // Each subscriber announces its assignment with a resync.
    for s in subs.iter_mut() {
        let first = tokio::time::timeout(Duration::from_secs(20), s.next()).await.expect("assigned in time");
        assert!(matches!(first, Some(BusMessage::Resync)), "{first:?}");
    }
    let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    for seq in 1..=10u64 {
        for u in &users {
            bus.publish(event(u, seq, seq)).await.expect("queued");
        }
    }
    bus.flush(Duration::from_secs(10));
    eprintln!("after flush: {:?}", bus.stats());
    for s in subs.iter_mut() {
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut got = 0;
        while got < 200 {
            match tokio::time::timeout(Duration::from_secs(20), s.next()).await.expect("events in time") {
                Some(BusMessage::Event(e)) => {
                    let prev = last.insert(e.user_id.to_string(), e.seq).unwrap_or(0);
                    assert_eq!(e.seq, prev + 1, "per-user order for {}", e.user_id);
                    got += 1;
                }
                Some(BusMessage::Resync) => {}
                None => panic!("subscription ended"),
            }
        }
        assert!(last.values().all(|&s| s == 10));
    }
    let stats = bus.stats();
    assert_eq!(stats.published, 200);
    assert!(stats.received >= 400);
    bus.flush(Duration::from_secs(5));
    assert_eq!(bus.stats().delivered, 200);
    assert_eq!(bus.stats().delivery_errors, 0);
}
