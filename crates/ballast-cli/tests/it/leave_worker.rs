//! Tests of `Store::leave_worker` (leave_worker.lua): `Drain` takes the worker out of the
//! free index and hands back tasks it has not started, `Remove` hands back everything and
//! deletes the worker's keys; handed-back tasks return to pending or go to another worker.

use ballast::store::Leave;
use ballast::TaskState;
use redis::AsyncCommands;

use crate::harness::{expect_keys, qkey, strmap, task, Env};

const Q: &str = "jobs";

#[tokio::test]
async fn drain_hands_back_unstarted_tasks_and_keeps_running_ones() {
    let mut env = Env::start().await;
    env.register(Q, "w", 4, &["gpu"]).await;
    let t1 = env.submit(task(Q, 1)).await;
    let t2 = env.submit(task(Q, 2)).await;
    let started = env.claim(Q, "w", 1).await;
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].id, t1);
    let h1_before = env.task_hash(Q, &t1).await;

    let back = env.leave(Q, "w", Leave::Drain).await;
    assert_eq!(back, Some(1));

    let w = env.worker_hash(Q, "w").await;
    assert_eq!(
        (w["state"].as_str(), w["assigned"].as_str()),
        ("draining", "1")
    );
    // The running task is untouched.
    assert_eq!(env.task_hash(Q, &t1).await, h1_before);
    assert_eq!(env.held(Q, "w").await, vec![t1.clone()]);
    assert_eq!(env.running(Q).await, vec![t1.clone()]);
    // The assigned one is back in pending, at its order, without its worker, an attempt or a
    // run; the hand-back is counted.
    let h2 = env.task_hash(Q, &t2).await;
    assert_eq!(
        (
            h2["state"].as_str(),
            h2["worker"].as_str(),
            h2["lease"].as_str(),
            h2["requeues"].as_str()
        ),
        ("pending", "", "1", "1")
    );
    assert!(!h2.contains_key("assigned_at") && !h2.contains_key("started_at"));
    assert_eq!((h2["attempts"].as_str(), h2["runs"].as_str()), ("0", "0"));
    assert_eq!(
        env.zscores(Q, "pending").await,
        vec![(t2.clone(), h2["order"].parse::<f64>().expect("order"))]
    );
    // Out of every free and capacity index; the assigned index is empty (key gone). t2's id
    // stays in the inbox (no scan of the list), where a claim would skip it.
    assert_eq!(env.inbox(Q, "w").await, vec![t2.clone()]);
    let (k1, k2) = (format!("task:{t1}"), format!("task:{t2}"));
    assert_eq!(
        env.keys().await,
        expect_keys(
            Q,
            &[
                "epoch",
                "heartbeats",
                "leases",
                "pending",
                "running_count",
                "seq",
                "tick",
                &k1,
                &k2,
                "worker:w",
                "worker:w:inbox",
                "worker:w:tasks",
                "workers",
            ]
        )
    );
    env.assert_sound(Q).await;

    // Nothing new reaches a draining worker.
    let t3 = env.submit(task(Q, 1)).await;
    assert_eq!(env.zrange(Q, "pending").await, vec![t2.clone(), t3.clone()]);
    // Its running task still finishes normally and frees the cost.
    assert!(env.finish(Q, "w", &started[0], 4).await.is_empty());
    assert_eq!(env.worker_int(Q, "w", "assigned").await, 0);
    assert_eq!(env.list(Q, "succeeded").await, vec![t1]);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn drain_places_handed_back_tasks_on_another_worker() {
    let mut env = Env::start().await;
    env.register(Q, "w1", 4, &[]).await;
    let t1 = env.submit(task(Q, 1)).await;
    let t2 = env.submit(task(Q, 2)).await;
    let t3 = env.submit(task(Q, 1)).await;
    let started = env.claim(Q, "w1", 1).await;
    assert_eq!(started[0].id, t1);
    env.register(Q, "w2", 2, &[]).await;

    let back = env.leave(Q, "w1", Leave::Drain).await;
    assert_eq!(back, Some(2));
    // In order: t2 fills w2, t3 waits.
    let h2 = env.task_hash(Q, &t2).await;
    assert_eq!(
        (
            h2["state"].as_str(),
            h2["worker"].as_str(),
            h2["lease"].as_str()
        ),
        ("assigned", "w2", "2")
    );
    assert_eq!(env.inbox(Q, "w2").await, vec![t2.clone()]);
    assert_eq!(env.zrange(Q, "pending").await, vec![t3.clone()]);
    // Their ids stay in w1's inbox, which nothing claims from any more.
    assert_eq!(env.inbox(Q, "w1").await, vec![t2.clone(), t3.clone()]);
    assert_eq!(env.held(Q, "w1").await, vec![t1.clone()]);
    assert_eq!(env.worker_int(Q, "w1", "assigned").await, 1);
    assert_eq!(env.worker_int(Q, "w2", "assigned").await, 2);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn remove_hands_back_everything_and_deletes_the_worker() {
    let mut env = Env::start().await;
    env.register(Q, "w1", 4, &["gpu"]).await;
    let t1 = env.submit(task(Q, 1)).await;
    let t2 = env.submit(task(Q, 2)).await;
    let started = env.claim(Q, "w1", 1).await;
    assert_eq!(started[0].id, t1);
    env.register(Q, "w2", 1, &[]).await;

    let back = env.leave(Q, "w1", Leave::Remove).await;
    assert_eq!(back, Some(2));

    // t1 (first in order) goes to w2 under a new lease. Its run was cut short by the removal,
    // so it gives its attempt back; `runs` still counts the run and `requeues` the hand-back.
    let mut h1 = env.task_hash(Q, &t1).await;
    assert!(!h1.contains_key("started_at"), "{h1:?}");
    h1.retain(|k, _| {
        ["state", "worker", "lease", "attempts", "runs", "requeues"].contains(&k.as_str())
    });
    assert_eq!(
        h1,
        strmap(&[
            ("state", "assigned"),
            ("worker", "w2"),
            ("lease", "2"),
            ("attempts", "0"),
            ("runs", "1"),
            ("requeues", "1"),
        ])
    );
    // t2 was only assigned: no attempt, no run, one hand-back.
    let mut h2 = env.task_hash(Q, &t2).await;
    h2.retain(|k, _| {
        ["state", "worker", "lease", "attempts", "runs", "requeues"].contains(&k.as_str())
    });
    assert_eq!(
        h2,
        strmap(&[
            ("state", "pending"),
            ("worker", ""),
            ("lease", "1"),
            ("attempts", "0"),
            ("runs", "0"),
            ("requeues", "1"),
        ])
    );
    assert_eq!(env.zrange(Q, "pending").await, vec![t2.clone()]);
    assert_eq!(env.inbox(Q, "w2").await, vec![t1.clone()]);
    assert_eq!(env.smembers(Q, "workers").await, vec!["w2"]);
    assert_eq!(env.zrange(Q, "heartbeats").await, vec!["w2".to_string()]);
    let (k1, k2) = (format!("task:{t1}"), format!("task:{t2}"));
    assert_eq!(
        env.keys().await,
        expect_keys(
            Q,
            &[
                "assigned",
                "cap",
                "epoch",
                "free",
                "heartbeats",
                "pending",
                "seq",
                "tick",
                &k1,
                &k2,
                "worker:w2",
                "worker:w2:inbox",
                "worker:w2:tasks",
                "workers",
            ]
        )
    );
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn remove_after_drain_hands_back_the_running_tasks() {
    let mut env = Env::start().await;
    env.register(Q, "w", 2, &[]).await;
    let t = env.submit(task(Q, 2)).await;
    env.claim(Q, "w", 1).await;
    assert_eq!(env.leave(Q, "w", Leave::Drain).await, Some(0));
    assert_eq!(env.task_hash(Q, &t).await["state"], "running");
    assert_eq!(env.leave(Q, "w", Leave::Remove).await, Some(1));
    assert_eq!(env.zrange(Q, "pending").await, vec![t.clone()]);
    // The run cut short gives its attempt back; `runs` and `requeues` record what happened.
    let mut h = env.task_hash(Q, &t).await;
    assert!(!h.contains_key("started_at") && !h.contains_key("assigned_at"));
    h.retain(|k, _| {
        ["state", "worker", "lease", "attempts", "runs", "requeues"].contains(&k.as_str())
    });
    assert_eq!(
        h,
        strmap(&[
            ("state", "pending"),
            ("worker", ""),
            ("lease", "1"),
            ("attempts", "0"),
            ("runs", "1"),
            ("requeues", "1"),
        ])
    );
    // Every worker key is gone; the queue's epoch counter stays, so a later registration
    // never reuses an epoch.
    let k = format!("task:{t}");
    assert_eq!(
        env.keys().await,
        expect_keys(Q, &["epoch", "pending", "seq", "tick", &k])
    );
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn leaving_an_unknown_worker_changes_nothing() {
    let mut env = Env::start().await;
    env.register(Q, "w", 2, &[]).await;
    env.submit(task(Q, 1)).await;
    let before = env.snapshot().await;
    for how in [Leave::Drain, Leave::Remove] {
        assert_eq!(
            env.store
                .leave_worker(Q, "ghost", 1, how)
                .await
                .expect("leave"),
            None
        );
        assert_eq!(env.snapshot().await, before);
    }
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_held_task_whose_record_is_gone_is_not_counted_as_handed_back() {
    let mut env = Env::start().await;
    env.register(Q, "w", 2, &[]).await;
    let kept = env.submit(task(Q, 1)).await;
    let gone = env.submit(task(Q, 1)).await;
    env.claim(Q, "w", 2).await;
    // A hand-made DEL of one record: the worker's held set still names it.
    let _: () = env
        .raw
        .del(qkey(Q, &format!("task:{gone}")))
        .await
        .expect("del");
    assert_eq!(env.leave(Q, "w", Leave::Remove).await, Some(1));
    assert_eq!(env.task_record(Q, &kept).await.state, TaskState::Pending);
    assert!(env.task_hash(Q, &gone).await.is_empty());
}
