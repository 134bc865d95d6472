//! The store and bus a process runs on, chosen by configuration.

use std::sync::Arc;

use presence_backend::{Bus, MemoryBus, MemoryStore, Store};
use presence_kafka::{KafkaBus, KafkaConfig, Security};
use presence_redis::RedisConfig;

/// The Redis and Kafka flags both services take (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct BackendArgs {
    /// Redis URL, or a comma-separated list of Redis Cluster nodes.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Key prefix in Redis.
    #[arg(long, env = "REDIS_PREFIX", default_value_t = RedisConfig::new(Vec::new()).prefix)]
    pub redis_prefix: String,
    /// For rediss:// URLs: PEM file of the CA that signed Redis's certificate (default: the system trust store).
    #[arg(long, env = "REDIS_TLS_CA")]
    pub redis_tls_ca: Option<std::path::PathBuf>,
    /// For rediss:// URLs: PEM client certificate, when Redis asks for one.
    #[arg(long, env = "REDIS_TLS_CERT")]
    pub redis_tls_cert: Option<std::path::PathBuf>,
    /// For rediss:// URLs: PEM key of the client certificate.
    #[arg(long, env = "REDIS_TLS_KEY")]
    pub redis_tls_key: Option<std::path::PathBuf>,
    /// Kafka bootstrap brokers, host:port[,host:port].
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Topic of status events.
    #[arg(long, env = "KAFKA_TOPIC", default_value_t = KafkaConfig::new("").topic)]
    pub kafka_topic: String,
    /// Partitions of the topic when it is created at start.
    #[arg(long, env = "KAFKA_PARTITIONS", default_value_t = KafkaConfig::new("").partitions.to_string())]
    pub kafka_partitions: String,
    /// How long a fetch of the event consumer may wait at the broker for
    /// new events, ms (`fetch.wait.max.ms`, 1-1000). Kafka and Redpanda
    /// answer a waiting fetch as soon as events arrive, so a long wait only
    /// saves idle fetches; a broker that holds every fetch for the whole
    /// wait (tansu) adds it to every event's latency.
    #[arg(long, env = "KAFKA_FETCH_WAIT_MS", default_value_t = KafkaConfig::new("").fetch_wait.as_millis().to_string())]
    pub kafka_fetch_wait_ms: String,
    /// How long the event producer waits to fill a batch, ms (`linger.ms`,
    /// 0-1000). Every event costs the broker and the node less in a larger
    /// batch, and waits up to this long on the bus; live status does not
    /// wait for it when the fast path is on.
    #[arg(long, env = "KAFKA_LINGER_MS", default_value_t = KafkaConfig::new("").linger.as_millis().to_string())]
    pub kafka_linger_ms: String,
}

/// The longest fetch wait allowed: a consumer that waits longer could not
/// see a broker's answer in time for its one-second health probe.
const MAX_FETCH_WAIT_MS: u64 = 1000;

/// The longest producer linger allowed: events on the bus are what watchers
/// fall back on without the fast path, so a second is already very late.
const MAX_LINGER_MS: u64 = 1000;

impl BackendArgs {
    /// Checks the flags (recording problems in `p`); `client_id` names this process to Kafka.
    pub fn check(&self, p: &mut crate::config::Problems, client_id: &str) -> BackendConfig {
        let why = "the services share their state and events there; `presence demo` runs without it";
        let redis = p.require("--redis-url/REDIS_URL", self.redis_url.as_deref(), why);
        if let Some(r) = redis {
            if !r.split(',').all(|u| u.trim().starts_with("redis://") || u.trim().starts_with("rediss://")) {
                p.add("--redis-url/REDIS_URL", "every URL must start with redis:// or rediss://");
            }
        }
        if self.redis_tls_cert.is_some() != self.redis_tls_key.is_some() {
            p.add("--redis-tls-cert/REDIS_TLS_CERT", "a client certificate and its key (REDIS_TLS_KEY) go together");
        }
        let redis_tls = presence_redis::TlsFiles {
            ca: self.redis_tls_ca.clone(),
            cert: self.redis_tls_cert.clone(),
            key: self.redis_tls_key.clone(),
        };
        let kafka = p.require("--kafka-brokers/KAFKA_BROKERS", self.kafka_brokers.as_deref(), why);
        let kafka_security = Security::from_env(std::env::vars()).unwrap_or_else(|problems| {
            for problem in problems {
                p.add("Kafka security", problem);
            }
            Security::default()
        });
        let partitions = p.parse_min("--kafka-partitions/KAFKA_PARTITIONS", &self.kafka_partitions, 1i32);
        let fetch_wait = p.parse_range(
            "--kafka-fetch-wait-ms/KAFKA_FETCH_WAIT_MS",
            &self.kafka_fetch_wait_ms,
            1u64,
            MAX_FETCH_WAIT_MS,
        );
        let linger = p.parse_range("--kafka-linger-ms/KAFKA_LINGER_MS", &self.kafka_linger_ms, 0u64, MAX_LINGER_MS);
        BackendConfig {
            redis_url: redis.map(str::to_string),
            redis_prefix: Some(self.redis_prefix.clone()),
            redis_tls,
            kafka_brokers: kafka.map(str::to_string),
            kafka_topic: Some(self.kafka_topic.clone()),
            kafka_partitions: partitions,
            kafka_fetch_wait: fetch_wait.map(std::time::Duration::from_millis),
            kafka_linger: linger.map(std::time::Duration::from_millis),
            kafka_security,
            client_id: client_id.to_string(),
        }
    }
}

