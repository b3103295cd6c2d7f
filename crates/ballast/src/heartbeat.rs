//! The heartbeat loop: tells Redis, on its own clock, that this worker is alive.
//!
//! Each beat is one function call (`heartbeat_worker.lua`) that also runs placement, so
//! anything a capped placement left behind is placed within one interval, and hands over the
//! cancel requests for the worker's running tasks. The loop beats until the worker has left
//! (through its drain and grace period), so a worker finishing its tasks on shutdown is not
//! declared dead. A beat refused because this process was declared dead (its epoch is no
//! longer the worker's) is reported on `lost` with that epoch: unless the epoch was already
//! replaced or the worker is shutting down, the worker then drops its tasks and registers
//! again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::store::Store;
use crate::worker::every;

pub(crate) struct Heartbeat {
    pub(crate) store: Store,
    pub(crate) queue: String,
    pub(crate) worker: String,
    pub(crate) interval: Duration,
    pub(crate) epoch: Arc<AtomicU64>,
    /// The epoch a refused beat presented: this process was declared dead under it.
    pub(crate) lost: mpsc::UnboundedSender<u64>,
    /// Running tasks the queue asked this worker to cancel.
    pub(crate) cancels: mpsc::UnboundedSender<String>,
}

impl Heartbeat {
    /// Beats every `interval` until `stop` turns true.
    pub(crate) async fn run(self, stop: watch::Receiver<bool>) {
        every(self.interval, stop, || self.step()).await;
    }

    async fn step(&self) {
        let epoch = self.epoch.load(Ordering::SeqCst);
        match self
            .store
            .heartbeat_worker(&self.queue, &self.worker, epoch)
            .await
        {
            Ok(Some(cancels)) => {
                for id in cancels {
                    let _ = self.cancels.send(id);
                }
            }
            Ok(None) => {
                tracing::warn!(worker = %self.worker, epoch, "declared dead by the queue");
                let _ = self.lost.send(epoch);
            }
            Err(e) => tracing::warn!(worker = %self.worker, error = %e, "heartbeat failed"),
        }
    }
}
