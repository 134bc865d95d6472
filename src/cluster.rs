//! A whole cluster in one process: one coordinator and N ws-nodes sharing a
//! store and a bus. The demo runs it on fixed ports; tests on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use presence_backend::{Bus, MemoryBus, MemoryStore, Store};
use presence_coordinator::{Coordinator, CoordinatorConfig};
use presence_model::auth::{ClaimChecks, Verifier};
use presence_ws_node::{Node, NodeConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Number of ws-nodes.
    pub nodes: usize,
    /// Coordinator public listen address (port 0: any free port).
    pub coordinator_addr: SocketAddr,
    /// Coordinator admin listen address (dashboard, `/nodes`, `/presence`...).
    pub admin_addr: SocketAddr,
    /// The try-it page's address (`/try`, demo only: it hands out tokens).
    pub try_addr: SocketAddr,
    /// Port of the first node (the others follow); 0: any free ports.
    pub first_node_port: u16,
    /// Host the nodes bind and advertise.
    pub host: String,
    /// HS256 secret for client tokens.
    pub jwt_secret: String,
    /// Leeway for token expiry (`None`: the default 30 s).
    pub jwt_leeway_secs: Option<u64>,
    /// Timings and limits for the nodes (ID and URL are filled in per node).
    pub node: NodeConfig,
    /// Coordinator settings.
    pub coordinator: CoordinatorConfig,
}

impl ClusterConfig {
    /// The demo's defaults: coordinator on 8080 (admin 8081), nodes on 9001.., production timings.
    pub fn demo(nodes: usize, jwt_secret: &str) -> Self {
        Self {
            nodes,
            coordinator_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            try_addr: SocketAddr::from(([127, 0, 0, 1], 8082)),
            first_node_port: 9001,
            host: "127.0.0.1".into(),
            jwt_secret: jwt_secret.into(),
            jwt_leeway_secs: None,
            node: NodeConfig::new("", ""),
            coordinator: CoordinatorConfig::new(),
        }
    }

    /// Port 0 everywhere and fast timings, for tests.
    pub fn for_tests(nodes: usize, jwt_secret: &str) -> Self {
        let mut c = Self::demo(nodes, jwt_secret);
        c.coordinator_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        c.admin_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        c.try_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        c.first_node_port = 0;
        c.node.heartbeat_interval = Duration::from_millis(100);
        c.node.node_ttl = Duration::from_millis(1000);
        c.node.table_poll = Duration::from_millis(200);
        c.node.handoff_timeout = Duration::from_secs(2);
        c.node.auth_timeout = Duration::from_millis(800);
        c.coordinator.tick = Duration::from_millis(100);
        c.coordinator.lease_ttl = Duration::from_secs(1);
        c.coordinator.table_poll = Duration::from_millis(200);
        c
    }
}

/// A node the cluster started.
pub struct RunningNode {
    /// The node's state (for inspection).
    pub node: Arc<Node>,
    /// Its WebSocket URL.
    pub url: String,
    /// Its HTTP base URL (`/healthz`, `/metrics`).
    pub http_url: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// A running cluster.
pub struct Cluster {
    /// The coordinator's public base URL (`/route`).
    pub coordinator_url: String,
    /// The coordinator's admin base URL (dashboard, `/nodes`, `/ring`, `/metrics`, `/presence`).
    pub admin_url: String,
    /// The try-it page (`crate::try_page`).
    pub try_url: String,
    /// The coordinator's state.
    pub coordinator: Arc<Coordinator>,
    /// The nodes, in start order.
    pub nodes: Vec<RunningNode>,
    config: ClusterConfig,
    verifier: Arc<Verifier>,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    stop: CancellationToken,
    coordinator_task: JoinHandle<()>,
}

/// The token verifier of a cluster's nodes.
fn verifier(config: &ClusterConfig) -> anyhow::Result<Arc<Verifier>> {
    let checks = ClaimChecks { leeway_secs: config.jwt_leeway_secs, ..ClaimChecks::default() };
    Ok(Arc::new(Verifier::hs256(config.jwt_secret.as_bytes(), &checks).context("JWT secret")?))
}

/// Starts node number `i` (1-based, for its port) with ID `id`, stopped by `stop`.
async fn spawn_node(
    config: &ClusterConfig,
    id: &str,
    i: usize,
    verifier: &Arc<Verifier>,
    store: &Arc<dyn Store>,
    bus: &Arc<dyn Bus>,
    stop: &CancellationToken,
) -> anyhow::Result<RunningNode> {
    let port = if config.first_node_port == 0 { 0 } else { config.first_node_port + i as u16 - 1 };
    let addr: SocketAddr = format!("{}:{port}", config.host).parse().context("node address")?;
    let listener = bind_or_any(addr).await?;
    let local = listener.local_addr()?;
    let mut node_config = config.node.clone();
    node_config.node_id = id.to_string();
    node_config.public_url = format!("ws://{local}/socket");
    let node = Node::start(node_config, verifier.clone(), store.clone(), bus.clone()).await;
    let stop = stop.child_token();
    let task = tokio::spawn(presence_ws_node::run(listener, node.clone(), stop.clone()));
    Ok(RunningNode { url: node.config.public_url.clone(), http_url: format!("http://{local}"), node, stop, task })
}

/// Nodes that joined a cluster running elsewhere (`presence demo --join`).
pub struct Joined {
    /// The nodes.
    pub nodes: Vec<RunningNode>,
    stop: CancellationToken,
}

impl Joined {
    /// Starts `config.nodes` ws-nodes on shared backends (Redis and Kafka); the
    /// cluster's coordinator gives them vnodes. IDs get a random part so that
    /// several joins do not collide.
    pub async fn start(config: &ClusterConfig, store: Arc<dyn Store>, bus: Arc<dyn Bus>) -> anyhow::Result<Self> {
        let verifier = verifier(config)?;
        let stop = CancellationToken::new();
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let mut nodes = Vec::new();
        for i in 1..=config.nodes {
            nodes.push(spawn_node(config, &format!("join-{tag}-{i}"), i, &verifier, &store, &bus, &stop).await?);
        }
        Ok(Self { nodes, stop })
    }

