//! Tests of `Store::claim_tasks` (claim_tasks.lua): claimed tasks are marked running with an
//! attempt counted and handed over with their lease; ids no longer assigned to the worker
//! are skipped.

use std::time::Duration;

use ballast::store::{ClaimedTask, Leave};
use ballast::TaskSpec;
use serde_json::json;

use crate::harness::{expect_keys, take_time, task, Env};

const Q: &str = "jobs";

#[tokio::test]
async fn claim_marks_tasks_running_and_returns_them_with_their_lease() {
    let mut env = Env::start().await;
    env.register(Q, "w", 4, &[]).await;
    let t1 = env
        .submit(
            TaskSpec::new(Q, "resize")
                .payload(json!({"a": 1}))
                .cost(2)
                .max_attempts(4)
                .timeout(Duration::from_millis(1500)),
        )
        .await;
    let t2 = env.submit(task(Q, 1)).await;
    let assigned_at: Vec<String> = {
        let a = env.task_hash(Q, &t1).await["assigned_at"].clone();
        let b = env.task_hash(Q, &t2).await["assigned_at"].clone();
        vec![a, b]
    };

    let lo = env.now_ms().await;
    let claimed = env.claim(Q, "w", 10).await;
    let hi = env.now_ms().await;
    assert_eq!(
        claimed,
        vec![
            ClaimedTask {
                id: t1.clone(),
                kind: "resize".into(),
                payload: r#"{"a":1}"#.into(),
                lease: 1,
                cost: 2,
                timeout_ms: 1500,
                max_attempts: 4,
                attempt: 1,
                role: String::new(),
            },
            ClaimedTask {
                id: t2.clone(),
                kind: "noop".into(),
                payload: "null".into(),
                lease: 1,
                cost: 1,
                timeout_ms: 300_000,
                max_attempts: 3,
                attempt: 1,
                role: String::new(),
            },
        ]
    );
    let mut started = Vec::new();
    for (id, at) in [(&t1, &assigned_at[0]), (&t2, &assigned_at[1])] {
        let mut h = env.task_hash(Q, id).await;
        started.push(take_time(&mut h, "started_at", lo, hi));
        assert_eq!(h["state"], "running");
        assert_eq!(h["worker"], "w");
        assert_eq!(h["attempts"], "1");
        assert_eq!(h["runs"], "1");
        assert!(!h.contains_key("requeues"), "{h:?}");
        assert_eq!(h["lease"], "1");
        assert_eq!(&h["assigned_at"], at);
    }
    // The worker is in the leases index once, scored by its earliest deadline: start + the
    // shorter timeout (1.5 s, against 300 s).
    assert_eq!(
        env.zscores(Q, "leases").await,
        vec![("w".to_string(), (started[0] + 1_500) as f64)]
    );
    assert_eq!(env.store.counts(Q).await.expect("counts").running, 2);
    let mut held = vec![t1.clone(), t2.clone()];
    held.sort();
    assert_eq!(env.held(Q, "w").await, held);
    // Claiming does not change what the worker holds.
    assert_eq!(env.worker_int(Q, "w", "assigned").await, 3);
    // The inbox and the assigned index emptied, so their keys are gone.
    let (k1, k2) = (format!("task:{t1}"), format!("task:{t2}"));
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
                "running_count",
                "seq",
                "tick",
                &k1,
                &k2,
                "worker:w",
                "worker:w:tasks",
                "workers",
            ]
        )
    );
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn claim_takes_at_most_max_in_inbox_order() {
    let mut env = Env::start().await;
    env.register(Q, "w", 3, &[]).await;
    let ids = [
        env.submit(task(Q, 1)).await,
        env.submit(task(Q, 1)).await,
        env.submit(task(Q, 1)).await,
    ];
    let first = env.claim(Q, "w", 2).await;
    assert_eq!(
        first.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec![ids[0].as_str(), ids[1].as_str()]
    );
    assert_eq!(env.inbox(Q, "w").await, vec![ids[2].clone()]);
    assert_eq!(env.zrange(Q, "assigned").await, vec![ids[2].clone()]);
    assert_eq!(env.task_hash(Q, &ids[2]).await["state"], "assigned");
    env.assert_sound(Q).await;

    let second = env.claim(Q, "w", 2).await;
    assert_eq!(
        second.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec![ids[2].as_str()]
    );
    assert!(env.inbox(Q, "w").await.is_empty());
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn claim_with_nothing_in_the_inbox_writes_nothing() {
    let mut env = Env::start().await;
    env.register(Q, "w", 3, &[]).await;
    let before = env.snapshot().await;
    assert!(env.claim(Q, "w", 5).await.is_empty());
    assert!(env.claim(Q, "ghost", 5).await.is_empty());
    assert_eq!(env.snapshot().await, before);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn given_ids_are_claimed_first_then_the_inbox() {
    let mut env = Env::start().await;
    env.register(Q, "w", 3, &[]).await;
    let a = env.submit(task(Q, 1)).await;
    let b = env.submit(task(Q, 1)).await;
    let c = env.submit(task(Q, 1)).await;
    // The worker's blocking wait pops the head id.
    let mut conn = env.store.blocking_connection().await.expect("conn");
    let popped = env
        .store
        .wait_inbox(&mut conn, Q, "w", Duration::from_secs(1))
        .await
        .expect("wait")
        .expect("an id");
    assert_eq!(popped, a);
    let claimed = env
        .store
        .claim_tasks(
            Q,
            "w",
            env.epoch(Q, "w").await,
            std::slice::from_ref(&popped),
            2,
        )
        .await
        .expect("claim");
    assert_eq!(
        claimed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec![a.as_str(), b.as_str()]
    );
    assert_eq!(env.inbox(Q, "w").await, vec![c]);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_given_id_no_longer_assigned_to_the_worker_is_skipped() {
    let mut env = Env::start().await;
    env.register(Q, "w1", 2, &[]).await;
    let t = env.submit(task(Q, 1)).await;
    let mut conn = env.store.blocking_connection().await.expect("conn");
    let popped = env
        .store
        .wait_inbox(&mut conn, Q, "w1", Duration::from_secs(1))
        .await
        .expect("wait")
        .expect("an id");
    assert_eq!(popped, t);

    // Before w1 claims it, w1 drains: the task is handed back and placed on w2.
    env.register(Q, "w2", 1, &[]).await;
    let back = env.leave(Q, "w1", Leave::Drain).await;
    assert_eq!(back, Some(1));
    assert_eq!(env.worker_of(Q, &t).await.as_deref(), Some("w2"));
    let before = env.snapshot().await;

    let claimed = env
        .store
        .claim_tasks(
            Q,
            "w1",
            env.epoch(Q, "w1").await,
            &[popped, "no-such-task".to_string()],
            1,
        )
        .await
        .expect("claim");
    assert!(claimed.is_empty(), "{claimed:?}");
    assert_eq!(env.snapshot().await, before);
    let h = env.task_hash(Q, &t).await;
    assert_eq!(
        (
            h["state"].as_str(),
            h["worker"].as_str(),
            h["lease"].as_str(),
        ),
        ("assigned", "w2", "2")
    );
    // Never started: no attempt, no run.
    assert_eq!((h["attempts"].as_str(), h["runs"].as_str()), ("0", "0"));
    assert_eq!(env.inbox(Q, "w2").await, vec![t.clone()]);
    env.assert_sound(Q).await;

    // w2 claims it under the new lease.
    let got = env.claim(Q, "w2", 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].id.as_str(), got[0].lease, got[0].attempt),
        (t.as_str(), 2, 1)
    );
    env.assert_sound(Q).await;
}
