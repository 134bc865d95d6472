//! The store writer: the node's counts to the store, then events to the bus.
//!
//! Connection tasks only mark a user *dirty*. One writer task per node takes
//! dirty users in batches, reads their current local counts from
//! [`Counts`] and writes those absolute counts to the store. Because there is one writer
//! and it always writes the latest count, writes for a user can never land
//! out of order, bursts coalesce into one write, and a failed batch is simply
//! marked dirty again and retried: the count it carries is still right.
//!
//! The dirty set is bounded (`max_pending` users). When it is full, new marks
//! are not stored; instead the node schedules a *full resync*: it rewrites
//! every user it serves plus every user the store says it has, so nothing is
//! lost, only coalesced further. Overflows are counted in
//! `presence_store_buffer_overflows_total`. The same full resync runs when the
//! store reports the node as newly registered (first start, expiry, or a store
//! that restarted empty).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use presence_backend::{Bus, Store, StoreError, TableCache};
use presence_model::{EventReason, PresenceChange, StatusEvent, UserId};
use prometheus::IntCounter;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::counts::Counts;
use crate::membership::Fence;
use crate::metrics::Metrics;

/// Retry delay after a failed store write.
const RETRY: Duration = Duration::from_millis(250);

/// The bounded set of users whose count the store has not seen yet.
///
/// A connect can wait for its user's next write: [`PendingWrites::mark_and_wait`]
/// hands back a receiver that fires once a batch holding that user is in the
/// store. A session sends `welcome` only then, so that a client that connects
/// to a new node and then drops the old one (a handoff) is counted on the new
/// node before the old node counts it out: nobody is shown offline between.
pub struct PendingWrites {
    inner: Mutex<HashMap<UserId, Dirty>>,
    /// Rewrite everything: the set overflowed or the store forgot us.
    full_resync: AtomicBool,
    /// The last full rewrite was asked for because a previous run of this
    /// node ID left counts behind: its zeros say `node_restarted`.
    restarted: AtomicBool,
    notify: Notify,
    max_pending: usize,
    /// `presence_store_buffer_overflows_total`: marks that did not fit.
    overflows: IntCounter,
}

/// A user waiting to be written.
#[derive(Default)]
pub struct Dirty {
    /// The connection that last changed the user (for the event).
    conn: Option<String>,
    /// Why it last changed, when a connection went (for the event and the offline reason).
    reason: Option<EventReason>,
    /// Sessions waiting for this write.
    waiters: Vec<oneshot::Sender<()>>,
}

/// Dirty users taken for one write.
type Batch = Vec<(UserId, Dirty)>;

/// A user to write, the connection that changed it and why (for the event).
type Cause = (UserId, Option<String>, Option<EventReason>);

impl PendingWrites {
    /// An empty set holding at most `max_pending` users; each mark that does
    /// not fit is counted on `overflows`.
    pub fn new(max_pending: usize, overflows: IntCounter) -> Self {
        Self {
            inner: Mutex::new(HashMap::new()),
            full_resync: AtomicBool::new(false),
            restarted: AtomicBool::new(false),
            notify: Notify::new(),
            max_pending: max_pending.max(1),
            overflows,
        }
    }

