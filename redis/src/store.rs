//! [`RedisStore`]: the [`Store`] on Redis.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use futures_util::StreamExt;
use presence_backend::{Activity, CountUpdate, Live, LiveFeed, Registration, Store, StoreError};
use presence_model::rich::sum_shares;
use presence_model::{
    Availability, EventReason, NodeRecord, Presence, PresenceChange, RoutingTable, Share, TableVersion, UserId,
    UserStatus, Vnode, VNODES,
};
use redis::aio::ConnectionLike;
use redis::{AsyncCommands, RedisError, RedisResult};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::keys::Keys;
use crate::scripts::Scripts;

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`; several (or `cluster`) for a Redis Cluster.
    pub urls: Vec<String>,
    /// Use the cluster client (implied by more than one URL).
    pub cluster: bool,
    /// Key prefix (and hash tag) for every key.
    pub prefix: String,
    /// Time allowed for one operation before it counts as a failure.
    pub op_timeout: Duration,
    /// How long an offline user's record (lastSeen) is kept.
    pub retention: Duration,
    /// TLS files for `rediss://` URLs (`docs/security.md`).
    pub tls: TlsFiles,
}

/// Certificates for Redis over TLS (`rediss://`). Without a CA file the
/// system's trust store is used (`SSL_CERT_FILE` and `SSL_CERT_DIR` are
/// honoured); a client certificate and key are for servers that ask for one
/// (`tls-auth-clients yes`).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// PEM file of the CA(s) that signed the server's certificate.
    pub ca: Option<std::path::PathBuf>,
    /// PEM client certificate (mutual TLS), with [`key`](Self::key).
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key of the client certificate.
    pub key: Option<std::path::PathBuf>,
}

impl TlsFiles {
    /// The certificates as the Redis client takes them, files read now;
    /// `None` when nothing is configured (the system trust store applies).
    fn load(&self) -> Result<Option<redis::TlsCertificates>, StoreError> {
        let read = |what: &str, path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| StoreError::Unavailable(format!("reading the Redis TLS {what} {}: {e}", path.display())))
        };
        let root_cert = self.ca.as_deref().map(|p| read("CA file", p)).transpose()?;
        let client_tls = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                Some(redis::ClientTlsConfig { client_cert: read("certificate", c)?, client_key: read("key", k)? })
            }
            (None, None) => None,
            _ => return Err(StoreError::Unavailable("a Redis TLS client certificate needs its key, and back".into())),
        };
        Ok((root_cert.is_some() || client_tls.is_some()).then_some(redis::TlsCertificates { client_tls, root_cert }))
    }
}

impl RedisConfig {
    /// Defaults for these URLs: prefix `presence`, 2 s operations, 30-day retention.
    pub fn new(urls: Vec<String>) -> Self {
        let cluster = urls.len() > 1;
        Self {
            urls,
            cluster,
            prefix: "presence".into(),
            op_timeout: Duration::from_secs(2),
            retention: Duration::from_secs(30 * 24 * 3600),
            tls: TlsFiles::default(),
        }
    }

    /// Reads `REDIS_URL` syntax: one URL, or a comma-separated list for a cluster.
    pub fn parse(value: &str) -> Self {
        Self::new(value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
    }
}

/// The Redis store, over any multiplexed async connection (single or cluster).
pub struct RedisStore<C> {
    conn: C,
    keys: Keys,
    scripts: Scripts,
    notices: watch::Sender<u64>,
    op_timeout: Duration,
    retention_ms: u64,
    kind: &'static str,
    /// A Redis Cluster: changes are published with `SPUBLISH`.
    cluster: bool,
    /// Where live feeds connect.
    feeds: crate::live::Source,
    /// Stops the notice listener when the store goes away.
    _listener: DropGuard,
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// An offline reason as stored (`or` field, or a script's reply): empty is none.
fn reason_of(s: &str) -> Option<EventReason> {
    (!s.is_empty()).then(|| serde_json::from_value(serde_json::Value::String(s.to_string())).ok()).flatten()
}

/// A presence script's answer, (previous total, presence JSON), as a change.
fn change_of(script: &str, (previous, json): (u64, String)) -> Result<PresenceChange, StoreError> {
    let presence: Presence =
        serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("{script} returned {json:?}: {e}")))?;
    Ok(PresenceChange { presence, previous })
}

