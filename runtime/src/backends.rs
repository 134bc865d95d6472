//! The store and bus a process runs on, chosen by configuration.

use std::sync::Arc;

use presence_backend::{Bus, MemoryBus, MemoryStore, Store};
use presence_kafka::{KafkaBus, KafkaConfig};
use presence_redis::RedisConfig;

/// Where the shared state and events live.
#[derive(Debug, Clone, Default)]
pub struct BackendConfig {
    /// `REDIS_URL`: one URL, or a comma-separated list for a Redis Cluster.
    pub redis_url: Option<String>,
    /// Key prefix in Redis.
    pub redis_prefix: Option<String>,
    /// `KAFKA_BROKERS`.
    pub kafka_brokers: Option<String>,
    /// Topic of status events.
    pub kafka_topic: Option<String>,
    /// Partitions when the topic is created.
    pub kafka_partitions: Option<i32>,
    /// Client ID (node or coordinator ID) for Kafka.
    pub client_id: String,
}

impl BackendConfig {
    /// Whether both external backends are configured.
    pub fn is_external(&self) -> bool {
        self.redis_url.is_some() && self.kafka_brokers.is_some()
    }
}

/// Connected backends.
pub struct Backends {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The bus.
    pub bus: Arc<dyn Bus>,
}

/// Connects Redis and Kafka as configured; embedded ones where not configured.
pub async fn connect(config: &BackendConfig) -> Result<Backends, String> {
    let store: Arc<dyn Store> = match &config.redis_url {
        Some(url) => {
            let mut rc = RedisConfig::parse(url);
            if let Some(p) = &config.redis_prefix {
                rc.prefix = p.clone();
            }
            presence_redis::connect(&rc).await.map_err(|e| format!("Redis at {}: {e}", redact(url)))?
        }
        None => Arc::new(MemoryStore::new()),
    };
    let bus: Arc<dyn Bus> = match &config.kafka_brokers {
        Some(brokers) => {
            let mut kc = KafkaConfig::new(brokers);
            if let Some(t) = &config.kafka_topic {
                kc.topic = t.clone();
            }
            if let Some(p) = config.kafka_partitions {
                kc.partitions = p;
            }
            kc.client_id = format!("presence-{}", config.client_id);
            Arc::new(KafkaBus::connect(kc).await.map_err(|e| format!("Kafka at {brokers}: {e}"))?)
        }
        None => Arc::new(MemoryBus::default()),
    };
    Ok(Backends { store, bus })
}

/// A Redis URL with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}://***@{}", &u[..s], &u[at + 1..]),
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:hunter2@db:6379/0"), "redis://***@db:6379/0");
        assert_eq!(redact("redis://db:6379"), "redis://db:6379");
        assert_eq!(redact("redis://u:p@a:1,redis://b:2"), "redis://***@a:1,redis://b:2");
    }
}
