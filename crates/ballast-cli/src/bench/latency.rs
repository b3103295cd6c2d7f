//! The latency suite: a producer submits at a fixed rate while one worker process runs;
//! submit-to-start latency is the handler's start time minus the producer's send time (one
//! machine, one clock, microseconds).

use std::time::Duration;

use ballast::{Client, TaskSpec};
use serde_json::{json, Value};

use super::{
    finished, percentile, registered, spawn_worker, table, with_cost, Bench, BenchArgs,
    COST_COLUMNS,
};
use crate::builtin::now_us;
use crate::CliError;

pub async fn run(url: Option<&str>, a: &BenchArgs) -> Result<Value, CliError> {
    let b = Bench::new(url).await?;
    let queue = &b.queue("latency");
    let _worker = spawn_worker(&b.url, queue, "latency", 16)?;
    registered(&b.store, queue, "latency").await?;
    let client = Client::new(b.store.clone());
    let n = usize::try_from(a.rate * a.seconds).unwrap_or(0);
    let period = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
    let (ids, took, cost) = b
        .measure(n, async {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut ids = Vec::with_capacity(n);
            for _ in 0..n {
                tick.tick().await;
                let spec = TaskSpec::new(queue, "stamp").payload(json!({ "sent_us": now_us() }));
                client.submit(&spec).await?;
                ids.push(spec.id);
            }
            finished(client.store(), queue, n, Duration::from_secs(120)).await?;
            Ok(ids)
        })
        .await?;
    let records = b.store.task_records(queue, &ids).await?;
    let mut ms: Vec<f64> = records
        .iter()
        .flatten()
        .filter_map(|t| {
            let sent = t.payload["sent_us"].as_i64()?;
            let started = t.result.as_ref()?["started_us"].as_i64()?;
            Some((started - sent) as f64 / 1000.0)
        })
        .collect();
    if ms.len() != n {
        return Err(CliError::Io(format!(
            "latency: {} of {n} tasks reported a start",
            ms.len()
        )));
    }
    ms.sort_by(f64::total_cmp);
    let row = with_cost(
        json!({
            "rate_per_s": a.rate, "tasks": n, "seconds": took.as_secs_f64(),
            "p50_ms": percentile(&ms, 50.0), "p99_ms": percentile(&ms, 99.0), "max_ms": ms.last().copied().unwrap_or(0.0),
        }),
        cost,
    );
    let mut cols = vec![
        "rate_per_s",
        "tasks",
        "seconds",
        "p50_ms",
        "p99_ms",
        "max_ms",
    ];
    cols.extend(COST_COLUMNS);
    Ok(table(&cols, vec![row]))
}