/// How long unique-user counters are kept: an hour's for two days, a day's for 35.
const HOUR_TTL_MS: u64 = 2 * 86_400_000;
const DAY_TTL_MS: u64 = 35 * 86_400_000;

/// A user's presence from the fields of their hash (`keys.rs`): the same
/// sums as `lua/presence.lua` makes (a node without a share counts as all
/// active, device unknown).
fn presence_of_fields(user: &UserId, fields: Vec<(String, String)>) -> Presence {
    let mut p = Presence::unknown(user.clone());
    let mut counts: Vec<(String, u32)> = Vec::new();
    let mut shares: std::collections::HashMap<String, Share> = std::collections::HashMap::new();
    let (mut status, mut invisible_since) = (None::<UserStatus>, None::<u64>);
    for (k, v) in fields {
        if let Some(node) = k.strip_prefix("n:") {
            counts.push((node.to_string(), v.parse().unwrap_or(0)));
        } else if let Some(node) = k.strip_prefix("d:") {
            if let Some(s) = Share::decode(&v) {
                shares.insert(node.to_string(), s);
            }
        } else if k == "seq" {
            p.seq = v.parse().unwrap_or(0);
        } else if k == "ls" {
            p.last_seen = v.parse().ok();
        } else if k == "or" {
            p.reason = reason_of(&v);
        } else if k == "st" {
            status = serde_json::from_str(&v).ok();
        } else if k == "iv" {
            invisible_since = v.parse().ok();
        }
    }
    p.connections = counts.iter().map(|(_, n)| u64::from(*n)).sum();
    let parts: Vec<Share> =
        counts.into_iter().map(|(node, n)| shares.remove(&node).unwrap_or_else(|| Share::plain(n))).collect();
    (p.devices, p.idle_since) = sum_shares(p.connections, &parts);
    p.status = status.map(|s| Box::new(UserStatus { invisible_since, ..s }));
    if p.online() {
        p.reason = None;
    }
    p
}

/// How long the count-out marker outlives the count-out: longer than any
/// plausible partition of the node it concerns.
const PURGED_MARKER_MS: u64 = 86_400_000;

