//! Tests of `Store::heartbeat_worker` (heartbeat_worker.lua): it records server time in the
//! worker record and the `heartbeats` index, answers `false` for an unknown worker without
//! writing, and places work a capped placement left over.

use ballast::store::Leave;

use crate::harness::{qkey, take_time, task, Env};

const Q: &str = "jobs";

#[tokio::test]
async fn records_server_time_and_nothing_else() {
    let mut env = Env::start().await;
    env.register(Q, "w", 2, &[]).await;
    env.register(Q, "other", 2, &[]).await;
    // Seed an old heartbeat so the new one is visibly written.
    env.age_heartbeat(Q, "w", 10_000).await;
    let mut before = env.worker_hash(Q, "w").await;
    before.remove("heartbeat_at");
    let other_before = env.worker_hash(Q, "other").await;
    let other_beat = other_before["heartbeat_at"].parse::<f64>().expect("int");
    let keys = env.keys().await;

    let lo = env.now_ms().await;
    assert!(env.beat(Q, "w").await.is_some());
    let hi = env.now_ms().await;

    let mut after = env.worker_hash(Q, "w").await;
    let beat = take_time(&mut after, "heartbeat_at", lo, hi);
    assert_eq!(after, before);
    let mut beats = env.zscores(Q, "heartbeats").await;
    beats.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        beats,
        vec![
            ("other".to_string(), other_beat),
            ("w".to_string(), beat as f64)
        ]
    );
    assert_eq!(env.worker_hash(Q, "other").await, other_before);
    assert_eq!(env.keys().await, keys);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn unknown_worker_returns_false_and_writes_nothing() {
    let mut env = Env::start().await;
    assert!(env.beat(Q, "ghost").await.is_none());
    assert!(env.keys().await.is_empty());

    // A removed worker is unknown too: it must register again.
    env.register(Q, "w", 2, &[]).await;
    assert_eq!(env.leave(Q, "w", Leave::Remove).await, Some(0));
    let before = env.snapshot().await;
    assert!(env.beat(Q, "w").await.is_none());
    assert_eq!(env.snapshot().await, before);
    assert!(!env.keys().await.contains(&qkey(Q, "worker:w")));
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn a_draining_worker_still_beats_and_stays_out_of_the_free_index() {
    let mut env = Env::start().await;
    env.register(Q, "w", 2, &[]).await;
    assert_eq!(env.leave(Q, "w", Leave::Drain).await, Some(0));
    let lo = env.now_ms().await;
    assert!(env.beat(Q, "w").await.is_some());
    let hi = env.now_ms().await;
    let mut h = env.worker_hash(Q, "w").await;
    take_time(&mut h, "heartbeat_at", lo, hi);
    assert_eq!(h["state"], "draining");
    assert!(env.zscores(Q, "free").await.is_empty());
    // A task submitted now does not go to the draining worker.
    let id = env.submit(task(Q, 1)).await;
    assert_eq!(env.zrange(Q, "pending").await, vec![id]);
    env.assert_sound(Q).await;
}

#[tokio::test]
async fn heartbeat_places_work_left_over_by_a_capped_placement() {
    let mut env = Env::start().await;
    // One script call places at most 1000 tasks.
    let specs: Vec<_> = (0..1001).map(|_| task(Q, 1)).collect();
    env.client.submit_many(&specs).await.expect("submit");
    env.register(Q, "w", 5000, &[]).await;
    assert_eq!(env.inbox(Q, "w").await.len(), 1000);
    assert_eq!(env.zrange(Q, "pending").await, vec![specs[1000].id.clone()]);

    assert!(env.beat(Q, "w").await.is_some());
    let inbox = env.inbox(Q, "w").await;
    let want: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
    assert_eq!(inbox, want);
    assert!(env.zrange(Q, "pending").await.is_empty());
    assert_eq!(env.worker_int(Q, "w", "assigned").await, 1001);
    env.assert_sound(Q).await;
}
