//! The everyday subcommands: worker, submit, task, tasks, status, cancel, retention.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use ballast::{Client, Store, TaskSpec, TaskState, Worker, WorkerConfig};
use clap::Args;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::output;
use crate::CliError;

/// Tasks `submit --file` sends per `submit_many`: one function call each (they share a queue).
const FILE_BATCH: usize = 1000;

/// `ballast worker`.
#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// Queue to work on.
    #[arg(long)]
    queue: String,
    /// Capacity in units (1..=1000000): the most task cost this worker holds at once.
    #[arg(long, allow_negative_numbers = true)]
    capacity: i64,
    /// A tag this worker carries (repeatable); tasks requiring it may run here.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Worker id [default: host name and process id].
    #[arg(long)]
    id: Option<String>,
    /// Heartbeat interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// A worker silent for this long is dead: its tasks go to the living.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    dead_after: Duration,
    /// How often this worker looks for dead workers in its queue.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    recovery_period: Duration,
    /// Longest wait between promotions of due scheduled tasks when nothing wakes the loop
    /// (scheduling a task wakes it at once).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    promote_period: Duration,
    /// Backoff before the second attempt of a failed task; doubles each time.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    retry_base: Duration,
    /// Longest backoff.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    retry_max: Duration,
    /// On SIGINT or SIGTERM, how long running tasks may take before they are handed back.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    grace: Duration,
    /// A program the `exec` handler may run (repeatable; exact path). Without it, `exec`
    /// refuses everything.
    #[arg(long = "allow-exec")]
    allow_exec: Vec<PathBuf>,
}

/// `ballast submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Queue to submit to.
    #[arg(long)]
    queue: String,
    /// Handler name (required unless --file).
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    kind: Option<String>,
    /// Payload as JSON text.
    #[arg(long, default_value = "null")]
    payload: String,
    /// Priority, -1000..=1000; higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i64,
    /// Cost in capacity units, 1..=1000000.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    cost: i64,
    /// A tag the worker must carry (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Attempts allowed, 1..=1000.
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    max_attempts: i64,
    /// Timeout of one attempt (e.g. 500ms, 30s, 5m).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
    /// Run no earlier than this long after submission (e.g. 5s, 10m).
    #[arg(long, value_parser = parse_duration, conflicts_with = "at")]
    delay: Option<Duration>,
    /// Run no earlier than this time (RFC 3339, e.g. 2026-11-21T12:00:00Z).
    #[arg(long, value_parser = parse_time)]
    at: Option<std::time::SystemTime>,
    /// Largest payload in bytes.
    #[arg(long, default_value_t = ballast::task::DEFAULT_MAX_PAYLOAD_BYTES)]
    max_payload_bytes: usize,
    /// JSON-lines file, one task per line: {"kind", "payload", "priority", "cost", "tags",
    /// "max_attempts", "timeout_ms", "delay_ms"}; only "kind" is required.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Print {"id", "placement"} per task instead of the bare id, with "worker" when the
    /// placement is "assigned" ("finished": the id was submitted before and its task has
    /// ended).
    #[arg(long)]
    json: bool,
}

/// `ballast task`.
#[derive(Args, Debug)]
pub struct TaskArgs {
    /// Task id.
    id: String,
    /// Print the record as JSON.
    #[arg(long)]
    json: bool,
}

/// `ballast retention`.
#[derive(Args, Debug)]
pub struct RetentionArgs {
    /// Queue.
    #[arg(long)]
    queue: String,
    /// Succeeded (and cancelled) tasks to keep.
    #[arg(long, default_value_t = ballast::store::RETAIN_COUNT)]
    keep: u64,
    /// How long to keep them.
    #[arg(long, default_value_t = ballast::store::RETAIN_AGE.into(), value_parser = parse_age)]
    age: humantime::Duration,
}

/// `ballast cancel`.
#[derive(Args, Debug)]
pub struct CancelArgs {
    /// Task id.
    id: String,
}

