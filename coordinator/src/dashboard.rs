//! The live dashboard (`docs/operations.md`, "Dashboard"): `GET /` serves one embedded HTML page;
//! `GET /dashboard/stream` feeds it with Server-Sent Events:
//!
//! * `snapshot` (at once, then every second): live nodes with their load, totals;
//! * `ring` (at once, then on every new epoch): the 4096 owners;
//! * `rebalance` (as it happens): epoch, vnodes moved, gains and losses per node;
//! * `presence` (as it happens): every event from the bus, with its devices, idleness and status.
//!
//! One table watcher per coordinator, and one bus subscription while at
//! least one page is open, feed a bounded broadcast channel; each browser
//! has its own bounded queue. A browser that falls behind loses feed entries
//! (counted in `presence_dashboard_dropped_total`), never snapshots for long.
//! A coordinator nobody watches does not read the bus: every reader of the
//! whole topic costs the broker (`docs/architecture.md`, "Fast path").

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use presence_backend::{BusMessage, BusSubscription};
use presence_http::{sse, sse_event, Response};
use presence_model::RoutingTable;
use tokio::sync::{broadcast, mpsc, Notify};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::{views, Coordinator};

/// The page, embedded at build time.
pub const PAGE: &str = include_str!("dashboard.html");

/// `GET /`: the page.
pub fn page() -> Response {
    presence_http::with_type(StatusCode::OK, PAGE, "text/html; charset=utf-8")
}

/// Feed entries a browser may have queued before entries are dropped for it.
const CLIENT_QUEUE: usize = 256;
/// Recent rebalances replayed to a newly opened page.
const RECENT: usize = 20;

/// How often the feed looks whether pages are open, to open or drop its
/// bus subscription (a page opening wakes it at once).
const VIEWERS_EVERY: Duration = Duration::from_secs(1);

/// The dashboard's shared state.
pub struct Dashboard {
    /// Live feed to every open page.
    feed: broadcast::Sender<Bytes>,
    /// The last rebalances, for pages opened later.
    recent: Mutex<VecDeque<serde_json::Value>>,
    /// Woken when a page opens.
    opened: Notify,
}

impl Default for Dashboard {
    fn default() -> Self {
        Self { feed: broadcast::channel(1024).0, recent: Mutex::new(VecDeque::new()), opened: Notify::new() }
    }
}

fn ring_event(coord: &Coordinator, t: &RoutingTable) -> Bytes {
    let ring = serde_json::to_value(views::ring(t, coord.table.is_stale())).unwrap_or_default();
    sse_event("ring", &ring)
}

/// What changed between two tables: vnodes moved and each node's gain or loss.
fn diff(old: &RoutingTable, new: &RoutingTable) -> serde_json::Value {
    let (before, after) = (old.owner_ids(), new.owner_ids());
    let mut delta: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
    let mut moved = 0;
    for (b, a) in before.iter().zip(&after) {
        if b != a {
            moved += 1;
            if let Some(b) = b {
                *delta.entry(b).or_default() -= 1;
            }
            if let Some(a) = a {
                *delta.entry(a).or_default() += 1;
            }
        }
    }
    serde_json::json!({ "epoch": new.epoch, "moved": moved, "delta": delta, "ts": presence_model::time::now_ms() })
}

/// Feeds the broadcast from the table, and from the bus while a page is
/// open, until `stop`.
pub async fn run(coord: Arc<Coordinator>, stop: CancellationToken) {
    let mut events: Option<Box<dyn BusSubscription>> = None;
    let mut tables = coord.table.subscribe();
    let mut last: Option<Arc<RoutingTable>> = tables.borrow_and_update().clone();
    let mut look = tokio::time::interval(VIEWERS_EVERY);
    look.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        let watched = coord.dashboard.feed.receiver_count() > 0;
        if watched && events.is_none() {
            events = Some(coord.bus.subscribe());
        } else if !watched && events.is_some() {
            events = None;
        }
        let next_event = async {
            match events.as_mut() {
                Some(e) => e.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = coord.dashboard.opened.notified() => {}
            _ = look.tick() => {}
            m = next_event => match m {
                // The last page just closed: skip the JSON.
                Some(BusMessage::Event(_)) if coord.dashboard.feed.receiver_count() == 0 => {}
                Some(BusMessage::Event(e)) => {
                    let data = serde_json::json!({
                        "userId": e.user_id, "type": e.kind, "connections": e.connections,
                        "nodeId": e.node_id, "ts": e.ts, "reason": e.reason,
                        "devices": e.devices, "idleSince": e.idle_since, "status": e.status,
                    });
                    let _ = coord.dashboard.feed.send(sse_event("presence", &data));
                }
                Some(BusMessage::Resync) => {}
                None => return,
            },
            changed = tables.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = tables.borrow_and_update().clone();
                if let (Some(old), Some(new)) = (&last, &now) {
                    let d = diff(old, new);
                    if d["moved"].as_u64().unwrap_or(0) > 0 {
                        let mut recent = coord.dashboard.recent.lock().unwrap_or_else(|p| p.into_inner());
                        recent.push_back(d.clone());
                        while recent.len() > RECENT {
                            recent.pop_front();
                        }
                        drop(recent);
                        let _ = coord.dashboard.feed.send(sse_event("rebalance", &d));
                    }
                }
                if let Some(t) = &now {
                    let _ = coord.dashboard.feed.send(ring_event(&coord, t));
                }
                last = now;
            }
        }
    }
}

