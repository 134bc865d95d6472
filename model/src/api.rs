//! The JSON bodies of the coordinator's HTTP API (`docs/protocol.md`), shared by
//! the coordinator that writes them and the SDK that reads them.

use serde::{Deserialize, Serialize};

use crate::rich::{Availability, Devices, LastSeenPolicy};
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

/// One user's presence, as `/presence` answers it and `status` carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Live connections per device (absent while offline).
    #[serde(default, skip_serializing_if = "Devices::is_empty")]
    pub devices: Devices,
    /// Online with every connection idle (absent: false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idle: bool,
    /// Since when idle, ms (only while `idle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<u64>,
    /// What the user set (`available` when nothing, or when it expired).
    #[serde(default)]
    pub availability: Availability,
    /// The user's status text, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_text: Option<String>,
    /// When the availability and text lapse, ms, if they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_expires_at: Option<u64>,
}

impl PresenceView {
    /// The whole truth of a stored presence at `now_ms`: what the user's own
    /// connections see.
    pub fn of(p: &Presence, now_ms: u64) -> Self {
        let status = p.status_at(now_ms);
        Self {
            user_id: p.user_id.clone(),
            online: p.online(),
            connections: p.connections,
            last_seen: p.reported_last_seen(now_ms),
            reason: if p.online() { None } else { p.reason },
            devices: if p.online() { p.devices.clone() } else { Devices::default() },
            idle: p.idle(),
            idle_since: p.idle_since.filter(|_| p.idle()),
            availability: status.map_or(Availability::Available, |s| s.availability),
            status_text: status.and_then(|s| s.text.clone()),
            status_expires_at: status.and_then(|s| s.expires_at),
        }
    }

    /// What anyone but the user sees (watchers, the server API): an
    /// invisible user is offline since they went invisible, indistinguishable
    /// from one who closed their last connection then; `lastSeen` as `policy` allows.
    pub fn public(p: &Presence, now_ms: u64, policy: LastSeenPolicy) -> Self {
        let mut v = if p.invisible_at(now_ms) {
            let since = p.status_at(now_ms).and_then(|s| s.invisible_since).or(p.last_seen);
            Self {
                user_id: p.user_id.clone(),
                online: false,
                connections: 0,
                last_seen: since,
                reason: Some(EventReason::Closed),
                devices: Devices::default(),
                idle: false,
                idle_since: None,
                availability: Availability::Available,
                status_text: None,
                status_expires_at: None,
            }
        } else {
            Self::of(p, now_ms)
        };
        v.last_seen = policy.apply(v.last_seen);
        v
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

/// Cluster activity, as `/stats` answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsView {
    /// Live connections now (the nodes' last heartbeats).
    pub connections: u64,
    /// Users with a connection now.
    pub users: u64,
    /// Distinct users seen online this UTC hour (HyperLogLog estimate, ~1% error).
    pub unique_users_hour: u64,
    /// Distinct users seen online this UTC day (likewise).
    pub unique_users_day: u64,
    /// Most concurrent connections this UTC day (sampled every second by the leader).
    pub peak_connections_day: u64,
}
