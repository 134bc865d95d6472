//! Getting every state change to the connections that care about it.
//!
//! * [`deliver`]: a newer state of a user, pushed as `count` to the user's
//!   connections (when the number changed) and as `status` to its watchers;
//!   [`Counts`] calls it with the entry it just updated.
//! * [`Fanout::run`]: the bus consumer. Events from other nodes are applied
//!   through [`Counts::apply`] (only newer `seq`s count); a `Resync` from the
//!   bus re-reads every held user from the store. Events are not trusted
//!   blindly: a `seq` far ahead of the clock (it would freeze the user: no
//!   real change could be newer) is dropped, and an event from a writer the
//!   routing table does not know is not applied; the user's state is read
//!   from the store instead. Both are counted in
//!   `presence_events_rejected_total{reason}`.
//! * [`Fanout::watch_departures`]: when a node leaves the routing table
//!   (it died or drained), its last events may be lost with it or still on
//!   their way, so held users are re-read from the store: once after the
//!   leader's count-out, and once more when a draining node has certainly
//!   finished. These re-reads are tasks of the node's tracker and stop at
//!   shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use presence_backend::{BusMessage, BusSubscription, Store, TableCache};
use presence_model::wire::ServerMessage;
use presence_model::{EventReason, Presence, StatusEvent};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::counts::{Counts, Entry, Views};
use crate::metrics::Metrics;

fn text(m: &ServerMessage) -> Utf8Bytes {
    Utf8Bytes::from(m.to_json())
}

/// A status to hand to watchers once the lock on their user is released:
/// the frame is built and the watcher handles taken under the lock, the
/// pushes (one per watcher, a thousand or a hundred thousand) happen after.
/// Each watcher's outbox drops a status older than one it already has, so
/// two deliveries of one user racing each other cannot reorder what a
/// watcher sees.
pub(crate) struct Delivery {
    user: presence_model::UserId,
    seq: u64,
    frame: Utf8Bytes,
    to: Vec<crate::conn::Conn>,
    /// The truth, for the watchers that are the user's own connections.
    own_frame: Option<Utf8Bytes>,
    own: Vec<crate::conn::Conn>,
}

impl Delivery {
    /// Pushes the status to every watcher, and observes how long the change
    /// took to get here (its `seq` is the store's clock in µs when it was
    /// made; a state older than a minute is a re-read, not news, and is not counted).
    pub(crate) fn send(self, metrics: &Metrics) {
        let age_us = presence_model::time::now_us().saturating_sub(self.seq);
        if age_us < 60_000_000 {
            metrics.fanout_latency.observe(age_us as f64 / 1e6);
        }
        for c in &self.to {
            c.push_status(&self.user, self.seq, self.frame.clone(), metrics);
        }
        if let Some(f) = &self.own_frame {
            for c in &self.own {
                c.push_status(&self.user, self.seq, f.clone(), metrics);
            }
        }
    }
}

/// Pushes the entry's state: `count` to the user's connections (see
/// [`push_count`]), and returns the `status` for every watcher but `quiet`,
/// to be sent once the lock is released. Watchers that are the user's own
/// connections get the whole truth; the others what `views` lets them see
/// (an invisible user is offline, `lastSeen` per policy).
pub(crate) fn deliver(e: &mut Entry, now_ms: u64, quiet: Option<u64>, views: &Views) -> Option<Delivery> {
    push_count(e);
    let state = e.state.as_ref()?;
    let mut to = Vec::with_capacity(e.watchers.len());
    let mut own = Vec::new();
    // Watchers are almost never the user's own connections: look them up
    // only when the user has connections here, and in a set when many.
    let own_ids: std::collections::HashSet<u64> =
        if e.conns.len() > 8 { e.conns.iter().map(crate::conn::Conn::id).collect() } else { Default::default() };
    let is_own = |id: u64| {
        if e.conns.len() > 8 {
            own_ids.contains(&id)
        } else {
            e.conns.iter().any(|o| o.id() == id)
        }
    };
    for (&id, c) in e.watchers.iter().filter(|(&id, _)| Some(id) != quiet) {
        if is_own(id) {
            own.push(c.clone());
        } else {
            to.push(c.clone());
        }
    }
    if to.is_empty() && own.is_empty() {
        return None;
    }
    Some(Delivery {
        user: state.user_id.clone(),
        seq: state.seq,
        frame: status_frame(state, now_ms, false, views),
        to,
        own_frame: (!own.is_empty()).then(|| status_frame(state, now_ms, true, views)),
        own,
    })
}

/// The `status` frame of `p`: the truth for the user's own connections
/// (`own`), the public view for everyone else.
pub(crate) fn status_frame(p: &Presence, now_ms: u64, own: bool, views: &Views) -> Utf8Bytes {
    if own {
        text(&ServerMessage::status(p, now_ms))
    } else {
        text(&ServerMessage::public_status(p, now_ms, views.last_seen))
    }
}

