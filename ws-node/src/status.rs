//! The store writes of rich presence that are not counts
//! (`docs/protocol.md`, "Rich presence"):
//!
//! * the status a user sets (`setStatus`): written by the node serving the
//!   user, applied here and announced on the bus like a count change;
//! * its expiry: the node serving the user clears it in the store when it
//!   lapses ([`run_expiry`]), so that every watcher hears `available` with a
//!   new `seq`. Readers never show a lapsed status meanwhile (views check
//!   the expiry), so a node that dies first only delays the event;
//! * unique users: users who connected are added to the store's
//!   HyperLogLogs once a second, and every served user again when the UTC
//!   hour turns ([`run_unique_users`]).

use std::sync::Arc;
use std::time::Duration;

use presence_backend::{periods, Store, StoreError};
use presence_model::{UserId, UserStatus};
use tokio_util::sync::CancellationToken;

use crate::counts::Counts;
use crate::metrics::Metrics;
use crate::writer::Announcer;

/// How often lapsed statuses are looked for: an expiry is heard within this.
const EXPIRY_TICK: Duration = Duration::from_secs(1);
/// How often seen users are added to the unique-user counts.
const UNIQUE_TICK: Duration = Duration::from_secs(1);
/// Users per `PFADD`.
const UNIQUE_BATCH: usize = 1000;

/// What the writes of this module need. Cheap to clone.
#[derive(Clone)]
pub struct StatusWriter {
    /// Where statuses and unique users go.
    pub store: Arc<dyn Store>,
    /// Where the store's answers are applied.
    pub counts: Arc<Counts>,
    /// Where changes are announced.
    pub announcer: Announcer,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl StatusWriter {
    /// Sets (or with `None` clears) `user`'s status; with `if_expires_at`, only
    /// a status expiring then is cleared. The change is applied here and announced.
    pub async fn set(
        &self,
        user: &UserId,
        status: Option<UserStatus>,
        if_expires_at: Option<u64>,
    ) -> Result<(), StoreError> {
        let now = presence_model::time::now_ms();
        let change = self
            .store
            .set_status(user, status, if_expires_at, now)
            .await
            .inspect_err(|_| self.metrics.store_errors.inc())?;
        if let Some(change) = change {
            self.metrics.status_sets.inc();
            self.counts.apply(&change.presence, now, None);
            self.announcer.publish(&change, None, None, now).await;
        }
        Ok(())
    }
}

/// Clears lapsed statuses of the users served here, every [`EXPIRY_TICK`], until `stop`.
pub async fn run_expiry(w: StatusWriter, stop: CancellationToken) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (user, expires_at) in w.counts.lapsed_statuses(presence_model::time::now_ms()) {
            if let Err(e) = w.set(&user, None, Some(expires_at)).await {
                tracing::debug!(error = %e, "clearing a lapsed status failed; the next tick retries");
                break;
            }
        }
    }
}

/// Adds users seen online to the store's unique-user counts until `stop`.
pub async fn run_unique_users(w: StatusWriter, stop: CancellationToken) {
    let mut tick = tokio::time::interval(UNIQUE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hour = periods(presence_model::time::now_ms()).0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = presence_model::time::now_ms();
        // A new hour (or day) counts everyone still online in it.
        if periods(now).0 != hour {
            hour = periods(now).0;
            w.counts.saw(&w.counts.served_users());
        }
        let seen = w.counts.take_seen();
        for chunk in seen.chunks(UNIQUE_BATCH) {
            if let Err(e) = w.store.record_seen(chunk, now).await {
                w.metrics.store_errors.inc();
                w.metrics.unique_dropped.inc_by(chunk.len() as u64);
                tracing::debug!(error = %e, "unique users not recorded");
            }
        }
    }
}
