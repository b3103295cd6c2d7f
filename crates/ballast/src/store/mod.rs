//! The one module that talks to Redis: every key name, every function and every command.
//!
//! Workers, clients and loops call [`Store`] methods named after what they do; each change
//! to tasks, workers or jobs is one Lua function call (a body in `store/lua/`), so it is
//! atomic; only settings and staged job input are written directly. The functions form one library with `lua/lib.lua` (key names, server time,
//! placement) as its shared code, loaded into Redis on first use (`library.rs`).
//!
//! Key layout (all keys of a queue carry its hash tag, `P = "ballast:{queue}:"`) is listed in
//! ARCHITECTURE.md; [`Store::check_queue`] verifies its invariants.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncCommands, AsyncConnectionConfig, ToRedisArgs};
use serde::Serialize;

use crate::error::{Error, Invalid, Result};
use crate::job::{JobHeader, JobRecord};
use crate::task::{Checked, TaskRecord, TaskSpec, TaskState};

mod library;

use library::{
    Build, Call, Function, CANCEL_JOB, CANCEL_TASK, CLAIM_TASKS, FINISH_TASKS, HEARTBEAT_WORKER,
    LEAVE_WORKER, PROMOTE_TASKS, PURGE_DEAD, RECOVER_WORKERS, REGISTER_WORKER, RESYNC_WORKER,
    RETRY_DEAD, SUBMIT_JOB, SUBMIT_TASK, SUBMIT_TASKS,
};

/// The error recorded on a task stopped by a cancel request.
const CANCELLED: &str = "cancelled while running";

/// A submit function's reply for one task.
fn placement(r: &[String]) -> Result<Placement> {
    match r.first().map(String::as_str) {
        Some("assigned") => Ok(Placement::Assigned(r.get(1).cloned().unwrap_or_default())),
        Some("parked") => Ok(Placement::Parked),
        Some("scheduled") => Ok(Placement::Scheduled),
        Some("finished") => Ok(Placement::Finished),
        Some("pending") => Ok(Placement::Pending),
        _ => Err(Error::Corrupt(format!("submit replied {r:?}"))),
    }
}

/// An outcome as the finish functions take it: name, result or error, retry delay.
fn outcome_args(outcome: &Outcome) -> (&'static str, &str, Duration) {
    match outcome {
        Outcome::Succeeded(r) => ("succeeded", r.as_str(), Duration::ZERO),
        Outcome::Retry { error, delay } => ("retry", error.as_str(), *delay),
        Outcome::Failed(e) => ("failed", e.as_str(), Duration::ZERO),
        Outcome::Cancelled => ("cancelled", CANCELLED, Duration::ZERO),
    }
}

/// The set of queue names (a directory for `status`; outside any queue's slot).
const QUEUES_KEY: &str = "ballast:queues";

/// Key prefix of a queue: `ballast:{queue}:`. The braces make the queue name the hash tag.
pub fn prefix(queue: &str) -> String {
    format!("ballast:{{{queue}}}:")
}

/// Where a submitted task went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "placement", content = "worker")]
pub enum Placement {
    /// Placed on this worker at once.
    Assigned(String),
    /// Waiting for a worker with room.
    Pending,
    /// No live worker could ever run it (capacity or tags); waits for one to join.
    Parked,
    /// Delayed: waits for its time.
    Scheduled,
    /// Already ended: the reply to a submit that repeats the id of a task that has run
    /// (or was cancelled). Nothing was written.
    Finished,
}

/// A task handed to a worker by [`Store::claim_tasks`], [`Store::finish_tasks`] (or
/// [`Store::finish_task`]) or [`Store::resync_worker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedTask {
    /// Task id.
    pub id: String,
    /// Handler name.
    pub kind: String,
    /// Payload, JSON text.
    pub payload: String,
    /// Fencing token of this assignment; finishing needs it.
    pub lease: i64,
    /// Capacity units the task holds.
    pub cost: i64,
    /// Timeout of this attempt, milliseconds.
    pub timeout_ms: i64,
    /// Attempts allowed.
    pub max_attempts: i64,
    /// This attempt's number, from 1.
    pub attempt: i64,
    /// `reduce` for a job's reduce task, empty otherwise.
    pub role: String,
}

impl ClaimedTask {
    /// One claimed task from its row: running held token, spec, attempt.
    fn from_row(token: &str, spec: &str, attempt: &str) -> Result<Self> {
        let corrupt = || Error::Corrupt(format!("claim row {token:?} {attempt:?}"));
        let held = HeldToken::parse(token)
            .filter(|h| !h.assigned)
            .ok_or_else(corrupt)?;
        let spec = Spec::parse(spec).ok_or_else(corrupt)?;
        Ok(ClaimedTask {
            id: held.id.to_string(),
            kind: spec.kind.to_string(),
            payload: spec.payload.to_string(),
            lease: held.lease,
            cost: held.cost,
            timeout_ms: spec.timeout_ms,
            max_attempts: spec.max_attempts,
            attempt: attempt.parse().map_err(|_| corrupt())?,
            role: spec.role.to_string(),
        })
    }

    /// Claimed tasks from a function's flat reply: three strings per task.
    fn from_rows(flat: Vec<String>) -> Result<Vec<Self>> {
        if flat.len() % 3 != 0 {
            return Err(Error::Corrupt(format!(
                "a claim reply of {} strings is not three per task",
                flat.len()
            )));
        }
        flat.chunks_exact(3)
            .map(|r| Self::from_row(&r[0], &r[1], &r[2]))
            .collect()
    }
}

/// A task's `spec` field: what it was submitted with that does not change, apart from what
/// placement reads on its own (cost, tags), written once as one string so that placement
/// reads, and the worker receives, one field instead of five: `<max_attempts> <timeout_ms>
/// <kind>[ <role>]`, a newline, then the payload. A kind is a name (no space or newline), so
/// the first newline ends the head.
pub(crate) struct Spec<'a> {
    /// Attempts allowed.
    pub max_attempts: i64,
    /// Timeout of one attempt, in milliseconds.
    pub timeout_ms: i64,
    /// Handler name.
    pub kind: &'a str,
    /// `reduce` for a job's reduce task, empty otherwise.
    pub role: &'a str,
    /// Payload, JSON text.
    pub payload: &'a str,
}

impl<'a> Spec<'a> {
    /// The field's text for a task submitted with these (no role: a user's task).
    pub fn text(spec: &TaskSpec, payload: &str) -> String {
        format!(
            "{} {} {}\n{payload}",
            spec.max_attempts, spec.timeout_ms, spec.kind
        )
    }

    /// Reads the field; `None` when it is not in that shape.
    pub fn parse(text: &'a str) -> Option<Self> {
        let (head, payload) = text.split_once('\n')?;
        let mut words = head.split(' ');
        let max_attempts = words.next()?.parse().ok()?;
        let timeout_ms = words.next()?.parse().ok()?;
        let kind = words.next()?;
        let role = words.next().unwrap_or("");
        if words.next().is_some() {
            return None;
        }
        Some(Spec {
            max_attempts,
            timeout_ms,
            kind,
            role,
            payload,
        })
    }
}