/// Pushes `count` to the user's connections when the number differs from
/// what they were last sent (under the lock: counts keep their order that way).
pub(crate) fn push_count(e: &mut Entry) {
    let Some(state) = e.state.as_ref() else { return };
    if !e.conns.is_empty() && e.sent_count != Some(state.connections) {
        e.sent_count = Some(state.connections);
        let t = text(&ServerMessage::Count { user_id: state.user_id.clone(), connections: state.connections });
        for c in &e.conns {
            c.push_count(t.clone());
        }
    }
}

/// The store confirmed this node's count without a change, so the known
/// total stands: if a connection joined with only an estimate since the last
/// `count`, send everyone the known total.
pub(crate) fn reconfirm(e: &mut Entry) {
    let (Some(state), None) = (&e.state, e.sent_count) else { return };
    if e.conns.is_empty() {
        return;
    }
    e.sent_count = Some(state.connections);
    let t = text(&ServerMessage::Count { user_id: state.user_id.clone(), connections: state.connections });
    for c in &e.conns {
        c.push_count(t.clone());
    }
}

/// Bus consumption and re-reads from the store. Cheap to clone.
#[derive(Clone)]
pub struct Fanout {
    /// Where states are applied.
    pub counts: Arc<Counts>,
    /// Where re-reads go.
    pub store: Arc<dyn Store>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// This node's ID, for logs.
    pub node_id: String,
    /// This process's run ID: its own events are skipped (already applied).
    /// A previous run's events (and a coordinator's count-out of it) are not.
    pub run_id: String,
    /// When the last event written by anyone else arrived. Events are only
    /// written after a store write succeeded, so one arriving proves the store
    /// works for someone (see [`crate::membership`], self-fencing).
    pub heard_from_others: Arc<Mutex<Option<tokio::time::Instant>>>,
    /// The routing table: who may write events.
    pub table: TableCache,
}

/// How far ahead of this node's clock an event's `seq` (store clock, µs) may
/// be. Clocks of well-run hosts differ by milliseconds; five minutes leaves
/// room for a badly run one while refusing a forged `2^64 - 1`.
const MAX_SEQ_AHEAD_US: u64 = 5 * 60 * 1_000_000;

