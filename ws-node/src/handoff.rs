//! Handing users over when their vnode moves (`docs/architecture.md`,
//! "Handoff").
//!
//! [`run`] follows the routing table: when a user this node serves now
//! belongs to another node (a rebalance, or this node drains), every one of
//! the user's connections is sent `reconnect` with the new owner's URL, once
//! per move. Each session then arms a [`Deadline`]: after the handoff timeout
//! it closes with 4011, whether or not the client moved. The client connects
//! to the new owner first, so for a moment the user has connections on both
//! nodes and nobody sees it go offline.
//!
//! A connection accepted while the table moved (between the ownership check
//! and joining [`Counts`]) missed that sweep; [`tell_if_moved`] covers it.

use std::sync::Arc;
use std::time::Duration;

use presence_backend::TableCache;
use presence_model::wire::{HandoffReason, ServerMessage};
use presence_model::{RoutingTable, TableNode, UserId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::conn::{Conn, Outbound};
use crate::counts::Counts;
use crate::membership::Membership;
use crate::metrics::Metrics;

/// The `reconnect` frame that sends a client to `owner`.
fn reconnect(owner: &TableNode, epoch: u64, reason: HandoffReason) -> Outbound {
    let m = ServerMessage::Reconnect { url: owner.url.clone(), epoch, reason };
    Outbound::Handoff(m.to_json().into())
}

fn reason(membership: &Membership) -> HandoffReason {
    if membership.is_draining() {
        HandoffReason::Drain
    } else {
        HandoffReason::Rebalance
    }
}

/// Follows the table until `stop`: keeps the owned-vnode gauge and hands
/// off users whose vnode moved.
pub async fn run(
    counts: Arc<Counts>,
    table: TableCache,
    membership: Arc<Membership>,
    node_id: String,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut rx = table.subscribe();
    loop {
        let current = rx.borrow_and_update().clone();
        if let Some(t) = current {
            metrics.vnodes_owned.set(t.owned_by(&node_id) as i64);
            let why = reason(&membership);
            let mut told = 0;
            // Pushed outside the counts' locks.
            for moved in counts.take_moved(&t, &node_id) {
                for c in &moved.conns {
                    c.push(reconnect(&moved.owner, t.epoch, why), &metrics);
                }
                told += moved.conns.len();
            }
            if told > 0 {
                metrics.handoffs.inc_by(told as u64);
                tracing::info!(node = %node_id, epoch = t.epoch, connections = told, reason = why.as_str(), "handing off moved users");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

/// Tells `conn` to move if `table` no longer gives `user` to `node_id`.
pub fn tell_if_moved(table: &RoutingTable, user: &UserId, node_id: &str, conn: &Conn, metrics: &Metrics) {
    if let Some(owner) = table.owner(user.as_str()).filter(|o| o.id != node_id) {
        conn.push(reconnect(owner, table.epoch, HandoffReason::Rebalance), metrics);
    }
}

/// Sends every connection `reconnect` with reason `fenced` and no URL: the
/// node may have been counted out and does not know who owns its users now,
/// so clients ask the coordinator. Returns how many were told.
pub fn tell_all_fenced(counts: &Counts, metrics: &Metrics) -> usize {
    let m = ServerMessage::Reconnect { url: String::new(), epoch: 0, reason: HandoffReason::Fenced };
    let frame: tokio_tungstenite::tungstenite::Utf8Bytes = m.to_json().into();
    let conns = counts.connections();
    for c in &conns {
        c.push(Outbound::Handoff(frame.clone()), metrics);
    }
    metrics.handoffs.inc_by(conns.len() as u64);
    conns.len()
}

/// When a handed-off connection is closed with 4011.
#[derive(Debug, Default, Clone, Copy)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// Starts the countdown (once; a second `reconnect` does not extend it).
    pub fn arm(&mut self, timeout: Duration) {
        self.0.get_or_insert(Instant::now() + timeout);
    }

    /// When the deadline passes; `None` while unarmed.
    pub fn at(self) -> Option<Instant> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counts::tests::{drain, uid};
    use presence_model::VNODES;

    #[test]
    fn a_connection_accepted_during_a_move_is_told() {
        let metrics = Metrics::new();
        let c = Conn::new(1, 4);
        let owners: Vec<Option<&str>> = vec![Some("other"); VNODES];
        let t = RoutingTable::from_owners(9, &owners, |id| format!("ws://{id}/socket"));
        tell_if_moved(&t, &uid("alice"), "other", &c, &metrics);
        assert!(drain(&c).is_empty(), "still the owner");
        tell_if_moved(&t, &uid("alice"), "me", &c, &metrics);
        assert_eq!(drain(&c), vec![r#"{"type":"reconnect","url":"ws://other/socket","epoch":9,"reason":"rebalance"}"#]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_armed_once() {
        let mut d = Deadline::default();
        assert_eq!(d.at(), None, "unarmed");
        let first = Instant::now() + Duration::from_secs(1);
        d.arm(Duration::from_secs(1));
        d.arm(Duration::from_secs(60));
        assert_eq!(d.at(), Some(first), "the second arm does not extend it");
    }
}
