//! The door of a listener: every connection a stranger opens passes here
//! first, and is bounded in number (overall and per client IP) and in time
//! (headers must arrive within the header timeout, which also closes a
//! keep-alive connection left idle for as long). What each limit protects is
//! in `docs/security.md`.
//!
//! A connection admitted holds a [`Slot`] until it closes. An HTTP
//! connection that upgrades to a WebSocket hands its slot to the session
//! (it travels in the request's extensions), so WebSocket connections count
//! against the same caps for as long as they live.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

use prometheus::Opts;

use crate::metric::registered;

/// A listener's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A request's headers must arrive within this; a keep-alive connection
    /// idle for this long is closed too.
    pub header_timeout: Duration,
    /// Largest request head (request line and headers) accepted, in bytes
    /// (at least 8 KiB, hyper's minimum).
    pub max_header_bytes: usize,
    /// Open connections (HTTP and WebSocket) at most.
    pub max_connections: usize,
    /// Open connections from one client IP at most.
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_connections: 100_000,
            max_connections_per_ip: 1_000,
        }
    }
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener holds `max_connections`.
    Full,
    /// This IP holds `max_connections_per_ip`.
    PerIp,
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "max_connections",
            Self::PerIp => "max_connections_per_ip",
        }
    }
}

/// The listener's metrics, registered on the server's registry with a
/// `listener` label (`public`, `admin`), so one process may run several.
#[derive(Clone)]
pub struct HttpMetrics {
    /// Open connections, HTTP and WebSocket.
    pub open: IntGauge,
    /// Connections turned away, by limit.
    pub refused: IntCounterVec,
    /// Connections closed because headers did not arrive in time (or idled).
    pub header_timeouts: IntCounter,
}

impl HttpMetrics {
    /// Registers the metrics of the listener called `listener` on `r`.
    pub fn new(r: &Registry, listener: &str) -> Self {
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("listener", listener);
        Self {
            open: registered(
                r,
                IntGauge::with_opts(opts(
                    "presence_http_connections",
                    "Open connections on the listener, HTTP and WebSocket.",
                )),
            ),
            refused: registered(
                r,
                IntCounterVec::new(
                    opts("presence_http_refused_total", "Connections turned away by a connection limit."),
                    &["limit"],
                ),
            ),
            header_timeouts: registered(
                r,
                IntCounter::with_opts(opts(
                    "presence_http_header_timeouts_total",
                    "Connections closed because request headers did not arrive in time, or the connection idled.",
                )),
            ),
        }
    }
}

/// Counts connections against the limits. Shared by a listener's tasks.
pub struct Gate {
    /// The limits.
    pub limits: Limits,
    /// The metrics.
    pub metrics: HttpMetrics,
    open: AtomicUsize,
    /// Open connections per client IP. A sync lock: a map operation per
    /// connect and close, never held across an `.await`.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Gate {
    /// A gate with these limits reporting to `metrics`.
    pub fn new(limits: Limits, metrics: HttpMetrics) -> Arc<Self> {
        Arc::new(Self { limits, metrics, open: AtomicUsize::new(0), per_ip: Mutex::new(HashMap::new()) })
    }

    /// Admits a connection from `ip`, or says which limit it hit (and counts it).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let refusal = {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let mine = per_ip.get(&ip).copied().unwrap_or(0);
            if self.open.load(Ordering::Relaxed) >= self.limits.max_connections {
                Some(Refusal::Full)
            } else if mine >= self.limits.max_connections_per_ip {
                Some(Refusal::PerIp)
            } else {
                per_ip.insert(ip, mine + 1);
                self.open.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        match refusal {
            Some(r) => {
                self.metrics.refused.with_label_values(&[r.as_str()]).inc();
                Err(r)
            }
            None => {
                self.metrics.open.inc();
                Ok(Slot { gate: self.clone(), ip })
            }
        }
    }
}

/// One admitted connection; frees its place when dropped.
pub struct Slot {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_ip = self.gate.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.gate.open.fetch_sub(1, Ordering::Relaxed);
        self.gate.metrics.open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_free_on_drop() {
        let limits = Limits { max_connections: 3, max_connections_per_ip: 2, ..Limits::default() };
        let gate = Gate::new(limits, HttpMetrics::new(&Registry::new(), "test"));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"));
        let a1 = gate.admit(a).expect("first");
        let _a2 = gate.admit(a).expect("second");
        assert_eq!(gate.admit(a).err(), Some(Refusal::PerIp));
        let _b1 = gate.admit(b).expect("another IP");
        assert_eq!(gate.admit(b).err(), Some(Refusal::Full));
        drop(a1);
        assert!(gate.admit(b).is_ok(), "a freed place is taken again");
        assert_eq!(gate.metrics.refused.with_label_values(&["max_connections_per_ip"]).get(), 1);
    }
}
