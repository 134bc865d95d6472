//! The store rules (`presence_backend::conformance`) on a real Redis and a
//! real 3-master Redis Cluster, both started by `scripts/test`.

use presence_redis::{connect, RedisConfig};

fn env_or_fail(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through ./scripts/test, which starts Redis and sets it")
    })
}

fn tag() -> String {
    format!("t{}", presence_model::time::now_us())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_redis_follows_the_store_rules() {
    let mut config = RedisConfig::parse(&env_or_fail("REDIS_URL"));
    // A prefix of its own: the table and lease checks do not meet other tests' keys.
    config.prefix = tag();
    let store = connect(&config).await.expect("connects");
    assert_eq!(store.kind(), "redis");
    presence_backend::conformance::run_all(store.as_ref(), &tag()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_follows_the_store_rules() {
    let mut config = RedisConfig::parse(&env_or_fail("REDIS_CLUSTER_URLS"));
    assert!(config.cluster, "REDIS_CLUSTER_URLS should list the cluster's nodes, comma-separated");
    config.prefix = tag();
    let store = connect(&config).await.expect("connects to the cluster");
    assert_eq!(store.kind(), "redis-cluster");
    presence_backend::conformance::run_all(store.as_ref(), &tag()).await;
}

/// A server that forgot the scripts (restarted, `SCRIPT FLUSH`) refuses a
/// pipelined batch with NOSCRIPT; the store loads the script and sends the
/// batch again, and the batch is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_survives_a_flushed_script_cache() {
    use presence_backend::CountUpdate;
    use presence_model::UserId;
    let url = env_or_fail("REDIS_URL");
    let mut config = RedisConfig::parse(&url);
    let prefix = tag();
    config.prefix = prefix.clone();
    let store = connect(&config).await.expect("connects");
    let users: Vec<UserId> = (0..20).map(|i| UserId::parse(&format!("{prefix}-u{i}")).expect("valid")).collect();
    let ups = |n: u32| users.iter().map(|u| CountUpdate::new(u.clone(), n)).collect::<Vec<_>>();
    store.set_counts("flush-node", &ups(1), 1).await.expect("first batch");
    let mut raw = redis::Client::open(url).expect("url").get_multiplexed_async_connection().await.expect("raw");
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut raw).await.expect("SCRIPT FLUSH");
    let answers = store.set_counts("flush-node", &ups(2), 2).await.expect("the batch after the flush");
    assert!(answers.iter().all(|a| a.as_ref().is_some_and(|c| c.presence.connections == 2)), "{answers:?}");
    let stored = store.presence(&users).await.expect("read");
    assert!(stored.iter().all(|p| p.connections == 2), "{stored:?}");
    store.set_counts("flush-node", &ups(0), 3).await.expect("cleared");
}
