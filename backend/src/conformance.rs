//! The rules every [`Store`] must follow, as one test suite that the embedded
//! store and the Redis store (single and cluster) both run. Each check uses
//! its own user and node names, so suites can share a server.

use std::time::Duration;

use presence_model::{EventReason, NodeRecord, RoutingTable, UserId, VNODES};

use crate::store::{CountUpdate, Registration, Store, StoreError};

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

fn upd(s: &str, c: u32) -> CountUpdate {
    CountUpdate::new(uid(s), c)
}

fn record(id: &str) -> NodeRecord {
    run(id, "run-1")
}

fn run(id: &str, run_id: &str) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        run_id: run_id.into(),
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
    a_batch_answers_each_update_in_order(store, tag).await;
    offline_reasons_are_kept(store, tag).await;
    user_ids_with_any_characters(store, tag).await;
    live_feeds_carry_followed_changes(store, tag).await;
    devices_and_idleness_sum_over_nodes(store, tag).await;
    statuses_are_kept_and_cleared_at_their_expiry(store, tag).await;
    unique_users_and_the_peak_are_counted(store, tag).await;
    // The lease-holding checks share the store's one lease: one at a time.
    purge_counts_a_node_out(store, tag).await;
    table_compare_and_set_with_notice(store, tag).await;
    lease_is_exclusive_until_expiry(store, tag).await;
    membership_expires_and_reports_fresh_registrations(store, tag).await;
    a_restart_under_the_same_id_is_reported(store, tag).await;
}

/// A node's share: `active` of its connections not idle, the rest idle since `idle_since`.
fn share(devices: &[(&str, u64)], active: u32, idle_since: Option<u64>) -> presence_model::Share {
    let mut s = presence_model::Share { active, idle_since, ..Default::default() };
    for (d, n) in devices {
        s.devices.add(&presence_model::Device::parse(d).expect("valid"), *n);
    }
    s
}

async fn devices_and_idleness_sum_over_nodes(st: &dyn Store, tag: &str) {
    let u = uid(&format!("{tag}-devices"));
    let (a, b) = (format!("{tag}-dev-a"), format!("{tag}-dev-b"));
    // One node alone, its only connection idle: its share is the sum.
    let idle_web = CountUpdate { share: share(&[("web", 1)], 0, Some(50)), ..CountUpdate::new(u.clone(), 1) };
    let alone = st.set_counts(&a, &[idle_web], 9).await.expect("up")[0].clone().expect("a change");
    assert_eq!((alone.presence.devices.get("web"), alone.presence.idle_since), (1, Some(50)));
    let web = CountUpdate { share: share(&[("web", 1)], 1, None), ..CountUpdate::new(u.clone(), 1) };
    let first = st.set_counts(&a, std::slice::from_ref(&web), 10).await.expect("up")[0].clone().expect("a change");
    assert_eq!((first.presence.devices.get("web"), first.presence.idle_since), (1, None));
    assert_eq!(first.previous, 1, "the count stayed; the share changed");
    assert!(st.set_counts(&a, &[web], 11).await.expect("up")[0].is_none(), "the same share is no change");
    let phones = CountUpdate { share: share(&[("mobile", 2)], 0, Some(100)), ..CountUpdate::new(u.clone(), 2) };
    let both = st.set_counts(&b, &[phones], 12).await.expect("up")[0].clone().expect("a change");
    let p = &both.presence;
    assert_eq!((p.connections, p.devices.get("web"), p.devices.get("mobile")), (3, 1, 2));
    assert_eq!(p.idle_since, None, "one connection is still active");
    // The web connection goes idle too: the count stays, the share changes.
    let idle_web = CountUpdate { share: share(&[("web", 1)], 0, Some(200)), ..CountUpdate::new(u.clone(), 1) };
    let idle = st.set_counts(&a, &[idle_web], 13).await.expect("up")[0].clone().expect("a change");
    assert_eq!((idle.previous, idle.presence.connections), (3, 3));
    assert_eq!(idle.presence.idle_since, Some(200), "idle since the last connection went idle");
    assert!(idle.presence.seq > both.presence.seq);
    // What the write answered is what a read says.
    let read = st.presence(std::slice::from_ref(&u)).await.expect("up").remove(0);
    assert_eq!(read.devices, idle.presence.devices);
    assert_eq!((read.idle_since, read.seq), (Some(200), idle.presence.seq));
    st.set_counts(&a, &[upd(u.as_str(), 0)], 14).await.expect("up");
    st.set_counts(&b, &[upd(u.as_str(), 0)], 15).await.expect("up");
    let gone = st.presence(std::slice::from_ref(&u)).await.expect("up").remove(0);
    assert!(gone.devices.is_empty() && gone.idle_since.is_none(), "{gone:?}");
}

