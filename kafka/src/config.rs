//! What the Kafka bus is told, and the librdkafka settings it derives.

use std::time::Duration;

use rdkafka::ClientConfig;

/// Kafka settings. Defaults are the ones documented in `kafka/README.md`.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port]` (`KAFKA_BROKERS`).
    pub brokers: String,
    /// Topic of status events.
    pub topic: String,
    /// Partitions when the topic is created here.
    pub partitions: i32,
    /// Replication factor when the topic is created here.
    pub replication: i32,
    /// Producer batching delay: small, because latency matters more than batch size.
    pub linger: Duration,
    /// How long the broker may hold a fetch waiting for data.
    pub fetch_wait: Duration,
    /// Events the producer may hold (Kafka down or slow) before publishing fails as full.
    pub queue_max_messages: u32,
    /// How long the producer keeps retrying one event before giving up (counted).
    pub message_timeout: Duration,
    /// Client ID prefix (the node or coordinator ID is appended).
    pub client_id: String,
}

impl KafkaConfig {
    /// Defaults for these brokers.
    pub fn new(brokers: &str) -> Self {
        Self {
            brokers: brokers.to_string(),
            topic: "user_status_events".into(),
            partitions: 16,
            replication: 1,
            linger: Duration::from_millis(1),
            fetch_wait: Duration::from_millis(5),
            queue_max_messages: 100_000,
            message_timeout: Duration::from_secs(300),
            client_id: "presence".into(),
        }
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            // Find a restarted broker quickly.
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "1000")
            .set("socket.keepalive.enable", "true");
        c
    }

    /// Producer: idempotent (no duplicates or reordering from retries within a
    /// partition), acks from all in-sync replicas, a 1 ms linger for batching.
    pub fn producer(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", self.linger.as_millis().to_string())
            .set("queue.buffering.max.messages", self.queue_max_messages.to_string())
            .set("message.timeout.ms", self.message_timeout.as_millis().to_string())
            .set("compression.type", "lz4");
        c
    }

    /// Consumer: assigned every partition by hand (no group rebalances), no
    /// offset commits (a node starts from the end and resyncs from the store).
    pub fn consumer(&self, member: &str) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", format!("{}-{member}", self.client_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "latest")
            .set("fetch.wait.max.ms", self.fetch_wait.as_millis().to_string())
            .set("fetch.min.bytes", "1")
            .set("enable.partition.eof", "false");
        c
    }
}
