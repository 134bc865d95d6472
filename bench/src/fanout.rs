//! Status fan-out to a watcher on another node: a watcher on node A follows
//! 50 users on node B that connect and close alternately at a fixed rate;
//! the latency is from the client's connect or close call to the watcher's
//! `status`. Run in this process (`fanout`) or through the deployed
//! binaries (`fanout --binaries`, in [`crate::deployed`]); the driving and
//! the matching are the same for both.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use presence::cluster::Cluster;
use presence_client::{ClientMessage, Connection, Frame, ServerMessage, TokenPlacement, UserId};
use presence_model::api::PresenceView;

use crate::{floors, token};

/// What the fan-out benchmark is asked to do.
pub struct Config {
    /// Changes per second, all users together.
    pub rate: u32,
    /// Seconds of changes.
    pub seconds: u32,
    /// The watcher's connection's flow-control window (`None`: the default).
    pub outbound_window: Option<u32>,
    /// Whether status may cross nodes by the store's live feed.
    pub fast_path: bool,
}

/// Who takes part: the watcher, and the users it watches (user, socket URL).
pub struct Cast {
    /// The watching user and its node's socket URL.
    pub watcher: (String, String),
    /// The watched users, all on another node, and their node's socket URL.
    pub targets: Vec<(String, String)>,
}

/// How many users the watcher follows. A user's changes are `50 / rate`
/// apart, so at 1,000 changes/s a user's connect and close never overlap.
pub const TARGETS: usize = 50;

