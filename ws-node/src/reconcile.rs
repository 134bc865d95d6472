//! The drift reconciler: every `reconcile_interval`, compares what the store
//! holds for this node (its per-node count of each user) with what this node
//! last wrote, and has the writer rewrite every user that differs.
//!
//! The writer's rules keep the two equal; this is the backstop for what they
//! cannot see: a write lost between the store and its answer, an operator's
//! hand edit, a store failover that kept some keys, a bug. Differences are
//! counted: a user the store counts here with no connection here is a ghost
//! (`presence_ghosts_reaped_total`); any other difference is a repair
//! (`presence_count_repairs_total`). Both should stay at zero.
//!
//! A write in flight while the reconciler reads would look like a
//! difference, so a user is judged only when what the node wrote for it did
//! not change across the store read, and a difference only leads to one more
//! write of the current local count, which is always right.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use presence_backend::Store;
use presence_model::UserId;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::counts::Counts;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::writer::PendingWrites;

/// What the reconciler needs.
pub struct Reconciler {
    /// What the node wrote.
    pub counts: Arc<Counts>,
    /// Where the store's view is read.
    pub store: Arc<dyn Store>,
    /// Where differences are sent to be rewritten.
    pub pending: Arc<PendingWrites>,
    /// No reconciling while fenced or while the store is down.
    pub membership: Arc<Membership>,
    /// This node's ID (its field in the store).
    pub node_id: String,
    /// How often.
    pub interval: Duration,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// What one pass found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// Users the store counted here with nothing here.
    pub ghosts: usize,
    /// Users whose stored count differed otherwise.
    pub repairs: usize,
}

impl Reconciler {
    /// Runs a pass every interval until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.membership.is_fenced() || !self.membership.store_ok() {
                continue;
            }
            match self.pass().await {
                Ok(drift) if drift != Drift::default() => {
                    tracing::warn!(node = %self.node_id, ghosts = drift.ghosts, repairs = drift.repairs, "store differed from this node's counts; rewriting");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(node = %self.node_id, error = %e, "reconcile pass failed; the next one retries")
                }
            }
        }
    }

    /// One comparison. Marks every differing user dirty and counts it.
    pub async fn pass(&self) -> Result<Drift, presence_backend::StoreError> {
        let before = self.counts.written_counts();
        let stored: HashMap<UserId, u32> = self.store.node_counts(&self.node_id).await?.into_iter().collect();
        let after = self.counts.written_counts();
        let mut drift = Drift::default();
        let users: Vec<&UserId> = stored.keys().chain(after.keys().filter(|u| !stored.contains_key(*u))).collect();
        for user in users {
            let (was, now) = (before.get(user).copied().unwrap_or(0), after.get(user).copied().unwrap_or(0));
            let in_store = stored.get(user).copied().unwrap_or(0);
            if was != now || now == in_store {
                continue;
            }
            if now == 0 && self.counts.local_counts(std::slice::from_ref(user))[0].connections == 0 {
                drift.ghosts += 1;
                self.metrics.ghosts_reaped.inc();
            } else {
                drift.repairs += 1;
                self.metrics.count_repairs.inc();
            }
            self.pending.mark(user, None, None);
        }
        Ok(drift)
    }
}

#[cfg(test)]
mod tests {
    use presence_backend::{CountUpdate, MemoryBus, MemoryStore};
    use presence_model::auth::{ClaimChecks, Verifier};

    use super::*;
    use crate::conn::Conn;
    use crate::{Node, NodeConfig};

    fn uid(s: &str) -> UserId {
        UserId::parse(s).expect("valid")
    }

    #[tokio::test]
    async fn ghosts_and_wrong_counts_are_found_and_rewritten() {
        let store = MemoryStore::new();
        let verifier = Arc::new(Verifier::hs256(b"s", &ClaimChecks::default()).expect("verifier"));
        let node = Node::start(
            NodeConfig::new("n1", "ws://n1"),
            verifier,
            Arc::new(store.clone()),
            Arc::new(MemoryBus::default()),
        )
        .await;
        let conn = Conn::new(1, 8);
        node.counts.connect(&uid("real"), conn);
        let written = node.pending.mark_and_wait(&uid("real"), None).expect("room");
        tokio::time::timeout(Duration::from_secs(5), written).await.expect("written").expect("confirmed");
        let reconciler = Reconciler {
            counts: node.counts.clone(),
            store: Arc::new(store.clone()),
            pending: node.pending.clone(),
            membership: node.membership.clone(),
            node_id: "n1".into(),
            interval: Duration::from_secs(3600),
            metrics: node.metrics.clone(),
        };
        assert_eq!(reconciler.pass().await.expect("up"), Drift::default(), "nothing to do when in step");
        // Behind the node's back: a ghost, and a wrong count for a real user.
        store
            .set_counts("n1", &[CountUpdate::new(uid("ghost"), 2), CountUpdate::new(uid("real"), 5)], 1)
            .await
            .expect("up");
        assert_eq!(reconciler.pass().await.expect("up"), Drift { ghosts: 1, repairs: 1 });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut stored = store.node_counts("n1").await.expect("up");
            stored.sort();
            if stored == vec![(uid("real"), 1)] {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "not repaired: {stored:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!((node.metrics.ghosts_reaped.get(), node.metrics.count_repairs.get()), (1, 1));
        node.shutdown().await;
    }
}
