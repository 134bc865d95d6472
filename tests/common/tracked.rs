//! A test client on the SDK that records everything it is told, so a test
//! knows the truth (which clients are connected) and what each client saw.
//! It follows redirects and handoffs as the SDK does. By default a dropped
//! connection ends it (the test counts it out) instead of reconnecting; a
//! [`Client::resilient`] one reconnects as an application's would, so its
//! user stays one live session.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use presence_client::{ConnectOptions, Event, ReconnectReason, TokenSource};
use presence_model::api::PresenceView;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a client knows.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Connected (welcome received, not dropped).
    pub alive: bool,
    /// The node it is on.
    pub node_id: Option<String>,
    /// The last count (welcome or `count`).
    pub count: Option<u64>,
    /// Last `status` per watched user.
    pub status: HashMap<String, u64>,
    /// Every `status` received, in order.
    pub history: Vec<(String, bool, u64)>,
    /// Handoffs followed.
    pub moves: u32,
    /// Every `status` with the time it arrived.
    pub timeline: Vec<(tokio::time::Instant, String, u64)>,
    /// Reconnections after a drop (resilient clients).
    pub reconnects: u32,
}

pub struct Client {
    pub user: String,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Client {
    /// Connects `user` through the coordinator, subscribing to `watch`; waits for the welcome.
    pub async fn connect(coordinator: &str, secret: &str, user: &str, watch: &[String]) -> Client {
        Self::start(coordinator, secret, user, watch, None).await
    }

    /// Like [`Client::connect`], but a dropped connection is followed by the
    /// SDK's reconnect, and a node that stops answering for `liveness` (ping
    /// interval and ping timeout each) is left for another.
    pub async fn resilient(
        coordinator: &str,
        secret: &str,
        user: &str,
        watch: &[String],
        liveness: Duration,
    ) -> Client {
        Self::start(coordinator, secret, user, watch, Some(liveness)).await
    }

    async fn start(
        coordinator: &str,
        secret: &str,
        user: &str,
        watch: &[String],
        resilient: Option<Duration>,
    ) -> Client {
        let sdk = presence_client::Client::new(coordinator).expect("coordinator url");
        let mut opts =
            ConnectOptions::new(TokenSource::fixed(presence_model::auth::mint_hs256(secret.as_bytes(), user, 3600)));
        opts.backoff.max_attempts = Some(30);
        if let Some(liveness) = resilient {
            opts.ping_interval = liveness;
            opts.ping_timeout = liveness;
            opts.connect_timeout = liveness * 2;
            opts.backoff.initial = Duration::from_millis(50);
            opts.backoff.max = Duration::from_millis(500);
        }
        let mut session = sdk.connect(user, opts).await.expect("session");
        if !watch.is_empty() {
            let ids: Vec<&str> = watch.iter().map(String::as_str).collect();
            session.subscribe(&ids).await.expect("subscribe");
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let (s, st) = (seen.clone(), stop.clone());
        let task = tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = st.cancelled() => None,
                    e = session.next_event() => e,
                };
                let ended = {
                    let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
                    match event {
                        Some(Event::Welcome { node_id, connections, .. }) => {
                            g.alive = true;
                            g.node_id = Some(node_id);
                            g.count = Some(connections);
                            false
                        }
                        Some(Event::Count { connections }) => {
                            g.count = Some(connections);
                            false
                        }
                        Some(Event::Status(PresenceView { user_id, online, connections, .. })) => {
                            let user_id = user_id.to_string();
                            g.status.insert(user_id.clone(), connections);
                            g.timeline.push((tokio::time::Instant::now(), user_id.clone(), connections));
                            g.history.push((user_id, online, connections));
                            false
                        }
                        Some(Event::Reconnecting { reason: ReconnectReason::Handoff { .. }, .. }) => {
                            g.moves += 1;
                            false
                        }
                        // Before the first welcome, retries are part of connecting.
                        Some(Event::Reconnecting { .. }) if !g.alive => false,
                        Some(Event::Reconnecting { .. }) if resilient.is_some() => {
                            g.reconnects += 1;
                            false
                        }
                        Some(Event::Error { code, .. }) if code != "gave_up" => false,
                        // Dropped, gave up, closed by the test, or ended.
                        _ => {
                            g.alive = false;
                            true
                        }
                    }
                };
                if ended {
                    session.close().await;
                    return;
                }
            }
        });
        let c = Client { user: user.into(), seen, stop, task };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !c.seen().alive {
            assert!(tokio::time::Instant::now() < deadline, "{user} never got a welcome");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        c
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn alive(&self) -> bool {
        self.seen().alive && !self.task.is_finished()
    }

    /// Disconnects cleanly and waits for the task to end.
    pub async fn close(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
