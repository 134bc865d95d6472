//! Embedded, in-process implementations of [`Store`] and [`Bus`], for the
//! demo and fast tests. They follow the same rules as the Redis store and the
//! Kafka bus (absolute per-node counts, sequence numbers from the store's
//! clock, compare-and-set on the epoch, TTLs), so the logic above them cannot
//! tell the difference.
//!
//! Locks here are `std::sync::Mutex`: every critical section is a few map
//! operations with no `.await` inside, and tokio's mutex would only add cost.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use presence_model::rich::sum_shares;
use presence_model::{
    Availability, EventReason, NodeRecord, Presence, PresenceChange, RoutingTable, Share, StatusEvent, TableVersion,
    UserId, UserStatus,
};
use tokio::sync::{broadcast, watch};

use crate::bus::{Bus, BusError, BusMessage, BusStats, BusSubscription};
use crate::hll::Hll;
use crate::live::{Live, LiveFeed, LiveSender};
use crate::store::{next_seq, periods, Activity, CountUpdate, Registration, Store, StoreError};

/// One user's record.
#[derive(Debug, Default)]
struct UserRecord {
    /// Connection count and share per node ID (only non-zero entries).
    per_node: Vec<(String, u32, Share)>,
    /// Last sequence number assigned.
    seq: u64,
    /// Last disconnect time.
    last_seen: Option<u64>,
    /// Why the user went offline (while the total is 0).
    reason: Option<EventReason>,
    /// The status the user set.
    status: Option<Box<UserStatus>>,
}

impl UserRecord {
    fn total(&self) -> u64 {
        self.per_node.iter().map(|(_, c, _)| u64::from(*c)).sum()
    }

    /// The user's presence as this record holds it.
    fn presence(&self, user_id: &UserId) -> Presence {
        let total = self.total();
        let (devices, idle_since) = sum_shares(total, self.per_node.iter().map(|(_, _, s)| s));
        Presence {
            user_id: user_id.clone(),
            connections: total,
            seq: self.seq,
            last_seen: self.last_seen,
            reason: self.reason,
            devices,
            idle_since,
            status: self.status.clone(),
        }
    }
}

/// Unique users per hour and day, and the day's peak (see [`Store::activity`]).
#[derive(Debug, Default)]
struct ActivityState {
    /// (hour number, its counter): the current hour only.
    hour: Option<(u64, Hll)>,
    /// (day number, its counter, its peak): the current day only.
    day: Option<(u64, Hll, u64)>,
}

#[derive(Debug, Default)]
struct State {
    table: Option<RoutingTable>,
    nodes: HashMap<String, (NodeRecord, Instant)>,
    users: HashMap<UserId, UserRecord>,
    node_users: HashMap<String, HashSet<UserId>>,
    lease: Option<(String, Instant)>,
    /// Nodes counted out since their last heartbeat.
    purged: HashSet<String>,
    activity: ActivityState,
}

impl State {
    /// Whether `holder` holds an unexpired lease.
    fn holds_lease(&self, holder: &str) -> bool {
        self.lease.as_ref().is_some_and(|(h, exp)| h == holder && *exp > Instant::now())
    }

    fn require_lease(&self, holder: &str) -> Result<(), StoreError> {
        if self.holds_lease(holder) {
            Ok(())
        } else {
            Err(StoreError::NotLeader(holder.to_string()))
        }
    }
}

/// The embedded store. Clone it to share one store between components.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    notices: watch::Sender<u64>,
    /// Simulated outage switch for tests of the degraded paths.
    down: AtomicBool,
    /// Open live feeds (one per node), as Redis keeps its subscribers.
    feeds: Mutex<Vec<Arc<MemoryFeed>>>,
}

/// One node's live feed on the embedded store.
struct MemoryFeed {
    users: Mutex<HashSet<UserId>>,
    tx: Arc<LiveSender>,
}

