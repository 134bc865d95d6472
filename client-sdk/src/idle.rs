//! [`IdleTimer`]: the usual way to decide a session's idleness: idle after a
//! stretch without app activity (key presses, clicks, focus), active again
//! at the next one.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::{IdleSender, Session};

/// Marks a session idle after `after` without [`IdleTimer::touch`], and
/// active at the next touch. It stops when dropped or when the session ends.
pub struct IdleTimer {
    touched: watch::Sender<Instant>,
    task: tokio::task::JoinHandle<()>,
}

impl IdleTimer {
    /// Starts watching `session`'s activity: it counts as active now.
    pub fn start(session: &Session, after: Duration) -> Self {
        let (touched, rx) = watch::channel(Instant::now());
        let task = tokio::spawn(run(session.idle_sender(), rx, after));
        Self { touched, task }
    }

    /// The app saw activity: the session is active (again), and the idle countdown restarts.
    pub fn touch(&self) {
        self.touched.send_replace(Instant::now());
    }
}

impl Drop for IdleTimer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(session: IdleSender, mut touched: watch::Receiver<Instant>, after: Duration) {
    let mut idle = false;
    loop {
        let last = *touched.borrow_and_update();
        if !idle {
            tokio::select! {
                _ = tokio::time::sleep_until(last + after) => {
                    idle = true;
                    if !session.send(true).await {
                        return;
                    }
                }
                changed = touched.changed() => if changed.is_err() { return },
            }
        } else {
            if touched.changed().await.is_err() {
                return;
            }
            idle = false;
            if !session.send(false).await {
                return;
            }
        }
    }
}
