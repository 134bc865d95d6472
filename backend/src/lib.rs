//! The backends every presence component runs on, behind small traits, so
//! that the demo, the tests and production run the same logic.
//!
//! * [`store`]: the [`Store`] trait: routing table with epoch, node
//!   membership with TTL, per-user presence with sequence numbers, leader lease.
//! * [`bus`]: the [`Bus`] trait: join/leave events to and from every node.
//! * [`live`]: the fast path: a node's feed of the changes of the users it follows.
//! * [`memory`]: embedded in-process implementations of both.
//! * `conformance` (feature `conformance`): the test suite every store must pass.
//! * [`table_cache`]: a reader's cached copy of the routing table, refreshed
//!   on notice and by a periodic epoch check.
//! * [`timed`]: a store that reports each operation's duration (for metrics).
//! * [`hll`]: the HyperLogLog behind the embedded store's unique-user counts.
//!
//! The Redis store lives in `redis/` and the Kafka bus in `kafka/`.

pub mod bus;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod hll;
pub mod live;
pub mod memory;
pub mod store;
pub mod table_cache;
pub mod timed;

pub use bus::{Bus, BusError, BusMessage, BusStats, BusSubscription};
pub use live::{Live, LiveFeed, LiveSender};
pub use memory::{MemoryBus, MemoryStore};
pub use store::{periods, Activity, CountUpdate, Registration, Store, StoreError};
pub use table_cache::TableCache;
pub use timed::Timed;
