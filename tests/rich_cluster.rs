//! Rich presence across nodes (docs/protocol.md, "Rich presence"), on the
//! real binaries with a real Redis and the real broker: a user's devices on
//! two nodes as a watcher on a third sees them, a status set from one device
//! surviving a reconnect and a vnode handoff until it lapses, and unique users
//! counted by the store's HyperLogLogs.

mod common;
#[path = "common/harness.rs"]
mod harness;
#[path = "common/procs.rs"]
mod procs;
#[path = "common/tracked.rs"]
mod tracked;

use std::time::Duration;

use futures_util::StreamExt;

use common::status_of;
use harness::{Setup, SECRET};
use presence_client::{ClientMessage, Connection, CoordinatorClient, Frame, ServerMessage, TokenPlacement};
use presence_model::api::PresenceView;
use presence_model::{Availability, UserId};

fn token(user: &str) -> String {
    presence_model::auth::mint_hs256(SECRET.as_bytes(), user, 3600)
}

/// A user of `prefix` whose vnode `node` owns now, and that node's URL.
async fn user_on(api: &CoordinatorClient, node: &str, prefix: &str) -> (String, String) {
    for i in 0.. {
        let user = format!("{prefix}-{i}");
        let r = api.route(&user).await.expect("route");
        if r.node_id.as_deref() == Some(node) {
            return (user, r.url.expect("url"));
        }
    }
    unreachable!()
}

/// `user` on `url` (with `?device=` when given), past its welcome.
async fn connect(url: &str, user: &str, device: Option<&str>) -> Connection {
    let url = device.map_or(url.to_string(), |d| format!("{url}?device={d}"));
    let mut c = Connection::connect(&url, TokenPlacement::Header(token(user))).await.expect("connect");
    match c.next_within(Duration::from_secs(10)).await {
        Ok(Some(Frame::Message(ServerMessage::Welcome { .. }))) => c,
        other => panic!("{user}: no welcome: {other:?}"),
    }
}

/// The devices of a status as (label, connections).
fn devices(m: &ServerMessage) -> Vec<(String, u64)> {
    match m {
        ServerMessage::Status(PresenceView { devices, .. }) => {
            devices.iter().map(|(d, n)| (d.to_string(), n)).collect()
        }
        _ => Vec::new(),
    }
}

fn pairs(v: &[(&str, u64)]) -> Vec<(String, u64)> {
    v.iter().map(|(d, n)| (d.to_string(), *n)).collect()
}

