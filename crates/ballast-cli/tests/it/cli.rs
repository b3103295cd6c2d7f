//! Tests of the `ballast` binary: real worker processes, the submit command's refusals,
//! and the JSON the inspection commands print.

use std::collections::HashMap;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ballast::{TaskRecord, TaskState};
use serde_json::Value;

use crate::harness::{epoch_of, eventually, Env, WAIT};

const BIN: &str = env!("CARGO_BIN_EXE_ballast");

/// A `ballast worker` process, stopped with SIGTERM (and reaped) on drop.
pub(crate) struct WorkerProc(pub(crate) Child);

impl Drop for WorkerProc {
    fn drop(&mut self) {
        // A process killed earlier is already gone: kill has nothing to say then.
        let _ = Command::new("kill")
            .arg(self.0.id().to_string())
            .stderr(Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

pub(crate) fn ballast(env: &Env, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--redis", &env.url])
        .args(args)
        .output()
        .expect("run ballast")
}

pub(crate) fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "ballast failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Starts `ballast worker` and waits until it has registered.
async fn worker(env: &Env, queue: &str, id: &str, capacity: i64, tags: &[&str]) -> WorkerProc {
    worker_with(env, queue, id, capacity, tags, &[]).await
}

/// Heartbeat, dead-after and recovery period for the fault tests.
pub(crate) const FAST: [&str; 6] = [
    "--heartbeat",
    "100ms",
    "--dead-after",
    "1s",
    "--recovery-period",
    "100ms",
];

/// Starts `ballast worker` with `extra` arguments and waits until it has registered.
pub(crate) async fn worker_with(
    env: &Env,
    queue: &str,
    id: &str,
    capacity: i64,
    tags: &[&str],
    extra: &[&str],
) -> WorkerProc {
    let cap = capacity.to_string();
    let mut args = vec!["--redis", &env.url, "worker", "--queue", queue, "--id", id];
    args.extend(["--capacity", &cap]);
    for t in tags {
        args.extend(["--tag", t]);
    }
    args.extend(extra);
    let child = Command::new(BIN)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker");
    let mut proc = WorkerProc(child);
    let what = format!("worker {id} has registered");
    eventually(&what, WAIT, || {
        if let Ok(Some(status)) = proc.0.try_wait() {
            panic!("worker {id} exited before it registered: {status}");
        }
        async move { env.epoch(queue, id).await > 0 }
    })
    .await;
    proc
}

/// Submits `lines` (JSON objects) with `submit --file`, returns the printed ids.
pub(crate) fn submit_file(env: &Env, queue: &str, lines: &[String]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.jsonl");
    std::fs::write(&path, lines.join("\n")).expect("write");
    let out = stdout(&ballast(
        env,
        &[
            "submit",
            "--queue",
            queue,
            "--file",
            path.to_str().expect("path"),
        ],
    ));
    out.lines().map(String::from).collect()
}

pub(crate) async fn wait_done(env: &Env, queue: &str, ids: &[String]) -> Vec<TaskRecord> {
    env.client
        .wait_all(queue, ids, Duration::from_secs(60))
        .await
        .expect("tasks finish")
}

/// The most cost each worker ever ran at once, from the task records (finish before start
/// at the same millisecond).
fn peak_load(records: &[TaskRecord]) -> HashMap<String, i64> {
    let mut events: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    for t in records {
        let (Some(w), Some(s), Some(f)) = (&t.worker, t.started_at, t.finished_at) else {
            panic!("task {} has no run interval", t.id);
        };
        let e = events.entry(w.clone()).or_default();
        e.push((s, t.cost));
        e.push((f, -t.cost));
    }
    events
        .into_iter()
        .map(|(w, mut e)| {
            e.sort();
            let (mut load, mut peak) = (0, 0);
            for (_, d) in e {
                load += d;
                peak = peak.max(load);
            }
            (w, peak)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_follows_capacity_across_worker_processes() {
    let env = Env::start().await;
    let _w: Vec<WorkerProc> = [(1, "c1"), (2, "c2"), (4, "c4")]
        .iter()
        .map(|(c, id)| futures_block(worker(&env, "q", id, *c, &[])))
        .collect();
    let lines: Vec<String> = (0..70)
        .map(|_| r#"{"kind":"sleep","payload":{"ms":40}}"#.to_string())
        .collect();
    let ids = submit_file(&env, "q", &lines);
    assert_eq!(ids.len(), 70);
    let records = wait_done(&env, "q", &ids).await;
    assert!(records.iter().all(|t| t.state == TaskState::Succeeded));
    let mut count: HashMap<&str, usize> = HashMap::new();
    for t in &records {
        *count
            .entry(t.worker.as_deref().expect("worker"))
            .or_default() += 1;
    }
    // Orders, not ratios: every worker ran some tasks (the submit alone fills all three),
    // and the capacity-4 worker ran more than the capacity-1 one.
    let ran = |id: &str| count.get(id).copied().unwrap_or(0);
    assert!(
        ran("c1") > 0 && ran("c2") > 0 && ran("c4") > ran("c1"),
        "tasks per worker: {count:?}"
    );
    let peak = peak_load(&records);
    assert!(
        peak["c1"] <= 1 && peak["c2"] <= 2 && peak["c4"] <= 4,
        "{peak:?}"
    );
    env.assert_sound("q").await;
}

/// Runs a future to completion from sync code inside the multi-thread test runtime.
fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_and_tags_choose_the_worker_and_a_tagged_task_waits() {
    let env = Env::start().await;
    let _w1 = worker(&env, "q", "c1", 1, &[]).await;
    let _w2 = worker(&env, "q", "c2", 2, &[]).await;
    let _w4 = worker(&env, "q", "c4", 4, &[]).await;
    let gpu = stdout(&ballast(
        &env,
        &[
            "submit",
            "--queue",
            "q",
            "--kind",
            "echo",
            "--payload",
            "{\"x\":1}",
            "--tag",
            "gpu",
        ],
    ));
    let gpu = gpu.trim().to_string();
    let big: Vec<String> = (0..6)
        .map(|_| r#"{"kind":"sleep","payload":{"ms":20},"cost":4}"#.to_string())
        .collect();
    let big = submit_file(&env, "q", &big);
    let mixed: Vec<String> = (0..12)
        .map(|i| {
            format!(
                r#"{{"kind":"sleep","payload":{{"ms":20}},"cost":{}}}"#,
                1 + i % 2
            )
        })
        .collect();
    let mixed = submit_file(&env, "q", &mixed);
    let records = wait_done(&env, "q", &big).await;
    assert!(
        records.iter().all(|t| t.worker.as_deref() == Some("c4")),
        "cost 4 ran elsewhere"
    );
    for t in wait_done(&env, "q", &mixed).await {
        if t.cost == 2 {
            assert_ne!(t.worker.as_deref(), Some("c1"), "cost 2 on capacity 1");
        }
    }
    // Every other task is done; the gpu task is still waiting, on no worker.
    let t = env.client.task(&gpu).await.expect("gpu task");
    assert_eq!((t.state, t.worker), (TaskState::Pending, None));
    let _g = worker(&env, "q", "g1", 1, &["gpu"]).await;
    let t = wait_done(&env, "q", std::slice::from_ref(&gpu))
        .await
        .remove(0);
    assert_eq!(t.state, TaskState::Succeeded);
    assert_eq!(t.worker.as_deref(), Some("g1"));
    assert_eq!(t.result, Some(serde_json::json!({"x": 1})));
    env.assert_sound("q").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_high_priority_tasks_start_before_waiting_low_ones() {
    let env = Env::start().await;
    let low: Vec<String> = (0..20)
        .map(|_| r#"{"kind":"sleep","payload":{"ms":30},"priority":-5}"#.to_string())
        .collect();
    let low = submit_file(&env, "q", &low);
    let high: Vec<String> = (0..3)
        .map(|_| r#"{"kind":"sleep","payload":{"ms":30},"priority":50}"#.to_string())
        .collect();
    let high = submit_file(&env, "q", &high);
    // The worker starts only once both batches wait: how fast a process spawns cannot
    // decide how many low tasks ran before the high ones arrived.
    let _w = worker(&env, "q", "solo", 1, &[]).await;
    let high = wait_done(&env, "q", &high).await;
    let low = wait_done(&env, "q", &low).await;
    let last_high_start = high
        .iter()
        .filter_map(|t| t.started_at)
        .max()
        .expect("start");
    // Both batches waited in pending when the one worker came: every low task starts after
    // all three high ones.
    for t in &low {
        assert!(
            t.started_at.expect("started") >= last_high_start,
            "low {} overtook",
            t.id
        );
    }
}

#[tokio::test]
async fn submit_refuses_bad_input_and_writes_nothing() {
    let mut env = Env::start().await;
    let long = "q".repeat(65);
    let big = format!("\"{}\"", "x".repeat(2000));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--queue", "a}b", "--kind", "noop"], "invalid queue"),
        (vec!["--queue", "a b", "--kind", "noop"], "invalid queue"),
        (vec!["--queue", &long, "--kind", "noop"], "invalid queue"),
        (
            vec!["--queue", "q", "--kind", "noop", "--cost", "0"],
            "invalid cost",
        ),
        (
            vec!["--queue", "q", "--kind", "noop", "--cost", "-1"],
            "invalid cost",
        ),
        (
            vec!["--queue", "q", "--kind", "noop", "--payload", "{nope"],
            "invalid payload",
        ),
        (
            vec![
                "--queue",
                "q",
                "--kind",
                "noop",
                "--payload",
                &big,
                "--max-payload-bytes",
                "1024",
            ],
            "invalid payload",
        ),
        (
            vec!["--queue", "q", "--kind", "noop", "--priority", "5000"],
            "invalid priority",
        ),
        (vec!["--queue", "q", "--kind", "no op"], "invalid kind"),
    ];
    for (args, want) in cases {
        let mut full = vec!["submit"];
        full.extend(&args);
        let out = ballast(&env, &full);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
    assert!(
        env.keys().await.is_empty(),
        "a refused submit wrote to redis"
    );
}

#[tokio::test]
async fn submit_file_with_one_bad_line_writes_nothing() {
    let mut env = Env::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.jsonl");
    std::fs::write(
        &path,
        "{\"kind\":\"noop\"}\n{\"kind\":\"noop\",\"cost\":0}\n",
    )
    .expect("write");
    let out = ballast(
        &env,
        &[
            "submit",
            "--queue",
            "q",
            "--file",
            path.to_str().expect("p"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(":2: invalid cost"), "{err}");
    assert!(env.keys().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspection_commands_print_stable_json() {
    let env = Env::start().await;
    let w = worker(&env, "q", "w1", 2, &["ssd"]).await;
    let id = stdout(&ballast(
        &env,
        &[
            "submit",
            "--queue",
            "q",
            "--kind",
            "fail",
            "--payload",
            r#"{"message":"boom"}"#,
            "--max-attempts",
            "1",
        ],
    ));
    let id = id.trim();
    wait_done(&env, "q", &[id.to_string()]).await;

    let t: Value =
        serde_json::from_str(&stdout(&ballast(&env, &["task", id, "--json"]))).expect("json");
    assert_eq!(t["state"], "failed");
    assert_eq!(t["error"], "boom");
    assert_eq!(t["worker"], "w1");
    for f in ["submitted_at", "started_at", "finished_at"] {
        assert!(t[f].as_i64().is_some_and(|v| v > 0), "{f}: {t}");
    }
    let human = stdout(&ballast(&env, &["task", id]));
    assert!(human.contains("state         failed"), "{human}");

    let list: Value = serde_json::from_str(&stdout(&ballast(
        &env,
        &["tasks", "--queue", "q", "--state", "failed", "--json"],
    )))
    .expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(1));

    let s: Value =
        serde_json::from_str(&stdout(&ballast(&env, &["status", "--json"]))).expect("json");
    let q = &s["queues"][0];
    assert_eq!(q["queue"], "q");
    assert_eq!(q["counts"]["failed"], 1);
    assert_eq!(q["workers"][0]["id"], "w1");
    assert_eq!(q["workers"][0]["capacity"], 2);
    assert_eq!(q["workers"][0]["tags"], serde_json::json!(["ssd"]));
    assert_eq!(q["workers"][0]["finished"], 1);

    // SIGTERM: the worker leaves the queue.
    drop(w);
    assert!(env.store.workers("q").await.expect("workers").is_empty());
    let missing = ballast(&env, &["task", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
}

/// Waits until task `id` is running on worker `w`.
async fn running_on(env: &Env, queue: &str, id: &str, w: &str) {
    eventually(&format!("task {id} runs on {w}"), WAIT, || async move {
        let t = env.task_record(queue, id).await;
        if t.state == TaskState::Running && t.worker.as_deref() == Some(w) {
            return true;
        }
        assert!(
            !t.state.is_terminal(),
            "task {id} finished before it ran on {w}: {t:?}"
        );
        false
    })
    .await;
}

pub(crate) fn signal(p: &WorkerProc, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &p.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_tasks_run_on_another_worker() {
    let mut env = Env::start().await;
    let mut a = worker_with(&env, "q", "a", 2, &[], &FAST).await;
    let lines: Vec<String> = (0..2)
        .map(|_| r#"{"kind":"sleep","payload":{"ms":600}}"#.to_string())
        .collect();
    let ids = submit_file(&env, "q", &lines);
    for id in &ids {
        running_on(&env, "q", id, "a").await;
    }
    let _b = worker_with(&env, "q", "b", 2, &[], &FAST).await;
    a.0.kill().expect("kill -9");
    let killed_at = env.now_ms().await;
    let records = wait_done(&env, "q", &ids).await;
    for t in &records {
        assert_eq!(
            (t.state, t.worker.as_deref()),
            (TaskState::Succeeded, Some("b"))
        );
        // One run cut short by the crash (its attempt given back), one that succeeded.
        assert_eq!((t.runs, t.attempts, t.requeues), (2, 1, 1));
        eprintln!(
            "restarted {} ms after the kill",
            t.started_at.unwrap_or(0) - killed_at
        );
    }
    let log = env.store.recoveries("q").await.expect("log");
    assert_eq!(
        (log[0]["worker"].as_str(), log[0]["tasks_requeued"].as_i64()),
        (Some("a"), Some(2))
    );
    env.assert_sound("q").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_loses_its_task_and_its_late_result_is_refused() {
    let env = Env::start().await;
    let a = worker_with(&env, "q", "a", 1, &[], &FAST).await;
    let id = stdout(&ballast(
        &env,
        &[
            "submit",
            "--queue",
            "q",
            "--kind",
            "sleep",
            "--payload",
            r#"{"ms":1500}"#,
        ],
    ));
    let id = id.trim().to_string();
    running_on(&env, "q", &id, "a").await;
    let _b = worker_with(&env, "q", "b", 1, &[], &FAST).await;
    let first_epoch = epoch_of(&env.store, "q", "a").await;
    assert!(first_epoch > 0, "a is registered");
    signal(&a, "-STOP");
    running_on(&env, "q", &id, "b").await;
    signal(&a, "-CONT");
    let t = wait_done(&env, "q", std::slice::from_ref(&id))
        .await
        .remove(0);
    assert_eq!(
        (t.state, t.worker.as_deref()),
        (TaskState::Succeeded, Some("b"))
    );
    assert_eq!((t.runs, t.attempts), (2, 1));
    assert_eq!(env.store.counts("q").await.expect("counts").succeeded, 1);
    // The paused process learns it was declared dead and joins again under a new epoch.
    let store = &env.store;
    eventually("a joins again under a new epoch", WAIT, || async move {
        epoch_of(store, "q", "a").await > first_epoch
    })
    .await;
    env.assert_sound("q").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_shorter_than_half_of_dead_after_requeues_nothing() {
    let env = Env::start().await;
    let a = worker_with(
        &env,
        "q",
        "a",
        1,
        &[],
        &[
            "--heartbeat",
            "100ms",
            "--dead-after",
            "2s",
            "--recovery-period",
            "100ms",
        ],
    )
    .await;
    let _b = worker_with(
        &env,
        "q",
        "b",
        1,
        &[],
        &[
            "--heartbeat",
            "100ms",
            "--dead-after",
            "2s",
            "--recovery-period",
            "100ms",
        ],
    )
    .await;
    let lines = vec![r#"{"kind":"sleep","payload":{"ms":300}}"#.to_string()];
    let ids = submit_file(&env, "q", &lines);
    let on = env.task_record("q", &ids[0]).await.worker.expect("placed");
    let paused = if on == "a" { &a } else { &_b };
    signal(paused, "-STOP");
    // The pause itself: 0.5 s, a quarter of dead-after.
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(paused, "-CONT");
    let t = wait_done(&env, "q", &ids).await.remove(0);
    assert_eq!(
        (t.state, t.worker.as_deref()),
        (TaskState::Succeeded, Some(on.as_str()))
    );
    assert_eq!((t.runs, t.requeues), (1, 0));
    assert!(env.store.recoveries("q").await.expect("log").is_empty());
}

/// Fast retries for the failure tests.
const RETRY_FAST: [&str; 4] = ["--retry-base", "100ms", "--promote-period", "20ms"];

fn submit_one(env: &Env, args: &[&str]) -> String {
    let mut full = vec!["submit", "--queue", "q"];
    full.extend(args);
    stdout(&ballast(env, &full)).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_listed_retried_and_purged() {
    let env = Env::start().await;
    let _w = worker_with(&env, "q", "w", 1, &[], &RETRY_FAST).await;
    let id = submit_one(
        &env,
        &["--kind", "fail", "--payload", r#"{"message":"nope"}"#],
    );
    let t = wait_done(&env, "q", std::slice::from_ref(&id))
        .await
        .remove(0);
    assert_eq!((t.state, t.attempts), (TaskState::Failed, 3));

    let ls: Value = serde_json::from_str(&stdout(&ballast(
        &env,
        &["dead", "ls", "--queue", "q", "--json"],
    )))
    .expect("json");
    assert_eq!(ls[0]["id"], id.as_str());
    assert_eq!(ls[0]["error"], "nope");
    assert_eq!(ls[0]["history"].as_array().map(Vec::len), Some(3));
    let human = stdout(&ballast(&env, &["dead", "show", "--queue", "q", &id]));
    assert!(human.contains("attempt 2: retry on w at "), "{human}");
    assert!(human.contains("attempt 3: failed on w at "), "{human}");

    let out = stdout(&ballast(&env, &["dead", "retry", "--queue", "q", &id]));
    assert_eq!(out.trim(), "1 dead letters sent back to pending");
    // It runs again: three fresh attempts, failing again, six entries of history in all.
    let (client, id_ref) = (&env.client, id.as_str());
    eventually("the retried task fails again", WAIT, || async move {
        let t = client.task(id_ref).await.expect("task");
        t.state == TaskState::Failed && t.history.len() == 6
    })
    .await;
    let again = env.client.task(&id).await.expect("task");
    assert_eq!(
        (again.state, again.history.len(), again.attempts),
        (TaskState::Failed, 6, 3)
    );
    let out = stdout(&ballast(&env, &["dead", "purge", "--queue", "q", "--all"]));
    assert_eq!(out.trim(), "1 dead letters purged");
    assert!(env.client.task(&id).await.is_err());
    env.assert_sound("q").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_fails_the_attempt_and_cancel_stops_a_running_task() {
    let env = Env::start().await;
    let _w = worker_with(&env, "q", "w", 2, &[], &FAST).await;
    let slow = submit_one(
        &env,
        &[
            "--kind",
            "sleep",
            "--payload",
            r#"{"ms":5000}"#,
            "--timeout",
            "300ms",
            "--max-attempts",
            "1",
        ],
    );
    let long = submit_one(&env, &["--kind", "sleep", "--payload", r#"{"ms":60000}"#]);
    let t = wait_done(&env, "q", std::slice::from_ref(&slow))
        .await
        .remove(0);
    assert_eq!(
        (t.state, t.error.as_deref()),
        (TaskState::Failed, Some("timed out after 300 ms"))
    );
    let ran = t.finished_at.expect("f") - t.started_at.expect("s");
    assert!((300..5000).contains(&ran), "ran {ran} ms");

    running_on(&env, "q", &long, "w").await;
    let out = stdout(&ballast(&env, &["cancel", &long]));
    assert!(
        out.contains("running on w, which is told to stop it"),
        "{out}"
    );
    let t = wait_done(&env, "q", std::slice::from_ref(&long))
        .await
        .remove(0);
    assert_eq!(t.state, TaskState::Cancelled);
    let again = ballast(&env, &["cancel", &long]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already ended: cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_submit_waits_for_its_time() {
    let env = Env::start().await;
    let _w = worker_with(&env, "q", "w", 1, &[], &RETRY_FAST).await;
    let id = submit_one(&env, &["--kind", "noop", "--delay", "400ms"]);
    let t = env.client.task(&id).await.expect("task");
    assert_eq!(t.state, TaskState::Scheduled);
    let t = wait_done(&env, "q", std::slice::from_ref(&id))
        .await
        .remove(0);
    let waited = t.started_at.expect("s") - t.submitted_at;
    assert!(waited >= 400, "started {waited} ms after submit");
    // An absolute time in the past runs at once; a bad one is refused.
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let id = submit_one(&env, &["--kind", "noop", "--at", &now]);
    assert_eq!(
        wait_done(&env, "q", std::slice::from_ref(&id)).await[0].state,
        TaskState::Succeeded
    );
    let bad = ballast(
        &env,
        &[
            "submit", "--queue", "q", "--kind", "noop", "--at", "tomorrow",
        ],
    );
    assert!(!bad.status.success());
    assert_eq!(String::from_utf8_lossy(&bad.stderr).lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_failing_twice_succeeds_on_its_third_attempt_after_growing_gaps() {
    let env = Env::start().await;
    let _w = worker_with(&env, "q", "w", 1, &[], &RETRY_FAST).await;
    let id = submit_one(&env, &["--kind", "flaky", "--payload", r#"{"failures":2}"#]);
    let t = wait_done(&env, "q", std::slice::from_ref(&id))
        .await
        .remove(0);
    assert_eq!((t.state, t.attempts), (TaskState::Succeeded, 3));
    assert_eq!(
        t.result,
        Some(serde_json::json!({"succeeded_on_attempt": 3}))
    );
    let h = &t.history;
    let gap = |i: usize| {
        h[i + 1]["started_at"].as_i64().expect("s") - h[i]["finished_at"].as_i64().expect("f")
    };
    // Backoff 100 ms, then 200 ms, each with up to 25% jitter: the floors are guaranteed.
    assert!(
        gap(0) >= 100 && gap(1) >= 200,
        "gaps {} and {}",
        gap(0),
        gap(1)
    );
}

#[test]
fn the_bench_runs_every_suite_and_prints_json() {
    // Sizes only: speed is for `ballast bench` to show, not for a test to assert.
    let out = Command::new(BIN)
        .args(["bench", "--quick", "--json"])
        .output()
        .expect("run bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    for suite in ["submit", "drain", "latency", "placement", "balance"] {
        assert!(v[suite].is_object(), "{suite} missing: {v}");
    }
    assert_eq!(v["submit"]["rows"][0]["tasks"], 2000);
    assert_eq!(v["drain"]["rows"][0]["tasks"], 2000);
}
