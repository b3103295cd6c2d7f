//! Errors: what went wrong, as an enum of causes.

use std::time::Duration;

/// The result type of every fallible ballast call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in ballast.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A task, worker or setting was refused before anything was written to Redis.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// One task of a batch was refused; the batch was not written.
    #[error("task {index} of the batch: {source}")]
    InvalidInBatch {
        /// Position of the task in the batch, from 0.
        index: usize,
        /// Why it was refused.
        source: Invalid,
    },
    /// Redis could not be reached or answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis is set up in a way ballast cannot run on safely (it would lose tasks).
    #[error("redis is not safe for ballast: {0}")]
    UnsafeRedis(String),
    /// A task id that is not in any known queue.
    #[error("task {0} not found")]
    TaskNotFound(String),
    /// A job id that is not in any known queue.
    #[error("job {0} not found")]
    JobNotFound(String),
    /// A live worker already registered under this id in this queue.
    #[error("worker id {0:?} is already in use by a live worker")]
    WorkerIdTaken(String),
    /// The task did not finish within the wait.
    #[error("task {id} did not finish within {waited:?}")]
    WaitTimedOut {
        /// The task waited for.
        id: String,
        /// How long the caller waited.
        waited: Duration,
    },
    /// Redis held something ballast did not write (a broken invariant or a foreign key).
    #[error("unexpected data in redis: {0}")]
    Corrupt(String),
    /// Encoding or decoding JSON failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Starting or talking to a local process (the private redis-server) failed.
    #[error("{0}")]
    Process(String),
}

/// A refusal: one field, the rule it broke, and nothing written to Redis.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct Invalid {
    /// The field that was refused (`queue`, `cost`, `payload`, ...).
    pub field: &'static str,
    /// Why, naming the limit.
    pub reason: String,
}

impl Invalid {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Invalid {
            field,
            reason: reason.into(),
        }
    }
}
