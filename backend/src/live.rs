//! The fast path of live status (`docs/architecture.md`, "Fast path"): the
//! store announces every count change of a user on that user's channel in
//! the same atomic step as the write (Redis pub/sub, sharded on a Redis
//! Cluster), and a node follows the channels of the users its connections
//! watch. The bus stays the durable, ordered feed of every event; both carry
//! the store's `seq`, so a change that arrives twice is applied once.
//!
//! Delivery on this path is at most once. Whatever may have been missed (the
//! feed's connection dropped, its queue overflowed) is reported as
//! [`Live::Gap`], and the node re-reads its watched users from the store.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use presence_model::{Presence, UserId};
use tokio::sync::mpsc;

use crate::StoreError;

/// What a live feed delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    /// A followed user's presence after a write.
    Change(Presence),
    /// Changes may have been missed since the last message: re-read.
    Gap,
}

/// Changes a feed may hold for its node before it reports a gap. A node
/// that falls this far behind re-reads its watched users, which bounds the
/// memory an event storm costs.
pub const LIVE_QUEUE: usize = 16 * 1024;

/// Which users' changes a node receives on its feed.
#[async_trait]
pub trait LiveFeed: Send + Sync {
    /// Starts delivering these users' changes. A change written before the
    /// call returns may not be delivered: read the user's state after it.
    async fn follow(&self, users: &[UserId]) -> Result<(), StoreError>;
    /// Stops delivering these users' changes.
    async fn unfollow(&self, users: &[UserId]) -> Result<(), StoreError>;
}

/// The sending side of a feed's bounded queue: never blocks, and turns an
/// overflow into a [`Live::Gap`] sent as soon as there is room again.
pub struct LiveSender {
    tx: mpsc::Sender<Live>,
    gap: AtomicBool,
    dropped: AtomicU64,
}

impl LiveSender {
    /// A queue of [`LIVE_QUEUE`] messages.
    pub fn channel() -> (Arc<Self>, mpsc::Receiver<Live>) {
        let (tx, rx) = mpsc::channel(LIVE_QUEUE);
        (Arc::new(Self { tx, gap: AtomicBool::new(false), dropped: AtomicU64::new(0) }), rx)
    }

    /// Queues `m`; on overflow drops it and owes the receiver a gap.
    pub fn send(&self, m: Live) {
        if self.gap.load(Ordering::Relaxed) {
            if self.tx.try_send(Live::Gap).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.gap.store(false, Ordering::Relaxed);
        }
        if self.tx.try_send(m).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.gap.store(true, Ordering::Relaxed);
        }
    }

    /// Messages dropped because the receiver was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overflow_becomes_one_gap() {
        let (tx, mut rx) = LiveSender::channel();
        let u = UserId::parse("u").expect("id");
        for _ in 0..LIVE_QUEUE + 10 {
            tx.send(Live::Change(Presence::unknown(u.clone())));
        }
        assert_eq!(tx.dropped(), 10);
        let mut n = 0;
        while let Ok(m) = rx.try_recv() {
            assert!(matches!(m, Live::Change(_)));
            n += 1;
        }
        assert_eq!(n, LIVE_QUEUE);
        tx.send(Live::Change(Presence::unknown(u)));
        assert_eq!(rx.try_recv().ok(), Some(Live::Gap), "the gap comes first once there is room");
        assert!(matches!(rx.try_recv(), Ok(Live::Change(_))));
    }
}
