//! The WebSocket node: authenticates clients with JWTs, counts each user's
//! live connections, streams that count to the user's connections and status
//! changes to their subscribers, and hands users over when vnodes move.
//!
//! One module per capability (`docs/architecture.md` has the map, and the
//! path of a connect and of a status change through these files):
//!
//! * [`args`], [`config`]: the `ws-node` command line and what a node is told.
//! * [`server`]: HTTP routes (`/socket`, `/healthz`, `/readyz`, `/metrics`).
//! * [`session`]: one WebSocket connection, from auth to close.
//! * [`conn`]: the node's handle on a connection (its bounded outbound queue).
//! * [`counts`]: per-user bookkeeping: connections, watchers, known state.
//! * [`writer`]: the store writer: counts to the store, events to the bus.
//! * [`status`]: statuses users set, their expiry, unique-user counts.
//! * [`fanout`]: delivery to connections and watchers, bus consumption, resync.
//! * [`live`]: the fast path: following watched users on the store's live feed.
//! * [`membership`]: registration, heartbeat, drain, self-fencing.
//! * [`reconcile`]: the drift reconciler (store vs. local counts).
//! * [`handoff`]: ownership changes, `reconnect`, the 4011 deadline.
//! * [`metrics`]: Prometheus metrics.
//!
//! This file only wires them: [`Node::start`] builds a node and its tasks,
//! [`run`] serves it on a bound listener until shutdown (like `mini-redis`'s
//! `server::run`), and [`Node::shutdown`] stops it in order.

pub mod args;
pub mod config;
pub mod conn;
pub mod counts;
pub mod fanout;
pub mod handoff;
pub mod live;
pub mod membership;
pub mod metrics;
pub mod reconcile;
pub mod server;
pub mod session;
pub mod status;
pub mod writer;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use presence_backend::{Bus, Store, TableCache};
use presence_model::auth::Verifier;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::NodeConfig;

use counts::Counts;
use fanout::Fanout;
use membership::Membership;
use metrics::Metrics;
use writer::{PendingWrites, Writer};

/// How long shutdown waits for sessions to close and for the bus to flush.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The node's tasks and the one cancellation tree that stops them.
///
/// `background` is the root; `writer` is its child and `sessions` the
/// writer's child, so cancelling a level stops everything below it. Shutdown
/// cancels from the leaves up, waiting at each level: sessions close (their
/// last counts become dirty), then the writer flushes them, then the bus is
/// flushed, then the background tasks stop.
struct Lifecycle {
    /// Root: heartbeat, table refresh, bus consumer, handoff, re-reads.
    background: CancellationToken,
    /// The store writer (child of `background`).
    writer: CancellationToken,
    /// Every session (child of `writer`).
    sessions: CancellationToken,
    /// Tasks under `background`.
    background_tasks: TaskTracker,
    /// The writer task.
    writer_task: TaskTracker,
    /// Session tasks.
    session_tasks: TaskTracker,
}

impl Lifecycle {
    fn new() -> Self {
        let background = CancellationToken::new();
        let writer = background.child_token();
        let sessions = writer.child_token();
        Self {
            background,
            writer,
            sessions,
            background_tasks: TaskTracker::new(),
            writer_task: TaskTracker::new(),
            session_tasks: TaskTracker::new(),
        }
    }
}

/// A running node's shared state.
pub struct Node {
    /// Settings.
    pub config: NodeConfig,
    /// Unique to this process (see [`membership`]).
    pub run_id: String,
    /// Verifies client tokens.
    pub verifier: Arc<Verifier>,
    /// Shared cluster state.
    pub store: Arc<dyn Store>,
    /// Event bus between nodes.
    pub bus: Arc<dyn Bus>,
    /// Cached routing table.
    pub table: TableCache,
    /// Per-user bookkeeping.
    pub counts: Arc<Counts>,
    /// Counts waiting for the store.
    pub pending: Arc<PendingWrites>,
    /// Registration, heartbeat, drain.
    pub membership: Arc<Membership>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The listener's connection limits.
    pub gate: Arc<presence_http::Gate>,
    /// WebSocket connections waiting for `auth` now (capped by `max_pending_auth`).
    pending_auth: Arc<AtomicUsize>,
    /// Source of node-local connection numbers.
    next_conn: AtomicU64,
    /// Tasks and their cancellation.
    lifecycle: Lifecycle,
}