/// One page's event stream.
pub fn stream(coord: Arc<Coordinator>) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(CLIENT_QUEUE);
    let mut feed = coord.dashboard.feed.subscribe();
    coord.dashboard.opened.notify_one();
    coord.metrics.dashboard_clients.inc();
    tokio::spawn(async move {
        let mut first = vec![sse_event("snapshot", &views::snapshot(&coord))];
        if let Some(t) = coord.table.get() {
            first.push(ring_event(&coord, &t));
        }
        let recent: Vec<serde_json::Value> =
            coord.dashboard.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        first.extend(recent.iter().map(|r| sse_event("rebalance", r)));
        for b in first {
            if tx.send(b).await.is_err() {
                coord.metrics.dashboard_clients.dec();
                return;
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            let item = tokio::select! {
                _ = tx.closed() => break,
                _ = tick.tick() => sse_event("snapshot", &views::snapshot(&coord)),
                m = feed.recv() => match m {
                    Ok(b) => b,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        coord.metrics.dashboard_dropped.inc_by(n);
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(item) {
                coord.metrics.dashboard_dropped.inc();
            }
        }
        coord.metrics.dashboard_clients.dec();
    });
    sse(rx)
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use presence_backend::{Bus, MemoryBus, MemoryStore};

    use super::*;
    use crate::CoordinatorConfig;

    /// Waits up to `within` for `what` to hold.
    async fn until(within: Duration, what: impl Fn() -> bool) -> bool {
        let end = tokio::time::Instant::now() + within;
        while !what() {
            if tokio::time::Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    #[tokio::test]
    async fn the_bus_is_read_only_while_a_page_is_open() {
        let bus = Arc::new(MemoryBus::default());
        let coord = crate::Coordinator::new(CoordinatorConfig::default(), Arc::new(MemoryStore::new()), bus.clone());
        let stop = CancellationToken::new();
        tokio::spawn(run(coord.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(bus.subscribers(), 0, "nobody watches: no reader of the bus");
        // A page opens: the subscription follows at once (not at the next look).
        let page = stream(coord.clone());
        assert!(until(Duration::from_millis(300), || bus.subscribers() == 1).await, "a page opened: one reader");
        let event = presence_model::StatusEvent::from_slice(
            br#"{"v":1,"type":"join","userId":"alice","nodeId":"n1","connectionId":null,"connections":1,"seq":1,"epoch":1,"ts":1}"#,
        )
        .expect("event");
        bus.publish(event).await.expect("published");
        let mut body = page.into_body();
        let mut seen = String::new();
        while !seen.contains("event: presence") {
            let frame = tokio::time::timeout(Duration::from_secs(2), body.frame()).await;
            let data = frame.expect("the event reaches the page").expect("open").expect("frame");
            seen.push_str(&String::from_utf8_lossy(data.data_ref().expect("data")));
        }
        assert!(seen.contains("\"userId\":\"alice\""), "{seen}");
        // The page closes: the reader goes within a look.
        drop(body);
        assert!(until(VIEWERS_EVERY * 3, || bus.subscribers() == 0).await, "the last page closed: no reader");
        stop.cancel();
    }

    #[test]
    fn diff_counts_moves_and_deltas() {
        let a: Vec<Option<&str>> = (0..4096).map(|v| Some(if v < 2048 { "x" } else { "y" })).collect();
        let b: Vec<Option<&str>> = (0..4096)
            .map(|v| {
                Some(if v < 1000 {
                    "z"
                } else if v < 2048 {
                    "x"
                } else {
                    "y"
                })
            })
            .collect();
        let d = diff(
            &RoutingTable::from_owners(1, &a, |_| String::new()),
            &RoutingTable::from_owners(2, &b, |_| String::new()),
        );
        assert_eq!(d["moved"], 1000);
        assert_eq!(d["delta"]["x"], -1000);
        assert_eq!(d["delta"]["z"], 1000);
        assert_eq!(d["epoch"], 2);
    }
}
