//! Tests of `Store::resync_worker` (resync_worker.lua): what a worker learns after losing
//! the reply of a call that started tasks for it.

use ballast::store::Outcome;
use ballast::TaskState;
use redis::AsyncCommands;

use crate::harness::{qkey, task, Env};

const Q: &str = "jobs";

#[tokio::test]
async fn tasks_started_by_a_lost_finish_reply_are_handed_over_again() {
    let mut env = Env::start().await;
    env.register(Q, "w", 2, &[]).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(env.submit(task(Q, 1)).await);
    }
    let running = env.claim(Q, "w", 2).await;
    let ok = Outcome::Succeeded("1".into());
    let reports: Vec<_> = running.iter().map(|t| (t, &ok)).collect();
    // The call runs, but its reply (the next two tasks, now running here) never arrives.
    let (_, lost) = env.report_many(Q, "w", &reports, 2).await;
    assert_eq!(lost.len(), 2);

    let epoch = env.epoch(Q, "w").await;
    let before = env.snapshot().await;
    let mut again = env
        .store
        .resync_worker(Q, "w", epoch)
        .await
        .expect("resync");
    again.sort_by(|a, b| a.id.cmp(&b.id));
    let mut expect = lost.clone();
    expect.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(again, expect);
    // Reading them wrote nothing: the same leases, attempts and every other key.
    assert_eq!(env.snapshot().await, before);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_task_popped_by_a_lost_inbox_wait_is_claimed() {
    let mut env = Env::start().await;
    env.register(Q, "w", 3, &[]).await;
    let a = env.submit(task(Q, 1)).await;
    let b = env.submit(task(Q, 1)).await;
    assert_eq!(env.inbox(Q, "w").await, vec![a.clone(), b.clone()]);
    // The blocking pop took `a`, and the connection dropped before the worker saw it.
    let popped: Option<String> = env
        .raw
        .lpop(qkey(Q, "worker:w:inbox"), None)
        .await
        .expect("lpop");
    assert_eq!(popped.as_deref(), Some(a.as_str()));

    // A process presenting an old epoch (declared dead, replaced) learns nothing and
    // claims nothing.
    let epoch = env.epoch(Q, "w").await;
    let before = env.snapshot().await;
    let stale = env
        .store
        .resync_worker(Q, "w", epoch - 1)
        .await
        .expect("resync");
    assert!(stale.is_empty());
    assert_eq!(env.snapshot().await, before);

    let got = env
        .store
        .resync_worker(Q, "w", epoch)
        .await
        .expect("resync");
    // `a` is claimed and handed over; `b`, still in the inbox, waits for the next pop.
    assert_eq!(
        got.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        [a.as_str()]
    );
    assert_eq!((got[0].attempt, got[0].lease), (1, 1));
    let t = env.task_record(Q, &a).await;
    assert_eq!(t.state, TaskState::Running);
    assert_eq!(env.inbox(Q, "w").await, vec![b.clone()]);
    env.assert_sound(Q).await;
}
