//! The node's local view of users: the live connections of each user it
//! serves, the connections watching each user, and the newest cluster-wide
//! state it knows for each of them.
//!
//! Every state change arrives as a [`Presence`] stamped with the store's
//! per-user sequence number, from the node's own writes or from the bus, and
//! is applied only if it is newer than what the hub holds; applying it pushes
//! `count` to the user's connections and `status` to its watchers. So
//! duplicates, replays and reordering between the two paths are harmless.
//!
//! The map is sharded by vnode behind `std::sync::Mutex`es: every critical
//! section is a few map operations and `try_send`s, never an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use presence_model::wire::ServerMessage;
use presence_model::{Presence, RoutingTable, UserId, Vnode, VNODES};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::metrics::Metrics;

const SHARDS: usize = 64;

/// What a connection's writer receives.
#[derive(Debug)]
pub enum Outbound {
    /// A protocol message, already serialised (shared between all receivers).
    Text(Utf8Bytes),
    /// A `reconnect` message: send it, then close with 4011 after the handoff timeout.
    Handoff(Utf8Bytes),
}

/// The hub's handle on one connection.
#[derive(Clone)]
pub struct Conn {
    inner: Arc<ConnShared>,
}

struct ConnShared {
    /// Node-local connection number.
    id: u64,
    /// Bounded queue to the connection's task.
    tx: mpsc::Sender<Outbound>,
    /// Rung when the queue overflowed: the task drops the client.
    overflow: Notify,
}

impl Conn {
    /// A handle and the receiving end of its queue, bounded at `capacity`.
    pub fn new(id: u64, capacity: usize) -> (Self, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { inner: Arc::new(ConnShared { id, tx, overflow: Notify::new() }) }, rx)
    }

    /// The connection number.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Waits until the hub found the queue full.
    pub async fn overflowed(&self) {
        self.inner.overflow.notified().await
    }

    /// Queues without waiting. A full queue means the client reads too slowly:
    /// it is told to go (see [`Conn::overflowed`]) and counted.
    pub fn push(&self, out: Outbound, metrics: &Metrics) {
        match self.inner.tx.try_send(out) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics.slow_consumers.inc();
                self.inner.overflow.notify_one();
            }
            // The task is gone; its cleanup will remove this handle.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// One user as this node knows it.
#[derive(Default)]
struct Entry {
    /// This node's live connections of the user.
    conns: Vec<Conn>,
    /// Connections on this node subscribed to the user's status.
    watchers: Vec<Conn>,
    /// Newest cluster-wide state known (`seq` 0: nothing known yet).
    state: Option<Presence>,
    /// The count this node last wrote to the store for the user.
    written: u32,
    /// The last `count` value pushed to all of the user's connections
    /// (`None` after a connection joined with only an estimate).
    sent_count: Option<u64>,
    /// A `reconnect` went out to the user's connections at this epoch.
    handed_off: bool,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.conns.is_empty() && self.watchers.is_empty() && self.written == 0
    }

    /// Connections the user has in the cluster, as best known right now:
    /// the last store-confirmed total corrected by this node's unwritten changes.
    fn estimate(&self) -> u64 {
        let known = self.state.as_ref().map_or(0, |s| s.connections);
        (known + self.conns.len() as u64).saturating_sub(u64::from(self.written))
    }
}

/// Text of a `status` message for `p` at `now_ms`.
pub fn status_message(p: &Presence, now_ms: u64) -> ServerMessage {
    ServerMessage::Status {
        user_id: p.user_id.clone(),
        online: p.online(),
        connections: p.connections,
        last_seen: p.reported_last_seen(now_ms),
    }
}

fn text(m: &ServerMessage) -> Utf8Bytes {
    Utf8Bytes::from(m.to_json())
}

/// See the module docs.
pub struct Hub {
    shards: Box<[Mutex<HashMap<UserId, Entry>>]>,
    metrics: Arc<Metrics>,
}