    /// The set is full: nothing is forgotten, everything is rewritten instead.
    fn overflowed(&self) {
        self.overflows.inc();
        self.full_resync.store(true, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Dirty>> {
        // Plain data; a panic elsewhere must not stop counting.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mark_with(
        &self,
        user: &UserId,
        conn: Option<&str>,
        reason: Option<EventReason>,
        waiter: Option<oneshot::Sender<()>>,
    ) -> bool {
        let stored = {
            let mut p = self.lock();
            if p.len() >= self.max_pending && !p.contains_key(user) {
                false
            } else {
                let d = p.entry(user.clone()).or_default();
                d.conn = conn.map(str::to_string);
                d.reason = reason;
                d.waiters.extend(waiter);
                true
            }
        };
        if !stored {
            self.overflowed();
        }
        self.notify.notify_one();
        stored
    }

    /// Marks `user` dirty (connection `conn` went, for `reason`). When the set
    /// is full the user is not stored; a full resync (which covers it) is
    /// scheduled instead. Returns whether it was stored.
    pub fn mark(&self, user: &UserId, conn: Option<&str>, reason: Option<EventReason>) -> bool {
        self.mark_with(user, conn, reason, None)
    }

    /// Marks `user` dirty and returns a receiver that fires when the write
    /// holding this mark is in the store (`None` when the set was full).
    pub fn mark_and_wait(&self, user: &UserId, conn: Option<&str>) -> Option<oneshot::Receiver<()>> {
        let (tx, rx) = oneshot::channel();
        self.mark_with(user, conn, None, Some(tx)).then_some(rx)
    }

    /// Schedules a rewrite of every count this node holds or the store holds
    /// for it; `restarted` when the store said a previous run of this node ID
    /// left counts behind.
    pub fn request_full_resync(&self, restarted: bool) {
        if restarted {
            self.restarted.store(true, Ordering::Relaxed);
        }
        self.full_resync.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Dirty users now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty() && !self.full_resync.load(Ordering::Relaxed)
    }

    fn take(&self, max: usize) -> (Batch, bool) {
        let full = self.full_resync.swap(false, Ordering::Relaxed);
        let mut p = self.lock();
        let keys: Vec<UserId> = p.keys().take(max).cloned().collect();
        (keys.into_iter().filter_map(|k| p.remove_entry(&k)).collect(), full)
    }

    fn put_back(&self, batch: Batch, full: bool) {
        if full {
            self.full_resync.store(true, Ordering::Relaxed);
        }
        let mut p = self.lock();
        for (u, d) in batch {
            if p.len() >= self.max_pending && !p.contains_key(&u) {
                // Dropping `d` drops its waiters: they stop waiting, unconfirmed.
                self.overflowed();
                continue;
            }
            let e = p.entry(u).or_default();
            // A newer mark made meanwhile keeps its connection ID and reason.
            if e.conn.is_none() {
                e.conn = d.conn;
                e.reason = d.reason;
            }
            e.waiters.extend(d.waiters);
        }
    }
}

/// What the writer needs, and nothing more: the dirty set, the counts it
/// reads and reports back to, the store and bus it writes to.
pub struct Writer {
    /// Users waiting to be written.
    pub pending: Arc<PendingWrites>,
    /// Local counts, and where the store's answers go.
    pub counts: Arc<Counts>,
    /// Where counts go.
    pub store: Arc<dyn Store>,
    /// Where events go.
    pub announcer: Announcer,
    /// This node's ID: the store field it writes.
    pub node_id: String,
    /// Users per store call.
    pub batch: usize,
    /// While up, nothing is written (the node may have been counted out).
    pub fence: Arc<Fence>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl Writer {
    /// The writer task: runs until `shutdown`, then flushes once more.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.pending.notify.notified() => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.fence.lifted() => {}
            }
            let mut failures = 0u64;
            while let Err(e) = self.flush().await {
                self.metrics.store_errors.inc();
                // Warn when writes start failing, not at every retry.
                if failures == 0 {
                    tracing::warn!(node = %self.node_id, error = %e, pending = self.pending.len(), "store writes failing; counting locally and retrying");
                } else {
                    tracing::debug!(node = %self.node_id, error = %e, "store write retry failed");
                }
                failures += 1;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
            if failures > 0 {
                tracing::info!(node = %self.node_id, failures, "store writes resumed");
            }
        }
        if let Err(e) = self.flush().await {
            tracing::warn!(node = %self.node_id, error = %e, "final store flush failed; the leader counts this node out when its registration expires");
        }
    }

    /// Writes everything pending now. On error, what was taken is pending again.
    pub async fn flush(&self) -> Result<(), StoreError> {
        loop {
            let (batch, full) = self.pending.take(self.batch);
            self.metrics.store_pending.set(self.pending.len() as i64);
            if batch.is_empty() && !full {
                return Ok(());
            }
            let result = async {
                if full {
                    self.full_resync().await?;
                }
                let users: Vec<Cause> = batch.iter().map(|(u, d)| (u.clone(), d.conn.clone(), d.reason)).collect();
                self.write(&users).await
            }
            .await;
            match result {
                Ok(()) => {
                    for (_, d) in batch {
                        for w in d.waiters {
                            let _ = w.send(());
                        }
                    }
                }
                Err(e) => {
                    self.pending.put_back(batch, full);
                    self.metrics.store_pending.set(self.pending.len() as i64);
                    return Err(e);
                }
            }
        }
    }

    async fn full_resync(&self) -> Result<(), StoreError> {
        // Users with connections here, users this node still owes a zero, and
        // whatever the store says this node has (a previous run's leftovers).
        let restarted = self.pending.restarted.swap(false, Ordering::Relaxed);
        let reason = if restarted { EventReason::NodeRestarted } else { EventReason::Resync };
        let mut users: HashSet<UserId> = self.counts.owed_users().into_iter().collect();
        users.extend(self.store.node_counts(&self.node_id).await?.into_iter().map(|(u, _)| u));
        let all: Vec<Cause> = users.into_iter().map(|u| (u, None, Some(reason))).collect();
        tracing::info!(node = %self.node_id, users = all.len(), reason = reason.as_str(), "rewriting all counts to the store");
        let written = async {
            for chunk in all.chunks(self.batch) {
                self.write(chunk).await?;
            }
            Ok(())
        };
        let result = written.await;
        if result.is_err() && restarted {
            // Retried with the same reason.
            self.pending.restarted.store(true, Ordering::Relaxed);
        }
        result
    }

    /// One store call for `batch`, its answers to [`Counts`], one event per change.
    async fn write(&self, batch: &[Cause]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let users: Vec<UserId> = batch.iter().map(|(u, _, _)| u.clone()).collect();
        let mut updates = self.counts.local_counts(&users);
        for (u, (_, _, reason)) in updates.iter_mut().zip(batch) {
            u.reason = *reason;
        }
        let now = presence_model::time::now_ms();
        let answers = self.store.set_counts(&self.node_id, &updates, now).await?;
        self.metrics.store_writes.inc();
        self.metrics.store_updates.inc_by(updates.len() as u64);
        self.counts.record_writes(&updates, &answers, now);
        for ((_, conn, reason), answer) in batch.iter().zip(&answers) {
            if let Some(change) = answer {
                self.publish(change, conn.clone(), *reason, now).await;
            }
        }
        Ok(())
    }

    async fn publish(&self, change: &PresenceChange, conn: Option<String>, reason: Option<EventReason>, ts: u64) {
        self.announcer.publish(change, conn, reason, ts).await;
    }
}

/// Puts this node's changes on the bus, one event each: what the writer's
/// count writes and the users' own status changes ([`crate::status`]) produce.
#[derive(Clone)]
pub struct Announcer {
    /// Where events go.
    pub bus: Arc<dyn Bus>,
    /// The routing table (its epoch is stamped on events).
    pub table: TableCache,
    /// This node's ID: the events' `nodeId`.
    pub node_id: String,
    /// This process's run ID, stamped on its events (echo filtering).
    pub run_id: String,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl Announcer {
    /// Publishes the event of `change` (caused by connection `conn`, for `reason`, at `ts`).
    pub async fn publish(&self, change: &PresenceChange, conn: Option<String>, reason: Option<EventReason>, ts: u64) {
        // Why a connection went says nothing about a join (the same batch saw
        // both); a rewrite is a rewrite either way.
        let went_down = change.presence.connections < change.previous;
        let reason = reason.filter(|r| went_down || matches!(r, EventReason::Resync | EventReason::NodeRestarted));
        let event = StatusEvent::from_change(change, &self.node_id, conn, self.table.epoch(), ts, reason)
            .from_run(&self.run_id);
        match self.bus.publish(event).await {
            Ok(()) => self.metrics.events_published.inc(),
            Err(e) => {
                self.metrics.bus_errors.inc();
                tracing::warn!(node = %self.node_id, error = %e, "event not published; subscribers elsewhere catch up at their next resync");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::parse(s).expect("valid")
    }

    #[test]
    fn bounded_set_turns_overflow_into_full_resync() {
        let overflows = IntCounter::new("o", "o").expect("counter");
        let p = PendingWrites::new(2, overflows.clone());
        assert!(p.mark(&uid("a"), None, None));
        let w = p.mark_and_wait(&uid("b"), Some("c1"));
        assert!(w.is_some());
        assert!(p.mark(&uid("a"), Some("c2"), Some(EventReason::Closed)), "re-marking a held user always fits");
        assert!(p.mark_and_wait(&uid("c"), None).is_none(), "a full set does not grow");
        assert_eq!(p.len(), 2);
        assert_eq!(overflows.get(), 1, "the overflow is counted");
        let (batch, full) = p.take(10);
        assert_eq!(batch.len(), 2);
        assert!(full);
        assert!(p.is_empty());
        // A failed write keeps the waiters with their users.
        p.put_back(batch, full);
        assert_eq!(p.len(), 2);
        assert!(!p.is_empty());
        let (batch, _) = p.take(10);
        let waiters: usize = batch.iter().map(|(_, d)| d.waiters.len()).sum();
        assert_eq!(waiters, 1);
    }
}
