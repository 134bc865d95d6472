//! The node's per-user bookkeeping, in one place: for each user it serves
//! or watches, its live connections here, the connections watching it, the
//! newest cluster-wide state known, and the count this node last wrote to
//! the store.
//!
//! Every state change arrives as a [`Presence`] stamped with the store's
//! per-user sequence number, from the node's own writes
//! ([`Counts::record_writes`]) or from the bus ([`Counts::apply`]), and is
//! applied only if it is newer than what is held; applying it hands the
//! entry to [`crate::fanout::deliver`], which pushes `count` to the user's
//! connections and `status` to its watchers. So duplicates, replays and
//! reordering between the two paths are harmless.
//!
//! The store writer talks to this module twice per batch and no more: once to
//! read the local counts it writes ([`Counts::local_counts`]) and once with
//! the store's answers ([`Counts::record_writes`]).
//!
//! The map is sharded by vnode behind `std::sync::Mutex`es: every critical
//! section is a few map operations and `try_send`s, never an `.await`, so a
//! sync lock is cheaper than an async one and cannot be held across a yield.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use presence_backend::CountUpdate;
use presence_model::{LastSeenPolicy, Presence, PresenceChange, RoutingTable, Share, TableNode, UserId, Vnode, VNODES};

use crate::conn::Conn;
use crate::fanout;
use crate::metrics::Metrics;

const SHARDS: usize = 64;

/// One user as this node knows it.
#[derive(Default)]
pub(crate) struct Entry {
    /// This node's live connections of the user.
    pub(crate) conns: Vec<Conn>,
    /// Connections on this node subscribed to the user's status, by connection number.
    pub(crate) watchers: HashMap<u64, Conn>,
    /// Newest cluster-wide state known (`None`: nothing known yet).
    pub(crate) state: Option<Presence>,
    /// The count this node last wrote to the store for the user.
    written: u32,
    /// The last `count` value pushed to all of the user's connections
    /// (`None` after a connection joined with only an estimate).
    pub(crate) sent_count: Option<u64>,
    /// A `reconnect` went out to the user's connections for the current move.
    handed_off: bool,
    /// While watchers here still see the user online during the offline grace
    /// (`OFFLINE_GRACE_MS`): when the offline status is due (ms since the
    /// Unix epoch); 0 when nothing is held (a plain number: every entry has one).
    pub(crate) held_until: u64,
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

/// Connections of users whose vnode moved, and where they go.
pub struct Moved {
    /// The new owner.
    pub owner: TableNode,
    /// The connections to tell.
    pub conns: Vec<Conn>,
}

/// What watchers other than the user are shown, and when.
#[derive(Debug, Clone, Copy, Default)]
pub struct Views {
    /// `LAST_SEEN`: what they learn of `lastSeen`.
    pub last_seen: LastSeenPolicy,
    /// `OFFLINE_GRACE_MS`: how long an offline status waits for the user to
    /// come back before watchers see it (0: not at all).
    pub offline_grace_ms: u64,
}

/// Most users waiting to be added to the store's unique-user counts; more
/// are dropped (counted in `presence_unique_dropped_total`) until the next flush.
pub const MAX_SEEN_BUFFER: usize = 50_000;

/// See the module docs.
pub struct Counts {
    shards: Box<[Mutex<HashMap<UserId, Entry>>]>,
    metrics: std::sync::Arc<Metrics>,
    /// Users whose first watcher came or last watcher left here, for the
    /// live feed ([`crate::live`]).
    pub interest: crate::live::Interest,
    /// What watchers are shown.
    views: Views,
    /// Users whose offline status is held (see [`Entry::held_until`]);
    /// at most one entry per held user.
    held: Mutex<std::collections::HashSet<UserId>>,
    /// Users who connected since the last flush to the unique-user counts
    /// (at most [`MAX_SEEN_BUFFER`]).
    seen: Mutex<Vec<UserId>>,
}

impl Counts {
    /// Empty bookkeeping reporting to `metrics`, showing watchers everything at once.
    pub fn new(metrics: std::sync::Arc<Metrics>) -> Self {
        Self::with_views(metrics, Views::default())
    }

