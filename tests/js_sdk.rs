//! The JavaScript SDK (`client-sdk/js`) in a real browser: headless Chromium
//! loads the demo's try-it page (`/try`), which runs the SDK as built
//! (`dist/index.js`), against a running cluster. The page keeps what its
//! session saw in `window.presence` (events, statuses, count, node), which
//! the tests read.

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/harness.rs"]
mod harness;
#[path = "common/procs.rs"]
mod procs;
#[path = "common/tracked.rs"]
mod tracked;

use std::time::Duration;

use browser::{Browser, Page};
use common::*;
use presence::cluster::{Cluster, ClusterConfig};

/// Browsers are heavy on a small machine: one of these tests at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn cluster_with(nodes: usize, edit: impl FnOnce(&mut ClusterConfig)) -> Cluster {
    let mut config = ClusterConfig::for_tests(nodes, SECRET);
    edit(&mut config);
    let c = Cluster::start(config).await.expect("cluster starts");
    c.wait_settled(WAIT).await.expect("settles");
    c
}

/// The try page as `user` (and more query parameters).
async fn open_as(b: &Browser, c: &Cluster, user: &str, extra: &str) -> Page {
    let mut page = b.open(&format!("{}?user={user}{extra}", c.try_url)).await;
    page.until(&format!("{user} welcomed"), "window.presence && window.presence.nodeId !== null").await;
    page
}

/// A JavaScript condition on `user`'s latest status in the page.
fn status(user: &str, cond: &str) -> String {
    format!("(() => {{ const s = window.presence.statuses[{user:?}]; return !!s && ({cond}); }})()")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_see_each_other_come_count_and_go() {
    let _one = ONE_AT_A_TIME.lock().await;
    let c = cluster_with(2, |_| {}).await;
    let b = Browser::start().await;
    let mut ann = open_as(&b, &c, "ann", "").await;
    let ben = open_as(&b, &c, "ben", "&device=mobile").await;
    ann.until(
        "ben online with one mobile connection",
        &status("ben", "s.online && s.connections === 1 && s.devices.mobile === 1"),
    )
    .await;
    ann.until("her own count", "window.presence.count === 1").await;
    // A second tab as ann: her count is 2 in both of her tabs.
    let ann2 = open_as(&b, &c, "ann", "").await;
    ann.until("her count reaching 2", "window.presence.count === 2").await;
    ann.until("the table row", "document.querySelector('#users tr[data-user=\"ann\"] td.conns').textContent === '2'")
        .await;
    ann2.close().await;
    ann.until("her count back to 1", "window.presence.count === 1").await;
    // Closing ben's tab: ann sees him go.
    ben.close().await;
    ann.until("ben offline", &status("ben", "!s.online && s.connections === 0 && s.lastSeen > 0")).await;
    b.stop().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_sent_to_the_wrong_node_ends_on_the_right_one() {
    let _one = ONE_AT_A_TIME.lock().await;
    let c = cluster_with(3, |_| {}).await;
    let (owner_id, _) = owner(&c, "cal");
    let wrong = c.nodes.iter().find(|n| n.node.config.node_id != owner_id).expect("another node").url.clone();
    let b = Browser::start().await;
    let mut cal = open_as(&b, &c, "cal", &format!("&url={wrong}")).await;
    let node = cal.eval("window.presence.nodeId").await;
    assert_eq!(node.as_str(), Some(owner_id.as_str()), "followed the redirect to the owner");
    b.stop().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_its_node_stops_the_page_reconnects_elsewhere_and_resubscribes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut c = cluster_with(3, |_| {}).await;
    let b = Browser::start().await;
    let mut dot = open_as(&b, &c, "dot", "").await;
    let eve = open_as(&b, &c, "eve", "").await;
    dot.until("eve online", &status("eve", "s.online")).await;
    let first = dot.eval("window.presence.nodeId").await.as_str().expect("node").to_string();
    let i = c.nodes.iter().position(|n| n.node.config.node_id == first).expect("dot's node");
    c.stop_node(i).await;
    dot.until("a welcome on another node", &format!("window.presence.nodeId !== {first:?}")).await;
    dot.until("eve still seen (subscribed again)", &status("eve", "s.online")).await;
    drop(eve);
    b.stop().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_refreshes_its_token_without_reconnecting() {
    let _one = ONE_AT_A_TIME.lock().await;
    let c = cluster_with(1, |config| config.jwt_leeway_secs = Some(0)).await;
    let b = Browser::start().await;
    // Tokens of 3 s; in 7 s the page must have fetched at least two more.
    let mut fay = open_as(&b, &c, "fay", "&ttl=3").await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let tokens = fay.eval("window.presence.tokens").await.as_u64().expect("a number");
    assert!(tokens >= 3, "{tokens} tokens fetched in 7 s of 3 s tokens");
    let troubles =
        fay.eval("window.presence.events.filter((e) => e.type === 'reconnecting' || e.type === 'error').length").await;
    assert_eq!(troubles.as_u64(), Some(0), "{:?}", fay.eval("JSON.stringify(window.presence.events)").await);
    b.stop().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_moves_the_page_without_anyone_seeing_it_offline() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut c = cluster_with(2, |_| {}).await;
    let b = Browser::start().await;
    let mut gus = open_as(&b, &c, "gus", "").await;
    let mut hal = open_as(&b, &c, "hal", "").await;
    gus.until("hal online", &status("hal", "s.online")).await;
    // A node pinned to hal's vnode joins: hal's page is handed over to it.
    c.config_mut().node.pinned = vec![presence_model::vnode("hal")];
    c.add_node().await.expect("node starts");
    let new = c.nodes.last().expect("node").node.config.node_id.clone();
    hal.until("hal's page on the new node", &format!("window.presence.nodeId === {new:?}")).await;
    let handoffs = hal
        .eval("window.presence.events.filter((e) => e.type === 'reconnecting' && e.reason === 'handoff').length")
        .await;
    assert_eq!(handoffs.as_u64(), Some(1));
    // Past the old node's handoff timeout: gus never saw hal offline.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let offline = gus
        .eval("window.presence.events.filter((e) => e.type === 'status' && e.userId === 'hal' && !e.online).length")
        .await;
    assert_eq!(offline.as_u64(), Some(0), "gus saw hal offline during the handoff");
    gus.until("hal still online with one connection", &status("hal", "s.online && s.connections === 1")).await;
    b.stop().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_its_node_is_killed_the_page_reconnects_on_another() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _serial = procs::serial().await;
    // The real binaries on Redis and Kafka, and the try page pointed at their coordinator.
    let mut setup = harness::Setup::start("js-kill", 2, None).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let try_url = format!("http://{}/try", listener.local_addr().expect("addr"));
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(presence::try_page::TryPage::new(harness::SECRET, &setup.url).serve(listener, stop.clone()));
    let b = Browser::start().await;
    let mut ivy = b.open(&format!("{try_url}?user=ivy")).await;
    ivy.until("ivy welcomed", "window.presence && window.presence.nodeId !== null").await;
    let first = ivy.eval("window.presence.nodeId").await.as_str().expect("node").to_string();
    let i: usize = first.trim_start_matches("node-").parse().expect("node-N");
    setup.nodes[i - 1].0.kill9();
    ivy.until("a welcome on the other node", &format!("window.presence.nodeId !== {first:?}")).await;
    eventually("ivy counted once, on the survivor", || async {
        setup.api.status(&["ivy"]).await.is_ok_and(|v| v[0].online && v[0].connections == 1)
    })
    .await;
    stop.cancel();
    b.stop().await;
}
