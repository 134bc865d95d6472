//! One WebSocket connection, from authentication to close.
//!
//! A single task per connection selects over the client's frames, its
//! conflating outbox ([`crate::conn`]), the ping timer, the handoff deadline
//! and shutdown. Keeping reader and writer in one task keeps the
//! per-connection footprint small; a stuck client cannot stall anyone else
//! because fan-out only ever pushes into its outbox without waiting.
//!
//! Every write to the client has a deadline: before `welcome`, what is left
//! of the auth deadline; after it, the write timeout (`WRITE_TIMEOUT_MS`,
//! 10 s). A client that does not take a frame within it is dropped as a slow
//! consumer: that, not a message count that a legitimate burst can reach, is
//! what bounds a reader that is merely behind.
//!
//! The session is generic over any `Stream + Sink` of tungstenite messages,
//! so it runs the same over a real socket and in tests.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use presence_model::auth::Identity;
use presence_model::wire::{close, code, parse_client, ClientMessage, ServerMessage};
use presence_model::{Device, EventReason, UserId, UserStatus};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::config::SubscribePolicy;
use crate::conn::{statuses_frame, Conn, Outbound, Pace, Taken, Told, Window};
use crate::fanout::status_frame;
use crate::handoff::{self, Deadline};
use crate::Node;

/// How long to wait for the client's close reply before dropping the socket.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Longest wait for the store to confirm a new connection's count before `welcome`.
const WELCOME_WAIT: Duration = Duration::from_secs(2);

/// Most statuses in one `statuses` frame (about 30 KB).
const MAX_BATCH: usize = 256;

/// Outbox takes written per wake-up before the session looks at its other
/// duties (client frames, timers) again.
const WRITES_PER_TURN: usize = 8;

/// How a session ends: an optional last message, then a close frame.
struct Ending {
    message: Option<ServerMessage>,
    code: u16,
    reason: &'static str,
    /// Why the connection went, as events and offline statuses say it.
    why: EventReason,
}

impl Ending {
    fn new(code: u16, reason: &'static str) -> Self {
        // A connection closed for breaking a limit was kicked; any other close is a close.
        let why = if code == close::LIMIT { EventReason::Kicked } else { EventReason::Closed };
        Self { message: None, code, reason, why }
    }

    fn after(message: ServerMessage, code: u16, reason: &'static str) -> Self {
        Self { message: Some(message), ..Self::new(code, reason) }
    }

    fn because(self, why: EventReason) -> Self {
        Self { why, ..self }
    }
}

/// How a connection starts: the user when the upgrade request carried a
/// valid token (else the first message must be `auth`), and the connection's
/// place among those waiting for it until it came.
pub struct Start {
    /// The user of a token sent with the upgrade.
    pub pre_auth: Option<Identity>,
    /// The place held among connections waiting to authenticate.
    pub waiting: Option<crate::PendingAuth>,
    /// The device class of the upgrade's `?device=` (a token's claim, then
    /// the `auth` message's `device`, win over it).
    pub device: Option<Device>,
}

/// Runs a connection.
///
/// Memory: an idle connection is this task's future and little else, so its
/// size is the per-connection cost (`BENCHMARKS.md`). Only what an idle
/// connection waits on lives in it inline: the start (authentication,
/// ownership checks, `welcome`), the handling of each client frame and the
/// goodbye are boxed futures that exist only while they run.
///
/// Not an `async fn`: that would hold the socket twice, once as the argument
/// and once as the body's binding of it (rust-lang/rust#62958); the block
/// below uses the captured socket in place.
#[allow(clippy::manual_async_fn)] // see `session::run`: an `async fn` would hold its arguments twice
pub fn run<S>(node: Arc<Node>, mut ws: S, start: Box<Start>) -> impl std::future::Future<Output = ()>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    async move {
        let Some(mut opened) = Box::pin(open(&node, &mut ws, start)).await else { return };
        let end = if opened.welcomed { opened.session.serve(&mut ws).await } else { None };
        Box::pin(finish(&node, &mut ws, opened, end)).await;
    }
}

/// An accepted connection: counted, and (if `welcomed`) told so.
struct Opened {
    session: Session,
    conn_uuid: uuid::Uuid,
    welcomed: bool,
}

