//! Measurements of the binaries as deployed: `coordinator` and `ws-node`
//! processes (next to this program's executable) on a real Redis and Kafka,
//! measured from outside.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use presence_client::CoordinatorClient;
use tokio::time::Instant;

use crate::SECRET;

/// A process of ours, killed when dropped.
pub(crate) struct Proc(std::process::Child);

impl Proc {
    /// The process ID.
    pub(crate) fn id(&self) -> u32 {
        self.0.id()
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub(crate) fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
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

/// Processes on REDIS_URL and KAFKA_BROKERS in a namespace of their own,
/// with the connection caps raised (the load generator is one address).
pub(crate) struct Cluster {
    redis: String,
    kafka: String,
    namespace: String,
    /// The coordinator's public and admin URLs.
    pub(crate) public: String,
    pub(crate) admin: String,
    coordinator: Proc,
}

/// The settings every process of a cluster shares.
fn common(cmd: &mut std::process::Command, redis: &str, kafka: &str, namespace: &str) {
    cmd.env("REDIS_URL", redis)
        .env("REDIS_PREFIX", namespace)
        .env("KAFKA_BROKERS", kafka)
        .env("KAFKA_TOPIC", namespace)
        .env("MAX_CONNECTIONS", "1000000")
        .env("MAX_CONNECTIONS_PER_IP", "1000000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
}

impl Cluster {
    /// A coordinator with the product's default timings (and `env`).
    pub(crate) fn start_with(env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let redis = std::env::var("REDIS_URL").context("REDIS_URL")?;
        let kafka = std::env::var("KAFKA_BROKERS").context("KAFKA_BROKERS")?;
        let namespace = format!("bench-deployed-{}-{}", std::process::id(), presence_model::time::now_us());
        let (public, admin) = (free_port()?, free_port()?);
        let mut cmd = std::process::Command::new(binary("coordinator")?);
        common(&mut cmd, &redis, &kafka, &namespace);
        cmd.env("LISTEN_ADDR", format!("127.0.0.1:{public}"))
            .env("ADMIN_ADDR", format!("127.0.0.1:{admin}"))
            .envs(env.iter().copied());
        let coordinator = Proc(cmd.spawn()?);
        Ok(Cluster {
            redis,
            kafka,
            namespace,
            public: format!("http://127.0.0.1:{public}"),
            admin: format!("http://127.0.0.1:{admin}"),
            coordinator,
        })
    }

    /// The coordinator's process ID.
    pub(crate) fn coordinator_pid(&self) -> u32 {
        self.coordinator.id()
    }

    fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// A ws-node with the product's default timings; it and its WebSocket URL.
    pub(crate) fn node(&self, id: &str) -> anyhow::Result<(Proc, String)> {
        self.node_with(id, &[])
    }

    /// A ws-node with the product's default timings and `env`.
    fn node_with(&self, id: &str, env: &[(&str, String)]) -> anyhow::Result<(Proc, String)> {
        let port = free_port()?;
        let mut cmd = std::process::Command::new(binary("ws-node")?);
        common(&mut cmd, &self.redis, &self.kafka, &self.namespace);
        cmd.env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("PUBLIC_URL", format!("ws://127.0.0.1:{port}"))
            .env("NODE_ID", id)
            .env("JWT_SECRET", SECRET)
            .env("MAX_PENDING_AUTH", "1000000")
            .envs(env.iter().map(|(k, v)| (k, v)));
        Ok((Proc(cmd.spawn()?), format!("ws://127.0.0.1:{port}/socket")))
    }

    /// Up to `n` of the users `prefix0`, `prefix1`, ... that the node at
    /// `url` owns (searching the first 100,000).
    pub(crate) async fn owned_by(&self, url: &str, prefix: &str, n: usize) -> anyhow::Result<Vec<String>> {
        let api = CoordinatorClient::new(&self.public)?;
        let mut names = Vec::with_capacity(n);
        let mut next = 0usize;
        while names.len() < n && next < 100_000 {
            let batch: Vec<String> = (next..next + 1000).map(|i| format!("{prefix}{i}")).collect();
            next += 1000;
            let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
            let routes = api.routes(&refs).await?;
            names.extend(
                batch.into_iter().zip(routes).filter(|(_, r)| r.url.as_deref() == Some(url)).map(|(name, _)| name),
            );
        }
        anyhow::ensure!(names.len() >= n, "the node at {url} owns fewer than {n} of 100,000 users");
        names.truncate(n);
        Ok(names)
    }

    /// Waits until every node in `urls` owns some of the first thousand
    /// users and their routes stayed the same for two seconds (the nodes'
    /// vnodes are in place).
    pub(crate) async fn settled(&self, urls: &[&str]) -> anyhow::Result<()> {
        let api = CoordinatorClient::new(&self.public)?;
        let names: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (mut last, mut same_since) = (Vec::new(), Instant::now());
        for _ in 0..600 {
            if let Ok(routes) = api.routes(&refs).await {
                let now: Vec<Option<String>> = routes.into_iter().map(|r| r.url).collect();
                let owned: HashSet<&str> = now.iter().filter_map(|u| u.as_deref()).collect();
                if now != last {
                    (last, same_since) = (now, Instant::now());
                } else if urls.iter().all(|u| owned.contains(u)) && same_since.elapsed() >= Duration::from_secs(2) {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the nodes did not settle within 60 s")
    }
}

/// Resident memory of the `ws-node` process per idle authenticated
/// connection, read from `/proc` while `count` connections are open.
pub async fn idle(count: usize) -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let (node, url) = cluster.node("bench-node")?;
    cluster.settled(&[&url]).await?;
    let per = crate::per_connection(node.0.id(), None, &url, count, true).await?.rss;
    println!("{count} idle connections into the ws-node binary (Redis + Kafka), resident memory growth:");
    println!("  {per:>8.0} bytes per connection");
    println!("  target: at most 3 KiB = 3072 bytes");
    Ok(())
}

/// Whether every one of `users` has `want` connections in the store (the
/// admin `/presence` API, a thousand at a time).
pub(crate) async fn all_at(admin: &CoordinatorClient, users: &[String], want: u64) -> anyhow::Result<bool> {
    for chunk in users.chunks(1000) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        if admin.status(&refs).await?.iter().any(|p| p.connections != want) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Reads the counters and gauges named in `names` from a node's `/metrics`
/// (`ws_url` is its socket URL; the metrics are on the same port).
async fn node_metrics(ws_url: &str, names: &[&str]) -> anyhow::Result<Vec<f64>> {
    http_metrics(&ws_url.replacen("ws://", "http://", 1), names).await
}

/// Reads the counters and gauges named in `names` from the `/metrics` of
/// the server at `base` (`http://host:port`, anything after is ignored).
pub(crate) async fn http_metrics(base: &str, names: &[&str]) -> anyhow::Result<Vec<f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://").split('/').next().context("the server's address")?;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: node\r\n\r\n").await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    names
        .iter()
        .map(|name| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("{name} in the node's metrics"))
        })
        .collect()
}

/// Commands Redis has processed since it started (`INFO stats`).
async fn redis_commands(url: &str) -> anyhow::Result<u64> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("stats").query_async(&mut conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .context("total_commands_processed in INFO")
}

/// Churn into one node of the deployed binaries: `workers` clients connect
/// (token in the header, until `welcome`, which the node sends once the
/// store counts the connection) and close, each over users of its own, for
/// `seconds`. Reports changes per second (a connect or a close is one), the
/// time until every count is exact afterwards (all 0 in the store, none on
/// the node), and the store's work per change: the writer's batches (one
/// pipelined round trip each) and count updates from the node's metrics,
/// and every command Redis processed (heartbeats and table polls included).
pub async fn churn(seconds: u64, workers: usize) -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let (node, url) = cluster.node("churn-node")?;
    cluster.settled(&[&url]).await?;
    const USERS_PER_WORKER: usize = 20;
    let names: Vec<String> = (0..workers * USERS_PER_WORKER)
        .map(|i| format!("churn-{}-{}", i / USERS_PER_WORKER, i % USERS_PER_WORKER))
        .collect();
    let tokens: Vec<String> = names.iter().map(|n| crate::token(n)).collect();
    let counters = ["presence_store_writes_total", "presence_store_updates_total", "presence_connects_total"];
    let before = node_metrics(&url, &counters).await?;
    let commands_before = redis_commands(&cluster.redis).await?;
    let cpu_before = cpu_time(node.0.id())?;
    let started = Instant::now();
    let done = churn_load(&url, &tokens, workers, seconds).await?;
    let elapsed = started.elapsed();
    let cpu = cpu_time(node.0.id())? - cpu_before;
    // Exact afterwards: every user at 0 in the store, nobody on the node.
    let admin = CoordinatorClient::new(&cluster.admin)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all_zero = all_at(&admin, &names, 0).await?;
        let on_node = node_metrics(&url, &["presence_connections"]).await?[0];
        if all_zero && on_node == 0.0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "counts not exact 30 s after the churn");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exact_after = started.elapsed() - elapsed;
    let after = node_metrics(&url, &counters).await?;
    let commands = redis_commands(&cluster.redis).await? - commands_before;
    let (writes, updates) = (after[0] - before[0], after[1] - before[1]);
    let per_change = |x: f64| x / done as f64;
    println!(
        "churn into one ws-node binary (Redis + Kafka), {workers} clients connecting and closing for {seconds} s:"
    );
    println!(
        "  {:.0} changes/s ({done} connects and closes); every count exact {:.2} s after the last",
        done as f64 / elapsed.as_secs_f64(),
        exact_after.as_secs_f64()
    );
    println!(
        "  store work per change: {:.3} batches (pipelined round trips), {:.2} count updates, {:.2} Redis commands in all",
        per_change(writes),
        per_change(updates),
        per_change(commands as f64)
    );
    let cpu_per_change = cpu.as_secs_f64() / done as f64;
    println!(
        "  the node's CPU: {:.0}% of a core, {:.1} us per change (at that cost one core of its own takes {:.0} changes/s)",
        cpu.as_secs_f64() / elapsed.as_secs_f64() * 100.0,
        cpu_per_change * 1e6,
        1.0 / cpu_per_change
    );
    // The floor, same load generator, same run: a bare tungstenite server
    // with the node binary's runtime (one worker per core) that upgrades,
    // sends a ready-made `welcome` and answers the close.
    drop(node);
    let (floor, addr) = crate::child("serve-welcome").await?;
    let floor_url = format!("ws://{addr}/");
    let cpu_before = cpu_time(floor.id().context("pid")?)?;
    let floor_started = Instant::now();
    let floor_done = churn_load(&floor_url, &tokens, workers, seconds).await?;
    let floor_elapsed = floor_started.elapsed();
    let floor_cpu = cpu_time(floor.id().context("pid")?)? - cpu_before;
    let (rate, floor_rate) = (done as f64 / elapsed.as_secs_f64(), floor_done as f64 / floor_elapsed.as_secs_f64());
    println!(
        "  floor, same load generator: a bare tungstenite server (upgrade, one ready-made welcome, close): {floor_rate:.0} changes/s, {:.1} us of its CPU per change",
        floor_cpu.as_secs_f64() * 1e6 / floor_done.max(1) as f64
    );
    println!("  ratio to the floor: {:.2}x", rate / floor_rate);
    println!("  target: >= 20,000 changes/s");
    Ok(())
}

/// `workers` clients, each connecting (token in the header) until `welcome`
/// and closing, over its own share of `tokens`, for `seconds`; the changes
/// made (a connect or a close is one).
async fn churn_load(url: &str, tokens: &[String], workers: usize, seconds: u64) -> anyhow::Result<u64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let changes = std::sync::Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(seconds);
    let per_worker = tokens.len() / workers.max(1);
    let mut tasks = Vec::with_capacity(workers);
    for mine in tokens.chunks(per_worker.max(1)).take(workers) {
        let (mine, url, changes) = (mine.to_vec(), url.to_string(), changes.clone());
        tasks.push(tokio::spawn(async move {
            for token in mine.iter().cycle() {
                if Instant::now() >= stop {
                    break;
                }
                let c = crate::welcomed(&url, token.clone()).await?;
                c.close().await;
                changes.fetch_add(2, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(changes.load(Ordering::Relaxed))
}

/// CPU time a process has used so far: the sum over its threads of the
/// time on a CPU (`/proc/<pid>/task/*/schedstat`, nanoseconds). Threads that
/// ended are not counted, so it is read while the process runs steadily.
pub(crate) fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        ns += stat.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Ok(Duration::from_nanos(ns))
}

/// Fan-out through the deployed binaries on Redis and Kafka: the watcher on
/// node A, the watched users on node B (the same driving as
/// [`crate::fanout::drive`]), and node C, which serves nobody: the CPU it
/// spends while the changes flow is what consuming the whole topic costs a
/// node that needs none of it (`docs/architecture.md`, "Fast path").
pub async fn fanout(config: crate::fanout::Config) -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut env = vec![("FAST_PATH", config.fast_path.to_string())];
    if let Some(w) = config.outbound_window {
        env.push(("OUTBOUND_WINDOW", w.to_string()));
    }
    let (a, a_url) = cluster.node_with("fanout-a", &env)?;
    let (b, b_url) = cluster.node_with("fanout-b", &env)?;
    let (c, c_url) = cluster.node_with("fanout-c", &env)?;
    cluster.settled(&[&a_url, &b_url, &c_url]).await?;
    let watcher = cluster.owned_by(&a_url, "fan-", 1).await?.remove(0);
    let targets = cluster.owned_by(&b_url, "fan-", crate::fanout::TARGETS).await?;
    let cast = crate::fanout::Cast {
        watcher: (watcher, a_url.clone()),
        targets: targets.into_iter().map(|u| (u, b_url.clone())).collect(),
    };
    let counters = ["presence_live_changes_total", "presence_events_received_total", "presence_events_stale_total"];
    // Node C's CPU while nothing happens, then while the changes flow.
    let quiet = Instant::now();
    let c_cpu_quiet = cpu_time(c.0.id())?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c_cpu_quiet = cpu_time(c.0.id())? - c_cpu_quiet;
    let quiet = quiet.elapsed();
    let c_events_before = node_metrics(&c_url, &counters[1..2]).await?[0];
    let c_cpu_before = cpu_time(c.0.id())?;
    let wall = Instant::now();
    crate::fanout::drive(&cast, &config, "ws-node binaries on Redis + Kafka").await?;
    let c_cpu = cpu_time(c.0.id())? - c_cpu_before;
    let wall = wall.elapsed();
    let c_events = node_metrics(&c_url, &counters[1..2]).await?[0] - c_events_before;
    let idle_share = c_cpu_quiet.as_secs_f64() / quiet.as_secs_f64();
    let for_events = c_cpu.as_secs_f64() - idle_share * wall.as_secs_f64();
    for (name, role, url) in [("fanout-a", "the watcher's node", &a_url), ("fanout-b", "the users' node", &b_url)] {
        let m = node_metrics(url, &counters).await?;
        println!(
            "  {name}: {} changes heard on the live feed, {} events from the bus ({} already known); {role}",
            m[0], m[1], m[2]
        );
    }
    // Where a late status lost its time: before node A queued it (store
    // write -> bus -> node A) or after (node A -> the watcher's socket).
    let le = |b: &str| format!("presence_fanout_latency_seconds_bucket{{le=\"{b}\"}}");
    let names = [le("0.01"), le("0.05"), "presence_fanout_latency_seconds_count".to_string()];
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let h = node_metrics(&a_url, &refs).await?;
    println!(
        "  fanout-a queued {} statuses for its watcher: {} within 10 ms of the store's write, {} within 50 ms",
        h[2], h[0], h[1]
    );
    println!(
        "  fanout-c (serves nobody): {:.1}% of a core with no traffic; {c_events} events consumed from the bus, {:.0} ms of CPU in {:.1} s: {:.1} us per event above the quiet level",
        idle_share * 100.0,
        c_cpu.as_secs_f64() * 1000.0,
        wall.as_secs_f64(),
        if c_events > 0.0 { for_events.max(0.0) * 1e6 / c_events } else { 0.0 }
    );
    // The floors on the same servers, with the nodes gone: the broker then
    // serves the floor's readers only, as it served the nodes' three.
    drop((a, b, c));
    crate::fanout::floors(&config, Some(&cluster.redis), Some(&cluster.kafka), 3).await
}