/// Drives the changes of `config` through `cast` and prints the latencies
/// (`label` names the setup).
pub async fn drive(cast: &Cast, config: &Config, label: &str) -> anyhow::Result<()> {
    let (rate, seconds) = (config.rate, config.seconds);
    let mut w = Connection::connect(&cast.watcher.1, TokenPlacement::Header(token(&cast.watcher.0))).await?;
    let ids: Vec<UserId> = cast.targets.iter().map(|(u, _)| UserId::parse(u)).collect::<Result<_, _>>()?;
    w.send(&ClientMessage::Subscribe { user_ids: ids }).await?;
    // Statuses arrive on their own task; each records when it was seen.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(String, u64, Instant)>();
    tokio::spawn(async move {
        while let Some(f) = w.next().await {
            if let Frame::Message(ServerMessage::Status(PresenceView { user_id, connections, .. })) = f {
                let _ = seen_tx.send((user_id.to_string(), connections, Instant::now()));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    while seen_rx.try_recv().is_ok() {}
    // Each change runs on its own task so that the rate holds while connects
    // are in flight; a user's changes are far enough apart never to overlap.
    let conns: Arc<Vec<tokio::sync::Mutex<Option<Connection>>>> =
        Arc::new((0..cast.targets.len()).map(|_| tokio::sync::Mutex::new(None)).collect());
    let sent = Arc::new(Mutex::new(Vec::<(String, u64, Instant)>::new()));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    let total = (rate * seconds) as usize;
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        let k = i % cast.targets.len();
        let (user, url) = cast.targets[k].clone();
        let tok = token(&user);
        let (conns, sent) = (conns.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut slot = conns[k].lock().await;
            let started = Instant::now();
            match slot.take() {
                None => {
                    if let Ok(c) = Connection::connect(&url, TokenPlacement::Header(tok)).await {
                        *slot = Some(c);
                        sent.lock().unwrap_or_else(|p| p.into_inner()).push((user, 1, started));
                    }
                }
                Some(c) => {
                    sent.lock().unwrap_or_else(|p| p.into_inner()).push((user, 0, started));
                    c.close().await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut sent = std::mem::take(&mut *sent.lock().unwrap_or_else(|p| p.into_inner()));
    sent.sort_by_key(|(_, _, t)| *t);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut seen: Vec<(String, u64, Instant)> = Vec::new();
    while let Ok(s) = seen_rx.try_recv() {
        seen.push(s);
    }
    // Match each change with the first matching status seen after it.
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let mut cursor: HashMap<&str, usize> = HashMap::new();
    for (user, n, t0) in &sent {
        let from = cursor.get(user.as_str()).copied().unwrap_or(0);
        if let Some(pos) = seen.iter().skip(from).position(|(u, c, t)| u == user && c == n && t >= t0) {
            let idx = from + pos;
            let d = seen[idx].2 - *t0;
            if *n == 0 {
                off.push(d)
            } else {
                on.push(d)
            }
            cursor.insert(user, idx + 1);
        }
    }
    println!(
        "status fan-out to a subscriber on another node, {label}, fast path {}, {rate} changes/s for {seconds} s:",
        if config.fast_path { "on" } else { "off" }
    );
    println!("  {} of {} changes seen", on.len() + off.len(), sent.len());
    let mut all: Vec<Duration> = on.iter().chain(&off).copied().collect();
    floors::report("goes offline (from the client's close)", &mut off, sent.iter().filter(|s| s.1 == 0).count());
    floors::report("comes online (from the client's connect call)", &mut on, sent.iter().filter(|s| s.1 == 1).count());
    floors::report("both", &mut all, sent.len());
    println!("  target: p50 <= 3 ms, p99 <= 10 ms, nothing missed");
    Ok(())
}

/// The floors of the same run: bare Redis pub/sub and bare librdkafka on
/// the servers the product used, the latter with one reader and then with
/// as many readers of the whole topic as the product had (`readers`).
pub async fn floors(
    config: &Config,
    redis_url: Option<&str>,
    kafka_brokers: Option<&str>,
    readers: usize,
) -> anyhow::Result<()> {
    if let Some(url) = redis_url {
        floors::redis(url.split(',').next().unwrap_or(url), config.rate, config.seconds).await?;
    }
    if let Some(brokers) = kafka_brokers {
        floors::kafka(brokers, 16, 1, config.rate, config.seconds).await?;
        if readers > 1 {
            floors::kafka(brokers, 16, readers, config.rate, config.seconds).await?;
        }
    }
    Ok(())
}

/// Two nodes and the coordinator in this process, on the embedded backends
/// or on Redis and Kafka.
pub async fn in_process(config: Config, redis_url: Option<&str>, kafka_brokers: Option<&str>) -> anyhow::Result<()> {
    // Production timings, free ports.
    let mut cluster_config = crate::bench_config(2);
    cluster_config.coordinator_addr = "127.0.0.1:0".parse()?;
    cluster_config.admin_addr = "127.0.0.1:0".parse()?;
    cluster_config.first_node_port = 0;
    if let Some(w) = config.outbound_window {
        cluster_config.node.outbound_window = w;
    }
    cluster_config.node.fast_path = config.fast_path;
    // A namespace of this run's own on shared servers.
    let run = format!("bench-{}", std::process::id());
    let backends = presence_runtime::backends::connect(&presence_runtime::backends::BackendConfig {
        redis_url: redis_url.map(String::from),
        redis_prefix: Some(run.clone()),
        kafka_brokers: kafka_brokers.map(String::from),
        kafka_topic: Some(run.clone()),
        kafka_linger: crate::floors::linger_from_env(),
        client_id: run.clone(),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    let label = format!("in one process, store {}, bus {}", backends.store.kind(), backends.bus.kind());
    let cluster = Cluster::start_on(cluster_config, backends.store, backends.bus).await?;
    cluster.wait_settled(Duration::from_secs(30)).await?;
    let table = cluster.coordinator.table.get().context("table")?;
    let (a, b) = (&table.nodes[0].id, &table.nodes[1].id);
    let on = |node: &str, n: usize| -> Vec<(String, String)> {
        (0..)
            .map(|i| format!("u{i}"))
            .filter_map(|u| table.owner(&u).filter(|o| o.id == node).map(|o| (u.clone(), o.url.clone())))
            .take(n)
            .collect()
    };
    let cast = Cast { watcher: on(a, 1).remove(0), targets: on(b, TARGETS) };
    drive(&cast, &config, &label).await?;
    for n in &cluster.nodes {
        let m = &n.node.metrics;
        println!(
            "  {}: {} changes heard on the live feed, {} events from the bus ({} already known)",
            n.node.config.node_id,
            m.live_changes.get(),
            m.events_received.get(),
            m.events_stale.get()
        );
    }
    let readers = cluster.nodes.len();
    cluster.shutdown().await;
    floors(&config, redis_url, kafka_brokers, readers).await
}
