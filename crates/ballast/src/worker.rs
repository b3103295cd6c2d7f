//! The worker runtime: register, heartbeat, run handlers within capacity, report outcomes,
//! and leave cleanly on shutdown.
//!
//! Redis decides what runs here: placement never assigns more cost than the capacity the
//! worker registered with, so the worker runs whatever reaches its inbox. A local semaphore
//! of `capacity` units backs that up (a task waits for its units before it starts).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::AbortHandle;

use crate::error::{Error, Invalid, Result};
use crate::handler::{Handlers, TaskContext, TaskError};
use crate::heartbeat::Heartbeat;
use crate::job::MapResults;
use crate::promotion::Promotion;
use crate::recovery::Recovery;
use crate::store::{ClaimedTask, Leave, Outcome, Store};
use crate::task::{check_name, check_tags, CAPACITY_MAX};

/// Longest a blocking inbox wait lasts before it is renewed.
const INBOX_WAIT: Duration = Duration::from_secs(5);
/// Longest pause between retries of a Redis call the worker cannot give up on.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the last try of such a call may take once the worker has stopped waiting for
/// Redis (see [`Runner::retry`]).
const LAST_TRY: Duration = Duration::from_secs(2);

/// Timing of a worker. Units are given in each field's name or doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerConfig {
    /// How often the worker tells Redis it is alive. Default 1 s.
    pub heartbeat_interval: Duration,
    /// A worker whose last heartbeat is older than this is dead: its tasks go to the living
    /// and a new process may take over its id. Default 5 s; must be at least twice the
    /// heartbeat interval.
    pub dead_after: Duration,
    /// How often this worker runs the recovery step for its queue. Default 1 s.
    pub recovery_period: Duration,
    /// Longest wait between promotion steps (scheduled tasks whose time has come go to
    /// pending). The step runs when the next scheduled task is due, and at once when a task
    /// is scheduled (a blocking wait, not a poll), so this only bounds an idle loop. Default
    /// 5 s.
    pub promote_period: Duration,
    /// Backoff before the second attempt; each later one doubles it. Default 1 s.
    pub retry_base: Duration,
    /// Longest backoff. Default 10 min.
    pub retry_max: Duration,
    /// On shutdown, how long running tasks may take to finish; what is still running then
    /// is stopped and handed back to other workers without using an attempt. Default 30 s.
    pub grace_period: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            heartbeat_interval: Duration::from_secs(1),
            dead_after: Duration::from_secs(5),
            recovery_period: Duration::from_secs(1),
            promote_period: Duration::from_secs(5),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(600),
            grace_period: Duration::from_secs(30),
        }
    }
}

impl WorkerConfig {
    /// The backoff before attempt `attempt + 1`: `retry_base * 2^(attempt - 1)`, at most
    /// `retry_max`, plus up to 25% jitter so that tasks failing together do not retry
    /// together. The jitter is below a doubling, so gaps grow from one attempt to the next.
    pub fn backoff(&self, attempt: i64) -> Duration {
        let exp = u32::try_from(attempt.clamp(1, 31) - 1).unwrap_or(0);
        let base = self.retry_base.saturating_mul(1 << exp).min(self.retry_max);
        base.mul_f64(1.0 + fastrand::f64() * 0.25)
    }

    /// Checks that the timings make sense together.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.heartbeat_interval.is_zero() {
            return Err(Invalid::new("heartbeat_interval", "must be above 0"));
        }
        for (field, d) in [
            ("recovery_period", self.recovery_period),
            ("promote_period", self.promote_period),
        ] {
            if d.is_zero() {
                return Err(Invalid::new(field, "must be above 0"));
            }
        }
        if self.retry_max < self.retry_base {
            return Err(Invalid::new(
                "retry_max",
                format!(
                    "{:?} is below retry_base ({:?})",
                    self.retry_max, self.retry_base
                ),
            ));
        }
        if self.dead_after < self.heartbeat_interval * 2 {
            return Err(Invalid::new(
                "dead_after",
                format!(
                    "{:?} is below twice the heartbeat interval ({:?})",
                    self.dead_after, self.heartbeat_interval
                ),
            ));
        }
        Ok(())
    }
}