/// Authenticates, checks that this node serves the user, counts the
/// connection and sends `welcome`; `None` when the connection was refused
/// (and closed).
async fn open<S>(node: &Arc<Node>, ws: &mut S, start: Box<Start>) -> Option<Opened>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let Start { pre_auth, waiting, device } = *start;
    let identity = match pre_auth {
        Some(i) => i,
        None => {
            let authenticated = authenticate(node, ws).await;
            drop(waiting);
            match authenticated {
                Ok(i) => i,
                Err(end) => {
                    close_with(node, ws, end).await;
                    return None;
                }
            }
        }
    };
    let user = identity.user.clone();
    // Only the owner serves a user; everyone else points the client there. A
    // client sent here by a newer table than ours (it followed a `reconnect`
    // a moment ago) must not be sent back: on the way to a redirect, the
    // store's table version is checked once first.
    if node.table.get().and_then(|t| t.owner(user.as_str()).map(|o| o.id != node.config.node_id)).unwrap_or(true) {
        node.table.refresh_soon(node.store.as_ref(), Duration::from_millis(100)).await;
    }
    let Some(table) = node.table.get() else {
        let m = ServerMessage::error(code::UNAVAILABLE, "node has no routing table yet; retry shortly");
        close_with(node, ws, Ending::after(m, close::TRY_AGAIN_LATER, "no routing table")).await;
        return None;
    };
    if node.membership.is_fenced() {
        let m =
            ServerMessage::error(code::UNAVAILABLE, "node lost its registration; ask the coordinator again shortly");
        close_with(node, ws, Ending::after(m, close::TRY_AGAIN_LATER, "fenced")).await;
        return None;
    }
    match table.owner(user.as_str()) {
        Some(owner) if owner.id == node.config.node_id => {}
        Some(owner) => {
            node.metrics.redirects.inc();
            let m = ServerMessage::Redirect { url: owner.url.clone(), epoch: table.epoch };
            close_with(node, ws, Ending::after(m, close::WRONG_NODE, "wrong node")).await;
            return None;
        }
        None => {
            let m = ServerMessage::error(code::UNAVAILABLE, "no live node owns this user's vnode; retry shortly");
            close_with(node, ws, Ending::after(m, close::TRY_AGAIN_LATER, "no owner")).await;
            return None;
        }
    }
    // Connections per user, cluster-wide: the user's vnode lives here, so the
    // known total plus this node's unwritten changes is the count.
    let limit = node.config.max_connections_per_user;
    if node.counts.estimate(&user) >= limit {
        node.metrics.client_errors.with_label_values(&[code::TOO_MANY_USER_CONNECTIONS]).inc();
        let m = ServerMessage::error(
            code::TOO_MANY_USER_CONNECTIONS,
            format!("a user may hold at most {limit} connections"),
        );
        close_with(node, ws, Ending::after(m, close::RATE_LIMITED, "too many connections")).await;
        return None;
    }
    let conn_uuid = uuid::Uuid::new_v4();
    let device = identity.device.clone().or(device).unwrap_or_else(Device::unknown);
    let conn = Conn::of_device(node.next_conn_id(), node.config.outbound_queue, device);
    node.counts.connect(&user, conn.clone());
    let written = node.pending.mark_and_wait(&user, Some(&conn_uuid.to_string()));
    node.metrics.connects.inc();
    node.metrics.connections.inc();
    // Welcome only once the store counts this connection (unless the store is
    // known to be down): a client handed over from another node drops its old
    // connection when it sees this welcome, and must not be counted out first.
    if let (true, Some(written)) = (node.store_ok(), written) {
        if !matches!(tokio::time::timeout(WELCOME_WAIT, written).await, Ok(Ok(()))) {
            tracing::debug!(node = %node.config.node_id, "welcome sent before the store confirmed the count");
        }
    }
    let welcome = ServerMessage::Welcome {
        user_id: user.clone(),
        connection_id: conn_uuid.to_string(),
        node_id: node.config.node_id.clone(),
        epoch: table.epoch,
        connections: node.counts.estimate(&user),
        token_expires_at: Some(identity.expires_at_ms),
    };
    let session = Session {
        node: node.clone(),
        conn,
        subs: HashSet::new(),
        handoff: Deadline::default(),
        expires: expiry_instant(identity.expires_at_ms),
        user: user.clone(),
        watch: identity.watch,
    };
    // The table may have moved between the ownership check and `connect`.
    if let Some(t) = node.table.get() {
        handoff::tell_if_moved(&t, &user, &node.config.node_id, &session.conn, &node.metrics);
    }
    let welcomed = send(ws, &welcome, node.config.write_timeout).await;
    Some(Opened { session, conn_uuid, welcomed })
}

/// Uncounts the connection and, unless the socket is gone, says goodbye.
async fn finish<S>(node: &Node, ws: &mut S, mut opened: Opened, end: Option<Box<Ending>>)
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let session = &mut opened.session;
    let watched: Vec<UserId> = session.subs.drain().collect();
    node.counts.disconnect(&session.user, session.conn.id(), &watched);
    let why = end.as_ref().map_or(EventReason::Closed, |e| e.why);
    node.pending.mark(&session.user, Some(&opened.conn_uuid.to_string()), Some(why));
    node.metrics.disconnects.inc();
    node.metrics.connections.dec();
    if let Some(end) = end {
        close_with(node, ws, *end).await;
    }
}

