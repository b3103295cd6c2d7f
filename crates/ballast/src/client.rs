//! The producer's side: submit tasks, read their records, wait for their results.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::error::{Error, Result};
use crate::job::{JobHeader, JobRecord, JobUpload};
use crate::store::{Placement, Store};
use crate::task::{Limits, TaskRecord, TaskSpec};

/// How often a wait re-reads the records it waits on, in case a finish event was missed
/// (pub/sub delivers at most once, and not across a reconnect).
const WAIT_RESYNC: Duration = Duration::from_secs(2);

/// What an event on the queue's channel means to a wait.
enum Heard {
    /// Nothing it waits for.
    Nothing,
    /// The wait is over.
    Done,
    /// Something it waits for changed: read it again.
    ReadAgain,
}
/// Pause before a wait tries Redis again after an error.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Submits tasks and reads their outcomes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    store: Store,
    limits: Limits,
}

impl Client {
    /// Connects to Redis at `url` with the default [`Limits`].
    pub async fn connect(url: &str) -> Result<Client> {
        Ok(Client::new(Store::connect(url).await?))
    }

    /// A client on an existing store handle.
    pub fn new(store: Store) -> Client {
        Client {
            store,
            limits: Limits::default(),
        }
    }

    /// Replaces the limits checked before submitting.
    pub fn with_limits(mut self, limits: Limits) -> Client {
        self.limits = limits;
        self
    }

    /// The underlying store, for reads the client does not wrap.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Validates and submits one task; says where it went.
    pub async fn submit(&self, spec: &TaskSpec) -> Result<Placement> {
        let checked = spec.validate(&self.limits)?;
        self.store.submit_task(spec, &checked).await
    }

    /// Validates every task, then submits them all: one function call per run of tasks of one
    /// queue (1,000 at most), placed in one pass. If any task is invalid, none is written.
    pub async fn submit_many(&self, specs: &[TaskSpec]) -> Result<Vec<Placement>> {
        let checked = specs
            .iter()
            .enumerate()
            .map(|(index, s)| {
                s.validate(&self.limits)
                    .map_err(|source| Error::InvalidInBatch { index, source })
            })
            .collect::<Result<Vec<_>>>()?;
        let pairs: Vec<_> = specs.iter().zip(checked.iter()).collect();
        self.store.submit_tasks(&pairs).await
    }

    /// Starts a job: validates its header; add chunks to the returned upload, then commit.
    pub fn start_job(&self, header: JobHeader) -> Result<JobUpload> {
        JobUpload::new(self.store.clone(), self.limits, header)
    }

    /// Reads a job's record by id, from whichever queue holds it.
    pub async fn job(&self, id: &str) -> Result<JobRecord> {
        self.store.find_job(id).await
    }

    /// Waits until the job has ended and returns its record, or [`Error::WaitTimedOut`].
    /// Blocks on the queue's events (a job's end is published as `job:<id>`), re-reading
    /// every couple of seconds and riding out Redis restarts like [`Client::wait_all`].
    pub async fn wait_job(&self, queue: &str, id: &str, timeout: Duration) -> Result<JobRecord> {
        let mut job = JobWait {
            id,
            topic: format!("job:{id}"),
            record: None,
        };
        let ended = self
            .wait_on_events(queue, Instant::now() + timeout, &mut job)
            .await?;
        match job.record {
            Some(j) if ended => Ok(j),
            _ => Err(Error::WaitTimedOut {
                id: id.to_string(),
                waited: timeout,
            }),
        }
    }

    /// Reads a task's record by id, from whichever queue holds it.
    pub async fn task(&self, id: &str) -> Result<TaskRecord> {
        self.store.find_task(id).await
    }

    /// Waits until the task is finished (succeeded, failed or cancelled) and returns its
    /// record, or [`Error::WaitTimedOut`] after `timeout`.
    pub async fn wait(&self, queue: &str, id: &str, timeout: Duration) -> Result<TaskRecord> {
        let mut all = self.wait_all(queue, &[id.to_string()], timeout).await?;
        all.pop().ok_or_else(|| Error::TaskNotFound(id.to_string()))
    }

