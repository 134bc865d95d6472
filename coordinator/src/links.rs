//! The leader's links to the ws-nodes: one kept-alive HTTP connection to
//! each live node, asking its `/healthz` every few seconds.
//!
//! What a link is for is its end. When a node's process dies (killed,
//! crashed, out of memory), its kernel closes the link at once; the link
//! task then connects again, and if the address refuses, no process listens
//! there any more. That is the proof the fast failure detector
//! ([`crate::control`]) otherwise waits `FAST_DEATH_MS` of heartbeat
//! silence for, so a killed node's users move within milliseconds instead
//! of a second or two. A link that could never be made (a firewall that
//! rejects the coordinator, a node behind a proxy) proves nothing and
//! leaves the node to the silence rule; so does a node that is draining
//! (it closes its listener on purpose and deregisters itself).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use presence_model::NodeRecord;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often a link asks the node's `/healthz` (well inside the node's
/// header timeout, which closes idle keep-alive connections).
const ASK_EVERY: Duration = Duration::from_secs(3);
/// A connect or an answer slower than this ends the attempt (no proof either way).
const LINK_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed connect that proves nothing, the next try waits this long.
const RETRY: Duration = Duration::from_secs(1);

/// The links of one coordinator (only the leader holds any).
#[derive(Default)]
pub struct Links {
    /// Per node run (`id`, `run_id`): the link task's cancellation.
    held: Mutex<HashMap<(String, String), CancellationToken>>,
    /// Node runs (`id`, `run_id`) whose link closed and whose address then
    /// refused: to be counted dead, unless a new run has registered since.
    lost: Arc<Mutex<HashSet<(String, String)>>>,
    /// Wakes the control loop when a link is lost.
    pub wake: Arc<Notify>,
}

impl Links {
    /// Holds one link to each node in `nodes` (the leader's live list) and
    /// drops the links to nodes no longer in it.
    pub fn keep(&self, nodes: &[NodeRecord]) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let live: HashSet<(String, String)> = nodes.iter().map(|n| (n.id.clone(), n.run_id.clone())).collect();
        held.retain(|key, cancel| {
            let keep = live.contains(key);
            if !keep {
                cancel.cancel();
            }
            keep
        });
        for n in nodes {
            let key = (n.id.clone(), n.run_id.clone());
            if held.contains_key(&key) {
                continue;
            }
            let cancel = CancellationToken::new();
            let (lost, wake) = (self.lost.clone(), self.wake.clone());
            let (run, url, stop) = (key.clone(), n.url.clone(), cancel.clone());
            tokio::spawn(async move {
                if hold(&url, &stop).await {
                    lost.lock().unwrap_or_else(|p| p.into_inner()).insert(run);
                    wake.notify_one();
                }
            });
            held.insert(key, cancel);
        }
    }

    /// Drops every link (this coordinator no longer leads).
    pub fn drop_all(&self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for (_, cancel) in held.drain() {
            cancel.cancel();
        }
    }

    /// The node runs whose link was lost to a refusing address since the last call.
    pub fn take_lost(&self) -> HashSet<(String, String)> {
        std::mem::take(&mut *self.lost.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Links held now.
    pub fn len(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no link is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Holds a link to the node at `url` until `stop`: `true` when a link that
/// was up closed and the address then refused a new connection.
async fn hold(url: &str, stop: &CancellationToken) -> bool {
    let Some(addr) = crate::probe::address(url) else { return false };
    let mut linked = false;
    loop {
        let connect = tokio::time::timeout(LINK_TIMEOUT, tokio::net::TcpStream::connect(addr.clone()));
        let stream = tokio::select! {
            _ = stop.cancelled() => return false,
            r = connect => r,
        };
        let stream = match stream {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused && linked => return true,
            _ => {
                // Never linked, or a timeout: no proof. Try again a little later.
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let io = hyper_util::rt::TokioIo::new(stream);
        let Ok(Ok((mut ask, conn))) =
            tokio::time::timeout(LINK_TIMEOUT, hyper::client::conn::http1::handshake(io)).await
        else {
            // Accepted but unanswered (a paused process): no proof; not a connection a second either.
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(RETRY) => continue,
            }
        };
        linked = true;
        let conn = tokio::spawn(conn);
        let mut closed = std::pin::pin!(async move {
            let _ = conn.await;
        });
        loop {
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = &mut closed => break,
                _ = tokio::time::sleep(ASK_EVERY) => {
                    let req = http::Request::get("/healthz")
                        .header(http::header::HOST, addr.0.as_str())
                        .body(http_body_util::Empty::<bytes::Bytes>::new());
                    let Ok(req) = req else { break };
                    match tokio::time::timeout(LINK_TIMEOUT, ask.send_request(req)).await {
                        Ok(Ok(_)) => {}
                        // Closed under the request, or too slow: connect again, which tells.
                        _ => break,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, url: String) -> NodeRecord {
        crate::testing::node_record(id, url, 0)
    }

    /// A tiny HTTP server answering every request on every connection until
    /// dropped (the node's `/healthz`).
    async fn server() -> (tokio::task::JoinHandle<()>, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/socket", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((s, _)) = listener.accept().await {
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (task, url)
    }

    #[tokio::test]
    async fn a_killed_node_is_reported_at_once_and_a_live_one_never() {
        let links = Links::default();
        let (killed, killed_url) = server().await;
        let (_alive, alive_url) = server().await;
        links.keep(&[node("killed", killed_url), node("alive", alive_url)]);
        assert_eq!(links.len(), 2);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(links.take_lost().is_empty());
        // The process dies: its listener and every connection close.
        killed.abort();
        let _ = killed.await;
        tokio::time::timeout(Duration::from_secs(2), links.wake.notified()).await.expect("woken at once");
        assert_eq!(links.take_lost(), HashSet::from([("killed".to_string(), "killed-run".to_string())]));
        // Nodes that left the live list lose their links.
        links.keep(&[]);
        assert!(links.is_empty());
    }

    #[tokio::test]
    async fn an_address_that_never_accepted_proves_nothing() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let links = Links::default();
        links.keep(&[node("never", format!("ws://127.0.0.1:{closed}/socket"))]);
        assert!(tokio::time::timeout(Duration::from_millis(300), links.wake.notified()).await.is_err());
        assert!(links.take_lost().is_empty());
        links.drop_all();
        assert!(links.is_empty());
    }
}
