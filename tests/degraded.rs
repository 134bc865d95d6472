//! Degraded modes on the embedded store (the same logic runs on Redis; the
//! process tests repeat the outage with a real redis-server).

mod common;

use std::sync::Arc;

use common::*;
use presence::cluster::{Cluster, ClusterConfig};
use presence_backend::{MemoryBus, MemoryStore};

async fn cluster_on(store: &MemoryStore, nodes: usize) -> Cluster {
    let c = Cluster::start_on(
        ClusterConfig::for_tests(nodes, SECRET),
        Arc::new(store.clone()),
        Arc::new(MemoryBus::default()),
    )
    .await
    .expect("starts");
    c.wait_settled(WAIT).await.expect("settles");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_survive_a_store_outage_that_loses_everything() {
    let store = MemoryStore::new();
    let c = cluster_on(&store, 2).await;
    let api = coordinator(&c);
    let (mut a1, _) = connect(&c, "alice").await;
    let (mut a2, _) = connect(&c, "alice").await;
    let (a3, _) = connect(&c, "alice").await;
    expect_count(&mut a1, 3).await;
    expect_count(&mut a2, 3).await;

    store.set_down(true);
    a3.close().await;
    let (b1, _) = connect(&c, "bob").await;
    // Routing goes on from the cache, marked stale.
    eventually("route marked stale", || async { api.route("carol").await.is_ok_and(|r| r.stale) }).await;
    store.wipe();
    store.set_down(false);

    expect_count(&mut a1, 2).await;
    expect_count(&mut a2, 2).await;
    eventually("presence back to the truth", || async {
        let s = api.status(&["alice", "bob"]).await;
        s.is_ok_and(|s| s[0].connections == 2 && s[1].connections == 1)
    })
    .await;
    eventually("table written back", || async { api.route("carol").await.is_ok_and(|r| !r.stale) }).await;
    b1.close().await;
    c.shutdown().await;
}

/// A connection that arrives while the store is away learns the count from its
/// `welcome` (an estimate); when the authoritative total comes back equal to
/// what the older connections were last told, the newcomer must still hear it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_welcomed_during_an_outage_gets_the_authoritative_count() {
    let store = MemoryStore::new();
    let c = cluster_on(&store, 1).await;
    let (a1, _) = connect(&c, "alice").await;
    let (mut a2, _) = connect(&c, "alice").await;
    expect_count(&mut a2, 2).await;

    store.set_down(true);
    let (mut a3, welcome) = connect(&c, "alice").await;
    assert!(matches!(welcome, presence_client::ServerMessage::Welcome { connections: 3, .. }), "{welcome:?}");
    a1.close().await;
    store.set_down(false);

    expect_count(&mut a3, 2).await;
    c.shutdown().await;
}
