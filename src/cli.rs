//! The `presence` subcommands.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use presence_client::CoordinatorClient;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, ClusterConfig};

/// The secret the demo uses when `JWT_SECRET` is not set. Development only.
pub const DEMO_SECRET: &str = "presence-demo-secret";

/// The presence platform's command line.
#[derive(Debug, Parser)]
#[command(
    name = "presence",
    version,
    about = "Presence and online-status platform: demo cluster, dev tokens, cluster inspection."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a local cluster (a coordinator and N ws-nodes) in this process, on embedded backends.
    Demo(DemoArgs),
    /// Mint a development JWT (HS256 with JWT_SECRET) for a user.
    Token {
        /// The user ID (the token's `sub`).
        user_id: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        /// Signing secret.
        #[arg(long, env = "JWT_SECRET", hide_env_values = true, default_value = DEMO_SECRET)]
        jwt_secret: String,
    },
    /// Show which node a user connects to.
    Route {
        /// The user ID.
        user_id: String,
        /// Coordinator and output options.
        #[command(flatten)]
        target: Target,
    },
    /// Show the presence of users.
    Status {
        /// User IDs (up to 1000).
        #[arg(required = true)]
        user_ids: Vec<String>,
        /// Coordinator and output options.
        #[command(flatten)]
        target: Target,
    },
    /// Connect as a user and stream its connection count (this connection
    /// counts too), plus the status of any users given with --subscribe.
    Watch {
        /// The user to connect as.
        user_id: String,
        /// Also stream the status of these users (comma-separated).
        #[arg(long, value_delimiter = ',')]
        subscribe: Vec<String>,
        /// The device class this connection declares (web, mobile, desktop or a short label).
        #[arg(long)]
        device: Option<String>,
        /// How to authenticate as the user.
        #[command(flatten)]
        auth: AsUser,
        /// Coordinator and output options.
        #[command(flatten)]
        target: Target,
    },
    /// Set a user's availability and status text (connects as the user
    /// briefly, sets it, and waits until the cluster reports it).
    SetStatus {
        /// The user.
        user_id: String,
        /// available, away, busy or invisible (available with no text clears it).
        availability: String,
        /// A short status text (at most 128 characters).
        #[arg(long)]
        text: Option<String>,
        /// How long it holds, in seconds (at most a week); forever when not given.
        #[arg(long = "for")]
        for_secs: Option<u64>,
        /// How to authenticate as the user.
        #[command(flatten)]
        auth: AsUser,
        /// Coordinator and output options.
        #[command(flatten)]
        target: Target,
    },
    /// Unique users this hour and today, and today's peak of connections.
    Stats {
        /// Coordinator and output options.
        #[command(flatten)]
        target: Target,
    },
    /// List the live ws-nodes.
    Nodes {
        /// Coordinator and output options.
        #[command(flatten)]
        target: Target,
    },
}

/// The token of a command that connects as a user.
#[derive(Debug, Args)]
pub struct AsUser {
    /// A JWT for the user; default: minted from JWT_SECRET.
    #[arg(long, env = "PRESENCE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Secret to mint the token with when none is given.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, default_value = DEMO_SECRET)]
    pub jwt_secret: String,
}

