//! Tests of the worker runtime through the public API: typed handlers, failures, timeouts,
//! the capacity bound inside the process, heartbeats and a clean shutdown.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ballast::{Store, TaskContext, TaskError, TaskSpec, TaskState, Worker, WorkerConfig};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use crate::harness::{eventually, Env, WAIT};

const FAST: WorkerConfig = WorkerConfig {
    heartbeat_interval: Duration::from_millis(50),
    dead_after: Duration::from_millis(500),
    recovery_period: Duration::from_millis(50),
    promote_period: Duration::from_millis(20),
    retry_base: Duration::from_millis(100),
    retry_max: Duration::from_secs(5),
    grace_period: Duration::from_secs(10),
};

#[derive(Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

fn worker(store: &Store, id: &str, capacity: i64) -> Worker {
    Worker::new(store.clone(), "q", capacity)
        .id(id)
        .config(FAST)
        .handle("add", |_: TaskContext, p: Add| async move {
            Ok::<_, TaskError>(p.a + p.b)
        })
        .handle("refuse", |ctx: TaskContext, _: Value| async move {
            Err::<Value, _>(TaskError::permanent(format!(
                "no on attempt {}",
                ctx.attempt
            )))
        })
        .handle("nap", |_: TaskContext, ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, TaskError>(ms)
        })
        .handle("hang", |_: TaskContext, _: Value| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, TaskError>(Value::Null)
        })
        .handle("panic", |_: TaskContext, _: Value| async {
            if true {
                panic!("handler bug");
            }
            Ok::<_, TaskError>(Value::Null)
        })
}

/// Runs a worker until the returned sender fires (or is dropped).
fn spawn(w: Worker) -> (oneshot::Sender<()>, JoinHandle<ballast::Result<()>>) {
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(w.run(async move {
        let _ = rx.await;
    }));
    (tx, handle)
}

/// Tells a worker started by `spawn` to stop and waits until it has ended cleanly.
async fn stop_worker(stop: oneshot::Sender<()>, run: JoinHandle<ballast::Result<()>>) {
    stop.send(()).expect("stop");
    run.await.expect("join").expect("run");
}

async fn wait_running(env: &Env, id: &str) {
    eventually(&format!("task {id} runs"), WAIT, || async move {
        env.task_record("q", id).await.state == TaskState::Running
    })
    .await;
}

