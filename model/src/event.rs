//! The join/leave event that carries every presence change between nodes
//! (`docs/protocol.md`, "Events on the bus"). Key on the bus: the user ID.
//! Value: this JSON.

use serde::{Deserialize, Serialize};

use crate::rich::{Devices, UserStatus};
use crate::{Presence, PresenceChange, UserId};

/// Schema version written in `v`: 2 adds `type` `update` and the rich
/// presence fields (`kafka/README.md`, "Compatibility").
pub const EVENT_VERSION: u32 = 2;

/// Whether the user's cluster-wide count went up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A connection came (count went up).
    Join,
    /// A connection went (count went down).
    Leave,
    /// The count stayed; devices, idleness or the user's status changed (version 2).
    Update,
}

/// Why a change happened: why a connection went (`closed`, `timeout`,
/// `token_expired`, `kicked`), why a node's counts were removed
/// (`node_lost`, `node_restarted`), or that a node rewrote its counts
/// (`resync`). Carried on events and, for offline users, on `status` and
/// `/presence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventReason {
    /// The connection closed: the client said goodbye, or its socket went away.
    Closed,
    /// The client stopped answering pings.
    Timeout,
    /// The leader counted out a node whose registration expired (it crashed,
    /// or was cut off from the store for longer than its TTL).
    #[serde(alias = "node_dead")]
    NodeLost,
    /// The node restarted under the same ID; the previous run's counts were removed.
    NodeRestarted,
    /// The token expired and was not refreshed in time.
    TokenExpired,
    /// The server closed the connection for breaking a limit (slow reader,
    /// too many subscriptions, frames too large, rate limit).
    Kicked,
    /// A node rewrote its counts (first start, a store that lost its data).
    Resync,
    /// A reason this version does not know (written by a newer version).
    #[serde(other)]
    Other,
}

impl EventReason {
    /// The wire name (`closed`, `node_lost`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Timeout => "timeout",
            Self::NodeLost => "node_lost",
            Self::NodeRestarted => "node_restarted",
            Self::TokenExpired => "token_expired",
            Self::Kicked => "kicked",
            Self::Resync => "resync",
            Self::Other => "other",
        }
    }
}

/// One presence change of one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusEvent {
    /// Schema version, 1.
    pub v: u32,
    /// Join or leave.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The user whose count changed.
    pub user_id: UserId,
    /// The node that made the change (or counted out a dead node).
    pub node_id: String,
    /// The connection that caused it, when one did.
    pub connection_id: Option<String>,
    /// The user's live connections in the whole cluster after the change.
    pub connections: u64,
    /// Per-user sequence number; only grows. Consumers drop events at or below the last seen.
    pub seq: u64,
    /// Routing epoch the writer held.
    pub epoch: u64,
    /// Time of the change, ms since the Unix epoch.
    pub ts: u64,
    /// Why, when known (see [`EventReason`]); absent on ordinary joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<EventReason>,
    /// The process that wrote the event (a ws-node's run ID): a node skips
    /// its own echoes by it. Absent on count-outs by a coordinator, so the
    /// restarted run of a counted-out node still hears them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The user's last disconnect as the store holds it (version 2; a
    /// version 1 reader takes `ts` of a leave for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
    /// Live connections per device after the change (version 2).
    #[serde(default, skip_serializing_if = "Devices::is_empty")]
    pub devices: Devices,
    /// While online with every connection idle: since when (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<u64>,
    /// The status the user set (version 2), the truth: an invisible user's
    /// events say so, and nodes hide it from watchers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<UserStatus>>,
}

