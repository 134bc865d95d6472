//! The `coordinator` command line: flags with environment fallbacks, checked
//! together so that every mistake is reported at once (exit 64).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use presence_runtime::backends::{BackendArgs, BackendConfig};
use presence_runtime::config::{ConfigError, Problems};

use crate::CoordinatorConfig;

/// The presence coordinator.
#[derive(Debug, Parser)]
#[command(name = "coordinator", version, about = "Presence coordinator: routing, vnode assignment, presence API.")]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: String,
    /// Unique coordinator ID (the leader-lease holder name); default random.
    #[arg(long, env = "COORDINATOR_ID")]
    pub coordinator_id: Option<String>,
    /// Redis and Kafka.
    #[command(flatten)]
    pub backends: BackendArgs,
    /// Control-loop interval, ms.
    #[arg(long, env = "TICK_MS", default_value = "500")]
    pub tick_ms: String,
    /// Leader lease TTL, ms.
    #[arg(long, env = "LEASE_TTL_MS", default_value = "5000")]
    pub lease_ttl_ms: String,
    /// Load-balancing hysteresis: act above (1 + epsilon) x fair share.
    #[arg(long, env = "REBALANCE_EPSILON", default_value = "0.1")]
    pub rebalance_epsilon: String,
    /// Load balancing acts only when a node carries at least this many connections above its share.
    #[arg(long, env = "REBALANCE_MIN_LOAD_GAP", default_value = "100")]
    pub rebalance_min_load_gap: String,
    /// Most vnodes moved per control tick by balancing.
    #[arg(long, env = "REBALANCE_MAX_MOVES", default_value = "512")]
    pub rebalance_max_moves: String,
}

/// Everything a coordinator needs, checked.
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Coordinator settings.
    pub coordinator: CoordinatorConfig,
    /// Store and bus.
    pub backends: BackendConfig,
}

impl Args {
    /// Checks everything; every problem is in the error.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let mut p = Problems::new();
        let listen = p.parse::<SocketAddr>("--listen-addr/LISTEN_ADDR", &self.listen_addr);
        let mut c = CoordinatorConfig::new();
        if let Some(id) = &self.coordinator_id {
            c.id = id.clone();
        }
        c.tick = Duration::from_millis(p.parse_min("--tick-ms/TICK_MS", &self.tick_ms, 10u64).unwrap_or(500));
        c.lease_ttl = Duration::from_millis(
            p.parse_min("--lease-ttl-ms/LEASE_TTL_MS", &self.lease_ttl_ms, 100u64).unwrap_or(5000),
        );
        if c.lease_ttl <= c.tick {
            p.add("--lease-ttl-ms/LEASE_TTL_MS", "must be longer than the tick");
        }
        c.policy.epsilon =
            p.parse_min("--rebalance-epsilon/REBALANCE_EPSILON", &self.rebalance_epsilon, 0.0f64).unwrap_or(0.1);
        c.policy.max_moves =
            p.parse_min("--rebalance-max-moves/REBALANCE_MAX_MOVES", &self.rebalance_max_moves, 1usize).unwrap_or(512);
        c.policy.min_load_gap = p
            .parse::<u64>("--rebalance-min-load-gap/REBALANCE_MIN_LOAD_GAP", &self.rebalance_min_load_gap)
            .unwrap_or(100);
        let backends = self.backends.check(&mut p, &c.id);
        p.finish()?;
        Ok(Settings {
            listen: listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080))),
            backends,
            coordinator: c,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_at_once() {
        let a = Args::try_parse_from(["coordinator", "--tick-ms", "x", "--rebalance-epsilon=-1", "--listen-addr", "?"])
            .expect("parses");
        // Only the flags given count, not what the test environment exports.
        let backends = BackendArgs { redis_url: None, kafka_brokers: None, ..a.backends.clone() };
        let a = Args { backends, coordinator_id: None, ..a };
        let text = a.settings().err().expect("invalid").to_string();
        for needle in ["TICK_MS", "REBALANCE_EPSILON", "LISTEN_ADDR", "REDIS_URL", "KAFKA_BROKERS"] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
