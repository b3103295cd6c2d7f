//! The recovery loop: every worker declares dead the workers whose heartbeat is too old and
//! hands their tasks to the living, and fails attempts whose lease ran out.
//!
//! Each step is one idempotent function call (`recover_workers.lua`), so every worker can run
//! it on its own period with no leader: when several find the same dead worker at once, the
//! first call takes its tasks and the others find nothing left. The sweep for orphaned tasks
//! runs at most once per dead-after for the whole queue, in whichever call comes first.

use std::time::Duration;

use tokio::sync::watch;

use crate::store::Store;
use crate::worker::every;

pub(crate) struct Recovery {
    pub(crate) store: Store,
    pub(crate) queue: String,
    pub(crate) dead_after: Duration,
    pub(crate) period: Duration,
}

impl Recovery {
    /// Runs a step every `period` until `stop` turns true.
    pub(crate) async fn run(self, stop: watch::Receiver<bool>) {
        every(self.period, stop, || self.step()).await;
    }

    async fn step(&self) {
        match self
            .store
            .recover_workers(&self.queue, self.dead_after)
            .await
        {
            Ok((0, 0)) => {}
            Ok((dead, requeued)) => {
                tracing::warn!(queue = %self.queue, dead, requeued, "recovered tasks of dead workers")
            }
            Err(e) => tracing::warn!(queue = %self.queue, error = %e, "recovery step failed"),
        }
    }
}
