//! The promotion loop: scheduled tasks (delayed submits, retries after backoff) whose time
//! has come go back to pending and are placed.
//!
//! Each step is one idempotent script call (`promote_tasks.lua`) that every worker runs; a
//! task is promoted by exactly one of them. The loop sleeps until the next scheduled task is
//! due, but never longer than its period, so a task scheduled meanwhile waits at most that.

use std::time::Duration;

use tokio::sync::watch;

use crate::store::Store;
use crate::worker::stopped;

pub(crate) struct Promotion {
    pub(crate) store: Store,
    pub(crate) queue: String,
    pub(crate) period: Duration,
}

impl Promotion {
    /// Promotes due tasks until `stop` turns true.
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            let wait = self.step().await;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {},
                _ = stopped(&mut stop) => return,
            }
        }
    }

    /// One promotion; returns how long to wait before the next.
    async fn step(&self) -> Duration {
        match self.store.promote_tasks(&self.queue).await {
            Ok((_, Some(next))) => next.min(self.period),
            Ok((_, None)) => self.period,
            Err(e) => {
                tracing::warn!(queue = %self.queue, error = %e, "promotion step failed");
                self.period
            }
        }
    }
}
