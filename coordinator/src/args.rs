//! The `coordinator` command line: flags with environment fallbacks, checked
//! together so that every mistake is reported at once (exit 64).

use std::net::SocketAddr;

use clap::Parser;
use presence_runtime::backends::{BackendArgs, BackendConfig};
use presence_runtime::config::{ConfigError, Problems};

use crate::admin::AdminKey;
use crate::CoordinatorConfig;

/// A default as clap shows and applies it, read from [`CoordinatorConfig`]:
/// the one place every default lives.
fn default_of<T: ToString>(field: impl Fn(&CoordinatorConfig) -> T) -> String {
    field(&CoordinatorConfig::default()).to_string()
}

/// The presence coordinator.
#[derive(Debug, Parser)]
#[command(name = "coordinator", version, about = "Presence coordinator: routing, vnode assignment, presence API.")]
pub struct Args {
    /// Public address: /route, /healthz, /readyz (and /presence with an API key).
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: String,
    /// Admin address: dashboard, /nodes, /ring, /metrics, /presence. Beyond loopback only with an API key.
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:8081")]
    pub admin_addr: String,
    /// Key that admin requests must carry (Bearer, or Basic password); at least 16 bytes.
    #[arg(long, env = "ADMIN_API_KEY", hide_env_values = true)]
    pub admin_api_key: Option<String>,
    /// Unique coordinator ID (the leader-lease holder name); default random.
    #[arg(long, env = "COORDINATOR_ID")]
    pub coordinator_id: Option<String>,
    /// Redis and Kafka.
    #[command(flatten)]
    pub backends: BackendArgs,
    /// Connection limits of the listener.
    #[command(flatten)]
    pub listener: presence_runtime::listener::ListenerArgs,
    /// Control-loop interval, ms.
    #[arg(long, env = "TICK_MS", default_value_t = default_of(|c| c.tick.as_millis()))]
    pub tick_ms: String,
    /// Leader lease TTL, ms.
    #[arg(long, env = "LEASE_TTL_MS", default_value_t = default_of(|c| c.lease_ttl.as_millis()))]
    pub lease_ttl_ms: String,
    /// A node silent this long whose address refuses connections is dead
    /// before its TTL, ms (longer than HEARTBEAT_MS; 0: off).
    #[arg(long, env = "FAST_DEATH_MS", default_value_t = default_of(|c| c.fast_death.as_millis()))]
    pub fast_death_ms: String,
    /// Longest wait of a `/route` request that reports its user's node
    /// unreachable, until the user's vnode moves, ms (0: answer at once).
    #[arg(long, env = "ROUTE_WAIT_MS", default_value_t = default_of(|c| c.route_wait.as_millis()))]
    pub route_wait_ms: String,
    /// Most such `/route` requests waiting at once.
    #[arg(long, env = "ROUTE_WAITERS", default_value_t = default_of(|c| c.route_waiters))]
    pub route_waiters: String,
    /// Load-balancing hysteresis: act above (1 + epsilon) x fair share.
    #[arg(long, env = "REBALANCE_EPSILON", default_value_t = default_of(|c| c.policy.epsilon))]
    pub rebalance_epsilon: String,
    /// Load balancing acts only when a node carries at least this many connections above its share.
    #[arg(long, env = "REBALANCE_MIN_LOAD_GAP", default_value_t = default_of(|c| c.policy.min_load_gap))]
    pub rebalance_min_load_gap: String,
    /// Most vnodes moved per control tick by balancing.
    #[arg(long, env = "REBALANCE_MAX_MOVES", default_value_t = default_of(|c| c.policy.max_moves))]
    pub rebalance_max_moves: String,
}

