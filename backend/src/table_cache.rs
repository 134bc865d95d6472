//! A reader's cached copy of the routing table.
//!
//! Lookups (`/route`, every WebSocket auth) read the cache, never the store.
//! A refresh task follows the store's notices and, in case a notice is lost,
//! checks the table's version (epoch and generation) every `poll` interval;
//! it loads the full table only when the version changed. Within a
//! generation the cache only moves forward; a table of another generation
//! (written from scratch after the store lost its data) replaces the cached
//! one whatever its epoch. While the store is unreachable the cache keeps
//! serving the last table and reports itself stale.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use presence_model::{RoutingTable, TableVersion};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreError};

/// The cached routing table. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct TableCache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    /// The current table; a watch so that owners (ws-nodes) can react to changes.
    table: watch::Sender<Option<Arc<RoutingTable>>>,
    /// The last refresh failed: the table may be out of date.
    stale: AtomicBool,
    /// When [`TableCache::refresh_soon`] last went to the store (ms since the Unix epoch).
    last_asked_ms: std::sync::atomic::AtomicU64,
}

impl Default for TableCache {
    fn default() -> Self {
        Self::new()
    }
}

impl TableCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(CacheInner {
                table: watch::channel(None).0,
                stale: AtomicBool::new(false),
                last_asked_ms: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// The current table, if any.
    pub fn get(&self) -> Option<Arc<RoutingTable>> {
        self.inner.table.borrow().clone()
    }

    /// The current epoch (0 with no table).
    pub fn epoch(&self) -> u64 {
        self.inner.table.borrow().as_ref().map_or(0, |t| t.epoch)
    }

    /// Whether the last refresh failed.
    pub fn is_stale(&self) -> bool {
        self.inner.stale.load(Ordering::Relaxed)
    }

    /// A receiver that wakes on every new table.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<RoutingTable>>> {
        self.inner.table.subscribe()
    }

    /// The cached table's version, if any.
    pub fn version(&self) -> Option<TableVersion> {
        self.inner.table.borrow().as_ref().map(|t| t.version())
    }

    /// Installs `table` if it is newer than the cached one: a later epoch of
    /// the same generation, or any table of another generation. Returns
    /// whether it was installed.
    pub fn offer(&self, table: RoutingTable) -> bool {
        self.inner.table.send_if_modified(|cur| {
            if cur.as_ref().is_some_and(|c| c.generation == table.generation && c.epoch >= table.epoch) {
                return false;
            }
            *cur = Some(Arc::new(table));
            true
        })
    }

    /// Checks the store once; loads the table if its version changed.
    pub async fn refresh(&self, store: &dyn Store) -> Result<bool, StoreError> {
        let result = async {
            let Some(version) = store.table_version().await? else { return Ok(false) };
            if Some(&version) == self.version().as_ref() {
                return Ok(false);
            }
            match store.load_table().await? {
                Some(t) => {
                    t.validate().map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    Ok(self.offer(t))
                }
                None => Ok(false),
            }
        }
        .await;
        self.inner.stale.store(result.is_err(), Ordering::Relaxed);
        result
    }

    /// Refreshes now unless a call of this method went to the store less than
    /// `min_interval` ago: for request paths that suspect the cache is behind
    /// (a client sent by a newer table), where a flood of requests must not
    /// become a flood of store reads.
    pub async fn refresh_soon(&self, store: &dyn Store, min_interval: Duration) {
        let now = presence_model::time::now_ms();
        let last = self.inner.last_asked_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < min_interval.as_millis() as u64 {
            return;
        }
        if self.inner.last_asked_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            let _ = self.refresh(store).await;
        }
    }

    /// Keeps the cache fresh until `shutdown`: on every store notice and every `poll`.
    pub async fn run_refresh(self, store: Arc<dyn Store>, poll: Duration, shutdown: CancellationToken) {
        let mut notices = store.table_notices();
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                changed = notices.changed() => {
                    if changed.is_err() {
                        // The notice source is gone; keep polling.
                        notices = store.table_notices();
                    }
                }
            }
            let was_stale = self.is_stale();
            match self.refresh(store.as_ref()).await {
                Err(e) if !was_stale => {
                    tracing::warn!(error = %e, "routing table refresh failed; serving the cached table")
                }
                Err(e) => tracing::debug!(error = %e, "routing table refresh failed again"),
                Ok(_) if was_stale => tracing::info!("routing table refresh works again"),
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[tokio::test]
    async fn follows_notices_and_marks_stale() {
        let store = MemoryStore::new();
        let cache = TableCache::new();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(cache.clone().run_refresh(
            Arc::new(store.clone()),
            Duration::from_secs(3600),
            shutdown.clone(),
        ));
        let mut rx = cache.subscribe();
        store.swap_table(None, &RoutingTable::empty(1), None).await.expect("up");
        rx.wait_for(|t| t.as_ref().is_some_and(|t| t.epoch == 1)).await.expect("table");
        store.set_down(true);
        assert!(cache.refresh(&store).await.is_err());
        assert!(cache.is_stale());
        assert_eq!(cache.epoch(), 1);
        store.set_down(false);
        cache.refresh(&store).await.expect("up");
        assert!(!cache.is_stale());
        // An older table is not offered over a newer one.
        assert!(!cache.offer(RoutingTable::empty(0)));
        shutdown.cancel();
        task.await.expect("task");
    }

    #[tokio::test]
    async fn a_new_generation_replaces_the_cache_even_at_the_same_epoch() {
        let store = MemoryStore::new();
        let cache = TableCache::new();
        let owners = vec![Some("a"); presence_model::VNODES];
        let first = RoutingTable::from_owners(2, &owners, |id| format!("ws://{id}")).in_generation("g1");
        store.swap_table(None, &first, None).await.expect("up");
        assert!(cache.refresh(&store).await.expect("up"));
        // The store loses everything; a coordinator that cached nothing starts
        // over and reaches the same epoch with other owners.
        store.wipe();
        let owners = vec![Some("b"); presence_model::VNODES];
        let second = RoutingTable::from_owners(2, &owners, |id| format!("ws://{id}")).in_generation("g2");
        store.swap_table(None, &second, None).await.expect("up");
        assert!(cache.refresh(&store).await.expect("up"), "same epoch, other generation: adopted");
        assert_eq!(cache.get().and_then(|t| t.owner("x").map(|n| n.id.clone())).as_deref(), Some("b"));
        // Within a generation, only forward.
        assert!(!cache.offer(RoutingTable::from_owners(1, &owners, |id| id.to_string()).in_generation("g2")));
    }
}
