//! Handoff (`reconnect` in docs/protocol.md): when a vnode moves, its users' connections
//! are told where to go, and closed with 4011 after the handoff timeout.

mod common;

use common::*;
use presence_client::{Connection, ServerMessage, TokenPlacement};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_user_is_told_to_reconnect_then_closed_4011() {
    let mut c = cluster(2).await;
    let (old_owner, _) = owner(&c, "alice");
    let (mut a, _) = connect(&c, "alice").await;
    expect_count(&mut a, 1).await;

    // A node pinned to alice's vnode joins: the vnode must move to it.
    c.config_mut().node.pinned = vec![presence_model::vnode("alice")];
    c.add_node().await.expect("node starts");
    let new = c.nodes.last().expect("node").url.clone();
    let m = expect(&mut a, |m| matches!(m, ServerMessage::Reconnect { .. }), "reconnect").await;
    let ServerMessage::Reconnect { url, reason, .. } = m else { unreachable!() };
    assert_eq!((url.as_str(), reason.as_str()), (new.as_str(), "rebalance"));
    assert_ne!(owner(&c, "alice").1, old_owner);

    // Connect to the new owner first: both connections count meanwhile.
    let mut b = Connection::connect(&new, TokenPlacement::Header(token("alice"))).await.expect("connects");
    expect(&mut b, |m| matches!(m, ServerMessage::Welcome { .. }), "welcome").await;
    expect_count(&mut b, 2).await;
    // The old one is closed by the node after the handoff timeout.
    let (code, _) = expect_close(&mut a).await;
    assert_eq!(code, 4011);
    expect_count(&mut b, 1).await;
    c.shutdown().await;
}