/// Which coordinator to ask, and how to print.
#[derive(Debug, Args)]
pub struct Target {
    /// The coordinator's admin URL (ADMIN_ADDR; it answers routes too).
    #[arg(long, env = "PRESENCE_COORDINATOR", default_value = "http://127.0.0.1:8081")]
    pub coordinator: String,
    /// The admin API key, when the coordinator has one.
    #[arg(long, env = "ADMIN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `presence demo` options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of ws-nodes (default 3; 1 with --join).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub nodes: Option<u16>,
    /// Add ws-nodes to a demo already running on the same Redis and Kafka, instead of starting a cluster.
    #[arg(long)]
    pub join: bool,
    /// Coordinator listen address (a free port is used if it is taken).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Coordinator admin address: dashboard, /nodes, /ring, /metrics, /presence (loopback only without a key).
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:8081")]
    pub admin_listen: SocketAddr,
    /// The try-it page (it hands out development tokens to anyone: keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:8082")]
    pub try_listen: SocketAddr,
    /// Key the admin listener asks for (at least 16 bytes).
    #[arg(long, env = "ADMIN_API_KEY", hide_env_values = true)]
    pub admin_api_key: Option<String>,
    /// Port of the first ws-node; the others follow.
    #[arg(long, default_value_t = 9001)]
    pub node_port: u16,
    /// HS256 secret for client tokens.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, default_value = DEMO_SECRET)]
    pub jwt_secret: String,
    /// Redis to run on instead of the embedded store (one URL, or a comma-separated cluster list).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Kafka brokers to run on instead of the embedded bus.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
}

/// Runs a parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(args) => demo(args).await,
        Command::Token { user_id, ttl, jwt_secret } => {
            presence_model::UserId::parse(&user_id).context("user ID")?;
            println!("{}", presence_model::auth::mint_hs256(jwt_secret.as_bytes(), &user_id, ttl));
            Ok(())
        }
        Command::Route { user_id, target } => {
            let r = client(&target)?.route(&user_id).await?;
            if target.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{}  vnode {}  ->  {}  {}  (epoch {}{})",
                    r.user_id,
                    r.vnode,
                    r.node_id.as_deref().unwrap_or("-"),
                    r.url.as_deref().unwrap_or("-"),
                    r.epoch,
                    if r.stale { ", stale" } else { "" }
                );
            }
            Ok(())
        }
        Command::Status { user_ids, target } => {
            let ids: Vec<&str> = user_ids.iter().map(String::as_str).collect();
            let users = client(&target)?.status(&ids).await?;
            if target.json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                for u in users {
                    println!("{}", describe(&u));
                }
            }
            Ok(())
        }
        Command::Watch { user_id, subscribe, device, auth, target } => {
            watch(&user_id, &subscribe, device, auth, &target).await
        }
        Command::SetStatus { user_id, availability, text, for_secs, auth, target } => {
            let availability = presence_model::Availability::parse(&availability)
                .context("availability: expected available, away, busy or invisible")?;
            let expires = for_secs.map(Duration::from_secs);
            set_status(&user_id, availability, text, expires, auth, &target).await
        }
        Command::Stats { target } => {
            let stats = client(&target)?.stats().await?;
            if target.json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!(
                    "unique users: {} this hour, {} today\npeak connections today: {}\nnow: {} connections, {} users",
                    stats.unique_users_hour,
                    stats.unique_users_day,
                    stats.peak_connections_day,
                    stats.connections,
                    stats.users
                );
            }
            Ok(())
        }
        Command::Nodes { target } => {
            let nodes = client(&target)?.nodes().await?;
            if target.json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                print!("{}", nodes_table(&nodes));
            }
            Ok(())
        }
    }
}

/// `presence nodes` as a table whose columns fit the longest ID and URL.
pub fn nodes_table(nodes: &[presence_model::api::NodeView]) -> String {
    use std::fmt::Write;
    let id = nodes.iter().map(|n| n.id.chars().count()).max().unwrap_or(0).max("NODE".len());
    let url = nodes.iter().map(|n| n.url.chars().count()).max().unwrap_or(0).max("URL".len());
    let mut s = String::new();
    let _ =
        writeln!(s, "{:<id$}  {:<url$}  {:>6} {:>6} {:>6} {:>8}", "NODE", "URL", "VNODES", "CONNS", "USERS", "HB AGE");
    for n in nodes {
        let _ = writeln!(
            s,
            "{:<id$}  {:<url$}  {:>6} {:>6} {:>6} {:>6}ms{}",
            n.id,
            n.url,
            n.vnodes,
            n.connections,
            n.users,
            n.heartbeat_age_ms,
            if n.draining { "  draining" } else { "" }
        );
    }
    s
}

