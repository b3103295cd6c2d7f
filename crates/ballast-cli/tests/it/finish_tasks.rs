//! Tests of `Store::finish_tasks` (finish_tasks.lua): many outcomes of one worker recorded in
//! one call, a stale one among them skipped, then one placement and one claim.

use ballast::store::Outcome;
use ballast::TaskState;

use crate::harness::{task, Env};

const Q: &str = "jobs";

#[tokio::test]
async fn outcomes_are_recorded_together_and_a_stale_one_is_skipped() {
    let mut env = Env::start().await;
    env.register(Q, "w", 3, &[]).await;
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(env.submit(task(Q, 1)).await);
        }
        v
    };
    let running = env.claim(Q, "w", 3).await;
    assert_eq!(running.len(), 3);
    // The third report carries an old lease: it is refused, and only it.
    let mut stale = running[2].clone();
    stale.lease += 7;
    let ok = Outcome::Succeeded(r#"{"ok":1}"#.into());
    let fail = Outcome::Failed("no".into());
    let (recorded, next) = env
        .report_many(
            Q,
            "w",
            &[(&running[0], &ok), (&running[1], &fail), (&stale, &ok)],
            3,
        )
        .await;
    assert_eq!(recorded, vec![true, true, false]);
    // Two units freed: the fourth task was placed and claimed in the same call.
    assert_eq!(
        next.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        vec![ids[3].clone()]
    );
    let states: Vec<TaskState> = {
        let mut v = Vec::new();
        for id in &ids {
            v.push(env.task_record(Q, id).await.state);
        }
        v
    };
    assert_eq!(
        states,
        [
            TaskState::Succeeded,
            TaskState::Failed,
            TaskState::Running,
            TaskState::Running
        ]
    );
    assert_eq!(env.worker_int(Q, "w", "assigned").await, 2);
    assert_eq!(env.worker_int(Q, "w", "finished").await, 2);
    env.assert_sound(Q).await;
}
