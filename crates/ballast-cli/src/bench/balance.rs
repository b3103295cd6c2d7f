//! The balance suite: scheduling quality. Workers of capacity 1, 2, 4 and 8 (two of each)
//! run tasks of cost 1, 2 and 4 whose work is cost x unit, under processor sharing: a
//! worker holding load L above its capacity K runs each task at K/L speed. The same
//! workload runs under ballast's placement and under the baselines (the same functions with
//! a bench-only policy): pull with concurrency = capacity (cost ignored), pull with
//! concurrency = capacity / largest cost (safe), round-robin and random.
//!
//! Reported per policy: makespan / lower bound (total work / total capacity, or one task's
//! time if longer), average utilisation, and overload integrated over time.

use std::time::{Duration, Instant};

use ballast::store::{ClaimedTask, Outcome};
use ballast::{Client, Store, TaskSpec};
use serde_json::{json, Value};

use super::{table, Bench, BenchArgs};
use crate::CliError;

const CAPACITIES: [i64; 8] = [1, 1, 2, 2, 4, 4, 8, 8];
const COSTS: [i64; 3] = [1, 2, 4];
/// How often the simulated workers advance their tasks.
const TICK: Duration = Duration::from_millis(2);

struct Sim {
    id: String,
    capacity: f64,
    epoch: u64,
    /// Running tasks and the work (capacity-seconds) each still needs.
    running: Vec<(ClaimedTask, f64)>,
    busy: f64,
    overload: f64,
}

pub async fn run(url: Option<&str>, a: &BenchArgs) -> Result<Value, CliError> {
    let (tasks, unit) = if a.quick { (60, 0.02) } else { (240, 0.1) };
    let mut rows = Vec::new();
    for (name, policy) in [
        ("ballast", None),
        ("pull, concurrency = capacity", Some("count")),
        ("pull, concurrency = capacity / 4 (safe)", Some("safe")),
        ("round-robin", Some("round-robin")),
        ("random", Some("random")),
    ] {
        let b = Bench::new(url).await?;
        rows.push(run_policy(&b, name, policy, tasks, unit).await?);
    }
    let cols = [
        "policy",
        "tasks",
        "makespan_s",
        "lower_bound_s",
        "makespan_over_bound",
        "utilisation",
        "overload_unit_s",
    ];
    Ok(table(&cols, rows))
}

async fn run_policy(
    b: &Bench,
    name: &str,
    policy: Option<&str>,
    tasks: usize,
    unit: f64,
) -> Result<Value, CliError> {
    let queue = &b.queue(&format!("balance-{}", policy.unwrap_or("ballast")));
    // Every policy, ballast's included, runs on the bench build of the library, which
    // reads the policy: the same code for all.
    let store = &b.store.for_bench();
    store
        .set_bench_policy(queue, policy, *COSTS.iter().max().unwrap_or(&1))
        .await?;
    // Every worker joins first; then the tasks arrive in one batch, costs interleaved.
    let mut sims = Vec::new();
    for (i, cap) in CAPACITIES.iter().enumerate() {
        let id = format!("sim{i}-cap{cap}");
        let epoch = store
            .register_worker(queue, &id, *cap, &[], Duration::from_secs(3600))
            .await?;
        sims.push(Sim {
            id,
            capacity: *cap as f64,
            epoch,
            running: Vec::new(),
            busy: 0.0,
            overload: 0.0,
        });
    }
    let specs: Vec<TaskSpec> = (0..tasks)
        .map(|i| TaskSpec::new(queue, "work").cost(COSTS[i % COSTS.len()]))
        .collect();
    Client::new(store.clone()).submit_many(&specs).await?;
    let start = Instant::now();
    let mut last = start;
    let mut done = 0;
    let limit = Duration::from_secs(120);
    while done < tasks {
        if start.elapsed() > limit {
            return Err(CliError::Io(format!(
                "balance ({name}): {done} of {tasks} tasks in {limit:?}"
            )));
        }
        tokio::time::sleep(TICK).await;
        let now = Instant::now();
        let dt = (now - last).as_secs_f64();
        last = now;
        for s in &mut sims {
            done += step(store, queue, s, dt, unit).await?;
        }
    }
    let makespan = start.elapsed().as_secs_f64();
    let total_work: f64 = specs.iter().map(|s| s.cost as f64 * unit).sum();
    let total_cap: f64 = CAPACITIES.iter().map(|c| *c as f64).sum();
    let bound = (total_work / total_cap).max(unit);
    let busy: f64 = sims.iter().map(|s| s.busy).sum();
    let overload: f64 = sims.iter().map(|s| s.overload).sum();
    Ok(json!({
        "policy": name, "tasks": tasks, "makespan_s": makespan, "lower_bound_s": bound,
        "makespan_over_bound": makespan / bound, "utilisation": busy / (total_cap * makespan),
        "overload_unit_s": overload,
    }))
}

/// Advances one simulated worker by `dt` seconds: takes what was placed on it, runs its
/// tasks under processor sharing, and reports the finished ones. Returns how many finished.
async fn step(
    store: &Store,
    queue: &str,
    s: &mut Sim,
    dt: f64,
    unit: f64,
) -> Result<usize, CliError> {
    for t in store.claim_tasks(queue, &s.id, s.epoch, &[], 1000).await? {
        let work = t.cost as f64 * unit;
        s.running.push((t, work));
    }
    let load: f64 = s.running.iter().map(|(t, _)| t.cost as f64).sum();
    let speed = if load > s.capacity {
        s.capacity / load
    } else {
        1.0
    };
    s.busy += load.min(s.capacity) * dt;
    s.overload += (load - s.capacity).max(0.0) * dt;
    for (t, left) in &mut s.running {
        *left -= t.cost as f64 * speed * dt;
    }
    let (finished, running): (Vec<_>, Vec<_>) =
        s.running.drain(..).partition(|(_, left)| *left <= 0.0);
    s.running = running;
    for (t, _) in &finished {
        store
            .finish_task(
                queue,
                &s.id,
                s.epoch,
                t,
                &Outcome::Succeeded("null".into()),
                0,
            )
            .await?;
    }
    Ok(finished.len())
}
