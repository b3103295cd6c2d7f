//! The task model: what a producer submits ([`TaskSpec`]), the rules it must meet, and the
//! record Redis keeps of it ([`TaskRecord`]).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Invalid;

/// Lowest task priority. Higher priorities run first.
pub const PRIORITY_MIN: i64 = -1000;
/// Highest task priority.
pub const PRIORITY_MAX: i64 = 1000;
/// Largest task cost and worker capacity, in units. Keeps the Redis index scores exact.
pub const CAPACITY_MAX: i64 = 1_000_000;
/// Most attempts a task may be given.
pub const MAX_ATTEMPTS_MAX: i64 = 1000;
/// Longest task timeout: seven days, in milliseconds.
pub const TIMEOUT_MAX_MS: i64 = 7 * 24 * 3600 * 1000;
/// Longest delay before a task may run: one year, in milliseconds.
pub const DELAY_MAX_MS: i64 = 365 * 24 * 3600 * 1000;
/// Most tags on a task or a worker.
pub const TAGS_MAX: usize = 16;
/// Longest queue, kind, tag or id name. Names are `[A-Za-z0-9_.-]{1,64}`.
pub const NAME_MAX: usize = 64;
/// Default payload limit: 1 MiB of JSON text.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// Limits a [`Client`](crate::Client) enforces before it writes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload, in bytes of JSON text. Default 1 MiB.
    pub max_payload_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

/// Checks a queue, kind, tag, worker or task name against `[A-Za-z0-9_.-]{1,64}`.
///
/// The rule keeps names safe inside Redis keys: no `{` or `}` that would break the hash tag,
/// no `:` that would blur the key layout, no spaces or commas (tags are comma-joined).
pub fn check_name(field: &'static str, name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(Invalid::new(
            field,
            format!("length {} is outside 1..={NAME_MAX}", name.len()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(Invalid::new(
            field,
            format!("{c:?} is not allowed; names match [A-Za-z0-9_.-]{{1,{NAME_MAX}}}"),
        ));
    }
    Ok(())
}

fn check_range(field: &'static str, value: i64, min: i64, max: i64) -> Result<(), Invalid> {
    if value < min {
        return Err(Invalid::new(
            field,
            format!("{value} is below the minimum {min}"),
        ));
    }
    if value > max {
        return Err(Invalid::new(
            field,
            format!("{value} is above the maximum {max}"),
        ));
    }
    Ok(())
}

/// Checks a tag list (task requirements or worker tags) and returns it sorted, deduplicated.
pub fn check_tags(field: &'static str, tags: &[String]) -> Result<Vec<String>, Invalid> {
    let mut out: Vec<String> = tags.to_vec();
    out.sort();
    out.dedup();
    if out.len() > TAGS_MAX {
        return Err(Invalid::new(
            field,
            format!("{} tags is above the maximum {TAGS_MAX}", out.len()),
        ));
    }
    for t in &out {
        check_name(field, t)?;
    }
    Ok(out)
}

/// A task to submit: built with [`TaskSpec::new`] and the setters, checked by
/// [`TaskSpec::validate`] before the client writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    /// Unique id, sortable by time (a ULID), made by [`TaskSpec::new`].
    pub id: String,
    /// Queue the task goes to.
    pub queue: String,
    /// Handler name the worker runs it with.
    pub kind: String,
    /// Input for the handler.
    pub payload: Value,
    /// -1000..=1000, default 0; higher runs first, FIFO within a priority.
    pub priority: i64,
    /// Units of worker capacity the task holds while it runs, 1..=1,000,000; default 1.
    pub cost: i64,
    /// Tags a worker must carry to run it.
    pub tags: Vec<String>,
    /// Attempts before the task is given up, 1..=1000; default 3.
    pub max_attempts: i64,
    /// How long one attempt may run, in milliseconds, 1..=7 days; default 5 minutes.
    pub timeout_ms: i64,
    /// Milliseconds (Redis clock) after submission before the task may run, 0..=1 year;
    /// default 0.
    pub delay_ms: i64,
    /// Not before this time, milliseconds since the epoch; 0 (the default) for none.
    pub not_before_ms: i64,
}

impl TaskSpec {
    /// A task of `kind` on `queue` with a null payload and the defaults.
    pub fn new(queue: impl Into<String>, kind: impl Into<String>) -> Self {
        TaskSpec {
            id: new_id(),
            queue: queue.into(),
            kind: kind.into(),
            payload: Value::Null,
            priority: 0,
            cost: 1,
            tags: Vec::new(),
            max_attempts: 3,
            timeout_ms: 300_000,
            delay_ms: 0,
            not_before_ms: 0,
        }
    }

