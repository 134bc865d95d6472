//! The node's handle on one connection: a bounded queue into the
//! connection's task. Everything that talks to a client from outside its
//! session (fan-out, handoff) goes through [`Conn::push`], which never waits:
//! a client that does not read cannot stall anyone else.

use std::sync::Arc;

use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::metrics::Metrics;

/// What a connection's writer receives.
#[derive(Debug)]
pub enum Outbound {
    /// A protocol message, already serialised (shared between all receivers).
    Text(Utf8Bytes),
    /// A `reconnect` message: send it, then close with 4011 after the handoff timeout.
    Handoff(Utf8Bytes),
}

/// The node's handle on one connection. Cheap to clone.
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

    /// Waits until a push found the queue full.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_rings_the_connection() {
        let metrics = Metrics::new();
        let (c, _rx) = Conn::new(1, 1);
        c.push(Outbound::Text("a".into()), &metrics);
        c.push(Outbound::Text("b".into()), &metrics);
        assert_eq!(metrics.slow_consumers.get(), 1);
        assert!(futures_util::FutureExt::now_or_never(c.overflowed()).is_some());
    }
}
