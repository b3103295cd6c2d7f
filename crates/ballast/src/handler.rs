//! What a handler is: a plain async function taking a [`TaskContext`] and a typed payload,
//! returning a serializable result or a [`TaskError`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::job::{MapResults, ReducePayload};
use crate::store::Store;

/// What a running task knows about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskContext {
    /// Task id.
    pub id: String,
    /// Queue.
    pub queue: String,
    /// Handler name.
    pub kind: String,
    /// The worker running it.
    pub worker: String,
    /// This attempt's number, from 1.
    pub attempt: i64,
    /// Attempts allowed.
    pub max_attempts: i64,
}

/// How a handler failed, and what should happen next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// A failure worth another attempt (the default for errors).
    #[error("{0}")]
    Retry(String),
    /// Worth another attempt, not before this delay.
    #[error("{message}")]
    RetryAfter {
        /// What went wrong.
        message: String,
        /// The least time before the next attempt.
        delay: Duration,
    },
    /// No attempt can succeed: give up now.
    #[error("{0}")]
    Permanent(String),
}

impl TaskError {
    /// A failure worth another attempt.
    pub fn retry(message: impl std::fmt::Display) -> Self {
        TaskError::Retry(message.to_string())
    }

    /// A failure no retry can mend.
    pub fn permanent(message: impl std::fmt::Display) -> Self {
        TaskError::Permanent(message.to_string())
    }
}

pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = Result<Value, TaskError>> + Send>>;
pub(crate) type Handler = Arc<dyn Fn(TaskContext, &str) -> BoxFuture + Send + Sync>;

/// Handlers by kind, and reducers (handlers of jobs' reduce tasks) by kind.
#[derive(Clone, Default)]
pub(crate) struct Handlers {
    tasks: HashMap<String, Handler>,
    reducers: HashMap<String, Handler>,
}

impl Handlers {
    pub(crate) fn add<P, R, F, Fut>(&mut self, kind: &str, f: F)
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(TaskContext, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let handler: Handler = Arc::new(move |ctx: TaskContext, payload: &str| {
            // The payload is decoded before the future starts, so a payload that does not
            // fit the handler's type fails at once and for good.
            let decoded = serde_json::from_str::<P>(payload);
            let f = Arc::clone(&f);
            Box::pin(async move {
                let p = decoded.map_err(|e| {
                    TaskError::permanent(format!("payload does not fit kind {}: {e}", ctx.kind))
                })?;
                let r = f(ctx, p).await?;
                serde_json::to_value(r).map_err(|e| TaskError::permanent(format!("result: {e}")))
            })
        });
        self.tasks.insert(kind.to_string(), handler);
    }

    /// A reducer receives the job's map results, read from `store` as it goes.
    pub(crate) fn add_reducer<R, F, Fut>(&mut self, kind: &str, store: Store, queue: String, f: F)
    where
        R: Serialize + Send + 'static,
        F: Fn(TaskContext, MapResults) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let handler: Handler = Arc::new(move |ctx: TaskContext, payload: &str| {
            let decoded = serde_json::from_str::<ReducePayload>(payload);
            let (f, store, queue) = (Arc::clone(&f), store.clone(), queue.clone());
            Box::pin(async move {
                let p = decoded.map_err(|e| {
                    TaskError::permanent(format!("not a reduce task of a job: {e}"))
                })?;
                let r = f(ctx, MapResults::new(store, queue, p)).await?;
                serde_json::to_value(r).map_err(|e| TaskError::permanent(format!("result: {e}")))
            })
        });
        self.reducers.insert(kind.to_string(), handler);
    }

    /// The handler for a task: a job's reduce task goes to a reducer of its kind if there is
    /// one, else (like any task) to the handler of its kind.
    pub(crate) fn get(&self, kind: &str, reduce: bool) -> Option<&Handler> {
        reduce
            .then(|| self.reducers.get(kind))
            .flatten()
            .or_else(|| self.tasks.get(kind))
    }
}
