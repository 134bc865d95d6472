//! The bus: every presence change, delivered to every node.
//!
//! Delivery is at least once and, across writers, in no particular order:
//! consumers apply an event only when its per-user `seq` is newer than what
//! they hold. When a consumer may have missed events (it fell behind, or the
//! bus was down) it receives [`BusMessage::Resync`] and re-reads what it
//! cares about from the store.

use std::sync::Arc;

use async_trait::async_trait;
use presence_model::StatusEvent;

/// Publishing failed; the event is not queued.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The outbound queue is full (its bound is the backend's); the caller counts it.
    #[error("bus queue is full")]
    Full,
    /// The bus cannot take events now.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum BusMessage {
    /// One event, shared between all local consumers.
    Event(Arc<StatusEvent>),
    /// Events may have been missed: re-read state from the store.
    Resync,
}

/// One consumer's view of the bus.
#[async_trait]
pub trait BusSubscription: Send {
    /// The next message; `None` when the bus is closed for good.
    async fn next(&mut self) -> Option<BusMessage>;
}

/// Counters a bus keeps about itself, read when metrics are scraped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Events handed to the bus.
    pub published: u64,
    /// Events the bus confirmed delivered (for the embedded bus: published).
    pub delivered: u64,
    /// Events the bus gave up on after retrying.
    pub delivery_errors: u64,
    /// Events waiting in the producer's queue now.
    pub queue_depth: u64,
    /// Events received by this process's subscribers.
    pub received: u64,
    /// Events on the bus not yet read by this process's subscriber: how far
    /// behind it is (Kafka: the partitions' high watermarks minus the next
    /// offsets to read, as of the last check, once a second; 0 embedded).
    pub consumer_lag: u64,
    /// Whether the bus is reachable as far as this process knows.
    pub healthy: bool,
}

/// The event bus between nodes.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Short name for logs and `/readyz` (`memory`, `kafka`).
    fn kind(&self) -> &'static str;

    /// Counters for metrics and `/readyz`.
    fn stats(&self) -> BusStats;

    /// Queues an event for every subscriber. Does not wait for delivery.
    async fn publish(&self, event: StatusEvent) -> Result<(), BusError>;

    /// Every event published from now on.
    fn subscribe(&self) -> Box<dyn BusSubscription>;

    /// Waits (blocking, up to `timeout`) until queued events are delivered: for shutdown.
    fn flush(&self, _timeout: std::time::Duration) {}
}
