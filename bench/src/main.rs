//! `presence-bench`: the speed and size measurements (BENCHMARKS.md), each next to the
//! bare stack it is built on, in the same run, so the ratio means something
//! on a noisy machine. See BENCHMARKS.md for the figures and how to run them.
//!
//! Servers run as child processes of this binary (`serve-*` subcommands) with
//! one runtime thread each, so the load generator has the other core.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use presence::cluster::{Cluster, ClusterConfig};
use presence_client::{Connection, Frame, ServerMessage, TokenPlacement, UserId};

mod deployed;
mod fanout;
mod floors;
mod heap;
mod hot_user;
mod redis_memory;
mod socket_floor;
mod storm;

/// The JWT secret of every benchmark (the binaries ask for at least 32 bytes).
const SECRET: &str = "presence-bench-secret-0123456789abcdef";

/// A token for `user`, valid for an hour, signed with [`SECRET`].
fn token(user: &str) -> String {
    presence_model::auth::mint_hs256(SECRET.as_bytes(), user, 3600)
}

#[global_allocator]
static ALLOCATOR: heap::Counting = heap::Counting;

#[derive(Parser)]
#[command(about = "Speed and size benchmarks (see BENCHMARKS.md).")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Vnode hash + table lookup, ns per call.
    Vnode,
    /// /route vs a bare hyper hello server, both under wrk.
    Route {
        /// wrk connections.
        #[arg(long, default_value_t = 64)]
        connections: u32,
        /// Seconds per run.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
    },
    /// Resident memory per idle authenticated connection vs a bare tungstenite echo server.
    Idle {
        /// Connections to hold open (the process limit is 20,000 files).
        #[arg(long, default_value_t = 15_000)]
        count: usize,
        /// Measure the `ws-node` binary as deployed (with a `coordinator`
        /// binary, on REDIS_URL and KAFKA_BROKERS; `cargo build --release
        /// --bins` first) instead of a node in a child of this program.
        #[arg(long)]
        binaries: bool,
    },
    /// Connect + auth + welcome rate into one node.
    ConnectRate {
        /// Connections to make.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Connections in flight at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
    /// Status fan-out latency to a subscriber on another node: on the
    /// embedded backends, or on Redis and Kafka (REDIS_URL, KAFKA_BROKERS)
    /// beside the bare Redis pub/sub and librdkafka floors of the same run.
    Fanout {
        /// Events per second.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Frames the watcher's connection may have unread (the node's
        /// OUTBOUND_WINDOW); default: the product default.
        #[arg(long)]
        outbound_window: Option<u32>,
        /// Without the fast path: status crosses nodes by the bus alone.
        #[arg(long)]
        no_fast_path: bool,
        /// Through the `coordinator` and `ws-node` binaries as deployed (on
        /// REDIS_URL and KAFKA_BROKERS; `cargo build --release --bins`
        /// first), with a third node that serves nobody, for what consuming
        /// the whole topic costs it.
        #[arg(long)]
        binaries: bool,
        /// Redis to run on (else the embedded store).
        #[arg(long, env = "REDIS_URL")]
        redis_url: Option<String>,
        /// Kafka to run on (else the embedded bus).
        #[arg(long, env = "KAFKA_BROKERS")]
        kafka_brokers: Option<String>,
    },
    /// A watcher's subscribe and unsubscribe (and one status to all) as one
    /// user's watchers on a node grow: O(1) in the number of watchers.
    Watchers {
        /// Watcher counts to measure at.
        #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 10_000, 100_000])]
        sizes: Vec<usize>,
    },
    /// One user watched by many connections over 3 nodes: time to the last watcher.
    HotUser {
        /// Watchers (the process limit is 20,000 files on each side).
        #[arg(long, default_value_t = 19_000)]
        watchers: usize,
    },
    /// A node holding `users` users is killed; time until all are back with
    /// exact counts (binaries on REDIS_URL and KAFKA_BROKERS).
    Storm {
        /// Users on the killed node.
        #[arg(long, default_value_t = 15_000)]
        users: usize,
        /// Load-generator processes to run the users' sessions in (default:
        /// one per 4,000 users; each process has its own file limit).
        #[arg(long)]
        procs: Option<usize>,
    },
    /// Connects and closes into one node (binaries on REDIS_URL and
    /// KAFKA_BROKERS): changes per second with exact counts, store work per change.
    Churn {
        /// Seconds of churn.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Clients connecting and closing at once.
        #[arg(long, default_value_t = 256)]
        workers: usize,
    },
    /// Redis memory per online user and per followed user (REDIS_URL).
    RedisMemory {
        /// Users to write and follow.
        #[arg(long, default_value_t = 100_000)]
        users: usize,
        /// The Redis to measure (a single Redis).
        #[arg(long, env = "REDIS_URL")]
        redis_url: String,
    },
    /// (child) the reconnect storm's SDK sessions, for the users named on
    /// stdin; prints each `welcome` on stdout.
    StormSessions {
        /// The coordinator's public URL.
        coordinator: String,
        /// The index of the first user on stdin.
        first: usize,
    },
    /// (child) a bare hyper hello-world server.
    ServeHello { addr: SocketAddr },
    /// (child) a coordinator of an in-process cluster on embedded backends.
    ServeRoute { addr: SocketAddr },
    /// (child) one ws-node (plus its coordinator) on embedded backends.
    ServeNode { addr: SocketAddr },
    /// (child) a bare tungstenite echo server (default configuration).
    ServeEcho { addr: SocketAddr },
    /// (child) a bare tungstenite server that writes one `status` to every
    /// socket when any socket sends a text frame (the hot-user floor).
    ServeBroadcast { addr: SocketAddr },
    /// (child) a bare tungstenite server that upgrades, sends one ready-made
    /// `welcome` and answers the close (the churn floor), on one runtime
    /// thread per core like the `ws-node` binary.
    ServeWelcome { addr: SocketAddr },
    /// (child) the server ends of the hot user's socket floor: plain
    /// sockets in one poll loop, a ready-made frame written to all of them
    /// on a byte `g` from any.
    ServeRawBroadcast { addr: SocketAddr },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Servers get one thread (BENCH_SERVER_THREADS to change it), drivers two.
    let server_threads = std::env::var("BENCH_SERVER_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(1);
    let threads = match cli.what {
        What::ServeHello { .. }
        | What::ServeRoute { .. }
        | What::ServeNode { .. }
        | What::ServeEcho { .. }
        | What::ServeBroadcast { .. }
        | What::ServeRawBroadcast { .. } => {
            heap::report_if_asked();
            server_threads
        }
        // The churn floor stands beside the ws-node binary, whose runtime
        // has a worker per core.
        What::ServeWelcome { .. } => std::thread::available_parallelism().map_or(2, usize::from),
        // Several of these share the machine.
        What::StormSessions { .. } => 1,
        _ => 2,
    };
    tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?.block_on(run(cli.what))
}

async fn run(what: What) -> anyhow::Result<()> {
    match what {
        What::Vnode => vnode(),
        What::Route { connections, seconds } => route(connections, seconds).await,
        What::Idle { count, binaries: false } => idle(count).await,
        What::Idle { count, binaries: true } => deployed::idle(count).await,
        What::ConnectRate { count, concurrency } => connect_rate(count, concurrency).await,
        What::Fanout { rate, seconds, outbound_window, no_fast_path, binaries, redis_url, kafka_brokers } => {
            let config = fanout::Config { rate, seconds, outbound_window, fast_path: !no_fast_path };
            if binaries {
                deployed::fanout(config).await
            } else {
                fanout::in_process(config, redis_url.as_deref(), kafka_brokers.as_deref()).await
            }
        }
        What::Watchers { sizes } => watchers(&sizes),
        What::HotUser { watchers } => hot_user::run(watchers).await,
        What::Storm { users, procs } => storm::run(users, procs).await,
        What::StormSessions { coordinator, first } => storm::sessions(&coordinator, first).await,
        What::Churn { seconds, workers } => deployed::churn(seconds, workers).await,
        What::RedisMemory { users, redis_url } => redis_memory::run(&redis_url, users).await,
        What::ServeHello { addr } => serve_hello(addr).await,
        What::ServeRoute { addr } => serve_cluster(addr, 3).await,
        What::ServeNode { addr } => serve_cluster(addr, 1).await,
        What::ServeEcho { addr } => serve_echo(addr).await,
        What::ServeBroadcast { addr } => hot_user::serve_broadcast(addr).await,
        What::ServeWelcome { addr } => serve_welcome(addr).await,
        // One thread, no tasks: it blocks this child's only worker on purpose.
        What::ServeRawBroadcast { addr } => socket_floor::serve(addr),
    }
}

fn watchers(sizes: &[usize]) -> anyhow::Result<()> {
    use presence_ws_node::conn::Conn;
    use presence_ws_node::counts::Counts;
    use presence_ws_node::metrics::Metrics;
    let hot = UserId::parse("hot-user")?;
    println!("{:>9} {:>22} {:>26}", "watchers", "subscribe+unsubscribe", "one status to all (push)");
    for &n in sizes {
        let counts = Counts::new(std::sync::Arc::new(Metrics::new()));
        let conns: Vec<Conn> = (0..n as u64).map(|i| Conn::new(i, 64)).collect();
        for c in &conns {
            counts.watch(&hot, c.clone());
        }
        let reps = 20_000u64;
        let extra = Conn::new(u64::MAX, 64);
        let start = Instant::now();
        for _ in 0..reps {
            counts.watch(&hot, extra.clone());
            counts.unwatch(&hot, u64::MAX);
        }
        let churn = start.elapsed().as_nanos() as f64 / reps as f64;
        let p = presence_model::Presence::counted(hot.clone(), 1, 1);
        let start = Instant::now();
        counts.apply(&p, 0, None);
        let fan = start.elapsed();
        println!("{n:>9} {:>19.0} ns {:>23.2} ms", churn, fan.as_secs_f64() * 1e3);
    }
    Ok(())
}

fn vnode() -> anyhow::Result<()> {
    let owners: Vec<Option<&str>> = (0..presence_model::VNODES).map(|v| Some(["a", "b", "c"][v % 3])).collect();
    let table = presence_model::RoutingTable::from_owners(1, &owners, |id| format!("ws://{id}/socket"));
    let ids: Vec<String> = (0..1024).map(|i| format!("user-{i:08}")).collect();
    let n = 20_000_000u64;
    let start = Instant::now();
    let mut hits = 0usize;
    for i in 0..n {
        let id = &ids[(i as usize) & 1023];
        hits += table.owner(std::hint::black_box(id)).map_or(0, |o| o.id.len());
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("vnode hash + owner lookup (14-byte IDs): {ns:.1} ns per lookup ({hits} checksum)");
    Ok(())
}

/// Starts this binary with a serve subcommand on a free port and waits for it.
async fn child(sub: &str) -> anyhow::Result<(tokio::process::Child, SocketAddr)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    // BENCH_WRAP runs the server under a profiler, e.g. `heaptrack` or `perf record -g`
    // (the resident-memory figures are then the profiler's, not the server's).
    let wrap = std::env::var("BENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace().map(String::from).collect::<Vec<_>>();
    words.push(std::env::current_exe()?.to_string_lossy().into_owned());
    let child = tokio::process::Command::new(&words[0])
        .args(&words[1..])
        .args([sub, &addr.to_string()])
        .env(heap::FILE_VAR, heap_file(addr))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            // The cluster servers need a moment for their first routing table.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            return Ok((child, addr));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{sub} did not start")
}

/// Where the server child on `addr` reports its live heap bytes.
fn heap_file(addr: SocketAddr) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("presence-bench-heap-{}-{}", std::process::id(), addr.port()))
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn ms(s: &str) -> f64 {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let v: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        _ => f64::NAN,
    }
}

