//! The `ws-node` command line: flags with environment fallbacks, read as text
//! and checked together so that every mistake is reported at once (exit 64).

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use presence_model::auth::{parse_algorithm, ClaimChecks, Verifier};
use presence_model::routing::parse_vnode_set;
use presence_runtime::backends::{BackendArgs, BackendConfig};
use presence_runtime::config::{ConfigError, Problems};

use crate::NodeConfig;

/// A default as clap shows and applies it, read from [`NodeConfig::new`]:
/// the one place every node default lives.
fn default_of<T: ToString>(field: impl Fn(&NodeConfig) -> T) -> String {
    field(&NodeConfig::new("", "")).to_string()
}

/// A presence WebSocket node.
#[derive(Debug, Parser)]
#[command(name = "ws-node", version, about = "Presence WebSocket node: JWT auth, connection counts, status fan-out.")]
pub struct Args {
    /// Address to listen on (WebSocket at /socket, plus /healthz, /readyz, /metrics).
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:9000")]
    pub listen_addr: String,
    /// WebSocket URL clients are sent to; default ws://127.0.0.1:<port>/socket.
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Stable node ID; default <hostname>-<port>.
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,
    /// Relative capacity: a node with 2 gets twice the vnodes.
    #[arg(long, env = "CAPACITY", default_value_t = default_of(|c| c.capacity))]
    pub capacity: String,
    /// Vnodes pinned to this node, e.g. 0-1023,2048.
    #[arg(long, env = "ASSIGNED_VNODES")]
    pub assigned_vnodes: Option<String>,
    /// Redis and Kafka.
    #[command(flatten)]
    pub backends: BackendArgs,
    /// Connection limits of the listener.
    #[command(flatten)]
    pub listener: presence_runtime::listener::ListenerArgs,
    /// Connections one user may hold in the whole cluster.
    #[arg(long, env = "MAX_CONNECTIONS_PER_USER", default_value_t = default_of(|c| c.max_connections_per_user))]
    pub max_connections_per_user: String,
    /// Messages a client may send per second after its burst.
    #[arg(long, env = "MESSAGE_RATE", default_value_t = default_of(|c| c.message_rate))]
    pub message_rate: String,
    /// Messages a client may send at once.
    #[arg(long, env = "MESSAGE_BURST", default_value_t = default_of(|c| c.message_burst))]
    pub message_burst: String,
    /// WebSocket connections waiting for their auth message at most.
    #[arg(long, env = "MAX_PENDING_AUTH", default_value_t = default_of(|c| c.max_pending_auth))]
    pub max_pending_auth: String,
    /// HS256 secret for client tokens.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM file with the public key for RS256, ES256 or EdDSA tokens.
    #[arg(long, env = "JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<String>,
    /// JWKS file (JSON) with the verifying keys, picked by kid.
    #[arg(long, env = "JWT_JWKS")]
    pub jwt_jwks: Option<String>,
    /// Token algorithm: HS256 (default with a secret), RS256, ES256 or EdDSA.
    #[arg(long, env = "JWT_ALG")]
    pub jwt_alg: Option<String>,
    /// Required token issuer (iss), if any.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required token audience (aud), if any.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Leeway for exp and nbf, seconds.
    #[arg(long, env = "JWT_LEEWAY_SECS", default_value_t = presence_model::auth::DEFAULT_LEEWAY_SECS.to_string())]
    pub jwt_leeway_secs: String,
    /// Heartbeat interval, ms.
    #[arg(long, env = "HEARTBEAT_MS", default_value_t = default_of(|c| c.heartbeat_interval.as_millis()))]
    pub heartbeat_ms: String,
    /// Registration TTL: a node silent this long is dead, ms.
    #[arg(long, env = "NODE_TTL_MS", default_value_t = default_of(|c| c.node_ttl.as_millis()))]
    pub node_ttl_ms: String,
    /// How long a handed-off connection stays open after `reconnect`, ms.
    #[arg(long, env = "HANDOFF_TIMEOUT_MS", default_value_t = default_of(|c| c.handoff_timeout.as_millis()))]
    pub handoff_timeout_ms: String,
    /// How long a client may take to authenticate after the upgrade, ms.
    #[arg(long, env = "AUTH_TIMEOUT_MS", default_value_t = default_of(|c| c.auth_timeout.as_millis()))]
    pub auth_timeout_ms: String,
    /// Subscriptions allowed per connection.
    #[arg(long, env = "MAX_SUBSCRIPTIONS", default_value_t = default_of(|c| c.max_subscriptions))]
    pub max_subscriptions: String,
    /// Longest a write to a client may take before it is dropped as a slow consumer, ms.
    #[arg(long, env = "WRITE_TIMEOUT_MS", default_value_t = default_of(|c| c.write_timeout.as_millis()))]
    pub write_timeout_ms: String,
    /// Frames a connection may have unread (acknowledged by its pongs) before its statuses wait and conflate.
    #[arg(long, env = "OUTBOUND_WINDOW", default_value_t = default_of(|c| c.outbound_window))]
    pub outbound_window: String,
    /// Messages other than status and count (which conflate) queued per connection before a slow client is dropped.
    #[arg(long, env = "OUTBOUND_QUEUE", default_value_t = default_of(|c| c.outbound_queue))]
    pub outbound_queue: String,
    /// How often the drift reconciler compares Redis with this node's counts, ms.
    #[arg(long, env = "RECONCILE_INTERVAL_MS", default_value_t = default_of(|c| c.reconcile_interval.as_millis()))]
    pub reconcile_interval_ms: String,
    /// Follow watched users over Redis pub/sub (true) or let status cross nodes by Kafka alone (false).
    #[arg(long, env = "FAST_PATH", default_value_t = default_of(|c| c.fast_path))]
    pub fast_path: String,
    /// Users whose count may wait for Redis before a full resync is scheduled instead.
    #[arg(long, env = "MAX_PENDING_WRITES", default_value_t = default_of(|c| c.max_pending_writes))]
    pub max_pending_writes: String,
    /// What watchers see of others' lastSeen: exact, coarse (rounded down to 15 minutes) or hidden.
    #[arg(long, env = "LAST_SEEN", default_value = "exact")]
    pub last_seen: String,
    /// Watchers see a user offline only if no connection returns within this, ms (0: at once).
    #[arg(long, env = "OFFLINE_GRACE_MS", default_value_t = default_of(|c| c.views.offline_grace_ms))]
    pub offline_grace_ms: String,
    /// Whom a user may watch: open (anyone) or claims (those their token's watch claim lists).
    #[arg(long, env = "SUBSCRIBE_POLICY", default_value = "open")]
    pub subscribe_policy: String,
}

