//! Tests of `Store::recover_workers` (recover_workers.lua): workers whose heartbeat is too old
//! are declared dead, their tasks go to the living without using attempts, a process that
//! was declared dead is fenced out, orphans are swept, and every step is idempotent.

use std::time::Duration;

use ballast::store::{Cancel, Finish, Leave, Outcome};
use ballast::{Placement, TaskState};
use redis::AsyncCommands;

use crate::harness::{qkey, task, Env};

const Q: &str = "jobs";
const DEAD_AFTER: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_dead_workers_tasks_go_to_the_living_without_using_attempts() {
    let mut env = Env::start().await;
    env.register(Q, "old", 2, &[]).await;
    let a = env.submit(task(Q, 1)).await;
    let b = env.submit(task(Q, 1)).await;
    let claimed = env.claim(Q, "old", 1).await;
    assert_eq!(claimed[0].id, a);
    env.register(Q, "new", 2, &[]).await;
    env.age_heartbeat(Q, "old", 10_000).await;

    let (dead, back) = recover(&env).await;
    assert_eq!((dead, back), (1, 2));

    // The dead worker is gone from every key; both tasks are assigned to the living one.
    for k in ["worker:old", "worker:old:inbox", "worker:old:tasks"] {
        let exists: bool = env.raw.exists(qkey(Q, k)).await.expect("exists");
        assert!(!exists, "{k} survived");
    }
    assert_eq!(env.smembers(Q, "workers").await, vec!["new".to_string()]);
    assert_eq!(env.zrange(Q, "heartbeats").await, vec!["new".to_string()]);
    assert_eq!(env.zrange(Q, "free").await, vec!["new".to_string()]);
    assert_eq!(env.zrange(Q, "cap").await, vec!["new".to_string()]);
    assert_eq!(env.inbox(Q, "new").await, vec![a.clone(), b.clone()]);
    let ta = env.task_hash(Q, &a).await;
    assert_eq!(
        (
            ta["state"].as_str(),
            ta["worker"].as_str(),
            ta["lease"].as_str()
        ),
        ("assigned", "new", "2")
    );
    // The run cut short gave its attempt back; runs and requeues tell what happened.
    assert_eq!(
        (
            ta["attempts"].as_str(),
            ta["runs"].as_str(),
            ta["requeues"].as_str()
        ),
        ("0", "1", "1")
    );
    let tb = env.task_hash(Q, &b).await;
    assert_eq!(tb["requeues"], "1");
    assert_eq!((tb["attempts"].as_str(), tb["runs"].as_str()), ("0", "0"));

    // Why, recorded.
    let log = env.store.recoveries(Q).await.expect("recoveries");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["worker"], "old");
    assert_eq!(log[0]["tasks_requeued"], 2);
    let reason = log[0]["reason"].as_str().expect("reason");
    assert!(reason.starts_with("no heartbeat for "), "{reason}");
    env.assert_sound(Q).await;

    // Idempotent: a second step finds nothing and changes nothing.
    let before = env.snapshot().await;
    let again = recover(&env).await;
    assert_eq!(again, (0, 0));
    assert_eq!(env.snapshot().await, before);
}