    /// Empty bookkeeping reporting to `metrics`, showing watchers what `views` allows.
    pub fn with_views(metrics: std::sync::Arc<Metrics>, views: Views) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            metrics,
            interest: crate::live::Interest::default(),
            views,
            held: Mutex::default(),
            seen: Mutex::default(),
        }
    }

    /// What watchers are shown.
    pub fn views(&self) -> Views {
        self.views
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
        {
            let mut s = self.shard(user);
            let e = s.entry(user.clone()).or_default();
            e.conns.push(conn);
            e.handed_off = false;
            // The newcomer's `welcome` carries an estimate, not what the others were
            // last sent: the next authoritative count must reach every connection.
            e.sent_count = None;
        }
        self.saw(std::slice::from_ref(user));
    }

    /// Notes users seen online, for the unique-user counts.
    pub(crate) fn saw(&self, users: &[UserId]) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let room = MAX_SEEN_BUFFER.saturating_sub(seen.len());
        seen.extend(users.iter().take(room).cloned());
        let dropped = users.len().saturating_sub(room);
        if dropped > 0 {
            self.metrics.unique_dropped.inc_by(dropped as u64);
        }
    }

    /// Takes the users seen since the last call.
    pub(crate) fn take_seen(&self) -> Vec<UserId> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Sets connection `conn_id` of `user` idle or active; whether the
    /// node's share of the user changed (and must be written).
    pub fn set_idle(&self, user: &UserId, conn_id: u64, idle: bool, now_ms: u64) -> bool {
        let s = self.shard(user);
        s.get(user).and_then(|e| e.conns.iter().find(|c| c.id() == conn_id)).is_some_and(|c| c.set_idle(idle, now_ms))
    }

    /// The user's cluster-wide count as best known now (see [`Counts::connect`]).
    pub fn estimate(&self, user: &UserId) -> u64 {
        self.shard(user).get(user).map_or(0, Entry::estimate)
    }

    /// Removes a connection of `user`, and its subscriptions.
    pub fn disconnect(&self, user: &UserId, conn_id: u64, watched: &[UserId]) {
        {
            let mut s = self.shard(user);
            if let Some(e) = s.get_mut(user) {
                e.conns.retain(|c| c.id() != conn_id);
                // The entry stays while `written` is non-zero: the writer still owes the store a 0.
                if e.is_empty() {
                    s.remove(user);
                }
            }
        }
        for w in watched {
            self.unwatch(w, conn_id);
        }
    }

    /// Subscribes `conn` to `user`. Returns the known state, if any.
    pub fn watch(&self, user: &UserId, conn: Conn) -> Option<Presence> {
        let mut s = self.shard(user);
        let e = s.entry(user.clone()).or_default();
        if e.watchers.is_empty() {
            self.interest.note(user, true);
        }
        e.watchers.insert(conn.id(), conn);
        e.state.clone()
    }

    /// Unsubscribes connection `conn_id` from `user`.
    pub fn unwatch(&self, user: &UserId, conn_id: u64) {
        let mut s = self.shard(user);
        if let Some(e) = s.get_mut(user) {
            if e.watchers.remove(&conn_id).is_some() && e.watchers.is_empty() {
                self.interest.note(user, false);
            }
            if e.is_empty() {
                s.remove(user);
            }
        }
    }

    /// Applies a state if it is newer than the known one and delivers it (to
    /// every watcher but `quiet`, which the caller answers itself). Returns
    /// whether it was newer.
    pub fn apply(&self, p: &Presence, now_ms: u64, quiet: Option<u64>) -> bool {
        let delivery = {
            let mut s = self.shard(&p.user_id);
            let Some(e) = s.get_mut(&p.user_id) else {
                // Nobody here cares about this user.
                return false;
            };
            match self.apply_to(e, p, now_ms, quiet) {
                Some(d) => d,
                None => return false,
            }
        };
        if let Some(d) = delivery {
            d.send(&self.metrics);
        }
        true
    }

    /// Applies `p` to the entry if newer: `None` when it was not, else what
    /// to send to watchers once the lock is released.
    ///
    /// With an offline grace, a user who goes offline while watchers here see
    /// them online is held: watchers are told only when the grace (counted
    /// from the disconnect) passes without a return ([`Counts::release_held`]).
    fn apply_to(
        &self,
        e: &mut Entry,
        p: &Presence,
        now_ms: u64,
        quiet: Option<u64>,
    ) -> Option<Option<fanout::Delivery>> {
        if e.state.as_ref().is_some_and(|cur| cur.seq >= p.seq) {
            self.metrics.events_stale.inc();
            return None;
        }
        let mut next = p.clone();
        if next.last_seen.is_none() {
            next.last_seen = e.state.as_ref().and_then(|c| c.last_seen);
        }
        let shown_online = e.held_until > 0 || e.state.as_ref().is_some_and(|c| c.online() && !c.invisible_at(now_ms));
        let grace = self.views.offline_grace_ms;
        e.held_until = if grace > 0 && shown_online && !next.online() && !next.invisible_at(now_ms) {
            let due = if e.held_until > 0 { e.held_until } else { next.last_seen.unwrap_or(now_ms) + grace };
            if due > now_ms {
                due
            } else {
                0
            }
        } else {
            0
        };
        e.state = Some(next);
        if e.held_until > 0 {
            self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(p.user_id.clone());
            self.metrics.offline_held.inc();
            // The user's own connections (none while offline) still get their count.
            fanout::push_count(e);
            return Some(None);
        }
        Some(fanout::deliver(e, now_ms, quiet, &self.views))
    }

    /// Tells watchers of held users whose grace has passed that they are
    /// offline (see [`Counts::apply_to`]).
    pub fn release_held(&self, now_ms: u64) {
        let users: Vec<UserId> = {
            let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            if held.is_empty() {
                return;
            }
            held.iter().cloned().collect()
        };
        for u in users {
            let delivery = {
                let mut s = self.shard(&u);
                match s.get_mut(&u) {
                    Some(e) if e.held_until > 0 && e.held_until <= now_ms => {
                        e.held_until = 0;
                        fanout::deliver(e, now_ms, None, &self.views)
                    }
                    // Still within its grace.
                    Some(e) if e.held_until > 0 => continue,
                    _ => None,
                }
            };
            self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&u);
            if let Some(d) = delivery {
                d.send(&self.metrics);
            }
        }
    }

    /// Users served here whose status lapses by `now_ms`, with its expiry:
    /// the owner clears them in the store so that everyone hears it.
    pub fn lapsed_statuses(&self, now_ms: u64) -> Vec<(UserId, u64)> {
        let mut out = Vec::new();
        for s in self.each_shard() {
            for (u, e) in s.iter().filter(|(_, e)| !e.conns.is_empty()) {
                if let Some(t) = e.state.as_ref().and_then(|p| p.status.as_ref()).and_then(|st| st.expires_at) {
                    if t <= now_ms {
                        out.push((u.clone(), t));
                    }
                }
            }
        }
        out
    }

    /// Calls `f` with every live connection on the node, a shard at a time.
    fn for_each_conn(&self, f: impl Fn(&Conn)) {
        for s in self.each_shard() {
            s.values().flat_map(|e| &e.conns).for_each(&f);
        }
    }

    /// Rings the sessions whose timer is due (see [`run_timers`]).
    pub fn ring_due_timers(&self, now_ms: u64) {
        self.for_each_conn(|c| c.ring_if_due(now_ms));
    }

    /// Tells every connection's session that the node closes.
    pub fn close_all(&self) {
        self.for_each_conn(Conn::close);
    }

    /// The node's live connections of each user, with their devices and
    /// activity: what the writer writes.
    pub fn local_counts(&self, users: &[UserId]) -> Vec<CountUpdate> {
        users
            .iter()
            .map(|u| {
                let s = self.shard(u);
                let conns = s.get(u).map_or(&[][..], |e| &e.conns[..]);
                CountUpdate { share: share_of(conns), ..CountUpdate::new(u.clone(), conns.len() as u32) }
            })
            .collect()
    }

    /// Records what the store answered for a batch the writer wrote: for each
    /// update, the new state (applied and delivered) or `None` where the
    /// store already had that count. In the second case the known total
    /// stands, so connections that joined with only an estimate are sent it.
    pub fn record_writes(&self, written: &[CountUpdate], answers: &[Option<PresenceChange>], now_ms: u64) {
        for (update, answer) in written.iter().zip(answers) {
            let delivery = {
                let mut s = self.shard(&update.user_id);
                let Some(e) = s.get_mut(&update.user_id) else { continue };
                let delivery = match answer {
                    Some(change) => self.apply_to(e, &change.presence, now_ms, None).flatten(),
                    None => {
                        fanout::reconfirm(e);
                        None
                    }
                };
                e.written = update.connections;
                if e.is_empty() {
                    s.remove(&update.user_id);
                }
                delivery
            };
            if let Some(d) = delivery {
                d.send(&self.metrics);
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

    /// Whether `user` is held (served or watched).
    pub fn all_users_contains(&self, user: &UserId) -> bool {
        self.shard(user).contains_key(user)
    }

    /// Every user held (served or watched): what a resync re-reads.
    pub fn all_users(&self) -> Vec<UserId> {
        let mut out = Vec::new();
        for s in self.each_shard() {
            out.extend(s.keys().cloned());
        }
        out
    }

    /// Users with at least one watcher here: what the live feed follows.
    pub fn watched_users(&self) -> Vec<UserId> {
        let mut out = Vec::new();
        for s in self.each_shard() {
            out.extend(s.iter().filter(|(_, e)| !e.watchers.is_empty()).map(|(u, _)| u.clone()));
        }
        out
    }

    /// What this node last wrote to the store, per user (non-zero only).
    pub fn written_counts(&self) -> HashMap<UserId, u32> {
        let mut out = HashMap::new();
        for s in self.each_shard() {
            out.extend(s.iter().filter(|(_, e)| e.written > 0).map(|(u, e)| (u.clone(), e.written)));
        }
        out
    }

    /// Every live connection on this node.
    pub fn connections(&self) -> Vec<Conn> {
        let mut out = Vec::new();
        for s in self.each_shard() {
            out.extend(s.values().flat_map(|e| e.conns.iter().cloned()));
        }
        out
    }

    /// Users with a connection here.
    pub fn served_users(&self) -> Vec<UserId> {
        let mut out = Vec::new();
        for s in self.each_shard() {
            out.extend(s.iter().filter(|(_, e)| !e.conns.is_empty()).map(|(u, _)| u.clone()));
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

    /// The connections of every user whose vnode `table` gives to a node
    /// other than `self_id`, each user once per move (a later `connect`
    /// re-arms it). The caller tells them outside the locks.
    pub fn take_moved(&self, table: &RoutingTable, self_id: &str) -> Vec<Moved> {
        let mut out = Vec::new();
        for mut s in self.each_shard() {
            for (u, e) in s.iter_mut() {
                if e.conns.is_empty() || e.handed_off {
                    continue;
                }
                let Some(owner) = table.owner_of_vnode(u.vnode()).filter(|o| o.id != self_id) else { continue };
                e.handed_off = true;
                out.push(Moved { owner: owner.clone(), conns: e.conns.clone() });
            }
        }
        out
    }
}

/// The node's share of a user with these connections (see [`Share`]).
fn share_of(conns: &[Conn]) -> Share {
    let mut share = Share::default();
    let mut idle_since = 0;
    for c in conns {
        share.devices.add(c.device(), 1);
        match c.idle_since() {
            None => share.active += 1,
            Some(t) => idle_since = idle_since.max(t),
        }
    }
    if share.active == 0 && !conns.is_empty() {
        share.idle_since = Some(idle_since);
    }
    share
}

/// How often the node rings the sessions whose deadline passed: a session's
/// ping, token expiry, handoff close and stalled-window limit are kept to
/// within this. One ticker per node instead of a timer per connection keeps
/// an idle connection small; a pass costs one atomic read per connection
/// (about a millisecond per 100,000 connections).
pub const TIMER_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Rings due session timers every [`TIMER_TICK`] until `stop`.
pub async fn run_timers(counts: Arc<Counts>, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                counts.ring_due_timers(crate::conn::clock_ms(tokio::time::Instant::now()));
                counts.release_held(presence_model::time::now_ms());
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::conn::{statuses_frame, Outbound, Taken};

    pub(crate) fn uid(s: &str) -> UserId {
        UserId::parse(s).expect("valid")
    }

    pub(crate) fn counts() -> Counts {
        Counts::new(Arc::new(Metrics::new()))
    }

    fn p(u: &str, connections: u64, seq: u64) -> Presence {
        Presence::counted(uid(u), connections, seq)
    }

    /// Everything queued for `c`, as the frames the session would write.
    pub(crate) fn drain(c: &Conn) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(m) = c.take(usize::MAX) {
            out.push(match m {
                Taken::One(Outbound::Text(t) | Outbound::Handoff(t)) => t.to_string(),
                Taken::Statuses(frames) => statuses_frame(&frames).to_string(),
            });
        }
        out
    }

    #[test]
    fn newer_states_push_count_and_status_once() {
        let h = counts();
        let c1 = Conn::new(1, 16);
        let r1 = c1.clone();
        let w = Conn::new(2, 16);
        let rw = w.clone();
        h.connect(&uid("a"), c1);
        assert_eq!(h.estimate(&uid("a")), 1);
        assert!(h.watch(&uid("a"), w).is_none());
        assert!(h.apply(&p("a", 1, 10), 0, None));
        assert_eq!(drain(&rw).len(), 1);
        assert!(!h.apply(&p("a", 1, 10), 0, None), "duplicate dropped");
        assert!(!h.apply(&p("a", 5, 9), 0, None), "stale dropped");
        assert!(drain(&rw).is_empty());
        assert!(h.apply(&p("a", 1, 11), 0, None), "newer, same count");
        assert_eq!(drain(&r1), vec![r#"{"type":"count","userId":"a","connections":1}"#]);
        assert_eq!(drain(&rw).len(), 1, "watchers hear every newer state");
    }

    #[test]
    fn a_new_connection_hears_the_next_count_even_if_unchanged() {
        let h = counts();
        let c1 = Conn::new(1, 16);
        let r1 = c1.clone();
        h.connect(&uid("a"), c1);
        h.apply(&p("a", 1, 1), 0, None);
        assert_eq!(drain(&r1).len(), 1);
        let c2 = Conn::new(2, 16);
        let r2 = c2.clone();
        h.connect(&uid("a"), c2);
        // Same total as last pushed (another connection left elsewhere meanwhile).
        h.apply(&p("a", 1, 2), 0, None);
        assert_eq!(drain(&r1).len(), 1);
        assert_eq!(drain(&r2), vec![r#"{"type":"count","userId":"a","connections":1}"#]);
    }

    #[test]
    fn an_unchanged_write_resends_the_known_total_after_an_estimate() {
        let h = counts();
        let c1 = Conn::new(1, 16);
        let r1 = c1.clone();
        h.connect(&uid("a"), c1);
        h.apply(&p("a", 2, 1), 0, None);
        assert_eq!(drain(&r1).len(), 1);
        let c2 = Conn::new(2, 16);
        let r2 = c2.clone();
        h.connect(&uid("a"), c2);
        let written = h.local_counts(&[uid("a")]);
        assert_eq!(written[0].connections, 2);
        h.record_writes(&written, &[None], 0);
        assert_eq!(drain(&r2), vec![r#"{"type":"count","userId":"a","connections":2}"#]);
    }

    #[test]
    fn entry_outlives_connections_until_zero_is_written() {
        let h = counts();
        let c = Conn::new(1, 4);
        h.connect(&uid("a"), c);
        h.record_writes(&h.local_counts(&[uid("a")]), &[None], 0);
        h.disconnect(&uid("a"), 1, &[]);
        assert_eq!(h.all_users().len(), 1);
        assert_eq!(h.owed_users().len(), 1, "a zero is owed");
        h.record_writes(&h.local_counts(&[uid("a")]), &[None], 0);
        assert!(h.all_users().is_empty());
    }

    #[test]
    fn estimate_adds_unwritten_local_changes() {
        let h = counts();
        let c1 = Conn::new(1, 4);
        let c2 = Conn::new(2, 4);
        h.connect(&uid("a"), c1);
        h.record_writes(&h.local_counts(&[uid("a")]), &[None], 0);
        // The store says 3 (two elsewhere); a second local connection makes 4.
        h.apply(&p("a", 3, 5), 0, None);
        h.connect(&uid("a"), c2);
        assert_eq!(h.estimate(&uid("a")), 4);
    }

    #[test]
    fn the_users_own_connections_see_the_truth_and_others_what_they_may() {
        // Ten connections of ivy (the set lookup), one of which watches her, and a stranger.
        for n in [1u64, 10] {
            let h = counts();
            let conns: Vec<Conn> = (1..=n).map(|i| Conn::new(i, 16)).collect();
            for c in &conns {
                h.connect(&uid("ivy"), c.clone());
            }
            let stranger = Conn::new(100, 16);
            h.watch(&uid("ivy"), conns[0].clone());
            h.watch(&uid("ivy"), stranger.clone());
            let mut p = p("ivy", n, 1);
            p.status = Some(Box::new(presence_model::UserStatus {
                availability: presence_model::Availability::Invisible,
                invisible_since: Some(5),
                ..Default::default()
            }));
            h.apply(&p, 10, None);
            let own: Vec<String> = drain(&conns[0]).into_iter().filter(|f| f.contains(r#""type":"status""#)).collect();
            assert!(own.len() == 1 && own[0].contains(r#""online":true"#), "{n}: {own:?}");
            let seen = drain(&stranger);
            assert!(seen.len() == 1 && seen[0].contains(r#""online":false"#), "{n}: {seen:?}");
        }
    }

    #[test]
    fn moved_users_are_taken_once_per_move() {
        let h = counts();
        let c = Conn::new(1, 4);
        h.connect(&uid("alice"), c.clone());
        let owners: Vec<Option<&str>> = vec![Some("other"); VNODES];
        let t = RoutingTable::from_owners(9, &owners, |id| format!("ws://{id}/socket"));
        let moved = h.take_moved(&t, "me");
        assert_eq!((moved.len(), moved[0].owner.id.as_str(), moved[0].conns.len()), (1, "other", 1));
        assert!(h.take_moved(&t, "me").is_empty());
        // A new connection of the user re-arms the move.
        h.connect(&uid("alice"), c);
        assert_eq!(h.take_moved(&t, "me")[0].conns.len(), 2);
    }
}