async fn statuses_are_kept_and_cleared_at_their_expiry(st: &dyn Store, tag: &str) {
    use presence_model::{Availability, UserStatus};
    let u = uid(&format!("{tag}-status"));
    let node = format!("{tag}-status-node");
    st.set_counts(&node, &[upd(u.as_str(), 1)], 10).await.expect("up");
    let now = presence_model::time::now_ms();
    let busy = UserStatus {
        availability: Availability::Busy,
        text: Some("In a meeting".into()),
        expires_at: Some(now + 60_000),
        invisible_since: None,
    };
    let set = st.set_status(&u, Some(busy.clone()), None, now).await.expect("up").expect("set");
    assert_eq!(set.presence.status.as_deref(), Some(&busy));
    assert_eq!((set.previous, set.presence.connections), (1, 1));
    // A count change keeps it; a read shows it.
    st.set_counts(&node, &[upd(u.as_str(), 2)], 11).await.expect("up");
    let read = st.presence(std::slice::from_ref(&u)).await.expect("up").remove(0);
    assert_eq!(read.status.as_deref(), Some(&busy));
    // An expiry clear for another expiry does nothing; for this one, it clears.
    assert!(st.set_status(&u, None, Some(now + 1), now).await.expect("up").is_none());
    let cleared = st.set_status(&u, None, busy.expires_at, now).await.expect("up").expect("cleared");
    assert_eq!(cleared.presence.status, None);
    assert!(cleared.presence.seq > set.presence.seq);
    // Invisible since the first of consecutive invisible settings.
    let invisible = UserStatus { availability: Availability::Invisible, ..Default::default() };
    let first = st.set_status(&u, Some(invisible.clone()), None, now).await.expect("up").expect("set");
    assert_eq!(first.presence.status.as_ref().and_then(|s| s.invisible_since), Some(now));
    let again = st.set_status(&u, Some(invisible), None, now + 500).await.expect("up").expect("set");
    assert_eq!(again.presence.status.as_ref().and_then(|s| s.invisible_since), Some(now));
    let read = st.presence(std::slice::from_ref(&u)).await.expect("up").remove(0);
    assert_eq!(read.status.as_ref().and_then(|s| s.invisible_since), Some(now));
    let back = st.set_status(&u, None, None, now + 600).await.expect("up").expect("cleared");
    assert_eq!(back.presence.status, None);
    st.set_counts(&node, &[upd(u.as_str(), 0)], 12).await.expect("up");
}

async fn unique_users_and_the_peak_are_counted(st: &dyn Store, tag: &str) {
    // An hour of its own, long ago, so that runs sharing a server do not meet.
    let hour = 400_000 + presence_model::time::now_us() % 10_000;
    let now = hour * 3_600_000 + 1_000;
    let users: Vec<UserId> = (0..10_000).map(|i| uid(&format!("{tag}-uniq-{i}"))).collect();
    for chunk in users.chunks(1000) {
        st.record_seen(chunk, now).await.expect("up");
    }
    // Seen again: still one each.
    st.record_seen(&users[..1000], now + 1).await.expect("up");
    st.record_peak(70, now).await.expect("up");
    st.record_peak(50, now).await.expect("up");
    let a = st.activity(now).await.expect("up");
    for (what, got) in [("hour", a.unique_users_hour), ("day", a.unique_users_day)] {
        assert!(got.abs_diff(10_000) <= 200, "unique users this {what}: {got} (10,000 within 2%)");
    }
    assert_eq!(a.peak_connections_day, 70);
    let next_hour = st.activity(now + 3_600_000).await.expect("up");
    assert_eq!(next_hour.unique_users_hour, 0, "a new hour starts empty");
}