#[async_trait]
impl LiveFeed for MemoryFeed {
    async fn follow(&self, users: &[UserId]) -> Result<(), StoreError> {
        self.users.lock().unwrap_or_else(|p| p.into_inner()).extend(users.iter().cloned());
        Ok(())
    }

    async fn unfollow(&self, users: &[UserId]) -> Result<(), StoreError> {
        let mut mine = self.users.lock().unwrap_or_else(|p| p.into_inner());
        for u in users {
            mine.remove(u);
        }
        Ok(())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                notices: watch::channel(0).0,
                down: AtomicBool::new(false),
                feeds: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Makes every operation fail with [`StoreError::Unavailable`] (or succeed
    /// again), to exercise the paths a Redis outage takes.
    /// Live feeds see a gap, as Redis subscribers lose their connection.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
        self.each_feed(|f| f.tx.send(Live::Gap));
    }

    /// Drops all data, as a Redis restart without persistence does (live feeds see a gap).
    pub fn wipe(&self) {
        *self.lock() = State::default();
        self.each_feed(|f| f.tx.send(Live::Gap));
    }

    /// Runs `f` on every open feed, forgetting closed ones.
    fn each_feed(&self, f: impl Fn(&MemoryFeed)) {
        let mut feeds = self.inner.feeds.lock().unwrap_or_else(|p| p.into_inner());
        feeds.retain(|feed| !feed.tx.is_closed());
        feeds.iter().for_each(|feed| f(feed));
    }

    /// Announces changes to the feeds that follow their users (called with
    /// the state locked, so feeds see one user's changes in write order).
    fn publish<'a>(&self, changes: impl Iterator<Item = &'a PresenceChange>) {
        let mut changes = changes.peekable();
        if changes.peek().is_none() {
            return;
        }
        let feeds = self.inner.feeds.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for c in changes {
            for f in &feeds {
                if f.users.lock().unwrap_or_else(|p| p.into_inner()).contains(&c.presence.user_id) {
                    f.tx.send(Live::Change(c.presence.clone()));
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic mid-update in this process; the maps are
        // still structurally sound, so keep serving.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn up(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        if self.inner.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("embedded store is marked down".into()));
        }
        Ok(self.lock())
    }
}

fn set_count(state: &mut State, node_id: &str, u: &CountUpdate, now_ms: u64) -> Option<PresenceChange> {
    // A 0 for a record that no longer exists is announced (the record was lost
    // and readers may still hold the user online); other unchanged writes are not.
    let existed = state.users.contains_key(&u.user_id);
    let rec = state.users.entry(u.user_id.clone()).or_default();
    let pos = rec.per_node.iter().position(|(n, _, _)| n == node_id);
    let old = pos.map_or(0, |i| rec.per_node[i].1);
    let same_share = pos.is_none_or(|i| rec.per_node[i].2 == u.share);
    if old == u.connections && (u.connections != 0 || existed) && (u.connections == 0 || same_share) {
        return None;
    }
    let previous = rec.total();
    match (pos, u.connections) {
        (Some(i), 0) => {
            rec.per_node.swap_remove(i);
        }
        (Some(i), c) => {
            rec.per_node[i].1 = c;
            rec.per_node[i].2 = u.share.clone();
        }
        (None, 0) => {}
        (None, c) => rec.per_node.push((node_id.to_string(), c, u.share.clone())),
    }
    if u.connections < old {
        rec.last_seen = Some(now_ms);
    }
    if u.connections != old {
        rec.reason = if rec.total() == 0 { u.reason } else { None };
    }
    rec.seq = next_seq(rec.seq, presence_model::time::now_us());
    let change = PresenceChange { presence: rec.presence(&u.user_id), previous };
    let set = state.node_users.entry(node_id.to_string()).or_default();
    if u.connections == 0 {
        set.remove(&u.user_id);
        if set.is_empty() {
            state.node_users.remove(node_id);
        }
    } else {
        set.insert(u.user_id.clone());
    }
    Some(change)
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.up().map(drop)
    }

    async fn load_table(&self) -> Result<Option<RoutingTable>, StoreError> {
        Ok(self.up()?.table.clone())
    }

    async fn table_version(&self) -> Result<Option<TableVersion>, StoreError> {
        Ok(self.up()?.table.as_ref().map(RoutingTable::version))
    }

    async fn swap_table(
        &self,
        expected: Option<u64>,
        table: &RoutingTable,
        leader: Option<&str>,
    ) -> Result<bool, StoreError> {
        {
            let mut s = self.up()?;
            if let Some(holder) = leader {
                s.require_lease(holder)?;
            }
            if s.table.as_ref().map(|t| t.epoch) != expected {
                return Ok(false);
            }
            s.table = Some(table.clone());
        }
        self.inner.notices.send_replace(table.epoch);
        Ok(true)
    }

    fn table_notices(&self) -> watch::Receiver<u64> {
        self.inner.notices.subscribe()
    }

    async fn heartbeat(&self, node: &NodeRecord, ttl: Duration) -> Result<Registration, StoreError> {
        let mut s = self.up()?;
        let now = Instant::now();
        let purged = s.purged.remove(&node.id);
        let live = s.nodes.get(&node.id).filter(|(_, exp)| *exp > now).map(|(r, _)| r.run_id.clone());
        let outcome = match live {
            Some(run) if run != node.run_id => Registration::Restarted,
            Some(_) if !purged => Registration::Renewed,
            _ => Registration::Fresh,
        };
        s.nodes.insert(node.id.clone(), (node.clone(), now + ttl));
        Ok(outcome)
    }

    async fn deregister(&self, node_id: &str) -> Result<(), StoreError> {
        self.up()?.nodes.remove(node_id);
        Ok(())
    }

    async fn live_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let mut s = self.up()?;
        let now = Instant::now();
        s.nodes.retain(|_, (_, exp)| *exp > now);
        // Records are checked where they are read, as the Redis store does.
        let mut nodes: Vec<NodeRecord> =
            s.nodes.values().map(|(n, _)| n.clone()).filter(|n| n.validate().is_ok()).collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    async fn set_counts(
        &self,
        node_id: &str,
        updates: &[CountUpdate],
        now_ms: u64,
    ) -> Result<Vec<Option<PresenceChange>>, StoreError> {
        let mut s = self.up()?;
        let changes: Vec<Option<PresenceChange>> =
            updates.iter().map(|u| set_count(&mut s, node_id, u, now_ms)).collect();
        self.publish(changes.iter().flatten());
        Ok(changes)
    }

    async fn node_counts(&self, node_id: &str) -> Result<Vec<(UserId, u32)>, StoreError> {
        let s = self.up()?;
        let Some(users) = s.node_users.get(node_id) else { return Ok(Vec::new()) };
        Ok(users
            .iter()
            .filter_map(|u| {
                let rec = s.users.get(u)?;
                rec.per_node.iter().find(|(n, _, _)| n == node_id).map(|(_, c, _)| (u.clone(), *c))
            })
            .collect())
    }

    async fn nodes_with_presence(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.up()?.node_users.keys().cloned().collect())
    }

