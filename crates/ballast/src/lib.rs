//! ballast: a distributed task scheduler on Redis.
//!
//! Producers submit tasks with a cost and a priority; inside Redis, in atomic Lua functions
//! (one function library, called with `FCALL`), each task is placed on the live worker with
//! the most free capacity that fits it (and carries the tags it needs). Workers on any
//! number of machines run the tasks and report results. A worker never holds more cost than
//! its capacity, however many producers and workers race.
//!
//! # Quick start
//!
//! ```no_run
//! use std::time::Duration;
//! use ballast::{Client, Store, TaskContext, TaskError, TaskSpec, Worker};
//! use serde_json::json;
//!
//! # async fn demo() -> ballast::Result<()> {
//! let store = Store::connect("redis://127.0.0.1:6379").await?;
//!
//! // A worker with 4 units of capacity that knows one kind of task.
//! let worker = Worker::new(store.clone(), "images", 4).handle(
//!     "resize",
//!     |_ctx: TaskContext, p: serde_json::Value| async move { Ok::<_, TaskError>(p) },
//! );
//! tokio::spawn(worker.run(async { let _ = tokio::signal::ctrl_c().await; }));
//!
//! // A producer submits a task that holds 2 units while it runs, and waits for it.
//! let client = Client::new(store);
//! let task = TaskSpec::new("images", "resize").payload(json!({"w": 640})).cost(2);
//! client.submit(&task).await?;
//! let done = client.wait("images", &task.id, Duration::from_secs(10)).await?;
//! println!("{:?}: {:?}", done.state, done.result);
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`task`]: the task model and its validation rules.
//! - [`store`]: the one module that talks to Redis; its Lua function library does all
//!   placement.
//! - [`client`]: submit tasks, read records, wait for results.
//! - [`worker`]: the worker runtime (register, run handlers within capacity, leave cleanly).
//! - `heartbeat`: the worker's heartbeat loop.
//! - `recovery`: the loop that hands dead workers' tasks to the living.
//! - `promotion`: the loop that brings delayed and retrying tasks back when due.
//! - [`handler`]: what a handler is ([`TaskContext`], [`TaskError`]).
//! - [`job`]: map-reduce jobs over chunks ([`JobHeader`], [`JobUpload`], [`MapResults`]).
//! - [`error`]: the error enum.
//! - `testing` (feature `testing`): a private `redis-server` for tests and demos.

pub mod client;
pub mod error;
pub mod handler;
mod heartbeat;
pub mod job;
mod promotion;
mod recovery;
pub mod store;
pub mod task;
#[cfg(feature = "testing")]
pub mod testing;
pub mod worker;

pub use client::Client;

/// Locks a mutex whose data stays valid even if a holder panicked (sets and maps updated
/// in single steps), so a poisoned lock is used as it is.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
pub use error::{Error, Invalid, Result};
pub use handler::{TaskContext, TaskError};
pub use job::{JobHeader, JobRecord, JobState, JobUpload, MapResults};
pub use store::{Placement, QueueCounts, Store, WorkerRecord};
pub use task::{Limits, TaskRecord, TaskSpec, TaskState};
pub use worker::{Worker, WorkerConfig};