/// Connects the backends and binds the listener for a service, or exits:
/// 69 (`EX_UNAVAILABLE`) when a backend cannot be set up, 71 (`EX_OSERR`) when
/// the address cannot be bound.
pub async fn connect_and_bind(
    config: &BackendConfig,
    listen: std::net::SocketAddr,
) -> (Backends, tokio::net::TcpListener) {
    let backends = match connect(config).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(69);
        }
    };
    (backends, bind_or_exit(listen))
}

/// Binds `addr`, or exits with 71 and says why.
pub fn bind_or_exit(addr: std::net::SocketAddr) -> tokio::net::TcpListener {
    presence_http::bind(addr).unwrap_or_else(|e| {
        eprintln!("error: cannot listen on {addr}: {e}");
        std::process::exit(71);
    })
}

/// Where the shared state and events live.
#[derive(Debug, Clone, Default)]
pub struct BackendConfig {
    /// `REDIS_URL`: one URL, or a comma-separated list for a Redis Cluster.
    pub redis_url: Option<String>,
    /// Key prefix in Redis.
    pub redis_prefix: Option<String>,
    /// TLS files for `rediss://`.
    pub redis_tls: presence_redis::TlsFiles,
    /// `KAFKA_BROKERS`.
    pub kafka_brokers: Option<String>,
    /// Topic of status events.
    pub kafka_topic: Option<String>,
    /// Partitions when the topic is created.
    pub kafka_partitions: Option<i32>,
    /// The consumer's fetch wait (`None`: the default).
    pub kafka_fetch_wait: Option<std::time::Duration>,
    /// The event producer's batching delay (`None`: the default).
    pub kafka_linger: Option<std::time::Duration>,
    /// TLS and SASL settings for Kafka (`KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_*`, `KAFKA_SSL_*`).
    pub kafka_security: Security,
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
            rc.tls = config.redis_tls.clone();
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
            if let Some(w) = config.kafka_fetch_wait {
                kc.fetch_wait = w;
            }
            if let Some(l) = config.kafka_linger {
                kc.linger = l;
            }
            kc.client_id = format!("presence-{}", config.client_id);
            kc.security = config.kafka_security.clone();
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
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        backends: BackendArgs,
    }

    fn check(args: &[&str]) -> (BackendConfig, Result<(), String>) {
        let a =
            Args::parse_from(["test", "--redis-url", "redis://r:6379", "--kafka-brokers", "k:9092"].iter().chain(args));
        let mut p = crate::config::Problems::new();
        let c = a.backends.check(&mut p, "n");
        (c, p.finish().map_err(|e| e.to_string()))
    }

    #[test]
    fn the_fetch_wait_is_read_and_bounded() {
        let (c, ok) = check(&[]);
        assert!(ok.is_ok());
        assert_eq!(c.kafka_fetch_wait, Some(KafkaConfig::new("").fetch_wait), "the default");
        let (c, ok) = check(&["--kafka-fetch-wait-ms", "250"]);
        assert!(ok.is_ok());
        assert_eq!(c.kafka_fetch_wait, Some(std::time::Duration::from_millis(250)));
        for bad in ["0", "1001", "soon"] {
            let (_, ok) = check(&["--kafka-fetch-wait-ms", bad]);
            assert!(ok.is_err_and(|e| e.contains("KAFKA_FETCH_WAIT_MS")), "{bad} is refused");
        }
    }

    #[test]
    fn the_linger_is_read_and_bounded() {
        let (c, ok) = check(&[]);
        assert!(ok.is_ok());
        assert_eq!(c.kafka_linger, Some(KafkaConfig::new("").linger), "the default");
        for (given, ms) in [("0", 0), ("1", 1), ("1000", 1000)] {
            let (c, ok) = check(&["--kafka-linger-ms", given]);
            assert!(ok.is_ok(), "{given} is accepted");
            assert_eq!(c.kafka_linger, Some(std::time::Duration::from_millis(ms)));
        }
        for bad in ["0.5", "1001", "later"] {
            let (_, ok) = check(&["--kafka-linger-ms", bad]);
            assert!(ok.is_err_and(|e| e.contains("KAFKA_LINGER_MS")), "{bad} is refused");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:hunter2@db:6379/0"), "redis://***@db:6379/0");
        assert_eq!(redact("redis://db:6379"), "redis://db:6379");
        assert_eq!(redact("redis://u:p@a:1,redis://b:2"), "redis://***@a:1,redis://b:2");
    }
}