    async fn purge_node(&self, node_id: &str, now_ms: u64, leader: &str) -> Result<Vec<PresenceChange>, StoreError> {
        let mut s = self.up()?;
        s.require_lease(leader)?;
        if s.nodes.get(node_id).is_some_and(|(_, exp)| *exp > Instant::now()) {
            return Ok(Vec::new());
        }
        let users: Vec<UserId> = s.node_users.get(node_id).map(|u| u.iter().cloned().collect()).unwrap_or_default();
        let changes: Vec<PresenceChange> = users
            .into_iter()
            .filter_map(|user_id| {
                let zero = CountUpdate { reason: Some(EventReason::NodeLost), ..CountUpdate::new(user_id, 0) };
                set_count(&mut s, node_id, &zero, now_ms)
            })
            .collect();
        s.purged.insert(node_id.to_string());
        self.publish(changes.iter());
        Ok(changes)
    }

    async fn presence(&self, users: &[UserId]) -> Result<Vec<Presence>, StoreError> {
        let s = self.up()?;
        Ok(users
            .iter()
            .map(|u| match s.users.get(u) {
                Some(r) => r.presence(u),
                None => Presence::unknown(u.clone()),
            })
            .collect())
    }

    async fn set_status(
        &self,
        user: &UserId,
        status: Option<UserStatus>,
        if_expires_at: Option<u64>,
        now_ms: u64,
    ) -> Result<Option<PresenceChange>, StoreError> {
        let mut s = self.up()?;
        let rec = s.users.entry(user.clone()).or_default();
        if if_expires_at.is_some() && rec.status.as_ref().and_then(|st| st.expires_at) != if_expires_at {
            return Ok(None);
        }
        let was_invisible_since = rec.status.as_ref().filter(|st| st.holds(now_ms)).and_then(|st| st.invisible_since);
        rec.status = status.filter(|st| st.holds(now_ms)).map(|mut st| {
            st.invisible_since =
                (st.availability == Availability::Invisible).then(|| was_invisible_since.unwrap_or(now_ms));
            Box::new(st)
        });
        rec.seq = next_seq(rec.seq, presence_model::time::now_us());
        let total = rec.total();
        let change = PresenceChange { presence: rec.presence(user), previous: total };
        drop(s);
        self.publish(std::iter::once(&change));
        Ok(Some(change))
    }

