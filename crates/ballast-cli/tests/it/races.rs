//! Races: many producers and many workers at once, each on its own connection. However the
//! script calls interleave, no worker ever holds (or runs) more cost than its capacity, no
//! task is lost or run twice under one lease, and the queue ends sound.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ballast::store::{prefix, ClaimedTask, Finish, Leave, Outcome};
use ballast::{Client, Placement, QueueCounts, Store, TaskSpec, TaskState};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::harness::{epoch_of, qkey, Env};

const Q: &str = "race";

/// Whole-run bound: a run that takes longer is stuck, not slow.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// One atomic look at every worker: (id, capacity, assigned, cost held, cost running).
const SAMPLE: &str = r"
local P = ARGV[1]
local out = {}
for _, w in ipairs(redis.call('SMEMBERS', P .. 'workers')) do
  local h = redis.call('HMGET', P .. 'worker:' .. w, 'capacity', 'assigned')
  local held, running = 0, 0
  for _, token in ipairs(redis.call('SMEMBERS', P .. 'worker:' .. w .. ':tasks')) do
    -- A held token is '<lease> <cost> <id>', with an 'a' in front while assigned.
    local id = string.match(token, '^a?%d+ %d+ (.*)$')
    local t = redis.call('HMGET', P .. 'task:' .. id, 'cost', 'state')
    held = held + tonumber(t[1])
    if t[2] == 'running' then running = running + tonumber(t[1]) end
  end
  out[#out + 1] = { w, tonumber(h[1]), tonumber(h[2]), held, running }
end
return out
";

/// Shared progress of a run.
struct Progress {
    total: usize,
    done: AtomicUsize,
    /// Notified once when `done` first reaches `total / 3`.
    third: Notify,
}

impl Progress {
    fn new(total: usize) -> Arc<Progress> {
        Arc::new(Progress {
            total,
            done: AtomicUsize::new(0),
            third: Notify::new(),
        })
    }

    fn finished(&self) -> bool {
        self.done.load(Ordering::SeqCst) >= self.total
    }

    fn record(&self) {
        let n = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.total / 3 {
            self.third.notify_one();
        }
    }
}

/// What one simulated worker saw.
#[derive(Debug, Default)]
struct WorkerReport {
    /// Largest total cost of the tasks it was running at once.
    max_running_cost: i64,
    /// Finishes recorded.
    recorded: i64,
    /// Finishes refused as stale (only after the worker was removed).
    stale: i64,
}

/// A simulated worker: claims from its inbox (blocking pop, then `claim_tasks`), finishes
/// its running tasks one at a time (`finish_task`, which hands it the next ones), and
/// checks after every call that the cost it runs stays within `capacity`. Stops when every
/// task is finished or when the worker has been removed.
async fn work(
    url: String,
    w: String,
    capacity: i64,
    claim_max: usize,
    lifo: bool,
    progress: Arc<Progress>,
) -> WorkerReport {
    let store = Store::connect(&url).await.expect("connect");
    let epoch = crate::harness::epoch_of(&store, Q, &w).await;
    let mut conn = store
        .blocking_connection()
        .await
        .expect("blocking connection");
    let mut running: VecDeque<ClaimedTask> = VecDeque::new();
    let mut report = WorkerReport::default();
    loop {
        if running.is_empty() {
            if progress.finished() {
                break;
            }
            // Blocks until a task arrives or 20 ms pass, so the loop sees the end of the run.
            let popped = store
                .wait_inbox(&mut conn, Q, &w, Duration::from_millis(20))
                .await
                .expect("wait inbox");
            match popped {
                Some(id) => running.extend(
                    store
                        .claim_tasks(Q, &w, epoch, &[id], claim_max)
                        .await
                        .expect("claim"),
                ),
                None => {
                    if store
                        .heartbeat_worker(Q, &w, epoch)
                        .await
                        .expect("heartbeat")
                        .is_none()
                    {
                        break; // removed
                    }
                }
            }
        } else {
            let t = if lifo {
                running.pop_back()
            } else {
                running.pop_front()
            }
            .expect("non-empty");
            let outcome = Outcome::Succeeded(format!("{{\"by\":\"{w}\"}}"));
            match store
                .finish_task(Q, &w, epoch, &t, &outcome, claim_max)
                .await
                .expect("finish")
            {
                Finish::Recorded(next) => {
                    report.recorded += 1;
                    progress.record();
                    running.extend(next);
                }
                Finish::Stale(next) => {
                    report.stale += 1;
                    running.extend(next);
                }
            }
        }
        let cost: i64 = running.iter().map(|t| t.cost).sum();
        assert!(
            cost <= capacity,
            "{w} runs cost {cost} > capacity {capacity}: {running:?}"
        );
        report.max_running_cost = report.max_running_cost.max(cost);
    }
    report
}

/// Samples every worker atomically until the run ends; returns the number of samples.
/// Panics if a worker ever holds more than its capacity, runs more than it holds, or its
/// `assigned` differs from the cost it holds.
async fn sample(url: String, progress: Arc<Progress>, stop: Arc<AtomicBool>) -> usize {
    let mut conn = redis::Client::open(url.as_str())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let script = redis::Script::new(SAMPLE);
    let mut samples = 0;
    while !progress.finished() && !stop.load(Ordering::SeqCst) {
        let rows: Vec<(String, i64, i64, i64, i64)> = script
            .arg(prefix(Q))
            .invoke_async(&mut conn)
            .await
            .expect("sample");
        for (w, capacity, assigned, held, running) in rows {
            assert!(
                (0..=capacity).contains(&assigned),
                "{w}: assigned {assigned}, capacity {capacity}"
            );
            assert_eq!(
                assigned, held,
                "{w}: assigned differs from the cost it holds"
            );
            assert!(running <= held, "{w}: runs {running} but holds {held}");
        }
        samples += 1;
        tokio::task::yield_now().await;
    }
    samples
}

/// Checks the end state: every task succeeded exactly once under its first lease (or, when
/// `reruns_allowed`, possibly after being handed back), every worker idle, the queue sound.
async fn assert_all_done(env: &mut Env, total: usize, reruns_allowed: bool) {
    assert_eq!(
        env.store.counts(Q).await.expect("counts"),
        QueueCounts {
            succeeded: total as u64,
            ..QueueCounts::default()
        }
    );
    let tasks = env.store.tasks(Q, None, total + 10).await.expect("tasks");
    assert_eq!(tasks.len(), total);
    for t in &tasks {
        assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
        if reruns_allowed {
            assert!(t.attempts >= 1 && t.lease >= 1, "{t:?}");
        } else {
            assert_eq!((t.attempts, t.lease), (1, 1), "{t:?}");
        }
        let by = t.worker.clone().expect("worker");
        assert_eq!(t.result, Some(serde_json::json!({ "by": by })), "{t:?}");
    }
    for w in env.store.workers(Q).await.expect("workers") {
        assert_eq!(w.assigned, 0, "{w:?}");
    }
    env.assert_sound(Q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producers_and_workers_race_and_no_worker_exceeds_its_capacity() {
    let mut env = Env::start().await;
    let caps: [i64; 6] = [1, 2, 3, 4, 6, 8];
    for (i, cap) in caps.iter().enumerate() {
        env.register(Q, &format!("w{i}"), *cap, &[]).await;
    }
    let (producers, each) = (8, 200);
    let progress = Progress::new(producers * each);
    let stop = Arc::new(AtomicBool::new(false));

    let run = async {
        let sampler = tokio::spawn(sample(env.url.clone(), progress.clone(), stop.clone()));
        let mut workers = JoinSet::new();
        for (i, cap) in caps.iter().enumerate() {
            let w = format!("w{i}");
            let fut = work(env.url.clone(), w.clone(), *cap, 4, false, progress.clone());
            workers.spawn(async move { (w, fut.await) });
        }
        let mut submitters = JoinSet::new();
        for p in 0..producers {
            let url = env.url.clone();
            submitters.spawn(async move {
                let client = Client::connect(&url).await.expect("connect");
                for i in 0..each {
                    let spec = TaskSpec::new(Q, "noop")
                        .cost(1 + ((i + p) % 4) as i64)
                        .priority((i % 3) as i64);
                    client.submit(&spec).await.expect("submit");
                }
            });
        }
        while let Some(r) = submitters.join_next().await {
            r.expect("producer");
        }
        let mut reports = HashMap::new();
        while let Some(r) = workers.join_next().await {
            let (w, report) = r.expect("worker");
            reports.insert(w, report);
        }
        stop.store(true, Ordering::SeqCst);
        let samples = sampler.await.expect("sampler");
        (reports, samples)
    };
    let (reports, samples) = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("the run got stuck");
    assert!(samples > 0);

    assert_all_done(&mut env, producers * each, false).await;
    let mut recorded = 0;
    for (i, cap) in caps.iter().enumerate() {
        let w = format!("w{i}");
        let r = &reports[&w];
        assert!(r.max_running_cost <= *cap, "{w}: {r:?}");
        assert_eq!(r.stale, 0, "{w}: {r:?}");
        assert_eq!(env.worker_int(Q, &w, "finished").await, r.recorded, "{w}");
        recorded += r.recorded;
    }
    assert_eq!(recorded, (producers * each) as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cost_a_worker_runs_never_exceeds_its_capacity() {
    let mut env = Env::start().await;
    // Tagged and untagged workers; tasks of cost 1..=6, some needing `gpu`; batches.
    let workers: [(&str, i64, &[&str]); 6] = [
        ("a", 1, &[]),
        ("b", 2, &[]),
        ("c", 3, &[]),
        ("d", 4, &["gpu"]),
        ("e", 6, &["gpu"]),
        ("f", 8, &[]),
    ];
    for (w, cap, tags) in workers {
        env.register(Q, w, cap, tags).await;
    }
    let (producers, batches, batch) = (4, 15, 10);
    let progress = Progress::new(producers * batches * batch);
    let stop = Arc::new(AtomicBool::new(false));

    let run = async {
        let sampler = tokio::spawn(sample(env.url.clone(), progress.clone(), stop.clone()));
        let mut set = JoinSet::new();
        for (w, cap, _) in workers {
            let fut = work(
                env.url.clone(),
                w.to_string(),
                cap,
                8,
                true,
                progress.clone(),
            );
            set.spawn(async move { (w, fut.await) });
        }
        let mut submitters = JoinSet::new();
        for p in 0..producers {
            let url = env.url.clone();
            submitters.spawn(async move {
                let client = Client::connect(&url).await.expect("connect");
                for b in 0..batches {
                    let specs: Vec<TaskSpec> = (0..batch)
                        .map(|i| {
                            let n = p * 1000 + b * batch + i;
                            let spec = TaskSpec::new(Q, "noop")
                                .cost(1 + (n % 6) as i64)
                                .priority((n % 5) as i64 - 2);
                            if n % 4 == 0 {
                                spec.tag("gpu")
                            } else {
                                spec
                            }
                        })
                        .collect();
                    let placed = client.submit_many(&specs).await.expect("submit");
                    for (s, pl) in specs.iter().zip(&placed) {
                        // gpu tasks only ever land on d or e; nothing is parked.
                        if let Placement::Assigned(w) = pl {
                            if s.tags.is_empty() {
                                continue;
                            }
                            assert!(w == "d" || w == "e", "gpu task on {w}");
                        }
                        assert_ne!(*pl, Placement::Parked, "{s:?}");
                    }
                }
            });
        }
        while let Some(r) = submitters.join_next().await {
            r.expect("producer");
        }
        let mut reports = HashMap::new();
        while let Some(r) = set.join_next().await {
            let (w, report) = r.expect("worker");
            reports.insert(w, report);
        }
        stop.store(true, Ordering::SeqCst);
        let samples = sampler.await.expect("sampler");
        (reports, samples)
    };
    let (reports, samples) = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("the run got stuck");
    assert!(samples > 0);

    let total = producers * batches * batch;
    assert_all_done(&mut env, total, false).await;
    for (w, cap, _) in workers {
        let r = &reports[w];
        assert!(r.max_running_cost <= cap, "{w}: {r:?}");
        assert!(r.max_running_cost > 0, "{w} ran nothing: {r:?}");
    }
    // gpu tasks ran on gpu workers only.
    for t in env.store.tasks(Q, None, total).await.expect("tasks") {
        if !t.tags.is_empty() {
            let w = t.worker.expect("worker");
            assert!(w == "d" || w == "e", "gpu task {} ran on {w}", t.id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_batch_submitted_concurrently_is_stored_once() {
    let mut env = Env::start().await;
    env.register(Q, "w", 30, &[]).await;
    let specs: Vec<TaskSpec> = (0..100)
        .map(|i| TaskSpec::new(Q, "noop").cost(1 + i % 2))
        .collect();
    let mut set = JoinSet::new();
    for _ in 0..8 {
        let url = env.url.clone();
        let specs = specs.clone();
        set.spawn(async move {
            let client = Client::connect(&url).await.expect("connect");
            client.submit_many(&specs).await.expect("submit")
        });
    }
    // A submission that finds a task already stored reports where it went: once placed, a
    // task is reported assigned by every later submission, and never placed twice.
    let mut assigned_reports: HashSet<String> = HashSet::new();
    while let Some(r) = set.join_next().await {
        for (s, p) in specs.iter().zip(r.expect("producer")) {
            if let Placement::Assigned(w) = p {
                assert_eq!(w, "w");
                assigned_reports.insert(s.id.clone());
            }
        }
    }
    let seq: i64 = redis::AsyncCommands::get(&mut env.raw, qkey(Q, "seq"))
        .await
        .expect("seq");
    assert_eq!(seq, 100);
    let counts = env.store.counts(Q).await.expect("counts");
    assert_eq!(counts.pending + counts.assigned, 100);
    assert_eq!(counts.assigned as usize, assigned_reports.len());
    assert_eq!(env.worker_int(Q, "w", "assigned").await, 30);
    for t in env.store.tasks(Q, None, 200).await.expect("tasks") {
        assert!(t.lease <= 1, "{t:?}");
    }
    env.assert_sound(Q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_removed_mid_run_loses_no_task() {
    let mut env = Env::start().await;
    let caps: [i64; 4] = [2, 3, 4, 4];
    for (i, cap) in caps.iter().enumerate() {
        env.register(Q, &format!("w{i}"), *cap, &[]).await;
    }
    let total = 400;
    let progress = Progress::new(total);
    let stop = Arc::new(AtomicBool::new(false));

    let run = async {
        let sampler = tokio::spawn(sample(env.url.clone(), progress.clone(), stop.clone()));
        let mut set = JoinSet::new();
        for (i, cap) in caps.iter().enumerate() {
            let w = format!("w{i}");
            let fut = work(
                env.url.clone(),
                w.clone(),
                *cap,
                4,
                i % 2 == 0,
                progress.clone(),
            );
            set.spawn(async move { (w, fut.await) });
        }
        // Once a third of the tasks are done, w3 is removed under its running tasks.
        let remover = {
            let url = env.url.clone();
            let progress = progress.clone();
            tokio::spawn(async move {
                progress.third.notified().await;
                let store = Store::connect(&url).await.expect("connect");
                store
                    .leave_worker(Q, "w3", epoch_of(&store, Q, "w3").await, Leave::Remove)
                    .await
                    .expect("remove")
            })
        };
        let client = Client::connect(&env.url).await.expect("connect");
        let specs: Vec<TaskSpec> = (0..total)
            .map(|i| TaskSpec::new(Q, "noop").cost(1 + (i % 4) as i64))
            .collect();
        for chunk in specs.chunks(20) {
            client.submit_many(chunk).await.expect("submit");
        }
        let mut reports = HashMap::new();
        while let Some(r) = set.join_next().await {
            let (w, report) = r.expect("worker");
            reports.insert(w, report);
        }
        let handed_back = remover.await.expect("remover");
        stop.store(true, Ordering::SeqCst);
        let samples = sampler.await.expect("sampler");
        (reports, handed_back, samples)
    };
    let (reports, _handed_back, samples) = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("the run got stuck");
    assert!(samples > 0);

    assert_all_done(&mut env, total, true).await;
    let recorded: i64 = reports.values().map(|r| r.recorded).sum();
    assert_eq!(recorded, total as i64);
    for w in ["w0", "w1", "w2"] {
        assert_eq!(reports[w].stale, 0, "{w}: {:?}", reports[w]);
        assert_eq!(env.worker_int(Q, w, "finished").await, reports[w].recorded);
    }
    // w3 is gone, and every task it recorded before leaving is credited to it.
    let ids: Vec<String> = env
        .store
        .workers(Q)
        .await
        .expect("workers")
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(ids, vec!["w0", "w1", "w2"]);
    let by_w3 = env
        .store
        .tasks(Q, None, total)
        .await
        .expect("tasks")
        .into_iter()
        .filter(|t| t.worker.as_deref() == Some("w3"))
        .count();
    assert_eq!(by_w3 as i64, reports["w3"].recorded);
}