    /// Sets the payload.
    pub fn payload(mut self, payload: Value) -> Self {
        self.payload = payload;
        self
    }

    /// Sets the payload from JSON text, refusing text that is not JSON.
    pub fn payload_json(self, text: &str) -> Result<Self, Invalid> {
        let value = serde_json::from_str(text)
            .map_err(|e| Invalid::new("payload", format!("not valid JSON ({e})")))?;
        Ok(self.payload(value))
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: i64) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the cost in capacity units.
    pub fn cost(mut self, cost: i64) -> Self {
        self.cost = cost;
        self
    }

    /// Adds a required worker tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Sets the number of attempts.
    pub fn max_attempts(mut self, n: i64) -> Self {
        self.max_attempts = n;
        self
    }

    /// Sets the timeout of one attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// Sets a delay before the task may run, counted on the Redis clock from submission.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// The task may not run before this time.
    pub fn not_before(mut self, at: std::time::SystemTime) -> Self {
        self.not_before_ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self
    }

    /// Checks every field against its rule and returns the payload as JSON text and the
    /// tags sorted. Nothing is written to Redis before this passes.
    pub fn validate(&self, limits: &Limits) -> Result<Checked, Invalid> {
        check_name("queue", &self.queue)?;
        check_name("kind", &self.kind)?;
        check_name("id", &self.id)?;
        check_range("priority", self.priority, PRIORITY_MIN, PRIORITY_MAX)?;
        check_range("cost", self.cost, 1, CAPACITY_MAX)?;
        check_range("max_attempts", self.max_attempts, 1, MAX_ATTEMPTS_MAX)?;
        check_range("timeout_ms", self.timeout_ms, 1, TIMEOUT_MAX_MS)?;
        check_range("delay_ms", self.delay_ms, 0, DELAY_MAX_MS)?;
        check_range("not_before_ms", self.not_before_ms, 0, i64::MAX)?;
        let tags = check_tags("tags", &self.tags)?;
        let payload = serde_json::to_string(&self.payload)
            .map_err(|e| Invalid::new("payload", e.to_string()))?;
        if payload.len() > limits.max_payload_bytes {
            return Err(Invalid::new(
                "payload",
                format!(
                    "{} bytes is above the limit of {} bytes",
                    payload.len(),
                    limits.max_payload_bytes
                ),
            ));
        }
        Ok(Checked { payload, tags })
    }
}

/// The parts of a [`TaskSpec`] that validation normalises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The payload as JSON text.
    pub payload: String,
    /// Tags sorted and deduplicated.
    pub tags: Vec<String>,
}

/// A new task id: a ULID, unique and sortable by creation time. Ids made in one process are
/// strictly increasing even within one millisecond.
pub fn new_id() -> String {
    static GEN: OnceLock<Mutex<ulid::Generator>> = OnceLock::new();
    let mut g = crate::lock(GEN.get_or_init(|| Mutex::new(ulid::Generator::new())));
    // The generator only fails when 2^80 ids were made in one millisecond.
    g.generate()
        .unwrap_or_else(|_| ulid::Ulid::new())
        .to_string()
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for its time: a delayed submit, or a retry after backoff.
    Scheduled,
    /// Waiting for a worker with room (or, parked, for a worker that could ever run it).
    Pending,
    /// Placed on a worker, in its inbox, not started yet.
    Assigned,
    /// Running on its worker.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Given up on (a permanent error, or no attempts left): a dead letter.
    Failed,
    /// Cancelled on request.
    Cancelled,
}

impl TaskState {
    /// Every state, in life-cycle order.
    pub const ALL: [TaskState; 7] = [
        TaskState::Scheduled,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    /// The lowercase name, as stored in Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Scheduled => "scheduled",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Whether the task is done for good.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        TaskState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                Invalid::new(
                    "state",
                    format!("{s:?} is not one of scheduled, pending, assigned, running, succeeded, failed, cancelled"),
                )
            })
    }
}

