//! The rules every [`Store`] must follow, as one test suite that the embedded
//! store and the Redis store (single and cluster) both run. Each check uses
//! its own user and node names, so suites can share a server.

use std::time::Duration;

use presence_model::{NodeRecord, RoutingTable, UserId, VNODES};

use crate::store::{CountUpdate, Store};

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

fn upd(s: &str, c: u32) -> CountUpdate {
    CountUpdate { user_id: uid(s), connections: c }
}

fn record(id: &str) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        url: format!("ws://{id}/socket"),
        capacity: 1,
        connections: 0,
        users: 0,
        vnode_load: vec![(1, 2)],
        pinned: vec![],
        draining: false,
        heartbeat_ms: 1,
    }
}

/// Runs every check against `store`; `tag` keeps names apart between runs.
pub async fn run_all(store: &dyn Store, tag: &str) {
    store.ping().await.expect("store answers");
    counts_sum_over_nodes_and_seq_grows(store, tag).await;
    user_ids_with_any_characters(store, tag).await;
    purge_counts_a_node_out(store, tag).await;
    table_compare_and_set_with_notice(store).await;
    lease_is_exclusive_until_expiry(store, tag).await;
    membership_expires_and_reports_fresh_registrations(store, tag).await;
}

async fn counts_sum_over_nodes_and_seq_grows(st: &dyn Store, tag: &str) {
    let u = format!("{tag}-u");
    let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
    let c1 = st.set_counts(&a, &[upd(&u, 2)], 10).await.expect("up")[0].clone().expect("changed");
    assert_eq!((c1.presence.connections, c1.previous), (2, 0));
    let c2 = st.set_counts(&b, &[upd(&u, 1)], 11).await.expect("up")[0].clone().expect("changed");
    assert_eq!((c2.presence.connections, c2.previous), (3, 2));
    assert!(c2.presence.seq > c1.presence.seq);
    // The same absolute count again changes nothing and spends no sequence number.
    assert_eq!(st.set_counts(&b, &[upd(&u, 1)], 12).await.expect("up"), vec![None]);
    let c3 = st.set_counts(&a, &[upd(&u, 0)], 13).await.expect("up")[0].clone().expect("changed");
    assert_eq!(c3.presence.connections, 1);
    assert_eq!(c3.presence.last_seen, Some(13));
    assert!(c3.presence.seq > c2.presence.seq);
    assert!(st.node_users(&a).await.expect("up").is_empty());
    assert_eq!(st.node_users(&b).await.expect("up"), vec![uid(&u)]);
    let read = st.presence(&[uid(&u), uid(&format!("{tag}-never"))]).await.expect("up");
    assert_eq!((read[0].connections, read[0].seq, read[0].last_seen), (1, c3.presence.seq, Some(13)));
    assert_eq!((read[1].connections, read[1].seq, read[1].last_seen), (0, 0, None));
    // A zero for a user the store lost (a restart without persistence) is announced anew.
    let lost = format!("{tag}-lost");
    let z = st.set_counts(&a, &[upd(&lost, 0)], 14).await.expect("up")[0]
        .clone()
        .expect("a lost record's zero is a change");
    assert_eq!((z.presence.connections, z.previous), (0, 0));
    assert!(z.presence.seq > c3.presence.seq);
    assert_eq!(st.set_counts(&a, &[upd(&lost, 0)], 15).await.expect("up"), vec![None], "but only once");
    // Batches keep their order.
    let batch: Vec<CountUpdate> = (0..50).map(|i| upd(&format!("{tag}-batch-{i}"), i % 3 + 1)).collect();
    let out = st.set_counts(&a, &batch, 20).await.expect("up");
    for (u, r) in batch.iter().zip(out) {
        let r = r.expect("changed");
        assert_eq!(r.presence.user_id, u.user_id);
        assert_eq!(r.presence.connections, u64::from(u.connections));
    }
    let zeros: Vec<CountUpdate> =
        batch.iter().map(|u| CountUpdate { user_id: u.user_id.clone(), connections: 0 }).collect();
    st.set_counts(&a, &zeros, 21).await.expect("up");
    st.set_counts(&b, &[upd(&u, 0)], 22).await.expect("up");
}

async fn user_ids_with_any_characters(st: &dyn Store, tag: &str) {
    let node = format!("{tag}-chars");
    for u in ["{brace}", "用户", "with space", "a}b{c", "🙂"] {
        let id = format!("{tag}{u}");
        let c = st.set_counts(&node, &[upd(&id, 1)], 1).await.expect("up")[0].clone().expect("changed");
        assert_eq!(c.presence.connections, 1, "{id}");
        assert_eq!(st.presence(&[uid(&id)]).await.expect("up")[0].connections, 1);
        st.set_counts(&node, &[upd(&id, 0)], 2).await.expect("up");
    }
}

