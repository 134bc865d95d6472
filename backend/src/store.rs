//! The store: the shared state of the cluster.
//!
//! It holds four things, each with its own consistency rule:
//!
//! * the routing table, replaced only by compare-and-set on its epoch;
//! * node registrations, each with a TTL the node renews by heartbeating;
//! * per-user presence: each node's connection count for the user, a sequence
//!   number and the last disconnect time. A node always writes its *absolute*
//!   count for a user (never a delta), so a retried or replayed write is
//!   harmless, and the cluster-wide count is the sum over nodes;
//! * the leader lease of the coordinators. Table writes and count-outs by
//!   the leader name the lease holder and are refused once it no longer
//!   holds the lease (fencing: a leader that was paused cannot act after
//!   another took over).
//!
//! Sequence numbers are `max(previous + 1, store clock in µs)`: they only grow
//! for a user, even when the store loses its data and starts again.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use presence_model::{
    EventReason, NodeRecord, Presence, PresenceChange, RoutingTable, Share, TableVersion, UserId, UserStatus,
};
use tokio::sync::{mpsc, watch};

use crate::live::{Live, LiveFeed};

/// A store operation failed; the caller keeps its state and retries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with data this version cannot read.
    #[error("store holds unreadable data: {0}")]
    Corrupt(String),
    /// A leader's write was refused: the caller no longer holds the lease.
    #[error("refused: {0} does not hold the leader lease")]
    NotLeader(String),
}

/// One node's absolute connection count for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountUpdate {
    /// The user.
    pub user_id: UserId,
    /// The node's live connections of that user (0 removes the node's entry).
    pub connections: u32,
    /// Why the count went down, if it did: kept with the record when the
    /// user's total reaches 0, so `/presence` and subscribe snapshots can
    /// say why the user is offline.
    pub reason: Option<EventReason>,
    /// The node's devices and activity for the user (summed over nodes like the count).
    pub share: Share,
}

impl CountUpdate {
    /// `user_id` has `connections` here, all active, of unknown device; no reason given.
    pub fn new(user_id: UserId, connections: u32) -> Self {
        Self { user_id, connections, reason: None, share: Share::plain(connections) }
    }
}

/// Unique users and peak connections (`GET /stats`), per UTC hour and day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// Distinct users seen online this hour (estimated: HyperLogLog, ~1% error).
    pub unique_users_hour: u64,
    /// Distinct users seen online today (estimated likewise).
    pub unique_users_day: u64,
    /// Most connections at once today, as sampled by the leader coordinator.
    pub peak_connections_day: u64,
}

/// The UTC hour and day numbers (since the Unix epoch) of `now_ms`: the
/// periods [`Activity`] counts in.
pub fn periods(now_ms: u64) -> (u64, u64) {
    (now_ms / 3_600_000, now_ms / 86_400_000)
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// The node was registered under the same run: nothing to do.
    Renewed,
    /// The node was not registered (first start, expiry, a store that lost
    /// its data) or was counted out since its last heartbeat: it must write
    /// back all its counts.
    Fresh,
    /// Another run of the same node ID held the registration (a restart
    /// faster than the TTL): the old run's counts must be counted out, and
    /// this run's written back.
    Restarted,
}

impl Registration {
    /// Whether the node must rewrite every count it holds or the store holds for it.
    pub fn must_rewrite(self) -> bool {
        self != Self::Renewed
    }
}

