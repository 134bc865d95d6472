//! The coordinator: routes user IDs to ws-nodes, assigns vnodes to nodes,
//! counts dead nodes out, and serves presence and the cluster view.
//!
//! * [`args`]: the `coordinator` command line and its checks.
//! * [`config`]: what a coordinator is told at start.
//! * [`api`]: the HTTP API (`docs/protocol.md`), served from the cached table.
//! * [`admin`]: which listener serves what, and the admin API key.
//! * [`views`]: the node list, the ring and the dashboard snapshot, rendered
//!   for the API and the dashboard alike.
//! * [`control`]: the leader's loop: membership, rebalancing, dead nodes.
//! * [`dashboard`]: the live dashboard page and its event stream.
//! * [`links`]: the leader's kept-alive connections to the nodes, whose end
//!   tells a killed node at once.
//! * [`probe`]: whether a process listens at a node's address.
//! * [`rebalance`]: the pure vnode assignment policy.
//! * [`suspects`]: nodes clients could not reach, and the `/route` requests
//!   waiting for their users to move.
//! * [`metrics`]: Prometheus metrics.
//!
//! Several coordinators may run against one store; they all serve the API,
//! and the one holding the leader lease is the only one that changes the
//! table (by compare-and-set on the epoch).

pub mod admin;
pub mod api;
pub mod args;
pub mod config;
pub mod control;
pub mod dashboard;
pub mod links;
pub mod metrics;
pub mod probe;
pub mod rebalance;
pub mod suspects;
pub mod views;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use presence_backend::{Bus, Store, TableCache};
use presence_model::NodeRecord;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use admin::Listener;
pub use config::CoordinatorConfig;

/// A running coordinator's shared state.
pub struct Coordinator {
    /// Settings.
    pub config: CoordinatorConfig,
    /// The leader-lease holder name: the configured ID plus a run ID unique
    /// to this process, so two replicas started with one `COORDINATOR_ID`
    /// never both believe they lead.
    pub holder: String,
    /// Shared cluster state.
    pub store: Arc<dyn Store>,
    /// Where leave events for dead nodes go.
    pub bus: Arc<dyn Bus>,
    /// Cached routing table: every `/route` reads this, never the store.
    pub table: TableCache,
    /// Live nodes as of the last control tick (for `/nodes`).
    nodes: RwLock<Arc<Vec<NodeRecord>>>,
    /// Unique users and the day's peak as of the last control tick (for the dashboard).
    activity: RwLock<presence_backend::Activity>,
    /// This coordinator holds the leader lease.
    leader: AtomicBool,
    /// The last store call of the control loop succeeded.
    store_ok: AtomicBool,
    /// The control loop panicked and waits to be restarted.
    control_down: AtomicBool,
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// Nodes clients reported unreachable; requests waiting for a move.
    pub suspects: suspects::Suspects,
    /// The leader's links to the nodes.
    pub links: links::Links,
    /// Feed of the live dashboard.
    pub dashboard: dashboard::Dashboard,
    /// The public listener's connection limits.
    pub gate: Arc<presence_http::Gate>,
    /// The admin listener's, counted apart so that a flood of clients
    /// cannot lock the operator out.
    pub admin_gate: Arc<presence_http::Gate>,
}

impl Coordinator {
    /// Builds a coordinator (no tasks yet; see [`run`]).
    pub fn new(config: CoordinatorConfig, store: Arc<dyn Store>, bus: Arc<dyn Bus>) -> Arc<Self> {
        let holder = format!("{}/{}", config.id, uuid::Uuid::new_v4().simple());
        let metrics = metrics::Metrics::new();
        let gate = |name| {
            presence_http::Gate::new(config.http.clone(), presence_http::HttpMetrics::new(&metrics.registry, name))
        };
        let (public_gate, admin_gate) = (gate("public"), gate("admin"));
        let store = presence_backend::Timed::wrap(store, presence_http::metric::observer(&metrics.store_seconds));
        let suspects = suspects::Suspects::new(config.route_waiters, metrics.route_waiting.clone());
        Arc::new(Self {
            gate: public_gate,
            admin_gate,
            holder,
            config,
            store,
            bus,
            table: TableCache::new(),
            nodes: RwLock::new(Arc::new(Vec::new())),
            activity: RwLock::default(),
            leader: AtomicBool::new(false),
            store_ok: AtomicBool::new(false),
            control_down: AtomicBool::new(false),
            suspects,
            links: links::Links::default(),
            metrics,
            dashboard: dashboard::Dashboard::default(),
        })
    }

