//! Nodes that clients could not reach, and the clients waiting for their
//! users to move (`GET /route?userId=...&unreachable=<nodeId>`,
//! `docs/protocol.md`).
//!
//! When a node dies, every client it held finds out at once (its socket
//! closes) and asks for a route again, while the cluster still routes to the
//! dead node until the leader counts it dead. Without help each client
//! guesses by backing off, and the guesses either hammer the dead address or
//! leave users offline long after their vnodes moved. With the report, the
//! coordinator checks the claim itself (one TCP probe per node, shared by
//! every report for a short while): a node whose address accepts
//! connections is answered at once, so a client whose own network blinked
//! loses no time; a node whose address refuses connections has no process
//! listening, so the request waits until the table gives the user's vnode
//! another owner (at most `ROUTE_WAIT_MS`, and at most `ROUTE_WAITERS`
//! requests at once) and is answered then, spread over a short window so
//! that the new owners are not hit by every client in the same millisecond.
//!
//! A refusal seen here never declares a node dead by itself: the leader's
//! rule (silent for `FAST_DEATH_MS` and refusing its own probe,
//! [`crate::control`]) stays the only one. Reports only make the leader look
//! again every [`SUSPECT_TICK`] instead of every tick while a reported node
//! is refusing, so the table moves as soon as the rule holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use tokio::sync::{Notify, OnceCell};

/// A probe of a node is shared by every report that arrives within this long.
const PROBE_REUSE: Duration = Duration::from_millis(250);
/// A refusal counts as current for this long (the leader looks more often meanwhile).
const REFUSAL_FRESH: Duration = Duration::from_secs(2);
/// How often the leader looks while a reported node refuses connections.
pub const SUSPECT_TICK: Duration = Duration::from_millis(100);
/// Released waiters are spread over this long per waiter released at once
/// (20,000 a second), up to [`MAX_SPREAD`].
const SPREAD_PER_WAITER: Duration = Duration::from_micros(50);
/// The longest spread of released waiters.
const MAX_SPREAD: Duration = Duration::from_secs(1);

/// One probe of a node's address, shared by the reports that arrive while it is fresh.
struct Probe {
    started: Instant,
    refused: Arc<OnceCell<bool>>,
}

/// The reports of one coordinator (see the module's doc).
pub struct Suspects {
    /// The last probe of each reported node (pruned as they age).
    probes: Mutex<HashMap<String, Probe>>,
    /// Wakes the control loop when a probe finds a node refusing.
    pub wake: Notify,
    /// `/route` requests waiting for a move now.
    waiting: AtomicUsize,
    /// The same, for `/metrics`.
    waiting_gauge: IntGauge,
    /// Most requests allowed to wait at once.
    max_waiting: usize,
}

/// A place among the waiting requests; freed when dropped.
pub struct Waiting<'a>(&'a Suspects);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
        self.0.waiting_gauge.dec();
    }
}

impl Suspects {
    /// No reports yet; at most `max_waiting` requests may wait at once
    /// (counted in `gauge` too).
    pub fn new(max_waiting: usize, gauge: IntGauge) -> Self {
        Self {
            probes: Mutex::default(),
            wake: Notify::new(),
            waiting: AtomicUsize::new(0),
            waiting_gauge: gauge,
            max_waiting,
        }
    }

    /// Whether node `id`'s address (`url`) refuses connections: probed now,
    /// or the answer of a probe started less than [`PROBE_REUSE`] ago. A
    /// refusal wakes the control loop.
    pub async fn refuses(&self, id: &str, url: &str) -> bool {
        let (cell, ours) = {
            let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            probes.retain(|_, p| now.duration_since(p.started) < REFUSAL_FRESH);
            let fresh = probes.get(id).filter(|p| now.duration_since(p.started) < PROBE_REUSE);
            match fresh {
                Some(p) => (p.refused.clone(), false),
                None => {
                    let cell = Arc::new(OnceCell::new());
                    probes.insert(id.to_string(), Probe { started: now, refused: cell.clone() });
                    (cell, true)
                }
            }
        };
        let refused = *cell.get_or_init(|| crate::probe::refuses(url)).await;
        if refused && ours {
            self.wake.notify_one();
        }
        refused
    }

    /// Whether a reported node refused connections within the last
    /// [`REFUSAL_FRESH`]: the leader then looks every [`SUSPECT_TICK`].
    pub fn any_refusing(&self) -> bool {
        let probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        probes.values().any(|p| p.started.elapsed() < REFUSAL_FRESH && p.refused.get() == Some(&true))
    }

    /// A place among the waiting requests, unless all are taken.
    pub fn wait_slot(&self) -> Option<Waiting<'_>> {
        let before = self.waiting.fetch_add(1, Ordering::Relaxed);
        self.waiting_gauge.inc();
        let slot = Waiting(self);
        (before < self.max_waiting).then_some(slot)
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// How long a released waiter waits before its answer: a random point
    /// in a window that grows with the number released together.
    pub fn release_delay(&self) -> Duration {
        let window = SPREAD_PER_WAITER.saturating_mul(self.waiting() as u32).min(MAX_SPREAD);
        window.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suspects(max_waiting: usize) -> Suspects {
        Suspects::new(max_waiting, IntGauge::new("waiting", "test").expect("gauge"))
    }

    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }

    #[tokio::test]
    async fn a_refusing_node_is_probed_once_per_window_and_wakes_the_loop() {
        let s = suspects(10);
        let url = format!("ws://127.0.0.1:{}/socket", closed_port());
        assert!(!s.any_refusing());
        assert!(s.refuses("dead", &url).await);
        assert!(s.any_refusing());
        // The wake is stored for the loop (Notify keeps one permit).
        tokio::time::timeout(Duration::from_millis(100), s.wake.notified()).await.expect("woken");
        // A second report within the window reuses the probe and does not wake again.
        assert!(s.refuses("dead", &url).await);
        assert!(tokio::time::timeout(Duration::from_millis(50), s.wake.notified()).await.is_err());
    }

    #[tokio::test]
    async fn a_listening_node_is_not_refusing() {
        let s = suspects(10);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/socket", l.local_addr().expect("addr"));
        assert!(!s.refuses("alive", &url).await);
        assert!(!s.any_refusing());
    }

    #[test]
    fn waiting_requests_are_capped_and_released_places_are_reused() {
        let s = suspects(2);
        let a = s.wait_slot().expect("first");
        let b = s.wait_slot().expect("second");
        assert!(s.wait_slot().is_none(), "full");
        assert_eq!(s.waiting(), 2, "a refused place is not kept");
        drop(a);
        assert!(s.wait_slot().is_some());
        drop(b);
        assert_eq!(s.waiting(), 0);
        // The spread grows with the number waiting, up to a second.
        assert_eq!(suspects(1).release_delay(), Duration::ZERO);
    }
}
