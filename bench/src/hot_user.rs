//! A hot user: one user watched by many connections spread over the nodes of
//! a 3-node cluster (a child process, embedded backends); how long from the
//! user's connect (and close) until the last watcher has the `status`.
//!
//! Its floor, in the same run: a bare tungstenite server (one task per
//! socket, like the nodes) holding as many connections, that writes one
//! ready-made `status` to all of them when told to; the same clients time
//! it the same way. Below both, the kernel's own cost of the same writes
//! and reads ([`crate::socket_floor`]).

use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use presence_client::{ClientMessage, Connection, CoordinatorClient, Frame, ServerMessage, UserId};

use crate::{child, percentile, token, welcomed};
use presence_model::api::PresenceView;

/// Waits for a `status` with `online` (batches come unfolded), then reports when it came.
async fn until_status(c: &mut Connection, online: bool) -> Option<Instant> {
    loop {
        match c.next().await? {
            Frame::Message(ServerMessage::Status(PresenceView { online: o, .. })) if o == online => {
                return Some(Instant::now())
            }
            _ => {}
        }
    }
}

/// Runs the measurement with `watchers` connections, then its floor.
pub async fn run(watchers: usize) -> anyhow::Result<()> {
    product(watchers).await?;
    floor(watchers).await?;
    crate::socket_floor::run(watchers).await?;
    println!("  target: the last watcher within 50 ms (19,000 watchers)");
    Ok(())
}

/// Times from `t0` until each of `conns` has a `status` with `online`; prints them.
async fn time_to_all(
    conns: &mut Vec<Connection>,
    online: bool,
    what: &str,
    trigger: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let watchers = conns.len();
    let waits: Vec<_> = conns
        .drain(..)
        .map(|mut c| {
            tokio::spawn(async move {
                let at = until_status(&mut c, online).await;
                (c, at)
            })
        })
        .collect();
    let t0 = Instant::now();
    trigger.await?;
    let mut lat = Vec::with_capacity(watchers);
    for w in waits {
        let (c, at) = w.await?;
        if let Some(at) = at {
            lat.push(at - t0);
        }
        conns.push(c);
    }
    lat.sort();
    if lat.is_empty() {
        anyhow::bail!("no watcher heard the change");
    }
    println!("  {what:<38} {} of {watchers} watchers; {}", lat.len(), spread(&lat));
    Ok(())
}

/// p50, p99 and the last of sorted latencies, as the hot user's lines print them.
pub(crate) fn spread(sorted: &[Duration]) -> String {
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, last {:.1} ms",
        percentile(sorted, 0.5),
        percentile(sorted, 0.99),
        percentile(sorted, 1.0)
    )
}

/// The bare floor: a tungstenite server that writes one `status` to every socket.
async fn floor(watchers: usize) -> anyhow::Result<()> {
    let (_server, addr) = child("serve-broadcast").await?;
    let url = format!("ws://{addr}/");
    let started = Instant::now();
    let opens =
        futures_util::stream::iter(0..watchers).map(|_| {
            let url = url.clone();
            async move {
                Connection::connect(&url, presence_client::TokenPlacement::None).await.map_err(anyhow::Error::from)
            }
        });
    let mut conns = Vec::with_capacity(watchers);
    let mut opens = opens.buffer_unordered(256);
    while let Some(c) = opens.next().await {
        conns.push(c?);
    }
    drop(opens);
    // The server counts its sockets; wait until it holds them all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "floor: a bare tungstenite server writing one status to {watchers} sockets (connected in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let mut control = Connection::connect(&url, presence_client::TokenPlacement::None).await?;
    for (what, online) in [("online", true), ("offline", false)] {
        let go = async {
            control.send(&ClientMessage::Subscribe { user_ids: vec![UserId::parse(what)?] }).await?;
            Ok(())
        };
        time_to_all(&mut conns, online, &format!("status {what}"), go).await?;
    }
    Ok(())
}

/// The product: 3 nodes, one hot user.
async fn product(watchers: usize) -> anyhow::Result<()> {
    let (_cluster, addr) = child("serve-route").await?;
    let api = CoordinatorClient::new(&format!("http://{addr}"))?;
    let hot = "hot-user";
    let deadline = Instant::now() + Duration::from_secs(30);
    let hot_url = loop {
        match api.route(hot).await {
            Ok(r) if r.url.is_some() => break r.url.context("url")?,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            other => anyhow::bail!("no route for the hot user: {other:?}"),
        }
    };
    // Where each watcher lives, a thousand routes per call.
    let names: Vec<String> = (0..watchers).map(|i| format!("watcher-{i}")).collect();
    let mut urls = Vec::with_capacity(watchers);
    for chunk in names.chunks(1000) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        urls.extend(api.routes(&refs).await?.into_iter().map(|r| r.url.unwrap_or_default()));
    }
    let started = Instant::now();
    let opens = futures_util::stream::iter(names.iter().zip(&urls)).map(|(name, url)| async move {
        let mut c = welcomed(url, token(name)).await?;
        c.send(&ClientMessage::Subscribe { user_ids: vec![UserId::parse(hot)?] }).await?;
        until_status(&mut c, false).await.context("the snapshot")?;
        Ok::<_, anyhow::Error>(c)
    });
    let mut conns = Vec::with_capacity(watchers);
    let mut opens = opens.buffer_unordered(256);
    while let Some(c) = opens.next().await {
        conns.push(c?);
    }
    drop(opens);
    println!(
        "{watchers} watchers of one user over 3 nodes, connected and subscribed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut hot_conn: Option<Connection> = None;
    for (what, online) in
        [("comes online (from the connect call)", true), ("goes offline (from the close call)", false)]
    {
        let change = async {
            match hot_conn.take() {
                None => hot_conn = Some(welcomed(&hot_url, token(hot)).await?),
                Some(c) => c.close().await,
            }
            Ok(())
        };
        time_to_all(&mut conns, online, what, change).await?;
    }
    Ok(())
}

/// The floor's server: each socket's task waits for its frame or for the
/// broadcast; a text frame from any socket (`subscribe` to `online` or
/// `offline`) sends that `status`, serialised once, to every socket.
pub async fn serve_broadcast(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
    let listener = presence_http::bind(addr)?;
    let (tx, _) = tokio::sync::broadcast::channel::<Utf8Bytes>(16);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (tx, mut rx) = (tx.clone(), tx.subscribe());
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Ok(frame) => if ws.send(Message::Text(frame)).await.is_err() { return },
                        Err(_) => return,
                    },
                    m = ws.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            let online = t.contains("\"online\"");
                            let p = presence_model::Presence::counted(
                                UserId::parse("hot-user").expect("valid"),
                                u64::from(online),
                                1,
                            );
                            let status = presence_model::wire::ServerMessage::status(&p, presence_model::time::now_ms());
                            let _ = tx.send(Utf8Bytes::from(status.to_json()));
                        }
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                }
            }
        });
    }
}
