//! Jobs: a large computation split into map tasks over chunks of an input and one reduce
//! task, submitted atomically, with progress, a failure policy and cancellation.
//!
//! A job is uploaded chunk by chunk ([`JobUpload`]), so an input of any size streams through
//! the client; each map task is an ordinary task (priority, cost, tags, retries, recovery)
//! carrying its chunk. The call that records the last map outcome creates the reduce task
//! in the same step; a reduce handler reads the map results through [`MapResults`].

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Invalid, Result};
use crate::handler::TaskError;
use crate::store::Store;
use crate::task::{check_name, Limits, TaskSpec};

/// Most chunks in one job.
pub const CHUNKS_MAX: usize = 100_000;
/// Chunks staged per round trip while uploading (or fewer, when they are large).
const STAGE_BATCH: usize = 64;
/// Bytes staged per round trip at most.
const STAGE_BYTES: usize = 16 << 20;
/// Map results a reducer reads per round trip.
const RESULTS_BATCH: usize = 16;

/// What a job is, apart from its chunks: built with [`JobHeader::new`] and the setters.
#[derive(Debug, Clone, PartialEq)]
pub struct JobHeader {
    /// Job id (a ULID).
    pub id: String,
    /// Queue of all its tasks.
    pub queue: String,
    /// Handler of the map tasks.
    pub map_kind: String,
    /// Handler of the reduce task.
    pub reduce_kind: String,
    /// Failed chunks tolerated before the job fails; 0 (the default) fails the job on the
    /// first chunk that fails for good, and cancels the others.
    pub tolerate: i64,
    /// Priority of its tasks, -1000..=1000.
    pub priority: i64,
    /// Cost of each map task.
    pub cost: i64,
    /// Cost of the reduce task.
    pub reduce_cost: i64,
    /// Tags a worker needs to run its tasks.
    pub tags: Vec<String>,
    /// Attempts per task.
    pub max_attempts: i64,
    /// Timeout of one attempt, ms.
    pub timeout_ms: i64,
}

impl JobHeader {
    /// A job on `queue` mapping with `map_kind` and reducing with `reduce_kind`, with the
    /// task defaults.
    pub fn new(
        queue: impl Into<String>,
        map_kind: impl Into<String>,
        reduce_kind: impl Into<String>,
    ) -> Self {
        let d = TaskSpec::new("q", "k");
        JobHeader {
            id: crate::task::new_id(),
            queue: queue.into(),
            map_kind: map_kind.into(),
            reduce_kind: reduce_kind.into(),
            tolerate: 0,
            priority: d.priority,
            cost: d.cost,
            reduce_cost: d.cost,
            tags: Vec::new(),
            max_attempts: d.max_attempts,
            timeout_ms: d.timeout_ms,
        }
    }

    /// Checks every field; the tags come back sorted.
    pub fn validate(&mut self, limits: &Limits) -> Result<(), Invalid> {
        check_name("job", &self.id)?;
        if !(0..=CHUNKS_MAX as i64).contains(&self.tolerate) {
            return Err(Invalid::new(
                "tolerate",
                format!("{} is outside 0..={CHUNKS_MAX}", self.tolerate),
            ));
        }
        // The map and reduce tasks are tasks: the task rules apply to them.
        let task = |kind: &str, cost: i64| {
            let mut t = TaskSpec::new(&self.queue, kind)
                .priority(self.priority)
                .cost(cost)
                .max_attempts(self.max_attempts);
            t.timeout_ms = self.timeout_ms;
            t.tags = self.tags.clone();
            t
        };
        let checked = task(&self.map_kind, self.cost).validate(limits)?;
        task(&self.reduce_kind, self.reduce_cost).validate(limits)?;
        self.tags = checked.tags;
        Ok(())
    }
}

/// Uploads a job's chunks in batches, then submits it atomically. Made by
/// [`Client::start_job`](crate::Client::start_job).
#[derive(Debug)]
pub struct JobUpload {
    store: Store,
    limits: Limits,
    header: JobHeader,
    staged: usize,
    batch: Vec<(usize, String)>,
    batch_bytes: usize,
}

impl JobUpload {
    pub(crate) fn new(store: Store, limits: Limits, mut header: JobHeader) -> Result<Self> {
        header.validate(&limits)?;
        Ok(JobUpload {
            store,
            limits,
            header,
            staged: 0,
            batch: Vec::new(),
            batch_bytes: 0,
        })
    }

    /// The job's id.
    pub fn id(&self) -> &str {
        &self.header.id
    }

    /// Adds the next chunk (its map task's payload). Refused when it is over the payload
    /// limit or the job has too many chunks; call [`JobUpload::abort`] then.
    pub async fn add_chunk(&mut self, payload: &Value) -> Result<()> {
        let index = self.staged + self.batch.len();
        if index >= CHUNKS_MAX {
            return Err(
                Invalid::new("chunks", format!("more than the maximum {CHUNKS_MAX}")).into(),
            );
        }
        let text = serde_json::to_string(payload)?;
        if text.len() > self.limits.max_payload_bytes {
            return Err(Invalid::new(
                "chunk",
                format!(
                    "chunk {index} is {} bytes, above the payload limit of {} bytes (use smaller chunks or pass the input by reference)",
                    text.len(),
                    self.limits.max_payload_bytes
                ),
            )
            .into());
        }
        self.batch_bytes += text.len();
        self.batch.push((index, text));
        if self.batch.len() >= STAGE_BATCH || self.batch_bytes >= STAGE_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        self.store
            .stage_job_input(&self.header.queue, &self.header.id, &self.batch)
            .await?;
        self.staged += self.batch.len();
        self.batch.clear();
        self.batch_bytes = 0;
        Ok(())
    }

