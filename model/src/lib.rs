//! The vocabulary every part of the presence platform shares, with no I/O.
//!
//! * [`api`]: the JSON bodies of the coordinator's HTTP API.
//! * [`vnode`]: the fixed user-ID → vnode hash (xxh3, 4096 vnodes).
//! * [`user_id`]: validated user IDs.
//! * [`wire`]: the WebSocket messages between clients and ws-nodes, and the close codes.
//! * [`event`]: the join/leave event that travels between nodes on the bus.
//! * [`auth`]: JWT verification (and minting of development tokens).
//! * [`routing`]: the vnode → node routing table with its epoch.
//! * [`presence`]: a user's presence as the store and the APIs report it.
//! * [`rich`]: devices, idleness, availability and what watchers may see of them.
//! * [`node`]: what a ws-node reports about itself when it heartbeats.
//! * [`time`]: wall-clock milliseconds, the unit of every timestamp on the wire.

pub mod api;
pub mod auth;
pub mod event;
pub mod node;
pub mod presence;
pub mod rich;
pub mod routing;
pub mod time;
pub mod user_id;
pub mod vnode;
pub mod wire;

pub use event::{EventKind, EventReason, StatusEvent};
pub use node::{NodeRecord, NodeRecordError};
pub use presence::{Presence, PresenceChange};
pub use rich::{Availability, Device, Devices, LastSeenPolicy, Share, UserStatus};
pub use routing::{RoutingTable, TableNode, TableVersion};
pub use user_id::{UserId, UserIdError};
pub use vnode::{vnode, Vnode, VNODES};
