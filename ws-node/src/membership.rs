//! The node's place in the cluster: its registration and heartbeat (with its
//! load), reacting when the store forgot it or comes back, and leaving on
//! purpose (drain).
//!
//! A heartbeat that the store answers "fresh" (first start, the key expired,
//! the store lost its data, or the leader counted this node out) makes the
//! writer rewrite every count; the first heartbeat after the store was
//! unreachable re-reads every held user, since events may have been missed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use presence_backend::TableCache;
use presence_model::NodeRecord;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::fanout::Fanout;
use crate::writer::PendingWrites;
use crate::NodeConfig;

/// See the module docs.
pub struct Membership {
    /// Identity, URL, capacity, pins and timings.
    config: NodeConfig,
    /// The store (where the registration lives), the counts (the load the
    /// heartbeat reports), metrics, and the re-read after a store outage.
    fanout: Fanout,
    /// Asked for a full rewrite when the store forgot this node.
    pending: Arc<PendingWrites>,
    /// The routing table (drain waits for it to give this node nothing).
    table: TableCache,
    /// The node is leaving on purpose: its vnodes should move away.
    draining: AtomicBool,
    /// The last heartbeat reached the store.
    store_ok: AtomicBool,
}

impl Membership {
    /// Membership of the node `config` describes.
    pub fn new(config: NodeConfig, fanout: Fanout, pending: Arc<PendingWrites>, table: TableCache) -> Self {
        Self { config, fanout, pending, table, draining: AtomicBool::new(false), store_ok: AtomicBool::new(false) }
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the last heartbeat reached the store.
    pub fn store_ok(&self) -> bool {
        self.store_ok.load(Ordering::Relaxed)
    }

    /// The heartbeat record for now (and the load gauges).
    pub fn record(&self) -> NodeRecord {
        let (connections, users) = self.fanout.counts.totals();
        self.fanout.metrics.connections.set(connections as i64);
        self.fanout.metrics.users.set(users as i64);
        NodeRecord {
            id: self.config.node_id.clone(),
            url: self.config.public_url.clone(),
            capacity: self.config.capacity,
            connections,
            users,
            vnode_load: self.fanout.counts.vnode_load(),
            pinned: self.config.pinned.clone(),
            draining: self.is_draining(),
            heartbeat_ms: presence_model::time::now_ms(),
        }
    }

    /// One heartbeat: register/renew, and react to store recovery or amnesia.
    pub async fn heartbeat(&self) {
        match self.fanout.store.heartbeat(&self.record(), self.config.node_ttl).await {
            Ok(fresh) => {
                let was_ok = self.store_ok.swap(true, Ordering::Relaxed);
                if fresh {
                    // First start, our key expired, or the store lost its data:
                    // rewrite our counts (and zero leftovers of an earlier run).
                    self.pending.request_full_resync();
                }
                if !was_ok {
                    self.fanout.resync_held().await;
                }
            }
            Err(e) => {
                if self.store_ok.swap(false, Ordering::Relaxed) {
                    tracing::warn!(node = %self.config.node_id, error = %e, "store unreachable; serving from cache and counting locally");
                }
                self.fanout.metrics.store_errors.inc();
            }
        }
    }

    /// Heartbeats every interval until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.heartbeat().await,
            }
        }
    }

    /// Leaves the cluster on purpose: marks the node draining (so the leader
    /// moves its vnodes away and the handoff task tells every client to
    /// `reconnect`), and waits until the table gives it nothing and its
    /// clients are gone, or the handoff timeout plus one TTL passed.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.heartbeat().await;
        let deadline = tokio::time::Instant::now() + self.config.handoff_timeout + self.config.node_ttl;
        let mut table = self.table.subscribe();
        loop {
            let owned = self.table.get().map_or(0, |t| t.owned_by(&self.config.node_id));
            let (connections, _) = self.fanout.counts.totals();
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

    /// Removes the registration (clean shutdown); it would expire anyway.
    pub async fn deregister(&self) {
        if let Err(e) = self.fanout.store.deregister(&self.config.node_id).await {
            tracing::warn!(node = %self.config.node_id, error = %e, "deregister failed; the registration expires by itself");
        }
    }
}
