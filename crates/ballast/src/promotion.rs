//! The promotion loop: scheduled tasks (delayed submits, retries after backoff) whose time
//! has come go back to pending and are placed.
//!
//! Each step is one idempotent function call (`promote_tasks.lua`) that every worker runs; a
//! task is promoted by exactly one of them. Between steps the loop blocks on the queue's
//! wake list, which every function call that schedules a task pushes to, until the next
//! scheduled task is due or its period passes: an idle queue costs one blocking call per
//! period, and a task scheduled meanwhile is seen at once.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
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
        let mut conn: Option<MultiplexedConnection> = None;
        loop {
            // A round may be cut anywhere: promotion is one atomic, idempotent call. So a
            // stop is heard at once, even while Redis is away and a call is retrying.
            tokio::select! {
                _ = self.round(&mut conn) => {}
                _ = stopped(&mut stop) => return,
            }
        }
    }

    /// One promotion step, then a wait until the next scheduled task is due or a task is
    /// scheduled.
    async fn round(&self, conn: &mut Option<MultiplexedConnection>) {
        let wait = self.step().await;
        if conn.is_none() {
            *conn = self.store.blocking_connection().await.ok();
        }
        let woken = match conn.as_mut() {
            Some(c) => self.store.wait_scheduled(c, &self.queue, wait).await,
            None => {
                tokio::time::sleep(wait).await;
                Ok(false)
            }
        };
        if let Err(e) = woken {
            tracing::warn!(queue = %self.queue, error = %e, "promotion wait failed");
            *conn = None;
            tokio::time::sleep(wait.min(Duration::from_millis(250))).await;
        }
    }

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
