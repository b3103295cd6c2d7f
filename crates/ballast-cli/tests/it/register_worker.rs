//! Tests of `Store::register_worker` (register_worker.lua): the worker record and indexes,
//! placement of pending and parked tasks on the new worker, refusal of a live id, and
//! takeover of a dead one.

use std::time::Duration;

use ballast::store::{Finish, Outcome};
use ballast::{Error, Placement};
use redis::AsyncCommands;

use crate::harness::{expect_keys, free_score, qkey, strmap, take_time, task, Env};

const Q: &str = "jobs";

#[tokio::test]
async fn new_worker_gets_pending_tasks() {
    let mut env = Env::start().await;
    let t1 = env.submit(task(Q, 1)).await;
    let t2 = env.submit(task(Q, 2)).await;
    let t3 = env.submit(task(Q, 1)).await;

    let lo = env.now_ms().await;
    env.register(Q, "w", 3, &[]).await;
    let hi = env.now_ms().await;

    let mut h = env.worker_hash(Q, "w").await;
    let registered = take_time(&mut h, "registered_at", lo, hi);
    let beat = take_time(&mut h, "heartbeat_at", lo, hi);
    assert_eq!(registered, beat);
    assert_eq!(
        h,
        strmap(&[
            ("id", "w"),
            ("capacity", "3"),
            ("assigned", "3"),
            ("tags", ""),
            ("state", "active"),
            ("tick", "2"),
            ("finished", "0"),
            // The queue's first registration.
            ("epoch", "1"),
        ])
    );
    // In order, until the worker is full.
    assert_eq!(env.inbox(Q, "w").await, vec![t1.clone(), t2.clone()]);
    let mut held = vec![t1.clone(), t2.clone()];
    held.sort();
    assert_eq!(env.held(Q, "w").await, held);
    assert_eq!(env.zrange(Q, "pending").await, vec![t3.clone()]);
    for id in [&t1, &t2] {
        let t = env.task_hash(Q, id).await;
        assert_eq!(
            (
                t["state"].as_str(),
                t["worker"].as_str(),
                t["lease"].as_str()
            ),
            ("assigned", "w", "1"),
            "task {id}"
        );
    }
    assert_eq!(env.smembers(Q, "workers").await, vec!["w"]);
    assert_eq!(
        env.zscores(Q, "heartbeats").await,
        vec![("w".to_string(), beat as f64)]
    );
    assert_eq!(env.zscores(Q, "cap").await, vec![("w".to_string(), 3.0)]);
    assert_eq!(
        env.zscores(Q, "free").await,
        vec![("w".to_string(), free_score(0, 2))]
    );
    let (k1, k2, k3) = (
        format!("task:{t1}"),
        format!("task:{t2}"),
        format!("task:{t3}"),
    );
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
                &k3,
                "worker:w",
                "worker:w:inbox",
                "worker:w:tasks",
                "workers",
            ]
        )
    );
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_tagged_worker_is_indexed_under_each_tag() {
    let mut env = Env::start().await;
    env.register(Q, "g", 5, &["gpu", "ssd"]).await;
    let h = env.worker_hash(Q, "g").await;
    assert_eq!(h["tags"], "gpu,ssd");
    assert_eq!(h["epoch"], "1");
    for tag in ["gpu", "ssd"] {
        assert_eq!(
            env.zscores(Q, &format!("cap:{tag}")).await,
            vec![("g".to_string(), 5.0)]
        );
        assert_eq!(
            env.zscores(Q, &format!("free:{tag}")).await,
            vec![("g".to_string(), free_score(5, 0))]
        );
    }
    assert_eq!(
        env.keys().await,
        expect_keys(
            Q,
            &[
                "cap",
                "cap:gpu",
                "cap:ssd",
                "epoch",
                "free",
                "free:gpu",
                "free:ssd",
                "heartbeats",
                "worker:g",
                "workers",
            ]
        )
    );
    let recs = env.store.workers(Q).await.expect("workers");
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].tags, vec!["gpu", "ssd"]);
    assert_eq!((recs[0].capacity, recs[0].assigned), (5, 0));
    assert_eq!(recs[0].epoch, 1);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn parked_task_goes_to_the_capable_worker_when_it_joins() {
    let mut env = Env::start().await;
    env.register(Q, "cpu", 4, &[]).await;
    let g = task(Q, 1).tag("gpu");
    assert_eq!(
        env.client.submit(&g).await.expect("submit"),
        Placement::Parked
    );
    let p = task(Q, 1);
    assert_eq!(
        env.client.submit(&p).await.expect("submit"),
        Placement::Assigned("cpu".into())
    );

    // A worker without the tag joins: the task is looked at again and parked again.
    env.register(Q, "cpu2", 8, &[]).await;
    assert_eq!(env.zrange(Q, "parked").await, vec![g.id.clone()]);
    assert!(env.zrange(Q, "pending").await.is_empty());
    assert!(env.inbox(Q, "cpu2").await.is_empty());
    assert_eq!(env.task_hash(Q, &g.id).await["state"], "pending");

    // A worker with the tag joins: the task is placed there, on no other.
    env.register(Q, "gpu", 2, &["gpu"]).await;
    assert!(!env.keys().await.contains(&qkey(Q, "parked")));
    assert!(!env.keys().await.contains(&qkey(Q, "pending")));
    let t = env.task_hash(Q, &g.id).await;
    assert_eq!(
        (
            t["state"].as_str(),
            t["worker"].as_str(),
            t["lease"].as_str()
        ),
        ("assigned", "gpu", "1")
    );
    assert_eq!(env.inbox(Q, "gpu").await, vec![g.id.clone()]);
    assert_eq!(env.inbox(Q, "cpu").await, vec![p.id.clone()]);
    assert!(env.inbox(Q, "cpu2").await.is_empty());
    assert_eq!(env.worker_int(Q, "gpu", "assigned").await, 1);
    assert_eq!(env.worker_int(Q, "cpu", "assigned").await, 1);
    assert_eq!(env.worker_int(Q, "cpu2", "assigned").await, 0);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn parked_big_task_goes_to_a_big_enough_worker_when_it_joins() {
    let mut env = Env::start().await;
    env.register(Q, "small", 2, &[]).await;
    let big = task(Q, 6);
    assert_eq!(
        env.client.submit(&big).await.expect("submit"),
        Placement::Parked
    );
    let behind = task(Q, 2);
    assert_eq!(
        env.client.submit(&behind).await.expect("submit"),
        Placement::Assigned("small".into())
    );
    env.register(Q, "big", 8, &[]).await;
    assert_eq!(env.worker_of(Q, &big.id).await.as_deref(), Some("big"));
    assert_eq!(env.inbox(Q, "big").await, vec![big.id.clone()]);
    assert_eq!(env.worker_int(Q, "big", "assigned").await, 6);
    assert!(env.zrange(Q, "parked").await.is_empty());
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn live_id_is_refused_and_nothing_changes() {
    let mut env = Env::start().await;
    env.register(Q, "w", 2, &["gpu"]).await;
    env.submit(task(Q, 1)).await;
    let before = env.snapshot().await;
    let err = env
        .store
        .register_worker(Q, "w", 9, &[], Duration::from_secs(3600))
        .await
        .expect_err("id in use");
    assert!(
        matches!(&err, Error::WorkerIdTaken(id) if id == "w"),
        "unexpected error {err:?}"
    );
    assert_eq!(env.snapshot().await, before);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_worker_silent_longer_than_dead_after_is_taken_over() {
    let mut env = Env::start().await;
    env.register(Q, "w", 2, &[]).await;
    // Seed: the last heartbeat was ten seconds ago.
    let old = env.age_heartbeat(Q, "w", 10_000).await;
    env.store
        .register_worker(Q, "w", 5, &[], Duration::from_secs(5))
        .await
        .expect("dead id is taken over");
    assert_eq!(env.worker_int(Q, "w", "capacity").await, 5);
    assert!(env.worker_int(Q, "w", "heartbeat_at").await > old);
    // The new process runs under the next epoch.
    assert_eq!(env.worker_int(Q, "w", "epoch").await, 2);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn dead_id_is_taken_over_and_its_tasks_go_back() {
    let mut env = Env::start().await;
    env.register(Q, "w", 4, &["gpu"]).await;
    let t1 = env.submit(task(Q, 2)).await;
    let t2 = env.submit(task(Q, 1).tag("gpu")).await;
    assert_eq!(env.inbox(Q, "w").await, vec![t1.clone(), t2.clone()]);
    let claimed = env.claim(Q, "w", 1).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].id.as_str(), claimed[0].lease), (t1.as_str(), 1));
    let old_epoch = env.epoch(Q, "w").await;

    // The same id registers again, without the tag and with capacity 3; with dead_after
    // zero any old record counts as dead.
    let lo = env.now_ms().await;
    env.store
        .register_worker(Q, "w", 3, &[], Duration::ZERO)
        .await
        .expect("takeover");
    let hi = env.now_ms().await;

    // The old worker's tasks were handed back; t1 is placed again on the new record under a
    // new lease, t2 (gpu) has no capable worker any more and is parked. The new record runs
    // under the next epoch.
    let mut w = env.worker_hash(Q, "w").await;
    take_time(&mut w, "registered_at", lo, hi);
    take_time(&mut w, "heartbeat_at", lo, hi);
    assert_eq!(
        w,
        strmap(&[
            ("id", "w"),
            ("capacity", "3"),
            ("assigned", "2"),
            ("tags", ""),
            ("state", "active"),
            ("tick", "3"),
            ("finished", "0"),
            ("epoch", "2"),
        ])
    );
    // t1's run was cut short by the takeover: it gives its attempt back, while `runs` still
    // counts the run and `requeues` the hand-back. The record keeps them in one field, as
    // lib.lua's run_text() writes it: lease, attempts, runs, start ("-": not started yet),
    // worker.
    let raw: String = env
        .raw
        .hget(qkey(Q, &format!("task:{t1}")), "run")
        .await
        .expect("hget run");
    assert_eq!(raw, "2 0 1 - w");
    let mut h1 = env.task_hash(Q, &t1).await;
    take_time(&mut h1, "assigned_at", lo, hi);
    assert_eq!(
        (
            h1["state"].as_str(),
            h1["worker"].as_str(),
            h1["lease"].as_str(),
            h1["attempts"].as_str(),
            h1["runs"].as_str(),
            h1["requeues"].as_str()
        ),
        ("assigned", "w", "2", "0", "1", "1")
    );
    assert!(!h1.contains_key("started_at"), "{h1:?}");
    // t2 was never started: no attempt, no run, one hand-back.
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
    assert!(!h2.contains_key("assigned_at"), "{h2:?}");
    assert_eq!((h2["attempts"].as_str(), h2["runs"].as_str()), ("0", "0"));
    assert_eq!(env.inbox(Q, "w").await, vec![t1.clone()]);
    assert_eq!(env.held(Q, "w").await, vec![t1.clone()]);
    assert_eq!(env.zrange(Q, "parked").await, vec![t2.clone()]);
    assert_eq!(
        env.zscores(Q, "free").await,
        vec![("w".to_string(), free_score(1, 3))]
    );
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
                "parked",
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

    // The dead process's lease is fenced off, and its epoch claims nothing of the new
    // record's inbox.
    let before = env.snapshot().await;
    let got = env
        .store
        .finish_task(
            Q,
            "w",
            old_epoch,
            &claimed[0],
            &Outcome::Succeeded("1".into()),
            1,
        )
        .await
        .expect("finish");
    assert_eq!(got, Finish::Stale(vec![]));
    assert_eq!(env.snapshot().await, before);
}