/// The cluster's shared state. See the module docs for the rules.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short name for logs and `/readyz` (`memory`, `redis`).
    fn kind(&self) -> &'static str;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The current routing table, if one was ever written.
    async fn load_table(&self) -> Result<Option<RoutingTable>, StoreError>;

    /// The current table's version only: the cheap periodic check of readers.
    async fn table_version(&self) -> Result<Option<TableVersion>, StoreError>;

    /// Writes `table` if the stored epoch is `expected` (`None`: no table yet),
    /// then notifies readers. Returns whether it was written. With a
    /// `leader`, the write is refused ([`StoreError::NotLeader`]) unless that
    /// holder holds the lease, atomically with the write.
    async fn swap_table(
        &self,
        expected: Option<u64>,
        table: &RoutingTable,
        leader: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// Epochs announced by writers. Best effort: readers also poll [`Store::table_epoch`].
    fn table_notices(&self) -> watch::Receiver<u64>;

    /// Registers or renews a node (identified by `node.id`, this process by
    /// `node.run_id`) with a TTL; see [`Registration`] for what it reports.
    async fn heartbeat(&self, node: &NodeRecord, ttl: Duration) -> Result<Registration, StoreError>;

    /// Removes a node's registration (clean shutdown).
    async fn deregister(&self, node_id: &str) -> Result<(), StoreError>;

    /// Nodes whose registration has not expired.
    async fn live_nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;

    /// Sets `node_id`'s count for each user. For each update, returns the
    /// user's new presence, or `None` where the node's count was already that
    /// (nothing changed, no sequence number spent). A 0 for a user the store
    /// has no record of is a change: the record was lost, and readers that
    /// still hold the user online must hear the zero.
    async fn set_counts(
        &self,
        node_id: &str,
        updates: &[CountUpdate],
        now_ms: u64,
    ) -> Result<Vec<Option<PresenceChange>>, StoreError>;

    /// Users for whom `node_id` has a non-zero count, with that count.
    async fn node_counts(&self, node_id: &str) -> Result<Vec<(UserId, u32)>, StoreError>;

    /// Nodes that hold any presence entry (live or not), so the leader can find dead ones.
    async fn nodes_with_presence(&self) -> Result<Vec<String>, StoreError>;

    /// Counts a dead node out on behalf of the lease holder `leader`:
    /// removes its entries from every user it had (reason `node_lost`) and
    /// returns the changes (one per user whose total changed). Refused with
    /// [`StoreError::NotLeader`] when `leader` does not hold the lease (checked
    /// before it starts and between batches), and a no-op (no changes) while
    /// the node is registered. Afterwards the node's next heartbeat reports
    /// [`Registration::Fresh`], so a node counted out by mistake rewrites its counts.
    async fn purge_node(&self, node_id: &str, now_ms: u64, leader: &str) -> Result<Vec<PresenceChange>, StoreError>;

    /// Presence of each user, in order (unknown users come back with 0 connections and seq 0).
    async fn presence(&self, users: &[UserId]) -> Result<Vec<Presence>, StoreError>;

    /// Takes or renews the leader lease for `holder`. Returns whether `holder` holds it.
    async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Gives the lease up if `holder` holds it.
    async fn release_lease(&self, holder: &str) -> Result<(), StoreError>;

    /// Sets (or with `None` clears) the status `user` set, atomically with a
    /// new `seq`, and announces it like a count change. The store fills
    /// `invisible_since` (kept while the user stays invisible). With
    /// `if_expires_at`, only a status expiring exactly then is cleared
    /// (the owner's expiry timer must not clear a newer status); `None` when
    /// that did not match.
    async fn set_status(
        &self,
        user: &UserId,
        status: Option<UserStatus>,
        if_expires_at: Option<u64>,
        now_ms: u64,
    ) -> Result<Option<PresenceChange>, StoreError>;

    /// Adds users seen online to this hour's and this day's unique counts.
    async fn record_seen(&self, users: &[UserId], now_ms: u64) -> Result<(), StoreError>;

    /// Raises today's peak of concurrent connections to `connections` if higher.
    async fn record_peak(&self, connections: u64, now_ms: u64) -> Result<(), StoreError>;

    /// Unique users this hour and today, and today's peak.
    async fn activity(&self, now_ms: u64) -> Result<Activity, StoreError>;

    /// A feed of the changes of the users its caller follows (the fast path,
    /// [`crate::live`]). Each call opens a feed of its own; a node opens one.
    async fn live_feed(&self) -> Result<(Arc<dyn LiveFeed>, mpsc::Receiver<Live>), StoreError>;
}

/// The next sequence number after `previous` on a store whose clock reads `now_us`.
pub fn next_seq(previous: u64, now_us: u64) -> u64 {
    (previous + 1).max(now_us)
}
