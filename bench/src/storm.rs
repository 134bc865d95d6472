//! The reconnect storm: a `ws-node` binary holding many users is killed
//! (SIGKILL) and their SDK sessions find new owners. The sessions run in
//! several child processes of this program (`storm-sessions`), because one
//! process holding 15,000 reconnecting sessions reaches its file limit
//! (20,000 here, and a container may not raise it): each child reports
//! every `welcome` with its wall-clock time on its stdout.

use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use presence_client::CoordinatorClient;
use presence_model::time::now_us;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::deployed::{all_at, cpu_time, Cluster};

/// Sessions per load-generator process when the caller does not say: each
/// holds up to two sockets while it re-routes and reconnects.
const SESSIONS_PER_PROCESS: usize = 4000;

/// One `welcome` a session saw: the user's index, the node, when (unix µs).
struct Welcome {
    user: usize,
    node: String,
    at_us: u64,
}

impl Welcome {
    /// The line a child prints: `w <user> <node> <unix µs>`.
    fn line(&self) -> String {
        format!("w {} {} {}\n", self.user, self.node, self.at_us)
    }

    fn parse(line: &str) -> Option<Welcome> {
        let mut words = line.strip_prefix("w ")?.split(' ');
        let user = words.next()?.parse().ok()?;
        let node = words.next()?.to_string();
        let at_us = words.next()?.parse().ok()?;
        Some(Welcome { user, node, at_us })
    }
}

