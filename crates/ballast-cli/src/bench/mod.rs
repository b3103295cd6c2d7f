//! `ballast bench`: how much work ballast moves per Redis, how fast it picks work up, and how
//! well it places it. Every suite runs against a private redis-server (or `--redis`: every
//! queue name ends with a suffix of its own, so runs on a shared Redis never meet) and checks
//! its outcome: submit that every task is pending, drain and latency that every task
//! succeeded, placement that every submit was placed, balance that every task finished.
//! All but balance (a simulation that reports scheduling quality) report Redis CPU, function
//! calls (`FCALL`) and commands per task, which are steadier than wall time on a shared
//! machine.

mod balance;
mod drain;
mod latency;
mod placement;
mod submit;

use std::time::{Duration, Instant};

use ballast::testing::RedisServer;
use ballast::Store;
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::output::print_table;
use crate::CliError;

/// `ballast bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Suites to run (repeatable) [default: all].
    #[arg(long = "suite", value_enum)]
    suites: Vec<Suite>,
    /// Tasks for the submit and drain suites.
    #[arg(long, default_value_t = 100_000)]
    n: usize,
    /// Batch size of the batched submit.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Tasks per second in the latency suite.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds the latency suite runs.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Worker capacities the drain suite sweeps (repeatable) [default: 16, 64, 256, 1024].
    #[arg(long = "capacity", value_parser = clap::value_parser!(u64).range(1..=4096))]
    capacities: Vec<u64>,
    /// Small sizes everywhere, to check the bench itself runs.
    #[arg(long)]
    quick: bool,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Suite {
    Submit,
    Drain,
    Latency,
    Placement,
    Balance,
}

/// What a suite measured about Redis over its run.
#[derive(Debug, Clone, Copy)]
pub struct RedisCost {
    /// Redis CPU (user + system), microseconds per task.
    pub cpu_us_per_task: f64,
    /// Calls of ballast's functions (`FCALL`), per task.
    pub fcalls_per_task: f64,
    /// Commands Redis ran, those inside functions included, per task.
    pub commands_per_task: f64,
}

/// Redis counters read before and after a measured run.
struct Counters {
    cpu_s: f64,
    fcalls: f64,
    commands: f64,
}