/// Connects to Redis (or a Redis Cluster) and starts the table-notice listener.
/// A single Redis connects lazily and reconnects by itself, so a node can start
/// while Redis is down; a cluster needs one reachable node to learn the slots.
pub async fn connect(config: &RedisConfig) -> Result<Arc<dyn Store>, StoreError> {
    let first = config.urls.first().ok_or_else(|| StoreError::Unavailable("no Redis URL given".into()))?;
    if config.urls.iter().any(|u| u.starts_with("rediss://")) {
        // rustls needs one process-wide crypto provider; this build carries
        // ring. Installing fails harmlessly when one is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let certs = config.tls.load()?;
    let notice_client = client(first, certs.as_ref()).map_err(unavailable)?;
    let feeds = crate::live::Source::new(&config.urls, config.cluster, certs.clone(), config.op_timeout);
    if config.cluster {
        let client =
            cluster_builder(&config.urls, certs.as_ref(), config.op_timeout).retries(2).build().map_err(unavailable)?;
        let conn = client.get_async_connection().await.map_err(unavailable)?;
        Ok(Arc::new(RedisStore::new(conn, notice_client, config, feeds)))
    } else {
        let mgr_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.op_timeout))
            .set_response_timeout(Some(config.op_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(notice_client.clone(), mgr_config)
            .map_err(unavailable)?;
        Ok(Arc::new(RedisStore::new(conn, notice_client, config, feeds)))
    }
}

/// A client of one Redis, over TLS with `certs` when given (`rediss://`).
pub(crate) fn client(url: &str, certs: Option<&redis::TlsCertificates>) -> RedisResult<redis::Client> {
    match certs {
        Some(c) => redis::Client::build_with_tls(url, c.clone()),
        None => redis::Client::open(url),
    }
}

/// A Redis Cluster client with the operation timeout and TLS settings; the
/// caller adds what its connection needs.
pub(crate) fn cluster_builder(
    urls: &[String],
    certs: Option<&redis::TlsCertificates>,
    timeout: Duration,
) -> redis::cluster::ClusterClientBuilder {
    let builder = redis::cluster::ClusterClient::builder(urls.iter().map(String::as_str))
        .connection_timeout(timeout)
        .response_timeout(timeout);
    match certs {
        Some(c) => builder.certs(c.clone()),
        None => builder,
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A store on `conn`; `notice_client` subscribes to epoch notices, live
    /// feeds connect through `feeds`.
    pub(crate) fn new(conn: C, notice_client: redis::Client, config: &RedisConfig, feeds: crate::live::Source) -> Self {
        let keys = Keys::new(&config.prefix);
        let notices = watch::channel(0).0;
        let stop = CancellationToken::new();
        tokio::spawn(listen_notices(notice_client, keys.table_channel(), notices.clone(), stop.clone()));
        Self {
            conn,
            keys,
            scripts: Scripts::default(),
            notices,
            op_timeout: config.op_timeout,
            retention_ms: config.retention.as_millis() as u64,
            kind: if config.cluster { "redis-cluster" } else { "redis" },
            cluster: config.cluster,
            feeds,
            _listener: stop.drop_guard(),
        }
    }

    /// Runs one Redis operation under the operation timeout.
    async fn op<T>(&self, f: impl Future<Output = RedisResult<T>>) -> Result<T, StoreError> {
        self.within_timeout(f).await?.map_err(unavailable)
    }

    /// Runs one Redis operation under the operation timeout, leaving Redis's
    /// own answer as it is (for a caller that acts on the kind of error).
    async fn within_timeout<T>(&self, f: impl Future<Output = RedisResult<T>>) -> Result<RedisResult<T>, StoreError> {
        tokio::time::timeout(self.op_timeout, f)
            .await
            .map_err(|_| StoreError::Unavailable(format!("no answer within {:?}", self.op_timeout)))
    }

    /// The `set_count.lua` call for one update.
    fn set_count_call(&self, node_id: &str, u: &CountUpdate, now_ms: u64) -> redis::ScriptInvocation<'_> {
        let v = u.user_id.vnode();
        let mut inv = self.scripts.set_count.prepare_invoke();
        inv.key(self.keys.user(v, u.user_id.as_str()))
            .key(self.keys.node_users(v, node_id))
            .arg(node_id)
            .arg(u.connections)
            .arg(now_ms)
            .arg(u.user_id.as_str())
            .arg(self.retention_ms)
            .arg(u.reason.map_or("", EventReason::as_str))
            .arg(self.keys.channel(v, u.user_id.as_str()))
            .arg(self.publish_command())
            .arg(u.share.encode());
        inv
    }

    async fn set_one(&self, node_id: &str, u: &CountUpdate, now_ms: u64) -> Result<Option<PresenceChange>, StoreError> {
        let mut conn = self.conn.clone();
        let reply: Option<(u64, String)> =
            self.op(self.set_count_call(node_id, u, now_ms).invoke_async(&mut conn)).await?;
        reply.map(|r| change_of("set_count", r)).transpose()
    }

    /// A batch of updates on one Redis as one pipeline: one request and one
    /// read of the replies for the whole batch, where concurrent calls each
    /// took a trip through the multiplexer, a timer and a reply channel (a
    /// fifth of the node's CPU under churn; `BENCHMARKS.md`, eighth
    /// session). The scripts still run one by one, each atomic. A server
    /// that does not know the script (restarted, flushed) refuses every
    /// call of the batch alike; the script is loaded and the batch sent
    /// again, which is safe: each call writes an absolute count.
    async fn set_pipelined(
        &self,
        node_id: &str,
        updates: &[CountUpdate],
        now_ms: u64,
    ) -> Result<Vec<Option<PresenceChange>>, StoreError> {
        let calls: Vec<_> = updates.iter().map(|u| self.set_count_call(node_id, u, now_ms)).collect();
        let mut pipe = redis::pipe();
        for call in &calls {
            pipe.invoke_script(call);
        }
        type Replies = Vec<Option<(u64, String)>>;
        let mut conn = self.conn.clone();
        let replies = match self.within_timeout(pipe.query_async::<Replies>(&mut conn)).await? {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.op(self.scripts.set_count.load_async(&mut conn)).await?;
                self.op(pipe.query_async::<Replies>(&mut conn)).await?
            }
            sent => sent.map_err(unavailable)?,
        };
        if replies.len() != updates.len() {
            return Err(StoreError::Corrupt(format!("{} replies to {} count updates", replies.len(), updates.len())));
        }
        replies.into_iter().map(|r| r.map(|r| change_of("set_count", r)).transpose()).collect()
    }

    fn publish_command(&self) -> &'static str {
        if self.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// May `leader` go on counting `node_id` out (see `lua/purge_check.lua`)?
    async fn purge_check(&self, node_id: &str, leader: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.purge_check.prepare_invoke();
        inv.key(self.keys.leader()).key(self.keys.node(node_id)).arg(leader);
        match self.op(inv.invoke_async::<i64>(&mut conn)).await? {
            -1 => Err(StoreError::NotLeader(leader.to_string())),
            go => Ok(go == 1),
        }
    }

    async fn node_user_set(&self, node_id: &str) -> Result<Vec<UserId>, StoreError> {
        let mut users = Vec::new();
        // 4096 small reads, a chunk at a time over the multiplexed connection:
        // only a resync or a dead node's count-out needs this.
        for chunk in (0..VNODES as Vnode).collect::<Vec<_>>().chunks(512) {
            let reads = chunk.iter().map(|&v| {
                let mut conn = self.conn.clone();
                let key = self.keys.node_users(v, node_id);
                async move { conn.smembers::<_, Vec<String>>(key).await }
            });
            for r in self.op(async { join_all(reads).await.into_iter().collect::<RedisResult<Vec<_>>>() }).await? {
                users.extend(r.into_iter().filter_map(|u| UserId::parse(&u).ok()));
            }
        }
        Ok(users)
    }
}