/// `ballast tasks`.
#[derive(Args, Debug)]
pub struct TasksArgs {
    /// Queue.
    #[arg(long)]
    queue: String,
    /// Only tasks in this state (scheduled, pending, assigned, running, succeeded, failed,
    /// cancelled); pending includes parked.
    #[arg(long)]
    state: Option<String>,
    /// Most records to show.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Print a JSON array of records.
    #[arg(long)]
    json: bool,
}

/// `ballast status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Only this queue [default: every known queue].
    #[arg(long)]
    queue: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Parses a duration such as `250ms`, `5s`, `2m` or `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (examples: 500ms, 5s, 2m)"))
}

/// A duration clap can show as a default (the retention age's shows as `7days`).
fn parse_age(s: &str) -> Result<humantime::Duration, String> {
    parse_duration(s).map(Into::into)
}

/// Parses an RFC 3339 time such as `2026-11-21T12:00:00Z`.
fn parse_time(s: &str) -> Result<std::time::SystemTime, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?}: {e} (expected RFC 3339, e.g. 2026-11-21T12:00:00Z)"))
}

/// Completes on SIGINT or SIGTERM.
async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub async fn worker(url: &str, a: WorkerArgs) -> Result<(), CliError> {
    let store = Store::connect(url).await?;
    let mut w = Worker::new(store, a.queue, a.capacity).config(WorkerConfig {
        heartbeat_interval: a.heartbeat,
        dead_after: a.dead_after,
        recovery_period: a.recovery_period,
        promote_period: a.promote_period,
        retry_base: a.retry_base,
        retry_max: a.retry_max,
        grace_period: a.grace,
    });
    if let Some(id) = a.id {
        w = w.id(id);
    }
    for t in a.tags {
        w = w.tag(t);
    }
    let allow = crate::builtin::ExecAllow::new(&a.allow_exec)?;
    crate::builtin::install(w, allow).run(signal()).await?;
    Ok(())
}

/// One line of a `submit --file` file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    kind: String,
    #[serde(default)]
    payload: Value,
    priority: Option<i64>,
    cost: Option<i64>,
    #[serde(default)]
    tags: Vec<String>,
    max_attempts: Option<i64>,
    timeout_ms: Option<i64>,
    delay_ms: Option<i64>,
}

impl Line {
    fn into_spec(self, queue: &str) -> TaskSpec {
        let mut spec = TaskSpec::new(queue, self.kind).payload(self.payload);
        spec.priority = self.priority.unwrap_or(spec.priority);
        spec.cost = self.cost.unwrap_or(spec.cost);
        spec.tags = self.tags;
        spec.max_attempts = self.max_attempts.unwrap_or(spec.max_attempts);
        spec.timeout_ms = self.timeout_ms.unwrap_or(spec.timeout_ms);
        spec.delay_ms = self.delay_ms.unwrap_or(spec.delay_ms);
        spec
    }
}

pub async fn submit(url: &str, a: SubmitArgs) -> Result<(), CliError> {
    let limits = ballast::Limits {
        max_payload_bytes: a.max_payload_bytes,
    };
    // Everything is read and validated before connecting: bad input writes nothing.
    let specs: Vec<TaskSpec> = match &a.file {
        Some(path) => read_lines(path, &a.queue, &limits)?,
        None => {
            let spec = TaskSpec::new(&a.queue, a.kind.clone().unwrap_or_default())
                .payload_json(&a.payload)
                .map_err(ballast::Error::from)?
                .priority(a.priority)
                .cost(a.cost)
                .max_attempts(a.max_attempts)
                .timeout(a.timeout);
            let mut spec = a.tags.iter().fold(spec, |s, t| s.tag(t));
            if let Some(d) = a.delay {
                spec = spec.delay(d);
            }
            if let Some(at) = a.at {
                spec = spec.not_before(at);
            }
            spec.validate(&limits).map_err(ballast::Error::from)?;
            vec![spec]
        }
    };
    let client = Client::connect(url).await?.with_limits(limits);
    let mut out = std::io::stdout().lock();
    for chunk in specs.chunks(FILE_BATCH) {
        let placed = client.submit_many(chunk).await?;
        for (spec, p) in chunk.iter().zip(placed) {
            let line = if a.json {
                let mut v = serde_json::to_value(&p).map_err(ballast::Error::from)?;
                v["id"] = json!(spec.id);
                v.to_string()
            } else {
                spec.id.clone()
            };
            writeln!(out, "{line}").map_err(|e| CliError::Io(e.to_string()))?;
        }
    }
    Ok(())
}

fn read_lines(
    path: &std::path::Path,
    queue: &str,
    limits: &ballast::Limits,
) -> Result<Vec<TaskSpec>, CliError> {
    let file =
        std::fs::File::open(path).map_err(|e| CliError::Io(format!("{}: {e}", path.display())))?;
    let mut specs = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| CliError::Io(format!("{}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |msg: String| CliError::Usage(format!("{}:{}: {msg}", path.display(), n + 1));
        let parsed: Line = serde_json::from_str(&line).map_err(|e| at(e.to_string()))?;
        let spec = parsed.into_spec(queue);
        spec.validate(limits).map_err(|e| at(e.to_string()))?;
        specs.push(spec);
    }
    Ok(specs)
}

pub async fn task(url: &str, a: TaskArgs) -> Result<(), CliError> {
    let client = Client::connect(url).await?;
    let t = client.task(&a.id).await?;
    if a.json {
        output::print_json(&t)
    } else {
        output::print_task(&t)
    }
}

pub async fn tasks(url: &str, a: TasksArgs) -> Result<(), CliError> {
    let state: Option<TaskState> = match &a.state {
        Some(s) => Some(s.parse().map_err(ballast::Error::from)?),
        None => None,
    };
    ballast::task::check_name("queue", &a.queue).map_err(ballast::Error::from)?;
    let store = Store::connect(url).await?;
    let list = store.tasks(&a.queue, state, a.limit).await?;
    if a.json {
        output::print_json(&list)
    } else {
        output::print_task_table(&list)
    }
}

pub async fn status(url: &str, a: StatusArgs) -> Result<(), CliError> {
    let store = Store::connect(url).await?;
    let queues = match a.queue {
        Some(q) => {
            ballast::task::check_name("queue", &q).map_err(ballast::Error::from)?;
            vec![q]
        }
        None => store.queues().await?,
    };
    let mut report = Vec::new();
    for q in queues {
        let counts = store.counts(&q).await?;
        let workers = store.workers(&q).await?;
        report.push(output::QueueStatus {
            queue: q,
            counts,
            workers,
        });
    }
    if a.json {
        output::print_json(&json!({ "queues": report }))
    } else {
        output::print_status(&report)
    }
}

pub async fn cancel(url: &str, a: CancelArgs) -> Result<(), CliError> {
    let client = Client::connect(url).await?;
    let t = client.task(&a.id).await?;
    match client.store().cancel_task(&t.queue, &a.id).await? {
        ballast::store::Cancel::Cancelled => println!("{}: cancelled", a.id),
        ballast::store::Cancel::Requested(w) => {
            println!("{}: running on {w}, which is told to stop it", a.id)
        }
        ballast::store::Cancel::AlreadyFinal(s) => {
            return Err(CliError::Usage(format!("task {} already ended: {s}", a.id)))
        }
        ballast::store::Cancel::JobEnded(s) => {
            return Err(CliError::Usage(format!("job {} already ended: {s}", a.id)))
        }
    }
    Ok(())
}

pub async fn retention(url: &str, a: RetentionArgs) -> Result<(), CliError> {
    ballast::task::check_name("queue", &a.queue).map_err(ballast::Error::from)?;
    let store = Store::connect(url).await?;
    store.set_retention(&a.queue, a.keep, *a.age).await?;
    println!(
        "{}: keeping up to {} succeeded and {} cancelled tasks for {}",
        a.queue,
        a.keep,
        a.keep,
        humantime::format_duration(*a.age)
    );
    Ok(())
}