/// Takes the store's leader lease for `holder` (waiting out another suite's).
async fn lead(st: &dyn Store, holder: &str, ttl: Duration) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !st.acquire_lease(holder, ttl).await.expect("up") {
        assert!(tokio::time::Instant::now() < deadline, "lease never free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next live message within a few seconds.
async fn next_live(rx: &mut tokio::sync::mpsc::Receiver<crate::Live>) -> crate::Live {
    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("a live message in time").expect("feed open")
}

async fn live_feeds_carry_followed_changes(st: &dyn Store, tag: &str) {
    let (followed, other, node) = (format!("{tag}-live-a"), format!("{tag}-live-b"), format!("{tag}-live-node"));
    let (a, mut a_rx) = st.live_feed().await.expect("feed");
    let (b, mut b_rx) = st.live_feed().await.expect("feed");
    a.follow(&[uid(&followed)]).await.expect("follow");
    b.follow(&[uid(&other)]).await.expect("follow");
    // The change as the store wrote it, on the follower's feed only.
    let c = st.set_counts(&node, &[upd(&followed, 2), upd(&other, 1)], 1).await.expect("up");
    let want = c[0].clone().expect("changed").presence;
    assert_eq!(next_live(&mut a_rx).await, crate::Live::Change(want.clone()));
    let theirs = next_live(&mut b_rx).await;
    assert!(matches!(&theirs, crate::Live::Change(p) if p.user_id == uid(&other)), "{theirs:?}");
    // An offline change carries its reason and lastSeen; seq only grows.
    let gone = CountUpdate { reason: Some(EventReason::Closed), ..upd(&followed, 0) };
    st.set_counts(&node, &[gone], 5).await.expect("up");
    let crate::Live::Change(off) = next_live(&mut a_rx).await else { panic!("a change") };
    assert_eq!((off.connections, off.last_seen, off.reason), (0, Some(5), Some(EventReason::Closed)));
    assert!(off.seq > want.seq);
    // Unfollowed: nothing more arrives (checked after a later followed change).
    a.unfollow(&[uid(&followed)]).await.expect("unfollow");
    a.follow(&[uid(&other)]).await.expect("follow");
    st.set_counts(&node, &[upd(&followed, 1)], 6).await.expect("up");
    st.set_counts(&node, &[upd(&other, 0)], 7).await.expect("up");
    let next = next_live(&mut a_rx).await;
    assert!(matches!(&next, crate::Live::Change(p) if p.user_id == uid(&other)), "unfollowed user delivered: {next:?}");
    st.set_counts(&node, &[upd(&followed, 0)], 8).await.expect("up");
}

/// A batch (the writer's, a count-out's) answers each update in its place:
/// no change where there was none, the change of the right user elsewhere.
async fn a_batch_answers_each_update_in_order(st: &dyn Store, tag: &str) {
    let node = format!("{tag}-batch-node");
    let users: Vec<String> = (0..40).map(|i| format!("{tag}-batch-{i}")).collect();
    // Every other user already at 1: writing 1 again changes nothing.
    let before: Vec<CountUpdate> = users.iter().step_by(2).map(|u| upd(u, 1)).collect();
    st.set_counts(&node, &before, 1).await.expect("up");
    let answers = st.set_counts(&node, &users.iter().map(|u| upd(u, 1)).collect::<Vec<_>>(), 2).await.expect("up");
    assert_eq!(answers.len(), users.len(), "one answer per update");
    for (i, (u, a)) in users.iter().zip(&answers).enumerate() {
        match a {
            None => assert_eq!(i % 2, 0, "{u} changed from 0 to 1, yet no change was answered"),
            Some(c) => {
                assert_eq!(i % 2, 1, "{u} was already at 1, yet a change was answered");
                assert_eq!((c.presence.user_id.as_str(), c.presence.connections, c.previous), (u.as_str(), 1, 0));
            }
        }
    }
    let gone: Vec<CountUpdate> = users.iter().map(|u| upd(u, 0)).collect();
    let answers = st.set_counts(&node, &gone, 3).await.expect("up");
    for (u, a) in users.iter().zip(&answers) {
        let c = a.as_ref().unwrap_or_else(|| panic!("{u} went from 1 to 0, yet no change was answered"));
        assert_eq!((c.presence.user_id.as_str(), c.presence.connections, c.previous), (u.as_str(), 0, 1));
    }
}

async fn offline_reasons_are_kept(st: &dyn Store, tag: &str) {
    let (u, a) = (format!("{tag}-why"), format!("{tag}-why-node"));
    st.set_counts(&a, &[upd(&u, 1)], 1).await.expect("up");
    let gone = CountUpdate { reason: Some(EventReason::Timeout), ..upd(&u, 0) };
    let c = st.set_counts(&a, &[gone], 2).await.expect("up")[0].clone().expect("changed");
    assert_eq!(c.presence.reason, Some(EventReason::Timeout));
    assert_eq!(st.presence(&[uid(&u)]).await.expect("up")[0].reason, Some(EventReason::Timeout));
    let back = st.set_counts(&a, &[upd(&u, 1)], 3).await.expect("up")[0].clone().expect("changed");
    assert_eq!(back.presence.reason, None, "no offline reason while online");
    assert_eq!(st.presence(&[uid(&u)]).await.expect("up")[0].reason, None);
    st.set_counts(&a, &[upd(&u, 0)], 4).await.expect("up");
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
    assert!(st.node_counts(&a).await.expect("up").is_empty());
    assert_eq!(st.node_counts(&b).await.expect("up"), vec![(uid(&u), 1)]);
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
    let zeros: Vec<CountUpdate> = batch.iter().map(|u| CountUpdate::new(u.user_id.clone(), 0)).collect();
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
    let (leader, other) = (format!("{tag}-purger"), format!("{tag}-usurper"));
    lead(st, &leader, Duration::from_secs(30)).await;
    assert!(
        matches!(st.purge_node(&dead, 50, &other).await, Err(StoreError::NotLeader(_))),
        "a count-out by a coordinator that does not hold the lease is refused"
    );
    assert_eq!(st.node_counts(&dead).await.expect("up").len(), 2, "and changed nothing");
    let mut changes = st.purge_node(&dead, 50, &leader).await.expect("up");
    changes.sort_by(|a, b| a.presence.user_id.cmp(&b.presence.user_id));
    assert_eq!(changes.len(), 2);
    assert_eq!((changes[0].presence.connections, changes[0].previous), (0, 1));
    assert_eq!((changes[1].presence.connections, changes[1].previous), (1, 4));
    assert_eq!(changes[0].presence.last_seen, Some(50));
    assert_eq!(changes[0].presence.reason, Some(EventReason::NodeLost));
    assert!(!st.nodes_with_presence().await.expect("up").contains(&dead));
    assert!(st.purge_node(&dead, 60, &leader).await.expect("up").is_empty(), "purge is idempotent");
    // A registered node is not counted out, whatever the caller thinks.
    assert!(st.purge_node(&live, 61, &leader).await.expect("up").is_empty());
    assert_eq!(st.node_counts(&live).await.expect("up"), vec![(uid(&y), 1)]);
    // Counting out a node that is alive after all (its key expired meanwhile): its next heartbeat says so.
    st.heartbeat(&record(&live), Duration::from_millis(50)).await.expect("up");
    tokio::time::sleep(Duration::from_millis(100)).await;
    st.purge_node(&live, 65, &leader).await.expect("up");
    assert_eq!(st.heartbeat(&record(&live), Duration::from_secs(30)).await.expect("up"), Registration::Fresh);
    assert_eq!(st.heartbeat(&record(&live), Duration::from_secs(30)).await.expect("up"), Registration::Renewed);
    st.set_counts(&live, &[upd(&y, 1)], 66).await.expect("up");
    st.set_counts(&live, &[upd(&y, 0)], 70).await.expect("up");
    st.deregister(&live).await.expect("up");
    st.purge_node(&live, 80, &leader).await.expect("up");
    st.release_lease(&leader).await.expect("up");
}

async fn table_compare_and_set_with_notice(st: &dyn Store, tag: &str) {
    let mut notices = st.table_notices();
    let base = st.table_version().await.expect("up").map(|v| v.epoch);
    let next = base.unwrap_or(0) + 1;
    let owners: Vec<Option<&str>> = (0..VNODES).map(|v| Some(if v % 2 == 0 { "even" } else { "odd" })).collect();
    let t = RoutingTable::from_owners(next, &owners, |id| format!("ws://{id}/socket")).in_generation(tag);
    assert!(!st.swap_table(Some(next + 100), &t, None).await.expect("up"), "wrong expected epoch refused");
    let leader = format!("{tag}-table-leader");
    lead(st, &leader, Duration::from_secs(30)).await;
    assert!(
        matches!(st.swap_table(base, &t, Some("someone-else")).await, Err(StoreError::NotLeader(_))),
        "a table write by a coordinator that does not hold the lease is refused"
    );
    assert!(st.swap_table(base, &t, Some(&leader)).await.expect("up"));
    st.release_lease(&leader).await.expect("up");
    assert!(!st.swap_table(base, &t, None).await.expect("up"), "second CAS on the old epoch refused");
    assert_eq!(st.table_version().await.expect("up"), Some(t.version()));
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
    let ttl = Duration::from_millis(300);
    assert_eq!(st.heartbeat(&rec, ttl).await.expect("up"), Registration::Fresh, "first registration is fresh");
    assert_eq!(st.heartbeat(&rec, ttl).await.expect("up"), Registration::Renewed);
    let live = st.live_nodes().await.expect("up");
    assert_eq!(live.iter().find(|n| n.id == id), Some(&rec));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!st.live_nodes().await.expect("up").iter().any(|n| n.id == id));
    assert_eq!(st.heartbeat(&rec, ttl).await.expect("up"), Registration::Fresh, "fresh again after expiry");
    st.deregister(&id).await.expect("up");
    assert!(!st.live_nodes().await.expect("up").iter().any(|n| n.id == id));
}

async fn a_restart_under_the_same_id_is_reported(st: &dyn Store, tag: &str) {
    let id = format!("{tag}-restarting");
    let ttl = Duration::from_secs(30);
    assert_eq!(st.heartbeat(&run(&id, "first"), ttl).await.expect("up"), Registration::Fresh);
    st.set_counts(&id, &[upd(&format!("{tag}-r1"), 2), upd(&format!("{tag}-r2"), 1)], 1).await.expect("up");
    // Killed and started again at once: the registration of the first run is still alive.
    assert_eq!(st.heartbeat(&run(&id, "second"), ttl).await.expect("up"), Registration::Restarted);
    assert_eq!(st.heartbeat(&run(&id, "second"), ttl).await.expect("up"), Registration::Renewed);
    let mut left = st.node_counts(&id).await.expect("up");
    left.sort();
    assert_eq!(
        left,
        vec![(uid(&format!("{tag}-r1")), 2), (uid(&format!("{tag}-r2")), 1)],
        "what the new run must zero"
    );
    let zeros: Vec<CountUpdate> = left.into_iter().map(|(u, _)| CountUpdate::new(u, 0)).collect();
    st.set_counts(&id, &zeros, 2).await.expect("up");
    st.deregister(&id).await.expect("up");
}
