//! [`Client`]: the reconnecting presence client.
//!
//! [`Client::connect`] returns a [`Session`]: a handle to subscribe and
//! unsubscribe, and a `Stream` of [`Event`]s. Behind it one task keeps the
//! user connected:
//!
//! * it routes through the coordinator and follows `redirect`s;
//! * on `reconnect` (a handoff) it connects to the new node *before* letting
//!   the old connection go, so the user is never counted offline;
//! * after a drop it reconnects with exponential backoff and full jitter,
//!   routing again (naming the node it lost, so that the coordinator can
//!   hold the answer until a dead node's users have moved), and re-subscribes;
//! * when the server says the token expired it asks the [`TokenSource`] for a
//!   new one;
//! * it stops only when the session is closed or dropped, or after
//!   [`Backoff::max_attempts`] failed attempts in a row when that is set.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use presence_model::wire::{code, ClientMessage, ServerMessage};
use presence_model::UserId;
use tokio::sync::mpsc;

use crate::connection::{Connection, Frame, TokenPlacement};
use crate::{CoordinatorClient, Error};

/// A future that yields a token.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, Error>> + Send>>;

/// Where tokens come from. The callback gets `true` when a fresh token is
/// needed (the server said the previous one expired, or the current one is
/// about to: the session refreshes ahead of expiry), `false` for the first connect.
#[derive(Clone)]
pub struct TokenSource(Arc<dyn Fn(bool) -> TokenFuture + Send + Sync>);

impl TokenSource {
    /// Always the same token (it will not be refreshed).
    pub fn fixed(token: impl Into<String>) -> Self {
        let token = token.into();
        Self(Arc::new(move |_| {
            let t = token.clone();
            Box::pin(async move { Ok(t) })
        }))
    }

    /// Tokens from a callback, e.g. a call to your auth service.
    pub fn callback<F, Fut>(f: F) -> Self
    where
        F: Fn(bool) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, Error>> + Send + 'static,
    {
        Self(Arc::new(move |expired| Box::pin(f(expired))))
    }

    async fn get(&self, expired: bool) -> Result<String, Error> {
        (self.0)(expired).await
    }
}

/// Reconnect timing: exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
    /// Give up after this many failed attempts in a row (`None`: never).
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(100), max: Duration::from_secs(10), max_attempts: None }
    }
}

impl Backoff {
    /// The delay before attempt `n` (1-based): a random point in
    /// `[cap/2, cap]`, where `cap = min(max, initial * 2^(n-1))`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self.initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(self.max);
        let half = cap / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// Why the client is reconnecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconnectReason {
    /// The user's vnode moved or the node drains (`reconnect` from the server).
    Handoff {
        /// The node to go to.
        url: String,
    },
    /// The connection dropped or could not be made.
    Dropped {
        /// What happened.
        cause: String,
    },
    /// The token expired; a new one is being fetched.
    TokenExpired,
}

/// What a session yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Connected (again) to the user's node.
    Welcome {
        /// The node.
        node_id: String,
        /// The connection's ID.
        connection_id: String,
        /// The routing epoch.
        epoch: u64,
        /// The user's connections in the cluster, this one included.
        connections: u64,
    },
    /// The user's connection count changed.
    Count {
        /// Connections in the cluster.
        connections: u64,
    },
    /// A subscribed user's status: online, connections, lastSeen, devices,
    /// idleness, availability (`docs/protocol.md`, "Rich presence").
    Status(presence_model::api::PresenceView),
    /// The client is moving or reconnecting.
    Reconnecting {
        /// Why.
        reason: ReconnectReason,
        /// Failed attempts in a row so far (0 for a handoff).
        attempt: u32,
        /// Delay before the next attempt.
        delay: Duration,
    },
    /// The server refused something (`error` message), or the client gave up.
    Error {
        /// Error code (see the protocol docs), or `gave_up`.
        code: String,
        /// Explanation.
        message: String,
    },
}

/// Tells a session it is idle or active (see [`crate::IdleTimer`]).
pub(crate) struct IdleSender(mpsc::Sender<Command>);

impl IdleSender {
    /// `false` once the session has ended.
    pub(crate) async fn send(&self, idle: bool) -> bool {
        self.0.send(Command::Idle(idle)).await.is_ok()
    }
}

