//! The drain suite: N pre-submitted `noop` tasks processed by one `ballast worker` process
//! of capacity C, for a few C; throughput from the first start to the last finish (Redis
//! clock), every task checked to have succeeded.

use std::time::Duration;

use ballast::store::{RETAIN_AGE, RETAIN_COUNT};
use ballast::{Client, TaskSpec, TaskState};
use serde_json::{json, Value};

use super::{
    finished, payload, registered, sampled_record_bytes, spawn_worker, table, with_cost, Bench,
    BenchArgs, COST_COLUMNS,
};
use crate::CliError;

pub async fn run(url: Option<&str>, a: &BenchArgs) -> Result<Value, CliError> {
    let sweep: Vec<usize> = if !a.capacities.is_empty() {
        a.capacities.iter().map(|&c| c as usize).collect()
    } else if a.quick {
        vec![8, 32]
    } else {
        vec![16, 64, 256, 1024]
    };
    // Every task is kept until counted, however many there are (retention would drop
    // the oldest past its count).
    let keep = u64::try_from(a.n).unwrap_or(u64::MAX).max(RETAIN_COUNT);
    let mut rows = Vec::new();
    let (mut best, mut pending_bytes, mut finished_bytes) = (0.0f64, 0.0, 0.0);
    let (mut pending_record, mut finished_record) = (0.0, 0.0);
    for &capacity in &sweep {
        let b = Bench::new(url).await?;
        let queue = b.queue(&format!("drain-{capacity}"));
        b.store.set_retention(&queue, keep, RETAIN_AGE).await?;
        let client = Client::new(b.store.clone());
        let specs: Vec<TaskSpec> = (0..a.n)
            .map(|i| TaskSpec::new(&queue, "noop").payload(payload(i)))
            .collect();
        let empty = b.used_memory().await?;
        for chunk in specs.chunks(1000) {
            client.submit_many(chunk).await?;
        }
        pending_bytes = (b.used_memory().await? - empty) / a.n as f64;
        let ids: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
        pending_record = sampled_record_bytes(&b.store, &queue, &ids).await?;
        let (_worker, took, cost) = b
            .measure(a.n, async {
                let w = spawn_worker(&b.url, &queue, "drain", capacity)?;
                registered(&b.store, &queue, "drain").await?;
                finished(&b.store, &queue, a.n, Duration::from_secs(600)).await?;
                Ok(w)
            })
            .await?;
        finished_bytes = (b.used_memory().await? - empty) / a.n as f64;
        finished_record = sampled_record_bytes(&b.store, &queue, &ids).await?;
        // First start to last finish, from the records (Redis clock, ms).
        let records = b.store.task_records(&queue, &ids).await?;
        let (mut first, mut last, mut ok) = (i64::MAX, 0i64, 0usize);
        for r in records.into_iter().flatten() {
            if r.state == TaskState::Succeeded {
                ok += 1;
            }
            first = first.min(r.started_at.unwrap_or(i64::MAX));
            last = last.max(r.finished_at.unwrap_or(0));
        }
        if ok != a.n {
            return Err(CliError::Io(format!(
                "drain: {ok} of {} tasks succeeded",
                a.n
            )));
        }
        let span = ((last - first) as f64 / 1000.0).max(0.001);
        let rate = a.n as f64 / span;
        best = best.max(rate);
        rows.push(with_cost(
            json!({ "capacity": capacity, "tasks": a.n, "seconds": span, "tasks_per_s": rate, "wall_seconds": took.as_secs_f64() }),
            cost,
        ));
    }
    let mut cols = vec![
        "capacity",
        "tasks",
        "seconds",
        "tasks_per_s",
        "wall_seconds",
    ];
    cols.extend(COST_COLUMNS);
    let mut out = table(&cols, rows);
    out["best_tasks_per_s"] = json!(best.round());
    out["redis_bytes_per_pending_task"] = json!(pending_bytes.round());
    out["redis_bytes_per_finished_task"] = json!(finished_bytes.round());
    out["record_bytes_pending_sampled"] = json!(pending_record.round());
    out["record_bytes_finished_sampled"] = json!(finished_record.round());
    Ok(out)
}