/// Everything a coordinator needs, checked.
pub struct Settings {
    /// Where to listen for clients.
    pub listen: SocketAddr,
    /// Where to listen for the operator and app backends.
    pub admin: SocketAddr,
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
        let admin = p.parse::<SocketAddr>("--admin-addr/ADMIN_ADDR", &self.admin_addr);
        let mut c = CoordinatorConfig::new();
        if let Some(key) = &self.admin_api_key {
            match AdminKey::new(key) {
                Ok(k) => c.admin_key = Some(k),
                Err(e) => p.add("--admin-api-key/ADMIN_API_KEY", e),
            }
        }
        if let Some(a) = admin {
            if !a.ip().is_loopback() && self.admin_api_key.is_none() {
                let why = "the admin listener shows everyone's presence; beyond loopback it needs ADMIN_API_KEY";
                p.add("--admin-addr/ADMIN_ADDR", why);
            }
            if listen.is_some_and(|l| l.port() == a.port() && a.port() != 0) {
                p.add("--admin-addr/ADMIN_ADDR", "must be another port than LISTEN_ADDR");
            }
        }
        if let Some(id) = &self.coordinator_id {
            c.id = id.clone();
        }
        // A value that does not parse is reported; the default stays in its place until `finish` fails.
        p.read_ms("--tick-ms/TICK_MS", &self.tick_ms, 10, &mut c.tick);
        p.read_ms("--lease-ttl-ms/LEASE_TTL_MS", &self.lease_ttl_ms, 100, &mut c.lease_ttl);
        p.read_ms("--fast-death-ms/FAST_DEATH_MS", &self.fast_death_ms, 0, &mut c.fast_death);
        p.read_ms("--route-wait-ms/ROUTE_WAIT_MS", &self.route_wait_ms, 0, &mut c.route_wait);
        if c.route_wait > std::time::Duration::from_secs(8) {
            p.add("--route-wait-ms/ROUTE_WAIT_MS", "at most 8000: clients give up on a request after 10 s");
        }
        p.read_min("--route-waiters/ROUTE_WAITERS", &self.route_waiters, 0, &mut c.route_waiters);
        if c.lease_ttl <= c.tick {
            p.add("--lease-ttl-ms/LEASE_TTL_MS", "must be longer than the tick");
        }
        p.read_min("--rebalance-epsilon/REBALANCE_EPSILON", &self.rebalance_epsilon, 0.0, &mut c.policy.epsilon);
        p.read_min("--rebalance-max-moves/REBALANCE_MAX_MOVES", &self.rebalance_max_moves, 1, &mut c.policy.max_moves);
        let gap = "--rebalance-min-load-gap/REBALANCE_MIN_LOAD_GAP";
        p.read_min(gap, &self.rebalance_min_load_gap, 0, &mut c.policy.min_load_gap);
        c.http = self.listener.check(&mut p);
        let backends = self.backends.check(&mut p, &c.id);
        p.finish()?;
        let unreadable = |flag: &str| ConfigError(vec![format!("{flag}: unreadable")]);
        let listen = listen.ok_or_else(|| unreadable("--listen-addr/LISTEN_ADDR"))?;
        let admin = admin.ok_or_else(|| unreadable("--admin-addr/ADMIN_ADDR"))?;
        Ok(Settings { listen, admin, backends, coordinator: c })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_config_type() {
        let a = Args::try_parse_from(["coordinator"]).expect("parses");
        let d = CoordinatorConfig::default();
        assert_eq!(a.tick_ms, d.tick.as_millis().to_string());
        assert_eq!(a.lease_ttl_ms, d.lease_ttl.as_millis().to_string());
        assert_eq!(a.rebalance_epsilon.parse::<f64>().ok(), Some(d.policy.epsilon));
        assert_eq!(a.rebalance_max_moves, d.policy.max_moves.to_string());
    }

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

    /// Only what these flags say, whatever the test environment exports.
    fn parsed(flags: &[&str]) -> Args {
        let a = Args::try_parse_from([&["coordinator"], flags].concat()).expect("parses");
        let backends = BackendArgs { redis_url: None, kafka_brokers: None, ..a.backends.clone() };
        let key = flags.iter().position(|f| *f == "--admin-api-key").map(|i| flags[i + 1].to_string());
        Args { backends, admin_api_key: key, ..a }
    }

    fn problems(flags: &[&str]) -> String {
        match parsed(flags).settings() {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_route_wait_stays_within_the_clients_request_timeout() {
        assert!(problems(&["--route-wait-ms", "9000"]).contains("ROUTE_WAIT_MS"));
        assert!(!problems(&["--route-wait-ms", "0", "--route-waiters", "10"]).contains("ROUTE_"));
        assert!(problems(&["--route-waiters", "x"]).contains("ROUTE_WAITERS"));
    }

    #[test]
    fn the_admin_listener_leaves_loopback_only_with_a_key() {
        assert!(!problems(&[]).contains("ADMIN"), "loopback by default: {}", problems(&[]));
        let open = problems(&["--admin-addr", "0.0.0.0:8081"]);
        assert!(open.contains("needs ADMIN_API_KEY"), "{open}");
        let keyed = problems(&["--admin-addr", "0.0.0.0:8081", "--admin-api-key", "0123456789abcdef0123"]);
        assert!(!keyed.contains("ADMIN"), "{keyed}");
        let weak = problems(&["--admin-api-key", "secret"]);
        assert!(weak.contains("at least 16 bytes"), "{weak}");
        let same = problems(&["--listen-addr", "127.0.0.1:9000", "--admin-addr", "127.0.0.1:9000"]);
        assert!(same.contains("another port"), "{same}");
    }
}