/// A task's `run` field: what its placements and starts change, written as one field so
/// that a start writes one field instead of five: `<lease> <attempts> <runs> <started_at>
/// <worker>`, where `started_at` is `-` until the run starts and the worker (the rest of the
/// text) is empty while the task waits. A task never placed has none.
#[derive(Default)]
pub(crate) struct Run<'a> {
    /// The latest placement's fencing token.
    pub lease: i64,
    /// Attempts used.
    pub attempts: i64,
    /// Times a worker started the task.
    pub runs: i64,
    /// When the current (or last) run started.
    pub started_at: Option<i64>,
    /// The worker the task is placed on or ran on last; empty while it waits.
    pub worker: &'a str,
}

impl<'a> Run<'a> {
    /// Reads the field; `None` when it is not in that shape.
    pub fn parse(text: &'a str) -> Option<Self> {
        // Digits only, as lib.lua's run_of() reads them.
        fn int(t: &str) -> Option<i64> {
            t.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| t.parse().ok())?
        }
        let mut parts = text.splitn(5, ' ');
        let mut next = || parts.next();
        let (lease, attempts, runs) = (int(next()?)?, int(next()?)?, int(next()?)?);
        let started_at = match next()? {
            "-" => None,
            t => Some(int(t)?),
        };
        Some(Run {
            lease,
            attempts,
            runs,
            started_at,
            worker: next()?,
        })
    }
}

/// How an attempt ended, as the worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Success with a JSON result.
    Succeeded(String),
    /// A failed attempt worth another, not before `delay`; with no attempts left the task
    /// goes to the dead letters.
    Retry {
        /// What went wrong.
        error: String,
        /// The least time before the next attempt.
        delay: Duration,
    },
    /// Give up now: the task goes to the dead letters.
    Failed(String),
    /// Stopped on a cancel request.
    Cancelled,
}

/// What [`Store::cancel_task`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// The task had not started: it is cancelled.
    Cancelled,
    /// The task is running on this worker, which is told to stop it.
    Requested(String),
    /// The task had already ended in this state.
    AlreadyFinal(TaskState),
    /// The job had already ended in this state.
    JobEnded(String),
}

/// What [`Store::finish_task`] did. Either way, the tasks it holds were claimed for the
/// worker in the same call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Recorded.
    Recorded(Vec<ClaimedTask>),
    /// Refused: the task is no longer this worker's under this lease. Nothing was written
    /// for it.
    Stale(Vec<ClaimedTask>),
}

/// How a worker leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// Stop taking work; hand back tasks not started yet; keep running ones.
    Drain,
    /// Hand back everything still held and delete the worker.
    Remove,
}

/// Task counts of a queue by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounts {
    /// Waiting for their time (delayed, or retrying after backoff).
    pub scheduled: u64,
    /// Waiting for a worker (parked ones included).
    pub pending: u64,
    /// Of the pending, those no live worker could run (capacity or tags).
    pub parked: u64,
    /// Placed on a worker, not started.
    pub assigned: u64,
    /// Running.
    pub running: u64,
    /// Finished with a result.
    pub succeeded: u64,
    /// Given up on: the dead letters.
    pub failed: u64,
    /// Cancelled on request.
    pub cancelled: u64,
}

/// A worker as Redis records it. Times are milliseconds on the Redis clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerRecord {
    /// Worker id.
    pub id: String,
    /// `active` (taking work) or `draining` (finishing what it holds).
    pub state: String,
    /// Capacity in units.
    pub capacity: i64,
    /// Cost of the tasks assigned to or running on it.
    pub assigned: i64,
    /// Tags it carries.
    pub tags: Vec<String>,
    /// Last heartbeat.
    pub heartbeat_at: i64,
    /// When it registered.
    pub registered_at: i64,
    /// Tasks it finished (succeeded or failed).
    pub finished: i64,
    /// The registration's fencing token; a process presenting another one was declared dead.
    pub epoch: u64,
}

impl WorkerRecord {
    fn from_fields(h: &HashMap<String, String>) -> Result<Self> {
        let get = |f: &str| {
            h.get(f)
                .cloned()
                .ok_or_else(|| Error::Corrupt(format!("worker field {f} missing")))
        };
        let int = |f: &str| {
            get(f)?
                .parse::<i64>()
                .map_err(|_| Error::Corrupt(format!("worker field {f} is not an integer")))
        };
        Ok(WorkerRecord {
            id: get("id")?,
            state: get("state")?,
            capacity: int("capacity")?,
            assigned: int("assigned")?,
            tags: split_tags(&get("tags")?),
            heartbeat_at: int("heartbeat_at")?,
            registered_at: int("registered_at")?,
            finished: int("finished")?,
            epoch: int("epoch")?.try_into().unwrap_or(0),
        })
    }
}

/// The tags of a comma-joined list, as the records keep them.
pub(crate) fn split_tags(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect()
}

/// What tasks of one shape share: everything but id and spec (kind, max attempts, timeout
/// and payload, which go in the task's [`Spec`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Shape<'a> {
    priority: i64,
    cost: i64,
    tags: &'a [String],
    delay_ms: i64,
    not_before_ms: i64,
}

impl<'a> Shape<'a> {
    fn of(spec: &'a TaskSpec, checked: &'a Checked) -> Self {
        Shape {
            priority: spec.priority,
            cost: spec.cost,
            tags: &checked.tags,
            delay_ms: spec.delay_ms,
            not_before_ms: spec.not_before_ms,
        }
    }

    /// The shape's arguments, in the order the submit functions take them.
    fn args(&self, call: &mut Call) {
        call.arg(self.priority)
            .arg(self.cost)
            .arg(self.tags.join(","))
            .arg(self.delay_ms)
            .arg(self.not_before_ms);
    }
}

/// `BLPOP` for up to `timeout`; a timeout under a millisecond (which Redis would read as
/// "forever") returns at once. A blocking connection has no reply timeout of its own, so a
/// connection that died without closing (a half-open TCP link) would wait forever: past the
/// timeout and a margin, the wait fails like a dropped connection, and the caller reconnects.
async fn blpop(
    conn: &mut MultiplexedConnection,
    key: String,
    timeout: Duration,
) -> Result<Option<(String, String)>> {
    if timeout < Duration::from_millis(1) {
        return Ok(None);
    }
    let margin = timeout + Duration::from_secs(5);
    match tokio::time::timeout(margin, conn.blpop(key, timeout.as_secs_f64())).await {
        Ok(got) => Ok(got?),
        Err(_) => Err(Error::Redis(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no reply to a blocking wait",
        )))),
    }
}

/// One token of a worker's held set (`P worker:<w>:tasks`): whether the task is still only
/// assigned, its lease, its cost and its id. lib.lua writes them as `<lease> <cost> <id>`,
/// with an `a` in front while the task is assigned.
#[derive(Debug, PartialEq, Eq)]
struct HeldToken<'a> {
    assigned: bool,
    lease: i64,
    cost: i64,
    id: &'a str,
}

