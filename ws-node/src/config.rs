//! What a ws-node is told at start. Each default is documented in `docs/operations.md`.

use std::time::Duration;

use presence_model::Vnode;

/// A node's settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Stable node ID (`NODE_ID`).
    pub node_id: String,
    /// WebSocket URL clients are sent to, e.g. `ws://10.0.0.5:9000/socket`.
    pub public_url: String,
    /// Relative capacity for vnode assignment.
    pub capacity: u32,
    /// Vnodes pinned to this node (`ASSIGNED_VNODES`).
    pub pinned: Vec<Vnode>,
    /// How often the node heartbeats.
    pub heartbeat_interval: Duration,
    /// Registration TTL: a node silent this long is dead.
    pub node_ttl: Duration,
    /// Periodic routing-epoch check (notices are the fast path).
    pub table_poll: Duration,
    /// How long a client may take to send `auth` after the upgrade.
    pub auth_timeout: Duration,
    /// How long a handed-off connection stays open after `reconnect`.
    pub handoff_timeout: Duration,
    /// WebSocket ping interval.
    pub ping_interval: Duration,
    /// A connection silent (no pong, no frame) this long is closed.
    pub pong_timeout: Duration,
    /// Subscriptions allowed per connection.
    pub max_subscriptions: usize,
    /// Largest frame or message accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Messages other than `status` and `count` (which conflate) queued per
    /// connection before the client is dropped as too slow.
    pub outbound_queue: usize,
    /// Longest a write to a client may take; a client that takes no frame
    /// for this long is dropped as a slow consumer.
    pub write_timeout: Duration,
    /// Outbox frames a connection may have unacknowledged (`conn::Window`):
    /// how far behind a slow reader can be before its statuses conflate.
    pub outbound_window: u32,
    /// tungstenite's per-connection read buffer, in bytes (eagerly allocated,
    /// so every idle connection pays it). Client messages are small; a
    /// larger frame grows the buffer to its size (up to `max_frame_bytes`).
    pub read_buffer_bytes: usize,
    /// Users whose count may wait for the store before a full resync is scheduled instead.
    pub max_pending_writes: usize,
    /// Users written to the store per batch.
    pub write_batch: usize,
    /// How often the drift reconciler compares the store with this node's counts.
    pub reconcile_interval: Duration,
    /// Follow watched users on the store's live feed (the fast path,
    /// `crate::live`). Off, status crosses nodes by the bus alone (slower):
    /// for a Redis whose ACLs forbid pub/sub, or to measure the bus path.
    pub fast_path: bool,
    /// Limits of the HTTP/WebSocket listener.
    pub http: presence_http::Limits,
    /// WebSocket connections waiting for their `auth` message at most.
    pub max_pending_auth: usize,
    /// Connections one user may hold in the whole cluster.
    pub max_connections_per_user: u64,
    /// Messages a client may send per second after its burst.
    pub message_rate: u32,
    /// Messages a client may send at once.
    pub message_burst: u32,
    /// What watchers are shown of others (`LAST_SEEN`, `OFFLINE_GRACE_MS`).
    pub views: crate::counts::Views,
    /// Whom a user may watch (`SUBSCRIBE_POLICY`).
    pub subscribe_policy: SubscribePolicy,
}

/// Whom a user may watch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SubscribePolicy {
    /// Anyone (`open`).
    #[default]
    Open,
    /// Themselves and the users their token's `watch` claim lists (`claims`);
    /// other subscriptions are refused with `forbidden`.
    Claims,
}

impl SubscribePolicy {
    /// Reads `open` or `claims`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "open" => Ok(Self::Open),
            "claims" => Ok(Self::Claims),
            other => Err(format!("expected open or claims, got {other:?}")),
        }
    }
}

impl NodeConfig {
    /// Defaults for a node with this ID and public URL.
    pub fn new(node_id: impl Into<String>, public_url: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            public_url: public_url.into(),
            capacity: 1,
            pinned: Vec::new(),
            heartbeat_interval: Duration::from_secs(1),
            node_ttl: Duration::from_secs(5),
            table_poll: Duration::from_secs(1),
            auth_timeout: Duration::from_secs(5),
            handoff_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(40),
            max_subscriptions: 1000,
            max_frame_bytes: 16 * 1024,
            outbound_queue: 64,
            write_timeout: Duration::from_secs(10),
            outbound_window: 8,
            read_buffer_bytes: 128,
            max_pending_writes: 100_000,
            write_batch: 256,
            reconcile_interval: Duration::from_secs(30),
            fast_path: true,
            http: presence_http::Limits::default(),
            max_pending_auth: 10_000,
            max_connections_per_user: 100,
            message_rate: 20,
            message_burst: 50,
            views: crate::counts::Views::default(),
            subscribe_policy: SubscribePolicy::Open,
        }
    }

    /// The tungstenite settings for client connections: small, explicit buffers
    /// (`docs/operations.md`, "Sizing") and the frame limit.
    pub fn websocket(&self) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_bytes)
            // Write each message out at once: messages are small and latency matters.
            .write_buffer_size(0)
            // Backpressure lives in the bounded outbound queue; this only caps a stuck socket.
            .max_write_buffer_size(256 * 1024)
            .max_message_size(Some(self.max_frame_bytes))
            .max_frame_size(Some(self.max_frame_bytes))
    }
}