/// One user's presence on one line: state, connections per device, idleness, availability.
fn describe(u: &presence_model::api::PresenceView) -> String {
    let mut line = format!(
        "{:<24} {:<8} connections {:<4}",
        u.user_id,
        if u.online { "online" } else { "offline" },
        u.connections
    );
    if !u.devices.is_empty() {
        let devices: Vec<String> = u.devices.iter().map(|(d, n)| format!("{d}={n}")).collect();
        line.push_str(&format!(" [{}]", devices.join(" ")));
    }
    if u.idle {
        line.push_str(" idle");
    }
    if u.availability != presence_model::Availability::Available || u.status_text.is_some() {
        line.push_str(&format!(" {}", u.availability.as_str()));
        if let Some(t) = &u.status_text {
            line.push_str(&format!(" \"{t}\""));
        }
    }
    match (u.online, u.last_seen) {
        (true, _) => {}
        (false, Some(ms)) => line.push_str(&format!(" lastSeen {ms}")),
        (false, None) => line.push_str(" lastSeen never"),
    }
    if let Some(r) = u.reason {
        line.push_str(&format!(" ({})", r.as_str()));
    }
    line
}

/// Tokens for `user`: the one given, or minted from the secret.
fn tokens_for(user: &str, auth: AsUser) -> presence_client::TokenSource {
    use presence_client::TokenSource;
    match auth.token {
        Some(t) => TokenSource::fixed(t),
        None => {
            let (secret, user) = (auth.jwt_secret, user.to_string());
            TokenSource::callback(move |_| {
                let t = presence_model::auth::mint_hs256(secret.as_bytes(), &user, 3600);
                async move { Ok(t) }
            })
        }
    }
}

async fn set_status(
    user: &str,
    availability: presence_model::Availability,
    text: Option<String>,
    expires: Option<Duration>,
    auth: AsUser,
    target: &Target,
) -> anyhow::Result<()> {
    use presence_client::{Client, ConnectOptions, Event};
    presence_model::UserId::parse(user).context("user ID")?;
    let client = Client::new(&target.coordinator)?;
    let mut session = client.connect(user, ConnectOptions::new(tokens_for(user, auth))).await?;
    // The user's own status says when the cluster has it.
    session.subscribe(&[user]).await?;
    session.set_status(availability, text.as_deref(), expires).await?;
    let wanted = |e: &Event| match e {
        Event::Status(v) => v.availability == availability && v.status_text == text,
        _ => false,
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = session.next_event().await {
            match e {
                Event::Error { code, message } => anyhow::bail!("{code}: {message}"),
                e if wanted(&e) => return Ok(()),
                _ => {}
            }
        }
        anyhow::bail!("the session ended before the status was confirmed")
    })
    .await;
    session.close().await;
    outcome.map_err(|_| anyhow::anyhow!("no confirmation within 10 s"))??;
    println!("{user}: {}{}", availability.as_str(), text.map(|t| format!(" \"{t}\"")).unwrap_or_default());
    Ok(())
}

