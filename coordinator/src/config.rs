//! What a coordinator is told at start.

use std::time::Duration;

use crate::rebalance::Policy;

/// A coordinator's settings.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The coordinator's name (`COORDINATOR_ID`), in logs and `/readyz`. Two
    /// replicas may share it: the lease holder name adds a per-process run ID.
    pub id: String,
    /// How often the control loop runs (membership, rebalance, dead nodes).
    pub tick: std::time::Duration,
    /// Leader lease TTL; a leader silent this long is replaced.
    pub lease_ttl: Duration,
    /// The fast failure detector (`crate::control`): a node whose last
    /// heartbeat is this old and whose address refuses connections is gone,
    /// without waiting for its registration's TTL. Longer than the nodes'
    /// heartbeat interval; zero turns it off.
    pub fast_death: Duration,
    /// Longest wait of a `/route` request that reports its user's node
    /// unreachable (`crate::suspects`); it is answered with the same route
    /// when nothing moved by then. Zero: such requests are answered at once.
    pub route_wait: Duration,
    /// Most `/route` requests waiting at once; more are answered at once.
    pub route_waiters: usize,
    /// Periodic routing-epoch check of the cache (notices are the fast path).
    pub table_poll: Duration,
    /// The rebalancing policy.
    pub policy: Policy,
    /// Limits of each HTTP listener (public and admin count separately).
    pub http: presence_http::Limits,
    /// The admin API key (`ADMIN_API_KEY`); without one the admin listener
    /// must be on loopback (`crate::admin`).
    pub admin_key: Option<crate::admin::AdminKey>,
}

impl CoordinatorConfig {
    /// Defaults with a random ID.
    pub fn new() -> Self {
        Self {
            id: format!("coordinator-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            tick: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(5),
            fast_death: Duration::from_millis(1500),
            route_wait: Duration::from_secs(3),
            route_waiters: 100_000,
            table_poll: Duration::from_secs(1),
            policy: Policy::default(),
            http: presence_http::Limits::default(),
            admin_key: None,
        }
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self::new()
    }
}
