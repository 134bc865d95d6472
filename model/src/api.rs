//! The JSON bodies of the coordinator's HTTP API (`docs/protocol.md`), shared by
//! the coordinator that writes them and the SDK that reads them.

use serde::{Deserialize, Serialize};

use crate::{EventReason, Presence, UserId};

/// One route, as `/route` answers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// The user.
    pub user_id: String,
    /// The user's vnode.
    pub vnode: u16,
    /// The owning node (`null` in a batch when no node owns it).
    pub node_id: Option<String>,
    /// The owner's WebSocket URL.
    pub url: Option<String>,
    /// The routing epoch of the answer.
    pub epoch: u64,
    /// Present and true when the table could not be refreshed from the store.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
}

/// One user's presence, as `/presence` answers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceView {
    /// The user.
    pub user_id: UserId,
    /// `connections > 0`.
    pub online: bool,
    /// Live connections in the cluster.
    pub connections: u64,
    /// Last disconnect (ms since epoch), now while online, `null` if never seen.
    pub last_seen: Option<u64>,
    /// Why the user went offline, when known; absent while online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<EventReason>,
}

impl PresenceView {
    /// The view of a stored presence at `now_ms`.
    pub fn of(p: &Presence, now_ms: u64) -> Self {
        Self {
            user_id: p.user_id.clone(),
            online: p.online(),
            connections: p.connections,
            last_seen: p.reported_last_seen(now_ms),
            reason: if p.online() { None } else { p.reason },
        }
    }
}

/// One live node, as `/nodes` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// Node ID.
    pub id: String,
    /// WebSocket URL.
    pub url: String,
    /// Relative capacity.
    pub capacity: u32,
    /// Live connections.
    pub connections: u64,
    /// Users with a connection.
    pub users: u64,
    /// Vnodes owned in the current table.
    pub vnodes: usize,
    /// Vnodes pinned to it.
    pub pinned: usize,
    /// Leaving on purpose.
    pub draining: bool,
    /// Last heartbeat, ms since epoch.
    pub last_heartbeat: u64,
    /// Age of the last heartbeat when answered, ms.
    pub heartbeat_age_ms: u64,
}
