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
