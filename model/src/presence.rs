//! A user's presence: how the store reports it and how a change is described.

use serde::{Deserialize, Serialize};

use crate::rich::{Devices, UserStatus};
use crate::{EventReason, UserId};

/// A user's presence across the whole cluster, as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    /// The user.
    pub user_id: UserId,
    /// Live authenticated connections in the whole cluster.
    pub connections: u64,
    /// Per-user sequence number of the last change (0 if never seen).
    pub seq: u64,
    /// Time of the user's last disconnect, ms since the Unix epoch; `None` if never seen.
    pub last_seen: Option<u64>,
    /// Why the user went offline (only while `connections` is 0, when known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<EventReason>,
    /// Live connections per device, summed over nodes (empty while offline).
    #[serde(default, skip_serializing_if = "Devices::is_empty")]
    pub devices: Devices,
    /// While online with every connection idle: since when (the latest
    /// moment a node's last active connection went idle), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<u64>,
    /// The status the user set, if any (boxed: most users never set one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<UserStatus>>,
}

impl Presence {
    /// A user the store has never seen.
    pub fn unknown(user_id: UserId) -> Self {
        Self::counted(user_id, 0, 0)
    }

    /// `connections` of unknown devices, all active, at `seq`; nothing else known.
    pub fn counted(user_id: UserId, connections: u64, seq: u64) -> Self {
        let mut devices = Devices::default();
        devices.add(&crate::rich::Device::unknown(), connections);
        Self { user_id, connections, seq, last_seen: None, reason: None, devices, idle_since: None, status: None }
    }

    /// Online, with every connection idle.
    pub fn idle(&self) -> bool {
        self.online() && self.idle_since.is_some()
    }

    /// The status the user set, while it holds at `now_ms` (not expired).
    pub fn status_at(&self, now_ms: u64) -> Option<&UserStatus> {
        self.status.as_deref().filter(|s| s.holds(now_ms))
    }

    /// Whether watchers must see the user offline at `now_ms`.
    pub fn invisible_at(&self, now_ms: u64) -> bool {
        self.status_at(now_ms).is_some_and(|s| s.availability == crate::rich::Availability::Invisible)
    }

    /// `connections > 0`.
    pub fn online(&self) -> bool {
        self.connections > 0
    }

    /// `lastSeen` as the APIs report it: now while online, else the last disconnect.
    pub fn reported_last_seen(&self, now_ms: u64) -> Option<u64> {
        if self.online() {
            Some(now_ms)
        } else {
            self.last_seen
        }
    }
}

/// The outcome of one write to a user's presence: the new cluster-wide state,
/// stamped with the per-user sequence number the store assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// The user's presence after the write.
    pub presence: Presence,
    /// The cluster-wide count before the write, so the caller can tell a join from a leave.
    pub previous: u64,
}