    async fn record_seen(&self, users: &[UserId], now_ms: u64) -> Result<(), StoreError> {
        let mut s = self.up()?;
        let (hour, day) = periods(now_ms);
        let a = &mut s.activity;
        if a.hour.as_ref().is_none_or(|(h, _)| *h != hour) {
            a.hour = Some((hour, Hll::default()));
        }
        if a.day.as_ref().is_none_or(|(d, _, _)| *d != day) {
            a.day = Some((day, Hll::default(), 0));
        }
        if let (Some((_, h)), Some((_, d, _))) = (&mut a.hour, &mut a.day) {
            for u in users {
                h.add(u.as_str().as_bytes());
                d.add(u.as_str().as_bytes());
            }
        }
        Ok(())
    }

    async fn record_peak(&self, connections: u64, now_ms: u64) -> Result<(), StoreError> {
        let mut s = self.up()?;
        let day = periods(now_ms).1;
        let a = &mut s.activity;
        match &mut a.day {
            Some((d, _, peak)) if *d == day => *peak = (*peak).max(connections),
            _ => a.day = Some((day, Hll::default(), connections)),
        }
        Ok(())
    }

    async fn activity(&self, now_ms: u64) -> Result<Activity, StoreError> {
        let s = self.up()?;
        let (hour, day) = periods(now_ms);
        let a = &s.activity;
        let (unique_users_day, peak_connections_day) =
            a.day.as_ref().filter(|(d, _, _)| *d == day).map_or((0, 0), |(_, h, p)| (h.count(), *p));
        Ok(Activity {
            unique_users_hour: a.hour.as_ref().filter(|(h, _)| *h == hour).map_or(0, |(_, h)| h.count()),
            unique_users_day,
            peak_connections_day,
        })
    }

