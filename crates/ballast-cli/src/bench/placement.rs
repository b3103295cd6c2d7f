//! The placement suite: submit latency with 10 to 10,000 registered workers (simulated:
//! registered with their capacity indexed, each with room for every task), to show that
//! placing a task does not cost more as workers are added.

use std::time::{Duration, Instant};

use ballast::{Client, TaskSpec};
use serde_json::{json, Value};

use super::{payload, percentile, table, with_cost, Bench, BenchArgs, COST_COLUMNS};
use crate::CliError;

pub async fn run(url: Option<&str>, a: &BenchArgs) -> Result<Value, CliError> {
    let sizes: &[usize] = if a.quick {
        &[10, 100]
    } else {
        &[10, 100, 1000, 10_000]
    };
    let m = if a.quick { 200 } else { 5000 };
    let mut rows = Vec::new();
    let mut at: Vec<f64> = Vec::new();
    for &workers in sizes {
        let b = Bench::new(url).await?;
        let queue = b.queue(&format!("placement-{workers}"));
        for i in 0..workers {
            b.store
                .register_worker(
                    &queue,
                    &format!("sim-{i:05}"),
                    ballast::task::CAPACITY_MAX,
                    &[],
                    Duration::from_secs(3600),
                )
                .await?;
        }
        let client = Client::new(b.store.clone());
        let (mut lat, took, cost) = b
            .measure(m, async {
                let mut lat = Vec::with_capacity(m);
                for i in 0..m {
                    let spec = TaskSpec::new(&queue, "noop").payload(payload(i));
                    let t = Instant::now();
                    let placed = client.submit(&spec).await?;
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    if !matches!(placed, ballast::Placement::Assigned(_)) {
                        return Err(CliError::Io(format!("task {i} was not placed: {placed:?}")));
                    }
                }
                Ok(lat)
            })
            .await?;
        lat.sort_by(f64::total_cmp);
        let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
        at.push(mean);
        rows.push(with_cost(
            json!({
                "workers": workers, "tasks": m, "tasks_per_s": m as f64 / took.as_secs_f64(),
                "mean_ms": mean, "p50_ms": percentile(&lat, 50.0), "p99_ms": percentile(&lat, 99.0),
            }),
            cost,
        ));
    }
    let mut cols = vec![
        "workers",
        "tasks",
        "tasks_per_s",
        "mean_ms",
        "p50_ms",
        "p99_ms",
    ];
    cols.extend(COST_COLUMNS);
    let mut out = table(&cols, rows);
    if let (Some(first), Some(last)) = (at.first(), at.last()) {
        out["largest_over_smallest"] = json!(last / first);
    }
    Ok(out)
}
