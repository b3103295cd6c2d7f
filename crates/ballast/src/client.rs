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
        let deadline = Instant::now() + timeout;
        let topic = format!("job:{id}");
        let mut events: Option<redis::aio::PubSub> = None;
        loop {
            if events.is_none() {
                events = self.store.subscribe_events(queue).await.ok();
            }
            match self.store.job(queue, id).await {
                Ok(Some(j)) if j.state.is_terminal() => return Ok(j),
                Ok(Some(_)) => {}
                Ok(None) => return Err(Error::JobNotFound(id.to_string())),
                Err(Error::Redis(_)) => events = None,
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Err(Error::WaitTimedOut {
                    id: id.to_string(),
                    waited: timeout,
                });
            }
            let until = deadline.min(Instant::now() + WAIT_RESYNC);
            let Some(ev) = events.as_mut() else {
                sleep_until(until.min(Instant::now() + RETRY_PAUSE)).await;
                continue;
            };
            let mut dropped = false;
            let mut stream = ev.on_message();
            loop {
                match timeout_at(until, stream.next()).await {
                    Ok(Some(m))
                        if m.get_payload::<String>().ok().as_deref() == Some(topic.as_str()) =>
                    {
                        break
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        dropped = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            drop(stream);
            if dropped {
                events = None;
            }
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
        let deadline = Instant::now() + timeout;
        let mut open: HashSet<String> = ids.iter().cloned().collect();
        let mut events: Option<redis::aio::PubSub> = None;
        let mut resync_at = Instant::now();
        loop {
            if Instant::now() >= resync_at {
                // Subscribe before reading, so no finish can slip between the two.
                if events.is_none() {
                    events = self.store.subscribe_events(queue).await.ok();
                }
                match self.read_open(queue, &mut open).await {
                    Ok(()) => resync_at = Instant::now() + WAIT_RESYNC,
                    Err(Error::Redis(e)) => {
                        tracing::debug!(error = %e, "wait: redis unavailable, trying again");
                        events = None;
                        resync_at = Instant::now() + RETRY_PAUSE;
                    }
                    Err(e) => return Err(e),
                }
            }
            if open.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let id = open.iter().next().cloned().unwrap_or_default();
                return Err(Error::WaitTimedOut {
                    id,
                    waited: timeout,
                });
            }
            let until = deadline.min(resync_at);
            let Some(ev) = events.as_mut() else {
                sleep_until(until).await;
                continue;
            };
            let event = timeout_at(until, ev.on_message().next()).await;
            match event {
                // One event names every task a call settled (final), space-separated.
                Ok(Some(msg)) => {
                    let ids: String = msg.get_payload()?;
                    for id in ids.split(' ') {
                        open.remove(id);
                    }
                }
                // The subscription dropped (a restart): subscribe again and re-read.
                Ok(None) => {
                    events = None;
                    resync_at = Instant::now();
                }
                Err(_) => {}
            }
        }
        let records = self.store.task_records(queue, ids).await?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, rec) in ids.iter().zip(records) {
            out.push(rec.ok_or_else(|| Error::TaskNotFound(id.clone()))?);
        }
        Ok(out)
    }

    /// Re-reads the open tasks and drops the finished ones.
    async fn read_open(&self, queue: &str, open: &mut HashSet<String>) -> Result<()> {
        let check: Vec<String> = open.iter().cloned().collect();
        let records = self.store.task_records(queue, &check).await?;
        for (id, rec) in check.into_iter().zip(records) {
            match rec {
                Some(t) if t.state.is_terminal() => {
                    open.remove(&id);
                }
                Some(_) => {}
                None => return Err(Error::TaskNotFound(id)),
            }
        }
        Ok(())
    }
}
