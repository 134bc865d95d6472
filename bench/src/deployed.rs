//! Measurements of the binaries as deployed: `coordinator` and `ws-node`
//! processes (next to this program's executable) on a real Redis and Kafka,
//! measured from outside.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use presence_client::CoordinatorClient;

use crate::{open_many, rss_kib, SECRET};

/// A process of ours, killed when dropped.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("the executable's directory")?.join(name);
    anyhow::ensure!(path.exists(), "{} is missing: cargo build --release --workspace --bins", path.display());
    Ok(path)
}

/// A coordinator and one ws-node on REDIS_URL and KAFKA_BROKERS, in a
/// namespace of their own, with the connection caps raised (the load
/// generator is one address); waits until the node serves its users.
async fn start() -> anyhow::Result<(Proc, Proc, String)> {
    let redis = std::env::var("REDIS_URL").context("REDIS_URL")?;
    let kafka = std::env::var("KAFKA_BROKERS").context("KAFKA_BROKERS")?;
    let namespace = format!("bench-deployed-{}", std::process::id());
    let common = |cmd: &mut std::process::Command| {
        cmd.env("REDIS_URL", &redis)
            .env("REDIS_PREFIX", &namespace)
            .env("KAFKA_BROKERS", &kafka)
            .env("KAFKA_TOPIC", &namespace)
            .env("MAX_CONNECTIONS", "1000000")
            .env("MAX_CONNECTIONS_PER_IP", "1000000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
    };
    let (public, admin, node_port) = (free_port()?, free_port()?, free_port()?);
    let mut cmd = std::process::Command::new(binary("coordinator")?);
    common(&mut cmd);
    cmd.env("LISTEN_ADDR", format!("127.0.0.1:{public}")).env("ADMIN_ADDR", format!("127.0.0.1:{admin}"));
    let coordinator = Proc(cmd.spawn()?);
    let mut cmd = std::process::Command::new(binary("ws-node")?);
    common(&mut cmd);
    let url = format!("ws://127.0.0.1:{node_port}/socket");
    cmd.env("LISTEN_ADDR", format!("127.0.0.1:{node_port}"))
        .env("PUBLIC_URL", format!("ws://127.0.0.1:{node_port}"))
        .env("NODE_ID", "bench-node")
        .env("JWT_SECRET", SECRET)
        .env("MAX_PENDING_AUTH", "1000000");
    let node = Proc(cmd.spawn()?);
    let api = CoordinatorClient::new(&format!("http://127.0.0.1:{public}"))?;
    for _ in 0..300 {
        if api.route("user-0").await.is_ok_and(|r| r.url.as_deref() == Some(url.as_str())) {
            return Ok((coordinator, node, url));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the ws-node did not come to own its users within 30 s")
}

/// Resident memory of the `ws-node` process per idle authenticated
/// connection, read from `/proc` while `count` connections are open.
pub async fn idle(count: usize) -> anyhow::Result<()> {
    let (_coordinator, node, url) = start().await?;
    let pid = node.0.id();
    let warm = open_many(&url, 200, true, 64).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
    let conns = open_many(&url, count, true, 256).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    drop(conns);
    drop(warm);
    let per = after.saturating_sub(before) as f64 * 1024.0 / count as f64;
    println!("{count} idle connections into the ws-node binary (Redis + Kafka), resident memory growth:");
    println!("  {per:>8.0} bytes per connection (process: {before} KiB before, {after} KiB after)");
    println!("  target: at most 3 KiB = 3072 bytes");
    Ok(())
}
