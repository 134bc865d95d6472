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
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::Node;

/// Retry delay after a failed store write.
const RETRY: Duration = Duration::from_millis(250);

/// The bounded set of users whose count the store has not seen yet.
///
/// Every mark gets a ticket (a number that grows); once everything marked up to
/// ticket `t` is in the store, [`PendingWrites::written`] reaches `t`. A session
/// waits for its connection's ticket before sending `welcome`, so that a client
/// that connects to a new node and then drops the old one (a handoff) is
/// counted on the new node before the old node counts it out: nobody is shown
/// offline in between.
pub struct PendingWrites {
    inner: Mutex<Pending>,
    notify: Notify,
    max_pending: usize,
    /// Highest ticket whose writes are all confirmed.
    written: watch::Sender<u64>,
}

/// Dirty users taken for one write, each with the connection that last changed it.
type Batch = Vec<(UserId, Option<String>)>;

#[derive(Default)]
struct Pending {
    /// Dirty users, each with the connection that last changed it (for the event).
    users: HashMap<UserId, Option<String>>,
    /// Rewrite everything: the set overflowed or the store forgot us.
    full_resync: bool,
    /// Tickets handed out so far.
    marks: u64,
}

impl PendingWrites {
    /// An empty set holding at most `max_pending` users.
    pub fn new(max_pending: usize) -> Self {
        Self {
            inner: Mutex::new(Pending::default()),
            notify: Notify::new(),
            max_pending: max_pending.max(1),
            written: watch::channel(0).0,
        }
    }

    /// Waits until the writes of `ticket` are in the store, or `timeout` passes.
    /// Returns whether they are.
    pub async fn wait_written(&self, ticket: u64, timeout: std::time::Duration) -> bool {
        let mut rx = self.written.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|&w| w >= ticket)).await.is_ok_and(|r| r.is_ok())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Plain data; a panic elsewhere must not stop counting.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `user` dirty and returns the ticket of this mark. When the set is
    /// full the user is not stored; a full resync (which covers it) is scheduled instead.
    pub fn mark(&self, user: &UserId, conn: Option<&str>) -> u64 {
        let ticket = {
            let mut p = self.lock();
            if p.users.len() >= self.max_pending && !p.users.contains_key(user) {
                p.full_resync = true;
            } else {
                p.users.insert(user.clone(), conn.map(str::to_string));
            }
            p.marks += 1;
            p.marks
        };
        self.notify.notify_one();
        ticket
    }

    /// Schedules a rewrite of every count this node holds or the store holds for it.
    pub fn request_full_resync(&self) {
        self.lock().full_resync = true;
        self.notify.notify_one();
    }

    /// Dirty users now.
    pub fn len(&self) -> usize {
        self.lock().users.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        let p = self.lock();
        p.users.is_empty() && !p.full_resync
    }

    /// Takes a batch. The third value is the ticket this batch completes: when
    /// nothing marked is left behind, writing the batch confirms every mark so far.
    fn take(&self, max: usize) -> (Batch, bool, Option<u64>) {
        let mut p = self.lock();
        let full = std::mem::take(&mut p.full_resync);
        let keys: Vec<UserId> = p.users.keys().take(max).cloned().collect();
        let batch = keys.into_iter().filter_map(|k| p.users.remove_entry(&k)).collect();
        let completes = p.users.is_empty().then_some(p.marks);
        (batch, full, completes)
    }

    fn put_back(&self, batch: Batch, full: bool) {
        let mut p = self.lock();
        p.full_resync |= full;
        for (u, c) in batch {
            if p.users.len() >= self.max_pending {
                p.full_resync = true;
                break;
            }
            // A newer mark made meanwhile wins.
            p.users.entry(u).or_insert(c);
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
        let (batch, full, completes) = node.pending.take(node.config.write_batch);
        node.metrics.store_pending.set(node.pending.len() as i64);
        if batch.is_empty() && !full {
            if let Some(t) = completes {
                node.pending.written.send_if_modified(|w| std::mem::replace(w, (*w).max(t)) < t);
            }
            return Ok(());
        }
        let result = async {
            if full {
                full_resync(node).await?;
            }
            write(node, &batch, None).await
        }
        .await;
        if let Err(e) = result {
            node.pending.put_back(batch, full);
            node.metrics.store_pending.set(node.pending.len() as i64);
            return Err(e);
        }
        if let Some(t) = completes {
            node.pending.written.send_if_modified(|w| std::mem::replace(w, (*w).max(t)) < t);
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
        assert_eq!(p.mark(&uid("a"), None), 1);
        assert_eq!(p.mark(&uid("b"), Some("c1")), 2);
        assert_eq!(p.mark(&uid("a"), Some("c2")), 3, "re-marking a held user always fits");
        assert_eq!(p.len(), 2);
        p.mark(&uid("c"), None);
        assert_eq!(p.len(), 2, "a full set does not grow");
        let (batch, full, completes) = p.take(1);
        assert_eq!((batch.len(), completes), (1, None), "one user left behind");
        let (batch2, _, completes) = p.take(10);
        assert_eq!((batch2.len(), completes), (1, Some(4)));
        let batch: Vec<_> = batch.into_iter().chain(batch2).collect();
        assert!(full);
        assert!(p.is_empty());
        p.put_back(batch, full);
        assert_eq!(p.len(), 2);
        assert!(!p.is_empty());
    }
}
