//! Tests of `Store::submit_tasks` (submit_tasks.lua): a batch is stored whole, then placed in
//! one pass in priority order; a duplicate, a delayed and an unrunnable task in the same
//! batch are each told where they went.

use std::time::Duration;

use ballast::{Placement, TaskState};

use crate::harness::{task, Env};

const Q: &str = "jobs";

#[tokio::test]
async fn a_batch_is_placed_in_one_pass_in_priority_order() {
    let mut env = Env::start().await;
    env.register(Q, "w", 2, &[]).await;
    let earlier = task(Q, 1);
    env.client.submit(&earlier).await.expect("first");
    let worker_full = task(Q, 1);
    env.client.submit(&worker_full).await.expect("second");
    env.register(Q, "v", 1, &[]).await;
    // v has one unit free: of the batch, the high-priority task placed last takes it.
    let low = task(Q, 1);
    let duplicate = earlier.clone();
    let later = task(Q, 1).delay(Duration::from_secs(60));
    let huge = task(Q, 9);
    let high = task(Q, 1).priority(5);
    let placed = env
        .client
        .submit_many(&[
            low.clone(),
            duplicate,
            later.clone(),
            huge.clone(),
            high.clone(),
        ])
        .await
        .expect("batch");
    assert_eq!(
        placed,
        vec![
            Placement::Pending,
            Placement::Assigned("w".into()),
            Placement::Scheduled,
            Placement::Parked,
            Placement::Assigned("v".into()),
        ]
    );
    assert_eq!(env.zrange(Q, "pending").await, vec![low.id.clone()]);
    assert_eq!(env.zrange(Q, "parked").await, vec![huge.id.clone()]);
    assert_eq!(env.zrange(Q, "scheduled").await, vec![later.id.clone()]);
    // The duplicate left the first task as it was.
    let first = env.task_record(Q, &earlier.id).await;
    assert_eq!(
        (first.state, first.worker.as_deref()),
        (TaskState::Assigned, Some("w"))
    );
    env.assert_sound(Q).await;
}