enum Command {
    Subscribe(Vec<UserId>),
    Unsubscribe(Vec<UserId>),
    Send(ClientMessage),
    Idle(bool),
    Close,
}

/// Options for [`Client::connect`].
#[derive(Clone)]
pub struct ConnectOptions {
    /// Tokens for the user.
    pub token: TokenSource,
    /// Reconnect timing.
    pub backoff: Backoff,
    /// Connect here first instead of asking the coordinator (it may redirect).
    pub url: Option<String>,
    /// Events buffered for the application. When full, the session stops
    /// reading the socket; a reader that falls far behind is dropped by the
    /// server (slow consumer) and the session reconnects.
    pub event_buffer: usize,
    /// Liveness: after this long without a frame from the node, the session
    /// sends a `ping`...
    pub ping_interval: Duration,
    /// ...and when nothing at all arrives for this long after that, it takes
    /// the node for gone (frozen, paused, cut off) and reconnects through the
    /// coordinator. Bounds how long a user can sit on a node that stopped
    /// answering.
    pub ping_timeout: Duration,
    /// Longest wait for one attempt, from TCP connect to `welcome`.
    pub connect_timeout: Duration,
    /// Hosts (`host:port`) a `redirect` or `reconnect` may send the session
    /// to. `None` (the default): only URLs the coordinator itself gives for
    /// the user; any other is checked with the coordinator first, and the
    /// coordinator's answer wins. Never a `wss://` to `ws://` downgrade.
    pub allowed_hosts: Option<Vec<String>>,
    /// The device class this session declares (`web`, `mobile`, `desktop` or
    /// a short label of the app's own), sent as `?device=` on every connect.
    pub device: Option<String>,
}

impl ConnectOptions {
    /// Defaults with this token source.
    pub fn new(token: TokenSource) -> Self {
        Self {
            token,
            backoff: Backoff::default(),
            url: None,
            event_buffer: 1024,
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(5),
            allowed_hosts: None,
            device: None,
        }
    }
}

/// A client of one presence cluster (through its coordinator). Cheap to clone.
#[derive(Clone)]
pub struct Client {
    coordinator: CoordinatorClient,
}

impl Client {
    /// A client of the cluster whose coordinator is at `coordinator` (`http://host:port`).
    pub fn new(coordinator: &str) -> Result<Self, Error> {
        Ok(Self { coordinator: CoordinatorClient::new(coordinator)? })
    }

    /// The coordinator API. A client of the public listener can route; the
    /// presence of others comes through [`Session::subscribe`] (what a user
    /// may see), or from the server API on the admin listener
    /// (`CoordinatorClient::with_api_key`), for an app backend.
    pub fn coordinator(&self) -> &CoordinatorClient {
        &self.coordinator
    }

    /// Where `user_id` connects.
    pub async fn route(&self, user_id: &str) -> Result<crate::Route, Error> {
        self.coordinator.route(user_id).await
    }

    /// Connects as `user_id` and keeps the connection up until the session is closed.
    /// Returns once the first attempt is made; the first event is `Welcome` (or
    /// `Reconnecting` while the cluster cannot be reached).
    pub async fn connect(&self, user_id: &str, options: ConnectOptions) -> Result<Session, Error> {
        let user = UserId::parse(user_id)?;
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(options.event_buffer.max(1));
        let trusted = options_url_set(&options);
        let driver = Driver {
            api: self.coordinator.clone(),
            user,
            options,
            subs: BTreeSet::new(),
            events: ev_tx,
            commands: cmd_rx,
            token: None,
            current_url: None,
            trusted,
            refresh_at: None,
            idle: false,
            unsent: None,
            node: None,
            unreachable: None,
        };
        if let Some(d) = &driver.options.device {
            presence_model::Device::parse(d)
                .map_err(|reason| Error::InvalidUrl { url: format!("?device={d}"), reason })?;
        }
        let task = tokio::spawn(driver.run());
        Ok(Session { commands: cmd_tx, events: ev_rx, task: Some(task) })
    }
}