impl Node {
    /// Builds a node, registers it, and starts its tasks.
    pub async fn start(
        config: NodeConfig,
        verifier: Arc<Verifier>,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
    ) -> Arc<Node> {
        let metrics = Arc::new(Metrics::new());
        let store = presence_backend::Timed::wrap(store, presence_http::metric::observer(&metrics.store_seconds));
        let counts = Arc::new(Counts::with_views(metrics.clone(), config.views));
        let pending = Arc::new(PendingWrites::new(config.max_pending_writes, metrics.store_overflows.clone()));
        let table = TableCache::new();
        // Unique to this process: a restart under the same NODE_ID is a new run.
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        let fanout = Fanout {
            counts: counts.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            node_id: config.node_id.clone(),
            run_id: run_id.clone(),
            heard_from_others: Arc::default(),
            table: table.clone(),
        };
        let membership =
            Arc::new(Membership::new(config.clone(), run_id.clone(), fanout.clone(), pending.clone(), table.clone()));
        let gate =
            presence_http::Gate::new(config.http.clone(), presence_http::HttpMetrics::new(&metrics.registry, "public"));
        let node = Arc::new(Node {
            gate,
            pending_auth: Arc::default(),
            run_id,
            verifier,
            store,
            bus,
            table,
            counts,
            pending,
            membership,
            metrics,
            next_conn: AtomicU64::new(1),
            lifecycle: Lifecycle::new(),
            config,
        });
        // Subscribe before anything can change, so no event is missed.
        let events = node.bus.subscribe();
        if let Err(e) = node.table.refresh(node.store.as_ref()).await {
            tracing::warn!(node = %node.config.node_id, error = %e, "no routing table at start; will keep trying");
        }
        node.membership.heartbeat().await;
        node.spawn_tasks(fanout, events);
        tracing::info!(node = %node.config.node_id, url = %node.config.public_url, store = node.store.kind(), bus = node.bus.kind(), "ws-node started");
        node
    }

    fn spawn_tasks(&self, fanout: Fanout, events: Box<dyn presence_backend::BusSubscription>) {
        let life = &self.lifecycle;
        let stop = life.background.clone();
        let bg = &life.background_tasks;
        bg.spawn(self.table.clone().run_refresh(self.store.clone(), self.config.table_poll, stop.clone()));
        bg.spawn(self.membership.clone().run(stop.clone()));
        bg.spawn(self.membership.clone().watch_fence(stop.clone()));
        bg.spawn(counts::run_timers(self.counts.clone(), stop.clone()));
        bg.spawn(status::run_expiry(self.status_writer(), stop.clone()));
        bg.spawn(status::run_unique_users(self.status_writer(), stop.clone()));
        bg.spawn(fanout.clone().run(events, stop.clone()));
        if self.config.fast_path {
            let live =
                live::run(self.store.clone(), self.counts.clone(), fanout.clone(), self.metrics.clone(), stop.clone());
            bg.spawn(live);
        }
        bg.spawn(fanout.watch_departures(
            self.table.clone(),
            bg.clone(),
            self.config.heartbeat_interval,
            self.config.handoff_timeout + self.config.node_ttl,
            stop.clone(),
        ));
        bg.spawn(handoff::run(
            self.counts.clone(),
            self.table.clone(),
            self.membership.clone(),
            self.config.node_id.clone(),
            self.metrics.clone(),
            stop,
        ));
        let writer = Writer {
            pending: self.pending.clone(),
            counts: self.counts.clone(),
            store: self.store.clone(),
            announcer: self.announcer(),
            node_id: self.config.node_id.clone(),
            batch: self.config.write_batch,
            fence: self.membership.fence.clone(),
            metrics: self.metrics.clone(),
        };
        life.writer_task.spawn(writer.run(life.writer.clone()));
        let reconciler = reconcile::Reconciler {
            counts: self.counts.clone(),
            store: self.store.clone(),
            pending: self.pending.clone(),
            membership: self.membership.clone(),
            node_id: self.config.node_id.clone(),
            interval: self.config.reconcile_interval,
            metrics: self.metrics.clone(),
        };
        bg.spawn(reconciler.run(life.background.clone()));
    }

