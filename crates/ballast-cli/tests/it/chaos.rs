//! The chaos test: real worker processes killed with SIGKILL, paused past dead-after with
//! SIGSTOP/SIGCONT, and Redis restarted (SHUTDOWN and start, AOF on), on a seeded schedule.
//! Then the ledger: every task reached a final state exactly once, every run beyond the
//! first is explained by a fault, and no worker's assigned-cost counter drifted.
//!
//! The short run is part of `make test`; the long one (the issue's 2,000 tasks with a kill
//! every 2 s) runs with `cargo test -p ballast-cli --test it -- --ignored chaos`.

use std::time::Duration;

use ballast::TaskState;

use crate::cli::{signal, submit_file, wait_done, worker_with, WorkerProc, FAST};
use crate::harness::{eventually, Env, WAIT};

/// A small deterministic generator, so a failing schedule can be replayed from its seed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

struct Plan {
    seed: u64,
    tasks: usize,
    workers: usize,
    /// Time between faults.
    every: Duration,
    /// How many faults, one of them a Redis restart.
    faults: usize,
}

async fn chaos(plan: Plan) {
    let mut env = Env::start_with(&["--appendonly", "yes"]).await;
    let mut rng = Lcg(plan.seed);
    let mut next_id = 0;
    let mut procs: Vec<(String, WorkerProc)> = Vec::new();
    for _ in 0..plan.workers {
        let id = format!("w{next_id}");
        next_id += 1;
        procs.push((id.clone(), worker_with(&env, "q", &id, 2, &[], &FAST).await));
    }
    let lines: Vec<String> = (0..plan.tasks)
        .map(|_| {
            format!(
                r#"{{"kind":"sleep","payload":{{"ms":{}}}}}"#,
                20 + rng.next(61)
            )
        })
        .collect();
    let ids = submit_file(&env, "q", &lines);
    assert_eq!(ids.len(), plan.tasks);

    let restart_at = rng.next(plan.faults as u64) as usize;
    let (mut kills, mut pauses) = (0, 0);
    for f in 0..plan.faults {
        tokio::time::sleep(plan.every).await;
        // The first call after a restart may meet the dropped connection; the next one
        // goes through the reconnected one.
        let done = match env.store.counts("q").await {
            Ok(c) => c.succeeded as usize == plan.tasks,
            Err(_) => false,
        };
        if done {
            break;
        }
        if f == restart_at {
            env.restart_redis();
            continue;
        }
        let victim = rng.next(procs.len() as u64) as usize;
        if rng.next(3) < 2 {
            // kill -9 and start a fresh worker in its place.
            let (_, mut p) = procs.remove(victim);
            p.0.kill().expect("kill -9");
            let _ = p.0.wait();
            kills += 1;
            let id = format!("w{next_id}");
            next_id += 1;
            procs.push((id.clone(), worker_with(&env, "q", &id, 2, &[], &FAST).await));
        } else {
            // Pause past dead-after (1 s), then let it come back fenced.
            signal(&procs[victim].1, "-STOP");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            signal(&procs[victim].1, "-CONT");
            pauses += 1;
        }
    }

    let records = wait_done(&env, "q", &ids).await;
    // Every task succeeded exactly once: one success in its history, and the queue counts
    // one success per task.
    for t in &records {
        assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
        let wins = t
            .history
            .iter()
            .filter(|h| h["outcome"] == "succeeded")
            .count();
        assert_eq!(wins, 1, "task {} recorded {wins} successes", t.id);
    }
    // Every task is done and the workers still run: no counter may have drifted. First
    // the registrations settle: a killed worker is declared dead (within dead-after) and a
    // paused one that was declared dead registers again, so that the check below neither
    // races them nor misses a worker.
    let mut live: Vec<String> = procs.iter().map(|(id, _)| id.clone()).collect();
    live.sort();
    let (store, live_ref) = (&env.store, &live);
    eventually(
        "the registered workers are the running processes",
        WAIT,
        || async move {
            let mut ids: Vec<String> = store
                .workers("q")
                .await
                .expect("workers")
                .into_iter()
                .map(|w| w.id)
                .collect();
            ids.sort();
            ids == *live_ref
        },
    )
    .await;
    env.assert_sound("q").await;
    let workers = env.store.workers("q").await.expect("workers");
    assert!(!workers.is_empty(), "no worker is registered");
    for w in &workers {
        assert_eq!(w.assigned, 0, "worker {} kept {} units", w.id, w.assigned);
    }
    let counts = env.store.counts("q").await.expect("counts");
    assert_eq!(counts.succeeded as usize, plan.tasks);
    assert_eq!(
        (
            counts.pending,
            counts.assigned,
            counts.running,
            counts.scheduled
        ),
        (0, 0, 0, 0)
    );
    // Runs beyond the first are explained by faults: each is a run cut short when its
    // worker was declared dead, and the recovery log counts what it handed back.
    let extra: i64 = records.iter().map(|t| t.runs - 1).sum();
    let handed_back: i64 = env
        .store
        .recoveries("q")
        .await
        .expect("log")
        .iter()
        .filter_map(|r| r["tasks_requeued"].as_i64())
        .sum();
    let lost: i64 = records
        .iter()
        .flat_map(|t| t.history.iter())
        .filter(|h| h["outcome"] == "lost")
        .count() as i64;
    assert_eq!(extra, lost, "every extra run is a run recorded as lost");
    assert!(
        extra <= handed_back,
        "{extra} extra runs, {handed_back} tasks handed back"
    );
    eprintln!(
        "chaos seed {}: {} tasks, {kills} kills, {pauses} pauses, 1 restart, {extra} extra runs, {handed_back} handed back",
        plan.seed, plan.tasks
    );
    // The workers leave, and the queue is still sound.
    drop(procs);
    env.assert_sound("q").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_short() {
    chaos(Plan {
        seed: 7,
        tasks: 600,
        workers: 4,
        every: Duration::from_millis(300),
        faults: 8,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 2,000 tasks with a fault every 2 s; run with --ignored"]
async fn chaos_long() {
    chaos(Plan {
        seed: 2026,
        tasks: 2000,
        workers: 4,
        every: Duration::from_secs(2),
        faults: 60,
    })
    .await;
}