/// The number of field `name` of an `INFO` reply (0 when missing).
fn info_field(info: &str, name: &str) -> f64 {
    info.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

impl Counters {
    async fn read(store: &Store) -> Result<Counters, CliError> {
        let info = store.info("everything").await?;
        let field = |name: &str| info_field(&info, name);
        // cmdstat_<name>:calls=N,usec=...; INFO itself is left out.
        let calls =
            |l: &str| -> Option<f64> { l.split("calls=").nth(1)?.split(',').next()?.parse().ok() };
        let (mut commands, mut fcalls) = (0.0, 0.0);
        for l in info
            .lines()
            .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        {
            let Some(c) = calls(l) else { continue };
            commands += c;
            if l.starts_with("cmdstat_fcall:") {
                fcalls = c;
            }
        }
        Ok(Counters {
            cpu_s: field("used_cpu_user") + field("used_cpu_sys"),
            fcalls,
            commands,
        })
    }

    fn cost_since(&self, before: &Counters, tasks: usize) -> RedisCost {
        let n = tasks.max(1) as f64;
        RedisCost {
            cpu_us_per_task: (self.cpu_s - before.cpu_s) * 1e6 / n,
            fcalls_per_task: (self.fcalls - before.fcalls) / n,
            commands_per_task: (self.commands - before.commands) / n,
        }
    }
}

/// The Redis a suite runs on: a private server each, or the `--redis` one, where the queue
/// suffix keeps runs apart.
pub struct Bench {
    pub url: String,
    pub store: Store,
    /// Ends every queue name this bench uses, so that runs on a shared Redis (`--redis`)
    /// never meet each other's tasks or workers.
    run: String,
    _server: Option<RedisServer>,
}

impl Bench {
    async fn new(url: Option<&str>) -> Result<Bench, CliError> {
        let (server, url) = match url {
            Some(u) => (None, u.to_string()),
            None => {
                let s = RedisServer::start()?;
                let u = s.url();
                (Some(s), u)
            }
        };
        let store = Store::connect(&url).await?;
        let id = ballast::task::new_id().to_lowercase();
        Ok(Bench {
            url,
            store,
            run: id[id.len() - 6..].to_string(),
            _server: server,
        })
    }

    /// The queue this bench uses for `name`.
    pub fn queue(&self, name: &str) -> String {
        format!("bench-{name}-{}", self.run)
    }

    /// Runs `work` between two reads of the Redis counters; returns its result, its wall
    /// time and what it cost Redis per task.
    pub async fn measure<T, F>(
        &self,
        tasks: usize,
        work: F,
    ) -> Result<(T, Duration, RedisCost), CliError>
    where
        F: std::future::Future<Output = Result<T, CliError>>,
    {
        let before = Counters::read(&self.store).await?;
        let start = Instant::now();
        let out = work.await?;
        let took = start.elapsed();
        let after = Counters::read(&self.store).await?;
        Ok((out, took, after.cost_since(&before, tasks)))
    }

    /// Redis `used_memory` in bytes.
    pub async fn used_memory(&self) -> Result<f64, CliError> {
        Ok(info_field(&self.store.info("memory").await?, "used_memory"))
    }
}

/// Mean `MEMORY USAGE` of up to 100 task records spread evenly over `ids`: the record alone,
/// where the `used_memory` figures also count the indexes.
pub async fn sampled_record_bytes(
    store: &Store,
    queue: &str,
    ids: &[String],
) -> Result<f64, CliError> {
    let step = (ids.len() / 100).max(1);
    let sample: Vec<String> = ids.iter().step_by(step).take(100).cloned().collect();
    let sizes = store.task_memory(queue, &sample).await?;
    Ok(sizes.iter().sum::<u64>() as f64 / sizes.len().max(1) as f64)
}

/// Starts a `ballast worker` process (this executable) on `url`.
pub fn spawn_worker(url: &str, queue: &str, id: &str, capacity: usize) -> Result<Child, CliError> {
    let exe = std::env::current_exe().map_err(|e| CliError::Io(e.to_string()))?;
    let child = std::process::Command::new(exe)
        .args(["--redis", url, "worker", "--queue", queue, "--id", id])
        .args(["--capacity", &capacity.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| CliError::Io(format!("cannot start a worker: {e}")))?;
    Ok(Child(child))
}

/// Waits until a worker with this id has registered on `queue`.
pub async fn registered(store: &Store, queue: &str, id: &str) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !store.workers(queue).await?.iter().any(|w| w.id == id) {
        if Instant::now() > deadline {
            return Err(CliError::Io(format!("worker {id} did not register")));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// A child process stopped with SIGTERM (and reaped) when dropped.
pub struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.0.wait();
    }
}

/// A ~100-byte JSON payload, as the peers' benchmarks use.
pub fn payload(i: usize) -> Value {
    json!({ "user": format!("user-{i:08}"), "action": "resize", "width": 640, "height": 480, "pad": "xxxxxxxxxxxxxxxx" })
}

/// Percentile of sorted values (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub async fn run(url: Option<String>, a: BenchArgs) -> Result<(), CliError> {
    let mut a = a;
    if a.quick {
        a.n = a.n.min(2000);
        a.batch = a.batch.min(200);
        a.seconds = a.seconds.min(2);
        a.rate = a.rate.min(500);
    }
    let suites = if a.suites.is_empty() {
        vec![
            Suite::Submit,
            Suite::Drain,
            Suite::Latency,
            Suite::Placement,
            Suite::Balance,
        ]
    } else {
        a.suites.clone()
    };
    let mut report = serde_json::Map::new();
    for s in suites {
        let started = Instant::now();
        if !a.json {
            eprintln!("bench: {s:?} ...");
        }
        let result = match s {
            Suite::Submit => submit::run(url.as_deref(), &a).await?,
            Suite::Drain => drain::run(url.as_deref(), &a).await?,
            Suite::Latency => latency::run(url.as_deref(), &a).await?,
            Suite::Placement => placement::run(url.as_deref(), &a).await?,
            Suite::Balance => balance::run(url.as_deref(), &a).await?,
        };
        let name = format!("{s:?}").to_lowercase();
        if !a.json {
            println!("\n{name} ({:.1} s)", started.elapsed().as_secs_f64());
            print_rows(&result)?;
        }
        report.insert(name, result);
    }
    if a.json {
        crate::output::print_json(&Value::Object(report))?;
    }
    Ok(())
}

/// Prints a suite's `rows` (an array of flat objects) as a table, in `columns` order.
fn print_rows(result: &Value) -> Result<(), CliError> {
    let Some(rows) = result["rows"].as_array() else {
        return Ok(());
    };
    let header: Vec<&str> = result["columns"]
        .as_array()
        .map(|c| c.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            header
                .iter()
                .map(|h| match &r[*h] {
                    Value::Number(n) => n
                        .as_f64()
                        .map(|f| {
                            if f.fract() == 0.0 && f.abs() < 1e15 {
                                format!("{f:.0}")
                            } else {
                                format!("{f:.2}")
                            }
                        })
                        .unwrap_or_default(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    print_table(&header, &cells)?;
    for (k, v) in result.as_object().into_iter().flatten() {
        if k != "rows" && k != "columns" {
            println!("{k}: {v}");
        }
    }
    Ok(())
}

/// A suite's result: rows under named columns, plus any other fields.
pub fn table(columns: &[&str], rows: Vec<Value>) -> Value {
    json!({ "columns": columns, "rows": rows })
}

/// The columns every measured row ends with.
pub const COST_COLUMNS: [&str; 3] = [
    "redis_cpu_us_per_task",
    "fcalls_per_task",
    "redis_cmds_per_task",
];

/// Adds a run's Redis cost to a row.
pub fn with_cost(mut row: Value, c: RedisCost) -> Value {
    row["redis_cpu_us_per_task"] = json!(c.cpu_us_per_task);
    row["fcalls_per_task"] = json!(c.fcalls_per_task);
    row["redis_cmds_per_task"] = json!(c.commands_per_task);
    row
}

/// Waits until `queue` has `n` finished tasks (succeeded, failed or cancelled).
pub async fn finished(
    store: &Store,
    queue: &str,
    n: usize,
    limit: Duration,
) -> Result<(), CliError> {
    let deadline = Instant::now() + limit;
    loop {
        let c = store.counts(queue).await?;
        let done = (c.succeeded + c.failed + c.cancelled) as usize;
        if done >= n {
            if c.succeeded as usize != n {
                return Err(CliError::Io(format!(
                    "{queue}: {} of {n} tasks succeeded",
                    c.succeeded
                )));
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CliError::Io(format!(
                "{queue}: only {done} of {n} tasks finished in {limit:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