/// A worker: built with [`Worker::new`], given handlers with [`Worker::handle`], and run
/// with [`Worker::run`] until its shutdown future completes.
pub struct Worker {
    store: Store,
    queue: String,
    id: String,
    capacity: i64,
    tags: Vec<String>,
    config: WorkerConfig,
    handlers: Handlers,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("queue", &self.queue)
            .field("id", &self.id)
            .field("capacity", &self.capacity)
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

/// A default worker id: host name and process id, unique among live processes.
fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| check_name("worker", h).is_ok())
        .unwrap_or_else(|| "worker".to_string());
    format!("{host}-{}", std::process::id())
}

impl Worker {
    /// A worker for `queue` with `capacity` units (1..=1,000,000) and no handlers yet.
    pub fn new(store: Store, queue: impl Into<String>, capacity: i64) -> Worker {
        Worker {
            store,
            queue: queue.into(),
            id: default_id(),
            capacity,
            tags: Vec::new(),
            config: WorkerConfig::default(),
            handlers: Handlers::default(),
        }
    }

    /// Sets the worker id (default: host name and process id).
    pub fn id(mut self, id: impl Into<String>) -> Worker {
        self.id = id.into();
        self
    }

    /// Adds a tag; tasks requiring it can run here.
    pub fn tag(mut self, tag: impl Into<String>) -> Worker {
        self.tags.push(tag.into());
        self
    }

    /// Sets the timings.
    pub fn config(mut self, config: WorkerConfig) -> Worker {
        self.config = config;
        self
    }

