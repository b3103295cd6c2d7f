//! The submit suite: N tasks of ~100-byte payloads from one client (one connection), one
//! by one (a call per task, awaited before the next), one by one with many calls in flight
//! (a call per task from concurrent producers sharing the client: the connection pipelines
//! them), and in batches (one call per batch), with no worker running.

use std::sync::Arc;

use ballast::{Client, TaskSpec};
use serde_json::{json, Value};

use super::{payload, table, with_cost, Bench, BenchArgs, COST_COLUMNS};
use crate::CliError;

/// Concurrent producers in the "in flight" mode.
const IN_FLIGHT: usize = 64;

pub async fn run(url: Option<&str>, a: &BenchArgs) -> Result<Value, CliError> {
    let mut rows = Vec::new();
    let mut memory = 0.0;
    // (tasks per call, calls in flight)
    for (batch, in_flight) in [(1, 1), (1, IN_FLIGHT), (a.batch, 1)] {
        let mut b = Bench::new(url).await?;
        let queue = b.queue(&format!("submit-{batch}-{in_flight}"));
        let client = Client::new(b.store.clone());
        let specs: Arc<Vec<TaskSpec>> = Arc::new(
            (0..a.n)
                .map(|i| TaskSpec::new(&queue, "noop").payload(payload(i)))
                .collect(),
        );
        let before = b.used_memory().await?;
        let ((), took, cost) = b
            .measure(a.n, async {
                if batch == 1 && in_flight == 1 {
                    for s in specs.iter() {
                        client.submit(s).await?;
                    }
                } else if batch == 1 {
                    let mut producers = tokio::task::JoinSet::new();
                    for p in 0..in_flight {
                        let (client, mine) = (client.clone(), Arc::clone(&specs));
                        producers.spawn(async move {
                            for s in mine.iter().skip(p).step_by(in_flight) {
                                client.submit(s).await?;
                            }
                            Ok::<_, ballast::Error>(())
                        });
                    }
                    while let Some(done) = producers.join_next().await {
                        done.map_err(|e| CliError::Io(e.to_string()))??;
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
        let mode = if batch == 1 && in_flight == 1 {
            "one by one".to_string()
        } else if batch == 1 {
            format!("one by one, {in_flight} in flight")
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