/// Waits until the coordinator routes `user` to `node`; its URL.
async fn routed_to(api: &CoordinatorClient, user: &str, node: &str) -> String {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        if let Ok(r) = api.route(user).await {
            if r.node_id.as_deref() == Some(node) {
                return r.url.expect("url");
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{user} never routed to {node}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_a_third_node_sees_the_exact_devices_of_a_user_on_two_nodes() {
    let _serial = procs::serial().await;
    // node-1 keeps handed-off connections open for a long time, so the user
    // has a connection there and one on the vnode's new owner at once.
    let mut setup =
        Setup::start_with("rich-devices", &[("node-1", &[("HANDOFF_TIMEOUT_MS", "60000")]), ("node-2", &[])]).await;
    let (sh, api) = (&setup.sh, &setup.api);
    let (user, url1) = user_on(api, "node-1", "devices").await;
    let (watcher, url2) = user_on(api, "node-2", "devices-watcher").await;
    let mut w = connect(&url2, &watcher, None).await;
    w.send(&ClientMessage::Subscribe { user_ids: vec![UserId::parse(&user).expect("id")] }).await.expect("send");
    status_of(&mut w, &user, |m| devices(m).is_empty(), "the offline snapshot").await;

    let web = connect(&url1, &user, Some("web")).await;
    let s =
        status_of(&mut w, &user, |m| matches!(m, ServerMessage::Status(PresenceView { connections: 1, .. })), "web")
            .await;
    assert_eq!(devices(&s), pairs(&[("web", 1)]));

    // node-3 joins pinned to the user's vnode: the user moves there.
    let pin = presence_model::vnode(&user).to_string();
    setup.nodes.push(sh.node_with("node-3", &[("ASSIGNED_VNODES", &pin)]));
    let url3 = routed_to(api, &user, "node-3").await;
    let mobile = connect(&url3, &user, Some("mobile")).await;
    let s = status_of(
        &mut w,
        &user,
        |m| matches!(m, ServerMessage::Status(PresenceView { connections: 2, .. })),
        "web + mobile",
    )
    .await;
    assert_eq!(devices(&s), pairs(&[("mobile", 1), ("web", 1)]), "{s:?}");
    let tablet = connect(&url3, &user, Some("tablet")).await;
    let s =
        status_of(&mut w, &user, |m| matches!(m, ServerMessage::Status(PresenceView { connections: 3, .. })), "three")
            .await;
    assert_eq!(devices(&s), pairs(&[("mobile", 1), ("tablet", 1), ("web", 1)]));

    web.close().await;
    let s = status_of(
        &mut w,
        &user,
        |m| matches!(m, ServerMessage::Status(PresenceView { connections: 2, .. })),
        "web gone",
    )
    .await;
    assert_eq!(devices(&s), pairs(&[("mobile", 1), ("tablet", 1)]));
    tablet.close().await;
    let s = status_of(
        &mut w,
        &user,
        |m| matches!(m, ServerMessage::Status(PresenceView { connections: 1, .. })),
        "tablet gone",
    )
    .await;
    assert_eq!(devices(&s), pairs(&[("mobile", 1)]));
    mobile.close().await;
    let s =
        status_of(&mut w, &user, |m| matches!(m, ServerMessage::Status(PresenceView { online: false, .. })), "offline")
            .await;
    assert!(devices(&s).is_empty(), "{s:?}");
    let view = api.status(&[&user]).await.expect("presence").remove(0);
    assert!(!view.online && view.devices.is_empty(), "{view:?}");
    drop(setup);
}

fn busy(m: &ServerMessage) -> bool {
    matches!(m, ServerMessage::Status(PresenceView { availability: Availability::Busy, status_text: Some(t), .. }) if t == "In a meeting")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_reaches_every_device_and_watcher_survives_moves_and_lapses() {
    let _serial = procs::serial().await;
    let mut setup = Setup::start("rich-status", 2, None).await;
    let (sh, api) = (&setup.sh, &setup.api);
    let (user, url1) = user_on(api, "node-1", "status").await;
    let (watcher, url2) = user_on(api, "node-2", "status-watcher").await;
    let me = UserId::parse(&user).expect("id");
    let mut w = connect(&url2, &watcher, None).await;
    let mut phone = connect(&url1, &user, Some("mobile")).await;
    let mut desktop = connect(&url1, &user, Some("desktop")).await;
    w.send(&ClientMessage::Subscribe { user_ids: vec![me.clone()] }).await.expect("send");
    desktop.send(&ClientMessage::Subscribe { user_ids: vec![me.clone()] }).await.expect("send");
    status_of(&mut w, &user, |m| matches!(m, ServerMessage::Status(PresenceView { connections: 2, .. })), "snapshot")
        .await;

    let set_at = presence_model::time::now_ms();
    // Long enough for the reconnect and the move below, short enough to wait for.
    let lapse = Duration::from_secs(8);
    phone
        .send(&ClientMessage::SetStatus {
            availability: Availability::Busy,
            text: Some("In a meeting".into()),
            expires_in_ms: Some(lapse.as_millis() as u64),
        })
        .await
        .expect("send");
    let seen = status_of(&mut w, &user, busy, "busy at the watcher").await;
    let ServerMessage::Status(PresenceView { status_expires_at: Some(at), .. }) = seen else { panic!("{seen:?}") };
    assert!(at >= set_at + lapse.as_millis() as u64 - 1000, "{at} vs {set_at}");
    status_of(&mut desktop, &user, busy, "busy on the user's other device").await;

    // The user reconnects: still busy.
    phone.close().await;
    desktop.close().await;
    status_of(&mut w, &user, |m| matches!(m, ServerMessage::Status(PresenceView { online: false, .. })), "offline")
        .await;
    let mut phone = connect(&url1, &user, Some("mobile")).await;
    let back =
        status_of(&mut w, &user, |m| matches!(m, ServerMessage::Status(PresenceView { online: true, .. })), "back")
            .await;
    assert!(busy(&back), "the status survived the reconnect: {back:?}");

    // The vnode moves to a new node: the user follows, still busy.
    let pin = presence_model::vnode(&user).to_string();
    setup.nodes.push(sh.node_with("node-3", &[("ASSIGNED_VNODES", &pin)]));
    common::expect(&mut phone, |m| matches!(m, ServerMessage::Reconnect { .. }), "reconnect").await;
    let url3 = routed_to(api, &user, "node-3").await;
    let mut moved = connect(&url3, &user, Some("mobile")).await;
    phone.close().await;
    moved.send(&ClientMessage::Subscribe { user_ids: vec![me.clone()] }).await.expect("send");
    let after_move = status_of(&mut moved, &user, |_| true, "own snapshot on the new node").await;
    assert!(busy(&after_move), "the status survived the handoff: {after_move:?}");
    let view = api.status(&[&user]).await.expect("presence").remove(0);
    assert_eq!((view.availability, view.status_text.as_deref()), (Availability::Busy, Some("In a meeting")));

    // It lapses: watchers and the user hear `available`, without text.
    let lapsed = |m: &ServerMessage| {
        matches!(
            m,
            ServerMessage::Status(PresenceView {
                availability: Availability::Available,
                status_text: None,
                online: true,
                ..
            })
        )
    };
    let gone = status_of(&mut w, &user, lapsed, "available again at the watcher").await;
    assert!(presence_model::time::now_ms() >= at, "not before its expiry: {gone:?}");
    status_of(&mut moved, &user, lapsed, "available again on the user's device").await;
    drop(setup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_distinct_users_are_counted_within_two_percent() {
    let _serial = procs::serial().await;
    let setup = Setup::start("rich-unique", 2, None).await;
    let api = &setup.api;
    let route: Vec<(String, String)> = {
        let table: serde_json::Value = api.ring().await.expect("ring");
        let urls: Vec<String> = table["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| n["url"].as_str().unwrap_or("").to_string())
            .collect();
        let owners = table["owners"].as_array().expect("owners").clone();
        (0..10_000)
            .map(|i| {
                let user = format!("unique-{i}");
                let owner = owners[presence_model::vnode(&user) as usize].as_u64().expect("owned") as usize;
                (user, urls[owner].clone())
            })
            .collect()
    };
    let started = presence_model::time::now_ms();
    // Connect and leave, 64 at a time, each user once (and the first thousand twice).
    let all: Vec<(String, String)> = route.iter().cloned().chain(route.iter().take(1000).cloned()).collect();
    futures_util::stream::iter(all)
        .for_each_concurrent(64, |(user, url)| async move {
            connect(&url, &user, None).await.close().await;
        })
        .await;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let stats = api.stats().await.expect("stats");
        // (Unless the UTC hour turned meanwhile: then this hour saw only some of them.)
        let same_hour =
            presence_backend::periods(started).0 == presence_backend::periods(presence_model::time::now_ms()).0;
        let hour_ok = !same_hour || stats.unique_users_hour.abs_diff(10_000) <= 200;
        if stats.unique_users_day.abs_diff(10_000) <= 200 && hour_ok {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not within 2% of 10,000: {stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = api.stats().await.expect("stats");
    assert!(stats.peak_connections_day >= 1, "{stats:?}");
    drop(setup);
}