    /// Waits until every task in `ids` is finished; returns their records in `ids` order.
    /// Blocks on the queue's finish events rather than polling, re-reads everything every
    /// couple of seconds in case an event was missed, and rides out a Redis restart (it
    /// subscribes again and goes on until the deadline).
    pub async fn wait_all(
        &self,
        queue: &str,
        ids: &[String],
        timeout: Duration,
    ) -> Result<Vec<TaskRecord>> {
        let mut open = OpenTasks(ids.iter().cloned().collect());
        let finished = self
            .wait_on_events(queue, Instant::now() + timeout, &mut open)
            .await?;
        if !finished {
            return Err(Error::WaitTimedOut {
                id: open.0.iter().next().cloned().unwrap_or_default(),
                waited: timeout,
            });
        }
        let records = self.store.task_records(queue, ids).await?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, rec) in ids.iter().zip(records) {
            out.push(rec.ok_or_else(|| Error::TaskNotFound(id.clone()))?);
        }
        Ok(out)
    }

    /// The skeleton of the waits: reads what is waited for (`Waited::read`, which says
    /// whether the wait is over) and blocks on the queue's events between reads
    /// (`Waited::heard` says what an event means), rather than polling. It subscribes
    /// before reading, so no event slips between the two; reads again every WAIT_RESYNC in
    /// case an event was missed, and once more at the deadline; without a subscription it
    /// tries to subscribe again every RETRY_PAUSE, reading at the usual pace meanwhile; and
    /// it rides out a Redis restart. Returns whether the wait ended before `deadline`.
    async fn wait_on_events(
        &self,
        queue: &str,
        deadline: Instant,
        waited: &mut impl Waited,
    ) -> Result<bool> {
        let mut events: Option<redis::aio::PubSub> = None;
        let (mut read_at, mut subscribe_at) = (Instant::now(), Instant::now());
        // When the last read ended (the first pass always reads): one that ended before the
        // deadline is repeated at it, since the event that would have ended the wait may
        // have been lost.
        let mut last_read = Instant::now();
        loop {
            // Subscribed before reading, so no event slips between the two; after a
            // subscription is made again, read again (events went by meanwhile).
            if events.is_none() && Instant::now() >= subscribe_at {
                match self.store.subscribe_events(queue).await {
                    Ok(ev) => {
                        events = Some(ev);
                        read_at = Instant::now();
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "wait: cannot subscribe, trying again");
                        subscribe_at = Instant::now() + RETRY_PAUSE;
                    }
                }
            }
            if Instant::now() >= read_at {
                match waited.read(&self.store, queue).await {
                    Ok(true) => return Ok(true),
                    Ok(false) => read_at = Instant::now() + WAIT_RESYNC,
                    Err(Error::Redis(e)) => {
                        tracing::debug!(error = %e, "wait: redis unavailable, trying again");
                        events = None;
                        read_at = Instant::now() + RETRY_PAUSE;
                    }
                    Err(e) => return Err(e),
                }
                last_read = Instant::now();
            }
            if Instant::now() >= deadline {
                if last_read < deadline {
                    return match waited.read(&self.store, queue).await {
                        Err(Error::Redis(_)) => Ok(false),
                        other => other,
                    };
                }
                return Ok(false);
            }
            let mut until = deadline.min(read_at);
            let Some(ev) = events.as_mut() else {
                until = until.min(subscribe_at);
                sleep_until(until).await;
                continue;
            };
            let event = match timeout_at(until, ev.on_message().next()).await {
                Ok(Some(msg)) => Some(msg.get_payload::<String>()?),
                Ok(None) => None,
                Err(_) => continue,
            };
            match event {
                Some(event) => match waited.heard(&event) {
                    Heard::Done => return Ok(true),
                    Heard::ReadAgain => read_at = Instant::now(),
                    Heard::Nothing => {}
                },
                // The subscription dropped (a restart): subscribe again, then read again.
                None => {
                    events = None;
                    subscribe_at = Instant::now();
                }
            }
        }
    }
}

/// What a wait waits for: read from Redis, and told by the queue's events.
trait Waited {
    /// Reads the state from Redis; whether the wait is over.
    async fn read(&mut self, store: &Store, queue: &str) -> Result<bool>;
    /// What an event (its payload) means to this wait.
    fn heard(&mut self, event: &str) -> Heard;
}

/// Tasks not yet finished, by id.
struct OpenTasks(HashSet<String>);

impl Waited for OpenTasks {
    /// Re-reads the open tasks and drops the finished ones.
    async fn read(&mut self, store: &Store, queue: &str) -> Result<bool> {
        let check: Vec<String> = self.0.iter().cloned().collect();
        let records = store.task_records(queue, &check).await?;
        for (id, rec) in check.into_iter().zip(records) {
            match rec {
                Some(t) if t.state.is_terminal() => {
                    self.0.remove(&id);
                }
                Some(_) => {}
                None => return Err(Error::TaskNotFound(id)),
            }
        }
        Ok(self.0.is_empty())
    }

    /// One event names every task a call settled (final), space-separated.
    fn heard(&mut self, event: &str) -> Heard {
        for id in event.split(' ') {
            self.0.remove(id);
        }
        if self.0.is_empty() {
            Heard::Done
        } else {
            Heard::Nothing
        }
    }
}

/// A job, and its record as last read.
struct JobWait<'a> {
    id: &'a str,
    /// The event its end is published as.
    topic: String,
    record: Option<JobRecord>,
}

impl Waited for JobWait<'_> {
    async fn read(&mut self, store: &Store, queue: &str) -> Result<bool> {
        let j = store
            .job(queue, self.id)
            .await?
            .ok_or_else(|| Error::JobNotFound(self.id.to_string()))?;
        let ended = j.state.is_terminal();
        self.record = Some(j);
        Ok(ended)
    }

    fn heard(&mut self, event: &str) -> Heard {
        if event == self.topic {
            Heard::ReadAgain
        } else {
            Heard::Nothing
        }
    }
}