/// Waits for the `auth` message (`docs/protocol.md`, "Authentication").
async fn authenticate<S>(node: &Node, ws: &mut S) -> Result<Identity, Ending>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let deadline = Instant::now() + node.config.auth_timeout;
    loop {
        let frame = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                node.metrics.auth_failures.with_label_values(&["timeout"]).inc();
                return Err(Ending::new(close::AUTH_TIMEOUT, "auth timeout"));
            }
            f = ws.next() => f,
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Binary(_))) => return Err(before_auth(node, code::BINARY_NOT_SUPPORTED)),
            Some(Err(WsError::Capacity(_))) => return Err(too_large(node)),
            Some(Ok(Message::Close(_)) | Err(_)) | None => {
                return Err(Ending::new(close::NORMAL, "closed before auth"))
            }
        };
        match parse_client(&text) {
            Ok(ClientMessage::Auth { token, device }) => {
                return node
                    .verifier
                    .verify_identity(&token)
                    .map(|id| Identity { device: id.device.clone().or(device), ..id })
                    .map_err(|e| {
                        node.metrics.auth_failures.with_label_values(&[e.reason()]).inc();
                        node.metrics.client_errors.with_label_values(&[e.code()]).inc();
                        Ending::after(
                            ServerMessage::error(e.code(), e.to_string()),
                            close::UNAUTHORIZED,
                            "unauthorized",
                        )
                    });
            }
            Ok(_) => return Err(before_auth(node, code::UNAUTHORIZED)),
            Err(e) => return Err(before_auth(node, e.code())),
        }
    }
}

/// Anything but a valid `auth` before authentication ends the connection
/// (4001): an unauthenticated peer gets one short answer, never an echo of
/// what it sent, and cannot keep the socket busy with writes.
fn before_auth(node: &Node, code: &'static str) -> Ending {
    node.metrics.client_errors.with_label_values(&[code]).inc();
    node.metrics.auth_failures.with_label_values(&["protocol"]).inc();
    let m = ServerMessage::error(code, "authenticate first with {\"type\":\"auth\",\"token\":\"...\"}");
    Ending::after(m, close::UNAUTHORIZED, "unauthorized")
}

fn too_large(node: &Node) -> Ending {
    node.metrics.client_errors.with_label_values(&[code::FRAME_TOO_LARGE]).inc();
    let limit = node.config.max_frame_bytes;
    Ending::after(
        ServerMessage::error(code::FRAME_TOO_LARGE, format!("frames and messages are limited to {limit} bytes")),
        close::LIMIT,
        "too large",
    )
}

/// What the main loop does after a wake-up (`None`: the socket is gone).
enum Step {
    Go,
    End(Ending),
}

/// The main loop's bookkeeping.
struct LoopState {
    next_ping: Instant,
    /// When the client was last heard from (any frame answers a ping).
    last_heard: Instant,
    window: Window,
    /// Since when the window has been full: a reading client answers the
    /// probe within a round trip, so past the write timeout it is dropped.
    stalled_since: Option<Instant>,
    /// Inbound: a client sends at most `message_rate` messages a second
    /// after a burst; beyond, its messages are refused, and a client that
    /// keeps going for another whole burst is closed (4029).
    inbound: Pace,
    refused: u32,
}

/// An authenticated connection's state.
struct Session {
    node: Arc<Node>,
    conn: Conn,
    /// Users this connection watches.
    subs: HashSet<UserId>,
    /// When a handed-off connection is closed with 4011.
    handoff: Deadline,
    /// When the token runs out (its `exp` plus leeway): the connection is
    /// closed with 4001 `token_expired` then, unless a fresh `auth` came.
    expires: Instant,
    /// The authenticated user (a fresh `auth` must be for the same one).
    user: UserId,
    /// Whom the token lets the user watch (`SUBSCRIBE_POLICY=claims`).
    watch: Option<Arc<[UserId]>>,
}

/// The tokio instant of a wall-clock expiry in ms since the Unix epoch.
fn expiry_instant(at_ms: u64) -> Instant {
    let left = at_ms.saturating_sub(presence_model::time::now_ms());
    // Far-future expiries are capped so the deadline arithmetic cannot overflow.
    Instant::now() + Duration::from_millis(left.min(100 * 365 * 24 * 3600 * 1000))
}

