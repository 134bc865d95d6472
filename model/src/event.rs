//! The join/leave event that carries every presence change between nodes
//! (`docs/protocol.md`, "Events on the bus"). Key on the bus: the user ID.
//! Value: this JSON.

use serde::{Deserialize, Serialize};

use crate::{Presence, PresenceChange, UserId};

/// Schema version written in `v`.
pub const EVENT_VERSION: u32 = 1;

/// Whether the user's cluster-wide count went up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A connection came (count went up).
    Join,
    /// A connection went (count went down).
    Leave,
}

/// Why a change happened, when it is not an ordinary connect or disconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventReason {
    /// The leader counted out a node whose registration expired.
    NodeDead,
    /// A node rewrote its counts (first start, a store that lost its data).
    Resync,
    /// A reason this version does not know (written by a newer version).
    #[serde(other)]
    Other,
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
    /// Why, when it is not an ordinary connect or disconnect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<EventReason>,
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
            kind: if change.presence.connections > change.previous { EventKind::Join } else { EventKind::Leave },
            user_id: change.presence.user_id.clone(),
            node_id: node_id.to_string(),
            connection_id,
            connections: change.presence.connections,
            seq: change.presence.seq,
            epoch,
            ts,
            reason,
        }
    }

    /// The presence this event reports. `lastSeen` is the event time when the
    /// user went offline, and unknown (the reader keeps its own) otherwise.
    pub fn presence(&self) -> Presence {
        Presence {
            user_id: self.user_id.clone(),
            connections: self.connections,
            seq: self.seq,
            last_seen: Some(self.ts),
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
        };
        let v: serde_json::Value = serde_json::from_slice(&e.to_vec()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"v":1,"type":"join","userId":"alice","nodeId":"node-1","connectionId":"c-1","connections":2,"seq":9,"epoch":3,"ts":1_700_000_000_000u64})
        );
        assert_eq!(StatusEvent::from_slice(&e.to_vec()).expect("parse"), e);
        let leave = r#"{"v":1,"type":"leave","userId":"bob","nodeId":"n","connectionId":null,"connections":0,"seq":2,"epoch":1,"ts":5,"reason":"node_dead"}"#;
        let parsed = StatusEvent::from_slice(leave.as_bytes()).expect("parse");
        assert_eq!(parsed.kind, EventKind::Leave);
        assert_eq!(parsed.reason, Some(EventReason::NodeDead));
        let newer = leave.replace("node_dead", "solar_flare");
        assert_eq!(StatusEvent::from_slice(newer.as_bytes()).expect("parse").reason, Some(EventReason::Other));
    }
}