    /// Drains every joined node (clients move to the remaining nodes), then stops them.
    pub async fn shutdown(self) {
        for n in &self.nodes {
            n.node.drain().await;
        }
        self.stop.cancel();
        for n in self.nodes {
            let _ = n.task.await;
        }
    }
}

/// Binds `addr`, or any free port on the same host when it is taken.
async fn bind_or_any(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    match presence_http::bind(addr) {
        Ok(l) => Ok(l),
        Err(e) if addr.port() != 0 => {
            tracing::warn!(%addr, error = %e, "port taken; using a free one");
            Ok(presence_http::bind(SocketAddr::new(addr.ip(), 0))?)
        }
        Err(e) => Err(e).with_context(|| format!("binding {addr}")),
    }
}

impl Cluster {
    /// Starts a cluster on the embedded store and bus.
    pub async fn start(config: ClusterConfig) -> anyhow::Result<Self> {
        Self::start_on(config, Arc::new(MemoryStore::new()), Arc::new(MemoryBus::default())).await
    }

    /// Starts a cluster on the given backends. The nodes register before the
    /// coordinator's first round, so the first table already spreads the vnodes.
    pub async fn start_on(config: ClusterConfig, store: Arc<dyn Store>, bus: Arc<dyn Bus>) -> anyhow::Result<Self> {
        let verifier = verifier(&config)?;
        let public = bind_or_any(config.coordinator_addr).await?;
        let coordinator_url = format!("http://{}", public.local_addr()?);
        let admin = bind_or_any(config.admin_addr).await?;
        let admin_url = format!("http://{}", admin.local_addr()?);
        let try_listener = bind_or_any(config.try_addr).await?;
        let try_url = format!("http://{}/try", try_listener.local_addr()?);
        let stop = CancellationToken::new();
        let page = crate::try_page::TryPage::new(&config.jwt_secret, &coordinator_url);
        tokio::spawn(page.serve(try_listener, stop.clone()));
        let mut nodes = Vec::new();
        for i in 1..=config.nodes {
            nodes.push(spawn_node(&config, &format!("node-{i}"), i, &verifier, &store, &bus, &stop).await?);
        }
        let coordinator = Coordinator::new(config.coordinator.clone(), store.clone(), bus.clone());
        let listeners = presence_coordinator::Listeners { public, admin };
        let coordinator_task = tokio::spawn(presence_coordinator::run(listeners, coordinator.clone(), stop.clone()));
        Ok(Self {
            coordinator_url,
            admin_url,
            try_url,
            coordinator,
            nodes,
            config,
            verifier,
            store,
            bus,
            stop,
            coordinator_task,
        })
    }

    /// Starts one more node; it joins through the coordinator like any other.
    pub async fn add_node(&mut self) -> anyhow::Result<&RunningNode> {
        let i = self.nodes.len() + 1;
        let node =
            spawn_node(&self.config, &format!("node-{i}"), i, &self.verifier, &self.store, &self.bus, &self.stop)
                .await?;
        self.nodes.push(node);
        self.nodes.last().context("node just added")
    }

    /// Stops node `i` cleanly (its clients are closed with 1001 and counted out at once).
    pub async fn stop_node(&mut self, i: usize) {
        let n = self.nodes.remove(i);
        n.stop.cancel();
        let _ = n.task.await;
    }

    /// Waits until the table lists every node and every node holds the coordinator's epoch.
    pub async fn wait_settled(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(t) = self.coordinator.table.get() {
                let all_listed = self.nodes.iter().all(|n| t.node(&n.node.config.node_id).is_some())
                    && t.counts().iter().all(|&c| c > 0)
                    && t.nodes.len() == self.nodes.len();
                let all_current = self.nodes.iter().all(|n| n.node.table.epoch() == t.epoch);
                if all_listed && all_current {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("cluster did not settle within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The settings the next [`Cluster::add_node`] uses (tests pin vnodes, change timings).
    pub fn config_mut(&mut self) -> &mut ClusterConfig {
        &mut self.config
    }

    /// The shared store (tests inspect it).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Stops everything: nodes close their clients, the coordinator gives up its lease.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for n in self.nodes {
            let _ = n.task.await;
        }
        let _ = self.coordinator_task.await;
    }
}