impl Session {
    /// The main loop. Returns how to close, or `None` when the socket is gone
    /// (or the client stopped taking frames: it is not owed a close).
    ///
    /// An idle connection waits here, so what it waits on is kept small: the
    /// connection's one signal ([`Conn::rung`]: queued messages, an order to
    /// end, its timer) and the socket. The timer is the node's ticker
    /// ([`crate::counts::run_timers`]), asked for the earliest deadline (the
    /// next ping, the token's expiry, the handoff's close, a stalled
    /// window's limit). What happens on a wake-up runs in a boxed future.
    async fn serve<S>(&mut self, ws: &mut S) -> Option<Box<Ending>>
    where
        S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    {
        let node = self.node.clone();
        let cfg = &node.config;
        let closing = node.closing();
        let conn = self.conn.clone();
        let mut state = LoopState {
            next_ping: Instant::now() + cfg.ping_interval,
            last_heard: Instant::now(),
            window: Window::new(cfg.outbound_window),
            stalled_since: None,
            inbound: Pace::new(cfg.message_rate, cfg.message_burst),
            refused: 0,
        };
        loop {
            // Closing is told through the connection (`Node::shutdown`); the
            // token catches a session that starts after that.
            if closing.is_cancelled() {
                return Some(Box::new(Ending::new(close::GOING_AWAY, "node shutting down")));
            }
            match conn.told() {
                Some(Told::Closing) => return Some(Box::new(Ending::new(close::GOING_AWAY, "node shutting down"))),
                Some(Told::Overflow) => {
                    self.node.metrics.client_errors.with_label_values(&[code::SLOW_CONSUMER]).inc();
                    let m = ServerMessage::error(
                        code::SLOW_CONSUMER,
                        "outbound queue overflowed; reconnect and read faster",
                    );
                    return Some(Box::new(Ending::after(m, close::LIMIT, "slow consumer")));
                }
                None => {}
            }
            let due = self.next_deadline(&state);
            if conn.timer_rang() || due <= Instant::now() {
                match Box::pin(self.on_timer(ws, &mut state)).await {
                    Some(Step::Go) => {}
                    Some(Step::End(end)) => return Some(Box::new(end)),
                    None => return None,
                }
            }
            if state.window.is_open() && conn.pending() > 0 {
                // Writes a few and rings again if more is left, so that
                // the socket and the timer get their turn in between.
                if !Box::pin(self.write_outbox(ws, &mut state)).await {
                    return None;
                }
            }
            conn.set_timer(self.next_deadline(&state));
            let frame = tokio::select! {
                _ = conn.rung() => continue,
                frame = ws.next() => frame,
            };
            match Box::pin(self.on_frame(ws, frame, &mut state)).await {
                Some(Step::Go) => {}
                Some(Step::End(end)) => return Some(Box::new(end)),
                None => return None,
            }
        }
    }