    /// Submits the job: all its map tasks appear at once, or none do. Returns its id.
    pub async fn commit(mut self) -> Result<String> {
        self.flush().await?;
        if self.staged == 0 {
            return Err(Invalid::new("chunks", "a job needs at least one chunk").into());
        }
        self.store.submit_job(&self.header, self.staged).await?;
        Ok(self.header.id)
    }

    /// Gives up the upload and drops what was staged.
    pub async fn abort(self) -> Result<()> {
        self.store
            .discard_job_input(&self.header.queue, &self.header.id)
            .await
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Map tasks are running.
    Running,
    /// Every map task ended; the reduce task runs.
    Reducing,
    /// The reduce task succeeded; the result is the job's.
    Succeeded,
    /// Too many chunks failed, or the reduce failed.
    Failed,
    /// Cancelled on request.
    Cancelled,
}

impl JobState {
    /// Whether the job is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A job as Redis records it. Times are ms on the Redis clock.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRecord {
    /// Job id.
    pub id: String,
    /// Queue.
    pub queue: String,
    /// State.
    pub state: JobState,
    /// Map tasks (chunks).
    pub total: i64,
    /// Chunks whose map task succeeded.
    pub done: i64,
    /// Chunks whose map task failed for good (or was cancelled).
    pub failed: i64,
    /// Failed chunks tolerated.
    pub tolerate: i64,
    /// The first chunk that failed, if any.
    pub first_failed_chunk: Option<i64>,
    /// Map handler.
    pub map_kind: String,
    /// Reduce handler.
    pub reduce_kind: String,
    /// The reduce task's id, once made.
    pub reduce_task: Option<String>,
    /// When it was submitted.
    pub submitted_at: i64,
    /// When it ended.
    pub finished_at: Option<i64>,
    /// The reduce task's result.
    pub result: Option<Value>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
}

impl JobRecord {
    pub(crate) fn from_fields(mut h: HashMap<String, String>) -> Result<Self, String> {
        let int = |h: &HashMap<String, String>, f: &str| -> Result<i64, String> {
            h.get(f)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("job field {f} missing or not an integer"))
        };
        let state = match h.get("state").map(String::as_str) {
            Some("running") => JobState::Running,
            Some("reducing") => JobState::Reducing,
            Some("succeeded") => JobState::Succeeded,
            Some("failed") => JobState::Failed,
            Some("cancelled") => JobState::Cancelled,
            other => return Err(format!("job state {other:?}")),
        };
        Ok(JobRecord {
            state,
            total: int(&h, "total")?,
            done: int(&h, "done")?,
            failed: int(&h, "failed")?,
            tolerate: int(&h, "tolerate")?,
            submitted_at: int(&h, "submitted_at")?,
            first_failed_chunk: h.get("first_failed_chunk").and_then(|v| v.parse().ok()),
            finished_at: h.get("finished_at").and_then(|v| v.parse().ok()),
            result: h
                .remove("result")
                .map(|r| serde_json::from_str(&r).unwrap_or(Value::String(r))),
            error: h.remove("error"),
            reduce_task: h.remove("reduce_task"),
            map_kind: h.remove("map_kind").unwrap_or_default(),
            reduce_kind: h.remove("reduce_kind").unwrap_or_default(),
            queue: h.remove("queue").unwrap_or_default(),
            id: h.remove("id").ok_or("job field id missing")?,
        })
    }
}

/// A job's map results as its reduce handler reads them: in chunk order, a batch at a time,
/// so a reducer holds only what it keeps. Chunks that failed (when tolerated) are skipped.
#[derive(Debug)]
pub struct MapResults {
    store: Store,
    queue: String,
    job: String,
    chunks: usize,
    next_chunk: usize,
    buffer: VecDeque<(usize, Value)>,
}

/// The payload of a reduce task.
#[derive(Debug, Deserialize)]
pub(crate) struct ReducePayload {
    pub(crate) job: String,
    pub(crate) chunks: usize,
}

impl MapResults {
    pub(crate) fn new(store: Store, queue: String, p: ReducePayload) -> Self {
        MapResults {
            store,
            queue,
            job: p.job,
            chunks: p.chunks,
            next_chunk: 0,
            buffer: VecDeque::new(),
        }
    }

    /// The job's id.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// How many chunks the job has.
    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// The next map result and its chunk index, or `None` after the last. A Redis error is
    /// a retryable failure of the reduce.
    pub async fn next(&mut self) -> Result<Option<(usize, Value)>, TaskError> {
        while self.buffer.is_empty() && self.next_chunk < self.chunks {
            let n = RESULTS_BATCH.min(self.chunks - self.next_chunk);
            let got = self
                .store
                .job_results(&self.queue, &self.job, self.next_chunk, n)
                .await
                .map_err(|e| TaskError::retry(format!("reading map results: {e}")))?;
            for (i, r) in got.into_iter().enumerate() {
                if let Some(text) = r {
                    let v = serde_json::from_str(&text).map_err(|e| {
                        TaskError::permanent(format!("map result {}: {e}", self.next_chunk + i))
                    })?;
                    self.buffer.push_back((self.next_chunk + i, v));
                }
            }
            self.next_chunk += n;
        }
        Ok(self.buffer.pop_front())
    }
}