/// What to do with an event from the bus.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Apply it.
    Apply,
    /// This run wrote it (already applied).
    Own,
    /// Drop it, counted under this reason.
    Drop(&'static str),
    /// Do not apply it; read the user's state from the store instead.
    Verify(&'static str),
}

impl Fanout {
    /// Reads these users' states from the store and applies what is newer.
    async fn reread(&self, users: &[presence_model::UserId]) -> Result<(), presence_backend::StoreError> {
        let states = self.store.presence(users).await.inspect_err(|_| self.metrics.store_errors.inc())?;
        let now = presence_model::time::now_ms();
        for p in &states {
            self.counts.apply(p, now, None);
        }
        Ok(())
    }

    /// Reads one user's state from the store in place of an event not trusted.
    async fn verify(&self, user: &presence_model::UserId) {
        if !self.counts.all_users_contains(user) {
            return;
        }
        if let Err(e) = self.reread(std::slice::from_ref(user)).await {
            tracing::debug!(node = %self.node_id, error = %e, "verify read failed; the next resync repairs it");
        }
    }

    /// Re-reads every held user's state from the store (after missed events).
    pub async fn resync_held(&self) {
        self.metrics.resyncs.inc();
        if let Err(e) = self.reread_all(&self.counts.all_users()).await {
            tracing::warn!(node = %self.node_id, error = %e, "resync from store failed; the next one retries");
        }
    }

    /// Re-reads these users' states a thousand at a time; stops at the first failure.
    pub(crate) async fn reread_all(
        &self,
        users: &[presence_model::UserId],
    ) -> Result<(), presence_backend::StoreError> {
        for chunk in users.chunks(1000) {
            self.reread(chunk).await?;
        }
        Ok(())
    }

    fn judge(&self, e: &StatusEvent, now_us: u64) -> Verdict {
        if e.run_id.as_deref() == Some(self.run_id.as_str()) {
            return Verdict::Own;
        }
        if e.seq > now_us.saturating_add(MAX_SEQ_AHEAD_US) {
            return Verdict::Drop("seq_ahead");
        }
        // A coordinator counting a node out writes in the dead node's name,
        // which may have left the table already.
        let known = self.table.get().is_some_and(|t| t.node(&e.node_id).is_some());
        if known || e.reason == Some(EventReason::NodeLost) {
            Verdict::Apply
        } else {
            Verdict::Verify("unknown_node")
        }
    }

    /// Consumes the bus until `stop` or the bus closes.
    pub async fn run(self, mut events: Box<dyn BusSubscription>, stop: CancellationToken) {
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                m = events.next() => m,
            };
            match msg {
                Some(BusMessage::Event(e)) => {
                    self.metrics.events_received.inc();
                    match self.judge(&e, presence_model::time::now_us()) {
                        // This run applied its own writes before publishing them; the
                        // echo would only be dropped as stale (and count as such).
                        Verdict::Own => {}
                        Verdict::Apply => {
                            *self.heard_from_others.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(tokio::time::Instant::now());
                            self.counts.apply(&e.presence(), presence_model::time::now_ms(), None);
                        }
                        Verdict::Drop(reason) => {
                            self.metrics.events_rejected.with_label_values(&[reason]).inc();
                            tracing::warn!(node = %self.node_id, writer = %e.node_id, seq = e.seq, reason, "event dropped");
                        }
                        Verdict::Verify(reason) => {
                            self.metrics.events_rejected.with_label_values(&[reason]).inc();
                            self.verify(&e.user_id).await;
                        }
                    }
                }
                Some(BusMessage::Resync) => {
                    tracing::info!(node = %self.node_id, "bus asked for a resync");
                    self.resync_held().await;
                }
                None => {
                    tracing::warn!(node = %self.node_id, "bus closed; no more remote events");
                    return;
                }
            }
        }
    }

    /// Watches the table for nodes leaving it, until `stop`; on each departure
    /// schedules the two re-reads of the module docs on `tracker`. `first`
    /// is after the leader's count-out (one heartbeat), `last` after a
    /// draining node has certainly finished (handoff timeout + node TTL).
    pub async fn watch_departures(
        self,
        table: TableCache,
        tracker: TaskTracker,
        first: Duration,
        last: Duration,
        stop: CancellationToken,
    ) {
        let mut rx = table.subscribe();
        let mut members: Vec<String> = Vec::new();
        loop {
            let current = rx.borrow_and_update().clone();
            if let Some(t) = current {
                let now: Vec<String> = t.nodes.iter().map(|n| n.id.clone()).collect();
                if members.iter().any(|m| !now.contains(m)) {
                    tracing::info!(node = %self.node_id, epoch = t.epoch, "a node left the routing table; resyncing from the store");
                    let (fanout, stop) = (self.clone(), stop.clone());
                    tracker.spawn(async move {
                        for wait in [first, last] {
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                _ = tokio::time::sleep(wait) => fanout.resync_held().await,
                            }
                        }
                    });
                }
                members = now;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = rx.changed() => if changed.is_err() { return },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Conn;
    use crate::counts::tests::{counts, drain, uid};
    use presence_backend::{Bus, MemoryBus, MemoryStore};
    use presence_model::Presence;

    /// A table that lists node `n1` (and nothing else).
    fn known_table() -> TableCache {
        let t = TableCache::new();
        let owners = vec![Some("n1"); presence_model::VNODES];
        t.offer(presence_model::RoutingTable::from_owners(1, &owners, |_| "ws://n1".into()));
        t
    }

    fn event(node: &str, seq: u64, connections: u64) -> StatusEvent {
        let change =
            presence_model::PresenceChange { presence: Presence::counted(uid("bob"), connections, seq), previous: 0 };
        StatusEvent::from_change(&change, node, None, 1, 9, None)
    }

    /// Node `n1`, run `me`, on an empty embedded store.
    fn fanout_of(counts: Arc<Counts>) -> Fanout {
        Fanout {
            counts,
            store: Arc::new(MemoryStore::new()),
            metrics: Arc::new(Metrics::new()),
            node_id: "n1".into(),
            run_id: "me".into(),
            heard_from_others: Arc::default(),
            table: known_table(),
        }
    }

    #[test]
    fn events_are_judged_before_they_are_trusted() {
        let f = fanout_of(Arc::new(counts()));
        let now = 1_800_000_000_000_000;
        assert_eq!(f.judge(&event("n1", now, 1), now), Verdict::Apply);
        assert_eq!(f.judge(&event("n1", now, 1).from_run("me"), now), Verdict::Own);
        assert_eq!(f.judge(&event("n1", u64::MAX, 1), now), Verdict::Drop("seq_ahead"));
        assert_eq!(f.judge(&event("stranger", now, 1), now), Verdict::Verify("unknown_node"));
        let mut count_out = event("gone-node", now, 0);
        count_out.reason = Some(EventReason::NodeLost);
        assert_eq!(f.judge(&count_out, now), Verdict::Apply, "count-outs name a node that left the table");
    }

    #[tokio::test]
    async fn events_of_other_nodes_reach_watchers_and_own_echoes_are_skipped() {
        let counts = Arc::new(counts());
        let bus = MemoryBus::default();
        let fanout = fanout_of(counts.clone());
        let w = Conn::new(7, 16);
        counts.watch(&uid("bob"), w.clone());
        let stop = CancellationToken::new();
        let task = tokio::spawn(fanout.clone().run(bus.subscribe(), stop.clone()));
        // The own echo is newer: applied, it would reach the watcher too. The
        // event of another run of the same node ID is not an echo.
        for (run, seq) in [("earlier-run", 5), ("me", 6)] {
            let change =
                presence_model::PresenceChange { presence: Presence::counted(uid("bob"), 1, seq), previous: 0 };
            let event =
                StatusEvent::from_change(&change, "n1", None, 1, presence_model::time::now_ms(), None).from_run(run);
            bus.publish(event).await.expect("published");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while fanout.metrics.events_received.get() < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let got = drain(&w);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains(r#""online":true"#), "{got:?}");
        stop.cancel();
        task.await.expect("consumer ends");
    }
}
