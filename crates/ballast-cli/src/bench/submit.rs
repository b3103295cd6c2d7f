//! The submit suite: N tasks of ~100-byte payloads from one client, one by one and in
//! batches (one pipelined round trip a batch), with no worker running.

use ballast::{Client, TaskSpec};
use serde_json::{json, Value};

use super::{payload, table, with_cost, Bench, BenchArgs, COST_COLUMNS};
use crate::CliError;

pub async fn run(url: Option<&str>, a: &BenchArgs) -> Result<Value, CliError> {
    let mut rows = Vec::new();
    let mut memory = 0.0;
    for batch in [1, a.batch] {
        let mut b = Bench::new(url).await?;
        let queue = format!("bench-submit-{batch}");
        let client = Client::new(b.store.clone());
        let specs: Vec<TaskSpec> = (0..a.n)
            .map(|i| TaskSpec::new(&queue, "noop").payload(payload(i)))
            .collect();
        let before = b.used_memory().await?;
        let ((), took, cost) = b
            .measure(a.n, async {
                if batch == 1 {
                    for s in &specs {
                        client.submit(s).await?;
                    }
                } else {
                    for chunk in specs.chunks(batch) {
                        client.submit_many(chunk).await?;
                    }
                }
                Ok(())
            })
            .await?;
        let pending = b.store.counts(&queue).await?.pending as usize;
        if pending != a.n {
            return Err(CliError::Io(format!(
                "submitted {} tasks, {pending} pending",
                a.n
            )));
        }
        memory = (b.used_memory().await? - before) / a.n as f64;
        let mode = if batch == 1 {
            "one by one".to_string()
        } else {
            format!("batches of {batch}")
        };
        rows.push(with_cost(
            json!({ "mode": mode, "tasks": a.n, "seconds": took.as_secs_f64(), "tasks_per_s": a.n as f64 / took.as_secs_f64() }),
            cost,
        ));
    }
    let mut cols = vec!["mode", "tasks", "seconds", "tasks_per_s"];
    cols.extend(COST_COLUMNS);
    let mut out = table(&cols, rows);
    out["redis_bytes_per_pending_task"] = json!(memory.round());
    Ok(out)
}