    /// Runs `f` for tasks of `kind`. The payload is decoded into `P`; the result is stored
    /// as JSON.
    pub fn handle<P, R, F, Fut>(mut self, kind: &str, f: F) -> Worker
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(TaskContext, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, TaskError>> + Send + 'static,
    {
        self.handlers.add(kind, f);
        self
    }

    /// Runs `f` for the reduce tasks of jobs whose reduce kind is `kind`; it reads the map
    /// results, in chunk order, from the [`MapResults`] it is given.
    pub fn reduce<R, F, Fut>(mut self, kind: &str, f: F) -> Worker
    where
        R: Serialize + Send + 'static,
        F: Fn(TaskContext, MapResults) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, TaskError>> + Send + 'static,
    {
        self.handlers
            .add_reducer(kind, self.store.clone(), self.queue.clone(), f);
        self
    }

    /// The worker's id.
    pub fn worker_id(&self) -> &str {
        &self.id
    }

    /// Registers, runs tasks until `shutdown` completes, then stops taking work, finishes
    /// what it holds, and leaves the queue. Tasks placed here but not started when shutdown
    /// comes are handed back to other workers without using an attempt.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        check_name("queue", &self.queue)?;
        check_name("worker", &self.id)?;
        if !(1..=CAPACITY_MAX).contains(&self.capacity) {
            return Err(Invalid::new(
                "capacity",
                format!("{} is outside 1..={CAPACITY_MAX}", self.capacity),
            )
            .into());
        }
        let tags = check_tags("tags", &self.tags)?;
        self.config.validate()?;
        self.store.check_eviction().await?;
        let epoch = self
            .store
            .register_worker(
                &self.queue,
                &self.id,
                self.capacity,
                &tags,
                self.config.dead_after,
            )
            .await?;
        tracing::info!(queue = %self.queue, worker = %self.id, capacity = self.capacity, ?tags, epoch, "worker registered");

        let (stop_tx, stop_rx) = watch::channel(false);
        let (in_flight, _) = watch::channel(0usize);
        let (lost_tx, lost_rx) = mpsc::unbounded_channel();
        let (cancel_tx, cancel_rx) = mpsc::unbounded_channel();
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        // The reporter outlives the other loops: it must tell the outcomes of the tasks
        // that finish during the shutdown, so it has a stop signal of its own.
        let (report_stop_tx, report_stop_rx) = watch::channel(false);
        // Set when the grace period is over: calls that would otherwise retry until Redis
        // answers (reports, leaving) give up then, so a shutdown ends without Redis. What
        // they could not tell goes back to other workers when this one is declared dead.
        let (give_up_tx, give_up_rx) = watch::channel(false);
        let runner = Arc::new(Runner {
            slots: Arc::new(Semaphore::new(usize::try_from(self.capacity).unwrap_or(1))),
            store: self.store,
            queue: self.queue,
            worker: self.id,
            capacity: self.capacity,
            tags,
            config: self.config,
            epoch: Arc::new(AtomicU64::new(epoch)),
            handlers: self.handlers,
            in_flight,
            running: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
            starting: tokio::sync::RwLock::new(()),
            resync: AtomicBool::new(false),
            cancelled: Mutex::new(HashSet::new()),
            abandon: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            give_up: give_up_rx,
            reports: report_tx,
        });
        let heartbeat = tokio::spawn(
            Heartbeat {
                store: runner.store.clone(),
                queue: runner.queue.clone(),
                worker: runner.worker.clone(),
                interval: self.config.heartbeat_interval,
                epoch: Arc::clone(&runner.epoch),
                lost: lost_tx,
                cancels: cancel_tx,
            }
            // It beats until the worker has left: a worker silent through its drain and
            // grace period would be declared dead and its running tasks run twice.
            .run(report_stop_rx.clone()),
        );
        let promotion = tokio::spawn(
            Promotion {
                store: runner.store.clone(),
                queue: runner.queue.clone(),
                period: self.config.promote_period,
            }
            .run(stop_rx.clone()),
        );
        let recovery = tokio::spawn(
            Recovery {
                store: runner.store.clone(),
                queue: runner.queue.clone(),
                dead_after: self.config.dead_after,
                period: self.config.recovery_period,
            }
            .run(stop_rx.clone()),
        );
        let mut fetch = tokio::spawn(Arc::clone(&runner).fetch(stop_rx.clone()));
        let reporter = tokio::spawn(Arc::clone(&runner).report(report_rx, report_stop_rx.clone()));
        let mut rejoin =
            tokio::spawn(Arc::clone(&runner).control(lost_rx, cancel_rx, stop_rx, report_stop_rx));

        let fatal = tokio::select! {
            _ = shutdown => None,
            r = &mut rejoin => r.ok().and_then(|r| r.err()),
        };
        // Another live process holds the id now: its tasks are its own, and nothing this one
        // would report can be recorded, so there is nothing to wait for.
        let grace = if matches!(fatal, Some(Error::WorkerIdTaken(_))) {
            Duration::ZERO
        } else {
            self.config.grace_period
        };
        tracing::info!(worker = %runner.worker, ?grace, "shutting down: finishing what it holds");
        let deadline = tokio::time::Instant::now() + grace;
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            give_up_tx.send_replace(true);
        });
        // Order matters: stop the inbox wait first, then leave the index (so nothing new is
        // placed here and unstarted tasks go to others), then wait for running tasks, and
        // only then remove the worker, which would otherwise hand back running tasks.
        // Leaving presents the epoch: a process declared dead (and perhaps replaced) changes
        // nothing.
        stop_tx.send_replace(true);
        // A claim in flight gets its last try (Runner::retry), within the grace period at
        // most; whatever a cut claim took stays held here, and leaving hands it back.
        let mut give_up = runner.give_up.clone();
        tokio::select! {
            _ = &mut fetch => {}
            _ = stopped(&mut give_up) => fetch.abort(),
        }
        runner.leave(Leave::Drain).await;
        let mut idle = runner.in_flight.subscribe();
        if tokio::time::timeout_at(deadline, idle.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            // Out of time: stop what still runs and report none of it; removing the worker
            // below hands those tasks back without using their attempts.
            tracing::warn!(worker = %runner.worker, ?grace, "grace period over: handing back unfinished tasks");
            runner.abandon.store(true, Ordering::SeqCst);
            runner.stop_handlers();
            let _ = idle.wait_for(|n| *n == 0).await;
        }
        runner.leave(Leave::Remove).await;
        report_stop_tx.send_replace(true);
        if !rejoin.is_finished() {
            let _ = rejoin.await;
        }
        let _ = reporter.await;
        let _ = heartbeat.await;
        let _ = recovery.await;
        let _ = promotion.await;
        tracing::info!(worker = %runner.worker, "worker left");
        fatal.map_or(Ok(()), Err)
    }
}