/// Everything a node needs, checked.
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Node settings.
    pub node: NodeConfig,
    /// Token verifier.
    pub verifier: Arc<Verifier>,
    /// Store and bus.
    pub backends: BackendConfig,
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// The shortest HS256 secret a node accepts.
pub const MIN_SECRET_BYTES: usize = 32;

fn verifier(a: &Args, p: &mut Problems) -> Option<Verifier> {
    let leeway = p.parse::<u64>("--jwt-leeway-secs/JWT_LEEWAY_SECS", &a.jwt_leeway_secs);
    let checks = ClaimChecks { issuer: a.jwt_issuer.clone(), audience: a.jwt_audience.clone(), leeway_secs: leeway };
    let sources = [a.jwt_secret.is_some(), a.jwt_public_key.is_some(), a.jwt_jwks.is_some()];
    match sources.iter().filter(|s| **s).count() {
        0 => {
            p.add("JWT_SECRET / JWT_PUBLIC_KEY / JWT_JWKS", "one is required to verify client tokens");
            return None;
        }
        1 => {}
        _ => {
            p.add("JWT_SECRET / JWT_PUBLIC_KEY / JWT_JWKS", "give only one");
            return None;
        }
    }
    let alg_name =
        a.jwt_alg.clone().unwrap_or_else(|| if a.jwt_secret.is_some() { "HS256".into() } else { "RS256".into() });
    let alg = match parse_algorithm(&alg_name) {
        Ok(alg) => alg,
        Err(e) => {
            p.add("--jwt-alg/JWT_ALG", e);
            return None;
        }
    };
    let result = if let Some(secret) = &a.jwt_secret {
        if alg_name != "HS256" {
            p.add("--jwt-alg/JWT_ALG", "a shared secret verifies HS256 only");
            return None;
        }
        // Anyone who guesses the secret mints tokens for every user: HS256
        // wants as many bytes as the hash (RFC 7518 3.2). Only the demo may use less.
        if secret.len() < MIN_SECRET_BYTES {
            p.add(
                "--jwt-secret/JWT_SECRET",
                format!("must be at least {MIN_SECRET_BYTES} bytes (it has {})", secret.len()),
            );
            return None;
        }
        Verifier::hs256(secret.as_bytes(), &checks)
    } else if let Some(path) = &a.jwt_public_key {
        match std::fs::read(path) {
            Ok(pem) => Verifier::public_pem(alg, &pem, &checks),
            Err(e) => {
                p.add("--jwt-public-key/JWT_PUBLIC_KEY", format!("cannot read {path}: {e}"));
                return None;
            }
        }
    } else {
        let path = a.jwt_jwks.as_deref().unwrap_or_default();
        match std::fs::read_to_string(path) {
            Ok(json) => Verifier::jwks(alg, &json, &checks),
            Err(e) => {
                p.add("--jwt-jwks/JWT_JWKS", format!("cannot read {path}: {e}"));
                return None;
            }
        }
    };
    result.map_err(|e| p.add("JWT key", e)).ok()
}

