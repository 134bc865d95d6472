//! What the coordinator shows of the cluster: the node list (`/nodes`, the
//! dashboard), the ring (`/ring`, the dashboard) and the dashboard's
//! snapshot. The API and the dashboard both render from here, so the ring
//! has one encoding: the table's own (owner index per vnode, `null` where
//! unowned; see [`presence_model::RoutingTable`]).

use std::collections::HashMap;

use presence_model::api::NodeView;
use presence_model::RoutingTable;
use serde::Serialize;

use crate::Coordinator;

/// Live nodes with the vnodes each owns in the current table.
pub fn nodes(coord: &Coordinator) -> Vec<NodeView> {
    let table = coord.table.get();
    let counts: HashMap<&str, usize> =
        table.as_ref().map(|t| t.nodes.iter().map(|n| n.id.as_str()).zip(t.counts()).collect()).unwrap_or_default();
    let now = presence_model::time::now_ms();
    coord
        .nodes()
        .iter()
        .map(|n| NodeView {
            id: n.id.clone(),
            url: n.url.clone(),
            capacity: n.capacity,
            connections: n.connections,
            users: n.users,
            vnodes: counts.get(n.id.as_str()).copied().unwrap_or(0),
            pinned: n.pinned.len(),
            draining: n.draining,
            last_heartbeat: n.heartbeat_ms,
            heartbeat_age_ms: now.saturating_sub(n.heartbeat_ms),
        })
        .collect()
}

/// One node of the ring view.
#[derive(Debug, Serialize)]
pub struct RingNode<'a> {
    /// Node ID.
    pub id: &'a str,
    /// WebSocket URL.
    pub url: &'a str,
    /// Vnodes it owns.
    pub vnodes: usize,
}

/// The ring as `/ring` and the dashboard show it.
#[derive(Debug, Serialize)]
pub struct Ring<'a> {
    /// The table's epoch.
    pub epoch: u64,
    /// The table could not be refreshed from the store.
    pub stale: bool,
    /// Nodes, in table order, with their vnode counts.
    pub nodes: Vec<RingNode<'a>>,
    /// Owner index per vnode into `nodes`, `null` where unowned (the table's encoding).
    pub owners: Vec<Option<u16>>,
}

/// The ring of `table`.
pub fn ring(table: &RoutingTable, stale: bool) -> Ring<'_> {
    let nodes =
        table.nodes.iter().zip(table.counts()).map(|(n, vnodes)| RingNode { id: &n.id, url: &n.url, vnodes }).collect();
    Ring { epoch: table.epoch, stale, nodes, owners: table.wire_owners().collect() }
}

/// The dashboard's periodic snapshot: nodes, totals, leadership.
pub fn snapshot(coord: &Coordinator) -> serde_json::Value {
    let nodes = nodes(coord);
    let connections: u64 = nodes.iter().map(|n| n.connections).sum();
    let users: u64 = nodes.iter().map(|n| n.users).sum();
    serde_json::json!({
        "epoch": coord.table.epoch(),
        "stale": coord.table.is_stale(),
        "leader": coord.is_leader(),
        "coordinatorId": coord.config.id,
        "nodes": nodes,
        "connections": connections,
        "users": users,
        "stats": coord.stats(coord.activity()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_model::VNODES;

    #[test]
    fn ring_uses_the_tables_encoding() {
        let owners: Vec<Option<&str>> = (0..VNODES).map(|v| (v % 2 == 0).then_some("a")).collect();
        let t = RoutingTable::from_owners(4, &owners, |id| format!("ws://{id}"));
        let v = serde_json::to_value(ring(&t, false)).expect("json");
        assert_eq!(v["owners"][0], 0);
        assert_eq!(v["owners"][1], serde_json::Value::Null);
        assert_eq!(v["owners"], serde_json::to_value(&t).expect("table")["owners"], "the table's own encoding");
        assert_eq!(v["nodes"][0]["vnodes"], VNODES / 2);
    }
}
