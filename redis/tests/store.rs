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