impl Args {
    /// Checks everything; every problem is in the error.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let mut p = Problems::new();
        let listen = p.parse::<SocketAddr>("--listen-addr/LISTEN_ADDR", &self.listen_addr);
        let port = listen.map_or(0, |l| l.port());
        let public_url = match &self.public_url {
            Some(u) if u.starts_with("ws://") || u.starts_with("wss://") => {
                if u.trim_end_matches('/').ends_with("/socket") {
                    u.trim_end_matches('/').to_string()
                } else {
                    format!("{}/socket", u.trim_end_matches('/'))
                }
            }
            Some(u) => {
                p.add("--public-url/PUBLIC_URL", format!("{u:?} must start with ws:// or wss://"));
                String::new()
            }
            None => format!("ws://127.0.0.1:{port}/socket"),
        };
        let node_id = self.node_id.clone().unwrap_or_else(|| format!("{}-{port}", hostname()));
        if node_id.is_empty() || node_id.len() > 128 || node_id.chars().any(|c| c.is_control() || c.is_whitespace()) {
            p.add("--node-id/NODE_ID", format!("{node_id:?} must be 1-128 characters without spaces"));
        }
        let mut node = NodeConfig::new(node_id.clone(), public_url);
        p.read_min("--capacity/CAPACITY", &self.capacity, 1, &mut node.capacity);
        if let Some(v) = &self.assigned_vnodes {
            match parse_vnode_set(v) {
                Ok(set) => node.pinned = set,
                Err(e) => p.add("--assigned-vnodes/ASSIGNED_VNODES", e),
            }
        }
        p.read_ms("--heartbeat-ms/HEARTBEAT_MS", &self.heartbeat_ms, 1, &mut node.heartbeat_interval);
        p.read_ms("--node-ttl-ms/NODE_TTL_MS", &self.node_ttl_ms, 1, &mut node.node_ttl);
        if node.node_ttl <= node.heartbeat_interval {
            p.add("--node-ttl-ms/NODE_TTL_MS", "must be longer than the heartbeat interval");
        }
        p.read_ms("--handoff-timeout-ms/HANDOFF_TIMEOUT_MS", &self.handoff_timeout_ms, 1, &mut node.handoff_timeout);
        p.read_ms("--auth-timeout-ms/AUTH_TIMEOUT_MS", &self.auth_timeout_ms, 1, &mut node.auth_timeout);
        p.read_ms("--write-timeout-ms/WRITE_TIMEOUT_MS", &self.write_timeout_ms, 1, &mut node.write_timeout);
        p.read_ms(
            "--reconcile-interval-ms/RECONCILE_INTERVAL_MS",
            &self.reconcile_interval_ms,
            1,
            &mut node.reconcile_interval,
        );
        p.read_min("--max-subscriptions/MAX_SUBSCRIPTIONS", &self.max_subscriptions, 1, &mut node.max_subscriptions);
        p.read_min("--outbound-queue/OUTBOUND_QUEUE", &self.outbound_queue, 1, &mut node.outbound_queue);
        if let Some(on) = p.parse::<bool>("--fast-path/FAST_PATH", &self.fast_path) {
            node.fast_path = on;
        }
        p.read_min("--outbound-window/OUTBOUND_WINDOW", &self.outbound_window, 1, &mut node.outbound_window);
        p.read_min(
            "--max-pending-writes/MAX_PENDING_WRITES",
            &self.max_pending_writes,
            1,
            &mut node.max_pending_writes,
        );
        node.http = self.listener.check(&mut p);
        p.read_min("--max-pending-auth/MAX_PENDING_AUTH", &self.max_pending_auth, 1, &mut node.max_pending_auth);
        p.read_min(
            "--max-connections-per-user/MAX_CONNECTIONS_PER_USER",
            &self.max_connections_per_user,
            1,
            &mut node.max_connections_per_user,
        );
        p.read_min("--message-rate/MESSAGE_RATE", &self.message_rate, 1, &mut node.message_rate);
        p.read_min("--message-burst/MESSAGE_BURST", &self.message_burst, 1, &mut node.message_burst);
        match presence_model::LastSeenPolicy::parse(&self.last_seen) {
            Ok(v) => node.views.last_seen = v,
            Err(e) => p.add("--last-seen/LAST_SEEN", e),
        }
        p.read_min("--offline-grace-ms/OFFLINE_GRACE_MS", &self.offline_grace_ms, 0, &mut node.views.offline_grace_ms);
        match crate::config::SubscribePolicy::parse(&self.subscribe_policy) {
            Ok(v) => node.subscribe_policy = v,
            Err(e) => p.add("--subscribe-policy/SUBSCRIBE_POLICY", e),
        }
        let backends = self.backends.check(&mut p, &node_id);
        let verifier = verifier(self, &mut p);
        p.finish()?;
        let listen = listen.ok_or_else(|| ConfigError(vec!["--listen-addr/LISTEN_ADDR: unreadable".into()]))?;
        Ok(Settings {
            listen,
            node,
            verifier: Arc::new(verifier.ok_or_else(|| ConfigError(vec!["JWT: no verifier".into()]))?),
            backends,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses flags, then clears what the test process's environment may have
    /// filled in (scripts/test exports REDIS_URL and KAFKA_BROKERS), so only the
    /// flags given count.
    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["ws-node"];
        v.extend_from_slice(extra);
        let mut a = Args::try_parse_from(v).expect("parses");
        let given = |flag: &str| extra.contains(&flag);
        for (flag, field) in [
            ("--redis-url", &mut a.backends.redis_url),
            ("--kafka-brokers", &mut a.backends.kafka_brokers),
            ("--jwt-secret", &mut a.jwt_secret),
            ("--jwt-public-key", &mut a.jwt_public_key),
            ("--jwt-jwks", &mut a.jwt_jwks),
            ("--jwt-alg", &mut a.jwt_alg),
            ("--jwt-issuer", &mut a.jwt_issuer),
            ("--jwt-audience", &mut a.jwt_audience),
            ("--assigned-vnodes", &mut a.assigned_vnodes),
            ("--public-url", &mut a.public_url),
            ("--node-id", &mut a.node_id),
        ] {
            if !given(flag) {
                *field = None;
            }
        }
        a
    }

    #[test]
    fn every_problem_is_reported_and_secrets_are_not() {
        let a = args(&[
            "--capacity",
            "zero",
            "--listen-addr",
            "nowhere",
            "--public-url",
            "http://x",
            "--assigned-vnodes",
            "9999",
            "--jwt-secret",
            "s3cr3t-value",
            "--jwt-alg",
            "RS256",
        ]);
        let e = a.settings().err().expect("invalid");
        let text = e.to_string();
        for needle in
            ["CAPACITY", "LISTEN_ADDR", "PUBLIC_URL", "ASSIGNED_VNODES", "REDIS_URL", "KAFKA_BROKERS", "JWT_ALG"]
        {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(!text.contains("s3cr3t-value"), "secret leaked:\n{text}");
    }

    #[test]
    fn defaults_come_from_the_config_type() {
        let a = args(&[]);
        let d = NodeConfig::new("", "");
        assert_eq!(a.heartbeat_ms, d.heartbeat_interval.as_millis().to_string());
        assert_eq!(a.node_ttl_ms, d.node_ttl.as_millis().to_string());
        assert_eq!(a.outbound_queue, d.outbound_queue.to_string());
        assert_eq!(a.max_pending_writes, d.max_pending_writes.to_string());
    }

    #[test]
    fn a_short_secret_is_refused() {
        let a = args(&["--jwt-secret", "short", "--redis-url", "redis://r", "--kafka-brokers", "k:9092"]);
        let text = a.settings().err().expect("refused").to_string();
        assert!(text.contains("at least 32 bytes"), "{text}");
        assert!(!text.contains("short"), "the secret is not echoed: {text}");
    }

    #[test]
    fn a_good_configuration() {
        let a = args(&[
            "--listen-addr",
            "127.0.0.1:9100",
            "--node-id",
            "n1",
            "--redis-url",
            "redis://127.0.0.1:6379",
            "--kafka-brokers",
            "127.0.0.1:9092",
            "--jwt-secret",
            "0123456789abcdef0123456789abcdef",
            "--assigned-vnodes",
            "0-9",
            "--public-url",
            "ws://h:1",
        ]);
        let s = a.settings().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.node.node_id, "n1");
        assert_eq!(s.node.public_url, "ws://h:1/socket");
        assert_eq!(s.node.pinned.len(), 10);
        assert!(s.backends.is_external());
    }
}
