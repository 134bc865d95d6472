//! Writing the node's counts to the store, and events to the bus.
//!
//! Connection tasks only mark a user *dirty*. One writer task per node takes
//! dirty users in batches, reads each one's current local count from the hub
//! and writes that absolute count to the store. Because there is one writer
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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use presence_backend::{CountUpdate, StoreError};
use presence_model::event::EVENT_VERSION;
use presence_model::{EventKind, PresenceChange, StatusEvent, UserId};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::Node;

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
    full_resync: std::sync::atomic::AtomicBool,
    notify: Notify,
    max_pending: usize,
}

/// A user waiting to be written.
#[derive(Default)]
pub struct Dirty {
    /// The connection that last changed the user (for the event).
    conn: Option<String>,
    /// Sessions waiting for this write.
    waiters: Vec<oneshot::Sender<()>>,
}

/// Dirty users taken for one write.
type Batch = Vec<(UserId, Dirty)>;

impl PendingWrites {
    /// An empty set holding at most `max_pending` users.
    pub fn new(max_pending: usize) -> Self {
        Self {
            inner: Mutex::new(HashMap::new()),
            full_resync: std::sync::atomic::AtomicBool::new(false),
            notify: Notify::new(),
            max_pending: max_pending.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Dirty>> {
        // Plain data; a panic elsewhere must not stop counting.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mark_with(&self, user: &UserId, conn: Option<&str>, waiter: Option<oneshot::Sender<()>>) -> bool {
        let stored = {
            let mut p = self.lock();
            if p.len() >= self.max_pending && !p.contains_key(user) {
                false
            } else {
                let d = p.entry(user.clone()).or_default();
                d.conn = conn.map(str::to_string);
                d.waiters.extend(waiter);
                true
            }
        };
        if !stored {
            // Full: no user is forgotten, they are all rewritten instead.
            self.full_resync.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.notify.notify_one();
        stored
    }

    /// Marks `user` dirty. When the set is full the user is not stored; a full
    /// resync (which covers it) is scheduled instead. Returns whether it was stored.
    pub fn mark(&self, user: &UserId, conn: Option<&str>) -> bool {
        self.mark_with(user, conn, None)
    }

    /// Marks `user` dirty and returns a receiver that fires when the write
    /// holding this mark is in the store (`None` when the set was full).
    pub fn mark_and_wait(&self, user: &UserId, conn: Option<&str>) -> Option<oneshot::Receiver<()>> {
        let (tx, rx) = oneshot::channel();
        self.mark_with(user, conn, Some(tx)).then_some(rx)
    }

    /// Schedules a rewrite of every count this node holds or the store holds for it.
    pub fn request_full_resync(&self) {
        self.full_resync.store(true, std::sync::atomic::Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Dirty users now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty() && !self.full_resync.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn take(&self, max: usize) -> (Batch, bool) {
        let full = self.full_resync.swap(false, std::sync::atomic::Ordering::Relaxed);
        let mut p = self.lock();
        let keys: Vec<UserId> = p.keys().take(max).cloned().collect();
        (keys.into_iter().filter_map(|k| p.remove_entry(&k)).collect(), full)
    }

    fn put_back(&self, batch: Batch, full: bool) {
        if full {
            self.full_resync.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let mut p = self.lock();
        for (u, d) in batch {
            if p.len() >= self.max_pending && !p.contains_key(&u) {
                // Dropping `d` drops its waiters: they stop waiting, unconfirmed.
                self.full_resync.store(true, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            let e = p.entry(u).or_default();
            // A newer mark made meanwhile keeps its connection ID.
            if e.conn.is_none() {
                e.conn = d.conn;
            }
            e.waiters.extend(d.waiters);
        }
    }
}

/// The writer task: runs until `shutdown`, then flushes once more.
pub async fn run(node: Arc<Node>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = node.pending.notify.notified() => {}
        }
        let mut failures = 0u64;
        while let Err(e) = flush(&node).await {
            node.metrics.store_errors.inc();
            // Warn when writes start failing, not at every retry.
            if failures == 0 {
                tracing::warn!(node = %node.config.node_id, error = %e, pending = node.pending.len(), "store writes failing; counting locally and retrying");
            } else {
                tracing::debug!(node = %node.config.node_id, error = %e, "store write retry failed");
            }
            failures += 1;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
        if failures > 0 {
            tracing::info!(node = %node.config.node_id, failures, "store writes resumed");
        }
    }
    if let Err(e) = flush(&node).await {
        tracing::warn!(node = %node.config.node_id, error = %e, "final store flush failed; the leader counts this node out when its registration expires");
    }
}

/// Writes everything pending now. On error, what was taken is pending again.
pub async fn flush(node: &Node) -> Result<(), StoreError> {
    loop {
        let (batch, full) = node.pending.take(node.config.write_batch);
        node.metrics.store_pending.set(node.pending.len() as i64);
        if batch.is_empty() && !full {
            return Ok(());
        }
        let result = async {
            if full {
                full_resync(node).await?;
            }
            let users: Vec<(UserId, Option<String>)> = batch.iter().map(|(u, d)| (u.clone(), d.conn.clone())).collect();
            write(node, &users, None).await
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
                node.pending.put_back(batch, full);
                node.metrics.store_pending.set(node.pending.len() as i64);
                return Err(e);
            }
        }
    }
}

async fn full_resync(node: &Node) -> Result<(), StoreError> {
    // Users with connections here, users this node still owes a zero, and
    // whatever the store says this node has.
    let mut users: HashSet<UserId> = node.hub.owed_users().into_iter().collect();
    users.extend(node.store.node_users(&node.config.node_id).await?);
    let all: Vec<(UserId, Option<String>)> = users.into_iter().map(|u| (u, None)).collect();
    tracing::info!(node = %node.config.node_id, users = all.len(), "rewriting all counts to the store");
    for chunk in all.chunks(node.config.write_batch) {
        write(node, chunk, Some("resync")).await?;
    }
    Ok(())
}

async fn write(node: &Node, batch: &[(UserId, Option<String>)], reason: Option<&str>) -> Result<(), StoreError> {
    if batch.is_empty() {
        return Ok(());
    }
    let updates: Vec<CountUpdate> =
        batch.iter().map(|(u, _)| CountUpdate { user_id: u.clone(), connections: node.hub.local_count(u) }).collect();
    let now = presence_model::time::now_ms();
    let results = node.store.set_counts(&node.config.node_id, &updates, now).await?;
    for ((update, (_, conn)), result) in updates.iter().zip(batch).zip(results) {
        match result {
            Some(change) => {
                node.hub.apply(&change.presence, now, None);
                publish(node, &change, conn.clone(), reason, now).await;
            }
            None => node.hub.reconfirm(&update.user_id),
        }
        node.hub.set_written(&update.user_id, update.connections);
    }
    Ok(())
}

async fn publish(node: &Node, change: &PresenceChange, connection_id: Option<String>, reason: Option<&str>, ts: u64) {
    let event = StatusEvent {
        v: EVENT_VERSION,
        kind: if change.presence.connections > change.previous { EventKind::Join } else { EventKind::Leave },
        user_id: change.presence.user_id.clone(),
        node_id: node.config.node_id.clone(),
        connection_id,
        connections: change.presence.connections,
        seq: change.presence.seq,
        epoch: node.table.epoch(),
        ts,
        reason: reason.map(str::to_string),
    };
    match node.bus.publish(event).await {
        Ok(()) => node.metrics.events_published.inc(),
        Err(e) => {
            node.metrics.bus_errors.inc();
            tracing::warn!(node = %node.config.node_id, error = %e, "event not published; subscribers elsewhere catch up at their next resync");
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
        let p = PendingWrites::new(2);
        assert!(p.mark(&uid("a"), None));
        let w = p.mark_and_wait(&uid("b"), Some("c1"));
        assert!(w.is_some());
        assert!(p.mark(&uid("a"), Some("c2")), "re-marking a held user always fits");
        assert!(p.mark_and_wait(&uid("c"), None).is_none(), "a full set does not grow");
        assert_eq!(p.len(), 2);
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