    /// The earliest of the session's deadlines.
    fn next_deadline(&self, state: &LoopState) -> Instant {
        let stall_at = state.stalled_since.map(|at| at + self.node.config.write_timeout);
        [Some(state.next_ping), Some(self.expires), self.handoff.at(), stall_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(state.next_ping)
    }

    /// The timer rang: whichever deadlines passed.
    async fn on_timer<S>(&mut self, ws: &mut S, state: &mut LoopState) -> Option<Step>
    where
        S: Sink<Message, Error = WsError> + Unpin,
    {
        let cfg = &self.node.config;
        let now = Instant::now();
        if self.handoff.at().is_some_and(|at| at <= now) {
            return Some(Step::End(Ending::new(close::HANDOFF, "handoff")));
        }
        if self.expires <= now {
            self.node.metrics.client_errors.with_label_values(&[code::TOKEN_EXPIRED]).inc();
            let m = ServerMessage::error(code::TOKEN_EXPIRED, "the token expired; send a fresh auth before it does");
            let end = Ending::after(m, close::UNAUTHORIZED, "token expired").because(EventReason::TokenExpired);
            return Some(Step::End(end));
        }
        if state.stalled_since.is_some_and(|at| at + cfg.write_timeout <= now) {
            self.node.metrics.slow_consumers.inc();
            tracing::debug!(node = %cfg.node_id, "client read nothing within the write timeout; dropped");
            return None;
        }
        if state.next_ping <= now {
            if state.last_heard.elapsed() >= cfg.pong_timeout {
                return Some(Step::End(Ending::new(close::NORMAL, "ping timeout").because(EventReason::Timeout)));
            }
            // A late tick is not made up for: the next ping is an interval from now.
            state.next_ping = now + cfg.ping_interval;
            if !self.write(ws, Message::Ping(Default::default())).await {
                return None;
            }
        }
        Some(Step::Go)
    }

    /// A frame (or the end of the stream) from the client.
    async fn on_frame<S>(
        &mut self,
        ws: &mut S,
        frame: Option<Result<Message, WsError>>,
        state: &mut LoopState,
    ) -> Option<Step>
    where
        S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    {
        let cfg = &self.node.config;
        state.last_heard = Instant::now();
        match frame {
            Some(Ok(Message::Text(t))) => {
                if state.inbound.take().is_err() {
                    state.refused += 1;
                    if state.refused > cfg.message_burst {
                        self.node.metrics.client_errors.with_label_values(&[code::RATE_LIMITED]).inc();
                        let m = ServerMessage::error(code::RATE_LIMITED, "messages sent too fast; closing");
                        let end = Ending::after(m, close::RATE_LIMITED, "rate limited").because(EventReason::Kicked);
                        return Some(Step::End(end));
                    }
                    let limit = cfg.message_rate;
                    let text = format!("at most {limit} messages a second; this one was dropped");
                    return self.reply_error(ws, code::RATE_LIMITED, &text).await.then_some(Step::Go);
                }
                state.refused = 0;
                match self.on_text(ws, &t).await {
                    Some(end) => Some(Step::End(end)),
                    None => Some(Step::Go),
                }
            }
            Some(Ok(Message::Binary(_))) => self
                .reply_error(ws, code::BINARY_NOT_SUPPORTED, "binary frames are not supported")
                .await
                .then_some(Step::Go),
            // tungstenite queues the pong; flush it out now.
            Some(Ok(Message::Ping(_))) => {
                let flushed = tokio::time::timeout(cfg.write_timeout, ws.flush()).await;
                matches!(flushed, Ok(Ok(()))).then_some(Step::Go)
            }
            Some(Ok(Message::Pong(payload))) => {
                state.window.pong(&payload);
                if state.window.is_open() {
                    state.stalled_since = None;
                    if self.conn.pending() > 0 && !self.write_outbox(ws, state).await {
                        return None;
                    }
                }
                Some(Step::Go)
            }
            Some(Ok(Message::Frame(_))) => Some(Step::Go),
            Some(Err(WsError::Capacity(_))) => Some(Step::End(too_large(&self.node))),
            Some(Ok(Message::Close(_))) => Some(Step::End(Ending::new(close::NORMAL, "bye"))),
            Some(Err(_)) | None => None,
        }
    }
    /// Writes what the outbox holds, a few messages per turn and as the
    /// window allows; once the window is full, `stalled_since` is set and the
    /// outbox conflates until the client's pong opens it. `false` when a
    /// write failed.
    async fn write_outbox<S>(&mut self, ws: &mut S, state: &mut LoopState) -> bool
    where
        S: Sink<Message, Error = WsError> + Unpin,
    {
        let conn = self.conn.clone();
        for _ in 0..WRITES_PER_TURN {
            if conn.pending() == 0 {
                return true;
            }
            if !state.window.is_open() {
                return true;
            }
            let Some(taken) = conn.take(MAX_BATCH) else { return true };
            let text = match taken {
                Taken::One(Outbound::Text(t)) => t,
                Taken::One(Outbound::Handoff(t)) => {
                    self.handoff.arm(self.node.config.handoff_timeout);
                    t
                }
                Taken::Statuses(frames) => statuses_frame(&frames),
            };
            if !self.write(ws, Message::Text(text)).await {
                return false;
            }
            if let Some(probe) = state.window.sent() {
                if !self.write(ws, Message::Ping(probe.into())).await {
                    return false;
                }
            }
            if !state.window.is_open() {
                // A reading client answers the probe within a round trip.
                state.stalled_since.get_or_insert_with(Instant::now);
            }
        }
        // More to write: come back after the other duties had their turn.
        conn.wake();
        true
    }

    /// Writes one frame within the write timeout; `false` when the socket is
    /// gone or the client did not take it in time (a slow consumer, counted).
    async fn write<S>(&self, ws: &mut S, m: Message) -> bool
    where
        S: Sink<Message, Error = WsError> + Unpin,
    {
        match tokio::time::timeout(self.node.config.write_timeout, ws.send(m)).await {
            Ok(result) => result.is_ok(),
            Err(_) => {
                self.node.metrics.slow_consumers.inc();
                tracing::debug!(node = %self.node.config.node_id, "client took no frame within the write timeout; dropped");
                false
            }
        }
    }

    /// Answers with `m` (a reply to the client's own message).
    async fn reply<S>(&self, ws: &mut S, m: &ServerMessage) -> bool
    where
        S: Sink<Message, Error = WsError> + Unpin,
    {
        self.write(ws, Message::Text(m.to_json().into())).await
    }

    /// Sends a non-fatal `error` and counts it; `false` when the write failed.
    async fn reply_error<S>(&self, ws: &mut S, code: &str, message: &str) -> bool
    where
        S: Sink<Message, Error = WsError> + Unpin,
    {
        self.node.metrics.client_errors.with_label_values(&[code]).inc();
        self.reply(ws, &ServerMessage::error(code, message)).await
    }

    async fn on_text<S>(&mut self, ws: &mut S, text: &str) -> Option<Ending>
    where
        S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    {
        let written = match parse_client(text) {
            Ok(ClientMessage::Ping) => self.reply(ws, &ServerMessage::Pong).await,
            // A fresh token for the same user extends the connection's life.
            Ok(ClientMessage::Auth { token, .. }) => match self.node.verifier.verify_identity(&token) {
                Ok(id) if id.user == self.user => {
                    self.expires = expiry_instant(id.expires_at_ms);
                    self.watch = id.watch;
                    self.drop_forbidden(ws).await
                }
                Ok(_) => {
                    self.reply_error(ws, code::UNAUTHORIZED, "a fresh token must be for the connection's own user")
                        .await
                }
                Err(e) => {
                    self.node.metrics.auth_failures.with_label_values(&[e.reason()]).inc();
                    self.reply_error(ws, e.code(), &e.to_string()).await
                }
            },
            Ok(ClientMessage::Subscribe { user_ids }) => {
                let (allowed, refused): (Vec<UserId>, Vec<UserId>) =
                    user_ids.into_iter().partition(|u| self.may_watch(u));
                if !refused.is_empty() && !self.refuse(ws, &refused).await {
                    return Some(Ending::new(close::NORMAL, "write failed"));
                }
                return self.subscribe(allowed).await;
            }
            Ok(ClientMessage::Unsubscribe { user_ids }) => {
                for u in user_ids {
                    if self.subs.remove(&u) {
                        self.node.counts.unwatch(&u, self.conn.id());
                        self.conn.forget(&u);
                    }
                }
                true
            }
            Ok(ClientMessage::SetStatus { availability, text, expires_in_ms }) => {
                let now = presence_model::time::now_ms();
                let status = UserStatus {
                    availability,
                    text,
                    expires_at: expires_in_ms.map(|ms| now + ms),
                    invisible_since: None,
                };
                let status = status.holds(now).then_some(status);
                match self.node.status_writer().set(&self.user, status, None).await {
                    Ok(()) => true,
                    Err(e) => {
                        let m = format!("the status could not be stored now ({e}); set it again");
                        self.reply_error(ws, code::UNAVAILABLE, &m).await
                    }
                }
            }
            Ok(ClientMessage::Activity { idle }) => {
                let now = presence_model::time::now_ms();
                if self.node.counts.set_idle(&self.user, self.conn.id(), idle, now) {
                    self.node.pending.mark(&self.user, None, None);
                }
                true
            }
            Err(e) => self.reply_error(ws, e.code(), &e.to_string()).await,
        };
        (!written).then(|| Ending::new(close::NORMAL, "write failed"))
    }

    /// Whether the subscribe policy lets this connection watch `other`.
    fn may_watch(&self, other: &UserId) -> bool {
        match self.node.config.subscribe_policy {
            SubscribePolicy::Open => true,
            SubscribePolicy::Claims => {
                *other == self.user || self.watch.as_ref().is_some_and(|w| w.binary_search(other).is_ok())
            }
        }
    }

    /// Tells the client which users it may not watch (a few named), counted.
    async fn refuse<S>(&self, ws: &mut S, refused: &[UserId]) -> bool
    where
        S: Sink<Message, Error = WsError> + Unpin,
    {
        let named: Vec<&str> = refused.iter().take(10).map(UserId::as_str).collect();
        let more = if refused.len() > named.len() {
            format!(" and {} more", refused.len() - named.len())
        } else {
            String::new()
        };
        let m = format!("not allowed to watch {}{more}: the token does not list them", named.join(", "));
        self.reply_error(ws, code::FORBIDDEN, &m).await
    }

    /// After a fresh token: drops the subscriptions its `watch` claim no longer allows.
    async fn drop_forbidden<S>(&mut self, ws: &mut S) -> bool
    where
        S: Sink<Message, Error = WsError> + Unpin,
    {
        let gone: Vec<UserId> = self.subs.iter().filter(|u| !self.may_watch(u)).cloned().collect();
        if gone.is_empty() {
            return true;
        }
        for u in &gone {
            self.subs.remove(u);
            self.node.counts.unwatch(u, self.conn.id());
            self.conn.forget(u);
        }
        self.refuse(ws, &gone).await
    }

    /// Registers the watches first, then reads unknown users from the store, so
    /// that no change can fall between the read and the registration. The
    /// snapshot goes through the outbox like any live change: it conflates
    /// with them, and a client behind on its reading gets each user's newest
    /// status once (`docs/protocol.md`, "Slow readers").
    async fn subscribe(&mut self, user_ids: Vec<UserId>) -> Option<Ending> {
        let mut fresh: Vec<UserId> = user_ids.into_iter().filter(|u| !self.subs.contains(u)).collect();
        fresh.sort();
        fresh.dedup();
        let max = self.node.config.max_subscriptions;
        if self.subs.len() + fresh.len() > max {
            self.node.metrics.client_errors.with_label_values(&[code::TOO_MANY_SUBSCRIPTIONS]).inc();
            let m = ServerMessage::error(
                code::TOO_MANY_SUBSCRIPTIONS,
                format!(
                    "at most {max} subscriptions per connection; this would make {}",
                    self.subs.len() + fresh.len()
                ),
            );
            return Some(Ending::after(m, close::LIMIT, "too many subscriptions"));
        }
        let (node, conn) = (&self.node, &self.conn);
        let now = presence_model::time::now_ms();
        let views = node.counts.views();
        let mut unknown = Vec::new();
        for u in fresh {
            self.subs.insert(u.clone());
            match node.counts.watch(&u, conn.clone()) {
                Some(p) => {
                    let frame = status_frame(&p, now, p.user_id == self.user, &views);
                    conn.push_status(&u, p.seq, frame, &node.metrics)
                }
                None => unknown.push(u),
            }
        }
        for chunk in unknown.chunks(1000) {
            match node.store.presence(chunk).await {
                Ok(states) => {
                    for p in states {
                        // Newer than what is held: other watchers hear it too.
                        node.counts.apply(&p, now, Some(conn.id()));
                        let current = node.counts.watch(&p.user_id, conn.clone()).unwrap_or(p);
                        let frame = status_frame(&current, now, current.user_id == self.user, &views);
                        conn.push_status(&current.user_id, current.seq, frame, &node.metrics);
                    }
                }
                Err(e) => {
                    node.metrics.store_errors.inc();
                    tracing::warn!(node = %node.config.node_id, error = %e, "status read failed");
                    let m = ServerMessage::error(
                        code::UNAVAILABLE,
                        format!(
                            "status of {} users is unavailable now; it will be sent when the store answers",
                            chunk.len()
                        ),
                    );
                    conn.push(Outbound::Text(m.to_json().into()), &node.metrics);
                }
            }
        }
        None
    }
}

/// Sends one message within `timeout`; `false` when the socket is gone or the time ran out.
async fn send<S>(ws: &mut S, m: &ServerMessage, timeout: Duration) -> bool
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    matches!(tokio::time::timeout(timeout, ws.send(Message::Text(m.to_json().into()))).await, Ok(Ok(())))
}

