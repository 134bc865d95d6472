//! [`Timed`]: a [`Store`] that reports how long each operation took, by
//! operation name, to a callback (the processes feed a Prometheus histogram:
//! `presence_store_seconds{op}`). The backend crate stays free of metrics.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use presence_model::{NodeRecord, Presence, PresenceChange, RoutingTable, TableVersion, UserId, UserStatus};
use tokio::sync::{mpsc, watch};

use crate::live::{Live, LiveFeed};
use crate::store::{Activity, CountUpdate, Registration, Store, StoreError};

/// Told each operation's name and duration (failures included).
pub type Observe = Arc<dyn Fn(&'static str, Duration) + Send + Sync>;

/// `inner`, timed.
pub struct Timed {
    inner: Arc<dyn Store>,
    observe: Observe,
}

impl Timed {
    /// Wraps `inner`; every operation's duration goes to `observe`.
    pub fn wrap(inner: Arc<dyn Store>, observe: Observe) -> Arc<dyn Store> {
        Arc::new(Self { inner, observe })
    }

    async fn time<T>(&self, op: &'static str, f: impl std::future::Future<Output = T>) -> T {
        let started = tokio::time::Instant::now();
        let out = f.await;
        (self.observe)(op, started.elapsed());
        out
    }
}

#[async_trait]
impl Store for Timed {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.time("ping", self.inner.ping()).await
    }

    async fn load_table(&self) -> Result<Option<RoutingTable>, StoreError> {
        self.time("load_table", self.inner.load_table()).await
    }

    async fn table_version(&self) -> Result<Option<TableVersion>, StoreError> {
        self.time("table_version", self.inner.table_version()).await
    }

    async fn swap_table(
        &self,
        expected: Option<u64>,
        table: &RoutingTable,
        leader: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.time("swap_table", self.inner.swap_table(expected, table, leader)).await
    }

    fn table_notices(&self) -> watch::Receiver<u64> {
        self.inner.table_notices()
    }

    async fn heartbeat(&self, node: &NodeRecord, ttl: Duration) -> Result<Registration, StoreError> {
        self.time("heartbeat", self.inner.heartbeat(node, ttl)).await
    }

    async fn deregister(&self, node_id: &str) -> Result<(), StoreError> {
        self.time("deregister", self.inner.deregister(node_id)).await
    }

    async fn live_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.time("live_nodes", self.inner.live_nodes()).await
    }

    async fn set_counts(
        &self,
        node_id: &str,
        updates: &[CountUpdate],
        now_ms: u64,
    ) -> Result<Vec<Option<PresenceChange>>, StoreError> {
        self.time("set_counts", self.inner.set_counts(node_id, updates, now_ms)).await
    }

    async fn node_counts(&self, node_id: &str) -> Result<Vec<(UserId, u32)>, StoreError> {
        self.time("node_counts", self.inner.node_counts(node_id)).await
    }

    async fn nodes_with_presence(&self) -> Result<Vec<String>, StoreError> {
        self.time("nodes_with_presence", self.inner.nodes_with_presence()).await
    }

    async fn purge_node(&self, node_id: &str, now_ms: u64, leader: &str) -> Result<Vec<PresenceChange>, StoreError> {
        self.time("purge_node", self.inner.purge_node(node_id, now_ms, leader)).await
    }

    async fn presence(&self, users: &[UserId]) -> Result<Vec<Presence>, StoreError> {
        self.time("presence", self.inner.presence(users)).await
    }

    async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.time("acquire_lease", self.inner.acquire_lease(holder, ttl)).await
    }

    async fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        self.time("release_lease", self.inner.release_lease(holder)).await
    }

    async fn set_status(
        &self,
        user: &UserId,
        status: Option<UserStatus>,
        if_expires_at: Option<u64>,
        now_ms: u64,
    ) -> Result<Option<PresenceChange>, StoreError> {
        self.time("set_status", self.inner.set_status(user, status, if_expires_at, now_ms)).await
    }

    async fn record_seen(&self, users: &[UserId], now_ms: u64) -> Result<(), StoreError> {
        self.time("record_seen", self.inner.record_seen(users, now_ms)).await
    }

    async fn record_peak(&self, connections: u64, now_ms: u64) -> Result<(), StoreError> {
        self.time("record_peak", self.inner.record_peak(connections, now_ms)).await
    }

    async fn activity(&self, now_ms: u64) -> Result<Activity, StoreError> {
        self.time("activity", self.inner.activity(now_ms)).await
    }

    async fn live_feed(&self) -> Result<(Arc<dyn LiveFeed>, mpsc::Receiver<Live>), StoreError> {
        self.time("live_feed", self.inner.live_feed()).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::MemoryStore;

    #[tokio::test]
    async fn every_operation_is_reported_by_name() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let store = Timed::wrap(
            Arc::new(MemoryStore::new()),
            Arc::new(move |op, _| log.lock().unwrap_or_else(|p| p.into_inner()).push(op)),
        );
        let alice = UserId::parse("alice").expect("valid");
        store.set_counts("n1", &[CountUpdate::new(alice.clone(), 1)], 1).await.expect("up");
        store.presence(&[alice]).await.expect("up");
        assert_eq!(store.kind(), "memory");
        assert_eq!(*seen.lock().unwrap_or_else(|p| p.into_inner()), vec!["set_counts", "presence"]);
    }
}