async fn watch(
    user: &str,
    subscribe: &[String],
    device: Option<String>,
    auth: AsUser,
    target: &Target,
) -> anyhow::Result<()> {
    use presence_client::{Client, ConnectOptions, Event, ReconnectReason};
    use std::io::Write;
    presence_model::UserId::parse(user).context("user ID")?;
    let client = Client::new(&target.coordinator)?;
    let mut options = ConnectOptions::new(tokens_for(user, auth));
    options.device = device;
    let mut session = client.connect(user, options).await?;
    if !subscribe.is_empty() {
        let ids: Vec<&str> = subscribe.iter().map(String::as_str).collect();
        session.subscribe(&ids).await?;
    }
    let stop = CancellationToken::new();
    presence_runtime::signal::on_shutdown_signal(stop.clone());
    let plural = |n: u64| if n == 1 { "connection" } else { "connections" };
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            e = session.next_event() => match e {
                Some(e) => e,
                None => break,
            },
        };
        let line = if target.json {
            serde_json::to_string(&event_json(&event))?
        } else {
            match &event {
                Event::Welcome { node_id, connections, .. } => {
                    format!("{user}: {connections} {} (connected to {node_id})", plural(*connections))
                }
                Event::Count { connections } => format!("{user}: {connections} {}", plural(*connections)),
                Event::Status(v) => describe(v),
                Event::Reconnecting { reason: ReconnectReason::Handoff { url }, .. } => format!("moving to {url}"),
                Event::Reconnecting { reason: ReconnectReason::TokenExpired, .. } => {
                    "token expired; refreshing".to_string()
                }
                Event::Reconnecting { reason: ReconnectReason::Dropped { cause }, delay, .. } => {
                    format!("reconnecting in {} ms ({cause})", delay.as_millis())
                }
                Event::Error { code, message } => format!("error {code}: {message}"),
            }
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    session.close().await;
    Ok(())
}

/// An event as one JSON object (`presence watch --json`).
fn event_json(e: &presence_client::Event) -> serde_json::Value {
    use presence_client::{Event, ReconnectReason};
    match e {
        Event::Welcome { node_id, connection_id, epoch, connections } => serde_json::json!({
            "type": "welcome", "nodeId": node_id, "connectionId": connection_id, "epoch": epoch, "connections": connections
        }),
        Event::Count { connections } => serde_json::json!({"type": "count", "connections": connections}),
        Event::Status(v) => {
            let mut v = serde_json::to_value(v).unwrap_or_default();
            v["type"] = "status".into();
            v
        }
        Event::Reconnecting { reason, attempt, delay } => {
            let (why, detail) = match reason {
                ReconnectReason::Handoff { url } => ("handoff", url.clone()),
                ReconnectReason::Dropped { cause } => ("dropped", cause.clone()),
                ReconnectReason::TokenExpired => ("token_expired", String::new()),
            };
            serde_json::json!({"type": "reconnecting", "reason": why, "detail": detail, "attempt": attempt, "delayMs": delay.as_millis() as u64})
        }
        Event::Error { code, message } => serde_json::json!({"type": "error", "code": code, "message": message}),
    }
}

fn client(target: &Target) -> anyhow::Result<CoordinatorClient> {
    let c = CoordinatorClient::new(&target.coordinator)?.with_timeout(Duration::from_secs(5));
    Ok(match &target.api_key {
        Some(key) => c.with_api_key(key)?,
        None => c,
    })
}