async fn wrk(url: &str, connections: u32, seconds: u32) -> anyhow::Result<WrkResult> {
    let out = tokio::process::Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", url])
        .output()
        .await
        .context("wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_string()));
    Ok(WrkResult {
        rps: field("Requests/sec:").context("wrk output")?.parse()?,
        p50_ms: ms(&field("50%").context("p50")?),
        p99_ms: ms(&field("99%").context("p99")?),
    })
}

async fn route(connections: u32, seconds: u32) -> anyhow::Result<()> {
    let (_hello, h) = child("serve-hello").await?;
    let (_route, r) = child("serve-route").await?;
    // Warm both, then alternate so that drift on a noisy machine hits both.
    wrk(&format!("http://{h}/"), connections, 2).await?;
    wrk(&format!("http://{r}/route?userId=alice"), connections, 2).await?;
    let hello = wrk(&format!("http://{h}/"), connections, seconds).await?;
    let route = wrk(&format!("http://{r}/route?userId=alice"), connections, seconds).await?;
    println!("wrk -t1 -c{connections} -d{seconds}s, servers on one runtime thread each");
    println!("{:<26} {:>12} {:>10} {:>10}", "", "req/s", "p50 ms", "p99 ms");
    println!("{:<26} {:>12.0} {:>10.3} {:>10.3}", "bare hyper hello", hello.rps, hello.p50_ms, hello.p99_ms);
    println!("{:<26} {:>12.0} {:>10.3} {:>10.3}", "GET /route", route.rps, route.p50_ms, route.p99_ms);
    println!(
        "ratio: throughput {:.2}x (target >= 0.9), p99 {:.2}x (target <= 1.2)",
        route.rps / hello.rps,
        route.p99_ms / hello.p99_ms
    );
    Ok(())
}

/// Connects with `token` and reads up to `welcome`.
async fn welcomed(url: &str, token: String) -> anyhow::Result<Connection> {
    let mut c = Connection::connect(url, TokenPlacement::Header(token)).await?;
    loop {
        match c.next().await {
            Some(Frame::Message(ServerMessage::Welcome { .. })) => return Ok(c),
            Some(Frame::Message(_)) => {}
            other => anyhow::bail!("no welcome: {other:?}"),
        }
    }
}

/// Opens `count` connections to `url`, `concurrency` at a time. With `auth`,
/// each authenticates as its own user and waits for `welcome`.
async fn open_many(url: &str, count: usize, auth: bool, concurrency: usize) -> anyhow::Result<Vec<Connection>> {
    // Tokens are minted before the clock matters: signing is the load generator's cost, not the node's.
    let tokens: Vec<Option<String>> = (0..count).map(|i| auth.then(|| token(&format!("user-{i}")))).collect();
    let opens = futures_util::stream::iter(tokens).map(|token| {
        let url = url.to_string();
        async move {
            let Some(token) = token else {
                return Connection::connect(&url, TokenPlacement::None).await.map_err(anyhow::Error::from);
            };
            welcomed(&url, token).await
        }
    });
    let mut opens = opens.buffer_unordered(concurrency);
    let mut conns = Vec::with_capacity(count);
    while let Some(c) = opens.next().await {
        conns.push(c?);
    }
    Ok(conns)
}

/// What one connection costs a server: resident memory growth and live heap growth.
struct PerConnection {
    rss: f64,
    heap: f64,
    /// The allocation sizes that grew most: (class upper bound, allocations per connection).
    sizes: Vec<(usize, f64)>,
}

impl PerConnection {
    fn print_sizes(&self) {
        let classes: Vec<String> = self.sizes.iter().map(|(size, n)| format!("{n:.2} x <={size} B")).collect();
        println!("    heap per connection by allocation size: {}", classes.join(", "));
    }
}

/// Growth of server `pid` per connection while `count` connections are
/// open; its heap too when it reports it into `heap` (a bench child).
async fn per_connection(
    pid: u32,
    heap: Option<&std::path::Path>,
    url: &str,
    count: usize,
    auth: bool,
) -> anyhow::Result<PerConnection> {
    // A first small batch warms allocator pools and the server's maps.
    let warm = open_many(url, 200, auth, 64).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = |h: Option<&std::path::Path>| h.map(heap::read).unwrap_or_default();
    let (rss_before, heap_before) = (rss_kib(pid)?, report(heap));
    let conns = open_many(url, count, auth, 256).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_after, heap_after) = (rss_kib(pid)?, report(heap));
    drop(conns);
    drop(warm);
    Ok(PerConnection {
        rss: (rss_after.saturating_sub(rss_before)) as f64 * 1024.0 / count as f64,
        heap: (heap_after.live - heap_before.live) as f64 / count as f64,
        sizes: heap_after
            .grown_since(&heap_before, 12)
            .into_iter()
            .map(|(size, n)| (size, n as f64 / count as f64))
            .collect(),
    })
}