    /// What writes users' statuses and unique-user counts to the store.
    pub fn status_writer(&self) -> status::StatusWriter {
        status::StatusWriter {
            store: self.store.clone(),
            counts: self.counts.clone(),
            announcer: self.announcer(),
            metrics: self.metrics.clone(),
        }
    }

    /// What puts this node's changes on the bus.
    pub fn announcer(&self) -> writer::Announcer {
        writer::Announcer {
            bus: self.bus.clone(),
            table: self.table.clone(),
            node_id: self.config.node_id.clone(),
            run_id: self.run_id.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Takes a place among the connections waiting for `auth`, or `None`
    /// when `max_pending_auth` of them wait already (counted).
    pub fn wait_for_auth(&self) -> Option<PendingAuth> {
        let now = self.pending_auth.fetch_add(1, Ordering::Relaxed);
        let guard = PendingAuth(self.pending_auth.clone());
        if now >= self.config.max_pending_auth {
            self.metrics.auth_failures.with_label_values(&["too_many_pending"]).inc();
            return None;
        }
        Some(guard)
    }

    /// A fresh connection number.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.membership.is_draining()
    }

    /// Whether the last heartbeat reached the store.
    pub fn store_ok(&self) -> bool {
        self.membership.store_ok()
    }

    /// Cancelled when sessions must close (node shutting down).
    pub fn closing(&self) -> CancellationToken {
        self.lifecycle.sessions.clone()
    }

    /// Runs a session task, tracked so that shutdown waits for it.
    pub fn spawn_session<F>(&self, session: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.lifecycle.session_tasks.spawn(session);
    }

    /// Leaves the cluster on purpose (see [`Membership::drain`]). Call
    /// [`run`]'s shutdown afterwards.
    pub async fn drain(&self) {
        self.membership.drain().await;
    }

    /// Closes every session (1001), writes the final counts, deregisters and
    /// stops the background tasks (see [`Lifecycle`]).
    pub async fn shutdown(&self) {
        let life = &self.lifecycle;
        life.sessions.cancel();
        // Sessions wait on their connection's signal, not on the token.
        self.counts.close_all();
        life.session_tasks.close();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, life.session_tasks.wait()).await;
        // The writer ends with a final flush; only then are all events queued on the bus.
        life.writer.cancel();
        life.writer_task.close();
        life.writer_task.wait().await;
        self.membership.deregister().await;
        let bus = self.bus.clone();
        let _ = tokio::task::spawn_blocking(move || bus.flush(SHUTDOWN_GRACE)).await;
        life.background.cancel();
        life.background_tasks.close();
        life.background_tasks.wait().await;
        tracing::info!(node = %self.config.node_id, "ws-node stopped");
    }
}

/// A place among the connections waiting for `auth`; freed when dropped.
pub struct PendingAuth(Arc<AtomicUsize>);

impl Drop for PendingAuth {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `node` on `listener` until `shutdown` fires, then shuts the node down.
pub async fn run(listener: TcpListener, node: Arc<Node>, shutdown: CancellationToken) {
    let n = node.clone();
    presence_http::serve(listener, move |req| server::handle(n.clone(), req), shutdown, node.gate.clone()).await;
    node.shutdown().await;
}