/// Completes when `stop` turns true (or its sender is gone). Shared by the worker's loops.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard wait_for returns is not Send; it is dropped here, before any caller awaits.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// The skeleton of the periodic loops (heartbeat, recovery): one step every `period`, the
/// first at once, until `stop`. A late step delays the next rather than bunching them. A
/// step in progress is dropped at `stop` (each is one atomic call, safe to cut), so a
/// stop is heard at once even while Redis is away and a call is retrying.
pub(crate) async fn every<F, Fut>(period: Duration, mut stop: watch::Receiver<bool>, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        tokio::select! {
            _ = step() => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// Most ended tasks reported in one call.
const REPORT_BATCH: usize = 256;
/// Most report calls in flight at once. Two keep Redis busy: it records one batch while
/// this process starts what the other handed back. More would only split the same reports
/// into smaller calls, and each call costs Redis a fixed amount besides its tasks (a
/// placement pass, the worker's and the indexes' writes): with four, a drain cost 5% more
/// Redis instructions a task.
const REPORTS_IN_FLIGHT: usize = 2;

/// An ended task on its way to Redis, holding its capacity units until it is recorded.
struct Report {
    task: ClaimedTask,
    outcome: Outcome,
    // The semaphore is never closed, so this is always Some.
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The running part of a worker, shared by the fetch loop and the task futures.
struct Runner {
    store: Store,
    queue: String,
    worker: String,
    capacity: i64,
    tags: Vec<String>,
    config: WorkerConfig,
    /// The epoch of the current registration; every call about this worker presents it
    /// (heartbeat, claim, finish, resync, leave).
    epoch: Arc<AtomicU64>,
    handlers: Handlers,
    slots: Arc<Semaphore>,
    /// Tasks claimed and not yet reported.
    in_flight: watch::Sender<usize>,
    /// Handlers running now, by task id, with their leases, so they can be stopped when the
    /// tasks are lost or cancelled.
    running: Mutex<HashMap<String, (i64, AbortHandle)>>,
    /// Tasks started here and not yet reported: id and lease. A task can be here twice
    /// over, an aborted old run not yet reported and a new run of it (a worker declared
    /// dead that joins again may get its task back): the lease tells the runs apart, so the
    /// old run's report does not make the new one look unknown (and started again).
    known: Mutex<HashMap<String, i64>>,
    /// Read-held while a call that starts tasks runs and while its tasks are started, so
    /// that a resync (which write-holds it) sees every started task in `known`. Calls that
    /// start tasks do not exclude each other: up to REPORTS_IN_FLIGHT reports and a claim
    /// may be in flight at once.
    starting: tokio::sync::RwLock<()>,
    /// Set when a call that may have started tasks failed: its reply, and the tasks it
    /// started, may be lost; the next call that starts tasks reads what runs here.
    resync: AtomicBool,
    /// Runs (id, lease) stopped on a cancel request, reported as cancelled rather than
    /// failed.
    cancelled: Mutex<HashSet<(String, i64)>>,
    /// Set when the grace period ran out: outcomes are no longer reported, and no handler
    /// starts any more.
    abandon: AtomicBool,
    /// Counts the times every handler was stopped (`stop_handlers`: declared dead, or the
    /// grace period over). A run claimed before that, still waiting for its capacity
    /// units, does not start its handler: its task went back, or goes back on leaving.
    generation: AtomicU64,
    /// Turns true when the grace period is over: see [`Runner::retry`].
    give_up: watch::Receiver<bool>,
    /// Ended tasks, for the reporter.
    reports: mpsc::UnboundedSender<Report>,
}

impl Runner {
    /// Most tasks one call may start here: every task costs at least one unit.
    fn claim_max(&self) -> usize {
        usize::try_from(self.capacity).unwrap_or(1)
    }

    /// Waits on the inbox, claims what arrives, and starts it; until `stop`.
    async fn fetch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut conn = None;
        let mut backoff = Duration::from_millis(50);
        loop {
            if *stop.borrow() {
                return;
            }
            let c = match &mut conn {
                Some(c) => c,
                None => match self.store.blocking_connection().await {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot open the inbox connection");
                        backoff = self.pause(backoff, &mut stop).await;
                        continue;
                    }
                },
            };
            self.resync_if_needed().await;
            let got = tokio::select! {
                r = self.store.wait_inbox(c, &self.queue, &self.worker, INBOX_WAIT) => r,
                _ = stopped(&mut stop) => return,
            };
            match got {
                Ok(Some(id)) => {
                    let given = [id];
                    let starting = self.starting.read().await;
                    // Given up only on shutdown: the popped id stays in the worker's held
                    // set, and leaving hands it back.
                    let tasks = self
                        .retry("claim", &stop, || {
                            self.store.claim_tasks(
                                &self.queue,
                                &self.worker,
                                self.epoch.load(Ordering::SeqCst),
                                &given,
                                self.claim_max(),
                            )
                        })
                        .await
                        .unwrap_or_default();
                    self.start_all(tasks);
                    drop(starting);
                    self.resync_if_needed().await;
                    backoff = Duration::from_millis(50);
                }
                Ok(None) => {}
                Err(e) => {
                    // The pop may have taken an id whose reply was lost.
                    self.resync.store(true, Ordering::SeqCst);
                    tracing::warn!(error = %e, "inbox wait failed");
                    conn = None;
                    backoff = self.pause(backoff, &mut stop).await;
                }
            }
        }
    }

    async fn pause(&self, backoff: Duration, stop: &mut watch::Receiver<bool>) -> Duration {
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {},
            _ = stopped(stop) => {},
        }
        (backoff * 2).min(MAX_BACKOFF)
    }

    /// Starts tasks a call handed over. Called with `starting` read-held since the call.
    fn start_all(self: &Arc<Self>, tasks: Vec<ClaimedTask>) {
        for t in tasks {
            Arc::clone(self).start(t);
        }
    }

    /// When an earlier call's reply may have been lost, starts the tasks Redis runs here that
    /// this process does not know. Holds `starting` for writing: every call that started
    /// tasks has started them here before the comparison.
    async fn resync_if_needed(self: &Arc<Self>) {
        // Past the grace period nothing starts any more: leaving hands everything back.
        if !self.resync.load(Ordering::SeqCst) || *self.give_up.borrow() {
            return;
        }
        let _starting = self.starting.write().await;
        if !self.resync.swap(false, Ordering::SeqCst) {
            return;
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        match self
            .store
            .resync_worker(&self.queue, &self.worker, epoch)
            .await
        {
            Ok(running) => {
                let unknown: Vec<ClaimedTask> = {
                    let known = self.lock_known();
                    running
                        .into_iter()
                        .filter(|t| known.get(&t.id) != Some(&t.lease))
                        .collect()
                };
                for t in unknown {
                    tracing::warn!(task = %t.id, "started by a call whose reply was lost; starting it now");
                    Arc::clone(self).start(t);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the running tasks; trying again later");
                self.resync.store(true, Ordering::SeqCst);
            }
        }
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        crate::lock(&self.known)
    }

    /// Forgets a run of a task once it is reported (or never will be): only that run, if a
    /// newer run of the task has started meanwhile.
    fn forget(known: &mut HashMap<String, i64>, task: &ClaimedTask) {
        if known.get(&task.id) == Some(&task.lease) {
            known.remove(&task.id);
        }
    }

    /// Retries a Redis call with backoff until it succeeds, or until `stop` turns true:
    /// used where giving up would lose an outcome or leave a task stranded while the
    /// worker runs. Once `stop` is true the call in flight (or a new one) gets at most
    /// LAST_TRY more, then the retry gives up (`None`) instead of waiting for Redis: what it
    /// could not tell goes to other workers when this one is declared dead. A failed or
    /// unanswered call may still have run (the connection dropped after Redis ran it), so a
    /// resync follows.
    async fn retry<T, F, Fut>(
        &self,
        what: &str,
        stop: &watch::Receiver<bool>,
        mut call: F,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut stop = stop.clone();
        let mut backoff = Duration::from_millis(50);
        loop {
            let attempt = call();
            tokio::pin!(attempt);
            // The store retries a dropped connection itself, for seconds: a stop cuts that
            // wait short, and the call in flight gets its last try (sent again instead, a
            // finish would be refused as stale and lose the tasks its reply carries).
            // stopped() is ready at once when the stop came before the call.
            let answered = tokio::select! {
                r = &mut attempt => Ok(r),
                _ = stopped(&mut stop) => tokio::time::timeout(LAST_TRY, &mut attempt).await,
            };
            let Ok(result) = answered else {
                self.resync.store(true, Ordering::SeqCst);
                tracing::warn!(worker = %self.worker, "{what} got no answer; giving up on shutdown");
                return None;
            };
            match result {
                Ok(v) => return Some(v),
                Err(e) => {
                    self.resync.store(true, Ordering::SeqCst);
                    if *stop.borrow() {
                        tracing::warn!(worker = %self.worker, error = %e, "{what} failed; giving up on shutdown");
                        return None;
                    }
                    tracing::warn!(worker = %self.worker, error = %e, "{what} failed; retrying");
                    backoff = self.pause(backoff, &mut stop).await;
                }
            }
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, AbortHandle)>> {
        crate::lock(&self.running)
    }

    /// Acts on what the heartbeat learns, until `end`: cancel requests stop their handlers;
    /// being declared dead (paused or cut off past dead-after) means the tasks already went
    /// to other workers and their results would be refused, so every handler is stopped and
    /// the worker registers again under a new epoch, unless it is shutting down (`shutdown`).
    /// A refusal of an epoch already replaced is stale and ignored. Ends with an error when
    /// another live process now holds the id.
    async fn control(
        self: Arc<Self>,
        mut lost: mpsc::UnboundedReceiver<u64>,
        mut cancels: mpsc::UnboundedReceiver<String>,
        shutdown: watch::Receiver<bool>,
        mut end: watch::Receiver<bool>,
    ) -> Result<()> {
        loop {
            tokio::select! {
                Some(epoch) = lost.recv() => {
                    if epoch == self.epoch.load(Ordering::SeqCst) && !*shutdown.borrow() {
                        self.rejoin(&shutdown).await?;
                    }
                }
                // A request comes with every beat until its task ends: one for a task not
                // started yet is acted on at a later beat, and one already acted on finds
                // nothing running (or the same stopped handler) and does nothing new.
                Some(id) = cancels.recv() => {
                    let running = self.lock_running();
                    if let Some((lease, handle)) = running.get(&id) {
                        if crate::lock(&self.cancelled).insert((id.clone(), *lease)) {
                            tracing::info!(task = %id, "cancelled on request");
                        }
                        handle.abort();
                    }
                }
                _ = stopped(&mut end) => return Ok(()),
            }
        }
    }

    /// Leaves the queue (drain or remove), retrying while Redis is away until the grace
    /// period is over.
    async fn leave(&self, how: Leave) {
        let left = self
            .retry("leave", &self.give_up, || {
                self.store.leave_worker(
                    &self.queue,
                    &self.worker,
                    self.epoch.load(Ordering::SeqCst),
                    how,
                )
            })
            .await;
        if let Some(None) = left {
            tracing::warn!(worker = %self.worker, "left nothing: this process was declared dead, and what it held went to others");
        }
    }

    /// Registers again after being declared dead, retrying while Redis is away, unless
    /// `shutdown` comes first.
    async fn rejoin(&self, shutdown: &watch::Receiver<bool>) -> Result<()> {
        self.stop_handlers();
        // At shutdown a registration in flight still gets its last try: one that ran unseen
        // would be an active record this process cannot leave (its epoch unknown here),
        // taking work until it is declared dead. An id taken by a live process ends it.
        let registered = self
            .retry("register again", shutdown, || async {
                match self
                    .store
                    .register_worker(
                        &self.queue,
                        &self.worker,
                        self.capacity,
                        &self.tags,
                        self.config.dead_after,
                    )
                    .await
                {
                    Err(e @ Error::WorkerIdTaken(_)) => Ok(Err(e)),
                    other => other.map(Ok),
                }
            })
            .await;
        match registered {
            Some(Ok(epoch)) => {
                self.epoch.store(epoch, Ordering::SeqCst);
                tracing::warn!(worker = %self.worker, epoch, "registered again after being declared dead");
                Ok(())
            }
            Some(Err(taken)) => Err(taken),
            // Shutting down: nothing to rejoin for.
            None => Ok(()),
        }
    }

    /// Stops every handler, and every run claimed before now from starting one: a run
    /// checks the generation under the same lock before it starts its handler.
    fn stop_handlers(&self) {
        let mut running = self.lock_running();
        self.generation.fetch_add(1, Ordering::SeqCst);
        for (_, (_, handle)) in running.drain() {
            handle.abort();
        }
    }

    /// Runs a claimed task in its own tokio task and reports it.
    fn start(self: Arc<Self>, task: ClaimedTask) {
        self.in_flight.send_modify(|n| *n += 1);
        self.lock_known().insert(task.id.clone(), task.lease);
        let generation = self.generation.load(Ordering::SeqCst);
        tokio::spawn(async move {
            let units = u32::try_from(task.cost).unwrap_or(u32::MAX);
            // Redis never assigns beyond capacity; a wait here only bridges the moment
            // between a finish freeing units in Redis and its permit being dropped here.
            let permit = Arc::clone(&self.slots).acquire_many_owned(units).await;
            let outcome = self.execute(&task, generation).await;
            if self.abandon.load(Ordering::SeqCst) {
                drop(permit);
                Runner::forget(&mut self.lock_known(), &task);
                self.in_flight.send_modify(|n| *n -= 1);
                return;
            }
            // The reporter sends it with whatever else ended meanwhile; the permit goes
            // with it and is released once Redis has freed the units.
            if let Err(unsent) = self.reports.send(Report {
                task,
                outcome,
                _permit: permit.ok(),
            }) {
                // Only when the reporter is gone, after shutdown: nothing left to tell.
                Runner::forget(&mut self.lock_known(), &unsent.0.task);
                drop(unsent);
                self.in_flight.send_modify(|n| *n -= 1);
            }
        });
    }

    /// Reports ended tasks: waits for one, takes every other one already waiting (up to
    /// REPORT_BATCH), records them all in one `finish_tasks` call, and starts the tasks that
    /// call hands back. Under load reports group themselves; when idle each goes at once.
    /// Up to REPORTS_IN_FLIGHT calls run at once, so that Redis has the next batch while
    /// this process starts what the last one handed back.
    async fn report(
        self: Arc<Self>,
        mut reports: mpsc::UnboundedReceiver<Report>,
        mut stop: watch::Receiver<bool>,
    ) {
        let calls = Arc::new(Semaphore::new(REPORTS_IN_FLIGHT));
        loop {
            let Ok(call) = Arc::clone(&calls).acquire_owned().await else {
                return;
            };
            let first = tokio::select! {
                r = reports.recv() => r,
                _ = stopped(&mut stop) => None,
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < REPORT_BATCH {
                match reports.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let runner = Arc::clone(&self);
            tokio::spawn(async move {
                runner.report_batch(batch).await;
                drop(call);
            });
        }
        // The calls still in flight end before the reporter does.
        let _ = calls.acquire_many(REPORTS_IN_FLIGHT as u32).await;
    }

    /// Records one batch of ended tasks and starts what the call hands back.
    async fn report_batch(self: Arc<Self>, batch: Vec<Report>) {
        let n = batch.len();
        let mut next = Vec::new();
        // Read-held from the call until what it started is started here (see `starting`).
        let mut starting = None;
        if !self.abandon.load(Ordering::SeqCst) {
            let pairs: Vec<(&ClaimedTask, &Outcome)> =
                batch.iter().map(|r| (&r.task, &r.outcome)).collect();
            starting = Some(self.starting.read().await);
            let finished = self
                .retry("finish", &self.give_up, || {
                    self.store.finish_tasks(
                        &self.queue,
                        &self.worker,
                        self.epoch.load(Ordering::SeqCst),
                        &pairs,
                        self.claim_max(),
                    )
                })
                .await;
            match finished {
                Some((recorded, claimed)) => {
                    for (r, ok) in batch.iter().zip(recorded) {
                        if !ok {
                            tracing::debug!(task = %r.task.id, "outcome not recorded: already recorded, or the task was taken back");
                        }
                    }
                    next = claimed;
                }
                // Given up at the end of the grace period: nothing more is started.
                None => starting = None,
            }
        }
        {
            let mut known = self.lock_known();
            for r in &batch {
                Runner::forget(&mut known, &r.task);
            }
        }
        drop(batch);
        // Nothing more is started once the call gave up (the grace period is over).
        if let Some(guard) = starting {
            self.start_all(next);
            drop(guard);
            self.resync_if_needed().await;
        }
        self.in_flight.send_modify(|v| *v -= n);
    }

    /// Runs the handler under the task's timeout; a panic or a timeout is a failure. A run
    /// of an earlier `generation`, or one reaching here after the grace period, does not
    /// start: its report (if any) is refused as stale, since the task went back.
    async fn execute(&self, task: &ClaimedTask, generation: u64) -> Outcome {
        let Some(handler) = self.handlers.get(&task.kind, task.role == "reduce") else {
            return Outcome::Failed(format!(
                "no handler for kind {:?} on this worker",
                task.kind
            ));
        };
        let ctx = TaskContext {
            id: task.id.clone(),
            queue: self.queue.clone(),
            kind: task.kind.clone(),
            worker: self.worker.clone(),
            attempt: task.attempt,
            max_attempts: task.max_attempts,
        };
        let mut join = {
            let mut running = self.lock_running();
            // A task started after the grace period ran out (a finish answered during its
            // last try) reads the generation stop_handlers() left, so `abandon` is checked
            // too.
            if self.abandon.load(Ordering::SeqCst)
                || self.generation.load(Ordering::SeqCst) != generation
            {
                return Outcome::Retry {
                    error: "not started: the task went back before it could start here".into(),
                    delay: Duration::ZERO,
                };
            }
            let join = tokio::spawn(handler(ctx, &task.payload));
            running.insert(task.id.clone(), (task.lease, join.abort_handle()));
            join
        };
        let limit = Duration::from_millis(u64::try_from(task.timeout_ms).unwrap_or(1));
        let ended = tokio::time::timeout(limit, &mut join).await;
        {
            let mut running = self.lock_running();
            if running
                .get(&task.id)
                .is_some_and(|(lease, _)| *lease == task.lease)
            {
                running.remove(&task.id);
            }
        }
        // Taken on every path, so that a request arriving as the handler ends is not left
        // to mark a later run of the same task.
        let asked = {
            let mut cancelled = crate::lock(&self.cancelled);
            // Seldom anything in it: the key is not built for every task.
            !cancelled.is_empty() && cancelled.remove(&(task.id.clone(), task.lease))
        };
        let retry = |error: String| Outcome::Retry {
            error,
            delay: self.config.backoff(task.attempt),
        };
        match ended {
            Ok(Ok(Ok(value))) => Outcome::Succeeded(value.to_string()),
            Ok(Ok(Err(TaskError::Retry(e)))) => retry(e),
            Ok(Ok(Err(TaskError::RetryAfter { message, delay }))) => Outcome::Retry {
                error: message,
                delay,
            },
            Ok(Ok(Err(TaskError::Permanent(e)))) => Outcome::Failed(e),
            Ok(Err(e)) if e.is_panic() => retry("handler panicked".to_string()),
            Ok(Err(_)) if asked => Outcome::Cancelled,
            Ok(Err(_)) => retry("handler was stopped".to_string()),
            Err(_) => {
                join.abort();
                retry(format!("timed out after {} ms", task.timeout_ms))
            }
        }
    }
}
