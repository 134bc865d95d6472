//! What a ws-node says about itself at every heartbeat.

use serde::{Deserialize, Serialize};

use crate::Vnode;

/// A ws-node's registration: identity, where clients reach it, and its load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// Stable node ID (`NODE_ID`).
    pub id: String,
    /// Unique per process: a node restarted under the same ID registers a
    /// new run, and the store counts the previous run out.
    #[serde(default)]
    pub run_id: String,
    /// WebSocket URL clients connect to, e.g. `ws://10.0.0.5:9000/socket`.
    pub url: String,
    /// Relative capacity; a node with capacity 2 gets twice the vnodes.
    pub capacity: u32,
    /// Live authenticated connections on the node.
    pub connections: u64,
    /// Distinct users with at least one connection on the node.
    pub users: u64,
    /// Connections per owned vnode, for load-aware balancing (vnodes with none left out).
    #[serde(default)]
    pub vnode_load: Vec<(Vnode, u32)>,
    /// Vnodes pinned to this node (`ASSIGNED_VNODES`); empty when none.
    #[serde(default)]
    pub pinned: Vec<Vnode>,
    /// The node is shutting down and wants its vnodes moved away.
    #[serde(default)]
    pub draining: bool,
    /// Time of this heartbeat, ms since the Unix epoch.
    pub heartbeat_ms: u64,
}

/// Why a node record read from the store cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeRecordError {
    /// The ID is empty, too long, or has spaces or control characters.
    #[error("node ID {0:?} must be 1-128 characters without spaces")]
    BadId(String),
    /// The URL is not a WebSocket URL.
    #[error("node URL {0:?} must start with ws:// or wss://")]
    BadUrl(String),
    /// Capacity 0 would divide by zero in the assignment.
    #[error("node capacity must be at least 1")]
    ZeroCapacity,
    /// A pinned or loaded vnode is outside 0-4095.
    #[error("vnode {0} is out of range 0-4095")]
    VnodeOutOfRange(u32),
}

impl NodeRecord {
    /// Checks a record read from outside (the store holds what any process
    /// with its password wrote): one bad record must not stop the coordinator.
    pub fn validate(&self) -> Result<(), NodeRecordError> {
        if self.id.is_empty() || self.id.len() > 128 || self.id.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(NodeRecordError::BadId(self.id.chars().take(140).collect()));
        }
        if !(self.url.starts_with("ws://") || self.url.starts_with("wss://")) {
            return Err(NodeRecordError::BadUrl(self.url.chars().take(200).collect()));
        }
        if self.capacity == 0 {
            return Err(NodeRecordError::ZeroCapacity);
        }
        let vnodes = self.pinned.iter().copied().chain(self.vnode_load.iter().map(|(v, _)| *v));
        if let Some(v) = vnodes.into_iter().find(|&v| v as usize >= crate::VNODES) {
            return Err(NodeRecordError::VnodeOutOfRange(u32::from(v)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_records_are_told_apart() {
        let good = NodeRecord {
            id: "n1".into(),
            run_id: "r".into(),
            url: "ws://h:1/socket".into(),
            capacity: 1,
            connections: 0,
            users: 0,
            vnode_load: vec![(4095, 1)],
            pinned: vec![0],
            draining: false,
            heartbeat_ms: 0,
        };
        assert_eq!(good.validate(), Ok(()));
        assert_eq!(
            NodeRecord { pinned: vec![4096], ..good.clone() }.validate(),
            Err(NodeRecordError::VnodeOutOfRange(4096))
        );
        assert_eq!(
            NodeRecord { vnode_load: vec![(9999, 1)], ..good.clone() }.validate(),
            Err(NodeRecordError::VnodeOutOfRange(9999))
        );
        assert_eq!(NodeRecord { capacity: 0, ..good.clone() }.validate(), Err(NodeRecordError::ZeroCapacity));
        assert!(matches!(
            NodeRecord { url: "http://x".into(), ..good.clone() }.validate(),
            Err(NodeRecordError::BadUrl(_))
        ));
        assert!(matches!(NodeRecord { id: "a b".into(), ..good }.validate(), Err(NodeRecordError::BadId(_))));
    }
}