/// A reconnect storm: `users` users, all on one node of three, with the
/// SDK's reconnecting client spread over `procs` processes (by default one
/// per 4,000 users); the node is killed (SIGKILL). Times until every user
/// is back (welcomed by another node) and until every count is exact (each
/// user 1 in the store, the survivors holding them all). `STORM_DEBUG=1`
/// has the children print every reconnect and its cause on stderr.
pub async fn run(users: usize, procs: Option<usize>) -> anyhow::Result<()> {
    // Load balancing off: the node is to hold them all when it dies.
    let cluster = Cluster::start_with(&[("REBALANCE_MIN_LOAD_GAP", "1000000000")])?;
    let (mut victim, victim_url) = cluster.node("storm-a")?;
    let (b, b_url) = cluster.node("storm-b")?;
    let (c, c_url) = cluster.node("storm-c")?;
    cluster.settled(&[&victim_url, &b_url, &c_url]).await?;
    let names = cluster.owned_by(&victim_url, "storm-", users).await?;
    let procs = procs.unwrap_or(users.div_ceil(SESSIONS_PER_PROCESS)).clamp(1, users.max(1));
    let started = Instant::now();
    let (tx, mut welcomes) = tokio::sync::mpsc::unbounded_channel::<Welcome>();
    let mut children = Vec::with_capacity(procs);
    let share = users.div_ceil(procs);
    for (p, mine) in names.chunks(share).enumerate() {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["storm-sessions", &cluster.public, &(p * share).to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut stdin = child.stdin.take().context("the child's stdin")?;
        stdin.write_all(mine.join("\n").as_bytes()).await?;
        drop(stdin);
        let stdout = child.stdout.take().context("the child's stdout")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Some(w) = Welcome::parse(&line) else { continue };
                if tx.send(w).is_err() {
                    return;
                }
            }
        });
        children.push(child);
    }
    drop(tx);
    // Everyone welcomed by the victim.
    let mut on_victim = vec![false; users];
    let mut welcomed = 0;
    while welcomed < users {
        let next = tokio::time::timeout(Duration::from_secs(60), welcomes.recv()).await;
        let w = next
            .map_err(|_| anyhow::anyhow!("{welcomed} of {users} users welcomed on the node after 60 s"))?
            .context("the load generators ended")?;
        anyhow::ensure!(w.node == "storm-a", "a user was welcomed by {}: the routing moved", w.node);
        if !on_victim[w.user] {
            on_victim[w.user] = true;
            welcomed += 1;
        }
    }
    println!(
        "{users} users on one node of 3 (binaries on Redis + Kafka; sessions in {procs} processes), connected in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let admin = CoordinatorClient::new(&cluster.admin)?;
    anyhow::ensure!(all_at(&admin, &names, 1).await?, "counts not exact before the kill");
    // Who spends the machine's CPU from the kill until everyone is back.
    let generators: Vec<u32> = children.iter().filter_map(|c| c.id()).collect();
    let roles = [
        ("the surviving nodes", vec![b.id(), c.id()]),
        ("the coordinator", vec![cluster.coordinator_pid()]),
        ("the load generators", generators),
    ];
    let cpu = |pids: &[u32]| pids.iter().map(|&p| cpu_time(p).unwrap_or_default()).sum::<Duration>();
    let cpu_before: Vec<Duration> = roles.iter().map(|(_, pids)| cpu(pids)).collect();
    let killed = Instant::now();
    let killed_us = now_us();
    victim.kill();
    // When the table gives the victim's users another owner (asked every 20 ms).
    let moved = {
        let (api, user) = (CoordinatorClient::new(&cluster.public)?, names[0].clone());
        tokio::spawn(async move {
            loop {
                if api.route(&user).await.is_ok_and(|r| r.node_id.as_deref() != Some("storm-a")) {
                    return killed.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut back = vec![false; users];
    let mut times = Vec::with_capacity(users);
    while times.len() < users {
        let w = tokio::time::timeout(Duration::from_secs(60), welcomes.recv())
            .await
            .map_err(|_| anyhow::anyhow!("{} of {users} users back after 60 s", times.len()))?
            .context("the load generators ended")?;
        if w.node != "storm-a" && !back[w.user] {
            back[w.user] = true;
            times.push(Duration::from_micros(w.at_us.saturating_sub(killed_us)));
        }
    }
    let wall = killed.elapsed();
    let spent: Vec<String> = roles
        .iter()
        .zip(&cpu_before)
        .map(|((who, pids), before)| format!("{who} {:.2} s", (cpu(pids) - *before).as_secs_f64()))
        .collect();
    // Exact everywhere: every user counted once in the store.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !all_at(&admin, &names, 1).await? {
        anyhow::ensure!(Instant::now() < deadline, "counts not exact 30 s after everyone was back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_exact = killed.elapsed();
    // The survivors' own reports come with their heartbeats.
    let mut survivors = 0;
    for _ in 0..50 {
        survivors = admin.nodes().await?.iter().map(|n| n.connections).sum::<u64>();
        if survivors == users as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    times.sort();
    if let Some(path) = std::env::var_os("STORM_TIMES") {
        let text: String = times.iter().map(|t| format!("{}\n", t.as_millis())).collect();
        std::fs::write(path, text)?;
    }
    let last = times.last().copied().unwrap_or_default();
    println!(
        "  killed the node (SIGKILL): users back on another node: p50 {:.2} s, p90 {:.2} s, p99 {:.2} s, all {:.2} s",
        crate::percentile(&times, 0.5) / 1000.0,
        crate::percentile(&times, 0.9) / 1000.0,
        crate::percentile(&times, 0.99) / 1000.0,
        last.as_secs_f64()
    );
    println!("  every count exact (each user 1 in the store) after {:.2} s", all_exact.as_secs_f64());
    println!("  the routing table moved the users after {:.2} s", moved.await?.as_secs_f64());
    let outcomes = ["moved", "alive", "released", "timed_out", "full"];
    let names: Vec<String> =
        outcomes.iter().map(|o| format!("presence_route_reports_total{{outcome=\"{o}\"}}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let reports = crate::deployed::http_metrics(&cluster.admin, &refs).await?;
    let said: Vec<String> = outcomes.iter().zip(&reports).map(|(o, n)| format!("{n} {o}")).collect();
    println!("  route requests reporting the node unreachable: {}", said.join(", "));
    println!("  the surviving nodes report {survivors} connections");
    println!(
        "  CPU from the kill until all were back ({:.2} s on {} cores): {}",
        wall.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        spent.join(", ")
    );
    anyhow::ensure!(survivors == users as u64, "the survivors report {survivors} connections, not {users}");
    println!("  target: <= 5 s (15,000 users)");
    Ok(())
}

/// (child) Runs one SDK session for each user named on stdin (one per
/// line; user `first + i` is the i-th) against the coordinator at `public`,
/// and prints each `welcome` as a line on stdout. Ends when stdout closes.
pub async fn sessions(public: &str, first: usize) -> anyhow::Result<()> {
    use presence_client::{Client, ConnectOptions, Event, TokenSource};
    let names: Vec<String> = std::io::stdin().lock().lines().collect::<Result<_, _>>()?;
    // Lines go out through one thread that flushes whenever it has caught up.
    let (tx, rx) = std::sync::mpsc::channel::<Welcome>();
    let writer = std::thread::spawn(move || {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        while let Ok(w) = rx.recv() {
            let mut next = Some(w);
            while let Some(w) = next {
                if out.write_all(w.line().as_bytes()).is_err() {
                    return;
                }
                next = rx.try_recv().ok();
            }
            if out.flush().is_err() {
                return;
            }
        }
    });
    let client = Client::new(public)?;
    let debug = std::env::var_os("STORM_DEBUG").is_some();
    let opens = futures_util::stream::iter(names.iter().enumerate()).map(|(i, name)| {
        let (client, tx) = (client.clone(), tx.clone());
        let token = crate::token(name);
        async move {
            let mut session = client.connect(name, ConnectOptions::new(TokenSource::fixed(token))).await?;
            tokio::spawn(async move {
                while let Some(e) = session.next_event().await {
                    match e {
                        Event::Welcome { node_id, .. } => {
                            let w = Welcome { user: first + i, node: node_id, at_us: now_us() };
                            if tx.send(w).is_err() {
                                return;
                            }
                        }
                        Event::Reconnecting { reason, attempt, .. } if debug => {
                            eprintln!("storm-debug {} attempt {attempt}: {reason:?}", first + i);
                        }
                        _ => {}
                    }
                }
            });
            Ok::<_, anyhow::Error>(())
        }
    });
    let mut opens = opens.buffer_unordered(256);
    while let Some(r) = opens.next().await {
        r?;
    }
    drop(opens);
    drop(tx);
    // The sessions hold senders; the writer ends when the parent stops reading.
    tokio::task::spawn_blocking(move || writer.join()).await?.ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Welcome;

    #[test]
    fn a_welcome_line_reads_back() {
        let w = Welcome { user: 42, node: "storm-b".into(), at_us: 1_790_000_000_123_456 };
        let back = Welcome::parse(w.line().trim_end()).expect("parses");
        assert_eq!((back.user, back.node.as_str(), back.at_us), (42, "storm-b", 1_790_000_000_123_456));
        assert!(Welcome::parse("storm-debug 1 attempt 2").is_none());
    }
}