impl Hub {
    /// An empty hub reporting to `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), metrics }
    }

    fn shard(&self, user: &UserId) -> MutexGuard<'_, HashMap<UserId, Entry>> {
        let m = &self.shards[user.vnode() as usize % SHARDS];
        // A panic while holding the lock left plain data behind; keep serving.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn each_shard(&self) -> impl Iterator<Item = MutexGuard<'_, HashMap<UserId, Entry>>> {
        self.shards.iter().map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Adds a live connection of `user`.
    pub fn connect(&self, user: &UserId, conn: Conn) {
        let mut s = self.shard(user);
        let e = s.entry(user.clone()).or_default();
        e.conns.push(conn);
        e.handed_off = false;
        // The newcomer's `welcome` carries an estimate, not what the others were
        // last sent: the next authoritative count must reach every connection.
        e.sent_count = None;
    }

    /// The user's cluster-wide count as best known now (see [`Hub::connect`]).
    pub fn estimate(&self, user: &UserId) -> u64 {
        self.shard(user).get(user).map_or(0, Entry::estimate)
    }

    /// Removes a connection of `user`, and its subscriptions.
    pub fn disconnect(&self, user: &UserId, conn_id: u64, watched: &[UserId]) {
        {
            let mut s = self.shard(user);
            if let Some(e) = s.get_mut(user) {
                e.conns.retain(|c| c.id() != conn_id);
                // The entry stays while `written` is non-zero: the sync task still owes the store a 0.
                if e.is_empty() {
                    s.remove(user);
                }
            }
        }
        for w in watched {
            self.unwatch(w, conn_id);
        }
    }

    /// The node's live connections of `user`.
    pub fn local_count(&self, user: &UserId) -> u32 {
        self.shard(user).get(user).map_or(0, |e| e.conns.len() as u32)
    }

    /// Records what the sync task wrote for `user`, and drops the entry if nothing else holds it.
    pub fn set_written(&self, user: &UserId, count: u32) {
        let mut s = self.shard(user);
        if let Some(e) = s.get_mut(user) {
            e.written = count;
            if e.is_empty() {
                s.remove(user);
            }
        }
    }

    /// Subscribes `conn` to `user`. Returns the known state, if any.
    pub fn watch(&self, user: &UserId, conn: Conn) -> Option<Presence> {
        let mut s = self.shard(user);
        let e = s.entry(user.clone()).or_default();
        if !e.watchers.iter().any(|c| c.id() == conn.id()) {
            e.watchers.push(conn);
        }
        e.state.clone()
    }

    /// Unsubscribes connection `conn_id` from `user`.
    pub fn unwatch(&self, user: &UserId, conn_id: u64) {
        let mut s = self.shard(user);
        if let Some(e) = s.get_mut(user) {
            e.watchers.retain(|c| c.id() != conn_id);
            if e.is_empty() {
                s.remove(user);
            }
        }
    }

    /// Applies a state if it is newer than the known one: pushes `count` to the
    /// user's connections (when the number changed) and `status` to its
    /// watchers (all but `quiet`, which the caller answers itself). Returns
    /// whether it was newer.
    pub fn apply(&self, p: &Presence, now_ms: u64, quiet: Option<u64>) -> bool {
        let mut s = self.shard(&p.user_id);
        let Some(e) = s.get_mut(&p.user_id) else {
            // Nobody here cares about this user.
            return false;
        };
        if e.state.as_ref().is_some_and(|cur| cur.seq >= p.seq) {
            self.metrics.events_stale.inc();
            return false;
        }
        let mut next = p.clone();
        if next.last_seen.is_none() {
            next.last_seen = e.state.as_ref().and_then(|c| c.last_seen);
        }
        e.state = Some(next);
        self.push_updates(e, now_ms, quiet);
        true
    }

    /// The store confirmed this node's count without a change (so the known
    /// total stands): if a connection joined with only an estimate since the
    /// last `count`, send everyone the known total.
    pub fn reconfirm(&self, user: &UserId) {
        let mut s = self.shard(user);
        let Some(e) = s.get_mut(user) else { return };
        let (Some(state), None) = (&e.state, e.sent_count) else { return };
        if e.conns.is_empty() {
            return;
        }
        e.sent_count = Some(state.connections);
        let t = text(&ServerMessage::Count { user_id: state.user_id.clone(), connections: state.connections });
        for c in &e.conns {
            c.push(Outbound::Text(t.clone()), &self.metrics);
        }
    }

    fn push_updates(&self, e: &mut Entry, now_ms: u64, quiet: Option<u64>) {
        let Some(state) = &e.state else { return };
        if !e.conns.is_empty() && e.sent_count != Some(state.connections) {
            e.sent_count = Some(state.connections);
            let t = text(&ServerMessage::Count { user_id: state.user_id.clone(), connections: state.connections });
            for c in &e.conns {
                c.push(Outbound::Text(t.clone()), &self.metrics);
            }
        }
        if e.watchers.iter().any(|c| Some(c.id()) != quiet) {
            let t = text(&status_message(state, now_ms));
            for c in e.watchers.iter().filter(|c| Some(c.id()) != quiet) {
                c.push(Outbound::Text(t.clone()), &self.metrics);
            }
        }
    }

    /// Users whose count this node must keep right in the store: those with
    /// connections here, and those it wrote a non-zero count for and owes a zero.
    pub fn owed_users(&self) -> Vec<UserId> {
        let mut out = Vec::new();
        for s in self.each_shard() {
            out.extend(s.iter().filter(|(_, e)| !e.conns.is_empty() || e.written > 0).map(|(u, _)| u.clone()));
        }
        out
    }

    /// Every user the hub holds (served or watched): what a resync re-reads.
    pub fn all_users(&self) -> Vec<UserId> {
        let mut out = Vec::new();
        for s in self.each_shard() {
            out.extend(s.keys().cloned());
        }
        out
    }

    /// (connections, users) served here.
    pub fn totals(&self) -> (u64, u64) {
        let (mut c, mut u) = (0, 0);
        for s in self.each_shard() {
            for e in s.values().filter(|e| !e.conns.is_empty()) {
                c += e.conns.len() as u64;
                u += 1;
            }
        }
        (c, u)
    }

    /// Connections per vnode, for the heartbeat's load report.
    pub fn vnode_load(&self) -> Vec<(Vnode, u32)> {
        let mut load = vec![0u32; VNODES];
        for s in self.each_shard() {
            for (u, e) in s.iter() {
                load[u.vnode() as usize] += e.conns.len() as u32;
            }
        }
        load.into_iter().enumerate().filter(|(_, l)| *l > 0).map(|(v, l)| (v as Vnode, l)).collect()
    }

    /// Sends `reconnect` to the connections of every user whose vnode `table`
    /// gives to another node (once per move). Returns how many connections were told.
    pub fn hand_off(&self, table: &RoutingTable, self_id: &str, reason: &str) -> usize {
        let mut told = 0;
        for mut s in self.each_shard() {
            for (u, e) in s.iter_mut() {
                if e.conns.is_empty() || e.handed_off {
                    continue;
                }
                let Some(owner) = table.owner_of_vnode(u.vnode()) else { continue };
                if owner.id == self_id {
                    continue;
                }
                e.handed_off = true;
                let t = text(&ServerMessage::Reconnect {
                    url: owner.url.clone(),
                    epoch: table.epoch,
                    reason: reason.to_string(),
                });
                for c in &e.conns {
                    c.push(Outbound::Handoff(t.clone()), &self.metrics);
                    told += 1;
                }
            }
        }
        told
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::parse(s).expect("valid")
    }

    fn hub() -> Hub {
        Hub::new(Arc::new(Metrics::new()))
    }

    fn p(u: &str, connections: u64, seq: u64) -> Presence {
        Presence { user_id: uid(u), connections, seq, last_seen: None }
    }

    fn drain(rx: &mut mpsc::Receiver<Outbound>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            match m {
                Outbound::Text(t) | Outbound::Handoff(t) => out.push(t.to_string()),
            }
        }
        out
    }

    #[test]
    fn newer_states_push_count_and_status_once() {
        let h = hub();
        let (c1, mut r1) = Conn::new(1, 16);
        let (w, mut rw) = Conn::new(2, 16);
        h.connect(&uid("a"), c1);
        assert_eq!(h.estimate(&uid("a")), 1);
        assert!(h.watch(&uid("a"), w).is_none());
        assert!(h.apply(&p("a", 1, 10), 0, None));
        assert!(!h.apply(&p("a", 1, 10), 0, None), "duplicate dropped");
        assert!(!h.apply(&p("a", 5, 9), 0, None), "stale dropped");
        assert!(h.apply(&p("a", 1, 11), 0, None), "newer, same count");
        assert_eq!(drain(&mut r1), vec![r#"{"type":"count","userId":"a","connections":1}"#]);
        assert_eq!(drain(&mut rw).len(), 2);
    }

    #[test]
    fn a_new_connection_hears_the_next_count_even_if_unchanged() {
        let h = hub();
        let (c1, mut r1) = Conn::new(1, 16);
        h.connect(&uid("a"), c1);
        h.apply(&p("a", 1, 1), 0, None);
        let (c2, mut r2) = Conn::new(2, 16);
        h.connect(&uid("a"), c2);
        // Same total as last pushed (another connection left elsewhere meanwhile).
        h.apply(&p("a", 1, 2), 0, None);
        assert_eq!(drain(&mut r1).len(), 2);
        assert_eq!(drain(&mut r2), vec![r#"{"type":"count","userId":"a","connections":1}"#]);
    }

    #[test]
    fn overflow_rings_the_connection() {
        let h = hub();
        let (c, _rx) = Conn::new(1, 1);
        h.connect(&uid("a"), c.clone());
        h.apply(&p("a", 1, 1), 0, None);
        h.apply(&p("a", 2, 2), 0, None);
        assert_eq!(h.metrics.slow_consumers.get(), 1);
        let rung = futures_util::FutureExt::now_or_never(c.overflowed());
        assert!(rung.is_some());
    }

    #[test]
    fn entry_outlives_connections_until_zero_is_written() {
        let h = hub();
        let (c, _rx) = Conn::new(1, 4);
        h.connect(&uid("a"), c);
        h.set_written(&uid("a"), 1);
        h.disconnect(&uid("a"), 1, &[]);
        assert_eq!(h.all_users().len(), 1);
        h.set_written(&uid("a"), 0);
        assert!(h.all_users().is_empty());
    }

    #[test]
    fn estimate_adds_unwritten_local_changes() {
        let h = hub();
        let (c1, _r1) = Conn::new(1, 4);
        let (c2, _r2) = Conn::new(2, 4);
        h.connect(&uid("a"), c1);
        h.set_written(&uid("a"), 1);
        // The store says 3 (two elsewhere); a second local connection makes 4.
        h.apply(&p("a", 3, 5), 0, None);
        h.connect(&uid("a"), c2);
        assert_eq!(h.estimate(&uid("a")), 4);
    }

    #[test]
    fn hand_off_tells_each_connection_once() {
        let h = hub();
        let (c, mut rx) = Conn::new(1, 4);
        let user = uid("alice");
        h.connect(&user, c);
        let owners: Vec<Option<&str>> = vec![Some("other"); VNODES];
        let t = RoutingTable::from_owners(9, &owners, |id| format!("ws://{id}/socket"));
        assert_eq!(h.hand_off(&t, "me", "rebalance"), 1);
        assert_eq!(h.hand_off(&t, "me", "rebalance"), 0);
        let msgs = drain(&mut rx);
        assert_eq!(msgs, vec![r#"{"type":"reconnect","url":"ws://other/socket","epoch":9,"reason":"rebalance"}"#]);
    }
}