async fn idle(count: usize) -> anyhow::Result<()> {
    let (node, addr) = child("serve-node").await?;
    let ours =
        per_connection(node.id().context("pid")?, Some(&heap_file(addr)), &format!("ws://{addr}/socket"), count, true)
            .await?;
    drop(node);
    let (echo, addr) = child("serve-echo").await?;
    let bare =
        per_connection(echo.id().context("pid")?, Some(&heap_file(addr)), &format!("ws://{addr}/"), count, false)
            .await?;
    drop(echo);
    println!("{count} idle connections, growth of the server per connection (resident; of it, live heap):");
    println!(
        "  ws-node, authenticated (welcome sent, counted, in the hub): {:>8.0} bytes resident, {:>8.0} bytes heap",
        ours.rss, ours.heap
    );
    ours.print_sizes();
    println!(
        "  bare tungstenite echo server, default configuration:       {:>8.0} bytes resident, {:>8.0} bytes heap",
        bare.rss, bare.heap
    );
    bare.print_sizes();
    println!("  target: at most 3 KiB = 3072 bytes resident");
    Ok(())
}

async fn connect_rate(count: usize, concurrency: usize) -> anyhow::Result<()> {
    let (_node, addr) = child("serve-node").await?;
    let url = format!("ws://{addr}/socket");
    let warm = open_many(&url, 500, true, 64).await?;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tokens: Vec<String> = (0..count).map(|i| token(&format!("rate-{i}"))).collect();
    let start = Instant::now();
    let opens = futures_util::stream::iter(tokens).map(|token| {
        let url = url.clone();
        async move { welcomed(&url, token).await }
    });
    let mut opens = opens.buffer_unordered(concurrency);
    let mut conns = Vec::with_capacity(count);
    while let Some(c) = opens.next().await {
        conns.push(c?);
    }
    let secs = start.elapsed().as_secs_f64();
    drop(conns);
    drop(_node);
    // The bare stack, same load generator: TCP + WebSocket upgrade, nothing else.
    let (_echo, addr) = child("serve-echo").await?;
    let echo_url = format!("ws://{addr}/");
    drop(open_many(&echo_url, 500, false, 64).await?);
    let start = Instant::now();
    let bare = open_many(&echo_url, count, false, concurrency).await?;
    let bare_secs = start.elapsed().as_secs_f64();
    drop(bare);
    println!("{count} connections, {concurrency} in flight, servers on one runtime thread:");
    println!(
        "  ws-node (TCP + upgrade + JWT check + count written to the store + welcome): {:>7.0} connections/s",
        count as f64 / secs
    );
    println!(
        "  bare tungstenite echo server (TCP + upgrade only):                           {:>7.0} connections/s",
        count as f64 / bare_secs
    );
    println!("  target: at least 10,000/s into one node");
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

async fn serve_hello(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = presence_http::bind(addr)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"Hello, world!",
                ))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The demo's settings, with the connection caps raised: the load generator