/// A task as Redis records it. Times are milliseconds since the epoch on the Redis clock.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRecord {
    /// Task id.
    pub id: String,
    /// Queue.
    pub queue: String,
    /// Handler name.
    pub kind: String,
    /// Life-cycle state.
    pub state: TaskState,
    /// Priority.
    pub priority: i64,
    /// Cost in capacity units.
    pub cost: i64,
    /// Required worker tags.
    pub tags: Vec<String>,
    /// Worker the task is assigned to, runs on, or ran on last.
    pub worker: Option<String>,
    /// Attempts used so far (a run cut short by a crash or a drain gives its attempt back).
    pub attempts: i64,
    /// Times a worker started the task, every run counted.
    pub runs: i64,
    /// Times the task was handed back to pending (a worker died, drained or was replaced).
    pub requeues: i64,
    /// Attempts allowed.
    pub max_attempts: i64,
    /// Timeout of one attempt, in milliseconds.
    pub timeout_ms: i64,
    /// The current assignment's fencing token.
    pub lease: i64,
    /// When the task was submitted.
    pub submitted_at: i64,
    /// When the current attempt was placed on a worker.
    pub assigned_at: Option<i64>,
    /// When the current (or last) attempt started.
    pub started_at: Option<i64>,
    /// When the task finished.
    pub finished_at: Option<i64>,
    /// When a scheduled task may run (a delayed submit, or the next retry).
    pub run_at: Option<i64>,
    /// The handler's input.
    pub payload: Value,
    /// The handler's result, once succeeded.
    pub result: Option<Value>,
    /// The last attempt's error (a failed task's, or the one a retry follows).
    pub error: Option<String>,
    /// One entry per attempt that ended: `attempt, worker, started_at, finished_at, outcome`
    /// (`succeeded`, `retry`, `failed` or `lost`), and `error`. The last 50 are kept.
    pub history: Vec<Value>,
}