    async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut s = self.up()?;
        let now = Instant::now();
        match &s.lease {
            Some((h, exp)) if h != holder && *exp > now => Ok(false),
            _ => {
                s.lease = Some((holder.to_string(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        let mut s = self.up()?;
        if s.lease.as_ref().is_some_and(|(h, _)| h == holder) {
            s.lease = None;
        }
        Ok(())
    }

    async fn live_feed(&self) -> Result<(Arc<dyn LiveFeed>, tokio::sync::mpsc::Receiver<Live>), StoreError> {
        let (tx, rx) = LiveSender::channel();
        let feed = Arc::new(MemoryFeed { users: Mutex::new(HashSet::new()), tx });
        self.inner.feeds.lock().unwrap_or_else(|p| p.into_inner()).push(feed.clone());
        Ok((feed, rx))
    }
}

/// The embedded bus: a bounded broadcast channel. A subscriber that falls more
/// than `capacity` events behind loses the oldest ones and is told to
/// [`BusMessage::Resync`] from the store.
#[derive(Clone)]
pub struct MemoryBus {
    tx: broadcast::Sender<Arc<StatusEvent>>,
    published: Arc<std::sync::atomic::AtomicU64>,
    received: Arc<std::sync::atomic::AtomicU64>,
}

/// Default number of events a slow subscriber may fall behind before it must resync.
pub const DEFAULT_BUS_CAPACITY: usize = 65_536;

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new(DEFAULT_BUS_CAPACITY)
    }
}

impl MemoryBus {
    /// A bus whose subscribers may each lag `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self { tx: broadcast::channel(capacity.max(1)).0, published: Arc::default(), received: Arc::default() }
    }

    /// Subscriptions open now.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

#[async_trait]
impl Bus for MemoryBus {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn stats(&self) -> BusStats {
        let published = self.published.load(Ordering::Relaxed);
        BusStats {
            published,
            delivered: published,
            delivery_errors: 0,
            queue_depth: 0,
            received: self.received.load(Ordering::Relaxed),
            // Subscribers read a broadcast channel as it fills; one too far
            // behind is told to resync instead of lagging.
            consumer_lag: 0,
            healthy: true,
        }
    }

    async fn publish(&self, event: StatusEvent) -> Result<(), BusError> {
        // No subscribers is not an error: the event had nobody to reach.
        let _ = self.tx.send(Arc::new(event));
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn subscribe(&self) -> Box<dyn BusSubscription> {
        Box::new(MemorySubscription { rx: self.tx.subscribe(), received: self.received.clone() })
    }
}

struct MemorySubscription {
    rx: broadcast::Receiver<Arc<StatusEvent>>,
    received: Arc<std::sync::atomic::AtomicU64>,
}

#[async_trait]
impl BusSubscription for MemorySubscription {
    async fn next(&mut self) -> Option<BusMessage> {
        match self.rx.recv().await {
            Ok(e) => {
                self.received.fetch_add(1, Ordering::Relaxed);
                Some(BusMessage::Event(e))
            }
            Err(broadcast::error::RecvError::Lagged(_)) => Some(BusMessage::Resync),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::parse(s).expect("valid")
    }

    fn upd(s: &str, c: u32) -> CountUpdate {
        CountUpdate::new(uid(s), c)
    }

    #[tokio::test]
    async fn follows_the_store_rules() {
        crate::conformance::run_all(&MemoryStore::new(), "mem").await;
    }

    #[tokio::test]
    async fn seq_survives_a_wipe() {
        let st = MemoryStore::new();
        let before = st.set_counts("a", &[upd("u", 1)], 1).await.expect("up")[0].clone().expect("changed");
        st.wipe();
        let after = st.set_counts("a", &[upd("u", 1)], 2).await.expect("up")[0].clone().expect("changed");
        assert!(after.presence.seq > before.presence.seq);
    }

    #[tokio::test]
    async fn down_store_fails_every_call() {
        let st = MemoryStore::new();
        st.set_down(true);
        assert!(st.ping().await.is_err());
        assert!(st.set_counts("a", &[upd("u", 1)], 1).await.is_err());
        st.set_down(false);
        assert!(st.ping().await.is_ok());
    }

    #[tokio::test]
    async fn lagging_subscriber_is_told_to_resync() {
        let bus = MemoryBus::new(2);
        let mut sub = bus.subscribe();
        for seq in 0..5 {
            let change = PresenceChange { presence: Presence::counted(uid("u"), 1, seq), previous: 0 };
            bus.publish(StatusEvent::from_change(&change, "n", None, 1, 0, None)).await.expect("publish");
        }
        assert!(matches!(sub.next().await, Some(BusMessage::Resync)));
        assert!(matches!(sub.next().await, Some(BusMessage::Event(e)) if e.seq == 3));
    }
}
