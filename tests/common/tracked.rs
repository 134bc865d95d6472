//! A test client that behaves like an SDK for moves: it follows `redirect`
//! and `reconnect` (connecting to the new node before dropping the old one)
//! and records everything it is told, so a test knows the truth (which
//! clients are connected) and what each client saw.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use presence_client::{ClientMessage, Connection, CoordinatorClient, Frame, ServerMessage, TokenPlacement, UserId};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a client knows.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Connected (welcome received, not closed).
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
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            coordinator.to_string(),
            user.to_string(),
            presence_model::auth::mint_hs256(secret.as_bytes(), user, 3600),
            watch.to_vec(),
            seen.clone(),
            stop.clone(),
        ));
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

fn record(seen: &Arc<Mutex<Seen>>, m: &ServerMessage) {
    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
    match m {
        ServerMessage::Welcome { node_id, connections, .. } => {
            s.alive = true;
            s.node_id = Some(node_id.clone());
            s.count = Some(*connections);
        }
        ServerMessage::Count { connections, .. } => s.count = Some(*connections),
        ServerMessage::Status { user_id, online, connections, .. } => {
            s.status.insert(user_id.to_string(), *connections);
            s.history.push((user_id.to_string(), *online, *connections));
        }
        _ => {}
    }
}

/// Opens a connection at `url` and reads up to its welcome. `None` when it ends otherwise
/// (the redirect URL is returned in the error case when there is one).
async fn open(url: &str, token: &str, watch: &[String], seen: &Arc<Mutex<Seen>>) -> Result<Connection, Option<String>> {
    let mut conn = Connection::connect(url, TokenPlacement::Header(token.into())).await.map_err(|_| None)?;
    let mut redirect = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), conn.next()).await {
            Ok(Some(Frame::Message(m @ ServerMessage::Welcome { .. }))) => {
                record(seen, &m);
                break;
            }
            Ok(Some(Frame::Message(ServerMessage::Redirect { url, .. }))) => redirect = Some(url),
            Ok(Some(Frame::Message(m))) => record(seen, &m),
            _ => return Err(redirect),
        }
    }
    if !watch.is_empty() {
        let ids = watch.iter().filter_map(|u| UserId::parse(u).ok()).collect();
        conn.send(&ClientMessage::Subscribe { user_ids: ids }).await.map_err(|_| None)?;
    }
    Ok(conn)
}

/// Routes and connects, following redirects, retrying for a few seconds.
async fn establish(
    api: &CoordinatorClient,
    user: &str,
    token: &str,
    watch: &[String],
    seen: &Arc<Mutex<Seen>>,
    mut url: Option<String>,
) -> Option<Connection> {
    for _ in 0..50 {
        let target = match url.take() {
            Some(u) => u,
            None => match api.route(user).await {
                Ok(r) => r.url.unwrap_or_default(),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        match open(&target, token, watch, seen).await {
            Ok(c) => return Some(c),
            Err(redirect) => {
                url = redirect;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    None
}

async fn run(
    coordinator: String,
    user: String,
    token: String,
    watch: Vec<String>,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
) {
    let api = CoordinatorClient::new(&coordinator).expect("coordinator url");
    let Some(mut conn) = establish(&api, &user, &token, &watch, &seen, None).await else {
        seen.lock().unwrap_or_else(|p| p.into_inner()).alive = false;
        return;
    };
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => {
                conn.close().await;
                seen.lock().unwrap_or_else(|p| p.into_inner()).alive = false;
                return;
            }
            f = conn.next() => f,
        };
        match frame {
            Some(Frame::Message(ServerMessage::Reconnect { url, .. })) => {
                // Connect to the new owner first, then let the old connection go.
                if let Some(new) = establish(&api, &user, &token, &watch, &seen, Some(url)).await {
                    seen.lock().unwrap_or_else(|p| p.into_inner()).moves += 1;
                    let old = std::mem::replace(&mut conn, new);
                    old.close().await;
                }
            }
            Some(Frame::Message(m)) => record(&seen, &m),
            Some(Frame::Unparsed(_)) => {}
            Some(Frame::Closed { .. }) | None => {
                // The node closed us or died: this client is gone (a test counts it out).
                seen.lock().unwrap_or_else(|p| p.into_inner()).alive = false;
                return;
            }
        }
    }
}
