//! Tests of `Store::cancel_task` (cancel_task.lua): a task not started is cancelled at once
//! wherever it waits; a running one is flagged for its worker; a final one is left alone.

use std::time::Duration;

use ballast::store::{Cancel, Finish, Outcome};
use ballast::TaskState;

use crate::harness::{task, Env};

const Q: &str = "jobs";

#[tokio::test]
async fn tasks_not_started_are_cancelled_at_once_wherever_they_wait() {
    let mut env = Env::start().await;
    let delayed = env.submit(task(Q, 1).delay(Duration::from_secs(60))).await;
    let pending = env.submit(task(Q, 1)).await;
    env.register(Q, "w", 1, &[]).await;
    // `pending` went to w's inbox; a second task waits in pending.
    let waiting = env.submit(task(Q, 1)).await;
    for id in [&delayed, &pending] {
        assert_eq!(
            env.store.cancel_task(Q, id).await.expect("cancel"),
            Cancel::Cancelled
        );
    }
    // Cancelling the assigned one freed w, so the waiting task was placed there.
    assert_eq!(env.worker_of(Q, &waiting).await.as_deref(), Some("w"));
    // The cancelled task's id stays in the inbox (taking it out would scan the list)...
    assert_eq!(
        env.inbox(Q, "w").await,
        vec![pending.clone(), waiting.clone()]
    );
    for id in [&delayed, &pending] {
        let t = env.task_record(Q, id).await;
        assert_eq!(
            (t.state, t.error.as_deref()),
            (TaskState::Cancelled, Some("cancelled before it started"))
        );
        assert!(t.finished_at.is_some());
    }
    assert_eq!(env.list(Q, "cancelled").await.len(), 2);
    assert!(env.zrange(Q, "scheduled").await.is_empty());
    env.assert_sound(Q).await;
    // ...and a claim steps over it to the task that is w's.
    let claimed = env.claim(Q, "w", 1).await;
    assert_eq!(
        claimed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec![waiting.as_str()]
    );
    assert!(env.inbox(Q, "w").await.is_empty());
    assert_eq!(
        env.task_record(Q, &pending).await.state,
        TaskState::Cancelled
    );
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_running_task_is_flagged_for_its_worker_and_a_final_one_is_left_alone() {
    let mut env = Env::start().await;
    env.register(Q, "w", 1, &[]).await;
    let id = env.submit(task(Q, 1)).await;
    let t = env.claim(Q, "w", 1).await.remove(0);
    assert_eq!(
        env.store.cancel_task(Q, &id).await.expect("cancel"),
        Cancel::Requested("w".into())
    );
    assert_eq!(env.task_hash(Q, &id).await["state"], "running");
    // Every heartbeat hands the request to the worker until the task ends: a lost reply,
    // or a worker that has not started the task yet, does not lose it.
    for _ in 0..2 {
        assert_eq!(env.beat(Q, "w").await, Some(vec![id.clone()]));
    }
    env.finish(Q, "w", &t, 0).await;
    assert_eq!(env.beat(Q, "w").await, Some(vec![]));
    assert_eq!(
        env.store.cancel_task(Q, &id).await.expect("cancel"),
        Cancel::AlreadyFinal(TaskState::Succeeded)
    );
    assert!(env.store.cancel_task(Q, "nope").await.is_err());
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_task_asked_to_stop_is_not_retried_and_a_revived_one_forgets_the_request() {
    let mut env = Env::start().await;
    env.register(Q, "w", 1, &[]).await;
    let id = env.submit(task(Q, 1).max_attempts(5)).await;
    let t = env.claim(Q, "w", 1).await.remove(0);
    env.store.cancel_task(Q, &id).await.expect("cancel");
    // The handler was stopped before the worker heard why: it reports a retry.
    let retry = Outcome::Retry {
        error: "handler was stopped".into(),
        delay: Duration::ZERO,
    };
    let got = env.report(Q, "w", &t, &retry, 0).await;
    assert_eq!(got, Finish::Recorded(vec![]));
    let r = env.task_record(Q, &id).await;
    assert_eq!(
        (r.state, r.error.as_deref()),
        (TaskState::Cancelled, Some("handler was stopped"))
    );
    assert!(env.zrange(Q, "scheduled").await.is_empty());

    // A request that came too late (the run failed for good anyway) does not follow the
    // task out of the dead letters: its next run may retry.
    let dead = env.submit(task(Q, 1).max_attempts(5)).await;
    let t = env.claim(Q, "w", 1).await.remove(0);
    env.store.cancel_task(Q, &dead).await.expect("cancel");
    let failed = Outcome::Failed("broken".into());
    assert_eq!(
        env.report(Q, "w", &t, &failed, 0).await,
        Finish::Recorded(vec![])
    );
    assert_eq!(env.task_hash(Q, &dead).await["cancel_requested"], "1");
    assert_eq!(
        env.store
            .retry_dead(Q, std::slice::from_ref(&dead))
            .await
            .expect("revive"),
        1
    );
    assert!(!env
        .task_hash(Q, &dead)
        .await
        .contains_key("cancel_requested"));
    let t = env.claim(Q, "w", 1).await.remove(0);
    assert_eq!(
        env.report(Q, "w", &t, &retry, 0).await,
        Finish::Recorded(vec![])
    );
    assert_eq!(env.task_hash(Q, &dead).await["state"], "scheduled");
    env.assert_sound(Q).await;
}