/// A live session: subscribe, unsubscribe, and read [`Event`]s (it is a `Stream`).
pub struct Session {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<Event>,
    /// The driver task; `None` once closed.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Session {
    /// Starts receiving `Status` for these users (kept across reconnects).
    pub async fn subscribe(&self, user_ids: &[&str]) -> Result<(), Error> {
        let ids = user_ids.iter().map(|u| UserId::parse(u)).collect::<Result<Vec<_>, _>>()?;
        self.commands.send(Command::Subscribe(ids)).await.map_err(|_| Error::Closed)
    }

    /// Stops receiving `Status` for these users.
    pub async fn unsubscribe(&self, user_ids: &[&str]) -> Result<(), Error> {
        let ids = user_ids.iter().map(|u| UserId::parse(u)).collect::<Result<Vec<_>, _>>()?;
        self.commands.send(Command::Unsubscribe(ids)).await.map_err(|_| Error::Closed)
    }

    /// Sets the user's availability (`Away`, `Busy`, `Invisible`, or
    /// `Available` to clear) and status text, for `expires_in` or until set
    /// again. User-level: every connection of the user and every watcher
    /// sees it, across reconnects; text at most 128 characters, expiry at
    /// most a week (the server answers anything else with `bad_request`).
    pub async fn set_status(
        &self,
        availability: presence_model::Availability,
        text: Option<&str>,
        expires_in: Option<Duration>,
    ) -> Result<(), Error> {
        let m = ClientMessage::SetStatus {
            availability,
            text: text.map(str::to_string),
            expires_in_ms: expires_in.map(|d| d.as_millis().max(1) as u64),
        };
        self.commands.send(Command::Send(m)).await.map_err(|_| Error::Closed)
    }

    /// Says whether this connection is idle (no user input for a while);
    /// kept across reconnects. The user shows as idle when all their
    /// connections are. See [`crate::IdleTimer`] for the usual way to decide it.
    pub async fn set_idle(&self, idle: bool) -> Result<(), Error> {
        self.commands.send(Command::Idle(idle)).await.map_err(|_| Error::Closed)
    }

    /// A handle that sends commands to the session: what [`crate::IdleTimer`] holds.
    pub(crate) fn idle_sender(&self) -> IdleSender {
        IdleSender(self.commands.clone())
    }