impl<'a> HeldToken<'a> {
    fn parse(token: &'a str) -> Option<Self> {
        let (assigned, rest) = match token.strip_prefix('a') {
            Some(rest) => (true, rest),
            None => (false, token),
        };
        let (lease, rest) = rest.split_once(' ')?;
        let (cost, id) = rest.split_once(' ')?;
        Some(HeldToken {
            assigned,
            lease: lease.parse().ok()?,
            cost: cost.parse().ok()?,
            id,
        })
    }
}

/// A duration in whole milliseconds, as the functions take them.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The state index each task state lives in; pending tasks may also be parked. Running
/// tasks have none (see [`Store::counts`] and [`Store::tasks`]).
fn state_key(p: &str, state: TaskState) -> String {
    format!("{p}{state}")
}

/// How many succeeded (and cancelled) tasks a queue keeps until [`Store::set_retention`]
/// says otherwise (lib.lua's RETAIN_COUNT).
pub const RETAIN_COUNT: u64 = 100_000;
/// How long a queue keeps them by default (lib.lua's RETAIN_MS).
pub const RETAIN_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The count of running tasks the functions keep (running tasks have no index).
fn running_count_key(p: &str) -> String {
    format!("{p}running_count")
}

/// Keys under a queue's prefix `p`, named as lib.lua names them: a task's record, the
/// registered workers, and a worker's held tasks' tokens.
fn task_key(p: &str, id: &str) -> String {
    format!("{p}task:{id}")
}
fn workers_key(p: &str) -> String {
    format!("{p}workers")
}
fn held_key(p: &str, w: &str) -> String {
    format!("{p}worker:{w}:tasks")
}

/// Whether the index named `name` (`P <name>`) is a list in finish order (succeeded and
/// cancelled tasks leave it oldest first only) rather than a sorted set.
fn listed(name: &str) -> bool {
    matches!(name, "succeeded" | "cancelled")
}

/// The first `end + 1` ids of an index (`end` = -1: all), oldest or first placed first,
/// whichever of the two kinds it is.
async fn index_ids(
    conn: &mut ConnectionManager,
    p: &str,
    name: &str,
    end: isize,
) -> Result<Vec<String>> {
    let key = format!("{p}{name}");
    Ok(if listed(name) {
        conn.lrange(key, 0, end).await?
    } else {
        conn.zrange(key, 0, end).await?
    })
}

/// The handle on Redis. Cheap to clone; clones share one multiplexed, reconnecting connection.
#[derive(Clone)]
pub struct Store {
    client: redis::Client,
    conn: ConnectionManager,
    /// The library build this handle calls (see [`Store::for_bench`]).
    build: Build,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Connects to Redis at `url` (`redis://host:port/db`, `redis+unix:///path/to.sock`).
    pub async fn connect(url: &str) -> Result<Store> {
        let client = redis::Client::open(url)?;
        // Calls that place a large batch can take longer than the client's default 500 ms.
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_connection_timeout(Some(Duration::from_secs(5)));
        let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
        Ok(Store {
            client,
            conn,
            build: Build::Production,
        })
    }