#[tokio::test]
async fn a_recent_heartbeat_is_not_dead() {
    let mut env = Env::start().await;
    env.register(Q, "w", 1, &[]).await;
    env.submit(task(Q, 1)).await;
    env.age_heartbeat(Q, "w", 2_400).await;
    let before = env.snapshot().await;
    let r = recover(&env).await;
    assert_eq!(r, (0, 0));
    // Nothing changed but the sweep's pacing key.
    let mut after = env.snapshot().await;
    assert!(after.remove(&qkey(Q, "sweep:lock")).is_some());
    assert_eq!(after, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_recoveries_hand_each_task_back_once() {
    let mut env = Env::start().await;
    env.register(Q, "old", 8, &[]).await;
    let specs: Vec<_> = (0..8).map(|_| task(Q, 1)).collect();
    env.client.submit_many(&specs).await.expect("submit");
    env.claim(Q, "old", 4).await;
    env.age_heartbeat(Q, "old", 60_000).await;
    let mut calls = Vec::new();
    for _ in 0..8 {
        let url = env.url.clone();
        calls.push(tokio::spawn(async move {
            let store = ballast::Store::connect(&url).await.expect("connect");
            store.recover_workers(Q, DEAD_AFTER).await.expect("recover")
        }));
    }
    let mut total = (0, 0);
    for c in calls {
        let (d, b) = c.await.expect("join");
        total = (total.0 + d, total.1 + b);
    }
    assert_eq!(total, (1, 8));
    assert_eq!(env.zrange(Q, "pending").await.len(), 8);
    for s in &specs {
        let t = env.task_hash(Q, &s.id).await;
        // No attempt used: given back by a run cut short, or never taken.
        let attempts = t["attempts"].as_str();
        assert_eq!(
            (t["state"].as_str(), t["requeues"].as_str(), attempts),
            ("pending", "1", "0")
        );
    }
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_worker_declared_dead_is_fenced_out() {
    let mut env = Env::start().await;
    env.register(Q, "paused", 1, &[]).await;
    let old_epoch = env.epoch(Q, "paused").await;
    let id = env.submit(task(Q, 1)).await;
    let stale = env.claim(Q, "paused", 1).await.remove(0);
    env.register(Q, "other", 1, &[]).await;
    env.age_heartbeat(Q, "paused", 10_000).await;
    // "paused" is declared dead and its task goes back (to "other").
    assert_eq!(recover(&env).await, (1, 1));
    let fresh = env.claim(Q, "other", 1).await.remove(0);
    assert_eq!((fresh.id.as_str(), fresh.lease), (id.as_str(), 2));

    // The paused process comes back: its result, heartbeat and claims are all refused.
    let before = env.snapshot().await;
    let late = env
        .store
        .finish_task(
            Q,
            "paused",
            old_epoch,
            &stale,
            &Outcome::Succeeded("\"late\"".into()),
            1,
        )
        .await
        .expect("finish");
    assert_eq!(late, Finish::Stale(vec![]));
    assert!(env
        .store
        .heartbeat_worker(Q, "paused", old_epoch)
        .await
        .expect("beat")
        .is_none());
    let none = env
        .store
        .claim_tasks(Q, "paused", old_epoch, &[], 1)
        .await
        .expect("claim");
    assert!(none.is_empty());
    assert_eq!(env.snapshot().await, before);

    // It registers again under a new epoch; the task has exactly one success, by `other`.
    env.register(Q, "paused", 1, &[]).await;
    assert!(env.epoch(Q, "paused").await > old_epoch);
    env.finish(Q, "other", &fresh, 0).await;
    let t = env.task_record(Q, &id).await;
    assert_eq!(
        (t.state, t.worker.as_deref(), t.runs, t.attempts),
        (TaskState::Succeeded, Some("other"), 2, 1)
    );
    assert_eq!(env.store.counts(Q).await.expect("counts").succeeded, 1);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_replaced_process_neither_claims_nor_leaves_for_its_successor() {
    let mut env = Env::start().await;
    env.register(Q, "w", 2, &[]).await;
    let old_epoch = env.epoch(Q, "w").await;
    env.submit(task(Q, 1)).await;
    let old_run = env.claim(Q, "w", 1).await.remove(0);
    // A new process takes the id over: the task goes back and is placed on it, and so is
    // a second one. Both wait in its inbox.
    env.store
        .register_worker(Q, "w", 2, &[], Duration::ZERO)
        .await
        .expect("takeover");
    env.submit(task(Q, 1)).await;
    assert_eq!(env.inbox(Q, "w").await.len(), 2);

    // The old process reports its run and asks for more, then shuts down: its report is
    // stale, it claims none of its successor's tasks, and its leaving changes nothing.
    let before = env.snapshot().await;
    let ok = Outcome::Succeeded("1".into());
    let late = env
        .store
        .finish_task(Q, "w", old_epoch, &old_run, &ok, 2)
        .await
        .expect("finish");
    assert_eq!(late, Finish::Stale(vec![]));
    for how in [Leave::Drain, Leave::Remove] {
        let left = env
            .store
            .leave_worker(Q, "w", old_epoch, how)
            .await
            .expect("leave");
        assert_eq!(left, None);
    }
    assert_eq!(env.snapshot().await, before);
    assert_eq!(env.claim(Q, "w", 2).await.len(), 2);
    env.assert_sound(Q).await;
}

/// Makes `w` vanish the way a hand-made DEL of its record would: its tasks then name a
/// worker nobody knows. Its held set stays: the sweep finds a running orphan through it (a
/// running task has no index of its own).
async fn forget_worker(env: &mut Env, w: &str) {
    let _: () = env
        .raw
        .del(qkey(Q, &format!("worker:{w}")))
        .await
        .expect("del");
    let _: () = env.raw.srem(qkey(Q, "workers"), w).await.expect("srem");
    for index in ["heartbeats", "free", "cap"] {
        let _: () = env.raw.zrem(qkey(Q, index), w).await.expect("zrem");
    }
}

/// One recovery step with the tests' dead-after: {workers declared dead, tasks handed back
/// or whose attempt ended with its lease}.
#[must_use]
async fn recover(env: &Env) -> (u64, u64) {
    env.store
        .recover_workers(Q, DEAD_AFTER)
        .await
        .expect("recover")
}

/// Scores worker `w`'s leases entry at `at` (ms), as if its earliest deadline were then.
async fn due_at(env: &mut Env, w: &str, at: i64) {
    let _: () = env.raw.zadd(qkey(Q, "leases"), w, at).await.expect("zadd");
}

/// Moves task `id`'s lease 10 s into the past (server clock), as if its worker hung: its
/// start goes back by its timeout and 10 s, and its worker's leases entry with it.
async fn expire_lease(env: &mut Env, id: &str) {
    let w = env.worker_of(Q, id).await.expect("a worker");
    let timeout = env.task_record(Q, id).await.timeout_ms;
    let past = env.now_ms().await - 10_000;
    env.set_run_part(Q, id, "started_at", past - timeout).await;
    due_at(env, &w, past).await;
}

#[tokio::test]
async fn the_orphan_sweep_runs_once_per_dead_after_for_the_whole_queue() {
    let mut env = Env::start().await;
    env.register(Q, "lost", 1, &[]).await;
    // A first recovery step sweeps (nothing to find) and holds the sweep off for dead-after.
    assert_eq!(recover(&env).await, (0, 0));
    let lock_ttl: i64 = redis::cmd("PTTL")
        .arg(qkey(Q, "sweep:lock"))
        .query_async(&mut env.raw)
        .await
        .expect("pttl");
    let dead_after_ms = DEAD_AFTER.as_millis() as i64;
    assert!(
        0 < lock_ttl && lock_ttl <= dead_after_ms,
        "sweep lock PTTL {lock_ttl} ms, want 1..={dead_after_ms}"
    );
    let id = env.submit(task(Q, 1)).await;
    forget_worker(&mut env, "lost").await;
    env.register(Q, "alive", 1, &[]).await;
    assert_eq!(
        recover(&env).await,
        (0, 0),
        "no sweep before the period ends"
    );
    // The period ends (the lock expires): the next step, by any worker, sweeps.
    let _: () = env.raw.del(qkey(Q, "sweep:lock")).await.expect("del");
    assert_eq!(recover(&env).await, (0, 1));
    assert_eq!(env.task_hash(Q, &id).await["worker"], "alive");
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn cancelling_an_orphan_leaves_its_unknown_worker_unknown() {
    let mut env = Env::start().await;
    env.register(Q, "lost", 1, &[]).await;
    let id = env.submit(task(Q, 1)).await;
    forget_worker(&mut env, "lost").await;
    assert_eq!(
        env.store.cancel_task(Q, &id).await.expect("cancel"),
        Cancel::Cancelled
    );
    assert!(!env.keys().await.contains(&qkey(Q, "worker:lost")));
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn an_orphan_whose_worker_is_unknown_is_swept() {
    let mut env = Env::start().await;
    env.register(Q, "lost", 1, &[]).await;
    let id = env.submit(task(Q, 1)).await;
    env.claim(Q, "lost", 1).await;
    forget_worker(&mut env, "lost").await;
    env.register(Q, "alive", 1, &[]).await;

    let r = recover(&env).await;
    assert_eq!(r, (0, 1));
    let t = env.task_hash(Q, &id).await;
    assert_eq!(
        (
            t["state"].as_str(),
            t["worker"].as_str(),
            t["attempts"].as_str()
        ),
        ("assigned", "alive", "0")
    );
    env.assert_sound(Q).await;
    assert_eq!(
        env.client.submit(&task(Q, 1)).await.expect("submit"),
        Placement::Pending
    );
}

#[tokio::test]
async fn a_fenced_claim_returns_only_ids_still_waiting_and_never_twice() {
    let mut env = Env::start().await;
    env.register(Q, "w", 2, &[]).await;
    let old_epoch = env.epoch(Q, "w").await;
    let x = env.submit(task(Q, 1)).await;
    let y = env.submit(task(Q, 1)).await;
    // The old process popped both ids, then paused; the id was taken over (both tasks
    // handed back and placed on the new incarnation, x already started there).
    let _: Vec<String> = env
        .raw
        .lpop(qkey(Q, "worker:w:inbox"), std::num::NonZeroUsize::new(2))
        .await
        .expect("lpop");
    env.store
        .register_worker(Q, "w", 2, &[], Duration::ZERO)
        .await
        .expect("takeover");
    let started = env.claim(Q, "w", 1).await;
    assert_eq!(started[0].id, x);
    assert_eq!(env.inbox(Q, "w").await, vec![y.clone()]);

    // The old process wakes and claims what it popped, with its old epoch.
    let got = env
        .store
        .claim_tasks(Q, "w", old_epoch, &[x.clone(), y.clone()], 2)
        .await
        .expect("claim");
    assert!(got.is_empty());
    assert_eq!(env.inbox(Q, "w").await, vec![y]);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn an_expired_lease_fails_the_attempt_of_a_hung_worker() {
    let mut env = Env::start().await;
    env.register(Q, "hung", 1, &[]).await;
    let id = env
        .submit(
            task(Q, 1)
                .max_attempts(2)
                .timeout(Duration::from_millis(100)),
        )
        .await;
    let stale = env.claim(Q, "hung", 1).await.remove(0);
    // The worker keeps heartbeating but never reports: move its lease 10 s into the past.
    expire_lease(&mut env, &id).await;
    assert!(env.beat(Q, "hung").await.is_some());
    assert_eq!(recover(&env).await, (0, 1));

    // The attempt failed; the retry waits in scheduled, the worker's unit is free again.
    let t = env.task_record(Q, &id).await;
    assert_eq!((t.state, t.attempts), (TaskState::Scheduled, 1));
    assert!(
        t.error
            .as_deref()
            .is_some_and(|e| e.starts_with("lease expired")),
        "{t:?}"
    );
    assert_eq!(t.history.len(), 1);
    assert_eq!(env.worker_int(Q, "hung", "assigned").await, 0);
    assert!(env.running(Q).await.is_empty());
    env.assert_sound(Q).await;
    // The hung worker's late report is refused.
    let late = env
        .report(Q, "hung", &stale, &Outcome::Succeeded("1".into()), 0)
        .await;
    assert_eq!(late, Finish::Stale(vec![]));

    // Second and last attempt: its lease expires too, and the task is a dead letter.
    env.store.promote_tasks(Q).await.expect("promote");
    env.claim(Q, "hung", 1).await;
    expire_lease(&mut env, &id).await;
    assert_eq!(recover(&env).await, (0, 1));
    let t = env.task_record(Q, &id).await;
    assert_eq!(
        (t.state, t.attempts, t.history.len()),
        (TaskState::Failed, 2, 2)
    );
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_due_leases_entry_moves_to_the_soonest_deadline_left_then_goes() {
    let mut env = Env::start().await;
    env.register(Q, "w", 2, &[]).await;
    let short = env
        .submit(task(Q, 1).timeout(Duration::from_millis(100)))
        .await;
    let long = env
        .submit(task(Q, 1).timeout(Duration::from_secs(300)))
        .await;
    let claimed = env.claim(Q, "w", 2).await;
    let started = env.task_record(Q, &long).await.started_at.expect("started");
    let (a, b) = if claimed[0].id == short {
        (&claimed[0], &claimed[1])
    } else {
        (&claimed[1], &claimed[0])
    };
    // The short task ends in time; the worker's entry still says its deadline (a bound).
    env.finish(Q, "w", a, 0).await;
    let past = env.now_ms().await - 10_000;
    due_at(&mut env, "w", past).await;
    // Due: the long task's lease has not expired, so nothing is failed and the entry moves
    // to its deadline.
    assert_eq!(recover(&env).await, (0, 0));
    assert_eq!(
        env.zscores(Q, "leases").await,
        vec![("w".to_string(), (started + 300_000) as f64)]
    );
    assert_eq!(env.running(Q).await, vec![long.clone()]);
    env.assert_sound(Q).await;
    // Once nothing runs on the worker, a due entry goes.
    env.finish(Q, "w", b, 0).await;
    due_at(&mut env, "w", past).await;
    assert_eq!(recover(&env).await, (0, 0));
    assert!(env.zscores(Q, "leases").await.is_empty());
    assert_eq!(env.store.counts(Q).await.expect("counts").running, 0);
    env.assert_sound(Q).await;
}

/// Lua keeps the head of the last spec it read ("3 3000 "), and a spec that begins with it
/// takes its timeout: a head that only begins like it ("3 30000 ") must not. Neither is
/// the default timeout, which a spec read wrongly would fall back to.
#[tokio::test]
async fn a_timeout_that_begins_like_the_last_one_read_is_read_whole() {
    let mut env = Env::start().await;
    env.register(Q, "w", 2, &[]).await;
    let long = env
        .submit(task(Q, 1).timeout(Duration::from_secs(30)))
        .await;
    let short = env.submit(task(Q, 1).timeout(Duration::from_secs(3))).await;
    // Started in submission order: the short task's head is the last read.
    let claimed = env.claim(Q, "w", 2).await;
    assert_eq!(
        claimed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec![long.as_str(), short.as_str()]
    );
    let started = env.task_record(Q, &long).await.started_at.expect("started");
    env.finish(Q, "w", &claimed[1], 0).await;
    let past = env.now_ms().await - 10_000;
    due_at(&mut env, "w", past).await;
    // Recovery reads the long task's spec: its deadline is 30 s after its start.
    assert_eq!(recover(&env).await, (0, 0));
    assert_eq!(
        env.zscores(Q, "leases").await,
        vec![("w".to_string(), (started + 30_000) as f64)]
    );
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn one_recovery_call_reads_the_held_tasks_of_about_a_thousand_leases() {
    let mut env = Env::start().await;
    env.register(Q, "a", 1000, &[]).await;
    let specs: Vec<_> = (0..1000).map(|_| task(Q, 1)).collect();
    env.client.submit_many(&specs).await.expect("submit");
    assert_eq!(env.claim(Q, "a", 1000).await.len(), 1000);
    env.register(Q, "b", 1, &[]).await;
    let last = env.submit(task(Q, 1)).await;
    env.claim(Q, "b", 1).await;
    // Both entries come due; no lease has expired.
    let past = env.now_ms().await - 10_000;
    for w in ["a", "b"] {
        due_at(&mut env, w, past).await;
    }
    // The first call reads a's thousand tasks and stops there: b stays due.
    assert_eq!(recover(&env).await, (0, 0));
    let b_due = env.zscores(Q, "leases").await;
    assert!(b_due.contains(&("b".to_string(), past as f64)), "{b_due:?}");
    assert!(
        !b_due.contains(&("a".to_string(), past as f64)),
        "{b_due:?}"
    );
    // The next call reaches b, whose entry moves to its task's deadline.
    assert_eq!(recover(&env).await, (0, 0));
    let started = env.task_record(Q, &last).await.started_at.expect("started");
    assert!(env
        .zscores(Q, "leases")
        .await
        .contains(&("b".to_string(), (started + 300_000) as f64)));
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn an_expired_lease_of_a_task_asked_to_stop_cancels_it() {
    let mut env = Env::start().await;
    env.register(Q, "hung", 1, &[]).await;
    let id = env
        .submit(
            task(Q, 1)
                .max_attempts(5)
                .timeout(Duration::from_millis(100)),
        )
        .await;
    env.claim(Q, "hung", 1).await;
    env.store.cancel_task(Q, &id).await.expect("cancel");
    // The lease ran out long ago (more than dead-after) while the worker kept beating.
    expire_lease(&mut env, &id).await;
    // No worker is dead; one lease expired.
    assert_eq!(recover(&env).await, (0, 1));
    let t = env.task_record(Q, &id).await;
    assert_eq!(t.state, TaskState::Cancelled);
    assert!(
        t.error
            .as_deref()
            .is_some_and(|e| e.starts_with("lease expired")),
        "{t:?}"
    );
    assert_eq!(env.beat(Q, "hung").await, Some(vec![]));
    env.assert_sound(Q).await;
}
