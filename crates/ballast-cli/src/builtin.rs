//! The handlers every `ballast worker` knows: `noop`, `sleep`, `echo`, `fail` and `flaky`.

use std::time::Duration;

use ballast::{TaskContext, TaskError, Worker};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sleep {
    ms: u64,
}

#[derive(Deserialize)]
struct Fail {
    #[serde(default = "default_message")]
    message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Flaky {
    /// Attempts that fail before one succeeds.
    failures: i64,
}

fn default_message() -> String {
    "failed on purpose".to_string()
}

/// Adds the built-in handlers to a worker.
pub fn install(worker: Worker) -> Worker {
    worker
        .handle("noop", |_: TaskContext, _: Value| async {
            Ok::<_, TaskError>(Value::Null)
        })
        .handle("sleep", |_: TaskContext, p: Sleep| async move {
            tokio::time::sleep(Duration::from_millis(p.ms)).await;
            Ok::<_, TaskError>(json!({ "slept_ms": p.ms }))
        })
        .handle("echo", |_: TaskContext, p: Value| async move {
            Ok::<_, TaskError>(p)
        })
        .handle("fail", |_: TaskContext, p: Fail| async move {
            Err::<Value, _>(TaskError::retry(p.message))
        })
        .handle("flaky", |ctx: TaskContext, p: Flaky| async move {
            if ctx.attempt <= p.failures {
                return Err(TaskError::retry(format!(
                    "attempt {} fails on purpose",
                    ctx.attempt
                )));
            }
            Ok(json!({ "succeeded_on_attempt": ctx.attempt }))
        })
}