    /// Live nodes as of the last tick.
    pub fn nodes(&self) -> Arc<Vec<NodeRecord>> {
        // Plain data behind the lock; a poisoned lock still holds a whole Arc.
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Unique users and the day's peak as of the last tick.
    pub fn activity(&self) -> presence_backend::Activity {
        *self.activity.read().unwrap_or_else(|p| p.into_inner())
    }

    fn set_activity(&self, a: presence_backend::Activity) {
        *self.activity.write().unwrap_or_else(|p| p.into_inner()) = a;
    }

    /// The cluster's activity now: live totals from the nodes' heartbeats,
    /// unique users and the peak from `activity`.
    pub fn stats(&self, a: presence_backend::Activity) -> presence_model::api::StatsView {
        let nodes = self.nodes();
        presence_model::api::StatsView {
            connections: nodes.iter().map(|n| n.connections).sum(),
            users: nodes.iter().map(|n| n.users).sum(),
            unique_users_hour: a.unique_users_hour,
            unique_users_day: a.unique_users_day,
            peak_connections_day: a.peak_connections_day,
        }
    }

    fn set_nodes(&self, nodes: Vec<NodeRecord>) {
        self.metrics.live_nodes.set(nodes.len() as i64);
        *self.nodes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(nodes);
    }

    /// Whether this coordinator is the leader.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Whether the control loop is down (it panicked; restarting).
    pub fn control_down(&self) -> bool {
        self.control_down.load(Ordering::Relaxed)
    }

    /// Whether the store answered the last control tick.
    pub fn store_ok(&self) -> bool {
        self.store_ok.load(Ordering::Relaxed)
    }
}

/// The coordinator's two listeners ([`admin`]).
pub struct Listeners {
    /// Clients: `/route` and health.
    pub public: TcpListener,
    /// The operator and app backends: everything.
    pub admin: TcpListener,
}

/// Serves the API on both listeners and runs the control loop and table
/// refresh until `shutdown`; gives the leader lease up on the way out.
pub async fn run(listeners: Listeners, coord: Arc<Coordinator>, shutdown: CancellationToken) {
    let mut tasks = JoinSet::new();
    tasks.spawn(coord.table.clone().run_refresh(coord.store.clone(), coord.config.table_poll, shutdown.clone()));
    tasks.spawn(control::supervise(coord.clone(), shutdown.clone()));
    tasks.spawn(dashboard::run(coord.clone(), shutdown.clone()));
    let (c, a) = (coord.clone(), coord.clone());
    tokio::join!(
        presence_http::serve(
            listeners.public,
            move |req| api::handle(c.clone(), Listener::Public, req),
            shutdown.clone(),
            coord.gate.clone()
        ),
        presence_http::serve(
            listeners.admin,
            move |req| api::handle(a.clone(), Listener::Admin, req),
            shutdown,
            coord.admin_gate.clone()
        ),
    );
    while tasks.join_next().await.is_some() {}
    let bus = coord.bus.clone();
    let _ = tokio::task::spawn_blocking(move || bus.flush(std::time::Duration::from_secs(5))).await;
    if let Err(e) = coord.store.release_lease(&coord.holder).await {
        tracing::warn!(error = %e, "could not release the leader lease; it expires by itself");
    }
    tracing::info!(coordinator = %coord.config.id, "coordinator stopped");
}

/// Fixtures shared by the unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use presence_model::NodeRecord;

    /// A live node `id` (run `<id>-run`) at `url`, last heard at `heartbeat_ms`.
    pub fn node_record(id: &str, url: String, heartbeat_ms: u64) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            run_id: format!("{id}-run"),
            url,
            capacity: 1,
            connections: 0,
            users: 0,
            vnode_load: vec![],
            pinned: vec![],
            draining: false,
            heartbeat_ms,
        }
    }
}
