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

/// How the producer submits.
#[derive(Clone, Copy)]
enum Mode {
    /// One task a call, each call awaited before the next.
    OneByOne,
    /// One task a call, this many calls in flight on the one connection.
    InFlight(usize),
    /// This many tasks a call (`submit_many`).
    Batches(usize),
}

impl Mode {
    fn name(self) -> String {
        match self {
            Mode::OneByOne => "one by one".to_string(),
            Mode::InFlight(n) => format!("one by one, {n} in flight"),
            Mode::Batches(n) => format!("batches of {n}"),
        }
    }
}

pub async fn run(url: Option<&str>, a: &BenchArgs) -> Result<Value, CliError> {
    let mut rows = Vec::new();
    let mut memory = 0.0;
    for mode in [
        Mode::OneByOne,
        Mode::InFlight(IN_FLIGHT),
        Mode::Batches(a.batch),
    ] {
        let b = Bench::new(url).await?;
        let queue = b.queue(&format!("submit-{}", mode.name().replace([' ', ','], "")));
        let client = Client::new(b.store.clone());
        let specs: Arc<Vec<TaskSpec>> = Arc::new(
            (0..a.n)
                .map(|i| TaskSpec::new(&queue, "noop").payload(payload(i)))
                .collect(),
        );
        let before = b.used_memory().await?;
        let ((), took, cost) = b
            .measure(a.n, async {
                match mode {
                    Mode::OneByOne => {
                        for s in specs.iter() {
                            client.submit(s).await?;
                        }
                    }
                    Mode::InFlight(in_flight) => {
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
                    }
                    Mode::Batches(batch) => {
                        for chunk in specs.chunks(batch) {
                            client.submit_many(chunk).await?;
                        }
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
        rows.push(with_cost(
            json!({ "mode": mode.name(), "tasks": a.n, "seconds": took.as_secs_f64(), "tasks_per_s": a.n as f64 / took.as_secs_f64() }),
            cost,
        ));
    }
    let mut cols = vec!["mode", "tasks", "seconds", "tasks_per_s"];
    cols.extend(COST_COLUMNS);
    let mut out = table(&cols, rows);
    out["redis_bytes_per_pending_task"] = json!(memory.round());
    Ok(out)
}
