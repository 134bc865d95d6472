//! The WebSocket node: authenticates clients with JWTs, counts each user's
//! live connections, streams that count to the user's connections and status
//! changes to their subscribers, and hands users over when vnodes move.
//!
//! * [`args`]: the `ws-node` command line and its checks.
//! * [`config`]: what a node is told at start.
//! * [`hub`]: local users, their connections and watchers, and fan-out.
//! * [`sync`]: writing counts to the store and events to the bus.
//! * [`session`]: one WebSocket connection, from auth to close.
//! * [`server`]: HTTP routes (`/socket`, `/healthz`, `/readyz`, `/metrics`).
//! * [`metrics`]: Prometheus metrics.
//!
//! [`Node::start`] builds a node and its background tasks (table refresh,
//! heartbeat, store writer, bus consumer, handoff watcher); [`run`] serves it
//! on a bound listener until shutdown, like `mini-redis`'s `server::run`.

pub mod args;
pub mod config;
pub mod hub;
pub mod metrics;
pub mod server;
pub mod session;
pub mod sync;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use presence_backend::{Bus, BusMessage, Store, TableCache};
use presence_model::auth::Verifier;
use presence_model::NodeRecord;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::NodeConfig;

use hub::Hub;
use metrics::Metrics;
use sync::PendingWrites;

/// A running node's shared state.
pub struct Node {
    /// Settings.
    pub config: NodeConfig,
    /// Verifies client tokens.
    pub verifier: Arc<Verifier>,
    /// Shared cluster state.
    pub store: Arc<dyn Store>,
    /// Event bus between nodes.
    pub bus: Arc<dyn Bus>,
    /// Cached routing table.
    pub table: TableCache,
    /// Local users and fan-out.
    pub hub: Hub,
    /// Counts waiting for the store.
    pub pending: PendingWrites,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Source of node-local connection numbers.
    next_conn: AtomicU64,
    /// Every live session task, so shutdown can wait for them.
    sessions: TaskTracker,
    /// Cancelled to close every session (node shutting down).
    close_sessions: CancellationToken,
    /// Cancelled to stop the background tasks, after the sessions closed.
    stop_background: CancellationToken,
    /// Cancelled to stop the store writer, which then flushes one last time.
    stop_writer: CancellationToken,
    /// The store writer, awaited at shutdown before the bus is flushed.
    writer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Background tasks.
    background: std::sync::Mutex<JoinSet<()>>,
    /// The node is leaving on purpose: its vnodes should move away.
    draining: AtomicBool,
    /// The last heartbeat reached the store.
    store_ok: AtomicBool,
}

impl Node {
    /// Builds a node, registers it, and starts its background tasks.
    pub async fn start(
        config: NodeConfig,
        verifier: Arc<Verifier>,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
    ) -> Arc<Node> {
        let metrics = Arc::new(Metrics::new());
        let node = Arc::new(Node {
            hub: Hub::new(metrics.clone()),
            pending: PendingWrites::new(config.max_pending_writes),
            table: TableCache::new(),
            metrics,
            verifier,
            store,
            bus,
            next_conn: AtomicU64::new(1),
            sessions: TaskTracker::new(),
            close_sessions: CancellationToken::new(),
            stop_background: CancellationToken::new(),
            stop_writer: CancellationToken::new(),
            writer: std::sync::Mutex::new(None),
            background: std::sync::Mutex::new(JoinSet::new()),
            draining: AtomicBool::new(false),
            store_ok: AtomicBool::new(false),
            config,
        });
        // Subscribe before anything can change, so no event is missed.
        let events = node.bus.subscribe();
        if let Err(e) = node.table.refresh(node.store.as_ref()).await {
            tracing::warn!(node = %node.config.node_id, error = %e, "no routing table at start; will keep trying");
        }
        node.heartbeat().await;
        let stop = node.stop_background.clone();
        let mut tasks = JoinSet::new();
        tasks.spawn(node.table.clone().run_refresh(node.store.clone(), node.config.table_poll, stop.clone()));
        tasks.spawn(heartbeat_loop(node.clone(), stop.clone()));
        *node.writer.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(tokio::spawn(sync::run(node.clone(), node.stop_writer.clone())));
        tasks.spawn(consume_events(node.clone(), events, stop.clone()));
        tasks.spawn(watch_ownership(node.clone(), stop));
        *node.background.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        tracing::info!(node = %node.config.node_id, url = %node.config.public_url, store = node.store.kind(), bus = node.bus.kind(), "ws-node started");
        node
    }

    /// A fresh connection number.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the last store call of the heartbeat succeeded.
    pub fn store_ok(&self) -> bool {
        self.store_ok.load(Ordering::Relaxed)
    }

    /// The heartbeat record for now.
    fn record(&self) -> NodeRecord {
        let (connections, users) = self.hub.totals();
        self.metrics.connections.set(connections as i64);
        self.metrics.users.set(users as i64);
        NodeRecord {
            id: self.config.node_id.clone(),
            url: self.config.public_url.clone(),
            capacity: self.config.capacity,
            connections,
            users,
            vnode_load: self.hub.vnode_load(),
            pinned: self.config.pinned.clone(),
            draining: self.is_draining(),
            heartbeat_ms: presence_model::time::now_ms(),
        }
    }

