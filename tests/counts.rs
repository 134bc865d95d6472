//! Counts and status across a 3-node cluster, over real sockets.

mod common;

use common::*;
use presence_client::{ClientMessage, ServerMessage, UserId};
use presence_model::api::PresenceView;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_of_a_user_follows_its_count() {
    let c = cluster(3).await;
    let api = coordinator(&c);
    let users = users_on_every_node(&c, 2);
    assert_eq!(users.len(), 6);
    let mut conns = Vec::new();
    for u in &users {
        let mut mine = Vec::new();
        for k in 1..=3u64 {
            let (conn, welcome) = connect(&c, u).await;
            let ServerMessage::Welcome { connections, node_id, .. } = welcome else { unreachable!() };
            assert_eq!(node_id, owner(&c, u).0);
            assert!(connections >= 1);
            mine.push(conn);
            for conn in mine.iter_mut() {
                expect_count(conn, k).await;
            }
            let p = api.presence(u).await.expect("presence");
            assert_eq!((p.online, p.connections), (true, k), "presence of {u}");
        }
        conns.push(mine);
    }
    // Disconnect one at a time; the others follow the count down.
    for (u, mut mine) in users.iter().zip(conns) {
        while let Some(gone) = mine.pop() {
            gone.close().await;
            let left = mine.len() as u64;
            for conn in mine.iter_mut() {
                expect_count(conn, left).await;
            }
            eventually(&format!("presence of {u} = {left}"), || async {
                api.presence(u).await.map(|p| p.connections == left).unwrap_or(false)
            })
            .await;
        }
        let p = api.presence(u).await.expect("presence");
        assert!(!p.online);
        assert!(p.last_seen.is_some(), "lastSeen set after the last disconnect");
    }
    // The nodes report what they hold: nothing.
    let batch: Vec<&str> = users.iter().map(String::as_str).collect();
    let all = api.status(&batch).await.expect("batch status");
    assert!(all.iter().all(|p| !p.online && p.connections == 0));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_another_node_sees_status_changes() {
    let c = cluster(3).await;
    let users = users_on_every_node(&c, 1);
    let (watcher, target) = (&users[0], &users[1]);
    assert_ne!(owner(&c, watcher).0, owner(&c, target).0);
    let (mut w, _) = connect(&c, watcher).await;
    w.send(&ClientMessage::Subscribe { user_ids: vec![UserId::parse(target).expect("id")] }).await.expect("send");
    let first = expect_status(&mut w, target, 0).await;
    assert!(matches!(first, ServerMessage::Status(PresenceView { online: false, last_seen: None, .. })));

    let (t1, _) = connect(&c, target).await;
    let s = expect_status(&mut w, target, 1).await;
    assert!(matches!(s, ServerMessage::Status(PresenceView { online: true, last_seen: Some(_), .. })));
    let (t2, _) = connect(&c, target).await;
    expect_status(&mut w, target, 2).await;
    t1.close().await;
    expect_status(&mut w, target, 1).await;
    t2.close().await;
    let last = expect_status(&mut w, target, 0).await;
    assert!(matches!(last, ServerMessage::Status(PresenceView { online: false, last_seen: Some(_), .. })));

    // After unsubscribing, changes no longer arrive: a ping's pong comes first.
    w.send(&ClientMessage::Unsubscribe { user_ids: vec![UserId::parse(target).expect("id")] }).await.expect("send");
    let (t3, _) = connect(&c, target).await;
    w.send(&ClientMessage::Ping).await.expect("send");
    let next = expect(&mut w, |_| true, "any message").await;
    assert_eq!(next, ServerMessage::Pong);
    t3.close().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_to_an_online_user_reports_it_at_once() {
    let c = cluster(2).await;
    let users = users_on_every_node(&c, 1);
    let (_t, _) = connect(&c, &users[1]).await;
    let (_t2, _) = connect(&c, &users[1]).await;
    let (mut w, _) = connect(&c, &users[0]).await;
    w.send(&ClientMessage::Subscribe { user_ids: vec![UserId::parse(&users[1]).expect("id")] }).await.expect("send");
    let s = expect(&mut w, |m| matches!(m, ServerMessage::Status(PresenceView { .. })), "status").await;
    assert!(matches!(s, ServerMessage::Status(PresenceView { online: true, connections: 2, .. })), "{s:?}");
    c.shutdown().await;
}
