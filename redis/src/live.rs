//! The live feed on Redis (`presence_backend::live`): `set_count.lua`
//! publishes every change on the user's channel, and a node's feed
//! subscribes to the channels of the users it follows.
//!
//! One RESP3 connection per feed carries the subscriptions; its messages
//! arrive as pushes and go straight into the feed's bounded queue. A single
//! Redis uses `SUBSCRIBE` on a reconnecting connection manager; a Redis
//! Cluster uses sharded pub/sub (`SSUBSCRIBE`), so each change travels only
//! to the shard of its user's vnode and the nodes subscribed there. Both
//! clients subscribe again by themselves after a reconnect; the lost
//! connection is reported as [`Live::Gap`] so the node re-reads.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use presence_backend::{Live, LiveFeed, LiveSender, StoreError};
use presence_model::{Presence, UserId};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::Mutex;

use crate::keys::Keys;

/// What a feed needs to open its own connection.
#[derive(Clone)]
pub(crate) enum Source {
    /// One Redis: its URL (with RESP3 asked for) and TLS files.
    Single { url: String, certs: Option<redis::TlsCertificates>, timeout: Duration },
    /// A Redis Cluster's seed nodes.
    Cluster { urls: Vec<String>, certs: Option<redis::TlsCertificates>, timeout: Duration },
}

/// The subscribing connection of one feed.
enum Subscriber {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// A node's live feed on Redis.
pub(crate) struct RedisFeed {
    conn: Mutex<Subscriber>,
    keys: Keys,
    timeout: Duration,
}

/// Asks for RESP3 (pushes) in a Redis URL, before any `#` fragment.
fn resp3(url: &str) -> String {
    let (base, fragment) = url.split_once('#').map_or((url, None), |(b, f)| (b, Some(f)));
    let sep = if base.contains('?') { '&' } else { '?' };
    match fragment {
        Some(f) => format!("{base}{sep}protocol=resp3#{f}"),
        None => format!("{base}{sep}protocol=resp3"),
    }
}

/// Turns a push into what the feed delivers: a change, a gap, or nothing
/// (subscription confirmations and the like).
fn live_of(push: PushInfo) -> Option<Live> {
    match push.kind {
        PushKind::Disconnection => Some(Live::Gap),
        PushKind::Message | PushKind::SMessage => {
            let Some(Value::BulkString(payload)) = push.data.get(1) else { return None };
            match serde_json::from_slice::<Presence>(payload) {
                Ok(p) => Some(Live::Change(p)),
                Err(e) => {
                    // Another writer on our channel names: not ours to apply.
                    tracing::warn!(error = %e, "unreadable message on a presence channel; ignored");
                    None
                }
            }
        }
        _ => None,
    }
}

impl Source {
    pub(crate) fn new(
        urls: &[String],
        cluster: bool,
        certs: Option<redis::TlsCertificates>,
        timeout: Duration,
    ) -> Self {
        if cluster {
            Self::Cluster { urls: urls.to_vec(), certs, timeout }
        } else {
            Self::Single { url: resp3(&urls[0]), certs, timeout }
        }
    }

    /// Opens a feed: its own connection, its own queue.
    pub(crate) async fn open(
        &self,
        keys: Keys,
    ) -> Result<(Arc<dyn LiveFeed>, tokio::sync::mpsc::Receiver<Live>), StoreError> {
        let (tx, rx) = LiveSender::channel();
        let push = move |p: PushInfo| -> Result<(), ()> {
            if let Some(live) = live_of(p) {
                tx.send(live);
            }
            if tx.is_closed() {
                return Err(());
            }
            Ok(())
        };
        let unavailable = |e: redis::RedisError| StoreError::Unavailable(format!("live feed: {e}"));
        let (conn, timeout) = match self {
            Self::Single { url, certs, timeout } => {
                let client = crate::store::client(url, certs.as_ref()).map_err(unavailable)?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(*timeout))
                    .set_response_timeout(Some(*timeout))
                    .set_max_delay(Duration::from_secs(1))
                    .set_push_sender(push)
                    .set_automatic_resubscription();
                let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?;
                (Subscriber::Single(conn), *timeout)
            }
            Self::Cluster { urls, certs, timeout } => {
                let client = crate::store::cluster_builder(urls, certs.as_ref(), *timeout)
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(push)
                    .build()
                    .map_err(unavailable)?;
                let conn = client.get_async_connection().await.map_err(unavailable)?;
                (Subscriber::Cluster(conn), *timeout)
            }
        };
        Ok((Arc::new(RedisFeed { conn: Mutex::new(conn), keys, timeout }), rx))
    }
}

impl RedisFeed {
    fn channels(&self, users: &[UserId]) -> Vec<String> {
        users.iter().map(|u| self.keys.channel(u.vnode(), u.as_str())).collect()
    }

    async fn change(&self, users: &[UserId], subscribe: bool) -> Result<(), StoreError> {
        if users.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.lock().await;
        let result = match &mut *conn {
            Subscriber::Single(c) => {
                let channels = self.channels(users);
                let op = async {
                    if subscribe {
                        c.subscribe(&channels).await
                    } else {
                        c.unsubscribe(&channels).await
                    }
                };
                tokio::time::timeout(self.timeout, op).await
            }
            Subscriber::Cluster(c) => {
                // Sharded commands name channels of one slot: one call per user.
                let op = async {
                    for ch in self.channels(users) {
                        if subscribe {
                            c.ssubscribe(&ch).await?;
                        } else {
                            c.sunsubscribe(&ch).await?;
                        }
                    }
                    Ok(())
                };
                tokio::time::timeout(self.timeout * users.len().max(1) as u32, op).await
            }
        };
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("live feed: {e}"))),
            Err(_) => Err(StoreError::Unavailable("live feed: timed out".into())),
        }
    }
}

#[async_trait]
impl LiveFeed for RedisFeed {
    async fn follow(&self, users: &[UserId]) -> Result<(), StoreError> {
        self.change(users, true).await
    }

    async fn unfollow(&self, users: &[UserId]) -> Result<(), StoreError> {
        self.change(users, false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp3_goes_before_the_fragment() {
        assert_eq!(resp3("redis://h:1"), "redis://h:1?protocol=resp3");
        assert_eq!(resp3("redis://h:1/0?x=1"), "redis://h:1/0?x=1&protocol=resp3");
        assert_eq!(resp3("rediss://h:1#insecure"), "rediss://h:1?protocol=resp3#insecure");
    }

    #[test]
    fn pushes_become_changes_or_gaps() {
        let msg = |kind, payload: &str| PushInfo {
            kind,
            data: vec![Value::BulkString(b"ch".to_vec()), Value::BulkString(payload.as_bytes().to_vec())],
        };
        let json = r#"{"userId":"a\"b","connections":2,"seq":1795342157356001,"lastSeen":null}"#;
        let Some(Live::Change(p)) = live_of(msg(PushKind::SMessage, json)) else { panic!("a change") };
        assert_eq!((p.user_id.as_str(), p.connections, p.seq), ("a\"b", 2, 1_795_342_157_356_001));
        assert_eq!(live_of(msg(PushKind::Message, "not json")), None);
        assert_eq!(live_of(PushInfo { kind: PushKind::Disconnection, data: vec![] }), Some(Live::Gap));
        assert_eq!(live_of(msg(PushKind::Subscribe, "1")), None);
    }
}