async fn listen_notices(client: redis::Client, channel: String, notices: watch::Sender<u64>, stop: CancellationToken) {
    loop {
        let session = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                if let Ok(epoch) = msg.get_payload::<u64>() {
                    notices.send_replace(epoch);
                }
            }
            Ok::<(), RedisError>(())
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            r = session => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "table notice subscription lost; readers poll meanwhile");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[async_trait]
impl<C> Store for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.op(redis::cmd("PING").query_async::<String>(&mut conn)).await.map(drop)
    }

    async fn load_table(&self) -> Result<Option<RoutingTable>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = self.op(conn.get(self.keys.table())).await?;
        raw.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("routing table: {e}"))))
            .transpose()
    }

    async fn table_version(&self) -> Result<Option<TableVersion>, StoreError> {
        let mut conn = self.conn.clone();
        let keys = [self.keys.epoch(), self.keys.generation()];
        let (epoch, generation): (Option<u64>, Option<String>) =
            self.op(redis::cmd("MGET").arg(&keys).query_async(&mut conn)).await?;
        Ok(epoch.map(|epoch| TableVersion { epoch, generation: generation.unwrap_or_default() }))
    }

    async fn swap_table(
        &self,
        expected: Option<u64>,
        table: &RoutingTable,
        leader: Option<&str>,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(table).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.swap_table.prepare_invoke();
        inv.key(self.keys.epoch())
            .key(self.keys.table())
            .key(self.keys.generation())
            .key(self.keys.leader())
            .arg(expected.map(|e| e.to_string()).unwrap_or_default())
            .arg(table.epoch)
            .arg(json)
            .arg(self.keys.table_channel())
            .arg(&table.generation)
            .arg(leader.unwrap_or_default());
        let written: i64 = self.op(inv.invoke_async(&mut conn)).await?;
        if written == -1 {
            return Err(StoreError::NotLeader(leader.unwrap_or_default().to_string()));
        }
        if written == 1 {
            // Local readers need not wait for the round trip through pub/sub.
            self.notices.send_replace(table.epoch);
        }
        Ok(written == 1)
    }

    fn table_notices(&self) -> watch::Receiver<u64> {
        self.notices.subscribe()
    }

    async fn heartbeat(&self, node: &NodeRecord, ttl: Duration) -> Result<Registration, StoreError> {
        let json = serde_json::to_string(node).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.heartbeat.prepare_invoke();
        inv.key(self.keys.node(&node.id))
            .key(self.keys.nodes())
            .key(self.keys.purged(&node.id))
            .arg(&node.id)
            .arg(json)
            .arg(ttl.as_millis() as u64)
            .arg(&node.run_id);
        Ok(match self.op(inv.invoke_async::<i64>(&mut conn)).await? {
            0 => Registration::Renewed,
            2 => Registration::Restarted,
            _ => Registration::Fresh,
        })
    }

    async fn deregister(&self, node_id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.op(conn.del::<_, ()>(self.keys.node(node_id))).await
    }

    async fn live_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let mut ids: Vec<String> = self.op(conn.smembers(self.keys.nodes())).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        ids.sort();
        let keys: Vec<String> = ids.iter().map(|id| self.keys.node(id)).collect();
        let raw: Vec<Option<String>> = self.op(redis::cmd("MGET").arg(&keys).query_async(&mut conn)).await?;
        let mut nodes = Vec::new();
        for (id, r) in ids.iter().zip(raw) {
            let Some(r) = r else { continue };
            match serde_json::from_str::<NodeRecord>(&r) {
                Ok(n) => match n.validate() {
                    Ok(()) => nodes.push(n),
                    Err(e) => tracing::warn!(node = %id, error = %e, "invalid node record skipped"),
                },
                Err(e) => tracing::warn!(node = %id, error = %e, "unreadable node record skipped"),
            }
        }
        Ok(nodes)
    }

    async fn set_counts(
        &self,
        node_id: &str,
        updates: &[CountUpdate],
        now_ms: u64,
    ) -> Result<Vec<Option<PresenceChange>>, StoreError> {
        match updates {
            [] => Ok(Vec::new()),
            [one] => Ok(vec![self.set_one(node_id, one, now_ms).await?]),
            // A cluster spreads users over shards: concurrent calls, each
            // routed to its shard, pipeline over the multiplexed connections.
            _ if self.cluster => {
                join_all(updates.iter().map(|u| self.set_one(node_id, u, now_ms))).await.into_iter().collect()
            }
            _ => self.set_pipelined(node_id, updates, now_ms).await,
        }
    }

    async fn node_counts(&self, node_id: &str) -> Result<Vec<(UserId, u32)>, StoreError> {
        let users = self.node_user_set(node_id).await?;
        let field = format!("n:{node_id}");
        let mut out = Vec::with_capacity(users.len());
        for chunk in users.chunks(512) {
            let reads = chunk.iter().map(|u| {
                let mut conn = self.conn.clone();
                let key = self.keys.user(u.vnode(), u.as_str());
                let field = field.clone();
                async move { conn.hget::<_, _, Option<u32>>(key, field).await }
            });
            let counts = self.op(async { join_all(reads).await.into_iter().collect::<RedisResult<Vec<_>>>() }).await?;
            out.extend(chunk.iter().cloned().zip(counts).filter_map(|(u, c)| c.filter(|&c| c > 0).map(|c| (u, c))));
        }
        Ok(out)
    }

    async fn nodes_with_presence(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        self.op(conn.smembers(self.keys.nodes())).await
    }

    async fn purge_node(&self, node_id: &str, now_ms: u64, leader: &str) -> Result<Vec<PresenceChange>, StoreError> {
        if !self.purge_check(node_id, leader).await? {
            return Ok(Vec::new());
        }
        let users: HashSet<UserId> = self.node_user_set(node_id).await?.into_iter().collect();
        let updates: Vec<CountUpdate> = users
            .into_iter()
            .map(|user_id| CountUpdate { reason: Some(EventReason::NodeLost), ..CountUpdate::new(user_id, 0) })
            .collect();
        let mut changes = Vec::new();
        for (i, chunk) in updates.chunks(512).enumerate() {
            // The lease may have passed to another coordinator (this one paused), or
            // the node may have come back: checked again before every batch.
            if i > 0 && !self.purge_check(node_id, leader).await? {
                break;
            }
            changes.extend(self.set_counts(node_id, chunk, now_ms).await?.into_iter().flatten());
        }
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.forget_node.prepare_invoke();
        inv.key(self.keys.node(node_id))
            .key(self.keys.nodes())
            .key(self.keys.purged(node_id))
            .key(self.keys.leader())
            .arg(node_id)
            .arg(PURGED_MARKER_MS)
            .arg(leader);
        if self.op(inv.invoke_async::<i64>(&mut conn)).await? == -1 {
            return Err(StoreError::NotLeader(leader.to_string()));
        }
        Ok(changes)
    }

    async fn presence(&self, users: &[UserId]) -> Result<Vec<Presence>, StoreError> {
        let reads = users.iter().map(|u| {
            let mut conn = self.conn.clone();
            let key = self.keys.user(u.vnode(), u.as_str());
            async move { conn.hgetall::<_, Vec<(String, String)>>(key).await }
        });
        let raw = self.op(async { join_all(reads).await.into_iter().collect::<RedisResult<Vec<_>>>() }).await?;
        Ok(users.iter().zip(raw).map(|(u, fields)| presence_of_fields(u, fields)).collect())
    }

    async fn set_status(
        &self,
        user: &UserId,
        status: Option<UserStatus>,
        if_expires_at: Option<u64>,
        now_ms: u64,
    ) -> Result<Option<PresenceChange>, StoreError> {
        let v = user.vnode();
        let status = status.filter(|s| s.holds(now_ms)).map(|s| UserStatus { invisible_since: None, ..s });
        let json = status.as_ref().map(|s| serde_json::to_string(s).unwrap_or_default()).unwrap_or_default();
        let expiry = status.as_ref().and_then(|s| s.expires_at).map(|t| t.to_string()).unwrap_or_default();
        let invisible = status.as_ref().is_some_and(|s| s.availability == Availability::Invisible);
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.set_status.prepare_invoke();
        inv.key(self.keys.user(v, user.as_str()))
            .arg(user.as_str())
            .arg(json)
            .arg(expiry)
            .arg(if invisible { "1" } else { "0" })
            .arg(now_ms)
            .arg(if_expires_at.map(|t| t.to_string()).unwrap_or_default())
            .arg(self.keys.channel(v, user.as_str()))
            .arg(self.publish_command())
            .arg(self.retention_ms);
        let reply: Option<(u64, String)> = self.op(inv.invoke_async(&mut conn)).await?;
        reply.map(|r| change_of("set_status", r)).transpose()
    }

    async fn record_seen(&self, users: &[UserId], now_ms: u64) -> Result<(), StoreError> {
        if users.is_empty() {
            return Ok(());
        }
        let (hour, day) = presence_backend::periods(now_ms);
        let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
        let mut conn = self.conn.clone();
        // Both keys share a hash tag, so the pipeline goes to one node of a cluster.
        let mut pipe = redis::pipe();
        pipe.cmd("PFADD").arg(self.keys.unique_hour(hour)).arg(&ids).ignore();
        pipe.cmd("PEXPIRE").arg(self.keys.unique_hour(hour)).arg(HOUR_TTL_MS).ignore();
        pipe.cmd("PFADD").arg(self.keys.unique_day(day)).arg(&ids).ignore();
        pipe.cmd("PEXPIRE").arg(self.keys.unique_day(day)).arg(DAY_TTL_MS).ignore();
        self.op(pipe.query_async::<()>(&mut conn)).await
    }

    async fn record_peak(&self, connections: u64, now_ms: u64) -> Result<(), StoreError> {
        let day = presence_backend::periods(now_ms).1;
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.record_peak.prepare_invoke();
        inv.key(self.keys.peak_day(day)).arg(connections).arg(DAY_TTL_MS);
        self.op(inv.invoke_async::<i64>(&mut conn)).await.map(drop)
    }

    async fn activity(&self, now_ms: u64) -> Result<Activity, StoreError> {
        let (hour, day) = presence_backend::periods(now_ms);
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("PFCOUNT").arg(self.keys.unique_hour(hour));
        pipe.cmd("PFCOUNT").arg(self.keys.unique_day(day));
        pipe.cmd("GET").arg(self.keys.peak_day(day));
        let (h, d, peak): (u64, u64, Option<u64>) = self.op(pipe.query_async(&mut conn)).await?;
        Ok(Activity { unique_users_hour: h, unique_users_day: d, peak_connections_day: peak.unwrap_or(0) })
    }

    async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.lease_acquire.prepare_invoke();
        inv.key(self.keys.leader()).arg(holder).arg(ttl.as_millis() as u64);
        let held: i64 = self.op(inv.invoke_async(&mut conn)).await?;
        Ok(held == 1)
    }

    async fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.lease_release.prepare_invoke();
        inv.key(self.keys.leader()).arg(holder);
        let _: i64 = self.op(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn live_feed(&self) -> Result<(Arc<dyn LiveFeed>, tokio::sync::mpsc::Receiver<Live>), StoreError> {
        self.feeds.open(self.keys.clone()).await
    }
}
