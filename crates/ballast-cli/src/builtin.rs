//! The handlers every `ballast worker` knows: `noop`, `sleep`, `echo` and `fail`.

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
}