/// opens every connection from one address.
pub(crate) fn bench_config(nodes: usize) -> ClusterConfig {
    let mut config = ClusterConfig::demo(nodes, SECRET);
    for limits in [&mut config.node.http, &mut config.coordinator.http] {
        limits.max_connections = 1_000_000;
        limits.max_connections_per_ip = 1_000_000;
    }
    config.node.max_pending_auth = 1_000_000;
    config
}

async fn serve_cluster(addr: SocketAddr, nodes: usize) -> anyhow::Result<()> {
    let mut config = bench_config(nodes);
    config.coordinator_addr = "127.0.0.1:0".parse()?;
    config.admin_addr = "127.0.0.1:0".parse()?;
    config.first_node_port = if nodes == 1 { addr.port() } else { 0 };
    if nodes > 1 {
        config.coordinator_addr = addr;
    }
    let cluster = Cluster::start(config).await?;
    cluster.wait_settled(Duration::from_secs(30)).await?;
    println!("ready {}", cluster.coordinator_url);
    std::future::pending::<()>().await;
    Ok(())
}

async fn serve_welcome(addr: SocketAddr) -> anyhow::Result<()> {
    use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
    let welcome = Utf8Bytes::from(
        presence_model::wire::ServerMessage::Welcome {
            user_id: UserId::parse("churn-0-0")?,
            connection_id: "c1".into(),
            node_id: "floor".into(),
            epoch: 1,
            connections: 1,
            token_expires_at: None,
        }
        .to_json(),
    );
    let listener = presence_http::bind(addr)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let welcome = welcome.clone();
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
            if ws.send(Message::Text(welcome)).await.is_err() {
                return;
            }
            // Until the client's close (answered by tungstenite) or the end.
            while let Some(Ok(_)) = ws.next().await {}
        });
    }
}

async fn serve_echo(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = presence_http::bind(addr)?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
            while let Some(Ok(m)) = ws.next().await {
                if m.is_text() && ws.send(m).await.is_err() {
                    return;
                }
            }
        });
    }
}
