//! The fast path of live status (`docs/architecture.md`, "Fast path"): the
//! node follows, on the store's live feed, exactly the users its
//! connections watch, and applies the changes it hears there like any other
//! newer state. The bus stays the durable feed of every event (and what
//! repairs anything this path misses); a change heard on both is applied
//! once, by its `seq`.
//!
//! * [`Interest`]: which users gained their first watcher or lost their last
//!   one since the feed last looked, latest word per user. [`Counts`] writes
//!   it under the user's lock; this task reads it, so the feed's round trips
//!   never hold up a session.
//! * [`run`]: opens the feed (retrying while the store is down), follows and
//!   unfollows in batches, applies changes, and re-reads watched users after
//!   a gap (a lost connection, a queue overflow).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use presence_backend::{Live, LiveFeed, Store};
use presence_model::UserId;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::counts::Counts;
use crate::fanout::Fanout;
use crate::metrics::Metrics;

/// Follow and unfollow calls carry at most this many users each.
const BATCH: usize = 512;
/// Pause before trying the feed again after it failed.
const RETRY: Duration = Duration::from_secs(1);

/// Users whose following should change: `true` to follow, `false` to stop.
/// At most one entry per user (the latest), so it is bounded by the users
/// watched here.
#[derive(Default)]
pub struct Interest {
    changes: Mutex<HashMap<UserId, bool>>,
    wake: Notify,
}

impl Interest {
    /// Records that `user` is now watched here (`true`) or no longer is.
    pub fn note(&self, user: &UserId, watched: bool) {
        self.changes.lock().unwrap_or_else(|p| p.into_inner()).insert(user.clone(), watched);
        self.wake.notify_one();
    }

    fn take(&self) -> HashMap<UserId, bool> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts back what could not be done, unless a newer word came meanwhile.
    fn restore(&self, undone: impl IntoIterator<Item = (UserId, bool)>) {
        let mut changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        for (u, w) in undone {
            changes.entry(u).or_insert(w);
        }
    }
}

/// Runs the node's live feed until `stop`.
pub async fn run(
    store: Arc<dyn Store>,
    counts: Arc<Counts>,
    fanout: Fanout,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        let opened = tokio::select! {
            _ = stop.cancelled() => return,
            f = store.live_feed() => f,
        };
        let (feed, mut rx) = match opened {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(node = %fanout.node_id, error = %e, "live feed unavailable; status travels by the bus meanwhile");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        // A new feed follows nobody: everyone watched now, then what changes.
        metrics.live_followed.set(0);
        counts.interest.take();
        counts.interest.restore(counts.watched_users().into_iter().map(|u| (u, true)));
        // Nobody may note anything soon: follow the watched users now.
        let mut retry_at = update(feed.as_ref(), &counts.interest, &metrics).await;
        loop {
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                m = rx.recv() => match m {
                    Some(Live::Change(p)) => {
                        metrics.live_changes.inc();
                        counts.apply(&p, presence_model::time::now_ms(), None);
                    }
                    Some(Live::Gap) => {
                        metrics.live_gaps.inc();
                        resync_watched(&counts, &fanout).await;
                    }
                    None => break,
                },
                // While a retry is due, new notes wait for it.
                _ = counts.interest.wake.notified(), if retry_at.is_none() => {
                    retry_at = update(feed.as_ref(), &counts.interest, &metrics).await;
                }
                _ = retry => {
                    retry_at = update(feed.as_ref(), &counts.interest, &metrics).await;
                }
            }
        }
        tracing::warn!(node = %fanout.node_id, "live feed closed; opening another");
    }
}

/// Re-reads the watched users from the store (changes may have been missed).
async fn resync_watched(counts: &Counts, fanout: &Fanout) {
    if let Err(e) = fanout.reread_all(&counts.watched_users()).await {
        tracing::debug!(node = %fanout.node_id, error = %e, "re-read after a live gap failed; the bus repairs it");
    }
}

/// Applies the pending follow/unfollow words. When the feed failed, what
/// was not done is kept and the time of the next try is returned.
async fn update(feed: &dyn LiveFeed, interest: &Interest, metrics: &Metrics) -> Option<tokio::time::Instant> {
    let changes = interest.take();
    if changes.is_empty() {
        return None;
    }
    let (follow, unfollow): (Vec<_>, Vec<_>) = changes.into_iter().partition(|(_, w)| *w);
    let follow: Vec<UserId> = follow.into_iter().map(|(u, _)| u).collect();
    let unfollow: Vec<UserId> = unfollow.into_iter().map(|(u, _)| u).collect();
    for (users, watched) in [(&unfollow, false), (&follow, true)] {
        for (i, chunk) in users.chunks(BATCH).enumerate() {
            let done = if watched { feed.follow(chunk).await } else { feed.unfollow(chunk).await };
            match done {
                Ok(()) => {
                    let n = chunk.len() as i64;
                    metrics.live_followed.add(if watched { n } else { -n });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "live feed (un)follow failed; retrying");
                    let rest = users[i * BATCH..].iter().map(|u| (u.clone(), watched));
                    let later = if watched { Vec::new() } else { follow.iter().map(|u| (u.clone(), true)).collect() };
                    interest.restore(rest.chain(later));
                    return Some(tokio::time::Instant::now() + RETRY);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_word_per_user_wins_and_a_restore_does_not_override_it() {
        let i = Interest::default();
        let u = UserId::parse("u").expect("id");
        i.note(&u, true);
        i.note(&u, false);
        assert_eq!(i.take().get(&u), Some(&false));
        i.note(&u, true);
        i.restore([(u.clone(), false)]);
        assert_eq!(i.take().get(&u), Some(&true), "a newer word is not overwritten by a retry");
        assert!(i.take().is_empty());
    }
}
