//! The node's place in the cluster: its registration and heartbeat (with its
//! load), reacting when the store forgot it or comes back, and leaving on
//! purpose (drain).
//!
//! A heartbeat that the store answers "fresh" (first start, the key expired,
//! the store lost its data, or the leader counted this node out) or
//! "restarted" (a previous run of this node ID still held the registration)
//! makes the writer rewrite every count, zeroing whatever the store holds for
//! this node ID that this run does not have; the first heartbeat after the
//! store was unreachable re-reads every held user, since events may have been
//! missed.
//!
//! **Self-fencing.** A node whose registration was not renewed for
//! `NODE_TTL` (cut off from the store, or paused like a frozen VM or a long
//! GC pause) may have been counted out and its vnodes given away, but only
//! if the store works for the rest of the cluster: when Redis is down for
//! everyone, nobody can count anyone out and the node must keep serving
//! from its cache. The evidence is the bus: events are written only after a
//! store write succeeded, so an event from anyone else (another node, or the
//! leader counting this node out) arriving after the registration lapsed
//! means the cluster moved on. Then the [`Fence`] goes up: every client is
//! told to `reconnect` through the coordinator (reason `fenced`), new
//! connections are refused, and the writer stops writing. It comes down once
//! a heartbeat succeeds again and the routing table has been re-read; the
//! writer then rewrites what it owes (the count-out left a marker, so the
//! heartbeat reported "fresh"). A node cut off from both the store and the
//! bus cannot tell and keeps serving; its users show offline from the
//! count-out until it heals (`docs/architecture.md`, "Failure modes").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use presence_backend::{Registration, TableCache};
use presence_model::NodeRecord;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::fanout::Fanout;
use crate::writer::PendingWrites;
use crate::NodeConfig;

/// Up while the node may have been counted out (see the module docs).
#[derive(Default)]
pub struct Fence {
    up: AtomicBool,
    lifted: Notify,
}

impl Fence {
    /// Whether the fence is up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// Resolves once the fence is down (at once if it is).
    pub async fn lifted(&self) {
        loop {
            let wait = self.lifted.notified();
            if !self.is_up() {
                return;
            }
            wait.await;
        }
    }

    fn raise(&self) -> bool {
        !self.up.swap(true, Ordering::SeqCst)
    }

    fn lift(&self) -> bool {
        let was = self.up.swap(false, Ordering::SeqCst);
        self.lifted.notify_waiters();
        was
    }
}

/// See the module docs.
pub struct Membership {
    /// Identity, URL, capacity, pins and timings.
    config: NodeConfig,
    /// This process's run ID, in every registration.
    run_id: String,
    /// When the last heartbeat that the store took was sent.
    renewed: Mutex<Option<Instant>>,
    /// Up while the registration may have lapsed.
    pub fence: Arc<Fence>,
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
    /// Membership of the node `config` describes, for the process `run_id`.
    pub fn new(
        config: NodeConfig,
        run_id: String,
        fanout: Fanout,
        pending: Arc<PendingWrites>,
        table: TableCache,
    ) -> Self {
        Self {
            config,
            run_id,
            renewed: Mutex::new(None),
            fence: Arc::new(Fence::default()),
            fanout,
            pending,
            table,
            draining: AtomicBool::new(false),
            store_ok: AtomicBool::new(false),
        }
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
            run_id: self.run_id.clone(),
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

    /// One heartbeat: register/renew, and react to store recovery, amnesia
    /// or a restart; lifts the fence once the table is re-read.
    pub async fn heartbeat(&self) {
        let sent = Instant::now();
        match self.fanout.store.heartbeat(&self.record(), self.config.node_ttl).await {
            Ok(registration) => {
                *self.renewed.lock().unwrap_or_else(|p| p.into_inner()) = Some(sent);
                let was_ok = self.store_ok.swap(true, Ordering::Relaxed);
                if registration.must_rewrite() {
                    // First start, our key expired, we were counted out, the store lost
                    // its data, or a previous run left counts: rewrite ours, zero the rest.
                    let restarted = registration == Registration::Restarted;
                    if restarted {
                        tracing::warn!(node = %self.config.node_id, "a previous run of this node ID was still registered; counting its connections out");
                    }
                    self.pending.request_full_resync(restarted);
                }
                if !was_ok {
                    self.fanout.resync_held().await;
                }
                if self.fence.is_up() {
                    self.lift_fence().await;
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

    /// Raises the fence when the registration has not been renewed for a TTL
    /// and the bus shows the cluster moved on (see the module docs), until
    /// `stop`. A task of its own: a heartbeat stuck on an unreachable store
    /// must not delay it.
    pub async fn watch_fence(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.heartbeat_interval / 2);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let renewed = *self.renewed.lock().unwrap_or_else(|p| p.into_inner());
            let Some(lapsed_at) = renewed.map(|at| at + self.config.node_ttl) else { continue };
            let heard = *self.fanout.heard_from_others.lock().unwrap_or_else(|p| p.into_inner());
            let moved_on = heard.is_some_and(|h| h > lapsed_at);
            if Instant::now() >= lapsed_at && moved_on && self.fence.raise() {
                let metrics = &self.fanout.metrics;
                metrics.fenced.set(1);
                metrics.fences.inc();
                let told = crate::handoff::tell_all_fenced(&self.fanout.counts, metrics);
                tracing::warn!(node = %self.config.node_id, connections = told, "registration not renewed for a TTL: may have been counted out; clients sent back to the coordinator");
            }
        }
    }

    /// Whether the fence is up.
    pub fn is_fenced(&self) -> bool {
        self.fence.is_up()
    }

    /// The registration is renewed: re-read the table, then serve again.
    async fn lift_fence(&self) {
        match self.table.refresh(self.fanout.store.as_ref()).await {
            Ok(_) => {
                if self.fence.lift() {
                    self.fanout.metrics.fenced.set(0);
                    tracing::info!(node = %self.config.node_id, epoch = self.table.epoch(), "registered again and table re-read; serving");
                }
            }
            Err(e) => tracing::debug!(node = %self.config.node_id, error = %e, "table re-read failed; still fenced"),
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