impl StatusEvent {
    /// The event announcing `change`, written by `node_id` (the node that
    /// counted, or the dead node a coordinator counted out) at `ts`.
    pub fn from_change(
        change: &PresenceChange,
        node_id: &str,
        connection_id: Option<String>,
        epoch: u64,
        ts: u64,
        reason: Option<EventReason>,
    ) -> Self {
        Self {
            v: EVENT_VERSION,
            kind: match change.presence.connections.cmp(&change.previous) {
                std::cmp::Ordering::Greater => EventKind::Join,
                std::cmp::Ordering::Less => EventKind::Leave,
                std::cmp::Ordering::Equal if change.presence.connections == 0 => EventKind::Leave,
                std::cmp::Ordering::Equal => EventKind::Update,
            },
            user_id: change.presence.user_id.clone(),
            node_id: node_id.to_string(),
            connection_id,
            connections: change.presence.connections,
            seq: change.presence.seq,
            epoch,
            ts,
            reason,
            run_id: None,
            last_seen: change.presence.last_seen,
            devices: change.presence.devices.clone(),
            idle_since: change.presence.idle_since,
            status: change.presence.status.clone(),
        }
    }

    /// The same event, stamped with the run ID of the process writing it.
    pub fn from_run(mut self, run_id: &str) -> Self {
        self.run_id = Some(run_id.to_string());
        self
    }

    /// The presence this event reports. `lastSeen` is the store's; from a
    /// version 1 writer, the time of a leave, else unknown (the reader keeps its own).
    pub fn presence(&self) -> Presence {
        Presence {
            user_id: self.user_id.clone(),
            connections: self.connections,
            seq: self.seq,
            last_seen: self.last_seen.or(Some(self.ts).filter(|_| self.kind != EventKind::Update)),
            reason: if self.connections == 0 { self.reason } else { None },
            devices: self.devices.clone(),
            idle_since: self.idle_since,
            status: self.status.clone(),
        }
    }

    /// Parses an event from bytes read off the bus.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Serialises to the bus value.
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_schema() {
        let e = StatusEvent {
            v: EVENT_VERSION,
            kind: EventKind::Join,
            user_id: UserId::parse("alice").expect("valid"),
            node_id: "node-1".into(),
            connection_id: Some("c-1".into()),
            connections: 2,
            seq: 9,
            epoch: 3,
            ts: 1_700_000_000_000,
            reason: None,
            run_id: None,
            last_seen: Some(1_699_999_999_000),
            devices: Presence::counted(UserId::parse("alice").expect("valid"), 2, 9).devices,
            idle_since: None,
            status: Some(Box::new(UserStatus { availability: crate::Availability::Away, ..Default::default() })),
        };
        let v: serde_json::Value = serde_json::from_slice(&e.to_vec()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"v":2,"type":"join","userId":"alice","nodeId":"node-1","connectionId":"c-1","connections":2,"seq":9,"epoch":3,"ts":1_700_000_000_000u64,"lastSeen":1_699_999_999_000u64,"devices":{"unknown":2},"status":{"availability":"away"}})
        );
        // A version 1 event still reads: the lastSeen of a leave is its time.
        let v1 = r#"{"v":1,"type":"leave","userId":"bob","nodeId":"n","connectionId":null,"connections":0,"seq":2,"epoch":1,"ts":5}"#;
        let p = StatusEvent::from_slice(v1.as_bytes()).expect("parse").presence();
        assert_eq!((p.last_seen, p.devices.is_empty(), p.status), (Some(5), true, None));
        assert_eq!(StatusEvent::from_slice(&e.to_vec()).expect("parse"), e);
        let leave = r#"{"v":1,"type":"leave","userId":"bob","nodeId":"n","connectionId":null,"connections":0,"seq":2,"epoch":1,"ts":5,"reason":"node_dead"}"#;
        let parsed = StatusEvent::from_slice(leave.as_bytes()).expect("parse");
        assert_eq!(parsed.kind, EventKind::Leave);
        assert_eq!(parsed.reason, Some(EventReason::NodeLost), "the name before node_lost still reads");
        let newer = leave.replace("node_dead", "solar_flare");
        assert_eq!(StatusEvent::from_slice(newer.as_bytes()).expect("parse").reason, Some(EventReason::Other));
    }
}