/// The demo's admin key, checked the way the coordinator checks its own
/// flags: beyond loopback the admin listener needs one.
fn demo_admin_key(args: &DemoArgs) -> anyhow::Result<Option<presence_coordinator::admin::AdminKey>> {
    let key = args.admin_api_key.as_deref().map(presence_coordinator::admin::AdminKey::new).transpose();
    let key = key.map_err(|e| anyhow::anyhow!("--admin-api-key/ADMIN_API_KEY: {e}"))?;
    if key.is_none() && !args.admin_listen.ip().is_loopback() {
        anyhow::bail!("--admin-listen/ADMIN_ADDR: beyond loopback the admin listener needs ADMIN_API_KEY");
    }
    Ok(key)
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    if args.join {
        return join(args).await;
    }
    let mut config = ClusterConfig::demo(args.nodes.unwrap_or(3) as usize, &args.jwt_secret);
    config.coordinator_addr = args.listen;
    config.admin_addr = args.admin_listen;
    config.try_addr = args.try_listen;
    config.coordinator.admin_key = demo_admin_key(&args)?;
    config.first_node_port = args.node_port;
    config.host = args.listen.ip().to_string();
    let backends = presence_runtime::backends::connect(&presence_runtime::backends::BackendConfig {
        redis_url: args.redis_url.clone(),
        kafka_brokers: args.kafka_brokers.clone(),
        client_id: "demo".into(),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    let (store_kind, bus_kind) = (backends.store.kind(), backends.bus.kind());
    let cluster = Cluster::start_on(config, backends.store, backends.bus).await?;
    cluster.wait_settled(Duration::from_secs(15)).await?;
    print!("{}", banner(&cluster, &args.jwt_secret, store_kind, bus_kind));
    let stop = CancellationToken::new();
    presence_runtime::signal::on_shutdown_signal(stop.clone());
    stop.cancelled().await;
    println!("\nstopping: closing client connections and writing final counts...");
    cluster.shutdown().await;
    Ok(())
}

/// `presence demo --join`: more nodes for a demo running on Redis and Kafka.
async fn join(args: DemoArgs) -> anyhow::Result<()> {
    let (Some(redis_url), Some(kafka_brokers)) = (args.redis_url.clone(), args.kafka_brokers.clone()) else {
        let mut p = presence_runtime::config::Problems::new();
        let why = "`presence demo --join` adds nodes to a demo that runs on Redis and Kafka; give it the same REDIS_URL and KAFKA_BROKERS";
        p.require("--redis-url/REDIS_URL", args.redis_url.as_deref(), why);
        p.require("--kafka-brokers/KAFKA_BROKERS", args.kafka_brokers.as_deref(), why);
        if let Err(e) = p.finish() {
            e.exit();
        }
        unreachable!("a missing setting was reported");
    };
    let backends = presence_runtime::backends::connect(&presence_runtime::backends::BackendConfig {
        redis_url: Some(redis_url),
        kafka_brokers: Some(kafka_brokers),
        client_id: "demo-join".into(),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    let mut config = ClusterConfig::demo(args.nodes.unwrap_or(1) as usize, &args.jwt_secret);
    config.first_node_port = 0;
    config.host = args.listen.ip().to_string();
    let joined = crate::cluster::Joined::start(&config, backends.store, backends.bus).await?;
    println!("\njoined {} ws-node(s) to the cluster:", joined.nodes.len());
    for n in &joined.nodes {
        println!("  {:<16} {}   (metrics {}/metrics)", n.node.config.node_id, n.url, n.http_url);
    }
    println!("\nThe coordinator gives them vnodes within a second; watch the ring move on the dashboard");
    println!("or with `presence nodes`. Stop with Ctrl-C: the nodes drain and hand their users back.");
    let stop = CancellationToken::new();
    presence_runtime::signal::on_shutdown_signal(stop.clone());
    stop.cancelled().await;
    joined.shutdown().await;
    Ok(())
}

/// What the demo prints once the cluster is up.
pub fn banner(cluster: &Cluster, secret: &str, store: &str, bus: &str) -> String {
    use std::fmt::Write;
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "presence".into());
    let (c, admin) = (&cluster.coordinator_url, &cluster.admin_url);
    let token = presence_model::auth::mint_hs256(secret.as_bytes(), "alice", 86_400);
    let alice = cluster
        .coordinator
        .table
        .get()
        .and_then(|t| t.owner("alice").map(|n| n.url.clone()))
        .unwrap_or_else(|| cluster.nodes[0].url.clone());
    let backends = if store == "memory" && bus == "memory" {
        "embedded in-memory store and bus".to_string()
    } else {
        format!("store: {store}, bus: {bus}")
    };
    let mut s = String::new();
    let _ = writeln!(s, "\npresence demo: 1 coordinator + {} ws-nodes, {backends}\n", cluster.nodes.len());
    let width = cluster.nodes.iter().map(|n| n.node.config.node_id.len()).max().unwrap_or(0).max("coordinator".len());
    let _ = writeln!(s, "  {:<width$}  {c}   (public: /route, /healthz, /readyz)", "coordinator");
    let _ = writeln!(s, "  {:<width$}  {admin}   (private: /nodes, /ring, /presence, /metrics)", "admin");
    let _ = writeln!(s, "  {:<width$}  {admin}/", "dashboard");
    let _ = writeln!(s, "  {:<width$}  {}   (open it in two or three tabs: each is a user)", "try it", cluster.try_url);
    for n in &cluster.nodes {
        let _ = writeln!(s, "  {:<width$}  {}   (metrics {}/metrics)", n.node.config.node_id, n.url, n.http_url);
    }
    let _ = writeln!(s, "\nInspect the cluster (another terminal):");
    let _ = writeln!(s, "  alias presence='{exe}'");
    let _ = writeln!(s, "  presence nodes --coordinator {admin}");
    let _ = writeln!(s, "  presence route alice --coordinator {admin}");
    let _ = writeln!(s, "  presence status alice bob --coordinator {admin}");
    let _ = writeln!(s, "  presence watch bob --device mobile --subscribe alice --coordinator {admin}");
    let _ = writeln!(s, "  presence set-status alice busy --text 'In a meeting' --for 3600 --coordinator {admin}");
    let _ = writeln!(s, "  presence stats --coordinator {admin}");
    let _ =
        writeln!(s, "  curl '{c}/route?userId=alice'    curl '{admin}/presence?userId=alice'    curl '{admin}/ring'");
    if cluster.coordinator.config.admin_key.is_some() {
        let _ = writeln!(
            s,
            "  (the admin listener asks for ADMIN_API_KEY: curl -H \"Authorization: Bearer $ADMIN_API_KEY\" ...)"
        );
    }
    let _ = writeln!(
        s,
        "\nConnect as alice (token valid 24 h, HS256 with JWT_SECRET{}):",
        if secret == DEMO_SECRET { " = the demo secret" } else { "" }
    );
    let _ = writeln!(s, "  TOKEN={token}");
    let _ = writeln!(s, "  websocat \"{alice}?token=$TOKEN\"");
    let _ = writeln!(s, "  then send: {{\"type\":\"subscribe\",\"userIds\":[\"bob\"]}}   {{\"type\":\"ping\"}}");
    let _ = writeln!(
        s,
        "  more tokens: presence token <userId>   (connect to the URL that `presence route <userId>` prints)"
    );
    if store == "memory" {
        let _ = writeln!(s, "\nAdd nodes: restart with --nodes N; or run on Redis and Kafka (set REDIS_URL and");
        let _ = writeln!(s, "KAFKA_BROKERS) and run `presence demo --join` in another terminal to add nodes live.");
    } else {
        let _ = writeln!(s, "\nAdd nodes live (another terminal, same REDIS_URL and KAFKA_BROKERS):");
        let _ = writeln!(s, "  presence demo --join --nodes 2");
    }
    let _ = writeln!(s, "Stop with Ctrl-C.");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_model::api::NodeView;

    fn node(id: &str, url: &str) -> NodeView {
        NodeView {
            id: id.into(),
            url: url.into(),
            capacity: 1,
            connections: 12,
            users: 3,
            vnodes: 1365,
            pinned: 0,
            draining: false,
            last_heartbeat: 0,
            heartbeat_age_ms: 250,
        }
    }

    #[test]
    fn node_columns_line_up_whatever_the_id_length() {
        let nodes = [
            node("n1", "ws://127.0.0.1:9001/socket"),
            node("presence-ws-node-7d9f8b6c5-x2kqz", "ws://10.12.3.4:9000/socket"),
        ];
        let table = nodes_table(&nodes);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = |l: &str| l.find("ws://").or_else(|| l.find("URL")).expect("url column");
        assert!(lines.iter().all(|l| col(l) == col(lines[0])), "{table}");
        let vn = |l: &str| l.find("1365").or_else(|| l.find("VNODES").map(|i| i + 2)).expect("vnodes column");
        assert!(lines.iter().all(|l| vn(l) == vn(lines[0])), "{table}");
    }
}