    /// Refuses a Redis that evicts keys under memory pressure: an evicted task record or
    /// index would be a lost task. Passes when `CONFIG` is not allowed (a restricted ACL
    /// user), with a warning, since the policy cannot be read then.
    pub async fn check_eviction(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let got: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut conn)
            .await;
        match got {
            Ok(kv) => match kv.get(1).map(String::as_str) {
                Some("noeviction") | None => Ok(()),
                Some(policy) => Err(Error::UnsafeRedis(format!(
                    "maxmemory-policy is {policy}, so Redis may evict task keys under memory \
                     pressure; set it to noeviction (CONFIG SET maxmemory-policy noeviction)"
                ))),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read maxmemory-policy; make sure it is noeviction");
                Ok(())
            }
        }
    }

    /// How many succeeded (and, separately, cancelled) tasks the queue keeps and for how
    /// long; older ones are deleted a few at a time as new tasks finish. Defaults:
    /// [`RETAIN_COUNT`] and [`RETAIN_AGE`]. Dead letters are kept until retried or purged.
    pub async fn set_retention(&self, queue: &str, count: u64, age: Duration) -> Result<()> {
        let mut conn = self.conn.clone();
        conn.hset_multiple::<_, _, _, ()>(
            format!("{}retention", prefix(queue)),
            &[("count", count), ("ms", ms(age))],
        )
        .await?;
        Ok(())
    }

    /// A call of function `f` with its one key, in the library build this handle calls.
    fn call<K: ToRedisArgs>(&self, f: &Function, key: K) -> Call {
        f.key(self.build, key)
    }

    /// For benchmarks only: this handle, calling the bench build of the function library,
    /// which honours [`Store::set_bench_policy`]. Placement there reads the queue's policy
    /// first; the production build never does.
    pub fn for_bench(&self) -> Store {
        Store {
            build: Build::Bench,
            ..self.clone()
        }
    }

    /// For benchmarks only, on a [`Store::for_bench`] handle: places the queue's tasks with
    /// a baseline policy instead of ballast's (`count`, `safe` with `unit` = the largest
    /// cost, `round-robin`, `random`), or with ballast's again when `policy` is `None`.
    /// Baselines may oversubscribe workers.
    pub async fn set_bench_policy(
        &self,
        queue: &str,
        policy: Option<&str>,
        unit: i64,
    ) -> Result<()> {
        if self.build != Build::Bench {
            return Err(Invalid::new(
                "policy",
                "a bench policy needs a handle from Store::for_bench",
            )
            .into());
        }
        let p = prefix(queue);
        let mut conn = self.conn.clone();
        match policy {
            Some(name) => {
                redis::pipe()
                    .set(format!("{p}policy"), name)
                    .set(format!("{p}policy_unit"), unit)
                    .query_async::<()>(&mut conn)
                    .await?
            }
            None => {
                conn.del::<_, ()>(&[format!("{p}policy"), format!("{p}policy_unit")])
                    .await?
            }
        }
        Ok(())
    }

    /// Runs a call that is safe to repeat, again after a short pause when the connection
    /// dropped: the connection manager reconnects behind the first failure (a Redis restart,
    /// a failover), so the caller does not see that one error.
    async fn again<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut pause = Duration::from_millis(50);
        for _ in 0..4 {
            match call().await {
                Err(Error::Redis(e))
                    if e.is_connection_dropped()
                        || e.is_io_error()
                        || e.is_connection_refusal() =>
                {
                    tracing::debug!(error = %e, "redis connection dropped; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
        call().await
    }

    /// The text of `INFO <section>`, for measurements (CPU, commands, memory).
    pub async fn info(&self, section: &str) -> Result<String> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("INFO")
            .arg(section)
            .query_async(&mut conn)
            .await?)
    }

    /// A connection of its own for blocking waits (a blocked command would hold up every
    /// other command on a shared connection), with no response timeout.
    pub async fn blocking_connection(&self) -> Result<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        Ok(self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// A pub/sub connection subscribed to the queue's finish events (task ids).
    pub async fn subscribe_events(&self, queue: &str) -> Result<redis::aio::PubSub> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(format!("{}events", prefix(queue))).await?;
        Ok(pubsub)
    }

    /// Stores a checked task and places it. An id already stored is left as it is, and its
    /// placement told as it stands. [`Store::submit_tasks`] does many in one round trip.
    pub async fn submit_task(&self, spec: &TaskSpec, checked: &Checked) -> Result<Placement> {
        self.again(|| self.submit_task_once(spec, checked)).await
    }

    async fn submit_task_once(&self, spec: &TaskSpec, checked: &Checked) -> Result<Placement> {
        let mut conn = self.conn.clone();
        let p = prefix(&spec.queue);
        let mut call = self.call(&SUBMIT_TASK, task_key(&p, &spec.id));
        call.remembering_queue(&spec.queue);
        call.arg(&p).arg(&spec.id);
        call.arg(Spec::text(spec, &checked.payload));
        Shape::of(spec, checked).args(&mut call);
        let reply: Vec<String> = call.invoke_async(&mut conn).await?;
        placement(&reply)
    }

    /// Stores many checked tasks, a function call per run of tasks of one queue (1,000 at
    /// most), then places them. A task whose id is already stored is left as it is and its
    /// placement told as it stands: a batch sent again after its reply was lost submits
    /// nothing twice and reports what the first call did.
    pub async fn submit_tasks(&self, tasks: &[(&TaskSpec, &Checked)]) -> Result<Vec<Placement>> {
        let mut out = Vec::with_capacity(tasks.len());
        // One call per run of tasks of one queue (a queue is one slot), 1,000 at most.
        for run in tasks.chunk_by(|a, b| a.0.queue == b.0.queue) {
            let queue = &run[0].0.queue;
            let p = prefix(queue);
            for chunk in run.chunks(1000) {
                // Each distinct shape (everything but id and spec) is sent once.
                let mut shapes: Vec<Shape> = Vec::new();
                let mut index = HashMap::new();
                let mut shape_of = Vec::with_capacity(chunk.len());
                for &(spec, checked) in chunk {
                    let shape = Shape::of(spec, checked);
                    shape_of.push(*index.entry(shape).or_insert_with(|| {
                        shapes.push(shape);
                        shapes.len()
                    }));
                }
                let mut call = self.call(&SUBMIT_TASKS, format!("{p}pending"));
                call.remembering_queue(queue);
                call.arg(&p).arg(shapes.len());
                for shape in &shapes {
                    shape.args(&mut call);
                }
                for ((spec, checked), shape) in chunk.iter().zip(shape_of) {
                    call.arg(&spec.id)
                        .arg(Spec::text(spec, &checked.payload))
                        .arg(shape);
                }
                // Each chunk is sent again on its own after a dropped connection: a chunk
                // already stored is told where its tasks went, and no earlier chunk is sent
                // twice.
                let replies: Vec<String> = self
                    .again(|| async {
                        let mut conn = self.conn.clone();
                        Ok(call.invoke_async(&mut conn).await?)
                    })
                    .await?;
                for r in replies.chunks(2) {
                    out.push(placement(r)?);
                }
            }
        }
        Ok(out)
    }

    /// The command that adds a queue to the directory of queues.
    fn remember_queue(queue: &str) -> redis::Cmd {
        redis::cmd("SADD").arg(QUEUES_KEY).arg(queue).to_owned()
    }

    /// Reads a task's record, or `None` when the queue has no such task.
    pub async fn task(&self, queue: &str, id: &str) -> Result<Option<TaskRecord>> {
        self.again(|| self.task_once(queue, id)).await
    }

    async fn task_once(&self, queue: &str, id: &str) -> Result<Option<TaskRecord>> {
        let mut conn = self.conn.clone();
        let h: HashMap<String, String> = conn.hgetall(task_key(&prefix(queue), id)).await?;
        if h.is_empty() {
            return Ok(None);
        }
        TaskRecord::from_fields(queue, id, h)
            .map(Some)
            .map_err(Error::Corrupt)
    }

    /// Bytes Redis uses for each of these task records (`MEMORY USAGE`; 0 for an unknown
    /// task), for measurements.
    pub async fn task_memory(&self, queue: &str, ids: &[String]) -> Result<Vec<u64>> {
        let p = prefix(queue);
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("MEMORY").arg("USAGE").arg(task_key(&p, id));
        }
        let sizes: Vec<Option<u64>> = pipe.query_async(&mut conn).await?;
        Ok(sizes.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Reads many records of one queue in pipelined batches; `None` where a task is unknown.
    pub async fn task_records(
        &self,
        queue: &str,
        ids: &[String],
    ) -> Result<Vec<Option<TaskRecord>>> {
        self.again(|| self.task_records_once(queue, ids)).await
    }

    async fn task_records_once(
        &self,
        queue: &str,
        ids: &[String],
    ) -> Result<Vec<Option<TaskRecord>>> {
        let p = prefix(queue);
        let mut conn = self.conn.clone();
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1000) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.hgetall(task_key(&p, id));
            }
            let rows: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
            for (id, h) in chunk.iter().zip(rows) {
                out.push(if h.is_empty() {
                    None
                } else {
                    Some(TaskRecord::from_fields(queue, id, h).map_err(Error::Corrupt)?)
                });
            }
        }
        Ok(out)
    }

    /// Finds a task by id in any known queue.
    pub async fn find_task(&self, id: &str) -> Result<TaskRecord> {
        for queue in self.queues().await? {
            if let Some(t) = self.task(&queue, id).await? {
                return Ok(t);
            }
        }
        Err(Error::TaskNotFound(id.to_string()))
    }

    /// Records of up to `limit` tasks of a queue, in one state or all, oldest first within
    /// each state (pending: in placement order).
    pub async fn tasks(
        &self,
        queue: &str,
        state: Option<TaskState>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>> {
        self.again(|| self.tasks_once(queue, state, limit)).await
    }

    async fn tasks_once(
        &self,
        queue: &str,
        state: Option<TaskState>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>> {
        let p = prefix(queue);
        let mut conn = self.conn.clone();
        let states: Vec<TaskState> = state.map_or(TaskState::ALL.to_vec(), |s| vec![s]);
        let mut ids: Vec<String> = Vec::new();
        let end = isize::try_from(limit).unwrap_or(isize::MAX) - 1;
        for s in states {
            if ids.len() >= limit {
                break;
            }
            if s == TaskState::Running {
                ids.extend(self.running_ids(&p, limit - ids.len()).await?);
                continue;
            }
            ids.extend(index_ids(&mut conn, &p, s.as_str(), end).await?);
            if s == TaskState::Pending && ids.len() < limit {
                ids.extend(index_ids(&mut conn, &p, "parked", end).await?);
            }
        }
        ids.truncate(limit);
        // A task trimmed between the two reads is left out.
        Ok(self
            .task_records_once(queue, &ids)
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    /// Up to `limit` ids of running tasks, earliest started first. No index lists running
    /// tasks (a drained task would pay for its entry twice): they are the held tasks of the
    /// registered workers whose records say running, so this reads every held record.
    async fn running_ids(&self, p: &str, limit: usize) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        let workers: Vec<String> = conn.smembers(workers_key(p)).await?;
        // Every worker's held set in one round trip.
        let mut pipe = redis::pipe();
        for w in &workers {
            pipe.smembers(held_key(p, w));
        }
        let held_sets: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
        let held: Vec<&str> = held_sets
            .iter()
            .flatten()
            .filter_map(|t| HeldToken::parse(t))
            .filter(|t| !t.assigned)
            .map(|t| t.id)
            .collect();
        // Then their records, 500 to a round trip, whichever workers hold them.
        let mut running: Vec<(i64, String)> = Vec::new();
        for chunk in held.chunks(500) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("HMGET")
                    .arg(task_key(p, id))
                    .arg("state")
                    .arg("run");
            }
            let rows: Vec<(Option<String>, Option<String>)> = pipe.query_async(&mut conn).await?;
            for (id, (state, run)) in chunk.iter().zip(rows) {
                if state.as_deref() == Some("running") {
                    let started = run
                        .as_deref()
                        .and_then(Run::parse)
                        .and_then(|r| r.started_at);
                    running.push((started.unwrap_or(0), id.to_string()));
                }
            }
        }
        running.sort();
        Ok(running.into_iter().take(limit).map(|(_, id)| id).collect())
    }

    /// Task counts by state.
    pub async fn counts(&self, queue: &str) -> Result<QueueCounts> {
        self.again(|| self.counts_once(queue)).await
    }

    async fn counts_once(&self, queue: &str) -> Result<QueueCounts> {
        let p = prefix(queue);
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for s in TaskState::ALL {
            match s {
                // A count the functions keep: running tasks have no index.
                TaskState::Running => pipe.get(running_count_key(&p)),
                s if listed(s.as_str()) => pipe.llen(state_key(&p, s)),
                s => pipe.zcard(state_key(&p, s)),
            };
        }
        pipe.zcard(format!("{p}parked"));
        // Signed: a count the functions keep could only go below zero through a bug, which
        // must not make the counts unreadable.
        let c: Vec<Option<i64>> = pipe.query_async(&mut conn).await?;
        let c: Vec<u64> = c
            .into_iter()
            .map(|n| u64::try_from(n.unwrap_or(0)).unwrap_or(0))
            .collect();
        Ok(QueueCounts {
            scheduled: c[0],
            pending: c[1] + c[7],
            assigned: c[2],
            running: c[3],
            succeeded: c[4],
            failed: c[5],
            cancelled: c[6],
            parked: c[7],
        })
    }

    /// Known queue names, sorted.
    pub async fn queues(&self) -> Result<Vec<String>> {
        self.again(|| self.queues_once()).await
    }

    async fn queues_once(&self) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        let mut q: Vec<String> = conn.smembers(QUEUES_KEY).await?;
        q.sort();
        Ok(q)
    }

    /// Records of the queue's registered workers, sorted by id.
    pub async fn workers(&self, queue: &str) -> Result<Vec<WorkerRecord>> {
        self.again(|| self.workers_once(queue)).await
    }

    async fn workers_once(&self, queue: &str) -> Result<Vec<WorkerRecord>> {
        let p = prefix(queue);
        let mut conn = self.conn.clone();
        let mut ids: Vec<String> = conn.smembers(workers_key(&p)).await?;
        ids.sort();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(format!("{p}worker:{id}"));
        }
        let rows: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        rows.iter()
            .filter(|h| !h.is_empty())
            .map(WorkerRecord::from_fields)
            .collect()
    }

    /// Registers a worker, places what now fits on it, and returns its epoch: the token this
    /// process presents on every later call, so that it learns when it was declared dead. A
    /// record left under the same id by a process whose last heartbeat is older than
    /// `dead_after` is replaced (its tasks are handed back first); a live one is refused with
    /// [`Error::WorkerIdTaken`].
    pub async fn register_worker(
        &self,
        queue: &str,
        worker: &str,
        capacity: i64,
        tags: &[String],
        dead_after: Duration,
    ) -> Result<u64> {
        let p = prefix(queue);
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self
            .call(&REGISTER_WORKER, format!("{p}worker:{worker}"))
            .remembering_queue(queue)
            .arg(&p)
            .arg(worker)
            .arg(capacity)
            .arg(tags.join(","))
            .arg(ms(dead_after))
            .invoke_async(&mut conn)
            .await?;
        match reply.first().map(String::as_str) {
            Some("ok") => reply
                .get(2)
                .and_then(|e| e.parse().ok())
                .ok_or_else(|| Error::Corrupt(format!("register_worker replied {reply:?}"))),
            Some("taken") => Err(Error::WorkerIdTaken(worker.to_string())),
            _ => Err(Error::Corrupt(format!("register_worker replied {reply:?}"))),
        }
    }

    /// Records a heartbeat (server time) and reads the cancel requests for the worker's
    /// running tasks: `Some(ids)`, each told at every beat until its task leaves running
    /// (a lost reply loses nothing; acting twice is harmless). `None` when the worker is no
    /// longer registered under `epoch`: it was declared dead, its tasks went to others, and
    /// it must drop its work and register again.
    pub async fn heartbeat_worker(
        &self,
        queue: &str,
        worker: &str,
        epoch: u64,
    ) -> Result<Option<Vec<String>>> {
        let p = prefix(queue);
        let mut conn = self.conn.clone();
        let mut reply: Vec<String> = self
            .call(&HEARTBEAT_WORKER, format!("{p}worker:{worker}"))
            .arg(&p)
            .arg(worker)
            .arg(epoch)
            .invoke_async(&mut conn)
            .await?;
        match reply.first().map(String::as_str) {
            Some("1") => Ok(Some(reply.split_off(1))),
            Some("0") => Ok(None),
            _ => Err(Error::Corrupt(format!(
                "heartbeat_worker replied {reply:?}"
            ))),
        }
    }

    /// Waits up to `timeout` on the worker's inbox and pops one task id. Uses `conn`, a
    /// [`Store::blocking_connection`], so other commands are not held up.
    pub async fn wait_inbox(
        &self,
        conn: &mut MultiplexedConnection,
        queue: &str,
        worker: &str,
        timeout: Duration,
    ) -> Result<Option<String>> {
        let key = format!("{}worker:{worker}:inbox", prefix(queue));
        Ok(blpop(conn, key, timeout).await?.map(|(_, id)| id))
    }

    /// Waits up to `timeout` for a task to be scheduled on the queue (a delayed submit or a
    /// retry): the promotion loop's wake-up. Uses `conn`, a [`Store::blocking_connection`].
    /// A zero timeout returns at once.
    pub async fn wait_scheduled(
        &self,
        conn: &mut MultiplexedConnection,
        queue: &str,
        timeout: Duration,
    ) -> Result<bool> {
        let key = format!("{}wake", prefix(queue));
        Ok(blpop(conn, key, timeout).await?.is_some())
    }

    /// Marks up to `max` tasks of the worker's inbox running (`given` ids first, already
    /// popped by [`Store::wait_inbox`]) and returns them. Claims nothing when `epoch` is not
    /// the worker's current one.
    pub async fn claim_tasks(
        &self,
        queue: &str,
        worker: &str,
        epoch: u64,
        given: &[String],
        max: usize,
    ) -> Result<Vec<ClaimedTask>> {
        let p = prefix(queue);
        let mut conn = self.conn.clone();
        let rows: Vec<String> = self
            .call(&CLAIM_TASKS, format!("{p}worker:{worker}:inbox"))
            .arg(&p)
            .arg(worker)
            .arg(epoch)
            .arg(max.max(given.len()))
            .arg(given)
            .invoke_async(&mut conn)
            .await?;
        ClaimedTask::from_rows(rows)
    }

    /// For a worker that lost the reply of a call that may have started tasks for it (a
    /// claim, a finish, or the pop of its inbox): claims the tasks assigned to it that left
    /// its inbox unclaimed, and returns every task running on it as Redis sees it.
    /// Returns nothing when `epoch` is not the worker's current one.
    pub async fn resync_worker(
        &self,
        queue: &str,
        worker: &str,
        epoch: u64,
    ) -> Result<Vec<ClaimedTask>> {
        let p = prefix(queue);
        let mut conn = self.conn.clone();
        let rows: Vec<String> = self
            .call(&RESYNC_WORKER, held_key(&p, worker))
            .arg(&p)
            .arg(worker)
            .arg(epoch)
            .invoke_async(&mut conn)
            .await?;
        ClaimedTask::from_rows(rows)
    }

    /// Records a task's outcome under its lease, frees its cost, places what now fits, and
    /// claims up to `claim_max` of the worker's next tasks in the same call (none when
    /// `epoch` is not the worker's current one): [`Store::finish_tasks`] for one task.
    pub async fn finish_task(
        &self,
        queue: &str,
        worker: &str,
        epoch: u64,
        task: &ClaimedTask,
        outcome: &Outcome,
        claim_max: usize,
    ) -> Result<Finish> {
        let (recorded, claimed) = self
            .finish_tasks(queue, worker, epoch, &[(task, outcome)], claim_max)
            .await?;
        Ok(if recorded.first() == Some(&true) {
            Finish::Recorded(claimed)
        } else {
            Finish::Stale(claimed)
        })
    }

    /// Records the outcomes of many tasks of one worker in one call, then places what now
    /// fits and claims up to `claim_max` of the worker's next tasks. Outcomes are fenced by
    /// their leases; claiming also by `epoch` (a process declared dead claims nothing).
    /// Returns, per report, whether it was recorded (false: stale, the task was taken back),
    /// and the claimed tasks.
    pub async fn finish_tasks(
        &self,
        queue: &str,
        worker: &str,
        epoch: u64,
        reports: &[(&ClaimedTask, &Outcome)],
        claim_max: usize,
    ) -> Result<(Vec<bool>, Vec<ClaimedTask>)> {
        let p = prefix(queue);
        let mut conn = self.conn.clone();
        let mut call = self.call(&FINISH_TASKS, format!("{p}worker:{worker}"));
        call.arg(&p).arg(worker).arg(epoch).arg(claim_max);
        // Successes first, four arguments each; the function answers in that order.
        let (wins, rest): (Vec<usize>, Vec<usize>) =
            (0..reports.len()).partition(|&i| matches!(reports[i].1, Outcome::Succeeded(_)));
        call.arg(wins.len());
        for &i in &wins {
            let (task, outcome) = reports[i];
            let Outcome::Succeeded(result) = outcome else {
                unreachable!("partitioned above")
            };
            call.arg(&task.id)
                .arg(task.lease)
                .arg(task.cost)
                .arg(result);
        }
        for &i in &rest {
            let (task, outcome) = reports[i];
            let (state, body, delay) = outcome_args(outcome);
            call.arg(&task.id)
                .arg(task.lease)
                .arg(task.cost)
                .arg(state)
                .arg(body)
                .arg(ms(delay));
        }
        let (answer, rows): (redis::Value, Vec<String>) = call.invoke_async(&mut conn).await?;
        // Reports all recorded (the usual answer) come back as their number, others as a
        // flag per report, successes first.
        let recorded = match answer {
            redis::Value::Int(n) if usize::try_from(n) == Ok(reports.len()) => {
                vec![true; reports.len()]
            }
            other => {
                let flags: Vec<i64> =
                    redis::from_redis_value(other).map_err(redis::RedisError::from)?;
                let mut recorded = vec![false; reports.len()];
                for (i, flag) in wins.iter().chain(&rest).zip(flags) {
                    recorded[*i] = flag == 1;
                }
                recorded
            }
        };
        Ok((recorded, ClaimedTask::from_rows(rows)?))
    }

    /// Drains or removes a worker registered under `epoch`; returns how many tasks it handed
    /// back, or `None` when `epoch` is not the worker's (the process was declared dead, and
    /// its tasks already went to others): nothing is changed then.
    pub async fn leave_worker(
        &self,
        queue: &str,
        worker: &str,
        epoch: u64,
        how: Leave,
    ) -> Result<Option<u64>> {
        let p = prefix(queue);
        let mut conn = self.conn.clone();
        let back: i64 = self
            .call(&LEAVE_WORKER, format!("{p}worker:{worker}"))
            .arg(&p)
            .arg(worker)
            .arg(epoch)
            .arg(match how {
                Leave::Drain => "drain",
                Leave::Remove => "remove",
            })
            .invoke_async(&mut conn)
            .await?;
        Ok(u64::try_from(back).ok())
    }

    /// Declares dead the workers whose last heartbeat is older than `dead_after`, hands
    /// their tasks back (without using attempts) and places them; fails attempts whose lease
    /// expired; sweeps a bounded step of orphans at most once per `dead_after` for the queue.
    /// Idempotent: every worker may run it at once. Returns `(workers declared dead, tasks
    /// handed back or whose attempt ended with its lease)`.
    pub async fn recover_workers(&self, queue: &str, dead_after: Duration) -> Result<(u64, u64)> {
        let p = prefix(queue);
        let mut conn = self.conn.clone();
        let (dead, back): (u64, u64) = self
            .call(&RECOVER_WORKERS, format!("{p}heartbeats"))
            .arg(&p)
            .arg(ms(dead_after))
            .arg(100)
            .invoke_async(&mut conn)
            .await?;
        Ok((dead, back))
    }

    /// Moves scheduled tasks whose time has come to pending and places them (idempotent;
    /// every worker runs it). Returns how many it moved and how long until the next
    /// scheduled task, if any.
    pub async fn promote_tasks(&self, queue: &str) -> Result<(u64, Option<Duration>)> {
        let p = prefix(queue);
        let mut conn = self.conn.clone();
        let (moved, next_ms): (u64, i64) = self
            .call(&PROMOTE_TASKS, format!("{p}scheduled"))
            .arg(&p)
            .arg(1000)
            .invoke_async(&mut conn)
            .await?;
        let next = u64::try_from(next_ms).ok().map(Duration::from_millis);
        Ok((moved, next))
    }

    /// Cancels a task: at once if it has not started, else by asking its worker to stop it.
    pub async fn cancel_task(&self, queue: &str, id: &str) -> Result<Cancel> {
        let p = prefix(queue);
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self
            .call(&CANCEL_TASK, task_key(&p, id))
            .arg(&p)
            .arg(id)
            .invoke_async(&mut conn)
            .await?;
        match (reply.first().map(String::as_str), reply.get(1)) {
            (Some("cancelled"), _) => Ok(Cancel::Cancelled),
            (Some("requested"), Some(w)) => Ok(Cancel::Requested(w.clone())),
            (Some("final"), Some(s)) => Ok(Cancel::AlreadyFinal(s.parse()?)),
            (Some("unknown"), _) => Err(Error::TaskNotFound(id.to_string())),
            _ => Err(Error::Corrupt(format!("cancel_task replied {reply:?}"))),
        }
    }

    /// Stages chunk payloads of a job not yet submitted (chunk index -> payload JSON), in one
    /// pipelined round trip. Staged input expires after a day if the job is never submitted.
    pub async fn stage_job_input(
        &self,
        queue: &str,
        job: &str,
        chunks: &[(usize, String)],
    ) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        let key = format!("{}job:{job}:input", prefix(queue));
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for (i, payload) in chunks {
            pipe.hset(&key, *i, payload).ignore();
        }
        pipe.expire(&key, 86_400).ignore();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Drops the staged input of a job that will not be submitted.
    pub async fn discard_job_input(&self, queue: &str, job: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        conn.del::<_, ()>(format!("{}job:{job}:input", prefix(queue)))
            .await?;
        Ok(())
    }

    /// Creates the job and its `total` map tasks from the staged input, atomically, and
    /// places them.
    pub async fn submit_job(&self, h: &JobHeader, total: usize) -> Result<()> {
        let p = prefix(&h.queue);
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self
            .call(&SUBMIT_JOB, format!("{p}job:{}", h.id))
            .arg(&p)
            .arg(&h.id)
            .arg(&h.queue)
            .arg(&h.map_kind)
            .arg(&h.reduce_kind)
            .arg(total)
            .arg(h.tolerate)
            .arg(h.priority)
            .arg(h.cost)
            .arg(h.reduce_cost)
            .arg(h.tags.join(","))
            .arg(h.max_attempts)
            .arg(h.timeout_ms)
            .invoke_async(&mut conn)
            .await?;
        match reply.first().map(String::as_str) {
            // Listed only once it exists: a refused job writes nothing.
            Some("ok") => {
                // The job is stored: a directory entry that fails to be written is not
                // worth an error (the caller would submit again and be refused); the
                // queue's next submit adds it.
                if let Err(e) = Store::remember_queue(&h.queue)
                    .query_async::<()>(&mut conn)
                    .await
                {
                    tracing::warn!(queue = %h.queue, error = %e, "queue not added to the directory");
                }
                Ok(())
            }
            Some("exists") => Err(Error::Corrupt(format!("job {} already exists", h.id))),
            Some("missing") => Err(Error::Corrupt(format!(
                "job {}: {} of {total} chunks were staged",
                h.id,
                reply.get(1).map_or("?", String::as_str)
            ))),
            _ => Err(Error::Corrupt(format!("submit_job replied {reply:?}"))),
        }
    }

    /// A job's record, or `None` when the queue has no such job.
    pub async fn job(&self, queue: &str, id: &str) -> Result<Option<JobRecord>> {
        self.again(|| self.job_once(queue, id)).await
    }

    async fn job_once(&self, queue: &str, id: &str) -> Result<Option<JobRecord>> {
        let mut conn = self.conn.clone();
        let h: HashMap<String, String> = conn.hgetall(format!("{}job:{id}", prefix(queue))).await?;
        if h.is_empty() {
            return Ok(None);
        }
        JobRecord::from_fields(h).map(Some).map_err(Error::Corrupt)
    }

    /// Finds a job by id in any known queue.
    pub async fn find_job(&self, id: &str) -> Result<JobRecord> {
        for queue in self.queues().await? {
            if let Some(j) = self.job(&queue, id).await? {
                return Ok(j);
            }
        }
        Err(Error::JobNotFound(id.to_string()))
    }

    /// The states of a job's tasks (map tasks in chunk order, then the reduce task).
    pub async fn job_task_states(&self, queue: &str, id: &str) -> Result<Vec<(String, TaskState)>> {
        let p = prefix(queue);
        let mut conn = self.conn.clone();
        let ids: Vec<String> = conn.lrange(format!("{p}job:{id}:tasks"), 0, -1).await?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1000) {
            let mut pipe = redis::pipe();
            for t in chunk {
                pipe.hget(task_key(&p, t), "state");
            }
            let states: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
            for (t, s) in chunk.iter().zip(states) {
                if let Some(s) = s {
                    out.push((t.clone(), s.parse()?));
                }
            }
        }
        Ok(out)
    }

    /// Map results of chunks `from..from + count` (`None` for a chunk with no result).
    pub async fn job_results(
        &self,
        queue: &str,
        id: &str,
        from: usize,
        count: usize,
    ) -> Result<Vec<Option<String>>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let fields: Vec<usize> = (from..from + count).collect();
        Ok(redis::cmd("HMGET")
            .arg(format!("{}job:{id}:results", prefix(queue)))
            .arg(fields)
            .query_async(&mut conn)
            .await?)
    }

    /// Cancels a job and every task of it that has not ended.
    pub async fn cancel_job(&self, queue: &str, id: &str) -> Result<Cancel> {
        let p = prefix(queue);
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self
            .call(&CANCEL_JOB, format!("{p}job:{id}"))
            .arg(&p)
            .arg(id)
            .invoke_async(&mut conn)
            .await?;
        match (reply.first().map(String::as_str), reply.get(1)) {
            (Some("cancelled"), _) => Ok(Cancel::Cancelled),
            (Some("final"), Some(s)) => Ok(Cancel::JobEnded(s.clone())),
            (Some("unknown"), _) => Err(Error::JobNotFound(id.to_string())),
            _ => Err(Error::Corrupt(format!("cancel_job replied {reply:?}"))),
        }
    }

    /// Dead-letter ids of a queue (failed tasks), oldest failure first, at most `limit`.
    pub async fn dead_ids(&self, queue: &str, limit: usize) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        let end = isize::try_from(limit).unwrap_or(isize::MAX) - 1;
        Ok(conn
            .zrange(format!("{}failed", prefix(queue)), 0, end)
            .await?)
    }

    /// Sends dead letters back to pending with fresh attempts; returns how many.
    pub async fn retry_dead(&self, queue: &str, ids: &[String]) -> Result<u64> {
        self.dead_letters(&RETRY_DEAD, queue, ids).await
    }

    /// Deletes dead letters for good; returns how many.
    pub async fn purge_dead(&self, queue: &str, ids: &[String]) -> Result<u64> {
        self.dead_letters(&PURGE_DEAD, queue, ids).await
    }

    async fn dead_letters(&self, function: &Function, queue: &str, ids: &[String]) -> Result<u64> {
        let p = prefix(queue);
        let mut conn = self.conn.clone();
        let mut n = 0;
        for chunk in ids.chunks(1000) {
            let done: u64 = self
                .call(function, format!("{p}failed"))
                .arg(&p)
                .arg(chunk)
                .invoke_async(&mut conn)
                .await?;
            n += done;
        }
        Ok(n)
    }

    /// The last recoveries of the queue, newest first: `{worker, reason, heartbeat_at,
    /// declared_dead_at, tasks_requeued}`.
    pub async fn recoveries(&self, queue: &str) -> Result<Vec<serde_json::Value>> {
        let mut conn = self.conn.clone();
        let rows: Vec<String> = conn
            .lrange(format!("{}recoveries", prefix(queue)), 0, -1)
            .await?;
        rows.iter()
            .map(|r| serde_json::from_str(r).map_err(Error::from))
            .collect()
    }

    /// Checks the queue's invariants and returns every violation found (empty when sound):
    /// - each worker's assigned cost equals the cost of the tasks it holds, within capacity,
    ///   and an active worker's free-index score says capacity - assigned;
    /// - every task but a running one is in exactly one state index, the one its record
    ///   names; the running count matches the records, and each running task's worker has a
    ///   leases entry no later than its deadline;
    /// - every held task names its worker and is assigned or running under its token's lease
    ///   and cost; each assigned one is in the worker's inbox (which may also hold ids of
    ///   tasks taken back since: claims skip them).
    ///
    /// It reads every key of the queue (SCAN): for tests and audits, not for a hot path.
    pub async fn check_queue(&self, queue: &str) -> Result<Vec<String>> {
        let p = prefix(queue);
        let mut conn = self.conn.clone();
        let mut bad = Vec::new();

        // Where each task is indexed.
        let mut index_of: HashMap<String, Vec<String>> = HashMap::new();
        let indexes = [
            "scheduled",
            "pending",
            "parked",
            "assigned",
            "succeeded",
            "failed",
            "cancelled",
        ];
        for name in indexes {
            for id in index_ids(&mut conn, &p, name, -1).await? {
                index_of.entry(id).or_default().push(name.to_string());
            }
        }
        let mut task_keys: Vec<String> = Vec::new();
        {
            let mut it = conn.scan_match::<_, String>(task_key(&p, "*")).await?;
            while let Some(k) = futures_util::StreamExt::next(&mut it).await {
                task_keys.push(k?);
            }
        }
        let mut tasks: HashMap<String, TaskRecord> = HashMap::new();
        for k in task_keys {
            let h: HashMap<String, String> = conn.hgetall(&k).await?;
            let id = &k[p.len() + "task:".len()..];
            match TaskRecord::from_fields(queue, id, h) {
                Ok(t) => {
                    tasks.insert(t.id.clone(), t);
                }
                Err(e) => bad.push(format!("{k}: {e}")),
            }
        }
        for (id, t) in &tasks {
            let expect: &[&str] = match t.state {
                TaskState::Pending => &["pending", "parked"],
                TaskState::Running => &[],
                s => &[s.as_str()][..],
            };
            match index_of.get(id).map(Vec::as_slice) {
                Some([one]) if expect.contains(&one.as_str()) => {}
                None if expect.is_empty() => {}
                other => bad.push(format!("task {id} is {} but indexed in {other:?}", t.state)),
            }
        }
        let running = tasks
            .values()
            .filter(|t| t.state == TaskState::Running)
            .count();
        let count: Option<i64> = conn.get(running_count_key(&p)).await?;
        if usize::try_from(count.unwrap_or(0)).ok() != Some(running) {
            bad.push(format!(
                "running count {count:?}, but {running} records say running"
            ));
        }
        for id in index_of.keys() {
            if !tasks.contains_key(id) {
                bad.push(format!("index holds {id} which has no record"));
            }
        }

        let workers: HashSet<String> = conn.smembers(workers_key(&p)).await?;
        // Which worker's held set names each task.
        let mut held_by: HashMap<String, String> = HashMap::new();
        for w in &workers {
            let h: HashMap<String, String> = conn.hgetall(format!("{p}worker:{w}")).await?;
            let rec = match WorkerRecord::from_fields(&h) {
                Ok(r) => r,
                Err(e) => {
                    bad.push(format!("worker {w}: {e}"));
                    continue;
                }
            };
            let tokens: HashSet<String> = conn.smembers(held_key(&p, w)).await?;
            let inbox: Vec<String> = conn.lrange(format!("{p}worker:{w}:inbox"), 0, -1).await?;
            let mut cost = 0;
            for token in &tokens {
                let Some(h) = HeldToken::parse(token) else {
                    bad.push(format!("worker {w} holds a malformed token {token:?}"));
                    continue;
                };
                let id = h.id;
                held_by.insert(id.to_string(), w.clone());
                match tasks.get(id) {
                    Some(t)
                        if t.worker.as_deref() == Some(w.as_str())
                            && t.lease == h.lease
                            && t.cost == h.cost
                            && t.state
                                == if h.assigned {
                                    TaskState::Assigned
                                } else {
                                    TaskState::Running
                                } =>
                    {
                        cost += t.cost;
                        if t.state == TaskState::Assigned && !inbox.contains(&t.id) {
                            bad.push(format!("task {id} is assigned but not in the inbox"));
                        }
                    }
                    _ => bad.push(format!("worker {w} holds {token:?} which is not its task")),
                }
            }
            if cost != rec.assigned {
                bad.push(format!(
                    "worker {w} assigned={} but holds cost {cost}",
                    rec.assigned
                ));
            }
            if rec.assigned < 0 || rec.assigned > rec.capacity {
                bad.push(format!(
                    "worker {w} assigned={} capacity={}",
                    rec.assigned, rec.capacity
                ));
            }
            let score: Option<f64> = conn.zscore(format!("{p}free"), w).await?;
            let indexed_free = score.map(|s| (s / 4_294_967_296.0).floor() as i64);
            let expect = (rec.state == "active").then_some(rec.capacity - rec.assigned);
            if indexed_free != expect {
                bad.push(format!(
                    "worker {w} free index {indexed_free:?}, expected {expect:?}"
                ));
            }
        }
        for name in ["free", "cap"] {
            let members: Vec<String> = conn.zrange(format!("{p}{name}"), 0, -1).await?;
            for w in members {
                if !workers.contains(&w) {
                    bad.push(format!("{name} index has unknown worker {w}"));
                }
            }
        }
        // A worker's leases entry is no later than the deadline of any task running on it.
        let leases: HashMap<String, f64> = conn
            .zrange_withscores::<_, Vec<(String, f64)>>(format!("{p}leases"), 0, -1)
            .await?
            .into_iter()
            .collect();
        for (id, t) in &tasks {
            if let (TaskState::Running, Some(w), Some(start)) = (t.state, &t.worker, t.started_at) {
                let deadline = (start + t.timeout_ms) as f64;
                match leases.get(w) {
                    Some(&bound) if bound <= deadline => {}
                    other => bad.push(format!(
                        "task {id} runs on {w} until {deadline}, but its lease bound is {other:?}"
                    )),
                }
            }
        }
        for (id, t) in &tasks {
            if let (Some(w), TaskState::Assigned | TaskState::Running) = (&t.worker, t.state) {
                if held_by.get(id) != Some(w) {
                    bad.push(format!(
                        "task {id} is {} on {w} which does not hold it",
                        t.state
                    ));
                }
            }
        }
        Ok(bad)
    }
}