    /// The next event; `None` once the session has ended.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Disconnects and ends the session.
    pub async fn close(mut self) {
        let _ = self.commands.send(Command::Close).await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Stream for Session {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A dropped session stops reconnecting; `close` is the clean way.
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Why an attempt to connect failed.
enum Failure {
    /// Go to this URL instead (redirect), at once.
    Redirect(String),
    /// The token expired: refresh it and retry at once.
    Expired,
    /// Anything else: back off.
    Other(String),
}

struct Driver {
    api: CoordinatorClient,
    user: UserId,
    options: ConnectOptions,
    subs: BTreeSet<UserId>,
    events: mpsc::Sender<Event>,
    commands: mpsc::Receiver<Command>,
    token: Option<String>,
    /// The URL of the connection in use (or being made): its scheme must not be downgraded.
    current_url: Option<String>,
    /// URLs the coordinator (or the application) named for this user.
    trusted: std::collections::HashSet<String>,
    /// When to send a fresh token: 80% into the remaining life of the current
    /// one (from `welcome`, then from each refreshed token's `exp`), fixed when
    /// learnt, so that a busy connection does not keep pushing it back.
    refresh_at: Option<tokio::time::Instant>,
    /// The app said this session is idle (re-said on every new connection).
    idle: bool,
    /// A status set while disconnected: sent on the next connection.
    unsent: Option<ClientMessage>,
    /// The node of the connection in use (from `welcome`), or the one the
    /// coordinator last routed to while connecting.
    node: Option<String>,
    /// A node the session lost or could not reach since its last `welcome`:
    /// named to the coordinator on the next route ([`CoordinatorClient::route_after_losing`]).
    unreachable: Option<String>,
}

impl Driver {
    async fn emit(&self, e: Event) -> bool {
        self.events.send(e).await.is_ok()
    }

    /// One attempt: route (unless a URL is given), connect, read up to `welcome`.
    async fn attempt(&mut self, url: Option<String>, expired: bool) -> Result<Connection, Failure> {
        if expired || self.token.is_none() {
            self.token =
                Some(self.options.token.get(expired).await.map_err(|e| Failure::Other(format!("token: {e}")))?);
        }
        let token = self.token.clone().unwrap_or_default();
        let url = match url {
            Some(u) => {
                // A URL from a redirect names no node (unless the coordinator is asked after all).
                self.node = None;
                self.vet(u).await?
            }
            None => self.route().await?,
        };
        self.current_url = Some(url.clone());
        // A node that accepts TCP but never answers (frozen, overloaded) must not hold the attempt.
        let deadline = tokio::time::Instant::now() + self.options.connect_timeout;
        let target = match &self.options.device {
            Some(d) => {
                format!("{url}{}device={}", if url.contains('?') { '&' } else { '?' }, crate::coordinator::encode(d))
            }
            None => url.clone(),
        };
        let connecting = tokio::time::timeout_at(deadline, Connection::connect(&target, TokenPlacement::Header(token)));
        let mut conn = match connecting.await {
            Ok(Ok(c)) => c,
            Ok(Err(Error::Api { code, .. })) if code == code::TOKEN_EXPIRED => return Err(Failure::Expired),
            // The node answered: it is up (full, refusing the token, ...).
            Ok(Err(e @ Error::Api { .. })) => return Err(Failure::Other(e.to_string())),
            Ok(Err(e)) => {
                self.unreachable = self.node.clone();
                return Err(Failure::Other(e.to_string()));
            }
            Err(_) => {
                self.unreachable = self.node.clone();
                return Err(Failure::Other(format!("{url} did not answer the upgrade in time")));
            }
        };
        let mut redirect = None;
        let mut expired_said = false;
        loop {
            match tokio::time::timeout_at(deadline, conn.next()).await {
                Ok(Some(Frame::Message(ServerMessage::Welcome {
                    node_id,
                    connection_id,
                    epoch,
                    connections,
                    token_expires_at,
                    ..
                }))) => {
                    self.expires_at(token_expires_at);
                    (self.node, self.unreachable) = (Some(node_id.clone()), None);
                    if !self.emit(Event::Welcome { node_id, connection_id, epoch, connections }).await {
                        return Err(Failure::Other("session dropped".into()));
                    }
                    break;
                }
                Ok(Some(Frame::Message(ServerMessage::Redirect { url, .. }))) => redirect = Some(url),
                Ok(Some(Frame::Message(ServerMessage::Error { code, .. }))) if code == code::TOKEN_EXPIRED => {
                    expired_said = true
                }
                Ok(Some(Frame::Message(_) | Frame::Unparsed(_))) => {}
                Ok(Some(Frame::Closed { code, reason })) => {
                    return Err(match (redirect, expired_said) {
                        (Some(u), _) => Failure::Redirect(u),
                        (None, true) => Failure::Expired,
                        (None, false) => Failure::Other(format!("closed {code} {reason}")),
                    })
                }
                Ok(None) => return Err(Failure::Other("connection ended before welcome".into())),
                Err(_) => return Err(Failure::Other("no welcome in time".into())),
            }
        }
        // A new connection starts active; an idle session says so again.
        if self.idle {
            conn.send(&ClientMessage::Activity { idle: true }).await.map_err(|e| Failure::Other(e.to_string()))?;
        }
        if let Some(m) = self.unsent.take() {
            conn.send(&m).await.map_err(|e| Failure::Other(e.to_string()))?;
        }
        if !self.subs.is_empty() {
            let ids: Vec<UserId> = self.subs.iter().cloned().collect();
            for chunk in ids.chunks(500) {
                conn.send(&ClientMessage::Subscribe { user_ids: chunk.to_vec() })
                    .await
                    .map_err(|e| Failure::Other(e.to_string()))?;
            }
        }
        Ok(conn)
    }

    /// The user's route from the coordinator (remembered as trusted).
    async fn route(&mut self) -> Result<String, Failure> {
        let user = self.user.as_str();
        let route = match &self.unreachable {
            Some(node) => self.api.route_after_losing(user, node).await,
            None => self.api.route(user).await,
        };
        let route = route.map_err(|e| Failure::Other(e.to_string()))?;
        self.node = route.node_id;
        let url = route.url.ok_or_else(|| Failure::Other("no node owns the user's vnode".into()))?;
        self.trusted.insert(url.clone());
        Ok(url)
    }

    /// Where a `redirect` or `reconnect` (or the first URL) may really take
    /// the session: see [`ConnectOptions::allowed_hosts`].
    async fn vet(&mut self, url: String) -> Result<String, Failure> {
        match redirect_check(self.current_url.as_deref(), &url, self.options.allowed_hosts.as_deref()) {
            RedirectCheck::Refused(why) => {
                tracing::warn!(%url, why, "redirect refused; asking the coordinator");
                self.route().await
            }
            RedirectCheck::Allowed => Ok(url),
            RedirectCheck::AskCoordinator if self.trusted.contains(&url) => Ok(url),
            RedirectCheck::AskCoordinator => self.route().await,
        }
    }

    /// Connects, retrying as needed. `None` when the session should end.
    async fn establish(&mut self, mut url: Option<String>) -> Option<Connection> {
        let mut failures = 0u32;
        let mut expired = false;
        let mut hops = 0u32;
        loop {
            match self.attempt(url.take(), expired).await {
                Ok(c) => return Some(c),
                // A chain of redirects is followed a few hops, each a little later;
                // then it counts as a failed attempt (a loop between nodes, or a hostile one).
                Err(Failure::Redirect(u)) if hops < MAX_REDIRECTS => {
                    hops += 1;
                    tokio::time::sleep(REDIRECT_PAUSE * hops).await;
                    url = Some(u);
                }
                Err(Failure::Redirect(_)) => {
                    hops = 0;
                    failures += 1;
                    if !self.back_off("too many redirects".into(), failures, self.options.backoff.delay(failures)).await
                    {
                        return None;
                    }
                }
                Err(Failure::Expired) if !expired => {
                    expired = true;
                    if !self
                        .emit(Event::Reconnecting {
                            reason: ReconnectReason::TokenExpired,
                            attempt: failures,
                            delay: Duration::ZERO,
                        })
                        .await
                    {
                        return None;
                    }
                    continue;
                }
                Err(f) => {
                    expired = matches!(f, Failure::Expired);
                    failures += 1;
                    let cause = match f {
                        Failure::Other(c) => c,
                        _ => "token refused after refresh".into(),
                    };
                    if self.options.backoff.max_attempts.is_some_and(|m| failures >= m) {
                        let _ = self
                            .emit(Event::Error {
                                code: code::GAVE_UP.into(),
                                message: format!("after {failures} attempts: {cause}"),
                            })
                            .await;
                        return None;
                    }
                    if !self.back_off(cause, failures, self.options.backoff.delay(failures)).await {
                        return None;
                    }
                    continue;
                }
            }
            expired = false;
        }
    }

    async fn run(mut self) {
        let first = self.options.url.clone();
        let Some(mut conn) = self.establish(first).await else { return };
        let mut heard = tokio::time::Instant::now();
        let mut pinged = false;
        loop {
            let refresh_at = self.refresh_at;
            let refresh = async move {
                match refresh_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            // Liveness: a ping after `ping_interval` of silence, a reconnect after `ping_timeout` more.
            let check =
                heard + self.options.ping_interval + if pinged { self.options.ping_timeout } else { Duration::ZERO };
            tokio::select! {
                _ = refresh => {
                    match self.options.token.get(true).await {
                        Ok(token) => {
                            self.expires_at(token_expiry_ms(&token));
                            self.token = Some(token.clone());
                            let _ = conn.send(&ClientMessage::Auth { token, device: None }).await;
                        }
                        Err(e) => {
                            // Tried again in a second; at expiry the server closes and the session reconnects.
                            self.refresh_at = Some(tokio::time::Instant::now() + Duration::from_millis(1250));
                            if !self.emit(Event::Error { code: code::UNAUTHORIZED.into(), message: format!("token refresh failed: {e}") }).await {
                                return;
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(check) => {
                    if !pinged {
                        pinged = true;
                        let _ = conn.send(&ClientMessage::Ping).await;
                        continue;
                    }
                    let silent = heard.elapsed();
                    let Some(new) = self.reconnect_after(format!("no answer from the node for {} ms", silent.as_millis())).await else { return };
                    conn = new;
                    (heard, pinged) = (tokio::time::Instant::now(), false);
                }
                cmd = self.commands.recv() => match cmd {
                    None | Some(Command::Close) => {
                        conn.close().await;
                        return;
                    }
                    Some(Command::Subscribe(ids)) => {
                        let new: Vec<UserId> = ids.into_iter().filter(|u| self.subs.insert(u.clone())).collect();
                        if !new.is_empty() && conn.send(&ClientMessage::Subscribe { user_ids: new }).await.is_err() {
                            // The read side notices the drop and reconnects (and re-subscribes).
                        }
                    }
                    Some(Command::Send(m)) => {
                        let _ = conn.send(&m).await;
                    }
                    Some(Command::Idle(idle)) => {
                        if idle != self.idle {
                            self.idle = idle;
                            let _ = conn.send(&ClientMessage::Activity { idle }).await;
                        }
                    }
                    Some(Command::Unsubscribe(ids)) => {
                        let gone: Vec<UserId> = ids.into_iter().filter(|u| self.subs.remove(u)).collect();
                        if !gone.is_empty() {
                            let _ = conn.send(&ClientMessage::Unsubscribe { user_ids: gone }).await;
                        }
                    }
                },
                frame = conn.next() => {
                    (heard, pinged) = (tokio::time::Instant::now(), false);
                    let event = match frame {
                        Some(Frame::Message(ServerMessage::Count { connections, .. })) => Event::Count { connections },
                        Some(Frame::Message(ServerMessage::Status(v))) => Event::Status(v),
                        Some(Frame::Message(ServerMessage::Error { code, message })) => Event::Error { code, message },
                        Some(Frame::Message(ServerMessage::Reconnect { url, .. })) => {
                            if !self.emit(Event::Reconnecting { reason: ReconnectReason::Handoff { url: url.clone() }, attempt: 0, delay: Duration::ZERO }).await {
                                return;
                            }
                            // The new connection first; only then let the old one go. No URL
                            // (the node was fenced): the coordinator knows the new owner.
                            let Some(new) = self.establish(Some(url).filter(|u| !u.is_empty())).await else {
                                conn.close().await;
                                return;
                            };
                            let old = std::mem::replace(&mut conn, new);
                            tokio::spawn(old.close());
                            continue;
                        }
                        Some(Frame::Message(_) | Frame::Unparsed(_)) => continue,
                        Some(Frame::Closed { code, reason }) => {
                            let Some(new) = self.reconnect_after(format!("closed {code} {reason}")).await else { return };
                            conn = new;
                            continue;
                        }
                        None => {
                            let Some(new) = self.reconnect_after("connection lost".into()).await else { return };
                            conn = new;
                            continue;
                        }
                    };
                    if !self.emit(event).await {
                        return;
                    }
                }
            }
        }
    }

    /// The connection's token runs out at `at` (ms since the Unix epoch):
    /// refresh when 80% of what is left has passed.
    fn expires_at(&mut self, at: Option<u64>) {
        self.refresh_at = at.map(|at| {
            let left = at.saturating_sub(presence_model::time::now_ms());
            tokio::time::Instant::now() + Duration::from_millis(left * 4 / 5)
        });
    }

    /// After a drop: announce it, wait the first backoff step, then establish
    /// again, naming the lost node to the coordinator.
    async fn reconnect_after(&mut self, cause: String) -> Option<Connection> {
        self.unreachable = self.node.clone();
        if !self.back_off(cause, 0, self.options.backoff.delay(1)).await {
            return None;
        }
        self.establish(None).await
    }

    /// Announces a `Reconnecting` (attempt `attempt`, after `delay`) and waits
    /// the delay out. Commands still count while waiting: subscriptions are
    /// remembered for the next connection, and a close ends the session
    /// (`false`, as when nobody reads the events any more).
    async fn back_off(&mut self, cause: String, attempt: u32, delay: Duration) -> bool {
        if !self.emit(Event::Reconnecting { reason: ReconnectReason::Dropped { cause }, attempt, delay }).await {
            return false;
        }
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                cmd = self.commands.recv() => match cmd {
                    None | Some(Command::Close) => return false,
                    Some(Command::Subscribe(ids)) => self.subs.extend(ids),
                    Some(Command::Unsubscribe(ids)) => ids.iter().for_each(|u| { self.subs.remove(u); }),
                    Some(Command::Send(m)) => self.unsent = Some(m),
                    Some(Command::Idle(idle)) => self.idle = idle,
                },
            }
        }
    }
}

/// Redirects followed in a row before the chain counts as a failed attempt.
const MAX_REDIRECTS: u32 = 5;
/// Pause before following the n-th redirect of a chain (n times this).
const REDIRECT_PAUSE: Duration = Duration::from_millis(50);

/// The first URL the application gave, if any: trusted like the coordinator's.
fn options_url_set(options: &ConnectOptions) -> std::collections::HashSet<String> {
    options.url.iter().cloned().collect()
}

/// What a redirect target may be, before any coordinator is asked.
#[derive(Debug, PartialEq, Eq)]
enum RedirectCheck {
    /// In the application's allow-list.
    Allowed,
    /// Not allowed whatever the coordinator says.
    Refused(&'static str),
    /// Allowed if the coordinator names it for the user.
    AskCoordinator,
}

/// The host:port of a ws(s) URL.
fn host_of(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("wss://").or_else(|| url.strip_prefix("ws://"))?;
    Some(rest.split(['/', '?']).next().unwrap_or(rest))
}

fn redirect_check(current: Option<&str>, target: &str, allowed: Option<&[String]>) -> RedirectCheck {
    let Some(host) = host_of(target) else { return RedirectCheck::Refused("not a ws:// or wss:// URL") };
    if current.is_some_and(|c| c.starts_with("wss://")) && !target.starts_with("wss://") {
        return RedirectCheck::Refused("a wss:// session is never moved to ws://");
    }
    match allowed {
        Some(list) if list.iter().any(|h| h == host) => RedirectCheck::Allowed,
        Some(_) => RedirectCheck::Refused("host not in the allow-list"),
        None => RedirectCheck::AskCoordinator,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(2), max_attempts: None };
        for attempt in 1..20 {
            let cap = Duration::from_millis(100 * (1u64 << (attempt - 1).min(20))).min(Duration::from_secs(2));
            let d = b.delay(attempt);
            assert!(d >= cap / 2 && d <= cap, "attempt {attempt}: {d:?} not in [{:?}, {cap:?}]", cap / 2);
        }
        let spread: BTreeSet<Duration> = (0..20).map(|_| b.delay(10)).collect();
        assert!(spread.len() > 1, "jittered");
    }
}

/// The `exp` of a JWT in ms since the Unix epoch, read without verifying it
/// (the server verifies; this only schedules the next refresh). `None` when
/// the token cannot be read.
fn token_expiry_ms(token: &str) -> Option<u64> {
    let payload = presence_model::auth::base64url(token.split('.').nth(1)?)?;
    let claims: serde_json::Value = serde_json::from_slice(&payload).ok()?;
    claims.get("exp")?.as_f64().map(|exp| (exp * 1000.0) as u64)
}

#[cfg(test)]
mod redirect_tests {
    use super::*;

    #[test]
    fn redirects_keep_the_scheme_and_the_allow_list() {
        let secure = Some("wss://a.example:443/socket");
        assert_eq!(
            redirect_check(secure, "ws://a.example:80/socket", None),
            RedirectCheck::Refused("a wss:// session is never moved to ws://")
        );
        assert_eq!(redirect_check(secure, "wss://b.example/socket", None), RedirectCheck::AskCoordinator);
        let list = vec!["b.example:443".to_string()];
        assert_eq!(redirect_check(secure, "wss://b.example:443/socket", Some(&list)), RedirectCheck::Allowed);
        assert!(matches!(redirect_check(secure, "wss://evil.example/socket", Some(&list)), RedirectCheck::Refused(_)));
        assert!(matches!(redirect_check(None, "http://x/socket", None), RedirectCheck::Refused(_)));
        assert_eq!(host_of("ws://h:9/socket?x=1"), Some("h:9"));
    }
}

#[cfg(test)]
mod expiry_tests {
    #[test]
    fn the_expiry_of_a_token_is_read_without_a_key() {
        let token = presence_model::auth::mint_hs256(b"k", "alice", 120);
        let at = super::token_expiry_ms(&token).expect("exp");
        let want = presence_model::time::now_ms() + 120_000;
        assert!(at.abs_diff(want) < 2_000, "{at} vs {want}");
        assert_eq!(super::token_expiry_ms("not-a-jwt"), None);
    }
}