/// Sends the last message and the close frame, then waits briefly for the
/// client's close. Bounded whatever the client does: each write gets
/// [`CLOSE_LINGER`], and so does the wait.
async fn close_with<S>(node: &Node, ws: &mut S, end: Ending)
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    if let Some(m) = &end.message {
        if !send(ws, m, CLOSE_LINGER).await {
            return;
        }
    }
    let frame = CloseFrame { code: CloseCode::from(end.code), reason: end.reason.into() };
    if !matches!(tokio::time::timeout(CLOSE_LINGER, ws.send(Message::Close(Some(frame)))).await, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_LINGER, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    tracing::debug!(node = %node.config.node_id, code = end.code, reason = end.reason, "closed connection");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use presence_backend::{MemoryBus, MemoryStore, Store};
    use presence_model::auth::{ClaimChecks, Verifier};
    use presence_model::{RoutingTable, VNODES};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    use super::*;
    use crate::NodeConfig;

    /// A node on embedded backends that owns every vnode.
    async fn node() -> Arc<Node> {
        node_with(NodeConfig::new("n1", "ws://n1/socket")).await
    }

    async fn node_with(config: NodeConfig) -> Arc<Node> {
        let store = MemoryStore::new();
        let owners = vec![Some("n1"); VNODES];
        let table = RoutingTable::from_owners(1, &owners, |_| "ws://n1/socket".into());
        store.swap_table(None, &table, None).await.expect("table");
        let verifier = Verifier::hs256(b"test-secret", &ClaimChecks::default()).expect("verifier");
        Node::start(config, Arc::new(verifier), Arc::new(store), Arc::new(MemoryBus::default())).await
    }

    /// The node's ticker drives the pings: a client that reads (and so
    /// answers them) stays; a silent one is closed after the pong timeout.
    #[tokio::test]
    async fn pings_keep_a_reader_and_drop_a_silent_client() {
        let mut config = NodeConfig::new("n1", "ws://n1/socket");
        config.ping_interval = Duration::from_millis(200);
        config.pong_timeout = Duration::from_millis(600);
        let node = node_with(config).await;
        let open = |user: &str| {
            let (server_io, client_io) = tokio::io::duplex(64 * 1024);
            let identity = Identity {
                user: UserId::parse(user).expect("valid"),
                expires_at_ms: u64::MAX,
                device: None,
                watch: None,
            };
            let node = node.clone();
            async move {
                let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
                let client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
                let start = Box::new(Start { pre_auth: Some(identity), waiting: None, device: None });
                (tokio::spawn(run(node, server, start)), client)
            }
        };
        let (reader_task, mut reader) = open("reader").await;
        let (silent_task, mut silent) = open("silent").await;
        assert_eq!(next_json(&mut silent).await["type"], "welcome");
        // The reader reads for 1.5 s (tungstenite answers each ping as it reads it).
        let mut pings = 0;
        let until = tokio::time::Instant::now() + Duration::from_millis(1500);
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, reader.next()).await {
            pings += usize::from(matches!(m, Message::Ping(_)));
        }
        assert!(pings >= 4, "pinged every 200 ms: {pings} pings in 1.5 s");
        assert!(!reader_task.is_finished(), "a client that answers stays");
        // The silent one was sent its close (1000) after the pong timeout;
        // reading now finds it behind the pings it never answered.
        loop {
            match next_json(&mut silent).await.get("close") {
                Some(code) => {
                    assert_eq!(code, 1000, "closed normally");
                    break;
                }
                None => continue,
            }
        }
        tokio::time::timeout(Duration::from_secs(3), silent_task).await.expect("the silent session ends").expect("ok");
        assert!(!reader_task.is_finished(), "a client that answers stays");
        node.shutdown().await;
        assert!(reader_task.await.is_ok());
    }

    async fn next_json<S>(ws: &mut S) -> serde_json::Value
    where
        S: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("a frame in time");
            match frame.expect("open").expect("frame") {
                Message::Text(t) => return serde_json::from_str(&t).expect("json"),
                Message::Close(c) => return serde_json::json!({"close": c.map(|c| u16::from(c.code))}),
                _ => continue,
            }
        }
    }

    #[tokio::test]
    async fn a_session_runs_over_an_in_memory_stream() {
        let node = node().await;
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        let alice = Identity {
            user: UserId::parse("alice").expect("valid"),
            expires_at_ms: u64::MAX,
            device: None,
            watch: None,
        };
        let task = tokio::spawn(run(
            node.clone(),
            server,
            Box::new(Start { pre_auth: Some(alice), waiting: None, device: None }),
        ));

        let welcome = next_json(&mut client).await;
        assert_eq!((welcome["type"].as_str(), welcome["connections"].as_u64()), (Some("welcome"), Some(1)));
        let count = next_json(&mut client).await;
        assert_eq!((count["type"].as_str(), count["connections"].as_u64()), (Some("count"), Some(1)));

        client.send(Message::Text(r#"{"type":"subscribe","userIds":["bob"]}"#.into())).await.expect("send");
        let status = next_json(&mut client).await;
        assert_eq!((status["userId"].as_str(), status["online"].as_bool()), (Some("bob"), Some(false)));
        client.send(Message::Text("{nope".into())).await.expect("send");
        assert_eq!(next_json(&mut client).await["code"], code::MALFORMED);
        client.send(Message::Text(r#"{"type":"ping"}"#.into())).await.expect("send");
        assert_eq!(next_json(&mut client).await["type"], "pong");

        client.close(None).await.expect("close");
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("session ends").expect("no panic");
        assert_eq!(node.counts.totals(), (0, 0), "the connection is gone from the counts");
        node.shutdown().await;
    }

    /// An idle connection costs little more than this future (`BENCHMARKS.md`,
    /// idle memory): a new field or an unboxed `.await` in the wrong place
    /// shows here first.
    #[tokio::test]
    async fn an_idle_session_stays_small() {
        let node = node().await;
        let (server_io, _client_io) = tokio::io::duplex(64);
        let ws = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let session = run(node.clone(), ws, Box::new(Start { pre_auth: None, waiting: None, device: None }));
        let size = std::mem::size_of_val(&session);
        eprintln!("session future: {size} bytes");
        assert!(size <= 1100, "the session future is {size} bytes");
        drop(session);
        node.shutdown().await;
    }
}
