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
    /// How to reach a secured cluster: `security.protocol`, `sasl.*` and
    /// `ssl.*` librdkafka properties, passed through as given ([`Security`]).
    pub security: Security,
}

/// The librdkafka properties of a secured cluster (TLS, SASL PLAIN,
/// SCRAM-SHA-256/512, OAUTHBEARER), read from `KAFKA_SECURITY_PROTOCOL`,
/// `KAFKA_SASL_*` and `KAFKA_SSL_*` ([`Security::from_env`]). Only these
/// families are accepted, so the producer's own guarantees (idempotence,
/// acks) cannot be overridden by accident. Values are never printed.
#[derive(Clone, Default)]
pub struct Security(Vec<(String, String)>);

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(k, _)| k)).finish()
    }
}

/// The `security.protocol` values librdkafka knows.
const PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];

impl Security {
    /// The properties named by environment variables: `KAFKA_SECURITY_PROTOCOL`
    /// is `security.protocol`, `KAFKA_SASL_MECHANISM` is `sasl.mechanism`,
    /// `KAFKA_SSL_CA_LOCATION` is `ssl.ca.location`, and so on. Every problem
    /// is returned, naming the variable, never its value.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, Vec<String>> {
        let mut props = Vec::new();
        let mut problems = Vec::new();
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix("KAFKA_") else { continue };
            if rest != "SECURITY_PROTOCOL" && !rest.starts_with("SASL_") && !rest.starts_with("SSL_") {
                continue;
            }
            let key = rest.to_ascii_lowercase().replace('_', ".");
            if key == "security.protocol" && !PROTOCOLS.contains(&value.to_ascii_lowercase().as_str()) {
                problems.push(format!("{name}: expected one of {}", PROTOCOLS.join(", ")));
                continue;
            }
            props.push((key, value));
        }
        props.sort();
        if problems.is_empty() {
            Ok(Self(props))
        } else {
            Err(problems)
        }
    }

    /// The properties, by name.
    pub fn properties(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether any property is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
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
            security: Security::default(),
        }
    }

    /// What every client (producer, consumer, admin) shares: the brokers,
    /// how to reach them, and the security settings.
    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in self.security.properties() {
            c.set(k, v);
        }
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

    /// Admin client (creates the topic at start).
    pub fn admin(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("client.id", format!("{}-admin", self.client_id));
        c
    }

    /// A client that only asks for metadata and watermarks (a subscriber's
    /// health probe and lag), on connections of its own.
    pub fn prober(&self, member: &str) -> ClientConfig {
        let mut c = self.base();
        c.set("client.id", format!("{}-probe", self.client_id))
            .set("group.id", format!("{}-{member}-probe", self.client_id));
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

#[cfg(test)]
mod tests {
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::producer::BaseProducer;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn security_properties_come_from_their_variables() {
        let s = Security::from_env(env(&[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("KAFKA_SASL_USERNAME", "presence"),
            ("KAFKA_SASL_PASSWORD", "hunter2-secret"),
            ("KAFKA_SSL_CA_LOCATION", "/etc/ssl/certs/ca-certificates.crt"),
            ("KAFKA_BROKERS", "b:9092"),
            ("KAFKA_TOPIC", "t"),
            ("PATH", "/bin"),
        ]))
        .expect("valid");
        let keys: Vec<&str> = s.properties().map(|(k, _)| k).collect();
        assert_eq!(keys, ["sasl.mechanism", "sasl.password", "sasl.username", "security.protocol", "ssl.ca.location"]);
        assert!(!format!("{s:?}").contains("hunter2"), "values are never printed: {s:?}");
        let bad = Security::from_env(env(&[("KAFKA_SECURITY_PROTOCOL", "tls")])).expect_err("unknown protocol");
        assert!(bad[0].contains("KAFKA_SECURITY_PROTOCOL") && bad[0].contains("sasl_ssl"), "{bad:?}");
    }

    /// The build carries TLS and SCRAM (OpenSSL, vendored): librdkafka
    /// refuses `ssl` and SCRAM at client creation when built without them.
    #[test]
    fn this_build_speaks_tls_and_scram() {
        let mut c = KafkaConfig::new("127.0.0.1:1");
        c.security = Security::from_env(env(&[
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
            ("KAFKA_SASL_USERNAME", "u"),
            ("KAFKA_SASL_PASSWORD", "p"),
        ]))
        .expect("valid");
        for config in [c.producer(), c.admin()] {
            if let Err(e) = config.create::<BaseProducer>() {
                panic!("a SASL_SSL client could not be created: {e}");
            }
        }
        if let Err(e) = c.consumer("test").create::<BaseConsumer>() {
            panic!("a SASL_SSL consumer could not be created: {e}");
        }
        c.security = Security::from_env(env(&[("KAFKA_SSL_NO_SUCH_THING", "1")])).expect("passed through");
        let err = c.producer().create::<BaseProducer>().err().expect("librdkafka refuses an unknown property");
        assert!(err.to_string().contains("ssl.no.such.thing"), "{err}");
    }
}