    /// One heartbeat: register/renew, and react to store recovery or amnesia.
    async fn heartbeat(&self) {
        match self.store.heartbeat(&self.record(), self.config.node_ttl).await {
            Ok(fresh) => {
                let was_ok = self.store_ok.swap(true, Ordering::Relaxed);
                if fresh {
                    // First start, our key expired, or the store lost its data:
                    // rewrite our counts (and zero leftovers of an earlier run).
                    self.pending.request_full_resync();
                }
                if !was_ok {
                    self.resync_held().await;
                }
            }
            Err(e) => {
                if self.store_ok.swap(false, Ordering::Relaxed) {
                    tracing::warn!(node = %self.config.node_id, error = %e, "store unreachable; serving from cache and counting locally");
                }
                self.metrics.store_errors.inc();
            }
        }
    }

    /// Re-reads every held user's state from the store (after missed events).
    pub async fn resync_held(&self) {
        let users = self.hub.all_users();
        self.metrics.resyncs.inc();
        for chunk in users.chunks(1000) {
            match self.store.presence(chunk).await {
                Ok(states) => {
                    let now = presence_model::time::now_ms();
                    for p in &states {
                        self.hub.apply(p, now, None);
                    }
                }
                Err(e) => {
                    self.metrics.store_errors.inc();
                    tracing::warn!(node = %self.config.node_id, error = %e, "resync from store failed; the next one retries");
                    return;
                }
            }
        }
    }

    /// Leaves the cluster on purpose: asks for this node's vnodes to move,
    /// tells every client to `reconnect` to the new owner, and waits (up to the
    /// handoff timeout) for them to go. Call [`run`]'s shutdown afterwards.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.heartbeat().await;
        let deadline = tokio::time::Instant::now() + self.config.handoff_timeout + self.config.node_ttl;
        let mut table = self.table.subscribe();
        loop {
            let owned = self.table.get().map_or(0, |t| t.owned_by(&self.config.node_id));
            let (connections, _) = self.hub.totals();
            if owned == 0 && connections == 0 {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = table.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Closes every session (1001), writes the final counts, deregisters and
    /// stops the background tasks.
    pub async fn shutdown(&self) {
        self.close_sessions.cancel();
        self.sessions.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.sessions.wait()).await;
        // The writer ends with a final flush; only then are all events queued on the bus.
        self.stop_writer.cancel();
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = writer {
            let _ = w.await;
        }
        if let Err(e) = self.store.deregister(&self.config.node_id).await {
            tracing::warn!(node = %self.config.node_id, error = %e, "deregister failed; the registration expires by itself");
        }
        let bus = self.bus.clone();
        let _ = tokio::task::spawn_blocking(move || bus.flush(Duration::from_secs(5))).await;
        self.stop_background.cancel();
        let mut tasks = std::mem::take(&mut *self.background.lock().unwrap_or_else(|p| p.into_inner()));
        while tasks.join_next().await.is_some() {}
        tracing::info!(node = %self.config.node_id, "ws-node stopped");
    }
}

/// Serves `node` on `listener` until `shutdown` fires, then shuts the node down.
pub async fn run(listener: TcpListener, node: Arc<Node>, shutdown: CancellationToken) {
    let n = node.clone();
    presence_http::serve(listener, move |req| server::handle(n.clone(), req), shutdown).await;
    node.shutdown().await;
}

async fn heartbeat_loop(node: Arc<Node>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(node.config.heartbeat_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => node.heartbeat().await,
        }
    }
}

async fn consume_events(
    node: Arc<Node>,
    mut events: Box<dyn presence_backend::BusSubscription>,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            m = events.next() => m,
        };
        match msg {
            Some(BusMessage::Event(e)) => {
                node.metrics.events_received.inc();
                // This node applied its own writes before publishing them; the echo
                // would only be dropped as stale (and count as such).
                if e.node_id != node.config.node_id {
                    node.hub.apply(&e.presence(), presence_model::time::now_ms(), None);
                }
            }
            Some(BusMessage::Resync) => {
                tracing::info!(node = %node.config.node_id, "bus asked for a resync");
                node.resync_held().await;
            }
            None => {
                tracing::warn!(node = %node.config.node_id, "bus closed; no more remote events");
                return;
            }
        }
    }
}

/// On every new table: update the owned-vnode gauge and hand off users whose vnode moved.
async fn watch_ownership(node: Arc<Node>, stop: CancellationToken) {
    let mut rx = node.table.subscribe();
    let mut members: Vec<String> = Vec::new();
    loop {
        let table = rx.borrow_and_update().clone();
        if let Some(t) = table {
            // A node left the table (it died or drained). A node that died may have
            // written a count without publishing its event: re-read what we hold.
            let now: Vec<String> = t.nodes.iter().map(|n| n.id.clone()).collect();
            if members.iter().any(|m| !now.contains(m)) {
                tracing::info!(node = %node.config.node_id, epoch = t.epoch, "a node left the routing table; resyncing from the store");
                let n = node.clone();
                // Once after the leader's count-out, and once more when a draining
                // node has certainly finished (handoff timeout + one TTL): its last
                // events may still be on their way, or lost with a crash. Off this loop.
                tokio::spawn(async move {
                    tokio::time::sleep(n.config.heartbeat_interval).await;
                    n.resync_held().await;
                    tokio::time::sleep(n.config.handoff_timeout + n.config.node_ttl).await;
                    n.resync_held().await;
                });
            }
            members = now;
            let owned = t.owned_by(&node.config.node_id);
            node.metrics.vnodes_owned.set(owned as i64);
            let reason = if node.is_draining() { "drain" } else { "rebalance" };
            let told = node.hub.hand_off(&t, &node.config.node_id, reason);
            if told > 0 {
                node.metrics.handoffs.inc_by(told as u64);
                tracing::info!(node = %node.config.node_id, epoch = t.epoch, connections = told, reason, "handing off moved users");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}
