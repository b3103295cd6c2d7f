//! Tests of `Store::finish_task` (a report of one for finish_tasks.lua): the outcome is
//! recorded, the cost freed and counted, the next task placed and claimed in the same call;
//! a stale lease or a wrong worker is refused and writes nothing.

use ballast::store::{ClaimedTask, Finish, Leave, Outcome};
use redis::AsyncCommands;
use serde_json::json;

use crate::harness::{
    expect_keys, free_score, function_libraries, qkey, strmap, take_time, task, Env,
};

const Q: &str = "jobs";

/// A worker `w` of `capacity` running one claimed task of `cost`.
async fn running(env: &mut Env, capacity: i64, cost: i64) -> ClaimedTask {
    env.register(Q, "w", capacity, &[]).await;
    let id = env.submit(task(Q, cost)).await;
    let mut claimed = env.claim(Q, "w", 1).await;
    assert_eq!(claimed.len(), 1);
    let t = claimed.remove(0);
    assert_eq!(t.id, id);
    t
}

#[tokio::test]
async fn success_is_recorded_and_the_cost_freed() {
    let mut env = Env::start().await;
    let t = running(&mut env, 3, 2).await;
    let mut before = env.task_hash(Q, &t.id).await;

    let lo = env.now_ms().await;
    let got = env
        .report(Q, "w", &t, &Outcome::Succeeded(r#"{"ok":true}"#.into()), 0)
        .await;
    let hi = env.now_ms().await;
    assert_eq!(got, Finish::Recorded(vec![]));

    let mut h = env.task_hash(Q, &t.id).await;
    let finished = take_time(&mut h, "finished_at", lo, hi);
    // Only state and result change; the record keeps who ran it, when and under which lease.
    before.insert("state".into(), "succeeded".into());
    before.insert("result".into(), r#"{"ok":true}"#.into());
    // Redis keeps no history for a success (the record tells it); the record read back
    // lists the attempt all the same.
    assert_eq!(h, before);
    let record = env.task_record(Q, &t.id).await;
    assert_eq!(
        serde_json::Value::from(record.history),
        serde_json::json!([{
            "attempt": 1, "worker": "w", "outcome": "succeeded",
            "started_at": before["started_at"].parse::<i64>().expect("start"),
            "finished_at": finished,
        }])
    );
    assert_eq!(env.list(Q, "succeeded").await, vec![t.id.clone()]);

    let mut w = env.worker_hash(Q, "w").await;
    w.remove("registered_at");
    w.remove("heartbeat_at");
    assert_eq!(
        w,
        strmap(&[
            ("id", "w"),
            ("capacity", "3"),
            ("assigned", "0"),
            ("tags", ""),
            ("state", "active"),
            ("tick", "1"),
            ("finished", "1"),
            ("epoch", "1"),
        ])
    );
    assert_eq!(
        env.zscores(Q, "free").await,
        vec![("w".to_string(), free_score(3, 1))]
    );
    let k = format!("task:{}", t.id);
    // The worker's leases entry stays: a bound, dropped by recovery when it comes due.
    assert_eq!(
        env.keys().await,
        expect_keys(
            Q,
            &[
                "cap",
                "epoch",
                "free",
                "heartbeats",
                "leases",
                "seq",
                "succeeded",
                "tick",
                &k,
                "worker:w",
                "workers",
            ]
        )
    );
    let rec = env.task_record(Q, &t.id).await;
    assert_eq!(rec.result, Some(json!({"ok": true})));
    assert_eq!(rec.error, None);
    assert_eq!(rec.worker.as_deref(), Some("w"));
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn failure_is_recorded_with_its_error() {
    let mut env = Env::start().await;
    let t = running(&mut env, 2, 2).await;
    let lo = env.now_ms().await;
    let got = env
        .report(Q, "w", &t, &Outcome::Failed("disk full".into()), 3)
        .await;
    let hi = env.now_ms().await;
    assert_eq!(got, Finish::Recorded(vec![]));
    let mut h = env.task_hash(Q, &t.id).await;
    let finished = take_time(&mut h, "finished_at", lo, hi);
    assert_eq!(h["state"], "failed");
    assert_eq!(h["error"], "disk full");
    assert!(!h.contains_key("result"));
    assert_eq!(
        env.zscores(Q, "failed").await,
        vec![(t.id.clone(), finished as f64)]
    );
    assert_eq!(env.worker_int(Q, "w", "assigned").await, 0);
    assert_eq!(env.worker_int(Q, "w", "finished").await, 1);
    let k = format!("task:{}", t.id);
    assert_eq!(
        env.keys().await,
        expect_keys(
            Q,
            &[
                "cap",
                "epoch",
                "failed",
                "free",
                "heartbeats",
                "leases",
                "seq",
                "tick",
                &k,
                "worker:w",
                "workers",
            ]
        )
    );
    let rec = env.task_record(Q, &t.id).await;
    assert_eq!(rec.error.as_deref(), Some("disk full"));
    assert_eq!(rec.result, None);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn the_next_pending_task_is_placed_and_claimed_in_the_same_call() {
    let mut env = Env::start().await;
    let t1 = running(&mut env, 2, 2).await;
    let t2 = env.submit(task(Q, 2)).await;
    let t3 = env.submit(task(Q, 1)).await;
    assert_eq!(env.zrange(Q, "pending").await, vec![t2.clone(), t3.clone()]);

    let lo = env.now_ms().await;
    let next = env.finish(Q, "w", &t1, 5).await;
    let hi = env.now_ms().await;
    assert_eq!(
        next,
        vec![ClaimedTask {
            id: t2.clone(),
            kind: "noop".into(),
            payload: "null".into(),
            lease: 1,
            cost: 2,
            timeout_ms: 300_000,
            max_attempts: 3,
            attempt: 1,
            role: String::new(),
        }]
    );
    // Placed and started in one step: no assigned_at is stored, and the record reads its
    // start as its placement.
    let mut h = env.task_hash(Q, &t2).await;
    let started = take_time(&mut h, "started_at", lo, hi);
    assert!(!h.contains_key("assigned_at"), "{h:?}");
    assert_eq!(env.task_record(Q, &t2).await.assigned_at, Some(started));
    assert_eq!(
        (
            h["state"].as_str(),
            h["worker"].as_str(),
            h["attempts"].as_str()
        ),
        ("running", "w", "1")
    );
    assert_eq!(env.running(Q).await, vec![t2.clone()]);
    assert_eq!(env.zrange(Q, "pending").await, vec![t3.clone()]);
    assert!(env.inbox(Q, "w").await.is_empty());
    assert_eq!(env.worker_int(Q, "w", "assigned").await, 2);
    assert_eq!(env.worker_int(Q, "w", "finished").await, 1);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn claim_max_zero_leaves_the_next_task_in_the_inbox() {
    let mut env = Env::start().await;
    let t1 = running(&mut env, 1, 1).await;
    let t2 = env.submit(task(Q, 1)).await;
    assert!(env.finish(Q, "w", &t1, 0).await.is_empty());
    assert_eq!(env.inbox(Q, "w").await, vec![t2.clone()]);
    assert_eq!(env.task_hash(Q, &t2).await["state"], "assigned");
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_stale_lease_or_wrong_worker_is_refused_and_writes_nothing() {
    let mut env = Env::start().await;
    let t = running(&mut env, 2, 1).await;
    env.register(Q, "w2", 2, &[]).await;
    let waiting = env.submit(task(Q, 1)).await;
    assert_eq!(env.worker_of(Q, &waiting).await.as_deref(), Some("w2"));
    let before = env.snapshot().await;

    let ok = Outcome::Succeeded("1".into());
    let stale_lease = ClaimedTask {
        lease: t.lease + 1,
        ..t.clone()
    };
    let old_lease = ClaimedTask {
        lease: t.lease - 1,
        ..t.clone()
    };
    for (who, task) in [
        ("w", &stale_lease),
        ("w", &old_lease),
        ("w2", &t),
        ("nobody", &t),
    ] {
        let got = env.report(Q, who, task, &ok, 0).await;
        assert_eq!(got, Finish::Stale(vec![]), "{who} lease {}", task.lease);
        assert_eq!(env.snapshot().await, before, "{who} lease {}", task.lease);
    }
    // A task that is assigned but not started cannot be finished either.
    let on_w2 = ClaimedTask {
        id: waiting.clone(),
        lease: 1,
        ..t.clone()
    };
    let got = env.report(Q, "w2", &on_w2, &ok, 0).await;
    assert_eq!(got, Finish::Stale(vec![]));
    assert_eq!(env.snapshot().await, before);
    // Nor an unknown task.
    let ghost = ClaimedTask {
        id: "ghost".into(),
        ..t.clone()
    };
    let got = env.report(Q, "w", &ghost, &ok, 5).await;
    assert_eq!(got, Finish::Stale(vec![]));
    assert_eq!(env.snapshot().await, before);
    env.assert_sound(Q).await;

    // The right worker and lease finish it once; a second finish is stale.
    assert!(env.finish(Q, "w", &t, 0).await.is_empty());
    let after = env.snapshot().await;
    let got = env
        .report(Q, "w", &t, &Outcome::Failed("late".into()), 5)
        .await;
    assert_eq!(got, Finish::Stale(vec![]));
    assert_eq!(env.snapshot().await, after);
    assert_eq!(env.task_hash(Q, &t.id).await["state"], "succeeded");
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_task_taken_back_cannot_be_finished_under_its_old_lease() {
    let mut env = Env::start().await;
    let t = running(&mut env, 2, 2).await;
    env.register(Q, "w2", 2, &[]).await;
    // w is removed while running t: t goes back and is placed on w2 under lease 2.
    let back = env.leave(Q, "w", Leave::Remove).await;
    assert_eq!(back, Some(1));
    let h = env.task_hash(Q, &t.id).await;
    assert_eq!(
        (
            h["state"].as_str(),
            h["worker"].as_str(),
            h["lease"].as_str()
        ),
        ("assigned", "w2", "2")
    );
    let before = env.snapshot().await;
    for who in ["w", "w2"] {
        let got = env
            .report(Q, who, &t, &Outcome::Succeeded("1".into()), 0)
            .await;
        assert_eq!(got, Finish::Stale(vec![]), "{who}");
        assert_eq!(env.snapshot().await, before);
    }
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_draining_worker_finishes_but_claims_nothing_more() {
    let mut env = Env::start().await;
    let t1 = running(&mut env, 2, 2).await;
    let t2 = env.submit(task(Q, 1)).await;
    // A drain hands back nothing: its running task finishes here.
    assert_eq!(env.leave(Q, "w", Leave::Drain).await, Some(0));
    assert!(env.finish(Q, "w", &t1, 5).await.is_empty());
    assert_eq!(env.zrange(Q, "pending").await, vec![t2]);
    assert_eq!(env.worker_int(Q, "w", "assigned").await, 0);
    assert_eq!(env.worker_int(Q, "w", "finished").await, 1);
    assert!(env.zscores(Q, "free").await.is_empty());
    env.assert_sound(Q).await;
}

/// Submits, claims and finishes `n` tasks on worker "w" (capacity 1), one at a time, so
/// they finish in submission order; returns their ids.
async fn run_one_by_one(env: &mut Env, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = env.submit(task(Q, 1)).await;
        let t = env.claim(Q, "w", 1).await.remove(0);
        env.finish(Q, "w", &t, 0).await;
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn finished_tasks_beyond_the_retention_are_deleted_as_new_ones_finish() {
    let mut env = Env::start().await;
    env.store
        .set_retention(Q, 3, std::time::Duration::from_secs(3600))
        .await
        .expect("retention");
    env.register(Q, "w", 1, &[]).await;
    let ids = run_one_by_one(&mut env, 6).await;
    // The three newest are kept, in finish order; the older records are gone with their
    // index entries.
    assert_eq!(env.list(Q, "succeeded").await, ids[3..].to_vec());
    for old in &ids[..3] {
        assert!(env.task_hash(Q, old).await.is_empty(), "{old} kept");
    }
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_wrong_cost_is_refused_and_a_report_given_twice_counts_once() {
    let mut env = Env::start().await;
    let t = running(&mut env, 2, 1).await;
    let before = env.snapshot().await;
    let ok = Outcome::Succeeded("1".into());
    // The held token names the cost too: a report that would free more is stale.
    let dearer = ClaimedTask {
        cost: 2,
        ..t.clone()
    };
    assert_eq!(
        env.report(Q, "w", &dearer, &ok, 0).await,
        Finish::Stale(vec![])
    );
    assert_eq!(env.snapshot().await, before);
    // Twice in one call: the first is recorded, the second is stale and frees nothing.
    let (recorded, _) = env.report_many(Q, "w", &[(&t, &ok), (&t, &ok)], 0).await;
    assert_eq!(recorded, vec![true, false]);
    assert_eq!(env.worker_int(Q, "w", "assigned").await, 0);
    assert_eq!(env.worker_int(Q, "w", "finished").await, 1);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn finished_tasks_past_their_age_go_oldest_first_as_new_ones_finish() {
    let mut env = Env::start().await;
    env.store
        .set_retention(Q, 100, std::time::Duration::from_secs(3600))
        .await
        .expect("retention");
    env.register(Q, "w", 1, &[]).await;
    let mut ids = run_one_by_one(&mut env, 4).await;
    // The two oldest finished two hours ago, past the retention's hour.
    let past = env.now_ms().await - 2 * 3600 * 1000;
    for old in &ids[..2] {
        let _: () = env
            .raw
            .hset(qkey(Q, &format!("task:{old}")), "finished_at", past)
            .await
            .expect("hset");
    }
    // The next finish drops them (up to two per finished task); the rest stay in order.
    ids.extend(run_one_by_one(&mut env, 1).await);
    assert_eq!(env.list(Q, "succeeded").await, ids[2..].to_vec());
    for old in &ids[..2] {
        assert!(env.task_hash(Q, old).await.is_empty(), "{old} kept");
    }
    env.assert_sound(Q).await;
}

/// A report must name its run as the held set does: a lease written with a leading zero
/// ("01" for lease 1) is not the token the worker holds, even though the record's lease
/// reads as the same number. Sent the way a client other than ballast's could send it.
#[tokio::test]
async fn a_lease_written_otherwise_than_the_held_token_is_stale() {
    let mut env = Env::start().await;
    let t = running(&mut env, 2, 1).await;
    let before = env.snapshot().await;
    let lib = function_libraries(&mut env).await.remove(0).0;
    assert!(lib.starts_with("ballast_"), "{lib}");
    let epoch: String = env
        .raw
        .hget(qkey(Q, "worker:w"), "epoch")
        .await
        .expect("epoch");
    let (recorded, claimed) = raw_success(&env, &lib, &epoch, &t, &format!("0{}", t.lease)).await;
    assert_eq!(recorded, redis::Value::Array(vec![redis::Value::Int(0)]));
    assert!(claimed.is_empty());
    assert_eq!(env.snapshot().await, before);
    // The same call with the lease as the token has it is recorded: the call above was
    // refused for its lease alone.
    let (recorded, _) = raw_success(&env, &lib, &epoch, &t, &t.lease.to_string()).await;
    assert_eq!(recorded, redis::Value::Int(1));
    assert_eq!(env.task_hash(Q, &t.id).await["state"], "succeeded");
    env.assert_sound(Q).await;
}

/// finish_tasks.lua called by FCALL as a client other than ballast's could call it: one
/// success of `t` on worker "w", its lease sent as `lease`.
async fn raw_success(
    env: &Env,
    lib: &str,
    epoch: &str,
    t: &ClaimedTask,
    lease: &str,
) -> (redis::Value, Vec<String>) {
    // P, worker, epoch, claim max, S, then each success: id, lease, cost, result.
    redis::cmd("FCALL")
        .arg(format!("{lib}_finish_tasks"))
        .arg(1)
        .arg(qkey(Q, "worker:w"))
        .arg(qkey(Q, ""))
        .arg("w")
        .arg(epoch)
        .arg(0)
        .arg(1)
        .arg(&t.id)
        .arg(lease)
        .arg(t.cost)
        .arg("1")
        .query_async(&mut env.raw.clone())
        .await
        .expect("fcall")
}