async fn purge_counts_a_node_out(st: &dyn Store, tag: &str) {
    let (dead, live) = (format!("{tag}-dead"), format!("{tag}-live"));
    let (x, y) = (format!("{tag}-x"), format!("{tag}-y"));
    st.set_counts(&dead, &[upd(&x, 1), upd(&y, 3)], 1).await.expect("up");
    st.set_counts(&live, &[upd(&y, 1)], 1).await.expect("up");
    // The Redis store lists nodes by registration; register both as a node would.
    st.heartbeat(&record(&dead), Duration::from_millis(100)).await.expect("up");
    st.heartbeat(&record(&live), Duration::from_secs(30)).await.expect("up");
    let listed = st.nodes_with_presence().await.expect("up");
    assert!(listed.contains(&dead) && listed.contains(&live), "{listed:?}");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut changes = st.purge_node(&dead, 50).await.expect("up");
    changes.sort_by(|a, b| a.presence.user_id.cmp(&b.presence.user_id));
    assert_eq!(changes.len(), 2);
    assert_eq!((changes[0].presence.connections, changes[0].previous), (0, 1));
    assert_eq!((changes[1].presence.connections, changes[1].previous), (1, 4));
    assert_eq!(changes[0].presence.last_seen, Some(50));
    assert!(!st.nodes_with_presence().await.expect("up").contains(&dead));
    assert!(st.purge_node(&dead, 60).await.expect("up").is_empty(), "purge is idempotent");
    // Counting out a node that is alive after all: its next heartbeat says so.
    assert!(!st.heartbeat(&record(&live), Duration::from_secs(30)).await.expect("up"));
    st.purge_node(&live, 65).await.expect("up");
    assert!(st.heartbeat(&record(&live), Duration::from_secs(30)).await.expect("up"), "fresh after a count-out");
    assert!(!st.heartbeat(&record(&live), Duration::from_secs(30)).await.expect("up"), "only once");
    st.set_counts(&live, &[upd(&y, 1)], 66).await.expect("up");
    st.set_counts(&live, &[upd(&y, 0)], 70).await.expect("up");
    st.deregister(&live).await.expect("up");
    st.purge_node(&live, 80).await.expect("up");
}

async fn table_compare_and_set_with_notice(st: &dyn Store) {
    let mut notices = st.table_notices();
    let base = st.table_epoch().await.expect("up");
    let next = base.unwrap_or(0) + 1;
    let owners: Vec<Option<&str>> = (0..VNODES).map(|v| Some(if v % 2 == 0 { "even" } else { "odd" })).collect();
    let t = RoutingTable::from_owners(next, &owners, |id| format!("ws://{id}/socket"));
    assert!(!st.swap_table(Some(next + 100), &t).await.expect("up"), "wrong expected epoch refused");
    assert!(st.swap_table(base, &t).await.expect("up"));
    assert!(!st.swap_table(base, &t).await.expect("up"), "second CAS on the old epoch refused");
    assert_eq!(st.table_epoch().await.expect("up"), Some(next));
    assert_eq!(st.load_table().await.expect("up"), Some(t));
    tokio::time::timeout(Duration::from_secs(5), notices.wait_for(|&e| e == next))
        .await
        .expect("notice")
        .expect("open");
}

async fn lease_is_exclusive_until_expiry(st: &dyn Store, tag: &str) {
    let (c1, c2) = (format!("{tag}-c1"), format!("{tag}-c2"));
    // Another suite run may hold it; wait it out (leases here are short).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !st.acquire_lease(&c1, Duration::from_millis(300)).await.expect("up") {
        assert!(tokio::time::Instant::now() < deadline, "lease never free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!st.acquire_lease(&c2, Duration::from_millis(300)).await.expect("up"));
    assert!(st.acquire_lease(&c1, Duration::from_millis(300)).await.expect("up"), "renewal");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(st.acquire_lease(&c2, Duration::from_millis(300)).await.expect("up"), "taken over after expiry");
    st.release_lease(&c1).await.expect("up");
    assert!(
        !st.acquire_lease(&c1, Duration::from_millis(300)).await.expect("up"),
        "release by a non-holder is ignored"
    );
    st.release_lease(&c2).await.expect("up");
    assert!(st.acquire_lease(&c1, Duration::from_millis(300)).await.expect("up"));
    st.release_lease(&c1).await.expect("up");
}

async fn membership_expires_and_reports_fresh_registrations(st: &dyn Store, tag: &str) {
    let id = format!("{tag}-member");
    let rec = record(&id);
    assert!(st.heartbeat(&rec, Duration::from_millis(300)).await.expect("up"), "first registration is fresh");
    assert!(!st.heartbeat(&rec, Duration::from_millis(300)).await.expect("up"));
    let live = st.live_nodes().await.expect("up");
    assert_eq!(live.iter().find(|n| n.id == id), Some(&rec));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!st.live_nodes().await.expect("up").iter().any(|n| n.id == id));
    assert!(st.heartbeat(&rec, Duration::from_millis(300)).await.expect("up"), "fresh again after expiry");
    st.deregister(&id).await.expect("up");
    assert!(!st.live_nodes().await.expect("up").iter().any(|n| n.id == id));
    st.purge_node(&id, 1).await.expect("up");
}
