//! What Redis holds per online user and per followed user, read from
//! `INFO memory` around writes made through the product's own store, for the
//! sizing in `docs/operations.md`.

use std::time::Duration;

use presence_backend::CountUpdate;
use presence_model::UserId;

/// `used_memory` of the Redis at `url`, in bytes.
async fn used_memory(url: &str) -> anyhow::Result<u64> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await?;
    let line =
        info.lines().find_map(|l| l.strip_prefix("used_memory:")).ok_or_else(|| anyhow::anyhow!("no used_memory"))?;
    Ok(line.trim().parse()?)
}

/// Writes `users` online users (one connection each, one node) and follows
/// as many on one live feed; prints the growth per user of each.
pub async fn run(url: &str, users: usize) -> anyhow::Result<()> {
    let prefix = format!("bench-mem-{}", std::process::id());
    let backends = presence_runtime::backends::connect(&presence_runtime::backends::BackendConfig {
        redis_url: Some(url.to_string()),
        redis_prefix: Some(prefix),
        client_id: "bench-mem".into(),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    let store = backends.store;
    let ids: Vec<UserId> = (0..users).map(|i| UserId::parse(&format!("user-{i:08}"))).collect::<Result<_, _>>()?;
    let before = used_memory(url).await?;
    for chunk in ids.chunks(512) {
        let updates: Vec<CountUpdate> = chunk.iter().map(|u| CountUpdate::new(u.clone(), 1)).collect();
        store.set_counts("bench-node", &updates, presence_model::time::now_ms()).await?;
    }
    let online = used_memory(url).await?;
    let (feed, _rx) = store.live_feed().await?;
    for chunk in ids.chunks(512) {
        feed.follow(chunk).await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let followed = used_memory(url).await?;
    println!("Redis memory (INFO used_memory) for {users} users, one node, through the product's store:");
    println!("  per online user (presence hash, the node's vnode set):  {:>6.0} bytes", per(online, before, users));
    println!("  per followed user and node (a pub/sub subscription):    {:>6.0} bytes", per(followed, online, users));
    // Offline again: the records then expire after the retention (lastSeen kept meanwhile).
    for chunk in ids.chunks(512) {
        let updates: Vec<CountUpdate> = chunk.iter().map(|u| CountUpdate::new(u.clone(), 0)).collect();
        store.set_counts("bench-node", &updates, presence_model::time::now_ms()).await?;
    }
    Ok(())
}

fn per(after: u64, before: u64, n: usize) -> f64 {
    after.saturating_sub(before) as f64 / n.max(1) as f64
}