impl TaskRecord {
    /// Reads the record of task `id` of `queue` from the fields of its Redis hash
    /// (`HGETALL`). The hash leaves out what its key tells (id and queue) and fields still
    /// zero or empty (priority, tags, and the run of a task never placed).
    pub fn from_fields(
        queue: &str,
        id: &str,
        mut h: HashMap<String, String>,
    ) -> Result<Self, String> {
        fn int(h: &HashMap<String, String>, f: &str) -> Result<i64, String> {
            h.get(f)
                .ok_or_else(|| format!("task field {f} missing"))?
                .parse()
                .map_err(|_| format!("task field {f} is not an integer"))
        }
        fn opt_int(h: &HashMap<String, String>, f: &str) -> Option<i64> {
            h.get(f).and_then(|v| v.parse().ok())
        }
        // JSON text as a value; text that is not JSON as a string.
        let json =
            |s: &str| serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()));
        let spec_text = h.remove("spec").ok_or("task field spec missing")?;
        let spec = crate::store::Spec::parse(&spec_text).ok_or("task field spec is malformed")?;
        let run_text = h.remove("run");
        let run = match &run_text {
            Some(r) => crate::store::Run::parse(r).ok_or("task field run is malformed")?,
            None => crate::store::Run::default(),
        };
        let mut record = TaskRecord {
            state: h
                .get("state")
                .ok_or("task field state missing")?
                .parse()
                .map_err(|e: Invalid| e.to_string())?,
            priority: opt_int(&h, "priority").unwrap_or(0),
            cost: int(&h, "cost")?,
            attempts: run.attempts,
            runs: run.runs,
            requeues: opt_int(&h, "requeues").unwrap_or(0),
            max_attempts: spec.max_attempts,
            timeout_ms: spec.timeout_ms,
            lease: run.lease,
            submitted_at: int(&h, "submitted_at")?,
            // A task placed and started in one step is stored without it: its start is its
            // placement.
            assigned_at: opt_int(&h, "assigned_at").or(run.started_at),
            started_at: run.started_at,
            finished_at: opt_int(&h, "finished_at"),
            run_at: opt_int(&h, "run_at"),
            history: h
                .remove("history")
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_default(),
            tags: h
                .get("tags")
                .map(|t| crate::store::split_tags(t))
                .unwrap_or_default(),
            worker: Some(run.worker.to_string()).filter(|w| !w.is_empty()),
            payload: json(spec.payload),
            result: h.remove("result").as_deref().map(json),
            error: h.remove("error"),
            id: id.to_string(),
            queue: queue.to_string(),
            kind: spec.kind.to_string(),
        };
        // Redis keeps the attempts that did not succeed; the successful one is the record.
        if record.state == TaskState::Succeeded {
            record.history.push(serde_json::json!({
                "attempt": record.attempts,
                "worker": record.worker,
                "started_at": record.started_at,
                "finished_at": record.finished_at,
                "outcome": "succeeded",
            }));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        assert!(check_name("queue", "jobs.v2-eu_1").is_ok());
        for bad in ["", "a}b", "a b", "a:b", "a,b", "é", &"x".repeat(65)] {
            let e = check_name("queue", bad).expect_err(bad);
            assert_eq!(e.field, "queue");
        }
        assert!(check_name("queue", &"x".repeat(64)).is_ok());
    }

    #[test]
    fn numbers_out_of_range_name_the_field_and_limit() {
        let l = Limits::default();
        let e = TaskSpec::new("q", "k")
            .cost(0)
            .validate(&l)
            .expect_err("cost 0");
        assert_eq!(e.to_string(), "invalid cost: 0 is below the minimum 1");
        let e = TaskSpec::new("q", "k")
            .priority(1001)
            .validate(&l)
            .expect_err("prio");
        assert_eq!(
            e.to_string(),
            "invalid priority: 1001 is above the maximum 1000"
        );
        let e = TaskSpec::new("q", "k")
            .max_attempts(0)
            .validate(&l)
            .expect_err("att");
        assert_eq!(e.field, "max_attempts");
        let mut spec = TaskSpec::new("q", "k");
        spec.timeout_ms = 0;
        let e = spec.validate(&l).expect_err("timeout");
        assert_eq!(e.field, "timeout_ms");
    }

    #[test]
    fn payload_limit_and_json() {
        let l = Limits {
            max_payload_bytes: 10,
        };
        let e = TaskSpec::new("q", "k")
            .payload(Value::String("x".repeat(20)))
            .validate(&l)
            .expect_err("big");
        assert_eq!(
            e.to_string(),
            "invalid payload: 22 bytes is above the limit of 10 bytes"
        );
        assert!(TaskSpec::new("q", "k").payload_json("{nope").is_err());
    }

    #[test]
    fn tags_are_sorted_deduplicated_and_checked() {
        let spec = TaskSpec::new("q", "k").tag("ssd").tag("gpu").tag("ssd");
        let c = spec.validate(&Limits::default()).expect("valid");
        assert_eq!(c.tags, vec!["gpu", "ssd"]);
        assert!(TaskSpec::new("q", "k")
            .tag("a,b")
            .validate(&Limits::default())
            .is_err());
    }

    #[test]
    fn ids_are_unique_and_increasing() {
        let ids: Vec<String> = (0..1000).map(|_| new_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_spec_reads_back_what_it_was_made_of() {
        use crate::store::Spec;
        // The payload may hold newlines and spaces; only the head is split.
        let task = TaskSpec::new("q", "resize.v2")
            .max_attempts(7)
            .timeout(std::time::Duration::from_millis(1500));
        let text = Spec::text(&task, "{\"a\": \"x\ny z\"}");
        let s = Spec::parse(&text).expect("spec");
        assert_eq!(
            (s.max_attempts, s.timeout_ms, s.kind, s.role, s.payload),
            (7, 1500, "resize.v2", "", "{\"a\": \"x\ny z\"}")
        );
        // A reduce task's head carries its role (made in Redis, by lib.lua's spec_of()).
        let s = Spec::parse("3 60000 sum reduce\n{}").expect("reduce spec");
        assert_eq!(
            (s.max_attempts, s.timeout_ms, s.kind, s.role, s.payload),
            (3, 60000, "sum", "reduce", "{}")
        );
        for bad in [
            "3 60000 sum",
            "x 60000 sum\n{}",
            "3 sum\n{}",
            "3 60000\n{}",
            "3 60000 sum reduce more\n{}",
        ] {
            assert!(Spec::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_run_reads_back_its_parts() {
        use crate::store::Run;
        // The worker is the rest of the text, whatever it holds.
        let r = Run::parse("12 2 3 1700000000000 host-1 a").expect("run");
        assert_eq!(
            (r.lease, r.attempts, r.runs, r.started_at, r.worker),
            (12, 2, 3, Some(1_700_000_000_000), "host-1 a")
        );
        // Placed but not started; then waiting again, with no worker.
        let r = Run::parse("4 1 1 - w").expect("assigned run");
        assert_eq!((r.started_at, r.worker), (None, "w"));
        let r = Run::parse("4 1 1 - ").expect("waiting run");
        assert_eq!((r.lease, r.started_at, r.worker), (4, None, ""));
        for bad in ["", "4 1 1 -", "4 1 x - w", "4 1 1 soon w", "-1 1 1 - w x"] {
            assert!(Run::parse(bad).is_none(), "{bad:?}");
        }
    }
}