async fn wait_registered(env: &Env, id: &str) {
    eventually(
        &format!("worker {id} has registered"),
        WAIT,
        || async move { env.epoch("q", id).await > 0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_get_typed_payloads_and_outcomes_are_recorded() {
    let env = Env::start().await;
    let (stop, run) = spawn(worker(&env.store, "w", 4));
    let specs = vec![
        TaskSpec::new("q", "add").payload(json!({"a": 2, "b": 3})),
        TaskSpec::new("q", "refuse"),
        TaskSpec::new("q", "missing"),
        TaskSpec::new("q", "add").payload(json!({"a": "two"})),
        TaskSpec::new("q", "panic").max_attempts(1),
        TaskSpec::new("q", "hang")
            .timeout(Duration::from_millis(100))
            .max_attempts(1),
    ];
    env.client.submit_many(&specs).await.expect("submit");
    let ids: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
    let r = env
        .client
        .wait_all("q", &ids, Duration::from_secs(20))
        .await
        .expect("done");
    assert_eq!(
        (r[0].state, r[0].result.clone()),
        (TaskState::Succeeded, Some(json!(5)))
    );
    let errors: Vec<(TaskState, String)> = r[1..]
        .iter()
        .map(|t| (t.state, t.error.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        errors,
        vec![
            (TaskState::Failed, "no on attempt 1".to_string()),
            (TaskState::Failed, "no handler for kind \"missing\" on this worker".to_string()),
            (
                TaskState::Failed,
                "payload does not fit kind add: invalid type: string \"two\", expected i64 at line 1 column 10"
                    .to_string()
            ),
            (TaskState::Failed, "handler panicked".to_string()),
            (TaskState::Failed, "timed out after 100 ms".to_string()),
        ]
    );
    assert!(r
        .iter()
        .all(|t| t.attempts == 1 && t.worker.as_deref() == Some("w")));
    stop_worker(stop, run).await;
    env.assert_sound("q").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_never_runs_more_cost_than_its_capacity() {
    let env = Env::start().await;
    let load = Arc::new(AtomicI64::new(0));
    let peak = Arc::new(AtomicI64::new(0));
    let (l, p) = (Arc::clone(&load), Arc::clone(&peak));
    let w = Worker::new(env.store.clone(), "q", 3)
        .id("w")
        .config(FAST)
        .handle("weigh", move |_: TaskContext, cost: i64| {
            let (l, p) = (Arc::clone(&l), Arc::clone(&p));
            async move {
                let now = l.fetch_add(cost, Ordering::SeqCst) + cost;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                l.fetch_sub(cost, Ordering::SeqCst);
                Ok::<_, TaskError>(now)
            }
        });
    let (stop, run) = spawn(w);
    let specs: Vec<TaskSpec> = (0..60)
        .map(|i| {
            let cost = 1 + i % 3;
            TaskSpec::new("q", "weigh").payload(json!(cost)).cost(cost)
        })
        .collect();
    env.client.submit_many(&specs).await.expect("submit");
    let ids: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
    let r = env
        .client
        .wait_all("q", &ids, Duration::from_secs(30))
        .await
        .expect("done");
    assert!(r.iter().all(|t| t.state == TaskState::Succeeded));
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        (1..=3).contains(&peak),
        "ran {peak} units at once on capacity 3"
    );
    stop_worker(stop, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_advance_on_the_redis_clock() {
    let env = Env::start().await;
    let (stop, run) = spawn(worker(&env.store, "w", 1));
    wait_registered(&env, "w").await;
    let first = env.store.workers("q").await.expect("workers")[0].heartbeat_at;
    let store = &env.store;
    eventually("a later heartbeat is recorded", WAIT, || async move {
        store.workers("q").await.expect("workers")[0].heartbeat_at > first
    })
    .await;
    stop_worker(stop, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_running_work_then_leaves() {
    let env = Env::start().await;
    let release = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let (r, s) = (Arc::clone(&release), Arc::clone(&started));
    // Capacity 2: with `first` running, `a` still has a free unit that `second` would fit.
    let w = Worker::new(env.store.clone(), "q", 2)
        .id("a")
        .config(FAST)
        .handle("gate", move |_: TaskContext, _: Value| {
            let (r, s) = (Arc::clone(&r), Arc::clone(&s));
            async move {
                s.notify_one();
                r.notified().await;
                Ok::<_, TaskError>("done")
            }
        });
    let (stop, run) = spawn(w);
    wait_registered(&env, "a").await;
    let first = TaskSpec::new("q", "gate");
    let second = TaskSpec::new("q", "gate");
    env.client.submit(&first).await.expect("submit");
    started.notified().await;

    stop.send(()).expect("stop");
    // The worker leaves the index while its task runs: nothing new is placed on it, though
    // it has a unit free.
    let store = &env.store;
    eventually("worker a is draining", WAIT, || async move {
        store.workers("q").await.expect("workers")[0].state == "draining"
    })
    .await;
    assert_eq!(
        env.client.submit(&second).await.expect("submit"),
        ballast::Placement::Pending
    );
    assert_eq!(
        env.task_record("q", &second.id).await.state,
        TaskState::Pending
    );
    release.notify_one();
    run.await.expect("join").expect("run");

    let done = env.task_record("q", &first.id).await;
    assert_eq!(
        (done.state, done.result),
        (TaskState::Succeeded, Some(json!("done")))
    );
    assert!(env.store.workers("q").await.expect("workers").is_empty());
    env.assert_sound("q").await;

    // The task it never started runs on the next worker.
    let (stop_b, run_b) = spawn(
        worker(&env.store, "b", 1).handle("gate", |_: TaskContext, _: Value| async {
            Ok::<_, TaskError>("b")
        }),
    );
    let t = env
        .client
        .wait("q", &second.id, Duration::from_secs(10))
        .await
        .expect("second");
    assert_eq!(
        (t.state, t.worker.as_deref()),
        (TaskState::Succeeded, Some("b"))
    );
    stop_worker(stop_b, run_b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_keeps_beating_through_its_grace_period() {
    let env = Env::start().await;
    let (stop_a, run_a) = spawn(worker(&env.store, "a", 1));
    wait_registered(&env, "a").await;
    // The task outlasts dead-after (500 ms) three times over, so `a` finishes it well into
    // its shutdown, while `b` looks for dead workers every 50 ms.
    let spec = TaskSpec::new("q", "nap").payload(json!(1500));
    env.client.submit(&spec).await.expect("submit");
    wait_running(&env, &spec.id).await;
    let (stop_b, run_b) = spawn(worker(&env.store, "b", 1));
    wait_registered(&env, "b").await;
    stop_worker(stop_a, run_a).await;
    let t = env.task_record("q", &spec.id).await;
    assert_eq!(
        (t.state, t.runs, t.worker.as_deref()),
        (TaskState::Succeeded, 1, Some("a")),
        "declared dead while finishing: {t:?}"
    );
    stop_worker(stop_b, run_b).await;
}

#[tokio::test]
async fn bad_worker_settings_are_refused_before_registering() {
    let mut env = Env::start().await;
    let cases: Vec<(Worker, &str)> = vec![
        (Worker::new(env.store.clone(), "q", 0), "invalid capacity"),
        (Worker::new(env.store.clone(), "a}b", 1), "invalid queue"),
        (
            Worker::new(env.store.clone(), "q", 1).id("a b"),
            "invalid worker",
        ),
        (
            Worker::new(env.store.clone(), "q", 1).tag("g,pu"),
            "invalid tags",
        ),
        (
            Worker::new(env.store.clone(), "q", 1).config(WorkerConfig {
                heartbeat_interval: Duration::from_secs(1),
                dead_after: Duration::from_secs(1),
                ..WorkerConfig::default()
            }),
            "invalid dead_after",
        ),
    ];
    for (w, want) in cases {
        let e = w.run(async {}).await.expect_err(want);
        assert!(e.to_string().starts_with(want), "{e}");
    }
    assert!(env.keys().await.is_empty());
}

#[derive(Deserialize)]
struct Flaky {
    fail_until: i64,
}

fn retrying(store: &Store) -> Worker {
    worker(store, "w", 2)
        .handle("flaky", |ctx: TaskContext, p: Flaky| async move {
            if ctx.attempt < p.fail_until {
                return Err(TaskError::retry(format!("attempt {} failed", ctx.attempt)));
            }
            Ok::<_, TaskError>(ctx.attempt)
        })
        .handle("later", |ctx: TaskContext, _: Value| async move {
            if ctx.attempt == 1 {
                return Err(TaskError::RetryAfter {
                    message: "busy".into(),
                    delay: Duration::from_millis(400),
                });
            }
            Ok::<_, TaskError>(ctx.attempt)
        })
}

fn gaps(t: &ballast::TaskRecord) -> Vec<i64> {
    t.history
        .windows(2)
        .map(|w| {
            w[1]["started_at"].as_i64().expect("start") - w[0]["finished_at"].as_i64().expect("end")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_with_growing_backoff_then_dead_lettered() {
    let env = Env::start().await;
    let (stop, run) = spawn(retrying(&env.store));
    let twice = TaskSpec::new("q", "flaky").payload(json!({"fail_until": 3}));
    let always = TaskSpec::new("q", "flaky").payload(json!({"fail_until": 99}));
    let later = TaskSpec::new("q", "later");
    env.client
        .submit_many(&[twice.clone(), always.clone(), later.clone()])
        .await
        .expect("submit");
    let ids = [twice.id.clone(), always.id.clone(), later.id.clone()];
    let r = env
        .client
        .wait_all("q", &ids, Duration::from_secs(30))
        .await
        .expect("done");

    // Fails twice, then succeeds on the third attempt; the backoff before attempt k+1 is
    // at least retry_base * 2^(k-1) (Redis does not promote a retry before its time).
    assert_eq!(
        (r[0].state, r[0].attempts, r[0].result.clone()),
        (TaskState::Succeeded, 3, Some(json!(3)))
    );
    let outcomes: Vec<&str> = r[0]
        .history
        .iter()
        .map(|h| h["outcome"].as_str().expect("o"))
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "succeeded"]);
    let g = gaps(&r[0]);
    assert!(g[0] >= 100 && g[1] >= 200, "gaps {g:?}");

    // Always fails: dead-lettered after max_attempts with its last error and history.
    assert_eq!((r[1].state, r[1].attempts), (TaskState::Failed, 3));
    assert_eq!(r[1].error.as_deref(), Some("attempt 3 failed"));
    let outcomes: Vec<&str> = r[1]
        .history
        .iter()
        .map(|h| h["outcome"].as_str().expect("o"))
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "failed"]);
    assert_eq!(
        env.store.dead_ids("q", 10).await.expect("dead"),
        vec![always.id.clone()]
    );

    // The handler asked for 400 ms.
    assert_eq!((r[2].state, r[2].attempts), (TaskState::Succeeded, 2));
    assert!(gaps(&r[2])[0] >= 400, "{:?}", gaps(&r[2]));

    // A dead letter sent back runs again with fresh attempts.
    assert_eq!(
        env.store
            .retry_dead("q", std::slice::from_ref(&always.id))
            .await
            .expect("retry"),
        1
    );
    let again = env
        .client
        .wait("q", &always.id, Duration::from_secs(30))
        .await
        .expect("again");
    assert_eq!(
        (again.state, again.attempts, again.history.len()),
        (TaskState::Failed, 3, 6)
    );
    stop_worker(stop, run).await;
    env.assert_sound("q").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_a_failed_attempt_and_a_permanent_error_is_not_retried() {
    let env = Env::start().await;
    let (stop, run) = spawn(worker(&env.store, "w", 2));
    let hang = TaskSpec::new("q", "hang")
        .timeout(Duration::from_millis(100))
        .max_attempts(2);
    let refuse = TaskSpec::new("q", "refuse").max_attempts(5);
    env.client
        .submit_many(&[hang.clone(), refuse.clone()])
        .await
        .expect("submit");
    let r = env
        .client
        .wait_all(
            "q",
            &[hang.id.clone(), refuse.id.clone()],
            Duration::from_secs(30),
        )
        .await
        .expect("done");
    assert_eq!((r[0].state, r[0].attempts), (TaskState::Failed, 2));
    for h in &r[0].history {
        assert_eq!(h["error"], "timed out after 100 ms");
        let ran = h["finished_at"].as_i64().expect("f") - h["started_at"].as_i64().expect("s");
        assert!((100..5_000).contains(&ran), "ran {ran} ms");
    }
    assert_eq!(
        (r[1].state, r[1].attempts, r[1].error.as_deref()),
        (TaskState::Failed, 1, Some("no on attempt 1"))
    );
    stop_worker(stop, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_task_starts_no_earlier_than_its_time() {
    let env = Env::start().await;
    let (stop, run) = spawn(worker(&env.store, "w", 1));
    let spec = TaskSpec::new("q", "add")
        .payload(json!({"a": 1, "b": 1}))
        .delay(Duration::from_millis(300));
    assert_eq!(
        env.client.submit(&spec).await.expect("submit"),
        ballast::Placement::Scheduled
    );
    let t = env.task_record("q", &spec.id).await;
    assert_eq!(
        (t.state, t.run_at),
        (TaskState::Scheduled, Some(t.submitted_at + 300))
    );
    let t = env
        .client
        .wait("q", &spec.id, Duration::from_secs(10))
        .await
        .expect("done");
    assert_eq!(t.state, TaskState::Succeeded);
    assert!(t.started_at.expect("started") - t.submitted_at >= 300);
    stop_worker(stop, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_a_task_wakes_an_idle_promotion_loop() {
    let env = Env::start().await;
    // The loop's idle wait is an hour: the task below can only be promoted in time if
    // scheduling it wakes the loop, which then sleeps until its time.
    let config = WorkerConfig {
        promote_period: Duration::from_secs(3600),
        ..FAST
    };
    let (stop, run) = spawn(worker(&env.store, "w", 1).config(config));
    wait_registered(&env, "w").await;
    let delayed = |a: i64| {
        TaskSpec::new("q", "add")
            .payload(json!({"a": a, "b": 3}))
            .delay(Duration::from_millis(200))
    };
    // Once a first delayed task has run, the step that promoted it found nothing more
    // scheduled: the loop is now in its hour-long idle wait, whenever it started.
    let first = delayed(1);
    env.client.submit(&first).await.expect("submit");
    let t = env.client.wait("q", &first.id, WAIT).await.expect("first");
    assert_eq!(t.state, TaskState::Succeeded);
    let spec = delayed(2);
    env.client.submit(&spec).await.expect("submit");
    let t = env
        .client
        .wait("q", &spec.id, WAIT)
        .await
        .expect("promoted long before the idle wait ends");
    assert_eq!((t.state, t.result), (TaskState::Succeeded, Some(json!(5))));
    stop_worker(stop, run).await;
}

#[test]
fn backoff_doubles_with_bounded_jitter_and_stops_at_the_maximum() {
    let c = WorkerConfig {
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_secs(2),
        ..WorkerConfig::default()
    };
    for _ in 0..200 {
        let d: Vec<Duration> = (1..=8).map(|a| c.backoff(a)).collect();
        for (k, b) in d.iter().enumerate() {
            let floor = (Duration::from_millis(100) * (1 << k)).min(Duration::from_secs(2));
            assert!(
                *b >= floor && *b <= floor.mul_f64(1.25),
                "attempt {}: {b:?}",
                k + 1
            );
        }
        assert!(d.windows(2).take(4).all(|w| w[1] > w[0]), "{d:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_cancelled_on_request_stops_and_frees_its_worker() {
    let env = Env::start().await;
    let (stop, run) = spawn(worker(&env.store, "w", 1));
    let hang = TaskSpec::new("q", "hang");
    env.client.submit(&hang).await.expect("submit");
    wait_running(&env, &hang.id).await;
    env.store.cancel_task("q", &hang.id).await.expect("cancel");
    let t = env
        .client
        .wait("q", &hang.id, Duration::from_secs(10))
        .await
        .expect("done");
    assert_eq!(
        (t.state, t.error.as_deref()),
        (TaskState::Cancelled, Some("cancelled while running"))
    );
    // The worker's unit is free again: the next task runs.
    let next = TaskSpec::new("q", "add").payload(json!({"a": 1, "b": 2}));
    env.client.submit(&next).await.expect("submit");
    let n = env
        .client
        .wait("q", &next.id, Duration::from_secs(10))
        .await
        .expect("next");
    assert_eq!(n.state, TaskState::Succeeded);
    stop_worker(stop, run).await;
    env.assert_sound("q").await;
}

#[tokio::test]
async fn a_worker_refuses_a_redis_that_evicts_keys() {
    let mut env = Env::start_with(&["--maxmemory-policy", "allkeys-lru"]).await;
    let e = worker(&env.store, "w", 1)
        .run(async {})
        .await
        .expect_err("unsafe");
    assert!(matches!(e, ballast::Error::UnsafeRedis(_)), "{e}");
    assert!(
        e.to_string().contains("maxmemory-policy is allkeys-lru"),
        "{e}"
    );
    assert!(env.keys().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_grace_period_unfinished_work_is_handed_back_without_using_an_attempt() {
    let env = Env::start().await;
    let config = WorkerConfig {
        grace_period: Duration::from_millis(200),
        ..FAST
    };
    let (stop, run) = spawn(worker(&env.store, "w", 1).config(config));
    let hang = TaskSpec::new("q", "hang");
    env.client.submit(&hang).await.expect("submit");
    wait_running(&env, &hang.id).await;
    stop_worker(stop, run).await;
    let t = env.task_record("q", &hang.id).await;
    assert_eq!(
        (t.state, t.attempts, t.runs, t.requeues),
        (TaskState::Pending, 0, 1, 1)
    );
    assert!(env.store.workers("q").await.expect("workers").is_empty());
    env.assert_sound("q").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_shuts_down_without_redis_and_its_task_is_not_lost() {
    let mut env = Env::start_with(&["--appendonly", "yes"]).await;
    let config = WorkerConfig {
        grace_period: Duration::from_millis(500),
        ..FAST
    };
    // The handler ends only once Redis is gone, so its report cannot get through first.
    let release = Arc::new(Notify::new());
    let r = Arc::clone(&release);
    let w = worker(&env.store, "w", 1).config(config).handle(
        "gate",
        move |_: TaskContext, _: Value| {
            let r = Arc::clone(&r);
            async move {
                r.notified().await;
                Ok::<_, TaskError>("done")
            }
        },
    );
    let (stop, run) = spawn(w);
    let gated = TaskSpec::new("q", "gate");
    env.client.submit(&gated).await.expect("submit");
    wait_running(&env, &gated.id).await;
    // Redis goes away for good while the task runs; then the worker is told to stop. It
    // can neither report nor leave, and must still end once its grace period is over.
    env.stop_redis();
    release.notify_one();
    stop.send(()).expect("stop");
    tokio::time::timeout(WAIT, run)
        .await
        .expect("the worker ended without Redis")
        .expect("join")
        .expect("run");
    // Nothing is lost: the task is still the worker's, and recovery hands it back.
    env.restart_redis();
    let t = env.task_record("q", &gated.id).await;
    assert_eq!(
        (t.state, t.worker.as_deref()),
        (TaskState::Running, Some("w"))
    );
    env.store
        .recover_workers("q", Duration::ZERO)
        .await
        .expect("recover");
    let t = env.task_record("q", &gated.id).await;
    assert_eq!((t.state, t.attempts), (TaskState::Pending, 0));
    env.assert_sound("q").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_goes_on_across_a_redis_restart() {
    let mut env = Env::start_with(&["--appendonly", "yes"]).await;
    let (stop_a, run_a) = spawn(worker(&env.store, "a", 2));
    let (stop_b, run_b) = spawn(worker(&env.store, "b", 2));
    let specs: Vec<TaskSpec> = (0..60)
        .map(|_| TaskSpec::new("q", "nap").payload(json!(30)))
        .collect();
    env.client.submit_many(&specs).await.expect("submit");
    let store = &env.store;
    eventually("10 tasks have succeeded", WAIT, || async move {
        store.counts("q").await.expect("counts").succeeded >= 10
    })
    .await;
    env.restart_redis();
    let ids: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
    let r = env
        .client
        .wait_all("q", &ids, Duration::from_secs(60))
        .await
        .expect("all done");
    assert!(
        r.iter().all(|t| t.state == TaskState::Succeeded),
        "{:?}",
        r.iter().map(|t| t.state).collect::<Vec<_>>()
    );
    stop_a.send(()).expect("stop");
    stop_b.send(()).expect("stop");
    run_a.await.expect("join").expect("run a");
    run_b.await.expect("join").expect("run b");
    env.assert_sound("q").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_right_after_a_redis_restart_goes_through() {
    let mut env = Env::start_with(&["--appendonly", "yes"]).await;
    let spec = TaskSpec::new("q", "add");
    env.client.submit(&spec).await.expect("submit");
    env.restart_redis();
    // The first call meets the dropped connection; the store tries again behind it.
    let c = env.store.counts("q").await.expect("counts after restart");
    assert_eq!(c.pending, 1);
    let again = TaskSpec::new("q", "add");
    assert_eq!(
        env.client.submit(&again).await.expect("submit"),
        ballast::Placement::Pending
    );
}
